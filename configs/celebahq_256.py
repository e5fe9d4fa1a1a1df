"""The official DDPM 256x256 recipe (configs/lsun_church_256.py) on CelebA-HQ at 256x256 (TFDS
celeb_a_hq/256, which has only a train split): 0.5M steps (Ho et al. 2020, appendix B;
diffusion_tf scripts/run_celebahq.py)."""

from configs import lsun_church_256


def get_config():
  config = lsun_church_256.get_config()
  config.data.dataset = 'celeb_a_hq/256'
  config.training.num_train_steps = 500_000
  return config
