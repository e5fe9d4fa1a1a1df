"""The ancestral sampler: exactness with an oracle model, one compiled loop, frames, determinism."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_jax import diffusion, sampling


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
  x_T = jax.random.normal(jax.random.PRNGKey(0), (6, 4, 4, 1))
  x_0, frames = sampling.ancestral_sample(schedule, oracle_for_point(schedule, target), x_T,
                                          jax.random.PRNGKey(1), var_type, clip_denoised=True)
  assert frames is None
  np.testing.assert_allclose(x_0, jnp.broadcast_to(target, x_0.shape), atol=1e-4)


def test_sampler_is_one_loop_tracing_the_model_once(schedule):
  calls = []

  def model_fn(x, t):
    calls.append(1)
    return jnp.zeros_like(x)

  jaxpr = jax.make_jaxpr(lambda x, k: sampling.ancestral_sample(schedule, model_fn, x, k))(
      jnp.zeros((2, 4, 4, 1)), jax.random.PRNGKey(0))
  assert len(calls) == 1
  loops = [e for e in jaxpr.jaxpr.eqns if e.primitive.name in ('scan', 'while')]
  assert len(loops) == 1 and loops[0].params.get('length', 200) == 200


def test_frames_hold_x_T_and_the_final_sample(schedule):
  x_T = jax.random.normal(jax.random.PRNGKey(2), (3, 4, 4, 1))
  model = lambda x, t: 0.1 * x
  run = jax.jit(lambda x, k: sampling.ancestral_sample(schedule, model, x, k, frame_steps=(200, 100, 0)))
  x_0, frames = run(x_T, jax.random.PRNGKey(3))
  assert frames.shape == (3,) + x_T.shape
  np.testing.assert_array_equal(frames[0], x_T)
  np.testing.assert_array_equal(frames[2], x_0)
  assert not np.allclose(frames[1], frames[0]) and not np.allclose(frames[1], frames[2])


def test_frame_lookup_rejects_steps_outside_range():
  assert list(sampling.frame_lookup((3, 0), 3)) == [1, -1, -1, 0]
  with pytest.raises(ValueError, match='outside'):
    sampling.frame_lookup((4,), 3)


def test_sampling_is_deterministic_in_the_key(schedule):
  x_T = jax.random.normal(jax.random.PRNGKey(4), (2, 4, 4, 1))
  model = lambda x, t: 0.5 * x
  run = jax.jit(lambda k: sampling.ancestral_sample(schedule, model, x_T, k)[0])
  a, b, c = run(jax.random.PRNGKey(5)), run(jax.random.PRNGKey(5)), run(jax.random.PRNGKey(6))
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)


def test_progress_is_reported_from_inside_the_loop(schedule):
  seen = []
  sampling.ancestral_sample(schedule, lambda x, t: jnp.zeros_like(x), jnp.zeros((1, 2, 2, 1)),
                            jax.random.PRNGKey(0), progress_fn=lambda n: seen.append(int(n)),
                            progress_every=50)
  jax.effects_barrier()
  assert sorted(set(seen)) == [50, 100, 150, 200]
