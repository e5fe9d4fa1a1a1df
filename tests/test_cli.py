"""ddpm_jax/cli.py run in this process: operating-system faults (a workdir that is a file, a
read-only or full disk, a workdir file cut short) end as one line `error: ...` naming the path and
the fix, exit 1, no traceback, and leave the workdir's files as they were; a bug stays a traceback.

The faults are simulated (no root needed): open, os.open and os.mkdir raise the errno of the fault
for paths under the workdir.
"""

import builtins
import errno
import glob
import hashlib
import os
import shutil

import pytest

from configs import quickstart
from ddpm_jax import cli, errors, layout, workdir_lock

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def tiny_config():
  config = quickstart.get_config()
  config.cpu_devices = 1
  config.model.widths, config.model.time_embed_dim = (8, 16, 16, 8, 8), 16
  config.diffusion.num_timesteps = 20
  t = config.training
  t.batch_size, t.num_train_steps, t.checkpoint_every_steps, t.log_every_steps = 8, 2, 2, 2
  t.sample_every_steps, t.num_preview_samples = 0, 4
  config.sampling.num_samples = config.sampling.batch_size = 4
  config.eval.bpd_num_examples = config.eval.bpd_batch_size = 4
  config.eval.num_samples = 0
  return config


def file_hashes(directory: str) -> dict:
  """Every file below `directory` (hidden ones too) and the sha256 of its bytes; but the lock file,
  which each trainer that takes it fills with its own pid and start time (workdir_lock.py)."""
  hashes = {}
  for path in sorted(glob.glob(os.path.join(directory, '**'), recursive=True, include_hidden=True)):
    if os.path.isfile(path) and os.path.basename(path) != workdir_lock.LOCK_FILE:
      with open(path, 'rb') as f:
        hashes[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
  return hashes


def error_line(mode: str, workdir: str, capsys, config=None) -> str:
  """cli.run's one line for a failing `mode`: exit 1 (SystemExit of 'error: ...'), no traceback."""
  with pytest.raises(SystemExit) as stopped:
    cli.run(mode, config or tiny_config(), workdir)
  line = stopped.value.code
  assert isinstance(line, str) and line.startswith('error: ') and '\n' not in line, line
  assert 'Traceback' not in line and 'Traceback' not in capsys.readouterr().err
  return line


@pytest.fixture(scope='module')
def finished_run(tmp_path_factory):
  """A workdir trained to its last step (2), to copy for each fault."""
  workdir = str(tmp_path_factory.mktemp('cli') / 'run')
  cli.run('train', tiny_config(), workdir)
  assert os.path.isdir(os.path.join(workdir, 'checkpoints', '2'))
  return workdir


@pytest.fixture
def run_copy(finished_run, tmp_path):
  workdir = str(tmp_path / 'run')
  shutil.copytree(finished_run, workdir)
  return workdir


def fail_writes(monkeypatch, under: str, error_number: int, spare: tuple[str, ...] = ()) -> None:
  """Writes of files and new folders below `under` fail with error_number (a read-only or full
  disk); reads go on. Paths ending in one of `spare` are written as usual."""
  under = os.path.abspath(under)
  real_open, real_os_open, real_mkdir = builtins.open, os.open, os.mkdir

  def hit(path) -> bool:
    if not isinstance(path, (str, bytes, os.PathLike)):
      return False
    path = os.path.abspath(os.fsdecode(path))
    return (path == under or path.startswith(under + os.sep)) and not path.endswith(spare)

  def fault(path):
    return OSError(error_number, os.strerror(error_number), os.fsdecode(path))

  def open_(file, mode='r', *args, **kwargs):
    if hit(file) and any(c in mode for c in 'wax+'):
      raise fault(file)
    return real_open(file, mode, *args, **kwargs)

  def os_open(path, flags, *args, **kwargs):
    if hit(path) and flags & WRITE_FLAGS:
      raise fault(path)
    return real_os_open(path, flags, *args, **kwargs)

  def mkdir(path, *args, **kwargs):
    if hit(path):
      if os.path.isdir(path):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fsdecode(path))
      raise fault(path)
    return real_mkdir(path, *args, **kwargs)

  monkeypatch.setattr(builtins, 'open', open_)
  monkeypatch.setattr(os, 'open', os_open)
  monkeypatch.setattr(os, 'mkdir', mkdir)


# ---------------------------------------------------------------------------
# errors.os_error_line: the path and the fix by errno.

@pytest.mark.parametrize('number, start, fix', [
    (errno.ENOSPC, 'Could not write /w/samples/s.npz: No space left on device.', 'Free space on that disk'),
    (errno.EDQUOT, 'Could not write /w/samples/s.npz: Disk quota exceeded.', 'Free space on that disk'),
    (errno.EROFS, 'Could not write /w/samples/s.npz: Read-only file system.', 'Give a --workdir on a writable disk'),
    (errno.EACCES, 'Could not use /w/samples/s.npz: Permission denied.', 'Give a --workdir you may read and write'),
    (errno.ENOTDIR, 'Could not use /w/samples/s.npz: Not a directory.', 'Give a --workdir that is a folder'),
    (errno.ENOENT, 'Could not find /w/samples/s.npz: No such file or directory.', 'Check that the path exists'),
    (errno.EIO, 'Could not use /w/samples/s.npz: Input/output error (EIO).', 'Check that file system'),
])
def test_os_error_line_names_the_path_and_the_fix_of_each_errno(number, start, fix):
  line = errors.os_error_line(OSError(number, os.strerror(number), '/w/samples/s.npz.tmp-123'), '/w')
  assert line.startswith(start) and fix in line and '\n' not in line  # atomic_io's temporary name: the file meant.


def test_os_error_line_names_the_workdir_when_the_error_names_no_file():
  assert errors.os_error_line(OSError(errno.ENOSPC, 'No space left on device'), '/w') == (
      'Could not write /w: No space left on device. Free space on that disk (or give a --workdir on another disk) '
      'and rerun the same command.')
  assert errors.os_error_line(OSError(errno.EROFS, 'Read-only file system', '/cache/x'), '/w') == (
      'Could not write /cache/x: Read-only file system. Point the config at a writable disk.')


# ---------------------------------------------------------------------------
# The faults, through cli.run.

@pytest.mark.parametrize('mode', ['train', 'sample', 'eval'])
def test_a_workdir_that_is_a_file_is_one_line(mode, tmp_path, capsys):
  path = tmp_path / 'file'
  path.write_text('not a folder')
  for workdir in (str(path), str(path / 'run')):
    line = error_line(mode, workdir, capsys)
    assert workdir in line, line
  assert path.read_text() == 'not a folder' and sorted(os.listdir(tmp_path)) == ['file']


@pytest.mark.parametrize('mode, failed', [('train', '.lock'), ('sample', 'samples'),
                                          ('eval', 'eval')])
def test_a_read_only_workdir_is_one_line(mode, failed, run_copy, monkeypatch, capsys):
  before = file_hashes(run_copy)
  fail_writes(monkeypatch, run_copy, errno.EROFS)
  line = error_line(mode, run_copy, capsys)
  assert os.path.join(run_copy, failed) in line and 'Read-only file system' in line, line
  assert '--workdir' in line
  monkeypatch.undo()
  assert file_hashes(run_copy) == before


@pytest.mark.parametrize('mode, failed', [('sample', 'samples'), ('eval', 'eval')])
def test_a_full_disk_in_sample_and_eval_is_one_line(mode, failed, run_copy, monkeypatch, capsys):
  before = file_hashes(run_copy)
  fail_writes(monkeypatch, run_copy, errno.ENOSPC)
  line = error_line(mode, run_copy, capsys)
  assert line.startswith(f'error: Could not write {os.path.join(run_copy, failed)}: No space left on device. '
                         f'Free space on that disk'), line
  monkeypatch.undo()
  assert file_hashes(run_copy) == before


def test_a_full_disk_on_a_new_run_is_one_line(tmp_path, monkeypatch, capsys):
  """The lock file is written (a disk with a few bytes left), the run's own files are not."""
  workdir = str(tmp_path / 'new')
  fail_writes(monkeypatch, workdir, errno.ENOSPC, spare=(os.sep + '.lock', os.sep + 'new'))
  line = error_line('train', workdir, capsys)
  assert line.startswith(f'error: Could not write {workdir}') and 'No space left on device' in line, line
  monkeypatch.undo()
  assert not os.path.exists(workdir) or file_hashes(workdir) == {}


def test_a_full_disk_in_another_librarys_words_is_one_line(run_copy, monkeypatch, capsys):
  """TensorFlow's event writer and tensorstore say so in their own error types."""
  from ddpm_jax import generate  # pylint: disable=g-import-not-at-top

  def full(*args, **kwargs):
    raise ValueError('RESOURCE_EXHAUSTED: Failed writing: "x": No space left on device [os_error_code=\'28\']')

  monkeypatch.setattr(generate, 'sample', full)
  line = error_line('sample', run_copy, capsys)
  assert line.startswith(f'error: Could not write {run_copy}: No space left on device.'), line


def test_a_bug_stays_a_whole_traceback(run_copy, monkeypatch):
  from ddpm_jax import generate  # pylint: disable=g-import-not-at-top

  def bug(*args, **kwargs):
    raise KeyError('a bug')

  monkeypatch.setattr(generate, 'sample', bug)
  with pytest.raises(KeyError, match='a bug'):
    cli.run('sample', tiny_config(), run_copy)


@pytest.mark.parametrize('mode', ['train', 'sample', 'eval'])
@pytest.mark.parametrize('content', [b'', b'{"model": {"na', b'[1, 2]'])
def test_a_config_json_cut_short_is_one_line(mode, content, run_copy, capsys):
  with open(os.path.join(run_copy, layout.CONFIG_FILE), 'wb') as f:
    f.write(content)
  before = file_hashes(run_copy)
  line = error_line(mode, run_copy, capsys)
  assert line.startswith(f'error: {os.path.join(run_copy, layout.CONFIG_FILE)} '), line
  assert 'Restore it from a backup, or delete it' in line
  assert file_hashes(run_copy) == before


def test_a_run_info_json_cut_short_is_one_line(run_copy, capsys):
  with open(os.path.join(run_copy, layout.RUN_INFO_FILE), 'wb') as f:
    f.write(b'{\n  "num_params": 32')
  before = file_hashes(run_copy)
  line = error_line('train', run_copy, capsys)
  assert line.startswith(f'error: {os.path.join(run_copy, layout.RUN_INFO_FILE)} does not parse'), line
  assert 'it holds only statistics' in line and 'writes anew' in line
  assert file_hashes(run_copy) == before
