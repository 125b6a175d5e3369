r"""Train the classifier whose features and predictions score a dataset's samples, and cache it.

  python -m experiments.train_classifier --config=experiments/configs/classifier_mnist.py
  python -m experiments.train_classifier --config=experiments/configs/classifier_fashion.py \
      --config.idx_dir=/usr/share/datasets/fashion-mnist

The classifier is saved to CACHE_DIR/DATASET (config.cache_dir,
config.dataset), where ebgan_jax.evaluation looks for it. A classifier
already there is reused, not trained again, if the config asks for the same
one (task, data source, model, training); --config.retrain=True replaces it.
With --config.task=rotation the network learns which of four rotations an
image shows instead of its label: the feature network of image folders
without labels (experiments/configs/classifier_images.py). Prints
one JSON line: its path, SHA-256, test accuracy and whether it was reused.
Bad input prints one `error:` line and exits with status 2.

The grid search and periodic evaluation need not run this first:
`ensure_classifier(gan_config)` trains the classifier that scores a GAN
config's samples (`scoring_config`) when none is cached.
"""

from __future__ import annotations

import importlib
import json
import os
import pathlib
import shutil
import signal
from typing import NoReturn

from absl import flags, logging
import jax
import ml_collections

from ebgan_jax import checkpoint, classifier as classifier_lib, data, evaluation
from experiments import cli
from experiments.configs import classifier_images

_DEFAULT_CONFIG = os.path.join(os.path.dirname(__file__), "configs", "classifier_mnist.py")
# The fields of a GAN config that say where a labelled dataset's images come from; its
# classifier keeps its own image_shape (stacked MNIST's classifier sees one digit).
SOURCE_FIELDS = ("idx_dir", "data_dir", "download")
# Minutes per epoch of each config on 2 CPU cores for the full data, as the configs give them.
_MINUTES_PER_EPOCH = {"classifier_mnist.py": 1.0, "classifier_fashion.py": 1.0,
                      "classifier_images.py": 2.0}


class ConfigError(ValueError):
  """Bad user input: a config value, the data, or a cached classifier that does not fit."""


def validate_config(config: ml_collections.ConfigDict) -> None:
  checks = [
      (config.num_epochs >= 1, f"num_epochs must be >= 1, got {config.num_epochs}"),
      (config.batch_size >= 1, f"batch_size must be >= 1, got {config.batch_size}"),
      (config.learning_rate > 0, f"learning_rate must be > 0, got {config.learning_rate}"),
      (config.model.num_classes >= 2,
       f"model.num_classes must be >= 2, got {config.model.num_classes}"),
      (config.task in classifier_lib.TASKS,
       f"task must be one of {classifier_lib.TASKS}, got {config.task!r}"),
      (config.task != "rotation" or config.model.num_classes == classifier_lib.NUM_ROTATIONS,
       f"the rotation task has {classifier_lib.NUM_ROTATIONS} classes; set "
       f"--config.model.num_classes={classifier_lib.NUM_ROTATIONS}"),
  ]
  for ok, message in checks:
    if not ok:
      raise ConfigError(message)


def _recipe(config: ml_collections.ConfigDict) -> dict:
  """What makes a classifier: data, model, training. A cached one with another is not reused."""
  return {
      "task": config.task,
      "dataset": config.dataset,
      "source": data.source_name(config),
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
  if config.task == "rotation":
    try:
      return classifier_lib.rotation_task(images, seed=config.seed + (split == "test"))
    except ValueError as e:
      raise ConfigError(str(e)) from None
  if labels.min() < 0 or labels.max() >= config.model.num_classes:
    raise ConfigError(
        f"{data.source_name(config)} has labels in [{labels.min()}, {labels.max()}], outside "
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


def _training_manager(directory: pathlib.Path):
  """The checkpoints of a classifier's training in progress, beside where it will be saved."""
  return checkpoint.create_manager(str(directory.parent / f"{directory.name}.training"), keep=1)


def _resume(config, manager, start: classifier_lib.Fitting) -> classifier_lib.Fitting | None:
  """The Fitting of a stopped training of this config's classifier; None when there is none."""
  step = manager.latest_step()
  if step is None:
    return None
  saved = checkpoint.saved_config(manager, step)
  if saved != json.loads(json.dumps(_recipe(config))):
    raise ConfigError(
        f"{manager.directory} holds a stopped training of another classifier ({saved}); "
        f"finish it with its settings, or delete that directory to train {_recipe(config)}")
  logging.info("Resuming the classifier's training at step %d from %s", step, manager.directory)
  return checkpoint.restore(manager, start, step)


def _train(config: ml_collections.ConfigDict, directory) -> classifier_lib.Classifier:
  """Trains config's classifier, measures its test accuracy and saves it to directory.

  Each epoch's end and a STOP_SIGNAL save the training in progress (cli.Stopped
  follows the signal's); the same call goes on from the newest such checkpoint.
  """
  train_images, train_labels = _load_split(config, "train")
  test_images, test_labels = _load_split(config, "test")
  model = classifier_lib.create_model(config.model)
  total_steps = config.num_epochs * (len(train_images) // config.batch_size)
  try:
    manager = _training_manager(directory)
  except OSError as e:
    raise _cannot_write(directory, e) from None
  recipe = ml_collections.ConfigDict(_recipe(config))
  fitting = classifier_lib.start_fitting(
      model, config.image_shape, total_steps=total_steps, learning_rate=config.learning_rate,
      seed=config.seed)
  fitting = _resume(config, manager, fitting) or fitting
  logging.info("Training the %s classifier on %d images of %s", config.dataset,
               len(train_images), data.source_name(config))

  def save_progress(fitting):
    if manager.latest_step() != fitting.step:
      checkpoint.save(manager, fitting, recipe, fitting.step)

  def on_epoch(epoch, loss, fitting):
    logging.info("epoch %d: training loss %.4f", epoch, loss)
    if epoch < config.num_epochs:
      save_progress(fitting)

  with cli.stop_signals() as received:
    try:
      fitting = classifier_lib.fit(
          model, train_images, train_labels, num_epochs=config.num_epochs,
          batch_size=config.batch_size, learning_rate=config.learning_rate, seed=config.seed,
          start=fitting, on_epoch=on_epoch, stop=lambda: bool(received))
    except ValueError as e:  # too few images for a batch
      raise ConfigError(str(e)) from None
    if fitting.step < total_steps:
      save_progress(fitting)
      manager.wait_until_finished()
      _stopped(received[0], f"classifier training saved at step {fitting.step} of "
               f"{total_steps} to {manager.directory}")
    params = jax.device_get(fitting.params)
    metadata = {**_recipe(config), "num_train": len(train_images),
                "num_test": len(test_images),
                "test_accuracy": classifier_lib.accuracy(model, params, test_images, test_labels)}
    try:
      saved = classifier_lib.save(directory, params, metadata)
    except OSError as e:
      raise _cannot_write(directory, e) from None
    manager.wait_until_finished()
    shutil.rmtree(manager.directory, ignore_errors=True)
    if received:  # it finished meanwhile; the signal still stops the program
      _stopped(received[0], f"the classifier is trained and saved to {directory}")
  return saved


def _cannot_write(directory, error: OSError) -> ConfigError:
  return ConfigError(f"cannot write the classifier to {directory} ({error}); pass a "
                     "--config.cache_dir you can write to")


def _stopped(signum: int, what: str) -> NoReturn:
  name = signal.Signals(signum).name
  logging.info("%s: stopped, %s", name, what)
  raise cli.Stopped(f"{name}: {what}; run the same command to go on", signum)


def train_and_save(config: ml_collections.ConfigDict) -> dict:
  """Trains (or reuses) config's classifier, saved under its cache path; returns its summary."""
  validate_config(config)
  directory = classifier_lib.cache_path(config.cache_dir, config.dataset)
  cached = None if config.retrain else _cached(config, directory)
  classifier = cached or _train(config, directory)
  return {
      "classifier": classifier.directory,
      "task": config.task,
      "dataset": config.dataset,
      "source": classifier.metadata["source"],
      "params_sha256": classifier.metadata["params_sha256"],
      "test_accuracy": classifier.metadata["test_accuracy"],
      "num_test": classifier.metadata["num_test"],
      "reused": cached is not None,
  }


def _scoring_config_file(dataset: str) -> str:
  return evaluation.CLASSIFIER_CONFIGS.get(dataset, evaluation.CLASSIFIER_CONFIG_IMAGES)


def scoring_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The classifier config that scores samples of the GAN config `config`.

  Its dataset's classifier config (evaluation.CLASSIFIER_CONFIGS), reading the
  images where `config` does (SOURCE_FIELDS); for other data, classifier_images'
  feature network with every data field of `config`. Cached where `config`'s
  evaluation looks for it (config.eval.classifier_dir).
  """
  file = _scoring_config_file(config.dataset)
  classifier_config = importlib.import_module(
      f"experiments.configs.{file.removesuffix('.py')}").get_config()
  fields = (SOURCE_FIELDS if config.dataset in evaluation.CLASSIFIER_CONFIGS
            else classifier_images.DATA_FIELDS)
  with classifier_config.unlocked():
    for field in fields:
      if field in config:
        classifier_config[field] = config[field]
  classifier_config.cache_dir = evaluation.eval_settings(config).classifier_dir
  return classifier_config


def ensure_classifier(config: ml_collections.ConfigDict) -> None:
  """Trains the classifier that scores `config`'s samples if none is cached (train_and_save).

  A study is then one command: the grid search and periodic evaluation call
  this before evaluation.Evaluator. One log line says that, where and how
  long; a cached classifier is used as it is. Not with the Inception features
  (a weights file, not trained here) nor with several processes (each would
  train and write the one cache): those keep evaluation's error naming the
  command.
  """
  if evaluation.eval_settings(config).features != "classifier" or jax.process_count() > 1:
    return
  classifier_config = scoring_config(config)
  directory = classifier_lib.cache_path(classifier_config.cache_dir, classifier_config.dataset)
  if classifier_lib.is_saved(directory):
    return
  file = _scoring_config_file(config.dataset)
  logging.info("no scoring classifier cached for %s at %s: training one "
               "(experiments/configs/%s), about %.0f minutes on 2 CPU cores", config.dataset,
               directory, file, classifier_config.num_epochs * _MINUTES_PER_EPOCH[file])
  train_and_save(classifier_config)


def define_flags() -> None:
  cli.define_config("config", _DEFAULT_CONFIG,
                    "Classifier config file; override fields with --config.FIELD=VALUE.")


def main(argv):
  del argv  # cli.run rejects positional arguments
  print(json.dumps(train_and_save(flags.FLAGS.config)))


if __name__ == "__main__":
  cli.run(main, define_flags, bad_input=(ConfigError,))
