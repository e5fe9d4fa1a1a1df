"""Shared parsing of the ablation configs' argument: 'VARIANT' or 'VARIANT,BASE'.

BASE names a config module in configs/ (quickstart, mnist_simple, mnist_conv, mnist_resnet,
cifar10_simple, cifar10_conv, cifar10_resnet, cifar10_ddpm, cifar100_resnet); the default is the
offline quickstart, so every comparison runs on this machine as it is.
"""

import importlib

import ml_collections

DEFAULT_BASE = 'quickstart'


def split_argument(argument: str, variants: tuple, kind: str) -> tuple[str, ml_collections.ConfigDict]:
  """(variant, base config) from 'VARIANT[,BASE]'; ValueError naming the valid choices."""
  variant, _, base = argument.partition(',')
  if variant not in variants:
    raise ValueError(f'Unknown {kind} {variant!r} in the config argument; valid: {", ".join(variants)}.')
  try:
    module = importlib.import_module(f'configs.{base or DEFAULT_BASE}')
  except ModuleNotFoundError:
    raise ValueError(f'No base config configs/{base}.py for the ablation; use a file name from configs/, '
                     f'e.g. mnist_simple.') from None
  return variant, module.get_config()
