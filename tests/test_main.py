"""main.py end to end in fresh processes: train, resume bitwise, sample, and user errors."""

import json
import os
import subprocess
import sys

import numpy as np
import orbax.checkpoint as ocp
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [
    '--config=configs/quickstart.py', '--config.cpu_devices=2',
    '--config.model.widths=(8,16,16,8,8)', '--config.model.time_embed_dim=16',
    '--config.diffusion.num_timesteps=20', '--config.training.batch_size=8',
    '--config.training.log_every_steps=2', '--config.training.checkpoint_every_steps=2',
    '--config.training.sample_every_steps=0', '--config.optim.warmup_steps=2',
    '--config.sampling.batch_size=4', '--config.sampling.num_samples=6',
]


def run_main(*args, check=True):
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  result = subprocess.run([sys.executable, 'main.py', *TINY, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
  if check and result.returncode:
    raise AssertionError(f'main.py failed ({result.returncode}):\n{result.stderr[-4000:]}')
  return result


def restore(workdir, step):
  return ocp.StandardCheckpointer().restore(os.path.join(workdir, 'checkpoints', str(step), 'default'))


def test_train_resume_equals_uninterrupted_and_sample(tmp_path):
  whole, split = str(tmp_path / 'whole'), str(tmp_path / 'split')
  run_main(f'--workdir={whole}', '--config.training.num_train_steps=7')
  run_main(f'--workdir={split}', '--config.training.num_train_steps=3')
  assert sorted(os.listdir(os.path.join(split, 'checkpoints'))) == ['2', '3']
  resumed = run_main(f'--workdir={split}', '--config.training.num_train_steps=7')
  assert 'Resumed from the checkpoint of step 3' in resumed.stderr
  a, b = restore(whole, 7), restore(split, 7)
  leaves_a, leaves_b = [np.asarray(x) for x in _leaves(a)], [np.asarray(x) for x in _leaves(b)]
  assert len(leaves_a) == len(leaves_b) > 10
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(x, y)
  assert int(a['step']) == 7
  assert not np.array_equal(np.asarray(_leaves(a['params'])[0]), np.asarray(_leaves(a['ema_params'])[0]))

  run_main(f'--workdir={split}', '--mode=sample')
  images = np.load(os.path.join(split, 'samples', 'samples_00000007_6.npz'))['images']
  assert images.shape == (6, 28, 28, 1) and images.dtype == np.uint8
  assert os.path.getsize(os.path.join(split, 'samples', 'samples_00000007_6.png')) > 0

  run_main(f'--workdir={split}', '--mode=eval', '--config.eval.bpd_num_examples=4',
           '--config.eval.bpd_batch_size=4')
  with open(os.path.join(split, 'eval', 'metrics.json')) as f:
    metrics = json.load(f)
  assert metrics['step'] == 7 and metrics['bpd_num_examples'] == 4 and len(metrics['bpd_terms']) == 20
  assert np.isfinite(metrics['bpd']) and metrics['bpd'] > 0
  with open(os.path.join(split, 'run_info.json')) as f:
    run_info = json.load(f)
  assert run_info['step'] == 7 and run_info['num_params'] > 1000 and run_info['wall_time_s'] > 0


def _leaves(tree):
  import jax
  return jax.tree.leaves(tree)


@pytest.mark.parametrize('args,message', [
    (['--config.model.name=unet_big'], "Unknown model 'unet_big' (config.model.name); valid: unet_simple"),
    (['--config.optim.lr=-1'], 'config.optim.lr must be positive'),
    (['--config.training.batch_size=9'], 'batch_size=9 does not divide over the 2 devices'),
    (['--mode=sample'], 'No checkpoint in'),
])
def test_user_errors_are_one_line_without_traceback(tmp_path, args, message):
  result = run_main(f'--workdir={tmp_path / "run"}', *args, check=False)
  assert result.returncode != 0
  assert message in result.stderr
  assert 'Traceback' not in result.stderr
  assert [line for line in result.stderr.splitlines() if line.startswith('error:')] == [
      line for line in result.stderr.splitlines() if message in line]


def test_a_different_model_in_an_existing_workdir_is_refused(tmp_path):
  workdir = str(tmp_path / 'run')
  run_main(f'--workdir={workdir}', '--config.training.num_train_steps=1')
  before = sorted(os.listdir(workdir)), open(os.path.join(workdir, 'config.json')).read()
  result = run_main(f'--workdir={workdir}', '--config.model.time_embed_dim=32', check=False)
  assert result.returncode != 0 and 'holds a run with a different model' in result.stderr
  assert 'Traceback' not in result.stderr
  assert (sorted(os.listdir(workdir)), open(os.path.join(workdir, 'config.json')).read()) == before
