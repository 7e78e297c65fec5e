"""Contrastive semantic loss of SAGE ("L_cs", section 4.4 of the project's reference notes on the
official code, sage_reference.md).

The fused image is compared with a positive (the other network's output) and a negative (each
single source) in the feature space of a frozen, truncated SAM image encoder, patch by patch:

    L = sum_{m in (vis, ir)} sum_k  D(ref * m_k, out * m_k) / (D(src_m * m_k, out * m_k) + eps)
    D(a, b) = sum_{blocks} || IN(f(a)) - IN(f(b)) ||_2         (IN: instance norm, no affine)

"close to the reference, far from the single source, per modality".

Fixed vs official (``faithful: true`` restores the official behaviour where it changes numbers):

* bug 6: the encoder is loaded from a **standard** SAM checkpoint (``image_encoder.`` keys; an
  encoder-only dict also works) with a strict check; a checkpoint that does not fit is an error,
  never a silently random encoder. Without a checkpoint the documented ``fallback`` is used and
  logged as a warning (``random``: the same SAM architecture with fixed-seed random weights;
  ``gradient``: weight-free multi-scale intensity/Sobel features; ``error``: refuse).
* bug 7: encoder parameters have ``requires_grad=False`` (gradients still flow to the image);
  the wasted extra SAM pass is gone (anchors are encoded once, targets once under no_grad);
  ``add_pos_embed`` adds SAM's absolute position embedding (resampled to the token grid the way
  SAM's resize-to-1024 would place it); ``normalize_pixels`` applies SAM's pixel mean/std on
  0-255 RGB; the depth is any value (the official code asserted exactly 2).
* bug 8: ``binarize_masks`` turns the "masked intensity" patch channels into {0, 1} masks (the
  official product weighted pixels by source brightness); emptiness is checked **per sample**
  (officially per batch) and distances are per-sample Frobenius norms averaged over the
  samples that have the patch (officially one norm over the whole batch tensor).
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from basicsr.utils import get_root_logger
from basicsr.utils.registry import LOSS_REGISTRY
from torch import nn

from fusion.losses.fusion_losses import _SOBEL_X, _SOBEL_Y
from fusion.utils.sam_util import (SAM_ENCODER_CONFIGS, SAM_PIXEL_MEAN, SAM_PIXEL_STD, SAMCheckpointError,
                                   build_sam_image_encoder, load_sam_state_dict)


__all__ = ['SAMFeatureEncoder', 'GradientFeatureEncoder', 'SAMContrastiveLoss', 'SAM_ENCODER_CONFIGS']

FALLBACKS = ('random', 'gradient', 'error')


class SAMFeatureEncoder(nn.Module):
    """The first ``depth`` transformer blocks of a SAM image encoder, frozen.

    ``forward(x)`` takes B x 1 (grey, replicated) or B x 3 images in [0, 1] and returns the
    output of every kept block as B x C x H/16 x W/16 maps.

    Args:
        model_type: ``vit_b`` | ``vit_l`` | ``vit_h`` (architecture of the checkpoint).
        depth: blocks kept (2 in the official code).
        checkpoint: path of a SAM checkpoint (full ``Sam`` state dict or encoder-only); None =
            random weights drawn with ``seed`` (the caller logs this fallback).
        add_pos_embed / normalize_pixels: see the module docstring.
        resize_long_side: None keeps the input size (official); an int resizes the image so that
            its longer side has that many pixels first (1024 = SAM's own input scale; costly).
        encoder_overrides: changes to the architecture (embed_dim, num_heads, window_size,
            use_rel_pos, global_attn_indexes, mlp_ratio), e.g. a tiny random encoder for CPU
            runs. With a checkpoint they must still fit it (strict check).
    """

    def __init__(self, model_type: str = 'vit_b', depth: int = 2, checkpoint: Optional[str] = None,
                 add_pos_embed: bool = True, normalize_pixels: bool = True, resize_long_side: Optional[int] = None,
                 encoder_overrides: Optional[dict] = None, seed: int = 0) -> None:
        super().__init__()
        if model_type not in SAM_ENCODER_CONFIGS:
            raise ValueError(f'SAMFeatureEncoder: unknown model_type {model_type!r}; choose one of '
                             f'{tuple(SAM_ENCODER_CONFIGS)}')
        if not 1 <= depth <= SAM_ENCODER_CONFIGS[model_type]['depth']:
            raise ValueError(f'SAMFeatureEncoder: depth must be in 1..{SAM_ENCODER_CONFIGS[model_type]["depth"]} '
                             f'for {model_type}, got {depth}')
        self.depth = int(depth)
        self.add_pos_embed = bool(add_pos_embed)
        self.normalize_pixels = bool(normalize_pixels)
        self.resize_long_side = None if resize_long_side is None else int(resize_long_side)
        self.patch_size = 16
        self.img_size = 1024
        # a reproducible random encoder when there is no checkpoint
        encoder = build_sam_image_encoder(model_type, self.depth, seed=seed, **(encoder_overrides or {}))
        del encoder.neck  # only block outputs are compared
        self.patch_embed = encoder.patch_embed
        self.pos_embed = encoder.pos_embed
        self.blocks = encoder.blocks
        self.embed_dim = encoder.patch_embed.proj.out_channels
        if checkpoint is not None:
            self.load_checkpoint(checkpoint)
        self.register_buffer('pixel_mean', torch.tensor(SAM_PIXEL_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer('pixel_std', torch.tensor(SAM_PIXEL_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()
        self._pos_cache: Dict[tuple, torch.Tensor] = {}

    def load_checkpoint(self, path: str) -> None:
        """Strict load: every tensor of the kept layers must be in the checkpoint with the right
        shape; the only keys allowed to be left over are deeper blocks and the neck."""
        state = load_sam_state_dict(path, prefix='image_encoder.')
        own = self.state_dict()
        missing = [k for k in own if k not in state]
        leftover = [k for k in state if k not in own]
        unexpected = [k for k in leftover if not (k.startswith('neck.') or (
            k.startswith('blocks.') and k.split('.')[1].isdigit() and int(k.split('.')[1]) >= self.depth))]
        wrong_shape = [f'{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}' for k, v in own.items()
                       if k in state and state[k].shape != v.shape]
        if missing or unexpected or wrong_shape:
            raise SAMCheckpointError(
                f'{path}: does not fit the SAM image encoder (first {self.depth} blocks, embed_dim {self.embed_dim}): '
                f'{len(missing)} missing keys {missing[:4]}, {len(unexpected)} unexpected keys {unexpected[:4]}, '
                f'{len(wrong_shape)} shape mismatches {wrong_shape[:3]}. Is model_type right?')
        self.load_state_dict({k: state[k] for k in own}, strict=True)

    def train(self, mode: bool = True) -> 'SAMFeatureEncoder':
        return super().train(False)  # always frozen, always in eval mode

    def _pos_for_grid(self, h: int, w: int, long_side: int, like: torch.Tensor) -> torch.Tensor:
        """SAM's 64 x 64 position grid covers a 1024-pixel canvas onto which the image's long side
        is resized. At native resolution the image has ceil(L/16) tokens along that side, so the
        grid is resampled to that many tokens and the image's top-left part is taken."""
        grid = max(h, w, math.ceil(long_side / self.patch_size))
        key = (grid, h, w, like.device, like.dtype)
        if key not in self._pos_cache:
            pos = self.pos_embed.detach().permute(0, 3, 1, 2)
            if grid != pos.shape[-1]:
                pos = F.interpolate(pos, size=(grid, grid), mode='bilinear', align_corners=False,
                                    antialias=grid < pos.shape[-1])
            self._pos_cache[key] = pos[..., :h, :w].permute(0, 2, 3, 1).to(like)
        return self._pos_cache[key]

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f'SAMFeatureEncoder: expected B x 1 or B x 3 x H x W images, got {tuple(x.shape)}')
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if self.resize_long_side is not None and max(x.shape[-2:]) != self.resize_long_side:
            scale = self.resize_long_side / max(x.shape[-2:])
            size = (max(1, round(x.shape[-2] * scale)), max(1, round(x.shape[-1] * scale)))
            x = F.interpolate(x, size=size, mode='bilinear', align_corners=False)
        if min(x.shape[-2:]) < 2 * self.patch_size:
            raise ValueError(f'SAMFeatureEncoder: images must be at least {2 * self.patch_size} pixels on each side '
                             f'(instance norm needs >= 2 x 2 tokens of {self.patch_size} px), '
                             f'got {tuple(x.shape[-2:])}')
        if self.normalize_pixels:
            x = (x * 255.0 - self.pixel_mean) / self.pixel_std
        tokens = self.patch_embed(x)  # B x h x w x C
        if self.add_pos_embed:
            tokens = tokens + self._pos_for_grid(tokens.shape[1], tokens.shape[2], max(x.shape[-2:]), tokens)
        feats = []
        for block in self.blocks:
            tokens = block(tokens)
            feats.append(tokens.permute(0, 3, 1, 2))
        return feats


class GradientFeatureEncoder(nn.Module):
    """Weight-free fallback features: (intensity, |Sobel x|, |Sobel y|) average-pooled at each of
    ``scales`` (default 4 and 16 px, like two levels of a feature pyramid). No semantics, but
    the loss keeps its structure (closer to the reference than to each source, per patch)."""

    def __init__(self, scales: Sequence[int] = (4, 16)) -> None:
        super().__init__()
        self.scales = tuple(int(s) for s in scales)
        kernels = torch.tensor([_SOBEL_X, _SOBEL_Y]).unsqueeze(1)
        self.register_buffer('kernels', kernels, persistent=False)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f'GradientFeatureEncoder: expected B x 1 or B x 3 x H x W images, got {tuple(x.shape)}')
        if x.shape[1] == 3:
            x = x.mean(dim=1, keepdim=True)
        if min(x.shape[-2:]) < 2 * max(self.scales):
            raise ValueError(f'GradientFeatureEncoder: images must be at least {2 * max(self.scales)} pixels '
                             'on each side')
        grads = F.conv2d(x, self.kernels.to(x), padding=1).abs()
        maps = torch.cat([x, grads], dim=1)
        return [F.avg_pool2d(maps, s) for s in self.scales]


@LOSS_REGISTRY.register()
class SAMContrastiveLoss(nn.Module):
    """Contrastive semantic loss in SAM feature space on masked images (module docstring).

    Args:
        loss_weight: multiplies the sum of ratios (official: 1/3000).
        model_type, checkpoint, depth, resize_long_side, encoder_overrides: the SAM encoder
            (:class:`SAMFeatureEncoder`).
        fallback: what to use when ``checkpoint`` is empty: ``random`` | ``gradient`` | ``error``.
            Always logged as a warning. A checkpoint path that does not exist is an error.
        fallback_seed: seed of the random fallback encoder.
        faithful: default for the four switches below: False = fixed behaviour, True = official.
        add_pos_embed, normalize_pixels, binarize_masks, per_sample: override ``faithful`` one by one.
        eps: added to the negative distance (official 1e-7).
        encoder: a ready feature extractor ``x -> [B x C x h x w, ...]`` (programmatic use, tests);
            replaces the SAM encoder.

    ``forward(output, ref, vis_y, ir, vis_masks, ir_masks)``: B x 1 x H x W images, B x K x H x W
    patch channels per modality (binary masks or masked intensities). ``ref`` is the positive
    (detached here); ``vis_y`` / ``ir`` the negatives.
    """

    def __init__(self, loss_weight: float = 1.0 / 3000, model_type: str = 'vit_b', checkpoint: Optional[str] = None,
                 depth: int = 2, fallback: str = 'random', fallback_seed: int = 0, faithful: bool = False,
                 add_pos_embed: Optional[bool] = None, normalize_pixels: Optional[bool] = None,
                 binarize_masks: Optional[bool] = None, per_sample: Optional[bool] = None,
                 resize_long_side: Optional[int] = None, encoder_overrides: Optional[dict] = None,
                 gradient_scales: Sequence[int] = (4, 16), eps: float = 1e-7,
                 encoder: Optional[nn.Module] = None) -> None:
        super().__init__()
        if fallback not in FALLBACKS:
            raise ValueError(f'SAMContrastiveLoss: fallback must be one of {FALLBACKS}, got {fallback!r}')
        self.loss_weight = float(loss_weight)
        self.faithful = bool(faithful)
        self.binarize_masks = (not faithful) if binarize_masks is None else bool(binarize_masks)
        self.per_sample = (not faithful) if per_sample is None else bool(per_sample)
        self.eps = float(eps)
        add_pos_embed = (not faithful) if add_pos_embed is None else bool(add_pos_embed)
        normalize_pixels = (not faithful) if normalize_pixels is None else bool(normalize_pixels)
        logger = get_root_logger()
        if encoder is not None:
            self.encoder = encoder
            self.encoder_kind = 'custom'
        elif checkpoint:
            self.encoder = SAMFeatureEncoder(model_type, depth, checkpoint, add_pos_embed, normalize_pixels,
                                             resize_long_side, encoder_overrides)
            self.encoder_kind = f'sam_{model_type}'
            logger.info(f'SAMContrastiveLoss: SAM {model_type} encoder, first {depth} blocks, from {checkpoint} '
                        f'(pos_embed: {add_pos_embed}, pixel normalisation: {normalize_pixels}).')
        elif fallback == 'error':
            raise SAMCheckpointError('SAMContrastiveLoss: no SAM checkpoint given (sam.checkpoint / checkpoint) and '
                                     'fallback is "error". Give the path of e.g. sam_vit_b_01ec64.pth.')
        elif fallback == 'random':
            self.encoder = SAMFeatureEncoder(model_type, depth, None, add_pos_embed, normalize_pixels,
                                             resize_long_side, encoder_overrides, seed=fallback_seed)
            self.encoder_kind = f'random_{model_type}'
            logger.warning(f'SAMContrastiveLoss: NO SAM CHECKPOINT - fallback "random": a frozen {model_type} '
                           f'encoder ({depth} blocks, overrides {encoder_overrides or {}}) with random weights '
                           f'(seed {fallback_seed}). The loss keeps its form but carries no SAM semantics; '
                           'set sam.checkpoint for the paper\'s loss.')
        else:
            self.encoder = GradientFeatureEncoder(gradient_scales)
            self.encoder_kind = 'gradient'
            logger.warning('SAMContrastiveLoss: NO SAM CHECKPOINT - fallback "gradient": weight-free multi-scale '
                           f'intensity/Sobel features (scales {tuple(gradient_scales)}) replace SAM features; '
                           'set sam.checkpoint for the paper\'s loss.')
        self.encoder.requires_grad_(False)
        self.encoder.eval()

    def train(self, mode: bool = True) -> 'SAMContrastiveLoss':
        super().train(mode)
        self.encoder.eval()  # frozen feature extractor
        return self

    # ------------------------------------------------------------------------------------------
    def _weights(self, masks: torch.Tensor) -> torch.Tensor:
        return (masks > 0).to(masks.dtype) if self.binarize_masks else masks

    @staticmethod
    def _features(encoder: nn.Module, x: torch.Tensor) -> List[torch.Tensor]:
        feats = encoder(x)
        if torch.is_tensor(feats):
            feats = [feats]
        # normalised and compared in float32 (the encoder may run under autocast: train.amp)
        return [F.instance_norm(f.float()) for f in feats]

    def components(self, output: torch.Tensor, ref: torch.Tensor, vis_y: torch.Tensor, ir: torch.Tensor,
                   vis_masks: torch.Tensor, ir_masks: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Weighted loss per modality: ``{'vis': ..., 'ir': ...}``."""
        for name, t in (('output', output), ('ref', ref), ('vis_y', vis_y), ('ir', ir)):
            if t.dim() != 4 or t.shape[1] != 1 or t.shape != output.shape:
                raise ValueError(f'SAMContrastiveLoss: {name} must be B x 1 x H x W like output '
                                 f'{tuple(output.shape)}, got {tuple(t.shape)}')
        for name, m in (('vis_masks', vis_masks), ('ir_masks', ir_masks)):
            if m.dim() != 4 or m.shape[0] != output.shape[0] or m.shape[-2:] != output.shape[-2:]:
                raise ValueError(f'SAMContrastiveLoss: {name} must be B x K x H x W matching output '
                                 f'{tuple(output.shape)}, got {tuple(m.shape)}')
        if vis_masks.shape[1] != ir_masks.shape[1]:
            raise ValueError(f'SAMContrastiveLoss: vis_masks and ir_masks need the same number of patches, got '
                             f'{vis_masks.shape[1]} and {ir_masks.shape[1]}')
        b, k = vis_masks.shape[:2]
        h, w = output.shape[-2:]
        # items ordered (modality, patch, sample): weights 2 x K x B x H x W
        weights = torch.stack([self._weights(vis_masks), self._weights(ir_masks)]).transpose(1, 2)
        sources = torch.stack([vis_y, ir])[:, None]  # 2 x 1 x B x 1 x H x W
        weights = weights.unsqueeze(3)  # 2 x K x B x 1 x H x W
        ref = ref.detach()
        with torch.no_grad():
            positives = (ref[None, None] * weights).reshape(-1, 1, h, w)
            negatives = (sources * weights).reshape(-1, 1, h, w)
            target_feats = self._features(self.encoder, torch.cat([positives, negatives]))
        anchors = (output[None, None] * weights).reshape(-1, 1, h, w)
        anchor_feats = self._features(self.encoder, anchors)
        n = anchors.shape[0]
        dist_pos, dist_neg = 0, 0
        for fa, ft in zip(anchor_feats, target_feats):
            d_pos = (ft[:n] - fa).flatten(1)
            d_neg = (ft[n:] - fa).flatten(1)
            if self.per_sample:
                dist_pos = dist_pos + torch.linalg.vector_norm(d_pos, dim=1).view(2, k, b)
                dist_neg = dist_neg + torch.linalg.vector_norm(d_neg, dim=1).view(2, k, b)
            else:  # official: one Frobenius norm over the whole batch per (modality, patch)
                dist_pos = dist_pos + torch.linalg.vector_norm(d_pos.view(2, k, -1), dim=2)
                dist_neg = dist_neg + torch.linalg.vector_norm(d_neg.view(2, k, -1), dim=2)
        ratio = dist_pos / (dist_neg + self.eps)
        mass = weights.flatten(3).abs().sum(-1)  # 2 x K x B
        if self.per_sample:
            present = (mass > 0).to(ratio.dtype)  # a sample without this patch is skipped
            per_patch = (ratio * present).sum(-1) / present.sum(-1).clamp(min=1)
        else:  # official: a patch channel is skipped only when empty in the whole batch
            present = (mass.sum(-1) > 0).to(ratio.dtype)  # 2 x K
            per_patch = ratio * present
        totals = self.loss_weight * per_patch.sum(dim=1)
        return {'vis': totals[0], 'ir': totals[1]}

    def forward(self, output: torch.Tensor, ref: torch.Tensor, vis_y: torch.Tensor, ir: torch.Tensor,
                vis_masks: torch.Tensor, ir_masks: torch.Tensor) -> torch.Tensor:
        parts = self.components(output, ref, vis_y, ir, vis_masks, ir_masks)
        return parts['vis'] + parts['ir']
