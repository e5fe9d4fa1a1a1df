"""The DDPM reverse process (Ho et al., 2020): all T steps of the discrete chain, one compiled loop.

It reads the network's raw output (eps, x0 or xprev; a fixed or learned variance) at the chain's
integer timesteps, so it runs on the ddpm process only; it keeps frames for --mode=figures.
"""

from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections

from ddpm_jax import diffusion, viz
from ddpm_jax.errors import ConfigError
from ddpm_jax.processes.base import Process
from ddpm_jax.samplers import frames as frames_lib
from ddpm_jax.samplers.registry import SAMPLERS, Constraint, Sampler, register


def check_chain(name: str, config: ml_collections.ConfigDict, process: Process) -> None:
  """The chain's samplers need a process with a discrete chain (ddpm)."""
  if not process.discrete_chain:
    others = [other for other, cls in SAMPLERS.items() if cls.needs_eps]
    raise ConfigError(f'The {name} sampler walks the discrete chain, but config.diffusion.process='
                      f'{config.diffusion.process}: use a sampler of every process ({", ".join(others)}).')


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
    constrain: Optional[Constraint] = None,
):
  """Runs the DDPM reverse process from x_T down to x_0 in a single `fori_loop`.

  The noise of reverse step t is `normal(fold_in(key, t))`, so a sample depends
  only on (x_T, key). Returns (x_0, frames): frames has one image batch per entry
  of frame_steps (x_k for each k there), or is None when none were asked for.
  progress_fn(steps_done) is called from the loop every progress_every steps. With `constrain` (an
  edit), the x that step t reaches (timestep t - 1's marginal; the data at t = 0) is constrain(x,
  sqrt(alphas_cumprod_prev[t]), sqrt(1 - alphas_cumprod_prev[t]), t).
  """
  num_timesteps = schedule.num_timesteps
  keep_frame = frames_lib.frame_keeper(frame_steps, num_timesteps)
  frames = jnp.zeros((len(frame_steps),) + x_T.shape, x_T.dtype)

  def body(i, carry):
    x, frames = carry
    t = num_timesteps - 1 - i
    noise = jax.random.normal(jax.random.fold_in(key, t), x.shape, x.dtype)
    t_batch = jnp.full((x.shape[0],), t, dtype=jnp.int32)
    x, _ = diffusion.p_sample(schedule, model_fn, x, t_batch, noise, model_var_type, clip_denoised,
                              model_mean_type)
    if constrain is not None:
      reached = schedule.alphas_cumprod_prev[t].astype(x.dtype)
      x = constrain(x, jnp.sqrt(reached), jnp.sqrt(1.0 - reached), t)
    frames_lib.report(progress_fn, progress_every, i + 1)
    return x, keep_frame(frames, x, t)

  frames = keep_frame(frames, x_T, num_timesteps)
  x_0, frames = jax.lax.fori_loop(0, num_timesteps, body, (x_T, frames))
  return x_0, (frames if len(frame_steps) else None)


@register
class Ancestral(Sampler):
  name = 'ancestral'
  keeps_frames = True
  needs_eps = False
  constrainable = True

  @classmethod
  def steps(cls, config, process):
    return config.diffusion.num_timesteps

  @classmethod
  def check(cls, config, process, steps=None):
    check_chain(cls.name, config, process)

  @classmethod
  def build(cls, config, process):
    d = config.diffusion

    def run(model, x_T, key, frame_steps=(), progress_fn=None, progress_every=0, constrain=None):
      x_0, frames = ancestral_sample(process.schedule, model.output_fn, x_T, key, d.model_var_type, d.clip_denoised,
                                     frame_steps, progress_fn=progress_fn, progress_every=progress_every,
                                     model_mean_type=d.model_mean_type, constrain=constrain)
      return x_0, frames, process.schedule.num_timesteps

    return run

  @classmethod
  def frames(cls, config, num_frames):
    steps = viz.frame_timesteps(config.diffusion.num_timesteps, num_frames)
    return steps, list(steps)
