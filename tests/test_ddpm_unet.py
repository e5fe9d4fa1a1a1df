"""The official DDPM UNet: 35,746,307 parameters on CIFAR-10, other sizes its depth allows."""

import pytest

import nets_testlib as lib
from configs import cifar10_ddpm
from ddpm_jax import configuration, errors, nets
from ddpm_jax.nets import ddpm_unet


@pytest.fixture(scope='module')
def trained():
  """A tiny two-level DDPM UNet (attention at 4x4) after 100 steps: (config, model, state, losses)."""
  config = lib.tiny_config('ddpm', ch_mult=(1, 2), attn=(4,))
  return (config,) + lib.train_tiny(config, steps=100)


def test_official_cifar10_network_has_exactly_the_published_parameter_count():
  config = cifar10_ddpm.get_config()
  model = nets.get_model(config)
  assert isinstance(model, ddpm_unet.DDPMUNet)
  assert lib.param_count(config) == ddpm_unet.OFFICIAL_CIFAR10_PARAMS == 35_746_307
  assert lib.output_shape(config) == (2, 32, 32, 3)


def test_official_layout():
  params = lib.param_shapes(cifar10_ddpm.get_config())['params']
  assert params['conv_in']['kernel'].shape == (3, 3, 3, 128)
  assert params['temb']['dense_0']['kernel'].shape == (128, 512)
  assert params['temb']['dense_1']['kernel'].shape == (512, 512)
  assert params['down_1_block_0']['temb_proj']['kernel'].shape == (512, 256)
  assert params['down_1_block_0']['shortcut']['kernel'].shape == (1, 1, 128, 256)
  # Attention after every block at 16x16 on both paths, and in the middle.
  assert sorted(n for n in params if 'attn' in n) == [
      'down_1_attn_0', 'down_1_attn_1', 'mid_attn', 'up_1_attn_0', 'up_1_attn_1', 'up_1_attn_2']
  # 3x3 stride-2 convs down from levels 0-2, nearest + 3x3 conv up into levels 2-0.
  assert sorted(n for n in params if 'sample' in n) == [
      'down_0_downsample', 'down_1_downsample', 'down_2_downsample',
      'up_1_upsample', 'up_2_upsample', 'up_3_upsample']
  assert params['down_0_downsample']['conv']['kernel'].shape == (3, 3, 128, 128)
  assert params['up_0_block_0']['conv_0']['kernel'].shape == (3, 3, 256 + 128, 128)
  assert params['conv_out']['kernel'].shape == (3, 3, 128, 3)
  assert params['norm_out']['scale'].shape == (128,)


def test_defaults_of_the_module_are_the_official_network():
  default_model = ddpm_unet.DDPMUNet()
  configured = nets.get_model(cifar10_ddpm.get_config())
  for field in ('ch', 'ch_mult', 'num_res_blocks', 'attn_resolutions', 'num_heads', 'dropout', 'norm_groups',
                'norm_eps', 'time_embed_dim', 'time_mlp_dim', 'downsample', 'upsample', 'out_channels'):
    assert getattr(default_model, field) == getattr(configured, field), field


@pytest.mark.parametrize('size,channels,ch_mult,attn', [
    (28, 1, (1, 2, 2), (14,)),       # MNIST: 28 -> 14 -> 7.
    (32, 3, (1, 2, 2, 2), (16,)),    # CIFAR-10.
    (64, 3, (1, 2, 2, 2), (16,)),    # Larger images, attention at the third level.
    (12, 1, (1, 2, 2), (3,)),
])
def test_builds_for_every_size_its_depth_allows(size, channels, ch_mult, attn):
  config = lib.tiny_config('ddpm', size, channels, ch_mult, attn)
  assert lib.output_shape(config) == (2, size, size, channels)


def test_official_widths_build_for_mnist():
  config = cifar10_ddpm.get_config()
  config.data.image_size, config.data.num_channels = 28, 1
  config.model.ch_mult, config.model.attn_resolutions = (1, 2, 2), (14,)
  assert lib.output_shape(config) == (2, 28, 28, 1)


@pytest.mark.parametrize('size,message', [
    (28, 'ddpm halves the image 3 times .* divisible by 8; got 28'),
    (36, 'divisible by 8; got 36'),
])
def test_sizes_the_depth_cannot_halve_are_refused_before_any_compile(size, message):
  config = cifar10_ddpm.get_config()
  config.data.image_size = size
  with pytest.raises(ValueError, match=message):
    nets.get_model(config)
  with pytest.raises(errors.ConfigError, match=message):
    configuration.validate_config(config)


@pytest.mark.parametrize('field,value,message', [
    ('upsample', 'transpose', 'ddpm is the official architecture and upsamples by nearest'),
    ('attn_resolutions', (16, 5), r'never reaches side\(s\) \[5\]'),
    ('norm_groups', 48, 'norm_groups=48 must divide every level width'),
])
def test_other_impossible_settings_are_refused(field, value, message):
  config = cifar10_ddpm.get_config()
  config.model[field] = value
  with pytest.raises(errors.ConfigError, match=message):
    configuration.validate_config(config)


def test_loss_decreases_on_a_tiny_dataset(trained):
  lib.check_loss_decreases(trained[3])


def test_dropout_only_in_training(trained):
  config, model, state, _ = trained
  lib.check_dropout_only_in_training(model, state.params, config)


def test_official_recipe():
  config = cifar10_ddpm.get_config()
  assert (config.optim.lr, config.optim.warmup_steps, config.optim.grad_clip) == (2e-4, 5000, 1.0)
  assert (config.training.batch_size, config.training.ema_decay, config.training.num_train_steps) == (
      128, 0.9999, 800_000)
  assert config.data.random_flip and config.model.dropout == 0.1
  assert config.diffusion.model_var_type == 'fixedlarge' and config.diffusion.clip_denoised
