"""ddpm-jax entry point: parses flags and dispatches to training, sampling or evaluation.

  python main.py --config=configs/quickstart.py --workdir=workdirs/quickstart
  python main.py --config=configs/quickstart.py --workdir=workdirs/quickstart --mode=sample
  python main.py --config=configs/quickstart.py --workdir=workdirs/quickstart --mode=eval

Any config field can be overridden: --config.optim.lr=1e-3. Rerunning the same
command with the same --workdir resumes from the latest checkpoint.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Path to a config file (configs/*.py).', lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory holding the run: config, checkpoints, events, samples.')
flags.DEFINE_enum('mode', 'train', ['train', 'sample', 'eval'],
                  'train: train (or resume); sample: write samples; eval: metrics of the latest checkpoint.')
flags.mark_flags_as_required(['config', 'workdir'])


def set_cpu_device_count(count: int) -> None:
  """Splits the CPU into `count` XLA devices (0 = one per core) unless XLA_FLAGS already does.

  Must run before JAX starts; accelerators are unaffected.
  """
  xla_flags = os.environ.get('XLA_FLAGS', '')
  if 'xla_force_host_platform_device_count' not in xla_flags:
    count = count or os.cpu_count() or 1
    os.environ['XLA_FLAGS'] = f'{xla_flags} --xla_force_host_platform_device_count={count}'.strip()


def enable_compilation_cache(path: str) -> None:
  """Keeps compiled programs on disk, so a rerun (resume, sampling) skips recompiling."""
  if path and 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
    import jax  # pylint: disable=g-import-not-at-top
    jax.config.update('jax_compilation_cache_dir', os.path.expanduser(path))


def hide_gpus_from_tensorflow() -> None:
  """TensorFlow (TFDS, CLU writers) must never take accelerator memory from JAX."""
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
  except ImportError:
    return
  tf.config.set_visible_devices([], 'GPU')


def quiet_library_info_logs() -> None:
  """Keeps orbax's per-save INFO chatter out of the training log (warnings still show)."""
  import logging as py_logging  # pylint: disable=g-import-not-at-top

  def keep(record: py_logging.LogRecord) -> bool:
    return record.levelno >= py_logging.WARNING or '/orbax/' not in record.pathname

  logging.get_absl_handler().addFilter(keep)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  config = FLAGS.config
  set_cpu_device_count(config.cpu_devices)
  enable_compilation_cache(config.compilation_cache_dir)
  from ddpm_jax import configuration, data  # pylint: disable=g-import-not-at-top
  user_errors = (configuration.ConfigError, configuration.WorkdirError, data.DataError)
  try:
    configuration.validate_config(config)  # Before TensorFlow, data or compiling: fails fast.
    hide_gpus_from_tensorflow()
    quiet_library_info_logs()
    from ddpm_jax import train  # pylint: disable=g-import-not-at-top
    run = {'train': train.train_and_evaluate, 'sample': train.sample, 'eval': train.evaluate}[FLAGS.mode]
    run(config, FLAGS.workdir)
  except user_errors as e:
    sys.exit(f'error: {e}')


if __name__ == '__main__':
  app.run(main)
