"""Config validation and the workdir's saved config."""

import glob
import importlib
import os

import pytest

from configs import default
from ddpm_jax import configuration, errors

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
    ('optim.lr', 0.0, 'lr must be positive'),
    ('optim.lr', -1e-3, 'lr must be positive'),
    ('training.batch_size', 0, 'batch_size must be positive'),
    ('training.ema_decay', 1.0, 'ema_decay'),
    ('diffusion.num_timesteps', 1, 'at least 2'),
    ('diffusion.beta_end', 1.5, 'beta_start <= beta_end < 1'),
    ('training.checkpoint_every_steps', 0, 'checkpoint_every_steps must be positive'),
    ('sampling.num_samples', 0, 'num_samples'),
])
def test_bad_values_name_the_field_and_the_valid_choices(field, value, message):
  config = default.get_config()
  section, key = field.split('.')
  config[section][key] = value
  with pytest.raises(errors.ConfigError, match=message):
    configuration.validate_config(config)


@pytest.mark.parametrize('field,value,message', [
    ('ddim_steps', 0, 'ddim_steps=0 must be between 1 and config.diffusion.num_timesteps=1000'),
    ('ddim_steps', 1001, 'set ddim_steps in that range'),
    ('ddim_eta', -0.5, 'ddim_eta must be >= 0'),
    ('ddim_spacing', 'linear', 'valid: uniform, quad'),
])
def test_bad_ddim_knobs_are_refused_when_ddim_samples(field, value, message):
  config = default.get_config()
  config.sampling.sampler = 'ddim'
  configuration.validate_config(config)
  config.sampling[field] = value
  with pytest.raises(errors.ConfigError, match=message):
    configuration.validate_config(config)
  config.sampling.sampler = 'ancestral'
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
    with pytest.raises(errors.ConfigError, match=r'config.progress_log_every_seconds must be >= 0 .*got (-1.0|nan)'):
      configuration.validate_config(config)
