"""Sampling from a config: the network as a model function, the compiled sampler named by
config.sampling, batches of images from it, and --mode=sample (images from a workdir's newest
checkpoint).

The samplers themselves are registered in ddpm_jax/samplers/; this module binds them to a network,
its parameters and process (denoiser.Model), the device mesh and the workdir.
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

from ddpm_jax import atomic_io, checkpoints, configuration, data, denoiser, diffusion, editing, parallel, samplers, viz, layout
from ddpm_jax.errors import require
from ddpm_jax.processes import Process
from ddpm_jax import progress as progress_lib  # make_sampler's argument `progress` is a flag.
from ddpm_jax.train_state import components, root_keys


def model_fn_for(model, params, batch_stats) -> diffusion.ModelFn:
  """model_fn(x, t) -> the network's raw output in inference mode (batch norm uses its running
  statistics): the network input and time input are the process's (denoiser.Model adds those)."""
  return lambda x, t: model.apply({'params': params, 'batch_stats': batch_stats}, x, t, train=False)


def bound_model(model, params, batch_stats, config: ml_collections.ConfigDict, process: Process,
                labels=None, guidance_scale: float | None = None) -> denoiser.Model:
  """The network of a config with its parameters and process as every sampler sees it: guided with
  classifier-free guidance at guidance_scale (None: config.sampling.guidance_scale) when it is
  class-conditional (then `labels`, one per image, are required)."""
  d = config.diffusion
  guidance = config.sampling.guidance_scale if guidance_scale is None else guidance_scale
  apply_fn = lambda x, t, labels: model.apply({'params': params, 'batch_stats': batch_stats}, x, t, train=False,
                                              labels=labels)
  output_fn = denoiser.network_output_fn(apply_fn, labels, config.model.num_classes, guidance, d.model_var_type)
  return denoiser.Model(process, output_fn, d.model_mean_type, d.model_var_type, d.clip_denoised)


def sampler_steps(config: ml_collections.ConfigDict, process: Process) -> int:
  """Reverse steps of config.sampling's sampler (adaptive ones: their bound)."""
  return samplers.sampler_class(config.sampling.sampler).steps(config, process)


def check_constrainable(config: ml_collections.ConfigDict) -> None:
  """ConfigError unless config.sampling's sampler takes an edit's constraint (Sampler.constrainable)."""
  able = [name for name, cls in samplers.SAMPLERS.items() if cls.constrainable]
  require(samplers.sampler_class(config.sampling.sampler).constrainable,
          f'config.sampling.sampler={config.sampling.sampler} does not take an edit\'s constraint (--mode=edit): use '
          f'one that does: {", ".join(able)}.')


def make_sampler(model, process: Process, config: ml_collections.ConfigDict, frame_steps=(), progress: bool = False,
                 guidance_scale: float | None = None, constraint: Callable | None = None) -> Callable:
  """sample(params, batch_stats, x_T, key, labels=None) -> (x_0, frames, nfe): the whole reverse
  process compiled, with the sampler named by config.sampling.sampler (samplers/); x_T is standard
  normal (the sampler scales it to the prior), nfe the network calls per image (an array: the ODE's
  is adaptive).

  A class-conditional network needs labels (one per image) and is guided with guidance_scale
  (None: config.sampling.guidance_scale). With `progress`, samplers that report from their loop
  (those that keep frames) report every config.sampling.progress_every reverse steps: inside
  generate() they move its bar on within the batch; elsewhere each report is a log line. Only
  samplers that keep frames return them (else None). An adaptive sampler's run that stopped at its step
  bound raises its error (Sampler.unfinished) here, on the host, when it returns.

  constraint(observed, mask, key) -> a samplers.Constraint (an edit: editing.constraint_builder): then
  sample(..., observed, mask) ties every level the sampler reaches to the observed images (a
  constrainable sampler only), and the sample ends on them exactly where they are kept.
  """
  s = config.sampling
  sampler = samplers.sampler_class(s.sampler)
  if constraint is not None:
    check_constrainable(config)
  num_classes = config.model.num_classes
  guidance = s.guidance_scale if guidance_scale is None else guidance_scale
  every = s.progress_every if progress and sampler.keeps_frames else 0
  num_steps = sampler.steps(config, process)
  run = sampler.build(config, process)  # Host-side set-up (grids, noise levels), once.
  # A guided sampler calls the network on the doubled batch once per step.
  calls_per_eval = 2 if num_classes and guidance != 0 else 1

  def report(steps_done):
    if not progress_lib.report_within(int(steps_done) / num_steps):
      logging.info('  reverse step %d/%d', int(steps_done), num_steps)

  def sample(params, batch_stats, x_T, key, labels=None, observed=None, mask=None):
    bound = bound_model(model, params, batch_stats, config, process, labels, guidance)
    if constraint is None:
      x_0, frames, nfe = run(bound, x_T, key, frame_steps, report if every else None, every)
    else:
      key, edit_key = jax.random.split(key)
      constrain = constraint(observed, mask, edit_key)
      x_0, frames, nfe = run(bound, x_T, key, frame_steps, report if every else None, every, constrain=constrain)
      x_0 = constrain(x_0, 1.0, 0.0, editing.DATA_LEVEL)  # The data's level: the kept part exactly.
    return x_0, frames, jnp.asarray(nfe, jnp.int32) * calls_per_eval

  compiled = jax.jit(sample)
  if not sampler.adaptive:
    return compiled

  def sample_to_the_end(params, batch_stats, x_T, key, labels=None):
    x_0, frames, nfe = compiled(params, batch_stats, x_T, key, labels)
    if int(nfe) < 0:  # The solve stopped at its step bound (negated calls: see samplers/registry.py).
      raise sampler.unfinished(config)
    return x_0, frames, nfe

  return sample_to_the_end


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
  save_npz_and_png(path_stem, {'images': images}, viz.image_grid(images, num_columns))


def save_npz_and_png(path_stem: str, arrays: dict[str, np.ndarray], picture: np.ndarray) -> None:
  """arrays as path_stem.npz and picture as path_stem.png, both or neither (a full disk, a signal:
  the folders as they were); written by host 0 only."""
  if jax.process_index() > 0:
    return
  directory = os.path.dirname(os.path.abspath(path_stem))
  made = not os.path.isdir(directory)
  touched = os.path.dirname(directory) if made else directory  # The folder whose entries change.
  times = os.stat(touched) if os.path.isdir(touched) else None
  try:
    atomic_io.savez(path_stem + '.npz', **arrays)
    viz.save_png(picture, path_stem + '.png')
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
  mesh, model, process, tx = components(config)
  configuration.check_workdir_config(config, workdir, allow_model_change=force_workdir_config)
  state, step = checkpoints.restore_latest(config, workdir, model, tx, mesh)
  s = config.sampling
  logging.info('Sampling %d images from the EMA params of step %d (%s sampler, %s%d steps).', s.num_samples, step,
               s.sampler, 'at most ' if samplers.sampler_class(s.sampler).adaptive else '',
               sampler_steps(config, process))
  sample_fn = make_sampler(model, process, config, progress=True)
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
