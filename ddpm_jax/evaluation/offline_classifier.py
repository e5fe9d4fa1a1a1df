"""An offline feature network for FID and a judge of class-conditional samples.

Inception-v3 weights cannot be downloaded without internet, so the project also trains a small
classifier (nets/classifier.py) on the dataset's own train split and measures FID in the space
of its pooled features. Such FIDs are comparable only with each other (same dataset, same cached
classifier), never with published Inception FIDs. The classifier is trained once per dataset and
settings and kept under `cache_dir/<dataset_name>-<digest of its settings>/` (cache_directory) with
an `info.json` that records its settings, the data
it was trained on and its test accuracy, so users can judge the features.
The same classifier answers "does a 7 look like a 7" for class-conditional samples.
"""

import dataclasses
import functools
import hashlib
import json
import os
import time
from typing import Any, Callable, NamedTuple, Optional

from absl import logging
import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ddpm_jax import atomic_io, data
from ddpm_jax.errors import ClassifierCacheError
from ddpm_jax.train_state import RNG_IMPLS
from ddpm_jax.nets.classifier import NORM_GROUPS, Classifier, classifier_from_params

FORMAT_VERSION = 1
PARAMS_FILE = 'classifier.msgpack'
INFO_FILE = 'info.json'
CACHE_DIGEST_CHARS = 12  # Hex digits of the settings' sha256 in a cache folder's name.
NOT_COMPARABLE_NOTE = ('FID in the features of this project-trained classifier is comparable only with '
                       'other FIDs measured with the same cached classifier, never with published '
                       '(Inception-v3) FIDs.')

# Adam's scaling of the gradients (b1 0.9, b2 0.999); the step size is applied in the train step.
ADAM = optax.scale_by_adam()

FeatureFn = Callable[[np.ndarray], tuple[jax.Array, jax.Array]]
ProgressFn = Callable[[int, dict[str, float]], None]


@dataclasses.dataclass(frozen=True)
class ClassifierSettings:
  """Everything that decides the trained classifier; a cache is reused only under equal settings."""
  # Channels of each conv block; the last is the feature dimension. Each block after the first
  # halves the image side, so four blocks see a whole 28x28 digit (receptive field 31 pixels).
  widths: tuple[int, ...] = (16, 32, 64, 128)
  convs_per_block: int = 1
  steps: int = 800
  batch_size: int = 64
  # Peak Adam learning rate, decayed to 0 over `steps` by a cosine.
  lr: float = 2e-3
  seed: int = 0
  # Random left-right flips of training images (natural images, not digits).
  random_flip: bool = False
  # Random translations of training images by up to this many pixels (reflect-padded crops).
  random_shift: int = 2
  # JAX random-number generator of the init and augmentation keys (rbg compiles much faster on
  # the CPU than threefry2x32; see config.rng_impl).
  rng_impl: str = 'rbg'

  def to_dict(self) -> dict[str, Any]:
    return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
            for f in dataclasses.fields(self)}

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> 'ClassifierSettings':
    return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()})


# Digits: small and quick, trained in minutes on a CPU (accuracy and time: benchmarks/README.md).
MNIST_SETTINGS = ClassifierSettings()
# Natural 32x32 RGB images: wider, two convs per block, ~10 epochs, with flips. Meant for an
# accelerator (hours on a CPU; benchmarks/README.md).
CIFAR10_SETTINGS = ClassifierSettings(widths=(32, 64, 128, 256), convs_per_block=2, steps=4000,
                                      batch_size=128, random_flip=True)
# CIFAR-10 on a CPU only: one conv per block and 1,000 steps (1.3 epochs), minutes instead of hours.
# Weaker features (benchmarks/README.md): prefer CIFAR10_SETTINGS on an accelerator.
CIFAR10_CPU_SETTINGS = ClassifierSettings(widths=(32, 64, 128, 256), steps=1000, random_flip=True)


def default_settings(image_shape: tuple[int, int, int]) -> ClassifierSettings:
  """MNIST_SETTINGS for grey images, CIFAR10_SETTINGS for colour ones."""
  return MNIST_SETTINGS if image_shape[-1] == 1 else CIFAR10_SETTINGS


def check_settings(settings: ClassifierSettings) -> None:
  """Raises ValueError naming the field when the settings cannot train a classifier."""
  if not settings.widths or any(w <= 0 or w % min(NORM_GROUPS, w) for w in settings.widths):
    raise ValueError(f'Classifier widths must be a non-empty tuple of positive numbers, each divisible by '
                     f'{NORM_GROUPS} (or below it); got {settings.widths}.')
  for name in ('convs_per_block', 'steps', 'batch_size'):
    if getattr(settings, name) < 1:
      raise ValueError(f'Classifier {name} must be at least 1, got {getattr(settings, name)}.')
  if settings.lr <= 0:
    raise ValueError(f'Classifier lr must be positive, got {settings.lr}.')
  if settings.random_shift < 0:
    raise ValueError(f'Classifier random_shift must be >= 0, got {settings.random_shift}.')
  if settings.rng_impl not in RNG_IMPLS:
    raise ValueError(f'Unknown classifier rng_impl {settings.rng_impl!r}; valid: {", ".join(RNG_IMPLS)}.')


def _check_dataset(images: np.ndarray, labels: np.ndarray, num_classes: int, what: str) -> None:
  if images.dtype != np.uint8 or images.ndim != 4:
    raise ValueError(f'{what}: images must be uint8 NHWC, got {images.dtype} of shape {images.shape}.')
  if labels.shape != (images.shape[0],):
    raise ValueError(f'{what}: {images.shape[0]} images but labels of shape {labels.shape}.')
  if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f'{what}: labels must lie in [0, {num_classes}), got [{labels.min()}, {labels.max()}].')


# ---------------------------------------------------------------------------
# Training.

def augment(x: jax.Array, key: jax.Array, random_flip: bool, random_shift: int) -> jax.Array:
  """Random left-right flips and translations by up to random_shift pixels (reflect-padded crops)."""
  flip_key, shift_key = jax.random.split(key)
  if random_flip:
    flip = jax.random.bernoulli(flip_key, 0.5, (x.shape[0], 1, 1, 1))
    x = jnp.where(flip, x[:, :, ::-1, :], x)
  if random_shift:
    s = random_shift
    padded = jnp.pad(x, ((0, 0), (s, s), (s, s), (0, 0)), mode='reflect')
    offsets = jax.random.randint(shift_key, (x.shape[0], 2), 0, 2 * s + 1)
    crop = lambda image, o: jax.lax.dynamic_slice(image, (o[0], o[1], 0), x.shape[1:])
    x = jax.vmap(crop)(padded, offsets)
  return x


def cosine_lr(peak_lr: jax.Array, step: jax.Array, total_steps: jax.Array) -> jax.Array:
  """peak_lr at step 0, decaying by a half cosine to 0 at total_steps."""
  return 0.5 * peak_lr * (1.0 + jnp.cos(jnp.pi * jnp.minimum(step / total_steps, 1.0)))


@functools.lru_cache(maxsize=16)
def make_train_step(model: Classifier, random_flip: bool, random_shift: int) -> Callable:
  """Jitted (params, adam_state, uint8 images, labels, step, key, lr, steps) -> (params, adam_state, metrics).

  The learning rate, step count and key are arguments, not constants, so one compiled step
  serves every run of this network and augmentation (tests, other seeds, other lengths).
  """

  def train_step(params, adam_state, images, labels, step, key, lr, total_steps):
    x = augment(data.to_model_range(images), jax.random.fold_in(key, step), random_flip, random_shift)

    def loss_fn(p):
      _, logits = model.apply({'params': p}, x)
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      return loss, jnp.mean(jnp.argmax(logits, -1) == labels)

    (loss, acc), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, adam_state = ADAM.update(grads, adam_state)
    step_size = cosine_lr(lr, step, total_steps)
    params = jax.tree.map(lambda p, u: p - step_size * u, params, updates)
    return params, adam_state, {'loss': loss, 'accuracy': acc}

  return jax.jit(train_step, donate_argnums=(0, 1))


def train_classifier(images: np.ndarray, labels: np.ndarray, num_classes: int, *, seed: int, steps: int,
                     batch_size: int, lr: float, widths: tuple[int, ...] = MNIST_SETTINGS.widths,
                     convs_per_block: int = MNIST_SETTINGS.convs_per_block,
                     random_flip: bool = MNIST_SETTINGS.random_flip,
                     random_shift: int = MNIST_SETTINGS.random_shift,
                     rng_impl: str = MNIST_SETTINGS.rng_impl, progress_every: int = 100,
                     on_progress: Optional[ProgressFn] = None) -> dict:
  """Trains a Classifier on uint8 NHWC images; the same arguments give the same params.

  Adam with a cosine decay of lr to 0 over `steps`. Batches come from data.get_batch(seed, step),
  augmentation keys from fold_in(augment key of key(seed), step). Every `progress_every` steps
  (and at the last; only there if progress_every <= 0) the batch loss and accuracy are logged and
  passed to on_progress(step, metrics).
  """
  settings = ClassifierSettings(widths=tuple(widths), convs_per_block=convs_per_block, steps=steps,
                                batch_size=batch_size, lr=lr, seed=seed, random_flip=random_flip,
                                random_shift=random_shift, rng_impl=rng_impl)
  check_settings(settings)
  labels = np.asarray(labels, np.int32)
  _check_dataset(images, labels, num_classes, 'train_classifier')
  if random_shift >= min(images.shape[1:3]):
    raise ValueError(f'random_shift={random_shift} must be below the image side {min(images.shape[1:3])}.')
  dataset = data.ImageDataset(images, labels)
  data.batch_indices(len(images), batch_size, 0, seed)  # Raises DataError if the batch exceeds the data.

  model = Classifier(widths=settings.widths, convs_per_block=convs_per_block, num_classes=num_classes)
  init_key, augment_key = jax.random.split(jax.random.key(seed, impl=rng_impl))
  # Jitted: run eagerly, every initialiser op would compile on its own.
  params = jax.jit(model.init)(init_key, jnp.zeros((1,) + images.shape[1:], jnp.float32))['params']
  adam_state = ADAM.init(params)
  train_step = make_train_step(model, random_flip, random_shift)
  lr, total_steps = jnp.float32(lr), jnp.int32(steps)

  start = time.perf_counter()
  for step in range(steps):
    batch = data.get_batch(dataset, batch_size, step, seed)
    params, adam_state, metrics = train_step(params, adam_state, batch.images, batch.labels, jnp.int32(step),
                                             augment_key, lr, total_steps)
    done = step + 1
    if done == steps or (progress_every > 0 and done % progress_every == 0):
      metrics = {k: float(v) for k, v in metrics.items()}
      elapsed = time.perf_counter() - start
      logging.info('classifier step %d/%d: loss %.4f, batch accuracy %.3f (%.1f s)',
                   done, steps, metrics['loss'], metrics['accuracy'], elapsed)
      if on_progress is not None:
        on_progress(done, metrics)
  return params


# ---------------------------------------------------------------------------
# Inference.

@functools.lru_cache(maxsize=16)
def _apply_fn(model: Classifier) -> Callable:
  """Jitted (params, uint8 images) -> (features, logits), one per network, so repeated calls reuse compiles."""
  return jax.jit(lambda params, images: model.apply({'params': params}, data.to_model_range(images)))


def feature_fn(params: dict) -> FeatureFn:
  """A jitted uint8 NHWC batch -> (features (N, D) float32, logits (N, num_classes)).

  The same interface as the Inception feature function, so FID code takes either.
  """
  apply = _apply_fn(classifier_from_params(params))

  def features_and_logits(images: np.ndarray) -> tuple[jax.Array, jax.Array]:
    if images.dtype != np.uint8 or images.ndim != 4:
      raise ValueError(f'The classifier takes uint8 NHWC images, got {images.dtype} of shape {images.shape}.')
    return apply(params, images)

  return features_and_logits


def predict(params: dict, images: np.ndarray, batch_size: int) -> np.ndarray:
  """Predicted labels (N,) int32, in batches of batch_size (the last one padded: one compile)."""
  fn = feature_fn(params)
  predictions = []
  for begin in range(0, len(images), batch_size):
    batch = images[begin:begin + batch_size]
    padded = np.concatenate([batch, np.zeros((batch_size - len(batch),) + batch.shape[1:], np.uint8)])
    predictions.append(np.asarray(jnp.argmax(fn(padded)[1], -1))[:len(batch)])
  return np.concatenate(predictions).astype(np.int32) if predictions else np.zeros((0,), np.int32)


def accuracy(params: dict, images: np.ndarray, labels: np.ndarray, batch_size: int = 256) -> float:
  """Fraction of images whose predicted label equals the given one."""
  if len(images) == 0:
    raise ValueError('accuracy needs at least one image.')
  return float(np.mean(predict(params, images, batch_size) == np.asarray(labels)))


class ClassAccuracy(NamedTuple):
  """How often samples asked for class c are classified as c."""
  overall: float  # Over all samples.
  per_class: np.ndarray  # (num_classes,) float; NaN for classes no sample asked for.
  counts: np.ndarray  # (num_classes,) samples asked for each class.
  confusion: np.ndarray  # (num_classes, num_classes) int: [requested, predicted] counts.


def accuracy_table(predicted: np.ndarray, requested: np.ndarray, num_classes: int) -> ClassAccuracy:
  """Overall and per-class accuracy of predicted labels against the requested ones."""
  predicted, requested = np.asarray(predicted), np.asarray(requested)
  if predicted.shape != requested.shape or predicted.ndim != 1 or not len(predicted):
    raise ValueError(f'Need equally long, non-empty label vectors; got {predicted.shape} and {requested.shape}.')
  for name, labels in (('predicted', predicted), ('requested', requested)):
    if labels.min() < 0 or labels.max() >= num_classes:
      raise ValueError(f'{name} labels must lie in [0, {num_classes}).')
  confusion = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(confusion, (requested, predicted), 1)
  counts = confusion.sum(axis=1)
  with np.errstate(invalid='ignore', divide='ignore'):
    per_class = np.where(counts > 0, np.diag(confusion) / counts, np.nan)
  return ClassAccuracy(float(np.trace(confusion) / len(predicted)), per_class, counts, confusion)


def class_accuracy_table(params: dict, images: np.ndarray, requested_labels: np.ndarray, num_classes: int,
                         batch_size: int = 256) -> ClassAccuracy:
  """The classifier's verdict on class-conditional samples: were they recognised as the class asked for?"""
  return accuracy_table(predict(params, images, batch_size), requested_labels, num_classes)


def format_class_accuracy(table: ClassAccuracy, class_names: Optional[list[str]] = None) -> str:
  """A plain-text table: one line per class (name, samples, accuracy), then the overall accuracy."""
  names = class_names or [str(c) for c in range(len(table.counts))]
  width = max(len(n) for n in names + ['overall'])
  lines = [f'{"class":<{width}}  samples  accuracy']
  for name, count, acc in zip(names, table.counts, table.per_class):
    lines.append(f'{name:<{width}}  {count:7d}  ' + ('       -' if np.isnan(acc) else f'{acc:8.3f}'))
  lines.append(f'{"overall":<{width}}  {int(table.counts.sum()):7d}  {table.overall:8.3f}')
  return '\n'.join(lines)


# ---------------------------------------------------------------------------
# Data splits and the cache.

def holdout_split(dataset: data.ImageDataset, fraction: float,
                  seed: int) -> tuple[data.ImageDataset, data.ImageDataset]:
  """(train, test): a random `fraction` of the examples held out, chosen by the seed, order kept."""
  n = len(dataset.images)
  num_test = int(round(fraction * n))
  if not 0 < fraction < 1 or not 0 < num_test < n:
    raise ValueError(f'holdout fraction {fraction} of {n} examples leaves an empty train or test part.')
  test = np.zeros(n, bool)
  test[np.random.default_rng(seed).permutation(n)[:num_test]] = True
  return (data.ImageDataset(dataset.images[~test], dataset.labels[~test]),
          data.ImageDataset(dataset.images[test], dataset.labels[test]))


def data_fingerprint(dataset: data.ImageDataset) -> str:
  """sha256 of the images (with their shape) and labels: which data a classifier was trained on."""
  h = hashlib.sha256(repr(dataset.images.shape).encode())
  h.update(np.ascontiguousarray(dataset.images, np.uint8))
  h.update(np.ascontiguousarray(dataset.labels, np.int64))
  return h.hexdigest()


def _cache_error(path: str, problem: str) -> ClassifierCacheError:
  return ClassifierCacheError(
      f'Cached classifier {path}: {problem}. Delete {os.path.dirname(path)} (both {PARAMS_FILE} and '
      f'{INFO_FILE}) to train a new one, or choose another cache directory.')


def _expected_info(dataset_name: str, train_set: data.ImageDataset, num_classes: int,
                   settings: ClassifierSettings) -> dict[str, Any]:
  """The fields of info.json that must match for a cached classifier to be reused."""
  return {'format_version': FORMAT_VERSION, 'dataset': dataset_name,
          'image_shape': list(train_set.images.shape[1:]), 'num_classes': num_classes,
          'settings': settings.to_dict(), 'train_fingerprint': data_fingerprint(train_set)}


def cache_directory(cache_dir: str, expected: dict[str, Any]) -> str:
  """cache_dir/<dataset>-<digest>: the digest covers every field of `expected` that decides the
  classifier (format, dataset, image shape, classes, settings), so other settings (more steps, say)
  train and keep a classifier of their own. The train data's fingerprint is checked, not keyed:
  other data under the same dataset name is an error, not a silent second cache."""
  keyed = {k: v for k, v in expected.items() if k != 'train_fingerprint'}
  digest = hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:CACHE_DIGEST_CHARS]
  return os.path.join(os.path.expanduser(cache_dir), f'{expected["dataset"]}-{digest}')


def _load_cached(params_path: str, info_path: str, expected: dict[str, Any]) -> tuple[dict, dict]:
  """Params and info from the cache files; ClassifierCacheError naming the file when unusable."""
  try:
    with open(info_path) as f:
      info = json.load(f)
  except (OSError, ValueError) as e:
    raise _cache_error(info_path, f'cannot be read as JSON ({e})') from e
  if not isinstance(info, dict):
    raise _cache_error(info_path, 'is not a JSON object')
  mismatched = [k for k in expected if info.get(k) != expected[k]]
  if mismatched:
    details = '; '.join(f'{k}: cached {info.get(k)!r}, wanted {expected[k]!r}' for k in mismatched)
    raise _cache_error(info_path, f'was made for other settings or data ({details})')
  try:
    with open(params_path, 'rb') as f:
      content = f.read()
  except OSError as e:
    raise _cache_error(params_path, f'cannot be read ({e})') from e
  if hashlib.sha256(content).hexdigest() != info.get('params_sha256'):
    raise _cache_error(params_path, f'does not match the checksum recorded in {INFO_FILE} (corrupt or replaced)')
  try:
    params = flax.serialization.msgpack_restore(content)
    classifier_from_params(params)
  except Exception as e:  # msgpack raises many types on corrupt input.
    raise _cache_error(params_path, f'does not hold classifier parameters ({type(e).__name__}: {e})') from e
  return jax.tree.map(jnp.asarray, params), info


def get_or_train_classifier(cache_dir: str, dataset_name: str, train_set: data.ImageDataset,
                            test_set: data.ImageDataset, num_classes: int,
                            settings: ClassifierSettings, progress_every: int = 100,
                            on_progress: Optional[ProgressFn] = None) -> tuple[dict, dict[str, Any]]:
  """(params, info) of the classifier cached for this dataset, trained and saved first if absent.

  The cache is `cache_directory(...)/{classifier.msgpack, info.json}`, one per dataset and settings;
  info records the settings, the image shape, the classes, a fingerprint of the train data and the
  test accuracy. A cache made from other data, or a corrupt one, raises ClassifierCacheError (never silently
  replaced: FIDs measured with it would stop being comparable). The returned info has
  'loaded_from_cache' set to whether it came from disk.
  """
  check_settings(settings)
  expected = _expected_info(dataset_name, train_set, num_classes, settings)
  directory = cache_directory(cache_dir, expected)
  params_path, info_path = os.path.join(directory, PARAMS_FILE), os.path.join(directory, INFO_FILE)
  have_params, have_info = os.path.exists(params_path), os.path.exists(info_path)
  if have_params or have_info:
    if not (have_params and have_info):
      present, missing = (params_path, info_path) if have_params else (info_path, params_path)
      raise _cache_error(present, f'is present but {missing} is missing (an incomplete cache)')
    params, info = _load_cached(params_path, info_path, expected)
    return params, {**info, 'loaded_from_cache': True}

  _check_dataset(test_set.images, np.asarray(test_set.labels), num_classes, 'test set')
  if test_set.images.shape[1:] != train_set.images.shape[1:]:
    raise ValueError(f'Train images {train_set.images.shape[1:]} and test images '
                     f'{test_set.images.shape[1:]} differ in shape.')
  logging.info('Training the feature classifier for %s (%d images, %s); it is cached in %s.',
               dataset_name, len(train_set.images), settings, directory)
  start = time.perf_counter()
  params = train_classifier(train_set.images, train_set.labels, num_classes, progress_every=progress_every,
                            on_progress=on_progress, **dataclasses.asdict(settings))
  train_seconds = time.perf_counter() - start
  test_accuracy = accuracy(params, test_set.images, test_set.labels, settings.batch_size)
  logging.info('Feature classifier for %s: test accuracy %.4f on %d images, trained in %.0f s.',
               dataset_name, test_accuracy, len(test_set.images), train_seconds)
  content = flax.serialization.msgpack_serialize(jax.tree.map(np.asarray, params))
  info = {**expected, 'test_accuracy': test_accuracy, 'num_train': len(train_set.images),
          'num_test': len(test_set.images), 'test_fingerprint': data_fingerprint(test_set),
          'feature_dim': settings.widths[-1], 'train_seconds': round(train_seconds, 1),
          'params_sha256': hashlib.sha256(content).hexdigest(), 'note': NOT_COMPARABLE_NOTE}
  os.makedirs(directory, exist_ok=True)
  atomic_io.write_bytes(params_path, content)
  atomic_io.write_bytes(info_path, json.dumps(info, indent=2).encode())  # Written last: marks the cache complete.
  return params, {**info, 'loaded_from_cache': False}
