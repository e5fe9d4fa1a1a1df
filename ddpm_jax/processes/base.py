"""What every noise process is: x_t = alpha(t) x_0 + sigma(t) eps, its SDE, its network view.

A `Process` (one file per process in this package, registered by name) owns
- its marginal (alpha(t), sigma(t)), the forward SDE dx = f(x, t) dt + g(t) dW it solves, its prior;
- its time axis [t_min, t_max]: samplers run from t_max down to t_min (score_sde's sampling eps);
- the network's view of a noisy x at time t: the network input (EDM's c_in x), its time input
  (c_noise), and how the output becomes eps (EDM's c_skip / c_out); `denoiser.py` builds the one
  model interface, eps_fn(x, t) in process time, from these;
- training: the distribution of t, the loss and its weighting;
- the time grid of the fast solvers and of predictor-corrector sampling, and its discretisation;
- the config.diffusion knobs it reads (`knobs`) and their checks (`check`).

Nothing outside a process's file asks which process it is: callers use these methods. Times are
per example, shape (B,), in the process's own units (ddpm: the chain's timestep, EDM: sigma).
Host-side helpers (grids, bisection) take and return float64 numpy arrays.
"""

import math
from typing import Callable, ClassVar

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ddpm_jax.diffusion import LossTerms, expand, mean_flat
from ddpm_jax.errors import in_range, require

# score_fn(x, t) -> score of the marginal p_t at x; eps_fn(x, t) -> predicted noise at process time t.
ScoreFn = Callable[[jax.Array, jax.Array], jax.Array]
EpsFn = Callable[[jax.Array, jax.Array], jax.Array]
# network_fn(network input, network time input) -> network output (eps, or EDM's F).
NetworkFn = Callable[[jax.Array, jax.Array], jax.Array]

# Relative float32 error allowed in a time when it is floored to a discrete step: t = i / (n - 1)
# rounded to float32 and multiplied back may land a few ulps below i, which must still be step i.
_STEP_ROUNDING = 2.0 ** -21
# Every process computes in float32: a variance it forms (alpha^2, sigma^2, the SDE's g^2) must be a
# normal, finite float32 number, or it rounds to 0 or inf in the loss, the samplers' grids and the
# likelihood. The config checks derive the ranges of the processes' knobs from these two.
FLOAT32_TINY = float(np.finfo(np.float32).tiny)
FLOAT32_MAX = float(np.finfo(np.float32).max)


def rounded_inward(bound: float, up: bool, digits: int = 4) -> float:
  """A positive `bound` to `digits` significant digits, rounded up (a lower bound) or down (an upper
  bound): a range shown with it holds only values that pass the check against it."""
  scale = 10.0 ** (math.floor(math.log10(bound)) - digits + 1)
  return float(f'{(math.ceil if up else math.floor)(bound / scale) * scale:.{digits}g}')


def check_float32_sigmas(config: ml_collections.ConfigDict, g2_factor: Callable[[float, float], float]) -> None:
  """config.diffusion.sigma_min and sigma_max of a process with alpha = 1 whose variances are sigma^2 and
  g^2 = sigma^2 g2_factor(sigma, sigma_min) (both increasing in sigma): sigma_min^2 a normal float32
  number, and sigma_max^2 and g(t_max)^2 finite ones (sigma_min < sigma_max is checked before)."""
  d = config.diffusion
  low = rounded_inward(math.sqrt(FLOAT32_TINY), up=True)
  in_range(d.sigma_min, 'diffusion.sigma_min', low, d.sigma_max, high_open=True,
           note=f' for process {d.process}: sigma_min^2, the variance of x_t near t = 0, must be a normal float32 '
           f'number (at least {FLOAT32_TINY:.4g}); raise sigma_min')
  log_variance = lambda sigma: 2.0 * math.log(sigma) + math.log(max(1.0, g2_factor(sigma, d.sigma_min)))
  low_log, high_log = math.log(d.sigma_min), 0.5 * math.log(FLOAT32_MAX)
  for _ in range(100):  # Bisection in log sigma for the largest sigma_max whose variances stay finite.
    mid = 0.5 * (low_log + high_log)
    low_log, high_log = (mid, high_log) if log_variance(math.exp(mid)) <= math.log(FLOAT32_MAX) else (low_log, mid)
  in_range(d.sigma_max, 'diffusion.sigma_max', d.sigma_min, rounded_inward(math.exp(low_log), up=False),
           low_open=True, note=f' for process {d.process} with sigma_min={d.sigma_min}: sigma_max^2 and the SDE\'s '
           f'g(t)^2 at t = t_max must be finite float32 numbers (at most {FLOAT32_MAX:.4g}); lower sigma_max')


class Process:
  """A forward noise process; subclasses set `name`, `knobs` and the abstract methods."""

  name: ClassVar[str] = ''
  # config fields (section.field) this process reads: changed elsewhere they are refused.
  knobs: ClassVar[tuple[str, ...]] = ()
  # Fields it reads only under a condition: field -> (applies(config), what it needs, in words).
  conditional_knobs: ClassVar[dict] = {}
  # Spacings of the fast solvers' grid this process offers (config.sampling.spacing), 'auto' first.
  spacings: ClassVar[tuple[str, ...]] = ('auto', 'logsnr', 'uniform')
  # Whether the process is a discrete chain, and its schedule (diffusion.Schedule) when it is: the
  # chain's own samplers and its variational bound need it.
  discrete_chain: ClassVar[bool] = False
  schedule = None
  t_min: float = 1e-3
  t_max: float = 1.0

  # -- what a config says -----------------------------------------------------------------------

  @classmethod
  def from_config(cls, diffusion_config: ml_collections.ConfigDict) -> 'Process':
    raise NotImplementedError

  @classmethod
  def check(cls, config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError for config.diffusion settings this process cannot train or sample."""

  @classmethod
  def check_pc(cls, config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError where predictor-corrector sampling cannot walk this process's chain."""

  @classmethod
  def used_knobs(cls, config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The config fields this process reads under `config`."""
    return cls.knobs + tuple(k for k, (applies, _) in cls.conditional_knobs.items() if applies(config))

  # -- the marginal and the SDE -------------------------------------------------------------------

  def marginal(self, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(alpha(t), sigma(t)) of p(x_t | x_0) = N(alpha x_0, sigma^2 I), each shaped like t."""
    raise NotImplementedError

  def sde(self, x: jax.Array, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(drift f(x, t) shaped like x, diffusion g(t) shaped (B,)) of the forward SDE."""
    raise NotImplementedError

  @property
  def prior_std(self) -> float:
    """Standard deviation of the prior p_{t_max} = N(0, prior_std^2 I)."""
    return 1.0

  def prior_sample(self, key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
    return jax.random.normal(key, shape, dtype) * jnp.asarray(self.prior_std, dtype)

  def prior_logp(self, z: jax.Array) -> jax.Array:
    """log N(z; 0, prior_std^2 I) per example, in nats (shape (B,))."""
    s = jnp.asarray(self.prior_std, jnp.float32)
    dim = math.prod(z.shape[1:])
    sq = jnp.sum(z.reshape(z.shape[0], -1) ** 2, axis=-1)
    return -0.5 * dim * jnp.log(2.0 * jnp.pi * s ** 2) - 0.5 * sq / s ** 2

  def perturb(self, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
    """x_t = alpha(t) x0 + sigma(t) noise."""
    alpha, sigma = self.marginal(t)
    return expand(alpha, x0.ndim) * x0 + expand(sigma, x0.ndim) * noise

  def score_from_eps(self, eps: jax.Array, t: jax.Array) -> jax.Array:
    """The score -eps / sigma(t) of the marginal at t: one marginal for the score, the drift and
    the denoiser (a ddpm network at a fractional time too)."""
    return -eps / expand(self.marginal(t)[1], eps.ndim).astype(eps.dtype)

  def score_fn(self, eps_fn: EpsFn) -> ScoreFn:
    return lambda x, t: self.score_from_eps(eps_fn(x, t), t)

  def reverse_drift(self, score_fn: ScoreFn, x: jax.Array, t: jax.Array,
                    probability_flow: bool = False) -> jax.Array:
    """Drift of the reverse-time SDE, f - g^2 score, or of the probability-flow ODE, f - g^2 score / 2."""
    drift, g = self.sde(x, t)
    scale = 0.5 if probability_flow else 1.0
    return drift - scale * expand(g ** 2, x.ndim) * score_fn(x, t)

  def reverse_diffusion(self, t: jax.Array, probability_flow: bool = False) -> jax.Array:
    """Diffusion of the reverse process: g(t) for the SDE, 0 for the probability-flow ODE."""
    _, g = self.sde(jnp.zeros(jnp.shape(t) + (1,), jnp.float32), t)
    return jnp.zeros_like(g) if probability_flow else g

  def tweedie_denoise(self, x: jax.Array, score: jax.Array, t: jax.Array) -> jax.Array:
    """E[x_0 | x_t] = (x_t + sigma(t)^2 score) / alpha(t)."""
    alpha, sigma = self.marginal(t)
    return (x + expand(sigma, x.ndim) ** 2 * score) / expand(alpha, x.ndim)

  # -- the network's view (preconditioning) --------------------------------------------------------

  def network_time(self, t: jax.Array) -> jax.Array:
    """The network's time input at process time t (EDM's c_noise)."""
    raise NotImplementedError

  def network_input(self, x: jax.Array, t: jax.Array) -> jax.Array:
    """What the network sees of x_t (EDM's c_in x_t); x_t itself by default."""
    return x

  def eps_from_output(self, output: jax.Array, x: jax.Array, t: jax.Array) -> jax.Array:
    """The noise prediction from the network's output at (x_t, t); the output itself by default."""
    return output

  def eps_fn(self, network_fn: NetworkFn) -> EpsFn:
    """eps_fn(x, t) of a network through this process's preconditioning: the one model interface."""
    def eps(x: jax.Array, t: jax.Array) -> jax.Array:
      t = jnp.asarray(t)
      return self.eps_from_output(network_fn(self.network_input(x, t), self.network_time(t)), x, t)
    return eps

  # -- training --------------------------------------------------------------------------------------

  def uses_loss_history(self, config: ml_collections.ConfigDict) -> bool:
    """Whether training keeps Improved DDPM's per-timestep loss history (the ddpm chain's importance sampling)."""
    return False

  def train_times(self, key: jax.Array, batch: int, config: ml_collections.ConfigDict,
                  loss_history=None) -> tuple[jax.Array, jax.Array]:
    """(t, loss weights) of a training batch."""
    raise NotImplementedError

  def training_loss(self, network_fn: NetworkFn, x0: jax.Array, t: jax.Array, noise: jax.Array,
                    config: ml_collections.ConfigDict) -> LossTerms:
    """The per-example loss at times t with standard normal noise (the eps MSE by default)."""
    eps = self.eps_fn(network_fn)(self.perturb(x0, t, noise), t)
    mse = mean_flat((eps - noise) ** 2)
    return LossTerms(mse, jnp.zeros((), mse.dtype), {})

  def training_inputs(self, x0: jax.Array, t: jax.Array, noise: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(network input, network time input) of the noised training batch (the batch-norm calibration)."""
    return self.network_input(self.perturb(x0, t, noise), t), self.network_time(t)

  # -- grids of the samplers -----------------------------------------------------------------------

  def log_snr(self, t) -> np.ndarray:
    """log(alpha / sigma) at host times t (float64)."""
    alpha, sigma = self.marginal(jnp.asarray(t, jnp.float32))
    return np.log(np.asarray(alpha, np.float64)) - np.log(np.asarray(sigma, np.float64))

  def times_at_log_snr(self, targets, bisections: int = 60) -> np.ndarray:
    """Host times in [t_min, t_max] where log-SNR equals each target (it must fall with t); each of
    `bisections` halvings of the interval gains one bit of t."""
    targets = np.asarray(targets, np.float64)
    low, high = np.full_like(targets, self.t_min), np.full_like(targets, self.t_max)
    for _ in range(bisections):
      mid = 0.5 * (low + high)
      above = self.log_snr(mid) > targets  # mid is still too early (less noisy than the target).
      low, high = np.where(above, mid, low), np.where(above, high, mid)
    return 0.5 * (low + high)

  def solver_times(self, num_steps: int, spacing: str) -> np.ndarray:
    """num_steps + 1 times from t_max down to t_min: evenly spaced in log-SNR (auto, logsnr;
    DPM-Solver's skip type for pixel models) or in t (uniform)."""
    if spacing in ('auto', 'logsnr'):
      ends = self.log_snr(np.array([self.t_max, self.t_min]))
      if not ends[0] < ends[1]:
        raise ValueError(f'log-SNR must fall from t={self.t_min} to t={self.t_max}.')
      inner = self.times_at_log_snr(np.linspace(ends[0], ends[1], num_steps + 1)[1:-1])
      return np.concatenate([[self.t_max], inner, [self.t_min]])
    return np.linspace(self.t_max, self.t_min, num_steps + 1)

  def solver_levels(self, num_steps: int, spacing: str, grid: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The (alpha, sigma, t) host arrays of the grid a fast solver walks (samplers/levels.py),
    noisiest first: the marginal at solver_times. `grid` (a diffusers scheduler family) matters only
    to a discrete chain's timesteps."""
    times = self.solver_times(num_steps, spacing)
    alpha, sigma = self.marginal(jnp.asarray(times, jnp.float32))
    return np.asarray(alpha, np.float64), np.asarray(sigma, np.float64), times

  @classmethod
  def max_solver_steps(cls, config: ml_collections.ConfigDict) -> int | None:
    """The most steps a fast solver may take (a discrete chain's length), None for no bound."""
    return None

  def sigma_ratio_range(self) -> tuple[float, float]:
    """(smallest, largest) sigma / alpha on [t_min, t_max]: the span of a Karras sigma grid."""
    snr = self.log_snr(np.array([self.t_min, self.t_max]))
    return float(np.exp(-snr[0])), float(np.exp(-snr[1]))

  def times_at_sigma_ratio(self, ratios) -> np.ndarray:
    """Host times where sigma / alpha equals each ratio (> 0)."""
    return self.times_at_log_snr(-np.log(np.asarray(ratios, np.float64)))

  # -- predictor-corrector sampling ----------------------------------------------------------------

  # The config field (section.field) that sets the steps of predictor-corrector sampling.
  pc_steps_field: ClassVar[str] = 'diffusion.num_scales'

  @classmethod
  def pc_steps(cls, config: ml_collections.ConfigDict) -> int:
    """Discrete steps of predictor-corrector sampling (config.<pc_steps_field>)."""
    section, field = cls.pc_steps_field.split('.')
    return config[section][field]

  def pc_times(self, num_steps: int) -> jax.Array:
    """The n times of predictor-corrector sampling, t_max down to t_min."""
    return jnp.linspace(self.t_max, self.t_min, num_steps, dtype=jnp.float32)

  def step_index(self, t: jax.Array, num_steps: int) -> jax.Array:
    """The discrete step i = floor(n - 1 of the fraction of [0, t_max] that t covers), clipped to
    [0, n - 1] (int32, (B,)): score_sde's `(t * (N - 1)).long()`, tolerant of float32 rounding."""
    position = jnp.asarray(t, jnp.float32) / self.t_max * (num_steps - 1)
    position = position + (num_steps - 1) * _STEP_ROUNDING
    return jnp.clip(jnp.floor(position).astype(jnp.int32), 0, num_steps - 1)

  def discretize(self, x: jax.Array, t: jax.Array, num_steps: int) -> tuple[jax.Array, jax.Array]:
    """(f, G) of one discrete forward step x_{i+1} = x_i + f + G z (G shaped (B,)): Euler-Maruyama
    with dt = t_max / n unless the process has its own chain."""
    drift, g = self.sde(x, t)
    dt = self.t_max / num_steps
    return drift * dt, g * math.sqrt(dt)

  def ancestral_step(self, score_fn: ScoreFn, x: jax.Array, t: jax.Array, num_steps: int):
    """(x_mean, std) of the ancestral predictor's step from t; only for processes with an ancestral chain."""
    raise ValueError(f'The ancestral predictor exists for the VP and VE processes only; for {self.name} use '
                     'reverse_diffusion or euler_maruyama.')

  @classmethod
  def has_ancestral_step(cls) -> bool:
    return cls.ancestral_step is not Process.ancestral_step

  def langevin_alpha(self, t: jax.Array, num_steps: int) -> jax.Array:
    """score_sde's factor on the Langevin step size: 1 - beta_i on VP chains, 1 otherwise."""
    return jnp.ones_like(jnp.asarray(t, jnp.float32))

  # -- likelihood ------------------------------------------------------------------------------------

  def likelihood_weight(self, t: jax.Array) -> jax.Array:
    """g(t)^2 / sigma(t)^2: the weight that turns the eps-MSE into the likelihood-weighted score loss."""
    _, g = self.sde(jnp.zeros(jnp.shape(t) + (1,), jnp.float32), t)
    return g ** 2 / self.marginal(t)[1] ** 2


class ScoreSDE(Process):
  """A continuous-time score SDE of Song et al. (2021) on t in [t_min, 1]: trained by denoising score
  matching at t ~ U(train_eps, 1), optionally likelihood weighted, with importance-sampled times."""

  _COMMON_KNOBS = ('diffusion.num_scales', 'diffusion.train_eps', 'diffusion.likelihood_weighting')

  def __init__(self, num_scales: int, train_eps: float = 1e-5, likelihood_weighting: bool = False):
    if num_scales < 2:
      raise ValueError(f'num_scales must be at least 2, got {num_scales}.')
    self.num_scales = int(num_scales)
    self.train_eps = float(train_eps)
    self.likelihood_weighting = bool(likelihood_weighting)

  @classmethod
  def check(cls, config: ml_collections.ConfigDict) -> None:
    d, t = config.diffusion, config.training
    what = f'config.diffusion.process={d.process} trains the eps-network by denoising score matching'
    require(d.loss == 'simple', f'{what}: set config.diffusion.loss=simple (loss={d.loss} is the discrete '
            f'chain\'s), or process=ddpm.')
    require(d.model_mean_type == 'eps', f'{what}: set config.diffusion.model_mean_type=eps, or process=ddpm.')
    require(d.model_var_type != 'learned_range', f'{what}, without a variance: set a fixed '
            f'config.diffusion.model_var_type (fixedlarge), or process=ddpm.')
    if t.timestep_sampler == 'importance':
      require(d.likelihood_weighting and cls.weight_cdf is not ScoreSDE.weight_cdf,
              f'config.training.timestep_sampler=importance with process={d.process} draws t in proportion '
              f'to the likelihood weighting: set config.diffusion.likelihood_weighting=True with vpsde or '
              f'subvpsde (VE\'s weighting is constant), or timestep_sampler=uniform.')

  def weight_cdf(self, t: jax.Array) -> jax.Array:
    """An antiderivative in t of the likelihood weight g^2 / sigma^2 (None: constant weight)."""
    return None

  def weight_cdf_inverse(self, v: jax.Array) -> jax.Array:
    raise NotImplementedError

  def train_times(self, key: jax.Array, batch: int, config: ml_collections.ConfigDict,
                  loss_history=None) -> tuple[jax.Array, jax.Array]:
    """(t, weights), t in [train_eps, 1]: uniform, or (timestep_sampler=importance) drawn by inverse
    CDF from the density proportional to g^2 / sigma^2 with weights = Z / ((1 - eps) g^2 / sigma^2),
    so E[weights * loss] is the uniform mean and weights * likelihood_weight is the constant
    Z / (1 - eps)."""
    eps = self.train_eps
    u = jax.random.uniform(key, (batch,), jnp.float32)
    importance = config.training.timestep_sampler == 'importance'
    if not importance or self.weight_cdf(jnp.float32(eps)) is None:
      return eps + (1.0 - eps) * u, jnp.ones((batch,), jnp.float32)
    lo, hi = self.weight_cdf(jnp.float32(eps)), self.weight_cdf(jnp.float32(1.0))
    t = jnp.clip(self.weight_cdf_inverse(lo + u * (hi - lo)), eps, 1.0)
    return t, (hi - lo) / ((1.0 - eps) * self.likelihood_weight(t))

  def training_loss(self, network_fn: NetworkFn, x0: jax.Array, t: jax.Array, noise: jax.Array,
                    config: ml_collections.ConfigDict) -> LossTerms:
    """Denoising score matching: mean over pixels of ||eps - noise||^2 = ||score sigma + noise||^2
    (score_sde's reduce_mean); likelihood_weighting multiplies by g^2 / sigma^2, the loss of maximum
    likelihood training whose integral over t bounds the negative log-likelihood."""
    terms = super().training_loss(network_fn, x0, t, noise, config)
    if not self.likelihood_weighting:
      return terms
    return terms._replace(per_example=terms.per_example * self.likelihood_weight(t))
