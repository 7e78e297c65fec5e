"""Estimating the infrared -> visible transform of one pair.

1. **Prior**: the infrared image stretched onto the visible grid (same field of view); the search
   is for the residual transform on the visible grid.
2. **Coarse global search** at low resolution (visible long side ``coarse_size``): for every scale x
   rotation of a small grid the infrared image is warped, its orientation field
   (:mod:`fusion.registration.structure`) is cross-correlated with the visible one over all shifts
   within the range by FFT, and the best peak (sub-pixel) wins.
3. **Refinement**: 3 x 3 scale x rotation grids of shrinking steps around the estimate at finer
   levels (same FFT correlation), with parabolic sub-step interpolation; then the full homography
   (``refine_model``) and the lens term ``k1`` (``distortion``) from block matching
   (:mod:`fusion.registration.blocks`, the default) or a
   Gauss-Newton fit of the smoothed orientation fields (:mod:`fusion.registration.refine`); for
   ``model`` ``affine`` / ``homography`` shifts of large overlapping regions fitted by least
   squares, kept only where it raises the structure correlation.
4. **Confidence**: at ``check_size`` the orientation-field correlation of the aligned pair against
   its distribution under offsets of 3-24 pixels (a z score: how far the alignment stands out of
   what chance gives on this very pair), plus the checks that turn a doubtful pair into
   ``ok: false`` with a reason: too little structure, the peak off the refined estimate (the pyramid
   levels disagree), the transform at or beyond the search range, too few blocks agreeing, the
   corners swinging when a ninth of the blocks is left out.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
from scipy import fft as sfft  # keeps complex64 (numpy's FFT works in complex128, at twice the cost)

from fusion.registration import transforms as T
from fusion.registration.blocks import block_refine, subpixel_peak
from fusion.registration.refine import gauss_newton
from fusion.registration.structure import structure_maps, valid_mask


MODELS = ('similarity', 'affine', 'homography')
REFINE_MODELS = ('none', 'affine', 'homography')
REFINE_METHODS = ('blocks', 'gauss_newton')
DISTORTIONS = ('radial', 'none')
# two hypotheses of the global search are distinct when their corners lie this many coarse-level
# pixels apart (grid_search keeps such runners-up, search tells converged twins by it)
HYPOTHESIS_SEPARATION = 4.0


@dataclasses.dataclass
class RegistrationOptions:
    """What a user may change (``scripts/register_pairs.py`` exposes the main ones).

    ====================== =========== ============================================================
    option                 default     meaning
    ====================== =========== ============================================================
    model                  similarity  ``similarity`` (the searches only) or ``affine`` /
                                       ``homography`` (then a refinement of the full
                                       model, kept only where it raises the structure correlation)
    max_angle              7.0         search range: rotation, degrees
    scale_range            0.8, 1.25   search range: scale of the residual transform
    max_shift              0.12        search range: shift, fraction of the visible size per axis
    coarse_size            160         visible long side (pixels) of the global search
    n_scales, n_angles     9, 9        the global grid (geometric scale steps)
    coarse_candidates      3           distinct hypotheses of the global search followed through
                                       the first ``screen_levels`` local levels; the best there
                                       goes on (1: the global search's best alone)
    screen_levels          2           local levels that judge the hypotheses
    coarse_sigma           1.0         structure-map smoothing of the global search
    local_levels           4 levels    (long side, scale step, angle step, shift radius) of the
                                       local 3 x 3 grids after the global search
    levels, passes         (320, 640), 2  refinement levels and passes (affine / homography only)
    region_grid            3           3 x 3 overlapping half-size regions
    region_radius          4           their shift search, level pixels
    min_region_z           3.0         regions whose peak stands out less are left out
    check_size             320         visible long side of the confidence check
    min_score              see below   confidence threshold (z score); chosen on the calibration
                                       cases of the benchmark (docs/registration.md)
    min_structure          0.02        minimum strong-edge fraction in each image
    max_peak_offset        1.5         the correlation peak at ``check_size`` within this many
                                       pixels of the estimate
    max_level_disagreement 4.0         coarse and fine estimates within this many coarse pixels on
                                       the corners of the central half
    refine_model           homography  the model of the refinement after the grid searches:
                                       ``homography``, ``affine`` or ``none`` (grid searches only)
    refine_method          blocks      ``blocks`` (:mod:`fusion.registration.blocks`: local block
                                       shifts, MAGSAC++, Cauchy M-estimate) or ``gauss_newton``
                                       (:mod:`fusion.registration.refine`, kept only where it
                                       raises the structure correlation)
    block_passes           2 passes    (long side, block, stride, radius, inlier threshold) of the
                                       block refinement, level pixels
    block_min_margin       0.02        a block counts when its correlation peak stands out of the
                                       runner-up by this much
    min_block_inliers      12          fewer blocks agreeing on the transform: ``ok: false``
    max_corner_spread      5.0         ``ok: false`` when leaving one ninth of the blocks out moves
                                       the corners by more (mean, visible pixels; see
                                       :func:`fusion.registration.blocks.corner_spread`)
    distortion             radial      ``radial``: the block refinement also fits the lens term
                                       ``k1`` (the transform is ``D(H x)``,
                                       :mod:`fusion.registration.transforms`); ``none``: a plain
                                       homography (``k1`` = 0)
    max_k1                 0.15        a fitted ``|k1|`` above this is no lens: plain homography
    min_radial_blocks      24          fewer inlier blocks (small images): plain homography
    parallax_weight        0.1         the weight of the block residuals along their main direction
                                       where they clearly have one (parallax along the baseline;
                                       :func:`fusion.registration.blocks.parallax_direction`);
                                       1: every direction alike
    parallax_ramp          1.2, 4.0    residual anisotropy at which that weight starts to fall
                                       from 1, and from which it is ``parallax_weight``
    refine_levels          2 levels    (long side, blur sigma, iterations) of ``gauss_newton``
    ====================== =========== ============================================================
    """
    model: str = 'similarity'
    max_angle: float = 7.0
    scale_range: Tuple[float, float] = (0.8, 1.25)
    max_shift: float = 0.12
    coarse_size: int = 160
    n_scales: int = 9
    n_angles: int = 9
    coarse_candidates: int = 3
    screen_levels: int = 2
    levels: Tuple[int, ...] = (320, 640)
    check_size: int = 320
    min_score: float = 8.8
    min_structure: float = 0.02
    max_peak_offset: float = 1.5
    coarse_sigma: float = 1.0
    local_levels: Tuple[Tuple[int, float, float, int], ...] = ((160, 0.02, 0.8, 4), (320, 0.01, 0.4, 4),
                                                               (320, 0.005, 0.2, 3), (640, 0.0025, 0.1, 3))
    region_grid: int = 3
    region_radius: int = 4
    min_region_z: float = 3.0
    passes: int = 2
    max_level_disagreement: float = 4.0
    refine_model: str = 'homography'
    refine_levels: Tuple[Tuple[int, float, int], ...] = ((320, 1.5, 6), (640, 1.0, 6))
    refine_method: str = 'blocks'
    block_passes: Tuple[Tuple[int, int, int, int, float], ...] = ((640, 64, 32, 8, 1.5), (1024, 96, 32, 4, 1.5))
    block_min_margin: float = 0.02
    min_block_inliers: int = 12
    max_corner_spread: float = 5.0
    distortion: str = 'radial'
    max_k1: float = 0.15
    min_radial_blocks: int = 24
    parallax_weight: float = 0.1
    parallax_ramp: Tuple[float, float] = (1.2, 4.0)

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f'--model must be one of {", ".join(MODELS)}, got {self.model!r}')
        if self.refine_model not in REFINE_MODELS:
            raise ValueError(f'--refine must be one of {", ".join(REFINE_MODELS)}, got {self.refine_model!r}')
        if self.distortion not in DISTORTIONS:
            raise ValueError(f'--distortion must be one of {", ".join(DISTORTIONS)}, got {self.distortion!r}')
        if self.refine_method not in REFINE_METHODS:
            raise ValueError(f'--refine-method must be one of {", ".join(REFINE_METHODS)}, got {self.refine_method!r}')
        if not 0 < self.parallax_weight <= 1:
            raise ValueError(f'--parallax-weight must be in (0, 1], got {self.parallax_weight}')
        lo, hi = self.parallax_ramp
        if not 1 <= lo < hi:
            raise ValueError(f'parallax_ramp must be two anisotropies 1 <= low < high, got {self.parallax_ramp}')


@dataclasses.dataclass
class RegistrationResult:
    H: np.ndarray                      # infrared (x, y, 1) -> visible (x, y, w)
    ok: bool
    score: float
    reason: str = ''
    details: Dict[str, object] = dataclasses.field(default_factory=dict)
    k1: float = 0.0                    # the visible lens term: the transform is D(H x) (transforms.py)

    def to_json(self) -> dict:
        return {'H': T.to_list(self.H), 'k1': round(float(self.k1), 6), 'score': round(float(self.score), 3),
                'ok': bool(self.ok), 'reason': self.reason, **self.details}


# ---------------------------------------------------------------------------------------------
# pyramid levels on two grids
# ---------------------------------------------------------------------------------------------
def _level_size(size: Tuple[int, int], long_side: int) -> Tuple[Tuple[int, int], float]:
    h, w = size
    f = min(1.0, long_side / max(h, w))
    return (max(8, int(round(h * f))), max(8, int(round(w * f)))), f


def _resize(img: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    if img.shape[:2] == tuple(size):
        return img
    interp = cv2.INTER_AREA if size[0] < img.shape[0] else cv2.INTER_LINEAR
    return cv2.resize(img, (size[1], size[0]), interpolation=interp)


def _resize_mask(mask: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    if mask.shape[:2] == tuple(size):
        return mask
    return (cv2.resize(mask.astype(np.float32), (size[1], size[0]), interpolation=cv2.INTER_AREA) > 0.999).astype(
        np.uint8)


class _Pair:
    """The pair's images, masks and per-level structure maps, computed once."""

    def __init__(self, ir: np.ndarray, vis: np.ndarray) -> None:
        self.ir, self.vis = ir, vis
        self.ir_mask, self.vis_mask = valid_mask(ir), valid_mask(vis)
        self.ir_size, self.vis_size = ir.shape[:2], vis.shape[:2]
        self._vis_maps: Dict[tuple, tuple] = {}
        self._ir_levels: Dict[tuple, tuple] = {}  # resized infrared image and mask per size

    def vis_level(self, long_side: int, sigma: float = 1.0):
        """(size, full->level homography, field, strength, strong fraction) of the visible image."""
        key = (long_side, sigma)
        if key not in self._vis_maps:
            size, _ = _level_size(self.vis_size, long_side)
            a = T.grid_scale(self.vis_size, size)
            field, strength, strong = structure_maps(_resize(self.vis, size), _resize_mask(self.vis_mask, size),
                                                     sigma=sigma)
            self._vis_maps[key] = (size, a, field, strength, strong)
        return self._vis_maps[key]

    def ir_on_vis_level(self, h_full: np.ndarray, long_side: int, sigma: float = 1.0, k1: float = 0.0):
        """The infrared image warped by ``D(h_full x)`` (lens term ``k1``) onto the visible grid at
        a level: (field, strength, strong fraction, mask). Warps from an infrared level of similar
        resolution."""
        size, a_vis, *_ = self.vis_level(long_side)
        # the source level: about the resolution the warp needs, rounded up to a multiple of 16 so
        # that neighbouring transforms share one resized infrared image
        need = long_side * max(self.ir_size) / max(self.vis_size) * _level_scale(h_full)
        src_size, _ = _level_size(self.ir_size, int(16 * np.ceil(need / 16)))
        a_ir = T.grid_scale(self.ir_size, src_size)
        m = a_vis @ h_full @ np.linalg.inv(a_ir)
        if src_size not in self._ir_levels:
            self._ir_levels[src_size] = (_resize(self.ir, src_size), _resize_mask(self.ir_mask, src_size))
        src, src_mask = self._ir_levels[src_size]
        warped = T.warp(src, m, size, k1, flags=cv2.INTER_LINEAR, border_mode=cv2.BORDER_REPLICATE)
        mask = T.warp(src_mask, m, size, k1, flags=cv2.INTER_NEAREST, border_mode=cv2.BORDER_CONSTANT)
        field, strength, strong = structure_maps(warped, mask, sigma=sigma)
        return field, strength, strong, mask


def _level_scale(h: np.ndarray) -> float:
    return float(np.sqrt(abs(np.linalg.det(T.normalize(h)[:2, :2]))))


# ---------------------------------------------------------------------------------------------
# correlation of orientation fields
# ---------------------------------------------------------------------------------------------
def _correlation_surface(vis_fft: np.ndarray, field: np.ndarray, pad: Tuple[int, int], r: Tuple[int, int],
                         norm: float) -> np.ndarray:
    """Re sum conj(vis(x)) ir(x - d) / norm for shifts |dy| <= r[0], |dx| <= r[1] (centre = 0 shift)."""
    f = sfft.fft2(field, s=pad)
    c = sfft.ifft2(vis_fft * np.conj(f)).real
    # c[d] = sum_x vis(x + d) conj(ir(x)): the infrared content must move by +d
    c = np.roll(np.roll(c, r[0], axis=0), r[1], axis=1)[:2 * r[0] + 1, :2 * r[1] + 1]
    return c / norm


def _parabola(v: np.ndarray) -> float:
    """Offset (in steps, within +-0.5) of the vertex of the parabola through three values."""
    den = v[0] - 2 * v[1] + v[2]
    return float(np.clip(0.5 * (v[0] - v[2]) / den, -0.5, 0.5)) if den < 0 else 0.0


def _energy(field: np.ndarray) -> float:
    return float(np.sqrt(np.sum(np.abs(field) ** 2))) + 1e-9


def grid_search(pair: _Pair, base: np.ndarray, long_side: int, scales: np.ndarray, angles: np.ndarray,
                radius: Tuple[int, int], sigma: float = 1.0, interpolate: bool = False,
                candidates: int = 1, min_separation: float = HYPOTHESIS_SEPARATION) -> dict:
    """Best (scale, angle, shift) on top of ``base`` (infrared -> visible, full resolution): for
    every scale x angle about the visible centre the infrared image is warped onto the visible grid
    at a level and its orientation field correlated with the visible one over all shifts within
    ``radius`` (level pixels, y and x) by FFT; sub-pixel peak. Returns the full-resolution estimate,
    the peak correlation, its z score on the shift surface and whether the best lies on the grid's
    edge (the answer may lie outside); with ``candidates`` > 1 also, under ``'candidates'``, up to
    that many such results of distinct grid cells, best first, whose transforms lie at least
    ``min_separation`` level pixels apart at the corners (the runner-up hypotheses of a weak or
    repetitive pair)."""
    size, a_vis, vfield, _, _ = pair.vis_level(long_side, sigma)
    h, w = size
    r = radius
    pad = (cv2.getOptimalDFTSize(h + r[0]), cv2.getOptimalDFTSize(w + r[1]))
    vis_fft = sfft.fft2(vfield, s=pad)
    v_energy = _energy(vfield)
    center_full = ((pair.vis_size[1] - 1) / 2, (pair.vis_size[0] - 1) / 2)
    cells: List[dict] = []
    values = np.zeros((len(scales), len(angles)))
    for i, sc in enumerate(scales):
        for j, ang in enumerate(angles):
            h_try = T.similarity_about(center_full, sc, ang) @ base
            field, _, _, _ = pair.ir_on_vis_level(h_try, long_side, sigma=sigma)
            c = _correlation_surface(vis_fft, field, pad, r, v_energy * _energy(field))
            py, px, val = subpixel_peak(c)
            values[i, j] = val
            cells.append({'value': val, 'i': i, 'j': j, 'dy': py - r[0], 'dx': px - r[1], 'surface': c, 'h': h_try})
    cells.sort(key=lambda cell: -cell['value'])
    best = cells[0]
    if interpolate and len(scales) == 3 and len(angles) == 3 and best['i'] == 1 and best['j'] == 1:
        # sub-step scale and angle from parabolas through the peak values, then that cell's shift
        ds = _parabola(values[:, 1])
        da = _parabola(values[1, :])
        sc = float(np.exp(np.log(scales[1]) + ds * np.log(scales[2] / scales[1])))
        ang = float(angles[1] + da * (angles[2] - angles[1]))
        h_try = T.similarity_about(center_full, sc, ang) @ base
        field, _, _, _ = pair.ir_on_vis_level(h_try, long_side, sigma=sigma)
        c = _correlation_surface(vis_fft, field, pad, r, v_energy * _energy(field))
        py, px, val = subpixel_peak(c)
        if val >= best['value']:
            best.update(value=val, dy=py - r[0], dx=px - r[1], surface=c, h=h_try)
    f = size[1] / pair.vis_size[1], size[0] / pair.vis_size[0]

    def result(cell: dict) -> dict:
        shift = np.array([[1, 0, cell['dx'] / f[0]], [0, 1, cell['dy'] / f[1]], [0, 0, 1]])
        c = cell['surface']
        at_edge = ((len(scales) > 1 and cell['i'] in (0, len(scales) - 1))
                   or (len(angles) > 1 and cell['j'] in (0, len(angles) - 1))
                   or abs(cell['dy']) >= r[0] - 1 or abs(cell['dx']) >= r[1] - 1)
        z = (cell['value'] - float(np.median(c))) / (1.4826 * float(np.median(np.abs(c - np.median(c)))) + 1e-9)
        return {'H': shift @ cell['h'], 'value': cell['value'], 'z': z, 'at_edge': bool(at_edge),
                'scale': float(scales[cell['i']]), 'angle': float(angles[cell['j']])}

    out = result(best)
    if candidates > 1:
        chosen = [out]
        apart = min_separation / min(f)
        for cell in cells[1:]:
            if len(chosen) >= candidates:
                break
            res = result(cell)
            if all(T.corner_error(res['H'], other['H'], pair.vis_size) > apart for other in chosen):
                chosen.append(res)
        out['candidates'] = chosen
    return out


def coarse_search(pair: _Pair, prior: np.ndarray, opt: RegistrationOptions) -> dict:
    """The global search over the whole range at ``coarse_size`` (see :func:`grid_search`)."""
    size, _ = _level_size(pair.vis_size, opt.coarse_size)
    r = (int(np.ceil(opt.max_shift * size[0])) + 1, int(np.ceil(opt.max_shift * size[1])) + 1)
    return grid_search(pair, prior, opt.coarse_size, np.geomspace(opt.scale_range[0], opt.scale_range[1], opt.n_scales),
                       np.linspace(-opt.max_angle, opt.max_angle, opt.n_angles), r, sigma=opt.coarse_sigma,
                       candidates=opt.coarse_candidates)


def local_search(pair: _Pair, h: np.ndarray, opt: RegistrationOptions,
                 levels: Optional[Sequence[Tuple[int, float, float, int]]] = None) -> Tuple[np.ndarray, List[dict]]:
    """Finer and finer grids around the estimate, one per entry of ``levels`` (default
    ``opt.local_levels``: long side, scale step, angle step, shift radius); each grid has 3 x 3
    scale x angle cells."""
    found = []
    for long_side, s_step, a_step, rad in (opt.local_levels if levels is None else levels):
        res = grid_search(pair, h, long_side, np.array([1 - s_step, 1.0, 1 + s_step]),
                          np.array([-a_step, 0.0, a_step]), (rad, rad), interpolate=True)
        h = res['H']
        found.append(res)
    return h, found


def search(pair: _Pair, prior: np.ndarray, opt: RegistrationOptions) -> Tuple[dict, np.ndarray]:
    """The global search, then the local ones: ``(coarse result, estimate)``. Each of the global
    search's ``coarse_candidates`` distinct hypotheses is followed through the first
    ``screen_levels`` local levels and the one that correlates best there goes on; at the coarse
    level alone a wrong cell can win on a weak pair (little shared structure, smoke, fog), at
    twice the resolution the right one stands out."""
    coarse = coarse_search(pair, prior, opt)
    screen, rest = opt.local_levels[:opt.screen_levels], opt.local_levels[opt.screen_levels:]
    # a runner-up that the screening brings to where the best already is, is the same hypothesis:
    # the best keeps it (ties between near twins would only add noise)
    apart = max(pair.vis_size) / opt.coarse_size * HYPOTHESIS_SEPARATION
    best = None
    for cand in coarse.get('candidates', [coarse]):
        h, found = local_search(pair, cand['H'], opt, screen)
        value = found[-1]['value'] if found else cand['value']
        if best is None or (value > best[0] and T.corner_error(h, best[2], pair.vis_size) > apart):
            best = (value, cand, h)
    _, coarse, h = best
    h, _ = local_search(pair, h, opt, rest)
    return coarse, h


# ---------------------------------------------------------------------------------------------
# refinement of the full model: region shifts, least-squares fit
# ---------------------------------------------------------------------------------------------
def region_shifts(pair: _Pair, h: np.ndarray, long_side: int, grid: int, radius: int
                  ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Correspondences from large overlapping regions (half the image per axis, ``grid`` x ``grid``
    centres): each region's orientation-field correlation peak within ``radius`` level pixels,
    sub-pixel, with the infrared image warped by ``h``. Large regions keep the correlation as
    robust as the global one; their shifts carry the affine / perspective part. Returns infrared
    and visible full-resolution points and each region's z score."""
    size, a_vis, vfield, _, _ = pair.vis_level(long_side)
    ifield, _, _, _ = pair.ir_on_vis_level(h, long_side)
    rh, rw = size[0] // 2, size[1] // 2
    pad = (cv2.getOptimalDFTSize(rh + 2 * radius), cv2.getOptimalDFTSize(rw + 2 * radius))
    src, dst, zs = [], [], []
    for y0 in np.linspace(radius, size[0] - rh - radius, grid).astype(int):
        for x0 in np.linspace(radius, size[1] - rw - radius, grid).astype(int):
            ib = ifield[y0:y0 + rh, x0:x0 + rw]
            vb = vfield[y0 - radius:y0 + rh + radius, x0 - radius:x0 + rw + radius]
            c = sfft.ifft2(sfft.fft2(vb, s=pad) * np.conj(sfft.fft2(ib, s=pad))).real
            c = c[:2 * radius + 1, :2 * radius + 1] / (_energy(ib) * _energy(vb))
            py, px, val = subpixel_peak(c)
            if min(py, px) < 0.5 or max(py, px) > 2 * radius - 0.5:
                continue  # the peak on the window's edge: no reliable shift here
            z = (val - float(c.mean())) / (float(c.std()) + 1e-9)
            cy, cx = y0 + (rh - 1) / 2, x0 + (rw - 1) / 2
            src.append((cx, cy))
            dst.append((cx + px - radius, cy + py - radius))
            zs.append(z)
    if not src:
        return np.zeros((0, 2)), np.zeros((0, 2)), np.zeros(0)
    inv_level = np.linalg.inv(a_vis)
    src_full = T.apply(np.linalg.inv(h) @ inv_level, np.array(src, np.float64))
    return src_full, T.apply(inv_level, np.array(dst, np.float64)), np.array(zs)


def refine(pair: _Pair, h_init: np.ndarray, opt: RegistrationOptions) -> Tuple[np.ndarray, dict]:
    """Affine / homography over ``opt.levels``: region shifts, then a least-squares fit (regions
    whose peak does not stand out, z below ``opt.min_region_z``, are left out)."""
    h_cur = h_init.copy()
    info: Dict[str, object] = {'regions': []}
    need = 4 if opt.model == 'homography' else 3
    for long_side in opt.levels:
        for _ in range(opt.passes):
            src, dst, zs = region_shifts(pair, h_cur, long_side, opt.region_grid, opt.region_radius)
            keep = zs >= opt.min_region_z
            info['regions'].append(int(keep.sum()))
            if keep.sum() < need + 1:
                break
            s32, d32 = src[keep].astype(np.float32), dst[keep].astype(np.float32)
            if opt.model == 'homography':
                h_new, _ = cv2.findHomography(s32, d32, 0)
            else:
                a, _ = cv2.estimateAffine2D(s32, d32, method=cv2.LMEDS)
                h_new = None if a is None else np.vstack([a, [0, 0, 1]])
            if h_new is None:
                break
            h_cur = T.normalize(h_new.astype(np.float64))
    return h_cur, info


# ---------------------------------------------------------------------------------------------
# confidence
# ---------------------------------------------------------------------------------------------
def confidence(pair: _Pair, h: np.ndarray, opt: RegistrationOptions, k1: float = 0.0) -> dict:
    """z score of the aligned correlation against offsets of 3-24 pixels at ``check_size``, the
    correlation peak's distance from the estimate, and the structure of both images there."""
    size, _, vfield, _, vstrong = pair.vis_level(opt.check_size)
    field, _, istrong, _ = pair.ir_on_vis_level(h, opt.check_size, k1=k1)
    rad = 24
    pad = (cv2.getOptimalDFTSize(size[0] + rad), cv2.getOptimalDFTSize(size[1] + rad))
    c = _correlation_surface(sfft.fft2(vfield, s=pad), field, pad, (rad, rad), _energy(vfield) * _energy(field))
    yy, xx = np.mgrid[-rad:rad + 1, -rad:rad + 1]
    dist = np.hypot(yy, xx)
    ring = c[dist >= 3]
    centre = float(c[rad, rad])
    z = (centre - float(ring.mean())) / (float(ring.std()) + 1e-9)
    near = np.where(dist <= 3, c, -np.inf)
    py, px, _ = subpixel_peak(near)
    return {'z': z, 'ncc': centre, 'peak_offset': float(np.hypot(py - rad, px - rad)),
            'structure_ir': istrong, 'structure_vis': vstrong}


# ---------------------------------------------------------------------------------------------
# the whole estimate
# ---------------------------------------------------------------------------------------------
def _range_problem(h: np.ndarray, prior: np.ndarray, vis_size: Tuple[int, int], opt: RegistrationOptions,
                   tol: float = 1.0) -> str:
    res = T.decompose(h @ np.linalg.inv(prior), ((vis_size[1] - 1) / 2, (vis_size[0] - 1) / 2))
    lo, hi = opt.scale_range
    if res['flip']:
        return 'the transform mirrors the image'
    if not lo / tol <= res['scale'] <= hi * tol:
        return f'scale {res["scale"]:.3f} outside the search range {lo}-{hi}'
    if abs(res['angle']) > opt.max_angle * tol:
        return f'rotation {res["angle"]:.1f} deg outside the search range +-{opt.max_angle}'
    limit = opt.max_shift * tol
    if abs(res['shift'][0]) > limit * vis_size[1] or abs(res['shift'][1]) > limit * vis_size[0]:
        return f'shift ({res["shift"][0]:.0f}, {res["shift"][1]:.0f}) px outside the search range'
    if res['anisotropy'] > 1.3:
        return f'the transform is strongly skewed (axis ratio {res["anisotropy"]:.2f})'
    return ''


def _reasons(pair: _Pair, h: np.ndarray, prior: np.ndarray, conf: dict, opt: RegistrationOptions) -> List[str]:
    reasons = []
    if min(conf['structure_ir'], conf['structure_vis']) < opt.min_structure:
        which = 'infrared' if conf['structure_ir'] < conf['structure_vis'] else 'visible'
        least = min(conf['structure_ir'], conf['structure_vis'])
        reasons.append(f'not enough structure in the {which} image ({least:.3f} < {opt.min_structure} '
                       'strong-edge fraction)')
    if conf['z'] < opt.min_score:
        reasons.append(f'confidence {conf["z"]:.1f} below the threshold {opt.min_score}')
    if conf['peak_offset'] > opt.max_peak_offset:
        reasons.append(f'the structure correlation peaks {conf["peak_offset"]:.1f} px off the estimate')
    problem = _range_problem(h, prior, pair.vis_size, opt)
    if problem:
        reasons.append(problem)
    return reasons


def _details(conf: dict) -> dict:
    return {'ncc': round(conf['ncc'], 4), 'peak_offset': round(conf['peak_offset'], 2),
            'structure_ir': round(conf['structure_ir'], 4), 'structure_vis': round(conf['structure_vis'], 4)}


def register_arrays(ir: np.ndarray, vis: np.ndarray, opt: Optional[RegistrationOptions] = None) -> RegistrationResult:
    """The transform that maps the infrared image ``ir`` onto the visible image ``vis`` (grey
    float32 in [0, 1], any sizes), with its confidence; ``ok`` False with a reason when unsure."""
    opt = opt or RegistrationOptions()
    pair = _Pair(np.ascontiguousarray(ir, np.float32), np.ascontiguousarray(vis, np.float32))
    prior = T.grid_scale(pair.ir_size, pair.vis_size)
    _, _, _, _, vstrong = pair.vis_level(opt.check_size)
    _, _, istrong0, _ = pair.ir_on_vis_level(prior, opt.check_size)
    if min(vstrong, istrong0) < opt.min_structure:
        which = 'infrared' if istrong0 < vstrong else 'visible'
        return RegistrationResult(prior, False, 0.0, f'not enough structure in the {which} image '
                                  f'({min(vstrong, istrong0):.3f} < {opt.min_structure} strong-edge fraction)',
                                  {'structure_ir': round(istrong0, 4), 'structure_vis': round(vstrong, 4)})
    coarse, h = search(pair, prior, opt)
    refine_details: Dict[str, object] = {}
    k1 = 0.0
    if opt.refine_model != 'none' and opt.refine_method == 'blocks':
        h, k1, block_info = block_refine(pair, h, opt.refine_model, opt.block_passes, opt.block_min_margin,
                                         radial=opt.distortion == 'radial', max_k1=opt.max_k1,
                                         min_radial_blocks=opt.min_radial_blocks,
                                         parallax_weight=opt.parallax_weight, parallax_ramp=opt.parallax_ramp)
        refine_details = {'refine_' + k: v for k, v in block_info.items()}
    conf = confidence(pair, h, opt, k1)
    if opt.refine_model != 'none' and opt.refine_method == 'gauss_newton':
        # the continuous refinement is kept only where it raises the structure correlation
        h_gn, gn_info = gauss_newton(pair, h, opt.refine_model, opt.refine_levels)
        conf_gn = confidence(pair, h_gn, opt)
        refined = conf_gn['ncc'] > conf['ncc']
        if refined:
            h, conf = h_gn, conf_gn
        refine_details = {'refined': bool(refined), 'refine_iterations': gn_info['iterations'],
                          'refine_converged': bool(gn_info['converged'])}
    if opt.model != 'similarity':
        # the full model is kept only where it raises the structure correlation
        # (a plain model without the lens term)
        h_full, _ = refine(pair, h, opt)
        conf_full = confidence(pair, h_full, opt)
        if conf_full['ncc'] > conf['ncc']:
            h, conf, k1 = h_full, conf_full, 0.0
    reasons = _reasons(pair, h, prior, conf, opt)
    if 'refine_inliers' in refine_details and refine_details['refine_inliers'] < opt.min_block_inliers:
        reasons.append(f'only {refine_details["refine_inliers"]} blocks agree on the transform '
                       f'(< {opt.min_block_inliers})')
    spread = refine_details.get('refine_corner_spread_px')
    if spread is not None and spread > opt.max_corner_spread:
        reasons.append(f'the corners depend on which part of the image is seen ({spread:.1f} px when one ninth '
                       f'of the blocks is left out, > {opt.max_corner_spread}): parallax or lens distortion')
    # the levels must agree: the fine estimate within a few coarse pixels of the coarse one, compared
    # on the central half, where the lens term (which the coarse similarity lacks) moves little
    agree = T.corner_error(h, coarse['H'], pair.vis_size, k_est=k1, inset=0.25)
    coarse_px = max(pair.vis_size) / opt.coarse_size
    if agree > opt.max_level_disagreement * coarse_px:
        reasons.append(f'the pyramid levels disagree ({agree:.1f} px between the coarse and the fine estimate)')
    if coarse['at_edge']:
        reasons.append('the coarse search found its best at the edge of the search range')
    details = dict(_details(conf), coarse_z=round(coarse['z'], 2), coarse_to_fine_px=round(agree, 2),
                   **refine_details)
    return RegistrationResult(h, not reasons, conf['z'], '; '.join(reasons), details, k1)


def score_transform(ir: np.ndarray, vis: np.ndarray, h: np.ndarray, opt: Optional[RegistrationOptions] = None,
                    k1: float = 0.0) -> RegistrationResult:
    """The confidence of a given transform ``D(H x)`` (``--fit-once``, ``--transform``) on one pair."""
    opt = opt or RegistrationOptions()
    pair = _Pair(np.ascontiguousarray(ir, np.float32), np.ascontiguousarray(vis, np.float32))
    prior = T.grid_scale(pair.ir_size, pair.vis_size)
    conf = confidence(pair, h, opt, k1)
    reasons = _reasons(pair, h, prior, conf, opt)
    return RegistrationResult(h, not reasons, conf['z'], '; '.join(reasons), _details(conf), k1)
