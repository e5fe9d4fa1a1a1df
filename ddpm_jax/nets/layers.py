"""Blocks shared by the networks, and the UNet skeleton of DDPM that three of them share."""

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
  """Sinusoidal embedding of integer timesteps, (batch,) -> (batch, dim), as in DDPM.

  The first half holds sines, the second cosines, of t at geometrically spaced frequencies.
  """
  if dim % 2:
    raise ValueError(f'timestep embedding size must be even, got {dim}.')
  half = dim // 2
  scale = math.log(max_period) / (half - 1)
  freqs = jnp.exp(jnp.arange(half, dtype=jnp.float32) * -scale)
  angles = t.astype(jnp.float32)[:, None] * freqs[None, :]
  return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=1)


NHWC = ('NHWC', 'HWIO', 'NHWC')
# Nearest-neighbour 2x upsampling then a 3x3 'SAME' convolution, by output phase: output pixel
# (2i + a, 2j + b) reads input rows i - 1 + a and i + a (and columns likewise), and the kernel taps
# that land on the same input pixel add up. PHASE_FOLD[a][p, i]: tap i of the 3x3 kernel folds
# into tap p of parity a's 2x2 kernel.
PHASE_FOLD = np.array([[[1, 0, 0], [0, 1, 1]], [[1, 1, 0], [0, 0, 1]]], np.float32)
PHASE_PADDING = ((1, 0), (0, 1))  # Per parity: input padding before and after for the 2-tap window.


def upsampled_conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides, padding, lhs_dilation=None,
                                   rhs_dilation=None, dimension_numbers=None, feature_group_count: int = 1,
                                   precision=None, preferred_element_type=None) -> jax.Array:
  """`lax.conv_general_dilated` of lhs upsampled 2x by nearest neighbour; for nn.Conv's
  conv_general_dilated field (a 3x3 kernel, stride 1, 'SAME' padding, NHWC / HWIO only).

  The same function as convolving the upsampled map, computed on lhs itself as four 2x2
  convolutions, one per output phase: 2.25x fewer FLOPs and no upsampled copy, faster
  forward + backward on XLA:CPU (benchmarks/README.md). Folded taps add in float32.
  """
  pads = padding if isinstance(padding, str) else tuple(tuple(p) for p in padding)
  plain = (rhs.shape[:2] == (3, 3) and tuple(window_strides) == (1, 1) and pads in ('SAME', ((1, 1), (1, 1))) and
           all(d == 1 for d in (*(lhs_dilation or ()), *(rhs_dilation or ()))) and feature_group_count == 1 and
           lhs.ndim == 4 and jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) ==
           jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, NHWC))
  if not plain:
    raise ValueError('upsampled_conv_general_dilated computes 3x3, stride-1, SAME-padded NHWC convolutions only; '
                     f'got kernel {rhs.shape}, strides {window_strides}, padding {padding}.')
  kernel = rhs.astype(jnp.promote_types(rhs.dtype, jnp.float32))
  kernels = jnp.einsum('api,bqj,ijco->abpqco', PHASE_FOLD, PHASE_FOLD, kernel,
                       precision=jax.lax.Precision.HIGHEST).astype(rhs.dtype)  # Exact sums, even on TF32 GPUs.
  phases = [[jax.lax.conv_general_dilated(
      lhs, kernels[a, b], (1, 1), (PHASE_PADDING[a], PHASE_PADDING[b]), dimension_numbers=NHWC,
      precision=precision, preferred_element_type=preferred_element_type) for b in range(2)] for a in range(2)]
  out = jnp.stack([jnp.stack(row, axis=3) for row in phases], axis=2)  # (batch, H, 2, W, 2, C)
  batch, height, _, width, _, channels = out.shape
  return out.reshape(batch, 2 * height, 2 * width, channels)


def upsample_conv3x3(features: int, name: str | None = None, use_bias: bool = True,
                     kernel_init=nn.initializers.lecun_normal()) -> nn.Conv:
  """Nearest-neighbour 2x upsampling then a 3x3 'SAME' conv, as one nn.Conv applied to the small
  map (its params are those of the conv on the upsampled map)."""
  return nn.Conv(features, (3, 3), padding='SAME', use_bias=use_bias, kernel_init=kernel_init, name=name,
                 conv_general_dilated=upsampled_conv_general_dilated)


def conv_of_upsampled(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """The 3x3 'SAME' convolution of x upsampled 2x by repeating pixels, formed as defined: what
  upsampled_conv_general_dilated computes in 2.25x fewer FLOPs. The reference of the tests, of
  benchmarks/layer_ops.py, and of the model FLOPs that benchmarks/throughput.py counts."""
  upsampled = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
  return jax.lax.conv_general_dilated(upsampled, kernel, (1, 1), 'SAME', dimension_numbers=NHWC)


@jax.custom_vjp
def _max_pool_2x2_even(x: jax.Array) -> jax.Array:
  batch, height, width, channels = x.shape
  return x.reshape(batch, height // 2, 2, width // 2, 2, channels).max(axis=(2, 4))


def _max_pool_2x2_forward(x: jax.Array):
  y = _max_pool_2x2_even(x)
  return y, (x, y)


def _max_pool_2x2_backward(residuals, g: jax.Array):
  """The gradient goes to the first maximum of each window (row-major), as XLA's select-and-scatter."""
  x, y = residuals
  windows = x.reshape(x.shape[0], y.shape[1], 2, y.shape[2], 2, x.shape[-1])
  taken = jnp.zeros(y.shape, bool)
  rows = []
  for i in range(2):
    row = []
    for j in range(2):
      first = (windows[:, :, i, :, j, :] == y) & ~taken
      taken = taken | first
      row.append(jnp.where(first, g, jnp.zeros_like(g)))
    rows.append(jnp.stack(row, axis=3))
  return (jnp.stack(rows, axis=2).reshape(x.shape),)


_max_pool_2x2_even.defvjp(_max_pool_2x2_forward, _max_pool_2x2_backward)


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """nn.max_pool(x, (2, 2), strides=(2, 2), padding='SAME') of an NHWC map, its gradient taken
  elementwise from the window maxima: far faster forward + backward on XLA:CPU than the
  reduce-window gradient, which builds index maps of the whole input (benchmarks/README.md)."""
  pad_h, pad_w = x.shape[1] % 2, x.shape[2] % 2
  if pad_h or pad_w:  # 'SAME' pads odd sides at the end.
    x = jnp.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), constant_values=-jnp.inf)
  return _max_pool_2x2_even(x)


class Dropout(nn.Module):
  """Inverted dropout, as flax.linen.Dropout: each unit kept with probability 1 - rate and scaled by
  1 / (1 - rate). The mask is XLA's ThreeFry bit generator seeded from the 'dropout' key: 3-4x
  faster on XLA:CPU than the rbg key's default generator (benchmarks/README.md), and the same
  masks on every backend. Keep probabilities resolve to 2^-32."""
  rate: float

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
    if not 0 <= self.rate < 1:
      raise ValueError(f'Dropout rate must be in [0, 1), got {self.rate}.')
    if deterministic or self.rate == 0:
      return x
    keep = 1.0 - self.rate
    seed = jax.random.bits(self.make_rng('dropout'), (4,), jnp.uint32)
    _, bits = jax.lax.rng_bit_generator(seed, x.shape, jnp.uint32, algorithm=jax.lax.RandomAlgorithm.RNG_THREE_FRY)
    kept = bits < jnp.uint32(min(round(keep * 2**32), 2**32 - 1))
    return jnp.where(kept, x / keep, jnp.zeros_like(x))


def rematerialised(module_class: type[nn.Module], remat: bool, static_argnums: tuple[int, ...] = ()) -> type[nn.Module]:
  """module_class, or with `remat` its nn.remat: the same parameters, outputs and gradients, but its
  activations are recomputed in the backward pass instead of kept from the forward one (lower peak
  memory for more compute; config.model.remat). static_argnums count `self` as 0 (Python flags such
  as `train`). Name the instances explicitly: nn.remat's class has another name, so automatic names
  (and the parameter paths) would change."""
  return nn.remat(module_class, static_argnums=static_argnums) if remat else module_class


# ---------------------------------------------------------------------------
# Blocks of the level-structured UNets (Unet-Conv, Unet-Resnet, the official DDPM UNet).

# DDPM's initialiser for every kernel (TF variance_scaling(1, fan_avg, uniform)); biases start at 0.
default_init = nn.initializers.variance_scaling(1.0, 'fan_avg', 'uniform')
zero_init = nn.initializers.zeros
DOWNSAMPLE_METHODS = ('conv', 'maxpool')
UPSAMPLE_METHODS = ('nearest', 'transpose')


def conv3x3(features: int, name: str, strides: int = 1, kernel_init=default_init) -> nn.Conv:
  """3x3 convolution with TF 'SAME' padding (for stride 2 on an even side: pad 0 before, 1 after)."""
  return nn.Conv(features, (3, 3), strides=(strides, strides), padding='SAME',
                 kernel_init=kernel_init, name=name)


class GroupNorm(nn.Module):
  """GroupNorm of an NHWC map, with flax.linen.GroupNorm's parameters ('scale', 'bias') and maths.

  The variance is two-pass, which matches PyTorch's to float32 rounding; statistics are float32
  whatever the input dtype. Sums run per channel over the positions first, then over each group's
  channels: XLA:CPU reduces that layout faster than Flax's (batch, H, W, groups, size) one
  (benchmarks/README.md).
  """
  num_groups: int
  epsilon: float

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    batch, channels = x.shape[0], x.shape[-1]
    if channels % self.num_groups:
      raise ValueError(f'GroupNorm: {self.num_groups} groups do not divide {channels} channels '
                       f'(config.model.norm_groups).')
    scale = self.param('scale', nn.initializers.ones, (channels,))
    bias = self.param('bias', nn.initializers.zeros, (channels,))
    size = channels // self.num_groups
    flat = x.reshape(batch, -1, channels).astype(jnp.float32)
    count = flat.shape[1] * size

    def group_mean(per_position: jax.Array) -> jax.Array:  # (batch, positions, C) -> (batch, 1, C)
      per_group = jnp.sum(per_position, axis=1).reshape(batch, self.num_groups, size).sum(-1) / count
      return jnp.repeat(per_group, size, axis=1)[:, None, :]

    centred = flat - group_mean(flat)
    normalised = centred * jax.lax.rsqrt(group_mean(jnp.square(centred)) + self.epsilon)
    dtype = jnp.result_type(x, scale)
    return (normalised.astype(dtype) * scale + bias).reshape(x.shape)


def group_norm(groups: int, eps: float, name: str) -> GroupNorm:
  """The networks' GroupNorm (layers.GroupNorm)."""
  return GroupNorm(num_groups=groups, epsilon=eps, name=name)


def add_timestep(h: jax.Array, temb: jax.Array) -> jax.Array:
  """h + dense(swish(temb)) over channels, the same at every position: how each block sees t.

  Call inside a compact module; the dense layer is its 'temb_proj'.
  """
  projection = nn.Dense(h.shape[-1], kernel_init=default_init, name='temb_proj')(nn.swish(temb))
  return h + projection[:, None, None, :]


def add_class_embedding(temb: jax.Array, labels: jax.Array | None, num_classes: int) -> jax.Array:
  """temb + a learned embedding of the class labels; unconditional networks (num_classes 0) pass
  temb through and own no parameters for it.

  Label num_classes is the "null" class: the unconditional model of classifier-free guidance,
  learned from dropped labels. Call inside a compact module; the table is its 'class_embed'.
  """
  if not num_classes:
    return temb
  if labels is None:
    raise ValueError(f'This network is class-conditional ({num_classes} classes): pass labels, '
                     f'or the null label {num_classes} for the unconditional model.')
  # Unit-variance rows, as PyTorch's nn.Embedding (guided-diffusion, diffusers) starts them: Flax's
  # default (std 1 / sqrt(features)) starts the class an order of magnitude below the time
  # embedding it is added to, and Adam's bounded steps leave it there.
  table = nn.Embed(num_classes + 1, temb.shape[-1], embedding_init=nn.initializers.normal(1.0), name='class_embed')
  return temb + table(labels)


class TimestepMLP(nn.Module):
  """Sinusoidal embedding of t (embed_dim) -> dense -> swish -> dense: (batch,) -> (batch, mlp_dim)."""
  embed_dim: int
  mlp_dim: int

  @nn.compact
  def __call__(self, t: jax.Array) -> jax.Array:
    h = timestep_embedding(t, self.embed_dim)
    h = nn.Dense(self.mlp_dim, kernel_init=default_init, name='dense_0')(h)
    return nn.Dense(self.mlp_dim, kernel_init=default_init, name='dense_1')(nn.swish(h))


class ResnetBlock(nn.Module):
  """DDPM's ResNet block: [GN, swish, conv, + dense(swish(temb)), GN, swish, dropout, conv] + shortcut.

  The last conv starts at zero, so a fresh block is the identity (up to the 1x1 shortcut
  that matches channels when they change).
  """
  features: int
  dropout: float
  norm_groups: int
  norm_eps: float

  @nn.compact
  def __call__(self, x: jax.Array, temb: jax.Array, train: bool) -> jax.Array:
    h = conv3x3(self.features, 'conv_0')(nn.swish(group_norm(self.norm_groups, self.norm_eps, 'norm_0')(x)))
    h = add_timestep(h, temb)
    h = nn.swish(group_norm(self.norm_groups, self.norm_eps, 'norm_1')(h))
    h = Dropout(self.dropout)(h, deterministic=not train)
    h = conv3x3(self.features, 'conv_1', kernel_init=zero_init)(h)
    if x.shape[-1] != self.features:
      x = nn.Conv(self.features, (1, 1), kernel_init=default_init, name='shortcut')(x)
    return x + h


class SelfAttention(nn.Module):
  """Self-attention over the H*W positions of an NHWC map, with GN before and a residual around.

  q, k, v and the output projection are dense layers over channels (1x1 convs); the output
  projection starts at zero. num_heads=1 is DDPM's single head (scale C**-0.5).
  """
  num_heads: int
  norm_groups: int
  norm_eps: float

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, height, width, c = x.shape
    if c % self.num_heads:
      raise ValueError(f'attention: {c} channels do not split into {self.num_heads} heads '
                       f'(config.model.num_heads).')
    head_dim = c // self.num_heads
    h = group_norm(self.norm_groups, self.norm_eps, 'norm')(x)

    def project(name):
      y = nn.Dense(c, kernel_init=default_init, name=name)(h)
      return y.reshape(b, height * width, self.num_heads, head_dim)

    q, k, v = project('q'), project('k'), project('v')
    weights = jnp.einsum('bqhd,bkhd->bhqk', q, k) * head_dim ** -0.5
    weights = jax.nn.softmax(weights, axis=-1)
    out = jnp.einsum('bhqk,bkhd->bqhd', weights, v).reshape(b, height, width, c)
    return x + nn.Dense(c, kernel_init=zero_init, name='proj_out')(out)


class Downsample(nn.Module):
  """Halves H and W: 'conv' (3x3 stride-2 conv, TF 'SAME' padding, as DDPM) or 'maxpool' (2x2)."""
  method: str

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.method == 'conv':
      return conv3x3(x.shape[-1], 'conv', strides=2)(x)
    if self.method == 'maxpool':
      return max_pool_2x2(x)
    raise ValueError(f'Unknown downsampling {self.method!r}; valid: {", ".join(DOWNSAMPLE_METHODS)}.')


class Upsample(nn.Module):
  """Doubles H and W: 'nearest' (nearest neighbour, then a 3x3 conv, as DDPM) or 'transpose'
  (a 2x2 stride-2 transposed conv)."""
  method: str

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    if self.method == 'nearest':
      return upsample_conv3x3(c, 'conv', kernel_init=default_init)(x)
    if self.method == 'transpose':
      return nn.ConvTranspose(c, (2, 2), strides=(2, 2), padding='VALID', kernel_init=default_init,
                              name='conv')(x)
    raise ValueError(f'Unknown upsampling {self.method!r} (config.model.upsample); '
                     f'valid: {", ".join(UPSAMPLE_METHODS)}.')


class LevelUNet(nn.Module):
  """The UNet skeleton of DDPM, shared by Unet-Conv, Unet-Resnet and the official DDPM UNet.

  conv_in; per level (width ch * ch_mult[level], side halving between levels) num_res_blocks
  blocks, each followed by self-attention where the side is in attn_resolutions, every output
  kept as a skip; a middle (block, [attention], block); the mirror path with num_res_blocks + 1
  blocks per level, each on [h, skip] concatenated; GN, swish and a zero-initialised conv_out.
  `block` is the block class, built as block(features=, dropout=, norm_groups=, norm_eps=) and
  called as block(x, temb, train) (layers.ResnetBlock, unet_conv.ConvBlock).
  Parameter names follow the levels (down_1_attn_0, up_2_upsample, ...) so converters can map them.
  With `remat` every block and attention layer is rematerialised (layers.rematerialised).
  """
  # Defaults: the official DDPM CIFAR-10 network (35,746,307 params on 32x32x3).
  block: Any = ResnetBlock
  ch: int = 128
  ch_mult: Sequence[int] = (1, 2, 2, 2)
  num_res_blocks: int = 2
  attn_resolutions: Sequence[int] = (16,)
  mid_attention: bool = True
  num_heads: int = 1
  dropout: float = 0.1
  norm_groups: int = 32
  norm_eps: float = 1e-6
  time_embed_dim: int = 128
  time_mlp_dim: int = 512
  downsample: str = 'conv'
  upsample: str = 'nearest'
  out_channels: int = 3
  # Class-conditional with this many classes (plus a null class); 0 = unconditional.
  num_classes: int = 0
  # Recompute each block's activations in the backward pass (config.model.remat).
  remat: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array, train: bool = False, labels: jax.Array | None = None) -> jax.Array:
    temb = TimestepMLP(embed_dim=self.time_embed_dim, mlp_dim=self.time_mlp_dim, name='temb')(t)
    temb = add_class_embedding(temb, labels, self.num_classes)
    block_class = rematerialised(self.block, self.remat, static_argnums=(3,))  # (self, x, temb, train)
    attention_class = rematerialised(SelfAttention, self.remat)
    block = lambda features, name: block_class(
        features=features, dropout=self.dropout, norm_groups=self.norm_groups, norm_eps=self.norm_eps, name=name)
    attention = lambda name: attention_class(num_heads=self.num_heads, norm_groups=self.norm_groups,
                                             norm_eps=self.norm_eps, name=name)
    last = len(self.ch_mult) - 1

    h = conv3x3(self.ch, 'conv_in')(x)
    skips = [h]
    for level, mult in enumerate(self.ch_mult):
      for i in range(self.num_res_blocks):
        h = block(self.ch * mult, f'down_{level}_block_{i}')(h, temb, train)
        if h.shape[1] in self.attn_resolutions:
          h = attention(f'down_{level}_attn_{i}')(h)
        skips.append(h)
      if level != last:
        h = Downsample(method=self.downsample, name=f'down_{level}_downsample')(h)
        skips.append(h)

    h = block(h.shape[-1], 'mid_block_0')(h, temb, train)
    if self.mid_attention:
      h = attention('mid_attn')(h)
    h = block(h.shape[-1], 'mid_block_1')(h, temb, train)

    for level in reversed(range(len(self.ch_mult))):
      for i in range(self.num_res_blocks + 1):
        h = jnp.concatenate([h, skips.pop()], axis=-1)
        h = block(self.ch * self.ch_mult[level], f'up_{level}_block_{i}')(h, temb, train)
        if h.shape[1] in self.attn_resolutions:
          h = attention(f'up_{level}_attn_{i}')(h)
      if level != 0:
        h = Upsample(method=self.upsample, name=f'up_{level}_upsample')(h)

    h = nn.swish(group_norm(self.norm_groups, self.norm_eps, 'norm_out')(h))
    return conv3x3(self.out_channels, 'conv_out', kernel_init=zero_init)(h)

