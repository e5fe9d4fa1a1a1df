"""The compiled train step and the EMA network's batch-norm calibration.

Pure functions of (state, batch): every random key derives from config.seed and state.step, so a
resumed run repeats the uninterrupted one exactly.
"""

from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from ddpm_jax import data, diffusion
from ddpm_jax.nets import precision
from ddpm_jax.train_state import TrainState, apply_gradients, learning_rate_schedule


def drop_labels(key: jax.Array, labels: jax.Array, drop_prob: float, null_label: int) -> jax.Array:
  """Each label replaced by the null label with probability drop_prob (classifier-free guidance)."""
  return jnp.where(jax.random.bernoulli(key, drop_prob, labels.shape), null_label, labels)


TimestepDraw = Callable[[jax.Array, int], tuple[jax.Array, jax.Array]]


def uniform_timesteps(num_timesteps: int) -> TimestepDraw:
  """draw(key, batch_size) -> (t uniform over [0, T), weights 1)."""
  return lambda key, n: (diffusion.sample_timesteps(key, n, num_timesteps), jnp.ones((n,), jnp.float32))


def training_inputs(images: jax.Array, key: jax.Array, random_flip: bool, draw_timesteps: TimestepDraw):
  """From a uint8 batch and a key: (x0 in [-1, 1], timesteps, their loss weights, noise, dropout key,
  label-drop key)."""
  flip_key, t_key, noise_key, dropout_key, label_key = jax.random.split(key, 5)
  x0 = data.preprocess(images, flip_key, random_flip)
  t, weights = draw_timesteps(t_key, x0.shape[0])
  return x0, t, weights, jax.random.normal(noise_key, x0.shape, x0.dtype), dropout_key, label_key


def make_train_step(model, schedule: diffusion.Schedule, tx: optax.GradientTransformation,
                    config: ml_collections.ConfigDict, train_key: jax.Array) -> Callable:
  """train_step(state, uint8 images, labels=None) -> (state, metrics); keys come from state.step.

  A class-conditional network sees each label, or the null label with probability
  config.training.cond_drop_prob; an unconditional one ignores the labels. The forward and
  backward compute in config.training.compute_dtype; params, optimizer and loss stay float32.
  """
  spec = diffusion.loss_spec_from_config(config.diffusion)
  num_classes = config.model.num_classes
  lr_schedule = learning_rate_schedule(config.optim)
  importance = config.training.timestep_sampler == 'importance'
  model = precision.computing_in(model, config.training.compute_dtype)

  def train_step(state: TrainState, images: jax.Array, labels: jax.Array | None = None):
    if num_classes and labels is None:
      raise ValueError(f'The network is class-conditional ({num_classes} classes): train it with labels.')
    if importance:
      history = diffusion.LossHistory(**state.loss_history)
      draw = lambda key, n: diffusion.sample_importance_timesteps(
          key, n, history, config.training.importance_uniform_prob)
    else:
      draw = uniform_timesteps(schedule.num_timesteps)
    x0, t, weights, noise, dropout_key, label_key = training_inputs(
        images, jax.random.fold_in(train_key, state.step), config.data.random_flip, draw)
    model_labels = (drop_labels(label_key, labels, config.training.cond_drop_prob, num_classes)
                    if num_classes else None)

    def loss_fn(params):
      new_stats = {}

      def model_fn(x, t):
        out, mutated = model.apply({'params': params, 'batch_stats': state.batch_stats}, x, t,
                                   train=True, labels=model_labels, mutable=['batch_stats'],
                                   rngs={'dropout': dropout_key})
        new_stats.update(mutated)  # Carried out of the loss as aux; traced, so pure.
        return out

      terms = diffusion.training_loss(spec, schedule, model_fn, x0, t, noise)
      loss = jnp.mean(weights * terms.per_example) + terms.batch_term
      return loss, (new_stats.get('batch_stats', state.batch_stats), terms)

    (loss, (batch_stats, terms)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    metrics = {'loss': loss, 'grad_norm': optax.global_norm(grads),
               'learning_rate': lr_schedule(state.step), **terms.metrics}
    new_state = apply_gradients(state, grads, batch_stats, tx, config.training.ema_decay)
    if importance:
      new_state = new_state.replace(loss_history=diffusion.update_loss_history(
          history, t, terms.per_example)._asdict())
    # A NaN or infinite step never changes the state; the loop stops on it or counts it
    # (config.training.skip_nonfinite_steps). One program either way: the knob needs no recompile.
    return unless_nonfinite(state, new_state, loss, metrics['grad_norm']), metrics

  return train_step


def unrolled_steps(train_step: Callable) -> Callable:
  """steps(state, images (K, B, ...), labels (K, B)) -> (state, metrics stacked along K): K train
  steps in one compiled call (score_sde's n_jitted_steps), each exactly as a call of train_step.

  Unrolled rather than a lax.scan: XLA:CPU runs a train step inside a loop many times slower (its
  weight-gradient convolutions; benchmarks/README.md); compile time grows with K instead.
  """

  def steps(state: TrainState, images: jax.Array, labels: jax.Array):
    all_metrics = []
    for i in range(images.shape[0]):
      state, metrics = train_step(state, images[i], labels[i])
      all_metrics.append(metrics)
    return state, jax.tree.map(lambda *values: jnp.stack(values), *all_metrics)

  return steps


def unless_nonfinite(old: TrainState, new: TrainState, loss: jax.Array, grad_norm: jax.Array) -> TrainState:
  """`new` when the loss and gradient norm are finite, else `old` with only its step advanced (params,
  optimizer, EMA, statistics untouched), so later steps keep the keys and data of an unskipped run."""
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old).replace(step=new.step)


def make_bn_calibration(model, schedule: diffusion.Schedule, config: ml_collections.ConfigDict,
                        calibration_key: jax.Array) -> Callable:
  """calibrate(state, uint8 batches (K, B, H, W, C)) -> state with fresh ema_batch_stats.

  The running batch-norm statistics follow the raw params, not their EMA; sampling
  with EMA params needs statistics of the EMA network itself. They are the mean,
  over K noisy training batches, of each batch-norm layer's batch statistics (a class-conditional
  network is calibrated as the unconditional model, with the null label).
  """
  momentum = config.model.batch_norm_momentum
  num_classes = config.model.num_classes

  def batch_statistics(state: TrainState, images: jax.Array, index: jax.Array):
    key = jax.random.fold_in(jax.random.fold_in(calibration_key, state.step), index)
    x0, t, _, noise, dropout_key, _ = training_inputs(images, key, config.data.random_flip,
                                                      uniform_timesteps(schedule.num_timesteps))
    zeros = jax.tree.map(jnp.zeros_like, state.ema_batch_stats)
    null_labels = jnp.full((x0.shape[0],), num_classes, jnp.int32) if num_classes else None
    _, mutated = model.apply({'params': state.ema_params, 'batch_stats': zeros},
                             diffusion.q_sample(schedule, x0, t, noise), t, train=True, labels=null_labels,
                             mutable=['batch_stats'], rngs={'dropout': dropout_key})
    # From zero, one update leaves (1 - momentum) * the batch's statistic.
    return jax.tree.map(lambda s: s / (1.0 - momentum), mutated['batch_stats'])

  def calibrate(state: TrainState, batches: jax.Array) -> TrainState:
    if not jax.tree.leaves(state.ema_batch_stats):
      return state
    if batches.shape[0] == 0:  # No calibration: reuse the raw params' running statistics.
      return state.replace(ema_batch_stats=state.batch_stats)
    per_batch = jax.lax.map(lambda args: batch_statistics(state, *args),
                            (batches, jnp.arange(batches.shape[0])))
    return state.replace(ema_batch_stats=jax.tree.map(lambda s: jnp.mean(s, axis=0), per_batch))

  return calibrate


