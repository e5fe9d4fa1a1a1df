"""The one model interface: a network seen through its process, as eps or denoiser of (x, t).

k-diffusion's `external.py` idea: every network, whatever it predicts and however it is
preconditioned, becomes eps_fn(x, t) at process time t (`Process.eps_fn`: EDM's c_in, c_noise,
c_skip and c_out are one instance), and so a score -eps / sigma(t) and a denoiser
x0 = (x - sigma eps) / alpha. Classifier-free guidance wraps the network's raw output once, here,
so every sampler samples guided. The discrete chain's own samplers (ancestral, DDIM) read the raw
output (any mean type, a learned variance) through `output_fn` at the chain's integer timesteps.
"""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from ddpm_jax import diffusion
from ddpm_jax.processes.base import Process

# output_fn(network input, network time input) -> the network's raw output (mean and variance channels).
OutputFn = Callable[[jax.Array, jax.Array], jax.Array]


class Model(NamedTuple):
  """A network bound to its parameters and its process, as every sampler sees it."""
  process: Process
  output_fn: OutputFn
  model_mean_type: str = 'eps'
  model_var_type: str = 'fixedlarge'
  clip_denoised: bool = False

  def eps(self, x: jax.Array, t: jax.Array) -> jax.Array:
    """The noise prediction at process time t (B,)."""
    mean_output = lambda x_in, time_in: diffusion.split_output(self.output_fn(x_in, time_in), self.model_var_type)[0]
    return self.process.eps_fn(mean_output)(x, t)

  def score(self, x: jax.Array, t: jax.Array) -> jax.Array:
    return self.process.score_from_eps(self.eps(x, t), t)

  def denoise(self, x: jax.Array, t: jax.Array) -> jax.Array:
    """x0 = (x - sigma eps) / alpha, clipped to [-1, 1] with clip_denoised."""
    alpha, sigma = self.process.marginal(jnp.asarray(t))
    x0 = (x - diffusion.expand(sigma, x.ndim) * self.eps(x, t)) / diffusion.expand(alpha, x.ndim)
    return jnp.clip(x0, -1.0, 1.0) if self.clip_denoised else x0


def network_output_fn(apply_fn: Callable, labels: jax.Array | None, num_classes: int, guidance_scale,
                      model_var_type: str) -> OutputFn:
  """The raw output of a network apply_fn(x, t, labels) for `labels`, guided with classifier-free
  guidance at guidance_scale (diffusion.guided_model_fn); an unconditional network (num_classes 0)
  is called without labels."""
  if not num_classes:
    return lambda x, t: apply_fn(x, t, None)
  if labels is None:
    raise ValueError(f'The network is class-conditional ({num_classes} classes): sampling needs labels.')
  return diffusion.guided_model_fn(apply_fn, labels, num_classes, guidance_scale, model_var_type)
