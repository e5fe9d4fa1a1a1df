"""The discrete chain's samplers (ddpm_jax/samplers/ancestral.py, ddim.py, frames.py): exactness with an
oracle model, one compiled loop, frames, determinism, and DDIM against diffusers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from ddpm_jax import diffusion, samplers
from ddpm_jax.errors import ConfigError
from ddpm_jax.processes.vpsde import VPSDE
from ddpm_jax.samplers import ancestral, ddim, frames as frames_lib


def key(seed: int) -> jax.Array:
  """An rbg key: a loop that draws noise compiles in a third of threefry's time on CPU, and the
  samplers draw normal(fold_in(key, t)) from any key."""
  return jax.random.key(seed, impl='rbg')


@pytest.fixture(scope='module')
def schedule():
  return diffusion.make_schedule(diffusion.linear_betas(200, 1e-4, 0.05))


def oracle_for_point(schedule, target):
  """The exact eps-predictor for a dataset holding the single image `target`."""
  def model_fn(x, t):
    a = schedule.sqrt_alphas_cumprod[t][:, None, None, None]
    s = schedule.sqrt_one_minus_alphas_cumprod[t][:, None, None, None]
    return (x - a * target) / s
  return model_fn


@pytest.mark.parametrize('var_type', ['fixedlarge', 'fixedsmall'])
def test_oracle_sampler_lands_on_the_data_point(schedule, var_type):
  target = jnp.linspace(-0.9, 0.9, 16).reshape(1, 4, 4, 1)
  x_T = jax.random.normal(key(0), (6, 4, 4, 1))
  x_0, frames = ancestral.ancestral_sample(schedule, oracle_for_point(schedule, target), x_T, key(1), var_type,
                                           clip_denoised=True)
  assert frames is None
  np.testing.assert_allclose(x_0, jnp.broadcast_to(target, x_0.shape), atol=1e-4)


def test_sampler_is_one_loop_tracing_the_model_once(schedule):
  calls = []

  def model_fn(x, t):
    calls.append(1)
    return jnp.zeros_like(x)

  jaxpr = jax.make_jaxpr(lambda x, k: ancestral.ancestral_sample(schedule, model_fn, x, k))(
      jnp.zeros((2, 4, 4, 1)), key(0))
  assert len(calls) == 1
  loops = [e for e in jaxpr.jaxpr.eqns if e.primitive.name in ('scan', 'while')]
  assert len(loops) == 1 and loops[0].params.get('length', 200) == 200


def test_frames_hold_x_T_and_the_final_sample(schedule):
  x_T = jax.random.normal(key(2), (3, 4, 4, 1))
  model = lambda x, t: 0.1 * x
  run = jax.jit(lambda x, k: ancestral.ancestral_sample(schedule, model, x, k, frame_steps=(200, 100, 0)))
  x_0, frames = run(x_T, key(3))
  assert frames.shape == (3,) + x_T.shape
  np.testing.assert_array_equal(frames[0], x_T)
  np.testing.assert_array_equal(frames[2], x_0)
  assert not np.allclose(frames[1], frames[0]) and not np.allclose(frames[1], frames[2])


def test_frame_lookup_rejects_steps_outside_range():
  assert list(frames_lib.frame_lookup((3, 0), 3)) == [1, -1, -1, 0]
  with pytest.raises(ValueError, match='outside'):
    frames_lib.frame_lookup((4,), 3)


def test_the_chains_samplers_refuse_a_process_without_a_chain():
  """They read the network's raw output at the chain's integer timesteps: ddpm only."""
  config = default.get_config()
  config.diffusion.process = 'vpsde'
  for name in ('ancestral', 'ddim'):
    assert not samplers.sampler_class(name).needs_eps  # Any parameterisation of the chain's network.
    with pytest.raises(ConfigError, match=f'The {name} sampler walks the discrete chain, but '
                       'config.diffusion.process=vpsde'):
      samplers.sampler_class(name).check(config, VPSDE())


def test_sampling_is_deterministic_in_the_key(schedule):
  x_T = jax.random.normal(key(4), (2, 4, 4, 1))
  model = lambda x, t: 0.5 * x
  run = jax.jit(lambda k: ancestral.ancestral_sample(schedule, model, x_T, k)[0])
  a, b, c = run(key(5)), run(key(5)), run(key(6))
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)


def test_progress_is_reported_from_inside_the_loop(schedule):
  seen = []
  ancestral.ancestral_sample(schedule, lambda x, t: jnp.zeros_like(x), jnp.zeros((1, 2, 2, 1)), key(0),
                             progress_fn=lambda n: seen.append(int(n)), progress_every=50)
  jax.effects_barrier()
  assert sorted(set(seen)) == [50, 100, 150, 200]


# ---------------------------------------------------------------------------
# DDIM.


@pytest.mark.parametrize('spacing', ddim.DDIM_SPACINGS)
@pytest.mark.parametrize('num_steps', [1, 2, 7, 29, 50, 199, 200])
def test_ddim_timesteps_are_strictly_decreasing_in_range(spacing, num_steps):
  steps = ddim.ddim_timesteps(200, num_steps, spacing)
  assert steps.shape == (num_steps,)
  assert steps[-1] == 0 and steps[0] < 200
  assert np.all(np.diff(steps) < 0)


def test_ddim_timesteps_follow_the_reference_sequences():
  np.testing.assert_array_equal(ddim.ddim_timesteps(1000, 3), [666, 333, 0])  # diffusers 'leading'.
  np.testing.assert_array_equal(ddim.ddim_timesteps(10, 10), np.arange(10)[::-1])
  for n in (2, 10, 29):  # The DDIM code's quadratic sequence, where it has no repeats.
    reference = [int(s) for s in np.linspace(0, np.sqrt(800), n) ** 2]
    np.testing.assert_array_equal(ddim.ddim_timesteps(1000, n, 'quad')[::-1], reference)


def test_ddim_timesteps_refuse_bad_requests():
  with pytest.raises(ValueError, match='between 1 and'):
    ddim.ddim_timesteps(200, 201)
  with pytest.raises(ValueError, match='between 1 and'):
    ddim.ddim_timesteps(200, 0)
  with pytest.raises(ValueError, match='valid: uniform, quad'):
    ddim.ddim_timesteps(200, 10, 'linear')
  with pytest.raises(ValueError, match='fewer DDIM steps'):
    short = diffusion.make_schedule(diffusion.linear_betas(10, 1e-4, 0.05))
    ddim.ddim_sample(short, lambda x, t: x, jnp.zeros((1, 2, 2, 1)), key(0), num_steps=11)


@pytest.mark.parametrize('spacing', ddim.DDIM_SPACINGS)
@pytest.mark.parametrize('eta', [0.0, 1.0])
def test_ddim_oracle_sampler_lands_on_the_data_point(schedule, eta, spacing):
  target = jnp.linspace(-0.9, 0.9, 16).reshape(1, 4, 4, 1)
  x_T = jax.random.normal(key(0), (6, 4, 4, 1))
  x_0, frames = ddim.ddim_sample(schedule, oracle_for_point(schedule, target), x_T, key(1), num_steps=20, eta=eta,
                                 spacing=spacing)
  assert frames is None
  np.testing.assert_allclose(x_0, jnp.broadcast_to(target, x_0.shape), atol=1e-4)


def test_ddim_with_eta_zero_is_deterministic_in_x_T(schedule):
  x_T = jax.random.normal(key(4), (2, 4, 4, 1))
  model = lambda x, t: 0.5 * x
  run = jax.jit(lambda x, k, eta: ddim.ddim_sample(schedule, model, x, k, 25, eta)[0])
  a, b = run(x_T, key(5), 0.0), run(x_T, key(6), 0.0)
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, run(2 * x_T, key(5), 0.0))
  assert not np.allclose(run(x_T, key(5), 1.0), run(x_T, key(6), 1.0))


def test_ddim_with_eta_one_and_every_step_is_the_ancestral_sampler(schedule):
  """eta = 1 over all T timesteps is DDPM with the posterior variance (the DDIM paper's eq. 16)."""
  x_T = jax.random.normal(key(7), (2, 4, 4, 1))
  model = lambda x, t: 0.2 * x
  sample_key = key(8)
  ddim_x0, _ = ddim.ddim_sample(schedule, model, x_T, sample_key, 200, 1.0, clip_denoised=False)
  ddpm_x0, _ = ancestral.ancestral_sample(schedule, model, x_T, sample_key, 'fixedsmall', clip_denoised=False)
  np.testing.assert_allclose(ddim_x0, ddpm_x0, atol=1e-4)


def test_ddim_is_one_loop_tracing_the_model_once(schedule):
  calls = []

  def model_fn(x, t):
    calls.append(1)
    return jnp.zeros_like(x)

  jaxpr = jax.make_jaxpr(lambda x, k: ddim.ddim_sample(schedule, model_fn, x, k, 37, 0.5, 'quad'))(
      jnp.zeros((2, 4, 4, 1)), key(0))
  assert len(calls) == 1
  loops = [e for e in jaxpr.jaxpr.eqns if e.primitive.name in ('scan', 'while')]
  assert len(loops) == 1 and loops[0].params.get('length', 37) == 37


def test_ddim_frames_and_progress(schedule):
  x_T = jax.random.normal(key(2), (3, 4, 4, 1))
  seen = []
  x_0, frames = ddim.ddim_sample(schedule, lambda x, t: 0.1 * x, x_T, key(3), 10, frame_steps=(10, 5, 0),
                                 progress_fn=lambda n: seen.append(int(n)), progress_every=5)
  jax.effects_barrier()
  assert sorted(set(seen)) == [5, 10]
  assert frames.shape == (3,) + x_T.shape
  np.testing.assert_array_equal(frames[0], x_T)
  np.testing.assert_array_equal(frames[2], x_0)
  assert not np.allclose(frames[1], frames[0]) and not np.allclose(frames[1], frames[2])


@pytest.mark.parametrize('eta', [0.0, 1.0])
@pytest.mark.parametrize('clipped_eps', [False, True])
def test_ddim_sampler_matches_a_diffusers_ddim_loop(eta, clipped_eps):
  """The whole loop against DDIMScheduler ('leading' spacing) fed the same per-step noise."""
  diffusers = pytest.importorskip('diffusers')
  torch = pytest.importorskip('torch')
  schedule = diffusion.make_schedule(diffusion.linear_betas(1000, 1e-4, 0.02))
  ref = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02,
                                beta_schedule='linear', clip_sample=True, set_alpha_to_one=True,
                                steps_offset=0, prediction_type='epsilon', timestep_spacing='leading')
  ref.set_timesteps(20)
  x_T = jax.random.normal(key(9), (2, 4, 4, 1))
  sample_key = key(10)
  ours, _ = ddim.ddim_sample(schedule, lambda x, t: 0.3 * x, x_T, sample_key, 20, eta, clipped_eps=clipped_eps)
  x = torch.from_numpy(np.array(x_T))
  for t in ref.timesteps.tolist():
    noise = torch.from_numpy(np.array(jax.random.normal(jax.random.fold_in(sample_key, t), x_T.shape)))
    x = ref.step(0.3 * x, t, x, eta=eta, variance_noise=noise, use_clipped_model_output=clipped_eps).prev_sample
  np.testing.assert_allclose(ours, x.numpy(), atol=1e-4)
