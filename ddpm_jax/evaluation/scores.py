"""FID, Inception Score and KID from Inception features, streamed in batches; pytorch-fid's stats files.

Features come from a `feature_fn(uint8 NHWC images) -> (pool3 (N, 2048), logits (N, 1008))`,
such as nets.inception.make_inception_fn. Statistics accumulate in float64 batch by batch
(count, mean, and the sum of outer products of deviations from the mean, merged as Chan et
al. do), so 50k images are never held at once and a large mean cannot cancel the
covariance; the result equals np.mean / np.cov (unbiased) of all features at once, which is
what pytorch-fid computes. Stats files are pytorch-fid's .npz layout (`mu`, `sigma`), so its
published reference statistics load here and ours load there.

This module imports only numpy: the matrix square root is done with symmetric
eigendecompositions in float64, which stays real and exact for singular covariances.
"""

import os
import zipfile
from typing import Callable, Iterable, NamedTuple, Optional

import numpy as np

from ddpm_jax import atomic_io
from ddpm_jax.errors import StatsFileError

FeatureFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
# progress(done, total): images processed so far, and the total if known (else None).
ProgressFn = Callable[[int, Optional[int]], None]


# ---------------------------------------------------------------------------
# Streaming statistics.

class FeatureStats(NamedTuple):
  """Running statistics of feature vectors: count, mean (d,), and m2 (d, d), the sum of the
  outer products of each vector's deviation from the mean (all float64)."""
  count: int
  mean: np.ndarray
  m2: np.ndarray


def empty_stats(dim: int) -> FeatureStats:
  return FeatureStats(0, np.zeros(dim, np.float64), np.zeros((dim, dim), np.float64))


def stats_of(features: np.ndarray) -> FeatureStats:
  """Statistics of one (N, d) batch of features."""
  x = np.asarray(features, np.float64)
  if x.ndim != 2:
    raise ValueError(f'Features must be (N, d), got shape {x.shape}.')
  if not len(x):
    return empty_stats(x.shape[1])
  mean = x.mean(axis=0)
  centered = x - mean
  return FeatureStats(len(x), mean, centered.T @ centered)


def merge_stats(a: FeatureStats, b: FeatureStats) -> FeatureStats:
  """Statistics of the union of two sets of features (Chan, Golub and LeVeque's pairwise update)."""
  if a.mean.shape != b.mean.shape:
    raise ValueError(f'Cannot merge statistics of {a.mean.shape[0]}- and {b.mean.shape[0]}-dimensional features.')
  if not b.count:
    return a
  if not a.count:
    return b
  count = a.count + b.count
  delta = b.mean - a.mean
  mean = a.mean + delta * (b.count / count)
  m2 = a.m2 + b.m2 + np.outer(delta, delta) * (a.count * b.count / count)
  return FeatureStats(count, mean, m2)


def update_stats(stats: FeatureStats, features: np.ndarray) -> FeatureStats:
  """stats with one more (N, d) batch of features."""
  return merge_stats(stats, stats_of(features))


def mean_and_cov(stats: FeatureStats) -> tuple[np.ndarray, np.ndarray]:
  """(mu, sigma): the mean and the unbiased covariance (as np.cov(rowvar=False)) of the features seen."""
  if stats.count < 2:
    raise ValueError(f'A covariance needs at least 2 feature vectors, got {stats.count}.')
  return stats.mean.copy(), stats.m2 / (stats.count - 1)


# ---------------------------------------------------------------------------
# Frechet distance.

# A covariance read from a file may carry rounding (float32 storage): asymmetry up to this fraction of
# its largest entry, and negative eigenvalues up to this fraction of its largest eigenvalue's size.
SYMMETRY_TOLERANCE = 1e-5
PSD_TOLERANCE = 1e-4


def _symmetric(matrix: np.ndarray) -> np.ndarray:
  return (matrix + matrix.T) / 2


def _check_gaussian(mu: np.ndarray, sigma: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
  """(mu, sigma) in float64; ValueError naming `name` unless they are a mean (d,) and a covariance
  (d, d): finite, symmetric and positive semi-definite within rounding (float32 storage). Another
  matrix still gives a Frechet distance, a meaningless one."""
  mu, sigma = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
  if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
    raise ValueError(f'{name}: mu must be (d,) and sigma (d, d); got {mu.shape} and {sigma.shape}.')
  if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
    raise ValueError(f'{name}: mu or sigma holds NaN or infinite values.')
  scale = float(np.abs(sigma).max(initial=0))
  asymmetry = float(np.abs(sigma - sigma.T).max(initial=0))
  if asymmetry > SYMMETRY_TOLERANCE * scale:
    raise ValueError(f'{name}: sigma is not symmetric (sigma - sigma^T reaches {asymmetry:.3g}, sigma {scale:.3g}), '
                     f'so it is no covariance matrix.')
  eigenvalues = np.linalg.eigvalsh(_symmetric(sigma))
  lowest, largest = float(eigenvalues.min(initial=0)), float(np.abs(eigenvalues).max(initial=0))
  if lowest < -PSD_TOLERANCE * largest:
    raise ValueError(f'{name}: sigma has the negative eigenvalue {lowest:.3g} (the largest in size: {largest:.3g}), '
                     f'so it is no covariance matrix (those are positive semi-definite).')
  return mu, sigma


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
  """tr((sigma1 sigma2)^(1/2)) for symmetric positive semi-definite matrices, in float64.

  sigma1 sigma2 = R (R sigma2) has the eigenvalues of (R sigma2) R = R sigma2 R, where R is
  sigma1's symmetric square root; R sigma2 R is symmetric PSD, so its eigenvalues are real
  and >= 0 (those within rounding error of 0 count as 0), also when either matrix is singular. This is the
  trace of scipy.linalg.sqrtm(sigma1 @ sigma2) that pytorch-fid takes, without its complex
  parts or the eps fallback it needs for near-singular products.
  """
  values, vectors = np.linalg.eigh(_symmetric(np.asarray(sigma1, np.float64)))
  root = (vectors * np.sqrt(_without_rounding_noise(values))) @ vectors.T
  product = _symmetric(root @ np.asarray(sigma2, np.float64) @ root)
  return float(np.sqrt(_without_rounding_noise(np.linalg.eigvalsh(product))).sum())


def _without_rounding_noise(eigenvalues: np.ndarray) -> np.ndarray:
  """Eigenvalues of a PSD matrix with those within rounding error of 0 set to 0.

  eigh's error is about d * eps * the largest eigenvalue; below that a value is noise, and
  its square root (up to ~1e-7 of the largest) would otherwise add up over a null space.
  """
  tolerance = len(eigenvalues) * np.finfo(np.float64).eps * max(float(np.abs(eigenvalues).max(initial=0)), 0.0)
  return np.where(eigenvalues > tolerance, eigenvalues, 0.0)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
  """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2) (FID for Inception pool3 statistics):
  |mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^(1/2)); rounding below 0 gives 0."""
  mu1, sigma1 = _check_gaussian(mu1, sigma1, 'first')
  mu2, sigma2 = _check_gaussian(mu2, sigma2, 'second')
  if mu1.shape != mu2.shape:
    raise ValueError(f'The two statistics have different dimensions: {mu1.shape[0]} and {mu2.shape[0]}.')
  diff = mu1 - mu2
  distance = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt_product(sigma1, sigma2)
  return max(float(distance), 0.0)


# ---------------------------------------------------------------------------
# Stats files (pytorch-fid's layout: mu, sigma; we add num_images, which pytorch-fid ignores).

def save_stats(path: str, mu: np.ndarray, sigma: np.ndarray, num_images: Optional[int] = None) -> str:
  """Writes mu and sigma (and the image count) as a pytorch-fid .npz, atomically; returns the path."""
  mu, sigma = _check_gaussian(mu, sigma, path)
  path = os.path.expanduser(path)
  arrays = {'mu': mu, 'sigma': sigma}
  if num_images is not None:
    arrays['num_images'] = np.asarray(num_images, np.int64)
  atomic_io.savez(path, **arrays)
  return path


def _read_npz(path: str) -> dict[str, np.ndarray]:
  """Every array of an .npz file; ValueError if it is a single .npy array."""
  data = np.load(path, allow_pickle=False)
  if not isinstance(data, np.lib.npyio.NpzFile):
    raise ValueError('a single .npy array, not an .npz archive')
  with data:
    return {key: data[key] for key in data.files}


def read_stats(path: str, fix: str = '') -> tuple[np.ndarray, np.ndarray, Optional[int]]:
  """(mu, sigma, num_images or None) from a stats file; raises StatsFileError naming what is wrong,
  and `fix` (default: delete a cache of ours to compute it again)."""
  path = os.path.expanduser(path)
  fix = fix or f'Delete {path} to compute the statistics again, or point to a pytorch-fid .npz with mu and sigma.'
  if not os.path.isfile(path):
    raise StatsFileError(f'No stats file at {path}.')
  try:
    arrays = _read_npz(path)
  except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
    raise StatsFileError(f'{path} is not a readable .npz ({type(e).__name__}: {e}); it may be truncated. {fix}') from e
  missing = [k for k in ('mu', 'sigma') if k not in arrays]
  if missing:
    raise StatsFileError(f'{path} holds {sorted(arrays)}, not FID statistics: they need both mu and sigma '
                         f'(pytorch-fid\'s layout), and {missing[0]} is missing. {fix}')
  mu, sigma = arrays['mu'], arrays['sigma']
  num_images = int(arrays['num_images']) if 'num_images' in arrays else None
  try:
    mu, sigma = _check_gaussian(mu, sigma, path)
  except ValueError as e:
    raise StatsFileError(f'{e} {fix}') from e
  return mu, sigma, num_images


def load_stats(path: str) -> tuple[np.ndarray, np.ndarray]:
  """(mu, sigma) from a stats file of ours or pytorch-fid's."""
  mu, sigma, _ = read_stats(path)
  return mu, sigma


# ---------------------------------------------------------------------------
# Features of many images.

class Features(NamedTuple):
  """pool3 statistics of every image seen; pool3 and logits themselves where asked for."""
  stats: FeatureStats
  pool3: Optional[np.ndarray]
  logits: Optional[np.ndarray]


def accumulate_features(batches: Iterable[np.ndarray], feature_fn: FeatureFn, keep_pool3: bool = False,
                        keep_logits: bool = False, total: Optional[int] = None,
                        progress: Optional[ProgressFn] = None) -> Features:
  """Runs feature_fn over uint8 image batches, accumulating pool3 statistics in float64.

  keep_pool3 (for KID) and keep_logits (for IS) also return those as float32 arrays.
  `total` (images) is only passed on to progress(done, total) after each batch.
  """
  stats, pool3s, logits_list, done = None, [], [], 0
  for images in batches:
    pool3, logits = feature_fn(images)
    pool3 = np.asarray(pool3)
    stats = update_stats(stats if stats is not None else empty_stats(pool3.shape[1]), pool3)
    if keep_pool3:
      pool3s.append(np.asarray(pool3, np.float32))
    if keep_logits:
      logits_list.append(np.asarray(logits, np.float32))
    done += len(pool3)
    if progress is not None:
      progress(done, total)
  if stats is None:
    raise ValueError('No images: the batches were empty.')
  return Features(stats, np.concatenate(pool3s) if keep_pool3 else None,
                  np.concatenate(logits_list) if keep_logits else None)


def cached_reference_stats(path: str, batches: Iterable[np.ndarray], feature_fn: FeatureFn,
                           num_images: Optional[int] = None,
                           progress: Optional[ProgressFn] = None) -> tuple[np.ndarray, np.ndarray]:
  """(mu, sigma) of a dataset split, from the stats file at `path`, or computed once and saved there.

  `batches` (uint8 NHWC) is read only when there is no file yet, so a generator costs nothing
  on a cache hit. With num_images, a cached file made from another number of images is
  refused (the split or its size changed: delete the file).
  """
  if os.path.isfile(os.path.expanduser(path)):
    mu, sigma, cached_count = read_stats(path)
    if num_images is not None and cached_count is not None and cached_count != num_images:
      raise StatsFileError(f'{path} holds statistics of {cached_count} images, but {num_images} were asked '
                           f'for; delete it to compute them again.')
    return mu, sigma
  features = accumulate_features(batches, feature_fn, total=num_images, progress=progress)
  if num_images is not None and features.stats.count != num_images:
    raise ValueError(f'The batches held {features.stats.count} images, not the {num_images} expected.')
  mu, sigma = mean_and_cov(features.stats)
  save_stats(path, mu, sigma, features.stats.count)
  return mu, sigma


# ---------------------------------------------------------------------------
# Inception Score and KID.

def inception_score(logits: np.ndarray, splits: int = 10) -> tuple[float, float]:
  """(mean, std) over `splits` equal parts of exp(E_x KL(p(y|x) || p(y))), p(y|x) = softmax(logits).

  The logits are the 1008 Inception outputs without the classifier's bias, as the original
  Inception Score code (and torch-fidelity's 'logits_unbiased') uses: what
  nets.inception.make_inception_fn returns by default. Computed in float64.
  """
  logits = np.asarray(logits, np.float64)
  if logits.ndim != 2 or len(logits) < splits or splits < 1:
    raise ValueError(f'inception_score needs (N, classes) logits with N >= splits >= 1; got shape '
                     f'{logits.shape} and splits={splits}.')
  shifted = logits - logits.max(axis=1, keepdims=True)
  log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
  n, scores = len(log_p), []
  for i in range(splits):
    part = log_p[i * n // splits:(i + 1) * n // splits]
    p = np.exp(part)
    log_marginal = np.log(p.mean(axis=0))
    scores.append(np.exp(np.mean(np.sum(p * (part - log_marginal), axis=1))))
  return float(np.mean(scores)), float(np.std(scores))


def polynomial_mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
  """Unbiased MMD^2 between samples x (m, d) and y (n, d) with the kernel k(a, b) = (a.b / d + 1)^3."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  m, n, d = len(x), len(y), x.shape[1]
  k_xx = (x @ x.T / d + 1) ** 3
  k_yy = (y @ y.T / d + 1) ** 3
  k_xy = (x @ y.T / d + 1) ** 3
  return float((k_xx.sum() - np.trace(k_xx)) / (m * (m - 1)) + (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
               - 2 * k_xy.mean())


def kernel_inception_distance(features_a: np.ndarray, features_b: np.ndarray, num_subsets: int = 100,
                              subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
  """(mean, std) of the unbiased polynomial MMD^2 over num_subsets random subsets of each set.

  Each subset draws subset_size features of each set without replacement (as torch-fidelity
  does); the seed fixes the draws.
  """
  a, b = np.asarray(features_a), np.asarray(features_b)
  if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
    raise ValueError(f'KID needs two (N, d) feature sets of the same d; got {a.shape} and {b.shape}.')
  if subset_size < 2 or subset_size > min(len(a), len(b)):
    raise ValueError(f'subset_size={subset_size} must be at least 2 and at most the size of the smaller '
                     f'feature set ({min(len(a), len(b))}); use fewer per subset or more images.')
  if num_subsets < 1:
    raise ValueError(f'num_subsets must be at least 1, got {num_subsets}.')
  rng = np.random.default_rng(seed)
  values = [polynomial_mmd2_unbiased(a[rng.choice(len(a), subset_size, replace=False)],
                                     b[rng.choice(len(b), subset_size, replace=False)])
            for _ in range(num_subsets)]
  return float(np.mean(values)), float(np.std(values))
