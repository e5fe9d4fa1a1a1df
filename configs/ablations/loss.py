"""One network, one schedule, four losses: the report's planned loss comparison.

  python main.py --config=configs/ablations/loss.py:simple --workdir=workdirs/loss_simple
  python main.py --config=configs/ablations/loss.py:kl --workdir=workdirs/loss_kl
  python main.py --config=configs/ablations/loss.py:kl_importance --workdir=workdirs/loss_kl_importance
  python main.py --config=configs/ablations/loss.py:hybrid --workdir=workdirs/loss_hybrid
  python main.py --config=configs/ablations/loss.py:mmd --workdir=workdirs/loss_mmd
  python -m ddpm_jax.compare --workdirs=workdirs/loss_simple,workdirs/loss_kl,... --out=workdirs/loss_comparison

Append ',BASE' to use another network and dataset, e.g. `loss.py:hybrid,mnist_resnet`
(see configs/ablations/common.py). Each run's --mode=eval gives its bits/dim and FID.
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
