"""SAGE training/validation dataset: IR, visible Y/Cr/Cb, class-id labels and the teacher's patches."""
from __future__ import annotations

import logging
import os.path as osp
from typing import Any, Dict, Optional, Tuple

import cv2
import numpy as np
import torch
from basicsr.utils.registry import DATASET_REGISTRY
from torch.utils import data

from fusion.data.mask_cache import MaskCache, MaskCacheError, decode_entry, encode_entry
from fusion.data.patch_sources import MaskInput, build_patch_source, select_largest
from fusion.data.sample_io import PairBackend, gray_to_rgb_uint8, image_fingerprint, ycrcb_to_rgb_uint8
from fusion.utils.img_util import ImageReadError
from fusion.utils.option_schema import Choice, Component, Required


logger = logging.getLogger('basicsr')

PATCH_MODES = ('masked_intensity', 'binary')
MISSING_MASK_MODES = ('pad_with_image', 'pad_with_zeros', 'error')
TEACHER_MIN_SIZE = 16  # the teacher's 4x4 pooling at its deepest scale needs >= 16 px (sage_reference 1.6)


@DATASET_REGISTRY.register()
class SAGEFusionDataset(data.Dataset):
    """IR/visible pairs (+ optional labels) with the region patches SAGE's teacher takes.

    Options (``opt``), see docs/data.md for the full table:
        dataroot_ir, dataroot_vis, dataroot_label (optional): folders, or LMDBs from
            scripts/create_lmdb.py with ``io_backend: {type: lmdb}``.
        mask_cache (optional): LMDB from scripts/generate_masks.py (required for ``sam``).
        patch_source: ``{type: sam|label|random_crop|superpixel, ...}``; without a cache the
            non-SAM sources run on the fly; with a cache, optional (options given must match it).
        mask_num (4), patch_mode (masked_intensity|binary), missing_masks
            (pad_with_image|pad_with_zeros|error), pair_masks (true), verify_mask_cache (true).
        gt_size ([192, 256], H W), use_hflip (true), seed (0).
        ignore_index (255), num_classes (required with labels), label_map ({raw id: class id}).
        crop_to_multiple (2), min_size (16): validation sizes (see ``_val_crop``).
        phase: 'train' (random crop + flip) or anything else (full image).

    Sample: name, ir, vis_y, vis_cr, vis_cb (1 x H x W float [0, 1]), label (H x W int64),
    ir_patches, vis_patches (mask_num x H x W float), ir_masks, vis_masks (the binary masks of the
    patches, mask_num x H x W float {0, 1}), ir_path, vis_path, vis_is_gray.

    Randomness: every sample draws from its own ``numpy.random.Generator`` seeded with
    (seed, epoch, worker id, draw counter, index); nothing touches the global RNGs. Runs with the
    same seed/sampler/worker count are identical. ``set_epoch(e)`` (call it beside
    ``sampler.set_epoch``) resets the counter, so a resumed epoch replays exactly;
    ``set_sample_seed(s)`` seeds the next sample alone from ``s``.
    """

    # the keys read here (fusion.utils.option_schema; docs/options.md); basicsr adds ``phase``
    OPTIONS = {
        'dataroot_ir': Required('str'), 'dataroot_vis': Required('str'), 'dataroot_label': 'str',
        'io_backend': {'type': Choice('disk', 'lmdb')}, 'mask_cache': 'str',
        'patch_source': Component('patch_source', default_type='sam'), 'mask_num': 'int',
        'patch_mode': Choice(*PATCH_MODES), 'missing_masks': Choice(*MISSING_MASK_MODES), 'pair_masks': 'bool',
        'verify_mask_cache': 'bool', 'gt_size': 'int|list', 'use_hflip': 'bool', 'seed': 'int',
        'ignore_index': 'int', 'num_classes': 'int', 'label_map': 'dict', 'crop_to_multiple': 'int',
        'min_size': 'int', 'phase': 'str',
    }

    def __init__(self, opt: Dict[str, Any]) -> None:
        super().__init__()
        self.opt = opt
        for key in ('dataroot_ir', 'dataroot_vis'):
            if not opt.get(key):
                raise ValueError(f'dataset "{opt.get("name")}": option {key} is required')
        self.is_train = str(opt.get('phase', 'train')).split('_')[0] == 'train'
        io_type = (opt.get('io_backend') or {'type': 'disk'}).get('type', 'disk')
        self.pairs = PairBackend(opt['dataroot_ir'], opt['dataroot_vis'], opt.get('dataroot_label'), io_type)

        self.mask_num = int(opt.get('mask_num', 4))
        self.patch_mode = opt.get('patch_mode', 'masked_intensity')
        self.missing_masks = opt.get('missing_masks', 'pad_with_image')
        self.pair_masks = bool(opt.get('pair_masks', True))
        self.verify_cache = bool(opt.get('verify_mask_cache', True))
        _check_choice('patch_mode', self.patch_mode, PATCH_MODES)
        _check_choice('missing_masks', self.missing_masks, MISSING_MASK_MODES)
        if self.mask_num < 1:
            raise ValueError(f'mask_num must be >= 1, got {self.mask_num}')

        gt_size = opt.get('gt_size', [192, 256])
        if isinstance(gt_size, int):
            gt_size = [gt_size, gt_size]
        self.gt_size: Tuple[int, int] = (int(gt_size[0]), int(gt_size[1]))
        self.use_hflip = bool(opt.get('use_hflip', True))
        self.crop_to_multiple = int(opt.get('crop_to_multiple', 2) or 1)
        self.min_size = int(opt.get('min_size', TEACHER_MIN_SIZE))

        self.ignore_index = int(opt.get('ignore_index', 255))
        self.num_classes = opt.get('num_classes')
        if self.pairs.has_label and self.num_classes is None:
            raise ValueError('SAGEFusionDataset: labels are given (dataroot_label) but num_classes is not')
        self.label_map = {int(k): int(v) for k, v in (opt.get('label_map') or {}).items()}

        # RNG state: seed from the options, epoch from set_epoch, a per-process draw counter
        self.seed = int(opt.get('seed', 0) or 0)
        self.epoch = 0
        self._draws = 0
        self._sample_seed: Optional[int] = None
        self._warned_missing = False
        self._memo: Dict[str, bytes] = {}

        source_opt = dict(opt.get('patch_source') or {})
        self.cache: Optional[MaskCache] = None
        self.source = None
        if opt.get('mask_cache'):
            self.cache = MaskCache(opt['mask_cache'])
            if not source_opt:  # no patch_source given: whatever the cache was asked to hold
                fallback = self.cache.meta.get('fallback')
                source_opt = {'type': fallback['requested'] if fallback else self.cache.source_type}
            self._check_cache(source_opt)
        elif source_opt.get('type', 'sam') == 'sam':
            raise MaskCacheError('patch_source sam needs precomputed masks: run scripts/generate_masks.py and set '
                                 '`mask_cache` (or choose patch_source label | random_crop | superpixel)')
        else:
            self.source = build_patch_source(source_opt, allow_fallback=False)
            if 'label' in self.source.needs and not self.pairs.has_label:
                raise ValueError("patch_source 'label' needs dataroot_label")
        logger.info(f'SAGEFusionDataset: {len(self)} pairs, phase {"train" if self.is_train else "val"}, patches from '
                    + (f'mask cache {opt["mask_cache"]} ({self._cache_source_text()})' if self.cache
                       else f'{self.source.type_name} (on the fly)'))

    # ------------------------------------------------------------------------------------------
    # setup checks

    def _cache_source_text(self) -> str:
        meta = self.cache.meta
        text = meta['source']['type']
        if meta.get('fallback'):
            text += f' as FALLBACK for {meta["fallback"]["requested"]}: {meta["fallback"]["reason"]}'
        return text

    def _check_cache(self, source_opt: Dict[str, Any]) -> None:
        path, meta = self.cache.path, self.cache.meta
        wanted = source_opt.get('type')
        stored = meta['source']
        fallback = meta.get('fallback')
        if stored['type'] != wanted:
            if fallback and fallback.get('requested') == wanted:
                # allowed, never silent: the log says what the teacher really gets
                logger.warning(f'mask cache {path} holds {stored["type"]} masks made as a FALLBACK for {wanted} '
                               f'({fallback["reason"]}); the teacher gets {stored["type"]} regions, not {wanted} masks')
            else:
                raise MaskCacheError(f'{path}: the cache holds {stored["type"]} masks but patch_source.type is '
                                     f'{wanted!r}')
        else:
            self._check_cache_settings(source_opt, stored)
        if meta['max_masks'] < self.mask_num:
            logger.warning(f'mask cache {path} keeps {meta["max_masks"]} masks per image but mask_num is '
                           f'{self.mask_num}: every sample is padded ({self.missing_masks})')
        names = set(self.cache.names())
        missing = [it['name'] for it in self.pairs.items if it['name'] not in names]
        self.cache.close()  # reopened lazily in each worker
        if missing:
            raise MaskCacheError(f'{path}: no masks for {len(missing)} of {len(self.pairs)} images (e.g. '
                                 f'{missing[:5]}); this cache was made for other images or is incomplete: '
                                 'run scripts/generate_masks.py on this dataset (it resumes)')

    def _check_cache_settings(self, source_opt: Dict[str, Any], stored: Dict[str, Any]) -> None:
        """Every option the user gave must match what the cache was made with."""
        flat = {**stored, **stored.get('generator', {})}
        diffs = []
        for key, value in source_opt.items():
            if key in ('type', 'device'):
                continue
            if key == 'checkpoint':
                if value and osp.isfile(value):
                    from fusion.utils.sam_util import file_sha256
                    if file_sha256(value) != stored.get('weights_sha256'):
                        diffs.append(f'checkpoint {value} is not the one the cache was made with')
                continue
            if key not in flat or _normalise(flat[key]) != _normalise(value):
                diffs.append(f'{key}: cache has {flat.get(key, "<absent>")!r}, options say {value!r}')
        if diffs:
            raise MaskCacheError(f'{self.cache.path}: the mask cache was made with other settings:\n  '
                                 + '\n  '.join(diffs))

    # ------------------------------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Makes the random stream a function of the epoch (call at every epoch start)."""
        self.epoch = int(epoch)
        self._draws = 0

    def set_sample_seed(self, seed: int) -> None:
        """Makes the next sample's randomness a function of (``seed`` option, ``seed``, index) only,
        whatever the worker or earlier draws: for trainers that seed each sample from its place
        in the run."""
        self._sample_seed = int(seed)

    def _rng(self, index: int) -> np.random.Generator:
        if self._sample_seed is not None:
            seed, self._sample_seed = self._sample_seed, None
            return np.random.default_rng([self.seed, seed, index])
        info = data.get_worker_info()
        worker = info.id + 1 if info is not None else 0
        self._draws += 1
        return np.random.default_rng([self.seed, self.epoch, worker, self._draws, index])

    def __len__(self) -> int:
        return len(self.pairs)

    def _label(self, raw: Optional[np.ndarray], shape: Tuple[int, int], item: Dict[str, str]) -> np.ndarray:
        if raw is None:
            return np.full(shape, self.ignore_index, dtype=np.int64)
        label = raw
        if self.label_map:
            label = raw.copy()
            for src, dst in self.label_map.items():
                label[raw == src] = dst
        bad = (label != self.ignore_index) & ((label < 0) | (label >= self.num_classes))
        if bad.any():
            values = np.unique(label[bad])
            raise ImageReadError(f'{item["label_path"]}: label values {values[:10].tolist()} are outside the class '
                                 f'range 0..{self.num_classes - 1} (ignore_index {self.ignore_index}); fix num_classes '
                                 'or map them with label_map (e.g. to the ignore index)')
        return label

    def _masks(self, item: Dict[str, str], ir: np.ndarray, ycrcb: np.ndarray,
               raw_label: Optional[np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
        shape = ir.shape[:2]
        if self.cache is not None:
            entry = self.cache.require(item['name'], shape, item['ir_path'], max_masks=self.mask_num)
            if self.verify_cache and entry.fingerprint != image_fingerprint(ir, ycrcb):
                raise MaskCacheError(f'{self.cache.path}: masks of "{item["name"]}" were made from other images than '
                                     f'{item["ir_path"]} / {item["vis_path"]}; regenerate the cache')
            return entry.ir, entry.vis
        # on the fly: masks depend only on the image, so each process keeps them, compactly encoded
        # (~20 KB per 640x480 image), and computes them once per image rather than once per epoch
        memo = self._memo.get(item['name'])
        if memo is not None:
            entry = decode_entry(memo, item['name'])
            if tuple(entry.size) == shape:
                return entry.ir, entry.vis
        inp = MaskInput(item['name'], shape, label=raw_label)
        if 'rgb' in self.source.needs:
            inp.ir_rgb, inp.vis_rgb = gray_to_rgb_uint8(ir), ycrcb_to_rgb_uint8(ycrcb)
        ir_m, vis_m = self.source.generate(inp, max_masks=self.mask_num)
        ir_m, vis_m = select_largest(ir_m, self.mask_num, shape), select_largest(vis_m, self.mask_num, shape)
        self._memo[item['name']] = encode_entry(ir_m, vis_m, '')
        return ir_m, vis_m

    def _augment(self, planes: np.ndarray, label: np.ndarray, masks: np.ndarray,
                 rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Same crop / resize / flip for images (C x H x W), label (H x W) and masks (n x H x W).

        As the official code: a random crop of ``gt_size`` on every side that is long enough; a
        side shorter than the crop is kept whole, and the crop is then resized to ``gt_size``
        (so a 150 x 640 image gives a 150 x 256 crop stretched to 192 x 256, not the whole image
        squashed)."""
        gh, gw = self.gt_size
        h, w = label.shape
        ch, cw = min(h, gh), min(w, gw)
        top = int(rng.integers(0, h - ch + 1))
        left = int(rng.integers(0, w - cw + 1))
        win = (slice(top, top + ch), slice(left, left + cw))
        planes, label, masks = planes[:, win[0], win[1]], label[win], masks[:, win[0], win[1]]
        if (ch, cw) != (gh, gw):
            planes = _resize(planes, (gh, gw), cv2.INTER_LINEAR)
            label = _resize(label[None], (gh, gw), cv2.INTER_NEAREST)[0]
            masks = _resize(masks, (gh, gw), cv2.INTER_NEAREST)
        if self.use_hflip and rng.random() < 0.5:
            planes, label, masks = planes[..., ::-1], label[..., ::-1], masks[..., ::-1]
        return planes, label, masks

    def _val_crop(self, planes: np.ndarray, label: np.ndarray, masks: np.ndarray,
                  item: Dict[str, str]) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Full image, cropped at the bottom/right to a multiple of ``crop_to_multiple`` (2: the
        largest even size the teacher accepts; 1: unchanged); at least ``min_size`` px each side."""
        m = self.crop_to_multiple
        h, w = label.shape
        nh, nw = h - h % m, w - w % m
        if min(nh, nw) < self.min_size:
            raise ImageReadError(f'{item["ir_path"]}: {w}x{h} is too small (needs >= {self.min_size} px per side after '
                                 f'cropping to a multiple of {m})')
        return planes[:, :nh, :nw], label[:nh, :nw], masks[:, :nh, :nw]

    def _binary_masks(self, masks: np.ndarray, n: int, shape: Tuple[int, int]) -> np.ndarray:
        """mask_num x H x W {0, 1}: the first ``n`` masks, padded as the patches are (all ones for
        ``pad_with_image``, zeros for ``pad_with_zeros``)."""
        out = np.full((self.mask_num, *shape), 0.0 if self.missing_masks == 'pad_with_zeros' else 1.0,
                      dtype=np.float32)
        out[:n] = masks[:n] > 0
        return out

    def _patches(self, image: np.ndarray, masks: np.ndarray, n: int, name: str) -> np.ndarray:
        """mask_num x H x W: the first ``n`` masks applied to ``image`` (or the masks themselves),
        then padding as ``missing_masks`` says."""
        out = np.empty((self.mask_num, *image.shape), dtype=np.float32)
        binary = self.patch_mode == 'binary'
        for k in range(n):
            out[k] = masks[k] if binary else image * masks[k]
        if n < self.mask_num:
            if self.missing_masks == 'error':
                raise MaskCacheError(f'{name}: only {n} mask(s) for mask_num {self.mask_num} (missing_masks: error)')
            if not self._warned_missing:
                self._warned_missing = True
                logger.warning(f'SAGEFusionDataset: "{name}" has {n} usable mask(s) < mask_num {self.mask_num}; '
                               f'padding with {self.missing_masks} (warned once per process)')
            out[n:] = 0.0 if self.missing_masks == 'pad_with_zeros' else (1.0 if binary else image)
        return out

    def __getitem__(self, index: int) -> Dict[str, Any]:
        item = self.pairs.items[index]
        ir, ycrcb, vis_is_gray, raw_label = self.pairs.read_pair(item)
        shape = ir.shape[:2]
        label = self._label(raw_label, shape, item)
        ir_masks, vis_masks = self._masks(item, ir, ycrcb, raw_label)
        if self.pair_masks:  # official: the k-th IR and k-th visible masks go together
            n_ir = n_vis = min(len(ir_masks), len(vis_masks), self.mask_num)
        else:
            n_ir, n_vis = min(len(ir_masks), self.mask_num), min(len(vis_masks), self.mask_num)
        masks = np.concatenate([ir_masks[:n_ir], vis_masks[:n_vis]], axis=0)
        planes = np.concatenate([ir[None], ycrcb.transpose(2, 0, 1)], axis=0)
        if self.is_train:
            planes, label, masks = self._augment(planes, label, masks, self._rng(index))
        else:
            planes, label, masks = self._val_crop(planes, label, masks, item)
        ir_p = self._patches(planes[0], masks[:n_ir], n_ir, item['name'])
        vis_p = self._patches(planes[1], masks[n_ir:], n_vis, item['name'])
        t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
        return {
            'name': item['name'],
            'ir': t(planes[0:1]), 'vis_y': t(planes[1:2]), 'vis_cr': t(planes[2:3]), 'vis_cb': t(planes[3:4]),
            'label': t(label.astype(np.int64)),
            'ir_patches': t(ir_p), 'vis_patches': t(vis_p),
            'ir_masks': t(self._binary_masks(masks[:n_ir], n_ir, label.shape)),
            'vis_masks': t(self._binary_masks(masks[n_ir:], n_vis, label.shape)),
            'ir_path': item['ir_path'], 'vis_path': item['vis_path'], 'vis_is_gray': vis_is_gray,
        }


def _resize(stack: np.ndarray, size: Tuple[int, int], interp: int) -> np.ndarray:
    """Resizes a C x H x W stack (any dtype, C may be 0) to C x size."""
    if stack.shape[0] == 0:
        return np.zeros((0, *size), dtype=stack.dtype)
    dtype = stack.dtype
    work = stack.astype(np.uint8) if dtype == bool else stack
    if work.dtype == np.int64:
        work = work.astype(np.int32)  # OpenCV cannot resize int64
    out = np.stack([cv2.resize(np.ascontiguousarray(c), (size[1], size[0]), interpolation=interp) for c in work])
    return out.astype(dtype)


def _check_choice(name: str, value: str, choices: Tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f'SAGEFusionDataset: {name} must be one of {choices}, got {value!r}')


def _normalise(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return value
