"""EDM on CIFAR-10 (Karras et al. 2022, unconditional, the DDPM++ network with EDM's preconditioning:
FID 1.97 at 35 network calls in the paper).

The network: DDPM++ (configs/cifar10_ddpmpp_continuous.py's skeleton) at EDM's CIFAR-10 size: 128
channels times (2, 2, 2) over 32, 16 and 8 pixels, 4 blocks per level, attention at 16x16, dropout
0.13, sinusoidal embedding of c_noise = log(sigma) / 4. The process: x + sigma eps with sigma_data
0.5, log sigma ~ N(-1.2, 1.2^2) in training, sigma in [0.002, 80] for sampling. Training as EDM's:
batch 512, Adam 1e-3 ramped up over 10 Mimg (19,531 steps), 200 Mimg (390,625 steps), an EMA of
half-life 500k images (decay 0.5^(512 / 500,000) per step), random flips (EDM's geometric augmentation
is not built). Sampled by Heun's deterministic sampler, 18 levels (35 calls). A GPU job.
"""

from configs import cifar10_ncsnpp_continuous


def get_config():
  config = cifar10_ncsnpp_continuous.score_sde_cifar10('ddpmpp')
  m = config.model
  m.ch_mult = (2, 2, 2)
  m.dropout = 0.13
  d = config.diffusion
  d.process = 'edm'
  d.sigma_min, d.sigma_max = 0.002, 80.0
  d.sigma_data, d.p_mean, d.p_std = 0.5, -1.2, 1.2
  d.clip_denoised = False
  t = config.training
  t.batch_size = 512
  t.num_train_steps = 390_625
  t.ema_decay = 0.5 ** (512 / 500_000)
  o = config.optim
  o.lr = 1e-3
  o.warmup_steps = 19_531
  o.grad_clip = 0.0
  s = config.sampling
  s.sampler = 'edm_heun'
  s.num_steps = 18
  return config
