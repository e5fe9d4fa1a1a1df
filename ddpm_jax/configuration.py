"""Checks of a config before any compile or data loading, and the workdir's copy of it."""

import json
import os

import ml_collections

from configs import default as default_config  # The one statement of every default.
from ddpm_jax import atomic_io, data, diffusion, editing, nets, ode, processes, samplers, streaming, train_state
from ddpm_jax.errors import ConfigError, DataError, WorkdirError, in_range, require
from ddpm_jax.nets import precision
from ddpm_jax.layout import CONFIG_FILE, read_config_file

# Sections whose change makes existing checkpoints meaningless or unloadable.
MODEL_DEFINING_SECTIONS = ('model', 'diffusion')
MODEL_DEFINING_DATA_FIELDS = ('image_size', 'num_channels')
# Fields of the model section that change how the network computes, not what: a run may change them.
MODEL_FIELDS_NOT_DEFINING = ('remat',)
# Feature networks of ddpm_jax/evaluation/features.py, named here for the config check.
FEATURE_NETS = ('inception', 'classifier')


def _one_of(value, valid, field: str) -> None:
  require(value in valid, f'Unknown {field} {value!r}; valid: {", ".join(map(str, valid))}.')


_UINT32_MAX = 2 ** 32 - 1


def _each_in_range(values, field: str, *args, non_empty: bool = False, **kwargs) -> None:
  """_in_range for every element of a tuple field, named config.field[i]."""
  values = tuple(values)
  require(values or not non_empty, f'config.{field}=() is empty: it needs at least one value.')
  for i, value in enumerate(values):
    in_range(value, f'{field}[{i}]', *args, **kwargs)


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
                   'sampling.batch_size', 'figures.num_images', 'edit.num_images', 'eval.bpd_batch_size',
                   'eval.sample_batch_size',
                   'eval.feature_batch_size', 'eval.kid_subsets', 'eval.is_splits')
  for field in positive_ints:
    in_range(_get(config, field), field, 1, integer=True)
  zero_means = {'cpu_devices': ' (0 = one per core)', 'model.num_classes': ' (0 = unconditional)',
                'training.num_train_steps': ' (0 = train config.training.num_epochs epochs)',
                'training.bn_calibration_batches': ' (0 = keep the running statistics)',
                'training.sample_every_steps': ' (0 = never)', 'training.fid_every_steps': ' (0 = never)',
                'optim.warmup_steps': ' (0 = none)', 'sampling.progress_every': ' (0 = once per batch)',
                'eval.bpd_num_examples': ' (0 = skip bits/dim)', 'eval.num_samples': ' (0 = skip FID)',
                'eval.ode_bpd_num_examples': ' (0 = skip the ODE bits/dim)',
                'eval.classifier_steps': ' (0 = the preset)'}
  for field, note in zero_means.items():
    in_range(_get(config, field), field, 0, integer=True, note=note)
  in_range(config.seed, 'seed', 0, _UINT32_MAX, integer=True,
            note=' (jax.random.key keeps 32 bits: a larger seed would repeat a smaller one)')
  in_range(config.distributed.process_id, 'distributed.process_id', 0, integer=True)
  if config.distributed.process_id >= config.distributed.num_processes:
    in_range(config.distributed.process_id, 'distributed.process_id', 0, config.distributed.num_processes - 1,
              integer=True, note=' (below config.distributed.num_processes)')
  in_range(config.progress_log_every_seconds, 'progress_log_every_seconds', 0, allow_inf=True,
            note=' (0 = a log line after every batch; inf = only at the end)')
  in_range(config.data.num_channels, 'data.num_channels', 1, 3, integer=True, note=' (1 or 3)')
  _each_in_range(config.data.classes, 'data.classes', 0, integer=True)
  in_range(config.data.num_workers, 'data.num_workers', 0, integer=True, note=' (0 = threads of the training process)')
  for field in ('data.worker_threads', 'data.prefetch_batches'):
    in_range(_get(config, field), field, 1, integer=True)
  m = config.model
  _each_in_range(m.widths, 'model.widths', 1, integer=True, non_empty=True)
  in_range(m.time_embed_dim, 'model.time_embed_dim', 4, integer=True, note=', even')
  in_range(m.batch_norm_momentum, 'model.batch_norm_momentum', 0, 1, high_open=True)
  _each_in_range(m.ch_mult, 'model.ch_mult', 1, integer=True, non_empty=True)
  _each_in_range(m.attn_resolutions, 'model.attn_resolutions', 1, integer=True)
  in_range(m.dropout, 'model.dropout', 0, 1, high_open=True)
  in_range(m.norm_eps, 'model.norm_eps', 0, low_open=True)
  in_range(m.fourier_scale, 'model.fourier_scale', 0, low_open=True)
  _each_in_range(m.fir_kernel, 'model.fir_kernel', 0, non_empty=True)
  d = config.diffusion
  in_range(d.num_timesteps, 'diffusion.num_timesteps', 2, integer=True)
  for field in ('beta_start', 'beta_end'):
    in_range(d[field], f'diffusion.{field}', 0, 1, low_open=True, high_open=True)
  in_range(d.hybrid_lambda, 'diffusion.hybrid_lambda', 0, low_open=True)
  in_range(d.mmd_weight, 'diffusion.mmd_weight', 0, low_open=True)
  in_range(d.mmd_simple_weight, 'diffusion.mmd_simple_weight', 0, note=' (0 = MMD alone)')
  _each_in_range(d.mmd_bandwidths, 'diffusion.mmd_bandwidths', 0, low_open=True, non_empty=True)
  for field in ('beta_min', 'beta_max', 'sigma_min', 'sigma_max'):
    in_range(d[field], f'diffusion.{field}', 0, low_open=True)
  in_range(d.num_scales, 'diffusion.num_scales', 2, integer=True)
  in_range(d.train_eps, 'diffusion.train_eps', 0, 1, low_open=True, high_open=True)
  t = config.training
  in_range(t.num_epochs, 'training.num_epochs', 0, note=' (used when num_train_steps is 0)')
  in_range(t.ema_decay, 'training.ema_decay', 0, 1, high_open=True)
  in_range(t.cond_drop_prob, 'training.cond_drop_prob', 0, 1, high_open=True,
            note=' (1 would never train the conditional model)')
  in_range(t.importance_uniform_prob, 'training.importance_uniform_prob', 0, 1)
  in_range(t.fid_num_samples, 'training.fid_num_samples', 2, integer=True)
  o = config.optim
  in_range(o.lr, 'optim.lr', 0, low_open=True)
  in_range(o.beta1, 'optim.beta1', 0, 1, high_open=True)
  in_range(o.beta2, 'optim.beta2', 0, 1, high_open=True)
  in_range(o.eps, 'optim.eps', 0, low_open=True)
  in_range(o.grad_clip, 'optim.grad_clip', 0, note=' (0 = no clipping)')
  s = config.sampling
  in_range(s.ddim_eta, 'sampling.ddim_eta', 0, note=' (0 = deterministic)')
  in_range(s.guidance_scale, 'sampling.guidance_scale', 0, note=' (0 = no guidance)')
  _each_in_range(s.eval_guidance_scales, 'sampling.eval_guidance_scales', 0)
  _each_in_range(s.classes, 'sampling.classes', 0, integer=True)
  for field in ('sampling.num_steps', 'sampling.n_steps_each', 'sampling.ode_max_steps'):
    in_range(_get(config, field), field, 1, integer=True)
  for field in ('sampling.snr', 'sampling.ode_rtol', 'sampling.ode_atol'):
    in_range(_get(config, field), field, 0, low_open=True)
  in_range(config.figures.num_frames, 'figures.num_frames', 2, integer=True, note=' (the noise and the sample)')
  e = config.eval
  in_range(e.kid_subset_size, 'eval.kid_subset_size', 2, integer=True)
  in_range(e.kid_reference_size, 'eval.kid_reference_size', 2, integer=True)


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
  require(d.beta_start <= d.beta_end,
           f'config.diffusion.beta_start={d.beta_start} exceeds beta_end={d.beta_end}: it must be '
           f'0 < beta_start <= beta_end < 1.')
  t = config.training
  require(t.num_train_steps > 0 or t.num_epochs > 0,
           'Set config.training.num_train_steps or config.training.num_epochs to a positive value.')
  _one_of(t.timestep_sampler, diffusion.TIMESTEP_SAMPLERS, 'config.training.timestep_sampler')
  if t.timestep_sampler == 'importance':
    require(d.loss != 'mmd', 'config.training.timestep_sampler=importance reweights per-example losses, '
             'but the MMD of loss=mmd is a batch statistic: use timestep_sampler=uniform with loss=mmd.')
  _one_of(config.optim.optimizer, train_state.OPTIMIZERS, 'config.optim.optimizer')
  s = config.sampling
  for name, steps in [(s.sampler, None)] + sweep_entries(config.eval.sampler_sweep):
    _check_sampler(config, name, steps)
  _one_of(config.eval.hutchinson, ode.HUTCHINSON_TYPES, 'config.eval.hutchinson')
  for name in config.eval.feature_nets:
    _one_of(name, FEATURE_NETS, 'feature network in config.eval.feature_nets')
  _check_throughput(config)
  _check_conditioning(config)
  _check_edit(config)
  _check_knobs_apply(config)


def _check_process(config: ml_collections.ConfigDict) -> None:
  """The diffusion process names a registered one, which checks its own settings."""
  _one_of(config.diffusion.process, tuple(processes.PROCESSES), 'config.diffusion.process')
  processes.process_class(config.diffusion.process).check(config)


def sweep_entries(sweep) -> list[tuple[str, int | None]]:
  """config.eval.sampler_sweep's entries 'SAMPLER' or 'SAMPLER:STEPS' as (name, steps or None)."""
  entries = []
  for entry in sweep:
    name, _, steps = str(entry).partition(':')
    require(not steps or steps.isdigit() and int(steps) >= 1,
             f'config.eval.sampler_sweep entry {entry!r} is not SAMPLER or SAMPLER:STEPS (STEPS a positive '
             f'integer), e.g. dpm_solver_pp_2m:20.')
    entries.append((name, int(steps) if steps else None))
  return entries


def _check_sampler(config: ml_collections.ConfigDict, name: str, steps: int | None) -> None:
  """A sampler (config.sampling.sampler, or an entry of config.eval.sampler_sweep) is registered and
  fits the process, the network and its knobs (its own check)."""
  _one_of(name, tuple(samplers.SAMPLERS), 'sampler')
  samplers.sampler_class(name).check(config, processes.process_class(config.diffusion.process), steps)


def _check_throughput(config: ml_collections.ConfigDict) -> None:
  """Steps per compiled call, compute dtype, hosts."""
  t, dist = config.training, config.distributed
  for field in ('log_every_steps', 'checkpoint_every_steps', 'sample_every_steps', 'fid_every_steps'):
    require(t[field] % t.n_jitted_steps == 0,
             f'config.training.{field}={t[field]} is not a multiple of config.training.n_jitted_steps='
             f'{t.n_jitted_steps}, which runs that many steps per call: make it a multiple.')
  _one_of(t.compute_dtype, precision.COMPUTE_DTYPES, 'config.training.compute_dtype')
  if dist.coordinator_address not in ('', 'auto'):
    require(':' in dist.coordinator_address, f'config.distributed.coordinator_address='
             f'{dist.coordinator_address!r} must be host:port (or \'auto\', or \'\' for one host).')
  check_batch_divides(t.batch_size, dist.num_processes, 'config.training.batch_size', 'hosts')
  require(t.batch_size % t.grad_accum_steps == 0,
           f'config.training.batch_size={t.batch_size} does not split into config.training.grad_accum_steps='
           f'{t.grad_accum_steps} micro-batches: use a batch size that is a multiple of it.')
  require(t.grad_accum_steps == 1 or config.diffusion.loss != 'mmd',
           'config.training.grad_accum_steps > 1 would compute the MMD of loss=mmd per micro-batch, a '
           'different loss from the whole batch\'s: set grad_accum_steps=1 with loss=mmd.')


def _check_conditioning(config: ml_collections.ConfigDict) -> None:
  """Class-conditional settings: requested classes, the class count of the dataset."""
  num_classes, s = config.model.num_classes, config.sampling
  if not num_classes:
    require(not s.classes, 'config.sampling.classes needs a class-conditional network: set '
             'config.model.num_classes (the dataset\'s class count) and train with labels.')
    return
  bad = [c for c in s.classes if not 0 <= c < num_classes]
  require(not bad, f'config.sampling.classes {bad} are not classes of the network (0 to {num_classes - 1}).')
  if config.data.dataset in data.FIXED_NUM_CLASSES:
    expected = data.FIXED_NUM_CLASSES[config.data.dataset]
    require(num_classes == expected, f'config.model.num_classes={num_classes}, but {config.data.dataset} has '
             f'{expected} classes: set --config.model.num_classes={expected}.')


def _check_loss(config: ml_collections.ConfigDict) -> None:
  """Losses whose settings cannot train what the config asks for."""
  d = config.diffusion
  learned = d.model_var_type == 'learned_range'
  require(not (learned and d.loss in ('simple', 'mmd')),
           f'config.diffusion.model_var_type=learned_range needs a loss that trains the variance '
           f'(kl or hybrid); loss={d.loss} leaves it untrained. Set config.diffusion.loss=hybrid, or a '
           f'fixed model_var_type (fixedlarge, fixedsmall).')
  require(d.loss != 'hybrid' or learned,
           'config.diffusion.loss=hybrid adds a bound term that only trains a learned variance: set '
           'config.diffusion.model_var_type=learned_range, or use loss=simple (hybrid equals it here).')
  if d.loss == 'mmd':
    require(config.training.batch_size >= 2, 'loss=mmd compares samples within a batch: '
             'config.training.batch_size must be at least 2.')


# Cross-cutting knobs that act only in some configs: field -> (applies(config), what it needs). The
# knobs of processes and samplers are theirs (Process.knobs / conditional_knobs, Sampler.knobs); a
# knob changed from its value in configs/default.py where nothing reads it is refused, not ignored.
# The networks' own fields (widths of unet_simple, ch of the level UNets, ...) are not refused on
# other networks: shipped configs derive one network's config from another's (cifar10_resnet from
# cifar10_simple) and keep its fields.
_CONDITIONAL = (lambda c: c.model.num_classes > 0,
                'a class-conditional network: set config.model.num_classes (the dataset\'s class count)')
_STREAMING = (lambda c: c.data.pipeline == 'streaming', 'config.data.pipeline=streaming')
_ODE_LIKELIHOOD = (lambda c: c.eval.ode_bpd_num_examples > 0, 'config.eval.ode_bpd_num_examples > 0')
CROSS_CUTTING_KNOBS = {
    'edit.keep_fraction': (lambda c: c.edit.operation == 'inpaint' and c.edit.mask == 'random_pixels',
                           'config.edit.operation=inpaint with config.edit.mask=random_pixels'),
    'edit.scale_factor': (lambda c: c.edit.operation == 'super_resolution', 'config.edit.operation=super_resolution'),
    'sampling.guidance_scale': _CONDITIONAL,
    'sampling.eval_guidance_scales': _CONDITIONAL,
    'training.cond_drop_prob': _CONDITIONAL,
    'training.init_ema': (lambda c: bool(c.training.init_from), 'config.training.init_from'),
    'training.fid_num_samples': (lambda c: c.training.fid_every_steps > 0, 'config.training.fid_every_steps > 0'),
    'eval.hutchinson': _ODE_LIKELIHOOD,
    # The ODE likelihood solves with the ODE sampler's knobs.
    **{field: _ODE_LIKELIHOOD for field in samplers.ode.ODE_KNOBS},
    'data.num_workers': _STREAMING,
    'data.worker_threads': _STREAMING,
    'data.prefetch_batches': _STREAMING,
}


def _check_edit(config: ml_collections.ConfigDict) -> None:
  """--mode=edit's settings (config.edit): the operation, its mask or block size, the images' channels."""
  e = config.edit
  _one_of(e.operation, editing.OPERATIONS, 'config.edit.operation')
  in_range(e.keep_fraction, 'edit.keep_fraction', 0, 1, low_open=True, high_open=True)
  in_range(e.scale_factor, 'edit.scale_factor', min(editing.SCALE_FACTORS), max(editing.SCALE_FACTORS), integer=True)
  require(e.scale_factor in editing.SCALE_FACTORS and config.data.image_size % e.scale_factor == 0,
          f'config.edit.scale_factor={e.scale_factor} must be 2 or 4 and divide config.data.image_size='
          f'{config.data.image_size}: choose one that does.')
  require(e.mask in editing.NAMED_MASKS or str(e.mask).lower().endswith(editing.MASK_FILE_TYPES),
          f'Unknown config.edit.mask {e.mask!r}; valid: {", ".join(editing.NAMED_MASKS)}, or the path of an '
          f'.npz or .png file.')
  require(e.operation != 'colorize' or config.data.num_channels == 3,
          f'config.edit.operation=colorize fills in colours, but config.data.num_channels='
          f'{config.data.num_channels}: it needs RGB images (3 channels).')


def _samplers_used(config) -> set[str]:
  """config.sampling.sampler and the samplers of config.eval.sampler_sweep."""
  return {config.sampling.sampler} | {str(e).partition(':')[0] for e in config.eval.sampler_sweep}


def _knob_needs(field: str) -> str:
  """What makes `field` act, in words: the processes and samplers that read it, and cross-cutting rules."""
  needs = []
  owners = [cls for cls in processes.PROCESSES.values() if field in cls.knobs or field in cls.conditional_knobs]
  if owners:
    conditions = {cls.conditional_knobs[field][1] for cls in owners if field in cls.conditional_knobs}
    needs.append(f'config.diffusion.process={" or ".join(cls.name for cls in owners)}'
                 + (f' with {" or ".join(sorted(conditions))}' if conditions else ''))
  users = [name for name, cls in samplers.SAMPLERS.items() if field in cls.knobs]
  if users:
    needs.append(f'config.sampling.sampler={" or ".join(users)} (or in config.eval.sampler_sweep)')
  if field in CROSS_CUTTING_KNOBS:
    needs.append(CROSS_CUTTING_KNOBS[field][1])
  return ', or '.join(needs)


def knobs_in_use(config: ml_collections.ConfigDict) -> set[str]:
  """Every knob that the config's process, its samplers and the cross-cutting rules read."""
  used = set(processes.process_class(config.diffusion.process).used_knobs(config))
  for name in _samplers_used(config):
    used |= set(samplers.sampler_class(name).knobs)
  return used | {field for field, (applies, _) in CROSS_CUTTING_KNOBS.items() if applies(config)}


def owned_knobs() -> set[str]:
  """Every knob that some process, sampler or cross-cutting rule owns: the ones that are refused where
  unused."""
  owned = set(CROSS_CUTTING_KNOBS)
  for cls in processes.PROCESSES.values():
    owned |= set(cls.knobs) | set(cls.conditional_knobs)
  for cls in samplers.SAMPLERS.values():
    owned |= set(cls.knobs)
  return owned


def _same(value, default) -> bool:
  if isinstance(default, tuple):
    return tuple(value) == default
  return value == default and type(value) is type(default)


def _check_knobs_apply(config: ml_collections.ConfigDict) -> None:
  """Refuses a knob changed from its default where it has no effect."""
  defaults, used = default_config.get_config(), knobs_in_use(config)
  for field in sorted(owned_knobs() - used):
    value, default = _get(config, field), _get(defaults, field)
    require(_same(value, default),
            f'config.{field}={value!r} has no effect here: it needs {_knob_needs(field)}. Leave it at its default '
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
  require(batch_size % num_devices == 0,
           f'{field}={batch_size} does not divide over the {num_devices} {what}: '
           f'use a multiple of {num_devices}.')


def model_defining(config_dict: dict) -> dict:
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
  saved = flatten_dict(model_defining(read_config_file(path)))  # WorkdirFileError when it does not parse.
  current = flatten_dict(model_defining(config_to_dict(config)))
  # A field added to the config after the run was made stood at its default (configs/default.py) then.
  defaults = flatten_dict(model_defining(config_to_dict(default_config.get_config())))
  for k, value in defaults.items():
    if k in current and k not in saved:
      saved[k] = value
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
