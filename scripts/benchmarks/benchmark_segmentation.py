"""Does the segmentation protocol learn from a small labelled set? Runs it on a seeded subset of real
labelled pairs and prints, as JSON, each method's mIoU (mean, std, number of finished seeds), the
label-map control's margin over every real input, the seed-to-seed std of the real inputs and the
smallest difference between two methods that this many seeds resolve.

    python scripts/benchmarks/benchmark_segmentation.py --pairs 50 --split 0.7 --seeds 3 --threads 1

The subset: the data folder's labelled names sorted, permuted by ``numpy.random.RandomState(
--subset-seed)``, the first ``--pairs`` kept (linked into ``--work``/subset); then the protocol's own
``--split`` (seed ``--split-seed``) divides them, e.g. 50 pairs at 0.7 give 35 training / 15 test
pairs. Methods: the released student's fusion (fused here, once) and the baselines ``label ir vis
mean max``. Resumable like the protocol (finished units in ``--work``/out are reused).

Smallest resolvable difference: two methods with ``n`` seeds each differ at the 5 % level (two-sided
t-test, pooled std ``s``, ``2n - 2`` degrees of freedom) when their means differ by more than
``t * s * sqrt(2 / n)``; ``s`` is the pooled seed-to-seed std of the real inputs.
Default data: MFNet in the shared data folder beside the repository (``../shared/data/MFNet``).
"""
import argparse
import json
import math
import os
import os.path as osp
import subprocess
import sys
import time

import numpy as np
from bench_util import ROOT, emit_json, machine_meta  # also puts the repository on sys.path

from fusion.data.segmentation_dataset import find_images  # noqa: E402
from fusion.segmentation.config import load_preset  # noqa: E402
from fusion.segmentation.protocol import split_names, total_iterations  # noqa: E402
from fusion.utils.cli import run_cli  # noqa: E402
from fusion.utils.entry_io import input_arg, number_arg, output_arg, parse_checked  # noqa: E402


# two-sided 97.5 % quantiles of Student's t for 1..10 degrees of freedom (statistical tables)
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}
REAL = ('sage', 'ir', 'vis', 'mean', 'max')


def _subset(data: str, work: str, pairs: int, seed: int) -> str:
    """Links the chosen pairs' ir/vi/label files into ``work/subset`` and returns that folder."""
    names = sorted(find_images(osp.join(data, 'label'), None, 'label'))
    if pairs > len(names):
        raise SystemExit(f'error: --pairs {pairs}: {data} has only {len(names)} labelled pairs')
    chosen = sorted(names[i] for i in np.random.RandomState(seed).permutation(len(names))[:pairs])
    root = osp.join(work, 'subset')
    for sub, what in (('ir', 'infrared'), ('vi', 'visible'), ('label', 'label')):
        os.makedirs(osp.join(root, sub), exist_ok=True)
        for name, path in find_images(osp.join(data, sub), chosen, what).items():
            link = osp.join(root, sub, osp.basename(path))
            if not osp.lexists(link):
                os.symlink(osp.abspath(path), link)
    return root


def _fuse(subset: str, out: str) -> None:
    from fusion.inference import fuse_folders, load_student
    if osp.isdir(out) and len(os.listdir(out)) == len(os.listdir(osp.join(subset, 'ir'))):
        return
    fuse_folders(osp.join(subset, 'ir'), osp.join(subset, 'vi'), out, load_student(device='cpu'), progress=False)


def _report(summary: dict, seeds: int) -> dict:
    methods = summary['methods']
    real = {m: v for m, v in methods.items() if m in REAL}
    control = methods.get('label', {}).get('miou')
    variances = [v['miou_std'] ** 2 for v in real.values() if v.get('miou_std') is not None]
    pooled = math.sqrt(sum(variances) / len(variances)) if variances else None
    t = T_975.get(2 * seeds - 2)
    resolvable = t * pooled * math.sqrt(2 / seeds) if pooled is not None and t else None
    best_real = max((v['miou'] for v in real.values()), default=None)
    return {
        'methods': {m: {'miou': v['miou'], 'miou_std': v['miou_std'], 'seeds_finished': v['units']}
                    for m, v in methods.items()},
        'control_miou': control, 'best_real_miou': best_real,
        'control_margin': None if control is None or best_real is None else control - best_real,
        'real_seed_std_pooled': pooled, 'smallest_resolvable_difference': resolvable,
        'control_margin_in_resolvable': (None if not resolvable or control is None
                                         else (control - best_real) / resolvable),
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    input_arg(parser, '--data', kind='dir', default=osp.join(ROOT, os.pardir, 'shared', 'data', 'MFNet'),
              help='folder with ir/, vi/, label/ (default: the shared MFNet copy beside the repository)')
    number_arg(parser, '--pairs', int, min=2, default=50, help='labelled pairs in the subset (default 50)')
    number_arg(parser, '--subset-seed', int, min=0, default=0)
    number_arg(parser, '--split', float, min=0, max=1, open_min=True, open_max=True, default=0.7,
               help='training fraction of the subset (default 0.7)')
    number_arg(parser, '--split-seed', int, min=0, default=0)
    input_arg(parser, '--preset', kind='file', default='cpu', help='cpu | paper or a preset .yml')
    number_arg(parser, '--seeds', int, min=1, default=3)
    number_arg(parser, '--threads', int, min=1, default=1)
    output_arg(parser, '--work', kind='dir', default=osp.join(ROOT, 'results', 'bench_segmentation'),
               help='working folder: subset links, fused images, the protocol\'s --out')
    output_arg(parser, '--json', kind='file', help='also write the report here')
    return parser


def main(argv=None) -> None:
    args = parse_checked(build_parser(), argv)
    if not osp.isdir(osp.join(args.data, 'label')):
        raise SystemExit(f'error: --data {args.data}: no label/ folder (the shared data is not beside the repository?)')
    start = time.time()
    subset = _subset(args.data, args.work, args.pairs, args.subset_seed)
    _fuse(subset, osp.join(args.work, 'fused_sage'))
    out = osp.join(args.work, 'out')
    cmd = [sys.executable, osp.join(ROOT, 'scripts', 'evaluate_segmentation.py'),
           '--ir', osp.join(subset, 'ir'), '--vis', osp.join(subset, 'vi'), '--label', osp.join(subset, 'label'),
           '--fused', f'sage={osp.join(args.work, "fused_sage")}', '--baseline', 'label', 'ir', 'vis', 'mean', 'max',
           '--split', str(args.split), '--split-seed', str(args.split_seed), '--preset', args.preset,
           '--seeds', str(args.seeds), '--threads', str(args.threads), '--out', out, '--quiet']
    rc = subprocess.run(cmd).returncode
    with open(osp.join(out, 'segmentation.json')) as f:
        summary = json.load(f)
    names = sorted(find_images(osp.join(subset, 'label'), None, 'label'))
    train, test = split_names(names, args.split, args.split_seed)
    preset = load_preset(args.preset)
    steps = total_iterations(preset, len(train))
    report = machine_meta(
        benchmark='segmentation_small_set', data=osp.basename(osp.normpath(args.data)), pairs=args.pairs,
        subset_seed=args.subset_seed, train_pairs=len(train), test_pairs=len(test), preset=args.preset,
        iterations=steps, epochs_equivalent=round(steps / max(1, len(train) // int(preset['batch_size'])), 2),
        protocol_rc=rc, unit_seconds=summary.get('unit_seconds'), wall_s=round(time.time() - start, 1),
        **_report(summary, args.seeds))
    emit_json(report, args.json)


if __name__ == '__main__':
    run_cli(main)
