"""Sampling from a config: the network as a model function, the compiled sampler named by
config.sampling, batches of images from it, and --mode=sample (images from a workdir's newest
checkpoint).

The samplers themselves are pure functions in ddpm_jax/sampling.py; this module binds them to a
network, its parameters, the device mesh and the workdir.
"""

import os
from typing import Callable

from absl import logging
import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from ddpm_jax import atomic_io, checkpoints, configuration, data, diffusion, parallel, sampling, viz, layout
from ddpm_jax import progress as progress_lib  # make_sampler's argument `progress` is a flag.
from ddpm_jax.train_state import components, root_keys


def model_fn_for(model, params, batch_stats) -> diffusion.ModelFn:
  """model_fn(x_t, t) -> eps in inference mode (batch norm uses its running statistics)."""
  return lambda x, t: model.apply({'params': params, 'batch_stats': batch_stats}, x, t, train=False)


def conditional_model_fn_for(model, params, batch_stats) -> Callable:
  """model_fn(x_t, t, labels) of a class-conditional network in inference mode."""
  return lambda x, t, labels: model.apply({'params': params, 'batch_stats': batch_stats}, x, t, train=False,
                                          labels=labels)


def make_sampler(model, schedule: diffusion.Schedule, config: ml_collections.ConfigDict,
                 frame_steps=(), progress: bool = False, guidance_scale: float | None = None) -> Callable:
  """sample(params, batch_stats, x_T, key, labels=None) -> (x_0, frames): the whole reverse process
  compiled, with the sampler named by config.sampling.sampler.

  A class-conditional network needs labels (one per image) and is guided with guidance_scale
  (None: config.sampling.guidance_scale). With `progress`, the loop reports every
  config.sampling.progress_every reverse steps: inside generate() they move its bar on within the
  batch; elsewhere each report is a log line.
  """
  s = config.sampling
  num_classes = config.model.num_classes
  guidance = s.guidance_scale if guidance_scale is None else guidance_scale
  every = s.progress_every if progress else 0
  num_steps = s.ddim_steps if s.sampler == 'ddim' else schedule.num_timesteps

  def report(steps_done):
    if not progress_lib.report_within(int(steps_done) / num_steps):
      logging.info('  reverse step %d/%d', int(steps_done), num_steps)

  def sample(params, batch_stats, x_T, key, labels=None):
    if num_classes:
      if labels is None:
        raise ValueError(f'The network is class-conditional ({num_classes} classes): sampling needs labels.')
      model_fn = diffusion.guided_model_fn(conditional_model_fn_for(model, params, batch_stats), labels,
                                           num_classes, guidance, config.diffusion.model_var_type)
    else:
      model_fn = model_fn_for(model, params, batch_stats)
    progress_fn = report if every else None
    d = config.diffusion
    if s.sampler == 'ddim':
      return sampling.ddim_sample(
          schedule, model_fn, x_T, key, s.ddim_steps, s.ddim_eta, s.ddim_spacing, d.clip_denoised,
          frame_steps, progress_fn=progress_fn, progress_every=every, model_mean_type=d.model_mean_type,
          model_var_type=d.model_var_type, clipped_eps=s.ddim_clipped_eps)
    return sampling.ancestral_sample(
        schedule, model_fn, x_T, key, d.model_var_type, d.clip_denoised, frame_steps,
        progress_fn=progress_fn, progress_every=every, model_mean_type=d.model_mean_type)

  return jax.jit(sample)


def generate(sample_fn: Callable, params, batch_stats, num_samples: int, batch_size: int,
             image_shape: tuple, key: jax.Array, mesh: Mesh, labels: np.ndarray | None = None, *,
             log_every_seconds: float = progress_lib.LOG_EVERY_SECONDS) -> np.ndarray:
  """num_samples uint8 images in batches; batch i starts from noise drawn with fold_in(key, i).

  labels: one class per image for a class-conditional network (None otherwise). Progress in
  images, with rate and ETA, as ddpm_jax/progress.py shows it (log_every_seconds: without a
  terminal, a log line at most this often).
  """
  batches = []
  num_batches = -(-num_samples // batch_size)
  with progress_lib.Progress(num_samples, 'Sampling', log_every_seconds=log_every_seconds) as bar:
    for i in range(num_batches):
      batch_key = jax.random.fold_in(key, i)
      x_T = jax.random.normal(jax.random.fold_in(batch_key, 0), (batch_size,) + image_shape)
      x_T = jax.device_put(x_T, parallel.batch_sharding(mesh))
      batch_labels = None
      if labels is not None:
        batch_labels = np.resize(np.asarray(labels[i * batch_size:(i + 1) * batch_size], np.int32), batch_size)
        batch_labels = jax.device_put(batch_labels, parallel.batch_sharding(mesh))
      done = i * batch_size
      with progress_lib.item(bar, done, min(batch_size, num_samples - done)):  # Reverse steps move it on.
        x_0, _ = sample_fn(params, batch_stats, x_T, jax.random.fold_in(batch_key, 1), batch_labels)
        batches.append(data.to_uint8(multihost_utils.process_allgather(x_0, tiled=True)))
      bar.update(min(done + batch_size, num_samples))
  return np.concatenate(batches)[:num_samples]


def save_samples(images: np.ndarray, path_stem: str, num_columns: int = 0) -> None:
  """images as path_stem.npz (uint8 'images') and a PNG grid path_stem.png (num_columns 0: square);
  written by host 0 only."""
  if jax.process_index() > 0:
    return
  atomic_io.savez(path_stem + '.npz', images=images)
  viz.save_png(viz.image_grid(images, num_columns), path_stem + '.png')


def requested_classes(config: ml_collections.ConfigDict) -> np.ndarray:
  """config.sampling.classes, or every class of the network when it is empty."""
  return np.asarray(tuple(config.sampling.classes) or range(config.model.num_classes), np.int32)


def grid_labels(config: ml_collections.ConfigDict, num_images: int) -> tuple[np.ndarray | None, int]:
  """(labels, grid columns) for a sample grid: one row per requested class for a
  class-conditional network; (None, 0: a square grid) otherwise."""
  if not config.model.num_classes:
    return None, 0
  classes = requested_classes(config)
  per_class = max(1, num_images // len(classes))
  return np.resize(np.repeat(classes, per_class), num_images), per_class


def sample(config: ml_collections.ConfigDict, workdir: str, force_workdir_config: bool = False) -> str:
  """Writes config.sampling.num_samples images from the latest checkpoint's EMA params.

  Returns the path stem of the files written (.npz and .png). force_workdir_config: sample with a
  model or diffusion config other than the workdir's when its checkpoints fit (config.json is kept).
  """
  mesh, model, schedule, tx = components(config)
  changes = configuration.check_workdir_config(config, workdir, allow_model_change=force_workdir_config)
  state, step = checkpoints.restore_latest(config, workdir, model, tx, mesh, check_fits_first=bool(changes))
  s = config.sampling
  logging.info('Sampling %d images from the EMA params of step %d (%s sampler, %d steps).',
               s.num_samples, step, s.sampler,
               s.ddim_steps if s.sampler == 'ddim' else schedule.num_timesteps)
  sample_fn = make_sampler(model, schedule, config, progress=True)
  image_shape = (config.data.image_size, config.data.image_size, config.data.num_channels)
  labels, columns = grid_labels(config, s.num_samples)
  if labels is not None:
    logging.info('Classes %s, guidance scale %g: one grid row per class.', sorted(set(labels.tolist())),
                 s.guidance_scale)
  images = generate(sample_fn, state.ema_params, state.ema_batch_stats, s.num_samples, s.batch_size,
                    image_shape, jax.random.fold_in(root_keys(config)['sample'], step), mesh, labels,
                    log_every_seconds=config.progress_log_every_seconds)
  stem = os.path.join(workdir, layout.SAMPLES_DIR, f'samples_{step:08d}_{s.num_samples}')
  save_samples(images, stem, columns)
  if labels is not None and jax.process_index() == 0:
    atomic_io.save_npy(stem + '_labels.npy', labels)
  logging.info('Wrote %s.npz and %s.png.', stem, stem)
  return stem
