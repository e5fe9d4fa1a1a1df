"""The probability-flow ODE (ddpm_jax/ode.py) against closed forms: Gaussian data, whose marginals and
score are Gaussian at every t, for VP, sub-VP, VE and the ddpm chain (encode onto the prior, decode
back, sample, each against the ODE's analytic flow map per sample; exact and Hutchinson
log-likelihoods); a two-point mixture's weights; NFE equal to score calls."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_jax import diffusion, ode
from ddpm_jax.processes.ddpm import DDPM
from ddpm_jax.processes.subvpsde import SubVPSDE
from ddpm_jax.processes.vesde import VESDE
from ddpm_jax.processes.vpsde import VPSDE

SHAPE = (2, 2)  # Each example is a 2 x 2 "image": D = 4.
D = math.prod(SHAPE)
MU = np.array([0.5, -0.3, 0.2, 0.0])
# A full covariance, so the drift's Jacobian has off-diagonal terms (Rademacher probes are exact
# for diagonal Jacobians, and would prove nothing).
_A = np.array([[0.5, 0.1, 0.0, 0.2], [0.0, 0.3, -0.1, 0.0], [0.1, 0.0, 0.4, 0.1], [0.0, 0.2, 0.0, 0.25]])
COV = _A @ _A.T
# COV = U diag(LAM) U^T: p_t's covariance m^2 COV + c I shares the eigenvectors, so the score needs
# no matrix solve.
LAM, U = np.linalg.eigh(COV)
KINDS = {'vp': VPSDE, 'subvp': SubVPSDE, 've': VESDE,
         # DDPM's linear chain as a process, in timestep units: t in [0.999, 999].
         'ddpm': lambda: DDPM(diffusion.make_schedule(diffusion.linear_betas(1000, 1e-4, 0.02)))}
TOL = dict(rtol=1e-6, atol=1e-6)


class Counter:
  """Counts the calls of a score function as they run, jit or not (a jax.debug callback)."""

  def __init__(self):
    self.calls = 0

  def wrap(self, score_fn):
    def counted(x, t):
      jax.debug.callback(self._add)
      return score_fn(x, t)
    return counted

  def _add(self):
    self.calls += 1


def noise_variance(process, t):
  """(m(t), the variance the process adds to the data by time t), so that p_t = N(m MU, m^2 COV +
  noise_variance I) for data N(MU, COV). The data are the process's at t = 0: std(t)^2 - m^2 std(0)^2
  (VE's std(0) is sigma_min); the ddpm chain's data are its clean x_0, before timestep 0: std(t)^2."""
  m, std = process.marginal(t)
  if process.discrete_chain:
    return m, std ** 2
  _, std0 = process.marginal(jnp.zeros_like(t))
  return m, std ** 2 - m ** 2 * std0 ** 2


def moments_np(process, t: float):
  """(mean, covariance) of p_t at one time t, in float64 numpy (for the checks)."""
  m, noise = (float(v) for v in noise_variance(process, jnp.float32(t)))
  return m * MU, m ** 2 * COV + noise * np.eye(D)


def flow_map(process, x, s: float, t: float):
  """The probability-flow ODE's exact map from time s to time t of rows x (float64): the covariances
  C = m^2 COV + noise I share COV's eigenvectors, so x_t = mean_t + C_t^(1/2) C_s^(-1/2) (x_s - mean_s)
  (the flow dx/dt = d mean/dt + dC/dt C^-1 (x - mean) / 2 of Gaussian marginals)."""
  (m_s, n_s), (m_t, n_t) = ((float(v) for v in noise_variance(process, jnp.float32(time))) for time in (s, t))
  ratio = np.sqrt((m_t ** 2 * LAM + n_t) / (m_s ** 2 * LAM + n_s))
  diff = np.asarray(x, np.float64).reshape(-1, D) - m_s * MU
  return (m_t * MU + ((diff @ U) * ratio) @ U.T).reshape(np.shape(x))


def gaussian_score(process):
  def score_fn(x, t):
    m, noise = noise_variance(process, t)
    diff = x.reshape(x.shape[0], D) - m[:, None] * MU
    eigenvalues = m[:, None] ** 2 * LAM + noise[:, None]
    return -(((diff @ U) / eigenvalues) @ U.T).reshape(x.shape)
  return score_fn


def gaussian_logpdf(x, mean, cov):
  """log N(x; mean, cov) of rows x (float64)."""
  x, mean, cov = (np.asarray(a, np.float64) for a in (x, mean, cov))
  diff = x.reshape(-1, D) - mean
  _, logdet = np.linalg.slogdet(cov)
  mahalanobis = np.einsum('bi,ij,bj->b', diff, np.linalg.inv(cov), diff)
  return -0.5 * (D * math.log(2 * math.pi) + logdet + mahalanobis)


def sample_data(key, n):
  return (MU + jax.random.normal(key, (n, D)) @ _A.T).reshape((n,) + SHAPE)


def assert_moments(x, mean, cov, n_sigma=5.0):
  """Sample mean within n_sigma standard errors, sample covariance within n_sigma of its own."""
  flat = np.asarray(x, np.float64).reshape(x.shape[0], D)
  n = flat.shape[0]
  mean, cov = np.asarray(mean, np.float64), np.asarray(cov, np.float64)
  np.testing.assert_array_less(np.abs(flat.mean(0) - mean), n_sigma * np.sqrt(np.diag(cov) / n))
  # Var of a sample covariance entry: (S_ii S_jj + S_ij^2) / n.
  se = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov ** 2) / n)
  np.testing.assert_array_less(np.abs(np.cov(flat.T) - cov), n_sigma * se)


@pytest.mark.parametrize('kind,solver', [('vp', 'dopri5'), ('subvp', 'tsit5'), ('ve', 'dopri5'),
                                         ('ddpm', 'dopri5')])
def test_gaussian_data_is_carried_onto_the_prior_and_back(kind, solver):
  """Encoding carries each data point to its image under the exact flow map from t_min to t_max,
  onto p_{t_max} (about the prior); decoding carries the latents back to the data and prior samples to
  their exact images at t_min, distributed as p_{t_min}; each to 1e-4 per sample (of the prior's std
on the latent side). The ddpm chain (time
  in timesteps, beta(t) of its interpolated marginal) is held to the continuous processes' tolerance."""
  process = KINDS[kind]()
  t_min, t_max = process.t_min, process.t_max
  counter = Counter()
  score_fn = counter.wrap(gaussian_score(process))
  n = 1000
  x = sample_data(jax.random.PRNGKey(0), n)

  z, nfe = ode.ode_encode(process, score_fn, x, solver=solver, **TOL)
  assert int(nfe) == counter.calls > 1
  np.testing.assert_allclose(z, flow_map(process, x, t_min, t_max), atol=1e-4 * process.prior_std)  # VE's: 50.
  assert_moments(z, *moments_np(process, t_max))
  prior_std = process.prior_std
  z = np.asarray(z).reshape(n, D)
  np.testing.assert_allclose(z.std(0), prior_std, rtol=0.06)
  np.testing.assert_array_less(np.abs(z.mean(0)), 5 * prior_std / math.sqrt(n))

  # Decode the latents (back to x) and fresh prior samples (onto p_t_min) in one solve, jitted.
  prior = process.prior_sample(jax.random.PRNGKey(1), (n,) + SHAPE)
  decode = jax.jit(lambda latents: ode.ode_sample(process, score_fn, latents, solver=solver, denoise=False,
                                                  **TOL))
  counter.calls = 0
  out, nfe = decode(jnp.concatenate([z.reshape(x.shape), prior]))
  assert int(nfe) == counter.calls
  np.testing.assert_allclose(out[:n], x, atol=1e-4)
  np.testing.assert_allclose(out[n:], flow_map(process, prior, t_max, t_min), atol=1e-4)
  assert_moments(out[n:], *moments_np(process, t_min))


def posterior_mean_np(process, x_t, t: float):
  """E[x_0 | x_t] for the process's own x_0 (clean data: N(MU, COV) for VP and the chain, N(MU, COV -
  sigma_min^2 I) under VE's data at t = 0), x_t = m x_0 + std z: MU + m COV_0 C_t^-1 (x_t - m MU)."""
  mean_t, cov_t = moments_np(process, t)
  m, std = (float(v) for v in process.marginal(jnp.float32(t)))
  cov_0 = (cov_t - std ** 2 * np.eye(D)) / m ** 2
  return MU + m * (np.asarray(x_t, np.float64).reshape(-1, D) - mean_t) @ np.linalg.inv(cov_t) @ cov_0


@pytest.mark.parametrize('kind', ['vp', 'ddpm'])
def test_tweedie_denoiser_is_the_posterior_mean(kind):
  """process.tweedie_denoise at one time, and ode_sample's final denoising step of the exact flow map's
  end point (per sample, as tight as the flow map itself)."""
  process = KINDS[kind]()
  x_t = np.asarray(sample_data(jax.random.PRNGKey(2), 3))
  t = 0.3 * process.t_max
  denoised = jax.jit(lambda x: process.tweedie_denoise(x, gaussian_score(process)(x, jnp.full((3,), t)),
                                                       jnp.full((3,), t)))(x_t)
  np.testing.assert_allclose(np.asarray(denoised).reshape(3, D), posterior_mean_np(process, x_t, t), atol=1e-5)
  prior = process.prior_sample(jax.random.PRNGKey(3), (8,) + SHAPE)
  samples, _ = ode.ode_sample(process, gaussian_score(process), prior, **TOL)
  end = flow_map(process, prior, process.t_max, process.t_min)
  np.testing.assert_allclose(np.asarray(samples).reshape(8, D), posterior_mean_np(process, end, process.t_min),
                             atol=1e-4)


def analytic_logp(process, x, z):
  """log p_min(x) of the ODE's identity log p_min(x) = log p_max(z) + int div, with the prior
  standing in for p_max: the analytic log p_min(x) plus log prior(z) - log p_max(z)."""
  mean_min, cov_min = moments_np(process, process.t_min)
  mean_max, cov_max = moments_np(process, process.t_max)
  return (gaussian_logpdf(x, mean_min, cov_min) + np.asarray(process.prior_logp(z), np.float64)
          - gaussian_logpdf(z, mean_max, cov_max))


def logp_of(bpd):
  return (ode.DATA_BITS - 1 - np.asarray(bpd, np.float64)) * D * math.log(2.0)


@pytest.mark.parametrize('kind', ['vp', 'subvp', 've', 'ddpm'])
def test_exact_divergence_likelihood_is_the_gaussian_log_density(kind):
  """Bits/dim of the exact-trace likelihood are the closed-form Gaussian log-density's, through the
  dequantisation convention of logp_to_bpd: to 1e-3 nats per example (1e-3 bits/dim checked too), and
  the latent is the flow map's image; the ddpm chain as exactly as the continuous processes."""
  process = KINDS[kind]()
  x = sample_data(jax.random.PRNGKey(4), 8)
  bpd, z, nfe = ode.ode_likelihood(process, gaussian_score(process), x, jax.random.PRNGKey(5),
                                   hutchinson='exact', **TOL)
  assert bpd.shape == (8,) and z.shape == x.shape and int(nfe) > 1
  np.testing.assert_allclose(z, flow_map(process, x, process.t_min, process.t_max), atol=1e-4 * process.prior_std)
  truth = analytic_logp(process, x, z)
  np.testing.assert_allclose(logp_of(bpd), truth, atol=1e-3)
  np.testing.assert_allclose(bpd, ode.logp_to_bpd(truth, D), atol=1e-3)


@pytest.mark.parametrize('hutchinson', ['gaussian', 'rademacher'])
def test_hutchinson_likelihood_is_unbiased(hutchinson):
  process = VPSDE()
  counter = Counter()
  n = 400
  x = jnp.broadcast_to(sample_data(jax.random.PRNGKey(6), 1), (n,) + SHAPE)  # One point, n probes.
  bpd, z, nfe = ode.ode_likelihood(process, counter.wrap(gaussian_score(process)), x, jax.random.PRNGKey(7),
                                   hutchinson=hutchinson, **TOL)
  assert int(nfe) == counter.calls
  estimates = logp_of(bpd)
  truth = analytic_logp(process, x, z)
  spread = estimates.std()
  assert spread > 1e-2  # Each probe gives its own estimate ...
  assert abs(np.mean(estimates - truth)) < 4 * spread / math.sqrt(n)  # ... right on average.
  assert np.all(np.abs(estimates - truth) < 6 * spread)


def test_divergence_estimators_on_a_linear_map():
  """fn(x) = x M^T: div = tr M; Hutchinson's variance 2 ||S||_F^2 (Gaussian) and 2 sum_{i != j} S_ij^2
  (Rademacher), S the symmetric part of M."""
  M = np.random.default_rng(8).normal(size=(D, D)).astype(np.float32)
  fn = lambda x, t: (x.reshape(x.shape[0], D) @ M.T).reshape(x.shape) * t[:, None, None]
  x = np.linspace(-1, 1, D, dtype=np.float32).reshape((1,) + SHAPE)
  value, div = jax.jit(lambda x: ode.exact_divergence(fn, x, jnp.ones((1,))))(x)
  np.testing.assert_allclose(value, (x.reshape(1, D) @ M.T).reshape(x.shape), rtol=1e-5)
  np.testing.assert_allclose(div, [np.trace(M)], rtol=1e-5)
  S = (M.astype(np.float64) + M.T) / 2
  n = 20000
  xs = np.broadcast_to(x, (n,) + SHAPE)
  estimate = jax.jit(lambda xs, noise: ode.hutchinson_divergence(fn, xs, jnp.ones((n,)), noise)[1])
  off_diagonal = S - np.diag(np.diag(S))
  for name, variance in (('gaussian', 2 * np.sum(S ** 2)), ('rademacher', 2 * np.sum(off_diagonal ** 2))):
    estimates = np.asarray(estimate(xs, ode.probe_noise(jax.random.PRNGKey(9), xs.shape, name)), np.float64)
    assert abs(estimates.mean() - np.trace(M)) < 4 * math.sqrt(variance / n)
    np.testing.assert_allclose(estimates.var(), variance, rtol=0.1)


def test_two_point_mixture_lands_on_its_weights():
  """Data at two points with weights 0.3 / 0.7: p_t is a two-component Gaussian mixture."""
  process = VPSDE()
  points = jnp.array([[0.6, -0.4, 0.2, 0.8], [-0.5, 0.3, -0.7, 0.1]])
  log_w = jnp.log(jnp.array([0.3, 0.7]))

  def score_fn(x, t):
    m, std = process.marginal(t)
    flat = x.reshape(x.shape[0], D)
    diff = flat[:, None, :] - m[:, None, None] * points  # (B, 2, D)
    var = std[:, None, None] ** 2
    resp = jax.nn.softmax(log_w - jnp.sum(diff ** 2, -1) / (2 * var[..., 0]), axis=-1)
    return jnp.sum(resp[..., None] * -diff / var, axis=1).reshape(x.shape)

  n = 2000
  counter = Counter()
  x_T = process.prior_sample(jax.random.PRNGKey(10), (n,) + SHAPE)
  x0, nfe = ode.ode_sample(process, counter.wrap(score_fn), x_T, solver='tsit5')
  assert int(nfe) == counter.calls  # Tweedie's denoising step at t_min included.
  distance = np.linalg.norm(np.asarray(x0).reshape(n, 1, D) - np.asarray(points), axis=-1)
  assert distance.min(axis=1).max() < 0.05  # Every sample on one of the points.
  fraction = np.mean(distance.argmin(axis=1) == 1)
  assert abs(fraction - 0.7) < 4 * math.sqrt(0.21 / n)


def test_dequantize_and_bits_per_dim():
  images = np.tile(np.arange(256, dtype=np.uint8).reshape(16, 4, 4), (50, 1, 1))
  x = np.asarray(ode.dequantize(jax.random.PRNGKey(11), images))
  assert x.dtype == np.float32 and x.min() >= -1.0 and x.max() < 1.0
  # Each value falls in its own pixel's bin [2k/256 - 1, 2(k+1)/256 - 1), spread uniformly over it.
  bins = np.floor((x.astype(np.float64) + 1.0) * 128.0)
  np.testing.assert_array_equal(bins, images)
  offsets = (x.astype(np.float64) + 1.0) * 128.0 - bins
  assert abs(offsets.mean() - 0.5) < 4 * math.sqrt(1 / 12 / offsets.size)
  # The uniform density on [-1, 1)^D (log p = -D log 2) is 8 bits/dim: every 8-bit image alike.
  np.testing.assert_allclose(ode.logp_to_bpd(jnp.array([-D * math.log(2.0)]), D), [8.0], rtol=1e-6)


def test_max_steps_error_and_bad_names():
  process = VPSDE()
  x = jnp.zeros((2,) + SHAPE)
  score_fn = gaussian_score(process)
  with pytest.raises(RuntimeError, match=r'more than max_steps=2 steps: raise max_steps or loosen'):
    ode.ode_sample(process, score_fn, x, max_steps=2)
  with pytest.raises(ValueError, match=r"^Unknown ODE solver 'rk4'; valid: dopri5, tsit5\.$"):
    ode.ode_sample(process, score_fn, x, solver='rk4')
  with pytest.raises(ValueError, match=r"^Unknown ODE solver 'euler'"):
    ode.ode_encode(process, score_fn, x, solver='euler')
  with pytest.raises(ValueError, match=r"^Unknown divergence estimator hutchinson='Rademacher'; valid: "
                                       r"gaussian, rademacher, exact\.$"):
    ode.ode_likelihood(process, score_fn, x, jax.random.PRNGKey(0), hutchinson='Rademacher')
  with pytest.raises(ValueError, match=r'^max_steps=0 must be at least 1\.$'):
    ode.ode_encode(process, score_fn, x, max_steps=0)


@pytest.mark.parametrize('solve', ['sample', 'likelihood'])
def test_under_jit_a_solve_out_of_max_steps_returns_its_network_calls_negated(solve):
  """Inside jit a solve cannot raise: one that stops at max_steps returns -nfe (every call it made,
  the denoising step's too), one that reaches its end +nfe; its callers raise on the host."""
  process = VPSDE()
  x = jnp.full((2,) + SHAPE, 0.3)
  counter = Counter()
  score_fn = counter.wrap(gaussian_score(process))
  run = {'sample': lambda steps: ode.ode_sample(process, score_fn, x, max_steps=steps)[1],
         'likelihood': lambda steps: ode.ode_likelihood(process, score_fn, x, jax.random.PRNGKey(1),
                                                        max_steps=steps)[2]}[solve]
  stopped = int(jax.jit(lambda: run(3))())
  assert stopped < 0 and -stopped == counter.calls == 1 + 3 * ode.EVALS_PER_STEP + (solve == 'sample')
  counter.calls = 0
  finished = int(jax.jit(lambda: run(4096))())
  assert finished == counter.calls > -stopped
