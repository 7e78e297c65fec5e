"""Reading one IR/visible/label sample from folders or LMDBs, on top of ``fusion.utils.img_util``.

The LMDB backend decodes bytes with ``img_util.decode_image`` and converts them with the same
``ir_from_array`` / ``vis_ycrcb_from_array`` as ``read_ir`` / ``read_vis_ycrcb``
(``tests/test_data_io.py`` checks the results are bit-identical).

Also here: labels (class-id images), the RGB uint8 view SAM and the superpixel source need, and
the per-image fingerprint that ties a mask-cache entry to the images it was made from.
"""
from __future__ import annotations

import hashlib
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np

from fusion.data.lmdb_store import LmdbReader
from fusion.utils.img_util import (ImageReadError, check_same_size, decode_image, drop_alpha, ir_from_array, list_pairs,
                                   read_image, read_ir, read_vis_ycrcb, vis_ycrcb_from_array)


# ----------------------------------------------------------------------------------------------
# decoding from bytes (LMDB backend)

def decode_ir_bytes(data: bytes, source: str) -> np.ndarray:
    return ir_from_array(decode_image(data, source), source)


def decode_vis_ycrcb_bytes(data: bytes, source: str) -> Tuple[np.ndarray, bool]:
    return vis_ycrcb_from_array(decode_image(data, source), source)


# ----------------------------------------------------------------------------------------------
# labels

def label_from_raw(img: np.ndarray, source: str) -> np.ndarray:
    """A class-id image -> H x W int64. Colour label images (palettes) are refused: ids only."""
    if img.ndim == 3:
        img = drop_alpha(img)
        if not (np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 0], img[..., 2])):
            raise ImageReadError(f'{source}: the label is a colour image; labels must hold one class id per pixel '
                                 '(single-channel 8/16-bit PNG)')
        img = img[..., 0]
    if img.dtype.kind not in 'ui':
        raise ImageReadError(f'{source}: label pixels are {img.dtype}; labels must be integer class ids')
    return img.astype(np.int64)


def read_label(path: str) -> np.ndarray:
    return label_from_raw(read_image(path), path)


def decode_label_bytes(data: bytes, source: str) -> np.ndarray:
    return label_from_raw(decode_image(data, source), source)


def check_label(label: np.ndarray, ir: np.ndarray, label_path: str, ir_path: str) -> None:
    if label.shape[:2] != ir.shape[:2]:
        raise ImageReadError(f'size mismatch: label {label_path} is {label.shape[1]}x{label.shape[0]} (WxH) but '
                             f'IR {ir_path} is {ir.shape[1]}x{ir.shape[0]}')


# ----------------------------------------------------------------------------------------------
# RGB views for mask generators (SAM expects RGB uint8; the official code fed BGR by mistake)

def raw_to_rgb_uint8(img: np.ndarray) -> np.ndarray:
    """Raw decoded image (BGR/BGRA/grey, 8/16-bit or float) -> H x W x 3 RGB uint8."""
    img = drop_alpha(img)
    if img.dtype == np.uint16:
        img = np.round(img.astype(np.float32) / 257.0).astype(np.uint8)
    elif img.dtype != np.uint8:
        img = np.round(np.clip(img.astype(np.float32), 0, 1) * 255.0).astype(np.uint8)
    if img.ndim == 2:
        return np.ascontiguousarray(np.repeat(img[..., None], 3, axis=2))
    return np.ascontiguousarray(img[..., ::-1])


def gray_to_rgb_uint8(gray: np.ndarray) -> np.ndarray:
    """Grey float [0, 1] (as ``read_ir`` returns) -> 3 equal uint8 channels."""
    g = np.round(np.clip(gray, 0, 1) * 255.0).astype(np.uint8)
    return np.ascontiguousarray(np.repeat(g[..., None], 3, axis=2))


def ycrcb_to_rgb_uint8(ycrcb: np.ndarray) -> np.ndarray:
    """(Y, Cr, Cb) float [0, 1] -> RGB uint8 through OpenCV's inverse (within 1 level of the file)."""
    q = np.round(np.clip(ycrcb, 0, 1) * 255.0).astype(np.uint8)
    return cv2.cvtColor(q, cv2.COLOR_YCrCb2RGB)


# ----------------------------------------------------------------------------------------------
# fingerprints

def image_fingerprint(ir: np.ndarray, ycrcb: np.ndarray) -> str:
    """A cheap content hash of a pair as the dataset decodes it (size + a 4-pixel grid of IR and Y
    at 8 bits). It does not depend on the file format or PNG compression, so folders, LMDBs and
    re-encoded copies of the same pixels agree; different images of the same size do not."""
    h, w = ir.shape[:2]
    q_ir = np.round(ir[::4, ::4] * 255.0).astype(np.uint8)
    q_y = np.round(ycrcb[::4, ::4, 0] * 255.0).astype(np.uint8)
    digest = hashlib.sha1(f'{h}x{w}:'.encode())
    digest.update(np.ascontiguousarray(q_ir).tobytes())
    digest.update(np.ascontiguousarray(q_y).tobytes())
    return digest.hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# backends: the same sample from folders or LMDBs

class PairBackend:
    """Lists the samples of an IR/visible(/label) dataset and reads them, from folders
    (``io_backend: disk``) or LMDBs made by ``scripts/create_lmdb.py`` (``io_backend: lmdb``)."""

    def __init__(self, ir_root: str, vis_root: str, label_root: Optional[str] = None, backend: str = 'disk') -> None:
        if backend not in ('disk', 'lmdb'):
            raise ValueError(f"io_backend type must be 'disk' or 'lmdb', got {backend!r}")
        self.backend = backend
        self.roots = {'ir': ir_root, 'vis': vis_root}
        if label_root:
            self.roots['label'] = label_root
        self.has_label = label_root is not None and label_root != ''
        if backend == 'disk':
            extra = [('label', label_root)] if self.has_label else None
            self.items: List[Dict[str, str]] = list_pairs(ir_root, vis_root, extra_dirs=extra)
            self._readers: Dict[str, LmdbReader] = {}
        else:
            self._readers = {k: LmdbReader(p, what=f'{k} LMDB') for k, p in self.roots.items()}
            self.items = self._pair_lmdb_keys()

    def _pair_lmdb_keys(self) -> List[Dict[str, str]]:
        keys = {k: set(r.keys()) for k, r in self._readers.items()}
        for r in self._readers.values():
            r.close()  # reopened lazily in each worker
        common = set.intersection(*keys.values())
        problems = []
        for k, ks in keys.items():
            for key in sorted(ks - common)[:20]:
                others = [o for o in keys if key not in keys[o]]
                problems.append(f'{self.roots[k]}: key "{key}" has no {"/".join(others)} partner')
        if problems:
            raise ImageReadError('unpaired LMDB entries:\n  ' + '\n  '.join(problems))
        if not common:
            raise ImageReadError(f'{self.roots["ir"]}: the LMDB holds no images')
        items = []
        for name in sorted(common):
            item = {'name': name}
            for k, root in self.roots.items():
                item[f'{k}_path'] = f'{root}:{name}'
            items.append(item)
        return items

    def __len__(self) -> int:
        return len(self.items)

    def read_ir(self, item: Dict[str, str]) -> np.ndarray:
        if self.backend == 'disk':
            return read_ir(item['ir_path'])
        return decode_ir_bytes(self._readers['ir'].require(item['name']), item['ir_path'])

    def read_vis(self, item: Dict[str, str]) -> Tuple[np.ndarray, bool]:
        if self.backend == 'disk':
            return read_vis_ycrcb(item['vis_path'])
        return decode_vis_ycrcb_bytes(self._readers['vis'].require(item['name']), item['vis_path'])

    def read_label(self, item: Dict[str, str]) -> Optional[np.ndarray]:
        if not self.has_label:
            return None
        if self.backend == 'disk':
            return read_label(item['label_path'])
        return decode_label_bytes(self._readers['label'].require(item['name']), item['label_path'])

    def read_pair(self, item: Dict[str, str]) -> Tuple[np.ndarray, np.ndarray, bool, Optional[np.ndarray]]:
        """IR (H x W), visible (H x W x 3 YCrCb), whether the visible file is grey, and the label
        (H x W int64 raw ids, or None), size-checked."""
        ir = self.read_ir(item)
        ycrcb, is_gray = self.read_vis(item)
        check_same_size(ir, ycrcb, item['ir_path'], item['vis_path'])
        label = self.read_label(item)
        if label is not None:
            check_label(label, ir, item['label_path'], item['ir_path'])
        return ir, ycrcb, is_gray, label
