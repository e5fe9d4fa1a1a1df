"""The official DDPM 256x256 recipe (configs/lsun_church_256.py) on LSUN cat: 1.8M steps, without
random flips (as the paper's own command for cat, diffusion_tf scripts/run_lsun.py --randflip 0)."""

from configs import lsun_church_256


def get_config():
  config = lsun_church_256.get_config()
  config.data.dataset = 'lsun/cat'
  config.data.random_flip = False
  config.training.num_train_steps = 1_800_000
  return config
