"""The report's Unet-Conv on MNIST: three levels (28, 14, 7), widths 32-64-64, no attention.

Trained like the report's MNIST Unet-Simple run (batch 128, lr 2e-4, 50 epochs).
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.dataset = 'mnist'
  config.data.image_size = 28
  config.data.num_channels = 1
  m = config.model
  m.name = 'unet_conv'
  m.ch = 32
  m.ch_mult = (1, 2, 2)
  m.num_res_blocks = 2
  m.attn_resolutions = ()
  m.dropout = 0.1
  m.norm_groups = 8
  m.time_embed_dim = 32
  m.time_mlp_dim = 128
  m.upsample = 'nearest'
  config.training.batch_size = 128
  config.training.num_epochs = 50.0
  config.optim.lr = 2e-4
  return config
