"""Tests of experiments.evaluate and of stacked MNIST, scored by a classifier that is always right.

The data are "pattern digits" (tests/test_classifier.py): ten classes that a
CNN separates perfectly after a few steps, so every score has a known answer.
"""

import json
import logging
import pathlib
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from ebgan_jax import classifier, data, evaluation, metrics, state as state_lib
from experiments import evaluate, trainer
from experiments.configs import stacked_mnist_conv, tiny
from tests import data_fixtures
from tests.test_classifier import pattern_digits, save_pattern_classifier, write_pattern_idx_dir

REPO = pathlib.Path(__file__).resolve().parents[1]
NUM_TEST = 200


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory):
  return write_pattern_idx_dir(tmp_path_factory.mktemp("idx"), num_train=400, num_test=NUM_TEST)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  """A classifier cache whose "mnist" classifier recognises pattern digits without error."""
  return save_pattern_classifier(tmp_path_factory.mktemp("classifiers"))


def plain_config(idx_dir, cache_dir, **eval_fields):
  config = tiny.get_config()
  config.idx_dir = str(idx_dir)
  config.eval = ml_collections.ConfigDict({"classifier_dir": str(cache_dir), **eval_fields})
  return config


def stacked_config(idx_dir, cache_dir):
  config = stacked_mnist_conv.get_config()
  config.idx_dir = str(idx_dir)
  config.stacked_split_sizes = {"train": 300, "test": NUM_TEST}
  config.num_samples = 300
  config.eval.classifier_dir = str(cache_dir)
  return config


# --- Scores with known answers -------------------------------------------------------


def test_the_test_split_against_itself(idx_dir, cache_dir):
  config = plain_config(idx_dir, cache_dir)
  test_images, _ = data.load_split(config, "test")
  results = evaluation.Evaluator(config)(test_images)
  assert results["precision"] == results["recall"] == results["coverage"] == 1.0
  assert results["fid"] == pytest.approx(0.0, abs=1e-6)
  # Confident predictions, every class twice in each of the 10 splits of 20 images.
  assert results["inception_score"] > 9.0
  assert results["class_histogram"] == [NUM_TEST // 10] * 10
  assert results["classes_1pct"] == 10
  assert results["kl_to_uniform"] == pytest.approx(0.0, abs=1e-12)


def test_references_put_training_images_near_the_floor_and_noise_far_away(idx_dir, cache_dir):
  config = plain_config(idx_dir, cache_dir)
  evaluator = evaluation.Evaluator(config)
  references = evaluation.reference_images(config)
  assert {name: images.shape for name, images in references.items()} == {
      name: (config.num_samples, 28, 28, 1) for name in ("train", "blurred_test", "uniform_noise")}
  train, blurred, noise = (evaluator(references[name])
                           for name in ("train", "blurred_test", "uniform_noise"))
  assert train["precision"] > 0.9 and train["coverage"] > 0.5
  assert noise["precision"] < 0.1 and noise["coverage"] < 0.1
  assert noise["fid"] > 10 * train["fid"]
  assert noise["kid"] > 10 * abs(train["kid"])
  # The blur degrades the test images: worse than real images, far better than noise.
  assert train["fid"] < blurred["fid"] < noise["fid"] / 10


def test_gaussian_blur_spreads_a_point_as_a_unit_gaussian():
  image = np.zeros((1, 21, 21, 1), np.uint8)
  image[0, 10, 10, 0] = 255
  blurred = evaluation.gaussian_blur(image, sigma=1.0)[0, ..., 0].astype(np.float64)
  offsets = np.arange(21) - 10
  row_profile = blurred.sum(axis=0) / blurred.sum()
  assert blurred.argmax() == image.argmax() and blurred.max() < 255 / (2 * np.pi) + 1
  assert np.sum(row_profile * offsets) == pytest.approx(0.0, abs=1e-9)  # symmetric
  assert np.sum(row_profile * offsets**2) == pytest.approx(1.0, abs=0.1)  # variance sigma^2
  assert blurred.sum() == pytest.approx(255, rel=0.05)  # mass kept, up to rounding


def test_gaussian_blur_keeps_flat_images_and_shapes():
  flat = np.full((2, 6, 5, 3), 77, np.uint8)
  np.testing.assert_array_equal(evaluation.gaussian_blur(flat, sigma=1.0), flat)
  stripes = np.zeros((1, 8, 8, 1), np.uint8)
  stripes[:, :, ::2] = 255
  blurred = evaluation.gaussian_blur(stripes, sigma=1.0)
  assert blurred.dtype == np.uint8 and blurred.shape == stripes.shape
  assert np.ptp(blurred) < 0.5 * np.ptp(stripes)  # fine detail is what a blur removes


def test_a_collapsed_generator_loses_classes_and_coverage(idx_dir, cache_dir):
  config = plain_config(idx_dir, cache_dir)
  images, labels = pattern_digits(300, seed=7)
  results = evaluation.Evaluator(config)(images[labels < 2])  # only classes 0 and 1
  assert results["classes_1pct"] == 2
  assert results["kl_to_uniform"] == pytest.approx(np.log(5), rel=1e-9)
  assert results["inception_score"] == pytest.approx(2.0, rel=0.05)
  assert results["coverage"] < 0.3


def test_stacked_modes_are_counted_on_each_channel(idx_dir, cache_dir):
  config = stacked_config(idx_dir, cache_dir)
  images, modes = data.load_split(config, "test")
  evaluator = evaluation.Evaluator(config)
  log_probabilities, features = evaluation.score(evaluator.classifier, images)
  assert log_probabilities.shape == (NUM_TEST, 1000) and features.shape == (NUM_TEST, 3 * 16)
  np.testing.assert_array_equal(np.argmax(log_probabilities, axis=1), modes)

  results = evaluator(images)
  assert results["modes_covered"] == len(np.unique(modes))
  assert results["kl_modes_to_uniform"] == pytest.approx(
      metrics.kl_to_uniform(np.bincount(modes, minlength=1000)), rel=1e-12)
  assert "class_histogram" not in results
  # One digit in every channel: a single mode.
  single = evaluator(np.repeat(images[:1], 20, axis=0))
  assert single["modes_covered"] == 1
  assert single["kl_modes_to_uniform"] == pytest.approx(np.log(1000), rel=1e-9)


# --- Stacked-MNIST data --------------------------------------------------------------


@pytest.fixture(scope="module")
def numbered_idx_dir(tmp_path_factory):
  """Digit i is filled with the value i (data_fixtures), its label is i % 10."""
  return data_fixtures.write_idx_dir(tmp_path_factory.mktemp("numbered"), num_train=200,
                                     num_test=100, height=28, width=28)


def numbered_stacked_config(idx_dir, **overrides):
  config = stacked_mnist_conv.get_config()
  config.update({"idx_dir": str(idx_dir), "stacked_split_sizes": {"train": 500, "test": 50},
                 "batch_size": 50, "shuffle_buffer": 500, **overrides})
  return config


def test_stacked_split_stacks_three_digits_and_numbers_their_modes(numbered_idx_dir):
  config = numbered_stacked_config(numbered_idx_dir)
  images, modes = data.load_split(config, "train")
  assert images.shape == (500, 28, 28, 3) and images.dtype == np.uint8
  digit_indices = images[:, 0, 0, :].astype(np.int64)  # each channel is one numbered digit
  assert np.all(images == images[:, :1, :1, :])
  np.testing.assert_array_equal(modes, metrics.stacked_mode_labels(digit_indices % 10))
  # The channels are drawn independently: all 1000 modes are possible, and R, G, B differ.
  assert len(np.unique(modes)) > 300
  assert np.mean(digit_indices[:, 0] == digit_indices[:, 1]) < 0.05


def test_stacked_split_is_fixed_per_split_and_independent_of_the_seed(numbered_idx_dir):
  train, _ = data.load_split(numbered_stacked_config(numbered_idx_dir), "train")
  again, _ = data.load_split(numbered_stacked_config(numbered_idx_dir, seed=7), "train")
  test, _ = data.load_split(numbered_stacked_config(numbered_idx_dir), "test")
  np.testing.assert_array_equal(train, again)
  assert test.shape == (50, 28, 28, 3) and test.max() < 100  # drawn from the 100 test digits
  with pytest.raises(ValueError, match="no size for split 'validation'"):
    data.load_split(numbered_stacked_config(numbered_idx_dir), "validation")


def test_stacked_training_stream_serves_the_stacked_split(numbered_idx_dir):
  config = numbered_stacked_config(numbered_idx_dir)
  batches, info = data.create_dataset(config)
  assert info == data.DatasetInfo((28, 28, 3), 500, "train", f"stacked:idx:{numbered_idx_dir}")
  epoch = np.concatenate([next(batches) for _ in range(10)])  # 10 x 50: one epoch
  assert epoch.shape == (500, 28, 28, 3) and epoch.dtype == np.float32
  images, _ = data.load_split(config, "train")
  served = np.rint((epoch[:, 0, 0, :] + 1.0) * 127.5).astype(np.int64)
  stored = images[:, 0, 0, :].astype(np.int64)
  # The epoch is a permutation of the stored split.
  assert sorted(map(tuple, served)) == sorted(map(tuple, stored))


# --- Periodic evaluation and the CLI ----------------------------------------------------


def test_score_generator_is_reproducible(idx_dir, cache_dir):
  config = plain_config(idx_dir, cache_dir, num_samples=120)
  gan = state_lib.create_state(config, jax.random.PRNGKey(0))
  evaluate_state = evaluation.Evaluator(config).score_generator
  first, second = evaluate_state(gan), evaluate_state(gan)
  assert first == second  # the same z every time
  assert set(first) == {"inception_score", "inception_score_std", "log_is", "i_prime",
                        "i_prime_torch", "fid", "kid", "kid_std", "precision", "recall",
                        "density", "coverage", "classes_1pct", "kl_to_uniform"}
  assert all(isinstance(value, float) and np.isfinite(value) for value in first.values())
  # An untrained generator is far from the test split.
  assert first["fid"] > 0.1 and first["coverage"] < 0.5


def test_evaluate_workdir_samples_the_latest_checkpoint(idx_dir, cache_dir, tmp_path):
  config = plain_config(idx_dir, cache_dir)
  config.num_steps = 3
  trainer.train_and_evaluate(config, str(tmp_path))
  [line] = evaluate.run(config, workdir=str(tmp_path))
  assert line["evaluated"] == f"checkpoint:{tmp_path}" and line["step"] == 3
  assert line["num_samples"] == config.num_samples
  assert (tmp_path / "samples.npz").is_file()


@pytest.mark.parametrize("kwargs, message", [
    ({}, "give --samples=PATH.npz, --workdir=DIR"),
    ({"samples": "x.npz", "reference": True}, "not both"),
    ({"samples": "/nonexistent/samples.npz"}, "cannot read samples from /nonexistent"),
])
def test_run_rejects_bad_requests(idx_dir, cache_dir, kwargs, message):
  with pytest.raises(evaluation.EvaluationError, match=message):
    evaluate.run(plain_config(idx_dir, cache_dir), **kwargs)


def test_samples_of_the_wrong_shape_or_too_few_are_rejected(idx_dir, cache_dir):
  evaluator = evaluation.Evaluator(plain_config(idx_dir, cache_dir))
  with pytest.raises(evaluation.EvaluationError, match="do not match config.image_shape"):
    evaluator(np.zeros((50, 28, 28, 3), np.uint8))
  with pytest.raises(evaluation.EvaluationError, match="too few"):
    evaluator(np.zeros((4, 28, 28, 1), np.uint8))


def test_unknown_eval_fields_are_rejected(idx_dir, cache_dir):
  with pytest.raises(evaluation.EvaluationError,
                     match=r"unknown config.eval fields \['kid_size'\]"):
    evaluation.eval_settings(plain_config(idx_dir, cache_dir, kid_size=3))


def _run_cli(*args):
  return subprocess.run([sys.executable, "-m", "experiments.evaluate", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=300)


def test_cli_scores_samples_and_appends_to_the_workdir(idx_dir, cache_dir, tmp_path):
  config_file = tmp_path / "config.py"
  config_file.write_text(
      "import ml_collections\n"
      "from experiments.configs import tiny\n\n\n"
      "def get_config():\n"
      "  config = tiny.get_config()\n"
      "  config.eval = ml_collections.ConfigDict({'classifier_dir': ''})\n"
      "  return config\n")
  images, _ = pattern_digits(100, seed=8)
  np.savez(tmp_path / "samples.npz", images=images)
  args = [f"--config={config_file}", f"--config.idx_dir={idx_dir}",
          f"--config.eval.classifier_dir={cache_dir}", f"--workdir={tmp_path / 'run'}"]
  result = _run_cli(*args, f"--samples={tmp_path / 'samples.npz'}")
  assert result.returncode == 0, result.stderr
  [line] = [json.loads(text) for text in result.stdout.splitlines()]
  saved = classifier.load(cache_dir / "mnist").metadata
  assert line["classifier"] == str(cache_dir / "mnist")
  assert line["classifier_sha256"] == saved["params_sha256"]
  assert line["evaluated"] == f"samples:{tmp_path / 'samples.npz'}"
  assert line["real"] == f"idx:{idx_dir} test split ({NUM_TEST} images)"
  assert line["classes_1pct"] == 10 and line["precision"] > 0.9
  assert (tmp_path / "run" / "eval.jsonl").read_text() == result.stdout

  # Without a classifier: one error line naming the command that trains it.
  result = _run_cli(*args[:-2], f"--config.eval.classifier_dir={tmp_path / 'empty'}",
                    f"--samples={tmp_path / 'samples.npz'}")
  assert result.returncode == 2 and "Traceback" not in result.stderr
  error_lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
  assert len(error_lines) == 1
  assert "no trained classifier for 'mnist'" in error_lines[0]
  assert "experiments.train_classifier --config=experiments/configs/classifier_mnist.py" in (
      error_lines[0])


def test_cli_reference_on_stacked_mnist(idx_dir, cache_dir):
  result = _run_cli(f"--config={REPO / 'experiments/configs/stacked_mnist_conv.py'}",
                    f"--config.idx_dir={idx_dir}", f"--config.eval.classifier_dir={cache_dir}",
                    "--config.stacked_split_sizes.train=300",
                    f"--config.stacked_split_sizes.test={NUM_TEST}", "--config.num_samples=300",
                    "--reference")
  assert result.returncode == 0, result.stderr
  train, blurred, noise = [json.loads(text) for text in result.stdout.splitlines()]
  assert [line["evaluated"] for line in (train, blurred, noise)] == [
      "reference:train", "reference:blurred_test", "reference:uniform_noise"]
  assert train["real"] == f"stacked:idx:{idx_dir} test split ({NUM_TEST} images)"
  # 300 draws of 1000 equally likely modes cover about 1000 (1 - e^-0.3) = 259 of them.
  assert 220 < train["modes_covered"] < 300
  assert noise["precision"] < 0.1 and train["precision"] > 0.9


# --- Periodic evaluation during training -----------------------------------------------


def _scalar_tags(workdir) -> set[str]:
  # pylint: disable-next=g-import-not-at-top
  from tensorboard.backend.event_processing import event_accumulator

  [events] = pathlib.Path(workdir).glob("events.out.tfevents.*")
  accumulator = event_accumulator.EventAccumulator(str(events))
  accumulator.Reload()
  return set(accumulator.Tags()["tensors"]) | set(accumulator.Tags()["scalars"])


def test_training_logs_the_metrics_every_eval_every_steps(idx_dir, cache_dir, tmp_path):
  config = plain_config(idx_dir, cache_dir, num_samples=120, kid_subsets=2, kid_subset_size=50)
  config.num_steps = 4
  config.eval_every = 2
  trainer.train_and_evaluate(config, str(tmp_path))
  tags = _scalar_tags(tmp_path)
  assert {"eval/fid", "eval/inception_score", "eval/coverage", "eval/kid"} <= tags


def test_eval_every_trains_a_missing_classifier_first(idx_dir, tmp_path, caplog):
  cache = tmp_path / "classifiers"
  config = plain_config(idx_dir, cache, num_samples=120, kid_subsets=2, kid_subset_size=50)
  config.num_steps = 4
  config.eval_every = 2
  caplog.set_level(logging.INFO)
  trainer.train_and_evaluate(config, str(tmp_path / "run"))
  training = [record.getMessage() for record in caplog.records
              if "no scoring classifier cached" in record.getMessage()]
  assert training == [f"no scoring classifier cached for mnist at {cache / 'mnist'}: training "
                      "one (experiments/configs/classifier_mnist.py), about 8 minutes on 2 CPU "
                      "cores"]
  assert classifier.load(cache / "mnist").metadata["source"] == f"idx:{idx_dir}"
  assert {"eval/fid", "eval/i_prime_torch"} <= _scalar_tags(tmp_path / "run")


def test_eval_every_with_a_classifier_it_cannot_save_is_a_config_error(idx_dir, tmp_path):
  (tmp_path / "a_file").write_text("")
  config = plain_config(idx_dir, tmp_path / "a_file")
  config.eval_every = 2
  with pytest.raises(trainer.ConfigError, match="eval_every=2 needs the built-in metrics: "
                     "cannot write the classifier"):
    trainer.train_and_evaluate(config, str(tmp_path / "run"))


def test_a_rotation_feature_network_scores_distances_but_no_classes(idx_dir, tmp_path):
  model = {"num_classes": 4, "feature_dim": 16, "dropout_rate": 0.0}
  cnn = classifier.create_model(model)
  params = classifier.init_params(cnn, (28, 28, 1), jax.random.PRNGKey(0))
  classifier.save(tmp_path / "mnist", params, {"task": "rotation", "model": model,
                                               "image_shape": [28, 28, 1], "test_accuracy": 0.9})
  config = plain_config(idx_dir, tmp_path)
  test_images, _ = data.load_split(config, "test")
  results = evaluation.Evaluator(config)(test_images)
  assert set(results) == {"fid", "kid", "kid_std", "precision", "recall", "density", "coverage"}
  assert abs(results["fid"]) < 1e-3  # the test split against itself


def test_64x64_photographs_are_scored_by_a_rotation_feature_network(tmp_path):
  """The 64x64 RGB path: an image folder's test split, a rotation CNN's features, no classes."""
  from PIL import Image  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  for split, count in (("train", 8), ("test", 40)):
    for i in range(count):
      folder = tmp_path / "photos" / split / str(i % 3)
      folder.mkdir(parents=True, exist_ok=True)
      # Smooth colour gradients: "photographs" far from uniform noise.
      ramp = np.linspace(0, 1, 64)[None, :, None] * rng.uniform(50, 200, 3)
      Image.fromarray((ramp + np.zeros((64, 1, 1))).astype(np.uint8)).save(folder / f"{i}.png")
  model = {"num_classes": 4, "feature_dim": 16, "dropout_rate": 0.0}
  params = classifier.init_params(classifier.create_model(model), (64, 64, 3),
                                  jax.random.PRNGKey(0))
  classifier.save(tmp_path / "cache" / "photos", params,
                  {"task": "rotation", "model": model, "image_shape": [64, 64, 3],
                   "test_accuracy": 0.25})
  config = tiny.get_config()
  config.update({"dataset": "photos", "image_dir": str(tmp_path / "photos"),
                 "image_shape": (64, 64, 3)})
  config.eval = ml_collections.ConfigDict({"classifier_dir": str(tmp_path / "cache"),
                                           "kid_subset_size": 20, "kid_subsets": 5})
  evaluator = evaluation.Evaluator(config)
  assert evaluator.description["real"] == f"images:{tmp_path / 'photos'} test split (40 images)"
  real, _ = data.load_split(config, "test")
  noise = rng.integers(0, 256, (40, 64, 64, 3), dtype=np.uint8)
  on_real, on_noise = evaluator(real), evaluator(noise)
  assert "inception_score" not in on_real and "classes_1pct" not in on_real
  assert abs(on_real["fid"]) < 1e-3 and on_real["coverage"] == 1.0
  assert on_noise["fid"] > 100 * max(on_real["fid"], 1e-3) and on_noise["coverage"] < 0.5
