"""The report's Unet-Resnet: DDPM's ResNet-block UNet with max-pool downsampling.

The report built it from a public DDPM UNet (ResNet blocks with timestep conditioning
and group norm, self-attention at chosen resolutions), replacing the strided-conv
downsampling by 2x2 max pooling to save parameters and reducing the widths. Here it is
`layers.LevelUNet` with ResNet blocks, attention at config.model.attn_resolutions and in
the middle, max-pool down and nearest + conv (or transposed-conv) up.
"""

from typing import Any

from ddpm_jax.nets import layers


class UNetResnet(layers.LevelUNet):
  """Predicts the noise in x_t: (batch, H, W, C), (batch,) -> (batch, H, W, out_channels)."""
  block: Any = layers.ResnetBlock
  mid_attention: bool = True
  downsample: str = 'maxpool'
