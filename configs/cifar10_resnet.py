"""The report's Unet-Resnet on CIFAR-10: DDPM's ResNet UNet with max-pool down, reduced widths.

Widths 64-128-128-128 (half of DDPM's), attention at 16x16; data and training as in the
report's CIFAR-10 Unet-Simple run (configs/cifar10_simple.py: batch 64, lr 1e-3, 50 epochs),
so the two compare.
"""

from configs import cifar10_simple


def get_config():
  config = cifar10_simple.get_config()
  m = config.model
  m.name = 'unet_resnet'
  m.ch = 64
  m.ch_mult = (1, 2, 2, 2)
  m.num_res_blocks = 2
  m.attn_resolutions = (16,)
  m.num_heads = 1
  m.dropout = 0.1
  m.norm_groups = 32
  m.time_embed_dim = 64
  m.time_mlp_dim = 256
  m.upsample = 'nearest'
  return config
