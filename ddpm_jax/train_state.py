"""Training state (params, batch statistics, optimizer state, EMA params, step), its updates, and
its construction from a config: the random keys, the step-0 state and its abstract shapes.
"""

from typing import Any, Callable, NamedTuple

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from ddpm_jax import diffusion, nets, parallel, processes
from ddpm_jax.processes import Process

OPTIMIZERS = ('adam',)
# jax.random key implementations a run may use (config.rng_impl).
RNG_IMPLS = ('rbg', 'threefry2x32', 'unsafe_rbg')


class TrainState(flax.struct.PyTreeNode):
  """Everything a checkpoint holds; the optimizer itself is rebuilt from the config."""
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  ema_params: Any
  # Batch-norm statistics of the EMA network, recomputed before sampling and checkpoints.
  ema_batch_stats: Any
  # Importance sampling of timesteps: the recent losses at each t ({} when t is uniform).
  loss_history: Any


def learning_rate_schedule(optim_config) -> optax.Schedule:
  """Linear warm-up from 0 to optim.lr over optim.warmup_steps, then constant (as in DDPM)."""
  lr, warmup = optim_config.lr, optim_config.warmup_steps
  if warmup <= 0:
    return optax.constant_schedule(lr)
  return lambda step: lr * jnp.minimum(step / warmup, 1.0)


def make_optimizer(optim_config) -> optax.GradientTransformation:
  """Adam (with optional global-norm clipping) from `config.optim`."""
  if optim_config.optimizer not in OPTIMIZERS:
    raise ValueError(f'Unknown optimizer {optim_config.optimizer!r} (config.optim.optimizer); '
                     f'valid: {", ".join(OPTIMIZERS)}.')
  adam = optax.adam(learning_rate_schedule(optim_config), b1=optim_config.beta1,
                    b2=optim_config.beta2, eps=optim_config.eps)
  if optim_config.grad_clip > 0:
    return optax.chain(optax.clip_by_global_norm(optim_config.grad_clip), adam)
  return adam


def create_train_state(variables: dict, tx: optax.GradientTransformation, loss_history: Any = None) -> TrainState:
  """A state at step 0 whose EMA starts equal to the initial params and statistics."""
  params = variables['params']
  batch_stats = variables.get('batch_stats', {})
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      batch_stats=batch_stats,
      opt_state=tx.init(params),
      ema_params=jax.tree.map(jnp.copy, params),
      ema_batch_stats=jax.tree.map(jnp.copy, batch_stats),
      loss_history={} if loss_history is None else loss_history,
  )


def ema_update(ema_params: Any, params: Any, decay: float | jax.Array) -> Any:
  """ema <- decay * ema + (1 - decay) * params."""
  return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema_params, params)


def warmed_up_ema_decay(decay: float, step: jax.Array) -> jax.Array:
  """min(decay, (1 + n) / (10 + n)) for the update after n optimizer steps (tf.train.ExponentialMovingAverage's
  num_updates, diffusers' EMAModel without use_ema_warmup): 0.1, 2/11, 3/12, ... until it reaches decay, so the
  early EMA follows the params instead of staying mostly the random init (config.training.ema_warmup)."""
  n = jnp.asarray(step, jnp.float32)
  return jnp.minimum(jnp.float32(decay), (1.0 + n) / (10.0 + n))


def apply_gradients(state: TrainState, grads: Any, batch_stats: Any,
                    tx: optax.GradientTransformation, ema_decay: float, ema_warmup: bool = False) -> TrainState:
  """One optimizer step, the new batch statistics, the EMA update, and step + 1. With ema_warmup the
  EMA decays by warmed_up_ema_decay(ema_decay, state.step); without, by ema_decay (a constant)."""
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  decay = warmed_up_ema_decay(ema_decay, state.step) if ema_warmup else ema_decay
  return state.replace(
      step=state.step + 1,
      params=params,
      batch_stats=batch_stats,
      opt_state=opt_state,
      ema_params=ema_update(state.ema_params, params, decay),
  )


# ---------------------------------------------------------------------------
# Construction from a config.

def root_keys(config: ml_collections.ConfigDict) -> dict[str, jax.Array]:
  """The independent key streams of a run, all from config.seed."""
  root = jax.random.key(config.seed, impl=config.rng_impl)
  init, train, sample, calibrate, evaluate = jax.random.split(root, 5)
  return {'init': init, 'train': train, 'sample': sample, 'calibrate': calibrate, 'eval': evaluate}


def initial_loss_history(config: ml_collections.ConfigDict):
  """The importance sampler's empty history, or {} when timesteps are uniform."""
  if config.training.timestep_sampler != 'importance':
    return {}
  return diffusion.init_loss_history(config.diffusion.num_timesteps, config.training.importance_history)._asdict()


def _init_fn(model, config: ml_collections.ConfigDict, tx) -> Callable[[jax.Array], TrainState]:
  return lambda key: create_train_state(nets.init_variables(model, config, key), tx,
                                       initial_loss_history(config))


def initial_state(model, config: ml_collections.ConfigDict, tx, mesh: Mesh) -> TrainState:
  """The step-0 state, replicated over the mesh."""
  init = jax.jit(_init_fn(model, config, tx), out_shardings=parallel.replicated(mesh))
  return init(root_keys(config)['init'])


def abstract_state(model, config: ml_collections.ConfigDict, tx, mesh: Mesh) -> TrainState:
  """Shapes, dtypes and shardings of the state, without computing it (a restore target)."""
  shapes = jax.eval_shape(_init_fn(model, config, tx), root_keys(config)['init'])
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=parallel.replicated(mesh)), shapes)


class Components(NamedTuple):
  """What training, sampling, evaluation and figures build from a (validated) config."""
  mesh: Mesh
  model: Any  # A flax.linen.Module from nets.get_model.
  process: Process  # The noise process of config.diffusion (ddpm_jax/processes/).
  tx: optax.GradientTransformation


def components(config: ml_collections.ConfigDict) -> Components:
  """The mesh of every device, the network, the noise process and the optimizer of a config
  (checked by configuration.validate_config first: the command line does it once)."""
  return Components(parallel.make_mesh(), nets.get_model(config), processes.from_config(config.diffusion),
                    make_optimizer(config.optim))
