#!/usr/bin/env python
"""Benchmark the SAGE teacher: fused SDPA attention vs the plain einsum/softmax reference.

Both variants are the same network with the same weights (proj_out perturbed so the attention
actually matters) run in one process, interleaved repeat by repeat so that CPU load from other
jobs hits both alike. Prints one JSON object to stdout; ``"speedup"`` = reference / ours for
forward+backward (median times).

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` minus what was allocated before the
call; on CPU each (variant, mode) runs once in a fresh child process and reports its peak RSS
(``VmHWM``; not ``ru_maxrss``, which Linux carries over from the forking parent across exec)
minus its RSS just before the call. The child runs with ``MALLOC_MMAP_THRESHOLD_=65536`` so
glibc returns freed tensor memory at once and RSS follows the live tensors. The plain reference is
not run where its N x N attention matrices alone would not fit in the available memory (estimate reported).

Examples::

    python scripts/benchmarks/benchmark_teacher.py                       # 1x1x192x256, mask_num 4, CPU
    python scripts/benchmarks/benchmark_teacher.py --device cuda --size 768 1024 --modes fwd
    python scripts/benchmarks/benchmark_teacher.py --size 768 1024 --modes fwd --impls sdpa --tile-size 384
"""
from __future__ import annotations

import argparse
import json
import os
import os.path as osp
import platform
import statistics
import sys
import time
from typing import Dict, List, Sequence

import torch  # noqa: E402
from bench_util import current_rss_bytes, peak_rss_bytes, run_measuring_child, seconds_stats, sync, time_once
from tqdm import tqdm  # noqa: E402

import fusion  # noqa: E402,F401  (registers archs, applies basicsr fixes)
from fusion.archs.sage_teacher_arch import SAGETeacher  # noqa: E402
from fusion.utils.cli import run_cli  # noqa: E402
from fusion.utils.entry_io import number_arg, parse_checked  # noqa: E402


HEADS = 2


def attention_matrix_bytes(h: int, w: int, batch: int = 1, heads: int = HEADS) -> int:
    """Bytes of one float32 attention matrix (B x heads x N x N) at the finest SPA scale, where
    N = (H/4)*(W/4) tokens. The plain formulation keeps the scores and the softmax of at least
    one such matrix alive at a time (2x this), and 4x when training (saved for backward)."""
    n = (h // 4) * (w // 4)
    return batch * heads * n * n * 4


def available_bytes(device: torch.device) -> int:
    if device.type == 'cuda':
        return torch.cuda.mem_get_info(device)[0]
    with open('/proc/meminfo') as f:
        for line in f:
            if line.startswith('MemAvailable:'):
                return int(line.split()[1]) * 1024
    return 0


def build_models(args: argparse.Namespace, device: torch.device) -> Dict[str, SAGETeacher]:
    torch.manual_seed(args.seed)
    models: Dict[str, SAGETeacher] = {}
    state = None
    for impl in args.impls:
        model = SAGETeacher(mask_num=args.mask_num, attention=impl, spa_ablation=args.spa_ablation,
                            tile_size=args.tile_size, tile_overlap=args.tile_overlap)
        if state is None:
            # trained-like transformers: at init proj_out = 0 would make attention irrelevant
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if '.proj_out.' in name:
                        p.normal_(0, 0.05)
            state = model.state_dict()
        model.load_state_dict(state)
        models[impl] = model.to(device)
    return models


def make_inputs(args: argparse.Namespace, device: torch.device) -> List[torch.Tensor]:
    g = torch.Generator().manual_seed(args.seed + 1)
    b, (h, w), m = args.batch, args.size, args.mask_num
    vis = torch.rand(b, 1, h, w, generator=g)
    ir = torch.rand(b, 1, h, w, generator=g)
    # masked intensities as the dataset produces them: source * random blob masks
    vis_p = vis * (torch.rand(b, m, h, w, generator=g) > 0.5)
    ir_p = ir * (torch.rand(b, m, h, w, generator=g) > 0.5)
    return [t.to(device) for t in (vis, ir, vis_p, ir_p)]


def run_once(model: SAGETeacher, inputs: Sequence[torch.Tensor], mode: str):
    if mode == 'fwd':
        model.eval()
        with torch.no_grad():
            return model(*inputs)[0]
    model.train()
    model.zero_grad(set_to_none=True)
    fused, feats = model(*inputs)
    loss = fused.mean() + sum(f.mean() for f in feats)
    loss.backward()
    return fused.detach()


def cuda_peak(model: SAGETeacher, inputs: Sequence[torch.Tensor], mode: str, device: torch.device) -> float:
    model.zero_grad(set_to_none=True)
    sync(device)
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    run_once(model, inputs, mode)
    sync(device)
    peak = torch.cuda.max_memory_allocated(device) - before
    model.zero_grad(set_to_none=True)
    return peak / 2 ** 20


def child_main(args: argparse.Namespace) -> None:
    """One measured call in a fresh process; prints {"peak_mb": ...}."""
    device = torch.device('cpu')
    impl, mode = args.child
    args.impls = [impl]
    model = build_models(args, device)[impl]
    inputs = make_inputs(args, device)
    # first calls load kernels/workspaces (~200 MiB RSS, size independent): do them on a tiny
    # input first so the measured delta is the call's own memory
    small = [t[..., :16, :16].contiguous() for t in inputs]
    run_once(model, small, mode)
    model.zero_grad(set_to_none=True)
    base = current_rss_bytes()
    t0 = time.perf_counter()
    run_once(model, inputs, mode)
    elapsed = time.perf_counter() - t0
    peak = peak_rss_bytes()
    print(json.dumps({'peak_mb': round((peak - base) / 2 ** 20, 1), 'seconds': round(elapsed, 3)}))


def cpu_peak_child(args: argparse.Namespace, impl: str, mode: str) -> Dict[str, object]:
    cmd = [sys.executable, osp.abspath(__file__), '--child', impl, mode, '--size', *map(str, args.size),
           '--batch', str(args.batch), '--mask-num', str(args.mask_num), '--seed', str(args.seed),
           '--tile-overlap', str(args.tile_overlap)]
    if args.tile_size:
        cmd += ['--tile-size', str(args.tile_size)]
    if args.spa_ablation:
        cmd += ['--spa-ablation', args.spa_ablation]
    if args.threads:
        cmd += ['--threads', str(args.threads)]
    return run_measuring_child(cmd)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default='cpu', help='cpu | cuda | cuda:N')
    number_arg(parser, '--size', int, min=1, nargs=2, default=[192, 256], metavar=('H', 'W'))
    number_arg(parser, '--batch', int, min=1, default=1)
    number_arg(parser, '--mask-num', int, min=1, default=4)
    number_arg(parser, '--repeats', int, min=1, default=3, help='timed runs per variant and mode')
    number_arg(parser, '--warmup', int, min=0, default=1, help='untimed runs per variant and mode')
    parser.add_argument('--modes', nargs='+', default=['fwd', 'fwdbwd'], choices=['fwd', 'fwdbwd'])
    parser.add_argument('--impls', nargs='+', default=['sdpa', 'plain'], choices=['sdpa', 'plain'])
    parser.add_argument('--spa-ablation', default=None, choices=['no_latent', 'no_kv', 'no_repository'])
    number_arg(parser, '--tile-size', int, min=1, default=None, help='tiled inference with this tile size')
    number_arg(parser, '--tile-overlap', int, min=0, default=32)
    parser.add_argument('--no-memory', action='store_true', help='skip the peak-memory measurement')
    number_arg(parser, '--threads', int, min=1, default=None, help='torch.set_num_threads (default: torch default)')
    number_arg(parser, '--seed', int, min=0, default=0)
    parser.add_argument('--child', nargs=2, default=None, help=argparse.SUPPRESS)
    return parser


def main(argv=None) -> None:
    parser = build_parser()
    args = parse_checked(parser, argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        child_main(args)
        return

    device = torch.device(args.device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda given but CUDA is not available')
    h, w = args.size
    att_bytes = attention_matrix_bytes(h, w, args.batch)
    avail = available_bytes(device)
    impls = list(args.impls)
    skipped = {}
    if 'plain' in impls and args.tile_size is None:
        # scores + softmax (x2), x2 more when both are kept for backward; leave 25 % headroom
        need = att_bytes * (4 if 'fwdbwd' in args.modes else 2)
        if need > 0.75 * avail:
            skipped['plain'] = (f'not run: its attention matrices need ~{need / 2 ** 30:.1f} GiB, '
                                f'{avail / 2 ** 30:.1f} GiB available')
            impls.remove('plain')
    args.impls = impls
    if not impls:
        print(json.dumps({'skipped': skipped}, indent=2))
        return

    models = build_models(args, device)
    inputs = make_inputs(args, device)
    load_before = os.getloadavg()
    times: Dict[str, Dict[str, List[float]]] = {i: {m: [] for m in args.modes} for i in impls}
    for mode in args.modes:
        for impl in impls:
            for _ in range(args.warmup):
                run_once(models[impl], inputs, mode)
    for _ in tqdm(range(args.repeats), desc='repeats', file=sys.stderr):
        for mode in args.modes:
            for impl in impls:  # interleaved: load changes hit both variants alike
                times[impl][mode].append(time_once(lambda: run_once(models[impl], inputs, mode), device))
    load_after = os.getloadavg()

    result: Dict[str, object] = {
        'device': str(device) if device.type == 'cpu' else torch.cuda.get_device_name(device),
        'torch': torch.__version__, 'python': platform.python_version(),
        'threads': torch.get_num_threads(), 'cpu_count': os.cpu_count(),
        'loadavg_before_after': [round(load_before[0], 2), round(load_after[0], 2)],
        'input': [args.batch, 1, h, w], 'mask_num': args.mask_num, 'spa_ablation': args.spa_ablation,
        'tile_size': args.tile_size, 'tile_overlap': args.tile_overlap if args.tile_size else None,
        'params': sum(p.numel() for p in models[impls[0]].parameters()),
        'finest_scale_tokens': (h // 4) * (w // 4),
        'attention_matrix_mib_finest_scale': round(att_bytes / 2 ** 20, 1),
        'repeats': args.repeats, 'warmup': args.warmup, 'skipped': skipped, 'variants': {},
    }
    for impl in impls:
        entry = {f'{mode}_s': seconds_stats(times[impl][mode]) for mode in args.modes}
        if not args.no_memory:
            for mode in args.modes:
                if device.type == 'cuda':
                    entry[f'{mode}_peak_mib'] = round(cuda_peak(models[impl], inputs, mode, device), 1)
                else:
                    entry[f'{mode}_peak_mib'] = cpu_peak_child(args, impl, mode)
        result['variants'][impl] = entry
    if len(impls) == 2:
        with torch.no_grad():
            outs = [models[i].eval()(*inputs)[0] for i in impls]
        result['max_abs_diff_fused_sdpa_vs_plain'] = float((outs[0] - outs[1]).abs().max())
        for mode in args.modes:
            ref, ours = times['plain'][mode], times['sdpa'][mode]
            key = 'speedup' if mode == 'fwdbwd' else f'speedup_{mode}'
            result[key] = round(statistics.median(ref) / statistics.median(ours), 3)
            result[f'{key}_of_min_times'] = round(min(ref) / min(ours), 3)
            # ratio within each interleaved repeat, then the median: robust to slow drifts in load
            result[f'{key}_paired_median'] = round(statistics.median(r / o for r, o in zip(ref, ours)), 3)
    print(json.dumps(result, indent=2))


if __name__ == '__main__':
    run_cli(main)
