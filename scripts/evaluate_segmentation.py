#!/usr/bin/env python
"""Does a fusion help a segmenter? Train (or apply) a segmenter on each method's fused images.

    python scripts/evaluate_segmentation.py --ir DIR --vis DIR --label DIR \\
        --fused sage=results/mfnet [NAME=DIR ...] --baseline ir vis mean max label \\
        --split 0.7 --preset cpu --out results/seg_mfnet

For every method and baseline a fresh segmenter is trained on that method's training images and
tested on its test images (same initialisation, data order, augmentation and schedule for every
method; one run per seed). ``--fixed-segmenter CKPT`` instead applies one trained segmenter to every
method's test images. Writes into --out: segmentation.json / .csv / .md (per-class IoU, mIoU and
pixel accuracy, mean and std over seeds) and predictions.jpg; units/ holds one file per finished
(method, seed), so a run started again skips them. Presets and dataset descriptions:
options/segmentation/*.yml; documentation: docs/segmentation.md.
"""
import argparse
import logging
import os.path as osp
import sys
import time


sys.path.insert(0, osp.abspath(osp.join(osp.dirname(__file__), osp.pardir)))

from tqdm import tqdm  # noqa: E402

import fusion  # noqa: E402,F401  (basicsr fixes + registries)
from fusion.data.segmentation_dataset import find_images, read_label, read_name_list  # noqa: E402
from fusion.segmentation.config import available, load_dataset_info, load_preset  # noqa: E402
from fusion.segmentation.protocol import (BASELINE_KINDS, FIXED_UNIT, SegmentationInputs,  # noqa: E402
                                          baseline_sources, check_method_name, picture_names, prepare_baselines,
                                          run_protocol, split_names, total_iterations)
from fusion.segmentation.report import format_table, prediction_grid, summarize, write_reports  # noqa: E402
from fusion.utils.cli import INPUT_ERRORS, add_pair_arguments, parse_named_folders, run_cli  # noqa: E402
from fusion.utils.entry_io import input_arg, number_arg, output_arg, parse_checked  # noqa: E402
from fusion.utils.img_util import imwrite_atomic  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_pair_arguments(parser)
    input_arg(parser, '--label', kind='dir', required=True, help='folder of label maps (class ids), same base names')
    input_arg(parser, '--fused', kind='named_dirs', nargs='*', default=[], metavar='NAME=DIR',
              help='fused images of each method')
    parser.add_argument('--baseline', nargs='*', default=[], choices=BASELINE_KINDS,
                        help='reference methods: ir, vis (the sources alone), mean, max (pixel fusions), '
                             'label (the label map painted in the palette: a control that must score high)')
    input_arg(parser, '--train-list', kind='file', help='file of training pair names (one per line)')
    input_arg(parser, '--test-list', kind='file', help='file of test pair names')
    number_arg(parser, '--split', float, min=0, max=1, open_min=True, open_max=True,
               help='random split: this fraction of the labelled pairs trains')
    number_arg(parser, '--split-seed', int, min=0, default=0, help='seed of --split (default 0)')
    input_arg(parser, '--preset', kind='file', required=True,
              help=f'{" | ".join(available("preset"))} or a preset .yml (options/segmentation)')
    input_arg(parser, '--dataset', kind='file', default='mfnet',
              help=f'class names and palette: {" | ".join(available("dataset"))} or a .yml (default mfnet)')
    number_arg(parser, '--seeds', int, min=1, help='number of seeds 0..N-1 (default: the preset\'s)')
    input_arg(parser, '--fixed-segmenter', kind='file', metavar='PATH',
              help='apply this segmenter checkpoint (the preset\'s network) to every method, no training')
    output_arg(parser, '--out', kind='dir', required=True,
               help='output folder (resumable: finished units are kept)')
    output_arg(parser, '--json', kind='file', default_in=('out', 'segmentation.json'),
               help='JSON path (default: OUT/segmentation.json)')
    number_arg(parser, '--grid-images', int, min=0, default=4, help='test images in predictions.jpg (0: none)')
    number_arg(parser, '--threads', int, min=1, help='torch CPU threads (default: torch\'s choice)')
    parser.add_argument('--quiet', action='store_true', help='no progress bars')
    return parser


def _names(args) -> tuple:
    labelled = sorted(find_images(args.label, None, 'label'))
    if args.fixed_segmenter and not (args.split or args.train_list or args.test_list):
        return [], labelled
    if args.split is not None:
        if args.train_list or args.test_list:
            raise ValueError('give either --split or --train-list/--test-list, not both')
        return split_names(labelled, args.split, args.split_seed)
    if not args.test_list or not (args.train_list or args.fixed_segmenter):
        raise ValueError('give --train-list and --test-list, or --split FRACTION')
    test = read_name_list(args.test_list)
    train = read_name_list(args.train_list) if args.train_list else []
    overlap = sorted(set(train) & set(test))
    if overlap:
        raise ValueError(f'{args.train_list} and {args.test_list} share {len(overlap)} names, e.g. {overlap[:3]}')
    return train, test


def main(argv=None) -> int:
    args = parse_checked(build_parser(), argv)
    log = logging.getLogger('basicsr')
    level = log.level
    log.setLevel(logging.WARNING)  # per-unit network summaries would drown the progress bars
    try:
        return _compare(args)
    finally:
        log.setLevel(level)


def _compare(args) -> int:
    start = time.time()
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    preset = load_preset(args.preset)
    info = load_dataset_info(args.dataset)
    methods = parse_named_folders(args.fused, check_name=check_method_name)
    if not methods and not args.baseline:
        raise ValueError('nothing to compare: give --fused NAME=DIR and/or --baseline')
    clash = sorted(set(methods) & set(args.baseline))
    if clash:
        raise ValueError(f'method name(s) {clash} clash with baselines of the same name')
    if args.fixed_segmenter and not osp.isfile(args.fixed_segmenter):
        raise FileNotFoundError(f'--fixed-segmenter: no such file: {args.fixed_segmenter}')
    train, test = _names(args)
    fixed = args.fixed_segmenter is not None
    train = [] if fixed else train
    names = train + test
    # sources and labels of every listed pair must exist; labels must hold valid class ids
    find_images(args.ir, names, 'infrared')
    find_images(args.vis, names, 'visible')
    for path in find_images(args.label, names, 'label').values():
        read_label(path, len(info['classes']), info.get('ignore_index'))
    seeds = list(range(args.seeds if args.seeds is not None else preset['seeds'])) if not fixed else []
    if not fixed and not seeds:
        raise ValueError('--seeds must be at least 1')

    weights = preset['network'].get('encoder_weights')
    print(f'{len(train)} training / {len(test)} test pairs; preset {osp.basename(preset["_path"])}: '
          f'{preset["network"].get("arch")}/{preset["network"].get("encoder_name")} at {preset["size"][0]}x'
          f'{preset["size"][1]}, {total_iterations(preset, len(train))} iterations; '
          + ('fixed segmenter ' + args.fixed_segmenter if fixed else f'seeds {seeds}') + '; encoder '
          + (f'weights from {weights}' if weights else 'randomly initialised (no encoder_weights in the preset)'))
    baselines = prepare_baselines(args.baseline, args.ir, args.vis, args.label, names, osp.join(args.out, 'baselines'),
                                  info, progress=not args.quiet)
    all_methods = dict(methods, **baselines)
    inputs = SegmentationInputs(args.ir, args.vis, args.label, all_methods, train, test,
                                made_from=baseline_sources(args.baseline, args.ir, args.vis, args.label))
    picture = picture_names(args.label, test, info, args.grid_images)

    def progress(total: int, desc: str):
        return tqdm(total=total, desc=desc, unit='it', disable=args.quiet, leave=False)
    result = run_protocol(inputs, preset, info, seeds, args.out, fixed_checkpoint=args.fixed_segmenter,
                          picture=picture, progress=progress)
    extra = {'preset': osp.basename(preset['_path']), 'dataset': info['name'], 'train_pairs': len(train),
             'test_pairs': len(test), 'reused_units': result.reused, 'rerun_units': dict(result.rerun),
             'unit_seconds': {m: {u: round(s, 1) for u, s in units.items()} for m, units in result.seconds.items()}}
    if fixed:
        extra['fixed_segmenter'] = osp.abspath(args.fixed_segmenter)
    if result.failed:
        extra['failed'] = dict(result.failed)
    summary = summarize(result.confusions, info, seeds, extra)
    picture_file = None
    if picture and summary['methods']:
        unit = FIXED_UNIT if fixed else f'seed{seeds[0]}'
        pred_dirs = {m: osp.join(args.out, 'units', m, f'{unit}_pred') for m in summary['methods']}
        picture_file = 'predictions.jpg'
        grid = prediction_grid(picture, args.vis, args.label, pred_dirs, info)
        imwrite_atomic(grid, osp.join(args.out, picture_file), params=[1, 90])  # cv2.IMWRITE_JPEG_QUALITY
    paths = write_reports(summary, args.out, args.json, picture_file)
    print('\n' + format_table(summary))
    print(f'\nwritten: {", ".join(paths.values())}' + (f', {osp.join(args.out, picture_file)}' if picture_file else '')
          + f' ({time.time() - start:.0f} s, {result.reused} finished unit(s) reused)')
    for method, message in result.failed.items():
        print(f'error: method {method}: {message}', file=sys.stderr)
    return 1 if result.failed else 0


if __name__ == '__main__':
    run_cli(main, errors=INPUT_ERRORS)
