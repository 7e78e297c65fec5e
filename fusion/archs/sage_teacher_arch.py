"""The SAGE teacher ("main network"): fuses visible Y and IR guided by SAM patches.

Structure as measured in section 1 of the project's reference notes on the official code
(sage_reference.md; official ``model_main/model.py``), written from that description: two image encoders, two patch
encoders per modality, five calls of one shared :class:`~fusion.archs.spa_modules.SPABlock` at
scales H, H/2, H/4, H/2, H with U-Net skips, two decoders, and five 1x1 heads that give the
32-channel features the student's are aligned with. The unused official
``compress_and_upsample`` conv is left out (2,639,505 parameters for ``mask_num: 4``).
See docs/teacher.md for options, ablations, performance and tiling.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn

from fusion.archs.spa_modules import ATTENTION_IMPLS, SPA_ABLATIONS, SPABlock, conv_lrelu


PATCH_MODES = ('masked_intensity', 'binary')
MIN_SIZE = 16  # a 4x4 pool at the H/4 scale must leave at least one pixel

# official top-level prefixes that live inside our shared ``spa`` module
_SPA_PREFIXES = ('mask_transformer1_ir', 'mask_transformer1_vi', 'img_transformer1', 'middle_img',
                 'middle_mask_ir', 'middle_mask_vi', 'middle_mask', 'mask_transformer2', 'img_transformer2')
_UNUSED_OFFICIAL_PREFIXES = ('compress_and_upsample',)

TeacherOutput = Tuple[torch.Tensor, Optional[Tuple[torch.Tensor, ...]]]


def _seq(*layers: nn.Module) -> nn.Sequential:
    return nn.Sequential(*layers)


@ARCH_REGISTRY.register()
class SAGETeacher(nn.Module):
    """SAGE teacher network.

    Args:
        mask_num: patch channels per modality (``use_mask_num``, 4 in the paper).
        patch_mode: ``'masked_intensity'``: each patch channel is the source image multiplied
            by one SAM mask (what the official dataset feeds); ``'binary'``: each channel is a
            {0,1} (or soft [0,1]) mask and the network itself multiplies it by the source
            (visible masks by ``vis_y``, IR masks by ``ir``), so both kinds of data produce the
            same network input and the same weights serve both.
        spa_ablation: None (full SPA) or ``'no_latent'`` / ``'no_kv'`` / ``'no_repository'``
            (paper's SPA ablations (a)/(b)/(c); see :class:`SPABlock`).
        pad_to_valid: the network needs even H, W >= 16. False: other sizes raise ValueError.
            True: inputs are padded at the bottom/right (reflect, or replicate when the input
            is too small to reflect) and outputs cropped back; features are cropped to the
            student's sizes (floor halving).
        attention: ``'sdpa'`` (fused scaled_dot_product_attention) or ``'plain'`` (einsum +
            softmax reference that materialises the N x N matrix; for tests and benchmarks).
        tile_size: None, an int or (h, w). When set and the input is larger, inference runs on
            overlapping tiles through ``fusion.utils.tiling.tiled_forward``; bounded memory,
            but attention only sees one tile (results differ slightly from a full pass) and the
            intermediate features are not assembled (None is returned for them).
        tile_overlap: overlap between tiles in pixels (blended).
        channels, heads, head_dim, transformer_depth: transformer width (64 = 2 x 32) and depth
            (1), the official values.

    ``forward(vis_y, ir, vis_patches, ir_patches)``: B x 1 x H x W, B x 1 x H x W,
    B x mask_num x H x W, B x mask_num x H x W, all on the model's device; returns
    ``(fused_y B x 1 x H x W, (f1, f2, f3, f4, f5))`` with 32-channel features at H, H/2, H/4,
    H/2, H, i.e. exactly the shapes of :class:`SAGEStudent`'s (x1..x5). The fused Y comes out of a
    LeakyReLU(0.01) (unbounded; trained towards [0, 1]), as in the official network.
    """

    def __init__(self, mask_num: int = 4, patch_mode: str = 'masked_intensity',
                 spa_ablation: Optional[str] = None, pad_to_valid: bool = False, attention: str = 'sdpa',
                 tile_size: Optional[Union[int, Sequence[int]]] = None, tile_overlap: int = 32,
                 channels: int = 64, heads: int = 2, head_dim: int = 32, transformer_depth: int = 1,
                 feature_channels: int = 32) -> None:
        super().__init__()
        if mask_num < 1:
            raise ValueError(f'SAGETeacher: mask_num must be >= 1, got {mask_num}')
        if patch_mode not in PATCH_MODES:
            raise ValueError(f'SAGETeacher: patch_mode must be one of {PATCH_MODES}, got {patch_mode!r}')
        if spa_ablation not in SPA_ABLATIONS:
            raise ValueError(f'SAGETeacher: spa_ablation must be one of {SPA_ABLATIONS}, got {spa_ablation!r}')
        if attention not in ATTENTION_IMPLS:
            raise ValueError(f'SAGETeacher: attention must be one of {ATTENTION_IMPLS}, got {attention!r}')
        self.mask_num = mask_num
        self.patch_mode = patch_mode
        self.spa_ablation = spa_ablation
        self.pad_to_valid = pad_to_valid
        self.attention = attention
        self.tile_size = self._parse_tile_size(tile_size)
        if tile_overlap < 0:
            raise ValueError(f'SAGETeacher: tile_overlap must be >= 0, got {tile_overlap}')
        self.tile_overlap = tile_overlap
        c = channels
        half = c // 2

        # registration order follows the official state dict (encoders, SPA, decoders, heads)
        self.encoder_img1 = _seq(nn.Conv2d(2, half // 2, 3, padding=1), nn.LeakyReLU(),
                                 nn.Conv2d(half // 2, half, 3, padding=1), nn.LeakyReLU())
        self.encoder_img2 = conv_lrelu(half, c)
        self.encoder_mask1_ir = _seq(nn.Conv2d(mask_num, half // 2, 3, padding=1), nn.LeakyReLU(),
                                     nn.Conv2d(half // 2, half, 3, padding=1), nn.LeakyReLU())
        self.encoder_mask2_ir = conv_lrelu(half, c)
        self.encoder_mask1_vi = _seq(nn.Conv2d(mask_num, half // 2, 3, padding=1), nn.LeakyReLU(),
                                     nn.Conv2d(half // 2, half, 3, padding=1), nn.LeakyReLU())
        # official quirk kept: the visible branch's second encoder has no activation
        self.encoder_mask2_vi = _seq(nn.Conv2d(half, c, 3, padding=1))
        self.spa = SPABlock(c, heads, head_dim, transformer_depth, ablation=spa_ablation, attention=attention)
        spa_ch = self.spa.out_channels
        self.img_decoder1 = _seq(nn.Conv2d(spa_ch + c, 4 * c, 3, padding=1), nn.LeakyReLU(),
                                 nn.Conv2d(4 * c, 2 * c, 3, padding=1), nn.LeakyReLU(),
                                 nn.Conv2d(2 * c, c, 3, padding=1), nn.LeakyReLU())
        self.img_decoder2 = _seq(nn.Conv2d(c + half, c, 3, padding=1), nn.LeakyReLU(),
                                 nn.Conv2d(c, half, 3, padding=1), nn.LeakyReLU(),
                                 nn.Conv2d(half, half // 2, 3, padding=1), nn.LeakyReLU(),
                                 nn.Conv2d(half // 2, 1, 3, padding=1), nn.LeakyReLU())
        # "downsample" 1/2 pool by 2 after the conv; 3/4 keep the size (official names kept)
        self.compress_and_downsample_img1 = _seq(nn.Conv2d(spa_ch, c, 3, padding=1), nn.MaxPool2d(2), nn.LeakyReLU())
        self.compress_and_downsample_img2 = _seq(nn.Conv2d(spa_ch, c, 3, padding=1), nn.MaxPool2d(2), nn.LeakyReLU())
        self.compress_and_downsample_img3 = conv_lrelu(spa_ch, c)
        self.compress_and_downsample_img4 = conv_lrelu(spa_ch, c)
        for k in range(1, 6):
            setattr(self, f'compress_to_32_{k}', nn.Conv2d(spa_ch, feature_channels, 1))

    # ------------------------------------------------------------------------------------------
    @staticmethod
    def _parse_tile_size(tile_size: Optional[Union[int, Sequence[int]]]) -> Optional[Tuple[int, int]]:
        if tile_size is None:
            return None
        th, tw = (tile_size, tile_size) if isinstance(tile_size, int) else tuple(tile_size)
        if th < MIN_SIZE or tw < MIN_SIZE:
            raise ValueError(f'SAGETeacher: tile_size must be >= {MIN_SIZE} on both sides, got {tile_size}')
        return int(th), int(tw)

    @staticmethod
    def size_is_valid(h: int, w: int) -> bool:
        """True if the network runs on an H x W input without padding."""
        return h >= MIN_SIZE and w >= MIN_SIZE and h % 2 == 0 and w % 2 == 0

    @staticmethod
    def valid_size(h: int, w: int) -> Tuple[int, int]:
        """Smallest valid size >= (h, w): even and at least 16."""
        return max(MIN_SIZE, h + h % 2), max(MIN_SIZE, w + w % 2)

    def _check_inputs(self, vis_y: torch.Tensor, ir: torch.Tensor, vis_patches: torch.Tensor,
                      ir_patches: torch.Tensor) -> None:
        named = (('vis_y', vis_y, 1), ('ir', ir, 1), ('vis_patches', vis_patches, self.mask_num),
                 ('ir_patches', ir_patches, self.mask_num))
        for name, t, ch in named:
            if not torch.is_tensor(t) or t.dim() != 4:
                got = tuple(t.shape) if torch.is_tensor(t) else type(t).__name__
                raise ValueError(f'SAGETeacher: {name} must be a B x C x H x W tensor, got {got}')
            if t.shape[1] != ch:
                raise ValueError(f'SAGETeacher: {name} must have {ch} channel(s) (mask_num={self.mask_num}), '
                                 f'got shape {tuple(t.shape)}')
        ref = vis_y.shape
        for name, t, _ in named[1:]:
            if t.shape[0] != ref[0] or t.shape[-2:] != ref[-2:]:
                raise ValueError(f'SAGETeacher: {name} shape {tuple(t.shape)} does not match vis_y {tuple(ref)} '
                                 '(same batch size and H x W needed)')

    # ------------------------------------------------------------------------------------------
    def forward(self, vis_y: torch.Tensor, ir: torch.Tensor, vis_patches: torch.Tensor,
                ir_patches: torch.Tensor) -> TeacherOutput:
        self._check_inputs(vis_y, ir, vis_patches, ir_patches)
        if self.patch_mode == 'binary':
            # the network is trained on masked source intensities: build them from the masks
            vis_patches = vis_patches * vis_y
            ir_patches = ir_patches * ir
        h, w = vis_y.shape[-2:]
        if self.tile_size is not None and (h > self.tile_size[0] or w > self.tile_size[1]):
            return self._forward_tiled(vis_y, ir, vis_patches, ir_patches)
        return self._forward_any_size(vis_y, ir, vis_patches, ir_patches, self.pad_to_valid)

    def _forward_any_size(self, vis_y: torch.Tensor, ir: torch.Tensor, vis_patches: torch.Tensor,
                          ir_patches: torch.Tensor, allow_pad: bool
                          ) -> Tuple[torch.Tensor, Tuple[torch.Tensor, ...]]:
        h, w = vis_y.shape[-2:]
        if self.size_is_valid(h, w):
            return self._forward_valid(vis_y, ir, vis_patches, ir_patches)
        if not allow_pad:
            vh, vw = self.valid_size(h, w)
            raise ValueError(f'SAGETeacher: input size {h}x{w} is not supported: H and W must be even and '
                             f'>= {MIN_SIZE} (the U-Net adds x2-upsampled maps to skips and pools by 4 at '
                             f'H/4). Crop/pad to e.g. {vh}x{vw}, or set pad_to_valid: true to pad and crop '
                             'back automatically.')
        ph, pw = self.valid_size(h, w)
        pad = (0, pw - w, 0, ph - h)
        mode = 'reflect' if (ph - h < h and pw - w < w) else 'replicate'
        padded = [F.pad(t, pad, mode=mode) for t in (vis_y, ir, vis_patches, ir_patches)]
        fused, feats = self._forward_valid(*padded)
        # crop to the sizes the student produces for an H x W input (MaxPool2d floors)
        h2, w2 = h // 2, w // 2
        h4, w4 = h2 // 2, w2 // 2
        sizes = ((h, w), (h2, w2), (h4, w4), (h2, w2), (h, w))
        feats = tuple(f[..., :sh, :sw] for f, (sh, sw) in zip(feats, sizes))
        return fused[..., :h, :w], feats

    def _forward_tiled(self, vis_y: torch.Tensor, ir: torch.Tensor, vis_patches: torch.Tensor,
                       ir_patches: torch.Tensor) -> TeacherOutput:
        from fusion.utils.tiling import tiled_forward  # imported here: only needed for tiling

        def fused_only(*tile: torch.Tensor) -> torch.Tensor:
            # a last tile of odd size is padded and cropped back
            return self._forward_any_size(*tile, allow_pad=True)[0]

        # tiles start on the 16-px grid of the whole image (2x2, 2x2 and 4x4 pooling), so every
        # pooling window of a tile is one of the whole image's
        fused = tiled_forward(fused_only, [vis_y, ir, vis_patches, ir_patches], self.tile_size,
                              self.tile_overlap, multiple=16)
        return fused, None

    def _forward_valid(self, vis_y: torch.Tensor, ir: torch.Tensor, vis_patches: torch.Tensor,
                       ir_patches: torch.Tensor) -> Tuple[torch.Tensor, Tuple[torch.Tensor, ...]]:
        img0 = self.encoder_img1(torch.cat([vis_y, ir], 1))          # 32 x H
        x = self.encoder_img2(img0)                                   # 64 x H
        skip0 = x
        mv = self.encoder_mask2_vi(self.encoder_mask1_vi(vis_patches))
        mi = self.encoder_mask2_ir(self.encoder_mask1_ir(ir_patches))

        f1, mv, mi = self.spa(x, mv, mi)                              # scale H
        x = self.compress_and_downsample_img1(f1)
        mv, mi = F.max_pool2d(mv, 2), F.max_pool2d(mi, 2)
        f2, mv, mi = self.spa(x, mv, mi)                              # scale H/2
        x = self.compress_and_downsample_img2(f2)
        mv, mi = F.max_pool2d(mv, 2), F.max_pool2d(mi, 2)
        f3, mv, mi = self.spa(x, mv, mi)                              # scale H/4

        up = F.interpolate(f3, size=f2.shape[-2:], mode='bilinear', align_corners=True)
        x = self.compress_and_downsample_img3(up + f2)
        # the patch streams are upsampled by a fixed factor 2 (official); when H/2 is odd they
        # end one pixel short of the image stream, which the SPA's 4x4 pooling absorbs
        mv, mi = (F.interpolate(t, scale_factor=2, mode='bilinear', align_corners=True) for t in (mv, mi))
        f4, mv, mi = self.spa(x, mv, mi)                              # scale H/2

        up = F.interpolate(f4, size=f1.shape[-2:], mode='bilinear', align_corners=True)
        x = self.compress_and_downsample_img4(up + f1)
        mv, mi = (F.interpolate(t, scale_factor=2, mode='bilinear', align_corners=True) for t in (mv, mi))
        f5 = self.spa(x, mv, mi, return_patches=False)[0]             # scale H

        d = self.img_decoder1(torch.cat([f5, skip0], 1))
        fused = self.img_decoder2(torch.cat([d, img0], 1))
        feats = tuple(getattr(self, f'compress_to_32_{k}')(f) for k, f in enumerate((f1, f2, f3, f4, f5), 1))
        return fused, feats


def convert_official_teacher_state_dict(state_dict: dict) -> dict:
    """Map an official ``model_main`` Network state dict to :class:`SAGETeacher` keys: the SPA
    modules move under ``spa.``, the unused ``compress_and_upsample`` is dropped, an optional
    ``module.`` prefix (DataParallel) is stripped. Load the result with ``strict=True``."""
    out = {}
    for key, value in state_dict.items():
        if key.startswith('module.'):
            key = key[len('module.'):]
        top = key.split('.', 1)[0]
        if top in _UNUSED_OFFICIAL_PREFIXES:
            continue
        out[f'spa.{key}' if top in _SPA_PREFIXES else key] = value
    return out
