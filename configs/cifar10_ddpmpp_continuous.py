"""DDPM++ cont. (VP SDE) on CIFAR-10, score_sde's configs/vp/cifar10_ddpmpp_continuous.py (Song et al. 2021).

The network: the NCSN++ skeleton (configs/cifar10_ncsnpp_continuous.py) with DDPM's sinusoidal
embedding of the time input (num_scales - 1) t, no FIR (nearest up, 2x2 mean down inside the BigGAN
blocks) and no progressive paths: nf 128, ch_mult (1, 2, 2, 2), 4 blocks per level, attention at
16x16, skip rescaling: 61,804,419 parameters. VP with beta in [0.1, 20]; trained as score_sde (batch
128, Adam 2e-4, 5,000 warm-up steps, clipping at 1, EMA 0.9999, 1.3M steps, random flips); sampled by
Euler-Maruyama over 1000 steps (pc with no corrector). Images in [-1, 1], as score_sde's VP (centered).

sub-VP (score_sde's configs/subvp/cifar10_ddpmpp_continuous.py, the same otherwise):
  --config.diffusion.process=subvpsde
A GPU job.
"""

from configs import cifar10_ncsnpp_continuous


def get_config():
  config = cifar10_ncsnpp_continuous.score_sde_cifar10('ddpmpp')
  d = config.diffusion
  d.process = 'vpsde'
  d.beta_min, d.beta_max = 0.1, 20.0
  s = config.sampling
  s.predictor = 'euler_maruyama'
  s.corrector = 'none'
  config.training.ema_decay = 0.9999
  return config
