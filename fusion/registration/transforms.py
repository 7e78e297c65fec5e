"""Transform helpers: the pixel-centre convention, scalings between grids, composition, the
visible lens term, warps, corner errors, random benchmark transforms and the saved-transform file.

Convention: a 3x3 ``H`` maps infrared pixel coordinates ``(x, y, 1)`` to visible ``(x, y, w)``;
pixel centres lie at integer coordinates (OpenCV's convention for ``warpPerspective``). The full
transform is ``D(H x)``: ``D`` is a radial term about the visible frame's centre ``c`` (pixel
centres, ``((W - 1) / 2, (H - 1) / 2)``), ``D(p) = c + (p - c) (1 + k1 |p - c|^2 / R^2)`` with ``R``
half the frame's diagonal, ``0.5 hypot(W, H)``. It describes the two lenses' different distortion;
``k1 = 0`` is the plain homography. Defined in normalised radius, the same ``k1`` holds on every
uniformly scaled level of the visible grid.
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


def radial_frame(size: Tuple[int, int]) -> Tuple[np.ndarray, float]:
    """Centre (x, y) and normalising radius of the lens term on a ``size`` (H, W) frame."""
    h, w = size
    return np.array([(w - 1) / 2, (h - 1) / 2]), 0.5 * float(np.hypot(w, h))


def distort(pts: np.ndarray, k1: float, size: Tuple[int, int]) -> np.ndarray:
    """``D`` on N x 2 points of a ``size`` frame."""
    if not k1:
        return pts
    c, r = radial_frame(size)
    d = pts - c
    return c + d * (1 + k1 * np.sum(d ** 2, axis=1, keepdims=True) / r ** 2)


def undistort(pts: np.ndarray, k1: float, size: Tuple[int, int], iters: int = 6) -> np.ndarray:
    """``D^-1`` by fixed-point iteration (it converges fast for the few-percent terms of real lenses)."""
    if not k1:
        return pts
    c, r = radial_frame(size)
    q = pts - c
    d = q.copy()
    for _ in range(iters):
        d = q / (1 + k1 * np.sum(d ** 2, axis=1, keepdims=True) / r ** 2)
    return c + d


def map_points(h: np.ndarray, pts: np.ndarray, size: Tuple[int, int], k1: float = 0.0) -> np.ndarray:
    """The full transform ``D(H x)`` of N x 2 infrared points onto a ``size`` visible frame."""
    return distort(apply(h, pts), k1, size)


def unmap_points(h: np.ndarray, pts: np.ndarray, size: Tuple[int, int], k1: float = 0.0) -> np.ndarray:
    """Its inverse: visible points of a ``size`` frame back to infrared coordinates."""
    return apply(np.linalg.inv(h), undistort(pts, k1, size))


def warp(img: np.ndarray, h: np.ndarray, out_size: Tuple[int, int], k1: float = 0.0, flags: int = 1,
         border_mode: int = 0, border_value: float = 0) -> np.ndarray:
    """``img`` (infrared grid) resampled onto an ``out_size`` (H, W) frame by ``D(H x)``, ``D``
    defined on that frame; ``cv2.warpPerspective`` when ``k1`` is 0, else ``cv2.remap``. ``flags``
    and ``border_mode`` are OpenCV's (default: linear, constant)."""
    import cv2
    h_out, w_out = out_size
    if not k1:
        return cv2.warpPerspective(img, h, (w_out, h_out), flags=flags, borderMode=border_mode,
                                   borderValue=border_value)
    # the source map is smooth: computed exactly at the centres of step x step cells (one cell of
    # margin all round), then bilinearly upsampled by cv2.resize, whose pixel-centre convention puts
    # every output pixel between four of those centres (error far below 0.01 px for real lenses)
    step = 4
    ny, nx = -(-h_out // step) + 2, -(-w_out // step) + 2
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float64)
    pts = np.stack([xx.ravel(), yy.ravel()], 1)
    src = unmap_points(h, (pts - 1 + 0.5) * step - 0.5, out_size, k1).astype(np.float32).reshape(ny, nx, 2)
    full = cv2.resize(src, (nx * step, ny * step), interpolation=cv2.INTER_LINEAR)
    full = full[step:step + h_out, step:step + w_out]
    interp = cv2.INTER_LINEAR if flags == cv2.INTER_AREA else flags  # remap has no area mode
    return cv2.remap(img, np.ascontiguousarray(full[..., 0]), np.ascontiguousarray(full[..., 1]), interp,
                     borderMode=border_mode, borderValue=border_value)


def corner_error(h_est: np.ndarray, h_ref: np.ndarray, vis_size: Tuple[int, int], k_est: float = 0.0,
                 k_ref: float = 0.0, inset: float = 0.0) -> float:
    """Mean distance, in visible pixels, between where the two transforms (``D(H x)`` with their
    lens terms) put the infrared points that the reference maps onto the visible image's corners
    (with ``inset``, the corners of the box that fraction of the size inside them)."""
    c = corners(vis_size)
    c = c + (c.mean(0) - c) * 2 * inset
    src = unmap_points(h_ref, c, vis_size, k_ref)
    return float(np.linalg.norm(map_points(h_est, src, vis_size, k_est) - c, axis=1).mean())


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


def load_transform(path: str) -> Tuple[np.ndarray, float]:
    """A saved transform, ``(H, k1)``: a JSON file holding ``H`` and optionally ``k1`` (as written by
    ``--json`` / ``--fit-once``) or a bare 3x3 list, or a text file of 3 rows of 3 numbers (``k1``
    0). Anything else: one clear error."""
    if not osp.isfile(path):
        raise ValueError(f'--transform {path}: no such file')
    with open(path) as f:
        text = f.read()
    k1 = 0.0
    try:
        data = json.loads(text)
        if isinstance(data, dict):
            holder = data if 'H' in data else data.get('fit_once') if isinstance(data.get('fit_once'), dict) else {}
            data, k1 = holder.get('H'), holder.get('k1', 0.0)
            if isinstance(k1, bool) or not isinstance(k1, (int, float)) or not np.isfinite(k1) or abs(k1) > 0.5:
                raise ValueError(f'--transform {path}: "k1" must be a number within +-0.5, got {k1!r}')
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
    return normalize(h), float(k1)


def to_list(h: np.ndarray) -> Sequence[Sequence[float]]:
    return [[float(v) for v in row] for row in normalize(h)]
