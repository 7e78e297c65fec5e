"""Size and speed of a fusion method as ``scripts/compare_methods.py`` reports them: parameters,
FLOPs of one forward pass (``torch.utils.flop_counter.FlopCounterMode``: 2 x multiply-accumulates,
counted on the meta device) and CPU latency of the runner's fast path (median of a few runs)."""
from __future__ import annotations

import copy
import statistics
import time
from typing import Dict, Tuple

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from fusion.inferencer import FusionInferencer


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def count_flops(net: nn.Module, size: Tuple[int, int]) -> int:
    """FLOPs of ``net(vis_y, ir)`` on 1 x 1 x H x W inputs (a meta-device copy: nothing computed)."""
    model = copy.deepcopy(net).to('meta').eval()
    x = torch.empty(1, 1, *size, device='meta')
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x, x)
    return int(counter.get_total_flops())


def cpu_latency_ms(net: nn.Module, size: Tuple[int, int], repeats: int = 3, warmup: int = 1) -> Dict[str, float]:
    """Median / min milliseconds of one fused pair through :class:`FusionInferencer` on the CPU
    (fast path where the method has one), random content of ``size``."""
    runner = FusionInferencer(net, 'cpu', max_batch=1)
    gen = torch.Generator().manual_seed(0)
    vis, ir = torch.rand(1, 1, *size, generator=gen), torch.rand(1, 1, *size, generator=gen)
    for _ in range(warmup):
        runner.fuse(vis, ir)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        runner.fuse(vis, ir)
        times.append((time.perf_counter() - t0) * 1000)
    return {'median_ms': round(statistics.median(times), 1), 'min_ms': round(min(times), 1), 'runs': repeats,
            'threads': torch.get_num_threads()}
