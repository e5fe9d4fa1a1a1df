"""A workdir's checkpoints: background saves, resume from the newest readable one, stop signals.

Orbax writes step N into `N.orbax-checkpoint-tmp` and renames it to `N` only once every file is
written, so a process killed mid-save (kill -9, a lost machine) leaves a tmp dir that
`latest_step()` never lists and that orbax replaces when it saves step N again. A finished
checkpoint can still be damaged later (files deleted, truncated or zeroed, e.g. by a failing
disk): `restore_newest` tries the steps newest first, logs every unreadable one by path, and
restores the newest good one; training renames the unreadable ones to `corrupt-<step>-<time>`.
Nothing here deletes a checkpoint.
"""

import contextlib
import zlib
import os
import signal
import threading
import time
from typing import Any, Iterator, NamedTuple, Optional

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from ddpm_jax.errors import CheckpointError, TrainingDiverged, WorkdirError, is_disk_full, is_io_error, one_line
from ddpm_jax import configuration, layout
from ddpm_jax.train_state import TrainState, abstract_state, components

CHECKPOINT_DIR = 'checkpoints'
CORRUPT_PREFIX = 'corrupt-'  # Unreadable step dirs set aside: checkpoints/corrupt-<step>-<time>.
TMP_SUFFIX = '.orbax-checkpoint-tmp'  # Orbax's unfinished saves: checkpoints/<step>.orbax-checkpoint-tmp.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
DEFAULT_ITEM = 'default'  # The folder of a step that holds the train state (orbax's single item).
# Each step's custom metadata: {array name: crc32 of its bytes}, checked on restore.
DIGESTS_KEY = 'array_crc32'
MAX_NAMED_ARRAYS = 5  # Arrays named in a message about non-finite or damaged arrays.


class Unreadable(NamedTuple):
  """A checkpoint whose restore failed: its step, its directory and the error, in one line."""
  step: int
  path: str
  error: str


def checkpoint_dir(workdir: str) -> str:
  return os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))


def make_manager(workdir: str, keep: int) -> ocp.CheckpointManager:
  """The orbax manager of workdir/checkpoints, keeping the newest `keep` steps."""
  # One item per step, declared rather than inferred from the newest step's folder, which a damaged
  # or stray step folder would turn into multi-item mode for every step.
  return ocp.CheckpointManager(checkpoint_dir(workdir),
                               options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
                               item_handlers=ocp.StandardCheckpointHandler())


def step_dir(manager: ocp.CheckpointManager, step: int) -> str:
  return os.path.join(str(manager.directory), str(step))


def restore_step(manager: ocp.CheckpointManager, abstract: Any, step: int) -> Any:
  """Restores the checkpoint of `step` into the shapes, dtypes and shardings of `abstract`.

  Raises ValueError when an array's bytes differ from the digest saved with it (silent damage:
  flipped bytes of the same size) or when an array holds NaN or inf: such a checkpoint is no good.
  Checkpoints saved without digests (older versions, other tools) are checked for finiteness only.
  """
  state = manager.restore(step, args=ocp.args.StandardRestore(abstract))
  saved = (manager.metadata(step).custom_metadata or {}).get(DIGESTS_KEY)
  report = inspect_arrays(state)
  if saved:
    damaged = sorted(name for name, digest in report.digests.items() if saved.get(name, digest) != digest)
    if damaged:
      raise ValueError(f'{len(damaged)} arrays differ from the digests saved with them ({named(damaged)})')
  if report.nonfinite:
    raise ValueError(f'NaN or inf in {len(report.nonfinite)} arrays ({named(report.nonfinite)})')
  return state


def restore_newest(manager: ocp.CheckpointManager, abstract: Any) -> tuple[Any, Optional[int], list[Unreadable]]:
  """(state, step, newer unreadable checkpoints) of the newest checkpoint that restores.

  (None, None, []) when there is no checkpoint. Each unreadable one is logged as a warning naming
  its directory and the error. Raises CheckpointError when checkpoints exist but none restores.
  """
  unreadable = []
  for step in sorted(manager.all_steps(), reverse=True):
    try:
      return restore_step(manager, abstract, step), step, unreadable
    except Exception as e:  # pylint: disable=broad-except  # Any damage shows up differently.
      bad = Unreadable(step, step_dir(manager, step), one_line(f'{type(e).__name__}: {e}', limit=400))
      logging.warning('Checkpoint %s is unreadable (%s); trying an older one.', bad.path, bad.error)
      unreadable.append(bad)
  if unreadable:
    raise CheckpointError(
        f'No checkpoint in {manager.directory} can be read: '
        + '; '.join(f'{u.path}: {u.error}' for u in unreadable)
        + '. Nothing was changed: restore them from a backup, or move them out of '
        f'{manager.directory} to start again from step 0.')
  return None, None, []


def set_aside(manager: ocp.CheckpointManager, unreadable: list[Unreadable]) -> list[str]:
  """Renames unreadable step dirs to checkpoints/corrupt-<step>-<time> (kept, never deleted), so
  training can save those steps again; returns the new paths."""
  stamp = time.strftime('%Y%m%d-%H%M%S')
  moved = []
  for bad in unreadable:
    target = os.path.join(os.path.dirname(bad.path), f'{CORRUPT_PREFIX}{bad.step}-{stamp}')
    os.rename(bad.path, target)
    logging.warning('Moved the unreadable checkpoint %s to %s (kept for inspection; delete it to '
                    'free its space).', bad.path, target)
    moved.append(target)
  manager.reload()
  return moved


def leaf_name(path: tuple) -> str:
  """'params/conv/kernel' for a pytree path."""
  return '/'.join(str(getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', k)))) for k in path)


def array_shapes(tree: Any) -> dict[str, tuple]:
  """{'params/conv/kernel': shape, ...} of every leaf with a shape (arrays, metadata, abstract)."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {leaf_name(path): tuple(leaf.shape) for path, leaf in leaves if hasattr(leaf, 'shape')}


class ArrayReport(NamedTuple):
  """What a state's arrays hold: a digest of each one's bytes, and the names of those with NaN or inf."""
  digests: dict[str, str]
  nonfinite: list[str]


def host_copy(leaf: Any) -> np.ndarray:
  """This host's copy of an array: the local data of a replicated jax.Array (the whole array, also
  on a multi-host mesh), else the array itself."""
  if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable and leaf.is_fully_replicated:
    return np.asarray(leaf.addressable_data(0))
  return np.asarray(leaf)


def inspect_arrays(tree: Any) -> ArrayReport:
  """crc32 of every array's bytes and the floating arrays holding NaN or inf, in one pass."""
  digests, nonfinite = {}, []
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    array = host_copy(leaf)
    name = leaf_name(path)
    digests[name] = f'{zlib.crc32(np.ascontiguousarray(array).tobytes()):08x}'
    if jnp.issubdtype(array.dtype, jnp.inexact) and not np.all(np.isfinite(array.astype(np.float32))):
      nonfinite.append(name)
  return ArrayReport(digests, nonfinite)


def named(names: list[str]) -> str:
  """The first few names, and how many more."""
  more = len(names) - MAX_NAMED_ARRAYS
  return ', '.join(names[:MAX_NAMED_ARRAYS]) + (f' and {more} more' if more > 0 else '')


def saved_shapes(path: str) -> dict[str, tuple]:
  """array_shapes of the train state saved in a step dir, from its metadata ({} when unreadable)."""
  try:
    metadata = ocp.StandardCheckpointer().metadata(os.path.join(path, DEFAULT_ITEM))
  except Exception:  # pylint: disable=broad-except  # Damaged: restore_newest reports it.
    return {}
  metadata = getattr(metadata, 'item_metadata', metadata)
  return array_shapes(metadata) if metadata is not None else {}


def finished_steps(directory: str) -> list[int]:
  """The steps of the finished checkpoints in a checkpoints folder (orbax's `<step>` dirs), sorted."""
  if not os.path.isdir(directory):
    return []
  return sorted(int(name) for name in os.listdir(directory)
                if name.isdigit() and os.path.isdir(os.path.join(directory, name)))


def check_fits(directory: str, abstract: Any, config: Optional[ml_collections.ConfigDict] = None) -> None:
  """Raises CheckpointError when the newest checkpoint in `directory` with readable metadata holds
  other arrays than `abstract`, naming the first differences and their cause: with `config`, the
  settings that differ from the run's config.json and change the train state (an optimiser's or
  timestep sampler's state); else, or when none does, a different network."""
  for step in reversed(finished_steps(directory)):
    saved = saved_shapes(os.path.join(directory, str(step)))
    if saved:
      break
  else:
    return
  wanted = array_shapes(abstract)
  differences = [f'{k}: {saved.get(k, "missing")} in the checkpoint, {wanted.get(k, "absent")} in the model'
                 for k in sorted(set(saved) | set(wanted)) if saved.get(k) != wanted.get(k)]
  if not differences:
    return
  path = os.path.join(directory, str(step))
  changed = state_setting_changes(config, os.path.dirname(directory), wanted) if config is not None else []
  if changed:
    raise CheckpointError(
        f'The checkpoints in {directory} are intact, but this command changes the training state they hold: '
        f'{"; ".join(f"config.{k}={v!r}, the run was made with {s!r}" for k, s, v in changed)} '
        f'({len(differences)} arrays differ, e.g. {differences[0]}). Use the run\'s value '
        f'({" ".join(f"--config.{k}={s}" for k, s, _ in changed)}), or a new --workdir to start a run with '
        f'the new one.')
  raise CheckpointError(
      f'The checkpoint {path} does not fit the new model ({len(differences)} '
      f'arrays differ: {"; ".join(differences[:3])}). Use a new --workdir for this model.')


def state_setting_changes(config: ml_collections.ConfigDict, workdir: str,
                          wanted: dict[str, tuple]) -> list[tuple[str, Any, Any]]:
  """(field, the run's value, this config's value) of each setting outside the model and diffusion
  that differs from workdir/config.json and changes the train state's arrays (`wanted`, those of
  `config`): each is tried at the run's value, alone."""
  path = os.path.join(workdir, layout.CONFIG_FILE)
  if not os.path.exists(path):
    return []
  saved = configuration.flatten_dict(configuration.read_config_file(path))
  current = configuration.flatten_dict(configuration.config_to_dict(config))
  defining = set(configuration.flatten_dict(configuration.model_defining(configuration.config_to_dict(config))))
  found = []
  for field in sorted(k for k in current if k in saved and saved[k] != current[k] and k not in defining):
    trial = ml_collections.ConfigDict(config.to_dict())  # Unlocked copy.
    section, name = field.rsplit('.', 1)
    holder = trial
    for part in section.split('.'):
      holder = holder[part]
    try:
      holder[name] = tuple(saved[field]) if isinstance(holder[name], tuple) else saved[field]
      mesh, model, _, tx = components(trial)
      if array_shapes(abstract_state(model, trial, tx, mesh)) != wanted:
        found.append((field, saved[field], current[field]))
    except Exception:  # pylint: disable=broad-except  # A value this version cannot build: not the cause.
      continue
  return found


class CheckpointWriter:
  """Saves train states one at a time in the background (orbax); a failed write raises
  CheckpointError naming the directory, so a full disk stops training with the older checkpoints
  intact. Errors surface at the next save or at wait()."""

  def __init__(self, manager: ocp.CheckpointManager):
    self.manager = manager
    self.in_flight: Optional[int] = None  # The step being written in the background.

  def save(self, step: int, state: Any) -> str:
    """Starts writing `state` as `step` (after the previous write ends), with a digest of every
    array; returns its directory. A state holding NaN or inf is never saved: TrainingDiverged names
    its arrays (a checkpoint is only ever a good one)."""
    self.wait()
    report = inspect_arrays(state)
    if report.nonfinite:
      newest = self.manager.latest_step()
      kept = (f'the newest good checkpoint, {step_dir(self.manager, newest)}, is kept' if newest is not None
              else 'no checkpoint was written')
      raise TrainingDiverged(
          f'The state of step {step} holds NaN or inf in {len(report.nonfinite)} arrays ({named(report.nonfinite)}); '
          f'it was not saved and {kept}. Lower config.optim.lr or set config.optim.grad_clip.')
    self.in_flight = step
    try:
      self.manager.save(step, args=ocp.args.StandardSave(state), custom_metadata={DIGESTS_KEY: report.digests})
    except Exception as e:  # pylint: disable=broad-except
      raise self._error(e) from e
    return step_dir(self.manager, step)

  def wait(self) -> None:
    """Blocks until the write in flight is complete on disk."""
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise self._error(e) from e
    self.in_flight = None

  def _error(self, error: Exception) -> Exception:
    """CheckpointError for file-system failures (the original error otherwise: a bug to see whole)."""
    if not is_io_error(error):
      return error
    path = step_dir(self.manager, self.in_flight) if self.in_flight is not None else str(self.manager.directory)
    self.manager.reload()
    newest = self.manager.latest_step()
    kept = (f'the newest complete checkpoint, {step_dir(self.manager, newest)}, is intact'
            if newest is not None else 'no complete checkpoint was written yet')
    partial = path + TMP_SUFFIX
    leftover = f'; the partial write {partial} can be deleted' if os.path.exists(partial) else ''
    if is_disk_full(error):
      return CheckpointError(f'Could not write the checkpoint {path}: no space left on device. Free space '
                             f'and rerun the same command to resume ({kept}{leftover}).')
    return CheckpointError(f'Could not write the checkpoint {path}: {one_line(error, limit=400)} ({kept}{leftover}).')


class StopSignals:
  """Remembers the first SIGTERM or SIGINT, so the training loop can save before it stops; a second
  one stops the process at once (the newest complete checkpoint is still intact)."""

  def __init__(self):
    self.signum: Optional[int] = None

  @property
  def requested(self) -> bool:
    return self.signum is not None

  def handle(self, signum: int, frame) -> None:  # pylint: disable=unused-argument
    if self.signum is not None:
      signal.signal(signum, signal.SIG_DFL)
      os.kill(os.getpid(), signum)
      return
    self.signum = signum
    logging.warning('%s received: saving a checkpoint after this step (with several hosts, the next step they '
                    'all check), then stopping (send it again to stop at once).', signal.Signals(signum).name)


class StopAgreement:
  """When a run of several hosts stops: every host saves the same step and stops there, whichever
  hosts the signal reached, so none is left waiting in a collective for one that stopped.

  On one host a signal is acted on at the step it arrives. On several, the hosts compare their
  flags (an all-gather, which waits for the device steps in flight) at the first step of every
  `every` steps and at the last, and all act on the largest signal number any host received.
  """

  def __init__(self, every: int):
    self.every = every
    self.next_check = 0  # The first step at or after which the hosts compare their flags.

  def signum(self, stop: StopSignals, done: int, last: bool) -> Optional[int]:
    """The signal all hosts act on after step `done` (None: go on)."""
    if jax.process_count() == 1:
      return stop.signum
    if done < self.next_check and not last:
      return None
    self.next_check = done + self.every
    signums = multihost_utils.process_allgather(np.asarray(stop.signum or 0, np.int32))
    return int(np.max(signums)) or None


@contextlib.contextmanager
def stop_signals() -> Iterator[StopSignals]:
  """SIGTERM and SIGINT set a StopSignals flag inside the block (main thread only; elsewhere the
  flag is never set), and their previous handlers come back after it."""
  stop = StopSignals()
  if threading.current_thread() is not threading.main_thread():
    yield stop
    return
  previous = {s: signal.signal(s, stop.handle) for s in STOP_SIGNALS}
  try:
    yield stop
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler if handler is not None else signal.SIG_DFL)


def restore_latest(config: ml_collections.ConfigDict, workdir: str, model, tx, mesh: Mesh) -> tuple[TrainState, int]:
  """(state, step) of the workdir's newest readable checkpoint; WorkdirError when there is none,
  CheckpointError (check_fits) when the checkpoints hold other arrays than this config's state.
  Unreadable newer checkpoints are logged and left where they are."""
  directory = os.path.join(workdir, CHECKPOINT_DIR)
  existing = os.path.abspath(workdir)
  while not os.path.exists(existing):  # The workdir, or the part of its path that exists.
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise WorkdirError(f'The workdir {workdir} cannot hold a run: {existing} is a file. Give a --workdir '
                       f'that is a folder (the one the run was trained in).')
  manager = make_manager(workdir, config.training.keep_checkpoints) if os.path.isdir(directory) else None
  if manager is None or manager.latest_step() is None:
    raise WorkdirError(
        f'No checkpoint in {directory}: train first with --mode=train and the same --workdir.')
  abstract = abstract_state(model, config, tx, mesh)
  check_fits(directory, abstract, config)
  state, step, _ = restore_newest(manager, abstract)
  return state, step
