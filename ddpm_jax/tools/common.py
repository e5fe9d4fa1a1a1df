"""The command line of every tool (`python -m ddpm_jax.tools.NAME`, or its `ddpm-jax-NAME` script):
absl flags in a FlagValues of the tool's own (so a tool runs more than once in a process), --help,
a --config file with --config.X.Y=value overrides, deprecated flag spellings, signals, the exit status.

Exit status 0; 1 after one line `error: ...` on stderr, before the tool writes anything, for a bad
command line (an unknown flag, a bad value, a missing required flag, an extra argument, a config
file that does not load, an override of a field the config lacks) or an expected failure of the
tool (errors.UserError, the tool's own error types, an OSError or a full disk in another library's
words: os_error_line names the path and the fix in the tool's flags); 128 + the signal number
(SIGINT 130, SIGTERM 143) after one line `stopped: ...`. Anything else is a bug, shown whole.

The guarantees of main.py: a tool writes its output whole (ddpm_jax/atomic_io.py: a temporary
beside it, renamed into place when complete) and removes its temporaries on an error or a signal;
what a killed run (kill -9) left is removed by the next run of the same command.
"""

import contextlib
import errno
import importlib.util
import os
import signal
import sys
import threading
from typing import Callable, Iterator, Mapping, NamedTuple, Optional, Sequence

from absl import flags, logging
import ml_collections

from ddpm_jax import atomic_io, cli
from ddpm_jax import errors as errors_lib
from ddpm_jax.errors import Terminated, UserError, disk_full_error, is_disk_full, one_line

HELP_FLAGS = ('-h', '--help', '-help', '--helpfull', '-helpfull')
# configs/ beside the ddpm_jax package: the repository's in a checkout, and in an install too, where
# pyproject.toml ships `configs` as a top-level package next to ddpm_jax.
CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), 'configs')
CONFIG_MODULE = 'config_config'  # config_flags' module of a loaded config file ('config_' + the flag's name).

Define = Callable[[flags.FlagValues], None]


class ConfigFlag(NamedTuple):
  """A tool's --config: a config file (configs/*.py) with --config.X.Y=value overrides."""
  default: str  # The package's config read without --config, by name: 'default' is configs/default.py.
  help: str
  lock: bool = False  # Lock the ConfigDict: no field added after parsing.


def config_file(name: str) -> str:
  """The file of the package's config `name` (configs/NAME.py): beside the ddpm_jax package (a checkout,
  or an install), else wherever the module `configs.NAME` imports from; '' when there is none."""
  beside = os.path.join(CONFIGS_DIR, f'{name}.py')
  if os.path.isfile(beside):
    return beside
  try:
    spec = importlib.util.find_spec(f'configs.{name}')
  except (ImportError, ValueError):  # No `configs` package on the path, or a module of that name.
    spec = None
  return spec.origin if spec is not None and spec.origin and os.path.isfile(spec.origin) else ''


def renamed(args: Sequence[str], deprecated: Mapping[str, str]) -> list[str]:
  """`args` with each deprecated flag name (--old=X, --old X) replaced by its new one, after one line
  `warning: --old is deprecated; use --new.` on stderr; arguments after `--` are left alone."""
  result = list(args)
  for i, arg in enumerate(result):
    if arg == '--':
      break
    name, equals, value = arg.lstrip('-').partition('=')
    if arg.startswith('-') and name in deprecated:
      print(f'warning: --{name} is deprecated; use --{deprecated[name]}.', file=sys.stderr)
      result[i] = f'--{deprecated[name]}{equals}{value}'
  return result


def _define(argv: Sequence[str], define: Define, config: Optional[ConfigFlag], required: Sequence[str]
            ) -> flags.FlagValues:
  """A new FlagValues with --config (when the tool has one) and the tool's flags, required ones marked."""
  fv = flags.FlagValues()
  if config is not None:
    from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
    default = config_file(config.default)
    missing = f' Required: configs/{config.default}.py was not found.'
    config_flags.DEFINE_config_file('config', default or None, config.help + ('' if default else missing),
                                    flag_values=fv, sys_argv=list(argv), lock_config=config.lock)
  define(fv)
  for name in required:
    fv[name].help = f'{fv[name].help} Required.'
  return fv


def _override_error(argv: Sequence[str], missing: str, config: ConfigFlag) -> str:
  """For --config.a.b=v naming no field of the config: the flag and the fields there are ('' when no
  override names `missing`)."""
  overrides = [a.split('=', 1)[0].lstrip('-') for a in argv[1:] if a.lstrip('-').startswith('config.')]
  flag = next((o for o in overrides if missing in o.split('.')[1:]), '')
  if not flag:
    return ''
  section = flag.split('.')[1:flag.split('.').index(missing)]
  plain = list(argv[:1]) + [a for a in argv[1:] if a.startswith(('--config=', '-config='))]
  try:
    probe = _define(plain, lambda fv: None, config, ())
    probe(plain)
    value = probe.config
    for part in section:
      value = value[part]
    valid = f'; valid: {", ".join(sorted(value.keys()))}'
  except Exception:  # pylint: disable=broad-except  # Only a hint; the message stands without it.
    valid = ''
  finally:
    sys.modules.pop(CONFIG_MODULE, None)
  return f'--{flag}: {".".join(["config"] + section)} has no field {missing!r}{valid}.'


def _config_error(argv: Sequence[str], error: Exception, config: ConfigFlag) -> str:
  """Why --config (the file or an override) did not load, in one line."""
  if isinstance(error, (AttributeError, KeyError)):  # Mostly an override of a field the config lacks.
    text = str(error.args[0]) if error.args else ''
    message = _override_error(argv, (text.splitlines() or [''])[0].strip('"\''), config)
    if message:
      return message
  given = [a.split('=', 1)[1] for a in argv[1:] if a.startswith(('--config=', '-config='))]
  return f'cannot load --config={given[-1] if given else config_file(config.default)}: {cli.load_error(error)}'


def parse(argv: Sequence[str], define: Define, *, doc: str = '', config: Optional[ConfigFlag] = None,
          required: Sequence[str] = (), deprecated: Optional[Mapping[str, str]] = None) -> flags.FlagValues:
  """The tool's flags parsed from argv (argv[0] the program): --config first when it has one, then
  those `define` adds. --help prints `doc` and the flags and exits with status 0; a bad command line
  raises UserError with one line naming the flag or argument."""
  argv = list(argv[:1]) + renamed(argv[1:], deprecated or {})
  if any(a in HELP_FLAGS for a in argv[1:]):
    try:
      print(f'{doc}\nFlags:\n{_define(argv[:1], define, config, required).get_help()}')
    finally:
      sys.modules.pop(CONFIG_MODULE, None)
    raise SystemExit(0)
  try:
    fv = _define(argv, define, config, required)
    rest = fv(argv)
    if config is not None and fv.config is not None and not isinstance(fv.config, ml_collections.ConfigDict):
      getattr(fv.config, 'lock', None)  # A file that failed to load (config_flags defers its error): any use raises it.
      raise UserError(f'cannot load --config: its get_config() returned {type(fv.config).__name__}, not a '
                      f'ConfigDict.')
  except flags.Error as e:
    raise UserError(one_line(e)) from None
  except UserError:
    raise
  except Exception as e:  # pylint: disable=broad-except  # The config file is user code.
    if config is None:
      raise
    raise UserError(_config_error(argv, e, config)) from None
  finally:
    sys.modules.pop(CONFIG_MODULE, None)  # Another parse loads the file again.
  if len(rest) > 1:
    raise UserError(f'unexpected arguments {" ".join(rest[1:])!r}; flags take the form --name=value.')
  if config is not None and fv.config is None:
    raise UserError(f'--config is required: configs/{config.default}.py was not found beside the ddpm_jax package '
                    f'or as the module configs.{config.default}; give --config=FILE.py.')
  for name in required:
    if fv[name].value in (None, ''):
      raise UserError(f'--{name} is required: {fv[name].help.removesuffix(" Required.")}')
  return fv


_NOT_A_FOLDER = (errno.ENOTDIR, errno.EEXIST)


def _within(path: str, folder: str) -> bool:
  path, folder = os.path.abspath(path), os.path.abspath(folder)
  return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def os_error_line(error: OSError, flag: str = '', folder: str = '') -> str:
  """errors.os_error_line in a tool's words: the path as meant (without the suffix of a temporary), and
  a fix that names the tool's `flag` (--out) for a path in the folder it writes (`folder`), never
  main.py's --workdir or config."""
  path = atomic_io.meant_path(str(error.filename)) if error.filename else folder
  error = OSError(error.errno, error.strerror or one_line(error), path) if error.errno else error
  inside = bool(flag and folder) and _within(path, folder)
  reason, where = error.strerror, f' {path}' if path else ''
  if error.errno in errors_lib.DISK_FULL_ERRNOS:
    other = f' (or give a --{flag} on another disk)' if inside else ''
    return f'Could not write{where}: {reason}. Free space on that disk{other} and rerun the same command.'
  if error.errno == errno.EROFS:
    return f'Could not write{where}: {reason}. Give {f"a --{flag}" if inside else "a path"} on a writable disk.'
  if error.errno == errno.EISDIR:
    return f'Could not write{where}: {reason}. Give {f"a --{flag}" if inside else "a path"} that is a file, not a folder.'
  if error.errno in _NOT_A_FOLDER:
    return (f'Could not use{where}: {reason}. Give {f"a --{flag}" if inside else "a path"} that is a folder (or a '
            f'new path), not a file.')
  return errors_lib.os_error_line(error)  # The other fixes name no flag.


def error_message(error: BaseException, errors: Sequence[type] = (), flag: str = '', folder: str = '') -> Optional[str]:
  """The one line of an expected failure: the message of a UserError or of one of `errors`, an
  OSError's or a full disk's path and fix (os_error_line: `flag` is the tool's flag of the folder it
  writes, `folder` its value); None for a bug."""
  if isinstance(error, (UserError, *errors)):
    return one_line(error)
  if isinstance(error, OSError):
    return os_error_line(error, flag, folder)
  if is_disk_full(error):  # Another library's words (array_record's writer).
    return os_error_line(disk_full_error(folder), flag, folder)
  return None


def fail(message: str) -> int:
  """Prints `error: message` on stderr, as its last line (cli.last_line); returns the exit status 1."""
  print(cli.last_line(f'error: {message}'), file=sys.stderr)
  return 1


@contextlib.contextmanager
def exit_on_error(errors: Sequence[type] = (), flag: str = '', folder: str = '') -> Iterator[None]:
  """For a tool's function that library code calls: an expected failure inside (error_message) ends
  the process with status 1 after its one line on stderr."""
  try:
    yield
  except Exception as e:  # pylint: disable=broad-except  # A bug is raised again, whole.
    message = error_message(e, errors, flag, folder)
    if message is None:
      raise
    raise SystemExit(fail(message)) from None


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
  """SIGTERM raises errors.Terminated inside the block (as main.py's cli.run), so the writes under way
  remove their temporaries; main thread only (elsewhere signals cannot be handled)."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  previous = signal.signal(signal.SIGTERM, cli.raise_terminated)
  try:
    yield
  finally:
    signal.signal(signal.SIGTERM, previous)


def stopped(signum: int) -> int:
  """Prints the `stopped:` line of a signal; returns the exit status 128 + signum."""
  print(cli.last_line(f'stopped: {signal.Signals(signum).name}; nothing half-written was kept: rerun the same '
                      f'command to start again.'), file=sys.stderr)
  return 128 + signum


def _log_as_app_run() -> None:
  """absl's INFO lines on stderr, as under app.run (the tools parse their own FlagValues instead)."""
  logging.use_absl_handler()
  logging.set_verbosity(logging.INFO)
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()  # absl's own flags at their defaults; no warning on the first line.


def main(argv: Optional[Sequence[str]], define: Define, command: Callable[[flags.FlagValues], None], *,
         doc: str = '', config: Optional[ConfigFlag] = None, required: Sequence[str] = (),
         deprecated: Optional[Mapping[str, str]] = None, errors: Sequence[type] = (), output_flag: str = '') -> int:
  """Runs a tool: parse's flags, then `command` on them, with SIGTERM raising Terminated. argv[0] is
  the program; None reads sys.argv (the tool's script and `python -m`, with absl's INFO logging).
  Returns the exit status (see the module docstring); `errors` are the tool's own expected error
  types, `output_flag` the flag of the folder or file it writes (named in the fix of an OSError)."""
  if argv is None:
    argv = sys.argv
    _log_as_app_run()
  try:
    fv = parse(argv, define, doc=doc, config=config, required=required, deprecated=deprecated)
  except UserError as e:
    return fail(one_line(e))
  except SystemExit as e:  # --help.
    return e.code
  try:
    with sigterm_raises():
      command(fv)
  except KeyboardInterrupt:
    return stopped(signal.SIGINT)
  except Terminated:
    return stopped(signal.SIGTERM)
  except Exception as e:  # pylint: disable=broad-except  # A bug is raised again, whole.
    folder = os.path.expanduser(fv[output_flag].value or '') if output_flag else ''
    message = error_message(e, errors, output_flag, folder)
    if message is None:
      raise
    return fail(message)
  return 0
