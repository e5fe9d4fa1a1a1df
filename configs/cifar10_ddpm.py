"""The official DDPM CIFAR-10 recipe (Ho et al. 2020): 35.7M-param UNet, 800k steps.

Adam 2e-4 with 5,000 warm-up steps, gradient clipping at 1.0, batch 128, EMA 0.9999,
random flips, dropout 0.1, the linear schedule over T = 1000, fixedlarge variance and
x0 clipped to [-1, 1] when sampling. A GPU job; also the config that the converted
google/ddpm-cifar10-32 weights load with (python -m ddpm_jax.tools.convert_diffusers).
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.dataset = 'cifar10'
  config.data.image_size = 32
  config.data.num_channels = 3
  config.data.random_flip = True
  m = config.model
  m.name = 'ddpm'
  m.ch = 128
  m.ch_mult = (1, 2, 2, 2)
  m.num_res_blocks = 2
  m.attn_resolutions = (16,)
  m.num_heads = 1
  m.dropout = 0.1
  m.norm_groups = 32
  m.norm_eps = 1e-6
  m.time_embed_dim = 128
  m.time_mlp_dim = 512
  m.upsample = 'nearest'
  d = config.diffusion
  d.schedule = 'linear'
  d.beta_start, d.beta_end, d.num_timesteps = 1e-4, 0.02, 1000
  d.model_var_type = 'fixedlarge'
  d.clip_denoised = True
  d.loss = 'simple'
  config.training.batch_size = 128
  config.training.num_train_steps = 800_000
  config.training.ema_decay = 0.9999
  config.training.checkpoint_every_steps = 10_000
  config.training.sample_every_steps = 50_000
  config.optim.optimizer = 'adam'
  config.optim.lr = 2e-4
  config.optim.warmup_steps = 5000
  config.optim.grad_clip = 1.0
  return config
