"""Training loop, checkpoints, resume and sampling from a workdir.

One code path for 1 or N devices: a 1-D `data` mesh, the global batch sharded
over it, the train state replicated; `jax.jit` compiles the global computation
(batch norm statistics and gradients over the whole batch, whatever the device
count). Every random key derives from config.seed and the step, so a resumed run
repeats the uninterrupted one exactly.
"""

import json
import os
import time
from typing import Callable

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ddpm_jax import configuration, data, diffusion, nets, runs, sampling, viz
from ddpm_jax.train_state import TrainState, apply_gradients, create_train_state, learning_rate_schedule, make_optimizer

CHECKPOINT_DIR = 'checkpoints'
SAMPLES_DIR = 'samples'
EVAL_DIR = 'eval'


# ---------------------------------------------------------------------------
# Keys and devices.

def root_keys(config: ml_collections.ConfigDict) -> dict[str, jax.Array]:
  """The independent key streams of a run, all from config.seed."""
  root = jax.random.key(config.seed, impl=config.rng_impl)
  init, train, sample, calibrate, evaluate = jax.random.split(root, 5)
  return {'init': init, 'train': train, 'sample': sample, 'calibrate': calibrate, 'eval': evaluate}


def make_mesh() -> Mesh:
  return Mesh(np.asarray(jax.devices()), ('data',))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec('data'))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def shard_batch(array: np.ndarray, mesh: Mesh) -> jax.Array:
  """Places this host's share of a global batch on the mesh, split along the batch axis."""
  return jax.make_array_from_process_local_data(batch_sharding(mesh), array)


def shard_batches(array: np.ndarray, mesh: Mesh) -> jax.Array:
  """A stack of global batches (K, B, ...), each split along its batch axis."""
  return jax.make_array_from_process_local_data(NamedSharding(mesh, PartitionSpec(None, 'data')), array)


# ---------------------------------------------------------------------------
# Compiled steps.

def model_fn_for(model, params, batch_stats) -> diffusion.ModelFn:
  """model_fn(x_t, t) -> eps in inference mode (batch norm uses its running statistics)."""
  return lambda x, t: model.apply({'params': params, 'batch_stats': batch_stats}, x, t, train=False)


TimestepDraw = Callable[[jax.Array, int], tuple[jax.Array, jax.Array]]


def uniform_timesteps(num_timesteps: int) -> TimestepDraw:
  """draw(key, batch_size) -> (t uniform over [0, T), weights 1)."""
  return lambda key, n: (diffusion.sample_timesteps(key, n, num_timesteps), jnp.ones((n,), jnp.float32))


def training_inputs(images: jax.Array, key: jax.Array, random_flip: bool, draw_timesteps: TimestepDraw):
  """From a uint8 batch and a key: (x0 in [-1, 1], timesteps, their loss weights, noise, dropout key)."""
  flip_key, t_key, noise_key, dropout_key = jax.random.split(key, 4)
  x0 = data.preprocess(images, flip_key, random_flip)
  t, weights = draw_timesteps(t_key, x0.shape[0])
  return x0, t, weights, jax.random.normal(noise_key, x0.shape, x0.dtype), dropout_key


def initial_loss_history(config: ml_collections.ConfigDict):
  """The importance sampler's empty history, or {} when timesteps are uniform."""
  if config.training.timestep_sampler != 'importance':
    return {}
  return diffusion.init_loss_history(config.diffusion.num_timesteps, config.training.importance_history)._asdict()


def make_train_step(model, schedule: diffusion.Schedule, tx: optax.GradientTransformation,
                    config: ml_collections.ConfigDict, train_key: jax.Array) -> Callable:
  """train_step(state, uint8 images) -> (state, metrics); the step's keys come from state.step."""
  spec = diffusion.loss_spec_from_config(config.diffusion)
  lr_schedule = learning_rate_schedule(config.optim)
  importance = config.training.timestep_sampler == 'importance'

  def train_step(state: TrainState, images: jax.Array):
    if importance:
      history = diffusion.LossHistory(**state.loss_history)
      draw = lambda key, n: diffusion.sample_importance_timesteps(
          key, n, history, config.training.importance_uniform_prob)
    else:
      draw = uniform_timesteps(schedule.num_timesteps)
    x0, t, weights, noise, dropout_key = training_inputs(
        images, jax.random.fold_in(train_key, state.step), config.data.random_flip, draw)

    def loss_fn(params):
      new_stats = {}

      def model_fn(x, t):
        out, mutated = model.apply({'params': params, 'batch_stats': state.batch_stats}, x, t,
                                   train=True, mutable=['batch_stats'], rngs={'dropout': dropout_key})
        new_stats.update(mutated)  # Carried out of the loss as aux; traced, so pure.
        return out

      terms = diffusion.training_loss(spec, schedule, model_fn, x0, t, noise)
      loss = jnp.mean(weights * terms.per_example) + terms.batch_term
      return loss, (new_stats.get('batch_stats', state.batch_stats), terms)

    (loss, (batch_stats, terms)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    metrics = {'loss': loss, 'grad_norm': optax.global_norm(grads),
               'learning_rate': lr_schedule(state.step), **terms.metrics}
    new_state = apply_gradients(state, grads, batch_stats, tx, config.training.ema_decay)
    if importance:
      new_state = new_state.replace(loss_history=diffusion.update_loss_history(
          history, t, terms.per_example)._asdict())
    return new_state, metrics

  return train_step


def make_bn_calibration(model, schedule: diffusion.Schedule, config: ml_collections.ConfigDict,
                        calibration_key: jax.Array) -> Callable:
  """calibrate(state, uint8 batches (K, B, H, W, C)) -> state with fresh ema_batch_stats.

  The running batch-norm statistics follow the raw params, not their EMA; sampling
  with EMA params needs statistics of the EMA network itself. They are the mean,
  over K noisy training batches, of each batch-norm layer's batch statistics.
  """
  momentum = config.model.batch_norm_momentum

  def batch_statistics(state: TrainState, images: jax.Array, index: jax.Array):
    key = jax.random.fold_in(jax.random.fold_in(calibration_key, state.step), index)
    x0, t, _, noise, dropout_key = training_inputs(images, key, config.data.random_flip,
                                                   uniform_timesteps(schedule.num_timesteps))
    zeros = jax.tree.map(jnp.zeros_like, state.ema_batch_stats)
    _, mutated = model.apply({'params': state.ema_params, 'batch_stats': zeros},
                             diffusion.q_sample(schedule, x0, t, noise), t, train=True,
                             mutable=['batch_stats'], rngs={'dropout': dropout_key})
    # From zero, one update leaves (1 - momentum) * the batch's statistic.
    return jax.tree.map(lambda s: s / (1.0 - momentum), mutated['batch_stats'])

  def calibrate(state: TrainState, batches: jax.Array) -> TrainState:
    if not jax.tree.leaves(state.ema_batch_stats):
      return state
    if batches.shape[0] == 0:  # No calibration: reuse the raw params' running statistics.
      return state.replace(ema_batch_stats=state.batch_stats)
    per_batch = jax.lax.map(lambda args: batch_statistics(state, *args),
                            (batches, jnp.arange(batches.shape[0])))
    return state.replace(ema_batch_stats=jax.tree.map(lambda s: jnp.mean(s, axis=0), per_batch))

  return calibrate


def make_sampler(model, schedule: diffusion.Schedule, config: ml_collections.ConfigDict,
                 frame_steps=(), progress: bool = False) -> Callable:
  """sample(params, batch_stats, x_T, key) -> (x_0, frames): the whole reverse process compiled,
  with the sampler named by config.sampling.sampler."""
  s = config.sampling
  every = s.progress_every if progress else 0
  num_steps = s.ddim_steps if s.sampler == 'ddim' else schedule.num_timesteps

  def report(steps_done):
    logging.info('  reverse step %d/%d', int(steps_done), num_steps)

  def sample(params, batch_stats, x_T, key):
    model_fn = model_fn_for(model, params, batch_stats)
    progress_fn = report if every else None
    d = config.diffusion
    if s.sampler == 'ddim':
      return sampling.ddim_sample(
          schedule, model_fn, x_T, key, s.ddim_steps, s.ddim_eta, s.ddim_spacing, d.clip_denoised,
          frame_steps, progress_fn=progress_fn, progress_every=every, model_mean_type=d.model_mean_type,
          model_var_type=d.model_var_type)
    return sampling.ancestral_sample(
        schedule, model_fn, x_T, key, d.model_var_type, d.clip_denoised, frame_steps,
        progress_fn=progress_fn, progress_every=every, model_mean_type=d.model_mean_type)

  return jax.jit(sample)


def generate(sample_fn: Callable, params, batch_stats, num_samples: int, batch_size: int,
             image_shape: tuple, key: jax.Array, mesh: Mesh) -> np.ndarray:
  """num_samples uint8 images in batches; batch i starts from noise drawn with fold_in(key, i)."""
  batches = []
  num_batches = -(-num_samples // batch_size)
  for i in range(num_batches):
    start = time.time()
    batch_key = jax.random.fold_in(key, i)
    x_T = jax.random.normal(jax.random.fold_in(batch_key, 0), (batch_size,) + image_shape)
    x_T = jax.device_put(x_T, batch_sharding(mesh))
    x_0, _ = sample_fn(params, batch_stats, x_T, jax.random.fold_in(batch_key, 1))
    batches.append(data.to_uint8(x_0))
    logging.info('Sampled batch %d/%d (%d images) in %.1fs.', i + 1, num_batches, batch_size,
                 time.time() - start)
  return np.concatenate(batches)[:num_samples]


# ---------------------------------------------------------------------------
# State, checkpoints.

def num_train_steps(config: ml_collections.ConfigDict, num_examples: int) -> int:
  if config.training.num_train_steps > 0:
    return config.training.num_train_steps
  per_epoch = data.steps_per_epoch(num_examples, config.training.batch_size)
  return max(1, int(round(config.training.num_epochs * per_epoch)))


def _init_fn(model, config: ml_collections.ConfigDict, tx) -> Callable[[jax.Array], TrainState]:
  return lambda key: create_train_state(nets.init_variables(model, config, key), tx,
                                       initial_loss_history(config))


def initial_state(model, config: ml_collections.ConfigDict, tx, mesh: Mesh) -> TrainState:
  """The step-0 state, replicated over the mesh."""
  init = jax.jit(_init_fn(model, config, tx), out_shardings=replicated(mesh))
  return init(root_keys(config)['init'])


def abstract_state(model, config: ml_collections.ConfigDict, tx, mesh: Mesh) -> TrainState:
  """Shapes, dtypes and shardings of the state, without computing it (a restore target)."""
  shapes = jax.eval_shape(_init_fn(model, config, tx), root_keys(config)['init'])
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated(mesh)), shapes)


def checkpoint_manager(workdir: str, config: ml_collections.ConfigDict) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR)),
      options=ocp.CheckpointManagerOptions(max_to_keep=config.training.keep_checkpoints, create=True))


def restore_state(manager: ocp.CheckpointManager, abstract: TrainState, step: int) -> TrainState:
  """Restores the checkpoint of `step` into the shapes, dtypes and shardings of `abstract`."""
  return manager.restore(step, args=ocp.args.StandardRestore(abstract))


def save_samples(images: np.ndarray, path_stem: str) -> None:
  """images as path_stem.npz (uint8 'images') and a PNG grid path_stem.png."""
  os.makedirs(os.path.dirname(path_stem), exist_ok=True)
  with open(path_stem + '.npz.tmp', 'wb') as f:
    np.savez(f, images=images)
  os.replace(path_stem + '.npz.tmp', path_stem + '.npz')
  viz.save_png(viz.image_grid(images), path_stem + '.png')


# ---------------------------------------------------------------------------
# Entry points.

def _setup(config: ml_collections.ConfigDict):
  """Checks, mesh, network, schedule and optimizer shared by training and sampling."""
  configuration.validate_config(config)
  mesh = make_mesh()
  configuration.check_batch_divides(config.training.batch_size, mesh.size, 'config.training.batch_size')
  configuration.check_batch_divides(config.sampling.batch_size, mesh.size, 'config.sampling.batch_size')
  configuration.check_batch_divides(config.training.num_preview_samples, mesh.size,
                                    'config.training.num_preview_samples')
  model = nets.get_model(config)
  schedule = diffusion.schedule_from_config(config.diffusion)
  tx = make_optimizer(config.optim)
  return mesh, model, schedule, tx


def _check_finite(metrics: list[dict], first_step: int, manager: ocp.CheckpointManager,
                  workdir: str) -> None:
  """Stops at the first step whose loss or gradient norm is NaN or infinite, before it is saved."""
  for i, m in enumerate(metrics):
    if not (np.isfinite(m['loss']) and np.isfinite(m['grad_norm'])):
      manager.wait_until_finished()
      raise FloatingPointError(
          f'The loss is {m["loss"]} (gradient norm {m["grad_norm"]}) at step {first_step + i}; '
          f'the last good checkpoint (step {manager.latest_step()}) is kept in {workdir}. '
          f'Lower config.optim.lr or set config.optim.grad_clip.')


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Trains in workdir, resuming from its latest checkpoint; returns the final state."""
  from clu import metric_writers, periodic_actions  # pylint: disable=g-import-not-at-top

  session_start = time.time()
  mesh, model, schedule, tx = _setup(config)
  configuration.check_workdir_config(config, workdir)
  dataset = data.load_dataset(config.data, config.data.train_split)
  total_steps = num_train_steps(config, len(dataset.images))
  configuration.save_config(config, workdir)

  keys = root_keys(config)
  manager = checkpoint_manager(workdir, config)
  start_step = manager.latest_step() or 0
  if start_step:
    state = restore_state(manager, abstract_state(model, config, tx, mesh), start_step)
    logging.info('Resumed from the checkpoint of step %d in %s.', start_step, workdir)
  else:
    state = initial_state(model, config, tx, mesh)
  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  earlier_wall_time = runs.read_run_info(workdir).get('wall_time_s', 0.0) if start_step else 0.0
  logging.info('%s: %d params on %d device(s); %d examples; steps %d -> %d.', config.model.name,
               num_params, mesh.size, len(dataset.images), start_step, total_steps)
  if start_step >= total_steps:
    logging.info('Training is already complete at step %d; raise config.training.num_train_steps '
                 '(or num_epochs) to train on, or use --mode=sample.', start_step)

  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  if start_step == 0:
    writer.write_hparams({'num_params': num_params, 'num_devices': mesh.size,
                          **{k: v for k, v in configuration.flatten_dict(configuration.config_to_dict(config)).items()
                             if isinstance(v, (int, float, str, bool))}})
  train_step = jax.jit(make_train_step(model, schedule, tx, config, keys['train']),
                       out_shardings=replicated(mesh), donate_argnums=0)
  calibrate = jax.jit(make_bn_calibration(model, schedule, config, keys['calibrate']),
                      out_shardings=replicated(mesh))
  sample_fn = make_sampler(model, schedule, config)
  report_progress = periodic_actions.ReportProgress(num_train_steps=total_steps, writer=writer)
  image_shape = (config.data.image_size, config.data.image_size, config.data.num_channels)
  t = config.training

  pending = []  # Metrics still on the device, not yet checked.
  interval = []  # Checked metrics since the last log.
  for step in range(start_step, total_steps):
    batch = data.get_batch(dataset, t.batch_size, step, config.seed)
    state, metrics = train_step(state, shard_batch(batch.images, mesh))
    pending.append(metrics)
    done = step + 1
    report_progress(done)
    last = done == total_steps
    log_now = done % t.log_every_steps == 0 or last
    sample_now = t.sample_every_steps and (done % t.sample_every_steps == 0 or last)
    checkpoint_now = done % t.checkpoint_every_steps == 0 or last
    if log_now or sample_now or checkpoint_now:
      fetched, pending = jax.device_get(pending), []
      _check_finite(fetched, done - len(fetched) + 1, manager, workdir)
      interval.extend(fetched)
    if log_now:
      summary = {k: float(np.mean([m[k] for m in interval])) for k in interval[0]}
      interval = []
      writer.write_scalars(done, {**summary, 'epoch': done / data.steps_per_epoch(
          len(dataset.images), t.batch_size)})
      logging.info('step %d/%d: loss %.5f', done, total_steps, summary['loss'])
    if sample_now or checkpoint_now:
      calibration = [data.get_batch(dataset, t.batch_size, done + i, config.seed).images
                     for i in range(t.bn_calibration_batches)]
      state = calibrate(state, shard_batches(
          np.stack(calibration) if calibration else np.zeros((0, t.batch_size) + image_shape, np.uint8), mesh))
    if sample_now:
      images = generate(sample_fn, state.ema_params, state.ema_batch_stats, t.num_preview_samples,
                        t.num_preview_samples, image_shape, keys['sample'], mesh)
      save_samples(images, os.path.join(workdir, SAMPLES_DIR, f'preview_{done:08d}'))
      writer.write_images(done, {'samples': viz.image_grid(images)[None]})
    if checkpoint_now:
      manager.save(done, args=ocp.args.StandardSave(state))
      write_json({'num_params': num_params, 'num_devices': mesh.size, 'step': done,
                  'wall_time_s': earlier_wall_time + time.time() - session_start},
                 os.path.join(workdir, runs.RUN_INFO_FILE))
  manager.wait_until_finished()
  writer.flush()
  return state


def restore_latest(config: ml_collections.ConfigDict, workdir: str, model, tx, mesh: Mesh):
  """(state, step) of the workdir's latest checkpoint; WorkdirError when there is none."""
  checkpoint_dir = os.path.join(workdir, CHECKPOINT_DIR)
  manager = checkpoint_manager(workdir, config) if os.path.isdir(checkpoint_dir) else None
  step = manager.latest_step() if manager else None
  if step is None:
    raise configuration.WorkdirError(
        f'No checkpoint in {checkpoint_dir}: train first with --mode=train and the same --workdir.')
  return restore_state(manager, abstract_state(model, config, tx, mesh), step), step


def sample(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Writes config.sampling.num_samples images from the latest checkpoint's EMA params.

  Returns the path stem of the files written (.npz and .png).
  """
  mesh, model, schedule, tx = _setup(config)
  configuration.check_workdir_config(config, workdir)
  state, step = restore_latest(config, workdir, model, tx, mesh)
  s = config.sampling
  logging.info('Sampling %d images from the EMA params of step %d (%s sampler, %d steps).',
               s.num_samples, step, s.sampler,
               s.ddim_steps if s.sampler == 'ddim' else schedule.num_timesteps)
  sample_fn = make_sampler(model, schedule, config, progress=True)
  image_shape = (config.data.image_size, config.data.image_size, config.data.num_channels)
  images = generate(sample_fn, state.ema_params, state.ema_batch_stats, s.num_samples, s.batch_size,
                    image_shape, jax.random.fold_in(root_keys(config)['sample'], step), mesh)
  stem = os.path.join(workdir, SAMPLES_DIR, f'samples_{step:08d}_{s.num_samples}')
  save_samples(images, stem)
  logging.info('Wrote %s.npz and %s.png.', stem, stem)
  return stem


def make_bound_fn(model, schedule: diffusion.Schedule, config: ml_collections.ConfigDict) -> Callable:
  """bound(params, batch_stats, uint8 images, key) -> diffusion.BoundTerms, compiled."""
  d = config.diffusion
  every = max(1, schedule.num_timesteps // 10)

  def report(terms_done):
    logging.info('  bound term %d/%d', int(terms_done), schedule.num_timesteps)

  def bound(params, batch_stats, images, key):
    return diffusion.bound_bpd(schedule, model_fn_for(model, params, batch_stats), data.to_model_range(images),
                               key, d.model_mean_type, d.model_var_type, report, every)

  return jax.jit(bound)


def bits_per_dim(bound_fn: Callable, params, batch_stats, images: np.ndarray, batch_size: int,
                 key: jax.Array, mesh: Mesh) -> dict:
  """The variational bound in bits/dim over `images`, batch by batch (batch i: fold_in(key, i)).

  The last batch is padded with copies of its first image, which are left out of the means.
  """
  totals, priors, terms = [], [], []
  num_batches = -(-len(images) // batch_size)
  for i in range(num_batches):
    start = time.time()
    batch = images[i * batch_size:(i + 1) * batch_size]
    real = len(batch)
    batch = np.concatenate([batch, np.repeat(batch[:1], batch_size - real, axis=0)])
    out = jax.device_get(bound_fn(params, batch_stats, shard_batch(batch, mesh), jax.random.fold_in(key, i)))
    totals.append(out.total[:real])
    priors.append(out.prior[:real])
    terms.append(out.terms[:, :real])
    logging.info('Bits/dim batch %d/%d: %.4f (%.1fs).', i + 1, num_batches, float(np.mean(out.total[:real])),
                 time.time() - start)
  terms = np.concatenate(terms, axis=1)
  return {'bpd': float(np.mean(np.concatenate(totals))), 'bpd_prior': float(np.mean(np.concatenate(priors))),
          'bpd_decoder': float(np.mean(terms[0])), 'bpd_diffusion': float(np.mean(terms[1:].sum(0))),
          'bpd_num_examples': len(images), 'bpd_terms': [float(v) for v in terms.mean(axis=1)]}


def write_json(value, path: str) -> None:
  """Writes JSON atomically (a partial file never has the name)."""
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  with open(path + '.tmp', 'w') as f:
    json.dump(value, f, indent=2)
  os.replace(path + '.tmp', path)


def evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Evaluates the latest checkpoint's EMA params; writes eval/metrics.json and TensorBoard scalars.

  Bits/dim by the full variational bound on config.eval.split (config.eval.bpd_num_examples).
  """
  from clu import metric_writers  # pylint: disable=g-import-not-at-top

  mesh, model, schedule, tx = _setup(config)
  e = config.eval
  configuration.check_batch_divides(e.bpd_batch_size, mesh.size, 'config.eval.bpd_batch_size')
  configuration.check_workdir_config(config, workdir)
  state, step = restore_latest(config, workdir, model, tx, mesh)
  metrics = {'step': step}
  if e.bpd_num_examples:
    dataset = data.load_dataset(config.data, e.split)
    images = dataset.images[:e.bpd_num_examples]
    logging.info('Bits/dim of %d %s examples by the full bound (%d terms each).', len(images), e.split,
                 schedule.num_timesteps)
    metrics.update(bits_per_dim(make_bound_fn(model, schedule, config), state.ema_params, state.ema_batch_stats,
                                images, e.bpd_batch_size, jax.random.fold_in(root_keys(config)['eval'], step),
                                mesh))
    logging.info('Bits/dim at step %d: %.4f (prior %.2e, decoder %.4f).', step, metrics['bpd'],
                 metrics['bpd_prior'], metrics['bpd_decoder'])
  path = os.path.join(workdir, EVAL_DIR, 'metrics.json')
  write_json(metrics, path)
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  writer.write_scalars(step, {f'eval/{k}': v for k, v in metrics.items() if isinstance(v, float)})
  writer.flush()
  logging.info('Wrote %s.', path)
  return metrics
