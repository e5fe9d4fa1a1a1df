r"""The report's fine-tuning: Unet-Resnet on CIFAR-10 for 50 epochs, initialised from a CIFAR-100 run.

Exactly configs/cifar10_resnet.py; give the pre-trained workdir (its latest checkpoint) or one of
its checkpoint folders WORKDIR/checkpoints/<step> with --config.training.init_from. Without it,
this is the from-scratch baseline. The whole experiment, in order, is in the docstring of
configs/pretrain/cifar100.py:

  python main.py --config=configs/pretrain/cifar100.py:10 --workdir=workdirs/pretrain/cifar100_10ep
  python main.py --config=configs/pretrain/cifar10_from.py --workdir=workdirs/pretrain/cifar10_from10 \
      --config.training.init_from=workdirs/pretrain/cifar100_10ep
  (the same for 20 and 30 epochs)
  python main.py --config=configs/pretrain/cifar10_from.py --workdir=workdirs/pretrain/cifar10_scratch

Rerunning a fine-tuning command resumes it from its own checkpoint; init_from only starts it.
"""

from configs import cifar10_resnet


def get_config():
  return cifar10_resnet.get_config()
