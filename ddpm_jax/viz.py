"""Pictures: image grids written as PNG."""

import math
import os

import numpy as np


def image_grid(images: np.ndarray, num_columns: int = 0, padding: int = 2) -> np.ndarray:
  """Tiles a uint8 batch (N, H, W, C) into one (rows*(H+p)+p, cols*(W+p)+p, C) image.

  num_columns 0 means a near-square grid. Empty cells and padding are black.
  """
  n, h, w, c = images.shape
  cols = num_columns or math.ceil(math.sqrt(n))
  rows = math.ceil(n / cols)
  grid = np.zeros((rows * (h + padding) + padding, cols * (w + padding) + padding, c), np.uint8)
  for i, image in enumerate(images):
    r, col = divmod(i, cols)
    top, left = padding + r * (h + padding), padding + col * (w + padding)
    grid[top:top + h, left:left + w] = image
  return grid


def save_png(image: np.ndarray, path: str) -> None:
  """Writes a uint8 (H, W, 1|3) image as PNG, atomically (a partial file never has the name)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  mode_image = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
  tmp = path + '.tmp'
  mode_image.save(tmp, format='PNG')
  os.replace(tmp, path)
