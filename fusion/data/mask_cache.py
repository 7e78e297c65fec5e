"""The mask cache: per-image region masks for the teacher, compact and readable one image at a time.

Layout: one LMDB folder (e.g. ``datasets/MFNet/masks_sam.lmdb``), one entry per image keyed by the
pair's base name, plus ``__meta__`` (JSON) describing how the masks were made.

Entry encoding (``SGMC`` version 1), little endian::

    b'SGMC' | u8 version | u32 header length | header (JSON) | mask blobs ... | u32 CRC-32 of all before

    header = {"h": H, "w": W, "fp": <image fingerprint>, "ir": [[area, nbytes], ...], "vis": [...]}

Each mask is bit-packed (``np.packbits``, 1 bit per pixel) and zlib-compressed on its own, masks in
descending area order, so a reader decodes only the first ``n`` it needs. The CRC turns a damaged
entry into a clear error instead of wrong masks; LMDB transactions make every write all-or-nothing.

The official SAGE code kept one pickle of full-resolution boolean arrays (1 byte per pixel, 19 MB
per 600x800 image with 20+20 masks); ``scripts/benchmark_data.py`` measures both on the same masks.
"""
from __future__ import annotations

import json
import struct
import time
import zlib
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from fusion.data.lmdb_store import META_KEY, LmdbReader, LmdbWriter, is_lmdb_dir


CACHE_FORMAT = 'sage-mask-cache'
CACHE_VERSION = 1
CODEC = 'packbits+zlib'
_MAGIC = b'SGMC'
_ENTRY_VERSION = 1
_ZLIB_LEVEL = 6  # level 9 is ~1 % smaller and several times slower to write
#: meta fields that define what the masks are; two caches agree iff these agree
IDENTITY_FIELDS = ('format', 'version', 'codec', 'source', 'fallback', 'max_masks', 'derived_from')


class MaskCacheError(ValueError):
    """A mask cache is missing, damaged, or was made with other settings or for other images."""


@dataclass
class MaskEntry:
    """Masks of one image: ``ir``/``vis`` are bool (n, H, W) in descending area order."""
    size: Tuple[int, int]
    fingerprint: str
    ir: np.ndarray
    vis: np.ndarray
    ir_total: int  # how many masks the entry holds (``ir`` may hold fewer if a limit was asked)
    vis_total: int


def _encode_mask(mask: np.ndarray) -> bytes:
    return zlib.compress(np.packbits(mask, axis=None).tobytes(), _ZLIB_LEVEL)


def _decode_mask(blob: bytes, h: int, w: int) -> np.ndarray:
    bits = np.frombuffer(zlib.decompress(blob), dtype=np.uint8)
    return np.unpackbits(bits, count=h * w).reshape(h, w).view(bool)


def encode_entry(ir_masks: np.ndarray, vis_masks: np.ndarray, fingerprint: str) -> bytes:
    """Serialises (n, H, W) bool stacks (already sorted by area, descending)."""
    ir_masks = np.asarray(ir_masks, dtype=bool)
    vis_masks = np.asarray(vis_masks, dtype=bool)
    if ir_masks.ndim != 3 or vis_masks.ndim != 3 or ir_masks.shape[1:] != vis_masks.shape[1:]:
        raise ValueError(f'mask stacks must be (n, H, W) of one size, got {ir_masks.shape} and {vis_masks.shape}')
    h, w = ir_masks.shape[1:]
    header: Dict[str, Any] = {'h': int(h), 'w': int(w), 'fp': fingerprint}
    blobs: List[bytes] = []
    for key, stack in (('ir', ir_masks), ('vis', vis_masks)):
        rows = []
        for m in stack:
            blob = _encode_mask(m)
            rows.append([int(np.count_nonzero(m)), len(blob)])
            blobs.append(blob)
        header[key] = rows
    head = json.dumps(header, separators=(',', ':')).encode('utf-8')
    body = _MAGIC + struct.pack('<BI', _ENTRY_VERSION, len(head)) + head + b''.join(blobs)
    return body + struct.pack('<I', zlib.crc32(body))


def _parse(data: bytes, source: str) -> Tuple[dict, int]:
    if len(data) < 13 or data[:4] != _MAGIC:
        raise MaskCacheError(f'{source}: not a mask-cache entry (bad magic)')
    if zlib.crc32(data[:-4]) != struct.unpack('<I', data[-4:])[0]:
        raise MaskCacheError(f'{source}: the entry is damaged (CRC mismatch); regenerate it')
    version, head_len = struct.unpack('<BI', data[4:9])
    if version != _ENTRY_VERSION:
        raise MaskCacheError(f'{source}: entry version {version}, this code reads {_ENTRY_VERSION}')
    return json.loads(data[9:9 + head_len].decode('utf-8')), 9 + head_len


def decode_entry(data: bytes, source: str = 'mask cache entry', max_masks: Optional[int] = None) -> MaskEntry:
    """Decodes an entry; with ``max_masks`` only the first (largest) ``max_masks`` of each modality."""
    header, offset = _parse(data, source)
    h, w = header['h'], header['w']
    stacks = {}
    for key in ('ir', 'vis'):
        rows = header[key]
        n = len(rows) if max_masks is None else min(max_masks, len(rows))
        out = np.empty((n, h, w), dtype=bool)
        for i, (_, nbytes) in enumerate(rows):
            if i < n:
                out[i] = _decode_mask(data[offset:offset + nbytes], h, w)
            offset += nbytes
        stacks[key] = out
    return MaskEntry((h, w), header['fp'], stacks['ir'], stacks['vis'], len(header['ir']), len(header['vis']))


def entry_summary(data: bytes, source: str = 'mask cache entry') -> Dict[str, Any]:
    """Size, fingerprint and mask areas without decoding any mask."""
    header, _ = _parse(data, source)
    return {'size': (header['h'], header['w']), 'fingerprint': header['fp'],
            'ir_areas': [a for a, _ in header['ir']], 'vis_areas': [a for a, _ in header['vis']]}


# ----------------------------------------------------------------------------------------------
# metadata

def make_meta(source: Dict[str, Any], max_masks: int, fallback: Optional[Dict[str, str]] = None,
              info: Optional[Dict[str, Any]] = None, derived_from: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Cache metadata: identity fields (compared on resume and by datasets) plus ``info``."""
    return {
        'format': CACHE_FORMAT, 'version': CACHE_VERSION, 'codec': CODEC, 'order': 'area_desc',
        'source': source, 'fallback': fallback, 'max_masks': int(max_masks), 'derived_from': derived_from,
        'info': {**(info or {}), 'created': time.strftime('%Y-%m-%dT%H:%M:%S')},
    }


def meta_differences(old: Dict[str, Any], new: Dict[str, Any]) -> List[str]:
    """Identity fields that differ, as readable lines (empty when the caches are compatible)."""
    # JSON round trip so tuples/lists and int/float spellings compare as stored
    old, new = json.loads(json.dumps(old)), json.loads(json.dumps(new))
    lines = []

    def walk(a: Any, b: Any, path: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                walk(a.get(k, '<absent>'), b.get(k, '<absent>'), f'{path}.{k}' if path else k)
        elif a != b:
            lines.append(f'{path}: cache has {a!r}, requested {b!r}')

    for field in IDENTITY_FIELDS:
        walk(old.get(field), new.get(field), field)
    return lines


# ----------------------------------------------------------------------------------------------
# writer / reader

class MaskCacheWriter:
    """Opens (or creates) a cache for writing. An existing cache must have the same identity as
    ``meta`` (then writing resumes: existing entries stay); ``overwrite=True`` empties it first."""

    def __init__(self, path: str, meta: Dict[str, Any], overwrite: bool = False) -> None:
        self.path = path
        exists = is_lmdb_dir(path)
        self.store = LmdbWriter(path)
        old_raw = self.store.get(META_KEY) if exists else None
        if old_raw is not None and not overwrite:
            old = json.loads(old_raw.decode('utf-8'))
            diff = meta_differences(old, meta)
            if diff:
                self.store.close()
                raise MaskCacheError(f'{path}: the existing mask cache was made with other settings:\n  ' +
                                     '\n  '.join(diff) + '\nUse another output path, or --overwrite to replace it.')
            self.meta = old
            return
        if exists and overwrite:
            main_db = self.store.env.open_db()
            with self.store.env.begin(write=True) as txn:
                txn.drop(main_db, delete=False)  # empty the cache, keep the files
        elif exists and old_raw is None and self.store.keys():
            self.store.close()
            raise MaskCacheError(f'{path}: an LMDB without mask-cache metadata is in the way (not a mask cache?)')
        self.meta = meta
        self.store.put(META_KEY, json.dumps(meta, indent=1).encode('utf-8'))

    def names(self) -> List[str]:
        return self.store.keys()

    def get_raw(self, name: str) -> Optional[bytes]:
        return self.store.get(name)

    def put_encoded(self, items: Dict[str, bytes]) -> None:
        self.store.put_many(items)

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> 'MaskCacheWriter':
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class MaskCache:
    """Read-only cache access (lazily opened per process, so datasets stay picklable)."""

    def __init__(self, path: str) -> None:
        try:
            self.reader = LmdbReader(path, what='mask cache')
            meta = self.reader.read_meta()
        except ValueError as err:
            raise MaskCacheError(f'{err}; create it with scripts/generate_masks.py') from err
        if not meta or meta.get('format') != CACHE_FORMAT:
            raise MaskCacheError(f'{path}: not a mask cache (no {CACHE_FORMAT} metadata)')
        if meta.get('version') != CACHE_VERSION:
            raise MaskCacheError(f'{path}: cache version {meta.get("version")}, this code reads {CACHE_VERSION}')
        self.path = path
        self.meta = meta
        self.reader.close()

    @property
    def source_type(self) -> str:
        return self.meta['source']['type']

    def names(self) -> List[str]:
        return self.reader.keys()

    def get(self, name: str, max_masks: Optional[int] = None) -> Optional[MaskEntry]:
        raw = self.reader.get(name)
        return None if raw is None else decode_entry(raw, f'{self.path}:{name}', max_masks)

    def require(self, name: str, shape: Tuple[int, int], image_path: str,
                max_masks: Optional[int] = None) -> MaskEntry:
        """The entry of ``name``, which must exist and match the image's size (H, W)."""
        entry = self.get(name, max_masks)
        if entry is None:
            raise MaskCacheError(f'{self.path}: no masks for "{name}" ({image_path})')
        if tuple(entry.size) != tuple(shape):
            raise MaskCacheError(f'{self.path}: masks of "{name}" are {entry.size[1]}x{entry.size[0]} but '
                                 f'{image_path} is {shape[1]}x{shape[0]} (cache made for other images)')
        return entry

    def raw(self, name: str) -> Optional[bytes]:
        return self.reader.get(name)

    def close(self) -> None:
        self.reader.close()
