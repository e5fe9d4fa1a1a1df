"""benchmarks/torch_reference.py: the PyTorch twins compute what our Flax networks compute.

The throughput benchmark's "no slower than PyTorch" figures mean something only if the PyTorch
network is the same network; these tests check it for every architecture and option the twins
cover, on tiny widths, with random parameters (zero-initialised layers made nonzero).
"""

import os
import sys

import jax
import numpy as np
import pytest

from configs import cifar10_conv, cifar10_ddpm, cifar10_resnet, mnist_resnet, mnist_simple
from ddpm_jax import nets

torch = pytest.importorskip('torch')
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'benchmarks'))
import torch_reference  # pylint: disable=g-import-not-at-top,wrong-import-position


def tiny(get_config, **model_fields):
  config = get_config()
  config.model.update(model_fields)
  return config


def level(get_config, **model_fields):
  return tiny(get_config, **{**dict(ch=8, ch_mult=(1, 2), num_res_blocks=1, norm_groups=4, time_embed_dim=8,
                                    time_mlp_dim=16), **model_fields})


CASES = {
    'unet_simple': tiny(mnist_simple.get_config, widths=(8, 16, 16, 8, 4), time_embed_dim=8),
    'unet_conv_transpose_up': level(cifar10_conv.get_config, upsample='transpose'),
    'unet_resnet_two_heads': level(cifar10_resnet.get_config, attn_resolutions=(16,), num_heads=2),
    'unet_resnet_mnist_three_levels': level(mnist_resnet.get_config, ch_mult=(1, 2, 2), attn_resolutions=(7,)),
    'ddpm': level(cifar10_ddpm.get_config, attn_resolutions=(16,)),
}


def random_variables(config) -> tuple:
  """(network, variables): every variable random (norm scales and running variances around 1, positive),
  so a mapping mistake in any one of them shows; drawn with numpy, nothing compiled."""
  model = nets.get_model(config)
  shapes = jax.eval_shape(lambda key: nets.init_variables(model, config, key), jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)

  def draw(path, shape):
    noise = 0.2 * rng.standard_normal(shape.shape).astype(np.float32)
    name = jax.tree_util.keystr(path)
    return 1 + np.abs(noise) if "'var'" in name else 1 + noise if "'scale'" in name else noise

  return model, jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.mark.parametrize('case', list(CASES))
def test_twin_has_flax_params_and_outputs(case):
  config = CASES[case]
  model, variables = random_variables(config)
  check = torch_reference.check_twin(config, model, variables)
  assert check['params'] == sum(np.size(p) for p in jax.tree.leaves(variables['params']))
  assert set(check) == {'params', 'max_abs_diff_eval'} | ({'max_abs_diff_train'} if case == 'unet_simple' else set())


def test_wrong_parameter_is_caught(monkeypatch):
  """check_twin fails when one loaded weight is off: the comparison is not vacuous."""
  config = CASES['unet_resnet_two_heads']
  model, variables = random_variables(config)
  load = torch_reference.load_flax_variables

  def load_then_spoil(twin, variables):
    load(twin, variables)
    with torch.no_grad():
      twin.get_submodule('down_1_attn_0.q').weight.mul_(1.01)

  monkeypatch.setattr(torch_reference, 'load_flax_variables', load_then_spoil)
  with pytest.raises(AssertionError, match='differs'):
    torch_reference.check_twin(config, model, variables)


def test_missing_variables_are_named():
  config = CASES['unet_conv_transpose_up']
  model, variables = random_variables(config)
  params = dict(variables['params'])
  del params['conv_out']
  with pytest.raises(ValueError, match='conv_out.weight'):
    torch_reference.load_flax_variables(torch_reference.torch_twin(model, 32, 3), {'params': params})


def test_conditional_networks_are_refused():
  config = tiny(mnist_simple.get_config, widths=(8, 16, 16, 8, 4), time_embed_dim=8, num_classes=10)
  with pytest.raises(ValueError, match='num_classes = 0'):
    torch_reference.torch_twin(nets.get_model(config), 28, 1)
