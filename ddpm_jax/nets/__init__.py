"""Network registry: `get_model(config)` builds the network named by `config.model.name`."""

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from ddpm_jax.nets import unet_simple


def _unet_simple(config) -> nn.Module:
  return unet_simple.UNetSimple(
      widths=tuple(config.model.widths),
      time_embed_dim=config.model.time_embed_dim,
      out_channels=config.data.num_channels,
      batch_norm_momentum=config.model.batch_norm_momentum)


def _check_unet_simple(config) -> None:
  if len(config.model.widths) != 5:
    raise ValueError(f'unet_simple needs 5 widths (config.model.widths), got {tuple(config.model.widths)}.')
  if config.data.image_size % unet_simple.SIZE_DIVISOR:
    raise ValueError(
        f'unet_simple downsamples twice, so config.data.image_size must be divisible by '
        f'{unet_simple.SIZE_DIVISOR}; got {config.data.image_size}.')


# name -> (builder(config) -> module, check(config) raising ValueError on impossible settings).
MODELS: dict[str, tuple[Callable, Callable]] = {
    'unet_simple': (_unet_simple, _check_unet_simple),
}


def check_model_config(config) -> None:
  """Raises ValueError naming the problem when the network cannot be built from config."""
  if config.model.name not in MODELS:
    raise ValueError(f'Unknown model {config.model.name!r} (config.model.name); '
                     f'valid: {", ".join(sorted(MODELS))}.')
  MODELS[config.model.name][1](config)


def get_model(config) -> nn.Module:
  check_model_config(config)
  return MODELS[config.model.name][0](config)


def init_variables(model: nn.Module, config, key: jax.Array) -> dict:
  """Initial variables ({'params': ..., maybe 'batch_stats': ...}) for a one-image dummy batch."""
  shape = (1, config.data.image_size, config.data.image_size, config.data.num_channels)
  return model.init(key, jnp.zeros(shape, jnp.float32), jnp.zeros((1,), jnp.int32), train=False)
