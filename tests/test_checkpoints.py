"""Checkpoints that survive kill -9, preemption, damage and a full disk, on a small pytree.

A real run killed, preempted, damaged and resumed: tests/test_main.py.
"""

import errno
import gc
import glob
import os
import shutil
import signal
import subprocess
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from ddpm_jax import checkpoints, errors

# Orbax's failed reads and writes leave callbacks on closed event loops and coroutines never awaited.
pytestmark = pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')


@pytest.fixture(autouse=True, scope='module')
def collect_orbax_leftovers():
  """Collects those leftovers quietly here, so they do not warn in later tests."""
  yield
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    gc.collect()


def small_state(scale: float = 1.0) -> dict:
  return {'params': {'w': jnp.arange(3000, dtype=jnp.float32) * scale, 'b': jnp.ones((4, 4)) * scale},
          'step': jnp.asarray(int(scale), jnp.int32)}


def abstract_of(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def assert_trees_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def saved_workdir(tmp_path, steps=(1, 2)) -> str:
  """A workdir with checkpoints of small_state(step) at each step; returns the workdir."""
  workdir = str(tmp_path / 'run')
  writer = checkpoints.CheckpointWriter(checkpoints.make_manager(workdir, keep=5))
  for step in steps:
    writer.save(step, small_state(step))
  writer.wait()
  return workdir


def largest_data_file(step_path: str) -> str:
  files = glob.glob(os.path.join(step_path, checkpoints.DEFAULT_ITEM, 'ocdbt.process_0', 'd', '*'))
  return max(files, key=os.path.getsize)


def test_a_partial_save_is_never_listed_and_is_replaced(tmp_path):
  """What kill -9 during a save leaves: a `<step>.orbax-checkpoint-tmp` dir (here a copy of step 2
  with a file cut short). It is not a step; resume takes step 2; saving step 3 replaces it."""
  workdir = saved_workdir(tmp_path)
  ckpt_dir = checkpoints.checkpoint_dir(workdir)
  partial = os.path.join(ckpt_dir, '3' + checkpoints.TMP_SUFFIX)
  subprocess.run(['cp', '-r', os.path.join(ckpt_dir, '2'), partial], check=True)
  with open(largest_data_file(partial), 'r+b') as f:
    f.truncate(10)
  manager = checkpoints.make_manager(workdir, keep=5)
  assert manager.all_steps() == [1, 2] and manager.latest_step() == 2
  state, step, unreadable = checkpoints.restore_newest(manager, abstract_of(small_state()))
  assert step == 2 and unreadable == []
  assert_trees_equal(state, small_state(2))
  writer = checkpoints.CheckpointWriter(manager)
  writer.save(3, small_state(3))
  writer.wait()
  assert sorted(os.listdir(ckpt_dir)) == ['1', '2', '3']
  assert_trees_equal(checkpoints.restore_step(manager, abstract_of(small_state()), 3), small_state(3))


@pytest.mark.parametrize('damage', ['delete', 'truncate', 'zero'])
@pytest.mark.parametrize('target', ['data', '_METADATA', 'manifest.ocdbt'])
def test_a_damaged_newest_checkpoint_is_reported_and_the_older_one_used(tmp_path, caplog, damage, target):
  workdir = saved_workdir(tmp_path)
  step2 = os.path.join(checkpoints.checkpoint_dir(workdir), '2')
  path = largest_data_file(step2) if target == 'data' else os.path.join(step2, checkpoints.DEFAULT_ITEM, target)
  size = os.path.getsize(path)
  if damage == 'delete':
    os.remove(path)
  else:
    with open(path, 'r+b') as f:
      f.truncate(size // 3) if damage == 'truncate' else f.write(b'\0' * size)
  manager = checkpoints.make_manager(workdir, keep=5)
  state, step, unreadable = checkpoints.restore_newest(manager, abstract_of(small_state()))
  assert step == 1 and [u.step for u in unreadable] == [2] and unreadable[0].path == step2
  assert_trees_equal(state, small_state(1))
  assert any(step2 in r.getMessage() and 'unreadable' in r.getMessage() for r in caplog.records)
  files_before = sorted(os.path.relpath(p, step2) for p in glob.glob(step2 + '/**', recursive=True))

  (moved,) = checkpoints.set_aside(manager, unreadable)
  assert os.path.basename(moved).startswith('corrupt-2-') and not os.path.exists(step2)
  assert sorted(os.path.relpath(p, moved) for p in glob.glob(moved + '/**', recursive=True)) == files_before
  assert manager.all_steps() == [1]
  writer = checkpoints.CheckpointWriter(manager)  # Step 2 can be saved again, beside the kept copy.
  writer.save(2, small_state(5))
  writer.wait()
  assert checkpoints.make_manager(workdir, keep=5).all_steps() == [1, 2]


def flip_bytes(path: str, count: int = 64) -> None:
  """Inverts `count` bytes in the middle of a file, keeping its size (silent damage)."""
  with open(path, 'r+b') as f:
    f.seek(os.path.getsize(path) // 2)
    data = f.read(count)
    f.seek(-len(data), os.SEEK_CUR)
    f.write(bytes(b ^ 0xFF for b in data))


def test_flipped_bytes_in_the_array_data_are_found_and_the_older_checkpoint_used(tmp_path):
  workdir = saved_workdir(tmp_path)
  step2 = os.path.join(checkpoints.checkpoint_dir(workdir), '2')
  size = os.path.getsize(largest_data_file(step2))
  flip_bytes(largest_data_file(step2))
  assert os.path.getsize(largest_data_file(step2)) == size
  state, step, unreadable = checkpoints.restore_newest(checkpoints.make_manager(workdir, keep=5),
                                                       abstract_of(small_state()))
  assert step == 1 and [u.step for u in unreadable] == [2]
  assert_trees_equal(state, small_state(1))


def test_an_array_unlike_its_saved_digest_makes_the_checkpoint_unreadable(tmp_path):
  """The digest check itself: the arrays restore, but one is not what was saved."""
  workdir = saved_workdir(tmp_path)
  manager = checkpoints.make_manager(workdir, keep=5)
  digests = manager.metadata(2).custom_metadata[checkpoints.DIGESTS_KEY]
  assert set(digests) == {'params/b', 'params/w', 'step'}
  assert digests == checkpoints.inspect_arrays(small_state(2)).digests
  metadata_file = os.path.join(checkpoints.checkpoint_dir(workdir), '2', '_CHECKPOINT_METADATA')
  with open(metadata_file) as f:
    text = f.read()
  with open(metadata_file, 'w') as f:
    f.write(text.replace(digests['params/w'], '00000000'))
  manager = checkpoints.make_manager(workdir, keep=5)
  with pytest.raises(ValueError, match=r'1 arrays differ from the digests saved with them \(params/w\)'):
    checkpoints.restore_step(manager, abstract_of(small_state()), 2)
  _, step, unreadable = checkpoints.restore_newest(manager, abstract_of(small_state()))
  assert step == 1 and 'params/w' in unreadable[0].error


def test_a_checkpoint_without_digests_still_restores(tmp_path):
  """Checkpoints of earlier versions (and of other tools) carry no digests."""
  workdir = str(tmp_path / 'run')
  manager = checkpoints.make_manager(workdir, keep=5)
  manager.save(3, args=ocp.args.StandardSave(small_state(3)))
  manager.wait_until_finished()
  state, step, unreadable = checkpoints.restore_newest(checkpoints.make_manager(workdir, keep=5),
                                                       abstract_of(small_state()))
  assert step == 3 and unreadable == []
  assert_trees_equal(state, small_state(3))


@pytest.mark.parametrize('damage', ['item_deleted', 'emptied', 'stray_empty_step'])
def test_one_damaged_or_stray_step_folder_costs_only_itself(tmp_path, damage):
  workdir = saved_workdir(tmp_path)
  ckpt_dir = checkpoints.checkpoint_dir(workdir)
  if damage == 'item_deleted':
    shutil.rmtree(os.path.join(ckpt_dir, '2', checkpoints.DEFAULT_ITEM))
  elif damage == 'emptied':
    shutil.rmtree(os.path.join(ckpt_dir, '2'))
    os.makedirs(os.path.join(ckpt_dir, '2'))
  else:
    os.makedirs(os.path.join(ckpt_dir, '999'))
  state, step, unreadable = checkpoints.restore_newest(checkpoints.make_manager(workdir, keep=5),
                                                       abstract_of(small_state()))
  expected = 2 if damage == 'stray_empty_step' else 1
  assert step == expected and [u.step for u in unreadable] == [999 if damage == 'stray_empty_step' else 2]
  assert_trees_equal(state, small_state(expected))


def test_a_state_with_nan_or_inf_is_never_saved(tmp_path):
  workdir = saved_workdir(tmp_path)
  writer = checkpoints.CheckpointWriter(checkpoints.make_manager(workdir, keep=5))
  bad = small_state(3)
  bad['params']['b'] = bad['params']['b'].at[0, 0].set(jnp.nan)
  with pytest.raises(errors.TrainingDiverged, match=r'step 3 holds NaN or inf in 1 arrays \(params/b\); it was not '
                     r'saved and the newest good checkpoint, .*/checkpoints/2, is kept'):
    writer.save(3, bad)
  writer.wait()
  assert checkpoints.make_manager(workdir, keep=5).all_steps() == [1, 2]
  report = checkpoints.inspect_arrays({'a': jnp.array([1.0, jnp.inf]), 'i': jnp.arange(3), 'b': jnp.ones(2, jnp.bfloat16)})
  assert report.nonfinite == ['a'] and set(report.digests) == {'a', 'b', 'i'}


def test_a_stop_while_restoring_is_not_damage(tmp_path, monkeypatch):
  """SIGTERM (errors.Terminated) or Ctrl-C inside a restore stops it; the checkpoint is not judged."""
  workdir = saved_workdir(tmp_path)
  manager = checkpoints.make_manager(workdir, keep=5)
  for stop in (errors.Terminated, KeyboardInterrupt):
    def stopped(*args, **kwargs):
      raise stop()
    monkeypatch.setattr(manager, 'restore', stopped)
    with pytest.raises(stop):
      checkpoints.restore_newest(manager, abstract_of(small_state()))
  assert sorted(os.listdir(checkpoints.checkpoint_dir(workdir))) == ['1', '2']


def test_no_readable_checkpoint_is_an_error_that_changes_nothing(tmp_path):
  workdir = saved_workdir(tmp_path)
  ckpt_dir = checkpoints.checkpoint_dir(workdir)
  for step in ('1', '2'):
    os.remove(os.path.join(ckpt_dir, step, checkpoints.DEFAULT_ITEM, '_METADATA'))
  before = sorted(glob.glob(ckpt_dir + '/**', recursive=True))
  with pytest.raises(errors.CheckpointError, match=r'No checkpoint in .* can be read: .*/2: .*/1: .*Nothing was'):
    checkpoints.restore_newest(checkpoints.make_manager(workdir, keep=5), abstract_of(small_state()))
  assert sorted(glob.glob(ckpt_dir + '/**', recursive=True)) == before


def test_check_fits_names_the_arrays_that_differ(tmp_path):
  ckpt_dir = checkpoints.checkpoint_dir(saved_workdir(tmp_path))
  checkpoints.check_fits(ckpt_dir, abstract_of(small_state()))
  other = small_state()
  other['params']['w'] = jnp.zeros((10,))
  del other['params']['b']
  with pytest.raises(errors.CheckpointError, match=(
      rf'The checkpoint {ckpt_dir}/2 does not fit the new model \(2 arrays differ: params/b: \(4, 4\) in the '
      r'checkpoint, absent in the model; params/w: \(3000,\) in the checkpoint, \(10,\) in the model\)')):
    checkpoints.check_fits(ckpt_dir, abstract_of(other))
  os.remove(os.path.join(ckpt_dir, '2', checkpoints.DEFAULT_ITEM, '_METADATA'))  # Now unreadable: step 1 judged.
  with pytest.raises(errors.CheckpointError, match=f'{ckpt_dir}/1 does not fit'):
    checkpoints.check_fits(ckpt_dir, abstract_of(other))


def fail_writes_with_enospc(monkeypatch, under: str) -> None:
  """Makes orbax's (background) writes of files below `under` fail as on a full disk."""
  from orbax.checkpoint._src.path import async_path  # pylint: disable=g-import-not-at-top
  write_text = async_path.write_text

  async def full_disk(path, text):
    if str(path).startswith(under):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    return await write_text(path, text)

  monkeypatch.setattr(async_path, 'write_text', full_disk)


def test_a_full_disk_names_the_checkpoint_and_keeps_the_older_ones(tmp_path, monkeypatch):
  workdir = saved_workdir(tmp_path, steps=(1,))
  ckpt_dir = checkpoints.checkpoint_dir(workdir)
  fail_writes_with_enospc(monkeypatch, os.path.join(ckpt_dir, '2'))
  writer = checkpoints.CheckpointWriter(checkpoints.make_manager(workdir, keep=5))
  with pytest.raises(errors.CheckpointError) as error:
    writer.save(2, small_state(2))
    writer.wait()
  message = str(error.value)
  assert f'Could not write the checkpoint {ckpt_dir}/2: no space left on device. Free space' in message
  assert f'the newest complete checkpoint, {ckpt_dir}/1, is intact' in message
  assert '\n' not in message
  manager = checkpoints.make_manager(workdir, keep=5)
  assert manager.all_steps() == [1]
  assert_trees_equal(checkpoints.restore_step(manager, abstract_of(small_state()), 1), small_state(1))


def test_disk_full_is_recognised_in_orbax_and_tensorstore_errors():
  assert errors.is_disk_full(OSError(errno.ENOSPC, 'No space left on device'))
  tensorstore = ValueError('RESOURCE_EXHAUSTED: Error writing local file "/w/checkpoints/3.orbax-checkpoint-tmp/'
                           'x": Failed to write 169 bytes to file 4: No space left on device [os_error_code=\'28\']')
  try:
    raise RuntimeError('save failed') from tensorstore
  except RuntimeError as wrapped:
    assert errors.is_disk_full(wrapped)
  assert not errors.is_disk_full(ValueError('shapes differ'))
  assert errors.is_io_error(ValueError("PERMISSION_DENIED ... [os_error_code='13']"))
  assert not errors.is_io_error(TypeError('not an array'))


def test_a_stop_signal_sets_a_flag_a_second_stops_at_once_and_handlers_come_back(monkeypatch):
  before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
  with checkpoints.stop_signals() as stop:
    assert not stop.requested
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.01)  # The handler runs between bytecodes of the main thread.
    assert stop.signum == signal.SIGTERM
    sent = []  # A second one: the default action (here recorded instead of ending pytest).
    monkeypatch.setattr(os, 'kill', lambda pid, signum: sent.append((pid, signum)))
    stop.handle(signal.SIGINT, None)
    assert sent == [(os.getpid(), signal.SIGINT)] and signal.getsignal(signal.SIGINT) == signal.SIG_DFL
  assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
  error = errors.Preempted(signal.SIGTERM, 7, '/w/checkpoints/7')
  assert str(error) == 'SIGTERM at step 7; saved /w/checkpoints/7. Rerun the same command to resume from it.'


def test_hosts_agree_on_a_stop_at_the_checks_whichever_host_got_the_signal(monkeypatch):
  stop = checkpoints.StopSignals()
  one_host = checkpoints.StopAgreement(every=3)
  assert one_host.signum(stop, 1, last=False) is None
  stop.signum = signal.SIGTERM
  assert one_host.signum(stop, 2, last=False) == signal.SIGTERM  # One host: at once.

  gathered = []
  others = {'signum': 0}  # What the other host holds.

  def allgather(flag):
    gathered.append(int(flag))
    return np.asarray([int(flag), others['signum']])

  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  monkeypatch.setattr(checkpoints.multihost_utils, 'process_allgather', allgather)
  quiet = checkpoints.StopSignals()  # This host received nothing.
  agreement = checkpoints.StopAgreement(every=3)
  assert agreement.signum(quiet, 1, last=False) is None  # Checked (the first step), nothing yet.
  others['signum'] = signal.SIGTERM
  assert [agreement.signum(quiet, done, last=False) for done in (2, 3)] == [None, None]  # Between checks.
  assert agreement.signum(quiet, 4, last=False) == signal.SIGTERM  # The other host's signal.
  assert gathered == [0, 0]
  assert checkpoints.StopAgreement(every=100).signum(quiet, 7, last=True) == signal.SIGTERM
