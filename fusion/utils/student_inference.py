"""Fast, faithful inference for the SAGE student (the network users deploy).

Two pieces:

* :func:`fuse_student` / :class:`FastStudent`: an inference-only copy of an eval-mode
  :class:`~fusion.archs.sage_student_arch.SAGEStudent` with every BatchNorm folded into the
  convolution before it. The layer structure is the student's (module1..module5,
  adjust_channels4/5, final_decoder); two exact rewrites remove memory traffic:

  - the 1x1 ``adjust_channels`` conv on ``cat(upsample(low), skip)`` is split into
    ``upsample(W_low * low) + W_skip * skip``. Bilinear interpolation is a per-channel convex
    combination and a 1x1 conv without bias is a per-pixel linear map, so they commute: the
    concatenation (a full-resolution 64-channel copy) disappears and part of the 1x1 work runs at
    the lower resolution;
  - on CPU, conv + bias + LeakyReLU, conv + add and conv + Tanh run as single oneDNN kernels
    (``torch.ops.mkldnn._convolution_pointwise``), in channels_last. Elsewhere (CUDA, ONNX
    export, a torch without those ops) the same graph runs with standard ops.

  Results equal the plain eval-mode student to ~1e-6 (float rounding only).

* :class:`StudentInferencer`: runs either network on lists of (vis_y, ir) pairs under
  ``torch.inference_mode``, batches pairs of equal size, picks the memory format per device
  (channels_last on CPU, NCHW on CUDA: measured), keeps float32 convolutions exact on CUDA (no
  TF32) and can tile images too large for memory (:func:`fusion.utils.tiling.blend_tiles`),
  exactly for any image size.

* Deployment: :class:`StudentRGB8` (the whole 8-bit pipeline as one module) and
  :func:`export_student_onnx`.

Measured speed-ups and how to reproduce them: ``scripts/benchmark.py`` and the README's
performance section.
"""
from __future__ import annotations

import contextlib
import copy
import logging
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fusion.utils.tiling import blend_tiles, tiled_forward

logger = logging.getLogger(__name__)

LEAKY_SLOPE = 0.01
# the student pools twice by 2: tiles that start and end on multiples of 4 see the same pooling
# grid and the same exact 2x upsampling as the whole image
STUDENT_SIZE_MULTIPLE = 4
# outputs this far (pixels) from a tile's cut edge equal the untiled ones: measured max error
# 1e-4 at 24 px, 3e-7 at 32 px, 0 from 40 px (M3FD 00000); tiled_forward discards overlap // 3
# pixels per cut side, so an overlap of 3 * 32 keeps every used pixel >= 32 px from a cut
STUDENT_TILE_MARGIN = 32
DEFAULT_TILE_OVERLAP = 3 * STUDENT_TILE_MARGIN

TensorOrArray = Union[torch.Tensor, np.ndarray]


# --------------------------------------------------------------------------------------------
# oneDNN fused kernels (CPU)
# --------------------------------------------------------------------------------------------
def _mkldnn_ops_available() -> bool:
    """True when this torch has oneDNN's fused conv kernels and they give the reference result.

    The ops are private (they back torch.compile on CPU), so they are checked once by running them
    against the standard ops instead of trusting their presence.
    """
    if not torch.backends.mkldnn.is_available():
        return False
    mkldnn = getattr(torch.ops, 'mkldnn', None)
    if mkldnn is None or not hasattr(mkldnn, '_convolution_pointwise'):
        return False
    try:
        gen = torch.Generator().manual_seed(0)
        x = torch.rand(1, 4, 9, 11, generator=gen).contiguous(memory_format=torch.channels_last)
        other = torch.rand(1, 3, 9, 11, generator=gen).contiguous(memory_format=torch.channels_last)
        w3 = torch.randn(3, 4, 3, 3, generator=gen).contiguous(memory_format=torch.channels_last)
        w1 = torch.randn(3, 4, 1, 1, generator=gen).contiguous(memory_format=torch.channels_last)
        b = torch.randn(3, generator=gen)
        with torch.inference_mode():
            got_unary = _conv_unary_mkldnn(x, w3, b, 1, 'leaky_relu', [LEAKY_SLOPE])
            got_tanh = _conv_unary_mkldnn(x, w3, b, 1, 'tanh', [])
            got_binary = _conv_add_mkldnn(x, other, w1, b)
            ref_unary = F.leaky_relu(F.conv2d(x, w3, b, padding=1), LEAKY_SLOPE)
            ref_tanh = torch.tanh(F.conv2d(x, w3, b, padding=1))
            ref_binary = F.conv2d(x, w1, b) + other
        return all(torch.allclose(g, r, atol=1e-5) for g, r in
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


_MKLDNN_OK: Optional[bool] = None


def mkldnn_fused_available() -> bool:
    """Cached :func:`_mkldnn_ops_available` (checked on first use)."""
    global _MKLDNN_OK
    if _MKLDNN_OK is None:
        _MKLDNN_OK = _mkldnn_ops_available()
    return _MKLDNN_OK


# --------------------------------------------------------------------------------------------
# BN folding and the fused network
# --------------------------------------------------------------------------------------------
def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> Tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of ``bn(conv(x))`` as one conv, with BN's running statistics (eval mode).

    Computed in float64 so the folded layer differs from the two-step one only by the rounding of
    the final float32 values.
    """
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError('cannot fold a BatchNorm without running statistics (track_running_stats=False)')
    w = conv.weight.detach().double()
    b = conv.bias.detach().double() if conv.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64,
                                                                              device=w.device)
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(b)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(b)
    scale = gamma / torch.sqrt(bn.running_var.detach().double() + bn.eps)
    folded_w = w * scale.view(-1, 1, 1, 1)
    folded_b = (b - bn.running_mean.detach().double()) * scale + beta
    dtype = conv.weight.dtype
    return folded_w.to(dtype), folded_b.to(dtype)


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
            raise ValueError('FastStudent supports stride-1, ungrouped convs with LeakyReLU(0.01) only')
        convs.append(_folded_conv(*fold_conv_bn(conv, bn)))
    return nn.ModuleList(convs)


class FastStudent(nn.Module):
    """Inference-only SAGE student: BN folded, concatenations removed, fused kernels on CPU.

    Build it with :func:`fuse_student`. ``forward(vis_y, ir)`` takes B x 1 x H x W tensors in
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

    # -- building blocks: fused oneDNN kernels when possible, standard ops otherwise ------------
    def _fused_ok(self, x: torch.Tensor) -> bool:
        return (self.use_mkldnn and x.device.type == 'cpu' and x.dtype == torch.float32
                and not torch.jit.is_tracing() and not torch.jit.is_scripting()
                and not torch.onnx.is_in_onnx_export() and mkldnn_fused_available()
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
        tiles reproduce the untiled result for every image size (see :class:`StudentInferencer`).
        """
        # activations follow the weights' memory format (set with .to(memory_format=...) by
        # StudentInferencer per device): mixed formats would make every conv reorder its input
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


def fuse_student(student: nn.Module) -> FastStudent:
    """Returns a :class:`FastStudent` for ``student`` (a SAGEStudent; not modified, any mode:
    a copy is put in eval mode so the running BN statistics are folded)."""
    student = copy.deepcopy(student).eval()
    return FastStudent(student)


# --------------------------------------------------------------------------------------------
# Batched inference
# --------------------------------------------------------------------------------------------
def _as_nchw(t: TensorOrArray, what: str) -> torch.Tensor:
    """H x W, 1 x H x W or 1 x 1 x H x W (tensor or array) -> float32 1 x 1 x H x W tensor."""
    if isinstance(t, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(t))
    if not isinstance(t, torch.Tensor):
        raise TypeError(f'{what}: expected a tensor or numpy array, got {type(t).__name__}')
    if t.dim() == 2:
        t = t[None, None]
    elif t.dim() == 3 and t.shape[0] == 1:
        t = t[None]
    elif not (t.dim() == 4 and t.shape[:2] == (1, 1)):
        raise ValueError(f'{what}: expected a single-channel H x W, 1 x H x W or 1 x 1 x H x W image, '
                         f'got shape {tuple(t.shape)}')
    if not t.is_floating_point():
        raise ValueError(f'{what}: expected float values in [0, 1], got dtype {t.dtype}')
    return t.float()


@contextlib.contextmanager
def exact_fp32(device: torch.device) -> Iterator[None]:
    """Keeps float32 convolutions in full precision on CUDA (cuDNN's TF32 default would change
    results by ~1e-3, far beyond the 1e-5 the outputs are held to)."""
    if device.type != 'cuda':
        yield
        return
    old_tf32, old_bench = torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True  # pick the fastest conv algorithm per input size
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark = old_tf32, old_bench


def resolve_channels_last(channels_last: Union[bool, str], device: torch.device) -> bool:
    """'auto' picks the faster memory format measured for the student (batch 1 and 4, fp32):
    channels_last on CPU when oneDNN is available (~2x faster than NCHW on a 2-core AVX2 CPU at
    480x640), NCHW on CUDA (cuDNN's fp32 NCHW kernels: 6.3 ms vs 7.9 ms channels_last at 768x1024
    on an H100) and elsewhere."""
    if channels_last == 'auto':
        return device.type == 'cpu' and torch.backends.mkldnn.is_available()
    if not isinstance(channels_last, bool):
        raise ValueError(f"channels_last must be 'auto', True or False, got {channels_last!r}")
    return channels_last


class StudentInferencer:
    """Runs the SAGE student on (vis_y, ir) pairs as fast as the device allows, same results.

    Args:
        student: a SAGEStudent (weights loaded; any mode, it is copied and put in eval mode).
        device: where to run ('cpu', 'cuda', 'cuda:1', torch.device).
        fast: True (default) runs :class:`FastStudent`; False runs the plain eval-mode student
            (BN separate; NCHW unless channels_last=True) as the official code does, still under
            inference_mode.
        channels_last: 'auto' | True | False (see :func:`resolve_channels_last`; 'auto' means
            False for the plain path).
        max_batch: at most this many pairs of equal size per forward pass.
        tile_size: None (whole images) or a tile size (int or (h, w)); images larger than the tile
            are fused tile by tile (:func:`fusion.utils.tiling.tiled_forward`).
        tile_overlap: overlap between neighbouring tiles in pixels. The default
            (``DEFAULT_TILE_OVERLAP``) reproduces untiled results within 1e-4 on images whose H
            and W are multiples of 4; smaller values blend smoothly but differ more.

    Call it with a sequence of ``(vis_y, ir)`` pairs (tensors or arrays of shape H x W,
    1 x H x W or 1 x 1 x H x W, float in [0, 1]); it returns one 1 x H x W float32 CPU tensor (the
    fused Y, same order) per pair. :meth:`fuse` runs one batch of B x 1 x H x W tensors and keeps
    the result on the device.
    """

    def __init__(self, student: nn.Module, device: Union[str, torch.device] = 'cpu', *, fast: bool = True,
                 channels_last: Union[bool, str] = 'auto', max_batch: int = 4,
                 tile_size: Optional[Union[int, Tuple[int, int]]] = None,
                 tile_overlap: int = DEFAULT_TILE_OVERLAP) -> None:
        if max_batch < 1:
            raise ValueError(f'max_batch must be >= 1, got {max_batch}')
        self.device = torch.device(device)
        if self.device.type == 'cuda' and not torch.cuda.is_available():
            raise RuntimeError(f'device {device!r} requested but CUDA is not available')
        self.fast = fast
        # the plain path stays as the official code runs it (NCHW) unless asked otherwise
        self.channels_last = (False if not fast and channels_last == 'auto'
                              else resolve_channels_last(channels_last, self.device))
        self.max_batch = max_batch
        self.tile_size = tile_size
        self.tile_overlap = tile_overlap
        net = fuse_student(student) if fast else copy.deepcopy(student).eval()
        net = net.to(self.device)
        if self.channels_last:
            net = net.to(memory_format=torch.channels_last)
        self.net = net.requires_grad_(False)

    def _forward(self, vis_y: torch.Tensor, ir: torch.Tensor) -> torch.Tensor:
        if self.fast:
            return self.net(vis_y, ir)
        return self.net(vis_y, ir)[0]

    def fuse(self, vis_y: torch.Tensor, ir: torch.Tensor) -> torch.Tensor:
        """One batch: B x 1 x H x W vis_y and ir in [0, 1] -> fused Y, B x 1 x H x W on the device."""
        if vis_y.shape != ir.shape or vis_y.dim() != 4 or vis_y.shape[1] != 1:
            raise ValueError(f'vis_y and ir must both be B x 1 x H x W, got {tuple(vis_y.shape)} and {tuple(ir.shape)}')
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        vis_y = vis_y.to(self.device, torch.float32, non_blocking=True).contiguous(memory_format=memory_format)
        ir = ir.to(self.device, torch.float32, non_blocking=True).contiguous(memory_format=memory_format)
        with torch.inference_mode(), exact_fp32(self.device):
            h, w = vis_y.shape[-2:]
            if self.tile_size is None or not _larger_than(h, w, self.tile_size):
                return self._forward(vis_y, ir)
            if not self.fast:  # the plain network cannot take the window: exact for H, W multiples of 4
                return tiled_forward(self._forward, [vis_y, ir], self.tile_size, self.tile_overlap,
                                     multiple=STUDENT_SIZE_MULTIPLE)

            def run_tile(top: int, bottom: int, left: int, right: int) -> torch.Tensor:
                return self.net(vis_y[..., top:bottom, left:right], ir[..., top:bottom, left:right],
                                window=(top, left, h, w))

            return blend_tiles(run_tile, h, w, self.tile_size, self.tile_overlap, multiple=STUDENT_SIZE_MULTIPLE)

    def __call__(self, pairs: Sequence[Tuple[TensorOrArray, TensorOrArray]]) -> List[torch.Tensor]:
        inputs = []
        for i, (vis_y, ir) in enumerate(pairs):
            vis_t, ir_t = _as_nchw(vis_y, f'pair {i} vis_y'), _as_nchw(ir, f'pair {i} ir')
            if vis_t.shape != ir_t.shape:
                raise ValueError(f'pair {i}: vis_y is {tuple(vis_t.shape[-2:])} but ir is {tuple(ir_t.shape[-2:])} '
                                 '(H x W); pairs must be registered and equal in size')
            inputs.append((vis_t, ir_t))
        # group equal sizes (first-seen order) so each forward pass gets a real batch
        groups: dict = {}
        for i, (vis_t, _) in enumerate(inputs):
            groups.setdefault(tuple(vis_t.shape[-2:]), []).append(i)
        results: List[Optional[torch.Tensor]] = [None] * len(inputs)
        for indices in groups.values():
            for start in range(0, len(indices), self.max_batch):
                chunk = indices[start:start + self.max_batch]
                vis_b = torch.cat([inputs[i][0] for i in chunk])
                ir_b = torch.cat([inputs[i][1] for i in chunk])
                fused = self.fuse(vis_b, ir_b).float().cpu()
                for j, i in enumerate(chunk):
                    results[i] = fused[j].contiguous()
        return results  # type: ignore[return-value]


def _larger_than(h: int, w: int, tile_size: Union[int, Tuple[int, int]]) -> bool:
    th, tw = (tile_size, tile_size) if isinstance(tile_size, int) else tile_size
    return h > th or w > tw


# --------------------------------------------------------------------------------------------
# Deployment: the whole 8-bit pipeline as one module, ONNX export
# --------------------------------------------------------------------------------------------
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
        from fusion.utils.img_util import ycrcb_to_rgb  # sits beside this module; no cycle
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
    (float32 B x 1 x H x W); the YCrCb conversion stays outside (see the README).
    ``mode='rgb8'``: inputs ``vis_rgb`` (uint8 B x 3 x H x W, RGB) and ``ir`` (uint8 B x 1 x H x W),
    output ``fused_rgb`` (uint8 B x 3 x H x W): the complete pipeline (:class:`StudentRGB8`).

    The graph is the BN-folded :class:`FastStudent` in standard ops (Conv, LeakyRelu, MaxPool,
    Resize, Add, Tanh). It uses torch's TorchScript-based exporter (``dynamo=False``), which needs
    only the ``onnx`` package; the newer torch.export-based exporter would also need onnxscript.
    The file is written atomically.
    """
    import io
    import warnings

    from fusion.utils.file_util import atomic_write_bytes

    if mode not in ONNX_MODES:
        raise ValueError(f'mode must be one of {ONNX_MODES}, got {mode!r}')
    core = fuse_student(student).cpu().float()
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
