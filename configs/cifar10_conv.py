"""The report's Unet-Conv on CIFAR-10: group-normalised conv blocks, max-pool down, no attention.

configs/cifar10_resnet.py with plain conv blocks instead of ResNet blocks and attention.
"""

from configs import cifar10_resnet


def get_config():
  config = cifar10_resnet.get_config()
  config.model.name = 'unet_conv'
  config.model.attn_resolutions = ()
  return config
