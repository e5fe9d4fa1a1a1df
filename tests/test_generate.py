"""Sampling bound to a network (ddpm_jax/generate.py): a tiny class-conditional model draws the
requested class, with and without guidance; every sampler of every diffusion process on a tiny
random network, its network calls (NFE) and its prior. --mode=sample itself runs in test_train.py
and test_main.py."""

import logging

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_jax import data, diffusion, generate, parallel, progress
from ddpm_jax import sde as sde_lib
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
    return x_T, None, 1

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


# ---------------------------------------------------------------------------
# Every process with every sampler it allows (configuration._check_sampler).

SCORE_SAMPLERS = ('dpm_solver_pp_2m', 'sde_dpm_solver_pp_2m', 'unipc', 'euler', 'heun', 'pc', 'ode')
PROCESS_SAMPLERS = [('ddpm', s) for s in ('ancestral', 'ddim') + SCORE_SAMPLERS] + [
    (p, s) for p in ('vpsde', 'subvpsde', 'vesde') for s in SCORE_SAMPLERS]


class TinyEps(nn.Module):
  """A random eps-network small enough to compile in every sampler fast: a 3x3 convolution of x
  and a channel shift from sinusoids of the time input (and a class embedding), with the
  signature of the registry's networks."""
  num_classes: int = 0

  @nn.compact
  def __call__(self, x, t, train: bool = False, labels=None):
    t = jnp.asarray(t, jnp.float32)
    frequencies = jnp.exp(-jnp.arange(4, dtype=jnp.float32))
    features = jnp.concatenate([jnp.sin(t[:, None] * frequencies), jnp.cos(t[:, None] * frequencies)], -1)
    shift = nn.Dense(x.shape[-1])(features)
    if self.num_classes:
      shift = shift + nn.Embed(self.num_classes + 1, x.shape[-1])(labels)  # The last class: no label.
    return nn.Conv(x.shape[-1], (3, 3))(jnp.tanh(x)) + shift[:, None, None, :]


def sampler_config(process: str, sampler: str, conditional: bool = False):
  config = train_testlib.conditional_config(0.1) if conditional else train_testlib.tiny_level_config()
  config.data.image_size = 8
  config.diffusion.process = process
  config.diffusion.num_scales = 25  # pc: the discrete VP chain needs num_scales > beta_max.
  config.diffusion.clip_denoised = False
  s = config.sampling
  s.sampler, s.ddim_steps, s.num_steps = sampler, 4, 3
  s.ode_rtol = s.ode_atol = 1e-3
  return config


def random_network(config):
  """(model, schedule, params, batch_stats) of a TinyEps network for config."""
  model = TinyEps(config.model.num_classes)
  labels = jnp.zeros((1,), jnp.int32) if config.model.num_classes else None
  variables = model.init(jax.random.PRNGKey(7), jnp.zeros((1, 8, 8, 1)), jnp.zeros((1,)), labels=labels)
  return model, diffusion.schedule_from_config(config.diffusion), variables['params'], {}


def expected_nfe(config) -> int | None:
  """Network calls per image of config.sampling's sampler (unguided); None for the adaptive ODE."""
  s, d = config.sampling, config.diffusion
  continuous = d.process != 'ddpm'
  return {'ancestral': d.num_timesteps, 'ddim': s.ddim_steps, 'dpm_solver_pp_2m': s.num_steps,
          'sde_dpm_solver_pp_2m': s.num_steps, 'unipc': s.num_steps,
          'euler': s.num_steps,
          # Heun corrects every step but one that lands on clean data (diffusers' discrete grids end there).
          'heun': 2 * s.num_steps - (0 if continuous else 1),
          'pc': 2 * (d.num_scales if continuous else d.num_timesteps),  # reverse_diffusion + 1 langevin step.
          'ode': None}[s.sampler]


@pytest.mark.parametrize('process,sampler', PROCESS_SAMPLERS)
def test_every_sampler_of_every_process_gives_finite_images_and_counts_its_network_calls(process, sampler):
  config = sampler_config(process, sampler)
  model, schedule, params, batch_stats = random_network(config)
  sample_fn = generate.make_sampler(model, schedule, config)
  x_T = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 1))
  x_0, frames, nfe = sample_fn(params, batch_stats, x_T, jax.random.PRNGKey(2))
  assert x_0.shape == (2, 8, 8, 1) and np.all(np.isfinite(x_0))
  assert np.std(np.asarray(x_0)) > 0.0
  expected = expected_nfe(config)
  if expected is None:  # dopri5: its first stage, 6 calls per step, one denoising call.
    assert int(nfe) > 2 and (int(nfe) - 2) % 6 == 0, int(nfe)
  else:
    assert int(nfe) == expected
  again, _, nfe_again = sample_fn(params, batch_stats, x_T, jax.random.PRNGKey(2))
  np.testing.assert_array_equal(again, x_0)  # The same key: the same images.
  assert int(nfe_again) == int(nfe)
  if sampler in ('ancestral', 'pc'):  # Noise at every step: another key, other images.
    other, _, _ = sample_fn(params, batch_stats, x_T, jax.random.PRNGKey(3))
    assert not np.allclose(other, x_0)


@pytest.mark.parametrize('process,sampler', [('ddpm', 'ancestral'), ('vpsde', 'heun'), ('subvpsde', 'pc'),
                                             ('vesde', 'ode')])
def test_classifier_free_guidance_doubles_the_network_calls(process, sampler):
  config = sampler_config(process, sampler, conditional=True)
  model, schedule, params, batch_stats = random_network(config)
  x_T = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 1))
  labels = jnp.array([0, 1], jnp.int32)
  outputs = {}
  for w in (0.0, 2.0):
    x_0, _, nfe = generate.make_sampler(model, schedule, config, guidance_scale=w)(
        params, batch_stats, x_T, jax.random.PRNGKey(2), labels)
    assert np.all(np.isfinite(x_0))
    outputs[w] = x_0, int(nfe)
  expected = expected_nfe(config)
  if expected is not None:
    assert outputs[0.0][1] == expected
  # The ODE's steps are adaptive: the guided solve may take others, each calling the network twice.
  assert outputs[2.0][1] % 2 == 0 and (expected is None or outputs[2.0][1] == 2 * expected)
  assert not np.allclose(outputs[0.0][0], outputs[2.0][0])


@pytest.mark.parametrize('process', ['ddpm', 'vpsde', 'subvpsde', 'vesde'])
@pytest.mark.parametrize('sampler', ['euler', 'ode'])
def test_a_zero_network_carries_the_prior_to_the_data_end_in_closed_form(process, sampler):
  """eps = 0 (all parameters zero): the score is 0, so the probability-flow ODE (and Euler on
  x / alpha) only rescales the start, x_T times the prior's std (sigma_max for VE, 1 otherwise): VE
  leaves it there; VP and sub-VP divide by the mean coefficient at t = 1 (the ODE, Tweedie's last
  step included), Euler by alpha of its first level."""
  config = sampler_config(process, sampler)
  config.sampling.ode_rtol = config.sampling.ode_atol = 1e-6
  model, schedule, params, batch_stats = random_network(config)
  params = jax.tree.map(jnp.zeros_like, params)
  x_T = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 1))
  x_0, _, _ = generate.make_sampler(model, schedule, config)(params, batch_stats, x_T, jax.random.PRNGKey(2))
  sde = sde_lib.from_config(config.diffusion)
  if sampler == 'euler':
    levels = generate.solver_levels(config, config.sampling.num_steps)
    scale = levels.alpha[-1] / levels.alpha[0]
  else:
    scale = 1.0 / float(sde_lib.marginal(sde, jnp.float32(1.0))[0])
  scale *= float(sde_lib.prior_std(sde))
  if process == 'vesde':
    assert scale == pytest.approx(config.diffusion.sigma_max)
  np.testing.assert_allclose(x_0, scale * np.asarray(x_T), rtol=2e-4, atol=1e-5)
