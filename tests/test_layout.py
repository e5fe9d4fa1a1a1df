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


@pytest.mark.parametrize('content, problem', [(b'', 'is empty'), (b'{"model": {"na', 'does not parse'),
                                              (b'\xff\xfe', 'does not parse'), (b'[1]', 'holds a JSON list')])
def test_a_config_json_cut_short_names_the_file_and_the_fix(tmp_path, content, problem):
  (tmp_path / 'config.json').write_bytes(content)
  with pytest.raises(errors.WorkdirFileError) as error:
    layout.read_config(str(tmp_path))
  assert str(error.value).startswith(f'{tmp_path / "config.json"} {problem}')
  assert 'Restore it from a backup, or delete it' in str(error.value)
  assert isinstance(error.value, errors.UserError) and isinstance(error.value, ValueError)  # cli and compare.
  assert (tmp_path / 'config.json').read_bytes() == content


def test_a_run_info_json_cut_short_says_it_may_be_rebuilt(tmp_path):
  (tmp_path / 'run_info.json').write_text('{"num_params": 7, "wall')
  with pytest.raises(errors.WorkdirFileError, match=r'run_info.json does not parse .* it holds only statistics'):
    layout.read_run_info(str(tmp_path))
