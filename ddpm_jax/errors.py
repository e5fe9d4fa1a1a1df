"""Every error type a user of ddpm-jax can meet, in one place; it imports nothing of the package.

The command line (ddpm_jax/cli.py) prints a UserError as one line `error: <message>` and exits
with status 1, so each message names the problem and the fix. The others are raised to callers
of the library (or handled where they arise) and say the same in their messages.
"""

import errno
import math
import numbers
import os
import signal

import numpy as np

from ddpm_jax.atomic_io import meant_path


def one_line(text: object, limit: int = 0) -> str:
  """A message on one line (whitespace collapsed); of a Python traceback inside it, only the final
  exception line; cut to `limit` characters when limit > 0."""
  lines = str(text).splitlines()
  if any(line.startswith('Traceback') for line in lines):
    head = lines[:next(i for i, line in enumerate(lines) if line.startswith('Traceback'))]
    lines = head + [next(line for line in reversed(lines) if line.strip())]
  line = ' '.join(' '.join(lines).split())
  return line if limit <= 0 or len(line) <= limit else line[:limit - 3] + '...'


# Temporary names of files written whole (ddpm_jax/atomic_io.py): the file meant is without the suffix.
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# A full disk in other libraries' words (TensorFlow's event writer, tensorstore).
DISK_FULL_TEXTS = ('No space left on device', 'Disk quota exceeded', "os_error_code='28'")
_NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)
_NOT_A_FOLDER = (errno.ENOTDIR, errno.EEXIST, errno.EISDIR)


def os_error_line(error: OSError, workdir: str = '') -> str:
  """An operating-system error of a run in one line: what failed, the path, the reason and the fix
  (which depends on the errno). `workdir` is named when the error carries no file name; the fixes
  speak of --workdir only for paths in it."""
  path = meant_path(str(error.filename)) if error.filename else workdir
  reason = error.strerror or one_line(error)
  where = f' {path}' if path else ''
  in_workdir = bool(workdir) and (path == workdir or path.startswith(workdir.rstrip(os.sep) + os.sep))
  if error.errno in DISK_FULL_ERRNOS:
    other = ' (or give a --workdir on another disk)' if in_workdir else ''
    return f'Could not write{where}: {reason}. Free space on that disk{other} and rerun the same command.'
  if error.errno == errno.EROFS:
    fix = ('Give a --workdir on a writable disk (to sample or evaluate a run kept on a read-only one, copy its '
           'workdir to a writable disk)' if in_workdir else 'Point the config at a writable disk')
    return f'Could not write{where}: {reason}. {fix}.'
  if error.errno in _NOT_WRITABLE:
    fix = 'Give a --workdir you may read and write, or change' if in_workdir else 'Change'
    return f'Could not use{where}: {reason}. {fix} its permissions.'
  if error.errno in _NOT_A_FOLDER:
    return f'Could not use{where}: {reason}. Give a --workdir that is a folder (or a new path), not a file.'
  if error.errno == errno.ENOENT:
    return f'Could not find{where}: {reason}. Check that the path exists (was it moved or deleted?) and rerun.'
  name = errno.errorcode.get(error.errno, 'OSError') if error.errno else type(error).__name__
  return f'Could not use{where}: {reason} ({name}). Check that file system and rerun the same command.'


def disk_full_error(path: str) -> OSError:
  """The OSError of a full disk at `path`, for another library's error that only says so in its text."""
  return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)


class UserError(Exception):
  """A failure the user can fix (bad config, workdir, data, checkpoint): one line on the CLI."""


class ConfigError(UserError, ValueError):
  """A config that cannot work; the message names the field and the fix."""


class InitFromError(ConfigError):
  """config.training.init_from cannot start this run: a missing path, no checkpoint, or a
  checkpoint of a different network. The message names it and the fix."""


class MetricsError(ConfigError):
  """A metric that cannot be computed as configured; the message says how to fix it."""


class WorkdirError(UserError, RuntimeError):
  """The workdir cannot be used as asked (another run's model, no checkpoint, ...)."""


class WorkdirFileError(WorkdirError, ValueError):
  """A file of a workdir (config.json, run_info.json) that cannot be read back: the message names
  it and says to restore or delete it. A ValueError too, for the tools that read runs (compare)."""


class DataError(UserError, ValueError):
  """Data that cannot be used as configured; the message names the fix."""


class DatasetUnavailableError(DataError):
  """A dataset cannot be found or fetched; the message says how to provide it."""


class CheckpointError(UserError, RuntimeError):
  """A checkpoint cannot be written, or none can be read; the message names the path and the fix."""


class TrainingDiverged(UserError, FloatingPointError):
  """A NaN or infinite loss or gradient with config.training.skip_nonfinite_steps off."""


class RunError(ValueError):
  """A workdir that cannot be read as a run (no config.json, no event files, ...)."""


class ClassifierCacheError(ValueError):
  """A cached classifier that cannot be used; the message names the file and the fix."""


class StatsFileError(ValueError):
  """A stats file is unreadable or not FID statistics."""


class InceptionWeightsError(ValueError):
  """The Inception weights file is missing, unreadable or not what the network needs."""


class MissingInceptionWeightsError(InceptionWeightsError):
  """No file at the weights path; the message says what to download and how to convert it."""


class ConversionError(ValueError):
  """Weights from another framework (a diffusers UNet, pytorch-fid's Inception) that do not fit
  our network; the message names what differs."""


class Preempted(Exception):
  """Training stopped on SIGTERM or SIGINT after saving the checkpoint of `step` at `path`."""

  def __init__(self, signum: int, step: int, path: str):
    self.signum, self.step, self.path = signum, step, path
    super().__init__(f'{signal.Signals(signum).name} at step {step}; saved {path}. '
                     f'Rerun the same command to resume from it.')


class Terminated(BaseException):
  """SIGTERM outside the training loop (whose own handler saves the current step first).

  A BaseException, like KeyboardInterrupt for SIGINT, so that no `except Exception` on the way
  (a checkpoint judged unreadable, an image file judged bad) mistakes a stop for damage."""


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


def require(ok: bool, message: str) -> None:
  """The config checks' one test: ConfigError(message) unless ok."""
  if not ok:
    raise ConfigError(message)


def _bounds(low, high, low_open: bool, high_open: bool) -> str:
  text = lambda x: 'inf' if x == math.inf else '-inf' if x == -math.inf else repr(x)
  return f'{"(" if low_open else "["}{text(low)}, {text(high)}{")" if high_open else "]"}'


def in_range(value, field: str, low=-math.inf, high=math.inf, low_open: bool = False,
              high_open: bool = False, integer: bool = False, allow_inf: bool = False, note: str = '') -> None:
  """The one range check: `value` of config.`field` is a number (an integer with `integer`; never a
  bool) in the interval from low to high, each end open or closed. Infinite ends are excluded (inf
  and -inf are refused) unless allow_inf (then high=math.inf is a closed end); NaN is never in range.
  Raises ConfigError naming the field, the value and the range; `note` (e.g. ' (0 = never)') follows
  the range."""
  low_open = low_open or low == -math.inf
  high_open = high_open or (high == math.inf and not allow_inf)
  interval = _bounds(low, high, low_open, high_open)
  number = (numbers.Integral if integer else numbers.Real)
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, number):
    raise ConfigError(f'config.{field}={value!r} is not {"an integer" if integer else "a number"}: it must be '
                      f'{"an integer" if integer else "a number"} in {interval}{note}.')
  above = low < value if low_open else low <= value
  below = value < high if high_open else value <= high
  if not (above and below):  # NaN fails both comparisons.
    raise ConfigError(f'config.{field}={value!r} is out of range: it must be in {interval}{note}.')
