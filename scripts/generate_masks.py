"""Precomputes the teacher's region masks for a folder of IR/visible pairs into a mask cache.

Examples (run from the repository root):

    # SAM, official SAGE settings, GPU if there is one
    python scripts/generate_masks.py --ir datasets/MFNet/ir --vis datasets/MFNet/vi \\
        --out datasets/MFNet/masks_sam.lmdb --checkpoint weights/sam_vit_b_01ec64.pth

    # no checkpoint: falls back to superpixels (logged, recorded in the cache metadata)
    python scripts/generate_masks.py --ir datasets/MFNet/ir --vis datasets/MFNet/vi --out /tmp/masks.lmdb

    # label regions (ablation b) / random rectangles (ablation a)
    python scripts/generate_masks.py ... --source label --label datasets/MFNet/label
    python scripts/generate_masks.py ... --source random_crop --set num_masks=8

Several GPUs / nodes (docs/distributed.md): each process takes every N-th pair, one GPU each.

    # one node, 4 GPUs: the shards are merged into --out at the end
    torchrun --nproc_per_node=4 scripts/generate_masks.py --ir ... --vis ... --out masks_sam.lmdb ...
    # job array task I of N (e.g. SLURM_ARRAY_TASK_ID), then one merge once all are done
    python scripts/generate_masks.py ... --out masks_sam.lmdb --shard I/N
    python scripts/generate_masks.py --out masks_sam.lmdb --merge-shards N

Re-running the same command resumes: finished images are skipped. Prints a JSON summary.
"""
import argparse
import datetime
import json
import logging
import os.path as osp
import sys

import yaml


sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from fusion.data.mask_generation import generate_mask_cache  # noqa: E402
from fusion.data.mask_shards import generate_mask_shard, merge_mask_shards  # noqa: E402
from fusion.utils.cli import add_pair_arguments, run_cli  # noqa: E402
from fusion.utils.dist_util import (all_gather_objects, barrier, destroy_dist, get_dist_info, init_dist,  # noqa: E402
                                    parse_shard)
from fusion.utils.entry_io import input_arg, number_arg, output_arg, parse_checked, plain_arg  # noqa: E402


SAM_FLAGS = ('points_per_side', 'points_per_batch', 'pred_iou_thresh', 'stability_score_thresh',
             'stability_score_offset', 'box_nms_thresh', 'crop_n_layers', 'crop_nms_thresh', 'crop_overlap_ratio',
             'crop_n_points_downscale_factor', 'min_mask_region_area')


def parse_sets(items, flag):
    """``KEY=VALUE`` pairs -> dict; values are parsed as YAML (numbers, lists, true/false)."""
    out = {}
    for item in items or []:
        if '=' not in item:
            raise ValueError(f'{flag} expects KEY=VALUE, got {item!r}')
        key, value = item.split('=', 1)
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise ValueError(f'{flag} {item}: cannot read the value {value!r}') from err
    return out


# valid ranges of the SAM flags: (type, min, max, open_max)
SAM_RANGES = {'points_per_side': (int, 1, None, False), 'points_per_batch': (int, 1, None, False),
              'pred_iou_thresh': (float, 0, 1, False), 'stability_score_thresh': (float, 0, 1, False),
              'stability_score_offset': (float, 0, None, False), 'box_nms_thresh': (float, 0, 1, False),
              'crop_n_layers': (int, 0, None, False), 'crop_nms_thresh': (float, 0, 1, False),
              'crop_overlap_ratio': (float, 0, 1, True), 'crop_n_points_downscale_factor': (int, 1, None, False),
              'min_mask_region_area': (int, 0, None, False)}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_pair_arguments(p, label='folder of label images (needed by --source label; else only size-checked)',
                       required=False)
    output_arg(p, '--out', kind='dir', also=('{}.shards',), required=True,
               help='mask cache to create or resume (an LMDB folder, e.g. masks.lmdb)')
    p.add_argument('--source', default='sam', choices=['sam', 'label', 'random_crop', 'superpixel'])
    number_arg(p, '--max-masks', int, min=1, default=8, help='K: masks kept per modality, largest first (default 8)')
    sam = p.add_argument_group('SAM (defaults: the official SAGE settings)')
    input_arg(sam, '--checkpoint', kind='file', help='SAM checkpoint file (e.g. sam_vit_b_01ec64.pth)')
    plain_arg(sam, '--model-type', default='vit_b', help='vit_b | vit_l | vit_h (tiny: test model)')
    sam.add_argument('--device', default='auto', help='auto | cpu | cuda | cuda:N')
    for flag in SAM_FLAGS:
        type_, low, high, open_max = SAM_RANGES[flag]
        number_arg(sam, '--' + flag.replace('_', '-'), type_, min=low, max=high, open_max=open_max, default=None)
    p.add_argument('--set', action='append', metavar='KEY=VALUE', help='any option of the source (repeatable)')
    p.add_argument('--no-fallback', action='store_true', help='fail instead of using superpixels without a checkpoint')
    p.add_argument('--fallback-set', action='append', metavar='KEY=VALUE', help='options of the superpixel fallback')
    p.add_argument('--overwrite', action='store_true', help='empty an existing cache first')
    p.add_argument('--no-verify-existing', action='store_true',
                   help='when resuming, do not re-read finished images to check they are unchanged')
    p.add_argument('--names', help='comma-separated base names to process (default: all pairs)')
    number_arg(p, '--workers', int, min=0, default=0, help='processes for CPU sources (0: in this process)')
    p.add_argument('--quiet', action='store_true', help='no progress bar')
    plain_arg(p, '--shard', metavar='I/N', help='generate only shard I of N (0 <= I < N; job arrays) into '
              '<out>.shards/; merge with --merge-shards N once all are done. Under torchrun: automatic')
    number_arg(p, '--merge-shards', int, min=1, metavar='N', help='merge the N finished shards of --out into --out '
               '(then delete them); needs no --ir/--vis')
    p.add_argument('--keep-shards', action='store_true', help='keep the shard caches after merging')
    return p


def main(argv=None) -> None:
    p = build_parser()
    args = parse_checked(p, argv)
    if args.merge_shards is not None:
        print(json.dumps(merge_mask_shards(args.out, args.merge_shards, remove=not args.keep_shards), indent=1))
        return
    if not args.ir or not args.vis:
        p.error('--ir and --vis are required (except with --merge-shards)')

    logging.basicConfig(level=logging.INFO, format='%(levelname)s: %(message)s')
    source_opt = {'type': args.source}
    if args.source == 'sam':
        source_opt.update(model_type=args.model_type, device=args.device)
        if args.checkpoint:
            source_opt['checkpoint'] = args.checkpoint
        source_opt.update({f: getattr(args, f) for f in SAM_FLAGS if getattr(args, f) is not None})
    elif args.checkpoint or any(getattr(args, f) is not None for f in SAM_FLAGS):
        raise ValueError('--checkpoint and the SAM flags only apply to --source sam')
    source_opt.update(parse_sets(args.set, '--set'))
    kwargs = dict(label_dir=args.label, max_masks=args.max_masks, allow_fallback=not args.no_fallback,
                  fallback_opt=parse_sets(args.fallback_set, '--fallback-set'),
                  verify_existing=not args.no_verify_existing,
                  names=args.names.split(',') if args.names else None, workers=args.workers, progress=not args.quiet)
    _, world_size = get_dist_info()
    if args.shard and world_size > 1:
        raise ValueError('--shard and torchrun exclude each other: torchrun shards by rank')
    if args.overwrite and (args.shard or world_size > 1):
        raise ValueError('--overwrite is for single-process runs; delete the cache and its .shards folder instead')
    if args.shard:
        summary = generate_mask_shard(args.ir, args.vis, args.out, source_opt, parse_shard(args.shard), **kwargs)
        count = summary['shard'].split('/')[1]
        summary['next'] = (f'when all {count} shards are done: '
                           f'python scripts/generate_masks.py --out {args.out} --merge-shards {count}')
        print(json.dumps(summary, indent=1))
        return
    if world_size > 1:
        summary = _torchrun_shards(args, source_opt, kwargs)
        if summary:  # rank 0
            print(json.dumps(summary, indent=1))
        return
    summary = generate_mask_cache(args.ir, args.vis, args.out, source_opt, overwrite=args.overwrite, **kwargs)
    print(json.dumps(summary, indent=1))


def _torchrun_shards(args, source_opt: dict, kwargs: dict) -> dict:
    """Each rank fills its shard (on GPU LOCAL_RANK), then rank 0 merges. The process group
    (gloo: only a gather and a barrier go through it) waits up to a week for the slowest shard."""
    rank, world_size = init_dist(backend='gloo', timeout=datetime.timedelta(days=7))
    # a rank that fails exits non-zero and torchrun stops the others: no collective waits forever
    try:
        summary = generate_mask_shard(args.ir, args.vis, args.out, source_opt, (rank, world_size), **kwargs)
        summaries = all_gather_objects(summary)  # also waits for every shard to finish
        result = {}
        if rank == 0:
            merged = merge_mask_shards(args.out, world_size, remove=not args.keep_shards)
            result = dict(merged, shard_summaries=summaries)
        barrier()  # the cache is complete when any rank returns
        return result
    finally:
        destroy_dist()


if __name__ == '__main__':
    run_cli(main)
