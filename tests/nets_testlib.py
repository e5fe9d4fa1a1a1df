"""Checks shared by the tests of the level UNets (unet_conv, unet_resnet, ddpm); not a test file.

Speed on the CPU, where compiling dominates these tests: inits use the 'rbg' generator
(same distributions; initialisers on threefry keys take seconds per layer to compile),
functions compile at XLA's lowest backend optimisation level (half the compile time,
slightly slower steps), test inputs come from numpy, and shapes come from jax.eval_shape.
"""

import jax
import jax.numpy as jnp
import numpy as np

from configs import default
from ddpm_jax import data, nets, parallel, processes, train_step
from ddpm_jax.train_state import create_train_state, make_optimizer


FAST_COMPILE = {'xla_backend_optimization_level': 0}


def fast_jit(fn):
  return jax.jit(fn, compiler_options=FAST_COMPILE)


def tiny_config(name: str, image_size: int = 8, channels: int = 1, ch_mult=(1, 2), attn=(4,)):
  """A tens-of-thousands-parameter level UNet of the given kind, for fast CPU tests."""
  config = default.get_config()
  config.data.image_size, config.data.num_channels = image_size, channels
  m = config.model
  m.name = name
  m.ch, m.ch_mult, m.num_res_blocks, m.attn_resolutions = 8, ch_mult, 1, attn
  m.norm_groups, m.time_embed_dim, m.time_mlp_dim, m.dropout = 4, 8, 16, 0.1
  config.diffusion.num_timesteps = 20
  config.training.batch_size = 16
  config.training.ema_decay = 0.9
  config.optim.lr = 3e-3
  config.optim.warmup_steps = 0
  return config


def normal(shape, seed: int = 0) -> jax.Array:
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def param_shapes(config) -> dict:
  """Variables of the configured network as shape structs (no real init)."""
  model = nets.get_model(config)
  return jax.eval_shape(lambda key: nets.init_variables(model, config, key), jax.random.PRNGKey(0))


def param_count(config) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(param_shapes(config)['params']))


def output_shape(config, batch: int = 2) -> tuple:
  """Shape of the network's output on a batch of the config's images, without compiling."""
  model = nets.get_model(config)
  size, channels = config.data.image_size, config.data.num_channels
  x = jax.ShapeDtypeStruct((batch, size, size, channels), jnp.float32)
  t = jax.ShapeDtypeStruct((batch,), jnp.int32)
  out = jax.eval_shape(lambda v, x, t: model.apply(v, x, t, train=False), param_shapes(config), x, t)
  assert out.dtype == jnp.float32
  return out.shape


def fast_init(model, config) -> dict:
  return fast_jit(lambda key: nets.init_variables(model, config, key))(jax.random.key(0, impl='rbg'))


def two_pattern_dataset(image_size: int, channels: int = 1) -> data.ImageDataset:
  """32 images of two patterns (top half or left half bright), as in test_train."""
  half = image_size // 2
  images = np.zeros((32, image_size, image_size, channels), np.uint8)
  images[:16, :half] = 255
  images[16:, :, :half] = 255
  return data.ImageDataset(images, np.zeros(32, np.int32))


def train_tiny(config, steps: int):
  """(model, final TrainState, losses) of `steps` steps of the train step (train_step.py) on two patterns."""
  dataset = two_pattern_dataset(config.data.image_size, config.data.num_channels)
  mesh = parallel.make_mesh()
  model = nets.get_model(config)
  process = processes.from_config(config.diffusion)
  tx = make_optimizer(config.optim)
  variables = fast_init(model, config)
  assert set(variables) == {'params'}  # Group norm only: no 'batch_stats' collection.
  state = jax.device_put(create_train_state(variables, tx), parallel.replicated(mesh))
  step = fast_jit(train_step.make_train_step(model, process, tx, config, jax.random.PRNGKey(0)))
  losses = []
  for i in range(steps):
    batch = data.get_batch(dataset, config.training.batch_size, i, 0).images
    state, metrics = step(state, parallel.shard_batch(batch, mesh))
    losses.append(float(metrics['loss']))
  assert int(state.step) == steps and state.batch_stats == {}
  return model, state, losses


def check_loss_decreases(losses) -> None:
  assert np.all(np.isfinite(losses)), losses
  assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10]), losses


def check_dropout_only_in_training(model, params, config) -> None:
  """Training draws dropout masks from the 'dropout' rng; eval takes no rng and is deterministic."""
  size, channels = config.data.image_size, config.data.num_channels
  x, t = normal((2, size, size, channels), 2), jnp.array([5, 15])
  variables = {'params': params}
  run = fast_jit(lambda key: model.apply(variables, x, t, train=True, rngs={'dropout': key}))
  evaluate = fast_jit(lambda: model.apply(variables, x, t, train=False))
  key_a, key_b = jax.random.PRNGKey(3), jax.random.PRNGKey(4)
  np.testing.assert_array_equal(run(key_a), run(key_a))
  assert not np.allclose(run(key_a), run(key_b), atol=1e-5)
  np.testing.assert_array_equal(evaluate(), evaluate())
  assert not np.allclose(run(key_a), evaluate(), atol=1e-5)
