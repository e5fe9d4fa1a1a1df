"""The report's Unet-Resnet on MNIST: three levels (28, 14, 7), widths 32-64-64, attention at 14x14.

Data and training as in the report's MNIST Unet-Simple run (configs/mnist_simple.py:
batch 128, lr 2e-4, 50 epochs).
"""

from configs import mnist_simple


def get_config():
  config = mnist_simple.get_config()
  m = config.model
  m.name = 'unet_resnet'
  m.ch = 32
  m.ch_mult = (1, 2, 2)
  m.num_res_blocks = 2
  m.attn_resolutions = (14,)
  m.num_heads = 1
  m.dropout = 0.1
  m.norm_groups = 8
  m.time_embed_dim = 32
  m.time_mlp_dim = 128
  m.upsample = 'nearest'
  return config
