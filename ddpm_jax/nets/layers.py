"""Blocks shared by the networks."""

import math

import jax
import jax.numpy as jnp


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
  """Sinusoidal embedding of integer timesteps, (batch,) -> (batch, dim), as in DDPM.

  The first half holds sines, the second cosines, of t at geometrically spaced frequencies.
  """
  if dim % 2:
    raise ValueError(f'timestep embedding size must be even, got {dim}.')
  half = dim // 2
  scale = math.log(max_period) / (half - 1)
  freqs = jnp.exp(jnp.arange(half, dtype=jnp.float32) * -scale)
  angles = t.astype(jnp.float32)[:, None] * freqs[None, :]
  return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=1)


def upsample_nearest(x: jax.Array, factor: int = 2) -> jax.Array:
  """Nearest-neighbour upsampling of an NHWC batch by an integer factor."""
  return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)
