"""The report's planned schedule comparison: one network and loss, the schedule chosen by the argument.

The argument is 'VARIANT[,BASE]' (SCHEDULE_VARIANTS; BASE: configs/ablations/common.py).
beta_start/beta_end stay the DDPM values (1e-4, 0.02) for linear, quad and sigmoid; const uses
beta_end for every step; cosine and jsd define their own. The runs and their comparison: see
docs/runbooks.md.
"""

from configs.ablations import common

# The names of ddpm_jax.diffusion.BETA_SCHEDULES, in its order (configs import no ddpm_jax;
# tests/test_configs.py builds this config for every name there).
SCHEDULE_VARIANTS = ('linear', 'quad', 'cosine', 'sigmoid', 'const', 'jsd')


def get_config(argument: str = 'linear'):
  variant, config = common.split_argument(argument, SCHEDULE_VARIANTS, 'schedule')
  config.diffusion.schedule = variant
  if variant == 'const':
    # A constant 0.02 destroys the signal within ~400 steps; the DDPM code's const runs used
    # a smaller value so that the last steps still carry information.
    config.diffusion.beta_end = 0.01
  return config
