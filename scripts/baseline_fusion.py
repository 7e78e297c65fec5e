#!/usr/bin/env python
"""Write pixel-mean and/or pixel-max fusions of IR/visible folders, to sanity-check a method.

    python scripts/baseline_fusion.py --ir datasets/TNO/ir --vis datasets/TNO/vi --out results/baselines

writes results/baselines/mean/<name>.png and results/baselines/max/<name>.png: 8-bit grey,
mean = floor((IR + VIS) / 2), max = max(IR, VIS), on the grey images the metrics read. Usually
``scripts/evaluate.py --baseline mean max`` is enough (it computes them on the fly).
"""
import argparse
import os.path as osp
import sys

from tqdm import tqdm


sys.path.insert(0, osp.abspath(osp.join(osp.dirname(__file__), osp.pardir)))

from fusion.metrics.baselines import BASELINES  # noqa: E402
from fusion.utils.cli import add_pair_arguments, run_cli  # noqa: E402
from fusion.utils.entry_io import output_arg, parse_checked  # noqa: E402
from fusion.utils.img_util import ImageReadError, check_same_size, imwrite_atomic, list_pairs, read_gray  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_pair_arguments(parser)
    output_arg(parser, '--out', kind='dir', required=True, help='output folder; one sub-folder per baseline')
    parser.add_argument('--mode', nargs='+', default=sorted(BASELINES), choices=sorted(BASELINES),
                        help='baselines to write (default: both)')
    return parser


def main(argv=None) -> int:
    args = parse_checked(build_parser(), argv)
    try:
        pairs = list_pairs(args.ir, args.vis)
        for pair in tqdm(pairs, desc='baselines', unit='img'):
            ir, vis = read_gray(pair['ir_path']), read_gray(pair['vis_path'])
            check_same_size(ir, vis, pair['ir_path'], pair['vis_path'])
            for mode in args.mode:
                imwrite_atomic(BASELINES[mode](ir, vis), osp.join(args.out, mode, pair['name'] + '.png'))
    except (ImageReadError, ValueError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    print(f'{len(pairs)} pairs -> ' + ', '.join(osp.join(args.out, m) for m in args.mode))
    return 0


if __name__ == '__main__':
    run_cli(main, exit_code=1)
