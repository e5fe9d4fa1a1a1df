"""FID Inception: torch's resize, the weights file and its checks, the converter, parity with pytorch-fid.

The parity tests run the real pytorch_fid package (and torchvision, which it subclasses) with
random weights: pytorch-fid's own loader is handed a random state dict in place of the
download, batch norm statistics are calibrated on the test images and then perturbed, and
the same state dict goes through our converter.
"""

import os
from unittest import mock

import numpy as np
import pytest
from flax import traverse_util

from ddpm_jax import errors
from ddpm_jax.evaluation import scores as ev
from ddpm_jax.tools import convert_inception as ci
from ddpm_jax.nets import inception

TORCH_LAYOUTS = {4: (3, 2, 0, 1), 2: (1, 0), 1: (0,)}  # Ours -> torch: HWIO -> OIHW, (in, out) -> (out, in).


def torch_layout(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The same values as a pytorch-fid state dict: torch names and layouts."""
  return {ci.torch_key(k): np.ascontiguousarray(v.transpose(TORCH_LAYOUTS[v.ndim])) for k, v in flat.items()}


@pytest.fixture(scope='module')
def weights_file(tmp_path_factory) -> tuple[str, dict[str, np.ndarray]]:
  flat = inception.random_flat_variables()
  path = inception.save_inception_params(inception.unflatten_variables(flat),
                                         str(tmp_path_factory.mktemp('weights') / 'inception.npz'))
  return path, flat


# ---------------------------------------------------------------------------
# Pieces, without torch.

def test_bilinear_weights_interpolate_and_keep_a_same_size_image():
  np.testing.assert_array_equal(inception.bilinear_matrix(7, 7), np.eye(7, dtype=np.float32))
  up = inception.bilinear_matrix(4, 10)
  np.testing.assert_allclose(up.sum(axis=1), 1, rtol=1e-6)
  # Output pixel 5 of 10 reads source (5.5 * 0.4 - 0.5) = 1.7: 30% of pixel 1, 70% of pixel 2.
  np.testing.assert_allclose(up[5], [0, 0.3, 0.7, 0], atol=1e-6)
  np.testing.assert_allclose(up[0], [1, 0, 0, 0])  # Clamped below at 0.
  np.testing.assert_allclose(up[9], [0, 0, 0, 1])  # And at the last pixel.


def test_torch_keys_of_each_kind_of_variable():
  assert ci.torch_key('params/Conv2d_1a_3x3/conv/kernel') == 'Conv2d_1a_3x3.conv.weight'
  assert ci.torch_key('params/Mixed_7c/branch3x3dbl_3b/bn/scale') == 'Mixed_7c.branch3x3dbl_3b.bn.weight'
  assert ci.torch_key('params/Mixed_6e/branch_pool/bn/bias') == 'Mixed_6e.branch_pool.bn.bias'
  assert ci.torch_key('batch_stats/Mixed_5b/branch1x1/bn/mean') == 'Mixed_5b.branch1x1.bn.running_mean'
  assert ci.torch_key('batch_stats/Mixed_5b/branch1x1/bn/var') == 'Mixed_5b.branch1x1.bn.running_var'
  assert ci.torch_key('params/fc/kernel') == 'fc.weight' and ci.torch_key('params/fc/bias') == 'fc.bias'
  shapes = inception.expected_shapes()
  assert shapes['params/fc/kernel'] == (2048, 1008) and shapes['params/Mixed_7c/branch_pool/conv/kernel'] == (
      1, 1, 2048, 192)


def test_state_dict_converts_exactly_and_misfits_are_refused():
  flat = inception.random_flat_variables(seed=1)
  state_dict = dict(torch_layout(flat), **{'Mixed_5b.branch1x1.bn.num_batches_tracked': np.array(0)})
  converted = traverse_util.flatten_dict(ci.convert_state_dict(state_dict), sep='/')
  assert converted.keys() == flat.keys()
  for key, value in flat.items():
    np.testing.assert_array_equal(converted[key], value, err_msg=key)
  missing = {k: v for k, v in state_dict.items() if k != 'Mixed_6a.branch3x3.bn.running_var'}
  with pytest.raises(errors.ConversionError, match=r'1 missing key\(s\): Mixed_6a.branch3x3.bn.running_var'):
    ci.convert_state_dict(missing)
  with pytest.raises(errors.ConversionError, match=r'1 unused key\(s\): AuxLogits.fc.weight'):
    ci.convert_state_dict(dict(state_dict, **{'AuxLogits.fc.weight': np.zeros((1008, 768))}))
  with pytest.raises(errors.ConversionError, match=r'fc.weight: \(1000, 2048\) -> \(2048, 1000\), but params/fc/kernel '
                                               r'needs \(2048, 1008\)'):
    ci.convert_state_dict(dict(state_dict, **{'fc.weight': np.zeros((1000, 2048))}))


def test_saved_weights_load_back_exactly(weights_file):
  path, flat = weights_file
  loaded = traverse_util.flatten_dict(inception.load_inception_params(path), sep='/')
  assert loaded.keys() == flat.keys()
  for key in ('params/Conv2d_1a_3x3/conv/kernel', 'batch_stats/Mixed_7c/branch_pool/bn/var', 'params/fc/bias'):
    np.testing.assert_array_equal(loaded[key], flat[key])


def test_a_missing_weights_file_says_what_to_download_and_how_to_convert(tmp_path):
  path = str(tmp_path / 'nowhere' / 'inception.npz')
  with pytest.raises(errors.MissingInceptionWeightsError) as error:
    inception.load_inception_params(path)
  message = str(error.value)
  assert f'No Inception weights at {path}' in message
  assert inception.FID_WEIGHTS_URL in message
  assert (f'python -m ddpm_jax.tools.convert_inception --torch_weights={inception.FID_WEIGHTS_FILE} '
          f'--out={path}`') in message
  assert f'which writes {path}' in message
  # The default path needs no --output.
  assert inception.conversion_command(inception.DEFAULT_WEIGHTS_PATH) == (
      f'python -m ddpm_jax.tools.convert_inception --torch_weights={inception.FID_WEIGHTS_FILE}')


def test_wrong_or_corrupt_weights_files_are_refused_with_the_fix(tmp_path, weights_file):
  path, flat = weights_file
  truncated = tmp_path / 'truncated.npz'
  with open(path, 'rb') as f:
    truncated.write_bytes(f.read()[:1_000_000])
  np.savez(tmp_path / 'stats.npz', mu=np.zeros(2048), sigma=np.eye(2))
  np.savez(tmp_path / 'shape.npz', **dict(flat, **{'params/fc/kernel': np.zeros((2048, 1000), np.float32)}))
  nan = dict(flat, **{'batch_stats/Mixed_6b/branch1x1/bn/var': np.full(192, np.nan, np.float32)})
  np.savez(tmp_path / 'nan.npz', **nan)
  np.savez(tmp_path / 'float64.npz', **dict(flat, **{'params/fc/bias': flat['params/fc/bias'].astype(np.float64)}))
  cases = {
      'truncated.npz': 'is not a readable .npz file',
      'stats.npz': r'472 missing: .*2 unexpected: mu; sigma',
      'shape.npz': r'1 wrong shape or dtype: params/fc/kernel: \(2048, 1000\) float32, needs \(2048, 1008\) float32',
      'nan.npz': r'1 with NaN or infinite values: batch_stats/Mixed_6b/branch1x1/bn/var',
      'float64.npz': r'params/fc/bias: \(1008,\) float64, needs \(1008,\) float32',
  }
  for name, problem in cases.items():
    with pytest.raises(errors.InceptionWeightsError, match=problem) as error:
      inception.load_inception_params(str(tmp_path / name))
    assert str(tmp_path / name) in str(error.value)
    assert 'python -m ddpm_jax.tools.convert_inception' in str(error.value), name


def test_the_download_is_checked_against_its_published_hash(tmp_path):
  path = tmp_path / inception.FID_WEIGHTS_FILE
  path.write_bytes(b'an interrupted download')
  with pytest.raises(errors.ConversionError, match=rf'SHA-256 {ci.sha256_of(str(path))}, but .* start with 6726825d'):
    ci.convert_file(str(path), str(tmp_path / 'out.npz'))
  ci.check_sha256_prefix(str(path), ci.sha256_of(str(path))[:8])
  assert not os.path.exists(tmp_path / 'out.npz')


def test_inception_takes_uint8_rgb_or_grayscale_only():
  gray = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3, 1)
  rgb = inception.as_rgb_uint8(gray)
  assert rgb.shape == (2, 3, 3, 3) and (rgb == gray).all()
  assert inception.as_rgb_uint8(rgb) is rgb
  with pytest.raises(ValueError, match='uint8 NHWC images with 1 or 3 channels.*got float32 of shape'):
    inception.as_rgb_uint8(np.zeros((2, 3, 3, 3), np.float32))
  with pytest.raises(ValueError, match=r'got uint8 of shape \(2, 3, 3, 4\)'):
    inception.as_rgb_uint8(np.zeros((2, 3, 3, 4), np.uint8))


# ---------------------------------------------------------------------------
# Against PyTorch and pytorch-fid.

@pytest.fixture(scope='module')
def pfid():
  """The real pytorch_fid package (its inception and fid_score modules)."""
  try:
    from pytorch_fid import fid_score, inception as pfid_inception  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    pytest.fail(f'The parity tests need pytorch-fid and a working torchvision (requirements-dev.txt): {e}')
  return pfid_inception, fid_score


def test_resize_matches_torch_interpolate_up_down_and_unequal():
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(2)
  # CIFAR-sized up, unequal sides, large down (where float32 coordinates matter), the same size.
  for shape, size in (((2, 32, 32, 3), (299, 299)), ((1, 17, 40, 2), (299, 12)), ((1, 1000, 7, 1), (299, 3)),
                      ((1, 299, 299, 3), (299, 299))):
    x = rng.uniform(0, 1, shape).astype(np.float32)
    expected = F.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=size, mode='bilinear',
                             align_corners=False).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(np.asarray(inception.resize_bilinear(x, *size)), expected, atol=3e-7,
                               err_msg=str((shape, size)))


def calibrate_and_perturb_batch_norm(net, images, seed: int) -> None:
  """Batch-norm running statistics of `net` set to those of `images` (resized as pytorch-fid does),
  then moved: means by 0.2 standard deviations, variances by a factor in [0.5, 2]."""
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
  norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
  for norm in norms:
    norm.reset_running_stats()
    norm.momentum = None  # A cumulative average: one batch sets the statistics to its own.
  net.train()
  with torch.no_grad():
    net(F.interpolate(images, size=(299, 299), mode='bilinear', align_corners=False) * 2 - 1)
  net.eval()
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for norm in norms:
      shape = norm.running_mean.shape
      norm.running_mean += 0.2 * norm.running_var.sqrt() * torch.randn(shape, generator=generator)
      norm.running_var *= 2 ** (2 * torch.rand(shape, generator=generator) - 1)


@pytest.fixture(scope='module')
def parity(pfid):
  """pool3 and logits of the same 6 images from pytorch-fid's InceptionV3 and from ours."""
  import torch  # pylint: disable=g-import-not-at-top
  pfid_inception, _ = pfid
  torch.manual_seed(0)
  state_dict = {k: torch.from_numpy(v) for k, v in torch_layout(inception.random_flat_variables(seed=2)).items()}
  # pytorch-fid loads its download with load_state_dict(strict=True): our keys and shapes are exactly its.
  with mock.patch.object(pfid_inception, 'load_state_dict_from_url', return_value=state_dict):
    net = pfid_inception.fid_inception_v3()
  images = np.random.default_rng(3).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
  images[:, 8:24, 8:24] //= 2  # Some structure beyond noise.
  x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255  # As pytorch-fid's ToTensor.
  calibrate_and_perturb_batch_norm(net, x[:2], seed=4)
  reference = {k: v.detach().clone() for k, v in net.state_dict().items()}
  with mock.patch.object(pfid_inception, 'load_state_dict_from_url', return_value=reference):
    model = pfid_inception.InceptionV3([pfid_inception.InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
  with torch.no_grad():
    torch_pool3 = model(x)[0][:, :, 0, 0]
    torch_logits = net.fc(torch_pool3).numpy()
    torch_unbiased = (torch_pool3 @ net.fc.weight.T).numpy()
  variables = ci.convert_state_dict({k: v.numpy() for k, v in reference.items()})
  pool3, logits = inception.make_inception_fn(variables, batch_size=6)(images)
  biased = inception.Logits(use_bias=True).apply({'params': variables['params']['fc']}, torch_pool3.numpy())
  return dict(torch_pool3=torch_pool3.numpy(), torch_logits=torch_logits, torch_unbiased=torch_unbiased,
              pool3=pool3, logits=logits, biased=np.asarray(biased))


def max_relative_error(ours: np.ndarray, reference: np.ndarray) -> float:
  return float(np.abs(ours - reference).max() / np.abs(reference).max())


def test_pool3_features_match_pytorch_fid(parity):
  ours, reference = parity['pool3'], parity['torch_pool3']
  assert ours.shape == (6, 2048) and ours.dtype == np.float32
  # The features depend on the image (the random network is not degenerate).
  assert reference.std(axis=0).mean() > 0.05 * np.abs(reference).mean()
  assert max_relative_error(ours, reference) < 1e-4
  np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-4 * np.abs(reference).max())


def test_logits_match_pytorch_fid(parity):
  assert parity['logits'].shape == (6, 1008)
  assert max_relative_error(parity['logits'], parity['torch_unbiased']) < 1e-4  # The default: pool3 @ W.
  assert max_relative_error(parity['biased'], parity['torch_logits']) < 1e-5  # logits_bias: torch's fc.


def test_fid_matches_pytorch_fid_on_the_same_images(parity, pfid):
  _, fid_score = pfid
  ours, reference = parity['pool3'], parity['torch_pool3']
  # Images 0-3 against 2-5. Full-rank covariances need fewer dimensions than images, and scipy's
  # sqrtm in pytorch-fid takes minutes at 2048 on 2 cores: the 3 most varying dimensions.
  dims = np.argsort(reference.std(axis=0))[-3:]
  a, b = ours[:4, dims], ours[2:, dims]
  ours_fid = ev.frechet_distance(*ev.mean_and_cov(ev.stats_of(a)), *ev.mean_and_cov(ev.stats_of(b)))
  ra, rb = reference[:4, dims].astype(np.float64), reference[2:, dims].astype(np.float64)
  reference_fid = fid_score.calculate_frechet_distance(ra.mean(axis=0), np.cov(ra, rowvar=False),
                                                       rb.mean(axis=0), np.cov(rb, rowvar=False))
  assert ours_fid > 0
  assert ours_fid == pytest.approx(reference_fid, rel=1e-3)
  # All 2048 dimensions (rank-3 covariances, which frechet_distance's eigh-based root handles):
  # our features give the FID that pytorch-fid's give.
  full = [ev.frechet_distance(*ev.mean_and_cov(ev.stats_of(x[:4])), *ev.mean_and_cov(ev.stats_of(x[2:])))
          for x in (ours, reference.astype(np.float64))]
  assert full[1] > 0
  assert full[0] == pytest.approx(full[1], rel=1e-3)


def test_frechet_distance_matches_pytorch_fid_on_full_rank_statistics(pfid):
  _, fid_score = pfid
  rng = np.random.default_rng(5)
  a, b = rng.standard_normal((400, 64)) @ rng.standard_normal((64, 64)), rng.standard_normal((300, 64)) + 0.3
  stats = [(x.mean(axis=0), np.cov(x, rowvar=False)) for x in (a, b)]
  assert ev.frechet_distance(*stats[0], *stats[1]) == pytest.approx(
      fid_score.calculate_frechet_distance(*stats[0], *stats[1]), rel=1e-8)


def test_converter_command_writes_weights_that_load(tmp_path, capsys):
  import torch  # pylint: disable=g-import-not-at-top
  flat = inception.random_flat_variables(seed=6)
  torch_weights, output = tmp_path / inception.FID_WEIGHTS_FILE, tmp_path / 'out' / 'inception.npz'
  torch.save({k: torch.from_numpy(v) for k, v in torch_layout(flat).items()}, str(torch_weights))
  assert ci.main(['convert_inception', f'--torch_weights={torch_weights}', f'--out={output}', '--nocheck_hash']) == 0
  captured = capsys.readouterr()
  assert f'Wrote 23,885,392 Inception weights to {output}.' in captured.out, captured.err[-4000:]
  loaded = traverse_util.flatten_dict(inception.load_inception_params(str(output)), sep='/')
  for key in ('params/Mixed_6c/branch7x7dbl_4/conv/kernel', 'batch_stats/Conv2d_4a_3x3/bn/mean'):
    np.testing.assert_array_equal(loaded[key], flat[key])


def test_converter_command_refuses_in_one_line_and_reads_the_former_output_flag(tmp_path, capsys):
  missing, output = tmp_path / inception.FID_WEIGHTS_FILE, tmp_path / 'out' / 'inception.npz'
  for args, message in [([f'--torch_weights={missing}', f'--out={output}'], f'error: No file {missing}.'),
                        ([f'--out={output}'], 'error: --torch_weights is required: '),
                        ([f'--torch_weights={missing}', f'--out={output}', 'x'], "error: unexpected arguments 'x'")]:
    assert ci.main(['convert_inception', *args]) == 1
    captured = capsys.readouterr()
    assert captured.out == '' and captured.err.startswith(message) and captured.err.count('\n') == 1, captured.err
  # --output, as inception.conversion_command still spells it: read as --out, with one warning line.
  assert ci.main(['convert_inception', f'--torch_weights={missing}', f'--output={output}']) == 1
  lines = capsys.readouterr().err.splitlines()
  assert lines[0] == 'warning: --output is deprecated; use --out.' and lines[1].startswith(f'error: No file {missing}.')
  assert len(lines) == 2 and not output.parent.exists()