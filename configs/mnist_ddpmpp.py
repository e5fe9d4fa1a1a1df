"""DDPM++ (VP SDE) at MNIST size: configs/cifar10_ddpmpp_continuous.py's network, narrow and shallow.

Three levels (28, 14, 7), widths 32-64-64, 2 blocks per level, attention at 14x14, sinusoidal
embedding of (num_scales - 1) t, no FIR, no progressive paths. VP with beta in [0.1, 20] (sub-VP:
--config.diffusion.process=subvpsde). Data and training length as configs/mnist_simple.py; sampled
by Euler-Maruyama (pc, no corrector).
"""

from configs import mnist_ncsnpp


def get_config():
  config = mnist_ncsnpp.mnist_score_sde('ddpmpp')
  d = config.diffusion
  d.process = 'vpsde'
  d.beta_min, d.beta_max = 0.1, 20.0
  s = config.sampling
  s.predictor = 'euler_maruyama'
  s.corrector = 'none'
  return config
