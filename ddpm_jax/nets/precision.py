"""Mixed precision for any of the networks: float32 params and optimizer, low-precision compute."""

import flax.linen as nn
import jax
import jax.numpy as jnp

COMPUTE_DTYPES = ('float32', 'bfloat16')


class MixedPrecision:
  """A Flax module's `apply` computing in `dtype`: the params, and the floating inputs of every
  module call, cast to dtype; the output cast back to float32. Other variables (batch statistics)
  stay float32, normalisation statistics are float32 (Flax's BatchNorm, layers.GroupNorm), and
  gradients reach the float32 params through the cast. The networks need no dtype option of their own."""

  def __init__(self, module: nn.Module, dtype):
    self.module = module
    self.dtype = jnp.dtype(dtype)

  def _cast(self, tree):
    return jax.tree.map(lambda a: a.astype(self.dtype) if isinstance(a, jax.Array) and a.dtype == jnp.float32
                        else a, tree)

  def _intercept(self, next_fun, args, kwargs, context):
    del context
    return next_fun(*self._cast(args), **kwargs)

  def apply(self, variables, *args, **kwargs):
    variables = {**variables, 'params': self._cast(variables['params'])}
    with nn.intercept_methods(self._intercept):
      out = self.module.apply(variables, *self._cast(args), **kwargs)
    if isinstance(out, tuple):  # mutable=...: (output, mutated variables).
      return out[0].astype(jnp.float32), out[1]
    return out.astype(jnp.float32)


def computing_in(module: nn.Module, dtype_name: str):
  """`module` itself for float32, else its MixedPrecision wrapper (both have `apply`)."""
  if dtype_name not in COMPUTE_DTYPES:
    raise ValueError(f'Unknown compute dtype {dtype_name!r}; valid: {", ".join(COMPUTE_DTYPES)}.')
  return module if dtype_name == 'float32' else MixedPrecision(module, dtype_name)
