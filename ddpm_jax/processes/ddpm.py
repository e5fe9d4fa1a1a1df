"""DDPM's discrete chain (Ho et al., 2020) as a process: the VP SDE tabulated on its timesteps.

As in score_sde, the chain of T steps is the VP SDE whose log alpha_bar is the chain's at the
timesteps, interpolated between them by a monotone C^1 cubic (`monotone_slopes`), so beta(t) is
continuous: a piecewise-constant beta (linear interpolation) makes the probability-flow ODE's drift
jump at every timestep, and an adaptive solver then misses its tolerance by orders of magnitude.
Time is the timestep itself, t in [0, T - 1], so the network's time input is t (an integer in
training and in the chain's own samplers, fractional in the solvers). The score, the drift and the
denoiser all use that one marginal, at integer and fractional times alike.
Training is the chain's: integer t, uniform or importance-sampled from the loss history (Improved
DDPM), with the losses of diffusion.py (simple, kl, hybrid, mmd) on any parameterisation.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ddpm_jax import diffusion
from ddpm_jax.processes.base import LossTerms, NetworkFn
from ddpm_jax.processes.registry import register
from ddpm_jax.processes.vpsde import VPSDE

# diffusion.BETA_SCHEDULES that ignore beta_start and beta_end.
SCHEDULES_WITHOUT_BETAS = ('cosine', 'jsd')
# The end of the fast solvers, the ODE and predictor-corrector sampling as a fraction of T - 1
# (score_sde's sampling eps of the VP SDE).
SAMPLING_EPS_FRACTION = 1e-3

# diffusers' timestep_spacing (Table 2 of Lin et al., 2023, "Common diffusion noise schedules and
# sample steps are flawed"); 'linspace' is every one of the four schedulers' default.
TIMESTEP_SPACINGS = ('linspace', 'leading', 'trailing')
# How a scheduler family of diffusers places num_steps timesteps on [0, T):
#   multistep (DPMSolverMultistep, UniPCMultistep): num_steps + 1 integer points, the one at 0
#     dropped, so the last step jumps from the smallest kept timestep to clean data;
#   euler (EulerDiscrete, HeunDiscrete): num_steps points from T - 1 down to 0 ('linspace' not
#     rounded, so the network may get fractional timesteps), then one step to clean data.
GRIDS = ('multistep', 'euler')


def monotone_slopes(y: np.ndarray) -> np.ndarray:
  """Slopes at the nodes 0, 1, ... of a strictly monotone table y (float64) for its cubic Hermite
  interpolant: centred differences (one-sided second order at the ends), so the interpolant is
  smooth where the table is, limited as Fritsch & Carlson (1980) so that no interval overshoots
  (monotone: beta stays positive, also where a schedule jumps, as jsd's last beta)."""
  secants = np.diff(y)
  slopes = np.empty_like(y)
  slopes[1:-1] = 0.5 * (secants[:-1] + secants[1:])
  ends = (1.5 * secants[0] - 0.5 * secants[1], 1.5 * secants[-1] - 0.5 * secants[-2]) if y.shape[0] > 2 else (
      secants[0], secants[-1])
  slopes[0], slopes[-1] = ends
  slopes[[0, -1]] = np.where(slopes[[0, -1]] * secants[[0, -1]] > 0, slopes[[0, -1]], 0.0)
  # An interval whose end slopes over its secant lie inside the circle of radius 3 is monotone; a
  # node shared by two intervals takes the smaller of their scales.
  scale = np.minimum(1.0, 3.0 / np.hypot(slopes[:-1] / secants, slopes[1:] / secants))
  node_scale = np.ones_like(y)
  node_scale[:-1] = scale
  node_scale[1:] = np.minimum(node_scale[1:], scale)
  return slopes * node_scale


def discrete_timesteps(num_timesteps: int, num_steps: int, spacing: str = 'linspace',
                       grid: str = 'multistep', steps_offset: int = 0) -> np.ndarray:
  """The num_steps timesteps (float64, decreasing) at which diffusers' schedulers call the network.

  grid 'multistep' follows DPMSolverMultistepScheduler and UniPCMultistepScheduler, 'euler'
  EulerDiscreteScheduler and HeunDiscreteScheduler (see GRIDS); spacing and steps_offset (added
  for 'leading') are theirs.
  """
  T, n = num_timesteps, num_steps
  if not 1 <= n <= T:
    raise ValueError(f'num_steps={n} must be between 1 and the schedule\'s {T} timesteps.')
  if grid not in GRIDS:
    raise ValueError(f'Unknown grid {grid!r}; valid: {", ".join(GRIDS)}.')
  if spacing == 'linspace':
    if grid == 'multistep':
      steps = np.linspace(0, T - 1, n + 1).round()[::-1][:-1]
    else:
      steps = np.linspace(0, T - 1, n, dtype=np.float32)[::-1].astype(np.float64)
  elif spacing == 'leading':
    points = n + 1 if grid == 'multistep' else n
    steps = (np.arange(points) * (T // points))[::-1][:n] + steps_offset  # multistep drops the 0.
  elif spacing == 'trailing':
    steps = np.arange(T, 0, -T / n).round() - 1
  else:
    raise ValueError(f'Unknown timestep spacing {spacing!r}; valid: {", ".join(TIMESTEP_SPACINGS)}.')
  return np.ascontiguousarray(steps, dtype=np.float64)


@register
class DDPM(VPSDE):
  """The chain of `schedule`; `spec` its training loss, `importance_uniform_prob` of importance sampling."""

  name = 'ddpm'
  knobs = ('diffusion.schedule', 'diffusion.num_timesteps')
  conditional_knobs = {
      **{f'diffusion.{k}': (lambda c: c.diffusion.schedule not in SCHEDULES_WITHOUT_BETAS,
                            f'a schedule that uses it (not {" or ".join(SCHEDULES_WITHOUT_BETAS)})')
         for k in ('beta_start', 'beta_end')},
      'diffusion.hybrid_lambda': (lambda c: c.diffusion.loss == 'hybrid', 'config.diffusion.loss=hybrid'),
      **{f'diffusion.{k}': (lambda c: c.diffusion.loss == 'mmd', 'config.diffusion.loss=mmd')
         for k in ('mmd_weight', 'mmd_simple_weight', 'mmd_bandwidths')},
      **{f'training.{k}': (lambda c: c.training.timestep_sampler == 'importance',
                           'config.training.timestep_sampler=importance')
         for k in ('importance_history', 'importance_uniform_prob')}}
  spacings = ('auto', 'linspace', 'leading', 'trailing')  # diffusers' timestep spacings.
  pc_steps_field = 'diffusion.num_timesteps'  # Predictor-corrector walks the chain's own steps.
  discrete_chain = True

  def __init__(self, schedule: diffusion.Schedule, spec: diffusion.LossSpec = diffusion.LossSpec()):
    self.schedule = schedule
    self.spec = spec
    betas = np.asarray(schedule.betas, np.float64)
    self.num_scales = betas.shape[0]
    log_abar = np.cumsum(np.log1p(-betas))
    self.log_alphas_cumprod = jnp.asarray(log_abar, jnp.float32)
    # log alpha_bar on [k, k + 1] is y_k + u (c1 + u (c2 + u c3)), u = t - k: the cubic Hermite of the
    # node values and monotone_slopes d; the row after the last node continues it linearly.
    d, secants = monotone_slopes(log_abar), np.append(np.diff(log_abar), 0.0)
    d_next = np.append(d[1:], 0.0)
    cubic = np.stack([d, 3.0 * secants - 2.0 * d - d_next, d + d_next - 2.0 * secants], axis=1)
    cubic[-1, 1:] = 0.0
    self._cubic = jnp.asarray(cubic, jnp.float32)
    self.beta_min, self.beta_max = float(betas[0] * self.num_scales), float(betas[-1] * self.num_scales)
    self.t_max = float(self.num_scales - 1)
    self.t_min = SAMPLING_EPS_FRACTION * self.t_max
    self.likelihood_weighting = False

  @classmethod
  def from_config(cls, d: ml_collections.ConfigDict) -> 'DDPM':
    return cls(diffusion.schedule_from_config(d), diffusion.loss_spec_from_config(d))

  @classmethod
  def check(cls, config: ml_collections.ConfigDict) -> None:
    """Every loss and parameterisation trains the chain; the loss checks are configuration's."""

  @classmethod
  def check_pc(cls, config: ml_collections.ConfigDict) -> None:
    """The chain's own betas are below 1."""

  def _segment(self, t):
    """(k, u = t - k, cubic coefficients of interval k) of times t; k = floor(t) in [0, T - 1]."""
    t = jnp.asarray(t, jnp.float32)
    k = jnp.clip(jnp.floor(t).astype(jnp.int32), 0, self.num_scales - 1)
    return k, t - k.astype(jnp.float32), self._cubic[k]

  def log_alpha_bar(self, t):
    """The chain's log alphas_cumprod at the timesteps, a monotone C^1 cubic between them."""
    k, u, c = self._segment(t)
    return self.log_alphas_cumprod[k] + u * (c[..., 0] + u * (c[..., 1] + u * c[..., 2]))

  def beta(self, t):
    """-d/dt log alpha_bar: continuous, piecewise quadratic."""
    _, u, c = self._segment(t)
    return -(c[..., 0] + u * (2.0 * c[..., 1] + 3.0 * u * c[..., 2]))

  def network_time(self, t):
    return jnp.asarray(t, jnp.float32)

  # Training: the chain's.

  def uses_loss_history(self, config: ml_collections.ConfigDict) -> bool:
    return config.training.timestep_sampler == 'importance'

  def train_times(self, key, batch, config, loss_history=None):
    """(integer t uniform over [0, T), weights 1), or drawn from the loss history with weights
    1 / (T p(t)) (importance; without a history, as in the batch-norm calibration, uniform)."""
    if self.uses_loss_history(config) and loss_history is not None:
      return diffusion.sample_importance_timesteps(key, batch, diffusion.LossHistory(**loss_history),
                                                   config.training.importance_uniform_prob)
    return diffusion.sample_timesteps(key, batch, self.num_scales), jnp.ones((batch,), jnp.float32)

  def training_loss(self, network_fn: NetworkFn, x0, t, noise, config) -> LossTerms:
    return diffusion.training_loss(self.spec, self.schedule, network_fn, x0, t, noise)

  def training_inputs(self, x0, t, noise):
    return diffusion.q_sample(self.schedule, x0, t, noise), t

  # Grids: diffusers' timesteps for the fast solvers, the chain's steps for predictor-corrector.

  def solver_levels(self, num_steps: int, spacing: str, grid: str, steps_offset: int = 0):
    """The chain at diffusers' timesteps, ending at clean data. As diffusers does, sigma / alpha =
    sqrt((1 - abar) / abar) is interpolated linearly between integer timesteps (for the fractional
    ones of grid 'euler'); the times are the timesteps. spacing auto is linspace."""
    spacing = 'linspace' if spacing == 'auto' else spacing
    steps = discrete_timesteps(self.num_scales, num_steps, spacing, grid, steps_offset)
    abar = np.asarray(self.schedule.alphas_cumprod, dtype=np.float64)
    ratio = np.sqrt((1.0 - abar) / abar)
    ratio = np.append(np.interp(steps, np.arange(abar.shape[0]), ratio), 0.0)
    alpha = 1.0 / np.sqrt(ratio ** 2 + 1.0)
    return alpha, ratio * alpha, np.append(steps, 0.0)

  @classmethod
  def max_solver_steps(cls, config):
    return config.diffusion.num_timesteps

  def discrete_betas(self, i: jax.Array, num_steps: int) -> jax.Array:
    """1 - alpha_bar(t_i) / alpha_bar(t_{i-1}) (alpha_bar of t_{-1} is 1): the chain's own betas
    when n is T."""
    at = lambda k: self.log_alpha_bar(k.astype(jnp.float32) / (num_steps - 1) * self.t_max)
    previous = jnp.where(i > 0, at(i - 1), 0.0)
    return -jnp.expm1(at(i) - previous)
