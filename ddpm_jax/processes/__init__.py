"""Noise processes, one file each, registered by name (config.diffusion.process).

ddpm (the discrete chain as a tabulated VP, as in score_sde), vpsde, subvpsde, vesde and edm. Every
module of this package is imported here, so a new process is one new file.
"""

import importlib
import pkgutil

from ddpm_jax.processes.base import Process, ScoreSDE
from ddpm_jax.processes.registry import PROCESSES, from_config, process_class, register

_HELPERS = ('base', 'registry')
for _module in pkgutil.iter_modules(__path__):
  if _module.name not in _HELPERS:
    importlib.import_module(f'{__name__}.{_module.name}')
_registered = dict(sorted(PROCESSES.items()))  # Listed in name order, whatever the import order.
PROCESSES.clear()
PROCESSES.update(_registered)

__all__ = ['PROCESSES', 'Process', 'ScoreSDE', 'from_config', 'process_class', 'register']
