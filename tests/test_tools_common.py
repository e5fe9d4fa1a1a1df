"""The tools' shared command line (ddpm_jax/tools/common.py): every bad command line and expected
failure is one `error:` line and exit status 1, before the tool's command runs; deprecated flag
spellings warn and work; the package's configs are found in a checkout and in an installed package,
whose ddpm-jax-* scripts parse sys.argv through absl."""

import errno
import importlib
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib

from absl import flags
import ml_collections
import pytest

from configs import quickstart
from ddpm_jax import errors
from ddpm_jax.tools import common

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = ('compare', 'convert_diffusers', 'convert_inception', 'export_diffusers', 'fid', 'prepare_data')
WRITERS = ('compare', 'convert_inception', 'export_diffusers', 'prepare_data')  # Tools whose output is --out.


def define_toy(fv: flags.FlagValues) -> None:
  flags.DEFINE_string('out', None, 'Folder to write.', flag_values=fv)
  flags.DEFINE_integer('count', 1, 'How many.', lower_bound=1, flag_values=fv)


def run_toy(capsys, args, raised=None, **kwargs) -> tuple[int, str, str, list]:
  """(exit status, stdout, stderr, the flags the command ran with) of a toy tool with a required --out,
  whose command raises `raised` (when given)."""
  ran = []

  def command(fv):
    ran.append({name: fv[name].value for name in fv})
    if raised is not None:
      raise raised

  code = common.main(['toy', *args], define_toy, command, doc='The toy tool.', required=('out',), **kwargs)
  captured = capsys.readouterr()
  return code, captured.out, captured.err, ran


@pytest.mark.parametrize('args, message', [
    ([], 'error: --out is required: Folder to write.'),
    (['--out='], 'error: --out is required: Folder to write.'),
    (['--out=a', 'b'], "error: unexpected arguments 'b'; flags take the form --name=value."),
    (['--out=a', '--bogus=1'], "error: Unknown command line flag 'bogus'"),
    (['--out=a', '--count=0'], 'error: flag --count=0: 0 is not a positive integer'),
    (['--out=a', '--count=two'], "error: flag --count=two: invalid literal for int() with base 10: 'two'"),
])
def test_a_bad_command_line_is_one_error_line_and_the_command_never_runs(capsys, args, message):
  code, out, err, ran = run_toy(capsys, args)
  assert (code, out, err, ran) == (1, '', message + '\n', [])


def test_expected_failures_are_one_line_and_bugs_are_raised_whole(capsys):
  full = 'No space left on device'
  cases = [(errors.DataError('Bad data.\n  Fix it.'), {}, 'error: Bad data. Fix it.'),
           (errors.ConversionError('Not our network.'), {'errors': (errors.ConversionError,)},
            'error: Not our network.'),
           (OSError(errno.ENOSPC, full, '/w/x'), {},
            f'error: Could not write /w/x: {full}. Free space on that disk and rerun the same command.'),
           # In the folder the tool writes: the fix names the tool's flag, and the file meant, not its temporary.
           (OSError(errno.ENOSPC, full, '/w.tmp-77/x.npz.tmp-78'), {'output_flag': 'out'},
            f'error: Could not write /w/x.npz: {full}. Free space on that disk (or give a --out on another disk) and '
            'rerun the same command.'),
           (OSError(errno.EROFS, 'Read-only file system', '/w/x'), {'output_flag': 'out'},
            'error: Could not write /w/x: Read-only file system. Give a --out on a writable disk.'),
           (OSError(errno.ENOTDIR, 'Not a directory', '/w/x'), {'output_flag': 'out'},
            'error: Could not use /w/x: Not a directory. Give a --out that is a folder (or a new path), not a file.'),
           (OSError(errno.EISDIR, 'Is a directory', '/w'), {'output_flag': 'out'},
            'error: Could not write /w: Is a directory. Give a --out that is a file, not a folder.'),
           (OSError(errno.EROFS, 'Read-only file system', '/cache/s.npz'), {'output_flag': 'out'},
            'error: Could not write /cache/s.npz: Read-only file system. Give a path on a writable disk.'),
           # A full disk in another library's words (array_record's writer): the folder the tool writes.
           (RuntimeError(f'write() failed: {full}; writing /w/r.array_record'), {'output_flag': 'out'},
            f'error: Could not write /w: {full}. Free space on that disk (or give a --out on another disk) and '
            'rerun the same command.')]
  for raised, kwargs, message in cases:
    code, out, err, ran = run_toy(capsys, ['--out=/w'], raised, **kwargs)
    assert (code, out, err) == (1, '', message + '\n') and ran[0]['out'] == '/w'
    assert '--workdir' not in err and 'config' not in err  # main.py's flags, never the tool's.
  for raised, status, name in ((KeyboardInterrupt(), 130, 'SIGINT'), (errors.Terminated(), 143, 'SIGTERM')):
    code, _, err, _ = run_toy(capsys, ['--out=a'], raised)
    assert (code, err) == (status, f'stopped: {name}; nothing half-written was kept: rerun the same command to '
                                    'start again.\n')
  for bug in (RuntimeError('a bug'), errors.ConversionError('not expected by this tool')):
    with pytest.raises(type(bug)):
      run_toy(capsys, ['--out=a'], bug)
  with pytest.raises(SystemExit) as stopped:  # The form library callers get (convert_diffusers.run).
    with common.exit_on_error():
      raise errors.WorkdirError('Taken.')
  assert stopped.value.code == 1 and capsys.readouterr().err == 'error: Taken.\n'


def test_sigterm_raises_terminated_while_the_command_runs_only(capsys):
  """A real SIGTERM in the command: `stopped:`, status 143, and the handler before it back afterwards."""
  before = signal.getsignal(signal.SIGTERM)
  reached = []

  def command(fv):
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)  # The handler raises here.
    reached.append(fv.out)

  code = common.main(['toy', '--out=a'], define_toy, command)
  assert (code, reached) == (143, []) and capsys.readouterr().err.startswith('stopped: SIGTERM; ')
  assert signal.getsignal(signal.SIGTERM) is before


def test_a_deprecated_spelling_works_after_one_warning_line(capsys):
  for args in (['--output=a'], ['--output', 'a'], ['-output=a']):
    code, out, err, ran = run_toy(capsys, args + ['--count=2'], deprecated={'output': 'out'})
    assert (code, out, err) == (0, '', 'warning: --output is deprecated; use --out.\n'), args
    assert (ran[0]['out'], ran[0]['count']) == ('a', 2)
  assert common.renamed(['--output=a', '--', '--output=b'], {'output': 'out'}) == ['--out=a', '--', '--output=b']
  assert capsys.readouterr().err == 'warning: --output is deprecated; use --out.\n'
  code, _, err, _ = run_toy(capsys, ['--output=a'])  # Without the alias: an unknown flag.
  assert (code, err) == (1, "error: Unknown command line flag 'output'\n")


def test_help_prints_the_doc_and_the_flags_and_runs_nothing(capsys):
  code, out, err, ran = run_toy(capsys, ['--help', '--bogus'])
  assert (code, err, ran) == (0, '', [])
  assert out.startswith('The toy tool.\n') and 'Folder to write. Required.' in out and '--count' in out


def config_toy(capsys, args, default='quickstart') -> tuple[int, str, ml_collections.ConfigDict | None]:
  """(exit status, stderr, the config the command saw) of a toy tool with a --config."""
  seen = []
  code = common.main(['toy', *args], lambda fv: None, lambda fv: seen.append(fv.config),
                     config=common.ConfigFlag(default, 'A config.'))
  return code, capsys.readouterr().err, seen[0] if seen else None


def test_the_config_flag_loads_the_default_or_a_file_with_overrides_and_refuses_in_one_line(capsys, tmp_path):
  code, err, config = config_toy(capsys, [])
  assert code == 0 and err == '' and config.to_dict() == quickstart.get_config().to_dict()
  code, err, config = config_toy(capsys, [f'--config={ROOT}/configs/default.py', '--config.training.batch_size=3'])
  assert code == 0 and config.training.batch_size == 3 and config.data.dataset != quickstart.get_config().data.dataset
  (tmp_path / 'number.py').write_text('def get_config():\n  return 3\n')
  (tmp_path / 'broken.py').write_text('def get_config():\n  raise ValueError("no such dataset")\n')
  cases = [(['--config.training.nope=1'], "error: --config.training.nope: config.training has no field 'nope'; "
            'valid: '),
           (['--config.trainin.batch_size=1'], "error: --config.trainin.batch_size: config has no field 'trainin'; "
            'valid: compilation_cache_dir, cpu_devices, data, '),
           ([f'--config={tmp_path / "none.py"}'], f'error: cannot load --config={tmp_path / "none.py"}: [Errno 2] '),
           ([f'--config={tmp_path / "number.py"}'], 'error: cannot load --config: its get_config() returned int, '
            'not a ConfigDict.'),
           ([f'--config={tmp_path / "broken.py"}'], f'error: flag --config={tmp_path / "broken.py"}: '),
           (['--config.training.batch_size=x'], 'error: flag --config.training.batch_size=x: ')]
  for args, message in cases:
    code, err, config = config_toy(capsys, args)
    assert code == 1 and config is None and err.startswith(message) and err.count('\n') == 1, (args, err)
  code, err, config = config_toy(capsys, [], default='no_such_config')
  assert code == 1 and err.startswith('error: --config is required: configs/no_such_config.py was not found')
  code, err, config = config_toy(capsys, [f'--config={ROOT}/configs/quickstart.py'], default='no_such_config')
  assert code == 0 and config.to_dict() == quickstart.get_config().to_dict()


def test_config_files_are_found_beside_the_package_else_as_modules(monkeypatch, tmp_path):
  assert common.config_file('default') == os.path.join(ROOT, 'configs', 'default.py')
  assert common.config_file('cifar10_ddpm') == os.path.join(ROOT, 'configs', 'cifar10_ddpm.py')
  assert common.config_file('no_such_config') == ''
  monkeypatch.setattr(common, 'CONFIGS_DIR', str(tmp_path))  # Nothing beside the package: the module's file.
  assert common.config_file('default') == os.path.abspath(importlib.import_module('configs.default').__file__)
  assert common.config_file('no_such_config') == ''


def test_every_tool_has_a_script_its_main_and_one_name_for_its_output(capsys):
  with open(os.path.join(ROOT, 'pyproject.toml'), 'rb') as f:
    scripts = tomllib.load(f)['project']['scripts']
  assert scripts == {f'ddpm-jax-{tool.replace("_", "-")}': f'ddpm_jax.tools.{tool}:main' for tool in TOOLS}
  for tool in TOOLS:
    module = importlib.import_module(f'ddpm_jax.tools.{tool}')
    assert module.main([tool, '--help']) == 0
    out = capsys.readouterr().out
    assert ('--out:' in out) == (tool in WRITERS), tool
    assert '--output:' not in out and '--out_dir:' not in out and '--output_dir:' not in out, tool
    assert module.main([tool, '--no_such_flag']) == 1
    assert capsys.readouterr().err == "error: Unknown command line flag 'no_such_flag'\n"


def test_an_installed_package_finds_its_configs_and_its_scripts_parse_the_command_line(tmp_path):
  """`pip install --target` of a copy of the sources (no build files in the checkout): the configs
  package ships, and the fid script, outside any checkout, loads the default config from there."""
  source, target, elsewhere = tmp_path / 'source', tmp_path / 'installed', tmp_path / 'elsewhere'
  ignore = shutil.ignore_patterns('__pycache__', '*.pyc', '*.egg-info', 'build')
  for name in ('ddpm_jax', 'configs'):
    shutil.copytree(os.path.join(ROOT, name), source / name, ignore=ignore)
  for name in ('pyproject.toml', 'README.md', 'LICENSE'):
    shutil.copy(os.path.join(ROOT, name), source / name)
  subprocess.run([sys.executable, '-m', 'pip', 'install', '--no-deps', '--no-build-isolation', '--no-index',
                  '--quiet', '--disable-pip-version-check', '--target', str(target), str(source)],
                 check=True, capture_output=True, timeout=300)
  assert (target / 'configs' / 'default.py').is_file() and (target / 'configs' / 'ablations' / 'loss.py').is_file()
  with open(os.path.join(ROOT, 'pyproject.toml'), 'rb') as f:
    scripts = tomllib.load(f)['project']['scripts']
  assert sorted(os.listdir(target / 'bin')) == sorted(scripts)
  elsewhere.mkdir()
  env = dict(os.environ, PYTHONPATH=str(target))
  found = subprocess.run([sys.executable, '-c', 'from ddpm_jax.tools import common; print(common.__file__); '
                          'print(common.config_file("default"))'], cwd=elsewhere, env=env, capture_output=True,
                         text=True, timeout=120)
  assert found.stdout.splitlines() == [str(target / 'ddpm_jax' / 'tools' / 'common.py'),
                                       str(target / 'configs' / 'default.py')], found.stderr
  samples = elsewhere / 'samples.npz'
  result = subprocess.run([str(target / 'bin' / 'ddpm-jax-fid'), f'--samples={samples}'], cwd=elsewhere, env=env,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 1 and 'Traceback' not in result.stderr, result.stderr[-4000:]
  assert result.stderr.strip().splitlines()[-1] == f'error: --samples={samples}: no such file or folder.'
