"""Training state (params, batch statistics, optimizer state, EMA params, step) and its updates."""

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

OPTIMIZERS = ('adam',)


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


def ema_update(ema_params: Any, params: Any, decay: float) -> Any:
  """ema <- decay * ema + (1 - decay) * params."""
  return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema_params, params)


def apply_gradients(state: TrainState, grads: Any, batch_stats: Any,
                    tx: optax.GradientTransformation, ema_decay: float) -> TrainState:
  """One optimizer step, the new batch statistics, the EMA update, and step + 1."""
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  return state.replace(
      step=state.step + 1,
      params=params,
      batch_stats=batch_stats,
      opt_state=opt_state,
      ema_params=ema_update(state.ema_params, params, ema_decay),
  )
