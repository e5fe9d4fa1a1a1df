"""NCSN++ cont. (VE SDE) on CIFAR-10, score_sde's configs/ve/cifar10_ncsnpp_continuous.py (Song et al. 2021).

The network: nf 128, ch_mult (1, 2, 2, 2), 4 BigGAN residual blocks per level, attention at 16x16,
FIR (1, 3, 3, 1) resampling, skip rescaling, the residual input pyramid (progressive_input=residual,
no output pyramid: score_sde's CIFAR-10 setting; output_skip / input_skip are its 256x256 ones),
Gaussian Fourier features (scale 16) of log sigma: 62,758,915 parameters. Training as score_sde:
batch 128, Adam 2e-4 with 5,000 warm-up steps, gradient clipping at 1, EMA 0.999, 1.3M steps,
random flips; sampled by predictor-corrector (reverse diffusion + Langevin, snr 0.16) over 1000 steps.

score_sde trains VE on images in [0, 1] with sigma in [0.01, 50]; our images are in [-1, 1], twice
the scale, so the same process is sigma in [0.02, 100] here (sigma_max is still the largest distance
between two training images, score_sde's technique 1: processes.vesde.sigma_max_from_data). A GPU job.
"""

from configs import default


def score_sde_cifar10(name: str):
  """What NCSN++ and DDPM++ (configs/cifar10_ddpmpp_continuous.py) share: data, the network's skeleton
  and score_sde's training."""
  config = default.get_config()
  config.data.dataset = 'cifar10'
  config.data.image_size = 32
  config.data.num_channels = 3
  config.data.random_flip = True
  m = config.model
  m.name = name
  m.ch = 128
  m.ch_mult = (1, 2, 2, 2)
  m.num_res_blocks = 4
  m.attn_resolutions = (16,)
  m.num_heads = 1
  m.dropout = 0.1
  m.norm_groups = 32
  m.norm_eps = 1e-6
  m.time_embed_dim = 128
  m.time_mlp_dim = 512
  m.skip_rescale = True
  d = config.diffusion
  d.num_scales = 1000
  d.train_eps = 1e-5
  d.loss = 'simple'
  d.model_mean_type = 'eps'
  config.sampling.sampler = 'pc'
  t = config.training
  t.batch_size = 128
  t.num_train_steps = 1_300_000
  t.checkpoint_every_steps = 10_000
  t.sample_every_steps = 50_000
  o = config.optim
  o.optimizer = 'adam'
  o.lr = 2e-4
  o.warmup_steps = 5000
  o.grad_clip = 1.0
  return config


def get_config():
  config = score_sde_cifar10('ncsnpp')
  m = config.model
  m.embedding_type = 'fourier'
  m.fourier_scale = 16.0
  m.fir = True
  m.fir_kernel = (1, 3, 3, 1)
  m.progressive = 'none'
  m.progressive_input = 'residual'
  d = config.diffusion
  d.process = 'vesde'
  d.sigma_min, d.sigma_max = 0.02, 100.0
  s = config.sampling
  s.predictor = 'reverse_diffusion'
  s.corrector = 'langevin'
  s.snr = 0.16
  s.n_steps_each = 1
  config.training.ema_decay = 0.999
  return config
