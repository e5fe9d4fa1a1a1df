"""--mode=edit: the newest checkpoint fills in what observed images leave open (config.edit).

inpaint fills the pixels the mask marks 0, colorize the colours of the greyscale images,
super_resolution the details within scale_factor x scale_factor blocks; the maths is in editing.py,
the sampler is config.sampling's (one that takes a constraint: generate.check_constrainable). Every
input (the sampler, the images, the mask) is checked before the checkpoint is read, and nothing is
written before the edit is done: samples/edit_<operation>_<step>.npz (uint8 'originals', 'views' as
the edit saw them, 'edited'; float32 'mask') and a .png figure, one column per image with the rows
view, edit, original.
"""

import os

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ddpm_jax import checkpoints, configuration, data, editing, generate, layout, parallel, streaming, viz
from ddpm_jax.errors import DataError
from ddpm_jax.train_state import components, root_keys

IMAGE_FILE_TYPES = ('.png', '.jpg', '.jpeg')


def image_shape(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
  return config.data.image_size, config.data.image_size, config.data.num_channels


def load_images(config: ml_collections.ConfigDict) -> np.ndarray:
  """The uint8 (N, H, W, C) images config.edit names: the first edit.num_images of the dataset's split
  edit.split, or of an .npz ('images', or its one array) or a folder of image files (sorted by path).
  DataError naming the source when they cannot be read or are not the config's image shape."""
  e, shape = config.edit, image_shape(config)
  source = os.path.expanduser(e.images)
  if not source:
    return np.asarray(streaming.first_images(config.data, e.split, e.num_images))
  if os.path.isdir(source):
    paths = sorted(os.path.join(d, n) for d, _, names in os.walk(source) for n in names
                   if n.lower().endswith(IMAGE_FILE_TYPES))[:e.num_images]
    if not paths:
      raise DataError(f'config.edit.images={source} holds no image files ({", ".join(IMAGE_FILE_TYPES)}): give a '
                      f'folder of images, an .npz, or \'\' for the dataset\'s split config.edit.split.')
    return np.stack([data.read_image(p, shape[0], shape[2], resize=False) for p in paths])
  if not os.path.isfile(source):
    raise DataError(f'config.edit.images={source} does not exist: give an .npz, a folder of images, or \'\' for the '
                    f'dataset\'s split config.edit.split.')
  images = _npz_array(source, 'images', 'config.edit.images')
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != shape:
    raise DataError(f'config.edit.images={source} holds {images.dtype} images of shape {images.shape}; the config\'s '
                    f'are uint8 (N, {shape[0]}, {shape[1]}, {shape[2]}) (config.data.image_size, num_channels): '
                    f'give images of that shape.')
  return images[:e.num_images]


def _npz_array(path: str, key: str, field: str) -> np.ndarray:
  """The array `key` of an .npz (or its only array); DataError naming `field` when unreadable."""
  try:
    with np.load(path, allow_pickle=False) as loaded:
      keys = list(loaded.files) if hasattr(loaded, 'files') else []
      if key in keys or len(keys) == 1:
        return np.asarray(loaded[key if key in keys else keys[0]])
  except Exception as e:  # pylint: disable=broad-except  # numpy and zipfile signal bad files with many types.
    raise DataError(f'{field}={path} cannot be read as an .npz ({type(e).__name__}: {e}).') from None
  raise DataError(f'{field}={path} holds {keys}: give an .npz with an array {key!r} (or only one array).')


def load_mask(config: ml_collections.ConfigDict) -> np.ndarray:
  """The float32 (H, W, C) mask of the edit: inpaint's (by name, or an .npz or .png file), colorize's
  grey coordinate, all ones for super_resolution (which projects instead); ConfigError when it does
  not fit the images or leaves nothing to fill."""
  e, shape = config.edit, image_shape(config)
  if e.operation == 'colorize':
    return editing.grey_mask(shape)
  if e.operation == 'super_resolution':
    return np.ones(shape, np.float32)
  if e.mask in editing.NAMED_MASKS:
    return editing.named_mask(e.mask, shape, e.keep_fraction, config.seed)
  path = os.path.expanduser(e.mask)
  if not os.path.isfile(path):
    raise DataError(f'config.edit.mask={path} does not exist: give a mask file, or a name '
                    f'({", ".join(editing.NAMED_MASKS)}).')
  if path.lower().endswith('.png'):
    from PIL import Image  # pylint: disable=g-import-not-at-top
    try:
      with Image.open(path) as image:
        mask = (np.asarray(image.convert('L')) > 127).astype(np.float32)
    except Exception as e:  # pylint: disable=broad-except  # Pillow signals bad files with many types.
      raise DataError(f'config.edit.mask={path} cannot be read as an image ({type(e).__name__}: {e}).') from None
  else:
    mask = _npz_array(path, 'mask', 'config.edit.mask')
  return editing.check_mask(mask, shape, f'config.edit.mask={path}')


def padded(array: np.ndarray, size: int) -> np.ndarray:
  """array with its first axis cycled to `size` (a last batch filled up to the sampler's batch)."""
  return np.resize(array, (size,) + array.shape[1:])


def edit(config: ml_collections.ConfigDict, workdir: str, force_workdir_config: bool = False) -> str:
  """Edits config.edit's images with the newest checkpoint's EMA params; returns the path stem of the
  .npz and .png written."""
  e, s = config.edit, config.sampling
  generate.check_constrainable(config)
  mask = load_mask(config)  # Before the images: a dataset split takes longer to read.
  images = load_images(config)
  mesh, model, process, tx = components(config)
  configuration.check_workdir_config(config, workdir, allow_model_change=force_workdir_config)
  state, step = checkpoints.restore_latest(config, workdir, model, tx, mesh)
  logging.info('%s of %d images with the EMA params of step %d (%s sampler).', e.operation, len(images), step,
               s.sampler)
  sample_fn = generate.make_sampler(model, process, config, progress=True,
                                    constraint=editing.constraint_builder(e.operation, e.scale_factor))
  labels, _ = generate.grid_labels(config, len(images))
  key = jax.random.fold_in(root_keys(config)['sample'], step)
  sharding = parallel.batch_sharding(mesh)
  edited = []
  for i, start in enumerate(range(0, len(images), s.batch_size)):
    batch = padded(images[start:start + s.batch_size], s.batch_size)
    batch_key = jax.random.fold_in(key, i)
    x_T = jax.device_put(jax.random.normal(jax.random.fold_in(batch_key, 0), batch.shape), sharding)
    observed = jax.device_put(data.to_model_range(jnp.asarray(batch)), sharding)
    batch_labels = None if labels is None else jax.device_put(padded(labels[start:start + s.batch_size],
                                                                     s.batch_size).astype(np.int32), sharding)
    x_0, _, _ = sample_fn(state.ema_params, state.ema_batch_stats, x_T, jax.random.fold_in(batch_key, 1),
                          batch_labels, observed, jnp.asarray(mask))
    edited.append(data.to_uint8(x_0)[:len(images) - start])
  edited = np.concatenate(edited)
  views = data.to_uint8(editing.observed_view(data.to_model_range(jnp.asarray(images)), jnp.asarray(mask),
                                              e.operation, e.scale_factor))
  stem = os.path.join(workdir, layout.SAMPLES_DIR, f'edit_{e.operation}_{step:08d}')
  generate.save_npz_and_png(stem, {'originals': images, 'views': views, 'edited': edited, 'mask': mask},
                            viz.image_grid(np.concatenate([views, edited, images]), len(images)))
  logging.info('Wrote %s.npz and %s.png.', stem, stem)
  return stem
