#!/usr/bin/env python
"""Parity of the zoo methods with their authors' published images: min / median PSNR per method and
reference set (the sets each entry of options/zoo/ names), as JSON and Markdown.

    python scripts/verify_zoo.py                          # every zoo method
    python scripts/verify_zoo.py --methods seafusion ifcnn --out results/verify_zoo

Reads the peers collection beside the repository (``--peers``, default ../shared/peers: its
weights/ and reference images; see its MANIFEST); a method whose weights are absent is skipped
with one line. Writes OUT/verify_zoo.json and OUT/verify_zoo.md.
"""
import argparse
import json
import os.path as osp
import sys


ROOT = osp.abspath(osp.join(osp.dirname(__file__), osp.pardir))
sys.path.insert(0, ROOT)

from fusion.utils.cli import run_cli  # noqa: E402
from fusion.utils.entry_io import input_arg, number_arg, output_arg, parse_checked, plain_arg  # noqa: E402
from fusion.utils.file_util import atomic_write_bytes  # noqa: E402
from fusion.zoo import list_zoo_methods, load_zoo_entry  # noqa: E402
from fusion.zoo.verification import markdown_report, verify_method  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    plain_arg(parser, '--methods', nargs='*', default=None,
              help=f'zoo methods (default: all: {" ".join(list_zoo_methods()[1:])})')
    input_arg(parser, '--peers', kind='dir', default=osp.join(osp.dirname(ROOT), 'shared', 'peers'),
              help='the peers collection (default: ../shared/peers beside the repository)')
    input_arg(parser, '--weights-dir', kind='dir', default=None, help='weights folder (default: PEERS/weights)')
    output_arg(parser, '--out', kind='dir', default='results/verify_zoo',
               help='output folder (default: results/verify_zoo)')
    parser.add_argument('--device', default='cpu', help='cpu | cuda | cuda:N')
    number_arg(parser, '--jpeg-quality', int, min=1, max=100, default=75,
               help='quality of the re-encoding that measures a JPEG reference\'s own error (default 75, '
                    'MATLAB imwrite\'s default, which VIFB used)')
    return parser


def main(argv=None) -> int:
    args = parse_checked(build_parser(), argv)
    if not osp.isdir(args.peers):
        raise ValueError(f'--peers {args.peers}: no such folder (the peers collection with weights/ and the '
                         'published images)')
    weights_dir = args.weights_dir or osp.join(args.peers, 'weights')
    methods = args.methods or list_zoo_methods()[1:]
    if 'sage' in [m.lower() for m in methods]:
        raise ValueError('--methods: sage has no reference sets here (its parity: docs/inference.md)')
    names = [load_zoo_entry(m).name for m in methods]  # unknown names: the closest ones, before any work
    reports = []
    for name in names:
        report = verify_method(name, args.peers, weights_dir, args.device, args.jpeg_quality)
        if report.get('skipped'):
            print(f'{name}: skipped, {report["skipped"]}', file=sys.stderr)
        reports.append(report)
    command = 'python scripts/verify_zoo.py' + (f' --methods {" ".join(names)}' if args.methods else '')
    md = markdown_report(reports, command)
    atomic_write_bytes((json.dumps({'methods': reports}, indent=2) + '\n').encode(),
                       osp.join(args.out, 'verify_zoo.json'))
    atomic_write_bytes(md.encode(), osp.join(args.out, 'verify_zoo.md'))
    print(md)
    return 0


if __name__ == '__main__':
    run_cli(main, exit_code=1)
