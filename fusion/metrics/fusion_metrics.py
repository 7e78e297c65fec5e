"""Infrared-visible fusion quality metrics: pure functions plus their ``METRIC_REGISTRY`` entries.

Conventions (see docs/metrics.md for the full table and the reference each follows):

* Inputs: fused F, infrared A and visible B; any form :func:`fusion.metrics.metric_util.to_metric_gray`
  accepts (0-255 grey float, uint8/uint16, RGB colour converted with OpenCV's weights).
* Definitions follow the CDDFuse ``utils/Evaluator.py`` (the main reference of the project's
  metric reference notes, METRICS.md) for every metric it has: EN, SD, SF, AG, MI (nats), SCD,
  VIF(F), Qabf, SSIM (sum of two), PSNR (peak = max F), CC. The metrics CDDFuse lacks follow the
  Tang evaluation suite as documented there: MS-SSIM is the MEF-MS-SSIM of Ma et al. (2015), Nabf is
  the literature form of Shreyamsha Kumar's modified artefact measure on 0-255 data, FMI is
  Haghighat's fast-FMI (pixel feature by default).
* Everything is computed in float64 and vectorised (numpy, OpenCV float64 filters).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import cv2
import numpy as np
from basicsr.utils.registry import METRIC_REGISTRY

from fusion.metrics.fmi import feature_mutual_information
from fusion.metrics.mef_ssim import mef_ms_ssim, mef_ssim
from fusion.metrics.metric_util import (gaussian_kernel_1d, prepare_triple, quantize_8bit, to_metric_gray,
                                        valid_correlate, vif_scale_information)


__all__ = [
    'entropy', 'standard_deviation', 'spatial_frequency', 'average_gradient', 'mutual_information',
    'sum_of_correlations_of_differences', 'visual_information_fidelity', 'qabf', 'nabf', 'fusion_ssim',
    'fusion_ms_ssim', 'fusion_psnr', 'correlation_coefficient', 'fmi', 'mef_ssim_metric',
    'MetricSpec', 'METRICS', 'EXTRA_METRICS', 'ALL_METRICS', 'DEFAULT_METRICS', 'compute_all_metrics',
    'resolve_metric_names',
]


# ----------------------------------------------------------------------------------------------
# Metrics of the fused image alone
# ----------------------------------------------------------------------------------------------

def entropy(fused: Any) -> float:
    """EN: Shannon entropy (bits) of the 256-level grey histogram of F (values rounded, clipped)."""
    f = quantize_8bit(to_metric_gray(fused, 'fused image'))
    counts = np.bincount(f.ravel(), minlength=256)
    p = counts[counts > 0] / f.size
    return float(-(p * np.log2(p)).sum())


def standard_deviation(fused: Any) -> float:
    """SD: population standard deviation of F (0-255)."""
    return float(np.std(to_metric_gray(fused, 'fused image')))


def spatial_frequency(fused: Any) -> float:
    """SF = sqrt(RF^2 + CF^2), each the mean squared first difference along one axis (no padding)."""
    f = to_metric_gray(fused, 'fused image')
    if min(f.shape) < 2:
        raise ValueError(f'SF needs an image of at least 2x2 pixels, got {f.shape[1]}x{f.shape[0]}')
    rf2 = np.mean(np.diff(f, axis=0) ** 2)  # '** 2' on a temporary is done in place (no new array)
    cf2 = np.mean(np.diff(f, axis=1) ** 2)
    return float(np.sqrt(rf2 + cf2))


def average_gradient(fused: Any) -> float:
    """AG = mean over all H*W pixels of sqrt((Gx^2 + Gy^2) / 2), G = ``np.gradient`` (central
    differences inside, one-sided on the border). CDDFuse divides by H*W; Tang's MATLAB suite by
    (H-1)(W-1), which is ~0.4 % larger at 640x480."""
    f = to_metric_gray(fused, 'fused image')
    if min(f.shape) < 2:
        raise ValueError(f'AG needs an image of at least 2x2 pixels, got {f.shape[1]}x{f.shape[0]}')
    gy, gx = np.gradient(f)
    return float(np.mean(np.sqrt((gx * gx + gy * gy) / 2.0)))


# ----------------------------------------------------------------------------------------------
# Metrics of the fused image against the two sources
# ----------------------------------------------------------------------------------------------

def _mutual_information_nats(x: np.ndarray, y: np.ndarray) -> float:
    """MI (natural log) of two integer images from their 256 x 256 joint histogram; the same value as
    ``sklearn.metrics.mutual_info_score`` on the flattened arrays, in O(N + 256^2)."""
    joint = np.bincount((x * 256 + y).ravel(), minlength=256 * 256).reshape(256, 256)
    n = float(x.size)
    nx = joint.sum(axis=1)
    ny = joint.sum(axis=0)
    i, j = np.nonzero(joint)
    nij = joint[i, j].astype(np.float64)
    # sum_ij p_ij * log(p_ij / (p_i p_j)) written with counts to keep the logs of large numbers exact
    log_ratio = np.log(nij) + math.log(n) - np.log(nx[i].astype(np.float64)) - np.log(ny[j].astype(np.float64))
    mi = np.sum(nij / n * log_ratio)
    return float(max(mi, 0.0))


def mutual_information(fused: Any, ir: Any, vis: Any) -> float:
    """MI = MI(F, A) + MI(F, B) in **nats** (CDDFuse / sklearn); multiply by 1/ln 2 = 1.4427 for the
    bits of MATLAB suites. Values are rounded to 256 grey levels first."""
    f, a, b = (quantize_8bit(x) for x in prepare_triple(fused, ir, vis))
    return _mutual_information_nats(f, a) + _mutual_information_nats(f, b)


def _dot(x: np.ndarray, y: np.ndarray) -> float:
    # einsum: single-threaded SIMD loop without a temporary; np.dot goes to a multi-threaded BLAS that
    # was 50x slower on the shared 2-core machine
    return float(np.einsum('i,i->', x, y))


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    xc = (x - x.mean()).ravel()
    yc = (y - y.mean()).ravel()
    denom = math.sqrt(_dot(xc, xc) * _dot(yc, yc))
    if denom == 0.0:  # a constant image: the correlation is undefined (the references give NaN)
        return float('nan')
    return _dot(xc, yc) / denom


def sum_of_correlations_of_differences(fused: Any, ir: Any, vis: Any) -> float:
    """SCD = corr(F - B, A) + corr(F - A, B) (Aslantas & Bendes 2015). NaN when F - A or F - B is
    constant (e.g. F == A)."""
    f, a, b = prepare_triple(fused, ir, vis)
    return _pearson(a, f - b) + _pearson(b, f - a)


def correlation_coefficient(fused: Any, ir: Any, vis: Any) -> float:
    """CC = (r(A, F) + r(B, F)) / 2 with Pearson's r over all pixels."""
    f, a, b = prepare_triple(fused, ir, vis)
    return (_pearson(a, f) + _pearson(b, f)) / 2.0


def fusion_psnr(fused: Any, ir: Any, vis: Any, peak: Optional[float] = None) -> float:
    """PSNR = 10 log10(peak^2 / MSE), MSE = (mean((A-F)^2) + mean((B-F)^2)) / 2 on 0-255.
    CDDFuse uses peak = max(F) (the default here); pass ``peak=255`` for the conventional value."""
    f, a, b = prepare_triple(fused, ir, vis)
    mse = (np.mean((a - f) ** 2) + np.mean((b - f) ** 2)) / 2.0
    top = float(f.max()) if peak is None else float(peak)
    if mse == 0.0:
        return float('inf')
    with np.errstate(divide='ignore'):
        return float(10.0 * np.log10(top * top / mse))


# --- VIF -------------------------------------------------------------------------------------

def _vif_ratios(refs: Sequence[np.ndarray], dist: np.ndarray) -> List[float]:
    """Pixel-domain multiscale VIF (Sheikh & Bovik ``vifp_mscale``) of ``dist`` against each reference;
    the statistics of ``dist`` are computed once for all references."""
    nums = [0.0] * len(refs)
    dens = [0.0] * len(refs)
    refs = list(refs)
    for scale in range(1, 5):
        n = 2 ** (4 - scale + 1) + 1  # 17, 9, 5, 3
        win = gaussian_kernel_1d(n, n / 5.0)
        if scale > 1:
            refs = [valid_correlate(r, win)[::2, ::2] for r in refs]
            dist = valid_correlate(dist, win)[::2, ::2]
        mu2 = valid_correlate(dist, win)
        sigma2_sq = valid_correlate(dist * dist, win) - mu2 * mu2
        np.maximum(sigma2_sq, 0.0, out=sigma2_sq)
        for idx, ref in enumerate(refs):
            mu1 = valid_correlate(ref, win)
            sigma1_sq = valid_correlate(ref * ref, win) - mu1 * mu1
            sigma12 = valid_correlate(ref * dist, win) - mu1 * mu2
            np.maximum(sigma1_sq, 0.0, out=sigma1_sq)
            num, den = vif_scale_information(sigma1_sq, sigma2_sq, sigma12)
            nums[idx] += num
            dens[idx] += den
    ratios = []
    for num, den in zip(nums, dens):
        ratio = num / den if den != 0.0 else float('nan')
        # CDDFuse returns 1.0 when the ratio is undefined (flat reference); kept for comparability
        ratios.append(1.0 if math.isnan(ratio) else ratio)
    return ratios


def visual_information_fidelity(fused: Any, ir: Any, vis: Any) -> float:
    """VIF (VIFF in CDDFuse) = VIF(A, F) + VIF(B, F): pixel-domain multiscale VIF, 4 scales, Gaussian
    windows 17/9/5/3 (sigma = N/5), sigma_n^2 = 2, each source as the reference."""
    f, a, b = prepare_triple(fused, ir, vis)
    if min(f.shape) < 41:
        raise ValueError(f'VIF needs images of at least 41x41 pixels (4 scales), got {f.shape[1]}x{f.shape[0]}')
    return float(sum(_vif_ratios((a, b), f)))


# --- Qabf and Nabf ---------------------------------------------------------------------------

def _sobel_conv_same(img: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Sobel responses by true convolution, 'same' size, zero padding (``convolve2d(.., 'same')``)
    with Sx = [-1 0 1; -2 0 2; -1 0 1] and Sy = [1 2 1; 0 0 0; -1 -2 -1] as CDDFuse's Qabf."""
    p = np.pad(img, 1)
    # convolution flips the kernel: Sx(i,j) = sum_k,l K(k,l) p(i+2-k, j+2-l)
    left, centre, right = p[:, :-2], p[:, 1:-1], p[:, 2:]
    horiz_diff = left - right  # [-1 0 1] flipped -> x(j-1) - x(j+1)
    smooth_rows = left + 2.0 * centre + right
    sx = horiz_diff[:-2] + 2.0 * horiz_diff[1:-1] + horiz_diff[2:]
    sy = smooth_rows[2:] - smooth_rows[:-2]  # [1 2 1; 0; -1 -2 -1] flipped -> row below minus row above
    return sx, sy


def _qabf_edges(img: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    sx, sy = _sobel_conv_same(img)
    strength = np.sqrt(sx * sx + sy * sy)
    with np.errstate(divide='ignore', invalid='ignore'):
        angle = np.where(sx == 0, math.pi / 2, np.arctan(sy / np.where(sx == 0, 1.0, sx)))
    return strength, angle


def _qabf_preservation(g_src: np.ndarray, a_src: np.ndarray, g_f: np.ndarray, a_f: np.ndarray) -> np.ndarray:
    tg, kg, dg = 0.9994, -15.0, 0.5
    ta, ka, da = 0.9879, -22.0, 0.8
    with np.errstate(divide='ignore', invalid='ignore'):
        # CDDFuse quirk kept on purpose: equal strengths give G = g_F (not 1); both zero give 0
        rel = np.where(g_src > g_f, g_f / g_src, np.where(g_src < g_f, g_src / g_f, g_f))
    orient = 1.0 - np.abs(a_src - a_f) / (math.pi / 2)
    q_g = tg / (1.0 + np.exp(kg * (rel - dg)))
    q_a = ta / (1.0 + np.exp(ka * (orient - da)))
    return q_g * q_a


def qabf(fused: Any, ir: Any, vis: Any) -> float:
    """Qabf (Xydeas & Petrovic): edge preservation from A and B into F, weighted by source edge
    strength (L = 1), Sobel by zero-padded convolution, constants Tg .9994, kg -15, Dg .5,
    Ta .9879, ka -22, Da .8 (CDDFuse form, including its tie rule)."""
    f, a, b = prepare_triple(fused, ir, vis)
    g_a, a_a = _qabf_edges(a)
    g_b, a_b = _qabf_edges(b)
    g_f, a_f = _qabf_edges(f)
    q_af = _qabf_preservation(g_a, a_a, g_f, a_f)
    q_bf = _qabf_preservation(g_b, a_b, g_f, a_f)
    denom = float(np.sum(g_a + g_b))
    if denom == 0.0:
        return float('nan')
    return float(np.sum(q_af * g_a + q_bf * g_b) / denom)


_NABF_KERNEL_H = np.array([[-1.0, -2.0, -1.0], [0.0, 0.0, 0.0], [1.0, 2.0, 1.0]]) / 8.0
_NABF_KERNEL_V = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0


def _nabf_edges(img: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    # correlation with the /8 Sobel kernels, border mirrored without repeating the edge pixel
    gh = cv2.filter2D(img, cv2.CV_64F, _NABF_KERNEL_H, borderType=cv2.BORDER_REFLECT_101)
    gv = cv2.filter2D(img, cv2.CV_64F, _NABF_KERNEL_V, borderType=cv2.BORDER_REFLECT_101)
    strength = np.sqrt(gh * gh + gv * gv)
    with np.errstate(divide='ignore', invalid='ignore'):
        angle = np.where((gh == 0) & (gv == 0), 0.0, np.arctan(gv / gh))
    return strength, angle


def _nabf_preservation(g_src: np.ndarray, a_src: np.ndarray, g_f: np.ndarray, a_f: np.ndarray) -> np.ndarray:
    with np.errstate(divide='ignore', invalid='ignore'):
        rel = np.where((g_src == 0) | (g_f == 0), 0.0, np.minimum(g_src, g_f) / np.maximum(g_src, g_f))
    orient = np.abs(np.abs(a_src - a_f) - math.pi / 2) * 2.0 / math.pi
    q_g = 0.9999 / (1.0 + np.exp(-19.0 * (rel - 0.5)))
    q_a = 0.9995 / (1.0 + np.exp(-22.0 * (orient - 0.5)))
    return np.sqrt(q_g * q_a)


def nabf(fused: Any, ir: Any, vis: Any) -> float:
    """Nabf (Shreyamsha Kumar's modified fusion-artefact measure) on 0-255 data, F first:
    Sum over pixels where g_F exceeds both g_A and g_B of (1-Q^AF) w_A + (1-Q^BF) w_B, divided by
    Sum (w_A + w_B), with w = g^1.5 where g >= 2 else 0.001. Lower is better."""
    f, a, b = prepare_triple(fused, ir, vis)
    g_a, a_a = _nabf_edges(a)
    g_b, a_b = _nabf_edges(b)
    g_f, a_f = _nabf_edges(f)
    q_af = _nabf_preservation(g_a, a_a, g_f, a_f)
    q_bf = _nabf_preservation(g_b, a_b, g_f, a_f)
    w_a = np.where(g_a >= 2.0, g_a ** 1.5, 0.001)
    w_b = np.where(g_b >= 2.0, g_b ** 1.5, 0.001)
    artefact = (g_f > g_a) & (g_f > g_b)
    num = float(np.sum(np.where(artefact, (1.0 - q_af) * w_a + (1.0 - q_bf) * w_b, 0.0)))
    return num / float(np.sum(w_a + w_b))


# --- SSIM family ------------------------------------------------------------------------------

def _box7(img: np.ndarray) -> np.ndarray:
    # scipy.ndimage.uniform_filter(img, 7) (reflect border, edge pixel repeated), via OpenCV: faster
    return cv2.boxFilter(img, cv2.CV_64F, (7, 7), borderType=cv2.BORDER_REFLECT)


def _ssim_uniform7(x: np.ndarray, y: np.ndarray, data_range: float,
                   x_moments: Optional[Tuple[np.ndarray, np.ndarray]] = None) -> float:
    """SSIM as scikit-image's ``structural_similarity`` defaults: 7x7 uniform window (reflect
    border), sample covariances (49/48), K1 .01, K2 .03, mean over the map without a 3-pixel border.
    ``x_moments`` = (mean, mean of squares) of x, to share them between the two sources."""
    win = 7
    if min(x.shape) < win:
        raise ValueError(f'SSIM needs images of at least 7x7 pixels, got {x.shape[1]}x{x.shape[0]}')
    cov_norm = win * win / (win * win - 1.0)
    ux, uxx = x_moments if x_moments is not None else (_box7(x), _box7(x * x))
    uy = _box7(y)
    uyy = _box7(y * y)
    uxy = _box7(x * y)
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    pad = (win - 1) // 2
    return float(s[pad:-pad, pad:-pad].mean())


def fusion_ssim(fused: Any, ir: Any, vis: Any, data_range: float = 2.0) -> float:
    """SSIM = SSIM(F, A) + SSIM(F, B) (a sum, up to 2), scikit-image form. ``data_range`` defaults to
    2.0, what CDDFuse's pinned scikit-image 0.19.2 used for float input (so the constants are almost 0);
    ``data_range=255`` gives the conventional, much higher values, not comparable with papers."""
    f, a, b = prepare_triple(fused, ir, vis)
    f_moments = (_box7(f), _box7(f * f))
    return _ssim_uniform7(f, a, data_range, f_moments) + _ssim_uniform7(f, b, data_range, f_moments)


def fusion_ms_ssim(fused: Any, ir: Any, vis: Any) -> float:
    """MS-SSIM as in the Tang evaluation suite: MEF-MS-SSIM (Ma, Zeng & Wang 2015) of F against the
    pair {A, B}, 3 scales, weights (.0448, .2856, .3001)/.6305, K = .03. Needs at least 44 x 44 pixels."""
    f, a, b = prepare_triple(fused, ir, vis)
    return mef_ms_ssim(f, (a, b))


def mef_ssim_metric(fused: Any, ir: Any, vis: Any) -> float:
    """Single-scale MEF-SSIM (the "SSIM" of Tang's SeAFusion suite): one value in [-1, 1]."""
    f, a, b = prepare_triple(fused, ir, vis)
    return mef_ssim(f, (a, b))


def fmi(fused: Any, ir: Any, vis: Any, feature: str = 'none', window: int = 3) -> float:
    """FMI (Haghighat fast-FMI): mean over all 3x3 windows of (FMI_AF + FMI_BF) / 2. ``feature``:
    'none' (raw pixels, the default) or 'dct'. Heavy: ~O(81 N)."""
    f, a, b = prepare_triple(fused, ir, vis)
    return feature_mutual_information(f, a, b, feature=feature, window=window)


# ----------------------------------------------------------------------------------------------
# Metric table, batch computation
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class MetricSpec:
    """One metric: its README name, the function (fused, ir, vis) -> float, which direction is better,
    the registered basicsr name (the YAML ``type:``), a one-line definition and its cost class."""
    name: str
    func: Callable[..., float]
    better: str  # 'higher' or 'lower'
    registry_name: str
    definition: str
    reference: str
    heavy: bool = False
    needs_sources: bool = True

    def __call__(self, fused: Any, ir: Any, vis: Any, **options: Any) -> float:
        if self.needs_sources:
            return self.func(fused, ir, vis, **options)
        return self.func(fused, **options)


METRICS: Dict[str, MetricSpec] = {spec.name: spec for spec in [
    MetricSpec('en', entropy, 'higher', 'calculate_en', 'entropy of the 256-bin grey histogram of F (bits)',
               'CDDFuse', needs_sources=False),
    MetricSpec('sd', standard_deviation, 'higher', 'calculate_sd', 'population standard deviation of F (0-255)',
               'CDDFuse', needs_sources=False),
    MetricSpec('sf', spatial_frequency, 'higher', 'calculate_sf',
               'sqrt(mean row diff^2 + mean column diff^2) of F', 'CDDFuse', needs_sources=False),
    MetricSpec('ag', average_gradient, 'higher', 'calculate_ag',
               'mean of sqrt((Gx^2+Gy^2)/2), np.gradient, divided by H*W', 'CDDFuse', needs_sources=False),
    MetricSpec('mi', mutual_information, 'higher', 'calculate_mi', 'MI(F,A) + MI(F,B), 256x256 joint histogram, nats',
               'CDDFuse'),
    MetricSpec('scd', sum_of_correlations_of_differences, 'higher', 'calculate_scd',
               'corr(F-B, A) + corr(F-A, B)', 'CDDFuse'),
    MetricSpec('vif', visual_information_fidelity, 'higher', 'calculate_vif',
               'VIF(A,F) + VIF(B,F), pixel-domain 4-scale VIF, sigma_n^2 = 2', 'CDDFuse (VIFF)'),
    MetricSpec('qabf', qabf, 'higher', 'calculate_qabf',
               'Sobel edge strength/orientation preservation from A and B into F, strength-weighted', 'CDDFuse'),
    MetricSpec('nabf', nabf, 'lower', 'calculate_nabf',
               'share of edge strength in F that exceeds both sources (artefacts), weighted g^1.5',
               'Tang suite analysis_nabf, literature form on 0-255'),
    MetricSpec('ssim', fusion_ssim, 'higher', 'calculate_fusion_ssim',
               'SSIM(F,A) + SSIM(F,B), 7x7 uniform window, data_range 2 (scikit-image 0.19 default)', 'CDDFuse'),
    MetricSpec('ms_ssim', fusion_ms_ssim, 'higher', 'calculate_ms_ssim',
               'MEF-MS-SSIM of F against {A, B}, 3 scales', 'Tang suite analysis_ms_ssim (Ma et al. 2015)'),
    MetricSpec('psnr', fusion_psnr, 'higher', 'calculate_fusion_psnr',
               '10 log10(max(F)^2 / MSE), MSE = mean of MSE(A,F) and MSE(B,F)', 'CDDFuse'),
    MetricSpec('cc', correlation_coefficient, 'higher', 'calculate_cc', '(r(A,F) + r(B,F)) / 2, Pearson',
               'CDDFuse'),
    MetricSpec('fmi', fmi, 'higher', 'calculate_fmi',
               'fast-FMI on raw pixels, 3x3 windows, mean of FMI_AF and FMI_BF',
               'Tang suite analysis_fmi(..., "none") (Haghighat & Razian 2014)', heavy=True),
]}

EXTRA_METRICS: Dict[str, MetricSpec] = {spec.name: spec for spec in [
    MetricSpec('mef_ssim', mef_ssim_metric, 'higher', 'calculate_mef_ssim',
               'single-scale MEF-SSIM of F against {A, B} (SeAFusion "SSIM")',
               'Tang suite mef_ssim (Ma et al. 2015)'),
]}

ALL_METRICS: Dict[str, MetricSpec] = {**METRICS, **EXTRA_METRICS}
DEFAULT_METRICS: Tuple[str, ...] = tuple(METRICS)


def resolve_metric_names(metrics: Optional[Iterable[str]] = None) -> List[str]:
    """Validates metric names (case-insensitive); ``None`` means the 14 default metrics."""
    if metrics is None:
        return list(DEFAULT_METRICS)
    names = [m.strip().lower() for m in metrics]
    unknown = [m for m in names if m not in ALL_METRICS]
    if unknown:
        raise ValueError(f'unknown metric(s) {unknown}; known: {", ".join(ALL_METRICS)}')
    return names


def compute_all_metrics(fused: Any, ir: Any, vis: Any, metrics: Optional[Iterable[str]] = None,
                        options: Optional[Dict[str, Dict[str, Any]]] = None) -> Dict[str, float]:
    """Computes the requested metrics (default: the 14 of :data:`METRICS`) on one triple.

    The images are converted once; ``options`` maps a metric name to keyword options, e.g.
    ``{'fmi': {'feature': 'dct'}, 'psnr': {'peak': 255}}``. Returns plain Python floats (NaN where a
    metric is undefined, e.g. SCD when F equals a source).
    """
    names = resolve_metric_names(metrics)
    f, a, b = prepare_triple(fused, ir, vis)
    options = options or {}
    return {name: float(ALL_METRICS[name](f, a, b, **options.get(name, {}))) for name in names}


# ----------------------------------------------------------------------------------------------
# basicsr registry entries: calculate_metric(data, opt) passes every key of the validation data
# (img, img2, img_ir, img_vis) and of the option block (better, ...) as keyword arguments.
# ----------------------------------------------------------------------------------------------

def _sources(img_ir: Any, img_vis: Any, metric: str) -> Tuple[Any, Any]:
    if img_ir is None or img_vis is None:
        raise ValueError(f'{metric} needs the source images: pass img_ir and img_vis (the validation '
                         'metric_data must hold img, img_ir and img_vis)')
    return img_ir, img_vis


@METRIC_REGISTRY.register()
def calculate_en(img: Any, img_ir: Any = None, img_vis: Any = None, **kwargs: Any) -> float:
    """EN of the fused image ``img`` (bits). YAML ``type: calculate_en``."""
    return entropy(img)


@METRIC_REGISTRY.register()
def calculate_sd(img: Any, img_ir: Any = None, img_vis: Any = None, **kwargs: Any) -> float:
    """SD of the fused image. YAML ``type: calculate_sd``."""
    return standard_deviation(img)


@METRIC_REGISTRY.register()
def calculate_sf(img: Any, img_ir: Any = None, img_vis: Any = None, **kwargs: Any) -> float:
    """SF of the fused image. YAML ``type: calculate_sf``."""
    return spatial_frequency(img)


@METRIC_REGISTRY.register()
def calculate_ag(img: Any, img_ir: Any = None, img_vis: Any = None, **kwargs: Any) -> float:
    """AG of the fused image. YAML ``type: calculate_ag``."""
    return average_gradient(img)


@METRIC_REGISTRY.register()
def calculate_mi(img: Any, img_ir: Any = None, img_vis: Any = None, **kwargs: Any) -> float:
    """MI(F,A) + MI(F,B) in nats. YAML ``type: calculate_mi``."""
    return mutual_information(img, *_sources(img_ir, img_vis, 'calculate_mi'))


@METRIC_REGISTRY.register()
def calculate_scd(img: Any, img_ir: Any = None, img_vis: Any = None, **kwargs: Any) -> float:
    """SCD. YAML ``type: calculate_scd``."""
    return sum_of_correlations_of_differences(img, *_sources(img_ir, img_vis, 'calculate_scd'))


@METRIC_REGISTRY.register()
def calculate_vif(img: Any, img_ir: Any = None, img_vis: Any = None, **kwargs: Any) -> float:
    """VIF(A,F) + VIF(B,F). YAML ``type: calculate_vif``."""
    return visual_information_fidelity(img, *_sources(img_ir, img_vis, 'calculate_vif'))


@METRIC_REGISTRY.register()
def calculate_qabf(img: Any, img_ir: Any = None, img_vis: Any = None, **kwargs: Any) -> float:
    """Qabf. YAML ``type: calculate_qabf``."""
    return qabf(img, *_sources(img_ir, img_vis, 'calculate_qabf'))


@METRIC_REGISTRY.register()
def calculate_nabf(img: Any, img_ir: Any = None, img_vis: Any = None, **kwargs: Any) -> float:
    """Nabf (lower is better: set ``better: lower``). YAML ``type: calculate_nabf``."""
    return nabf(img, *_sources(img_ir, img_vis, 'calculate_nabf'))


@METRIC_REGISTRY.register()
def calculate_fusion_ssim(img: Any, img_ir: Any = None, img_vis: Any = None, data_range: float = 2.0,
                          **kwargs: Any) -> float:
    """SSIM(F,A) + SSIM(F,B). YAML ``type: calculate_fusion_ssim`` (optional ``data_range``)."""
    return fusion_ssim(img, *_sources(img_ir, img_vis, 'calculate_fusion_ssim'), data_range=data_range)


@METRIC_REGISTRY.register()
def calculate_ms_ssim(img: Any, img_ir: Any = None, img_vis: Any = None, **kwargs: Any) -> float:
    """MEF-MS-SSIM of F against {A, B}. YAML ``type: calculate_ms_ssim``."""
    return fusion_ms_ssim(img, *_sources(img_ir, img_vis, 'calculate_ms_ssim'))


@METRIC_REGISTRY.register()
def calculate_mef_ssim(img: Any, img_ir: Any = None, img_vis: Any = None, **kwargs: Any) -> float:
    """Single-scale MEF-SSIM. YAML ``type: calculate_mef_ssim``."""
    return mef_ssim_metric(img, *_sources(img_ir, img_vis, 'calculate_mef_ssim'))


@METRIC_REGISTRY.register()
def calculate_fusion_psnr(img: Any, img_ir: Any = None, img_vis: Any = None, peak: Optional[float] = None,
                          **kwargs: Any) -> float:
    """Fusion PSNR (peak = max F unless ``peak`` is given). YAML ``type: calculate_fusion_psnr``."""
    return fusion_psnr(img, *_sources(img_ir, img_vis, 'calculate_fusion_psnr'), peak=peak)


@METRIC_REGISTRY.register()
def calculate_cc(img: Any, img_ir: Any = None, img_vis: Any = None, **kwargs: Any) -> float:
    """CC. YAML ``type: calculate_cc``."""
    return correlation_coefficient(img, *_sources(img_ir, img_vis, 'calculate_cc'))


@METRIC_REGISTRY.register()
def calculate_fmi(img: Any, img_ir: Any = None, img_vis: Any = None, feature: str = 'none', window: int = 3,
                  **kwargs: Any) -> float:
    """Fast-FMI (``feature``: none | dct). YAML ``type: calculate_fmi``. Heavy (~1-2 s at 640x480)."""
    return fmi(img, *_sources(img_ir, img_vis, 'calculate_fmi'), feature=feature, window=window)
