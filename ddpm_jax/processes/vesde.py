"""The VE SDE (Song et al., 2021; SMLD / NCSN): dx = sigma(t) sqrt(2 log(sigma_max / sigma_min)) dW.

sigma(t) = sigma_min (sigma_max / sigma_min)^t on t in [0, 1], in the units of images in [-1, 1]; the
network sees log sigma(t). Its discrete chain is SMLD's, sigma_i = exp(linspace(log sigma_min,
log sigma_max)); the likelihood weight is constant, so importance sampling of t is uniform.
"""

import math

import jax.numpy as jnp
import ml_collections
import numpy as np

from ddpm_jax.diffusion import expand
from ddpm_jax.errors import require
from ddpm_jax.processes.base import ScoreFn, ScoreSDE, check_float32_sigmas
from ddpm_jax.processes.registry import register


@register
class VESDE(ScoreSDE):
  """Variance exploding: alpha = 1, sigma(t) geometric from sigma_min to sigma_max."""

  name = 'vesde'
  knobs = ('diffusion.sigma_min', 'diffusion.sigma_max') + ScoreSDE._COMMON_KNOBS
  t_min = 1e-5  # score_sde's sampling eps of VE: its std is sigma_min already at t = 0.

  def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, num_scales: int = 1000,
               train_eps: float = 1e-5, likelihood_weighting: bool = False):
    if not 0 < sigma_min < sigma_max:
      raise ValueError(f'Need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}.')
    super().__init__(num_scales, train_eps, likelihood_weighting)
    # float32 scalars: sigma(t) computed in float32 throughout (a Python float ratio rounds differently).
    self.sigma_min, self.sigma_max = np.float32(sigma_min), np.float32(sigma_max)

  @classmethod
  def from_config(cls, d: ml_collections.ConfigDict) -> 'VESDE':
    return cls(d.sigma_min, d.sigma_max, d.num_scales, d.train_eps, d.likelihood_weighting)

  @classmethod
  def check(cls, config: ml_collections.ConfigDict) -> None:
    d = config.diffusion
    require(d.sigma_min < d.sigma_max, f'config.diffusion.sigma_min={d.sigma_min} must be below '
            f'sigma_max={d.sigma_max}.')
    check_float32_sigmas(config, lambda sigma_max, sigma_min: 2.0 * math.log(sigma_max / sigma_min))
    super().check(config)

  def sigma(self, t):
    return self.sigma_min * (self.sigma_max / self.sigma_min) ** jnp.asarray(t, jnp.float32)

  def marginal(self, t):
    t = jnp.asarray(t, jnp.float32)
    return jnp.ones_like(t), self.sigma(t)

  def sde(self, x, t):
    g = self.sigma(t) * jnp.sqrt(2.0 * (jnp.log(self.sigma_max) - jnp.log(self.sigma_min)))
    return jnp.zeros_like(x), g

  @property
  def prior_std(self) -> float:
    return float(self.sigma_max)

  def network_time(self, t):
    return jnp.log(self.sigma(t))

  # SMLD's chain of n steps.

  def discrete_sigmas(self, i, num_steps: int):
    log_min, log_max = jnp.log(self.sigma_min), jnp.log(self.sigma_max)
    return jnp.exp(log_min + i.astype(jnp.float32) / (num_steps - 1) * (log_max - log_min))

  def _adjacent_variances(self, t, num_steps: int):
    """(sigma_i^2, sigma_{i-1}^2) at the step of t (sigma_{-1} = 0)."""
    i = self.step_index(t, num_steps)
    previous = jnp.where(i > 0, self.discrete_sigmas(jnp.maximum(i - 1, 0), num_steps) ** 2, 0.0)
    return self.discrete_sigmas(i, num_steps) ** 2, previous

  def discretize(self, x, t, num_steps):
    """The SMLD step: f = 0, G = sqrt(sigma_i^2 - sigma_{i-1}^2)."""
    s2, previous = self._adjacent_variances(t, num_steps)
    return jnp.zeros_like(x), jnp.sqrt(s2 - previous)

  def ancestral_step(self, score_fn: ScoreFn, x, t, num_steps):
    """SMLD's ancestral step: x + (sigma_i^2 - sigma_{i-1}^2) score, std sqrt(sigma_{i-1}^2
    (sigma_i^2 - sigma_{i-1}^2) / sigma_i^2)."""
    s2, previous = self._adjacent_variances(t, num_steps)
    x_mean = x + expand(s2 - previous, x.ndim) * score_fn(x, t)
    return x_mean, jnp.sqrt(previous * (s2 - previous) / s2)

  @classmethod
  def check_pc(cls, config: ml_collections.ConfigDict) -> None:
    """SMLD's sigmas need no bound."""


def sigma_max_from_data(images, block: int = 1024) -> float:
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
