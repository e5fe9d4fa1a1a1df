"""EDM's samplers (Karras et al., 2022, Algorithms 1 and 2) on every process and network.

Both walk x~ = x / alpha against sigma~ = sigma / alpha (for EDM and VE: x and sigma themselves) on
Karras's grid sigma_i = (sigma_max^(1/rho) + i / (N - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho,
i < N, then sigma_N = 0, spanning the process's sigma~ over [t_min, t_max]:
  edm_heun        deterministic, Heun's second order (Alg. 1): 2 N - 1 network calls (N = 18: 35);
  edm_stochastic  Alg. 2: before step i, where S_tmin <= sigma_i <= S_tmax, raise the noise level to
                  sigma^_i = sigma_i (1 + gamma), gamma = min(S_churn / N, sqrt(2) - 1), adding fresh
                  noise of std sqrt(sigma^_i^2 - sigma_i^2) S_noise, then take the Heun step from sigma^_i.
The denoiser is the model's x0 at the process time t(sigma~) (Process.times_at_sigma_ratio, on the
host), so a ddpm, VP or VE network samples as well as an EDM one (the paper's section 3). Each
step's noise is drawn from fold_in(key, i). `karras_sample` is the loop alone, in sigma space: with
second_order=False it is Euler (diffusers' EDMEulerScheduler), and with S_churn = 0 it is
HeunDiscreteScheduler(use_karras_sigmas=True) given the same denoiser.
"""

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ddpm_jax.errors import in_range, require
from ddpm_jax.processes.base import Process
from ddpm_jax.samplers.levels import step_noise
from ddpm_jax.samplers.registry import Sampler, register

# denoise(x~, level) -> D(x~, sigma~) at level `level` of the loop's evaluation grid (an int32 scalar).
DenoiseFn = Callable[[jax.Array, jax.Array], jax.Array]


def karras_sigmas(num_steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> np.ndarray:
  """The N + 1 levels sigma_0 = sigma_max > ... > sigma_{N-1} = sigma_min > sigma_N = 0 (float64)."""
  ramp = np.linspace(0.0, 1.0, num_steps)
  inv_min, inv_max = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
  return np.append((inv_max + ramp * (inv_min - inv_max)) ** rho, 0.0)


def churned_sigmas(sigmas: np.ndarray, s_churn: float, s_tmin: float, s_tmax: float) -> np.ndarray:
  """sigma^_i = sigma_i (1 + gamma_i) of Alg. 2 for i < N (gamma_i 0 outside [S_tmin, S_tmax])."""
  n = sigmas.shape[0] - 1
  gamma = min(s_churn / n, np.sqrt(2.0) - 1.0) if n else 0.0
  inside = (sigmas[:-1] >= s_tmin) & (sigmas[:-1] <= s_tmax)
  return sigmas[:-1] * (1.0 + np.where(inside, gamma, 0.0))


def karras_sample(denoise: DenoiseFn, x_T: jax.Array, sigmas: np.ndarray, key: jax.Array | None = None,
                  s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = float('inf'), s_noise: float = 1.0,
                  second_order: bool = True) -> tuple[jax.Array, int]:
  """Alg. 2 (Alg. 1 at s_churn = 0) from x_T ~ N(0, sigma_0^2) over `sigmas` (N + 1 levels ending at 0).

  denoise(x, level) is called at level 2 i for sigma^_i and at level 2 i + 1 for sigma_{i+1} (the
  correction), i.e. on the grid `evaluation_sigmas(sigmas, ...)`. Returns (x_0, network calls).
  """
  sigmas = np.asarray(sigmas, np.float64)
  hats = churned_sigmas(sigmas, s_churn, s_tmin, s_tmax)
  n = sigmas.shape[0] - 1
  dtype = x_T.dtype
  sigma, hat = jnp.asarray(sigmas, dtype), jnp.asarray(hats, dtype)
  noise_std = jnp.asarray(np.sqrt(np.maximum(hats ** 2 - sigmas[:-1] ** 2, 0.0)) * s_noise, dtype)
  corrects = second_order & (sigmas[1:] > 0)
  corrected = jnp.asarray(corrects)
  churns = bool(np.any(hats > sigmas[:-1]))

  def body(i, x):
    if churns:
      x = x + noise_std[i] * step_noise(key, i, x)
    d = (x - denoise(x, 2 * i)) / hat[i]
    x_next = x + (sigma[i + 1] - hat[i]) * d

    def correct():
      d_next = (x_next - denoise(x_next, 2 * i + 1)) / sigma[i + 1]
      return x + (sigma[i + 1] - hat[i]) * 0.5 * (d + d_next)

    return jax.lax.cond(corrected[i], correct, lambda: x_next).astype(dtype)

  return jax.lax.fori_loop(0, n, body, x_T), n + int(corrects.sum())


def evaluation_sigmas(sigmas: np.ndarray, s_churn: float, s_tmin: float, s_tmax: float) -> np.ndarray:
  """The 2 N levels karras_sample may evaluate: sigma^_i at 2 i, sigma_{i+1} at 2 i + 1 (the last one,
  0, is never evaluated; it is kept at sigma_{N-1} so every level maps to a time)."""
  levels = np.empty(2 * (sigmas.shape[0] - 1))
  levels[0::2] = churned_sigmas(sigmas, s_churn, s_tmin, s_tmax)
  levels[1::2] = sigmas[1:]
  levels[-1] = sigmas[-2]
  return levels


class _KarrasSampler(Sampler):
  knobs = ('sampling.num_steps', 'sampling.rho')
  steps_field = 'sampling.num_steps'
  stochastic = False

  @classmethod
  def churn(cls, config) -> tuple[float, float, float, float]:
    """(S_churn, S_tmin, S_tmax, S_noise)."""
    return 0.0, 0.0, float('inf'), 1.0

  @classmethod
  def check(cls, config, process, steps=None):
    super().check(config, process, steps)
    s = config.sampling
    in_range(s.rho, 'sampling.rho', 0, low_open=True)
    if cls.stochastic:
      in_range(s.s_churn, 'sampling.s_churn', 0)
      in_range(s.s_tmin, 'sampling.s_tmin', 0)
      in_range(s.s_tmax, 'sampling.s_tmax', 0, allow_inf=True)
      in_range(s.s_noise, 'sampling.s_noise', 0, low_open=True)
      require(s.s_tmin <= s.s_tmax, f'config.sampling.s_tmin={s.s_tmin} exceeds s_tmax={s.s_tmax}: churn acts on '
              f'the noise levels between them, so set s_tmin <= s_tmax.')

  @classmethod
  def grid(cls, config, process: Process) -> np.ndarray:
    """Karras's sigma~ grid over the process's span."""
    sigma_min, sigma_max = process.sigma_ratio_range()
    return karras_sigmas(config.sampling.num_steps, sigma_min, sigma_max, config.sampling.rho)

  @classmethod
  def build(cls, config, process):
    sigmas = cls.grid(config, process)
    s_churn, s_tmin, s_tmax, s_noise = cls.churn(config)
    ratios = evaluation_sigmas(sigmas, s_churn, s_tmin, s_tmax)
    times = process.times_at_sigma_ratio(ratios)
    alphas = np.asarray(process.marginal(jnp.asarray(times, jnp.float32))[0], np.float64)
    # x~_T = x_T / alpha(t_max) with x_T from the prior: std sigma_0 for VE and EDM, sqrt(1 + sigma_0^2) for VP.
    start_scale = process.prior_std / float(process.marginal(jnp.float32(process.t_max))[0])

    def run(model, x_T, key, frame_steps=(), progress_fn=None, progress_every=0):
      t, alpha = jnp.asarray(times, jnp.float32), jnp.asarray(alphas, x_T.dtype)

      def denoise(x_tilde, level):
        batch_t = jnp.full((x_tilde.shape[0],), t[level], jnp.float32)
        return model.denoise(alpha[level] * x_tilde, batch_t)

      x_0, nfe = karras_sample(denoise, x_T * start_scale, sigmas, key, s_churn, s_tmin, s_tmax, s_noise)
      return x_0, None, nfe

    return run


@register
class EDMHeun(_KarrasSampler):
  """Karras et al.'s deterministic sampler (Alg. 1)."""
  name = 'edm_heun'


@register
class EDMStochastic(_KarrasSampler):
  """Karras et al.'s stochastic sampler (Alg. 2)."""
  name = 'edm_stochastic'
  knobs = _KarrasSampler.knobs + ('sampling.s_churn', 'sampling.s_tmin', 'sampling.s_tmax', 'sampling.s_noise')
  stochastic = True

  @classmethod
  def churn(cls, config):
    s = config.sampling
    return s.s_churn, s.s_tmin, s.s_tmax, s.s_noise
