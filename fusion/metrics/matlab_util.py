"""MATLAB semantics the toolbox conventions (``tang``, ``vifb``) depend on, written in numpy/OpenCV.

The MATLAB metric toolboxes of the field get part of their numbers from how MATLAB itself computes:
integer (``uint8``) arithmetic rounds half away from zero and saturates at 0..255, ``rgb2gray`` uses
the NTSC inverse weights (and rounds for integer input), ``imread`` of a JPEG gives the libjpeg
decode, ``conv2``/``filter2``/``imfilter`` pad with zeros unless told otherwise, ``entropy`` counts a
256-bin ``imhist``. These helpers reproduce exactly those behaviours; the metric files
(``tang_metrics.py``, ``vifb_metrics.py``) call them where the toolbox code does the corresponding
MATLAB operation. See docs/metrics.md ("Toolbox conventions") for the list of quirks.
"""
from __future__ import annotations

import math
from typing import Tuple

import cv2
import numpy as np

from fusion.utils.img_util import ImageReadError, drop_alpha, read_image


__all__ = ['RGB2GRAY_WEIGHTS', 'matlab_round', 'to_uint8_saturate', 'rgb2gray', 'im2double', 'imread_matlab',
           'entropy_uint8', 'conv2_same', 'filter2', 'filter2_separable', 'imfilter_replicate', 'fspecial_gaussian',
           'gradient',
           'freqspace_radius', 'blkproc_sum']

# MATLAB rgb2gray: the first row of inv([1 .956 .621; 1 -.272 -.647; 1 -1.106 1.703]), as rgb2gray.m
RGB2GRAY_WEIGHTS: Tuple[float, float, float] = (0.298936021293775, 0.587043074451121, 0.114020904255103)


def matlab_round(x: np.ndarray) -> np.ndarray:
    """MATLAB ``round``: half away from zero (numpy's ``rint`` rounds half to even)."""
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def to_uint8_saturate(x: np.ndarray) -> np.ndarray:
    """What MATLAB stores when a double result is assigned to uint8: rounded half away from zero,
    saturated to 0..255 (e.g. ``uint8(200) - 210.4`` is 0, ``uint8(20) .^ 2`` is 255)."""
    return np.clip(matlab_round(np.asarray(x, dtype=np.float64)), 0, 255).astype(np.uint8)


def uint8_image(img, name: str = 'image') -> np.ndarray:
    """An image as a MATLAB toolbox holds it after ``imread``: uint8 H x W or H x W x 3 (RGB order,
    leading 1-sized axes and alpha dropped); other arrays are taken as 0-255 values, rounded half
    away from zero and saturated to uint8 (one place for both toolbox conventions)."""
    from fusion.metrics.metric_util import _to_numpy
    arr = _to_numpy(img, name)
    while arr.ndim > 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[..., :3]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3):
        raise ValueError(f'{name}: expected a grey H x W or colour H x W x 3 image, got shape {arr.shape}')
    if arr.dtype != np.uint8:
        if arr.dtype.kind not in 'uif' or not np.isfinite(arr).all():
            raise ValueError(f'{name}: expected finite 0-255 pixel values, got {arr.dtype}')
        arr = to_uint8_saturate(arr)
    return arr


def rgb2gray(img: np.ndarray) -> np.ndarray:
    """MATLAB ``rgb2gray`` of an H x W x 3 RGB array. uint8 input: the weighted sum rounded and
    saturated to uint8 (imlincomb); float input: the weighted sum in float64, not rounded."""
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f'rgb2gray expects an H x W x 3 array, got shape {img.shape}')
    x = img.astype(np.float64)
    w0, w1, w2 = RGB2GRAY_WEIGHTS
    gray = w0 * x[..., 0] + w1 * x[..., 1] + w2 * x[..., 2]
    if img.dtype == np.uint8:
        return to_uint8_saturate(gray)
    return gray


def im2double(img: np.ndarray) -> np.ndarray:
    """MATLAB ``im2double``: uint8 / 255, uint16 / 65535, float arrays returned unchanged (so
    ``255 * im2double(double_image)`` is 255 times the 0-255 values, a quirk the VIFB Qabf keeps)."""
    if img.dtype == np.uint8:
        return img.astype(np.float64) / 255.0
    if img.dtype == np.uint16:
        return img.astype(np.float64) / 65535.0
    return np.asarray(img, dtype=np.float64)


def imread_matlab(path: str) -> np.ndarray:
    """MATLAB ``imread``: the stored pixels unchanged, colour in **RGB** order (OpenCV gives BGR),
    alpha dropped. 8-bit files give uint8. JPEG files are decoded by OpenCV's libjpeg(-turbo);
    the grey-level differences to MATLAB's decoder are measured in docs/metrics.md."""
    img = drop_alpha(read_image(path))
    if img.dtype != np.uint8:
        raise ImageReadError(f'{path}: the toolbox conventions read 8-bit images, got {img.dtype}')
    if img.ndim == 3:
        img = np.ascontiguousarray(img[..., ::-1])
    return img


def entropy_uint8(img: np.ndarray) -> float:
    """MATLAB ``entropy`` of a uint8 image: 256-bin ``imhist``, log2, empty bins left out."""
    counts = np.bincount(np.asarray(img, dtype=np.uint8).ravel(), minlength=256).astype(np.float64)
    p = counts[counts > 0] / img.size
    return float(-np.sum(p * np.log2(p)))


def conv2_same(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """MATLAB ``conv2(img, kernel, 'same')`` for small odd kernels (the 3 x 3 Sobel operators): true
    convolution, zero padding, and MATLAB's summation order: the taps are accumulated one shifted
    image at a time in column-major order of the kernel, zero taps skipped.

    The order matters on [0,1] data (``im2double`` images): x/255 sums that are zero in exact
    arithmetic come out as +-1e-17 or exactly 0 depending on it, which flips Qabf's orientation
    (atan(y/x) against pi/2 for x == 0) and moved Tang's Qabf by up to 1e-3 with any other order.
    """
    kh, kw = kernel.shape
    if kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f'conv2_same supports odd kernel sizes, got {kh}x{kw}')
    h, w = img.shape
    ch, cw = kh // 2, kw // 2
    padded = np.pad(np.asarray(img, dtype=np.float64), ((ch, ch), (cw, cw)))
    out = np.zeros((h, w), dtype=np.float64)
    for j in range(kw):  # column-major: the row index i runs fastest
        for i in range(kh):
            coef = float(kernel[i, j])
            if coef == 0.0:
                continue
            # C(r, c) = sum_ij K(i, j) A(r - (i - ch), c - (j - cw))
            shifted = padded[2 * ch - i:2 * ch - i + h, 2 * cw - j:2 * cw - j + w]
            out += shifted if coef == 1.0 else coef * shifted
    return out


def filter2(kernel: np.ndarray, img: np.ndarray, shape: str = 'same') -> np.ndarray:
    """MATLAB ``filter2(kernel, img, shape)``: correlation with zero padding; shape 'same' or 'valid'.
    Complex images are filtered part by part (OpenCV filters real arrays)."""
    if np.iscomplexobj(img):
        return filter2(kernel, img.real, shape) + 1j * filter2(kernel, img.imag, shape)
    kh, kw = kernel.shape
    if kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f'filter2 supports odd kernel sizes, got {kh}x{kw}')
    h, w = img.shape
    src = np.ascontiguousarray(img, dtype=np.float64)
    anchor = ((kw - 1) // 2, (kh - 1) // 2)
    out = cv2.filter2D(src, cv2.CV_64F, np.ascontiguousarray(kernel, dtype=np.float64), anchor=anchor,
                       borderType=cv2.BORDER_CONSTANT)
    if shape == 'same':
        return out
    if shape == 'valid':
        if h < kh or w < kw:
            raise ValueError(f'image of {w}x{h} is smaller than the {kw}x{kh} window')
        top, left = anchor[1], anchor[0]
        return out[top:top + h - kh + 1, left:left + w - kw + 1]
    raise ValueError(f'unknown filter2 shape {shape!r}')


def filter2_separable(column: np.ndarray, row: np.ndarray, img: np.ndarray, shape: str = 'same') -> np.ndarray:
    """``filter2(column * row, img, shape)`` for a separable kernel (outer product of two odd-length
    vectors), as two 1-D passes: the same sums to ~1e-16 relative, 5-15x faster for 11 x 11 and
    31 x 31 Gaussians. Complex images part by part."""
    if np.iscomplexobj(img):
        return filter2_separable(column, row, img.real, shape) + 1j * filter2_separable(column, row, img.imag, shape)
    kh, kw = len(column), len(row)
    if kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f'filter2_separable supports odd kernel sizes, got {kh}x{kw}')
    h, w = img.shape
    anchor = ((kw - 1) // 2, (kh - 1) // 2)
    out = cv2.sepFilter2D(np.ascontiguousarray(img, dtype=np.float64), cv2.CV_64F,
                          np.ascontiguousarray(row, dtype=np.float64), np.ascontiguousarray(column, dtype=np.float64),
                          anchor=anchor, borderType=cv2.BORDER_CONSTANT)
    if shape == 'same':
        return out
    if shape == 'valid':
        if h < kh or w < kw:
            raise ValueError(f'image of {w}x{h} is smaller than the {kw}x{kh} window')
        return out[anchor[1]:anchor[1] + h - kh + 1, anchor[0]:anchor[0] + w - kw + 1]
    raise ValueError(f'unknown filter2 shape {shape!r}')


def imfilter_replicate(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """MATLAB ``imfilter(img, kernel, 'replicate')`` on a float image: correlation, border pixels
    repeated, output the size of the input."""
    kh, kw = kernel.shape
    anchor = ((kw - 1) // 2, (kh - 1) // 2)
    return cv2.filter2D(np.ascontiguousarray(img, dtype=np.float64), cv2.CV_64F,
                        np.ascontiguousarray(kernel, dtype=np.float64), anchor=anchor,
                        borderType=cv2.BORDER_REPLICATE)


def fspecial_gaussian(size: int, sigma: float) -> np.ndarray:
    """MATLAB ``fspecial('gaussian', size, sigma)``: normalised, taps below eps * max set to zero."""
    half = (size - 1) / 2.0
    x = np.arange(size, dtype=np.float64) - half
    g = np.exp(-(x[:, None] ** 2 + x[None, :] ** 2) / (2.0 * sigma * sigma))
    g[g < np.finfo(np.float64).eps * g.max()] = 0.0
    return g / g.sum()


def gradient(band: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """MATLAB ``[dzdx, dzdy] = gradient(band)``: central differences inside, one-sided at the
    borders; x along columns. (numpy's gradient with unit spacing computes the same.)"""
    dzdy, dzdx = np.gradient(np.asarray(band, dtype=np.float64))
    return dzdx, dzdy


def freqspace_radius(h: int, w: int, scale_x: float, scale_y: float) -> np.ndarray:
    """``[u, v] = freqspace([h, w], 'meshgrid'); r = sqrt((scale_x u)^2 + (scale_y v)^2)``: MATLAB's
    frequency grid, (-n/2 .. n/2-1) * 2/n for even n and (-(n-1)/2 .. (n-1)/2) * 2/n for odd n."""
    def axis(n: int) -> np.ndarray:
        return (np.arange(n, dtype=np.float64) - math.floor(n / 2)) * (2.0 / n) if n % 2 == 0 else \
            (np.arange(n, dtype=np.float64) - (n - 1) / 2.0) * (2.0 / n)
    u = axis(w)[None, :] * scale_x
    v = axis(h)[:, None] * scale_y
    return np.sqrt(u * u + v * v)


def blkproc_sum(values: np.ndarray, block: int) -> np.ndarray:
    """Per-block sums of ``blkproc(x, [block block], @(b) sum(sum(b)))``: blkproc zero-pads the
    image to whole blocks at the bottom and right, so a partial block sums its real pixels only
    (and a mean over a block divides by block^2, padding included)."""
    h, w = values.shape
    hb, wb = -(-h // block), -(-w // block)
    padded = np.zeros((hb * block, wb * block), dtype=values.dtype)
    padded[:h, :w] = values
    return padded.reshape(hb, block, wb, block).sum(axis=(1, 3))
