"""Folder to folder: register every infrared/visible pair, write the warped infrared images, the
visible images, a JSON report and a picture per pair (``scripts/register_pairs.py``,
``scripts/inference.py --register``)."""
from __future__ import annotations

import json
import os
import os.path as osp
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np
from tqdm import tqdm

from fusion.registration import transforms as T
from fusion.registration.estimate import RegistrationOptions, RegistrationResult, register_arrays, score_transform
from fusion.utils.file_util import atomic_write_bytes, check_output_location
from fusion.utils.img_util import ImageReadError, imwrite_atomic, ir_from_array, list_pairs, read_image


def _gray01(img: np.ndarray, source: str) -> np.ndarray:
    return ir_from_array(img, source)


def warp_to_visible(img: np.ndarray, h: np.ndarray, vis_size, k1: float = 0.0) -> np.ndarray:
    """The infrared image (any depth, channels kept) warped by ``D(H x)`` onto the visible grid;
    outside the infrared field of view: 0."""
    return T.warp(img, h, tuple(vis_size[:2]), k1, flags=cv2.INTER_LINEAR, border_mode=cv2.BORDER_CONSTANT)


def overlay_picture(ir: np.ndarray, vis: np.ndarray, h_before: np.ndarray, h_after: np.ndarray,
                    cells: int = 8, max_side: int = 480, k_after: float = 0.0) -> np.ndarray:
    """Checkerboards of the visible image and the warped infrared image, before (the images simply
    stretched onto one grid) | after registration (``D(H x)`` with lens term ``k_after``); uint8
    grey, long side at most ``max_side``."""
    size = vis.shape[:2]
    f = min(1.0, max_side / max(size))
    small = (max(1, int(round(size[0] * f))), max(1, int(round(size[1] * f))))
    a = T.grid_scale(size, small)
    v = cv2.resize(vis, (small[1], small[0]), interpolation=cv2.INTER_AREA)
    yy, xx = np.mgrid[0:small[0], 0:small[1]]
    step = max(small) / cells
    board = ((yy // step + xx // step) % 2).astype(bool)
    panels = []
    for h, k1 in ((h_before, 0.0), (h_after, k_after)):
        w = T.warp(ir, a @ h, small, k1, flags=cv2.INTER_LINEAR)
        panels.append(np.where(board, w, v))
    gap = np.ones((small[0], 6), np.float32)
    return (np.clip(np.hstack([panels[0], gap, panels[1]]), 0, 1) * 255 + 0.5).astype(np.uint8)


def fit_once(results: List[RegistrationResult], ir_size, vis_size) -> Optional[Tuple[np.ndarray, float]]:
    """One transform ``(H, k1)`` for a fixed rig: the median lens term of the confident estimates,
    and the homography through the per-corner median of where they put the infrared corners
    (robust to a minority of wrong estimates)."""
    good = [r for r in results if r.ok]
    if not good:
        return None
    k1 = float(np.median([r.k1 for r in good]))
    c = T.corners(ir_size)
    moved = np.median(np.stack([T.map_points(r.H, c, vis_size, r.k1) for r in good]), axis=0)
    moved = T.undistort(moved, k1, vis_size)
    h = cv2.getPerspectiveTransform(c.astype(np.float32), moved.astype(np.float32)).astype(np.float64)
    return T.normalize(h), k1


def register_folders(ir_dir: str, vis_dir: str, out_dir: str, opt: Optional[RegistrationOptions] = None,
                     json_path: Optional[str] = None, fit_once_n: Optional[int] = None,
                     transform: Optional[Tuple[np.ndarray, float]] = None, keep_unsure: bool = False,
                     progress: bool = True) -> Dict[str, object]:
    """Registers every pair of ``ir_dir``/``vis_dir``; writes ``out_dir/ir/<name>`` (infrared on the
    visible grid), ``out_dir/vis/<name>`` (the visible file, copied), ``out_dir/check/<stem>.jpg``
    (before | after checkerboards) and the JSON report (``json_path``, default
    ``out_dir/registration.json``). Unsure pairs (``ok`` false) are listed and not written unless
    ``keep_unsure``. ``fit_once_n``: one transform fitted over all (0) or N evenly sampled pairs and
    applied to every pair; ``transform``: apply this one, ``(H, k1)`` as
    :func:`fusion.registration.transforms.load_transform` gives. Returns the report."""
    opt = opt or RegistrationOptions()
    inputs = [('--ir', ir_dir), ('--vis', vis_dir)]
    check_output_location(out_dir, inputs, what='--out')
    json_path = json_path or osp.join(out_dir, 'registration.json')
    check_output_location(json_path, inputs, what='--json', is_file=True)
    pairs = list_pairs(ir_dir, vis_dir)
    loaded = {}

    def load(pair):
        if pair['name'] not in loaded:
            ir_raw = read_image(pair['ir_path'])
            vis_raw = read_image(pair['vis_path'])
            loaded.clear()  # one pair in memory at a time
            loaded[pair['name']] = (ir_raw, vis_raw, _gray01(ir_raw, pair['ir_path']),
                                    _gray01(vis_raw, pair['vis_path']))
        return loaded[pair['name']]

    fixed, fit_info = transform, None
    if fit_once_n is not None:
        n = len(pairs) if fit_once_n <= 0 else min(fit_once_n, len(pairs))
        sample = [pairs[int(i)] for i in np.linspace(0, len(pairs) - 1, n).round().astype(int)] if n else []
        results, sizes = [], set()
        for pair in tqdm(sample, desc='Fitting one transform', disable=not progress, unit='pair'):
            _, _, ir, vis = load(pair)
            sizes.add((ir.shape[:2], vis.shape[:2]))
            results.append(register_arrays(ir, vis, opt))
        if len(sizes) > 1:
            raise ImageReadError(f'--fit-once: the pairs of {ir_dir} / {vis_dir} differ in size; one transform '
                                 'for all needs equal sizes (register them one by one instead)')
        fixed = fit_once(results, *next(iter(sizes)))
        fit_info = {'pairs_used': len(results), 'pairs_ok': sum(r.ok for r in results)}
        if fixed is None:
            raise ValueError(f'--fit-once: none of the {len(results)} sampled pairs registered with confidence; '
                             'no transform to apply')
        fit_info.update(H=T.to_list(fixed[0]), k1=round(fixed[1], 6))
        fit_info['agreeing_pairs'] = sum(T.corner_error(r.H, fixed[0], next(iter(sizes))[1], r.k1, fixed[1]) < 2
                                         for r in results if r.ok)
    report: Dict[str, object] = {'options': {k: v for k, v in vars(opt).items()}, 'pairs': {}, 'unsure': []}
    if fit_info:
        report['fit_once'] = fit_info
    if transform is not None:
        report['transform'] = {'H': T.to_list(transform[0]), 'k1': transform[1]}
    for sub in ('ir', 'vis', 'check'):
        os.makedirs(osp.join(out_dir, sub), exist_ok=True)
    for pair in tqdm(pairs, desc='Registering', disable=not progress, unit='pair'):
        ir_raw, vis_raw, ir, vis = load(pair)
        res = score_transform(ir, vis, fixed[0], opt, fixed[1]) if fixed is not None else register_arrays(ir, vis, opt)
        entry = res.to_json()
        entry.update(ir=pair['ir_path'], vis=pair['vis_path'], written=False)
        if res.ok or keep_unsure:
            name_ir = osp.basename(pair['ir_path'])
            warped = warp_to_visible(ir_raw, res.H, vis.shape[:2], res.k1)
            imwrite_atomic(warped, osp.join(out_dir, 'ir', osp.splitext(name_ir)[0] + osp.splitext(name_ir)[1]),
                           rgb=False)
            with open(pair['vis_path'], 'rb') as f:
                atomic_write_bytes(f.read(), osp.join(out_dir, 'vis', osp.basename(pair['vis_path'])))
            entry['written'] = True
        pic = overlay_picture(ir, vis, T.grid_scale(ir.shape[:2], vis.shape[:2]), res.H, k_after=res.k1)
        imwrite_atomic(pic, osp.join(out_dir, 'check', pair['name'] + '.jpg'), rgb=False,
                       params=[cv2.IMWRITE_JPEG_QUALITY, 85])
        report['pairs'][pair['name']] = entry
        if not res.ok:
            report['unsure'].append({'name': pair['name'], 'reason': res.reason})
    atomic_write_bytes((json.dumps(report, indent=2) + '\n').encode(), json_path)
    report['json'] = json_path
    return report
