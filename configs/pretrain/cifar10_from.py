"""The report's fine-tuning: Unet-Resnet on CIFAR-10 for 50 epochs, initialised from a CIFAR-100 run.

Exactly configs/cifar10_resnet.py; give the pre-trained workdir (its latest checkpoint) or one of
its checkpoint folders WORKDIR/checkpoints/<step> with --config.training.init_from. Without it,
this is the from-scratch baseline. The whole experiment: see docs/runbooks.md.
"""

from configs import cifar10_resnet


def get_config():
  return cifar10_resnet.get_config()
