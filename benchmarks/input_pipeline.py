"""Images/s of the streaming input pipeline and peak host memory of both pipelines; JSON lines out.

  python benchmarks/input_pipeline.py [--cifar_tar=../shared/data/cifar10-jpeg.tar.gz] \
    [--work_dir=/tmp/ddpm-jax-input-pipeline] [--images=4000] [--batch_size=128]

From CIFAR-10's JPEG folder (the offline copy the project's shared data holds) it makes two JPEG
folders of --images images: the 32x32 originals, and the same upscaled to 256x256 (bicubic, JPEG
quality 90); converts each with `python -m ddpm_jax.tools.prepare_data` (timed, in a subprocess)
to png and jpeg records; then prints, per folder, encoding and worker count:
- prepare: images/s of the conversion;
- stream: images/s of StreamingBatches.batches over --steps batches (after the first batch, which
  carries the workers' start, reported as first_batch_s), and the train step's demand on one H200
  (--mfu of its dense bf16 peak over --train_gflops per image) with the hosts it takes to keep up;
- memory: peak RSS growth (VmHWM) of the memory pipeline holding the split vs the streaming
  pipeline reading an epoch of it, each in a fresh process.
Writes only under --work_dir. Asserts nothing about time.
"""

import json
import os
import subprocess
import sys
import tarfile
import time

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

flags.DEFINE_string('cifar_tar', os.path.join(ROOT, '..', 'shared', 'data', 'cifar10-jpeg.tar.gz'),
                    'CIFAR-10 as train/CLASS/NNNN.jpg in a .tar.gz.')
flags.DEFINE_string('work_dir', '/tmp/ddpm-jax-input-pipeline', 'Where the folders and records go.')
flags.DEFINE_integer('images', 4000, 'Images per folder (the first of each class).')
flags.DEFINE_integer('batch_size', 128, 'Batch size read by the pipeline.')
flags.DEFINE_integer('steps', 20, 'Batches timed per measurement.')
flags.DEFINE_list('workers', ['0', '2'], 'Worker process counts to measure.')
flags.DEFINE_integer('worker_threads', 2, 'config.data.worker_threads.')
flags.DEFINE_integer('prefetch_batches', 2, 'config.data.prefetch_batches.')
flags.DEFINE_float('mfu', 0.4, 'Assumed model FLOP utilisation of the H200 for the demand.')
flags.DEFINE_float('peak_flops', 989.4e12, 'The H200\'s dense bf16 peak FLOP/s (benchmarks/throughput.py).')
flags.DEFINE_list('train_gflops', ['32:32.5', '256:1395'], 'SIZE:GFLOP of the DDPM UNet\'s train step per image '
                  '(XLA\'s count of its gradient at batch 1, benchmarks/README.md; 0 = no demand printed).')
flags.DEFINE_string('measure_memory', '', 'Internal: memory|streaming, measured in this process.')
flags.DEFINE_string('data_dir', '', 'Internal: the prepared folder of --measure_memory.')
flags.DEFINE_integer('image_size', 32, 'Internal: its image size.')


def emit(record: dict) -> None:
  print(json.dumps(record), flush=True)


def peak_mb() -> float:
  """This process's peak RSS (VmHWM; getrusage's maxrss would carry over the parent's across exec)."""
  with open('/proc/self/status') as f:
    return next(int(line.split()[1]) for line in f if line.startswith('VmHWM:')) / 1024


def make_folders(tar_path: str, work_dir: str, count: int) -> dict:
  """{32: folder of original JPEGs, 256: the same upscaled}; reused when present."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  folders = {32: os.path.join(work_dir, f'jpeg32_{count}'), 256: os.path.join(work_dir, f'jpeg256_{count}')}
  if os.path.isdir(folders[256]):
    return folders
  per_class = {}
  with tarfile.open(tar_path) as tar:
    for member in tar:
      parts = member.name.split('/')
      if len(parts) != 3 or parts[0] != 'train' or not member.isfile():
        continue
      if per_class.get(parts[1], 0) >= count // 10:
        continue
      per_class[parts[1]] = per_class.get(parts[1], 0) + 1
      content = tar.extractfile(member).read()
      for size, folder in folders.items():
        path = os.path.join(folder, *parts)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if size == 32:
          with open(path, 'wb') as f:
            f.write(content)
        else:
          import io  # pylint: disable=g-import-not-at-top
          with Image.open(io.BytesIO(content)) as image:
            image.convert('RGB').resize((size, size), Image.Resampling.BICUBIC).save(path, quality=90)
  return folders


def prepare(folder: str, out_dir: str, size: int, encoding: str, count: int) -> None:
  if os.path.isdir(os.path.join(out_dir, 'train')):
    return
  start = time.perf_counter()
  subprocess.run([sys.executable, '-m', 'ddpm_jax.tools.prepare_data', f'--image_folder={folder}',
                  f'--out={out_dir}', f'--image_size={size}', f'--encoding={encoding}'],
                 cwd=ROOT, check=True, capture_output=True)
  seconds = time.perf_counter() - start
  emit({'what': 'prepare', 'image_size': size, 'encoding': encoding, 'images': count,
        'seconds': round(seconds, 1), 'images_per_s': round(count / seconds, 1),
        'bytes_per_image': round(sum(e.stat().st_size for e in os.scandir(os.path.join(out_dir, 'train')))
                                 / count)})


def data_config(data_dir: str, size: int, pipeline: str, workers: int):
  from configs import default  # pylint: disable=g-import-not-at-top
  config = default.get_config().data
  config.update(dict(dataset='array_record', data_dir=data_dir, image_size=size, num_channels=3,
                     pipeline=pipeline, num_workers=workers, worker_threads=flags.FLAGS.worker_threads,
                     prefetch_batches=flags.FLAGS.prefetch_batches, image_cache_dir=''))
  return config


def measure_stream(data_dir: str, size: int, encoding: str, workers: int) -> None:
  from ddpm_jax import streaming  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  with streaming.open_batches(data_config(data_dir, size, 'streaming', workers), 'train', f.batch_size, 0) as p:
    start = time.perf_counter()
    batches = p.batches(0, f.steps + 1)
    next(batches)
    first = time.perf_counter() - start
    start = time.perf_counter()
    count = sum(len(b.images) for b in batches)
    seconds = time.perf_counter() - start
  rate = count / seconds
  gflops = dict(item.split(':') for item in f.train_gflops).get(str(size), '0')
  demand = f.mfu * f.peak_flops / (float(gflops) * 1e9) if float(gflops) else None
  emit({'what': 'stream', 'image_size': size, 'encoding': encoding, 'num_workers': workers,
        'worker_threads': f.worker_threads, 'batch_size': f.batch_size, 'first_batch_s': round(first, 2),
        'images_per_s': round(rate, 1), 'load_avg_1min': os.getloadavg()[0],
        'h200_demand_images_per_s': round(demand) if demand else None,
        'hosts_to_feed_one_h200': round(demand / rate, 1) if demand else None})


def measure_memory_here(kind: str, data_dir: str, size: int) -> None:
  """Peak RSS growth of one pipeline in this (fresh) process: the memory pipeline's load, or an
  epoch of the streaming one (workers in their own processes are counted apart: num_workers=0)."""
  import grain  # pylint: disable=g-import-not-at-top  # Module code, not data: imported before measuring.
  del grain
  from ddpm_jax import data, streaming  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  config = data_config(data_dir, size, kind, 0)
  manifest = data.read_manifest(data_dir, 'train')
  before = peak_mb()
  with streaming.open_batches(config, 'train', f.batch_size, 0) as p:
    if kind == 'streaming':
      for _ in p.batches(0, p.num_examples // f.batch_size):
        pass
  emit({'what': 'memory', 'pipeline': kind, 'image_size': size, 'encoding': manifest['encoding'],
        'images': manifest['count'], 'uint8_dataset_mb': round(manifest['count'] * size * size * 3 / 2 ** 20, 1),
        'peak_rss_growth_mb': round(peak_mb() - before, 1), 'peak_rss_mb': round(peak_mb(), 1)})


def main(argv) -> None:
  del argv
  f = flags.FLAGS
  if f.measure_memory:
    measure_memory_here(f.measure_memory, f.data_dir, f.image_size)
    return
  os.makedirs(f.work_dir, exist_ok=True)
  folders = make_folders(f.cifar_tar, f.work_dir, f.images)
  for size, folder in folders.items():
    for encoding in ('png', 'jpeg'):
      out_dir = os.path.join(f.work_dir, f'records{size}_{encoding}_{f.images}')
      prepare(folder, out_dir, size, encoding, f.images)
      for workers in map(int, f.workers):
        measure_stream(out_dir, size, encoding, workers)
  for kind in ('memory', 'streaming'):
    subprocess.run([sys.executable, os.path.abspath(__file__), f'--measure_memory={kind}', '--image_size=256',
                    f'--data_dir={os.path.join(f.work_dir, f"records256_png_{f.images}")}',
                    f'--batch_size={f.batch_size}'], cwd=ROOT, check=True)


if __name__ == '__main__':
  app.run(main)
