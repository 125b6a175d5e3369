"""The stacked-MNIST source: C digits of another source as the C channels of one image.

The mode-collapse benchmark of Metz et al. (2017, "Unrolled GANs", Sec. 3.3):
each image stacks C independently drawn digits (of config.dataset, from tfds
or config.idx_dir) as its channels, R, G, B for C = 3, so the data has
10^C = 1000 equally likely modes. A config asks for it by setting
`stacked_split_sizes` ({"train": N, ...}). The digit triples of a split are
fixed: they depend on the split's name and size only, not on config.seed.
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
from typing import TYPE_CHECKING
import zlib

import ml_collections
import numpy as np

from ebgan_jax.data.common import DatasetInfo, import_tensorflow, Source

if TYPE_CHECKING:  # Annotations only: importing this module must not import TensorFlow.
  import tensorflow as tf


def is_stacked(config: ml_collections.ConfigDict) -> bool:
  """Whether config asks for stacked MNIST: it sets `stacked_split_sizes` ({"train": N, ...})."""
  return config.get("stacked_split_sizes") is not None


def make_source(digit_source: Callable[[ml_collections.ConfigDict], Source]) -> Source:
  """The stacked source over the digits of `digit_source(config)`, the source that
  reads a stacked config's digits (sources.py: the registry's choice without stacking)."""
  stacked = _Stacked(digit_source)
  return Source(describe=stacked.describe, examples=stacked.examples,
                load_split=stacked.load_split)


@dataclasses.dataclass(frozen=True)
class _Stacked:
  digit_source: Callable[[ml_collections.ConfigDict], Source]

  def describe(self, config: ml_collections.ConfigDict) -> str:
    return f"stacked:{self.digit_source(config).describe(config)}"

  def load_split(self, config: ml_collections.ConfigDict,
                 split: str) -> tuple[np.ndarray, np.ndarray]:
    """A whole stacked split: uint8 images (N, H, W, C) and their modes (N,).

    N is config.stacked_split_sizes[split] and C = config.image_shape[-1]; the
    mode of digits (d_1, ..., d_C) is the base-10 number d_1 d_2 ... d_C (e.g.
    digits 3, 0, 7 are mode 307).
    """
    digits, labels = self._digits(config, split)
    indices = _stacked_indices(config, split, len(digits))
    images = np.moveaxis(digits[indices, ..., 0], 1, -1)  # (N, C, H, W) -> (N, H, W, C)
    place_values = 10 ** np.arange(indices.shape[1] - 1, -1, -1)
    return images, labels[indices] @ place_values

  def examples(
      self, config: ml_collections.ConfigDict, split: str, process_index: int,
      process_count: int
  ) -> tuple[tf.data.Dataset, DatasetInfo]:
    """This process's shard of a stacked split, each image gathered from its digits on the fly."""
    tf = import_tensorflow()
    digits, _ = self._digits(config, split)
    indices = _stacked_indices(config, split, len(digits))
    info = DatasetInfo((*digits.shape[1:3], indices.shape[1]), len(indices), split,
                       self.describe(config))
    # The digits once, not every stacked image: 60,000 digits are 47 MB, 100,000
    # three-channel images 235 MB.
    digit_pixels = tf.constant(digits[..., 0])
    shard = tf.data.Dataset.from_tensor_slices(indices).shard(process_count, process_index)
    shard = shard.map(lambda image_indices: tf.transpose(
        tf.gather(digit_pixels, image_indices), [1, 2, 0]))
    return shard, info

  def _digits(self, config: ml_collections.ConfigDict,
              split: str) -> tuple[np.ndarray, np.ndarray]:
    """The single-channel digits (and labels) that a stacked split draws from."""
    if split not in config.stacked_split_sizes:
      raise ValueError(
          f"stacked MNIST has no size for split {split!r}; config.stacked_split_sizes gives"
          f" {sorted(config.stacked_split_sizes)}")
    digit_config = config.copy_and_resolve_references()
    with digit_config.unlocked():
      digit_config.stacked_split_sizes = None
      digit_config.image_shape = (*config.image_shape[:2], 1)
    return self.digit_source(digit_config).load_split(digit_config, split)


def _stacked_indices(config: ml_collections.ConfigDict, split: str, num_digits: int) -> np.ndarray:
  """(N, C) indices into a split's digits, drawn uniformly with a seed fixed by the split's name."""
  rng = np.random.default_rng(zlib.crc32(split.encode()))
  num_examples = config.stacked_split_sizes[split]
  return rng.integers(0, num_digits, size=(num_examples, config.image_shape[-1]))
