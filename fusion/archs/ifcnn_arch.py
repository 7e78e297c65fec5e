"""IFCNN (Zhang, Liu, Sun, Yan, Zhao, Zhang: "IFCNN: a general image fusion framework based on
convolutional neural network", Information Fusion 54, 2020), written from the paper and the tensor
names/shapes of the released MAX-rule checkpoint.

Each source (3 channels) goes through the same two feature layers: CONV1, ResNet-101's first 7x7
convolution (64 filters, stride 1, no bias, no activation; the input replicate-padded by 3) and
CONV2 (3x3, BN, ReLU, replicate padding); the features are fused elementwise (MAX for IR-visible in
the paper; SUM and MEAN are its other rules), then CONV3 (as CONV2) and CONV4 (1x1 to 3 channels,
with bias) reconstruct the image.
"""
from __future__ import annotations

import copy
from typing import Dict

import torch
import torch.nn.functional as F
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn

from fusion.archs.bn_fold import fold_bn
from fusion.archs.zoo_util import check_fits, load_torch_state


WEIGHTS_FILE = 'IFCNN-MAX.pth'
WEIGHTS_SOURCE = ('the Linfeng-Tang/VIF-Benchmark collection on GitHub (Checkpoint/IFCNN-MAX.pth, MIT) or the '
                  'authors\' repository uzeful/IFCNN (no licence file)')
FUSION_RULES = ('max', 'sum', 'mean')


class _ConvBlock(nn.Module):
    """Replicate pad 1, 3x3 conv without bias, BN, ReLU (``conv``, ``bn`` as in the checkpoint)."""

    def __init__(self, channels: int = 64) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, bias=False)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(F.pad(x, (1, 1, 1, 1), mode='replicate'))))


class _FoldedBlock(nn.Module):
    """:class:`_ConvBlock` with BN folded into the conv."""

    def __init__(self, block: _ConvBlock) -> None:
        super().__init__()
        self.conv = fold_bn(block.conv, block.bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(F.pad(x, (1, 1, 1, 1), mode='replicate')))


@ARCH_REGISTRY.register()
class IFCNNNet(nn.Module):
    """IFCNN with an elementwise fusion rule between CONV2 and CONV3.

    ``forward(vis, ir)``: B x 3 x H x W sources as the authors' test code feeds them (grey images
    repeated to RGB, /255, then their normalisation; mean 0 / std 1 for IR-visible) -> the raw
    3-channel reconstruction (before their de-normalisation, clamp and 8-bit save).

    Args:
        fuse_rule: 'max' (default, the IR-visible rule and the released IFCNN-MAX weights) | 'sum' |
            'mean' (the paper's other rules, trained separately by the authors).

    Deploy contract: :meth:`fuse_for_inference` (BN folded, both sources through the shared
    feature layers as one batch; within 1e-5), ``size_multiple`` 1, ``tile_margin`` 5 (3 + 1 + 1).
    """

    size_multiple = 1
    tile_margin = 5

    def __init__(self, fuse_rule: str = 'max', channels: int = 64) -> None:
        super().__init__()
        if fuse_rule not in FUSION_RULES:
            raise ValueError(f'IFCNNNet fuse_rule: {fuse_rule!r} is not one of {", ".join(FUSION_RULES)}')
        self.fuse_rule = fuse_rule
        self.conv1 = nn.Conv2d(3, channels, 7, bias=False)
        self.conv2 = _ConvBlock(channels)
        self.conv3 = _ConvBlock(channels)
        self.conv4 = nn.Conv2d(channels, 3, 1)

    def _fuse(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.fuse_rule == 'max':
            return torch.maximum(a, b)
        return a + b if self.fuse_rule == 'sum' else (a + b) / 2

    def forward(self, vis: torch.Tensor, ir: torch.Tensor) -> torch.Tensor:
        feats = [self.conv2(self.conv1(F.pad(x, (3, 3, 3, 3), mode='replicate'))) for x in (vis, ir)]
        return self.conv4(self.conv3(self._fuse(*feats)))

    def fuse_for_inference(self) -> nn.Module:
        return _FastIFCNN(self)

    @staticmethod
    def published_state_dict(path: str) -> Dict[str, torch.Tensor]:
        """The released ``IFCNN-MAX.pth`` (the file, or a folder holding it) as a state dict for
        this class (13 tensors; strict)."""
        state = load_torch_state(path, WEIGHTS_FILE, WEIGHTS_SOURCE)
        for block in ('conv2', 'conv3'):  # saved by a PyTorch before 0.4.1, which had no such buffer
            if f'{block}.bn.running_mean' in state:
                state.setdefault(f'{block}.bn.num_batches_tracked', torch.tensor(0))
        check_fits(state, IFCNNNet(), path, 'IFCNN', WEIGHTS_SOURCE)
        return state


class _FastIFCNN(nn.Module):
    """Deploy-time IFCNN: BN folded; the two sources share CONV1/CONV2, so they run as one batch."""

    def __init__(self, net: IFCNNNet) -> None:
        super().__init__()
        net = copy.deepcopy(net).eval()
        self.fuse_rule = net.fuse_rule
        self.conv1 = net.conv1
        self.conv2 = _FoldedBlock(net.conv2)
        self.conv3 = _FoldedBlock(net.conv3)
        self.conv4 = net.conv4
        self.requires_grad_(False)

    def forward(self, vis: torch.Tensor, ir: torch.Tensor) -> torch.Tensor:
        feats = self.conv2(self.conv1(F.pad(torch.cat([vis, ir]), (3, 3, 3, 3), mode='replicate')))
        a, b = feats.chunk(2)
        fused = torch.maximum(a, b) if self.fuse_rule == 'max' else a + b if self.fuse_rule == 'sum' else (a + b) / 2
        return self.conv4(self.conv3(fused))
