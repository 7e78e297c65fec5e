#!/usr/bin/env python
"""Every GPU-only claim of the project checked in one run of under ten minutes.

    python scripts/benchmarks/gpu_checks.py                  # on a GPU machine: every check, one GPU
    python scripts/benchmarks/gpu_checks.py --dry-run        # CPU, toy sizes, < 2 min (CI runs it)
    python scripts/benchmarks/gpu_checks.py --only inference teacher --out results/gpu_checks

Checks (``--only`` names), each in its own child process with its own time limit, so a crash, an
out-of-memory error or a hang in one is recorded and the next one still runs:

* ``inference``: the student at 480x640 and 768x1024, plain fp32 (the official eval-mode forward),
  our fast path in fp32, bf16 and fp16 (``FusionInferencer``): latency (CUDA events, interleaved),
  max difference and PSNR against exact fp32;
* ``training``: one SAGE training alternation (a student step + a teacher step of
  ``options/train_sage.yml``) at 192x256, batch 4: fp32 vs ``train.amp: bf16`` vs ``fp16``: time,
  peak memory, finite losses, and the GradScalers' scale after 20 alternations (fp16);
* ``ddp_resume``: a short training run under ``torchrun --nproc_per_node=1`` (the NCCL backend on
  GPU; 2 processes as well when two GPUs are visible): stopped after iteration 4, continued with
  ``--auto_resume``, and its final weights compared with an uninterrupted run's;
* ``sam_masks``: SAM automatic mask generation on 4 MFNet pairs with a randomly initialised ViT-B of
  the real architecture (the cost does not depend on the weights), official SAGE settings: images
  and masks per minute;
* ``teacher``: the teacher's forward and forward+backward at 192x256, fused SDPA vs plain
  attention, and its peak forward memory at 768x1024;
* ``zoo``: every model-zoo method's latency at 480x640 (random weights: the cost does not depend
  on them), when the zoo is installed (``fusion.zoo``).

Writes ``gpu_checks.json`` (machine, torch/CUDA versions, and per check: status pass / fail /
skipped, seconds, numbers, error line) and ``gpu_checks.md`` (the same as tables) into ``--out``.
Without a CUDA device the command runs the dry run (every check at toy sizes on the CPU; fp16
variants, which need CUDA, are reported as skipped), so the script cannot rot between GPU
sessions. Exit status 1 when a check failed.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import os.path as osp
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence

from bench_util import ROOT, emit_json, machine_meta, ms_stats, sync, time_interleaved

from fusion.utils.entry_io import number_arg, output_arg, parse_checked


DEFAULT_OUT = osp.join('results', 'gpu_checks')


class CheckFailed(Exception):
    """A check ran but what it checks does not hold (its message says what)."""


@dataclass
class Check:
    run: Callable[['Context'], dict]
    timeout_s: int  # on a GPU
    dry_timeout_s: int  # in the dry run on a CPU: a safety net sized for a shared, loaded machine
    what: str


@dataclass
class Context:
    device: 'object'  # torch.device (torch is imported in the child only)
    dry_run: bool
    workdir: str

    @property
    def cuda(self) -> bool:
        return self.device.type == 'cuda'


def _psnr(a, b) -> float:
    mse = float(((a.float() - b.float()) ** 2).mean())
    return float('inf') if mse == 0 else 10 * math.log10(1.0 / mse)


def _finite(value: float) -> Optional[float]:
    return round(value, 3) if math.isfinite(value) else None


# ---------------------------------------------------------------------------------------------- 1
def check_inference(ctx: Context) -> dict:
    import torch
    from bench_util import load_sample_pair

    from fusion.inference import load_student
    from fusion.inferencer import FusionInferencer, exact_fp32
    sizes = [(32, 48), (48, 64)] if ctx.dry_run else [(480, 640), (768, 1024)]
    repeats, warmup = (3, 1) if ctx.dry_run else (30, 5)
    student = load_student(device=ctx.device)
    runners = {'fast_fp32': FusionInferencer(student, ctx.device, max_batch=1)}
    skipped = {}
    for precision in ('bf16', 'fp16'):
        try:
            runners[f'fast_{precision}'] = FusionInferencer(student, ctx.device, max_batch=1, precision=precision)
        except ValueError as err:  # fp16 needs CUDA; bf16 a GPU that has it
            skipped[f'fast_{precision}'] = str(err)
    results = {}
    for size in sizes:
        vis, ir = (t.to(ctx.device) for t in load_sample_pair(size))
        with torch.no_grad(), exact_fp32(ctx.device):
            exact = student(vis, ir)[0]

        def plain():
            with torch.no_grad():  # as the official test code runs it (torch/cuDNN defaults)
                return student(vis, ir)[0]
        fns = {'plain_fp32': plain, **{k: (lambda r=r: r.fuse(vis, ir)) for k, r in runners.items()}}
        times = time_interleaved(fns, ctx.device, warmup, repeats, desc=f'inference {size[0]}x{size[1]}')
        row = {}
        for name, fn in fns.items():
            out = fn()
            sync(ctx.device)
            if not bool(torch.isfinite(out).all()):
                raise CheckFailed(f'{name} at {size[0]}x{size[1]}: non-finite output')
            diff = float((out.float() - exact).abs().max())
            row[name] = {**ms_stats(times[name]), 'max_abs_diff_vs_exact_fp32': diff,
                         'psnr_vs_exact_fp32_db': _finite(_psnr(out, exact))}
        row['speedup_fast_fp32'] = row['plain_fp32']['median_ms'] / row['fast_fp32']['median_ms']
        results[f'{size[0]}x{size[1]}'] = row
        fast_diff = row['fast_fp32']['max_abs_diff_vs_exact_fp32']
        if fast_diff > 1e-4:
            raise CheckFailed(f'fast fp32 differs from exact fp32 by {fast_diff:.2e}')
        for name, floor in (('fast_bf16', 35.0), ('fast_fp16', 45.0)):
            psnr = row.get(name, {}).get('psnr_vs_exact_fp32_db')
            if name in row and psnr is not None and psnr < floor:
                raise CheckFailed(f'{name}: PSNR {psnr:.1f} dB from exact fp32, expected >= {floor}')
    return {'sizes': results, 'skipped_variants': skipped}


# ---------------------------------------------------------------------------------------------- 2
def check_training(ctx: Context) -> dict:
    import benchmark_training as bt
    import torch
    opt = osp.join(ROOT, 'options', 'train_sage_quick_cpu.yml' if ctx.dry_run else 'train_sage.yml')
    size, batch = ((32, 32), 2) if ctx.dry_run else ((192, 256), 4)
    repeats, scale_steps = (2, 3) if ctx.dry_run else (5, 20)
    base = bt.load_options(opt)
    variants, skipped = ['fp32'], {}
    for variant in ('bf16', 'fp16'):
        if variant == 'fp16' and not ctx.cuda:
            skipped[variant] = 'fp16 autocast needs CUDA (refused on the CPU, see docs/mixed_precision.md)'
        elif variant == 'bf16' and ctx.cuda and not torch.cuda.is_bf16_supported():
            skipped[variant] = 'this GPU has no bf16'
        else:
            variants.append(variant)
    data = {k: v.to(ctx.device) for k, v in bt.load_batch(base, size, batch).items()}
    models = {v: bt.build_model(base, v, ctx.device, osp.join(ctx.workdir, v), seed=0) for v in variants}
    for model in models.values():
        bt.alternation(model, data)  # warm-up: kernels, workspaces, optimizer state
    times = time_interleaved({v: (lambda m=m: bt.alternation(m, data)) for v, m in models.items()}, ctx.device,
                             0, repeats, desc='training alternation')
    results = {}
    for variant, model in models.items():
        peak = bt.cuda_peak(model, data) if ctx.cuda else None
        for _ in range(max(0, scale_steps - repeats - 2)):
            bt.alternation(model, data)
        losses = {k: float(v) for k, v in model.get_current_log().items() if k.startswith('l_')}
        bad = sorted(k for k, v in losses.items() if not math.isfinite(v))
        results[variant] = {'median_s': statistics.median(times[variant]), 'all_s': times[variant],
                            'peak_mib': peak, 'alternations': max(scale_steps, repeats + 2),
                            'losses_finite': not bad, 'losses': losses}
        if getattr(model, 'scalers', None):
            results[variant]['grad_scale'] = {k: float(s.get_scale()) for k, s in model.scalers.items()}
        if bad:
            raise CheckFailed(f'{variant}: non-finite losses {bad}')
    for variant in variants[1:]:
        results[f'speedup_{variant}'] = results['fp32']['median_s'] / results[variant]['median_s']
    return {'options': osp.relpath(opt, ROOT), 'size': list(size), 'batch': batch, 'variants': results,
            'skipped_variants': skipped}


# ---------------------------------------------------------------------------------------------- 3
def _latest_nets(exp_dir: str) -> Dict[str, dict]:
    import torch
    models = osp.join(exp_dir, 'models')
    return {f: torch.load(osp.join(models, f), map_location='cpu', weights_only=True)
            for f in sorted(os.listdir(models)) if f.endswith('_latest.pth')}


def check_ddp_resume(ctx: Context) -> dict:
    import torch
    from benchmark_distributed import RUNNER
    iters, stop = (2, 1) if ctx.dry_run else (8, 4)
    nprocs = [1] + ([2] if ctx.cuda and torch.cuda.device_count() >= 2 else [])
    runner = osp.join(ctx.workdir, 'runner.py')
    with open(runner, 'w') as f:
        f.write(RUNNER)
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1', CUBLAS_WORKSPACE_CONFIG=':4096:8')
    if not ctx.cuda:
        env['CUDA_VISIBLE_DEVICES'] = ''
    opt = osp.join(ROOT, 'options', 'train_sage_quick_cpu.yml')
    common = [f'train:total_iter={iters}', f'train:teacher_pretrain_iter={stop // 2 or 1}',
              'train:deterministic=true', 'val=~', 'logger:use_tb_logger=false', 'logger:print_freq=1',
              f'logger:save_checkpoint_freq={stop}', f'num_gpu={1 if ctx.cuda else 0}']
    results = {}
    for nproc in nprocs:
        root = osp.join(ctx.workdir, f'n{nproc}')
        os.makedirs(root)

        def train(name: str, flags: Sequence[str] = (), overrides: Sequence[str] = ()) -> float:
            cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={nproc}', runner,
                   root, '-opt', opt, '--launcher', 'pytorch', *flags, '--force_yml', f'name={name}', *common,
                   *overrides]
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
                raise CheckFailed(f'{nproc} process(es), run {name}: exit {proc.returncode}: '
                                  f'{lines[-1] if lines else "no output"}')
            return time.perf_counter() - t0
        wall = {'uninterrupted': train('full'), 'first_half': train('split', overrides=[f'train:stop_at_iter={stop}'])}
        wall['resumed'] = train('split', ['--auto_resume'], ['train:stop_at_iter=~'])
        full = _latest_nets(osp.join(root, 'experiments', 'full'))
        split = _latest_nets(osp.join(root, 'experiments', 'split'))
        if sorted(full) != sorted(split) or not full:
            raise CheckFailed(f'{nproc} process(es): saved networks differ: {sorted(full)} vs {sorted(split)}')
        worst = 0.0
        for net, state in full.items():
            for key, params in state.items():
                for name, tensor in params.items():
                    other = split[net][key][name]
                    if tensor.is_floating_point():
                        worst = max(worst, float((tensor.double() - other.double()).abs().max()))
                    elif not torch.equal(tensor, other):
                        worst = float('inf')
        backend = 'nccl' if ctx.cuda else 'gloo'
        results[str(nproc)] = {'backend': backend, 'iterations': iters, 'stopped_after': stop, 'wall_s': wall,
                               'max_abs_weight_diff': worst, 'bitwise_equal': worst == 0.0}
        if worst != 0.0:
            raise CheckFailed(f'{nproc} process(es), {backend}: resumed weights differ from the uninterrupted run '
                              f'by up to {worst:.3g}')
    return {'processes': results}


# ---------------------------------------------------------------------------------------------- 4
def check_sam_masks(ctx: Context) -> dict:
    import numpy as np
    import torch
    from segment_anything import SamAutomaticMaskGenerator

    from fusion.data.patch_sources import SAM_OFFICIAL_SETTINGS
    from fusion.utils.img_util import list_pairs, read_image
    from fusion.utils.sam_util import build_sam, build_tiny_sam
    if ctx.dry_run:
        sam, model = build_tiny_sam(img_size=256, seed=0).to(ctx.device).eval(), 'tiny (random)'
        settings = dict(points_per_side=8, crop_n_layers=0, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    else:
        torch.manual_seed(0)
        sam, model = build_sam('vit_b', None, ctx.device), 'vit_b (random weights)'
        settings = dict(SAM_OFFICIAL_SETTINGS)
    generator = SamAutomaticMaskGenerator(sam, output_mode='uncompressed_rle', **settings)
    pairs = list_pairs(osp.join(ROOT, 'datasets', 'MFNet', 'ir'), osp.join(ROOT, 'datasets', 'MFNet', 'vi'))[:4]
    images = []
    for pair in pairs:
        ir = read_image(pair['ir_path'])
        ir = np.repeat(ir[..., :1], 3, axis=2) if ir.ndim == 3 else np.repeat(ir[..., None], 3, axis=2)
        vis = read_image(pair['vis_path'])
        images += [ir, vis[..., ::-1].copy() if vis.ndim == 3 else np.repeat(vis[..., None], 3, axis=2)]
    if ctx.dry_run:
        images = [img[::8, ::8].copy() for img in images]
    generator.generate(images[0])  # warm-up (kernels); not timed
    sync(ctx.device)
    masks, t0 = 0, time.perf_counter()
    for img in images:
        masks += len(generator.generate(img))
    sync(ctx.device)
    seconds = time.perf_counter() - t0
    return {'model': model, 'settings': settings, 'pairs': len(pairs), 'images': len(images),
            'image_size': list(images[0].shape[:2]), 'seconds': seconds, 'images_per_min': 60 * len(images) / seconds,
            'masks': masks, 'masks_per_min': 60 * masks / seconds,
            'note': 'random weights: the cost is that of real weights, the mask count is not'}


# ---------------------------------------------------------------------------------------------- 5
def check_teacher(ctx: Context) -> dict:
    import benchmark_teacher as bt
    import torch
    size = (32, 32) if ctx.dry_run else (192, 256)
    repeats, warmup = (2, 1) if ctx.dry_run else (10, 2)
    args = argparse.Namespace(seed=0, impls=['sdpa', 'plain'], mask_num=4, spa_ablation=None, tile_size=None,
                              tile_overlap=32, batch=1, size=size)
    models = bt.build_models(args, ctx.device)
    inputs = bt.make_inputs(args, ctx.device)
    results = {}
    for mode in ('fwd', 'fwdbwd'):
        fns = {impl: (lambda m=m, mode=mode: bt.run_once(m, inputs, mode)) for impl, m in models.items()}
        times = time_interleaved(fns, ctx.device, warmup, repeats, desc=f'teacher {mode}')
        out = {impl: bt.run_once(m, inputs, 'fwd') for impl, m in models.items()}
        results[mode] = {impl: ms_stats(t) for impl, t in times.items()}
        results[mode]['speedup_sdpa'] = results[mode]['plain']['median_ms'] / results[mode]['sdpa']['median_ms']
        results[mode]['max_abs_diff'] = float((out['sdpa'] - out['plain']).abs().max())
    if results['fwd']['max_abs_diff'] > 1e-3:
        raise CheckFailed(f'SDPA and plain attention differ by {results["fwd"]["max_abs_diff"]:.2e}')
    peak = None
    if ctx.cuda:
        big = argparse.Namespace(**{**vars(args), 'size': (768, 1024), 'impls': ['sdpa']})
        model = bt.build_models(big, ctx.device)['sdpa']
        peak = {'size': [768, 1024], 'sdpa_fwd_peak_mib': bt.cuda_peak(model, bt.make_inputs(big, ctx.device), 'fwd',
                                                                       ctx.device)}
        del model
        torch.cuda.empty_cache()
    return {'size': list(size), 'modes': results, 'peak_memory': peak or 'CUDA only'}


# ---------------------------------------------------------------------------------------------- 6
def check_zoo(ctx: Context) -> dict:
    import torch
    try:
        from fusion.zoo import build_zoo_method, list_zoo_methods
    except ImportError as err:
        return {'skipped': f'no model zoo in this checkout ({err})'}
    from fusion.inferencer import FusionInferencer
    h, w = (32, 48) if ctx.dry_run else (480, 640)
    repeats, warmup = (2, 1) if ctx.dry_run else (20, 3)
    g = torch.Generator().manual_seed(0)
    vis, ir = (torch.rand(1, 1, h, w, generator=g).to(ctx.device) for _ in range(2))
    results, errors = {}, {}
    for name in list_zoo_methods():
        try:
            runner = FusionInferencer(build_zoo_method(name, weights=None, device=ctx.device), ctx.device, max_batch=1)
            times = time_interleaved({name: lambda r=runner: r.fuse(vis, ir)}, ctx.device, warmup, repeats,
                                     desc=f'zoo {name}')
            results[name] = ms_stats(times[name])
        except Exception as err:  # one method failing must not hide the others
            errors[name] = f'{type(err).__name__}: {err}'.splitlines()[0]
    if errors:
        raise CheckFailed(f'zoo methods failed: {errors}')
    return {'size': [h, w], 'methods': results}


CHECKS: Dict[str, Check] = {
    'inference': Check(check_inference, 90, 120, 'student inference: plain / fast fp32 / bf16 / fp16'),
    'training': Check(check_training, 150, 180, 'one SAGE training alternation: fp32 / bf16 / fp16'),
    'ddp_resume': Check(check_ddp_resume, 150, 300, 'torchrun training, stop, --auto_resume, weights equal'),
    'sam_masks': Check(check_sam_masks, 120, 120, 'SAM automatic masks (random ViT-B), official settings'),
    'teacher': Check(check_teacher, 90, 120, 'teacher fwd / fwd+bwd, SDPA vs plain; peak memory'),
    'zoo': Check(check_zoo, 60, 180, 'model zoo latency at 480x640'),
}


# ---------------------------------------------------------------------------------------------- runner
def run_child(name: str, device: str, dry_run: bool, fail: bool) -> None:
    """Runs one check in this process and prints its result as the last line (JSON)."""
    import torch

    import fusion  # noqa: F401  (basicsr fixes + registries)
    if dry_run:
        torch.set_num_threads(1)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir:
        try:
            if fail:
                raise CheckFailed('failure injected by --fail-check')
            numbers = CHECKS[name].run(Context(torch.device(device), dry_run, workdir))
            status = 'skipped' if 'skipped' in numbers else 'pass'
            result = {'status': status, 'numbers': numbers, 'error': None}
        except Exception as err:  # recorded, never raised: the next check must still run
            lines = traceback.format_exception_only(type(err), err)[-1].strip().splitlines()
            result = {'status': 'fail', 'numbers': None, 'error': lines[0] if lines else type(err).__name__}
            traceback.print_exc()
    result['seconds'] = round(time.perf_counter() - t0, 2)
    print(json.dumps(result))


def run_check(name: str, device: str, dry_run: bool, timeout: float, fail: bool = False) -> dict:
    """One check in a child process, within ``timeout`` seconds; never raises."""
    cmd = [sys.executable, osp.abspath(__file__), '--child', name, '--device', device]
    cmd += ['--dry-run'] if dry_run else []
    cmd += ['--fail-check', name] if fail else []
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    if dry_run:
        env.update(OMP_NUM_THREADS='1', CUDA_VISIBLE_DEVICES='')
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {'status': 'fail', 'numbers': None, 'error': f'timed out after {timeout:.0f} s',
                'seconds': round(time.perf_counter() - t0, 2)}
    lines = proc.stdout.strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        err = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        return {'status': 'fail', 'numbers': None, 'seconds': round(time.perf_counter() - t0, 2),
                'error': f'the check process ended with exit {proc.returncode}: {err[-1] if err else "no output"}'}


def summary_markdown(report: dict) -> str:
    meta = report['meta']
    lines = [f'# GPU checks ({report["mode"]})', '',
             f'{meta.get("gpu", "no GPU")}; torch {meta["torch"]}, CUDA {meta.get("cuda") or "none"}; '
             f'{meta["date"]}; {report["seconds"]:.0f} s in all.', '',
             '| check | status | seconds | what | error |', '|---|---|---|---|---|']
    for name, res in report['checks'].items():
        error = (res.get('error') or '').replace('|', '/')
        lines.append(f'| {name} | {res["status"]} | {res.get("seconds", 0):.1f} | {CHECKS[name].what} | {error} |')
    lines += ['', 'Numbers per check: `gpu_checks.json` beside this file.', '']
    for name, res in report['checks'].items():
        if res.get('numbers'):
            lines += [f'## {name}', '', '```json', json.dumps(res['numbers'], indent=1)[:4000], '```', '']
    return '\n'.join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    output_arg(parser, '--out', kind='dir', default=DEFAULT_OUT,
               help=f'folder for gpu_checks.json / .md (default {DEFAULT_OUT})')
    parser.add_argument('--dry-run', action='store_true', help='every check at toy sizes on the CPU')
    parser.add_argument('--device', default='cuda', help='CUDA device (default cuda; the dry run uses the CPU)')
    parser.add_argument('--only', nargs='+', choices=list(CHECKS), default=None, help='run these checks only')
    number_arg(parser, '--budget-s', float, min=0, open_min=True, default=540.0,
               help='wall-clock budget of the whole run in seconds (default 540): a check gets '
                    'the smaller of its own limit and what is left')
    parser.add_argument('--child', choices=list(CHECKS), help=argparse.SUPPRESS)
    parser.add_argument('--fail-check', choices=list(CHECKS), default=None, help=argparse.SUPPRESS)  # tests
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_checked(build_parser(), argv)  # --out checked before any work
    if args.child:
        run_child(args.child, 'cpu' if args.dry_run else args.device, args.dry_run, args.fail_check == args.child)
        return 0
    import torch

    from fusion.utils.file_util import atomic_write_bytes
    dry_run = args.dry_run
    if not dry_run and not torch.cuda.is_available():
        print('note: no CUDA device here: running the dry run (every check at toy sizes on the CPU)', file=sys.stderr)
        dry_run = True
    device = 'cpu' if dry_run else args.device
    start = time.perf_counter()
    checks: Dict[str, dict] = {}
    for name in args.only or list(CHECKS):
        left = args.budget_s - (time.perf_counter() - start)
        if left < 5:
            checks[name] = {'status': 'fail', 'numbers': None, 'seconds': 0.0, 'error': 'no time left in --budget-s'}
            continue
        limit = min(CHECKS[name].dry_timeout_s if dry_run else CHECKS[name].timeout_s, left)
        print(f'[{name}] {CHECKS[name].what} (limit {limit:.0f} s)', file=sys.stderr)
        checks[name] = run_check(name, device, dry_run, limit, fail=args.fail_check == name)
        print(f'[{name}] {checks[name]["status"]} in {checks[name]["seconds"]:.1f} s'
              + (f': {checks[name]["error"]}' if checks[name].get('error') else ''), file=sys.stderr)
    meta = machine_meta(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version() if torch.cuda.is_available()
                        else None, device_count=torch.cuda.device_count())
    report = {'mode': 'dry-run' if dry_run else 'gpu', 'device': device, 'meta': meta,
              'seconds': round(time.perf_counter() - start, 1), 'checks': checks,
              'passed': sum(c['status'] == 'pass' for c in checks.values()),
              'failed': sorted(n for n, c in checks.items() if c['status'] == 'fail')}
    emit_json(report, osp.join(args.out, 'gpu_checks.json'))
    atomic_write_bytes(summary_markdown(report).encode(), osp.join(args.out, 'gpu_checks.md'))
    print(f'{report["passed"]} passed, {len(report["failed"])} failed', file=sys.stderr)
    return 1 if report['failed'] else 0


if __name__ == '__main__':
    from fusion.utils.cli import run_cli
    run_cli(main)
