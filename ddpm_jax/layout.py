"""A workdir's layout (the names of its files and folders) and its records read back: the
config a run was made with and its run info; its TensorBoard event files.

Checkpoint folders are named in ddpm_jax/checkpoints.py, which owns them.
"""

import json
import os
import socket
import time

from ddpm_jax import atomic_io
from ddpm_jax.errors import RunError, WorkdirFileError, one_line

CONFIG_FILE = 'config.json'  # The resolved config of the run (configuration.save_config).
RUN_INFO_FILE = 'run_info.json'  # {"num_params": int, "wall_time_s": float, "step": int, ...}.
SAMPLES_DIR = 'samples'  # Preview grids, --mode=sample and --mode=figures output.
EVAL_DIR = 'eval'  # --mode=eval: metrics.json, guidance.md and the samples it scored.
EVENT_FILE_MARKER = 'tfevents'  # TensorBoard event files: events.out.tfevents.<time>.<host>...


def has_event_files(folder: str) -> bool:
  """Whether `folder` itself holds TensorBoard event files."""
  return os.path.isdir(folder) and any(EVENT_FILE_MARKER in name for name in os.listdir(folder))


def read_config(workdir: str) -> dict:
  """The run's config as the nested dict saved in workdir/config.json."""
  if not os.path.isdir(workdir):
    raise RunError(f'{workdir} is not a directory: give the --workdir of a training run.')
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise RunError(f'No {CONFIG_FILE} in {workdir}: is it the --workdir of a training run?')
  return read_config_file(path)


def read_json_record(path: str, fix: str) -> dict:
  """The JSON object in the workdir file `path`; WorkdirFileError (naming it, the problem and `fix`)
  when it does not parse (truncated, emptied, not an object)."""
  with open(path, 'rb') as f:
    content = f.read()
  try:
    value = json.loads(content)
  except ValueError as e:  # JSONDecodeError, or bytes that are not text.
    problem = 'is empty' if not content.strip() else f'does not parse ({one_line(e, limit=120)})'
  else:
    if isinstance(value, dict):
      return value
    problem = f'holds a JSON {type(value).__name__}, not an object'
  raise WorkdirFileError(f'{path} {problem}: it may have been cut short or edited. {fix}')


def read_config_file(path: str) -> dict:
  """A workdir's config.json (at `path`) as a nested dict; WorkdirFileError when it does not parse."""
  return read_json_record(path, 'Restore it from a backup, or delete it and rerun with the --config that run was '
                                'made with (training then writes it anew).')


def read_run_info(workdir: str) -> dict:
  """workdir/run_info.json (parameter count, wall time, step), or {} when it is absent."""
  path = os.path.join(workdir, RUN_INFO_FILE)
  if not os.path.exists(path):
    return {}
  return read_json_record(path, 'Restore it, or delete it: it holds only statistics (parameter count, wall '
                                'time, non-finite steps), which training writes anew; the wall time counted so far '
                                'is then lost.')


def config_value(config: dict, dotted: str, default=None):
  """config['a']['b'] for 'a.b', or default when any part is missing."""
  value = config
  for part in dotted.split('.'):
    if not isinstance(value, dict) or part not in value:
      return default
    value = value[part]
  return value


def discard_later_tensorboard_points(folder: str, first_step: int) -> None:
  """Makes TensorBoard drop every point logged in `folder` at first_step or later before now, so a
  rerun shows one point per step (a resumed run: not the killed run's points beside its own; an
  eval run again: not the earlier eval's).

  TensorBoard reads a folder's event files in name order (events.out.tfevents.<time>...) and purges
  on a restart: a SessionLog START event after the first one it has read. The marker file holds
  two, which purge whether or not earlier event files hold a START; it is named a second before
  now, so it sorts after every earlier run's files and before any this run writes.
  """
  from tensorboard.compat.proto import event_pb2  # pylint: disable=g-import-not-at-top
  from tensorboard.summary.writer import record_writer  # pylint: disable=g-import-not-at-top
  now = time.time()
  name = f'events.out.tfevents.{int(now) - 1:010d}.{socket.gethostname()}.resume-{first_step}'
  start = event_pb2.SessionLog(status=event_pb2.SessionLog.START)
  events = [event_pb2.Event(wall_time=now, file_version='brain.Event:2')]
  events += [event_pb2.Event(wall_time=now, step=first_step, session_log=start)] * 2
  with atomic_io.replacing(os.path.join(folder, name), 'wb') as f:
    writer = record_writer.RecordWriter(f)
    for event in events:
      writer.write(event.SerializeToString())
