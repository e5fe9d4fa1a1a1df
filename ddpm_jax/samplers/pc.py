"""Predictor-corrector samplers of score SDEs (Song et al., ICLR 2021), one compiled loop.

At each of n times t_i from t_max down to t_min (Process.pc_times) a corrector (Langevin MCMC at the
marginal p_{t_i}) refines x, then a predictor takes one step of the reverse-time SDE towards t_{i+1}:
  predictors  euler_maruyama (dt = -t_max / n), reverse_diffusion (the reverse of the process's
              discretisation), ancestral (DDPM's / SMLD's ancestral step, VP and VE), none;
  correctors  none, langevin (step size from the target signal-to-noise ratio `snr` of the batch's
              score and noise norms), annealed_langevin (NCSN's: step from snr and the marginal std).
Everything works from score_fn(x, t) and the process's methods, so the loop knows no network and no
process by name. The noise of step i is drawn from fold_in(key, i): a sample depends only on (x_T, key).
"""

import math
from typing import Optional, Sequence, Union

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ddpm_jax.diffusion import expand
from ddpm_jax.errors import ConfigError, in_range
from ddpm_jax.processes.base import Process, ScoreFn
from ddpm_jax.samplers.registry import Sampler, register

PREDICTORS = ('euler_maruyama', 'reverse_diffusion', 'ancestral', 'none')
CORRECTORS = ('none', 'langevin', 'annealed_langevin')
# The loop counts its steps, and the network calls per image it reports, in int32.
INT32_MAX = int(np.iinfo(np.int32).max)


def check_names(process: Process, predictor: str, corrector: str, probability_flow: bool = False) -> None:
  """Raises ValueError for an unknown predictor or corrector, or one the process does not support."""
  if predictor not in PREDICTORS:
    raise ValueError(f'Unknown predictor {predictor!r}; valid: {", ".join(PREDICTORS)}.')
  if corrector not in CORRECTORS:
    raise ValueError(f'Unknown corrector {corrector!r}; valid: {", ".join(CORRECTORS)}.')
  if predictor == 'none' and corrector == 'none':
    raise ValueError('The predictor and the corrector are both none: nothing would sample.')
  if predictor == 'ancestral' and not process.has_ancestral_step():
    raise ValueError(f'The ancestral predictor exists for the VP and VE processes only; for {process.name} use '
                     'reverse_diffusion or euler_maruyama.')
  if probability_flow and predictor in ('ancestral', 'none'):
    raise ValueError(f'The {predictor} predictor has no probability-flow form; use reverse_diffusion '
                     'or euler_maruyama.')


def predictor_step(process: Process, score_fn: ScoreFn, x: jax.Array, t: jax.Array, noise: jax.Array,
                   predictor: str, num_steps: int, probability_flow: bool = False):
  """One predictor step from time t (B,) with standard normal `noise`; returns (x, x without noise).

  euler_maruyama: x + reverse_drift dt + g sqrt(-dt) noise, dt = -t_max / n.
  reverse_diffusion: with (f, G) = process.discretize(x, t, n), x - (f - G^2 score) + G noise (score
  halved and no noise for the probability flow, as score_sde; that flow step is first order in
  beta_i only: prefer euler_maruyama or the ODE sampler for the flow).
  ancestral: the process's ancestral chain step (VP: DDPM's, VE: SMLD's).
  """
  ndim = x.ndim
  if predictor == 'none':
    return x, x
  if predictor == 'euler_maruyama':
    dt = -process.t_max / num_steps
    x_mean = x + process.reverse_drift(score_fn, x, t, probability_flow) * dt
    g = process.reverse_diffusion(t, probability_flow)
    return x_mean + expand(g, ndim) * math.sqrt(-dt) * noise, x_mean
  if predictor == 'reverse_diffusion':
    f, g = process.discretize(x, t, num_steps)
    g2 = expand(g ** 2, ndim)
    if probability_flow:
      x_mean = x - (f - 0.5 * g2 * score_fn(x, t))
      return x_mean, x_mean
    x_mean = x - (f - g2 * score_fn(x, t))
    return x_mean + expand(g, ndim) * noise, x_mean
  if predictor == 'ancestral':
    x_mean, std = process.ancestral_step(score_fn, x, t, num_steps)
    return x_mean + expand(std, ndim) * noise, x_mean
  raise ValueError(f'Unknown predictor {predictor!r}; valid: {", ".join(PREDICTORS)}.')


def corrector_step(process: Process, score_fn: ScoreFn, x: jax.Array, t: jax.Array, noise: jax.Array,
                   corrector: str, snr: float, num_steps: int):
  """One Langevin iteration at time t: x + h score + sqrt(2 h) noise; returns (x, x without noise).

  langevin: h = 2 alpha (snr |noise| / |score|)^2, the norms per example averaged over the batch
  (score_sde's LangevinCorrector; diffusers' ScoreSdeVeScheduler.step_correct for VE).
  annealed_langevin: h = 2 alpha (snr sigma(t))^2 (NCSN). alpha = process.langevin_alpha (1 - beta_i
  on VP chains, 1 otherwise).
  """
  if corrector == 'none':
    return x, x
  alpha = process.langevin_alpha(t, num_steps)
  grad = score_fn(x, t)
  if corrector == 'langevin':
    grad_norm = jnp.mean(jnp.linalg.norm(grad.reshape(grad.shape[0], -1), axis=-1))
    noise_norm = jnp.mean(jnp.linalg.norm(noise.reshape(noise.shape[0], -1), axis=-1))
    step = 2.0 * alpha * (snr * noise_norm / grad_norm) ** 2
  elif corrector == 'annealed_langevin':
    step = 2.0 * alpha * (snr * process.marginal(t)[1]) ** 2
  else:
    raise ValueError(f'Unknown corrector {corrector!r}; valid: {", ".join(CORRECTORS)}.')
  x_mean = x + expand(step, x.ndim) * grad
  return x_mean + expand(jnp.sqrt(2.0 * step), x.ndim) * noise, x_mean


def function_evaluations(predictor: str, corrector: str, n_steps_each: int, num_steps: int) -> int:
  """Score evaluations of pc_sample: per time, one per corrector iteration and one for the predictor."""
  per_step = (0 if predictor == 'none' else 1) + (0 if corrector == 'none' else n_steps_each)
  return num_steps * per_step


def pc_sample(process: Process, score_fn: ScoreFn, x_T: Union[jax.Array, Sequence[int]], key: jax.Array,
              predictor: str = 'reverse_diffusion', corrector: str = 'langevin', snr: float = 0.16,
              n_steps_each: int = 1, num_steps: Optional[int] = None, denoise: bool = True,
              probability_flow: bool = False):
  """Samples by the predictor-corrector method from t_max down to t_min, in one `fori_loop`.

  x_T: the starting batch, or its shape to draw it from the prior with fold_in(key, num_steps).
  num_steps: n times process.pc_times(n) (process.num_scales by default; the discrete predictors use
  the chain of n steps). At time t_i the corrector runs n_steps_each iterations, then the predictor
  one step; their noises are normal(fold_in(k, j)), k = fold_in(key, i), j = 0 for the predictor and
  1 .. n_steps_each for the corrector. denoise: return the last update without its noise
  (score_sde's x_mean), else with it. probability_flow: the predictor follows the probability-flow
  ODE (euler_maruyama, reverse_diffusion). Returns (x_0, number of score evaluations).
  """
  check_names(process, predictor, corrector, probability_flow)
  num_steps = process.num_scales if num_steps is None else int(num_steps)
  if num_steps < 2:
    raise ValueError(f'num_steps must be at least 2, got {num_steps}.')
  if n_steps_each < 1 and corrector != 'none':
    raise ValueError(f'n_steps_each must be at least 1, got {n_steps_each}.')
  if isinstance(x_T, (tuple, list)):
    x_T = process.prior_sample(jax.random.fold_in(key, num_steps), tuple(x_T))
  times = process.pc_times(num_steps)
  batch = x_T.shape[0]

  def corrector_body(j, carry):
    x, _, t, step_key = carry
    noise = jax.random.normal(jax.random.fold_in(step_key, j + 1), x.shape, x.dtype)
    x, x_mean = corrector_step(process, score_fn, x, t, noise, corrector, snr, num_steps)
    return x, x_mean, t, step_key

  def body(i, carry):
    x, x_mean = carry
    t = jnp.full((batch,), times[i])
    step_key = jax.random.fold_in(key, i)
    if corrector != 'none':
      x, x_mean, _, _ = jax.lax.fori_loop(0, n_steps_each, corrector_body, (x, x_mean, t, step_key))
    if predictor != 'none':
      noise = jax.random.normal(jax.random.fold_in(step_key, 0), x.shape, x.dtype)
      x, x_mean = predictor_step(process, score_fn, x, t, noise, predictor, num_steps, probability_flow)
    return x, x_mean

  x, x_mean = jax.lax.fori_loop(0, num_steps, body, (x_T, x_T))
  return (x_mean if denoise else x), function_evaluations(predictor, corrector, n_steps_each, num_steps)


def check_counts(config: ml_collections.ConfigDict, process: type[Process]) -> None:
  """The steps (process.pc_steps_field) and corrector iterations fit the loop's int32 counters: the steps
  themselves and the network calls per image, doubled for a guided class-conditional network."""
  s = config.sampling
  guided = config.model.num_classes and any(w != 0 for w in (s.guidance_scale, *s.eval_guidance_scales))
  factor = 2 if guided else 1
  why = (f' for the pc sampler: it counts its steps and the network calls per image ({factor} per predictor '
         f'step and corrector iteration) in int32, at most {INT32_MAX}')
  if s.corrector != 'none':  # At least 2 steps, each with the predictor's call and n_steps_each iterations.
    predictor_calls = 0 if s.predictor == 'none' else 1
    in_range(s.n_steps_each, 'sampling.n_steps_each', 1, INT32_MAX // (2 * factor) - predictor_calls, integer=True,
             note=f'{why}; lower it')
  per_step = function_evaluations(s.predictor, s.corrector, s.n_steps_each, 1) * factor
  in_range(process.pc_steps(config), process.pc_steps_field, 2, INT32_MAX // per_step, integer=True,
           note=f'{why}; lower it')


@register
class PredictorCorrector(Sampler):
  name = 'pc'
  knobs = ('sampling.predictor', 'sampling.corrector', 'sampling.snr', 'sampling.n_steps_each', 'sampling.denoise')

  @classmethod
  def steps(cls, config, process):
    return process.pc_steps(config)

  @classmethod
  def check(cls, config, process, steps=None):
    super().check(config, process, steps)
    process.check_pc(config)
    s = config.sampling
    try:
      check_names(process, s.predictor, s.corrector)
    except ValueError as e:
      raise ConfigError(f'config.sampling.predictor / corrector: {e}') from None
    check_counts(config, process)

  @classmethod
  def build(cls, config, process):
    s, num_steps, clip = config.sampling, process.pc_steps(config), config.diffusion.clip_denoised

    def run(model, x_T, key, frame_steps=(), progress_fn=None, progress_every=0):
      x_0, nfe = pc_sample(process, model.score, x_T * process.prior_std, key, s.predictor, s.corrector, s.snr,
                           s.n_steps_each, num_steps, denoise=s.denoise)
      return (jnp.clip(x_0, -1.0, 1.0) if clip else x_0), None, nfe

    return run


