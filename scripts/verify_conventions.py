#!/usr/bin/env python
"""Verify the toolbox metric conventions against the toolboxes' own published values.

    python scripts/verify_conventions.py --out results/verify_conventions

Reads the peers collection (default ``../shared/peers`` beside the repository; see its MANIFEST):
``tno/`` with ``tang_toolbox_values.csv`` (Tang's MATLAB toolbox, 21 TNO images x 9 methods) for
``tang``, ``vifb/`` with ``vifb_toolbox_values.csv`` (VIFB's MATLAB code, 10 pairs x 25 methods) for
``vifb``. Recomputes every value through the evaluation code of scripts/evaluate.py and writes
``verify_conventions.json`` (per metric: count, fraction within 1e-3 relative or 1e-6 absolute,
worst case, every value outside the target) and ``verify_conventions.md`` (the tables of
docs/metrics.md) into --out.
"""
import argparse
import json
import os.path as osp
import sys


ROOT = osp.abspath(osp.join(osp.dirname(__file__), osp.pardir))
sys.path.insert(0, ROOT)

from fusion.metrics.convention_check import check_convention, summary_markdown  # noqa: E402
from fusion.metrics.metric_util import keep_freed_memory  # noqa: E402
from fusion.utils.cli import run_cli  # noqa: E402
from fusion.utils.entry_io import input_arg, number_arg, output_arg, parse_checked  # noqa: E402
from fusion.utils.file_util import atomic_write_bytes  # noqa: E402


# convention -> (folder in the peers collection, reference CSV in it)
CHECKS = {'tang': ('tno', 'tang_toolbox_values.csv'), 'vifb': ('vifb', 'vifb_toolbox_values.csv')}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    input_arg(parser, '--peers', kind='dir', default=osp.join(ROOT, osp.pardir, 'shared', 'peers'),
              help='the peers collection (default: ../shared/peers beside the repository)')
    parser.add_argument('--conventions', nargs='*', default=list(CHECKS), choices=list(CHECKS),
                        help='conventions to check (default: all)')
    output_arg(parser, '--out', kind='dir', default=osp.join('results', 'verify_conventions'), help='output folder')
    number_arg(parser, '--workers', int, min=1, default=1, help='processes computing metrics in parallel')
    parser.add_argument('--quiet', action='store_true', help='no progress bar')
    return parser


def main(argv=None) -> int:
    args = parse_checked(build_parser(), argv)  # --out against --peers, before any work
    keep_freed_memory()
    if not osp.isdir(args.peers):
        raise ValueError(f'--peers {args.peers}: no such folder (the peers collection with tno/ and vifb/; '
                         'see its MANIFEST)')
    sources = {}
    for name in args.conventions:
        folder, values = CHECKS[name]
        csv_path = osp.join(args.peers, folder, values)
        if not osp.isfile(csv_path):
            raise ValueError(f'--peers {args.peers}: {osp.join(folder, values)} is missing')
        sources[name] = (osp.join(args.peers, folder), csv_path)

    reports = {}
    for name, (root, csv_path) in sources.items():
        print(f'{name}: {csv_path}', flush=True)
        reports[name] = check_convention(root, csv_path, name, workers=args.workers, progress=not args.quiet)
    markdown = summary_markdown(reports)
    json_path = osp.join(args.out, 'verify_conventions.json')
    md_path = osp.join(args.out, 'verify_conventions.md')
    atomic_write_bytes((json.dumps(reports, indent=2) + '\n').encode(), json_path)
    atomic_write_bytes(markdown.encode(), md_path)
    print('\n' + markdown)
    print(f'written: {json_path}, {md_path}')
    return 0


if __name__ == '__main__':
    run_cli(main)
