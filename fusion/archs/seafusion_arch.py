"""SeAFusion (Tang, Yuan, Ma: "Image fusion in the loop of high-level vision tasks: a semantic-aware
real-time infrared and visible image fusion network", Information Fusion 82, 2022), written from the
paper and the tensor names/shapes of the released checkpoint.

Two encoders (visible Y, infrared) of one 3x3 conv + LeakyReLU(0.2) and two gradient residual dense
blocks (GRDB: a two-layer dense block squeezed by a 1x1 conv, plus a residual branch of the Sobel
gradient magnitude ``|Gx| + |Gy|`` through a 1x1 conv; summed, LeakyReLU(0.1)); the concatenated
features go through three conv + BN + LeakyReLU(0.2) layers and a conv + BN + tanh layer mapped onto
[0, 1] (``tanh / 2 + 0.5``). Zero padding throughout; any size works.
"""
from __future__ import annotations

import copy
from typing import Dict, List

import torch
import torch.nn.functional as F
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn

from fusion.archs.bn_fold import fold_bn
from fusion.archs.zoo_util import check_fits, load_torch_state


WEIGHTS_FILE = 'SeAFusion.pth'
WEIGHTS_SOURCE = 'the Linfeng-Tang/VIF-Benchmark collection on GitHub (Checkpoint/SeAFusion.pth, MIT)'


class _Conv(nn.Module):
    """conv (+ BN) + activation, named as in the checkpoint (``conv``, ``bn``)."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, bn: bool = False, act: str = 'leaky0.2') -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2)
        self.bn = nn.BatchNorm2d(cout) if bn else None
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return _activate(x, self.act)


def _activate(x: torch.Tensor, act: str) -> torch.Tensor:
    if act == 'leaky0.2':
        return F.leaky_relu(x, 0.2)
    if act == 'tanh01':
        return torch.tanh(x) / 2 + 0.5
    return x


class _Sobel(nn.Module):
    """Depthwise gradient magnitude ``|Gx| + |Gy|``, initialised to Sobel kernels (the authors' training
    updated them: the released kernels differ from Sobel by up to ~1e-2)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        kx = torch.tensor([[1., 0., -1.], [2., 0., -2.], [1., 0., -1.]])
        self.convx = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)
        self.convy = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)
        self.convx.weight.data.copy_(kx.expand(channels, 1, 3, 3))
        self.convy.weight.data.copy_(kx.t().expand(channels, 1, 3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convx(x).abs() + self.convy(x).abs()


class _Dense(nn.Module):
    """Two dense layers: each sees the concatenation of everything before it."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = _Conv(channels, channels)
        self.conv2 = _Conv(2 * channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([x, self.conv1(x)], 1)
        return torch.cat([x, self.conv2(x)], 1)


class _GRDB(nn.Module):
    """Gradient residual dense block: dense path + Sobel residual, summed, LeakyReLU(0.1)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.dense = _Dense(cin)
        self.convdown = _Conv(3 * cin, cout, kernel=1, act='none')
        self.sobelconv = _Sobel(cin)
        self.convup = _Conv(cin, cout, kernel=1, act='none')

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.convdown(self.dense(x)) + self.convup(self.sobelconv(x)), 0.1)


@ARCH_REGISTRY.register()
class SeAFusionNet(nn.Module):
    """SeAFusion's fusion network.

    ``forward(vis, ir)``: B x 1 x H x W visible Y and infrared in [0, 1] (the authors' test
    script feeds Y of its own RGB->YCrCb and the grey IR, both /255) -> the raw output in [0, 1]
    (their tanh / 2 + 0.5), before their save step (colour, clamp, min-max, 8 bits).

    Deploy contract: :meth:`fuse_for_inference` (BN folded; within 1e-5), ``size_multiple`` 1,
    ``tile_margin`` 9 (receptive-field radius: 1 + 2 x 2 + 4 layers of 3x3, zero padded).
    """

    size_multiple = 1
    tile_margin = 9

    def __init__(self, channels: List[int] = (16, 32, 48)) -> None:
        super().__init__()
        c0, c1, c2 = channels
        for branch in ('vis', 'inf'):
            setattr(self, f'{branch}_conv', _Conv(1, c0))
            setattr(self, f'{branch}_rgbd1', _GRDB(c0, c1))
            setattr(self, f'{branch}_rgbd2', _GRDB(c1, c2))
        self.decode4 = _Conv(2 * c2, c1 * 2, bn=True)
        self.decode3 = _Conv(c1 * 2, c1, bn=True)
        self.decode2 = _Conv(c1, c0, bn=True)
        self.decode1 = _Conv(c0, 1, bn=True, act='tanh01')

    def forward(self, vis: torch.Tensor, ir: torch.Tensor) -> torch.Tensor:
        v = self.vis_rgbd2(self.vis_rgbd1(self.vis_conv(vis[:, :1])))
        i = self.inf_rgbd2(self.inf_rgbd1(self.inf_conv(ir)))
        x = self.decode4(torch.cat([v, i], 1))
        return self.decode1(self.decode2(self.decode3(x)))

    def fuse_for_inference(self) -> nn.Module:
        """An eval-mode copy with each decoder BN folded into its conv (float64, rounded once)."""
        fast = copy.deepcopy(self).eval()
        for name in ('decode4', 'decode3', 'decode2', 'decode1'):
            layer = getattr(fast, name)
            layer.conv, layer.bn = fold_bn(layer.conv, layer.bn), None
        return fast.requires_grad_(False)

    @staticmethod
    def published_state_dict(path: str) -> Dict[str, torch.Tensor]:
        """The released ``SeAFusion.pth`` (the file, or a folder holding it) as a state dict for
        this class (72 tensors; strict)."""
        state = load_torch_state(path, WEIGHTS_FILE, WEIGHTS_SOURCE)
        check_fits(state, SeAFusionNet(), path, 'SeAFusion', WEIGHTS_SOURCE)
        return state
