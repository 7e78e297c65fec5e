#!/usr/bin/env python
"""Register infrared images onto their visible partners before fusion (docs/registration.md).

    python scripts/register_pairs.py --ir datasets/TNO/ir --vis datasets/TNO/vi --out results/tno_reg

Writes OUT/ir (infrared warped onto the visible grid, same names), OUT/vis (the visible images),
OUT/check (before | after checkerboards) and a JSON report (H, score, ok, reason per pair);
pairs without a confident estimate are listed at the end and not written unless --keep-unsure.
"""
import argparse
import os.path as osp
import sys


sys.path.insert(0, osp.abspath(osp.join(osp.dirname(__file__), osp.pardir)))

from fusion.registration import MODELS, RegistrationOptions, load_transform, register_folders  # noqa: E402
from fusion.registration.estimate import DISTORTIONS, REFINE_METHODS, REFINE_MODELS  # noqa: E402
from fusion.utils.cli import add_pair_arguments, run_cli  # noqa: E402
from fusion.utils.entry_io import input_arg, number_arg, output_arg, parse_checked  # noqa: E402


def add_registration_arguments(parser: argparse.ArgumentParser) -> None:
    """The options shared with ``scripts/inference.py --register``."""
    parser.add_argument('--model', default='similarity', choices=MODELS,
                        help='similarity (default) | affine | homography (adds a refinement of the full model)')
    parser.add_argument('--refine', default=RegistrationOptions.refine_model, choices=REFINE_MODELS,
                        help='model of the refinement after the grid searches (default homography; none: off)')
    parser.add_argument('--refine-method', default=RegistrationOptions.refine_method, choices=REFINE_METHODS,
                        help='blocks (default: block matching, robust fit) | gauss_newton')
    parser.add_argument('--distortion', default=RegistrationOptions.distortion, choices=DISTORTIONS,
                        help='radial (default: the block refinement also fits the lens term k1) | none '
                             '(a plain homography)')
    number_arg(parser, '--parallax-weight', float, min=0, max=1, open_min=True,
               default=RegistrationOptions.parallax_weight,
               help='weight of the block residuals along their main direction where they have one (parallax; '
                    f'default {RegistrationOptions.parallax_weight}; 1: every direction alike)')
    number_arg(parser, '--min-score', float, default=None,
               help=f'confidence threshold, a z score (default {RegistrationOptions.min_score})')
    number_arg(parser, '--fit-once', int, min=0, nargs='?', const=0, default=None, metavar='N',
               help='one transform for a fixed rig, fitted over all (or N sampled) pairs, applied to all')
    input_arg(parser, '--transform', kind='file', default=None,
              help='apply this saved transform (JSON "H" and optional "k1", or 3 rows)')
    parser.add_argument('--keep-unsure', action='store_true', help='write the unsure pairs too')


def options_from_args(args) -> RegistrationOptions:
    kw = {'model': args.model, 'refine_model': args.refine, 'refine_method': args.refine_method,
          'distortion': args.distortion, 'parallax_weight': args.parallax_weight}
    if args.min_score is not None:
        kw['min_score'] = args.min_score
    return RegistrationOptions(**kw)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_pair_arguments(parser)
    output_arg(parser, '--out', kind='dir', required=True, help='output folder (ir/, vis/, check/, registration.json)')
    output_arg(parser, '--json', kind='file', default=None, default_in=('out', 'registration.json'),
               help='report path (default OUT/registration.json)')
    add_registration_arguments(parser)
    return parser


def main(argv=None) -> int:
    args = parse_checked(build_parser(), argv)
    if args.fit_once is not None and args.transform:
        raise ValueError('--fit-once and --transform exclude each other')
    if args.fit_once is not None and args.fit_once < 0:
        raise ValueError(f'--fit-once N must be >= 0, got {args.fit_once}')
    transform = load_transform(args.transform) if args.transform else None
    report = register_folders(args.ir, args.vis, args.out, options_from_args(args), json_path=args.json,
                              fit_once_n=args.fit_once, transform=transform, keep_unsure=args.keep_unsure)
    n = len(report['pairs'])
    unsure = report['unsure']
    print(f'{n - len(unsure)} of {n} pairs registered with confidence; report: {report["json"]}')
    if unsure:
        print(f'{len(unsure)} unsure ({"written" if args.keep_unsure else "not written"}):')
        for item in unsure:
            print(f'  {item["name"]}: {item["reason"]}')
    return 0


if __name__ == '__main__':
    run_cli(main, exit_code=1)
