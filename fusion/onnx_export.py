"""Deployment of the SAGE student outside PyTorch: the whole 8-bit pipeline as one module
(:class:`StudentRGB8`) and ONNX export (:func:`export_student_onnx`). The command line is
``scripts/export_onnx.py``; see docs/performance.md.
"""
from __future__ import annotations

import io
import warnings
from typing import Tuple

import torch
from torch import nn

from fusion.utils.file_util import atomic_write_bytes
from fusion.utils.img_util import ycrcb_to_rgb


# OpenCV's 8-bit BGR->YCrCb in fixed point (14-bit coefficients, round half up). Every
# intermediate is an integer below 2^24, so float32 evaluates it exactly: for all 2^24 RGB
# triplets the result equals cv2.cvtColor (checked in tests/test_export_onnx.py).
_Y_R, _Y_G, _Y_B = 4899.0, 9617.0, 1868.0
_CR_K, _CB_K = 11682.0, 9241.0
_SHIFT = 16384.0
_HALF = 8192.0
_CHROMA_DELTA = 128.0 * _SHIFT + _HALF


def rgb8_to_ycrcb8(rgb: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """B x 3 x H x W RGB (uint8 or integer-valued float) -> Y, Cr, Cb as integer-valued float32
    B x 1 x H x W tensors in 0..255, equal to OpenCV's ``COLOR_RGB2YCrCb`` on uint8."""
    x = rgb.float()
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    y = torch.floor((r * _Y_R + g * _Y_G + b * _Y_B + _HALF) / _SHIFT)
    cr = torch.clamp(torch.floor(((r - y) * _CR_K + _CHROMA_DELTA) / _SHIFT), 0.0, 255.0)
    cb = torch.clamp(torch.floor(((b - y) * _CB_K + _CHROMA_DELTA) / _SHIFT), 0.0, 255.0)
    return y, cr, cb


class StudentRGB8(nn.Module):
    """The faithful SAGE pipeline on 8-bit images in one module (what ``export_onnx --mode rgb8``
    exports): RGB uint8 visible + grey uint8 IR in, fused RGB uint8 out.

    Steps, each the same arithmetic as the Python pipeline (``read_vis_ycrcb`` / ``read_ir``,
    student, ``ycrcb_to_rgb``, ``tensor_to_uint8``): OpenCV's fixed-point RGB->YCrCb, /255, the
    student on (Y, IR), the official YCrCb->RGB matrix with the source Cr/Cb, ``x*255+0.5``
    clamped to [0, 255] and truncated.

    ``forward(vis_rgb, ir)``: vis_rgb B x 3 x H x W uint8 in **RGB** order (OpenCV reads BGR:
    reverse the channels), ir B x 1 x H x W uint8 grey (convert colour IR with OpenCV's BGR2GRAY
    first, as ``read_ir`` does); returns B x 3 x H x W uint8 RGB.
    """

    def __init__(self, core: nn.Module) -> None:
        super().__init__()
        self.core = core

    def forward(self, vis_rgb: torch.Tensor, ir: torch.Tensor) -> torch.Tensor:
        y, cr, cb = rgb8_to_ycrcb8(vis_rgb)
        fused = self.core(y / 255.0, ir.float() / 255.0)
        rgb = ycrcb_to_rgb(fused, cr / 255.0, cb / 255.0)
        # save_image's rounding; the explicit floor keeps ONNX's float->uint8 cast unambiguous
        return torch.floor(torch.clamp(rgb * 255.0 + 0.5, 0.0, 255.0)).to(torch.uint8)


ONNX_MODES = ('y', 'rgb8')


def export_student_onnx(student: nn.Module, path: str, mode: str = 'y', opset: int = 17,
                        example_size: Tuple[int, int] = (64, 96)) -> str:
    """Writes the student as an ONNX model with dynamic batch, height and width; returns ``path``.

    ``mode='y'``: inputs ``vis_y``, ``ir`` (float32 B x 1 x H x W in [0, 1]), output ``fused_y``
    (float32 B x 1 x H x W); the YCrCb conversion stays outside (docs/performance.md).
    ``mode='rgb8'``: inputs ``vis_rgb`` (uint8 B x 3 x H x W, RGB) and ``ir`` (uint8 B x 1 x H x W),
    output ``fused_rgb`` (uint8 B x 3 x H x W): the complete pipeline (:class:`StudentRGB8`).

    ``student`` is any network with ``fuse_for_inference()`` (the SAGE student: the BN-folded
    :class:`~fusion.archs.sage_student_deploy.FastSAGEStudent`). The graph uses standard ops
    (Conv, LeakyRelu, MaxPool, Resize, Add, Tanh). It uses torch's TorchScript-based exporter
    (``dynamo=False``), which needs only the ``onnx`` package; the newer torch.export-based
    exporter would also need onnxscript.
    The file is written atomically.
    """
    if mode not in ONNX_MODES:
        raise ValueError(f'mode must be one of {ONNX_MODES}, got {mode!r}')
    core = student.fuse_for_inference().cpu().float()
    if hasattr(core, 'use_mkldnn'):
        core.use_mkldnn = False  # the export traces standard ops
    h, w = example_size
    axes = {0: 'batch', 2: 'height', 3: 'width'}
    if mode == 'y':
        model: nn.Module = core
        args = (torch.rand(1, 1, h, w), torch.rand(1, 1, h, w))
        names_in, names_out = ['vis_y', 'ir'], ['fused_y']
    else:
        model = StudentRGB8(core)
        args = (torch.randint(0, 256, (1, 3, h, w), dtype=torch.uint8),
                torch.randint(0, 256, (1, 1, h, w), dtype=torch.uint8))
        names_in, names_out = ['vis_rgb', 'ir'], ['fused_rgb']
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # the TorchScript exporter announces its deprecation; it is the one that needs no onnxscript
        warnings.filterwarnings('ignore', category=DeprecationWarning)
        warnings.filterwarnings('ignore', message='.*legacy TorchScript-based ONNX export.*')
        warnings.filterwarnings('ignore', message='.*feature will be removed.*')
        torch.onnx.export(model.eval(), args, buffer, dynamo=False, opset_version=opset, input_names=names_in,
                          output_names=names_out, dynamic_axes={n: axes for n in names_in + names_out},
                          do_constant_folding=True)
    atomic_write_bytes(buffer.getvalue(), path)
    return path
