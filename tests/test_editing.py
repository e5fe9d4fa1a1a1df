"""The maths of controllable generation (ddpm_jax/editing.py): masks, the colour basis, the
low-pass projection, the replacement constraint and the Gaussian conditional oracle."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddpm_jax import editing, errors

SHAPE = (8, 8, 3)


@pytest.mark.parametrize('name, missing', [
    ('left_half', (slice(None), slice(0, 4))), ('right_half', (slice(None), slice(4, 8))),
    ('centre_box', (slice(2, 6), slice(2, 6))), ('every_other_row', (slice(1, None, 2), slice(None)))])
def test_named_masks_miss_what_their_names_say(name, missing):
  mask = editing.named_mask(name, SHAPE)
  expected = np.ones(SHAPE, np.float32)
  expected[missing] = 0
  np.testing.assert_array_equal(mask, expected)


def test_random_pixels_keep_their_fraction_and_all_channels_of_a_pixel():
  mask = editing.named_mask('random_pixels', (64, 64, 3), keep_fraction=0.25, seed=3)
  assert abs(mask.mean() - 0.25) < 0.03
  np.testing.assert_array_equal(mask[..., 0], mask[..., 2])
  np.testing.assert_array_equal(mask, editing.named_mask('random_pixels', (64, 64, 3), keep_fraction=0.25, seed=3))


@pytest.mark.parametrize('mask, message', [
    (np.ones((8, 7)), 'has shape'), (np.ones((8, 8, 2)), 'has shape'), (np.full((8, 8), 0.5), 'other than 0 and 1'),
    (np.ones((8, 8)), 'nothing to fill')])
def test_a_bad_mask_is_one_clear_error(mask, message):
  with pytest.raises(errors.ConfigError, match=message):
    editing.check_mask(mask, SHAPE, 'masks.npz')


def test_unknown_mask_and_bad_fraction_are_config_errors():
  with pytest.raises(errors.ConfigError, match="Unknown mask 'top'.*valid: left_half"):
    editing.named_mask('top', SHAPE)
  with pytest.raises(errors.ConfigError, match='keep_fraction=1.0 is out of range'):
    editing.named_mask('random_pixels', SHAPE, keep_fraction=1.0)


def test_the_colour_basis_is_orthonormal_and_its_first_coordinate_is_the_grey_value():
  np.testing.assert_allclose(editing.COLOUR_BASIS @ editing.COLOUR_BASIS.T, np.eye(3), atol=1e-12)
  x = jax.random.uniform(jax.random.key(0), (2, 4, 4, 3), minval=-1, maxval=1)
  z = editing.to_colour_basis(x)
  np.testing.assert_allclose(z[..., 0], x.mean(-1) * np.sqrt(3), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(editing.from_colour_basis(z), x, atol=1e-6)


def test_the_low_pass_projection_takes_the_observed_low_frequencies_and_keeps_the_rest():
  x, y = jax.random.normal(jax.random.key(1), (2, 2, 8, 8, 3))
  for factor in (2, 4):
    projected = editing.project_low_pass(x, y, factor)
    np.testing.assert_allclose(editing.low_pass(projected, factor), editing.low_pass(y, factor), atol=1e-5)
    np.testing.assert_allclose(projected - editing.low_pass(projected, factor), x - editing.low_pass(x, factor), atol=1e-5)
    np.testing.assert_allclose(editing.low_pass(editing.low_pass(x, factor), factor), editing.low_pass(x, factor), atol=1e-5)
  with pytest.raises(errors.ConfigError, match='scale_factor=3 must divide'):
    editing.low_pass(x, 3)


def test_replacement_keeps_the_observed_draw_exactly_and_the_rest_of_x():
  x, y = jax.random.normal(jax.random.key(2), (2, 3, 8, 8, 3))
  mask = jnp.asarray(editing.named_mask('left_half', SHAPE))
  key = jax.random.key(5)
  out = editing.replacement_constraint(y, mask)(x, 0.6, 0.8, key)
  y_level = 0.6 * y + 0.8 * jax.random.normal(key, y.shape)
  np.testing.assert_allclose(np.where(mask > 0, out, 0), np.where(mask > 0, y_level, 0), atol=1e-6)
  np.testing.assert_array_equal(np.where(mask > 0, 0, out), np.where(mask > 0, 0, x))
  grey = editing.replacement_constraint(y, jnp.asarray(editing.grey_mask(SHAPE)), editing.to_colour_basis,
                                        editing.from_colour_basis)(x, 1.0, 0.0, key)
  np.testing.assert_allclose(grey.mean(-1), y.mean(-1), atol=1e-5)  # At sigma 0: y's grey value exactly.


def test_the_gaussian_conditional_is_the_regression_of_the_free_coordinates_on_the_observed():
  rng = np.random.default_rng(0)
  a = rng.normal(size=(4, 4))
  cov, mean = a @ a.T + 0.5 * np.eye(4), rng.normal(size=4)
  observed = np.array([True, False, True, False])
  values = np.array([0.3, -1.2])
  m, c = editing.gaussian_conditional(mean, cov, observed, values)
  precision = np.linalg.inv(cov)  # The conditional's precision is the free block of the joint's.
  np.testing.assert_allclose(np.linalg.inv(c), precision[np.ix_(~observed, ~observed)], rtol=1e-10)
  full = mean.copy()
  full[observed], full[~observed] = values, m  # The conditional mean maximises the joint density.
  np.testing.assert_allclose((precision @ (full - mean))[~observed], 0, atol=1e-10)
