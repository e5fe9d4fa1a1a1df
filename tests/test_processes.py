"""The score SDEs of ddpm_jax/sde.py against closed forms, numerical integration and scipy."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
import scipy.spatial.distance
import scipy.stats

from ddpm_jax import diffusion
from ddpm_jax import sde as sde_lib


def _schedule(name: str, n: int = 1000) -> diffusion.Schedule:
  return diffusion.make_schedule(diffusion.BETA_SCHEDULES[name](n, 1e-4, 0.02))


SDES = {
    'vp': lambda: sde_lib.vp(0.1, 20.0),
    'subvp': lambda: sde_lib.subvp(0.1, 20.0),
    've': lambda: sde_lib.ve(0.01, 50.0),
    'linear': lambda: sde_lib.from_schedule(_schedule('linear')),
    'cosine': lambda: sde_lib.from_schedule(_schedule('cosine')),
    'jsd': lambda: sde_lib.from_schedule(_schedule('jsd', 100)),
}


def _coefficients_on(sde, t: np.ndarray):
  """(a(t), g(t)^2) of the forward SDE's drift a(t) x, from coefficients(sde, 1, t), float64."""
  drift, g = sde_lib.coefficients(sde, jnp.ones((t.shape[0], 1)), jnp.asarray(t, jnp.float32))
  return np.asarray(drift[:, 0], np.float64), np.asarray(g, np.float64) ** 2


@pytest.mark.parametrize('name', list(SDES))
def test_marginals_solve_the_moment_odes(name):
  """x_0 = 1: the mean obeys dm/dt = a m and the variance dv/dt = 2 a v + g^2, so
  m(t) = m(0) exp(int a) and v(t) = m(t)^2 (v(0) / m(0)^2 + int g^2 / m^2), integrated here by the
  trapezoid rule on 400k points from the SDE's own drift and diffusion."""
  sde = SDES[name]()
  t = np.linspace(0.0, 1.0, 400_001)
  a, g2 = _coefficients_on(sde, t)
  m0, s0 = (float(v[0]) for v in sde_lib.marginal(sde, jnp.zeros((1,))))
  m = m0 * np.exp(scipy.integrate.cumulative_trapezoid(a, t, initial=0.0))
  v = m ** 2 * (s0 ** 2 / m0 ** 2 + scipy.integrate.cumulative_trapezoid(g2 / m ** 2, t, initial=0.0))
  probe = np.array([1000, 20_000, 100_000, 200_000, 330_000, 400_000])
  mean_coeff, std = sde_lib.marginal(sde, jnp.asarray(t[probe], jnp.float32))
  np.testing.assert_allclose(mean_coeff, m[probe], rtol=2e-4, atol=1e-6)
  np.testing.assert_allclose(np.asarray(std, np.float64) ** 2, v[probe], rtol=2e-4, atol=1e-6)


def test_vp_closed_form():
  sde = sde_lib.vp(0.1, 20.0)
  t = np.array([0.0, 1e-3, 0.3, 1.0])
  integral = 0.1 * t + 0.5 * 19.9 * t ** 2
  mean_coeff, std = sde_lib.marginal(sde, jnp.asarray(t, jnp.float32))
  np.testing.assert_allclose(mean_coeff, np.exp(-0.5 * integral), rtol=1e-6)
  np.testing.assert_allclose(std, np.sqrt(1.0 - np.exp(-integral)), rtol=1e-5, atol=1e-7)
  _, sub_std = sde_lib.marginal(sde_lib.subvp(0.1, 20.0), jnp.asarray(t, jnp.float32))
  np.testing.assert_allclose(sub_std, 1.0 - np.exp(-integral), rtol=1e-5, atol=1e-8)
  _, ve_std = sde_lib.marginal(sde_lib.ve(0.01, 50.0), jnp.asarray(t, jnp.float32))
  np.testing.assert_allclose(ve_std, 0.01 * 5000.0 ** t, rtol=1e-5)


@pytest.mark.parametrize('name', list(diffusion.BETA_SCHEDULES))
def test_from_schedule_is_exact_at_the_chain_steps(name):
  schedule = diffusion.make_schedule(diffusion.BETA_SCHEDULES[name](200, 1e-3, 0.05))
  sde = sde_lib.from_schedule(schedule)
  assert sde.kind == 'vp' and sde.num_scales == 200
  i = np.arange(200)
  abar = np.cumprod(1.0 - diffusion.BETA_SCHEDULES[name](200, 1e-3, 0.05))
  mean_coeff, std = sde_lib.marginal(sde, jnp.asarray(i / 199.0, jnp.float32))
  np.testing.assert_allclose(mean_coeff, np.sqrt(abar), rtol=2e-5)
  np.testing.assert_allclose(np.asarray(std) ** 2, 1.0 - abar, rtol=2e-5, atol=1e-7)
  # The discrete chain of the SDE is the schedule's: its betas and its std at every step.
  np.testing.assert_allclose(sde_lib.discrete_betas(sde, jnp.asarray(i), 200), schedule.betas, rtol=2e-4)
  np.testing.assert_allclose(sde_lib.discrete_std(sde, jnp.asarray(i / 199.0, jnp.float32)),
                             schedule.sqrt_one_minus_alphas_cumprod, rtol=1e-5)


def test_linear_schedule_is_score_sde_vp():
  """DDPM's linear betas 1e-4 .. 0.02 (N = 1000) are VP(0.1, 20)'s discrete betas beta(t_i) / N, and
  the chain's alphas_cumprod approaches the continuous marginal (sum of -log(1 - beta) against
  the integral of beta: within 2e-3 of the mean coefficient)."""
  chain = sde_lib.from_schedule(_schedule('linear'))
  vp = sde_lib.vp(0.1, 20.0)
  np.testing.assert_allclose([chain.beta_min, chain.beta_max], [0.1, 20.0], rtol=1e-6)
  i = jnp.arange(1000)
  np.testing.assert_allclose(sde_lib.discrete_betas(vp, i, 1000), diffusion.linear_betas(1000, 1e-4, 0.02),
                             rtol=1e-6)
  t = jnp.linspace(0.0, 1.0, 101)
  np.testing.assert_allclose(sde_lib.marginal(chain, t)[0], sde_lib.marginal(vp, t)[0], atol=2e-3)
  np.testing.assert_allclose(sde_lib.marginal(chain, t)[1], sde_lib.marginal(vp, t)[1], atol=1e-2)
  # The time input of a network trained on the chain: its step index.
  np.testing.assert_allclose(sde_lib.model_time(chain, jnp.array([0.0, 0.5, 1.0])), [0.0, 499.5, 999.0])


def test_prior_logp_and_sample():
  rng = np.random.default_rng(0)
  z = rng.normal(size=(3, 4, 4, 2)).astype(np.float32) * 7.0
  for sde, std in [(sde_lib.vp(), 1.0), (sde_lib.subvp(), 1.0), (sde_lib.ve(0.01, 50.0), 50.0)]:
    want = scipy.stats.norm.logpdf(z.astype(np.float64), scale=std).reshape(3, -1).sum(axis=1)
    np.testing.assert_allclose(sde_lib.prior_logp(sde, jnp.asarray(z)), want, rtol=1e-5)
    draw = np.asarray(sde_lib.prior_sample(sde, jax.random.PRNGKey(1), (20_000, 2)))
    assert abs(draw.std() / std - 1.0) < 4 * math.sqrt(0.5 / 40_000)


@pytest.mark.parametrize('name', ['vp', 'subvp', 've', 'cosine'])
def test_probability_flow_keeps_gaussian_marginals(name):
  """Gaussian data N(mu, s^2): p_t = N(m mu, m^2 s^2 + std^2), whose score is known. The
  probability-flow drift is then affine in x: it moves the mean as d(m mu)/dt and the spread at
  the rate d log sqrt(v)/dt (continuity equation); the reverse SDE's drift is f - g^2 score.
  Derivatives in t by central differences of the marginals (inside one step of a tabulated SDE,
  whose beta is piecewise constant)."""
  sde = SDES[name]()
  mu, s = 0.4, 0.3
  t = jnp.array([50.5, 300.5, 700.5, 950.5]) / 999.0
  h = 2e-4

  def moments(tt):
    m, std = sde_lib.marginal(sde, tt)
    return np.asarray(m, np.float64) * mu, np.asarray(m, np.float64) ** 2 * s ** 2 + np.asarray(std, np.float64) ** 2

  def score_fn(x, tt):
    m, std = sde_lib.marginal(sde, tt)
    return -(x - (m * mu)[:, None]) / (m ** 2 * s ** 2 + std ** 2)[:, None]

  (mean_lo, var_lo), (mean_hi, var_hi) = moments(t - h), moments(t + h)
  mean, var = moments(t)
  d_mean, d_log_std = (mean_hi - mean_lo) / (2 * h), (np.log(var_hi) - np.log(var_lo)) / (4 * h)
  offset = 0.5
  x = jnp.stack([jnp.asarray(mean, jnp.float32), jnp.asarray(mean + offset, jnp.float32)], axis=1)
  x = x.reshape(-1, 1)  # Rows: (t0 at the mean, t0 off it, t1 ...).
  tt = jnp.repeat(t, 2)
  flow = np.asarray(sde_lib.reverse_drift(sde, score_fn, x, tt, probability_flow=True)[:, 0]).reshape(-1, 2)
  np.testing.assert_allclose(flow[:, 0], d_mean, rtol=2e-3, atol=1e-4)
  np.testing.assert_allclose((flow[:, 1] - flow[:, 0]) / offset, d_log_std, rtol=2e-3, atol=1e-4)
  drift, g = sde_lib.coefficients(sde, x, tt)
  reverse = sde_lib.reverse_drift(sde, score_fn, x, tt, probability_flow=False)
  np.testing.assert_allclose(reverse, drift - (g ** 2)[:, None] * score_fn(x, tt), rtol=1e-5)
  np.testing.assert_allclose(sde_lib.reverse_diffusion(sde, tt), g, rtol=1e-6)
  assert not np.any(sde_lib.reverse_diffusion(sde, tt, probability_flow=True))


def test_discretize():
  schedule = _schedule('linear')
  x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 2, 2)), jnp.float32)
  i = np.array([0, 17, 999])
  t = jnp.asarray(i / 999.0, jnp.float32)
  # VP: the DDPM forward step x_{i} = sqrt(1 - beta_i) x_{i-1} + sqrt(beta_i) z.
  for sde in (sde_lib.vp(0.1, 20.0), sde_lib.from_schedule(schedule)):
    f, g = sde_lib.discretize(sde, x, t)
    betas = np.asarray(schedule.betas)[i]
    np.testing.assert_allclose(x + f, np.sqrt(1.0 - betas)[:, None, None] * x, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g, np.sqrt(betas), rtol=1e-4)
  # VE: the SMLD step, sigma_i^2 - sigma_{i-1}^2 with sigma_{-1} = 0: the variances add to sigma_i^2.
  ve = sde_lib.ve(0.01, 50.0, num_scales=10)
  f, g = sde_lib.discretize(ve, x[:1].repeat(10, 0), jnp.arange(10) / 9.0)
  assert not np.any(f)
  sigmas = np.exp(np.linspace(np.log(0.01), np.log(50.0), 10))
  np.testing.assert_allclose(np.cumsum(np.asarray(g, np.float64) ** 2), sigmas ** 2, rtol=1e-5)
  # sub-VP: Euler-Maruyama with dt = 1 / N.
  sub = sde_lib.subvp(0.1, 20.0, num_scales=50)
  f, g = sde_lib.discretize(sub, x, t)
  drift, diffusion_g = sde_lib.coefficients(sub, x, t)
  np.testing.assert_allclose(f, drift / 50, rtol=1e-6)
  np.testing.assert_allclose(g, diffusion_g / math.sqrt(50), rtol=1e-6)


def test_score_from_eps_model():
  """score = -eps / std: with the eps-network that is optimal for Gaussian data, the true score."""
  mu, s = 0.3, 0.6
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)
  t = jnp.array([0.01, 0.2, 0.6, 1.0])
  for sde in (sde_lib.vp(), sde_lib.subvp(), sde_lib.ve()):
    times = sde_lib.model_time(sde, t)

    def model_fn(xx, time_input, sde=sde, times=times):
      np.testing.assert_allclose(time_input, times)  # The network sees model_time(sde, t).
      m, std = sde_lib.marginal(sde, t)  # E[eps | x_t] = std (x_t - m mu) / (m^2 s^2 + std^2).
      return (std * (xx - m[:, None] * mu).T / (m ** 2 * s ** 2 + std ** 2)).T

    m, std = sde_lib.marginal(sde, t)
    true_score = -(x - m[:, None] * mu) / (m ** 2 * s ** 2 + std ** 2)[:, None]
    np.testing.assert_allclose(sde_lib.score_fn_from_model(sde, model_fn)(x, t), true_score, rtol=1e-5)
  np.testing.assert_allclose(sde_lib.model_time(sde_lib.ve(0.01, 50.0), t), np.log(0.01 * 5000.0 ** t), rtol=1e-5)
  np.testing.assert_allclose(sde_lib.model_time(sde_lib.vp(), t), 999.0 * np.asarray(t), rtol=1e-6)
  # Discrete time: the chain's std at the step t falls on, floor(t (N - 1)).
  chain = sde_lib.from_schedule(_schedule('linear'))
  score = sde_lib.score_fn_from_model(chain, lambda xx, tt: jnp.ones_like(xx), continuous=False)
  t = jnp.array([0.5007, 0.2503, 0.001, 1.0])  # Between steps (floored) and on them.
  steps = np.floor(np.asarray(t) * 999).astype(int)
  np.testing.assert_allclose(score(x, t)[:, 0], -1.0 / np.asarray(_schedule('linear').sqrt_one_minus_alphas_cumprod)[steps],
                             rtol=1e-5)


def test_sde_is_a_pytree_under_jit():
  sde = sde_lib.from_schedule(_schedule('cosine'))
  t = jnp.array([0.1, 0.9])
  jitted = jax.jit(sde_lib.marginal)(sde, t)
  np.testing.assert_allclose(jitted, sde_lib.marginal(sde, t), rtol=1e-6)
  assert sde_lib.sampling_eps(sde_lib.vp()) == 1e-3 and sde_lib.sampling_eps(sde_lib.ve()) == 1e-5
  with pytest.raises(ValueError, match='Unknown SDE kind'):
    sde_lib._make('xx', 10)  # pylint: disable=protected-access


def test_ve_sigma_max_from_data():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, size=(37, 4, 4, 3), dtype=np.uint8)
  want = scipy.spatial.distance.pdist(images.reshape(37, -1) / 127.5 - 1.0).max()
  assert sde_lib.ve_sigma_max_from_data(images, block=5) == pytest.approx(want, rel=1e-9)
  floats = rng.normal(size=(11, 6))
  assert sde_lib.ve_sigma_max_from_data(floats) == pytest.approx(scipy.spatial.distance.pdist(floats).max())


# ---------------------------------------------------------------------------
# Continuous-time losses.

def _weight_np(kind: str, t: np.ndarray) -> np.ndarray:
  """g^2 / std^2 in closed form for VP(0.1, 20), sub-VP(0.1, 20), VE(0.01, 50)."""
  b = 0.1 + 19.9 * t
  u = 0.1 * t + 0.5 * 19.9 * t ** 2
  if kind == 'vp':
    return b / -np.expm1(-u)
  if kind == 'subvp':
    return b * -np.expm1(-2 * u) / np.expm1(-u) ** 2
  return np.full_like(t, 2.0 * np.log(5000.0))


@pytest.mark.parametrize('kind', ['vp', 'subvp', 've'])
@pytest.mark.parametrize('weighting', [False, True])
def test_continuous_loss_against_direct_computation(kind, weighting):
  sde = SDES[kind]()
  rng = np.random.default_rng(1)
  x0 = rng.uniform(-1, 1, size=(5, 4, 4, 2))
  noise = rng.normal(size=x0.shape)
  t = np.array([1e-3, 0.1, 0.4, 0.8, 1.0])
  u = 0.1 * t + 0.5 * 19.9 * t ** 2
  m, std = {'vp': (np.exp(-0.5 * u), np.sqrt(-np.expm1(-u))), 'subvp': (np.exp(-0.5 * u), -np.expm1(-u)),
            've': (np.ones_like(t), 0.01 * 5000.0 ** t)}[kind]
  time_input = np.log(0.01 * 5000.0 ** t) if kind == 've' else 999.0 * t
  x_t = m[:, None, None, None] * x0 + std[:, None, None, None] * noise
  model = lambda x, tt: 0.3 * x + 0.01 * tt[:, None, None, None]  # A stand-in eps-network.
  want = np.mean((model(x_t, time_input) - noise) ** 2, axis=(1, 2, 3))
  if weighting:
    want = want * _weight_np(kind, t)
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  got = sde_lib.continuous_loss(sde, model, f32(x0), f32(t), f32(noise), likelihood_weighting=weighting)
  np.testing.assert_allclose(got, want, rtol=2e-4)
  # score_sde's form: ||score std + z||^2, times g^2 / std^2 when likelihood weighted.
  np.testing.assert_allclose(sde_lib.likelihood_weight(sde, f32(t)), _weight_np(kind, t), rtol=2e-4)


def _weight_cdf_np(sde, eps: float, grid: int = 2_000_001):
  """(t, normalised CDF of g^2 / std^2 on [eps, 1], its integral Z) by the trapezoid rule."""
  t = np.geomspace(eps, 1.0, grid)
  _, g2 = _coefficients_on(sde, t)
  std = np.asarray(sde_lib.marginal(sde, jnp.asarray(t, jnp.float32))[1], np.float64)
  cdf = scipy.integrate.cumulative_trapezoid(g2 / std ** 2, t, initial=0.0)
  return t, cdf / cdf[-1], cdf[-1]


@pytest.mark.parametrize('name', ['vp', 'subvp', 'linear', 'cosine'])
def test_importance_sampled_times_follow_the_weight(name):
  """t ~ g^2 / std^2 on [eps, 1] (Kolmogorov-Smirnov against the numerical CDF), and weights
  * g^2 / std^2 = Z / (1 - eps), Z the integral: the weighted loss of a perfect eps-error is constant."""
  sde, eps = SDES[name](), 1e-3
  t_grid, cdf, z = _weight_cdf_np(sde, eps)
  t, weights = sde_lib.sample_times(jax.random.PRNGKey(0), 20_000, sde, eps, importance=True)
  t = np.asarray(t, np.float64)
  assert t.min() >= eps and t.max() <= 1.0
  statistic = scipy.stats.kstest(t, lambda v: np.interp(v, t_grid, cdf)).statistic
  assert statistic < 1.63 / math.sqrt(20_000) + 2e-3  # p = 0.01, plus float32 times.
  product = np.asarray(weights * sde_lib.likelihood_weight(sde, jnp.asarray(t, jnp.float32)))
  np.testing.assert_allclose(product, z / (1.0 - eps), rtol=3e-3)


@pytest.mark.parametrize('name', ['vp', 'subvp', 've'])
def test_importance_sampling_equals_likelihood_weighting_in_expectation(name):
  """E over t ~ U(eps, 1) of the likelihood-weighted loss, by quadrature, against the average of
  weights * loss over importance-sampled t (and over uniform t): within 4 standard errors."""
  sde, eps = SDES[name](), 1e-3
  x0 = jnp.full((1, 2), 0.5)

  def loss(t, noise):  # eps-network: 0.2 x_t + t, so the loss depends on t beyond the weight.
    model = lambda x, time_input: 0.2 * x + time_input[:, None] / 1000.0
    b = t.shape[0]
    return sde_lib.continuous_loss(sde, model, jnp.broadcast_to(x0, (b, 2)), t, noise, likelihood_weighting=True)

  # Exact: the expectation over the noise has a closed form per t (the loss is quadratic in it).
  t_grid = np.geomspace(eps, 1.0, 400_001)
  tg = jnp.asarray(t_grid, jnp.float32)
  m, std = (np.asarray(v, np.float64) for v in sde_lib.marginal(sde, tg))
  shift = 0.2 * m * 0.5 + np.asarray(sde_lib.model_time(sde, tg), np.float64) / 1000.0
  expected_sq = shift ** 2 + (0.2 * std - 1.0) ** 2  # E[(shift + (0.2 std - 1) z)^2].
  weight = np.asarray(sde_lib.likelihood_weight(sde, tg), np.float64)
  exact = np.trapezoid(weight * expected_sq, t_grid) / (1.0 - eps)

  n = 200_000
  for importance in (True, False):
    t, w = sde_lib.sample_times(jax.random.PRNGKey(3), n, sde, eps, importance=importance)
    noise = jax.random.normal(jax.random.PRNGKey(4), (n, 2))
    values = np.asarray(w * loss(t, noise), np.float64)
    assert abs(values.mean() - exact) < 4 * values.std() / math.sqrt(n) + 1e-3 * exact, (importance, values.mean(), exact)
    if importance and name != 've':
      importance_std = values.std()
    elif name != 've':
      assert importance_std < 0.5 * values.std()  # The point of importance sampling.
