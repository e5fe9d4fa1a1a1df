"""PyTorch references for benchmarks/throughput.py: Unet-Simple written in PyTorch, diffusers' DDPM UNet.

`UNetSimpleTorch` mirrors ddpm_jax/nets/unet_simple.py layer for layer (same convolutions,
widths, batch norms, timestep projections, TF-'SAME' padding of the stride-2 convolutions and
parameter count), so the two frameworks time the same computation; `load_flax_params` copies
a Flax Unet-Simple's variables into it and `check_unet_simple` checks both (count and outputs).
`diffusers_ddpm` builds diffusers' UNet2DModel with the official DDPM CIFAR-10 configuration
(tests/test_convert_diffusers.py OFFICIAL_DIFFUSERS_CONFIG). `measure` times one of them the
way throughput.py times ours: forward, the whole train step (noising, loss, backward, gradient
clipping, Adam, EMA) and reverse steps of the ancestral and DDIM samplers.

torch is imported inside the functions only, so throughput.py runs without it (--skip_torch).
"""

import math
import resource
import time
from typing import Any, Sequence

import numpy as np

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


def unet_simple_torch(in_channels: int, widths: Sequence[int], time_embed_dim: int, out_channels: int,
                      momentum: float):
  """UNetSimpleTorch(...) built here, so this module imports without torch."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top

  def conv(cin: int, cout: int, kernel: int = 3, bias: bool = False) -> nn.Conv2d:
    # Stride 1: 'SAME' is symmetric; stride 2 pads explicitly in the forward (0 before, 1 after).
    return nn.Conv2d(cin, cout, kernel, padding=0 if kernel == 1 else 1, bias=bias)

  class ConvBlock(nn.Module):
    """unet_simple.ConvBlock: conv -> [BN -> swish -> conv -> BN -> swish] + residual."""

    def __init__(self, cin: int, features: int):
      super().__init__()
      self.conv_0, self.conv_1 = conv(cin, features), conv(features, features)
      # Flax momentum m keeps m of the running statistic; torch's momentum is the new share.
      self.norm_0 = nn.BatchNorm2d(features, eps=1e-5, momentum=1 - momentum)
      self.norm_1 = nn.BatchNorm2d(features, eps=1e-5, momentum=1 - momentum)

    def forward(self, x):
      h = self.conv_0(x)
      y = F.silu(self.norm_0(h))
      y = F.silu(self.norm_1(self.conv_1(y)))
      return h + y

  class UNetSimpleTorch(nn.Module):
    """unet_simple.UNetSimple in PyTorch (NCHW): five blocks, strided-conv down, nearest + conv up."""

    def __init__(self):
      super().__init__()
      w_down1, w_down2, w_mid, w_up1, w_up2 = widths
      self.time_embed_dim = time_embed_dim
      block_in = [in_channels, w_down1, w_down2, w_mid + w_down2, w_up1 + w_down1]
      block_out = [w_down1, w_down2, w_mid, w_up1, w_up2]
      self.dense = nn.ModuleList([nn.Linear(time_embed_dim, c) for c in block_in])
      self.blocks = nn.ModuleList([ConvBlock(i, o) for i, o in zip(block_in, block_out)])
      # Flax creation order: down(h1), down(h2), up(mid), up(up1), the 1x1 output conv.
      self.convs = nn.ModuleList([conv(w_down1, w_down1), conv(w_down2, w_down2), conv(w_mid, w_mid),
                                  conv(w_up1, w_up1), conv(w_up2, out_channels, kernel=1, bias=True)])

    def block(self, i: int, h, temb):
      return self.blocks[i](h + self.dense[i](temb)[:, :, None, None])

    def down(self, i: int, h):
      top, bottom = same_padding(h.shape[2], 3, 2)
      left, right = same_padding(h.shape[3], 3, 2)
      return F.conv2d(F.pad(h, (left, right, top, bottom)), self.convs[i].weight, stride=2)

    def up(self, i: int, h):
      return self.convs[i](F.interpolate(h, scale_factor=2, mode='nearest'))

    def forward(self, x, t):
      temb = timestep_embedding(t, self.time_embed_dim)
      h1 = self.block(0, x, temb)
      h2 = self.block(1, self.down(0, h1), temb)
      h3 = self.up(2, self.block(2, self.down(1, h2), temb))
      h4 = self.up(3, self.block(3, torch.cat([h3, h2], 1), temb))
      h5 = self.block(4, torch.cat([h4, h1], 1), temb)
      return self.convs[4](h5)

  return UNetSimpleTorch()


def unet_simple_from_config(config):
  """The torch Unet-Simple of a ddpm_jax config (data.num_channels, model.widths, ...)."""
  return unet_simple_torch(config.data.num_channels, tuple(config.model.widths), config.model.time_embed_dim,
                           config.data.num_channels, config.model.batch_norm_momentum)


def load_flax_params(model, variables: dict) -> None:
  """Copies a Flax UNetSimple's params and batch statistics into UNetSimpleTorch, in place."""
  import torch  # pylint: disable=g-import-not-at-top
  params, stats = variables['params'], variables.get('batch_stats', {})
  t = lambda a, *axes: torch.from_numpy(np.ascontiguousarray(np.transpose(np.asarray(a, np.float32), axes)))
  with torch.no_grad():
    for i in range(5):
      dense = params[f'Dense_{i}']
      model.dense[i].weight.copy_(t(dense['kernel'], 1, 0))
      model.dense[i].bias.copy_(t(dense['bias'], 0))
      block, block_stats = params[f'ConvBlock_{i}'], stats.get(f'ConvBlock_{i}', {})
      ours = model.blocks[i]
      for j in range(2):
        getattr(ours, f'conv_{j}').weight.copy_(t(block[f'Conv_{j}']['kernel'], 3, 2, 0, 1))
        norm = getattr(ours, f'norm_{j}')
        norm.weight.copy_(t(block[f'BatchNorm_{j}']['scale'], 0))
        norm.bias.copy_(t(block[f'BatchNorm_{j}']['bias'], 0))
        if f'BatchNorm_{j}' in block_stats:
          norm.running_mean.copy_(t(block_stats[f'BatchNorm_{j}']['mean'], 0))
          norm.running_var.copy_(t(block_stats[f'BatchNorm_{j}']['var'], 0))
      model.convs[i].weight.copy_(t(params[f'Conv_{i}']['kernel'], 3, 2, 0, 1))
    model.convs[4].bias.copy_(t(params['Conv_4']['bias'], 0))


def check_unet_simple(config, flax_model, variables: dict, batch: int = 2) -> dict:
  """Asserts the torch Unet-Simple has the Flax one's parameter count and outputs (eval and train mode).

  Returns {'params': count, 'max_abs_diff_eval': ..., 'max_abs_diff_train': ...}.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  model = unet_simple_from_config(config)
  flax_count = int(sum(np.size(p) for p in jax.tree.leaves(variables['params'])))
  torch_count = sum(p.numel() for p in model.parameters())
  assert torch_count == flax_count, f'torch Unet-Simple has {torch_count} params, Flax {flax_count}.'
  load_flax_params(model, variables)
  size, channels = config.data.image_size, config.data.num_channels
  rng = np.random.default_rng(1)
  x = rng.standard_normal((batch, size, size, channels)).astype(np.float32)
  t = rng.integers(0, config.diffusion.num_timesteps, batch).astype(np.int32)
  diffs = {}
  for train in (False, True):
    ours = flax_model.apply(variables, x, t, train=train, mutable=['batch_stats'] if train else False)
    ours = np.asarray(ours[0] if train else ours)
    model.train(train)
    with torch.no_grad():
      theirs = model(torch.from_numpy(x).permute(0, 3, 1, 2), torch.from_numpy(t).long()).permute(0, 2, 3, 1).numpy()
    diffs['train' if train else 'eval'] = float(np.abs(ours - theirs).max())
    scale = float(np.abs(ours).max())
    assert diffs['train' if train else 'eval'] <= 1e-4 * max(scale, 1.0), (
        f'torch Unet-Simple differs from Flax\'s by {diffs} (output scale {scale}).')
  return {'params': torch_count, 'max_abs_diff_eval': diffs['eval'], 'max_abs_diff_train': diffs['train']}


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
  """train_step() of a torch network on a uint8 NCHW batch, as ddpm_jax.train's: [-1, 1], t and noise
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
  times = []
  for _ in range(iters):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def measure(name: str, config, batch: int, steps: int, sample_steps: int, ddim_steps: int = 50,
            sample_batch: int = 0, threads: int = 0) -> dict[str, Any]:
  """Times a torch reference ('unet_simple' or 'ddpm') like throughput.py times ours; a result dict.

  forward: eval mode, no_grad. train step: uint8 batch -> [-1, 1], t and noise drawn, q_sample,
  the network in train mode, MSE on eps, backward, clip_grad_norm_(config.optim.grad_clip), Adam
  and the EMA of the params. Sampling: reverse steps of the ancestral sampler (fixedlarge,
  x0 clipped) and DDIM (eta 0); `sample_steps` of each are timed and, when that is fewer than the
  full chain (T, and ddim_steps), images/s is extrapolated from the time per step. threads: torch's
  intra-op threads (0 = its default, one per core).
  """
  import torch  # pylint: disable=g-import-not-at-top
  from torch.utils.flop_counter import FlopCounterMode  # pylint: disable=g-import-not-at-top

  if threads:
    torch.set_num_threads(threads)
  torch.manual_seed(0)
  model = unet_simple_from_config(config) if name == 'unet_simple' else diffusers_ddpm()
  call = (lambda x, t: model(x, t)) if name == 'unet_simple' else (lambda x, t: model(x, t).sample)
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
        step = (ddim_steps - 1 - i) * stride  # sampling.ddim_timesteps, 'uniform' spacing.
        prev = step - stride
        tt = torch.full((sample_batch,), step, dtype=torch.long)
        eps = call(x_, tt)
        abar = schedule['abar'][step]
        abar_prev = schedule['abar'][prev] if prev >= 0 else torch.tensor(1.0)
        x0 = torch.clamp((x_ - torch.sqrt(1 - abar) * eps) / torch.sqrt(abar), -1, 1)
        x_ = torch.sqrt(abar_prev) * x0 + torch.sqrt(1 - abar_prev) * eps
    return x_

  result = {'network': 'unet_simple (PyTorch, mirrors ddpm_jax.nets.unet_simple)' if name == 'unet_simple'
            else 'diffusers.UNet2DModel (official DDPM CIFAR-10)', 'model': name,
            'framework': f'torch {torch.__version__}', 'device': 'cpu', 'threads': torch.get_num_threads(),
            'dtype': 'float32', 'params': sum(p.numel() for p in model.parameters()),
            'image': f'{size}x{size}x{channels}', 'batch': batch,
            'train_img_per_s': round(batch / train_s, 2), 'train_step_s': round(train_s, 4),
            'forward_img_per_s': round(batch / forward_s, 2), 'forward_s': round(forward_s, 4),
            'forward_flops_per_image': forward_flops, 'flops_source': 'torch.utils.flop_counter (matmuls, convs)'}
  for sampler, full, run in (('ancestral', T, ancestral), ('ddim', ddim_steps, ddim)):
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
  result['sample_batch'] = sample_batch
  result['peak_host_rss_mib'] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
  result['mfu'] = None
  return result
