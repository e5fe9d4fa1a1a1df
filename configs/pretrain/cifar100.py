"""The report's pre-training: Unet-Resnet on CIFAR-100 for N epochs (the argument, default 10).

CIFAR-100 has CIFAR-10's image shape (32x32x3) and disjoint classes, so the network fits
configs/pretrain/cifar10_from.py. The whole experiment: see docs/runbooks.md.
"""

from configs import cifar100_resnet


def get_config(epochs: str = '10'):
  """CIFAR-100 pre-training for `epochs` passes (from `--config=...cifar100.py:<epochs>`)."""
  config = cifar100_resnet.get_config()
  config.training.num_epochs = float(epochs)
  return config
