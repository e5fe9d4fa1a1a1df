"""Fast samplers for an eps-prediction network, each one compiled loop (`lax.fori_loop`).

DPM-Solver++ 2M (Lu et al., 2022), UniPC bh2 of order 2 (Zhao et al., 2023), Euler and Heun
(Karras et al., 2022) integrate the probability-flow ODE over a grid of noise levels, step for
step as diffusers' DPMSolverMultistepScheduler, UniPCMultistepScheduler, EulerDiscreteScheduler
and HeunDiscreteScheduler do (tests/test_solvers.py checks every network input against them).
SDE-DPM-Solver++ 2M integrates the reverse SDE instead, with fresh noise at every step, as
DPMSolverMultistepScheduler(algorithm_type='sde-dpmsolver++') does: the stochastic sampler of an
ancestral chain, in as few steps as the ODE solvers.

One representation serves discrete and continuous-time models: `NoiseLevels`, the grid of
(alpha_i, sigma_i, model_time_i) with x_i = alpha_i x_0 + sigma_i noise. `levels_from_schedule`
builds it from a DDPM `diffusion.Schedule` with diffusers' timestep placement;
`levels_from_marginal` from the marginal of a VP, sub-VP or VE SDE at chosen times. A solver
takes x_T in the model's own space (x_T ~ the prior, e.g. N(0, 1) for VP) and
eps_fn(x, model_time) -> eps, where model_time has shape (B,); class labels and guidance enter
through the eps_fn the caller builds. It returns (x_0, nfe), nfe the network calls made.

The step coefficients are computed once on the host in float64 (the grid is host data), so the
loop body is the network call and a few multiply-adds.
"""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ddpm_jax import diffusion

EpsFn = Callable[[jax.Array, jax.Array], jax.Array]

# diffusers' timestep_spacing (Table 2 of Lin et al., 2023, "Common diffusion noise schedules and
# sample steps are flawed"); 'linspace' is every one of the four schedulers' default.
TIMESTEP_SPACINGS = ('linspace', 'leading', 'trailing')
# How a scheduler family of diffusers places num_steps timesteps on [0, T):
#   multistep (DPMSolverMultistep, UniPCMultistep): num_steps + 1 integer points, the one at 0
#     dropped, so the last step jumps from the smallest kept timestep to clean data;
#   euler (EulerDiscrete, HeunDiscrete): num_steps points from T - 1 down to 0 ('linspace' not
#     rounded, so the network may get fractional timesteps), then one step to clean data.
GRIDS = ('multistep', 'euler')
# diffusers' DPMSolverMultistepScheduler takes its last step at first order (lower_order_final)
# when it runs fewer steps than this.
LOWER_ORDER_FINAL_MAX_STEPS = 15


class NoiseLevels(NamedTuple):
  """The grid a solver walks, noisiest level first: float64 host arrays of length num_steps + 1.

  x_i = alpha[i] x_0 + sigma[i] noise at level i, and model_time[i] is the network's time input
  there (the last level's is never used). sigma[-1] may be 0: the clean data, where diffusers'
  schedulers end (final_sigmas_type 'zero'). Host data: build it outside jit; the solvers turn
  it into constants of the compiled loop.
  """
  alpha: np.ndarray
  sigma: np.ndarray
  model_time: np.ndarray

  @property
  def num_steps(self) -> int:
    return self.alpha.shape[0] - 1


def _checked(levels: NoiseLevels) -> NoiseLevels:
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


def discrete_timesteps(num_timesteps: int, num_steps: int, spacing: str = 'linspace',
                       grid: str = 'multistep', steps_offset: int = 0) -> np.ndarray:
  """The num_steps timesteps (float64, decreasing) at which diffusers' schedulers call the network.

  grid 'multistep' follows DPMSolverMultistepScheduler and UniPCMultistepScheduler, 'euler'
  EulerDiscreteScheduler and HeunDiscreteScheduler (see GRIDS); spacing and steps_offset (added
  for 'leading') are theirs.
  """
  T, n = num_timesteps, num_steps
  if not 1 <= n <= T:
    raise ValueError(f'num_steps={n} must be between 1 and the schedule\'s {T} timesteps.')
  if grid not in GRIDS:
    raise ValueError(f'Unknown grid {grid!r}; valid: {", ".join(GRIDS)}.')
  if spacing == 'linspace':
    if grid == 'multistep':
      steps = np.linspace(0, T - 1, n + 1).round()[::-1][:-1]
    else:
      steps = np.linspace(0, T - 1, n, dtype=np.float32)[::-1].astype(np.float64)
  elif spacing == 'leading':
    points = n + 1 if grid == 'multistep' else n
    steps = (np.arange(points) * (T // points))[::-1][:n] + steps_offset  # multistep drops the 0.
  elif spacing == 'trailing':
    steps = np.arange(T, 0, -T / n).round() - 1
  else:
    raise ValueError(f'Unknown timestep spacing {spacing!r}; valid: {", ".join(TIMESTEP_SPACINGS)}.')
  return np.ascontiguousarray(steps, dtype=np.float64)


def levels_from_schedule(schedule: diffusion.Schedule, num_steps: int, spacing: str = 'linspace',
                         grid: str = 'multistep', steps_offset: int = 0) -> NoiseLevels:
  """The levels of a discrete DDPM schedule at diffusers' timesteps, ending at clean data.

  As diffusers does, sigma / alpha = sqrt((1 - abar) / abar) is interpolated linearly between
  integer timesteps (for the fractional ones of grid 'euler'); the model times are the timesteps.
  """
  steps = discrete_timesteps(schedule.num_timesteps, num_steps, spacing, grid, steps_offset)
  abar = np.asarray(schedule.alphas_cumprod, dtype=np.float64)
  ratio = np.sqrt((1.0 - abar) / abar)
  ratio = np.append(np.interp(steps, np.arange(abar.shape[0]), ratio), 0.0)
  alpha = 1.0 / np.sqrt(ratio ** 2 + 1.0)
  return _checked(NoiseLevels(alpha, ratio * alpha, np.append(steps, 0.0)))


def levels_from_marginal(mean_std_fn: Callable, model_time_fn: Callable, times) -> NoiseLevels:
  """The levels of a continuous-time model at `times` (decreasing, e.g. from 1 down to sampling eps).

  mean_std_fn(t) -> (alpha(t), sigma(t)), the marginal's mean coefficient and std (e.g.
  `lambda t: sde.marginal(s, t)`); model_time_fn(t) -> the network's time input. Both get the
  (num_steps + 1,) array of times.
  """
  times = np.asarray(times, dtype=np.float64)
  alpha, sigma = mean_std_fn(times)
  return _checked(NoiseLevels(np.asarray(alpha), np.asarray(sigma), np.asarray(model_time_fn(times))))


def log_snr_uniform_times(mean_std_fn: Callable, num_steps: int, t_start: float, t_end: float,
                          bisections: int = 60) -> np.ndarray:
  """num_steps + 1 times from t_start down to t_end, evenly spaced in log-SNR log(alpha / sigma).

  DPM-Solver's 'logSNR' skip type (Lu et al., 2022, recommended there for low-resolution pixel
  models); log-SNR must strictly fall with t. Inverted by bisection on the host: each of
  `bisections` halvings of [t_end, t_start] gains one bit of t.
  """
  def log_snr(t):
    alpha, sigma = mean_std_fn(t)
    return np.log(np.asarray(alpha, np.float64)) - np.log(np.asarray(sigma, np.float64))

  ends = log_snr(np.array([t_start, t_end], dtype=np.float64))
  if not ends[0] < ends[1]:
    raise ValueError(f'log-SNR must fall from t_end={t_end} to t_start={t_start}.')
  target = np.linspace(ends[0], ends[1], num_steps + 1)[1:-1]
  low, high = np.full_like(target, t_end), np.full_like(target, t_start)
  for _ in range(bisections):
    mid = 0.5 * (low + high)
    above = log_snr(mid) > target  # mid is still too early (less noisy than the target).
    low, high = np.where(above, mid, low), np.where(above, high, mid)
  return np.concatenate([[t_start], 0.5 * (low + high), [t_end]])


# ---------------------------------------------------------------------------
# The loops.


def _log_snr(levels: NoiseLevels) -> np.ndarray:
  """lambda_i = log(alpha_i / sigma_i); +inf at a level of sigma 0."""
  with np.errstate(divide='ignore'):
    return np.log(levels.alpha) - np.log(levels.sigma)


def _data_prediction(x, eps, alpha, sigma, clip_denoised: bool):
  """x_0 predicted from eps at level (alpha, sigma), clipped to the data range [-1, 1] if asked."""
  x0 = (x - sigma * eps) / alpha
  return jnp.clip(x0, -1.0, 1.0) if clip_denoised else x0


def _time_batch(model_time: jax.Array, x: jax.Array) -> jax.Array:
  """The network's time input for every example of x: shape (B,)."""
  return jnp.full((x.shape[0],), model_time, dtype=jnp.float32)


class _MultistepCoefs(NamedTuple):
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


def _multistep_loop(levels: NoiseLevels, coefs: _MultistepCoefs, eps_fn: EpsFn, x_T: jax.Array,
                    clip_denoised: bool, noise_scale: np.ndarray | None = None,
                    key: jax.Array | None = None) -> jax.Array:
  """One network call per level 0..N-1; the carry holds x_i, the corrected x_{i-1}, m_{i-1}, m_{i-2}.

  With noise_scale (N,), step i adds noise_scale[i] * step_noise(key, i) to x_{i+1}.
  """
  dtype = x_T.dtype
  alpha, sigma = jnp.asarray(levels.alpha, dtype), jnp.asarray(levels.sigma, dtype)
  model_time = jnp.asarray(levels.model_time, jnp.float32)  # Not x's dtype: bfloat16 rounds 999 to 1000.
  c = _MultistepCoefs(*(jnp.asarray(a, dtype) for a in coefs))
  scale = None if noise_scale is None else jnp.asarray(noise_scale, dtype)

  def body(i, carry):
    x, x_last, m1, m2 = carry
    eps = eps_fn(x, _time_batch(model_time[i], x))
    m = _data_prediction(x, eps, alpha[i], sigma[i], clip_denoised)
    x = c.keep[i] * x + c.x[i] * x_last + c.m1[i] * m1 + c.dm[i] * (m - m1) + c.dm2[i] * (m1 - m2)
    x_next = c.px[i] * x + c.pm[i] * m + c.pdm[i] * (m - m1)
    if scale is not None:
      x_next = x_next + scale[i] * step_noise(key, i, x)
    return x_next.astype(dtype), x, m, m1

  zeros = jnp.zeros_like(x_T)
  x_0, _, _, _ = jax.lax.fori_loop(0, levels.num_steps, body, (x_T, x_T, zeros, zeros))
  return x_0


def _predictor_coefs(levels: NoiseLevels, lam: np.ndarray, second_order: np.ndarray):
  """px, pm, pdm of the data-prediction multistep step from level i to i+1.

  First order (DDIM): x_{i+1} = sigma_{i+1}/sigma_i x_i - alpha_{i+1} expm1(-h) m_i, h = lambda_{i+1}
  - lambda_i. Second order adds -alpha_{i+1} expm1(-h) / (2 r) (m_i - m_{i-1}), r = h_{i-1} / h: the
  midpoint DPM-Solver++ 2M step, and UniP-2 with B(h) = expm1(-h) (bh2), the same formula.
  """
  a, s = levels.alpha, levels.sigma
  h = lam[1:] - lam[:-1]
  phi = np.expm1(-h)
  px, pm = s[1:] / s[:-1], -a[1:] * phi
  pdm = np.where(second_order, -0.5 * a[1:] * phi / _step_ratios(h, second_order), 0.0)
  return px, pm, pdm


def _step_ratios(h: np.ndarray, second_order: np.ndarray) -> np.ndarray:
  """r_i = h_{i-1} / h_i of a multistep step's extrapolation (1 where the step is first order)."""
  r = np.ones_like(h)
  r[1:] = h[:-1] / h[1:]
  return np.where(second_order, r, 1.0)


def _dpm_solver_orders(levels: NoiseLevels, lower_order_final: bool) -> np.ndarray:
  """Which steps of DPM-Solver++ 2M (ODE or SDE) are second order: all but the first (no history),
  and but the last when it ends at sigma = 0 or when lower_order_final with few steps (diffusers)."""
  n = levels.num_steps
  second = np.arange(n) >= 1
  if _last_step_first_order(levels) or (lower_order_final and n < LOWER_ORDER_FINAL_MAX_STEPS):
    second[-1] = False
  return second


def _last_step_first_order(levels: NoiseLevels) -> bool:
  """A step to sigma = 0 has infinite log-SNR step h: it must be first order (x_N = m_{N-1})."""
  return levels.sigma[-1] == 0


def dpm_solver_pp_2m(levels: NoiseLevels, eps_fn: EpsFn, x_T: jax.Array, lower_order_final: bool = True,
                     clip_denoised: bool = False) -> tuple[jax.Array, int]:
  """DPM-Solver++ 2M (multistep, second order, data prediction, midpoint): num_steps calls.

  As diffusers' DPMSolverMultistepScheduler(algorithm_type='dpmsolver++', solver_order=2): the
  first step is first order (no history yet), and so is the last one when lower_order_final and
  num_steps < LOWER_ORDER_FINAL_MAX_STEPS, or when it ends at sigma = 0. clip_denoised clips the
  data prediction to [-1, 1] (diffusers' thresholding with sample_max_value 1, off by default).
  Returns (x_0, nfe).
  """
  levels = _checked(levels)
  n, lam = levels.num_steps, _log_snr(levels)
  second = _dpm_solver_orders(levels, lower_order_final)
  zero = np.zeros(n)
  coefs = _MultistepCoefs(np.ones(n), zero, zero, zero, zero, *_predictor_coefs(levels, lam, second))
  return _multistep_loop(levels, coefs, eps_fn, x_T, clip_denoised), n


def sde_dpm_solver_pp_2m(levels: NoiseLevels, eps_fn: EpsFn, x_T: jax.Array, key: jax.Array,
                         lower_order_final: bool = True, clip_denoised: bool = False) -> tuple[jax.Array, int]:
  """SDE-DPM-Solver++ 2M (Lu et al., 2022, section 5): the reverse SDE in num_steps calls.

  The exact solution of the reverse SDE's linear part over each step, with the data prediction
  extrapolated as in dpm_solver_pp_2m (midpoint): x_{i+1} = sigma_{i+1}/sigma_i e^{-h} x_i +
  alpha_{i+1} (1 - e^{-2h}) (m_i + (m_i - m_{i-1}) / (2 r)) + sigma_{i+1} sqrt(1 - e^{-2h}) z_i,
  h = lambda_{i+1} - lambda_i, z_i = step_noise(key, i, x). Step orders as dpm_solver_pp_2m's. As
  diffusers' DPMSolverMultistepScheduler(algorithm_type='sde-dpmsolver++', solver_order=2) given
  variance_noise z_i. Returns (x_0, nfe).
  """
  levels = _checked(levels)
  n, lam = levels.num_steps, _log_snr(levels)
  second = _dpm_solver_orders(levels, lower_order_final)
  a, s = levels.alpha, levels.sigma
  h = lam[1:] - lam[:-1]
  decay = -np.expm1(-2.0 * h)  # 1 - e^{-2h}; 1 at a step to clean data (h = inf).
  pm = a[1:] * decay
  pdm = np.where(second, 0.5 * pm / _step_ratios(h, second), 0.0)
  px = s[1:] / s[:-1] * np.exp(-h)
  zero = np.zeros(n)
  coefs = _MultistepCoefs(np.ones(n), zero, zero, zero, zero, px, pm, pdm)
  noise_scale = s[1:] * np.sqrt(decay)
  return _multistep_loop(levels, coefs, eps_fn, x_T, clip_denoised, noise_scale, key), n


def _unic_coefs(levels: NoiseLevels, lam: np.ndarray, order: np.ndarray):
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


def unipc(levels: NoiseLevels, eps_fn: EpsFn, x_T: jax.Array, lower_order_final: bool = True,
          clip_denoised: bool = False) -> tuple[jax.Array, int]:
  """UniPC (bh2, order 2, data prediction): num_steps calls, as diffusers' UniPCMultistepScheduler.

  Each step predicts with UniP (order 1 at the first step, and at the last one when
  lower_order_final or when it ends at sigma = 0), then, from the next network call's output,
  corrects that prediction with UniC of the same order before the next step: the corrector
  costs no call. clip_denoised: see dpm_solver_pp_2m. Returns (x_0, nfe).
  """
  levels = _checked(levels)
  n, lam = levels.num_steps, _log_snr(levels)
  second = np.arange(n) >= 1
  if lower_order_final or _last_step_first_order(levels):
    second[-1] = False
  predictor_order = np.where(second, 2, 1)
  corrector_order = np.append(1, predictor_order[:-1])
  coefs = _MultistepCoefs(*_unic_coefs(levels, lam, corrector_order), *_predictor_coefs(levels, lam, second))
  return _multistep_loop(levels, coefs, eps_fn, x_T, clip_denoised), n


def _karras_derivative(x_tilde, eps, sigma_tilde, clip_denoised: bool):
  """dx~/dsigma~ = (x~ - x_0) / sigma~ for x~ = x / alpha, sigma~ = sigma / alpha; eps when unclipped."""
  if not clip_denoised:
    return eps
  x0 = jnp.clip(x_tilde - sigma_tilde * eps, -1.0, 1.0)
  return (x_tilde - x0) / sigma_tilde


def euler(levels: NoiseLevels, eps_fn: EpsFn, x_T: jax.Array, clip_denoised: bool = False) -> tuple[jax.Array, int]:
  """Euler's method on x~ = x / alpha against sigma~ = sigma / alpha: num_steps calls.

  As diffusers' EulerDiscreteScheduler (s_churn = 0): the network gets alpha_i x~ = x_i, and
  x~_{i+1} = x~_i + eps (sigma~_{i+1} - sigma~_i). clip_denoised clips the x_0 behind the
  derivative to [-1, 1]. Returns (x_0, nfe).
  """
  levels = _checked(levels)
  dtype = x_T.dtype
  alpha, model_time = jnp.asarray(levels.alpha, dtype), jnp.asarray(levels.model_time, jnp.float32)
  ratio = levels.sigma / levels.alpha
  sig, dt = jnp.asarray(ratio, dtype), jnp.asarray(np.diff(ratio), dtype)

  def body(i, x_tilde):
    eps = eps_fn(alpha[i] * x_tilde, _time_batch(model_time[i], x_tilde))
    return (x_tilde + _karras_derivative(x_tilde, eps, sig[i], clip_denoised) * dt[i]).astype(dtype)

  x_tilde = jax.lax.fori_loop(0, levels.num_steps, body, x_T / alpha[0])
  return alpha[-1] * x_tilde, levels.num_steps


def heun(levels: NoiseLevels, eps_fn: EpsFn, x_T: jax.Array, clip_denoised: bool = False) -> tuple[jax.Array, int]:
  """Heun's second-order method on x~ = x / alpha against sigma~ (Karras et al., 2022, Alg. 1).

  Each step takes an Euler step, then (unless it lands on sigma = 0) corrects it with the mean
  of the two derivatives: 2 calls per step except a last one to clean data, as diffusers'
  HeunDiscreteScheduler (2 num_steps - 1 calls on its grids). Returns (x_0, nfe).
  """
  levels = _checked(levels)
  dtype = x_T.dtype
  alpha, model_time = jnp.asarray(levels.alpha, dtype), jnp.asarray(levels.model_time, jnp.float32)
  ratio = levels.sigma / levels.alpha
  sig, dt = jnp.asarray(ratio, dtype), jnp.asarray(np.diff(ratio), dtype)
  corrects = levels.sigma[1:] > 0
  corrected = jnp.asarray(corrects)

  def body(i, x_tilde):
    eps = eps_fn(alpha[i] * x_tilde, _time_batch(model_time[i], x_tilde))
    d = _karras_derivative(x_tilde, eps, sig[i], clip_denoised)
    x_euler = x_tilde + d * dt[i]

    def correct():
      eps_next = eps_fn(alpha[i + 1] * x_euler, _time_batch(model_time[i + 1], x_euler))
      d_next = _karras_derivative(x_euler, eps_next, sig[i + 1], clip_denoised)
      return x_tilde + 0.5 * (d + d_next) * dt[i]

    return jax.lax.cond(corrected[i], correct, lambda: x_euler).astype(dtype)

  x_tilde = jax.lax.fori_loop(0, levels.num_steps, body, x_T / alpha[0])
  return alpha[-1] * x_tilde, levels.num_steps + int(corrects.sum())


class Solver(NamedTuple):
  """A solver, the grid of diffusers' scheduler it follows (for levels_from_schedule), and whether
  it draws noise (then fn takes a key after x_T)."""
  fn: Callable[..., tuple[jax.Array, int]]
  grid: str
  stochastic: bool = False


SOLVERS = {
    'dpm_solver_pp_2m': Solver(dpm_solver_pp_2m, 'multistep'),
    'sde_dpm_solver_pp_2m': Solver(sde_dpm_solver_pp_2m, 'multistep', stochastic=True),
    'unipc': Solver(unipc, 'multistep'),
    'euler': Solver(euler, 'euler'),
    'heun': Solver(heun, 'euler'),
}


def solve(name: str, levels: NoiseLevels, eps_fn: EpsFn, x_T: jax.Array, key: jax.Array,
          clip_denoised: bool = False) -> tuple[jax.Array, int]:
  """Runs SOLVERS[name] (key used only by a stochastic one). Returns (x_0, nfe)."""
  solver = SOLVERS[name]
  if solver.stochastic:
    return solver.fn(levels, eps_fn, x_T, key, clip_denoised=clip_denoised)
  return solver.fn(levels, eps_fn, x_T, clip_denoised=clip_denoised)
