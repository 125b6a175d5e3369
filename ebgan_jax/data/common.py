"""What every data source shares: DatasetInfo, the Source record, TensorFlow's import."""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
import os
from typing import TYPE_CHECKING

import ml_collections
import numpy as np

if TYPE_CHECKING:  # Annotations only: importing this module must not import TensorFlow.
  import tensorflow as tf

NO_LABEL = -1  # load_split's label for every image of a source without labels
# Images decoded (and resized) at once: one per core. The order stays fixed
# (deterministic map), so the stream does not depend on it.
PREPROCESS_THREADS = os.cpu_count() or 1


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What a pipeline serves.

  Attributes:
    image_shape: (height, width, channels) of one image.
    num_examples: examples in the whole split, over all processes.
    split: "train" or "test" (or any tfds split name).
    source: where the examples come from (`source_name`).
    skipped: files of an image folder left out as not complete JPEG or PNG
      images, by path relative to the split's folder; () for other sources.
  """

  image_shape: tuple[int, int, int]
  num_examples: int
  split: str
  source: str
  skipped: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Source:
  """One kind of data source, an entry of `sources.SOURCES`.

  Attributes:
    describe: config -> where its examples come from, e.g. "idx:<directory>"
      (`source_name`, DatasetInfo.source).
    examples: (config, split, process_index, process_count) -> this process's
      shard of the split as a tf.data.Dataset of uint8 images (H, W, C), or of
      file names when `image_reader` is set, and the split's DatasetInfo.
    load_split: (config, split) -> the whole split in memory: uint8 images
      (N, H, W, C) and int64 labels (N,).
    image_reader: None when the examples are images. For a source whose
      examples are file names: config -> the function that decodes one (to
      uint8, cropped and resized); the names are then fully shuffled (cheap
      even for millions of files) and each image decoded when its batch is due.
  """

  describe: Callable[[ml_collections.ConfigDict], str]
  examples: Callable[[ml_collections.ConfigDict, str, int, int],
                     tuple[tf.data.Dataset, DatasetInfo]]
  load_split: Callable[[ml_collections.ConfigDict, str], tuple[np.ndarray, np.ndarray]]
  image_reader: (Callable[[ml_collections.ConfigDict], Callable[[tf.Tensor], tf.Tensor]]
                 | None) = None


def check_image_shape(info: DatasetInfo, image_shape: tuple[int, int, int]) -> None:
  if tuple(info.image_shape) != tuple(image_shape):
    tfds_source = info.source.startswith("tfds:")
    resize = ", or --config.resize=True to crop and resize" if tfds_source else ""
    raise ValueError(
        f"{info.source} has images of shape {tuple(info.image_shape)} but"
        f" config.image_shape is {tuple(image_shape)}; set --config.image_shape"
        f" to match{resize}, or choose another dataset."
    )


def import_tensorflow():
  """Imports TensorFlow with all GPUs and TPUs hidden from it."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  for device_type in ("GPU", "TPU"):
    try:
      tf.config.set_visible_devices([], device_type)
    except RuntimeError:
      # TensorFlow's devices were initialised (by user code) before they could
      # be hidden; they can no longer change, and an exception here would not
      # help.
      pass
  return tf


def import_tfds():
  """Imports tensorflow_datasets, after hiding the accelerators from TensorFlow."""
  import_tensorflow()
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  return tfds
