"""NCSN++ and DDPM++ (nets/ncsnpp.py): FIR resampling, Fourier features, parameter counts, the
registry's checks, MNIST-size forward passes, and parity with diffusers' NCSN++ through the converter."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from scipy import signal

from configs import cifar10_ddpmpp_continuous, cifar10_ncsnpp_continuous, default, mnist_ddpmpp, mnist_ncsnpp
from ddpm_jax import nets
from ddpm_jax.nets import ncsnpp
from ddpm_jax.processes.vesde import VESDE
from ddpm_jax.tools import convert_diffusers as cd


# ---------------------------------------------------------------------------
# FIR resampling against a direct convolution.

def direct_upfirdn(x, kernel, up, down, pad):
  """upfirdn of one (H, W) channel by definition: zeros inserted, padded, full 2D convolution, subsampled."""
  h, w = x.shape
  upsampled = np.zeros((h * up, w * up))
  upsampled[::up, ::up] = x
  padded = np.pad(upsampled, [pad, pad])
  return signal.convolve2d(padded, kernel, mode='valid')[::down, ::down]


@pytest.mark.parametrize('taps', [(1, 3, 3, 1), (1, 2, 1), (1, 1)])
def test_fir_resampling_equals_a_direct_convolution(taps):
  x = np.random.default_rng(0).standard_normal((2, 8, 8, 3)).astype(np.float32)
  kernel = np.outer(taps, taps) / np.sum(np.outer(taps, taps))
  p = len(taps) - 2
  up = np.asarray(ncsnpp.fir_upsample_2d(jnp.asarray(x), taps))
  down = np.asarray(ncsnpp.fir_downsample_2d(jnp.asarray(x), taps))
  assert up.shape == (2, 16, 16, 3) and down.shape == (2, 4, 4, 3)
  for b in range(2):
    for c in range(3):
      want_up = direct_upfirdn(x[b, :, :, c], kernel * 4, 2, 1, ((p + 1) // 2 + 1, p // 2))
      want_down = direct_upfirdn(x[b, :, :, c], kernel, 1, 2, ((p + 1) // 2, p // 2))
      np.testing.assert_allclose(up[b, :, :, c], want_up, atol=1e-5)
      np.testing.assert_allclose(down[b, :, :, c], want_down, atol=1e-5)


def test_upfirdn_convolves_rather_than_correlates():
  """An asymmetric kernel tells a convolution (flipped) from a correlation."""
  x = np.random.default_rng(1).standard_normal((1, 6, 5, 1)).astype(np.float32)
  kernel = np.arange(6, dtype=np.float32).reshape(2, 3)
  ours = np.asarray(ncsnpp.upfirdn_2d(jnp.asarray(x), kernel, up=2, down=1, pad=(1, 2)))[0, :, :, 0]
  np.testing.assert_allclose(ours, direct_upfirdn(x[0, :, :, 0], kernel, 2, 1, (1, 2)), atol=1e-5)


def test_fir_kernel_is_normalised_and_resampling_keeps_a_constant_interior():
  np.testing.assert_allclose(ncsnpp.fir_kernel_2d((1, 3, 3, 1)), np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 64)
  ones = jnp.ones((1, 8, 8, 1))
  np.testing.assert_allclose(ncsnpp.fir_upsample_2d(ones, (1, 3, 3, 1))[0, 2:-2, 2:-2, 0], 1.0, rtol=1e-6)
  np.testing.assert_allclose(ncsnpp.fir_downsample_2d(ones, (1, 3, 3, 1))[0, 1:-1, 1:-1, 0], 1.0, rtol=1e-6)
  with pytest.raises(ValueError, match='FIR taps'):
    ncsnpp.fir_kernel_2d((1, -1))


# ---------------------------------------------------------------------------
# Gaussian Fourier features.

def test_fourier_features_closed_form_and_frozen_frequencies():
  module = ncsnpp.GaussianFourierFeatures(size=64, scale=16.0)
  t = jnp.array([-4.0, 0.0, 0.3, 3.9])  # log sigma
  params = module.init(jax.random.PRNGKey(0), t)['params']
  w = np.asarray(params['W'], np.float64)
  assert 8 < w.std() < 32  # N(0, 16^2) frequencies.
  angles = 2 * np.pi * np.asarray(t, np.float64)[:, None] * w[None, :]
  np.testing.assert_allclose(module.apply({'params': params}, t), np.concatenate([np.sin(angles), np.cos(angles)], 1),
                             atol=2e-4)
  grad = jax.grad(lambda p: module.apply({'params': p}, t).sum())(params)
  assert not np.any(np.asarray(grad['W']))  # Fixed after initialisation, as score_sde.


# ---------------------------------------------------------------------------
# The registry, configs and forward passes.

def random_params(config, seed=0):
  """Random params of the config's network from its shapes alone (no init compile): normal(0, 0.05),
  GroupNorm scales around 1."""
  rng = np.random.default_rng(seed)
  shapes = traverse_util.flatten_dict(cd.param_template(config))
  return traverse_util.unflatten_dict({
      path: (1.0 if path[-1] == 'scale' else 0.0) + 0.05 * rng.standard_normal(leaf.shape).astype(np.float32)
      for path, leaf in shapes.items()})


def forward(config, params, batch=2, seed=0) -> np.ndarray:
  """The network's output on random input at spread-out time inputs (class labels when conditional)."""
  model = nets.get_model(config)
  size, channels = config.data.image_size, config.data.num_channels
  x = jax.random.normal(jax.random.PRNGKey(seed), (batch, size, size, channels))
  fourier = config.model.name == 'ncsnpp' and config.model.embedding_type == 'fourier'
  t = jnp.linspace(-2.0, 3.0, batch) if fourier else jnp.linspace(1.0, 900.0, batch)
  labels = jnp.arange(batch) % config.model.num_classes if config.model.num_classes else None
  return np.asarray(jax.jit(lambda p: model.apply({'params': p}, x, t, train=False, labels=labels))(params))


def small(get_config):
  config = get_config()
  config.model.num_res_blocks = 1  # Compiling dominates on the CPU.
  return config


@pytest.mark.parametrize('get_config', [mnist_ncsnpp.get_config, mnist_ddpmpp.get_config])
def test_mnist_networks_run_forward(get_config):
  config = small(get_config)
  assert isinstance(nets.get_model(config), ncsnpp.NCSNpp)
  out = forward(config, random_params(config))
  assert out.shape == (2, 28, 28, 1) and np.all(np.isfinite(out)) and np.abs(out).max() > 1e-3


def test_output_skip_input_skip_and_class_conditioning_run_and_start_at_zero():
  config = small(mnist_ncsnpp.get_config)  # Two levels on 8x8: initialising compiles the whole network.
  config.data.image_size, config.model.ch_mult, config.model.attn_resolutions = 8, (1, 2), (4,)
  config.model.progressive, config.model.progressive_input = 'output_skip', 'input_skip'
  config.model.num_classes = 10
  model = nets.get_model(config)
  fresh = nets.init_variables(model, config, jax.random.PRNGKey(0))['params']
  assert {'down_0_skip_conv', 'up_1_skip_conv', 'up_1_skip_norm', 'class_embed'} <= set(fresh)
  assert not any(name.endswith('_pyramid') for name in fresh)
  # Zero-initialised output convs (conv_out and the pyramid's), as score_sde's init_scale 0.
  assert not np.any(forward(config, fresh))


def param_count(config) -> int:
  shapes = cd.param_template(config)
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(shapes))


def test_published_cifar10_sizes():
  """score_sde's CIFAR-10 networks (eval_shape only): NCSN++ cont. and DDPM++ cont."""
  assert param_count(cifar10_ncsnpp_continuous.get_config()) == 62_758_915
  assert param_count(cifar10_ddpmpp_continuous.get_config()) == 61_804_419


def _diffusers_count(widths, layers, attention, fourier):
  """Parameters of diffusers' NCSN++ layout (Skip blocks), built on the meta device (no memory)."""
  torch = pytest.importorskip('torch')
  diffusers = pytest.importorskip('diffusers')
  with torch.device('meta'):
    model = diffusers.UNet2DModel(
        sample_size=32, block_out_channels=list(widths), layers_per_block=layers, norm_num_groups=None,
        time_embedding_type='fourier' if fourier else 'positional', flip_sin_to_cos=False, freq_shift=1,
        mid_block_scale_factor=math.sqrt(2.0), norm_eps=1e-6, attention_head_dim=None,
        down_block_types=['AttnSkipDownBlock2D' if a else 'SkipDownBlock2D' for a in attention],
        up_block_types=['AttnSkipUpBlock2D' if a else 'SkipUpBlock2D' for a in reversed(attention)])
  return sum(p.numel() for p in model.parameters())


def test_cifar10_counts_agree_with_diffusers_layout_plus_the_pyramid_differences():
  """Our counts from diffusers' (input_skip / output_skip) count of the same widths, minus its pyramid
  layers, plus the residual input pyramid's convs: checks blocks, attention and embeddings."""
  widths, attention = (128, 256, 256, 256), (False, True, False, False)
  skip_in = sum(3 * w + w for w in widths[:-1])  # 1x1 convs 3 -> C of the input_skip pyramid.
  skip_out = sum(2 * w + 9 * w * 3 + 3 for w in widths[1:])  # GN + 3x3 conv C -> 3 per up level above 0.
  residual_in = sum(9 * (3 if level == 0 else widths[level - 1]) * w + w for level, w in enumerate(widths[:-1]))
  ncsnpp_count = _diffusers_count(widths, 4, attention, fourier=True) - skip_in - skip_out + residual_in
  assert param_count(cifar10_ncsnpp_continuous.get_config()) == ncsnpp_count
  ddpmpp_count = _diffusers_count(widths, 4, attention, fourier=False) - skip_in - skip_out
  assert param_count(cifar10_ddpmpp_continuous.get_config()) == ddpmpp_count


def celebahq_256_config():
  """Our ncsnpp config with the layout of google/ncsnpp-celebahq-256 (score_sde's celebahq_256 NCSN++)."""
  config = cifar10_ncsnpp_continuous.get_config()
  config.data.dataset, config.data.image_size = 'image_folder', 256
  config.data.data_dir = '/nonexistent'
  m = config.model
  m.ch_mult, m.num_res_blocks = (1, 1, 2, 2, 2, 2, 2), 2
  m.progressive, m.progressive_input = 'output_skip', 'input_skip'
  return config


def test_the_celebahq_256_layout_maps_onto_diffusers_keys_and_shapes():
  torch = pytest.importorskip('torch')
  diffusers = pytest.importorskip('diffusers')
  config = celebahq_256_config()
  widths = [128 * k for k in config.model.ch_mult]
  attention = [side == 16 for side in nets.level_sides(256, len(widths))]
  with torch.device('meta'):
    model = diffusers.UNet2DModel(
        sample_size=256, block_out_channels=widths, layers_per_block=2, norm_num_groups=None,
        time_embedding_type='fourier', mid_block_scale_factor=math.sqrt(2.0), norm_eps=1e-6,
        attention_head_dim=None,
        down_block_types=['AttnSkipDownBlock2D' if a else 'SkipDownBlock2D' for a in attention],
        up_block_types=['AttnSkipUpBlock2D' if a else 'SkipUpBlock2D' for a in reversed(attention)])
  theirs = {k: tuple(v.shape) for k, v in model.state_dict().items()}
  template = traverse_util.flatten_dict(cd.param_template(config))
  torch_shape = {4: lambda s: (s[3], s[2], s[0], s[1]), 2: lambda s: (s[1], s[0]), 1: lambda s: s}
  ours = {cd.diffusers_key(path, len(widths)): torch_shape[len(leaf.shape)](tuple(leaf.shape))
          for path, leaf in template.items()}
  assert ours == theirs


@pytest.mark.parametrize('field,value,message', [
    ('progressive', 'residual', 'Unknown config.model.progressive'),
    ('embedding_type', 'learned', 'Unknown config.model.embedding_type'),
    ('fir_kernel', (1,), 'at least 2 taps'),
    ('ch', 33, 'groups, which do not divide'),
    ('attn_resolutions', (5,), 'never reaches'),
])
def test_impossible_ncsnpp_settings_are_refused_naming_the_field(field, value, message):
  config = mnist_ncsnpp.get_config()
  config.model[field] = value
  with pytest.raises(ValueError, match=message):
    nets.check_model_config(config)


def test_ddpmpp_reads_no_ncsnpp_only_knob():
  """ddpmpp fixes embedding, FIR and pyramids: the command line refuses those overrides (cli.py)."""
  only_ncsnpp = {'embedding_type', 'fourier_scale', 'fir', 'fir_kernel', 'progressive', 'progressive_input'}
  assert only_ncsnpp <= set(nets.MODEL_FIELDS['ncsnpp'])
  assert not only_ncsnpp & set(nets.MODEL_FIELDS['ddpmpp'])
  config = mnist_ddpmpp.get_config()
  config.model.fir, config.model.progressive = True, 'output_skip'  # Ignored by ddpmpp.
  model = nets.get_model(config)
  assert (model.fir, model.progressive, model.embedding_type) == (False, 'none', 'positional')


def test_default_config_knobs_feed_the_network():
  config = default.get_config()
  config.model.name, config.data.image_size, config.data.num_channels = 'ncsnpp', 32, 3
  model = nets.get_model(config)
  assert (model.embedding_type, model.fir, model.progressive_input) == ('fourier', True, 'residual')


# ---------------------------------------------------------------------------
# Parity with diffusers' NCSN++ through the converter.

# A two-level NCSN++ on 8x8x3 in diffusers' layout (Skip blocks), attention on the 4x4 level; 128
# channels, where diffusers' 32 GroupNorm groups in its Skip-block attention equal ours.
TINY_NCSNPP_DIFFUSERS_CONFIG = {
    '_class_name': 'UNet2DModel', 'sample_size': 8, 'in_channels': 3, 'out_channels': 3, 'act_fn': 'silu',
    'attention_head_dim': None, 'block_out_channels': [128, 128], 'center_input_sample': False,
    'down_block_types': ['SkipDownBlock2D', 'AttnSkipDownBlock2D'], 'downsample_padding': 1,
    'flip_sin_to_cos': True, 'freq_shift': 0, 'layers_per_block': 1, 'mid_block_scale_factor': 1.41421356237,
    'norm_eps': 1e-6, 'norm_num_groups': None, 'time_embedding_type': 'fourier',
    'up_block_types': ['AttnSkipUpBlock2D', 'SkipUpBlock2D'],
}


def tiny_ncsnpp_config():
  config = cifar10_ncsnpp_continuous.get_config()
  config.data.image_size = 8
  m = config.model
  m.ch, m.ch_mult, m.num_res_blocks, m.attn_resolutions = 128, (1, 1), 1, (4,)
  m.progressive, m.progressive_input = 'output_skip', 'input_skip'
  return config


def test_legacy_fourier_key_is_renamed():
  w = np.arange(3.0)
  assert set(cd.rename_legacy_keys({'time_proj.W': w})) == {'time_proj.weight'}
  assert set(cd.rename_legacy_keys({'time_proj.W': w, 'time_proj.weight': w})) == {'time_proj.weight'}


def test_the_config_check_names_what_diffusers_ncsnpp_fixes():
  config = tiny_ncsnpp_config()
  cd.check_diffusers_config(TINY_NCSNPP_DIFFUSERS_CONFIG, config)
  config.model.progressive_input = 'residual'
  with pytest.raises(cd.ConversionError, match=r"config.model.progressive_input is 'residual'"):
    cd.check_diffusers_config(TINY_NCSNPP_DIFFUSERS_CONFIG, config)
  with pytest.raises(cd.ConversionError, match='down_block_types'):
    cd.check_diffusers_config(dict(TINY_NCSNPP_DIFFUSERS_CONFIG, down_block_types=['SkipDownBlock2D'] * 2),
                              tiny_ncsnpp_config())
  narrow = tiny_ncsnpp_config()
  narrow.model.ch = 64
  with pytest.raises(cd.ConversionError, match=r'attention widths \[64\] are below 128'):
    cd.check_diffusers_config(dict(TINY_NCSNPP_DIFFUSERS_CONFIG, block_out_channels=[64, 64]), narrow)


def test_parity_with_diffusers_ncsnpp_gives_its_score_through_score_fn(tmp_path):
  """The converted network is diffusers' NCSN++: VESDE's score_fn of its eps_fn(ours) = diffusers(x, sigma)."""
  torch = pytest.importorskip('torch')
  diffusers = pytest.importorskip('diffusers')
  torch.manual_seed(0)
  fields = {k: v for k, v in TINY_NCSNPP_DIFFUSERS_CONFIG.items() if not k.startswith('_')}
  model = diffusers.UNet2DModel(**fields).eval()
  with torch.no_grad():  # Norm scales and biases away from 1 and 0, so the mapping of each one counts.
    for name, p in model.named_parameters():
      if 'norm' in name:
        p.add_(0.2 * torch.randn_like(p))
  model.save_pretrained(str(tmp_path))
  diffusers_config, state_dict = cd.load_model_dir(str(tmp_path))
  config = tiny_ncsnpp_config()
  params = cd.convert(diffusers_config, state_dict, config)

  process = VESDE(sigma_min=0.01, sigma_max=50.0)
  x = np.random.default_rng(0).standard_normal((2, 8, 8, 3)).astype(np.float32) * 3
  t = np.array([0.35, 0.9], np.float32)
  sigmas = np.array(process.sigma(jnp.asarray(t)))  # A writable copy for torch.
  with torch.no_grad():
    reference = model(torch.from_numpy(x.transpose(0, 3, 1, 2)), torch.from_numpy(sigmas)).sample.numpy()
  network = nets.get_model(config)
  score_fn = process.score_fn(process.eps_fn(lambda xt, time: network.apply({'params': params}, xt, time, train=False)))
  ours = np.asarray(jax.jit(score_fn)(jnp.asarray(x), jnp.asarray(t))).transpose(0, 3, 1, 2)
  eps_scale = np.abs(reference * sigmas[:, None, None, None]).max()
  assert eps_scale > 0.1
  # Compared as eps = -sigma * score, the network's own output.
  assert np.abs((ours - reference) * sigmas[:, None, None, None]).max() <= 1e-4
