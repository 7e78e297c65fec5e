"""Training throughput with 1 vs N processes under torchrun (DDP; gloo on CPU, NCCL on GPU), and
SAM mask generation with 1 vs N shards. Prints JSON (docs/benchmarks.md, docs/distributed.md).

    python scripts/benchmarks/benchmark_distributed.py                      # quick recipe, 1 and 2 processes
    python scripts/benchmarks/benchmark_distributed.py --nproc 1 2 4 --opt options/train_sage.yml
    python scripts/benchmarks/benchmark_distributed.py --masks --mask-model tiny   # masks/min, 1 vs 2 shards

Training: each run is the real entry point under ``torchrun --standalone`` (also for 1 process),
in a temporary root (nothing lands in experiments/), with ``train.total_iter`` iterations, no
validation and no intermediate checkpoints. Seconds per iteration are basicsr's average iteration
time of the last log line (the steady state, start-up excluded); samples/s = processes x batch per
process / seconds per iteration; ``wall_s`` includes start-up. The runs alternate process counts
``--rounds`` times so that load from other jobs hits every count alike.

Masks: ``scripts/generate_masks.py`` on the bundled MFNet pairs, once in one process and once
under torchrun with N processes (the shards then merged), timed from the outside (start-up included).
"""
from __future__ import annotations

import argparse
import os
import os.path as osp
import re
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

from bench_util import ROOT, emit_json, machine_meta

from fusion.utils.cli import run_cli
from fusion.utils.entry_io import input_arg, number_arg, output_arg, parse_checked, plain_arg


RUNNER = """
import sys
root, *args = sys.argv[1:]
sys.argv = ['fusion'] + args
import fusion
from fusion.pipeline import train_pipeline
train_pipeline(root)
"""


def _env(threads: int) -> Dict[str, str]:
    return dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS=str(threads))


def _train_once(opt: str, nproc: int, iters: int, threads: int, tmp: str, tag: str) -> Dict[str, float]:
    root = osp.join(tmp, tag)
    os.makedirs(root)
    runner = osp.join(root, 'runner.py')
    with open(runner, 'w') as f:
        f.write(RUNNER)
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={nproc}', runner, root,
           '-opt', osp.abspath(opt), '--launcher', 'pytorch', '--force_yml', f'train:total_iter={iters}',
           f'train:teacher_pretrain_iter={min(iters // 6, 10)}', f'logger:print_freq={max(1, iters // 2)}',
           f'logger:save_checkpoint_freq={10 * iters}', 'val:val_freq=~', f'num_threads={threads}',
           'logger:use_tb_logger=false']
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(threads), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f'training with {nproc} process(es) failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}')
    logs = [osp.join(dp, f) for dp, _, fs in os.walk(osp.join(root, 'experiments')) for f in fs if f.endswith('.log')]
    text = open(logs[0]).read()
    times = re.findall(r'time \(data\): ([\d.]+) \(([\d.]+)\)', text)
    batch = int(re.search(r'Batch size per gpu: (\d+)', text).group(1))
    s_per_iter = float(times[-1][0])
    return {'s_per_iter': s_per_iter, 'iters_per_s': 1.0 / s_per_iter, 'samples_per_s': nproc * batch / s_per_iter,
            'batch_per_process': batch, 'wall_s': wall}


def _masks_once(nproc: int, model: str, tmp: str, tag: str, threads: int, limit: int = 0) -> Dict[str, float]:
    from fusion.utils.img_util import list_pairs
    ir, vis = osp.join(ROOT, 'datasets', 'MFNet', 'ir'), osp.join(ROOT, 'datasets', 'MFNet', 'vi')
    names = [p['name'] for p in list_pairs(ir, vis)][:limit or None]
    n_pairs = len(names)
    script = [osp.join(ROOT, 'scripts', 'generate_masks.py'), '--ir', ir, '--vis', vis,
              '--out', osp.join(tmp, f'{tag}.lmdb'), '--model-type', model, '--quiet']
    if limit:
        script += ['--names', ','.join(names)]
    if model == 'tiny':
        script += ['--points-per-side', '8', '--crop-n-layers', '0', '--pred-iou-thresh', '1.0',
                   '--stability-score-thresh', '0']
    cmd = [sys.executable] + (['-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={nproc}']
                              if nproc > 1 else []) + script
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(threads), capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f'mask generation with {nproc} process(es) failed:\n{proc.stderr[-3000:]}')
    return {'pairs': n_pairs, 'wall_s': wall, 'pairs_per_min': 60.0 * n_pairs / wall}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    input_arg(p, '--opt', kind='file', default=osp.join(ROOT, 'options', 'train_sage_quick_cpu.yml'))
    number_arg(p, '--nproc', int, min=1, nargs='+', default=[1, 2], help='process counts to compare')
    number_arg(p, '--iters', int, min=1, default=60, help='train.total_iter of each run')
    number_arg(p, '--threads', int, min=1, default=1, help='torch/OpenMP threads per process')
    number_arg(p, '--rounds', int, min=1, default=1, help='alternations of the process counts')
    p.add_argument('--masks', action='store_true', help='benchmark sharded mask generation instead')
    plain_arg(p, '--mask-model', default='tiny', help='SAM model type for --masks (tiny: random test model)')
    number_arg(p, '--mask-pairs', int, min=0, default=0, help='--masks: the first N bundled MFNet pairs (0: all)')
    output_arg(p, '--json', kind='file', help='also write the report here')
    return p


def main(argv=None) -> None:
    p = build_parser()
    args = parse_checked(p, argv)
    results: Dict[str, List[Dict[str, float]]] = {str(n): [] for n in args.nproc}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for n in args.nproc:
                tag = f'r{r}_n{n}'
                if args.masks:
                    results[str(n)].append(_masks_once(n, args.mask_model, tmp, tag, args.threads, args.mask_pairs))
                else:
                    results[str(n)].append(_train_once(args.opt, n, args.iters, args.threads, tmp, tag))
    report = {'benchmark': 'masks' if args.masks else 'training',
              'meta': machine_meta(threads_per_process=args.threads, cpu_count=os.cpu_count()),
              'options': osp.relpath(args.opt, ROOT) if not args.masks else None,
              'iters': None if args.masks else args.iters, 'mask_model': args.mask_model if args.masks else None,
              'results': results}
    emit_json(report, args.json)


if __name__ == '__main__':
    run_cli(main)
