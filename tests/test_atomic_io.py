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
