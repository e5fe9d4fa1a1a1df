"""Figures of a run: reverse-process PNG and GIF, forward-process PNG, from a real 2-step run."""

import math
import os
import re
import shutil

import jax
import numpy as np
import pytest
from PIL import Image

from ddpm_jax import data, diffusion, errors, figures, samplers, train, viz
from ddpm_jax.samplers import ddim
from train_testlib import tiny_level_config

PADDING = 2  # viz's default padding around tiles.


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  """(config, workdir) of a tiny unet_conv trained 2 steps on real digits (28x28, T=20)."""
  config = tiny_level_config()
  config.training.num_train_steps = 2
  config.sampling.ddim_steps = 5
  workdir = str(tmp_path_factory.mktemp('run'))
  train.train_and_evaluate(config, workdir)
  return config, workdir


def expected_sizes(num_images: int, num_frames: int, size: int = 28) -> tuple[tuple, tuple]:
  """(PNG (width, height), GIF (width, height)) from viz's layout of 28x28 tiles."""
  tile = size * viz.auto_scale(size, size)
  strip = viz.label_strip_height(viz.auto_label_scale(tile))
  png = (num_frames * (tile + PADDING) + PADDING, strip + num_images * (tile + PADDING) + PADDING)
  cols = math.ceil(math.sqrt(num_images))
  rows = math.ceil(num_images / cols)
  gif = (cols * (tile + PADDING) + PADDING, strip + rows * (tile + PADDING) + PADDING)
  return png, gif


def check_files(result: figures.ProcessFigures, workdir: str, num_images: int) -> None:
  samples = os.path.join(workdir, 'samples')
  assert result.step == 2
  assert result.paths == [os.path.join(samples, 'reverse_process_00000002.png'),
                          os.path.join(samples, 'reverse_process_00000002.gif'),
                          os.path.join(samples, 'forward_process_00000002.png')]
  png_size, gif_size = expected_sizes(num_images, len(result.timesteps))
  reverse_png, reverse_gif, forward_png = result.paths
  for path in (reverse_png, forward_png):
    with Image.open(path) as image:
      assert image.format == 'PNG' and image.size == png_size and image.mode == 'L'
  with Image.open(reverse_gif) as gif:
    assert gif.format == 'GIF' and gif.size == gif_size
    assert gif.n_frames == len(result.timesteps)


@pytest.fixture(scope='module')
def ancestral(run):
  """reverse_process with the ancestral sampler: 3 images (they do not split over the 2 test
  devices, so every device samples all of them), 5 frames."""
  config, workdir = run
  return figures.reverse_process(config, workdir, num_images=3, num_frames=5)


def test_ancestral_figures_show_timesteps_T_to_0(run, ancestral):
  assert ancestral.frame_steps == ancestral.timesteps == [20, 15, 10, 5, 0]
  check_files(ancestral, run[1], num_images=3)


def test_ddim_figures_label_frames_with_their_timesteps(run, tmp_path):
  """DDIM, 5 steps over T=20 at 16, 12, 8, 4, 0: frames by steps left, labelled t = index + 1."""
  config, trained = run
  workdir = str(tmp_path / 'run')  # A copy: the file names are the ancestral figures' ones.
  shutil.copytree(trained, workdir)
  config = config.copy_and_resolve_references()
  config.sampling.sampler = 'ddim'
  result = figures.reverse_process(config, workdir, num_images=4, num_frames=6)
  assert result.frame_steps == [5, 4, 3, 2, 1, 0]
  assert result.timesteps == [17, 13, 9, 5, 1, 0]
  check_files(result, workdir, num_images=4)


def test_forward_figure_starts_from_real_training_images(run, ancestral):
  """Its t=0 column holds the training images themselves, upscaled; the t=T column is noised."""
  config, _ = run
  real = data.get_batch(data.load_dataset(config.data, 'train'), 3, 0, config.seed).images
  scale = viz.auto_scale(28, 28)
  tile = 28 * scale
  strip = viz.label_strip_height(viz.auto_label_scale(tile))
  forward = np.asarray(Image.open(ancestral.paths[2]))
  last_left = PADDING + 4 * (tile + PADDING)
  for k in range(3):
    top = strip + PADDING + k * (tile + PADDING)
    real_tile = viz.upscale(real[k], scale)[..., 0]
    np.testing.assert_array_equal(forward[top:top + tile, last_left:last_left + tile], real_tile)
    noised = forward[top:top + tile, PADDING:PADDING + tile]
    assert np.mean(np.abs(noised.astype(int) - real_tile)) > 10


def test_figures_are_deterministic(run, ancestral):
  pictures = [np.asarray(Image.open(p)) for p in ancestral.paths]
  again = figures.reverse_process(*run, num_images=3, num_frames=5)
  assert again.paths == ancestral.paths
  for path, picture in zip(again.paths, pictures):
    np.testing.assert_array_equal(np.asarray(Image.open(path)), picture)


def test_ddim_frames_are_evenly_spaced_steps_left_labelled_with_timesteps():
  config = tiny_level_config()
  config.sampling.sampler = 'ddim'
  config.sampling.ddim_steps = 10
  steps_left, timesteps = samplers.sampler_class('ddim').frames(config, config.figures.num_frames)
  assert steps_left == list(range(10, -1, -1))
  assert timesteps == [19, 17, 15, 13, 11, 9, 7, 5, 3, 1, 0]


def test_no_checkpoint_is_a_workdir_error(tmp_path):
  with pytest.raises(errors.WorkdirError, match='No checkpoint'):
    figures.reverse_process(tiny_level_config(), str(tmp_path))


def test_a_sampler_that_keeps_no_frames_is_a_config_error(tmp_path):
  """Before the workdir is read: the error names the samplers that keep frames (the registry's)."""
  keeping = [name for name, cls in samplers.SAMPLERS.items() if cls.keeps_frames]
  assert {'ancestral', 'ddim'} <= set(keeping)
  config = tiny_level_config()
  config.sampling.sampler = next(name for name, cls in samplers.SAMPLERS.items() if not cls.keeps_frames)
  with pytest.raises(errors.ConfigError, match=re.escape(
      f'keeps them ({" or ".join(keeping)}); config.sampling.sampler={config.sampling.sampler} keeps none: set '
      f'--config.sampling.sampler={keeping[0]}')):
    figures.reverse_process(config, str(tmp_path))


def test_bad_counts_are_config_errors(tmp_path):
  with pytest.raises(errors.ConfigError, match='num_frames must be at least 2'):
    figures.reverse_process(tiny_level_config(), str(tmp_path), num_frames=1)
  config = tiny_level_config()
  config.figures.num_images = 0
  with pytest.raises(errors.ConfigError, match='num_images must be at least 1'):
    figures.reverse_process(config, str(tmp_path))


@pytest.mark.parametrize('spacing', ['uniform', 'quad'])
def test_each_ddim_frame_label_is_the_timestep_the_network_sees(spacing):
  """DDIM frame t (t >= 1) is the input of the network call at 0-based timestep t - 1, as an
  ancestral frame is by the samplers' numbering; t = 0 is the sample, never an input."""
  schedule = diffusion.make_schedule(diffusion.linear_betas(20, 1e-4, 0.02))
  seen = []  # (0-based timestep, input) of every network call.

  def model_fn(x, t):
    jax.debug.callback(lambda t, x: seen.append((int(t[0]), np.asarray(x))), t, x)
    return 0.1 * x + 0.01 * t[:, None, None, None].astype(x.dtype)

  steps_left = viz.frame_timesteps(7, 8)
  labels = ddim.ddim_frame_timesteps(20, 7, spacing, steps_left)
  x_T = jax.random.normal(jax.random.key(0), (2, 4, 4, 1))
  with jax.disable_jit():  # Step by step: no compile for a model this small.
    _, frames = ddim.ddim_sample(schedule, model_fn, x_T, jax.random.key(1), 7, spacing=spacing,
                                 frame_steps=steps_left)
  frames = np.asarray(frames)
  assert len(seen) == 7 and labels[-1] == 0
  for frame, label in zip(frames[:-1], labels[:-1]):
    matches = [t for t, x in seen if np.array_equal(x, frame)]
    assert matches == [label - 1], (label, matches)
  assert not any(np.array_equal(x, frames[-1]) for _, x in seen)


def test_ddim_frame_timesteps_refuses_frames_out_of_range():
  with pytest.raises(ValueError, match='outside'):
    ddim.ddim_frame_timesteps(20, 5, 'uniform', [6])
  # DDPM's T = 1000 with 50 uniform DDIM steps starts at 0-based 980: the noise is labelled 981.
  assert ddim.ddim_frame_timesteps(1000, 50, 'uniform', [50, 49, 0]) == [981, 961, 0]
