"""Files written atomically (every function takes the path first): a temporary file beside the target, renamed over it when complete,
so a killed process never leaves a partial file under the final name. The file's data is flushed to the disk before the rename
and the directory entry after it, so a power loss cannot leave an empty or partial file under the final name either."""

import contextlib
import json
import os
from typing import IO, Iterator

import numpy as np


@contextlib.contextmanager
def replacing(path: str, mode: str = 'wb') -> Iterator[IO]:
  """Opens a temporary file for writing; renames it to `path` on success. On error (a full disk, a
  signal) it removes the temporary file and the folders made for it, and puts back the times of the
  folder they were made in, so a failed write leaves the disk as it was."""
  path = os.path.expanduser(path)
  directory = os.path.dirname(os.path.abspath(path))
  missing, existing = [], directory
  while not os.path.isdir(existing) and os.path.dirname(existing) != existing:
    missing.append(existing)  # Innermost first.
    existing = os.path.dirname(existing)
  times = os.stat(existing)
  tmp = f'{path}.tmp-{os.getpid()}'
  written = False
  try:
    os.makedirs(directory, exist_ok=True)
    with open(tmp, mode) as f:
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
  """Removes a failed write's temporary file and the folders made for it (innermost first), and
  gives `parent` back its times."""
  with contextlib.suppress(OSError):
    if os.path.exists(tmp):
      os.remove(tmp)
    for directory in made:
      os.rmdir(directory)
    os.utime(parent, ns=(times.st_atime_ns, times.st_mtime_ns))


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
