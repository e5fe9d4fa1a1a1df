"""Official DDPM (and NCSN++) weights in the diffusers `UNet2DModel` format -> a ddpm-jax workdir.

The official CIFAR-10 DDPM (google/ddpm-cifar10-32) is published as a diffusers
folder: config.json and diffusion_pytorch_model.safetensors (or .bin). So are score_sde's
NCSN++ models (google/ncsnpp-celebahq-256: a UNet2DModel with Fourier time features and
Skip/AttnSkip blocks), which fill our `ncsnpp` network. This module

  (a) maps such a state dict (name -> numpy array) onto the parameters of our `ddpm` (or
      `ncsnpp`) network, transposing convolutions OIHW -> HWIO and linear layers (out, in) ->
      (in, out), and refuses a missing or unused key or a wrong shape; diffusers' NCSN++
      returns the score, ours eps = -sigma * score, so its output convolutions are negated;
  (b) checks the diffusers config.json against our config, naming any field that differs;
  (c) writes a workdir that `main.py --mode=sample` loads directly (tools/export_diffusers goes the other
      way with the same mapping: to_state_dict, diffusers_config):

  python -m ddpm_jax.tools.convert_diffusers --model_dir=DIR --workdir=OUT [--config=configs/cifar10_ddpm.py]
  python main.py --config=configs/cifar10_ddpm.py --workdir=OUT --mode=sample

--config defaults to the package's configs/cifar10_ddpm.py (google/ddpm-cifar10-32); --config.X.Y=...
overrides. The workdir is written only after every check passed: exit status 1 with one line
`error: ...` otherwise (ddpm_jax/tools/common.py). After a kill, the same command again replaces
the unfinished save (orbax writes <step>.orbax-checkpoint-tmp and renames it when complete).

Reading .safetensors needs the `safetensors` package (numpy only); a .bin file needs torch.
"""

import json
import math
import os
import re
import sys
from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags, logging
from flax import traverse_util

from ddpm_jax import checkpoints, configuration, nets, parallel, workdir_lock
from ddpm_jax.errors import ConversionError, WorkdirError, one_line
from ddpm_jax.tools import common
from ddpm_jax.train_state import create_train_state, make_optimizer

DIFFUSERS_CONFIG_FILE = 'config.json'
WEIGHT_FILES = ('diffusion_pytorch_model.safetensors', 'diffusion_pytorch_model.bin')

# Attention parameter names of diffusers before 0.14 -> today's (diffusers converts them on load too).
LEGACY_ATTENTION_NAMES = {'query': 'to_q', 'key': 'to_k', 'value': 'to_v', 'proj_attn': 'to_out.0'}

# Our sub-module names -> diffusers', per kind of module.
_RESNET_NAMES = {'norm_0': 'norm1', 'conv_0': 'conv1', 'temb_proj': 'time_emb_proj', 'norm_1': 'norm2',
                 'conv_1': 'conv2', 'shortcut': 'conv_shortcut'}
_ATTENTION_NAMES = {'norm': 'group_norm', 'q': 'to_q', 'k': 'to_k', 'v': 'to_v', 'proj_out': 'to_out.0'}
_RESAMPLE_NAMES = {'conv': 'conv'}
_TEMB_NAMES = {'dense_0': 'linear_1', 'dense_1': 'linear_2'}
_LEAF_NAMES = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias', 'W': 'weight'}
# The networks converted weights fill.
CONVERTIBLE = ('ddpm', 'ncsnpp')
# diffusers' NCSN++ (Skip blocks) fixes these of our ncsnpp config: FIR (1, 3, 3, 1) resampling, the
# input_skip / output_skip pyramids of 3-channel images, residuals divided by sqrt(2), and attention
# layers in the Skip blocks with 32 GroupNorm groups (ours: min(C // 4, 32), the same from 128 channels).
NCSNPP_FIXED = {'fir': True, 'fir_kernel': (1, 3, 3, 1), 'progressive': 'output_skip',
                'progressive_input': 'input_skip', 'skip_rescale': True, 'norm_groups': 32}
NCSNPP_MIN_ATTENTION_WIDTH = 4 * 32

# diffusers' UNet2DModel defaults, for config.json fields that older files leave out.
DIFFUSERS_DEFAULTS = {
    '_class_name': 'UNet2DModel', 'sample_size': None, 'in_channels': 3, 'out_channels': 3,
    'center_input_sample': False, 'time_embedding_type': 'positional', 'time_embedding_dim': None,
    'freq_shift': 0, 'flip_sin_to_cos': True,
    'down_block_types': ['DownBlock2D', 'AttnDownBlock2D', 'AttnDownBlock2D', 'AttnDownBlock2D'],
    'mid_block_type': 'UNetMidBlock2D',
    'up_block_types': ['AttnUpBlock2D', 'AttnUpBlock2D', 'AttnUpBlock2D', 'UpBlock2D'],
    'block_out_channels': [224, 448, 672, 896], 'layers_per_block': 2, 'mid_block_scale_factor': 1,
    'downsample_padding': 1, 'downsample_type': 'conv', 'upsample_type': 'conv', 'act_fn': 'silu',
    'attention_head_dim': 8, 'norm_num_groups': 32, 'attn_norm_num_groups': None, 'norm_eps': 1e-5,
    'resnet_time_scale_shift': 'default', 'add_attention': True, 'class_embed_type': None,
    'num_class_embeds': None,
}


# ---------------------------------------------------------------------------
# (a) State dict -> params.

def rename_legacy_keys(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """Renames pre-0.14 attention keys (query, key, value, proj_attn) to to_q, to_k, to_v, to_out.0."""
  pattern = re.compile(r'\.(' + '|'.join(LEGACY_ATTENTION_NAMES) + r')\.(weight|bias)$')
  renamed = {pattern.sub(lambda m: f'.{LEGACY_ATTENTION_NAMES[m.group(1)]}.{m.group(2)}', k): v
             for k, v in state_dict.items()}
  # NCSN++ folders may hold the Fourier frequencies as time_proj.W (diffusers' conversion wrote both).
  if 'time_proj.W' in renamed:
    legacy = renamed.pop('time_proj.W')
    renamed.setdefault('time_proj.weight', legacy)
  return renamed


def _module_prefix(name: str, num_levels: int) -> tuple[str, dict[str, str]]:
  """Our top-level module name -> (its diffusers prefix, the sub-module renames inside it)."""
  fixed = {'conv_in': ('conv_in', {}), 'conv_out': ('conv_out', {}), 'norm_out': ('conv_norm_out', {}),
           'fourier': ('time_proj', {}),
           'temb': ('time_embedding', _TEMB_NAMES), 'mid_attn': ('mid_block.attentions.0', _ATTENTION_NAMES)}
  if name in fixed:
    return fixed[name]
  if m := re.fullmatch(r'mid_block_(\d+)', name):
    return f'mid_block.resnets.{m[1]}', _RESNET_NAMES
  m = re.fullmatch(r'(down|up)_(\d+)_(block|attn|downsample|upsample|resnet_down|resnet_up|skip_conv|skip_norm)'
                   r'(?:_(\d+))?', name)
  if not m:
    raise ConversionError(f'No diffusers counterpart for our module {name!r}.')
  path, level, kind, index = m.groups()
  # diffusers numbers up blocks from the lowest resolution; we number both paths by level.
  block = int(level) if path == 'down' else num_levels - 1 - int(level)
  prefix = f'{path}_blocks.{block}'
  if kind == 'block':
    return f'{prefix}.resnets.{index}', _RESNET_NAMES
  if kind == 'attn':
    return f'{prefix}.attentions.{index}', _ATTENTION_NAMES
  if kind in ('resnet_down', 'resnet_up'):  # NCSN++'s resampling residual blocks.
    return f'{prefix}.{kind}', _RESNET_NAMES
  if kind in ('skip_conv', 'skip_norm'):  # NCSN++'s input / output pyramid layers.
    return f'{prefix}.{kind}', {}
  return f'{prefix}.{kind}rs.0', _RESAMPLE_NAMES


def diffusers_key(path: tuple[str, ...], num_levels: int) -> str:
  """The diffusers state-dict key of one of our parameters, e.g.
  ('up_1_attn_2', 'proj_out', 'kernel') -> 'up_blocks.2.attentions.2.to_out.0.weight' (4 levels)."""
  prefix, renames = _module_prefix(path[0], num_levels)
  parts = [prefix] + [renames.get(p, p) for p in path[1:-1]] + [_LEAF_NAMES.get(path[-1], path[-1])]
  return '.'.join(parts)


def torch_to_flax(array: np.ndarray) -> np.ndarray:
  """A PyTorch weight in our layout: conv OIHW -> HWIO, linear (out, in) -> (in, out), vectors as is."""
  array = np.asarray(array, np.float32)
  if array.ndim == 4:
    array = array.transpose(2, 3, 1, 0)
  elif array.ndim == 2:
    array = array.T
  return np.ascontiguousarray(array)


def flax_to_torch(array) -> np.ndarray:
  """torch_to_flax's inverse: conv HWIO -> OIHW, dense (in, out) -> (out, in), vectors as is (float32)."""
  array = np.asarray(array, np.float32)
  if array.ndim == 4:
    array = array.transpose(3, 2, 0, 1)
  elif array.ndim == 2:
    array = array.T
  return np.ascontiguousarray(array)


def to_state_dict(params: Mapping, num_levels: int) -> dict[str, np.ndarray]:
  """The diffusers state dict of our ddpm network's params: convert_state_dict's inverse, by the same
  names (diffusers_key) and layouts (flax_to_torch), so a round trip gives the params back bit for bit."""
  return {diffusers_key(path, num_levels): flax_to_torch(leaf)
          for path, leaf in traverse_util.flatten_dict(params).items()}


def convert_state_dict(state_dict: Mapping[str, Any], template: Mapping, num_levels: int) -> dict:
  """Our params (the nested dict of `template`, arrays or shape structs) from a diffusers state dict.

  Every template leaf must find its key with the right shape, and every key must be used.
  """
  state_dict = rename_legacy_keys(state_dict)
  params, missing, wrong_shape, used = {}, [], [], set()
  for path, leaf in traverse_util.flatten_dict(template).items():
    key = diffusers_key(path, num_levels)
    if key not in state_dict:
      missing.append(key)
      continue
    used.add(key)
    value = torch_to_flax(state_dict[key])
    if value.shape != tuple(leaf.shape):
      wrong_shape.append(f'{key}: {tuple(np.shape(state_dict[key]))} -> {value.shape}, '
                         f'but {"/".join(path)} needs {tuple(leaf.shape)}')
    params[path] = value
  unused = sorted(set(state_dict) - used)
  problems = []
  if missing:
    problems.append(f'{len(missing)} missing key(s): {", ".join(missing[:8])}')
  if unused:
    problems.append(f'{len(unused)} unused key(s): {", ".join(unused[:8])}')
  if wrong_shape:
    problems.append(f'{len(wrong_shape)} wrong shape(s): {"; ".join(wrong_shape[:8])}')
  if problems:
    raise ConversionError('The state dict does not fit the ddpm network of this config: '
                          + '; '.join(problems) + '. Check the config (--config) against config.json.')
  return traverse_util.unflatten_dict(params)


def param_template(config) -> dict:
  """Shapes of our network's params for this config, without initialising them."""
  model = nets.get_model(config)
  shapes = jax.eval_shape(lambda key: nets.init_variables(model, config, key), jax.random.PRNGKey(0))
  return shapes['params']


# ---------------------------------------------------------------------------
# (b) config.json against our config.

def expected_diffusers_config(config) -> dict[str, tuple[Any, str]]:
  """field -> (the value our config needs, where that comes from) for a diffusers config.json."""
  m, size = config.model, config.data.image_size
  widths = [m.ch * mult for mult in m.ch_mult]
  sides = nets.level_sides(size, len(widths))
  attention = [side in tuple(m.attn_resolutions) for side in sides]
  ours = f'our {m.name} network'
  expected = {
      '_class_name': ('UNet2DModel', 'the converter (a diffusers UNet2DModel config.json)'),
      'sample_size': (size, 'config.data.image_size'),
      'in_channels': (config.data.num_channels, 'config.data.num_channels'),
      'out_channels': (nets.output_channels(config),
                       'config.data.num_channels (x2 for config.diffusion.model_var_type=learned_range)'),
      'block_out_channels': (widths, 'config.model.ch * config.model.ch_mult'),
      'layers_per_block': (m.num_res_blocks, 'config.model.num_res_blocks'),
      'down_block_types': (['AttnDownBlock2D' if a else 'DownBlock2D' for a in attention],
                           f'config.model.attn_resolutions on sides {sides}'),
      'up_block_types': (['AttnUpBlock2D' if a else 'UpBlock2D' for a in reversed(attention)],
                         f'config.model.attn_resolutions on sides {sides}'),
      'norm_num_groups': (m.norm_groups, 'config.model.norm_groups'),
      'norm_eps': (m.norm_eps, 'config.model.norm_eps'),
      'time_embedding_dim': (m.time_mlp_dim, 'config.model.time_mlp_dim'),
      'mid_block_type': ('UNetMidBlock2D', ours), 'add_attention': (True, ours),
      'act_fn': ('silu', ours), 'time_embedding_type': ('positional', ours),
      'flip_sin_to_cos': (False, ours + ' (sines first)'), 'freq_shift': (1, ours + ' (log(10000)/(half-1))'),
      'downsample_type': ('conv', ours), 'upsample_type': ('conv', ours),
      'downsample_padding': (0, ours + ' (TF SAME padding of the stride-2 conv)'),
      'center_input_sample': (False, ours), 'mid_block_scale_factor': (1, ours),
      'resnet_time_scale_shift': ('default', ours), 'class_embed_type': (None, ours),
      'num_class_embeds': (None, ours), 'attn_norm_num_groups': (m.norm_groups, 'config.model.norm_groups'),
  }
  if m.name == 'ncsnpp':  # Skip blocks: their own resampling; GroupNorm of min(C // 4, 32) groups.
    skip = f'config.model.attn_resolutions on sides {sides} (ncsnpp)'
    expected.update(
        down_block_types=(['AttnSkipDownBlock2D' if a else 'SkipDownBlock2D' for a in attention], skip),
        up_block_types=(['AttnSkipUpBlock2D' if a else 'SkipUpBlock2D' for a in reversed(attention)], skip),
        norm_num_groups=(None, ours + ' (min(C // 4, 32) groups)'),
        attn_norm_num_groups=(None, ours + ' (min(C // 4, 32) groups)'),
        time_embedding_type=(m.embedding_type, 'config.model.embedding_type'),
        mid_block_scale_factor=(math.sqrt(2.0) if m.skip_rescale else 1, 'config.model.skip_rescale'))
    for field in ('downsample_type', 'upsample_type', 'downsample_padding') + (
        ('flip_sin_to_cos', 'freq_shift') if m.embedding_type == 'fourier' else ()):
      del expected[field]  # Not read by diffusers' NCSN++.
  return expected


def _ncsnpp_problems(config) -> list[str]:
  """What diffusers' NCSN++ fixes and our ncsnpp config does not match (NCSNPP_FIXED, 3 channels,
  attention only where diffusers' 32 groups equal ours)."""
  m = config.model
  problems = [f'config.model.{field} is {m[field]!r} but diffusers\' NCSN++ (Skip blocks) has {want!r}'
              for field, want in NCSNPP_FIXED.items()
              if (tuple(m[field]) if isinstance(want, tuple) else m[field]) != want]
  if config.data.num_channels != 3 or nets.output_channels(config) != 3:
    problems.append('diffusers\' NCSN++ skip convolutions take and give 3 channels: config.data.num_channels must '
                    'be 3 (and config.diffusion.model_var_type not learned_range)')
  narrow = [w for w in attention_widths(config) if w < NCSNPP_MIN_ATTENTION_WIDTH]
  if narrow:
    problems.append(f'attention widths {narrow} are below {NCSNPP_MIN_ATTENTION_WIDTH}, where diffusers\' Skip '
                    f'blocks normalise in 32 groups and ours in min(C // 4, 32)')
  return problems


def _normalise(field: str, value: Any, diffusers_config: Mapping[str, Any]) -> Any:
  """A config.json value in the form expected_diffusers_config compares (lists, resolved Nones)."""
  if isinstance(value, tuple):
    value = list(value)
  widths = diffusers_config.get('block_out_channels', DIFFUSERS_DEFAULTS['block_out_channels'])
  if field == 'time_embedding_dim' and value is None:
    return 4 * widths[0]
  if field == 'attn_norm_num_groups' and value is None:
    return diffusers_config.get('norm_num_groups', DIFFUSERS_DEFAULTS['norm_num_groups'])
  if field == 'sample_size' and isinstance(value, list) and len(value) == 2 and value[0] == value[1]:
    return value[0]
  return value


def attention_widths(config) -> list[int]:
  """The widths of our ddpm network's attention layers: the levels with attention, and the middle."""
  m = config.model
  widths = [m.ch * mult for mult in m.ch_mult]
  sides = nets.level_sides(config.data.image_size, len(widths))
  return sorted({w for w, s in zip(widths, sides) if s in tuple(m.attn_resolutions)} | {widths[-1]})


def _heads_problem(diffusers_config: Mapping[str, Any], config) -> str | None:
  """diffusers splits attention into width // attention_head_dim heads (None: one head)."""
  head_dim = diffusers_config.get('attention_head_dim', DIFFUSERS_DEFAULTS['attention_head_dim'])
  m = config.model
  heads = {w: 1 if head_dim is None else w // head_dim for w in attention_widths(config)}
  if any(h != m.num_heads for h in heads.values()):
    return (f'attention_head_dim is {head_dim!r}, which gives {heads} heads (width: heads), but '
            f'config.model.num_heads is {m.num_heads}')
  return None


def require_convertible(config) -> None:
  """Converted weights fill the ddpm network (google/ddpm-*) or the ncsnpp one (google/ncsnpp-*)."""
  if config.model.name not in CONVERTIBLE:
    raise ConversionError(f'Converted weights are for the ddpm network or the ncsnpp network; config.model.name is '
                          f'{config.model.name!r}. Use --config=configs/cifar10_ddpm.py (or an ncsnpp config).')


def require_ddpm(config) -> None:
  """Converted weights fill only the ddpm network."""
  if config.model.name != 'ddpm':
    raise ConversionError(f'Converted weights are for the ddpm network; config.model.name is '
                          f'{config.model.name!r}. Use --config=configs/cifar10_ddpm.py.')


def check_diffusers_config(diffusers_config: Mapping[str, Any], config) -> None:
  """Raises ConversionError naming every config.json field that our config does not reproduce.

  dropout is not compared: it does not change the network at sampling time.
  """
  require_convertible(config)
  problems = _ncsnpp_problems(config) if config.model.name == 'ncsnpp' else []
  for field, (want, source) in expected_diffusers_config(config).items():
    got = _normalise(field, diffusers_config.get(field, DIFFUSERS_DEFAULTS[field]), diffusers_config)
    numbers = isinstance(want, float) and isinstance(got, (int, float))
    same = np.isclose(got, want, rtol=1e-6, atol=0) if numbers else got == want
    if not same:
      problems.append(f'{field} is {got!r} but {source} needs {want!r}')
  if problem := _heads_problem(diffusers_config, config):
    problems.append(problem)
  widths = diffusers_config.get('block_out_channels', DIFFUSERS_DEFAULTS['block_out_channels'])
  if widths and widths[0] != config.model.time_embed_dim:
    problems.append(f'block_out_channels[0] is {widths[0]}, the size of diffusers\' sinusoidal timestep '
                    f'embedding, but config.model.time_embed_dim is {config.model.time_embed_dim}')
  if problems:
    raise ConversionError('config.json does not match the config: ' + '; '.join(problems) + '.')


def diffusers_config(config) -> dict[str, Any]:
  """The config.json of the diffusers UNet2DModel that our ddpm network of `config` is (what
  tools/export_diffusers writes, and check_diffusers_config accepts): expected_diffusers_config's
  values, the attention head size and dropout. ConversionError naming the reason when there is none,
  e.g. heads of different sizes (diffusers gives every attention layer one head size)."""
  require_ddpm(config)
  fields = {field: want for field, (want, _) in expected_diffusers_config(config).items()}
  num_heads = config.model.num_heads
  head_dims = sorted({w // num_heads for w in attention_widths(config)})
  if num_heads > 1 and len(head_dims) > 1:
    raise ConversionError(f'config.model.num_heads={num_heads} gives attention heads of sizes {head_dims} '
                          f'on the widths {attention_widths(config)}, but diffusers splits every attention layer '
                          f'into heads of one size (attention_head_dim).')
  fields.update(attention_head_dim=head_dims[0] if num_heads > 1 else None, dropout=config.model.dropout)
  check_diffusers_config(fields, config)  # The converter reads it back as this network.
  return fields


# ---------------------------------------------------------------------------
# (c) Files in, workdir out.

def load_model_dir(model_dir: str) -> tuple[dict, dict[str, np.ndarray]]:
  """(config.json as a dict, state dict as numpy arrays) of a diffusers UNet2DModel folder.

  Accepts the model folder itself or a pipeline folder with the model in unet/.
  """
  if not os.path.exists(os.path.join(model_dir, DIFFUSERS_CONFIG_FILE)) and os.path.exists(
      os.path.join(model_dir, 'unet', DIFFUSERS_CONFIG_FILE)):
    model_dir = os.path.join(model_dir, 'unet')
  config_path = os.path.join(model_dir, DIFFUSERS_CONFIG_FILE)
  if not os.path.exists(config_path):
    raise ConversionError(f'No {DIFFUSERS_CONFIG_FILE} in {model_dir}: pass the folder of a diffusers UNet2DModel '
                          f'(e.g. a download of google/ddpm-cifar10-32).')
  unreadable = 'it may be cut short (an interrupted download) or not the file meant: download it again'
  try:
    with open(config_path, 'rb') as f:
      diffusers_config = json.loads(f.read())
  except OSError as e:
    raise ConversionError(f'Cannot read {config_path}: {e.strerror or e}.') from e
  except ValueError as e:  # JSONDecodeError, or bytes that are not text.
    raise ConversionError(f'{config_path} is not JSON ({one_line(e, limit=120)}): {unreadable}.') from e
  if not isinstance(diffusers_config, dict):
    raise ConversionError(f'{config_path} holds a JSON {type(diffusers_config).__name__}, not the object of a '
                          f'UNet2DModel config: {unreadable}.')
  safetensors_path, bin_path = (os.path.join(model_dir, name) for name in WEIGHT_FILES)
  if os.path.exists(safetensors_path):
    from safetensors import SafetensorError  # pylint: disable=g-import-not-at-top
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    try:
      return diffusers_config, dict(load_file(safetensors_path))
    except OSError as e:
      raise ConversionError(f'Cannot read {safetensors_path}: {e.strerror or e}.') from e
    except SafetensorError as e:
      raise ConversionError(f'{safetensors_path} is not a readable safetensors file ({one_line(e, limit=120)}): '
                            f'{unreadable}.') from e
  if os.path.exists(bin_path):
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise ConversionError(f'{bin_path} is a PyTorch pickle and needs torch; install torch, or use '
                            f'the .safetensors file of the model instead.') from None
    try:
      state = torch.load(bin_path, map_location='cpu', weights_only=True)
    except OSError as e:
      raise ConversionError(f'Cannot read {bin_path}: {e.strerror or e}.') from e
    except Exception as e:  # pylint: disable=broad-except  # pickle, zip and torch's own errors of a bad file.
      raise ConversionError(f'{bin_path} is not a readable PyTorch state dict ({one_line(e, limit=120)}): '
                            f'{unreadable}.') from e
    if not isinstance(state, Mapping):
      raise ConversionError(f'{bin_path} holds a {type(state).__name__}, not a state dict: {unreadable}.')
    return diffusers_config, {k: v.float().numpy() for k, v in state.items()}
  raise ConversionError(f'No weights in {model_dir}: expected {" or ".join(WEIGHT_FILES)}.')


def convert(diffusers_config: Mapping[str, Any], state_dict: Mapping[str, Any], config) -> dict:
  """Checked params of our ddpm (or ncsnpp) network for `config` from a diffusers config and state dict."""
  check_diffusers_config(diffusers_config, config)
  params = convert_state_dict(state_dict, param_template(config), len(config.model.ch_mult))
  if config.model.name == 'ncsnpp' and config.model.embedding_type == 'fourier':
    params = negate_output_convs(params)
  return params


def negate_output_convs(params: Mapping) -> dict:
  """Our NCSN++ predicts eps = -sigma * score; diffusers' Fourier UNet2DModel returns score = h / sigma,
  h the sum of its output convolutions (conv_out and the up path's skip_conv pyramid, linearly
  upsampled). Negating those convolutions' weights and biases turns h into -h = eps."""
  flat = traverse_util.flatten_dict(params)
  is_output = lambda path: path[0] == 'conv_out' or re.fullmatch(r'up_\d+_skip_conv', path[0])
  return traverse_util.unflatten_dict({path: -value if is_output(path) else value for path, value in flat.items()})


def default_step(config) -> int:
  """The step to file converted weights under: the recipe's length (800k for DDPM CIFAR-10), else 1.

  Not 0: a workdir's latest checkpoint must be a trained one, and train.sample() reads step > 0.
  """
  return config.training.num_train_steps if config.training.num_train_steps > 0 else 1


def write_workdir(params: dict, config, workdir: str, step: int) -> str:
  """Saves params as both params and EMA params of a TrainState at `step`, as train.py would.

  Returns the checkpoint directory. Refuses a workdir that already holds checkpoints, or that
  another process writes (its lock, ddpm_jax/workdir_lock.py); a killed conversion's unfinished save
  (orbax's <step>.orbax-checkpoint-tmp) is no checkpoint: the same command again replaces it.
  """
  if step <= 0:
    raise ValueError(f'The checkpoint step must be positive, got {step}.')
  configuration.validate_config(config)
  with workdir_lock.exclusive(workdir):  # The one writer, as training: a second one is refused.
    configuration.check_workdir_config(config, workdir)
    checkpoint_dir = os.path.join(workdir, checkpoints.CHECKPOINT_DIR)
    if checkpoints.finished_steps(checkpoint_dir):  # A killed conversion's unfinished save is orbax's to replace.
      raise WorkdirError(
          f'{checkpoint_dir} already holds checkpoints; convert into a new --workdir.')
    mesh = parallel.make_mesh()
    state = create_train_state({'params': jax.tree.map(jnp.asarray, params)}, make_optimizer(config.optim))
    state = jax.device_put(state.replace(step=jnp.asarray(step, jnp.int32)), parallel.replicated(mesh))
    configuration.save_config(config, workdir)
    writer = checkpoints.CheckpointWriter(checkpoints.make_manager(workdir, config.training.keep_checkpoints))
    writer.save(step, state)  # With its digests, as training saves.
    writer.wait()
  return os.path.join(checkpoint_dir, str(step))


def convert_into(config, model_dir: str, workdir: str, step: int = 0) -> tuple[int, int, str]:
  """Converts the diffusers folder `model_dir` into `workdir` for `config`: (step, parameter count,
  checkpoint directory). ConversionError, UserError or OSError before the workdir is touched."""
  step = step if step > 0 else default_step(config)
  require_convertible(config)
  diffusers_config, state_dict = load_model_dir(model_dir)
  params = convert(diffusers_config, state_dict, config)
  path = write_workdir(params, config, workdir, step)
  return step, sum(x.size for x in jax.tree.leaves(params)), path


def run(config, model_dir: str, workdir: str, step: int = 0) -> tuple[int, int, str]:
  """convert_into, where every expected failure exits with one line `error: ...` (status 1), the
  workdir untouched."""
  with common.exit_on_error(ERRORS, 'workdir', workdir):
    return convert_into(config, model_dir, workdir, step)


# --config: the official CIFAR-10 DDPM's config when not given.
CONFIG = common.ConfigFlag('cifar10_ddpm', 'Config of the ddpm (or ncsnpp) network to fill (configs/*.py); '
                           '--config.X.Y=... overrides.', lock=True)
ERRORS = (ConversionError,)  # The expected failures besides UserError and OSError.


def define_flags(fv: flags.FlagValues) -> None:
  """The tool's flags besides --config (common.main defines that one)."""
  flags.DEFINE_string('model_dir', None, 'Folder of a diffusers UNet2DModel: config.json and weights.',
                      flag_values=fv)
  flags.DEFINE_string('workdir', None, 'Workdir to write: config.json and checkpoints/<step>/.', flag_values=fv)
  flags.DEFINE_integer('step', 0, 'Step to save the checkpoint as; 0 = config.training.num_train_steps, or 1 if '
                       'that is 0.', flag_values=fv)


def write_converted(fv: flags.FlagValues) -> None:
  """convert_into on the parsed flags; prints what was written and how to sample from it."""
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  step, num_params, path = convert_into(fv.config, fv.model_dir, fv.workdir, fv.step)
  logging.info('Wrote %d converted params as step %d to %s.', num_params, step, path)
  config_file = config_flags.get_config_filename(fv['config'])
  print(f'Wrote {num_params:,} params as step {step} to {path}. Sample with:\n'
        f'  python main.py --config={config_file} --workdir={fv.workdir} --mode=sample')


def main(argv: Optional[Sequence[str]] = None) -> int:
  """The command (the ddpm-jax-convert-diffusers script) on argv (argv[0] the program; None: sys.argv);
  the exit status."""
  return common.main(argv, define_flags, write_converted, doc=__doc__, config=CONFIG,
                     required=('model_dir', 'workdir'), errors=ERRORS, output_flag='workdir')


if __name__ == '__main__':
  sys.exit(main())
