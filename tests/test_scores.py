"""FID, IS and KID from features: streaming statistics, the Frechet distance, stats files, caching."""

import os

import numpy as np
import pytest
import scipy.linalg

from ddpm_jax import errors
from ddpm_jax.evaluation import scores as ev


def random_spd(rng, dim, rank=None):
  factor = rng.standard_normal((rank or dim, dim))
  return factor.T @ factor / dim


# ---------------------------------------------------------------------------
# Streaming statistics.

def test_streamed_statistics_equal_numpy_mean_and_cov_of_all_features_at_once():
  rng = np.random.default_rng(0)
  # A large common offset: naive sums of outer products would lose the covariance to cancellation.
  features = (1e4 + rng.standard_normal((1000, 16)) @ rng.standard_normal((16, 16))).astype(np.float32)
  stats = ev.empty_stats(16)
  for start, stop in ((0, 1), (1, 1), (1, 300), (300, 301), (301, 1000)):  # Uneven, one empty, single rows.
    stats = ev.update_stats(stats, features[start:stop])
  mu, sigma = ev.mean_and_cov(stats)
  expected = features.astype(np.float64)
  assert stats.count == 1000
  np.testing.assert_allclose(mu, expected.mean(axis=0), rtol=1e-12)
  np.testing.assert_allclose(sigma, np.cov(expected, rowvar=False), rtol=1e-9, atol=1e-9)
  one_shot = ev.mean_and_cov(ev.stats_of(features))
  np.testing.assert_allclose(sigma, one_shot[1], rtol=1e-9, atol=1e-9)


def test_merging_statistics_in_any_order_gives_the_same_result():
  rng = np.random.default_rng(1)
  parts = [rng.standard_normal((n, 5)) for n in (3, 40, 7)]
  forward = ev.merge_stats(ev.merge_stats(ev.stats_of(parts[0]), ev.stats_of(parts[1])), ev.stats_of(parts[2]))
  backward = ev.merge_stats(ev.stats_of(parts[2]), ev.merge_stats(ev.stats_of(parts[1]), ev.stats_of(parts[0])))
  for a, b in zip(ev.mean_and_cov(forward), ev.mean_and_cov(backward)):
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
  with pytest.raises(ValueError, match='5- and 4-dimensional'):
    ev.merge_stats(forward, ev.stats_of(np.ones((2, 4))))


def test_a_covariance_needs_two_features():
  with pytest.raises(ValueError, match='at least 2'):
    ev.mean_and_cov(ev.stats_of(np.ones((1, 3))))


# ---------------------------------------------------------------------------
# Frechet distance.

def test_fid_of_a_set_with_itself_is_zero():
  rng = np.random.default_rng(2)
  mu, sigma = ev.mean_and_cov(ev.stats_of(rng.standard_normal((500, 32)) * 3 + 1))
  assert ev.frechet_distance(mu, sigma, mu, sigma) < 1e-9 * np.trace(sigma)


def test_fid_matches_scipy_sqrtm_as_pytorch_fid_computes_it():
  rng = np.random.default_rng(3)
  mu1, mu2 = rng.standard_normal(24), rng.standard_normal(24)
  sigma1, sigma2 = random_spd(rng, 24), random_spd(rng, 24)
  covmean = scipy.linalg.sqrtm(sigma1 @ sigma2).real
  expected = np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean)
  assert ev.frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(expected, rel=1e-9)
  assert ev.frechet_distance(mu2, sigma2, mu1, sigma1) == pytest.approx(expected, rel=1e-9)


def test_fid_between_samples_of_two_gaussians_approaches_the_closed_form():
  rng = np.random.default_rng(4)
  m1, m2 = np.array([0.0, 1.0, -1.0, 2.0]), np.array([0.5, 1.0, 0.0, 2.0])
  v1, v2 = np.array([1.0, 4.0, 0.25, 2.0]), np.array([2.0, 1.0, 0.25, 9.0])
  # Diagonal covariances commute, so the Frechet distance has this closed form.
  closed = np.sum((m1 - m2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
  stats1, stats2 = ev.empty_stats(4), ev.empty_stats(4)
  for _ in range(10):
    stats1 = ev.update_stats(stats1, m1 + np.sqrt(v1) * rng.standard_normal((20000, 4)))
    stats2 = ev.update_stats(stats2, m2 + np.sqrt(v2) * rng.standard_normal((20000, 4)))
  estimate = ev.frechet_distance(*ev.mean_and_cov(stats1), *ev.mean_and_cov(stats2))
  assert estimate == pytest.approx(closed, rel=1e-2)
  assert ev.frechet_distance(m1, np.diag(v1), m2, np.diag(v2)) == pytest.approx(closed, rel=1e-12)


def test_trace_sqrt_is_exact_for_singular_covariances():
  rng = np.random.default_rng(5)
  a, b = rng.standard_normal((3, 40)), rng.standard_normal((5, 40))
  # tr((A^T A B^T B)^(1/2)) is the sum of the singular values of A B^T, whatever the ranks.
  expected = np.linalg.svd(a @ b.T, compute_uv=False).sum()
  assert ev.trace_sqrt_product(a.T @ a, b.T @ b) == pytest.approx(expected, rel=1e-12)
  singular = a.T @ a
  assert ev.frechet_distance(np.zeros(40), singular, np.zeros(40), singular) < 1e-9 * np.trace(singular)
  distance = ev.frechet_distance(np.zeros(40), singular, np.ones(40), np.zeros((40, 40)))
  assert distance == pytest.approx(40 + np.trace(singular), rel=1e-12)


def test_fid_refuses_mismatched_or_non_finite_statistics():
  with pytest.raises(ValueError, match='different dimensions: 3 and 4'):
    ev.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
  with pytest.raises(ValueError, match=r'mu must be \(d,\) and sigma \(d, d\)'):
    ev.frechet_distance(np.zeros(3), np.eye(4), np.zeros(3), np.eye(3))
  with pytest.raises(ValueError, match='NaN'):
    ev.frechet_distance(np.full(2, np.nan), np.eye(2), np.zeros(2), np.eye(2))
  with pytest.raises(ValueError, match='second: sigma has the negative eigenvalue -1'):
    ev.frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), -np.eye(2))  # Gave a number before: 6.
  with pytest.raises(ValueError, match='first: sigma is not symmetric'):
    ev.frechet_distance(np.zeros(2), np.array([[1.0, 0.5], [0.0, 1.0]]), np.zeros(2), np.eye(2))


# ---------------------------------------------------------------------------
# Stats files.

def test_stats_round_trip_atomically_in_pytorch_fid_layout(tmp_path):
  rng = np.random.default_rng(6)
  mu, sigma = rng.standard_normal(8), random_spd(rng, 8)
  path = ev.save_stats(str(tmp_path / 'stats.npz'), mu, sigma, num_images=123)
  assert os.listdir(tmp_path) == ['stats.npz']  # No temporary file is left behind.
  with np.load(path) as data:  # What pytorch-fid reads: f['mu'], f['sigma'].
    np.testing.assert_array_equal(data['mu'], mu)
    np.testing.assert_array_equal(data['sigma'], sigma)
  loaded = ev.read_stats(path)
  np.testing.assert_array_equal(loaded[0], mu)
  np.testing.assert_array_equal(loaded[1], sigma)
  assert loaded[2] == 123
  # A file that pytorch-fid wrote (mu and sigma only, compressed) loads too.
  np.savez_compressed(tmp_path / 'pytorch_fid.npz', mu=mu, sigma=sigma)
  np.testing.assert_array_equal(ev.load_stats(str(tmp_path / 'pytorch_fid.npz'))[1], sigma)


def test_bad_stats_files_are_refused_naming_the_file(tmp_path):
  good = ev.save_stats(str(tmp_path / 'good.npz'), np.zeros(4), np.eye(4))
  truncated = tmp_path / 'truncated.npz'
  truncated.write_bytes(open(good, 'rb').read()[:100])
  np.savez(tmp_path / 'keys.npz', mean=np.zeros(4), cov=np.eye(4))
  np.savez(tmp_path / 'shape.npz', mu=np.zeros(4), sigma=np.eye(3))
  np.savez(tmp_path / 'nan.npz', mu=np.full(4, np.nan), sigma=np.eye(4))
  np.save(tmp_path / 'array.npy', np.zeros(4))
  cases = {'truncated.npz': 'not a readable .npz', 'keys.npz': r"holds \['cov', 'mean'\], not FID statistics",
           'shape.npz': r'sigma \(d, d\)', 'nan.npz': 'NaN', 'array.npy': 'single .npy array',
           'absent.npz': 'No stats file'}
  for name, message in cases.items():
    with pytest.raises(errors.StatsFileError, match=message) as error:
      ev.load_stats(str(tmp_path / name))
    assert name in str(error.value)


# ---------------------------------------------------------------------------
# Features of many batches, and cached reference statistics.

def fake_feature_fn(images):
  """Deterministic stand-in for Inception: 6 'pool3' features and 4 'logits' per image."""
  x = images.astype(np.float64) / 255
  pool3 = np.concatenate([x.mean(axis=(1, 2)), x.std(axis=(1, 2))], axis=1)
  return pool3.astype(np.float32), pool3[:, :4].astype(np.float32) * 10


def image_batches(seed=0, sizes=(5, 5, 3)):
  rng = np.random.default_rng(seed)
  return [rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8) for n in sizes]


def test_accumulated_features_report_progress_and_equal_one_shot():
  batches, calls = image_batches(), []
  features = ev.accumulate_features(batches, fake_feature_fn, keep_pool3=True, keep_logits=True, total=13,
                                    progress=lambda done, total: calls.append((done, total)))
  assert calls == [(5, 13), (10, 13), (13, 13)]
  pool3, logits = fake_feature_fn(np.concatenate(batches))
  np.testing.assert_array_equal(features.pool3, pool3)
  np.testing.assert_array_equal(features.logits, logits)
  mu, sigma = ev.mean_and_cov(features.stats)
  np.testing.assert_allclose(mu, pool3.astype(np.float64).mean(axis=0), rtol=1e-12)
  np.testing.assert_allclose(sigma, np.cov(pool3.astype(np.float64), rowvar=False), rtol=1e-9, atol=1e-15)
  lean = ev.accumulate_features(batches, fake_feature_fn)
  assert lean.pool3 is None and lean.logits is None
  with pytest.raises(ValueError, match='No images'):
    ev.accumulate_features([], fake_feature_fn)


def test_reference_stats_are_computed_once_then_read_from_the_cache(tmp_path):
  path, calls = str(tmp_path / 'cifar10_train.npz'), []

  def counting_fn(images):
    calls.append(len(images))
    return fake_feature_fn(images)

  mu, sigma = ev.cached_reference_stats(path, image_batches(), counting_fn, num_images=13)
  assert calls == [5, 5, 3]

  def never():
    raise AssertionError('A cache hit must not read the dataset.')
    yield  # pylint: disable=unreachable

  cached = ev.cached_reference_stats(path, never(), counting_fn, num_images=13)
  assert calls == [5, 5, 3]
  np.testing.assert_array_equal(cached[0], mu)
  np.testing.assert_array_equal(cached[1], sigma)
  with pytest.raises(errors.StatsFileError, match='statistics of 13 images, but 50000 were asked for; delete it'):
    ev.cached_reference_stats(path, never(), counting_fn, num_images=50000)
  with pytest.raises(ValueError, match='held 13 images, not the 20 expected'):
    ev.cached_reference_stats(str(tmp_path / 'other.npz'), image_batches(), counting_fn, num_images=20)
  assert not os.path.exists(tmp_path / 'other.npz')


# ---------------------------------------------------------------------------
# Inception Score.

def test_inception_score_of_uniform_predictions_is_one():
  score, std = ev.inception_score(np.zeros((100, 1008)), splits=10)
  assert score == pytest.approx(1.0, abs=1e-12) and std == pytest.approx(0.0, abs=1e-12)


def test_inception_score_of_confident_balanced_predictions_is_the_number_of_classes():
  logits = np.zeros((1000, 1008))
  logits[np.arange(1000), np.arange(1000) % 10] = 60.0  # One-hot up to e^-60, 10 classes equally.
  logits += np.random.default_rng(7).standard_normal((1000, 1))  # A per-image shift changes no softmax.
  score, std = ev.inception_score(logits, splits=10)
  assert score == pytest.approx(10.0, rel=1e-9) and std == pytest.approx(0.0, abs=1e-9)
  with pytest.raises(ValueError, match='N >= splits'):
    ev.inception_score(logits[:5], splits=10)


# ---------------------------------------------------------------------------
# KID.

def test_polynomial_mmd_matches_the_definition_term_by_term():
  rng = np.random.default_rng(8)
  x, y = rng.standard_normal((4, 3)), rng.standard_normal((5, 3)) + 0.5

  def k(a, b):
    return (a @ b / 3 + 1) ** 3

  xx = sum(k(x[i], x[j]) for i in range(4) for j in range(4) if i != j) / (4 * 3)
  yy = sum(k(y[i], y[j]) for i in range(5) for j in range(5) if i != j) / (5 * 4)
  xy = sum(k(x[i], y[j]) for i in range(4) for j in range(5)) / (4 * 5)
  assert ev.polynomial_mmd2_unbiased(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-12)


def test_kid_is_unbiased_on_identical_distributions():
  rng = np.random.default_rng(9)
  unbiased, biased = [], []
  for _ in range(400):
    x, y = rng.standard_normal((10, 4)), rng.standard_normal((10, 4))
    unbiased.append(ev.polynomial_mmd2_unbiased(x, y))
    # The biased (V-statistic) estimate, with the diagonal terms, for contrast.
    kxx, kyy, kxy = ((x @ x.T / 4 + 1) ** 3, (y @ y.T / 4 + 1) ** 3, (x @ y.T / 4 + 1) ** 3)
    biased.append(kxx.mean() + kyy.mean() - 2 * kxy.mean())
  standard_error = np.std(unbiased) / np.sqrt(len(unbiased))
  assert abs(np.mean(unbiased)) < 4 * standard_error
  assert np.mean(biased) > 10 * np.std(biased) / np.sqrt(len(biased))


def test_kid_over_subsets_is_seeded_and_separates_different_distributions():
  rng = np.random.default_rng(10)
  a, b, shifted = rng.standard_normal((300, 8)), rng.standard_normal((300, 8)), rng.standard_normal((300, 8)) + 1
  same = ev.kernel_inception_distance(a, b, num_subsets=50, subset_size=100, seed=0)
  assert same == ev.kernel_inception_distance(a, b, num_subsets=50, subset_size=100, seed=0)
  different = ev.kernel_inception_distance(a, shifted, num_subsets=50, subset_size=100, seed=0)
  assert abs(same[0]) < 3 * same[1] and different[0] > 5 * different[1] > 0
  with pytest.raises(ValueError, match=r'at most the size of the smaller feature set \(300\)'):
    ev.kernel_inception_distance(a, b, subset_size=1000)
