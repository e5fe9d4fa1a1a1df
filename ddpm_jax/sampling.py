"""Whole samplers as one compiled loop (`lax.fori_loop`), with optional frames for pictures."""

from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ddpm_jax import diffusion

SAMPLERS = ('ancestral',)


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


def ancestral_sample(
    schedule: diffusion.Schedule,
    model_fn: diffusion.ModelFn,
    x_T: jax.Array,
    key: jax.Array,
    model_var_type: str = 'fixedlarge',
    clip_denoised: bool = True,
    frame_steps: Sequence[int] = (),
    progress_fn: Optional[Callable[[int], None]] = None,
    progress_every: int = 0,
):
  """Runs the DDPM reverse process from x_T down to x_0 in a single `fori_loop`.

  The noise of reverse step t is `normal(fold_in(key, t))`, so a sample depends
  only on (x_T, key). Returns (x_0, frames): frames has one image batch per entry
  of frame_steps (x_k for each k there), or is None when none were asked for.
  progress_fn(steps_done) is called from the loop every progress_every steps.
  """
  num_timesteps = schedule.num_timesteps
  lookup = jnp.asarray(frame_lookup(frame_steps, num_timesteps))
  frames = jnp.zeros((len(frame_steps),) + x_T.shape, x_T.dtype)

  def keep_frame(frames, x, k):
    if not frame_steps:
      return frames
    slot = lookup[k]
    return jax.lax.cond(slot >= 0, lambda f: f.at[slot].set(x), lambda f: f, frames)

  def body(i, carry):
    x, frames = carry
    t = num_timesteps - 1 - i
    noise = jax.random.normal(jax.random.fold_in(key, t), x.shape, x.dtype)
    t_batch = jnp.full((x.shape[0],), t, dtype=jnp.int32)
    x, _ = diffusion.p_sample(schedule, model_fn, x, t_batch, noise, model_var_type, clip_denoised)
    if progress_fn is not None and progress_every > 0:
      jax.lax.cond((i + 1) % progress_every == 0,
                   lambda: jax.debug.callback(progress_fn, i + 1), lambda: None)
    return x, keep_frame(frames, x, t)

  frames = keep_frame(frames, x_T, num_timesteps)
  x_0, frames = jax.lax.fori_loop(0, num_timesteps, body, (x_T, frames))
  return x_0, (frames if len(frame_steps) else None)
