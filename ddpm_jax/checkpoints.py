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
import errno
import os
import signal
import threading
import time
from typing import Any, Iterator, NamedTuple, Optional

from absl import logging
import jax
import ml_collections
import orbax.checkpoint as ocp
from jax.sharding import Mesh

from ddpm_jax.errors import CheckpointError, WorkdirError, one_line
from ddpm_jax.train_state import TrainState, abstract_state

CHECKPOINT_DIR = 'checkpoints'
CORRUPT_PREFIX = 'corrupt-'  # Unreadable step dirs set aside: checkpoints/corrupt-<step>-<time>.
TMP_SUFFIX = '.orbax-checkpoint-tmp'  # Orbax's unfinished saves: checkpoints/<step>.orbax-checkpoint-tmp.
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
DISK_FULL_TEXTS = ('No space left on device', 'Disk quota exceeded', "os_error_code='28'")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
DEFAULT_ITEM = 'default'  # The folder of a step that holds the train state (orbax's single item).


class Unreadable(NamedTuple):
  """A checkpoint whose restore failed: its step, its directory and the error, in one line."""
  step: int
  path: str
  error: str


def checkpoint_dir(workdir: str) -> str:
  return os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))


def make_manager(workdir: str, keep: int) -> ocp.CheckpointManager:
  """The orbax manager of workdir/checkpoints, keeping the newest `keep` steps."""
  return ocp.CheckpointManager(checkpoint_dir(workdir),
                               options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))


def step_dir(manager: ocp.CheckpointManager, step: int) -> str:
  return os.path.join(str(manager.directory), str(step))


def restore_step(manager: ocp.CheckpointManager, abstract: Any, step: int) -> Any:
  """Restores the checkpoint of `step` into the shapes, dtypes and shardings of `abstract`."""
  return manager.restore(step, args=ocp.args.StandardRestore(abstract))


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


def array_shapes(tree: Any) -> dict[str, tuple]:
  """{'params/conv/kernel': shape, ...} of every leaf with a shape (arrays, metadata, abstract)."""
  def name(key) -> str:
    return str(getattr(key, 'key', getattr(key, 'name', getattr(key, 'idx', key))))
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {'/'.join(name(k) for k in path): tuple(leaf.shape) for path, leaf in leaves if hasattr(leaf, 'shape')}


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


def check_fits(directory: str, abstract: Any) -> None:
  """Raises CheckpointError when the newest checkpoint in `directory` with readable metadata holds
  other arrays than `abstract` (a different network), naming the first differences."""
  for step in reversed(finished_steps(directory)):
    saved = saved_shapes(os.path.join(directory, str(step)))
    if saved:
      break
  else:
    return
  wanted = array_shapes(abstract)
  differences = [f'{k}: {saved.get(k, "missing")} in the checkpoint, {wanted.get(k, "absent")} in the model'
                 for k in sorted(set(saved) | set(wanted)) if saved.get(k) != wanted.get(k)]
  if differences:
    raise CheckpointError(
        f'The checkpoint {os.path.join(directory, str(step))} does not fit the new model ({len(differences)} '
        f'arrays differ: {"; ".join(differences[:3])}). Use a new --workdir for this model.')


def is_disk_full(error: BaseException) -> bool:
  """True when `error` (or one it was raised from) says the disk or quota is full."""
  while error is not None:
    if isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS:
      return True
    if any(text in str(error) for text in DISK_FULL_TEXTS):
      return True
    error = error.__cause__ or error.__context__
  return False


def is_io_error(error: BaseException) -> bool:
  """True for failures of the file system (OSError, or tensorstore's errors carrying an OS code)."""
  return isinstance(error, OSError) or 'os_error_code=' in str(error) or is_disk_full(error)


class CheckpointWriter:
  """Saves train states one at a time in the background (orbax); a failed write raises
  CheckpointError naming the directory, so a full disk stops training with the older checkpoints
  intact. Errors surface at the next save or at wait()."""

  def __init__(self, manager: ocp.CheckpointManager):
    self.manager = manager
    self.in_flight: Optional[int] = None  # The step being written in the background.

  def save(self, step: int, state: Any) -> str:
    """Starts writing `state` as `step` (after the previous write ends); returns its directory."""
    self.wait()
    self.in_flight = step
    try:
      self.manager.save(step, args=ocp.args.StandardSave(state))
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
    logging.warning('%s received: saving a checkpoint after this step, then stopping (send it again to '
                    'stop at once).', signal.Signals(signum).name)


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


def restore_latest(config: ml_collections.ConfigDict, workdir: str, model, tx, mesh: Mesh,
                   check_fits_first: bool = False) -> tuple[TrainState, int]:
  """(state, step) of the workdir's newest readable checkpoint; WorkdirError when there is none.

  Unreadable newer checkpoints are logged and left where they are. check_fits_first: first raise
  CheckpointError when the checkpoints hold other arrays than this model's.
  """
  directory = os.path.join(workdir, CHECKPOINT_DIR)
  manager = make_manager(workdir, config.training.keep_checkpoints) if os.path.isdir(directory) else None
  if manager is None or manager.latest_step() is None:
    raise WorkdirError(
        f'No checkpoint in {directory}: train first with --mode=train and the same --workdir.')
  abstract = abstract_state(model, config, tx, mesh)
  if check_fits_first:
    check_fits(directory, abstract)
  state, step, _ = restore_newest(manager, abstract)
  return state, step
