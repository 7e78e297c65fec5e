"""DIDFuse (Zhao, Xu, Zhang, Liu, Zhang, Li: "DIDFuse: Deep Image Decomposition for Infrared and
Visible Image Fusion", IJCAI 2020), written from the paper and from the released weights' tensor
names and shapes.

An auto-encoder decomposes each source image into a background (low-frequency) and a detail
(high-frequency) feature map; at test time the two sources' features (background, detail and the two
skip features) are merged by one fusion rule and decoded into the fused image. The encoder's two
heads share the first two layers; the decoder merges background and detail and then takes the two
skip features back in, U-Net style.

Encoder (``cov1`` .. ``cov4``): reflect-pad + conv3x3 1->64 + BN + PReLU (skip feature 1), conv3x3
64->64 + BN + PReLU (skip feature 2), then two heads on skip feature 2, each conv3x3 + BN + Tanh:
background (``cov3``) and detail (``cov4``). Decoder (``cov5`` .. ``cov7``): conv3x3 on
[background, detail] 128->64 + BN + PReLU, conv3x3 on [that, skip 2] 128->64 + BN + PReLU,
reflect-pad + conv3x3 on [that, skip 1] 128->1 + BN + Sigmoid. The concatenation orders are the ones
with which the released weights reproduce the authors' published images (the others: < 15 dB).
"""
from __future__ import annotations

import copy
import os
from typing import Dict, Tuple

import torch
import torch.nn.functional as F
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn

from fusion.archs.bn_fold import fold_bn
from fusion.archs.zoo_util import check_fits, load_torch_state, resolve_weight_file


WEIGHTS_SOURCE = ('the DIDFuse authors\' repository (Zhaozixiang1228/IVIF-DIDFuse, Models/Encoder_weight_IJCAI.pkl '
                  'and Decoder_weight_IJCAI.pkl), redistributed as Encoder.pkl + Decoder.pkl by Linfeng-Tang/'
                  'VIF-Benchmark')
# file names as the collection publishes them, then as the authors do
ENCODER_NAMES = ('Encoder.pkl', 'Encoder_weight_IJCAI.pkl')
DECODER_NAMES = ('Decoder.pkl', 'Decoder_weight_IJCAI.pkl')
FUSION_RULES = ('sum', 'average', 'l1_norm')


def _conv_bn_act(in_ch: int, out_ch: int, act: nn.Module, reflect: bool) -> nn.Sequential:
    """[ReflectionPad2d(1),] conv3x3, BN, activation: indices as in the released weights (the conv is
    .1 after a reflection pad, .0 with zero padding)."""
    if reflect:
        return nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(in_ch, out_ch, 3), nn.BatchNorm2d(out_ch), act)
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, padding=1), nn.BatchNorm2d(out_ch), act)


def l1_norm_rule(a: torch.Tensor, b: torch.Tensor, window: int = 1) -> torch.Tensor:
    """The paper's l1-norm rule: activity = l1 norm over channels of |feature|, averaged over a
    (2 window + 1)^2 box (zero padded); the sources are weighted by their share of the activity."""
    k = 2 * window + 1
    act_a = F.avg_pool2d(a.abs().sum(1, keepdim=True), k, stride=1, padding=window, count_include_pad=True)
    act_b = F.avg_pool2d(b.abs().sum(1, keepdim=True), k, stride=1, padding=window, count_include_pad=True)
    total = act_a + act_b
    return (act_a / total) * a + (act_b / total) * b


def merge(a: torch.Tensor, b: torch.Tensor, rule: str) -> torch.Tensor:
    if rule == 'sum':
        return a + b
    if rule == 'average':
        return (a + b) / 2
    return l1_norm_rule(a, b)


class DIDFuseEncoder(nn.Module):
    def __init__(self, dim: int = 64) -> None:
        super().__init__()
        self.cov1 = _conv_bn_act(1, dim, nn.PReLU(), reflect=True)
        self.cov2 = _conv_bn_act(dim, dim, nn.PReLU(), reflect=False)
        self.cov3 = _conv_bn_act(dim, dim, nn.Tanh(), reflect=False)
        self.cov4 = _conv_bn_act(dim, dim, nn.Tanh(), reflect=False)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (skip 1, skip 2, background, detail)."""
        f1 = self.cov1(x)
        f2 = self.cov2(f1)
        return f1, f2, self.cov3(f2), self.cov4(f2)


class DIDFuseDecoder(nn.Module):
    def __init__(self, dim: int = 64) -> None:
        super().__init__()
        self.cov5 = _conv_bn_act(2 * dim, dim, nn.PReLU(), reflect=False)
        self.cov6 = _conv_bn_act(2 * dim, dim, nn.PReLU(), reflect=False)
        self.cov7 = _conv_bn_act(2 * dim, 1, nn.Sigmoid(), reflect=True)

    def forward(self, f1: torch.Tensor, f2: torch.Tensor, base: torch.Tensor, detail: torch.Tensor) -> torch.Tensor:
        x = self.cov5(torch.cat([base, detail], 1))
        x = self.cov6(torch.cat([x, f2], 1))
        return self.cov7(torch.cat([x, f1], 1))


@ARCH_REGISTRY.register()
class DIDFuseNet(nn.Module):
    """DIDFuse: encoder, test-time fusion rule, decoder.

    Options (``network`` of the zoo entry):

    ====================  =========  ===========================================================
    option                default    meaning
    ====================  =========  ===========================================================
    ``fusion_rule``       ``sum``    how the two sources' features are merged at test time (the
                                     paper's three rules): ``sum`` (the authors' test script
                                     default), ``average``, ``l1_norm`` (activity-weighted)
    ``dim``               64         feature channels (64 in the release)
    ====================  =========  ===========================================================

    ``forward(vis, ir)`` takes B x 1 x H x W grey images in [0, 1] (pixel / 255, as the authors' test
    feeds them) and returns the decoder's Sigmoid output in [0, 1], before quantisation. Any size from
    2 x 2 up (the reflection padding needs 2 px per side).
    """

    # convolutions only (3 per encoder path, 3 in the decoder) plus the 3x3 box of the l1 rule: an
    # output pixel depends on inputs at most 7 px away, so 8 px from a cut edge a tile is exact
    tile_margin = 8
    min_size = 2

    def __init__(self, fusion_rule: str = 'sum', dim: int = 64) -> None:
        super().__init__()
        if fusion_rule not in FUSION_RULES:
            raise ValueError(f'DIDFuseNet: fusion_rule must be one of {", ".join(FUSION_RULES)}, got {fusion_rule!r}')
        self.fusion_rule = fusion_rule
        self.encoder = DIDFuseEncoder(dim)
        self.decoder = DIDFuseDecoder(dim)

    def forward(self, vis: torch.Tensor, ir: torch.Tensor) -> torch.Tensor:
        h, w = vis.shape[-2:]
        if h < self.min_size or w < self.min_size:
            raise ValueError(f'DIDFuse needs images of at least {self.min_size} x {self.min_size} px, got {h} x {w}')
        feats_ir = self.encoder(ir)
        feats_vis = self.encoder(vis)
        merged = [merge(i, v, self.fusion_rule) for i, v in zip(feats_ir, feats_vis)]
        return self.decoder(*merged)

    def fuse_for_inference(self) -> nn.Module:
        """BN folded into the convolutions and both sources through the encoder as one batch (from an
        eval-mode copy; ``self`` is not modified)."""
        return FastDIDFuse(self)

    @staticmethod
    def published_state_dict(path: str) -> Dict[str, torch.Tensor]:
        """The authors' ``Encoder.pkl`` + ``Decoder.pkl`` (each ``{'weight': state_dict, 'epoch'}``) as
        one state dict of this class. ``path``: the folder holding both, or either file (the other is
        taken from beside it); the authors' names ``*_weight_IJCAI.pkl`` work too. Read with
        ``weights_only=True``: the files hold only tensors, a dict and an int."""
        folder = path if os.path.isdir(path) else os.path.dirname(path) or '.'
        state = {}
        for part, names in (('encoder', ENCODER_NAMES), ('decoder', DECODER_NAMES)):
            name = next((n for n in names if os.path.isfile(os.path.join(folder, n))), names[0])
            file = resolve_weight_file(folder, name, WEIGHTS_SOURCE)
            for key, value in load_torch_state(file, name, WEIGHTS_SOURCE).items():
                # released keys repeat the block name: cov1.cov1.1.weight -> encoder.cov1.1.weight
                block, _, rest = key.partition('.')
                if rest.startswith(block + '.'):
                    rest = rest[len(block) + 1:]
                state[f'{part}.{block}.{rest}'] = value
        check_fits(state, DIDFuseNet(), path, 'DIDFuse', WEIGHTS_SOURCE)
        return state


class FastDIDFuse(nn.Module):
    """Deploy-time DIDFuse: BN folded into each convolution, the two sources encoded as one batch.
    Equal to the eval-mode :class:`DIDFuseNet` within float rounding."""

    def __init__(self, net: DIDFuseNet) -> None:
        super().__init__()
        net = copy.deepcopy(net).eval()
        self.fusion_rule = net.fusion_rule
        self.tile_margin = net.tile_margin
        self.min_size = net.min_size
        for name in ('cov1', 'cov2', 'cov3', 'cov4'):
            setattr(self, name, _fold_block(getattr(net.encoder, name)))
        for name in ('cov5', 'cov6', 'cov7'):
            setattr(self, name, _fold_block(getattr(net.decoder, name)))

    def forward(self, vis: torch.Tensor, ir: torch.Tensor) -> torch.Tensor:
        h, w = vis.shape[-2:]
        if h < self.min_size or w < self.min_size:
            raise ValueError(f'DIDFuse needs images of at least {self.min_size} x {self.min_size} px, got {h} x {w}')
        b = vis.shape[0]
        f1 = self.cov1(torch.cat([ir, vis], 0))
        f2 = self.cov2(f1)
        feats = (f1, f2, self.cov3(f2), self.cov4(f2))
        f1, f2, base, detail = [merge(f[:b], f[b:], self.fusion_rule) for f in feats]
        x = self.cov5(torch.cat([base, detail], 1))
        x = self.cov6(torch.cat([x, f2], 1))
        return self.cov7(torch.cat([x, f1], 1))


def _fold_block(block: nn.Sequential) -> nn.Sequential:
    """[pad,] conv, BN, act -> [pad,] conv with BN folded in, act."""
    layers = list(block)
    i = next(k for k, m in enumerate(layers) if isinstance(m, nn.Conv2d))
    return nn.Sequential(*layers[:i], fold_bn(layers[i], layers[i + 1]), *layers[i + 2:])
