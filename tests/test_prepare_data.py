"""python -m ddpm_jax.tools.prepare_data as a writer (issue 28 §3): the split appears whole or not at
all, --overwrite replaces it whole, a signal while the records are written stops with one line and
nothing left, and bad images are refused in the tool's own flags. Its bad inputs and kill -9 are in
tests/test_bad_tool_inputs.py's table; the records' contents against the memory pipeline in
tests/test_streaming.py."""

import os
import signal
import time

import numpy as np

import files_testlib
from test_bad_tool_inputs import SIZE, write_images
from ddpm_jax import data
from ddpm_jax.tools import prepare_data


def run(args, capsys) -> tuple[int, str]:
  code = prepare_data.main(['prepare_data', *args])
  return code, capsys.readouterr().err


def test_overwrite_replaces_the_split_whole_and_keeps_the_others(tmp_path, capsys):
  images = write_images(str(tmp_path / 'images'), sizes=((SIZE, SIZE), (12, 10)), per_class=4)
  out = tmp_path / 'out'
  (out / 'test').mkdir(parents=True)
  (out / 'test' / 'notes.txt').write_text('another split')
  command = [f'--image_folder={images}', f'--out={out}', f'--image_size={SIZE}']
  code, err = run(command + ['--resize_images', '--records_per_shard=5'], capsys)
  assert code == 0, err
  first = data.load_array_record(str(out), 'train', SIZE, 3, False).images
  code, err = run(command + ['--resize_images', '--image_size=4', '--overwrite'], capsys)
  assert code == 0, err
  manifest = data.read_manifest(str(out), 'train')
  assert manifest['shape'] == [4, 4, 3] and [f['count'] for f in manifest['files']] == [8]
  # Nothing of the first split stays (it had two shards), nothing of the temporaries either.
  assert sorted(os.listdir(out / 'train')) == ['labels.npy', 'manifest.json', manifest['files'][0]['name']]
  assert sorted(os.listdir(out)) == ['test', 'train'] and (out / 'test' / 'notes.txt').read_text() == 'another split'
  assert len(first) == 8 and len(data.load_array_record(str(out), 'train', 4, 3, False).images) == 8


def test_sigterm_while_the_records_are_written_stops_in_one_line_and_leaves_nothing(tmp_path, capsys, monkeypatch):
  images = write_images(str(tmp_path / 'images'), per_class=4)
  out = tmp_path / 'made' / 'out'  # Two folders the run makes.
  before = files_testlib.snapshot(str(tmp_path))
  encode, calls = data.encode_record, []

  def signalled(*args, **kwargs):
    calls.append(1)
    if len(calls) == 3:  # Two records written, a shard open.
      os.kill(os.getpid(), signal.SIGTERM)
      time.sleep(5)  # The handler raises here.
    return encode(*args, **kwargs)

  monkeypatch.setattr(data, 'encode_record', signalled)
  command = [f'--image_folder={images}', f'--out={out}', f'--image_size={SIZE}']
  code, err = run(command, capsys)
  assert code == 143 and err.strip().splitlines()[-1].startswith('stopped: SIGTERM; '), err
  assert len(calls) == 3 and files_testlib.snapshot(str(tmp_path)) == before
  monkeypatch.undo()
  code, err = run(command, capsys)
  assert code == 0 and data.read_manifest(str(out), 'train')['count'] == 8, err


def test_skipped_images_are_counted_and_named_in_one_warning(tmp_path, capsys, caplog):
  images = write_images(str(tmp_path / 'images'))
  (tmp_path / 'images' / 'train' / 'b' / 'zz.jpg').write_text('not a jpeg')
  code, err = run([f'--image_folder={images}', f'--out={tmp_path / "out"}', f'--image_size={SIZE}',
                   '--skip_bad_images'], capsys)
  manifest = data.read_manifest(str(tmp_path / 'out'), 'train')
  assert code == 0 and (manifest['count'], manifest['skipped']) == (6, 1), err
  assert np.bincount(np.load(tmp_path / 'out' / 'train' / data.LABELS_FILE)).tolist() == [3, 3]
  assert [r.getMessage() for r in caplog.records if 'unreadable' in r.getMessage()] == [
      f'Skipped 1 unreadable images of {tmp_path / "images" / "train"} (--skip_bad_images), e.g. '
      f'{tmp_path / "images" / "train" / "b" / "zz.jpg"}.']
