"""Building blocks of the SAGE teacher: attention, spatial transformers and the SPA block.

Behaviour follows sections 1.2-1.4 of the project's reference notes on the official code
(sage_reference.md; the official ``model_main``), written from that description. Sub-module names
match the official state-dict names (``norm``, ``proj_in``, ``transformer_blocks.0.attn1.to_q``,
``ff.net.0.proj``, ...) so a state dict trained with the official code can be converted by renaming
prefixes only (see :func:`fusion.archs.sage_teacher_arch.convert_official_teacher_state_dict`).

Helper module: the file name deliberately does not end in ``_arch.py`` (the arch folder
auto-imports those); the networks that use these blocks are registered in
``sage_teacher_arch.py``.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn


# (keys, values) of source-image tokens handed from one transformer to the next, B x N x C each
Repository = Tuple[torch.Tensor, torch.Tensor]

ATTENTION_IMPLS = ('sdpa', 'plain')
SPA_ABLATIONS = (None, 'no_latent', 'no_kv', 'no_repository')


def multihead_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
                        impl: str = 'sdpa') -> torch.Tensor:
    """softmax(Q K^T / sqrt(d)) V over ``heads`` heads.

    Args:
        q: B x Nq x (heads*d) queries; k, v: B x Nk x (heads*d).
        heads: number of heads; the channel dimension is split into ``heads`` chunks of d.
        impl: ``'sdpa'`` uses ``torch.nn.functional.scaled_dot_product_attention`` (fused,
            memory-efficient kernels on CPU and CUDA: no Nq x Nk matrix is kept);
            ``'plain'`` is the textbook einsum/softmax formulation that materialises the
            attention matrix (the official code's way; kept as the test/benchmark reference).

    Returns:
        B x Nq x (heads*d).
    """
    b, nq, inner = q.shape
    if inner % heads:
        raise ValueError(f'attention: channel dim {inner} is not divisible by heads={heads}')
    d = inner // heads
    scale = d ** -0.5
    if impl == 'sdpa':
        # views, no copies: (B, N, h, d) -> (B, h, N, d)
        qh = q.view(b, nq, heads, d).transpose(1, 2)
        kh = k.view(b, k.shape[1], heads, d).transpose(1, 2)
        vh = v.view(b, v.shape[1], heads, d).transpose(1, 2)
        out = F.scaled_dot_product_attention(qh, kh, vh, scale=scale)
        return out.transpose(1, 2).reshape(b, nq, inner)
    if impl == 'plain':
        qh = q.reshape(b, nq, heads, d).permute(0, 2, 1, 3)
        kh = k.reshape(b, k.shape[1], heads, d).permute(0, 2, 1, 3)
        vh = v.reshape(b, v.shape[1], heads, d).permute(0, 2, 1, 3)
        sim = torch.einsum('bhid,bhjd->bhij', qh, kh) * scale
        attn = sim.softmax(dim=-1)
        out = torch.einsum('bhij,bhjd->bhid', attn, vh)
        return out.permute(0, 2, 1, 3).reshape(b, nq, inner)
    raise ValueError(f'attention: unknown implementation {impl!r}; expected one of {ATTENTION_IMPLS}')


class RepositoryAttention(nn.Module):
    """Multi-head attention whose keys/values come either from the (normed) query tokens or from
    a repository ``(ctx_k, ctx_v)``: then k = to_k(ctx_k), v = to_v(ctx_v) (official
    ``CrossAttention`` in its kv-returning form). Returns the output and the projected (k, v),
    which become the next repository."""

    def __init__(self, dim: int = 64, heads: int = 2, head_dim: int = 32, attention: str = 'sdpa') -> None:
        super().__init__()
        if attention not in ATTENTION_IMPLS:
            raise ValueError(f'RepositoryAttention: attention must be one of {ATTENTION_IMPLS}, got {attention!r}')
        inner = heads * head_dim
        self.heads = heads
        self.attention = attention
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        # index 1 would be Dropout(0) in the official code: a no-op, left out (keeps key to_out.0)
        self.to_out = nn.Sequential(nn.Linear(inner, dim))

    def forward(self, x: torch.Tensor, repository: Optional[Repository] = None
                ) -> Tuple[torch.Tensor, Repository]:
        ctx_k, ctx_v = (x, x) if repository is None else repository
        q, k, v = self.to_q(x), self.to_k(ctx_k), self.to_v(ctx_v)
        out = multihead_attention(q, k, v, self.heads, self.attention)
        return self.to_out(out), (k, v)


class GEGLU(nn.Module):
    """Linear to 2*hidden, split into value and gate, value * GELU(gate)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, hidden * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class GEGLUFeedForward(nn.Module):
    """GEGLU feed-forward (64 -> 2x256 -> 64 for dim 64, mult 4). ``net.1`` is the official
    Dropout(0), kept as Identity so the Linear stays at key ``net.2``."""

    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        hidden = dim * mult
        self.net = nn.Sequential(GEGLU(dim, hidden), nn.Identity(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class RepositoryTransformerBlock(nn.Module):
    """Pre-norm block: self-attention, attention on the repository (or on itself without one),
    GEGLU feed-forward; each with a residual. Returns the tokens and the repository that its
    second attention used (projected keys/values). Registration order (attn1, ff, attn2, norms)
    follows the official state dict."""

    def __init__(self, dim: int = 64, heads: int = 2, head_dim: int = 32, attention: str = 'sdpa') -> None:
        super().__init__()
        self.attn1 = RepositoryAttention(dim, heads, head_dim, attention)
        self.ff = GEGLUFeedForward(dim)
        self.attn2 = RepositoryAttention(dim, heads, head_dim, attention)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, repository: Optional[Repository] = None
                ) -> Tuple[torch.Tensor, Repository]:
        x = x + self.attn1(self.norm1(x))[0]
        out, kv = self.attn2(self.norm2(x), repository)
        x = x + out
        x = x + self.ff(self.norm3(x))
        return x, kv


class SpatialTransformer(nn.Module):
    """Transformer on a B x C x h x w feature map: GroupNorm(4 groups), 1x1 projection in,
    ``depth`` repository blocks on the h*w tokens, zero-initialised 1x1 projection out, residual.

    Because ``proj_out`` starts at zero, the module is the identity map at initialisation
    (its returned repository is already meaningful).

    ``forward(x, repository=None) -> (y, repository_out)``; with depth > 1 every block reads the
    incoming repository and the last block's keys/values are returned.
    """

    def __init__(self, channels: int = 64, heads: int = 2, head_dim: int = 32, depth: int = 1,
                 norm_groups: int = 4, attention: str = 'sdpa') -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f'SpatialTransformer: depth must be >= 1, got {depth}')
        inner = heads * head_dim
        self.norm = nn.GroupNorm(norm_groups, channels, eps=1e-6, affine=True)
        self.proj_in = nn.Conv2d(channels, inner, 1)
        self.transformer_blocks = nn.ModuleList(
            [RepositoryTransformerBlock(inner, heads, head_dim, attention) for _ in range(depth)])
        self.proj_out = nn.Conv2d(inner, channels, 1)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor, repository: Optional[Repository] = None
                ) -> Tuple[torch.Tensor, Repository]:
        b, _, h, w = x.shape
        tokens = self.proj_in(self.norm(x))
        tokens = tokens.flatten(2).transpose(1, 2)  # B x (h*w) x inner
        kv = repository
        for block in self.transformer_blocks:
            tokens, kv = block(tokens, repository)
        tokens = tokens.transpose(1, 2).reshape(b, -1, h, w)
        return self.proj_out(tokens) + x, kv


def conv_lrelu(in_ch: int, out_ch: int) -> nn.Sequential:
    """3x3 conv (padding 1) + LeakyReLU(0.01); indices .0 conv, .1 act as in the official code."""
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, padding=1), nn.LeakyReLU())


class SPABlock(nn.Module):
    """Semantic Persistent Attention block (official ``process_img_mask_transformers``).

    One instance is shared by all five scales of the teacher. Inputs are image features X and
    the visible/infrared patch features Mv, Mi (``channels`` each, same or nearly the same size,
    see :meth:`forward`). All attention runs on the 4x4 max-pooled maps.

    Full block (``ablation=None``), with R the persistent repository:
      1. X, Mv, Mi <- maxpool4; X1, Mv1, Mi1 are the persistent copies of the pooled inputs.
      2. Xa, R = img_transformer1(X)           R = keys/values of the source-image tokens
      3. Mva = mask_transformer1_vi(Mv, R); Mia = mask_transformer1_ir(Mi, R)
      4. Mv' = lrelu(middle_mask_vi[Mva, Mv1]) + Mva; Mi' = lrelu(middle_mask_ir[Mia, Mi1]) + Mia
      5. Z  = lrelu(middle_mask[Mi', Mv']) + Mi' + Mv' + Mva + Mia     (latent of both modalities)
      6. X' = lrelu(middle_img[Xa, X1]) + Xa
      7. Zb, R2 = mask_transformer2(Z, R)
      8. Xb = img_transformer2(X', R2)
      9. out = upsample(concat[Xb, X1, X', Zb]) to X's size; Mv', Mi' upsampled to their own
         input sizes are returned as the next scale's patch streams.

    Ablations (paper's SPA study; mapping argued in docs/teacher.md):
      * ``'no_latent'``: no Z (steps 5 and 7 removed; ``middle_mask`` and ``mask_transformer2``
        do not exist). img_transformer2 reads R itself, and the per-modality features Mv', Mi'
        enter the output directly: out = [Xb, X1, X', Mv', Mi'] (5*C channels).
      * ``'no_kv'``: the repository carries no keys/values: every transformer's second attention
        uses its own tokens (as img_transformer1 does). Channels unchanged.
      * ``'no_repository'``: neither the keys/values nor the persistent copies X1, Mv1, Mi1:
        middle convs take C instead of 2C channels and out = [Xb, X', Zb] (3*C channels).
    """

    def __init__(self, channels: int = 64, heads: int = 2, head_dim: int = 32, depth: int = 1,
                 ablation: Optional[str] = None, attention: str = 'sdpa', pool: int = 4) -> None:
        super().__init__()
        if ablation not in SPA_ABLATIONS:
            raise ValueError(f'SPABlock: ablation must be one of {SPA_ABLATIONS}, got {ablation!r}')
        self.ablation = ablation
        self.pool = pool
        self.use_latent = ablation != 'no_latent'
        self.use_kv = ablation not in ('no_kv', 'no_repository')
        self.use_persistent_copies = ablation != 'no_repository'
        c = channels

        def transformer() -> SpatialTransformer:
            return SpatialTransformer(c, heads, head_dim, depth, attention=attention)

        copy_ch = c if self.use_persistent_copies else 0
        # registration order = official state-dict order
        self.mask_transformer1_ir = transformer()
        self.mask_transformer1_vi = transformer()
        self.img_transformer1 = transformer()
        self.middle_img = conv_lrelu(c + copy_ch, c)
        self.middle_mask_ir = conv_lrelu(c + copy_ch, c)
        self.middle_mask_vi = conv_lrelu(c + copy_ch, c)
        if self.use_latent:
            self.middle_mask = conv_lrelu(2 * c, c)
            self.mask_transformer2 = transformer()
        self.img_transformer2 = transformer()

        parts = {None: 4, 'no_kv': 4, 'no_latent': 5, 'no_repository': 3}[ablation]
        self.out_channels = parts * c

    def forward(self, img: torch.Tensor, vis_mask: torch.Tensor, ir_mask: torch.Tensor,
                return_patches: bool = True
                ) -> Tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
        """Returns (features B x out_channels x H x W at img's size, Mv', Mi' at their input sizes).
        With ``return_patches=False`` (last scale, where the teacher discards them) the patch
        streams are not upsampled and None is returned in their place.

        The patch streams may be one or two pixels smaller than ``img`` (the teacher upsamples
        them by a fixed factor 2, as the official code does); their 4x4-pooled maps must match.
        """
        x = F.max_pool2d(img, self.pool)
        mv = F.max_pool2d(vis_mask, self.pool)
        mi = F.max_pool2d(ir_mask, self.pool)
        if not (x.shape[-2:] == mv.shape[-2:] == mi.shape[-2:]) or min(x.shape[-2:]) < 1:
            raise ValueError(
                f'SPABlock: pooled sizes must agree and be non-empty: image {tuple(img.shape[-2:])} -> '
                f'{tuple(x.shape[-2:])}, vis patches {tuple(vis_mask.shape[-2:])} -> {tuple(mv.shape[-2:])}, '
                f'ir patches {tuple(ir_mask.shape[-2:])} -> {tuple(mi.shape[-2:])}')

        xa, repo = self.img_transformer1(x)
        repo_in = repo if self.use_kv else None
        mva = self.mask_transformer1_vi(mv, repo_in)[0]
        mia = self.mask_transformer1_ir(mi, repo_in)[0]

        if self.use_persistent_copies:
            mi_p = self.middle_mask_ir(torch.cat([mia, mi], 1)) + mia
            mv_p = self.middle_mask_vi(torch.cat([mva, mv], 1)) + mva
            x_p = self.middle_img(torch.cat([xa, x], 1)) + xa
        else:
            mi_p = self.middle_mask_ir(mia) + mia
            mv_p = self.middle_mask_vi(mva) + mva
            x_p = self.middle_img(xa) + xa

        if self.use_latent:
            z = self.middle_mask(torch.cat([mi_p, mv_p], 1)) + mi_p + mv_p + mva + mia
            zb, repo2 = self.mask_transformer2(z, repo_in)
            xb = self.img_transformer2(x_p, repo2 if self.use_kv else None)[0]
        else:
            xb = self.img_transformer2(x_p, repo_in)[0]

        if self.ablation == 'no_latent':
            parts = [xb, x, x_p, mv_p, mi_p]
        elif self.ablation == 'no_repository':
            parts = [xb, x_p, zb]
        else:
            parts = [xb, x, x_p, zb]
        out = F.interpolate(torch.cat(parts, 1), size=img.shape[-2:], mode='bilinear', align_corners=False)
        if not return_patches:
            return out, None, None
        mv_out = F.interpolate(mv_p, size=vis_mask.shape[-2:], mode='bilinear', align_corners=False)
        mi_out = F.interpolate(mi_p, size=ir_mask.shape[-2:], mode='bilinear', align_corners=False)
        return out, mv_out, mi_out
