"""The ``tang`` convention: the MATLAB "General Evaluation Metric" toolbox of Linfeng Tang's
Image-Fusion repository (behind SeAFusion, PIAFusion and many later papers), reproduced metric by
metric, quirks included: EN, SD, SF, AG, MI, SCD, VIF, Qabf, CC, PSNR, MSE.

How the toolbox reads images (``Evaluation_for_Multi_Algorithm.m`` + ``analysis_Reference.m``):
``imread``, ``rgb2gray`` when a file has 3 channels (uint8, rounded), then every metric gets either
the uint8 image or ``im2double`` of it ([0,1]); which one is part of each metric's definition and
noted in its docstring. The functions here take (fused, ir, vis) like the other metrics; each input
may be a uint8 grey or RGB array as ``imread`` gives it, or a 0-255 float array (validation), which
is rounded and saturated to uint8 as writing and re-reading an 8-bit file would.

Verified against the toolbox's own values for 21 TNO images x 9 methods (scripts/verify_conventions.py,
table in docs/metrics.md).
"""
from __future__ import annotations

import math
from typing import Any, Tuple

import numpy as np
from basicsr.utils.registry import METRIC_REGISTRY

from fusion.metrics.matlab_util import (conv2_same, entropy_uint8, filter2_separable, gradient, im2double, rgb2gray,
                                        to_uint8_saturate, uint8_image)
from fusion.metrics.metric_util import gaussian_kernel_1d, vif_scale_information


__all__ = ['tang_gray', 'tang_en', 'tang_sd', 'tang_sf', 'tang_ag', 'tang_mi', 'tang_scd', 'tang_vif', 'tang_qabf',
           'tang_cc', 'tang_psnr', 'tang_mse', 'xydeas_qabf']


def tang_gray(img: Any, name: str = 'image') -> np.ndarray:
    """An image as Tang's toolbox holds it: uint8 H x W (``imread``, then ``rgb2gray`` for 3 channels).
    uint8 arrays are taken as read (colour in RGB order); float/other arrays as 0-255 values, rounded
    half away from zero and saturated to uint8."""
    arr = uint8_image(img, name)
    return rgb2gray(arr) if arr.ndim == 3 else arr


def _triple(fused: Any, ir: Any, vis: Any) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    f, a, b = tang_gray(fused, 'fused image'), tang_gray(ir, 'infrared image'), tang_gray(vis, 'visible image')
    if not (f.shape == a.shape == b.shape):
        raise ValueError(f'size mismatch: fused {f.shape[1]}x{f.shape[0]}, infrared {a.shape[1]}x{a.shape[0]}, '
                         f'visible {b.shape[1]}x{b.shape[0]} (W x H); the three images must be equal in size')
    return f, a, b


# ----------------------------------------------------------------------------------------------
# Metrics of the fused image alone
# ----------------------------------------------------------------------------------------------

def tang_en(fused: Any) -> float:
    """EN = ``entropy(F)`` on the uint8 image: 256-bin histogram, log2 (bits)."""
    return entropy_uint8(tang_gray(fused, 'fused image'))


def tang_sd(fused: Any) -> float:
    """SD = ``SD_evaluation(F)`` on the **uint8** image: ``F - mean`` and ``.^2`` are uint8 operations,
    so negative deviations become 0 and squares saturate at 255; then sqrt(sum / (m n)). A pixel 20
    above the mean counts 255 (not 400), one below it 0: values near 8-10 where the usual SD is 30-50."""
    f = tang_gray(fused, 'fused image')
    dev = to_uint8_saturate(f.astype(np.float64) - f.mean()).astype(np.float64)
    sq = np.minimum(dev * dev, 255.0)
    return float(math.sqrt(sq.sum() / f.size))


def tang_sf(fused: Any) -> float:
    """SF on ``im2double(F)`` ([0,1]): sqrt(mean(row diff^2) + mean(column diff^2)), no padding;
    1/255 of the 0-255 value."""
    f = im2double(tang_gray(fused, 'fused image'))
    if min(f.shape) < 2:
        raise ValueError(f'SF needs an image of at least 2x2 pixels, got {f.shape[1]}x{f.shape[0]}')
    return float(math.sqrt(np.mean(np.diff(f, axis=0) ** 2) + np.mean(np.diff(f, axis=1) ** 2)))


def tang_ag(fused: Any) -> float:
    """AG = sum of sqrt((Gx^2 + Gy^2) / 2) over all pixels / ((m-1)(n-1)), MATLAB ``gradient`` on
    the 0-255 values."""
    f = tang_gray(fused, 'fused image')
    if min(f.shape) < 2:
        raise ValueError(f'AG needs an image of at least 2x2 pixels, got {f.shape[1]}x{f.shape[0]}')
    gx, gy = gradient(f)
    return float(np.sum(np.sqrt((gx * gx + gy * gy) / 2.0)) / ((f.shape[0] - 1) * (f.shape[1] - 1)))


# ----------------------------------------------------------------------------------------------
# Metrics of the fused image against the two sources
# ----------------------------------------------------------------------------------------------

def _joint_entropy_saturated(x: np.ndarray, y: np.ndarray) -> float:
    """``Hab.m`` on uint8 images: the bin index ``x + 1`` is a uint8 sum, so 255 + 1 saturates to
    255 and grey levels 254 and 255 share a joint-histogram bin (the marginal entropies, from
    ``entropy``, keep them apart). log2."""
    xi = np.minimum(x.astype(np.intp), 254)
    yi = np.minimum(y.astype(np.intp), 254)
    counts = np.bincount((xi * 256 + yi).ravel(), minlength=256 * 256).astype(np.float64)
    p = counts[counts > 0] / x.size
    return float(-np.sum(p * np.log2(p)))


def tang_mi(fused: Any, ir: Any, vis: Any) -> float:
    """MI = (H(A) + H(F) - H(F,A)) + (H(B) + H(F) - H(F,B)) in **bits**, H from ``entropy`` and the
    joint entropy from ``Hab.m`` (levels 254/255 merged there, see :func:`_joint_entropy_saturated`)."""
    f, a, b = _triple(fused, ir, vis)
    h_f = entropy_uint8(f)
    return (entropy_uint8(a) + h_f - _joint_entropy_saturated(f, a)
            + entropy_uint8(b) + h_f - _joint_entropy_saturated(f, b))


def _corr2(x: np.ndarray, y: np.ndarray) -> float:
    xc = x - x.mean()
    yc = y - y.mean()
    denom = math.sqrt(float(np.sum(xc * xc)) * float(np.sum(yc * yc)))
    return float(np.sum(xc * yc)) / denom if denom else float('nan')


def tang_scd(fused: Any, ir: Any, vis: Any) -> float:
    """SCD = corr2(F - B, A) + corr2(F - A, B) on ``im2double`` images."""
    f, a, b = (im2double(x) for x in _triple(fused, ir, vis))
    return _corr2(f - b, a) + _corr2(f - a, b)


def tang_cc(fused: Any, ir: Any, vis: Any) -> float:
    """CC = (r_AF + r_BF) / 2 on ``im2double`` images, with the toolbox's typo kept: the numerator of
    r_BF centres B on the mean of **A** (``B - mean(mean(A))``), its denominator on the mean of B."""
    f, a, b = (im2double(x) for x in _triple(fused, ir, vis))
    fc = f - f.mean()
    ac = a - a.mean()
    ss_f = float(np.sum(fc * fc))
    r_af = float(np.sum(ac * fc)) / math.sqrt(float(np.sum(ac * ac)) * ss_f)
    bc = b - b.mean()
    r_bf = float(np.sum((b - a.mean()) * fc)) / math.sqrt(float(np.sum(bc * bc)) * ss_f)
    return (r_af + r_bf) / 2.0


def _mse_unit(f: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    fd, ad, bd = im2double(f), im2double(a), im2double(b)
    return 0.5 * float(np.mean((fd - ad) ** 2)) + 0.5 * float(np.mean((fd - bd) ** 2))


def tang_mse(fused: Any, ir: Any, vis: Any) -> float:
    """MSE = (MSE(A,F) + MSE(B,F)) / 2 on ``im2double`` images ([0,1], so 1/65025 of the 0-255 MSE)."""
    return _mse_unit(*_triple(fused, ir, vis))


def tang_psnr(fused: Any, ir: Any, vis: Any) -> float:
    """PSNR = 20 log10(255 / sqrt(MSE)) with the MSE of [0,1] images and a peak of 255, i.e. 48.13 dB
    above the conventional value (TNO values are 60-65 dB)."""
    mse = _mse_unit(*_triple(fused, ir, vis))
    if mse == 0.0:
        return float('inf')
    return float(20.0 * math.log10(255.0 / math.sqrt(mse)))


# --- VIF -------------------------------------------------------------------------------------

def _vifp_mscale(ref8: np.ndarray, dist8: np.ndarray) -> float:
    """``vifp_mscale(ref, dist)`` called with **uint8** images: at the first scale ``ref.*ref``,
    ``dist.*dist`` and ``ref.*dist`` are uint8 products that saturate at 255, so the variances of
    scale 1 come from min(x*y, 255); later scales work on the filtered (double) images."""
    num = den = 0.0
    ref = ref8.astype(np.float64)
    dist = dist8.astype(np.float64)
    for scale in range(1, 5):
        n = 2 ** (4 - scale + 1) + 1
        # fspecial('gaussian', n, n/5) has no tap below eps*max for n = 17..3, so it is exactly the
        # outer product of its normalised 1-D factor: separable filtering, 3x faster than 2-D
        win = gaussian_kernel_1d(n, n / 5.0)

        def filt(x: np.ndarray) -> np.ndarray:
            return filter2_separable(win, win, x, 'valid')
        if scale > 1:
            ref = filt(ref)[::2, ::2]
            dist = filt(dist)[::2, ::2]
        if scale == 1:
            rr, dd, rd = (np.minimum(ref * ref, 255.0), np.minimum(dist * dist, 255.0),
                          np.minimum(ref * dist, 255.0))
        else:
            rr, dd, rd = ref * ref, dist * dist, ref * dist
        mu1 = filt(ref)
        mu2 = filt(dist)
        sigma1_sq = filt(rr) - mu1 * mu1
        sigma2_sq = filt(dd) - mu2 * mu2
        sigma12 = filt(rd) - mu1 * mu2
        sigma1_sq[sigma1_sq < 0] = 0.0
        sigma2_sq[sigma2_sq < 0] = 0.0
        scale_num, scale_den = vif_scale_information(sigma1_sq, sigma2_sq, sigma12)
        num += scale_num
        den += scale_den
    return num / den if den else float('nan')


def tang_vif(fused: Any, ir: Any, vis: Any) -> float:
    """VIF = vifp_mscale(A, F) + vifp_mscale(B, F) on the uint8 images (scale-1 products saturated,
    see :func:`_vifp_mscale`): 4 scales, Gaussian windows 17/9/5/3, sigma_n^2 = 2."""
    f, a, b = _triple(fused, ir, vis)
    if min(f.shape) < 41:
        raise ValueError(f'VIF needs images of at least 41x41 pixels (4 scales), got {f.shape[1]}x{f.shape[0]}')
    return _vifp_mscale(a, f) + _vifp_mscale(b, f)


# --- Qabf --------------------------------------------------------------------------------------

_SOBEL_Y = np.array([[1.0, 2.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -2.0, -1.0]])  # h1
_SOBEL_X = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])  # h3


def _qabf_edges(img: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    sx = conv2_same(img, _SOBEL_X)
    sy = conv2_same(img, _SOBEL_Y)
    strength = np.sqrt(sx * sx + sy * sy)
    with np.errstate(divide='ignore', invalid='ignore'):
        angle = np.where(sx == 0, math.pi / 2, np.arctan(sy / np.where(sx == 0, 1.0, sx)))
    return strength, angle


def _qabf_preservation(g_src: np.ndarray, a_src: np.ndarray, g_f: np.ndarray, a_f: np.ndarray) -> np.ndarray:
    with np.errstate(divide='ignore', invalid='ignore'):
        # tie rule of the toolbox: equal strengths give G = g_F (not 1), so it depends on the scale
        rel = np.where(g_src > g_f, g_f / g_src, np.where(g_src == g_f, g_f, g_src / g_f))
    orient = 1.0 - np.abs(a_src - a_f) / (math.pi / 2)
    q_g = 0.9994 / (1.0 + np.exp(-15.0 * (rel - 0.5)))
    q_a = 0.9879 / (1.0 + np.exp(-22.0 * (orient - 0.8)))
    return q_g * q_a


def xydeas_qabf(f: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """The toolboxes' ``analysis_Qabf`` / ``metricsQabf`` core on float images at whatever scale the
    caller gives (the tie rule makes it scale-dependent): Sobel by ``conv2(.., 'same')`` in MATLAB's
    summation order, angle pi/2 where the x response is exactly 0, Tg .9994, kg -15, Dg .5,
    Ta .9879, ka -22, Da .8, weights g_A, g_B (L = 1). Vectorised (the MATLAB code loops per pixel)."""
    g_a, a_a = _qabf_edges(a)
    g_b, a_b = _qabf_edges(b)
    g_f, a_f = _qabf_edges(f)
    denom = float(np.sum(g_a + g_b))
    if denom == 0.0:
        return float('nan')
    num = np.sum(_qabf_preservation(g_a, a_a, g_f, a_f) * g_a + _qabf_preservation(g_b, a_b, g_f, a_f) * g_b)
    return float(num / denom)


def tang_qabf(fused: Any, ir: Any, vis: Any) -> float:
    """Qabf = ``analysis_Qabf(im2double(A), im2double(B), im2double(F))``: on [0,1] images, where the
    order of the Sobel sums decides which x responses are exactly zero (see ``conv2_same``)."""
    f, a, b = (im2double(x) for x in _triple(fused, ir, vis))
    return xydeas_qabf(f, a, b)


# ----------------------------------------------------------------------------------------------
# basicsr registry entries (YAML ``type: calculate_tang_<metric>``), usable in validation
# ----------------------------------------------------------------------------------------------

def _need_sources(img_ir: Any, img_vis: Any, metric: str) -> Tuple[Any, Any]:
    if img_ir is None or img_vis is None:
        raise ValueError(f'{metric} needs the source images: pass img_ir and img_vis (the validation '
                         'metric_data must hold img, img_ir and img_vis)')
    return img_ir, img_vis


def _register_fused_only(name: str, func: Any) -> None:
    def metric(img: Any, img_ir: Any = None, img_vis: Any = None, **kwargs: Any) -> float:
        return func(img)
    metric.__name__ = name
    metric.__doc__ = f'{func.__doc__.splitlines()[0]} YAML ``type: {name}``.'
    METRIC_REGISTRY.register(metric)


def _register_with_sources(name: str, func: Any) -> None:
    def metric(img: Any, img_ir: Any = None, img_vis: Any = None, **kwargs: Any) -> float:
        return func(img, *_need_sources(img_ir, img_vis, name))
    metric.__name__ = name
    metric.__doc__ = f'{func.__doc__.splitlines()[0]} YAML ``type: {name}``.'
    METRIC_REGISTRY.register(metric)


for _name, _func in [('calculate_tang_en', tang_en), ('calculate_tang_sd', tang_sd), ('calculate_tang_sf', tang_sf),
                     ('calculate_tang_ag', tang_ag)]:
    _register_fused_only(_name, _func)
for _name, _func in [('calculate_tang_mi', tang_mi), ('calculate_tang_scd', tang_scd), ('calculate_tang_vif', tang_vif),
                     ('calculate_tang_qabf', tang_qabf), ('calculate_tang_cc', tang_cc),
                     ('calculate_tang_psnr', tang_psnr), ('calculate_tang_mse', tang_mse)]:
    _register_with_sources(_name, _func)
