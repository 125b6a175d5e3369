"""The image-folder source (`config.image_dir`): any directory tree of JPEG and PNG files.

Files are .jpg, .jpeg, .png in any case, found recursively and read in sorted
order of their relative paths: e.g. CelebA's img_align_celeba/, an LSUN export
or a user's photos. Only the file names are listed, sharded and shuffled (a
full shuffle per epoch); each image is decoded, cropped and resized
(photos.py) when its batch is due, so no epoch of decoded images is ever held,
and resuming skips names, not decoded images.

An image folder has no labels: load_split returns NO_LABEL (-1) for each
image. Its splits are its train/ and test/ subfolders when it has both;
otherwise a file is in "test" when the SHA-256 of its relative path, read as a
fraction of 2^64, is below `config.test_fraction`: a fixed hold-out that does
not depend on the seed nor move when files are added. load_split loads at most
`config.max_eval_images` images (0 = all), evenly spaced over the sorted files.

Unreadable image files are skipped and counted, or stop the stream, by what
can be told cheaply: every file's header and last bytes are read when the
folder is listed, and one that is not a complete JPEG or PNG (empty, another
format under an image name, truncated, so without its JPEG end marker FF D9
or PNG IEND chunk) is left out and named in DatasetInfo.skipped and a
warning. That keeps the stream a function of the files, so resuming stays
exact. A file that passes these checks but still cannot be decoded (damaged
inside) stops the stream with a CorruptImageError naming it. A JPEG with data
appended after its end marker, as some phones write, counts as truncated.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
from typing import TYPE_CHECKING

from absl import logging
import ml_collections
import numpy as np
from PIL import Image

from ebgan_jax.data import photos
from ebgan_jax.data.common import (DatasetInfo, import_tensorflow, NO_LABEL, PREPROCESS_THREADS,
                                   Source)
from ebgan_jax.data.pipeline import corrupt_image_error

if TYPE_CHECKING:  # Annotations only: importing this module must not import TensorFlow.
  import tensorflow as tf

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_IMAGE_FORMATS = ("JPEG", "PNG")  # Pillow's names; its JPEG reader also opens MPO files
_PNG_END = b"IEND\xaeB`\x82"  # the IEND chunk's type and CRC, which end every PNG file
_JPEG_END = b"\xff\xd9"  # the EOI marker
_TAIL_BYTES = 64  # bytes read at a file's end to find its end marker
_SPLIT_DIRS = ("train", "test")


def describe(config: ml_collections.ConfigDict) -> str:
  return f"images:{config.image_dir}"


def examples(
    config: ml_collections.ConfigDict, split: str, process_index: int, process_count: int
) -> tuple[tf.data.Dataset, DatasetInfo]:
  """This process's shard of an image folder's split, as a dataset of file names."""
  tf = import_tensorflow()
  root, files, skipped = _image_folder(config, split)
  info = DatasetInfo(tuple(config.image_shape), len(files), split, describe(config),
                     tuple(skipped))
  paths = tf.data.Dataset.from_tensor_slices([str(root / name) for name in files])
  return paths.shard(process_count, process_index), info


def load_split(config: ml_collections.ConfigDict, split: str) -> tuple[np.ndarray, np.ndarray]:
  """load_split of an image folder: at most max_eval_images images, evenly spaced; labels -1."""
  tf = import_tensorflow()
  root, files, _ = _image_folder(config, split)
  limit = photos.max_eval_images(config)
  if limit and len(files) > limit:
    files = [files[i] for i in np.linspace(0, len(files), limit, endpoint=False).astype(int)]
  paths = [str(root / name) for name in files]
  read_image = photos.image_reader(config)
  images = tf.data.Dataset.from_tensor_slices(paths).map(
      read_image, num_parallel_calls=PREPROCESS_THREADS, deterministic=True)
  try:
    images = images.batch(len(paths)).get_single_element().numpy()
  except tf.errors.OpError as error:
    raise corrupt_image_error(paths, read_image, error) from None
  return images, np.full(len(images), NO_LABEL, np.int64)


SOURCE = Source(describe=describe, examples=examples, load_split=load_split,
                image_reader=photos.image_reader)


def _image_folder(
    config: ml_collections.ConfigDict, split: str
) -> tuple[pathlib.Path, list[str], list[str]]:
  """The split's folder, its complete JPEG / PNG files and the skipped ones, relative, sorted."""
  _, crop = photos.photo_settings(config)  # bad settings fail before the folder is read
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
