"""The tools' table of bad inputs and faults (issue 28 §3), in the style of tests/test_bad_inputs.py:
each tool's command (`python -m ddpm_jax.tools.NAME`: its main() on the same argv, in this process)
on inputs made once for the module.

Every BAD INPUT ends with exit status 1, one line `error: ...` as the last line of stderr (no
traceback, no other `error:` or `stopped:` line) naming the problem and the fix in the tool's own
flags (never main.py's --workdir or --config.data.*), and the tool's output (--out, the stats
cache, the converter's --workdir) byte for byte as before (files_testlib.snapshot), or not made
where there was none. Faults of the disk (full, read-only) are put in place by patching the write
path (test_bad_inputs.fail_writes), or for array_record's own writer by pointing it at /dev/full.

Every FAULT is a signal that lands while the tool writes its output: kill -9 (the process dies
leaving its temporaries: the test sees them) and SIGTERM (status 143, one `stopped:` line, nothing
left). Then the same command again succeeds, with a complete output and no temporary left over
(atomic_io.remove_stale removes the dead run's). The kill lands mid-write deterministically: the
tool runs in a subprocess whose atomic_io.replacing, on the file named by the case, writes part of
it and then waits for the signal (PAUSED). The writers are export_diffusers, prepare_data and fid
(its reference statistics cache; features from a stand-in network, so that no classifier trains).

How the cases were chosen: per tool, each bad-input class the issue names (a one-image or capped
sample, statistics that are no covariance or lack an array; a process diffusers cannot sample; an
unreadable or wrong-sized image; a full or read-only disk; an extra argument, a missing flag), each
kind of --out the tool refuses (a file, a non-empty folder, a split that exists), and for the
converters each input file they read (the .pth, the model folder's config.json and weights).
"""

import errno
import importlib
import json
import os
import signal
import subprocess
import sys
import time
from typing import Callable, NamedTuple, Optional

import numpy as np
import pytest
from PIL import Image

import files_testlib
from test_bad_inputs import changes, converter_folder, fail_writes, problems_of_stderr

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = 8  # Side of every image here.
TINY_CONVERTER = ['--config.model.ch=8', '--config.model.ch_mult=(1,2)', '--config.model.num_res_blocks=1',
                  '--config.model.norm_groups=4', '--config.model.time_embed_dim=8', '--config.model.time_mlp_dim=32',
                  '--config.diffusion.num_timesteps=10', '--config.sampling.num_samples=2',
                  '--config.sampling.batch_size=2']


class Case(NamedTuple):
  tool: str
  group: str
  name: str
  args: tuple  # {root}, {out}, {run}, ... filled in from the module's files.
  message: str | tuple  # Expected in the last line of stderr.
  fault: Optional[Callable] = None  # (out, monkeypatch): a disk fault, put in place after the snapshot.
  setup: Optional[Callable] = None  # (out, env): what --out holds before the run, made before the snapshot.
  status: int = 1


def bad(tool, group, name, args, message, **kwargs) -> Case:
  return Case(tool, group, name, tuple(args), message, **kwargs)


def disk(error_number: int, **kwargs) -> Callable:
  return lambda out, monkeypatch: fail_writes(monkeypatch, os.path.dirname(out), error_number, **kwargs)


def array_record_to_dev_full(out, monkeypatch) -> None:
  """array_record's writer (C++, past Python's open) writes to /dev/full: its own words for a full disk."""
  from array_record.python import array_record_module  # pylint: disable=import-outside-toplevel
  real = array_record_module.ArrayRecordWriter
  monkeypatch.setattr(array_record_module, 'ArrayRecordWriter', lambda path, options: real('/dev/full', options))


def holding(*names: str) -> Callable:
  """--out made beforehand, holding these files (a/b: in a subfolder)."""
  def setup(out, env):
    for name in names:
      os.makedirs(os.path.dirname(os.path.join(out, name)), exist_ok=True)
      with open(os.path.join(out, name), 'w') as f:
        f.write('an earlier file')
  return setup


def a_file(out, env) -> None:
  with open(out, 'w') as f:
    f.write('not a folder')


EXPORT = ['--workdir={run}', '--out={out}']
PREPARE = ['--image_folder={images}', '--out={out}', f'--image_size={SIZE}']
FID = ['--stats_dir={out}', '--reference={stats}/ref.npz']
INCEPTION = ['--out={out}/inception.npz']
CONVERTER = ['--workdir={out}']

CASES = [
    # fid: samples or statistics FID cannot use (checked before any network loads).
    bad('fid', 'samples', 'one NCHW image in [-1, 1]', ['--samples={stats}/one.npz', *FID],
        'holds 1 image: FID needs at least 2 images'),
    bad('fid', 'samples', 'capped at one image', ['--samples={stats}/five.npz', '--num_samples=1', *FID],
        '--num_samples=1: FID needs at least 2 images'),
    bad('fid', 'statistics', 'sigma with one negative eigenvalue', ['--samples={stats}/negative.npz', *FID],
        ('negative.npz: sigma has the negative eigenvalue -0.5', 'so it is no covariance matrix')),
    bad('fid', 'statistics', 'sigma upper triangular', ['--samples={stats}/triangular.npz', *FID],
        ('triangular.npz: sigma is not symmetric', 'so it is no covariance matrix')),
    bad('fid', 'statistics', 'sigma only', ['--samples={stats}/sigma_only.npz', *FID],
        "holds ['sigma'], not FID statistics: they need both mu and sigma (pytorch-fid's layout), and mu is missing"),
    bad('fid', 'statistics', 'sigma of another size than mu', ['--samples={stats}/misshapen.npz', *FID],
        'misshapen.npz: mu must be (d,) and sigma (d, d); got (4,) and (4, 5)'),
    bad('fid', 'statistics', 'infinite sigma', ['--samples={stats}/infinite.npz', *FID],
        'infinite.npz: mu or sigma holds NaN or infinite values'),
    bad('fid', 'statistics', 'reference sigma negative definite', ['--samples={stats}/ref.npz', *FID,
                                                                    '--reference={stats}/negative.npz'],
        'negative.npz: sigma has the negative eigenvalue'),
    bad('fid', 'statistics', 'reference of mu only', ['--samples={stats}/ref.npz', *FID,
                                                      '--reference={stats}/mu_only.npz'], 'and sigma is missing'),
    bad('fid', 'command line', 'extra argument', ['--samples={stats}/ref.npz', *FID, 'more.npz'],
        "unexpected arguments 'more.npz'"),
    # export_diffusers: runs diffusers cannot sample as trained, --out it refuses, disks that fail.
    *[bad('export_diffusers', 'process', f'{process} run', ['--workdir={%s}' % process, '--out={out}'],
          f'config.diffusion.process={process} cannot be exported to diffusers: ') for process in
      ('vesde', 'vpsde', 'subvpsde', 'edm')],
    bad('export_diffusers', 'network', 'unet_conv run', ['--workdir={conv}', '--out={out}'],
        'config.model.name=unet_conv cannot be exported to diffusers'),
    bad('export_diffusers', 'workdir', 'no checkpoint', ['--workdir={fresh}', '--out={out}'], 'No checkpoint in'),
    bad('export_diffusers', 'command line', 'extra argument', [*EXPORT, 'pipeline'], "unexpected arguments 'pipeline'"),
    bad('export_diffusers', 'command line', 'no --out', ['--workdir={run}'], '--out is required: '),
    bad('export_diffusers', 'out', '--out a file', EXPORT, 'is a file: give a folder', setup=a_file),
    bad('export_diffusers', 'out', '--out not empty', EXPORT, 'is not empty: give a new or empty folder, or --overwrite',
        setup=holding('README.md')),
    bad('export_diffusers', 'disk', 'full disk on the weights', EXPORT,
        ('Could not write {out}/unet/diffusion_pytorch_model.safetensors: No space left on device',
         '(or give a --out on another disk) and rerun the same command'), fault=disk(errno.ENOSPC, only=('.safetensors',))),
    bad('export_diffusers', 'disk', 'read-only disk', EXPORT, ('Read-only file system. Give a --out on a writable disk'),
        fault=disk(errno.EROFS)),
    # prepare_data: images it cannot write as asked, --out it refuses, disks that fail.
    bad('prepare_data', 'images', 'an image of another size', ['--image_folder={sized}', '--out={out}', '--image_size=8'],
        ('is 10x6 (width x height), not --image_size=8', '--resize_images')),
    bad('prepare_data', 'images', 'an unreadable image', ['--image_folder={broken}', '--out={out}', '--image_size=8'],
        ('Cannot read image', 'give --skip_bad_images to skip unreadable files')),
    bad('prepare_data', 'images', 'an unreadable image, into an --out with another split',
        ['--image_folder={broken}', '--out={out}', '--image_size=8'], '--skip_bad_images',
        setup=holding('test/manifest.json')),
    bad('prepare_data', 'images', 'nothing readable', ['--image_folder={unreadable}', '--out={out}', '--image_size=8',
                                                       '--skip_bad_images'], 'could be read (2 skipped as unreadable)'),
    bad('prepare_data', 'images', 'no such split', [*PREPARE, '--split=valid'], "split 'valid' is missing"),
    bad('prepare_data', 'out', 'the split exists', PREPARE, 'exists: give another --out, or --overwrite',
        setup=holding('train/manifest.json')),
    bad('prepare_data', 'out', '--out a file', PREPARE, 'is a file: give a folder', setup=a_file),
    bad('prepare_data', 'disk', 'full disk in array_record', PREPARE,
        ('Could not write {out}: No space left on device', '(or give a --out on another disk)'),
        fault=array_record_to_dev_full),
    bad('prepare_data', 'disk', 'full disk on the manifest', PREPARE,
        'Could not write {out}/train/manifest.json: No space left on device',
        fault=disk(errno.ENOSPC, only=('manifest.json',))),
    bad('prepare_data', 'disk', 'read-only disk', PREPARE, 'Give a --out on a writable disk', fault=disk(errno.EROFS)),
    bad('prepare_data', 'command line', 'unknown encoding', [*PREPARE, '--encoding=webp'],
        'flag --encoding=webp: value should be one of <png|jpeg|raw>'),
    bad('prepare_data', 'command line', 'extra argument', [*PREPARE, 'train'], "unexpected arguments 'train'"),
    # convert_inception: .pth files that are not pytorch-fid's weights, an --out it cannot write.
    bad('convert_inception', 'weights', 'no such file', ['--torch_weights={root}/none.pth', *INCEPTION], 'No file'),
    bad('convert_inception', 'weights', 'another file under the name', ['--torch_weights={pth}/list.pth', *INCEPTION],
        'has SHA-256'),
    bad('convert_inception', 'weights', 'a list, not a state dict', ['--torch_weights={pth}/list.pth', *INCEPTION,
                                                                     '--nocheck_hash'], 'holds a list, not a state dict'),
    bad('convert_inception', 'weights', 'another network', ['--torch_weights={pth}/other.pth', *INCEPTION,
                                                            '--nocheck_hash'], "is not pytorch-fid's FID Inception"),
    bad('convert_inception', 'weights', 'truncated', ['--torch_weights={pth}/truncated.pth', *INCEPTION,
                                                      '--nocheck_hash'], 'is not a readable PyTorch state dict'),
    bad('convert_inception', 'out', '--out a folder', ['--torch_weights={pth}/other.pth', '--out={out}'],
        'is a folder: give the path of the .npz file', setup=holding('weights.npz')),
    bad('convert_inception', 'command line', 'no --torch_weights', INCEPTION, '--torch_weights is required'),
    # convert_diffusers: model folders it cannot read, a --workdir it cannot write.
    *[bad('convert_diffusers', 'model folder', name, ['--model_dir={models}/%s' % kind, *CONVERTER], message)
      for kind, name, message in [('nothing', 'no config.json', 'No config.json in'),
                                  ('config_cut', 'config.json cut short', 'config.json is not JSON'),
                                  ('truncated', 'weights truncated', 'is not a readable safetensors file'),
                                  ('no_weights', 'no weights', 'No weights in')]],
    bad('convert_diffusers', 'workdir', '--workdir a file', ['--model_dir={models}/good', *CONVERTER, *TINY_CONVERTER],
        "Cannot use '{out}' as the workdir: File exists", setup=a_file),
    bad('convert_diffusers', 'command line', 'no --workdir', ['--model_dir={models}/good'], '--workdir is required'),
    bad('convert_diffusers', 'command line', 'no such config field', ['--model_dir={models}/good', *CONVERTER,
                                                                      '--config.model.nope=1'],
        "--config.model.nope: config.model has no field 'nope'"),
]


def test_the_table_covers_every_tool_that_reads_input():
  names = [(c.tool, c.group, c.name) for c in CASES]
  assert len(set(names)) == len(names)
  assert {c.tool for c in CASES} == {'fid', 'export_diffusers', 'prepare_data', 'convert_inception',
                                     'convert_diffusers'}
  assert {(c.tool, c.group) for c in CASES if c.group == 'disk'} == {('export_diffusers', 'disk'),
                                                                      ('prepare_data', 'disk')}


# ---------------------------------------------------------------------------
# The inputs.

def write_images(folder: str, sizes=((SIZE, SIZE),), per_class: int = 3) -> str:
  """An image folder FOLDER/train/{a,b}/*.png of RGB images of the given (width, height) sizes."""
  rng = np.random.default_rng(0)
  for name in ('a', 'b'):
    os.makedirs(os.path.join(folder, 'train', name))
    for i in range(per_class):
      width, height = sizes[i % len(sizes)]
      Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(
          os.path.join(folder, 'train', name, f'{i}.png'))
  return folder


def write_statistics(folder: str) -> None:
  """Images and statistics files, good and bad, for fid."""
  os.makedirs(folder)
  np.savez(os.path.join(folder, 'one.npz'), samples=np.zeros((1, 3, SIZE, SIZE), np.float32) - 0.5)
  np.savez(os.path.join(folder, 'five.npz'), images=np.zeros((5, SIZE, SIZE, 3), np.uint8))
  np.savez(os.path.join(folder, 'ref.npz'), mu=np.ones(4), sigma=np.eye(4))
  np.savez(os.path.join(folder, 'negative.npz'), mu=np.zeros(4), sigma=np.diag([1.0, -0.5, 1.0, 2.0]))
  np.savez(os.path.join(folder, 'triangular.npz'), mu=np.zeros(4), sigma=np.triu(np.ones((4, 4))))
  np.savez(os.path.join(folder, 'sigma_only.npz'), sigma=np.eye(4))
  np.savez(os.path.join(folder, 'mu_only.npz'), mu=np.zeros(4))
  np.savez(os.path.join(folder, 'misshapen.npz'), mu=np.zeros(4), sigma=np.zeros((4, 5)))
  np.savez(os.path.join(folder, 'infinite.npz'), mu=np.zeros(4), sigma=np.diag([1.0, np.inf, 1.0, 1.0]))


def write_pth(folder: str) -> None:
  """.pth files that are not pytorch-fid's Inception weights (torch is needed to read them)."""
  torch = pytest.importorskip('torch')
  os.makedirs(folder)
  torch.save([1, 2], os.path.join(folder, 'list.pth'))
  torch.save({'fc.weight': torch.zeros(3, 2)}, os.path.join(folder, 'other.pth'))
  torch.save({'fc.weight': torch.zeros(64, 64)}, os.path.join(folder, 'truncated.pth'))
  os.truncate(os.path.join(folder, 'truncated.pth'), 100)


@pytest.fixture(scope='module')
def env(tmp_path_factory):
  """The module's input files: a tiny ddpm run with a checkpoint, runs of other processes and
  networks (config.json only), image folders, statistics and images for fid, .pth files and
  diffusers model folders."""
  from test_export_diffusers import random_params, tiny_config, write_run  # pylint: disable=import-outside-toplevel
  from ddpm_jax import configuration  # pylint: disable=import-outside-toplevel
  root = str(tmp_path_factory.mktemp('tool_inputs'))
  paths = {name: os.path.join(root, name) for name in ('run', 'fresh', 'conv', 'images', 'sized', 'broken',
                                                       'unreadable', 'stats', 'pth', 'models')}
  paths['root'] = root
  config = tiny_config()
  write_run(paths['run'], config, random_params(config, 0), random_params(config, 1), 3)
  configuration.save_config(config, paths['fresh'])
  configuration.save_config(tiny_config(**{'model.name': 'unet_conv'}), paths['conv'])
  for process, sampler in (('vesde', 'euler'), ('vpsde', 'euler'), ('subvpsde', 'euler'), ('edm', 'edm_heun')):
    process_config = tiny_config(**{'diffusion.process': process, 'sampling.sampler': sampler,
                                    'diffusion.num_timesteps': 1000})
    configuration.validate_config(process_config)  # A run that trains; only diffusers cannot sample it.
    paths[process] = os.path.join(root, process)
    configuration.save_config(process_config, paths[process])
  write_images(paths['images'])
  write_images(paths['sized'], sizes=((SIZE, SIZE), (10, 6)))
  write_images(paths['broken'])
  with open(os.path.join(paths['broken'], 'train', 'b', '1.png'), 'wb') as f:
    f.write(b'\x89PNG cut short')
  os.makedirs(os.path.join(paths['unreadable'], 'train', 'a'))
  for i in range(2):
    with open(os.path.join(paths['unreadable'], 'train', 'a', f'{i}.jpg'), 'w') as f:
      f.write('not a jpeg')
  write_statistics(paths['stats'])
  np.savez(os.path.join(root, 'samples.npz'), images=np.random.default_rng(3).integers(0, 256, (6, SIZE, SIZE, 3),
                                                                                      np.uint8))
  write_pth(paths['pth'])
  for kind in ('nothing', 'config_cut', 'truncated', 'no_weights', 'good'):
    converter_folder(kind, os.path.join(paths['models'], kind))
  return paths


def run_tool(tool: str, argv: list[str], capsys) -> tuple[int, str, str]:
  """(exit status, stderr, stdout) of `python -m ddpm_jax.tools.TOOL argv`, run in this process."""
  module = importlib.import_module(f'ddpm_jax.tools.{tool}')
  status = module.main([tool, *argv])
  captured = capsys.readouterr()
  return status, captured.err, captured.out


@pytest.mark.parametrize('case', CASES, ids=[f'{c.tool}-{c.group}-{c.name}'.replace(' ', '_') for c in CASES])
def test_bad_input(case, env, tmp_path, monkeypatch, capsys):
  """Exit 1, one `error:` line last naming the tool's flags, the output as it was (or not made)."""
  out = str(tmp_path / 'out')
  names = {**{k: v for k, v in env.items() if isinstance(v, str)}, 'out': out}
  if case.setup:
    case.setup(out, env)
  before = files_testlib.snapshot(str(tmp_path))
  if case.fault:
    case.fault(out, monkeypatch)
  try:
    status, stderr, _ = run_tool(case.tool, [a.format(**names) for a in case.args], capsys)
  finally:
    monkeypatch.undo()
  problems = problems_of_stderr(case, status, stderr, names)
  last = (stderr.strip().splitlines() or [''])[-1]
  has_workdir = case.tool in ('export_diffusers', 'convert_diffusers')  # Tools with a --workdir flag of their own.
  if '--workdir' in last and not has_workdir or '--config.data' in last or 'the config at' in last:
    problems.append(f'the last line names main.py\'s flags: {last!r}')
  after = files_testlib.snapshot(str(tmp_path))
  if after != before:
    problems.append(f'changed {tmp_path}: {changes(before, after)}')
  assert not problems, f'{case.name}: {problems}\nstderr: {stderr[-3000:]}'


# ---------------------------------------------------------------------------
# Faults: a signal mid-write, then the same command again.

# The tool's command in a subprocess whose atomic_io.replacing, on the file whose name ends with
# argv[1], writes part of it, makes the file argv[2] (the test's cue), and waits for the signal.
# argv[3] is the tool, argv[4:] its flags; with fid, the stand-in feature network of stand_in().
PAUSED = '''
import contextlib, importlib, sys, time
from ddpm_jax import atomic_io
suffix, ready, tool = sys.argv[1:4]
real = atomic_io.replacing

@contextlib.contextmanager
def paused(path, mode='wb'):
  with real(path, mode) as f:
    if str(path).endswith(suffix):
      f.write(b'part of it' if 'b' in mode else 'part of it')
      f.flush()
      open(ready, 'w').close()
      time.sleep(600)
    yield f

atomic_io.replacing = paused
if tool == 'fid':
  sys.path.insert(0, 'tests')
  import test_bad_tool_inputs
  test_bad_tool_inputs.stand_in()
sys.argv = [tool] + sys.argv[4:]
sys.exit(importlib.import_module('ddpm_jax.tools.' + tool).main())
'''


def stand_in(monkeypatch=None) -> None:
  """fid's features from a fixed projection named inception (pool3 of 6, logits of 5), not a network
  to train or download: the tool's writes are what the faults test."""
  from ddpm_jax.evaluation import features  # pylint: disable=import-outside-toplevel
  projection = np.random.default_rng(2).normal(size=(SIZE * SIZE * 3, 11))

  def feature_fn(images):
    out = images.reshape(len(images), -1).astype(np.float64) / 255 @ projection
    return out[:, :6].astype(np.float32), out[:, 6:].astype(np.float32)

  load = lambda config, mesh=None: [features.FeatureNet('inception', feature_fn, {})]
  if monkeypatch is None:
    features.load_feature_nets = load
  else:
    monkeypatch.setattr(features, 'load_feature_nets', load)


class Fault(NamedTuple):
  args: tuple
  paused_at: str  # The file the signal lands in the middle of.
  complete: Callable  # (out) -> None: asserts the output of the rerun is whole.


def export_complete(out) -> None:
  from ddpm_jax.tools import convert_diffusers  # pylint: disable=import-outside-toplevel
  files = sorted(os.path.relpath(os.path.join(d, f), out) for d, _, names in os.walk(out) for f in names)
  assert files == ['model_index.json', 'scheduler/scheduler_config.json', 'unet/config.json',
                   'unet/diffusion_pytorch_model.safetensors']
  assert len(convert_diffusers.load_model_dir(out)[1]) > 10


def prepare_complete(out) -> None:
  from ddpm_jax import data  # pylint: disable=import-outside-toplevel
  assert os.listdir(out) == ['train'] and data.read_manifest(out, 'train')['count'] == 6
  assert len(data.load_array_record(out, 'train', SIZE, 3, False).images) == 6


def fid_complete(out) -> None:
  from ddpm_jax.evaluation import scores  # pylint: disable=import-outside-toplevel
  stats = [name for name in os.listdir(out) if name.endswith('-inception.npz')]
  assert len(stats) == 1 and scores.read_stats(os.path.join(out, stats[0]))[2] == 6


def converted_complete(out) -> None:
  from ddpm_jax import checkpoints  # pylint: disable=import-outside-toplevel
  assert checkpoints.finished_steps(os.path.join(out, checkpoints.CHECKPOINT_DIR)) == [1]
  assert sorted(os.listdir(out)) == ['.lock', 'checkpoints', 'config.json']  # The lock file stays, as training's.


FAULTS = {
    'export_diffusers': Fault(tuple(EXPORT), 'diffusion_pytorch_model.safetensors', export_complete),
    'convert_diffusers': Fault(('--model_dir={models}/good', *CONVERTER, *TINY_CONVERTER, '--step=1'), 'config.json',
                               converted_complete),
    'prepare_data': Fault(tuple(PREPARE), 'labels.npy', prepare_complete),
    'fid': Fault(('--samples={root}/samples.npz', '--stats_dir={out}', '--reference=image_folder:{images}:train',
                  '--config.data.image_cache_dir=', '--json'), '-inception.npz', fid_complete),
}


def leftovers(folder: str) -> list[str]:
  """The temporaries (atomic_io's .tmp-PID files and folders) anywhere below `folder`."""
  return sorted(os.path.relpath(os.path.join(d, n), folder) for d, dirs, files in os.walk(folder)
                for n in dirs + files if '.tmp-' in n)


@pytest.mark.slow
@pytest.mark.parametrize('signum', [signal.SIGKILL, signal.SIGTERM], ids=['kill-9', 'SIGTERM'])
@pytest.mark.parametrize('tool', list(FAULTS))
def test_a_signal_mid_write_then_the_same_command_finishes_with_nothing_left_over(tool, signum, env, tmp_path,
                                                                                 monkeypatch, capsys):
  fault = FAULTS[tool]
  out, ready = str(tmp_path / 'out'), str(tmp_path / 'ready')
  args = [a.format(**{**{k: v for k, v in env.items() if isinstance(v, str)}, 'out': out}) for a in fault.args]
  process = subprocess.Popen([sys.executable, '-c', PAUSED, fault.paused_at, ready, tool, *args], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.monotonic() + 240
    while not os.path.exists(ready) and process.poll() is None and time.monotonic() < deadline:
      time.sleep(0.05)
    assert os.path.exists(ready), process.communicate(timeout=60)[1][-3000:] if process.poll() is not None else ''
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
  finally:
    if process.poll() is None:
      process.kill()
      process.wait()
  watched = str(tmp_path)
  if signum == signal.SIGKILL:
    assert process.returncode == -signal.SIGKILL
    assert leftovers(watched), 'the kill landed after the write'  # What the rerun must clear.
  else:
    last = stderr.strip().splitlines()[-1]
    assert process.returncode == 128 + signal.SIGTERM and last.startswith('stopped: SIGTERM; '), stderr[-3000:]
    assert 'Traceback' not in stderr and not leftovers(watched) and not os.path.exists(out), os.listdir(watched)
  if tool == 'fid':
    stand_in(monkeypatch)
  status, stderr, stdout = run_tool(tool, args, capsys)
  assert status == 0, stderr[-3000:]
  assert not leftovers(watched)
  fault.complete(out)
  if tool == 'fid':
    assert json.loads(stdout)['fid'] > 0
