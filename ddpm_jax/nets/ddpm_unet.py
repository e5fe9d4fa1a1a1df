"""The official DDPM UNet (Ho et al. 2020, diffusion_tf/models/unet.py).

Base width 128 with ch_mult (1, 2, 2, 2), 2 ResNet blocks per level, single-head
self-attention after every block at 16x16 on both paths and in the middle (block,
attention, block), dropout 0.1, GroupNorm(32, eps 1e-6), swish, a sinusoidal timestep
embedding -> dense 512 -> swish -> dense 512, 3x3 stride-2 convs down, nearest + 3x3
conv up, and zero-initialised last convs of the ResNet blocks, attention output
projections and output conv: 35,746,307 parameters on 32x32x3 images.

Parameter names follow `layers.LevelUNet`, which `convert_diffusers` maps to and from
the diffusers `UNet2DModel` layout of google/ddpm-cifar10-32.
"""

from typing import Any

from ddpm_jax.nets import layers

# Parameters of the official CIFAR-10 network (32x32x3), as in the paper's code.
OFFICIAL_CIFAR10_PARAMS = 35_746_307


class DDPMUNet(layers.LevelUNet):
  """Predicts the noise in x_t: (batch, H, W, C), (batch,) -> (batch, H, W, out_channels).

  The defaults are the official CIFAR-10 network; strided-conv downsampling and nearest +
  conv upsampling are fixed, since they define the architecture.
  """
  block: Any = layers.ResnetBlock
  mid_attention: bool = True
  downsample: str = 'conv'
  upsample: str = 'nearest'
