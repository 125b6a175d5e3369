"""The registry of data sources, the one place that picks one from a config, and the front door.

`SOURCES` maps a name to a `Source` (common.py): "tfds" (tfds.py), "idx"
(idx.py), "images" (image_folder.py) and "stacked" (stacked.py, over the
digits of "idx" or "tfds"). `source_kind(config)` is the only code that
reads which one a config asks for; create_dataset, load_split and
source_name all ask it, and a new source is one module and one entry here.
"""

from __future__ import annotations

from collections.abc import Iterator

import jax
import ml_collections
import numpy as np

from ebgan_jax.data import idx, image_folder, pipeline, stacked, tfds
from ebgan_jax.data.common import check_image_shape, DatasetInfo, Source


def source_kind(config: ml_collections.ConfigDict, *, unstacked: bool = False) -> str:
  """The entry of SOURCES that reads config's examples.

  image_dir wins over idx_dir (which wins over dataset, tfds); stacked MNIST
  (`stacked_split_sizes` set) stacks the digits of idx or tfds. With
  `unstacked`, the source of a stacked config's digits.

  Raises:
    ValueError: config sets image_dir together with idx_dir or stacked_split_sizes.
  """
  if config.image_dir:
    if config.idx_dir or stacked.is_stacked(config):
      other = "idx_dir" if config.idx_dir else "stacked_split_sizes"
      raise ValueError(
          f"config sets both image_dir ({config.image_dir}) and {other}; an image folder is a"
          f" source of its own, so set --config.{other}=None or --config.image_dir=None."
      )
    return "images"
  if stacked.is_stacked(config) and not unstacked:
    return "stacked"
  return "idx" if config.idx_dir else "tfds"


SOURCES: dict[str, Source] = {
    "tfds": tfds.SOURCE,
    "idx": idx.SOURCE,
    "images": image_folder.SOURCE,
    "stacked": stacked.make_source(lambda config: SOURCES[source_kind(config, unstacked=True)]),
}


def source_for(config: ml_collections.ConfigDict) -> Source:
  """The Source that reads config's examples (`source_kind`)."""
  return SOURCES[source_kind(config)]


def source_name(config: ml_collections.ConfigDict) -> str:
  """Where config's examples come from.

  "images:<directory>", "idx:<directory>" or "tfds:<name>", or for stacked
  MNIST "stacked:" and the source of its digits.
  """
  return source_for(config).describe(config)


def create_dataset(
    config: ml_collections.ConfigDict,
    split: str = "train",
    *,
    start_step: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
) -> tuple[Iterator[np.ndarray], DatasetInfo]:
  """Returns this process's endless stream of training batches, and metadata.

  Each process reads a disjoint shard of the split and yields float32 batches
  of shape (config.batch_size // process_count, *config.image_shape), pixel p
  mapped to p / 127.5 - 1. Every epoch is shuffled with its own seed drawn
  from `config.seed`, so the stream is a function of (config, split, process),
  identical from run to run under one TensorFlow version.

  Args:
    config: reads dataset, idx_dir or image_dir (either wins over dataset
      when set), data_dir, download, shuffle_buffer (not for image folders,
      whose file names are shuffled whole), image_shape, batch_size (global)
      and seed; for photographs also crop, resize and test_fraction
      (photos.py, image_folder.py), and tfds_splits, a mapping from the split
      asked for to the tfds split read (e.g. {"test": "validation"}).
    split: "train" or "test" for IDX files and image folders; any split name
      for tfds.
    start_step: number of batches to leave out; the stream then equals that of
      a fresh iterator from batch `start_step` on (bit-exact resume).
    process_index: this process; defaults to jax.process_index().
    process_count: number of processes; defaults to jax.process_count().
      (That the global batch splits over the devices is the step's check:
      train.make_train_step.)

  Returns:
    An iterator of NumPy batches, and the DatasetInfo of the split.

  Raises:
    ValueError: bad batch size, image shape, crop or data; unknown tfds name;
      (while iterating) an image file that passed the listing's checks but
      cannot be decoded.
    FileNotFoundError: IDX files or image folder missing; no image in the
      folder; tfds data not cached nor downloadable.
  """
  if process_index is None:
    process_index = jax.process_index()
  if process_count is None:
    process_count = jax.process_count()
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} is not in [0, {process_count}).")
  if start_step < 0:
    raise ValueError(f"start_step {start_step} is negative; it counts batches already used.")
  local_batch_size = pipeline.local_batch_size_of(config.batch_size, process_count)

  source = source_for(config)
  examples, info = source.examples(config, split, process_index, process_count)
  check_image_shape(info, config.image_shape)
  num_local_examples = int(examples.cardinality())
  if num_local_examples == 0:
    raise ValueError(
        f"Process {process_index} of {process_count} gets none of the"
        f" {info.num_examples} examples of {info.source}; use fewer processes."
    )
  shuffle_buffer, read_image = config.shuffle_buffer, None
  if source.image_reader is not None:
    # The examples are file names: a full shuffle of them costs little memory
    # even for millions of files; each image is decoded after the shuffle.
    shuffle_buffer, read_image = num_local_examples, source.image_reader(config)
  batches = pipeline.batch_stream(
      examples, num_local_examples, batch_size=local_batch_size, seed=config.seed,
      shuffle_buffer=shuffle_buffer, start_step=start_step, read_image=read_image)
  return batches, info


def load_split(
    config: ml_collections.ConfigDict, split: str = "test"
) -> tuple[np.ndarray, np.ndarray]:
  """Returns a whole split in memory, for evaluation code.

  Args:
    config: as for create_dataset; batch and shuffle fields are not read.
      Photograph sources (an image folder, a tfds dataset with crop or
      resize) return at most config.max_eval_images images (0 = all),
      evenly spaced over an image folder's
      sorted files, the first ones of a tfds split.
    split: "train" or "test" for IDX files and image folders; any split name
      for tfds (after config.tfds_splits).

  Returns:
    uint8 images (N, H, W, C) in stored order (cropped and resized like the
    training stream's), and their int64 labels (N,): NO_LABEL (-1) for image
    folders and tfds datasets without a "label" feature; for stacked MNIST
    (`is_stacked`) the labels are the modes, 0 to 999.
  """
  return source_for(config).load_split(config, split)
