"""The inference runner: a fusion network on (vis_y, ir) pairs, as fast as the device allows.

:class:`FusionInferencer` works with any network whose ``forward(vis_y, ir)`` returns the fused Y
(or a tuple whose first element is it). It reads the network's deployment contract by duck typing,
so it knows no concrete arch:

* ``fuse_for_inference()`` (optional): returns the deploy-time network (e.g. BN folded) whose
  ``forward(vis_y, ir)`` returns the fused Y only; used when ``fast=True``.
* ``supports_window`` (optional, on the deploy-time network): its forward takes
  ``window=(top, left, full_h, full_w)`` and then tiles reproduce the untiled result exactly.
* ``size_multiple`` (default 1): tiles start on multiples of it (e.g. 4 for a net pooling twice).
* ``tile_margin`` (optional): pixels from a cut edge beyond which a tile equals the untiled
  output; the default ``tile_overlap`` is three times it (a third of the overlap is discarded).

Under ``torch.inference_mode`` it batches pairs of equal size, picks the memory format per device
(channels_last on CPU, NCHW on CUDA: measured), keeps float32 convolutions exact on CUDA (no TF32)
and can tile images too large for memory (:mod:`fusion.utils.tiling`). ``precision='bf16'`` (or
``'fp16'`` on CUDA) runs a copy of the network, weights and activations, in that dtype; results
come back as float32 (docs/mixed_precision.md).
"""
from __future__ import annotations

import contextlib
import copy
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from fusion.utils.precision_util import check_precision_supported, parse_precision, precision_dtype
from fusion.utils.tiling import blend_tiles, tiled_forward


# used when a network states no tile_margin; 3 x the SAGE student's measured margin of 32 px
DEFAULT_TILE_OVERLAP = 96

TensorOrArray = Union[torch.Tensor, np.ndarray]


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


class FusionInferencer:
    """Runs a fusion network on (vis_y, ir) pairs as fast as the device allows, same results.

    Args:
        net: the network (weights loaded; any mode: it is copied and put in eval mode).
        device: where to run ('cpu', 'cuda', 'cuda:1', torch.device).
        fast: True (default) runs ``net.fuse_for_inference()`` when the network offers it; False
            (or a network without it) runs the plain eval-mode network (NCHW unless
            channels_last=True), as the official code does, still under inference_mode.
        channels_last: 'auto' | True | False (see :func:`resolve_channels_last`; 'auto' means
            False for the plain path).
        max_batch: at most this many pairs of equal size per forward pass.
        tile_size: None (whole images) or a tile size (int or (h, w)); images larger than the tile
            are fused tile by tile (:func:`fusion.utils.tiling.blend_tiles`).
        tile_overlap: overlap between neighbouring tiles in pixels; None: 3 x the network's
            ``tile_margin`` (96 for the SAGE student: untiled results within 1e-6), else
            ``DEFAULT_TILE_OVERLAP``. Smaller values blend smoothly but differ more.
        precision: 'fp32' (default, exact) | 'bf16' (CPU with AVX512-BF16/AMX, recent GPUs) |
            'fp16' (CUDA only): the network (after ``fuse_for_inference()``, so BN is folded in
            float64 and rounded once) and its inputs are cast to that dtype; outputs are float32.

    Call it with a sequence of ``(vis_y, ir)`` pairs (tensors or arrays of shape H x W,
    1 x H x W or 1 x 1 x H x W, float in [0, 1]); it returns one 1 x H x W float32 CPU tensor (the
    fused Y, same order) per pair. :meth:`fuse` runs one batch of B x 1 x H x W tensors and keeps
    the result on the device.
    """

    def __init__(self, net: nn.Module, device: Union[str, torch.device] = 'cpu', *, fast: bool = True,
                 channels_last: Union[bool, str] = 'auto', max_batch: int = 4,
                 tile_size: Optional[Union[int, Tuple[int, int]]] = None,
                 tile_overlap: Optional[int] = None, precision: str = 'fp32') -> None:
        if max_batch < 1:
            raise ValueError(f'max_batch must be >= 1, got {max_batch}')
        self.device = torch.device(device)
        if self.device.type == 'cuda' and not torch.cuda.is_available():
            raise RuntimeError(f'device {device!r} requested but CUDA is not available')
        self.precision = parse_precision(precision)
        check_precision_supported(self.precision, self.device)
        self.dtype = precision_dtype(self.precision)
        self.fast = fast and callable(getattr(net, 'fuse_for_inference', None))
        # the plain path stays as the official code runs it (NCHW) unless asked otherwise
        self.channels_last = (False if not self.fast and channels_last == 'auto'
                              else resolve_channels_last(channels_last, self.device))
        self.max_batch = max_batch
        self.tile_size = tile_size
        self.size_multiple = int(getattr(net, 'size_multiple', 1))
        margin = getattr(net, 'tile_margin', None)
        self.tile_overlap = int(tile_overlap if tile_overlap is not None
                                else 3 * margin if margin is not None else DEFAULT_TILE_OVERLAP)
        deployed = net.fuse_for_inference() if self.fast else copy.deepcopy(net).eval()
        deployed = deployed.to(self.device, self.dtype)
        if self.channels_last:
            deployed = deployed.to(memory_format=torch.channels_last)
        self.net = deployed.requires_grad_(False)
        self.windowed = self.fast and bool(getattr(deployed, 'supports_window', False))

    def _forward(self, vis_y: torch.Tensor, ir: torch.Tensor, **kwargs) -> torch.Tensor:
        out = self.net(vis_y, ir, **kwargs)
        out = out[0] if isinstance(out, (tuple, list)) else out
        return out.float()  # tiles are blended in float32 whatever the network's precision

    def fuse(self, vis_y: torch.Tensor, ir: torch.Tensor) -> torch.Tensor:
        """One batch: B x 1 x H x W vis_y and ir in [0, 1] -> fused Y, B x 1 x H x W float32 on the
        device."""
        if vis_y.shape != ir.shape or vis_y.dim() != 4 or vis_y.shape[1] != 1:
            raise ValueError(f'vis_y and ir must both be B x 1 x H x W, got {tuple(vis_y.shape)} and {tuple(ir.shape)}')
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        vis_y = vis_y.to(self.device, self.dtype, non_blocking=True).contiguous(memory_format=memory_format)
        ir = ir.to(self.device, self.dtype, non_blocking=True).contiguous(memory_format=memory_format)
        with torch.inference_mode(), exact_fp32(self.device):
            return self._fuse(vis_y, ir)

    def _fuse(self, vis_y: torch.Tensor, ir: torch.Tensor) -> torch.Tensor:
        h, w = vis_y.shape[-2:]
        if self.tile_size is None or not _larger_than(h, w, self.tile_size):
            return self._forward(vis_y, ir)
        if not self.windowed:  # without the window: exact for H, W multiples of size_multiple
            return tiled_forward(self._forward, [vis_y, ir], self.tile_size, self.tile_overlap,
                                 multiple=self.size_multiple)

        def run_tile(top: int, bottom: int, left: int, right: int) -> torch.Tensor:
            return self._forward(vis_y[..., top:bottom, left:right], ir[..., top:bottom, left:right],
                                 window=(top, left, h, w))

        return blend_tiles(run_tile, h, w, self.tile_size, self.tile_overlap, multiple=self.size_multiple)

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
