"""benchmarks/throughput.py: MFU counts the model's FLOPs, not those of our faster formulation.

The upsample convs run as four phase convolutions of the small map (2.25x fewer FLOPs); the
model FLOPs that MFU divides by are counted with them convolving the upsampled map, as the
networks define it. These tests check that the counting formulation computes the same function
and is counted as the plain convolution of the upsampled map.
"""

import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from configs import mnist_simple
from ddpm_jax import nets
from ddpm_jax.nets import layers
import nets_testlib

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'benchmarks'))
import throughput  # pylint: disable=g-import-not-at-top,wrong-import-position


def tiny_networks():
  simple = mnist_simple.get_config()
  simple.model.update(widths=(8, 16, 16, 8, 4), time_embed_dim=8)
  return simple, nets_testlib.tiny_config('unet_resnet', attn=())


def conv_of_upsampled(params, x):
  return layers.conv_of_upsampled(x, params['kernel']) + params.get('bias', 0.0)


def lowered_flops(fn, *args) -> float:
  return throughput.xla_flops(None, jax.jit(fn).lower(*args), 1)[0]


def apply_up_with(params):
  """An upsample conv (layers.upsample_conv3x3) of these params' output width, bias or none."""
  up = layers.upsample_conv3x3(params['kernel'].shape[-1], use_bias='bias' in params)
  return lambda params, x: up.apply({'params': params}, x)


X = nets_testlib.normal((2, 8, 8, 16), seed=1)
PARAMS = {'kernel': 0.1 * nets_testlib.normal((3, 3, 16, 16), seed=0), 'bias': nets_testlib.normal((16,), seed=3)}
apply_up = apply_up_with(PARAMS)


def test_the_upsample_conv_as_defined_is_the_conv_of_the_upsampled_map_with_gradients():
  def defined(params, x):
    with nn.intercept_methods(throughput.upsample_convs_as_defined):
      return apply_up(params, x)

  for fn in (defined, apply_up):
    out, vjp = jax.vjp(jax.jit(fn), PARAMS, X)
    expected, expected_vjp = jax.vjp(conv_of_upsampled, PARAMS, X)
    np.testing.assert_allclose(out, expected, atol=1e-5)
    cotangent = jax.random.normal(jax.random.PRNGKey(2), out.shape)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4), vjp(cotangent), expected_vjp(cotangent))


def test_model_flops_count_the_convolution_of_the_upsampled_map():
  plain = lowered_flops(conv_of_upsampled, PARAMS, X)
  counted, source = throughput.model_flops(apply_up, PARAMS, X, executed=1.0)
  assert counted == plain
  assert 'upsampled map' in source
  assert lowered_flops(apply_up, PARAMS, X) < plain / 2  # Phase convolutions: 2.25x fewer multiply-adds.
  # A trace jit cached without the interceptor must not stand in for the model's count.
  assert throughput.model_flops(apply_up, PARAMS, X)[0] == plain


def test_every_upsample_conv_of_the_networks_is_counted_as_defined():
  shapes_of = lambda tree: jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree)
  for config in tiny_networks():
    model = nets.get_model(config)
    variables = nets_testlib.param_shapes(config)
    size, channels = config.data.image_size, config.data.num_channels
    x, t = jax.ShapeDtypeStruct((2, size, size, channels), jnp.float32), jax.ShapeDtypeStruct((2,), jnp.int32)
    forward = lambda variables, x, t: model.apply(variables, x, t, train=False)
    convs = []

    def record(next_fun, args, kwargs, context):
      if getattr(context.module, 'conv_general_dilated', None) is layers.upsampled_conv_general_dilated:
        convs.append(shapes_of((context.module.variables['params'], args[0])))
      return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
      jax.eval_shape(forward, variables, x, t)
    assert convs, 'the network has no upsample conv'
    extra = sum(lowered_flops(conv_of_upsampled, p, h) - lowered_flops(apply_up_with(p), p, h) for p, h in convs)
    counted, _ = throughput.model_flops(forward, variables, x, t)
    assert counted == lowered_flops(forward, variables, x, t) + extra


def test_a_failed_model_count_falls_back_to_the_executed_count_and_says_so():
  def broken(x):
    raise ValueError('no lowering')

  flops, source = throughput.model_flops(broken, X, executed=123.0)
  assert flops == 123.0
  assert 'as executed' in source and 'ValueError: no lowering' in source


GPU_MACHINE_IMPORTS = """
import importlib.abc, sys
HIDDEN = ('tensorflow', 'tensorflow_datasets', 'clu', 'ml_collections', 'torch', 'diffusers')
class Hide(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name.split('.')[0] in HIDDEN:
      raise ModuleNotFoundError(name, name=name)
sys.meta_path.insert(0, Hide())
sys.path.insert(0, 'benchmarks')
import throughput
config = throughput.load_config(throughput.MODELS['ddpm_256'])
from ddpm_jax import diffusion, nets, processes, train_step
from ddpm_jax.nets import precision
from ddpm_jax.samplers import ancestral, ddim
from ddpm_jax.train_state import create_train_state, make_optimizer
print(config.data.image_size, type(nets.get_model(config)).__name__)
"""


def test_the_jax_measurement_imports_on_the_gpu_machine():
  """The GPU machine has no ml_collections, TensorFlow, CLU or torch: measure_jax loads its config
  (the stand-in ConfigDict) before the package modules that import ml_collections."""
  import subprocess  # pylint: disable=import-outside-toplevel
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  result = subprocess.run([sys.executable, '-c', GPU_MACHINE_IMPORTS], cwd=root, capture_output=True, text=True,
                          check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.split() == ['256', 'DDPMUNet']
