"""The probability-flow ODE of a score SDE (Song et al., 2021), solved adaptively with diffrax.

dx/dt = f(x, t) - g(t)^2 score(x, t) / 2 has the same marginals p_t as the process's SDE
(ddpm_jax/processes/), so integrating it from t_max to t_min maps prior samples to data
(`ode_sample`), from t_min to t_max maps data to latents (`ode_encode`), and its instantaneous change
of variables, log p_min(x(t_min)) = log p_max(x(t_max)) + int div(drift)(x(t), t) dt over
[t_min, t_max], gives exact log-likelihoods
(`ode_likelihood`), in the manner of score_sde's sampling.get_ode_sampler and likelihood.py.

Every function takes a process and `score_fn(x, t) -> score` with t of shape (B,) and composes with
jit; solver, max_steps, rtol and atol are Python values (static). Called outside jit, each call compiles
its solve anew: jit the call once (the network's params as an argument) and reuse it. `nfe` is the
exact number of evaluations of the ODE's right-hand side, each one call of score_fn (under jax.jvp
or jax.jacfwd for the likelihood), plus one for the final denoising step of `ode_sample`. A solve
that does not reach its end (it ran out of max_steps; a score of NaN or Inf ends so too) raises
RuntimeError with one sentence; under jit, where it cannot raise, it returns its nfe negated, for the
caller to raise on the host with the knob that sets max_steps (samplers/ode.py).
"""

import math
from typing import Callable

import diffrax
import jax
import jax.numpy as jnp

from ddpm_jax.processes.base import Process

ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]
# drift(x, t) -> dx/dt with x of shape (B, ...) and t of shape (B,).
DriftFn = Callable[[jax.Array, jax.Array], jax.Array]

# Explicit Runge-Kutta pairs with first-same-as-last stages: 7 stages, 6 new evaluations a step.
SOLVERS = {'dopri5': diffrax.Dopri5, 'tsit5': diffrax.Tsit5}
EVALS_PER_STEP = 6
# The first step's size as a fraction of the interval; the PID controller adapts it from there.
# Given, it spends no evaluations on choosing it (diffrax 0.7.2 itself takes 0.01 for these solves).
_FIRST_STEP_FRACTION = 0.01
# How the divergence of the drift is taken: Hutchinson-Skilling with Gaussian or Rademacher probe
# noise (one forward-mode product a step), or the exact trace of the Jacobian (D products a step,
# for small data and tests).
HUTCHINSON_TYPES = ('gaussian', 'rademacher', 'exact')
# Bits of the data the likelihood is reported for: 8-bit images, dequantised uniformly.
DATA_BITS = 8


def _solver(name: str) -> diffrax.AbstractRungeKutta:
  if name not in SOLVERS:
    raise ValueError(f'Unknown ODE solver {name!r}; valid: {", ".join(SOLVERS)}.')
  return SOLVERS[name]()


def probability_flow_drift(process: Process, score_fn: ScoreFn) -> DriftFn:
  """drift(x, t) of the probability-flow ODE: f(x, t) - g(t)^2 score(x, t) / 2."""
  return lambda x, t: process.reverse_drift(score_fn, x, t, probability_flow=True)


def _batch_time(t: jax.Array, x: jax.Array) -> jax.Array:
  return jnp.full((x.shape[0],), t, dtype=x.dtype)


def _solve(rhs: Callable, y0, t0: float, t1: float, *, rtol: float, atol: float, solver: str,
           max_steps: int):
  """(y(t1) of dy/dt = rhs(t, y) (t a scalar, y a pytree) from y(t0) = y0, the number of evaluations
  of rhs, whether the solve reached t1).

  The solver's first-same-as-last stage at t0 is evaluated here and handed to diffrax as its
  state, so every step (the first and rejected ones too) costs exactly EVALS_PER_STEP
  evaluations: nfe = 1 + EVALS_PER_STEP * (accepted + rejected steps). Outside jit a solve that
  did not reach t1 raises RuntimeError.
  """
  method = _solver(solver)
  if max_steps < 1:
    raise ValueError(f'max_steps={max_steps} must be at least 1.')
  term = diffrax.ODETerm(lambda t, y, args: rhs(t, y))

  def run(y0):
    first_stage = rhs(jnp.asarray(t0, jnp.float32), y0)
    solution = diffrax.diffeqsolve(
        term, method, t0=t0, t1=t1, dt0=_FIRST_STEP_FRACTION * (t1 - t0), y0=y0,
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol),
        max_steps=max_steps, throw=False, solver_state=(jnp.asarray(False), first_stage))
    nfe = 1 + EVALS_PER_STEP * solution.stats['num_steps']
    finished = solution.result == diffrax.RESULTS.successful
    return jax.tree.map(lambda leaf: leaf[-1], solution.ys), jnp.asarray(nfe, jnp.int32), finished

  # One compiled program, the first stage included (called eagerly, each operation of the score
  # function would compile on its own); inside an outer jit it is inlined.
  y1, nfe, finished = jax.jit(run)(y0)
  if not isinstance(finished, jax.core.Tracer) and not bool(finished):
    raise RuntimeError(f'The ODE solve from t={t0:g} to t={t1:g} took more than max_steps={max_steps} steps: '
                       f'raise max_steps or loosen rtol={rtol:g} and atol={atol:g}.')
  return y1, nfe, finished


def _reported(nfe: jax.Array, finished: jax.Array) -> jax.Array:
  """The nfe a solve returns: negated when it did not reach its end (under jit, where it cannot raise)."""
  return jnp.where(finished, nfe, -nfe)


def _integrate_x(drift: DriftFn, x: jax.Array, t0: float, t1: float, **solve_args):
  return _solve(lambda t, y: drift(y, _batch_time(t, y)), x, t0, t1, **solve_args)


def ode_sample(process: Process, score_fn: ScoreFn, x_T: jax.Array, *, rtol: float = 1e-5,
               atol: float = 1e-5, solver: str = 'dopri5', denoise: bool = True,
               max_steps: int = 4096) -> tuple[jax.Array, jax.Array]:
  """Samples (x_0, nfe): x_T (prior samples, e.g. process.prior_sample) carried by the
  probability-flow ODE from t_max to t_min, then (denoise) Tweedie's E[x_0 | x_t] at t_min,
  (x + sigma^2 score) / alpha, one more score call (score_sde's last reverse-diffusion step adds
  G^2 score with G^2 of the first discrete step, sigma(t_min)^2 to first order)."""
  t_end = float(process.t_min)
  x, nfe, finished = _integrate_x(probability_flow_drift(process, score_fn), x_T, float(process.t_max), t_end,
                                  rtol=rtol, atol=atol, solver=solver, max_steps=max_steps)
  if denoise:
    t = _batch_time(t_end, x)
    x = process.tweedie_denoise(x, score_fn(x, t), t)
    nfe = nfe + 1
  return x, _reported(nfe, finished)


def ode_encode(process: Process, score_fn: ScoreFn, x: jax.Array, *, rtol: float = 1e-5,
               atol: float = 1e-5, solver: str = 'dopri5', max_steps: int = 4096) -> tuple[jax.Array, jax.Array]:
  """(latent z, nfe): data x carried by the probability-flow ODE from t_min to t_max (the inverse of
  ode_sample without denoising, up to the solver's tolerance)."""
  z, nfe, finished = _integrate_x(probability_flow_drift(process, score_fn), x, float(process.t_min),
                                  float(process.t_max), rtol=rtol, atol=atol, solver=solver, max_steps=max_steps)
  return z, _reported(nfe, finished)


def hutchinson_divergence(fn: DriftFn, x: jax.Array, t: jax.Array,
                          noise: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(fn(x, t), noise . J noise per example): the Hutchinson-Skilling estimate of div fn, unbiased
  for noise of zero mean and identity covariance; one forward-mode (jvp) pass of fn."""
  value, jvp = jax.jvp(lambda y: fn(y, t), (x,), (noise,))
  return value, jnp.sum(jvp * noise, axis=tuple(range(1, x.ndim)))


def exact_divergence(fn: DriftFn, x: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(fn(x, t), trace of d fn / d x per example) by jax.jacfwd of each example: D forward passes,
  a D x D Jacobian per example in memory; for small data and tests."""
  def one(x_b, t_b):
    def f(y):
      out = fn(y[None], t_b[None])[0]
      return out, out
    jacobian, value = jax.jacfwd(f, has_aux=True)(x_b)
    return value, jnp.trace(jacobian.reshape(x_b.size, x_b.size))
  return jax.vmap(one)(x, t)


def probe_noise(key: jax.Array, shape: tuple[int, ...], hutchinson: str,
                dtype=jnp.float32) -> jax.Array | None:
  """The Hutchinson probe of one solve: standard normal or +-1 entries; None for 'exact'."""
  if hutchinson not in HUTCHINSON_TYPES:
    raise ValueError(f'Unknown divergence estimator hutchinson={hutchinson!r}; valid: '
                     f'{", ".join(HUTCHINSON_TYPES)}.')
  if hutchinson == 'gaussian':
    return jax.random.normal(key, shape, dtype)
  if hutchinson == 'rademacher':
    return jax.random.rademacher(key, shape, dtype)
  return None


def logp_to_bpd(logp: jax.Array, dims: int) -> jax.Array:
  """Bits/dim of 8-bit data from log-densities (nats) of uniformly dequantised model-space x.

  x = 2 (k + u) / 256 - 1 maps the dequantised pixel v = k + u in [0, 256) onto [-1, 1) with
  Jacobian 1/128 a dimension, so log2 p(v) = log2 p(x) - 7 D and
  bpd = -log p(x) / (D ln 2) + 8 - 1: score_sde's offset log2(d inverse_scaler / dx) + 8 = 7.
  """
  return -logp / (dims * math.log(2.0)) + DATA_BITS - 1


def dequantize(key: jax.Array, images: jax.Array) -> jax.Array:
  """uint8 images k -> model-space x = 2 (k + u) / 256 - 1 in [-1, 1], u ~ U[0, 1) per entry."""
  noise = jax.random.uniform(key, images.shape, jnp.float32)
  return (images.astype(jnp.float32) + noise) * (2.0 / 2 ** DATA_BITS) - 1.0


def ode_likelihood(process: Process, score_fn: ScoreFn, x: jax.Array, key: jax.Array, *,
                   hutchinson: str = 'rademacher', rtol: float = 1e-5,
                   atol: float = 1e-5, solver: str = 'dopri5',
                   max_steps: int = 4096) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(bits/dim per example, latent z, nfe) of model-space x (dequantised 8-bit data in [-1, 1]).

  Solves x and delta(t) = int div(drift) together from t_min to t_max; log p(x) =
  process.prior_logp(z) + delta(t_max), converted by logp_to_bpd (score_sde's convention: +7 bits for
  8-bit data scaled to [-1, 1]). `key` draws the single Hutchinson probe of the solve.
  """
  noise = probe_noise(key, x.shape, hutchinson, x.dtype)
  drift = probability_flow_drift(process, score_fn)

  def rhs(t, state):
    y, _ = state
    t_b = _batch_time(t, y)
    if noise is None:
      return exact_divergence(drift, y, t_b)
    return hutchinson_divergence(drift, y, t_b, noise)

  state0 = (x, jnp.zeros((x.shape[0],), x.dtype))
  (z, delta_logp), nfe, finished = _solve(rhs, state0, float(process.t_min), float(process.t_max), rtol=rtol,
                                          atol=atol, solver=solver, max_steps=max_steps)
  logp = process.prior_logp(z) + delta_logp
  return logp_to_bpd(logp, math.prod(x.shape[1:])), z, _reported(nfe, finished)
