"""The sub-VP SDE (Song et al., 2021): VP's drift, g^2 = beta(t) (1 - exp(-2 int_0^t beta)).

Its marginal std, 1 - alpha^2, stays below VP's; its likelihood bound is tighter. No ancestral
chain: predictor-corrector's reverse diffusion is Euler-Maruyama with dt = 1 / n.
"""

import jax.numpy as jnp

from ddpm_jax.processes.base import Process
from ddpm_jax.processes.registry import register
from ddpm_jax.processes.vpsde import VPSDE


@register
class SubVPSDE(VPSDE):
  """sub-VP: alpha as VP's, sigma = 1 - alpha^2."""

  name = 'subvpsde'

  def marginal(self, t):
    log_abar = self.log_alpha_bar(t)
    return jnp.exp(0.5 * log_abar), -jnp.expm1(log_abar)

  def sde(self, x, t):
    drift, _ = super().sde(x, t)
    return drift, jnp.sqrt(self.beta(t) * -jnp.expm1(2.0 * self.log_alpha_bar(t)))

  def weight_cdf(self, t):
    """2 log(2 sinh(u / 2)), u = int_0^t beta: an antiderivative of beta (1 + e^-u) / (1 - e^-u)."""
    return 2.0 * jnp.log(2.0 * jnp.sinh(-0.5 * self.log_alpha_bar(t)))

  def weight_cdf_inverse(self, v):
    return self.time_of_integral(2.0 * jnp.arcsinh(0.5 * jnp.exp(0.5 * v)))

  discretize = Process.discretize  # Euler-Maruyama: sub-VP has no discrete chain.
  ancestral_step = Process.ancestral_step
