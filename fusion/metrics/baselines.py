"""Trivial pixel fusions used to sanity-check metric tables: a method that does not beat both
baselines on most metrics is not fusing anything useful.

Both work on the 0-255 grey images the metrics see (``read_gray`` of the IR and visible files) and
return uint8, exactly like the fused PNGs of the metric reference set: mean =
floor((A + B) / 2) in integer arithmetic, max = max(A, B).
"""
from __future__ import annotations

from typing import Callable, Dict

import numpy as np


__all__ = ['pixel_mean_fusion', 'pixel_max_fusion', 'BASELINES']


def _as_uint8(img: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(img)
    if arr.ndim != 2:
        raise ValueError(f'{name}: baselines fuse grey H x W images, got shape {arr.shape}')
    return np.clip(np.round(arr), 0, 255).astype(np.uint8)


def pixel_mean_fusion(ir: np.ndarray, vis: np.ndarray) -> np.ndarray:
    """floor((A + B) / 2) per pixel (integer arithmetic), uint8."""
    a = _as_uint8(ir, 'infrared image').astype(np.uint16)
    b = _as_uint8(vis, 'visible image').astype(np.uint16)
    if a.shape != b.shape:
        raise ValueError(f'size mismatch: infrared {a.shape[::-1]} vs visible {b.shape[::-1]} (W x H)')
    return ((a + b) // 2).astype(np.uint8)


def pixel_max_fusion(ir: np.ndarray, vis: np.ndarray) -> np.ndarray:
    """max(A, B) per pixel, uint8."""
    a = _as_uint8(ir, 'infrared image')
    b = _as_uint8(vis, 'visible image')
    if a.shape != b.shape:
        raise ValueError(f'size mismatch: infrared {a.shape[::-1]} vs visible {b.shape[::-1]} (W x H)')
    return np.maximum(a, b)


BASELINES: Dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    'mean': pixel_mean_fusion,
    'max': pixel_max_fusion,
}
