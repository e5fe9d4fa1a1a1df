"""The report's planned loss comparison: one network and schedule, the loss chosen by the argument.

The argument is 'VARIANT[,BASE]' (LOSS_VARIANTS; BASE: configs/ablations/common.py). The runs
and their comparison: see docs/runbooks.md.
"""

from configs.ablations import common

LOSS_VARIANTS = ('simple', 'kl', 'kl_importance', 'hybrid', 'mmd')


def get_config(argument: str = 'simple'):
  variant, config = common.split_argument(argument, LOSS_VARIANTS, 'loss variant')
  d = config.diffusion
  if variant == 'simple':
    d.loss = 'simple'
  elif variant in ('kl', 'kl_importance'):
    # The bound alone, with a learned variance (Improved DDPM's L_vlb run).
    d.loss, d.model_var_type = 'kl', 'learned_range'
    if variant == 'kl_importance':
      config.training.timestep_sampler = 'importance'
  elif variant == 'hybrid':
    d.loss, d.model_var_type = 'hybrid', 'learned_range'
  elif variant == 'mmd':
    d.loss = 'mmd'
  return config
