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
from fusion.utils.file_util import check_output_location  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_pair_arguments(p, label='folder of label images (optional)')
    p.add_argument('--mask-cache', help='mask cache of the full images (crops it too)')
    p.add_argument('--out', required=True)
    p.add_argument('--crop-size', type=int, nargs='+', required=True, help='H [W] of the sub-images')
    p.add_argument('--step', type=int, nargs='+', required=True, help='H [W] stride between sub-images')
    p.add_argument('--thresh-size', type=int, default=0, help='border remainders larger than this get a crop')
    p.add_argument('--workers', type=int, default=0, help='processes (0: in this process)')
    p.add_argument('--quiet', action='store_true')
    args = p.parse_args()
    check_output_location(args.out, [('--ir', args.ir), ('--vis', args.vis), ('--label', args.label or ''),
                                     ('--mask-cache', args.mask_cache or '')], what='--out')
    summary = extract_subimages(args.ir, args.vis, args.out, args.crop_size, args.step, args.thresh_size,
                                label_dir=args.label, mask_cache=args.mask_cache, workers=args.workers,
                                progress=not args.quiet)
    if summary['skipped_small']:
        print(f'{len(summary["skipped_small"])} image(s) smaller than the crop size produced nothing', file=sys.stderr)
    print(json.dumps(summary, indent=1))


if __name__ == '__main__':
    run_cli(main)
