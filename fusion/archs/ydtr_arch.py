"""YDTR (Tang, He, Liu: "YDTR: Infrared and Visible Image Fusion via Y-shape Dynamic Transformer",
IEEE TMM 2022), written from the paper and from the released weights' tensor names and shapes.

Y shape: each source goes through the same (shared-weight) branch, a dynamic transformer module
(DTRM): conv3x3 + BN + ReLU (replicate padding), a dynamic filter (DDF: the features multiplied by a
channel filter from global average pooling -> 1x1 conv 64->8 -> ReLU -> 1x1 conv 8->64, plus the
features multiplied by a one-channel spatial filter from conv3x3 64->8 -> conv3x3 8->1), then two
window-attention transformer blocks (8 heads, MLP ratio 4, shifted windows in the odd block). The two
branches are added, pass the DDF and the transformer blocks once more, and a 1x1 conv + Tanh gives the
fused image.

Tokens: the released network turns a B x C x H x W feature map into tokens by reinterpreting its
row-major buffer as B x H x W x C (a reshape, not a permute), so each 64-value "token" is 64
consecutive values of the NCHW buffer (a run of pixels of one channel), and the result is reinterpreted
back the same way. The weights were trained so; :func:`as_tokens` does the same, which is why YDTR's
output is not translation-invariant and tiles never equal the untiled image exactly. With the release's
window size 1, each token attends only to itself (the softmax over one key is 1).
"""
from __future__ import annotations

import copy
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn

from fusion.archs.bn_fold import fold_bn
from fusion.archs.zoo_util import check_fits, load_torch_state


WEIGHTS_FILE = 'model_10.pth'
WEIGHTS_SOURCE = 'the YDTR authors\' repository (github tthinking/YDTR, models/model_10.pth; no licence: never bundled)'
# defined in the release but never used by its forward: dropped when loading
UNUSED_PREFIXES = ('conv64.', 'conv.', 'patch_embed.')


def as_tokens(x: torch.Tensor) -> torch.Tensor:
    """B x C x H x W -> B x H x W x C by reinterpreting the row-major buffer, as the release does."""
    b, c, h, w = x.shape
    return x.reshape(b, h, w, c)


def from_tokens(t: torch.Tensor) -> torch.Tensor:
    b, h, w, c = t.shape
    return t.reshape(b, c, h, w)


class ConvBNReLU(nn.Module):
    """Replicate-pad + conv3x3 + BN + ReLU (``convInput``)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 3)
        self.bn = nn.BatchNorm2d(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(F.pad(x, (1, 1, 1, 1), mode='replicate'))))


class SpatialBranch(nn.Module):
    def __init__(self, dim: int, reduction: int = 8) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(dim, dim // reduction, 3, padding=1),
                                  nn.Conv2d(dim // reduction, 1, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class ChannelBranch(nn.Module):
    def __init__(self, dim: int, hidden: int = 8) -> None:
        super().__init__()
        self.fc = nn.Sequential(nn.Conv2d(dim, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean((2, 3), keepdim=True))


class DynamicFilter(nn.Module):
    """DDF: ``x * channel_filter(x) + x * spatial_filter(x)``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.spatial_branch = SpatialBranch(dim)
        self.channel_branch = ChannelBranch(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.channel_branch(x) + x * self.spatial_branch(x)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside ws x ws windows with a learned relative position bias."""

    def __init__(self, dim: int, window_size: int, num_heads: int) -> None:
        super().__init__()
        self.window_size = window_size
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        coords = torch.stack(torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing='ij'))
        rel = (coords.flatten(1)[:, :, None] - coords.flatten(1)[:, None, :]).permute(1, 2, 0) + (window_size - 1)
        self.register_buffer('relative_position_index', rel[..., 0] * (2 * window_size - 1) + rel[..., 1])
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: (windows, ws*ws, C); mask: (windows per image, N, N) of 0 / -100 or None."""
        bw, n, c = x.shape
        q, k, v = self.qkv(x).reshape(bw, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)].reshape(n, n, -1)
        attn = attn + bias.permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = (attn.reshape(bw // nw, nw, self.num_heads, n, n) + mask[None, :, None]).reshape(bw, -1, n, n)
        out = attn.softmax(-1) @ v
        return self.proj(out.transpose(1, 2).reshape(bw, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


def window_mask(h: int, w: int, ws: int, shift: int, device: torch.device) -> torch.Tensor:
    """Swin's mask for shifted windows: -100 between tokens that came from different regions."""
    region = torch.zeros(h, w, device=device)
    cuts = (slice(0, -ws), slice(-ws, -shift), slice(-shift, None))
    label = 0
    for hs in cuts:
        for wsl in cuts:
            region[hs, wsl] = label
            label += 1
    windows = region.reshape(h // ws, ws, w // ws, ws).permute(0, 2, 1, 3).reshape(-1, ws * ws)
    diff = windows[:, None, :] - windows[:, :, None]
    return torch.zeros_like(diff).masked_fill(diff != 0, -100.0)


class TransformerBlock(nn.Module):
    """Pre-norm window-attention block on the token grid (shift 0 or ws // 2)."""

    def __init__(self, dim: int, num_heads: int, window_size: int, shift: int, mlp_ratio: float) -> None:
        super().__init__()
        self.window_size = window_size
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """t: B x H x W x C tokens."""
        b, h, w, c = t.shape
        ws, shift = self.window_size, self.shift
        x = self.norm1(t)
        if shift:
            x = torch.roll(x, (-shift, -shift), (1, 2))
        windows = x.reshape(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws, c)
        mask = window_mask(h, w, ws, shift, t.device).to(t.dtype) if shift else None
        x = self.attn(windows, mask)
        x = x.reshape(b, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)
        if shift:
            x = torch.roll(x, (shift, shift), (1, 2))
        t = t + x
        return t + self.mlp(self.norm2(t))


class TransformerLayer(nn.Module):
    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int, mlp_ratio: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([
            TransformerBlock(dim, num_heads, window_size, 0 if i % 2 == 0 else window_size // 2, mlp_ratio)
            for i in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = as_tokens(x)
        for blk in self.blocks:
            t = blk(t)
        return from_tokens(t)


@ARCH_REGISTRY.register()
class YDTRNet(nn.Module):
    """YDTR: two shared-weight DTRM branches, their sum, one more DTRM, 1x1 conv + Tanh.

    Options (``network`` of the zoo entry):

    ===============  =======  ==================================================================
    option           default  meaning
    ===============  =======  ==================================================================
    ``dim``          64       feature channels (= the token length)
    ``depth``        2        transformer blocks per DTRM
    ``num_heads``    8        attention heads
    ``window_size``  1        attention window on the token grid (1 in the release); H and W
                              must be multiples of it
    ``mlp_ratio``    4.0      MLP hidden width / dim
    ===============  =======  ==================================================================

    ``forward(vis, ir)`` takes B x 1 x H x W grey images in [0, 1] (pixel / 255, as the authors' test
    feeds them) and returns the Tanh output (the authors' test writes it as ``uint8(out * 255)``). Any size
    from 1 x 1 px (H and W multiples of ``window_size``).
    """

    min_size = 1  # replicate padding and zero-padded convs work down to 1 x 1 px

    def __init__(self, dim: int = 64, depth: int = 2, num_heads: int = 8, window_size: int = 1,
                 mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'YDTRNet: dim ({dim}) must be a multiple of num_heads ({num_heads})')
        self.size_multiple = window_size
        self.convInput = ConvBNReLU(1, dim)
        self.DDF = DynamicFilter(dim)
        self.basicLayer = TransformerLayer(dim, depth, num_heads, window_size, mlp_ratio)
        self.convolutional_out = nn.Conv2d(dim, 1, 1)

    def check_size(self, x: torch.Tensor) -> None:
        h, w = x.shape[-2:]
        if h < self.min_size or w < self.min_size:
            raise ValueError(f'YDTR needs images of at least {self.min_size} x {self.min_size} px, got {h} x {w}')
        if h % self.size_multiple or w % self.size_multiple:
            raise ValueError(f'YDTR with window_size {self.size_multiple} needs H and W multiples of it, got {h} x {w}')

    def dtrm(self, x: torch.Tensor) -> torch.Tensor:
        return self.basicLayer(self.DDF(x))

    def forward(self, vis: torch.Tensor, ir: torch.Tensor) -> torch.Tensor:
        self.check_size(vis)
        merged = self.dtrm(self.convInput(ir)) + self.dtrm(self.convInput(vis))
        return torch.tanh(self.convolutional_out(self.dtrm(merged)))

    def fuse_for_inference(self) -> nn.Module:
        """BN folded into the input conv, both sources through the branch as one batch and, with
        window size 1, each attention reduced to its exact value ``proj(v)`` with the LayerNorm affine
        folded into the next linear layer (from an eval-mode copy; ``self`` is not modified)."""
        return FastYDTR(self)

    @staticmethod
    def published_state_dict(path: str) -> Dict[str, torch.Tensor]:
        """The authors' ``model_10.pth`` (a plain state dict) as a state dict of this class; the
        release's unused modules (``conv64``, ``conv``, ``patch_embed``) are dropped. ``path``: the
        file, or the folder holding it."""
        state = load_torch_state(path, WEIGHTS_FILE, WEIGHTS_SOURCE)
        state = {k: v for k, v in state.items() if not k.startswith(UNUSED_PREFIXES)}
        # the release's out conv sits in a wrapper (convolutional_out.conv); ours is the conv itself
        state = {k.replace('convolutional_out.conv.', 'convolutional_out.'): v for k, v in state.items()}
        check_fits(state, YDTRNet(), path, 'YDTR', WEIGHTS_SOURCE)
        return state


class FastYDTR(nn.Module):
    """Deploy-time YDTR, equal to the eval-mode :class:`YDTRNet` within float rounding."""

    def __init__(self, net: YDTRNet) -> None:
        super().__init__()
        net = copy.deepcopy(net).eval()
        self.net = net
        self.size_multiple = net.size_multiple
        self.conv_in = fold_bn(net.convInput.conv, net.convInput.bn)
        self.single_token = net.size_multiple == 1
        if self.single_token:
            self.blocks = nn.ModuleList([_FastBlock(b) for b in net.basicLayer.blocks])

    def _layer(self, x: torch.Tensor) -> torch.Tensor:
        if not self.single_token:
            return self.net.basicLayer(x)
        t = as_tokens(x)
        for blk in self.blocks:
            t = blk(t)
        return from_tokens(t)

    def forward(self, vis: torch.Tensor, ir: torch.Tensor) -> torch.Tensor:
        self.net.check_size(vis)
        b = vis.shape[0]
        x = F.relu(self.conv_in(F.pad(torch.cat([ir, vis], 0), (1, 1, 1, 1), mode='replicate')))
        x = self._layer(self.net.DDF(x))
        x = self._layer(self.net.DDF(x[:b] + x[b:]))
        return torch.tanh(self.net.convolutional_out(x))


class _FastBlock(nn.Module):
    """A window-size-1 block: attention = proj(v(norm1(t))) folded into one linear map; norm2's
    affine folded into fc1. Folded in float64, stored in the block's dtype."""

    def __init__(self, blk: TransformerBlock) -> None:
        super().__init__()
        c = blk.norm1.normalized_shape[0]
        self.eps1, self.eps2 = blk.norm1.eps, blk.norm2.eps
        wv = blk.attn.qkv.weight.detach().double()[2 * c:]
        bv = blk.attn.qkv.bias.detach().double()[2 * c:]
        wp, bp = blk.attn.proj.weight.detach().double(), blk.attn.proj.bias.detach().double()
        g1, b1 = blk.norm1.weight.detach().double(), blk.norm1.bias.detach().double()
        self.attn = _linear(wp @ wv * g1[None], wp @ (wv @ b1 + bv) + bp, blk.attn.proj.weight.dtype)
        g2, b2 = blk.norm2.weight.detach().double(), blk.norm2.bias.detach().double()
        w1, bias1 = blk.mlp.fc1.weight.detach().double(), blk.mlp.fc1.bias.detach().double()
        self.fc1 = _linear(w1 * g2[None], w1 @ b2 + bias1, blk.mlp.fc1.weight.dtype)
        self.fc2 = blk.mlp.fc2
        self.c = c

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        t = t + self.attn(F.layer_norm(t, (self.c,), eps=self.eps1))
        return t + self.fc2(F.gelu(self.fc1(F.layer_norm(t, (self.c,), eps=self.eps2))))


def _linear(weight: torch.Tensor, bias: torch.Tensor, dtype: torch.dtype) -> nn.Linear:
    lin = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        lin.weight.copy_(weight.to(dtype))
        lin.bias.copy_(bias.to(dtype))
    return lin.to(dtype).requires_grad_(False)
