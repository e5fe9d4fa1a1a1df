"""UniPC (Zhao et al., 2023), bh2 of order 2 with data prediction, one compiled loop of num_steps
network calls, step for step as diffusers' UniPCMultistepScheduler: each step predicts with UniP and,
from the next call's output, corrects with UniC at no extra call.
"""

import jax
import numpy as np

from ddpm_jax.processes.base import EpsFn
from ddpm_jax.samplers import levels as levels_lib
from ddpm_jax.samplers.registry import Constraint, register


def _unic_coefs(levels: levels_lib.NoiseLevels, lam: np.ndarray, order: np.ndarray):
  """keep, x, m1, dm, dm2 of UniC-bh2 correcting x_i with m_i; order[i] is the order of step i-1's predictor.

  x_i^c = sigma_i/sigma_{i-1} x_{i-1}^c - alpha_i expm1(hh) m_{i-1} - alpha_i B(h) (rho_0 D1 +
  rho_1 (m_i - m_{i-1})), hh = -(lambda_i - lambda_{i-1}), B(h) = expm1(hh), D1 = (m_{i-2} - m_{i-1})
  / r, r = (lambda_{i-2} - lambda_{i-1}) / (lambda_i - lambda_{i-1}); rho solves
  [[1, 1], [r, 1]] rho = (phi_2 / B, 2 phi_3 / B) for order 2, rho_1 = 1/2 (and no D1) for order 1.
  """
  n = levels.num_steps
  a, s = levels.alpha, levels.sigma
  keep, cx, cm1, cdm, cdm2 = np.ones(n), np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n)
  for i in range(1, n):
    h = lam[i] - lam[i - 1]
    hh = -h
    phi1 = np.expm1(hh)
    b_h = phi1
    keep[i], cx[i], cm1[i] = 0.0, s[i] / s[i - 1], -a[i] * phi1
    if order[i] == 1:
      cdm[i] = -a[i] * b_h * 0.5
      continue
    r = (lam[i - 2] - lam[i - 1]) / h
    phi2 = phi1 / hh - 1.0
    phi3 = phi2 / hh - 0.5
    rho = np.linalg.solve(np.array([[1.0, 1.0], [r, 1.0]]), np.array([phi2 / b_h, 2.0 * phi3 / b_h]))
    cdm[i] = -a[i] * b_h * rho[1]
    cdm2[i] = a[i] * b_h * rho[0] / r
  return keep, cx, cm1, cdm, cdm2


def unipc(levels: levels_lib.NoiseLevels, eps_fn: EpsFn, x_T: jax.Array, lower_order_final: bool = True,
          clip_denoised: bool = False, constrain: Constraint | None = None) -> tuple[jax.Array, int]:
  """UniPC (bh2, order 2, data prediction): num_steps calls, as diffusers' UniPCMultistepScheduler.

  Each step predicts with UniP (order 1 at the first step, and at the last one when
  lower_order_final or when it ends at sigma = 0), then, from the next network call's output,
  corrects that prediction with UniC of the same order before the next step: the corrector
  costs no call. clip_denoised, constrain: see dpm_solver_pp_2m. Returns (x_0, nfe).
  """
  levels = levels_lib.checked(levels)
  n, lam = levels.num_steps, levels_lib.log_snr(levels)
  second = np.arange(n) >= 1
  if lower_order_final or levels_lib.last_step_first_order(levels):
    second[-1] = False
  predictor_order = np.where(second, 2, 1)
  corrector_order = np.append(1, predictor_order[:-1])
  coefs = levels_lib.MultistepCoefs(*_unic_coefs(levels, lam, corrector_order), *levels_lib.predictor_coefs(levels, lam, second))
  return levels_lib.multistep_loop(levels, coefs, eps_fn, x_T, clip_denoised, constrain=constrain), n


@register
class UniPC(levels_lib.LevelSolver):
  name = 'unipc'
  solver = staticmethod(unipc)
