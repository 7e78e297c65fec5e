"""Homography helpers: the pixel-centre convention, scalings between grids, composition, corner
errors, random benchmark transforms and the saved-transform file.

Convention: a 3x3 ``H`` maps infrared pixel coordinates ``(x, y, 1)`` to visible ``(x, y, w)``;
pixel centres lie at integer coordinates (OpenCV's convention for ``warpPerspective``).
"""
from __future__ import annotations

import json
import os.path as osp
from typing import Sequence, Tuple

import numpy as np


def grid_scale(src_size: Tuple[int, int], dst_size: Tuple[int, int]) -> np.ndarray:
    """The homography that stretches a ``src_size`` (H, W) grid onto a ``dst_size`` grid (same field
    of view; pixel centres at integers, so the outer pixel edges map onto each other)."""
    sy, sx = dst_size[0] / src_size[0], dst_size[1] / src_size[1]
    return np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]], dtype=np.float64)


def normalize(h: np.ndarray) -> np.ndarray:
    return h / h[2, 2]


def apply(h: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Maps N x 2 points through ``h``."""
    p = np.c_[pts, np.ones(len(pts))] @ h.T
    return p[:, :2] / p[:, 2:3]


def corners(size: Tuple[int, int]) -> np.ndarray:
    h, w = size
    return np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], dtype=np.float64)


def corner_error(h_est: np.ndarray, h_ref: np.ndarray, vis_size: Tuple[int, int]) -> float:
    """Mean distance, in visible pixels, between where the two transforms put the infrared points
    that ``h_ref`` maps onto the visible image's corners."""
    c = corners(vis_size)
    src = apply(np.linalg.inv(h_ref), c)
    return float(np.linalg.norm(apply(h_est, src) - c, axis=1).mean())


def similarity_about(center: Tuple[float, float], scale: float, angle_deg: float,
                     shift: Tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """Rotation by ``angle_deg`` and ``scale`` about ``center`` (x, y), then ``shift``."""
    a = np.deg2rad(angle_deg)
    c, s = scale * np.cos(a), scale * np.sin(a)
    cx, cy = center
    return np.array([[c, -s, cx - c * cx + s * cy + shift[0]],
                     [s, c, cy - s * cx - c * cy + shift[1]], [0, 0, 1]], dtype=np.float64)


def decompose(h: np.ndarray, center: Tuple[float, float]) -> dict:
    """Scale, rotation (degrees), shift of the centre (pixels) and perspective of ``h`` about
    ``center``: what the search-range checks read."""
    h = normalize(h)
    a = h[:2, :2] - np.outer(h[:2, 2], h[2, :2])
    scale = float(np.sqrt(abs(np.linalg.det(a))))
    angle = float(np.degrees(np.arctan2(a[1, 0] - a[0, 1], a[0, 0] + a[1, 1])))
    moved = apply(h, np.array([center]))[0] - np.asarray(center)
    sv = np.linalg.svd(a, compute_uv=False)
    return {'scale': scale, 'angle': angle, 'shift': (float(moved[0]), float(moved[1])),
            'anisotropy': float(sv[0] / max(sv[1], 1e-12)), 'flip': bool(np.linalg.det(a) < 0)}


def random_transform(rng: np.random.Generator, size: Tuple[int, int], max_angle: float = 5.0,
                     scale_range: Tuple[float, float] = (0.85, 1.15), max_shift: float = 0.08,
                     max_perspective: float = 0.02) -> np.ndarray:
    """A seeded random homography on a ``size`` (H, W) grid: rotation up to ``max_angle`` degrees and
    a scale in ``scale_range`` about the centre, a shift up to ``max_shift`` of the size per axis,
    then each corner moved by up to ``max_perspective`` of the size (the perspective part)."""
    h, w = size
    t = similarity_about(((w - 1) / 2, (h - 1) / 2), rng.uniform(*scale_range), rng.uniform(-max_angle, max_angle),
                         (rng.uniform(-max_shift, max_shift) * w, rng.uniform(-max_shift, max_shift) * h))
    import cv2
    c = corners(size)
    moved = apply(t, c) + rng.uniform(-max_perspective, max_perspective, (4, 2)) * np.array([w, h])
    return cv2.getPerspectiveTransform(c.astype(np.float32), moved.astype(np.float32)).astype(np.float64)


def load_transform(path: str) -> np.ndarray:
    """A saved 3x3 transform: a JSON file holding ``H`` (as written by ``--json`` / ``--fit-once``)
    or a bare 3x3 list, or a text file of 3 rows of 3 numbers. Anything else: one clear error."""
    if not osp.isfile(path):
        raise ValueError(f'--transform {path}: no such file')
    with open(path) as f:
        text = f.read()
    try:
        data = json.loads(text)
        if isinstance(data, dict):
            data = data.get('H', data.get('fit_once', {}).get('H') if isinstance(data.get('fit_once'), dict) else None)
    except json.JSONDecodeError:
        try:
            data = [[float(v) for v in line.replace(',', ' ').split()] for line in text.splitlines() if line.strip()]
        except ValueError:
            raise ValueError(f'--transform {path}: neither JSON nor rows of numbers') from None
    try:
        h = np.asarray(data, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f'--transform {path}: "H" must be a 3x3 matrix of numbers') from None
    if h.shape != (3, 3):
        raise ValueError(f'--transform {path}: expected a 3x3 matrix "H", got shape {h.shape}')
    if not np.all(np.isfinite(h)) or abs(np.linalg.det(h)) < 1e-12 or abs(h[2, 2]) < 1e-12:
        raise ValueError(f'--transform {path}: the 3x3 matrix is singular or not finite')
    return normalize(h)


def to_list(h: np.ndarray) -> Sequence[Sequence[float]]:
    return [[float(v) for v in row] for row in normalize(h)]
