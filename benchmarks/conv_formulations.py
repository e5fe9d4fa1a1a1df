"""Where Unet-Simple's train step spends its time on the CPU, and formulations that might close the gap
to PyTorch (GitHub issue 7, item 3); JSON lines out.

  python benchmarks/conv_formulations.py                          # all parts (~25 min on 2 busy cores)
  python benchmarks/conv_formulations.py --parts=conv             # one convolution, each formulation and flag set
  python benchmarks/conv_formulations.py --parts=step --variants=baseline,ynn_conv_off --rounds=2
  python benchmarks/conv_formulations.py --parts=profile --profile_flag_sets=default,ynn_conv_off

Parts (every measurement in its own process, since XLA flags and the host device count are read once):
  profile: train.py's train step of Unet-Simple (configs/mnist_simple.py, --batch) on one XLA device:
    the forward (train mode, loss), forward + backward and the whole step timed, then steps traced
    with jax.profiler and every executed op classified from the compiled HLO: 'conv fwd / input grad'
    (3x3 and 1x1 windows), 'conv weight grad' (a convolution whose window is the feature map: how XLA
    writes dW), dot, reduce (batch-norm statistics, loss, sums), other fusions (batch norm, swish, Adam,
    EMA) and transposes / copies; CPU milliseconds per step and share per class, and which ops run
    as YNNPACK fusions. Under each of --profile_flag_sets. Only thunks that the XLA:CPU runtime
    traces are counted: YNNPACK fusions and loop fusions are, Eigen's convolutions (used when
    YNNPACK's are off) are not, so compare op_cpu_ms_per_step with the step time. The same
    network's PyTorch step is profiled beside it (torch.profiler, self CPU time by aten op).
  conv: one 3x3 convolution at Unet-Simple's largest shape (--conv_shape: batch, side, in, out):
    forward, input gradient and weight gradient of each formulation, under each XLA flag set
    (FLAG_SETS), with torch's (2 threads and 1) for scale.
  step: the whole train step (train.make_train_step, Unet-Simple) for each of VARIANTS: a formulation
    swapped in for flax's convolution, an XLA flag set, 1, 2 or 8 host devices (data parallel over
    the 2 cores); and PyTorch's eager step with 2 and 1 threads.
Formulations of a convolution (the same maths; parameters and their layout unchanged):
  xla        lax.conv_general_dilated with XLA's own gradients (the baseline; what nn.Conv does).
  nchw       NCHW / OIHW dimension numbers (transposes around the convolution).
  dw_im2col  custom_vjp: XLA's input gradient; the weight gradient as one matmul of the im2col
             patches (B*H*W, kh*kw*C) with the output gradient.
  dw_taps    custom_vjp: the weight gradient as kh*kw matmuls, one per kernel tap.
  im2col     the convolution itself as patches @ kernel (autodiff: matmul weight gradient, col2im input
             gradient).
Times are the minimum and median of --iters runs after a warm-up, and cpu_ms the process's CPU time
(all threads) per run, which other jobs on the cores move less than wall time; the machine is
shared, so each line carries the 1-minute load average, and --rounds repeats the step part
interleaved. Measures only; asserts nothing on time.
"""

import collections
import functools
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import types
from unittest import mock

from absl import app, flags

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

# XLA flag sets (XLA_FLAGS), each tried in its own process.
FLAG_SETS = {
    'default': '',
    # YNNPACK (XLA:CPU's default library for convolutions, dots and reductions in jaxlib 0.10)
    # without its convolutions: they go back to XLA's Eigen kernels; dots and reductions stay.
    'ynn_conv_off': '--xla_cpu_experimental_ynn_fusion_type=-individual_convolution',
    'ynn_off': '--xla_cpu_experimental_ynn_fusion_type=',  # No YNNPACK at all.
    'onednn': '--xla_cpu_use_onednn=true',
    'no_thunks': '--xla_cpu_use_thunk_runtime=false',  # jaxlib 0.10.2: 'no longer supported' (ignored).
}
FORMULATIONS = ('xla', 'nchw', 'dw_im2col', 'dw_taps', 'im2col')
# Train-step variants: name -> (formulation, flag set, host devices).
VARIANTS = {
    'baseline': ('xla', 'default', 1),
    'devices_2': ('xla', 'default', 2),
    'devices_8': ('xla', 'default', 8),
    'no_thunks': ('xla', 'no_thunks', 1),
    'onednn': ('xla', 'onednn', 1),
    'nchw': ('nchw', 'default', 1),
    'dw_im2col': ('dw_im2col', 'default', 1),
    'dw_taps': ('dw_taps', 'default', 1),
    'im2col': ('im2col', 'default', 1),
    'dw_im2col_devices_2': ('dw_im2col', 'default', 2),
    'ynn_conv_off': ('xla', 'ynn_conv_off', 1),
    'ynn_off': ('xla', 'ynn_off', 1),
    'ynn_off_nchw': ('nchw', 'ynn_off', 1),
    'ynn_off_devices_2': ('xla', 'ynn_off', 2),
    'ynn_off_devices_8': ('xla', 'ynn_off', 8),
}

FLAGS = flags.FLAGS
flags.DEFINE_list('parts', ['profile', 'conv', 'step'], 'Parts to run: profile, conv, step.')
flags.DEFINE_integer('batch', 64, 'Unet-Simple batch (global) for the profile and step parts.')
flags.DEFINE_integer('iters', 3, 'Timed runs per measurement (min and median reported).')
flags.DEFINE_list('conv_shape', ['64', '28', '64', '64'], 'batch, side, in and out channels of the conv part.')
flags.DEFINE_list('flag_sets', list(FLAG_SETS), 'XLA flag sets for the conv part.')
flags.DEFINE_list('profile_flag_sets', ['default'], 'XLA flag sets to profile the train step under.')
flags.DEFINE_list('variants', list(VARIANTS), 'Train-step variants for the step part.')
flags.DEFINE_list('torch_threads', ['2', '1'], 'PyTorch thread counts for the conv and step parts ([] = none).')
flags.DEFINE_integer('rounds', 1, 'Step part: run the variants (and torch) this many times, interleaved.')
flags.DEFINE_string('worker', '', 'Internal: one measurement (PART:ARG) in this process.')


# ---------------------------------------------------------------------------
# Convolution formulations: drop-in replacements for lax.conv_general_dilated (NHWC / HWIO, 2-D).

def _explicit_padding(lhs_shape, rhs_shape, strides, padding):
  from jax import lax  # pylint: disable=g-import-not-at-top
  if isinstance(padding, str):
    return tuple(lax.padtype_to_pads(lhs_shape[1:3], rhs_shape[:2], strides, padding))
  return tuple(tuple(p) for p in padding)


def _patches(x, kernel_hw, strides, pads, out_hw):
  """The kh*kw shifted, strided views of padded x, each (B, Ho, Wo, C), in (i, j) order."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jax import lax  # pylint: disable=g-import-not-at-top
  xp = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
  (sh, sw), (ho, wo) = strides, out_hw
  return [lax.slice(xp, (0, i, j, 0), (x.shape[0], i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, x.shape[3]),
                    (1, sh, sw, 1)) for i in range(kernel_hw[0]) for j in range(kernel_hw[1])]


def dw_im2col(x, g, kernel_shape, strides, pads):
  """dL/dW (kh, kw, C, O) as patches (B*Ho*Wo, kh*kw*C)^T @ g (B*Ho*Wo, O)."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  kh, kw, c, o = kernel_shape
  cols = jnp.concatenate(_patches(x, (kh, kw), strides, pads, g.shape[1:3]), axis=-1).reshape(-1, kh * kw * c)
  return jnp.dot(cols.T, g.reshape(-1, o)).reshape(kh, kw, c, o)


def dw_taps(x, g, kernel_shape, strides, pads):
  """dL/dW as one (C, O) matmul per kernel tap."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  kh, kw, c, o = kernel_shape
  taps = [jnp.tensordot(p, g, axes=([0, 1, 2], [0, 1, 2])) for p in _patches(x, (kh, kw), strides, pads, g.shape[1:3])]
  return jnp.stack(taps).reshape(kh, kw, c, o)


NHWC = ('NHWC', 'HWIO', 'NHWC')


def custom_weight_grad_conv(weight_grad):
  """A conv_general_dilated whose weight gradient is weight_grad(x, g, kernel_shape, strides, pads)."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax import lax  # pylint: disable=g-import-not-at-top

  @functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
  def conv(x, w, strides, pads):
    return lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=NHWC)

  def forward(x, w, strides, pads):
    return conv(x, w, strides, pads), (x, w)

  def backward(strides, pads, residuals, g):
    x, w = residuals
    _, input_vjp = jax.vjp(lambda x: lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=NHWC), x)
    return input_vjp(g)[0], weight_grad(x, g, w.shape, strides, pads).astype(w.dtype)

  conv.defvjp(forward, backward)
  return conv


def make_conv(formulation: str):
  """conv_general_dilated(lhs, rhs, window_strides, padding, ...) of a formulation (see the docstring)."""
  from jax import lax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  if formulation == 'xla':
    return lax.conv_general_dilated
  custom = {'dw_im2col': custom_weight_grad_conv(dw_im2col), 'dw_taps': custom_weight_grad_conv(dw_taps)}

  def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                           dimension_numbers=None, feature_group_count=1, precision=None,
                           preferred_element_type=None):
    plain = (all(d == 1 for d in (lhs_dilation or (1,))) and all(d == 1 for d in (rhs_dilation or (1,))) and
             feature_group_count == 1 and lhs.ndim == 4 and
             lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) ==
             lax.conv_dimension_numbers(lhs.shape, rhs.shape, NHWC))
    if not plain:
      raise ValueError(f'{formulation}: only 2-D NHWC/HWIO convolutions without dilation or groups.')
    del precision, preferred_element_type
    strides = tuple(window_strides)
    pads = _explicit_padding(lhs.shape, rhs.shape, strides, padding)
    if formulation == 'nchw':
      out = lax.conv_general_dilated(lhs.transpose(0, 3, 1, 2), rhs.transpose(3, 2, 0, 1), strides, pads,
                                     dimension_numbers=('NCHW', 'OIHW', 'NCHW'))
      return out.transpose(0, 2, 3, 1)
    if formulation == 'im2col':
      kh, kw, c, o = rhs.shape
      out_hw = [(lhs.shape[1 + a] + sum(pads[a]) - rhs.shape[a]) // strides[a] + 1 for a in range(2)]
      cols = jnp.concatenate(_patches(lhs, (kh, kw), strides, pads, out_hw), axis=-1)
      return jnp.dot(cols, rhs.reshape(kh * kw * c, o))
    return custom[formulation](lhs, rhs, strides, pads)

  return conv_general_dilated


def flax_conv_patch(formulation: str):
  """A context manager under which flax's nn.Conv computes with the formulation (trace inside it)."""
  import flax.linen.linear as linear  # pylint: disable=g-import-not-at-top
  from jax import lax  # pylint: disable=g-import-not-at-top
  proxy = types.SimpleNamespace(**{k: getattr(lax, k) for k in dir(lax) if not k.startswith('__')})
  proxy.conv_general_dilated = make_conv(formulation)
  return mock.patch.object(linear, 'lax', proxy)


# ---------------------------------------------------------------------------
# Helpers.

def timed(fn, iters: int) -> dict:
  """{'min_ms', 'median_ms', 'cpu_ms'} of fn() (which blocks) over iters runs, after a warm-up run.

  cpu_ms: the process's CPU time (user + system, all threads) per run, which moves less than wall
  time when other jobs share the cores.
  """
  import resource  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  fn()
  times = []
  usage = resource.getrusage(resource.RUSAGE_SELF)
  cpu_before = usage.ru_utime + usage.ru_stime
  for _ in range(iters):
    start = time.perf_counter()
    fn()
    times.append(1e3 * (time.perf_counter() - start))
  usage = resource.getrusage(resource.RUSAGE_SELF)
  cpu = 1e3 * (usage.ru_utime + usage.ru_stime - cpu_before) / iters
  return {'min_ms': round(min(times), 1), 'median_ms': round(float(np.median(times)), 1), 'cpu_ms': round(cpu, 1)}


def load() -> float:
  return round(os.getloadavg()[0], 2)


def unet_simple_setup(batch: int):
  """(config, model, variables with numpy-drawn params, uint8 images) for Unet-Simple on MNIST."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from configs import mnist_simple  # pylint: disable=g-import-not-at-top
  from ddpm_jax import nets  # pylint: disable=g-import-not-at-top
  config = mnist_simple.get_config()
  model = nets.get_model(config)
  shapes = jax.eval_shape(lambda key: nets.init_variables(model, config, key), jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)
  # As throughput.random_params: 0.05 * N(0, 1), ones for scales and running variances.
  variables = jax.tree_util.tree_map_with_path(
      lambda path, s: (np.ones(s.shape, s.dtype) if re.search(r"'(scale|var)'", jax.tree_util.keystr(path))
                       else (0.05 * rng.standard_normal(s.shape)).astype(s.dtype)), shapes)
  images = rng.integers(0, 256, (batch, 28, 28, 1), dtype=np.uint8)
  return config, model, variables, images


def compiled_step(formulation: str, batch: int):
  """(train step compiled with the formulation, state, sharded images, HLO text, compile seconds)."""
  import jax  # pylint: disable=g-import-not-at-top
  from ddpm_jax import diffusion, train  # pylint: disable=g-import-not-at-top
  from ddpm_jax.train_state import create_train_state, make_optimizer  # pylint: disable=g-import-not-at-top
  config, model, variables, images = unet_simple_setup(batch)
  mesh = train.make_mesh()
  tx = make_optimizer(config.optim)
  state = jax.device_put(create_train_state(variables, tx), train.replicated(mesh))
  images = train.shard_batch(images, mesh)
  step_fn = train.make_train_step(model, diffusion.schedule_from_config(config.diffusion), tx, config,
                                  train.root_keys(config)['train'])
  with flax_conv_patch(formulation):
    lowered = jax.jit(step_fn, out_shardings=train.replicated(mesh)).lower(state, images)
  start = time.perf_counter()
  step = lowered.compile()
  return step, state, images, step.as_text(), time.perf_counter() - start


def loss_fns(formulation: str, batch: int, backward: bool = True):
  """Compiled forward (train mode, MSE loss) and, if asked, forward + backward of Unet-Simple, each a
  blocking no-argument callable (backward: None when not asked)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from ddpm_jax import train  # pylint: disable=g-import-not-at-top
  _, model, variables, images = unet_simple_setup(batch)
  mesh = train.make_mesh()
  x = train.shard_batch(images.astype(np.float32) / 127.5 - 1, mesh)
  t = train.shard_batch(np.arange(batch, dtype=np.int32) * 7 % 1000, mesh)
  params, stats = jax.device_put((variables['params'], variables['batch_stats']), train.replicated(mesh))

  def loss(params):
    out, mutated = model.apply({'params': params, 'batch_stats': stats}, x, t, train=True, mutable=['batch_stats'])
    return jnp.mean((out - x) ** 2), mutated

  with flax_conv_patch(formulation):
    forward = jax.jit(lambda p: loss(p)[0]).lower(params).compile()
    grad = jax.jit(jax.value_and_grad(loss, has_aux=True)).lower(params).compile() if backward else None
  return (lambda: jax.block_until_ready(forward(params))), grad and (lambda: jax.block_until_ready(grad(params)))


def ynn_fusions(hlo: str, classes: dict[str, str]) -> dict[str, int]:
  """How many of the compiled module's ops run as YNNPACK fusions, by op class."""
  return dict(collections.Counter(classes[name] for name in re.findall(r'%?([\w.\-]+) = [^\n]*__ynn_fusion', hlo)
                                  if name in classes))


# ---------------------------------------------------------------------------
# Profile.

def describe_hlo(hlo: str) -> dict[str, str]:
  """Instruction name -> its output shape (and the window of a convolution inside it)."""
  windows = {}
  computation = None
  for line in hlo.splitlines():
    header = re.match(r'^(?:ENTRY )?%?([\w.\-]+) .*\{$', line)
    if header:
      computation = header.group(1)
    window = re.search(r'convolution\(.*(window=\{[^}]*\})', line)
    if window and computation:
      windows[computation] = window.group(1)
  out = {}
  for m in re.finditer(r'^\s*(?:ROOT )?%?([\w.\-]+) = (\S+) ([^\n]*)$', hlo, re.M):
    called = re.search(r'calls=%?([\w.\-]+)', m.group(3))
    out[m.group(1)] = f'{m.group(2).split("{")[0]} {windows.get(called.group(1), "") if called else ""}'.strip()
  return out


def classify_hlo(hlo: str) -> dict[str, str]:
  """Instruction name -> op class, for every instruction of a compiled HLO module."""
  bodies, current = {}, None
  for line in hlo.splitlines():
    header = re.match(r'^(?:ENTRY )?%?([\w.\-]+) .*\{$', line)
    if header:
      current = header.group(1)
      bodies[current] = []
    elif current is not None:
      bodies[current].append(line)

  def conv_class(text: str) -> str:
    sizes = [int(s) for s in re.findall(r'window=\{size=(\d+)x(\d+)', text)[0]] if 'window={size=' in text else [1]
    return 'conv weight grad' if max(sizes) > 3 else 'conv fwd / input grad'

  def op_class(name: str, line: str) -> str:
    called = re.search(r'calls=%?([\w.\-]+)', line)
    text = '\n'.join(bodies.get(called.group(1), [])) if called and ' fusion(' in line else line
    if 'convolution(' in text:
      return conv_class(text)
    if re.search(r' dot\(', text):
      return 'dot'
    if name.startswith(('transpose', 'copy')) or re.search(r'= \S+ (transpose|copy)\(', line):
      return 'transpose / copy'
    if re.search(r' reduce\(', text):
      return 'reduce'
    if ' fusion(' in line:
      return 'other fusions (elementwise, batch norm, Adam)'
    return 'other ops'

  fused = {c for body in bodies.values() for line in body if ' fusion(' in line
           for c in re.findall(r'calls=%?([\w.\-]+)', line)}
  classes = {}  # Instructions that run as thunks: those outside fused computations.
  for computation, body in bodies.items():
    if computation in fused:
      continue
    for line in body:
      m = re.match(r'\s*(?:ROOT )?%?([\w.\-]+) = ', line)
      if m:
        classes[m.group(1)] = op_class(m.group(1), line)
  return classes


def profile_ops(run, steps: int, classes: dict[str, str], descriptions: dict[str, str]) -> dict:
  """CPU ms per step and share of each op class over `steps` traced runs of run()."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax._src.profiler import ProfileData  # pylint: disable=g-import-not-at-top
  folder = tempfile.mkdtemp(prefix='conv_formulations_trace_')
  start = time.perf_counter()
  with jax.profiler.trace(folder):
    for _ in range(steps):
      run()
  wall = (time.perf_counter() - start) / steps
  data = ProfileData.from_file(glob.glob(os.path.join(folder, '**', '*.xplane.pb'), recursive=True)[0])
  per_class, per_op = collections.Counter(), collections.Counter()
  for plane in data.planes:
    for line in plane.lines:
      if not line.name.startswith('tf_XLA'):
        continue
      for event in line.events:
        if event.name in classes:
          per_class[classes[event.name]] += event.duration_ns / 1e6 / steps
          per_op[event.name] += event.duration_ns / 1e6 / steps
  total = sum(per_class.values())
  return {'traced_wall_ms_per_step': round(1e3 * wall, 1), 'op_cpu_ms_per_step': round(total, 1),
          'by_class': {k: {'cpu_ms': round(v, 1), 'share': round(v / total, 3)} for k, v in per_class.most_common()},
          'top_ops': {k: {'cpu_ms': round(v, 1), 'class': classes[k], 'op': descriptions.get(k, '')}
                      for k, v in per_op.most_common(8)}}


def run_profile(batch: int, iters: int) -> list[dict]:
  import jax  # pylint: disable=g-import-not-at-top
  forward, grad = loss_fns('xla', batch)
  step, state, images, hlo, compile_s = compiled_step('xla', batch)
  holder = [state]

  def run_step():
    holder[0], metrics = step(holder[0], images)
    jax.block_until_ready(metrics)

  result = {'part': 'profile', 'network': 'unet_simple', 'xla_flags': os.environ.get('XLA_FLAGS', ''),
            'batch': batch, 'devices': jax.device_count(),
            'forward_ms': timed(forward, iters), 'forward_backward_ms': timed(grad, iters),
            'train_step_ms': timed(run_step, iters), 'compile_train_step_s': round(compile_s, 1)}
  classes = classify_hlo(hlo)
  result['hlo_convolutions'] = dict(collections.Counter(c for c in classes.values() if c.startswith('conv')))
  result['ynn_fusions'] = ynn_fusions(hlo, classes)
  result.update(profile_ops(run_step, 2, classes, describe_hlo(hlo)))
  result['load_avg_1m'] = load()
  return [result]


def run_torch_profile(batch: int, threads: int) -> list[dict]:
  import torch  # pylint: disable=g-import-not-at-top
  import torch_reference  # pylint: disable=g-import-not-at-top
  from configs import mnist_simple  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(threads)
  torch.manual_seed(0)
  config = mnist_simple.get_config()
  model = torch_reference.torch_twin_from_config(config).train()
  images = torch.randint(0, 256, (batch, 1, 28, 28), dtype=torch.uint8)
  step = torch_reference.make_train_step(model, model, config, images)
  forward = lambda: model(images.float() / 127.5 - 1, torch.arange(batch)).mean().item()
  result = {'part': 'profile', 'network': 'unet_simple (PyTorch eager)', 'framework': f'torch {torch.__version__}',
            'threads': threads, 'batch': batch, 'forward_ms': timed(forward, 3), 'train_step_ms': timed(step, 3)}
  with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
    for _ in range(2):
      step()
  ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
  total = sum(e.self_cpu_time_total for e in ops)
  result['self_cpu_ms_per_step'] = round(total / 2e3, 1)
  result['top_ops'] = {e.key: {'self_cpu_ms': round(e.self_cpu_time_total / 2e3, 1),
                               'share': round(e.self_cpu_time_total / total, 3)} for e in ops[:10]}
  result['load_avg_1m'] = load()
  return [result]


# ---------------------------------------------------------------------------
# One convolution.

def run_conv(flag_set: str, shape, iters: int) -> list[dict]:
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  b, side, cin, cout = shape
  rng = np.random.default_rng(0)
  x = rng.standard_normal((b, side, side, cin)).astype(np.float32)
  w = (0.05 * rng.standard_normal((3, 3, cin, cout))).astype(np.float32)
  g = rng.standard_normal((b, side, side, cout)).astype(np.float32)
  reference = None
  out = []
  for formulation in FORMULATIONS:
    conv = make_conv(formulation)
    f = lambda x, w, conv=conv: conv(x, w, (1, 1), 'SAME', dimension_numbers=NHWC)
    fwd = jax.jit(f)
    dx = jax.jit(lambda x, w, g: jax.vjp(lambda x: f(x, w), x)[1](g)[0])
    dw = jax.jit(lambda x, w, g: jax.vjp(lambda w: f(x, w), w)[1](g)[0])
    grads = np.asarray(dw(x, w, g))
    reference = grads if reference is None else reference
    row = {'part': 'conv', 'flags': flag_set, 'xla_flags': FLAG_SETS[flag_set], 'formulation': formulation,
           'shape': f'{b}x{side}x{side}x{cin}->{cout}, 3x3',
           'dw_max_rel_diff_vs_xla': float(f'{np.abs(grads - reference).max() / np.abs(reference).max():.2g}')}
    if formulation in ('xla', 'nchw', 'im2col'):
      row['forward'] = timed(lambda: jax.block_until_ready(fwd(x, w)), iters)
      row['input_grad'] = timed(lambda: jax.block_until_ready(dx(x, w, g)), iters)
    row['weight_grad'] = timed(lambda: jax.block_until_ready(dw(x, w, g)), iters)
    row['load_avg_1m'] = load()
    out.append(row)
  return out


def run_torch_conv(threads: int, shape, iters: int) -> list[dict]:
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(threads)
  b, side, cin, cout = shape
  x = torch.randn(b, cin, side, side, requires_grad=True)
  w = (0.05 * torch.randn(cout, cin, 3, 3)).requires_grad_()
  y = torch.nn.functional.conv2d(x, w, padding=1)
  g = torch.randn_like(y)

  def forward():
    with torch.no_grad():
      torch.nn.functional.conv2d(x, w, padding=1)

  return [{'part': 'conv', 'framework': f'torch {torch.__version__}', 'threads': threads,
           'shape': f'{b}x{side}x{side}x{cin}->{cout}, 3x3 (NCHW)', 'forward': timed(forward, iters),
           'input_grad': timed(lambda: torch.autograd.grad(y, x, g, retain_graph=True), iters),
           'weight_grad': timed(lambda: torch.autograd.grad(y, w, g, retain_graph=True), iters),
           'load_avg_1m': load()}]


# ---------------------------------------------------------------------------
# The whole train step.

def run_step_variant(variant: str, batch: int, iters: int) -> list[dict]:
  import jax  # pylint: disable=g-import-not-at-top
  formulation, flag_set, devices = VARIANTS[variant]
  forward, _ = loss_fns(formulation, batch, backward=False)
  step, state, images, hlo, compile_s = compiled_step(formulation, batch)
  holder = [state]

  def run_step():
    holder[0], metrics = step(holder[0], images)
    jax.block_until_ready(metrics)

  return [{'part': 'step', 'variant': variant, 'formulation': formulation, 'xla_flags': FLAG_SETS[flag_set],
           'devices': devices, 'batch': batch, 'train_step_ms': timed(run_step, iters),
           'forward_ms': timed(forward, iters), 'compile_train_step_s': round(compile_s, 1),
           'loss': round(float(jax.device_get(step(holder[0], images)[1]['loss'])), 4),
           'ynn_fusions': ynn_fusions(hlo, classify_hlo(hlo)), 'load_avg_1m': load()}]


def run_torch_step(threads: int, batch: int, iters: int) -> list[dict]:
  import torch  # pylint: disable=g-import-not-at-top
  import torch_reference  # pylint: disable=g-import-not-at-top
  from configs import mnist_simple  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(threads)
  torch.manual_seed(0)
  config = mnist_simple.get_config()
  model = torch_reference.torch_twin_from_config(config).train()
  images = torch.randint(0, 256, (batch, 1, 28, 28), dtype=torch.uint8)
  return [{'part': 'step', 'variant': f'torch eager, {threads} thread(s)', 'framework': f'torch {torch.__version__}',
           'batch': batch, 'train_step_ms': timed(torch_reference.make_train_step(model, model, config, images), iters),
           'load_avg_1m': load()}]


# ---------------------------------------------------------------------------

def run_worker(spec: str) -> list[dict]:
  part, arg = spec.split(':', 1)
  shape = [int(s) for s in FLAGS.conv_shape]
  if part == 'profile':
    return run_profile(FLAGS.batch, FLAGS.iters)
  if part == 'torch_profile':
    return run_torch_profile(FLAGS.batch, int(arg))
  if part == 'conv':
    return run_conv(arg, shape, FLAGS.iters)
  if part == 'torch_conv':
    return run_torch_conv(int(arg), shape, FLAGS.iters)
  if part == 'step':
    return run_step_variant(arg, FLAGS.batch, FLAGS.iters)
  if part == 'torch_step':
    return run_torch_step(int(arg), FLAGS.batch, FLAGS.iters)
  raise app.UsageError(f'Unknown worker {spec!r}.')


def spawn(spec: str, xla_flags: str = '', devices: int = 1) -> None:
  """Runs one worker in a fresh process with the given XLA flags and host devices; prints its lines."""
  env = dict(os.environ, XLA_FLAGS=f'{xla_flags} --xla_force_host_platform_device_count={devices}'.strip())
  argv = [a for a in sys.argv[1:] if not a.startswith('--worker')]
  proc = subprocess.run([sys.executable, os.path.abspath(__file__), *argv, f'--worker={spec}'], env=env,
                        stdout=subprocess.PIPE, text=True, check=False)
  lines = [line for line in proc.stdout.splitlines() if line.startswith('{')]
  for line in lines:
    print(line, flush=True)
  if proc.returncode or not lines:
    print(json.dumps({'worker': spec, 'error': f'exited with {proc.returncode} (stderr above)'}), flush=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  if FLAGS.worker:
    for line in run_worker(FLAGS.worker):
      print(json.dumps(line), flush=True)
    return
  unknown = ([v for v in FLAGS.variants if v not in VARIANTS] +
             [f for f in FLAGS.flag_sets + FLAGS.profile_flag_sets if f not in FLAG_SETS] +
             [p for p in FLAGS.parts if p not in ('profile', 'conv', 'step')])
  if unknown:
    raise app.UsageError(f'Unknown names {unknown}; variants: {", ".join(VARIANTS)}; '
                         f'flag sets: {", ".join(FLAG_SETS)}; parts: profile, conv, step.')
  if 'profile' in FLAGS.parts:
    for flag_set in FLAGS.profile_flag_sets:
      spawn(f'profile:{flag_set}', FLAG_SETS[flag_set])
    for threads in FLAGS.torch_threads[:1]:
      spawn(f'torch_profile:{threads}')
  if 'conv' in FLAGS.parts:
    for flag_set in FLAGS.flag_sets:
      spawn(f'conv:{flag_set}', FLAG_SETS[flag_set])
    for threads in FLAGS.torch_threads:
      spawn(f'torch_conv:{threads}')
  if 'step' in FLAGS.parts:
    for _ in range(FLAGS.rounds):
      for variant in FLAGS.variants:
        _, flag_set, devices = VARIANTS[variant]
        spawn(f'step:{variant}', FLAG_SETS[flag_set], devices)
      for threads in FLAGS.torch_threads:
        spawn(f'torch_step:{threads}')


if __name__ == '__main__':
  app.run(main)
