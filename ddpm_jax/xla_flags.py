"""XLA settings that must be in place before JAX starts (so this module never imports JAX).

On the CPU, jaxlib hands convolutions to YNNPACK, whose weight-gradient convolutions (a window
as large as the feature map) are slow and made a train step several times slower than PyTorch
eager; Eigen's kernels, which the flag below restores, match it (benchmarks/README.md, "Finding"). XLA aborts on a flag it does not know, so the flag is only
set when the installed jaxlib binary contains its name.

XLA:CPU also undoes rematerialisation (config.model.remat): its pipeline drops the optimization
barriers that jax.checkpoint sets against common-subexpression elimination (pass
cse_barrier_expander) before that elimination merges the recomputation back into the forward
pass. Keeping the pass off keeps the barriers and the memory saving (benchmarks/README.md,
"Memory"); it is only turned off where no accelerator plugin is installed, so GPU and TPU
compilers keep their own pipeline.
"""

import functools
import glob
import importlib.util
import mmap
import os

DEVICE_COUNT_FLAG = 'xla_force_host_platform_device_count'
YNN_FUSION_FLAG = 'xla_cpu_experimental_ynn_fusion_type'
# All YNNPACK fusions the default enables except single convolutions.
EIGEN_CONVOLUTIONS = f'--{YNN_FUSION_FLAG}=-individual_convolution'
DISABLED_PASSES_FLAG = 'xla_disable_hlo_passes'
KEEP_REMAT_BARRIERS = f'--{DISABLED_PASSES_FLAG}=cse_barrier_expander'
# Modules of jax's accelerator plugins and of libtpu: with one installed, XLA may compile for a GPU or TPU.
ACCELERATOR_MODULES = ('jax_cuda12_plugin', 'jax_cuda13_plugin', 'jax_rocm60_plugin', 'jax_rocm7_plugin', 'libtpu')


@functools.cache
def jaxlib_knows(flag_name: str) -> bool:
  """Whether the installed jaxlib's shared libraries mention `flag_name` (False without jaxlib)."""
  spec = importlib.util.find_spec('jaxlib')
  if spec is None or spec.origin is None:
    return False
  needle = flag_name.encode()
  for library in glob.glob(os.path.join(os.path.dirname(spec.origin), '**', '*.so'), recursive=True):
    with open(library, 'rb') as f:
      try:
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
          if data.find(needle) >= 0:
            return True
      except ValueError:  # An empty file cannot be mapped.
        continue
  return False


def accelerator_plugin_installed() -> bool:
  """Whether a GPU or TPU backend for jax is installed (found without importing it)."""
  return any(importlib.util.find_spec(name) is not None for name in ACCELERATOR_MODULES)


def with_cpu_settings(xla_flags: str, cpu_devices: int, eigen_convolutions: bool,
                      keep_remat_barriers: bool = False) -> str:
  """`xla_flags` plus the CPU device split and the convolution backend, unless already set there.

  cpu_devices: XLA devices the CPU is split into (0: one per core).
  eigen_convolutions: run convolutions with Eigen rather than YNNPACK (see the module doc).
  keep_remat_barriers: keep jax.checkpoint's barriers (config.model.remat; see the module doc),
  unless xla_flags already disables passes or an accelerator plugin is installed.
  """
  flags = xla_flags.split()
  if not any(DEVICE_COUNT_FLAG in flag for flag in flags):
    flags.append(f'--{DEVICE_COUNT_FLAG}={cpu_devices or os.cpu_count() or 1}')
  if eigen_convolutions and not any(YNN_FUSION_FLAG in flag for flag in flags) and jaxlib_knows(YNN_FUSION_FLAG):
    flags.append(EIGEN_CONVOLUTIONS)
  if (keep_remat_barriers and not any(DISABLED_PASSES_FLAG in flag for flag in flags)
      and not accelerator_plugin_installed()):
    flags.append(KEEP_REMAT_BARRIERS)
  return ' '.join(flags)


def configure_cpu(cpu_devices: int, eigen_convolutions: bool = True, keep_remat_barriers: bool = False) -> None:
  """Applies `with_cpu_settings` to the environment's XLA_FLAGS; accelerators are unaffected."""
  os.environ['XLA_FLAGS'] = with_cpu_settings(os.environ.get('XLA_FLAGS', ''), cpu_devices, eigen_convolutions,
                                              keep_remat_barriers)
