"""IR / visible / label folders -> LMDBs for ``io_backend: lmdb``: the work behind
``scripts/create_lmdb.py``.

Each LMDB stores the original file bytes under the pair's base name (no re-encoding: exact,
and as fast as copying), with basicsr's ``meta_info.txt`` beside the data. Every file is decoded
once first, so an unreadable file or a size mismatch stops the run with the file named before
anything is written. The LMDBs are built as ``<name>.lmdb.partial`` and renamed when complete,
so an interrupted run never leaves a usable-looking half LMDB.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import os.path as osp
import shutil
from typing import Any, Dict, List, Optional, Tuple

from tqdm import tqdm

from fusion.data.lmdb_store import LmdbWriter, write_meta_info
from fusion.utils.img_util import ImageReadError, decode_image, list_pairs


MODALITIES = (('ir', 'ir'), ('vis', 'vis'), ('label', 'label'))  # (pair key, LMDB name)


def _read_pair(pair: Dict[str, str]) -> Tuple[str, Dict[str, Tuple[bytes, str, Tuple[int, ...]]]]:
    out = {}
    ref = None
    for key, _ in MODALITIES:
        path = pair.get(f'{key}_path')
        if path is None:
            continue
        with open(path, 'rb') as f:
            data = f.read()
        img = decode_image(data, path)
        shape = img.shape if img.ndim == 3 else (*img.shape, 1)
        if ref is None:
            ref = (path, shape)
        elif shape[:2] != ref[1][:2]:
            raise ImageReadError(f'size mismatch: {path} is {shape[1]}x{shape[0]} but {ref[0]} is '
                                 f'{ref[1][1]}x{ref[1][0]} (WxH)')
        out[key] = (data, osp.splitext(path)[1].lower(), shape)
    return pair['name'], out


def create_image_lmdbs(ir_dir: str, vis_dir: str, out_dir: str, label_dir: Optional[str] = None,
                       workers: int = 0, batch: int = 64, overwrite: bool = False,
                       progress: bool = True) -> Dict[str, Any]:
    """Writes ``<out_dir>/ir.lmdb``, ``vis.lmdb`` (and ``label.lmdb``). Returns a summary."""
    pairs = list_pairs(ir_dir, vis_dir, extra_dirs=[('label', label_dir)] if label_dir else None)
    names = [name for key, name in MODALITIES if key != 'label' or label_dir]
    finals = {name: osp.join(out_dir, f'{name}.lmdb') for name in names}
    for path in finals.values():
        if osp.exists(path):
            if not overwrite:
                raise FileExistsError(f'{path} exists; use --overwrite to replace it')
    os.makedirs(out_dir, exist_ok=True)
    partial = {name: path + '.partial' for name, path in finals.items()}
    for path in partial.values():
        shutil.rmtree(path, ignore_errors=True)  # leftovers of an interrupted run
    writers = {name: LmdbWriter(path) for name, path in partial.items()}
    meta_rows: Dict[str, List[str]] = {name: [] for name in names}
    pending: Dict[str, Dict[str, bytes]] = {name: {} for name in names}
    total_bytes = 0

    def flush() -> None:
        for name, items in pending.items():
            if items:
                writers[name].put_many(items)
                items.clear()

    pool = mp.get_context('spawn').Pool(workers) if workers > 0 and len(pairs) > 1 else None
    try:
        # ordered results: meta_info.txt follows the sorted names
        results = pool.imap(_read_pair, pairs, chunksize=4) if pool else map(_read_pair, pairs)
        for stem, parts in tqdm(results, total=len(pairs), desc='create lmdb', unit='pair', disable=not progress):
            for key, name in MODALITIES:
                if key not in parts:
                    continue
                data, ext, (h, w, c) = parts[key]
                pending[name][stem] = data
                meta_rows[name].append(f'{stem}{ext} ({h},{w},{c}) raw')
                total_bytes += len(data)
            if len(pending['ir']) >= batch:
                flush()
        flush()
    finally:
        if pool is not None:
            pool.terminate()
        for w in writers.values():
            w.close()
    for name in names:
        write_meta_info(partial[name], meta_rows[name])
        if osp.exists(finals[name]):
            shutil.rmtree(finals[name])
        os.replace(partial[name], finals[name])
    return {'pairs': len(pairs), 'lmdbs': finals, 'bytes': total_bytes}
