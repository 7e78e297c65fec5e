"""MEF-SSIM and its multi-scale form (Ma, Zeng & Wang, "Perceptual quality assessment for
multi-exposure image fusion", IEEE TIP 24(11), 2015), the "SSIM"/"MS_SSIM" of Tang's IVIF
evaluation suite.

Written from the published definition (and the description in the project's metric reference notes), in
closed form: every per-patch quantity of the definition is a linear combination of local moments,
so the whole map is computed with a handful of separable box and Gaussian filters instead of a loop
over 11 x 11 patches. Definition, per 11 x 11 patch of the K sources x_k and of the fused image y:

* x~_k = x_k - mean(x_k); contrast c_k = ||x~_k|| + 0.001 (the 0.001 of the reference code);
* structure consistency R = ||sum_k x~_k|| / sum_k ||x~_k|| (+eps in both), p = tan(pi R / 2) <= 10;
* weights w_k = (c_k / 11)^p + eps, normalised; desired patch r = max_k c_k * s / ||s|| with
  s = sum_k w_k x~_k / c_k (r = s when s = 0);
* q = (2 sigma_ry + C) / (sigma_r^2 + sigma_y^2 + C), Gaussian window 11 x 11, sigma 1.5,
  C = (0.03 * 255)^2; MEF-SSIM = mean of q over the valid patches.

Multi-scale: 3 levels; between levels every image is averaged over 2 x 2 blocks anchored at the top
left (last row/column repeated) and decimated by 2; MS = prod_l Q_l^(beta_l) with
beta = (0.0448, 0.2856, 0.3001) / 0.6305.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from fusion.metrics.metric_util import box_sum_valid, gaussian_kernel_1d, valid_correlate


__all__ = ['mef_ssim', 'mef_ms_ssim', 'MS_SSIM_WEIGHTS']

_WIN = 11
_EPS = float(np.finfo(np.float64).eps)
MS_SSIM_WEIGHTS = np.array([0.0448, 0.2856, 0.3001]) / (0.0448 + 0.2856 + 0.3001)


def _centre(img: np.ndarray) -> np.ndarray:
    # MEF-SSIM only uses local (co)variances and differences of local means, so a constant shift
    # changes nothing mathematically; removing the (rounded) mean keeps the moment sums small and,
    # for integer images, exact
    return img - np.round(img.mean())


def mef_ssim(fused: np.ndarray, sources: Sequence[np.ndarray], k: float = 0.03) -> float:
    """MEF-SSIM of ``fused`` against the source sequence (2-D float arrays, 0-255)."""
    y = _centre(np.asarray(fused, dtype=np.float64))
    xs = [_centre(np.asarray(s, dtype=np.float64)) for s in sources]
    n = float(_WIN * _WIN)
    gauss = gaussian_kernel_1d(_WIN, 1.5)

    # box moments: sums over each 11x11 patch (exact for integer data)
    box_sum = [box_sum_valid(x, _WIN) for x in xs]
    box_cross = {}  # <x~_k, x~_l> = sum x_k x_l - sum x_k sum x_l / n
    for i in range(len(xs)):
        for j in range(i, len(xs)):
            box_cross[i, j] = box_sum_valid(xs[i] * xs[j], _WIN) - box_sum[i] * box_sum[j] / n
    norms = [np.sqrt(np.maximum(box_cross[i, i], 0.0)) for i in range(len(xs))]
    contrast = [nrm + 0.001 for nrm in norms]

    # structure consistency: ||sum_k x~_k||^2 = sum_kl <x~_k, x~_l>
    sum_sq = sum(box_cross[i, i] for i in range(len(xs))) + 2.0 * sum(
        box_cross[i, j] for (i, j) in box_cross if i != j)
    numerator = np.sqrt(np.maximum(sum_sq, 0.0))
    denominator = sum(norms)
    consistency = (numerator + _EPS) / (denominator + _EPS)
    consistency[consistency > 1] = 1 - _EPS
    consistency[consistency < 0] = _EPS
    power = np.minimum(np.tan(math.pi / 2 * consistency), 10.0)

    weights = [(c / _WIN) ** power + _EPS for c in contrast]
    total = sum(weights)
    # s = sum_k coef_k x~_k with coef_k = w_k / c_k; its norm from the box cross products
    coef = [w / total / c for w, c in zip(weights, contrast)]
    s_norm_sq = sum(coef[i] * coef[j] * box_cross[i, j] * (1.0 if i == j else 2.0) for (i, j) in box_cross)
    s_norm = np.sqrt(np.maximum(s_norm_sq, 0.0))
    max_contrast = np.maximum.reduce(contrast)
    scale = np.where(s_norm > 0, max_contrast / np.where(s_norm > 0, s_norm, 1.0), 1.0)

    # Gaussian moments of r = scale * sum_k coef_k (x_k - box mean_k) and of y over the same patch
    g_x = [valid_correlate(x, gauss) for x in xs]
    g_y = valid_correlate(y, gauss)
    g_yy = valid_correlate(y * y, gauss) - g_y * g_y
    var_r = np.zeros_like(g_y)
    cov_ry = np.zeros_like(g_y)
    for i in range(len(xs)):
        cov_ry += coef[i] * (valid_correlate(xs[i] * y, gauss) - g_x[i] * g_y)
        for j in range(i, len(xs)):
            cov_ij = valid_correlate(xs[i] * xs[j], gauss) - g_x[i] * g_x[j]
            var_r += coef[i] * coef[j] * cov_ij * (1.0 if i == j else 2.0)
    var_r *= scale * scale
    cov_ry *= scale
    c = (k * 255.0) ** 2
    q_map = (2.0 * cov_ry + c) / (var_r + g_yy + c)
    return float(q_map.mean())


def _halve(img: np.ndarray) -> np.ndarray:
    """2x2 mean anchored at the top-left pixel (the last row/column repeats itself), then keep every
    second row and column starting with the first."""
    padded = np.pad(img, ((0, 1), (0, 1)), mode='edge')
    avg = (padded[:-1, :-1] + padded[1:, :-1] + padded[:-1, 1:] + padded[1:, 1:]) / 4.0
    return avg[::2, ::2]


def mef_ms_ssim(fused: np.ndarray, sources: Sequence[np.ndarray], k: float = 0.03) -> float:
    """Three-scale MEF-SSIM. Raises ValueError when the image is too small for 3 scales (min side
    < 44); NaN when a scale's score is negative (its fractional power is undefined)."""
    y = np.asarray(fused, dtype=np.float64)
    xs = [np.asarray(s, dtype=np.float64) for s in sources]
    levels = len(MS_SSIM_WEIGHTS)
    if min(y.shape) / 2 ** (levels - 1) < _WIN:
        raise ValueError(f'MS-SSIM needs images of at least {_WIN * 2 ** (levels - 1)}x{_WIN * 2 ** (levels - 1)} '
                         f'pixels ({levels} scales, {_WIN}x{_WIN} window), got {y.shape[1]}x{y.shape[0]}')
    scores = []
    for level in range(levels):
        if level:
            y = _halve(y)
            xs = [_halve(x) for x in xs]
        scores.append(mef_ssim(y, xs, k))
    scores = np.array(scores)
    if np.any(scores < 0):
        return float('nan')
    return float(np.prod(scores ** MS_SSIM_WEIGHTS))
