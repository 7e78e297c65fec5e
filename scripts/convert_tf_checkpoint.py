#!/usr/bin/env python
"""Convert a TensorFlow-trained zoo method's TF1 checkpoint into a PyTorch state dict (one-off).

    python scripts/convert_tf_checkpoint.py --method densefuse --checkpoint WEIGHTS/DenseFuse --output densefuse.pth
    python scripts/convert_tf_checkpoint.py --method u2fusion --checkpoint WEIGHTS/U2Fusion/model.ckpt \
        --output u2fusion.pth

``--checkpoint`` takes the checkpoint prefix, any of its files (``.index``, ``.data-*``, ``.meta``)
or the folder holding them. The checkpoint is read without TensorFlow
(:mod:`fusion.utils.tf_checkpoint`), its variables are checked against the method's graph, and the
state dict is loaded strictly into the network before it is written (atomically; an output that
is one of the checkpoint's files is refused). Converting is optional: ``--weights`` of the zoo
also takes the TF checkpoint directly. Prints a JSON summary.
"""
from __future__ import annotations

import argparse
import json
import os.path as osp
import sys
from typing import Optional, Sequence


ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)

import fusion  # noqa: E402,F401  (basicsr fixes + registries)
from fusion.archs.tf_weights import TF_METHODS, convert_tf_checkpoint  # noqa: E402
from fusion.utils.cli import run_cli  # noqa: E402
from fusion.utils.entry_io import input_arg, output_arg, parse_checked, plain_arg  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    plain_arg(parser, '--method', required=True, choices=sorted(TF_METHODS))
    input_arg(parser, '--checkpoint', kind='prefix', required=True,
              help='TF1 checkpoint prefix, one of its files, or its folder')
    output_arg(parser, '--output', kind='file', required=True, help='the .pth file to write')
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_checked(build_parser(), argv)
    print(json.dumps(convert_tf_checkpoint(args.method, args.checkpoint, args.output), indent=2))
    return 0


if __name__ == '__main__':
    run_cli(main)
