"""A ddpm-jax workdir -> a diffusers DDPMPipeline folder (convert_diffusers's reverse).

  python -m ddpm_jax.tools.export_diffusers --workdir=W --out=DIR [--overwrite]

writes, from the EMA params of the workdir's newest readable checkpoint (checkpoints.restore_latest,
with the network of the workdir's config.json):

  DIR/model_index.json                          DDPMPipeline: unet + scheduler
  DIR/unet/config.json                          the UNet2DModel config (convert_diffusers.diffusers_config)
  DIR/unet/diffusion_pytorch_model.safetensors  the weights, by convert_diffusers's name mapping
  DIR/scheduler/scheduler_config.json           DDPMScheduler: the run's betas, variance, prediction, clipping

so that `DDPMPipeline.from_pretrained(DIR)` and `UNet2DModel.from_pretrained(DIR, subfolder='unet')` load
it, and `convert_diffusers --model_dir=DIR` reads it back bit for bit. Only the `ddpm` network has a
UNet2DModel form, and only the discrete DDPM chain (config.diffusion.process=ddpm) a diffusers pipeline
that samples it as trained; the other networks and processes, class-conditional networks and
x_{t-1}-predicting ones are refused with one line naming why, before anything is written (exit status
1, ddpm_jax/tools/common.py). Writing needs `safetensors` only (numpy), not torch.

The folder is written whole: into DIR.tmp-PID beside it, renamed to DIR when complete (DIR new or
empty). With --overwrite, an earlier export's files in DIR are replaced by the new ones, model_index.json
(what makes DIR a pipeline) removed first and written last; other files in DIR stay. An error or a
signal (`stopped: SIGTERM`, status 143) removes the temporary folder; after kill -9 the same command
removes the dead run's one and exports again.
"""

import contextlib
import json
import os
import sys
from typing import Any, Mapping, Optional, Sequence

from absl import flags
import jax
import ml_collections
import numpy as np

from ddpm_jax import atomic_io, checkpoints, diffusion, layout
from ddpm_jax.errors import ConfigError, ConversionError, RunError, WorkdirError
from ddpm_jax.tools import common, convert_diffusers
from ddpm_jax.train_state import components

UNET_DIR, SCHEDULER_DIR = 'unet', 'scheduler'
MODEL_INDEX_FILE = 'model_index.json'
SCHEDULER_CONFIG_FILE = 'scheduler_config.json'
WEIGHTS_FILE = convert_diffusers.WEIGHT_FILES[0]  # diffusion_pytorch_model.safetensors
# Our config.diffusion names -> DDPMScheduler's.
PREDICTION_TYPES = {'eps': 'epsilon', 'x0': 'sample'}
VARIANCE_TYPES = {'fixedlarge': 'fixed_large', 'fixedsmall': 'fixed_small', 'learned_range': 'learned_range'}
# Processes other than ddpm, and why no diffusers pipeline samples a network trained on them.
UNSAMPLEABLE = {
    'vesde': 'diffusers\' only VE pipeline (ScoreSdeVePipeline, deprecated) feeds the UNet sigma and reads its '
             'output as the score of images in [0, 1], while this network takes log sigma and predicts the noise '
             'of images in [-1, 1]',
    'vpsde': 'diffusers has no pipeline of the continuous VP SDE (ScoreSdeVpScheduler has none), and '
             'DDPMScheduler\'s discrete chain is not the process this network was trained on',
    'subvpsde': 'diffusers has no scheduler or pipeline of the sub-VP SDE',
    'edm': 'diffusers\' EDM schedulers precondition the network\'s input and output themselves, and its '
           'pixel-space pipeline (DDPMPipeline) applies no preconditioning',
}
# Networks without a UNet2DModel form, and why.
UNEXPRESSIBLE = {
    'unet_simple': 'its batch norm and five-block layout have no counterpart in diffusers\' UNet2DModel',
    'unet_conv': 'its plain conv blocks and 2x2 max-pool downsampling have no counterpart in diffusers\' '
                 'UNet2DModel (ResNet blocks, strided-conv downsampling)',
    'unet_resnet': 'it downsamples by 2x2 max pooling, which diffusers\' UNet2DModel cannot (strided convs or '
                   'ResNet blocks only)',
}


def check_exportable(config) -> None:
  """Raises ConfigError, naming why, when the run's network or diffusion has no DDPMPipeline form."""
  name = config.model.name
  if name != 'ddpm':
    why = UNEXPRESSIBLE.get(name, 'it is not the ddpm network')
    raise ConfigError(f'config.model.name={name} cannot be exported to diffusers: {why}. Only the ddpm network '
                      f'(the official DDPM UNets) exports.')
  process = config.diffusion.get('process', 'ddpm')  # Runs older than the processes trained the chain.
  if process != 'ddpm':
    why = UNSAMPLEABLE.get(process, 'diffusers\' DDPMPipeline samples only the discrete DDPM chain')
    raise ConfigError(f'config.diffusion.process={process} cannot be exported to diffusers: {why}. Only a run of '
                      f'config.diffusion.process=ddpm exports; sample this one with main.py --mode=sample.')
  if config.model.num_classes:
    raise ConfigError(f'config.model.num_classes={config.model.num_classes}: a class-conditional network cannot be '
                      f'exported, since diffusers\' DDPMPipeline samples without class labels (and has no '
                      f'classifier-free guidance).')
  if config.diffusion.model_mean_type not in PREDICTION_TYPES:
    raise ConfigError(f'config.diffusion.model_mean_type={config.diffusion.model_mean_type} cannot be exported: '
                      f'diffusers\' DDPMScheduler takes predictions of the noise or of x_0 (eps, x0), not of the '
                      f'mean of x_(t-1).')
  try:
    convert_diffusers.diffusers_config(config)
  except ConversionError as e:
    raise ConfigError(f'This ddpm network has no diffusers UNet2DModel form: {e}') from None


def scheduler_config(config) -> dict[str, Any]:
  """DDPMScheduler's config for the run's diffusion: the linear schedule by its name and ends (as the
  official folders), any other by its betas (trained_betas), so diffusers samples with the same betas."""
  d = config.diffusion
  linear = d.schedule == 'linear'
  betas = diffusion.BETA_SCHEDULES[d.schedule](d.num_timesteps, d.beta_start, d.beta_end)
  return {
      '_class_name': 'DDPMScheduler', 'num_train_timesteps': d.num_timesteps,
      'beta_schedule': 'linear', 'beta_start': d.beta_start, 'beta_end': d.beta_end,
      'trained_betas': None if linear else [float(b) for b in np.asarray(betas, np.float64)],
      'variance_type': VARIANCE_TYPES[d.model_var_type], 'prediction_type': PREDICTION_TYPES[d.model_mean_type],
      'clip_sample': bool(d.clip_denoised), 'clip_sample_range': 1.0, 'thresholding': False,
      'timestep_spacing': 'leading', 'steps_offset': 0, 'rescale_betas_zero_snr': False,
  }


def model_index() -> dict[str, Any]:
  """The DDPMPipeline's model_index.json: which class loads each subfolder."""
  return {'_class_name': 'DDPMPipeline', UNET_DIR: ['diffusers', 'UNet2DModel'],
          SCHEDULER_DIR: ['diffusers', 'DDPMScheduler']}


def check_out(out: str, overwrite: bool) -> None:
  """Refuses an --out that is a file, or a non-empty folder without --overwrite. What a killed export
  left beside it (OUT.tmp-PID) is removed first (atomic_io.remove_stale)."""
  atomic_io.remove_stale(out)
  if os.path.exists(out) and not os.path.isdir(out):
    raise WorkdirError(f'--out={out} is a file: give a folder (new or empty).')
  if os.path.isdir(out) and os.listdir(out) and not overwrite:
    raise WorkdirError(f'--out={out} is not empty: give a new or empty folder, or --overwrite to replace the '
                       f'files of an earlier export there.')


def read_run_config(workdir: str) -> ml_collections.ConfigDict:
  """The run's config from workdir/config.json (UserError when it is missing or unreadable)."""
  try:
    return ml_collections.ConfigDict(layout.read_config(workdir))
  except RunError as e:
    raise WorkdirError(str(e)) from None


def ema_params(config, workdir: str) -> tuple[dict, int]:
  """(EMA params as numpy arrays, step) of the workdir's newest readable checkpoint."""
  mesh, model, _, tx = components(config)
  state, step = checkpoints.restore_latest(config, workdir, model, tx, mesh)
  return jax.tree.map(checkpoints.host_copy, state.ema_params), step


def pipeline_files(unet_config: Mapping[str, Any], state_dict: Mapping[str, np.ndarray],
                   scheduler: Mapping[str, Any]) -> dict[str, bytes]:
  """The DDPMPipeline folder's files: {path relative to it: content}, model_index.json last."""
  from safetensors.numpy import save  # pylint: disable=g-import-not-at-top
  as_json = lambda value: json.dumps(dict(value), indent=2, sort_keys=True).encode()
  return {os.path.join(UNET_DIR, convert_diffusers.DIFFUSERS_CONFIG_FILE): as_json(unet_config),
          os.path.join(UNET_DIR, WEIGHTS_FILE): save(dict(state_dict), metadata={'format': 'pt'}),
          os.path.join(SCHEDULER_DIR, SCHEDULER_CONFIG_FILE): as_json(scheduler),
          MODEL_INDEX_FILE: as_json(model_index())}


def write_pipeline(out: str, files: Mapping[str, bytes]) -> None:
  """Writes the folder whole: into a temporary folder beside `out`, then moved into place (module docstring)."""
  with atomic_io.temporary_folder(out) as tmp:
    for relative, content in files.items():
      atomic_io.write_bytes(os.path.join(tmp, relative), content)
    if os.path.isdir(out) and os.listdir(out):  # --overwrite: the earlier export's files replaced.
      replace_files(tmp, out, list(files))
    else:
      atomic_io.replace_folder(tmp, out)


def replace_files(tmp: str, out: str, relatives: Sequence[str]) -> None:
  """Moves each file of `tmp` to the same place in `out`, the last one (model_index.json) removed
  first, so `out` is no pipeline until every file is the new one."""
  with contextlib.suppress(FileNotFoundError):
    os.remove(os.path.join(out, relatives[-1]))
  for relative in relatives:
    target = os.path.join(out, relative)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    os.replace(os.path.join(tmp, relative), target)
    atomic_io.sync_directory(os.path.dirname(target))


def export(workdir: str, out: str, overwrite: bool = False) -> tuple[int, int]:
  """Writes the DDPMPipeline folder of the workdir's newest checkpoint to `out`; returns (step, params).

  Every check (out, the config, the network, the checkpoint) runs before the first byte is written.
  """
  check_out(out, overwrite)
  config = read_run_config(workdir)
  check_exportable(config)
  params, step = ema_params(config, workdir)
  state_dict = convert_diffusers.to_state_dict(params, len(config.model.ch_mult))
  write_pipeline(out, pipeline_files(convert_diffusers.diffusers_config(config), state_dict, scheduler_config(config)))
  return step, sum(int(np.size(v)) for v in state_dict.values())


def define_flags(fv: flags.FlagValues) -> None:
  """The tool's flags (common.main parses them)."""
  flags.DEFINE_string('workdir', None, 'Workdir of a ddpm run: config.json and checkpoints/<step>/.', flag_values=fv)
  flags.DEFINE_string('out', None, 'Folder to write the DDPMPipeline to (new or empty, unless --overwrite).',
                      flag_values=fv)
  flags.DEFINE_bool('overwrite', False, 'Replace the files of an earlier export in a non-empty --out.', flag_values=fv)


def write_export(fv: flags.FlagValues) -> None:
  """export() on the parsed flags; prints what was written and how to load it."""
  step, num_params = export(fv.workdir, fv.out, fv.overwrite)
  print(f'Wrote the EMA network of step {step} ({num_params:,} params) to {fv.out} as a diffusers DDPMPipeline. '
        f'Load it with:\n  DDPMPipeline.from_pretrained({fv.out!r})')


def main(argv: Optional[Sequence[str]] = None) -> int:
  """The command (the ddpm-jax-export-diffusers script) on argv (argv[0] the program; None: sys.argv);
  the exit status."""
  return common.main(argv, define_flags, write_export, doc=__doc__, required=('workdir', 'out'), output_flag='out')


if __name__ == '__main__':
  sys.exit(main())
