"""Tests of ebgan_jax.classifier and experiments.train_classifier: the CNN, its cache, learning."""

import functools
import json
import pathlib

import jax
import numpy as np
import pytest

from ebgan_jax import classifier, data
from experiments import train_classifier
from experiments.configs import (celeba64, classifier_fashion, classifier_mnist, grid_fashion,
                                 stacked_mnist_conv)
from tests import data_fixtures
from tests.test_cli import run_in_process

REPO = pathlib.Path(__file__).resolve().parents[1]
MODEL = {"num_classes": 10, "feature_dim": 16, "dropout_rate": 0.0}


def pattern_digits(num_images: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """uint8 28x28x1 images of 10 trivially separable classes, and their labels.

  Class c is a bright 6x6 square at a place of its own (two rows of five), on
  faint noise that makes every image distinct.
  """
  rng = np.random.default_rng(seed)
  labels = np.arange(num_images) % 10
  images = rng.integers(0, 40, size=(num_images, 28, 28, 1), dtype=np.uint8)
  for i, c in enumerate(labels):
    top, left = 3 + 14 * (c // 5), 1 + 5 * (c % 5)
    images[i, top:top + 6, left:left + 6] = 255
  return images, labels


def classifier_config(**overrides):
  config = classifier_mnist.get_config()
  config.update({"model": MODEL, "num_epochs": 1, "batch_size": 32, "download": False})
  config.update(overrides)
  return config


@functools.cache
def pattern_classifier():
  """A CNN fitted to 640 pattern digits (seed 5) in a few steps: (model, params).

  Fitted once per test process: the fixtures of several test files save it.
  """
  model = classifier.create_model(MODEL)
  images, labels = pattern_digits(640, seed=5)
  return model, classifier.fit(model, images, labels, num_epochs=3, batch_size=32,
                               learning_rate=3e-3, seed=0).params


@pytest.fixture(scope="module")
def trained():
  return pattern_classifier()


def test_cnn_gives_logits_and_penultimate_features():
  model = classifier.CNN(num_classes=7, feature_dim=32)
  params = classifier.init_params(model, (28, 28, 1), jax.random.PRNGKey(0))
  logits, features = model.apply({"params": params}, np.zeros((5, 28, 28, 1), np.float32))
  assert logits.shape == (5, 7) and features.shape == (5, 32)
  assert float(features.min()) >= 0.0  # after the ReLU


def test_fit_learns_separable_classes(trained):
  model, params = trained
  images, labels = pattern_digits(500, seed=1)  # images it never saw
  assert classifier.accuracy(model, params, images, labels) == 1.0


def test_predict_gives_probabilities_and_features_in_any_number(trained):
  model, params = trained
  images, labels = pattern_digits(1003, seed=2)  # one full predict batch and a part
  probabilities, features = classifier.predict(model, params, images)
  assert probabilities.shape == (1003, 10) and features.shape == (1003, MODEL["feature_dim"])
  np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
  np.testing.assert_array_equal(np.argmax(probabilities, axis=1), labels)
  # uint8 and [-1, 1] floats are the same images.
  as_floats, _ = classifier.predict(model, params,
                                    data.pixels_to_signed(images[:10].astype(np.float32)))
  np.testing.assert_allclose(as_floats, probabilities[:10], rtol=1e-5, atol=1e-6)


def test_save_then_load_restores_the_same_classifier(trained, tmp_path):
  model, params = trained
  saved = classifier.save(tmp_path / "patterns", params,
                          {"model": MODEL, "image_shape": [28, 28, 1], "test_accuracy": 1.0})
  loaded = classifier.load(tmp_path / "patterns")
  assert loaded.directory == str(tmp_path / "patterns") == saved.directory
  assert loaded.metadata == saved.metadata
  assert loaded.metadata["params_sha256"] == classifier.params_sha256(params)
  assert jax.tree.all(jax.tree.map(np.array_equal, loaded.params, params))
  images, _ = pattern_digits(20, seed=3)
  np.testing.assert_array_equal(classifier.predict(loaded.model, loaded.params, images)[1],
                                classifier.predict(model, params, images)[1])


def test_load_refuses_a_missing_or_tampered_classifier(trained, tmp_path):
  with pytest.raises(FileNotFoundError, match="no trained classifier in"):
    classifier.load(tmp_path / "nothing")
  _, params = trained
  classifier.save(tmp_path / "c", params, {"model": MODEL, "image_shape": [28, 28, 1]})
  metadata_file = tmp_path / "c" / classifier.METADATA_FILE
  metadata = json.loads(metadata_file.read_text())
  metadata["params_sha256"] = "0" * 64
  metadata_file.write_text(json.dumps(metadata))
  with pytest.raises(ValueError, match="hash to .* not the recorded 0000"):
    classifier.load(tmp_path / "c")


def test_params_hash_changes_with_any_parameter(trained):
  _, params = trained
  changed = jax.tree.map(np.array, params)
  changed["Dense_1"]["bias"][3] += 1e-6
  assert classifier.params_sha256(changed) != classifier.params_sha256(params)
  assert classifier.params_sha256(jax.tree.map(np.array, params)) == classifier.params_sha256(
      params)


def test_train_classifier_from_tfds_trains_caches_and_reuses(tmp_path, monkeypatch):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  # Under mock_data, "downloading" makes the mock examples; nothing leaves the machine,
  # so the offline probe must not stop it.
  monkeypatch.setattr(data.tfds, "unreachable_download_host", lambda builder: None)
  config = classifier_config(cache_dir=str(tmp_path / "cache"), data_dir=str(tmp_path / "tfds"),
                             download=True)
  with tfds.testing.mock_data(num_examples=96, policy=tfds.testing.MockPolicy.USE_CODE):
    first = train_classifier.train_and_save(config)
    again = train_classifier.train_and_save(config)
    assert first["classifier"] == str(tmp_path / "cache" / "mnist")
    assert first["source"] == "tfds:mnist" and first["num_test"] == 96
    assert not first["reused"] and again["reused"]
    assert again["params_sha256"] == first["params_sha256"]
    assert 0.0 <= first["test_accuracy"] <= 1.0

    # Another recipe is refused rather than silently scored by the old classifier ...
    config.learning_rate = 1e-4
    with pytest.raises(train_classifier.ConfigError, match="pass --config.retrain=True"):
      train_classifier.train_and_save(config)
    # ... and replaces it when asked.
    config.retrain = True
    replaced = train_classifier.train_and_save(config)
  assert not replaced["reused"] and replaced["params_sha256"] != first["params_sha256"]
  assert classifier.load(tmp_path / "cache" / "mnist").metadata["training"]["learning_rate"] == (
      1e-4)


def write_pattern_idx_dir(directory: pathlib.Path, num_train: int, num_test: int,
                          seed: int = 0) -> pathlib.Path:
  """The four IDX gz files of pattern digits (see pattern_digits)."""
  images, labels = pattern_digits(num_train + num_test, seed)
  directory.mkdir(parents=True, exist_ok=True)
  splits = {"train": slice(0, num_train), "test": slice(num_train, None)}
  for split, part in splits.items():
    images_name, labels_name = data_fixtures.IDX_NAMES[split]
    data_fixtures.write_idx(directory / f"{images_name}.gz", images[part, ..., 0])
    data_fixtures.write_idx(directory / f"{labels_name}.gz", labels[part].astype(np.uint8))
  return directory


def save_pattern_classifier(cache: pathlib.Path, datasets=("mnist",)) -> pathlib.Path:
  """A classifier cache whose classifiers of `datasets` recognise pattern digits without error."""
  model, params = pattern_classifier()
  test_images, test_labels = pattern_digits(300, seed=6)
  accuracy = classifier.accuracy(model, params, test_images, test_labels)
  assert accuracy == 1.0  # the premise of the tests that use it
  for dataset in datasets:
    classifier.save(cache / dataset, params,
                    {"model": MODEL, "image_shape": [28, 28, 1], "test_accuracy": accuracy})
  return cache


def test_train_classifier_from_idx_files(tmp_path):
  idx_dir = write_pattern_idx_dir(tmp_path / "idx", num_train=256, num_test=64)
  config = classifier_config(idx_dir=str(idx_dir), cache_dir=str(tmp_path / "cache"),
                             num_epochs=6, learning_rate=3e-3)
  summary = train_classifier.train_and_save(config)
  assert summary["source"] == f"idx:{idx_dir}" and summary["test_accuracy"] == 1.0


@pytest.mark.parametrize("args, message", [
    (["--config.num_epochs=0"], "error: num_epochs must be >= 1, got 0"),
    (["--config.idx_dir=/nonexistent/idx"], "error: IDX directory /nonexistent/idx does not"),
])
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
  # In this process; tests/test_cli.py runs the program as a subprocess once.
  result = run_in_process(
      "experiments.train_classifier",
      f"--config={REPO / 'experiments/configs/classifier_fashion.py'}",
      f"--config.cache_dir={tmp_path}", *args)
  assert result.returncode == 2
  assert "Traceback" not in result.stderr
  error_lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
  assert len(error_lines) == 1 and error_lines[0].startswith(message)


def test_learns_real_fashion_mnist_well_above_chance():
  """A short run (50 steps on 6,400 images): far above the 10% of chance on held-out images.

  The full run (experiments/configs/classifier_fashion.py, 8 epochs on all
  60,000) takes minutes, too long for the test suite; it reaches >= 91%.
  """
  fashion_mnist = data_fixtures.real_fashion_mnist()
  config = classifier_fashion.get_config()
  config.idx_dir = str(fashion_mnist)
  train_images, train_labels = data.load_split(config, "train")
  test_images, test_labels = data.load_split(config, "test")
  model = classifier.create_model(config.model)
  params = classifier.fit(model, train_images[:6400], train_labels[:6400], num_epochs=1,
                          batch_size=config.batch_size, learning_rate=config.learning_rate,
                          seed=0).params
  assert classifier.accuracy(model, params, test_images[:2000], test_labels[:2000]) > 0.6


# --- The scoring classifier of a GAN config, trained on first use ----------------------------


def test_the_scoring_classifier_reads_the_gan_configs_data(tmp_path):
  gan = grid_fashion.get_config("tiny")
  gan.eval.classifier_dir = str(tmp_path)
  expected = classifier_fashion.get_config()
  expected.update({"idx_dir": gan.idx_dir, "cache_dir": str(tmp_path)})
  assert train_classifier.scoring_config(gan).to_dict() == expected.to_dict()
  # Stacked MNIST's classifier sees one digit, read where the stacks' digits come from.
  stacked = stacked_mnist_conv.get_config()
  stacked.idx_dir = str(tmp_path / "digits")
  digits = train_classifier.scoring_config(stacked)
  assert digits.dataset == "mnist" and digits.image_shape == (28, 28, 1)
  assert digits.idx_dir == str(tmp_path / "digits") and digits.task == "labels"
  # Photographs: classifier_images' rotation network, with every data field of the GAN config.
  photos = celeba64.get_config()
  photos.image_dir = str(tmp_path / "photos")
  rotation = train_classifier.scoring_config(photos)
  assert rotation.task == "rotation" and rotation.dataset == photos.dataset
  assert rotation.image_dir == photos.image_dir and rotation.image_shape == photos.image_shape


def test_a_cached_or_inception_scoring_classifier_is_not_trained(tmp_path, monkeypatch):
  monkeypatch.setattr(train_classifier, "train_and_save", lambda config: pytest.fail("trained"))
  gan = grid_fashion.get_config("tiny")
  gan.eval.classifier_dir = str(tmp_path)
  gan.eval.features = "inception"  # its weights come from a file
  train_classifier.ensure_classifier(gan)
  gan.eval.features = "classifier"
  params = classifier.init_params(classifier.create_model(MODEL), (28, 28, 1),
                                  jax.random.PRNGKey(0))
  classifier.save(tmp_path / "fashion_mnist", params, {"model": MODEL, "image_shape": [28, 28, 1]})
  train_classifier.ensure_classifier(gan)


# --- The rotation task: a feature network for images without labels ------------------------


def test_rotation_task_rotates_each_image_by_its_label():
  images = np.random.default_rng(0).integers(0, 256, (40, 6, 6, 3), dtype=np.uint8)
  rotated, turns = classifier.rotation_task(images, seed=3)
  assert rotated.shape == images.shape and rotated.dtype == np.uint8
  assert set(turns.tolist()) == {0, 1, 2, 3}  # 40 draws: every rotation occurs
  for image, back, k in zip(images, rotated, turns):
    np.testing.assert_array_equal(np.rot90(back, -k, axes=(0, 1)), image)
  again, same_turns = classifier.rotation_task(images, seed=3)
  np.testing.assert_array_equal(again, rotated)
  np.testing.assert_array_equal(same_turns, turns)
  with pytest.raises(ValueError, match="square images"):
    classifier.rotation_task(np.zeros((2, 6, 5, 1), np.uint8), seed=0)


@pytest.mark.parametrize("image_shape, blocks", [((28, 28, 1), 2), ((64, 64, 3), 3)])
def test_cnn_pools_down_to_at_most_8_pixels(image_shape, blocks):
  params = classifier.init_params(classifier.CNN(num_classes=4, feature_dim=8), image_shape,
                                  jax.random.PRNGKey(0))
  assert sorted(name for name in params if name.startswith("Conv")) == [
      f"Conv_{i}" for i in range(blocks)]
  # 28x28 keeps the names and shapes of the classifiers cached before this rule.
  last = params[f"Conv_{blocks - 1}"]["kernel"].shape[-1]
  assert params["Dense_0"]["kernel"].shape == (
      (image_shape[0] // 2**blocks) ** 2 * last, 8)


def test_train_classifier_learns_rotations_of_unlabelled_images(tmp_path):
  idx_dir = write_pattern_idx_dir(tmp_path / "idx", num_train=512, num_test=128)
  config = classifier_config(idx_dir=str(idx_dir), cache_dir=str(tmp_path / "cache"),
                             task="rotation", num_epochs=4, learning_rate=3e-3)
  config.model.num_classes = classifier.NUM_ROTATIONS
  summary = train_classifier.train_and_save(config)
  assert summary["task"] == "rotation"
  assert summary["test_accuracy"] > 0.9  # chance: 0.25
  saved = classifier.load(tmp_path / "cache" / "mnist")
  assert saved.metadata["task"] == "rotation" and saved.model.num_classes == 4


def test_the_rotation_task_needs_four_classes(tmp_path):
  config = classifier_config(cache_dir=str(tmp_path), task="rotation")
  with pytest.raises(train_classifier.ConfigError, match="num_classes=4"):
    train_classifier.train_and_save(config)


def test_a_classifier_saved_before_tasks_loads_as_a_labels_classifier(trained, tmp_path):
  model, params = trained
  classifier.save(tmp_path / "old", params, {"model": MODEL, "image_shape": [28, 28, 1]})
  metadata_file = tmp_path / "old" / classifier.METADATA_FILE
  metadata = json.loads(metadata_file.read_text())
  assert metadata.pop("task") == "labels"
  metadata_file.write_text(json.dumps(metadata))  # as written before the field existed
  assert classifier.load(tmp_path / "old").metadata["task"] == "labels"
