"""The report's Unet-Resnet: ResNet blocks, attention at chosen resolutions, max-pool down."""

import re

import pytest

import nets_testlib as lib
from configs import cifar10_resnet, cifar100_resnet, mnist_resnet
from ddpm_jax import configuration, errors, nets
from ddpm_jax.nets import unet_resnet


@pytest.fixture(scope='module')
def trained():
  """A tiny one-level Unet-Resnet (attention at 8x8) after 100 steps: (config, model, state, losses)."""
  config = lib.tiny_config('unet_resnet', ch_mult=(1,), attn=(8,))
  return (config,) + lib.train_tiny(config, steps=100)


@pytest.mark.parametrize('make_config,count', [(mnist_resnet.get_config, 1_576_993),
                                               (cifar10_resnet.get_config, 8_619_971),
                                               (cifar100_resnet.get_config, 8_619_971)])
def test_report_configs_parameter_counts_and_shapes(make_config, count):
  config = make_config()
  assert isinstance(nets.get_model(config), unet_resnet.UNetResnet)
  assert lib.param_count(config) == count
  size, channels = config.data.image_size, config.data.num_channels
  assert lib.output_shape(config) == (2, size, size, channels)


def test_cifar100_config_differs_from_cifar10_only_in_the_dataset():
  a, b = cifar10_resnet.get_config().to_dict(), cifar100_resnet.get_config().to_dict()
  assert b['data'].pop('dataset') == 'cifar100' and a['data'].pop('dataset') == 'cifar10'
  assert a == b


def test_attention_sits_at_the_configured_side_only():
  params = lib.param_shapes(cifar10_resnet.get_config())['params']  # Sides 32, 16, 8, 4; attention at 16.
  attention = sorted(name for name in params if 'attn' in name)
  assert attention == ['down_1_attn_0', 'down_1_attn_1', 'mid_attn', 'up_1_attn_0', 'up_1_attn_1', 'up_1_attn_2']
  assert not [name for name in params if 'downsample' in name]  # Max pooling has no params.
  assert set(params['down_1_block_0']) == {'norm_0', 'conv_0', 'temb_proj', 'norm_1', 'conv_1', 'shortcut'}
  mnist = lib.param_shapes(mnist_resnet.get_config())['params']  # Sides 28, 14, 7; attention at 14.
  assert sorted(name for name in mnist if re.match(r'(down|up)_\d_attn', name)) == [
      'down_1_attn_0', 'down_1_attn_1', 'up_1_attn_0', 'up_1_attn_1', 'up_1_attn_2']


@pytest.mark.parametrize('size,channels,ch_mult,attn', [(28, 1, (1, 2, 2), (14, 7)), (32, 3, (1, 2, 2, 2), (16,))])
def test_tiny_shapes_on_mnist_and_cifar_sizes(size, channels, ch_mult, attn):
  config = lib.tiny_config('unet_resnet', size, channels, ch_mult, attn)
  assert lib.output_shape(config, batch=3) == (3, size, size, channels)


def test_heads_and_transposed_upsampling_are_configurable():
  config = lib.tiny_config('unet_resnet')
  config.model.num_heads = 2
  config.model.upsample = 'transpose'
  assert lib.output_shape(config) == (2, 8, 8, 1)
  assert lib.param_shapes(config)['params']['up_1_upsample']['conv']['kernel'].shape == (2, 2, 16, 16)


def test_loss_decreases_on_a_tiny_dataset(trained):
  lib.check_loss_decreases(trained[3])


def test_dropout_only_in_training(trained):
  config, model, state, _ = trained
  lib.check_dropout_only_in_training(model, state.params, config)


@pytest.mark.parametrize('field,value,message', [
    ('model.attn_resolutions', (16,), r'never reaches side\(s\) \[16\] on 8x8 images; its levels have sides \[8, 4\]'),
    ('model.num_heads', 3, 'num_heads=3 must divide the width of every level with attention'),
    ('data.image_size', 7, 'divisible by 2; got 7'),
    ('model.ch_mult', (), r'config.model.ch_mult=\(\) is empty|non-empty config.model.ch_mult'),
])
def test_impossible_settings_are_refused_before_any_compile(field, value, message):
  config = lib.tiny_config('unet_resnet')
  section, key = field.split('.')
  config[section][key] = value
  with pytest.raises(ValueError, match=message):
    nets.get_model(config)
  with pytest.raises(errors.ConfigError, match=message):
    configuration.validate_config(config)
