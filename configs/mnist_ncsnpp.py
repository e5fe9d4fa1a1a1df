"""NCSN++ (VE SDE) at MNIST size: configs/cifar10_ncsnpp_continuous.py's network, narrow and shallow.

Three levels (28, 14, 7), widths 32-64-64, 2 blocks per level, attention at 14x14, FIR resampling,
the residual input pyramid, Fourier features of log sigma. VE with sigma_max 32 (score_sde's technique
1, processes.vesde.sigma_max_from_data, on the offline 5,000 digits in [-1, 1]: 31.7). Data and training
length as configs/mnist_simple.py; sampled by predictor-corrector.
"""

from configs import mnist_simple


def mnist_score_sde(name: str):
  """What NCSN++ and DDPM++ (configs/mnist_ddpmpp.py) share at MNIST size."""
  config = mnist_simple.get_config()
  m = config.model
  m.name = name
  m.ch = 32
  m.ch_mult = (1, 2, 2)
  m.num_res_blocks = 2
  m.attn_resolutions = (14,)
  m.num_heads = 1
  m.dropout = 0.1
  m.time_embed_dim = 32
  m.time_mlp_dim = 128
  m.skip_rescale = True
  config.sampling.sampler = 'pc'
  return config


def get_config():
  config = mnist_score_sde('ncsnpp')
  m = config.model
  m.embedding_type = 'fourier'
  m.fir = True
  m.progressive = 'none'
  m.progressive_input = 'residual'
  d = config.diffusion
  d.process = 'vesde'
  d.sigma_min, d.sigma_max = 0.01, 32.0
  s = config.sampling
  s.predictor = 'reverse_diffusion'
  s.corrector = 'langevin'
  return config
