"""Inception features per second, ours (JAX) and pytorch-fid's (PyTorch), on the same images; JSON lines out.

  python benchmarks/fid.py                            # 64 random 32x32 uint8 images, batch 32
  python benchmarks/fid.py --num_images=256 --batch=64 --iters=3
  python benchmarks/fid.py --weights=~/.cache/ddpm-jax/inception/pt_inception-2015-12-05.npz

Both networks get the same weights: random ones drawn with numpy (speed does not depend on
them), or a converted weights file. Each side runs uint8 NHWC images -> pool3 features in
numpy, the whole set in batches, as FID does: ours through nets.inception.make_inception_fn
(compiled once, before timing), pytorch-fid's InceptionV3 under torch.no_grad() with its
ToTensor scaling. The median of --iters passes is reported, with the largest difference
between the two sides' features as a sanity figure. Measures only; asserts nothing.
"""

import json
import os
import statistics
import sys
import time
from unittest import mock

import numpy as np
from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import timing  # pylint: disable=wrong-import-position  # benchmarks/timing.py, beside this script.

FLAGS = flags.FLAGS
flags.DEFINE_integer('num_images', 64, 'Images per pass.')
flags.DEFINE_integer('batch', 32, 'Images per network call.')
flags.DEFINE_integer('image_size', 32, 'Side of the square uint8 images (resized to 299 inside both networks).')
flags.DEFINE_integer('iters', 2, 'Timed passes over all images (the median is reported).')
flags.DEFINE_string('weights', None, 'A converted weights .npz; default: random weights of the right shapes.')
flags.DEFINE_bool('torch', True, 'Also time pytorch-fid\'s InceptionV3.')
flags.DEFINE_integer('cpu_devices', 1, 'XLA host devices on the CPU (make_inception_fn runs on one).')
flags.DEFINE_bool('eigen_cpu_convolutions', True, 'Eigen instead of YNNPACK convolutions on the CPU, as main.py '
                  '(config.eigen_cpu_convolutions; ddpm_jax/xla_flags.py).')


def median_seconds(fn, iters: int) -> float:
  """Median wall time of fn() over iters runs (the caller warms up)."""
  return statistics.median(timing.wall_seconds(fn, iters, warm_up=False))


def time_ours(variables, images, batch: int, iters: int) -> tuple[dict, np.ndarray]:
  import jax  # pylint: disable=g-import-not-at-top
  from ddpm_jax.nets import inception  # pylint: disable=g-import-not-at-top
  features = inception.make_inception_fn(variables, batch_size=batch)
  start = time.perf_counter()
  pool3, _ = features(images)
  first_s = time.perf_counter() - start
  seconds = median_seconds(lambda: features(images), iters)
  return {'impl': 'ddpm_jax.nets.inception', 'framework': f'jax {jax.__version__}',
          'backend': jax.default_backend(), 'num_images': len(images), 'batch': batch,
          'image': 'x'.join(map(str, images.shape[1:])), 'images_per_s': round(len(images) / seconds, 2),
          'pass_s': round(seconds, 3), 'first_pass_with_compile_s': round(first_s, 1)}, pool3


def time_pytorch_fid(variables, images, batch: int, iters: int) -> tuple[dict, np.ndarray]:
  import torch  # pylint: disable=g-import-not-at-top
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  from pytorch_fid import inception as pfid  # pylint: disable=g-import-not-at-top
  from ddpm_jax.tools import convert_inception  # pylint: disable=g-import-not-at-top
  layouts = {4: (3, 2, 0, 1), 2: (1, 0), 1: (0,)}
  state_dict = {convert_inception.torch_key('/'.join(k)): torch.from_numpy(np.ascontiguousarray(
      np.transpose(v, layouts[v.ndim]))) for k, v in traverse_util.flatten_dict(variables).items()}
  with mock.patch.object(pfid, 'load_state_dict_from_url', return_value=state_dict):
    model = pfid.InceptionV3([pfid.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()

  def features():
    out = []
    with torch.no_grad():
      for start in range(0, len(images), batch):
        x = torch.from_numpy(images[start:start + batch]).permute(0, 3, 1, 2).float() / 255
        out.append(model(x)[0][:, :, 0, 0].numpy())
    return np.concatenate(out)

  pool3 = features()
  seconds = median_seconds(features, iters)
  return {'impl': 'pytorch_fid.inception.InceptionV3', 'framework': f'torch {torch.__version__}',
          'threads': torch.get_num_threads(), 'num_images': len(images), 'batch': batch,
          'image': 'x'.join(map(str, images.shape[1:])), 'images_per_s': round(len(images) / seconds, 2),
          'pass_s': round(seconds, 3)}, pool3


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  from ddpm_jax import xla_flags  # pylint: disable=g-import-not-at-top  # Imports no JAX.
  xla_flags.configure_cpu(FLAGS.cpu_devices, FLAGS.eigen_cpu_convolutions)  # As main.py does.
  from ddpm_jax.nets import inception  # pylint: disable=g-import-not-at-top
  if FLAGS.weights:
    variables = inception.load_inception_params(FLAGS.weights)
  else:  # The speed does not depend on the weights.
    variables = inception.unflatten_variables(inception.random_flat_variables())
  images = np.random.default_rng(0).integers(
      0, 256, (FLAGS.num_images, FLAGS.image_size, FLAGS.image_size, 3), dtype=np.uint8)
  ours, ours_pool3 = time_ours(variables, images, FLAGS.batch, FLAGS.iters)
  print(json.dumps(ours), flush=True)
  if FLAGS.torch:
    reference, torch_pool3 = time_pytorch_fid(variables, images, FLAGS.batch, FLAGS.iters)
    print(json.dumps(reference), flush=True)
    difference = float(np.abs(ours_pool3 - torch_pool3).max() / np.abs(torch_pool3).max())
    print(json.dumps({'ratio': 'ddpm_jax / pytorch-fid (images/s)', 'num_images': len(images), 'batch': FLAGS.batch,
                      'value': round(ours['images_per_s'] / reference['images_per_s'], 3),
                      'pool3_max_relative_difference': float(f'{difference:.3g}')}), flush=True)


if __name__ == '__main__':
  app.run(main)
