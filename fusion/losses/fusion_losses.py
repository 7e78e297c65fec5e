"""SAGE's pixel and feature losses (sections 4.1-4.6 of the project's reference notes on the official
code, sage_reference.md).

* :class:`SAGEContextLoss`: the pixel ("context") part of the distillation: Sobel-gradient terms
  against the element-wise max of the sources' gradients and against a reference image, plus
  intensity MSE terms against both sources and the reference. The defaults are the official
  student weights; the teacher's own fusion loss is the same class with other weights.
* :class:`FeatureAlignmentLoss`: ``sum_k (1 - cos)`` over the five paired intermediate features.
* :class:`SegCrossEntropyLoss`: cross-entropy with an ignore index on segmentation logits
  against integer class ids (the official code fed probabilities and all-zero targets: bugs 2, 4).

Every loss takes ``loss_weight`` and returns ``loss_weight * value`` so it can be used alone
(``build_loss({'type': ..., ...})``) as basicsr's losses are.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from basicsr.utils.registry import LOSS_REGISTRY
from torch import nn


__all__ = ['sobel_gradient', 'SAGEContextLoss', 'FeatureAlignmentLoss', 'SegCrossEntropyLoss']

# Sobel kernels exactly as the official GradientLoss (section 4.1)
_SOBEL_X = ((-1., 0., 1.), (-2., 0., 2.), (-1., 0., 1.))
_SOBEL_Y = ((1., 2., 1.), (0., 0., 0.), (-1., -2., -1.))


def _check_image(name: str, t: torch.Tensor) -> None:
    if not torch.is_tensor(t) or t.dim() != 4 or t.shape[1] != 1:
        got = tuple(t.shape) if torch.is_tensor(t) else type(t).__name__
        raise ValueError(f'{name} must be a B x 1 x H x W tensor, got {got}')


def sobel_gradient(img: torch.Tensor) -> torch.Tensor:
    """|Gx * img| + |Gy * img| with zero padding 1 (the official L1 gradient map), B x 1 x H x W."""
    _check_image('sobel_gradient input', img)
    kernels = torch.tensor([_SOBEL_X, _SOBEL_Y], dtype=img.dtype, device=img.device).unsqueeze(1)
    grads = F.conv2d(img, kernels, padding=1)
    return grads.abs().sum(dim=1, keepdim=True)


@LOSS_REGISTRY.register()
class SAGEContextLoss(nn.Module):
    """Pixel-level fusion/distillation loss of SAGE.

    ``value = intensity_weight * (w_int_vis MSE(o, vis) + w_int_ir MSE(o, ir) + w_int_ref MSE(o, ref))
    + gradient_weight * (w_grad_src L1(g(o), max(g(vis), g(ir))) + w_grad_ref L1(g(o), g(ref)))``
    with ``g`` the Sobel map of :func:`sobel_gradient`. The defaults are the official student
    loss (section 4.3: 3 x [3, 2, 4] MSE and 3 x [9, 3] gradient). The teacher's own loss
    (section 4.2) is ``w_int_vis=1, w_int_ir=1, w_int_ref=0, w_grad_src=2, w_grad_ref=0,
    intensity_weight=1, gradient_weight=1``. Reference terms are skipped when ``ref`` is None.
    """

    def __init__(self, loss_weight: float = 1.0, intensity_weight: float = 3.0, gradient_weight: float = 3.0,
                 w_int_vis: float = 3.0, w_int_ir: float = 2.0, w_int_ref: float = 4.0,
                 w_grad_src: float = 9.0, w_grad_ref: float = 3.0) -> None:
        super().__init__()
        self.loss_weight = float(loss_weight)
        self.intensity_weight = float(intensity_weight)
        self.gradient_weight = float(gradient_weight)
        self.w_int = {'vis': float(w_int_vis), 'ir': float(w_int_ir), 'ref': float(w_int_ref)}
        self.w_grad = {'src': float(w_grad_src), 'ref': float(w_grad_ref)}

    @property
    def uses_reference(self) -> bool:
        return (self.w_int['ref'] != 0 and self.intensity_weight != 0) or (
            self.w_grad['ref'] != 0 and self.gradient_weight != 0)

    def components(self, output: torch.Tensor, vis_y: torch.Tensor, ir: torch.Tensor,
                   ref: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """The weighted terms (each already multiplied by its weights and ``loss_weight``):
        ``int_vis``, ``int_ir``, ``int_ref``, ``grad_src``, ``grad_ref``. Terms with a zero weight
        are not computed (zero tensors), so they cost nothing."""
        named = (('output', output), ('vis_y', vis_y), ('ir', ir)) + ((('ref', ref),) if ref is not None else ())
        for name, t in named:
            _check_image(f'SAGEContextLoss: {name}', t)
            if t.shape != output.shape:
                raise ValueError(f'SAGEContextLoss: {name} shape {tuple(t.shape)} != output shape '
                                 f'{tuple(output.shape)}')
        zero = output.new_zeros(())
        scale_int = self.loss_weight * self.intensity_weight
        scale_grad = self.loss_weight * self.gradient_weight
        terms = {}
        for key, src in (('vis', vis_y), ('ir', ir), ('ref', ref)):
            w = scale_int * self.w_int[key]
            terms[f'int_{key}'] = w * F.mse_loss(output, src) if (w != 0 and src is not None) else zero
        need_grad = scale_grad != 0 and (self.w_grad['src'] != 0 or (self.w_grad['ref'] != 0 and ref is not None))
        grad_out = sobel_gradient(output) if need_grad else None
        w = scale_grad * self.w_grad['src']
        if w != 0:
            # the sources are targets: their gradient maps carry no gradient anyway
            target = torch.maximum(sobel_gradient(vis_y), sobel_gradient(ir))
            terms['grad_src'] = w * F.l1_loss(grad_out, target)
        else:
            terms['grad_src'] = zero
        w = scale_grad * self.w_grad['ref']
        terms['grad_ref'] = w * F.l1_loss(grad_out, sobel_gradient(ref)) if (w != 0 and ref is not None) else zero
        return terms

    def forward(self, output: torch.Tensor, vis_y: torch.Tensor, ir: torch.Tensor,
                ref: Optional[torch.Tensor] = None) -> torch.Tensor:
        return sum(self.components(output, vis_y, ir, ref).values())


@LOSS_REGISTRY.register()
class FeatureAlignmentLoss(nn.Module):
    """``loss_weight * sum_k w_k (1 - mean_b cos(flatten(a_k[b]), flatten(b_k[b])))`` over paired
    features (section 4.5: each sample's C x H x W map is one vector). 0 for identical features,
    2 per level for opposite ones. ``level_weights`` defaults to 1 for every level.

    The second argument is the target: pass it detached (the official code computes it under
    no_grad); it is not detached here, so the loss can also be used symmetrically.
    """

    def __init__(self, loss_weight: float = 1.0, level_weights: Optional[Sequence[float]] = None,
                 eps: float = 1e-8) -> None:
        super().__init__()
        self.loss_weight = float(loss_weight)
        self.level_weights = None if level_weights is None else [float(w) for w in level_weights]
        self.eps = float(eps)

    def per_level(self, feats: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]) -> torch.Tensor:
        """Unweighted ``1 - mean cos`` of each level (a 1-D tensor)."""
        if feats is None or targets is None or len(feats) != len(targets) or len(feats) == 0:
            raise ValueError(f'FeatureAlignmentLoss: needs two equally long, non-empty feature lists, got '
                             f'{None if feats is None else len(feats)} and {None if targets is None else len(targets)}')
        values = []
        for k, (a, b) in enumerate(zip(feats, targets)):
            if a.shape != b.shape:
                raise ValueError(f'FeatureAlignmentLoss: level {k + 1} shapes differ: {tuple(a.shape)} vs '
                                 f'{tuple(b.shape)}')
            cos = F.cosine_similarity(a.flatten(1), b.flatten(1), dim=1, eps=self.eps)
            values.append(1 - cos.mean())
        return torch.stack(values)

    def forward(self, feats: Sequence[torch.Tensor], targets: Sequence[torch.Tensor]) -> torch.Tensor:
        levels = self.per_level(feats, targets)
        if self.level_weights is not None:
            if len(self.level_weights) != len(levels):
                raise ValueError(f'FeatureAlignmentLoss: {len(self.level_weights)} level_weights for '
                                 f'{len(levels)} levels')
            levels = levels * levels.new_tensor(self.level_weights)
        return self.loss_weight * levels.sum()


@LOSS_REGISTRY.register()
class SegCrossEntropyLoss(nn.Module):
    """Cross-entropy of segmentation logits (B x C x h x w) against integer class ids (B x H x W),
    pixels equal to ``ignore_index`` excluded. Logits of another size are resized bilinearly to
    the label size. A batch without any labelled pixel gives 0 (not NaN), so unlabelled data
    can pass through the same code. ``class_weights``: optional per-class weights (length C).
    """

    def __init__(self, loss_weight: float = 1.0, ignore_index: int = 255,
                 class_weights: Optional[Sequence[float]] = None) -> None:
        super().__init__()
        self.loss_weight = float(loss_weight)
        self.ignore_index = int(ignore_index)
        self.class_weights = None if class_weights is None else [float(w) for w in class_weights]

    def forward(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        if logits.dim() != 4:
            raise ValueError(f'SegCrossEntropyLoss: logits must be B x C x H x W, got {tuple(logits.shape)}')
        if label.dim() == 4 and label.shape[1] == 1:
            label = label[:, 0]
        if label.dim() != 3 or label.shape[0] != logits.shape[0]:
            raise ValueError(f'SegCrossEntropyLoss: label must be B x H x W class ids, got {tuple(label.shape)} '
                             f'for logits {tuple(logits.shape)}')
        if label.is_floating_point():
            raise ValueError('SegCrossEntropyLoss: label must hold integer class ids (got a float tensor; '
                             'scaling ids by 1/255 was bug 2 of the official code)')
        label = label.long()
        num_classes = logits.shape[1]
        valid = label != self.ignore_index
        if valid.any() and (label[valid].min() < 0 or label[valid].max() >= num_classes):
            raise ValueError(f'SegCrossEntropyLoss: class ids must be in [0, {num_classes - 1}] or the ignore '
                             f'index {self.ignore_index}; found '
                             f'{label[valid].min().item()}..{label[valid].max().item()}')
        if logits.shape[-2:] != label.shape[-2:]:
            logits = F.interpolate(logits, size=label.shape[-2:], mode='bilinear', align_corners=False)
        weight = None
        if self.class_weights is not None:
            if len(self.class_weights) != num_classes:
                raise ValueError(f'SegCrossEntropyLoss: {len(self.class_weights)} class_weights for '
                                 f'{num_classes} classes')
            weight = logits.new_tensor(self.class_weights)
        if not valid.any():
            return logits.sum() * 0.0  # keeps the graph (and DDP) happy, contributes nothing
        loss = F.cross_entropy(logits, label, weight=weight, ignore_index=self.ignore_index)
        return self.loss_weight * loss
