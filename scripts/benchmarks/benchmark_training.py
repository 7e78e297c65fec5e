#!/usr/bin/env python
"""Time and memory of one SAGE training alternation, float32 vs mixed precision (``train.amp``).

One alternation is what stage 2 repeats: a student step (teacher forward without gradient, student
forward + backward with the context, contrastive and feature-alignment losses, optimizer step) and
a teacher step (teacher forward + backward with its own fusion loss, the segmentation loss and the
student's feedback, optimizer steps of the teacher and the segmentation net). The model is
:class:`fusion.models.sage_model.SAGEModel` built from ``--opt`` (default
``options/train_sage.yml``: its networks, losses and optimizers) on one real batch of the options'
training set (MFNet samples, superpixel patches) at the paper's 192x256 crop.

Variants (``--variants``), each its own model with the same initial weights:

* ``fp32``: the options as they are (``train.amp: none``, NCHW);
* ``bf16``: ``train.amp: bf16`` + ``train.channels_last: true`` (bf16 pays on CPUs only in NHWC);
* ``fp32_cl``: float32 + ``channels_last`` (which share of the gain is the memory format);
* ``fp16``: ``train.amp: fp16`` with its GradScaler (CUDA; on a CPU it runs in software).

They are timed alternately, repeat by repeat, in one process (load from other jobs hits all
alike); ``"amp_speedup"`` = median fp32 time / median bf16 time. Peak memory: on CUDA
``torch.cuda.max_memory_allocated`` over one alternation; on CPU each variant runs one alternation
in a fresh child process that reports its peak RSS (``VmHWM``) minus its RSS before the
alternation (glibc told to return freed memory at once: ``MALLOC_MMAP_THRESHOLD_``).

The contrastive loss uses ``sam.checkpoint`` when the options give one; otherwise its documented
fallback (``train_sage.yml``: ``random``, a SAM ViT-B encoder of the options' depth with fixed
random weights: the same cost as the real one). The JSON says which (``contrastive_encoder``).

Examples::

    python scripts/benchmarks/benchmark_training.py                         # batch 4, fp32 vs bf16, CPU
    python scripts/benchmarks/benchmark_training.py --batch 1 --repeats 5 --variants fp32 fp32_cl bf16
    python scripts/benchmarks/benchmark_training.py --device cuda --variants fp32 bf16 fp16 --repeats 20
"""
from __future__ import annotations

import argparse
import json
import os
import os.path as osp
import statistics
import sys
import tempfile
import time
from copy import deepcopy
from typing import Dict, List, Optional, Sequence

import torch  # noqa: E402
from bench_util import (ROOT, current_rss_bytes, emit_json, machine_meta, parse_size, peak_rss_bytes,
                        run_measuring_child, seconds_stats, size_str, sync, time_interleaved)

import fusion  # noqa: E402,F401  (basicsr fixes + registries)
from fusion.utils.cli import run_cli  # noqa: E402
from fusion.utils.entry_io import input_arg, number_arg, output_arg, parse_checked  # noqa: E402
from fusion.utils.precision_util import cpu_has_bf16_units  # noqa: E402


VARIANTS = {
    'fp32': {'amp': 'none', 'channels_last': False},
    'fp32_cl': {'amp': 'none', 'channels_last': True},
    'bf16': {'amp': 'bf16', 'channels_last': True},
    'fp16': {'amp': 'fp16', 'channels_last': False},
}


def load_options(path: str) -> dict:
    """The training options of ``path``, validated as fusion/train.py validates them (so that,
    e.g., ``lr: 2e-3``, a string to PyYAML, is a number here too)."""
    import fusion.training  # noqa: F401  (declares the training loop's keys)
    from fusion.utils.option_parser import read_option_file
    from fusion.utils.option_schema import validate_options
    opt = read_option_file(path)
    validate_options(opt, True, source=path)
    return opt


def model_options(base: dict, variant: str, device: torch.device, workdir: str) -> dict:
    """The options' networks, losses and optimizers; a schedule where iteration 1 is a student step
    and 2 a teacher step; the variant's precision; no pretrained weights."""
    opt = deepcopy(base)
    opt.update(name=f'bench_{variant}', is_train=True, dist=False, rank=0, world_size=1, root_path=ROOT,
               num_gpu=1 if device.type == 'cuda' else 0)
    opt['path'] = {'models': workdir, 'training_states': workdir, 'visualization': workdir}
    train = opt['train']
    train.update(total_iter=1000, teacher_pretrain_iter=0, distill_pattern=['student', 'teacher'],
                 offline_distillation=False, seg_start_iter=0, **VARIANTS[variant])
    return opt


def load_batch(base: dict, size: Sequence[int], batch: int) -> dict:
    """``batch`` samples of the options' training set (first ones, crops of ``size``)."""
    from basicsr.data import build_dataset

    from fusion.utils.options_util import resolve_relative_paths
    ds_opt = deepcopy(base['datasets']['train'])
    ds_opt.update(phase='train', gt_size=list(size), use_hflip=False)
    wrapper = {'datasets': {'train': ds_opt}}
    resolve_relative_paths(wrapper, ROOT)
    dataset = build_dataset(wrapper['datasets']['train'])
    items = [dataset[i % len(dataset)] for i in range(batch)]
    return {k: torch.stack([it[k] for it in items]) for k in items[0] if torch.is_tensor(items[0][k])}


def build_model(base: dict, variant: str, device: torch.device, workdir: str, seed: int):
    from basicsr.models import build_model as basicsr_build_model
    torch.manual_seed(seed)  # every variant starts from the same weights
    return basicsr_build_model(model_options(base, variant, device, workdir))


def alternation(model, data: dict, split: Optional[Dict[str, List[float]]] = None) -> None:
    """One student step (iteration 1) and one teacher step (iteration 2) on ``data``."""
    device = model.device
    model.feed_data(data)
    t0 = time.perf_counter()
    model.optimize_parameters(1)
    sync(device)
    t1 = time.perf_counter()
    model.optimize_parameters(2)
    sync(device)
    if split is not None:
        split['student_step'].append(t1 - t0)
        split['teacher_step'].append(time.perf_counter() - t1)


# ---------------------------------------------------------------------------------------------- memory
def child_main(args: argparse.Namespace, base: dict) -> None:
    """One alternation of one variant in this fresh process; prints {"peak_mib": ...}."""
    device = torch.device(args.device)
    data = {k: v.to(device) for k, v in load_batch(base, args.size, args.batch).items()}
    with tempfile.TemporaryDirectory() as workdir:
        model = build_model(base, args.child, device, workdir, args.seed)
        small = {k: v[:1, ..., :32, :32].contiguous() if v.dim() == 4 else v[:1, :32, :32].contiguous()
                 for k, v in data.items()}
        alternation(model, small)  # kernels, workspaces, optimizer state: not the crop's own memory
        base_rss = current_rss_bytes()
        alternation(model, data)
        peak = peak_rss_bytes()
    print(json.dumps({'peak_mib': round((peak - base_rss) / 2 ** 20, 1)}))


def cpu_peak_child(args: argparse.Namespace, variant: str) -> Dict[str, object]:
    cmd = [sys.executable, osp.abspath(__file__), '--child', variant, '--opt', args.opt, '--size',
           size_str(args.size), '--batch', str(args.batch), '--seed', str(args.seed), '--device', 'cpu']
    if args.threads:
        cmd += ['--threads', str(args.threads)]
    return run_measuring_child(cmd)


def cuda_peak(model, data: dict) -> float:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    alternation(model, data)
    return round((torch.cuda.max_memory_allocated() - before) / 2 ** 20, 1)


# ---------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    input_arg(parser, '--opt', kind='file', default=osp.join(ROOT, 'options', 'train_sage.yml'),
              help='training options')
    parser.add_argument('--device', default='cpu', help='cpu | cuda | cuda:N')
    parser.add_argument('--size', type=parse_size, default=(192, 256), help='crop H x W (default 192x256, the paper)')
    number_arg(parser, '--batch', int, min=1, default=4, help='crops per batch (default 4, the paper)')
    parser.add_argument('--variants', nargs='+', default=['fp32', 'bf16'], choices=list(VARIANTS))
    number_arg(parser, '--repeats', int, min=1, default=3, help='timed alternations per variant')
    number_arg(parser, '--warmup', int, min=0, default=1, help='untimed alternations per variant first')
    number_arg(parser, '--threads', int, min=1, default=None, help='torch CPU threads (default: torch default)')
    number_arg(parser, '--seed', int, min=0, default=0)
    parser.add_argument('--no-memory', action='store_true', help='skip the peak-memory measurement')
    output_arg(parser, '--json', kind='file', default=None, help='also write the JSON here')
    parser.add_argument('--child', default=None, help=argparse.SUPPRESS)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parse_checked(parser, argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        base = load_options(args.opt)
    except ValueError as err:  # OptionError: a missing file or bad options, named
        print(f'error: {err}', file=sys.stderr)
        return 1
    if args.child:
        child_main(args, base)
        return 0
    if args.repeats < 1 or args.warmup < 0 or args.batch < 1:
        parser.error('--repeats >= 1, --warmup >= 0, --batch >= 1')
    device = torch.device(args.device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        print('error: --device cuda but CUDA is not available', file=sys.stderr)
        return 1

    load_at_start = os.getloadavg()
    data = {k: v.to(device) for k, v in load_batch(base, args.size, args.batch).items()}
    with tempfile.TemporaryDirectory() as workdir:
        models = {v: build_model(base, v, device, workdir, args.seed) for v in args.variants}
        first = next(iter(models.values()))
        encoder = getattr(first.cri_contrastive, 'encoder_kind', None) if first.cri_contrastive else None
        splits = {v: {'student_step': [], 'teacher_step': []} for v in args.variants}
        losses = {}
        for v, model in models.items():  # first alternation: the losses each variant computes
            alternation(model, data)
            losses[v] = {k: round(float(model.log_dict[k]), 6) for k in ('l_g_total', 'l_t_total')}
        fns = {v: (lambda m=model, s=splits[v]: alternation(m, data, s)) for v, model in models.items()}
        times = time_interleaved(fns, device, max(0, args.warmup - 1), args.repeats,
                                 f'{device} {size_str(args.size)} b{args.batch} alternation')
        for v in args.variants:  # the warm-up runs also filled the split lists: keep the timed ones
            for k in splits[v]:
                splits[v][k] = splits[v][k][-args.repeats:]
        memory: Dict[str, object] = {}
        if not args.no_memory:
            for v, model in models.items():
                memory[v] = ({'peak_mib': cuda_peak(model, data)} if device.type == 'cuda'
                             else cpu_peak_child(args, v))
    medians = {v: statistics.median(ts) for v, ts in times.items()}
    results = {}
    for v in args.variants:
        results[v] = {'settings': VARIANTS[v], 'alternation_s': seconds_stats(times[v]),
                      'student_step_s': seconds_stats(splits[v]['student_step']),
                      'teacher_step_s': seconds_stats(splits[v]['teacher_step']),
                      'speedup_vs_fp32': (round(medians['fp32'] / medians[v], 3) if 'fp32' in medians else None),
                      'first_losses': losses[v]}
        if v in memory:
            results[v]['peak_memory'] = memory[v]
    amp = paired = None
    if {'fp32', 'bf16'} <= set(medians):
        amp = round(medians['fp32'] / medians['bf16'], 3)
        # the repeats ran side by side: each pair's ratio saw the same load
        paired = round(statistics.median(a / b for a, b in zip(times['fp32'], times['bf16'])), 3)
    report = {
        'amp_speedup': amp,
        'amp_speedup_definition': 'median fp32 alternation / median bf16 (train.amp bf16 + channels_last) '
                                  f'alternation, {size_str(args.size)} crops, batch {args.batch}, {device.type}',
        'amp_speedup_paired_median': paired,
        'variants': results,
        'contrastive_encoder': encoder,
        'meta': machine_meta(
            load_avg_start=load_at_start, load_avg_end=os.getloadavg(), repeats=args.repeats, warmup=args.warmup,
            size=size_str(args.size), batch=args.batch, options=osp.relpath(osp.abspath(args.opt), ROOT),
            device=str(device), cpu_bf16_units=cpu_has_bf16_units()),
    }
    emit_json(report, args.json)
    return 0


if __name__ == '__main__':
    run_cli(main)
