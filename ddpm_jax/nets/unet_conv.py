"""The report's Unet-Conv: Unet-Resnet with plain group-normalised conv blocks.

Each block is conv -> GN -> (+ timestep) -> swish -> dropout -> conv -> GN -> swish,
with no residual connection and no attention anywhere; max-pool downsampling,
nearest + conv (or transposed-conv) upsampling and concatenated skips as in
`layers.LevelUNet`.
"""

from typing import Any

import flax.linen as nn
import jax

from ddpm_jax.nets import layers


class ConvBlock(nn.Module):
  """Two 3x3 convs, each followed by GroupNorm and swish; the timestep enters after the first norm."""
  features: int
  dropout: float
  norm_groups: int
  norm_eps: float

  @nn.compact
  def __call__(self, x: jax.Array, temb: jax.Array, train: bool) -> jax.Array:
    norm = lambda name: layers.group_norm(self.norm_groups, self.norm_eps, name)
    h = norm('norm_0')(layers.conv3x3(self.features, 'conv_0')(x))
    h = nn.swish(layers.add_timestep(h, temb))
    h = layers.Dropout(self.dropout)(h, deterministic=not train)
    return nn.swish(norm('norm_1')(layers.conv3x3(self.features, 'conv_1')(h)))


class UNetConv(layers.LevelUNet):
  """Predicts the noise in x_t: (batch, H, W, C), (batch,) -> (batch, H, W, out_channels)."""
  block: Any = ConvBlock
  attn_resolutions: tuple = ()
  mid_attention: bool = False
  downsample: str = 'maxpool'
