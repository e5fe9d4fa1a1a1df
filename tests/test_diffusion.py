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


def simple_loss(schedule, model_fn, x0, t, noise):
  return diffusion.training_loss(diffusion.LossSpec(), schedule, model_fn, x0, t, noise).per_example


def test_simple_loss_is_noise_mse(schedule):
  x0 = jnp.zeros((4, 3, 3, 1))
  noise = jax.random.normal(jax.random.PRNGKey(3), x0.shape)
  t = jnp.array([0, 10, 100, 999])
  perfect = simple_loss(schedule, lambda x, tt: noise, x0, t, noise)
  np.testing.assert_allclose(perfect, 0.0, atol=1e-12)
  zero = simple_loss(schedule, lambda x, tt: jnp.zeros_like(x), x0, t, noise)
  np.testing.assert_allclose(zero, np.mean(np.asarray(noise) ** 2, axis=(1, 2, 3)), rtol=1e-6)


def test_sample_timesteps_cover_the_range_uniformly():
  t = np.asarray(diffusion.sample_timesteps(jax.random.PRNGKey(4), 100_000, 10))
  assert t.min() == 0 and t.max() == 9
  np.testing.assert_allclose(np.bincount(t) / len(t), 0.1, atol=0.005)


# ---------------------------------------------------------------------------
# Named schedules: closed forms, and refusals.


@pytest.mark.parametrize('name', sorted(diffusion.BETA_SCHEDULES))
def test_every_named_schedule_builds_a_valid_schedule(name):
  betas = diffusion.BETA_SCHEDULES[name](T, 1e-4, 0.02)
  assert betas.dtype == np.float64 and betas.shape == (T,)
  s = diffusion.make_schedule(betas)
  assert np.all(np.diff(np.asarray(s.alphas_cumprod)) < 0) and float(s.alphas_cumprod[-1]) > 0
  assert np.all(np.isfinite(np.asarray(s.sqrt_recip_alphas_cumprod)))


def test_quad_const_sigmoid_closed_forms():
  quad = diffusion.quad_betas(T, 1e-4, 0.02)
  np.testing.assert_allclose(quad[[0, -1]], [1e-4, 0.02], rtol=1e-12)
  np.testing.assert_allclose(np.diff(np.sqrt(quad)), (np.sqrt(0.02) - np.sqrt(1e-4)) / (T - 1), rtol=1e-9)
  np.testing.assert_array_equal(diffusion.const_betas(T, 1e-4, 0.02), np.full(T, 0.02))
  sigmoid = diffusion.sigmoid_betas(T, 1e-4, 0.02)
  np.testing.assert_allclose(sigmoid[[0, -1]], 1e-4 + 0.0199 / (1 + np.exp([6.0, -6.0])), rtol=1e-12)
  np.testing.assert_allclose(sigmoid + sigmoid[::-1], 1e-4 + 0.02, rtol=1e-12)  # Odd about the middle.


def test_jsd_is_one_over_steps_left_capped_below_one():
  jsd = diffusion.jsd_betas(T, 1e-4, 0.02)
  np.testing.assert_allclose(jsd[:-1], 1.0 / np.arange(T, 1, -1), rtol=1e-15)
  assert jsd[0] == 1.0 / T and jsd[-1] == diffusion.MAX_BETA
  # alphas_cumprod telescopes: prod_{s<=t} (1 - 1/(T-s)) = (T-1-t)/T before the cap.
  s = diffusion.make_schedule(jsd)
  np.testing.assert_allclose(s.alphas_cumprod[:-1], (T - 1 - np.arange(T - 1)) / T, rtol=1e-5)


def test_cosine_follows_the_squared_cosine_and_ignores_endpoints():
  betas = diffusion.cosine_betas(T, 1e-4, 0.02)
  np.testing.assert_array_equal(betas, diffusion.cosine_betas(T, 0.3, 0.4))
  f = np.cos((np.arange(T + 1) / T + 0.008) / 1.008 * np.pi / 2) ** 2
  alphas_cumprod = np.cumprod(1.0 - betas)
  uncapped = betas < diffusion.MAX_BETA
  assert not uncapped[-1] and uncapped[:-1].all()
  np.testing.assert_allclose(alphas_cumprod[:-1], (f[1:] / f[0])[:-1], rtol=1e-10)


def test_make_schedule_refuses_non_decreasing_alphas_cumprod():
  with pytest.raises(ValueError, match='alphas_cumprod must strictly decrease'):
    diffusion.make_schedule(diffusion.const_betas(T, 0.0, 1e-17))  # 1 - beta == 1 in float64.
  with pytest.raises(ValueError, match='underflows'):
    diffusion.make_schedule(diffusion.const_betas(1100, 0.0, 0.5))  # 0.5 ** 1075 == 0.


# ---------------------------------------------------------------------------
# Parity with diffusers' schedulers (PyTorch).


def _theirs(scheduler_cls, beta_schedule, **kwargs):
  return scheduler_cls(num_train_timesteps=T, beta_start=1e-4, beta_end=0.02, beta_schedule=beta_schedule,
                       prediction_type='epsilon', clip_sample=True, **kwargs)


def _float64(scheduler, betas: np.ndarray):
  """diffusers keeps its schedule in float32, where 1 - abar_t / abar_{t-1} (its beta) loses ~3
  digits for beta ~ 1e-4; its own code run on our exact float64 schedule isolates the maths."""
  torch = pytest.importorskip('torch')
  scheduler.betas = torch.from_numpy(betas)
  scheduler.alphas = torch.from_numpy(1.0 - betas)
  scheduler.alphas_cumprod = torch.from_numpy(np.cumprod(1.0 - betas))
  scheduler.one = scheduler.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
  return scheduler


@pytest.mark.parametrize('ours,theirs', [('linear', 'linear'), ('cosine', 'squaredcos_cap_v2'),
                                         ('quad', 'scaled_linear'), ('sigmoid', 'sigmoid')])
def test_schedules_match_diffusers(ours, theirs):
  diffusers = pytest.importorskip('diffusers')
  ref = _theirs(diffusers.DDPMScheduler, theirs)
  betas = diffusion.BETA_SCHEDULES[ours](T, 1e-4, 0.02)
  # To float32 rounding (quad and sigmoid round in float32 before squaring / scaling: ~3 ulp).
  np.testing.assert_allclose(betas, ref.betas.double().numpy(), rtol=4e-7)
  ref_cumprod = ref.alphas_cumprod.double().numpy()
  # Our float32 schedule. Cosine's last beta (0.999) rounded to float32 moves its 1 - beta by
  # 1.3e-5 relative, so that entry is compared from float32-rounded betas.
  np.testing.assert_allclose(diffusion.make_schedule(betas).alphas_cumprod[:-1], ref_cumprod[:-1], rtol=1e-6)
  rounded = diffusion.make_schedule(betas.astype(np.float32))
  np.testing.assert_allclose(rounded.alphas_cumprod, ref_cumprod, rtol=1e-6)


def test_posterior_variance_matches_diffusers_fixed_small(schedule):
  diffusers = pytest.importorskip('diffusers')
  betas = diffusion.linear_betas(T, 1e-4, 0.02)
  ref = _float64(_theirs(diffusers.DDPMScheduler, 'linear', variance_type='fixed_small'), betas)
  theirs = np.array([float(ref._get_variance(t, variance_type='fixed_small')) for t in range(1, T)])
  np.testing.assert_allclose(schedule.posterior_variance[1:], theirs, rtol=1e-6)
  as_shipped = _theirs(diffusers.DDPMScheduler, 'linear', variance_type='fixed_small')
  theirs32 = np.array([float(as_shipped._get_variance(t)) for t in range(1, T)])
  np.testing.assert_allclose(schedule.posterior_variance[1:], theirs32, rtol=1e-3)  # float32 cancellation.


def _step_inputs(t_value, dtype):
  torch = pytest.importorskip('torch')
  rng = np.random.default_rng(t_value)
  x_t = rng.normal(size=(2, 4, 4, 3)) * 1.5  # Predicted x_0 leaves [-1, 1]: clipping is exercised.
  eps = rng.normal(size=x_t.shape)
  exact = lambda a: torch.from_numpy(a.astype(np.float32).astype(dtype))  # Same values on both sides.
  return exact(x_t), exact(eps)


def _tolerance(schedule, t_value: int) -> float:
  """1e-5 in x_t's units: predicting x_0 multiplies x_t by 1 / sqrt(abar_t) (~150 at t = T - 1),
  and float32 rounding of that product is the floor of what our float32 step can match."""
  return 1e-5 * float(schedule.sqrt_recip_alphas_cumprod[t_value])


@pytest.mark.parametrize('t_value', [0, 1, 10, 500, 999])
def test_ddpm_step_matches_diffusers(schedule, t_value):
  diffusers = pytest.importorskip('diffusers')
  torch = pytest.importorskip('torch')
  ref = _float64(_theirs(diffusers.DDPMScheduler, 'linear', variance_type='fixed_small'),
                 diffusion.linear_betas(T, 1e-4, 0.02))
  x_t, eps = _step_inputs(t_value, np.float64)
  out = ref.step(eps, t_value, x_t, generator=torch.Generator().manual_seed(t_value))
  # diffusers draws its noise with torch.randn from the generator: the same draw, replayed.
  noise = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(t_value), dtype=torch.float64)
  f32 = lambda a: jnp.asarray(a.numpy(), jnp.float32)
  x_prev, pred_x0 = diffusion.p_sample(schedule, lambda x, t: f32(eps), f32(x_t), jnp.full((2,), t_value),
                                       f32(noise), 'fixedsmall', clip_denoised=True)
  atol = _tolerance(schedule, t_value)
  np.testing.assert_allclose(pred_x0, out.pred_original_sample.numpy(), atol=atol)
  np.testing.assert_allclose(x_prev, out.prev_sample.numpy(), atol=atol)


@pytest.mark.parametrize('eta', [0.0, 1.0])
@pytest.mark.parametrize('num_steps', [10, 50])
@pytest.mark.parametrize('clipped_eps', [False, True])
def test_ddim_step_matches_diffusers(schedule, eta, num_steps, clipped_eps):
  diffusers = pytest.importorskip('diffusers')
  torch = pytest.importorskip('torch')
  ref = _float64(_theirs(diffusers.DDIMScheduler, 'linear', set_alpha_to_one=True, steps_offset=0,
                         timestep_spacing='leading'), diffusion.linear_betas(T, 1e-4, 0.02))
  ref.set_timesteps(num_steps)
  timesteps = ref.timesteps.numpy()
  f32 = lambda a: jnp.asarray(a.numpy(), jnp.float32)
  for i in (0, 1, num_steps // 2, num_steps - 1):
    t_value = int(timesteps[i])
    x_t, eps = _step_inputs(t_value, np.float64)
    noise = np.random.default_rng(i).normal(size=x_t.shape).astype(np.float32)
    noise = torch.from_numpy(noise.astype(np.float64))
    out = ref.step(eps, t_value, x_t, eta=eta, variance_noise=noise, use_clipped_model_output=clipped_eps)
    t_prev = int(timesteps[i + 1]) if i + 1 < num_steps else -1
    x_prev, pred_x0 = diffusion.ddim_step(
        schedule, lambda x, t: f32(eps), f32(x_t), jnp.full((2,), t_value), jnp.full((2,), t_prev),
        f32(noise), eta, clip_denoised=True, clipped_eps=clipped_eps)
    atol = _tolerance(schedule, t_value)
    np.testing.assert_allclose(pred_x0, out.pred_original_sample.numpy(), atol=atol)
    np.testing.assert_allclose(x_prev, out.prev_sample.numpy(), atol=atol)


def test_ddim_step_with_eta_one_and_adjacent_steps_is_the_ddpm_step(schedule):
  x_t = jax.random.normal(jax.random.PRNGKey(5), (3, 4, 4, 1))
  noise = jax.random.normal(jax.random.PRNGKey(6), x_t.shape)
  model = lambda x, t: 0.3 * x
  t = jnp.array([1, 400, 999])
  ddim, _ = diffusion.ddim_step(schedule, model, x_t, t, t - 1, noise, 1.0, clip_denoised=False)
  ddpm, _ = diffusion.p_sample(schedule, model, x_t, t, noise, 'fixedsmall', clip_denoised=False)
  np.testing.assert_allclose(ddim, ddpm, atol=2e-5)


# ---------------------------------------------------------------------------
# Model parameterizations: mean types and the learned variance.


def _oracle_inputs(schedule):
  x0 = jnp.linspace(-0.9, 0.9, 24).reshape(3, 2, 2, 2)
  noise = jax.random.normal(jax.random.PRNGKey(12), x0.shape)
  t = jnp.array([3, 250, 800])
  return x0, noise, t, diffusion.q_sample(schedule, x0, t, noise)


@pytest.mark.parametrize('mean_type', diffusion.MODEL_MEAN_TYPES)
def test_every_mean_type_with_its_true_target_gives_the_posterior(schedule, mean_type):
  x0, noise, t, x_t = _oracle_inputs(schedule)
  posterior_mean, _, _ = diffusion.q_posterior_mean_variance(schedule, x0, x_t, t)
  target = {'eps': noise, 'x0': x0, 'xprev': posterior_mean}[mean_type]
  mean, _, _, pred_x0 = diffusion.p_mean_variance(schedule, lambda x, tt: target, x_t, t, 'fixedsmall',
                                                  False, mean_type)
  np.testing.assert_allclose(pred_x0, x0, atol=5e-4)
  np.testing.assert_allclose(mean, posterior_mean, atol=5e-4)
  np.testing.assert_allclose(diffusion.mse_target(schedule, x0, x_t, t, noise, mean_type), target)
  eps, x0_again = diffusion.eps_and_x0(schedule, target, x_t, t, mean_type)
  np.testing.assert_allclose(eps, noise, atol=2e-3)  # eps from x0 divides by sqrt(1 - abar) (~0.03 at t=3).
  np.testing.assert_allclose(x0_again, x0, atol=5e-4)


def test_learned_range_interpolates_log_variance_between_posterior_and_beta(schedule):
  t = jnp.array([1, 10, 999])
  for values, expected in ((-1.0, schedule.posterior_log_variance_clipped[t]), (1.0, np.log(schedule.betas[t]))):
    _, log_var = diffusion.model_variance(schedule, t, 4, 'learned_range', jnp.full((3, 2, 2, 1), values))
    np.testing.assert_allclose(log_var[:, 0, 0, 0], expected, rtol=1e-6)
  _, middle = diffusion.model_variance(schedule, t, 4, 'learned_range', jnp.zeros((3, 2, 2, 1)))
  np.testing.assert_allclose(middle[:, 0, 0, 0], 0.5 * (schedule.posterior_log_variance_clipped[t]
                                                        + np.log(schedule.betas[t])), rtol=1e-6)
  assert diffusion.output_channels(3, 'learned_range') == 6 and diffusion.output_channels(3, 'fixedlarge') == 3


@pytest.mark.parametrize('t_value', [1, 10, 500, 999])
def test_learned_range_step_matches_diffusers(schedule, t_value):
  diffusers = pytest.importorskip('diffusers')
  torch = pytest.importorskip('torch')
  ref = _float64(_theirs(diffusers.DDPMScheduler, 'linear', variance_type='learned_range'),
                 diffusion.linear_betas(T, 1e-4, 0.02))
  rng = np.random.default_rng(t_value)
  x_t = (rng.normal(size=(2, 4, 4, 3)) * 1.5).astype(np.float32)
  output = np.concatenate([rng.normal(size=x_t.shape), rng.uniform(-1, 1, x_t.shape)], -1).astype(np.float32)
  nchw = lambda a: torch.from_numpy(a.astype(np.float64).transpose(0, 3, 1, 2))
  out = ref.step(nchw(output), t_value, nchw(x_t), generator=torch.Generator().manual_seed(t_value))
  # diffusers draws its noise (NCHW, float64) with torch.randn from the generator: replayed here.
  noise = torch.randn((2, 3, 4, 4), generator=torch.Generator().manual_seed(t_value), dtype=torch.float64)
  x_prev, pred_x0 = diffusion.p_sample(
      schedule, lambda x, t: jnp.asarray(output), jnp.asarray(x_t), jnp.full((2,), t_value),
      jnp.asarray(noise.numpy().transpose(0, 2, 3, 1), jnp.float32), 'learned_range', True)
  atol = _tolerance(schedule, t_value)
  np.testing.assert_allclose(pred_x0, out.pred_original_sample.numpy().transpose(0, 2, 3, 1), atol=atol)
  np.testing.assert_allclose(x_prev, out.prev_sample.numpy().transpose(0, 2, 3, 1), atol=atol)


@pytest.mark.parametrize('t_value', [0, 10, 999])
def test_x0_prediction_step_matches_diffusers(schedule, t_value):
  diffusers = pytest.importorskip('diffusers')
  torch = pytest.importorskip('torch')
  ref = _float64(diffusers.DDPMScheduler(num_train_timesteps=T, beta_start=1e-4, beta_end=0.02,
                                         beta_schedule='linear', prediction_type='sample', clip_sample=True,
                                         variance_type='fixed_small'), diffusion.linear_betas(T, 1e-4, 0.02))
  x_t, x0_pred = _step_inputs(t_value, np.float64)
  out = ref.step(x0_pred, t_value, x_t, generator=torch.Generator().manual_seed(t_value))
  noise = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(t_value), dtype=torch.float64)
  f32 = lambda a: jnp.asarray(a.numpy(), jnp.float32)
  x_prev, pred_x0 = diffusion.p_sample(schedule, lambda x, t: f32(x0_pred), f32(x_t), jnp.full((2,), t_value),
                                       f32(noise), 'fixedsmall', True, 'x0')
  np.testing.assert_allclose(pred_x0, out.pred_original_sample.numpy(), atol=1e-6)
  np.testing.assert_allclose(x_prev, out.prev_sample.numpy(), atol=1e-5)


# ---------------------------------------------------------------------------
# Likelihood terms.


def test_normal_kl_matches_numerical_integration():
  grid = np.linspace(-30, 30, 600_001)
  for m1, v1, m2, v2 in ((0.3, 0.5, -0.2, 2.0), (1.0, 0.01, 0.9, 0.02), (0.0, 1.0, 0.0, 1.0)):
    p = np.exp(-(grid - m1) ** 2 / (2 * v1)) / np.sqrt(2 * np.pi * v1)
    log_p = -(grid - m1) ** 2 / (2 * v1) - 0.5 * np.log(2 * np.pi * v1)
    log_q = -(grid - m2) ** 2 / (2 * v2) - 0.5 * np.log(2 * np.pi * v2)
    numeric = np.trapezoid(p * (log_p - log_q), grid)
    ours = float(diffusion.normal_kl(jnp.float32(m1), jnp.log(jnp.float32(v1)), jnp.float32(m2),
                                     jnp.log(jnp.float32(v2))))
    np.testing.assert_allclose(ours, numeric, atol=1e-5)


def test_discretized_gaussian_likelihood_is_the_bin_mass_and_normalised():
  from math import erf, sqrt
  levels = np.arange(256) / 127.5 - 1.0
  for mean, scale in ((0.1, 0.05), (-0.95, 0.01), (0.99, 0.3)):
    cdf = lambda z: 0.5 * (1 + erf(z / sqrt(2)))
    edges_low = [-np.inf] + list(levels[1:] - 1 / 255)
    edges_high = list(levels[:-1] + 1 / 255) + [np.inf]
    exact = np.array([cdf((hi - mean) / scale) - cdf((lo - mean) / scale) for lo, hi in zip(edges_low, edges_high)])
    ours = np.exp(np.asarray(diffusion.discretized_gaussian_log_likelihood(
        jnp.asarray(levels, jnp.float32), jnp.float32(mean), jnp.log(jnp.float32(scale)))))
    np.testing.assert_allclose(ours.sum(), 1.0, atol=2e-3)  # The tanh CDF errs by < 3e-4 per edge.
    big = exact > 1e-2
    np.testing.assert_allclose(ours[big], exact[big], rtol=2e-2, atol=5e-4)


def test_prior_term_is_near_zero_for_the_linear_schedule(schedule):
  x0 = jnp.linspace(-1, 1, 2 * 8 * 8 * 3).reshape(2, 8, 8, 3)
  prior = diffusion.prior_bpd(schedule, x0)
  assert np.all(np.asarray(prior) >= 0) and np.all(np.asarray(prior) < 1e-4)


def test_bound_terms_vanish_for_the_true_posterior_and_sum_to_the_total():
  short = diffusion.make_schedule(diffusion.linear_betas(20, 1e-3, 0.2))
  x0 = jnp.round(jax.random.uniform(jax.random.PRNGKey(0), (2, 4, 4, 1), minval=-1, maxval=1) * 127.5) / 127.5
  key = jax.random.PRNGKey(1)
  oracle_noise = lambda t: jax.random.normal(jax.random.fold_in(key, t), x0.shape)
  # An x0 model that knows x_0 has p = q posterior exactly with fixedsmall: every KL term is 0.
  bound = jax.jit(lambda: diffusion.bound_bpd(short, lambda x, t: x0, x0, key, 'x0', 'fixedsmall'))()
  np.testing.assert_allclose(bound.terms[1:], 0.0, atol=1e-5)
  assert np.all(np.asarray(bound.terms[0]) > 0)  # The decoder's NLL of a discrete image.
  np.testing.assert_allclose(bound.total, bound.terms.sum(0) + bound.prior, rtol=1e-6)
  wrong = diffusion.bound_bpd(short, lambda x, t: jnp.zeros_like(x), x0, key, 'eps', 'fixedlarge')
  assert np.all(np.asarray(wrong.total) > np.asarray(bound.total))
  t = jnp.array([0, 7])
  at = diffusion.vlb_terms_at(short, lambda x, tt: jnp.zeros_like(x), x0, t, jnp.stack(
      [oracle_noise(0)[0], oracle_noise(7)[1]]), 'eps', 'fixedlarge')
  np.testing.assert_allclose(at, [wrong.terms[0, 0], wrong.terms[7, 1]], rtol=1e-5)


# ---------------------------------------------------------------------------
# Losses.


def test_mmd_closed_form_for_two_gaussians():
  dim, s = 4, 0.7
  mu1, mu2, v1, v2 = 0.0, 0.5, 0.3, 0.6
  sigma2 = s ** 2 * dim  # The kernel works on mean squared differences.
  e = lambda v, delta2: (sigma2 / (sigma2 + v)) ** (dim / 2) * np.exp(-delta2 / (2 * (sigma2 + v)))
  closed = e(2 * v1, 0.0) + e(2 * v2, 0.0) - 2 * e(v1 + v2, dim * (mu1 - mu2) ** 2)
  mmd = jax.jit(lambda k: diffusion.gaussian_kernel_mmd2(
      mu1 + np.sqrt(v1) * jax.random.normal(jax.random.fold_in(k, 0), (64, dim)),
      mu2 + np.sqrt(v2) * jax.random.normal(jax.random.fold_in(k, 1), (48, dim)), (s,)))
  draws = np.array([mmd(jax.random.PRNGKey(i)) for i in range(300)])
  np.testing.assert_allclose(draws.mean(), closed, rtol=0.05)


def test_mmd_is_unbiased_zero_for_one_distribution():
  mmd = jax.jit(lambda k: diffusion.gaussian_kernel_mmd2(
      jax.random.normal(jax.random.fold_in(k, 0), (16, 3, 3, 1)),
      jax.random.normal(jax.random.fold_in(k, 1), (16, 3, 3, 1)), (0.5, 1.0, 2.0)))
  draws = np.array([mmd(jax.random.PRNGKey(i)) for i in range(400)])
  assert np.any(draws < 0)  # Unbiased, so individual estimates straddle 0.
  assert abs(draws.mean()) < 3 * draws.std() / np.sqrt(len(draws))


def _loss_inputs():
  schedule = diffusion.make_schedule(diffusion.linear_betas(50, 1e-3, 0.05))
  x0 = jax.random.uniform(jax.random.PRNGKey(0), (6, 4, 4, 1), minval=-1, maxval=1)
  noise = jax.random.normal(jax.random.PRNGKey(1), x0.shape)
  t = jnp.array([0, 1, 5, 20, 40, 49])
  return schedule, x0, noise, t


def test_kl_loss_is_T_times_the_bound_term():
  schedule, x0, noise, t = _loss_inputs()
  model = lambda x, tt: 0.2 * x
  spec = diffusion.LossSpec('kl', 'eps', 'fixedlarge')
  terms = diffusion.training_loss(spec, schedule, model, x0, t, noise)
  expected = 50 * diffusion.vlb_terms_at(schedule, model, x0, t, noise, 'eps', 'fixedlarge')
  np.testing.assert_allclose(terms.per_example, expected, rtol=1e-6)
  assert float(terms.batch_term) == 0.0


def test_hybrid_loss_trains_the_mean_only_through_the_mse():
  schedule, x0, noise, t = _loss_inputs()

  def model(params):
    return lambda x, tt: jnp.concatenate([params['mean'] * x, jnp.tanh(params['var']) * jnp.ones_like(x)], -1)

  params = {'mean': jnp.float32(0.3), 'var': jnp.float32(0.2)}
  loss = lambda name: lambda p: jnp.mean(diffusion.training_loss(
      diffusion.LossSpec(name, 'eps', 'learned_range', hybrid_lambda=0.5), schedule, model(p), x0, t,
      noise).per_example)
  hybrid, simple = jax.grad(loss('hybrid'))(params), jax.grad(loss('simple'))(params)
  np.testing.assert_allclose(hybrid['mean'], simple['mean'], rtol=1e-6)
  assert float(simple['var']) == 0.0 and abs(float(hybrid['var'])) > 1e-4
  kl = jax.grad(loss('kl'))(params)
  assert abs(float(kl['mean'])) > 1e-4  # The plain bound trains the mean too.


def test_mmd_loss_adds_weighted_mse():
  schedule, x0, noise, t = _loss_inputs()
  model = lambda x, tt: 0.1 * x
  spec = diffusion.LossSpec('mmd', mmd_weight=2.0, mmd_simple_weight=0.5, mmd_bandwidths=(1.0,))
  terms = diffusion.training_loss(spec, schedule, model, x0, t, noise)
  x_t = diffusion.q_sample(schedule, x0, t, noise)
  pred_x0 = diffusion.predict_x0_from_eps(schedule, x_t, t, model(x_t, t))
  np.testing.assert_allclose(terms.batch_term, 2.0 * diffusion.gaussian_kernel_mmd2(pred_x0, x0, (1.0,)), rtol=1e-6)
  np.testing.assert_allclose(terms.per_example, 0.5 * diffusion.mean_flat((model(x_t, t) - noise) ** 2), rtol=1e-6)


# ---------------------------------------------------------------------------
# Importance sampling of timesteps.


def test_loss_history_appends_in_batch_order_and_drops_the_oldest():
  history = diffusion.init_loss_history(4, 3)
  t = jnp.array([1, 1, 2, 1, 1])
  history = jax.jit(diffusion.update_loss_history)(history, t, jnp.array([1.0, 2.0, 5.0, 3.0, 4.0]))
  np.testing.assert_array_equal(history.counts, [0, 3, 1, 0])
  np.testing.assert_array_equal(history.values[1], [2.0, 3.0, 4.0])
  np.testing.assert_array_equal(history.values[2], [5.0, 0.0, 0.0])


def test_importance_sampling_is_uniform_until_full_then_unbiased():
  history = diffusion.init_loss_history(4, 2)
  np.testing.assert_allclose(diffusion.importance_probs(history, 0.0), 0.25)
  losses = jnp.array([[1.0, 1.0], [4.0, 4.0], [2.0, 2.0], [1.0, 1.0]])
  full = diffusion.LossHistory(losses, jnp.full((4,), 2, jnp.int32))
  probs = np.asarray(diffusion.importance_probs(full, 0.1))
  np.testing.assert_allclose(probs, 0.9 * np.array([1, 4, 2, 1]) / 8 + 0.1 / 4, rtol=1e-6)
  t, weights = diffusion.sample_importance_timesteps(jax.random.PRNGKey(0), 200_000, full, 0.1)
  np.testing.assert_allclose(np.bincount(np.asarray(t), minlength=4) / 200_000, probs, atol=4e-3)
  per_t = np.array([1.0, 4.0, 2.0, 1.0])
  np.testing.assert_allclose(np.mean(np.asarray(weights) * per_t[np.asarray(t)]), per_t.mean(), rtol=1e-2)


# ---------------------------------------------------------------------------
# Classifier-free guidance.


def _toy_conditional(x, t, labels):
  """A class-conditional toy network: the label shifts the output, a learned 'variance' channel too."""
  shift = labels.astype(x.dtype)[:, None, None, None]
  return jnp.concatenate([0.5 * x + shift, jnp.tanh(shift) * jnp.ones_like(x)], axis=-1)


def test_guidance_combines_conditional_and_null_outputs():
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 2, 2, 1))
  t = jnp.array([1, 2, 3])
  labels = jnp.array([0, 1, 2])
  null = 5
  guided = diffusion.guided_model_fn(_toy_conditional, labels, null, jnp.float32(2.0), 'learned_range')(x, t)
  cond = _toy_conditional(x, t, labels)
  uncond = _toy_conditional(x, t, jnp.full((3,), null))
  np.testing.assert_allclose(guided[..., :1], 3.0 * cond[..., :1] - 2.0 * uncond[..., :1], rtol=1e-6)
  np.testing.assert_allclose(guided[..., 1:], cond[..., 1:])  # The variance stays conditional.


def test_guidance_scale_zero_is_plain_conditional_sampling(schedule):
  from ddpm_jax.samplers import ddim  # pylint: disable=import-outside-toplevel
  x_T = jax.random.normal(jax.random.PRNGKey(1), (3, 2, 2, 1))
  labels = jnp.array([0, 1, 2])
  model = lambda x, t, y: _toy_conditional(x, t, y)[..., :1] * 0.01
  plain = ddim.ddim_sample(schedule, lambda x, t: model(x, t, labels), x_T, jax.random.PRNGKey(2), 10)[0]
  for w in (0.0, jnp.float32(0.0)):  # The shortcut, and the traced combination with w = 0.
    guided = ddim.ddim_sample(schedule, diffusion.guided_model_fn(model, labels, 3, w), x_T,
                                  jax.random.PRNGKey(2), 10)[0]
    np.testing.assert_array_equal(guided, plain)
