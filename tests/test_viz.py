"""Pictures: grid layout, labelled process figures, GIF animations, forward frames, curves."""

import os

import jax
import numpy as np
import pytest
from PIL import Image

from ddpm_jax import diffusion, viz


def random_frames(num_frames: int, num_samples: int, size: int, channels: int, seed: int = 0):
  # Values in [1, 254]: never the white background or the black label ink.
  return np.random.default_rng(seed).integers(
      1, 255, (num_frames, num_samples, size, size, channels), dtype=np.uint8)


def test_image_grid_places_each_image_and_pads():
  images = random_frames(1, 5, 4, 3)[0]
  grid = viz.image_grid(images, num_columns=3, padding=1, background=7)
  assert grid.shape == (2 * 5 + 1, 3 * 5 + 1, 3)
  np.testing.assert_array_equal(grid[1 + 5:1 + 5 + 4, 1 + 5:1 + 5 + 4], images[4])
  assert (grid[0] == 7).all() and (grid[:, 5] == 7).all()
  assert (grid[6:10, 11:15] == 7).all()  # The empty sixth cell.


def test_process_figure_layout_and_tiles():
  frames = random_frames(4, 3, 8, 1)
  timesteps = [1000, 500, 10, 0]
  scale, pad = 2, 3
  figure = viz.process_figure(frames, timesteps, scale=scale, padding=pad)
  strip = viz.label_strip_height(1)
  tile = 8 * scale
  assert strip == 11 + 2 * viz.LABEL_MARGIN
  assert figure.shape == (strip + 3 * (tile + pad) + pad, 4 * (tile + pad) + pad, 1)
  assert figure.dtype == np.uint8
  for f in range(4):
    for k in range(3):
      top, left = strip + pad + k * (tile + pad), pad + f * (tile + pad)
      np.testing.assert_array_equal(figure[top:top + tile, left:left + tile],
                                    viz.upscale(frames[f, k], scale))
  # Everything outside the tiles and the label strip is background.
  mask = np.ones(figure.shape[:2], bool)
  mask[:strip] = False
  for f in range(4):
    for k in range(3):
      top, left = strip + pad + k * (tile + pad), pad + f * (tile + pad)
      mask[top:top + tile, left:left + tile] = False
  assert (figure[mask] == 255).all()


def ink_columns(block: np.ndarray) -> np.ndarray:
  """Indices of the pixel columns of a label block that hold black text."""
  return np.nonzero((block[..., 0] == viz.TEXT_COLOR).any(axis=0))[0]


def test_each_column_is_labelled_with_its_timestep():
  timesteps = [10, 5, 10, 0]
  figure = viz.process_figure(random_frames(4, 2, 16, 3), timesteps, scale=3, padding=2)
  strip, tile = viz.label_strip_height(1), 48
  blocks = [figure[:strip, 2 + f * (tile + 2):2 + f * (tile + 2) + tile] for f in range(4)]
  for block in blocks:
    ink = ink_columns(block)
    assert len(ink) > 0
    # Centred within its column.
    assert abs((ink[0] + ink[-1]) / 2 - tile / 2) <= 3
  np.testing.assert_array_equal(blocks[0], blocks[2])  # The same label, t=10.
  assert not np.array_equal(blocks[1], blocks[3])  # t=5 and t=0 differ.
  assert not np.array_equal(blocks[0], blocks[1])
  # The bitmap font is 6 px a character: 't=10' is one character wider than 't=5'.
  width = lambda b: ink_columns(b)[-1] - ink_columns(b)[0]
  assert width(blocks[0]) - width(blocks[1]) == 6
  # No label ink spills into the padding between columns.
  for f in range(5):
    assert (figure[:strip, f * (tile + 2):f * (tile + 2) + 2] == 255).all()


def test_auto_scale_makes_labels_fit_small_images():
  assert viz.auto_scale(28, 28) == 3
  assert viz.auto_scale(32, 32) == 2
  assert viz.auto_scale(64, 64) == 1
  assert viz.auto_scale(256, 256) == 1
  assert viz.auto_scale(8, 8) == 8
  assert viz.auto_label_scale(64) == 1 and viz.auto_label_scale(256) == 3
  figure = viz.process_figure(random_frames(2, 1, 28, 1), [1000, 0])
  assert figure.shape == (viz.label_strip_height(1) + 84 + 4, 2 * 86 + 2, 1)
  big = viz.process_figure(random_frames(2, 1, 256, 1), [1000, 0])
  assert big.shape[0] == viz.label_strip_height(3) + 256 + 4 and viz.label_strip_height(3) == 51


def test_process_figure_rejects_mismatched_inputs():
  with pytest.raises(ValueError, match='2 timesteps for 3 frames'):
    viz.process_figure(random_frames(3, 1, 8, 1), [2, 0])
  with pytest.raises(ValueError, match='uint8'):
    viz.process_figure(random_frames(2, 1, 8, 1).astype(np.float32), [1, 0])


def test_save_process_figure_writes_the_png(tmp_path):
  frames, timesteps = random_frames(3, 2, 8, 3), [2, 1, 0]
  path = str(tmp_path / 'figs' / 'reverse.png')
  viz.save_process_figure(frames, timesteps, path, scale=2)
  np.testing.assert_array_equal(np.asarray(Image.open(path)),
                                viz.process_figure(frames, timesteps, scale=2))
  assert os.listdir(tmp_path / 'figs') == ['reverse.png']


def test_gif_has_one_frame_per_timestep_holding_all_samples(tmp_path):
  frames, timesteps = random_frames(5, 3, 8, 1), [100, 75, 50, 25, 0]
  pictures = viz.process_animation(frames, timesteps, scale=2, padding=2, num_columns=3)
  strip = viz.label_strip_height(1)
  assert pictures.shape == (5, strip + 16 + 4, 3 * 18 + 2, 1)
  for f in range(5):
    for k in range(3):
      np.testing.assert_array_equal(pictures[f, strip + 2:strip + 18, 2 + k * 18:18 + k * 18],
                                    viz.upscale(frames[f, k], 2))
    assert len(ink_columns(pictures[f, :strip])) > 0
  path = str(tmp_path / 'reverse.gif')
  viz.save_process_gif(frames, timesteps, path, frame_ms=50, last_frame_ms=900, scale=2,
                       num_columns=3)
  gif = Image.open(path)
  assert gif.n_frames == 5
  for f in range(5):
    gif.seek(f)
    np.testing.assert_array_equal(np.asarray(gif.convert('L')), pictures[f, ..., 0])  # Exact grey.
    assert gif.info['duration'] == (900 if f == 4 else 50)


def test_rgb_gif_frame_count(tmp_path):
  path = str(tmp_path / 'rgb.gif')
  viz.save_process_gif(random_frames(4, 4, 8, 3), [3, 2, 1, 0], path)
  gif = Image.open(path)
  assert gif.n_frames == 4
  assert gif.size[::-1] == viz.process_animation(random_frames(4, 4, 8, 3), [3, 2, 1, 0]).shape[1:3]


def test_frame_timesteps():
  assert viz.frame_timesteps(1000, 5) == [1000, 750, 500, 250, 0]
  assert viz.frame_timesteps(3, 10) == [3, 2, 1, 0]
  with pytest.raises(ValueError):
    viz.frame_timesteps(10, 1)


@pytest.fixture(scope='module')
def schedule():
  return diffusion.make_schedule(diffusion.linear_betas(1000, 1e-4, 0.02))


def test_forward_frames_go_from_the_image_to_noise(schedule):
  x0 = np.full((8, 16, 16, 3), 0.6, np.float32)
  key = jax.random.key(3, impl='rbg')  # Compiles much faster on CPU than threefry.
  frames = np.asarray(viz.forward_frames(x0, [1000, 500, 0], schedule, key))
  assert frames.shape == (3, 8, 16, 16, 3)
  np.testing.assert_array_equal(frames[2], x0)  # t = 0 is the image itself.
  # t = T: essentially pure standard normal noise (sqrt(alphas_cumprod[-1]) is 0.006).
  assert abs(frames[0].mean()) < 0.05 and abs(frames[0].std() - 1.0) < 0.05
  # t = 500 is q_sample at index 499: mean sqrt(abar) * x0, std sqrt(1 - abar).
  abar = schedule.alphas_cumprod[499]
  assert abs(frames[1].mean() - np.sqrt(abar) * 0.6) < 0.03
  assert abs(frames[1].std() - np.sqrt(1 - abar)) < 0.03
  # A frame depends only on (key, timestep), not on the other timesteps asked for.
  np.testing.assert_array_equal(np.asarray(viz.forward_frames(x0, [500], schedule, key))[0],
                                frames[1])
  with pytest.raises(ValueError, match='outside'):
    viz.forward_frames(x0, [1001], schedule, key)


def test_plot_curves_writes_a_png(tmp_path):
  path = str(tmp_path / 'curves' / 'loss.png')
  steps = np.arange(1, 101)
  viz.plot_curves({'a': (steps, 1.0 / steps), 'b': ([10, 50, 100], [0.5, 0.1, 0.05])},
                  'step', 'loss', path, log_y=True, title='loss')
  image = np.asarray(Image.open(path).convert('RGB'))
  assert image.shape == (540, 840, 3)
  assert (image != 255).any(axis=-1).mean() > 0.01  # Something was drawn.
  assert os.listdir(tmp_path / 'curves') == ['loss.png']
