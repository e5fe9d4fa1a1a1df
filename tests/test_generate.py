"""Sampling bound to a network (ddpm_jax/generate.py): a tiny class-conditional model draws the
requested class, with and without guidance. --mode=sample itself runs in test_train.py and test_main.py."""

import jax
import numpy as np
import pytest

from ddpm_jax import data, generate, parallel
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
