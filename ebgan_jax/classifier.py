"""A small CNN classifier per dataset: the feature network of the sample-quality metrics.

Inception-v3, the usual network of IS and FID, needs downloaded weights and
299x299 RGB input; for 28x28 data the metrics instead use a classifier
trained on the dataset itself, as TF-GAN scores MNIST (`tfgan.eval.
mnist_score`). Its softmax gives p(y|x) for the Inception Score and class
counts, its penultimate layer (after ReLU) the features for FD, KID and PRDC
(ebgan_jax/metrics.py).

Images without labels (64x64 photographs, say) get a feature network trained
on a self-supervised task instead (`rotation_task`): its features serve FD,
KID and PRDC; its probabilities are over rotations, so the Inception Score
and class counts do not apply to it.

A trained classifier lives in `<cache_dir>/<dataset>/`: an orbax checkpoint
of its parameters (`params/`) and `classifier.json`, which records its task,
model fields, training settings, data source, test accuracy and the SHA-256 of its
parameters, the hash that names it in every evaluation. `save` and `load`
are this module's only file I/O.
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
import functools
import hashlib
import json
import os
import pathlib

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax.training import train_state

from ebgan_jax import data

DEFAULT_CACHE_DIR = "~/.cache/ebgan_jax/classifiers"
METADATA_FILE = "classifier.json"
# Images per forward pass when predicting: one compiled shape for any N.
_PREDICT_BATCH = 1000


class CNN(nn.Module):
  """[Conv 3x3, max-pool 2] blocks of 32, 64, 128, ... channels -> Dense feature_dim -> logits.

  Blocks are added until the feature map is at most 8 pixels high: two for
  28x28 (about 0.4M parameters for 28x28x1), three for 64x64, four for
  128x128. Dropout on the features while training only.
  """

  num_classes: int = 10
  feature_dim: int = 128
  dropout_rate: float = 0.5

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
    """Returns (logits (N, num_classes), features (N, feature_dim))."""
    channels = 32
    while True:
      x = nn.relu(nn.Conv(channels, (3, 3))(x))
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
      channels *= 2
      if x.shape[1] <= 8:
        break
    features = nn.relu(nn.Dense(self.feature_dim)(x.reshape(x.shape[0], -1)))
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(features)
    return nn.Dense(self.num_classes)(x), features


@dataclasses.dataclass(frozen=True)
class Classifier:
  """A trained CNN: its module, parameters, the metadata saved with it and its directory."""

  model: CNN
  params: dict
  metadata: dict
  directory: str

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.metadata["image_shape"])


def create_model(model_config) -> CNN:
  """The CNN of `model_config`: a mapping of CNN fields (num_classes, feature_dim, dropout_rate)."""
  try:
    return CNN(**dict(model_config))
  except TypeError as e:
    raise ValueError(f"bad classifier model fields {dict(model_config)}: {e}") from None


def to_input(images) -> jax.Array:
  """uint8 pixels to [-1, 1] as the data pipeline maps them; floats pass as they are."""
  images = np.asarray(images)
  if images.dtype == np.uint8:
    return data.pixels_to_signed(jnp.asarray(images, jnp.float32))
  return jnp.asarray(images, jnp.float32)


# Tasks a feature network is trained on: the dataset's class labels, or, for
# images without labels (a folder of photographs), which of four rotations by
# 0, 90, 180 or 270 degrees was applied (Gidaris et al., 2018: a
# self-supervised task whose features describe the image content).
TASKS = ("labels", "rotation")
NUM_ROTATIONS = 4


def rotation_task(images: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Each square image rotated by k * 90 degrees, k uniform in {0, 1, 2, 3}; returns (images, k)."""
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[1] != images.shape[2]:
    raise ValueError(f"the rotation task needs square images (N, S, S, C), got {images.shape}")
  turns = np.random.default_rng(seed).integers(0, NUM_ROTATIONS, len(images))
  rotated = np.empty_like(images)
  for k in range(NUM_ROTATIONS):
    rotated[turns == k] = np.rot90(images[turns == k], k, axes=(1, 2))
  return rotated, turns.astype(np.int64)


def init_params(model: CNN, image_shape, key: jax.Array) -> dict:
  return model.init(key, jnp.zeros((1, *image_shape)))["params"]


def cross_entropy_loss(model: CNN, params, images, labels, dropout_key) -> jax.Array:
  """Mean softmax cross-entropy of the labels, dropout active."""
  logits, _ = model.apply({"params": params}, images, train=True, rngs={"dropout": dropout_key})
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


@flax.struct.dataclass
class Fitting:
  """A classifier's training in progress: its TrainState (parameters, Adam's state, the
  step) and the sum of the current epoch's batch losses. All `fit` needs to go on exactly."""

  train: train_state.TrainState
  epoch_loss_sum: jax.Array

  @property
  def params(self):
    return self.train.params

  @property
  def step(self) -> int:
    return int(self.train.step)


def start_fitting(model: CNN, image_shape, *, total_steps: int, learning_rate: float,
                  seed: int) -> Fitting:
  """The fresh Fitting that `fit` starts from: initial parameters drawn from `seed`, Adam with
  its learning rate cosine-decayed to 0 over `total_steps`."""
  init_key, _ = jax.random.split(jax.random.PRNGKey(seed))
  schedule = optax.cosine_decay_schedule(learning_rate, total_steps)
  train = train_state.TrainState.create(
      apply_fn=model.apply, params=init_params(model, tuple(image_shape), init_key),
      tx=optax.adam(schedule))
  return Fitting(train, jnp.zeros((), jnp.float32))


@functools.partial(jax.jit, static_argnums=0, donate_argnums=1)
def train_step(model: CNN, fitting: Fitting, images: jax.Array, labels: jax.Array,
               dropout_key: jax.Array) -> Fitting:
  """One optimiser step on a batch, its loss added to the epoch's sum."""
  loss, grads = jax.value_and_grad(
      lambda params: cross_entropy_loss(model, params, images, labels, dropout_key))(
          fitting.train.params)
  return Fitting(fitting.train.apply_gradients(grads=grads), fitting.epoch_loss_sum + loss)


def fit(model: CNN, images: np.ndarray, labels: np.ndarray, *, num_epochs: int, batch_size: int,
        learning_rate: float, seed: int, start: Fitting | None = None,
        on_epoch: Callable[[int, float, Fitting], None] | None = None,
        stop: Callable[[], bool] = lambda: False) -> Fitting:
  """Trains the CNN with Adam, its learning rate cosine-decayed to 0; returns the Fitting.

  Each epoch visits the examples in a fresh order drawn from `seed`; the last
  partial batch is dropped. Training from a Fitting that `fit` returned
  earlier (`start`, with the same arguments) goes on exactly where it stopped:
  the orders and dropout keys are those of the run that never stopped.

  Args:
    model: the CNN.
    images: uint8 (N, H, W, C) images (or floats in [-1, 1]).
    labels: (N,) integer class labels in [0, model.num_classes).
    num_epochs, batch_size, learning_rate, seed: the training settings.
    start: where to go on from (default: start_fitting's fresh one).
    on_epoch: called after each epoch with (epoch, its mean training loss, the Fitting).
    stop: polled after each step; True returns the Fitting of the step reached.
  """
  steps_per_epoch = len(images) // batch_size
  if steps_per_epoch < 1 or num_epochs < 1:
    raise ValueError(
        f"training needs num_epochs >= 1 and at least one batch of {batch_size} examples, got "
        f"num_epochs {num_epochs} and {len(images)} examples")
  fitting = start or start_fitting(model, images.shape[1:], total_steps=num_epochs *
                                   steps_per_epoch, learning_rate=learning_rate, seed=seed)
  first_step = fitting.step
  _, dropout_key = jax.random.split(jax.random.PRNGKey(seed))
  rng = np.random.default_rng(seed)
  for epoch in range(num_epochs):
    order = rng.permutation(len(images))  # drawn for every epoch, so resumed runs match
    for step in range(max(0, first_step - epoch * steps_per_epoch), steps_per_epoch):
      batch = order[step * batch_size:(step + 1) * batch_size]
      step_key = jax.random.fold_in(dropout_key, epoch * steps_per_epoch + step)
      fitting = train_step(model, fitting, to_input(images[batch]), jnp.asarray(labels[batch]),
                           step_key)
      if step == steps_per_epoch - 1:
        mean_loss = float(fitting.epoch_loss_sum) / steps_per_epoch
        fitting = fitting.replace(epoch_loss_sum=jnp.zeros_like(fitting.epoch_loss_sum))
        if on_epoch is not None:
          on_epoch(epoch + 1, mean_loss, fitting)
      if stop():
        return fitting
  return fitting


@functools.partial(jax.jit, static_argnums=0)
def _forward(model: CNN, params, images: jax.Array) -> tuple[jax.Array, jax.Array]:
  logits, features = model.apply({"params": params}, images, train=False)
  return jax.nn.log_softmax(logits), features


def predict_log(model: CNN, params, images) -> tuple[np.ndarray, np.ndarray]:
  """log p(y|x) (N, num_classes) and penultimate features (N, feature_dim).

  Images are uint8 or floats in [-1, 1], of the shape the CNN was trained on.
  The log-softmax keeps a confident prediction's small p(y|x), which its
  float32 probability rounds to 0 (metrics.i_prime_torch reads them).
  """
  images = np.asarray(images)
  log_probabilities, features = [], []
  for start in range(0, len(images), _PREDICT_BATCH):
    chunk = images[start:start + _PREDICT_BATCH]
    # Padding the last chunk to the full batch keeps one compiled shape.
    padded = np.concatenate([chunk, np.zeros((_PREDICT_BATCH - len(chunk), *chunk.shape[1:]),
                                             chunk.dtype)])
    log_p, f = jax.device_get(_forward(model, params, to_input(padded)))
    log_probabilities.append(log_p[:len(chunk)])
    features.append(f[:len(chunk)])
  return np.concatenate(log_probabilities), np.concatenate(features)


def predict(model: CNN, params, images) -> tuple[np.ndarray, np.ndarray]:
  """Class probabilities p(y|x) (N, num_classes) and penultimate features: predict_log's."""
  log_probabilities, features = predict_log(model, params, images)
  return np.exp(log_probabilities), features


def accuracy(model: CNN, params, images, labels) -> float:
  """Fraction of images whose most probable class is their label."""
  probabilities, _ = predict(model, params, images)
  return float(np.mean(np.argmax(probabilities, axis=1) == np.asarray(labels)))


def params_sha256(params) -> str:
  """SHA-256 over every parameter's path, dtype, shape and bytes: the classifier's identity."""
  digest = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    leaf = np.asarray(leaf)
    digest.update(f"{jax.tree_util.keystr(path)}:{leaf.dtype}:{leaf.shape}".encode())
    digest.update(np.ascontiguousarray(leaf).tobytes())
  return digest.hexdigest()


def cache_path(cache_dir: str, dataset: str) -> pathlib.Path:
  """Where the classifier of `dataset` lives: <cache_dir>/<dataset>, ~ expanded."""
  return pathlib.Path(os.path.expanduser(cache_dir)) / dataset


# --- Cache: the only file I/O of this module ------------------------------------


def save(directory: str | os.PathLike, params, metadata: dict) -> Classifier:
  """Writes params (orbax) and metadata plus the params' SHA-256 (JSON), replacing any old ones.

  `metadata` must hold "model" (CNN fields) and "image_shape"; it is saved
  with "params_sha256" added, and "task" ("labels" unless it gives one of
  TASKS). Returns the saved classifier.
  """
  directory = pathlib.Path(directory).absolute()
  metadata = {"task": "labels", **metadata, "params_sha256": params_sha256(params)}
  directory.mkdir(parents=True, exist_ok=True)
  # The metadata goes first and last: a directory whose parameters are being
  # replaced has no metadata, so `load` refuses it rather than mixing the two.
  (directory / METADATA_FILE).unlink(missing_ok=True)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(directory / "params", params, force=True)
  tmp = directory / f"{METADATA_FILE}.tmp"
  tmp.write_text(json.dumps(metadata, indent=2, sort_keys=True))
  os.replace(tmp, directory / METADATA_FILE)
  return Classifier(create_model(metadata["model"]), params, metadata, str(directory))


def is_saved(directory: str | os.PathLike) -> bool:
  """Whether `directory` holds a complete classifier (`save` writes the metadata last)."""
  directory = pathlib.Path(directory)
  return (directory / METADATA_FILE).is_file() and (directory / "params").is_dir()


def load(directory: str | os.PathLike) -> Classifier:
  """Restores the classifier that `save` wrote to `directory`, checking its SHA-256.

  Raises:
    FileNotFoundError: no (complete) classifier in `directory`.
    ValueError: the parameters' hash differs from the recorded one.
  """
  directory = pathlib.Path(directory).absolute()
  if not is_saved(directory):
    raise FileNotFoundError(f"no trained classifier in {directory}")
  metadata = json.loads((directory / METADATA_FILE).read_text())
  metadata.setdefault("task", "labels")  # saved before there were tasks
  model = create_model(metadata["model"])
  abstract = jax.eval_shape(
      functools.partial(init_params, model, tuple(metadata["image_shape"])), jax.random.PRNGKey(0))
  with ocp.StandardCheckpointer() as checkpointer:
    params = checkpointer.restore(directory / "params", abstract)
  params = jax.device_get(params)
  digest = params_sha256(params)
  if digest != metadata["params_sha256"]:
    raise ValueError(
        f"the classifier parameters in {directory} hash to {digest}, not the recorded "
        f"{metadata['params_sha256']}: the cache is corrupt; train it again")
  return Classifier(model, params, metadata, str(directory))
