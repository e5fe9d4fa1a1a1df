"""Reading TensorBoard scalars back (ddpm_jax/tools/events.py), as written by a real CLU writer."""

import os

import numpy as np
import pytest

from ddpm_jax import errors
from ddpm_jax.tools import events

LOSSES = [0.9123456789, 0.51, 0.3333333, 0.125, 0.0987654321]


def write_scalars(logdir: str, rows: dict[int, dict[str, float]], hparams: bool = False) -> None:
  """Logs rows {step: {tag: value}} with the writer train.py uses (synchronous, then closed)."""
  from clu import metric_writers  # pylint: disable=g-import-not-at-top
  writer = metric_writers.create_default_writer(logdir, asynchronous=False)
  if hparams:
    writer.write_hparams({'num_params': 12345, 'model.name': 'unet_simple'})
  for step, scalars in rows.items():
    writer.write_scalars(step, scalars)
  writer.write_images(rows and max(rows), {'samples': np.zeros((1, 4, 4, 3), np.uint8)})
  writer.flush()
  writer.close()


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  """A run logged by two processes: the second resumed at step 300 and logged it again."""
  path = str(tmp_path_factory.mktemp('run'))
  write_scalars(path, {100 * (i + 1): {'loss': v, 'epoch': 0.5 * (i + 1), 'steps_per_sec': 7.5}
                       for i, v in enumerate(LOSSES[:4])}, hparams=True)
  write_scalars(path, {400: {'loss': 0.25}, 500: {'loss': LOSSES[4], 'epoch': 2.5}})
  write_scalars(os.path.join(path, 'eval'), {250: {'fid': 80.5}, 500: {'fid': 41.25}})
  write_scalars(os.path.join(path, 'checkpoints'), {500: {'loss': 99.0}})  # Never read.
  return path


def test_read_scalars_returns_exactly_what_was_written(workdir):
  scalars = events.read_scalars(workdir)
  assert sorted(scalars) == ['epoch', 'fid', 'loss', 'steps_per_sec']
  loss = scalars['loss']
  np.testing.assert_array_equal(loss.steps, [100, 200, 300, 400, 500])
  assert loss.steps.dtype == np.int64 and loss.values.dtype == np.float64
  # TensorBoard stores float32: each value is the float32 nearest the one logged.
  expected = [float(np.float32(v)) for v in LOSSES[:3] + [0.25] + LOSSES[4:]]
  assert loss.values.tolist() == expected  # 400 was logged twice: the later value wins.
  np.testing.assert_array_equal(scalars['epoch'].steps, [100, 200, 300, 400, 500])
  assert scalars['epoch'].values.tolist() == [0.5, 1.0, 1.5, 2.0, 2.5]
  assert scalars['steps_per_sec'].values.tolist() == [7.5] * 4
  assert scalars['fid'].steps.tolist() == [250, 500] and scalars['fid'].values.tolist() == [80.5, 41.25]


def test_read_scalars_filters_tags(workdir):
  assert list(events.read_scalars(workdir, tags=['fid'])) == ['fid']


def test_join_on_step_pairs_loss_with_epoch(workdir):
  scalars = events.read_scalars(workdir, tags=['loss', 'epoch'])
  epochs, losses = events.join_on_step(scalars['epoch'], scalars['loss'])
  assert epochs.tolist() == [0.5, 1.0, 1.5, 2.0, 2.5]
  np.testing.assert_array_equal(losses, scalars['loss'].values)
  partial = events.Series(np.array([200, 500, 600]), np.array([1.0, 2.0, 3.0]))
  x, y = events.join_on_step(partial, scalars['loss'])
  assert x.tolist() == [1.0, 2.0] and y.tolist() == [scalars['loss'].values[1], scalars['loss'].values[4]]


def test_a_workdir_without_events_is_a_clear_error(tmp_path):
  with pytest.raises(errors.RunError, match=f'No TensorBoard event files in {tmp_path}'):
    events.read_scalars(str(tmp_path))
