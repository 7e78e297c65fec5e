"""Class-id maps <-> colour pictures in a dataset's palette (prediction and label pictures)."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np


def default_palette(num_classes: int) -> np.ndarray:
    """A fixed, distinguishable RGB colour per class (the PASCAL VOC bit pattern; class 0 black),
    used when the options give no palette."""
    palette = np.zeros((num_classes, 3), np.uint8)
    for c in range(num_classes):
        value, r, g, b = c, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= ((value >> 0) & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
        palette[c] = (r, g, b)
    return palette


def as_palette(palette: Optional[Sequence[Sequence[int]]], num_classes: int) -> np.ndarray:
    """The palette of the options as a ``num_classes x 3`` uint8 array (default when None)."""
    if palette is None:
        return default_palette(num_classes)
    arr = np.asarray(palette, dtype=np.int64)
    if arr.shape != (num_classes, 3) or arr.min() < 0 or arr.max() > 255:
        raise ValueError(f'palette: expected {num_classes} RGB triples in 0..255, got shape {arr.shape}')
    return arr.astype(np.uint8)


def colorize(label: np.ndarray, palette: np.ndarray, ignore_color: Sequence[int] = (255, 255, 255)) -> np.ndarray:
    """H x W class ids -> H x W x 3 uint8 RGB; ids outside the palette (ignore_index) get ``ignore_color``."""
    label = np.asarray(label)
    out = np.empty(label.shape + (3,), np.uint8)
    out[:] = np.asarray(ignore_color, np.uint8)
    valid = (label >= 0) & (label < len(palette))
    out[valid] = palette[label[valid]]
    return out
