r"""The report's pre-training: Unet-Resnet on CIFAR-100 for N epochs (the argument, default 10).

CIFAR-100 has CIFAR-10's image shape (32x32x3) and disjoint classes. The experiment, in order:
pre-train for 10, 20 and 30 epochs, fine-tune each on CIFAR-10 for 50 epochs, train the same
network on CIFAR-10 for 50 epochs from scratch, then compare:

  python main.py --config=configs/pretrain/cifar100.py:10 --workdir=workdirs/pretrain/cifar100_10ep
  python main.py --config=configs/pretrain/cifar100.py:20 --workdir=workdirs/pretrain/cifar100_20ep
  python main.py --config=configs/pretrain/cifar100.py:30 --workdir=workdirs/pretrain/cifar100_30ep
  python main.py --config=configs/pretrain/cifar10_from.py --workdir=workdirs/pretrain/cifar10_from10 \
      --config.training.init_from=workdirs/pretrain/cifar100_10ep
  python main.py --config=configs/pretrain/cifar10_from.py --workdir=workdirs/pretrain/cifar10_from20 \
      --config.training.init_from=workdirs/pretrain/cifar100_20ep
  python main.py --config=configs/pretrain/cifar10_from.py --workdir=workdirs/pretrain/cifar10_from30 \
      --config.training.init_from=workdirs/pretrain/cifar100_30ep
  python main.py --config=configs/pretrain/cifar10_from.py --workdir=workdirs/pretrain/cifar10_scratch
  python -m ddpm_jax.compare --out=reports/pretrain_cifar --labels=scratch,from10,from20,from30 \
      --workdirs=workdirs/pretrain/cifar10_scratch,workdirs/pretrain/cifar10_from10,\
workdirs/pretrain/cifar10_from20,workdirs/pretrain/cifar10_from30

Add --mode=eval (and --mode=figures) with the same --config and --workdir for each CIFAR-10 run.
"""

from configs import cifar100_resnet


def get_config(epochs: str = '10'):
  """CIFAR-100 pre-training for `epochs` passes (from `--config=...cifar100.py:<epochs>`)."""
  config = cifar100_resnet.get_config()
  config.training.num_epochs = float(epochs)
  return config
