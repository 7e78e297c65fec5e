"""The SAGE student ("sub-network"): a 0.136 M-parameter U-Net deployed at inference.

Layer names follow the official ``model_sub/model.py`` so the released checkpoint loads strictly
(module1..module5, adjust_channels4/5, final_decoder). Its deploy-time form (BN folded, fused
kernels) is :meth:`SAGEStudent.fuse_for_inference`, defined in ``sage_student_deploy.py``.
"""
from __future__ import annotations

import copy
from typing import Tuple

import torch
import torch.nn.functional as F
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn

from fusion.archs.sage_student_deploy import FastSAGEStudent


def conv_bn_act(in_ch: int, out_ch: int, kernel_size: int = 3, slope: float = 0.01) -> list:
    return [nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2),
            nn.BatchNorm2d(out_ch), nn.LeakyReLU(slope)]


def pad_to_min_size(tensors: Tuple[torch.Tensor, ...], min_size: int) -> Tuple[torch.Tensor, ...]:
    """Pads N x C x H x W tensors at the bottom/right (edge values repeated) to at least
    ``min_size`` px per side, so networks that pool work on images of any size (even 1 x 1)."""
    h, w = tensors[0].shape[-2:]
    pad = (0, max(0, min_size - w), 0, max(0, min_size - h))
    return tuple(F.pad(t, pad, mode='replicate') for t in tensors)


def conv_block(in_ch: int, dim: int, depth: int = 3) -> nn.Sequential:
    """``depth`` x [conv3x3, BN, LeakyReLU]; indices .0/.3/.6 conv, .1/.4/.7 BN as in the release."""
    layers = conv_bn_act(in_ch, dim)
    for _ in range(depth - 1):
        layers += conv_bn_act(dim, dim)
    return nn.Sequential(*layers)


@ARCH_REGISTRY.register()
class SAGEStudent(nn.Module):
    """Student network of SAGE.

    Args:
        dim: feature channels (32 in the paper).
        in_ch: input channels; the official order is (visible Y, IR).

    ``forward(vis_y, ir)`` takes B x 1 x H x W tensors in [0, 1] (any H, W) and returns the fused Y
    (Tanh, used directly as Y in [0, 1]) and the five features ``(x1..x5)`` at H, H/2, H/4, H/2, H
    that the feature-alignment loss pairs with the teacher's.

    Deployment contract (read by :class:`fusion.inferencer.FusionInferencer` and the base model by
    duck typing, so any arch can offer the same): :meth:`fuse_for_inference`, ``size_multiple``
    and ``tile_margin``.
    """

    # the student pools twice by 2: tiles that start and end on multiples of 4 see the same pooling
    # grid and the same exact 2x upsampling as the whole image
    size_multiple = 4
    # outputs this far (pixels) from a tile's cut edge equal the untiled ones: measured max error
    # 1e-4 at 24 px, 3e-7 at 32 px, 0 from 40 px (M3FD 00000)
    tile_margin = 32

    def __init__(self, dim: int = 32, in_ch: int = 2) -> None:
        super().__init__()
        self.module1 = conv_block(in_ch, dim)
        self.downsample1 = nn.MaxPool2d(2)
        self.module2 = conv_block(dim, dim)
        self.downsample2 = nn.MaxPool2d(2)
        self.module3 = conv_block(dim, dim)
        self.adjust_channels4 = nn.Sequential(*conv_bn_act(2 * dim, dim, kernel_size=1))
        self.module4 = conv_block(dim, dim)
        self.adjust_channels5 = nn.Sequential(*conv_bn_act(2 * dim, dim, kernel_size=1))
        self.module5 = conv_block(dim, dim)
        self.final_decoder = nn.Sequential(nn.Conv2d(dim, 1, 3, padding=1), nn.Tanh())

    def forward(self, vis_y: torch.Tensor, ir: torch.Tensor) -> Tuple[torch.Tensor, Tuple[torch.Tensor, ...]]:
        h, w = vis_y.shape[-2:]
        if h < self.size_multiple or w < self.size_multiple:
            # the two 2x poolings need 4 px per side: tiny images are padded and cropped back
            fused, feats = self.forward(*pad_to_min_size((vis_y, ir), self.size_multiple))
            return fused[..., :h, :w], feats
        x1 = self.module1(torch.cat([vis_y, ir], dim=1))
        x2 = self.module2(self.downsample1(x1))
        x3 = self.module3(self.downsample2(x2))
        up3 = F.interpolate(x3, size=x2.shape[-2:], mode='bilinear', align_corners=False)
        x4 = self.module4(self.adjust_channels4(torch.cat([up3, x2], dim=1)))
        up4 = F.interpolate(x4, size=x1.shape[-2:], mode='bilinear', align_corners=False)
        x5 = self.module5(self.adjust_channels5(torch.cat([up4, x1], dim=1)))
        return self.final_decoder(x5), (x1, x2, x3, x4, x5)

    def fuse_for_inference(self) -> nn.Module:
        """The deploy-time network: a :class:`~fusion.archs.sage_student_deploy.FastSAGEStudent`
        with BN folded (from an eval-mode copy; ``self`` is not modified). Its ``forward(vis_y, ir)``
        returns only the fused Y, equal to ``self.eval()(vis_y, ir)[0]`` within ~1e-6."""
        return FastSAGEStudent(copy.deepcopy(self).eval())
