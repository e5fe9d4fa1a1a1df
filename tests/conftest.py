"""Test-wide setup, before JAX starts: one CPU device with main.py's convolution backend
(ddpm_jax/xla_flags.py), and a compilation cache private to this test session, shared with the
main.py processes the tests start (identical programs compile once).

One device, because in a process that has imported torch (the parity tests need it), XLA:CPU's
cross-device all-reduce sometimes waits forever for the second device and aborts the process
after 40 s (reproduced with and without Eigen convolutions; never seen without torch). Several
devices are tested in subprocesses that never import torch: main.py runs on 2 devices
(test_main.py: train, resume, sample, eval, kills), and tests/test_sharding.py on 8."""

import logging
import os
import shutil
import tempfile

import pytest

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
from ddpm_jax import xla_flags  # pylint: disable=wrong-import-position  # Imports no JAX.

xla_flags.configure_cpu(cpu_devices=1)
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
COMPILATION_CACHE = tempfile.mkdtemp(prefix='ddpm-jax-test-xla-cache-')
os.environ['JAX_COMPILATION_CACHE_DIR'] = COMPILATION_CACHE
os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
os.environ['JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES'] = '0'

# torch's compiler stack (torch._dynamo, imported by diffusers) segfaults when it loads after
# TensorFlow in one process (torch 2.14.1 + tensorflow 2.21); loaded first, both work.
try:
  import torch._dynamo  # noqa: F401  pylint: disable=unused-import
except ImportError:
  pass

# The longest files first (minutes each on 2 cores): pytest.ini runs the suite on one pytest-xdist
# worker per core, handing out whole files in collection order, so these start first and the
# short files fill in around them.
LONGEST_FILES = ('test_train.py', 'test_main.py', 'test_sharding.py', 'test_evaluate.py')


def pytest_collection_modifyitems(items) -> None:
  rank = {name: i for i, name in enumerate(LONGEST_FILES)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # Stable: each file keeps its order.


def pytest_unconfigure(config) -> None:  # pylint: disable=unused-argument
  """Removes this process's compilation cache (each pytest-xdist worker has its own)."""
  shutil.rmtree(COMPILATION_CACHE, ignore_errors=True)


@pytest.fixture(autouse=True)
def logs_enabled():
  """Logging on in every test: a command's error exit (cli.last_line) turns it off for the rest of
  its process, which in the tests is the next test's too."""
  yield
  logging.disable(logging.NOTSET)
