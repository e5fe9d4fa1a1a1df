"""Unet-Resnet on CIFAR-100: configs/cifar10_resnet.py on the other dataset.

The report pre-trains on CIFAR-100 (same 32x32x3 shape, disjoint classes) before CIFAR-10;
a run of this config is such a pre-training.
"""

from configs import cifar10_resnet


def get_config():
  config = cifar10_resnet.get_config()
  config.data.dataset = 'cifar100'
  return config
