"""The offline feature classifier: training, determinism, features, the cache, splits and class accuracy."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_jax import data, errors
from ddpm_jax.evaluation import offline_classifier
from ddpm_jax.nets.classifier import Classifier, classifier_from_params

NUM_CLASSES = 3
TINY = offline_classifier.ClassifierSettings(widths=(8, 16), convs_per_block=1, steps=2, batch_size=16, lr=1e-2)


def shapes_dataset(n: int, seed: int) -> data.ImageDataset:
  """28x28x1 digits-like images of three classes: a horizontal bar, a vertical bar, a square; anywhere."""
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 40, (n, 28, 28, 1)).astype(np.uint8)
  labels = np.arange(n, dtype=np.int32) % NUM_CLASSES
  for image, label in zip(images, labels):
    r, c = rng.integers(4, 20, 2)
    if label == 0:
      image[r:r + 3, 3:25] = 255
    elif label == 1:
      image[3:25, c:c + 3] = 255
    else:
      image[r:r + 7, c:c + 7] = 255
  return data.ImageDataset(images, labels)


@pytest.fixture(scope='module')
def trained():
  return offline_classifier.train_classifier(*shapes_dataset(192, seed=0), NUM_CLASSES, seed=0, steps=60,
                                     batch_size=16, lr=1e-2, widths=(8, 16), convs_per_block=1)


def test_training_reaches_high_accuracy_on_easy_data(trained):
  test = shapes_dataset(90, seed=1)
  assert offline_classifier.accuracy(trained, test.images, test.labels, batch_size=32) >= 0.9


def test_training_is_deterministic_and_reports_progress():
  train = shapes_dataset(64, seed=0)
  seen = []
  # The network and batch of every other test: one compiled step serves all.
  kwargs = dict(steps=5, batch_size=16, lr=1e-2, widths=(8, 16), convs_per_block=1, random_shift=2,
                progress_every=2)
  a = offline_classifier.train_classifier(*train, NUM_CLASSES, seed=3, on_progress=lambda s, m: seen.append((s, m)), **kwargs)
  b = offline_classifier.train_classifier(*train, NUM_CLASSES, seed=3, **kwargs)
  c = offline_classifier.train_classifier(*train, NUM_CLASSES, seed=4, **kwargs)
  jax.tree.map(np.testing.assert_array_equal, a, b)
  assert not np.array_equal(a['logits']['kernel'], c['logits']['kernel'])
  assert [s for s, _ in seen] == [2, 4, 5]
  assert all(set(m) == {'loss', 'accuracy'} and np.isfinite(m['loss']) for _, m in seen)


def test_feature_fn_shapes_and_network_from_params(trained):
  model = classifier_from_params(trained)
  assert model == Classifier(widths=(8, 16), convs_per_block=1, num_classes=NUM_CLASSES)
  images = shapes_dataset(5, seed=2).images
  features, logits = offline_classifier.feature_fn(trained)(images)
  assert features.shape == (5, 16) and features.dtype == jnp.float32
  assert logits.shape == (5, NUM_CLASSES)
  with pytest.raises(ValueError, match='uint8'):
    offline_classifier.feature_fn(trained)(images.astype(np.float32))


def test_predict_in_padded_batches_matches_one_batch(trained):
  images = shapes_dataset(11, seed=3).images
  whole = np.argmax(offline_classifier.feature_fn(trained)(images)[1], -1)
  np.testing.assert_array_equal(offline_classifier.predict(trained, images, batch_size=4), whole)


def test_augment_without_flips_or_shifts_is_identity_and_shifts_keep_content():
  x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (4, 6, 6, 1)), jnp.float32)
  key = jax.random.key(0, impl='rbg')
  augment = jax.jit(offline_classifier.augment, static_argnums=(2, 3))
  np.testing.assert_array_equal(augment(x, key, False, 0), x)
  flipped = augment(x, key, True, 0)
  assert all(np.array_equal(f, o) or np.array_equal(f, o[:, ::-1]) for f, o in zip(flipped, x))
  assert any(not np.array_equal(f, o) for f, o in zip(flipped, x))
  shifted = np.asarray(augment(x, key, False, 1))
  padded = np.pad(np.asarray(x), ((0, 0), (1, 1), (1, 1), (0, 0)), mode='reflect')
  for s, p in zip(shifted, padded):
    assert any(np.array_equal(s, p[i:i + 6, j:j + 6]) for i in range(3) for j in range(3))


def test_holdout_split_is_deterministic_disjoint_and_complete():
  dataset = data.ImageDataset(np.arange(50, dtype=np.uint8).reshape(50, 1, 1, 1), np.arange(50, dtype=np.int32))
  train, test = offline_classifier.holdout_split(dataset, 0.2, seed=1)
  again_train, again_test = offline_classifier.holdout_split(dataset, 0.2, seed=1)
  np.testing.assert_array_equal(test.labels, again_test.labels)
  np.testing.assert_array_equal(train.images, again_train.images)
  assert len(test.labels) == 10 and len(train.labels) == 40
  assert sorted(train.labels.tolist() + test.labels.tolist()) == list(range(50))
  np.testing.assert_array_equal(test.images.ravel(), test.labels)  # Images stay with their labels.
  assert not np.array_equal(test.labels, offline_classifier.holdout_split(dataset, 0.2, seed=2)[1].labels)
  with pytest.raises(ValueError, match='empty'):
    offline_classifier.holdout_split(dataset, 0.001, seed=1)


def test_accuracy_table_on_a_constructed_case():
  requested = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 2])
  predicted = np.array([0, 0, 0, 1, 1, 0, 2, 2, 2, 2])
  table = offline_classifier.accuracy_table(predicted, requested, num_classes=4)
  assert table.overall == pytest.approx(0.8)
  np.testing.assert_allclose(table.per_class[:3], [0.75, 0.5, 1.0])
  assert np.isnan(table.per_class[3])
  np.testing.assert_array_equal(table.counts, [4, 2, 4, 0])
  assert table.confusion[0, 1] == 1 and table.confusion[1, 0] == 1 and table.confusion.sum() == 10
  text = offline_classifier.format_class_accuracy(table, ['a', 'b', 'c', 'd'])
  assert 'b' in text and '0.500' in text and 'overall' in text and '0.800' in text
  with pytest.raises(ValueError, match=r'\[0, 4\)'):
    offline_classifier.accuracy_table(np.array([5]), np.array([0]), num_classes=4)


def test_class_accuracy_table_agrees_with_predictions(trained):
  samples = shapes_dataset(30, seed=4)
  table = offline_classifier.class_accuracy_table(trained, samples.images, samples.labels, NUM_CLASSES, batch_size=8)
  predicted = offline_classifier.predict(trained, samples.images, 8)
  assert table.overall == pytest.approx(np.mean(predicted == samples.labels))
  np.testing.assert_array_equal(table.counts, [10, 10, 10])


def cache_folder(root, train, settings=TINY):
  """The cache folder of the shapes classifier trained on `train` with `settings`."""
  expected = offline_classifier._expected_info('shapes', train, NUM_CLASSES, settings)  # pylint: disable=protected-access
  return offline_classifier.cache_directory(str(root), expected)


def test_cache_trains_once_then_loads(tmp_path, monkeypatch):
  train, test = offline_classifier.holdout_split(shapes_dataset(60, seed=0), 0.25, seed=0)
  params, info = offline_classifier.get_or_train_classifier(str(tmp_path), 'shapes', train, test, NUM_CLASSES, TINY)
  assert not info['loaded_from_cache']
  folder = cache_folder(tmp_path, train)
  assert os.listdir(tmp_path) == [os.path.basename(folder)] and os.path.basename(folder).startswith('shapes-')
  assert sorted(os.listdir(folder)) == ['classifier.msgpack', 'info.json']
  saved = json.loads(open(os.path.join(folder, 'info.json')).read())
  assert saved['settings'] == TINY.to_dict() and saved['image_shape'] == [28, 28, 1]
  assert saved['num_classes'] == NUM_CLASSES and saved['num_test'] == 15 and saved['feature_dim'] == 16
  assert 0 <= saved['test_accuracy'] <= 1
  assert 'published' in saved['note']

  def fail(*args, **kwargs):
    raise AssertionError('retrained although the cache matches')
  monkeypatch.setattr(offline_classifier, 'train_classifier', fail)
  loaded, loaded_info = offline_classifier.get_or_train_classifier(str(tmp_path), 'shapes', train, test, NUM_CLASSES, TINY)
  assert loaded_info['loaded_from_cache'] and loaded_info['test_accuracy'] == saved['test_accuracy']
  jax.tree.map(np.testing.assert_array_equal, params, loaded)
  assert offline_classifier.accuracy(loaded, test.images, test.labels) == pytest.approx(saved['test_accuracy'])


@pytest.fixture
def cached(tmp_path):
  train, test = offline_classifier.holdout_split(shapes_dataset(60, seed=0), 0.25, seed=0)
  offline_classifier.get_or_train_classifier(str(tmp_path), 'shapes', train, test, NUM_CLASSES, TINY)
  return tmp_path, train, test


@pytest.mark.parametrize('field, value', [('steps', 3), ('seed', 1), ('widths', (8, 8)), ('random_flip', True)])
def test_each_setting_keys_a_cache_of_its_own(cached, field, value):
  """A classifier of other settings (e.g. config.eval.classifier_steps) is trained and cached beside the
  first one, which stays as it was, and each is found again by its settings."""
  tmp_path, train, test = cached
  first = cache_folder(tmp_path, train)
  before = {name: open(os.path.join(first, name), 'rb').read() for name in os.listdir(first)}
  other = dataclasses.replace(TINY, **{field: value})
  _, info = offline_classifier.get_or_train_classifier(str(tmp_path), 'shapes', train, test, NUM_CLASSES, other)
  assert not info['loaded_from_cache'] and info['settings'][field] == (list(value) if field == 'widths' else value)
  assert sorted(os.listdir(tmp_path)) == sorted([os.path.basename(first), os.path.basename(cache_folder(tmp_path, train, other))])
  assert {name: open(os.path.join(first, name), 'rb').read() for name in os.listdir(first)} == before
  _, again = offline_classifier.get_or_train_classifier(str(tmp_path), 'shapes', train, test, NUM_CLASSES, TINY)
  assert again['loaded_from_cache'] and again['settings'] == TINY.to_dict()


def test_cache_for_other_data_is_an_error(cached):
  tmp_path, train, test = cached
  info_path = os.path.join(cache_folder(tmp_path, train), 'info.json')
  other_train = data.ImageDataset(train.images[1:], train.labels[1:])
  with pytest.raises(errors.ClassifierCacheError, match=r'(?s)train_fingerprint.*Delete') as e:
    offline_classifier.get_or_train_classifier(str(tmp_path), 'shapes', other_train, test, NUM_CLASSES, TINY)
  assert info_path in str(e.value)
  assert os.path.exists(info_path)  # Never deleted automatically.


@pytest.mark.parametrize('damage', ['params', 'info', 'missing_info'])
def test_corrupt_cache_is_a_clear_error(cached, damage):
  tmp_path, train, test = cached
  folder = cache_folder(tmp_path, train)
  params_path, info_path = tmp_path / folder / 'classifier.msgpack', tmp_path / folder / 'info.json'
  if damage == 'params':
    params_path.write_bytes(b'not msgpack')
    culprit = params_path
  elif damage == 'info':
    info_path.write_text('{"format_version": 1')
    culprit = info_path
  else:
    info_path.unlink()
    culprit = params_path
  with pytest.raises(errors.ClassifierCacheError, match='Delete') as e:
    offline_classifier.get_or_train_classifier(str(tmp_path), 'shapes', train, test, NUM_CLASSES, TINY)
  assert str(culprit) in str(e.value)
  assert culprit.exists()  # Never deleted automatically.


def test_bad_settings_and_data_are_errors():
  with pytest.raises(ValueError, match='widths'):
    offline_classifier.check_settings(offline_classifier.ClassifierSettings(widths=(12,)))
  with pytest.raises(ValueError, match='steps'):
    offline_classifier.check_settings(offline_classifier.ClassifierSettings(steps=0))
  with pytest.raises(ValueError, match='rng_impl'):
    offline_classifier.check_settings(offline_classifier.ClassifierSettings(rng_impl='philox'))
  images = np.zeros((8, 28, 28, 1), np.uint8)
  with pytest.raises(ValueError, match='labels must lie'):
    offline_classifier.train_classifier(images, np.full(8, 3), NUM_CLASSES, seed=0, steps=1, batch_size=4, lr=1e-3)
  with pytest.raises(errors.DataError, match='exceeds'):
    offline_classifier.train_classifier(images, np.zeros(8), NUM_CLASSES, seed=0, steps=1, batch_size=16, lr=1e-3)


def test_settings_round_trip_through_json():
  restored = offline_classifier.ClassifierSettings.from_dict(json.loads(json.dumps(offline_classifier.CIFAR10_SETTINGS.to_dict())))
  assert restored == offline_classifier.CIFAR10_SETTINGS
  assert offline_classifier.default_settings((28, 28, 1)) == offline_classifier.MNIST_SETTINGS
  assert offline_classifier.default_settings((32, 32, 3)) == offline_classifier.CIFAR10_SETTINGS
  for preset in (offline_classifier.MNIST_SETTINGS, offline_classifier.CIFAR10_SETTINGS, offline_classifier.CIFAR10_CPU_SETTINGS):
    offline_classifier.check_settings(preset)
