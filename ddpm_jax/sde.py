"""Score-based diffusion in continuous time (Song et al., ICLR 2021) as pure, jit-able functions.

An `SDE` is the forward process dx = f(x, t) dt + g(t) dW on t in [0, 1] (T = 1):
  vp     variance preserving, beta(t) = beta_min + t (beta_max - beta_min) (DDPM in the limit);
  subvp  sub-VP, g^2 = beta(t) (1 - exp(-2 int_0^t beta)), std below VP's;
  ve     variance exploding, sigma(t) = sigma_min (sigma_max / sigma_min)^t (SMLD / NCSN).
`from_schedule` turns a discrete DDPM schedule (diffusion.py) into the VP SDE whose marginals
interpolate the chain's log alphas_cumprod, discrete index i <-> t = i / (N - 1), so an eps-network
trained on the discrete chain is a VP score model. Times are per example, shape (B,).

Our networks predict the noise eps from (x_t, model_time(sde, t)); the score is -eps / std(t).
The continuous-time losses (denoising score matching, optionally likelihood weighted, with
importance sampling of t) live here too; the predictor-corrector samplers are in pc_sampling.py.
"""

import math
from typing import Callable, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np

from ddpm_jax import diffusion

SDE_KINDS = ('vp', 'subvp', 've')
# score_fn(x, t) -> score of the marginal p_t at x; model_fn(x, time_input) -> predicted eps.
ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]
ModelFn = Callable[[jax.Array, jax.Array], jax.Array]

# End time of samplers and likelihoods per kind (score_sde's sampling eps): near t = 0 the
# score of VP blows up as 1 / std(t), VE's std is sigma_min already.
SAMPLING_EPS = {'vp': 1e-3, 'subvp': 1e-3, 've': 1e-5}


@flax.struct.dataclass
class SDE:
  """A forward SDE. kind and num_scales are static; the rest are pytree leaves.

  num_scales N is the number of discrete steps of `discretize` and of the discrete-time labels
  (VP: the network sees (N - 1) t). log_alphas_cumprod is None for the analytic SDEs, and the
  chain's log alphas_cumprod (length N) for one made by `from_schedule`.
  """
  kind: str = flax.struct.field(pytree_node=False)
  num_scales: int = flax.struct.field(pytree_node=False)
  beta_min: jax.Array
  beta_max: jax.Array
  sigma_min: jax.Array
  sigma_max: jax.Array
  log_alphas_cumprod: Optional[jax.Array] = None

  @property
  def tabulated(self) -> bool:
    return self.log_alphas_cumprod is not None


def _make(kind: str, num_scales: int, beta_min=0.1, beta_max=20.0, sigma_min=0.01, sigma_max=50.0,
          log_alphas_cumprod=None) -> SDE:
  if kind not in SDE_KINDS:
    raise ValueError(f'Unknown SDE kind {kind!r}; valid: {", ".join(SDE_KINDS)}.')
  if num_scales < 2:
    raise ValueError(f'num_scales must be at least 2, got {num_scales}.')
  f32 = lambda v: jnp.asarray(v, jnp.float32)
  return SDE(kind, int(num_scales), f32(beta_min), f32(beta_max), f32(sigma_min), f32(sigma_max),
             None if log_alphas_cumprod is None else f32(log_alphas_cumprod))


def vp(beta_min: float = 0.1, beta_max: float = 20.0, num_scales: int = 1000) -> SDE:
  """The VP SDE dx = -beta(t) x / 2 dt + sqrt(beta(t)) dW, beta linear in t."""
  if not 0 < beta_min <= beta_max:
    raise ValueError(f'Need 0 < beta_min <= beta_max, got {beta_min}, {beta_max}.')
  return _make('vp', num_scales, beta_min=beta_min, beta_max=beta_max)


def subvp(beta_min: float = 0.1, beta_max: float = 20.0, num_scales: int = 1000) -> SDE:
  """The sub-VP SDE: VP's drift, g^2 = beta(t) (1 - exp(-2 int_0^t beta))."""
  if not 0 < beta_min <= beta_max:
    raise ValueError(f'Need 0 < beta_min <= beta_max, got {beta_min}, {beta_max}.')
  return _make('subvp', num_scales, beta_min=beta_min, beta_max=beta_max)


def ve(sigma_min: float = 0.01, sigma_max: float = 50.0, num_scales: int = 1000) -> SDE:
  """The VE SDE dx = sigma(t) sqrt(2 log(sigma_max / sigma_min)) dW."""
  if not 0 < sigma_min < sigma_max:
    raise ValueError(f'Need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}.')
  return _make('ve', num_scales, sigma_min=sigma_min, sigma_max=sigma_max)


def from_schedule(schedule: diffusion.Schedule) -> SDE:
  """The VP SDE of a discrete chain: log alphas_cumprod interpolated linearly in t.

  Index i of the chain is t = i / (N - 1), so the marginals equal the chain's at those times
  (t = 0 is the chain's first, already noised, step). beta(t) = -d/dt log alphas_cumprod(t) is
  piecewise constant. beta_min / beta_max record the schedule's betas times N (for the linear
  schedule 1e-4 .. 0.02 with N = 1000: 0.1 and 20, score_sde's discrete VP).
  """
  betas = np.asarray(schedule.betas, np.float64)
  n = betas.shape[0]
  log_abar = np.cumsum(np.log1p(-betas))
  return _make('vp', n, beta_min=betas[0] * n, beta_max=betas[-1] * n, log_alphas_cumprod=log_abar)


def _table_index(sde: SDE, t: jax.Array) -> jax.Array:
  """Position of t on the chain's index axis: t (L - 1), L the table length."""
  return t * (sde.log_alphas_cumprod.shape[0] - 1)


def log_alpha_bar(sde: SDE, t: jax.Array) -> jax.Array:
  """-int_0^t beta(s) ds of the VP family: log of the squared mean coefficient of VP."""
  t = jnp.asarray(t, jnp.float32)
  if sde.tabulated:
    grid = jnp.arange(sde.log_alphas_cumprod.shape[0], dtype=jnp.float32)
    return jnp.interp(_table_index(sde, t), grid, sde.log_alphas_cumprod)
  return -0.5 * t ** 2 * (sde.beta_max - sde.beta_min) - t * sde.beta_min


def beta(sde: SDE, t: jax.Array) -> jax.Array:
  """beta(t) = -d/dt log_alpha_bar of the VP family (piecewise constant for a tabulated one)."""
  t = jnp.asarray(t, jnp.float32)
  if sde.tabulated:
    length = sde.log_alphas_cumprod.shape[0]
    k = jnp.clip(jnp.floor(_table_index(sde, t)).astype(jnp.int32), 0, length - 2)
    return (sde.log_alphas_cumprod[k] - sde.log_alphas_cumprod[k + 1]) * (length - 1)
  return sde.beta_min + t * (sde.beta_max - sde.beta_min)


def sigma(sde: SDE, t: jax.Array) -> jax.Array:
  """sigma(t) = sigma_min (sigma_max / sigma_min)^t of VE."""
  return sde.sigma_min * (sde.sigma_max / sde.sigma_min) ** jnp.asarray(t, jnp.float32)


def coefficients(sde: SDE, x: jax.Array, t: jax.Array):
  """(drift f(x, t) shaped like x, diffusion g(t) shaped (B,)) of the forward SDE."""
  if sde.kind == 've':
    g = sigma(sde, t) * jnp.sqrt(2.0 * (jnp.log(sde.sigma_max) - jnp.log(sde.sigma_min)))
    return jnp.zeros_like(x), g
  b = beta(sde, t)
  drift = -0.5 * diffusion.expand(b, x.ndim) * x
  if sde.kind == 'vp':
    return drift, jnp.sqrt(b)
  return drift, jnp.sqrt(b * -jnp.expm1(2.0 * log_alpha_bar(sde, t)))


def marginal(sde: SDE, t: jax.Array):
  """(mean_coeff, std) of p(x_t | x_0) = N(mean_coeff x_0, std^2 I), each shaped like t."""
  t = jnp.asarray(t, jnp.float32)
  if sde.kind == 've':
    return jnp.ones_like(t), sigma(sde, t)
  log_abar = log_alpha_bar(sde, t)
  mean_coeff = jnp.exp(0.5 * log_abar)
  if sde.kind == 'vp':
    return mean_coeff, jnp.sqrt(-jnp.expm1(log_abar))
  return mean_coeff, -jnp.expm1(log_abar)


def prior_std(sde: SDE) -> jax.Array:
  """Standard deviation of the prior p_T: sigma_max for VE, 1 otherwise."""
  return sde.sigma_max if sde.kind == 've' else jnp.ones((), jnp.float32)


def prior_sample(sde: SDE, key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
  """A draw from the prior N(0, prior_std^2 I)."""
  return jax.random.normal(key, shape, dtype) * prior_std(sde).astype(dtype)


def prior_logp(sde: SDE, z: jax.Array) -> jax.Array:
  """log N(z; 0, prior_std^2 I) per example, in nats (shape (B,))."""
  s = prior_std(sde)
  dim = math.prod(z.shape[1:])
  sq = jnp.sum(z.reshape(z.shape[0], -1) ** 2, axis=-1)
  return -0.5 * dim * jnp.log(2.0 * jnp.pi * s ** 2) - 0.5 * sq / s ** 2


def reverse_drift(sde: SDE, score_fn: ScoreFn, x: jax.Array, t: jax.Array,
                  probability_flow: bool = False) -> jax.Array:
  """Drift of the reverse-time SDE, f - g^2 score, or of the probability-flow ODE, f - g^2 score / 2."""
  drift, g = coefficients(sde, x, t)
  scale = 0.5 if probability_flow else 1.0
  return drift - scale * diffusion.expand(g ** 2, x.ndim) * score_fn(x, t)


def reverse_diffusion(sde: SDE, t: jax.Array, probability_flow: bool = False) -> jax.Array:
  """Diffusion of the reverse process: g(t) for the SDE, 0 for the probability-flow ODE."""
  _, g = coefficients(sde, jnp.zeros(jnp.shape(t) + (1,), jnp.float32), t)
  return jnp.zeros_like(g) if probability_flow else g


# ---------------------------------------------------------------------------
# Discretisations (score_sde's): step i of n at t_i = i / (n - 1), found from t by floor(t (n - 1)).

# Relative float32 error allowed in t (n - 1) when it is floored to a step: t = i / (n - 1) rounded
# to float32 and multiplied back may land a few ulps below i, which must still be step i.
_STEP_ROUNDING = 2.0 ** -21


def step_index(t: jax.Array, num_steps: int) -> jax.Array:
  """The discrete step i = floor(t (n - 1)) that t falls on, clipped to [0, n - 1] (int32, (B,)).

  score_sde's `(t * (N - 1)).long()`, tolerant of float32 rounding at the steps themselves.
  """
  position = jnp.asarray(t, jnp.float32) * (num_steps - 1)
  position = position + (num_steps - 1) * _STEP_ROUNDING
  return jnp.clip(jnp.floor(position).astype(jnp.int32), 0, num_steps - 1)


def discrete_betas(sde: SDE, i: jax.Array, num_steps: int) -> jax.Array:
  """beta_i of the discrete VP chain of n steps.

  Analytic VP: beta(t_i) / n (score_sde's linspace(beta_min / N, beta_max / N, N); for N = 1000
  the DDPM linear schedule). Tabulated: 1 - alpha_bar(t_i) / alpha_bar(t_{i-1}) (alpha_bar of
  t_{-1} is 1), the chain's own betas when n is the table's length.
  """
  t_i = i.astype(jnp.float32) / (num_steps - 1)
  if sde.tabulated:
    previous = jnp.where(i > 0, log_alpha_bar(sde, (i - 1).astype(jnp.float32) / (num_steps - 1)), 0.0)
    return -jnp.expm1(log_alpha_bar(sde, t_i) - previous)
  return beta(sde, t_i) / num_steps


def discrete_sigmas(sde: SDE, i: jax.Array, num_steps: int) -> jax.Array:
  """sigma_i of the discrete VE (SMLD) chain of n steps: exp of linspace(log sigma_min, log sigma_max)."""
  log_min, log_max = jnp.log(sde.sigma_min), jnp.log(sde.sigma_max)
  return jnp.exp(log_min + i.astype(jnp.float32) / (num_steps - 1) * (log_max - log_min))


def discretize(sde: SDE, x: jax.Array, t: jax.Array, num_steps: Optional[int] = None):
  """(f, G) of one discrete forward step x_{i+1} = x_i + f + G z, z ~ N(0, I) (G shaped (B,)).

  VP: the DDPM step, f = (sqrt(1 - beta_i) - 1) x, G = sqrt(beta_i). VE: the SMLD step, f = 0,
  G = sqrt(sigma_i^2 - sigma_{i-1}^2) (sigma_{-1} = 0). sub-VP: Euler-Maruyama with dt = 1 / n.
  n is num_steps, sde.num_scales by default.
  """
  n = sde.num_scales if num_steps is None else num_steps
  if sde.kind == 'subvp':
    drift, g = coefficients(sde, x, t)
    return drift / n, g * math.sqrt(1.0 / n)
  i = step_index(t, n)
  if sde.kind == 'vp':
    b = discrete_betas(sde, i, n)
    return (diffusion.expand(jnp.sqrt(1.0 - b), x.ndim) - 1.0) * x, jnp.sqrt(b)
  s = discrete_sigmas(sde, i, n)
  adjacent = jnp.where(i > 0, discrete_sigmas(sde, jnp.maximum(i - 1, 0), n), 0.0)
  return jnp.zeros_like(x), jnp.sqrt(s ** 2 - adjacent ** 2)


# ---------------------------------------------------------------------------
# The network's view: time input and score.

def model_time(sde: SDE, t: jax.Array) -> jax.Array:
  """The network's time input: (N - 1) t for VP / sub-VP (the discrete step, 999 t), log sigma(t) for VE."""
  t = jnp.asarray(t, jnp.float32)
  if sde.kind == 've':
    return jnp.log(sigma(sde, t))
  return t * (sde.num_scales - 1)


def discrete_std(sde: SDE, t: jax.Array) -> jax.Array:
  """std of the discrete chain of num_scales steps at the step t falls on (VP, VE)."""
  i = step_index(t, sde.num_scales)
  if sde.kind == 've':
    return discrete_sigmas(sde, i, sde.num_scales)
  if sde.tabulated and sde.log_alphas_cumprod.shape[0] == sde.num_scales:
    log_abar = sde.log_alphas_cumprod
  else:
    log_abar = jnp.cumsum(jnp.log1p(-discrete_betas(sde, jnp.arange(sde.num_scales), sde.num_scales)))
  return jnp.sqrt(-jnp.expm1(log_abar[i]))


def score_fn_from_model(sde: SDE, model_fn: ModelFn, continuous: bool = True) -> ScoreFn:
  """score_fn(x, t) = -eps / std(t) of an eps-predicting network model_fn(x, model_time(sde, t)).

  continuous: std is the SDE's marginal std. Otherwise (a network trained on the discrete chain)
  it is the chain's std at the step t falls on (score_sde's discrete VP / VE); sub-VP is always
  continuous.
  """
  def score_fn(x: jax.Array, t: jax.Array) -> jax.Array:
    eps = model_fn(x, model_time(sde, t))
    if continuous or sde.kind == 'subvp':
      std = marginal(sde, t)[1]
    else:
      std = discrete_std(sde, t)
    return -eps / diffusion.expand(std, x.ndim).astype(eps.dtype)

  return score_fn


def sampling_eps(sde: SDE) -> float:
  """End time of samplers and likelihood computations: 1e-3 for VP / sub-VP, 1e-5 for VE."""
  return SAMPLING_EPS[sde.kind]


def ve_sigma_max_from_data(images, block: int = 1024) -> float:
  """sigma_max of VE chosen from the data (Song & Ermon 2020, technique 1): the largest Euclidean
  distance between two training examples.

  uint8 images are first mapped to [-1, 1] like our training data; float ones are used as they
  are. Exact, in blocks of `block` rows: O(n^2 d) work, so pass a subset for large data sets.
  """
  x = np.asarray(images)
  x = x.astype(np.float64) / 127.5 - 1.0 if x.dtype == np.uint8 else x.astype(np.float64)
  x = x.reshape(x.shape[0], -1)
  if x.shape[0] < 2:
    raise ValueError('Need at least 2 examples for a pairwise distance.')
  sq = np.sum(x ** 2, axis=1)
  largest = 0.0
  for start in range(0, x.shape[0], block):
    rows = x[start:start + block]
    d2 = sq[start:start + block, None] + sq[None, :] - 2.0 * rows @ x.T
    largest = max(largest, float(np.max(d2)))
  return math.sqrt(max(largest, 0.0))


# ---------------------------------------------------------------------------
# Continuous-time denoising score matching.

def likelihood_weight(sde: SDE, t: jax.Array) -> jax.Array:
  """g(t)^2 / std(t)^2: the weight that turns the eps-MSE into the likelihood-weighted score loss."""
  _, g = coefficients(sde, jnp.zeros(jnp.shape(t) + (1,), jnp.float32), t)
  return g ** 2 / marginal(sde, t)[1] ** 2


def perturb(sde: SDE, x0: jax.Array, t: jax.Array, noise: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(x_t = mean_coeff(t) x0 + std(t) noise, the network's time input at t): what training feeds the
  network."""
  mean_coeff, std = marginal(sde, t)
  return diffusion.expand(mean_coeff, x0.ndim) * x0 + diffusion.expand(std, x0.ndim) * noise, model_time(sde, t)


def continuous_loss(sde: SDE, model_fn: ModelFn, x0: jax.Array, t: jax.Array, noise: jax.Array,
                    likelihood_weighting: bool = False) -> jax.Array:
  """Per-example denoising score matching loss at times t (B,) with standard normal noise.

  x_t = mean_coeff x0 + std noise; the network's eps at (x_t, model_time) regresses onto noise:
  mean over pixels of ||score std + noise||^2 = ||noise - eps||^2 (score_sde's get_sde_loss_fn
  with reduce_mean). likelihood_weighting multiplies by g^2 / std^2, i.e. the loss
  ||score + noise / std||^2 g^2 of Song et al. 2021 (maximum likelihood training), whose
  integral over t bounds the negative log-likelihood.
  """
  x_t, time_input = perturb(sde, x0, t, noise)
  eps = model_fn(x_t, time_input)
  losses = diffusion.mean_flat((eps - noise) ** 2)
  if likelihood_weighting:
    losses = losses * likelihood_weight(sde, t)
  return losses


def _weight_cdf(sde: SDE, t: jax.Array) -> jax.Array:
  """An antiderivative in t of g^2 / std^2 (VP, sub-VP), with u = int_0^t beta.

  VP: g^2 / std^2 = beta / (1 - e^-u), antiderivative log(e^u - 1).
  sub-VP: beta (1 + e^-u) / (1 - e^-u), antiderivative log(e^u - 2 + e^-u) = 2 log(2 sinh(u / 2)).
  """
  u = -log_alpha_bar(sde, t)
  if sde.kind == 'vp':
    return jnp.log(jnp.expm1(u))
  return 2.0 * jnp.log(2.0 * jnp.sinh(0.5 * u))


def _weight_cdf_inverse(sde: SDE, v: jax.Array) -> jax.Array:
  """The t at which _weight_cdf equals v."""
  if sde.kind == 'vp':
    u = jax.nn.softplus(v)
  else:
    u = 2.0 * jnp.arcsinh(0.5 * jnp.exp(0.5 * v))
  if sde.tabulated:  # u is piecewise linear and increasing in t: invert on the grid.
    length = sde.log_alphas_cumprod.shape[0]
    return jnp.interp(u, -sde.log_alphas_cumprod, jnp.linspace(0.0, 1.0, length))
  # u = beta_min t + (beta_max - beta_min) t^2 / 2, solved in the form stable for beta_max = beta_min.
  return 2.0 * u / (sde.beta_min + jnp.sqrt(sde.beta_min ** 2 + 2.0 * (sde.beta_max - sde.beta_min) * u))


def sample_times(key: jax.Array, batch: int, sde: SDE, eps: float, importance: bool = False):
  """(t, weights) for a training batch, t in [eps, 1].

  Uniform: t ~ U(eps, 1), weights 1. importance (for the likelihood-weighted loss): t drawn by
  inverse CDF from the density proportional to g^2 / std^2 on [eps, 1], and
  weights = Z / ((1 - eps) g^2 / std^2), Z its integral, so E[weights * loss] equals the mean of
  the loss under uniform t, while weights * likelihood_weight is the constant Z / (1 - eps).
  VE's g^2 / std^2 is constant: its importance sampling is the uniform one.
  """
  u = jax.random.uniform(key, (batch,), jnp.float32)
  if not importance or sde.kind == 've':
    return eps + (1.0 - eps) * u, jnp.ones((batch,), jnp.float32)
  lo, hi = _weight_cdf(sde, jnp.float32(eps)), _weight_cdf(sde, jnp.float32(1.0))
  t = jnp.clip(_weight_cdf_inverse(sde, lo + u * (hi - lo)), eps, 1.0)
  return t, (hi - lo) / ((1.0 - eps) * likelihood_weight(sde, t))


# config.diffusion.process -> SDE kind of the continuous processes; 'ddpm' is the discrete chain.
CONTINUOUS_PROCESSES = {'vpsde': 'vp', 'subvpsde': 'subvp', 'vesde': 've'}
PROCESSES = ('ddpm',) + tuple(CONTINUOUS_PROCESSES)


def is_continuous(diffusion_config) -> bool:
  """True when config.diffusion names a continuous-time process (trained at t in [train_eps, 1])."""
  return diffusion_config.process in CONTINUOUS_PROCESSES


def from_config(diffusion_config) -> SDE:
  """The SDE of config.diffusion: the continuous process it names, or for 'ddpm' the VP SDE of its
  discrete schedule (from_schedule), whose score model is the chain's eps-network."""
  d = diffusion_config
  kind = CONTINUOUS_PROCESSES.get(d.process)
  if kind is None:
    if d.process != 'ddpm':
      raise ValueError(f'Unknown diffusion process {d.process!r}; valid: {", ".join(PROCESSES)}.')
    return from_schedule(diffusion.schedule_from_config(d))
  if kind == 've':
    return ve(d.sigma_min, d.sigma_max, d.num_scales)
  return (vp if kind == 'vp' else subvp)(d.beta_min, d.beta_max, d.num_scales)
