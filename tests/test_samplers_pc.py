"""Predictor-corrector samplers (ddpm_jax/samplers/pc.py) with exact scores of known data.

Data: 3 independent coordinates, two Gaussian N(mu, s^2) and one two-point mixture of -1 (30%)
and +1 (70%) with spread 0.05. The noised data stay in closed form at every t
(p_t(x) = p_0 scaled by mean_coeff and convolved with N(0, std^2)), so each sampler runs with the
exact score and its samples are checked against the law of x_eps: mean and variance of the
Gaussian coordinates, the fraction of the mixture's coordinate above 0, within 4 standard errors.
The processes: VP, sub-VP, VE and the ddpm chain of a cosine schedule (time in timesteps).
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_jax import diffusion
from ddpm_jax.processes.base import Process
from ddpm_jax.processes.ddpm import DDPM
from ddpm_jax.processes.subvpsde import SubVPSDE
from ddpm_jax.processes.vesde import VESDE
from ddpm_jax.processes.vpsde import VPSDE
from ddpm_jax.samplers import pc as pc_sampling

MU = np.array([0.5, -0.3])
S = 0.5
WEIGHTS, POINTS, SPREAD = np.array([0.3, 0.7]), np.array([-1.0, 1.0]), 0.05
NUM = 4000  # Samples.
STEPS = 500

SDES = {
    'vp': lambda: VPSDE(0.1, 20.0, STEPS),
    'subvp': lambda: SubVPSDE(0.1, 20.0, STEPS),
    've': lambda: VESDE(0.01, 50.0, STEPS),
    'cosine': lambda: DDPM(diffusion.make_schedule(diffusion.cosine_betas(STEPS))),
}


def oracle_score(process: Process):
  """The exact score of p_t for the data above."""
  mu, log_w, points = jnp.asarray(MU, jnp.float32), jnp.log(jnp.asarray(WEIGHTS)), jnp.asarray(POINTS)

  def score(x, t):
    m, std = process.marginal(t)
    m, std = m[:, None], std[:, None]
    gaussian = -(x[:, :2] - m * mu) / (m ** 2 * S ** 2 + std ** 2)
    var = m ** 2 * SPREAD ** 2 + std ** 2
    centred = x[:, 2:] - m * points  # (B, 2): against each point.
    responsibility = jax.nn.softmax(log_w - 0.5 * centred ** 2 / var, axis=-1)
    mixture = -jnp.sum(responsibility * centred, axis=-1, keepdims=True) / var
    return jnp.concatenate([gaussian, mixture], axis=1)

  return score


def check_samples(process: Process, x: np.ndarray, t_end: float) -> None:
  m, std = (float(v[0]) for v in process.marginal(jnp.array([t_end])))
  var = m ** 2 * S ** 2 + std ** 2
  z_mean = (x[:, :2].mean(0) - m * MU) / math.sqrt(var / NUM)
  z_var = (x[:, :2].var(0) - var) / (var * math.sqrt(2.0 / NUM))
  assert np.all(np.abs(z_mean) < 4) and np.all(np.abs(z_var) < 4), (z_mean, z_var)
  above = float(np.mean(x[:, 2] > 0))
  assert abs(above - WEIGHTS[1]) < 4 * math.sqrt(WEIGHTS[0] * WEIGHTS[1] / NUM), above
  # Each point's samples sit around mean_coeff * point.
  for point in POINTS:
    near = x[np.sign(x[:, 2]) == np.sign(point), 2]
    assert abs(near.mean() - m * point) < 0.02, (point, near.mean())


def _cases():
  """Every predictor x corrector on VP and VE; on sub-VP and a discrete (cosine) schedule's VP,
  every predictor alone and reverse diffusion with Langevin."""
  for name in SDES:
    for predictor in ('euler_maruyama', 'reverse_diffusion', 'ancestral'):
      for corrector in pc_sampling.CORRECTORS:
        if name in ('subvp', 'cosine') and (corrector == 'annealed_langevin' or (
            corrector == 'langevin' and predictor != 'reverse_diffusion')):
          continue
        if predictor == 'ancestral' and name == 'subvp':
          continue
        yield name, predictor, corrector


@pytest.mark.parametrize('name,predictor,corrector', list(_cases()))
def test_pc_sampler_draws_the_noised_data(name, predictor, corrector):
  process = SDES[name]()
  sample = jax.jit(functools.partial(pc_sampling.pc_sample, process, oracle_score(process), (NUM, 3),
                                     predictor=predictor, corrector=corrector, snr=0.1, n_steps_each=1))
  x, nfe = sample(jax.random.PRNGKey(0))
  check_samples(process, np.asarray(x), process.t_min)
  assert nfe == STEPS * (1 if corrector == 'none' else 2)


@pytest.mark.parametrize('name', ['vp', 've'])
@pytest.mark.parametrize('corrector', ['langevin', 'annealed_langevin'])
def test_corrector_keeps_the_marginal(name, corrector):
  """Langevin steps at a fixed t, from x far off, reach p_t: for N(m, V) the chain
  x + h score + sqrt(2 h) z is stationary at variance V / (1 - h / (2 V)), h / (2 V) = alpha snr^2
  (langevin: h = 2 alpha snr^2 |z|^2 / |score|^2 ~ 2 alpha snr^2 V; annealed: 2 alpha snr^2 std^2)."""
  process, snr = SDES[name](), 0.3
  t = jnp.full((NUM,), 0.4)
  score = oracle_score(process)
  m, std = (float(v[0]) for v in process.marginal(t[:1]))
  var = m ** 2 * S ** 2 + std ** 2
  alpha = float(process.langevin_alpha(t[:1], STEPS)[0])
  if name == 've':
    assert alpha == 1.0
  else:
    assert alpha == pytest.approx(1.0 - float(process.discrete_betas(process.step_index(t[:1], STEPS), STEPS)[0]))
  ratio = alpha * snr ** 2 * (1.0 if corrector == 'langevin' else std ** 2 / var)

  @jax.jit
  def run(key):
    def body(j, x):
      noise = jax.random.normal(jax.random.fold_in(key, j), x.shape)
      return pc_sampling.corrector_step(process, score, x, t, noise, corrector, snr, STEPS)[0]
    return jax.lax.fori_loop(0, 400, body, jnp.full((NUM, 3), 3.0))

  x = np.asarray(run(jax.random.PRNGKey(0)))
  target = var / (1.0 - ratio)
  z_mean = (x[:, :2].mean(0) - m * MU) / math.sqrt(target / NUM)
  z_var = (x[:, :2].var(0) - target) / (target * math.sqrt(2.0 / NUM))
  assert np.all(np.abs(z_mean) < 4) and np.all(np.abs(z_var) < 4), (z_mean, z_var)


def test_corrector_only_and_key_handling():
  """Annealed Langevin alone (NCSN's sampler, predictor none) at several steps per level; the
  sample depends on (x_T, key) only; x_T drawn from fold_in(key, num_steps) when a shape is given."""
  process = VESDE(0.01, 50.0, 200)
  score = oracle_score(process)
  run = functools.partial(pc_sampling.pc_sample, process, score, predictor='none', corrector='langevin',
                          snr=0.2, n_steps_each=5, denoise=False)
  key = jax.random.PRNGKey(5)
  x, nfe = run((NUM, 3), key)
  assert nfe == 1000
  check_samples(process, np.asarray(x), 1e-5)
  x_T = process.prior_sample(jax.random.fold_in(key, 200), (NUM, 3))
  np.testing.assert_array_equal(run(x_T, key)[0], x)
  assert not np.allclose(run(x_T, jax.random.PRNGKey(6))[0], x)


def test_denoise_returns_the_last_mean():
  process = VPSDE(0.1, 20.0, 50)
  score = oracle_score(process)
  x_T = process.prior_sample(jax.random.PRNGKey(0), (8, 3))
  noisy, _ = pc_sampling.pc_sample(process, score, x_T, jax.random.PRNGKey(1), 'ancestral', 'none', denoise=False)
  clean, _ = pc_sampling.pc_sample(process, score, x_T, jax.random.PRNGKey(1), 'ancestral', 'none', denoise=True)
  # The last ancestral step at t = t_min (step 0) adds sqrt(beta_0) noise: the two differ by exactly that.
  last_noise = jax.random.normal(jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(1), 49), 0), x_T.shape)
  beta_0 = float(process.discrete_betas(jnp.zeros((1,), jnp.int32), 50)[0])
  np.testing.assert_allclose(noisy - clean, math.sqrt(beta_0) * last_noise, rtol=1e-4, atol=1e-6)


def test_probability_flow_predictor_is_deterministic():
  process = VPSDE(0.1, 20.0, 200)
  score = oracle_score(process)
  x_T = process.prior_sample(jax.random.PRNGKey(0), (NUM, 3))
  for predictor in ('euler_maruyama', 'reverse_diffusion'):
    a, _ = pc_sampling.pc_sample(process, score, x_T, jax.random.PRNGKey(1), predictor, 'none', probability_flow=True)
    b, _ = pc_sampling.pc_sample(process, score, x_T, jax.random.PRNGKey(2), predictor, 'none', probability_flow=True)
    np.testing.assert_array_equal(a, b)  # No noise: the key does not matter.
    if predictor == 'euler_maruyama':
      # (score_sde's reverse-diffusion flow, x - f + G^2 score / 2 with the chain's exact f, grows
      # the spread by ~sum beta_i^2 / 8 of the steps: +20% variance in 200 steps, so not checked.)
      check_samples(process, np.asarray(a), 1e-3)


def test_refuses_unsupported_combinations():
  score = oracle_score(VPSDE())
  with pytest.raises(ValueError, match='ancestral predictor exists for the VP and VE processes only; for subvpsde'):
    pc_sampling.pc_sample(SubVPSDE(), score, (2, 3), jax.random.PRNGKey(0), 'ancestral', 'none')
  with pytest.raises(ValueError, match='Unknown predictor'):
    pc_sampling.pc_sample(VPSDE(), score, (2, 3), jax.random.PRNGKey(0), 'heun', 'none')
  with pytest.raises(ValueError, match='Unknown corrector'):
    pc_sampling.pc_sample(VPSDE(), score, (2, 3), jax.random.PRNGKey(0), 'ancestral', 'mala')
  with pytest.raises(ValueError, match='both none'):
    pc_sampling.pc_sample(VPSDE(), score, (2, 3), jax.random.PRNGKey(0), 'none', 'none')
  with pytest.raises(ValueError, match='no probability-flow form'):
    pc_sampling.pc_sample(VPSDE(), score, (2, 3), jax.random.PRNGKey(0), 'ancestral', 'none',
                          probability_flow=True)
  # The processes with an ancestral chain: VP (and the ddpm chain, a VP) and VE.
  assert [name for name, make in SDES.items() if make().has_ancestral_step()] == ['vp', 've', 'cosine']


@pytest.mark.parametrize('process,predictor,corrector,n_steps_each,num_classes,calls_per_step', [
    (VPSDE, 'reverse_diffusion', 'langevin', 1, 0, 2),
    (VESDE, 'reverse_diffusion', 'none', 1, 0, 1),
    (DDPM, 'ancestral', 'annealed_langevin', 3, 10, 8),  # Guided: twice the calls (4 per step).
])
def test_the_steps_fit_the_int32_counts_of_the_loop_and_of_its_network_calls(process, predictor, corrector,
                                                                              n_steps_each, num_classes, calls_per_step):
  """Predictor-corrector's steps (num_scales, the chain's num_timesteps) are refused exactly where the
  network calls per image it reports leave int32, which jax refuses to hold (OverflowError)."""
  from configs import default  # pylint: disable=g-import-not-at-top
  from ddpm_jax.errors import ConfigError  # pylint: disable=g-import-not-at-top
  config = default.get_config()
  s = config.sampling
  s.predictor, s.corrector, s.n_steps_each = predictor, corrector, n_steps_each
  config.model.num_classes = num_classes
  section, field = process.pc_steps_field.split('.')
  most = pc_sampling.INT32_MAX // calls_per_step
  config[section][field] = most
  pc_sampling.PredictorCorrector.check(config, process)
  calls = pc_sampling.function_evaluations(predictor, corrector, n_steps_each, most) * (2 if num_classes else 1)
  assert calls == most * calls_per_step and int(jnp.asarray(calls, jnp.int32)) == calls
  with pytest.raises(OverflowError):
    jnp.asarray(calls + calls_per_step, jnp.int32)
  config[section][field] = most + 1
  with pytest.raises(ConfigError, match=rf'^config\.{section}\.{field}={most + 1} is out of range: it must be in '
                                        rf'\[2, {most}\] for the pc sampler: .* in int32, at most 2147483647; lower it\.$'):
    pc_sampling.PredictorCorrector.check(config, process)
  if corrector != 'none':  # Iterations so many that even the fewest steps, 2, would overflow.
    config[section][field] = 100
    s.n_steps_each = pc_sampling.INT32_MAX
    with pytest.raises(ConfigError, match=r'^config\.sampling\.n_steps_each=2147483647 is out of range: it must be in \[1, '):
      pc_sampling.PredictorCorrector.check(config, process)


# ---------------------------------------------------------------------------
# Parity with diffusers' ScoreSdeVeScheduler (PyTorch).

def test_ve_steps_match_diffusers_score_sde_ve_scheduler():
  """Our VE reverse-diffusion predictor and Langevin corrector against step_pred and step_correct,
  step by step along the scheduler's own times, with the same score and the same noise."""
  diffusers = pytest.importorskip('diffusers')
  torch = pytest.importorskip('torch')
  num_steps, snr, sigma_min, sigma_max, eps = 20, 0.15, 0.01, 348.0, 1e-5
  scheduler = diffusers.ScoreSdeVeScheduler(num_train_timesteps=2000, snr=snr, sigma_min=sigma_min,
                                            sigma_max=sigma_max, sampling_eps=eps, correct_steps=1)
  scheduler.set_timesteps(num_steps)
  scheduler.set_sigmas(num_steps)
  process = VESDE(sigma_min, sigma_max, num_steps)
  shape = (2, 3, 4, 4)
  rng = np.random.default_rng(0)
  theirs = torch.from_numpy((rng.normal(size=shape) * sigma_max).astype(np.float32))
  ours = jnp.asarray(theirs.numpy())
  for i, time in enumerate(scheduler.timesteps):
    t = jnp.full((shape[0],), float(time), jnp.float32)
    for stage in ('correct', 'predict'):
      # A score that depends on x and on sigma(t), computed once and given to both.
      score = torch.from_numpy(np.array(-ours / (1.0 + process.sigma(t)[:, None, None, None] ** 2)))
      seed = 2 * i + (stage == 'predict')
      noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed))  # diffusers' own draw, replayed.
      if stage == 'correct':
        theirs = scheduler.step_correct(score, theirs, generator=torch.Generator().manual_seed(seed)).prev_sample
        ours, _ = pc_sampling.corrector_step(process, lambda x, tt, s=score: jnp.asarray(s.numpy()), ours, t,
                                             jnp.asarray(noise.numpy()), 'langevin', snr, num_steps)
      else:
        out = scheduler.step_pred(score, time, theirs, generator=torch.Generator().manual_seed(seed))
        ours, ours_mean = pc_sampling.predictor_step(process, lambda x, tt, s=score: jnp.asarray(s.numpy()), ours, t,
                                                     jnp.asarray(noise.numpy()), 'reverse_diffusion', num_steps)
        theirs = out.prev_sample
        scale = float(np.abs(out.prev_sample_mean.numpy()).max())
        np.testing.assert_allclose(ours_mean, out.prev_sample_mean.numpy(), rtol=1e-5, atol=1e-5 * scale)
      scale = float(np.abs(theirs.numpy()).max())
      np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-5, atol=1e-5 * scale, err_msg=f'{stage} {i}')
      ours = jnp.asarray(theirs.numpy())  # Each step from the same input: no drift of rounding.
