"""ddpm_jax/cli.py run in this process: an operating-system error is one line `error: ...` naming
the path and the fix by its errno (errors.os_error_line), also a full disk in another library's
words; a bug stays a traceback. The faults themselves (a workdir that is a file, a read-only or full
disk, a workdir file cut short) are rows of the table of tests/test_bad_inputs.py.
"""

import errno
import os

import pytest

from configs import quickstart
from ddpm_jax import cli, errors



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


def error_line(mode: str, workdir: str, capsys, config=None) -> str:
  """cli.run's one line for a failing `mode`: exit 1 (SystemExit of 'error: ...'), no traceback."""
  with pytest.raises(SystemExit) as stopped:
    cli.run(mode, config or tiny_config(), workdir)
  line = stopped.value.code
  assert isinstance(line, str) and line.startswith('error: ') and '\n' not in line, line
  assert 'Traceback' not in line and 'Traceback' not in capsys.readouterr().err
  return line


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

def test_a_full_disk_in_another_librarys_words_is_one_line(tmp_path, monkeypatch, capsys):
  """TensorFlow's event writer and tensorstore say so in their own error types."""
  from ddpm_jax import generate  # pylint: disable=g-import-not-at-top

  def full(*args, **kwargs):
    raise ValueError('RESOURCE_EXHAUSTED: Failed writing: "x": No space left on device [os_error_code=\'28\']')

  monkeypatch.setattr(generate, 'sample', full)
  line = error_line('sample', str(tmp_path), capsys)
  assert line.startswith(f'error: Could not write {tmp_path}: No space left on device.'), line


def test_a_bug_stays_a_whole_traceback(tmp_path, monkeypatch):
  from ddpm_jax import generate  # pylint: disable=g-import-not-at-top

  def bug(*args, **kwargs):
    raise KeyError('a bug')

  monkeypatch.setattr(generate, 'sample', bug)
  with pytest.raises(KeyError, match='a bug'):
    cli.run('sample', tiny_config(), str(tmp_path))


def test_nothing_is_logged_after_the_error_line(tmp_path, capsys):
  """orbax warns from its objects' finalizers at exit: after cli's last line, no log line shows."""
  import logging  # pylint: disable=g-import-not-at-top
  line = error_line('sample', str(tmp_path / 'none'), capsys)
  assert 'No checkpoint' in line
  logging.getLogger('orbax.checkpoint').warning('a finalizer speaking after the error line')
  assert 'a finalizer speaking' not in capsys.readouterr().err


# ---------------------------------------------------------------------------
# config.model.remat: documented, read by every network, accepted on the command line.

def test_every_network_accepts_a_remat_override(monkeypatch):
  from ddpm_jax import nets  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(cli, 'overridden_model_fields', lambda: ['remat'])
  for name in nets.MODELS:
    config = tiny_config()
    config.model.name = name
    cli.check_model_overrides(config)  # Raises ConfigError for a field the network does not read.


def test_main_py_trains_and_samples_with_remat(tmp_path, capsys):
  """--config.model.remat=True through main.py's own command line: trains, then samples."""
  import cli_testlib  # pylint: disable=g-import-not-at-top
  import test_bad_inputs  # pylint: disable=g-import-not-at-top
  data_dir = str(tmp_path / 'data')
  test_bad_inputs.write_idx(data_dir, *test_bad_inputs.two_patterns())
  flags = [*test_bad_inputs.tiny(data_dir), f'--workdir={tmp_path / "run"}', '--config.model.remat=True',
           '--config.training.num_train_steps=2']
  status, stderr = cli_testlib.run_main(['main.py', *flags], capsys)
  assert status == 0 and 'error:' not in stderr, stderr[-2000:]
  assert os.path.isdir(tmp_path / 'run' / 'checkpoints' / '2')
  status, stderr = cli_testlib.run_main(['main.py', *flags, '--mode=sample'], capsys)
  assert status == 0, stderr[-2000:]
  assert any(n.startswith('samples_') for n in os.listdir(tmp_path / 'run' / 'samples'))
