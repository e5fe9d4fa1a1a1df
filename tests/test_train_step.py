"""The train step and the EMA network's batch-norm calibration (ddpm_jax/train_step.py), in process."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_jax import data, diffusion, generate, parallel, train_step
from ddpm_jax.diffusion import expand, mean_flat
from ddpm_jax.train_state import TrainState, root_keys
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
  mesh, model, process, state, _ = train_testlib.training_setup(config)
  state = state.replace(ema_params=jax.tree.map(lambda p: p * 1.5 + 0.01, state.ema_params))
  key = jax.random.key(3, impl='rbg')
  images = np.random.default_rng(0).integers(0, 256, (1, 16, 8, 8, 1)).astype(np.uint8)
  calibrated = jax.jit(train_step.make_bn_calibration(model, process, config, key))(state, images)
  x0, t, _, noise, _, _ = train_step.training_inputs(images[0], jax.random.fold_in(jax.random.fold_in(key, 0), 0),
                                                     config.data.random_flip, process_times(process, config))
  assert jnp.issubdtype(t.dtype, jnp.integer) and np.all((t >= 0) & (t < 20))  # The chain's timesteps.
  x_t = diffusion.q_sample(process.schedule, x0, t, noise)
  np.testing.assert_allclose(process.training_inputs(x0, t, noise)[0], x_t, rtol=1e-6)
  evaluate = jax.jit(lambda stats: model.apply(
      {'params': state.ema_params, 'batch_stats': stats}, x_t, t, train=False))
  in_train_mode, _ = jax.jit(lambda: model.apply(
      {'params': state.ema_params, 'batch_stats': state.batch_stats}, x_t, t, train=True,
      mutable=['batch_stats']))()
  np.testing.assert_allclose(evaluate(calibrated.ema_batch_stats), in_train_mode, atol=2e-3, rtol=1e-3)
  assert not np.allclose(evaluate(state.batch_stats), in_train_mode, atol=2e-2)
  no_calibration = jax.jit(train_step.make_bn_calibration(model, process, config, key))(state, images[:0])
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


def test_micro_batches_interleave_the_batch_and_merge_back_in_order():
  x = jnp.arange(24).reshape(8, 3)
  micro = train_step.split_micro_batches(x, 4)
  np.testing.assert_array_equal(micro[:, :, 0], [[0, 12], [3, 15], [6, 18], [9, 21]])  # Rows i, i + 4.
  np.testing.assert_array_equal(train_step.merge_micro_batches(micro), x)
  with pytest.raises(ValueError, match='A batch of 8 does not split into 3 micro-batches'):
    train_step.split_micro_batches(x, 3)


def _train(config, images, labels, steps):
  """The states (the initial one first) and the last metrics of `steps` compiled train steps on one batch."""
  mesh, _, _, state, step = train_testlib.training_setup(config)
  states = [state]
  for _ in range(steps):
    state, metrics = step(state, parallel.shard_batch(images, mesh), parallel.shard_batch(labels, mesh))
    states.append(state)
  return states, metrics


def test_gradient_accumulation_trains_as_the_whole_batch():
  """k micro-batches of B / k train as one batch of B: the same keys, inputs and timesteps, one
  optimizer and EMA update per step, the loss history in the batch's order. Labels go through the
  split; dropout is off (its masks differ by micro-batch). With ema_warmup the first EMA update
  averages by 0.1 instead of ema_decay."""
  config = train_testlib.conditional_config(0.5)
  config.model.dropout = 0.0
  config.training.timestep_sampler, config.training.importance_history = 'importance', 2
  config.training.ema_warmup = True
  dataset = train_testlib.two_patterns()
  images, labels = dataset.images[::2], dataset.labels[::2]
  results = {}
  for accum in (1, 4):
    config.training.grad_accum_steps = accum
    results[accum] = _train(config, images, labels, steps=3)
  (whole, whole_metrics), (accumulated, accumulated_metrics) = results[1], results[4]
  assert int(accumulated[-1].step) == 3 and int(accumulated[-1].opt_state[-1][0].count) == 3
  for a, b in zip(jax.tree.leaves((whole, whole_metrics)), jax.tree.leaves((accumulated, accumulated_metrics)),
                  strict=True):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
  initial, first = accumulated[0], accumulated[1]
  assert not np.allclose(first.params['conv_out']['kernel'], initial.params['conv_out']['kernel'])  # Zero at init.
  for ema, start, params in zip(*(jax.tree.leaves(p) for p in (first.ema_params, initial.params, first.params))):
    np.testing.assert_allclose(ema, 0.1 * start + 0.9 * params, rtol=1e-5, atol=1e-7)


def test_gradient_accumulation_updates_batch_statistics_once_per_step():
  """Batch norm normalises each micro-batch by its own statistics, but the running statistics move once
  per step, by the mean of the micro-batches' statistics: the first layer's running mean (its input does
  not depend on other batch-norm layers) equals the whole batch's, not that of k updates in a row."""
  config = train_testlib.tiny_config()
  images = train_testlib.two_patterns().images[::2]
  labels = np.zeros(16, np.int32)
  running_mean = {}
  for accum in (1, 2):
    config.training.grad_accum_steps = accum
    (initial, state), _ = _train(config, images, labels, steps=1)
    running_mean[accum] = np.asarray(state.batch_stats['ConvBlock_0']['BatchNorm_0']['mean'])
  np.testing.assert_allclose(running_mean[2], running_mean[1], rtol=1e-5, atol=1e-6)
  assert not np.allclose(running_mean[1], initial.batch_stats['ConvBlock_0']['BatchNorm_0']['mean'], atol=1e-4)


# ---------------------------------------------------------------------------
# Continuous processes (config.diffusion.process vpsde, subvpsde, vesde, edm).

def process_times(process, config):
  """draw(key, n) -> (t, weights): the process's training times, as the step draws them before any loss
  history (and as the batch-norm calibration always does)."""
  return lambda key, n: process.train_times(key, n, config)


def continuous_config(process: str, likelihood_weighting: bool = False, importance: bool = False):
  config = train_testlib.tiny_level_config()  # No batch norm: train and eval mode compute alike.
  config.data.image_size = 8
  config.model.dropout = 0.0
  config.diffusion.process, config.diffusion.likelihood_weighting = process, likelihood_weighting
  config.training.timestep_sampler = 'importance' if importance else 'uniform'
  return config


def expected_first_loss(config, model, process, state, images):
  """The denoising score-matching loss, computed here from the process's marginal, network time and
  likelihood weight, on the step-0 inputs of the train step, drawn as it draws them."""
  x0, t, weights, noise, _, _ = train_step.training_inputs(
      images, jax.random.fold_in(root_keys(config)['train'], 0), config.data.random_flip,
      process_times(process, config))
  model_fn = generate.model_fn_for(model, state.params, state.batch_stats)
  alpha, sigma = process.marginal(t)
  x_t = expand(alpha, 4) * x0 + expand(sigma, 4) * noise
  per_example = mean_flat((model_fn(x_t, process.network_time(t)) - noise) ** 2)
  if config.diffusion.likelihood_weighting:
    per_example = per_example * process.likelihood_weight(t)
  return float(jnp.mean(weights * per_example)), t, weights


@pytest.mark.parametrize('process,likelihood_weighting,importance', [
    ('vpsde', False, False), ('vesde', True, False), ('subvpsde', True, True)])
def test_a_continuous_train_step_takes_the_sde_loss_at_its_times(process, likelihood_weighting, importance):
  """The step's loss is the denoising score-matching loss at the times and noise it draws (importance
  weights applied); the likelihood weighting reaches it (the unweighted loss of the same draw differs)."""
  config = continuous_config(process, likelihood_weighting, importance)
  mesh, model, process, state, step = train_testlib.training_setup(config)
  assert process.likelihood_weighting == likelihood_weighting
  images = train_testlib.two_patterns().images[::2]
  _, metrics = step(state, parallel.shard_batch(images, mesh))
  expected, t, weights = expected_first_loss(config, model, process, state, images)
  assert np.isfinite(expected) and float(metrics['loss']) == pytest.approx(expected, rel=1e-5)
  if likelihood_weighting:  # VE's weighting g^2 / sigma^2 is the constant 2 log(sigma_max / sigma_min).
    config.diffusion.likelihood_weighting = False
    assert float(metrics['loss']) != pytest.approx(expected_first_loss(config, model, process, state, images)[0],
                                                   rel=1e-2)
  eps = config.diffusion.train_eps
  assert np.all((t >= eps) & (t <= 1.0)) and len(np.unique(np.asarray(t))) == len(t)
  if importance:  # t drawn in proportion to the weighting, weights undo it: their product is constant.
    assert not np.allclose(weights, 1.0)
    product = np.asarray(weights * process.likelihood_weight(t))
    np.testing.assert_allclose(product, product[0], rtol=1e-4)
  else:
    np.testing.assert_array_equal(weights, 1.0)


def test_an_edm_train_step_takes_the_preconditioned_loss():
  """config.diffusion.process=edm: the step's loss is lambda(sigma) ||D - x0||^2, D = c_skip x_t + c_out
  F(c_in x_t, c_noise) (Table 1 of Karras et al. 2022, computed here), at the log-normal sigmas it draws;
  finite, and the step moves the parameters."""
  config = continuous_config('edm')
  mesh, model, process, state, step = train_testlib.training_setup(config)
  images = train_testlib.two_patterns().images[::2]
  new_state, metrics = step(state, parallel.shard_batch(images, mesh))
  x0, t, weights, noise, _, _ = train_step.training_inputs(
      images, jax.random.fold_in(root_keys(config)['train'], 0), config.data.random_flip,
      process_times(process, config))
  np.testing.assert_array_equal(weights, 1.0)
  assert np.all(np.asarray(t) > 0) and len(np.unique(np.asarray(t))) == len(t)
  sd, sigma = config.diffusion.sigma_data, expand(t, 4)
  x_t = x0 + sigma * noise
  total = jnp.sqrt(sigma ** 2 + sd ** 2)
  output = generate.model_fn_for(model, state.params, state.batch_stats)(x_t / total, jnp.log(t) / 4)
  denoised = sd ** 2 / total ** 2 * x_t + sigma * sd / total * output
  expected = jnp.mean((t ** 2 + sd ** 2) / (t * sd) ** 2 * mean_flat((denoised - x0) ** 2))
  assert np.isfinite(float(metrics['loss'])) and np.isfinite(float(metrics['grad_norm']))
  assert float(metrics['loss']) == pytest.approx(float(expected), rel=1e-5)
  assert int(new_state.step) == 1
  assert not np.allclose(new_state.params['conv_out']['kernel'], state.params['conv_out']['kernel'])


@pytest.mark.parametrize('process', ['vpsde', 'vesde', 'edm'])
def test_bn_calibration_of_a_continuous_process_uses_its_noised_inputs(process):
  """As the discrete test above: the calibrated statistics are the batch's at the process's network
  input and time input (log sigma for VE; EDM's c_in x_t and c_noise), drawn with the calibration key."""
  config = train_testlib.tiny_config()
  config.diffusion.process = process
  mesh, model, process, state, _ = train_testlib.training_setup(config)
  state = state.replace(ema_params=jax.tree.map(lambda p: p * 1.5 + 0.01, state.ema_params))
  key = jax.random.key(3, impl='rbg')
  images = np.random.default_rng(0).integers(0, 256, (1, 16, 8, 8, 1)).astype(np.uint8)
  calibrated = jax.jit(train_step.make_bn_calibration(model, process, config, key))(state, images)
  x0, t, _, noise, _, _ = train_step.training_inputs(images[0], jax.random.fold_in(jax.random.fold_in(key, 0), 0),
                                                     config.data.random_flip, process_times(process, config))
  mean_coeff, std = process.marginal(t)
  x_t = mean_coeff[:, None, None, None] * x0 + std[:, None, None, None] * noise
  if process.name == 'edm':  # Its network sees c_in x_t and c_noise = log(sigma) / 4 (Table 1).
    x_t = x_t / np.sqrt(np.asarray(t) ** 2 + config.diffusion.sigma_data ** 2)[:, None, None, None]
    time_input = jnp.log(t) / 4
  else:  # VE: log sigma(t); VP: 999 t.
    time_input = {'vesde': jnp.log(process.marginal(t)[1]), 'vpsde': 999.0 * t}[process.name]
  got_x, got_time = process.training_inputs(x0, t, noise)
  np.testing.assert_allclose(got_x, x_t, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got_time, time_input, rtol=1e-5, atol=1e-6)
  evaluate = jax.jit(lambda stats: model.apply(
      {'params': state.ema_params, 'batch_stats': stats}, x_t, time_input, train=False))
  in_train_mode, _ = jax.jit(lambda: model.apply(
      {'params': state.ema_params, 'batch_stats': state.batch_stats}, x_t, time_input, train=True,
      mutable=['batch_stats']))()
  np.testing.assert_allclose(evaluate(calibrated.ema_batch_stats), in_train_mode, atol=2e-3, rtol=1e-3)
  assert not np.allclose(evaluate(state.batch_stats), in_train_mode, atol=2e-2)
