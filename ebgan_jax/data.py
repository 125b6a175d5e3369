"""Input pipelines: endless streams of image batches in [-1, 1].

Two sources feed one tf.data pipeline, so both behave the same:

- a tensorflow-datasets image dataset by name (`config.dataset`, e.g. "mnist",
  "fashion_mnist"), which downloads on first use, and
- a directory of the four MNIST-format IDX files (`config.idx_dir`), which is
  how machines without internet, and CI, read real data; Debian's package
  dataset-fashion-mnist installs them in /usr/share/datasets/fashion-mnist.

TensorFlow is imported inside the functions that use it, never when this
module is imported, and it is denied every accelerator: JAX owns them, and a
TensorFlow that saw a GPU would reserve most of its memory.
"""

from __future__ import annotations

from collections.abc import Iterator
import dataclasses
import gzip
import math
import pathlib
from typing import TYPE_CHECKING
import zlib

import jax
import ml_collections
import numpy as np

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


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What a pipeline serves.

  Attributes:
    image_shape: (height, width, channels) of one image.
    num_examples: examples in the whole split, over all processes.
    split: "train" or "test" (or any tfds split name).
    source: where the examples come from: "idx:<directory>" or "tfds:<name>".
  """

  image_shape: tuple[int, int, int]
  num_examples: int
  split: str
  source: str


def create_dataset(
    config: ml_collections.ConfigDict,
    split: str = "train",
    *,
    start_step: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
    device_count: int | None = None,
) -> tuple[Iterator[np.ndarray], DatasetInfo]:
  """Returns this process's endless stream of training batches, and metadata.

  Each process reads a disjoint shard of the split and yields float32 batches
  of shape (config.batch_size // process_count, *config.image_shape), pixel p
  mapped to p / 127.5 - 1. Every epoch is shuffled with its own seed drawn
  from `config.seed`, so the stream is a function of (config, split, process),
  identical from run to run under one TensorFlow version.

  Args:
    config: reads dataset, idx_dir (wins over dataset when set), data_dir,
      download, shuffle_buffer, image_shape, batch_size (global) and seed.
    split: "train" or "test" for IDX files; any split name for tfds.
    start_step: number of batches to leave out; the stream then equals that of
      a fresh iterator from batch `start_step` on (bit-exact resume).
    process_index: this process; defaults to jax.process_index().
    process_count: number of processes; defaults to jax.process_count().
    device_count: number of devices the global batch is split over; defaults
      to jax.device_count().

  Returns:
    An iterator of NumPy batches, and the DatasetInfo of the split.

  Raises:
    ValueError: bad batch size, image shape or data; unknown tfds name.
    FileNotFoundError: IDX files missing; tfds data not cached nor downloadable.
  """
  if process_index is None:
    process_index = jax.process_index()
  if process_count is None:
    process_count = jax.process_count()
  if device_count is None:
    device_count = jax.device_count()
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} is not in [0, {process_count}).")
  if start_step < 0:
    raise ValueError(f"start_step {start_step} is negative; it counts batches already used.")
  local_batch_size = _local_batch_size(config.batch_size, process_count, device_count)

  if is_stacked(config):
    examples, info = _stacked_examples(config, split, process_index, process_count)
  elif config.idx_dir:
    examples, info = _idx_examples(config.idx_dir, split, process_index, process_count)
  else:
    examples, info = _tfds_examples(config, split, process_index, process_count)
  _check_image_shape(info, config.image_shape)
  num_local_examples = int(examples.cardinality())
  if num_local_examples == 0:
    raise ValueError(
        f"Process {process_index} of {process_count} gets none of the"
        f" {info.num_examples} examples of {info.source}; use fewer processes."
    )
  batches = _batches(
      examples,
      num_local_examples,
      batch_size=local_batch_size,
      seed=config.seed,
      shuffle_buffer=config.shuffle_buffer,
      start_step=start_step,
  )
  return batches.as_numpy_iterator(), info


def load_split(
    config: ml_collections.ConfigDict, split: str = "test"
) -> tuple[np.ndarray, np.ndarray]:
  """Returns a whole split in memory, for evaluation code.

  Args:
    config: as for create_dataset; batch and shuffle fields are not read.
    split: "train" or "test" for IDX files; any split name for tfds.

  Returns:
    uint8 images (N, H, W, C) in stored order, and their int64 labels (N,);
    for stacked MNIST (`is_stacked`) the labels are the modes, 0 to 999.
  """
  if is_stacked(config):
    return load_stacked_split(config, split)
  if config.idx_dir:
    images, labels = _read_idx_split(config.idx_dir, split)
    info = DatasetInfo(images.shape[1:], len(images), split, f"idx:{config.idx_dir}")
  else:
    tfds = _import_tfds()
    builder = _tfds_builder(config)
    if "label" not in builder.info.features:
      raise ValueError(
          f"tfds dataset {config.dataset!r} has no 'label' feature (it has"
          f" {sorted(builder.info.features)}); load_split needs labelled images."
      )
    examples = builder.as_dataset(split=split).map(
        lambda example: (example["image"], example["label"])
    )
    # One batch of the whole split; as_dataset(batch_size=-1) would do the
    # same but crashes under tfds.testing.mock_data, whose info has no splits.
    whole_split = examples.batch(int(examples.cardinality())).get_single_element()
    images, labels = tfds.as_numpy(whole_split)
    labels = labels.astype(np.int64)
    info = DatasetInfo(images.shape[1:], len(images), split, f"tfds:{config.dataset}")
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
    idx_dir: str, split: str, process_index: int, process_count: int
) -> tuple[tf.data.Dataset, DatasetInfo]:
  """Returns this process's shard of an IDX split as a tf.data.Dataset, and its info."""
  tf = _import_tensorflow()
  images, _ = _read_idx_split(idx_dir, split)
  info = DatasetInfo(images.shape[1:], len(images), split, f"idx:{idx_dir}")
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
  if not config.download:
    raise FileNotFoundError(
        f"tfds dataset {name!r} is not in {builder.data_dir_root} and"
        f" config.download is False; allow the download, or {_OFFLINE_HINT}."
    )
  # Offline, the failure surfaces as any of several network, download or
  # checksum exceptions, depending on where the download stopped.
  try:
    builder.download_and_prepare()
  except Exception as error:  # pylint: disable=broad-except
    raise FileNotFoundError(
        f"tfds dataset {name!r} is not in {builder.data_dir_root} and could not"
        f" be downloaded ({type(error).__name__}: {error}); {_OFFLINE_HINT}."
    ) from error
  return builder


def _tfds_examples(
    config: ml_collections.ConfigDict, split: str, process_index: int, process_count: int
) -> tuple[tf.data.Dataset, DatasetInfo]:
  """Returns this process's shard of a tfds split as a tf.data.Dataset, and its info."""
  tfds = _import_tfds()
  builder = _tfds_builder(config)
  # Read from the dataset rather than from builder.info.splits, which is empty
  # under tfds.testing.mock_data.
  num_examples = int(builder.as_dataset(split=split).cardinality())
  info = DatasetInfo(
      tuple(builder.info.features["image"].shape), num_examples, split, f"tfds:{config.dataset}"
  )
  # Each process reads only its own files' range instead of all of them.
  process_split = tfds.split_for_jax_process(
      split, process_index=process_index, process_count=process_count
  )
  # Files in a fixed order: the seeded shuffle buffer alone decides the order,
  # which a resumed run must reproduce.
  examples = builder.as_dataset(split=process_split, shuffle_files=False)
  examples = examples.map(lambda example: example["image"])
  if int(examples.cardinality()) * math.prod(info.image_shape) <= _CACHE_BYTES:
    examples = examples.cache()
  return examples, info


def _check_image_shape(info: DatasetInfo, image_shape: tuple[int, int, int]) -> None:
  if tuple(info.image_shape) != tuple(image_shape):
    raise ValueError(
        f"{info.source} has images of shape {tuple(info.image_shape)} but"
        f" config.image_shape is {tuple(image_shape)}; set --config.image_shape"
        " to match, or choose another dataset."
    )


def _local_batch_size(batch_size: int, process_count: int, device_count: int) -> int:
  """Returns one process's part of the global batch, checking that it splits."""
  if batch_size <= 0:
    raise ValueError(f"batch_size {batch_size} must be positive.")
  for count, what in ((process_count, "processes"), (device_count, "devices")):
    if batch_size % count:
      raise ValueError(
          f"Global batch_size {batch_size} is not divisible by the {count}"
          f" {what}; choose a batch_size that is a multiple of {count}."
      )
  return batch_size // process_count


def _batches(
    examples: tf.data.Dataset,
    num_examples: int,
    *,
    batch_size: int,
    seed: int,
    shuffle_buffer: int,
    start_step: int,
) -> tf.data.Dataset:
  """Turns a finite dataset of uint8 images into endless normalised batches.

  Equivalent to shuffle, repeat, batch, except that every epoch is shuffled
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
  batches = stream.skip(offset).batch(batch_size, drop_remainder=True)
  # Fixed sizes, no autotuning: one thread already delivers hundreds of times
  # what a step consumes, and the autotuner's thread sleeps up to a minute
  # between rounds, which the iterator's destructor waited out at the end of
  # every training run.
  batches = batches.map(_normalize).prefetch(2)
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
  source = f"idx:{config.idx_dir}" if config.idx_dir else f"tfds:{config.dataset}"
  info = DatasetInfo((*digits.shape[1:3], indices.shape[1]), len(indices), split,
                     f"stacked:{source}")
  # The digits once, not every stacked image: 60,000 digits are 47 MB, 100,000
  # three-channel images 235 MB.
  digit_pixels = tf.constant(digits[..., 0])
  examples = tf.data.Dataset.from_tensor_slices(indices).shard(process_count, process_index)
  examples = examples.map(lambda image_indices: tf.transpose(
      tf.gather(digit_pixels, image_indices), [1, 2, 0]))
  return examples, info
