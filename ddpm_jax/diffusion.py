"""The diffusion maths of DDPM (Ho et al., 2020) as pure, jit-able functions.

Timesteps are integers t in [0, T) indexing the schedule arrays; t = 0 is the
least noisy step. The model enters as a callable `model_fn(x_t, t) -> eps`,
never as a network, so everything here composes with jit, vmap and grad.
"""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

ModelFn = Callable[[jax.Array, jax.Array], jax.Array]

MODEL_VAR_TYPES = ('fixedlarge', 'fixedsmall')


class Schedule(NamedTuple):
  """A variance schedule and every quantity derived from it (float32 arrays of length T)."""
  betas: jax.Array
  alphas_cumprod: jax.Array
  alphas_cumprod_prev: jax.Array
  sqrt_alphas_cumprod: jax.Array
  sqrt_one_minus_alphas_cumprod: jax.Array
  sqrt_recip_alphas_cumprod: jax.Array
  sqrt_recipm1_alphas_cumprod: jax.Array
  posterior_variance: jax.Array
  # log of the posterior variance with its t = 0 value (zero) replaced by the t = 1 value.
  posterior_log_variance_clipped: jax.Array
  posterior_mean_coef1: jax.Array
  posterior_mean_coef2: jax.Array

  @property
  def num_timesteps(self) -> int:
    return self.betas.shape[0]


# Largest beta of the schedules that would otherwise reach 1 (cosine, jsd): a beta of 1 zeroes
# alphas_cumprod and makes x_0 unrecoverable from x_T (as in Nichol & Dhariwal 2021 and diffusers).
MAX_BETA = 0.999


def linear_betas(num_timesteps: int, beta_start: float, beta_end: float) -> np.ndarray:
  """Betas evenly spaced from beta_start to beta_end (the DDPM paper's schedule)."""
  return np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)


def quad_betas(num_timesteps: int, beta_start: float, beta_end: float) -> np.ndarray:
  """Square roots of the betas evenly spaced, then squared (the official DDPM code's 'quad').

  The same definition as diffusers' 'scaled_linear'.
  """
  return np.linspace(np.sqrt(beta_start), np.sqrt(beta_end), num_timesteps, dtype=np.float64) ** 2


def cosine_betas(num_timesteps: int, beta_start: float = 0.0, beta_end: float = 0.0,
                 s: float = 0.008) -> np.ndarray:
  """Nichol & Dhariwal (2021): alphas_cumprod follows cos^2 of (t/T + s)/(1 + s) * pi/2.

  beta_t = 1 - abar((t+1)/T) / abar(t/T), capped at MAX_BETA; beta_start and beta_end
  are ignored. Identical to diffusers' 'squaredcos_cap_v2'.
  """
  del beta_start, beta_end
  alpha_bar = np.cos((np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps + s)
                     / (1.0 + s) * np.pi / 2) ** 2
  return np.minimum(1.0 - alpha_bar[1:] / alpha_bar[:-1], MAX_BETA)


def sigmoid_betas(num_timesteps: int, beta_start: float, beta_end: float) -> np.ndarray:
  """beta_start + (beta_end - beta_start) * sigmoid(x), x evenly spaced over [-6, 6].

  The 'sigmoid' of the DDIM code's get_beta_schedule; diffusers' 'sigmoid' (from GeoDiff)
  is the same formula.
  """
  x = np.linspace(-6.0, 6.0, num_timesteps, dtype=np.float64)
  return beta_start + (beta_end - beta_start) / (1.0 + np.exp(-x))


def const_betas(num_timesteps: int, beta_start: float, beta_end: float) -> np.ndarray:
  """Every beta equal to beta_end (the official DDPM code's 'const'); beta_start is ignored."""
  del beta_start
  return np.full(num_timesteps, beta_end, dtype=np.float64)


def jsd_betas(num_timesteps: int, beta_start: float = 0.0, beta_end: float = 0.0) -> np.ndarray:
  """1/T, 1/(T-1), ..., 1/2, then MAX_BETA (Sohl-Dickstein et al. 2015; the DDPM code's 'jsd').

  The DDPM code ends on exactly 1, which zeroes alphas_cumprod and makes an eps model's x_0
  prediction divide by zero at the last step; it is capped at MAX_BETA like cosine.
  beta_start and beta_end are ignored.
  """
  del beta_start, beta_end
  return np.minimum(1.0 / np.arange(num_timesteps, 0, -1, dtype=np.float64), MAX_BETA)


# Schedule name -> function(num_timesteps, beta_start, beta_end) -> float64 betas.
BETA_SCHEDULES: dict[str, Callable[[int, float, float], np.ndarray]] = {
    'linear': linear_betas,
    'quad': quad_betas,
    'cosine': cosine_betas,
    'sigmoid': sigmoid_betas,
    'const': const_betas,
    'jsd': jsd_betas,
}


def make_schedule(betas: np.ndarray) -> Schedule:
  """Derives every schedule quantity in float64, then stores it as float32."""
  betas = np.asarray(betas, dtype=np.float64)
  if betas.ndim != 1 or betas.shape[0] < 2 or not np.all((betas > 0) & (betas < 1)):
    raise ValueError('betas must be a 1-D array of at least 2 values, each in (0, 1).')
  alphas_cumprod = np.cumprod(1.0 - betas)
  if not (np.all(np.diff(alphas_cumprod) < 0) and alphas_cumprod[-1] > 0):
    raise ValueError(
        'alphas_cumprod must strictly decrease and stay above 0: a beta is below float64 '
        'resolution (~1e-16), so 1 - beta rounds to 1, or the product underflows to 0. Raise '
        'the tiny betas, or lower the large betas or the number of timesteps.')
  alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
  posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
  posterior_log_variance_clipped = np.log(np.append(posterior_variance[1], posterior_variance[1:]))
  arrays = dict(
      betas=betas,
      alphas_cumprod=alphas_cumprod,
      alphas_cumprod_prev=alphas_cumprod_prev,
      sqrt_alphas_cumprod=np.sqrt(alphas_cumprod),
      sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - alphas_cumprod),
      sqrt_recip_alphas_cumprod=np.sqrt(1.0 / alphas_cumprod),
      sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / alphas_cumprod - 1.0),
      posterior_variance=posterior_variance,
      posterior_log_variance_clipped=posterior_log_variance_clipped,
      posterior_mean_coef1=betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod),
      posterior_mean_coef2=(1.0 - alphas_cumprod_prev) * np.sqrt(1.0 - betas) / (1.0 - alphas_cumprod),
  )
  return Schedule(**{k: jnp.asarray(v, dtype=jnp.float32) for k, v in arrays.items()})


def schedule_from_config(diffusion_config) -> Schedule:
  """Builds the schedule named by `config.diffusion`."""
  betas_fn = BETA_SCHEDULES[diffusion_config.schedule]
  return make_schedule(betas_fn(diffusion_config.num_timesteps, diffusion_config.beta_start,
                                diffusion_config.beta_end))


def _expand(x: jax.Array, ndim: int) -> jax.Array:
  """Appends unit axes to a per-example array to broadcast against a batch of rank ndim."""
  return x.reshape(x.shape + (1,) * (ndim - x.ndim))


def _at(values: jax.Array, t: jax.Array, ndim: int) -> jax.Array:
  """values[t] shaped (batch, 1, ..., 1)."""
  return _expand(values[t], ndim)


def q_mean_variance(schedule: Schedule, x0: jax.Array, t: jax.Array):
  """Mean, variance and log variance of q(x_t | x_0)."""
  mean = _at(schedule.sqrt_alphas_cumprod, t, x0.ndim) * x0
  variance = _at(schedule.sqrt_one_minus_alphas_cumprod, t, x0.ndim) ** 2  # Exact near t = 0.
  return mean, variance, jnp.log(variance)


def q_sample(schedule: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
  """Draws x_t ~ q(x_t | x_0) with the given standard normal noise."""
  return (_at(schedule.sqrt_alphas_cumprod, t, x0.ndim) * x0
          + _at(schedule.sqrt_one_minus_alphas_cumprod, t, x0.ndim) * noise)


def q_posterior_mean_variance(schedule: Schedule, x0: jax.Array, x_t: jax.Array, t: jax.Array):
  """Mean, variance and clipped log variance of the posterior q(x_{t-1} | x_t, x_0)."""
  mean = (_at(schedule.posterior_mean_coef1, t, x_t.ndim) * x0
          + _at(schedule.posterior_mean_coef2, t, x_t.ndim) * x_t)
  variance = _at(schedule.posterior_variance, t, x_t.ndim)
  log_variance = _at(schedule.posterior_log_variance_clipped, t, x_t.ndim)
  return mean, variance, log_variance


def predict_x0_from_eps(schedule: Schedule, x_t: jax.Array, t: jax.Array, eps: jax.Array) -> jax.Array:
  """Inverts q_sample: the x_0 that, with noise eps, gives x_t."""
  return (_at(schedule.sqrt_recip_alphas_cumprod, t, x_t.ndim) * x_t
          - _at(schedule.sqrt_recipm1_alphas_cumprod, t, x_t.ndim) * eps)


def model_variance(schedule: Schedule, t: jax.Array, ndim: int, model_var_type: str):
  """Variance and log variance of p(x_{t-1} | x_t) for a fixed-variance model."""
  if model_var_type == 'fixedlarge':
    # beta_t, with the t = 0 entry set to the posterior variance at t = 1 for a good decoder.
    variance = jnp.append(schedule.posterior_variance[1:2], schedule.betas[1:])
    log_variance = jnp.log(variance)
  elif model_var_type == 'fixedsmall':
    variance = schedule.posterior_variance
    log_variance = schedule.posterior_log_variance_clipped
  else:
    raise ValueError(f'Unknown model_var_type {model_var_type!r}; valid: {", ".join(MODEL_VAR_TYPES)}.')
  return _at(variance, t, ndim), _at(log_variance, t, ndim)


def p_mean_variance(schedule: Schedule, model_fn: ModelFn, x_t: jax.Array, t: jax.Array,
                    model_var_type: str = 'fixedlarge', clip_denoised: bool = True):
  """Mean, variance, log variance and predicted x_0 of p(x_{t-1} | x_t) for an eps model."""
  eps = model_fn(x_t, t)
  pred_x0 = predict_x0_from_eps(schedule, x_t, t, eps)
  if clip_denoised:
    pred_x0 = jnp.clip(pred_x0, -1.0, 1.0)
  mean, _, _ = q_posterior_mean_variance(schedule, pred_x0, x_t, t)
  variance, log_variance = model_variance(schedule, t, x_t.ndim, model_var_type)
  return mean, variance, log_variance, pred_x0


def p_sample(schedule: Schedule, model_fn: ModelFn, x_t: jax.Array, t: jax.Array,
             noise: jax.Array, model_var_type: str = 'fixedlarge', clip_denoised: bool = True):
  """One reverse step: x_{t-1} ~ p(x_{t-1} | x_t), with no noise added at t = 0.

  Returns (x_{t-1}, predicted x_0).
  """
  mean, _, log_variance, pred_x0 = p_mean_variance(
      schedule, model_fn, x_t, t, model_var_type, clip_denoised)
  nonzero = _expand((t > 0).astype(x_t.dtype), x_t.ndim)
  return mean + nonzero * jnp.exp(0.5 * log_variance) * noise, pred_x0


def ddim_step(schedule: Schedule, model_fn: ModelFn, x_t: jax.Array, t: jax.Array,
              t_prev: jax.Array, noise: jax.Array, eta: float = 0.0, clip_denoised: bool = True):
  """One DDIM step (Song et al., 2021, eq. 12) from timestep t to t_prev < t.

  t_prev = -1 means the end of the chain, where alphas_cumprod is taken as 1 (diffusers'
  set_alpha_to_one). sigma = eta * sqrt((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)):
  eta = 0 is deterministic, eta = 1 with t_prev = t - 1 is the DDPM step with the posterior
  variance. As in diffusers, clipping applies to the predicted x_0 and the direction to x_t
  keeps the model's eps. Returns (x_{t_prev}, predicted x_0).
  """
  eps = model_fn(x_t, t)
  pred_x0 = predict_x0_from_eps(schedule, x_t, t, eps)
  if clip_denoised:
    pred_x0 = jnp.clip(pred_x0, -1.0, 1.0)
  abar_t = _at(schedule.alphas_cumprod, t, x_t.ndim)
  abar_prev = _expand(jnp.where(t_prev >= 0, schedule.alphas_cumprod[jnp.maximum(t_prev, 0)], 1.0),
                      x_t.ndim)
  sigma = eta * jnp.sqrt((1.0 - abar_prev) / (1.0 - abar_t) * (1.0 - abar_t / abar_prev))
  direction = jnp.sqrt(jnp.maximum(1.0 - abar_prev - sigma ** 2, 0.0)) * eps
  return jnp.sqrt(abar_prev) * pred_x0 + direction + sigma * noise, pred_x0


def mean_flat(x: jax.Array) -> jax.Array:
  """Mean over every axis but the batch axis."""
  return jnp.mean(x, axis=tuple(range(1, x.ndim)))


def simple_loss(schedule: Schedule, model_fn: ModelFn, x0: jax.Array, t: jax.Array,
                noise: jax.Array) -> jax.Array:
  """L_simple per example: MSE between the noise and the model's prediction of it."""
  x_t = q_sample(schedule, x0, t, noise)
  return mean_flat((model_fn(x_t, t) - noise) ** 2)


# Loss name -> per-example loss(schedule, model_fn, x0, t, noise).
LOSSES: dict[str, Callable[..., jax.Array]] = {
    'simple': simple_loss,
}


def sample_timesteps(key: jax.Array, batch_size: int, num_timesteps: int) -> jax.Array:
  """Timesteps drawn uniformly from [0, T)."""
  return jax.random.randint(key, (batch_size,), 0, num_timesteps)
