"""One writer per workdir (ddpm_jax/workdir_lock.py): a second lock is refused at once naming its
holder, in another process or the same one; the lock goes when its block ends (normally or by an
exception) and when its process is killed; sampling takes none; training and the diffusers
converter hold it; and main.py started twice on one workdir refuses the second, changing nothing."""

import errno
import fcntl
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from ddpm_jax import errors, workdir_lock
import files_testlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A child that takes the lock of argv[1], prints `locked`, then on a line `exit` or `raise` on its
# stdin leaves the locked block that way, prints `released` and waits for its stdin to close.
HOLDER = '''
import sys
from ddpm_jax import workdir_lock
try:
  with workdir_lock.exclusive(sys.argv[1]):
    print('locked', flush=True)
    if sys.stdin.readline().strip() == 'raise':
      raise RuntimeError('failed inside the locked block')
except RuntimeError:
  pass
print('released', flush=True)
sys.stdin.read()
'''


class Holder:
  """A child process holding the lock of `workdir` until told to let it go."""

  def __init__(self, workdir: str):
    self.process = subprocess.Popen([sys.executable, '-c', HOLDER, workdir], cwd=ROOT, text=True,
                                    env={**os.environ, 'PYTHONPATH': ROOT},
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    self.expect('locked')

  def expect(self, line: str) -> None:
    got = self.process.stdout.readline().strip()
    assert got == line, f'the holder printed {got!r}, not {line!r} (exit {self.process.poll()})'

  def leave(self, how: str) -> None:
    """Leaves the locked block ('exit' or 'raise'); the child lives on."""
    self.process.stdin.write(how + '\n')
    self.process.stdin.flush()
    self.expect('released')

  def close(self) -> None:
    if self.process.poll() is None:
      self.process.kill()
    self.process.wait(timeout=60)
    self.process.stdin.close()
    self.process.stdout.close()


@pytest.fixture
def holder(tmp_path):
  holders = []

  def start(workdir: str) -> Holder:
    holders.append(Holder(workdir))
    return holders[-1]

  yield start
  for h in holders:
    h.close()


def top_level(directory: str) -> tuple:
  """The folder's entries, with each file's bytes, and the folder's mtime."""
  entries = {}
  for name in sorted(os.listdir(directory)):
    path = os.path.join(directory, name)
    entries[name] = open(path, 'rb').read() if os.path.isfile(path) else 'dir'
  return entries, os.stat(directory).st_mtime_ns


def assert_refused(workdir: str, child: Holder) -> None:
  with pytest.raises(errors.WorkdirError, match=f'by process {child.process.pid} '):
    with workdir_lock.exclusive(workdir):
      pass


def test_a_second_process_is_refused_at_once_naming_the_holder(tmp_path, holder):
  workdir = str(tmp_path / 'run')
  child = holder(workdir)
  before = top_level(workdir)
  with pytest.raises(errors.WorkdirError) as refused:
    with workdir_lock.exclusive(workdir):
      raise AssertionError('the lock was taken twice')
  message = str(refused.value)
  assert '\n' not in message
  assert f'{workdir} is being written by process {child.process.pid} on host ' in message
  assert '(started 20' in message and f'holds its lock {workdir}/.lock' in message
  assert 'or use another --workdir' in message
  assert top_level(workdir) == before  # The refused process wrote nothing, not even the lock file.


@pytest.mark.parametrize('how', ['exit', 'raise'])
def test_the_lock_is_released_when_its_block_ends_normally_or_by_an_exception(tmp_path, holder, how):
  workdir = str(tmp_path / 'run')
  child = holder(workdir)
  assert_refused(workdir, child)
  child.leave(how)
  assert child.process.poll() is None  # Released by the block's end, not by the process's.
  with workdir_lock.exclusive(workdir):
    pass


def test_a_holder_killed_by_sigkill_leaves_no_stale_lock(tmp_path, holder):
  workdir = str(tmp_path / 'run')
  child = holder(workdir)
  assert_refused(workdir, child)
  child.process.send_signal(signal.SIGKILL)
  assert child.process.wait(timeout=60) == -signal.SIGKILL
  with open(os.path.join(workdir, '.lock')) as f:
    assert json.load(f)['pid'] == child.process.pid  # Its lock file is left, with its info.
  with workdir_lock.exclusive(workdir):
    with open(os.path.join(workdir, '.lock')) as f:
      assert json.load(f)['pid'] == os.getpid()  # Locked again and overwritten.


def test_a_second_lock_in_the_same_process_is_refused(tmp_path):
  """flock locks an open file: a new open of the same lock file conflicts, also in one process."""
  workdir = str(tmp_path / 'run')
  with workdir_lock.exclusive(workdir):
    with pytest.raises(errors.WorkdirError, match=f'is being written by process {os.getpid()} on host '):
      with workdir_lock.exclusive(workdir):
        pass
    with workdir_lock.exclusive(workdir, enabled=False):  # Hosts other than 0 take no lock.
      pass


def test_a_second_train_and_evaluate_in_the_same_process_is_refused(tmp_path, monkeypatch):
  from ddpm_jax import train  # pylint: disable=g-import-not-at-top
  import train_testlib  # pylint: disable=g-import-not-at-top
  workdir, config, refusals = str(tmp_path / 'run'), train_testlib.tiny_config(), []

  def train_again(config, workdir, force_workdir_config):  # The first call's body, with its lock held.
    with pytest.raises(errors.WorkdirError, match=f'is being written by process {os.getpid()} ') as refused:
      train.train_and_evaluate(config, workdir)
    refusals.append(refused.value)
    assert os.listdir(workdir) == ['.lock']  # Nothing written by the refused call.

  monkeypatch.setattr(train, '_train_and_evaluate_locked', train_again)
  train.train_and_evaluate(config, workdir)
  assert len(refusals) == 1
  assert not os.path.exists(workdir)  # The first call wrote nothing either: no trace of its lock.


def test_hosts_other_than_0_of_a_multi_host_run_take_no_lock(tmp_path, monkeypatch):
  """Host 0 locks the shared workdir for all; the others would be refused by its lock."""
  from ddpm_jax import train  # pylint: disable=g-import-not-at-top
  import train_testlib  # pylint: disable=g-import-not-at-top
  workdir, ran = str(tmp_path / 'run'), []
  monkeypatch.setattr(train.jax, 'process_index', lambda: 1)
  monkeypatch.setattr(train, '_train_and_evaluate_locked', lambda *args: ran.append(args))
  with workdir_lock.exclusive(workdir):  # As host 0 would hold it.
    train.train_and_evaluate(train_testlib.tiny_config(), workdir)
  assert len(ran) == 1


def test_a_block_that_writes_nothing_leaves_no_trace(tmp_path):
  """A start refused by a later check leaves the workdir as it was: a new one is not created, an
  existing one keeps its entries and times; one the block wrote to keeps the lock file."""
  new = str(tmp_path / 'a' / 'new')
  with pytest.raises(RuntimeError):
    with workdir_lock.exclusive(new):
      assert os.listdir(new) == ['.lock']
      raise RuntimeError('a check failed')
  assert not os.path.exists(tmp_path / 'a')
  existing = str(tmp_path / 'existing')
  os.makedirs(existing)
  with open(os.path.join(existing, 'config.json'), 'w') as f:
    f.write('{}')
  before = top_level(existing)
  with workdir_lock.exclusive(existing):
    pass
  assert top_level(existing) == before
  with workdir_lock.exclusive(existing):
    with open(os.path.join(existing, 'run_info.json'), 'w') as f:
      f.write('{}')
  assert sorted(os.listdir(existing)) == ['.lock', 'config.json', 'run_info.json']
  with workdir_lock.exclusive(existing):  # Released: it locks again.
    pass


def test_a_workdir_that_cannot_be_made_is_one_error(tmp_path):
  path = tmp_path / 'file'
  path.write_text('not a folder')
  with pytest.raises(errors.WorkdirError, match=f"Cannot use '{path}' as the workdir: File exists"):
    with workdir_lock.exclusive(str(path)):
      pass


@pytest.mark.parametrize('existing', [False, True])
def test_a_full_disk_leaves_no_lock_file_and_no_new_workdir(tmp_path, monkeypatch, existing):
  """The lock file is made, but its holder's info cannot be written: neither stays, nor a workdir made for it."""
  workdir = tmp_path / 'run'
  if existing:
    workdir.mkdir()
    (workdir / 'config.json').write_text('{}')
  watched = str(workdir) if existing else str(tmp_path)  # Making and removing a folder changes its parent's mtime.
  before = files_testlib.snapshot(watched)

  def full(fd, content, offset):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

  monkeypatch.setattr(os, 'pwrite', full)
  with pytest.raises(errors.WorkdirError, match=f'Could not write {workdir}: No space left on device. Free space'):
    with workdir_lock.exclusive(str(workdir)):
      raise AssertionError('locked on a full disk')
  after = files_testlib.snapshot(watched)
  assert after == before if existing else sorted(after) == ['.']


def test_a_lock_file_naming_a_dead_process_is_not_named_as_the_holder(tmp_path):
  """A lock still held after its writer ended (by processes it forked, which inherit the locked file)
  names no dead pid as the one writing the workdir."""
  workdir = str(tmp_path / 'run')
  ended = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True, check=True)
  dead = int(ended.stdout)
  os.makedirs(workdir)
  with open(os.path.join(workdir, '.lock'), 'w') as f:
    json.dump({'pid': dead, 'host': workdir_lock.socket.gethostname(), 'started': 'then'}, f)
  inherited = os.open(os.path.join(workdir, '.lock'), os.O_RDWR)  # The lock a forked worker would hold on.
  try:
    fcntl.flock(inherited, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with pytest.raises(errors.WorkdirError) as refused:
      with workdir_lock.exclusive(workdir):
        raise AssertionError('the lock was taken twice')
  finally:
    os.close(inherited)
  message = str(refused.value)
  assert f'by process {dead} ' not in message
  assert f'still names process {dead}, which has ended' in message and 'fuser -v' in message


def test_a_file_system_without_locks_trains_on_with_a_warning(tmp_path, monkeypatch, caplog):
  def unsupported(fd, operation):
    raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

  monkeypatch.setattr(fcntl, 'flock', unsupported)
  with workdir_lock.exclusive(str(tmp_path / 'run')):
    pass
  assert 'nothing stops a second run from writing' in caplog.text


def test_sampling_takes_no_lock_and_writes_other_names_than_training(tmp_path):
  """generate.sample runs while the workdir is locked (here by this process, so a lock it took
  would be refused), and --mode=sample and --mode=figures name their files unlike training's."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from ddpm_jax import checkpoints, configuration, figures, generate, train_state  # pylint: disable=g-import-not-at-top
  import train_testlib  # pylint: disable=g-import-not-at-top
  workdir, config = str(tmp_path / 'run'), train_testlib.tiny_config()
  config.sampling.num_samples = config.sampling.batch_size = 2
  mesh, model, _, tx = train_state.components(config)
  state = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), train_state.abstract_state(model, config, tx, mesh))
  with workdir_lock.exclusive(workdir):
    writer = checkpoints.CheckpointWriter(checkpoints.make_manager(workdir, keep=1))
    writer.save(2, state)
    writer.wait()
    configuration.save_config(config, workdir)
    stem = generate.sample(config, workdir)
  assert os.path.basename(stem) == 'samples_00000002_2' and os.path.exists(stem + '.npz')
  training_names = ('preview_',)  # train.py's samples/ files: samples/preview_<step>.png|npz.
  for path in [stem] + figures.figure_paths(workdir, 2):
    assert os.path.dirname(path) == os.path.join(workdir, 'samples')
    assert not os.path.basename(path).startswith(training_names)


def test_only_training_and_the_converter_take_the_lock():
  """Sampling, eval and figures may run beside a trainer: no other module imports the lock."""
  from test_import_layers import import_graph  # pylint: disable=g-import-not-at-top
  users = sorted(module for module, imports in import_graph().items() if 'workdir_lock' in imports)
  assert users == ['tools.convert_diffusers', 'train']


def test_the_converter_is_refused_while_another_process_writes_the_workdir(tmp_path):
  from configs import cifar10_ddpm  # pylint: disable=g-import-not-at-top
  from ddpm_jax.tools import convert_diffusers  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / 'run')
  with workdir_lock.exclusive(workdir):
    with pytest.raises(errors.WorkdirError, match=f'is being written by process {os.getpid()} '):
      convert_diffusers.write_workdir({}, cifar10_ddpm.get_config(), workdir, 1)
    assert os.listdir(workdir) == ['.lock']


# ---------------------------------------------------------------------------
# main.py started twice on one workdir.


def wait_for_lock(workdir: str, process: subprocess.Popen, timeout: float = 300) -> None:
  """Waits until `process` has written its pid into workdir's lock file."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    assert process.poll() is None, f'the first run ended ({process.returncode}) before taking the lock'
    try:
      with open(os.path.join(workdir, '.lock')) as f:
        if json.load(f).get('pid') == process.pid:
          return
    except (OSError, ValueError):
      pass
    time.sleep(0.05)
  raise AssertionError('the first run did not take the lock in time')


@pytest.mark.slow
def test_main_py_started_twice_on_one_workdir_refuses_the_second(tmp_path):
  """The first run, paused (SIGSTOP) once it holds the lock, so it cannot finish meanwhile; the same
  command again exits 1 at once with one `error:` line naming the first's pid, changing no file
  or folder of the workdir; the first then finishes normally."""
  from test_main import TINY  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / 'run')
  command = [sys.executable, 'main.py', *TINY, f'--workdir={workdir}', '--config.training.num_train_steps=4']
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  log = open(tmp_path / 'first.log', 'w+')  # pylint: disable=consider-using-with
  first = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
  try:
    wait_for_lock(workdir, first)
    first.send_signal(signal.SIGSTOP)
    before = files_testlib.snapshot(workdir)
    second = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 1, second.stderr[-4000:]
    assert 'Traceback' not in second.stderr
    error_lines = [line for line in second.stderr.splitlines() if line.startswith('error:')]
    assert len(error_lines) == 1 and f'is being written by process {first.pid} on host ' in error_lines[0], (
        second.stderr[-4000:])
    assert files_testlib.snapshot(workdir) == before
  finally:
    first.send_signal(signal.SIGCONT)
  first.wait(timeout=600)
  log.seek(0)
  assert first.returncode == 0, log.read()[-4000:]
  log.close()
  assert os.path.isdir(os.path.join(workdir, 'checkpoints', '4'))
