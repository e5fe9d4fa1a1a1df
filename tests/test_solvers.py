"""The fast solvers: step-by-step parity with diffusers' schedulers, and a Gaussian-data oracle.

For data x_0 ~ N(mu, s^2) (per dimension) and x = alpha x_0 + sigma z, the exact eps prediction is
E[z | x] = sigma (x - alpha mu) / (alpha^2 s^2 + sigma^2), and the probability-flow ODE is affine:
x moves along alpha mu + sd (x - alpha' mu) / sd', sd = sqrt(alpha^2 s^2 + sigma^2). So the exact
answer of every sampler run is known sample by sample.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_jax import diffusion, solvers

T = 1000
SHAPE = (2, 3, 4, 4)
# The fake network of the parity tests: eps = tanh(A x + B t + C), elementwise (layout-free).
A, B, C = 0.8, 1.5e-3, -0.4


@pytest.fixture(scope='module', params=['linear', 'cosine'])
def schedule(request):
  return diffusion.make_schedule(diffusion.BETA_SCHEDULES[request.param](T, 1e-4, 0.02))


def _recording_eps_fn(calls: list):
  """eps_fn that appends every (x, model_time) the compiled loop gives it to `calls`, in order."""

  def record(x, t):
    calls.append((np.asarray(x), np.asarray(t)))

  def eps_fn(x, t):
    jax.debug.callback(record, x, t, ordered=True)
    return jnp.tanh(A * x + B * t.reshape((-1,) + (1,) * (x.ndim - 1)) + C)

  return eps_fn


# ---------------------------------------------------------------------------
# Parity with diffusers' schedulers (PyTorch).

# Each scheduler with the config it is compared under: diffusers 0.42.1's defaults (timestep_spacing
# 'linspace', final_sigmas_type 'zero', lower_order_final, no thresholding, no Karras sigmas),
# prediction_type 'epsilon', and for the multistep ones the algorithm named in the task.
DIFFUSERS = {
    'dpm_solver_pp_2m': ('DPMSolverMultistepScheduler',
                         dict(algorithm_type='dpmsolver++', solver_order=2, solver_type='midpoint')),
    'sde_dpm_solver_pp_2m': ('DPMSolverMultistepScheduler',
                             dict(algorithm_type='sde-dpmsolver++', solver_order=2, solver_type='midpoint')),
    'unipc': ('UniPCMultistepScheduler', dict(solver_order=2, solver_type='bh2', predict_x0=True)),
    'euler': ('EulerDiscreteScheduler', {}),
    'heun': ('HeunDiscreteScheduler', {}),
}


def _diffusers_scheduler(name: str, schedule: diffusion.Schedule, **kwargs):
  """diffusers' scheduler for `name` on our schedule: its alphas_cumprod set to ours (float32), so
  both sides start from the same numbers (its own float32 cumprod differs by ~1e-6)."""
  diffusers = pytest.importorskip('diffusers')
  torch = pytest.importorskip('torch')
  cls_name, options = DIFFUSERS[name]
  betas = np.asarray(schedule.betas, dtype=np.float64)
  scheduler = getattr(diffusers, cls_name)(num_train_timesteps=T, trained_betas=betas,
                                           prediction_type='epsilon', **options, **kwargs)
  scheduler.alphas_cumprod = torch.tensor(np.asarray(schedule.alphas_cumprod, dtype=np.float32))
  return scheduler


def _diffusers_run(scheduler, num_steps: int, noise: np.ndarray, step_noises=None):
  """diffusers' pipeline loop with the fake network: (the network's (input, t) per call, final sample).

  step_noises(i) -> the variance_noise of step i (stochastic schedulers)."""
  import torch  # pylint: disable=import-outside-toplevel
  scheduler.set_timesteps(num_steps)
  sample = torch.from_numpy(noise) * scheduler.init_noise_sigma
  calls = []
  for i, t in enumerate(scheduler.timesteps):
    model_input = scheduler.scale_model_input(sample, t)
    calls.append((model_input.numpy().copy(), float(t)))
    eps = torch.tanh(A * model_input + B * t.float() + C)
    noise_kwargs = {} if step_noises is None else {'variance_noise': torch.from_numpy(step_noises(i).copy())}
    sample = scheduler.step(eps, t, sample, **noise_kwargs).prev_sample
  return calls, sample.numpy()


NOISE_KEY = jax.random.key(7)


def _step_noises(name: str):
  """For a stochastic solver: step i's noise as solvers.step_noise draws it from NOISE_KEY."""
  if not solvers.SOLVERS[name].stochastic:
    return None
  return lambda i: np.asarray(solvers.step_noise(NOISE_KEY, i, jnp.zeros(SHAPE, jnp.float32)))


def _assert_close(ours, theirs, rtol=1e-5):
  """max |ours - theirs| <= rtol * max |theirs|."""
  ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
  assert ours.shape == theirs.shape
  error = np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs))
  assert error <= rtol, f'relative error {error:.2e} > {rtol:.0e}'


@pytest.mark.parametrize('num_steps', [10, 20])
@pytest.mark.parametrize('name', list(solvers.SOLVERS))
def test_every_step_matches_diffusers(schedule, name, num_steps):
  scheduler = _diffusers_scheduler(name, schedule)
  noise = np.random.default_rng(num_steps).normal(size=SHAPE)
  their_calls, their_sample = _diffusers_run(scheduler, num_steps, noise, _step_noises(name))

  solver = solvers.SOLVERS[name]
  levels = solvers.levels_from_schedule(schedule, num_steps, 'linspace', solver.grid)
  calls = []
  eps_fn = _recording_eps_fn(calls)
  x_T = jnp.asarray(their_calls[0][0], jnp.float32)  # diffusers' first network input is x_T in the model's space.
  run = jax.jit(lambda x: solvers.solve(name, levels, eps_fn, x, NOISE_KEY)[0])
  sample = jax.block_until_ready(run(x_T))
  jax.effects_barrier()

  _, nfe = solvers.solve(name, levels, lambda x, t: x, x_T, NOISE_KEY)
  assert nfe == len(calls) == len(their_calls) == (2 * num_steps - 1 if name == 'heun' else num_steps)
  for (x, t), (their_x, their_t) in zip(calls, their_calls):
    np.testing.assert_array_equal(t, np.full(SHAPE[0], their_t, np.float32))
    _assert_close(x, their_x)
  _assert_close(sample, their_sample)


@pytest.mark.parametrize('num_steps', [10, 20])
@pytest.mark.parametrize('name', ['dpm_solver_pp_2m', 'sde_dpm_solver_pp_2m', 'unipc'])
def test_final_level_above_zero_matches_diffusers(name, num_steps):
  """final_sigmas_type='sigma_min' ends at timestep 0's noise level, not at clean data: there
  lower_order_final decides the last step's order (DPM-Solver++: first order only below 15 steps)."""
  schedule = diffusion.make_schedule(diffusion.linear_betas(T, 1e-4, 0.02))
  scheduler = _diffusers_scheduler(name, schedule, final_sigmas_type='sigma_min')
  their_calls, their_sample = _diffusers_run(scheduler, num_steps, np.random.default_rng(1).normal(size=SHAPE),
                                             _step_noises(name))
  levels = solvers.levels_from_schedule(schedule, num_steps, grid='multistep')
  abar_0 = float(schedule.alphas_cumprod[0])
  levels = levels._replace(alpha=np.append(levels.alpha[:-1], np.sqrt(abar_0)),
                           sigma=np.append(levels.sigma[:-1], np.sqrt(1.0 - abar_0)))
  sample, _ = jax.jit(lambda x: solvers.solve(name, levels, _recording_eps_fn([]), x, NOISE_KEY))(
      jnp.asarray(their_calls[0][0], jnp.float32))
  _assert_close(sample, their_sample)


# diffusers' options equal to clip_denoised=True: dynamic thresholding whose threshold is clamped to
# [1, sample_max_value] = [1, 1] clips to [-1, 1]; Heun's clip_sample (Euler has none).
CLIP_OPTIONS = {'dpm_solver_pp_2m': dict(thresholding=True, sample_max_value=1.0),
                'sde_dpm_solver_pp_2m': dict(thresholding=True, sample_max_value=1.0),
                'unipc': dict(thresholding=True, sample_max_value=1.0), 'heun': dict(clip_sample=True)}


@pytest.mark.parametrize('name', list(CLIP_OPTIONS))
def test_clipped_steps_match_diffusers(name):
  schedule = diffusion.make_schedule(diffusion.linear_betas(T, 1e-4, 0.02))
  scheduler = _diffusers_scheduler(name, schedule, **CLIP_OPTIONS[name])
  noise = np.random.default_rng(0).normal(size=SHAPE)
  their_calls, their_sample = _diffusers_run(scheduler, 10, noise, _step_noises(name))
  solver = solvers.SOLVERS[name]
  levels = solvers.levels_from_schedule(schedule, 10, grid=solver.grid)
  calls = []
  run = jax.jit(lambda x: solvers.solve(name, levels, _recording_eps_fn(calls), x, NOISE_KEY, clip_denoised=True)[0])
  sample = jax.block_until_ready(run(jnp.asarray(their_calls[0][0], jnp.float32)))
  jax.effects_barrier()
  for (x, _), (their_x, _) in zip(calls, their_calls, strict=True):
    _assert_close(x, their_x)
  _assert_close(sample, their_sample)
  assert np.max(np.abs(sample)) <= 1.0 + 1e-6  # The last step lands on the clipped x_0 prediction.


@pytest.mark.parametrize('spacing', solvers.TIMESTEP_SPACINGS)
@pytest.mark.parametrize('name', list(solvers.SOLVERS))
def test_timesteps_and_levels_match_diffusers(name, spacing):
  schedule = diffusion.make_schedule(diffusion.linear_betas(T, 1e-4, 0.02))
  for num_steps in (7, 10, 20, 50):
    scheduler = _diffusers_scheduler(name, schedule, timestep_spacing=spacing, steps_offset=1)
    scheduler.set_timesteps(num_steps)
    timesteps, sigmas = scheduler.timesteps.double().numpy(), scheduler.sigmas.double().numpy()
    if name == 'heun':  # Heun repeats each timestep but the first, and each sigma but the ends.
      timesteps, sigmas = np.append(timesteps[:1], timesteps[1::2]), np.append(sigmas[0::2], sigmas[-1])
    grid = solvers.SOLVERS[name].grid
    np.testing.assert_array_equal(solvers.discrete_timesteps(T, num_steps, spacing, grid, 1), timesteps)
    levels = solvers.levels_from_schedule(schedule, num_steps, spacing, grid, steps_offset=1)
    np.testing.assert_allclose(levels.sigma / levels.alpha, sigmas, rtol=1e-6)
    np.testing.assert_array_equal(levels.model_time[:-1], timesteps)


# ---------------------------------------------------------------------------
# Structure: one compiled loop, the number of network calls.


def _levels_vp(num_steps: int, t_end: float = 1e-3) -> solvers.NoiseLevels:
  return solvers.levels_from_marginal(_vp_marginal, lambda t: (T - 1) * t, np.linspace(1.0, t_end, num_steps + 1))


@pytest.mark.parametrize('name,traced_calls', [('dpm_solver_pp_2m', 1), ('sde_dpm_solver_pp_2m', 1), ('unipc', 1),
                                               ('euler', 1), ('heun', 2)])
def test_network_appears_in_the_loop_body_only(name, traced_calls):
  traces = []

  def eps_fn(x, t):
    traces.append(t.shape)
    return x * 0.5

  jax.jit(lambda x: solvers.solve(name, _levels_vp(12), eps_fn, x, NOISE_KEY)[0]).lower(jnp.zeros((3, 2)))
  assert traces == [(3,)] * traced_calls


def test_heun_corrects_every_step_that_does_not_end_on_clean_data():
  schedule = diffusion.make_schedule(diffusion.linear_betas(T, 1e-4, 0.02))
  eps_fn = lambda x, t: 0.1 * x
  assert solvers.heun(solvers.levels_from_schedule(schedule, 8, grid='euler'), eps_fn, jnp.ones((1, 2)))[1] == 15
  assert solvers.heun(_levels_vp(8), eps_fn, jnp.ones((1, 2)))[1] == 16


def test_first_sde_step_is_the_ddpm_posterior():
  """One first-order SDE-DPM-Solver++ step from timestep t to t - 1 draws from DDPM's posterior
  q(x_{t-1} | x_t, x_0) at the data prediction x_0: the ancestral step with variance beta~_t."""
  schedule = diffusion.make_schedule(diffusion.linear_betas(T, 1e-4, 0.02))
  abar = np.asarray(schedule.alphas_cumprod, np.float64)
  x_t = jnp.asarray(np.random.default_rng(3).normal(size=SHAPE), jnp.float32)
  eps_fn = lambda x, t: jnp.tanh(A * x + C)
  for t in (1, 10, 500, 999):
    a = np.sqrt(abar[[t, t - 1]])
    levels = solvers.NoiseLevels(a, np.sqrt(1.0 - a ** 2), np.array([t, t - 1], np.float64))
    ours, nfe = solvers.sde_dpm_solver_pp_2m(levels, eps_fn, x_t, NOISE_KEY)
    t_batch = jnp.full((SHAPE[0],), t)
    x0 = diffusion.predict_x0_from_eps(schedule, x_t, t_batch, eps_fn(x_t, None))
    mean, variance, _ = diffusion.q_posterior_mean_variance(schedule, x0, x_t, t_batch)
    expected = mean + jnp.sqrt(variance) * solvers.step_noise(NOISE_KEY, 0, x_t)
    assert nfe == 1
    np.testing.assert_allclose(ours, expected, rtol=2e-5, atol=2e-5)


def test_bad_levels_and_spacings_are_refused():
  schedule = diffusion.make_schedule(diffusion.linear_betas(T, 1e-4, 0.02))
  with pytest.raises(ValueError, match='spacing'):
    solvers.levels_from_schedule(schedule, 10, 'quad')
  with pytest.raises(ValueError, match='grid'):
    solvers.levels_from_schedule(schedule, 10, grid='karras')
  with pytest.raises(ValueError, match='num_steps'):
    solvers.levels_from_schedule(schedule, T + 1)
  with pytest.raises(ValueError, match='strictly fall'):
    solvers.levels_from_marginal(_vp_marginal, lambda t: t, [1.0, 0.5, 0.5, 0.1])
  with pytest.raises(ValueError, match='strictly fall'):
    solvers.levels_from_marginal(_vp_marginal, lambda t: t, np.linspace(1e-3, 1.0, 5))


# ---------------------------------------------------------------------------
# The Gaussian oracle.

MU = np.linspace(-0.5, 0.5, 6)
S = np.linspace(0.2, 0.8, 6)
NUM_SAMPLES = 4096  # Moments within 4 standard errors: the mean to 6% of the std, the variance to 9%.
BETA_MIN, BETA_MAX = 0.1, 20.0
SIGMA_MIN, SIGMA_MAX = 0.01, 50.0


def _vp_marginal(t):
  """VP SDE with beta(t) linear from BETA_MIN to BETA_MAX: alpha = exp(-t^2 (b1 - b0)/4 - t b0/2)."""
  log_alpha = -0.25 * t ** 2 * (BETA_MAX - BETA_MIN) - 0.5 * t * BETA_MIN
  xp = jnp if isinstance(t, jax.Array) else np
  return xp.exp(log_alpha), xp.sqrt(-xp.expm1(2.0 * log_alpha))


def _ve_marginal(t):
  xp = jnp if isinstance(t, jax.Array) else np
  return xp.ones_like(t), SIGMA_MIN * (SIGMA_MAX / SIGMA_MIN) ** t


def _oracle_eps(alpha, sigma, x):
  """E[z | x] for x = alpha x_0 + sigma z, x_0 ~ N(MU, S^2); alpha, sigma of shape (B,)."""
  alpha, sigma = alpha[:, None], sigma[:, None]
  return sigma * (x - alpha * MU) / (alpha ** 2 * S ** 2 + sigma ** 2)


def _exact_flow(x, alpha_from, sigma_from, alpha_to, sigma_to):
  """The probability-flow ODE's exact map of x between two noise levels."""
  return alpha_to * MU + _sd(alpha_to, sigma_to) * (x - alpha_from * MU) / _sd(alpha_from, sigma_from)


def _sd(alpha, sigma):
  """Std of x = alpha x_0 + sigma z per dimension."""
  return np.sqrt(alpha ** 2 * S ** 2 + sigma ** 2)


def _prior_samples(levels: solvers.NoiseLevels) -> np.ndarray:
  """Samples of the exact marginal at the first level (for VP N(0, 1) to within 4e-5)."""
  z = np.random.default_rng(0).normal(size=(NUM_SAMPLES, MU.shape[0]))
  return levels.alpha[0] * MU + _sd(levels.alpha[0], levels.sigma[0]) * z


def _solve(name, levels, eps_fn, x_T):
  x_0, _ = jax.jit(lambda x: solvers.solve(name, levels, eps_fn, x, NOISE_KEY))(jnp.asarray(x_T, jnp.float32))
  return np.asarray(x_0, np.float64)


class Run(NamedTuple):
  samples: np.ndarray
  exact: np.ndarray  # The exact answer for each sample's x_T.
  mean: np.ndarray  # The exact answers' law, per dimension.
  std: np.ndarray


def _discrete_run(name: str, num_steps: int) -> Run:
  """On the linear DDPM schedule's diffusers grid, whose last step jumps from the last timestep t to
  x_0 at first order: the data prediction E[x_0 | x_t]. So the exact answer is the ODE's x_t
  pushed through that posterior mean, of law N(MU, S^2 rho), rho = alpha^2 S^2 / (alpha^2 S^2 +
  sigma^2) at t: the law of diffusers' samplers, narrower than the data's.
  """
  schedule = diffusion.make_schedule(diffusion.linear_betas(T, 1e-4, 0.02))
  abar = jnp.asarray(schedule.alphas_cumprod)

  def eps_fn(x, t):
    a = abar[t.astype(jnp.int32)]  # Integer timesteps on the multistep grid.
    return _oracle_eps(jnp.sqrt(a), jnp.sqrt(1.0 - a), x)

  levels = solvers.levels_from_schedule(schedule, num_steps, grid=solvers.SOLVERS[name].grid)
  x_T = _prior_samples(levels)
  a, s = levels.alpha, levels.sigma
  x_last = _exact_flow(x_T, a[0], s[0], a[-2], s[-2])
  shrink = a[-2] * S ** 2 / _sd(a[-2], s[-2]) ** 2
  exact = MU + shrink * (x_last - a[-2] * MU)
  return Run(_solve(name, levels, eps_fn, x_T), exact, MU, S * np.sqrt(shrink * a[-2]))


def _assert_moments(run: Run):
  """Per dimension, the samples' mean and variance are the exact law's within 4 standard errors."""
  n = run.samples.shape[0]
  np.testing.assert_array_less(np.abs(run.samples.mean(0) - run.mean), 4 * run.std / np.sqrt(n))
  np.testing.assert_array_less(np.abs(run.samples.var(0) / run.std ** 2 - 1), 4 * np.sqrt(2.0 / n))


def _rms_error(run: Run) -> float:
  return float(np.sqrt(np.mean((run.samples - run.exact) ** 2)))


@pytest.mark.parametrize('name', ['dpm_solver_pp_2m', 'unipc'])
def test_discrete_oracle_moments(name):
  """On the DDPM grid; its end level moves with num_steps, so convergence is tested on a fixed one below."""
  run = _discrete_run(name, 20)
  _assert_moments(run)
  assert _rms_error(run) < 0.02


def _continuous_run(name: str, num_steps: int, kind: str = 'vp') -> Run:
  """From t = 1 down to t_end, evenly in log-SNR; the exact law at t_end is the data's to within
  sigma(t_end) ~ 1e-2."""
  if kind == 'vp':
    marginal, t_end = _vp_marginal, 1e-3
    model_time, time_of = lambda t: (T - 1) * t, lambda m: m / (T - 1)
  else:
    marginal, t_end = _ve_marginal, 1e-5
    model_time = lambda t: np.log(_ve_marginal(t)[1])
    time_of = lambda m: jnp.log(jnp.exp(m) / SIGMA_MIN) / np.log(SIGMA_MAX / SIGMA_MIN)
  times = solvers.log_snr_uniform_times(marginal, num_steps, 1.0, t_end)
  levels = solvers.levels_from_marginal(marginal, model_time, times)
  eps_fn = lambda x, m: _oracle_eps(*marginal(time_of(m)), x)
  x_T = _prior_samples(levels)
  a, s = levels.alpha, levels.sigma
  return Run(_solve(name, levels, eps_fn, x_T), _exact_flow(x_T, a[0], s[0], a[-1], s[-1]), a[-1] * MU,
             _sd(a[-1], s[-1]))


@pytest.mark.parametrize('kind', ['vp', 've'])
@pytest.mark.parametrize('name', ['dpm_solver_pp_2m', 'sde_dpm_solver_pp_2m', 'unipc'])
def test_continuous_oracle_moments(name, kind):
  """The SDE solver's samples are not the ODE's, only of its law; its first-order noise steps need
  more of them for that law (at 20 steps its variance is off by up to 8%)."""
  run = _continuous_run(name, 40 if solvers.SOLVERS[name].stochastic else 20, kind)
  _assert_moments(run)
  np.testing.assert_allclose(run.std, S, rtol=4e-3)  # t_end's law is the data's.


# Error at 20 steps / error at 40 steps is about 2 ** order: at least this much.
MIN_ERROR_RATIO = {'dpm_solver_pp_2m': 3.0, 'unipc': 3.0, 'heun': 3.0, 'euler': 1.8}
ODE_SOLVERS = [name for name, solver in solvers.SOLVERS.items() if not solver.stochastic]


@pytest.mark.parametrize('kind', ['vp', 've'])
@pytest.mark.parametrize('name', ODE_SOLVERS)
def test_continuous_oracle_converges_at_the_solvers_order(name, kind):
  errors = [_rms_error(_continuous_run(name, n, kind)) for n in (10, 20, 40)]
  assert errors[0] > errors[1] > MIN_ERROR_RATIO[name] * errors[2], errors


def test_log_snr_uniform_times():
  times = solvers.log_snr_uniform_times(_vp_marginal, 8, 1.0, 1e-3)
  assert times[0] == 1.0 and times[-1] == 1e-3 and np.all(np.diff(times) < 0)
  alpha, sigma = _vp_marginal(times)
  np.testing.assert_allclose(np.diff(np.log(alpha / sigma)), np.log(alpha / sigma)[[-1, 0]] @ [1, -1] / 8, rtol=1e-9)
