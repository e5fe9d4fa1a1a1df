"""The report's MNIST run: Unet-Simple [64, 128, 128, 64, 32], batch 128, lr 2e-4, 50 epochs."""

from configs import default


def get_config():
  config = default.get_config()
  config.data.dataset = 'mnist'
  config.data.image_size = 28
  config.data.num_channels = 1
  config.model.widths = (64, 128, 128, 64, 32)
  config.training.batch_size = 128
  config.training.num_epochs = 50.0
  config.optim.lr = 2e-4
  return config
