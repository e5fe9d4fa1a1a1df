"""The report's Unet-Conv on MNIST: configs/mnist_resnet.py with plain conv blocks, no attention."""

from configs import mnist_resnet


def get_config():
  config = mnist_resnet.get_config()
  config.model.name = 'unet_conv'
  config.model.attn_resolutions = ()
  return config
