"""The compiled train step and the EMA network's batch-norm calibration.

Pure functions of (state, batch): every random key derives from config.seed and state.step, so a
resumed run repeats the uninterrupted one exactly.

Gradient accumulation (config.training.grad_accum_steps = k > 1) runs inside the one compiled step:
the global batch of the step is split into k micro-batches, a loop sums their gradients, and the
optimizer, the EMA and the batch statistics update once. It is not optax.MultiSteps, which would
make every micro-batch a call of the step with its own state.step: keys, data order, the step
counter, log/checkpoint intervals and n_jitted_steps would all count micro-steps, the EMA and batch
statistics would need masking on the k - 1 steps without an update, and checkpoints would carry a
half-summed gradient and k in their optimizer state (a run could not change k on resume). In the
step, one state.step stays one effective step, its keys and data stay those of the batch of B, and
the optimizer state (and checkpoints) are those of k = 1.
"""

from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from ddpm_jax import data, diffusion
from ddpm_jax.processes import Process
from ddpm_jax.nets import precision
from ddpm_jax.train_state import TrainState, apply_gradients, learning_rate_schedule


def drop_labels(key: jax.Array, labels: jax.Array, drop_prob: float, null_label: int) -> jax.Array:
  """Each label replaced by the null label with probability drop_prob (classifier-free guidance)."""
  return jnp.where(jax.random.bernoulli(key, drop_prob, labels.shape), null_label, labels)


TimestepDraw = Callable[[jax.Array, int], tuple[jax.Array, jax.Array]]


def training_inputs(images: jax.Array, key: jax.Array, random_flip: bool, draw_timesteps: TimestepDraw):
  """From a uint8 batch and a key: (x0 in [-1, 1], timesteps, their loss weights, noise, dropout key,
  label-drop key)."""
  flip_key, t_key, noise_key, dropout_key, label_key = jax.random.split(key, 5)
  x0 = data.preprocess(images, flip_key, random_flip)
  t, weights = draw_timesteps(t_key, x0.shape[0])
  return x0, t, weights, jax.random.normal(noise_key, x0.shape, x0.dtype), dropout_key, label_key


def split_micro_batches(x: jax.Array, num: int) -> jax.Array:
  """(B, ...) -> (num, B / num, ...), micro-batch i holding examples i, i + num, i + 2 num, ...:
  with the batch's rows split over devices in contiguous blocks of a multiple of num rows, every
  device holds its share of every micro-batch, so no example moves between devices."""
  if x.shape[0] % num:
    raise ValueError(f'A batch of {x.shape[0]} does not split into {num} micro-batches '
                     f'(config.training.grad_accum_steps).')
  return jnp.swapaxes(x.reshape(x.shape[0] // num, num, *x.shape[1:]), 0, 1)


def merge_micro_batches(x: jax.Array) -> jax.Array:
  """The inverse of split_micro_batches: (num, B / num, ...) -> (B, ...) in the batch's order."""
  return jnp.swapaxes(x, 0, 1).reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def accumulated_value_and_grad(loss_fn: Callable, num: int) -> Callable:
  """(params, batch) -> ((loss, aux stacked over micro-batches), grads) of a loss that is a mean over
  the examples of `batch` (a pytree of arrays of B rows): loss_fn(params, micro_batch, index) ->
  (loss, aux) runs on num micro-batches of B / num (split_micro_batches) one after another in a
  loop, so only one micro-batch's activations are alive at a time; loss and grads are the means
  over micro-batches, which are the loss and gradient of the whole batch.

  A lax.scan, not unrolled like unrolled_steps: the loop is what bounds the memory (unrolled, XLA
  schedules the micro-batches together and saves little). XLA:CPU runs convolutions inside a loop
  ~20x slower, so on the CPU this is for runs limited by memory, not time (benchmarks/README.md)."""

  def value_and_grad(params, batch):
    def body(grad_sum, xs):
      index, micro_batch = xs
      (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, micro_batch, index)
      return jax.tree.map(jnp.add, grad_sum, grads), (loss, aux)

    micro = jax.tree.map(lambda x: split_micro_batches(x, num), batch)
    grad_sum, (losses, aux) = jax.lax.scan(body, jax.tree.map(jnp.zeros_like, params), (jnp.arange(num), micro))
    return (jnp.mean(losses), aux), jax.tree.map(lambda g: g / num, grad_sum)

  return value_and_grad


def make_train_step(model, process: Process, tx: optax.GradientTransformation,
                    config: ml_collections.ConfigDict, train_key: jax.Array) -> Callable:
  """train_step(state, uint8 images, labels=None) -> (state, metrics); keys come from state.step.

  A class-conditional network sees each label, or the null label with probability
  config.training.cond_drop_prob; an unconditional one ignores the labels. The forward and
  backward compute in config.training.compute_dtype; params, optimizer and loss stay float32.
  With config.training.grad_accum_steps = k > 1 the gradient is accumulated over k micro-batches
  of the batch (module docstring): the same inputs, timesteps and noise as k = 1, dropout keys
  folded with the micro-batch index, and batch-norm running statistics updated once, by the mean
  of the micro-batches' updates (batch norm normalises each micro-batch by its own statistics).
  """
  num_classes = config.model.num_classes
  lr_schedule = learning_rate_schedule(config.optim)
  # Improved DDPM's importance sampling of discrete timesteps, from a history of their losses.
  history = process.uses_loss_history(config)
  model = precision.computing_in(model, config.training.compute_dtype)
  accum = config.training.get('grad_accum_steps', 1)
  ema_warmup = config.training.get('ema_warmup', False)

  def train_step(state: TrainState, images: jax.Array, labels: jax.Array | None = None):
    if num_classes and labels is None:
      raise ValueError(f'The network is class-conditional ({num_classes} classes): train it with labels.')
    draw = lambda key, n: process.train_times(key, n, config, state.loss_history)
    x0, t, weights, noise, dropout_key, label_key = training_inputs(
        images, jax.random.fold_in(train_key, state.step), config.data.random_flip, draw)
    model_labels = (drop_labels(label_key, labels, config.training.cond_drop_prob, num_classes)
                    if num_classes else None)

    def loss_fn(params, batch, dropout_key):
      x0, t, weights, noise, model_labels = batch
      new_stats = {}

      def model_fn(x, t):
        out, mutated = model.apply({'params': params, 'batch_stats': state.batch_stats}, x, t,
                                   train=True, labels=model_labels, mutable=['batch_stats'],
                                   rngs={'dropout': dropout_key})
        new_stats.update(mutated)  # Carried out of the loss as aux; traced, so pure.
        return out

      terms = process.training_loss(model_fn, x0, t, noise, config)
      loss = jnp.mean(weights * terms.per_example) + terms.batch_term
      return loss, (new_stats.get('batch_stats', state.batch_stats), terms.per_example, terms.metrics)

    batch = (x0, t, weights, noise, model_labels)
    if accum == 1:
      (loss, (batch_stats, per_example, term_metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
          state.params, batch, dropout_key)
    else:
      micro_loss_fn = lambda params, micro_batch, i: loss_fn(params, micro_batch, jax.random.fold_in(dropout_key, i))
      (loss, (batch_stats, per_example, term_metrics)), grads = accumulated_value_and_grad(micro_loss_fn, accum)(
          state.params, batch)
      mean = lambda tree: jax.tree.map(lambda x: jnp.mean(x, axis=0), tree)
      batch_stats, per_example, term_metrics = mean(batch_stats), merge_micro_batches(per_example), mean(term_metrics)
    metrics = {'loss': loss, 'grad_norm': optax.global_norm(grads),
               'learning_rate': lr_schedule(state.step), **term_metrics}
    new_state = apply_gradients(state, grads, batch_stats, tx, config.training.ema_decay, ema_warmup)
    if history:
      new_state = new_state.replace(loss_history=diffusion.update_loss_history(
          diffusion.LossHistory(**state.loss_history), t, per_example)._asdict())
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


def make_bn_calibration(model, process: Process, config: ml_collections.ConfigDict,
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
    draw = lambda key, n: process.train_times(key, n, config)  # Without a loss history: the ddpm chain's uniform t.
    x0, t, _, noise, dropout_key, _ = training_inputs(images, key, config.data.random_flip, draw)
    zeros = jax.tree.map(jnp.zeros_like, state.ema_batch_stats)
    null_labels = jnp.full((x0.shape[0],), num_classes, jnp.int32) if num_classes else None
    x_t, time_input = process.training_inputs(x0, t, noise)
    _, mutated = model.apply({'params': state.ema_params, 'batch_stats': zeros}, x_t, time_input, train=True,
                             labels=null_labels, mutable=['batch_stats'], rngs={'dropout': dropout_key})
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


