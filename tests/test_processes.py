"""The noise processes of ddpm_jax/processes/ against closed forms, numerical integration and scipy."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
import scipy.spatial.distance
import scipy.stats

from configs import default
from ddpm_jax import diffusion, processes
from ddpm_jax.processes.ddpm import DDPM
from ddpm_jax.processes.edm import EDM
from ddpm_jax.processes.subvpsde import SubVPSDE
from ddpm_jax.processes.vesde import VESDE, sigma_max_from_data
from ddpm_jax.processes.vpsde import VPSDE


def _schedule(name: str, n: int = 1000) -> diffusion.Schedule:
  return diffusion.make_schedule(diffusion.BETA_SCHEDULES[name](n, 1e-4, 0.02))


SDES = {
    'vp': lambda **kw: VPSDE(0.1, 20.0, **kw),
    'subvp': lambda **kw: SubVPSDE(0.1, 20.0, **kw),
    've': lambda **kw: VESDE(0.01, 50.0, **kw),
    'linear': lambda: DDPM(_schedule('linear')),
    'cosine': lambda: DDPM(_schedule('cosine')),
    'jsd': lambda: DDPM(_schedule('jsd', 100)),
    'edm': lambda: EDM(),
}


def _config(timestep_sampler: str = 'uniform'):
  config = default.get_config()
  config.training.timestep_sampler = timestep_sampler
  return config


def _coefficients_on(process, t: np.ndarray):
  """(a(t), g(t)^2) of the forward SDE's drift a(t) x, from process.sde(1, t), float64."""
  drift, g = process.sde(jnp.ones((t.shape[0], 1)), jnp.asarray(t, jnp.float32))
  return np.asarray(drift[:, 0], np.float64), np.asarray(g, np.float64) ** 2


@pytest.mark.parametrize('name', list(SDES))
def test_marginals_solve_the_moment_odes(name):
  """x_0 = 1: the mean obeys dm/dt = a m and the variance dv/dt = 2 a v + g^2, so
  m(t) = m(0) exp(int a) and v(t) = m(t)^2 (v(0) / m(0)^2 + int g^2 / m^2), integrated here by the
  trapezoid rule on 400k points of [0, t_max] from the process's own drift and diffusion."""
  process = SDES[name]()
  t = np.linspace(0.0, process.t_max, 400_001)
  a, g2 = _coefficients_on(process, t)
  m0, s0 = (float(v[0]) for v in process.marginal(jnp.zeros((1,))))
  m = m0 * np.exp(scipy.integrate.cumulative_trapezoid(a, t, initial=0.0))
  v = m ** 2 * (s0 ** 2 / m0 ** 2 + scipy.integrate.cumulative_trapezoid(g2 / m ** 2, t, initial=0.0))
  probe = np.array([1000, 20_000, 100_000, 200_000, 330_000, 400_000])
  mean_coeff, std = process.marginal(jnp.asarray(t[probe], jnp.float32))
  np.testing.assert_allclose(mean_coeff, m[probe], rtol=2e-4, atol=1e-6)
  np.testing.assert_allclose(np.asarray(std, np.float64) ** 2, v[probe], rtol=2e-4, atol=1e-6)


def test_vp_closed_form():
  t = np.array([0.0, 1e-3, 0.3, 1.0])
  integral = 0.1 * t + 0.5 * 19.9 * t ** 2
  mean_coeff, std = VPSDE(0.1, 20.0).marginal(jnp.asarray(t, jnp.float32))
  np.testing.assert_allclose(mean_coeff, np.exp(-0.5 * integral), rtol=1e-6)
  np.testing.assert_allclose(std, np.sqrt(1.0 - np.exp(-integral)), rtol=1e-5, atol=1e-7)
  _, sub_std = SubVPSDE(0.1, 20.0).marginal(jnp.asarray(t, jnp.float32))
  np.testing.assert_allclose(sub_std, 1.0 - np.exp(-integral), rtol=1e-5, atol=1e-8)
  _, ve_std = VESDE(0.01, 50.0).marginal(jnp.asarray(t, jnp.float32))
  np.testing.assert_allclose(ve_std, 0.01 * 5000.0 ** t, rtol=1e-5)
  edm_alpha, edm_std = EDM().marginal(jnp.asarray(t + 0.5, jnp.float32))
  np.testing.assert_array_equal(edm_alpha, 1.0)
  np.testing.assert_allclose(edm_std, t + 0.5, rtol=1e-7)  # EDM's time is sigma.


@pytest.mark.parametrize('name', list(diffusion.BETA_SCHEDULES))
def test_ddpm_is_exact_at_the_chain_steps(name):
  """The ddpm process's time is the chain's timestep: its marginal at t = i is the chain's, its
  network sees i, and its discrete chain of T steps has the schedule's betas."""
  schedule = diffusion.make_schedule(diffusion.BETA_SCHEDULES[name](200, 1e-3, 0.05))
  process = DDPM(schedule)
  assert process.name == 'ddpm' and process.num_scales == 200 and process.discrete_chain
  assert process.t_max == 199.0 and process.t_min == pytest.approx(1e-3 * 199.0)
  i = np.arange(200)
  abar = np.cumprod(1.0 - diffusion.BETA_SCHEDULES[name](200, 1e-3, 0.05))
  mean_coeff, std = process.marginal(jnp.asarray(i, jnp.float32))
  np.testing.assert_allclose(mean_coeff, np.sqrt(abar), rtol=2e-5)
  np.testing.assert_allclose(np.asarray(std) ** 2, 1.0 - abar, rtol=2e-5, atol=1e-7)
  np.testing.assert_allclose(std, schedule.sqrt_one_minus_alphas_cumprod, rtol=1e-5)
  np.testing.assert_array_equal(process.network_time(jnp.asarray(i, jnp.float32)), i)
  # The discrete chain of the process is the schedule's: its betas, and step i at time i.
  np.testing.assert_allclose(process.discrete_betas(jnp.asarray(i), 200), schedule.betas, rtol=2e-4)
  np.testing.assert_array_equal(process.step_index(jnp.asarray(i, jnp.float32), 200), i)


def test_linear_schedule_is_score_sde_vp():
  """DDPM's linear betas 1e-4 .. 0.02 (N = 1000) are VP(0.1, 20)'s discrete betas beta(t_i) / N, and
  the chain's alphas_cumprod approaches the continuous marginal (sum of -log(1 - beta) against
  the integral of beta: within 2e-3 of the mean coefficient). Timestep 999 s is VP's time s."""
  chain = DDPM(_schedule('linear'))
  vp = VPSDE(0.1, 20.0)
  np.testing.assert_allclose([chain.beta_min, chain.beta_max], [0.1, 20.0], rtol=1e-6)
  i = jnp.arange(1000)
  np.testing.assert_allclose(vp.discrete_betas(i, 1000), diffusion.linear_betas(1000, 1e-4, 0.02), rtol=1e-6)
  s = jnp.linspace(0.0, 1.0, 101)
  np.testing.assert_allclose(chain.marginal(999.0 * s)[0], vp.marginal(s)[0], atol=2e-3)
  np.testing.assert_allclose(chain.marginal(999.0 * s)[1], vp.marginal(s)[1], atol=1e-2)
  # The time input of a network trained on the chain: its timestep, VP's (N - 1) s.
  np.testing.assert_allclose(chain.network_time(jnp.array([0.0, 499.5, 999.0])), [0.0, 499.5, 999.0])
  np.testing.assert_allclose(vp.network_time(jnp.array([0.0, 0.5, 1.0])), [0.0, 499.5, 999.0], rtol=1e-6)


def test_prior_logp_and_sample():
  rng = np.random.default_rng(0)
  z = rng.normal(size=(3, 4, 4, 2)).astype(np.float32) * 7.0
  for process, std in [(VPSDE(), 1.0), (SubVPSDE(), 1.0), (VESDE(0.01, 50.0), 50.0),
                       (SDES['cosine'](), 1.0), (EDM(sigma_max=80.0), 80.0)]:
    assert process.prior_std == std
    want = scipy.stats.norm.logpdf(z.astype(np.float64), scale=std).reshape(3, -1).sum(axis=1)
    np.testing.assert_allclose(process.prior_logp(jnp.asarray(z)), want, rtol=1e-5)
    draw = np.asarray(process.prior_sample(jax.random.PRNGKey(1), (20_000, 2)))
    assert abs(draw.std() / std - 1.0) < 4 * math.sqrt(0.5 / 40_000)


@pytest.mark.parametrize('name', ['vp', 'subvp', 've', 'cosine', 'edm'])
def test_probability_flow_keeps_gaussian_marginals(name):
  """Gaussian data N(mu, s^2): p_t = N(m mu, m^2 s^2 + std^2), whose score is known. The
  probability-flow drift is then affine in x: it moves the mean as d(m mu)/dt and the spread at
  the rate d log sqrt(v)/dt (continuity equation); the reverse SDE's drift is f - g^2 score.
  Derivatives in t by central differences of the marginals (inside one step of the ddpm process,
  whose beta is piecewise constant)."""
  process = SDES[name]()
  mu, s = 0.4, 0.3
  t = jnp.array([50.5, 300.5, 700.5, 950.5]) / 999.0 * process.t_max
  h = 2e-4 * process.t_max

  def moments(tt):
    m, std = process.marginal(tt)
    return np.asarray(m, np.float64) * mu, np.asarray(m, np.float64) ** 2 * s ** 2 + np.asarray(std, np.float64) ** 2

  def score_fn(x, tt):
    m, std = process.marginal(tt)
    return -(x - (m * mu)[:, None]) / (m ** 2 * s ** 2 + std ** 2)[:, None]

  (mean_lo, var_lo), (mean_hi, var_hi) = moments(t - h), moments(t + h)
  mean, var = moments(t)
  d_mean, d_log_std = (mean_hi - mean_lo) / (2 * h), (np.log(var_hi) - np.log(var_lo)) / (4 * h)
  offset = 0.5
  x = jnp.stack([jnp.asarray(mean, jnp.float32), jnp.asarray(mean + offset, jnp.float32)], axis=1)
  x = x.reshape(-1, 1)  # Rows: (t0 at the mean, t0 off it, t1 ...).
  tt = jnp.repeat(t, 2)
  flow = np.asarray(process.reverse_drift(score_fn, x, tt, probability_flow=True)[:, 0]).reshape(-1, 2)
  np.testing.assert_allclose(flow[:, 0], d_mean, rtol=2e-3, atol=1e-4 / process.t_max)
  np.testing.assert_allclose((flow[:, 1] - flow[:, 0]) / offset, d_log_std, rtol=2e-3, atol=1e-4 / process.t_max)
  drift, g = process.sde(x, tt)
  reverse = process.reverse_drift(score_fn, x, tt, probability_flow=False)
  np.testing.assert_allclose(reverse, drift - (g ** 2)[:, None] * score_fn(x, tt), rtol=1e-5)
  np.testing.assert_allclose(process.reverse_diffusion(tt), g, rtol=1e-6)
  assert not np.any(process.reverse_diffusion(tt, probability_flow=True))


def test_discretize():
  schedule = _schedule('linear')
  x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 2, 2)), jnp.float32)
  i = np.array([0, 17, 999])
  # VP: the DDPM forward step x_{i} = sqrt(1 - beta_i) x_{i-1} + sqrt(beta_i) z, at VP's t = i / 999
  # and at the ddpm process's t = i.
  for process in (VPSDE(0.1, 20.0), DDPM(schedule)):
    t = jnp.asarray(i / 999.0 * process.t_max, jnp.float32)
    f, g = process.discretize(x, t, 1000)
    betas = np.asarray(schedule.betas)[i]
    np.testing.assert_allclose(x + f, np.sqrt(1.0 - betas)[:, None, None] * x, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g, np.sqrt(betas), rtol=1e-4)
  # VE: the SMLD step, sigma_i^2 - sigma_{i-1}^2 with sigma_{-1} = 0: the variances add to sigma_i^2.
  ve = VESDE(0.01, 50.0, num_scales=10)
  f, g = ve.discretize(x[:1].repeat(10, 0), jnp.arange(10) / 9.0, 10)
  assert not np.any(f)
  sigmas = np.exp(np.linspace(np.log(0.01), np.log(50.0), 10))
  np.testing.assert_allclose(np.cumsum(np.asarray(g, np.float64) ** 2), sigmas ** 2, rtol=1e-5)
  np.testing.assert_allclose(ve.discrete_sigmas(jnp.arange(10), 10), sigmas, rtol=1e-5)
  # sub-VP: Euler-Maruyama with dt = 1 / N.
  sub = SubVPSDE(0.1, 20.0, num_scales=50)
  t = jnp.asarray(i / 999.0, jnp.float32)
  f, g = sub.discretize(x, t, 50)
  drift, diffusion_g = sub.sde(x, t)
  np.testing.assert_allclose(f, drift / 50, rtol=1e-6)
  np.testing.assert_allclose(g, diffusion_g / math.sqrt(50), rtol=1e-6)


def test_score_from_eps_model():
  """score = -eps / std: with the eps-network that is optimal for Gaussian data, the true score;
  the network sees process.network_time(t)."""
  mu, s = 0.3, 0.6
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)
  fractions = np.array([0.01, 0.2, 0.6, 1.0])
  for process in (VPSDE(), SubVPSDE(), VESDE(), DDPM(_schedule('linear'))):
    t = jnp.asarray(fractions * process.t_max, jnp.float32)
    times = process.network_time(t)
    m, std = process.marginal(t)

    def network_fn(xx, time_input, times=times, m=m, std=std):
      np.testing.assert_allclose(time_input, times)  # The network sees network_time(t).
      return (std * (xx - m[:, None] * mu).T / (m ** 2 * s ** 2 + std ** 2)).T  # E[eps | x_t].

    true_score = -(x - m[:, None] * mu) / (m ** 2 * s ** 2 + std ** 2)[:, None]
    np.testing.assert_allclose(process.score_fn(process.eps_fn(network_fn))(x, t), true_score, rtol=1e-5)
  np.testing.assert_allclose(VESDE(0.01, 50.0).network_time(jnp.asarray(fractions)),
                             np.log(0.01 * 5000.0 ** fractions), rtol=1e-5)
  np.testing.assert_allclose(VPSDE().network_time(jnp.asarray(fractions)), 999.0 * fractions, rtol=1e-6)
  # One marginal: the ddpm score between timesteps divides by the interpolated marginal's std, which
  # lies strictly between its neighbouring steps' (not by a neighbouring step's own std).
  schedule = _schedule('linear')
  chain = DDPM(schedule)
  score = chain.score_fn(lambda xx, tt: jnp.ones_like(xx))
  t = np.array([500.2, 250.3, 0.999, 999.0, 17.0])  # Between timesteps and on them.
  got = np.asarray(score(x[:1].repeat(5, 0), jnp.asarray(t, jnp.float32))[:, 0])
  np.testing.assert_allclose(got, -1.0 / np.asarray(chain.marginal(jnp.asarray(t, jnp.float32))[1]), rtol=1e-6)
  table = -1.0 / np.asarray(schedule.sqrt_one_minus_alphas_cumprod, np.float64)
  np.testing.assert_allclose(got[3:], table[[999, 17]], rtol=1e-5)
  below, above = table[np.floor(t[:3]).astype(int)], table[np.ceil(t[:3]).astype(int)]
  assert np.all((got[:3] > below) & (got[:3] < above)), (got, below, above)


@pytest.mark.parametrize('name', list(diffusion.BETA_SCHEDULES))
def test_ddpm_marginal_is_smooth_between_the_timesteps(name):
  """log alpha_bar between the chain's timesteps is a monotone C^1 cubic: beta(t) > 0 everywhere (jsd's
  jump to 0.999 included), continuous across every timestep (left and right limits agree; a
  piecewise-constant beta would jump by the neighbouring betas' difference), -d/dt log alpha_bar by
  central differences, and, for a smooth schedule, the slope at each timestep is the centred difference."""
  T = 100
  betas = diffusion.BETA_SCHEDULES[name](T, 1e-3, 0.05)
  process = DDPM(diffusion.make_schedule(betas))
  grid = np.linspace(0.0, T - 1, 20_001)
  beta = np.asarray(process.beta(jnp.asarray(grid, jnp.float32)), np.float64)
  assert np.all(beta > 0), beta.min()
  log_abar = np.cumsum(np.log1p(-betas))
  nodes = np.arange(1, T - 1, dtype=np.float64)
  left, right = (np.asarray(process.beta(jnp.asarray(nodes + d, jnp.float32)), np.float64) for d in (-1e-3, 1e-3))
  scale = np.max(-np.diff(log_abar))
  np.testing.assert_allclose(left, right, atol=0.02 * scale)  # Continuous: within 1e-3 of a step's change.
  h, mid = 1e-2, nodes[::7] + 0.37
  lab = lambda t: np.asarray(process.log_alpha_bar(jnp.asarray(t, jnp.float32)), np.float64)
  np.testing.assert_allclose((lab(mid - h) - lab(mid + h)) / (2 * h),
                             np.asarray(process.beta(jnp.asarray(mid, jnp.float32))), rtol=2e-2, atol=1e-3 * scale)
  if name == 'linear':
    centred = (log_abar[:-2] - log_abar[2:]) / 2
    np.testing.assert_allclose(np.asarray(process.beta(jnp.asarray(nodes, jnp.float32))), centred, rtol=1e-4)


def test_processes_jit_and_their_time_ranges():
  process = DDPM(_schedule('cosine'))
  t = jnp.array([0.1, 0.9]) * process.t_max
  jitted = jax.jit(process.marginal)(t)
  np.testing.assert_allclose(jitted, process.marginal(t), rtol=1e-6)
  # score_sde's sampling eps: VP 1e-3, VE 1e-5; the chain's 1e-3 (T - 1) of its timesteps.
  assert VPSDE().t_min == 1e-3 and SubVPSDE().t_min == 1e-3 and VESDE().t_min == 1e-5
  assert VPSDE().t_max == VESDE().t_max == 1.0
  assert (process.t_min, process.t_max) == (pytest.approx(0.999), 999.0)
  assert (EDM(0.002, 80.0).t_min, EDM(0.002, 80.0).t_max) == (0.002, 80.0)
  with pytest.raises(ValueError, match="Unknown diffusion process 'xx'; valid: ddpm, edm, subvpsde, vesde, vpsde"):
    processes.process_class('xx')
  with pytest.raises(ValueError, match='num_scales must be at least 2'):
    VPSDE(num_scales=1)


def test_registry_builds_every_process_from_the_default_config():
  """processes.PROCESSES names the five processes in name order; each one's from_config takes
  configs/default.py's diffusion section and reads its own knobs."""
  assert tuple(processes.PROCESSES) == ('ddpm', 'edm', 'subvpsde', 'vesde', 'vpsde')
  built = {}
  for name, cls in processes.PROCESSES.items():
    d = default.get_config().diffusion
    d.process = name
    built[name] = processes.from_config(d)
    assert type(built[name]) is cls and built[name].name == name and processes.process_class(name) is cls
  d = default.get_config().diffusion
  ddpm = built['ddpm']
  assert ddpm.num_scales == d.num_timesteps == 1000 and ddpm.t_max == 999.0
  np.testing.assert_allclose(ddpm.schedule.betas, diffusion.linear_betas(1000, d.beta_start, d.beta_end), rtol=1e-6)
  for name in ('vpsde', 'subvpsde'):
    assert (built[name].beta_min, built[name].beta_max) == (d.beta_min, d.beta_max)
  for name in ('vpsde', 'subvpsde', 'vesde'):
    p = built[name]
    assert (p.num_scales, p.train_eps, p.likelihood_weighting) == (d.num_scales, d.train_eps, d.likelihood_weighting)
  assert (float(built['vesde'].sigma_min), built['vesde'].prior_std) == (pytest.approx(d.sigma_min), d.sigma_max)
  edm = built['edm']
  assert (edm.t_min, edm.t_max, edm.sigma_data, edm.p_mean, edm.p_std) == (
      d.sigma_min, d.sigma_max, d.sigma_data, d.p_mean, d.p_std)
  # A changed knob reaches the process.
  d.process, d.beta_max, d.likelihood_weighting = 'vpsde', 12.0, True
  vp = processes.from_config(d)
  assert vp.beta_max == 12.0 and vp.likelihood_weighting
  d.process, d.num_timesteps, d.schedule = 'ddpm', 50, 'cosine'
  chain = processes.from_config(d)
  np.testing.assert_allclose(chain.schedule.betas, diffusion.cosine_betas(50), rtol=1e-6)


def test_ve_sigma_max_from_data():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, size=(37, 4, 4, 3), dtype=np.uint8)
  want = scipy.spatial.distance.pdist(images.reshape(37, -1) / 127.5 - 1.0).max()
  assert sigma_max_from_data(images, block=5) == pytest.approx(want, rel=1e-9)
  floats = rng.normal(size=(11, 6))
  assert sigma_max_from_data(floats) == pytest.approx(scipy.spatial.distance.pdist(floats).max())


# ---------------------------------------------------------------------------
# EDM (Karras et al. 2022): preconditioning, loss and training distribution.

def _edm_coefficients(sigma, sigma_data):
  """Table 1 of Karras et al. 2022 (float64): c_skip, c_out, c_in, c_noise."""
  total = sigma ** 2 + sigma_data ** 2
  return (sigma_data ** 2 / total, sigma * sigma_data / np.sqrt(total), 1.0 / np.sqrt(total),
          0.25 * np.log(sigma))


@pytest.mark.parametrize('sigma_data', [0.5, 1.3])
def test_edm_preconditioning_is_table_1(sigma_data):
  """D(x, sigma) = c_skip x + c_out F(c_in x, c_noise) with Table 1's coefficients, and they do their
  job: for data of std sigma_data the network's input c_in x_t and its target (x_0 - c_skip x_t) / c_out
  both have unit variance."""
  process = EDM(sigma_data=sigma_data)
  sigma = np.array([0.002, 0.1, 0.5, 1.0, 7.0, 80.0])
  c_skip, c_out, c_in, c_noise = _edm_coefficients(sigma, sigma_data)
  t = jnp.asarray(sigma, jnp.float32)
  ones = jnp.ones((6, 2, 2, 1))
  np.testing.assert_allclose(process.network_input(ones, t)[:, 0, 0, 0], c_in, rtol=1e-6)
  np.testing.assert_allclose(process.network_time(t), c_noise, rtol=1e-6)
  np.testing.assert_allclose(process.denoised(jnp.zeros_like(ones), ones, t)[:, 0, 0, 0], c_skip, rtol=1e-6)
  np.testing.assert_allclose(process.denoised(ones, jnp.zeros_like(ones), t)[:, 0, 0, 0], c_out, rtol=1e-6)
  # Var(c_in (x0 + sigma n)) = c_in^2 (sigma_data^2 + sigma^2) = 1; the target's variance
  # ((1 - c_skip)^2 sigma_data^2 + c_skip^2 sigma^2) / c_out^2 = 1.
  np.testing.assert_allclose(c_in ** 2 * (sigma_data ** 2 + sigma ** 2), 1.0, rtol=1e-12)
  np.testing.assert_allclose(((1 - c_skip) ** 2 * sigma_data ** 2 + c_skip ** 2 * sigma ** 2) / c_out ** 2, 1.0,
                             rtol=1e-12)


def _exact_edm_network(process, denoiser):
  """F(c_in x, c_noise) of the network whose D is `denoiser(x, sigma)`: sigma = exp(4 c_noise),
  x = input / c_in, F = (D - c_skip x) / c_out (Table 1 inverted)."""
  def network_fn(x_in, c_noise):
    sigma = jnp.exp(4.0 * c_noise)
    total = jnp.sqrt(sigma ** 2 + process.sigma_data ** 2)[:, None, None, None]
    x = x_in * total
    c_skip, c_out = process.sigma_data ** 2 / total ** 2, sigma[:, None, None, None] * process.sigma_data / total
    return (denoiser(x, sigma) - c_skip * x) / c_out
  return network_fn


def test_edm_eps_of_the_exact_denoiser_is_the_exact_eps():
  """Gaussian data N(mu, s^2 I): x_t = x_0 + sigma n has D*(x, sigma) = mu + s^2 (x - mu) / (s^2 + sigma^2)
  and eps*(x, sigma) = sigma (x - mu) / (s^2 + sigma^2); process.eps_fn of the network that realises D*
  gives eps*, and score_fn the score -(x - mu) / (s^2 + sigma^2)."""
  process = EDM()
  mu, s = 0.3, 0.7
  sigma = np.array([0.002, 0.05, 0.6, 3.0, 80.0])
  x = np.random.default_rng(0).normal(size=(5, 2, 2, 1)) * np.sqrt(s ** 2 + sigma ** 2)[:, None, None, None] + mu
  denoiser = lambda xx, sg: mu + s ** 2 * (xx - mu) / (s ** 2 + sg ** 2)[:, None, None, None]
  network_fn = _exact_edm_network(process, denoiser)
  t, xj = jnp.asarray(sigma, jnp.float32), jnp.asarray(x, jnp.float32)
  scale = (s ** 2 + sigma ** 2)[:, None, None, None]
  eps = process.eps_fn(network_fn)(xj, t)
  np.testing.assert_allclose(eps, sigma[:, None, None, None] * (x - mu) / scale, rtol=2e-4, atol=2e-5)
  # The score -eps / sigma: at sigma = 0.002 float32's rounding of D, divided by sigma^2, swamps it.
  score = process.score_fn(process.eps_fn(network_fn))(xj, t)
  np.testing.assert_allclose(score[1:] * np.sqrt(scale[1:]), -(x - mu)[1:] / np.sqrt(scale[1:]), rtol=2e-4,
                             atol=2e-5)


def test_edm_loss_of_the_exact_denoiser_is_zero_and_its_weighting_is_lambda():
  """A point-mass data set x_0 = c: the exact denoiser is D = c, whose loss is 0 at every sigma. A
  denoiser off by e gives lambda(sigma) e^2 with lambda = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2;
  so an output F off by delta costs delta^2 at every sigma (lambda c_out^2 = 1)."""
  process = EDM(sigma_data=0.5)
  config = _config()
  c = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, size=(1, 3, 3, 2)), jnp.float32)
  sigma = np.array([0.002, 0.03, 0.3, 1.2, 10.0, 80.0])
  b = sigma.shape[0]
  x0 = jnp.broadcast_to(c, (b, 3, 3, 2))
  noise = jax.random.normal(jax.random.PRNGKey(0), x0.shape)
  t = jnp.asarray(sigma, jnp.float32)
  exact = _exact_edm_network(process, lambda xx, sg: jnp.broadcast_to(c, xx.shape))
  terms = process.training_loss(exact, x0, t, noise, config)
  assert terms.per_example.shape == (b,) and float(terms.batch_term) == 0.0
  lam = (sigma ** 2 + 0.25) / (sigma * 0.5) ** 2
  np.testing.assert_array_less(np.abs(np.asarray(terms.per_example)), 1e-6 * lam)  # 0 up to rounding.
  e = 0.1
  off = _exact_edm_network(process, lambda xx, sg: jnp.broadcast_to(c, xx.shape) + e)
  np.testing.assert_allclose(process.training_loss(off, x0, t, noise, config).per_example, lam * e ** 2, rtol=1e-3)
  delta = 0.2
  off_output = lambda x_in, c_noise: exact(x_in, c_noise) + delta
  np.testing.assert_allclose(process.training_loss(off_output, x0, t, noise, config).per_example, delta ** 2,
                             rtol=1e-3)


def test_edm_train_times_are_log_normal():
  """train_times: log sigma ~ N(p_mean, p_std^2) (mean within 4 standard errors, std within 4 of its
  own, Kolmogorov-Smirnov), weights 1."""
  process = EDM(p_mean=-1.2, p_std=1.2)
  n = 100_000
  sigma, weights = process.train_times(jax.random.PRNGKey(0), n, _config())
  np.testing.assert_array_equal(weights, 1.0)
  log_sigma = np.log(np.asarray(sigma, np.float64))
  assert abs(log_sigma.mean() + 1.2) < 4 * 1.2 / math.sqrt(n)
  assert abs(log_sigma.std() - 1.2) < 4 * 1.2 / math.sqrt(2 * n)
  assert scipy.stats.kstest(log_sigma, 'norm', args=(-1.2, 1.2)).pvalue > 1e-3


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
  process = SDES[kind](likelihood_weighting=weighting)
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
  terms = process.training_loss(model, f32(x0), f32(t), f32(noise), _config())
  np.testing.assert_allclose(terms.per_example, want, rtol=2e-4)
  assert float(terms.batch_term) == 0.0
  np.testing.assert_allclose(process.perturb(f32(x0), f32(t), f32(noise)), x_t, rtol=1e-5, atol=1e-5)
  # score_sde's form: ||score std + z||^2, times g^2 / std^2 when likelihood weighted.
  np.testing.assert_allclose(process.likelihood_weight(f32(t)), _weight_np(kind, t), rtol=2e-4)


def _weight_cdf_np(process, eps: float, grid: int = 2_000_001):
  """(t, normalised CDF of g^2 / std^2 on [eps, 1], its integral Z) by the trapezoid rule."""
  t = np.geomspace(eps, 1.0, grid)
  _, g2 = _coefficients_on(process, t)
  std = np.asarray(process.marginal(jnp.asarray(t, jnp.float32))[1], np.float64)
  cdf = scipy.integrate.cumulative_trapezoid(g2 / std ** 2, t, initial=0.0)
  return t, cdf / cdf[-1], cdf[-1]


@pytest.mark.parametrize('name', ['vp', 'subvp'])
def test_importance_sampled_times_follow_the_weight(name):
  """t ~ g^2 / std^2 on [eps, 1] (Kolmogorov-Smirnov against the numerical CDF), and weights
  * g^2 / std^2 = Z / (1 - eps), Z the integral: the weighted loss of a perfect eps-error is constant."""
  eps = 1e-3
  process = SDES[name](train_eps=eps)
  t_grid, cdf, z = _weight_cdf_np(process, eps)
  t, weights = process.train_times(jax.random.PRNGKey(0), 20_000, _config('importance'))
  t = np.asarray(t, np.float64)
  assert t.min() >= eps and t.max() <= 1.0
  statistic = scipy.stats.kstest(t, lambda v: np.interp(v, t_grid, cdf)).statistic
  assert statistic < 1.63 / math.sqrt(20_000) + 2e-3  # p = 0.01, plus float32 times.
  product = np.asarray(weights * process.likelihood_weight(jnp.asarray(t, jnp.float32)))
  np.testing.assert_allclose(product, z / (1.0 - eps), rtol=3e-3)


@pytest.mark.parametrize('name', ['linear', 'cosine'])
def test_the_chain_trains_at_integer_timesteps(name):
  """The ddpm process draws integer t uniform over [0, T) with weights 1 (uniform, or importance
  before a loss history exists); with importance and a full history, t ~ Improved DDPM's
  importance_probs (chi-square) with weights 1 / (T p(t)), so E[w L_t] is the uniform mean of L_t."""
  process = SDES[name]()
  T, n = process.num_scales, 200_000
  key = jax.random.PRNGKey(2)
  for config, history in ((_config(), None), (_config('importance'), None)):
    t, weights = process.train_times(key, n, config, history)
    assert jnp.issubdtype(t.dtype, jnp.integer)
    np.testing.assert_array_equal(weights, 1.0)
    counts = np.bincount(np.asarray(t), minlength=T)
    assert counts.shape == (T,) and scipy.stats.chisquare(counts).pvalue > 1e-3
  config = _config('importance')
  losses = np.linspace(0.05, 2.0, T) ** 2  # L_t, rising with t.
  history = diffusion.LossHistory(jnp.asarray(np.tile(losses[:, None], (1, 4)), jnp.float32),
                                  jnp.full((T,), 4, jnp.int32))
  assert process.uses_loss_history(config) and not process.uses_loss_history(_config())
  t, weights = process.train_times(key, n, config, history._asdict())
  t, weights = np.asarray(t), np.asarray(weights, np.float64)
  probs = np.asarray(diffusion.importance_probs(history, config.training.importance_uniform_prob), np.float64)
  np.testing.assert_allclose(weights, 1.0 / (T * probs[t]), rtol=1e-5)
  counts = np.bincount(t, minlength=T)
  assert scipy.stats.chisquare(counts, probs * n / probs.sum()).pvalue > 1e-3
  values = weights * losses[t]
  assert abs(values.mean() - losses.mean()) < 4 * values.std() / math.sqrt(n)


@pytest.mark.parametrize('name', ['vp', 'subvp', 've'])
def test_importance_sampling_equals_likelihood_weighting_in_expectation(name):
  """E over t ~ U(eps, 1) of the likelihood-weighted loss, by quadrature, against the average of
  weights * loss over importance-sampled t (and over uniform t): within 4 standard errors."""
  eps = 1e-3
  process = SDES[name](train_eps=eps, likelihood_weighting=True)
  x0 = jnp.full((1, 2), 0.5)

  def loss(t, noise):  # eps-network: 0.2 x_t + t, so the loss depends on t beyond the weight.
    model = lambda x, time_input: 0.2 * x + time_input[:, None] / 1000.0
    b = t.shape[0]
    return process.training_loss(model, jnp.broadcast_to(x0, (b, 2)), t, noise, _config()).per_example

  # Exact: the expectation over the noise has a closed form per t (the loss is quadratic in it).
  t_grid = np.geomspace(eps, 1.0, 400_001)
  tg = jnp.asarray(t_grid, jnp.float32)
  m, std = (np.asarray(v, np.float64) for v in process.marginal(tg))
  shift = 0.2 * m * 0.5 + np.asarray(process.network_time(tg), np.float64) / 1000.0
  expected_sq = shift ** 2 + (0.2 * std - 1.0) ** 2  # E[(shift + (0.2 std - 1) z)^2].
  weight = np.asarray(process.likelihood_weight(tg), np.float64)
  exact = np.trapezoid(weight * expected_sq, t_grid) / (1.0 - eps)

  n = 200_000
  for importance in (True, False):
    t, w = process.train_times(jax.random.PRNGKey(3), n, _config('importance' if importance else 'uniform'))
    noise = jax.random.normal(jax.random.PRNGKey(4), (n, 2))
    values = np.asarray(w * loss(t, noise), np.float64)
    assert abs(values.mean() - exact) < 4 * values.std() / math.sqrt(n) + 1e-3 * exact, (importance, values.mean(), exact)
    if importance and name != 've':
      importance_std = values.std()
    elif name != 've':
      assert importance_std < 0.5 * values.std()  # The point of importance sampling.


# ---------------------------------------------------------------------------
# The float32 limits of the processes' knobs (issue 28): each range a check states against the
# float32 arithmetic of the process itself, just inside and just outside it.

def _stated_range(process: str, sampler: str, field: str, value: float, tied: tuple[str, ...] = ()) -> tuple[float, float]:
  """The (low, high) range the config check states for config.diffusion.<field>=value, which it refuses;
  the stated end itself passes. The `tied` fields take the same values."""
  import re  # pylint: disable=g-import-not-at-top
  from ddpm_jax import configuration  # pylint: disable=g-import-not-at-top
  from ddpm_jax.errors import ConfigError  # pylint: disable=g-import-not-at-top
  config = default.get_config()
  config.diffusion.process, config.sampling.sampler = process, sampler
  for name in (field, *tied):
    config.diffusion[name] = value
  with pytest.raises(ConfigError) as refused:
    configuration.validate_config(config)
  stated = re.match(rf'config\.diffusion\.{field}={re.escape(repr(value))} is out of range: it must be in '
                    rf'[\[(](\S+), (\S+)[\])] for process {process}', str(refused.value))
  assert stated, refused.value
  low, high = float(stated[1]), float(stated[2])
  for name in (field, *tied):
    config.diffusion[name] = high if value > high else low
  configuration.validate_config(config)
  return low, high


def _f32(value) -> float:
  return float(jnp.asarray(value, jnp.float32))


@pytest.mark.parametrize('process', ['vpsde', 'subvpsde'])
def test_vp_beta_max_ends_where_the_signal_variance_leaves_the_normal_float32_numbers(process):
  tiny = np.finfo(np.float32).tiny
  low, high = _stated_range(process, 'euler', 'beta_max', 3e3)
  assert low == 0.1
  signal_variance = lambda beta_max: _f32(VPSDE(0.1, beta_max).marginal(jnp.float32(1.0))[0] ** 2)
  assert signal_variance(high) >= tiny > signal_variance(1.01 * high)
  _, high_min = _stated_range(process, 'euler', 'beta_min', 95.0, tied=('beta_max',))  # Above half the sum.
  assert _f32(VPSDE(high_min, high_min).marginal(jnp.float32(1.0))[0] ** 2) >= tiny


@pytest.mark.parametrize('process,sde', [('vesde', VESDE), ('edm', EDM)])
def test_sigma_range_ends_where_the_process_variances_leave_float32(process, sde):
  """sigma_min: sigma^2 at t_min a normal float32 number; sigma_max: sigma^2 and the SDE's g^2 at t_max
  finite (VE's g^2 = sigma^2 2 log(sigma_max / sigma_min) is the larger)."""
  tiny = np.finfo(np.float32).tiny
  sampler = 'edm_heun' if process == 'edm' else 'euler'
  low, _ = _stated_range(process, sampler, 'sigma_min', 3e-21)
  variance_at_t_min = lambda sigma_min: _f32(sde(sigma_min, 50.0).marginal(jnp.float32(sde(sigma_min, 50.0).t_min))[1] ** 2)
  assert variance_at_t_min(low) >= tiny > variance_at_t_min(low / 1.01)
  _, high = _stated_range(process, sampler, 'sigma_max', 7e22)

  def largest_variance(sigma_max):
    p = sde(0.01, sigma_max)
    t = jnp.full((1,), p.t_max, jnp.float32)
    return max(_f32(p.marginal(t)[1][0] ** 2), _f32(p.sde(jnp.zeros((1, 1)), t)[1][0] ** 2))

  assert math.isfinite(largest_variance(high)) and not math.isfinite(largest_variance(1.01 * high))
