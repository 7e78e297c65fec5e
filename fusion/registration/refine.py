"""Continuous refinement of a grid estimate: Gauss-Newton (Lucas-Kanade) on smoothed orientation
fields.

The global and local searches (:mod:`fusion.registration.estimate`) find scale, rotation and shift
on a grid; their residual is the grid's quantisation plus the perspective a similarity cannot
express. Here the infrared image, warped by the current estimate onto the visible grid, and the
visible image are both turned into two channels, the real and imaginary part of the orientation
field (magnitude-weighted ``cos 2 theta`` and ``sin 2 theta`` of the gradient, see
:mod:`fusion.registration.structure`), Gaussian-blurred so the basin is wide. An incremental
homography (or affine transform) of the visible grid is then solved by Gauss-Newton on the
channels' difference, the gain between the two modalities' channels taken out by least squares
at every step. Levels run coarse to fine (large blur at low resolution first). The caller keeps
the result only where it raises the structure correlation.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import cv2
import numpy as np


# parameters of the increment: affine (6) or homography (8), on centred, normalised coordinates
_N_PARAMS = {'affine': 6, 'homography': 8}


def _channels(field: np.ndarray, weight: np.ndarray, sigma: float) -> Tuple[np.ndarray, np.ndarray]:
    """Real and imaginary part of the orientation field, blurred by ``sigma`` with normalised
    convolution (the masked-out zeros do not pull the values near the mask's border down)."""
    w = cv2.GaussianBlur(weight, (0, 0), sigma) + 1e-6
    re = cv2.GaussianBlur(np.ascontiguousarray(field.real, np.float32), (0, 0), sigma) / w
    im = cv2.GaussianBlur(np.ascontiguousarray(field.imag, np.float32), (0, 0), sigma) / w
    return re, im


def _increment(p: np.ndarray, scale: float, centre: Tuple[float, float]) -> np.ndarray:
    """The homography ``G`` (level pixels) of the parameters ``p`` on coordinates
    ``u = (x - cx) / scale``: ``G = N^-1 (I + P) N``."""
    m = np.eye(3)
    m[0, :3] += p[0:3]
    m[1, :3] += p[3:6]
    if len(p) == 8:
        m[2, :2] += p[6:8]
    n = np.array([[1 / scale, 0, -centre[0] / scale], [0, 1 / scale, -centre[1] / scale], [0, 0, 1]])
    return np.linalg.inv(n) @ m @ n


def gauss_newton(pair, h_full: np.ndarray, model: str, levels: Sequence[Tuple[int, float, int]],
                 tol: float = 0.01) -> Tuple[np.ndarray, dict]:
    """Refines ``h_full`` (infrared -> visible, full resolution) on ``levels`` of (visible long side,
    blur sigma in level pixels, iterations). ``pair`` is the estimate's ``_Pair`` (per-level maps).
    Returns the refined transform and diagnostics: the last step's size (level pixels at the
    corners), the iterations run, and whether every level converged (step below ``tol``)."""
    n_par = _N_PARAMS[model]
    h_cur = h_full.copy()
    info = {'iterations': 0, 'converged': True, 'last_step_px': 0.0}
    for long_side, sigma, iters in levels:
        size, a_vis, vfield, _, _ = pair.vis_level(long_side)
        hh, ww = size
        vre, vim = _channels(vfield, np.ones(size, np.float32), sigma)
        vgrads = [(cv2.Sobel(c, cv2.CV_32F, 1, 0, ksize=3, scale=1 / 8),
                   cv2.Sobel(c, cv2.CV_32F, 0, 1, ksize=3, scale=1 / 8)) for c in (vre, vim)]
        ys, xs = np.mgrid[0:hh, 0:ww].astype(np.float32)
        cx, cy, sc = (ww - 1) / 2, (hh - 1) / 2, max(hh, ww) / 2
        u, v = (xs - cx) / sc, (ys - cy) / sc
        border = int(np.ceil(2 * sigma)) + 2
        level_conv = False
        step = 0.0
        prev_cost, h_prev = np.inf, h_cur
        for _ in range(iters):
            field, _, _, mask = pair.ir_on_vis_level(h_cur, long_side)
            m = mask.astype(np.float32)
            ire, iim = _channels(field, m, sigma)
            wgt = cv2.erode(m, np.ones((2 * border + 1, 2 * border + 1), np.uint8), borderType=cv2.BORDER_CONSTANT,
                            borderValue=0)
            sel = wgt > 0
            if sel.sum() < 0.2 * hh * ww:
                info['converged'] = False
                break
            uu, vv = u[sel], v[sel]
            jt = []
            res = []
            for (ich, vch), (vgx, vgy) in zip(((ire, vre), (iim, vim)), vgrads):
                i_s, v_s = ich[sel], vch[sel]
                # gain between the modalities' channels: least squares, so only the geometry is fitted
                gain = float(np.dot(i_s, v_s) / (np.dot(v_s, v_s) + 1e-12))
                gx = cv2.Sobel(ich, cv2.CV_32F, 1, 0, ksize=3, scale=1 / 8)[sel]
                gy = cv2.Sobel(ich, cv2.CV_32F, 0, 1, ksize=3, scale=1 / 8)[sel]
                # efficient second-order minimisation (Benhimane and Malis): the mean of both images'
                # gradients, which converges in fewer steps than the warped image's alone
                gx, gy = 0.5 * (gx + gain * vgx[sel]), 0.5 * (gy + gain * vgy[sel])
                gx, gy = gx * sc, gy * sc
                cols = [gx * uu, gx * vv, gx, gy * uu, gy * vv, gy]
                if n_par == 8:
                    cols += [-(gx * uu + gy * vv) * uu, -(gx * uu + gy * vv) * vv]
                jt.append(np.stack(cols))
                res.append(gain * v_s - i_s)
            j = np.concatenate(jt, axis=1).astype(np.float64)
            r = np.concatenate(res).astype(np.float64)
            i_all = np.concatenate([ire[sel], iim[sel]])
            cost = float(np.dot(r, r) / (np.dot(i_all, i_all) + 1e-12))
            if cost > prev_cost:
                # the last step made the fit worse: take it back and end this level
                h_cur = h_prev
                break
            prev_cost, h_prev = cost, h_cur
            a = j @ j.T
            b = j @ r
            a += np.eye(n_par) * (1e-6 * np.trace(a) / n_par)
            try:
                p = np.linalg.solve(a, b)
            except np.linalg.LinAlgError:
                info['converged'] = False
                break
            g = _increment(p, sc, (cx, cy))
            # the new estimate: V(x) ~ I_w(G x) = IR(H^-1 G x), so H' = G^-1 H (level grid)
            h_cur = np.linalg.inv(a_vis) @ np.linalg.inv(g) @ a_vis @ h_cur
            h_cur = h_cur / h_cur[2, 2]
            corners = np.array([[0, 0, 1], [ww - 1, 0, 1], [ww - 1, hh - 1, 1], [0, hh - 1, 1]], np.float64)
            moved = corners @ g.T
            step = float(np.linalg.norm(moved[:, :2] / moved[:, 2:3] - corners[:, :2], axis=1).mean())
            info['iterations'] += 1
            if step < tol:
                level_conv = True
                break
        info['converged'] = info['converged'] and (level_conv or step < 10 * tol)
        info['last_step_px'] = step
    return h_cur, info
