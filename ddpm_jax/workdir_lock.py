"""One writer per workdir: an exclusive lock that training and the diffusers converter hold while
they write a workdir, so a second such process is refused at once instead of corrupting the first.

The lock is `fcntl.flock` on WORKDIR/.lock. The operating system releases it when its holder's
file is closed, also when the process dies (`kill -9`, a lost machine), so a lock is never stale:
a lock file left by a dead process is simply locked again and its content overwritten. The holder
writes its pid, host and start time into the file, and a refused process names them. flock locks
an open file, not a process: a second lock of the same workdir in the same process is refused too.

Sampling, eval and figures may run beside a trainer and take no lock: they read checkpoints and
config.json, and write only names training never writes (training: config.json, run_info.json,
checkpoints/, samples/preview_*, its own events file; --mode=sample: samples/samples_*; --mode=
figures: samples/reverse_process_*, samples/forward_process_*; --mode=eval: eval/ and its own events
file; event files carry the writer's pid in their names).

A locked block that writes nothing at the workdir's top level leaves no trace of the lock: the lock
file it made is removed, a workdir made for it too, or else the workdir's times (and an earlier lock
file's content and times) are put back, so a run refused by a later check leaves the workdir as it was.
"""

import contextlib
import dataclasses
import errno
import fcntl
import json
import logging
import os
import socket
import time
from typing import Iterator, Optional

from ddpm_jax.errors import WorkdirError, is_disk_full, os_error_line

LOCK_FILE = '.lock'  # Hidden: `glob('*')` (tools, tests' snapshots) passes it by.
# flock errors of a file system without locks: training goes on unlocked, with a warning.
_UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


@dataclasses.dataclass(frozen=True)
class _Trace:
  """What taking the lock changed in the workdir, to undo when the locked block wrote nothing."""
  made_dirs: tuple[str, ...]  # Folders made for the lock, innermost first.
  made_file: bool  # Whether the lock file was made (not already there).
  old_holder: bytes  # The content of a lock file already there (an earlier run's holder).
  old_file_times_ns: tuple[int, int]  # Its (atime, mtime).
  times_ns: tuple[int, int]  # The workdir's (atime, mtime) before the lock file was made.
  names: frozenset[str]  # The workdir's entries right after the lock was taken.
  mtime_ns: int  # The workdir's mtime right after the lock was taken.


def lock_path(workdir: str) -> str:
  return os.path.join(workdir, LOCK_FILE)


def holder_info() -> dict:
  """What the holder writes into the lock file: who it is, for the message of a refused process."""
  return {'pid': os.getpid(), 'host': socket.gethostname(),
          'started': time.strftime('%Y-%m-%d %H:%M:%S %z', time.localtime())}


def read_holder(fd: int) -> Optional[dict]:
  """The holder's info in the open lock file; None while the holder has not written it yet."""
  try:
    info = json.loads(os.pread(fd, 4096, 0).decode())
  except (ValueError, OSError):
    return None
  return info if isinstance(info, dict) else None


def is_gone(holder: dict) -> bool:
  """Whether the holder named in a lock file is a process of this host that has ended."""
  pid = holder.get('pid')
  if holder.get('host') != socket.gethostname() or not isinstance(pid, int) or pid <= 0:
    return False
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return True
  except OSError:  # Alive, under another user.
    return False
  return False


def refusal(workdir: str, holder: Optional[dict]) -> WorkdirError:
  """The one-line error of a process refused the lock: who holds it and what to do. A holder that
  that has ended is not named as the holder: a new run may not have written its own info yet, or
  processes the dead one started hold the lock (a forked child inherits the locked open file)."""
  if holder and is_gone(holder):
    who = (f'another process (the lock file still names process {holder.get("pid")}, which has ended: a run '
           f'that has just taken the lock, or processes {holder.get("pid")} started, its data-loading workers '
           f'say; `fuser -v {lock_path(workdir)}` lists the holders)')
  elif holder:
    who = f'process {holder.get("pid")} on host {holder.get("host")} (started {holder.get("started")})'
  else:
    who = 'another process (it has not written its pid yet)'
  return WorkdirError(
      f'{workdir} is being written by {who}, which holds its lock {lock_path(workdir)}. Wait for that run '
      f'to end or stop it, or use another --workdir; --mode=sample, eval and figures may run beside it.')


def missing_dirs(workdir: str) -> tuple[str, ...]:
  """The folders that creating workdir would make, innermost first."""
  missing, path = [], os.path.abspath(workdir)
  while not os.path.lexists(path) and os.path.dirname(path) != path:
    missing.append(path)
    path = os.path.dirname(path)
  return tuple(missing)


def is_same_file(fd: int, path: str) -> bool:
  """Whether `path` still names the file open as fd (a holder may have removed it meanwhile)."""
  try:
    return os.path.samestat(os.fstat(fd), os.stat(path))
  except FileNotFoundError:
    return False


def lock_file(workdir: str) -> Optional[int]:
  """Opens and locks WORKDIR/.lock (making both if needed); the open fd, or None where the file
  system has no locks. Raises WorkdirError when another process holds it."""
  path = lock_path(workdir)
  while True:
    os.makedirs(workdir, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = read_holder(fd)
      os.close(fd)
      raise refusal(workdir, holder) from None
    except OSError as e:
      os.close(fd)
      if e.errno not in _UNSUPPORTED:
        raise
      logging.warning('Cannot lock %s (%s): nothing stops a second run from writing %s at the same time.',
                      path, e.strerror, workdir)
      return None
    if is_same_file(fd, path):
      return fd
    os.close(fd)  # Locked a file its last holder had just removed: lock the one there now.


def write_holder(fd: int) -> None:
  """Replaces the lock file's content with this process's info."""
  os.ftruncate(fd, 0)
  os.pwrite(fd, json.dumps(holder_info()).encode(), 0)


def take(workdir: str) -> tuple[Optional[int], _Trace]:
  """Locks the workdir; (the lock file's fd or None, what taking it changed)."""
  made_dirs = missing_dirs(workdir)
  had_file = os.path.lexists(lock_path(workdir))
  old_holder, old_file_times = b'', (0, 0)
  if had_file:
    with open(lock_path(workdir), 'rb') as f:
      old_holder = f.read()
    info = os.stat(lock_path(workdir))
    old_file_times = (info.st_atime_ns, info.st_mtime_ns)
  before = None if made_dirs else os.stat(workdir)
  times = (before.st_atime_ns, before.st_mtime_ns) if before else (0, 0)
  try:
    fd = lock_file(workdir)
  except OSError:  # E.g. a full disk: the folders made for the lock go again.
    remove_made(workdir, made_dirs, times)
    raise
  trace = _Trace(made_dirs, fd is not None and not had_file, old_holder, old_file_times, times, frozenset(), 0)
  try:
    if fd is not None:
      write_holder(fd)
    after = os.stat(workdir)
  except OSError:  # A full disk takes the lock file but not the holder's info: nothing of it stays.
    if fd is not None:
      with contextlib.suppress(OSError):
        remove_trace(workdir, trace, fd)
      os.close(fd)
    raise
  if not before:
    trace = dataclasses.replace(trace, times_ns=(after.st_atime_ns, after.st_mtime_ns))
  return fd, dataclasses.replace(trace, names=frozenset(os.listdir(workdir)), mtime_ns=after.st_mtime_ns)


def untouched(workdir: str, trace: _Trace) -> bool:
  """Whether the workdir's top level is as the lock left it (no entry made, removed or replaced)."""
  try:
    return (os.stat(workdir).st_mtime_ns == trace.mtime_ns
            and frozenset(os.listdir(workdir)) == trace.names)
  except OSError:
    return False


def remove_trace(workdir: str, trace: _Trace, fd: int) -> None:
  """Removes the lock file, and the folders made for it or else puts back the workdir's times; a
  lock file that was there before gets its earlier content and times back."""
  if not trace.made_file:
    os.ftruncate(fd, 0)
    os.pwrite(fd, trace.old_holder, 0)
    os.utime(lock_path(workdir), ns=trace.old_file_times_ns)
    os.utime(workdir, ns=trace.times_ns)
    return
  with contextlib.suppress(FileNotFoundError):
    os.remove(lock_path(workdir))
  remove_made(workdir, trace.made_dirs, trace.times_ns)


def remove_made(workdir: str, made_dirs: tuple[str, ...], times_ns: tuple[int, int]) -> None:
  """Removes the (empty) folders made for the lock, innermost first, or else puts back the
  workdir's times."""
  if not made_dirs:
    os.utime(workdir, ns=times_ns)
  for directory in made_dirs:
    try:
      os.rmdir(directory)
    except FileNotFoundError:  # Never made (the disk refused it): those above may have been.
      continue
    except OSError:  # Another process wrote there meanwhile: keep it and the folders above.
      return


@contextlib.contextmanager
def exclusive(workdir: str, enabled: bool = True) -> Iterator[None]:
  """Holds the workdir's lock while the block runs, making the workdir if needed.

  Raises errors.WorkdirError before anything is written when another process holds the lock or the
  workdir cannot be made. enabled=False (hosts other than 0 of a multi-host run, whose host 0 locks
  the shared workdir) takes no lock.
  """
  if not enabled:
    yield
    return
  try:
    fd, trace = take(workdir)
  except OSError as e:
    if is_disk_full(e):
      raise WorkdirError(os_error_line(e, workdir)) from None
    raise WorkdirError(f'Cannot use {workdir!r} as the workdir: {e.strerror or e} ({e.filename or workdir}). '
                       f'Give a --workdir that is a writable folder.') from None
  try:
    yield
  finally:
    if fd is not None and untouched(workdir, trace):
      with contextlib.suppress(OSError):
        remove_trace(workdir, trace, fd)
    if fd is not None:
      os.close(fd)  # Releases the lock.
