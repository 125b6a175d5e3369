"""The IDX source: a directory of the four MNIST-format files (`config.idx_dir`).

This is how machines without internet, and CI, read real data; Debian's
package dataset-fashion-mnist installs them in /usr/share/datasets/fashion-mnist.
The files may be gzipped or not; `read_idx` reads and validates one.
"""

from __future__ import annotations

import gzip
import math
import pathlib
from typing import TYPE_CHECKING
import zlib

import ml_collections
import numpy as np

from ebgan_jax.data.common import check_image_shape, DatasetInfo, import_tensorflow, Source

if TYPE_CHECKING:  # Annotations only: importing this module must not import TensorFlow.
  import tensorflow as tf

# File names of the IDX format's two splits, without the optional ".gz".
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_GZ_NAMES = [f"{stem}.gz" for stems in _IDX_FILES.values() for stem in stems]
_IDX_UNSIGNED_BYTE = 0x08  # The IDX type code of uint8, the type of every MNIST-format file.


def describe(config: ml_collections.ConfigDict) -> str:
  return f"idx:{config.idx_dir}"


def examples(
    config: ml_collections.ConfigDict, split: str, process_index: int, process_count: int
) -> tuple[tf.data.Dataset, DatasetInfo]:
  """Returns this process's shard of an IDX split as a tf.data.Dataset, and its info."""
  tf = import_tensorflow()
  images, _ = _read_idx_split(config.idx_dir, split)
  info = DatasetInfo(images.shape[1:], len(images), split, describe(config))
  shard = tf.data.Dataset.from_tensor_slices(images).shard(process_count, process_index)
  return shard, info


def load_split(config: ml_collections.ConfigDict, split: str) -> tuple[np.ndarray, np.ndarray]:
  """The split's uint8 images (N, H, W, 1) and int64 labels, in file order."""
  images, labels = _read_idx_split(config.idx_dir, split)
  info = DatasetInfo(images.shape[1:], len(images), split, describe(config))
  check_image_shape(info, config.image_shape)
  return images, labels


SOURCE = Source(describe=describe, examples=examples, load_split=load_split)


def read_idx(path: str | pathlib.Path, ndim: int | None = None) -> np.ndarray:
  """Reads one IDX file of unsigned bytes, gzip-compressed or plain.

  The format (http://yann.lecun.com/exdb/mnist/): a big-endian uint32 magic
  number 0x000008NN (type code 0x08 = unsigned byte, NN = number of
  dimensions), one big-endian uint32 per dimension, then the bytes in C order.

  Args:
    path: the file; a name ending in ".gz" is decompressed.
    ndim: the number of dimensions the file must have (3 for images, magic
      0x00000803; 1 for labels, magic 0x00000801); None accepts any.

  Returns:
    A uint8 array of the shape its header gives.

  Raises:
    FileNotFoundError: no such file.
    ValueError: the file is not a gzip file, is truncated or has extra bytes,
      or its magic number is not the expected one.
  """
  path = pathlib.Path(path)
  data = _read_bytes(path)
  magic = int.from_bytes(data[:4], "big")
  file_ndim = magic & 0xFF
  header_size = 4 + 4 * file_ndim
  if len(data) < header_size:
    raise ValueError(
        f"{path} ends inside its header ({len(data)} bytes): the file is"
        " truncated, download it again."
    )
  if magic >> 8 != _IDX_UNSIGNED_BYTE or file_ndim == 0 or ndim not in (None, file_ndim):
    expected = "0x000008NN" if ndim is None else f"0x{_IDX_UNSIGNED_BYTE << 8 | ndim:08x}"
    raise ValueError(
        f"{path} starts with magic number 0x{magic:08x}, not {expected}: it is"
        " not an unsigned-byte IDX file of the expected kind (images are"
        " 0x00000803, labels 0x00000801)."
    )
  shape = tuple(int(n) for n in np.frombuffer(data[4:header_size], ">u4"))
  size = math.prod(shape)
  if len(data) != header_size + size:
    raise ValueError(
        f"{path} holds {len(data) - header_size} data bytes but its header"
        f" promises {size} (shape {shape}): the file is truncated or corrupt,"
        " download it again."
    )
  # A copy, so that callers get a writable array rather than a view of bytes.
  return np.frombuffer(data, np.uint8, offset=header_size).reshape(shape).copy()


def _read_bytes(path: pathlib.Path) -> bytes:
  """Returns the content of a file, decompressed if its name ends in .gz."""
  if not path.is_file():
    raise FileNotFoundError(f"IDX file {path} does not exist.")
  if path.suffix != ".gz":
    return path.read_bytes()
  with path.open("rb") as raw:
    try:
      return gzip.GzipFile(fileobj=raw).read()
    except (OSError, EOFError, zlib.error) as error:
      raise ValueError(
          f"{path} is not a valid gzip file ({error}): it is truncated or"
          " corrupt, download it again."
      ) from error


def _idx_paths(idx_dir: str | pathlib.Path, split: str) -> tuple[pathlib.Path, pathlib.Path]:
  """Returns the (images, labels) files of a split, preferring the .gz ones."""
  directory = pathlib.Path(idx_dir).expanduser()
  if not directory.is_dir():
    raise FileNotFoundError(
        f"IDX directory {directory} does not exist; point --config.idx_dir at a"
        f" folder with the four files {', '.join(_IDX_GZ_NAMES)}, e.g."
        " /usr/share/datasets/fashion-mnist from Debian's package"
        " dataset-fashion-mnist."
    )
  if split not in _IDX_FILES:
    raise ValueError(f"IDX files have no split {split!r}; use 'train' or 'test' (the t10k files).")
  paths = []
  for stem in _IDX_FILES[split]:
    candidates = [directory / f"{stem}.gz", directory / stem]
    found = [path for path in candidates if path.is_file()]
    if not found:
      raise FileNotFoundError(
          f"IDX directory {directory} has no {stem}.gz (nor uncompressed"
          f" {stem}); it needs the four standard files {', '.join(_IDX_GZ_NAMES)}."
      )
    paths.append(found[0])
  return paths[0], paths[1]


def _read_idx_split(idx_dir: str | pathlib.Path, split: str) -> tuple[np.ndarray, np.ndarray]:
  """Returns the uint8 images (N, H, W, 1) and int64 labels (N,) of a split."""
  images_path, labels_path = _idx_paths(idx_dir, split)
  images = read_idx(images_path, ndim=3)
  labels = read_idx(labels_path, ndim=1)
  if len(images) != len(labels):
    raise ValueError(
        f"{images_path} holds {len(images)} images but {labels_path} holds"
        f" {len(labels)} labels; the two files do not belong together."
    )
  return images[..., np.newaxis], labels.astype(np.int64)
