"""Input pipelines: endless streams of image batches in [-1, 1].

Three sources feed one tf.data pipeline, so all behave the same:

- a tensorflow-datasets image dataset by name (`config.dataset`, e.g. "mnist",
  "fashion_mnist", "celeb_a", "lsun/bedroom", "imagenet2012"), which downloads
  on first use (imagenet2012 needs a manual download, see `_tfds_builder`);
- a directory of the four MNIST-format IDX files (`config.idx_dir`), which is
  how machines without internet, and CI, read real data; Debian's package
  dataset-fashion-mnist installs them in /usr/share/datasets/fashion-mnist;
- an image folder (`config.image_dir`): any directory tree of JPEG and PNG
  files (.jpg, .jpeg, .png in any case, found recursively and read in sorted
  order of their relative paths), e.g. CelebA's img_align_celeba/, an LSUN
  export or a user's photos. Only the file names are listed, sharded and
  shuffled (a full shuffle per epoch); each image is decoded when its batch
  is due, so no epoch of decoded images is ever held, and resuming skips
  names, not decoded images.

Photographs are cropped and resized (`_crop_and_resize`): a centered square,
`config.crop` pixels on a side (CelebA's usual face crop: 108 of the 178x218
aligned images) or, with crop 0 or None, the largest one, is resized to
config.image_shape by tf.image.resize's bilinear filter with antialiasing (a
triangle filter as wide as the downscaling factor, so no aliasing; plain
bilinear when enlarging), then rounded back to uint8. Image folders always
are; tfds datasets are when `config.crop` is set or `config.resize` is True,
so that MNIST-like data is read exactly as stored.

An image folder has no labels: load_split returns -1 for each image, as for
tfds datasets without a "label" feature. Its splits are its train/ and test/
subfolders when it has both; otherwise a file is in "test" when the SHA-256
of its relative path, read as a fraction of 2^64, is below
`config.test_fraction`: a fixed hold-out that
does not depend on the seed nor move when files are added. load_split of a
photograph source (image folder, or tfds with cropping) loads at most
`config.max_eval_images` images (0 = all),
evenly spaced over the sorted files (tfds: the first ones of the split, which
tfds stored shuffled).

Unreadable image files are skipped and counted, or stop the stream, by what
can be told cheaply: every file's header and last bytes are read when the
folder is listed, and one that is not a complete JPEG or PNG (empty, another
format under an image name, truncated, so without its JPEG end marker FF D9
or PNG IEND chunk) is left out and named in DatasetInfo.skipped and a
warning. That keeps the stream a function of the files, so resuming stays
exact. A file that passes these checks but still cannot be decoded (damaged
inside) stops the stream with a CorruptImageError naming it. A JPEG with data
appended after its end marker, as some phones write, counts as truncated.

TensorFlow is imported inside the functions that use it, never when this
module is imported, and it is denied every accelerator: JAX owns them, and a
TensorFlow that saw a GPU would reserve most of its memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
import dataclasses
import functools
import gzip
import hashlib
import math
import os
import pathlib
import re
import socket
import threading
from typing import TYPE_CHECKING
import urllib.parse
import urllib.request
import zlib

from absl import logging
import jax
import ml_collections
import numpy as np
from PIL import Image

if TYPE_CHECKING:  # Annotations only: importing this module must not import TensorFlow.
  import tensorflow as tf

# File names of the IDX format's two splits, without the optional ".gz".
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_GZ_NAMES = [f"{stem}.gz" for stems in _IDX_FILES.values() for stem in stems]
_IDX_UNSIGNED_BYTE = 0x08  # The IDX type code of uint8, the type of every MNIST-format file.
_OFFLINE_HINT = (
    "set --config.idx_dir=DIR to read the four MNIST-format IDX files offline,"
    " e.g. /usr/share/datasets/fashion-mnist from Debian's package"
    " dataset-fashion-mnist"
)
# tfds images are decoded (PNG) on every read; a split that fits in this many
# bytes once decoded is cached in memory so that only the first epoch decodes.
_CACHE_BYTES = 2**30
# Seconds to wait for a tfds download host before calling the machine offline.
_PROBE_SECONDS = 5.0

# Image folders (config.image_dir) and photographs.
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_IMAGE_FORMATS = ("JPEG", "PNG")  # Pillow's names; its JPEG reader also opens MPO files
_PNG_END = b"IEND\xaeB`\x82"  # the IEND chunk's type and CRC, which end every PNG file
_JPEG_END = b"\xff\xd9"  # the EOI marker
_TAIL_BYTES = 64  # bytes read at a file's end to find its end marker
_SPLIT_DIRS = ("train", "test")
NO_LABEL = -1  # load_split's label for every image of a source without labels
# Images decoded (and resized) at once: one per core. The order stays fixed
# (deterministic map), so the stream does not depend on it.
_PREPROCESS_THREADS = os.cpu_count() or 1


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
      and seed; for photographs also crop, resize and test_fraction (module
      docstring), and tfds_splits, a mapping from the split asked for to the
      tfds split read (e.g. {"test": "validation"}).
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
  local_batch_size = _local_batch_size(config.batch_size, process_count)

  source = _source(config)
  if is_stacked(config):
    examples, info = _stacked_examples(config, split, process_index, process_count)
  elif source == "images":
    examples, info = _image_folder_examples(config, split, process_index, process_count)
  elif source == "idx":
    examples, info = _idx_examples(config, split, process_index, process_count)
  else:
    examples, info = _tfds_examples(config, split, process_index, process_count)
  _check_image_shape(info, config.image_shape)
  num_local_examples = int(examples.cardinality())
  if num_local_examples == 0:
    raise ValueError(
        f"Process {process_index} of {process_count} gets none of the"
        f" {info.num_examples} examples of {info.source}; use fewer processes."
    )
  shuffle_buffer, read_image = config.shuffle_buffer, None
  if source == "images":
    # The examples are file names: a full shuffle of them costs little memory
    # even for millions of files; each image is decoded after the shuffle.
    shuffle_buffer, read_image = num_local_examples, _image_reader(config)
  order = functools.partial(
      _shuffled,
      examples,
      num_local_examples,
      batch_size=local_batch_size,
      seed=config.seed,
      shuffle_buffer=shuffle_buffer,
  )
  batches = _batches(order(start_step=start_step), local_batch_size, preprocess=read_image)
  batches = batches.as_numpy_iterator()
  if read_image is not None:
    batches = _corrupt_images_named(batches, start_step, local_batch_size, read_image, order)
  return batches, info


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
  tf = _import_tensorflow()
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  local_batch_size = _local_batch_size(batch_size, process_count)
  local = slice(process_index, None, process_count)
  arrays = images[local] if labels is None else (images[local], labels[local])
  num_local_examples = len(images[local])
  if num_local_examples == 0:
    raise ValueError(f"Process {process_index} of {process_count} gets none of the "
                     f"{len(images)} examples; use fewer processes.")
  stream = _shuffled(tf.data.Dataset.from_tensor_slices(arrays), num_local_examples,
                     batch_size=local_batch_size, seed=seed, shuffle_buffer=num_local_examples,
                     start_step=start_step)
  return _batches(stream, local_batch_size).as_numpy_iterator()


def source_name(config: ml_collections.ConfigDict) -> str:
  """Where config's examples come from.

  "images:<directory>", "idx:<directory>" or "tfds:<name>", or for stacked
  MNIST "stacked:" and the source of its digits.
  """
  kind = _source(config)
  if kind == "images":
    source = f"images:{config.image_dir}"
  elif kind == "idx":
    source = f"idx:{config.idx_dir}"
  else:
    source = f"tfds:{config.dataset}"
  return f"stacked:{source}" if is_stacked(config) else source


def _source(config: ml_collections.ConfigDict) -> str:
  """Which source config reads: "images" (image_dir), "idx" (idx_dir) or "tfds" (dataset)."""
  if config.image_dir:
    if config.idx_dir or is_stacked(config):
      other = "idx_dir" if config.idx_dir else "stacked_split_sizes"
      raise ValueError(
          f"config sets both image_dir ({config.image_dir}) and {other}; an image folder is a"
          f" source of its own, so set --config.{other}=None or --config.image_dir=None."
      )
    return "images"
  return "idx" if config.idx_dir else "tfds"


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
  if is_stacked(config):
    return load_stacked_split(config, split)
  source = _source(config)
  if source == "images":
    return _load_image_folder_split(config, split)
  if source == "idx":
    images, labels = _read_idx_split(config.idx_dir, split)
    info = DatasetInfo(images.shape[1:], len(images), split, source_name(config))
  else:
    tfds = _import_tfds()
    tf = _import_tensorflow()
    builder = _tfds_builder(config)
    split = _tfds_split(config, split)
    features = builder.info.features
    preprocess = _tfds_preprocess(config, tuple(features["image"].shape), source_name(config))
    examples = builder.as_dataset(split=split)
    if preprocess is not None and _max_eval_images(config):
      examples = examples.take(_max_eval_images(config))
    no_label = tf.constant(NO_LABEL, tf.int64)
    examples = examples.map(
        lambda example: (example["image"], example["label"] if "label" in features else no_label)
    )
    if preprocess is not None:
      examples = examples.map(
          lambda image, label: (preprocess(image), label),
          num_parallel_calls=_PREPROCESS_THREADS, deterministic=True,
      )
    # One batch of the whole split; as_dataset(batch_size=-1) would do the
    # same but crashes under tfds.testing.mock_data, whose info has no splits.
    whole_split = examples.batch(int(examples.cardinality())).get_single_element()
    images, labels = tfds.as_numpy(whole_split)
    labels = labels.astype(np.int64)
    info = DatasetInfo(images.shape[1:], len(images), split, source_name(config))
  _check_image_shape(info, config.image_shape)
  return images, labels


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


def _idx_examples(
    config: ml_collections.ConfigDict, split: str, process_index: int, process_count: int
) -> tuple[tf.data.Dataset, DatasetInfo]:
  """Returns this process's shard of an IDX split as a tf.data.Dataset, and its info."""
  tf = _import_tensorflow()
  images, _ = _read_idx_split(config.idx_dir, split)
  info = DatasetInfo(images.shape[1:], len(images), split, source_name(config))
  examples = tf.data.Dataset.from_tensor_slices(images).shard(process_count, process_index)
  return examples, info


def _tfds_builder(config: ml_collections.ConfigDict):
  """Returns the prepared tfds builder of config.dataset, downloading if allowed."""
  tfds = _import_tfds()
  name = config.dataset
  try:
    builder = tfds.builder(name, data_dir=config.data_dir)
  except tfds.core.DatasetNotFoundError:
    raise ValueError(
        f"Unknown tfds dataset {name!r}; `python -c \"import tensorflow_datasets"
        " as tfds; print(tfds.list_builders())\"` lists the names, and"
        " https://www.tensorflow.org/datasets/catalog describes them."
    ) from None
  if "image" not in builder.info.features:
    raise ValueError(
        f"tfds dataset {name!r} has no 'image' feature (it has"
        f" {sorted(builder.info.features)}); EBGAN needs an image dataset."
    )
  if builder.is_prepared():
    return builder
  hint = _OFFLINE_HINT
  if builder.MANUAL_DOWNLOAD_INSTRUCTIONS:
    # Data that its owners hand out by hand (imagenet2012): tfds reads it from
    # its manual_dir and downloads nothing, so there is no host to probe.
    manual_dir = builder.data_dir_root / "downloads" / "manual"
    if not manual_dir.is_dir() or not any(manual_dir.iterdir()):
      instructions = " ".join(builder.MANUAL_DOWNLOAD_INSTRUCTIONS.split())
      raise FileNotFoundError(
          f"tfds dataset {name!r} must be downloaded by hand into {manual_dir}/ (tfds's"
          f" manual_dir), which is missing or empty: {instructions}"
      )
    hint = f"check the files in {manual_dir}"
  if not config.download:
    raise FileNotFoundError(
        f"tfds dataset {name!r} is not in {builder.data_dir_root} and"
        f" config.download is False; allow the download, or {_OFFLINE_HINT}."
    )
  if not builder.MANUAL_DOWNLOAD_INSTRUCTIONS:
    host = _unreachable_download_host(builder)
    if host:
      raise FileNotFoundError(
          f"tfds dataset {name!r} is not in {builder.data_dir_root} and cannot be"
          f" downloaded: {host} does not answer (no network?); {_OFFLINE_HINT}."
      )
  # Offline, the failure surfaces as any of several network, download or
  # checksum exceptions, depending on where the download stopped.
  try:
    builder.download_and_prepare()
  except Exception as error:  # pylint: disable=broad-except
    raise FileNotFoundError(
        f"tfds dataset {name!r} is not in {builder.data_dir_root} and could not"
        f" be downloaded ({type(error).__name__}: {error}); {hint}."
    ) from error
  return builder


def _unreachable_download_host(builder) -> str | None:
  """The host of the builder's first download if it does not answer within seconds, else None.

  Offline, tfds would spend minutes in download retries before it gives up.
  Behind a proxy, or for a builder without recorded URLs, nothing is probed.
  """
  if urllib.request.getproxies():
    return None
  try:
    urls = list(builder.url_infos or {})
  except Exception:  # pylint: disable=broad-except  # no checksums file: nothing to probe
    return None
  if not urls:
    return None
  url = urllib.parse.urlsplit(urls[0])
  address = (url.hostname, url.port or (80 if url.scheme == "http" else 443))
  answered = []

  def connect():
    try:
      socket.create_connection(address, timeout=_PROBE_SECONDS).close()
      answered.append(True)
    except OSError:
      pass

  # In a thread: the connect timeout does not bound the name lookup, which can
  # hang for longer when no name server answers.
  probe = threading.Thread(target=connect, daemon=True)
  probe.start()
  probe.join(_PROBE_SECONDS)
  return None if answered else url.hostname


def _tfds_examples(
    config: ml_collections.ConfigDict, split: str, process_index: int, process_count: int
) -> tuple[tf.data.Dataset, DatasetInfo]:
  """Returns this process's shard of a tfds split as a tf.data.Dataset, and its info."""
  tfds = _import_tfds()
  builder = _tfds_builder(config)
  split = _tfds_split(config, split)
  # Read from the dataset rather than from builder.info.splits, which is empty
  # under tfds.testing.mock_data.
  num_examples = int(builder.as_dataset(split=split).cardinality())
  stored_shape = tuple(builder.info.features["image"].shape)
  preprocess = _tfds_preprocess(config, stored_shape, source_name(config))
  image_shape = stored_shape if preprocess is None else tuple(config.image_shape)
  info = DatasetInfo(image_shape, num_examples, split, source_name(config))
  _check_image_shape(info, config.image_shape)
  # Each process reads only its own files' range instead of all of them.
  process_split = tfds.split_for_jax_process(
      split, process_index=process_index, process_count=process_count
  )
  # Files in a fixed order: the seeded shuffle buffer alone decides the order,
  # which a resumed run must reproduce.
  examples = builder.as_dataset(split=process_split, shuffle_files=False)
  examples = examples.map(lambda example: example["image"])
  if preprocess is not None:
    # Before the cache and the shuffle buffer, which then hold small images.
    examples = examples.map(
        preprocess, num_parallel_calls=_PREPROCESS_THREADS, deterministic=True
    )
  if int(examples.cardinality()) * math.prod(info.image_shape) <= _CACHE_BYTES:
    examples = examples.cache()
  return examples, info


def _tfds_split(config: ml_collections.ConfigDict, split: str) -> str:
  """The tfds split read for `split`, after config.tfds_splits (lsun has no "test" split)."""
  return dict(config.tfds_splits or {}).get(split, split)


def _check_image_shape(info: DatasetInfo, image_shape: tuple[int, int, int]) -> None:
  if tuple(info.image_shape) != tuple(image_shape):
    tfds_source = info.source.startswith("tfds:")
    resize = ", or --config.resize=True to crop and resize" if tfds_source else ""
    raise ValueError(
        f"{info.source} has images of shape {tuple(info.image_shape)} but"
        f" config.image_shape is {tuple(image_shape)}; set --config.image_shape"
        f" to match{resize}, or choose another dataset."
    )


def _local_batch_size(batch_size: int, process_count: int) -> int:
  """Returns one process's part of the global batch, checking that it splits."""
  if batch_size <= 0:
    raise ValueError(f"batch_size {batch_size} must be positive.")
  if batch_size % process_count:
    raise ValueError(
        f"Global batch_size {batch_size} is not divisible by the {process_count}"
        f" processes; choose a batch_size that is a multiple of {process_count}."
    )
  return batch_size // process_count


def _shuffled(
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
  tf = _import_tensorflow()
  first_epoch, offset = divmod(start_step * batch_size, num_examples)
  epoch_seeds = tf.data.Dataset.random(seed=seed).skip(first_epoch)
  stream = epoch_seeds.flat_map(
      lambda epoch_seed: examples.shuffle(
          shuffle_buffer, seed=epoch_seed, reshuffle_each_iteration=False
      )
  )
  return stream.skip(offset)


def _batches(
    stream: tf.data.Dataset,
    batch_size: int,
    *,
    preprocess: Callable[[tf.Tensor], tf.Tensor] | None = None,
) -> tf.data.Dataset:
  """Turns a stream of uint8 images (or of what `preprocess` makes them from) into batches.

  The batches are float32, normalised, and come in a fixed order. A stream of
  (image, label) pairs gives (images, labels) batches, the labels as they are.
  """
  tf = _import_tensorflow()
  if preprocess is not None:
    stream = stream.map(preprocess, num_parallel_calls=_PREPROCESS_THREADS, deterministic=True)
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
  """Maps uint8 pixels p to float32 p / 127.5 - 1, in [-1, 1] like G's tanh."""
  tf = _import_tensorflow()
  return tf.cast(images, tf.float32) / 127.5 - 1.0


def _import_tensorflow():
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


def _import_tfds():
  """Imports tensorflow_datasets, after hiding the accelerators from TensorFlow."""
  _import_tensorflow()
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  return tfds


# --- Image folders and photographs --------------------------------------------
#
# The module docstring gives the rules: listing, splits, cropping and resizing,
# unreadable files. Decoding happens in tf.data, after the shuffle.


def _photo_settings(config: ml_collections.ConfigDict) -> tuple[tuple[int, int, int], int | None]:
  """config.image_shape and config.crop, checked, for a source that crops and resizes."""
  image_shape = tuple(config.image_shape)
  if (len(image_shape) != 3 or image_shape[-1] not in (1, 3)
          or not all(isinstance(n, int) and n > 0 for n in image_shape)):
    raise ValueError(
        f"config.image_shape must be (height, width, 1 or 3) for images that are cropped"
        f" and resized (grey or RGB), got {image_shape}."
    )
  crop = config.crop or None  # 0, as on the command line, or None: the largest square
  if crop is not None and (isinstance(crop, bool) or not isinstance(crop, int) or crop < 1):
    raise ValueError(
        f"config.crop must be the side in pixels of the centered square to cut out, or 0"
        f" for the largest one; got {crop!r}."
    )
  return image_shape, crop


def _tfds_preprocess(
    config: ml_collections.ConfigDict, stored_shape: tuple, source: str
) -> Callable[[tf.Tensor], tf.Tensor] | None:
  """The crop and resize of a tfds dataset's images, or None when config reads them as stored."""
  if not config.crop and not config.resize:
    return None
  image_shape, crop = _photo_settings(config)
  height, width, channels = stored_shape
  if channels != image_shape[-1]:
    raise ValueError(
        f"{source} has {channels}-channel images but config.image_shape {image_shape} asks"
        f" for {image_shape[-1]}; set its last entry to {channels}."
    )
  if crop is not None and height is not None and width is not None and crop > min(height, width):
    raise ValueError(
        f"config.crop {crop} is larger than the {width}x{height} images of {source}; choose a"
        f" crop of at most {min(height, width)}, or 0 for the largest centered square."
    )
  return functools.partial(_crop_and_resize, image_shape=image_shape, crop=crop)


def _crop_and_resize(image: tf.Tensor, image_shape: tuple[int, int, int],
                     crop: int | None) -> tf.Tensor:
  """A centered square of a uint8 image (H, W, C), resized to image_shape, as uint8."""
  tf = _import_tensorflow()
  height, width = tf.shape(image)[0], tf.shape(image)[1]
  shortest = tf.minimum(height, width)
  side = shortest if crop is None else tf.constant(crop, tf.int32)
  fits = tf.debugging.assert_less_equal(
      side, shortest, message=f"config.crop {crop} is larger than an image")
  with tf.control_dependencies([fits]):
    square = tf.image.crop_to_bounding_box(
        image, (height - side) // 2, (width - side) // 2, side, side)
  # Bilinear with antialias: when shrinking, a triangle filter stretched by the
  # scale factor, so every input pixel counts (no aliasing; PIL's bilinear
  # resize does the same); when enlarging, plain bilinear interpolation.
  # Rounded to uint8 like stored pixels, so that training and evaluation
  # (load_split) see the same values.
  resized = tf.image.resize(square, image_shape[:2], method="bilinear", antialias=True)
  return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)


def _image_reader(config: ml_collections.ConfigDict) -> Callable[[tf.Tensor], tf.Tensor]:
  """A function from a file name to its image, decoded, cropped and resized (uint8)."""
  image_shape, crop = _photo_settings(config)
  return functools.partial(_read_image, image_shape=image_shape, crop=crop)


def _read_image(path: tf.Tensor, image_shape: tuple[int, int, int], crop: int | None) -> tf.Tensor:
  tf = _import_tensorflow()
  # decode_image reads the format from the bytes, not the name; channels
  # converts grey to RGB and drops alpha.
  image = tf.io.decode_image(
      tf.io.read_file(path), channels=image_shape[-1], expand_animations=False)
  image.set_shape([None, None, image_shape[-1]])
  return _crop_and_resize(image, image_shape, crop)


def _max_eval_images(config: ml_collections.ConfigDict) -> int:
  """Images load_split returns from a photograph source at most; 0 = all."""
  return int(config.max_eval_images or 0)


def _image_folder(
    config: ml_collections.ConfigDict, split: str
) -> tuple[pathlib.Path, list[str], list[str]]:
  """The split's folder, its complete JPEG / PNG files and the skipped ones, relative, sorted."""
  _, crop = _photo_settings(config)  # bad settings fail before the folder is read
  directory = pathlib.Path(config.image_dir).expanduser()
  if not directory.is_dir():
    raise FileNotFoundError(
        f"image_dir {directory} does not exist; point --config.image_dir at a folder of"
        " JPEG or PNG files (subfolders are searched too)."
    )
  if split not in _SPLIT_DIRS:
    raise ValueError(f"image folders have no split {split!r}; use 'train' or 'test'.")
  has_split_dirs = all((directory / name).is_dir() for name in _SPLIT_DIRS)
  root = directory / split if has_split_dirs else directory
  names = _list_images(root)
  if not names:
    raise FileNotFoundError(
        f"image_dir {root} holds no JPEG or PNG file (.jpg, .jpeg or .png in any case,"
        " searched recursively); point --config.image_dir at the folder of images."
    )
  if not has_split_dirs:
    fraction = config.test_fraction
    if not 0.0 <= fraction < 1.0:
      raise ValueError(f"config.test_fraction must be in [0, 1), got {fraction}.")
    num_files = len(names)
    names = [name for name in names if _in_test_split(name, fraction) == (split == "test")]
    if not names:
      raise ValueError(
          f"image_dir {directory} has no {split} images: config.test_fraction {fraction} of"
          f" its {num_files} files gives none; raise it, or add train/ and test/ subfolders."
      )

  files, skipped = [], []
  for name in names:
    size = _image_size(root / name)
    if size is None:
      skipped.append(name)
    elif crop is not None and crop > min(size):
      raise ValueError(
          f"config.crop {crop} is larger than {root / name} ({size[0]}x{size[1]} pixels);"
          f" lower --config.crop (0: the largest centered square), or remove the image."
      )
    else:
      files.append(name)
  if skipped:
    logging.warning("Skipped %d of the %d files in %s that are not complete JPEG or PNG"
                    " images: %s", len(skipped), len(names), root,
                    ", ".join(skipped[:5]) + (", ..." if len(skipped) > 5 else ""))
  if not files:
    raise ValueError(
        f"none of the {len(names)} {split} files in {root} is a complete JPEG or PNG image"
        f" (e.g. {root / skipped[0]}); they are empty, truncated or of another format."
    )
  return root, files, skipped


def _list_images(root: pathlib.Path) -> list[str]:
  """The relative paths (with "/") of the image files under root, in sorted order."""
  prefix = len(str(root)) + 1
  names = []
  for folder, _, files in os.walk(root, followlinks=True):
    names += [os.path.join(folder, name)[prefix:].replace(os.sep, "/")
              for name in files if name.lower().endswith(_IMAGE_SUFFIXES)]
  return sorted(names)


def _in_test_split(name: str, test_fraction: float) -> bool:
  """Whether the file `name` (relative path) is held out: its hash is in the lowest fraction."""
  digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).digest()
  return int.from_bytes(digest[:8], "big") < test_fraction * 2**64


def _image_size(path: pathlib.Path) -> tuple[int, int] | None:
  """(width, height) of a complete JPEG or PNG file, read from its header; None if it is not.

  Complete: Pillow reads the header (no pixels are decoded), and the file ends
  with its format's end marker (after zero padding, for JPEG), which a
  truncated file lacks.
  """
  try:
    with open(path, "rb") as file, Image.open(file, formats=_IMAGE_FORMATS) as image:
      size, image_format = image.size, image.format
      length = file.seek(0, os.SEEK_END)
      file.seek(max(0, length - _TAIL_BYTES))
      tail = file.read()
  except Exception:  # pylint: disable=broad-except  # Pillow raises many kinds on bad files
    return None
  complete = (tail.endswith(_PNG_END) if image_format == "PNG"
              else tail.rstrip(b"\0").endswith(_JPEG_END))
  return size if complete else None


def _image_folder_examples(
    config: ml_collections.ConfigDict, split: str, process_index: int, process_count: int
) -> tuple[tf.data.Dataset, DatasetInfo]:
  """This process's shard of an image folder's split, as a dataset of file names."""
  tf = _import_tensorflow()
  root, files, skipped = _image_folder(config, split)
  info = DatasetInfo(tuple(config.image_shape), len(files), split, source_name(config),
                     tuple(skipped))
  paths = tf.data.Dataset.from_tensor_slices([str(root / name) for name in files])
  return paths.shard(process_count, process_index), info


def _load_image_folder_split(
    config: ml_collections.ConfigDict, split: str
) -> tuple[np.ndarray, np.ndarray]:
  """load_split of an image folder: at most max_eval_images images, evenly spaced; labels -1."""
  tf = _import_tensorflow()
  root, files, _ = _image_folder(config, split)
  limit = _max_eval_images(config)
  if limit and len(files) > limit:
    files = [files[i] for i in np.linspace(0, len(files), limit, endpoint=False).astype(int)]
  paths = [str(root / name) for name in files]
  read_image = _image_reader(config)
  images = tf.data.Dataset.from_tensor_slices(paths).map(
      read_image, num_parallel_calls=_PREPROCESS_THREADS, deterministic=True)
  try:
    images = images.batch(len(paths)).get_single_element().numpy()
  except tf.errors.OpError as error:
    raise _corrupt_image_error(paths, read_image, error) from None
  return images, np.full(len(images), NO_LABEL, np.int64)


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
  tf = _import_tensorflow()
  step = start_step
  while True:
    try:
      batch = next(batches)
    except StopIteration:
      return
    except tf.errors.OpError as error:
      names = order(start_step=step).take(batch_size)
      suspects = [path.decode() for path in names.as_numpy_iterator()]
      raise _corrupt_image_error(suspects, read_image, error) from None
    yield batch
    step += 1


class CorruptImageError(ValueError):
  """An image file that passed the listing's checks cannot be decoded."""


def _corrupt_image_error(paths: list[str], read_image, error: Exception) -> CorruptImageError:
  """The error for the first of paths that does not decode (error: the pipeline's)."""
  tf = _import_tensorflow()
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


# --- Stacked MNIST ------------------------------------------------------------
#
# The mode-collapse benchmark of Metz et al. (2017, "Unrolled GANs", Sec. 3.3):
# each image stacks C independently drawn digits (of config.dataset, from tfds
# or config.idx_dir) as its channels, R, G, B for C = 3, so the data has
# 10^C = 1000 equally likely modes. The digit triples of a split are fixed:
# they depend on the split's name and size only, not on config.seed.


def is_stacked(config: ml_collections.ConfigDict) -> bool:
  """Whether config asks for stacked MNIST: it sets `stacked_split_sizes` ({"train": N, ...})."""
  return config.get("stacked_split_sizes") is not None


def load_stacked_split(
    config: ml_collections.ConfigDict, split: str = "test"
) -> tuple[np.ndarray, np.ndarray]:
  """Returns a whole stacked-MNIST split: uint8 images (N, H, W, C) and their modes (N,).

  N is config.stacked_split_sizes[split] and C = config.image_shape[-1]; the
  mode of digits (d_1, ..., d_C) is the base-10 number d_1 d_2 ... d_C (e.g.
  digits 3, 0, 7 are mode 307).
  """
  digits, labels = _stacked_digits(config, split)
  indices = _stacked_indices(config, split, len(digits))
  images = np.moveaxis(digits[indices, ..., 0], 1, -1)  # (N, C, H, W) -> (N, H, W, C)
  place_values = 10 ** np.arange(indices.shape[1] - 1, -1, -1)
  return images, labels[indices] @ place_values


def _stacked_digits(config: ml_collections.ConfigDict, split: str) -> tuple[np.ndarray, np.ndarray]:
  """The single-channel digits (and labels) that a stacked split draws from."""
  if split not in config.stacked_split_sizes:
    raise ValueError(
        f"stacked MNIST has no size for split {split!r}; config.stacked_split_sizes gives"
        f" {sorted(config.stacked_split_sizes)}")
  digit_config = config.copy_and_resolve_references()
  with digit_config.unlocked():
    digit_config.stacked_split_sizes = None
    digit_config.image_shape = (*config.image_shape[:2], 1)
  return load_split(digit_config, split)


def _stacked_indices(config: ml_collections.ConfigDict, split: str, num_digits: int) -> np.ndarray:
  """(N, C) indices into a split's digits, drawn uniformly with a seed fixed by the split's name."""
  rng = np.random.default_rng(zlib.crc32(split.encode()))
  num_examples = config.stacked_split_sizes[split]
  return rng.integers(0, num_digits, size=(num_examples, config.image_shape[-1]))


def _stacked_examples(
    config: ml_collections.ConfigDict, split: str, process_index: int, process_count: int
) -> tuple[tf.data.Dataset, DatasetInfo]:
  """This process's shard of a stacked split, each image gathered from its digits on the fly."""
  tf = _import_tensorflow()
  digits, _ = _stacked_digits(config, split)
  indices = _stacked_indices(config, split, len(digits))
  info = DatasetInfo((*digits.shape[1:3], indices.shape[1]), len(indices), split,
                     source_name(config))
  # The digits once, not every stacked image: 60,000 digits are 47 MB, 100,000
  # three-channel images 235 MB.
  digit_pixels = tf.constant(digits[..., 0])
  examples = tf.data.Dataset.from_tensor_slices(indices).shard(process_count, process_index)
  examples = examples.map(lambda image_indices: tf.transpose(
      tf.gather(digit_pixels, image_indices), [1, 2, 0]))
  return examples, info
