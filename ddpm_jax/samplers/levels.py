"""The grid of noise levels the fast solvers walk, and the multistep loop they share.

`NoiseLevels` is the grid of (alpha_i, sigma_i, t_i) with x_i = alpha_i x_0 + sigma_i noise, t_i the
process time there (the time the model interface eps_fn(x, t) takes). A process builds it
(`Process.solver_levels`): the ddpm chain at diffusers' timesteps, the others at times spaced in
log-SNR. A solver takes x_T in the
model's own space (x_T ~ the prior) and eps_fn(x, t), t of shape (B,); class labels and guidance
enter through the eps_fn. The step coefficients are computed once on the host in float64 (the grid
is host data), so each loop body is the network call and a few multiply-adds.
"""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ddpm_jax.errors import require
from ddpm_jax.processes.base import EpsFn
from ddpm_jax.samplers.registry import Constraint, Sampler

# diffusers' DPMSolverMultistepScheduler takes its last step at first order (lower_order_final)
# when it runs fewer steps than this.
LOWER_ORDER_FINAL_MAX_STEPS = 15


class NoiseLevels(NamedTuple):
  """The grid a solver walks, noisiest level first: float64 host arrays of length num_steps + 1.

  x_i = alpha[i] x_0 + sigma[i] noise at level i, and model_time[i] is the process time there
  (the time the model interface takes; the last level's is never used). sigma[-1] may be 0: the clean data, where diffusers'
  schedulers end (final_sigmas_type 'zero'). Host data: build it outside jit; the solvers turn
  it into constants of the compiled loop.
  """
  alpha: np.ndarray
  sigma: np.ndarray
  model_time: np.ndarray

  @property
  def num_steps(self) -> int:
    return self.alpha.shape[0] - 1


def checked(levels: NoiseLevels) -> NoiseLevels:
  """Levels as float64 arrays, refused unless the log-SNR log(alpha / sigma) strictly rises."""
  alpha, sigma, model_time = (np.asarray(a, dtype=np.float64) for a in levels)
  if not (alpha.ndim == 1 and alpha.shape == sigma.shape == model_time.shape and alpha.shape[0] >= 2):
    raise ValueError(f'alpha, sigma and model_time must be 1-D arrays of one length >= 2, got shapes '
                     f'{alpha.shape}, {sigma.shape} and {model_time.shape}.')
  if not (np.all(np.isfinite(alpha) & (alpha > 0)) and np.all(np.isfinite(sigma) & (sigma >= 0))
          and np.all(sigma[:-1] > 0) and np.all(np.isfinite(model_time))):
    raise ValueError('Noise levels need finite alpha > 0, sigma >= 0 (0 only at the last level) and '
                     'finite model times.')
  if not np.all(np.diff(sigma / alpha) < 0):
    raise ValueError('sigma / alpha must strictly fall along the levels (noisiest first); repeated '
                     'or reversed levels: use fewer steps, or times ordered from T down to the end.')
  return NoiseLevels(alpha, sigma, model_time)


# ---------------------------------------------------------------------------
# The loops.


def log_snr(levels: NoiseLevels) -> np.ndarray:
  """lambda_i = log(alpha_i / sigma_i); +inf at a level of sigma 0."""
  with np.errstate(divide='ignore'):
    return np.log(levels.alpha) - np.log(levels.sigma)


def data_prediction(x, eps, alpha, sigma, clip_denoised: bool):
  """x_0 predicted from eps at level (alpha, sigma), clipped to the data range [-1, 1] if asked."""
  x0 = (x - sigma * eps) / alpha
  return jnp.clip(x0, -1.0, 1.0) if clip_denoised else x0


def time_batch(model_time: jax.Array, x: jax.Array) -> jax.Array:
  """The network's time input for every example of x: shape (B,)."""
  return jnp.full((x.shape[0],), model_time, dtype=jnp.float32)


class MultistepCoefs(NamedTuple):
  """Per-step coefficients (N,) of the multistep loop, with m_k the data prediction at level k.

  Corrector (UniC) at step i: x_i <- keep x_i + x x_{i-1} + m1 m_{i-1} + dm (m_i - m_{i-1})
  + dm2 (m_{i-1} - m_{i-2}). Predictor: x_{i+1} = px x_i + pm m_i + pdm (m_i - m_{i-1}).
  """
  keep: np.ndarray
  x: np.ndarray
  m1: np.ndarray
  dm: np.ndarray
  dm2: np.ndarray
  px: np.ndarray
  pm: np.ndarray
  pdm: np.ndarray


def step_noise(key: jax.Array, step: int, like: jax.Array) -> jax.Array:
  """The standard normal noise a stochastic solver adds at `step`: drawn with fold_in(key, step)."""
  return jax.random.normal(jax.random.fold_in(key, step), like.shape, like.dtype)


def multistep_loop(levels: NoiseLevels, coefs: MultistepCoefs, eps_fn: EpsFn, x_T: jax.Array,
                    clip_denoised: bool, noise_scale: np.ndarray | None = None,
                    key: jax.Array | None = None, constrain: Constraint | None = None) -> jax.Array:
  """One network call per level 0..N-1; the carry holds x_i, the corrected x_{i-1}, m_{i-1}, m_{i-2}.

  With noise_scale (N,), step i adds noise_scale[i] * step_noise(key, i) to x_{i+1}. With `constrain`
  (an edit: editing.py), x at level k is constrain(x, alpha_k, sigma_k, k) after each step reaches it,
  and again after the corrector changes it.
  """
  dtype = x_T.dtype
  alpha, sigma = jnp.asarray(levels.alpha, dtype), jnp.asarray(levels.sigma, dtype)
  model_time = jnp.asarray(levels.model_time, jnp.float32)  # Not x's dtype: bfloat16 rounds 999 to 1000.
  c = MultistepCoefs(*(jnp.asarray(a, dtype) for a in coefs))
  scale = None if noise_scale is None else jnp.asarray(noise_scale, dtype)

  def body(i, carry):
    x, x_last, m1, m2 = carry
    eps = eps_fn(x, time_batch(model_time[i], x))
    m = data_prediction(x, eps, alpha[i], sigma[i], clip_denoised)
    x = c.keep[i] * x + c.x[i] * x_last + c.m1[i] * m1 + c.dm[i] * (m - m1) + c.dm2[i] * (m1 - m2)
    if constrain is not None:  # The corrector (UniC) rebuilt x_i: constrained again, with the same draw.
      x = constrain(x, alpha[i], sigma[i], i)
    x_next = c.px[i] * x + c.pm[i] * m + c.pdm[i] * (m - m1)
    if scale is not None:
      x_next = x_next + scale[i] * step_noise(key, i, x)
    if constrain is not None:
      x_next = constrain(x_next, alpha[i + 1], sigma[i + 1], i + 1)
    return x_next.astype(dtype), x, m, m1

  zeros = jnp.zeros_like(x_T)
  x_0, _, _, _ = jax.lax.fori_loop(0, levels.num_steps, body, (x_T, x_T, zeros, zeros))
  return x_0


def predictor_coefs(levels: NoiseLevels, lam: np.ndarray, second_order: np.ndarray):
  """px, pm, pdm of the data-prediction multistep step from level i to i+1.

  First order (DDIM): x_{i+1} = sigma_{i+1}/sigma_i x_i - alpha_{i+1} expm1(-h) m_i, h = lambda_{i+1}
  - lambda_i. Second order adds -alpha_{i+1} expm1(-h) / (2 r) (m_i - m_{i-1}), r = h_{i-1} / h: the
  midpoint DPM-Solver++ 2M step, and UniP-2 with B(h) = expm1(-h) (bh2), the same formula.
  """
  a, s = levels.alpha, levels.sigma
  h = lam[1:] - lam[:-1]
  phi = np.expm1(-h)
  px, pm = s[1:] / s[:-1], -a[1:] * phi
  pdm = np.where(second_order, -0.5 * a[1:] * phi / step_ratios(h, second_order), 0.0)
  return px, pm, pdm


def step_ratios(h: np.ndarray, second_order: np.ndarray) -> np.ndarray:
  """r_i = h_{i-1} / h_i of a multistep step's extrapolation (1 where the step is first order)."""
  r = np.ones_like(h)
  r[1:] = h[:-1] / h[1:]
  return np.where(second_order, r, 1.0)


def last_step_first_order(levels: NoiseLevels) -> bool:
  """A step to sigma = 0 has infinite log-SNR step h: it must be first order (x_N = m_{N-1})."""
  return levels.sigma[-1] == 0


class LevelSolver(Sampler):
  """A fast solver over the process's grid of noise levels (Process.solver_levels): its steps are
  config.sampling.num_steps, its grid spaced by config.sampling.spacing; `grid` names the diffusers
  scheduler family whose timesteps it follows on the ddpm chain."""

  knobs = ('sampling.num_steps', 'sampling.spacing')
  steps_field = 'sampling.num_steps'
  grid: str = 'multistep'
  # solver(levels, eps_fn, x_T[, key], clip_denoised=) -> (x_0, network calls); a stochastic one takes the key.
  solver: Callable = None
  stochastic: bool = False

  @classmethod
  def check(cls, config, process, steps=None):
    super().check(config, process, steps)
    s = config.sampling
    require(s.spacing in process.spacings, f'Unknown config.sampling.spacing for process {process.name} '
            f'{s.spacing!r}; valid: {", ".join(process.spacings)}.')
    limit = process.max_solver_steps(config)
    if limit is not None:
      field = 'config.sampling.num_steps' if steps is None else f'the steps of config.eval.sampler_sweep\'s {cls.name}'
      steps = s.num_steps if steps is None else steps
      require(steps <= limit, f'{field}={steps} must be between 1 and config.diffusion.num_timesteps={limit}: '
              f'set the steps in that range.')

  constrainable = True

  @classmethod
  def solve(cls, levels: NoiseLevels, eps_fn: EpsFn, x_T: jax.Array, key: jax.Array,
            clip_denoised: bool, constrain: Constraint | None = None) -> tuple[jax.Array, int]:
    keys = (key,) if cls.stochastic else ()
    return cls.solver(levels, eps_fn, x_T, *keys, clip_denoised=clip_denoised, constrain=constrain)

  @classmethod
  def build(cls, config, process):
    levels = checked(NoiseLevels(*process.solver_levels(config.sampling.num_steps, config.sampling.spacing, cls.grid)))
    clip = config.diffusion.clip_denoised

    def run(model, x_T, key, frame_steps=(), progress_fn=None, progress_every=0, constrain=None):
      x_0, nfe = cls.solve(levels, model.eps, x_T * process.prior_std, key, clip, constrain)
      return x_0, None, nfe

    return run
