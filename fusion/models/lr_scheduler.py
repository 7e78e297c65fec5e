"""Learning-rate schedulers of the framework's models (SAGE's cosine to a floor, SegFormer's
warm-up + poly decay), and building one from the options.

BasicSR keeps its schedulers in ``basicsr/models/lr_scheduler.py``; ours live here so every model
(SAGE, and any registered later) builds them the same way.
"""
from __future__ import annotations

import math
from typing import List

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from fusion.utils.option_schema import register_scheduler


class CosineToMinLR(LRScheduler):
    """Cosine annealing from the initial LR to ``eta_min`` over ``T_max`` steps of its own
    optimizer, in closed form (no drift, resumable, ``eta_min`` after the last step)."""

    def __init__(self, optimizer: torch.optim.Optimizer, T_max: int, eta_min: float = 0.0,
                 last_epoch: int = -1) -> None:
        self.T_max = max(1, int(T_max))
        self.eta_min = float(eta_min)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> List[float]:
        t = min(max(self.last_epoch, 0), self.T_max)
        factor = (1 + math.cos(math.pi * t / self.T_max)) / 2
        return [self.eta_min + (base - self.eta_min) * factor for base in self.base_lrs]


class WarmupPolyLR(LRScheduler):
    """``lr(it) = base_lr * warm(it) * (1 - it / total_iter) ** power`` (floored at ``min_lr``), with
    ``warm(it)`` rising linearly from ``warmup_ratio`` to 1 over the first ``warmup_iter`` steps.

    Options (``train.scheduler`` with ``type: WarmupPolyLR``): ``total_iter`` (set by the model to
    ``train.total_iter``), ``warmup_iter`` (SegFormer: 1500), ``warmup_ratio`` (1e-6), ``power``
    (1.0), ``min_lr`` (0). A closed form of the step count, so a resumed run continues exactly.
    """

    def __init__(self, optimizer: Optimizer, total_iter: int, warmup_iter: int = 0, warmup_ratio: float = 1e-6,
                 power: float = 1.0, min_lr: float = 0.0, last_epoch: int = -1) -> None:
        if total_iter < 1:
            raise ValueError(f'WarmupPolyLR: total_iter must be >= 1, got {total_iter}')
        self.total_iter = int(total_iter)
        self.warmup_iter = max(0, int(warmup_iter))
        self.warmup_ratio = float(warmup_ratio)
        self.power = float(power)
        self.min_lr = float(min_lr)
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        step = min(max(step, 0), self.total_iter)
        poly = (1.0 - step / self.total_iter) ** self.power
        if self.warmup_iter and step < self.warmup_iter:
            poly *= self.warmup_ratio + (1.0 - self.warmup_ratio) * step / self.warmup_iter
        return poly

    def get_lr(self):
        f = self.factor(self.last_epoch)
        return [max(self.min_lr, base * f) for base in self.base_lrs]


# option validation: the names build_scheduler knows beyond torch's classes
register_scheduler('CosineAnnealingLR', CosineToMinLR)
register_scheduler('CosineToMinLR', CosineToMinLR)
register_scheduler('WarmupPolyLR', WarmupPolyLR)


def build_scheduler(optimizer: torch.optim.Optimizer, sched_opt: dict, steps: int) -> LRScheduler:
    """A scheduler from an option dict (``type`` + keyword arguments; ``sched_opt`` is consumed).

    ``CosineAnnealingLR`` / ``CosineToMinLR`` build :class:`CosineToMinLR` whose ``T_max``
    (default ``auto``) is ``steps``, the number of steps this optimizer will take;
    ``WarmupPolyLR`` builds :class:`WarmupPolyLR` whose ``total_iter`` (default ``auto``) is
    ``steps``; any other ``torch.optim.lr_scheduler`` class is built by name with the remaining
    options.
    """
    sched_type = sched_opt.pop('type')
    if sched_type in ('CosineAnnealingLR', 'CosineToMinLR'):
        t_max = sched_opt.pop('T_max', 'auto')
        t_max = steps if t_max in (None, 'auto') else int(t_max)
        return CosineToMinLR(optimizer, T_max=t_max, **sched_opt)
    if sched_type == 'WarmupPolyLR':
        total = sched_opt.pop('total_iter', 'auto')
        return WarmupPolyLR(optimizer, total_iter=steps if total in (None, 'auto') else int(total), **sched_opt)
    cls = getattr(torch.optim.lr_scheduler, sched_type, None)
    if cls is None:
        raise ValueError(f'unknown scheduler type {sched_type!r} '
                         '(CosineAnnealingLR or any torch.optim.lr_scheduler class)')
    return cls(optimizer, **sched_opt)
