"""Pictures: image grids, reverse/forward-process figures and animations, training curves.

Images come in as uint8 NHWC; files are written atomically (a partial file never has the
final name). Figures use PIL's built-in bitmap font, so no font files are needed.
"""

import functools
import math
from typing import Mapping, Optional, Sequence

import jax
import numpy as np

from ddpm_jax import atomic_io, diffusion

# Tiles smaller than this (pixels a side) are upscaled by an integer factor, so the 11 px
# bitmap-font labels stay legible next to them (28 px MNIST -> x3, 32 px CIFAR -> x2).
MIN_TILE_SIZE = 64
LABEL_MARGIN = 3  # Pixels above and below the label text, before the label scale.
TEXT_COLOR = 0  # Black labels on a white (background 255) strip.


def image_grid(images: np.ndarray, num_columns: int = 0, padding: int = 2,
               background: int = 0) -> np.ndarray:
  """Tiles a uint8 batch (N, H, W, C) into one (rows*(H+p)+p, cols*(W+p)+p, C) image.

  num_columns 0 means a near-square grid. Empty cells and padding have value background.
  """
  n, h, w, c = images.shape
  cols = num_columns or math.ceil(math.sqrt(n))
  rows = math.ceil(n / cols)
  grid = np.full((rows * (h + padding) + padding, cols * (w + padding) + padding, c), background,
                 np.uint8)
  for i, image in enumerate(images):
    r, col = divmod(i, cols)
    top, left = padding + r * (h + padding), padding + col * (w + padding)
    grid[top:top + h, left:left + w] = image
  return grid


def _atomic_save(image, path: str, **save_kwargs) -> None:
  """Saves a PIL image atomically (save_kwargs must name the format)."""
  with atomic_io.replacing(path) as f:
    image.save(f, **save_kwargs)


def _pil_image(image: np.ndarray):
  """A uint8 (H, W, 1|3) array as a PIL 'L' or 'RGB' image."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def save_png(image: np.ndarray, path: str) -> None:
  """Writes a uint8 (H, W, 1|3) image as PNG, atomically."""
  _atomic_save(_pil_image(image), path, format='PNG')


# ---------------------------------------------------------------------------
# Labels.

@functools.cache
def _font():
  """PIL's built-in bitmap font (6 px a character, 11 px high): no font file needed."""
  from PIL import ImageFont  # pylint: disable=g-import-not-at-top
  return ImageFont.load_default_imagefont()


def _text_size(text: str) -> tuple[int, int]:
  left, top, right, bottom = _font().getbbox(text)
  return right - left, bottom - top


def label_strip_height(label_scale: int = 1) -> int:
  """Height in pixels of the strip of timestep labels above a figure's columns."""
  return label_scale * (_text_size('t=0')[1] + 2 * LABEL_MARGIN)


def timestep_labels(timesteps: Sequence[int]) -> list[str]:
  return [f't={int(t)}' for t in timesteps]


def _label(text: str, width: int, label_scale: int, background: int) -> np.ndarray:
  """One label, black on background, centred in a (strip height, width) uint8 block.

  Text wider than the block is left-aligned and cut at its right edge.
  """
  from PIL import Image, ImageDraw  # pylint: disable=g-import-not-at-top
  text_w, _ = _text_size(text)
  inner_w = -(-width // label_scale)
  block = Image.new('L', (inner_w, label_strip_height(1)), background)
  ImageDraw.Draw(block).text((max(0, (inner_w - text_w) // 2), LABEL_MARGIN), text,
                             fill=TEXT_COLOR, font=_font())
  big = np.repeat(np.repeat(np.asarray(block), label_scale, 0), label_scale, 1)
  return big[:, :width]


def label_strip(labels: Sequence[str], column_width: int, padding: int, channels: int,
                label_scale: int = 1, background: int = 255) -> np.ndarray:
  """A (label_strip_height, n*(column_width+p)+p, channels) strip, label i over column i."""
  strip = np.full((label_strip_height(label_scale), len(labels) * (column_width + padding) + padding),
                  background, np.uint8)
  for i, text in enumerate(labels):
    left = padding + i * (column_width + padding)
    strip[:, left:left + column_width] = _label(text, column_width, label_scale, background)
  return np.repeat(strip[..., None], channels, axis=-1)


# ---------------------------------------------------------------------------
# Process figures and animations.

def upscale(images: np.ndarray, factor: int) -> np.ndarray:
  """Nearest-neighbour upscaling of (..., H, W, C) by an integer factor (pixels stay crisp)."""
  return np.repeat(np.repeat(images, factor, axis=-3), factor, axis=-2)


def auto_scale(height: int, width: int) -> int:
  """The smallest integer factor that makes a tile at least MIN_TILE_SIZE on each side and
  wide enough for a 't=1000' label."""
  label_w = _text_size('t=1000')[0] + 2
  return max(1, math.ceil(MIN_TILE_SIZE / min(height, width)), math.ceil(label_w / width))


def auto_label_scale(tile_width: int) -> int:
  """Integer enlargement of the 11 px font for big tiles (1 up to 159 px, 2 up to 239, ...)."""
  return max(1, tile_width // 80)


def frame_timesteps(num_steps: int, num_frames: int) -> list[int]:
  """num_frames timesteps from num_steps (the starting noise x_T) down to 0, evenly spaced.

  Suits the samplers' frame_steps; repeats (num_frames > num_steps + 1) are dropped.
  """
  if num_frames < 2:
    raise ValueError(f'num_frames must be at least 2 (x_T and x_0), got {num_frames}.')
  steps = np.round(np.linspace(num_steps, 0, num_frames)).astype(int)
  return list(dict.fromkeys(int(s) for s in steps))


def _check_frames(frames: np.ndarray, timesteps: Sequence[int]) -> None:
  if frames.ndim != 5 or frames.dtype != np.uint8 or frames.shape[-1] not in (1, 3):
    raise ValueError(f'frames must be uint8 (F, K, H, W, 1|3), got {frames.dtype} {frames.shape}; '
                     f'convert sampler output with data.to_uint8.')
  if len(timesteps) != frames.shape[0]:
    raise ValueError(f'{len(timesteps)} timesteps for {frames.shape[0]} frames: give one per frame.')


def process_figure(frames: np.ndarray, timesteps: Sequence[int], scale: int = 0, padding: int = 2,
                   background: int = 255, label_scale: int = 0) -> np.ndarray:
  """The reverse (or forward) process as one uint8 image: K rows (samples) by F columns
  (timesteps, in the order given), each column headed by its label 't=<timestep>'.

  frames: uint8 (F, K, H, W, C), frames[f, k] = sample k at timesteps[f]. Tiles are upscaled
  by scale (0: auto_scale). Shape: (strip + K*(s*H+p)+p, F*(s*W+p)+p, C), where strip =
  label_strip_height(label_scale) (label_scale 0: auto_label_scale).
  """
  _check_frames(frames, timesteps)
  num_frames, num_samples, h, w, c = frames.shape
  scale = scale or auto_scale(h, w)
  label_scale = label_scale or auto_label_scale(w * scale)
  tiles = upscale(frames, scale)
  # Sample-major order, so image_grid's row k holds sample k across the F timesteps.
  grid = image_grid(np.swapaxes(tiles, 0, 1).reshape((-1,) + tiles.shape[2:]), num_frames,
                    padding, background)
  strip = label_strip(timestep_labels(timesteps), w * scale, padding, c, label_scale, background)
  return np.concatenate([strip, grid], axis=0)


def process_animation(frames: np.ndarray, timesteps: Sequence[int], scale: int = 0,
                      padding: int = 2, num_columns: int = 0, background: int = 255,
                      label_scale: int = 0) -> np.ndarray:
  """One uint8 image per timestep, (F, H', W', C): all K samples tiled (image_grid, num_columns
  0 = near square) under a strip with the label 't=<timestep>' centred."""
  _check_frames(frames, timesteps)
  _, _, h, w, c = frames.shape
  scale = scale or auto_scale(h, w)
  label_scale = label_scale or auto_label_scale(w * scale)
  pictures = []
  for frame, text in zip(upscale(frames, scale), timestep_labels(timesteps)):
    grid = image_grid(frame, num_columns, padding, background)
    strip = np.full((label_strip_height(label_scale), grid.shape[1], c), background, np.uint8)
    inner = grid.shape[1] - 2 * padding
    strip[:, padding:padding + inner] = _label(text, inner, label_scale, background)[..., None]
    pictures.append(np.concatenate([strip, grid], axis=0))
  return np.stack(pictures)


def save_gif(images: np.ndarray, path: str, frame_ms: int = 80, last_frame_ms: int = 1500) -> None:
  """Writes uint8 (F, H, W, 1|3) as an animated GIF that loops forever, atomically.

  The last image is held for last_frame_ms so the finished samples can be seen. GIF keeps
  grey levels exactly; RGB frames are reduced to a 256-colour palette each. PIL merges
  consecutive identical images into one longer GIF frame.
  """
  pictures = [_pil_image(image) for image in images]
  durations = [frame_ms] * (len(pictures) - 1) + [last_frame_ms]
  _atomic_save(pictures[0], path, format='GIF', save_all=True, append_images=pictures[1:],
               duration=durations, loop=0)


def save_process_figure(frames: np.ndarray, timesteps: Sequence[int], path: str, **kwargs) -> None:
  """process_figure(frames, timesteps, **kwargs) written as a PNG at path."""
  save_png(process_figure(frames, timesteps, **kwargs), path)


def save_process_gif(frames: np.ndarray, timesteps: Sequence[int], path: str, frame_ms: int = 80,
                     last_frame_ms: int = 1500, **kwargs) -> None:
  """process_animation(frames, timesteps, **kwargs) written as an animated GIF at path."""
  save_gif(process_animation(frames, timesteps, **kwargs), path, frame_ms, last_frame_ms)


def forward_frames(x0: jax.Array, timesteps: Sequence[int], schedule: diffusion.Schedule,
                   key: jax.Array) -> jax.Array:
  """Noised copies of real images x0 (K, H, W, C) in [-1, 1], float (F, K, H, W, C): frame f
  is a draw of x_k ~ q(x_k | x_0) for k = timesteps[f], in the samplers' frame numbering.

  k = 0 is x0 itself, k = T the fully noised image: x_k is diffusion.q_sample at the
  0-based timestep index k - 1. Each frame's noise is normal(fold_in(key, k)), so a frame
  does not depend on which other timesteps are asked for. Convert with data.to_uint8.
  """
  num_timesteps = schedule.num_timesteps
  for k in timesteps:
    if not 0 <= k <= num_timesteps:
      raise ValueError(f'timestep {k} is outside [0, {num_timesteps}].')
  x0 = jax.numpy.asarray(x0)
  return jax.numpy.stack([x0 if k == 0 else _noised(schedule, x0, k, key) for k in timesteps])


@jax.jit
def _noised(schedule: diffusion.Schedule, x0: jax.Array, k: jax.Array, key: jax.Array) -> jax.Array:
  """x_k ~ q(x_k | x0) for k >= 1 with noise normal(fold_in(key, k)); compiled once per shape."""
  noise = jax.random.normal(jax.random.fold_in(key, k), x0.shape, x0.dtype)
  return diffusion.q_sample(schedule, x0, jax.numpy.full((x0.shape[0],), k - 1), noise)


# ---------------------------------------------------------------------------
# Curves.

def plot_curves(runs: Mapping[str, tuple[Sequence[float], Sequence[float]]], xlabel: str,
                ylabel: str, path: str, log_y: bool = False, title: Optional[str] = None,
                log_x: bool = False) -> None:
  """Overlays one line per run {label: (x, y)} with a legend, written as PNG at path.

  Short series (<= 30 points, e.g. FID evaluations) get point markers. Uses matplotlib's
  Figure directly (Agg canvas), so no pyplot state or display is involved.
  """
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=(7, 4.5), dpi=120)
  ax = fig.subplots()
  for label, (x, y) in runs.items():
    ax.plot(np.asarray(x), np.asarray(y), label=label, marker='o' if len(x) <= 30 else None,
            markersize=3, linewidth=1.2)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  if log_y:
    ax.set_yscale('log')
  if log_x:
    ax.set_xscale('log')
  if title:
    ax.set_title(title)
  ax.grid(True, alpha=0.3, which='both')
  if runs:
    ax.legend()
  fig.tight_layout()
  with atomic_io.replacing(path) as f:
    fig.savefig(f, format='png')
