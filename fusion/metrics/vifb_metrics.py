"""The ``vifb`` convention: the MATLAB metrics of the VIFB benchmark (Zhang, Ye & Xiao, CVPRW 2020;
xingchenzhang/VIFB ``metrics/metrics*.m``), reproduced with their quirks: Avg_gradient,
Cross_entropy, Edge_intensity, Entropy, Mutinf, Psnr, Qabf, Qcb, Qcv, Rmse, Spatial_frequency, Ssim,
Variance.

How VIFB reads images (``compute_metrics.m``): ``imread`` of the visible, infrared and fused JPEG
files, colour kept, and ``metricsX(imgVI, imgIR, fused)``. Every metric converts ``fused`` to double;
when it has 3 channels the metric runs per channel (channel k of the visible and, if it has 3
channels, of the infrared image) and averages, otherwise grey fused images meet ``rgb2gray`` of
colour sources inside the metric. The functions here take (fused, ir, vis) like the other metrics,
each a uint8 H x W or H x W x 3 (RGB) array as ``imread`` gives it (0-255 float arrays are rounded
and saturated to uint8 first), and do the same dispatch.

Verified against VIFB's own values for 10 pairs x 25 methods (scripts/verify_conventions.py, table in
docs/metrics.md).
"""
from __future__ import annotations

import math
from typing import Any, Callable, List, Tuple

import numpy as np
from basicsr.utils.registry import METRIC_REGISTRY

from fusion.metrics.matlab_util import (blkproc_sum, filter2, filter2_separable, freqspace_radius, fspecial_gaussian,
                                        gradient, imfilter_replicate, matlab_round, rgb2gray, uint8_image)
from fusion.metrics.tang_metrics import xydeas_qabf


__all__ = ['vifb_image', 'vifb_avg_gradient', 'vifb_cross_entropy', 'vifb_edge_intensity', 'vifb_entropy',
           'vifb_mutinf', 'vifb_psnr', 'vifb_qabf', 'vifb_qcb', 'vifb_qcv', 'vifb_rmse', 'vifb_spatial_frequency',
           'vifb_ssim', 'vifb_variance', 'VIFB_TABLE']


def vifb_image(img: Any, name: str = 'image') -> np.ndarray:
    """An image as VIFB holds it after ``imread``: uint8 H x W or H x W x 3 (RGB); other arrays are
    taken as 0-255 values and rounded/saturated to uint8, alpha dropped."""
    return uint8_image(img, name)


def _inputs(fused: Any, ir: Any, vis: Any) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    f, a, b = vifb_image(fused, 'fused image'), vifb_image(ir, 'infrared image'), vifb_image(vis, 'visible image')
    if not (f.shape[:2] == a.shape[:2] == b.shape[:2]):
        raise ValueError(f'size mismatch: fused {f.shape[1]}x{f.shape[0]}, infrared {a.shape[1]}x{a.shape[0]}, '
                         f'visible {b.shape[1]}x{b.shape[0]} (W x H); the three images must be equal in size')
    return f, a, b


def _channels(fused: Any, ir: Any, vis: Any, single: Callable[[np.ndarray, np.ndarray, np.ndarray], float]) -> float:
    """The dispatch every ``metricsX.m`` does: grey fused -> ``single(VI, IR, F)`` once; colour
    fused -> ``single`` on channel k of F and VI (and of IR when it is colour), mean over k.
    ``single`` receives (vi, ir, fused) in VIFB's order, sources uint8, fused float64."""
    f, a, b = _inputs(fused, ir, vis)
    fd = f.astype(np.float64)
    if f.ndim == 2:
        return float(single(b, a, fd))
    if b.ndim == 2:
        raise ValueError('a grey visible image with a colour fused image: VIFB indexes the visible image '
                         'per channel here and fails; convert the fused image to grey first')
    values = [single(b[..., k], a if a.ndim == 2 else a[..., k], fd[..., k]) for k in range(3)]
    return float(np.mean(values))


def _gray_u8(img: np.ndarray) -> np.ndarray:
    return rgb2gray(img) if img.ndim == 3 else img


# ----------------------------------------------------------------------------------------------
# Metrics of the fused image alone
# ----------------------------------------------------------------------------------------------

def _bands(fused: Any) -> List[np.ndarray]:
    f = vifb_image(fused, 'fused image').astype(np.float64)
    return [f] if f.ndim == 2 else [f[..., k] for k in range(f.shape[2])]


def vifb_avg_gradient(fused: Any) -> float:
    """Avg_gradient: per channel sum of sqrt((Gx^2 + Gy^2) / 2) / ((m-1)(n-1)), ``gradient`` on 0-255,
    mean over the channels."""
    bands = _bands(fused)
    r, c = bands[0].shape
    values = []
    for band in bands:
        gx, gy = gradient(band)
        values.append(np.sum(np.sqrt((gx * gx + gy * gy) / 2.0)) / ((r - 1) * (c - 1)))
    return float(np.mean(values))


_SOBEL = np.array([[1.0, 2.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -2.0, -1.0]])  # fspecial('sobel')


def vifb_edge_intensity(fused: Any) -> float:
    """Edge_intensity: mean over every pixel and channel of sqrt(gx^2 + gy^2), ``imfilter(F,
    fspecial('sobel'), 'replicate')`` and its transpose (correlation, border pixels repeated)."""
    bands = _bands(fused)
    total = 0.0
    for band in bands:
        gx = imfilter_replicate(band, _SOBEL)
        gy = imfilter_replicate(band, _SOBEL.T)
        total += float(np.sum(np.sqrt(gx * gx + gy * gy)))
    return total / (bands[0].size * len(bands))


def _entropy_band(fused: np.ndarray) -> float:
    counts = np.bincount(np.floor(fused).astype(np.intp).ravel(), minlength=256).astype(np.float64)
    p = counts[counts > 0] / fused.size
    return float(-np.sum(p * np.log2(p)))


def vifb_entropy(fused: Any) -> float:
    """Entropy: 256-bin histogram of floor(F), log2, per channel of a colour F then averaged."""
    return float(np.mean([_entropy_band(band) for band in _bands(fused)]))


def vifb_spatial_frequency(fused: Any) -> float:
    """Spatial_frequency: sqrt(RF + CF), sums of squared neighbour differences divided by m*n, where
    ``[m, n] = size(F)`` of an H x W x 3 image gives n = 3W and ``F(i, j)`` reads the channels side by
    side (column-major), so a colour image is one H x 3W image, seams between channels included."""
    f = vifb_image(fused, 'fused image').astype(np.float64)
    if f.ndim == 3:
        f = np.concatenate([f[..., k] for k in range(f.shape[2])], axis=1)
    m, n = f.shape
    rf = float(np.sum(np.diff(f, axis=1) ** 2)) / (m * n)
    cf = float(np.sum(np.diff(f, axis=0) ** 2)) / (m * n)
    return math.sqrt(rf + cf)


def vifb_variance(fused: Any) -> float:
    """Variance: despite the name the population **standard deviation** sqrt(sum((F - mean)^2) / (m n))
    on 0-255, per channel then averaged."""
    return float(np.mean([math.sqrt(np.sum((b - b.mean()) ** 2) / b.size) for b in _bands(fused)]))


# ----------------------------------------------------------------------------------------------
# Metrics against the sources
# ----------------------------------------------------------------------------------------------

def _hist256(levels: np.ndarray) -> np.ndarray:
    return np.bincount(levels.astype(np.intp).ravel(), minlength=256).astype(np.float64)


def _cross_entropy_one(src: np.ndarray, fused: np.ndarray) -> float:
    p1 = _hist256(_gray_u8(src)) / src.shape[0] / src.shape[1]
    p2 = _hist256(fused) / src.shape[0] / src.shape[1]
    both = (p1 != 0) & (p2 != 0)
    # bins where only one image has pixels are skipped (the textbook definition would be infinite)
    return float(np.sum(p1[both] * np.log2(p1[both] / p2[both])))


def _cross_entropy_single(vi: np.ndarray, ir: np.ndarray, fused: np.ndarray) -> float:
    return (_cross_entropy_one(vi, fused) + _cross_entropy_one(ir, fused)) / 2.0


def vifb_cross_entropy(fused: Any, ir: Any, vis: Any) -> float:
    """Cross_entropy: (KL(VI||F) + KL(IR||F)) / 2 of the 256-bin histograms in bits, bins empty in
    either image skipped; per channel of a colour F (grey: rgb2gray of the colour sources, rounded)."""
    return _channels(fused, ir, vis, _cross_entropy_single)


def _mi_levels(img: np.ndarray) -> np.ndarray:
    x = img.astype(np.float64)
    lo, hi = float(x.min()), float(x.max())
    if hi == lo:
        return np.zeros(x.shape, dtype=np.intp)
    # int16(x * 255) rounds half away from zero; +1 (1-based bins) left out here
    return matlab_round((x - lo) / (hi - lo) * 255.0).astype(np.intp)


def _mutinf_one(src: np.ndarray, fused: np.ndarray) -> float:
    a = _mi_levels(_gray_u8(src))
    b = _mi_levels(fused)
    joint = np.bincount((a * 256 + b).ravel(), minlength=256 * 256).astype(np.float64)

    def ent(counts: np.ndarray) -> float:
        p = counts[counts > 0] / counts.sum()
        return float(-np.sum(p * np.log(p)))
    return ent(joint.reshape(256, 256).sum(axis=1)) + ent(joint.reshape(256, 256).sum(axis=0)) - ent(joint)


def _mutinf_single(vi: np.ndarray, ir: np.ndarray, fused: np.ndarray) -> float:
    return _mutinf_one(vi, fused) + _mutinf_one(ir, fused)


def vifb_mutinf(fused: Any, ir: Any, vis: Any) -> float:
    """Mutinf: MI(VI, F) + MI(IR, F) in **nats**, each image min-max stretched to 0..255 and rounded
    before the 256 x 256 joint histogram; per channel of a colour F."""
    return _channels(fused, ir, vis, _mutinf_single)


def _gray_f(img: np.ndarray) -> np.ndarray:
    x = img.astype(np.float64)
    return rgb2gray(x) if x.ndim == 3 else x  # rgb2gray of a double array: not rounded


def _vifb_mse(src: np.ndarray, fused: np.ndarray) -> float:
    """VIFB's ``mse(a, b)``: sqrt(sum((a - b)^2)) / (m n), a root of the sum divided by the pixel count
    (not an MSE, nor an RMSE)."""
    a = _gray_f(src)
    return float(math.sqrt(np.sum((a - fused) ** 2)) / a.size)


def _psnr_single(vi: np.ndarray, ir: np.ndarray, fused: np.ndarray) -> float:
    mes = (_vifb_mse(vi, fused) + _vifb_mse(ir, fused)) / 2.0
    return float(20.0 * math.log10(255.0 / math.sqrt(mes))) if mes > 0 else float('inf')


def vifb_psnr(fused: Any, ir: Any, vis: Any) -> float:
    """Psnr = 20 log10(255 / sqrt(e)), e = the mean of VIFB's ``mse`` (sqrt of the summed squared error
    over the pixel count) for VI and IR, so ~58-62 dB; per channel of a colour F."""
    return _channels(fused, ir, vis, _psnr_single)


def _rmse_single(vi: np.ndarray, ir: np.ndarray, fused: np.ndarray) -> float:
    return (_vifb_mse(vi, fused) + _vifb_mse(ir, fused)) / 2.0


def vifb_rmse(fused: Any, ir: Any, vis: Any) -> float:
    """Rmse = the mean of VIFB's ``mse`` for VI and IR: sqrt(sum of squared errors) / (m n), which is
    RMSE / sqrt(m n) (about 0.05 where the RMSE is 25); per channel of a colour F."""
    return _channels(fused, ir, vis, _rmse_single)


def _qabf_single(vi: np.ndarray, ir: np.ndarray, fused: np.ndarray) -> float:
    # pA = 255 * im2double(double(x)): im2double leaves doubles alone, so the data are 0..65025
    return xydeas_qabf(255.0 * fused, 255.0 * _gray_f(vi), 255.0 * _gray_f(ir))


def vifb_qabf(fused: Any, ir: Any, vis: Any) -> float:
    """Qabf (Xydeas & Petrovic) as the toolbox's ``analysis_Qabf`` on **255 x** the 0-255 values
    (``255*im2double`` of a double array), which only matters through the tie rule G = g_F;
    per channel of a colour F."""
    return _channels(fused, ir, vis, _qabf_single)


def _normalize1(x: np.ndarray) -> np.ndarray:
    """``normalize1``: min-max stretch to 0..255, rounded; all-zero images unchanged."""
    x = np.asarray(x, dtype=np.float64)
    hi, lo = float(x.max()), float(x.min())
    if hi == 0 and lo == 0:
        return x
    return matlab_round((x - lo) / (hi - lo) * 255.0)


def _freq_filter(img: np.ndarray, response: np.ndarray) -> np.ndarray:
    """``real(ifft2(ifftshift(fftshift(fft2(img)) .* response)))`` by real FFTs. The responses are
    functions of the radius on MATLAB's ``freqspace`` grid, so symmetric under k -> -k and the
    MATLAB result is real up to rounding (imaginary parts ~1e-17 of the values; abs() and squares
    change by their square, ~1e-32); the real transform is 3x faster."""
    h, w = img.shape
    unshifted = np.fft.ifftshift(response)[:, :w // 2 + 1]
    return np.fft.irfft2(np.fft.rfft2(img) * unshifted, s=(h, w))


def _gaussian31(sigma: float) -> np.ndarray:
    """One factor of ``gaussian2d``: exp(-(x^2 + y^2) / (2 s^2)) / (2 pi s^2) on -15..15, not
    normalised, = outer(g, g) with g = exp(-x^2 / (2 s^2)) / sqrt(2 pi s^2)."""
    x = np.arange(-15, 16, dtype=np.float64)
    return np.exp(-(x * x) / (2 * sigma * sigma)) / math.sqrt(2 * math.pi * sigma * sigma)


_QCB_G1 = _gaussian31(2.0)
_QCB_G2 = _gaussian31(4.0)


def _qcb_contrast(img: np.ndarray) -> np.ndarray:
    c = filter2_separable(_QCB_G1, _QCB_G1, img, 'same') / filter2_separable(_QCB_G2, _QCB_G2, img, 'same') - 1.0
    c = np.abs(c)
    return c ** 3 / (c ** 2 + 0.0001)  # k = h = 1, p = 3, q = 2, Z = 1e-4


def _qcb_single(vi: np.ndarray, ir: np.ndarray, fused: np.ndarray) -> float:
    im1 = _normalize1(_gray_f(vi))
    im2 = _normalize1(_gray_f(ir))
    fu = _normalize1(fused)
    hang, lie = im1.shape
    r = freqspace_radius(hang, lie, lie / 30.0, hang / 30.0)
    sd = np.exp(-(r / 15.3870) ** 2) - 0.7622 * np.exp(-(r / 1.3456) ** 2)
    c1p = _qcb_contrast(_freq_filter(im1, sd))
    c2p = _qcb_contrast(_freq_filter(im2, sd))
    cfp = _qcb_contrast(_freq_filter(fu, sd))
    with np.errstate(divide='ignore', invalid='ignore'):
        mask = (c1p < cfp).astype(np.float64)
        q1f = (c1p / cfp) * mask + (cfp / c1p) * (1.0 - mask)
        mask = (c2p < cfp).astype(np.float64)
        q2f = (c2p / cfp) * mask + (cfp / c2p) * (1.0 - mask)
        s1, s2 = c1p * c1p, c2p * c2p
        q = s1 / (s1 + s2) * q1f + s2 / (s1 + s2) * q2f
    return float(np.mean(q))


def vifb_qcb(fused: Any, ir: Any, vis: Any) -> float:
    """Qcb (Chen & Blum): images min-max stretched to 0..255 and rounded, a DoG contrast-sensitivity
    filter on MATLAB's ``freqspace`` grid scaled by (W/30, H/30), local contrast from two unnormalised
    31 x 31 Gaussians (sigma 2, 4; ``filter2`` zero padding), mean of the saliency-weighted
    preservation map (NaN where it is 0/0, as in MATLAB); per channel of a colour F."""
    return _channels(fused, ir, vis, _qcb_single)


_QCV_X = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
_QCV_Y = np.array([[-1.0, -2.0, -1.0], [0.0, 0.0, 0.0], [1.0, 2.0, 1.0]])
_QCV_WINDOW = 16
_QCV_ALPHA = 5


def _qcv_saliency(img: np.ndarray) -> np.ndarray:
    gx = filter2(_QCV_X, img, 'same')
    gy = filter2(_QCV_Y, img, 'same')
    return blkproc_sum(np.sqrt(gx * gx + gy * gy) ** _QCV_ALPHA, _QCV_WINDOW)


def _qcv_single(vi: np.ndarray, ir: np.ndarray, fused: np.ndarray) -> float:
    im1 = _normalize1(_gray_f(vi))
    im2 = _normalize1(_gray_f(ir))
    fu = _normalize1(fused)
    hang, lie = im1.shape
    ramda1 = _qcv_saliency(im1)
    ramda2 = _qcv_saliency(im2)
    r = freqspace_radius(hang, lie, lie / 8.0, hang / 8.0)
    theta_m = 2.6 * (0.0192 + 0.144 * r) * np.exp(-(0.144 * r) ** 1.1)  # Mannos-Sakrison CSF
    area = float(_QCV_WINDOW * _QCV_WINDOW)
    d1 = blkproc_sum(_freq_filter(im1 - fu, theta_m) ** 2, _QCV_WINDOW) / area  # mean2 of a zero-padded block
    d2 = blkproc_sum(_freq_filter(im2 - fu, theta_m) ** 2, _QCV_WINDOW) / area
    q = np.sum(ramda1 * d1 + ramda2 * d2) / np.sum(ramda1 + ramda2)
    return float(q)


def vifb_qcv(fused: Any, ir: Any, vis: Any) -> float:
    """Qcv (Chen & Varshney, lower is better): images min-max stretched and rounded; 16 x 16 blocks
    (``blkproc``, zero-padded at the right/bottom) weighted by sum(|grad|^5) of each source, the
    Mannos-Sakrison-filtered difference's block mean of squares; per channel of a colour F."""
    return _channels(fused, ir, vis, _qcv_single)


_SSIM_WINDOW = fspecial_gaussian(11, 1.5)
# fspecial's window is exactly the outer product of its normalised 1-D factor (no tap below eps)
_SSIM_1D = np.exp(-(np.arange(11) - 5.0) ** 2 / (2 * 1.5 ** 2)) / np.sum(np.exp(-(np.arange(11) - 5.0) ** 2 / 4.5))


def _ssim_filter(img: np.ndarray) -> np.ndarray:
    return filter2_separable(_SSIM_1D, _SSIM_1D, img, 'valid')


def _ssim_one(src: np.ndarray, fused: np.ndarray) -> float:
    x = _gray_u8(src).astype(np.float64)
    c1 = (0.01 * 255) ** 2
    c2 = (0.03 * 255) ** 2
    ux = _ssim_filter(x)
    uy = _ssim_filter(fused)
    sxx = _ssim_filter(x * x) - ux * ux
    syy = _ssim_filter(fused * fused) - uy * uy
    sxy = _ssim_filter(x * fused) - ux * uy
    ssim_map = ((2 * ux * uy + c1) * (2 * sxy + c2)) / ((ux * ux + uy * uy + c1) * (sxx + syy + c2))
    return float(np.mean(ssim_map))


def _ssim_single(vi: np.ndarray, ir: np.ndarray, fused: np.ndarray) -> float:
    return _ssim_one(vi, fused) + _ssim_one(ir, fused)


def vifb_ssim(fused: Any, ir: Any, vis: Any) -> float:
    """Ssim = SSIM(VI, F) + SSIM(IR, F) (a sum, up to 2): 11 x 11 Gaussian window (sigma 1.5),
    'valid' region, L = 255; per channel of a colour F."""
    return _channels(fused, ir, vis, _ssim_single)


# name, function, better, needs the sources; in VIFB's (alphabetical) order
VIFB_TABLE: List[Tuple[str, Callable[..., float], str, bool]] = [
    ('Avg_gradient', vifb_avg_gradient, 'higher', False),
    ('Cross_entropy', vifb_cross_entropy, 'lower', True),
    ('Edge_intensity', vifb_edge_intensity, 'higher', False),
    ('Entropy', vifb_entropy, 'higher', False),
    ('Mutinf', vifb_mutinf, 'higher', True),
    ('Psnr', vifb_psnr, 'higher', True),
    ('Qabf', vifb_qabf, 'higher', True),
    ('Qcb', vifb_qcb, 'higher', True),
    ('Qcv', vifb_qcv, 'lower', True),
    ('Rmse', vifb_rmse, 'lower', True),
    ('Spatial_frequency', vifb_spatial_frequency, 'higher', False),
    ('Ssim', vifb_ssim, 'higher', True),
    ('Variance', vifb_variance, 'higher', False),
]


def _register(name: str, func: Callable[..., float], needs_sources: bool) -> None:
    def metric(img: Any, img_ir: Any = None, img_vis: Any = None, **kwargs: Any) -> float:
        if not needs_sources:
            return func(img)
        if img_ir is None or img_vis is None:
            raise ValueError(f'{name} needs the source images: pass img_ir and img_vis (the validation '
                             'metric_data must hold img, img_ir and img_vis)')
        return func(img, img_ir, img_vis)
    metric.__name__ = name
    metric.__doc__ = f'{(func.__doc__ or "").splitlines()[0]} YAML ``type: {name}``.'
    METRIC_REGISTRY.register(metric)


for _name, _func, _better, _needs in VIFB_TABLE:
    _register(f'calculate_vifb_{_name.lower()}', _func, _needs)
