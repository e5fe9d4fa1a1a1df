"""The registry of samplers: config.sampling.sampler -> its class (one file per family).

A sampler declares the config.sampling knobs it reads, its steps and the knob that sets them, its
checks against the process and the network, whether it keeps frames, and builds the compiled loop.
generate, configuration, evaluate and figures look it up here; none branches on sampler names.
"""

from typing import Callable, ClassVar, Optional

import jax
import ml_collections

from ddpm_jax.errors import require
from ddpm_jax.registry import Registry
from ddpm_jax.processes.base import Process

# run(model (denoiser.Model), x_T, key, frame_steps, progress_fn, progress_every) -> (x_0, frames or None, network
# calls per image); an adaptive sampler whose solve stopped at its step bound returns those calls negated.
SampleFn = Callable[..., tuple[jax.Array, Optional[jax.Array], jax.Array]]
# constrain(x, alpha, sigma, level) -> x at the noise level (alpha, sigma) tied to an observed image: an
# edit's replacement or projection (ddpm_jax/editing.py), passed to a constrainable sampler's run. `level`
# indexes the sampler's levels, so a level's draw of the observed image is the same wherever it is used.
Constraint = Callable[[jax.Array, jax.Array, jax.Array, int], jax.Array]
SAMPLERS = Registry('sampler')
register = SAMPLERS.register
sampler_class = SAMPLERS.lookup


class Sampler:
  """A sampler family member; subclasses set the class attributes and `build`."""

  name: ClassVar[str] = ''
  # config fields (section.field) it reads: changed while no sampler in use reads them, they are refused.
  knobs: ClassVar[tuple[str, ...]] = ()
  # The field that config.eval.sampler_sweep's 'NAME:STEPS' sets (None: the steps are not a knob).
  steps_field: ClassVar[Optional[str]] = None
  # Frames of the reverse process for --mode=figures, and progress reports from inside the loop.
  keeps_frames: ClassVar[bool] = False
  # Its steps are a bound, not a count (adaptive solvers): a run that reaches it fails (`unfinished`).
  adaptive: ClassVar[bool] = False
  # Works from eps alone (any process); False for samplers of the discrete chain's raw output.
  needs_eps: ClassVar[bool] = True
  # Its run takes `constrain` (a Constraint), applied at every level it steps to: edits need it.
  constrainable: ClassVar[bool] = False

  @classmethod
  def steps(cls, config: ml_collections.ConfigDict, process: Process) -> int:
    """Reverse steps it takes (a bound when adaptive)."""
    section, field = cls.steps_field.split('.')
    return config[section][field]

  @classmethod
  def with_steps(cls, config: ml_collections.ConfigDict, steps: int | None) -> ml_collections.ConfigDict:
    """A copy of config sampling with this sampler (and `steps`, where it has a steps knob)."""
    copy = ml_collections.ConfigDict(config.to_dict())
    copy.sampling.sampler = cls.name
    if steps is not None and cls.steps_field is not None:
      section, field = cls.steps_field.split('.')
      copy[section][field] = steps
    return copy

  @classmethod
  def check(cls, config: ml_collections.ConfigDict, process: Process, steps: int | None = None) -> None:
    """Raises ConfigError where the sampler cannot run with this process, network or knobs; `steps`
    is a sweep entry's (None: the config's)."""
    d = config.diffusion
    if cls.needs_eps:
      require(d.model_mean_type == 'eps', f'The {cls.name} sampler needs an eps-predicting network: it has '
              f'config.diffusion.model_mean_type={d.model_mean_type}; use ancestral or ddim.')

  @classmethod
  def build(cls, config: ml_collections.ConfigDict, process: Process) -> SampleFn:
    """run(model: Model, x_T standard normal, key, frame_steps=(), progress_fn=None, progress_every=0)."""
    raise NotImplementedError

  @classmethod
  def unfinished(cls, config: ml_collections.ConfigDict) -> Exception:
    """An adaptive sampler's error for a run that stopped at its step bound (its network calls came back
    negated): names the knob of the bound and the fix."""
    raise NotImplementedError(f'The {cls.name} sampler has no step bound.')

  @classmethod
  def frames(cls, config: ml_collections.ConfigDict, num_frames: int) -> tuple[list[int], list[int]]:
    """(frame_steps of the loop, the timestep label of each) for num_frames evenly spaced frames."""
    raise NotImplementedError(f'The {cls.name} sampler keeps no frames.')
