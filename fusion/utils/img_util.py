"""The one place that reads, converts and writes images.

Every entry point (``fusion/test.py``, ``scripts/inference.py``, ``scripts/evaluate.py``, the
datasets) goes through these functions, so all of them accept the same inputs and fail with the
same clear messages.

Conventions (they reproduce the official SAGE test pipeline bit for bit on 8-bit inputs):

* IR: any 8/16-bit or float image with 1, 3 or 4 channels -> grey float32 H x W in [0, 1]
  (colour IR goes through OpenCV's BGR->GRAY, as the official code does).
* Visible: -> float32 H x W x 3 holding (Y, Cr, Cb) in [0, 1], OpenCV's 8-bit YCrCb
  (Y = .299R + .587G + .114B, Cr = .713(R - Y) + 128, Cb = .564(B - Y) + 128, rounded).
  A grey visible image gives Cr = Cb = 128/255 (what OpenCV gives for grey).
* Fused colour: (Y, Cr, Cb) -> RGB with the official matrix, then ``x * 255 + 0.5`` truncated,
  as ``torchvision.utils.save_image`` does.
"""
from __future__ import annotations

import os
import os.path as osp
from typing import Dict, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch

from fusion.utils.file_util import atomic_write_bytes


IMG_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff')

ArrayOrTensor = Union[np.ndarray, torch.Tensor]


class ImageReadError(ValueError):
    """An input image is missing, empty, unreadable or inconsistent with its partner."""


def is_image_file(path: str) -> bool:
    return osp.splitext(path)[1].lower() in IMG_EXTENSIONS


def decode_image(data: bytes, source: str) -> np.ndarray:
    """Decodes encoded image bytes unchanged (bit depth and channels kept; BGR for colour).

    ``source`` names the origin in errors (a path, or ``lmdb_path:key``).
    """
    if not data:
        raise ImageReadError(f'{source}: the file is empty (0 bytes)')
    img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None or img.size == 0:
        raise ImageReadError(f'{source}: cannot decode the file as an image (corrupt or unsupported format)')
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (3, 4)):
        raise ImageReadError(f'{source}: unsupported image layout {img.shape}')
    return img


def read_image(path: str) -> np.ndarray:
    """Reads an image file unchanged (bit depth and channels kept; BGR order for colour).

    Raises :class:`ImageReadError` naming the file when it is missing, empty or not an image.
    """
    if not osp.isfile(path):
        raise ImageReadError(f'{path}: no such file')
    # np.fromfile + imdecode also copes with non-ASCII paths, which cv2.imread does not
    return decode_image(np.fromfile(path, dtype=np.uint8).tobytes(), path)


def _to_unit_float(img: np.ndarray, path: str) -> np.ndarray:
    """Scales an integer or float image to float32 [0, 1] by its dtype's range."""
    if img.dtype == np.uint8:
        return img.astype(np.float32) / 255.0
    if img.dtype == np.uint16:
        return img.astype(np.float32) / 65535.0
    if img.dtype in (np.float32, np.float64):
        img = img.astype(np.float32)
        if not np.isfinite(img).all():
            raise ImageReadError(f'{path}: the image contains NaN or infinite values')
        return np.clip(img, 0.0, 1.0)
    raise ImageReadError(f'{path}: unsupported pixel type {img.dtype} (use 8/16-bit integers or float)')


def drop_alpha(img: np.ndarray) -> np.ndarray:
    return img[..., :3] if img.ndim == 3 and img.shape[2] == 4 else img


def ir_from_array(img: np.ndarray, source: str) -> np.ndarray:
    """A decoded image -> grey float32 H x W in [0, 1] (colour through OpenCV's BGR->GRAY)."""
    img = drop_alpha(img)
    if img.ndim == 3:
        if img.dtype not in (np.uint8, np.uint16, np.float32):
            img = img.astype(np.float32)
        img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    return _to_unit_float(img, source)


def vis_ycrcb_from_array(img: np.ndarray, source: str) -> Tuple[np.ndarray, bool]:
    """A decoded image -> float32 H x W x 3 (Y, Cr, Cb) in [0, 1], and whether it was grey."""
    img = drop_alpha(img)
    is_gray = img.ndim == 2
    if is_gray:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.dtype not in (np.uint8, np.uint16, np.float32):
        img = img.astype(np.float32)
    if img.dtype == np.float32:
        img = np.clip(img, 0.0, 1.0)
    ycrcb = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_BGR2YCrCb)
    return _to_unit_float(ycrcb, source), is_gray


def read_ir(path: str) -> np.ndarray:
    """Reads an infrared image as grey float32 H x W in [0, 1]."""
    return ir_from_array(read_image(path), path)


def read_vis_ycrcb(path: str) -> Tuple[np.ndarray, bool]:
    """Reads a visible image as float32 H x W x 3 (Y, Cr, Cb) in [0, 1].

    Returns the array and whether the file was grey (so the fused result can be saved grey).
    """
    return vis_ycrcb_from_array(read_image(path), path)


def read_rgb(path: str) -> np.ndarray:
    """Reads any image as RGB float32 H x W x 3 in [0, 1] (grey images repeated to 3 channels).
    Used by the segmentation datasets, whose segmenters see the fused colour image."""
    img = drop_alpha(read_image(path))
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    else:
        img = np.ascontiguousarray(img[..., ::-1])  # OpenCV's BGR -> RGB
    return _to_unit_float(img, path)


def read_gray(path: str) -> np.ndarray:
    """Reads any image as grey float32 in the 0-255 range (rounded as the common metric code reads
    it: OpenCV BGR->GRAY on float, then ``np.round``). Used by the metrics and evaluation."""
    img = drop_alpha(read_image(path))
    scale = 255.0 / 65535.0 if img.dtype == np.uint16 else (255.0 if img.dtype.kind == 'f' else 1.0)
    img = img.astype(np.float32) * np.float32(scale)
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    return np.round(img)


def check_same_size(ir: np.ndarray, vis: np.ndarray, ir_path: str, vis_path: str) -> None:
    if ir.shape[:2] != vis.shape[:2]:
        raise ImageReadError(f'size mismatch: IR {ir_path} is {ir.shape[1]}x{ir.shape[0]} (WxH) but visible '
                             f'{vis_path} is {vis.shape[1]}x{vis.shape[0]}; pairs must be registered and equal in size')


def read_pair(ir_path: str, vis_path: str) -> Tuple[np.ndarray, np.ndarray, bool]:
    """Reads an IR/visible pair: IR grey (H x W), visible (Y, Cr, Cb) (H x W x 3), both float32 in
    [0, 1], and whether the visible file was grey. Sizes are checked (the error names both files)."""
    ir = read_ir(ir_path)
    ycrcb, is_gray = read_vis_ycrcb(vis_path)
    check_same_size(ir, ycrcb, ir_path, vis_path)
    return ir, ycrcb, is_gray


def list_images(folder: str) -> List[str]:
    """Image files of ``folder``, sorted; hidden files (``.*``, e.g. the ``.tmp_*`` of an
    interrupted atomic write) are not images of the dataset."""
    if not osp.isdir(folder):
        raise ImageReadError(f'{folder}: no such folder')
    return sorted(f for f in os.listdir(folder)
                  if not f.startswith('.') and is_image_file(f) and osp.isfile(osp.join(folder, f)))


def images_by_name(folder: str) -> Dict[str, str]:
    """``{base name: file name}`` of the images of ``folder`` (:func:`list_images`); two files with
    one base name (``a.png``, ``a.jpg``) are an error naming both."""
    mapping: Dict[str, str] = {}
    for f in list_images(folder):
        stem = osp.splitext(f)[0]
        if stem in mapping:
            raise ImageReadError(f'{folder}: two files share the name "{stem}": {mapping[stem]} and {f}')
        mapping[stem] = f
    return mapping


def list_pairs(ir_dir: str, vis_dir: str, extra_dirs: Optional[Sequence[Tuple[str, str]]] = None) -> List[dict]:
    """Pairs the files of ``ir_dir`` and ``vis_dir`` by base name (extensions may differ).

    Returns ``[{'name', 'ir_path', 'vis_path', ...}]`` sorted by name. ``extra_dirs`` is a list of
    ``(key, folder)`` whose files must exist for every pair too (e.g. ``('label', dir)``).
    Raises :class:`ImageReadError` listing the unpaired files or an empty folder.
    """
    folders = [('ir', ir_dir), ('vis', vis_dir)] + list(extra_dirs or [])
    stems = {}
    for key, folder in folders:
        mapping = images_by_name(folder)
        if not mapping:
            raise ImageReadError(f'{folder}: the {key} folder holds no images ({", ".join(IMG_EXTENSIONS)})')
        stems[key] = mapping
    common = set(stems['ir'])
    for key, _ in folders[1:]:
        common &= set(stems[key])
    problems = []
    for key, folder in folders:
        missing = sorted(set(stems[key]) - common)
        for stem in missing[:20]:
            others = [k for k, _ in folders if k != key and stem not in stems[k]]
            problems.append(f'{osp.join(folder, stems[key][stem])} has no {"/".join(others)} partner')
        if len(missing) > 20:
            problems.append(f'... and {len(missing) - 20} more in {folder}')
    if problems:
        raise ImageReadError('unpaired files:\n  ' + '\n  '.join(problems))
    pairs = []
    for stem in sorted(common):
        item = {'name': stem}
        for key, folder in folders:
            item[f'{key}_path'] = osp.join(folder, stems[key][stem])
        pairs.append(item)
    return pairs


def ycrcb_to_rgb(y: torch.Tensor, cr: torch.Tensor, cb: torch.Tensor) -> torch.Tensor:
    """(Y, Cr, Cb) in [0, 1] -> RGB with the official SAGE matrix (no clamping; differentiable).
    Inputs are B x 1 x H x W (or broadcastable); returns B x 3 x H x W."""
    cr = cr - 0.5
    cb = cb - 0.5
    r = y + 1.403 * cr
    g = y - 0.714 * cr - 0.344 * cb
    b = y + 1.773 * cb
    return torch.cat([r, g, b], dim=1)


def tensor_to_uint8(img: torch.Tensor) -> np.ndarray:
    """C x H x W (or H x W) float in [0, 1] -> H x W (x C, RGB) uint8 with save_image's rounding."""
    arr = img.detach().float().cpu().mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8).numpy()
    if arr.ndim == 3:
        arr = arr[0] if arr.shape[0] == 1 else np.ascontiguousarray(arr.transpose(1, 2, 0))
    return arr


def fused_to_image(fused_y: torch.Tensor, cr: Optional[torch.Tensor], cb: Optional[torch.Tensor],
                   gray: bool = False) -> np.ndarray:
    """Fused Y (1 x H x W) + the visible chroma -> uint8 RGB (or grey) image."""
    if gray or cr is None:
        return tensor_to_uint8(fused_y)
    rgb = ycrcb_to_rgb(fused_y[None], cr[None], cb[None])[0]
    return tensor_to_uint8(rgb)


def imwrite_atomic(img: np.ndarray, path: str, rgb: bool = True, params: Optional[Sequence[int]] = None) -> None:
    """Writes an image so that ``path`` is either absent or complete: encode in memory, write a
    temporary file in the same folder, then rename it into place."""
    if rgb and img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    ext = osp.splitext(path)[1].lower() or '.png'
    ok, buf = cv2.imencode(ext, img, list(params or []))
    if not ok:
        raise IOError(f'{path}: OpenCV cannot encode an image as {ext}')
    atomic_write_bytes(buf.tobytes(), path)
