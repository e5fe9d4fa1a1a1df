"""Samplers, one file per family, registered by name (config.sampling.sampler).

ancestral and ddim (the discrete chain), dpm_solver (DPM-Solver++ 2M, SDE-DPM-Solver++ 2M), unipc,
euler_heun, pc (predictor-corrector), ode (the probability-flow ODE with diffrax) and edm (Karras et
al.'s deterministic and stochastic samplers). Every module of this package is imported here, so a
new sampler is one new file.
"""

import importlib
import pkgutil

from ddpm_jax.samplers.registry import SAMPLERS, Sampler, register, sampler_class

_HELPERS = ('registry', 'frames', 'levels')
for _module in pkgutil.iter_modules(__path__):
  if _module.name not in _HELPERS:
    importlib.import_module(f'{__name__}.{_module.name}')

__all__ = ['SAMPLERS', 'Sampler', 'register', 'sampler_class']
