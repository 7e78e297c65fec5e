"""Small LMDB layer shared by the image LMDBs (``scripts/create_lmdb.py``) and the mask cache.

Why our own instead of basicsr's ``make_lmdb_from_imgs``: it re-encodes every image as PNG, needs
ASCII keys and file names, crashes with an opaque ``NoneType`` error on an unreadable file, and
cannot resume. Here every write is one LMDB transaction (a killed run leaves either the whole
entry or nothing), the map grows on demand, readers open lazily (datasets stay picklable for
DataLoader workers), and keys are UTF-8.

The ``meta_info.txt`` written beside the data keeps basicsr's layout (``<key><ext> (h,w,c) raw``),
so basicsr's ``paired_paths_from_lmdb`` can read image LMDBs whose keys have no dots.
"""
from __future__ import annotations

import json
import os
import os.path as osp
from typing import Dict, Iterator, List, Optional, Tuple

import lmdb


META_KEY = '__meta__'  # reserved key holding a JSON description of the store
_INITIAL_MAP_SIZE = 1 << 30  # 1 GiB; doubled whenever a write does not fit


class LmdbStoreError(ValueError):
    """An LMDB store is missing, unreadable or lacks a key."""


def is_lmdb_dir(path: str) -> bool:
    return osp.isdir(path) and osp.isfile(osp.join(path, 'data.mdb'))


# Read-only environments shared by every reader of a path in this process. py-lmdb refuses to open
# one environment twice in a process (two datasets on one cache, a reader then a writer), so
# readers share one handle and a writer closes it first.
_READ_ENVS: Dict[str, Tuple[int, lmdb.Environment]] = {}  # real path -> (opening pid, env)


def _read_env(path: str) -> lmdb.Environment:
    key = osp.realpath(path)
    held = _READ_ENVS.get(key)
    if held is not None:
        if held[0] != os.getpid():
            # inherited through fork (DataLoader workers of a parent that had it open): py-lmdb's
            # guard forbids a second open here, and a read-only, lock-free env stays valid to read
            _READ_ENVS[key] = (os.getpid(), held[1])
        return held[1]
    env = lmdb.open(path, readonly=True, lock=False, readahead=False, meminit=False, subdir=True)
    _READ_ENVS[key] = (os.getpid(), env)
    return env


def close_read_env(path: str) -> None:
    """Closes this process's shared read handle of ``path`` (readers reopen it on next use)."""
    held = _READ_ENVS.pop(osp.realpath(path), None)
    if held is not None:
        held[1].close()


class LmdbWriter:
    """Writes entries with one transaction per :meth:`put_many` call and grows the map as needed."""

    def __init__(self, path: str, map_size: int = _INITIAL_MAP_SIZE) -> None:
        os.makedirs(path, exist_ok=True)
        close_read_env(path)
        self.path = path
        # sync/metasync on: a committed entry survives a crash; an uncommitted one never appears
        self.env = lmdb.open(path, map_size=max(map_size, _INITIAL_MAP_SIZE), subdir=True, readonly=False,
                             meminit=False, map_async=False, max_dbs=0)

    def put_many(self, items: Dict[str, bytes]) -> None:
        """Stores all ``items`` atomically (all or none)."""
        while True:
            try:
                with self.env.begin(write=True) as txn:
                    for key, value in items.items():
                        txn.put(key.encode('utf-8'), value)
                return
            except lmdb.MapFullError:
                # the aborted transaction wrote nothing; enlarge the map and retry
                self.env.set_mapsize(self.env.info()['map_size'] * 2)

    def put(self, key: str, value: bytes) -> None:
        self.put_many({key: value})

    def get(self, key: str) -> Optional[bytes]:
        with self.env.begin(write=False) as txn:
            value = txn.get(key.encode('utf-8'))
        return None if value is None else bytes(value)

    def keys(self) -> List[str]:
        return _list_keys(self.env)

    def close(self) -> None:
        if self.env is not None:
            self.env.sync(True)
            self.env.close()
            self.env = None

    def __enter__(self) -> 'LmdbWriter':
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _list_keys(env: lmdb.Environment) -> List[str]:
    with env.begin(write=False) as txn:
        keys = [k.decode('utf-8') for k in txn.cursor().iternext(keys=True, values=False)]
    return [k for k in keys if k != META_KEY]


class LmdbReader:
    """Read-only access through the process's shared handle, opened on first use (so a dataset
    holding a reader stays picklable and each DataLoader worker opens its own)."""

    def __init__(self, path: str, what: str = 'LMDB') -> None:
        if not is_lmdb_dir(path):
            raise LmdbStoreError(f'{path}: not an LMDB folder (no data.mdb inside); the {what} is missing')
        self.path = path
        self.what = what

    def _env(self) -> lmdb.Environment:
        try:
            return _read_env(self.path)
        except lmdb.Error as err:
            raise LmdbStoreError(f'{self.path}: cannot open the {self.what}: {err}') from err

    def get(self, key: str) -> Optional[bytes]:
        with self._env().begin(write=False, buffers=False) as txn:
            return txn.get(key.encode('utf-8'))

    def require(self, key: str) -> bytes:
        value = self.get(key)
        if value is None:
            raise LmdbStoreError(f'{self.path}: the {self.what} has no entry "{key}"')
        return value

    def keys(self) -> List[str]:
        return _list_keys(self._env())

    def read_meta(self) -> Optional[dict]:
        raw = self.get(META_KEY)
        return None if raw is None else json.loads(raw.decode('utf-8'))

    def close(self) -> None:
        close_read_env(self.path)


def read_meta_info(path: str) -> Iterator[str]:
    """Yields the keys listed in ``<lmdb>/meta_info.txt`` (basicsr's format)."""
    with open(osp.join(path, 'meta_info.txt'), encoding='utf-8') as f:
        for line in f:
            line = line.strip()
            if line:
                yield osp.splitext(line.rsplit(' (', 1)[0])[0]


def write_meta_info(path: str, rows: List[str]) -> None:
    from fusion.utils.file_util import atomic_write_bytes
    atomic_write_bytes(('\n'.join(rows) + '\n').encode('utf-8'), osp.join(path, 'meta_info.txt'))
