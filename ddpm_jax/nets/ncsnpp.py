"""NCSN++ and DDPM++, the networks of score-based generative modelling (Song et al., ICLR 2021;
score_sde's models/ncsnpp.py, layerspp.py and up_or_down_sampling.py).

One skeleton, a DDPM-style UNet of BigGAN residual blocks that resample inside the block (the
level change is a block with up=True / down=True, not a separate layer), with options:
  fir               FIR (anti-aliased, StyleGAN2) resampling with fir_kernel, instead of nearest
                    neighbour up and 2x2 mean down;
  skip_rescale      residual sums (blocks, attention, pyramids) divided by sqrt(2);
  progressive_input the input image rides down a pyramid beside the features: 'input_skip'
                    (FIR-downsampled image, 1x1 conv, summed in) or 'residual' (a strided conv of
                    the previous pyramid level, averaged with the features);
  progressive       'output_skip': every up level adds a 3x3 conv of its features to an image
                    pyramid that is upsampled to the output (the output is that pyramid);
  embedding_type    'fourier' (Gaussian Fourier features of the time input, meant for log sigma
                    of the VE SDE) or 'positional' (DDPM's sinusoids of the time input, 999 t of VP).
NCSN++ (registry name ncsnpp) is the skeleton with all of these as configured; DDPM++ (ddpmpp) is the
same skeleton with positional embeddings, no FIR and no progressive paths (score_sde's
vp/cifar10_ddpmpp_continuous). GroupNorm everywhere has min(channels // 4, norm_groups) groups
(score_sde: norm_groups 32); attention is a single head by default, after every block at
attn_resolutions on the way down, once per level on the way up, and in the middle.

Output convention: like every network here, the output is the predicted noise eps of x_t, so
sde.score_fn_from_model gives the score -eps / std(t). score_sde's VE NCSN++ (scale_by_sigma) and
diffusers' Fourier UNet2DModel return the score itself, their last feature map h divided by sigma:
score = h / sigma, so h = -eps. A converted diffusers NCSN++ is therefore the same network with
its output convolutions negated (tools/convert_diffusers does that). score_sde's VP DDPM++ returns
-std * score = eps directly.

Parameter names follow layers.LevelUNet's (down_1_block_0, up_2_attn_0, mid_attn, ...) plus
down_L_resnet_down / up_L_resnet_up (the resampling blocks), down_L_skip_conv (input_skip),
down_L_pyramid (residual input pyramid), up_L_skip_norm / up_L_skip_conv (output_skip) and
fourier (the Fourier features), which tools/convert_diffusers maps to diffusers' names.
"""

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ddpm_jax.nets import layers

EMBEDDING_TYPES = ('fourier', 'positional')
PROGRESSIVE = ('none', 'output_skip')
PROGRESSIVE_INPUT = ('none', 'input_skip', 'residual')
# Channels per GroupNorm group at least (score_sde: min(channels // 4, 32) groups).
MIN_GROUP_SIZE = 4


# ---------------------------------------------------------------------------
# FIR resampling (StyleGAN2's upfirdn2d), as pure functions of NHWC maps.

def fir_kernel_2d(taps: Sequence[float]) -> np.ndarray:
  """The separable 2D FIR filter of 1D taps, outer(taps, taps) normalised to sum 1."""
  k = np.asarray(taps, np.float64)
  if k.ndim != 1 or k.size < 1 or not np.all(np.isfinite(k)) or k.sum() == 0:
    raise ValueError(f'FIR taps must be a non-empty 1D sequence of finite numbers with a non-zero sum, got {taps!r}.')
  k2 = np.outer(k, k)
  return (k2 / k2.sum()).astype(np.float32)


def upfirdn_2d(x: jax.Array, kernel: np.ndarray, up: int = 1, down: int = 1,
               pad: tuple[int, int] = (0, 0)) -> jax.Array:
  """Per channel: insert up - 1 zeros after every pixel, pad (before, after) zeros on both axes,
  convolve with `kernel` (a true convolution, kernel flipped) keeping the valid part, and keep
  every down-th pixel (scipy.signal.upfirdn in 2D). One depthwise convolution."""
  channels = x.shape[-1]
  flipped = np.ascontiguousarray(np.asarray(kernel, np.float32)[::-1, ::-1])
  weights = jnp.asarray(np.tile(flipped[:, :, None, None], (1, 1, 1, channels)), x.dtype)
  before, after = pad
  padding = [(before, after + up - 1)] * 2  # lhs_dilation puts no zeros after the last pixel.
  return jax.lax.conv_general_dilated(x, weights, (down, down), padding, lhs_dilation=(up, up),
                                      dimension_numbers=layers.NHWC, feature_group_count=channels)


def fir_upsample_2d(x: jax.Array, taps: Sequence[float], factor: int = 2) -> jax.Array:
  """Upsamples H and W by `factor` with the FIR filter of taps (gain factor**2 keeps a constant map)."""
  kernel = fir_kernel_2d(taps) * factor ** 2
  p = kernel.shape[0] - factor
  return upfirdn_2d(x, kernel, up=factor, pad=((p + 1) // 2 + factor - 1, p // 2))


def fir_downsample_2d(x: jax.Array, taps: Sequence[float], factor: int = 2) -> jax.Array:
  """Downsamples H and W by `factor` after filtering with the FIR filter of taps."""
  kernel = fir_kernel_2d(taps)
  p = kernel.shape[0] - factor
  return upfirdn_2d(x, kernel, down=factor, pad=((p + 1) // 2, p // 2))


def naive_upsample_2d(x: jax.Array) -> jax.Array:
  """2x nearest-neighbour upsampling (each pixel repeated 2x2)."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def naive_downsample_2d(x: jax.Array) -> jax.Array:
  """2x downsampling by the mean of each 2x2 window (even sides)."""
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def upsample_2d(x: jax.Array, fir: bool, taps: Sequence[float]) -> jax.Array:
  return fir_upsample_2d(x, taps) if fir else naive_upsample_2d(x)


def downsample_2d(x: jax.Array, fir: bool, taps: Sequence[float]) -> jax.Array:
  return fir_downsample_2d(x, taps) if fir else naive_downsample_2d(x)


def num_groups(channels: int, cap: int) -> int:
  """GroupNorm groups of a map with `channels` channels: min(channels // 4, cap), at least 1."""
  return max(1, min(channels // MIN_GROUP_SIZE, cap))


def norm_widths(ch: int, ch_mult: Sequence[int], num_res_blocks: int) -> set[int]:
  """Every channel count a GroupNorm of the skeleton sees (level widths and the up path's
  concatenations of features and skips), for the registry's divisibility check."""
  widths = [ch * m for m in ch_mult]
  skips = [ch] + [w for level, w in enumerate(widths) for _ in range(num_res_blocks + (level < len(widths) - 1))]
  seen, h = set(widths) | {ch}, widths[-1]
  for level in reversed(range(len(widths))):
    for _ in range(num_res_blocks + 1):
      seen.add(h + skips.pop())
      h = widths[level]
  return seen


# ---------------------------------------------------------------------------
# Blocks.

class GaussianFourierFeatures(nn.Module):
  """[sin(2 pi W t), cos(2 pi W t)] of a (batch,) time input, W ~ N(0, scale^2) of `size` fixed
  frequencies: (batch,) -> (batch, 2 size). W is a parameter (it is saved and converted) that no
  gradient moves (stop_gradient), as in score_sde."""
  size: int
  scale: float

  @nn.compact
  def __call__(self, t: jax.Array) -> jax.Array:
    w = jax.lax.stop_gradient(self.param('W', nn.initializers.normal(stddev=self.scale), (self.size,)))
    angles = t.astype(jnp.float32)[:, None] * w[None, :] * (2 * math.pi)
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


class EmbeddingMLP(nn.Module):
  """dense -> swish -> dense of the time features (the blocks apply swish again before their own
  projection, layers.add_timestep)."""
  features: int

  @nn.compact
  def __call__(self, h: jax.Array) -> jax.Array:
    h = nn.Dense(self.features, kernel_init=layers.default_init, name='dense_0')(h)
    return nn.Dense(self.features, kernel_init=layers.default_init, name='dense_1')(nn.swish(h))


class BigGANResnetBlock(nn.Module):
  """score_sde's ResnetBlockBigGANpp: GN, swish, [resample], conv, + dense(swish(temb)), GN, swish,
  dropout, conv; the input resampled alike and through a 1x1 conv when channels change or it
  resamples; the sum divided by sqrt(2) with skip_rescale. The last conv starts at zero."""
  features: int
  dropout: float
  norm_groups: int
  norm_eps: float
  up: bool = False
  down: bool = False
  fir: bool = False
  fir_kernel: Sequence[float] = (1, 3, 3, 1)
  skip_rescale: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, temb: jax.Array, train: bool) -> jax.Array:
    norm = lambda c, name: layers.group_norm(num_groups(c, self.norm_groups), self.norm_eps, name)
    h = nn.swish(norm(x.shape[-1], 'norm_0')(x))
    if self.up:
      h, x = upsample_2d(h, self.fir, self.fir_kernel), upsample_2d(x, self.fir, self.fir_kernel)
    elif self.down:
      h, x = downsample_2d(h, self.fir, self.fir_kernel), downsample_2d(x, self.fir, self.fir_kernel)
    h = layers.conv3x3(self.features, 'conv_0')(h)
    h = layers.add_timestep(h, temb)
    h = nn.swish(norm(self.features, 'norm_1')(h))
    h = layers.Dropout(self.dropout)(h, deterministic=not train)
    h = layers.conv3x3(self.features, 'conv_1', kernel_init=layers.zero_init)(h)
    if x.shape[-1] != self.features or self.up or self.down:
      x = nn.Conv(self.features, (1, 1), kernel_init=layers.default_init, name='shortcut')(x)
    return (x + h) / math.sqrt(2.0) if self.skip_rescale else x + h


class NCSNpp(nn.Module):
  """Predicts the noise in x_t: (batch, H, W, C), (batch,) time input -> (batch, H, W, out_channels).

  The time input is what sde.model_time gives: log sigma(t) for VE (Fourier features), the
  discrete step (num_scales - 1) t for VP / sub-VP (sinusoids). Defaults: score_sde's CIFAR-10
  NCSN++ cont. (VE).
  """
  ch: int = 128
  ch_mult: Sequence[int] = (1, 2, 2, 2)
  num_res_blocks: int = 4
  attn_resolutions: Sequence[int] = (16,)
  num_heads: int = 1
  dropout: float = 0.1
  norm_groups: int = 32
  norm_eps: float = 1e-6
  time_embed_dim: int = 128
  time_mlp_dim: int = 512
  out_channels: int = 3
  num_classes: int = 0
  embedding_type: str = 'fourier'
  fourier_scale: float = 16.0
  fir: bool = True
  fir_kernel: Sequence[float] = (1, 3, 3, 1)
  skip_rescale: bool = True
  progressive: str = 'none'
  progressive_input: str = 'residual'
  remat: bool = False

  def _rescale(self, a: jax.Array, b: jax.Array) -> jax.Array:
    return (a + b) / math.sqrt(2.0) if self.skip_rescale else a + b

  def _norm(self, channels: int, name: str) -> layers.GroupNorm:
    return layers.group_norm(num_groups(channels, self.norm_groups), self.norm_eps, name)

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array, train: bool = False, labels: jax.Array | None = None) -> jax.Array:
    if self.embedding_type not in EMBEDDING_TYPES:
      raise ValueError(f'Unknown embedding type {self.embedding_type!r}; valid: {", ".join(EMBEDDING_TYPES)}.')
    if self.progressive not in PROGRESSIVE or self.progressive_input not in PROGRESSIVE_INPUT:
      raise ValueError(f'progressive={self.progressive!r} must be one of {PROGRESSIVE} and progressive_input='
                       f'{self.progressive_input!r} one of {PROGRESSIVE_INPUT}.')
    if self.embedding_type == 'fourier':
      features = GaussianFourierFeatures(self.time_embed_dim, self.fourier_scale, name='fourier')(t)
    else:
      features = layers.timestep_embedding(t, self.time_embed_dim)
    temb = EmbeddingMLP(self.time_mlp_dim, name='temb')(features)
    temb = layers.add_class_embedding(temb, labels, self.num_classes)

    block_class = layers.rematerialised(BigGANResnetBlock, self.remat, static_argnums=(3,))  # (self, x, temb, train)
    attention_class = layers.rematerialised(layers.SelfAttention, self.remat)

    def block(h, features, name, up=False, down=False):
      return block_class(features=features, dropout=self.dropout, norm_groups=self.norm_groups,
                         norm_eps=self.norm_eps, up=up, down=down, fir=self.fir, fir_kernel=tuple(self.fir_kernel),
                         skip_rescale=self.skip_rescale, name=name)(h, temb, train)

    def attention(h, name):  # score_sde's AttnBlockpp: x + attn(x), divided by sqrt(2) with skip_rescale.
      out = attention_class(num_heads=self.num_heads, norm_groups=num_groups(h.shape[-1], self.norm_groups),
                            norm_eps=self.norm_eps, name=name)(h)
      return out / math.sqrt(2.0) if self.skip_rescale else out

    last = len(self.ch_mult) - 1
    pyramid = x
    h = layers.conv3x3(self.ch, 'conv_in')(x)
    skips = [h]
    for level, mult in enumerate(self.ch_mult):
      for i in range(self.num_res_blocks):
        h = block(h, self.ch * mult, f'down_{level}_block_{i}')
        if h.shape[1] in self.attn_resolutions:
          h = attention(h, f'down_{level}_attn_{i}')
        skips.append(h)
      if level == last:
        break
      h = block(h, h.shape[-1], f'down_{level}_resnet_down', down=True)
      if self.progressive_input == 'input_skip':
        pyramid = downsample_2d(pyramid, self.fir, self.fir_kernel)
        h = h + nn.Conv(h.shape[-1], (1, 1), kernel_init=layers.default_init, name=f'down_{level}_skip_conv')(pyramid)
      elif self.progressive_input == 'residual':
        pyramid = self._rescale(self._pyramid_down(pyramid, h.shape[-1], f'down_{level}_pyramid'), h)
        h = pyramid
      skips.append(h)

    h = block(h, h.shape[-1], 'mid_block_0')
    h = attention(h, 'mid_attn')
    h = block(h, h.shape[-1], 'mid_block_1')

    out = None
    for level in reversed(range(len(self.ch_mult))):
      for i in range(self.num_res_blocks + 1):
        h = block(jnp.concatenate([h, skips.pop()], axis=-1), self.ch * self.ch_mult[level], f'up_{level}_block_{i}')
      if h.shape[1] in self.attn_resolutions:
        h = attention(h, f'up_{level}_attn_0')
      if self.progressive == 'output_skip':
        names = ('norm_out', 'conv_out') if level == 0 else (f'up_{level}_skip_norm', f'up_{level}_skip_conv')
        contribution = self._to_image(h, *names)
        out = contribution if out is None else upsample_2d(out, self.fir, self.fir_kernel) + contribution
      if level != 0:
        h = block(h, h.shape[-1], f'up_{level}_resnet_up', up=True)
    assert not skips

    if self.progressive == 'output_skip':
      return out
    return self._to_image(h, 'norm_out', 'conv_out')

  def _to_image(self, h: jax.Array, norm_name: str, conv_name: str) -> jax.Array:
    """conv3x3(swish(GN(h))) to the output channels, starting at zero (score_sde's init_scale 0)."""
    h = nn.swish(self._norm(h.shape[-1], norm_name)(h))
    return layers.conv3x3(self.out_channels, conv_name, kernel_init=layers.zero_init)(h)

  def _pyramid_down(self, pyramid: jax.Array, features: int, name: str) -> jax.Array:
    """The residual input pyramid's next level: FIR-filtered then a 3x3 stride-2 conv (score_sde's
    conv_downsample_2d; padding once, before the filter), or without FIR a 3x3 stride-2 'SAME' conv."""
    if not self.fir:
      return layers.conv3x3(features, name, strides=2)(pyramid)
    taps = len(self.fir_kernel)
    p = (taps - 2) + (3 - 1)
    blurred = upfirdn_2d(pyramid, fir_kernel_2d(self.fir_kernel), pad=((p + 1) // 2, p // 2))
    return nn.Conv(features, (3, 3), strides=(2, 2), padding='VALID', kernel_init=layers.default_init,
                   name=name)(blurred)
