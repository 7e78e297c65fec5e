"""Packs IR / visible (/ label) folders into LMDBs for ``io_backend: {type: lmdb}``.

Example:

    python scripts/create_lmdb.py --ir datasets/MFNet/ir --vis datasets/MFNet/vi \\
        --label datasets/MFNet/label --out datasets/MFNet_lmdb --workers 2

Writes <out>/ir.lmdb, <out>/vis.lmdb (and <out>/label.lmdb), each with meta_info.txt
(`<name><ext> (h,w,c) raw`, basicsr's layout). Keys are the base names; values the original
file bytes. Prints a JSON summary.
"""
import argparse
import json
import os.path as osp
import sys


sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from fusion.data.lmdb_images import create_image_lmdbs  # noqa: E402
from fusion.utils.cli import add_pair_arguments, run_cli  # noqa: E402
from fusion.utils.entry_io import number_arg, output_arg, parse_checked  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_pair_arguments(p, label='folder of label images (optional)')
    output_arg(p, '--out', kind='dir', required=True, help='folder receiving ir.lmdb, vis.lmdb, label.lmdb')
    number_arg(p, '--workers', int, min=0, default=0, help='processes reading/validating files (0: in this process)')
    p.add_argument('--overwrite', action='store_true')
    p.add_argument('--quiet', action='store_true')
    return p


def main(argv=None) -> None:
    args = parse_checked(build_parser(), argv)
    summary = create_image_lmdbs(args.ir, args.vis, args.out, label_dir=args.label, workers=args.workers,
                                 overwrite=args.overwrite, progress=not args.quiet)
    print(json.dumps(summary, indent=1))


if __name__ == '__main__':
    run_cli(main)
