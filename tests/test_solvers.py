"""The fast solvers over noise levels (ddpm_jax/samplers/levels.py and the level solvers registered in
ddpm_jax/samplers/): step-by-step parity with diffusers' schedulers, and a Gaussian-data oracle.

For data x_0 ~ N(mu, s^2) (per dimension) and x = alpha x_0 + sigma z, the exact eps prediction is
E[z | x] = sigma (x - alpha mu) / (alpha^2 s^2 + sigma^2), and the probability-flow ODE is affine:
x moves along alpha mu + sd (x - alpha' mu) / sd', sd = sqrt(alpha^2 s^2 + sigma^2). So the exact
answer of every sampler run is known sample by sample.

Each case compiles its solver once (a compile is most of a case's time), so the parity cases are one
per solver, spread over both schedules and both step counts, not their product: the loop's code path
does not depend on them.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from ddpm_jax import diffusion, samplers
from ddpm_jax.errors import ConfigError
from ddpm_jax.processes import ddpm as ddpm_lib
from ddpm_jax.processes.vesde import VESDE
from ddpm_jax.processes.vpsde import VPSDE
from ddpm_jax.samplers import dpm_solver, euler_heun
from ddpm_jax.samplers import levels as levels_lib

T = 1000
SHAPE = (2, 3, 4, 4)
# The fake network of the parity tests: eps = tanh(A x + B t + C), elementwise (layout-free).
A, B, C = 0.8, 1.5e-3, -0.4
# The noise of the stochastic solvers. rbg, not the default threefry: a loop that draws noise compiles
# in a third of the time on CPU (seconds per case); which generator draws it is not what is tested here.
NOISE_KEY = jax.random.key(7, impl='rbg')
# Every registered solver over noise levels, in registry order.
LEVEL_SOLVERS = [name for name, cls in samplers.SAMPLERS.items() if issubclass(cls, levels_lib.LevelSolver)]


@pytest.fixture(scope='module')
def chains():
  """{'linear', 'cosine'}: the ddpm process of that T = 1000 schedule (DDPM's betas 1e-4 to 0.02)."""
  return {name: ddpm_lib.DDPM(diffusion.make_schedule(diffusion.BETA_SCHEDULES[name](T, 1e-4, 0.02)))
          for name in ('linear', 'cosine')}


def _chain_levels(process: ddpm_lib.DDPM, num_steps: int, grid: str, spacing: str = 'linspace',
                  steps_offset: int = 0) -> levels_lib.NoiseLevels:
  return levels_lib.checked(levels_lib.NoiseLevels(*process.solver_levels(num_steps, spacing, grid, steps_offset)))


def _solve(name: str, levels: levels_lib.NoiseLevels, eps_fn, x_T, clip_denoised: bool = False):
  """(x_0, nfe) of the registered solver `name`, compiled once; its callbacks have all run."""
  nfe = []

  def run(x):
    x_0, n = samplers.sampler_class(name).solve(levels, eps_fn, x, NOISE_KEY, clip_denoised)
    nfe.append(n)
    return x_0

  x_0 = jax.block_until_ready(jax.jit(run)(jnp.asarray(x_T, jnp.float32)))
  jax.effects_barrier()
  return np.asarray(x_0, np.float64), nfe[0]


def _traced_nfe(solve, levels, eps_fn) -> int:
  """The network calls a solver reports, from tracing it alone (no compile)."""
  nfe = []
  jax.jit(lambda x: nfe.append(solve(levels, eps_fn, x)[1]) or x).trace(jnp.zeros((1, 2)))
  return nfe[0]


def _recording_eps_fn(calls: list):
  """eps_fn that appends every (x, t) the compiled loop gives it to `calls`, in order."""

  def record(x, t):
    calls.append((np.asarray(x), np.asarray(t)))

  def eps_fn(x, t):
    jax.debug.callback(record, x, t, ordered=True)
    return jnp.tanh(A * x + B * t.reshape((-1,) + (1,) * (x.ndim - 1)) + C)

  return eps_fn


# ---------------------------------------------------------------------------
# Parity with diffusers' schedulers (PyTorch).

# Each solver's scheduler with the config it is compared under: diffusers 0.42.1's defaults
# (timestep_spacing 'linspace', final_sigmas_type 'zero', lower_order_final, no thresholding, no
# Karras sigmas), prediction_type 'epsilon', and for the multistep ones the algorithm it implements.
DIFFUSERS = {
    'dpm_solver_pp_2m': ('DPMSolverMultistepScheduler',
                         dict(algorithm_type='dpmsolver++', solver_order=2, solver_type='midpoint')),
    'sde_dpm_solver_pp_2m': ('DPMSolverMultistepScheduler',
                             dict(algorithm_type='sde-dpmsolver++', solver_order=2, solver_type='midpoint')),
    'unipc': ('UniPCMultistepScheduler', dict(solver_order=2, solver_type='bh2', predict_x0=True)),
    'euler': ('EulerDiscreteScheduler', {}),
    'heun': ('HeunDiscreteScheduler', {}),
}
# The (schedule, steps) of each solver's whole-run parity case: both schedules and both step counts
# occur in each grid family (multistep, euler).
PARITY_RUNS = {'dpm_solver_pp_2m': ('linear', 20), 'sde_dpm_solver_pp_2m': ('cosine', 10),
               'unipc': ('cosine', 20), 'euler': ('cosine', 10), 'heun': ('linear', 20)}


def test_every_level_solver_has_a_diffusers_reference():
  assert sorted(DIFFUSERS) == sorted(PARITY_RUNS) == sorted(LEVEL_SOLVERS)


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

  step_noises[i]: the variance_noise of step i (stochastic schedulers)."""
  import torch  # pylint: disable=import-outside-toplevel
  scheduler.set_timesteps(num_steps)
  sample = torch.from_numpy(noise) * scheduler.init_noise_sigma
  calls = []
  for i, t in enumerate(scheduler.timesteps):
    model_input = scheduler.scale_model_input(sample, t)
    calls.append((model_input.numpy().copy(), float(t)))
    eps = torch.tanh(A * model_input + B * t.float() + C)
    noise_kwargs = {} if step_noises is None else {'variance_noise': torch.from_numpy(step_noises[i].copy())}
    sample = scheduler.step(eps, t, sample, **noise_kwargs).prev_sample
  return calls, sample.numpy()


@functools.cache
def _all_step_noises(num_calls: int) -> np.ndarray:
  """levels.step_noise(NOISE_KEY, i, .) for i < num_calls, of SHAPE: one compile for all steps."""
  draw = jax.jit(lambda i: levels_lib.step_noise(NOISE_KEY, i, jnp.zeros(SHAPE, jnp.float32)))
  return np.stack([np.asarray(draw(i)) for i in range(num_calls)])


def _step_noises(name: str, num_steps: int):
  """For a stochastic solver: the noise of each step as its loop draws it (None for the others)."""
  return _all_step_noises(20)[:num_steps] if samplers.sampler_class(name).stochastic else None


def _assert_close(ours, theirs, rtol=1e-5):
  """max |ours - theirs| <= rtol * max |theirs|."""
  ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
  assert ours.shape == theirs.shape
  error = np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs))
  assert error <= rtol, f'relative error {error:.2e} > {rtol:.0e}'


@pytest.mark.parametrize('name', LEVEL_SOLVERS)
def test_every_step_matches_diffusers(chains, name):
  schedule_name, num_steps = PARITY_RUNS[name]
  process = chains[schedule_name]
  scheduler = _diffusers_scheduler(name, process.schedule)
  noise = np.random.default_rng(num_steps).normal(size=SHAPE)
  their_calls, their_sample = _diffusers_run(scheduler, num_steps, noise, _step_noises(name, num_steps))

  calls = []
  x_T = their_calls[0][0]  # diffusers' first network input is x_T in the model's space.
  levels = _chain_levels(process, num_steps, samplers.sampler_class(name).grid)
  sample, nfe = _solve(name, levels, _recording_eps_fn(calls), x_T)

  assert nfe == len(calls) == len(their_calls) == (2 * num_steps - 1 if name == 'heun' else num_steps)
  for (x, t), (their_x, their_t) in zip(calls, their_calls):
    np.testing.assert_array_equal(t, np.full(SHAPE[0], their_t, np.float32))
    _assert_close(x, their_x)
  _assert_close(sample, their_sample)


@pytest.mark.parametrize('name,num_steps', [('dpm_solver_pp_2m', 10), ('dpm_solver_pp_2m', 20),
                                            ('sde_dpm_solver_pp_2m', 20), ('unipc', 10)])
def test_final_level_above_zero_matches_diffusers(chains, name, num_steps):
  """final_sigmas_type='sigma_min' ends at timestep 0's noise level, not at clean data: there
  lower_order_final decides the last step's order (DPM-Solver++, ODE and SDE alike: first order
  only below 15 steps; UniPC: always)."""
  process = chains['linear']
  scheduler = _diffusers_scheduler(name, process.schedule, final_sigmas_type='sigma_min')
  their_calls, their_sample = _diffusers_run(scheduler, num_steps, np.random.default_rng(1).normal(size=SHAPE),
                                             _step_noises(name, num_steps))
  levels = _chain_levels(process, num_steps, 'multistep')
  abar_0 = float(process.schedule.alphas_cumprod[0])
  levels = levels._replace(alpha=np.append(levels.alpha[:-1], np.sqrt(abar_0)),
                           sigma=np.append(levels.sigma[:-1], np.sqrt(1.0 - abar_0)))
  sample, _ = _solve(name, levels, _recording_eps_fn([]), their_calls[0][0])
  _assert_close(sample, their_sample)


# diffusers' options equal to clip_denoised=True: dynamic thresholding whose threshold is clamped to
# [1, sample_max_value] = [1, 1] clips to [-1, 1]; Heun's clip_sample (Euler has none). The two
# DPM-Solver++ share the multistep loop's clipped data prediction: the ODE one stands for both.
CLIP_OPTIONS = {'dpm_solver_pp_2m': dict(thresholding=True, sample_max_value=1.0),
                'unipc': dict(thresholding=True, sample_max_value=1.0), 'heun': dict(clip_sample=True)}


@pytest.mark.parametrize('name', list(CLIP_OPTIONS))
def test_clipped_steps_match_diffusers(chains, name):
  process = chains['linear']
  scheduler = _diffusers_scheduler(name, process.schedule, **CLIP_OPTIONS[name])
  their_calls, their_sample = _diffusers_run(scheduler, 10, np.random.default_rng(0).normal(size=SHAPE))
  calls = []
  levels = _chain_levels(process, 10, samplers.sampler_class(name).grid)
  sample, _ = _solve(name, levels, _recording_eps_fn(calls), their_calls[0][0], clip_denoised=True)
  for (x, _), (their_x, _) in zip(calls, their_calls, strict=True):
    _assert_close(x, their_x)
  _assert_close(sample, their_sample)
  assert np.max(np.abs(sample)) <= 1.0 + 1e-6  # The last step lands on the clipped x_0 prediction.


# One solver per diffusers scheduler class (the two DPM-Solver++ share DPMSolverMultistepScheduler's timesteps).
TIMESTEP_SCHEDULERS = list({DIFFUSERS[name][0]: name for name in reversed(LEVEL_SOLVERS)}.values())


@pytest.mark.parametrize('spacing', ddpm_lib.TIMESTEP_SPACINGS)
@pytest.mark.parametrize('name', TIMESTEP_SCHEDULERS)
def test_timesteps_and_levels_match_diffusers(chains, name, spacing):
  process = chains['linear']
  grid = samplers.sampler_class(name).grid
  for num_steps in (7, 10, 20, 50):
    scheduler = _diffusers_scheduler(name, process.schedule, timestep_spacing=spacing, steps_offset=1)
    scheduler.set_timesteps(num_steps)
    timesteps, sigmas = scheduler.timesteps.double().numpy(), scheduler.sigmas.double().numpy()
    if name == 'heun':  # Heun repeats each timestep but the first, and each sigma but the ends.
      timesteps, sigmas = np.append(timesteps[:1], timesteps[1::2]), np.append(sigmas[0::2], sigmas[-1])
    np.testing.assert_array_equal(ddpm_lib.discrete_timesteps(T, num_steps, spacing, grid, 1), timesteps)
    levels = _chain_levels(process, num_steps, grid, spacing, steps_offset=1)
    np.testing.assert_allclose(levels.sigma / levels.alpha, sigmas, rtol=1e-6)
    np.testing.assert_array_equal(levels.model_time[:-1], timesteps)  # ddpm's process time is the timestep.
    if spacing == 'linspace':  # The sampler's default spacing on the chain is diffusers' default.
      for ours, auto in zip(_chain_levels(process, num_steps, grid), process.solver_levels(num_steps, 'auto', grid)):
        np.testing.assert_array_equal(ours, auto)


# ---------------------------------------------------------------------------
# Structure: one compiled loop, the number of network calls.


def _levels_vp(num_steps: int) -> levels_lib.NoiseLevels:
  """VP's levels evenly spaced in t from 1 down to its t_min, 1e-3."""
  return levels_lib.checked(levels_lib.NoiseLevels(*VPSDE(BETA_MIN, BETA_MAX).solver_levels(num_steps, 'uniform',
                                                                                           'multistep')))


@pytest.mark.parametrize('name', LEVEL_SOLVERS)
def test_network_appears_in_the_loop_body_only(name):
  traces = []

  def eps_fn(x, t):
    traces.append(t.shape)
    return x * 0.5

  levels = _levels_vp(12)
  jax.jit(lambda x: samplers.sampler_class(name).solve(levels, eps_fn, x, NOISE_KEY, False)[0]).trace(jnp.zeros((3, 2)))
  assert traces == [(3,)] * (2 if name == 'heun' else 1)  # Heun's correction is a second call site.


def test_heun_corrects_every_step_that_does_not_end_on_clean_data(chains):
  eps_fn = lambda x, t: 0.1 * x
  assert _traced_nfe(euler_heun.heun, _chain_levels(chains['linear'], 8, 'euler'), eps_fn) == 15
  assert _traced_nfe(euler_heun.heun, _levels_vp(8), eps_fn) == 16


def test_first_sde_step_is_the_ddpm_posterior(chains):
  """One first-order SDE-DPM-Solver++ step from timestep t to t - 1 draws from DDPM's posterior
  q(x_{t-1} | x_t, x_0) at the data prediction x_0: the ancestral step with variance beta~_t."""
  schedule = chains['linear'].schedule
  abar = np.asarray(schedule.alphas_cumprod, np.float64)
  x_t = jnp.asarray(np.random.default_rng(3).normal(size=SHAPE), jnp.float32)
  eps_fn = lambda x, t: jnp.tanh(A * x + C)

  @jax.jit
  def posterior_sample(t):
    t_batch = jnp.full((SHAPE[0],), t)
    x0 = diffusion.predict_x0_from_eps(schedule, x_t, t_batch, eps_fn(x_t, None))
    mean, variance, _ = diffusion.q_posterior_mean_variance(schedule, x0, x_t, t_batch)
    return mean + jnp.sqrt(variance) * levels_lib.step_noise(NOISE_KEY, 0, x_t)

  for t in (1, 10, 500, 999):
    a = np.sqrt(abar[[t, t - 1]])
    levels = levels_lib.NoiseLevels(a, np.sqrt(1.0 - a ** 2), np.array([t, t - 1], np.float64))
    ours, nfe = dpm_solver.sde_dpm_solver_pp_2m(levels, eps_fn, x_t, NOISE_KEY)
    assert nfe == 1
    np.testing.assert_allclose(ours, posterior_sample(t), rtol=2e-5, atol=2e-5)


def test_bad_levels_grids_and_spacings_are_refused(chains):
  process = chains['linear']
  with pytest.raises(ValueError, match='spacing'):
    process.solver_levels(10, 'quad', 'multistep')
  with pytest.raises(ValueError, match='grid'):
    process.solver_levels(10, 'linspace', 'karras')
  with pytest.raises(ValueError, match='num_steps'):
    process.solver_levels(T + 1, 'linspace', 'multistep')
  vp = VPSDE(BETA_MIN, BETA_MAX)
  for times in ([1.0, 0.5, 0.5, 0.1], np.linspace(1e-3, 1.0, 5)):  # A repeated level; rising levels.
    alpha, sigma = (np.asarray(a, np.float64) for a in vp.marginal(jnp.asarray(times, jnp.float32)))
    with pytest.raises(ValueError, match='strictly fall'):
      levels_lib.checked(levels_lib.NoiseLevels(alpha, sigma, np.asarray(times)))
  # The config's spacing and steps, checked by the sampler before anything runs.
  config = default.get_config()
  config.diffusion.num_timesteps = 20
  config.sampling.sampler, config.sampling.spacing = 'unipc', 'logsnr'
  with pytest.raises(ConfigError, match='valid: auto, linspace, leading, trailing'):
    samplers.sampler_class('unipc').check(config, process)
  config.sampling.spacing, config.sampling.num_steps = 'auto', 21
  with pytest.raises(ConfigError, match='num_steps=21 must be between 1 and config.diffusion.num_timesteps=20'):
    samplers.sampler_class('unipc').check(config, process)
  samplers.sampler_class('unipc').check(config, VPSDE(BETA_MIN, BETA_MAX))  # Unbounded off the chain.


# ---------------------------------------------------------------------------
# The Gaussian oracle.

MU = np.linspace(-0.5, 0.5, 6)
S = np.linspace(0.2, 0.8, 6)
NUM_SAMPLES = 4096  # Moments within 4 standard errors: the mean to 6% of the std, the variance to 9%.
BETA_MIN, BETA_MAX = 0.1, 20.0
SIGMA_MIN, SIGMA_MAX = 0.01, 50.0


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


def _prior_samples(levels: levels_lib.NoiseLevels) -> np.ndarray:
  """Samples of the exact marginal at the first level (for VP N(0, 1) to within 4e-5)."""
  z = np.random.default_rng(0).normal(size=(NUM_SAMPLES, MU.shape[0]))
  return levels.alpha[0] * MU + _sd(levels.alpha[0], levels.sigma[0]) * z


class Run(NamedTuple):
  samples: np.ndarray
  exact: np.ndarray  # The exact answer for each sample's x_T.
  mean: np.ndarray  # The exact answers' law, per dimension.
  std: np.ndarray


def _discrete_run(chain: ddpm_lib.DDPM, name: str, num_steps: int) -> Run:
  """On the linear DDPM schedule's diffusers grid, whose last step jumps from the last timestep t to
  x_0 at first order: the data prediction E[x_0 | x_t]. So the exact answer is the ODE's x_t
  pushed through that posterior mean, of law N(MU, S^2 rho), rho = alpha^2 S^2 / (alpha^2 S^2 +
  sigma^2) at t: the law of diffusers' samplers, narrower than the data's.
  """
  abar = jnp.asarray(chain.schedule.alphas_cumprod)

  def eps_fn(x, t):
    a = abar[t.astype(jnp.int32)]  # Integer timesteps on the multistep grid.
    return _oracle_eps(jnp.sqrt(a), jnp.sqrt(1.0 - a), x)

  levels = _chain_levels(chain, num_steps, samplers.sampler_class(name).grid)
  x_T = _prior_samples(levels)
  a, s = levels.alpha, levels.sigma
  x_last = _exact_flow(x_T, a[0], s[0], a[-2], s[-2])
  shrink = a[-2] * S ** 2 / _sd(a[-2], s[-2]) ** 2
  exact = MU + shrink * (x_last - a[-2] * MU)
  return Run(_solve(name, levels, eps_fn, x_T)[0], exact, MU, S * np.sqrt(shrink * a[-2]))


def _assert_moments(run: Run):
  """Per dimension, the samples' mean and variance are the exact law's within 4 standard errors."""
  n = run.samples.shape[0]
  np.testing.assert_array_less(np.abs(run.samples.mean(0) - run.mean), 4 * run.std / np.sqrt(n))
  np.testing.assert_array_less(np.abs(run.samples.var(0) / run.std ** 2 - 1), 4 * np.sqrt(2.0 / n))


def _rms_error(run: Run) -> float:
  return float(np.sqrt(np.mean((run.samples - run.exact) ** 2)))


@pytest.mark.parametrize('name', ['dpm_solver_pp_2m', 'unipc'])
def test_discrete_oracle_moments(chains, name):
  """On the DDPM grid; its end level moves with num_steps, so convergence is tested on a fixed one below."""
  run = _discrete_run(chains['linear'], name, 20)
  _assert_moments(run)
  assert _rms_error(run) < 0.02


def _process(kind: str):
  return VPSDE(BETA_MIN, BETA_MAX) if kind == 'vp' else VESDE(SIGMA_MIN, SIGMA_MAX)


@functools.cache
def _continuous_run(name: str, num_steps: int, kind: str = 'vp') -> Run:
  """From t = 1 down to the process's t_min (VP 1e-3, VE 1e-5), evenly in log-SNR; the exact law
  there is the data's to within sigma(t_min) ~ 1e-2. The network gets the process's time. Cached:
  the moment and the convergence tests share their runs (read-only arrays)."""
  process = _process(kind)
  levels = levels_lib.checked(levels_lib.NoiseLevels(*process.solver_levels(num_steps, 'logsnr', 'multistep')))
  assert levels.model_time[0] == 1.0 and levels.model_time[-1] == process.t_min
  eps_fn = lambda x, t: _oracle_eps(*process.marginal(t), x)
  x_T = _prior_samples(levels)
  a, s = levels.alpha, levels.sigma
  run = Run(_solve(name, levels, eps_fn, x_T)[0], _exact_flow(x_T, a[0], s[0], a[-1], s[-1]), a[-1] * MU,
            _sd(a[-1], s[-1]))
  for array in run:
    array.flags.writeable = False
  return run


@pytest.mark.parametrize('kind', ['vp', 've'])
@pytest.mark.parametrize('name', ['dpm_solver_pp_2m', 'sde_dpm_solver_pp_2m', 'unipc'])
def test_continuous_oracle_moments(name, kind):
  """The SDE solver's samples are not the ODE's, only of its law; its first-order noise steps need
  more of them for that law (at 20 steps its variance is off by up to 8%)."""
  run = _continuous_run(name, 40 if samplers.sampler_class(name).stochastic else 20, kind)
  _assert_moments(run)
  np.testing.assert_allclose(run.std, S, rtol=4e-3)  # t_min's law is the data's.


# Error at 20 steps / error at 40 steps is about 2 ** order: at least this much.
MIN_ERROR_RATIO = {'dpm_solver_pp_2m': 3.0, 'unipc': 3.0, 'heun': 3.0, 'euler': 1.8}
ODE_SOLVERS = [name for name in LEVEL_SOLVERS if not samplers.sampler_class(name).stochastic]


def test_every_deterministic_level_solver_has_an_order():
  assert sorted(MIN_ERROR_RATIO) == sorted(ODE_SOLVERS)


@pytest.mark.parametrize('kind', ['vp', 've'])
@pytest.mark.parametrize('name', ODE_SOLVERS)
def test_continuous_oracle_converges_at_the_solvers_order(name, kind):
  errors = [_rms_error(_continuous_run(name, n, kind)) for n in (10, 20, 40)]
  assert errors[0] > errors[1] > MIN_ERROR_RATIO[name] * errors[2], errors


def _vp_log_snr(t):
  """VP's log-SNR in float64: log(alpha / sigma), log alpha^2 = -t^2 (b1 - b0) / 2 - t b0."""
  log_abar = -0.5 * t ** 2 * (BETA_MAX - BETA_MIN) - t * BETA_MIN
  return 0.5 * log_abar - 0.5 * np.log(-np.expm1(log_abar))


def test_solver_times_are_evenly_spaced_in_log_snr_or_in_t():
  vp = VPSDE(BETA_MIN, BETA_MAX)
  times = vp.solver_times(8, 'logsnr')
  assert times[0] == 1.0 and times[-1] == 1e-3 and np.all(np.diff(times) < 0)
  lam = _vp_log_snr(times)
  np.testing.assert_allclose(np.diff(lam), (lam[-1] - lam[0]) / 8, rtol=1e-5)
  np.testing.assert_array_equal(vp.solver_times(8, 'auto'), times)  # auto is logsnr off the chain.
  np.testing.assert_allclose(vp.solver_times(8, 'uniform'), np.linspace(1.0, 1e-3, 9), rtol=1e-15)
  # VE's log-SNR, -log sigma(t), is linear in t: its log-SNR grid is the uniform one.
  ve = VESDE(SIGMA_MIN, SIGMA_MAX)
  np.testing.assert_allclose(ve.solver_times(8, 'logsnr'), ve.solver_times(8, 'uniform'), rtol=1e-5)
