"""Closed-form checks of the diffusion maths."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_jax import diffusion

T = 1000


@pytest.fixture(scope='module')
def schedule():
  return diffusion.make_schedule(diffusion.linear_betas(T, 1e-4, 0.02))


def reference_quantities():
  """Float64 schedule quantities computed independently of the module."""
  betas = np.linspace(1e-4, 0.02, T)
  alphas = 1.0 - betas
  alphas_cumprod = np.array([np.prod(alphas[:t + 1]) for t in range(T)])
  return betas, alphas, alphas_cumprod


def test_linear_schedule_endpoints_and_cumprod(schedule):
  betas, _, alphas_cumprod = reference_quantities()
  assert schedule.num_timesteps == T
  np.testing.assert_allclose(np.asarray(schedule.betas)[[0, -1]], [1e-4, 0.02], rtol=1e-6)
  np.testing.assert_allclose(schedule.betas, betas, rtol=1e-6)
  np.testing.assert_allclose(schedule.alphas_cumprod, alphas_cumprod, rtol=1e-5)
  assert np.all(np.diff(np.asarray(schedule.alphas_cumprod)) < 0)


@pytest.mark.parametrize('betas', [[0.1], [0.0, 0.1], [0.1, 1.0], [[0.1, 0.2]]])
def test_make_schedule_rejects_invalid_betas(betas):
  with pytest.raises(ValueError, match='betas'):
    diffusion.make_schedule(np.asarray(betas))


def test_q_sample_moments_match_closed_form(schedule):
  _, _, alphas_cumprod = reference_quantities()
  x0 = jnp.array([-0.8, 0.3, 1.0])
  draws = 200_000
  for t_value in (0, 100, 500, 999):
    t = jnp.full((draws,), t_value)
    noise = jax.random.normal(jax.random.PRNGKey(t_value), (draws, 3))
    x_t = np.asarray(diffusion.q_sample(schedule, jnp.broadcast_to(x0, (draws, 3)), t, noise))
    mean = np.sqrt(alphas_cumprod[t_value]) * np.asarray(x0)
    variance = 1.0 - alphas_cumprod[t_value]
    np.testing.assert_allclose(x_t.mean(0), mean, atol=5 * np.sqrt(variance / draws) + 1e-6)
    np.testing.assert_allclose(x_t.var(0), variance, rtol=0.02, atol=1e-6)
    m, v, log_v = diffusion.q_mean_variance(schedule, x0[None], jnp.array([t_value]))
    np.testing.assert_allclose(m[0], mean, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(v[0], variance, rtol=1e-4)
    np.testing.assert_allclose(np.exp(log_v[0]), variance, rtol=1e-4)


def test_posterior_matches_bayes_rule(schedule):
  """q(x_{t-1} | x_t, x_0) ∝ q(x_t | x_{t-1}) q(x_{t-1} | x_0): a product of two Gaussians."""
  betas, alphas, alphas_cumprod = reference_quantities()
  rng = np.random.default_rng(0)
  t = np.array([1, 10, 300, 999])
  x0 = rng.uniform(-1, 1, (4, 5))
  x_t = rng.normal(size=(4, 5))
  prev = alphas_cumprod[t - 1]
  precision = 1.0 / (1.0 - prev) + alphas[t] / betas[t]
  variance = 1.0 / precision
  mean = variance[:, None] * (np.sqrt(prev)[:, None] * x0 / (1.0 - prev)[:, None]
                              + np.sqrt(alphas[t])[:, None] * x_t / betas[t][:, None])
  m, v, log_v = diffusion.q_posterior_mean_variance(
      schedule, jnp.asarray(x0, jnp.float32), jnp.asarray(x_t, jnp.float32), jnp.asarray(t))
  np.testing.assert_allclose(m, mean, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(v[:, 0], variance, rtol=1e-4)
  np.testing.assert_allclose(np.exp(log_v[:, 0]), variance, rtol=1e-4)


def test_posterior_at_t0_returns_x0_and_clipped_log_variance(schedule):
  x0 = jnp.array([[0.25, -0.5]])
  m, v, log_v = diffusion.q_posterior_mean_variance(schedule, x0, jnp.array([[3.0, 3.0]]), jnp.array([0]))
  np.testing.assert_allclose(m, x0, atol=1e-6)
  assert float(v[0, 0]) == 0.0
  np.testing.assert_allclose(log_v[0, 0], np.log(schedule.posterior_variance[1]), rtol=1e-6)


def test_predict_x0_from_eps_inverts_q_sample(schedule):
  key_x, key_n = jax.random.split(jax.random.PRNGKey(1))
  x0 = jax.random.uniform(key_x, (8, 4, 4, 3), minval=-1, maxval=1)
  noise = jax.random.normal(key_n, x0.shape)
  t = jnp.array([0, 1, 50, 200, 500, 700, 900, 999])
  x_t = diffusion.q_sample(schedule, x0, t, noise)
  np.testing.assert_allclose(diffusion.predict_x0_from_eps(schedule, x_t, t, noise), x0, atol=2e-4)


def test_p_mean_variance_with_true_noise_is_the_posterior(schedule):
  x0 = jnp.linspace(-0.9, 0.9, 12).reshape(3, 2, 2, 1)
  noise = jax.random.normal(jax.random.PRNGKey(2), x0.shape)
  t = jnp.array([5, 250, 800])
  x_t = diffusion.q_sample(schedule, x0, t, noise)
  oracle = lambda x, tt: noise
  posterior_mean, posterior_var, _ = diffusion.q_posterior_mean_variance(schedule, x0, x_t, t)
  for var_type, expected_var in (('fixedsmall', posterior_var[:, 0, 0, 0]),
                                 ('fixedlarge', schedule.betas[t])):
    mean, var, log_var, pred_x0 = jax.jit(
        diffusion.p_mean_variance, static_argnums=(1, 4, 5))(schedule, oracle, x_t, t, var_type, False)
    np.testing.assert_allclose(pred_x0, x0, atol=5e-4)
    np.testing.assert_allclose(mean, posterior_mean, atol=5e-4)
    np.testing.assert_allclose(var[:, 0, 0, 0], expected_var, rtol=1e-5)
    np.testing.assert_allclose(np.exp(log_var[:, 0, 0, 0]), expected_var, rtol=1e-4)


def test_fixedlarge_variance_at_t0_uses_posterior_variance_of_t1(schedule):
  var, _ = diffusion.model_variance(schedule, jnp.array([0]), 2, 'fixedlarge')
  np.testing.assert_allclose(var[0, 0], schedule.posterior_variance[1], rtol=1e-6)
  with pytest.raises(ValueError, match='fixedlarge'):
    diffusion.model_variance(schedule, jnp.array([0]), 2, 'learned')


def test_clip_denoised_bounds_predicted_x0(schedule):
  x_t = jnp.full((1, 2, 2, 1), 5.0)
  _, _, _, pred_x0 = diffusion.p_mean_variance(schedule, lambda x, t: -jnp.ones_like(x), x_t,
                                               jnp.array([999]), 'fixedlarge', True)
  assert float(jnp.max(jnp.abs(pred_x0))) <= 1.0


def test_p_sample_adds_noise_except_at_t0(schedule):
  x_t = jnp.zeros((2, 3, 3, 1))
  model = lambda x, t: jnp.zeros_like(x)
  noise = jnp.ones_like(x_t)
  x_prev, _ = diffusion.p_sample(schedule, model, x_t, jnp.array([0, 10]), noise)
  mean, _, log_var, _ = diffusion.p_mean_variance(schedule, model, x_t, jnp.array([0, 10]))
  np.testing.assert_allclose(x_prev[0], mean[0], atol=1e-7)
  np.testing.assert_allclose(x_prev[1], mean[1] + np.exp(0.5 * log_var[1]), rtol=1e-6)


def test_simple_loss_is_noise_mse(schedule):
  x0 = jnp.zeros((4, 3, 3, 1))
  noise = jax.random.normal(jax.random.PRNGKey(3), x0.shape)
  t = jnp.array([0, 10, 100, 999])
  perfect = diffusion.simple_loss(schedule, lambda x, tt: noise, x0, t, noise)
  np.testing.assert_allclose(perfect, 0.0, atol=1e-12)
  zero = diffusion.simple_loss(schedule, lambda x, tt: jnp.zeros_like(x), x0, t, noise)
  np.testing.assert_allclose(zero, np.mean(np.asarray(noise) ** 2, axis=(1, 2, 3)), rtol=1e-6)


def test_sample_timesteps_cover_the_range_uniformly():
  t = np.asarray(diffusion.sample_timesteps(jax.random.PRNGKey(4), 100_000, 10))
  assert t.min() == 0 and t.max() == 9
  np.testing.assert_allclose(np.bincount(t) / len(t), 0.1, atol=0.005)
