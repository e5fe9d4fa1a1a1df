#!/usr/bin/env bash
# GPU check: the official DDPM UNet's train images/s and MFU at batch 128 in float32 and bfloat16
# (mixed precision), its sampling images/s (1000-step ancestral, 50-step DDIM); the 256-pixel
# UNet's (LSUN/CelebA-HQ, 113.7M parameters) train images/s, MFU and peak memory at the paper's
# batch 64 in bfloat16, with and without remat; and Inception-v3 feature images/s (random
# weights; speed does not depend on them). JSON lines, then a summary.
#
#   bash benchmarks/gpu_check.sh                     # on one GPU; under 8 min (stages time out at
#                                                    # 60 + 210 + 150 + 60 s; GPU_CHECK_*_TIMEOUT change them)
#   GPU_CHECK_SMOKE=1 bash benchmarks/gpu_check.sh   # anywhere: tiny sizes on the CPU, same code
#
# Needs only jax, flax, optax, orbax-checkpoint, absl-py (an optax dependency) and numpy; no
# network, TensorFlow, CLU, ml_collections or torch. The smoke run hides them (and diffusers) from Python
# (a sitecustomize that refuses to import them) to prove it. Without a GPU it stops at once,
# unless GPU_CHECK_SMOKE=1. Results also go to $GPU_CHECK_OUT (default: a temporary folder).
# PYTHON (default python3) picks the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
SMOKE=${GPU_CHECK_SMOKE:-0}
OUT=${GPU_CHECK_OUT:-$(mktemp -d -t gpu_check.XXXXXX)}
mkdir -p "$OUT"
START=$(date +%s)

if [[ "$SMOKE" == 1 ]]; then
  # Tiny: 2 images, 1 timed step, 2 reverse steps of each sampler (extrapolated), 4 Inception images.
  THROUGHPUT_ARGS=(--batch=2 --steps=1 --sample_steps=2 --cpu_devices=1)
  # The 256-pixel stage's code on the 32-pixel UNet (the 256 one takes a minute a step on a CPU).
  LARGE_ARGS=(--models=ddpm --batch=2 --steps=1 --cpu_devices=1)
  INCEPTION_ARGS=(--num_images=4 --batch=2 --iters=1)
  REQUIRE=cpu
  # Hide what the GPU machine lacks.
  HIDE="$OUT/hide_modules"
  mkdir -p "$HIDE"
  cat >"$HIDE/sitecustomize.py" <<'EOF'
import importlib.abc
import sys

HIDDEN = ('tensorflow', 'tensorflow_datasets', 'clu', 'ml_collections', 'torch', 'diffusers')


class _Hide(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name.split('.')[0] in HIDDEN:
      raise ModuleNotFoundError(f'No module named {name!r} (hidden by gpu_check.sh smoke mode)', name=name)
    return None


sys.meta_path.insert(0, _Hide())
EOF
  export PYTHONPATH="$HIDE${PYTHONPATH:+:$PYTHONPATH}"
else
  # Batch 128 as DDPM trains; 10 timed train steps; full sampler chains; 2,048 Inception images.
  THROUGHPUT_ARGS=(--batch=128 --steps=10 --sample_steps=0)
  LARGE_ARGS=(--models=ddpm_256 --batch=64 --steps=3)
  INCEPTION_ARGS=(--num_images=2048 --batch=256 --iters=3)
  REQUIRE=gpu
fi

# 1. The environment: fails fast (exit 2) without a GPU, unless in smoke mode.
timeout "${GPU_CHECK_ENV_TIMEOUT:-60}" "$PYTHON" - "$REQUIRE" <<'EOF' | tee "$OUT/environment.jsonl"
import importlib.util
import json
import sys

import jax



def present(module: str) -> bool:
  try:
    return importlib.util.find_spec(module) is not None
  except (ImportError, ValueError):
    return False


required = sys.argv[1]
modules = {m: present(m) for m in ('flax', 'optax', 'orbax', 'absl', 'ml_collections', 'tensorflow', 'clu', 'torch')}
devices = jax.devices()
print(json.dumps({'check': 'environment', 'jax': jax.__version__, 'backend': jax.default_backend(),
                  'devices': [d.device_kind for d in devices], 'modules': modules}), flush=True)
if required == 'gpu' and jax.default_backend() != 'gpu':
  print(f'gpu_check.sh: no GPU: JAX runs on {jax.default_backend()!r} ({devices}). Run it on the GPU '
        f'machine, or set GPU_CHECK_SMOKE=1 for a tiny run on this one.', file=sys.stderr)
  sys.exit(2)
EOF

# 2. DDPM UNet: train, forward, samplers; each dtype in its own process, bfloat16 (the MFU target's)
# first, so that its line is in even if the stage times out during float32.
status=0
timeout "${GPU_CHECK_TRAIN_TIMEOUT:-210}" "$PYTHON" benchmarks/throughput.py --models=ddpm --dtype=bfloat16,float32 --skip_torch \
  "${THROUGHPUT_ARGS[@]}" | tee "$OUT/throughput.jsonl" || status=$?

# 3. The 256-pixel UNet: train step in bfloat16, remat first (the setting that fits if only one
# does), then without; no sampling (a 1000-step chain of it is minutes).
timeout "${GPU_CHECK_LARGE_TIMEOUT:-150}" "$PYTHON" benchmarks/throughput.py --dtype=bfloat16 --remat=on,off --skip_torch \
  --skip_sampling "${LARGE_ARGS[@]}" | tee "$OUT/large.jsonl" || status=$?

# 4. Inception-v3 pool3 features (ddpm_jax.nets.inception, as FID runs it) on random 32x32 images.
timeout "${GPU_CHECK_INCEPTION_TIMEOUT:-60}" "$PYTHON" benchmarks/fid.py --notorch "${INCEPTION_ARGS[@]}" | tee "$OUT/inception.jsonl" || status=$?

# 5. Summary.
"$PYTHON" - "$OUT" "$START" "$SMOKE" "$status" <<'EOF'
import json
import os
import sys
import time

out, start, smoke, status = sys.argv[1], int(sys.argv[2]), sys.argv[3] == '1', int(sys.argv[4])


def lines(name):
  path = os.path.join(out, name)
  if not os.path.exists(path):
    return []
  return [json.loads(line) for line in open(path) if line.startswith('{')]


ddpm = [r for r in lines('throughput.jsonl') if r.get('model') == 'ddpm']
large = [r for r in lines('large.jsonl') if r.get('model') in ('ddpm', 'ddpm_256')]
inception = [r for r in lines('inception.jsonl') if 'images_per_s' in r]
summary = {'summary': 'gpu_check', 'smoke': smoke, 'seconds': int(time.time() - start), 'exit_status': status}
for r in ddpm:
  keys = ('error', 'batch', 'train_img_per_s', 'mfu', 'mfu_tf32', 'train_tflop_per_s', 'train_flops_per_image',
          'executed_train_flops_per_image',
          'sample_batch', 'sample_ancestral_img_per_s', 'sample_ddim_img_per_s', 'sample_ancestral_extrapolated',
          'peak_device_mib', 'device')
  summary[f'ddpm_{r["dtype"]}'] = {k: r[k] for k in keys if k in r}
for r in large:
  keys = ('error', 'batch', 'train_img_per_s', 'mfu', 'train_flops_per_image', 'peak_device_mib', 'device')
  summary[f'{r["model"]}_{r["dtype"]}_remat_{"on" if r.get("remat") else "off"}'] = {
      k: r[k] for k in keys if k in r}
if inception:
  summary['inception'] = {k: inception[-1][k] for k in ('images_per_s', 'batch', 'num_images', 'backend')}
print(json.dumps(summary), flush=True)
print(f'\nDDPM UNet ({"smoke run, tiny sizes" if smoke else "batch 128"}):', file=sys.stderr)
for r in ddpm:
  if 'error' in r:
    print(f'  {r["dtype"]:9s} FAILED: {r["error"]}', file=sys.stderr)
    continue
  mfu = 'n/a' if r.get('mfu') is None else f'{100 * r["mfu"]:.1f}%'
  tf32 = f' (vs tf32 peak {100 * r["mfu_tf32"]:.1f}%)' if r.get('mfu_tf32') is not None else ''
  print(f'  {r["dtype"]:9s} train {r["train_img_per_s"]:9.1f} img/s  MFU {mfu}{tf32}  '
        f'sampling: ancestral {r.get("sample_ancestral_img_per_s")} img/s, DDIM-50 {r.get("sample_ddim_img_per_s")} img/s',
        file=sys.stderr)
print(f'\n{"DDPM UNet (smoke: the 256-pixel stage on the 32-pixel UNet)" if smoke else "256-pixel UNet, batch 64"}:',
      file=sys.stderr)
for r in large:
  if 'error' in r:
    print(f'  {r["dtype"]:9s} remat {r.get("remat")}: FAILED: {r["error"]}', file=sys.stderr)
    continue
  mfu = 'n/a' if r.get('mfu') is None else f'{100 * r["mfu"]:.1f}%'
  print(f'  {r["dtype"]:9s} remat {"on " if r["remat"] else "off"} train {r["train_img_per_s"]:9.2f} img/s  MFU {mfu}  '
        f'peak device memory {r.get("peak_device_mib")} MiB', file=sys.stderr)
if inception:
  print(f'Inception-v3 features: {inception[-1]["images_per_s"]} img/s', file=sys.stderr)
print(f'{summary["seconds"]} s; results in {out}', file=sys.stderr)
EOF
exit "$status"
