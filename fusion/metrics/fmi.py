"""Fast feature mutual information (FMI), vectorised over all windows.

Definition (Haghighat & Razian, "Fast-FMI: non-reference image fusion metric", AICT 2014; the
``analysis_fmi`` of Tang's evaluation suite, as described in the project's metric reference notes):

For every w x w window (w = 3, all interior positions) and each source X in {A, B}:

1. If the raw X window equals the F window, FMI_XF = 1. Otherwise both windows are min-max
   normalised (a flat window becomes all ones) and divided by their sum: two 9-bin "pdfs" taken
   in column-major order, with CDFs their cumulative sums.
2. c = Pearson correlation of the two pdfs (0 when the centred dot product is exactly 0).
3. Joint pdf by Nelsen's method: k * (mixed difference of the Frechet bound) + (1 - k) * product,
   with the upper bound min(F_i, X_j) and k = c / corr_up when c >= 0, the lower bound
   max(F_i + X_j - 1, 0) and k = c / corr_lo when c < 0; corr_up/lo = the bound's covariance
   sum_ij (bound - F_i X_j) over the pdfs' population SDs (bin positions 1..9); k = 0 if c = 0 (upper
   case) or a SD is 0. Negative joint cells contribute -p log2|p| (MATLAB's real part).
4. FMI_XF = 2 MI / (H_X + H_F) in bits (0 when MI is exactly 0).

The window score is (FMI_AF + FMI_BF) / 2 and FMI is its mean. Quirk kept from the reference: in
the B branch the equality test compares the raw B window with the F window *as normalised in the A
branch* (unless the A branch found equality).

Features: 'none' (raw pixels, scaled to [0,1] as the suite is called) and 'dct' (orthonormal 2-D
DCT of the whole [0,1] image, windows slid over the coefficients).
"""
from __future__ import annotations

import math
from typing import Tuple

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy import fft


__all__ = ['feature_mutual_information', 'FMI_FEATURES']

FMI_FEATURES = ('none', 'dct')
_CHUNK_WINDOWS = 16384  # windows per vectorised block: the work arrays (windows x 18) stay in cache


def _features(img: np.ndarray, feature: str) -> np.ndarray:
    unit = img / 255.0  # the suite receives im2double images
    if feature == 'none':
        return unit
    if feature == 'dct':
        return fft.dctn(unit, type=2, norm='ortho')
    raise ValueError(f"unknown FMI feature {feature!r}; use one of {FMI_FEATURES} ('edge' and 'wavelet' "
                     'depend on MATLAB edge()/dwt2 details that cannot be reproduced exactly)')


def _windows_column_major(view: np.ndarray) -> np.ndarray:
    """Rows of a ``sliding_window_view`` (rows, cols, w, w) -> (rows*cols) x w*w windows, each flattened
    column by column as MATLAB's ``X(:)``."""
    w = view.shape[-1]
    return view.transpose(0, 1, 3, 2).reshape(-1, w * w)


def _minmax(win: np.ndarray) -> np.ndarray:
    lo = win.min(axis=1, keepdims=True)
    hi = win.max(axis=1, keepdims=True)
    span = hi - lo
    flat = span == 0
    return np.where(flat, 1.0, (win - lo) / np.where(flat, 1.0, span))


def _sequential_sum(values: np.ndarray) -> np.ndarray:
    """Row sums added left to right, as MATLAB/Octave add a short vector. The order matters: for two
    flat (uniform) windows the reference's ``pdf - mean(pdf)`` is a tiny nonzero constant, which makes
    their correlation exactly 1 and their FMI 1; a differently rounded mean would make it 0."""
    total = values[:, 0].copy()
    for col in range(1, values.shape[1]):
        total += values[:, col]
    return total


def _window_sum(win: np.ndarray) -> np.ndarray:
    """``sum(sum(X))`` of a 3x3 window in column-major order: column sums first, then their sum."""
    w = int(round(math.sqrt(win.shape[1])))
    cols = [_sequential_sum(win[:, c * w:(c + 1) * w]) for c in range(w)]
    total = cols[0]
    for col in cols[1:]:
        total = total + col
    return total


def _entropy_bits(p: np.ndarray) -> np.ndarray:
    with np.errstate(divide='ignore', invalid='ignore'):
        return -np.sum(np.where(p != 0, p * np.log2(np.where(p != 0, p, 1.0)), 0.0), axis=1)


def _phi(v: np.ndarray) -> np.ndarray:
    """-v log2|v| with 0 for v = 0 (negative cells keep the real part, as MATLAB's ``real`` does)."""
    magnitude = np.abs(v)
    logs = np.zeros_like(v)
    np.log2(magnitude, out=logs, where=magnitude > 0)
    return -v * logs


def _joint_entropy(f_pdf: np.ndarray, x_pdf: np.ndarray, f_cdf: np.ndarray, x_cdf: np.ndarray, corr: np.ndarray,
                   sd_product: np.ndarray, degenerate: np.ndarray, h_f: np.ndarray, h_x: np.ndarray,
                   upper: bool) -> np.ndarray:
    """Entropy (bits) of the Nelsen joint pdf J = k dM + (1 - k) p q^T of each row, with M the upper
    (min(F_i, X_j)) or lower (max(F_i + X_j - 1, 0)) Frechet bound of the two CDFs.

    dM is the comonotone (countermonotone) coupling of the two pdfs, which lives on at most 17 of
    the 81 cells: the staircase found by merging the two CDFs' breakpoints. Off the staircase
    J = (1 - k) p_i q_j, whose entropy sum over *all* cells has a closed form; the staircase cells
    are then corrected one by one. Same value as summing the 81 cells (to rounding), ~4x faster.
    """
    bins = f_pdf.shape[1]
    # staircase: merge F's breakpoints with X's (upper) or with 1 - X reversed (lower)
    other = x_cdf if upper else np.concatenate([1.0 - x_cdf[:, -2::-1], np.ones((len(x_cdf), 1))], axis=1)
    points = np.concatenate([f_cdf, other], axis=1)
    order = np.argsort(points, axis=1, kind='stable')
    ends = np.take_along_axis(points, order, axis=1)
    lengths = np.diff(ends, axis=1, prepend=0.0)
    from_f = order < bins
    f_bin = np.cumsum(from_f, axis=1, dtype=np.intp) - from_f  # F bins already closed before each segment
    o_bin = np.arange(2 * bins) - f_bin  # the other image's closed bins: the rest of the earlier breakpoints

    # sum_ij M_ij = integral over u of #{i: F_i > u} * #{j: X_j > u} (upper) or #{j: X_j > 1 - u}
    # (lower), a sum over the merged segments
    f_above = bins - f_bin
    x_above = (bins - o_bin) if upper else np.minimum(o_bin + 1, bins)
    bound_sum = np.einsum('ij,ij->i', lengths, (f_above * x_above).astype(np.float64))
    cov_bound = bound_sum - f_cdf.sum(axis=1) * x_cdf.sum(axis=1)
    with np.errstate(divide='ignore', invalid='ignore'):
        mix = np.where(degenerate, 0.0, corr / (cov_bound / sd_product))

    valid = (lengths > 0) & (f_bin < bins) & (o_bin < bins)
    x_bin = o_bin if upper else (bins - 1) - o_bin
    f_bin = np.minimum(f_bin, bins - 1)
    x_bin = np.clip(x_bin, 0, bins - 1)
    rest = (1.0 - mix)[:, None]
    independent = rest * np.take_along_axis(f_pdf, f_bin, axis=1) * np.take_along_axis(x_pdf, x_bin, axis=1)
    staircase = mix[:, None] * lengths + independent
    correction = np.where(valid, _phi(staircase) - _phi(independent), 0.0).sum(axis=1)

    # sum over all cells of phi((1 - k) p_i q_j) = -(1-k) [P Q log2|1-k| - Q H_p - P H_q]
    p_total = f_pdf.sum(axis=1)
    q_total = x_pdf.sum(axis=1)
    rest = rest[:, 0]
    with np.errstate(divide='ignore', invalid='ignore'):
        log_rest = np.where(rest != 0, np.log2(np.abs(np.where(rest != 0, rest, 1.0))), 0.0)
    all_cells = -rest * (p_total * q_total * log_rest - q_total * h_f - p_total * h_x)
    return all_cells + correction


def _fmi_pair(x_norm: np.ndarray, f_norm: np.ndarray) -> np.ndarray:
    """FMI_XF of each row pair of normalised windows (the non-equal branch)."""
    bins = x_norm.shape[1]
    x_pdf = x_norm / _window_sum(x_norm)[:, None]
    f_pdf = f_norm / _window_sum(f_norm)[:, None]
    x_cdf = np.cumsum(x_pdf, axis=1)
    f_cdf = np.cumsum(f_pdf, axis=1)

    # sums that decide branches (c == 0, SD == 0) are added in the reference's order
    x_c = x_pdf - (_sequential_sum(x_pdf) / bins)[:, None]
    f_c = f_pdf - (_sequential_sum(f_pdf) / bins)[:, None]
    dot = _sequential_sum(x_c * f_c)
    with np.errstate(divide='ignore', invalid='ignore'):
        corr = np.where(dot == 0, 0.0, dot / np.sqrt(_sequential_sum(x_c * x_c) * _sequential_sum(f_c * f_c)))

    pos = np.arange(1, bins + 1, dtype=np.float64)
    x_sd = np.sqrt(np.maximum(_sequential_sum(x_pdf * (pos * pos)) - _sequential_sum(x_pdf * pos) ** 2, 0.0))
    f_sd = np.sqrt(np.maximum(_sequential_sum(f_pdf * (pos * pos)) - _sequential_sum(f_pdf * pos) ** 2, 0.0))

    h_x = _entropy_bits(x_pdf)
    h_f = _entropy_bits(f_pdf)
    upper = corr >= 0
    degenerate = (x_sd == 0) | (f_sd == 0) | (upper & (corr == 0))
    joint_entropy = np.empty(len(corr))
    for use_upper in (True, False):
        rows = np.flatnonzero(upper == use_upper)
        if rows.size:
            joint_entropy[rows] = _joint_entropy(f_pdf[rows], x_pdf[rows], f_cdf[rows], x_cdf[rows], corr[rows],
                                                 f_sd[rows] * x_sd[rows], degenerate[rows], h_f[rows], h_x[rows],
                                                 use_upper)
    mi = h_x + h_f - joint_entropy
    with np.errstate(divide='ignore', invalid='ignore'):
        return np.where(mi == 0, 0.0, 2.0 * mi / (h_x + h_f))


def _fmi_block(a: np.ndarray, b: np.ndarray, f: np.ndarray) -> np.ndarray:
    f_norm = _minmax(f)
    eq_a = np.all(a == f, axis=1)
    # reference quirk: the B test sees F as the A branch left it (normalised unless A matched)
    f_seen_by_b = np.where(eq_a[:, None], f, f_norm)
    eq_b = np.all(b == f_seen_by_b, axis=1)
    fmi_af = np.ones(len(a))
    fmi_bf = np.ones(len(a))
    if not eq_a.all():
        fmi_af[~eq_a] = _fmi_pair(_minmax(a[~eq_a]), f_norm[~eq_a])
    if not eq_b.all():
        fmi_bf[~eq_b] = _fmi_pair(_minmax(b[~eq_b]), f_norm[~eq_b])
    return (fmi_af + fmi_bf) / 2.0


def feature_mutual_information(fused: np.ndarray, ir: np.ndarray, vis: np.ndarray, feature: str = 'none',
                               window: int = 3) -> float:
    """Fast-FMI of 2-D float images in 0-255 (see the module docstring)."""
    if window < 2 or min(fused.shape) < window:
        raise ValueError(f'FMI needs a window >= 2 no larger than the image; got window {window} for an image of '
                         f'{fused.shape[1]}x{fused.shape[0]}')
    feats: Tuple[np.ndarray, ...] = tuple(_features(np.asarray(x, dtype=np.float64), feature) for x in (ir, vis, fused))
    views = [sliding_window_view(x, (window, window)) for x in feats]  # no copy
    rows, cols = views[0].shape[:2]
    step = max(1, _CHUNK_WINDOWS // cols)  # whole rows of windows per block: memory stays bounded
    total = 0.0
    for start in range(0, rows, step):
        wins_a, wins_b, wins_f = (_windows_column_major(v[start:start + step]) for v in views)
        total += float(np.sum(_fmi_block(wins_a, wins_b, wins_f)))
    return total / (rows * cols)
