"""DDIM (Song et al., 2021): the discrete chain on a sub-sequence of its timesteps, one compiled loop;
deterministic for eta = 0. Any parameterisation works (a learned variance is ignored); it keeps
frames for --mode=figures.
"""

from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ddpm_jax import diffusion, viz
from ddpm_jax.errors import require
from ddpm_jax.samplers import frames as frames_lib
from ddpm_jax.samplers.ancestral import check_chain
from ddpm_jax.samplers.registry import Constraint, Sampler, register

DDIM_SPACINGS = ('uniform', 'quad')


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
    constrain: Optional[Constraint] = None,
):
  """Runs DDIM from x_T down to x_0 over ddim_timesteps(T, num_steps, spacing) in one `fori_loop`.

  The noise of the step leaving timestep t is `normal(fold_in(key, t))`, as in
  ancestral_sample; with eta = 0 it is multiplied by 0, so x_0 depends on x_T only.
  Returns (x_0, frames): frame k is the state with k DDIM steps left (k = num_steps: x_T,
  k = 0: the sample), for each k in frame_steps; frames is None when none were asked for.
  progress_fn(steps_done) is called from the loop every progress_every steps. Any model
  parameterization works; a learned variance is ignored (DDIM sets its own). clipped_eps: see
  diffusion.ddim_step. With `constrain` (an edit), the x a step reaches (timestep t_prev's marginal; the
  data after the last step) is constrain(x, alpha, sigma, i + 1) of that level, i the step.
  """
  steps = ddim_timesteps(schedule.num_timesteps, num_steps, spacing)
  t_seq = jnp.asarray(steps)
  t_prev_seq = jnp.asarray(np.append(steps[1:], -1).astype(np.int32))
  keep_frame = frames_lib.frame_keeper(frame_steps, num_steps)
  frames = jnp.zeros((len(frame_steps),) + x_T.shape, x_T.dtype)

  def body(i, carry):
    x, frames = carry
    t, t_prev = t_seq[i], t_prev_seq[i]
    noise = jax.random.normal(jax.random.fold_in(key, t), x.shape, x.dtype)
    batch = lambda v: jnp.full((x.shape[0],), v, dtype=jnp.int32)
    x, _ = diffusion.ddim_step(schedule, model_fn, x, batch(t), batch(t_prev), noise, eta,
                               clip_denoised, model_mean_type, model_var_type, clipped_eps)
    if constrain is not None:
      reached = jnp.where(t_prev >= 0, schedule.alphas_cumprod[jnp.maximum(t_prev, 0)], 1.0).astype(x.dtype)
      x = constrain(x, jnp.sqrt(reached), jnp.sqrt(1.0 - reached), i + 1)
    frames_lib.report(progress_fn, progress_every, i + 1)
    return x, keep_frame(frames, x, num_steps - 1 - i)

  frames = keep_frame(frames, x_T, num_steps)
  x_0, frames = jax.lax.fori_loop(0, num_steps, body, (x_T, frames))
  return x_0, (frames if len(frame_steps) else None)


def ddim_frame_timesteps(num_timesteps: int, num_steps: int, spacing: str,
                         steps_left: Sequence[int]) -> list[int]:
  """The timestep of each DDIM frame given by its number of DDIM steps left.

  With k steps left (k >= 1) the state is the input of the step at the 0-based timestep
  ddim_timesteps(...)[num_steps - k], so it is x at timestep that + 1 in the frame numbering;
  k = 0 is the finished sample, t = 0. The starting noise (k = num_steps) is labelled with
  DDIM's first timestep, which is below T unless the spacing starts at T - 1.
  """
  visited = ddim_timesteps(num_timesteps, num_steps, spacing)
  labels = []
  for k in steps_left:
    if not 0 <= k <= num_steps:
      raise ValueError(f'DDIM frame {k} (steps left) is outside [0, {num_steps}].')
    labels.append(0 if k == 0 else int(visited[num_steps - k]) + 1)
  return labels


@register
class DDIM(Sampler):
  name = 'ddim'
  knobs = ('sampling.ddim_steps', 'sampling.ddim_eta', 'sampling.ddim_spacing', 'sampling.ddim_clipped_eps')
  steps_field = 'sampling.ddim_steps'
  keeps_frames = True
  needs_eps = False
  constrainable = True

  @classmethod
  def check(cls, config, process, steps=None):
    check_chain(cls.name, config, process)
    s, d = config.sampling, config.diffusion
    require(s.ddim_spacing in DDIM_SPACINGS, f'Unknown config.sampling.ddim_spacing {s.ddim_spacing!r}; valid: '
            f'{", ".join(DDIM_SPACINGS)}.')
    field = 'config.sampling.ddim_steps' if steps is None else 'the steps of config.eval.sampler_sweep\'s ddim'
    steps = s.ddim_steps if steps is None else steps
    require(steps <= d.num_timesteps, f'{field}={steps} must be between 1 and '
            f'config.diffusion.num_timesteps={d.num_timesteps}: set ddim_steps in that range.')

  @classmethod
  def build(cls, config, process):
    s, d = config.sampling, config.diffusion

    def run(model, x_T, key, frame_steps=(), progress_fn=None, progress_every=0, constrain=None):
      x_0, frames = ddim_sample(process.schedule, model.output_fn, x_T, key, s.ddim_steps, s.ddim_eta, s.ddim_spacing,
                                d.clip_denoised, frame_steps, progress_fn=progress_fn, progress_every=progress_every,
                                model_mean_type=d.model_mean_type, model_var_type=d.model_var_type,
                                clipped_eps=s.ddim_clipped_eps, constrain=constrain)
      return x_0, frames, s.ddim_steps

    return run

  @classmethod
  def frames(cls, config, num_frames):
    s = config.sampling
    steps_left = viz.frame_timesteps(s.ddim_steps, num_frames)
    return steps_left, ddim_frame_timesteps(config.diffusion.num_timesteps, s.ddim_steps, s.ddim_spacing, steps_left)
