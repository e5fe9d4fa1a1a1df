"""Atomic writes: the target appears whole or not at all, and an earlier version survives a failure."""

import json
import os

import numpy as np
import pytest

from ddpm_jax import atomic_io


def test_writes_land_under_the_final_name_only(tmp_path):
  path = str(tmp_path / 'sub' / 'x.npz')
  atomic_io.savez(path, a=np.arange(3))
  with np.load(path) as f:
    np.testing.assert_array_equal(f['a'], [0, 1, 2])
  atomic_io.write_json(str(tmp_path / 'x.json'), {'b': 1, 'a': 2}, sort_keys=True)
  assert list(json.load(open(tmp_path / 'x.json'))) == ['a', 'b']
  assert sorted(os.listdir(tmp_path)) == ['sub', 'x.json'] and os.listdir(tmp_path / 'sub') == ['x.npz']


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
  path = str(tmp_path / 'x.txt')
  atomic_io.write_text(path, 'old')
  with pytest.raises(RuntimeError):
    with atomic_io.replacing(path, 'w') as f:
      f.write('half of the new')
      raise RuntimeError('killed mid-write')
  assert open(path).read() == 'old'
  assert os.listdir(tmp_path) == ['x.txt']


def test_the_data_and_the_rename_are_synced_to_the_disk(tmp_path, monkeypatch):
  """fsync of the file before the rename, then of its directory after it (a power loss keeps
  either the old file or the whole new one)."""
  events = []
  real_fsync, real_replace = os.fsync, os.replace
  monkeypatch.setattr(os, 'fsync', lambda fd: events.append(('fsync', os.readlink(f'/proc/self/fd/{fd}'))) or real_fsync(fd))
  monkeypatch.setattr(os, 'replace', lambda a, b: events.append(('replace', b)) or real_replace(a, b))
  path = str(tmp_path / 'run_info.json')
  atomic_io.write_json(path, {'step': 3})
  assert [e[0] for e in events] == ['fsync', 'replace', 'fsync']
  assert events[0][1].startswith(path + '.tmp-') and events[1][1] == path and events[2][1] == str(tmp_path)
  assert json.load(open(path)) == {'step': 3}


def test_a_failed_write_names_the_target_file(tmp_path, monkeypatch):
  """A full disk fails a write or close with an OSError that names no file: the target is named."""
  import errno  # pylint: disable=g-import-not-at-top

  def full(fd):
    raise OSError(errno.ENOSPC, 'No space left on device')

  monkeypatch.setattr(os, 'fsync', full)
  path = str(tmp_path / 'samples.npz')
  with pytest.raises(OSError) as error:
    atomic_io.savez(path, a=np.arange(3))
  assert error.value.errno == errno.ENOSPC and error.value.filename == path
  assert os.listdir(tmp_path) == []


def dead_pid() -> int:
  """The pid of a process that has exited and been reaped."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  return int(subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True,
                            check=True).stdout)


def test_a_killed_writers_temporaries_are_removed_by_the_next_write_and_live_ones_kept(tmp_path):
  """kill -9 leaves PATH.tmp-PID behind: the next write of PATH removes it when its process is gone
  and nothing holds its lock; a live process's (here: our parent's) or a locked one (a writer on
  another machine sharing the disk, whose pid means nothing here) stays."""
  import fcntl  # pylint: disable=g-import-not-at-top
  path = str(tmp_path / 'stats.npz')
  dead, other_machine = dead_pid(), dead_pid()
  for pid in (dead, os.getppid(), other_machine):
    (tmp_path / f'stats.npz.tmp-{pid}').write_bytes(b'part of it')
  (tmp_path / f'stats.npz.tmp-{dead}.old').mkdir()
  (tmp_path / f'other.npz.tmp-{dead}').write_bytes(b'another file\'s')
  with open(tmp_path / f'stats.npz.tmp-{other_machine}', 'rb') as held:
    fcntl.flock(held.fileno(), fcntl.LOCK_EX)  # As a writer holds it.
    atomic_io.savez(path, a=np.arange(3))
  assert sorted(os.listdir(tmp_path)) == sorted(['stats.npz', f'stats.npz.tmp-{os.getppid()}',
                                                 f'stats.npz.tmp-{other_machine}', f'other.npz.tmp-{dead}'])
  assert atomic_io.remove_stale(path) == [str(tmp_path / f'stats.npz.tmp-{other_machine}')]  # Its lock is gone.
  with atomic_io.replacing(path) as f:  # Each writer holds the lock that tells its temporary is in use.
    assert atomic_io._locked(f.name)  # pylint: disable=protected-access
  assert not atomic_io._locked(path)  # pylint: disable=protected-access


def test_a_zombie_is_not_alive(tmp_path):
  """A process killed but not yet reaped by its parent (a zombie) holds no file any more."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  child = subprocess.Popen([sys.executable, '-c', 'pass'])
  try:
    assert atomic_io.process_alive(os.getpid())
    for _ in range(200):  # Until it has exited; never poll(), which would reap it.
      with open(f'/proc/{child.pid}/stat', 'rb') as f:
        if f.read().rsplit(b')', 1)[1].split()[0] == b'Z':
          break
      time.sleep(0.05)
    assert not atomic_io.process_alive(child.pid)
  finally:
    child.wait()
  assert not atomic_io.process_alive(child.pid) and not atomic_io.process_alive(2 ** 70)


def test_a_folder_appears_whole_replaces_an_earlier_one_and_a_failure_leaves_the_disk_as_it_was(tmp_path):
  parent = tmp_path / 'runs'
  parent.mkdir()
  times = os.stat(parent).st_mtime_ns
  path = str(parent / 'made' / 'export')
  with pytest.raises(RuntimeError):
    with atomic_io.temporary_folder(path) as tmp:
      atomic_io.write_text(os.path.join(tmp, 'a.txt'), 'half of it')
      raise RuntimeError('stopped mid-write')
  assert os.listdir(parent) == [] and os.stat(parent).st_mtime_ns == times  # The folders made for it too.
  for content in ('first', 'second'):  # New, then over the earlier folder.
    with atomic_io.temporary_folder(path) as tmp:
      atomic_io.write_text(os.path.join(tmp, f'{content}.txt'), content)
      assert not os.path.exists(path) or os.listdir(path) != [f'{content}.txt']  # Not in place before the move.
      atomic_io.replace_folder(tmp, path)
    assert os.listdir(path) == [f'{content}.txt'] and os.listdir(parent / 'made') == ['export']
  empty = str(tmp_path / 'empty')
  os.mkdir(empty)
  with atomic_io.temporary_folder(empty) as tmp:
    atomic_io.write_text(os.path.join(tmp, 'x.txt'), 'x')
    atomic_io.replace_folder(tmp, empty)
  assert os.listdir(empty) == ['x.txt']
