"""Checks of a config before any compile or data loading, and the workdir's copy of it."""

import json
import math
import numbers
import os

import ml_collections
import numpy as np

from ddpm_jax import atomic_io, data, diffusion, nets, ode, pc_sampling, sampling, streaming, train_state
from ddpm_jax import sde as sde_lib
from ddpm_jax.errors import ConfigError, DataError, WorkdirError
from ddpm_jax.nets import precision
from ddpm_jax.layout import CONFIG_FILE, read_config_file

# Sections whose change makes existing checkpoints meaningless or unloadable.
MODEL_DEFINING_SECTIONS = ('model', 'diffusion')
MODEL_DEFINING_DATA_FIELDS = ('image_size', 'num_channels')
# Fields of the model section that change how the network computes, not what: a run may change them.
MODEL_FIELDS_NOT_DEFINING = ('remat',)
# Feature networks of ddpm_jax/evaluation/features.py, named here for the config check.
FEATURE_NETS = ('inception', 'classifier')


def _require(ok: bool, message: str) -> None:
  if not ok:
    raise ConfigError(message)


def _one_of(value, valid, field: str) -> None:
  _require(value in valid, f'Unknown {field} {value!r}; valid: {", ".join(map(str, valid))}.')


_UINT32_MAX = 2 ** 32 - 1


def _bounds(low, high, low_open: bool, high_open: bool) -> str:
  text = lambda x: 'inf' if x == math.inf else '-inf' if x == -math.inf else repr(x)
  return f'{"(" if low_open else "["}{text(low)}, {text(high)}{")" if high_open else "]"}'


def _in_range(value, field: str, low=-math.inf, high=math.inf, low_open: bool = False,
              high_open: bool = False, integer: bool = False, allow_inf: bool = False, note: str = '') -> None:
  """The one range check: `value` of config.`field` is a number (an integer with `integer`; never a
  bool) in the interval from low to high, each end open or closed. Infinite ends are excluded (inf
  and -inf are refused) unless allow_inf (then high=math.inf is a closed end); NaN is never in range.
  Raises ConfigError naming the field, the value and the range; `note` (e.g. ' (0 = never)') follows
  the range."""
  low_open = low_open or low == -math.inf
  high_open = high_open or (high == math.inf and not allow_inf)
  interval = _bounds(low, high, low_open, high_open)
  number = (numbers.Integral if integer else numbers.Real)
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, number):
    raise ConfigError(f'config.{field}={value!r} is not {"an integer" if integer else "a number"}: it must be '
                      f'{"an integer" if integer else "a number"} in {interval}{note}.')
  above = low < value if low_open else low <= value
  below = value < high if high_open else value <= high
  if not (above and below):  # NaN fails both comparisons.
    raise ConfigError(f'config.{field}={value!r} is out of range: it must be in {interval}{note}.')


def _each_in_range(values, field: str, *args, non_empty: bool = False, **kwargs) -> None:
  """_in_range for every element of a tuple field, named config.field[i]."""
  values = tuple(values)
  _require(values or not non_empty, f'config.{field}=() is empty: it needs at least one value.')
  for i, value in enumerate(values):
    _in_range(value, f'{field}[{i}]', *args, **kwargs)


def _get(config, field: str):
  section, _, name = field.rpartition('.')
  return (config[section] if section else config)[name]


def _check_ranges(config: ml_collections.ConfigDict) -> None:
  """The stated range of every numeric knob of configs/default.py (there, in its comment)."""
  positive_ints = ('data.image_size', 'model.ch', 'model.num_res_blocks', 'model.num_heads', 'model.norm_groups',
                   'model.time_mlp_dim', 'distributed.num_processes', 'training.batch_size',
                   'training.log_every_steps', 'training.checkpoint_every_steps', 'training.keep_checkpoints',
                   'training.num_preview_samples', 'training.importance_history', 'training.n_jitted_steps',
                   'training.grad_accum_steps',
                   'training.stop_check_every_steps', 'sampling.ddim_steps', 'sampling.num_samples',
                   'sampling.batch_size', 'figures.num_images', 'eval.bpd_batch_size', 'eval.sample_batch_size',
                   'eval.feature_batch_size', 'eval.kid_subsets', 'eval.is_splits')
  for field in positive_ints:
    _in_range(_get(config, field), field, 1, integer=True)
  zero_means = {'cpu_devices': ' (0 = one per core)', 'model.num_classes': ' (0 = unconditional)',
                'training.num_train_steps': ' (0 = train config.training.num_epochs epochs)',
                'training.bn_calibration_batches': ' (0 = keep the running statistics)',
                'training.sample_every_steps': ' (0 = never)', 'training.fid_every_steps': ' (0 = never)',
                'optim.warmup_steps': ' (0 = none)', 'sampling.progress_every': ' (0 = once per batch)',
                'eval.bpd_num_examples': ' (0 = skip bits/dim)', 'eval.num_samples': ' (0 = skip FID)',
                'eval.ode_bpd_num_examples': ' (0 = skip the ODE bits/dim)',
                'eval.classifier_steps': ' (0 = the preset)'}
  for field, note in zero_means.items():
    _in_range(_get(config, field), field, 0, integer=True, note=note)
  _in_range(config.seed, 'seed', 0, _UINT32_MAX, integer=True,
            note=' (jax.random.key keeps 32 bits: a larger seed would repeat a smaller one)')
  _in_range(config.distributed.process_id, 'distributed.process_id', 0, integer=True)
  if config.distributed.process_id >= config.distributed.num_processes:
    _in_range(config.distributed.process_id, 'distributed.process_id', 0, config.distributed.num_processes - 1,
              integer=True, note=' (below config.distributed.num_processes)')
  _in_range(config.progress_log_every_seconds, 'progress_log_every_seconds', 0, allow_inf=True,
            note=' (0 = a log line after every batch; inf = only at the end)')
  _in_range(config.data.num_channels, 'data.num_channels', 1, 3, integer=True, note=' (1 or 3)')
  _each_in_range(config.data.classes, 'data.classes', 0, integer=True)
  _in_range(config.data.num_workers, 'data.num_workers', 0, integer=True, note=' (0 = threads of the training process)')
  for field in ('data.worker_threads', 'data.prefetch_batches'):
    _in_range(_get(config, field), field, 1, integer=True)
  m = config.model
  _each_in_range(m.widths, 'model.widths', 1, integer=True, non_empty=True)
  _in_range(m.time_embed_dim, 'model.time_embed_dim', 4, integer=True, note=', even')
  _in_range(m.batch_norm_momentum, 'model.batch_norm_momentum', 0, 1, high_open=True)
  _each_in_range(m.ch_mult, 'model.ch_mult', 1, integer=True, non_empty=True)
  _each_in_range(m.attn_resolutions, 'model.attn_resolutions', 1, integer=True)
  _in_range(m.dropout, 'model.dropout', 0, 1, high_open=True)
  _in_range(m.norm_eps, 'model.norm_eps', 0, low_open=True)
  _in_range(m.fourier_scale, 'model.fourier_scale', 0, low_open=True)
  _each_in_range(m.fir_kernel, 'model.fir_kernel', 0, non_empty=True)
  d = config.diffusion
  _in_range(d.num_timesteps, 'diffusion.num_timesteps', 2, integer=True)
  for field in ('beta_start', 'beta_end'):
    _in_range(d[field], f'diffusion.{field}', 0, 1, low_open=True, high_open=True)
  _in_range(d.hybrid_lambda, 'diffusion.hybrid_lambda', 0, low_open=True)
  _in_range(d.mmd_weight, 'diffusion.mmd_weight', 0, low_open=True)
  _in_range(d.mmd_simple_weight, 'diffusion.mmd_simple_weight', 0, note=' (0 = MMD alone)')
  _each_in_range(d.mmd_bandwidths, 'diffusion.mmd_bandwidths', 0, low_open=True, non_empty=True)
  for field in ('beta_min', 'beta_max', 'sigma_min', 'sigma_max'):
    _in_range(d[field], f'diffusion.{field}', 0, low_open=True)
  _in_range(d.num_scales, 'diffusion.num_scales', 2, integer=True)
  _in_range(d.train_eps, 'diffusion.train_eps', 0, 1, low_open=True, high_open=True)
  t = config.training
  _in_range(t.num_epochs, 'training.num_epochs', 0, note=' (used when num_train_steps is 0)')
  _in_range(t.ema_decay, 'training.ema_decay', 0, 1, high_open=True)
  _in_range(t.cond_drop_prob, 'training.cond_drop_prob', 0, 1, high_open=True,
            note=' (1 would never train the conditional model)')
  _in_range(t.importance_uniform_prob, 'training.importance_uniform_prob', 0, 1)
  _in_range(t.fid_num_samples, 'training.fid_num_samples', 2, integer=True)
  o = config.optim
  _in_range(o.lr, 'optim.lr', 0, low_open=True)
  _in_range(o.beta1, 'optim.beta1', 0, 1, high_open=True)
  _in_range(o.beta2, 'optim.beta2', 0, 1, high_open=True)
  _in_range(o.eps, 'optim.eps', 0, low_open=True)
  _in_range(o.grad_clip, 'optim.grad_clip', 0, note=' (0 = no clipping)')
  s = config.sampling
  _in_range(s.ddim_eta, 'sampling.ddim_eta', 0, note=' (0 = deterministic)')
  _in_range(s.guidance_scale, 'sampling.guidance_scale', 0, note=' (0 = no guidance)')
  _each_in_range(s.eval_guidance_scales, 'sampling.eval_guidance_scales', 0)
  _each_in_range(s.classes, 'sampling.classes', 0, integer=True)
  for field in ('sampling.num_steps', 'sampling.n_steps_each', 'sampling.ode_max_steps'):
    _in_range(_get(config, field), field, 1, integer=True)
  for field in ('sampling.snr', 'sampling.ode_rtol', 'sampling.ode_atol'):
    _in_range(_get(config, field), field, 0, low_open=True)
  _in_range(config.figures.num_frames, 'figures.num_frames', 2, integer=True, note=' (the noise and the sample)')
  e = config.eval
  _in_range(e.kid_subset_size, 'eval.kid_subset_size', 2, integer=True)
  _in_range(e.kid_reference_size, 'eval.kid_reference_size', 2, integer=True)


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError on unknown names, values out of range, impossible settings and changed knobs
  that would have no effect; cheap, runs first (the command line calls it once)."""
  _one_of(config.rng_impl, train_state.RNG_IMPLS, 'config.rng_impl')
  _check_ranges(config)
  try:
    data.check_data_config(config.data)
    streaming.check_pipeline(config.data)
  except DataError as e:
    raise ConfigError(str(e)) from None
  try:
    nets.check_model_config(config)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  d = config.diffusion
  _one_of(d.schedule, tuple(diffusion.BETA_SCHEDULES), 'config.diffusion.schedule')
  _one_of(d.model_mean_type, diffusion.MODEL_MEAN_TYPES, 'config.diffusion.model_mean_type')
  _one_of(d.model_var_type, diffusion.MODEL_VAR_TYPES, 'config.diffusion.model_var_type')
  _one_of(d.loss, diffusion.LOSS_NAMES, 'config.diffusion.loss')
  _check_process(config)  # Before the losses: a continuous process allows only loss=simple, so its advice comes first.
  _check_loss(config)
  _require(d.beta_start <= d.beta_end,
           f'config.diffusion.beta_start={d.beta_start} exceeds beta_end={d.beta_end}: it must be '
           f'0 < beta_start <= beta_end < 1.')
  t = config.training
  _require(t.num_train_steps > 0 or t.num_epochs > 0,
           'Set config.training.num_train_steps or config.training.num_epochs to a positive value.')
  _one_of(t.timestep_sampler, diffusion.TIMESTEP_SAMPLERS, 'config.training.timestep_sampler')
  if t.timestep_sampler == 'importance':
    _require(d.loss != 'mmd', 'config.training.timestep_sampler=importance reweights per-example losses, '
             'but the MMD of loss=mmd is a batch statistic: use timestep_sampler=uniform with loss=mmd.')
  _one_of(config.optim.optimizer, train_state.OPTIMIZERS, 'config.optim.optimizer')
  s = config.sampling
  _one_of(s.ddim_spacing, sampling.DDIM_SPACINGS, 'config.sampling.ddim_spacing')
  for name, steps in [(s.sampler, None)] + sweep_entries(config.eval.sampler_sweep):
    _check_sampler(config, name, steps)
  _one_of(config.eval.hutchinson, ode.HUTCHINSON_TYPES, 'config.eval.hutchinson')
  for name in config.eval.feature_nets:
    _one_of(name, FEATURE_NETS, 'feature network in config.eval.feature_nets')
  _check_throughput(config)
  _check_conditioning(config)
  _check_knobs_apply(config)


def _check_process(config: ml_collections.ConfigDict) -> None:
  """The diffusion process and what training it needs."""
  d, t = config.diffusion, config.training
  _one_of(d.process, sde_lib.PROCESSES, 'config.diffusion.process')
  _require(d.beta_min <= d.beta_max, f'config.diffusion.beta_min={d.beta_min} exceeds beta_max={d.beta_max}: '
           f'beta(t) rises from beta_min to beta_max.')
  _require(d.sigma_min < d.sigma_max, f'config.diffusion.sigma_min={d.sigma_min} must be below '
           f'sigma_max={d.sigma_max}.')
  if not sde_lib.is_continuous(d):
    return
  what = f'config.diffusion.process={d.process} trains the eps-network by denoising score matching'
  _require(d.loss == 'simple', f'{what}: set config.diffusion.loss=simple (loss={d.loss} is the discrete '
           f'chain\'s), or process=ddpm.')
  _require(d.model_mean_type == 'eps', f'{what}: set config.diffusion.model_mean_type=eps, or process=ddpm.')
  _require(d.model_var_type != 'learned_range', f'{what}, without a variance: set a fixed '
           f'config.diffusion.model_var_type (fixedlarge), or process=ddpm.')
  if t.timestep_sampler == 'importance':
    _require(d.likelihood_weighting and d.process != 'vesde',
             f'config.training.timestep_sampler=importance with process={d.process} draws t in proportion '
             f'to the likelihood weighting: set config.diffusion.likelihood_weighting=True with vpsde or '
             f'subvpsde (VE\'s weighting is constant), or timestep_sampler=uniform.')


def sweep_entries(sweep) -> list[tuple[str, int | None]]:
  """config.eval.sampler_sweep's entries 'SAMPLER' or 'SAMPLER:STEPS' as (name, steps or None)."""
  entries = []
  for entry in sweep:
    name, _, steps = str(entry).partition(':')
    _require(not steps or steps.isdigit() and int(steps) >= 1,
             f'config.eval.sampler_sweep entry {entry!r} is not SAMPLER or SAMPLER:STEPS (STEPS a positive '
             f'integer), e.g. dpm_solver_pp_2m:20.')
    entries.append((name, int(steps) if steps else None))
  return entries


def _check_sampler(config: ml_collections.ConfigDict, name: str, steps: int | None) -> None:
  """A sampler (config.sampling.sampler, or an entry of config.eval.sampler_sweep) fits the process."""
  d, s = config.diffusion, config.sampling
  _one_of(name, sampling.ALL_SAMPLERS, 'sampler')
  continuous = sde_lib.is_continuous(d)
  if name in sampling.SAMPLERS:
    _require(not continuous, f'The {name} sampler walks the discrete chain, but config.diffusion.process='
             f'{d.process}: use a sampler of every process ({", ".join(sampling.ALL_SAMPLERS[2:])}).')
    if name == 'ddim':  # Only then: short test schedules (T < 50) keep the default ddim_steps.
      field = 'config.sampling.ddim_steps' if steps is None else 'the steps of config.eval.sampler_sweep\'s ddim'
      steps = s.ddim_steps if steps is None else steps
      _require(steps <= d.num_timesteps, f'{field}={steps} must be between 1 and '
               f'config.diffusion.num_timesteps={d.num_timesteps}: set ddim_steps in that range.')
    return
  _require(d.model_mean_type == 'eps', f'The {name} sampler needs an eps-predicting network: it has '
           f'config.diffusion.model_mean_type={d.model_mean_type}; use ancestral or ddim.')
  if name in sampling.SOLVER_SAMPLERS:
    spacings = ('auto', 'logsnr', 'uniform') if continuous else ('auto', 'linspace', 'leading', 'trailing')
    _one_of(s.spacing, spacings, f'config.sampling.spacing for process {d.process}')
    if not continuous:
      field = 'config.sampling.num_steps' if steps is None else f'the steps of config.eval.sampler_sweep\'s {name}'
      steps = s.num_steps if steps is None else steps
      _require(steps <= d.num_timesteps, f'{field}={steps} must be between 1 and '
               f'config.diffusion.num_timesteps={d.num_timesteps}: set the steps in that range.')
  elif name == 'pc':
    # Its discrete VP chain has beta_i = beta(t_i) / num_scales, up to beta_max / num_scales < 1.
    _require(d.process not in ('vpsde', 'subvpsde') or d.beta_max < d.num_scales,
             f'The pc sampler walks the discrete chain of config.diffusion.num_scales={d.num_scales} steps with '
             f'betas beta(t) / num_scales, which need num_scales above beta_max={d.beta_max}: raise num_scales.')
    try:
      pc_sampling.check_names(sde_lib.from_config(d), s.predictor, s.corrector)
    except ValueError as e:
      raise ConfigError(f'config.sampling.predictor / corrector: {e}') from None
  else:
    _one_of(s.ode_solver, tuple(ode.SOLVERS), 'config.sampling.ode_solver')


def _check_throughput(config: ml_collections.ConfigDict) -> None:
  """Steps per compiled call, compute dtype, hosts."""
  t, dist = config.training, config.distributed
  for field in ('log_every_steps', 'checkpoint_every_steps', 'sample_every_steps', 'fid_every_steps'):
    _require(t[field] % t.n_jitted_steps == 0,
             f'config.training.{field}={t[field]} is not a multiple of config.training.n_jitted_steps='
             f'{t.n_jitted_steps}, which runs that many steps per call: make it a multiple.')
  _one_of(t.compute_dtype, precision.COMPUTE_DTYPES, 'config.training.compute_dtype')
  if dist.coordinator_address not in ('', 'auto'):
    _require(':' in dist.coordinator_address, f'config.distributed.coordinator_address='
             f'{dist.coordinator_address!r} must be host:port (or \'auto\', or \'\' for one host).')
  check_batch_divides(t.batch_size, dist.num_processes, 'config.training.batch_size', 'hosts')
  _require(t.batch_size % t.grad_accum_steps == 0,
           f'config.training.batch_size={t.batch_size} does not split into config.training.grad_accum_steps='
           f'{t.grad_accum_steps} micro-batches: use a batch size that is a multiple of it.')
  _require(t.grad_accum_steps == 1 or config.diffusion.loss != 'mmd',
           'config.training.grad_accum_steps > 1 would compute the MMD of loss=mmd per micro-batch, a '
           'different loss from the whole batch\'s: set grad_accum_steps=1 with loss=mmd.')


def _check_conditioning(config: ml_collections.ConfigDict) -> None:
  """Class-conditional settings: requested classes, the class count of the dataset."""
  num_classes, s = config.model.num_classes, config.sampling
  if not num_classes:
    _require(not s.classes, 'config.sampling.classes needs a class-conditional network: set '
             'config.model.num_classes (the dataset\'s class count) and train with labels.')
    return
  bad = [c for c in s.classes if not 0 <= c < num_classes]
  _require(not bad, f'config.sampling.classes {bad} are not classes of the network (0 to {num_classes - 1}).')
  if config.data.dataset in data.FIXED_NUM_CLASSES:
    expected = data.FIXED_NUM_CLASSES[config.data.dataset]
    _require(num_classes == expected, f'config.model.num_classes={num_classes}, but {config.data.dataset} has '
             f'{expected} classes: set --config.model.num_classes={expected}.')


def _check_loss(config: ml_collections.ConfigDict) -> None:
  """Losses whose settings cannot train what the config asks for."""
  d = config.diffusion
  learned = d.model_var_type == 'learned_range'
  _require(not (learned and d.loss in ('simple', 'mmd')),
           f'config.diffusion.model_var_type=learned_range needs a loss that trains the variance '
           f'(kl or hybrid); loss={d.loss} leaves it untrained. Set config.diffusion.loss=hybrid, or a '
           f'fixed model_var_type (fixedlarge, fixedsmall).')
  _require(d.loss != 'hybrid' or learned,
           'config.diffusion.loss=hybrid adds a bound term that only trains a learned variance: set '
           'config.diffusion.model_var_type=learned_range, or use loss=simple (hybrid equals it here).')
  if d.loss == 'mmd':
    _require(config.training.batch_size >= 2, 'loss=mmd compares samples within a batch: '
             'config.training.batch_size must be at least 2.')


# Knobs that act only in some configs, each with the value configs/default.py gives it (a test keeps
# them equal), a test of whether it acts, and what it needs: a value changed from the default where
# the knob has no effect is refused, not silently ignored.
# The networks' own fields (widths of unet_simple, ch of the level UNets, ...) are not refused on
# other networks: shipped configs derive one network's config from another's (cifar10_resnet from
# cifar10_simple) and keep its fields.
_CONDITIONAL = (lambda c: c.model.num_classes > 0,
                'a class-conditional network: set config.model.num_classes (the dataset\'s class count)')
_MMD = (lambda c: c.diffusion.loss == 'mmd', 'config.diffusion.loss=mmd')
_IMPORTANCE = (lambda c: c.training.timestep_sampler == 'importance', 'config.training.timestep_sampler=importance')
_SCHEDULES_WITHOUT_BETAS = ('cosine', 'jsd')  # diffusion.BETA_SCHEDULES that ignore beta_start, beta_end.
_BETAS = (lambda c: c.diffusion.process == 'ddpm' and c.diffusion.schedule not in _SCHEDULES_WITHOUT_BETAS,
          f'process ddpm with a schedule that uses them (not {" or ".join(_SCHEDULES_WITHOUT_BETAS)})')
_STREAMING = (lambda c: c.data.pipeline == 'streaming', 'config.data.pipeline=streaming')


def _samplers_used(config) -> set[str]:
  """config.sampling.sampler and the samplers of config.eval.sampler_sweep."""
  return {config.sampling.sampler} | {str(e).partition(':')[0] for e in config.eval.sampler_sweep}


def _uses(*names: str) -> tuple:
  return (lambda c: bool(_samplers_used(c) & set(names)),
          f'config.sampling.sampler={" or ".join(names)} (or in config.eval.sampler_sweep)')


_DDPM = (lambda c: c.diffusion.process == 'ddpm', 'config.diffusion.process=ddpm')
_CONTINUOUS = (lambda c: sde_lib.is_continuous(c.diffusion), 'a continuous config.diffusion.process '
               f'({", ".join(sde_lib.CONTINUOUS_PROCESSES)})')
_VP_FAMILY = (lambda c: c.diffusion.process in ('vpsde', 'subvpsde'), 'config.diffusion.process=vpsde or subvpsde')
_VE = (lambda c: c.diffusion.process == 'vesde', 'config.diffusion.process=vesde')
_ODE = (lambda c: bool(_samplers_used(c) & {'ode'}) or c.eval.ode_bpd_num_examples > 0,
        'config.sampling.sampler=ode (or in config.eval.sampler_sweep), or config.eval.ode_bpd_num_examples > 0')
KNOB_DEFAULTS = {
    'sampling.guidance_scale': (0.0, *_CONDITIONAL),
    'sampling.eval_guidance_scales': ((0.0, 1.0, 3.0), *_CONDITIONAL),
    'training.cond_drop_prob': (0.1, *_CONDITIONAL),
    'sampling.ddim_steps': (50, *_uses('ddim')),
    'sampling.ddim_eta': (0.0, *_uses('ddim')),
    'sampling.ddim_spacing': ('uniform', *_uses('ddim')),
    'sampling.ddim_clipped_eps': (True, *_uses('ddim')),
    'diffusion.hybrid_lambda': (0.001, lambda c: c.diffusion.loss == 'hybrid', 'config.diffusion.loss=hybrid'),
    'diffusion.mmd_weight': (1.0, *_MMD),
    'diffusion.mmd_simple_weight': (1.0, *_MMD),
    'diffusion.mmd_bandwidths': ((0.1, 0.2, 0.5, 1.0, 2.0), *_MMD),
    'training.importance_history': (10, *_IMPORTANCE),
    'training.importance_uniform_prob': (0.001, *_IMPORTANCE),
    'diffusion.beta_start': (1e-4, *_BETAS),
    'diffusion.beta_end': (0.02, *_BETAS),
    'training.init_ema': (True, lambda c: bool(c.training.init_from), 'config.training.init_from'),
    'training.fid_num_samples': (1000, lambda c: c.training.fid_every_steps > 0, 'config.training.fid_every_steps > 0'),
    'diffusion.schedule': ('linear', *_DDPM),
    'diffusion.num_timesteps': (1000, *_DDPM),
    'diffusion.beta_min': (0.1, *_VP_FAMILY),
    'diffusion.beta_max': (20.0, *_VP_FAMILY),
    'diffusion.sigma_min': (0.01, *_VE),
    'diffusion.sigma_max': (50.0, *_VE),
    'diffusion.num_scales': (1000, *_CONTINUOUS),
    'diffusion.train_eps': (1e-5, *_CONTINUOUS),
    'diffusion.likelihood_weighting': (False, *_CONTINUOUS),
    'sampling.num_steps': (20, *_uses(*sampling.SOLVER_SAMPLERS)),
    'sampling.spacing': ('auto', *_uses(*sampling.SOLVER_SAMPLERS)),
    'sampling.predictor': ('reverse_diffusion', *_uses('pc')),
    'sampling.corrector': ('langevin', *_uses('pc')),
    'sampling.snr': (0.16, *_uses('pc')),
    'sampling.n_steps_each': (1, *_uses('pc')),
    'sampling.denoise': (True, *_uses('pc', 'ode')),
    'sampling.ode_solver': ('dopri5', *_ODE),
    'sampling.ode_rtol': (1e-5, *_ODE),
    'sampling.ode_atol': (1e-5, *_ODE),
    'sampling.ode_max_steps': (4096, *_ODE),
    'eval.hutchinson': ('rademacher', lambda c: c.eval.ode_bpd_num_examples > 0, 'config.eval.ode_bpd_num_examples > 0'),
    'data.num_workers': (2, *_STREAMING),
    'data.worker_threads': (2, *_STREAMING),
    'data.prefetch_batches': (2, *_STREAMING),
}
# Model-defining fields added since the first release that KNOB_DEFAULTS does not hold, at the value
# configs/default.py gives them (a test keeps them equal): a workdir made before they existed ran so.
FIELDS_ADDED_LATER = {'diffusion.process': 'ddpm',
                      # NCSN++ / DDPM++ (nets/ncsnpp.py).
                      'model.skip_rescale': True, 'model.embedding_type': 'fourier', 'model.fourier_scale': 16.0,
                      'model.fir': True, 'model.fir_kernel': (1, 3, 3, 1), 'model.progressive': 'none',
                      'model.progressive_input': 'residual'}


def _same(value, default) -> bool:
  if isinstance(default, tuple):
    return tuple(value) == default
  return value == default and type(value) is type(default)


def _check_knobs_apply(config: ml_collections.ConfigDict) -> None:
  """Refuses a knob changed from its default where it has no effect."""
  for field, (default, applies, needs) in KNOB_DEFAULTS.items():
    value = _get(config, field)
    _require(applies(config) or _same(value, default),
             f'config.{field}={value!r} has no effect here: it needs {needs}. Leave it at its default '
             f'{default!r}, or set what it needs.')


def check_batches_divide(config: ml_collections.ConfigDict, num_devices: int, evaluating: bool = False) -> None:
  """Each batch splits evenly over the devices: training, sampling and previews, and with
  `evaluating` (--mode=eval) the evaluation's batches too."""
  fields = [('training', 'batch_size'), ('sampling', 'batch_size'), ('training', 'num_preview_samples')]
  if evaluating:
    fields += [('eval', 'bpd_batch_size'), ('eval', 'sample_batch_size')]
  for section, name in fields:
    check_batch_divides(config[section][name], num_devices, f'config.{section}.{name}')
  accum = config.training.grad_accum_steps
  if accum > 1:  # Each micro-batch (train_step.split_micro_batches) is sharded over the devices too.
    check_batch_divides(config.training.batch_size // accum, num_devices,
                        'The micro-batch config.training.batch_size / grad_accum_steps')


def check_batch_divides(batch_size: int, num_devices: int, field: str, what: str = 'devices') -> None:
  _require(batch_size % num_devices == 0,
           f'{field}={batch_size} does not divide over the {num_devices} {what}: '
           f'use a multiple of {num_devices}.')


def _model_defining(config_dict: dict) -> dict:
  defining = {k: config_dict.get(k) for k in MODEL_DEFINING_SECTIONS}
  defining['model'] = {k: v for k, v in (defining['model'] or {}).items() if k not in MODEL_FIELDS_NOT_DEFINING}
  defining['data'] = {k: config_dict.get('data', {}).get(k) for k in MODEL_DEFINING_DATA_FIELDS}
  return defining


def flatten_dict(d: dict, prefix: str = '') -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(flatten_dict(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def config_to_dict(config: ml_collections.ConfigDict) -> dict:
  """The config as plain JSON-able data (tuples become lists)."""
  return json.loads(config.to_json())


def model_changes(config: ml_collections.ConfigDict, workdir: str) -> list[str]:
  """'field: saved -> current' for each model-defining field that differs from workdir/config.json."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return []
  saved = flatten_dict(_model_defining(read_config_file(path)))  # WorkdirFileError when it does not parse.
  current = flatten_dict(_model_defining(config_to_dict(config)))
  # A field added to the config after the run was made stood at its default then.
  defaults = {**{k: v for k, (v, _, _) in KNOB_DEFAULTS.items()}, **FIELDS_ADDED_LATER}
  for k, value in defaults.items():
    if k in current and k not in saved:
      saved[k] = list(value) if isinstance(value, tuple) else value
  return [f'{k}: {saved.get(k)!r} -> {current.get(k)!r}'
          for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k)]


def check_workdir_config(config: ml_collections.ConfigDict, workdir: str,
                         allow_model_change: bool = False) -> list[str]:
  """Refuses a workdir whose saved config defines a different model or diffusion, unless
  allow_model_change (--force_workdir_config); returns those differences."""
  changed = model_changes(config, workdir)
  if changed and not allow_model_change:
    raise WorkdirError(
        f'{workdir} holds a run with a different model ({"; ".join(changed)}). '
        f'Use a new --workdir, or the config that run was made with (or --force_workdir_config to '
        f'continue from its checkpoints, which must fit the new model).')
  return changed


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes the resolved config to workdir/config.json, atomically."""
  atomic_io.write_json(os.path.join(workdir, CONFIG_FILE), config_to_dict(config), sort_keys=True)
