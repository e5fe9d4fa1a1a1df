"""Images per second of every network, forward and train step, on this machine; JSON lines out.

  python benchmarks/nets.py                       # every network at its config's batch
  python benchmarks/nets.py --batch=8 --iters=3   # a quicker run at batch 8
  python benchmarks/nets.py --configs=cifar10_ddpm --batch=16

For each config: the network's forward (eval mode) and train.py's whole train step
(loss, gradients, Adam, EMA) compiled once, then timed; the median of --iters runs.
Parameters are drawn with numpy from the network's shapes, so no init is compiled. In the
same run, diffusers' UNet2DModel with the official DDPM CIFAR-10 configuration (PyTorch,
CPU) is timed at the same batch (forward, and forward + backward + Adam), and the ratio to
our ddpm network is printed. Measures only; asserts nothing.
"""

import json
import os
import statistics
import sys
import time

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from ddpm_jax import xla_flags  # pylint: disable=wrong-import-position  # Imports no JAX.
import timing  # pylint: disable=wrong-import-position  # benchmarks/timing.py, beside this script.

FLAGS = flags.FLAGS
flags.DEFINE_list('configs', ['mnist_simple', 'mnist_conv', 'mnist_resnet', 'cifar10_simple', 'cifar10_conv',
                              'cifar10_resnet', 'cifar10_ddpm'], 'Config files (configs/NAME.py) to time.')
flags.DEFINE_integer('batch', 0, 'Global batch size; 0 = each config\'s training batch size.')
flags.DEFINE_integer('iters', 3, 'Timed iterations per measurement (the median is reported).')
flags.DEFINE_integer('cpu_devices', 1, 'XLA devices to split the CPU into (0 = one per core), as in training.')
flags.DEFINE_bool('torch', True, 'Also time diffusers\' UNet2DModel (official DDPM config) with PyTorch.')


def median_seconds(fn, iters: int) -> float:
  """Median wall time of fn() over iters runs, after one untimed warm-up run."""
  return statistics.median(timing.wall_seconds(fn, iters))


def random_params(shapes, seed: int = 0):
  """Params of the given shapes drawn with numpy: 0.05 * N(0, 1) (scales of 1 for norms)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map_with_path(
      lambda path, s: (np.ones(s.shape, s.dtype) if 'scale' in jax.tree_util.keystr(path)
                       else (0.05 * rng.standard_normal(s.shape)).astype(s.dtype)), shapes)


def time_jax_network(config_name: str, batch: int, iters: int) -> dict:
  """Forward and train-step images/s of one config's network through train.py's functions."""
  import importlib  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from ddpm_jax import diffusion, nets, train  # pylint: disable=g-import-not-at-top
  from ddpm_jax.train_state import create_train_state, make_optimizer  # pylint: disable=g-import-not-at-top

  config = importlib.import_module(f'configs.{config_name}').get_config()
  batch = batch or config.training.batch_size
  mesh = train.make_mesh()
  if batch % mesh.size:
    raise app.UsageError(f'--batch={batch} does not divide over {mesh.size} devices.')
  model = nets.get_model(config)
  shapes = jax.eval_shape(lambda key: nets.init_variables(model, config, key), jax.random.PRNGKey(0))
  variables = random_params(shapes)
  tx = make_optimizer(config.optim)
  state = jax.device_put(create_train_state(variables, tx), train.replicated(mesh))
  size, channels = config.data.image_size, config.data.num_channels
  rng = np.random.default_rng(0)
  images = train.shard_batch(rng.integers(0, 256, (batch, size, size, channels), dtype=np.uint8), mesh)
  x = jax.device_put(rng.standard_normal((batch, size, size, channels)).astype(np.float32), train.batch_sharding(mesh))
  t = jax.device_put(rng.integers(0, config.diffusion.num_timesteps, batch).astype(np.int32),
                     train.batch_sharding(mesh))

  forward = jax.jit(lambda s, x, t: train.model_fn_for(model, s.params, s.batch_stats)(x, t))
  start = time.perf_counter()
  jax.block_until_ready(forward(state, x, t))
  compile_forward = time.perf_counter() - start
  forward_s = median_seconds(lambda: jax.block_until_ready(forward(state, x, t)), iters)

  schedule = diffusion.schedule_from_config(config.diffusion)
  step = jax.jit(train.make_train_step(model, schedule, tx, config, jax.random.PRNGKey(0)),
                 out_shardings=train.replicated(mesh))
  start = time.perf_counter()
  state, _ = jax.block_until_ready(step(state, images))
  compile_step = time.perf_counter() - start
  holder = [state]

  def run_step():
    holder[0], metrics = step(holder[0], images)
    jax.block_until_ready(metrics)

  step_s = median_seconds(run_step, iters)
  return {'network': config.model.name, 'config': config_name, 'framework': 'jax',
          'params': int(sum(p.size for p in jax.tree.leaves(variables['params']))),
          'image': f'{size}x{size}x{channels}', 'batch': batch, 'devices': mesh.size,
          'forward_img_per_s': round(batch / forward_s, 2), 'train_step_img_per_s': round(batch / step_s, 2),
          'forward_s': round(forward_s, 4), 'train_step_s': round(step_s, 4),
          'compile_forward_s': round(compile_forward, 1), 'compile_train_step_s': round(compile_step, 1)}


def time_diffusers_ddpm(batch: int, iters: int) -> dict:
  """The same measurements for diffusers' UNet2DModel with the official DDPM CIFAR-10 config."""
  import torch  # pylint: disable=g-import-not-at-top
  from diffusers import UNet2DModel  # pylint: disable=g-import-not-at-top

  torch.manual_seed(0)
  model = UNet2DModel(
      sample_size=32, in_channels=3, out_channels=3, block_out_channels=(128, 256, 256, 256), layers_per_block=2,
      down_block_types=('DownBlock2D', 'AttnDownBlock2D', 'DownBlock2D', 'DownBlock2D'),
      up_block_types=('UpBlock2D', 'UpBlock2D', 'AttnUpBlock2D', 'UpBlock2D'), attention_head_dim=None,
      norm_eps=1e-6, norm_num_groups=32, downsample_padding=0, flip_sin_to_cos=False, freq_shift=1, dropout=0.1)
  x = torch.randn(batch, 3, 32, 32)
  t = torch.randint(0, 1000, (batch,))
  noise = torch.randn_like(x)
  model.eval()

  def forward():
    with torch.no_grad():
      model(x, t)

  forward_s = median_seconds(forward, iters)
  model.train()
  optimizer = torch.optim.Adam(model.parameters(), lr=2e-4)

  def train_step():
    optimizer.zero_grad(set_to_none=True)
    loss = torch.mean((model(x, t).sample - noise) ** 2)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()

  step_s = median_seconds(train_step, iters)
  return {'network': 'diffusers.UNet2DModel (official DDPM CIFAR-10)', 'framework': f'torch {torch.__version__}',
          'params': sum(p.numel() for p in model.parameters()), 'image': '32x32x3', 'batch': batch,
          'threads': torch.get_num_threads(),
          'forward_img_per_s': round(batch / forward_s, 2), 'train_step_img_per_s': round(batch / step_s, 2),
          'forward_s': round(forward_s, 4), 'train_step_s': round(step_s, 4)}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  xla_flags.configure_cpu(FLAGS.cpu_devices)  # As main.py does.
  results = {}
  for name in FLAGS.configs:
    results[name] = time_jax_network(name, FLAGS.batch, FLAGS.iters)
    print(json.dumps(results[name]), flush=True)
  if FLAGS.torch:
    ddpm = results.get('cifar10_ddpm')
    reference = time_diffusers_ddpm(ddpm['batch'] if ddpm else (FLAGS.batch or 128), FLAGS.iters)
    print(json.dumps(reference), flush=True)
    if ddpm:
      print(json.dumps({'ratio': 'ddpm_jax ddpm / diffusers UNet2DModel (images/s)', 'batch': ddpm['batch'],
                        'forward': round(ddpm['forward_img_per_s'] / reference['forward_img_per_s'], 3),
                        'train_step': round(ddpm['train_step_img_per_s'] / reference['train_step_img_per_s'], 3)}),
            flush=True)


if __name__ == '__main__':
  app.run(main)
