"""The diffusion maths of DDPM (Ho et al., 2020) as pure, jit-able functions.

Timesteps are integers t in [0, T) indexing the schedule arrays; t = 0 is the
least noisy step. The model enters as a callable `model_fn(x_t, t) -> output`,
never as a network, so everything here composes with jit, vmap and grad. What the
output means is the model's parameterization: its mean type (eps, x0 or xprev)
and variance type (fixed, or learned_range with C extra output channels).
"""

import math
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

ModelFn = Callable[[jax.Array, jax.Array], jax.Array]

# What the network predicts: the noise (DDPM), x_0, or the posterior mean of x_{t-1}.
MODEL_MEAN_TYPES = ('eps', 'x0', 'xprev')
# Reverse-process variance: beta_t, the posterior variance, or learned between the two
# (Improved DDPM: the network outputs C extra channels v, log variance = interpolation by (v+1)/2).
MODEL_VAR_TYPES = ('fixedlarge', 'fixedsmall', 'learned_range')


def output_channels(num_channels: int, model_var_type: str) -> int:
  """Channels the network must output: the image's, twice that for a learned variance."""
  return 2 * num_channels if model_var_type == 'learned_range' else num_channels


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


def expand(x: jax.Array, ndim: int) -> jax.Array:
  """Appends unit axes to a per-example array to broadcast against a batch of rank ndim."""
  return x.reshape(x.shape + (1,) * (ndim - x.ndim))


def _at(values: jax.Array, t: jax.Array, ndim: int) -> jax.Array:
  """values[t] shaped (batch, 1, ..., 1)."""
  return expand(values[t], ndim)


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


def predict_x0_from_xprev(schedule: Schedule, x_t: jax.Array, t: jax.Array, xprev: jax.Array) -> jax.Array:
  """Inverts the posterior mean: the x_0 whose q(x_{t-1} | x_t, x_0) has mean xprev."""
  return ((xprev - _at(schedule.posterior_mean_coef2, t, x_t.ndim) * x_t)
          / _at(schedule.posterior_mean_coef1, t, x_t.ndim))


def predict_eps_from_x0(schedule: Schedule, x_t: jax.Array, t: jax.Array, x0: jax.Array) -> jax.Array:
  """Inverts q_sample for the noise: the eps that takes x0 to x_t."""
  return ((_at(schedule.sqrt_recip_alphas_cumprod, t, x_t.ndim) * x_t - x0)
          / _at(schedule.sqrt_recipm1_alphas_cumprod, t, x_t.ndim))


def split_output(output: jax.Array, model_var_type: str):
  """(mean part, variance part or None) of a network output; learned_range splits channels."""
  if model_var_type == 'learned_range':
    return jnp.split(output, 2, axis=-1)
  return output, None


def guided_model_fn(model_fn: Callable[[jax.Array, jax.Array, jax.Array], jax.Array], labels: jax.Array,
                    null_label: int, guidance_scale, model_var_type: str = 'fixedlarge') -> ModelFn:
  """Classifier-free guidance (Ho & Salimans, 2022) as a plain model_fn(x_t, t).

  model_fn(x, t, labels) is a class-conditional network; the mean output becomes
  (1 + w) * out(labels) - w * out(null_label), from one call on the doubled batch (for eps,
  x0 and xprev alike: each is affine in the others given x_t). A learned variance is the
  conditional one. w = 0 (a Python number) calls the conditional model alone.
  """
  if isinstance(guidance_scale, (int, float)) and guidance_scale == 0:
    return lambda x, t: model_fn(x, t, labels)

  def guided(x: jax.Array, t: jax.Array) -> jax.Array:
    both = model_fn(jnp.concatenate([x, x]), jnp.concatenate([t, t]),
                    jnp.concatenate([labels, jnp.full_like(labels, null_label)]))
    conditional, unconditional = jnp.split(both, 2, axis=0)
    mean_c, var_values = split_output(conditional, model_var_type)
    mean_u, _ = split_output(unconditional, model_var_type)
    mean = (1.0 + guidance_scale) * mean_c - guidance_scale * mean_u
    return mean if var_values is None else jnp.concatenate([mean, var_values], axis=-1)

  return guided


def model_variance(schedule: Schedule, t: jax.Array, ndim: int, model_var_type: str,
                   var_values: jax.Array | None = None):
  """Variance and log variance of p(x_{t-1} | x_t).

  fixedlarge: beta_t, with the t = 0 entry set to the posterior variance at t = 1 for a
  good decoder. fixedsmall: the posterior variance. learned_range: exp of
  frac * log beta_t + (1 - frac) * log posterior variance, frac = (var_values + 1) / 2.
  """
  if model_var_type == 'fixedlarge':
    variance = jnp.append(schedule.posterior_variance[1:2], schedule.betas[1:])
    return _at(variance, t, ndim), _at(jnp.log(variance), t, ndim)
  if model_var_type == 'fixedsmall':
    return _at(schedule.posterior_variance, t, ndim), _at(schedule.posterior_log_variance_clipped, t, ndim)
  if model_var_type == 'learned_range':
    frac = (var_values + 1.0) / 2.0
    log_variance = (frac * _at(jnp.log(schedule.betas), t, ndim)
                    + (1.0 - frac) * _at(schedule.posterior_log_variance_clipped, t, ndim))
    return jnp.exp(log_variance), log_variance
  raise ValueError(f'Unknown model_var_type {model_var_type!r}; valid: {", ".join(MODEL_VAR_TYPES)}.')


def eps_and_x0(schedule: Schedule, mean_output: jax.Array, x_t: jax.Array, t: jax.Array,
               model_mean_type: str):
  """(eps, x_0) implied by the mean part of a network output, unclipped."""
  if model_mean_type == 'eps':
    return mean_output, predict_x0_from_eps(schedule, x_t, t, mean_output)
  if model_mean_type == 'x0':
    x0 = mean_output
  elif model_mean_type == 'xprev':
    x0 = predict_x0_from_xprev(schedule, x_t, t, mean_output)
  else:
    raise ValueError(f'Unknown model_mean_type {model_mean_type!r}; valid: {", ".join(MODEL_MEAN_TYPES)}.')
  return predict_eps_from_x0(schedule, x_t, t, x0), x0


def p_mean_variance(schedule: Schedule, model_fn: ModelFn, x_t: jax.Array, t: jax.Array,
                    model_var_type: str = 'fixedlarge', clip_denoised: bool = True,
                    model_mean_type: str = 'eps', output: jax.Array | None = None):
  """Mean, variance, log variance and predicted x_0 of p(x_{t-1} | x_t).

  The network is called once, or not at all when its `output` at (x_t, t) is given.
  An xprev model's mean is its output as is; the others' is the posterior mean at the
  (optionally clipped) predicted x_0.
  """
  if output is None:
    output = model_fn(x_t, t)
  mean_output, var_values = split_output(output, model_var_type)
  variance, log_variance = model_variance(schedule, t, x_t.ndim, model_var_type, var_values)
  _, pred_x0 = eps_and_x0(schedule, mean_output, x_t, t, model_mean_type)
  if clip_denoised:
    pred_x0 = jnp.clip(pred_x0, -1.0, 1.0)
  if model_mean_type == 'xprev':
    mean = mean_output
  else:
    mean, _, _ = q_posterior_mean_variance(schedule, pred_x0, x_t, t)
  return mean, variance, log_variance, pred_x0


def p_sample(schedule: Schedule, model_fn: ModelFn, x_t: jax.Array, t: jax.Array,
             noise: jax.Array, model_var_type: str = 'fixedlarge', clip_denoised: bool = True,
             model_mean_type: str = 'eps'):
  """One reverse step: x_{t-1} ~ p(x_{t-1} | x_t), with no noise added at t = 0.

  Returns (x_{t-1}, predicted x_0).
  """
  mean, _, log_variance, pred_x0 = p_mean_variance(
      schedule, model_fn, x_t, t, model_var_type, clip_denoised, model_mean_type)
  nonzero = expand((t > 0).astype(x_t.dtype), x_t.ndim)
  return mean + nonzero * jnp.exp(0.5 * log_variance) * noise, pred_x0


def ddim_step(schedule: Schedule, model_fn: ModelFn, x_t: jax.Array, t: jax.Array,
              t_prev: jax.Array, noise: jax.Array, eta: float = 0.0, clip_denoised: bool = True,
              model_mean_type: str = 'eps', model_var_type: str = 'fixedlarge', clipped_eps: bool = True):
  """One DDIM step (Song et al., 2021, eq. 12) from timestep t to t_prev < t.

  t_prev = -1 means the end of the chain, where alphas_cumprod is taken as 1 (diffusers'
  set_alpha_to_one). sigma = eta * sqrt((1 - abar_prev) / (1 - abar_t) * (1 - abar_t / abar_prev)):
  eta = 0 is deterministic, eta = 1 with t_prev = t - 1 is the DDPM step with the posterior
  variance. Clipping applies to the predicted x_0; clipped_eps then re-derives eps from the
  clipped x_0 for the direction to x_t (GLIDE, guided-diffusion; diffusers'
  use_clipped_model_output), else the direction keeps the model's eps (diffusers' default). The
  model's eps can be far out of range under classifier-free guidance, and an unclipped direction
  then pushes samples away from the guided class. A learned variance is not used.
  Returns (x_{t_prev}, predicted x_0).
  """
  mean_output, _ = split_output(model_fn(x_t, t), model_var_type)
  eps, pred_x0 = eps_and_x0(schedule, mean_output, x_t, t, model_mean_type)
  if clip_denoised:
    pred_x0 = jnp.clip(pred_x0, -1.0, 1.0)
    if clipped_eps:
      eps = predict_eps_from_x0(schedule, x_t, t, pred_x0)
  abar_t = _at(schedule.alphas_cumprod, t, x_t.ndim)
  abar_prev = expand(jnp.where(t_prev >= 0, schedule.alphas_cumprod[jnp.maximum(t_prev, 0)], 1.0),
                      x_t.ndim)
  sigma = eta * jnp.sqrt((1.0 - abar_prev) / (1.0 - abar_t) * (1.0 - abar_t / abar_prev))
  direction = jnp.sqrt(jnp.maximum(1.0 - abar_prev - sigma ** 2, 0.0)) * eps
  return jnp.sqrt(abar_prev) * pred_x0 + direction + sigma * noise, pred_x0


# ---------------------------------------------------------------------------
# Likelihood terms (in bits per dimension).

def normal_kl(mean1, log_var1, mean2, log_var2) -> jax.Array:
  """KL(N(mean1, exp(log_var1)) || N(mean2, exp(log_var2))) elementwise, in nats."""
  return 0.5 * (-1.0 + log_var2 - log_var1 + jnp.exp(log_var1 - log_var2)
                + (mean1 - mean2) ** 2 * jnp.exp(-log_var2))


def approx_standard_normal_cdf(x: jax.Array) -> jax.Array:
  """The standard normal CDF by the tanh approximation of the DDPM code (error < 3e-4)."""
  return 0.5 * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def discretized_gaussian_log_likelihood(x: jax.Array, mean: jax.Array, log_scale: jax.Array) -> jax.Array:
  """log p(x) elementwise, for x in [-1, 1] on the 256 levels of uint8 images, in nats.

  Each level owns a bin of width 2/255 around it, the two end bins extending to -inf
  and +inf, and gets the Gaussian's probability mass over its bin (Ho et al., 2020, eq. 13).
  """
  centered = x - mean
  inv_std = jnp.exp(-log_scale)
  cdf_plus = approx_standard_normal_cdf(inv_std * (centered + 1.0 / 255.0))
  cdf_min = approx_standard_normal_cdf(inv_std * (centered - 1.0 / 255.0))
  log_cdf_plus = jnp.log(jnp.maximum(cdf_plus, 1e-12))
  log_one_minus_cdf_min = jnp.log(jnp.maximum(1.0 - cdf_min, 1e-12))
  log_bin = jnp.log(jnp.maximum(cdf_plus - cdf_min, 1e-12))
  return jnp.where(x < -0.999, log_cdf_plus, jnp.where(x > 0.999, log_one_minus_cdf_min, log_bin))


def mean_flat(x: jax.Array) -> jax.Array:
  """Mean over every axis but the batch axis."""
  return jnp.mean(x, axis=tuple(range(1, x.ndim)))


def vlb_term(schedule: Schedule, x0: jax.Array, x_t: jax.Array, t: jax.Array, model_mean: jax.Array,
             model_log_variance: jax.Array) -> jax.Array:
  """The bound's term L_t per example, in bits/dim, for a reverse step with the given mean/variance.

  t > 0: KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)); t = 0: -log p(x_0 | x_1) under the
  discretised Gaussian decoder.
  """
  true_mean, _, true_log_variance = q_posterior_mean_variance(schedule, x0, x_t, t)
  kl = mean_flat(normal_kl(true_mean, true_log_variance, model_mean, model_log_variance)) / math.log(2.0)
  decoder_nll = -mean_flat(discretized_gaussian_log_likelihood(
      x0, model_mean, 0.5 * model_log_variance)) / math.log(2.0)
  return jnp.where(t == 0, decoder_nll, kl)


def prior_bpd(schedule: Schedule, x0: jax.Array) -> jax.Array:
  """KL(q(x_T | x_0) || N(0, I)) per example in bits/dim: the bound's L_T (no parameters)."""
  t = jnp.full((x0.shape[0],), schedule.num_timesteps - 1, jnp.int32)
  mean, _, log_variance = q_mean_variance(schedule, x0, t)
  return mean_flat(normal_kl(mean, log_variance, 0.0, 0.0)) / math.log(2.0)


def vlb_terms_at(schedule: Schedule, model_fn: ModelFn, x0: jax.Array, t: jax.Array, noise: jax.Array,
                 model_mean_type: str = 'eps', model_var_type: str = 'fixedlarge') -> jax.Array:
  """L_t per example (bits/dim) at the given timesteps, for x_t drawn with the given noise.

  As in training, the predicted x_0 is not clipped.
  """
  x_t = q_sample(schedule, x0, t, noise)
  mean, _, log_variance, _ = p_mean_variance(schedule, model_fn, x_t, t, model_var_type, False,
                                             model_mean_type)
  return vlb_term(schedule, x0, x_t, t, mean, log_variance)


class BoundTerms(NamedTuple):
  """The variational bound of each example, in bits/dim: total = sum(terms) + prior."""
  total: jax.Array  # (B,)
  prior: jax.Array  # (B,) L_T
  terms: jax.Array  # (T, B) L_t for t = 0 .. T-1 (t = 0: the decoder's NLL)


def bound_bpd(schedule: Schedule, model_fn: ModelFn, x0: jax.Array, key: jax.Array,
              model_mean_type: str = 'eps', model_var_type: str = 'fixedlarge',
              progress_fn: Callable[[int], None] | None = None, progress_every: int = 0) -> BoundTerms:
  """Every term of the bound for a batch, in one `fori_loop` over t (T network calls).

  x_t for term t is drawn with noise normal(fold_in(key, t)). progress_fn(terms_done) is
  called from the loop every progress_every terms.
  """
  num_timesteps = schedule.num_timesteps

  def body(i, terms):
    t = num_timesteps - 1 - i
    noise = jax.random.normal(jax.random.fold_in(key, t), x0.shape, x0.dtype)
    t_batch = jnp.full((x0.shape[0],), t, jnp.int32)
    terms = terms.at[t].set(vlb_terms_at(schedule, model_fn, x0, t_batch, noise, model_mean_type,
                                         model_var_type))
    if progress_fn is not None and progress_every > 0:
      jax.lax.cond((i + 1) % progress_every == 0,
                   lambda: jax.debug.callback(progress_fn, i + 1), lambda: None)
    return terms

  terms = jax.lax.fori_loop(0, num_timesteps, body, jnp.zeros((num_timesteps, x0.shape[0]), x0.dtype))
  prior = prior_bpd(schedule, x0)
  return BoundTerms(jnp.sum(terms, axis=0) + prior, prior, terms)


# ---------------------------------------------------------------------------
# Training losses.

LOSS_NAMES = ('simple', 'kl', 'hybrid', 'mmd')


class LossSpec(NamedTuple):
  """What a training loss needs to know besides the schedule and the model."""
  name: str = 'simple'
  model_mean_type: str = 'eps'
  model_var_type: str = 'fixedlarge'
  # hybrid: L_simple + hybrid_lambda * L_vlb, L_vlb = T * L_t in bits/dim (Improved DDPM: 0.001).
  hybrid_lambda: float = 0.001
  # mmd: mmd_weight * MMD^2(predicted x_0, x_0) + mmd_simple_weight * L_simple.
  mmd_weight: float = 1.0
  mmd_simple_weight: float = 1.0
  # Bandwidths of the Gaussian kernels summed in the MMD (on mean squared pixel distances).
  mmd_bandwidths: tuple = (0.1, 0.2, 0.5, 1.0, 2.0)


def loss_spec_from_config(diffusion_config) -> LossSpec:
  d = diffusion_config
  return LossSpec(d.loss, d.model_mean_type, d.model_var_type, d.hybrid_lambda, d.mmd_weight,
                  d.mmd_simple_weight, tuple(d.mmd_bandwidths))


def mse_target(schedule: Schedule, x0: jax.Array, x_t: jax.Array, t: jax.Array, noise: jax.Array,
               model_mean_type: str) -> jax.Array:
  """What the mean part of the output regresses onto in L_simple: eps, x_0 or the posterior mean."""
  if model_mean_type == 'eps':
    return noise
  if model_mean_type == 'x0':
    return x0
  return q_posterior_mean_variance(schedule, x0, x_t, t)[0]


def gaussian_kernel_mmd2(x: jax.Array, y: jax.Array, bandwidths: Sequence[float]) -> jax.Array:
  """Unbiased U-statistic estimate of MMD^2 between samples x (n, ...) and y (m, ...).

  The kernel is sum_s exp(-d(a, b) / (2 s^2)) over bandwidths s, with d the mean squared
  difference over the features (so bandwidths do not depend on the image size).
  """
  x = x.reshape(x.shape[0], -1)
  y = y.reshape(y.shape[0], -1)
  n, m, dim = x.shape[0], y.shape[0], x.shape[1]

  def kernel(a, b):
    sq = (jnp.sum(a ** 2, 1)[:, None] + jnp.sum(b ** 2, 1)[None, :] - 2.0 * a @ b.T) / dim
    sq = jnp.maximum(sq, 0.0)
    return sum(jnp.exp(-sq / (2.0 * s ** 2)) for s in bandwidths)

  def off_diagonal_mean(k, size):
    return (jnp.sum(k) - jnp.sum(jnp.diag(k))) / (size * (size - 1))

  return (off_diagonal_mean(kernel(x, x), n) + off_diagonal_mean(kernel(y, y), m)
          - 2.0 * jnp.mean(kernel(x, y)))


class LossTerms(NamedTuple):
  """A loss: mean(weights * per_example) + batch_term. per_example feeds importance sampling."""
  per_example: jax.Array
  batch_term: jax.Array
  metrics: dict


def training_loss(spec: LossSpec, schedule: Schedule, model_fn: ModelFn, x0: jax.Array, t: jax.Array,
                  noise: jax.Array) -> LossTerms:
  """The loss named by spec.name for one batch (x_0, t, noise).

  simple: MSE of the mean output against its target. kl: T * L_t in bits/dim, an unbiased
  estimate of the bound without its constant prior term. hybrid (learned_range): simple +
  hybrid_lambda * T * L_t, the bound term seeing the mean output through stop_gradient so it
  trains only the variance (Improved DDPM). mmd: MMD^2 between the predicted and the true x_0
  of the batch, plus L_simple weighted by mmd_simple_weight.
  """
  x_t = q_sample(schedule, x0, t, noise)
  output = model_fn(x_t, t)
  mean_output, var_values = split_output(output, spec.model_var_type)
  mse = mean_flat((mean_output - mse_target(schedule, x0, x_t, t, noise, spec.model_mean_type)) ** 2)
  zero = jnp.zeros((), x0.dtype)

  def bound(out):
    mean, _, log_variance, _ = p_mean_variance(schedule, model_fn, x_t, t, spec.model_var_type, False,
                                               spec.model_mean_type, output=out)
    return schedule.num_timesteps * vlb_term(schedule, x0, x_t, t, mean, log_variance)

  if spec.name == 'simple':
    return LossTerms(mse, zero, {'mse': jnp.mean(mse)})
  if spec.name == 'kl':
    vlb = bound(output)
    return LossTerms(vlb, zero, {'vlb_bpd': jnp.mean(vlb), 'mse': jnp.mean(mse)})
  if spec.name == 'hybrid':
    frozen = jax.lax.stop_gradient(mean_output)
    vlb = bound(frozen if var_values is None else jnp.concatenate([frozen, var_values], axis=-1))
    return LossTerms(mse + spec.hybrid_lambda * vlb, zero, {'vlb_bpd': jnp.mean(vlb), 'mse': jnp.mean(mse)})
  if spec.name == 'mmd':
    _, pred_x0 = eps_and_x0(schedule, mean_output, x_t, t, spec.model_mean_type)
    mmd2 = gaussian_kernel_mmd2(pred_x0, x0, spec.mmd_bandwidths)
    return LossTerms(spec.mmd_simple_weight * mse, spec.mmd_weight * mmd2,
                     {'mmd2': mmd2, 'mse': jnp.mean(mse)})
  raise ValueError(f'Unknown loss {spec.name!r}; valid: {", ".join(LOSS_NAMES)}.')


# ---------------------------------------------------------------------------
# Timesteps for training: uniform, or importance-sampled from the history of the loss.

TIMESTEP_SAMPLERS = ('uniform', 'importance')


def sample_timesteps(key: jax.Array, batch_size: int, num_timesteps: int) -> jax.Array:
  """Timesteps drawn uniformly from [0, T)."""
  return jax.random.randint(key, (batch_size,), 0, num_timesteps)


class LossHistory(NamedTuple):
  """The last `history` per-example losses seen at each timestep, for importance sampling."""
  values: jax.Array  # (T, history) float32
  counts: jax.Array  # (T,) int32: how many of a row's slots are filled (at most history)


def init_loss_history(num_timesteps: int, history: int) -> LossHistory:
  return LossHistory(jnp.zeros((num_timesteps, history), jnp.float32), jnp.zeros((num_timesteps,), jnp.int32))


def importance_probs(loss_history: LossHistory, uniform_prob: float) -> jax.Array:
  """p(t) proportional to sqrt(E[L_t^2]) over the history, mixed with uniform_prob of uniform;
  uniform until every timestep has a full history (Improved DDPM's loss-aware sampler)."""
  num_timesteps, history = loss_history.values.shape
  uniform = jnp.full((num_timesteps,), 1.0 / num_timesteps)
  weights = jnp.sqrt(jnp.mean(loss_history.values ** 2, axis=1))
  probs = weights / jnp.maximum(jnp.sum(weights), 1e-30)
  probs = (1.0 - uniform_prob) * probs + uniform_prob * uniform
  return jnp.where(jnp.all(loss_history.counts >= history), probs, uniform)


def sample_importance_timesteps(key: jax.Array, batch_size: int, loss_history: LossHistory,
                                uniform_prob: float):
  """(timesteps, weights): t ~ importance_probs and weights 1 / (T p(t)), so E[w L_t] = mean_t L_t."""
  probs = importance_probs(loss_history, uniform_prob)
  t = jax.random.choice(key, probs.shape[0], (batch_size,), p=probs)
  return t.astype(jnp.int32), 1.0 / (probs.shape[0] * probs[t])


def update_loss_history(loss_history: LossHistory, t: jax.Array, losses: jax.Array) -> LossHistory:
  """Appends each (t, loss) in batch order; a full row drops its oldest value."""
  history = loss_history.values.shape[1]

  def add(i, h):
    values, counts = h
    ti, loss = t[i], losses[i]
    row, count = values[ti], counts[ti]
    row = jnp.where(count < history, row.at[jnp.minimum(count, history - 1)].set(loss),
                    jnp.append(row[1:], loss))
    return LossHistory(values.at[ti].set(row), counts.at[ti].set(jnp.minimum(count + 1, history)))

  return jax.lax.fori_loop(0, t.shape[0], add, loss_history)
