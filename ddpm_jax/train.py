"""Training loop, checkpoints, resume and sampling from a workdir.

One code path for 1 or N devices: a 1-D `data` mesh, the global batch sharded
over it, the train state replicated; `jax.jit` compiles the global computation
(batch norm statistics and gradients over the whole batch, whatever the device
count). Every random key derives from config.seed and the step, so a resumed run
repeats the uninterrupted one exactly.
"""

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
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ddpm_jax import atomic_io, checkpoints, configuration, data, diffusion, metrics, nets, pretrain, runs, sampling, viz
from ddpm_jax.nets import precision
from ddpm_jax.train_state import TrainState, apply_gradients, create_train_state, learning_rate_schedule, make_optimizer

CHECKPOINT_DIR = checkpoints.CHECKPOINT_DIR
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


def conditional_model_fn_for(model, params, batch_stats) -> Callable:
  """model_fn(x_t, t, labels) of a class-conditional network in inference mode."""
  return lambda x, t, labels: model.apply({'params': params, 'batch_stats': batch_stats}, x, t, train=False,
                                          labels=labels)


def drop_labels(key: jax.Array, labels: jax.Array, drop_prob: float, null_label: int) -> jax.Array:
  """Each label replaced by the null label with probability drop_prob (classifier-free guidance)."""
  return jnp.where(jax.random.bernoulli(key, drop_prob, labels.shape), null_label, labels)


TimestepDraw = Callable[[jax.Array, int], tuple[jax.Array, jax.Array]]


def uniform_timesteps(num_timesteps: int) -> TimestepDraw:
  """draw(key, batch_size) -> (t uniform over [0, T), weights 1)."""
  return lambda key, n: (diffusion.sample_timesteps(key, n, num_timesteps), jnp.ones((n,), jnp.float32))


def training_inputs(images: jax.Array, key: jax.Array, random_flip: bool, draw_timesteps: TimestepDraw):
  """From a uint8 batch and a key: (x0 in [-1, 1], timesteps, their loss weights, noise, dropout key,
  label-drop key)."""
  flip_key, t_key, noise_key, dropout_key, label_key = jax.random.split(key, 5)
  x0 = data.preprocess(images, flip_key, random_flip)
  t, weights = draw_timesteps(t_key, x0.shape[0])
  return x0, t, weights, jax.random.normal(noise_key, x0.shape, x0.dtype), dropout_key, label_key


def initial_loss_history(config: ml_collections.ConfigDict):
  """The importance sampler's empty history, or {} when timesteps are uniform."""
  if config.training.timestep_sampler != 'importance':
    return {}
  return diffusion.init_loss_history(config.diffusion.num_timesteps, config.training.importance_history)._asdict()


def make_train_step(model, schedule: diffusion.Schedule, tx: optax.GradientTransformation,
                    config: ml_collections.ConfigDict, train_key: jax.Array) -> Callable:
  """train_step(state, uint8 images, labels=None) -> (state, metrics); keys come from state.step.

  A class-conditional network sees each label, or the null label with probability
  config.training.cond_drop_prob; an unconditional one ignores the labels. The forward and
  backward compute in config.training.compute_dtype; params, optimizer and loss stay float32.
  """
  spec = diffusion.loss_spec_from_config(config.diffusion)
  num_classes = config.model.num_classes
  lr_schedule = learning_rate_schedule(config.optim)
  importance = config.training.timestep_sampler == 'importance'
  model = precision.computing_in(model, config.training.compute_dtype)

  def train_step(state: TrainState, images: jax.Array, labels: jax.Array | None = None):
    if num_classes and labels is None:
      raise ValueError(f'The network is class-conditional ({num_classes} classes): train it with labels.')
    if importance:
      history = diffusion.LossHistory(**state.loss_history)
      draw = lambda key, n: diffusion.sample_importance_timesteps(
          key, n, history, config.training.importance_uniform_prob)
    else:
      draw = uniform_timesteps(schedule.num_timesteps)
    x0, t, weights, noise, dropout_key, label_key = training_inputs(
        images, jax.random.fold_in(train_key, state.step), config.data.random_flip, draw)
    model_labels = (drop_labels(label_key, labels, config.training.cond_drop_prob, num_classes)
                    if num_classes else None)

    def loss_fn(params):
      new_stats = {}

      def model_fn(x, t):
        out, mutated = model.apply({'params': params, 'batch_stats': state.batch_stats}, x, t,
                                   train=True, labels=model_labels, mutable=['batch_stats'],
                                   rngs={'dropout': dropout_key})
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
    # A NaN or infinite step never changes the state; the loop stops on it or counts it
    # (config.training.skip_nonfinite_steps). One program either way: the knob needs no recompile.
    return unless_nonfinite(state, new_state, loss, metrics['grad_norm']), metrics

  return train_step


def unrolled_steps(train_step: Callable) -> Callable:
  """steps(state, images (K, B, ...), labels (K, B)) -> (state, metrics stacked along K): K train
  steps in one compiled call (score_sde's n_jitted_steps), each exactly as a call of train_step.

  Unrolled rather than a lax.scan: XLA:CPU runs a train step inside a loop ~25x slower (its
  weight-gradient convolutions), measured with jaxlib 0.10.2; compile time grows with K instead.
  """

  def steps(state: TrainState, images: jax.Array, labels: jax.Array):
    all_metrics = []
    for i in range(images.shape[0]):
      state, metrics = train_step(state, images[i], labels[i])
      all_metrics.append(metrics)
    return state, jax.tree.map(lambda *values: jnp.stack(values), *all_metrics)

  return steps


def next_call_steps(done: int, total_steps: int, n_jitted_steps: int) -> range:
  """The steps of the next compiled call: up to the next multiple of n_jitted_steps, never past
  total_steps. A run stopped between multiples (SIGTERM saves any step) realigns, so the log,
  checkpoint and sample intervals, multiples of n_jitted_steps (validate_config), end calls."""
  return range(done, min(done + n_jitted_steps - done % n_jitted_steps, total_steps))


def unstack_metrics(stacked: dict) -> list[dict]:
  """Host metrics of K steps in one call {name: (K,)} -> K per-step dicts."""
  return [{name: values[i] for name, values in stacked.items()} for i in range(len(stacked['loss']))]


def unless_nonfinite(old: TrainState, new: TrainState, loss: jax.Array, grad_norm: jax.Array) -> TrainState:
  """`new` when the loss and gradient norm are finite, else `old` with only its step advanced (params,
  optimizer, EMA, statistics untouched), so later steps keep the keys and data of an unskipped run."""
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old).replace(step=new.step)


def make_bn_calibration(model, schedule: diffusion.Schedule, config: ml_collections.ConfigDict,
                        calibration_key: jax.Array) -> Callable:
  """calibrate(state, uint8 batches (K, B, H, W, C)) -> state with fresh ema_batch_stats.

  The running batch-norm statistics follow the raw params, not their EMA; sampling
  with EMA params needs statistics of the EMA network itself. They are the mean,
  over K noisy training batches, of each batch-norm layer's batch statistics (a class-conditional
  network is calibrated as the unconditional model, with the null label).
  """
  momentum = config.model.batch_norm_momentum
  num_classes = config.model.num_classes

  def batch_statistics(state: TrainState, images: jax.Array, index: jax.Array):
    key = jax.random.fold_in(jax.random.fold_in(calibration_key, state.step), index)
    x0, t, _, noise, dropout_key, _ = training_inputs(images, key, config.data.random_flip,
                                                      uniform_timesteps(schedule.num_timesteps))
    zeros = jax.tree.map(jnp.zeros_like, state.ema_batch_stats)
    null_labels = jnp.full((x0.shape[0],), num_classes, jnp.int32) if num_classes else None
    _, mutated = model.apply({'params': state.ema_params, 'batch_stats': zeros},
                             diffusion.q_sample(schedule, x0, t, noise), t, train=True, labels=null_labels,
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
                 frame_steps=(), progress: bool = False, guidance_scale: float | None = None) -> Callable:
  """sample(params, batch_stats, x_T, key, labels=None) -> (x_0, frames): the whole reverse process
  compiled, with the sampler named by config.sampling.sampler.

  A class-conditional network needs labels (one per image) and is guided with guidance_scale
  (None: config.sampling.guidance_scale).
  """
  s = config.sampling
  num_classes = config.model.num_classes
  guidance = s.guidance_scale if guidance_scale is None else guidance_scale
  every = s.progress_every if progress else 0
  num_steps = s.ddim_steps if s.sampler == 'ddim' else schedule.num_timesteps

  def report(steps_done):
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
             image_shape: tuple, key: jax.Array, mesh: Mesh, labels: np.ndarray | None = None) -> np.ndarray:
  """num_samples uint8 images in batches; batch i starts from noise drawn with fold_in(key, i).

  labels: one class per image for a class-conditional network (None otherwise).
  """
  batches = []
  num_batches = -(-num_samples // batch_size)
  for i in range(num_batches):
    start = time.time()
    batch_key = jax.random.fold_in(key, i)
    x_T = jax.random.normal(jax.random.fold_in(batch_key, 0), (batch_size,) + image_shape)
    x_T = jax.device_put(x_T, batch_sharding(mesh))
    batch_labels = None
    if labels is not None:
      batch_labels = np.resize(np.asarray(labels[i * batch_size:(i + 1) * batch_size], np.int32), batch_size)
      batch_labels = jax.device_put(batch_labels, batch_sharding(mesh))
    x_0, _ = sample_fn(params, batch_stats, x_T, jax.random.fold_in(batch_key, 1), batch_labels)
    batches.append(data.to_uint8(multihost_utils.process_allgather(x_0, tiled=True)))
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
  return checkpoints.make_manager(workdir, config.training.keep_checkpoints)


def restore_state(manager: ocp.CheckpointManager, abstract: TrainState, step: int) -> TrainState:
  """Restores the checkpoint of `step` into the shapes, dtypes and shardings of `abstract`."""
  return checkpoints.restore_step(manager, abstract, step)


def save_samples(images: np.ndarray, path_stem: str, num_columns: int = 0) -> None:
  """images as path_stem.npz (uint8 'images') and a PNG grid path_stem.png (num_columns 0: square);
  written by host 0 only."""
  if jax.process_index() > 0:
    return
  atomic_io.savez(path_stem + '.npz', images=images)
  viz.save_png(viz.image_grid(images, num_columns), path_stem + '.png')


# ---------------------------------------------------------------------------
# Entry points.

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


def setup(config: ml_collections.ConfigDict):
  """Checks, mesh, network, schedule and optimizer shared by training and sampling."""
  configuration.validate_config(config)
  mesh = make_mesh()
  configuration.check_batches_divide(config, mesh.size)
  model = nets.get_model(config)
  schedule = diffusion.schedule_from_config(config.diffusion)
  tx = make_optimizer(config.optim)
  return mesh, model, schedule, tx


class TrainingDiverged(FloatingPointError):
  """A NaN or infinite loss or gradient with config.training.skip_nonfinite_steps off."""


def is_finite_step(metrics: dict) -> bool:
  return bool(np.isfinite(metrics['loss']) and np.isfinite(metrics['grad_norm']))


def check_finite(metrics: list[dict], first_step: int, skip: bool, saver: checkpoints.CheckpointWriter,
                 workdir: str) -> int:
  """The number of steps in `metrics` whose loss or gradient norm is NaN or infinite.

  Unless they are skipped (config.training.skip_nonfinite_steps), the first one stops training with
  TrainingDiverged naming it, before its state is saved.
  """
  bad = [first_step + i for i, m in enumerate(metrics) if not is_finite_step(m)]
  if bad and not skip:
    m = metrics[bad[0] - first_step]
    saver.wait()
    newest = saver.manager.latest_step()
    kept = (f'the last good checkpoint (step {newest}) is kept in {workdir}' if newest is not None
            else f'no checkpoint was written in {workdir}')
    raise TrainingDiverged(
        f'The loss is {m["loss"]} (gradient norm {m["grad_norm"]}) at step {bad[0]}; {kept}. '
        f'Lower config.optim.lr or set config.optim.grad_clip (or skip such steps with '
        f'config.training.skip_nonfinite_steps=True).')
  return len(bad)


def summarize(interval: list[dict]) -> dict:
  """Each metric's mean over the finite steps of a logging interval ({} when none is finite)."""
  finite = [m for m in interval if is_finite_step(m)]
  return {k: float(np.mean([m[k] for m in finite])) for k in finite[0]} if finite else {}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       force_workdir_config: bool = False) -> TrainState:
  """Trains in workdir, resuming from its newest readable checkpoint; returns the final state.

  force_workdir_config: accept a workdir whose config.json defines another model or diffusion
  when its checkpoints fit the new model; config.json is then rewritten.
  SIGTERM or SIGINT: saves the current step and raises checkpoints.Preempted.
  """
  from clu import metric_writers, periodic_actions  # pylint: disable=g-import-not-at-top

  session_start = time.time()
  mesh, model, schedule, tx = setup(config)
  changes = configuration.check_workdir_config(config, workdir, allow_model_change=force_workdir_config)
  abstract = abstract_state(model, config, tx, mesh)
  if changes:
    checkpoints.check_fits(checkpoints.checkpoint_dir(workdir), abstract)
  dataset = data.load_dataset(config.data, config.data.train_split)
  total_steps = num_train_steps(config, len(dataset.images))

  keys = root_keys(config)
  manager = checkpoint_manager(workdir, config)
  state, start_step, unreadable = checkpoints.restore_newest(manager, abstract)
  if unreadable:  # Newer than the one restored: renamed aside, so those steps can be saved again.
    checkpoints.set_aside(manager, unreadable)
  if changes:
    logging.warning('--force_workdir_config: %s now holds a run of a different model (%s); rewriting %s.',
                    workdir, '; '.join(changes), configuration.CONFIG_FILE)
  if jax.process_index() == 0:
    configuration.save_config(config, workdir)
  if start_step:
    logging.info('Resumed from the checkpoint of step %d in %s.', start_step, workdir)
  else:
    state, start_step = initial_state(model, config, tx, mesh), 0
    if config.training.init_from:  # Pre-training: a new run starts from another run's params.
      loaded = pretrain.load_init_params(config, config.training.init_from, abstract)
      state = pretrain.apply_init(state, loaded, config.training.init_ema)
      logging.info('Initialised the params from %s.', config.training.init_from)
  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  run_info = runs.read_run_info(workdir) if start_step else {}
  earlier_wall_time = run_info.get('wall_time_s', 0.0)
  nonfinite_steps = run_info.get('nonfinite_steps', 0)
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
  train_steps = jax.jit(unrolled_steps(make_train_step(model, schedule, tx, config, keys['train'])),
                        out_shardings=replicated(mesh), donate_argnums=0)
  calibrate = jax.jit(make_bn_calibration(model, schedule, config, keys['calibrate']),
                      out_shardings=replicated(mesh))
  sample_fn = make_sampler(model, schedule, config)
  report_progress = periodic_actions.ReportProgress(num_train_steps=total_steps, writer=writer)
  image_shape = (config.data.image_size, config.data.image_size, config.data.num_channels)
  t = config.training
  skip_nonfinite = t.get('skip_nonfinite_steps', False)
  saver = checkpoints.CheckpointWriter(manager)
  preview_labels, preview_columns = grid_labels(config, t.num_preview_samples)
  fid_nets, fid_references = [], []
  if t.fid_every_steps:  # Feature networks and reference statistics once, before the loop.
    fid_nets = metrics.load_feature_nets(config, mesh)
    fid_references = [metrics.reference(net, config) for net in fid_nets]

  pending = []  # Metrics still on the device, not yet checked.
  interval = []  # Checked metrics since the last log.
  host = (jax.process_index(), jax.process_count())  # Each host reads its share of every batch.
  done = start_step
  with checkpoints.stop_signals() as stop:
    while done < total_steps:
      steps = next_call_steps(done, total_steps, t.n_jitted_steps)
      batches = [data.get_batch(dataset, t.batch_size, step, config.seed, *host) for step in steps]
      state, steps_metrics = train_steps(state, shard_batches(np.stack([b.images for b in batches]), mesh),
                                         shard_batches(np.stack([b.labels for b in batches]), mesh))
      pending.append(steps_metrics)
      done = steps[-1] + 1
      report_progress(done)
      last = done == total_steps
      stopping = stop.requested and not last  # SIGTERM / SIGINT: save this step, then stop.
      log_now = done % t.log_every_steps == 0 or last
      sample_now = t.sample_every_steps and (done % t.sample_every_steps == 0 or last)
      fid_now = t.fid_every_steps and (done % t.fid_every_steps == 0 or last)
      checkpoint_now = done % t.checkpoint_every_steps == 0 or last or stopping
      if log_now or sample_now or checkpoint_now:
        fetched, pending = [m for stacked in jax.device_get(pending) for m in unstack_metrics(stacked)], []
        nonfinite_steps += check_finite(fetched, done - len(fetched) + 1, skip_nonfinite, saver, workdir)
        interval.extend(fetched)
      if log_now:
        summary, interval = summarize(interval), []
        if skip_nonfinite:
          summary['nonfinite_steps'] = nonfinite_steps
        writer.write_scalars(done, {**summary, 'epoch': done / data.steps_per_epoch(
            len(dataset.images), t.batch_size)})
        logging.info('step %d/%d: loss %.5f%s', done, total_steps, summary.get('loss', float('nan')),
                     f' ({nonfinite_steps} non-finite steps skipped so far)' if nonfinite_steps else '')
      if sample_now or checkpoint_now or fid_now:
        calibration = [data.get_batch(dataset, t.batch_size, done + i, config.seed, *host).images
                       for i in range(t.bn_calibration_batches)]
        state = calibrate(state, shard_batches(
            np.stack(calibration) if calibration else np.zeros((0, t.batch_size // host[1]) + image_shape, np.uint8),
            mesh))
      if sample_now:
        images = generate(sample_fn, state.ema_params, state.ema_batch_stats, t.num_preview_samples,
                          t.num_preview_samples, image_shape, keys['sample'], mesh, preview_labels)
        save_samples(images, os.path.join(workdir, SAMPLES_DIR, f'preview_{done:08d}'), preview_columns)
        writer.write_images(done, {'samples': viz.image_grid(images, preview_columns)[None]})
      if fid_now:
        fid_labels = grid_labels(config, t.fid_num_samples)[0]
        images = generate(sample_fn, state.ema_params, state.ema_batch_stats, t.fid_num_samples,
                          config.sampling.batch_size, image_shape, jax.random.fold_in(keys['sample'], done),
                          mesh, fid_labels)
        fid = metrics.sample_metrics(metrics.batches_of(images, config.eval.feature_batch_size), len(images),
                                     fid_nets, fid_references, config)
        writer.write_scalars(done, {k: v for k, v in fid.items() if k.startswith(('fid', 'kid', 'is'))})
        logging.info('step %d: %s', done, ', '.join(f'{k} {v:.4f}' for k, v in fid.items() if k.startswith('fid')))
      if checkpoint_now:
        saved_path = saver.save(done, state)
        if jax.process_index() == 0:
          atomic_io.write_json(os.path.join(workdir, runs.RUN_INFO_FILE), {
              'num_params': num_params, 'num_devices': mesh.size, 'step': done,
              'wall_time_s': earlier_wall_time + time.time() - session_start, 'nonfinite_steps': nonfinite_steps})
      if stopping:
        saver.wait()
        writer.flush()
        raise checkpoints.Preempted(stop.signum, done, saved_path)
  saver.wait()
  writer.flush()
  if nonfinite_steps:
    logging.warning('%d of the %d steps had a non-finite loss or gradient and were skipped.',
                    nonfinite_steps, total_steps)
  return state


def restore_latest(config: ml_collections.ConfigDict, workdir: str, model, tx, mesh: Mesh,
                   check_fits: bool = False):
  """(state, step) of the workdir's newest readable checkpoint; WorkdirError when there is none.

  Unreadable newer checkpoints are logged and left where they are. check_fits: first raise
  CheckpointError when the checkpoints hold other arrays than this model's.
  """
  checkpoint_dir = os.path.join(workdir, CHECKPOINT_DIR)
  manager = checkpoint_manager(workdir, config) if os.path.isdir(checkpoint_dir) else None
  if manager is None or manager.latest_step() is None:
    raise configuration.WorkdirError(
        f'No checkpoint in {checkpoint_dir}: train first with --mode=train and the same --workdir.')
  abstract = abstract_state(model, config, tx, mesh)
  if check_fits:
    checkpoints.check_fits(checkpoint_dir, abstract)
  state, step, _ = checkpoints.restore_newest(manager, abstract)
  return state, step


def sample(config: ml_collections.ConfigDict, workdir: str, force_workdir_config: bool = False) -> str:
  """Writes config.sampling.num_samples images from the latest checkpoint's EMA params.

  Returns the path stem of the files written (.npz and .png). force_workdir_config: sample with a
  model or diffusion config other than the workdir's when its checkpoints fit (config.json is kept).
  """
  mesh, model, schedule, tx = setup(config)
  changes = configuration.check_workdir_config(config, workdir, allow_model_change=force_workdir_config)
  state, step = restore_latest(config, workdir, model, tx, mesh, check_fits=bool(changes))
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
                    image_shape, jax.random.fold_in(root_keys(config)['sample'], step), mesh, labels)
  stem = os.path.join(workdir, SAMPLES_DIR, f'samples_{step:08d}_{s.num_samples}')
  save_samples(images, stem, columns)
  if labels is not None and jax.process_index() == 0:
    atomic_io.save_npy(stem + '_labels.npy', labels)
  logging.info('Wrote %s.npz and %s.png.', stem, stem)
  return stem


def evaluate(config: ml_collections.ConfigDict, workdir: str, force_workdir_config: bool = False) -> dict:
  """--mode=eval: see ddpm_jax/eval_workdir.py."""
  from ddpm_jax import eval_workdir  # pylint: disable=g-import-not-at-top  # It imports this module.
  return eval_workdir.evaluate(config, workdir, force_workdir_config)
