"""The official DDPM 256x256 recipe (Ho et al. 2020, appendix B; diffusion_tf scripts/run_lsun.py)
on LSUN church (outdoor): the 113,673,219-parameter UNet, 1.2M steps.

The UNet is the CIFAR-10 one widened to six levels: ch 128, ch_mult (1, 1, 2, 2, 4, 4), 2 ResNet
blocks per level, single-head attention at 16x16 and in the middle, the layout of diffusers'
google/ddpm-church-256 (so python -m ddpm_jax.tools.convert_diffusers imports that folder, and
python -m ddpm_jax.tools.export_diffusers writes one). Adam 2e-5 with 5,000 warm-up steps,
gradient clipping at 1.0, batch 64, EMA 0.9999, dropout 0, random flips, the linear schedule over
T = 1000 and fixedlarge variance. A GPU job; celebahq_256, lsun_bedroom_256 and lsun_cat_256
change only the data and the length.
"""

from configs import cifar10_ddpm


def get_config():
  config = cifar10_ddpm.get_config()
  config.data.dataset = 'lsun/church_outdoor'
  config.data.image_size = 256
  config.data.random_flip = True
  # LSUN's images vary in size (the shorter side 256): centre-crop them to squares of 256.
  config.data.resize_images = True
  # Far larger than host memory (church ~25 GB, bedroom ~590 GB as uint8): read by index, prepared
  # once as TFDS array_record files (`tfds build lsun/church_outdoor --file_format=array_record`).
  config.data.pipeline = 'streaming'
  m = config.model
  m.ch_mult = (1, 1, 2, 2, 4, 4)
  m.attn_resolutions = (16,)
  m.dropout = 0.0
  t = config.training
  t.batch_size = 64
  t.num_train_steps = 1_200_000
  t.ema_decay = 0.9999
  t.checkpoint_every_steps = 10_000
  t.sample_every_steps = 50_000
  t.num_preview_samples = 16
  config.sampling.batch_size = 16
  config.sampling.num_samples = 16
  config.optim.lr = 2e-5
  config.optim.warmup_steps = 5000
  config.optim.grad_clip = 1.0
  # The likelihood was not reported at 256x256 (T network calls per image); FID against the train split.
  config.eval.bpd_num_examples = 0
  config.eval.sample_batch_size = 64
  return config
