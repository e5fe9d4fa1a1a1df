"""The train step and the EMA network's batch-norm calibration (ddpm_jax/train_step.py), in process."""

import jax
import jax.numpy as jnp
import numpy as np

from ddpm_jax import data, diffusion, parallel, train_step
from ddpm_jax.train_state import TrainState
import train_testlib


def test_loss_decreases_on_a_tiny_dataset():
  config = train_testlib.tiny_config()
  dataset = train_testlib.two_patterns()
  mesh, _, _, state, step = train_testlib.training_setup(config)
  losses = []
  for i in range(80):
    state, metrics = step(state, parallel.shard_batch(data.get_batch(dataset, 16, i, 0).images, mesh))
    losses.append(float(metrics['loss']))
  assert int(state.step) == 80
  assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10]), losses
  assert np.all(np.isfinite(losses))


def test_bn_calibration_gives_the_ema_network_its_own_batch_statistics():
  """With statistics calibrated on one batch, eval mode on that batch equals train mode."""
  config = train_testlib.tiny_config()
  mesh, model, schedule, state, _ = train_testlib.training_setup(config)
  state = state.replace(ema_params=jax.tree.map(lambda p: p * 1.5 + 0.01, state.ema_params))
  key = jax.random.key(3, impl='rbg')
  images = np.random.default_rng(0).integers(0, 256, (1, 16, 8, 8, 1)).astype(np.uint8)
  calibrated = jax.jit(train_step.make_bn_calibration(model, schedule, config, key))(state, images)
  x0, t, _, noise, _, _ = train_step.training_inputs(images[0], jax.random.fold_in(jax.random.fold_in(key, 0), 0),
                                             config.data.random_flip, train_step.uniform_timesteps(schedule.num_timesteps))
  x_t = diffusion.q_sample(schedule, x0, t, noise)
  evaluate = jax.jit(lambda stats: model.apply(
      {'params': state.ema_params, 'batch_stats': stats}, x_t, t, train=False))
  in_train_mode, _ = jax.jit(lambda: model.apply(
      {'params': state.ema_params, 'batch_stats': state.batch_stats}, x_t, t, train=True,
      mutable=['batch_stats']))()
  np.testing.assert_allclose(evaluate(calibrated.ema_batch_stats), in_train_mode, atol=2e-3, rtol=1e-3)
  assert not np.allclose(evaluate(state.batch_stats), in_train_mode, atol=2e-2)
  no_calibration = jax.jit(train_step.make_bn_calibration(model, schedule, config, key))(state, images[:0])
  for a, b in zip(jax.tree.leaves(no_calibration.ema_batch_stats), jax.tree.leaves(state.batch_stats)):
    np.testing.assert_array_equal(a, b)


def test_a_nonfinite_step_leaves_the_state_and_advances_the_step():
  old = TrainState(step=jnp.asarray(4), params={'w': jnp.ones(3)}, batch_stats={'m': jnp.zeros(2)},
                   opt_state=(jnp.full(3, 0.5),), ema_params={'w': jnp.ones(3)}, ema_batch_stats={}, loss_history={})
  new = jax.tree.map(lambda x: x + 1, old)
  update = jax.jit(train_step.unless_nonfinite)
  for loss, grad_norm in [(jnp.nan, 1.0), (1.0, jnp.inf), (-jnp.inf, jnp.nan)]:
    kept = update(old, new, jnp.float32(loss), jnp.float32(grad_norm))
    assert int(kept.step) == 5
    for a, b in zip(jax.tree.leaves(kept.replace(step=old.step)), jax.tree.leaves(old), strict=True):
      np.testing.assert_array_equal(a, b)
  for a, b in zip(jax.tree.leaves(update(old, new, jnp.float32(2.0), jnp.float32(3.0))), jax.tree.leaves(new)):
    np.testing.assert_array_equal(a, b)


def test_with_label_dropout_one_training_ignores_the_labels():
  mesh, _, _, state, step = train_testlib.training_setup(train_testlib.conditional_config(1.0))
  dataset = train_testlib.two_patterns()
  finals = []
  for labels in (dataset.labels, 1 - dataset.labels):
    s = state
    for i in range(3):
      s, _ = step(s, parallel.shard_batch(dataset.images[:16], mesh), parallel.shard_batch(labels[:16], mesh))
    finals.append(s.params)
  for a, b in zip(jax.tree.leaves(finals[0]), jax.tree.leaves(finals[1])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  embed = np.asarray(finals[0]['class_embed']['embedding'])
  np.testing.assert_array_equal(embed[:2], np.asarray(state.params['class_embed']['embedding'])[:2])
