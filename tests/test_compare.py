"""Comparing runs: markdown and CSV rows from tiny fake workdirs, curves, the CLI."""

import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

from ddpm_jax import errors
from ddpm_jax.tools import compare, events

f32 = lambda v: float(np.float32(v))


def make_workdir(path, model: str, loss: str, schedule: str, losses: dict, epochs: dict = None,
                 fids: dict = None, run_info: dict = None) -> str:
  """A workdir as train.py leaves it: config.json, CLU events, optionally run_info.json."""
  from clu import metric_writers  # pylint: disable=g-import-not-at-top
  os.makedirs(path, exist_ok=True)
  config = {'model': {'name': model}, 'diffusion': {'loss': loss, 'schedule': schedule},
            'seed': 0}
  with open(os.path.join(path, 'config.json'), 'w') as f:
    json.dump(config, f)
  if run_info is not None:
    with open(os.path.join(path, 'run_info.json'), 'w') as f:
      json.dump(run_info, f)
  writer = metric_writers.create_default_writer(path, asynchronous=False)
  for step, value in losses.items():
    writer.write_scalars(step, {'loss': value, **({'epoch': epochs[step]} if epochs else {})})
  for step, value in (fids or {}).items():
    writer.write_scalars(step, {'fid': value})
  writer.close()
  return path


@pytest.fixture(scope='module')
def workdirs(tmp_path_factory):
  root = tmp_path_factory.mktemp('runs')
  a = make_workdir(str(root / 'simple_linear'), 'unet_simple', 'simple', 'linear',
                   {10 * i: 1.0 / i for i in range(1, 9)}, epochs={10 * i: 0.25 * i for i in range(1, 9)},
                   fids={40: 120.5, 80: 60.25, 60: 55.0},
                   run_info={'num_params': 1234567, 'wall_time_s': 3725.4, 'step': 80})
  b = make_workdir(str(root / 'resnet_cosine'), 'unet_resnet', 'hybrid', 'cosine',
                   {5: 2.0, 10: 1.5, 15: 1.25})
  return a, b


def test_summaries_and_table(workdirs, tmp_path):
  out = str(tmp_path / 'report')
  paths = compare.compare(list(workdirs), out, window=5)
  names = sorted(os.path.basename(p) for p in paths)
  assert names == ['fid_vs_step.png', 'loss_vs_epoch.png', 'loss_vs_step.png', 'runs.csv', 'runs.md']
  assert sorted(os.listdir(out)) == names  # No temporary files left.

  with open(os.path.join(out, 'runs.csv')) as f:
    rows = list(csv.reader(f))
  assert rows[0] == list(compare.COLUMNS)
  final_a = np.mean([f32(1.0 / i) for i in range(4, 9)])  # The last 5 logged losses.
  assert rows[1][:5] == ['simple_linear', 'unet_simple', '1234567', 'simple', 'linear']
  assert float(rows[1][5]) == pytest.approx(final_a, rel=1e-12)
  assert [float(v) for v in rows[1][6:8]] == [60.25, 55.0]  # Final (last step) and best FID.
  assert rows[1][8:] == ['80', '3725.4']
  # No run_info, no FID: blank cells; steps from the last logged loss.
  assert rows[2] == ['resnet_cosine', 'unet_resnet', '', 'hybrid', 'cosine',
                     repr(float(np.mean([2.0, 1.5, 1.25]))), '', '', '15', '']

  with open(os.path.join(out, 'runs.md')) as f:
    lines = f.read().splitlines()
  assert len(lines) == 4
  assert lines[0] == '| ' + ' | '.join(compare.COLUMNS) + ' |'
  assert lines[2] == (f'| simple_linear | unet_simple | 1,234,567 | simple | linear | {final_a:.4g} '
                      f'| 60.25 | 55.00 | 80 | 3,725 |')
  assert lines[3] == '| resnet_cosine | unet_resnet |  | hybrid | cosine | 1.583 |  |  | 15 |  |'

  for name in ('loss_vs_step.png', 'loss_vs_epoch.png', 'fid_vs_step.png'):
    assert Image.open(os.path.join(out, name)).format == 'PNG'


def test_curves_only_for_logged_series(workdirs, tmp_path):
  scalars = {'b': events.read_scalars(workdirs[1])}  # Neither 'epoch' nor 'fid'.
  written = compare.write_curves(scalars, str(tmp_path))
  assert [os.path.basename(p) for p in written] == ['loss_vs_step.png']


def test_summarize_window_and_missing_fields():
  loss = events.Series(np.arange(1, 11), np.arange(10, 0, -1, dtype=np.float64))
  row = compare.summarize({}, {'loss': loss}, {}, 'x', window=3)
  assert row.final_loss == 2.0 and row.steps == 10
  assert (row.network, row.num_params, row.final_fid, row.wall_time_s) == (None, None, None, None)


def test_labels(workdirs, tmp_path):
  assert compare.default_labels(['a/run', 'b/other/']) == ['run', 'other']
  assert compare.default_labels(['a/run', 'b/run']) == ['a/run', 'b/run']
  with pytest.raises(ValueError, match='2 labels for 1 workdirs'):
    compare.compare([workdirs[0]], str(tmp_path), labels=['x', 'y'])


def test_cli_writes_and_reports(workdirs, tmp_path, capsys):
  out = str(tmp_path / 'cli')
  assert compare.main(['compare', f'--workdirs={",".join(workdirs)}', f'--out={out}', '--labels=A,B']) == 0
  printed = capsys.readouterr().out.splitlines()
  assert printed[0] == f'Wrote {os.path.join(out, "runs.md")}'
  assert len(printed) == 5
  with open(os.path.join(out, 'runs.csv')) as f:
    assert [row[0] for row in csv.reader(f)] == ['run', 'A', 'B']


def test_cli_error_for_a_workdir_that_is_not_a_run(workdirs, tmp_path, capsys):
  empty = tmp_path / 'empty'
  empty.mkdir()
  assert compare.main(['compare', f'--workdirs={workdirs[0]},{empty}', f'--out={tmp_path / "o"}']) == 1
  err = capsys.readouterr().err
  assert err == f'error: No config.json in {empty}: is it the --workdir of a training run?\n'
  assert not (tmp_path / 'o').exists()  # Every workdir is read before anything is written.
  (empty / 'config.json').write_text('{}')
  with pytest.raises(errors.RunError, match='No TensorBoard event files'):
    compare.compare([str(empty)], str(tmp_path / 'o'))


def test_the_classifier_fid_stands_in_when_no_inception_fid_was_logged():
  series = events.Series(np.array([10, 20]), np.array([5.0, 3.0]))
  summary = compare.summarize({}, {'loss': series, 'fid_classifier': series}, {}, 'run')
  assert (summary.final_fid, summary.best_fid) == (3.0, 3.0)
  inception = events.Series(np.array([10]), np.array([9.0]))
  assert compare.summarize({}, {'fid': inception, 'fid_classifier': series}, {}, 'run').final_fid == 9.0


def test_cli_refuses_a_bad_command_line_in_one_line_before_writing(workdirs, tmp_path, capsys):
  out = tmp_path / 'o'
  cases = [([f'--workdirs={workdirs[0]}'], 'error: --out is required: '),
           ([f'--out={out}'], 'error: --workdirs is required: '),
           ([f'--workdirs={workdirs[0]}', f'--out={out}', '--final_loss_window=0'],
            'error: flag --final_loss_window=0: '),
           ([f'--workdirs={workdirs[0]}', f'--out={out}', 'extra'], "error: unexpected arguments 'extra'"),
           ([f'--workdirs={workdirs[0]}', f'--out={out}', '--labels=A,B'], 'error: 2 labels for 1 workdirs')]
  for args, message in cases:
    assert compare.main(['compare', *args]) == 1, args
    captured = capsys.readouterr()
    assert captured.out == '' and captured.err.startswith(message) and captured.err.count('\n') == 1, captured.err
    assert not out.exists()
