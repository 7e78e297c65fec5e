"""Folding an eval-mode BatchNorm into the convolution before it, for the deploy-time forms of the
networks (the SAGE student's fast path, the zoo's fast paths)."""
from __future__ import annotations

from typing import Tuple

import torch
from torch import nn


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> Tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of ``bn(conv(x))`` as one conv, with BN's running statistics (eval mode).

    Computed in float64 so the folded layer differs from the two-step one only by the rounding of
    the final values to the conv's dtype.
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


def fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A conv equal to ``bn(conv(x))`` of an eval-mode BN, with the conv's stride, padding, dilation,
    groups and padding mode (:func:`fold_conv_bn`)."""
    weight, bias = fold_conv_bn(conv, bn)
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode)
    fused = fused.to(device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        fused.weight.copy_(weight)
        fused.bias.copy_(bias)
    return fused
