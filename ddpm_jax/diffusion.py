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


def linear_betas(num_timesteps: int, beta_start: float, beta_end: float) -> np.ndarray:
  """Betas evenly spaced from beta_start to beta_end (the DDPM paper's schedule)."""
  return np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)


# Schedule name -> function(num_timesteps, beta_start, beta_end) -> float64 betas.
BETA_SCHEDULES: dict[str, Callable[[int, float, float], np.ndarray]] = {
    'linear': linear_betas,
}


def make_schedule(betas: np.ndarray) -> Schedule:
  """Derives every schedule quantity in float64, then stores it as float32."""
  betas = np.asarray(betas, dtype=np.float64)
  if betas.ndim != 1 or betas.shape[0] < 2 or not np.all((betas > 0) & (betas < 1)):
    raise ValueError('betas must be a 1-D array of at least 2 values, each in (0, 1).')
  alphas_cumprod = np.cumprod(1.0 - betas)
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
