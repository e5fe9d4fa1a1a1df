"""Class-conditional Unet-Resnet on CIFAR-10 with classifier-free guidance ("draw a ship").

How to train and sample it: see docs/runbooks.md.
"""

from configs import cifar10_resnet


def get_config():
  config = cifar10_resnet.get_config()
  config.model.num_classes = 10
  config.training.cond_drop_prob = 0.1
  config.sampling.guidance_scale = 1.0
  return config
