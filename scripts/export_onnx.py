#!/usr/bin/env python
"""Export the SAGE student to ONNX (dynamic batch, height and width).

    python scripts/export_onnx.py --output sage_student.onnx                 # Y/IR in, fused Y out
    python scripts/export_onnx.py --output sage_student_rgb8.onnx --mode rgb8  # whole 8-bit pipeline
    python scripts/export_onnx.py --output sage_student.onnx --check          # + onnxruntime check

Modes (see ``fusion.onnx_export.export_student_onnx``):

* ``y``: ``vis_y``, ``ir`` float32 B x 1 x H x W in [0, 1] -> ``fused_y`` float32 B x 1 x H x W.
  Pre/post-processing stays outside, exactly as in the Python pipeline: visible BGR -> YCrCb
  (OpenCV, 8-bit), Y / 255 -> ``vis_y``; IR grey / 255 -> ``ir``; then
  R = Y + 1.403 (Cr - 0.5), G = Y - 0.714 (Cr - 0.5) - 0.344 (Cb - 0.5), B = Y + 1.773 (Cb - 0.5)
  with the fused Y and the source Cr, Cb in [0, 1]; uint8 = trunc(clamp(x * 255 + 0.5, 0, 255)).
* ``rgb8``: ``vis_rgb`` uint8 B x 3 x H x W (RGB order) and ``ir`` uint8 B x 1 x H x W (grey) ->
  ``fused_rgb`` uint8 B x 3 x H x W: all of the above inside the model.

``--check`` runs the exported model with onnxruntime (optional: ``pip install -e .[onnx]``) on the
M3FD sample pair cropped to an odd size (so the dynamic axes are exercised) and compares it with
PyTorch: max |difference| of the fused Y (mode y) or of the uint8 images (mode rgb8). Exit code 1
if the difference exceeds the tolerance (1e-4 for y, 1 grey level for rgb8).
"""
from __future__ import annotations

import argparse
import json
import os.path as osp
import sys
from typing import Optional, Sequence


ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402

import fusion  # noqa: E402,F401  (basicsr fixes + registries)
from fusion.inference import DEFAULT_MODEL, load_student  # noqa: E402
from fusion.onnx_export import ONNX_MODES, export_student_onnx  # noqa: E402
from fusion.utils.cli import run_cli  # noqa: E402
from fusion.utils.entry_io import input_arg, number_arg, output_arg, parse_checked  # noqa: E402
from fusion.utils.img_util import ImageReadError, fused_to_image, read_image, read_ir, read_vis_ycrcb  # noqa: E402


SAMPLE_VIS = osp.join(ROOT, 'datasets', 'M3FD', 'vi', '00000.png')
SAMPLE_IR = osp.join(ROOT, 'datasets', 'M3FD', 'ir', '00000.png')
TOLERANCE = {'y': 1e-4, 'rgb8': 1}
MIN_OPSET, MAX_OPSET = 7, 20  # the opsets of torch.onnx.export(dynamo=False) (torch.onnx._constants)


def check_with_onnxruntime(onnx_path: str, student: torch.nn.Module, mode: str, vis_path: str, ir_path: str,
                           crop: Sequence[int] = (203, 301)) -> dict:
    """Runs ``onnx_path`` with onnxruntime on a crop of a real pair and compares with PyTorch."""
    import cv2
    import onnxruntime as ort

    h, w = crop
    vis_ycrcb = read_vis_ycrcb(vis_path)[0][:h, :w]
    ir = read_ir(ir_path)[:h, :w]
    net = student.fuse_for_inference()
    with torch.inference_mode():
        ref_y = net(torch.from_numpy(np.ascontiguousarray(vis_ycrcb[..., 0]))[None, None],
                    torch.from_numpy(np.ascontiguousarray(ir))[None, None])
    session = ort.InferenceSession(onnx_path, providers=['CPUExecutionProvider'])
    if mode == 'y':
        feed = {'vis_y': np.ascontiguousarray(vis_ycrcb[None, None, ..., 0]), 'ir': ir[None, None]}
        out = session.run(None, feed)[0]
        diff = float(np.abs(out - ref_y.numpy()).max())
        return {'max_abs_diff': diff, 'size': [h, w], 'ok': diff <= TOLERANCE['y']}
    # rgb8: feed the 8-bit source pixels; compare with the Python pipeline's uint8 result
    vis8 = read_image(vis_path)[:h, :w]
    vis8 = np.repeat(vis8[..., None], 3, axis=2) if vis8.ndim == 2 else vis8[..., :3]
    ir8 = read_image(ir_path)[:h, :w]
    ir8 = cv2.cvtColor(ir8[..., :3], cv2.COLOR_BGR2GRAY) if ir8.ndim == 3 else ir8
    if vis8.dtype != np.uint8 or ir8.dtype != np.uint8:
        raise ImageReadError(f'{vis_path} / {ir_path}: the rgb8 check needs 8-bit images')
    feed = {'vis_rgb': np.ascontiguousarray(vis8[..., ::-1].transpose(2, 0, 1))[None], 'ir': ir8[None, None]}
    out = session.run(None, feed)[0][0].transpose(1, 2, 0)
    ref = fused_to_image(ref_y[0], torch.from_numpy(np.ascontiguousarray(vis_ycrcb[..., 1]))[None],
                         torch.from_numpy(np.ascontiguousarray(vis_ycrcb[..., 2]))[None])
    diff = np.abs(out.astype(np.int32) - ref.astype(np.int32))
    return {'max_abs_diff': int(diff.max()), 'values_differing': int((diff > 0).sum()), 'values': int(diff.size),
            'size': [h, w], 'ok': int(diff.max()) <= TOLERANCE['rgb8']}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    output_arg(parser, '--output', kind='file', required=True, help='the .onnx file to write')
    input_arg(parser, '--checkpoint', kind='file', default=DEFAULT_MODEL,
              help='student weights (default: the released ones)')
    parser.add_argument('--mode', default='y', choices=ONNX_MODES, help='y (default) or rgb8, see above')
    number_arg(parser, '--opset', int, min=MIN_OPSET, max=MAX_OPSET, default=17, help='ONNX opset (default 17)')
    parser.add_argument('--check', action='store_true', help='compare with PyTorch through onnxruntime')
    input_arg(parser, '--check-vis', kind='file', default=SAMPLE_VIS, help='visible image for --check')
    input_arg(parser, '--check-ir', kind='file', default=SAMPLE_IR, help='infrared image for --check')
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_checked(build_parser(), argv)
    try:
        student = load_student(args.checkpoint)
        export_student_onnx(student, args.output, mode=args.mode, opset=args.opset)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    report = {'onnx': args.output, 'mode': args.mode, 'opset': args.opset, 'bytes': osp.getsize(args.output)}
    if args.check:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            print('error: --check needs onnxruntime (pip install -e .[onnx])', file=sys.stderr)
            return 1
        try:
            report['check'] = check_with_onnxruntime(args.output, student, args.mode, args.check_vis, args.check_ir)
        except ImageReadError as err:
            print(f'error: {err}', file=sys.stderr)
            return 1
    print(json.dumps(report, indent=2))
    return 0 if report.get('check', {}).get('ok', True) else 1


if __name__ == '__main__':
    run_cli(main, exit_code=1)
