"""Cropping large pairs into overlapping sub-images, keeping IR, visible, label and mask-cache
entries consistent: the work behind ``scripts/extract_subimages.py``.

Sub-image ``<name>_s<NNN>`` is written to ``<out>/ir``, ``<out>/vi`` (and ``<out>/label``) as PNG
with the source bit depth, and its masks (each source mask cropped, empty ones dropped, the K
largest re-sorted by area) to ``<out>/masks.lmdb`` with a fingerprint of the written crop, so the
dataset can verify them like any other cache.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import os.path as osp
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from fusion.data.mask_cache import MaskCache, MaskCacheWriter, encode_entry, make_meta
from fusion.data.patch_sources import select_largest
from fusion.data.sample_io import image_fingerprint
from fusion.utils.img_util import ImageReadError, imwrite_atomic, list_pairs, read_image, read_ir, read_vis_ycrcb


def crop_positions(length: int, crop: int, step: int, thresh: int) -> List[int]:
    """Start offsets along one axis: every ``step`` px, plus a last crop flush with the border when
    the uncovered remainder exceeds ``thresh`` px (smaller remainders are dropped). An image
    shorter than ``crop`` gives no position."""
    if length < crop:
        return []
    starts = list(range(0, length - crop + 1, step))
    if length - (starts[-1] + crop) > thresh:
        starts.append(length - crop)
    return starts


def _crop_pair(pair: Dict[str, str], out_dir: str, crop: Tuple[int, int], step: Tuple[int, int], thresh: int,
               cache: Optional[MaskCache], max_masks: int) -> Tuple[str, int, Dict[str, bytes]]:
    raws = {'ir': read_image(pair['ir_path']), 'vi': read_image(pair['vis_path'])}
    if 'label_path' in pair:
        raws['label'] = read_image(pair['label_path'])
    h, w = raws['ir'].shape[:2]
    for key, img in raws.items():
        if img.shape[:2] != (h, w):
            path = pair['vis_path'] if key == 'vi' else pair['label_path']
            raise ImageReadError(f'size mismatch: {path} is {img.shape[1]}x{img.shape[0]} but {pair["ir_path"]} is '
                                 f'{w}x{h}')
    entry = cache.require(pair['name'], (h, w), pair['ir_path']) if cache is not None else None
    encoded: Dict[str, bytes] = {}
    index = 0
    for y in crop_positions(h, crop[0], step[0], thresh):
        for x in crop_positions(w, crop[1], step[1], thresh):
            index += 1
            sub = f'{pair["name"]}_s{index:03d}'
            paths = {}
            for key, img in raws.items():
                paths[key] = osp.join(out_dir, key, sub + '.png')
                imwrite_atomic(np.ascontiguousarray(img[y:y + crop[0], x:x + crop[1]]), paths[key], rgb=False)
            if entry is not None:
                # fingerprint of the crop as the dataset will decode it from the written files
                fp = image_fingerprint(read_ir(paths['ir']), read_vis_ycrcb(paths['vi'])[0])
                win = (slice(None), slice(y, y + crop[0]), slice(x, x + crop[1]))
                ir_m = select_largest(list(entry.ir[win]), max_masks, crop)
                vis_m = select_largest(list(entry.vis[win]), max_masks, crop)
                encoded[sub] = encode_entry(ir_m, vis_m, fp)
    return pair['name'], index, encoded


_WORKER: Dict[str, Any] = {}


def _worker_init(kwargs: Dict[str, Any]) -> None:
    _WORKER.update(kwargs)


def _worker_crop(pair: Dict[str, str]) -> Tuple[str, int, Dict[str, bytes]]:
    return _crop_pair(pair, **_WORKER)


def extract_subimages(ir_dir: str, vis_dir: str, out_dir: str, crop_size: Sequence[int], step: Sequence[int],
                      thresh_size: int = 0, label_dir: Optional[str] = None, mask_cache: Optional[str] = None,
                      workers: int = 0, progress: bool = True) -> Dict[str, Any]:
    """Crops every pair (and its masks) into overlapping ``crop_size`` (H, W) windows every
    ``step`` (H, W) px. Returns a summary (pairs, sub-images)."""
    crop = (int(crop_size[0]), int(crop_size[-1]))
    stride = (int(step[0]), int(step[-1]))
    if min(crop) < 1 or min(stride) < 1:
        raise ValueError(f'crop size and step must be positive, got {crop} and {stride}')
    pairs = list_pairs(ir_dir, vis_dir, extra_dirs=[('label', label_dir)] if label_dir else None)
    for key in ['ir', 'vi'] + (['label'] if label_dir else []):
        os.makedirs(osp.join(out_dir, key), exist_ok=True)
    cache = MaskCache(mask_cache) if mask_cache else None
    writer = None
    if cache is not None:
        parent = cache.meta
        derived = {'crop_size': list(crop), 'step': list(stride), 'thresh_size': int(thresh_size),
                   'parent': parent.get('derived_from')}
        meta = make_meta(parent['source'], parent['max_masks'], fallback=parent.get('fallback'),
                         info={**parent.get('info', {}), 'parent_cache': osp.abspath(mask_cache)}, derived_from=derived)
        writer = MaskCacheWriter(osp.join(out_dir, 'masks.lmdb'), meta)
    kwargs = dict(out_dir=out_dir, crop=crop, step=stride, thresh=int(thresh_size), cache=cache,
                  max_masks=cache.meta['max_masks'] if cache else 0)
    summary = {'pairs': len(pairs), 'subimages': 0, 'skipped_small': [], 'out': out_dir}
    bar = tqdm(total=len(pairs), desc='sub-images', unit='img', disable=not progress)
    try:
        if workers > 0 and len(pairs) > 1:
            with mp.get_context('spawn').Pool(workers, initializer=_worker_init, initargs=(kwargs,)) as pool:
                results = pool.imap_unordered(_worker_crop, pairs, chunksize=1)
                for name, count, encoded in results:
                    _collect(summary, writer, name, count, encoded, bar)
        else:
            for pair in pairs:
                _collect(summary, writer, *_crop_pair(pair, **kwargs), bar)
    finally:
        bar.close()
        if writer is not None:
            writer.close()
    return summary


def _collect(summary: Dict[str, Any], writer: Optional[MaskCacheWriter], name: str, count: int,
             encoded: Dict[str, bytes], bar: tqdm) -> None:
    if writer is not None and encoded:
        writer.put_encoded(encoded)  # all sub-images of one pair in one transaction
    summary['subimages'] += count
    if count == 0:
        summary['skipped_small'].append(name)
    bar.update(1)
