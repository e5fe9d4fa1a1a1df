"""The device mesh and array layouts (ddpm_jax/parallel.py). Several devices: test_sharding.py."""

import jax
import numpy as np
from jax.sharding import PartitionSpec

from ddpm_jax import parallel


def test_the_mesh_holds_every_device_on_one_data_axis():
  mesh = parallel.make_mesh()
  assert mesh.axis_names == ('data',) and mesh.size == jax.device_count()


def test_batches_split_along_their_batch_axis_and_state_is_replicated():
  mesh = parallel.make_mesh()
  batch = np.arange(4 * 3, dtype=np.float32).reshape(4, 3)
  sharded = parallel.shard_batch(batch, mesh)
  assert sharded.sharding.spec == parallel.batch_sharding(mesh).spec == PartitionSpec('data')
  np.testing.assert_array_equal(np.asarray(sharded), batch)
  stacked = parallel.shard_batches(np.stack([batch, batch + 1]), mesh)
  assert stacked.shape == (2, 4, 3) and stacked.sharding.spec == PartitionSpec(None, 'data')
  np.testing.assert_array_equal(np.asarray(stacked)[1], batch + 1)
  assert parallel.replicated(mesh).is_fully_replicated
