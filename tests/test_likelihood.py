"""Bits/dim batch by batch (ddpm_jax/evaluation/likelihood.py): padded last batch, progress in images.
The bound itself is tested in test_diffusion.py, and --mode=eval's bits/dim in test_evaluate.py."""

import logging

import jax
import numpy as np

from ddpm_jax import diffusion, parallel, progress
from ddpm_jax.evaluation import likelihood


def test_bits_per_dim_leaves_the_padding_out_and_reports_images_done(caplog):
  def bound_fn(params, batch_stats, images, key):
    assert progress.report_within(0.5)  # As the compiled bound's term reports do, halfway.
    value = np.asarray(images, np.float32)[:, 0, 0, 0]
    return diffusion.BoundTerms(total=value, prior=0 * value, terms=np.stack([value, 0 * value]))

  images = np.arange(6, dtype=np.uint8).reshape(6, 1, 1, 1)
  with caplog.at_level(logging.INFO, logger='absl'):
    result = likelihood.bits_per_dim(bound_fn, None, None, images, 4, jax.random.PRNGKey(0),
                                    parallel.make_mesh(), log_every_seconds=0)
  assert result['bpd'] == 2.5 and result['bpd_num_examples'] == 6  # Images 4, 5 and two copies of 4: left out.
  lines = [r.getMessage().split(' images')[0] for r in caplog.records if r.getMessage().startswith('Bits/dim:')]
  assert lines == ['Bits/dim: 2/6', 'Bits/dim: 4/6', 'Bits/dim: 5/6', 'Bits/dim: 6/6']
