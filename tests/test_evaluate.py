"""--mode=eval end to end, in process: bits/dim, FID in the offline features (also during
training), resume after a kill, and the guidance table of a class-conditional network."""

import json
import os
import shutil

import numpy as np
import pytest

from ddpm_jax import generate, train
from ddpm_jax.evaluation import evaluate
from ddpm_jax.tools import events
from train_testlib import tiny_level_config


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
