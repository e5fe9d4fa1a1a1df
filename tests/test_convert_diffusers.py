"""Official DDPM weights from the diffusers UNet2DModel format: mapping, checks, parity, workdir."""

import importlib
import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import traverse_util

from configs import cifar10_ddpm, lsun_church_256
from ddpm_jax import configuration, errors, generate, nets
from ddpm_jax.tools import convert_diffusers as cd

# config.json of google/ddpm-cifar10-32 (the fields diffusers writes; older files omit some).
OFFICIAL_DIFFUSERS_CONFIG = {
    '_class_name': 'UNet2DModel', '_diffusers_version': '0.16.0.dev0', 'act_fn': 'silu',
    'add_attention': True, 'attention_head_dim': None, 'block_out_channels': [128, 256, 256, 256],
    'center_input_sample': False, 'class_embed_type': None,
    'down_block_types': ['DownBlock2D', 'AttnDownBlock2D', 'DownBlock2D', 'DownBlock2D'],
    'downsample_padding': 0, 'flip_sin_to_cos': False, 'freq_shift': 1, 'in_channels': 3,
    'layers_per_block': 2, 'mid_block_scale_factor': 1, 'norm_eps': 1e-06, 'norm_num_groups': 32,
    'num_class_embeds': None, 'out_channels': 3, 'resnet_time_scale_shift': 'default', 'sample_size': 32,
    'time_embedding_type': 'positional', 'up_block_types': ['UpBlock2D', 'UpBlock2D', 'AttnUpBlock2D', 'UpBlock2D'],
}

# config.json of google/ddpm-church-256 (also of ddpm-bedroom-256, ddpm-cat-256, ddpm-celebahq-256): six
# levels, attention at 16x16 (the fifth level).
CHURCH_256_DIFFUSERS_CONFIG = dict(
    OFFICIAL_DIFFUSERS_CONFIG, block_out_channels=[128, 128, 256, 256, 512, 512], sample_size=256,
    down_block_types=['DownBlock2D', 'DownBlock2D', 'DownBlock2D', 'DownBlock2D', 'AttnDownBlock2D', 'DownBlock2D'],
    up_block_types=['UpBlock2D', 'AttnUpBlock2D', 'UpBlock2D', 'UpBlock2D', 'UpBlock2D', 'UpBlock2D'])
OFFICIAL_256_PARAMS = 113_673_219  # Ho et al. 2020: "114M" for the 256x256 models.
CONFIGS_256 = ('celebahq_256', 'lsun_church_256', 'lsun_bedroom_256', 'lsun_cat_256')

# A two-level DDPM UNet on 32x32x3 with attention at 16x16, as our overrides and as diffusers' config.
TINY_OVERRIDES = {'model.ch': 8, 'model.ch_mult': (1, 2), 'model.num_res_blocks': 1, 'model.norm_groups': 4,
                  'model.time_embed_dim': 8, 'model.time_mlp_dim': 32, 'diffusion.num_timesteps': 10,
                  'sampling.num_samples': 2, 'sampling.batch_size': 2}
TINY_DIFFUSERS_CONFIG = dict(OFFICIAL_DIFFUSERS_CONFIG, block_out_channels=[8, 16], layers_per_block=1,
                             norm_num_groups=4, down_block_types=['DownBlock2D', 'AttnDownBlock2D'],
                             up_block_types=['AttnUpBlock2D', 'UpBlock2D'])


def tiny_config():
  config = cifar10_ddpm.get_config()
  for field, value in TINY_OVERRIDES.items():
    section, key = field.split('.')
    config[section][key] = value
  return config


def fake_state_dict(config, seed=0):
  """(diffusers-layout state dict of random numpy arrays, the params they should convert to)."""
  rng = np.random.default_rng(seed)
  template = traverse_util.flatten_dict(cd.param_template(config))
  state_dict, expected = {}, {}
  for path, leaf in template.items():
    value = rng.standard_normal(leaf.shape).astype(np.float32)
    torch_layout = {4: (3, 2, 0, 1), 2: (1, 0), 1: (0,)}[value.ndim]
    state_dict[cd.diffusers_key(path, len(config.model.ch_mult))] = np.ascontiguousarray(value.transpose(torch_layout))
    expected[path] = value
  return state_dict, traverse_util.unflatten_dict(expected)


def assert_trees_equal(a, b):
  flat_a, flat_b = traverse_util.flatten_dict(a), traverse_util.flatten_dict(b)
  assert flat_a.keys() == flat_b.keys()
  for key in flat_a:
    np.testing.assert_array_equal(np.asarray(flat_a[key]), np.asarray(flat_b[key]), err_msg=str(key))


# ---------------------------------------------------------------------------
# The mapping, in numpy only.

def run_converter(capsys, *args) -> tuple[int, str, str]:
  """(exit status, stdout, stderr) of the command on the tiny config (the default config, configs/cifar10_ddpm.py,
  with overrides), run in this process as its script runs it."""
  overrides = [f'--config.{k}={v}'.replace(' ', '') for k, v in TINY_OVERRIDES.items()]
  code = cd.main(['convert_diffusers', *args, *overrides])
  captured = capsys.readouterr()
  return code, captured.out, captured.err


@pytest.mark.parametrize('path,key', [
    (('conv_in', 'kernel'), 'conv_in.weight'),
    (('temb', 'dense_1', 'bias'), 'time_embedding.linear_2.bias'),
    (('down_0_block_1', 'norm_0', 'scale'), 'down_blocks.0.resnets.1.norm1.weight'),
    (('down_1_block_0', 'shortcut', 'kernel'), 'down_blocks.1.resnets.0.conv_shortcut.weight'),
    (('down_1_attn_1', 'proj_out', 'kernel'), 'down_blocks.1.attentions.1.to_out.0.weight'),
    (('down_2_downsample', 'conv', 'bias'), 'down_blocks.2.downsamplers.0.conv.bias'),
    (('mid_block_1', 'temb_proj', 'kernel'), 'mid_block.resnets.1.time_emb_proj.weight'),
    (('mid_attn', 'norm', 'bias'), 'mid_block.attentions.0.group_norm.bias'),
    (('up_3_block_2', 'conv_1', 'kernel'), 'up_blocks.0.resnets.2.conv2.weight'),
    (('up_1_attn_2', 'q', 'kernel'), 'up_blocks.2.attentions.2.to_q.weight'),
    (('up_1_upsample', 'conv', 'kernel'), 'up_blocks.2.upsamplers.0.conv.weight'),
    (('norm_out', 'scale'), 'conv_norm_out.weight'),
])


def test_diffusers_key_of_each_kind_of_parameter(path, key):
  assert cd.diffusers_key(path, num_levels=4) == key


def test_torch_layouts_become_flax_layouts():
  conv = np.arange(2 * 3 * 5 * 7, dtype=np.float32).reshape(7, 5, 3, 2)  # O, I, H, W.
  np.testing.assert_array_equal(cd.torch_to_flax(conv)[1, 0, 4, 6], conv[6, 4, 1, 0])
  linear = np.arange(6, dtype=np.float32).reshape(3, 2)  # (out, in).
  np.testing.assert_array_equal(cd.torch_to_flax(linear), linear.T)
  np.testing.assert_array_equal(cd.torch_to_flax(np.ones(4)), np.ones(4))


def test_state_dict_converts_exactly_and_legacy_attention_names_too():
  config = tiny_config()
  state_dict, expected = fake_state_dict(config)
  assert_trees_equal(cd.convert(TINY_DIFFUSERS_CONFIG, state_dict, config), expected)
  legacy = {k.replace('to_q', 'query').replace('to_k', 'key').replace('to_v', 'value')
             .replace('to_out.0', 'proj_attn'): v for k, v in state_dict.items()}
  assert 'down_blocks.1.attentions.0.proj_attn.weight' in legacy
  assert_trees_equal(cd.convert(TINY_DIFFUSERS_CONFIG, legacy, config), expected)


def test_missing_unused_and_misshapen_keys_are_refused():
  config = tiny_config()
  template = cd.param_template(config)
  state_dict, _ = fake_state_dict(config)
  missing = dict(state_dict)
  del missing['mid_block.attentions.0.to_k.bias']
  with pytest.raises(errors.ConversionError, match=r'1 missing key\(s\): mid_block.attentions.0.to_k.bias'):
    cd.convert_state_dict(missing, template, 2)
  extra = dict(state_dict, **{'down_blocks.0.resnets.1.conv1.weight': np.zeros((8, 8, 3, 3), np.float32)})
  with pytest.raises(errors.ConversionError, match=r'1 unused key\(s\): down_blocks.0.resnets.1.conv1.weight'):
    cd.convert_state_dict(extra, template, 2)
  wrong = dict(state_dict, **{'conv_out.weight': np.zeros((3, 16, 3, 3), np.float32)})
  with pytest.raises(errors.ConversionError, match=r'wrong shape.*conv_out.weight: \(3, 16, 3, 3\) -> \(3, 3, 16, 3\), '
                                               r'but conv_out/kernel needs \(3, 3, 8, 3\)'):
    cd.convert_state_dict(wrong, template, 2)


# ---------------------------------------------------------------------------
# config.json against our config.

def test_the_official_config_json_matches_the_cifar10_ddpm_config():
  cd.check_diffusers_config(OFFICIAL_DIFFUSERS_CONFIG, cifar10_ddpm.get_config())
  cd.check_diffusers_config(TINY_DIFFUSERS_CONFIG, tiny_config())
  # Older files omit fields whose defaults are the official values.
  trimmed = {k: v for k, v in OFFICIAL_DIFFUSERS_CONFIG.items()
             if k not in ('add_attention', 'class_embed_type', 'resnet_time_scale_shift', 'num_class_embeds')}
  cd.check_diffusers_config(trimmed, cifar10_ddpm.get_config())


@pytest.mark.parametrize('field,value,message', [
    ('block_out_channels', [128, 256, 256, 512], r'block_out_channels is \[128, 256, 256, 512\] but config.model.ch'),
    ('layers_per_block', 3, 'layers_per_block is 3 but config.model.num_res_blocks needs 2'),
    ('up_block_types', ['UpBlock2D', 'AttnUpBlock2D', 'UpBlock2D', 'UpBlock2D'], 'up_block_types is'),
    ('down_block_types', ['DownBlock2D'] * 4, 'down_block_types is'),
    ('norm_num_groups', 16, 'norm_num_groups is 16 but config.model.norm_groups needs 32'),
    ('norm_eps', 1e-5, 'norm_eps is 1e-05 but config.model.norm_eps needs 1e-06'),
    ('sample_size', 64, 'sample_size is 64 but config.data.image_size needs 32'),
    ('in_channels', 1, 'in_channels is 1 but config.data.num_channels needs 3'),
    ('attention_head_dim', 64, 'attention_head_dim is 64, which gives'),
    ('flip_sin_to_cos', True, 'flip_sin_to_cos is True'),
    ('freq_shift', 0, 'freq_shift is 0'),
    ('downsample_padding', 1, 'downsample_padding is 1'),
    ('resnet_time_scale_shift', 'scale_shift', 'resnet_time_scale_shift is'),
    ('_class_name', 'UNetModel', "_class_name is 'UNetModel'"),
])
def test_a_mismatched_config_json_is_refused_naming_the_field(field, value, message):
  with pytest.raises(errors.ConversionError, match=message):
    cd.check_diffusers_config(dict(OFFICIAL_DIFFUSERS_CONFIG, **{field: value}), cifar10_ddpm.get_config())


def test_only_the_ddpm_network_takes_converted_weights():
  config = cifar10_ddpm.get_config()
  config.model.name = 'unet_resnet'
  with pytest.raises(errors.ConversionError, match='for the ddpm network'):
    cd.check_diffusers_config(OFFICIAL_DIFFUSERS_CONFIG, config)


def test_a_model_dir_without_files_is_refused(tmp_path):
  with pytest.raises(errors.ConversionError, match='No config.json'):
    cd.load_model_dir(str(tmp_path))
  (tmp_path / 'config.json').write_text('{}')
  with pytest.raises(errors.ConversionError, match='No weights'):
    cd.load_model_dir(str(tmp_path))


# ---------------------------------------------------------------------------
# The command and the workdir it writes.

def test_command_writes_a_workdir_that_sampling_loads(tmp_path, capsys):
  safetensors_numpy = pytest.importorskip('safetensors.numpy')
  config = tiny_config()
  state_dict, expected = fake_state_dict(config, seed=1)
  model_dir, workdir = tmp_path / 'model', str(tmp_path / 'workdir')
  model_dir.mkdir()
  (model_dir / 'config.json').write_text(json.dumps(TINY_DIFFUSERS_CONFIG))
  safetensors_numpy.save_file(state_dict, str(model_dir / 'diffusion_pytorch_model.safetensors'))
  # What a conversion killed mid-save left: orbax's unfinished folder, no checkpoint. The same command again works.
  partial = os.path.join(workdir, 'checkpoints', '800000.orbax-checkpoint-tmp')
  os.makedirs(os.path.join(partial, 'default'))
  code, stdout, stderr = run_converter(capsys, f'--model_dir={model_dir}', f'--workdir={workdir}')
  assert code == 0, stderr[-4000:]
  assert 'as step 800000' in stdout and f'{os.path.join("configs", "cifar10_ddpm.py")} --workdir=' in stdout
  assert '--mode=sample' in stdout
  assert os.listdir(os.path.join(workdir, 'checkpoints')) == ['800000']
  saved = ocp.StandardCheckpointer().restore(os.path.join(workdir, 'checkpoints', '800000', 'default'))
  assert int(saved['step']) == 800000
  assert_trees_equal(saved['params'], expected)
  assert_trees_equal(saved['ema_params'], expected)
  stem = generate.sample(config, workdir)  # What `main.py --mode=sample` runs.
  images = np.load(stem + '.npz')['images']
  assert images.shape == (2, 32, 32, 3) and images.dtype == np.uint8
  assert os.path.basename(stem) == 'samples_00800000_2'

  with pytest.raises(errors.WorkdirError, match='already holds checkpoints'):
    cd.write_workdir(expected, config, workdir, 800000)


def test_the_command_refuses_in_one_line_before_making_the_workdir(tmp_path, capsys):
  model_dir, workdir = tmp_path / 'model', tmp_path / 'workdir'
  model_dir.mkdir()
  for args, message in [([f'--model_dir={model_dir}', f'--workdir={workdir}'], f'No config.json in {model_dir}'),
                        ([f'--model_dir={model_dir}'], '--workdir is required: '),
                        ([f'--workdir={workdir}'], '--model_dir is required: '),
                        ([f'--model_dir={model_dir}', f'--workdir={workdir}', 'more'], "unexpected arguments 'more'"),
                        ([f'--model_dir={model_dir}', f'--workdir={workdir}', '--config.model.nope=1'],
                         "--config.model.nope: config.model has no field 'nope'; valid: ")]:
    code, stdout, stderr = run_converter(capsys, *args)
    assert code == 1 and stdout == '' and 'Traceback' not in stderr, stderr
    assert stderr.startswith(f'error: {message}') and stderr.count('\n') == 1, stderr
    assert not workdir.exists()


def test_a_different_model_in_the_workdir_is_refused(tmp_path):
  config = tiny_config()
  _, params = fake_state_dict(config)
  other = tiny_config()
  other.model.ch, other.model.time_embed_dim = 16, 16
  configuration.save_config(other, str(tmp_path))
  with pytest.raises(errors.WorkdirError, match='different model'):
    cd.write_workdir(params, config, str(tmp_path), 1)


# ---------------------------------------------------------------------------
# Parity with the reference implementation (torch and diffusers: test dependencies).

@pytest.fixture(scope='module')
def official_diffusers_model():
  """A randomly initialised diffusers UNet2DModel with the official CIFAR-10 configuration."""
  torch = pytest.importorskip('torch')
  diffusers = pytest.importorskip('diffusers')
  torch.manual_seed(0)
  fields = {k: v for k, v in OFFICIAL_DIFFUSERS_CONFIG.items() if not k.startswith('_')}
  model = diffusers.UNet2DModel(**fields, dropout=0.1).eval()
  with torch.no_grad():  # Norm scales and biases away from 1 and 0, so the mapping of each one counts.
    for name, p in model.named_parameters():
      if 'norm' in name:
        p.add_(0.2 * torch.randn_like(p))
  return model


def test_parity_with_diffusers_on_the_official_configuration(official_diffusers_model, tmp_path):
  torch = pytest.importorskip('torch')
  model = official_diffusers_model
  assert sum(p.numel() for p in model.parameters()) == 35_746_307
  model.save_pretrained(str(tmp_path))  # config.json + diffusion_pytorch_model.safetensors.
  diffusers_config, state_dict = cd.load_model_dir(str(tmp_path))
  config = cifar10_ddpm.get_config()
  params = cd.convert(diffusers_config, state_dict, config)

  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 32, 32, 3)).astype(np.float32)
  t = np.array([7, 913])
  with torch.no_grad():
    reference = model(torch.from_numpy(x.transpose(0, 3, 1, 2)), torch.from_numpy(t)).sample.numpy()
  ours = jax.jit(lambda p: nets.get_model(config).apply({'params': p}, x, t, train=False))(params)
  ours = np.asarray(ours).transpose(0, 3, 1, 2)
  assert np.abs(reference).max() > 0.1
  assert np.abs(ours - reference).max() <= 1e-4, np.abs(ours - reference).max()


def test_bin_weights_load_like_safetensors(tmp_path):
  torch = pytest.importorskip('torch')
  config = tiny_config()
  state_dict, expected = fake_state_dict(config, seed=2)
  (tmp_path / 'config.json').write_text(json.dumps(TINY_DIFFUSERS_CONFIG))
  torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state_dict.items()},
             str(tmp_path / 'diffusion_pytorch_model.bin'))
  diffusers_config, loaded = cd.load_model_dir(str(tmp_path))
  assert_trees_equal(cd.convert(diffusers_config, loaded, config), expected)


@pytest.mark.parametrize('content, message', [('{"block_out_channels": [8', 'is not JSON'),
                                              ('', 'is not JSON'), ('[1, 2]', 'holds a JSON list')])
def test_a_malformed_config_json_is_refused_naming_it(tmp_path, content, message):
  (tmp_path / 'config.json').write_text(content)
  with pytest.raises(errors.ConversionError) as error:
    cd.load_model_dir(str(tmp_path))
  assert str(error.value).startswith(f'{tmp_path / "config.json"} {message}') and 'download it again' in str(error.value)


def test_the_command_refuses_a_truncated_safetensors_file_in_one_line(tmp_path):
  safetensors_numpy = pytest.importorskip('safetensors.numpy')
  config = tiny_config()
  state_dict, _ = fake_state_dict(config)
  model_dir = tmp_path / 'model'
  model_dir.mkdir()
  (model_dir / 'config.json').write_text(json.dumps(TINY_DIFFUSERS_CONFIG))
  weights = model_dir / 'diffusion_pytorch_model.safetensors'
  safetensors_numpy.save_file(state_dict, str(weights))
  weights.write_bytes(weights.read_bytes()[:weights.stat().st_size // 2])  # An interrupted download.
  with pytest.raises(errors.ConversionError, match='is not a readable safetensors file'):
    cd.load_model_dir(str(model_dir))
  # The command's one line, exit 1 and no workdir made: a row of tests/test_bad_inputs.py's table.


# ---------------------------------------------------------------------------
# The official 256x256 models (google/ddpm-church-256 and its siblings).

def config_256(name):
  return importlib.import_module(f'configs.{name}').get_config()


@pytest.mark.parametrize('name', CONFIGS_256)
def test_the_256_configs_match_the_church_256_config_json(name):
  config = config_256(name)
  cd.check_diffusers_config(CHURCH_256_DIFFUSERS_CONFIG, config)
  written = cd.diffusers_config(config)  # What export_diffusers writes: the same fields.
  assert {k: written[k] for k in CHURCH_256_DIFFUSERS_CONFIG if k in written} == {
      k: v for k, v in CHURCH_256_DIFFUSERS_CONFIG.items() if k in written}
  assert written['attention_head_dim'] is None and written['dropout'] == 0.0


def test_the_exported_config_json_of_cifar10_ddpm_is_the_official_one():
  written = cd.diffusers_config(cifar10_ddpm.get_config())
  assert {k: written[k] for k in OFFICIAL_DIFFUSERS_CONFIG if k in written} == {
      k: v for k, v in OFFICIAL_DIFFUSERS_CONFIG.items() if k in written and not k.startswith('_diffusers')}


def test_the_256_network_has_the_official_parameter_count_and_diffusers_layout():
  """Counted from shapes on both sides (jax.eval_shape; torch's meta device): nothing is initialised."""
  torch = pytest.importorskip('torch')
  diffusers = pytest.importorskip('diffusers')
  config = lsun_church_256.get_config()
  template = traverse_util.flatten_dict(cd.param_template(config))
  assert sum(int(np.prod(leaf.shape)) for leaf in template.values()) == OFFICIAL_256_PARAMS
  with torch.device('meta'):
    model = diffusers.UNet2DModel(**{k: v for k, v in CHURCH_256_DIFFUSERS_CONFIG.items() if not k.startswith('_')})
  theirs = {k: tuple(v.shape) for k, v in model.state_dict().items()}
  assert sum(int(np.prod(shape)) for shape in theirs.values()) == OFFICIAL_256_PARAMS
  torch_shape = {4: lambda s: (s[3], s[2], s[0], s[1]), 2: lambda s: s[::-1], 1: lambda s: s}
  mapped = {cd.diffusers_key(path, 6): torch_shape[len(leaf.shape)](tuple(leaf.shape)) for path, leaf in template.items()}
  assert mapped == theirs


def test_parity_and_round_trip_with_diffusers_on_the_256_layout(tmp_path):
  """The 256 layout (six levels, attention at the fifth) at a quarter of the width on 32x32 inputs, for
  speed: convolutions do not depend on the image size, and attention stays at the fifth level (side 2)."""
  torch = pytest.importorskip('torch')
  diffusers = pytest.importorskip('diffusers')
  config = lsun_church_256.get_config()
  config.model.ch, config.model.time_embed_dim, config.model.time_mlp_dim, config.model.norm_groups = 32, 32, 128, 8
  config.data.image_size = 32
  config.model.attn_resolutions = (nets.level_sides(32, 6)[4],)
  fields = dict(CHURCH_256_DIFFUSERS_CONFIG, block_out_channels=[32, 32, 64, 64, 128, 128], sample_size=32,
                norm_num_groups=8)
  torch.manual_seed(0)
  model = diffusers.UNet2DModel(**{k: v for k, v in fields.items() if not k.startswith('_')}).eval()
  with torch.no_grad():  # Norm scales and biases away from 1 and 0, so the mapping of each one counts.
    for name, p in model.named_parameters():
      if 'norm' in name:
        p.add_(0.2 * torch.randn_like(p))
  model.save_pretrained(str(tmp_path))
  diffusers_config, state_dict = cd.load_model_dir(str(tmp_path))
  params = cd.convert(diffusers_config, state_dict, config)
  back = cd.to_state_dict(params, len(config.model.ch_mult))  # export_diffusers's direction.
  assert back.keys() == state_dict.keys()
  for key, value in state_dict.items():
    np.testing.assert_array_equal(back[key], value, err_msg=key)

  x = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype(np.float32)
  t = np.array([3, 988])
  with torch.no_grad():
    reference = model(torch.from_numpy(x.transpose(0, 3, 1, 2)), torch.from_numpy(t)).sample.numpy()
  ours = jax.jit(lambda p: nets.get_model(config).apply({'params': p}, x, t, train=False))(params)
  ours = np.asarray(ours).transpose(0, 3, 1, 2)
  assert np.abs(reference).max() > 0.1
  assert np.abs(ours - reference).max() <= 1e-4, np.abs(ours - reference).max()
