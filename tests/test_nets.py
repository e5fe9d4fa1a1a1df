"""Network registry and Unet-Simple."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from ddpm_jax import nets
from ddpm_jax.nets import layers
import nets_testlib


def tiny_config(image_size=28, channels=1, widths=(8, 16, 16, 8, 8)):
  config = default.get_config()
  config.data.image_size, config.data.num_channels = image_size, channels
  config.model.widths = widths
  config.model.time_embed_dim = 16
  return config


def init(model, config):
  return jax.jit(lambda key: nets.init_variables(model, config, key))(jax.random.key(0, impl='rbg'))


def test_timestep_embedding_closed_form():
  emb = layers.timestep_embedding(jnp.array([0, 3]), 8)
  assert emb.shape == (2, 8)
  np.testing.assert_allclose(emb[0], [0, 0, 0, 0, 1, 1, 1, 1], atol=1e-7)
  freqs = np.exp(-np.log(10000.0) * np.arange(4) / 3)
  np.testing.assert_allclose(emb[1], np.concatenate([np.sin(3 * freqs), np.cos(3 * freqs)]), rtol=1e-5)
  with pytest.raises(ValueError, match='even'):
    layers.timestep_embedding(jnp.array([1]), 7)


@pytest.mark.parametrize('size,channels', [(28, 1), (32, 3)])
def test_unet_simple_shapes_and_batch_stats(size, channels):
  config = tiny_config(size, channels)
  model = nets.get_model(config)
  variables = init(model, config)
  assert set(variables) == {'params', 'batch_stats'}
  x = jax.random.normal(jax.random.PRNGKey(1), (4, size, size, channels))
  t = jnp.array([0, 10, 500, 999])
  out, updates = jax.jit(lambda v: model.apply(v, x, t, train=True, mutable=['batch_stats']))(variables)
  assert out.shape == x.shape
  changed = jax.tree.map(lambda a, b: not np.allclose(a, b), variables['batch_stats'], updates['batch_stats'])
  assert all(jax.tree.leaves(changed))


def test_eval_mode_uses_running_statistics():
  """In eval mode an image's output does not depend on the rest of the batch."""
  config = tiny_config()
  model = nets.get_model(config)
  variables = init(model, config)
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 28, 28, 1))
  t = jnp.array([1, 2, 3, 4])
  evaluate = jax.jit(lambda x, t: model.apply(variables, x, t, train=False))
  train_mode = jax.jit(lambda x, t: model.apply(variables, x, t, train=True, mutable=['batch_stats'])[0])
  full = evaluate(x, t)
  np.testing.assert_allclose(evaluate(x[:1], t[:1]), full[:1], atol=1e-5)
  train_full, train_one = train_mode(x, t), train_mode(x[:1], t[:1])
  assert not np.allclose(train_one, train_full[:1], atol=1e-3)


def test_output_depends_on_timestep():
  config = tiny_config()
  model = nets.get_model(config)
  variables = init(model, config)
  x = jnp.ones((2, 28, 28, 1))
  out = jax.jit(lambda v: model.apply(v, x, jnp.array([0, 900]), train=False))(variables)
  assert not np.allclose(out[0], out[1], atol=1e-4)


def test_report_widths_build_for_mnist_and_cifar():
  for size, channels, widths in [(28, 1, (64, 128, 128, 64, 32)), (32, 3, (128, 256, 256, 128, 64))]:
    config = tiny_config(size, channels, widths)
    config.model.time_embed_dim = 128
    shapes = jax.eval_shape(lambda k: nets.init_variables(nets.get_model(config), config, k),
                            jax.random.PRNGKey(0))
    kernels = [p.shape for p in jax.tree.leaves(shapes['params']) if len(p.shape) == 4]
    assert max(k[-1] for k in kernels) == max(widths)
    assert kernels[0][2] == channels


def test_registry_errors_name_the_problem():
  config = tiny_config()
  config.model.name = 'unet_huge'
  with pytest.raises(ValueError, match='valid: unet_simple'):
    nets.get_model(config)
  with pytest.raises(ValueError, match='divisible by 4'):
    nets.get_model(tiny_config(image_size=30))
  with pytest.raises(ValueError, match='5 widths'):
    nets.get_model(tiny_config(widths=(8, 16)))


# ---------------------------------------------------------------------------
# Class conditioning, in every network.


def _conditional_pair(name):
  import nets_testlib
  if name == 'unet_simple':
    config = tiny_config()
  else:
    config = nets_testlib.tiny_config(name)
  uncond = nets_testlib.param_shapes(config)['params']
  config.model.num_classes = 3
  return config, uncond, nets_testlib.param_shapes(config)['params']


@pytest.mark.parametrize('name', list(nets.MODELS))
def test_class_conditioning_adds_only_a_class_embedding_with_a_null_class(name):
  config, uncond, cond = _conditional_pair(name)
  flat = lambda tree: {'/'.join(k.key for k in path): leaf.shape for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}
  extra = {k: v for k, v in flat(cond).items() if k not in flat(uncond)}
  dim = config.model.time_embed_dim if name == 'unet_simple' else config.model.time_mlp_dim
  assert extra == {'class_embed/embedding': (4, dim)}  # 3 classes + the null class.
  assert {k: v for k, v in flat(cond).items() if k in flat(uncond)} == flat(uncond)


def test_conditional_network_uses_labels_and_null_label_shares_its_parameters():
  config = tiny_config()
  config.model.num_classes = 3
  model = nets.get_model(config)
  variables = init(model, config)
  x = jax.random.normal(jax.random.PRNGKey(1), (3, 28, 28, 1))
  t = jnp.array([5, 5, 5])
  apply = jax.jit(lambda labels: model.apply(variables, x, t, train=False, labels=labels))
  same_x = jnp.broadcast_to(x[:1], x.shape)
  outputs = jax.jit(lambda labels: model.apply(variables, same_x, t, train=False, labels=labels))(jnp.array([0, 1, 3]))
  assert not np.allclose(outputs[0], outputs[1]) and not np.allclose(outputs[0], outputs[2])
  assert apply(jnp.array([3, 3, 3])).shape == x.shape  # The null label: same parameters, no others.
  with pytest.raises(ValueError, match='class-conditional.*pass labels'):
    model.apply(variables, x, t, train=False)


# name -> rematerialised layers: unet_simple's five ConvBlocks (batch norm, a static `train` argument);
# the level UNets' (layers.LevelUNet: unet_conv, unet_resnet, ddpm) 8 blocks with dropout and 4
# attention layers (down 1, middle, up 2 at side 4) of a tiny ddpm.
@pytest.mark.parametrize('name,blocks', [('unet_simple', 5), ('ddpm', 12)])
def test_remat_keeps_the_parameters_outputs_gradients_and_statistics(name, blocks):
  """config.model.remat recomputes the blocks in the backward pass: the same parameter paths, training
  outputs (dropout masks included), batch-norm statistics and gradients as without."""
  config = tiny_config(8, 1) if name == 'unet_simple' else nets_testlib.tiny_config(name)
  size, channels = config.data.image_size, config.data.num_channels
  x, t = nets_testlib.normal((4, size, size, channels), 1), jnp.array([0, 5, 10, 19])
  plain = nets.get_model(config)
  config.model.remat = True
  remat = nets.get_model(config)
  variables = nets_testlib.fast_init(plain, config)
  shapes = lambda model: jax.eval_shape(lambda key: nets.init_variables(model, config, key), jax.random.key(0, impl='rbg'))
  assert jax.tree.map(lambda s: s.shape, shapes(remat)) == jax.tree.map(lambda s: s.shape, shapes(plain))
  key = jax.random.key(7, impl='rbg')

  def loss_and_stats(model):
    def loss(params):
      out, mutated = model.apply({**variables, 'params': params}, x, t, train=True, mutable=['batch_stats'],
                                 rngs={'dropout': key})
      return jnp.sum(jnp.sin(out)), (out, mutated)
    return jax.value_and_grad(loss, has_aux=True)

  results = [nets_testlib.fast_jit(loss_and_stats(model))(variables['params']) for model in (plain, remat)]
  for a, b in zip(jax.tree.leaves(results[0]), jax.tree.leaves(results[1]), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  remats = [sum(eqn.primitive.name.startswith('remat') for eqn in jax.make_jaxpr(loss_and_stats(model))(
      variables['params']).jaxpr.eqns) for model in (plain, remat)]
  assert remats == [0, blocks]  # Every block and attention layer rematerialised, only when asked.


def test_class_embedding_rows_start_at_unit_variance():
  """As PyTorch's nn.Embedding: Flax's default (std 1 / sqrt(features)) left the class an order of
  magnitude below the time embedding it joins, and the quickstart's samples barely followed their
  labels (docs/results.md, class conditioning)."""
  config = tiny_config()
  config.model.num_classes = 10
  config.model.time_embed_dim = 256
  table = init(nets.get_model(config), config)['params']['class_embed']['embedding']
  assert table.shape == (11, 256)
  assert 0.9 < float(np.std(table)) < 1.1
