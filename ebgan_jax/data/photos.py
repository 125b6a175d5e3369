"""Photographs: a centered square crop, resized to config.image_shape.

A centered square, `config.crop` pixels on a side (CelebA's usual face crop:
108 of the 178x218 aligned images) or, with crop 0 or None, the largest one,
is resized to config.image_shape by tf.image.resize's bilinear filter with
antialiasing (a triangle filter as wide as the downscaling factor, so no
aliasing; plain bilinear when enlarging), then rounded back to uint8. Image
folders always are; tfds datasets are when `config.crop` is set or
`config.resize` is True, so that MNIST-like data is read exactly as stored.
load_split of a photograph source loads at most `config.max_eval_images`
images (0 = all).
"""

from __future__ import annotations

from collections.abc import Callable
import functools
from typing import TYPE_CHECKING

import ml_collections

from ebgan_jax.data.common import import_tensorflow

if TYPE_CHECKING:  # Annotations only: importing this module must not import TensorFlow.
  import tensorflow as tf


def photo_settings(config: ml_collections.ConfigDict) -> tuple[tuple[int, int, int], int | None]:
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


def crop_and_resize(image: tf.Tensor, image_shape: tuple[int, int, int],
                    crop: int | None) -> tf.Tensor:
  """A centered square of a uint8 image (H, W, C), resized to image_shape, as uint8."""
  tf = import_tensorflow()
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


def image_reader(config: ml_collections.ConfigDict) -> Callable[[tf.Tensor], tf.Tensor]:
  """A function from a file name to its image, decoded, cropped and resized (uint8)."""
  image_shape, crop = photo_settings(config)
  return functools.partial(_read_image, image_shape=image_shape, crop=crop)


def _read_image(path: tf.Tensor, image_shape: tuple[int, int, int], crop: int | None) -> tf.Tensor:
  tf = import_tensorflow()
  # decode_image reads the format from the bytes, not the name; channels
  # converts grey to RGB and drops alpha.
  image = tf.io.decode_image(
      tf.io.read_file(path), channels=image_shape[-1], expand_animations=False)
  image.set_shape([None, None, image_shape[-1]])
  return crop_and_resize(image, image_shape, crop)


def max_eval_images(config: ml_collections.ConfigDict) -> int:
  """Images load_split returns from a photograph source at most; 0 = all."""
  return int(config.max_eval_images or 0)
