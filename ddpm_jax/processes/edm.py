"""EDM (Karras et al., 2022, "Elucidating the design space of diffusion-based generative models").

x_t = x_0 + sigma eps with time t = sigma on [sigma_min, sigma_max] (the SDE dx = sqrt(2 t) dW), and
the network preconditioned so that its input and target have unit variance at every sigma
(Table 1 of the paper):
  D(x, sigma) = c_skip x + c_out F(c_in x, c_noise),  c_skip = sigma_data^2 / (sigma^2 + sigma_data^2),
  c_out = sigma sigma_data / sqrt(sigma^2 + sigma_data^2),  c_in = 1 / sqrt(sigma^2 + sigma_data^2),
  c_noise = log(sigma) / 4.
Training draws log sigma ~ N(p_mean, p_std^2) and weights ||D - x_0||^2 by
lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2, which makes the target of F unit
variance. Its samplers (samplers/edm.py) run on every process; every other sampler runs on it.
"""

import jax
import jax.numpy as jnp
import ml_collections

from ddpm_jax.diffusion import expand, mean_flat
from ddpm_jax.errors import in_range, require
from ddpm_jax.processes.base import LossTerms, NetworkFn, Process, check_float32_sigmas
from ddpm_jax.processes.registry import register


@register
class EDM(Process):
  """EDM's process and preconditioning; sigma_min / sigma_max bound sampling (paper: 0.002, 80)."""

  name = 'edm'
  knobs = ('diffusion.sigma_min', 'diffusion.sigma_max', 'diffusion.sigma_data', 'diffusion.p_mean',
           'diffusion.p_std', 'diffusion.num_scales')

  def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, sigma_data: float = 0.5,
               p_mean: float = -1.2, p_std: float = 1.2, num_scales: int = 1000):
    if not 0 < sigma_min < sigma_max:
      raise ValueError(f'Need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}.')
    self.t_min, self.t_max = float(sigma_min), float(sigma_max)
    self.sigma_data, self.p_mean, self.p_std = float(sigma_data), float(p_mean), float(p_std)
    self.num_scales = int(num_scales)

  @classmethod
  def from_config(cls, d: ml_collections.ConfigDict) -> 'EDM':
    return cls(d.sigma_min, d.sigma_max, d.sigma_data, d.p_mean, d.p_std, d.num_scales)

  @classmethod
  def check(cls, config: ml_collections.ConfigDict) -> None:
    d, t = config.diffusion, config.training
    in_range(d.sigma_data, 'diffusion.sigma_data', 0, low_open=True)
    in_range(d.p_mean, 'diffusion.p_mean')
    in_range(d.p_std, 'diffusion.p_std', 0, low_open=True)
    require(d.sigma_min < d.sigma_max, f'config.diffusion.sigma_min={d.sigma_min} must be below '
            f'sigma_max={d.sigma_max}.')
    check_float32_sigmas(config, lambda sigma_max, sigma_min: 2.0 / sigma_max)  # g^2 = 2 sigma.
    what = 'config.diffusion.process=edm trains a preconditioned denoiser with its own loss weighting'
    require(d.loss == 'simple', f'{what}: set config.diffusion.loss=simple, or process=ddpm.')
    require(d.model_mean_type == 'eps', f'{what}: leave config.diffusion.model_mean_type=eps (the network\'s '
            f'output is F, its preconditioned target).')
    require(d.model_var_type != 'learned_range', f'{what}, without a variance: set a fixed '
            f'config.diffusion.model_var_type (fixedlarge).')
    require(t.timestep_sampler == 'uniform', 'config.diffusion.process=edm draws log sigma from N(p_mean, '
            'p_std^2): set config.training.timestep_sampler=uniform.')

  @classmethod
  def check_pc(cls, config: ml_collections.ConfigDict) -> None:
    """Euler-Maruyama on sigma needs no bound."""

  def marginal(self, t):
    t = jnp.asarray(t, jnp.float32)
    return jnp.ones_like(t), t

  def sde(self, x, t):
    return jnp.zeros_like(x), jnp.sqrt(2.0 * jnp.asarray(t, jnp.float32))

  @property
  def prior_std(self) -> float:
    return self.t_max

  def _total_std(self, sigma):
    return jnp.sqrt(sigma ** 2 + self.sigma_data ** 2)

  def network_input(self, x, t):
    return x / expand(self._total_std(jnp.asarray(t, jnp.float32)), x.ndim).astype(x.dtype)

  def network_time(self, t):
    return 0.25 * jnp.log(jnp.asarray(t, jnp.float32))

  def denoised(self, output, x, t):
    """D = c_skip x + c_out F."""
    sigma = jnp.asarray(t, jnp.float32)
    total = self._total_std(sigma)
    c_skip = expand(self.sigma_data ** 2 / total ** 2, x.ndim).astype(x.dtype)
    c_out = expand(sigma * self.sigma_data / total, x.ndim).astype(x.dtype)
    return c_skip * x + c_out * output

  def eps_from_output(self, output, x, t):
    return (x - self.denoised(output, x, t)) / expand(jnp.asarray(t, jnp.float32), x.ndim).astype(x.dtype)

  def train_times(self, key, batch, config, loss_history=None):
    """sigma = exp(p_mean + p_std n), n standard normal; weights 1 (lambda is in the loss)."""
    return jnp.exp(self.p_mean + self.p_std * jax.random.normal(key, (batch,), jnp.float32)), jnp.ones((batch,))

  def training_loss(self, network_fn: NetworkFn, x0, t, noise, config) -> LossTerms:
    """lambda(sigma) ||D(x0 + sigma noise) - x0||^2, mean over pixels."""
    x = self.perturb(x0, t, noise)
    denoised = self.denoised(network_fn(self.network_input(x, t), self.network_time(t)), x, t)
    weight = (t ** 2 + self.sigma_data ** 2) / (t * self.sigma_data) ** 2
    loss = weight * mean_flat((denoised - x0) ** 2)
    return LossTerms(loss, jnp.zeros((), loss.dtype), {})
