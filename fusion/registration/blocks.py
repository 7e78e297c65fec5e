"""Refinement of a grid estimate by block matching: many local shifts, one robust homography.

The grid searches (:mod:`fusion.registration.estimate`) find scale, rotation and shift; their
residual is the grid's quantisation plus the perspective a similarity cannot express. Here the
infrared image, warped by the current estimate onto the visible grid, is cut into overlapping
blocks; each block's orientation field (:mod:`fusion.registration.structure`) is correlated with
the visible one over small shifts (FFT, normalised by both windows' energies so that busy regions
do not pull the peak), and a block whose peak is distinct gives one correspondence. The transform
``D(H x)``, a homography (or affine transform) and the visible lens term ``k1``
(:mod:`fusion.registration.transforms`), is fitted to them robustly (MAGSAC++ for the inliers,
then a Cauchy M-estimate over all), and the pass repeats with a smaller search radius on the
re-warped image. A spatial jackknife (:func:`corner_spread`) then measures how much the corners
depend on which part of the image the blocks cover.

Parallax: cameras side by side see near things shifted against far ones along their baseline, so
the residuals of a scene with depth stretch along one direction (:func:`parallax_direction`).
There the fit weighs the residuals along that direction less (``along`` of :func:`fit_irls`): the
component across the baseline, which depth does not move, then decides the lens term and the
other parameters, and the along-baseline component decides only what it alone can see.

Why blocks rather than one global objective: a block's peak is a local, polarity-free measurement
that does not care what the rest of the image does, so content that the warp crops, parallax and
structures seen by one modality only become outliers instead of biasing the fit. The inlier count
and residual are a second, independent confidence measure.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import cv2
import numpy as np
from scipy import fft as sfft  # keeps complex64 (numpy's FFT works in complex128, at twice the cost)

from fusion.registration import transforms as T


def _window_energy(ii: np.ndarray, y0: int, x0: int, block: int, n: int) -> np.ndarray:
    """sqrt of the sum of the squared field over the ``block`` x ``block`` windows at the ``n`` x ``n``
    shifts from (``y0``, ``x0``), read from the frame's integral image ``ii``."""
    a = ii[y0 + block:y0 + block + n, x0 + block:x0 + block + n] - ii[y0:y0 + n, x0 + block:x0 + block + n]
    s = a - ii[y0 + block:y0 + block + n, x0:x0 + n] + ii[y0:y0 + n, x0:x0 + n]
    return np.sqrt(np.maximum(s, 0)) + 1e-9


def subpixel_peak(c: np.ndarray) -> Tuple[float, float, float]:
    """Peak (y, x) of a correlation surface, refined by a parabola per axis (an axis whose peak lies
    on the border keeps its integer position), and its value."""
    iy, ix = np.unravel_index(int(np.argmax(c)), c.shape)
    dy = dx = 0.0
    if 0 < iy < c.shape[0] - 1:
        a, b, d = c[iy - 1, ix], c[iy, ix], c[iy + 1, ix]
        den = a - 2 * b + d
        dy = 0.5 * (a - d) / den if den < 0 else 0.0
    if 0 < ix < c.shape[1] - 1:
        a, b, d = c[iy, ix - 1], c[iy, ix], c[iy, ix + 1]
        den = a - 2 * b + d
        dx = 0.5 * (a - d) / den if den < 0 else 0.0
    return iy + dy, ix + dx, float(c[iy, ix])


def _peak(c: np.ndarray) -> Tuple[float, float, float, float]:
    """:func:`subpixel_peak` and its margin over the best value two or more cells away; margin -1
    when the peak lies on the border (the shift may lie outside the window)."""
    n = c.shape[0]
    iy, ix = np.unravel_index(int(np.argmax(c)), c.shape)
    if not (0 < iy < n - 1 and 0 < ix < n - 1):
        return float(iy), float(ix), float(c[iy, ix]), -1.0
    py, px, val = subpixel_peak(c)
    rest = c.copy()
    rest[max(0, iy - 2):iy + 3, max(0, ix - 2):ix + 3] = -np.inf
    return py, px, val, val - float(rest.max())


def block_shifts(vfield: np.ndarray, ifield: np.ndarray, imask: np.ndarray, block: int, stride: int,
                 radius: int, min_cover: float = 0.8) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Local shifts of the infrared field against the visible one (same grid): for every block of
    ``block`` pixels on a ``stride`` grid, the correlation peak within ``radius`` pixels.
    Returns block centres (x, y), the centres moved by the peaks (visible coordinates), and per
    block (peak value, margin over the runner-up)."""
    h, w = vfield.shape
    n = 2 * radius + 1
    size = cv2.getOptimalDFTSize(block + 2 * radius)
    ii = cv2.integral((np.abs(vfield) ** 2).astype(np.float64))
    cells = []
    for y0 in range(radius, h - block - radius + 1, stride):
        for x0 in range(radius, w - block - radius + 1, stride):
            if imask[y0:y0 + block, x0:x0 + block].mean() < min_cover:
                continue
            ie = float(np.sqrt(np.sum(np.abs(ifield[y0:y0 + block, x0:x0 + block]) ** 2)))
            if ie >= 1e-3 * block:
                cells.append((y0, x0, ie))
    src, dst, quality = [], [], []
    for start in range(0, len(cells), 64):  # the FFTs batched, 64 blocks at a time
        batch = cells[start:start + 64]
        ib = np.stack([ifield[y0:y0 + block, x0:x0 + block] for y0, x0, _ in batch])
        vb = np.stack([vfield[y0 - radius:y0 + block + radius, x0 - radius:x0 + block + radius]
                       for y0, x0, _ in batch])
        spec = sfft.fft2(vb, s=(size, size)) * np.conj(sfft.fft2(ib, s=(size, size)))
        corr = sfft.ifft2(spec).real[:, :n, :n]
        for (y0, x0, ie), c in zip(batch, corr):
            c = c / (ie * _window_energy(ii, y0 - radius, x0 - radius, block, n))
            py, px, val, margin = _peak(c)
            if margin <= 0:
                continue
            cy, cx = y0 + (block - 1) / 2, x0 + (block - 1) / 2
            src.append((cx, cy))
            dst.append((cx + px - radius, cy + py - radius))
            quality.append((val, margin))
    return (np.array(src, np.float64).reshape(-1, 2), np.array(dst, np.float64).reshape(-1, 2),
            np.array(quality, np.float64).reshape(-1, 2))


def parallax_direction(h: np.ndarray, k1: float, src: np.ndarray, dst: np.ndarray, size: Tuple[int, int],
                       scale: float) -> Tuple[Optional[np.ndarray], float]:
    """The direction along which the residuals of ``D(H x)`` stretch, and how much: the principal
    axis (unit vector) of the Cauchy-weighted second moments of the residuals within 4 ``scale``
    pixels, and the ratio of the two moments (1: round, no direction; parallax along a baseline:
    2 and more). ``(None, 1.0)`` with fewer than 10 such residuals."""
    r = dst - T.map_points(h, src, size, k1)
    e = np.linalg.norm(r, axis=1)
    near = e < 4 * scale
    if near.sum() < 10:
        return None, 1.0
    w = 1 / (1 + (e[near] / scale) ** 2)
    moments = np.einsum('n,ni,nj->ij', w, r[near], r[near]) / w.sum()
    values, vectors = np.linalg.eigh(moments)
    return vectors[:, 1], float(values[1] / max(values[0], 1e-12))


def along_weight(anisotropy: float, weight: float, ramp: Tuple[float, float]) -> float:
    """The weight of the along-direction residuals: 1 up to ``ramp[0]`` anisotropy (no clear
    direction), ``weight`` from ``ramp[1]`` on, linear between, so that the fit changes smoothly
    with the evidence instead of switching at a threshold."""
    lo, hi = ramp
    t = float(np.clip((anisotropy - lo) / max(hi - lo, 1e-9), 0.0, 1.0))
    return 1.0 - t * (1.0 - weight)


def fit_robust(src: np.ndarray, dst: np.ndarray, model: str, threshold: float) -> Tuple[np.ndarray, np.ndarray]:
    """(H, inlier mask) by MAGSAC++ then least squares on its inliers; (None, mask) when too few."""
    need = 4 if model == 'homography' else 3
    if len(src) < need + 2:
        return None, np.zeros(len(src), bool)
    s32, d32 = src.astype(np.float32), dst.astype(np.float32)
    if model == 'homography':
        h, inl = cv2.findHomography(s32, d32, cv2.USAC_MAGSAC, threshold, maxIters=2000, confidence=0.999)
    else:
        a, inl = cv2.estimateAffine2D(s32, d32, method=cv2.USAC_MAGSAC, ransacReprojThreshold=threshold,
                                      maxIters=2000, confidence=0.999)
        h = None if a is None else np.vstack([a, [0, 0, 1]])
    if h is None or inl is None:
        return None, np.zeros(len(src), bool)
    inl = inl.ravel().astype(bool)
    if inl.sum() < need + 2:
        return None, inl
    if model == 'homography':
        h, _ = cv2.findHomography(s32[inl], d32[inl], 0)
    else:
        a, _ = cv2.estimateAffine2D(s32[inl], d32[inl], method=cv2.LMEDS)
        h = None if a is None else np.vstack([a, [0, 0, 1]])
    if h is None:
        return None, inl
    return T.normalize(h.astype(np.float64)), inl


def _jacobian(h: np.ndarray, pts: np.ndarray, n_par: int) -> Tuple[np.ndarray, np.ndarray]:
    """Projected points and d(projection)/d(first ``n_par`` entries of H, row-major, H[2,2] = 1)."""
    x, y = pts[:, 0], pts[:, 1]
    den = h[2, 0] * x + h[2, 1] * y + 1.0
    u = (h[0, 0] * x + h[0, 1] * y + h[0, 2]) / den
    v = (h[1, 0] * x + h[1, 1] * y + h[1, 2]) / den
    z = np.zeros_like(x)
    ju = [x / den, y / den, 1 / den, z, z, z, -u * x / den, -u * y / den]
    jv = [z, z, z, x / den, y / den, 1 / den, -v * x / den, -v * y / den]
    j = np.stack([np.stack(ju[:n_par], 1), np.stack(jv[:n_par], 1)], 1)  # N x 2 x n_par
    return np.stack([u, v], 1), j


def fit_irls(h: np.ndarray, src: np.ndarray, dst: np.ndarray, model: str, scale: float, iters: int = 10,
             radial_size: Optional[Tuple[int, int]] = None, k1: float = 0.0,
             along: Optional[Tuple[np.ndarray, float]] = None) -> Tuple[np.ndarray, float]:
    """M-estimate of ``D(H x)`` from ``h`` (and ``k1``): Gauss-Newton with Cauchy weights of scale
    ``scale`` (pixels), so that every correspondence counts, a far one little. With
    ``radial_size`` (the visible frame, :func:`fusion.registration.transforms.distort`) the lens
    term ``k1`` is fitted too; without, it stays as given. With ``along = (u, w)`` the residuals'
    component along the unit vector ``u`` counts with weight ``w`` (of its square), the component
    across it fully (parallax, :func:`parallax_direction`). Returns ``(H, k1)``."""
    if radial_size is None and k1:
        raise ValueError('fit_irls: a lens term k1 needs its frame, radial_size')
    n_par = 8 if model == 'homography' else 6
    n_all = n_par + (radial_size is not None)
    h = T.normalize(h.copy())
    if n_par == 6:
        h[2, :2] = 0
    # centre and scale the coordinates so the normal equations are well conditioned (a similarity:
    # the lens term keeps its k1 in the normalised frame)
    m = np.r_[src, dst].mean(0)
    f = np.abs(np.r_[src, dst] - m).mean() + 1e-9
    n = np.array([[1 / f, 0, -m[0] / f], [0, 1 / f, -m[1] / f], [0, 0, 1]])
    g = T.normalize(n @ h @ np.linalg.inv(n))
    # without a lens term (k1 = 0, not fitted) D is the identity in any frame
    centre, radius = T.radial_frame(radial_size or (1, 1))
    centre, radius = (centre - m) / f, radius / f
    s_n, d_n = T.apply(n, src), T.apply(n, dst)
    # the square root of the residual weighting (the normalisation is a similarity: u unchanged)
    root = None if along is None else np.eye(2) - (1 - np.sqrt(along[1])) * np.outer(along[0], along[0])
    for _ in range(iters):
        p, j = _jacobian(g, s_n, n_par)
        d = p - centre
        rho2 = np.sum(d ** 2, axis=1) / radius ** 2
        # D'(p) = (1 + k rho^2) I + 2 k / R^2 d d^T, chained onto dp/dH; dD/dk = d rho^2
        jac = (1 + k1 * rho2)[:, None, None] * j + (2 * k1 / radius ** 2) * d[:, :, None] * np.einsum(
            'nk,nki->ni', d, j)[:, None, :]
        if n_all > n_par:
            jac = np.concatenate([jac, (d * rho2[:, None])[:, :, None]], axis=2)
        r = d_n - (centre + d * (1 + k1 * rho2)[:, None])
        if root is not None:
            r, jac = r @ root.T, np.einsum('ij,njk->nik', root, jac)
        e = np.linalg.norm(r, axis=1) * f
        w = 1 / (1 + (e / scale) ** 2)
        a = np.einsum('n,nki,nkj->ij', w, jac, jac)
        b = np.einsum('n,nki,nk->i', w, jac, r)
        try:
            step = np.linalg.solve(a + 1e-9 * np.trace(a) * np.eye(n_all), b)
        except np.linalg.LinAlgError:
            break
        g.flat[:n_par] += step[:n_par]
        if n_all > n_par:
            k1 += float(step[n_par])
        if np.abs(step).max() < 1e-7:
            break
    return T.normalize(np.linalg.inv(n) @ g @ n), float(k1)


def corner_spread(h: np.ndarray, k1: float, src: np.ndarray, dst: np.ndarray, model: str, scale: float,
                  size: Tuple[int, int], radial: bool, cells: int = 3,
                  along: Optional[Tuple[np.ndarray, float]] = None) -> float:
    """How much the fitted transform at the visible frame's corners depends on which part of the
    image is seen: a spatial jackknife. The correspondences (infrared ``src`` -> visible ``dst``,
    a ``size`` frame) are split by visible position into ``cells`` x ``cells`` groups; the fit of
    ``D(H x)`` is repeated without each group in turn, and the largest mean corner move (pixels) is
    returned. A real scene that the model describes only in part (parallax) gives a fit whose
    corners swing when a region is left out, and such an estimate cannot be trusted at the corners
    however well it scores. Infinite when one group holds so many blocks that the rest cannot be
    fitted. ``along``: the fit's parallax weighting (:func:`fit_irls`)."""
    hh, ww = size
    gx = np.clip((dst[:, 0] / ww * cells).astype(int), 0, cells - 1)
    gy = np.clip((dst[:, 1] / hh * cells).astype(int), 0, cells - 1)
    group = gy * cells + gx
    need = (4 if model == 'homography' else 3) + radial
    worst = 0.0
    for k in np.unique(group):
        keep = group != k
        if keep.sum() < need + 2:
            return float('inf')
        h_k, k_k = fit_irls(h, src[keep], dst[keep], model, scale, radial_size=size if radial else None, k1=k1,
                            along=along)
        worst = max(worst, T.corner_error(h_k, h, size, k_k, k1))
    return worst


def block_refine(pair, h_full: np.ndarray, model: str, passes: Sequence[Tuple[int, int, int, int, float]],
                 min_margin: float = 0.02, radial: bool = True, max_k1: float = 0.15,
                 min_radial_blocks: int = 24, parallax_weight: float = 1.0,
                 parallax_ramp: Tuple[float, float] = (1.2, 4.0)) -> Tuple[np.ndarray, float, dict]:
    """Refines ``h_full`` (infrared -> visible, full resolution) by passes of (visible long side,
    block, stride, radius, inlier threshold), all in level pixels; ``pair`` is the estimate's
    ``_Pair``. Each pass warps the infrared image by the current transform, measures block shifts
    (those with a peak margin of at least ``min_margin``), turns them into infrared -> visible
    correspondences at full resolution, takes MAGSAC++'s inliers, then fits ``D(H x)`` by a Cauchy
    M-estimate over all of them (scale: the threshold), so that which blocks a crop removes changes
    the fit little. With ``radial`` the lens term ``k1`` is fitted too, where at least
    ``min_radial_blocks`` blocks are inliers (fewer leave it noisy: small images); a fit with
    ``|k1|`` above ``max_k1`` (not a lens the data supports) is replaced by the plain homography.
    With ``parallax_weight`` below 1, a first isotropic fit gives the residuals' direction and
    anisotropy (:func:`parallax_direction`), and the fit is repeated with the along-direction
    residuals weighted by :func:`along_weight` (``parallax_weight`` from ``parallax_ramp[1]`` on).
    Returns the transform, its ``k1`` and the last pass's diagnostics: blocks measured, blocks used, inliers,
    inlier RMS residual (full-resolution pixels), passes run, the corners' spread when one ninth
    of the blocks is left out (:func:`corner_spread`, pixels, capped at 1e6), and the parallax
    direction, anisotropy and along-direction weight."""
    h_cur, k_cur = h_full.copy(), 0.0
    vis_size = pair.vis_size
    info = {'blocks': 0, 'used': 0, 'inliers': 0, 'rms_px': None, 'passes': 0, 'corner_spread_px': None,
            'parallax_direction': None, 'parallax_anisotropy': None, 'parallax_weight': 1.0}
    for long_side, block, stride, radius, thr in passes:
        size, a_vis, vfield, _, _ = pair.vis_level(long_side)
        ifield, _, _, imask = pair.ir_on_vis_level(h_cur, long_side, k1=k_cur)
        src, dst, q = block_shifts(vfield, ifield, imask, block, stride, radius)
        keep = q[:, 1] >= min_margin
        info.update(blocks=int(len(q)), used=int(keep.sum()), inliers=0)
        # full-resolution correspondences: infrared points under the current warp -> visible points
        to_full = np.linalg.inv(a_vis)
        dst_full = T.apply(to_full, dst[keep])
        src_ir = T.unmap_points(h_cur, T.apply(to_full, src[keep]), vis_size, k_cur)
        thr_full = thr * max(vis_size) / max(size)
        # the inliers of a homography in the current lens term's undistorted frame
        g, inl = fit_robust(src_ir, T.undistort(dst_full, k_cur, vis_size), model, thr_full)
        if g is None:
            break
        lens = radial and inl.sum() >= min_radial_blocks
        frame, k_start = (vis_size, k_cur) if lens else (None, 0.0)
        h_new, k_new = fit_irls(g, src_ir, dst_full, model, thr_full, radial_size=frame, k1=k_start)
        along = None
        if parallax_weight < 1:
            u, anisotropy = parallax_direction(h_new, k_new, src_ir, dst_full, vis_size, thr_full)
            w = along_weight(anisotropy, parallax_weight, parallax_ramp) if u is not None else 1.0
            info.update(parallax_direction=None if u is None else [round(float(c), 3) for c in u],
                        parallax_anisotropy=round(anisotropy, 2), parallax_weight=round(w, 3))
            if w < 1:
                along = (u, w)
                h_new, k_new = fit_irls(g, src_ir, dst_full, model, thr_full, radial_size=frame, k1=k_start,
                                        along=along)
        if abs(k_new) > max_k1:
            h_new, k_new = fit_irls(g, src_ir, dst_full, model, thr_full, along=along)
        h_cur, k_cur = h_new, k_new
        res = np.linalg.norm(T.map_points(h_cur, src_ir[inl], vis_size, k_cur) - dst_full[inl], axis=1)
        info.update(inliers=int(inl.sum()), rms_px=round(float(np.sqrt(np.mean(res ** 2))), 3),
                    passes=info['passes'] + 1)
        last = (src_ir, dst_full, thr_full, along)
    if info['passes']:
        src_ir, dst_full, thr_full, along = last
        spread = corner_spread(h_cur, k_cur, src_ir, dst_full, model, thr_full, vis_size, radial and k_cur != 0,
                               along=along)
        info['corner_spread_px'] = round(min(spread, 1e6), 3)
    return h_cur, k_cur, info
