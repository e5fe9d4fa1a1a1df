"""Whole samplers as one compiled loop (`lax.fori_loop`), with optional frames for pictures.

ancestral: the DDPM reverse process, all T steps. ddim: DDIM (Song et al., 2021) on a
sub-sequence of the timesteps, deterministic for eta = 0.
"""

from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ddpm_jax import diffusion, solvers

SAMPLERS = ('ancestral', 'ddim')  # Here: the discrete chain's own samplers, which keep frames.
# config.sampling.sampler's other names: the fast solvers (solvers.py), predictor-corrector
# (pc_sampling.py) and the probability-flow ODE (ode.py), on every diffusion process.
SOLVER_SAMPLERS = tuple(solvers.SOLVERS)
SCORE_SAMPLERS = ('pc', 'ode')
ALL_SAMPLERS = SAMPLERS + SOLVER_SAMPLERS + SCORE_SAMPLERS
DDIM_SPACINGS = ('uniform', 'quad')


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


def _frame_keeper(frame_steps: Sequence[int], num_steps: int) -> Callable:
  """keep(frames, x, k) -> frames with x stored in the slot of frame k, if k is a frame step."""
  lookup = jnp.asarray(frame_lookup(frame_steps, num_steps))

  def keep(frames, x, k):
    if not frame_steps:
      return frames
    slot = lookup[k]
    return jax.lax.cond(slot >= 0, lambda f: f.at[slot].set(x), lambda f: f, frames)

  return keep


def _report(progress_fn: Optional[Callable[[int], None]], progress_every: int, steps_done) -> None:
  """Calls progress_fn(steps_done) from inside the loop every progress_every steps."""
  if progress_fn is not None and progress_every > 0:
    jax.lax.cond(steps_done % progress_every == 0,
                 lambda: jax.debug.callback(progress_fn, steps_done), lambda: None)


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
    model_mean_type: str = 'eps',
):
  """Runs the DDPM reverse process from x_T down to x_0 in a single `fori_loop`.

  The noise of reverse step t is `normal(fold_in(key, t))`, so a sample depends
  only on (x_T, key). Returns (x_0, frames): frames has one image batch per entry
  of frame_steps (x_k for each k there), or is None when none were asked for.
  progress_fn(steps_done) is called from the loop every progress_every steps.
  """
  num_timesteps = schedule.num_timesteps
  keep_frame = _frame_keeper(frame_steps, num_timesteps)
  frames = jnp.zeros((len(frame_steps),) + x_T.shape, x_T.dtype)

  def body(i, carry):
    x, frames = carry
    t = num_timesteps - 1 - i
    noise = jax.random.normal(jax.random.fold_in(key, t), x.shape, x.dtype)
    t_batch = jnp.full((x.shape[0],), t, dtype=jnp.int32)
    x, _ = diffusion.p_sample(schedule, model_fn, x, t_batch, noise, model_var_type, clip_denoised,
                              model_mean_type)
    _report(progress_fn, progress_every, i + 1)
    return x, keep_frame(frames, x, t)

  frames = keep_frame(frames, x_T, num_timesteps)
  x_0, frames = jax.lax.fori_loop(0, num_timesteps, body, (x_T, frames))
  return x_0, (frames if len(frame_steps) else None)


def ddim_timesteps(num_timesteps: int, num_steps: int, spacing: str = 'uniform') -> np.ndarray:
  """The num_steps timesteps DDIM visits, strictly decreasing, within [0, num_timesteps).

  uniform: 0, k, 2k, ... with k = T // num_steps (the DDIM paper's uniform skip, and
  diffusers' 'leading' spacing with steps_offset 0), always exactly num_steps of them.
  quad: int((i * sqrt(0.8 T) / (num_steps - 1)) ** 2), as in the DDIM code; where that
  repeats a timestep (the DDIM code then takes no-op steps near t = 0), the later ones move
  up by one, so every step counts. Without repeats (T = 1000: num_steps <= 29) it is the
  DDIM code's sequence.
  """
  if not 1 <= num_steps <= num_timesteps:
    raise ValueError(f'num_steps={num_steps} must be between 1 and the schedule\'s {num_timesteps} '
                     f'timesteps: use fewer DDIM steps.')
  index = np.arange(num_steps)
  if spacing == 'uniform':
    steps = index * (num_timesteps // num_steps)
  elif spacing == 'quad':
    steps = (np.linspace(0.0, np.sqrt(0.8 * num_timesteps), num_steps) ** 2).astype(np.int64)
    steps = np.maximum.accumulate(steps - index) + index  # s_i = max(s_i, s_{i-1} + 1).
  else:
    raise ValueError(f'Unknown DDIM spacing {spacing!r}; valid: {", ".join(DDIM_SPACINGS)}.')
  return steps[::-1].astype(np.int32)


def ddim_sample(
    schedule: diffusion.Schedule,
    model_fn: diffusion.ModelFn,
    x_T: jax.Array,
    key: jax.Array,
    num_steps: int = 50,
    eta: float = 0.0,
    spacing: str = 'uniform',
    clip_denoised: bool = True,
    frame_steps: Sequence[int] = (),
    progress_fn: Optional[Callable[[int], None]] = None,
    progress_every: int = 0,
    model_mean_type: str = 'eps',
    model_var_type: str = 'fixedlarge',
    clipped_eps: bool = True,
):
  """Runs DDIM from x_T down to x_0 over ddim_timesteps(T, num_steps, spacing) in one `fori_loop`.

  The noise of the step leaving timestep t is `normal(fold_in(key, t))`, as in
  ancestral_sample; with eta = 0 it is multiplied by 0, so x_0 depends on x_T only.
  Returns (x_0, frames): frame k is the state with k DDIM steps left (k = num_steps: x_T,
  k = 0: the sample), for each k in frame_steps; frames is None when none were asked for.
  progress_fn(steps_done) is called from the loop every progress_every steps. Any model
  parameterization works; a learned variance is ignored (DDIM sets its own). clipped_eps: see
  diffusion.ddim_step.
  """
  steps = ddim_timesteps(schedule.num_timesteps, num_steps, spacing)
  t_seq = jnp.asarray(steps)
  t_prev_seq = jnp.asarray(np.append(steps[1:], -1).astype(np.int32))
  keep_frame = _frame_keeper(frame_steps, num_steps)
  frames = jnp.zeros((len(frame_steps),) + x_T.shape, x_T.dtype)

  def body(i, carry):
    x, frames = carry
    t, t_prev = t_seq[i], t_prev_seq[i]
    noise = jax.random.normal(jax.random.fold_in(key, t), x.shape, x.dtype)
    batch = lambda v: jnp.full((x.shape[0],), v, dtype=jnp.int32)
    x, _ = diffusion.ddim_step(schedule, model_fn, x, batch(t), batch(t_prev), noise, eta,
                               clip_denoised, model_mean_type, model_var_type, clipped_eps)
    _report(progress_fn, progress_every, i + 1)
    return x, keep_frame(frames, x, num_steps - 1 - i)

  frames = keep_frame(frames, x_T, num_steps)
  x_0, frames = jax.lax.fori_loop(0, num_steps, body, (x_T, frames))
  return x_0, (frames if len(frame_steps) else None)
