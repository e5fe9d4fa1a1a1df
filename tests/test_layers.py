"""Shared blocks of the level UNets: timestep MLP, ResNet block, attention, down/up-sampling, skeleton."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_jax.nets import layers


# Compiling initialisers on threefry keys takes seconds per layer on the CPU; the 'rbg'
# generator draws from the same distributions and compiles several times faster.
INIT_KEY = jax.random.key(0, impl='rbg')


def normal(shape, seed=0) -> jnp.ndarray:
  """Standard-normal test input from numpy (jax.random would compile a generator per shape)."""
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def init_apply(module, *args):
  """(variables, output) of a freshly initialised module, each compiled whole.

  Only tests about initial values use a real init; the others draw parameters with
  random_variables.
  """
  variables = jax.jit(lambda key: module.init(key, *args))(INIT_KEY)
  return variables, jax.jit(lambda v: module.apply(v, *args))(variables)


def random_variables(module, *args, seed=1, scale=0.3):
  """Variables of the module's shapes drawn with numpy (no init compiled), every layer live."""
  shapes = jax.eval_shape(lambda key: module.init(key, *args), jax.random.PRNGKey(0))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: jnp.asarray(scale * rng.standard_normal(s.shape), s.dtype), shapes)


def test_timestep_mlp_shapes_and_dependence_on_t():
  mlp, t = layers.TimestepMLP(embed_dim=8, mlp_dim=32), jnp.array([0, 1, 999])
  variables = random_variables(mlp, t)
  out = jax.jit(mlp.apply)(variables, t)
  assert out.shape == (3, 32)
  assert set(variables['params']) == {'dense_0', 'dense_1'}
  assert variables['params']['dense_0']['kernel'].shape == (8, 32)
  assert not np.allclose(out[0], out[2])


def test_group_norm_matches_numpy():
  x = normal((2, 4, 4, 8), 0) * 3 + 1
  norm = layers.group_norm(groups=4, eps=1e-6, name=None)
  out = jax.jit(norm.apply)({'params': {'scale': jnp.ones(8), 'bias': jnp.zeros(8)}}, x)
  g = np.asarray(x).reshape(2, 4, 4, 4, 2)
  mean, var = g.mean(axis=(1, 2, 4), keepdims=True), g.var(axis=(1, 2, 4), keepdims=True)
  np.testing.assert_allclose(out, ((g - mean) / np.sqrt(var + 1e-6)).reshape(x.shape), atol=1e-5)


def test_group_norm_equals_flax_group_norm_with_gradients():
  """Same parameters and maths as flax.linen.GroupNorm (two-pass variance): outputs and gradients agree."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  x = normal((2, 8, 8, 12), 0) * 2 + 0.5
  params = {'scale': normal((12,), 1) + 1, 'bias': normal((12,), 2)}
  ours = layers.group_norm(groups=4, eps=1e-6, name=None)
  flax_norm = nn.GroupNorm(num_groups=4, epsilon=1e-6, use_fast_variance=False)
  assert jax.tree.map(jnp.shape, jax.eval_shape(ours.init, INIT_KEY, x)) == jax.tree.map(
      jnp.shape, jax.eval_shape(flax_norm.init, INIT_KEY, x))
  weights = normal(x.shape, 3)
  loss = lambda module: jax.jit(jax.value_and_grad(
      lambda p, x: jnp.sum(module.apply({'params': p}, x) * weights), argnums=(0, 1)))(params, x)
  (value, grads), (flax_value, flax_grads) = loss(ours), loss(flax_norm)
  np.testing.assert_allclose(value, flax_value, rtol=1e-5)
  for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(flax_grads)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_group_norm_keeps_float32_statistics_for_bfloat16_and_checks_groups():
  # A large mean over many positions: sums in bfloat16 would lose the mean and the variance.
  x = (normal((2, 16, 16, 8), 0) * 10 + 1000).astype(jnp.bfloat16)
  norm = layers.group_norm(groups=4, eps=1e-6, name=None)
  variables = {'params': {'scale': jnp.ones(8), 'bias': jnp.zeros(8)}}
  exact = jax.jit(norm.apply)(variables, x.astype(jnp.float32))
  low = jax.jit(norm.apply)(jax.tree.map(lambda a: a.astype(jnp.bfloat16), variables), x)
  assert low.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(low, np.float32), exact, atol=0.03)  # bfloat16 output rounding only.
  with pytest.raises(ValueError, match='3 groups do not divide 8 channels'):
    layers.group_norm(groups=3, eps=1e-6, name=None).init(INIT_KEY, x)


def test_resnet_block_starts_as_identity_and_projects_channels():
  x = normal((2, 8, 8, 8), 0)
  temb = normal((2, 16), 1)
  block = layers.ResnetBlock(features=8, dropout=0.0, norm_groups=4, norm_eps=1e-6)
  variables, out = init_apply(block, x, temb, False)
  np.testing.assert_allclose(out, x, atol=1e-6)  # Last conv is zero: identity at init.
  assert 'shortcut' not in variables['params']
  wider = layers.ResnetBlock(features=16, dropout=0.0, norm_groups=4, norm_eps=1e-6)
  variables = jax.eval_shape(lambda key: wider.init(key, x, temb, False), jax.random.PRNGKey(0))
  assert jax.eval_shape(lambda v: wider.apply(v, x, temb, False), variables).shape == (2, 8, 8, 16)
  assert variables['params']['shortcut']['kernel'].shape == (1, 1, 8, 16)
  assert set(variables['params']) == {'norm_0', 'conv_0', 'temb_proj', 'norm_1', 'conv_1', 'shortcut'}


def test_resnet_block_dropout_only_in_training_and_timestep_matters():
  x = normal((2, 8, 8, 8), 0)
  temb = normal((2, 16), 1)
  block = layers.ResnetBlock(features=8, dropout=0.5, norm_groups=4, norm_eps=1e-6)
  variables = random_variables(block, x, temb, False)
  run = jax.jit(lambda seed, train, temb: block.apply(variables, x, temb, train,
                                                      rngs={'dropout': jax.random.PRNGKey(seed)}),
                static_argnums=1)
  evaluate = jax.jit(lambda temb: block.apply(variables, x, temb, False))  # No rng: deterministic.
  np.testing.assert_array_equal(evaluate(temb), run(0, False, temb))
  assert not np.allclose(run(0, True, temb), run(1, True, temb))
  np.testing.assert_array_equal(run(0, True, temb), run(0, True, temb))
  assert not np.allclose(evaluate(temb), evaluate(-temb))


def naive_attention(params, x, num_heads, groups):
  """Multi-head self-attention over positions, written with a loop over heads in numpy."""
  b, h, w, c = x.shape
  g = np.asarray(x).reshape(b, h, w, groups, c // groups)
  mean, var = g.mean(axis=(1, 2, 4), keepdims=True), g.var(axis=(1, 2, 4), keepdims=True)
  normed = ((g - mean) / np.sqrt(var + 1e-6)).reshape(b, h * w, c)
  normed = normed * np.asarray(params['norm']['scale']) + np.asarray(params['norm']['bias'])
  dense = lambda name, v: v @ np.asarray(params[name]['kernel']) + np.asarray(params[name]['bias'])
  q, k, v = dense('q', normed), dense('k', normed), dense('v', normed)
  d = c // num_heads
  heads = []
  for i in range(num_heads):
    s = slice(i * d, (i + 1) * d)
    logits = q[..., s] @ k[..., s].transpose(0, 2, 1) / np.sqrt(d)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    heads.append((weights / weights.sum(-1, keepdims=True)) @ v[..., s])
  return np.asarray(x) + dense('proj_out', np.concatenate(heads, -1)).reshape(b, h, w, c)


def test_attention_starts_as_identity():
  x = normal((2, 4, 4, 8), 0)
  _, out = init_apply(layers.SelfAttention(num_heads=1, norm_groups=4, norm_eps=1e-6), x)
  np.testing.assert_allclose(out, x, atol=1e-6)  # Zero output projection.


@pytest.mark.parametrize('num_heads', [1, 2])
def test_attention_matches_naive(num_heads):
  x = normal((2, 4, 4, 8), 0)
  attention = layers.SelfAttention(num_heads=num_heads, norm_groups=4, norm_eps=1e-6)
  variables = random_variables(attention, x)
  np.testing.assert_allclose(jax.jit(attention.apply)(variables, x),
                             naive_attention(variables['params'], x, num_heads, 4), atol=1e-4)


def test_attention_is_equivariant_to_permuting_positions():
  x = normal((1, 4, 4, 8), 0)
  attention = layers.SelfAttention(num_heads=1, norm_groups=4, norm_eps=1e-6)
  variables = random_variables(attention, x)
  perm = np.random.default_rng(0).permutation(16)
  shuffle = lambda a: a.reshape(1, 16, 8)[:, perm].reshape(1, 4, 4, 8)
  apply = jax.jit(attention.apply)
  np.testing.assert_allclose(apply(variables, shuffle(x)), shuffle(apply(variables, x)), atol=1e-5)


def test_attention_refuses_heads_that_do_not_split_channels():
  attention = layers.SelfAttention(num_heads=3, norm_groups=4, norm_eps=1e-6)
  with pytest.raises(ValueError, match='num_heads'):
    jax.eval_shape(attention.init, jax.random.PRNGKey(0), jnp.ones((1, 2, 2, 8)))


def test_strided_conv_downsample_pads_like_tensorflow_same():
  """Stride 2 on an even side pads 0 before and 1 after, as DDPM's TF code (and diffusers' padding=0)."""
  x = normal((1, 8, 8, 4), 0)
  down = layers.Downsample('conv')
  variables = random_variables(down, x)
  out = jax.jit(down.apply)(variables, x)
  assert out.shape == (1, 4, 4, 4)
  p = variables['params']['conv']
  expected = jax.lax.conv_general_dilated(x, p['kernel'], (2, 2), ((0, 1), (0, 1)),
                                          dimension_numbers=('NHWC', 'HWIO', 'NHWC')) + p['bias']
  np.testing.assert_allclose(out, expected, atol=1e-5)


def test_maxpool_downsample_takes_the_max_of_each_2x2_block():
  x = normal((2, 6, 6, 3), 0)
  down = layers.Downsample('maxpool')
  assert jax.eval_shape(down.init, jax.random.PRNGKey(0), x) == {}
  np.testing.assert_array_equal(down.apply({}, x), np.asarray(x).reshape(2, 3, 2, 3, 2, 3).max(axis=(2, 4)))


@pytest.mark.parametrize('method,kernel', [('nearest', (3, 3, 4, 4)), ('transpose', (2, 2, 4, 4))])
def test_upsample_doubles_the_side(method, kernel):
  up, x = layers.Upsample(method), jnp.ones((2, 3, 3, 4))
  variables = jax.eval_shape(up.init, jax.random.PRNGKey(0), x)
  assert jax.eval_shape(up.apply, variables, x).shape == (2, 6, 6, 4)
  assert variables['params']['conv']['kernel'].shape == kernel


def test_upsampled_conv_equals_the_conv_of_the_repeated_map_with_gradients():
  x, kernel, cotangent = normal((2, 5, 4, 3), 0), normal((3, 3, 3, 6), 1), normal((2, 10, 8, 6), 2)
  upsampled = lambda x, k: layers.upsampled_conv_general_dilated(x, k, (1, 1), 'SAME', dimension_numbers=layers.NHWC)
  out, vjp = jax.vjp(upsampled, x, kernel)
  expected, expected_vjp = jax.vjp(layers.conv_of_upsampled, x, kernel)
  assert out.shape == (2, 10, 8, 6)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
  for grad, expected_grad in zip(vjp(cotangent), expected_vjp(cotangent)):
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-4)
  low = upsampled(x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16))
  assert low.dtype == jnp.bfloat16
  np.testing.assert_allclose(low.astype(jnp.float32), expected, rtol=0.05, atol=0.1)


def test_upsampled_conv_refuses_what_it_does_not_compute():
  x = jnp.ones((1, 4, 4, 2))
  with pytest.raises(ValueError, match='3x3, stride-1, SAME-padded'):
    layers.upsampled_conv_general_dilated(x, jnp.ones((5, 5, 2, 2)), (1, 1), 'SAME', dimension_numbers=layers.NHWC)
  with pytest.raises(ValueError, match='3x3, stride-1, SAME-padded'):
    layers.upsampled_conv_general_dilated(x, jnp.ones((3, 3, 2, 2)), (2, 2), 'SAME', dimension_numbers=layers.NHWC)


def test_nearest_upsample_repeats_then_convolves():
  x = normal((1, 3, 3, 2), 0)
  up = layers.Upsample('nearest')
  variables = random_variables(up, x)
  p = variables['params']['conv']
  np.testing.assert_allclose(up.apply(variables, x), layers.conv_of_upsampled(x, p['kernel']) + p['bias'], atol=1e-5)


def test_dropout_keeps_units_with_the_right_probability_and_scales_them():
  x = jnp.full((4, 64, 64, 16), 2.0)
  key = jax.random.key(3, impl='rbg')
  drop = jax.jit(lambda key: layers.Dropout(0.25).apply({}, x, deterministic=False, rngs={'dropout': key}))
  out = np.asarray(drop(key))
  assert set(np.unique(out)) == {0.0, np.float32(2.0) / np.float32(0.75)}
  kept = np.mean(out > 0)  # 262,144 Bernoulli(0.75) draws: standard error 8.5e-4.
  assert abs(kept - 0.75) < 5 * 8.5e-4
  np.testing.assert_array_equal(drop(key), out)
  assert np.mean(np.asarray(drop(jax.random.key(4, impl='rbg'))) != out) > 0.3
  threefry = layers.Dropout(0.25).apply({}, x, deterministic=False, rngs={'dropout': jax.random.key(3)})
  assert abs(np.mean(np.asarray(threefry) > 0) - 0.75) < 5 * 8.5e-4
  assert layers.Dropout(0.25).apply({}, x, deterministic=True) is x
  assert layers.Dropout(0.0).apply({}, x, deterministic=False) is x
  with pytest.raises(ValueError, match=r'in \[0, 1\)'):
    layers.Dropout(1.0).apply({}, x, deterministic=False, rngs={'dropout': key})


@pytest.mark.parametrize('shape', [(2, 6, 4, 3), (1, 5, 7, 2)])
def test_max_pool_2x2_equals_flax_max_pool_with_gradients(shape):
  x = normal(shape, 0)
  flax_pool = lambda x: nn.max_pool(x, (2, 2), strides=(2, 2), padding='SAME')
  out, vjp = jax.vjp(layers.max_pool_2x2, x)
  expected, expected_vjp = jax.vjp(flax_pool, x)
  np.testing.assert_array_equal(out, expected)
  cotangent = normal(out.shape, 1)
  np.testing.assert_array_equal(vjp(cotangent)[0], expected_vjp(cotangent)[0])


def test_max_pool_2x2_sends_a_tied_window_gradient_to_its_first_maximum():
  x = jnp.array([[1.0, 3.0], [3.0, 3.0]]).reshape(1, 2, 2, 1)
  grad = jax.grad(lambda x: layers.max_pool_2x2(x).sum())(x)
  np.testing.assert_array_equal(grad.reshape(2, 2), [[0, 1], [0, 0]])


def test_unknown_resampling_names_the_valid_choices():
  with pytest.raises(ValueError, match='valid: nearest, transpose'):
    jax.eval_shape(layers.Upsample('bilinear').init, jax.random.PRNGKey(0), jnp.ones((1, 2, 2, 1)))
  with pytest.raises(ValueError, match='valid: conv, maxpool'):
    jax.eval_shape(layers.Downsample('avgpool').init, jax.random.PRNGKey(0), jnp.ones((1, 2, 2, 1)))


def test_level_unet_skeleton_names_levels_and_keeps_shapes():
  net = layers.LevelUNet(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.0,
                         norm_groups=4, time_embed_dim=8, time_mlp_dim=16, out_channels=2)
  x, t = jnp.ones((1, 8, 8, 2)), jnp.array([3])
  shapes = jax.eval_shape(net.init, jax.random.PRNGKey(0), x, t)
  assert set(shapes['params']) == {
      'temb', 'conv_in', 'down_0_block_0', 'down_0_downsample', 'down_1_block_0', 'down_1_attn_0',
      'mid_block_0', 'mid_attn', 'mid_block_1', 'up_1_block_0', 'up_1_attn_0', 'up_1_block_1', 'up_1_attn_1',
      'up_1_upsample', 'up_0_block_0', 'up_0_block_1', 'norm_out', 'conv_out'}
  assert jax.eval_shape(net.apply, shapes, x, t).shape == (1, 8, 8, 2)
  # Up blocks take [h, skip]: level 1's first block sees 16 + 16 channels, level 0's last 8 + 8.
  assert shapes['params']['up_1_block_0']['conv_0']['kernel'].shape == (3, 3, 32, 16)
  assert shapes['params']['up_0_block_1']['conv_0']['kernel'].shape == (3, 3, 16, 8)


def test_level_unet_output_starts_at_zero():
  net = layers.LevelUNet(ch=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), dropout=0.0,
                         norm_groups=4, time_embed_dim=8, time_mlp_dim=16, out_channels=1)
  _, out = init_apply(net, normal((1, 4, 4, 1), 1), jnp.array([3]))
  np.testing.assert_array_equal(out, 0.0)
