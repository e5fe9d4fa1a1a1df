"""The report's CIFAR-10 run: Unet-Simple [128, 256, 256, 128, 64], batch 64, lr 1e-3, 50 epochs."""

from configs import default


def get_config():
  config = default.get_config()
  config.data.dataset = 'cifar10'
  config.data.image_size = 32
  config.data.num_channels = 3
  config.data.random_flip = True
  config.model.widths = (128, 256, 256, 128, 64)
  config.training.batch_size = 64
  config.training.num_epochs = 50.0
  config.optim.lr = 1e-3
  return config
