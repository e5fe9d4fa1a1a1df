"""A small CNN classifier: its pooled features give an offline FID, its logits judge class-conditional samples.

Inception-v3 weights need a download; this network trains in minutes on a dataset's own train
split instead. Blocks of (3x3 conv -> GroupNorm -> swish) x convs_per_block with a 2x2 max-pool
before every block but the first, then a global average pool -> features -> dense logits (the
GroupNorm and max pool of nets/layers.py, faster on XLA:CPU than Flax's; benchmarks/README.md).
No batch norm, so the parameters are the whole state, and the architecture can be read back
from the parameters alone (`classifier_from_params`).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from ddpm_jax.nets import layers

# Groups of every GroupNorm (fewer when a block is narrower): fixed, so params define the network.
NORM_GROUPS = 8
NORM_EPS = 1e-5


def _conv_name(block: int, conv: int) -> str:
  return f'block_{block}_conv_{conv}'


def _norm_name(block: int, conv: int) -> str:
  return f'block_{block}_norm_{conv}'


class Classifier(nn.Module):
  """(batch, H, W, C) float32 in [-1, 1] -> (features (batch, widths[-1]), logits (batch, num_classes))."""
  widths: tuple[int, ...] = (32, 64, 128)
  convs_per_block: int = 2
  num_classes: int = 10

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    for block, width in enumerate(self.widths):
      if block:
        x = layers.max_pool_2x2(x)
      for conv in range(self.convs_per_block):
        x = nn.Conv(width, (3, 3), padding='SAME', name=_conv_name(block, conv))(x)
        x = layers.group_norm(min(NORM_GROUPS, width), NORM_EPS, _norm_name(block, conv))(x)
        x = nn.swish(x)
    features = jnp.mean(x, axis=(1, 2))
    return features, nn.Dense(self.num_classes, name='logits')(features)


def classifier_from_params(params: dict) -> Classifier:
  """The Classifier whose parameters these are (widths, convs per block, classes read off the shapes)."""
  if 'logits' not in params or _conv_name(0, 0) not in params:
    raise ValueError(f'Not Classifier parameters: top-level names {sorted(params)}.')
  widths = []
  while _conv_name(len(widths), 0) in params:
    widths.append(int(params[_conv_name(len(widths), 0)]['kernel'].shape[-1]))
  convs = 0
  while _conv_name(0, convs) in params:
    convs += 1
  return Classifier(widths=tuple(widths), convs_per_block=convs,
                    num_classes=int(params['logits']['kernel'].shape[-1]))
