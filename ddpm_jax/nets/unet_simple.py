"""The report's Unet-Simple: convolutions, batch norm and a timestep embedding per block.

Five blocks (two down, a middle, two up) of the given widths, joined by strided
3x3 convolutions down, nearest-neighbour upsampling + 3x3 convolutions up, and
concatenated skips. The sinusoidal timestep embedding (plus a learned class embedding in a
class-conditional network) is projected by a dense layer onto the input channels of every
block and added there.
"""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ddpm_jax.nets.layers import add_class_embedding, rematerialised, timestep_embedding, upsample_conv3x3

# Two 2x downsamplings: the image side must be divisible by this.
SIZE_DIVISOR = 4


class ConvBlock(nn.Module):
  """conv -> [BN -> swish -> conv -> BN -> swish] with a residual around the bracket."""
  features: int
  momentum: float

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    norm = lambda: nn.BatchNorm(use_running_average=not train, momentum=self.momentum)
    h = nn.Conv(self.features, (3, 3), use_bias=False)(x)
    y = nn.swish(norm()(h))
    y = nn.Conv(self.features, (3, 3), use_bias=False)(y)
    y = nn.swish(norm()(y))
    return h + y


class UNetSimple(nn.Module):
  """Predicts the noise in x_t: (batch, H, W, C), (batch,) -> (batch, H, W, out_channels)."""
  widths: Sequence[int] = (64, 128, 128, 64, 32)
  time_embed_dim: int = 128
  out_channels: int = 1
  batch_norm_momentum: float = 0.99
  # Class-conditional with this many classes (plus a null class); 0 = unconditional.
  num_classes: int = 0
  # Recompute each ConvBlock's activations in the backward pass (config.model.remat).
  remat: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array, train: bool = False, labels: jax.Array | None = None) -> jax.Array:
    w_down1, w_down2, w_mid, w_up1, w_up2 = self.widths
    temb = add_class_embedding(timestep_embedding(t, self.time_embed_dim), labels, self.num_classes)
    block_class = rematerialised(ConvBlock, self.remat, static_argnums=(2,))  # (self, x, train)
    blocks = iter(range(5))

    def block(h, features):
      h = h + nn.Dense(h.shape[-1])(temb)[:, None, None, :]
      # Named as Flax names ConvBlock automatically, so that remat keeps the parameter paths.
      return block_class(features, self.batch_norm_momentum, name=f'ConvBlock_{next(blocks)}')(h, train)

    def down(h):
      return nn.Conv(h.shape[-1], (3, 3), strides=(2, 2), use_bias=False)(h)

    def up(h):
      return upsample_conv3x3(h.shape[-1], use_bias=False)(h)

    h1 = block(x, w_down1)                                  # H
    h2 = block(down(h1), w_down2)                           # H/2
    h3 = up(block(down(h2), w_mid))                         # H/4 -> H/2
    h4 = up(block(jnp.concatenate([h3, h2], -1), w_up1))   # H/2 -> H
    h5 = block(jnp.concatenate([h4, h1], -1), w_up2)        # H
    return nn.Conv(self.out_channels, (1, 1))(h5)
