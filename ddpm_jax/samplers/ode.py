"""The probability-flow ODE sampler: an adaptive diffrax solve (ddpm_jax/ode.py) from t_max to t_min
on any process, then Tweedie's denoising step; its steps are a bound (config.sampling.ode_max_steps)."""

import jax.numpy as jnp

from ddpm_jax import ode
from ddpm_jax.errors import require
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


def check_solver(config) -> None:
  """config.sampling.ode_solver names a diffrax solver of ode.py."""
  solver = config.sampling.ode_solver
  require(solver in ode.SOLVERS, f'Unknown config.sampling.ode_solver {solver!r}; valid: {", ".join(ode.SOLVERS)}.')
