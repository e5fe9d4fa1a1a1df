"""A workdir's layout (the names of its files and folders) and its records read back: the
config a run was made with and its run info.

Checkpoint folders are named in ddpm_jax/checkpoints.py, which owns them.
"""

import json
import os

from ddpm_jax.errors import RunError

CONFIG_FILE = 'config.json'  # The resolved config of the run (configuration.save_config).
RUN_INFO_FILE = 'run_info.json'  # {"num_params": int, "wall_time_s": float, "step": int, ...}.
SAMPLES_DIR = 'samples'  # Preview grids, --mode=sample and --mode=figures output.
EVAL_DIR = 'eval'  # --mode=eval: metrics.json, guidance.md and the samples it scored.


def read_config(workdir: str) -> dict:
  """The run's config as the nested dict saved in workdir/config.json."""
  if not os.path.isdir(workdir):
    raise RunError(f'{workdir} is not a directory: give the --workdir of a training run.')
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise RunError(f'No {CONFIG_FILE} in {workdir}: is it the --workdir of a training run?')
  with open(path) as f:
    return json.load(f)


def read_run_info(workdir: str) -> dict:
  """workdir/run_info.json (parameter count, wall time, step), or {} when it is absent."""
  path = os.path.join(workdir, RUN_INFO_FILE)
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def config_value(config: dict, dotted: str, default=None):
  """config['a']['b'] for 'a.b', or default when any part is missing."""
  value = config
  for part in dotted.split('.'):
    if not isinstance(value, dict) or part not in value:
      return default
    value = value[part]
  return value
