"""Images in [-1, 1] to uint8 arrays, grids and PNG files."""

import math
import os

import numpy as np


def to_uint8(images) -> np.ndarray:
  """[-1, 1] floats to uint8 pixels, the inverse of data.pixels_to_signed (p / 127.5 - 1).

  uint8 input is returned as it is.
  """
  images = np.asarray(images)
  if images.dtype == np.uint8:
    return images
  return np.clip(np.rint((images.astype(np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def image_grid(images, columns: int | None = None, padding: int = 2) -> np.ndarray:
  """Tiles (N, H, W, C) images (floats in [-1, 1] or uint8) into one uint8 image.

  The grid has shape (rows * (H + p) + p, columns * (W + p) + p, C), p = padding.
  """
  images = to_uint8(images)
  n, h, w, c = images.shape
  columns = columns or math.ceil(math.sqrt(n))
  rows = math.ceil(n / columns)
  grid = np.zeros((rows * (h + padding) + padding, columns * (w + padding) + padding, c), np.uint8)
  for i, image in enumerate(images):
    top = padding + (i // columns) * (h + padding)
    left = padding + (i % columns) * (w + padding)
    grid[top:top + h, left:left + w] = image
  return grid


def save_png(path: str, images, columns: int | None = None) -> np.ndarray:
  """Writes the grid of `images` to `path` (atomically) and returns the grid."""
  from PIL import Image  # Imported on use: the library has no import-time cost.

  grid = image_grid(images, columns)
  pixels = grid[..., 0] if grid.shape[-1] == 1 else grid
  tmp = f"{path}.tmp"
  Image.fromarray(pixels).save(tmp, format="PNG")
  os.replace(tmp, path)
  return grid
