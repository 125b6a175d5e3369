"""The stream every source feeds: epochs shuffled by seed, exact resume, batches in [-1, 1].

A source hands over this process's shard of a split as a tf.data.Dataset of
uint8 images (or of file names and the function that decodes one);
`batch_stream` repeats it endlessly, every epoch shuffled with its own seed,
skips `start_step` batches by starting in the right epoch, and batches it with
fixed sizes, deterministic order and no autotuning, pixels p mapped to
`pixels_to_signed(p) = p / 127.5 - 1`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
import functools
import re
from typing import TYPE_CHECKING

import jax
import numpy as np

from ebgan_jax.data.common import import_tensorflow, PREPROCESS_THREADS

if TYPE_CHECKING:  # Annotations only: importing this module must not import TensorFlow.
  import tensorflow as tf


def pixels_to_signed(pixels):
  """Pixel values p in [0, 255], already float32, to p / 127.5 - 1 in [-1, 1], G's tanh range.

  The one copy of the mapping, for NumPy, JAX and TensorFlow arrays alike; the
  cast from uint8 to float32 is the caller's, in its own framework (viz.to_uint8
  is the inverse).
  """
  return pixels / 127.5 - 1.0


def array_batches(
    images: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    batch_size: int,
    seed: int,
    start_step: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
) -> Iterator:
  """This process's endless stream of batches of in-memory uint8 images (N, H, W, C).

  Like create_dataset's stream: float32 images in [-1, 1], every epoch fully
  shuffled with its own seed drawn from `seed`, each process reading every
  process_count-th example from its index on, and `start_step` batches left
  out for an exact resume. With `labels` (N,), yields (images, labels) pairs.
  """
  tf = import_tensorflow()
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  local_batch_size = local_batch_size_of(batch_size, process_count)
  local = slice(process_index, None, process_count)
  arrays = images[local] if labels is None else (images[local], labels[local])
  num_local_examples = len(images[local])
  if num_local_examples == 0:
    raise ValueError(f"Process {process_index} of {process_count} gets none of the "
                     f"{len(images)} examples; use fewer processes.")
  return batch_stream(tf.data.Dataset.from_tensor_slices(arrays), num_local_examples,
                      batch_size=local_batch_size, seed=seed, shuffle_buffer=num_local_examples,
                      start_step=start_step)


def batch_stream(
    examples: tf.data.Dataset,
    num_examples: int,
    *,
    batch_size: int,
    seed: int,
    shuffle_buffer: int,
    start_step: int,
    read_image: Callable[[tf.Tensor], tf.Tensor] | None = None,
) -> Iterator:
  """The endless NumPy stream of a finite dataset: shuffled epochs, batches from `start_step`.

  With `read_image`, the examples are file names, decoded after the shuffle;
  one that fails to decode ends the stream with a CorruptImageError naming it.
  """
  order = functools.partial(
      shuffled, examples, num_examples, batch_size=batch_size, seed=seed,
      shuffle_buffer=shuffle_buffer,
  )
  batches = batched(order(start_step=start_step), batch_size, preprocess=read_image)
  batches = batches.as_numpy_iterator()
  if read_image is not None:
    batches = _corrupt_images_named(batches, start_step, batch_size, read_image, order)
  return batches


def local_batch_size_of(batch_size: int, process_count: int) -> int:
  """Returns one process's part of the global batch, checking that it splits."""
  if batch_size <= 0:
    raise ValueError(f"batch_size {batch_size} must be positive.")
  if batch_size % process_count:
    raise ValueError(
        f"Global batch_size {batch_size} is not divisible by the {process_count}"
        f" processes; choose a batch_size that is a multiple of {process_count}."
    )
  return batch_size // process_count


def shuffled(
    examples: tf.data.Dataset,
    num_examples: int,
    *,
    batch_size: int,
    seed: int,
    shuffle_buffer: int,
    start_step: int,
) -> tf.data.Dataset:
  """Repeats a finite dataset endlessly, each epoch shuffled, from batch `start_step` on.

  Equivalent to shuffle, repeat, skip, except that every epoch is shuffled
  with its own seed, drawn from `seed`: the order of epoch e depends on (seed,
  e) alone, so a stream resumed at `start_step` starts in its epoch and skips
  less than one epoch of examples, instead of replaying every earlier batch.
  """
  tf = import_tensorflow()
  first_epoch, offset = divmod(start_step * batch_size, num_examples)
  epoch_seeds = tf.data.Dataset.random(seed=seed).skip(first_epoch)
  stream = epoch_seeds.flat_map(
      lambda epoch_seed: examples.shuffle(
          shuffle_buffer, seed=epoch_seed, reshuffle_each_iteration=False
      )
  )
  return stream.skip(offset)


def batched(
    stream: tf.data.Dataset,
    batch_size: int,
    *,
    preprocess: Callable[[tf.Tensor], tf.Tensor] | None = None,
) -> tf.data.Dataset:
  """Turns a stream of uint8 images (or of what `preprocess` makes them from) into batches.

  The batches are float32, normalised, and come in a fixed order. A stream of
  (image, label) pairs gives (images, labels) batches, the labels as they are.
  """
  tf = import_tensorflow()
  if preprocess is not None:
    stream = stream.map(preprocess, num_parallel_calls=PREPROCESS_THREADS, deterministic=True)
  batches = stream.batch(batch_size, drop_remainder=True)
  # Fixed sizes, no autotuning: one thread already delivers hundreds of times
  # what a step consumes, and the autotuner's thread sleeps up to a minute
  # between rounds, which the iterator's destructor waited out at the end of
  # every training run.
  batches = batches.map(lambda images, *labels: (_normalize(images), *labels) if labels
                        else _normalize(images)).prefetch(2)
  options = tf.data.Options()
  options.deterministic = True
  options.autotune.enabled = False
  return batches.with_options(options)


def _normalize(images: tf.Tensor) -> tf.Tensor:
  """Maps uint8 pixels to float32 in [-1, 1] (pixels_to_signed)."""
  tf = import_tensorflow()
  return pixels_to_signed(tf.cast(images, tf.float32))


# --- Image files that fail to decode ------------------------------------------


class CorruptImageError(ValueError):
  """An image file that passed the listing's checks cannot be decoded."""


def _corrupt_images_named(
    batches: Iterator[np.ndarray],
    start_step: int,
    batch_size: int,
    read_image: Callable[[tf.Tensor], tf.Tensor],
    order: Callable[..., tf.data.Dataset],
) -> Iterator[np.ndarray]:
  """Yields the batches; an image that fails to decode ends them with a CorruptImageError.

  `order(start_step=step)` is the stream of file names from batch `step` on:
  on a failure, the names of the failing batch are decoded one by one.
  """
  tf = import_tensorflow()
  step = start_step
  while True:
    try:
      batch = next(batches)
    except StopIteration:
      return
    except tf.errors.OpError as error:
      names = order(start_step=step).take(batch_size)
      suspects = [path.decode() for path in names.as_numpy_iterator()]
      raise corrupt_image_error(suspects, read_image, error) from None
    yield batch
    step += 1


def corrupt_image_error(paths: list[str], read_image, error: Exception) -> CorruptImageError:
  """The error for the first of paths that does not decode (error: the pipeline's)."""
  tf = import_tensorflow()
  for path in paths:
    try:
      read_image(tf.constant(path))
    except tf.errors.OpError as file_error:
      return CorruptImageError(
          f"{path} cannot be decoded ({_tf_reason(file_error)}), though its header and end"
          " read as a JPEG or PNG file when the folder was listed: it is damaged inside (or"
          " changed since); delete or replace it and run again."
      )
  return CorruptImageError(f"an image could not be read ({_tf_reason(error)}).")


def _tf_reason(error: Exception) -> str:
  """A TensorFlow error's message, without the op names and graph nodes that wrap it."""
  message = re.sub(r"\{\{[^}]*\}\}\s*|\s*\[\[.*|\s*\[Op:\w+\].*", "", str(error), flags=re.S)
  return message.strip().splitlines()[0] if message.strip() else type(error).__name__
