"""Pre-training: a new run starts from the params of another run's checkpoint.

config.training.init_from names another workdir (its latest checkpoint) or one checkpoint folder
(WORKDIR/checkpoints/<step>). A NEW run (step 0, not a resume) takes its params and the raw
network's batch statistics; with config.training.init_ema also its EMA params and EMA batch
statistics, otherwise the EMA restarts equal to the loaded params, as in any new run. The
optimizer state, step and timestep-sampler history stay the new run's own (fresh).

  abstract = train_state.abstract_state(model, config, tx, mesh)
  loaded = load_init_params(config, config.training.init_from, abstract)
  state = apply_init(train_state.initial_state(model, config, tx, mesh), loaded, config.training.init_ema)

Only the four needed items are read from the source checkpoint (orbax partial restore), after
its stored shapes are checked against this run's network; the source optimizer state is never
loaded, so its optimizer settings do not matter.
"""

import json
import os
from typing import Any, Optional

from absl import logging
from etils import epath
import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp

from ddpm_jax import configuration
from ddpm_jax.checkpoints import CHECKPOINT_DIR, DEFAULT_ITEM
from ddpm_jax.errors import InitFromError
from ddpm_jax.train_state import TrainState
from ddpm_jax.layout import CONFIG_FILE

# The TrainState fields a new run takes from the source checkpoint.
ITEMS = ('params', 'batch_stats', 'ema_params', 'ema_batch_stats')
MAX_LISTED = 5  # Differing parameters named in a mismatch error.


def _is_step_dir(path: str) -> bool:
  return os.path.basename(os.path.normpath(path)).isdigit() and os.path.isdir(os.path.join(path, DEFAULT_ITEM))


def resolve_checkpoint(init_from: str) -> tuple[str, int, Optional[str]]:
  """(checkpoint folder, its step, the source run's config.json or None) for init_from: a
  workdir (its latest finished checkpoint) or a folder WORKDIR/checkpoints/<step>."""
  path = os.path.abspath(os.path.expanduser(init_from))
  if not os.path.isdir(path):
    raise InitFromError(
        f'config.training.init_from={init_from!r}: {path} does not exist. Give the workdir of an '
        f'earlier run, or one of its checkpoint folders WORKDIR/{CHECKPOINT_DIR}/<step>.')
  if _is_step_dir(path):
    workdir = os.path.dirname(os.path.dirname(path))
    step = int(os.path.basename(os.path.normpath(path)))
  else:
    checkpoints = os.path.join(path, CHECKPOINT_DIR)
    steps = ocp.utils.checkpoint_steps(checkpoints) if os.path.isdir(checkpoints) else []
    if not steps:
      raise InitFromError(
          f'config.training.init_from={init_from!r}: no finished checkpoint in {checkpoints}. Give '
          f'a workdir that has trained at least to its first checkpoint, or a folder '
          f'WORKDIR/{CHECKPOINT_DIR}/<step>.')
    workdir, step = path, max(steps)
    path = os.path.join(checkpoints, str(step))
  config_path = os.path.join(workdir, CONFIG_FILE)
  return path, step, (config_path if os.path.exists(config_path) else None)


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  """'a/b/kernel' -> shape for every array of a tree (abstract, concrete or orbax metadata)."""
  leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, 'shape'))[0]
  return {'/'.join(str(getattr(k, 'key', getattr(k, 'name', k))) for k in path): tuple(leaf.shape)
          for path, leaf in leaves}


def shape_differences(source: Any, target: Any) -> list[str]:
  """Each array path whose presence or shape differs between two trees, as readable lines."""
  src, tgt = _shapes(source), _shapes(target)
  lines = []
  for name in sorted(set(src) | set(tgt)):
    if name not in tgt:
      lines.append(f'{name} {src[name]} only in the checkpoint')
    elif name not in src:
      lines.append(f'{name} {tgt[name]} missing from the checkpoint')
    elif src[name] != tgt[name]:
      lines.append(f'{name}: {src[name]} in the checkpoint, {tgt[name]} here')
  return lines


def _model_fields(config_dict: dict) -> dict[str, Any]:
  """The fields that define the network: config.model and data.image_size, num_channels."""
  fields = configuration.flatten_dict({'model': config_dict.get('model', {})})
  for name in configuration.MODEL_DEFINING_DATA_FIELDS:
    fields[f'data.{name}'] = config_dict.get('data', {}).get(name)
  return fields


def _describe_configs(source_config: Optional[dict], config: ml_collections.ConfigDict) -> str:
  """The two runs' network fields that differ, or all of them when none do. A field one config
  lacks (written before the field existed) is not compared."""
  current = _model_fields(configuration.config_to_dict(config))
  if source_config is None:
    return f'The checkpoint\'s run has no {CONFIG_FILE}; this run\'s network: {current}.'
  source = _model_fields(source_config)
  changed = [f'{k}: {source[k]!r} there, {current[k]!r} here'
             for k in sorted(set(source) & set(current)) if source[k] != current[k]]
  if changed:
    return 'Network fields that differ: ' + '; '.join(changed) + '.'
  return f'The network fields are equal ({current}), yet the stored arrays differ.'


def _read_json(path: Optional[str]) -> Optional[dict]:
  if path is None:
    return None
  with open(path) as f:
    return json.load(f)


def _warn_diffusion_changes(source_config: Optional[dict], config: ml_collections.ConfigDict) -> None:
  """Logs diffusion settings that differ: allowed (e.g. T), but the params learnt the old ones."""
  if source_config is None:
    return
  source = configuration.flatten_dict(source_config.get('diffusion', {}))
  current = configuration.flatten_dict(configuration.config_to_dict(config.diffusion))
  changed = [f'{k}: {source[k]!r} -> {current[k]!r}'
             for k in sorted(set(source) & set(current)) if source[k] != current[k]]
  if changed:
    logging.warning('config.training.init_from: the diffusion differs from the pre-training run (%s).',
                    '; '.join(changed))


def _check_network(stored: dict, target: dict, init_from: str, path: str,
                   source_config: Optional[dict], config: ml_collections.ConfigDict) -> None:
  """Raises InitFromError unless the stored params and batch statistics have target's shapes."""
  missing = [name for name in ITEMS if name not in stored]
  if missing:
    raise InitFromError(f'config.training.init_from={init_from!r}: the checkpoint {path} has no '
                        f'{", ".join(missing)}; it is not a ddpm-jax training checkpoint.')
  differences = [f'{name}/{line}' for name in ('params', 'batch_stats')
                 for line in shape_differences(stored[name], target[name])]
  if differences:
    shown = differences[:MAX_LISTED]
    more = f' (and {len(differences) - len(shown)} more)' if len(differences) > len(shown) else ''
    raise InitFromError(
        f'config.training.init_from={init_from!r}: the checkpoint {path} holds a different network: '
        f'{"; ".join(shown)}{more}. {_describe_configs(source_config, config)} Use the same '
        f'config.model (and data.num_channels) as the pre-training run.')


def load_init_params(config: ml_collections.ConfigDict, init_from: str,
                     abstract_state: TrainState) -> dict[str, Any]:
  """{'params', 'batch_stats', 'ema_params', 'ema_batch_stats'} of init_from's checkpoint, placed
  as in abstract_state (train_state.abstract_state of this run: shapes, dtypes, shardings).

  Raises InitFromError when init_from is missing, holds no checkpoint, or its network differs
  from this run's (naming the first differing arrays and both runs' network fields).
  """
  path, step, config_path = resolve_checkpoint(init_from)
  source_config = _read_json(config_path)
  target = {name: getattr(abstract_state, name) for name in ITEMS}
  item = epath.Path(path, DEFAULT_ITEM)
  handler = ocp.PyTreeCheckpointHandler()
  try:
    _check_network(handler.metadata(item).tree, target, init_from, path, source_config, config)
    _warn_diffusion_changes(source_config, config)
    restored = handler.restore(item, args=ocp.args.PyTreeRestore(
        item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target), partial_restore=True))
  finally:
    handler.close()
  logging.info('Initialised from %s (step %d)%s.', path, step,
               '' if config.training.init_ema else ', EMA restarted from its params')
  return {name: restored[name] for name in ITEMS}


def apply_init(state: TrainState, loaded: dict[str, Any], init_ema: bool) -> TrainState:
  """state with the loaded params and batch statistics; the EMA ones loaded too when init_ema,
  else copies of the loaded params and statistics (an EMA that starts where training starts).

  Step, optimizer state and loss history stay state's. Copies, never shared buffers, so the
  donated state of the train step holds each array once.
  """
  copy = lambda tree: jax.tree.map(jnp.copy, tree)
  params, batch_stats = loaded['params'], loaded['batch_stats']
  ema_params = loaded['ema_params'] if init_ema else params
  ema_batch_stats = loaded['ema_batch_stats'] if init_ema else batch_stats
  return state.replace(params=copy(params), batch_stats=copy(batch_stats),
                       ema_params=copy(ema_params), ema_batch_stats=copy(ema_batch_stats))
