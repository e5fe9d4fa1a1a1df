"""The maths of controllable generation (issue 30), as small pure functions: masks, the
constraints a sampler applies between its steps, and the Gaussian conditional law they are
checked against.

A constraint ties the sample to an observed image y. Between two noise levels a sampler's x is
replaced, where y is known, by a draw of y's own marginal at the new level, alpha y + sigma noise
(score_sde's inpainting and colorization; Song et al. 2021, appendix I). Colorization is inpainting
in a colour basis where the grey value is one coordinate (`COLOUR_BASIS`); super-resolution
replaces the low-frequency part instead, x - up(down(x)) + up(down(y_t)) (ILVR, Choi et al. 2021).
SDEdit (Meng et al. 2022) starts the reverse process from y's marginal at a level t0 and needs no
constraint. Masks are 1 where y is known (kept) and 0 where the sampler fills in.

Replacement samples the exact conditional law only where the missing pixels are independent of
the kept ones: for correlated data the kept pixels' draws at each level carry no memory of y's
path, which biases the fill towards the unconditional law. RePaint's resampling (stepping back to
a noisier level and down again) reduces that bias.
"""

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ddpm_jax.errors import ConfigError, require
from ddpm_jax.samplers.registry import Constraint

# What --mode=edit does (config.edit.operation).
OPERATIONS = ('inpaint', 'colorize', 'super_resolution')
SCALE_FACTORS = (2, 4)  # super_resolution's block sides (config.edit.scale_factor).
MASK_FILE_TYPES = ('.npz', '.png')  # Masks given as files (config.edit.mask).
# The level index of the data itself, after a sampler's last level (sigma 0: its draw is y exactly).
DATA_LEVEL = 2 ** 31 - 1

# Masks by name: the part of the image that is missing (filled by the sampler).
NAMED_MASKS = ('left_half', 'right_half', 'centre_box', 'random_pixels', 'every_other_row')

# An orthonormal basis of RGB whose first vector is the grey direction (1, 1, 1) / sqrt(3): in it, a
# greyscale image fixes the first coordinate and leaves the other two free.
COLOUR_BASIS = np.stack([np.array([1.0, 1.0, 1.0]) / np.sqrt(3.0),
                         np.array([1.0, -1.0, 0.0]) / np.sqrt(2.0),
                         np.array([1.0, 1.0, -2.0]) / np.sqrt(6.0)])


def named_mask(name: str, image_shape: tuple[int, int, int], keep_fraction: float = 0.5,
               seed: int = 0) -> np.ndarray:
  """A float32 (H, W, C) mask: 1 where the image is kept, 0 where `name` says it is missing.

  left_half / right_half: that half of the columns is missing; centre_box: the central half of each
  side; random_pixels: each pixel (all its channels) kept with probability keep_fraction (drawn
  with numpy's generator of `seed`); every_other_row: rows 1, 3, 5, ... are missing.
  """
  height, width, channels = image_shape
  keep = np.ones((height, width), np.float32)
  if name == 'left_half':
    keep[:, :width // 2] = 0
  elif name == 'right_half':
    keep[:, width // 2:] = 0
  elif name == 'centre_box':
    keep[height // 4:height - height // 4, width // 4:width - width // 4] = 0
  elif name == 'random_pixels':
    require(0 < keep_fraction < 1, f'config.edit.keep_fraction={keep_fraction} is out of range: it must be in '
            f'(0, 1) (the share of pixels kept).')
    keep = (np.random.default_rng(seed).random((height, width)) < keep_fraction).astype(np.float32)
  elif name == 'every_other_row':
    keep[1::2] = 0
  else:
    raise ConfigError(f'Unknown mask {name!r} (config.edit.mask); valid: {", ".join(NAMED_MASKS)}, or the path '
                      f'of an .npz or .png file.')
  return np.repeat(keep[:, :, None], channels, axis=2)


def check_mask(mask: np.ndarray, image_shape: tuple[int, int, int], what: str) -> np.ndarray:
  """The mask as float32 (H, W, C): a (H, W) or (H, W, 1) one is spread over the channels. Raises
  ConfigError when it does not fit the images, is not 0/1, or leaves nothing to fill."""
  mask = np.asarray(mask)
  given = mask.shape
  if mask.ndim == 2:
    mask = mask[:, :, None]
  if mask.ndim != 3 or mask.shape[:2] != tuple(image_shape[:2]) or mask.shape[2] not in (1, image_shape[2]):
    raise ConfigError(f'The mask {what} has shape {given}; the images are {tuple(image_shape)}: give a mask '
                      f'of shape (H, W) or (H, W, C) with H, W = {image_shape[0]}, {image_shape[1]}.')
  values = np.unique(mask)
  if not np.all(np.isin(values, (0, 1))):
    raise ConfigError(f'The mask {what} holds values other than 0 and 1 ({values[:5].tolist()}...): 1 marks a '
                      f'kept pixel, 0 one to fill.')
  mask = np.broadcast_to(mask, tuple(image_shape)).astype(np.float32)
  if mask.min() == 1:
    raise ConfigError(f'The mask {what} keeps every pixel, so there is nothing to fill: mark the pixels to fill '
                      f'with 0.')
  return mask


def replace(x: jax.Array, y_level: jax.Array, mask: jax.Array) -> jax.Array:
  """x where the mask is 0, the observed image's draw at x's level where it is 1."""
  return mask * y_level + (1.0 - mask) * x


def to_colour_basis(x: jax.Array) -> jax.Array:
  """RGB (..., 3) in COLOUR_BASIS coordinates: the first channel is sqrt(3) times the grey value."""
  return x @ jnp.asarray(COLOUR_BASIS.T, x.dtype)


def from_colour_basis(z: jax.Array) -> jax.Array:
  """The inverse of to_colour_basis (the basis is orthonormal: its transpose)."""
  return z @ jnp.asarray(COLOUR_BASIS, z.dtype)


def grey_mask(image_shape: tuple[int, int, int]) -> np.ndarray:
  """The mask of colorization in COLOUR_BASIS coordinates: the grey coordinate kept, the others filled."""
  mask = np.zeros(image_shape, np.float32)
  mask[..., 0] = 1
  return mask


def low_pass(x: jax.Array, factor: int) -> jax.Array:
  """up(down(x)): each factor x factor block replaced by its mean (average pooling, then repeat)."""
  b, h, w, c = x.shape
  require(h % factor == 0 and w % factor == 0, f'config.edit.scale_factor={factor} must divide the image side '
          f'({h}x{w}).')
  blocks = x.reshape(b, h // factor, factor, w // factor, factor, c).mean(axis=(2, 4), keepdims=True)
  return jnp.broadcast_to(blocks, (b, h // factor, factor, w // factor, factor, c)).reshape(x.shape)


def project_low_pass(x: jax.Array, y_level: jax.Array, factor: int) -> jax.Array:
  """x with its low frequencies (low_pass) replaced by those of y_level (ILVR's projection)."""
  return x - low_pass(x, factor) + low_pass(y_level, factor)


def noised(y: jax.Array, alpha: jax.Array, sigma: jax.Array, noise: jax.Array) -> jax.Array:
  """y's marginal draw at a level: alpha y + sigma noise (SDEdit's start; the replaced pixels)."""
  return alpha * y + sigma * noise


def level_noise(key: jax.Array, level, like: jax.Array) -> jax.Array:
  """The standard normal draw of the observed image's noise at a sampler's level: one per level, so
  every constraint of that level sees the same y_t (samplers/registry.Constraint)."""
  return jax.random.normal(jax.random.fold_in(key, level), like.shape, like.dtype)


def replacement_constraint(y: jax.Array, mask: jax.Array, key: jax.Array, to_basis=None,
                           from_basis=None) -> Constraint:
  """constrain(x, alpha, sigma, level): x with the kept part (mask 1) replaced by y's draw at the level
  (alpha, sigma). With a basis (colorization: to_colour_basis, from_colour_basis), in that basis."""
  to_basis = to_basis or (lambda v: v)
  from_basis = from_basis or (lambda v: v)
  y_basis = to_basis(y)

  def constrain(x, alpha, sigma, level):
    y_level = noised(y_basis, alpha, sigma, level_noise(key, level, y_basis))
    return from_basis(replace(to_basis(x), y_level, mask))

  return constrain


def projection_constraint(y: jax.Array, factor: int, key: jax.Array) -> Constraint:
  """constrain(x, alpha, sigma, level): x's low frequencies replaced by those of y's draw at the
  level (ILVR super-resolution by `factor`: y holds the low-resolution image, repeated to full size)."""

  def constrain(x, alpha, sigma, level):
    return project_low_pass(x, noised(y, alpha, sigma, level_noise(key, level, y)), factor)

  return constrain


def constraint_builder(operation: str, scale_factor: int) -> Callable[[jax.Array, jax.Array, jax.Array], Constraint]:
  """build(observed, mask, key) -> the Constraint of an edit (config.edit.operation): inpaint replaces
  the kept pixels, colorize the grey coordinate (mask: grey_mask), super_resolution projects the
  scale_factor x scale_factor block means (mask unused)."""
  if operation == 'inpaint':
    return replacement_constraint
  if operation == 'colorize':
    return lambda observed, mask, key: replacement_constraint(observed, mask, key, to_colour_basis, from_colour_basis)
  if operation == 'super_resolution':
    return lambda observed, mask, key: projection_constraint(observed, scale_factor, key)
  raise ConfigError(f'Unknown config.edit.operation {operation!r}; valid: {", ".join(OPERATIONS)}.')


def observed_view(images: jax.Array, mask: jax.Array, operation: str, scale_factor: int) -> jax.Array:
  """What an edit sees of images in [-1, 1]: the kept pixels (the rest grey, 0), the greyscale image,
  or the block means."""
  if operation == 'inpaint':
    return images * mask
  if operation == 'colorize':
    return jnp.broadcast_to(images.mean(axis=-1, keepdims=True), images.shape)
  return low_pass(images, scale_factor)


def gaussian_conditional(mean: np.ndarray, cov: np.ndarray, observed: np.ndarray,
                         values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(mean, covariance) of the unobserved coordinates of N(mean, cov) given the observed ones
  (boolean index `observed`) equal to `values`: the oracle the editing samplers are tested against."""
  mean, cov = np.asarray(mean, np.float64), np.asarray(cov, np.float64)
  observed = np.asarray(observed, bool)
  free = ~observed
  gain = np.linalg.solve(cov[np.ix_(observed, observed)], cov[np.ix_(observed, free)]).T
  conditional_mean = mean[free] + gain @ (np.asarray(values, np.float64) - mean[observed])
  conditional_cov = cov[np.ix_(free, free)] - gain @ cov[np.ix_(observed, free)]
  return conditional_mean, conditional_cov
