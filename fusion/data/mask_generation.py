"""Fills a mask cache from a folder of IR/visible(/label) pairs: the work behind
``scripts/generate_masks.py``, callable from Python and tests.

Resumable: entries already in the cache are skipped after checking that they were made from the
same images (fingerprint); each new entry is one LMDB transaction, so an interrupted run leaves
only complete entries. The cache metadata (source, settings, weights hash, fallback) must match
the request, otherwise the run stops with the differences listed.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import os.path as osp
import shutil
from typing import Any, Dict, Iterable, List, Optional, Tuple

from tqdm import tqdm

from fusion.data.mask_cache import (MaskCache, MaskCacheError, MaskCacheWriter, encode_entry, entry_summary, make_meta,
                                    meta_differences)
from fusion.data.patch_sources import MaskInput, PatchSource, build_patch_source, select_largest
from fusion.data.sample_io import check_label, gray_to_rgb_uint8, image_fingerprint, raw_to_rgb_uint8, read_label
from fusion.utils.file_util import check_output_location
from fusion.utils.img_util import list_pairs, read_image, read_pair


logger = logging.getLogger('basicsr')


def _load_pair(pair: Dict[str, str], source: PatchSource) -> Tuple[MaskInput, str]:
    """Reads what ``source`` needs and the pair's fingerprint; size errors name the files."""
    ir, ycrcb = read_pair(pair['ir_path'], pair['vis_path'])[:2]
    inp = MaskInput(name=pair['name'], shape=ir.shape[:2])
    if 'label_path' in pair:
        inp.label = read_label(pair['label_path'])
        check_label(inp.label, ir, pair['label_path'], pair['ir_path'])
    if 'label' in source.needs and inp.label is None:
        raise ValueError(f'the {source.type_name!r} patch source needs labels: give the label folder')
    if 'rgb' in source.needs:
        inp.ir_rgb = gray_to_rgb_uint8(ir)
        # SAM wants RGB; read the file itself rather than invert YCrCb (exact colours)
        inp.vis_rgb = raw_to_rgb_uint8(read_image(pair['vis_path']))
    return inp, image_fingerprint(ir, ycrcb)


def make_entry(pair: Dict[str, str], source: PatchSource, max_masks: int) -> Tuple[str, bytes, int, int]:
    """Masks of one pair -> (name, encoded entry, #IR masks kept, #visible masks kept)."""
    inp, fingerprint = _load_pair(pair, source)
    ir_masks, vis_masks = source.generate(inp, max_masks=max_masks)
    ir_sel = select_largest(ir_masks, max_masks, inp.shape)
    vis_sel = select_largest(vis_masks, max_masks, inp.shape)
    return pair['name'], encode_entry(ir_sel, vis_sel, fingerprint), len(ir_sel), len(vis_sel)


# worker-process state for multiprocessing (the source is sent once per worker, not per pair)
_WORKER: Dict[str, Any] = {}


def _worker_init(source: PatchSource, max_masks: int) -> None:
    _WORKER['source'], _WORKER['max_masks'] = source, max_masks


def _worker_entry(pair: Dict[str, str]) -> Tuple[str, bytes, int, int]:
    return make_entry(pair, _WORKER['source'], _WORKER['max_masks'])


def generate_mask_cache(ir_dir: str, vis_dir: str, out: str, source_opt: Dict[str, Any],
                        label_dir: Optional[str] = None, max_masks: int = 8, allow_fallback: bool = True,
                        fallback_opt: Optional[Dict[str, Any]] = None, overwrite: bool = False,
                        verify_existing: bool = True, names: Optional[Iterable[str]] = None,
                        workers: int = 0, progress: bool = True,
                        extra_info: Optional[Dict[str, Any]] = None,
                        compatible_with: Optional[str] = None) -> Dict[str, Any]:
    """Generates masks for every pair (or the pairs in ``names``) into the cache at ``out``.

    ``workers`` > 0 runs the source in that many processes (useful for the CPU sources; SAM on a
    GPU should stay at 0; for several GPUs or nodes see ``fusion/data/mask_shards.py``).
    ``extra_info`` is added to the metadata's ``info`` (not part of the cache's identity).
    ``compatible_with``: an existing cache (e.g. the final cache of a shard) whose settings must be
    these, checked before any pair is generated.
    Returns a summary dict (source used, counts).
    """
    if max_masks < 1:
        raise ValueError(f'max_masks must be >= 1, got {max_masks}')
    check_output_location(out, [('--ir', ir_dir), ('--vis', vis_dir), ('--label', label_dir or '')], what='--out')
    pairs = list_pairs(ir_dir, vis_dir, extra_dirs=[('label', label_dir)] if label_dir else None)
    if names is not None:
        wanted = set(names)
        unknown = sorted(wanted - {p['name'] for p in pairs})
        if unknown:
            raise ValueError(f'names not found in {ir_dir}: {unknown[:10]}')
        pairs = [p for p in pairs if p['name'] in wanted]
    source = build_patch_source(source_opt, allow_fallback=allow_fallback, fallback_opt=fallback_opt)
    meta = make_meta(source.describe(), max_masks, fallback=source.fallback,
                     info={**source.info(), 'ir_dir': ir_dir, 'vis_dir': vis_dir, 'label_dir': label_dir,
                           **(extra_info or {})})
    if compatible_with is not None:
        _check_compatible(compatible_with, meta)
    used = source.describe()['type']
    if source.fallback:
        used += f' (FALLBACK for {source.fallback["requested"]}: {source.fallback["reason"]})'
    logger.info(f'mask source: {used}')
    summary = {'cache': out, 'source': source.type_name, 'fallback': source.fallback, 'pairs': len(pairs),
               'generated': 0, 'skipped': 0, 'fewer_than_max': 0, 'without_masks': 0}
    created = not osp.exists(out)
    try:
        _fill_cache(out, meta, overwrite, pairs, source, max_masks, verify_existing, workers, progress, summary)
    except BaseException:
        if created and summary['generated'] == 0 and osp.isdir(out):
            shutil.rmtree(out, ignore_errors=True)  # a failed first run leaves no empty cache behind
        raise
    if summary['without_masks']:
        logger.warning(f'{summary["without_masks"]} image(s) got no mask in at least one modality; '
                       'the dataset pads them as its `missing_masks` option says')
    return summary


def _check_compatible(path: str, meta: Dict[str, Any]) -> None:
    cache = MaskCache(path)
    try:
        diff = meta_differences(cache.meta, meta)
    finally:
        cache.close()
    if diff:
        raise MaskCacheError(f'{path}: the existing mask cache was made with other settings:\n  ' + '\n  '.join(diff)
                             + '\nUse another output path, or the same settings.')


def _fill_cache(out: str, meta: Dict[str, Any], overwrite: bool, pairs: List[Dict[str, str]], source,
                max_masks: int, verify_existing: bool, workers: int, progress: bool, summary: Dict[str, Any]) -> None:
    with MaskCacheWriter(out, meta, overwrite=overwrite) as writer:
        done = set(writer.names())
        todo: List[Dict[str, str]] = []
        for pair in tqdm(pairs, desc='checking existing entries', disable=not progress or not done, unit='img'):
            if pair['name'] not in done:
                todo.append(pair)
                continue
            if verify_existing:
                stored = entry_summary(writer.get_raw(pair['name']), f'{out}:{pair["name"]}')['fingerprint']
                if stored != image_fingerprint(*read_pair(pair['ir_path'], pair['vis_path'])[:2]):
                    raise MaskCacheError(
                        f'{out}: the entry "{pair["name"]}" was made from other images than {pair["ir_path"]} / '
                        f'{pair["vis_path"]}; use another output path or --overwrite')
            summary['skipped'] += 1
        bar = tqdm(total=len(todo), desc=f'{source.type_name} masks', disable=not progress, unit='img')

        def consume(results: Iterable[Tuple[str, bytes, int, int]]) -> None:
            for name, blob, n_ir, n_vis in results:
                writer.put_encoded({name: blob})  # one transaction per image: never a partial entry
                summary['generated'] += 1
                summary['fewer_than_max'] += int(min(n_ir, n_vis) < max_masks)
                summary['without_masks'] += int(min(n_ir, n_vis) == 0)
                bar.update(1)
                bar.set_postfix(ir=n_ir, vis=n_vis)

        if workers > 0 and len(todo) > 1:
            ctx = mp.get_context('spawn')  # fork + torch/OpenMP threads can deadlock
            with ctx.Pool(workers, initializer=_worker_init, initargs=(source, max_masks)) as pool:
                consume(pool.imap_unordered(_worker_entry, todo, chunksize=1))
        else:
            consume(make_entry(p, source, max_masks) for p in todo)
        bar.close()
