r"""Train the classifier whose features and predictions score a dataset's samples, and cache it.

  python -m experiments.train_classifier --config=experiments/configs/classifier_mnist.py
  python -m experiments.train_classifier --config=experiments/configs/classifier_fashion.py \
      --config.idx_dir=/usr/share/datasets/fashion-mnist

The classifier is saved to CACHE_DIR/DATASET (config.cache_dir,
config.dataset), where experiments.evaluate looks for it. A classifier
already there is reused, not trained again, if the config asks for the same
one (data source, model, training); --config.retrain=True replaces it. Prints
one JSON line: its path, SHA-256, test accuracy and whether it was reused.
Bad input prints one `error:` line and exits with status 2.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags, logging
import ml_collections
from ml_collections import config_flags

from ebgan_jax import classifier as classifier_lib, data
from experiments import logs

_DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "configs", "classifier_mnist.py")

EXIT_BAD_INPUT = 2


class ConfigError(ValueError):
  """Bad user input: a config value, the data, or a cached classifier that does not fit."""


def validate_config(config: ml_collections.ConfigDict) -> None:
  checks = [
      (config.num_epochs >= 1, f"num_epochs must be >= 1, got {config.num_epochs}"),
      (config.batch_size >= 1, f"batch_size must be >= 1, got {config.batch_size}"),
      (config.learning_rate > 0, f"learning_rate must be > 0, got {config.learning_rate}"),
      (config.model.num_classes >= 2,
       f"model.num_classes must be >= 2, got {config.model.num_classes}"),
  ]
  for ok, message in checks:
    if not ok:
      raise ConfigError(message)


def _source(config: ml_collections.ConfigDict) -> str:
  return f"idx:{config.idx_dir}" if config.idx_dir else f"tfds:{config.dataset}"


def _recipe(config: ml_collections.ConfigDict) -> dict:
  """What makes a classifier: data, model, training. A cached one with another is not reused."""
  return {
      "dataset": config.dataset,
      "source": _source(config),
      "image_shape": list(config.image_shape),
      "model": config.model.to_dict(),
      "training": {"num_epochs": config.num_epochs, "batch_size": config.batch_size,
                   "learning_rate": config.learning_rate, "seed": config.seed},
  }


def _load_split(config, split):
  try:
    images, labels = data.load_split(config, split)
  except ValueError as e:  # the data's or the config's fault
    raise ConfigError(str(e)) from None
  if labels.min() < 0 or labels.max() >= config.model.num_classes:
    raise ConfigError(
        f"{_source(config)} has labels in [{labels.min()}, {labels.max()}], outside "
        f"[0, {config.model.num_classes}); set --config.model.num_classes")
  return images, labels


def _cached(config: ml_collections.ConfigDict, directory) -> classifier_lib.Classifier | None:
  """The cached classifier when it has the config's recipe; None when there is none."""
  try:
    cached = classifier_lib.load(directory)
  except FileNotFoundError:
    return None
  recipe = _recipe(config)
  saved = {field: cached.metadata.get(field) for field in recipe}
  if saved != json.loads(json.dumps(recipe)):
    raise ConfigError(
        f"the classifier cached in {directory} was made with {saved}, but the config asks for "
        f"{recipe}; pass --config.retrain=True to replace it, or another --config.cache_dir")
  return cached


def _train(config: ml_collections.ConfigDict, directory) -> classifier_lib.Classifier:
  """Trains config's classifier, measures its test accuracy and saves it to directory."""
  train_images, train_labels = _load_split(config, "train")
  test_images, test_labels = _load_split(config, "test")
  logging.info("Training the %s classifier on %d images of %s", config.dataset,
               len(train_images), _source(config))
  model = classifier_lib.create_model(config.model)
  params = classifier_lib.fit(
      model, train_images, train_labels, num_epochs=config.num_epochs,
      batch_size=config.batch_size, learning_rate=config.learning_rate, seed=config.seed,
      on_epoch=lambda epoch, loss: logging.info("epoch %d: training loss %.4f", epoch, loss))
  metadata = {**_recipe(config), "num_train": len(train_images), "num_test": len(test_images),
              "test_accuracy": classifier_lib.accuracy(model, params, test_images, test_labels)}
  try:
    return classifier_lib.save(directory, params, metadata)
  except OSError as e:
    raise ConfigError(f"cannot write the classifier to {directory} ({e}); pass a "
                      "--config.cache_dir you can write to") from None


def train_and_save(config: ml_collections.ConfigDict) -> dict:
  """Trains (or reuses) config's classifier, saved under its cache path; returns its summary."""
  validate_config(config)
  directory = classifier_lib.cache_path(config.cache_dir, config.dataset)
  cached = None if config.retrain else _cached(config, directory)
  classifier = cached or _train(config, directory)
  return {
      "classifier": classifier.directory,
      "dataset": config.dataset,
      "source": classifier.metadata["source"],
      "params_sha256": classifier.metadata["params_sha256"],
      "test_accuracy": classifier.metadata["test_accuracy"],
      "num_test": classifier.metadata["num_test"],
      "reused": cached is not None,
  }


def define_flags() -> None:
  """Defines the CLI's flag, only when this module runs as the program (as evaluate.py does)."""
  config_flags.DEFINE_config_file(
      "config", _DEFAULT_CONFIG,
      "Classifier config file; override fields with --config.FIELD=VALUE.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logs.keep_job_logs_only()
  try:
    summary = train_and_save(flags.FLAGS.config)
  except (ConfigError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(EXIT_BAD_INPUT)
  print(json.dumps(summary))


if __name__ == "__main__":
  define_flags()
  app.run(main)
