"""The probability-flow ODE sampler: an adaptive diffrax solve (ddpm_jax/ode.py) from t_max to t_min
on any process, then Tweedie's denoising step; its steps are a bound (config.sampling.ode_max_steps),
and a solve that needs more ends in one error naming it."""

import jax.numpy as jnp
import ml_collections

from ddpm_jax import ode
from ddpm_jax.errors import ConfigError, require
from ddpm_jax.samplers.registry import Sampler, register

# The ODE knobs: the sampler's, and the ODE likelihood's (config.eval.ode_bpd_num_examples).
ODE_KNOBS = ('sampling.ode_solver', 'sampling.ode_rtol', 'sampling.ode_atol', 'sampling.ode_max_steps')


@register
class ProbabilityFlowODE(Sampler):
  name = 'ode'
  knobs = ODE_KNOBS + ('sampling.denoise',)
  steps_field = 'sampling.ode_max_steps'
  adaptive = True

  @classmethod
  def check(cls, config, process, steps=None):
    super().check(config, process, steps)
    check_solver(config)

  @classmethod
  def build(cls, config, process):
    s, clip = config.sampling, config.diffusion.clip_denoised

    def run(model, x_T, key, frame_steps=(), progress_fn=None, progress_every=0):
      x_0, nfe = ode.ode_sample(process, model.score, x_T * process.prior_std, rtol=s.ode_rtol, atol=s.ode_atol,
                                solver=s.ode_solver, denoise=s.denoise, max_steps=s.ode_max_steps)
      return (jnp.clip(x_0, -1.0, 1.0) if clip else x_0), None, nfe

    return run

  @classmethod
  def unfinished(cls, config):
    return steps_exhausted(config, 'The probability-flow ODE sampler')


def steps_exhausted(config: ml_collections.ConfigDict, what: str, error: type = ConfigError) -> ConfigError:
  """The error of a solve with the ODE knobs (the sampler's, the ODE bits/dim's) that stopped at its
  step bound, config.sampling.ode_max_steps, short of its end."""
  s = config.sampling
  return error(f'{what} took more than config.sampling.ode_max_steps={s.ode_max_steps} steps (each '
               f'{ode.EVALS_PER_STEP} network calls) and stopped short of its end: raise '
               f'config.sampling.ode_max_steps above {s.ode_max_steps}, or loosen config.sampling.ode_rtol={s.ode_rtol:g} '
               f'and ode_atol={s.ode_atol:g} (a network whose score is NaN or Inf stops it too).')


def check_solver(config) -> None:
  """config.sampling.ode_solver names a diffrax solver of ode.py."""
  solver = config.sampling.ode_solver
  require(solver in ode.SOLVERS, f'Unknown config.sampling.ode_solver {solver!r}; valid: {", ".join(ode.SOLVERS)}.')
