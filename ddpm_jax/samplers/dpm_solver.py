"""DPM-Solver++ 2M (Lu et al., 2022) on the probability-flow ODE, and SDE-DPM-Solver++ 2M on the
reverse SDE (fresh noise at every step), each one compiled loop of num_steps network calls, step for
step as diffusers' DPMSolverMultistepScheduler (algorithm_type 'dpmsolver++' and 'sde-dpmsolver++').
Given EDM's Karras grid (alpha 1, sigma_i of samplers/edm.karras_sigmas), DPM-Solver++ 2M is
diffusers' EDMDPMSolverMultistepScheduler (tests/test_samplers_edm.py).
"""

import jax
import numpy as np

from ddpm_jax.processes.base import EpsFn
from ddpm_jax.samplers import levels as levels_lib
from ddpm_jax.samplers.registry import Constraint, register


def _dpm_solver_orders(levels: levels_lib.NoiseLevels, lower_order_final: bool) -> np.ndarray:
  """Which steps of DPM-Solver++ 2M (ODE or SDE) are second order: all but the first (no history),
  and but the last when it ends at sigma = 0 or when lower_order_final with few steps (diffusers)."""
  n = levels.num_steps
  second = np.arange(n) >= 1
  if levels_lib.last_step_first_order(levels) or (lower_order_final and n < levels_lib.LOWER_ORDER_FINAL_MAX_STEPS):
    second[-1] = False
  return second


def dpm_solver_pp_2m(levels: levels_lib.NoiseLevels, eps_fn: EpsFn, x_T: jax.Array, lower_order_final: bool = True,
                     clip_denoised: bool = False, constrain: Constraint | None = None) -> tuple[jax.Array, int]:
  """DPM-Solver++ 2M (multistep, second order, data prediction, midpoint): num_steps calls.

  As diffusers' DPMSolverMultistepScheduler(algorithm_type='dpmsolver++', solver_order=2): the
  first step is first order (no history yet), and so is the last one when lower_order_final and
  num_steps < levels_lib.LOWER_ORDER_FINAL_MAX_STEPS, or when it ends at sigma = 0. clip_denoised clips the
  data prediction to [-1, 1] (diffusers' thresholding with sample_max_value 1, off by default);
  constrain: an edit's (levels_lib.multistep_loop). Returns (x_0, nfe).
  """
  levels = levels_lib.checked(levels)
  n, lam = levels.num_steps, levels_lib.log_snr(levels)
  second = _dpm_solver_orders(levels, lower_order_final)
  zero = np.zeros(n)
  coefs = levels_lib.MultistepCoefs(np.ones(n), zero, zero, zero, zero, *levels_lib.predictor_coefs(levels, lam, second))
  return levels_lib.multistep_loop(levels, coefs, eps_fn, x_T, clip_denoised, constrain=constrain), n


def sde_dpm_solver_pp_2m(levels: levels_lib.NoiseLevels, eps_fn: EpsFn, x_T: jax.Array, key: jax.Array,
                         lower_order_final: bool = True, clip_denoised: bool = False,
                         constrain: Constraint | None = None) -> tuple[jax.Array, int]:
  """SDE-DPM-Solver++ 2M (Lu et al., 2022, section 5): the reverse SDE in num_steps calls.

  The exact solution of the reverse SDE's linear part over each step, with the data prediction
  extrapolated as in dpm_solver_pp_2m (midpoint): x_{i+1} = sigma_{i+1}/sigma_i e^{-h} x_i +
  alpha_{i+1} (1 - e^{-2h}) (m_i + (m_i - m_{i-1}) / (2 r)) + sigma_{i+1} sqrt(1 - e^{-2h}) z_i,
  h = lambda_{i+1} - lambda_i, z_i = levels_lib.step_noise(key, i, x). Step orders as dpm_solver_pp_2m's. As
  diffusers' DPMSolverMultistepScheduler(algorithm_type='sde-dpmsolver++', solver_order=2) given
  variance_noise z_i. constrain: an edit's (levels_lib.multistep_loop). Returns (x_0, nfe).
  """
  levels = levels_lib.checked(levels)
  n, lam = levels.num_steps, levels_lib.log_snr(levels)
  second = _dpm_solver_orders(levels, lower_order_final)
  a, s = levels.alpha, levels.sigma
  h = lam[1:] - lam[:-1]
  decay = -np.expm1(-2.0 * h)  # 1 - e^{-2h}; 1 at a step to clean data (h = inf).
  pm = a[1:] * decay
  pdm = np.where(second, 0.5 * pm / levels_lib.step_ratios(h, second), 0.0)
  px = s[1:] / s[:-1] * np.exp(-h)
  zero = np.zeros(n)
  coefs = levels_lib.MultistepCoefs(np.ones(n), zero, zero, zero, zero, px, pm, pdm)
  noise_scale = s[1:] * np.sqrt(decay)
  return levels_lib.multistep_loop(levels, coefs, eps_fn, x_T, clip_denoised, noise_scale, key, constrain), n


@register
class DPMSolverPP2M(levels_lib.LevelSolver):
  name = 'dpm_solver_pp_2m'
  solver = staticmethod(dpm_solver_pp_2m)


@register
class SDEDPMSolverPP2M(levels_lib.LevelSolver):
  name = 'sde_dpm_solver_pp_2m'
  solver = staticmethod(sde_dpm_solver_pp_2m)
  stochastic = True
