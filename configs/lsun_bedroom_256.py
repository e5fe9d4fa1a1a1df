"""The official DDPM 256x256 recipe (configs/lsun_church_256.py) on LSUN bedroom: 2.4M steps
(Ho et al. 2020, appendix B; the paper's larger bedroom model is not this one)."""

from configs import lsun_church_256


def get_config():
  config = lsun_church_256.get_config()
  config.data.dataset = 'lsun/bedroom'
  config.training.num_train_steps = 2_400_000
  return config
