"""Class-conditional Unet-Resnet on CIFAR-10 with classifier-free guidance ("draw a ship").

  python main.py --config=configs/cifar10_cond.py --workdir=workdirs/cifar10_cond
  python main.py --config=configs/cifar10_cond.py --workdir=workdirs/cifar10_cond --mode=sample \\
      --config.sampling.classes=8 --config.sampling.guidance_scale=3
"""

from configs import cifar10_resnet


def get_config():
  config = cifar10_resnet.get_config()
  config.model.num_classes = 10
  config.training.cond_drop_prob = 0.1
  config.sampling.guidance_scale = 1.0
  return config
