"""Small data sets that tests/test_data.py writes to disk: IDX files and a tfds dataset.

Every image is filled with one value, its index in the split, so a test can
tell which examples a batch holds.
"""

import gzip
import os
import pathlib

import numpy as np
import pytest
import tensorflow_datasets as tfds

FASHION_MNIST = pathlib.Path("/usr/share/datasets/fashion-mnist")

IDX_NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def numbered_images(num_images: int, height: int = 4, width: int = 4) -> np.ndarray:
  """Returns uint8 images (N, H, W) where image i is filled with i (mod 256)."""
  values = np.arange(num_images, dtype=np.int64) % 256
  return np.broadcast_to(values[:, None, None], (num_images, height, width)).astype(np.uint8)


def idx_bytes(array: np.ndarray) -> bytes:
  """Returns the IDX encoding of a uint8 array (magic 0x000008NN, NN = ndim)."""
  header = (0x0800 | array.ndim).to_bytes(4, "big")
  header += b"".join(int(n).to_bytes(4, "big") for n in array.shape)
  return header + np.ascontiguousarray(array, np.uint8).tobytes()


def write_idx(path: pathlib.Path, array: np.ndarray) -> pathlib.Path:
  """Writes an IDX file, gzip-compressed when the name ends in .gz."""
  content = idx_bytes(array)
  path.write_bytes(gzip.compress(content) if path.suffix == ".gz" else content)
  return path


def write_idx_dir(
    directory: pathlib.Path,
    num_train: int = 24,
    num_test: int = 8,
    *,
    compress: bool = True,
    height: int = 4,
    width: int = 4,
) -> pathlib.Path:
  """Writes the four IDX files of a small MNIST-format data set; label i = i % 10."""
  directory.mkdir(parents=True, exist_ok=True)
  suffix = ".gz" if compress else ""
  for split, count in (("train", num_train), ("test", num_test)):
    images_name, labels_name = IDX_NAMES[split]
    write_idx(directory / f"{images_name}{suffix}", numbered_images(count, height, width))
    write_idx(directory / f"{labels_name}{suffix}", (np.arange(count) % 10).astype(np.uint8))
  return directory


def write_random_idx_dir(directory: pathlib.Path, num_train: int, num_test: int) -> pathlib.Path:
  """The four IDX files of random 28x28 images, label i = i % 10.

  Random pixels, not numbered_images' constant ones: a batch of constant images gives
  BatchNorm a near-zero variance that amplifies rounding differences into real ones.
  """
  directory.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(0)
  for split, count in (("train", num_train), ("test", num_test)):
    images, labels = IDX_NAMES[split]
    write_idx(directory / f"{images}.gz", rng.integers(0, 256, (count, 28, 28), dtype=np.uint8))
    write_idx(directory / f"{labels}.gz", (np.arange(count) % 10).astype(np.uint8))
  return directory


def real_fashion_mnist() -> pathlib.Path:
  """Debian's Fashion-MNIST IDX directory; skips the test without it (fails it in CI)."""
  if not FASHION_MNIST.is_dir():
    if os.environ.get("CI"):
      pytest.fail(f"{FASHION_MNIST} is missing in CI: .ci/run must install dataset-fashion-mnist")
    pytest.skip("apt-get install dataset-fashion-mnist for the real-data tests")
  return FASHION_MNIST


class EbganTinyImages(tfds.core.GeneratorBasedBuilder):
  """A 4x4 grey image data set that prepares offline: 24 train, 8 test examples."""

  VERSION = tfds.core.Version("1.0.0")
  SPLIT_SIZES = {"train": 24, "test": 8}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(4, 4, 1)),
            "label": tfds.features.ClassLabel(num_classes=10),
        })
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    return {split: self._generate_examples(size) for split, size in self.SPLIT_SIZES.items()}

  def _generate_examples(self, num_examples):
    images = numbered_images(num_examples)[..., np.newaxis]
    for index in range(num_examples):
      yield index, {"image": images[index], "label": index % 10}
