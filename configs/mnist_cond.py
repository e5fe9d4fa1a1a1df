"""Class-conditional Unet-Simple on MNIST with classifier-free guidance ("draw a 7").

How to train and sample it: see docs/runbooks.md.
"""

from configs import mnist_simple


def get_config():
  config = mnist_simple.get_config()
  config.model.num_classes = 10
  config.training.cond_drop_prob = 0.1
  config.sampling.guidance_scale = 1.0
  config.eval.feature_nets = ('classifier',)
  return config
