"""Crops large IR/visible(/label) pairs and their mask-cache entries into overlapping sub-images.

Example (FMB-sized images into 384x512 windows every 192x256 px, 4 processes):

    python scripts/extract_subimages.py --ir datasets/FMB/train/ir --vis datasets/FMB/train/vi \\
        --label datasets/FMB/train/label --mask-cache datasets/FMB/train/masks_sam.lmdb \\
        --out datasets/FMB/train_sub --crop-size 384 512 --step 192 256 --thresh-size 64 --workers 4

Writes <out>/ir, <out>/vi, <out>/label (PNG, source bit depth) and <out>/masks.lmdb. A remainder
at the right/bottom border larger than --thresh-size gets one more crop flush with the border.
Prints a JSON summary.
"""
import argparse
import json
import os.path as osp
import sys


sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from fusion.data.subimages import extract_subimages  # noqa: E402
from fusion.utils.cli import add_pair_arguments, run_cli  # noqa: E402
from fusion.utils.entry_io import input_arg, number_arg, output_arg, parse_checked  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_pair_arguments(p, label='folder of label images (optional)')
    input_arg(p, '--mask-cache', kind='dir', help='mask cache of the full images (crops it too)')
    output_arg(p, '--out', kind='dir', required=True, help='output folder (ir/, vis/, label/, mask cache)')
    number_arg(p, '--crop-size', int, min=1, nargs='+', required=True, help='H [W] of the sub-images')
    number_arg(p, '--step', int, min=1, nargs='+', required=True, help='H [W] stride between sub-images')
    number_arg(p, '--thresh-size', int, min=0, default=0, help='border remainders larger than this get a crop')
    number_arg(p, '--workers', int, min=0, default=0, help='processes (0: in this process)')
    p.add_argument('--quiet', action='store_true')
    return p


def main(argv=None) -> None:
    args = parse_checked(build_parser(), argv)
    if len(args.crop_size) > 2 or len(args.step) > 2:
        raise ValueError('--crop-size and --step take H [W]: one or two numbers')
    summary = extract_subimages(args.ir, args.vis, args.out, args.crop_size, args.step, args.thresh_size,
                                label_dir=args.label, mask_cache=args.mask_cache, workers=args.workers,
                                progress=not args.quiet)
    if summary['skipped_small']:
        print(f'{len(summary["skipped_small"])} image(s) smaller than the crop size produced nothing', file=sys.stderr)
    print(json.dumps(summary, indent=1))


if __name__ == '__main__':
    run_cli(main)
