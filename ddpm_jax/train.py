"""The training loop: trains in a workdir, resuming from its newest readable checkpoint.

Each compiled call runs config.training.n_jitted_steps train steps (ddpm_jax/train_step.py) on
batches that are a pure function of (config.seed, step); between calls the loop logs, calibrates
the EMA network's batch statistics, samples previews, computes FID and saves checkpoints in the
background. A resumed run therefore repeats the uninterrupted one exactly.
"""

import os
import time

from absl import logging
import jax
import ml_collections
import numpy as np

from ddpm_jax import atomic_io, checkpoints, configuration, data, generate, parallel, pretrain, streaming, train_step, viz
from ddpm_jax import layout, workdir_lock
from ddpm_jax.errors import ConfigError, Preempted, TrainingDiverged
from ddpm_jax.evaluation import features
from ddpm_jax.train_state import TrainState, abstract_state, components, initial_state, root_keys


def next_call_steps(done: int, total_steps: int, n_jitted_steps: int) -> range:
  """The steps of the next compiled call: up to the next multiple of n_jitted_steps, never past
  total_steps. A run stopped between multiples (SIGTERM saves any step) realigns, so the log,
  checkpoint and sample intervals, multiples of n_jitted_steps (validate_config), end calls."""
  return range(done, min(done + n_jitted_steps - done % n_jitted_steps, total_steps))


def unstack_metrics(stacked: dict) -> list[dict]:
  """Host metrics of K steps in one call {name: (K,)} -> K per-step dicts."""
  return [{name: values[i] for name, values in stacked.items()} for i in range(len(stacked['loss']))]


def num_train_steps(config: ml_collections.ConfigDict, num_examples: int) -> int:
  if config.training.num_train_steps > 0:
    return config.training.num_train_steps
  per_epoch = data.steps_per_epoch(num_examples, config.training.batch_size)
  return max(1, int(round(config.training.num_epochs * per_epoch)))


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
    scales = ('lower the noise levels of config.diffusion (sigma_max, say) or the loss weighting, or use a network '
              'that stays finite at them')
    if bad[0] == 1:  # The initial network's loss and gradient: no update has been made, so not the lr.
      raise TrainingDiverged(
          f'The loss is {m["loss"]} (gradient norm {m["grad_norm"]}) at step 1, before any update, so the '
          f'learning rate is not the cause; {kept}. The config\'s scales overflow float32 on the initial '
          f'network: {scales}.')
    first = (f' (at step 1 it was {metrics[0]["loss"]:.4g})' if first_step == 1 else '')
    raise TrainingDiverged(
        f'The loss is {m["loss"]} (gradient norm {m["grad_norm"]}) at step {bad[0]}{first}; {kept}. '
        f'Lower config.optim.lr or set config.optim.grad_clip (or skip such steps with '
        f'config.training.skip_nonfinite_steps=True); if the loss was huge from step 1 on, {scales}.')
  return len(bad)


def summarize(interval: list[dict]) -> dict:
  """Each metric's mean over the finite steps of a logging interval ({} when none is finite)."""
  finite = [m for m in interval if is_finite_step(m)]
  return {k: float(np.mean([m[k] for m in finite])) for k in finite[0]} if finite else {}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       force_workdir_config: bool = False) -> TrainState:
  """Trains in workdir, resuming from its newest readable checkpoint; returns the final state.

  Holds the workdir's lock throughout (ddpm_jax/workdir_lock.py; host 0 of several): a second
  trainer of the workdir is refused with errors.WorkdirError before it writes anything.
  force_workdir_config: accept a workdir whose config.json defines another model or diffusion
  when its checkpoints fit the new model; config.json is then rewritten.
  SIGTERM or SIGINT: saves the current step and raises errors.Preempted.
  """
  with workdir_lock.exclusive(workdir, enabled=jax.process_index() == 0):
    return _train_and_evaluate_locked(config, workdir, force_workdir_config)


def _train_and_evaluate_locked(config: ml_collections.ConfigDict, workdir: str,
                               force_workdir_config: bool) -> TrainState:
  """train_and_evaluate with the workdir's lock held."""
  from clu import metric_writers, periodic_actions  # pylint: disable=g-import-not-at-top

  session_start = time.time()
  t = config.training
  mesh, model, process, tx = components(config)
  # Every check that can fail runs before the first byte is written to the workdir, so a failed
  # start leaves it as it was: the config against the workdir's, the data, the checkpoints,
  # init_from and the FID feature networks.
  changes = configuration.check_workdir_config(config, workdir, allow_model_change=force_workdir_config)
  abstract = abstract_state(model, config, tx, mesh)
  checkpoints.check_fits(checkpoints.checkpoint_dir(workdir), abstract, config)
  host = (jax.process_index(), jax.process_count())  # Each host reads its share of every batch.
  # The batch of step s, from the pipeline config.data.pipeline names (memory or streaming).
  pipeline = streaming.open_batches(config.data, config.data.train_split, t.batch_size, config.seed, *host)
  data.batch_indices(pipeline.num_examples, t.batch_size, 0, config.seed)  # A batch larger than the data: DataError.
  data.check_labels(pipeline, config.model.num_classes or data.FIXED_NUM_CLASSES.get(config.data.dataset, 0),
                    f'split {config.data.train_split} of {config.data.dataset}')
  total_steps = num_train_steps(config, pipeline.num_examples)
  existing = os.path.isdir(checkpoints.checkpoint_dir(workdir))  # Else the manager would make the folder now.
  manager = checkpoints.make_manager(workdir, t.keep_checkpoints) if existing else None
  state, start_step, unreadable = checkpoints.restore_newest(manager, abstract) if existing else (None, None, [])
  run_info = layout.read_run_info(workdir) if start_step else {}  # A damaged one: WorkdirFileError.
  loaded = None
  if not start_step and t.init_from:  # Pre-training: a new run starts from another run's params.
    loaded = pretrain.load_init_params(config, t.init_from, abstract)
  fid_nets, fid_references = [], []
  if t.fid_every_steps:  # Feature networks and reference statistics once, before the loop.
    fid_nets = features.load_feature_nets(config, mesh)
    fid_references = [features.reference(net, config) for net in fid_nets]

  keys = root_keys(config)
  if manager is None:
    manager = checkpoints.make_manager(workdir, t.keep_checkpoints)
  if unreadable:  # Newer than the one restored: renamed aside, so those steps can be saved again.
    checkpoints.set_aside(manager, unreadable)
  if changes:
    logging.warning('--force_workdir_config: %s now holds a run of a different model (%s); rewriting %s.',
                    workdir, '; '.join(changes), layout.CONFIG_FILE)
  if jax.process_index() == 0:
    configuration.save_config(config, workdir)
  if start_step:
    logging.info('Resumed from the checkpoint of step %d in %s.', start_step, workdir)
  else:
    state, start_step = initial_state(model, config, tx, mesh), 0
    if loaded is not None:
      state = pretrain.apply_init(state, loaded, t.init_ema)
      logging.info('Initialised the params from %s.', t.init_from)
  num_params = sum(x.size for x in jax.tree.leaves(state.params))
  earlier_wall_time = run_info.get('wall_time_s', 0.0)
  nonfinite_steps = run_info.get('nonfinite_steps', 0)
  logging.info('%s: %d params on %d device(s); %d examples; steps %d -> %d.', config.model.name,
               num_params, mesh.size, pipeline.num_examples, start_step, total_steps)
  if start_step >= total_steps:
    logging.info('Training is already complete at step %d; raise config.training.num_train_steps '
                 '(or num_epochs) to train on, or use --mode=sample.', start_step)

  # Points a killed run logged after its last checkpoint; from step 0 (with its hparams) when it died
  # before its first checkpoint.
  if jax.process_index() == 0 and layout.has_event_files(workdir):
    layout.discard_later_tensorboard_points(workdir, start_step + 1 if start_step else 0)
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  if start_step == 0:
    writer.write_hparams({'num_params': num_params, 'num_devices': mesh.size,
                          **{k: v for k, v in configuration.flatten_dict(configuration.config_to_dict(config)).items()
                             if isinstance(v, (int, float, str, bool))}})
  train_steps = jax.jit(train_step.unrolled_steps(train_step.make_train_step(model, process, tx, config, keys['train'])),
                        out_shardings=parallel.replicated(mesh), donate_argnums=0)
  calibrate = jax.jit(train_step.make_bn_calibration(model, process, config, keys['calibrate']),
                      out_shardings=parallel.replicated(mesh))
  sample_fn = generate.make_sampler(model, process, config)
  report_progress = periodic_actions.ReportProgress(num_train_steps=total_steps, writer=writer)
  image_shape = (config.data.image_size, config.data.image_size, config.data.num_channels)
  skip_nonfinite = t.get('skip_nonfinite_steps', False)
  saver = checkpoints.CheckpointWriter(manager)
  preview_labels, preview_columns = generate.grid_labels(config, t.num_preview_samples)

  pending = []  # Metrics still on the device, not yet checked.
  interval = []  # Checked metrics since the last log.
  done = start_step
  agreement = checkpoints.StopAgreement(t.stop_check_every_steps)
  with checkpoints.stop_signals() as stop, pipeline:  # Leaving stops the streaming pipeline's workers.
    read_ahead = pipeline.batches(done, total_steps)
    while done < total_steps:
      steps = next_call_steps(done, total_steps, t.n_jitted_steps)
      batches = [next(read_ahead) for _ in steps]
      state, steps_metrics = train_steps(state, parallel.shard_batches(np.stack([b.images for b in batches]), mesh),
                                         parallel.shard_batches(np.stack([b.labels for b in batches]), mesh))
      pending.append(steps_metrics)
      done = steps[-1] + 1
      report_progress(done)
      last = done == total_steps
      signum = agreement.signum(stop, done, last)  # SIGTERM / SIGINT on any host: save this step, then stop.
      stopping = signum is not None and not last
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
            pipeline.num_examples, t.batch_size)})
        logging.info('step %d/%d: loss %.5f%s', done, total_steps, summary.get('loss', float('nan')),
                     f' ({nonfinite_steps} non-finite steps skipped so far)' if nonfinite_steps else '')
      if sample_now or checkpoint_now or fid_now:
        calibration = [pipeline.batch(done + i).images for i in range(t.bn_calibration_batches)]
        state = calibrate(state, parallel.shard_batches(
            np.stack(calibration) if calibration else np.zeros((0, t.batch_size // host[1]) + image_shape, np.uint8),
            mesh))
      unfinished = None  # A preview whose sampler stopped at its step bound: raised once this step is saved.
      if sample_now:
        try:
          images = generate.generate(sample_fn, state.ema_params, state.ema_batch_stats, t.num_preview_samples,
                            t.num_preview_samples, image_shape, keys['sample'], mesh, preview_labels,
                            log_every_seconds=config.progress_log_every_seconds)
        except ConfigError as error:
          unfinished, checkpoint_now = error, True
        else:
          generate.save_samples(images, os.path.join(workdir, layout.SAMPLES_DIR, f'preview_{done:08d}'), preview_columns)
          writer.write_images(done, {'samples': viz.image_grid(images, preview_columns)[None]})
      if fid_now and unfinished is None:
        fid_labels = generate.grid_labels(config, t.fid_num_samples)[0]
        images = generate.generate(sample_fn, state.ema_params, state.ema_batch_stats, t.fid_num_samples,
                          config.sampling.batch_size, image_shape, jax.random.fold_in(keys['sample'], done),
                          mesh, fid_labels, log_every_seconds=config.progress_log_every_seconds)
        fid = features.sample_metrics(features.batches_of(images, config.eval.feature_batch_size), len(images),
                                     fid_nets, fid_references, config)
        writer.write_scalars(done, {k: v for k, v in fid.items() if k.startswith(('fid', 'kid', 'is'))})
        logging.info('step %d: %s', done, ', '.join(f'{k} {v:.4f}' for k, v in fid.items() if k.startswith('fid')))
      if checkpoint_now:
        saved_path = saver.save(done, state)
        if jax.process_index() == 0:
          atomic_io.write_json(os.path.join(workdir, layout.RUN_INFO_FILE), {
              'num_params': num_params, 'num_devices': mesh.size, 'step': done,
              'wall_time_s': earlier_wall_time + time.time() - session_start, 'nonfinite_steps': nonfinite_steps})
      if stopping:
        saver.wait()
        writer.flush()
        raise Preempted(signum, done, saved_path)
      if unfinished is not None:
        saver.wait()
        writer.flush()
        raise ConfigError(f'{unfinished} Training is saved at step {done} ({saved_path}): rerun with that change to resume.')
  saver.wait()
  writer.flush()
  if nonfinite_steps:
    logging.warning('%d of the %d steps had a non-finite loss or gradient and were skipped.',
                    nonfinite_steps, total_steps)
  return state
