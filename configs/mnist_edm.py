"""EDM (Karras et al. 2022) at MNIST size: configs/mnist_ddpmpp.py's DDPM++ network with EDM's
preconditioning, log-normal training sigmas and loss weighting (sigma_data 0.5, sigma in [0.002, 80]);
data and training length as configs/mnist_simple.py; sampled by Heun's deterministic sampler at 18
levels (35 network calls).
"""

from configs import mnist_ncsnpp


def get_config():
  config = mnist_ncsnpp.mnist_score_sde('ddpmpp')
  d = config.diffusion
  d.process = 'edm'
  d.sigma_min, d.sigma_max = 0.002, 80.0
  d.clip_denoised = False
  s = config.sampling
  s.sampler = 'edm_heun'
  s.num_steps = 18
  return config
