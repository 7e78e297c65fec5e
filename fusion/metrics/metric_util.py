"""Input conversion and filtering helpers shared by the fusion metrics.

Every metric works on 2-D float64 grey images in the 0-255 range. :func:`to_metric_gray` is the one
place that turns what callers pass (validation arrays, image files read with
``fusion.utils.img_util.read_gray``, torch tensors, colour arrays) into that form, so every metric
sees the same numbers.
"""
from __future__ import annotations

import warnings
from typing import Any, Tuple

import cv2
import numpy as np


__all__ = ['to_metric_gray', 'prepare_triple', 'quantize_8bit', 'valid_correlate', 'box_sum_valid',
           'gaussian_kernel_1d', 'keep_freed_memory', 'vif_scale_information']


def _to_numpy(img: Any, name: str) -> np.ndarray:
    if img is None:
        raise ValueError(f'{name}: no image given (None)')
    try:
        import torch
        if isinstance(img, torch.Tensor):
            img = img.detach().cpu().numpy()
    except ImportError:  # torch is a dependency of the project, but the metrics do not need it
        pass
    arr = np.asarray(img)
    if arr.dtype == object or arr.size == 0:
        raise ValueError(f'{name}: expected a non-empty image array, got {type(img).__name__} '
                         f'with shape {getattr(arr, "shape", None)}')
    return arr


def to_metric_gray(img: Any, name: str = 'image') -> np.ndarray:
    """Converts an image to the metric input: float64 H x W, grey, 0-255.

    Accepted inputs (documented conversion, also in docs/metrics.md):

    * 2-D arrays (or with singleton leading/trailing axes, e.g. 1 x H x W, H x W x 1, 1 x 1 x H x W):
      ``uint8`` used as is; ``uint16`` scaled by 255/65535; float taken as already 0-255
      (validation passes fused/IR/visible this way); values are not rounded or clipped.
    * H x W x 3 (or x 4, alpha dropped) **RGB** colour: grey = 0.299 R + 0.587 G + 0.114 B
      (OpenCV's weights, the same as the CDDFuse reader). Integer colour input is converted in
      float32 and rounded, which reproduces ``read_gray`` on the same image file exactly; float
      colour input is converted without rounding.
    * torch tensors are moved to the CPU and treated like the arrays above.
    """
    arr = _to_numpy(img, name)
    while arr.ndim > 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.dtype == bool:
        raise ValueError(f'{name}: boolean arrays are not images; pass 0-255 grey values')
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        arr = arr[..., :3]
        if arr.dtype.kind in 'ui':
            scale = 255.0 / 65535.0 if arr.dtype == np.uint16 else 1.0
            rgb = np.ascontiguousarray(arr, dtype=np.float32) * np.float32(scale)
            # float32 OpenCV conversion + round == read_gray on the same file (and the CDDFuse reader)
            return np.round(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)).astype(np.float64)
        arr = arr.astype(np.float64)
        gray = 0.299 * arr[..., 0] + 0.587 * arr[..., 1] + 0.114 * arr[..., 2]
        return _check_float(gray, name)
    if arr.ndim != 2:
        raise ValueError(f'{name}: expected a grey H x W or colour H x W x 3 image, got shape {arr.shape}')
    if arr.dtype == np.uint16:
        return arr.astype(np.float64) * (255.0 / 65535.0)
    if arr.dtype.kind in 'ui':
        return arr.astype(np.float64, copy=False)
    if arr.dtype.kind != 'f':
        raise ValueError(f'{name}: unsupported pixel type {arr.dtype}')
    return _check_float(arr.astype(np.float64, copy=False), name)


def _check_float(arr: np.ndarray, name: str) -> np.ndarray:
    if not np.isfinite(arr).all():
        raise ValueError(f'{name}: the image contains NaN or infinite values')
    peak = float(arr.max())
    if 0.0 < peak <= 1.0:
        # metrics such as SD, PSNR, VIF and SSIM depend on the scale: [0,1] data would give wrong numbers
        warnings.warn(f'{name}: float image with maximum {peak:.3g} <= 1; the fusion metrics expect 0-255 '
                      'grey values (multiply [0,1] images by 255)', stacklevel=3)
    return arr


def prepare_triple(fused: Any, ir: Any, vis: Any) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Converts fused, IR and visible images with :func:`to_metric_gray` and checks equal sizes."""
    f = to_metric_gray(fused, 'fused image')
    a = to_metric_gray(ir, 'infrared image')
    b = to_metric_gray(vis, 'visible image')
    if not (f.shape == a.shape == b.shape):
        raise ValueError(f'size mismatch: fused {f.shape[1]}x{f.shape[0]}, infrared {a.shape[1]}x{a.shape[0]}, '
                         f'visible {b.shape[1]}x{b.shape[0]} (W x H); the three images must be equal in size')
    return f, a, b


def quantize_8bit(img: np.ndarray) -> np.ndarray:
    """Histogram metrics (EN, MI) count 256 integer grey levels: round half to even, clip to 0..255.
    Integer-valued input is unchanged (CDDFuse casts ``np.round(F)`` to uint8 the same way)."""
    levels = np.rint(img)
    np.clip(levels, 0, 255, out=levels)
    return levels.astype(np.intp)


def gaussian_kernel_1d(size: int, sigma: float) -> np.ndarray:
    """Normalised 1-D Gaussian whose outer product equals MATLAB's ``fspecial('gaussian', size, sigma)``
    for the sizes used here (no tap falls below eps * max, so the 2-D window is exactly separable)."""
    half = (size - 1) / 2.0
    x = np.arange(size, dtype=np.float64) - half
    g = np.exp(-(x * x) / (2.0 * sigma * sigma))
    return g / g.sum()


def valid_correlate(img: np.ndarray, kernel_1d: np.ndarray) -> np.ndarray:
    """Separable 2-D correlation with ``outer(k, k)``, 'valid' region only (``filter2(.., 'valid')``).
    OpenCV's float64 separable filter: same sums as a direct 2-D filter to ~1e-13, 2-10x faster than
    scipy.ndimage."""
    k = len(kernel_1d)
    h, w = img.shape
    if h < k or w < k:
        raise ValueError(f'image of {w}x{h} is smaller than the {k}x{k} window')
    full = cv2.sepFilter2D(np.ascontiguousarray(img, dtype=np.float64), cv2.CV_64F, kernel_1d, kernel_1d,
                           anchor=(k // 2, k // 2), borderType=cv2.BORDER_CONSTANT)
    lo, hi = k // 2, k - 1 - k // 2
    return full[lo:h - hi, lo:w - hi]


VIF_SIGMA_NSQ = 2.0  # vifp_mscale's noise variance
VIF_EPS = 1e-10


def vif_scale_information(sigma1_sq: np.ndarray, sigma2_sq: np.ndarray, sigma12: np.ndarray) -> Tuple[float, float]:
    """One scale of pixel-domain VIF (Sheikh & Bovik ``vifp_mscale``) from the local statistics of
    reference (``sigma1_sq``), distorted image (``sigma2_sq``) and both (``sigma12``), the
    variances already clipped at 0: (information the distorted image keeps, information of the
    reference), log10 sums. ``vifp_mscale``'s special cases (flat reference, flat distorted image,
    negative gain) are applied in its order; the inputs are left unchanged."""
    g = sigma12 / (sigma1_sq + VIF_EPS)
    sv_sq = sigma2_sq - g * sigma12
    sigma1_sq = sigma1_sq.copy()
    flat_ref = sigma1_sq < VIF_EPS
    g[flat_ref] = 0.0
    sv_sq[flat_ref] = sigma2_sq[flat_ref]
    sigma1_sq[flat_ref] = 0.0
    flat_dist = sigma2_sq < VIF_EPS
    g[flat_dist] = 0.0
    sv_sq[flat_dist] = 0.0
    negative = g < 0
    sv_sq[negative] = sigma2_sq[negative]
    g[negative] = 0.0
    sv_sq[sv_sq <= VIF_EPS] = VIF_EPS
    num = float(np.sum(np.log10(1.0 + g * g * sigma1_sq / (sv_sq + VIF_SIGMA_NSQ))))
    den = float(np.sum(np.log10(1.0 + sigma1_sq / VIF_SIGMA_NSQ)))
    return num, den


def box_sum_valid(img: np.ndarray, k: int) -> np.ndarray:
    """Sum over every k x k window (valid region) from an integral image. For integer-valued input
    below 2**53 in total the sums are exact, so flat windows give exactly zero variance."""
    h, w = img.shape
    if h < k or w < k:
        raise ValueError(f'image of {w}x{h} is smaller than the {k}x{k} window')
    integral = np.zeros((h + 1, w + 1), dtype=np.float64)
    np.cumsum(np.cumsum(img, axis=0), axis=1, out=integral[1:, 1:])
    return integral[k:, k:] - integral[:-k, k:] - integral[k:, :-k] + integral[:-k, :-k]


def keep_freed_memory() -> bool:
    """Asks glibc to keep freed blocks of up to 32 MB in the heap instead of returning them to the
    system (mallopt M_MMAP_THRESHOLD / M_TRIM_THRESHOLD).

    The metrics create many image-sized temporaries; by default each one is a fresh mmap whose pages
    are faulted in again, which costs about 40 % of the metric time on the (sandboxed) machine we
    measured on. A process-wide setting, so only command-line tools call it (evaluate.py,
    benchmark_metrics.py), never the library on import. Returns False where unavailable (not glibc).
    """
    try:
        import ctypes
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    ok_mmap = mallopt(m_mmap_threshold, 32 * 1024 * 1024)
    ok_trim = mallopt(m_trim_threshold, 256 * 1024 * 1024)
    return bool(ok_mmap and ok_trim)
