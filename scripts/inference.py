#!/usr/bin/env python
"""Fuse every IR/visible pair of two folders with the SAGE student (default) or a zoo method; no YAML needed.

    python scripts/inference.py --ir datasets/M3FD/ir --vis datasets/M3FD/vi --output results/m3fd
    python scripts/inference.py --method seafusion --weights PATH/SeAFusion.pth --ir DIR --vis DIR --output DIR

Zoo methods (docs/zoo.md) need their authors' weights: ``--weights`` takes the file or the folder
holding the files exactly as published; their authors' conventions (input range, rounding ...)
come from options/zoo/<method>.yml.

Output files keep the input names (as PNG unless --ext says otherwise); colour comes from the
visible image's chroma (YCrCb); grey visible inputs give grey outputs.
"""
import argparse
import contextlib
import os.path as osp
import sys
import tempfile


sys.path.insert(0, osp.abspath(osp.join(osp.dirname(__file__), osp.pardir)))

from fusion.inference import DEFAULT_MODEL, fuse_folders, load_student, resolve_device  # noqa: E402
from fusion.utils.cli import add_pair_arguments, run_cli  # noqa: E402
from fusion.utils.entry_io import input_arg, number_arg, output_arg, parse_checked, plain_arg  # noqa: E402
from fusion.utils.file_util import check_output_location  # noqa: E402
from fusion.zoo import build_zoo_method, list_zoo_methods, load_zoo_entry  # noqa: E402


def build_net(args: argparse.Namespace):
    """The SAGE student (``--model`` / ``--weights``, ``--param-key``) or a zoo method."""
    if args.method.lower() == 'sage':
        if args.weights and args.model != DEFAULT_MODEL:
            raise ValueError('--weights and --model both name the SAGE checkpoint; give one')
        return load_student(args.weights or args.model, args.device, param_key=args.param_key)
    entry = load_zoo_entry(args.method)  # unknown method: the closest names
    if args.model != DEFAULT_MODEL or args.param_key:
        raise ValueError(f'--model / --param-key are for the SAGE student; {entry.name} takes --weights')
    if not args.weights:
        raise ValueError(f'--weights: {entry.name} needs its authors\' {", ".join(entry.weights["files"])} '
                         f'(from {entry.weights["source"]}); nothing is downloaded')
    return build_zoo_method(entry.name, args.weights, resolve_device(args.device))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_pair_arguments(parser)
    output_arg(parser, '--output', kind='dir', required=True, help='folder for the fused images')
    plain_arg(parser, '--method', default='sage',
              help=f'sage (default: the SAGE student) or a zoo method: {", ".join(list_zoo_methods()[1:])}')
    input_arg(parser, '--weights', kind='prefix', default=None,
              help='the method\'s weights: the file or the folder of files as its authors publish them '
                   '(required for zoo methods; for sage the same as --model)')
    input_arg(parser, '--model', kind='file', default=DEFAULT_MODEL,
              help='student checkpoint (default: the released one)')
    plain_arg(parser, '--param-key', default=None,
              help='params | params_ema for our checkpoints (default: params, or the plain state dict); '
                   'a key the checkpoint lacks is an error')
    parser.add_argument('--device', default='auto', help='auto | cpu | cuda | cuda:N')
    plain_arg(parser, '--ext', default='png', help='output format: png (default), jpg, bmp, tif')
    parser.add_argument('--plain', action='store_true', help='plain eval-mode network instead of the fast path')
    parser.add_argument('--precision', default='fp32', choices=['fp32', 'bf16', 'fp16'],
                        help='fp32 (default, exact) | bf16 (CPUs with AVX512-BF16/AMX, recent GPUs; ~55 dB PSNR '
                             'from fp32) | fp16 (CUDA only); see docs/mixed_precision.md')
    number_arg(parser, '--batch-size', int, min=1, default=4, help='pairs of equal size fused together')
    number_arg(parser, '--tile', int, min=1, default=None, help='tile size for images too large for memory')
    number_arg(parser, '--tile-overlap', int, min=0, default=None,
               help='overlap of neighbouring tiles (default: 3 x the network\'s tile margin, 96 for the '
                    'SAGE student: equal to untiled within 1e-6)')
    parser.add_argument('--register', action='store_true',
                        help='register the infrared images onto the visible ones first (docs/registration.md); '
                             'unsure pairs are left out')
    output_arg(parser, '--register-out', kind='dir', default=None,
               help='keep the registered pairs, report and pictures here (default: a temporary folder)')
    return parser


def main(argv=None) -> int:
    args = parse_checked(build_parser(), argv)
    net = build_net(args)
    with registered_inputs(args) as (ir_dir, vis_dir):
        return _fuse(args, net, ir_dir, vis_dir)


@contextlib.contextmanager
def registered_inputs(args):
    """The folders to fuse: the given ones, or with --register the registered pairs."""
    if not args.register:
        yield args.ir, args.vis
        return
    from fusion.registration import register_folders
    with tempfile.TemporaryDirectory(prefix='register_') as tmp:
        out = args.register_out or tmp
        check_output_location(args.output, [('--ir', args.ir), ('--vis', args.vis), ('--register-out', out)],
                              what='--output')
        report = register_folders(args.ir, args.vis, out)
        for item in report['unsure']:
            print(f'registration unsure, not fused: {item["name"]}: {item["reason"]}')
        if len(report['unsure']) == len(report['pairs']):
            raise ValueError(f'--register: no pair of {args.ir} / {args.vis} registered with confidence '
                             f'(report: {report["json"]})')
        yield osp.join(out, 'ir'), osp.join(out, 'vis')


def _fuse(args, net, ir_dir: str, vis_dir: str) -> int:
    written = fuse_folders(ir_dir, vis_dir, args.output, net, ext=args.ext, fast=not args.plain,
                           batch_size=args.batch_size, tile_size=args.tile, tile_overlap=args.tile_overlap,
                           precision=args.precision)
    print(f'{len(written)} fused images written to {args.output}')
    return 0


if __name__ == '__main__':
    run_cli(main, exit_code=1)  # bad input: one `error:` line naming the file or option
