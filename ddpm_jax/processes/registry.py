"""The registry of noise processes: config.diffusion.process -> its class (one file per process)."""

import ml_collections

PROCESSES: dict[str, type] = {}


def register(cls: type) -> type:
  """Class decorator: makes a Process subclass selectable as config.diffusion.process=cls.name."""
  if cls.name in PROCESSES:
    raise ValueError(f'Process {cls.name!r} is registered twice.')
  PROCESSES[cls.name] = cls
  return cls


def process_class(name: str) -> type:
  if name not in PROCESSES:
    raise ValueError(f'Unknown diffusion process {name!r}; valid: {", ".join(PROCESSES)}.')
  return PROCESSES[name]


def from_config(diffusion_config: ml_collections.ConfigDict):
  """The Process that config.diffusion names, built from its knobs."""
  return process_class(diffusion_config.process).from_config(diffusion_config)
