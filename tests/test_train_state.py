"""Optimizer, learning-rate schedule and EMA."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import default
from ddpm_jax import train_state


def optim_config(**overrides):
  config = default.get_config().optim
  config.update(overrides)
  return config


def test_learning_rate_warms_up_linearly_then_stays():
  schedule = train_state.learning_rate_schedule(optim_config(lr=1e-3, warmup_steps=10))
  np.testing.assert_allclose([schedule(s) for s in (0, 5, 10, 100)], [0, 5e-4, 1e-3, 1e-3], rtol=1e-6)
  constant = train_state.learning_rate_schedule(optim_config(lr=2e-4, warmup_steps=0))
  assert float(constant(0)) == pytest.approx(2e-4)


def test_gradients_are_clipped_to_global_norm():
  params = {'w': jnp.zeros(4)}
  grads = {'w': jnp.array([30.0, 40.0, 0.0, 0.0])}  # norm 50
  clipped = optax.chain(optax.clip_by_global_norm(1.0))
  tx = train_state.make_optimizer(optim_config(lr=1.0, grad_clip=1.0, optimizer='adam'))
  updates, _ = tx.update(grads, tx.init(params), params)
  reference, _ = optax.adam(1.0).update(clipped.update(grads, clipped.init(params))[0],
                                        optax.adam(1.0).init(params))
  np.testing.assert_allclose(updates['w'], reference['w'], rtol=1e-6)


def test_unknown_optimizer_lists_valid():
  with pytest.raises(ValueError, match='valid: adam'):
    train_state.make_optimizer(optim_config(optimizer='sgd'))


def test_apply_gradients_updates_params_ema_and_step():
  tx = optax.sgd(0.5)
  state = train_state.create_train_state({'params': {'w': jnp.array([1.0, 2.0])}}, tx)
  assert state.batch_stats == {} and int(state.step) == 0
  np.testing.assert_array_equal(state.ema_params['w'], state.params['w'])
  new = train_state.apply_gradients(state, {'w': jnp.array([2.0, -2.0])}, {'m': 1}, tx, ema_decay=0.9)
  np.testing.assert_allclose(new.params['w'], [0.0, 3.0])
  np.testing.assert_allclose(new.ema_params['w'], [0.9 * 1 + 0.1 * 0, 0.9 * 2 + 0.1 * 3])
  assert int(new.step) == 1 and new.batch_stats == {'m': 1}


def test_ema_update_closed_form():
  ema = train_state.ema_update({'a': jnp.array(1.0)}, {'a': jnp.array(3.0)}, 0.75)
  assert float(ema['a']) == pytest.approx(1.5)


def test_ema_warmup_decay_closed_form():
  """min(decay, (1 + n) / (10 + n)): 0.1 at the first update, then 2/11, 3/12, ..., decay from
  n = (10 decay - 1) / (1 - decay) on (89,990 for 0.9999)."""
  steps = jnp.array([0, 1, 2, 8, 89_989, 89_991, 10 ** 7])
  np.testing.assert_allclose(train_state.warmed_up_ema_decay(0.9999, steps),
                             [0.1, 2 / 11, 3 / 12, 0.5, 89_990 / 89_999, 0.9999, 0.9999], rtol=1e-6)
  np.testing.assert_allclose(train_state.warmed_up_ema_decay(0.5, jnp.array([0, 7, 8, 100])), [0.1, 8 / 17, 0.5, 0.5])


def test_apply_gradients_with_ema_warmup_decays_by_the_step_count():
  tx = optax.sgd(0.5)
  state = train_state.create_train_state({'params': {'w': jnp.array([1.0, 2.0])}}, tx).replace(step=jnp.int32(5))
  new = train_state.apply_gradients(state, {'w': jnp.array([2.0, -2.0])}, {}, tx, ema_decay=0.9, ema_warmup=True)
  decay = 6 / 15  # (1 + 5) / (10 + 5) < 0.9.
  np.testing.assert_allclose(new.ema_params['w'], [decay * 1 + (1 - decay) * 0, decay * 2 + (1 - decay) * 3], rtol=1e-6)
  late = train_state.apply_gradients(state.replace(step=jnp.int32(1000)), {'w': jnp.array([2.0, -2.0])}, {}, tx,
                                     ema_decay=0.9, ema_warmup=True)
  np.testing.assert_allclose(late.ema_params['w'], [0.9 * 1 + 0.1 * 0, 0.9 * 2 + 0.1 * 3], rtol=1e-6)
