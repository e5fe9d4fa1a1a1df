"""PyTorch references for benchmarks/throughput.py: our networks' PyTorch twins, diffusers' DDPM UNet.

`torch_twin` builds, from a Flax network of ours, the same network in PyTorch layer for layer:
Unet-Simple, and every `layers.LevelUNet` (Unet-Conv, Unet-Resnet, the official DDPM UNet) with
the same convolutions, norms, attention, resampling, TF-'SAME' padding and parameter count, every
module under its Flax name, so the two frameworks time the same computation.
`load_flax_variables` copies Flax variables into a twin and `check_twin` checks the pair (count
and outputs). `diffusers_ddpm` builds diffusers' UNet2DModel with the official DDPM CIFAR-10
configuration (tests/test_convert_diffusers.py OFFICIAL_DIFFUSERS_CONFIG). `measure` times one of
them the way throughput.py times ours: forward, the whole train step (noising, loss, backward,
gradient clipping, Adam, EMA) and reverse steps of the ancestral and DDIM samplers.

torch is imported inside the functions only, so throughput.py runs without it (--skip_torch).
"""

import functools
import math
import resource
import time
from typing import Any, Sequence

import numpy as np

import timing  # benchmarks/timing.py, beside this module.

# tests/test_convert_diffusers.py OFFICIAL_DIFFUSERS_CONFIG (google/ddpm-cifar10-32), as UNet2DModel
# arguments; dropout 0.1 as DDPM trains (the hub config leaves it at diffusers' default 0).
DIFFUSERS_DDPM_CIFAR10 = dict(
    sample_size=32, in_channels=3, out_channels=3, block_out_channels=(128, 256, 256, 256), layers_per_block=2,
    down_block_types=('DownBlock2D', 'AttnDownBlock2D', 'DownBlock2D', 'DownBlock2D'),
    up_block_types=('UpBlock2D', 'UpBlock2D', 'AttnUpBlock2D', 'UpBlock2D'), attention_head_dim=None,
    act_fn='silu', add_attention=True, center_input_sample=False, mid_block_scale_factor=1, norm_eps=1e-6,
    norm_num_groups=32, downsample_padding=0, flip_sin_to_cos=False, freq_shift=1,
    resnet_time_scale_shift='default', time_embedding_type='positional', dropout=0.1)


def timestep_embedding(t, dim: int, max_period: float = 10000.0):
  """ddpm_jax.nets.layers.timestep_embedding in torch: [sin, cos] of t at geometric frequencies."""
  import torch  # pylint: disable=g-import-not-at-top
  half = dim // 2
  freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=t.device) * -(math.log(max_period) / (half - 1)))
  angles = t.float()[:, None] * freqs[None, :]
  return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """(before, after) padding of TF/Flax 'SAME' along one axis."""
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


def _torch_layers():
  """(torch, nn, F), imported on first use so this module imports without torch."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
  return torch, nn, F


def conv_same(cin: int, cout: int, kernel: int = 3, bias: bool = True):
  """A stride-1 Conv2d with TF/Flax 'SAME' padding (symmetric for odd kernels)."""
  _, nn, _ = _torch_layers()
  return nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=bias)


def conv_stride2_same(conv, x):
  """conv (a 3x3 Conv2d) applied at stride 2 with TF/Flax 'SAME' padding (0 before, 1 after on even sides)."""
  _, _, F = _torch_layers()
  top, bottom = same_padding(x.shape[2], conv.kernel_size[0], 2)
  left, right = same_padding(x.shape[3], conv.kernel_size[1], 2)
  return F.conv2d(F.pad(x, (left, right, top, bottom)), conv.weight, conv.bias, stride=2)


def named(module, children: dict):
  """module with children registered under the given names (Flax's), so `get_submodule` finds them."""
  for name, child in children.items():
    module.add_module(name, child)
  return module


def unet_simple_torch(in_channels: int, widths: Sequence[int], time_embed_dim: int, out_channels: int,
                      momentum: float):
  """ddpm_jax.nets.unet_simple.UNetSimple in PyTorch (NCHW), every module under its Flax name."""
  torch, nn, F = _torch_layers()

  class ConvBlock(nn.Module):
    """unet_simple.ConvBlock: conv -> [BN -> swish -> conv -> BN -> swish] + residual."""

    def __init__(self, cin: int, features: int):
      super().__init__()
      # Flax momentum m keeps m of the running statistic; torch's momentum is the new share.
      norm = lambda: nn.BatchNorm2d(features, eps=1e-5, momentum=1 - momentum)
      named(self, {'Conv_0': conv_same(cin, features, bias=False), 'Conv_1': conv_same(features, features, bias=False),
                   'BatchNorm_0': norm(), 'BatchNorm_1': norm()})

    def forward(self, x):
      h = self.Conv_0(x)
      y = F.silu(self.BatchNorm_0(h))
      y = F.silu(self.BatchNorm_1(self.Conv_1(y)))
      return h + y

  class UNetSimpleTorch(nn.Module):
    """Five blocks, strided-conv down, nearest + conv up, concatenated skips."""

    def __init__(self):
      super().__init__()
      w_down1, w_down2, w_mid, w_up1, w_up2 = widths
      block_in = [in_channels, w_down1, w_down2, w_mid + w_down2, w_up1 + w_down1]
      block_out = [w_down1, w_down2, w_mid, w_up1, w_up2]
      for i, (cin, cout) in enumerate(zip(block_in, block_out)):
        named(self, {f'Dense_{i}': nn.Linear(time_embed_dim, cin), f'ConvBlock_{i}': ConvBlock(cin, cout)})
      # Flax creation order: down(h1), down(h2), up(mid), up(up1), the 1x1 output conv.
      for i, c in enumerate([w_down1, w_down2, w_mid, w_up1]):
        named(self, {f'Conv_{i}': conv_same(c, c, bias=False)})
      named(self, {'Conv_4': conv_same(w_up2, out_channels, kernel=1)})

    def block(self, i: int, h, temb):
      dense, block = self.get_submodule(f'Dense_{i}'), self.get_submodule(f'ConvBlock_{i}')
      return block(h + dense(temb)[:, :, None, None])

    def forward(self, x, t):
      temb = timestep_embedding(t, time_embed_dim)
      up = lambda h, conv: conv(F.interpolate(h, scale_factor=2, mode='nearest'))
      h1 = self.block(0, x, temb)
      h2 = self.block(1, conv_stride2_same(self.Conv_0, h1), temb)
      h3 = up(self.block(2, conv_stride2_same(self.Conv_1, h2), temb), self.Conv_2)
      h4 = up(self.block(3, torch.cat([h3, h2], 1), temb), self.Conv_3)
      h5 = self.block(4, torch.cat([h4, h1], 1), temb)
      return self.Conv_4(h5)

  return UNetSimpleTorch()


def level_unet_torch(block: str, image_size: int, in_channels: int, out_channels: int, ch: int,
                     ch_mult: Sequence[int], num_res_blocks: int, attn_resolutions: Sequence[int],
                     mid_attention: bool, num_heads: int, dropout: float, norm_groups: int, norm_eps: float,
                     time_embed_dim: int, time_mlp_dim: int, downsample: str, upsample: str):
  """ddpm_jax.nets.layers.LevelUNet in PyTorch (NCHW) for image_size-sided inputs, modules under Flax's names.

  block: 'resnet' (layers.ResnetBlock: Unet-Resnet, the DDPM UNet) or 'conv' (unet_conv.ConvBlock).
  """
  torch, nn, F = _torch_layers()
  group_norm = lambda c: nn.GroupNorm(norm_groups, c, eps=norm_eps)

  class ResnetBlock(nn.Module):
    """layers.ResnetBlock: [GN, swish, conv, + dense(swish(temb)), GN, swish, dropout, conv] + shortcut."""

    def __init__(self, cin: int, features: int):
      super().__init__()
      named(self, {'norm_0': group_norm(cin), 'conv_0': conv_same(cin, features),
                   'temb_proj': nn.Linear(time_mlp_dim, features), 'norm_1': group_norm(features),
                   'dropout': nn.Dropout(dropout), 'conv_1': conv_same(features, features)})
      if cin != features:
        named(self, {'shortcut': conv_same(cin, features, kernel=1)})

    def forward(self, x, temb):
      h = self.conv_0(F.silu(self.norm_0(x))) + self.temb_proj(F.silu(temb))[:, :, None, None]
      h = self.conv_1(self.dropout(F.silu(self.norm_1(h))))
      return (self.shortcut(x) if hasattr(self, 'shortcut') else x) + h

  class ConvBlock(nn.Module):
    """unet_conv.ConvBlock: conv -> GN -> (+ timestep) -> swish -> dropout -> conv -> GN -> swish."""

    def __init__(self, cin: int, features: int):
      super().__init__()
      named(self, {'conv_0': conv_same(cin, features), 'norm_0': group_norm(features),
                   'temb_proj': nn.Linear(time_mlp_dim, features), 'dropout': nn.Dropout(dropout),
                   'conv_1': conv_same(features, features), 'norm_1': group_norm(features)})

    def forward(self, x, temb):
      h = self.norm_0(self.conv_0(x)) + self.temb_proj(F.silu(temb))[:, :, None, None]
      h = self.dropout(F.silu(h))
      return F.silu(self.norm_1(self.conv_1(h)))

  class SelfAttention(nn.Module):
    """layers.SelfAttention: GN, q/k/v over channels, softmax over the H*W positions, projection, residual."""

    def __init__(self, c: int):
      super().__init__()
      named(self, {'norm': group_norm(c), 'q': nn.Linear(c, c), 'k': nn.Linear(c, c), 'v': nn.Linear(c, c),
                   'proj_out': nn.Linear(c, c)})

    def forward(self, x):
      b, c, height, width = x.shape
      head_dim = c // num_heads
      h = self.norm(x).permute(0, 2, 3, 1).reshape(b, height * width, c)
      q, k, v = (proj(h).reshape(b, height * width, num_heads, head_dim) for proj in (self.q, self.k, self.v))
      weights = torch.softmax(torch.einsum('bqhd,bkhd->bhqk', q, k) * head_dim ** -0.5, dim=-1)
      out = torch.einsum('bhqk,bkhd->bqhd', weights, v).reshape(b, height * width, c)
      return x + self.proj_out(out).reshape(b, height, width, c).permute(0, 3, 1, 2)

  class Resample(nn.Module):
    """layers.Downsample / layers.Upsample: method 'conv', 'maxpool', 'nearest' or 'transpose'."""

    def __init__(self, method: str, c: int):
      super().__init__()
      self.method = method
      if method in ('conv', 'nearest'):
        named(self, {'conv': conv_same(c, c)})
      elif method == 'transpose':
        named(self, {'conv': nn.ConvTranspose2d(c, c, 2, stride=2)})
      elif method != 'maxpool':
        raise ValueError(f'Unknown resampling {method!r}.')

    def forward(self, x):
      if self.method == 'conv':
        return conv_stride2_same(self.conv, x)
      if self.method == 'maxpool':  # Flax's 'SAME' 2x2 pool: sides are even (ddpm_jax.nets checks).
        return F.max_pool2d(x, 2)
      if self.method == 'nearest':
        return self.conv(F.interpolate(x, scale_factor=2, mode='nearest'))
      return self.conv(x)

  make_block = {'resnet': ResnetBlock, 'conv': ConvBlock}[block]

  class LevelUNetTorch(nn.Module):
    """conv_in; levels of blocks (+ attention) with skips; the middle; the mirror path; GN, swish, conv_out."""

    def __init__(self):
      super().__init__()
      temb = named(nn.Module(), {'dense_0': nn.Linear(time_embed_dim, time_mlp_dim),
                                 'dense_1': nn.Linear(time_mlp_dim, time_mlp_dim)})
      named(self, {'temb': temb, 'conv_in': conv_same(in_channels, ch)})
      # [kind, Flax name, whether its output is kept as a skip] in call order; kind: block, up_block
      # (takes [h, skip] concatenated), other (attention, resampling).
      self.plan = []
      last, side = len(ch_mult) - 1, image_size
      c, skips = ch, [ch]

      def add(kind: str, name: str, module):
        named(self, {name: module})
        self.plan.append([kind, name, False])

      for level, mult in enumerate(ch_mult):
        for i in range(num_res_blocks):
          add('block', f'down_{level}_block_{i}', make_block(c, ch * mult))
          c = ch * mult
          if side in attn_resolutions:
            add('other', f'down_{level}_attn_{i}', SelfAttention(c))
          self.plan[-1][2] = True
          skips.append(c)
        if level != last:
          add('other', f'down_{level}_downsample', Resample(downsample, c))
          self.plan[-1][2] = True
          skips.append(c)
          side = -(-side // 2)
      add('block', 'mid_block_0', make_block(c, c))
      if mid_attention:
        add('other', 'mid_attn', SelfAttention(c))
      add('block', 'mid_block_1', make_block(c, c))
      for level in reversed(range(len(ch_mult))):
        for i in range(num_res_blocks + 1):
          add('up_block', f'up_{level}_block_{i}', make_block(c + skips.pop(), ch * ch_mult[level]))
          c = ch * ch_mult[level]
          if side in attn_resolutions:
            add('other', f'up_{level}_attn_{i}', SelfAttention(c))
        if level != 0:
          add('other', f'up_{level}_upsample', Resample(upsample, c))
          side *= 2
      named(self, {'norm_out': group_norm(c), 'conv_out': conv_same(c, out_channels)})

    def forward(self, x, t):
      if x.shape[2] != image_size or x.shape[3] != image_size:
        raise ValueError(f'This network was built for {image_size}x{image_size} images, got {tuple(x.shape)}.')
      temb = self.temb.dense_1(F.silu(self.temb.dense_0(timestep_embedding(t, time_embed_dim))))
      h = self.conv_in(x)
      skips = [h]
      for kind, name, keep in self.plan:
        module = self.get_submodule(name)
        if kind == 'up_block':
          h = module(torch.cat([h, skips.pop()], 1), temb)
        else:
          h = module(h, temb) if kind == 'block' else module(h)
        if keep:
          skips.append(h)
      return self.conv_out(F.silu(self.norm_out(h)))

  return LevelUNetTorch()


def torch_twin(flax_model, image_size: int, in_channels: int):
  """The PyTorch twin of a Flax network of ours (unconditional UNetSimple or any layers.LevelUNet), built
  from its fields, with every module under its Flax name (see load_flax_variables)."""
  from ddpm_jax.nets import layers, unet_conv, unet_simple  # pylint: disable=g-import-not-at-top
  if flax_model.num_classes:
    raise ValueError('The PyTorch twins are unconditional networks; set config.model.num_classes = 0.')
  if isinstance(flax_model, unet_simple.UNetSimple):
    return unet_simple_torch(in_channels, tuple(flax_model.widths), flax_model.time_embed_dim,
                             flax_model.out_channels, flax_model.batch_norm_momentum)
  if isinstance(flax_model, layers.LevelUNet):
    blocks = {layers.ResnetBlock: 'resnet', unet_conv.ConvBlock: 'conv'}
    fields = ('ch', 'ch_mult', 'num_res_blocks', 'attn_resolutions', 'mid_attention', 'num_heads', 'dropout',
              'norm_groups', 'norm_eps', 'time_embed_dim', 'time_mlp_dim', 'downsample', 'upsample', 'out_channels')
    return level_unet_torch(blocks[flax_model.block], image_size, in_channels,
                            **{f: getattr(flax_model, f) for f in fields})
  raise ValueError(f'No PyTorch twin of {type(flax_model).__name__}.')


def torch_twin_from_config(config):
  """torch_twin of config's network (config.model.name: unet_simple, unet_conv, unet_resnet or ddpm)."""
  from ddpm_jax import nets  # pylint: disable=g-import-not-at-top
  return torch_twin(nets.get_model(config), config.data.image_size, config.data.num_channels)


def load_flax_variables(model, variables: dict) -> None:
  """Copies Flax variables ({'params', maybe 'batch_stats'}) into a torch_twin in place, converting layouts;
  raises ValueError if a shape differs or a torch parameter is left unset."""
  torch, nn, _ = _torch_layers()
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  targets = {'kernel': 'weight', 'scale': 'weight', 'bias': 'bias', 'mean': 'running_mean', 'var': 'running_var'}
  assigned = set()
  with torch.no_grad():
    for collection in ('params', 'batch_stats'):
      for path, value in traverse_util.flatten_dict(variables.get(collection, {})).items():
        module = model.get_submodule('.'.join(path[:-1]))
        value = np.array(value, np.float32)  # A writable copy, as torch.from_numpy wants.
        if path[-1] == 'kernel' and isinstance(module, nn.ConvTranspose2d):
          value = np.flip(value, (0, 1)).transpose(2, 3, 0, 1)  # Flax does not flip the kernel; torch does.
        elif path[-1] == 'kernel':
          value = value.transpose({4: (3, 2, 0, 1), 2: (1, 0)}[value.ndim])
        name = '.'.join((*path[:-1], targets[path[-1]]))
        tensor = getattr(module, targets[path[-1]])
        if tuple(tensor.shape) != value.shape:
          raise ValueError(f'{name}: the torch twin has shape {tuple(tensor.shape)}, Flax {value.shape}.')
        tensor.copy_(torch.from_numpy(np.ascontiguousarray(value)))
        assigned.add(name)
  unset = [n for n, _ in model.named_parameters() if n not in assigned]
  if unset:
    raise ValueError(f'The Flax variables set no value for the torch parameters {unset}.')


def check_twin(config, flax_model, variables: dict, batch: int = 2) -> dict:
  """Asserts the torch twin of flax_model has its parameter count and outputs (eval mode; train mode too
  with batch norm, whose statistics then come from the batch). Returns the count and the largest differences."""
  import jax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  model = torch_twin(flax_model, config.data.image_size, config.data.num_channels)
  flax_count = int(sum(np.size(p) for p in jax.tree.leaves(variables['params'])))
  torch_count = sum(p.numel() for p in model.parameters())
  assert torch_count == flax_count, f'the torch twin has {torch_count} params, Flax {flax_count}.'
  load_flax_variables(model, variables)
  size, channels = config.data.image_size, config.data.num_channels
  rng = np.random.default_rng(1)
  x = rng.standard_normal((batch, size, size, channels)).astype(np.float32)
  t = rng.integers(0, config.diffusion.num_timesteps, batch).astype(np.int32)
  diffs = {}
  for train in (False, True) if 'batch_stats' in variables else (False,):
    apply = jax.jit(functools.partial(flax_model.apply, train=train, mutable=['batch_stats'] if train else False))
    ours = apply(variables, x, t)
    ours = np.asarray(ours[0] if train else ours)
    model.train(train)
    with torch.no_grad():
      theirs = model(torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(t).long()).permute(0, 2, 3, 1).numpy()
    mode = 'train' if train else 'eval'
    diffs[f'max_abs_diff_{mode}'] = float(np.abs(ours - theirs).max())
    scale = float(np.abs(ours).max())
    assert diffs[f'max_abs_diff_{mode}'] <= 1e-4 * max(scale, 1.0), (
        f'the torch twin differs from Flax\'s {type(flax_model).__name__} by {diffs} (output scale {scale}).')
  return {'params': torch_count, **diffs}


def diffusers_ddpm():
  """diffusers' UNet2DModel with the official DDPM CIFAR-10 configuration (35,746,307 params)."""
  from diffusers import UNet2DModel  # pylint: disable=g-import-not-at-top
  return UNet2DModel(**DIFFUSERS_DDPM_CIFAR10)


def _linear_schedule(num_timesteps: int, beta_start: float, beta_end: float) -> dict:
  """The DDPM linear schedule (float64 -> float32 tensors) that the samplers and the loss need."""
  import torch  # pylint: disable=g-import-not-at-top
  betas = np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)
  abar = np.cumprod(1 - betas)
  abar_prev = np.append(1.0, abar[:-1])
  posterior_var = betas * (1 - abar_prev) / (1 - abar)
  arrays = dict(
      sqrt_abar=np.sqrt(abar), sqrt_1m_abar=np.sqrt(1 - abar), abar=abar,
      sqrt_recip_abar=np.sqrt(1 / abar), sqrt_recipm1_abar=np.sqrt(1 / abar - 1),
      coef1=betas * np.sqrt(abar_prev) / (1 - abar), coef2=(1 - abar_prev) * np.sqrt(1 - betas) / (1 - abar),
      sigma_large=np.sqrt(np.append(posterior_var[1], betas[1:])))
  return {k: torch.tensor(v, dtype=torch.float32) for k, v in arrays.items()}


def make_train_step(model, call, config, images):
  """train_step() of a torch network on a uint8 NCHW batch, as ddpm_jax.train_step's: [-1, 1], t and noise
  drawn, q_sample, the network (call(x, t) -> eps), MSE, backward, gradient clipping, Adam, EMA."""
  import torch  # pylint: disable=g-import-not-at-top
  d = config.diffusion
  schedule = _linear_schedule(d.num_timesteps, d.beta_start, d.beta_end)
  optimizer = torch.optim.Adam(model.parameters(), lr=config.optim.lr, betas=(config.optim.beta1, config.optim.beta2),
                               eps=config.optim.eps)
  ema = [p.detach().clone() for p in model.parameters()]
  decay = config.training.ema_decay
  batch = images.shape[0]

  def train_step():
    x0 = images.float() / 127.5 - 1.0
    t = torch.randint(0, d.num_timesteps, (batch,))
    noise = torch.randn_like(x0)
    x_t = schedule['sqrt_abar'][t][:, None, None, None] * x0 + schedule['sqrt_1m_abar'][t][:, None, None, None] * noise
    optimizer.zero_grad(set_to_none=True)
    loss = torch.mean((call(x_t, t) - noise) ** 2)
    loss.backward()
    if config.optim.grad_clip > 0:
      torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip)
    optimizer.step()
    with torch.no_grad():
      torch._foreach_lerp_(ema, [p.detach() for p in model.parameters()], 1.0 - decay)  # pylint: disable=protected-access
    return loss

  return train_step


def _median_seconds(fn, iters: int) -> float:
  return float(np.median(timing.wall_seconds(fn, iters, warm_up=False)))


def measure(name: str, config, batch: int, steps: int, sample_steps: int, ddim_steps: int = 50,
            sample_batch: int = 0, threads: int = 0, skip_sampling: bool = False) -> dict[str, Any]:
  """Times a torch reference like throughput.py times ours; a result dict. name 'ddpm': diffusers'
  UNet2DModel; any other: the torch_twin of config's network.

  forward: eval mode, no_grad. train step: uint8 batch -> [-1, 1], t and noise drawn, q_sample,
  the network in train mode, MSE on eps, backward, clip_grad_norm_(config.optim.grad_clip), Adam
  and the EMA of the params. Sampling: reverse steps of the ancestral sampler (fixedlarge,
  x0 clipped) and DDIM (eta 0); `sample_steps` of each are timed and, when that is fewer than the
  full chain (T, and ddim_steps), images/s is extrapolated from the time per step; skip_sampling skips
  them. threads: torch's intra-op threads (0 = its default, one per core).
  """
  import torch  # pylint: disable=g-import-not-at-top
  from torch.utils.flop_counter import FlopCounterMode  # pylint: disable=g-import-not-at-top

  if threads:
    torch.set_num_threads(threads)
  torch.manual_seed(0)
  model = diffusers_ddpm() if name == 'ddpm' else torch_twin_from_config(config)
  call = (lambda x, t: model(x, t).sample) if name == 'ddpm' else (lambda x, t: model(x, t))
  size, channels = config.data.image_size, config.data.num_channels
  d = config.diffusion
  schedule = _linear_schedule(d.num_timesteps, d.beta_start, d.beta_end)
  gen = torch.Generator().manual_seed(0)
  images = torch.randint(0, 256, (batch, channels, size, size), dtype=torch.uint8, generator=gen)
  x = torch.randn(batch, channels, size, size, generator=gen)
  t = torch.randint(0, d.num_timesteps, (batch,), generator=gen)

  model.eval()
  with torch.no_grad():
    with FlopCounterMode(display=False) as counter:
      call(x[:1], t[:1])
    forward_flops = counter.get_total_flops()

    def forward():
      call(x, t)

    forward()
    forward_s = _median_seconds(forward, steps)

  model.train()
  train_step = make_train_step(model, call, config, images)
  train_step()
  start = time.perf_counter()
  for _ in range(steps):
    train_step()
  train_s = (time.perf_counter() - start) / steps

  model.eval()
  sample_batch = sample_batch or batch
  x_T = torch.randn(sample_batch, channels, size, size, generator=gen)
  T = d.num_timesteps

  def ancestral(num: int):
    x_ = x_T
    with torch.no_grad():
      for i in range(num):
        tt = torch.full((sample_batch,), T - 1 - i, dtype=torch.long)
        eps = call(x_, tt)
        pick = lambda k: schedule[k][T - 1 - i]
        x0 = torch.clamp(pick('sqrt_recip_abar') * x_ - pick('sqrt_recipm1_abar') * eps, -1, 1)
        mean = pick('coef1') * x0 + pick('coef2') * x_
        x_ = mean + pick('sigma_large') * torch.randn_like(x_)
    return x_

  stride = T // ddim_steps

  def ddim(num: int):
    x_ = x_T
    with torch.no_grad():
      for i in range(num):
        step = (ddim_steps - 1 - i) * stride  # samplers/ddim.py's ddim_timesteps, 'uniform' spacing.
        prev = step - stride
        tt = torch.full((sample_batch,), step, dtype=torch.long)
        eps = call(x_, tt)
        abar = schedule['abar'][step]
        abar_prev = schedule['abar'][prev] if prev >= 0 else torch.tensor(1.0)
        x0 = torch.clamp((x_ - torch.sqrt(1 - abar) * eps) / torch.sqrt(abar), -1, 1)
        x_ = torch.sqrt(abar_prev) * x0 + torch.sqrt(1 - abar_prev) * eps
    return x_

  result = {'network': 'diffusers.UNet2DModel (official DDPM CIFAR-10)' if name == 'ddpm'
            else f'{name} (PyTorch twin of ours, torch_reference.torch_twin)', 'model': name,
            'framework': f'torch {torch.__version__}', 'device': 'cpu', 'threads': torch.get_num_threads(),
            'dtype': 'float32', 'params': sum(p.numel() for p in model.parameters()),
            'image': f'{size}x{size}x{channels}', 'batch': batch,
            'train_img_per_s': round(batch / train_s, 2), 'train_step_s': round(train_s, 4),
            'forward_img_per_s': round(batch / forward_s, 2), 'forward_s': round(forward_s, 4),
            'forward_flops_per_image': forward_flops, 'flops_source': 'torch.utils.flop_counter (matmuls, convs)'}
  samplers = () if skip_sampling else (('ancestral', T, ancestral), ('ddim', ddim_steps, ddim))
  for sampler, full, run in samplers:
    num = min(sample_steps or full, full)
    run(1)
    start = time.perf_counter()
    run(num)
    per_step = (time.perf_counter() - start) / num
    result[f'sample_{sampler}_steps'] = full
    result[f'sample_{sampler}_steps_timed'] = num
    result[f'sample_{sampler}_extrapolated'] = num < full
    result[f'sample_{sampler}_step_s'] = round(per_step, 4)
    result[f'sample_{sampler}_img_per_s'] = round(sample_batch / (per_step * full), 4)
  if not skip_sampling:
    result['sample_batch'] = sample_batch
  result['peak_host_rss_mib'] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
  result['mfu'] = None
  return result
