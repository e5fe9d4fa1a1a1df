"""An image folder of any size -> array_record shards that the streaming pipeline reads by index.

  python -m ddpm_jax.tools.prepare_data --image_folder=DIR --out=OUT --image_size=32 \\
    [--split=train] [--num_channels=3] [--resize_images] [--skip_bad_images] [--encoding=png]

reads DIR/SPLIT/CLASS/*.png|jpg|jpeg exactly as the memory pipeline does (data.list_image_folder,
data.image_to_array: the same label ids, mode conversion, resizing and bad-image handling), one
image at a time, and writes OUT/SPLIT/: records-NNNNN-of-MMMMM.array_record (one record per image,
`--records_per_shard` per file), labels.npy and manifest.json (count, shape, encoding, class names,
label counts, files). Then train with --config.data.dataset=array_record --config.data.data_dir=OUT
--config.data.pipeline=streaming (or memory: the same batches, held whole). --out_dir, the former
name of --out, still works with a warning.

The split is written into OUT/SPLIT.tmp-PID and renamed to OUT/SPLIT only when complete. A bad input
(an unreadable image, one of another size) or a full disk exits with status 1 and one line `error:
...` (ddpm_jax/tools/common.py), a signal with `stopped: ...` (SIGTERM: 143); either way the
temporary folder is removed, and OUT too when the run made it. After kill -9 the same command
removes the dead run's temporary folder and writes the split again.
"""

import contextlib
import json
import math
import os
import sys
from typing import Iterable, Optional, Sequence

from absl import flags
import numpy as np

from ddpm_jax import atomic_io, data
from ddpm_jax.errors import DataError
from ddpm_jax.tools import common

# This tool's flags, named in the errors of data.decode_image_files.
TOOL_IMAGE_FLAGS = data.ImageFlags('--image_size', '--resize_images', '--skip_bad_images')


def prepare_split(image_folder: str, out_dir: str, split: str, image_size: int, num_channels: int, *,
                  resize: bool = False, skip_bad: bool = False, encoding: str = 'png', jpeg_quality: int = 95,
                  records_per_shard: int = 10_000, classes: Sequence[int] = (), train_split: str = 'train',
                  overwrite: bool = False) -> dict:
  """Writes OUT/SPLIT from IMAGE_FOLDER/SPLIT; returns its manifest. DataError (one line) on bad input."""
  check_settings(image_size, num_channels, encoding, jpeg_quality, records_per_shard)
  image_folder = os.path.expanduser(image_folder)
  if not os.path.isdir(image_folder):
    raise DataError(f'--image_folder {image_folder} is not a folder (layout: {data.FOLDER_LAYOUT}).')
  check_out_dir(out_dir, split, overwrite)
  split_dir, class_names, paths, labels, _ = data.list_image_folder(image_folder, split, classes, train_split)
  images = data.decode_image_files(paths, image_size, num_channels, resize, skip_bad, split_dir, TOOL_IMAGE_FLAGS)
  return write_split(out_dir, split, images, labels, class_names, (image_size, image_size, num_channels),
                     encoding=encoding, jpeg_quality=jpeg_quality, records_per_shard=records_per_shard,
                     source=os.path.abspath(split_dir), resized=resize)


def check_settings(image_size: int, num_channels: int, encoding: str, jpeg_quality: int, records_per_shard: int) -> None:
  if encoding not in data.RECORD_ENCODINGS:
    raise DataError(f'--encoding={encoding!r} is not one of {", ".join(data.RECORD_ENCODINGS)}.')
  if image_size < 1 or num_channels not in (1, 3) or records_per_shard < 1 or not 1 <= jpeg_quality <= 100:
    raise DataError(f'--image_size ({image_size}) and --records_per_shard ({records_per_shard}) must be positive, '
                    f'--num_channels ({num_channels}) 1 or 3, --jpeg_quality ({jpeg_quality}) in [1, 100].')


def check_out_dir(out_dir: str, split: str, overwrite: bool) -> None:
  """Refuses an --out that is a file, or one that holds the split already without --overwrite."""
  out_dir = os.path.expanduser(out_dir)
  final = os.path.join(out_dir, split)
  if os.path.exists(out_dir) and not os.path.isdir(out_dir):
    raise DataError(f'--out={out_dir} is a file: give a folder (new, or one to add OUT/{split} to).')
  if os.path.exists(final) and not overwrite:
    raise DataError(f'{final} exists: give another --out, or --overwrite to replace it.')


def write_split(out_dir: str, split: str, images: Iterable[np.ndarray | None], labels: Sequence[int],
                class_names: Sequence[str], shape: Sequence[int], *, encoding: str = 'png', jpeg_quality: int = 95,
                records_per_shard: int = 10_000, source: str = '', resized: bool = False) -> dict:
  """Writes OUT/SPLIT from (H, W, C) uint8 images (None: an image skipped) and their labels, one at a
  time; the folder appears under its final name only when complete (atomic_io.temporary_folder).
  Returns the manifest."""
  final = os.path.join(os.path.expanduser(out_dir), split)
  with atomic_io.temporary_folder(final) as tmp:
    kept_labels, files = write_records(tmp, images, labels, encoding, jpeg_quality, records_per_shard)
    if not kept_labels:
      raise DataError(f'No image of {source or split} could be read ({len(labels)} skipped as unreadable).')
    label_array = np.asarray(kept_labels, np.int32)
    manifest = {
        'format': data.MANIFEST_FORMAT, 'version': data.MANIFEST_VERSION, 'split': split,
        'count': len(label_array), 'shape': [int(n) for n in shape], 'encoding': encoding,
        'class_names': list(class_names),
        'label_counts': np.bincount(label_array, minlength=len(class_names)).tolist(),
        'files': files, 'source': source, 'skipped': len(labels) - len(label_array), 'resized': resized}
    atomic_io.save_npy(os.path.join(tmp, data.LABELS_FILE), label_array)
    atomic_io.write_json(os.path.join(tmp, data.MANIFEST_FILE), manifest)
    atomic_io.replace_folder(tmp, final)
  return manifest


def write_records(folder: str, images: Iterable[np.ndarray | None], labels: Sequence[int], encoding: str,
                  jpeg_quality: int, records_per_shard: int) -> tuple[list[int], list[dict]]:
  """The records of the images (None: skipped) in array_record shards in `folder`: (the labels of
  the images written, [{'name': shard file, 'count': its records}])."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  num_shards = max(1, math.ceil(len(labels) / records_per_shard))
  kept_labels, files, writer = [], [], None
  try:
    for i, (image, label) in enumerate(zip(images, labels)):
      if i % records_per_shard == 0:
        if writer is not None:
          writer.close()
        name = data.record_file_name(len(files), num_shards)
        writer = array_record_module.ArrayRecordWriter(os.path.join(folder, name), data.RECORD_WRITER_OPTIONS)
        files.append({'name': name, 'count': 0})
      if image is not None:
        writer.write(data.encode_record(image, encoding, jpeg_quality))
        files[-1]['count'] += 1
        kept_labels.append(label)
    if writer is not None:
      writer.close()
  except BaseException:
    if writer is not None:
      with contextlib.suppress(Exception):  # The first error is the one to report.
        writer.close()
    raise
  return kept_labels, files


def define_flags(fv: flags.FlagValues) -> None:
  """The tool's flags (common.main parses them; --out_dir is --out's former name)."""
  flags.DEFINE_string('image_folder', None, f'The image folder: {data.FOLDER_LAYOUT}.', flag_values=fv)
  flags.DEFINE_string('out', None, 'Folder to write OUT/SPLIT/ into; train with --config.data.dataset=array_record '
                      '--config.data.data_dir=OUT.', flag_values=fv)
  flags.DEFINE_string('split', 'train', 'The split (a subfolder of --image_folder) to convert.', flag_values=fv)
  flags.DEFINE_string('train_split', 'train', 'The split whose class folders give the label ids.', flag_values=fv)
  flags.DEFINE_integer('image_size', None, 'Side of the square images written.', flag_values=fv)
  flags.DEFINE_integer('num_channels', 3, '1 (greyscale) or 3 (RGB).', flag_values=fv)
  flags.DEFINE_bool('resize_images', False, 'Centre-crop and resize images of another size (else an error).',
                    flag_values=fv)
  flags.DEFINE_bool('skip_bad_images', False, 'Skip files Pillow cannot read (else an error naming the file).',
                    flag_values=fv)
  flags.DEFINE_enum('encoding', 'png', list(data.RECORD_ENCODINGS), 'png: lossless; jpeg: smaller, lossy; '
                    'raw: uint8 pixels, no decoding, largest.', flag_values=fv)
  flags.DEFINE_integer('jpeg_quality', 95, '--encoding=jpeg: quality in [1, 100].', flag_values=fv)
  flags.DEFINE_integer('records_per_shard', 10_000, 'Images per array_record file.', flag_values=fv)
  flags.DEFINE_bool('overwrite', False, 'Replace OUT/SPLIT when it exists.', flag_values=fv)


def write_prepared(fv: flags.FlagValues) -> None:
  """prepare_split on the parsed flags; prints a one-line JSON summary."""
  manifest = prepare_split(fv.image_folder, fv.out, fv.split, fv.image_size, fv.num_channels,
                           resize=fv.resize_images, skip_bad=fv.skip_bad_images, encoding=fv.encoding,
                           jpeg_quality=fv.jpeg_quality, records_per_shard=fv.records_per_shard,
                           train_split=fv.train_split, overwrite=fv.overwrite)
  print(json.dumps({k: manifest[k] for k in ('split', 'count', 'shape', 'encoding', 'skipped')}
                   | {'classes': len(manifest['class_names']), 'files': len(manifest['files']),
                      'out_dir': os.path.join(os.path.expanduser(fv.out), fv.split)}))


def main(argv: Optional[Sequence[str]] = None) -> int:
  """The command (the ddpm-jax-prepare-data script) on argv (argv[0] the program; None: sys.argv);
  the exit status."""
  return common.main(argv, define_flags, write_prepared, doc=__doc__, required=('image_folder', 'out', 'image_size'),
                     deprecated={'out_dir': 'out'}, output_flag='out')


if __name__ == '__main__':
  sys.exit(main())
