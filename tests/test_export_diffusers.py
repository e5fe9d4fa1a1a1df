"""Export to diffusers (ddpm_jax/tools/export_diffusers.py): the newest checkpoint's EMA network as a
DDPMPipeline folder that diffusers loads and that converts back bit for bit; outputs and scheduler
steps as ours; networks diffusers cannot express refused in one line before anything is written."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from configs import cifar10_ddpm, lsun_church_256
from ddpm_jax import checkpoints, configuration, diffusion, errors, nets, parallel
from ddpm_jax.tools import convert_diffusers as cd
from ddpm_jax.tools import export_diffusers as ed
from ddpm_jax.train_state import create_train_state, make_optimizer
import files_testlib

STEP = 5  # The newest checkpoint of the test run; an older one at OLD_STEP holds other EMA params.
OLD_STEP = 3

# A two-level ddpm network on 32x32x3 with attention at 16x16 and 10 timesteps.
TINY_OVERRIDES = {'model.ch': 8, 'model.ch_mult': (1, 2), 'model.num_res_blocks': 1, 'model.norm_groups': 4,
                  'model.time_embed_dim': 8, 'model.time_mlp_dim': 32, 'diffusion.num_timesteps': 10}


def tiny_config(**overrides):
  config = cifar10_ddpm.get_config()
  for field, value in {**TINY_OVERRIDES, **overrides}.items():
    section, key = field.split('.')
    config[section][key] = value
  return config


def random_params(config, seed):
  """Random params of config's network, scaled so its outputs stay of order 1."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: (0.3 * rng.standard_normal(s.shape)).astype(np.float32), cd.param_template(config))


def write_run(workdir, config, params, ema, step):
  """A checkpoint of `step` holding params and distinct EMA params, saved as training saves it."""
  configuration.save_config(config, workdir)
  state = create_train_state({'params': jax.tree.map(jnp.asarray, params)}, make_optimizer(config.optim))
  state = state.replace(step=jnp.asarray(step, jnp.int32), ema_params=jax.tree.map(jnp.asarray, ema))
  writer = checkpoints.CheckpointWriter(checkpoints.make_manager(workdir, config.training.keep_checkpoints))
  writer.save(step, jax.device_put(state, parallel.replicated(parallel.make_mesh())))
  writer.wait()


def assert_trees_equal(a, b):
  flat_a, flat_b = traverse_util.flatten_dict(a), traverse_util.flatten_dict(b)
  assert flat_a.keys() == flat_b.keys()
  for key in flat_a:
    np.testing.assert_array_equal(np.asarray(flat_a[key]), np.asarray(flat_b[key]), err_msg=str(key))


def run_export(capsys, *args) -> tuple[int, str, str]:
  """(exit status, stdout, stderr) of the command run in this process, as its script runs it."""
  code = ed.main(['export_diffusers', *args])
  captured = capsys.readouterr()
  return code, captured.out, captured.err


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
  """(config, EMA params of the newest step, workdir, exported folder) of a tiny ddpm run."""
  config = tiny_config()
  workdir = str(tmp_path_factory.mktemp('run'))
  write_run(workdir, config, random_params(config, 0), random_params(config, 1), OLD_STEP)
  ema = random_params(config, 2)
  write_run(workdir, config, random_params(config, 3), ema, STEP)
  out = str(tmp_path_factory.mktemp('export') / 'pipeline')
  assert ed.export(workdir, out) == (STEP, sum(x.size for x in jax.tree.leaves(ema)))
  return config, ema, workdir, out


# ---------------------------------------------------------------------------
# The folder and the round trip.

def test_the_folder_is_a_ddpm_pipeline_of_the_newest_ema_params_and_converts_back_bitwise(exported):
  config, ema, _, out = exported
  files = sorted(os.path.relpath(os.path.join(d, f), out) for d, _, names in os.walk(out) for f in names)
  assert files == ['model_index.json', 'scheduler/scheduler_config.json', 'unet/config.json',
                   'unet/diffusion_pytorch_model.safetensors']
  diffusers_config, state_dict = cd.load_model_dir(out)  # The converter finds the UNet in unet/.
  assert all(v.dtype == np.float32 for v in state_dict.values())
  assert_trees_equal(cd.convert(diffusers_config, state_dict, config), ema)


def test_diffusers_loads_the_unet_and_the_pipeline_and_agrees_with_ours(exported):
  torch = pytest.importorskip('torch')
  diffusers = pytest.importorskip('diffusers')
  config, ema, _, out = exported
  unet = diffusers.UNet2DModel.from_pretrained(out, subfolder='unet').eval()
  x = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype(np.float32)
  t = np.array([0, 9])
  with torch.no_grad():
    reference = unet(torch.from_numpy(x.transpose(0, 3, 1, 2)), torch.from_numpy(t)).sample.numpy()
  ours = jax.jit(lambda p: nets.get_model(config).apply({'params': p}, x, t, train=False))(ema)
  ours = np.asarray(ours).transpose(0, 3, 1, 2)
  assert np.abs(reference).max() > 0.1
  assert np.abs(ours - reference).max() <= 1e-4, np.abs(ours - reference).max()

  pipeline = diffusers.DDPMPipeline.from_pretrained(out)
  assert isinstance(pipeline.scheduler, diffusers.DDPMScheduler)
  assert list(pipeline.unet.config.block_out_channels) == [8, 16]
  np.testing.assert_allclose(pipeline.scheduler.betas.numpy(), np.asarray(diffusion.schedule_from_config(
      config.diffusion).betas), rtol=1e-6)
  images = pipeline(batch_size=1, num_inference_steps=2, output_type='np',
                    generator=torch.Generator().manual_seed(0)).images
  assert images.shape == (1, 32, 32, 3) and np.isfinite(images).all()


# ---------------------------------------------------------------------------
# The scheduler: diffusers' DDPMScheduler steps as our p_sample.

@pytest.mark.parametrize('overrides', [
    {},  # The paper's: eps, fixedlarge, linear, clipped x0.
    {'diffusion.model_mean_type': 'x0', 'diffusion.model_var_type': 'fixedsmall', 'diffusion.schedule': 'cosine'},
    {'diffusion.model_var_type': 'learned_range', 'diffusion.clip_denoised': False, 'diffusion.schedule': 'quad'},
])
def test_the_scheduler_steps_as_our_reverse_process(overrides):
  torch = pytest.importorskip('torch')
  diffusers = pytest.importorskip('diffusers')
  config = tiny_config(**overrides)
  scheduler = diffusers.DDPMScheduler.from_config(ed.scheduler_config(config))
  schedule = diffusion.schedule_from_config(config.diffusion)
  np.testing.assert_allclose(scheduler.betas.numpy(), np.asarray(schedule.betas), rtol=1e-6)
  num_timesteps = config.diffusion.num_timesteps
  scheduler.set_timesteps(num_timesteps)
  rng = np.random.default_rng(0)
  channels = nets.output_channels(config)
  for t in (num_timesteps - 1, num_timesteps // 2, 1, 0):
    x_t = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    output = (0.8 * rng.standard_normal((2, channels, 4, 4))).astype(np.float32)
    step = scheduler.step(torch.from_numpy(output), t, torch.from_numpy(x_t), generator=torch.Generator().manual_seed(t))
    noise = torch.randn((2, 3, 4, 4), generator=torch.Generator().manual_seed(t)).numpy()  # The step's own draw.
    to_nhwc = lambda a: jnp.asarray(a.transpose(0, 2, 3, 1))
    ours, pred_x0 = diffusion.p_sample(
        schedule, lambda x, t_: to_nhwc(output), to_nhwc(x_t), jnp.full((2,), t), to_nhwc(noise),
        config.diffusion.model_var_type, config.diffusion.clip_denoised, config.diffusion.model_mean_type)
    np.testing.assert_allclose(step.pred_original_sample.numpy(), np.asarray(pred_x0).transpose(0, 3, 1, 2),
                               atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(step.prev_sample.numpy(), np.asarray(ours).transpose(0, 3, 1, 2), atol=2e-5, rtol=1e-4)


# ---------------------------------------------------------------------------
# What is refused, before anything is written.

def test_the_official_networks_export():
  ed.check_exportable(cifar10_ddpm.get_config())
  ed.check_exportable(lsun_church_256.get_config())
  ed.check_exportable(tiny_config(**{'model.num_heads': 2}))  # One attention width: one head size.


@pytest.mark.parametrize('overrides,message', [
    ({'model.name': 'unet_simple'}, 'unet_simple cannot be exported to diffusers: its batch norm'),
    ({'model.name': 'unet_conv'}, 'unet_conv cannot be exported to diffusers: its plain conv blocks'),
    ({'model.name': 'unet_resnet'}, 'unet_resnet cannot be exported to diffusers: it downsamples by 2x2 max pool'),
    ({'model.num_classes': 10}, 'class-conditional network cannot be exported'),
    ({'diffusion.model_mean_type': 'xprev'}, 'model_mean_type=xprev cannot be exported'),
    ({'model.time_embed_dim': 16}, 'no diffusers UNet2DModel form: .*time_embed_dim is 16'),
    ({'model.num_heads': 2, 'model.attn_resolutions': (32, 16)}, r'heads of sizes \[4, 8\]'),
    # Processes no diffusers pipeline samples as trained (every one but the discrete chain).
    ({'diffusion.process': 'vesde', 'sampling.sampler': 'euler', 'diffusion.num_timesteps': 1000},
     'process=vesde cannot be exported to diffusers: .*ScoreSdeVePipeline.* feeds the UNet sigma'),
    ({'diffusion.process': 'edm', 'sampling.sampler': 'edm_heun', 'diffusion.num_timesteps': 1000},
     'process=edm cannot be exported to diffusers'),
])
def test_networks_diffusers_cannot_express_are_refused_naming_why(overrides, message):
  config = tiny_config(**overrides)
  configuration.validate_config(config)  # A valid run, only not exportable.
  with pytest.raises(errors.ConfigError, match=message):
    ed.check_exportable(config)


def test_a_non_empty_out_a_file_and_a_workdir_without_checkpoints_are_refused(exported, tmp_path):
  _, _, workdir, out = exported
  before = files_testlib.snapshot(out)
  with pytest.raises(errors.WorkdirError, match='is not empty: .* or --overwrite'):
    ed.export(workdir, out)
  assert files_testlib.snapshot(out) == before
  (tmp_path / 'file').write_text('x')
  with pytest.raises(errors.WorkdirError, match='is a file'):
    ed.export(workdir, str(tmp_path / 'file'))
  empty_run = tmp_path / 'run'
  configuration.save_config(tiny_config(), str(empty_run))
  with pytest.raises(errors.WorkdirError, match='No checkpoint'):
    ed.export(str(empty_run), str(tmp_path / 'new'))
  with pytest.raises(errors.WorkdirError, match='No config.json'):
    ed.export(str(tmp_path), str(tmp_path / 'new'))
  assert not (tmp_path / 'new').exists()


# ---------------------------------------------------------------------------
# The command.

def test_the_command_refuses_in_one_line_and_overwrites_when_asked(exported, tmp_path, capsys):
  _, ema, workdir, _ = exported
  simple_run, out = tmp_path / 'simple', tmp_path / 'out'
  configuration.save_config(tiny_config(**{'model.name': 'unet_simple'}), str(simple_run))
  for args, message in [([f'--workdir={simple_run}', f'--out={out}'],
                         'error: config.model.name=unet_simple cannot be exported to diffusers: its batch norm'),
                        ([f'--workdir={workdir}'], 'error: --out is required: '),
                        ([f'--workdir={workdir}', f'--out={out}', str(out)], 'error: unexpected arguments '),
                        ([f'--workdir={tmp_path / "none"}', f'--out={out}'],
                         f'error: {tmp_path / "none"} is not a directory: give the --workdir of a training run.')]:
    code, stdout, stderr = run_export(capsys, *args)
    assert code == 1 and stdout == '' and 'Traceback' not in stderr, stderr
    assert stderr.startswith(message) and stderr.count('\n') == 1, stderr
    assert not out.exists()

  # An earlier export (other weights) with a file of the user's beside it: the export's files are
  # replaced, the user's file stays, no temporary is left beside the folder.
  ed.write_pipeline(str(out), ed.pipeline_files(cd.diffusers_config(tiny_config()), cd.to_state_dict(
      random_params(tiny_config(), 9), 2), ed.scheduler_config(tiny_config())))
  (out / 'notes.txt').write_text('my notes')
  code, stdout, stderr = run_export(capsys, f'--workdir={workdir}', f'--out={out}', '--overwrite')
  assert code == 0, stderr[-4000:]
  assert f'Wrote the EMA network of step {STEP}' in stdout and 'DDPMPipeline.from_pretrained' in stdout
  assert_trees_equal(cd.convert(*cd.load_model_dir(str(out)), tiny_config()), ema)
  assert (out / 'notes.txt').read_text() == 'my notes' and sorted(os.listdir(tmp_path)) == ['out', 'simple']
