"""pytorch-fid's FID Inception weights (.pth) -> the .npz that `inception.load_inception_params` reads.

  curl -L -o pt_inception-2015-12-05-6726825d.pth \\
    https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth
  python -m ddpm_jax.tools.convert_inception --torch_weights=pt_inception-2015-12-05-6726825d.pth \\
    [--out=~/.cache/ddpm-jax/inception/pt_inception-2015-12-05.npz]

(--output, the flag's former name, still works with a warning.)

The state dict is torchvision's Inception3 naming (Mixed_5b.branch1x1.conv.weight, ...); ours
uses the same module names, so each key maps by name: conv and fc weights are transposed
(OIHW -> HWIO, (out, in) -> (in, out)), batch norm's weight/bias/running_mean/running_var
become scale/bias and the batch_stats mean/var. Every key must be used (num_batches_tracked
aside) and every shape must fit. The file's SHA-256 must start with the 8 hex digits in its
published name, so a truncated download is refused. Reading the .pth needs torch. A bad input
exits with status 1 and one line `error: ...`, before anything is written (ddpm_jax/tools/common.py).
"""

import hashlib
import os
import sys
from typing import Any, Mapping, Optional, Sequence

from absl import flags
import numpy as np
from flax import traverse_util

from ddpm_jax.errors import ConversionError, InceptionWeightsError, WorkdirError
from ddpm_jax.nets import inception
from ddpm_jax.tools import common
from ddpm_jax.tools.convert_diffusers import torch_to_flax

# The first 8 hex digits of the published file's SHA-256, as in its name.
FID_WEIGHTS_SHA256_PREFIX = '6726825d'
# State-dict entries with no counterpart in an inference network.
IGNORED_SUFFIXES = ('num_batches_tracked',)
_LEAF_NAMES = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias', 'mean': 'running_mean', 'var': 'running_var'}


def torch_key(key: str) -> str:
  """Our flat key -> pytorch-fid's, e.g. 'batch_stats/Mixed_5b/branch1x1/bn/mean' ->
  'Mixed_5b.branch1x1.bn.running_mean', 'params/fc/kernel' -> 'fc.weight'."""
  _, *modules, leaf = key.split('/')
  return '.'.join(modules + [_LEAF_NAMES[leaf]])


def convert_state_dict(state_dict: Mapping[str, Any]) -> dict:
  """{'params': ..., 'batch_stats': ...} of inception.InceptionV3 from pytorch-fid's state dict (numpy values).

  Raises ConversionError listing missing, unused and misshapen keys.
  """
  flat, missing, wrong_shape, used = {}, [], [], set()
  for key, shape in inception.expected_shapes().items():
    source = torch_key(key)
    if source not in state_dict:
      missing.append(source)
      continue
    used.add(source)
    value = torch_to_flax(np.asarray(state_dict[source]))
    if value.shape != shape:
      wrong_shape.append(f'{source}: {tuple(np.shape(state_dict[source]))} -> {value.shape}, but {key} needs {shape}')
    flat[key] = value
  unused = sorted(k for k in set(state_dict) - used if not k.endswith(IGNORED_SUFFIXES))
  problems = []
  for label, items in (('missing', missing), ('unused', unused), ('wrong shape(s)', wrong_shape)):
    if items:
      problems.append(f'{len(items)} {label} key(s): {"; ".join(items[:8])}{" ..." if len(items) > 8 else ""}')
  if problems:
    raise ConversionError('The state dict is not pytorch-fid\'s FID Inception (torchvision Inception3, 1008 '
                          'classes, no aux logits): ' + '. '.join(problems) + '. Use '
                          f'{inception.FID_WEIGHTS_URL}.')
  return traverse_util.unflatten_dict({tuple(k.split('/')): v for k, v in flat.items()})


def sha256_of(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


def check_sha256_prefix(path: str, prefix: str = FID_WEIGHTS_SHA256_PREFIX) -> None:
  """Raises ConversionError unless the file's SHA-256 starts with `prefix`."""
  digest = sha256_of(path)
  if not digest.startswith(prefix):
    raise ConversionError(f'{path} has SHA-256 {digest}, but pytorch-fid\'s published weights start with '
                          f'{prefix}: the download is truncated or another file. Download '
                          f'{inception.FID_WEIGHTS_URL} again (or pass --nocheck_hash for weights you trust).')


def read_torch_state_dict(path: str) -> dict[str, np.ndarray]:
  """name -> numpy array of a PyTorch state dict file (tensors only, no pickled code)."""
  import torch  # pylint: disable=g-import-not-at-top

  if not os.path.isfile(path):
    raise ConversionError(f'No file {path}. Download {inception.FID_WEIGHTS_URL}.')
  try:
    state_dict = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # pylint: disable=broad-except  (torch raises many kinds on a bad file)
    raise ConversionError(f'{path} is not a readable PyTorch state dict ({type(e).__name__}: {e}). '
                          f'Download {inception.FID_WEIGHTS_URL} again.') from e
  if not isinstance(state_dict, Mapping):
    raise ConversionError(f'{path} holds a {type(state_dict).__name__}, not a state dict.')
  return {k: v.detach().cpu().numpy() for k, v in state_dict.items() if isinstance(v, torch.Tensor)}


def convert_file(torch_weights: str, output: str = inception.DEFAULT_WEIGHTS_PATH,
                 sha256_prefix: Optional[str] = FID_WEIGHTS_SHA256_PREFIX) -> str:
  """Converts a pytorch-fid .pth to our .npz at `output` (atomically), reads it back checked; returns its path.

  sha256_prefix=None skips the check of the download.
  """
  if os.path.isdir(os.path.expanduser(output)):
    raise WorkdirError(f'--out={output} is a folder: give the path of the .npz file to write (e.g. '
                       f'{os.path.join(output, os.path.basename(inception.DEFAULT_WEIGHTS_PATH))}).')
  if sha256_prefix is not None and os.path.isfile(torch_weights):
    check_sha256_prefix(torch_weights, sha256_prefix)
  variables = convert_state_dict(read_torch_state_dict(torch_weights))
  path = inception.save_inception_params(variables, output)
  inception.load_inception_params(path)
  return path


def define_flags(fv: flags.FlagValues) -> None:
  """The tool's flags (common.main parses them; --output is --out's former name)."""
  flags.DEFINE_string('torch_weights', None, f'pytorch-fid\'s {inception.FID_WEIGHTS_FILE}, from '
                      f'{inception.FID_WEIGHTS_URL}.', flag_values=fv)
  flags.DEFINE_string('out', inception.DEFAULT_WEIGHTS_PATH, 'The .npz to write (where the loader looks by default).',
                      flag_values=fv)
  flags.DEFINE_bool('check_hash', True, 'Refuse a file whose SHA-256 does not start with '
                    f'{FID_WEIGHTS_SHA256_PREFIX}, as the published one does.', flag_values=fv)


def write_converted(fv: flags.FlagValues) -> None:
  """convert_file on the parsed flags; prints what was written."""
  path = convert_file(fv.torch_weights, fv.out, FID_WEIGHTS_SHA256_PREFIX if fv.check_hash else None)
  num_params = sum(int(np.prod(shape)) for shape in inception.expected_shapes().values())
  print(f'Wrote {num_params:,} Inception weights to {path}.')


def main(argv: Optional[Sequence[str]] = None) -> int:
  """The command (the ddpm-jax-convert-inception script) on argv (argv[0] the program; None: sys.argv);
  the exit status."""
  return common.main(argv, define_flags, write_converted, doc=__doc__, required=('torch_weights',),
                     deprecated={'output': 'out'}, errors=(ConversionError, InceptionWeightsError),
                     output_flag='out')


if __name__ == '__main__':
  sys.exit(main())
