"""The report's Unet-Resnet on CIFAR-10: DDPM's ResNet UNet with max-pool down, reduced widths.

Widths 64-128-128-128 (half of DDPM's), attention at 16x16; trained like the report's
CIFAR-10 Unet-Simple run (batch 64, lr 1e-3, 50 epochs) so the two compare.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.dataset = 'cifar10'
  config.data.image_size = 32
  config.data.num_channels = 3
  config.data.random_flip = True
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
  config.training.batch_size = 64
  config.training.num_epochs = 50.0
  config.optim.lr = 1e-3
  return config
