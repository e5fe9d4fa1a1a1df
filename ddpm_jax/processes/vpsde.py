"""The VP SDE (Song et al., 2021): dx = -beta(t) x / 2 dt + sqrt(beta(t)) dW, beta linear in t.

beta(t) = beta_min + t (beta_max - beta_min) on t in [0, 1] (score_sde: 0.1, 20; DDPM's chain in the
limit). The network sees (num_scales - 1) t, the discrete step of the chain. Its discrete chain
(predictor-corrector's reverse diffusion and ancestral steps) has betas beta(t_i) / n.
"""

import math

import jax
import jax.numpy as jnp
import ml_collections

from ddpm_jax.diffusion import expand
from ddpm_jax.errors import in_range, require
from ddpm_jax.processes.base import FLOAT32_TINY, ScoreFn, ScoreSDE, rounded_inward
from ddpm_jax.processes.registry import register


@register
class VPSDE(ScoreSDE):
  """Variance preserving: alpha = exp(-int_0^t beta / 2), sigma = sqrt(1 - alpha^2)."""

  name = 'vpsde'
  knobs = ('diffusion.beta_min', 'diffusion.beta_max') + ScoreSDE._COMMON_KNOBS
  t_min = 1e-3  # score_sde's sampling eps: near t = 0 the score blows up as 1 / sigma(t).

  def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, num_scales: int = 1000,
               train_eps: float = 1e-5, likelihood_weighting: bool = False):
    if not 0 < beta_min <= beta_max:
      raise ValueError(f'Need 0 < beta_min <= beta_max, got {beta_min}, {beta_max}.')
    super().__init__(num_scales, train_eps, likelihood_weighting)
    self.beta_min, self.beta_max = float(beta_min), float(beta_max)

  @classmethod
  def from_config(cls, d: ml_collections.ConfigDict) -> 'VPSDE':
    return cls(d.beta_min, d.beta_max, d.num_scales, d.train_eps, d.likelihood_weighting)

  @classmethod
  def check(cls, config: ml_collections.ConfigDict) -> None:
    d = config.diffusion
    require(d.beta_min <= d.beta_max, f'config.diffusion.beta_min={d.beta_min} exceeds beta_max={d.beta_max}: '
            f'beta(t) rises from beta_min to beta_max, so set beta_min <= beta_max.')
    # The signal's variance at t = 1, alpha(1)^2 = exp(-(beta_min + beta_max) / 2), is a normal float32 number.
    total = -2.0 * math.log(FLOAT32_TINY)
    why = (f' for process {d.process}: the signal\'s variance at t = 1, alpha(1)^2 = exp(-(beta_min + beta_max) / 2), '
           f'must be a normal float32 number (at least {FLOAT32_TINY:.4g})')
    in_range(d.beta_min, 'diffusion.beta_min', 0, rounded_inward(total / 2, up=False), low_open=True,
             note=f'{why}; lower beta_min (score_sde: 0.1)')
    in_range(d.beta_max, 'diffusion.beta_max', d.beta_min, rounded_inward(total - d.beta_min, up=False),
             note=f'{why}; lower beta_max (score_sde: 20)')
    super().check(config)

  def log_alpha_bar(self, t: jax.Array) -> jax.Array:
    """-int_0^t beta(s) ds: the log of alpha(t)^2."""
    t = jnp.asarray(t, jnp.float32)
    return -0.5 * t ** 2 * (self.beta_max - self.beta_min) - t * self.beta_min

  def beta(self, t: jax.Array) -> jax.Array:
    """beta(t) = -d/dt log_alpha_bar."""
    return self.beta_min + jnp.asarray(t, jnp.float32) * (self.beta_max - self.beta_min)

  def marginal(self, t):
    log_abar = self.log_alpha_bar(t)
    return jnp.exp(0.5 * log_abar), jnp.sqrt(-jnp.expm1(log_abar))

  def sde(self, x, t):
    b = self.beta(t)
    return -0.5 * expand(b, x.ndim) * x, jnp.sqrt(b)

  def network_time(self, t):
    return jnp.asarray(t, jnp.float32) * (self.num_scales - 1)

  def weight_cdf(self, t):
    """log(e^u - 1), u = int_0^t beta: an antiderivative of beta / (1 - e^-u) = g^2 / sigma^2."""
    return jnp.log(jnp.expm1(-self.log_alpha_bar(t)))

  def weight_cdf_inverse(self, v):
    return self.time_of_integral(jax.nn.softplus(v))

  def time_of_integral(self, u: jax.Array) -> jax.Array:
    """The t at which int_0^t beta = u, in the form stable for beta_max = beta_min."""
    return 2.0 * u / (self.beta_min + jnp.sqrt(self.beta_min ** 2 + 2.0 * (self.beta_max - self.beta_min) * u))

  # The discrete chain of n steps at t_i = i t_max / (n - 1).

  def discrete_betas(self, i: jax.Array, num_steps: int) -> jax.Array:
    """beta_i of the chain of n steps: beta(t_i) / n (score_sde's linspace(beta_min / N, beta_max / N,
    N); for N = 1000 the DDPM linear schedule)."""
    return self.beta(i.astype(jnp.float32) / (num_steps - 1)) / num_steps

  def discretize(self, x, t, num_steps):
    """The DDPM step: f = (sqrt(1 - beta_i) - 1) x, G = sqrt(beta_i)."""
    b = self.discrete_betas(self.step_index(t, num_steps), num_steps)
    return (expand(jnp.sqrt(1.0 - b), x.ndim) - 1.0) * x, jnp.sqrt(b)

  def ancestral_step(self, score_fn: ScoreFn, x, t, num_steps):
    """DDPM's ancestral step: x_mean = (x + beta_i score) / sqrt(1 - beta_i), std sqrt(beta_i)."""
    b = self.discrete_betas(self.step_index(t, num_steps), num_steps)
    x_mean = (x + expand(b, x.ndim) * score_fn(x, t)) / expand(jnp.sqrt(1.0 - b), x.ndim)
    return x_mean, jnp.sqrt(b)

  def langevin_alpha(self, t, num_steps):
    return 1.0 - self.discrete_betas(self.step_index(t, num_steps), num_steps)

  @classmethod
  def check_pc(cls, config: ml_collections.ConfigDict) -> None:
    d = config.diffusion
    # Its discrete chain has beta_i = beta(t_i) / num_scales, up to beta_max / num_scales < 1.
    require(d.beta_max < d.num_scales,
            f'The pc sampler walks the discrete chain of config.diffusion.num_scales={d.num_scales} steps with '
            f'betas beta(t) / num_scales, which need num_scales above beta_max={d.beta_max}: raise num_scales.')
