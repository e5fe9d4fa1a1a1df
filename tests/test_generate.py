"""Sampling bound to a network (ddpm_jax/generate.py): a tiny class-conditional model draws the
requested class, with and without guidance; every registered sampler on every process it allows, on
a tiny random network: its network calls (NFE), its use of the key, guidance, and the closed form of
a zero network. --mode=sample itself runs in test_train.py and test_main.py.

A compile is most of a case's time, so each (process, sampler) program is compiled once
(`compiled`) and shared by the tests that run it, with a network of a few parameters and a few steps.
"""

import functools
import logging
from typing import Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_jax import data, generate, parallel, processes, progress, samplers
from ddpm_jax.errors import ConfigError
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
  mesh, model, process, state, step = train_testlib.training_setup(config)
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
      sample_fn = generate.make_sampler(model, process, config, guidance_scale=w)
      draw = lambda seed_key: generate.generate(sample_fn, state.ema_params, state.ema_batch_stats, 64, 64,
                                             (8, 8, 1), seed_key, mesh, labels)
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


# ---------------------------------------------------------------------------
# A tiny random network with every sampler of every process.


def key(seed: int) -> jax.Array:
  """An rbg key: a loop that draws noise compiles in a third of threefry's time on CPU, and every
  sampler draws its noise by fold_in from whatever key it gets."""
  return jax.random.key(seed, impl='rbg')


X_T = jnp.asarray(np.random.default_rng(1).standard_normal((2, 8, 8, 1)), jnp.float32)


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
  # Tight for the zero network's closed form (test below); the guided runs only count calls.
  s.ode_rtol = s.ode_atol = 1e-3 if conditional else 1e-6
  return config


class Compiled(NamedTuple):
  config: object
  process: processes.Process
  params: dict
  sample_fn: Callable


@functools.cache
def compiled(process: str, sampler: str, conditional: bool = False, guidance_scale: float | None = None) -> Compiled:
  """The compiled sampler of a TinyEps network (random parameters from PRNGKey(7)) for
  sampler_config(process, sampler, conditional), built once per session. Samplers that report
  progress from their loop (those that keep frames) report every reverse step: the progress test
  shares the ddpm DDIM program of the matrix."""
  config = sampler_config(process, sampler, conditional)
  reports = samplers.sampler_class(sampler).keeps_frames
  config.sampling.progress_every = 1
  model = TinyEps(config.model.num_classes)
  labels = jnp.zeros((1,), jnp.int32) if config.model.num_classes else None
  params = model.init(jax.random.PRNGKey(7), jnp.zeros((1, 8, 8, 1)), jnp.zeros((1,)), labels=labels)['params']
  process_ = processes.from_config(config.diffusion)
  sample_fn = generate.make_sampler(model, process_, config, progress=reports, guidance_scale=guidance_scale)
  return Compiled(config, process_, params, sample_fn)


def allowed(process: str, sampler: str) -> bool:
  """Whether the sampler's own check lets it run on the process."""
  config = sampler_config(process, sampler)
  try:
    samplers.sampler_class(sampler).check(config, processes.from_config(config.diffusion))
  except ConfigError:
    return False
  return True


ALL_PAIRS = [(p, s) for p in processes.PROCESSES for s in samplers.SAMPLERS]
PROCESS_SAMPLERS = [pair for pair in ALL_PAIRS if allowed(*pair)]


def test_every_sampler_runs_on_every_process_but_the_chains_own_off_the_chain():
  """Only the discrete chain's samplers (of the network's raw output, needs_eps False) are refused,
  and only on processes without a chain; everything else samples from eps on any process."""
  refused = sorted(set(ALL_PAIRS) - set(PROCESS_SAMPLERS))
  assert refused == sorted((p, s) for p, p_cls in processes.PROCESSES.items() if not p_cls.discrete_chain
                           for s, s_cls in samplers.SAMPLERS.items() if not s_cls.needs_eps)


def _ends_on_clean_data(config, process) -> bool:
  """Whether the level solvers' last level has sigma 0 (the ddpm chain's diffusers grids)."""
  return process.solver_levels(config.sampling.num_steps, config.sampling.spacing, 'euler')[1][-1] == 0


class Expected(NamedTuple):
  # nfe(config, process, steps) -> network calls per image (unguided), steps = the sampler's steps;
  # None for an adaptive sampler.
  nfe: Callable | None
  # Whether it draws noise along the way (another key: other images), or uses no key at all.
  stochastic: bool


ONE_CALL_PER_STEP = lambda config, process, steps: steps
EXPECTED = {
    'ancestral': Expected(ONE_CALL_PER_STEP, True),
    'ddim': Expected(ONE_CALL_PER_STEP, False),  # eta = 0.
    'dpm_solver_pp_2m': Expected(ONE_CALL_PER_STEP, False),
    'sde_dpm_solver_pp_2m': Expected(ONE_CALL_PER_STEP, True),
    'unipc': Expected(ONE_CALL_PER_STEP, False),
    'euler': Expected(ONE_CALL_PER_STEP, False),
    # Heun corrects every step but one that lands on clean data (diffusers' discrete grids end there).
    'heun': Expected(lambda config, process, steps: 2 * steps - _ends_on_clean_data(config, process), False),
    'pc': Expected(lambda config, process, steps: 2 * steps, True),  # reverse_diffusion + 1 langevin step.
    'ode': Expected(None, False),  # dopri5: its first stage, 6 calls per step, one denoising call.
    # Karras's grid ends at sigma 0: every step but the last corrected.
    'edm_heun': Expected(lambda config, process, steps: 2 * steps - 1, False),
    'edm_stochastic': Expected(lambda config, process, steps: 2 * steps - 1, True),  # config's s_churn 40.
}


def test_every_registered_sampler_has_its_expectations():
  assert sorted(EXPECTED) == sorted(samplers.SAMPLERS)
  for name, cls in samplers.SAMPLERS.items():
    assert (EXPECTED[name].nfe is None) == cls.adaptive, name


def assert_nfe(run: Compiled, nfe, calls_per_eval: int = 1) -> None:
  sampler = samplers.sampler_class(run.config.sampling.sampler)
  expected = EXPECTED[sampler.name].nfe
  if expected is None:  # The adaptive ODE: 2 + 6 calls per step, each of calls_per_eval network calls.
    assert int(nfe) % calls_per_eval == 0 and (int(nfe) // calls_per_eval - 2) % 6 == 0, int(nfe)
    assert int(nfe) // calls_per_eval > 2
  else:
    assert int(nfe) == calls_per_eval * expected(run.config, run.process, sampler.steps(run.config, run.process))


@pytest.mark.parametrize('process,sampler', PROCESS_SAMPLERS)
def test_every_sampler_of_every_process_gives_finite_images_and_counts_its_network_calls(process, sampler):
  run = compiled(process, sampler)
  x_0, frames, nfe = run.sample_fn(run.params, {}, X_T, key(2))
  assert x_0.shape == X_T.shape and np.all(np.isfinite(x_0)) and frames is None
  assert np.std(np.asarray(x_0)) > 0.0
  assert_nfe(run, nfe)
  again, _, nfe_again = run.sample_fn(run.params, {}, X_T, key(2))
  np.testing.assert_array_equal(again, x_0)  # The same key: the same images.
  assert int(nfe_again) == int(nfe)
  other, _, _ = run.sample_fn(run.params, {}, X_T, key(3))
  if EXPECTED[sampler].stochastic:  # Noise along the way: another key, other images.
    assert not np.allclose(other, x_0)
  else:
    np.testing.assert_array_equal(other, x_0)


# One sampler of each kind: the chain's (raw output), a level solver, predictor-corrector (score),
# the adaptive ODE, Karras's (denoiser); guidance wraps the network once, under all of them.
GUIDED = [('ddpm', 'ancestral'), ('vpsde', 'heun'), ('subvpsde', 'pc'), ('vesde', 'ode'), ('edm', 'edm_stochastic')]
LABELS = jnp.array([0, 1], jnp.int32)


@pytest.mark.parametrize('process,sampler', GUIDED)
def test_classifier_free_guidance_doubles_the_network_calls(process, sampler):
  """Guided, each network call is one on the doubled batch: twice the unguided calls (EXPECTED; the
  ODE's steps are adaptive: the guided solve may take other steps, each of two calls)."""
  run = compiled(process, sampler, conditional=True, guidance_scale=2.0)
  x_0, _, nfe = run.sample_fn(run.params, {}, X_T, key(2), LABELS)
  assert np.all(np.isfinite(x_0))
  assert_nfe(run, nfe, calls_per_eval=2)


def test_unguided_a_conditional_network_is_called_once_and_guidance_changes_the_images():
  """w = 0 calls the conditional network alone. The guided network is one wrapper for every sampler
  (denoiser.network_output_fn), so one sampler shows that guidance acts."""
  outputs = {}
  for w in (0.0, 2.0):
    run = compiled(*GUIDED[0], conditional=True, guidance_scale=w)
    x_0, _, nfe = run.sample_fn(run.params, {}, X_T, key(2), LABELS)
    assert np.all(np.isfinite(x_0))
    assert_nfe(run, nfe, calls_per_eval=2 if w else 1)
    outputs[w] = x_0
  assert not np.allclose(outputs[0.0], outputs[2.0])


def test_an_ode_solve_beyond_its_step_bound_ends_in_one_error_naming_the_knob():
  """The ODE sampler's solve that stops at config.sampling.ode_max_steps raises on the host, naming the
  knob, the steps and the fix; guided too (its negated network calls, doubled, stay negative)."""
  run = compiled('vesde', 'ode', conditional=True, guidance_scale=2.0)
  config = sampler_config('vesde', 'ode', conditional=True)
  config.sampling.ode_max_steps = 2
  sample_fn = generate.make_sampler(TinyEps(config.model.num_classes), run.process, config, guidance_scale=2.0)
  with pytest.raises(ConfigError, match=r'^The probability-flow ODE sampler took more than config\.sampling\.'
                                        r'ode_max_steps=2 steps \(each 6 network calls\) and stopped short of its end: '
                                        r'raise config\.sampling\.ode_max_steps above 2, or loosen'):
    sample_fn(run.params, {}, X_T, key(2), LABELS)
  _, _, nfe = run.sample_fn(run.params, {}, X_T, key(2), LABELS)  # The default bound: the solve ends.
  assert int(nfe) > 2 * (2 + 6 * 2)


def _zero_network_gain(process, t) -> np.ndarray:
  """g(t) with eps = g(t) x / alpha(t) for the network that outputs 0 (its parameters all 0): 0 where
  eps is the output itself, (1 - c_skip) alpha / sigma for EDM's preconditioned denoiser."""
  t = jnp.asarray(np.atleast_1d(t), jnp.float32)
  eps = process.eps_fn(lambda x, time: jnp.zeros_like(x))(jnp.ones((t.shape[0], 1)), t)
  return np.asarray(eps[:, 0], np.float64) * np.asarray(process.marginal(t)[0], np.float64)


def _sigma_ratio(process, t) -> np.ndarray:
  alpha, sigma = process.marginal(jnp.asarray(np.atleast_1d(t), jnp.float32))
  return np.asarray(sigma, np.float64) / np.asarray(alpha, np.float64)


def zero_network_scale(process, config) -> float:
  """x_0 / x_T of config.sampling's sampler (euler, ode or edm_heun) with the zero network, in closed form.

  Each walks x~ = x / alpha against sigma~ = sigma / alpha from x~_T = prior_std x_T / alpha(t_max),
  along dx~/dsigma~ = eps = g x~: linear in x~, so x_0 = scale x_T. With g = 0 (eps-networks) x~ stays;
  EDM's zero network is the denoiser D = c_skip x, so g = sigma / (sigma^2 + sigma_data^2) there.
  euler: x~ (1 + g_i dsigma~_i) per level, then x = alpha x~ at the last level; edm_heun: Heun's
  factor per step (Euler's on the last, to sigma~ = 0, which lands on D); ode: x~ exp(int g dsigma~)
  to t_min, then Tweedie's x_0 = x~ (1 - sigma~ g).
  """
  name = config.sampling.sampler
  start = process.prior_std / float(process.marginal(jnp.float32(process.t_max))[0])
  if name == 'euler':
    alpha, sigma, times = process.solver_levels(config.sampling.num_steps, config.sampling.spacing, 'euler')
    g, step = _zero_network_gain(process, times[:-1]), np.diff(sigma / alpha)
    return process.prior_std / alpha[0] * np.prod(1 + g * step) * alpha[-1]  # Its own first level's alpha.
  if name == 'edm_heun':
    sigmas = samplers.sampler_class(name).grid(config, process)
    g = np.append(_zero_network_gain(process, process.times_at_sigma_ratio(sigmas[:-1])), 0.0)
    step = np.diff(sigmas)
    factors = 1 + 0.5 * step * (g[:-1] + g[1:] * (1 + step * g[:-1]))
    factors[-1] = 1 + step[-1] * g[-2]
    return start * np.prod(factors)
  assert name == 'ode'
  t = np.linspace(process.t_max, process.t_min, 20001)
  g, ratio = _zero_network_gain(process, t), _sigma_ratio(process, t)
  integral = np.sum(0.5 * (g[1:] + g[:-1]) * np.diff(ratio))
  return start * np.exp(integral) * (1 - ratio[-1] * g[-1])


@pytest.mark.parametrize('sampler', ['euler', 'ode', 'edm_heun'])
@pytest.mark.parametrize('process', list(processes.PROCESSES))
def test_a_zero_network_carries_the_prior_to_the_data_end_in_closed_form(process, sampler):
  """All parameters zero: the sample is x_T times a closed form of the process (zero_network_scale).
  With eps = 0 the ODE, Euler and Karras's Heun on x / alpha only rescale the start by the prior's
  std over alpha there (VE keeps sigma_max); EDM's zero network denoises to c_skip x."""
  run = compiled(process, sampler)
  params = jax.tree.map(jnp.zeros_like, run.params)
  x_0, _, _ = run.sample_fn(params, {}, X_T, key(2))
  scale = zero_network_scale(run.process, run.config)
  if process == 'vesde':
    assert scale == pytest.approx(run.config.diffusion.sigma_max)
  if process == 'edm' and sampler == 'ode':  # sigma_data sqrt((s_max^2 / (s_max^2 + s_d^2)) c_skip(s_min)).
    d = run.config.diffusion
    assert scale == pytest.approx(d.sigma_data * d.sigma_max / np.sqrt(d.sigma_max ** 2 + d.sigma_data ** 2)
                                  * np.sqrt(d.sigma_data ** 2 / (d.sigma_min ** 2 + d.sigma_data ** 2)), rel=1e-4)
  # Karras's d = (x~ - D) / sigma~ cancels in float32: x~ ~ 150 (never denoised) over sub-VP's sigma~ of
  # 1e-4 at t_min turns ulps of x~ into errors of ~1e-3 x~ at the last corrected step.
  rtol = 2e-3 if (process, sampler) == ('subvpsde', 'edm_heun') else 2e-4
  np.testing.assert_allclose(x_0, scale * np.asarray(X_T), rtol=rtol, atol=1e-5)


def test_the_compiled_samplers_reverse_steps_move_the_bar_or_are_logged_outside_generate(caplog):
  run = compiled('ddpm', 'ddim')  # ddim_steps 4, a report every step.
  with caplog.at_level(logging.INFO, logger='absl'):
    generate.generate(run.sample_fn, run.params, {}, 4, 2, (8, 8, 1), key(0), parallel.make_mesh(),
                      log_every_seconds=0)
  done = [float(r.getMessage().split('(')[1].split('%')[0]) for r in caplog.records
          if r.getMessage().startswith('Sampling:')]
  assert done == [12.0, 25.0, 38.0, 50.0, 62.0, 75.0, 88.0, 100.0]  # Each reverse step of each batch.
  assert not any('reverse step' in r.getMessage() for r in caplog.records)
  caplog.clear()
  with caplog.at_level(logging.INFO, logger='absl'):
    jax.block_until_ready(run.sample_fn(run.params, {}, X_T, key(2)))
  assert [r.getMessage() for r in caplog.records if 'reverse step' in r.getMessage()] == [
      f'  reverse step {n}/4' for n in range(1, 5)]
