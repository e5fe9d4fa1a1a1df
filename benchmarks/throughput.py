"""Train and sampling images/s, peak memory, FLOPs per image and MFU of the networks; JSON lines out.

  python benchmarks/throughput.py                               # the four networks + PyTorch references
  python benchmarks/throughput.py --models=unet_simple --batch=16 --steps=2 --sample_steps=2
  python benchmarks/throughput.py --models=ddpm --batch=128 --dtype=float32,bfloat16 --skip_torch  # a GPU

Networks (--models): unet_simple (configs/mnist_simple.py, the report's Unet-Simple on 28x28x1),
unet_conv (configs/cifar10_conv.py), unet_resnet (configs/cifar10_resnet.py) and ddpm
(configs/cifar10_ddpm.py, the official DDPM UNet), each at its config's batch unless --batch is
given. For each network and --dtype:
  - train: ddpm_jax.train_step.make_train_step (noising, loss, gradients, clipping, Adam, EMA),
    compiled with the state donated as in training, then --steps steps run back to back;
  - forward: the network in eval mode, --steps calls back to back;
  - sampling: the compiled loops of ddpm_jax/samplers/, ancestral (T = 1000 steps) and DDIM
    (--ddim_steps). --sample_steps=N times an N-step run of the same compiled loop instead
    (ancestral: an N-step schedule; DDIM: N of the steps) and extrapolates images/s from the
    time per step to the full chain; the result says so (sample_*_extrapolated). By default
    (-1) full chains run on accelerators and 2 steps on the CPU;
  - FLOPs per image: the model's (forward_flops_per_image, train_flops_per_image), from XLA's
    cost analysis of the forward and train step lowered with every upsample conv on the
    upsampled map, as the networks define it (upsample_convs_as_defined); and what the compiled
    programs execute (executed_*: the upsample convs as four phase convolutions of the small
    map, 2.25x fewer FLOPs; per device, times the devices). MFU = the model's train FLOP/s / the
    device's peak (PEAK_FLOPS), null on the CPU;
  - peak memory: the process's peak host RSS (getrusage) on the CPU, the device allocator's peak
    (memory_stats()['peak_bytes_in_use']) on accelerators. With --isolate (the default) every
    measurement runs in a fresh process, so each peak is its own.
bfloat16 is mixed precision: float32 master params and optimizer; every Flax module's inputs and
the params are cast to bfloat16 for the forward (ddpm_jax/nets/precision.py, as config.training.compute_dtype; the networks have no dtype
option), so gradients reach the float32 params through the cast; loss in float32.

PyTorch references (CPU; skipped by --skip_torch, and torch is imported only then): for ddpm,
diffusers' UNet2DModel with the official DDPM CIFAR-10 config; for the others, the same network
written in PyTorch (torch_reference.torch_twin, parameter count and outputs asserted equal to
ours before timing), measured the same way with each of --torch_threads; a 'ratio' line per pair gives ours / theirs in images/s. Measures
only; asserts nothing on time. XLA_FLAGS set outside are kept (e.g. to try CPU flags); otherwise
the CPU settings are main.py's (ddpm_jax/xla_flags.py, --noeigen_cpu_convolutions for XLA's default).

Runs where ml_collections, TensorFlow, CLU and torch are absent (a stand-in ConfigDict is used to
read configs/; if ddpm_jax.train_step cannot be imported or built the train step is rebuilt from
the core modules, and the result's train_step field says which). On the CPU the XLA host devices default
to one (--cpu_devices), as in training.
"""

import importlib
import json
import os
import resource
import subprocess
import sys
import time
import types

from absl import app, flags

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from ddpm_jax import xla_flags  # pylint: disable=wrong-import-position  # Imports no JAX.

# Network -> the config it is measured with.
MODELS = {'unet_simple': 'mnist_simple', 'unet_conv': 'cifar10_conv', 'unet_resnet': 'cifar10_resnet',
          'ddpm': 'cifar10_ddpm', 'ddpm_256': 'lsun_church_256'}
# Measured unless --models says otherwise: ddpm_256 (the 113.7M-parameter LSUN/CelebA-HQ UNet at
# 256x256) only on request, e.g. --models=ddpm_256 --batch=1 --steps=1 --skip_sampling --skip_torch.
DEFAULT_MODELS = ['unet_simple', 'unet_conv', 'unet_resnet', 'ddpm']
REMAT = ('off', 'on')
DTYPES = ('float32', 'bfloat16')

# Dense (no sparsity) peak FLOP/s by device kind (a substring of jax's device_kind) and dtype.
# Sources: NVIDIA's H100/H200 datasheets (SXM: bf16 1,979 and tf32 989 TFLOP/s *with* 2:4
# sparsity, so 989.4 and 494.7 dense; fp32 66.9 on the CUDA cores; the H200 SXM has the H100
# SXM's rates); H100 PCIe: bf16 756, tf32 378, fp32 51.2; A100 datasheet: bf16 312, tf32 156,
# fp32 19.5. Boost clocks; sustained rates are lower (benchmarks/README.md). On GPUs, JAX's
# default float32 precision lets convolutions and matmuls run as tf32 on the tensor cores, so
# float32 results also report mfu_tf32 against the tf32 peak. First match wins (PCIe before the
# plain H100).
PEAK_FLOPS = (
    ('H200', {'bfloat16': 989.4e12, 'tf32': 494.7e12, 'float32': 66.9e12}),
    ('H100 PCIe', {'bfloat16': 756.0e12, 'tf32': 378.0e12, 'float32': 51.2e12}),
    ('H100', {'bfloat16': 989.4e12, 'tf32': 494.7e12, 'float32': 66.9e12}),
    ('A100', {'bfloat16': 312.0e12, 'tf32': 156.0e12, 'float32': 19.5e12}),
)

FLAGS = flags.FLAGS
flags.DEFINE_list('models', DEFAULT_MODELS, f'Networks to measure: {", ".join(MODELS)}.')
flags.DEFINE_integer('batch', 0, 'Global batch size; 0 = each config\'s training batch size.')
flags.DEFINE_integer('steps', 3, 'Timed train steps (and forward calls), run back to back after a warm-up step.')
flags.DEFINE_integer('sample_steps', -1, 'Reverse steps timed per sampler: -1 = the full chains on an '
                     'accelerator and 2 on the CPU; 0 = the full chains; N = N steps, images/s extrapolated.')
flags.DEFINE_integer('sample_batch', 0, 'Images per sampling batch; 0 = --batch.')
flags.DEFINE_integer('ddim_steps', 50, 'Steps of the full DDIM chain.')
flags.DEFINE_list('dtype', ['float32'], f'Compute dtypes, any of {", ".join(DTYPES)} (bfloat16: mixed precision).')
flags.DEFINE_list('remat', ['off'], 'Rematerialisation settings to measure (config.model.remat), any of '
                  f'{", ".join(REMAT)}; JAX networks only.')
flags.DEFINE_bool('skip_torch', False, 'Skip the PyTorch references (torch is then never imported).')
flags.DEFINE_bool('skip_sampling', False, 'Skip the samplers.')
flags.DEFINE_list('torch_threads', ['0'], 'PyTorch intra-op thread counts to measure the references with '
                  '(0 = torch\'s default, one per core).')
flags.DEFINE_integer('cpu_devices', 1, 'XLA host devices to split the CPU into (0 = one per core), as training\'s '
                     'config.cpu_devices.')
flags.DEFINE_bool('eigen_cpu_convolutions', True, 'Eigen instead of YNNPACK convolutions on the CPU, as in training '
                  '(config.eigen_cpu_convolutions; ddpm_jax/xla_flags.py).')
flags.DEFINE_bool('isolate', True, 'Run every measurement in a fresh process (its own peak memory).')
flags.DEFINE_string('worker', '', 'Internal: run one measurement (FRAMEWORK:MODEL:DTYPE) and print it.')


# ---------------------------------------------------------------------------
# Configs, params, precision.

class _StandInConfigDict(dict):
  """What configs/ and the core use of ml_collections.ConfigDict: a dict with attribute access."""

  def __getattr__(self, name):
    try:
      return self[name]
    except KeyError:
      raise AttributeError(name) from None

  def __setattr__(self, name, value):
    self[name] = value

  def __delattr__(self, name):
    del self[name]

  def lock(self):
    return self

  def unlock(self):
    return self

  def unlocked(self):
    import contextlib  # pylint: disable=g-import-not-at-top
    return contextlib.nullcontext(self)

  def to_dict(self):
    return {k: v.to_dict() if isinstance(v, _StandInConfigDict) else v for k, v in self.items()}

  def copy_and_resolve_references(self):
    import copy  # pylint: disable=g-import-not-at-top
    return copy.deepcopy(self)


def config_dict_stand_in() -> types.ModuleType:
  """A module named ml_collections whose ConfigDict is a dict with attribute access.

  configs/*.py only build ConfigDicts and set attributes, so this reads them where
  ml_collections is not installed (the GPU machine).
  """
  module = types.ModuleType('ml_collections')
  module.ConfigDict = _StandInConfigDict
  return module


def load_config(name: str):
  """configs/NAME.py's get_config(), with the stand-in ConfigDict if ml_collections is absent."""
  try:
    importlib.import_module('ml_collections')
  except ImportError:
    sys.modules['ml_collections'] = config_dict_stand_in()
  return importlib.import_module(f'configs.{name}').get_config()


def random_params(shapes, seed: int = 0):
  """Params of the given shapes drawn with numpy: 0.05 * N(0, 1), ones for norm scales (no init compiled)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map_with_path(
      lambda path, s: (np.ones(s.shape, s.dtype) if 'scale' in jax.tree_util.keystr(path) or
                       jax.tree_util.keystr(path).endswith("['var']")
                       else (0.05 * rng.standard_normal(s.shape)).astype(s.dtype)), shapes)


# ---------------------------------------------------------------------------
# The train step.

def core_train_step(model, schedule, tx, config, train_key):
  """ddpm_jax.train_step.make_train_step rebuilt from the core modules (uniform timesteps only),
  for machines where ddpm_jax.train_step does not import."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from ddpm_jax import diffusion  # pylint: disable=g-import-not-at-top
  from ddpm_jax.train_state import apply_gradients  # pylint: disable=g-import-not-at-top

  if config.training.timestep_sampler != 'uniform':
    raise ValueError('The benchmark\'s own train step draws timesteps uniformly only.')
  spec = diffusion.loss_spec_from_config(config.diffusion)

  def train_step(state, images):
    flip_key, t_key, noise_key, dropout_key = jax.random.split(jax.random.fold_in(train_key, state.step), 4)
    x0 = images.astype(jnp.float32) / 127.5 - 1.0  # data.preprocess
    if config.data.random_flip:
      flip = jax.random.bernoulli(flip_key, 0.5, (x0.shape[0], 1, 1, 1))
      x0 = jnp.where(flip, x0[:, :, ::-1, :], x0)
    t = diffusion.sample_timesteps(t_key, x0.shape[0], schedule.num_timesteps)
    noise = jax.random.normal(noise_key, x0.shape, x0.dtype)

    def loss_fn(params):
      new_stats = {}

      def model_fn(x, t):
        out, mutated = model.apply({'params': params, 'batch_stats': state.batch_stats}, x, t, train=True,
                                   mutable=['batch_stats'], rngs={'dropout': dropout_key})
        new_stats.update(mutated)
        return out

      terms = diffusion.training_loss(spec, schedule, model_fn, x0, t, noise)
      return jnp.mean(terms.per_example) + terms.batch_term, (new_stats.get('batch_stats', state.batch_stats), terms)

    (loss, (batch_stats, terms)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    metrics = {'loss': loss, 'grad_norm': optax.global_norm(grads), **terms.metrics}
    return apply_gradients(state, grads, batch_stats, tx, config.training.ema_decay), metrics

  return train_step


def make_steps(model, schedule, tx, config) -> list:
  """[(train_step(state, uint8 images) -> (state, metrics), where it comes from)], best first:
  ddpm_jax.train_step's (with config.diffusion's process) when it imports, then the benchmark's
  rebuild from the core modules."""
  import jax  # pylint: disable=g-import-not-at-top
  key = jax.random.split(jax.random.key(config.seed, impl=config.rng_impl), 5)[1]  # train_state.root_keys()['train']
  core = (lambda: core_train_step(model, schedule, tx, config, key), 'benchmark core step')
  try:
    from ddpm_jax import processes, train_step  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    return [(core[0], f'{core[1]} (ddpm_jax.train_step: {e})')]
  return [(lambda: train_step.make_train_step(model, processes.from_config(config.diffusion), tx, config, key),
           'ddpm_jax.train_step.make_train_step'), core]


# ---------------------------------------------------------------------------
# Measurements.

def peak_for(device_kind: str) -> dict:
  return next((peaks for kind, peaks in PEAK_FLOPS if kind in device_kind), {})


def xla_flops(compiled, lowered, devices: int):
  """(FLOPs of the whole computation, source) from XLA's cost analysis; (None, ...) if unavailable.

  The compiled module is one device's program, so its count is multiplied by the devices.
  """
  for source, obj, scale in (('xla compiled cost_analysis', compiled, devices),
                             ('xla lowered cost_analysis', lowered, 1)):
    try:
      analysis = obj.cost_analysis()
    except Exception:  # pylint: disable=broad-except
      continue
    if isinstance(analysis, (list, tuple)):
      analysis = analysis[0] if analysis else None
    if analysis and analysis.get('flops', 0) > 0:
      return float(analysis['flops']) * scale, source
  return None, 'unavailable'


def upsample_convs_as_defined(next_fun, args, kwargs, context):
  """A Flax method interceptor: every upsample conv (layers.upsample_conv3x3) convolves the
  nearest-upsampled map, as the networks define it, instead of its four phase convolutions of the
  small map, which need 2.25x fewer FLOPs. The model FLOPs that MFU divides by are counted under
  it, so they are the model's, whatever formulation computes it."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  from ddpm_jax.nets import layers  # pylint: disable=g-import-not-at-top
  conv = context.module
  if not (context.method_name == '__call__' and isinstance(conv, nn.Conv) and
          conv.conv_general_dilated is layers.upsampled_conv_general_dilated):
    return next_fun(*args, **kwargs)
  x, = args
  y = layers.conv_of_upsampled(x, conv.get_variable('params', 'kernel').astype(x.dtype))
  return y + conv.get_variable('params', 'bias').astype(x.dtype) if conv.use_bias else y


def model_flops(fn, *args, executed=None):
  """(FLOPs of fn(*args) with the upsample convs as defined (upsample_convs_as_defined), source),
  from XLA's cost analysis of the lowered program (within 0.2% of the compiled one's count). If
  that count fails, `executed` (the compiled program's count) stands in and the source says so:
  a FLOP count must not cost the measurement."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  try:
    with nn.intercept_methods(upsample_convs_as_defined):  # A new function: jit's cached traces ignore interceptors.
      lowered = jax.jit(lambda *a: fn(*a)).lower(*args)
    flops, source = xla_flops(None, lowered, 1)
  except Exception as e:  # pylint: disable=broad-except
    flops, source = None, f'{type(e).__name__}: {e}'
  if flops is None:
    return executed, f'xla compiled cost_analysis, as executed (the model\'s count failed: {source})'
  return flops, f'{source}, upsample convs on the upsampled map'


def memory_fields(device) -> dict:
  stats = device.memory_stats() if device.platform != 'cpu' else None
  fields = {'peak_host_rss_mib': round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
  if stats and 'peak_bytes_in_use' in stats:
    fields['peak_device_mib'] = round(stats['peak_bytes_in_use'] / 2 ** 20, 1)
  return fields


def measure_jax(name: str, dtype_name: str, batch: int, steps: int, sample_steps: int, sample_batch: int,
                ddim_steps: int, skip_sampling: bool, remat: bool = False) -> dict:
  """Train, forward and sampling speed, FLOPs, MFU and peak memory of one network in one dtype,
  its blocks rematerialised in the backward pass when `remat`."""
  config = load_config(MODELS[name])  # First: without ml_collections, it puts the stand-in in place.
  config.model.remat = remat
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax.sharding import Mesh, NamedSharding, PartitionSpec  # pylint: disable=g-import-not-at-top
  from ddpm_jax import diffusion, nets  # pylint: disable=g-import-not-at-top
  from ddpm_jax.nets import precision  # pylint: disable=g-import-not-at-top
  from ddpm_jax.samplers import ancestral, ddim  # pylint: disable=g-import-not-at-top
  from ddpm_jax.train_state import create_train_state, make_optimizer  # pylint: disable=g-import-not-at-top

  batch = batch or config.training.batch_size
  sample_batch = sample_batch or batch
  mesh = Mesh(np.asarray(jax.devices()), ('data',))
  if batch % mesh.size or sample_batch % mesh.size:
    raise app.UsageError(f'--batch={batch} and --sample_batch={sample_batch} must divide over {mesh.size} devices.')
  replicated, batched = NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec('data'))
  device = jax.devices()[0]
  on_cpu = device.platform == 'cpu'
  load_before = os.getloadavg()[0]

  base = nets.get_model(config)
  model = precision.computing_in(base, dtype_name)
  shapes = jax.eval_shape(lambda key: nets.init_variables(base, config, key), jax.random.PRNGKey(0))
  variables = random_params(shapes)
  tx = make_optimizer(config.optim)
  state = jax.device_put(create_train_state(variables, tx), replicated)
  size, channels = config.data.image_size, config.data.num_channels
  rng = np.random.default_rng(0)
  images = jax.device_put(rng.integers(0, 256, (batch, size, size, channels), dtype=np.uint8), batched)
  x = jax.device_put(rng.standard_normal((batch, size, size, channels)).astype(np.float32), batched)
  t = jax.device_put(rng.integers(0, config.diffusion.num_timesteps, batch).astype(np.int32), batched)
  result = {'model': name, 'config': MODELS[name], 'framework': f'jax {jax.__version__}',
            'device': device.device_kind, 'platform': device.platform, 'devices': mesh.size, 'dtype': dtype_name,
            'params': int(sum(np.size(p) for p in jax.tree.leaves(variables['params']))),
            'image': f'{size}x{size}x{channels}', 'batch': batch, 'remat': remat}

  def compile_timed(fn, *args, **jit_kwargs):
    lowered = jax.jit(fn, **jit_kwargs).lower(*args)
    start = time.perf_counter()
    compiled = lowered.compile()
    return compiled, lowered, time.perf_counter() - start

  # Forward, eval mode.
  forward_fn = lambda p, s, x, t: model.apply({'params': p, 'batch_stats': s}, x, t, train=False)
  forward, lowered, compile_s = compile_timed(forward_fn, state.params, state.batch_stats, x, t)
  executed, _ = xla_flops(forward, lowered, mesh.size)
  flops, forward_flops_source = model_flops(forward_fn, state.params, state.batch_stats, x, t, executed=executed)
  jax.block_until_ready(forward(state.params, state.batch_stats, x, t))
  start = time.perf_counter()
  for _ in range(steps):
    out = forward(state.params, state.batch_stats, x, t)
  jax.block_until_ready(out)
  forward_s = (time.perf_counter() - start) / steps
  result.update(forward_img_per_s=round(batch / forward_s, 2), forward_s=round(forward_s, 4),
                forward_flops_per_image=flops and round(flops / batch), forward_flops_source=forward_flops_source,
                executed_forward_flops_per_image=executed and round(executed / batch),
                compile_forward_s=round(compile_s, 1))

  # The whole train step, state donated.
  schedule = diffusion.schedule_from_config(config.diffusion)
  failures = []
  for build, step_source in make_steps(model, schedule, tx, config):
    try:  # Built and traced here; a failure (say, a config field the stand-in lacks) tries the next.
      step_fn = build()
      step, lowered, compile_s = compile_timed(step_fn, state, images, out_shardings=replicated, donate_argnums=0)
      break
    except Exception as e:  # pylint: disable=broad-except
      failures.append(f'{step_source}: {type(e).__name__}: {e}')
  else:
    raise RuntimeError(f'No train step could be built: {failures}')
  if failures:
    step_source = f'{step_source} (after {"; ".join(failures)})'
  executed, _ = xla_flops(step, lowered, mesh.size)
  flops, train_flops_source = model_flops(step_fn, state, images, executed=executed)
  state, metrics = step(state, images)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = step(state, images)
  jax.block_until_ready((state, metrics))
  train_s = (time.perf_counter() - start) / steps
  peaks = {} if on_cpu else peak_for(device.device_kind)
  train_flops_per_s = flops / train_s if flops else None
  mfu = lambda kind: round(train_flops_per_s / (peaks[kind] * mesh.size), 4) if (
      train_flops_per_s and kind in peaks) else None
  result.update(train_img_per_s=round(batch / train_s, 2), train_step_s=round(train_s, 4),
                train_flops_per_image=flops and round(flops / batch), train_flops_source=train_flops_source,
                executed_train_flops_per_image=executed and round(executed / batch),
                train_tflop_per_s=train_flops_per_s and round(train_flops_per_s / 1e12, 3),
                mfu=mfu(dtype_name), peak_tflop_per_s=peaks.get(dtype_name, 0) / 1e12 or None,
                compile_train_step_s=round(compile_s, 1), train_step=step_source,
                loss_finite=bool(np.isfinite(float(metrics['loss']))))
  if dtype_name == 'float32' and not on_cpu:
    result.update(mfu_tf32=mfu('tf32'), matmul_precision=str(jax.config.jax_default_matmul_precision))

  # Samplers: the compiled loops of ddpm_jax/samplers/ancestral.py and ddim.py.
  if not skip_sampling:
    d, s = config.diffusion, config.sampling
    if sample_steps < 0:
      sample_steps = 2 if on_cpu else 0
    x_T = jax.device_put(rng.standard_normal((sample_batch, size, size, channels)).astype(np.float32), batched)
    for kind, full in (('ancestral', schedule.num_timesteps), ('ddim', ddim_steps)):
      num = min(sample_steps or full, full)
      if kind == 'ancestral':
        num = max(num, 2)  # A schedule has at least 2 steps.
      chain = schedule if kind == 'ddim' or num == full else diffusion.make_schedule(
          diffusion.BETA_SCHEDULES[d.schedule](num, d.beta_start, d.beta_end))

      def sample(params, batch_stats, x_T, key, kind=kind, chain=chain, num=num):
        model_fn = lambda x, t: model.apply({'params': params, 'batch_stats': batch_stats}, x, t, train=False)
        if kind == 'ancestral':
          return ancestral.ancestral_sample(chain, model_fn, x_T, key, d.model_var_type, d.clip_denoised,
                                            model_mean_type=d.model_mean_type)[0]
        return ddim.ddim_sample(chain, model_fn, x_T, key, num, s.ddim_eta, s.ddim_spacing, d.clip_denoised,
                                model_mean_type=d.model_mean_type, model_var_type=d.model_var_type)[0]

      args = (state.params, state.batch_stats, x_T, jax.random.PRNGKey(1))
      sampler, _, compile_s = compile_timed(sample, *args)
      start = time.perf_counter()  # Compiled ahead, so the first run is timed.
      jax.block_until_ready(sampler(*args))
      per_step = (time.perf_counter() - start) / num
      result.update({f'sample_{kind}_img_per_s': round(sample_batch / (per_step * full), 4),
                     f'sample_{kind}_steps': full, f'sample_{kind}_steps_timed': num,
                     f'sample_{kind}_extrapolated': num < full, f'sample_{kind}_step_s': round(per_step, 4),
                     f'compile_sample_{kind}_s': round(compile_s, 1)})
    result['sample_batch'] = sample_batch

  result.update(memory_fields(device))
  if on_cpu:
    result['load_avg_1m'] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
  return result


def measure_torch(name: str, batch: int, steps: int, sample_steps: int, sample_batch: int, ddim_steps: int,
                  threads: int, skip_sampling: bool) -> dict:
  """A PyTorch reference measured by torch_reference.measure: diffusers' UNet2DModel for ddpm, else the
  torch twin of our network (its parameter count and outputs checked against ours first)."""
  import torch_reference  # pylint: disable=g-import-not-at-top
  config = load_config(MODELS[name])
  batch = batch or config.training.batch_size
  check = None
  if name not in ('ddpm', 'ddpm_256'):
    import jax  # pylint: disable=g-import-not-at-top
    from ddpm_jax import nets  # pylint: disable=g-import-not-at-top
    model = nets.get_model(config)
    shapes = jax.eval_shape(lambda key: nets.init_variables(model, config, key), jax.random.PRNGKey(0))
    check = torch_reference.check_twin(config, model, random_params(shapes))
  load_before = os.getloadavg()[0]
  result = torch_reference.measure(name, config, batch, steps, 2 if sample_steps < 0 else sample_steps, ddim_steps,
                                   sample_batch, threads, skip_sampling)
  if check:
    result['matches_flax'] = check
  result['load_avg_1m'] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
  return result


def run_worker(spec: str) -> dict:
  framework, name, dtype_name = spec.split(':')[:3]
  if framework == 'torch':
    return measure_torch(name, FLAGS.batch, FLAGS.steps, FLAGS.sample_steps, FLAGS.sample_batch, FLAGS.ddim_steps,
                         int(spec.split(':')[3]), FLAGS.skip_sampling)
  return measure_jax(name, dtype_name, FLAGS.batch, FLAGS.steps, FLAGS.sample_steps, FLAGS.sample_batch,
                     FLAGS.ddim_steps, FLAGS.skip_sampling, remat=worker_remat(spec))


def worker_remat(spec: str) -> bool:
  """Whether a measurement spec (jax:MODEL:DTYPE:REMAT) asks for remat."""
  parts = spec.split(':')
  return parts[0] == 'jax' and len(parts) > 3 and parts[3] == 'on'


def run_isolated(spec: str) -> dict:
  """run_worker(spec) in a fresh python process with the same flags; its JSON line, or an error."""
  argv = [a for a in sys.argv[1:] if not a.startswith('--worker')]
  proc = subprocess.run([sys.executable, os.path.abspath(__file__), *argv, f'--worker={spec}'],
                        stdout=subprocess.PIPE, text=True, check=False)
  lines = [line for line in proc.stdout.splitlines() if line.startswith('{')]
  if proc.returncode or not lines:
    framework, name, dtype_name = spec.split(':')[:3]
    return {'model': name, 'framework': framework, 'dtype': dtype_name, 'remat': worker_remat(spec),
            'error': f'the measurement process exited with {proc.returncode} (its stderr is above)'}
  return json.loads(lines[-1])


def ratio_line(ours: dict, theirs: dict) -> dict:
  line = {'ratio': f'ddpm_jax {ours["model"]} / {theirs["network"]} (images/s)', 'batch': ours['batch'],
          'dtype': ours['dtype'], 'torch_threads': theirs.get('threads')}
  for key in ('train_img_per_s', 'forward_img_per_s', 'sample_ancestral_img_per_s', 'sample_ddim_img_per_s'):
    if ours.get(key) and theirs.get(key):
      line[key.replace('_img_per_s', '')] = round(ours[key] / theirs[key], 3)
  return line


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  unknown = ([m for m in FLAGS.models if m not in MODELS] + [d for d in FLAGS.dtype if d not in DTYPES]
             + [r for r in FLAGS.remat if r not in REMAT])
  if unknown:
    raise app.UsageError(f'Unknown --models/--dtype/--remat {unknown}; valid: {", ".join(MODELS)}; '
                         f'{", ".join(DTYPES)}; {", ".join(REMAT)}.')
  if 'ddpm_256' in FLAGS.models and not FLAGS.skip_torch:
    raise app.UsageError('--models=ddpm_256 has no PyTorch reference here: add --skip_torch.')
  # As main.py does (the barriers flag changes nothing where no network is rematerialised).
  xla_flags.configure_cpu(FLAGS.cpu_devices, FLAGS.eigen_cpu_convolutions, keep_remat_barriers='on' in FLAGS.remat)
  if FLAGS.worker:
    print(json.dumps(run_worker(FLAGS.worker)), flush=True)
    return
  run = run_isolated if FLAGS.isolate else run_worker
  results = []
  for name in FLAGS.models:
    for dtype_name in FLAGS.dtype:
      for remat in FLAGS.remat:
        results.append(run(f'jax:{name}:{dtype_name}:{remat}'))
        print(json.dumps(results[-1]), flush=True)
  if not FLAGS.skip_torch:
    for name in FLAGS.models:
      for threads in FLAGS.torch_threads:
        theirs = run(f'torch:{name}:float32:{int(threads)}')
        print(json.dumps(theirs), flush=True)
        ours_lines = [r for r in results if r['model'] == name and r['framework'].startswith('jax')]
        results.append(theirs)
        for ours in ours_lines:
          if 'error' not in ours and 'error' not in theirs:
            print(json.dumps(ratio_line(ours, theirs)), flush=True)
  keys = ('model', 'framework', 'threads', 'dtype', 'remat', 'batch', 'train_img_per_s', 'sample_ancestral_img_per_s',
          'sample_ddim_img_per_s', 'train_flops_per_image', 'mfu', 'mfu_tf32', 'peak_device_mib', 'peak_host_rss_mib',
          'error')
  print(json.dumps({'summary': [{k: r[k] for k in keys if k in r} for r in results]}), flush=True)
  failed = any('error' in r for r in results)
  if failed:
    sys.exit(1)


if __name__ == '__main__':
  app.run(main)
