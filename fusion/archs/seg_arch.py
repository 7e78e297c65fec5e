"""A small segmentation network for SAGE's segmentation loss on the teacher's fused image.

The official code used X-Decoder (Focal-L, text prompts; section 4.6 of the project's reference notes
on the official code, sage_reference.md),
which needs detectron2 and private paths and is not available here. This light U-Net is the
documented substitute: it sees the fused image (RGB from the fused Y and the visible chroma, or
the fused Y alone) and predicts per-pixel class logits, and is trained jointly with the teacher
(or loaded frozen from pretrained weights). Its gradient reaches the teacher through the image.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn


def _double_conv(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True),
        nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))


@ARCH_REGISTRY.register()
class FusionSegNet(nn.Module):
    """U-Net with ``levels`` down-sampling stages (channels ``base_ch * 2**i``), any input size.

    Args:
        in_ch: 3 for the fused RGB image, 1 for the fused Y.
        num_classes: output classes (MFNet: 9, id 0 = unlabelled).
        base_ch: channels of the first stage (16: about 0.47 M parameters with 3 levels).
        levels: number of 2x down-sampling stages.

    ``forward(img)``: B x in_ch x H x W in [0, 1] -> logits B x num_classes x H x W.
    """

    def __init__(self, in_ch: int = 3, num_classes: int = 9, base_ch: int = 16, levels: int = 3) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f'FusionSegNet: num_classes must be >= 2, got {num_classes}')
        if levels < 1:
            raise ValueError(f'FusionSegNet: levels must be >= 1, got {levels}')
        self.in_ch = in_ch
        self.num_classes = num_classes
        chs = [base_ch * 2 ** i for i in range(levels + 1)]
        self.stem = _double_conv(in_ch, chs[0])
        self.down = nn.ModuleList(_double_conv(chs[i], chs[i + 1]) for i in range(levels))
        self.up = nn.ModuleList(_double_conv(chs[i + 1] + chs[i], chs[i]) for i in reversed(range(levels)))
        self.head = nn.Conv2d(chs[0], num_classes, 1)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        if img.dim() != 4 or img.shape[1] != self.in_ch:
            raise ValueError(f'FusionSegNet: expected B x {self.in_ch} x H x W, got {tuple(img.shape)}')
        x = self.stem(img)
        skips = [x]
        for block in self.down:
            x = block(F.max_pool2d(x, 2, ceil_mode=True))
            skips.append(x)
        skips.pop()
        for block in self.up:
            skip = skips.pop()
            x = F.interpolate(x, size=skip.shape[-2:], mode='bilinear', align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        return self.head(x)
