"""Sampling bound to a network (ddpm_jax/generate.py): a tiny class-conditional model draws the
requested class, with and without guidance. --mode=sample itself runs in test_train.py and test_main.py."""

import logging

import jax
import numpy as np
import pytest

from ddpm_jax import data, generate, parallel, progress
import train_testlib


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


@pytest.mark.slow
def test_a_tiny_conditional_model_draws_the_requested_class_with_and_without_guidance():
  config = train_testlib.conditional_config(0.1)
  config.model.ch_mult = (1, 2)  # A downsampling level: a receptive field that sees where the bright half is.
  config.diffusion.schedule = 'cosine'  # x_T is pure noise even with T = 20.
  mesh, model, schedule, state, step = train_testlib.training_setup(config)
  dataset = train_testlib.two_patterns()
  for i in range(500):
    batch = data.get_batch(dataset, 16, i, 0)
    state, _ = step(state, parallel.shard_batch(batch.images, mesh), parallel.shard_batch(batch.labels, mesh))
  classify = pixel_classifier(dataset)
  assert np.all(classify(dataset.images) == dataset.labels)
  labels = np.repeat(np.arange(2, dtype=np.int32), 32)  # 32 per class: 0.95 allows one miss.
  for sampler in ('ddim', 'ancestral'):
    config.sampling.sampler = sampler
    for w in (0.0, 3.0):
      sample_fn = generate.make_sampler(model, schedule, config, guidance_scale=w)
      draw = lambda key: generate.generate(sample_fn, state.ema_params, state.ema_batch_stats, 64, 64, (8, 8, 1),
                                        key, mesh, labels)
      images = draw(jax.random.PRNGKey(1))
      for c in (0, 1):
        accuracy = np.mean(classify(images[labels == c]) == c)
        assert accuracy >= (0.95 if w else 0.8), (sampler, w, c, accuracy)
      if sampler == 'ancestral' and w:  # Guided sampling with noise at every step: the seed decides.
        np.testing.assert_array_equal(draw(jax.random.PRNGKey(1)), images)
        assert np.any(draw(jax.random.PRNGKey(2)) != images)


def progress_lines(caplog) -> list[str]:
  """The images-done part of generate()'s progress lines: ['Sampling: 2/6', ...]."""
  return [r.getMessage().split(' images')[0] for r in caplog.records if r.getMessage().startswith('Sampling:')]


def test_progress_counts_images_across_batches_and_reverse_steps_within_one(caplog):
  def sample_fn(params, batch_stats, x_T, key, labels):
    assert progress.report_within(0.5)  # As the compiled sampler's reverse-step report does, halfway.
    return x_T, None

  with caplog.at_level(logging.INFO, logger='absl'):
    images = generate.generate(sample_fn, None, None, 6, 4, (2, 2, 1), jax.random.PRNGKey(0), parallel.make_mesh(),
                               log_every_seconds=0)
  assert images.shape == (6, 2, 2, 1)
  # Batch 1 holds images 1-4, batch 2 images 5-6 (the rest of its 4 is dropped).
  assert progress_lines(caplog) == ['Sampling: 2/6', 'Sampling: 4/6', 'Sampling: 5/6', 'Sampling: 6/6']
  assert 'done in' in caplog.records[-1].getMessage()


def test_the_compiled_samplers_reverse_steps_move_the_bar_or_are_logged_outside_generate(caplog):
  config = train_testlib.tiny_level_config()
  config.data.image_size = 8
  config.sampling.sampler, config.sampling.ddim_steps, config.sampling.progress_every = 'ddim', 4, 1
  mesh, model, schedule, state, _ = train_testlib.training_setup(config)
  sample_fn = generate.make_sampler(model, schedule, config, progress=True)
  with caplog.at_level(logging.INFO, logger='absl'):
    generate.generate(sample_fn, state.ema_params, state.ema_batch_stats, 4, 2, (8, 8, 1), jax.random.PRNGKey(0),
                      mesh, log_every_seconds=0)
  done = [float(r.getMessage().split('(')[1].split('%')[0]) for r in caplog.records
          if r.getMessage().startswith('Sampling:')]
  assert done == [12.0, 25.0, 38.0, 50.0, 62.0, 75.0, 88.0, 100.0]  # Each reverse step of each batch.
  assert not any('reverse step' in r.getMessage() for r in caplog.records)
  caplog.clear()
  with caplog.at_level(logging.INFO, logger='absl'):
    x_T = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 1))
    jax.block_until_ready(sample_fn(state.ema_params, state.ema_batch_stats, x_T, jax.random.PRNGKey(2)))
  assert [r.getMessage() for r in caplog.records if 'reverse step' in r.getMessage()] == [
      f'  reverse step {n}/4' for n in range(1, 5)]
