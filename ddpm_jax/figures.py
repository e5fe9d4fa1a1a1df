"""Figures of a trained run: the reverse (denoising) process of sampled images and the forward
(noising) process of real training images, at the same labelled timesteps.

  python main.py --config=configs/quickstart.py --workdir=workdirs/quickstart --mode=figures

reverse_process is the one entry point. From the workdir's latest checkpoint (EMA params) it
writes, under WORKDIR/samples/ (<step> zero-padded to 8 digits, as the other sample files):
  reverse_process_<step>.png   config.figures.num_images samples (rows) by num_frames timesteps
                               (columns, labelled t=<timestep>) from T down to 0;
  reverse_process_<step>.gif   the same trajectory as an animation, one GIF frame per timestep;
  forward_process_<step>.png   as many real training images noised by q(x_t | x_0) at the same
                               timesteps.
The sampler and its steps are config.sampling's. Everything is drawn from config.seed and the
checkpoint step, so the same command on the same checkpoint writes the same pictures.

Timestep labels follow the samplers' frame numbering (ddpm_jax/samplers/): t = k is x_k, k = T
the starting noise, k = 0 the finished sample, and x_k is what the network sees at the 0-based
timestep index k - 1 (viz.forward_frames uses the same numbering). DDIM keeps frames by "DDIM
steps left"; each is labelled with the timestep it stands at (ddim_frame_timesteps).
"""

import os
from typing import NamedTuple, Optional

from absl import logging
import jax
import ml_collections

from ddpm_jax import checkpoints, configuration, data, generate, layout, parallel, samplers, streaming, viz
from ddpm_jax.errors import ConfigError
from ddpm_jax.train_state import components, root_keys


class ProcessFigures(NamedTuple):
  """What reverse_process wrote, and the timesteps it shows."""
  # reverse_process_<step>.png, reverse_process_<step>.gif, forward_process_<step>.png.
  paths: list[str]
  # The label of each column / GIF frame: timesteps from T (or DDIM's first) down to 0.
  timesteps: list[int]
  # The sampler's frame_steps: equal to timesteps for ancestral, DDIM steps left for ddim.
  frame_steps: list[int]
  # The checkpoint step the pictures come from.
  step: int


def figure_paths(workdir: str, step: int) -> list[str]:
  """The reverse-process PNG and GIF and the forward-process PNG of checkpoint `step`."""
  samples = os.path.join(workdir, layout.SAMPLES_DIR)
  return [os.path.join(samples, f'reverse_process_{step:08d}.png'),
          os.path.join(samples, f'reverse_process_{step:08d}.gif'),
          os.path.join(samples, f'forward_process_{step:08d}.png')]


def _check_counts(num_images: int, num_frames: int) -> None:
  if num_images < 1:
    raise ConfigError(f'config.figures.num_images must be at least 1, got {num_images}.')
  if num_frames < 2:
    raise ConfigError(
        f'config.figures.num_frames must be at least 2 (the noise and the sample), got {num_frames}.')


def reverse_process(config: ml_collections.ConfigDict, workdir: str, num_images: Optional[int] = None,
                    num_frames: Optional[int] = None) -> ProcessFigures:
  """Writes the reverse-process figure and GIF and the forward-process figure of the workdir's
  latest checkpoint (see the module docstring); returns the paths and the timesteps shown.

  num_images, num_frames: None = config.figures'. Raises errors.WorkdirError when the
  workdir has no checkpoint or holds another model.
  """
  num_images = config.figures.num_images if num_images is None else num_images
  num_frames = config.figures.num_frames if num_frames is None else num_frames
  _check_counts(num_images, num_frames)
  sampler = samplers.sampler_class(config.sampling.sampler)
  if not sampler.keeps_frames:
    keeping = [name for name, cls in samplers.SAMPLERS.items() if cls.keeps_frames]
    raise ConfigError(f'--mode=figures shows the frames of a sampler that keeps them ({" or ".join(keeping)}); '
                      f'config.sampling.sampler={config.sampling.sampler} keeps none: set '
                      f'--config.sampling.sampler={keeping[0]} (process ddpm).')
  configuration.check_workdir_config(config, workdir)
  mesh, model, process, tx = components(config)
  state, step = checkpoints.restore_latest(config, workdir, model, tx, mesh)

  frame_steps, timesteps = sampler.frames(config, num_frames)
  noise_key, sampler_key, forward_key = jax.random.split(
      jax.random.fold_in(root_keys(config)['sample'], step), 3)
  image_shape = (config.data.image_size, config.data.image_size, config.data.num_channels)
  x_T = jax.random.normal(noise_key, (num_images,) + image_shape)
  # Split the images over the devices where they divide evenly; otherwise every device runs all.
  sharding = parallel.batch_sharding(mesh) if num_images % mesh.size == 0 else parallel.replicated(mesh)
  logging.info('Reverse process of %d images from the EMA params of step %d (%s sampler), %d frames.',
               num_images, step, config.sampling.sampler, len(frame_steps))
  sample_fn = generate.make_sampler(model, process, config, frame_steps=frame_steps, progress=True)
  labels, _ = generate.grid_labels(config, num_images)  # Class-conditional: one class per row, in turn.
  if labels is not None:
    labels = jax.device_put(labels, sharding)
  _, frames, _ = sample_fn(state.ema_params, state.ema_batch_stats, jax.device_put(x_T, sharding), sampler_key,
                        labels)
  reverse = data.to_uint8(frames)

  with streaming.open_batches(config.data, config.data.train_split, num_images, config.seed) as pipeline:
    real = pipeline.batch(0).images  # The first training batch, read by either pipeline.
  forward = data.to_uint8(viz.forward_frames(data.to_model_range(real), timesteps, process.schedule, forward_key))

  reverse_png, reverse_gif, forward_png = paths = figure_paths(workdir, step)
  viz.save_process_figure(reverse, timesteps, reverse_png)
  viz.save_process_gif(reverse, timesteps, reverse_gif)
  viz.save_process_figure(forward, timesteps, forward_png)
  logging.info('Wrote %s.', ', '.join(paths))
  return ProcessFigures(paths, timesteps, frame_steps, step)
