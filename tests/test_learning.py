"""G learns: on real Fashion-MNIST, a short training run makes its samples measurably better.

The judge is a small classifier trained here on the real images (the
feature network of the built-in metrics, ebgan_jax/classifier.py, trained
briefly); the scores are the Frechet distance in its feature space and the
classes its argmax finds among the samples.
"""

import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ebgan_jax import classifier, data, evaluation, losses, metrics, state as state_lib, train
from experiments import trainer
from experiments.configs import classifier_fashion, fashion_conv
from tests import xla_levels

FASHION_MNIST = pathlib.Path("/usr/share/datasets/fashion-mnist")
NUM_SAMPLES = 2000


def _require_fashion_mnist():
  if not FASHION_MNIST.is_dir():
    if os.environ.get("CI"):
      pytest.fail(f"{FASHION_MNIST} is missing in CI: .ci/run must install dataset-fashion-mnist")
    pytest.skip("apt-get install dataset-fashion-mnist for the real-data tests")


def _fit_classifier():
  """The metrics' CNN, trained for one epoch on 4,000 training images: seconds, not minutes."""
  config = classifier_fashion.get_config()
  config.idx_dir = str(FASHION_MNIST)
  images, labels = data.load_split(config, "train")
  model = classifier.create_model(config.model)
  params = classifier.fit(model, images[:4000], labels[:4000], num_epochs=1,
                          batch_size=config.batch_size, learning_rate=config.learning_rate,
                          seed=0).params
  return model, params


@pytest.fixture(scope="module")
def judge():
  """The scores of a GAN state's samples: (Frechet distance to 2,000 test images in the
  judge's features, classes above 1% of the samples)."""
  _require_fashion_mnist()
  model, params = _fit_classifier()
  config = fashion_conv.get_config()
  config.idx_dir = str(FASHION_MNIST)
  test_images, test_labels = data.load_split(config, "test")
  real_probabilities, real_features = classifier.predict(model, params, test_images[:NUM_SAMPLES])
  # The premise: a judge that tells the classes apart (chance is 10%).
  assert np.mean(np.argmax(real_probabilities, axis=1) == test_labels[:NUM_SAMPLES]) > 0.6

  def scores(state):
    images = evaluation.generate_images(state, jax.random.PRNGKey(1), NUM_SAMPLES)
    probabilities, features = classifier.predict(model, params, images)
    return (metrics.frechet_feature_distance(real_features, features),
            metrics.classes_above(metrics.class_histogram(probabilities), 0.01))
  return scores


def _train(config, workdir, num_steps):
  """The trainer's own step 0 of `config` on real Fashion-MNIST, and the state it trains to."""
  config.idx_dir = str(FASHION_MNIST)
  config.num_steps = num_steps
  config.log_every = config.sample_every = config.checkpoint_every = num_steps
  initial = state_lib.create_state(config, jax.random.PRNGKey(config.seed))
  with xla_levels.optimized_steps():  # hundreds of steps
    trained = trainer.train_and_evaluate(config, str(workdir))
  assert int(trained.step) == num_steps
  return config, initial, trained


def _scores(judge, initial, trained):
  """(FD, classes) of the initial and the trained state."""
  (fid_initial, classes_initial), (fid_trained, classes_trained) = judge(initial), judge(trained)
  return {"fid": (fid_initial, fid_trained), "classes": (classes_initial, classes_trained)}


@pytest.fixture(scope="module")
def ebgan_run(tmp_path_factory):
  """fashion_conv's EBGAN trained for 400 steps, for G's and D's tests alike: (config, initial
  state, trained state). (D's energies: real 0.18 vs fake 0.22 at 300 steps, too close.)"""
  _require_fashion_mnist()
  return _train(fashion_conv.get_config(), tmp_path_factory.mktemp("ebgan"), num_steps=400)


@pytest.mark.slow
def test_generator_samples_improve_on_real_fashion_mnist(judge, ebgan_run):
  _, initial, trained = ebgan_run
  scores = _scores(judge, initial, trained)
  # Measured at 300 steps: FD 144 -> 48 and classes 3 -> 9. With G frozen (lr 1e-12)
  # only its BatchNorm averages move: FD 95, 3 classes.
  (fid_initial, fid_trained), (classes_initial, classes_trained) = scores.values()
  assert fid_trained < 0.5 * fid_initial, scores
  assert classes_trained >= max(classes_initial, 7), scores


@pytest.mark.slow
def test_discriminator_learns_on_real_fashion_mnist(ebgan_run):
  """D reconstructs held-out real images clearly better than samples (the same run)."""
  config, _, state = ebgan_run
  images, _ = data.load_split(config, "test")
  real = data.pixels_to_signed(jnp.asarray(images[:500], jnp.float32))
  fake = train.generate(state, jax.random.PRNGKey(1), 500)
  d = state.discriminator

  def mean_energy(x):
    # As the losses see it: D in training mode, normalised by this batch.
    (reconstruction, _), _ = d.apply_fn({"params": d.params, "batch_stats": d.batch_stats}, x,
                                        train=True, mutable=["batch_stats"])
    return float(jnp.mean(losses.energy(x, reconstruction)))

  energy_real, energy_fake = mean_energy(real), mean_energy(fake)
  assert energy_real < 0.75 * energy_fake, (energy_real, energy_fake)


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["gan", "began", "magan"])
def test_each_relative_learns_on_real_fashion_mnist(judge, tmp_path, objective):
  config = fashion_conv.get_config(objective)
  # MAGAN: D pre-trains for 50 of the 150 steps, then the margin may adapt every 50.
  config.steps_per_epoch = 50
  scores = _scores(judge, *_train(config, tmp_path, num_steps=150)[1:])
  (fid_initial, fid_trained), (classes_initial, classes_trained) = scores.values()
  # Measured at 150 steps: FD 144 -> 59 (GAN), 38 (BEGAN), 54 (MAGAN); classes 3 -> 10, 8, 7.
  # (With the paper's lambda_k 0.001, BEGAN's k_t stays near 0 at 300 steps: FD 115, 1 class.)
  assert fid_trained < 0.5 * fid_initial, scores
  assert classes_trained > classes_initial, scores
