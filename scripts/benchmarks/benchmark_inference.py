#!/usr/bin/env python
"""Size and speed of the SAGE student (plain vs our fast path) and the teacher, in one process.

For every device and size: parameters, FLOPs (``torch.utils.flop_counter.FlopCounterMode``,
2 x multiply-accumulates, counted on the meta device so nothing is allocated) and latency per image
of

* ``student_plain``: the eval-mode student as the official test code runs it (``model.eval()``,
  ``torch.no_grad()``, NCHW float32, ``out, _ = model(y, ir)``, torch/cuDNN defaults);
* ``student_ours``: :class:`fusion.inferencer.FusionInferencer` on the student's ``fuse_for_inference()``
  (BN folded, fused oneDNN kernels on CPU, channels_last, inference_mode, exact fp32 on CUDA), batch 1;
* ``student_ours_bN``: the same with N equal-size pairs per call (time per image);
* ``student_ours_bf16``: the same fast path in bfloat16 (``FusionInferencer(precision='bf16')``: a
  bf16 copy of the folded weights, bf16 activations in channels_last, oneDNN's fused bf16 kernels
  on CPU), batch 1; its ``psnr_vs_fp32_db`` is the PSNR of its output against the fp32 fast path's
  (``--no-bf16`` leaves it out; on CUDA only where the GPU supports bf16);
* ``teacher``: :class:`SAGETeacher` (random weights; speed does not depend on them) with
  mask_num 4 patch channels, when the arch is importable. On CPU only at ``--teacher-cpu-sizes``
  (its attention is O((HW/16)^2): 768x1024 needs tens of GB and minutes on CPU).

plain and ours are timed alternately, repeat by repeat, so that load from other processes on a
shared machine hits both alike; the speed-up is the ratio of their medians. CPU times use
``time.perf_counter``; CUDA times use CUDA events after ``--warmup`` untimed runs. The
compute-bound floor is the student's FLOPs divided by the best fp32 matmul throughput measured on
the same device (TF32 off), i.e. the time the student would take if its convolutions ran at
matmul speed. ``max_abs_diff_vs_exact`` compares each path with the plain student in exact fp32 on a
real M3FD image resized to the size (on CUDA torch's defaults let cuDNN use TF32 in the plain path,
which shows up there as ~5e-4; ours keeps fp32 exact).

Prints a table and one JSON object (also written to ``--json``); ``"student_speedup"`` is
plain / ours at ``--speedup-size`` (default 480x640) on the CPU, ``"bf16_speedup"`` plain /
ours_bf16 there (the CPU flags in ``meta.cpu`` say whether bf16 has hardware behind it:
``avx512_bf16`` or ``amx_bf16``).

Examples::

    python scripts/benchmarks/benchmark_inference.py                                  # CPU (+ CUDA when available)
    python scripts/benchmarks/benchmark_inference.py --device cuda --sizes 768x1024 480x640 --repeats 50 \
        --json bench_gpu.json
    python scripts/benchmarks/benchmark_inference.py --device cpu --sizes 480x640 --repeats 10 --no-teacher
"""
from __future__ import annotations

import argparse
import math
import os
import os.path as osp
import statistics
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import torch  # noqa: E402
from bench_util import (ROOT, count_flops, emit_json, load_sample_pair, machine_meta, matmul_gflops, ms_stats, n_params,
                        parse_size, size_str, time_interleaved)

import fusion  # noqa: E402,F401  (basicsr fixes + registries)
from fusion.archs.sage_student_arch import SAGEStudent  # noqa: E402
from fusion.inference import DEFAULT_MODEL, load_student  # noqa: E402
from fusion.inferencer import FusionInferencer, exact_fp32  # noqa: E402
from fusion.utils.cli import run_cli  # noqa: E402
from fusion.utils.entry_io import input_arg, number_arg, output_arg, parse_checked  # noqa: E402
from fusion.utils.precision_util import cpu_has_bf16_units  # noqa: E402


def try_import_teacher():
    try:
        from fusion.archs.sage_teacher_arch import SAGETeacher
    except ImportError as err:
        print(f'note: teacher skipped, fusion.archs.sage_teacher_arch.SAGETeacher is not importable ({err})',
              file=sys.stderr)
        return None
    return SAGETeacher


# ---------------------------------------------------------------------------------------------
def bench_device(device: torch.device, args: argparse.Namespace, student: SAGEStudent, teacher_cls,
                 rows: List[dict]) -> Dict[str, dict]:
    matmul = matmul_gflops(device)
    print(f'[{device}] fp32 matmul {matmul["n"]}^3: {matmul["gflops"]:.1f} GFLOP/s', file=sys.stderr)
    plain = student.to(device).eval()
    ours = FusionInferencer(student, device, max_batch=args.batch)
    ours_bf16 = None
    if not args.no_bf16 and (device.type == 'cpu' or torch.cuda.is_bf16_supported()):
        ours_bf16 = FusionInferencer(student, device, max_batch=1, precision='bf16')
    fast_params = n_params(ours.net)
    for size in args.sizes:
        h, w = size
        vis, ir = (t.to(device) for t in load_sample_pair(size))
        vis_b, ir_b = vis.repeat(args.batch, 1, 1, 1), ir.repeat(args.batch, 1, 1, 1)
        shapes = [(1, 1, h, w), (1, 1, h, w)]
        flops_plain = count_flops(SAGEStudent, shapes, lambda m, x: m(*x))
        flops_ours = count_flops(lambda: SAGEStudent().fuse_for_inference(), shapes, lambda m, x: m(*x))
        floor_ms = flops_plain / (matmul['gflops'] * 1e9) * 1000.0

        def run_plain() -> torch.Tensor:
            with torch.no_grad():
                out, _ = plain(vis, ir)
            return out

        fns = {'student_plain': run_plain, 'student_ours': lambda: ours.fuse(vis, ir)}
        if args.batch > 1:
            fns[f'student_ours_b{args.batch}'] = lambda: ours.fuse(vis_b, ir_b)
        if ours_bf16 is not None:
            fns['student_ours_bf16'] = lambda: ours_bf16.fuse(vis, ir)
        # equality against the exact fp32 student: on CUDA torch's default lets cuDNN use TF32 for
        # fp32 convolutions, which moves the plain output by ~5e-4 (reported separately)
        with exact_fp32(device):
            plain_exact = run_plain()
        diffs = {'student_ours': float((plain_exact - ours.fuse(vis, ir)).abs().max())}
        if args.batch > 1:
            diffs[f'student_ours_b{args.batch}'] = float((plain_exact - ours.fuse(vis_b, ir_b)).abs().max())
        psnr_bf16 = None
        if ours_bf16 is not None:
            out_bf16 = ours_bf16.fuse(vis, ir)
            diffs['student_ours_bf16'] = float((plain_exact - out_bf16).abs().max())
            mse = float(((ours.fuse(vis, ir).clamp(0, 1) - out_bf16.clamp(0, 1)) ** 2).mean())
            psnr_bf16 = 10 * math.log10(1 / mse) if mse > 0 else float('inf')
        plain_default_diff = float((plain_exact - run_plain()).abs().max())
        times = time_interleaved(fns, device, args.warmup, args.repeats, f'{device} {size_str(size)} student')
        plain_median = statistics.median(times['student_plain'])
        for name, ts in times.items():
            per = args.batch if name.endswith(f'_b{args.batch}') else 1
            row = {'device': device.type, 'size': size_str(size), 'model': name,
                   'params': n_params(plain) if name == 'student_plain' else fast_params,
                   'gflops': (flops_plain if name == 'student_plain' else flops_ours) / 1e9,
                   'batch': per, **ms_stats(ts, per), 'floor_ms': floor_ms}
            if name == 'student_plain':
                row['max_abs_diff_vs_exact'] = plain_default_diff
            else:
                row['speedup_vs_plain'] = plain_median / row['median_ms'] * 1000.0
                row['max_abs_diff_vs_exact'] = diffs[name]
            if name == 'student_ours_bf16':
                row['psnr_vs_fp32_db'] = psnr_bf16
            rows.append(row)
        speedup = plain_median / statistics.median(times['student_ours'])
        print(f'[{device}] {size_str(size)}: plain {plain_median * 1e3:.1f} ms, '
              f'ours {statistics.median(times["student_ours"]) * 1e3:.1f} ms, x{speedup:.2f}, '
              f'max |diff| {diffs["student_ours"]:.1e}', file=sys.stderr)
        if ours_bf16 is not None:
            bf16_median = statistics.median(times['student_ours_bf16'])
            print(f'[{device}] {size_str(size)}: ours bf16 {bf16_median * 1e3:.1f} ms, '
                  f'x{plain_median / bf16_median:.2f} vs plain, {psnr_bf16:.1f} dB from fp32', file=sys.stderr)
        bench_teacher(device, args, teacher_cls, size, rows, matmul)
    return {'matmul': matmul}


def bench_teacher(device: torch.device, args: argparse.Namespace, teacher_cls, size: Tuple[int, int],
                  rows: List[dict], matmul: dict) -> None:
    if teacher_cls is None or args.no_teacher:
        return
    if device.type == 'cpu' and size not in args.teacher_cpu_sizes:
        print(f'note: teacher not run on CPU at {size_str(size)} (attention over (HW/16)^2 token pairs; '
              f'add the size to --teacher-cpu-sizes to force it)', file=sys.stderr)
        return
    h, w = size
    m = args.mask_num
    shapes = [(1, 1, h, w), (1, 1, h, w), (1, m, h, w), (1, m, h, w)]
    row = {'device': device.type, 'size': size_str(size), 'model': 'teacher', 'batch': 1}
    try:
        flops = count_flops(lambda: teacher_cls(mask_num=m), shapes, lambda mod, x: mod(*x))
        teacher = teacher_cls(mask_num=m).to(device).eval()
        row.update(params=n_params(teacher), gflops=flops / 1e9,
                   floor_ms=flops / (matmul['gflops'] * 1e9) * 1000.0)
        g = torch.Generator().manual_seed(0)
        inputs = [torch.rand(s, generator=g).to(device) for s in shapes]

        def run() -> None:
            with torch.no_grad():
                teacher(*inputs)  # noqa: F821 (bound above; the del below is after the last call)

        times = time_interleaved({'teacher': run}, device, min(args.warmup, 1), args.teacher_repeats,
                                 f'{device} {size_str(size)} teacher')
        row.update(ms_stats(times['teacher']))
        del teacher, inputs
    except (RuntimeError, MemoryError) as err:  # CUDA OOM, CPU allocation failure
        msg = str(err).splitlines()[0][:200]
        row['skipped'] = f'failed: {msg}'
        print(f'note: teacher at {size_str(size)} on {device} failed: {msg}', file=sys.stderr)
        if device.type == 'cuda':
            torch.cuda.empty_cache()
    rows.append(row)


def format_table(rows: List[dict]) -> str:
    head = ['device', 'size', 'model', 'batch', 'params', 'GFLOPs', 'median ms/img', 'min ms/img', 'floor ms',
            'speedup', 'max abs diff']
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for r in rows:
        def f(key: str, fmt: str) -> str:
            return format(r[key], fmt) if key in r else '-'
        lines.append('| ' + ' | '.join([
            r['device'], r['size'], r['model'], str(r.get('batch', 1)), f('params', ','), f('gflops', '.1f'),
            f('median_ms', '.1f') if 'skipped' not in r else r['skipped'][:40], f('min_ms', '.1f'),
            f('floor_ms', '.1f'), f('speedup_vs_plain', '.2f'), f('max_abs_diff_vs_exact', '.1e')]) + ' |')
    return '\n'.join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--device', default='auto', choices=['auto', 'cpu', 'cuda'],
                        help='auto: CPU, plus CUDA when available')
    parser.add_argument('--sizes', nargs='+', type=parse_size, default=[(768, 1024), (480, 640)],
                        help='H x W sizes (default 768x1024 480x640)')
    number_arg(parser, '--repeats', int, min=1, default=10, help='timed runs per model and size (median reported)')
    number_arg(parser, '--warmup', int, min=0, default=2, help='untimed runs first')
    number_arg(parser, '--batch', int, min=1, default=4, help='pairs per call for the batched row (1: no row)')
    input_arg(parser, '--checkpoint', kind='file', default=DEFAULT_MODEL,
              help='student weights (default: the released ones)')
    number_arg(parser, '--threads', int, min=1, default=None, help='torch CPU threads (default: torch default)')
    parser.add_argument('--no-teacher', action='store_true', help='skip the teacher')
    parser.add_argument('--no-bf16', action='store_true', help='skip the bf16 fast-path row')
    parser.add_argument('--teacher-cpu-sizes', nargs='*', type=parse_size, default=[(192, 256)],
                        help='sizes at which the teacher runs on CPU (default 192x256; it is added to --sizes)')
    number_arg(parser, '--teacher-repeats', int, min=1, default=3)
    number_arg(parser, '--mask-num', int, min=1, default=4, help="teacher patch channels per modality")
    parser.add_argument('--speedup-size', type=parse_size, default=(480, 640),
                        help='size whose CPU plain/ours ratio is reported as "student_speedup"')
    output_arg(parser, '--json', kind='file', default=None, help='also write the JSON here')
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parse_checked(parser, argv)
    if args.repeats < 1 or args.warmup < 0 or args.batch < 1:
        parser.error('--repeats >= 1, --warmup >= 0, --batch >= 1')
    if args.threads:
        torch.set_num_threads(args.threads)

    devices = [torch.device('cpu')] if args.device in ('auto', 'cpu') else []
    if args.device == 'cuda' or (args.device == 'auto' and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            print('error: --device cuda but CUDA is not available', file=sys.stderr)
            return 1
        devices.append(torch.device('cuda'))

    try:
        student = load_student(args.checkpoint)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    teacher_cls = None if args.no_teacher else try_import_teacher()

    load_at_start = os.getloadavg()
    rows: List[dict] = []
    per_device: Dict[str, dict] = {}
    for device in devices:
        sizes = list(args.sizes)
        if device.type == 'cpu' and teacher_cls is not None:
            # the teacher's CPU sizes need student rows too, for a side-by-side line
            sizes += [s for s in args.teacher_cpu_sizes if s not in sizes]
        dev_args = argparse.Namespace(**{**vars(args), 'sizes': sizes})
        per_device[device.type] = bench_device(device, dev_args, student, teacher_cls, rows)
        if device.type == 'cuda':
            per_device['cuda']['name'] = torch.cuda.get_device_name(device)

    speedup = bf16_speedup = None
    for r in rows:
        if r['device'] == 'cpu' and r['size'] == size_str(args.speedup_size):
            if r['model'] == 'student_ours':
                speedup = r['speedup_vs_plain']
            elif r['model'] == 'student_ours_bf16':
                bf16_speedup = r['speedup_vs_plain']
    report = {
        'student_speedup': speedup,
        'student_speedup_definition': f'median plain / median ours, CPU, {size_str(args.speedup_size)}, batch 1',
        'bf16_speedup': bf16_speedup,
        'bf16_speedup_definition': f'median plain (fp32, eval mode) / median ours in bf16, CPU, '
                                   f'{size_str(args.speedup_size)}, batch 1',
        'rows': rows,
        'devices': per_device,
        'meta': machine_meta(
            load_avg_start=load_at_start, load_avg_end=os.getloadavg(), repeats=args.repeats, warmup=args.warmup,
            checkpoint=osp.relpath(args.checkpoint, ROOT),
            teacher='measured' if teacher_cls is not None and not args.no_teacher else 'skipped',
            cpu_bf16_units=cpu_has_bf16_units()),
    }
    print(format_table(rows))
    emit_json(report, args.json)
    return 0


if __name__ == '__main__':
    run_cli(main)
