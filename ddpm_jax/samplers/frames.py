"""Frames and progress reports from inside a compiled sampling loop (the chain's samplers keep both)."""

from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np


def frame_lookup(frame_steps: Sequence[int], num_timesteps: int) -> np.ndarray:
  """Maps each timestep k in [0, T] to its frame slot, or -1 when x_k is not kept.

  Frame k is x_k: k = T is the starting noise, k = 0 the finished sample.
  """
  lookup = np.full(num_timesteps + 1, -1, dtype=np.int32)
  for slot, k in enumerate(frame_steps):
    if not 0 <= k <= num_timesteps:
      raise ValueError(f'frame step {k} is outside [0, {num_timesteps}].')
    lookup[k] = slot
  return lookup


def frame_keeper(frame_steps: Sequence[int], num_steps: int) -> Callable:
  """keep(frames, x, k) -> frames with x stored in the slot of frame k, if k is a frame step."""
  lookup = jnp.asarray(frame_lookup(frame_steps, num_steps))

  def keep(frames, x, k):
    if not frame_steps:
      return frames
    slot = lookup[k]
    return jax.lax.cond(slot >= 0, lambda f: f.at[slot].set(x), lambda f: f, frames)

  return keep


def report(progress_fn: Optional[Callable[[int], None]], progress_every: int, steps_done) -> None:
  """Calls progress_fn(steps_done) from inside the loop every progress_every steps."""
  if progress_fn is not None and progress_every > 0:
    jax.lax.cond(steps_done % progress_every == 0,
                 lambda: jax.debug.callback(progress_fn, steps_done), lambda: None)
