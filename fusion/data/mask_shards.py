"""Sharded mask generation: the pairs are split between processes (torchrun ranks, one GPU each,
or the tasks of a cluster job array), each fills its own *shard cache*, and a merge copies every
shard's entries byte for byte into the final cache. ``scripts/generate_masks.py`` drives it
(``torchrun --nproc_per_node=N ...`` merges by itself; ``--shard I/N`` + ``--merge-shards N`` for
job arrays); docs/distributed.md.

Why per-shard caches and a merge rather than N writers on one LMDB: LMDB's writer lock works
between processes of one machine on a local disk only (the lock table lives in shared memory),
so ranks on several nodes or job-array tasks writing to a network filesystem (NFS, Lustre)
could corrupt a shared cache. A shard has exactly one writer, wherever it runs; the merge is one
process. Everything stays resumable: a shard is an ordinary mask cache (finished images are
skipped), pairs already in the final cache are not regenerated, and merging again skips entries
already merged (an entry that differs from the merged one is an error, never overwritten).

Shard ``I`` of ``N`` takes the pairs ``I, I + N, I + 2N, ...`` of the name-sorted pair list.
Entries are a function of the pair and the settings only, so the merged cache holds exactly the
entries (same bytes) that one process writes.
"""
from __future__ import annotations

import os
import os.path as osp
import shutil
from typing import Any, Dict, List, Optional, Tuple

from fusion.data.lmdb_store import is_lmdb_dir
from fusion.data.mask_cache import MaskCache, MaskCacheError, MaskCacheWriter, meta_differences
from fusion.data.mask_generation import generate_mask_cache
from fusion.utils.img_util import list_pairs


__all__ = ['shard_dir', 'shard_path', 'shard_names', 'generate_mask_shard', 'merge_mask_shards']

_MERGE_BATCH = 64  # entries per LMDB transaction while merging


def shard_dir(out: str) -> str:
    """The folder holding the shard caches of the final cache ``out``."""
    return out.rstrip('/\\') + '.shards'


def shard_path(out: str, index: int, count: int) -> str:
    """Shard cache ``index`` of ``count`` for the final cache ``out``."""
    return osp.join(shard_dir(out), f'{index:05d}-of-{count:05d}.lmdb')


def shard_names(names: List[str], index: int, count: int) -> List[str]:
    """The names shard ``index`` of ``count`` takes: every ``count``-th of the sorted names."""
    if count < 1 or not 0 <= index < count:
        raise ValueError(f'shard {index}/{count}: need 0 <= I < N')
    return sorted(names)[index::count]


def _final_names(out: str) -> List[str]:
    if not is_lmdb_dir(out):
        return []
    cache = MaskCache(out)
    try:
        return cache.names()
    finally:
        cache.close()


def generate_mask_shard(ir_dir: str, vis_dir: str, out: str, source_opt: Dict[str, Any], shard: Tuple[int, int],
                        label_dir: Optional[str] = None, names: Optional[List[str]] = None,
                        **kwargs: Any) -> Dict[str, Any]:
    """Generates shard ``shard = (I, N)`` of the final cache ``out`` into :func:`shard_path`.

    Pairs already in ``out`` are skipped; an existing ``out`` must have been made with the same
    settings (checked before any pair is generated, not at the merge). ``names`` restricts the pairs (before sharding);
    ``kwargs`` are those of :func:`generate_mask_cache`. Returns its summary plus ``shard``,
    ``shard_cache`` and ``already_in_cache``.
    """
    index, count = shard
    pairs = list_pairs(ir_dir, vis_dir, extra_dirs=[('label', label_dir)] if label_dir else None)
    all_names = [p['name'] for p in pairs]
    if names is not None:
        unknown = sorted(set(names) - set(all_names))
        if unknown:
            raise ValueError(f'names not found in {ir_dir}: {unknown[:10]}')
        all_names = [n for n in all_names if n in set(names)]
    mine = shard_names(all_names, index, count)
    done = set(_final_names(out))
    todo = [n for n in mine if n not in done]
    path = shard_path(out, index, count)
    summary = generate_mask_cache(ir_dir, vis_dir, path, source_opt, label_dir=label_dir, names=todo,
                                  extra_info={'shard': {'index': index, 'count': count, 'names': mine}},
                                  compatible_with=out if is_lmdb_dir(out) else None, **kwargs)
    summary.update(shard=f'{index}/{count}', shard_cache=path, already_in_cache=len(mine) - len(todo))
    return summary


def merge_mask_shards(out: str, count: int, remove: bool = True) -> Dict[str, Any]:
    """Copies the entries of all ``count`` shard caches of ``out`` into ``out`` (created or
    resumed) and, with ``remove``, deletes the shard caches afterwards.

    Refuses, naming the shard: a missing shard, shards made with other settings than each other
    or than an existing ``out``, a shard that lacks some of its pairs (not finished: run it
    again), and an entry that differs from one already in ``out``.
    """
    if count < 1:
        raise ValueError(f'merge: the number of shards must be >= 1, got {count}')
    paths = [shard_path(out, i, count) for i in range(count)]
    missing = [f'{i}/{count}' for i, p in enumerate(paths) if not is_lmdb_dir(p)]
    if missing:
        raise MaskCacheError(f'{out}: shard(s) {", ".join(missing)} not found under {shard_dir(out)}; '
                             f'run them first (--shard I/{count})')
    caches = [MaskCache(p) for p in paths]
    try:
        first = caches[0].meta
        for i, cache in enumerate(caches[1:], 1):
            diff = meta_differences(first, cache.meta)
            if diff:
                raise MaskCacheError(f'{paths[i]}: made with other settings than {paths[0]}:\n  ' + '\n  '.join(diff))
        info = {k: v for k, v in first.get('info', {}).items() if k != 'shard'}
        meta = dict(first, info=dict(info, merged_from_shards=count))
        summary = {'cache': out, 'shards': count, 'merged': 0, 'already_merged': 0}
        with MaskCacheWriter(out, meta) as writer:
            merged_before = set(writer.names())
            for path, cache in zip(paths, caches):
                expected = (cache.meta.get('info', {}).get('shard') or {}).get('names', [])
                have = set(cache.names())
                lacking = [n for n in expected if n not in have and n not in merged_before]
                if lacking:
                    raise MaskCacheError(f'{path}: the shard is not finished ({len(lacking)} of its {len(expected)} '
                                         f'pairs missing, e.g. {lacking[0]}); run it again')
            for path, cache in zip(paths, caches):
                batch: Dict[str, bytes] = {}
                for name in sorted(cache.names()):
                    raw = cache.raw(name)
                    if name in merged_before:
                        if writer.get_raw(name) != raw:
                            raise MaskCacheError(f'{out}: the entry "{name}" differs from the one in {path}; '
                                                 'merge into a new cache or regenerate it')
                        summary['already_merged'] += 1
                        continue
                    batch[name] = raw
                    if len(batch) >= _MERGE_BATCH:
                        writer.put_encoded(batch)
                        summary['merged'] += len(batch)
                        batch = {}
                if batch:
                    writer.put_encoded(batch)
                    summary['merged'] += len(batch)
    finally:
        for cache in caches:
            cache.close()
    if remove:
        for path in paths:
            shutil.rmtree(path)
        if not os.listdir(shard_dir(out)):
            os.rmdir(shard_dir(out))
    return summary
