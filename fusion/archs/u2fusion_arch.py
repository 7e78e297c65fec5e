"""U2Fusion (Xu, Ma, Jiang, Guo, Ling, "U2Fusion: A Unified Unsupervised Image Fusion Network",
IEEE TPAMI 44(1), 2022; online 2020), the fusion network (its DenseNet generator).

Written from the paper and the variable names, shapes and ops of the authors' TensorFlow graph
(their checkpoint's ``.meta``): the two grey sources concatenated (2 channels), a conv to 44
channels, a dense block of five convs of 44 channels (each fed the concatenation of every earlier
output, newest first: 264 channels at the end), and four convs 264->128->64->32->1. Every conv is
3x3 after a 1-pixel reflection pad (``MirrorPad REFLECT`` + ``VALID``); activations are
LeakyReLU(0.2) (``Maximum(x, 0.2 x)``) except the last, ``tanh(x) / 2 + 0.5``, an output in
[0, 1]. The authors feed pixels / 255 and save with ``scipy.misc.imsave`` (per-image min-max).
"""
from __future__ import annotations

from typing import Dict, Sequence

import torch
import torch.nn.functional as F
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn

from fusion.archs.tf_weights import (ChannelsLastNet, ReflectConv3x3, check_min_size, load_tf_method_weights,
                                     register_layout)


GROWTH = 44
U2FUSION_LAYERS = {
    'conv1': ('Generator/encoder/conv1_1', (2, GROWTH)),
    **{f'dense.{i}': (f'Generator/encoder/dense_block_conv{i + 1}', (GROWTH * (i + 1), GROWTH)) for i in range(5)},
    'decoder.0': ('Generator_1/decoder/conv2_1', (6 * GROWTH, 128)),
    'decoder.1': ('Generator_1/decoder/conv2_2', (128, 64)),
    'decoder.2': ('Generator_1/decoder/conv2_3', (64, 32)),
    'decoder.3': ('Generator_1/decoder/conv2_4', (32, 1)),
}
U2FUSION_FILES = ('model.ckpt.index', 'model.ckpt.data-00000-of-00001')
U2FUSION_SOURCE = ("the authors' hanna-xu/U2Fusion (model/), redistributed in "
                   'Linfeng-Tang/VIF-Benchmark Checkpoint/U2Fusion/')
SOURCES = ('vis', 'ir')


register_layout('U2Fusion', U2FUSION_LAYERS)


@ARCH_REGISTRY.register()
class U2FusionNet(nn.Module):
    """U2Fusion: ``forward(vis, ir)`` on B x 1 x H x W images in [0, 1] returns the fused image in
    [0, 1] (``tanh / 2 + 0.5``, before the authors' per-image min-max save).

    Args:
        source_order: which image is the graph's first input (``SOURCE1``) and which its second.
            The authors' test script feeds the visible image first (``['vis', 'ir']``).
        slope: LeakyReLU slope (0.2 in the authors' graph).

    Deploy contract: ``fuse_for_inference()`` (channels-last copy), ``tile_margin`` = 10 (ten 3x3 convolutions),
    ``size_multiple`` = 1, ``min_size`` = 2 (reflection padding).
    """

    size_multiple = 1
    tile_margin = 10
    min_size = 2

    def __init__(self, source_order: Sequence[str] = ('vis', 'ir'), slope: float = 0.2) -> None:
        super().__init__()
        order = tuple(source_order)
        if sorted(order) != sorted(SOURCES):
            raise ValueError(f'U2FusionNet: source_order must order vis and ir, got {list(order)}')
        self.source_order = order
        self.slope = slope
        self.conv1 = ReflectConv3x3(2, GROWTH)
        self.dense = nn.ModuleList([ReflectConv3x3(GROWTH * (i + 1), GROWTH) for i in range(5)])
        self.decoder = nn.ModuleList([ReflectConv3x3(cin, cout)
                                      for cin, cout in ((6 * GROWTH, 128), (128, 64), (64, 32), (32, 1))])

    def _inputs(self, vis: torch.Tensor, ir: torch.Tensor) -> torch.Tensor:
        check_min_size(vis, self.min_size, 'U2Fusion')
        images = {'vis': vis, 'ir': ir}
        return torch.cat([images[name] for name in self.source_order], dim=1)

    def _decode(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.decoder[:-1]:
            x = F.leaky_relu(conv(x), self.slope)
        return torch.tanh(self.decoder[-1](x)) / 2 + 0.5

    def forward(self, vis: torch.Tensor, ir: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.conv1(self._inputs(vis, ir)), self.slope)
        for conv in self.dense:
            x = torch.cat([F.leaky_relu(conv(x), self.slope), x], dim=1)  # newest first, as in the graph
        return self._decode(x)

    def fuse_for_inference(self) -> nn.Module:
        """The deploy form: an eval-mode copy in channels-last layout (same results, faster on CPU)."""
        return ChannelsLastNet(self)

    @staticmethod
    def published_state_dict(path: str) -> Dict[str, torch.Tensor]:
        """The authors' TF1 checkpoint (prefix, file or folder of ``model.ckpt.*``) or a ``.pth``
        converted from it, as a state dict for this class."""
        return load_tf_method_weights(path, U2FUSION_LAYERS, 'U2Fusion', U2FUSION_FILES, U2FUSION_SOURCE)
