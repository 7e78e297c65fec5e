"""Synchronised BatchNorm for DDP on every backend (gloo on CPU, NCCL on GPU).

With DDP each process normalises with the statistics of its own batch: ``N`` processes with
batch ``b`` each do *not* train like one process with batch ``N x b`` wherever a network has
BatchNorm (the student, the segmentation net). ``sync_bn: true`` replaces every ``BatchNorm2d``
of the trained networks by :class:`SyncBatchNorm2d`, whose training-mode statistics (and running
statistics) are those of the global batch, gradients included; then the run matches one process
with the global batch up to float rounding (``tests/test_distributed_training.py``).

Why not ``torch.nn.SyncBatchNorm``: in torch 2.x it refuses CPU tensors ("SyncBatchNorm expected
input tensor to be on GPU"), so it cannot run under gloo, and it is not a ``BatchNorm2d`` (the
student's deploy-time BN folding, checkpoints and EMA expect one). This class is a
``BatchNorm2d`` with the same parameters and buffers (state dicts are interchangeable) whose
statistics are all-reduced through ``torch.distributed`` (two small all-reduces per layer and
step: the sums, then the squared deviations, which is numerically safer than E[x^2] - E[x]^2).
In eval mode, without a process group, or with one process it is exactly ``BatchNorm2d``.
"""
from __future__ import annotations

import itertools

import torch
import torch.distributed as dist
from torch import nn


__all__ = ['SyncBatchNorm2d', 'convert_sync_batchnorm']


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose backward sums the gradients over ranks (each rank's loss depends on
    every rank's inputs through the shared statistics)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad)
        return grad


def _syncing() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class SyncBatchNorm2d(nn.BatchNorm2d):
    """``BatchNorm2d`` with statistics over the batches of all ranks in training mode."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and _syncing()):
            return super().forward(x)
        self._check_input_dim(x)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average, as BatchNorm2d does
                factor = 1.0 / float(self.num_batches_tracked)
        xf = x.float()
        local = torch.cat([xf.sum(dim=(0, 2, 3)), xf.new_tensor([x.numel() // x.shape[1]])])
        summed = _AllReduceSum.apply(local)
        count = summed[-1]
        mean = summed[:-1] / count
        centred = xf - mean.view(1, -1, 1, 1)
        var = _AllReduceSum.apply((centred * centred).sum(dim=(0, 2, 3))) / count
        if self.track_running_stats:
            with torch.no_grad():  # tensor arithmetic only: no host-device sync on GPU
                unbiased = var * (count / (count - 1.0).clamp(min=1.0))
                self.running_mean.mul_(1 - factor).add_(mean.detach().to(self.running_mean.dtype), alpha=factor)
                self.running_var.mul_(1 - factor).add_(unbiased.detach().to(self.running_var.dtype), alpha=factor)
        out = centred * torch.rsqrt(var + self.eps).view(1, -1, 1, 1)
        if self.affine:
            out = out * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return out.to(x.dtype)


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Returns ``module`` with every ``BatchNorm2d`` replaced by a :class:`SyncBatchNorm2d`
    holding the same parameters, buffers, ``requires_grad`` and train/eval mode."""
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, SyncBatchNorm2d):
        held = next(itertools.chain(module.parameters(), module.buffers()), None)
        new = SyncBatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats)
        if held is not None:
            new = new.to(held.device)
        new.load_state_dict(module.state_dict())
        if module.affine:
            new.weight.requires_grad_(module.weight.requires_grad)
            new.bias.requires_grad_(module.bias.requires_grad)
        new.train(module.training)
        return new
    for name, child in module.named_children():
        converted = convert_sync_batchnorm(child)
        if converted is not child:
            setattr(module, name, converted)
    return module
