"""Test-wide setup, before JAX starts: the CPU split into 2 devices, so the sharded path is
always exercised, with main.py's convolution backend (ddpm_jax/xla_flags.py), and a
compilation cache private to this test session, shared with the main.py processes the tests
start (identical programs compile once)."""

import os
import tempfile

os.environ.setdefault('JAX_PLATFORMS', 'cpu')
from ddpm_jax import xla_flags  # pylint: disable=wrong-import-position  # Imports no JAX.

xla_flags.configure_cpu(cpu_devices=2)
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ['JAX_COMPILATION_CACHE_DIR'] = tempfile.mkdtemp(prefix='ddpm-jax-test-xla-cache-')
os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
os.environ['JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES'] = '0'

# torch's compiler stack (torch._dynamo, imported by diffusers) segfaults when it loads after
# TensorFlow in one process (torch 2.14.1 + tensorflow 2.21); loaded first, both work.
try:
  import torch._dynamo  # noqa: F401  pylint: disable=unused-import
except ImportError:
  pass
