"""Files and folders written atomically (every function takes the path first): a temporary beside the target, PATH.tmp-PID,
renamed over it when complete, so a killed process never leaves a partial file under the final name. The file's data is flushed
to the disk before the rename and the directory entry after it, so a power loss cannot leave an empty or partial file under the
final name either.

A temporary that a killed process left (kill -9, a lost machine: no code of its own could remove it) is removed by the next
write of the same target (remove_stale): one whose process is gone from this machine and which no process holds locked (the
writer holds an flock on it, which the operating system drops when the writer dies, so a writer on another machine sharing the
disk keeps its temporary).
"""

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
from typing import IO, Iterator

import numpy as np


# The suffix of a temporary (PATH.tmp-PID, and PATH.tmp-PID.old: an earlier folder renamed aside).
TEMPORARY_SUFFIX = r'\.tmp-(\d+)(?:\.old)?'
_TEMPORARY_IN_PATH = re.compile(TEMPORARY_SUFFIX + r'(?=/|$)')


def temporary_path(path: str) -> str:
  """The name this process writes `path` under until it is complete."""
  return f'{path}.tmp-{os.getpid()}'


def meant_path(path: str) -> str:
  """`path` as the user knows it: without the suffix of a temporary anywhere in it (an error while
  writing names the temporary file, or a file inside a temporary folder)."""
  return _TEMPORARY_IN_PATH.sub('', path)


def process_alive(pid: int) -> bool:
  """Whether process `pid` runs on this machine (a zombie, killed but not yet reaped, does not)."""
  try:
    os.kill(pid, 0)
  except (ProcessLookupError, OverflowError):
    return False
  except PermissionError:  # Another user's process.
    return True
  try:
    with open(f'/proc/{pid}/stat', 'rb') as f:
      return f.read().rsplit(b')', 1)[1].split()[0] != b'Z'
  except (OSError, IndexError):  # No /proc (macOS): the signal test stands.
    return True


def _hold_lock(fd: int) -> None:
  """An flock on a temporary while it is written: it tells remove_stale, also on another machine, that its writer lives."""
  with contextlib.suppress(OSError):  # A file system without locks: the writer's pid alone marks it.
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _locked(path: str) -> bool:
  """Whether a live writer holds its lock on the temporary `path`."""
  try:
    fd = os.open(path, os.O_RDONLY)
  except OSError:
    return False
  try:
    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    return False
  except BlockingIOError:
    return True
  except OSError:  # No locks on this file system.
    return False
  finally:
    os.close(fd)


def remove_stale(path: str) -> list[str]:
  """Removes the temporaries of `path` (PATH.tmp-PID, files or folders, and PATH.tmp-PID.old) that killed writers left: of
  a process gone from this machine, unlocked. Returns what it removed. Never fails: what cannot be removed stays."""
  directory, name = os.path.split(os.path.abspath(os.path.expanduser(path)))
  pattern = re.compile(re.escape(name) + TEMPORARY_SUFFIX)
  try:
    entries = os.listdir(directory)
  except OSError:
    return []
  removed = []
  for entry in sorted(entries):
    match = pattern.fullmatch(entry)
    full = os.path.join(directory, entry)
    if not match or int(match.group(1)) == os.getpid() or process_alive(int(match.group(1))) or _locked(full):
      continue
    with contextlib.suppress(OSError):
      if os.path.isdir(full) and not os.path.islink(full):
        shutil.rmtree(full)
      else:
        os.remove(full)
      removed.append(full)
  return removed


def _missing_folders(directory: str) -> tuple[list[str], str]:
  """(the folders of `directory` that do not exist, innermost first; the innermost one that does)."""
  missing, existing = [], directory
  while not os.path.isdir(existing) and os.path.dirname(existing) != existing:
    missing.append(existing)
    existing = os.path.dirname(existing)
  return missing, existing


@contextlib.contextmanager
def replacing(path: str, mode: str = 'wb') -> Iterator[IO]:
  """Opens a temporary file for writing; renames it to `path` on success. On error (a full disk, a
  signal) it removes the temporary file and the folders made for it, and puts back the times of the
  folder they were made in, so a failed write leaves the disk as it was."""
  path = os.path.expanduser(path)
  directory = os.path.dirname(os.path.abspath(path))
  missing, existing = _missing_folders(directory)
  times = os.stat(existing)
  remove_stale(path)
  tmp = temporary_path(path)
  written = False
  try:
    os.makedirs(directory, exist_ok=True)
    with open(tmp, mode) as f:
      _hold_lock(f.fileno())
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
    written = True
    sync_directory(directory)
  except OSError as e:  # A failed write or close (a full disk) names no file: name the target.
    if e.filename is None:
      e.filename = path
    raise
  finally:
    if not written:
      _undo(tmp, missing, existing, times)


def _undo(tmp: str, made: list[str], parent: str, times: os.stat_result) -> None:
  """Removes a failed write's temporary (a file or a folder) and the folders made for it (innermost
  first), and gives `parent` back its times."""
  with contextlib.suppress(OSError):
    if os.path.isdir(tmp) and not os.path.islink(tmp):
      shutil.rmtree(tmp)
    elif os.path.lexists(tmp):
      os.remove(tmp)
    for directory in made:
      os.rmdir(directory)
    os.utime(parent, ns=(times.st_atime_ns, times.st_mtime_ns))


@contextlib.contextmanager
def temporary_folder(path: str) -> Iterator[str]:
  """A new empty folder beside `path` (PATH.tmp-PID) to build `path` in; the block moves it into
  place (replace_folder) when complete. Whatever is left of it when the block ends is removed; on an
  error or a signal the folders made for it go too and their parent gets its times back, so a
  failed run leaves the disk as it was. A killed run's folder is removed by the next (remove_stale)."""
  path = os.path.abspath(os.path.expanduser(path))
  missing, existing = _missing_folders(os.path.dirname(path))
  times = os.stat(existing)
  remove_stale(path)
  tmp = temporary_path(path)
  done, fd = False, None
  try:
    shutil.rmtree(tmp, ignore_errors=True)  # This pid's, of a killed process long gone.
    os.makedirs(tmp)
    fd = os.open(tmp, os.O_RDONLY)
    _hold_lock(fd)
    yield tmp
    done = True
  finally:
    if fd is not None:
      os.close(fd)
    shutil.rmtree(f'{tmp}.old', ignore_errors=True)
    if done:
      shutil.rmtree(tmp, ignore_errors=True)
    else:
      _undo(tmp, missing, existing, times)


def replace_folder(tmp: str, path: str) -> None:
  """Moves the complete folder `tmp` (of temporary_folder) to `path` by a rename: atomic where `path`
  is absent or an empty folder. An earlier folder at `path` is renamed aside first (TMP.old, removed
  by temporary_folder), so `path` never holds a mixture of the two."""
  try:
    os.rename(tmp, path)
  except OSError as e:
    if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
      raise
    os.rename(path, f'{tmp}.old')
    try:
      os.rename(tmp, path)
    except BaseException:
      os.rename(f'{tmp}.old', path)  # The earlier folder back in place.
      raise
  sync_directory(os.path.dirname(os.path.abspath(path)))


def sync_directory(directory: str) -> None:
  """Flushes a directory's entries (a rename into it) to the disk; a no-op where directories
  cannot be opened (some platforms and file systems)."""
  try:
    fd = os.open(directory, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:  # EINVAL: this file system does not sync directories.
    pass
  finally:
    os.close(fd)


def write_bytes(path: str, content: bytes) -> None:
  with replacing(path, 'wb') as f:
    f.write(content)


def write_text(path: str, text: str) -> None:
  with replacing(path, 'w') as f:
    f.write(text)


def write_json(path: str, value, sort_keys: bool = False) -> None:
  with replacing(path, 'w') as f:
    json.dump(value, f, indent=2, sort_keys=sort_keys)


def savez(path: str, **arrays: np.ndarray) -> None:
  """np.savez to exactly `path` (no .npz appended)."""
  with replacing(path, 'wb') as f:
    np.savez(f, **arrays)


def save_npy(path: str, array: np.ndarray) -> None:
  with replacing(path, 'wb') as f:
    np.save(f, array)
