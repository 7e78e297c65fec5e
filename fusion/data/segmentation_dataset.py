"""SegmentationDataset: images (a fused folder, or any image folder) + label maps, for training and
testing a segmenter on fused images (the downstream segmentation protocol)."""
from __future__ import annotations

import os.path as osp
import random
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch
from basicsr.utils.registry import DATASET_REGISTRY
from torch.utils import data as data

from fusion.utils.img_util import IMG_EXTENSIONS, ImageReadError, images_by_name, read_image, read_rgb
from fusion.utils.option_schema import Required


__all__ = ['SegmentationDataset', 'read_label', 'read_name_list', 'find_images']


def read_label(path: str, num_classes: int, ignore_index: Optional[int] = 255) -> np.ndarray:
    """A label map of class ids (single-channel 8/16-bit PNG) -> int64 H x W.

    Raises :class:`ImageReadError` naming the file for colour labels and for values outside
    ``[0, num_classes)`` other than ``ignore_index``.
    """
    img = read_image(path)
    if img.ndim == 3:
        if not (np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 0], img[..., 2])):
            raise ImageReadError(f'{path}: a label must be a single-channel map of class ids, not a colour image')
        img = img[..., 0]
    if img.dtype.kind not in 'ui':
        raise ImageReadError(f'{path}: a label must hold integer class ids, got {img.dtype}')
    label = img.astype(np.int64)
    bad = (label >= num_classes) & (label != (ignore_index if ignore_index is not None else -1))
    if bad.any():
        values = sorted(int(v) for v in np.unique(label[bad]))[:10]
        raise ImageReadError(f'{path}: label values {values} are outside the {num_classes} classes 0..{num_classes - 1}'
                             + (f' (and not the ignore_index {ignore_index})' if ignore_index is not None else ''))
    return label


def read_name_list(path: str) -> List[str]:
    """Pair names of a list file: one per line, extension optional, ``#`` comments and blanks skipped."""
    if not osp.isfile(path):
        raise ImageReadError(f'{path}: no such list file')
    names = []
    with open(path) as f:
        for line in f:
            line = line.split('#', 1)[0].strip()
            if line:
                base = osp.basename(line)
                stem, ext = osp.splitext(base)
                names.append(stem if ext.lower() in IMG_EXTENSIONS else base)
    if not names:
        raise ImageReadError(f'{path}: the list file names no image')
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ImageReadError(f'{path}: names listed twice: {dup[:5]}')
    return names


def find_images(folder: str, names: Optional[Sequence[str]], what: str) -> Dict[str, str]:
    """``{name: path}`` of the images of ``folder`` (by base name, any extension); with ``names``,
    each must be there (the error names the folder and the missing pairs)."""
    files = {stem: osp.join(folder, f) for stem, f in images_by_name(folder).items()}
    if names is None:
        if not files:
            raise ImageReadError(f'{folder}: the {what} folder holds no images')
        return files
    missing = [n for n in names if n not in files]
    if missing:
        raise ImageReadError(f'{folder}: no {what} image for {len(missing)} listed pair(s): {", ".join(missing[:10])}'
                             + (' ...' if len(missing) > 10 else ''))
    return {n: files[n] for n in names}


def _resize(img: np.ndarray, size: Optional[Sequence[int]], nearest: bool) -> np.ndarray:
    if not size or tuple(img.shape[:2]) == tuple(size):
        return img
    h, w = int(size[0]), int(size[1])
    interp = cv2.INTER_NEAREST if nearest else (cv2.INTER_AREA if h < img.shape[0] else cv2.INTER_LINEAR)
    return cv2.resize(img, (w, h), interpolation=interp)


@DATASET_REGISTRY.register()
class SegmentationDataset(data.Dataset):
    """Images paired with label maps by base name (extensions may differ).

    Options (``datasets.<phase>`` in the YAML):

    ================ ========= =================================================================
    dataroot_img     required  folder of input images: one method's fused results, or any images
    dataroot_label   required  folder of label maps (single-channel class ids)
    meta_info        ~         list file of pair names (one per line); ~ = every image of the folder
    num_classes      required  number of classes; label values must be < num_classes or ignore_index
    ignore_index     255       label value left out of loss and metrics
    classes          ~         class names (for logs / reports; dataset options files in options/segmentation)
    palette          ~         RGB colour per class (prediction pictures)
    size             ~         [H, W] the image is resized to (~: full resolution)
    label_full_res   false     true: the label keeps its file resolution (evaluation at label resolution)
    use_hflip        false     random horizontal flip (training)
    scale_range      ~         [lo, hi]: random rescale of the image by a factor in [lo, hi], then a
                               random crop (padded with ignore_index) back to ``size`` (training)
    cache            true      keep decoded, resized images in memory (small datasets)
    ================ ========= =================================================================

    Items: ``img`` (3 x H x W float in [0, 1]; grey images are repeated), ``label`` (H x W int64),
    ``name``, ``img_path``, ``label_path``. Sizes of image and label files must agree.
    """

    # the keys read here (fusion.utils.option_schema; docs/options.md); basicsr adds ``phase``
    OPTIONS = {
        'dataroot_img': Required('str'), 'dataroot_label': Required('str'), 'meta_info': 'str',
        'num_classes': Required('int'), 'ignore_index': 'int', 'classes': 'list', 'palette': 'list',
        'size': 'list', 'label_full_res': 'bool', 'use_hflip': 'bool', 'scale_range': 'list', 'cache': 'bool',
        'phase': 'str',
    }

    def __init__(self, opt: dict, names: Optional[Sequence[str]] = None) -> None:
        """``names``: the pairs to use, given from Python (instead of ``meta_info``)."""
        super().__init__()
        self.opt = opt
        for key in ('dataroot_img', 'dataroot_label', 'num_classes'):
            if opt.get(key) in (None, ''):
                raise ValueError(f'dataset "{opt.get("name")}": option {key} is required')
        self.num_classes = int(opt['num_classes'])
        self.ignore_index = opt.get('ignore_index', 255)
        self.size = opt.get('size')
        if self.size is not None and (len(self.size) != 2 or min(self.size) < 1):
            raise ValueError(f'dataset "{opt.get("name")}": size must be [H, W], got {self.size}')
        classes, palette = opt.get('classes'), opt.get('palette')
        if classes is not None and len(classes) != self.num_classes:
            raise ValueError(f'dataset "{opt.get("name")}": {len(classes)} classes named for num_classes '
                             f'{self.num_classes}')
        if palette is not None and len(palette) != self.num_classes:
            raise ValueError(f'dataset "{opt.get("name")}": {len(palette)} palette colours for num_classes '
                             f'{self.num_classes}')
        if names is None and opt.get('meta_info'):
            names = read_name_list(opt['meta_info'])
        labels = find_images(opt['dataroot_label'], names, 'label')
        names = names if names is not None else sorted(labels)
        images = find_images(opt['dataroot_img'], names, 'input')
        self.items = [{'name': n, 'img_path': images[n], 'label_path': labels[n]} for n in names]
        self._cache: Dict[int, Tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.items)

    def load(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        """Decoded image (H x W x 3 float32, resized to ``size``) and label (int64) of item ``index``."""
        if index in self._cache:
            return self._cache[index]
        item = self.items[index]
        img = read_rgb(item['img_path'])
        label = read_label(item['label_path'], self.num_classes, self.ignore_index)
        if img.shape[:2] != label.shape:
            raise ImageReadError(f'size mismatch: {item["img_path"]} is {img.shape[1]}x{img.shape[0]} (WxH) but its '
                                 f'label {item["label_path"]} is {label.shape[1]}x{label.shape[0]}')
        img = _resize(img, self.size, nearest=False)
        if not self.opt.get('label_full_res', False):
            label = _resize(label.astype(np.int32), self.size, nearest=True).astype(np.int64)
        if self.opt.get('cache', True):
            self._cache[index] = (img, label)
        return img, label

    def _random_scale_crop(self, img: np.ndarray, label: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        lo, hi = self.opt['scale_range']
        h, w = label.shape
        factor = random.uniform(float(lo), float(hi))
        new_h, new_w = max(1, round(h * factor)), max(1, round(w * factor))
        img = _resize(img, (new_h, new_w), nearest=False)
        label = _resize(label.astype(np.int32), (new_h, new_w), nearest=True).astype(np.int64)
        pad_h, pad_w = max(0, h - new_h), max(0, w - new_w)
        if pad_h or pad_w:
            img = np.pad(img, ((0, pad_h), (0, pad_w), (0, 0)))
            fill = self.ignore_index if self.ignore_index is not None else 0
            label = np.pad(label, ((0, pad_h), (0, pad_w)), constant_values=fill)
        top = random.randint(0, img.shape[0] - h)
        left = random.randint(0, img.shape[1] - w)
        return img[top:top + h, left:left + w], label[top:top + h, left:left + w]

    def __getitem__(self, index: int) -> Dict:
        img, label = self.load(index)
        if self.opt.get('scale_range'):
            img, label = self._random_scale_crop(img, label)
        if self.opt.get('use_hflip', False) and random.random() < 0.5:
            img, label = img[:, ::-1], label[:, ::-1]
        item = self.items[index]
        return {'img': torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))),
                'label': torch.from_numpy(np.ascontiguousarray(label)),
                'name': item['name'], 'img_path': item['img_path'], 'label_path': item['label_path']}
