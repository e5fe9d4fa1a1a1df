"""The FID Inception-v3 in Flax: pytorch-fid's network, for FID, IS and KID.

pytorch-fid (`pytorch_fid.inception.InceptionV3`, use_fid_inception=True) ports the
TensorFlow graph of 2015-12-05 that the original FID and Inception Score code use. It is
torchvision's Inception-v3 with these differences, all kept here:
  * blocks A, C and E_1 average-pool without counting the padding (TensorFlow's way);
  * the last E block (Mixed_7c) max-pools in its pool branch;
  * the classifier has 1008 outputs.
The input is resized to 299x299 as torch's F.interpolate(mode='bilinear',
align_corners=False) does (no antialiasing), then scaled from [0, 1] to [-1, 1].
Convolutions are followed by batch norm (eps 0.001) and ReLU, as torchvision's BasicConv2d.

Weights: pytorch-fid's published state dict, converted once by
`python -m ddpm_jax.tools.convert_inception` into a .npz that `load_inception_params` reads
and checks. Module and parameter names follow torchvision's, so the mapping is by name.
"""

import functools
import os
import zipfile
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ddpm_jax import atomic_io
from ddpm_jax.errors import InceptionWeightsError, MissingInceptionWeightsError

FID_WEIGHTS_URL = ('https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/'
                   'pt_inception-2015-12-05-6726825d.pth')
FID_WEIGHTS_FILE = 'pt_inception-2015-12-05-6726825d.pth'
# Where the converted weights are looked for unless a path is given.
DEFAULT_WEIGHTS_PATH = os.path.join('~', '.cache', 'ddpm-jax', 'inception', 'pt_inception-2015-12-05.npz')
INPUT_SIZE = 299
POOL3_DIM = 2048
NUM_LOGITS = 1008
BATCH_NORM_EPS = 1e-3
# Convolutions in full float32 by default: on GPUs the default precision may use TF32 and
# move features by ~1e-3, more than the parity this network is tested to.
DEFAULT_PRECISION = 'highest'

Precision = Any


# ---------------------------------------------------------------------------
# Resizing as torch does.

def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
  """(out_size, in_size) weights of torch's 1-D bilinear resize with align_corners=False.

  Source coordinate of output pixel i: (i + 0.5) * in/out - 0.5, clamped below at 0; the two
  neighbours are floor(src) and the next one (clamped at the edge). No antialiasing, so
  downsampling reads only two pixels per output, exactly like F.interpolate. The scale and
  the coordinate are rounded to float32 as torch's CPU kernel does (one rounding after a
  fused multiply-add): computed more exactly, weights differ from torch's by up to 3e-6.
  """
  scale = np.float64(np.float32(in_size) / np.float32(out_size))
  src = (scale * (np.arange(out_size, dtype=np.float64) + 0.5) - 0.5).astype(np.float32)
  src = np.maximum(src, np.float32(0))
  lo = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
  hi = np.minimum(lo + 1, in_size - 1)
  frac = np.clip(src - lo.astype(np.float32), 0, 1).astype(np.float32)
  weights = np.zeros((out_size, in_size), np.float32)
  np.add.at(weights, (np.arange(out_size), lo), np.float32(1) - frac)
  np.add.at(weights, (np.arange(out_size), hi), frac)
  return weights


def resize_bilinear(images: jax.Array, height: int, width: int, precision: Precision = DEFAULT_PRECISION) -> jax.Array:
  """NHWC images resized like torch's F.interpolate(mode='bilinear', align_corners=False)."""
  _, h, w, _ = images.shape
  if (h, w) == (height, width):
    return images
  rows = jnp.asarray(bilinear_matrix(h, height))
  cols = jnp.asarray(bilinear_matrix(w, width))
  images = jnp.einsum('oh,nhwc->nowc', rows, images, precision=precision)
  return jnp.einsum('pw,nowc->nopc', cols, images, precision=precision)


# ---------------------------------------------------------------------------
# The network.

def _pairs(value: int | Sequence[int]) -> tuple[int, int]:
  return (value, value) if isinstance(value, int) else tuple(value)


class BasicConv(nn.Module):
  """Convolution without bias, batch norm (running statistics, eps 0.001), ReLU."""
  features: int
  kernel_size: int | Sequence[int]
  strides: int | Sequence[int] = 1
  padding: int | Sequence[int] = 0
  precision: Precision = DEFAULT_PRECISION

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.Conv(self.features, _pairs(self.kernel_size), _pairs(self.strides),
                padding=[(p, p) for p in _pairs(self.padding)], use_bias=False, precision=self.precision,
                name='conv')(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=BATCH_NORM_EPS, name='bn')(x)
    return nn.relu(x)


def _avg_pool_3x3(x: jax.Array) -> jax.Array:
  """3x3, stride 1, padding 1, averaging over the real pixels only (count_include_pad=False)."""
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3(x: jax.Array, stride: int, padding: int) -> jax.Array:
  return nn.max_pool(x, (3, 3), strides=(stride, stride), padding=((padding, padding), (padding, padding)))


class InceptionA(nn.Module):
  """pytorch-fid's FIDInceptionA (Mixed_5b/c/d)."""
  pool_features: int
  precision: Precision = DEFAULT_PRECISION

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(BasicConv, precision=self.precision)
    branch1x1 = conv(64, 1, name='branch1x1')(x)
    branch5x5 = conv(48, 1, name='branch5x5_1')(x)
    branch5x5 = conv(64, 5, padding=2, name='branch5x5_2')(branch5x5)
    branch3x3dbl = conv(64, 1, name='branch3x3dbl_1')(x)
    branch3x3dbl = conv(96, 3, padding=1, name='branch3x3dbl_2')(branch3x3dbl)
    branch3x3dbl = conv(96, 3, padding=1, name='branch3x3dbl_3')(branch3x3dbl)
    branch_pool = conv(self.pool_features, 1, name='branch_pool')(_avg_pool_3x3(x))
    return jnp.concatenate([branch1x1, branch5x5, branch3x3dbl, branch_pool], axis=-1)


class InceptionB(nn.Module):
  """torchvision's InceptionB (Mixed_6a): the 35 -> 17 reduction."""
  precision: Precision = DEFAULT_PRECISION

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(BasicConv, precision=self.precision)
    branch3x3 = conv(384, 3, strides=2, name='branch3x3')(x)
    branch3x3dbl = conv(64, 1, name='branch3x3dbl_1')(x)
    branch3x3dbl = conv(96, 3, padding=1, name='branch3x3dbl_2')(branch3x3dbl)
    branch3x3dbl = conv(96, 3, strides=2, name='branch3x3dbl_3')(branch3x3dbl)
    branch_pool = _max_pool_3x3(x, stride=2, padding=0)
    return jnp.concatenate([branch3x3, branch3x3dbl, branch_pool], axis=-1)


class InceptionC(nn.Module):
  """pytorch-fid's FIDInceptionC (Mixed_6b..6e): factorised 7x7 convolutions."""
  channels_7x7: int
  precision: Precision = DEFAULT_PRECISION

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(BasicConv, precision=self.precision)
    c7 = self.channels_7x7
    branch1x1 = conv(192, 1, name='branch1x1')(x)
    branch7x7 = conv(c7, 1, name='branch7x7_1')(x)
    branch7x7 = conv(c7, (1, 7), padding=(0, 3), name='branch7x7_2')(branch7x7)
    branch7x7 = conv(192, (7, 1), padding=(3, 0), name='branch7x7_3')(branch7x7)
    branch7x7dbl = conv(c7, 1, name='branch7x7dbl_1')(x)
    branch7x7dbl = conv(c7, (7, 1), padding=(3, 0), name='branch7x7dbl_2')(branch7x7dbl)
    branch7x7dbl = conv(c7, (1, 7), padding=(0, 3), name='branch7x7dbl_3')(branch7x7dbl)
    branch7x7dbl = conv(c7, (7, 1), padding=(3, 0), name='branch7x7dbl_4')(branch7x7dbl)
    branch7x7dbl = conv(192, (1, 7), padding=(0, 3), name='branch7x7dbl_5')(branch7x7dbl)
    branch_pool = conv(192, 1, name='branch_pool')(_avg_pool_3x3(x))
    return jnp.concatenate([branch1x1, branch7x7, branch7x7dbl, branch_pool], axis=-1)


class InceptionD(nn.Module):
  """torchvision's InceptionD (Mixed_7a): the 17 -> 8 reduction."""
  precision: Precision = DEFAULT_PRECISION

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(BasicConv, precision=self.precision)
    branch3x3 = conv(192, 1, name='branch3x3_1')(x)
    branch3x3 = conv(320, 3, strides=2, name='branch3x3_2')(branch3x3)
    branch7x7x3 = conv(192, 1, name='branch7x7x3_1')(x)
    branch7x7x3 = conv(192, (1, 7), padding=(0, 3), name='branch7x7x3_2')(branch7x7x3)
    branch7x7x3 = conv(192, (7, 1), padding=(3, 0), name='branch7x7x3_3')(branch7x7x3)
    branch7x7x3 = conv(192, 3, strides=2, name='branch7x7x3_4')(branch7x7x3)
    branch_pool = _max_pool_3x3(x, stride=2, padding=0)
    return jnp.concatenate([branch3x3, branch7x7x3, branch_pool], axis=-1)


class InceptionE(nn.Module):
  """pytorch-fid's FIDInceptionE_1 (average pool) or FIDInceptionE_2 (max pool, Mixed_7c)."""
  max_pool: bool
  precision: Precision = DEFAULT_PRECISION

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(BasicConv, precision=self.precision)
    branch1x1 = conv(320, 1, name='branch1x1')(x)
    branch3x3 = conv(384, 1, name='branch3x3_1')(x)
    branch3x3 = jnp.concatenate([conv(384, (1, 3), padding=(0, 1), name='branch3x3_2a')(branch3x3),
                                 conv(384, (3, 1), padding=(1, 0), name='branch3x3_2b')(branch3x3)], axis=-1)
    branch3x3dbl = conv(448, 1, name='branch3x3dbl_1')(x)
    branch3x3dbl = conv(384, 3, padding=1, name='branch3x3dbl_2')(branch3x3dbl)
    branch3x3dbl = jnp.concatenate([conv(384, (1, 3), padding=(0, 1), name='branch3x3dbl_3a')(branch3x3dbl),
                                    conv(384, (3, 1), padding=(1, 0), name='branch3x3dbl_3b')(branch3x3dbl)],
                                   axis=-1)
    pooled = _max_pool_3x3(x, stride=1, padding=1) if self.max_pool else _avg_pool_3x3(x)
    branch_pool = conv(192, 1, name='branch_pool')(pooled)
    return jnp.concatenate([branch1x1, branch3x3, branch3x3dbl, branch_pool], axis=-1)


class Logits(nn.Module):
  """The 2048 -> 1008 classifier (torch's `fc`); its bias is added only if `use_bias`."""
  use_bias: bool
  precision: Precision = DEFAULT_PRECISION

  @nn.compact
  def __call__(self, pool3: jax.Array) -> jax.Array:
    kernel = self.param('kernel', nn.initializers.lecun_normal(), (pool3.shape[-1], NUM_LOGITS))
    bias = self.param('bias', nn.initializers.zeros, (NUM_LOGITS,))
    logits = jnp.dot(pool3, kernel, precision=self.precision)
    return logits + bias if self.use_bias else logits


class InceptionV3(nn.Module):
  """NHWC images in [0, 1], any size -> (pool3 features (N, 2048), logits (N, 1008)).

  `logits_bias`: False (default) gives pool3 @ W, the logits of the standard Inception Score
  (the original TensorFlow code and torch-fidelity's 'logits_unbiased' leave the softmax bias
  out); True gives the classifier's full output, pool3 @ W + b (torch's `fc(pool3)`).
  """
  logits_bias: bool = False
  precision: Precision = DEFAULT_PRECISION

  @nn.compact
  def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    conv = functools.partial(BasicConv, precision=self.precision)
    x = resize_bilinear(images, INPUT_SIZE, INPUT_SIZE, self.precision)
    x = 2 * x - 1
    x = conv(32, 3, strides=2, name='Conv2d_1a_3x3')(x)
    x = conv(32, 3, name='Conv2d_2a_3x3')(x)
    x = conv(64, 3, padding=1, name='Conv2d_2b_3x3')(x)
    x = _max_pool_3x3(x, stride=2, padding=0)
    x = conv(80, 1, name='Conv2d_3b_1x1')(x)
    x = conv(192, 3, name='Conv2d_4a_3x3')(x)
    x = _max_pool_3x3(x, stride=2, padding=0)
    for name, pool_features in (('Mixed_5b', 32), ('Mixed_5c', 64), ('Mixed_5d', 64)):
      x = InceptionA(pool_features, self.precision, name=name)(x)
    x = InceptionB(self.precision, name='Mixed_6a')(x)
    for name, channels_7x7 in (('Mixed_6b', 128), ('Mixed_6c', 160), ('Mixed_6d', 160), ('Mixed_6e', 192)):
      x = InceptionC(channels_7x7, self.precision, name=name)(x)
    x = InceptionD(self.precision, name='Mixed_7a')(x)
    x = InceptionE(max_pool=False, precision=self.precision, name='Mixed_7b')(x)
    x = InceptionE(max_pool=True, precision=self.precision, name='Mixed_7c')(x)
    pool3 = jnp.mean(x, axis=(1, 2))
    return pool3, Logits(self.logits_bias, self.precision, name='fc')(pool3)


# ---------------------------------------------------------------------------
# Weights file: flat .npz, keys 'params/Mixed_5b/branch1x1/conv/kernel', 'batch_stats/.../bn/mean'.

def flat_key(path: Sequence[str]) -> str:
  return '/'.join(path)


@functools.lru_cache(maxsize=1)
def expected_shapes() -> dict[str, tuple[int, ...]]:
  """'collection/module/.../leaf' -> shape of every variable of the network, without computing any."""
  shapes = jax.eval_shape(InceptionV3().init, jax.random.PRNGKey(0),
                          jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32))
  return {flat_key(path): tuple(leaf.shape) for path, leaf in traverse_util.flatten_dict(shapes).items()}


def unflatten_variables(flat: dict[str, np.ndarray]) -> dict:
  """{'params': ..., 'batch_stats': ...} from flat 'collection/module/.../leaf' keys."""
  return traverse_util.unflatten_dict({tuple(k.split('/')): v for k, v in flat.items()})


def random_flat_variables(seed: int = 0) -> dict[str, np.ndarray]:
  """Every variable under its flat key, drawn with numpy: He-scaled kernels, batch norm near the
  identity. For speed checks without the weights, whose speed does not depend on them
  (benchmarks/fid.py, gpu_check.sh), and for parity tests."""
  rng = np.random.default_rng(seed)
  flat = {}
  for key, shape in expected_shapes().items():
    leaf = key.rsplit('/', 1)[1]
    if leaf == 'kernel':
      value = rng.standard_normal(shape, dtype=np.float32) * np.float32(np.sqrt(2 / np.prod(shape[:-1])))
    elif leaf == 'scale':
      value = rng.uniform(0.8, 1.2, shape)
    elif leaf == 'var':
      value = rng.uniform(0.5, 2.0, shape)
    else:  # bias, mean
      value = 0.1 * rng.standard_normal(shape)
    flat[key] = value.astype(np.float32)
  return flat


def conversion_command(output: str) -> str:
  """The command that writes converted weights to `output`."""
  command = f'python -m ddpm_jax.tools.convert_inception --torch_weights={FID_WEIGHTS_FILE}'
  if os.path.expanduser(output) != os.path.expanduser(DEFAULT_WEIGHTS_PATH):
    command += f' --out={os.path.expanduser(output)}'
  return command


def _how_to_make(path: str) -> str:
  return (f'Download {FID_WEIGHTS_URL} (pytorch-fid\'s FID Inception weights, about 95 MB; e.g. '
          f'`curl -L -o {FID_WEIGHTS_FILE} {FID_WEIGHTS_URL}`), convert it with '
          f'`{conversion_command(path)}` (needs torch, from requirements-dev.txt), which writes '
          f'{os.path.expanduser(path)}.')


def check_weights(flat: dict[str, np.ndarray], path: str) -> None:
  """Raises InceptionWeightsError naming every key that is missing, unexpected, misshapen or not finite."""
  expected = expected_shapes()
  missing = sorted(set(expected) - set(flat))
  unexpected = sorted(set(flat) - set(expected))
  present = sorted(set(expected) & set(flat))
  wrong = [f'{k}: {flat[k].shape} {flat[k].dtype}, needs {expected[k]} float32' for k in present
           if tuple(flat[k].shape) != expected[k] or flat[k].dtype != np.float32]
  not_finite = [k for k in present if flat[k].dtype.kind == 'f' and not np.isfinite(flat[k]).all()]
  problems = []
  for label, items in (('missing', missing), ('unexpected', unexpected), ('wrong shape or dtype', wrong),
                       ('with NaN or infinite values', not_finite)):
    if items:
      problems.append(f'{len(items)} {label}: {"; ".join(items[:5])}{" ..." if len(items) > 5 else ""}')
  if problems:
    raise InceptionWeightsError(f'{path} does not hold the FID Inception weights: {". ".join(problems)}. '
                                f'Convert them again: {_how_to_make(path)}')


def load_inception_params(path: str = DEFAULT_WEIGHTS_PATH) -> dict:
  """{'params': ..., 'batch_stats': ...} of InceptionV3 (numpy float32) from a converted .npz file.

  Checks every key and shape; raises InceptionWeightsError (MissingInceptionWeightsError when
  there is no file) with what to download and the conversion command.
  """
  full = os.path.expanduser(path)
  if not os.path.isfile(full):
    raise MissingInceptionWeightsError(f'No Inception weights at {full}. FID, IS and KID need them. '
                                       + _how_to_make(path))
  try:
    data = np.load(full, allow_pickle=False)
    if not isinstance(data, np.lib.npyio.NpzFile):
      raise ValueError('a single .npy array, not an .npz archive')
    with data:
      flat = {key: data[key] for key in data.files}
  except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as e:
    raise InceptionWeightsError(f'{full} is not a readable .npz file ({type(e).__name__}: {e}); it may be '
                                f'truncated or corrupt. Convert again: {_how_to_make(path)}') from e
  check_weights(flat, full)
  return unflatten_variables(flat)


def save_inception_params(variables: dict, path: str) -> str:
  """Writes variables as the flat .npz that load_inception_params reads, atomically; returns the path."""
  full = os.path.expanduser(path)
  flat = {flat_key(k): np.asarray(v, np.float32) for k, v in traverse_util.flatten_dict(variables).items()}
  check_weights(flat, full)
  atomic_io.savez(full, **flat)
  return full


# ---------------------------------------------------------------------------
# uint8 images in, features out.

FeatureFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def as_rgb_uint8(images: np.ndarray) -> np.ndarray:
  """uint8 NHWC images with 3 channels (grayscale repeated); ValueError for anything but uint8 with 1 or 3."""
  images = np.asarray(images)
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f'Inception takes uint8 NHWC images with 1 or 3 channels in [0, 255]; got '
                     f'{images.dtype} of shape {images.shape}. Convert model outputs in [-1, 1] with '
                     f'data.to_uint8 first.')
  return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images


def make_inception_fn(variables: dict, batch_size: int = 100, mesh: Optional[Mesh] = None,
                      logits_bias: bool = False, precision: Precision = DEFAULT_PRECISION) -> FeatureFn:
  """A function uint8 NHWC images (1 or 3 channels) -> (pool3 (N, 2048), logits (N, 1008)), float32 numpy.

  Images go through one jitted network in chunks of `batch_size`, the last chunk padded, so
  each image size compiles once. Grayscale is repeated to 3 channels. With a `mesh` (1-D,
  axis 'data', as parallel.make_mesh), each chunk is split over its devices and the weights are
  replicated; batch_size must then divide by the number of devices.
  """
  if batch_size <= 0:
    raise ValueError(f'batch_size must be positive, got {batch_size}.')
  if mesh is not None:
    if batch_size % mesh.size:
      raise ValueError(f'batch_size={batch_size} does not divide over the {mesh.size} devices of the mesh.')
    variables = jax.device_put(variables, NamedSharding(mesh, PartitionSpec()))
    batch_sharding = NamedSharding(mesh, PartitionSpec('data'))
  else:
    variables = jax.device_put(variables)
    batch_sharding = None
  model = InceptionV3(logits_bias=logits_bias, precision=precision)

  @jax.jit
  def apply(variables, images):
    return model.apply(variables, images.astype(jnp.float32) / 255)

  def features(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    images = as_rgb_uint8(images)
    pool3, logits = [], []
    for start in range(0, len(images), batch_size):
      chunk = images[start:start + batch_size]
      padded = np.concatenate([chunk, np.zeros((batch_size - len(chunk),) + chunk.shape[1:], np.uint8)])
      out_pool3, out_logits = apply(variables, jax.device_put(padded, batch_sharding))
      pool3.append(np.asarray(out_pool3)[:len(chunk)])
      logits.append(np.asarray(out_logits)[:len(chunk)])
    if not pool3:
      return np.zeros((0, POOL3_DIM), np.float32), np.zeros((0, NUM_LOGITS), np.float32)
    return np.concatenate(pool3), np.concatenate(logits)

  return features
