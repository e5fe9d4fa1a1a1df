"""Side-by-side comparison of runs: a markdown table, a CSV and overlaid curves.

  python -m ddpm_jax.tools.compare --workdirs=workdirs/a,workdirs/b --out=reports/ab [--labels=A,B]

Writes DIR/runs.md, DIR/runs.csv, DIR/loss_vs_step.png, DIR/loss_vs_epoch.png (runs that
logged 'epoch') and DIR/fid_vs_step.png (runs that logged 'fid', or else 'fid_classifier').
"""

import csv
import dataclasses
import io
import os
import sys
from typing import Optional, Sequence

from absl import flags
import numpy as np

from ddpm_jax import atomic_io, layout, viz
from ddpm_jax.tools import common, events

FINAL_LOSS_WINDOW = 5  # Final loss: the mean of this many last logged values.
COLUMNS = ('run', 'network', 'parameters', 'loss', 'schedule', 'final loss', 'final FID',
           'best FID', 'steps', 'wall time (s)')


@dataclasses.dataclass(frozen=True)
class RunSummary:
  """One row of the comparison; None where the run did not record the quantity."""
  label: str
  network: Optional[str]
  num_params: Optional[int]
  loss: Optional[str]
  schedule: Optional[str]
  final_loss: Optional[float]
  final_fid: Optional[float]
  best_fid: Optional[float]
  steps: Optional[int]
  wall_time_s: Optional[float]

  def values(self) -> tuple:
    return (self.label, self.network, self.num_params, self.loss, self.schedule, self.final_loss,
            self.final_fid, self.best_fid, self.steps, self.wall_time_s)


# A run's FID curve: Inception's when logged, else the offline classifier's (not comparable).
FID_TAGS = ('fid', 'fid_classifier')


def fid_series(scalars: dict) -> Optional['events.Series']:
  return next((scalars[tag] for tag in FID_TAGS if tag in scalars), None)


def summarize(config: dict, scalars: dict[str, events.Series], run_info: dict, label: str,
              window: int = FINAL_LOSS_WINDOW) -> RunSummary:
  """The table row of one run from its config dict, scalars and run_info dict.

  steps: run_info's step, else the last step 'loss' was logged at.
  """
  loss, fid = scalars.get('loss'), fid_series(scalars)
  steps = run_info.get('step')
  if steps is None and loss is not None and len(loss.steps):
    steps = int(loss.steps[-1])
  has = lambda s: s is not None and len(s.values) > 0
  return RunSummary(
      label=label,
      network=layout.config_value(config, 'model.name'),
      num_params=run_info.get('num_params'),
      loss=layout.config_value(config, 'diffusion.loss'),
      schedule=layout.config_value(config, 'diffusion.schedule'),
      final_loss=float(np.mean(loss.values[-window:])) if has(loss) else None,
      final_fid=float(fid.values[-1]) if has(fid) else None,
      best_fid=float(np.min(fid.values)) if has(fid) else None,
      steps=steps,
      wall_time_s=run_info.get('wall_time_s'))


def default_labels(workdirs: Sequence[str]) -> list[str]:
  """Each workdir's last path component, or the whole path where two would clash."""
  names = [os.path.basename(os.path.normpath(w)) for w in workdirs]
  return names if len(set(names)) == len(names) else [os.path.normpath(w) for w in workdirs]


def _format_markdown(value, column: str) -> str:
  """A cell for people: thousands separators, 4 significant digits, FID to 2 decimals."""
  if value is None:
    return ''
  if column == 'parameters' or column == 'steps':
    return f'{int(value):,}'
  if column in ('final FID', 'best FID'):
    return f'{value:.2f}'
  if column == 'final loss':
    return f'{value:.4g}'
  if column == 'wall time (s)':
    return f'{value:,.0f}'
  return str(value).replace('|', '\\|')


def markdown_table(rows: Sequence[RunSummary]) -> str:
  """A GitHub markdown table of the rows, one per run, COLUMNS as header."""
  lines = ['| ' + ' | '.join(COLUMNS) + ' |', '|' + '|'.join('---' for _ in COLUMNS) + '|']
  for row in rows:
    cells = [_format_markdown(v, c) for v, c in zip(row.values(), COLUMNS)]
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def csv_text(rows: Sequence[RunSummary]) -> str:
  """The rows as CSV with COLUMNS as header; floats in full (repr) precision, None empty."""
  buffer = io.StringIO()
  writer = csv.writer(buffer, lineterminator='\n')
  writer.writerow(COLUMNS)
  for row in rows:
    writer.writerow(['' if v is None else v for v in row.values()])
  return buffer.getvalue()




def _finite(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  keep = np.isfinite(x) & np.isfinite(y)
  return x[keep], y[keep]


def write_curves(scalars_by_label: dict[str, dict[str, events.Series]], out_dir: str) -> list[str]:
  """Overlaid loss-vs-step, loss-vs-epoch and FID-vs-step plots; returns the paths written.

  A plot is written only when at least one run has its series (epoch: 'epoch' logged with
  'loss', joined on step).
  """
  def collect(get_series, against_epoch: bool = False) -> dict:
    curves = {}
    for label, scalars in scalars_by_label.items():
      series = get_series(scalars)
      if series is None or (against_epoch and 'epoch' not in scalars):
        continue
      x, y = (events.join_on_step(scalars['epoch'], series) if against_epoch
              else (series.steps.astype(np.float64), series.values))
      x, y = _finite(x, y)
      if len(x):
        curves[label] = (x, y)
    return curves

  loss = lambda scalars: scalars.get('loss')
  plots = [('loss_vs_step.png', collect(loss), 'step', 'loss', True),
           ('loss_vs_epoch.png', collect(loss, against_epoch=True), 'epoch', 'loss', True),
           ('fid_vs_step.png', collect(fid_series), 'step', 'FID (Inception, else classifier)', False)]
  written = []
  for name, curves, xlabel, ylabel, log_y in plots:
    if curves:
      path = os.path.join(out_dir, name)
      positive = all(np.all(y > 0) for _, y in curves.values())
      viz.plot_curves(curves, xlabel, ylabel, path, log_y=log_y and positive)
      written.append(path)
  return written


def compare(workdirs: Sequence[str], out_dir: str, labels: Optional[Sequence[str]] = None,
            window: int = FINAL_LOSS_WINDOW) -> list[str]:
  """Writes runs.md, runs.csv and the curves of the runs in workdirs to out_dir.

  Returns the paths written. Raises errors.RunError for a workdir without config.json or
  event files, ValueError for labels that do not match the workdirs.
  """
  if not workdirs:
    raise ValueError('Give at least one workdir to compare.')
  labels = list(labels) if labels else default_labels(workdirs)
  if len(labels) != len(workdirs) or len(set(labels)) != len(labels):
    raise ValueError(f'{len(labels)} labels for {len(workdirs)} workdirs: give one distinct '
                     f'label per workdir.')
  rows, scalars_by_label = [], {}
  for workdir, label in zip(workdirs, labels):
    config = layout.read_config(workdir)
    scalars = events.read_scalars(workdir)
    rows.append(summarize(config, scalars, layout.read_run_info(workdir), label, window))
    scalars_by_label[label] = scalars
  os.makedirs(out_dir, exist_ok=True)
  md_path, csv_path = os.path.join(out_dir, 'runs.md'), os.path.join(out_dir, 'runs.csv')
  atomic_io.write_text(md_path, markdown_table(rows))
  atomic_io.write_text(csv_path, csv_text(rows))
  return [md_path, csv_path] + write_curves(scalars_by_label, out_dir)


def _split(text: str) -> list[str]:
  return [part.strip() for part in text.split(',') if part.strip()] if text else []


def define_flags(fv: flags.FlagValues) -> None:
  """The tool's flags (common.main parses them)."""
  flags.DEFINE_string('workdirs', None, 'Comma-separated run workdirs.', flag_values=fv)
  flags.DEFINE_string('out', None, 'Folder for the table, CSV and plots.', flag_values=fv)
  flags.DEFINE_string('labels', '', 'Comma-separated labels, one per workdir (default: the workdirs\' names).',
                      flag_values=fv)
  flags.DEFINE_integer('final_loss_window', FINAL_LOSS_WINDOW, 'Final loss = mean of this many last logged values.',
                       lower_bound=1, flag_values=fv)


def write_comparison(fv: flags.FlagValues) -> None:
  """compare() on the parsed flags; prints each path written."""
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # TensorFlow (reading events) stays quiet.
  for path in compare(_split(fv.workdirs), fv.out, _split(fv.labels), fv.final_loss_window):
    print(f'Wrote {path}')


def main(argv: Optional[Sequence[str]] = None) -> int:
  """The command (the ddpm-jax-compare script) on argv (argv[0] the program; None: sys.argv); the exit status.
  compare's ValueErrors (errors.RunError included) are one line."""
  return common.main(argv, define_flags, write_comparison, doc=__doc__, required=('workdirs', 'out'),
                     errors=(ValueError,), output_flag='out')


if __name__ == '__main__':
  sys.exit(main())
