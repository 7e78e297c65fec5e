"""Deploy-time form of the SAGE student: :class:`FastSAGEStudent`, built by
:meth:`fusion.archs.sage_student_arch.SAGEStudent.fuse_for_inference`.

An inference-only copy of an eval-mode student with every BatchNorm folded into the convolution
before it. The layer structure is the student's (module1..module5, adjust_channels4/5,
final_decoder); two exact rewrites remove memory traffic:

- the 1x1 ``adjust_channels`` conv on ``cat(upsample(low), skip)`` is split into
  ``upsample(W_low * low) + W_skip * skip``. Bilinear interpolation is a per-channel convex
  combination and a 1x1 conv without bias is a per-pixel linear map, so they commute: the
  concatenation (a full-resolution 64-channel copy) disappears and part of the 1x1 work runs at the
  lower resolution;
- on CPU, conv + bias + LeakyReLU, conv + add and conv + Tanh run as single oneDNN kernels
  (``torch.ops.mkldnn._convolution_pointwise``), in channels_last, in float32 or bfloat16 (a
  bf16 copy: ``.to(torch.bfloat16)``, as ``FusionInferencer(precision='bf16')`` makes). Elsewhere
  (CUDA, ONNX export, a torch without those ops) the same graph runs with standard ops.

Results equal the plain eval-mode student to ~1e-6 in float32 (float rounding only); bf16 is
~55 dB PSNR from it (docs/mixed_precision.md). Speed: docs/benchmarks.md.
"""
from __future__ import annotations

import logging
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from fusion.archs.bn_fold import fold_conv_bn


logger = logging.getLogger(__name__)

LEAKY_SLOPE = 0.01


# --------------------------------------------------------------------------------------------
# oneDNN fused kernels (CPU)
# --------------------------------------------------------------------------------------------
def _mkldnn_ops_available(dtype: torch.dtype = torch.float32) -> bool:
    """True when this torch has oneDNN's fused conv kernels for ``dtype`` (float32 or bfloat16)
    and they give the reference result.

    The ops are private (they back torch.compile on CPU), so they are checked once by running them
    against the standard ops (in float32, on the same rounded inputs) instead of trusting their
    presence.
    """
    if not torch.backends.mkldnn.is_available():
        return False
    mkldnn = getattr(torch.ops, 'mkldnn', None)
    if mkldnn is None or not hasattr(mkldnn, '_convolution_pointwise'):
        return False
    try:
        gen = torch.Generator().manual_seed(0)

        def make(*shape: int) -> torch.Tensor:
            return torch.randn(*shape, generator=gen).to(dtype).contiguous(memory_format=torch.channels_last)

        x, other, w3, w1 = make(1, 4, 9, 11), make(1, 3, 9, 11), make(3, 4, 3, 3), make(3, 4, 1, 1)
        b = torch.randn(3, generator=gen).to(dtype)
        with torch.inference_mode():
            got_unary = _conv_unary_mkldnn(x, w3, b, 1, 'leaky_relu', [LEAKY_SLOPE])
            got_tanh = _conv_unary_mkldnn(x, w3, b, 1, 'tanh', [])
            got_binary = _conv_add_mkldnn(x, other, w1, b)
            x, other, w3, w1, b = (t.float() for t in (x, other, w3, w1, b))
            ref_unary = F.leaky_relu(F.conv2d(x, w3, b, padding=1), LEAKY_SLOPE)
            ref_tanh = torch.tanh(F.conv2d(x, w3, b, padding=1))
            ref_binary = F.conv2d(x, w1, b) + other
        # bf16 outputs are rounded to 8 significant bits
        tol = 1e-5 if dtype == torch.float32 else 3e-2
        return all(g.dtype == dtype and torch.allclose(g.float(), r, atol=tol, rtol=tol) for g, r in
                   ((got_unary, ref_unary), (got_tanh, ref_tanh), (got_binary, ref_binary)))
    except Exception as err:  # any failure just means "use the standard ops"
        logger.info('oneDNN fused convolutions unavailable (%s); using standard ops', err)
        return False


def _conv_unary_mkldnn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, padding: int,
                       attr: str, scalars: list) -> torch.Tensor:
    """act(conv(x)) in one oneDNN kernel."""
    return torch.ops.mkldnn._convolution_pointwise(
        x, weight, bias, [padding, padding], [1, 1], [1, 1], 1, attr, scalars, '')


def _conv_add_mkldnn(x: torch.Tensor, other: torch.Tensor, weight: torch.Tensor,
                     bias: torch.Tensor) -> torch.Tensor:
    """conv1x1(x) + other in one oneDNN kernel (oneDNN has no add + LeakyReLU post-op chain here:
    'Unary Fusion behavior undefined', so the activation follows in place)."""
    return torch.ops.mkldnn._convolution_pointwise.binary(
        x, other, weight, bias, [0, 0], [1, 1], [1, 1], 1, 'add', 1.0, None, [], None)


_MKLDNN_OK: Dict[torch.dtype, bool] = {}
FUSED_DTYPES = (torch.float32, torch.bfloat16)


def mkldnn_fused_available(dtype: torch.dtype = torch.float32) -> bool:
    """Cached :func:`_mkldnn_ops_available` per dtype (checked on first use)."""
    if dtype not in FUSED_DTYPES:
        return False
    if dtype not in _MKLDNN_OK:
        _MKLDNN_OK[dtype] = _mkldnn_ops_available(dtype)
    return _MKLDNN_OK[dtype]


# --------------------------------------------------------------------------------------------
# BN folding and the fused network
# --------------------------------------------------------------------------------------------
def _folded_conv(weight: torch.Tensor, bias: Optional[torch.Tensor]) -> nn.Conv2d:
    out_ch, in_ch, kh, kw = weight.shape
    conv = nn.Conv2d(in_ch, out_ch, (kh, kw), padding=(kh // 2, kw // 2), bias=bias is not None)
    conv = conv.to(device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        conv.weight.copy_(weight)
        if bias is not None:
            conv.bias.copy_(bias)
    conv.requires_grad_(False)
    return conv


def _fold_block(block: nn.Sequential) -> nn.ModuleList:
    """[conv, BN, LeakyReLU] x n -> n folded convs (the LeakyReLU is applied in forward)."""
    layers = list(block)
    if len(layers) % 3 != 0:
        raise ValueError(f'expected [conv, BN, LeakyReLU] triplets, got {len(layers)} layers')
    convs = []
    for i in range(0, len(layers), 3):
        conv, bn, act = layers[i:i + 3]
        if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and isinstance(act, nn.LeakyReLU)):
            raise ValueError(f'unexpected layers {type(conv).__name__}, {type(bn).__name__}, {type(act).__name__}')
        if abs(act.negative_slope - LEAKY_SLOPE) > 0 or conv.stride != (1, 1) or conv.groups != 1 \
                or conv.dilation != (1, 1):
            raise ValueError('FastSAGEStudent supports stride-1, ungrouped convs with LeakyReLU(0.01) only')
        convs.append(_folded_conv(*fold_conv_bn(conv, bn)))
    return nn.ModuleList(convs)


class FastSAGEStudent(nn.Module):
    supports_window = True  # forward takes ``window=``: tiles reproduce the untiled result exactly

    """Inference-only SAGE student: BN folded, concatenations removed, fused kernels on CPU.

    Build it with ``SAGEStudent.fuse_for_inference()``. ``forward(vis_y, ir)`` takes B x 1 x H x W tensors in
    [0, 1] (any H, W) and returns only the fused Y (B x 1 x H x W), equal to
    ``SAGEStudent.eval()(vis_y, ir)[0]`` within float rounding (~1e-6). Meant for inference: the
    fused CPU kernels are used only with autograd off (``torch.inference_mode`` / ``no_grad``).

    Attributes follow the student: ``module1``..``module5`` (3 folded convs each),
    ``adjust_channels4_up`` / ``adjust_channels4_skip`` (the two halves of the split 1x1 conv; the
    bias lives in the skip half), the same for 5, and ``final_decoder`` (conv; Tanh in forward).
    """

    def __init__(self, student: nn.Module) -> None:
        super().__init__()
        if student.training:
            raise ValueError('fold an eval-mode student (call .eval() first): folding uses BN running statistics')
        for name in ('module1', 'module2', 'module3', 'module4', 'module5'):
            setattr(self, name, _fold_block(getattr(student, name)))
        for name in ('adjust_channels4', 'adjust_channels5'):
            (conv,) = _fold_block(getattr(student, name))
            # the student concatenates [upsampled deep features, skip]: split the input channels
            low_ch = conv.in_channels // 2
            setattr(self, f'{name}_up', _folded_conv(conv.weight[:, :low_ch].clone(), None))
            setattr(self, f'{name}_skip', _folded_conv(conv.weight[:, low_ch:].clone(), conv.bias.clone()))
        final = student.final_decoder[0]
        if not isinstance(student.final_decoder[1], nn.Tanh):
            raise ValueError('the student must end with Tanh')
        self.final_decoder = _folded_conv(final.weight.detach().clone(),
                                          final.bias.detach().clone() if final.bias is not None else None)
        self.use_mkldnn = True  # the fused CPU kernels; switched off for export or comparison
        # what the runner needs for exact tiling, taken over from the network it was folded from
        self.size_multiple = student.size_multiple
        self.tile_margin = student.tile_margin

    # -- building blocks: fused oneDNN kernels when possible, standard ops otherwise ------------
    def _fused_ok(self, x: torch.Tensor) -> bool:
        return (self.use_mkldnn and x.device.type == 'cpu' and x.dtype == self.module1[0].weight.dtype
                and not torch.jit.is_tracing() and not torch.jit.is_scripting()
                and not torch.onnx.is_in_onnx_export() and mkldnn_fused_available(x.dtype)
                and not torch.is_grad_enabled())

    def _conv_act(self, conv: nn.Conv2d, x: torch.Tensor, act: str, fused: bool) -> torch.Tensor:
        if fused:
            scalars = [LEAKY_SLOPE] if act == 'leaky_relu' else []
            return _conv_unary_mkldnn(x, conv.weight, conv.bias, conv.padding[0], act, scalars)
        y = conv(x)
        return F.leaky_relu(y, LEAKY_SLOPE, inplace=True) if act == 'leaky_relu' else torch.tanh(y)

    def _block(self, convs: nn.ModuleList, x: torch.Tensor, fused: bool) -> torch.Tensor:
        for conv in convs:
            x = self._conv_act(conv, x, 'leaky_relu', fused)
        return x

    def _adjust(self, up_conv: nn.Conv2d, skip_conv: nn.Conv2d, low: torch.Tensor, skip: torch.Tensor,
                fused: bool, memory_format: torch.memory_format,
                window: Optional[Tuple[int, ...]]) -> torch.Tensor:
        """leaky_relu(W * cat(upsample(low), skip) + b) without the concatenation."""
        low = up_conv(low)
        if window is None:
            up = F.interpolate(low, size=skip.shape[-2:], mode='bilinear', align_corners=False)
        else:
            up = _upsample_in_window(low, skip.shape[-2:], *window)
        up = up.contiguous(memory_format=memory_format)
        out = _conv_add_mkldnn(skip, up, skip_conv.weight, skip_conv.bias) if fused else skip_conv(skip) + up
        return F.leaky_relu(out, LEAKY_SLOPE, inplace=True)

    def forward(self, vis_y: torch.Tensor, ir: torch.Tensor,
                window: Optional[Tuple[int, int, int, int]] = None) -> torch.Tensor:
        """Fused Y for B x 1 x H x W ``vis_y`` and ``ir`` in [0, 1].

        ``window = (top, left, full_h, full_w)`` says that the inputs are the tile
        ``[top:top+H, left:left+W]`` of a full_h x full_w image (top, left multiples of 4). The
        student's upsampling then uses the whole image's sampling positions, which differ from a
        tile's own when full_h or full_w is not a multiple of 4 (the pooled sizes round down), so
        tiles reproduce the untiled result for every image size (see :class:`fusion.inferencer.FusionInferencer`).
        """
        h, w = vis_y.shape[-2:]
        if window is None and (h < 4 or w < 4):  # tiny images: padded to the pooling's minimum, cropped back
            from fusion.archs.sage_student_arch import pad_to_min_size
            return self.forward(*pad_to_min_size((vis_y, ir), 4))[..., :h, :w]
        # activations follow the weights' memory format (set with .to(memory_format=...) by
        # FusionInferencer per device): mixed formats would make every conv reorder its input
        weight = self.module1[0].weight
        memory_format = (torch.channels_last if weight.is_contiguous(memory_format=torch.channels_last)
                         and not weight.is_contiguous() else torch.contiguous_format)
        if memory_format == torch.channels_last and vis_y.shape[1] == 1 and ir.shape[1] == 1:
            # interleave the two channels straight into NHWC (one copy instead of cat + reorder)
            x = torch.stack([vis_y[:, 0], ir[:, 0]], dim=-1).permute(0, 3, 1, 2)
        else:
            x = torch.cat([vis_y, ir], dim=1).contiguous(memory_format=memory_format)
        win4 = win5 = None
        if window is not None:
            top, left, full_h, full_w = window
            if top % 4 or left % 4:
                raise ValueError(f'tile origin ({top}, {left}) must be a multiple of 4 (the pooling grid)')
            if full_h % 4 or full_w % 4:  # otherwise the tile's own 2x upsampling is already exact
                h2, w2 = full_h // 2, full_w // 2
                win4 = (h2 // 2, w2 // 2, h2, w2, top // 4, left // 4, top // 2, left // 2)
                win5 = (h2, w2, full_h, full_w, top // 2, left // 2, top, left)
        fused = self._fused_ok(x)
        x1 = self._block(self.module1, x, fused)
        x2 = self._block(self.module2, F.max_pool2d(x1, 2), fused)
        x3 = self._block(self.module3, F.max_pool2d(x2, 2), fused)
        x4 = self._block(self.module4, self._adjust(self.adjust_channels4_up, self.adjust_channels4_skip,
                                                    x3, x2, fused, memory_format, win4), fused)
        x5 = self._block(self.module5, self._adjust(self.adjust_channels5_up, self.adjust_channels5_skip,
                                                    x4, x1, fused, memory_format, win5), fused)
        return self._conv_act(self.final_decoder, x5, 'tanh', fused)


def _upsample_axis(x: torch.Tensor, dim: int, out_size: int, in_full: int, out_full: int, in_offset: int,
                   out_offset: int) -> torch.Tensor:
    """Bilinear (align_corners=False) resampling along one axis of a window of a larger image:
    the window's output pixels out_offset.. take the full-size sampling positions, as
    ``F.interpolate(full, size=out_full)`` computes them (scale in/out, source clamped at 0)."""
    scale = torch.tensor(in_full / out_full, dtype=torch.float32)
    dst = torch.arange(out_offset, out_offset + out_size, dtype=torch.float32)
    src = ((dst + 0.5) * scale - 0.5).clamp_min(0.0)
    i0 = src.floor().long()
    i1 = torch.where(i0 < in_full - 1, i0 + 1, i0)
    lam = src - i0.float()
    last = x.shape[dim] - 1  # positions outside the window only occur near cut edges (discarded)
    i0 = (i0 - in_offset).clamp(0, last).to(x.device)
    i1 = (i1 - in_offset).clamp(0, last).to(x.device)
    shape = [1] * x.dim()
    shape[dim] = out_size
    lam = lam.to(device=x.device, dtype=x.dtype).view(shape)
    return torch.lerp(x.index_select(dim, i0), x.index_select(dim, i1), lam)


def _upsample_in_window(low: torch.Tensor, out_hw: Tuple[int, int], in_full_h: int, in_full_w: int,
                        out_full_h: int, out_full_w: int, in_top: int, in_left: int, out_top: int,
                        out_left: int) -> torch.Tensor:
    rows = _upsample_axis(low, 2, out_hw[0], in_full_h, out_full_h, in_top, out_top)
    return _upsample_axis(rows, 3, out_hw[1], in_full_w, out_full_w, in_left, out_left)
