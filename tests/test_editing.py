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
  out = editing.replacement_constraint(y, mask, key)(x, 0.6, 0.8, 3)
  y_level = 0.6 * y + 0.8 * jax.random.normal(jax.random.fold_in(key, 3), y.shape)
  np.testing.assert_allclose(np.where(mask > 0, out, 0), np.where(mask > 0, y_level, 0), atol=1e-6)
  np.testing.assert_array_equal(np.where(mask > 0, 0, out), np.where(mask > 0, 0, x))
  grey = editing.replacement_constraint(y, jnp.asarray(editing.grey_mask(SHAPE)), key, editing.to_colour_basis,
                                        editing.from_colour_basis)(x, 1.0, 0.0, 7)
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


# ---------------------------------------------------------------------------
# The constraint through the samplers that take one, with the exact model of Gaussian data.

class ExactGaussian:
  """eps of data x0 ~ N(mean, cov) over the flattened pixels of each image, at process time t (the
  chain's samplers read the same eps as the network's raw output at timestep t)."""

  def __init__(self, process, mean: np.ndarray, cov: np.ndarray):
    self.process, self.mean, self.cov = process, jnp.asarray(mean, jnp.float32), jnp.asarray(cov, jnp.float32)

  def eps(self, x, t):
    alpha, sigma = self.process.marginal(jnp.asarray(t, jnp.float32)[0])
    flat = x.reshape(x.shape[0], -1)
    marginal_cov = alpha ** 2 * self.cov + sigma ** 2 * jnp.eye(flat.shape[1])
    x0 = self.mean + (flat - alpha * self.mean) @ jnp.linalg.solve(marginal_cov, alpha * self.cov)
    return ((flat - alpha * x0) / sigma).reshape(x.shape)

  output_fn = eps


def sampler_run(name: str, process_name: str):
  from configs import default  # pylint: disable=g-import-not-at-top
  from ddpm_jax import processes, samplers  # pylint: disable=g-import-not-at-top
  config = default.get_config()
  config.diffusion.process = process_name
  config.diffusion.clip_denoised = False
  # Steps where the sampler's own discretisation error is below the Monte-Carlo error (first-order Euler: more).
  config.sampling.sampler, config.sampling.num_steps, config.sampling.ddim_steps = name, 200 if name == 'euler' else 25, 200
  process = processes.from_config(config.diffusion)
  return process, samplers.sampler_class(name).build(config, process)


CONSTRAINABLE = [('ancestral', 'ddpm'), ('ddim', 'ddpm'), ('dpm_solver_pp_2m', 'ddpm'), ('sde_dpm_solver_pp_2m', 'ddpm'),
                 ('unipc', 'ddpm'), ('euler', 'vpsde'), ('heun', 'vesde'), ('dpm_solver_pp_2m', 'vesde'),
                 ('sde_dpm_solver_pp_2m', 'vpsde')]


def test_exactly_the_level_walking_samplers_take_a_constraint():
  from ddpm_jax import samplers  # pylint: disable=g-import-not-at-top
  assert sorted(n for n, cls in samplers.SAMPLERS.items() if cls.constrainable) == sorted({n for n, _ in CONSTRAINABLE})


@pytest.mark.parametrize('name, process_name', CONSTRAINABLE)
def test_inpainting_independent_gaussian_pixels_keeps_the_observed_and_samples_the_rest(name, process_name):
  """Pixels of N(0.3, 0.5^2) each, the left half missing: the kept half ends as the constraint's draw
  of y at the last level (y itself where that level is the data), and the filled half has the data's
  mean and variance (its conditional law, the pixels being independent), within Monte-Carlo error."""
  process, run = sampler_run(name, process_name)
  shape, mu, s = (2048, 2, 2, 1), 0.3, 0.5
  model = ExactGaussian(process, np.full(4, mu), s ** 2 * np.eye(4))
  mask = jnp.asarray(editing.named_mask('left_half', shape[1:]))
  y = jnp.broadcast_to(jnp.asarray([[[0.9], [-0.4]], [[-0.7], [0.2]]], jnp.float32), shape)
  key = jax.random.key(11)
  x_T = jax.random.normal(jax.random.key(12), shape)
  seen = []

  def constrain(x, alpha, sigma, level):
    seen.append(level)
    return editing.replacement_constraint(y, mask, key)(x, alpha, sigma, level)

  x0, _, _ = run(model, x_T, jax.random.key(13), constrain=constrain)
  x0 = np.asarray(x0)
  assert seen  # Called (traced) by the sampler's loop.
  kept, free = x0[:, :, 1:], x0[:, :, :1]
  if name in ('ancestral', 'ddim'):  # Their last step reaches the data: y exactly.
    np.testing.assert_allclose(kept, np.asarray(y)[:, :, 1:], atol=1e-6)
  else:
    np.testing.assert_allclose(kept.std(axis=0), 0, atol=0.02)  # y plus the last level's small noise.
    np.testing.assert_allclose(kept.mean(axis=0), np.asarray(y)[0, :, 1:], atol=0.02)
  n = free.size
  assert abs(free.mean() - mu) < 4 * s / np.sqrt(n), free.mean()
  assert abs(free.var() - s ** 2) < 6 * s ** 2 * np.sqrt(2 / n), free.var()


def test_inpainting_correlated_pixels_moves_the_fill_towards_the_conditional_law():
  """Two pixels correlated 0.9, the second kept: replacement's fill moves from the unconditional mean
  most of the way to the conditional one (not all of it: editing.py's docstring), and keeps
  less than the unconditional variance."""
  process, run = sampler_run('ancestral', 'ddpm')
  mean, cov = np.array([0.2, -0.1]), 0.25 * np.array([[1.0, 0.9], [0.9, 1.0]])
  shape = (4096, 1, 2, 1)
  y = jnp.broadcast_to(jnp.asarray([[[0.0], [0.4]]], jnp.float32), shape)
  mask = jnp.asarray(editing.named_mask('left_half', shape[1:]))
  constrain = editing.replacement_constraint(y, mask, jax.random.key(1))
  x0, _, _ = run(ExactGaussian(process, mean, cov), jax.random.normal(jax.random.key(2), shape), jax.random.key(3),
                 constrain=constrain)
  fill = np.asarray(x0)[:, 0, 0, 0]
  conditional_mean, conditional_cov = editing.gaussian_conditional(mean, cov, np.array([False, True]), [0.4])
  assert conditional_mean[0] == pytest.approx(0.65)
  assert mean[0] + 0.6 * (conditional_mean[0] - mean[0]) < fill.mean() < conditional_mean[0], fill.mean()
  assert conditional_cov[0, 0] < fill.var() < cov[0, 0], fill.var()


def test_colorization_and_super_resolution_end_on_the_observed_grey_and_low_frequencies():
  """Through the ancestral sampler, whose last step reaches the data: colorization's samples have
  exactly y's grey values, ILVR's (factor 2) exactly y's 2x2 block means; the rest varies by sample."""
  process, run = sampler_run('ancestral', 'ddpm')
  shape = (64, 4, 4, 3)
  model = ExactGaussian(process, np.zeros(48), 0.25 * np.eye(48))
  y = jnp.broadcast_to(jax.random.uniform(jax.random.key(4), shape[1:], minval=-1, maxval=1), shape)
  x_T = jax.random.normal(jax.random.key(5), shape)
  colour = editing.replacement_constraint(y, jnp.asarray(editing.grey_mask(shape[1:])), jax.random.key(6),
                                          editing.to_colour_basis, editing.from_colour_basis)
  coloured = np.asarray(run(model, x_T, jax.random.key(7), constrain=colour)[0])
  np.testing.assert_allclose(coloured.mean(-1), np.asarray(y).mean(-1), atol=1e-5)
  assert coloured.std(axis=0).mean() > 0.1  # The colours are free.
  sharp = np.asarray(run(model, x_T, jax.random.key(7), constrain=editing.projection_constraint(y, 2, jax.random.key(8)))[0])
  np.testing.assert_allclose(editing.low_pass(jnp.asarray(sharp), 2), editing.low_pass(y, 2), atol=1e-5)
  assert sharp.std(axis=0).mean() > 0.1  # The details within each block are free.
