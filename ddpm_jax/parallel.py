"""The device mesh and how arrays are laid out on it: one code path for 1 or N devices and hosts.

A 1-D `data` mesh of every device: the global batch is split along its first axis, the train
state is replicated, and `jax.jit` compiles the global computation (batch statistics and
gradients over the whole batch, whatever the device count). Each host passes its own share of
a global batch.
"""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def make_mesh() -> Mesh:
  """Every device of every host on one `data` axis."""
  return Mesh(np.asarray(jax.devices()), ('data',))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Split along the first (batch) axis."""
  return NamedSharding(mesh, PartitionSpec('data'))


def replicated(mesh: Mesh) -> NamedSharding:
  """A whole copy on every device (the train state)."""
  return NamedSharding(mesh, PartitionSpec())


def shard_batch(array: np.ndarray, mesh: Mesh) -> jax.Array:
  """Places this host's share of a global batch on the mesh, split along the batch axis."""
  return jax.make_array_from_process_local_data(batch_sharding(mesh), array)


def shard_batches(array: np.ndarray, mesh: Mesh) -> jax.Array:
  """A stack of global batches (K, B, ...), each split along its batch axis."""
  return jax.make_array_from_process_local_data(NamedSharding(mesh, PartitionSpec(None, 'data')), array)
