"""Parity of zoo methods with their authors' published images (``scripts/verify_zoo.py``).

For each method and each reference set of its entry: fuse the set's inputs with the method (the
authors' weights, the entry's conventions or the reference's documented overrides, the fast path),
write nothing, compare the 8-bit result with the published image in grey (OpenCV's BGR->grey of
both, peak 255) and report min / median PSNR. For JPEG sets also the reference's own re-encoding
error: PSNR between the reference and itself re-encoded as JPEG at ``jpeg_quality``.
"""
from __future__ import annotations

import statistics
from typing import Any, Dict, List, Optional

import cv2
import numpy as np
import torch
from tqdm import tqdm

from fusion.inferencer import FusionInferencer
from fusion.utils.img_util import read_image, read_pair
from fusion.zoo.entry import load_zoo_entry, weights_path
from fusion.zoo.references import REFERENCE_SETS, reference_pairs
from fusion.zoo.runner import build_zoo_method


def psnr_u8(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float('inf') if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def grey_u8(img: np.ndarray) -> np.ndarray:
    """A decoded 8-bit image (BGR or grey) -> grey."""
    if img.ndim == 3:
        img = cv2.cvtColor(img[..., :3], cv2.COLOR_BGR2GRAY)
    return img


def jpeg_reencoding_psnr(img: np.ndarray, quality: int) -> float:
    ok, buf = cv2.imencode('.jpg', img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError('OpenCV cannot encode JPEG')
    return psnr_u8(grey_u8(img), grey_u8(cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)))


def _stats(values: List[float]) -> Dict[str, float]:
    finite = [min(v, 999.0) for v in values]  # identical images: inf, shown as 999
    return {'min': round(min(finite), 2), 'median': round(statistics.median(finite), 2)}


def fuse_to_image(net: torch.nn.Module, runner: FusionInferencer, ir_path: str, vis_path: str) -> np.ndarray:
    """One pair through ``runner`` and the method's save step -> the uint8 image it would write (RGB
    or grey)."""
    ir, ycrcb, is_gray = read_pair(ir_path, vis_path)
    vis = torch.from_numpy(ycrcb).permute(2, 0, 1)
    fused = runner([(vis[0], torch.from_numpy(ir))])[0]
    return net.image_from_fused(fused, vis[1:2], vis[2:3], is_gray)


def verify_method(name: str, peers: str, weights_dir: str, device: str = 'cpu', jpeg_quality: int = 75,
                  progress: bool = True) -> Dict[str, Any]:
    """``{'method', 'title', 'weights', 'sets': [{set, folder, images, psnr: {min, median}, per_image,
    conventions, note, [jpeg_reencoding_psnr]}]}``; ``skipped`` (a reason) when the weights are absent."""
    entry = load_zoo_entry(name)
    weights = weights_path(entry, weights_dir)
    report: Dict[str, Any] = {'method': entry.name, 'title': entry.title, 'weights': weights, 'sets': []}
    if weights is None:
        report['skipped'] = (f'no {", ".join(entry.weights["files"])} under {weights_dir} '
                             f'(or its {entry.weights["folder"]}/)')
        return report
    for ref in entry.references:
        spec = REFERENCE_SETS.get(ref['set'])
        if spec is None:
            raise ValueError(f'{entry.path}: unknown reference set {ref["set"]!r} '
                             f'(known: {", ".join(REFERENCE_SETS)})')
        try:
            pairs = reference_pairs(peers, ref['set'], ref.get('folder'))
        except ValueError as err:  # a set this collection lacks: reported, the others still run
            report['sets'].append({'set': ref['set'], 'folder': ref.get('folder'), 'missing': str(err)})
            continue
        net = build_zoo_method(entry.name, weights, device, ref.get('conventions'))
        runner = FusionInferencer(net, device, max_batch=1)
        per_image: Dict[str, float] = {}
        reenc: List[float] = []
        for pair in tqdm(pairs, desc=f'{entry.name}/{ref["set"]}', unit='img', disable=not progress):
            ours = fuse_to_image(net, runner, pair['ir_path'], pair['vis_path'])
            ours_bgr = cv2.cvtColor(ours, cv2.COLOR_RGB2BGR) if ours.ndim == 3 else ours
            published = read_image(pair['ref_path'])
            if published.shape[:2] != ours.shape[:2]:
                raise ValueError(f'{pair["ref_path"]}: {published.shape[1]}x{published.shape[0]} but the inputs are '
                                 f'{ours.shape[1]}x{ours.shape[0]}')
            per_image[pair['name']] = round(min(psnr_u8(grey_u8(ours_bgr), grey_u8(published)), 999.0), 2)
            if spec.jpeg:
                reenc.append(jpeg_reencoding_psnr(published, jpeg_quality))
        item: Dict[str, Any] = {'set': ref['set'], 'folder': ref.get('folder'), 'images': len(per_image),
                                'psnr': _stats(list(per_image.values())), 'per_image': per_image,
                                'conventions': ref.get('conventions'), 'note': ref.get('note'), 'jpeg': spec.jpeg}
        if spec.jpeg:
            item['jpeg_reencoding_psnr'] = {**_stats(reenc), 'quality': jpeg_quality}
        report['sets'].append(item)
    return report


def markdown_report(reports: List[Dict[str, Any]], command: Optional[str] = None) -> str:
    lines = ['| method | reference set | images | min PSNR (dB) | median PSNR (dB) '
             '| JPEG re-encoding (min / median dB) | note |', '|---|---|---|---|---|---|---|']
    for rep in reports:
        if rep.get('skipped'):
            lines.append(f'| {rep["title"]} | - | - | - | - | - | skipped: {rep["skipped"]} |')
            continue
        for s in rep['sets']:
            if 'missing' in s:
                lines.append(f'| {rep["title"]} | {s["set"]} | - | - | - | - | missing: {s["missing"]} |')
                continue
            jpeg = (f'{s["jpeg_reencoding_psnr"]["min"]:.2f} / {s["jpeg_reencoding_psnr"]["median"]:.2f}'
                    if s['jpeg'] else '-')
            name = s['set'] + (f' ({s["folder"]})' if s['folder'] else '')
            note = s['note'] or ''
            lines.append(f'| {rep["title"]} | {name} | {s["images"]} | {s["psnr"]["min"]:.2f} | '
                         f'{s["psnr"]["median"]:.2f} | {jpeg} | {note} |')
    if command:
        lines += ['', f'`{command}`']
    return '\n'.join(lines) + '\n'
