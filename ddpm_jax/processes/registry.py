"""The registry of noise processes: config.diffusion.process -> its class (one file per process)."""

import ml_collections

from ddpm_jax.registry import Registry

PROCESSES = Registry('diffusion process')
register = PROCESSES.register
process_class = PROCESSES.lookup


def from_config(diffusion_config: ml_collections.ConfigDict):
  """The Process that config.diffusion names, built from its knobs."""
  return process_class(diffusion_config.process).from_config(diffusion_config)
