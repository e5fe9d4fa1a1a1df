"""Network registry: `get_model(config)` builds the network named by `config.model.name`."""

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from ddpm_jax import diffusion
from ddpm_jax.nets import ddpm_unet, layers, ncsnpp, unet_conv, unet_resnet, unet_simple


def output_channels(config) -> int:
  """The network's output channels: the image's, doubled when the variance is learned."""
  return diffusion.output_channels(config.data.num_channels, config.diffusion.model_var_type)


def _unet_simple(config) -> nn.Module:
  return unet_simple.UNetSimple(
      widths=tuple(config.model.widths),
      time_embed_dim=config.model.time_embed_dim,
      out_channels=output_channels(config),
      batch_norm_momentum=config.model.batch_norm_momentum,
      num_classes=config.model.num_classes,
      remat=config.model.remat)


def _check_time_embed_dim(config) -> None:
  """The sinusoidal timestep embedding (layers.timestep_embedding) of every network: half sines, half
  cosines, at least two frequencies."""
  dim = config.model.time_embed_dim
  if isinstance(dim, bool) or not isinstance(dim, int) or dim < 4 or dim % 2:
    raise ValueError(f'config.model.time_embed_dim={dim!r} is out of range: it must be an even integer >= 4 '
                     f'(half sines, half cosines of at least two frequencies).')


def _check_unet_simple(config) -> None:
  widths = tuple(config.model.widths)
  if len(widths) != 5:
    raise ValueError(f'unet_simple needs 5 widths (config.model.widths), got {widths}.')
  if any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths):
    raise ValueError(f'config.model.widths={widths} must be 5 integers >= 1 (the channels of the five blocks).')
  if not 0 <= config.model.batch_norm_momentum < 1:
    raise ValueError(f'config.model.batch_norm_momentum={config.model.batch_norm_momentum} is out of range: '
                     f'it must be in [0, 1).')
  if config.data.image_size % unet_simple.SIZE_DIVISOR:
    raise ValueError(
        f'unet_simple downsamples twice, so config.data.image_size must be divisible by '
        f'{unet_simple.SIZE_DIVISOR}; got {config.data.image_size}.')


def _level_unet_fields(config, attention: bool) -> dict:
  """The fields of a layers.LevelUNet that come from the config (attention ones if it has any)."""
  m = config.model
  fields = dict(ch=m.ch, ch_mult=tuple(m.ch_mult), num_res_blocks=m.num_res_blocks, dropout=m.dropout,
                norm_groups=m.norm_groups, norm_eps=m.norm_eps, time_embed_dim=m.time_embed_dim,
                time_mlp_dim=m.time_mlp_dim, out_channels=output_channels(config),
                num_classes=m.num_classes, remat=m.remat)
  if attention:
    fields.update(attn_resolutions=tuple(m.attn_resolutions), num_heads=m.num_heads)
  return fields


def level_sides(image_size: int, num_levels: int) -> list[int]:
  """Feature-map side at each level of a level UNet (the image side halves between levels)."""
  return [image_size // 2 ** level for level in range(num_levels)]


def _check_level_unet(config, name: str, attention: bool) -> None:
  """Settings every level UNet needs; raises ValueError naming the field and the fix."""
  _check_levels(config, name)
  m = config.model
  widths = [m.ch * mult for mult in m.ch_mult]
  if m.norm_groups <= 0 or any(w % m.norm_groups for w in widths):
    raise ValueError(f'config.model.norm_groups={m.norm_groups} must divide every level width '
                     f'config.model.ch * ch_mult = {tuple(widths)}; change norm_groups or ch.')
  if m.upsample not in layers.UPSAMPLE_METHODS:
    raise ValueError(f'Unknown config.model.upsample {m.upsample!r}; '
                     f'valid: {", ".join(layers.UPSAMPLE_METHODS)}.')
  if attention:
    _check_attention(config, name)


def _check_levels(config, name: str) -> None:
  """The level structure (widths, blocks, halvings), dropout, GN epsilon and time MLP of a UNet."""
  m, size = config.model, config.data.image_size
  mults = tuple(m.ch_mult)
  if m.ch <= 0 or not mults or min(mults) <= 0:
    raise ValueError(f'{name} needs config.model.ch > 0 and a non-empty config.model.ch_mult of '
                     f'positive multipliers; got ch={m.ch}, ch_mult={mults}.')
  if m.num_res_blocks < 1:
    raise ValueError(f'config.model.num_res_blocks must be at least 1, got {m.num_res_blocks}.')
  halvings = len(mults) - 1
  if size % 2 ** halvings:
    raise ValueError(
        f'{name} halves the image {halvings} times (len(config.model.ch_mult) = {len(mults)} levels), '
        f'so config.data.image_size must be divisible by {2 ** halvings}; got {size}. '
        f'Use fewer levels in config.model.ch_mult or an image size divisible by {2 ** halvings}.')
  if not 0 < m.norm_eps < float('inf'):
    raise ValueError(f'config.model.norm_eps must be positive, got {m.norm_eps}.')
  if m.time_mlp_dim <= 0:
    raise ValueError(f'config.model.time_mlp_dim must be positive, got {m.time_mlp_dim}.')
  if not 0 <= m.dropout < 1:
    raise ValueError(f'config.model.dropout must be in [0, 1), got {m.dropout}.')


def _check_attention(config, name: str) -> None:
  """Attention resolutions the network reaches, and heads that divide the widths there."""
  m, size = config.model, config.data.image_size
  mults = tuple(m.ch_mult)
  widths = [m.ch * mult for mult in mults]
  sides = level_sides(size, len(mults))
  never = [r for r in m.attn_resolutions if r not in sides]
  if never:
    raise ValueError(f'config.model.attn_resolutions {tuple(m.attn_resolutions)}: {name} never reaches '
                     f'side(s) {never} on {size}x{size} images; its levels have sides {sides}.')
  attn_widths = {w for w, side in zip(widths, sides) if side in m.attn_resolutions} | {widths[-1]}
  if m.num_heads <= 0 or any(w % m.num_heads for w in attn_widths):
    raise ValueError(f'config.model.num_heads={m.num_heads} must divide the width of every level with '
                     f'attention (and the middle): {tuple(sorted(attn_widths))}.')


def _unet_conv(config) -> nn.Module:
  return unet_conv.UNetConv(**_level_unet_fields(config, attention=False), upsample=config.model.upsample)


def _check_unet_conv(config) -> None:
  _check_level_unet(config, 'unet_conv', attention=False)


def _unet_resnet(config) -> nn.Module:
  return unet_resnet.UNetResnet(**_level_unet_fields(config, attention=True), upsample=config.model.upsample)


def _check_unet_resnet(config) -> None:
  _check_level_unet(config, 'unet_resnet', attention=True)


def _ddpm(config) -> nn.Module:
  return ddpm_unet.DDPMUNet(**_level_unet_fields(config, attention=True))


def _check_ddpm(config) -> None:
  _check_level_unet(config, 'ddpm', attention=True)
  if config.model.upsample != 'nearest':
    raise ValueError(f'ddpm is the official architecture and upsamples by nearest + conv: set '
                     f'config.model.upsample to nearest (got {config.model.upsample!r}), or use unet_resnet.')


def _score_unet_fields(config) -> dict:
  """The fields of an ncsnpp.NCSNpp that NCSN++ and DDPM++ both take from the config."""
  m = config.model
  return dict(ch=m.ch, ch_mult=tuple(m.ch_mult), num_res_blocks=m.num_res_blocks,
              attn_resolutions=tuple(m.attn_resolutions), num_heads=m.num_heads, dropout=m.dropout,
              norm_groups=m.norm_groups, norm_eps=m.norm_eps, time_embed_dim=m.time_embed_dim,
              time_mlp_dim=m.time_mlp_dim, out_channels=output_channels(config), num_classes=m.num_classes,
              skip_rescale=m.skip_rescale, remat=m.remat)


def _ncsnpp(config) -> nn.Module:
  m = config.model
  return ncsnpp.NCSNpp(**_score_unet_fields(config), embedding_type=m.embedding_type,
                       fourier_scale=float(m.fourier_scale), fir=m.fir, fir_kernel=tuple(m.fir_kernel),
                       progressive=m.progressive, progressive_input=m.progressive_input)


def _ddpmpp(config) -> nn.Module:
  """DDPM++: the NCSN++ skeleton with sinusoidal embeddings, no FIR and no progressive paths."""
  return ncsnpp.NCSNpp(**_score_unet_fields(config), embedding_type='positional', fir=False,
                       progressive='none', progressive_input='none')


def _check_score_unet(config, name: str) -> None:
  """Settings NCSN++ and DDPM++ need: levels and attention as the level UNets, GroupNorm's
  min(C // 4, norm_groups) groups dividing every map it normalises, skip_rescale a bool."""
  _check_levels(config, name)
  _check_attention(config, name)
  m = config.model
  cap = m.norm_groups
  if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
    raise ValueError(f'config.model.norm_groups={cap!r} is out of range: {name} takes it as the most GroupNorm '
                     f'groups (min(channels // 4, norm_groups)), an integer >= 1.')
  bad = sorted(w for w in ncsnpp.norm_widths(m.ch, tuple(m.ch_mult), m.num_res_blocks)
               if w % ncsnpp.num_groups(w, cap))
  if bad:
    raise ValueError(f'{name} normalises maps of C channels in min(C // 4, config.model.norm_groups={cap}) '
                     f'groups, which do not divide C = {bad}: choose config.model.ch (and ch_mult) so that '
                     f'every width is a multiple of 4 and of its group count (e.g. multiples of 32).')
  if not isinstance(m.skip_rescale, bool):
    raise ValueError(f'config.model.skip_rescale={m.skip_rescale!r} must be True or False.')


def _check_ncsnpp(config) -> None:
  _check_score_unet(config, 'ncsnpp')
  m = config.model
  for field, valid in (('embedding_type', ncsnpp.EMBEDDING_TYPES), ('progressive', ncsnpp.PROGRESSIVE),
                       ('progressive_input', ncsnpp.PROGRESSIVE_INPUT)):
    if m[field] not in valid:
      raise ValueError(f'Unknown config.model.{field} {m[field]!r}; valid: {", ".join(valid)}.')
  if not isinstance(m.fir, bool):
    raise ValueError(f'config.model.fir={m.fir!r} must be True or False.')
  taps = tuple(m.fir_kernel)  # Each tap's range: configuration.py.
  if len(taps) < 2 or not sum(taps) > 0:
    raise ValueError(f'config.model.fir_kernel={taps} needs at least 2 taps (the resampling factor) with a '
                     f'positive sum, e.g. (1, 3, 3, 1).')


def _check_ddpmpp(config) -> None:
  _check_score_unet(config, 'ddpmpp')


# The config.model fields each network reads (besides name): a command-line override of another
# field has no effect on it and is refused (cli.py). Shipped configs may carry other networks' fields.
_LEVEL_UNET_FIELDS = ('ch', 'ch_mult', 'num_res_blocks', 'dropout', 'norm_groups', 'norm_eps', 'time_embed_dim',
                      'time_mlp_dim', 'num_classes', 'upsample')
_SCORE_UNET_FIELDS = ('ch', 'ch_mult', 'num_res_blocks', 'attn_resolutions', 'num_heads', 'dropout', 'norm_groups',
                      'norm_eps', 'time_embed_dim', 'time_mlp_dim', 'num_classes', 'skip_rescale')
_EVERY_NETWORK_FIELDS = ('remat',)  # Read by every network (layers.rematerialised).
MODEL_FIELDS: dict[str, tuple[str, ...]] = {name: fields + _EVERY_NETWORK_FIELDS for name, fields in {
    'unet_simple': ('widths', 'time_embed_dim', 'batch_norm_momentum', 'num_classes'),
    'unet_conv': _LEVEL_UNET_FIELDS,
    'unet_resnet': _LEVEL_UNET_FIELDS + ('attn_resolutions', 'num_heads'),
    'ddpm': _LEVEL_UNET_FIELDS + ('attn_resolutions', 'num_heads'),  # upsample: checked to be nearest.
    'ncsnpp': _SCORE_UNET_FIELDS + ('embedding_type', 'fourier_scale', 'fir', 'fir_kernel', 'progressive',
                                    'progressive_input'),
    'ddpmpp': _SCORE_UNET_FIELDS,
}.items()}

# name -> (builder(config) -> module, check(config) raising ValueError on impossible settings).
# The first is listed first in error messages.
MODELS: dict[str, tuple[Callable, Callable]] = {
    'unet_simple': (_unet_simple, _check_unet_simple),
    'unet_conv': (_unet_conv, _check_unet_conv),
    'unet_resnet': (_unet_resnet, _check_unet_resnet),
    'ddpm': (_ddpm, _check_ddpm),
    'ncsnpp': (_ncsnpp, _check_ncsnpp),
    'ddpmpp': (_ddpmpp, _check_ddpmpp),
}


def check_model_config(config) -> None:
  """Raises ValueError naming the problem when the network cannot be built from config."""
  if config.model.name not in MODELS:
    raise ValueError(f'Unknown model {config.model.name!r} (config.model.name); '
                     f'valid: {", ".join(MODELS)}.')
  if config.model.num_classes < 0:
    raise ValueError(f'config.model.num_classes must be >= 0 (0 = unconditional), got {config.model.num_classes}.')
  _check_time_embed_dim(config)
  MODELS[config.model.name][1](config)


def get_model(config) -> nn.Module:
  check_model_config(config)
  return MODELS[config.model.name][0](config)


def init_variables(model: nn.Module, config, key: jax.Array) -> dict:
  """Initial variables ({'params': ..., maybe 'batch_stats': ...}) for a one-image dummy batch.

  Compiled: initialising op by op takes seconds to minutes on the CPU.
  """
  shape = (1, config.data.image_size, config.data.image_size, config.data.num_channels)
  labels = jnp.zeros((1,), jnp.int32) if config.model.num_classes else None
  return jax.jit(lambda key: model.init(key, jnp.zeros(shape, jnp.float32), jnp.zeros((1,), jnp.int32),
                                        train=False, labels=labels))(key)
