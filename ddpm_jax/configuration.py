"""Checks of a config before any compile or data loading, and the workdir's copy of it."""

import json
import os

import ml_collections

from ddpm_jax import atomic_io, data, diffusion, nets, sampling, train_state
from ddpm_jax.errors import ConfigError, DataError, WorkdirError
from ddpm_jax.nets import precision
from ddpm_jax.layout import CONFIG_FILE

# Sections whose change makes existing checkpoints meaningless or unloadable.
MODEL_DEFINING_SECTIONS = ('model', 'diffusion')
MODEL_DEFINING_DATA_FIELDS = ('image_size', 'num_channels')
# Feature networks of ddpm_jax/evaluation/features.py, named here for the config check.
FEATURE_NETS = ('inception', 'classifier')


def _require(ok: bool, message: str) -> None:
  if not ok:
    raise ConfigError(message)


def _one_of(value, valid, field: str) -> None:
  _require(value in valid, f'Unknown {field} {value!r}; valid: {", ".join(map(str, valid))}.')


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError on unknown names and impossible settings; cheap, runs first."""
  _one_of(config.rng_impl, train_state.RNG_IMPLS, 'config.rng_impl')
  try:
    data.check_data_config(config.data)
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
  _check_loss(config)
  _require(d.num_timesteps >= 2, f'config.diffusion.num_timesteps must be at least 2, got {d.num_timesteps}.')
  _require(0 < d.beta_start <= d.beta_end < 1,
           f'config.diffusion needs 0 < beta_start <= beta_end < 1, got {d.beta_start}, {d.beta_end}.')
  t = config.training
  _require(t.batch_size > 0, f'config.training.batch_size must be positive, got {t.batch_size}.')
  _require(t.num_train_steps > 0 or t.num_epochs > 0,
           'Set config.training.num_train_steps or config.training.num_epochs to a positive value.')
  _require(0 <= t.ema_decay < 1, f'config.training.ema_decay must be in [0, 1), got {t.ema_decay}.')
  for field in ('log_every_steps', 'checkpoint_every_steps', 'keep_checkpoints'):
    _require(t[field] > 0, f'config.training.{field} must be positive, got {t[field]}.')
  _require(t.bn_calibration_batches >= 0, 'config.training.bn_calibration_batches must be >= 0.')
  _require(t.sample_every_steps >= 0, 'config.training.sample_every_steps must be >= 0 (0 = never).')
  _require(t.num_preview_samples > 0, 'config.training.num_preview_samples must be positive.')
  _one_of(t.timestep_sampler, diffusion.TIMESTEP_SAMPLERS, 'config.training.timestep_sampler')
  if t.timestep_sampler == 'importance':
    _require(t.importance_history >= 1, 'config.training.importance_history must be at least 1.')
    _require(0 <= t.importance_uniform_prob <= 1, 'config.training.importance_uniform_prob must be in [0, 1].')
    _require(d.loss != 'mmd', 'config.training.timestep_sampler=importance reweights per-example losses, '
             'but the MMD of loss=mmd is a batch statistic: use timestep_sampler=uniform with loss=mmd.')
  o = config.optim
  _one_of(o.optimizer, train_state.OPTIMIZERS, 'config.optim.optimizer')
  _require(o.lr > 0, f'config.optim.lr must be positive, got {o.lr}.')
  _require(o.warmup_steps >= 0 and o.grad_clip >= 0,
           'config.optim.warmup_steps and config.optim.grad_clip must be >= 0.')
  s = config.sampling
  _one_of(s.sampler, sampling.SAMPLERS, 'config.sampling.sampler')
  if s.sampler == 'ddim':  # Only then: short test schedules (T < 50) keep the default ddim_steps.
    _require(1 <= s.ddim_steps <= d.num_timesteps,
             f'config.sampling.ddim_steps={s.ddim_steps} must be between 1 and '
             f'config.diffusion.num_timesteps={d.num_timesteps}: set ddim_steps in that range.')
    _require(s.ddim_eta >= 0, f'config.sampling.ddim_eta must be >= 0, got {s.ddim_eta}.')
    _one_of(s.ddim_spacing, sampling.DDIM_SPACINGS, 'config.sampling.ddim_spacing')
  _require(s.num_samples > 0 and s.batch_size > 0,
           'config.sampling.num_samples and config.sampling.batch_size must be positive.')
  _require(config.cpu_devices >= 0, 'config.cpu_devices must be >= 0 (0 = one per core).')
  _require(config.progress_log_every_seconds >= 0,  # Also refuses NaN.
           f'config.progress_log_every_seconds must be >= 0 (0 = a log line after every batch), got '
           f'{config.progress_log_every_seconds}.')
  e = config.eval
  _require(e.bpd_num_examples >= 0 and e.bpd_batch_size > 0,
           'config.eval.bpd_num_examples must be >= 0 (0 = skip bits/dim) and config.eval.bpd_batch_size positive.')
  _require(e.num_samples >= 0 and e.sample_batch_size > 0 and e.feature_batch_size > 0,
           'config.eval.num_samples must be >= 0 (0 = skip FID) and config.eval.sample_batch_size and '
           'feature_batch_size positive.')
  for name in e.feature_nets:
    _one_of(name, FEATURE_NETS, 'feature network in config.eval.feature_nets')
  _require(e.kid_subsets > 0 and e.kid_subset_size >= 2 and e.kid_reference_size >= 2 and e.is_splits >= 1,
           'config.eval needs kid_subsets > 0, kid_subset_size >= 2, kid_reference_size >= 2 and is_splits >= 1.')
  _require(e.classifier_steps >= 0, 'config.eval.classifier_steps must be >= 0 (0 = the preset).')
  _require(t.fid_every_steps >= 0 and t.fid_num_samples > 0,
           'config.training.fid_every_steps must be >= 0 (0 = never) and fid_num_samples positive.')
  _check_throughput(config)
  _check_conditioning(config)


def _check_throughput(config: ml_collections.ConfigDict) -> None:
  """Steps per compiled call, compute dtype, hosts."""
  t, dist = config.training, config.distributed
  _require(t.n_jitted_steps >= 1, f'config.training.n_jitted_steps must be at least 1, got {t.n_jitted_steps}.')
  _require(t.stop_check_every_steps >= 1,
           f'config.training.stop_check_every_steps must be at least 1, got {t.stop_check_every_steps}.')
  for field in ('log_every_steps', 'checkpoint_every_steps', 'sample_every_steps', 'fid_every_steps'):
    _require(t[field] % t.n_jitted_steps == 0,
             f'config.training.{field}={t[field]} is not a multiple of config.training.n_jitted_steps='
             f'{t.n_jitted_steps}, which runs that many steps per call: make it a multiple.')
  _one_of(t.compute_dtype, precision.COMPUTE_DTYPES, 'config.training.compute_dtype')
  _require(dist.num_processes >= 1 and 0 <= dist.process_id < dist.num_processes,
           f'config.distributed needs num_processes >= 1 and 0 <= process_id < num_processes, got '
           f'{dist.num_processes} and {dist.process_id}.')
  if dist.coordinator_address not in ('', 'auto'):
    _require(':' in dist.coordinator_address, f'config.distributed.coordinator_address='
             f'{dist.coordinator_address!r} must be host:port (or \'auto\', or \'\' for one host).')
  check_batch_divides(t.batch_size, dist.num_processes, 'config.training.batch_size', 'hosts')


def _check_conditioning(config: ml_collections.ConfigDict) -> None:
  """Class-conditional settings: label dropout, guidance scales, requested classes."""
  num_classes, s = config.model.num_classes, config.sampling
  _require(0 <= config.training.cond_drop_prob <= 1,
           f'config.training.cond_drop_prob must be in [0, 1], got {config.training.cond_drop_prob}.')
  _require(s.guidance_scale >= 0 and all(w >= 0 for w in s.eval_guidance_scales),
           'config.sampling.guidance_scale and eval_guidance_scales must be >= 0 (0 = no guidance).')
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
  if d.loss == 'hybrid':
    _require(d.hybrid_lambda > 0, f'config.diffusion.hybrid_lambda must be positive, got {d.hybrid_lambda}.')
  if d.loss == 'mmd':
    _require(d.mmd_weight > 0 and d.mmd_simple_weight >= 0,
             'config.diffusion.mmd_weight must be positive and mmd_simple_weight >= 0 (0 = MMD alone).')
    _require(len(d.mmd_bandwidths) > 0 and min(d.mmd_bandwidths) > 0,
             f'config.diffusion.mmd_bandwidths must be non-empty and positive, got {tuple(d.mmd_bandwidths)}.')
    _require(config.training.batch_size >= 2, 'loss=mmd compares samples within a batch: '
             'config.training.batch_size must be at least 2.')


def check_batches_divide(config: ml_collections.ConfigDict, num_devices: int, evaluating: bool = False) -> None:
  """Each batch splits evenly over the devices: training, sampling and previews, and with
  `evaluating` (--mode=eval) the evaluation's batches too."""
  fields = [('training', 'batch_size'), ('sampling', 'batch_size'), ('training', 'num_preview_samples')]
  if evaluating:
    fields += [('eval', 'bpd_batch_size'), ('eval', 'sample_batch_size')]
  for section, name in fields:
    check_batch_divides(config[section][name], num_devices, f'config.{section}.{name}')


def check_batch_divides(batch_size: int, num_devices: int, field: str, what: str = 'devices') -> None:
  _require(batch_size % num_devices == 0,
           f'{field}={batch_size} does not divide over the {num_devices} {what}: '
           f'use a multiple of {num_devices}.')


def _model_defining(config_dict: dict) -> dict:
  defining = {k: config_dict.get(k) for k in MODEL_DEFINING_SECTIONS}
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
  with open(path) as f:
    saved = flatten_dict(_model_defining(json.load(f)))
  current = flatten_dict(_model_defining(config_to_dict(config)))
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
