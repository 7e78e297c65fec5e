"""DenseFuse (Li and Wu, "DenseFuse: A Fusion Approach to Infrared and Visible Images", IEEE TIP
28(5), 2019), the grey-image network with its test-time fusion rules.

Written from the paper and the variable names, shapes and ops of the authors' TensorFlow graph
(their checkpoint's ``.meta``): an encoder (conv 1->16, then a dense block of three convs of 16
channels, each fed the concatenation of every earlier output, newest first), a fusion rule on
the 64 encoder channels, and a decoder of four convs 64->64->32->16->1. Every conv is 3x3 after
a 1-pixel reflection pad (``MirrorPad REFLECT`` + ``VALID``) with ReLU, except the last conv,
which has no activation. The authors feed pixel values in [0, 255] (``imread(mode='L')``, no
scaling) and save the raw output with ``scipy.misc.imsave``, which min-max rescales each image.
"""
from __future__ import annotations

from typing import Dict

import torch
import torch.nn.functional as F
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn

from fusion.archs.tf_weights import (ChannelsLastNet, ReflectConv3x3, check_min_size, load_tf_method_weights,
                                     register_layout)


# torch module -> (TF variable scope, (in, out channels)) in the authors' graph
DENSEFUSE_LAYERS = {
    'conv1': ('encoder/conv1_1', (1, 16)),
    'dense.0': ('encoder/dense_block_conv1', (16, 16)),
    'dense.1': ('encoder/dense_block_conv2', (32, 16)),
    'dense.2': ('encoder/dense_block_conv3', (48, 16)),
    'decoder.0': ('decoder/conv2_1', (64, 64)),
    'decoder.1': ('decoder/conv2_2', (64, 32)),
    'decoder.2': ('decoder/conv2_3', (32, 16)),
    'decoder.3': ('decoder/conv2_4', (16, 1)),
}
DENSEFUSE_FILES = ('DeseFuse.ckpt.index', 'DeseFuse.ckpt.data-00000-of-00001')
DENSEFUSE_SOURCE = ("the authors' hli1221/imagefusion_densefuse (models/), redistributed in "
                    'Linfeng-Tang/VIF-Benchmark Checkpoint/DenseFuse/')
FUSION_RULES = ('addition', 'l1_norm')


def l1_norm_rule(f1: torch.Tensor, f2: torch.Tensor, radius: int = 1) -> torch.Tensor:
    """The paper's l1-norm strategy: activity = l1 norm over channels, averaged over a
    (2r+1)^2 window; features weighted by each input's share of the activity."""
    def activity(f: torch.Tensor) -> torch.Tensor:
        a = f.abs().sum(dim=1, keepdim=True)
        k = 2 * radius + 1
        return F.avg_pool2d(F.pad(a, (radius,) * 4, mode='replicate'), k, stride=1)
    a1, a2 = activity(f1), activity(f2)
    total = a1 + a2
    w1 = torch.where(total > 0, a1 / total.clamp_min(1e-12), torch.full_like(total, 0.5))
    return w1 * f1 + (1 - w1) * f2


register_layout('DenseFuse', DENSEFUSE_LAYERS)


@ARCH_REGISTRY.register()
class DenseFuseNet(nn.Module):
    """DenseFuse: ``forward(vis, ir)`` on B x 1 x H x W grey images in the authors' range [0, 255]
    returns the raw decoder output (same range before the authors' per-image min-max save).

    Args:
        rule: fusion rule between encoder and decoder: ``addition`` (the sum of the two encodings,
            the paper's default and the published weights' rule) or ``l1_norm``.

    Deploy contract: ``fuse_for_inference()`` (channels-last copy), ``tile_margin``
    = 8 (eight 3x3 convolutions), ``size_multiple`` = 1, ``min_size`` = 2 (reflection padding).
    """

    size_multiple = 1
    tile_margin = 8
    min_size = 2

    def __init__(self, rule: str = 'addition') -> None:
        super().__init__()
        if rule not in FUSION_RULES:
            raise ValueError(f'DenseFuseNet: rule must be one of {", ".join(FUSION_RULES)}, got {rule!r}')
        self.rule = rule
        self.conv1 = ReflectConv3x3(1, 16)
        self.dense = nn.ModuleList([ReflectConv3x3(16 * (i + 1), 16) for i in range(3)])
        self.decoder = nn.ModuleList([ReflectConv3x3(cin, cout)
                                      for cin, cout in ((64, 64), (64, 32), (32, 16), (16, 1))])

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        for conv in self.dense:
            x = torch.cat([F.relu(conv(x)), x], dim=1)  # newest first, as the authors' graph concatenates
        return x

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.decoder[:-1]:
            x = F.relu(conv(x))
        return self.decoder[-1](x)

    def fuse(self, f_vis: torch.Tensor, f_ir: torch.Tensor) -> torch.Tensor:
        return f_vis + f_ir if self.rule == 'addition' else l1_norm_rule(f_ir, f_vis)

    def forward(self, vis: torch.Tensor, ir: torch.Tensor) -> torch.Tensor:
        check_min_size(vis, self.min_size, 'DenseFuse')
        return self.decode(self.fuse(self.encode(vis), self.encode(ir)))

    def fuse_for_inference(self) -> nn.Module:
        """The deploy form: an eval-mode copy in channels-last layout (same results, faster on CPU)."""
        return ChannelsLastNet(self)

    @staticmethod
    def published_state_dict(path: str) -> Dict[str, torch.Tensor]:
        """The authors' TF1 checkpoint (prefix, file or folder of ``DeseFuse.ckpt.*``) or a ``.pth``
        converted from it, as a state dict for this class."""
        return load_tf_method_weights(path, DENSEFUSE_LAYERS, 'DenseFuse', DENSEFUSE_FILES, DENSEFUSE_SOURCE)
