"""SDNet (Zhang, Ma: "SDNet: A Versatile Squeeze-and-Decomposition Network for Real-Time Image
Fusion", International Journal of Computer Vision 129, 2021), its fusion network.

Written from the paper and the variables and ops of the authors' TensorFlow graph: two branches
(infrared, visible) of four convs of 16 channels, 5x5 then 3x3, the third fed [conv1, conv2] and
the fourth [conv1, conv2, conv3] of its branch (oldest first); all eight outputs, interleaved
``[ir1, vis1, ir2, vis2, ...]``, go through a 1x1 conv to one channel and tanh. Convolutions use
TF's ``SAME`` zero padding; activations LeakyReLU(0.2). The decomposition branch (layers 6-9)
serves training only and is not part of this network. Inputs and output are in [-1, 1]
(``(x - 127.5) / 127.5``, ``y * 127.5 + 127.5``).
"""
from __future__ import annotations

from typing import Dict

import torch
import torch.nn.functional as F
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn

from fusion.archs.tf_weights import ChannelsLastNet, load_tf_method_weights, register_layout


def _branch(side: str) -> Dict[str, tuple]:
    convs = {1: (1, 5), 2: (16, 3), 3: (32, 3), 4: (48, 3)}
    return {f'{side}.{i - 1}': (f'fusion_model/layer{i}_{side}', (cin, 16), k, (f'w{i}_{side}', f'b{i}_{side}'))
            for i, (cin, k) in convs.items()}


SDNET_LAYERS = {**_branch('ir'), **_branch('vi'),
                'fuse': ('fusion_model/layer5_fuse', (128, 1), 1, ('w5_fuse', 'b5_fuse'))}
SDNET_FILES = ('SDNet.model.index', 'SDNet.model.data-00000-of-00001')
SDNET_SOURCE = "the Linfeng-Tang/VIF-Benchmark collection on GitHub, Checkpoint/SDNet/ (the authors' TF1 model)"


register_layout('SDNet', SDNET_LAYERS)


@ARCH_REGISTRY.register()
class SDNetNet(nn.Module):
    """SDNet's fusion network: ``forward(vis, ir)`` on B x 1 x H x W images in [-1, 1] returns the
    fused image in [-1, 1] (tanh; before the authors' ``* 127.5 + 127.5`` and min-max save).

    Deploy contract: ``fuse_for_inference()`` (channels-last copy), ``tile_margin`` = 5 (a 5x5 and
    three 3x3 convolutions), ``size_multiple`` = 1.
    """

    size_multiple = 1
    tile_margin = 5
    min_size = 1

    def __init__(self, slope: float = 0.2) -> None:
        super().__init__()
        self.slope = slope
        for side in ('ir', 'vi'):
            self.add_module(side, nn.ModuleList([nn.Conv2d(cin, 16, k, padding=k // 2)
                                                 for cin, k in ((1, 5), (16, 3), (32, 3), (48, 3))]))
        self.fuse = nn.Conv2d(128, 1, 1)

    def _branch(self, convs: nn.ModuleList, x: torch.Tensor) -> list:
        feats = []
        for conv in convs:
            x = F.leaky_relu(conv(torch.cat(feats, 1) if len(feats) > 1 else x), self.slope)
            feats.append(x)
        return feats

    def forward(self, vis: torch.Tensor, ir: torch.Tensor) -> torch.Tensor:
        f_ir, f_vi = self._branch(self.ir, ir), self._branch(self.vi, vis)
        inter = [f for pair in zip(f_ir, f_vi) for f in pair]
        return torch.tanh(self.fuse(torch.cat(inter, 1)))

    def fuse_for_inference(self) -> nn.Module:
        """The deploy form: an eval-mode copy in channels-last layout (same results, faster on CPU)."""
        return ChannelsLastNet(self)

    @staticmethod
    def published_state_dict(path: str) -> Dict[str, torch.Tensor]:
        """The authors' TF1 checkpoint (prefix, file or folder of ``SDNet.model.*``) or a ``.pth``
        converted from it; the training-only decomposition layers are left out."""
        return load_tf_method_weights(path, SDNET_LAYERS, 'SDNet', SDNET_FILES, SDNET_SOURCE)
