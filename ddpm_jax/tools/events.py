"""The TensorBoard scalars of runs, read back from their workdirs' event files (for
ddpm_jax/tools/compare.py and docs/make_results.py).

TensorBoard is imported inside the readers only, so this module loads without it.
"""

import os
from typing import NamedTuple, Optional, Sequence

import numpy as np

from ddpm_jax.errors import RunError
from ddpm_jax.layout import has_event_files
SKIPPED_DIRS = ('checkpoints',)  # Never holds events; can be large.


class Series(NamedTuple):
  """One scalar's history: steps (int64, increasing) and values (float64) at them."""
  steps: np.ndarray
  values: np.ndarray


def event_dirs(workdir: str) -> list[str]:
  """The directories under workdir (itself included) that hold TensorBoard event files."""
  found = []
  for root, dirs, _ in os.walk(workdir):
    dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS)
    if has_event_files(root):
      found.append(root)
  return found


def _tensor_scalar(tensor_proto) -> Optional[float]:
  """The float in a scalar tensor proto, or None when it is not a numeric scalar."""
  from tensorboard.util import tensor_util  # pylint: disable=g-import-not-at-top
  array = tensor_util.make_ndarray(tensor_proto)
  if array.shape not in ((), (1,)) or array.dtype.kind not in 'fiub':
    return None
  return float(array.reshape(()))


def _dir_scalars(directory: str) -> dict[str, list[tuple[float, int, float]]]:
  """(wall time, step, value) per tag of one event directory, in the order they were read.

  Scalars come as tensors under the 'scalars' plugin (tf.summary.scalar in TF 2, what CLU
  writes) or as TF 1 simple values; other plugins (hparams, images, text) are skipped.
  """
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  accumulator = event_accumulator.EventAccumulator(
      directory, size_guidance={event_accumulator.TENSORS: 0, event_accumulator.SCALARS: 0},
      purge_orphaned_data=False)
  accumulator.Reload()
  tags = accumulator.Tags()
  out = {}
  for tag in tags.get(event_accumulator.TENSORS, []):
    if accumulator.SummaryMetadata(tag).plugin_data.plugin_name != 'scalars':
      continue
    events = [(e.wall_time, e.step, _tensor_scalar(e.tensor_proto)) for e in accumulator.Tensors(tag)]
    out[tag] = [e for e in events if e[2] is not None]
  for tag in tags.get(event_accumulator.SCALARS, []):
    out.setdefault(tag, []).extend((e.wall_time, e.step, e.value) for e in accumulator.Scalars(tag))
  return out


def read_scalars(workdir: str, tags: Optional[Sequence[str]] = None) -> dict[str, Series]:
  """Every scalar logged in workdir's event files (or only `tags`), as {tag: Series}.

  Values are the float32 numbers TensorBoard stored, exactly. A step logged twice (a run
  resumed from a checkpoint older than its last log) keeps the value written last (by the
  events' wall time). Event files in subdirectories (e.g. eval/) are read too, not
  checkpoints/. Raises RunError when workdir holds no event files.
  """
  directories = event_dirs(workdir)
  if not directories:
    raise RunError(f'No TensorBoard event files in {workdir}: is it the --workdir of a run that '
                   f'has logged at least once?')
  events: dict[str, list[tuple[float, int, float]]] = {}
  for directory in directories:
    for tag, tag_events in _dir_scalars(directory).items():
      if tags is None or tag in tags:
        events.setdefault(tag, []).extend(tag_events)
  merged = {}
  for tag, tag_events in events.items():  # Stable sort: ties keep the order read.
    merged[tag] = {step: value for _, step, value in sorted(tag_events, key=lambda e: e[0])}
  return {tag: Series(np.array(sorted(by_step), np.int64),
                      np.array([by_step[s] for s in sorted(by_step)], np.float64))
          for tag, by_step in merged.items()}


def join_on_step(x: Series, y: Series) -> tuple[np.ndarray, np.ndarray]:
  """(x values, y values) at the steps both were logged at, e.g. loss against epoch."""
  _, x_index, y_index = np.intersect1d(x.steps, y.steps, return_indices=True)
  return x.values[x_index], y.values[y_index]


