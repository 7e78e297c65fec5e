#!/usr/bin/env python
"""Compare fusion methods in one command: fuse with each, score, profile.

    python scripts/compare_methods.py --ir DIR --vis DIR --methods sage seafusion ifcnn \\
        --weights-dir WEIGHTS --out results/compare

Fuses with each method into OUT/fused/<method>/ (a zoo method whose weights are not under
--weights-dir, as <dir>/<Folder>/<files as published> or <dir>/<files>, is skipped with one line;
``sage`` is the bundled student), then writes scripts/evaluate.py's tables (OUT/metrics.json,
metrics.csv, metrics_per_image.csv, metrics.md) and OUT/comparison.png, and per method parameters,
FLOPs (at --profile-size, default 480x640) and CPU latency: OUT/methods.json and OUT/methods.md.
The fused folders feed scripts/evaluate_segmentation.py --fused NAME=OUT/fused/NAME.
"""
import argparse
import datetime
import os.path as osp
import platform
import sys


ROOT = osp.abspath(osp.join(osp.dirname(__file__), osp.pardir))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

from fusion.inference import fuse_folders, resolve_device  # noqa: E402
from fusion.metrics.fusion_metrics import ALL_METRICS, DEFAULT_METRICS  # noqa: E402
from fusion.utils.cli import add_pair_arguments, run_cli  # noqa: E402
from fusion.utils.entry_io import input_arg, number_arg, output_arg, parse_checked, plain_arg  # noqa: E402
from fusion.utils.file_util import check_output_location  # noqa: E402
from fusion.zoo import build_zoo_method, list_zoo_methods  # noqa: E402
from fusion.zoo.comparison import (evaluate_and_write, profile_method, resolve_method_weights,  # noqa: E402
                                   write_profiles)


def _size(text: str):
    try:
        h, w = (int(v) for v in text.lower().split('x'))
    except ValueError:
        raise argparse.ArgumentTypeError(f'size must look like 480x640 (H x W), got {text!r}') from None
    return h, w


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_pair_arguments(parser)
    plain_arg(parser, '--methods', nargs='+', default=['sage'], help=f'of: {" ".join(list_zoo_methods())}')
    input_arg(parser, '--weights-dir', kind='dir', default=osp.join(osp.dirname(ROOT), 'shared', 'peers', 'weights'),
              help='folder of the published weights, one sub-folder per method as in the peers collection '
                   '(default: ../shared/peers/weights beside the repository)')
    output_arg(parser, '--out', kind='dir', required=True, help='output folder')
    parser.add_argument('--device', default='auto', help='auto | cpu | cuda | cuda:N (fusing; profiling is on CPU)')
    plain_arg(parser, '--metrics', nargs='*', default=None, help=f'default: {" ".join(DEFAULT_METRICS)}')
    plain_arg(parser, '--skip', nargs='*', default=[], help='metrics to leave out, e.g. --skip fmi (the slowest)')
    number_arg(parser, '--grid-images', int, min=0, default=4, help='pairs in comparison.png (0: none)')
    parser.add_argument('--profile-size', type=_size, default=(480, 640), help='H x W for FLOPs and latency')
    number_arg(parser, '--latency-repeats', int, min=0, default=3, help='timed runs per method (0: no latency)')
    number_arg(parser, '--workers', int, min=1, default=1, help='processes computing metrics')
    parser.add_argument('--quiet', action='store_true', help='no progress bars')
    return parser


def main(argv=None) -> int:
    args = parse_checked(build_parser(), argv)
    unknown = sorted({m.lower() for m in args.skip} - set(ALL_METRICS))
    if unknown:
        raise ValueError(f'--skip: unknown metric(s) {unknown}')
    metrics = [m for m in (args.metrics or DEFAULT_METRICS) if m.lower() not in {s.lower() for s in args.skip}]
    weights, skipped = resolve_method_weights(args.methods, args.weights_dir)
    inputs = [('--ir', args.ir), ('--vis', args.vis)] + [(f'--weights of {m}', w) for m, w in weights.items() if w]
    check_output_location(args.out, inputs, what='--out')
    for name, why in skipped.items():
        print(f'{name}: skipped, {why}', file=sys.stderr)
    if not weights:
        raise ValueError('--methods: no method left to compare (all skipped)')
    device = resolve_device(args.device)
    fused_dirs = {}
    for name, path in weights.items():
        folder = osp.join(args.out, 'fused', name)
        fuse_folders(args.ir, args.vis, folder, build_zoo_method(name, path, device), progress=not args.quiet)
        fused_dirs[name] = folder
    table, problems = evaluate_and_write(args.ir, args.vis, fused_dirs, args.out, metrics, args.grid_images,
                                         args.workers, progress=not args.quiet)
    print(table)
    rows = [profile_method(name, path, args.profile_size, args.latency_repeats, latency=args.latency_repeats > 0)
            for name, path in weights.items()]
    meta = {'date': datetime.datetime.now().isoformat(timespec='seconds'), 'torch': torch.__version__,
            'cpu': platform.processor() or platform.machine(), 'cpu_threads': torch.get_num_threads()}
    write_profiles(rows, skipped, args.out, meta)
    print(f'written: {args.out}/fused/<method>/, metrics.{{json,csv,md}}, comparison.png, methods.{{json,md}}')
    for problem in problems:
        print(f'left out of every method: {problem}', file=sys.stderr)
    return 1 if problems else 0


if __name__ == '__main__':
    run_cli(main, exit_code=1)
