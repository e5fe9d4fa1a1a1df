"""The command line around the library: flag parsing with one-line errors, process set-up (XLA's
CPU flags, the compilation cache, several hosts, TensorFlow kept off the accelerators, quiet
library logs), signals, and the exit status. main.py defines the flags and calls `run`.

Exit status: 0 done; 1 with one line `error: ...` on stderr for a bad command line, config, workdir,
dataset, a diverged run, a failed checkpoint write or any other operating-system error (a full or
read-only disk, a file where a folder should be: errors.os_error_line names the path and the fix;
any other error is a bug, shown whole); 128 + the signal number (SIGINT 130, SIGTERM 143) when a
signal stopped the run, with one line `stopped: ...`: during training after saving the current step
(the line says where), elsewhere (setup, sampling, eval) at once, keeping every complete checkpoint
and eval batch written so far.
"""

import os
import re
import signal
import sys

from absl import flags, logging
import ml_collections

from ddpm_jax import xla_flags
from ddpm_jax.errors import (ConfigError, Preempted, Terminated, UserError, disk_full_error, is_disk_full, is_io_error,
                             one_line, os_error_line)

FLAGS = flags.FLAGS
MODES = ('train', 'sample', 'eval', 'figures', 'edit')


def _config_arg(argv: list[str]) -> str:
  """The value of --config in argv ('' when absent)."""
  values = [a.split('=', 1)[1] for a in argv if a.startswith(('--config=', '-config='))]
  return values[-1] if values else ''


def unknown_field_message(argv: list[str], missing: str) -> str:
  """For `--config.a.b=v` naming no field of the config: which flag, and the fields there are.
  '' when no override names `missing` (the error came from elsewhere)."""
  overrides = [a.split('=', 1)[0].lstrip('-') for a in argv if a.lstrip('-').startswith('config.')]
  flag = next((o for o in overrides if missing in o.split('.')[1:]), '')
  if not flag:
    return ''
  section = flag.split('.')[1:flag.split('.').index(missing)]
  try:
    config = FLAGS['config'].parser.parse(_config_arg(argv))
    for part in section:
      config = config[part]
    valid = f'; valid: {", ".join(sorted(config.keys()))}'
  except Exception:  # pylint: disable=broad-except  # Only a hint; the message stands without it.
    valid = ''
  return f'--{flag}: {".".join(["config"] + section)} has no field {missing!r}{valid}.'


def load_error(error: Exception) -> str:
  """Why a config file did not load, in one line: what its get_config() returned when that was no
  ConfigDict, the OS error of a missing file, else the error."""
  if returned_type(error):
    return not_a_config_dict(returned_type(error))
  message = one_line(error)
  return message[message.find('[Errno'):] if '[Errno' in message else f'{type(error).__name__}: {message}'


# config_flags' errors when get_config() returned no ConfigDict: its lock() or an override's field is missing.
RETURNED_NO_CONFIG_DICT = re.compile(r"'(\w+)' object has no attribute 'lock'|Attribute <class '(\w+)'>\.")


def returned_type(error: Exception) -> str:
  """The type get_config() returned, when `error` says it was no ConfigDict ('' otherwise)."""
  found = RETURNED_NO_CONFIG_DICT.search(str(error))
  name = found and (found.group(1) or found.group(2))
  return {'NoneType': 'None'}.get(name, name) if name else ''


def not_a_config_dict(returned: str) -> str:
  """Why a config file whose get_config() returned `returned` (a type name) cannot be used, and the fix."""
  return (f'its get_config() returned {returned}; it must return an ml_collections.ConfigDict (e.g. '
          f'`config = default.get_config()`, change fields, `return config`, as configs/quickstart.py does).')


def parse_flags(argv: list[str]) -> list[str]:
  """Parses argv into FLAGS (app.run's flags_parser); a bad flag, override or config file exits
  with one line `error: ...` instead of a usage text or a traceback."""
  cannot_load = f'error: cannot load --config={_config_arg(argv)}'
  try:
    rest = FLAGS(argv)
  except flags.Error as e:
    if _config_arg(argv) and 'Flag --config must have a value other than None' in str(e):
      sys.exit(f'{cannot_load}: {not_a_config_dict("None")}')  # config_flags: get_config() returned None.
    sys.exit(f'error: {one_line(e)}')
  except (AttributeError, KeyError) as e:  # Mostly an override of a field the config does not have.
    message = '' if returned_type(e) else unknown_field_message(argv, str(e).strip('"\''))
    sys.exit(f'error: {message}' if message else f'{cannot_load}: {load_error(e)}')
  except Exception as e:  # pylint: disable=broad-except  # The config file is user code.
    sys.exit(f'{cannot_load}: {load_error(e)}')
  config = FLAGS.config
  if not isinstance(config, ml_collections.ConfigDict):
    try:
      config.lock()  # A file that failed to load (config_flags defers its error): any use raises it.
    except Exception as e:  # pylint: disable=broad-except
      sys.exit(f'{cannot_load}: {load_error(e)}')
    sys.exit(f'{cannot_load}: {not_a_config_dict(type(config).__name__)}')
  if len(rest) > 1:
    sys.exit(f'error: unexpected arguments {" ".join(rest[1:])!r}; flags take the form --name=value.')
  if 'workdir' in FLAGS and FLAGS.workdir is not None and not FLAGS.workdir.strip():
    sys.exit('error: --workdir is empty: give the folder of the run (e.g. --workdir=workdirs/NAME); '
             'a new one is made.')
  return rest


def overridden_model_fields() -> list[str]:
  """The config.model fields set on the command line (--config.model.F=...), in FLAGS' order."""
  prefix = 'config.model.'
  return [name[len(prefix):] for name in FLAGS if name.startswith(prefix) and FLAGS[name].present]


def check_model_overrides(config: ml_collections.ConfigDict) -> None:
  """Refuses a command-line override of a config.model field the chosen network does not read: it
  would be silently ignored (a valid config.model.name is checked first, by validate_config)."""
  from ddpm_jax import nets  # pylint: disable=g-import-not-at-top  # After the XLA flags.
  used = nets.MODEL_FIELDS[config.model.name]
  ignored = [f for f in overridden_model_fields() if f != 'name' and f not in used]
  if ignored:
    raise ConfigError(
        f'--config.model.{ignored[0]}: {config.model.name} does not use config.model.{ignored[0]}, so the '
        f'override has no effect. Drop it, or pick a network that uses it (config.model.name); '
        f'{config.model.name} uses: {", ".join(f for f in used if f != "num_classes")}, num_classes.')


def enable_compilation_cache(path: str) -> None:
  """Keeps compiled programs on disk, so a rerun (resume, sampling) skips recompiling."""
  if path and 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
    import jax  # pylint: disable=g-import-not-at-top
    jax.config.update('jax_compilation_cache_dir', os.path.expanduser(path))


def start_distributed(distributed: ml_collections.ConfigDict) -> None:
  """Joins the hosts of a multi-host run (config.distributed), before JAX starts its backends."""
  if not distributed.coordinator_address:
    return
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')  # Only CPU hosts read it.
  if distributed.coordinator_address == 'auto':
    jax.distributed.initialize()
  else:
    jax.distributed.initialize(distributed.coordinator_address, distributed.num_processes, distributed.process_id)


def raise_terminated(signum, frame) -> None:  # pylint: disable=unused-argument
  raise Terminated()


def hide_gpus_from_tensorflow() -> None:
  """TensorFlow (TFDS, CLU writers) must never take accelerator memory from JAX."""
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
  except ImportError:
    return
  tf.config.set_visible_devices([], 'GPU')


def quiet_library_logs() -> None:
  """Keeps orbax's per-save INFO chatter out of the training log, and its tracebacks: an orbax
  failure reaches our code, which reports it once (one line for a file-system error, whole for a
  bug). Its warnings and error lines still show. asyncio's reports of orbax's writes that failed
  on the file system after the save was given up (`exception was never retrieved`) are left out."""
  import logging as py_logging  # pylint: disable=g-import-not-at-top

  def keep(record: py_logging.LogRecord) -> bool:
    if record.name == 'asyncio' and record.exc_info and is_io_error(record.exc_info[1]):
      return False  # orbax's writes left unawaited after a failed save, which our one line reports.
    if '/orbax/' not in record.pathname:
      return True
    record.exc_info, record.exc_text = None, None
    return record.levelno >= py_logging.WARNING

  logging.get_absl_handler().addFilter(keep)


def run(mode: str, config: ml_collections.ConfigDict, workdir: str, force_workdir_config: bool = False) -> None:
  """Runs `mode` on `workdir`; every expected failure ends as one line on stderr (see the exit status
  in the module docstring). SIGTERM is turned into Terminated while it runs, like Ctrl-C."""
  previous_handler = signal.signal(signal.SIGTERM, raise_terminated)
  try:
    run_mode(mode, config, workdir, force_workdir_config)
  finally:
    signal.signal(signal.SIGTERM, previous_handler)


def run_mode(mode: str, config: ml_collections.ConfigDict, workdir: str, force_workdir_config: bool) -> None:
  """run() for a parsed config, with SIGTERM raising Terminated."""
  xla_flags.configure_cpu(config.cpu_devices, config.eigen_cpu_convolutions, keep_remat_barriers=config.model.remat)
  enable_compilation_cache(config.compilation_cache_dir)
  try:
    from ddpm_jax import configuration  # pylint: disable=g-import-not-at-top  # After the XLA flags.
    configuration.validate_config(config)  # Once, before TensorFlow, data or compiling: fails fast.
    check_model_overrides(config)
    start_distributed(config.distributed)
    import jax  # pylint: disable=g-import-not-at-top
    configuration.check_batches_divide(config, jax.device_count(), evaluating=mode == 'eval')
    hide_gpus_from_tensorflow()
    quiet_library_logs()
    if mode == 'figures':
      from ddpm_jax import figures  # pylint: disable=g-import-not-at-top
      figures.reverse_process(config, workdir)
    elif mode == 'edit':
      from ddpm_jax import edit  # pylint: disable=g-import-not-at-top
      edit.edit(config, workdir, force_workdir_config=force_workdir_config)
    elif mode == 'eval':
      from ddpm_jax.evaluation import evaluate  # pylint: disable=g-import-not-at-top
      evaluate.evaluate(config, workdir, force_workdir_config=force_workdir_config)
    elif mode == 'sample':
      from ddpm_jax import generate  # pylint: disable=g-import-not-at-top
      generate.sample(config, workdir, force_workdir_config=force_workdir_config)
    else:
      from ddpm_jax import train  # pylint: disable=g-import-not-at-top
      train.train_and_evaluate(config, workdir, force_workdir_config=force_workdir_config)
  except (UserError, FloatingPointError) as e:  # Config, workdir, data, checkpoint; a diverged run names its step.
    sys.exit(last_line(f'error: {one_line(e)}'))
  except OSError as e:  # The file system's, wherever it arose: the path and the fix, never a traceback.
    sys.exit(last_line(f'error: {os_error_line(e, workdir)}'))
  except Preempted as e:
    print(last_line(f'stopped: {e}'), file=sys.stderr)
    sys.exit(128 + e.signum)
  except (KeyboardInterrupt, Terminated) as e:  # Outside the training loop (setup, sampling, eval).
    signum = signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT
    print(last_line(f'stopped: {signum.name}; the checkpoints written so far are complete and kept.'), file=sys.stderr)
    sys.exit(128 + signum)
  except Exception as e:  # pylint: disable=broad-except  # Only a full disk in another library's words.
    if not is_disk_full(e):
      raise  # A bug: seen whole.
    sys.exit(last_line(f'error: {os_error_line(disk_full_error(workdir), workdir)}'))


def last_line(line: str) -> str:
  """`line`, to be the last one on stderr: every log message after it is dropped (orbax warns from
  its objects' finalizers at exit, say, which would bury the line that says what happened)."""
  import logging as py_logging  # pylint: disable=g-import-not-at-top
  py_logging.disable(py_logging.CRITICAL)
  return line
