"""The baselines the benchmark compares against: OpenCV ECC from the identity (the images
stretched onto one grid) on plain intensities and on gradient magnitudes."""
from __future__ import annotations

import cv2
import numpy as np

from fusion.registration import transforms as T


def _grad_mag(img: np.ndarray) -> np.ndarray:
    gx = cv2.Sobel(img, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(img, cv2.CV_32F, 0, 1, ksize=3)
    return np.sqrt(gx * gx + gy * gy)


def ecc_register(ir: np.ndarray, vis: np.ndarray, gradient: bool = False, model: str = 'homography',
                 iters: int = 50) -> np.ndarray:
    """ECC (``cv2.findTransformECC``) of the infrared image onto the visible one, from the identity;
    returns H (infrared -> visible). No convergence: the identity."""
    prior = T.grid_scale(ir.shape[:2], vis.shape[:2])
    src = cv2.resize(ir, (vis.shape[1], vis.shape[0]), interpolation=cv2.INTER_LINEAR)
    tpl = vis
    if gradient:
        src, tpl = _grad_mag(src), _grad_mag(tpl)
    motion = cv2.MOTION_HOMOGRAPHY if model == 'homography' else cv2.MOTION_AFFINE
    w = np.eye(3, dtype=np.float32) if motion == cv2.MOTION_HOMOGRAPHY else np.eye(2, 3, dtype=np.float32)
    try:
        _, w = cv2.findTransformECC(tpl.astype(np.float32), src.astype(np.float32), w, motion,
                                    (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, iters, 1e-5), None, 5)
    except cv2.error:
        return prior
    if w.shape[0] == 2:
        w = np.vstack([w, [0, 0, 1]])
    # ECC's warp maps visible coordinates to (stretched) infrared ones
    return T.normalize(np.linalg.inv(w.astype(np.float64)) @ prior)
