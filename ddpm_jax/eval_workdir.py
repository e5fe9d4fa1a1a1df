"""--mode=eval: metrics of a workdir's latest checkpoint (EMA params), written to eval/metrics.json.

Bits/dim by the full variational bound on config.eval.split; FID (and IS, KID) of
config.eval.num_samples samples in config.eval.feature_nets, the samples kept batch by batch
in eval/ so a killed evaluation continues where it stopped; for class-conditional networks,
FID and the offline classifier's accuracy on conditional samples for each guidance scale of
config.sampling.eval_guidance_scales, as a table (eval/guidance.md).
"""

import hashlib
import json
import os
import time
from typing import Callable

from absl import logging
import jax
import ml_collections
import numpy as np

from ddpm_jax import atomic_io, classifier, configuration, data, diffusion, metrics, train

METRICS_FILE = 'metrics.json'
GUIDANCE_TABLE = 'guidance.md'


def make_bound_fn(model, schedule: diffusion.Schedule, config: ml_collections.ConfigDict) -> Callable:
  """bound(params, batch_stats, uint8 images, key) -> diffusion.BoundTerms, compiled."""
  d = config.diffusion
  every = max(1, schedule.num_timesteps // 10)

  def report(terms_done):
    logging.info('  bound term %d/%d', int(terms_done), schedule.num_timesteps)

  def bound(params, batch_stats, images, key):
    return diffusion.bound_bpd(schedule, train.model_fn_for(model, params, batch_stats), data.to_model_range(images),
                               key, d.model_mean_type, d.model_var_type, report, every)

  return jax.jit(bound)


def bits_per_dim(bound_fn: Callable, params, batch_stats, images: np.ndarray, batch_size: int,
                 key: jax.Array, mesh) -> dict:
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
    out = jax.device_get(bound_fn(params, batch_stats, train.shard_batch(batch, mesh), jax.random.fold_in(key, i)))
    totals.append(out.total[:real])
    priors.append(out.prior[:real])
    terms.append(out.terms[:, :real])
    logging.info('Bits/dim batch %d/%d: %.4f (%.1fs).', i + 1, num_batches, float(np.mean(out.total[:real])),
                 time.time() - start)
  terms = np.concatenate(terms, axis=1)
  return {'bpd': float(np.mean(np.concatenate(totals))), 'bpd_prior': float(np.mean(np.concatenate(priors))),
          'bpd_decoder': float(np.mean(terms[0])), 'bpd_diffusion': float(np.mean(terms[1:].sum(0))),
          'bpd_num_examples': len(images), 'bpd_terms': [float(v) for v in terms.mean(axis=1)]}


def sample_labels(config: ml_collections.ConfigDict, num_samples: int) -> np.ndarray | None:
  """Labels to sample a class-conditional network with: config.sampling.classes (every class if
  empty) in turn; None for an unconditional network."""
  if not config.model.num_classes:
    return None
  return np.resize(train.requested_classes(config), num_samples)


def samples_dir(workdir: str, step: int, manifest: dict) -> str:
  """eval/samples_<step>_<hash of what makes the samples>: other settings never mix in."""
  digest = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:8]
  return os.path.join(workdir, train.EVAL_DIR, f'samples_{step:08d}_{digest}')


def sample_quality(config: ml_collections.ConfigDict, workdir: str, state, step: int, model, schedule, mesh,
                   nets: list[metrics.FeatureNet], references: list[metrics.Reference],
                   guidance_scale: float) -> tuple[dict, np.ndarray | None, str]:
  """(metrics, labels, samples folder) of config.eval.num_samples samples at one guidance scale."""
  e = config.eval
  labels = sample_labels(config, e.num_samples)
  manifest = {'step': step, 'num_samples': e.num_samples, 'batch_size': e.sample_batch_size,
              'sampling': configuration.config_to_dict(config.sampling), 'seed': config.seed,
              'guidance_scale': guidance_scale}
  directory = samples_dir(workdir, step, manifest)
  sample_fn = train.make_sampler(model, schedule, config, guidance_scale=guidance_scale)
  image_shape = (config.data.image_size, config.data.image_size, config.data.num_channels)
  key = jax.random.fold_in(train.root_keys(config)['eval'], step)
  bs = e.sample_batch_size

  def sample_batch(i: int) -> np.ndarray:
    batch_labels = None if labels is None else np.resize(labels[i * bs:(i + 1) * bs], bs)
    return train.generate(sample_fn, state.ema_params, state.ema_batch_stats, bs, bs, image_shape,
                          jax.random.fold_in(key, i), mesh, batch_labels)

  logging.info('FID samples: %d in batches of %d (guidance %s) in %s.', e.num_samples, bs, guidance_scale, directory)
  metrics.ensure_samples(directory, manifest, e.num_samples, bs, sample_batch)
  result = metrics.sample_metrics(metrics.stored_batches(directory, e.num_samples, bs), e.num_samples, nets,
                                  references, config)
  return result, labels, directory


def class_accuracy(config: ml_collections.ConfigDict, directory: str, labels: np.ndarray) -> dict:
  """The offline classifier's accuracy on conditional samples: does a 7 look like a 7?"""
  e = config.eval
  images = np.concatenate(list(metrics.stored_batches(directory, e.num_samples, e.sample_batch_size)))
  params, _ = metrics.classifier_params(config)
  table = classifier.class_accuracy_table(params, images, labels, config.model.num_classes)
  logging.info('Classifier accuracy on conditional samples:\n%s', classifier.format_class_accuracy(table))
  return {'class_accuracy': float(table.overall),
          'class_accuracy_per_class': [None if np.isnan(a) else float(a) for a in table.per_class]}


def guidance_table(rows: dict[float, dict]) -> str:
  """Markdown: one row per guidance scale w, one column per metric."""
  columns = sorted({k for r in rows.values() for k, v in r.items() if isinstance(v, float)})
  lines = ['| w | ' + ' | '.join(columns) + ' |', '|---' * (len(columns) + 1) + '|']
  for w, r in rows.items():
    lines.append(f'| {w:g} | ' + ' | '.join(f'{r[c]:.4f}' if c in r else '' for c in columns) + ' |')
  return '\n'.join(lines) + '\n'


def evaluate(config: ml_collections.ConfigDict, workdir: str, force_workdir_config: bool = False) -> dict:
  """Every configured metric of the latest checkpoint; writes eval/metrics.json and TensorBoard scalars.

  force_workdir_config: evaluate with a model or diffusion config other than the workdir's when
  its checkpoints fit.
  """
  from clu import metric_writers  # pylint: disable=g-import-not-at-top

  mesh, model, schedule, tx = train.setup(config)
  e = config.eval
  configuration.check_batches_divide(config, mesh.size, evaluating=True)
  changes = configuration.check_workdir_config(config, workdir, allow_model_change=force_workdir_config)
  state, step = train.restore_latest(config, workdir, model, tx, mesh, check_fits=bool(changes))
  if e.num_samples:
    metrics.check_feature_nets(config)  # Missing Inception weights: before any long work.
  results = {'step': step}
  if e.bpd_num_examples:
    images = data.load_dataset(config.data, e.split).images[:e.bpd_num_examples]
    logging.info('Bits/dim of %d %s examples by the full bound (%d terms each).', len(images), e.split,
                 schedule.num_timesteps)
    results.update(bits_per_dim(make_bound_fn(model, schedule, config), state.ema_params, state.ema_batch_stats,
                                images, e.bpd_batch_size, jax.random.fold_in(train.root_keys(config)['eval'], step),
                                mesh))
    logging.info('Bits/dim at step %d: %.4f (prior %.2e, decoder %.4f).', step, results['bpd'],
                 results['bpd_prior'], results['bpd_decoder'])
  if e.num_samples:
    nets = metrics.load_feature_nets(config, mesh)
    references = [metrics.reference(net, config) for net in nets]
    if config.model.num_classes:
      rows = {}
      for w in config.sampling.eval_guidance_scales:
        row, labels, directory = sample_quality(config, workdir, state, step, model, schedule, mesh, nets,
                                                references, float(w))
        rows[float(w)] = {**row, **class_accuracy(config, directory, labels)}
      results['guidance'] = {f'{w:g}': row for w, row in rows.items()}
      table = guidance_table(rows)
      atomic_io.write_text(os.path.join(workdir, train.EVAL_DIR, GUIDANCE_TABLE), table)
      logging.info('Conditional samples by guidance scale:\n%s', table)
    else:
      row, _, _ = sample_quality(config, workdir, state, step, model, schedule, mesh, nets, references,
                                 config.sampling.guidance_scale)
      results.update(row)
    logging.info('Sample quality at step %d: %s', step,
                 {k: v for k, v in results.items() if isinstance(v, float) and not k.startswith('bpd')})
  path = os.path.join(workdir, train.EVAL_DIR, METRICS_FILE)
  atomic_io.write_json(path, results)
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  scalars = {f'eval/{k}': v for k, v in results.items() if isinstance(v, float)}
  for w, row in results.get('guidance', {}).items():
    scalars.update({f'eval/w{w}/{k}': v for k, v in row.items() if isinstance(v, float)})
  writer.write_scalars(step, scalars)
  writer.flush()
  logging.info('Wrote %s.', path)
  return results
