"""--mode=eval end to end, in process: bits/dim, FID in the offline features (also during
training), resume after a kill, and the guidance table of a class-conditional network."""

import json
import os
import shutil

import numpy as np
import pytest

import jax

from ddpm_jax import generate, parallel, processes, samplers, train
from ddpm_jax.errors import ConfigError
from ddpm_jax.evaluation import evaluate, likelihood
from ddpm_jax.tools import events
from train_testlib import tiny_level_config, training_setup


def eval_config(tmp_path):
  config = tiny_level_config()
  config.training.num_train_steps = 2
  config.sampling.sampler = 'ddim'
  config.sampling.ddim_steps = 3
  config.eval.split = 'train'
  config.eval.bpd_num_examples = 4
  config.eval.bpd_batch_size = 4
  config.eval.num_samples = 10  # Three batches of 4, the last one cut to 2.
  config.eval.sample_batch_size = 4
  config.eval.feature_nets = ('classifier',)
  config.eval.classifier_steps = 30
  config.eval.classifier_dir = str(tmp_path / 'classifiers')
  config.eval.stats_dir = str(tmp_path / 'stats')
  config.eval.kid_subsets = 5
  config.eval.kid_subset_size = 5
  config.eval.feature_batch_size = 500
  return config


@pytest.mark.slow
def test_fid_during_training_and_eval_resuming_after_a_kill_with_the_same_numbers(tmp_path, monkeypatch):
  """FID and KID every step of training (in the classifier's features), then --mode=eval, whole and
  killed mid-way then rerun."""
  config = eval_config(tmp_path)
  config.training.fid_every_steps, config.training.fid_num_samples = 1, 10
  whole, killed = str(tmp_path / 'whole'), str(tmp_path / 'killed')
  train.train_and_evaluate(config, whole)
  shutil.copytree(whole, killed)
  logged = events.read_scalars(whole, ['fid_classifier', 'kid_classifier'])
  assert logged['fid_classifier'].steps.tolist() == logged['kid_classifier'].steps.tolist() == [1, 2]
  fids = logged['fid_classifier'].values
  assert np.all(np.isfinite(fids)) and np.all(fids > 0) and fids[0] != fids[1]

  expected = evaluate.evaluate(config, whole)
  assert {'bpd', 'fid_classifier', 'kid_classifier', 'classifier_test_accuracy'} <= set(expected)
  assert expected['fid_classifier'] > 0 and 0 <= expected['classifier_test_accuracy'] <= 1
  with open(os.path.join(whole, 'eval', 'metrics.json')) as f:
    assert json.load(f)['fid_classifier'] == expected['fid_classifier']

  real_generate, calls = generate.generate, []

  def killed_on_the_second_batch(*args, **kwargs):
    calls.append(1)
    if len(calls) == 2:
      raise KeyboardInterrupt  # Stands in for a kill: the first batch is on disk.
    return real_generate(*args, **kwargs)

  monkeypatch.setattr(generate, 'generate', killed_on_the_second_batch)
  with pytest.raises(KeyboardInterrupt):
    evaluate.evaluate(config, killed)
  monkeypatch.setattr(generate, 'generate', real_generate)
  resumed = evaluate.evaluate(config, killed)
  for key in ('fid_classifier', 'kid_classifier', 'bpd'):
    assert resumed[key] == expected[key], key


@pytest.mark.slow
def test_conditional_eval_writes_a_guidance_table(tmp_path):
  config = eval_config(tmp_path)
  config.model.num_classes = 10
  config.eval.bpd_num_examples = 0
  config.sampling.eval_guidance_scales = (0.0, 2.0)
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(config, workdir)
  results = evaluate.evaluate(config, workdir)
  assert set(results['guidance']) == {'0', '2'}
  for row in results['guidance'].values():
    assert {'fid_classifier', 'class_accuracy'} <= set(row) and 0 <= row['class_accuracy'] <= 1
    assert len(row['class_accuracy_per_class']) == 10
  with open(os.path.join(workdir, 'eval', 'guidance.md')) as f:
    table = f.read()
  assert table.splitlines()[0].startswith('| w | class_accuracy |') and '| 2 |' in table


def test_sample_labels_cycle_through_the_requested_classes():
  config = tiny_level_config()
  assert evaluate.sample_labels(config, 5) is None
  config.model.num_classes = 3
  np.testing.assert_array_equal(evaluate.sample_labels(config, 5), [0, 1, 2, 0, 1])
  config.sampling.classes = (2,)
  np.testing.assert_array_equal(evaluate.sample_labels(config, 3), [2, 2, 2])


def test_with_steps_sets_the_sampler_and_the_steps_it_reads():
  config = tiny_level_config()
  swept = samplers.sampler_class('ddim').with_steps(config, 7)
  assert (swept.sampling.sampler, swept.sampling.ddim_steps, swept.sampling.num_steps) == ('ddim', 7, 20)
  swept = samplers.sampler_class('heun').with_steps(config, 5)
  assert (swept.sampling.sampler, swept.sampling.ddim_steps, swept.sampling.num_steps) == ('heun', 50, 5)
  swept = samplers.sampler_class('pc').with_steps(config, None)
  assert swept.sampling.sampler == 'pc' and swept.sampling.num_steps == 20
  assert config.sampling.sampler == 'ancestral'  # A copy: the run's config is left alone.
  for name, cls in samplers.SAMPLERS.items():  # Every sampler with a steps knob: the one its steps() reads.
    if cls.steps_field is not None:
      swept = cls.with_steps(config, 3)
      section, field = cls.steps_field.split('.')
      assert swept[section][field] == 3 and cls.steps(swept, processes.from_config(swept.diffusion)) == 3, name


def test_sweep_table_has_a_row_per_sampler_and_the_cost_columns_first():
  rows = [{'sampler': 'ddim:10', 'nfe': 10.0, 'seconds_per_image': 0.5, 'fid_classifier': 12.345678, 'step': 3},
          {'sampler': 'heun', 'nfe': 39.0, 'seconds_per_image': 2.0}]
  lines = evaluate.sweep_table(rows).splitlines()
  assert lines[0] == '| sampler | nfe | seconds_per_image | fid_classifier |'
  assert lines[1] == '|---|---|---|---|'
  assert lines[2] == '| ddim:10 | 10 | 0.5 | 12.35 |'
  assert lines[3] == '| heun | 39 | 2 |  |'


def test_sampling_cost_is_written_and_reused_when_no_batch_was_sampled(tmp_path):
  directory = str(tmp_path)
  assert evaluate.sampling_cost(directory, [], [], 4) == {}
  cost = evaluate.sampling_cost(directory, [10, 20], [9.0, 2.0], 4)  # The first batch's time (compiling) left out.
  assert cost == {'nfe': 15.0, 'seconds_per_image': 0.5}
  with open(os.path.join(directory, evaluate.COST_FILE)) as f:
    assert json.load(f) == cost
  assert evaluate.sampling_cost(directory, [], [], 4) == cost  # A rerun with every batch on disk.
  assert evaluate.sampling_cost(directory, [6], [3.0], 2) == {'nfe': 6.0, 'seconds_per_image': 1.5}


@pytest.mark.parametrize('process', ['ddpm', 'vesde'])
def test_ode_bits_per_dim_of_a_tiny_network_per_image_with_its_network_calls(process):
  config = tiny_level_config()
  config.data.image_size = 8
  config.diffusion.process = process
  config.sampling.ode_rtol = config.sampling.ode_atol = 1e-3
  mesh, model, _, state, _ = training_setup(config)
  images = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 1)).astype(np.uint8)
  ode_bpd = likelihood.make_ode_bpd_fn(model, config)
  bpd, nfe = ode_bpd(state.ema_params, state.ema_batch_stats, parallel.shard_batch(images[:2], mesh),
                     jax.random.PRNGKey(0))
  assert bpd.shape == (2,) and np.all(np.isfinite(bpd)) and np.all(bpd > 0) and int(nfe) > 1
  result = likelihood.ode_bits_per_dim(ode_bpd, state.ema_params, state.ema_batch_stats, images, 2,
                                       jax.random.PRNGKey(0), mesh)
  assert result['ode_bpd_num_examples'] == 3 and np.isfinite(result['ode_bpd']) and result['ode_bpd_nfe'] > 1
  # Batch 0 is the call above with fold_in(key, 0): its two images in the mean of three.
  first = likelihood.ode_bits_per_dim(ode_bpd, state.ema_params, state.ema_batch_stats, images[:2], 2,
                                      jax.random.PRNGKey(0), mesh)
  np.testing.assert_allclose(first['ode_bpd'], np.mean(np.asarray(ode_bpd(
      state.ema_params, state.ema_batch_stats, parallel.shard_batch(images[:2], mesh),
      jax.random.fold_in(jax.random.PRNGKey(0), 0))[0])), rtol=1e-5)


@pytest.mark.slow
def test_evaluating_a_continuous_process_skips_the_bound_and_sweeps_samplers(tmp_path):
  config = eval_config(tmp_path)
  config.diffusion.process = 'vpsde'
  config.diffusion.num_scales = 25
  config.sampling.sampler, config.sampling.num_steps = 'euler', 3
  config.sampling.ode_rtol = config.sampling.ode_atol = 1e-3
  config.eval.ode_bpd_num_examples = 4
  config.eval.sampler_sweep = ('euler:2', 'dpm_solver_pp_2m:3')
  config.eval.num_samples = 4
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(config, workdir)
  results = evaluate.evaluate(config, workdir)
  assert 'bpd' not in results and np.isfinite(results['ode_bpd']) and results['ode_bpd_num_examples'] == 4
  assert [row['sampler'] for row in results['sampler_sweep']] == ['euler:2', 'dpm_solver_pp_2m:3']
  assert [row['nfe'] for row in results['sampler_sweep']] == [2.0, 3.0] and results['nfe'] == 3.0
  with open(os.path.join(workdir, 'eval', 'nfe.md')) as f:
    assert '| euler:2 | 2 |' in f.read()
  # A sweep entry whose ODE solve stops at its step bound: one error naming it, after the metrics
  # computed before it (the FID samples are on disk already) are written.
  config.eval.sampler_sweep = ('ode:2',)
  path = os.path.join(workdir, 'eval', 'metrics.json')
  with pytest.raises(ConfigError, match=rf'^The probability-flow ODE sampler took more than config\.sampling\.'
                                        rf'ode_max_steps=2 steps .* The metrics computed before it are written to {path}\.$'):
    evaluate.evaluate(config, workdir)
  with open(path) as f:
    written = json.load(f)
  assert 'sampler_sweep' not in written
  assert {k: written[k] for k in ('ode_bpd', 'fid_classifier')} == {k: results[k] for k in ('ode_bpd', 'fid_classifier')}


def test_non_finite_metrics_are_written_as_null_and_named(caplog):
  results = {'step': 4, 'ode_bpd': float('inf'), 'fid': 3.5,
             'sampler_sweep': [{'sampler': 'ode', 'fid_classifier': float('nan')}], 'guidance': {'1': {'fid': 2.0}}}
  with caplog.at_level('WARNING'):
    cleaned = evaluate.finite_metrics(results)
  assert cleaned == {'step': 4, 'ode_bpd': None, 'fid': 3.5, 'sampler_sweep': [{'sampler': 'ode', 'fid_classifier': None}],
                     'guidance': {'1': {'fid': 2.0}}}
  json.dumps(cleaned, allow_nan=False)  # Standard JSON.
  assert ['metrics.ode_bpd is inf', 'metrics.sampler_sweep[0].fid_classifier is nan'] == [
      r.getMessage().split(' (')[0] for r in caplog.records]


def test_an_eval_of_the_same_step_again_shows_one_point_per_tag_in_tensorboard(tmp_path):
  """Eval's scalars are a TensorBoard run of their own in eval/: an eval of step 4 again (after one
  interrupted, or to add metrics) replaces the earlier points, and training's points stay."""
  import time  # pylint: disable=g-import-not-at-top
  from tensorboard.backend.event_processing import plugin_event_accumulator  # pylint: disable=g-import-not-at-top
  from tensorboard.util import tensor_util  # pylint: disable=g-import-not-at-top
  os.makedirs(tmp_path / 'eval')
  evaluate.write_metrics(str(tmp_path), 4, {'bpd': 3.5, 'fid': 9.0})
  time.sleep(2.1)  # Event files are named by the second: a later one sorts after.
  evaluate.write_metrics(str(tmp_path), 4, {'bpd': 3.25})
  accumulator = plugin_event_accumulator.EventAccumulator(str(tmp_path / 'eval'), tensor_size_guidance={'scalars': 0})
  accumulator.Reload()  # As TensorBoard's server loads a run.
  assert [e.step for e in accumulator.Tensors('eval/fid')] == []  # The earlier eval's points went.
  bpd = accumulator.Tensors('eval/bpd')
  assert [e.step for e in bpd] == [4] and float(tensor_util.make_ndarray(bpd[0].tensor_proto)) == 3.25
  assert events.read_scalars(str(tmp_path), ['eval/bpd'])['eval/bpd'].values.tolist() == [3.25]
