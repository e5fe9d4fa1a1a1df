"""--mode=eval: metrics of a workdir's latest checkpoint (EMA params), written to eval/metrics.json.

Bits/dim by the full variational bound (process ddpm) and through the probability-flow ODE (any
process) on config.eval.split; FID (and IS, KID) of
config.eval.num_samples samples in config.eval.feature_nets, the samples kept batch by batch
in eval/ so a killed evaluation continues where it stopped; for class-conditional networks,
FID and the offline classifier's accuracy on conditional samples for each guidance scale of
config.sampling.eval_guidance_scales, as a table (eval/guidance.md); and sample quality against cost
for each sampler of config.eval.sampler_sweep (eval/nfe.md, eval/nfe.png).
"""

import hashlib
import json
import math
import os
import time

from absl import logging
import jax
import ml_collections
import numpy as np

from ddpm_jax import atomic_io, checkpoints, configuration, generate, layout, processes, samplers, streaming, viz
from ddpm_jax.errors import ConfigError, MetricsError
from ddpm_jax.evaluation import features, likelihood, offline_classifier
from ddpm_jax.train_state import components, root_keys

METRICS_FILE = 'metrics.json'
GUIDANCE_TABLE = 'guidance.md'
SWEEP_TABLE = 'nfe.md'
SWEEP_PLOT = 'nfe.png'
COST_FILE = 'cost.json'


def sample_labels(config: ml_collections.ConfigDict, num_samples: int) -> np.ndarray | None:
  """Labels to sample a class-conditional network with: config.sampling.classes (every class if
  empty) in turn; None for an unconditional network."""
  if not config.model.num_classes:
    return None
  return np.resize(generate.requested_classes(config), num_samples)


def samples_dir(workdir: str, step: int, manifest: dict) -> str:
  """eval/samples_<step>_<hash of what makes the samples>: other settings never mix in."""
  digest = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:8]
  return os.path.join(workdir, layout.EVAL_DIR, f'samples_{step:08d}_{digest}')


def sample_quality(config: ml_collections.ConfigDict, workdir: str, state, step: int, model, process, mesh,
                   nets: list[features.FeatureNet], references: list[features.Reference],
                   guidance_scale: float) -> tuple[dict, np.ndarray | None, str]:
  """(metrics, labels, samples folder) of config.eval.num_samples samples at one guidance scale."""
  e = config.eval
  labels = sample_labels(config, e.num_samples)
  manifest = {'step': step, 'num_samples': e.num_samples, 'batch_size': e.sample_batch_size,
              'sampling': configuration.config_to_dict(config.sampling), 'seed': config.seed,
              'guidance_scale': guidance_scale}
  directory = samples_dir(workdir, step, manifest)
  sample_fn = generate.make_sampler(model, process, config, guidance_scale=guidance_scale)
  image_shape = (config.data.image_size, config.data.image_size, config.data.num_channels)
  key = jax.random.fold_in(root_keys(config)['eval'], step)
  bs = e.sample_batch_size
  nfe_per_batch, seconds = [], []

  def sample_batch(i: int) -> np.ndarray:
    batch_labels = None if labels is None else np.resize(labels[i * bs:(i + 1) * bs], bs)
    start = time.perf_counter()
    images = generate.generate(sample_fn, state.ema_params, state.ema_batch_stats, bs, bs, image_shape,
                               jax.random.fold_in(key, i), mesh, batch_labels,
                               log_every_seconds=config.progress_log_every_seconds, nfe_per_batch=nfe_per_batch)
    seconds.append(time.perf_counter() - start)
    return images

  logging.info('FID samples: %d in batches of %d (guidance %s) in %s.', e.num_samples, bs, guidance_scale, directory)
  features.ensure_samples(directory, manifest, e.num_samples, bs, sample_batch,
                          log_every_seconds=config.progress_log_every_seconds)
  result = features.sample_metrics(features.stored_batches(directory, e.num_samples, bs), e.num_samples, nets,
                                  references, config)
  return {**result, **sampling_cost(directory, nfe_per_batch, seconds, bs)}, labels, directory


def sampling_cost(directory: str, nfe_per_batch: list[int], seconds: list[float], batch_size: int) -> dict:
  """Network calls per image (nfe) and wall seconds per image of the batches sampled now, kept in
  directory/cost.json; batches sampled by an earlier (killed) evaluation keep the figures it wrote
  (the first batch's seconds include compiling, so they are left out when there are more)."""
  path = os.path.join(directory, COST_FILE)
  if not nfe_per_batch:
    if os.path.exists(path):
      with open(path) as f:
        return json.load(f)
    return {}
  timed = seconds[1:] or seconds
  cost = {'nfe': float(np.mean(nfe_per_batch)), 'seconds_per_image': float(np.mean(timed)) / batch_size}
  atomic_io.write_json(path, cost)
  return cost


def sampler_sweep(config: ml_collections.ConfigDict, workdir: str, state, step: int, model, process, mesh,
                  nets: list[features.FeatureNet], references: list[features.Reference]) -> list[dict]:
  """Sample quality of each entry of config.eval.sampler_sweep, with its network calls and time per
  image; written as eval/nfe.md and plotted (FID against NFE) as eval/nfe.png."""
  rows = []
  for name, steps in configuration.sweep_entries(config.eval.sampler_sweep):
    swept = samplers.sampler_class(name).with_steps(config, steps)
    metrics, _, _ = sample_quality(swept, workdir, state, step, model, process, mesh, nets, references,
                                   config.sampling.guidance_scale)
    label = name if steps is None else f'{name}:{steps}'
    rows.append({'sampler': label, **metrics})
    logging.info('Sampler %s: %s', label, {k: v for k, v in metrics.items() if isinstance(v, float)})
  table = sweep_table(rows)
  eval_dir = os.path.join(workdir, layout.EVAL_DIR)
  atomic_io.write_text(os.path.join(eval_dir, SWEEP_TABLE), table)
  fid_names = [k for k in rows[0] if k.startswith('fid')] if rows else []
  if fid_names and all('nfe' in r for r in rows):
    curves = {}  # One line per sampler through its step counts.
    for row in sorted(rows, key=lambda r: r['nfe']):
      nfes, fids = curves.setdefault(row['sampler'].split(':')[0], ([], []))
      nfes.append(row['nfe'])
      fids.append(row[fid_names[0]])
    viz.plot_curves(curves, 'network calls per image (NFE)', fid_names[0], os.path.join(eval_dir, SWEEP_PLOT),
                    log_x=True, title=f'{fid_names[0]} against sampling cost, step {step}')
  logging.info('Sample quality against cost:\n%s', table)
  return rows


def sweep_table(rows: list[dict]) -> str:
  """Markdown: one row per sampler, columns NFE, seconds per image and every float metric."""
  columns = ['nfe', 'seconds_per_image'] + sorted(
      {k for r in rows for k, v in r.items() if isinstance(v, float)} - {'nfe', 'seconds_per_image'})
  lines = ['| sampler | ' + ' | '.join(columns) + ' |', '|---' * (len(columns) + 1) + '|']
  for r in rows:
    lines.append(f'| {r["sampler"]} | ' + ' | '.join(f'{r[c]:.4g}' if c in r else '' for c in columns) + ' |')
  return '\n'.join(lines) + '\n'


def class_accuracy(config: ml_collections.ConfigDict, directory: str, labels: np.ndarray) -> dict:
  """The offline classifier's accuracy on conditional samples: does a 7 look like a 7?"""
  e = config.eval
  images = np.concatenate(list(features.stored_batches(directory, e.num_samples, e.sample_batch_size)))
  params, _ = features.classifier_params(config)
  table = offline_classifier.class_accuracy_table(params, images, labels, config.model.num_classes)
  logging.info('Classifier accuracy on conditional samples:\n%s', offline_classifier.format_class_accuracy(table))
  return {'class_accuracy': float(table.overall),
          'class_accuracy_per_class': [None if np.isnan(a) else float(a) for a in table.per_class]}


def guidance_table(rows: dict[float, dict]) -> str:
  """Markdown: one row per guidance scale w, one column per metric."""
  columns = sorted({k for r in rows.values() for k, v in r.items() if isinstance(v, float)})
  lines = ['| w | ' + ' | '.join(columns) + ' |', '|---' * (len(columns) + 1) + '|']
  for w, r in rows.items():
    lines.append(f'| {w:g} | ' + ' | '.join(f'{r[c]:.4f}' if c in r else '' for c in columns) + ' |')
  return '\n'.join(lines) + '\n'


def finite_metrics(value, name: str = 'metrics'):
  """value with every non-finite float (in nested dicts and lists too) replaced by None, each one
  logged: metrics.json stays standard JSON (no Infinity or NaN), and a diverged number (e.g. the
  ODE bits/dim of a barely trained VE network) is named, not silently written."""
  if isinstance(value, dict):
    return {k: finite_metrics(v, f'{name}.{k}') for k, v in value.items()}
  if isinstance(value, list):
    return [finite_metrics(v, f'{name}[{i}]') for i, v in enumerate(value)]
  if isinstance(value, float) and not math.isfinite(value):
    logging.warning('%s is %s (the computation diverged); metrics.json records null.', name, value)
    return None
  return value


def evaluate(config: ml_collections.ConfigDict, workdir: str, force_workdir_config: bool = False) -> dict:
  """Every configured metric of the latest checkpoint; writes eval/metrics.json and TensorBoard scalars.

  force_workdir_config: evaluate with a model or diffusion config other than the workdir's when
  its checkpoints fit. A metric that fails as configured (ConfigError: an ODE solve beyond
  config.sampling.ode_max_steps) ends the evaluation with its error after the metrics computed
  before it are written.
  """
  e = config.eval
  # The variational bound exists for a discrete chain only; continuous processes have the ODE's.
  chain = processes.process_class(config.diffusion.process).discrete_chain
  bound_examples = e.bpd_num_examples if chain else 0
  if not bound_examples and not e.ode_bpd_num_examples and not e.num_samples:
    raise MetricsError('config.eval.bpd_num_examples (process ddpm), ode_bpd_num_examples and num_samples are '
                       'all 0: nothing to evaluate. Set one of them above 0 (bits/dim on that many examples, '
                       'FID on that many samples).')
  mesh, model, process, tx = components(config)
  configuration.check_workdir_config(config, workdir, allow_model_change=force_workdir_config)
  state, step = checkpoints.restore_latest(config, workdir, model, tx, mesh)
  if e.num_samples:
    features.check_feature_nets(config)  # Missing Inception weights: before any long work.
  results = {'step': step}
  try:
    compute_metrics(config, workdir, state, step, model, process, mesh, bound_examples, results)
  except ConfigError as error:
    if len(results) == 1:
      raise
    write_metrics(workdir, step, results)  # Keep what was computed before the failing metric.
    raise type(error)(f'{error} The metrics computed before it are written to '
                      f'{os.path.join(workdir, layout.EVAL_DIR, METRICS_FILE)}.') from None
  return write_metrics(workdir, step, results)


def compute_metrics(config: ml_collections.ConfigDict, workdir: str, state, step: int, model, process, mesh,
                    bound_examples: int, results: dict) -> None:
  """Adds each configured metric to `results` as it is computed: the ODE bits/dim, the bound's
  (bound_examples of them), sample quality and the sampler sweep."""
  e = config.eval
  if e.ode_bpd_num_examples:
    images = streaming.first_images(config.data, e.split, e.ode_bpd_num_examples)
    logging.info('Bits/dim of %d %s examples through the probability-flow ODE (%s, %s trace estimator).',
                 len(images), e.split, config.sampling.ode_solver, e.hutchinson)
    results.update(likelihood.ode_bits_per_dim(
        likelihood.make_ode_bpd_fn(model, config), state.ema_params, state.ema_batch_stats, images,
        e.bpd_batch_size, jax.random.fold_in(jax.random.fold_in(root_keys(config)['eval'], step), 1), mesh,
        log_every_seconds=config.progress_log_every_seconds))
    logging.info('ODE bits/dim at step %d: %.4f (%.0f network calls per batch).', step, results['ode_bpd'],
                 results['ode_bpd_nfe'])
  if bound_examples:
    images = streaming.first_images(config.data, e.split, bound_examples)
    logging.info('Bits/dim of %d %s examples by the full bound (%d terms each).', len(images), e.split,
                 process.schedule.num_timesteps)
    results.update(likelihood.bits_per_dim(likelihood.make_bound_fn(model, process.schedule, config), state.ema_params, state.ema_batch_stats,
                                images, e.bpd_batch_size, jax.random.fold_in(root_keys(config)['eval'], step),
                                mesh, log_every_seconds=config.progress_log_every_seconds))
    logging.info('Bits/dim at step %d: %.4f (prior %.2e, decoder %.4f).', step, results['bpd'],
                 results['bpd_prior'], results['bpd_decoder'])
  if e.num_samples:
    nets = features.load_feature_nets(config, mesh)
    references = [features.reference(net, config) for net in nets]
    if config.model.num_classes:
      rows = {}
      for w in config.sampling.eval_guidance_scales:
        row, labels, directory = sample_quality(config, workdir, state, step, model, process, mesh, nets,
                                                references, float(w))
        rows[float(w)] = {**row, **class_accuracy(config, directory, labels)}
      results['guidance'] = {f'{w:g}': row for w, row in rows.items()}
      table = guidance_table(rows)
      atomic_io.write_text(os.path.join(workdir, layout.EVAL_DIR, GUIDANCE_TABLE), table)
      logging.info('Conditional samples by guidance scale:\n%s', table)
    else:
      row, _, _ = sample_quality(config, workdir, state, step, model, process, mesh, nets, references,
                                 config.sampling.guidance_scale)
      results.update(row)
    logging.info('Sample quality at step %d: %s', step,
                 {k: v for k, v in results.items() if isinstance(v, float) and not k.startswith('bpd')})
    if e.sampler_sweep:
      results['sampler_sweep'] = sampler_sweep(config, workdir, state, step, model, process, mesh, nets,
                                               references)


def write_metrics(workdir: str, step: int, results: dict) -> dict:
  """Writes results as eval/metrics.json (non-finite numbers as null) and their numbers as TensorBoard
  scalars at `step` in eval/ (its own TensorBoard run, where an eval of the same step again replaces
  the earlier points); returns what was written."""
  from clu import metric_writers  # pylint: disable=g-import-not-at-top

  path = os.path.join(workdir, layout.EVAL_DIR, METRICS_FILE)
  results = finite_metrics(results)
  atomic_io.write_json(path, results)
  events_dir = os.path.join(workdir, layout.EVAL_DIR)  # A TensorBoard run of its own, beside training's.
  if jax.process_index() == 0 and layout.has_event_files(events_dir):  # An earlier eval's points at this step.
    layout.discard_later_tensorboard_points(events_dir, step)
  writer = metric_writers.create_default_writer(events_dir, just_logging=jax.process_index() > 0)
  scalars = {f'eval/{k}': v for k, v in results.items() if isinstance(v, float)}
  for w, row in results.get('guidance', {}).items():
    scalars.update({f'eval/w{w}/{k}': v for k, v in row.items() if isinstance(v, float)})
  for row in results.get('sampler_sweep', []):
    scalars.update({f'eval/{row["sampler"]}/{k}': v for k, v in row.items() if isinstance(v, float)})
  writer.write_scalars(step, scalars)
  writer.flush()
  logging.info('Wrote %s.', path)
  return results
