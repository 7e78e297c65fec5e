"""SegFormer's learning-rate schedule: linear warm-up, then polynomial decay (MMSegmentation's
``LinearLR`` + ``PolyLR``)."""
from __future__ import annotations

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler


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
