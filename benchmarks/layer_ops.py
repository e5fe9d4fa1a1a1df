"""Forward + backward milliseconds of the layer ops that ddpm_jax.nets.layers computes its own way,
each beside the plain formulation it replaces (the same function); JSON lines out.

  python benchmarks/layer_ops.py                 # the shapes of the CIFAR-10 networks at batch 16
  python benchmarks/layer_ops.py --batch=64 --iters=20

Ops (ours / the plain formulation):
  upsample_conv  layers.upsampled_conv_general_dilated (four 2x2 phase convolutions on the small
                 map) / jnp.repeat twice, then a 3x3 convolution.
  dropout        layers.Dropout (XLA's ThreeFry bit generator, integer threshold) /
                 flax.linen.Dropout (the key's own generator: rbg in our configs).
  max_pool       layers.max_pool_2x2 (elementwise gradient) / flax.linen.max_pool (reduce-window).
  group_norm     layers.GroupNorm (sums per channel first) / flax.linen.GroupNorm.
Each figure is the minimum over --iters runs, after a warm-up, of one compiled call computing the
op's output and its vector-Jacobian product (input and, where there is one, parameter gradients).
Outputs of each pair are compared, and the largest relative difference printed. Measures only.
"""

import json
import os
import sys

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import timing  # pylint: disable=wrong-import-position  # benchmarks/timing.py, beside this script.

FLAGS = flags.FLAGS
flags.DEFINE_integer('batch', 16, 'Batch of every op.')
flags.DEFINE_integer('iters', 10, 'Timed runs per op (the minimum is reported).')
flags.DEFINE_integer('cpu_devices', 1, 'XLA host devices on the CPU (every op runs on one).')


def min_ms(fn, iters: int) -> float:
  return round(1e3 * min(timing.wall_seconds(fn, iters)), 2)


def pairs(batch: int):
  """(op, shape, ours(*args), plain(*args), args): functions of arrays, a dropout key last for dropout."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from ddpm_jax.nets import layers  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  normal = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)

  def upsampled(x, w):
    return layers.upsampled_conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=layers.NHWC)

  def dropout(module):
    return lambda x, key: module.apply({}, x, deterministic=False, rngs={'dropout': key})

  def group_norm(module):
    return lambda x, scale, bias: module.apply({'params': {'scale': scale, 'bias': bias}}, x)

  key = jax.random.key(0, impl='rbg')
  for side, channels in ((8, 128), (16, 128), (16, 256)):
    yield ('upsample_conv', (batch, side, side, channels), upsampled, layers.conv_of_upsampled,
           (normal(batch, side, side, channels), 0.05 * normal(3, 3, channels, channels)))
  for side, channels in ((32, 64), (32, 128)):
    yield ('dropout', (batch, side, side, channels), dropout(layers.Dropout(0.1)), dropout(nn.Dropout(0.1)),
           (normal(batch, side, side, channels), key))
    yield ('max_pool', (batch, side, side, channels), layers.max_pool_2x2,
           lambda x: nn.max_pool(x, (2, 2), strides=(2, 2), padding='SAME'), (normal(batch, side, side, channels),))
    yield ('group_norm', (batch, side, side, channels), group_norm(layers.GroupNorm(32, 1e-6)),
           group_norm(nn.GroupNorm(32, epsilon=1e-6, use_fast_variance=False)),
           (normal(batch, side, side, channels), normal(channels), normal(channels)))


def measure(op, shape, ours, plain, args, iters: int) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  differentiable = len(args) - (op == 'dropout')  # The dropout key takes no gradient.
  line = {'op': op, 'shape': list(shape)}
  outputs = {}
  for name, fn in (('ours', ours), ('plain', plain)):
    def forward_backward(*args, fn=fn):
      out, vjp = jax.vjp(lambda *a: fn(*a, *args[differentiable:]), *args[:differentiable])
      return out, vjp(jnp.ones_like(out))
    compiled = jax.jit(forward_backward)
    outputs[name] = compiled(*args)[0]
    line[f'{name}_ms'] = min_ms(lambda compiled=compiled: jax.block_until_ready(compiled(*args)), iters)
  line['speedup'] = round(line['plain_ms'] / line['ours_ms'], 2)
  if op != 'dropout':  # Different generators: different masks, the same distribution.
    scale = float(jnp.max(jnp.abs(outputs['plain'])))
    line['max_rel_diff'] = float(f'{float(jnp.max(jnp.abs(outputs["ours"] - outputs["plain"]))) / scale:.2e}')
  else:
    line['kept_fraction'] = {name: round(float(jnp.mean(out != 0)), 4) for name, out in outputs.items()}
  line['load_avg_1m'] = round(os.getloadavg()[0], 2)
  return line


def main(argv):
  del argv
  from ddpm_jax import xla_flags  # pylint: disable=g-import-not-at-top
  xla_flags.configure_cpu(FLAGS.cpu_devices)  # As main.py does.
  for op, shape, ours, plain, args in pairs(FLAGS.batch):
    print(json.dumps(measure(op, shape, ours, plain, args, FLAGS.iters)), flush=True)


if __name__ == '__main__':
  app.run(main)
