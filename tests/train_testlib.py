"""Shared pieces of the in-process training tests: a two-pattern dataset and a compiled step."""

import jax
import ml_collections
import numpy as np

from ddpm_jax import data, diffusion, nets, train
from ddpm_jax.train_state import make_optimizer


def two_patterns() -> data.ImageDataset:
  """32 8x8 images: class 0 has the top half bright, class 1 the left half."""
  images = np.zeros((32, 8, 8, 1), np.uint8)
  images[:16, :4] = 255
  images[16:, :, :4] = 255
  return data.ImageDataset(images, np.repeat(np.arange(2, dtype=np.int32), 16))


def training_setup(config: ml_collections.ConfigDict):
  """(mesh, model, schedule, initial state, jitted train step) of `config`, as train.py builds them."""
  mesh = train.make_mesh()
  model = nets.get_model(config)
  schedule = diffusion.schedule_from_config(config.diffusion)
  tx = make_optimizer(config.optim)
  state = train.initial_state(model, config, tx, mesh)
  step = jax.jit(train.make_train_step(model, schedule, tx, config, train.root_keys(config)['train']))
  return mesh, model, schedule, state, step
