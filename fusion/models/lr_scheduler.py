"""Learning-rate schedulers of the framework's models, and building one from the options.

BasicSR keeps its schedulers in ``basicsr/models/lr_scheduler.py``; ours live here so every model
(SAGE, and any registered later) builds them the same way.
"""
from __future__ import annotations

import math
from typing import List

import torch
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


# option validation: the names build_scheduler maps to CosineToMinLR
register_scheduler('CosineAnnealingLR', CosineToMinLR)
register_scheduler('CosineToMinLR', CosineToMinLR)


def build_scheduler(optimizer: torch.optim.Optimizer, sched_opt: dict, steps: int) -> LRScheduler:
    """A scheduler from an option dict (``type`` + keyword arguments; ``sched_opt`` is consumed).

    ``CosineAnnealingLR`` / ``CosineToMinLR`` build :class:`CosineToMinLR` whose ``T_max``
    (default ``auto``) is ``steps``, the number of steps this optimizer will take; any other
    ``torch.optim.lr_scheduler`` class is built by name with the remaining options.
    """
    sched_type = sched_opt.pop('type')
    if sched_type in ('CosineAnnealingLR', 'CosineToMinLR'):
        t_max = sched_opt.pop('T_max', 'auto')
        t_max = steps if t_max in (None, 'auto') else int(t_max)
        return CosineToMinLR(optimizer, T_max=t_max, **sched_opt)
    cls = getattr(torch.optim.lr_scheduler, sched_type, None)
    if cls is None:
        raise ValueError(f'unknown scheduler type {sched_type!r} '
                         '(CosineAnnealingLR or any torch.optim.lr_scheduler class)')
    return cls(optimizer, **sched_opt)
