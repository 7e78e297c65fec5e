#!/usr/bin/env python
"""Compare fusion methods: every metric for every method over folders of results.

    python scripts/evaluate.py --ir datasets/MFNet/ir --vis datasets/MFNet/vi \\
        --fused sage=results/mfnet --baseline mean max --out results/eval_mfnet

    python scripts/evaluate.py --ir DIR --vis DIR --fused sage=DIR --convention tang

--convention picks the metric toolbox reproduced (docs/metrics.md: use the one of the papers you
compare with): cddfuse (default; CDDFuse's Python Evaluator), tang (Tang's MATLAB toolbox: EN SD SF
AG MI SCD VIF Qabf CC PSNR MSE) or vifb (VIFB's MATLAB metrics, colour per channel). Every table,
CSV and JSON names the convention; JSON keys are the toolbox's own metric names.

Fused folders hold one image per pair with the same base name as the IR/visible files (any
extension; with cddfuse colour results are converted to grey with OpenCV's weights). Prints the table of means
and writes into --out: metrics.json ({method: {"mean": {...}, "per_image": {...}}}), metrics.csv
(means), metrics_per_image.csv, metrics.md and comparison.png (IR, visible and every method for a
few pairs). Unpaired files stop the run with their names listed; unreadable or wrongly sized files
are named, left out of every method, and make the exit status 1.
"""
import argparse
import os.path as osp
import sys
from typing import List, Optional


sys.path.insert(0, osp.abspath(osp.join(osp.dirname(__file__), osp.pardir)))

from fusion.metrics.baselines import BASELINES  # noqa: E402
from fusion.metrics.conventions import CONVENTIONS, DEFAULT_CONVENTION, get_convention  # noqa: E402
from fusion.metrics.evaluation import comparison_grid, evaluate_folders, format_table, write_outputs  # noqa: E402
from fusion.metrics.fusion_metrics import ALL_METRICS, DEFAULT_METRICS  # noqa: E402
from fusion.metrics.metric_util import keep_freed_memory  # noqa: E402
from fusion.utils.cli import add_pair_arguments, parse_named_folders, run_cli  # noqa: E402
from fusion.utils.entry_io import input_arg, number_arg, output_arg, parse_checked, plain_arg  # noqa: E402
from fusion.utils.img_util import ImageReadError, imwrite_atomic  # noqa: E402


def _parse_metric_list(values: Optional[List[str]]) -> Optional[List[str]]:
    if not values:
        return None
    return [v for item in values for v in item.replace(',', ' ').split() if v]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_pair_arguments(parser)
    input_arg(parser, '--fused', kind='named_dirs', nargs='*', default=[], metavar='NAME=DIR',
              help='fused results of each method')
    parser.add_argument('--baseline', nargs='*', default=[], choices=sorted(BASELINES),
                        help='add pixel mean / max fusions as reference methods')
    output_arg(parser, '--out', kind='dir', default='results/evaluation',
               help='output folder (default: results/evaluation)')
    output_arg(parser, '--json', kind='file', default=None, default_in=('out', 'metrics.json'),
               help='JSON path (default: OUT/metrics.json)')
    parser.add_argument('--convention', default=DEFAULT_CONVENTION, choices=sorted(CONVENTIONS),
                        help='metric toolbox to reproduce: cddfuse (default), tang, vifb (see docs/metrics.md)')
    parser.add_argument('--metrics', nargs='*', default=None,
                        help=f'metrics to compute (default: all of the convention; cddfuse: '
                             f'{" ".join(DEFAULT_METRICS)}; '
                             f'extra: {" ".join(m for m in ALL_METRICS if m not in DEFAULT_METRICS)}; tang: '
                             f'{" ".join(get_convention("tang").default_metrics)}; vifb: '
                             f'{" ".join(get_convention("vifb").default_metrics)})')
    plain_arg(parser, '--skip', nargs='*', default=[], help='metrics to leave out, e.g. --skip fmi (the slowest)')
    parser.add_argument('--fmi-feature', default='none', choices=['none', 'dct'],
                        help='FMI feature (default: none; cddfuse only)')
    number_arg(parser, '--ssim-data-range', float, min=0, open_min=True, default=2.0,
               help='SSIM data_range (default 2.0 = CDDFuse; 255 gives conventional values; cddfuse only)')
    number_arg(parser, '--psnr-peak', float, min=0, open_min=True, default=None,
               help='PSNR peak (default: max of the fused image; cddfuse only)')
    number_arg(parser, '--grid-images', int, min=0, default=4, help='pairs shown in comparison.png (0: no picture)')
    number_arg(parser, '--workers', int, min=1, default=1, help='processes computing metrics in parallel')
    parser.add_argument('--quiet', action='store_true', help='no progress bar')
    return parser


def _selected_metrics(args) -> List[str]:
    """The metrics to compute: ``--metrics`` (default: all of the convention) less ``--skip``;
    nothing left is an error."""
    convention = get_convention(args.convention)
    metrics = convention.resolve(_parse_metric_list(args.metrics))
    skip = {m.lower() for m in _parse_metric_list(args.skip) or []}
    unknown = sorted(skip - {m.lower() for m in convention.all_metrics})
    if unknown:
        raise ValueError(f'--skip: unknown metric(s) {unknown} for convention {convention.name}')
    metrics = [m for m in metrics if m.lower() not in skip]
    if not metrics:
        raise ValueError('--metrics / --skip: no metric left to compute')
    return metrics


def main(argv=None) -> int:
    args = parse_checked(build_parser(), argv)
    keep_freed_memory()  # image-sized temporaries: ~40 % faster on machines with costly page faults
    try:
        metrics = _selected_metrics(args)
        methods = parse_named_folders(args.fused)
        convention = get_convention(args.convention)
        if convention.name != DEFAULT_CONVENTION and (args.psnr_peak is not None or args.ssim_data_range != 2.0
                                                      or args.fmi_feature != 'none'):
            raise ValueError(f'--psnr-peak, --ssim-data-range and --fmi-feature apply to --convention '
                             f'{DEFAULT_CONVENTION} only: the {convention.name} toolbox has no such settings')
        options = {'fmi': {'feature': args.fmi_feature}, 'ssim': {'data_range': args.ssim_data_range},
                   'psnr': {'peak': args.psnr_peak}}
        result = evaluate_folders(args.ir, args.vis, methods, baselines=args.baseline, metrics=metrics,
                                  options=options, workers=args.workers, progress=not args.quiet,
                                  convention=convention.name)
    except (ImageReadError, ValueError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 2
    print(f'\n{len(result.images)} images, {len(result.methods)} methods, convention {result.convention} '
          '(* = best per metric)\n')
    print(format_table(result))
    picture = None
    if result.images and args.grid_images > 0:
        picture = 'comparison.png'
        grid = comparison_grid(result, methods, max_images=args.grid_images)
        imwrite_atomic(grid, osp.join(args.out, picture), rgb=False)
    paths = write_outputs(result, args.out, json_path=args.json, picture_name=picture)
    print('\nwritten: ' + ', '.join(paths.values()) + (f', {osp.join(args.out, picture)}' if picture else ''))
    if result.problems:
        print(f'\n{len(result.problems)} image(s) left out of every method:', file=sys.stderr)
        for problem in result.problems:
            print(f'  {problem}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    run_cli(main)
