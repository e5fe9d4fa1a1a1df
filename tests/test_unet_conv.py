"""The report's Unet-Conv: group-normalised conv blocks, max-pool down, no attention."""

import pytest

import nets_testlib as lib
from configs import cifar10_conv, mnist_conv
from ddpm_jax import configuration, errors, nets
from ddpm_jax.nets import unet_conv


@pytest.fixture(scope='module')
def trained():
  """A tiny one-level Unet-Conv after 100 steps on two patterns: (config, model, state, losses)."""
  config = lib.tiny_config('unet_conv', ch_mult=(1,), attn=())
  return (config,) + lib.train_tiny(config, steps=100)


@pytest.mark.parametrize('make_config,count', [(mnist_conv.get_config, 1_418_625),
                                               (cifar10_conv.get_config, 7_894_531)])
def test_report_configs_parameter_counts_and_shapes(make_config, count):
  config = make_config()
  assert config.model.name == 'unet_conv'
  assert isinstance(nets.get_model(config), unet_conv.UNetConv)
  assert lib.param_count(config) == count
  size, channels = config.data.image_size, config.data.num_channels
  assert lib.output_shape(config) == (2, size, size, channels)


@pytest.mark.parametrize('size,channels,ch_mult', [(28, 1, (1, 2, 2)), (32, 3, (1, 2, 2, 2))])
def test_tiny_shapes_on_mnist_and_cifar_sizes(size, channels, ch_mult):
  config = lib.tiny_config('unet_conv', size, channels, ch_mult, attn=())
  assert lib.output_shape(config, batch=3) == (3, size, size, channels)


def test_blocks_are_plain_convs_with_maxpool_and_no_attention():
  params = lib.param_shapes(lib.tiny_config('unet_conv', attn=()))['params']
  assert not [name for name in params if 'attn' in name or 'downsample' in name]
  assert set(params['down_1_block_0']) == {'conv_0', 'norm_0', 'temb_proj', 'conv_1', 'norm_1'}
  assert params['up_1_upsample']['conv']['kernel'].shape == (3, 3, 16, 16)  # nearest + 3x3 conv.


def test_transposed_conv_upsampling_is_configurable():
  config = lib.tiny_config('unet_conv', attn=())
  config.model.upsample = 'transpose'
  params = lib.param_shapes(config)['params']
  assert params['up_1_upsample']['conv']['kernel'].shape == (2, 2, 16, 16)
  assert lib.output_shape(config) == (2, 8, 8, 1)


def test_loss_decreases_on_a_tiny_dataset(trained):
  config, model, state, losses = trained
  lib.check_loss_decreases(losses)


def test_dropout_only_in_training(trained):
  config, model, state, _ = trained
  lib.check_dropout_only_in_training(model, state.params, config)


@pytest.mark.parametrize('field,value,message', [
    ('data.image_size', 7, 'halves the image 1 times .* divisible by 2; got 7'),
    ('model.norm_groups', 3, 'norm_groups=3 must divide every level width'),
    ('model.upsample', 'bilinear', 'valid: nearest, transpose'),
    ('model.num_res_blocks', 0, r'config.model.num_res_blocks(=0 is out of range: it must be in \[1, inf\)| must be at least 1)'),
    ('model.dropout', 1.0, r'config.model.dropout(=1.0 is out of range: it must be in | must be in )\[0, 1\)'),
    ('model.time_embed_dim', 7, 'config.model.time_embed_dim=7 is out of range: it must be an even integer >= 4'),
])
def test_impossible_settings_are_refused_before_any_compile(field, value, message):
  config = lib.tiny_config('unet_conv', attn=())
  section, key = field.split('.')
  config[section][key] = value
  with pytest.raises(ValueError, match=message):
    nets.get_model(config)
  with pytest.raises(errors.ConfigError, match=message):
    configuration.validate_config(config)
