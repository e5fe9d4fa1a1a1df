"""Offline pre-training experiment, pre-training half: the quickstart's Unet-Simple on
Fashion-MNIST (60,000 IDX images from /usr/share/datasets/fashion-mnist, Debian's
`apt-get install dataset-fashion-mnist`) for the analogue of N CIFAR-100 epochs (the argument,
default 10): N/50 of the MNIST fine-tuning's 3,120 steps, as the report pre-trains N epochs
before 50 on CIFAR-10 (:10, :20, :30 are 624, 1,248 and 1,872 steps). The whole experiment:
see docs/runbooks.md.
"""

from configs import quickstart
from configs.pretrain import mnist_from


def get_config(report_epochs: str = '10'):
  """Pre-training as long, relative to the fine-tuning, as `report_epochs` CIFAR-100 epochs are."""
  config = quickstart.get_config()  # Network, batch, optimizer, EMA: as mnist_from.py.
  config.data.dataset = 'fashion_mnist_idx'
  steps = mnist_from.finetune_steps(config) * float(report_epochs) / mnist_from.REPORT_FINETUNE_EPOCHS
  config.training.num_train_steps = max(1, round(steps))
  config.training.sample_every_steps = config.training.num_train_steps
  # Fashion-MNIST has a test split: bits/dim (--mode=eval) on 100 of its images.
  config.eval.split = 'test'
  return config
