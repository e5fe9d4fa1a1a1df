"""Mixed precision: bfloat16 compute, float32 params, gradients and outputs; the same learning."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_jax import data, nets, parallel
from ddpm_jax.nets import precision
import train_testlib


def small_config(compute_dtype: str):
  config = train_testlib.tiny_config()
  config.training.compute_dtype = compute_dtype
  return config


def test_float32_is_the_module_itself_and_unknown_dtypes_are_refused():
  model = nets.get_model(small_config('float32'))
  assert precision.computing_in(model, 'float32') is model
  with pytest.raises(ValueError, match='float16.*valid: float32, bfloat16'):
    precision.computing_in(model, 'float16')


def test_bfloat16_forward_is_close_to_float32_and_its_gradients_are_float32():
  config = small_config('bfloat16')
  model = nets.get_model(config)
  variables = nets.init_variables(model, config, jax.random.key(0, impl='rbg'))  # Compiles faster than threefry.
  mixed = precision.computing_in(model, 'bfloat16')
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 8, 8, 1))
  t = jnp.array([0, 5, 10, 19])
  exact = jax.jit(lambda v: model.apply(v, x, t, train=False))(variables)
  approx = jax.jit(lambda v: mixed.apply(v, x, t, train=False))(variables)
  assert approx.dtype == jnp.float32
  assert 0 < float(jnp.max(jnp.abs(approx - exact))) < 0.05 * float(jnp.max(jnp.abs(exact)))
  grads = jax.jit(jax.grad(lambda p: jnp.mean(mixed.apply({**variables, 'params': p}, x, t, train=False) ** 2)))(
      variables['params'])
  assert {g.dtype for g in jax.tree.leaves(grads)} == {jnp.dtype(jnp.float32)}


def loss_curve(compute_dtype: str, steps: int) -> tuple[list[float], set]:
  dataset = train_testlib.two_patterns()
  mesh, _, _, state, step = train_testlib.training_setup(small_config(compute_dtype))
  losses = []
  for i in range(steps):
    state, metrics = step(state, parallel.shard_batch(data.get_batch(dataset, 16, i, 0).images, mesh))
    losses.append(float(metrics['loss']))
  return losses, {leaf.dtype for leaf in jax.tree.leaves((state.params, state.opt_state, state.ema_params))}


@pytest.mark.slow
def test_bfloat16_training_follows_the_float32_loss_curve():
  full, full_dtypes = loss_curve('float32', 40)
  mixed, mixed_dtypes = loss_curve('bfloat16', 40)
  assert mixed_dtypes == full_dtypes  # Params, optimizer and EMA stay as they are (float32; int step counts).
  assert mixed != full  # It did compute in bfloat16.
  assert np.mean(mixed[-10:]) < 0.5 * np.mean(mixed[:10]), mixed
  # Same data, keys and init: the curves agree to within bfloat16's noise.
  np.testing.assert_allclose(np.mean(np.reshape(mixed, (4, 10)), 1), np.mean(np.reshape(full, (4, 10)), 1),
                             rtol=0.15)
