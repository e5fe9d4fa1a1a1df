"""Predictor-corrector samplers of score SDEs (Song et al., ICLR 2021), each one compiled loop.

At each of n times t_i = linspace(1, eps, n) a corrector (Langevin MCMC at the marginal p_{t_i})
refines x, then a predictor takes one step of the reverse-time SDE towards t_{i+1}:
  predictors  euler_maruyama (dt = -1 / n), reverse_diffusion (the reverse of `sde.discretize`),
              ancestral (DDPM's / SMLD's ancestral step, VP and VE), none (corrector only);
  correctors  none, langevin (step size from the target signal-to-noise ratio `snr` of the batch's
              score and noise norms), annealed_langevin (NCSN's: step from snr and the marginal std).
Everything works from score_fn(x, t) alone (sde.score_fn_from_model builds it from an eps-network,
trained in discrete or continuous time; a guided score is the caller's score_fn), so the samplers
know no network. The noise of step i is drawn from fold_in(key, i): a sample depends only on
(x_T, key).
"""

import math
from typing import Optional, Sequence, Union

import jax
import jax.numpy as jnp

from ddpm_jax import diffusion
from ddpm_jax import sde as sde_lib

PREDICTORS = ('euler_maruyama', 'reverse_diffusion', 'ancestral', 'none')
CORRECTORS = ('none', 'langevin', 'annealed_langevin')


def check_names(sde: sde_lib.SDE, predictor: str, corrector: str, probability_flow: bool = False) -> None:
  """Raises ValueError for an unknown predictor or corrector, or one the SDE does not support."""
  if predictor not in PREDICTORS:
    raise ValueError(f'Unknown predictor {predictor!r}; valid: {", ".join(PREDICTORS)}.')
  if corrector not in CORRECTORS:
    raise ValueError(f'Unknown corrector {corrector!r}; valid: {", ".join(CORRECTORS)}.')
  if predictor == 'none' and corrector == 'none':
    raise ValueError('The predictor and the corrector are both none: nothing would sample.')
  if predictor == 'ancestral' and sde.kind == 'subvp':
    raise ValueError('The ancestral predictor exists for the VP and VE SDEs only; for sub-VP use '
                     'reverse_diffusion or euler_maruyama.')
  if probability_flow and predictor in ('ancestral', 'none'):
    raise ValueError(f'The {predictor} predictor has no probability-flow form; use reverse_diffusion '
                     'or euler_maruyama.')


def predictor_step(sde: sde_lib.SDE, score_fn: sde_lib.ScoreFn, x: jax.Array, t: jax.Array,
                   noise: jax.Array, predictor: str, num_steps: int, probability_flow: bool = False):
  """One predictor step from time t (B,) with standard normal `noise`; returns (x, x without noise).

  euler_maruyama: x + reverse_drift dt + g sqrt(-dt) noise, dt = -1 / n.
  reverse_diffusion: with (f, G) = sde.discretize(x, t, n), x - (f - G^2 score) + G noise (score
  halved and no noise for the probability flow, as score_sde; that flow step is first order in
  beta_i only, its spread growing by ~beta_i^2 / 8 a step on VP: prefer euler_maruyama or the ODE
  sampler for the flow).
  ancestral: VP (x + beta_i score) / sqrt(1 - beta_i) + sqrt(beta_i) noise; VE x + (sigma_i^2 -
  sigma_{i-1}^2) score + sqrt(sigma_{i-1}^2 (sigma_i^2 - sigma_{i-1}^2) / sigma_i^2) noise.
  """
  ndim = x.ndim
  if predictor == 'none':
    return x, x
  if predictor == 'euler_maruyama':
    dt = -1.0 / num_steps
    x_mean = x + sde_lib.reverse_drift(sde, score_fn, x, t, probability_flow) * dt
    g = sde_lib.reverse_diffusion(sde, t, probability_flow)
    return x_mean + diffusion.expand(g, ndim) * math.sqrt(-dt) * noise, x_mean
  if predictor == 'reverse_diffusion':
    f, g = sde_lib.discretize(sde, x, t, num_steps)
    g2 = diffusion.expand(g ** 2, ndim)
    if probability_flow:
      x_mean = x - (f - 0.5 * g2 * score_fn(x, t))
      return x_mean, x_mean
    x_mean = x - (f - g2 * score_fn(x, t))
    return x_mean + diffusion.expand(g, ndim) * noise, x_mean
  if predictor == 'ancestral':
    i = sde_lib.step_index(t, num_steps)
    if sde.kind == 've':
      s2 = sde_lib.discrete_sigmas(sde, i, num_steps) ** 2
      adjacent2 = jnp.where(i > 0, sde_lib.discrete_sigmas(sde, jnp.maximum(i - 1, 0), num_steps) ** 2, 0.0)
      x_mean = x + diffusion.expand(s2 - adjacent2, ndim) * score_fn(x, t)
      std = jnp.sqrt(adjacent2 * (s2 - adjacent2) / s2)
    else:
      b = sde_lib.discrete_betas(sde, i, num_steps)
      x_mean = (x + diffusion.expand(b, ndim) * score_fn(x, t)) / diffusion.expand(jnp.sqrt(1.0 - b), ndim)
      std = jnp.sqrt(b)
    return x_mean + diffusion.expand(std, ndim) * noise, x_mean
  raise ValueError(f'Unknown predictor {predictor!r}; valid: {", ".join(PREDICTORS)}.')


def _langevin_alpha(sde: sde_lib.SDE, t: jax.Array, num_steps: int) -> jax.Array:
  """score_sde's factor on the Langevin step: alpha_i = 1 - beta_i of the VP family, 1 for VE."""
  if sde.kind == 've':
    return jnp.ones_like(jnp.asarray(t, jnp.float32))
  return 1.0 - sde_lib.discrete_betas(sde, sde_lib.step_index(t, num_steps), num_steps)


def corrector_step(sde: sde_lib.SDE, score_fn: sde_lib.ScoreFn, x: jax.Array, t: jax.Array,
                   noise: jax.Array, corrector: str, snr: float, num_steps: int):
  """One Langevin iteration at time t: x + h score + sqrt(2 h) noise; returns (x, x without noise).

  langevin: h = 2 alpha (snr |noise| / |score|)^2, the norms per example averaged over the batch
  (score_sde's LangevinCorrector; diffusers' ScoreSdeVeScheduler.step_correct for VE).
  annealed_langevin: h = 2 alpha (snr std(t))^2 (NCSN). alpha = 1 - beta_i for VP / sub-VP, 1 for VE.
  """
  if corrector == 'none':
    return x, x
  alpha = _langevin_alpha(sde, t, num_steps)
  grad = score_fn(x, t)
  if corrector == 'langevin':
    grad_norm = jnp.mean(jnp.linalg.norm(grad.reshape(grad.shape[0], -1), axis=-1))
    noise_norm = jnp.mean(jnp.linalg.norm(noise.reshape(noise.shape[0], -1), axis=-1))
    step = 2.0 * alpha * (snr * noise_norm / grad_norm) ** 2
  elif corrector == 'annealed_langevin':
    step = 2.0 * alpha * (snr * sde_lib.marginal(sde, t)[1]) ** 2
  else:
    raise ValueError(f'Unknown corrector {corrector!r}; valid: {", ".join(CORRECTORS)}.')
  x_mean = x + diffusion.expand(step, x.ndim) * grad
  return x_mean + diffusion.expand(jnp.sqrt(2.0 * step), x.ndim) * noise, x_mean


def function_evaluations(predictor: str, corrector: str, n_steps_each: int, num_steps: int) -> int:
  """Score evaluations of pc_sample: per time, one per corrector iteration and one for the predictor."""
  per_step = (0 if predictor == 'none' else 1) + (0 if corrector == 'none' else n_steps_each)
  return num_steps * per_step


def pc_sample(sde: sde_lib.SDE, score_fn: sde_lib.ScoreFn, x_T: Union[jax.Array, Sequence[int]],
              key: jax.Array, predictor: str = 'reverse_diffusion', corrector: str = 'langevin',
              snr: float = 0.16, n_steps_each: int = 1, num_steps: Optional[int] = None,
              eps: Optional[float] = None, denoise: bool = True, probability_flow: bool = False):
  """Samples by the predictor-corrector method from t = 1 down to t = eps, in one `fori_loop`.

  x_T: the starting batch, or its shape to draw it from the prior with fold_in(key, num_steps).
  num_steps: n times linspace(1, eps, n) (sde.num_scales by default; the discrete predictors use
  the chain of n steps). eps: sde.sampling_eps(sde) by default. At time t_i the corrector runs
  n_steps_each iterations, then the predictor one step; their noises are normal(fold_in(k, j)),
  k = fold_in(key, i), j = 0 for the predictor and 1 .. n_steps_each for the corrector.
  denoise: return the last update without its noise (score_sde's x_mean), else with it.
  probability_flow: the predictor follows the probability-flow ODE (euler_maruyama,
  reverse_diffusion). Returns (x_0, number of score evaluations).
  """
  check_names(sde, predictor, corrector, probability_flow)
  num_steps = sde.num_scales if num_steps is None else int(num_steps)
  if num_steps < 2:
    raise ValueError(f'num_steps must be at least 2, got {num_steps}.')
  if n_steps_each < 1 and corrector != 'none':
    raise ValueError(f'n_steps_each must be at least 1, got {n_steps_each}.')
  eps = sde_lib.sampling_eps(sde) if eps is None else eps
  if isinstance(x_T, (tuple, list)):
    x_T = sde_lib.prior_sample(sde, jax.random.fold_in(key, num_steps), tuple(x_T))
  times = jnp.linspace(1.0, eps, num_steps, dtype=jnp.float32)
  batch = x_T.shape[0]

  def corrector_body(j, carry):
    x, _, t, step_key = carry
    noise = jax.random.normal(jax.random.fold_in(step_key, j + 1), x.shape, x.dtype)
    x, x_mean = corrector_step(sde, score_fn, x, t, noise, corrector, snr, num_steps)
    return x, x_mean, t, step_key

  def body(i, carry):
    x, x_mean = carry
    t = jnp.full((batch,), times[i])
    step_key = jax.random.fold_in(key, i)
    if corrector != 'none':
      x, x_mean, _, _ = jax.lax.fori_loop(0, n_steps_each, corrector_body, (x, x_mean, t, step_key))
    if predictor != 'none':
      noise = jax.random.normal(jax.random.fold_in(step_key, 0), x.shape, x.dtype)
      x, x_mean = predictor_step(sde, score_fn, x, t, noise, predictor, num_steps, probability_flow)
    return x, x_mean

  x, x_mean = jax.lax.fori_loop(0, num_steps, body, (x_T, x_T))
  return (x_mean if denoise else x), function_evaluations(predictor, corrector, n_steps_each, num_steps)
