"""Mask storage benchmark: our mask cache vs the official SAGE format, on the same masks, one run.

The official code keeps one pickle ``{name: {'ir_masks': [bool H x W], 'vis_masks': [...]}}``
(1 byte per pixel) that is loaded whole into RAM before the first sample. Ours is an LMDB with
one bit-packed, zlib-compressed entry per image, read one image at a time.

Measured (printed as JSON):
  * bytes per image of both (payload, and files on disk) and ``size_ratio`` = official / ours;
  * time to get one training sample's masks (the first ``--mask-num`` masks of each modality as
    bool arrays): per sample once loaded, and for the first sample including opening/loading;
  * the same on a quarter of the images, to show how each scales with the dataset size
    (ours: O(1) per sample; official: loading grows with the whole set).

Examples:

    # masks from the weight-free superpixel source on real MFNet pairs (K = 20, as the official cache)
    python scripts/benchmarks/benchmark_data.py --ir DIR --vis DIR \\
        --source superpixel --max-masks 20 --limit 60 --workers 2
    # an existing cache (e.g. real SAM masks made on a GPU machine)
    python scripts/benchmarks/benchmark_data.py --cache datasets/MFNet/masks_sam.lmdb

Timings are wall-clock on whatever machine runs this; on a shared CPU they are noisy: compare
the two columns of one run, not numbers across runs.
"""
import argparse
import json
import os
import os.path as osp
import pickle
import shutil
import statistics
import tempfile
import time

import numpy as np
import torch
from bench_util import time_once  # also puts the repository on sys.path

from fusion.data.lmdb_store import LmdbWriter  # noqa: E402
from fusion.data.mask_cache import MaskCache  # noqa: E402
from fusion.data.mask_generation import generate_mask_cache  # noqa: E402
from fusion.utils.cli import run_cli  # noqa: E402
from fusion.utils.entry_io import input_arg, number_arg, output_arg, parse_checked, plain_arg  # noqa: E402


CPU = torch.device('cpu')


def lmdb_file_bytes(path: str) -> int:
    return os.stat(osp.join(path, 'data.mdb')).st_size


def subset_cache(src: MaskCache, names, out: str) -> str:
    """A copy of the cache holding only ``names`` (entries copied byte for byte)."""
    with LmdbWriter(out) as w:
        w.put('__meta__', src.reader.get('__meta__'))
        w.put_many({n: src.raw(n) for n in names})
    return out


def write_official(cache: MaskCache, names, path: str) -> int:
    """The official format of the same masks: one pickle of lists of bool arrays."""
    data = {}
    for n in names:
        e = cache.get(n)
        data[n] = {'ir_masks': [m.copy() for m in e.ir], 'vis_masks': [m.copy() for m in e.vis]}
    with open(path, 'wb') as f:
        pickle.dump(data, f)
    return sum(m.nbytes for d in data.values() for ms in d.values() for m in ms)


def time_ours(path: str, names, mask_num: int, repeats: int):
    t0 = time.perf_counter()
    cache = MaskCache(path)
    cache.get(names[0], max_masks=mask_num)
    first = time.perf_counter() - t0
    times = [time_once(lambda: cache.get(n, max_masks=mask_num), CPU) for _ in range(repeats) for n in names]
    cache.close()
    return first, statistics.median(times)


def time_official(path: str, names, mask_num: int, repeats: int):
    def sample(d, n):
        masks = d[n]
        return np.stack(masks['ir_masks'][:mask_num]), np.stack(masks['vis_masks'][:mask_num])

    t0 = time.perf_counter()
    with open(path, 'rb') as f:
        data = pickle.load(f)  # the official dataset's __init__: everything, before any sample
    load = time.perf_counter() - t0
    sample(data, names[0])
    first = time.perf_counter() - t0
    times = [time_once(lambda: sample(data, n), CPU) for _ in range(repeats) for n in names]
    return load, first, statistics.median(times)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    input_arg(p, '--cache', kind='dir', help='benchmark this existing mask cache')
    input_arg(p, '--ir', kind='dir', help='(without --cache) IR folder to make masks from')
    input_arg(p, '--vis', kind='dir')
    input_arg(p, '--label', kind='dir')
    p.add_argument('--source', default='superpixel', choices=['superpixel', 'label', 'random_crop', 'sam'])
    plain_arg(p, '--set', action='append', default=[], metavar='KEY=VALUE', help='source options (YAML values)')
    number_arg(p, '--max-masks', int, min=1, default=20, help='K stored per modality (official cache: 20)')
    number_arg(p, '--mask-num', int, min=1, default=4, help='masks one training sample reads (SAGE: 4)')
    number_arg(p, '--limit', int, min=0, default=0, help='use the first N pairs / entries (0: all)')
    number_arg(p, '--workers', int, min=0, default=0)
    number_arg(p, '--repeats', int, min=1, default=3)
    output_arg(p, '--keep', kind='dir', help='keep the generated files in this folder')
    return p


def main(argv=None) -> None:
    p = build_parser()
    args = parse_checked(p, argv)

    import yaml
    work = args.keep or tempfile.mkdtemp(prefix='bench_data_')
    os.makedirs(work, exist_ok=True)
    try:
        if args.cache:
            cache_path = args.cache
            gen_seconds = None
        else:
            if not (args.ir and args.vis):
                raise SystemExit('give --cache, or --ir and --vis to make masks from')
            from fusion.utils.img_util import list_pairs
            pairs = list_pairs(args.ir, args.vis)
            names = [q['name'] for q in pairs][:args.limit or None]
            cache_path = osp.join(work, 'ours.lmdb')
            opt = {'type': args.source, **{k: yaml.safe_load(v) for k, v in (s.split('=', 1) for s in args.set)}}
            t = time.perf_counter()
            generate_mask_cache(args.ir, args.vis, cache_path, opt, label_dir=args.label, max_masks=args.max_masks,
                                names=names, workers=args.workers, progress=False, overwrite=True)
            gen_seconds = time.perf_counter() - t
        cache = MaskCache(cache_path)
        names = sorted(cache.names())[:args.limit or None]
        quarter = names[:max(1, len(names) // 4)]
        full_path = subset_cache(cache, names, osp.join(work, 'ours_full.lmdb'))
        quarter_path = subset_cache(cache, quarter, osp.join(work, 'ours_quarter.lmdb'))
        official_path = osp.join(work, 'official.pkl')
        official_quarter_path = osp.join(work, 'official_quarter.pkl')
        resident = write_official(cache, names, official_path)
        write_official(cache, quarter, official_quarter_path)

        n = len(names)
        payload = sum(len(cache.raw(k)) for k in names)
        official_file = os.stat(official_path).st_size
        ours_file = lmdb_file_bytes(full_path)
        counts = [cache.get(k, max_masks=0) for k in names]
        ir_masks = sum(e.ir_total for e in counts)
        vis_masks = sum(e.vis_total for e in counts)
        h, w = counts[0].size
        cache.close()

        ours_first, ours_sample = time_ours(full_path, names, args.mask_num, args.repeats)
        ours_first_q, ours_sample_q = time_ours(quarter_path, quarter, args.mask_num, args.repeats)
        off_load, off_first, off_sample = time_official(official_path, names, args.mask_num, args.repeats)
        off_load_q, off_first_q, off_sample_q = time_official(official_quarter_path, quarter, args.mask_num,
                                                              args.repeats)
        result = {
            'images': n, 'image_size_hw': [h, w], 'source': MaskCache(cache_path).meta['source']['type'],
            'masks_stored_per_image': round((ir_masks + vis_masks) / n, 2), 'max_masks': args.max_masks,
            'mask_num_per_sample': args.mask_num,
            'official_bytes_per_image': round(official_file / n),
            'ours_bytes_per_image': round(ours_file / n),
            'ours_payload_bytes_per_image': round(payload / n),
            'size_ratio': round(official_file / ours_file, 1),
            'size_ratio_payload': round(official_file / payload, 1),
            'ours_bits_per_mask_pixel': round(8 * payload / max(1, (ir_masks + vis_masks) * h * w), 4),
            'official_ram_bytes_while_training': resident,
            'ours_sample_ms': round(1e3 * ours_sample, 3),
            'official_sample_ms_after_full_load': round(1e3 * off_sample, 3),
            'ours_first_sample_s': round(ours_first, 4),
            'official_first_sample_s': round(off_first, 4),
            'official_full_load_s': round(off_load, 4),
            'first_sample_ratio': round(off_first / ours_first, 1),
            'scaling_quarter_to_full': {
                'images': [len(quarter), n],
                'ours_sample_ms': [round(1e3 * ours_sample_q, 3), round(1e3 * ours_sample, 3)],
                'ours_first_sample_s': [round(ours_first_q, 4), round(ours_first, 4)],
                'official_full_load_s': [round(off_load_q, 4), round(off_load, 4)],
            },
            'mask_generation_s': None if gen_seconds is None else round(gen_seconds, 1),
            'note': 'wall-clock on this machine; shared CPUs are noisy: compare columns of one run',
        }
        print(json.dumps(result, indent=1))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == '__main__':
    run_cli(main)
