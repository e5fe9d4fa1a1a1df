"""Likelihood of data under a trained model, batch by batch: bits/dim by the full variational bound of
the discrete chain (every one of the T terms, the decoder and the prior), and the exact bits/dim
through the probability-flow ODE (ddpm_jax/ode.py) of any process.
"""

from typing import Callable

from absl import logging
import jax
import ml_collections
import numpy as np

from ddpm_jax import data, denoiser, diffusion, generate, ode, parallel, processes, progress, samplers
from ddpm_jax.errors import MetricsError


def make_bound_fn(model, schedule: diffusion.Schedule, config: ml_collections.ConfigDict) -> Callable:
  """bound(params, batch_stats, uint8 images, key) -> diffusion.BoundTerms, compiled; it reports every
  tenth of its terms: inside bits_per_dim they move its bar on within the batch, elsewhere each
  report is a log line."""
  d = config.diffusion
  every = max(1, schedule.num_timesteps // 10)

  def report(terms_done):
    if not progress.report_within(int(terms_done) / schedule.num_timesteps):
      logging.info('  bound term %d/%d', int(terms_done), schedule.num_timesteps)

  def bound(params, batch_stats, images, key):
    return diffusion.bound_bpd(schedule, generate.model_fn_for(model, params, batch_stats), data.to_model_range(images),
                               key, d.model_mean_type, d.model_var_type, report, every)

  return jax.jit(bound)


def bits_per_dim(bound_fn: Callable, params, batch_stats, images: np.ndarray, batch_size: int,
                 key: jax.Array, mesh, *, log_every_seconds: float = progress.LOG_EVERY_SECONDS) -> dict:
  """The variational bound in bits/dim over `images`, batch by batch (batch i: fold_in(key, i)).

  The last batch is padded with copies of its first image, which are left out of the means.
  Progress in images, with rate and ETA (ddpm_jax/progress.py; a log line at most every
  log_every_seconds without a terminal).
  """
  totals, priors, terms = [], [], []
  num_batches = -(-len(images) // batch_size)
  with progress.Progress(len(images), 'Bits/dim', log_every_seconds=log_every_seconds) as bar:
    for i in range(num_batches):
      batch = images[i * batch_size:(i + 1) * batch_size]
      real = len(batch)
      batch = np.concatenate([batch, np.repeat(batch[:1], batch_size - real, axis=0)])
      with progress.item(bar, i * batch_size, real):  # The bound's term reports move it on.
        out = jax.device_get(bound_fn(params, batch_stats, parallel.shard_batch(batch, mesh),
                                      jax.random.fold_in(key, i)))
      totals.append(out.total[:real])
      priors.append(out.prior[:real])
      terms.append(out.terms[:, :real])
      bar.update(i * batch_size + real)
  terms = np.concatenate(terms, axis=1)
  return {'bpd': float(np.mean(np.concatenate(totals))), 'bpd_prior': float(np.mean(np.concatenate(priors))),
          'bpd_decoder': float(np.mean(terms[0])), 'bpd_diffusion': float(np.mean(terms[1:].sum(0))),
          'bpd_num_examples': len(images), 'bpd_terms': [float(v) for v in terms.mean(axis=1)]}


def make_ode_bpd_fn(model, config: ml_collections.ConfigDict) -> Callable:
  """ode_bpd(params, batch_stats, uint8 images, key) -> (bits/dim per image, NFE), compiled: uniform
  dequantisation, then the probability-flow ODE of config.diffusion's process (one marginal for the
  score and the drift, a ddpm chain's too) from the data to the prior with config.eval.hutchinson's
  trace estimator and config.sampling's ode_* solver and tolerances. A batch whose solve stops at
  config.sampling.ode_max_steps raises MetricsError naming it."""
  d, s, e = config.diffusion, config.sampling, config.eval
  process = processes.from_config(d)

  def ode_bpd(params, batch_stats, images, key):
    dequantize_key, probe_key = jax.random.split(key)
    bound = denoiser.Model(process, generate.model_fn_for(model, params, batch_stats), d.model_mean_type,
                           d.model_var_type)
    bpd, _, nfe = ode.ode_likelihood(process, bound.score, ode.dequantize(dequantize_key, images), probe_key,
                                     hutchinson=e.hutchinson, rtol=s.ode_rtol, atol=s.ode_atol, solver=s.ode_solver,
                                     max_steps=s.ode_max_steps)
    return bpd, nfe

  compiled = jax.jit(ode_bpd)

  def ode_bpd_to_the_end(params, batch_stats, images, key):
    bpd, nfe = compiled(params, batch_stats, images, key)
    if int(nfe) < 0:  # The solve stopped at its step bound (ode.py returns its calls negated).
      raise samplers.ode.steps_exhausted(config, 'The probability-flow ODE of the ODE bits/dim', MetricsError)
    return bpd, nfe

  return ode_bpd_to_the_end


def ode_bits_per_dim(ode_bpd_fn: Callable, params, batch_stats, images: np.ndarray, batch_size: int,
                     key: jax.Array, mesh, *, log_every_seconds: float = progress.LOG_EVERY_SECONDS) -> dict:
  """The probability-flow ODE's bits/dim over `images`, batch by batch (batch i: fold_in(key, i)), with
  its mean number of network calls per batch; the last batch is padded as in bits_per_dim."""
  values, nfes = [], []
  num_batches = -(-len(images) // batch_size)
  with progress.Progress(len(images), 'ODE bits/dim', log_every_seconds=log_every_seconds) as bar:
    for i in range(num_batches):
      batch = images[i * batch_size:(i + 1) * batch_size]
      real = len(batch)
      batch = np.concatenate([batch, np.repeat(batch[:1], batch_size - real, axis=0)])
      bpd, nfe = jax.device_get(ode_bpd_fn(params, batch_stats, parallel.shard_batch(batch, mesh),
                                           jax.random.fold_in(key, i)))
      values.append(np.asarray(bpd)[:real])
      nfes.append(int(nfe))
      bar.update(i * batch_size + real)
  return {'ode_bpd': float(np.mean(np.concatenate(values))), 'ode_bpd_num_examples': len(images),
          'ode_bpd_nfe': float(np.mean(nfes))}
