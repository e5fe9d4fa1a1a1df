"""Config validation and the workdir's saved config."""

import glob
import importlib
import json
import os
import re

import pytest

from configs import default
from ddpm_jax import configuration, errors, processes, samplers

CONFIG_NAMES = sorted(os.path.basename(p)[:-3] for p in glob.glob(
    os.path.join(os.path.dirname(__file__), '..', 'configs', '*.py')) if not p.endswith('__init__.py'))


@pytest.mark.parametrize('name', CONFIG_NAMES)
def test_every_shipped_config_is_valid(name):
  configuration.validate_config(importlib.import_module(f'configs.{name}').get_config())


@pytest.mark.parametrize('field,value,message', [
    ('data.dataset', 'imagenet', 'valid: mnist, fashion_mnist'),
    ('model.name', 'resnet', 'valid: unet_simple'),
    ('diffusion.schedule', 'cosine2', 'valid: linear'),
    ('diffusion.model_var_type', 'learned', 'valid: fixedlarge, fixedsmall'),
    ('diffusion.loss', 'l1', 'valid: simple'),
    ('optim.optimizer', 'sgd', 'valid: adam'),
    ('sampling.sampler', 'ddpm', 'valid: ancestral, ddim'),
    ('diffusion.schedule', 'squaredcos', 'valid: linear, quad, cosine, sigmoid, const, jsd'),
    ('data.image_size', 30, 'divisible by 4'),
    ('data.num_channels', 2, r'num_channels must be 1 \(greyscale\) or 3'),
    ('optim.lr', 0.0, r'config.optim.lr=0.0 is out of range: it must be in \(0, inf\)'),
    ('optim.lr', -1e-3, r'lr=-0.001 is out of range'),
    ('training.batch_size', 0, r'batch_size=0 is out of range: it must be in \[1, inf\)'),
    ('training.ema_decay', 1.0, 'ema_decay'),
    ('diffusion.num_timesteps', 1, r'num_timesteps=1 is out of range: it must be in \[2, inf\)'),
    ('diffusion.beta_end', 1.5, r'beta_end=1.5 is out of range: it must be in \(0, 1\)'),
    ('diffusion.beta_end', 5e-5, r'beta_start=0.0001 exceeds beta_end=5e-05'),
    ('training.checkpoint_every_steps', 0, 'checkpoint_every_steps=0 is out of range'),
    ('sampling.num_samples', 0, 'num_samples'),
])
def test_bad_values_name_the_field_and_the_valid_choices(field, value, message):
  config = default.get_config()
  section, key = field.split('.')
  config[section][key] = value
  with pytest.raises(errors.ConfigError, match=message):
    configuration.validate_config(config)


@pytest.mark.parametrize('field,value,message', [
    ('ddim_steps', 0, r'ddim_steps=0 is out of range: it must be in \[1, inf\)'),
    ('ddim_steps', 1001, 'ddim_steps=1001 must be between 1 and config.diffusion.num_timesteps=1000'),
    ('ddim_eta', -0.5, r'ddim_eta=-0.5 is out of range: it must be in \[0, inf\)'),
    ('ddim_spacing', 'linear', 'valid: uniform, quad'),
])
def test_bad_ddim_knobs_are_refused(field, value, message):
  config = default.get_config()
  config.sampling.sampler = 'ddim'
  configuration.validate_config(config)
  config.sampling[field] = value
  with pytest.raises(errors.ConfigError, match=message):
    configuration.validate_config(config)
  config.sampling.sampler = 'ancestral'  # Out of range, or else of no effect: refused either way.
  with pytest.raises(errors.ConfigError):
    configuration.validate_config(config)


@pytest.mark.parametrize('schedule', ['linear', 'quad', 'cosine', 'sigmoid', 'const', 'jsd'])
def test_every_schedule_name_is_accepted(schedule):
  config = default.get_config()
  config.diffusion.schedule = schedule
  configuration.validate_config(config)


def test_training_length_must_be_set():
  config = default.get_config()
  config.training.num_train_steps, config.training.num_epochs = 0, 0.0
  with pytest.raises(errors.ConfigError, match='num_train_steps or config.training.num_epochs'):
    configuration.validate_config(config)


def test_batch_must_divide_over_devices():
  configuration.check_batch_divides(64, 8, 'config.training.batch_size')
  with pytest.raises(errors.ConfigError, match='multiple of 8'):
    configuration.check_batch_divides(60, 8, 'config.training.batch_size')


def test_every_batch_of_the_mode_must_divide_over_devices():
  config = default.get_config()
  config.training.batch_size = config.sampling.batch_size = config.training.num_preview_samples = 64
  config.eval.bpd_batch_size, config.eval.sample_batch_size = 100, 500
  configuration.check_batches_divide(config, 8)  # Training and sampling: eval's batches do not matter.
  with pytest.raises(errors.ConfigError, match=r'config.eval.bpd_batch_size=100 does not divide over the 8'):
    configuration.check_batches_divide(config, 8, evaluating=True)
  for section, name in (('training', 'batch_size'), ('sampling', 'batch_size'), ('training', 'num_preview_samples')):
    broken = default.get_config()
    broken[section][name] = 12
    with pytest.raises(errors.ConfigError, match=f'config.{section}.{name}=12 does not divide over the 8'):
      configuration.check_batches_divide(broken, 8)


def test_workdir_refuses_a_different_model_but_not_other_changes(tmp_path):
  config = default.get_config()
  configuration.save_config(config, str(tmp_path))
  configuration.check_workdir_config(config, str(tmp_path))
  config.optim.lr = 1e-3
  config.training.num_train_steps = 10
  configuration.check_workdir_config(config, str(tmp_path))
  config.model.widths = (8, 16, 16, 8, 8)
  with pytest.raises(errors.WorkdirError, match=r'model.widths: \[64, 128, 128, 64, 32\] -> \[8, 16'):
    configuration.check_workdir_config(config, str(tmp_path))


def test_a_model_change_is_allowed_when_forced_and_listed(tmp_path):
  config = default.get_config()
  configuration.save_config(config, str(tmp_path))
  assert configuration.check_workdir_config(config, str(tmp_path), allow_model_change=True) == []
  config.diffusion.schedule = 'cosine'
  config.data.image_size = 32
  with pytest.raises(errors.WorkdirError, match='or --force_workdir_config to continue from its checkpoints'):
    configuration.check_workdir_config(config, str(tmp_path))
  assert configuration.check_workdir_config(config, str(tmp_path), allow_model_change=True) == [
      "data.image_size: 28 -> 32", "diffusion.schedule: 'linear' -> 'cosine'"]


def test_remat_is_no_model_change_and_a_config_saved_without_it_resumes(tmp_path):
  config = default.get_config()
  configuration.save_config(config, str(tmp_path))
  config.model.remat = True  # Same params and outputs: a run may switch it on to fit in memory.
  assert configuration.check_workdir_config(config, str(tmp_path)) == []
  saved = configuration.config_to_dict(default.get_config())
  del saved['model']['remat']  # A workdir of a version without the knob.
  with open(tmp_path / 'config.json', 'w') as f:
    json.dump(saved, f)
  assert configuration.check_workdir_config(config, str(tmp_path)) == []


def test_gradient_accumulation_needs_micro_batches_that_divide_and_a_per_example_loss():
  config = default.get_config()
  config.training.batch_size, config.training.grad_accum_steps = 32, 4
  configuration.validate_config(config)
  configuration.check_batches_divide(config, 8)
  with pytest.raises(errors.ConfigError, match=r'The micro-batch config.training.batch_size / grad_accum_steps=8 '
                     r'does not divide over the 16 devices'):
    configuration.check_batches_divide(config, 16)
  config.diffusion.loss = 'mmd'
  with pytest.raises(errors.ConfigError, match='grad_accum_steps > 1 would compute the MMD of loss=mmd per micro-batch'):
    configuration.validate_config(config)


def test_check_workdir_accepts_a_new_workdir(tmp_path):
  configuration.check_workdir_config(default.get_config(), str(tmp_path / 'new'))


@pytest.mark.parametrize('value,valid', [(0.0, True), (30.0, True), (float('inf'), True),
                                         (-1.0, False), (float('nan'), False)])
def test_progress_log_interval_is_a_number_of_seconds_at_least_zero(value, valid):
  config = default.get_config()
  config.progress_log_every_seconds = value
  if valid:
    configuration.validate_config(config)
  else:
    with pytest.raises(errors.ConfigError, match=r'config.progress_log_every_seconds=(-1.0|nan) is out of range: it must be in \[0, inf\]'):
      configuration.validate_config(config)


# Bad values across every section: (field, value, the field and range the one-line message names).
NAN, INF = float('nan'), float('inf')
OUT_OF_RANGE = [
    ('seed', -1, r'config.seed=-1 is out of range: it must be in \[0, 4294967295\]'),
    ('seed', 2 ** 32, r'config.seed=4294967296 is out of range: it must be in \[0, 4294967295\]'),
    ('seed', 2 ** 70, r'config.seed=1180591620717411303424 is out of range'),
    ('seed', True, r'config.seed=True is not an integer: it must be an integer in \[0, 4294967295\]'),
    ('cpu_devices', -1, r'config.cpu_devices=-1 is out of range: it must be in \[0, inf\) \(0 = one per core\)'),
    ('progress_log_every_seconds', -INF, r'progress_log_every_seconds=-inf is out of range: it must be in \[0, inf\]'),
    ('distributed.num_processes', 0, r'config.distributed.num_processes=0 is out of range: it must be in \[1, inf\)'),
    ('distributed.process_id', -1, r'config.distributed.process_id=-1 is out of range: it must be in \[0, inf\)'),
    ('distributed.process_id', 1, r'config.distributed.process_id=1 is out of range: it must be in \[0, 0\]'),
    ('data.image_size', 0, r'config.data.image_size=0 is out of range: it must be in \[1, inf\)'),
    ('data.num_channels', 0, r'config.data.num_channels=0 is out of range: it must be in \[1, 3\] \(1 or 3\)'),
    ('data.num_channels', True, r'config.data.num_channels=True is not an integer'),
    ('data.classes', (1, -2), r'config.data.classes\[1\]=-2 is out of range: it must be in \[0, inf\)'),
    ('model.widths', (0, 0, 0, 0, 0), r'config.model.widths\[0\]=0 is out of range: it must be in \[1, inf\)'),
    ('model.widths', (8, 16, -16, 8, 8), r'config.model.widths\[2\]=-16 is out of range'),
    ('model.widths', (), r'config.model.widths=\(\) is empty'),
    ('model.time_embed_dim', 2, r'config.model.time_embed_dim=2 is out of range: it must be in \[4, inf\), even'),
    ('model.time_embed_dim', 127, r'config.model.time_embed_dim=127 is out of range: it must be an even integer >= 4'),
    ('model.batch_norm_momentum', 1.0, r'config.model.batch_norm_momentum=1.0 is out of range: it must be in \[0, 1\)'),
    ('model.batch_norm_momentum', NAN, r'batch_norm_momentum=nan is out of range'),
    ('model.ch', 0, r'config.model.ch=0 is out of range: it must be in \[1, inf\)'),
    ('model.ch_mult', (1, 0), r'config.model.ch_mult\[1\]=0 is out of range'),
    ('model.num_res_blocks', -1, r'config.model.num_res_blocks=-1 is out of range'),
    ('model.attn_resolutions', (0,), r'config.model.attn_resolutions\[0\]=0 is out of range'),
    ('model.num_heads', 0, r'config.model.num_heads=0 is out of range: it must be in \[1, inf\)'),
    ('model.dropout', 1.0, r'config.model.dropout=1.0 is out of range: it must be in \[0, 1\)'),
    ('model.dropout', -0.1, r'config.model.dropout=-0.1 is out of range'),
    ('model.norm_groups', 0, r'config.model.norm_groups=0 is out of range'),
    ('model.norm_eps', 0.0, r'config.model.norm_eps=0.0 is out of range: it must be in \(0, inf\)'),
    ('model.norm_eps', INF, r'config.model.norm_eps=inf is out of range'),
    ('model.time_mlp_dim', 0, r'config.model.time_mlp_dim=0 is out of range'),
    ('model.num_classes', -1, r'config.model.num_classes=-1 is out of range: it must be in \[0, inf\) \(0 = unconditional\)'),
    ('diffusion.num_timesteps', 0, r'config.diffusion.num_timesteps=0 is out of range: it must be in \[2, inf\)'),
    ('diffusion.beta_start', 0.0, r'config.diffusion.beta_start=0.0 is out of range: it must be in \(0, 1\)'),
    ('diffusion.beta_start', NAN, r'config.diffusion.beta_start=nan is out of range'),
    ('diffusion.beta_end', 1.0, r'config.diffusion.beta_end=1.0 is out of range: it must be in \(0, 1\)'),
    ('diffusion.hybrid_lambda', INF, r'config.diffusion.hybrid_lambda=inf is out of range: it must be in \(0, inf\)'),
    ('diffusion.mmd_weight', 0.0, r'config.diffusion.mmd_weight=0.0 is out of range'),
    ('diffusion.mmd_simple_weight', -1.0, r'mmd_simple_weight=-1.0 is out of range: it must be in \[0, inf\) \(0 = MMD alone\)'),
    ('diffusion.mmd_bandwidths', (0.1, 0.0), r'config.diffusion.mmd_bandwidths\[1\]=0.0 is out of range'),
    ('diffusion.mmd_bandwidths', (), r'config.diffusion.mmd_bandwidths=\(\) is empty'),
    ('diffusion.beta_min', 0.0, r'config.diffusion.beta_min=0.0 is out of range: it must be in \(0, inf\)'),
    ('diffusion.beta_max', -1.0, r'config.diffusion.beta_max=-1.0 is out of range: it must be in \(0, inf\)'),
    ('diffusion.sigma_min', 0.0, r'config.diffusion.sigma_min=0.0 is out of range: it must be in \(0, inf\)'),
    ('diffusion.sigma_max', INF, r'config.diffusion.sigma_max=inf is out of range: it must be in \(0, inf\)'),
    ('diffusion.num_scales', 1, r'config.diffusion.num_scales=1 is out of range: it must be in \[2, inf\)'),
    ('diffusion.train_eps', 0.0, r'config.diffusion.train_eps=0.0 is out of range: it must be in \(0, 1\)'),
    ('diffusion.train_eps', 1.0, r'config.diffusion.train_eps=1.0 is out of range: it must be in \(0, 1\)'),
    ('training.batch_size', -8, r'config.training.batch_size=-8 is out of range'),
    ('training.num_train_steps', -5, r'config.training.num_train_steps=-5 is out of range: it must be in \[0, inf\)'),
    ('training.num_epochs', INF, r'config.training.num_epochs=inf is out of range: it must be in \[0, inf\)'),
    ('training.num_epochs', NAN, r'config.training.num_epochs=nan is out of range'),
    ('training.ema_decay', 1.0, r'config.training.ema_decay=1.0 is out of range: it must be in \[0, 1\)'),
    ('training.ema_decay', NAN, r'config.training.ema_decay=nan is out of range'),
    ('training.cond_drop_prob', 1.0, r'config.training.cond_drop_prob=1.0 is out of range: it must be in \[0, 1\)'),
    ('training.importance_history', 0, r'config.training.importance_history=0 is out of range'),
    ('training.importance_uniform_prob', 1.5, r'importance_uniform_prob=1.5 is out of range: it must be in \[0, 1\]'),
    ('training.bn_calibration_batches', -1, r'config.training.bn_calibration_batches=-1 is out of range'),
    ('training.log_every_steps', 0, r'config.training.log_every_steps=0 is out of range'),
    ('training.keep_checkpoints', 0, r'config.training.keep_checkpoints=0 is out of range: it must be in \[1, inf\)'),
    ('training.sample_every_steps', -1, r'config.training.sample_every_steps=-1 is out of range: it must be in \[0, inf\) \(0 = never\)'),
    ('training.num_preview_samples', 0, r'config.training.num_preview_samples=0 is out of range'),
    ('training.fid_every_steps', -100, r'config.training.fid_every_steps=-100 is out of range'),
    ('training.fid_num_samples', 1, r'config.training.fid_num_samples=1 is out of range: it must be in \[2, inf\)'),
    ('training.n_jitted_steps', 0, r'config.training.n_jitted_steps=0 is out of range'),
    ('training.grad_accum_steps', 0, r'config.training.grad_accum_steps=0 is out of range: it must be in \[1, inf\)'),
    ('training.grad_accum_steps', 3, r'config.training.batch_size=128 does not split into config.training.grad_accum_steps=3'),
    ('training.stop_check_every_steps', 0, r'config.training.stop_check_every_steps=0 is out of range'),
    ('optim.lr', INF, r'config.optim.lr=inf is out of range: it must be in \(0, inf\)'),
    ('optim.lr', NAN, r'config.optim.lr=nan is out of range: it must be in \(0, inf\)'),
    ('optim.beta1', -0.1, r'config.optim.beta1=-0.1 is out of range: it must be in \[0, 1\)'),
    ('optim.beta2', 1.0, r'config.optim.beta2=1.0 is out of range: it must be in \[0, 1\)\.'),
    ('optim.eps', 0.0, r'config.optim.eps=0.0 is out of range: it must be in \(0, inf\)'),
    ('optim.warmup_steps', -1, r'config.optim.warmup_steps=-1 is out of range: it must be in \[0, inf\)'),
    ('optim.grad_clip', NAN, r'config.optim.grad_clip=nan is out of range: it must be in \[0, inf\) \(0 = no clipping\)'),
    ('optim.grad_clip', INF, r'config.optim.grad_clip=inf is out of range'),
    ('sampling.ddim_steps', 0, r'config.sampling.ddim_steps=0 is out of range'),
    ('sampling.ddim_eta', INF, r'config.sampling.ddim_eta=inf is out of range'),
    ('sampling.num_samples', 0, r'config.sampling.num_samples=0 is out of range'),
    ('sampling.batch_size', 0, r'config.sampling.batch_size=0 is out of range'),
    ('sampling.progress_every', -1, r'config.sampling.progress_every=-1 is out of range: it must be in \[0, inf\) \(0 = once per batch\)'),
    ('sampling.guidance_scale', -1.0, r'config.sampling.guidance_scale=-1.0 is out of range: it must be in \[0, inf\)'),
    ('sampling.guidance_scale', NAN, r'config.sampling.guidance_scale=nan is out of range'),
    ('sampling.eval_guidance_scales', (0.0, INF), r'config.sampling.eval_guidance_scales\[1\]=inf is out of range'),
    ('sampling.classes', (-1,), r'config.sampling.classes\[0\]=-1 is out of range'),
    ('sampling.num_steps', 0, r'config.sampling.num_steps=0 is out of range: it must be in \[1, inf\)'),
    ('sampling.n_steps_each', 0, r'config.sampling.n_steps_each=0 is out of range: it must be in \[1, inf\)'),
    ('sampling.ode_max_steps', 0, r'config.sampling.ode_max_steps=0 is out of range: it must be in \[1, inf\)'),
    ('sampling.snr', 0.0, r'config.sampling.snr=0.0 is out of range: it must be in \(0, inf\)'),
    ('sampling.ode_rtol', -1e-5, r'config.sampling.ode_rtol=-1e-05 is out of range: it must be in \(0, inf\)'),
    ('sampling.ode_atol', NAN, r'config.sampling.ode_atol=nan is out of range: it must be in \(0, inf\)'),
    ('figures.num_images', 0, r'config.figures.num_images=0 is out of range: it must be in \[1, inf\)'),
    ('figures.num_frames', 1, r'config.figures.num_frames=1 is out of range: it must be in \[2, inf\)'),
    ('eval.bpd_num_examples', -1, r'config.eval.bpd_num_examples=-1 is out of range: it must be in \[0, inf\) \(0 = skip bits/dim\)'),
    ('eval.bpd_batch_size', 0, r'config.eval.bpd_batch_size=0 is out of range'),
    ('eval.num_samples', -1, r'config.eval.num_samples=-1 is out of range'),
    ('eval.sample_batch_size', 0, r'config.eval.sample_batch_size=0 is out of range'),
    ('eval.feature_batch_size', 0, r'config.eval.feature_batch_size=0 is out of range'),
    ('eval.kid_subsets', 0, r'config.eval.kid_subsets=0 is out of range'),
    ('eval.kid_subset_size', 1, r'config.eval.kid_subset_size=1 is out of range: it must be in \[2, inf\)'),
    ('eval.kid_reference_size', 1, r'config.eval.kid_reference_size=1 is out of range'),
    ('eval.is_splits', 0, r'config.eval.is_splits=0 is out of range'),
    ('eval.classifier_steps', -1, r'config.eval.classifier_steps=-1 is out of range'),
    ('eval.ode_bpd_num_examples', -1, r'config.eval.ode_bpd_num_examples=-1 is out of range: it must be in '
                                      r'\[0, inf\) \(0 = skip the ODE bits/dim\)'),
]


def _set(config, field, value):
  section, _, name = field.rpartition('.')
  (config[section] if section else config)[name] = value


def _get_field(config, field):
  section, _, name = field.rpartition('.')
  return (config[section] if section else config)[name]


@pytest.mark.parametrize('field,value,message', OUT_OF_RANGE, ids=[f'{f}={v!r}' for f, v, _ in OUT_OF_RANGE])
def test_values_out_of_range_are_refused_in_one_line_naming_field_value_and_range(field, value, message):
  config = default.get_config()
  _set(config, field, value)
  with pytest.raises(errors.ConfigError, match=message) as raised:
    configuration.validate_config(config)
  assert '\n' not in str(raised.value)


def test_the_table_covers_every_section():
  assert {f.split('.')[0] for f, _, _ in OUT_OF_RANGE if '.' in f} == {
      'distributed', 'data', 'model', 'diffusion', 'training', 'optim', 'sampling', 'figures', 'eval'}
  assert len(OUT_OF_RANGE) >= 40


def _numeric_fields(config, prefix=''):
  for key, value in config.items():
    if hasattr(value, 'items'):
      yield from _numeric_fields(value, f'{prefix}{key}.')
    elif not isinstance(value, (bool, str)) and (
        isinstance(value, (int, float)) or (isinstance(value, tuple) and value and isinstance(value[0], (int, float)))):
      yield f'{prefix}{key}'


def test_every_numeric_knob_refuses_nan_or_a_wrong_type():
  """Each numeric field (and tuple of numbers) of default.py is range-checked: NaN for floats, a
  bool for integers (ml_collections accepts True in an int field)."""
  for field in _numeric_fields(default.get_config()):
    config = default.get_config()
    section, _, name = field.rpartition('.')
    value = (config[section] if section else config)[name]
    sample = value[0] if isinstance(value, tuple) else value
    bad = NAN if isinstance(sample, float) else True
    _set(config, field, (bad,) * max(len(value), 1) if isinstance(value, tuple) else bad)
    with pytest.raises(errors.ConfigError, match=r'config\.' + field.replace('.', r'\.')):
      configuration.validate_config(config)


@pytest.mark.parametrize('seed', [0, 1, 2 ** 32 - 1])
def test_the_seed_range_is_what_jax_random_key_keeps(seed):
  import jax  # pylint: disable=g-import-not-at-top
  config = default.get_config()
  config.seed = seed
  configuration.validate_config(config)
  key_data = jax.random.key_data(jax.random.key(seed, impl='threefry2x32'))
  assert int(key_data[-1]) == seed  # All 32 bits kept: distinct seeds, distinct keys.
  # One past the range: jax.random.key keeps the low 32 bits, so 2**32 would repeat seed 0.
  assert (jax.random.key_data(jax.random.key(2 ** 32, impl='threefry2x32')) ==
          jax.random.key_data(jax.random.key(0, impl='threefry2x32'))).all()


_USES = r'config.sampling.sampler={} \(or in config.eval.sampler_sweep\)'
_USES_DDIM, _USES_PC = _USES.format('ddim'), _USES.format('pc')


@pytest.mark.parametrize('field,value,needs', [
    ('sampling.guidance_scale', 3.0, 'a class-conditional network'),
    ('sampling.eval_guidance_scales', (0.0, 2.0), 'a class-conditional network'),
    ('training.cond_drop_prob', 0.2, 'a class-conditional network'),
    ('sampling.ddim_steps', 100, _USES_DDIM),
    ('sampling.ddim_eta', 1.0, _USES_DDIM),
    ('sampling.ddim_spacing', 'quad', _USES_DDIM),
    ('sampling.ddim_clipped_eps', False, _USES_DDIM),
    ('diffusion.hybrid_lambda', 0.01, 'config.diffusion.process=ddpm with config.diffusion.loss=hybrid'),
    ('diffusion.mmd_weight', 2.0, 'config.diffusion.process=ddpm with config.diffusion.loss=mmd'),
    ('diffusion.mmd_simple_weight', 0.0, 'config.diffusion.process=ddpm with config.diffusion.loss=mmd'),
    ('diffusion.mmd_bandwidths', (1.0,), 'config.diffusion.process=ddpm with config.diffusion.loss=mmd'),
    ('training.importance_history', 5, 'config.diffusion.process=ddpm with config.training.timestep_sampler=importance'),
    ('training.importance_uniform_prob', 0.01,
     'config.diffusion.process=ddpm with config.training.timestep_sampler=importance'),
    ('training.init_ema', False, 'config.training.init_from'),
    ('training.fid_num_samples', 500, r'config.training.fid_every_steps > 0'),
    # The score-based half: each knob of a process or sampler, changed under another (processes in
    # name order, samplers in registry order).
    ('diffusion.num_scales', 10, r'config.diffusion.process=edm or subvpsde or vesde or vpsde\.'),
    ('diffusion.train_eps', 1e-3, r'config.diffusion.process=subvpsde or vesde or vpsde\.'),
    ('diffusion.likelihood_weighting', True, r'config.diffusion.process=subvpsde or vesde or vpsde\.'),
    ('diffusion.beta_max', 10.0, r'config.diffusion.process=subvpsde or vpsde\.'),
    ('diffusion.sigma_max', 80.0, r'config.diffusion.process=edm or vesde\.'),
    ('diffusion.sigma_data', 1.0, r'config.diffusion.process=edm\.'),
    ('diffusion.p_mean', -1.0, r'config.diffusion.process=edm\.'),
    ('diffusion.p_std', 1.0, r'config.diffusion.process=edm\.'),
    ('sampling.snr', 0.2, _USES_PC),
    ('sampling.n_steps_each', 2, _USES_PC),
    ('sampling.predictor', 'euler_maruyama', _USES_PC),
    ('sampling.corrector', 'none', _USES_PC),
    ('sampling.num_steps', 10, _USES.format('dpm_solver_pp_2m or sde_dpm_solver_pp_2m or edm_heun or edm_stochastic or '
                                            'euler or heun or unipc')),
    ('sampling.spacing', 'uniform', _USES.format('dpm_solver_pp_2m or sde_dpm_solver_pp_2m or euler or heun or unipc')),
    ('sampling.denoise', False, _USES.format('ode or pc')),
    ('sampling.rho', 5.0, _USES.format('edm_heun or edm_stochastic')),
    ('sampling.s_churn', 0.0, _USES.format('edm_stochastic')),
    ('sampling.s_tmin', 0.0, _USES.format('edm_stochastic')),
    ('sampling.s_tmax', float('inf'), _USES.format('edm_stochastic')),
    ('sampling.s_noise', 1.0, _USES.format('edm_stochastic')),
    ('sampling.ode_rtol', 1e-3, r'config.sampling.sampler=ode \(or in config.eval.sampler_sweep\), or '
                                r'config.eval.ode_bpd_num_examples > 0'),
    ('sampling.ode_max_steps', 100, 'config.sampling.sampler=ode'),
    ('eval.hutchinson', 'gaussian', r'config.eval.ode_bpd_num_examples > 0'),
])
def test_a_changed_knob_without_effect_is_refused_not_ignored(field, value, needs):
  config = default.get_config()
  _set(config, field, value)
  with pytest.raises(errors.ConfigError, match=rf'config.{field}=.* has no effect here: it needs {needs}'):
    configuration.validate_config(config)


@pytest.mark.parametrize('schedule', ['cosine', 'jsd'])
def test_betas_are_refused_on_schedules_that_ignore_them(schedule):
  config = default.get_config()
  config.diffusion.schedule = schedule
  configuration.validate_config(config)
  config.diffusion.beta_end = 0.05
  with pytest.raises(errors.ConfigError, match=r'config.diffusion.beta_end=0.05 has no effect here'):
    configuration.validate_config(config)


def test_guidance_and_label_dropout_apply_to_a_conditional_network():
  config = default.get_config()
  config.model.num_classes = 10
  config.sampling.guidance_scale, config.training.cond_drop_prob = 3.0, 0.2
  config.sampling.eval_guidance_scales = (0.0, 2.0)
  configuration.validate_config(config)


# ---------------------------------------------------------------------------
# Knob ownership: each process, sampler and cross-cutting rule declares the config fields it reads
# (Process.knobs / conditional_knobs, Sampler.knobs, configuration.CROSS_CUTTING_KNOBS); configs/default.py
# holds their defaults, and a knob changed where nothing reads it is refused.

def _declared_fields():
  """(who, field) of every field a process, a sampler or a cross-cutting rule declares."""
  for name, cls in processes.PROCESSES.items():
    yield from ((f'process {name}', field) for field in (*cls.knobs, *cls.conditional_knobs))
  for name, cls in samplers.SAMPLERS.items():
    yield from ((f'sampler {name}', field) for field in (*cls.knobs, *filter(None, [cls.steps_field])))
  yield from (('configuration.CROSS_CUTTING_KNOBS', field) for field in configuration.CROSS_CUTTING_KNOBS)


def _default_field_names(config, prefix=''):
  for key, value in config.items():
    if hasattr(value, 'items'):
      yield from _default_field_names(value, f'{prefix}{key}.')
    else:
      yield f'{prefix}{key}'


def test_every_declared_knob_is_a_field_of_configs_default():
  fields = set(_default_field_names(default.get_config()))
  unknown = [(who, field) for who, field in _declared_fields() if field not in fields]
  assert not unknown, unknown
  assert configuration.owned_knobs() <= fields
  assert configuration.owned_knobs() == {field for _, field in _declared_fields()}
  # A sampler's steps (config.eval.sampler_sweep's NAME:STEPS) are one of its own knobs.
  for name, cls in samplers.SAMPLERS.items():
    assert cls.steps_field is None or cls.steps_field in cls.knobs, name


def test_the_default_config_reads_its_process_and_sampler_knobs_only():
  used = configuration.knobs_in_use(default.get_config())
  assert used == set(processes.process_class('ddpm').used_knobs(default.get_config())) | set(
      samplers.sampler_class('ancestral').knobs)
  assert {'diffusion.schedule', 'diffusion.num_timesteps', 'diffusion.beta_start', 'diffusion.beta_end'} <= used
  assert not used & {'diffusion.hybrid_lambda', 'diffusion.sigma_data', 'sampling.rho', 'sampling.num_steps'}


# A valid value other than configs/default.py's, for every owned knob (the test below asks that this
# table covers configuration.owned_knobs(): a new knob needs a row).
CHANGED = {
    'data.num_workers': 3, 'data.prefetch_batches': 3, 'data.worker_threads': 3,
    'edit.keep_fraction': 0.25, 'edit.scale_factor': 4,
    'diffusion.beta_end': 0.03, 'diffusion.beta_max': 15.0, 'diffusion.beta_min': 0.2, 'diffusion.beta_start': 2e-4,
    'diffusion.hybrid_lambda': 0.01, 'diffusion.likelihood_weighting': True, 'diffusion.mmd_bandwidths': (1.0,),
    'diffusion.mmd_simple_weight': 0.0, 'diffusion.mmd_weight': 2.0, 'diffusion.num_scales': 500,
    'diffusion.num_timesteps': 500, 'diffusion.p_mean': -1.0, 'diffusion.p_std': 1.0, 'diffusion.schedule': 'cosine',
    'diffusion.sigma_data': 1.0, 'diffusion.sigma_max': 80.0, 'diffusion.sigma_min': 0.002, 'diffusion.train_eps': 1e-3,
    'eval.hutchinson': 'gaussian',
    'sampling.corrector': 'none', 'sampling.ddim_clipped_eps': False, 'sampling.ddim_eta': 1.0,
    'sampling.ddim_spacing': 'quad', 'sampling.ddim_steps': 100, 'sampling.denoise': False,
    'sampling.eval_guidance_scales': (0.0, 2.0), 'sampling.guidance_scale': 3.0, 'sampling.n_steps_each': 2,
    'sampling.num_steps': 10, 'sampling.ode_atol': 1e-3, 'sampling.ode_max_steps': 100, 'sampling.ode_rtol': 1e-3,
    'sampling.ode_solver': 'tsit5', 'sampling.predictor': 'euler_maruyama', 'sampling.rho': 5.0,
    'sampling.s_churn': 10.0, 'sampling.s_noise': 1.0, 'sampling.s_tmax': float('inf'), 'sampling.s_tmin': 0.0,
    'sampling.snr': 0.2, 'sampling.spacing': 'trailing',
    'training.cond_drop_prob': 0.2, 'training.fid_num_samples': 500, 'training.importance_history': 5,
    'training.importance_uniform_prob': 0.01, 'training.init_ema': False,
}
# What makes a conditional or cross-cutting knob act (with its owner in use).
ENABLED_BY = {
    'diffusion.hybrid_lambda': {'diffusion.loss': 'hybrid', 'diffusion.model_var_type': 'learned_range'},
    **{f'diffusion.{k}': {'diffusion.loss': 'mmd'} for k in ('mmd_weight', 'mmd_simple_weight', 'mmd_bandwidths')},
    **{f'training.{k}': {'training.timestep_sampler': 'importance'}
       for k in ('importance_history', 'importance_uniform_prob')},
    **{k: {'model.num_classes': 10} for k in ('sampling.guidance_scale', 'sampling.eval_guidance_scales',
                                              'training.cond_drop_prob')},
    'training.init_ema': {'training.init_from': '/runs/pretrained'},
    'training.fid_num_samples': {'training.fid_every_steps': 1000},
    'eval.hutchinson': {'eval.ode_bpd_num_examples': 8},
    'edit.keep_fraction': {'edit.mask': 'random_pixels'},
    'edit.scale_factor': {'edit.operation': 'super_resolution'},
    **{f'data.{k}': {'data.pipeline': 'streaming'} for k in ('num_workers', 'worker_threads', 'prefetch_batches')},
}


def _owners(field):
  """(processes, samplers) that declare `field`, in the orders the refusal lists them."""
  owning = [n for n, cls in processes.PROCESSES.items() if field in cls.knobs or field in cls.conditional_knobs]
  using = [n for n, cls in samplers.SAMPLERS.items() if field in cls.knobs]
  return owning, using


def _config_where_used(field):
  """The default config, switched to the first process or sampler that reads `field` (a process
  other than ddpm samples with euler), with what the knob's condition needs."""
  config = default.get_config()
  owning, using = _owners(field)
  if owning and 'ddpm' not in owning:
    config.diffusion.process, config.sampling.sampler = owning[0], 'euler'
  elif using:
    config.sampling.sampler = using[0]
  for name, value in ENABLED_BY.get(field, {}).items():
    _set(config, name, value)
  return config


def _config_where_unused(field):
  """The default config (ddpm, ancestral), or for the knobs it reads, vpsde sampled by euler."""
  config = default.get_config()
  if field in configuration.knobs_in_use(config):
    config.diffusion.process, config.sampling.sampler = 'vpsde', 'euler'
  assert field not in configuration.knobs_in_use(config)
  return config


def test_every_owned_knob_has_a_changed_value_in_the_table():
  assert set(CHANGED) == configuration.owned_knobs()
  for field, value in CHANGED.items():
    assert value != _get_field(default.get_config(), field), field


@pytest.mark.parametrize('field', sorted(CHANGED))
def test_each_owned_knob_is_refused_where_nothing_reads_it_and_accepted_where_its_owner_runs(field):
  value, default_value = CHANGED[field], _get_field(default.get_config(), field)
  unused = _config_where_unused(field)
  _set(unused, field, value)
  with pytest.raises(errors.ConfigError) as raised:
    configuration.validate_config(unused)
  message = str(raised.value)
  assert '\n' not in message
  assert message.startswith(f'config.{field}={value!r} has no effect here: it needs '), message
  assert message.endswith(f'. Leave it at its default {default_value!r}, or set what it needs.'), message
  needs = message[len(f'config.{field}={value!r} has no effect here: it needs '):]
  owning, using = _owners(field)
  if owning:
    assert f'config.diffusion.process={" or ".join(owning)}' in needs, message
  if using:
    assert f'config.sampling.sampler={" or ".join(using)} (or in config.eval.sampler_sweep)' in needs, message
  if field in configuration.CROSS_CUTTING_KNOBS:
    assert configuration.CROSS_CUTTING_KNOBS[field][1] in needs, message
  used = _config_where_used(field)
  _set(used, field, value)
  configuration.validate_config(used)
  assert field in configuration.knobs_in_use(used)


@pytest.mark.parametrize('field,value,accepted,refused,needs', [
    ('sampling.rho', 5.0, {'sampling.sampler': 'edm_heun'}, {'sampling.sampler': 'heun'},
     'config.sampling.sampler=edm_heun or edm_stochastic'),
    ('sampling.rho', 5.0, {'eval.sampler_sweep': ('edm_stochastic:10',)}, {'eval.sampler_sweep': ('heun:10',)},
     'config.sampling.sampler=edm_heun or edm_stochastic'),
    ('sampling.s_churn', 0.0, {'sampling.sampler': 'edm_stochastic'}, {'sampling.sampler': 'edm_heun'},
     'config.sampling.sampler=edm_stochastic'),
    ('diffusion.sigma_data', 1.0, {'diffusion.process': 'edm', 'sampling.sampler': 'edm_heun'},
     {'diffusion.process': 'vesde', 'sampling.sampler': 'edm_heun'}, 'config.diffusion.process=edm.'),
    ('diffusion.p_std', 2.0, {'diffusion.process': 'edm', 'sampling.sampler': 'euler'}, {}, 'config.diffusion.process=edm.'),
    ('diffusion.beta_min', 0.2, {'diffusion.process': 'vpsde', 'sampling.sampler': 'pc'}, {},
     'config.diffusion.process=subvpsde or vpsde.'),
    ('diffusion.beta_min', 0.2, {'diffusion.process': 'subvpsde', 'sampling.sampler': 'ode'},
     {'diffusion.process': 'edm', 'sampling.sampler': 'ode'}, 'config.diffusion.process=subvpsde or vpsde.'),
    ('diffusion.sigma_min', 0.002, {'diffusion.process': 'edm', 'sampling.sampler': 'edm_heun'},
     {'diffusion.process': 'vpsde', 'sampling.sampler': 'edm_heun'}, 'config.diffusion.process=edm or vesde.'),
    ('diffusion.num_timesteps', 100, {}, {'diffusion.process': 'edm', 'sampling.sampler': 'edm_heun'},
     'config.diffusion.process=ddpm.'),
])
def test_a_knob_acts_with_its_owner_and_is_refused_without_it(field, value, accepted, refused, needs):
  """Examples of the rule above, in the configs a user writes: the knob with its owner, the knob beside
  another process or sampler (ddpm and ancestral where not given)."""
  config = default.get_config()
  for name, v in {**accepted, field: value}.items():
    _set(config, name, v)
  configuration.validate_config(config)
  config = default.get_config()
  for name, v in {**refused, field: value}.items():
    _set(config, name, v)
  with pytest.raises(errors.ConfigError, match=re.escape(f'config.{field}={value!r} has no effect here: it needs {needs}')):
    configuration.validate_config(config)


def test_the_default_config_validates_and_every_knob_comment_states_a_range():
  configuration.validate_config(default.get_config())
  source = open(default.__file__).read()
  for field in _numeric_fields(default.get_config()):
    name = field.rpartition('.')[2]
    # The comment block just above `<section>.<name> =` (or `config.<name> =`) states the range.
    line = next(i for i, text in enumerate(source.splitlines()) if re.match(rf'\s*\w+\.{name} = ', text))
    comments = []
    for text in reversed(source.splitlines()[:line + 1]):
      if text.strip().startswith('#') or re.match(rf'\s*\w+\.{name} = ', text):
        comments.append(text)
      else:
        break
    assert re.search(r'# Range: ([\[(][^,]+, [^\])]+[\])]|1 or 3|five integers|each|non-empty)', ' '.join(comments)), field


# ---------------------------------------------------------------------------
# The diffusion process (config.diffusion.process) and the samplers each allows.

def _config(**fields):
  """default.get_config() with fields given as section__name=value."""
  config = default.get_config()
  for key, value in fields.items():
    _set(config, key.replace('__', '.'), value)
  return config


# The processes without a discrete chain, and the samplers that work from eps alone (every sampler
# but the chain's own), from the registries.
CONTINUOUS = [name for name, cls in processes.PROCESSES.items() if not cls.discrete_chain]
EPS_SAMPLERS = [name for name, cls in samplers.SAMPLERS.items() if cls.needs_eps]


def test_the_registries_hold_the_processes_and_samplers_of_issue_27():
  assert tuple(processes.PROCESSES) == ('ddpm', 'edm', 'subvpsde', 'vesde', 'vpsde')  # Name order.
  assert CONTINUOUS == ['edm', 'subvpsde', 'vesde', 'vpsde']
  assert set(EPS_SAMPLERS) >= {'dpm_solver_pp_2m', 'sde_dpm_solver_pp_2m', 'unipc', 'euler', 'heun', 'pc', 'ode',
                               'edm_heun', 'edm_stochastic'}
  assert set(samplers.SAMPLERS) - set(EPS_SAMPLERS) == {'ancestral', 'ddim'}


@pytest.mark.parametrize('process', CONTINUOUS)
@pytest.mark.parametrize('sampler', EPS_SAMPLERS)
def test_every_continuous_process_takes_every_score_sampler(process, sampler):
  configuration.validate_config(_config(diffusion__process=process, sampling__sampler=sampler))
  configuration.validate_config(_config(diffusion__process=process, sampling__sampler='euler',
                                        eval__sampler_sweep=(f'{sampler}:4',)))


@pytest.mark.parametrize('sampler', ['edm_heun', 'edm_stochastic'])
def test_the_edm_samplers_run_on_the_ddpm_chain_too(sampler):
  configuration.validate_config(_config(sampling__sampler=sampler))
  configuration.validate_config(_config(eval__sampler_sweep=(f'{sampler}:18',)))


# EDM's process trains a preconditioned denoiser with its own loss weighting and lognormal sigmas:
# everything else is refused by processes/edm.py's check, in one line naming the fix.
_EDM = {'diffusion.process': 'edm', 'sampling.sampler': 'edm_heun'}
_EDM_WHAT = 'config.diffusion.process=edm trains a preconditioned denoiser with its own loss weighting'


@pytest.mark.parametrize('fields,message', [
    ({'diffusion.loss': 'kl'}, f'{_EDM_WHAT}: set config.diffusion.loss=simple, or process=ddpm.'),
    ({'diffusion.loss': 'mmd'}, f'{_EDM_WHAT}: set config.diffusion.loss=simple'),
    ({'diffusion.loss': 'hybrid', 'diffusion.model_var_type': 'learned_range'},
     f'{_EDM_WHAT}: set config.diffusion.loss=simple'),  # The loss first: hybrid is the learned variance's.
    ({'diffusion.model_mean_type': 'x0'}, f'{_EDM_WHAT}: leave config.diffusion.model_mean_type=eps'),
    ({'diffusion.model_mean_type': 'xprev'}, f'{_EDM_WHAT}: leave config.diffusion.model_mean_type=eps'),
    ({'diffusion.model_var_type': 'learned_range'},
     f'{_EDM_WHAT}, without a variance: set a fixed config.diffusion.model_var_type (fixedlarge).'),
    ({'training.timestep_sampler': 'importance'},
     'config.diffusion.process=edm draws log sigma from N(p_mean, p_std^2): set config.training.timestep_sampler=uniform.'),
    ({'diffusion.sigma_min': 80.0, 'diffusion.sigma_max': 80.0},
     'config.diffusion.sigma_min=80.0 must be below sigma_max=80.0.'),
    ({'diffusion.sigma_data': 0.0}, 'config.diffusion.sigma_data=0.0 is out of range: it must be in (0, inf).'),
    ({'diffusion.p_std': -1.0}, 'config.diffusion.p_std=-1.0 is out of range: it must be in (0, inf).'),
    ({'diffusion.p_mean': float('nan')}, 'config.diffusion.p_mean=nan is out of range'),
    ({'diffusion.p_mean': float('inf')}, 'config.diffusion.p_mean=inf is out of range: it must be in (-inf, inf).'),
    # And the discrete chain's samplers, which need process=ddpm.
    ({'sampling.sampler': 'ancestral'}, 'The ancestral sampler walks the discrete chain, but config.diffusion.process=edm'),
    ({'eval.sampler_sweep': ('ddim:10',)}, 'The ddim sampler walks the discrete chain, but config.diffusion.process=edm'),
])
def test_the_edm_process_refuses_what_it_cannot_train(fields, message):
  config = default.get_config()
  for field, value in {**_EDM, **fields}.items():
    _set(config, field, value)
  with pytest.raises(errors.ConfigError) as raised:
    configuration.validate_config(config)
  assert message in str(raised.value) and '\n' not in str(raised.value), str(raised.value)


@pytest.mark.parametrize('fields', [
    {}, {'diffusion.sigma_data': 1.0, 'diffusion.p_mean': -0.4, 'diffusion.p_std': 1.4},
    {'diffusion.sigma_min': 0.002, 'diffusion.sigma_max': 80.0, 'sampling.rho': 3.0},
    {'sampling.sampler': 'pc', 'diffusion.num_scales': 50},
    {'sampling.sampler': 'dpm_solver_pp_2m', 'sampling.spacing': 'uniform'},
])
def test_the_edm_process_takes_its_own_knobs(fields):
  config = default.get_config()
  for field, value in {**_EDM, **fields}.items():
    _set(config, field, value)
  configuration.validate_config(config)


# The Karras samplers' ranges (samplers/edm.py's check), checked where the sampler runs (as the
# sampler or in the sweep); elsewhere the knob has no effect and is refused as such.
@pytest.mark.parametrize('sampler,field,value,message', [
    ('edm_heun', 'rho', 0.0, 'config.sampling.rho=0.0 is out of range: it must be in (0, inf).'),
    ('edm_stochastic', 'rho', -7.0, 'config.sampling.rho=-7.0 is out of range: it must be in (0, inf).'),
    ('edm_heun', 'rho', float('nan'), 'config.sampling.rho=nan is out of range'),
    ('edm_stochastic', 's_churn', -1.0, 'config.sampling.s_churn=-1.0 is out of range: it must be in [0, inf).'),
    ('edm_stochastic', 's_tmin', -0.5, 'config.sampling.s_tmin=-0.5 is out of range: it must be in [0, inf).'),
    ('edm_stochastic', 's_tmin', 60.0, 'config.sampling.s_tmin=60.0 exceeds s_tmax=50.0'),
    ('edm_stochastic', 's_tmax', 0.01, 'config.sampling.s_tmin=0.05 exceeds s_tmax=0.01'),
    ('edm_stochastic', 's_tmax', -1.0, 'config.sampling.s_tmax=-1.0 is out of range: it must be in [0, inf].'),
    ('edm_stochastic', 's_noise', 0.0, 'config.sampling.s_noise=0.0 is out of range: it must be in (0, inf).'),
    ('edm_stochastic', 's_noise', float('inf'), 'config.sampling.s_noise=inf is out of range'),
])
def test_the_edm_samplers_ranges(sampler, field, value, message):
  for where in ({'sampling.sampler': sampler}, {'eval.sampler_sweep': (f'{sampler}:10',)}):
    config = default.get_config()
    for name, v in {**where, f'sampling.{field}': value}.items():
      _set(config, name, v)
    with pytest.raises(errors.ConfigError) as raised:
      configuration.validate_config(config)
    assert message in str(raised.value) and '\n' not in str(raised.value), (where, str(raised.value))


@pytest.mark.parametrize('fields', [
    {'sampling.s_tmin': 0.0, 'sampling.s_tmax': float('inf')},  # Churn at every level.
    {'sampling.s_tmin': 1.0, 'sampling.s_tmax': 1.0},
    {'sampling.s_churn': 0.0, 'sampling.s_noise': 1.0},  # Alg. 1: no churn.
    {'sampling.rho': 1.0, 'sampling.num_steps': 1},
])
def test_the_edm_samplers_take_values_at_the_ends_of_their_ranges(fields):
  config = _config(sampling__sampler='edm_stochastic')
  for field, value in fields.items():
    _set(config, field, value)
  configuration.validate_config(config)


@pytest.mark.parametrize('fields,message', [
    # The discrete chain's samplers, on a continuous process (as the sampler or in the sweep).
    ({'diffusion.process': 'vpsde'}, 'The ancestral sampler walks the discrete chain, but config.diffusion.process=vpsde'),
    ({'diffusion.process': 'vesde', 'sampling.sampler': 'ddim'}, 'The ddim sampler walks the discrete chain'),
    ({'diffusion.process': 'subvpsde', 'sampling.sampler': 'pc', 'eval.sampler_sweep': ('heun:5', 'ddim:10')},
     'The ddim sampler walks the discrete chain, but config.diffusion.process=subvpsde'),
    # A continuous process trains an eps-network by denoising score matching, nothing else.
    ({'diffusion.process': 'vpsde', 'sampling.sampler': 'pc', 'diffusion.loss': 'kl'},
     'process=vpsde trains the eps-network by denoising score matching: set config.diffusion.loss=simple'),
    ({'diffusion.process': 'vesde', 'sampling.sampler': 'ode', 'diffusion.model_mean_type': 'x0'},
     'set config.diffusion.model_mean_type=eps'),
    ({'diffusion.process': 'vpsde', 'sampling.sampler': 'ode', 'diffusion.model_var_type': 'learned_range',
      'diffusion.loss': 'hybrid'}, 'set config.diffusion.loss=simple'),
    # With loss=simple, the continuous process's advice (a fixed variance), not the loss check's (loss=hybrid).
    ({'diffusion.process': 'vpsde', 'sampling.sampler': 'ode', 'diffusion.model_var_type': 'learned_range'},
     'trains the eps-network by denoising score matching, without a variance: set a fixed'),
    # Importance sampling of t follows the likelihood weighting, constant for VE.
    ({'diffusion.process': 'vpsde', 'sampling.sampler': 'pc', 'training.timestep_sampler': 'importance'},
     'timestep_sampler=importance with process=vpsde draws t in proportion to the likelihood weighting'),
    ({'diffusion.process': 'vesde', 'sampling.sampler': 'pc', 'training.timestep_sampler': 'importance',
      'diffusion.likelihood_weighting': True}, 'timestep_sampler=importance with process=vesde'),
    # Solver spacings of the other family; more solver steps than the chain has.
    ({'sampling.sampler': 'dpm_solver_pp_2m', 'sampling.spacing': 'logsnr'},
     r"Unknown config.sampling.spacing for process ddpm 'logsnr'; valid: auto, linspace, leading, trailing"),
    ({'diffusion.process': 'vpsde', 'sampling.sampler': 'euler', 'sampling.spacing': 'leading'},
     r"Unknown config.sampling.spacing for process vpsde 'leading'; valid: auto, logsnr, uniform"),
    ({'sampling.sampler': 'heun', 'sampling.num_steps': 1001},
     'config.sampling.num_steps=1001 must be between 1 and config.diffusion.num_timesteps=1000'),
    ({'sampling.sampler': 'unipc', 'eval.sampler_sweep': ('unipc:2000',)}, "the steps of config.eval.sampler_sweep's unipc=2000 must be between 1"),
    ({'eval.sampler_sweep': ('ddim:1001',)}, "the steps of config.eval.sampler_sweep's ddim=1001 must be between 1"),
    # pc's discrete VP chain has betas beta(t_i) / num_scales: below 1 only with num_scales > beta_max.
    ({'diffusion.process': 'subvpsde', 'sampling.sampler': 'pc', 'diffusion.num_scales': 20},
     'config.diffusion.num_scales=20 steps .* need num_scales above beta_max=20.0'),
    # Sweep entries that are not SAMPLER or SAMPLER:STEPS.
    ({'eval.sampler_sweep': ('heun:0',)}, r"sampler_sweep entry 'heun:0' is not SAMPLER or SAMPLER:STEPS"),
    ({'eval.sampler_sweep': ('ddim:x',)}, r"sampler_sweep entry 'ddim:x' is not SAMPLER or SAMPLER:STEPS"),
    ({'eval.sampler_sweep': ('heun:-3',)}, r"sampler_sweep entry 'heun:-3' is not"),
    ({'eval.sampler_sweep': ('nope:5',)}, r"Unknown sampler 'nope'; valid: ancestral, ddim, dpm_solver_pp_2m"),
    ({'sampling.sampler': 'ode', 'sampling.ode_solver': 'rk4'}, r"Unknown config.sampling.ode_solver 'rk4'"),
    ({'sampling.sampler': 'pc', 'sampling.predictor': 'leapfrog'}, 'config.sampling.predictor / corrector'),
    ({'diffusion.process': 'ou'}, r"Unknown config.diffusion.process 'ou'; valid: ddpm, edm, subvpsde, vesde, vpsde\.$"),
    ({'eval.ode_bpd_num_examples': 4, 'eval.hutchinson': 'bernoulli'}, r"Unknown config.eval.hutchinson 'bernoulli'"),
    # Each process's own order of its knobs.
    ({'diffusion.process': 'vpsde', 'sampling.sampler': 'euler', 'diffusion.beta_min': 30.0},
     r'config.diffusion.beta_min=30.0 exceeds beta_max=20.0'),
    ({'diffusion.process': 'subvpsde', 'sampling.sampler': 'euler', 'diffusion.beta_max': 0.05},
     r'config.diffusion.beta_min=0.1 exceeds beta_max=0.05'),
    ({'diffusion.process': 'vesde', 'sampling.sampler': 'euler', 'diffusion.sigma_min': 60.0},
     r'config.diffusion.sigma_min=60.0 must be below sigma_max=50.0'),
    ({'diffusion.process': 'vesde', 'sampling.sampler': 'euler', 'diffusion.sigma_max': 0.01},
     r'config.diffusion.sigma_min=0.01 must be below sigma_max=0.01'),
    # The chain's own knobs, under a continuous process.
    ({'diffusion.process': 'vpsde', 'sampling.sampler': 'pc', 'diffusion.num_timesteps': 100},
     'config.diffusion.num_timesteps=100 has no effect here: it needs config.diffusion.process=ddpm'),
    ({'diffusion.process': 'vesde', 'sampling.sampler': 'pc', 'diffusion.beta_end': 0.05},
     r'config.diffusion.beta_end=0.05 has no effect here: it needs config.diffusion.process=ddpm with a schedule '
     r'that uses it \(not cosine or jsd\)'),
    ({'diffusion.process': 'vesde', 'sampling.sampler': 'pc', 'diffusion.beta_max': 10.0},
     'config.diffusion.beta_max=10.0 has no effect here: it needs config.diffusion.process=subvpsde or vpsde'),
])
def test_settings_the_process_or_sampler_cannot_use_are_refused(fields, message):
  config = default.get_config()
  for field, value in fields.items():
    _set(config, field, value)
  with pytest.raises(errors.ConfigError, match=message) as raised:
    configuration.validate_config(config)
  assert '\n' not in str(raised.value)


def test_knobs_of_a_sampler_in_the_sweep_apply_and_sweep_entries_parse():
  config = _config(diffusion__process='vpsde', sampling__sampler='euler', sampling__snr=0.2,
                   sampling__ode_rtol=1e-3, sampling__num_steps=7, diffusion__num_scales=100,
                   diffusion__likelihood_weighting=True, training__timestep_sampler='importance',
                   eval__sampler_sweep=('pc', 'ode', 'heun:3'))
  configuration.validate_config(config)  # snr for the sweep's pc, ode_rtol for its ode.
  ddpm = _config(sampling__ddim_steps=20, eval__sampler_sweep=('ancestral', 'ddim', 'dpm_solver_pp_2m:1000'))
  configuration.validate_config(ddpm)
  assert configuration.sweep_entries(('pc', 'ddim:50', 'heun:10')) == [('pc', None), ('ddim', 50), ('heun', 10)]
  assert configuration.sweep_entries(()) == []


def test_the_ode_bits_per_dim_makes_the_ode_knobs_apply():
  config = _config(eval__ode_bpd_num_examples=8, eval__hutchinson='gaussian', sampling__ode_rtol=1e-3,
                   sampling__ode_atol=1e-3, sampling__ode_solver='tsit5', sampling__ode_max_steps=100)
  configuration.validate_config(config)
  config.sampling.denoise = False  # Only the samplers pc and ode denoise; the likelihood does not.
  with pytest.raises(errors.ConfigError, match='config.sampling.denoise=False has no effect here'):
    configuration.validate_config(config)


def test_a_workdir_saved_before_the_process_knobs_is_the_same_model(tmp_path):
  """A config.json written before diffusion.process (and its knobs, EDM's, and the ncsnpp fields)
  existed ran the ddpm process: resuming it is no change of model; switching it to a continuous
  process is one."""
  saved = configuration.config_to_dict(default.get_config())
  added = ('process', 'beta_min', 'beta_max', 'sigma_min', 'sigma_max', 'num_scales', 'train_eps',
           'likelihood_weighting', 'sigma_data', 'p_mean', 'p_std')
  for name in added:
    del saved['diffusion'][name]
  for name in ('skip_rescale', 'embedding_type', 'fourier_scale', 'fir', 'fir_kernel', 'progressive',
               'progressive_input'):
    del saved['model'][name]
  with open(tmp_path / 'config.json', 'w') as f:
    json.dump(saved, f)
  config = default.get_config()
  assert configuration.model_changes(config, str(tmp_path)) == []
  configuration.check_workdir_config(config, str(tmp_path))
  config.diffusion.process, config.sampling.sampler = 'vesde', 'pc'
  assert configuration.model_changes(config, str(tmp_path)) == ["diffusion.process: 'ddpm' -> 'vesde'"]
  with pytest.raises(errors.WorkdirError, match="diffusion.process: 'ddpm' -> 'vesde'"):
    configuration.check_workdir_config(config, str(tmp_path))
  config.diffusion.sigma_max = 20.0  # A changed knob of the new process is listed too.
  assert configuration.model_changes(config, str(tmp_path)) == [
      "diffusion.process: 'ddpm' -> 'vesde'", 'diffusion.sigma_max: 50.0 -> 20.0']


@pytest.mark.parametrize('field', ['diffusion.sigma_data', 'diffusion.p_mean', 'diffusion.p_std', 'model.fourier_scale',
                                   'diffusion.process', 'diffusion.num_scales', 'model.remat'])
def test_a_workdir_saved_without_a_later_field_is_no_model_change(tmp_path, field):
  """Fields added to the model-defining sections after a run was made stood at their default then
  (configs/default.py): a config.json without one resumes, for every later-added field alike."""
  saved = configuration.config_to_dict(default.get_config())
  section, name = field.split('.')
  del saved[section][name]
  with open(tmp_path / 'config.json', 'w') as f:
    json.dump(saved, f)
  config = default.get_config()
  assert configuration.model_changes(config, str(tmp_path)) == []
  assert configuration.check_workdir_config(config, str(tmp_path)) == []
  if field != 'model.remat':  # A different value of the field is a different model, also where it was left out.
    value = CHANGED.get(field, {'model.fourier_scale': 8.0, 'diffusion.process': 'edm'}.get(field))
    _set(config, field, value)
    assert configuration.model_changes(config, str(tmp_path)) == [
        f'{field}: {_get_field(default.get_config(), field)!r} -> {value!r}']
    with pytest.raises(errors.WorkdirError, match=re.escape(f'{field}: ')):
      configuration.check_workdir_config(config, str(tmp_path))


def test_an_edm_run_is_refused_after_its_edm_knobs_change(tmp_path):
  config = _config(diffusion__process='edm', sampling__sampler='edm_heun', diffusion__sigma_data=1.0)
  configuration.save_config(config, str(tmp_path))
  config.sampling.rho, config.sampling.num_steps = 3.0, 40  # Sampling knobs: the same model.
  assert configuration.model_changes(config, str(tmp_path)) == []
  config.diffusion.sigma_data, config.diffusion.p_mean = 0.5, -1.0
  assert configuration.model_changes(config, str(tmp_path)) == [
      'diffusion.p_mean: -1.2 -> -1.0', 'diffusion.sigma_data: 1.0 -> 0.5']
