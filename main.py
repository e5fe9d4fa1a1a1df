"""ddpm-jax entry point: trains, samples, evaluates or draws figures of a run in --workdir.

  python main.py --config=configs/quickstart.py --workdir=workdirs/quickstart
  python main.py --config=configs/quickstart.py --workdir=workdirs/quickstart --mode=sample
  python main.py --config=configs/quickstart.py --workdir=workdirs/quickstart --mode=eval

Any config field can be overridden: --config.optim.lr=1e-3. Rerunning the same command with the
same --workdir resumes from the latest checkpoint. Errors, signals and exit codes: ddpm_jax/cli.py.
"""

from absl import app, flags
from ml_collections import config_flags

from ddpm_jax import cli

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Path to a config file (configs/*.py).', lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory holding the run: config, checkpoints, events, samples.')
flags.DEFINE_enum('mode', 'train', cli.MODES,
                  'train: train (or resume); sample: write samples; eval: metrics of the latest checkpoint; '
                  'figures: reverse- and forward-process pictures of the latest checkpoint; edit: inpaint, colorize '
                  'or super-resolve images with the latest checkpoint (config.edit).')
flags.DEFINE_bool('force_workdir_config', False,
                  'Use a --workdir whose config.json defines a different model or diffusion: allowed when its '
                  'checkpoints fit the new model (same arrays and shapes); training then rewrites config.json.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv: list[str]) -> None:
  del argv  # parse_flags refused extra arguments.
  cli.run(FLAGS.mode, FLAGS.config, FLAGS.workdir, FLAGS.force_workdir_config)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
