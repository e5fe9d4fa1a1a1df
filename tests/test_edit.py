"""--mode=edit (ddpm_jax/edit.py) through main.py's command line on a tiny trained run: each
operation writes its arrays and figure, the edited images end exactly on what the edit keeps, and
its inputs come from the dataset, an .npz or a folder, its mask from a name or a .png. The bad inputs
are rows of tests/test_bad_inputs.py."""

import os

import numpy as np
import pytest
from PIL import Image

import cli_testlib
import test_bad_inputs
from ddpm_jax import data, editing


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  """(the flags of a tiny run trained for 4 steps, its workdir, a folder for inputs)."""
  root = tmp_path_factory.mktemp('edit')
  images, labels = test_bad_inputs.two_patterns()
  test_bad_inputs.write_idx(str(root / 'data'), images, labels)
  flags = [*test_bad_inputs.tiny(str(root / 'data')), f'--workdir={root / "run"}', '--config.edit.split=train',
           '--config.edit.num_images=6']
  status, stderr = edit_main(flags, None)
  assert status == 0, stderr[-2000:]
  return flags, str(root / 'run'), root


def edit_main(flags: list[str], capsys) -> tuple[int, str]:
  if capsys is None:  # The fixture's training run, outside any test's capture.
    import main  # pylint: disable=g-import-not-at-top
    try:
      main.main(cli_testlib.parse(['main.py', *flags]))
      return 0, ''
    finally:
      cli_testlib.reset_flags()
  return cli_testlib.run_main(['main.py', *flags], capsys)


def edited(workdir: str, operation: str) -> dict[str, np.ndarray]:
  with np.load(os.path.join(workdir, 'samples', f'edit_{operation}_00000004.npz')) as arrays:
    return {k: arrays[k] for k in arrays.files}


def test_inpainting_keeps_the_kept_pixels_exactly_and_draws_a_figure(run, capsys):
  flags, workdir, _ = run
  status, stderr = edit_main([*flags, '--mode=edit'], capsys)
  assert status == 0, stderr[-2000:]
  out = edited(workdir, 'inpaint')
  assert out['originals'].shape == out['edited'].shape == out['views'].shape == (6, 8, 8, 1)
  kept = out['mask'][..., 0] > 0
  np.testing.assert_array_equal(out['edited'][:, kept], out['originals'][:, kept])
  np.testing.assert_array_equal(out['views'][:, ~kept], 128)  # The missing half shown grey (0 in [-1, 1]).
  figure = np.asarray(Image.open(os.path.join(workdir, 'samples', 'edit_inpaint_00000004.png')))
  assert figure.shape[0] > 3 * 8 and figure.shape[1] > 6 * 8  # Rows view, edit, original; a column per image.


def test_super_resolution_keeps_the_block_means(run, capsys):
  """Images from an .npz; the edit's 2x2 block means are the originals' (up to uint8 rounding) where
  no pixel of the block was clipped to the data range."""
  flags, workdir, root = run
  originals = np.random.default_rng(1).integers(64, 192, (5, 8, 8, 1), np.uint8)
  np.savez(root / 'mid_grey.npz', images=originals)
  status, stderr = edit_main([*flags, '--mode=edit', '--config.edit.operation=super_resolution',
                              f'--config.edit.images={root / "mid_grey.npz"}', '--config.sampling.sampler=ddim',
                              '--config.sampling.ddim_steps=5'], capsys)
  assert status == 0, stderr[-2000:]
  out = edited(workdir, 'super_resolution')
  np.testing.assert_array_equal(out['originals'], originals)
  means = lambda images: np.asarray(editing.low_pass(data.to_model_range(images), 2))
  clipped = np.asarray(editing.low_pass(((out['edited'] == 0) | (out['edited'] == 255)).astype(np.float32), 2)) > 0
  assert clipped.mean() < 0.5
  np.testing.assert_allclose(means(out['edited'])[~clipped], means(originals)[~clipped], atol=1 / 127.5)
  assert np.abs(out['edited'].astype(int) - originals).max() > 0  # The details are the sampler's.


def test_images_from_a_folder_and_a_mask_from_a_png(run, capsys):
  flags, workdir, root = run
  folder = root / 'images'
  folder.mkdir()
  rng = np.random.default_rng(0)
  pictures = rng.integers(0, 256, (3, 8, 8), np.uint8)
  for i, picture in enumerate(pictures):
    Image.fromarray(picture).save(folder / f'{i}.png')
  mask = np.full((8, 8), 255, np.uint8)
  mask[2:6, 2:6] = 0
  Image.fromarray(mask).save(root / 'box.png')
  status, stderr = edit_main([*flags, '--mode=edit', f'--config.edit.images={folder}', f'--config.edit.mask={root / "box.png"}',
                              '--config.sampling.sampler=dpm_solver_pp_2m', '--config.sampling.num_steps=4'], capsys)
  assert status == 0, stderr[-2000:]
  out = edited(workdir, 'inpaint')
  np.testing.assert_array_equal(out['originals'][..., 0], pictures)
  np.testing.assert_array_equal(out['mask'][..., 0], mask > 127)
  np.testing.assert_array_equal(out['edited'][:, mask > 127], out['originals'][:, mask > 127])
