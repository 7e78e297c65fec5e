"""The one place that builds and loads Segment Anything (mask generation and the contrastive
semantic loss both come here).

No weights can be downloaded at run time: a checkpoint is a local path from the options. A missing
path is an error with a clear message; callers that have a weight-free fallback decide about it
themselves and log it (see ``fusion.data`` patch sources and ``ContrastiveSemanticLoss``).
"""
from __future__ import annotations

import contextlib
import os.path as osp
from functools import partial
from typing import Dict, Iterator, Optional, Union

import torch

from fusion.utils.file_util import file_sha256  # noqa: F401  (re-exported: mask caches name weights by it)


SAM_MODEL_TYPES = ('vit_b', 'vit_l', 'vit_h')
# segment_anything's build_sam_vit_{b,l,h} image-encoder settings and pixel statistics
SAM_ENCODER_CONFIGS = {
    'vit_b': dict(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11)),
    'vit_l': dict(embed_dim=1024, depth=24, num_heads=16, global_attn_indexes=(5, 11, 17, 23)),
    'vit_h': dict(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31)),
}
SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)
SAM_ENCODER_OVERRIDES = ('embed_dim', 'num_heads', 'window_size', 'use_rel_pos', 'global_attn_indexes', 'mlp_ratio')


@contextlib.contextmanager
def seeded_init(seed: Optional[int]) -> Iterator[None]:
    """Random weights drawn from ``seed`` without disturbing the caller's global RNG
    (``None``: the global RNG as it is)."""
    if seed is None:
        yield
        return
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.random.set_rng_state(state)


class SAMCheckpointError(FileNotFoundError):
    """The SAM checkpoint is missing or does not fit the requested model."""


def load_sam_state_dict(path: str, prefix: str = '') -> Dict[str, torch.Tensor]:
    """Loads a SAM checkpoint on the CPU (``build_sam`` upstream omits ``map_location``).

    Accepts a full SAM state dict, one nested under ``model``/``state_dict``, or an encoder-only
    dict (as the official SAGE code used). With ``prefix='image_encoder.'`` only those keys are
    returned, with the prefix stripped; encoder-only dicts are returned as they are.
    """
    if not path or not osp.isfile(path):
        raise SAMCheckpointError(
            f'SAM checkpoint not found: {path!r}. Download e.g. sam_vit_b_01ec64.pth from the Segment Anything '
            'release on a machine with internet access and give its local path in the options.')
    try:
        state = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as err:  # noqa: BLE001  (torch raises many types for unreadable files)
        raise SAMCheckpointError(f'{path}: cannot read the SAM checkpoint ({type(err).__name__}: '
                                 f'{str(err).splitlines()[0] if str(err) else "corrupt file"})') from err
    for key in ('model', 'state_dict'):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict):
        raise SAMCheckpointError(f'{path}: not a state dict (got {type(state).__name__})')
    if prefix:
        if any(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return state


def build_sam(model_type: str = 'vit_b', checkpoint: Optional[str] = None,
              device: Union[str, torch.device] = 'cpu') -> torch.nn.Module:
    """Builds segment_anything's ``Sam`` and loads ``checkpoint`` strictly on the CPU first.

    ``checkpoint=None`` builds random weights on purpose (tests); an empty string or a path that
    does not exist raises :class:`SAMCheckpointError`.
    """
    from segment_anything import sam_model_registry

    if model_type not in SAM_MODEL_TYPES:
        raise ValueError(f'unknown SAM model_type {model_type!r}; choose one of {SAM_MODEL_TYPES}')
    sam = sam_model_registry[model_type](checkpoint=None)
    if checkpoint is not None:
        state = load_sam_state_dict(checkpoint)
        missing, unexpected = sam.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise SAMCheckpointError(
                f'{checkpoint}: does not fit SAM {model_type}: {len(missing)} missing keys (e.g. {missing[:3]}), '
                f'{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})')
    return sam.to(device).eval()


def build_tiny_sam(embed_dim: int = 32, depth: int = 1, num_heads: int = 2, img_size: int = 1024,
                   seed: Optional[int] = 0) -> torch.nn.Module:
    """A randomly initialised SAM built from segment_anything's own classes at tiny size
    (~0.2 M parameters) for tests and CPU smoke runs. Not for real masks."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    with seeded_init(seed):
        prompt_dim = embed_dim
        patch = 16
        sam = Sam(
            image_encoder=ImageEncoderViT(
                img_size=img_size, patch_size=patch, embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                mlp_ratio=4, out_chans=prompt_dim, qkv_bias=True,
                norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=False, window_size=0),
            prompt_encoder=PromptEncoder(
                embed_dim=prompt_dim, image_embedding_size=(img_size // patch, img_size // patch),
                input_image_size=(img_size, img_size), mask_in_chans=16),
            mask_decoder=MaskDecoder(
                num_multimask_outputs=3,
                transformer=TwoWayTransformer(depth=1, embedding_dim=prompt_dim, mlp_dim=2 * prompt_dim,
                                              num_heads=num_heads),
                transformer_dim=prompt_dim, iou_head_depth=1, iou_head_hidden_dim=prompt_dim),
            pixel_mean=list(SAM_PIXEL_MEAN),
            pixel_std=list(SAM_PIXEL_STD),
        )
    return sam.eval()


def build_sam_image_encoder(model_type: str = 'vit_b', depth: Optional[int] = None, seed: Optional[int] = 0,
                            **overrides) -> torch.nn.Module:
    """segment_anything's ``ImageEncoderViT`` with the settings of ``model_type``, truncated to its
    first ``depth`` blocks (all by default), random weights drawn from ``seed``. ``overrides``
    (``SAM_ENCODER_OVERRIDES``) change the architecture, e.g. a tiny encoder for CPU runs."""
    from segment_anything.modeling import ImageEncoderViT

    if model_type not in SAM_ENCODER_CONFIGS:
        raise ValueError(f'unknown SAM model_type {model_type!r}; choose one of {SAM_MODEL_TYPES}')
    unknown = set(overrides) - set(SAM_ENCODER_OVERRIDES)
    if unknown:
        raise ValueError(f'unknown SAM encoder overrides {sorted(unknown)} (allowed: {SAM_ENCODER_OVERRIDES})')
    full_depth = SAM_ENCODER_CONFIGS[model_type]['depth']
    depth = full_depth if depth is None else int(depth)
    if not 1 <= depth <= full_depth:
        raise ValueError(f'SAM {model_type} encoder depth must be in 1..{full_depth}, got {depth}')
    cfg = dict(SAM_ENCODER_CONFIGS[model_type], window_size=14, use_rel_pos=True, mlp_ratio=4.0)
    cfg.update(overrides)
    with seeded_init(seed):
        return ImageEncoderViT(
            img_size=1024, patch_size=16, embed_dim=cfg['embed_dim'], depth=depth, num_heads=cfg['num_heads'],
            mlp_ratio=cfg['mlp_ratio'], qkv_bias=True, norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            use_abs_pos=True, use_rel_pos=cfg['use_rel_pos'], window_size=cfg['window_size'],
            global_attn_indexes=tuple(cfg['global_attn_indexes']), out_chans=256)
