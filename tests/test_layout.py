"""A workdir's records read back (ddpm_jax/layout.py): config.json and run_info.json."""

import json

import pytest

from ddpm_jax import errors, layout


def test_config_and_run_info(tmp_path):
  with pytest.raises(errors.RunError, match='No config.json in'):
    layout.read_config(str(tmp_path))
  with pytest.raises(errors.RunError, match='is not a directory'):
    layout.read_config(str(tmp_path / 'missing'))
  assert layout.read_run_info(str(tmp_path)) == {}
  config = {'model': {'name': 'ddpm', 'ch': 128}, 'diffusion': {'loss': 'simple'}}
  (tmp_path / 'config.json').write_text(json.dumps(config))
  (tmp_path / 'run_info.json').write_text(json.dumps({'num_params': 7, 'wall_time_s': 1.5, 'step': 9}))
  assert layout.read_config(str(tmp_path)) == config
  assert layout.read_run_info(str(tmp_path)) == {'num_params': 7, 'wall_time_s': 1.5, 'step': 9}
  assert layout.config_value(config, 'model.name') == 'ddpm'
  assert layout.config_value(config, 'model.name.x') is None
  assert layout.config_value(config, 'data.dataset', 'none') == 'none'
