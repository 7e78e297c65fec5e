"""Modality-robust structure maps: what infrared and visible images share is where edges are and
which way they run, not their brightness or its polarity (a warm person is bright in infrared and
may be dark in the visible image).

* the orientation field ``(gx + i gy)^2 / (|g|^2 + eps^2)``: doubled-angle gradient orientation
  (so opposite polarities agree), weight near 1 on edges clearly above the image's own gradient
  level and near 0 in flat or noisy parts; its correlation is the similarity of the coarse search
  and of the confidence score;
* the edge-strength map ``|g| / sqrt(|g|^2 + eps^2)``: the same normalisation without orientation,
  a single channel for ECC refinement.

``eps`` follows each image's own gradient statistics, so dim, low-contrast infrared and bright
visible images get comparable maps.
"""
from __future__ import annotations

from typing import Tuple

import cv2
import numpy as np


def valid_mask(img: np.ndarray, min_fraction: float = 0.002) -> np.ndarray:
    """uint8 mask (1 = image content) without the constant black (or white) borders that warped,
    padded or letterboxed images carry: regions of exactly the extreme value touching the border."""
    mask = np.ones(img.shape, np.uint8)
    for value in (img.min(), img.max()):
        flat = (img == value).astype(np.uint8)
        if flat.sum() < min_fraction * img.size:
            continue
        n, labels, stats, _ = cv2.connectedComponentsWithStats(flat, connectivity=4)
        border = set(np.unique(np.r_[labels[0], labels[-1], labels[:, 0], labels[:, -1]]).tolist())
        for lab in border:
            if lab and flat[labels == lab].size and stats[lab, cv2.CC_STAT_AREA] >= min_fraction * img.size:
                mask[labels == lab] = 0
    return mask


def gradients(img: np.ndarray, sigma: float) -> Tuple[np.ndarray, np.ndarray]:
    if sigma > 0:
        img = cv2.GaussianBlur(img, (0, 0), sigma)
    gx = cv2.Sobel(img, cv2.CV_32F, 1, 0, ksize=3, scale=1 / 8)
    gy = cv2.Sobel(img, cv2.CV_32F, 0, 1, ksize=3, scale=1 / 8)
    return gx, gy


def edge_eps(g2: np.ndarray, mask: np.ndarray, rel: float, floor: float) -> float:
    """The normalisation constant: ``rel`` times the median gradient magnitude of the image's
    content, never below ``floor`` (grey levels in [0, 1] per pixel: below it is sensor noise)."""
    # every third pixel: the median of a large sample, at a third of the cost
    vals = (g2[mask > 0] if mask is not None else g2.ravel())[::3]
    med = float(np.sqrt(np.median(vals))) if vals.size else 0.0
    return max(rel * med, floor)


def structure_maps(img: np.ndarray, mask: np.ndarray, sigma: float = 1.0, rel: float = 1.5,
                   floor: float = 0.002, erode: int = 2) -> Tuple[np.ndarray, np.ndarray, float]:
    """(complex orientation field, edge-strength map float32, strong-edge fraction) of a grey float32
    image in [0, 1]; both maps are zero outside ``mask`` (eroded by ``erode`` pixels so the mask's
    own border is no edge). The strong-edge fraction (weight > 0.5 inside the mask) tells whether
    there is enough structure to register at all."""
    gx, gy = gradients(img, sigma)
    g2 = gx * gx + gy * gy
    if erode > 0:
        mask = cv2.erode(mask, np.ones((2 * erode + 1, 2 * erode + 1), np.uint8), borderType=cv2.BORDER_CONSTANT,
                         borderValue=0)
    eps = edge_eps(g2, mask, rel, floor)
    denom = g2 + eps * eps
    m = mask.astype(np.float32)
    field = ((gx + 1j * gy) ** 2 / denom * m).astype(np.complex64)
    strength = (np.sqrt(g2 / denom) * m).astype(np.float32)
    inside = max(int(mask.sum()), 1)
    strong = float(((g2 > eps * eps) & (mask > 0)).sum()) / inside
    return field, strength, strong
