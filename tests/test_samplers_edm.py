"""EDM's samplers (ddpm_jax/samplers/edm.py): Karras's grid, parity with diffusers' EDM schedulers and
HeunDiscreteScheduler(use_karras_sigmas=True) given the same denoiser, and Gaussian oracles on every
process."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ddpm_jax import diffusion, processes
from ddpm_jax.processes.edm import EDM
from ddpm_jax.samplers import edm as edm_lib
from ddpm_jax.samplers import levels as levels_lib
from ddpm_jax.samplers.dpm_solver import dpm_solver_pp_2m

torch = pytest.importorskip('torch')
schedulers = pytest.importorskip('diffusers.schedulers')

SHAPE = (3, 4, 4, 2)


def _network(x_in, c_noise):
  """A fixed smooth stand-in for a preconditioned network F(c_in x, c_noise) (numpy or torch alike)."""
  lib = torch if isinstance(x_in, torch.Tensor) else jnp
  if getattr(c_noise, 'ndim', 0) == 1:  # Ours: one time per example.
    c_noise = diffusion.expand(c_noise, x_in.ndim)
  return 0.4 * lib.tanh(1.3 * x_in + 0.2 * c_noise) - 0.1 * x_in * c_noise


def _edm_denoiser(process: EDM):
  """D(x, sigma) of the stand-in network through EDM's preconditioning (our side)."""
  return lambda x, sigma: process.denoised(_network(process.network_input(x, sigma), process.network_time(sigma)),
                                           x, sigma)


def _start(seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).standard_normal(SHAPE).astype(np.float32)


def test_karras_sigmas_are_the_papers_grid():
  sigmas = edm_lib.karras_sigmas(18, 0.002, 80.0, 7.0)
  assert sigmas.shape == (19,) and sigmas[-1] == 0
  np.testing.assert_allclose(sigmas[[0, 17]], [80.0, 0.002], rtol=1e-12)
  i = np.arange(18)
  expected = (80.0 ** (1 / 7) + i / 17 * (0.002 ** (1 / 7) - 80.0 ** (1 / 7))) ** 7
  np.testing.assert_allclose(sigmas[:-1], expected, rtol=1e-12)
  assert np.all(np.diff(sigmas) < 0)


def test_churn_raises_levels_only_inside_the_window():
  sigmas = edm_lib.karras_sigmas(10, 0.002, 80.0)
  hats = edm_lib.churned_sigmas(sigmas, s_churn=40.0, s_tmin=0.05, s_tmax=50.0)
  gamma = min(40.0 / 10, np.sqrt(2) - 1)
  inside = (sigmas[:-1] >= 0.05) & (sigmas[:-1] <= 50.0)
  np.testing.assert_allclose(hats, np.where(inside, sigmas[:-1] * (1 + gamma), sigmas[:-1]))
  assert inside.any() and not inside.all()
  np.testing.assert_array_equal(edm_lib.churned_sigmas(sigmas, 0.0, 0.0, np.inf), sigmas[:-1])


def _ours(process: EDM, sigmas: np.ndarray, x: np.ndarray, second_order: bool, **churn) -> np.ndarray:
  """karras_sample with the stand-in denoiser evaluated on karras_sample's own evaluation grid."""
  grid = jnp.asarray(edm_lib.evaluation_sigmas(sigmas, churn.get('s_churn', 0.0), churn.get('s_tmin', 0.0),
                                               churn.get('s_tmax', np.inf)), jnp.float32)
  denoiser = _edm_denoiser(process)
  denoise = lambda x_t, level: denoiser(x_t, jnp.full((x_t.shape[0],), grid[level]))
  out, _ = edm_lib.karras_sample(denoise, jnp.asarray(x), sigmas, jax.random.key(0), second_order=second_order,
                                 **churn)
  return np.asarray(out)


def _diffusers_edm_run(scheduler, num_steps: int, x: np.ndarray):
  """(the Karras grid, x, the sample) of a diffusers EDM scheduler run with the stand-in network; its
  sigmas are checked to be ours."""
  scheduler.set_timesteps(num_steps)
  sigmas = edm_lib.karras_sigmas(num_steps, 0.002, 80.0, 7.0)
  np.testing.assert_allclose(scheduler.sigmas.numpy(), sigmas, rtol=1e-6)
  sample = torch.from_numpy(x)
  for t in scheduler.timesteps:
    output = _network(scheduler.scale_model_input(sample, t), t)
    sample = scheduler.step(output, t, sample).prev_sample
  return sigmas, x, sample.numpy()


@pytest.mark.parametrize('num_steps', [5, 12])
def test_euler_equals_diffusers_edm_euler_scheduler(num_steps):
  scheduler = schedulers.EDMEulerScheduler(sigma_min=0.002, sigma_max=80.0, sigma_data=0.5, rho=7.0)
  sigmas, x, sample = _diffusers_edm_run(scheduler, num_steps, _start())
  np.testing.assert_allclose(_ours(EDM(), sigmas, x, second_order=False), sample, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize('num_steps', [6, 18])
def test_dpm_solver_on_the_karras_grid_equals_diffusers_edm_dpm_solver(num_steps):
  scheduler = schedulers.EDMDPMSolverMultistepScheduler(sigma_min=0.002, sigma_max=80.0, sigma_data=0.5, rho=7.0)
  sigmas, x, sample = _diffusers_edm_run(scheduler, num_steps, _start(1))
  grid = levels_lib.checked(levels_lib.NoiseLevels(np.ones_like(sigmas), sigmas, sigmas))
  ours, nfe = dpm_solver_pp_2m(grid, EDM().eps_fn(_network), jnp.asarray(x))
  assert nfe == num_steps
  np.testing.assert_allclose(np.asarray(ours), sample, rtol=2e-5, atol=2e-5)


def _eps_model(x_in, sigma):
  """A stand-in eps-network of (alpha x~, sigma~), numpy or torch."""
  lib = torch if isinstance(x_in, torch.Tensor) else jnp
  return 0.3 * x_in * sigma / (1.0 + sigma) + 0.1 * lib.tanh(x_in)  # sigma: a scalar on both sides.


@pytest.mark.parametrize('num_steps', [4, 10])
def test_heun_equals_diffusers_heun_with_karras_sigmas_on_the_ddpm_chain(num_steps):
  """HeunDiscreteScheduler(use_karras_sigmas=True) on the linear DDPM schedule: its sigma grid is
  Karras's between the chain's smallest and largest sigma~, and its steps are Alg. 1 given the same
  denoiser D(x~, sigma~) = x~ - sigma~ eps(x~ / sqrt(1 + sigma~^2), sigma~)."""
  scheduler = schedulers.HeunDiscreteScheduler(num_train_timesteps=1000, beta_schedule='linear', beta_start=1e-4,
                                               beta_end=0.02, use_karras_sigmas=True)
  scheduler.set_timesteps(num_steps)
  schedule = diffusion.make_schedule(diffusion.linear_betas(1000, 1e-4, 0.02))
  abar = np.asarray(schedule.alphas_cumprod, np.float64)
  table = np.sqrt((1 - abar) / abar)
  sigmas = edm_lib.karras_sigmas(num_steps, table[0], table[-1], 7.0)
  np.testing.assert_allclose(np.unique(scheduler.sigmas.numpy())[::-1], sigmas, rtol=2e-5)
  x = torch.from_numpy(_start(2)) * scheduler.init_noise_sigma
  sample = x.clone()
  for t in scheduler.timesteps:
    model_input = scheduler.scale_model_input(sample, t)
    output = _eps_model(model_input, scheduler.sigmas[scheduler.step_index])
    sample = scheduler.step(output, t, sample).prev_sample
  grid = jnp.asarray(edm_lib.evaluation_sigmas(sigmas, 0.0, 0.0, np.inf), jnp.float32)

  def denoise(x_tilde, level):
    sigma = grid[level]
    return x_tilde - sigma * _eps_model(x_tilde / jnp.sqrt(1.0 + sigma ** 2), sigma)

  ours, nfe = edm_lib.karras_sample(denoise, jnp.asarray(x.numpy()), sigmas)
  assert nfe == 2 * num_steps - 1
  np.testing.assert_allclose(np.asarray(ours), sample.numpy(), rtol=1e-4, atol=1e-4)


class _ExactGaussian:
  """The model interface's denoiser for data x0 ~ N(mu, s^2 I): E[x0 | x_t] at process time t."""

  def __init__(self, process, mu: float, s: float):
    self.process, self.mu, self.s = process, mu, s

  def denoise(self, x, t):
    alpha, sigma = (diffusion.expand(v, x.ndim) for v in self.process.marginal(t))
    return self.mu + alpha * self.s ** 2 / (alpha ** 2 * self.s ** 2 + sigma ** 2) * (x - alpha * self.mu)


def _config(sampler: str, num_steps: int, **knobs) -> ml_collections.ConfigDict:
  sampling = ml_collections.ConfigDict({'sampler': sampler, 'num_steps': num_steps, 'rho': 7.0, 's_churn': 0.0,
                                        's_tmin': 0.0, 's_tmax': float('inf'), 's_noise': 1.0, **knobs})
  return ml_collections.ConfigDict({'sampling': sampling})


PROCESSES = {
    'edm': lambda: EDM(),
    'ddpm': lambda: processes.PROCESSES['ddpm'](diffusion.make_schedule(diffusion.linear_betas(1000, 1e-4, 0.02))),
    'vpsde': lambda: processes.PROCESSES['vpsde'](),
    'vesde': lambda: processes.PROCESSES['vesde'](0.01, 50.0),
}


@pytest.mark.parametrize('name', list(PROCESSES))
def test_deterministic_sampler_converges_to_the_exact_flow_map_of_gaussian_data(name):
  """With the exact denoiser of N(mu, s^2) data the probability-flow ODE in x~ = x / alpha is
  x~(sigma~) = mu + sqrt(s^2 + sigma~^2) / sqrt(s^2 + sigma~_max^2) (x~_T - mu). edm_heun reaches its
  end point per sample on every process (through Process.times_at_sigma_ratio), with Heun's second
  order: doubling the levels quarters the error."""
  process, mu, s = PROCESSES[name](), 0.3, 0.5
  x_T = jax.random.normal(jax.random.key(3), (64, 2, 2, 1))
  sigma_min, sigma_max = process.sigma_ratio_range()
  start = process.prior_std / float(process.marginal(jnp.float32(process.t_max))[0])
  exact = mu + s / np.sqrt(s ** 2 + sigma_max ** 2) * (np.asarray(x_T) * start - mu)
  errors = []
  for levels in (40, 80):
    x0, _, nfe = edm_lib.EDMHeun.build(_config('edm_heun', levels), process)(
        _ExactGaussian(process, mu, s), x_T, jax.random.key(4))
    assert nfe == 2 * levels - 1
    errors.append(np.abs(np.asarray(x0) - exact).max())
  assert errors[1] < 5e-3, errors
  assert 3.0 < errors[0] / errors[1] < 5.5, errors
  assert sigma_min < 0.05


def test_stochastic_sampler_draws_the_gaussian_data_distribution():
  """edm_stochastic with churn on N(mu, s^2) data: the samples' mean and variance match within
  Monte-Carlo error (4,096 draws), and differ from the deterministic sampler's samples."""
  process, mu, s = EDM(), 0.3, 0.5
  config = _config('edm_stochastic', 32, s_churn=40.0, s_tmin=0.05, s_tmax=50.0, s_noise=1.0)
  x_T = jax.random.normal(jax.random.key(5), (4096, 1, 1, 1))
  x0, _, nfe = edm_lib.EDMStochastic.build(config, process)(_ExactGaussian(process, mu, s), x_T,
                                                            jax.random.key(6))
  x0 = np.asarray(x0).ravel()
  assert nfe == 63
  shrink = 1.0 - s / np.sqrt(s ** 2 + 80.0 ** 2)  # The prior N(0, 80^2) instead of N(mu, s^2 + 80^2).
  assert abs(x0.mean() - mu * shrink) < 4 * s / np.sqrt(4096)
  assert abs(x0.var() - s ** 2) < 4 * s ** 2 * np.sqrt(2 / 4096)
  deterministic, _, _ = edm_lib.EDMHeun.build(_config('edm_heun', 32), process)(
      _ExactGaussian(process, mu, s), x_T, jax.random.key(6))
  assert np.abs(np.asarray(deterministic).ravel() - x0).mean() > 0.05


def test_stochastic_sampler_depends_only_on_its_key():
  process = EDM()
  run = edm_lib.EDMStochastic.build(_config('edm_stochastic', 6, s_churn=10.0, s_tmin=0.0, s_tmax=100.0), process)
  model = _ExactGaussian(process, 0.0, 0.5)
  x_T = jax.random.normal(jax.random.key(7), (4, 2, 2, 1))
  a, b, c = (np.asarray(run(model, x_T, jax.random.key(k))[0]) for k in (8, 8, 9))
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
