"""XLA:CPU settings: the flags composed, and Eigen convolutions computing what YNNPACK's do."""

import os
import subprocess
import sys

import numpy as np
import pytest

from ddpm_jax import xla_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

GRADIENTS_SCRIPT = """
import sys
import jax, jax.numpy as jnp, numpy as np
x = jax.random.normal(jax.random.PRNGKey(0), (4, 28, 28, 16))
w = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 16, 32)) / 12
def loss(w, x):
  y = jax.lax.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  return jnp.sum(jnp.tanh(y) ** 2)
dw, dx = jax.jit(jax.grad(loss, argnums=(0, 1)))(w, x)
np.savez(sys.argv[1], dw=np.asarray(dw), dx=np.asarray(dx))
"""


def test_device_count_and_eigen_convolutions_are_added_once():
  flags = xla_flags.with_cpu_settings('--xla_dump_to=/tmp/x', cpu_devices=3, eigen_convolutions=True)
  assert flags.split()[:2] == ['--xla_dump_to=/tmp/x', '--xla_force_host_platform_device_count=3']
  assert (xla_flags.EIGEN_CONVOLUTIONS in flags) == xla_flags.jaxlib_knows(xla_flags.YNN_FUSION_FLAG)
  assert xla_flags.with_cpu_settings(flags, cpu_devices=5, eigen_convolutions=True) == flags


def test_settings_already_in_xla_flags_win():
  mine = '--xla_force_host_platform_device_count=7 --xla_cpu_experimental_ynn_fusion_type='
  assert xla_flags.with_cpu_settings(mine, cpu_devices=2, eigen_convolutions=True) == mine


REMAT_SCRIPT = """
import jax, jax.numpy as jnp
def loss(ws, x):
  for w in ws:
    x = jax.checkpoint(lambda x, w: jnp.tanh(jnp.tanh(x @ w) @ w))(x, w)
  return jnp.sum(x ** 2)
compiled = jax.jit(jax.grad(loss)).lower([jnp.ones((256, 256))] * 8, jnp.ones((512, 256))).compile()
print(compiled.memory_analysis().temp_size_in_bytes)
"""


def test_remat_barriers_are_kept_only_where_asked_and_no_accelerator_is_installed(monkeypatch):
  assert xla_flags.KEEP_REMAT_BARRIERS not in xla_flags.with_cpu_settings('', 2, False)
  monkeypatch.setattr(xla_flags, 'accelerator_plugin_installed', lambda: False)
  assert xla_flags.with_cpu_settings('', 2, False, keep_remat_barriers=True).split()[-1] == xla_flags.KEEP_REMAT_BARRIERS
  mine = '--xla_disable_hlo_passes=algsimp'  # The user's own list wins.
  assert xla_flags.with_cpu_settings(mine, 2, False, keep_remat_barriers=True).split()[0] == mine
  assert xla_flags.KEEP_REMAT_BARRIERS not in xla_flags.with_cpu_settings(mine, 2, False, keep_remat_barriers=True)
  monkeypatch.setattr(xla_flags, 'accelerator_plugin_installed', lambda: True)
  assert xla_flags.KEEP_REMAT_BARRIERS not in xla_flags.with_cpu_settings('', 2, False, keep_remat_barriers=True)


def test_kept_remat_barriers_cut_the_compiled_gradients_memory():
  """Eight checkpointed blocks: XLA:CPU's CSE merges the recomputation back unless the barriers stay."""
  def temp_bytes(flags: str) -> int:
    env = {**os.environ, 'XLA_FLAGS': flags}
    result = subprocess.run([sys.executable, '-c', REMAT_SCRIPT], env=env, check=True, cwd=ROOT,
                            capture_output=True, text=True)
    return int(result.stdout.split()[-1])
  assert temp_bytes(xla_flags.KEEP_REMAT_BARRIERS) < 0.6 * temp_bytes('')


def test_zero_devices_means_one_per_core_and_the_backend_can_be_left_to_xla():
  flags = xla_flags.with_cpu_settings('', cpu_devices=0, eigen_convolutions=False)
  assert flags == f'--xla_force_host_platform_device_count={os.cpu_count()}'


def test_only_flags_the_installed_jaxlib_contains_are_used():
  assert xla_flags.jaxlib_knows('xla_force_host_platform_device_count')
  assert not xla_flags.jaxlib_knows('xla_cpu_no_such_flag_in_any_jaxlib_9f3a')


@pytest.mark.skipif(not xla_flags.jaxlib_knows(xla_flags.YNN_FUSION_FLAG), reason='this jaxlib has no YNNPACK')
def test_eigen_convolution_gradients_equal_ynnpack_ones(tmp_path):
  results = {}
  for name, flags in (('ynnpack', ''), ('eigen', xla_flags.EIGEN_CONVOLUTIONS)):
    env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS='cpu')
    env.pop('JAX_COMPILATION_CACHE_DIR', None)  # Programs compiled under other flags must not be reused.
    subprocess.run([sys.executable, '-c', GRADIENTS_SCRIPT, str(tmp_path / name)], env=env, check=True, cwd=ROOT)
    results[name] = np.load(tmp_path / f'{name}.npz')
  for grad in ('dw', 'dx'):
    np.testing.assert_allclose(results['eigen'][grad], results['ynnpack'][grad], rtol=1e-4, atol=1e-4)
