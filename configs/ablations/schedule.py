"""One network, one loss, six variance schedules: the report's planned schedule comparison.

  python main.py --config=configs/ablations/schedule.py:linear --workdir=workdirs/schedule_linear
  python main.py --config=configs/ablations/schedule.py:cosine --workdir=workdirs/schedule_cosine
  ... (quad, sigmoid, const, jsd)
  python -m ddpm_jax.compare --workdirs=workdirs/schedule_linear,workdirs/schedule_cosine,... --out=...

Append ',BASE' for another network and dataset, e.g. `schedule.py:cosine,cifar10_resnet`.
beta_start/beta_end stay the DDPM values (1e-4, 0.02) for linear, quad and sigmoid; const uses
beta_end for every step; cosine and jsd define their own.
"""

from configs.ablations import common
from ddpm_jax import diffusion


def get_config(argument: str = 'linear'):
  variant, config = common.split_argument(argument, tuple(diffusion.BETA_SCHEDULES), 'schedule')
  config.diffusion.schedule = variant
  if variant == 'const':
    # A constant 0.02 destroys the signal within ~400 steps; the DDPM code's const runs used
    # a smaller value so that the last steps still carry information.
    config.diffusion.beta_end = 0.01
  return config
