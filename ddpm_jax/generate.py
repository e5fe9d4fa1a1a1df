"""Sampling from a config: the network as a model function, the compiled sampler named by
config.sampling, batches of images from it, and --mode=sample (images from a workdir's newest
checkpoint).

The samplers themselves are pure functions in ddpm_jax/sampling.py; this module binds them to a
network, its parameters, the device mesh and the workdir.
"""

import contextlib
import os
from typing import Callable

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from ddpm_jax import atomic_io, checkpoints, configuration, data, diffusion, ode, parallel, pc_sampling, sampling, solvers, viz, layout
from ddpm_jax import sde as sde_lib
from ddpm_jax import progress as progress_lib  # make_sampler's argument `progress` is a flag.
from ddpm_jax.train_state import components, root_keys


def model_fn_for(model, params, batch_stats) -> diffusion.ModelFn:
  """model_fn(x_t, t) -> eps in inference mode (batch norm uses its running statistics)."""
  return lambda x, t: model.apply({'params': params, 'batch_stats': batch_stats}, x, t, train=False)


def conditional_model_fn_for(model, params, batch_stats) -> Callable:
  """model_fn(x_t, t, labels) of a class-conditional network in inference mode."""
  return lambda x, t, labels: model.apply({'params': params, 'batch_stats': batch_stats}, x, t, train=False,
                                          labels=labels)


def eps_fn_for(model_fn: Callable, model_var_type: str) -> Callable:
  """eps_fn(x, time input) of an eps-predicting network: the mean part of its output."""
  return lambda x, t: diffusion.split_output(model_fn(x, t), model_var_type)[0]


def solver_levels(config: ml_collections.ConfigDict, num_steps: int) -> solvers.NoiseLevels:
  """The noise levels a fast solver visits: diffusers' timesteps of the discrete chain, or times of
  the continuous SDE spaced by config.sampling.spacing (auto: logsnr)."""
  s, d = config.sampling, config.diffusion
  grid = solvers.SOLVERS[s.sampler].grid
  if not sde_lib.is_continuous(d):
    spacing = 'linspace' if s.spacing == 'auto' else s.spacing
    return solvers.levels_from_schedule(diffusion.schedule_from_config(d), num_steps, spacing, grid)
  sde = sde_lib.from_config(d)
  mean_std = lambda t: sde_lib.marginal(sde, jnp.asarray(t, jnp.float32))
  eps = sde_lib.sampling_eps(sde)
  if s.spacing in ('auto', 'logsnr'):
    times = solvers.log_snr_uniform_times(mean_std, num_steps, 1.0, eps)
  else:
    times = np.linspace(1.0, eps, num_steps + 1)
  return solvers.levels_from_marginal(mean_std, lambda t: sde_lib.model_time(sde, jnp.asarray(t, jnp.float32)),
                                      times)


def sampler_steps(config: ml_collections.ConfigDict) -> int:
  """Steps of config.sampling's sampler (ode: adaptive, its max_steps)."""
  s, d = config.sampling, config.diffusion
  if s.sampler == 'ddim':
    return s.ddim_steps
  if s.sampler == 'ancestral':
    return d.num_timesteps
  if s.sampler == 'pc':
    return d.num_scales if sde_lib.is_continuous(d) else d.num_timesteps
  if s.sampler == 'ode':
    return s.ode_max_steps
  return s.num_steps


def make_sampler(model, schedule: diffusion.Schedule, config: ml_collections.ConfigDict,
                 frame_steps=(), progress: bool = False, guidance_scale: float | None = None) -> Callable:
  """sample(params, batch_stats, x_T, key, labels=None) -> (x_0, frames, nfe): the whole reverse
  process compiled, with the sampler named by config.sampling.sampler; x_T is standard normal
  (scaled here to a VE prior's std), nfe the network calls per image (an array: the ODE's is adaptive).

  A class-conditional network needs labels (one per image) and is guided with guidance_scale
  (None: config.sampling.guidance_scale). With `progress`, the ancestral and ddim loops report every
  config.sampling.progress_every reverse steps: inside generate() they move its bar on within the
  batch; elsewhere each report is a log line. Only ancestral and ddim keep frames (else None).
  """
  s = config.sampling
  d = config.diffusion
  num_classes = config.model.num_classes
  guidance = s.guidance_scale if guidance_scale is None else guidance_scale
  every = s.progress_every if progress and s.sampler in sampling.SAMPLERS else 0
  num_steps = sampler_steps(config)
  # Host-side set-up, once: the SDE, and a solver's noise levels.
  sde = None if s.sampler in sampling.SAMPLERS else sde_lib.from_config(d)
  levels = solver_levels(config, s.num_steps) if s.sampler in sampling.SOLVER_SAMPLERS else None
  # A guided sampler calls the network on the doubled batch once per step.
  calls_per_eval = 2 if num_classes and guidance != 0 else 1

  def report(steps_done):
    if not progress_lib.report_within(int(steps_done) / num_steps):
      logging.info('  reverse step %d/%d', int(steps_done), num_steps)

  def sample(params, batch_stats, x_T, key, labels=None):
    if num_classes:
      if labels is None:
        raise ValueError(f'The network is class-conditional ({num_classes} classes): sampling needs labels.')
      model_fn = diffusion.guided_model_fn(conditional_model_fn_for(model, params, batch_stats), labels,
                                           num_classes, guidance, d.model_var_type)
    else:
      model_fn = model_fn_for(model, params, batch_stats)
    progress_fn = report if every else None
    if s.sampler == 'ddim':
      x_0, frames = sampling.ddim_sample(
          schedule, model_fn, x_T, key, s.ddim_steps, s.ddim_eta, s.ddim_spacing, d.clip_denoised,
          frame_steps, progress_fn=progress_fn, progress_every=every, model_mean_type=d.model_mean_type,
          model_var_type=d.model_var_type, clipped_eps=s.ddim_clipped_eps)
      return x_0, frames, jnp.int32(s.ddim_steps * calls_per_eval)
    if s.sampler == 'ancestral':
      x_0, frames = sampling.ancestral_sample(
          schedule, model_fn, x_T, key, d.model_var_type, d.clip_denoised, frame_steps,
          progress_fn=progress_fn, progress_every=every, model_mean_type=d.model_mean_type)
      return x_0, frames, jnp.int32(schedule.num_timesteps * calls_per_eval)
    eps_fn = eps_fn_for(model_fn, d.model_var_type)
    x_T = x_T * sde_lib.prior_std(sde)
    if levels is not None:
      x_0, nfe = solvers.solve(s.sampler, levels, eps_fn, x_T, key, clip_denoised=d.clip_denoised)
    else:
      score_fn = sde_lib.score_fn_from_model(sde, eps_fn, continuous=sde_lib.is_continuous(d))
      if s.sampler == 'pc':
        x_0, nfe = pc_sampling.pc_sample(sde, score_fn, x_T, key, s.predictor, s.corrector, s.snr,
                                         s.n_steps_each, num_steps, denoise=s.denoise)
      else:
        x_0, nfe = ode.ode_sample(sde, score_fn, x_T, eps=sde_lib.sampling_eps(sde), rtol=s.ode_rtol,
                                  atol=s.ode_atol, solver=s.ode_solver, denoise=s.denoise,
                                  max_steps=s.ode_max_steps)
      x_0 = jnp.clip(x_0, -1.0, 1.0) if d.clip_denoised else x_0
    return x_0, None, jnp.asarray(nfe, jnp.int32) * calls_per_eval

  return jax.jit(sample)


def generate(sample_fn: Callable, params, batch_stats, num_samples: int, batch_size: int,
             image_shape: tuple, key: jax.Array, mesh: Mesh, labels: np.ndarray | None = None, *,
             log_every_seconds: float = progress_lib.LOG_EVERY_SECONDS,
             nfe_per_batch: list | None = None) -> np.ndarray:
  """num_samples uint8 images in batches; batch i starts from noise drawn with fold_in(key, i).

  labels: one class per image for a class-conditional network (None otherwise). Progress in
  images, with rate and ETA, as ddpm_jax/progress.py shows it (log_every_seconds: without a
  terminal, a log line at most this often). nfe_per_batch: a list to which each batch's network
  calls per image are appended.
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
        x_0, _, nfe = sample_fn(params, batch_stats, x_T, jax.random.fold_in(batch_key, 1), batch_labels)
        if nfe_per_batch is not None:
          nfe_per_batch.append(int(nfe))
        batches.append(data.to_uint8(multihost_utils.process_allgather(x_0, tiled=True)))
      bar.update(min(done + batch_size, num_samples))
  return np.concatenate(batches)[:num_samples]


def save_samples(images: np.ndarray, path_stem: str, num_columns: int = 0) -> None:
  """images as path_stem.npz (uint8 'images') and a PNG grid path_stem.png (num_columns 0: square);
  written by host 0 only."""
  if jax.process_index() > 0:
    return
  directory = os.path.dirname(os.path.abspath(path_stem))
  made = not os.path.isdir(directory)
  touched = os.path.dirname(directory) if made else directory  # The folder whose entries change.
  times = os.stat(touched) if os.path.isdir(touched) else None
  try:
    atomic_io.savez(path_stem + '.npz', images=images)
    viz.save_png(viz.image_grid(images, num_columns), path_stem + '.png')
  except BaseException:  # Both files or neither (a full disk, a signal): the folders as they were.
    with contextlib.suppress(OSError):
      if os.path.exists(path_stem + '.npz'):
        os.remove(path_stem + '.npz')
      if made and os.path.isdir(directory):
        os.rmdir(directory)
      if times is not None:
        os.utime(touched, ns=(times.st_atime_ns, times.st_mtime_ns))
    raise


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
  logging.info('Sampling %d images from the EMA params of step %d (%s sampler, %s%d steps).',
               s.num_samples, step, s.sampler, 'at most ' if s.sampler == 'ode' else '', sampler_steps(config))
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
