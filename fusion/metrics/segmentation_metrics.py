"""Semantic segmentation scores from one confusion matrix accumulated over a whole test set.

Conventions (``docs/segmentation.md``):

* Pixels whose label is ``ignore_index`` are left out of everything.
* ``IoU_c = TP_c / (TP_c + FP_c + FN_c)`` on the summed confusion matrix; mIoU is the mean over the
  counted classes. A mean of per-image IoUs is a different, noisier number and is not computed.
* A class absent from both the labels and the predictions of the whole set has no IoU (0 / 0): it
  is NaN here (``null`` in JSON) and left out of the mean, as MMSegmentation does. A class that is
  predicted but never labelled has IoU 0 and counts.
* ``include_background``: whether class ``background_index`` (MFNet's "unlabelled", id 0) counts in
  the mean. Its own IoU is always reported.
* Pixel accuracy: correctly labelled pixels / all non-ignored pixels (background included).

``calculate_seg_miou`` and ``calculate_seg_pixel_acc`` are registered in basicsr's METRIC_REGISTRY:
a model's validation accumulates the confusion matrix and calls them once with
``{'confusion_matrix': cm}`` (see ``SegmentationModel``).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from basicsr.utils.registry import METRIC_REGISTRY


ArrayOrTensor = Union[np.ndarray, torch.Tensor]

__all__ = ['confusion_matrix', 'class_iou', 'mean_iou', 'pixel_accuracy', 'segmentation_scores',
           'calculate_seg_miou', 'calculate_seg_pixel_acc']


def confusion_matrix(pred: ArrayOrTensor, label: ArrayOrTensor, num_classes: int,
                     ignore_index: Optional[int] = 255) -> np.ndarray:
    """``num_classes x num_classes`` int64 counts, rows = label, columns = prediction.

    ``pred`` and ``label`` are integer maps of the same shape (any batch layout). Label pixels equal
    to ``ignore_index`` are skipped; other label values must lie in ``[0, num_classes)``.
    """
    pred_t = torch.as_tensor(pred).reshape(-1).long()
    label_t = torch.as_tensor(label).reshape(-1).long()
    if pred_t.shape != label_t.shape:
        raise ValueError(f'confusion_matrix: prediction has {pred_t.numel()} pixels, label {label_t.numel()}')
    keep = label_t != ignore_index if ignore_index is not None else torch.ones_like(label_t, dtype=torch.bool)
    pred_t, label_t = pred_t[keep], label_t[keep]
    if label_t.numel() and (int(label_t.min()) < 0 or int(label_t.max()) >= num_classes):
        raise ValueError(f'confusion_matrix: label values must be in [0, {num_classes}) or {ignore_index}, '
                         f'got {int(label_t.min())}..{int(label_t.max())}')
    if pred_t.numel() and (int(pred_t.min()) < 0 or int(pred_t.max()) >= num_classes):
        raise ValueError(f'confusion_matrix: predictions must be in [0, {num_classes})')
    counts = torch.bincount(label_t * num_classes + pred_t, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).numpy().astype(np.int64)


def class_iou(cm: np.ndarray) -> np.ndarray:
    """Per-class IoU (float64); NaN for a class absent from both labels and predictions."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    union = cm.sum(axis=0) + cm.sum(axis=1) - tp
    with np.errstate(divide='ignore', invalid='ignore'):
        return np.where(union > 0, tp / np.maximum(union, 1), np.nan)


def _counted(num_classes: int, include_background: bool, background_index: int) -> List[int]:
    return [c for c in range(num_classes) if include_background or c != background_index]


def mean_iou(cm: np.ndarray, include_background: bool = True, background_index: int = 0) -> float:
    """Mean IoU over the counted classes that have one (NaN when none has)."""
    iou = class_iou(cm)[_counted(len(cm), include_background, background_index)]
    iou = iou[np.isfinite(iou)]
    return float(iou.mean()) if iou.size else float('nan')


def pixel_accuracy(cm: np.ndarray) -> float:
    cm = np.asarray(cm, dtype=np.float64)
    total = cm.sum()
    return float(np.trace(cm) / total) if total > 0 else float('nan')


def segmentation_scores(cm: np.ndarray, class_names: Optional[Sequence[str]] = None, include_background: bool = True,
                        background_index: int = 0) -> Dict:
    """``{'miou', 'pixel_acc', 'per_class_iou': {name: float (NaN: absent)}, 'label_pixels': {name: int}}``."""
    cm = np.asarray(cm)
    names = list(class_names) if class_names is not None else [str(i) for i in range(len(cm))]
    if len(names) != len(cm):
        raise ValueError(f'{len(names)} class names for a {len(cm)}-class confusion matrix')
    iou = class_iou(cm)
    return {'miou': mean_iou(cm, include_background, background_index), 'pixel_acc': pixel_accuracy(cm),
            'per_class_iou': {n: float(v) for n, v in zip(names, iou)},
            'label_pixels': {n: int(v) for n, v in zip(names, cm.sum(axis=1))}}


@METRIC_REGISTRY.register()
def calculate_seg_miou(confusion_matrix: np.ndarray, include_background: bool = True, background_index: int = 0,
                       **kwargs) -> float:
    """mIoU (in [0, 1]) of a confusion matrix accumulated over a whole validation set."""
    return mean_iou(confusion_matrix, include_background, background_index)


@METRIC_REGISTRY.register()
def calculate_seg_pixel_acc(confusion_matrix: np.ndarray, **kwargs) -> float:
    """Pixel accuracy (in [0, 1]) of a confusion matrix accumulated over a whole validation set."""
    return pixel_accuracy(confusion_matrix)
