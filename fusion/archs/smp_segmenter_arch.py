"""Segmenters of segmentation-models-pytorch (smp) for the downstream segmentation protocol.

Why smp: it is a maintained library with SegFormer (MiT-B0..B5 encoders and the all-MLP decoder)
and the classic CNN segmenters (U-Net, FPN ...) behind one constructor, needs no network access
when ``encoder_weights=None``, and its MiT encoder keeps the parameter names of the official
SegFormer code, so the ImageNet-pretrained ``mit_b*.pth`` files load into it directly.

Nothing is downloaded: pretrained encoder weights come from a local file (``encoder_weights``);
without one the encoder is randomly initialised and the log says so.
"""
from __future__ import annotations

import logging
import os.path as osp
from collections import OrderedDict
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn

from fusion.utils.checkpoint_util import load_checkpoint_file


# ImageNet statistics: what every pretrained smp / SegFormer encoder expects
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_STRIDE = 32  # smp encoders down-sample 5 times


def _encoder_state(checkpoint: dict, path: str) -> Dict[str, torch.Tensor]:
    """The encoder's tensors in a checkpoint: a plain state dict, or one under ``state_dict`` /
    ``model`` / ``params``; prefixes ``module.``, ``encoder.``, ``backbone.`` are removed."""
    state = checkpoint
    for key in ('state_dict', 'model', 'params'):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f'{path}: not an encoder state dict (expected tensors, possibly under "state_dict")')
    out = OrderedDict()
    for key, value in state.items():
        for prefix in ('module.', 'encoder.', 'backbone.'):
            if key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def load_encoder_weights(encoder: nn.Module, path: str) -> None:
    """Loads a local encoder checkpoint (e.g. ImageNet-pretrained ``mit_b0.pth``) into ``encoder``.

    Every encoder parameter must be found with the right shape (else a ``ValueError`` naming the
    file and the first missing keys); extra entries such as an ImageNet classification head are
    skipped and logged.
    """
    state = _encoder_state(load_checkpoint_file(path), path)
    own = encoder.state_dict()
    missing = [k for k in own if k not in state]
    wrong = [f'{k} {tuple(state[k].shape)} vs {tuple(v.shape)}' for k, v in own.items()
             if k in state and state[k].shape != v.shape]
    if missing or wrong:
        raise ValueError(f'{path}: does not fit the {type(encoder).__name__} encoder: '
                         + (f'{len(missing)} missing keys (e.g. {missing[:3]})' if missing else '')
                         + ('; ' if missing and wrong else '') + (f'shape mismatch: {wrong[:3]}' if wrong else ''))
    extra = [k for k in state if k not in own]
    # nn.Module's own loader: some smp encoders override load_state_dict without ``strict``
    nn.Module.load_state_dict(encoder, OrderedDict((k, state[k]) for k in own), strict=True)
    logging.getLogger('basicsr').info(
        f'Encoder weights loaded from {path}' + (f' ({len(extra)} unused entries, e.g. {extra[:2]})' if extra else ''))


@ARCH_REGISTRY.register()
class SMPSegmenter(nn.Module):
    """Any segmentation-models-pytorch model: ``arch`` (``Segformer``, ``Unet``, ``FPN`` ...) with
    encoder ``encoder_name`` (``mit_b0`` .. ``mit_b5`` for SegFormer-B0..B5, ``resnet18`` ...).

    Options (``network_g`` in the YAML):

    ============== =========== ===================================================================
    arch           Segformer   smp model class name
    encoder_name   mit_b0      smp encoder name (mit_b3 = the paper's SegFormer-B3)
    num_classes    9           output classes
    in_ch          3           input channels (fused RGB; grey images are repeated to 3 channels)
    encoder_weights ~          local file of pretrained encoder weights; ~ = random initialisation
    normalize      true        normalise [0, 1] input with ImageNet mean/std (pretrained encoders)
    arch_kwargs    {}          extra keyword arguments of the smp model (e.g. decoder_channels)
    ============== =========== ===================================================================

    ``forward(img)``: B x in_ch x H x W in [0, 1], any H and W (padded to a multiple of 32 inside)
    -> logits B x num_classes x H x W.
    """

    def __init__(self, arch: str = 'Segformer', encoder_name: str = 'mit_b0', num_classes: int = 9, in_ch: int = 3,
                 encoder_weights: Optional[str] = None, normalize: bool = True,
                 arch_kwargs: Optional[dict] = None) -> None:
        super().__init__()
        import segmentation_models_pytorch as smp

        if num_classes < 2:
            raise ValueError(f'SMPSegmenter: num_classes must be >= 2, got {num_classes}')
        model_cls = getattr(smp, arch, None)
        if not (isinstance(model_cls, type) and issubclass(model_cls, nn.Module)):
            raise ValueError(f'SMPSegmenter: unknown arch {arch!r} (segmentation_models_pytorch model classes, '
                             'e.g. Segformer, Unet, FPN, DeepLabV3Plus)')
        if encoder_name not in smp.encoders.get_encoder_names():
            raise ValueError(f'SMPSegmenter: unknown encoder_name {encoder_name!r} (e.g. mit_b0 .. mit_b5, resnet18)')
        # encoder_weights=None: smp must never reach for the network
        self.model = model_cls(encoder_name=encoder_name, encoder_weights=None, in_channels=in_ch, classes=num_classes,
                               **(arch_kwargs or {}))
        self.in_ch = in_ch
        self.num_classes = num_classes
        self.normalize = normalize and in_ch == 3
        self.register_buffer('mean', torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer('std', torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        logger = logging.getLogger('basicsr')
        if encoder_weights:
            if not osp.isfile(encoder_weights):
                raise FileNotFoundError(f'encoder_weights: no such file: {encoder_weights} (a local file of '
                                        f'pretrained {encoder_name} weights; ~ for random initialisation)')
            load_encoder_weights(self.model.encoder, encoder_weights)
        else:
            logger.info(f'SMPSegmenter {arch}/{encoder_name}: encoder randomly initialised (no encoder_weights given; '
                        'paper-level numbers need ImageNet-pretrained weights)')

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        if img.dim() != 4 or img.shape[1] != self.in_ch:
            raise ValueError(f'SMPSegmenter: expected B x {self.in_ch} x H x W, got {tuple(img.shape)}')
        if self.normalize:
            img = (img - self.mean) / self.std
        h, w = img.shape[-2:]
        pad_h, pad_w = (-h) % _STRIDE, (-w) % _STRIDE
        if pad_h or pad_w:
            img = F.pad(img, (0, pad_w, 0, pad_h))
        logits = self.model(img)
        if logits.shape[-2:] != img.shape[-2:]:  # decoders that predict at a lower stride
            logits = F.interpolate(logits, size=img.shape[-2:], mode='bilinear', align_corners=False)
        return logits[..., :h, :w]
