"""The tensorflow-datasets source: an image dataset by name (`config.dataset`).

E.g. "mnist", "fashion_mnist", "celeb_a", "lsun/bedroom", "imagenet2012". It
downloads on first use when `config.download` allows (imagenet2012 needs a
manual download, see `builder`); a download host that does not answer within
PROBE_SECONDS fails at once with a hint to use the IDX files. Photographs are
cropped and resized (photos.py) when `config.crop` or `config.resize` asks;
`config.tfds_splits` maps the split asked for to the tfds split read (LSUN has
no "test" split).
"""

from __future__ import annotations

from collections.abc import Callable
import functools
import math
import socket
import threading
from typing import TYPE_CHECKING
import urllib.parse
import urllib.request

import ml_collections
import numpy as np

from ebgan_jax.data import photos
from ebgan_jax.data.common import (check_image_shape, DatasetInfo, import_tensorflow,
                                   import_tfds, NO_LABEL, PREPROCESS_THREADS, Source)

if TYPE_CHECKING:  # Annotations only: importing this module must not import TensorFlow.
  import tensorflow as tf

_OFFLINE_HINT = (
    "set --config.idx_dir=DIR to read the four MNIST-format IDX files offline,"
    " e.g. /usr/share/datasets/fashion-mnist from Debian's package"
    " dataset-fashion-mnist"
)
# tfds images are decoded (PNG) on every read; a split that fits in this many
# bytes once decoded is cached in memory so that only the first epoch decodes.
_CACHE_BYTES = 2**30
# Seconds to wait for a tfds download host before calling the machine offline.
PROBE_SECONDS = 5.0


def describe(config: ml_collections.ConfigDict) -> str:
  return f"tfds:{config.dataset}"


def examples(
    config: ml_collections.ConfigDict, split: str, process_index: int, process_count: int
) -> tuple[tf.data.Dataset, DatasetInfo]:
  """Returns this process's shard of a tfds split as a tf.data.Dataset, and its info."""
  tfds = import_tfds()
  prepared = builder(config)
  split = _tfds_split(config, split)
  # Read from the dataset rather than from builder.info.splits, which is empty
  # under tfds.testing.mock_data.
  num_examples = int(prepared.as_dataset(split=split).cardinality())
  stored_shape = tuple(prepared.info.features["image"].shape)
  preprocess = _tfds_preprocess(config, stored_shape, describe(config))
  image_shape = stored_shape if preprocess is None else tuple(config.image_shape)
  info = DatasetInfo(image_shape, num_examples, split, describe(config))
  check_image_shape(info, config.image_shape)
  # Each process reads only its own files' range instead of all of them.
  process_split = tfds.split_for_jax_process(
      split, process_index=process_index, process_count=process_count
  )
  # Files in a fixed order: the seeded shuffle buffer alone decides the order,
  # which a resumed run must reproduce.
  images = prepared.as_dataset(split=process_split, shuffle_files=False)
  images = images.map(lambda example: example["image"])
  if preprocess is not None:
    # Before the cache and the shuffle buffer, which then hold small images.
    images = images.map(
        preprocess, num_parallel_calls=PREPROCESS_THREADS, deterministic=True
    )
  if int(images.cardinality()) * math.prod(info.image_shape) <= _CACHE_BYTES:
    images = images.cache()
  return images, info


def load_split(config: ml_collections.ConfigDict, split: str) -> tuple[np.ndarray, np.ndarray]:
  """The split's images and labels (NO_LABEL without a "label" feature), in stored order.

  Cropped and resized photographs: the first config.max_eval_images of the
  split (tfds stored them shuffled).
  """
  tfds = import_tfds()
  tf = import_tensorflow()
  prepared = builder(config)
  split = _tfds_split(config, split)
  features = prepared.info.features
  preprocess = _tfds_preprocess(config, tuple(features["image"].shape), describe(config))
  stored = prepared.as_dataset(split=split)
  if preprocess is not None and photos.max_eval_images(config):
    stored = stored.take(photos.max_eval_images(config))
  no_label = tf.constant(NO_LABEL, tf.int64)
  stored = stored.map(
      lambda example: (example["image"], example["label"] if "label" in features else no_label)
  )
  if preprocess is not None:
    stored = stored.map(
        lambda image, label: (preprocess(image), label),
        num_parallel_calls=PREPROCESS_THREADS, deterministic=True,
    )
  # One batch of the whole split; as_dataset(batch_size=-1) would do the
  # same but crashes under tfds.testing.mock_data, whose info has no splits.
  whole_split = stored.batch(int(stored.cardinality())).get_single_element()
  images, labels = tfds.as_numpy(whole_split)
  labels = labels.astype(np.int64)
  info = DatasetInfo(images.shape[1:], len(images), split, describe(config))
  check_image_shape(info, config.image_shape)
  return images, labels


SOURCE = Source(describe=describe, examples=examples, load_split=load_split)


def builder(config: ml_collections.ConfigDict):
  """Returns the prepared tfds builder of config.dataset, downloading if allowed."""
  tfds = import_tfds()
  name = config.dataset
  try:
    dataset_builder = tfds.builder(name, data_dir=config.data_dir)
  except tfds.core.DatasetNotFoundError:
    raise ValueError(
        f"Unknown tfds dataset {name!r}; `python -c \"import tensorflow_datasets"
        " as tfds; print(tfds.list_builders())\"` lists the names, and"
        " https://www.tensorflow.org/datasets/catalog describes them."
    ) from None
  if "image" not in dataset_builder.info.features:
    raise ValueError(
        f"tfds dataset {name!r} has no 'image' feature (it has"
        f" {sorted(dataset_builder.info.features)}); EBGAN needs an image dataset."
    )
  if dataset_builder.is_prepared():
    return dataset_builder
  hint = _OFFLINE_HINT
  if dataset_builder.MANUAL_DOWNLOAD_INSTRUCTIONS:
    # Data that its owners hand out by hand (imagenet2012): tfds reads it from
    # its manual_dir and downloads nothing, so there is no host to probe.
    manual_dir = dataset_builder.data_dir_root / "downloads" / "manual"
    if not manual_dir.is_dir() or not any(manual_dir.iterdir()):
      instructions = " ".join(dataset_builder.MANUAL_DOWNLOAD_INSTRUCTIONS.split())
      raise FileNotFoundError(
          f"tfds dataset {name!r} must be downloaded by hand into {manual_dir}/ (tfds's"
          f" manual_dir), which is missing or empty: {instructions}"
      )
    hint = f"check the files in {manual_dir}"
  if not config.download:
    raise FileNotFoundError(
        f"tfds dataset {name!r} is not in {dataset_builder.data_dir_root} and"
        f" config.download is False; allow the download, or {_OFFLINE_HINT}."
    )
  if not dataset_builder.MANUAL_DOWNLOAD_INSTRUCTIONS:
    host = unreachable_download_host(dataset_builder)
    if host:
      raise FileNotFoundError(
          f"tfds dataset {name!r} is not in {dataset_builder.data_dir_root} and cannot be"
          f" downloaded: {host} does not answer (no network?); {_OFFLINE_HINT}."
      )
  # Offline, the failure surfaces as any of several network, download or
  # checksum exceptions, depending on where the download stopped.
  try:
    dataset_builder.download_and_prepare()
  except Exception as error:  # pylint: disable=broad-except
    raise FileNotFoundError(
        f"tfds dataset {name!r} is not in {dataset_builder.data_dir_root} and could not"
        f" be downloaded ({type(error).__name__}: {error}); {hint}."
    ) from error
  return dataset_builder


def unreachable_download_host(dataset_builder) -> str | None:
  """The host of the builder's first download if it does not answer within seconds, else None.

  Offline, tfds would spend minutes in download retries before it gives up.
  Behind a proxy, or for a builder without recorded URLs, nothing is probed.
  """
  if urllib.request.getproxies():
    return None
  try:
    urls = list(dataset_builder.url_infos or {})
  except Exception:  # pylint: disable=broad-except  # no checksums file: nothing to probe
    return None
  if not urls:
    return None
  url = urllib.parse.urlsplit(urls[0])
  address = (url.hostname, url.port or (80 if url.scheme == "http" else 443))
  answered = []

  def connect():
    try:
      socket.create_connection(address, timeout=PROBE_SECONDS).close()
      answered.append(True)
    except OSError:
      pass

  # In a thread: the connect timeout does not bound the name lookup, which can
  # hang for longer when no name server answers.
  probe = threading.Thread(target=connect, daemon=True)
  probe.start()
  probe.join(PROBE_SECONDS)
  return None if answered else url.hostname


def _tfds_split(config: ml_collections.ConfigDict, split: str) -> str:
  """The tfds split read for `split`, after config.tfds_splits (lsun has no "test" split)."""
  return dict(config.tfds_splits or {}).get(split, split)


def _tfds_preprocess(
    config: ml_collections.ConfigDict, stored_shape: tuple, source: str
) -> Callable[[tf.Tensor], tf.Tensor] | None:
  """The crop and resize of a tfds dataset's images, or None when config reads them as stored."""
  if not config.crop and not config.resize:
    return None
  image_shape, crop = photos.photo_settings(config)
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
  return functools.partial(photos.crop_and_resize, image_shape=image_shape, crop=crop)
