"""Euler and Heun (Karras et al., 2022, Alg. 1) on x~ = x / alpha against sigma~ = sigma / alpha,
one compiled loop each, step for step as diffusers' EulerDiscreteScheduler and HeunDiscreteScheduler
on their grids (the 'euler' timestep grid on the ddpm chain).
"""

import jax
import jax.numpy as jnp
import numpy as np

from ddpm_jax.processes.base import EpsFn
from ddpm_jax.samplers import levels as levels_lib
from ddpm_jax.samplers.registry import Constraint, register


def _karras_derivative(x_tilde, eps, sigma_tilde, clip_denoised: bool):
  """dx~/dsigma~ = (x~ - x_0) / sigma~ for x~ = x / alpha, sigma~ = sigma / alpha; eps when unclipped."""
  if not clip_denoised:
    return eps
  x0 = jnp.clip(x_tilde - sigma_tilde * eps, -1.0, 1.0)
  return (x_tilde - x0) / sigma_tilde


def constrained_level(x_tilde: jax.Array, levels: levels_lib.NoiseLevels, level: int,
                      constrain: Constraint | None) -> jax.Array:
  """x~ = x / alpha at `level` with the edit's constraint applied to x there (unchanged without one)."""
  if constrain is None:
    return x_tilde
  alpha, sigma = (jnp.asarray(a, x_tilde.dtype)[level] for a in (levels.alpha, levels.sigma))
  return constrain(alpha * x_tilde, alpha, sigma, level) / alpha


def euler(levels: levels_lib.NoiseLevels, eps_fn: EpsFn, x_T: jax.Array, clip_denoised: bool = False,
          constrain: Constraint | None = None) -> tuple[jax.Array, int]:
  """Euler's method on x~ = x / alpha against sigma~ = sigma / alpha: num_steps calls.

  As diffusers' EulerDiscreteScheduler (s_churn = 0): the network gets alpha_i x~ = x_i, and
  x~_{i+1} = x~_i + eps (sigma~_{i+1} - sigma~_i). clip_denoised clips the x_0 behind the
  derivative to [-1, 1]; constrain: an edit's, at each level reached (constrained_level). Returns
  (x_0, nfe).
  """
  levels = levels_lib.checked(levels)
  dtype = x_T.dtype
  alpha, model_time = jnp.asarray(levels.alpha, dtype), jnp.asarray(levels.model_time, jnp.float32)
  ratio = levels.sigma / levels.alpha
  sig, dt = jnp.asarray(ratio, dtype), jnp.asarray(np.diff(ratio), dtype)

  def body(i, x_tilde):
    eps = eps_fn(alpha[i] * x_tilde, levels_lib.time_batch(model_time[i], x_tilde))
    x_tilde = x_tilde + _karras_derivative(x_tilde, eps, sig[i], clip_denoised) * dt[i]
    return constrained_level(x_tilde, levels, i + 1, constrain).astype(dtype)

  x_tilde = jax.lax.fori_loop(0, levels.num_steps, body, x_T / alpha[0])
  return alpha[-1] * x_tilde, levels.num_steps


def heun(levels: levels_lib.NoiseLevels, eps_fn: EpsFn, x_T: jax.Array, clip_denoised: bool = False,
         constrain: Constraint | None = None) -> tuple[jax.Array, int]:
  """Heun's second-order method on x~ = x / alpha against sigma~ (Karras et al., 2022, Alg. 1).

  Each step takes an Euler step, then (unless it lands on sigma = 0) corrects it with the mean
  of the two derivatives: 2 calls per step except a last one to clean data, as diffusers'
  HeunDiscreteScheduler (2 num_steps - 1 calls on its grids). constrain: as euler's. Returns (x_0, nfe).
  """
  levels = levels_lib.checked(levels)
  dtype = x_T.dtype
  alpha, model_time = jnp.asarray(levels.alpha, dtype), jnp.asarray(levels.model_time, jnp.float32)
  ratio = levels.sigma / levels.alpha
  sig, dt = jnp.asarray(ratio, dtype), jnp.asarray(np.diff(ratio), dtype)
  corrects = levels.sigma[1:] > 0
  corrected = jnp.asarray(corrects)

  def body(i, x_tilde):
    eps = eps_fn(alpha[i] * x_tilde, levels_lib.time_batch(model_time[i], x_tilde))
    d = _karras_derivative(x_tilde, eps, sig[i], clip_denoised)
    x_euler = x_tilde + d * dt[i]

    def correct():
      eps_next = eps_fn(alpha[i + 1] * x_euler, levels_lib.time_batch(model_time[i + 1], x_euler))
      d_next = _karras_derivative(x_euler, eps_next, sig[i + 1], clip_denoised)
      return x_tilde + 0.5 * (d + d_next) * dt[i]

    x_tilde = jax.lax.cond(corrected[i], correct, lambda: x_euler)
    return constrained_level(x_tilde, levels, i + 1, constrain).astype(dtype)

  x_tilde = jax.lax.fori_loop(0, levels.num_steps, body, x_T / alpha[0])
  return alpha[-1] * x_tilde, levels.num_steps + int(corrects.sum())


@register
class Euler(levels_lib.LevelSolver):
  name = 'euler'
  solver = staticmethod(euler)
  grid = 'euler'


@register
class Heun(levels_lib.LevelSolver):
  name = 'heun'
  solver = staticmethod(heun)
  grid = 'euler'
