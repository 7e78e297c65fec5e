"""Patch sources: where the teacher's region masks come from, as registered, swappable components.

| type          | masks                                                     | needs                     |
|---------------|-----------------------------------------------------------|---------------------------|
| `sam`         | SamAutomaticMaskGenerator on the IR and on the visible image (RGB) | a SAM checkpoint  |
| `label`       | regions of the segmentation label (paper ablation (b))   | `dataroot_label`          |
| `random_crop` | random rectangles, fixed per image name (ablation (a))   | nothing                   |
| `superpixel`  | scikit-image superpixels of each modality                 | nothing (weight-free)     |

Every source returns boolean H x W masks for the IR and the visible image; :func:`select_largest`
keeps the K largest of each, sorted by area. ``describe()`` is the source's identity (type,
settings, weights hash): the mask cache stores it and refuses to mix masks of different identities.

Fallback: ``build_patch_source`` turns a ``sam`` request without a checkpoint file into the
``superpixel`` source, logs a warning and records ``fallback`` on the returned source (the cache
metadata keeps it). ``allow_fallback=False`` makes it an error instead.
"""
from __future__ import annotations

import copy
import inspect
import logging
import os.path as osp
import zlib
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from basicsr.utils.registry import Registry

from fusion.utils.option_schema import register_component_kind


PATCH_SOURCE_REGISTRY = Registry('patch_source')
register_component_kind('patch_source', PATCH_SOURCE_REGISTRY)  # option validation knows its entries

Masks = List[np.ndarray]

logger = logging.getLogger('basicsr')


def register_patch_source(name: str):
    """Registers a class under a short ``type`` name (``Registry.register`` would use the class name)."""
    def deco(cls):
        PATCH_SOURCE_REGISTRY._do_register(name, cls)
        cls.type_name = name
        return cls
    return deco


@dataclass
class MaskInput:
    """What a source may look at for one pair. Only the fields listed in ``source.needs`` are set."""
    name: str
    shape: Tuple[int, int]
    ir_rgb: Optional[np.ndarray] = None  # H x W x 3 uint8 (grey IR replicated)
    vis_rgb: Optional[np.ndarray] = None  # H x W x 3 uint8 RGB
    label: Optional[np.ndarray] = None  # H x W int64 raw label ids


class PatchSource:
    """Base class. Subclasses set ``needs`` and implement ``settings`` and ``generate``."""
    type_name = 'base'
    needs: Tuple[str, ...] = ()  # any of 'rgb', 'label'
    #: set by build_patch_source when this source stands in for another one
    fallback: Optional[Dict[str, str]] = None

    def settings(self) -> Dict[str, Any]:
        raise NotImplementedError

    def describe(self) -> Dict[str, Any]:
        """JSON-able identity: two sources with equal descriptions make identical masks."""
        return {'type': self.type_name, **self.settings()}

    def info(self) -> Dict[str, Any]:
        """JSON-able facts that do not change the masks (paths, device, library versions)."""
        return {}

    def generate(self, inp: MaskInput, max_masks: Optional[int] = None) -> Tuple[Masks, Masks]:
        """Returns (IR masks, visible masks), boolean H x W each, in any order. ``max_masks`` is a
        hint that only the largest ``max_masks`` will be kept (a source may skip work for others)."""
        raise NotImplementedError


def select_largest(masks: Sequence[np.ndarray], k: int, shape: Tuple[int, int]) -> np.ndarray:
    """The ``k`` largest non-empty masks sorted by area, descending (ties keep the source order).
    Returns a bool array of shape (n, H, W) with n <= k (n = 0 when there is none)."""
    areas = [int(np.count_nonzero(m)) for m in masks]
    order = sorted((i for i, a in enumerate(areas) if a > 0), key=lambda i: -areas[i])[:k]
    if not order:
        return np.zeros((0, *shape), dtype=bool)
    return np.stack([np.asarray(masks[i], dtype=bool) for i in order])


def _check_options(cls: type, opts: Dict[str, Any], allowed: Sequence[str]) -> None:
    unknown = sorted(set(opts) - set(allowed))
    if unknown:
        raise ValueError(f'patch source {cls.type_name!r}: unknown option(s) {unknown}; valid: {sorted(allowed)}')


# ----------------------------------------------------------------------------------------------
# SAM

#: the official SAGE settings (sage_reference.md section 6.2); library defaults for the rest
SAM_OFFICIAL_SETTINGS: Dict[str, Any] = dict(points_per_side=128, pred_iou_thresh=0.86, stability_score_thresh=0.92,
                                             crop_n_layers=1, crop_n_points_downscale_factor=2,
                                             min_mask_region_area=100)


def _sam_generator_defaults() -> Dict[str, Any]:
    from segment_anything import SamAutomaticMaskGenerator
    params = inspect.signature(SamAutomaticMaskGenerator.__init__).parameters
    defaults = {k: p.default for k, p in params.items() if k not in ('self', 'model', 'point_grids', 'output_mode')}
    defaults.update(SAM_OFFICIAL_SETTINGS)
    return defaults


@register_patch_source('sam')
class SAMPatchSource(PatchSource):
    """Segment Anything's automatic mask generator, run on the IR image (grey replicated to RGB) and
    on the visible image in RGB order (the official code fed BGR).

    Options: ``checkpoint`` (path), ``model_type`` (vit_b | vit_l | vit_h, or ``tiny`` = the small
    test model of ``fusion.utils.sam_util.build_tiny_sam`` with input side ``tiny_img_size``:
    random weights (seed 0) unless a checkpoint of that model is given; for tests and smoke runs
    only), ``device`` (auto | cpu | cuda[:N]) and every ``SamAutomaticMaskGenerator`` argument
    (defaults: the official SAGE settings).
    """
    needs = ('rgb',)

    def __init__(self, checkpoint: Optional[str] = None, model_type: str = 'vit_b', device: str = 'auto',
                 tiny_img_size: int = 256, **generator_opts: Any) -> None:
        defaults = _sam_generator_defaults()
        _check_options(type(self), generator_opts, list(defaults))
        self.generator_opts = {**defaults, **generator_opts}
        self.model_type = model_type
        # the tiny model's input side: 256 keeps CPU tests fast (SAM resizes the image to it)
        self.tiny_img_size = int(tiny_img_size)
        self.checkpoint = checkpoint
        self.device = device
        from fusion.utils.sam_util import SAM_MODEL_TYPES, SAMCheckpointError, file_sha256
        if model_type not in SAM_MODEL_TYPES + ('tiny',):
            raise ValueError(f"unknown SAM model_type {model_type!r}; choose one of {SAM_MODEL_TYPES + ('tiny',)}")
        if checkpoint is None and model_type != 'tiny':
            raise SAMCheckpointError(f'SAM {model_type} needs a checkpoint (option `checkpoint`)')
        if checkpoint is not None and not osp.isfile(checkpoint):
            raise SAMCheckpointError(f'SAM checkpoint not found: {checkpoint}')
        # the hash (not the path) identifies the weights: a moved file still matches its cache
        self.weights = file_sha256(checkpoint) if checkpoint else 'random(seed=0)'
        self._generator = None

    def settings(self) -> Dict[str, Any]:
        model = {'model_type': self.model_type, 'weights_sha256': self.weights}
        if self.model_type == 'tiny':
            model['tiny_img_size'] = self.tiny_img_size
        return {**model, 'generator': self.generator_opts}

    def info(self) -> Dict[str, Any]:
        import importlib.metadata as md
        try:
            version = md.version('segment-anything')
        except md.PackageNotFoundError:
            version = 'unknown'
        return {'checkpoint': osp.abspath(self.checkpoint) if self.checkpoint else None,
                'device': self._resolve_device(), 'segment_anything': version, 'input': 'RGB'}

    def _resolve_device(self) -> str:
        import torch
        if self.device == 'auto':
            return 'cuda' if torch.cuda.is_available() else 'cpu'
        return self.device

    def _build(self):
        from segment_anything import SamAutomaticMaskGenerator

        from fusion.utils.sam_util import SAMCheckpointError, build_sam, build_tiny_sam, load_sam_state_dict
        device = self._resolve_device()
        if self.model_type == 'tiny':
            sam = build_tiny_sam(img_size=self.tiny_img_size, seed=0)
            if self.checkpoint:
                missing, unexpected = sam.load_state_dict(load_sam_state_dict(self.checkpoint), strict=False)
                if missing or unexpected:
                    raise SAMCheckpointError(f'{self.checkpoint}: does not fit the tiny SAM '
                                             f'({len(missing)} missing, {len(unexpected)} unexpected keys)')
            sam = sam.to(device).eval()
        else:
            sam = build_sam(self.model_type, self.checkpoint, device)
        # uncompressed RLE: the K largest are chosen by area before any full-size mask is decoded
        return SamAutomaticMaskGenerator(sam, output_mode='uncompressed_rle', **self.generator_opts)

    def _generate_one(self, rgb: np.ndarray, max_masks: Optional[int]) -> Masks:
        from segment_anything.utils.amg import rle_to_mask
        if self._generator is None:
            self._generator = self._build()
        try:
            anns = self._generator.generate(rgb)
        except IndexError as err:
            # segment-anything 1.0 bug: with crop_n_layers >= 1 and no surviving mask, generate()
            # fails inside box_area on the empty crop boxes ("index 2 is out of bounds for
            # dimension 1 with size 0", sam_notes.md). It means "no masks".
            if self.generator_opts['crop_n_layers'] >= 1 and 'with size 0' in str(err):
                return []
            raise
        if max_masks is not None:
            # decode only what select_largest can keep; a stable sort keeps its tie order
            anns = sorted(anns, key=lambda a: -a['area'])[:max_masks]
        return [rle_to_mask(a['segmentation']) for a in anns]

    def generate(self, inp: MaskInput, max_masks: Optional[int] = None) -> Tuple[Masks, Masks]:
        return self._generate_one(inp.ir_rgb, max_masks), self._generate_one(inp.vis_rgb, max_masks)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state['_generator'] = None  # rebuilt in the receiving process
        return state


# ----------------------------------------------------------------------------------------------
# label regions (ablation b)

@register_patch_source('label')
class LabelPatchSource(PatchSource):
    """Regions of the segmentation label, identical for both modalities.

    Options: ``ignore_ids`` (label values that form no region, default [0, 255]: the unlabelled
    class 0 of MFNet/FMB-style labels, whose largest "region" is the background, and the usual
    ignore index; ``[255]`` keeps class 0 as regions), ``connected``
    (true: each connected component of a class is its own region; false: one region per class),
    ``min_area`` (smaller regions are dropped).
    """
    needs = ('label',)

    def __init__(self, ignore_ids: Sequence[int] = (0, 255), connected: bool = True, min_area: int = 1) -> None:
        self.ignore_ids = sorted(int(v) for v in ignore_ids)
        self.connected = bool(connected)
        self.min_area = int(min_area)

    def settings(self) -> Dict[str, Any]:
        return {'ignore_ids': self.ignore_ids, 'connected': self.connected, 'min_area': self.min_area}

    def generate(self, inp: MaskInput, max_masks: Optional[int] = None) -> Tuple[Masks, Masks]:
        import cv2
        if inp.label is None:
            raise ValueError(f'{inp.name}: the label patch source needs labels (dataroot_label / --label)')
        masks: Masks = []
        for value in np.unique(inp.label):
            if int(value) in self.ignore_ids:
                continue
            region = inp.label == value
            if self.connected:
                count, comp = cv2.connectedComponents(region.astype(np.uint8), connectivity=8)
                parts = [comp == i for i in range(1, count)]
            else:
                parts = [region]
            masks.extend(p for p in parts if np.count_nonzero(p) >= self.min_area)
        return masks, [m.copy() for m in masks]


# ----------------------------------------------------------------------------------------------
# random rectangles (ablation a)

@register_patch_source('random_crop')
class RandomCropPatchSource(PatchSource):
    """Random axis-aligned rectangles, identical for both modalities. They depend only on
    (``seed``, image name, size), so cached and on-the-fly masks agree and every epoch sees the same.

    Options: ``num_masks`` (rectangles per image), ``min_frac`` / ``max_frac`` (side length as a
    fraction of the image side), ``seed``.
    """

    def __init__(self, num_masks: int = 8, min_frac: float = 0.1, max_frac: float = 0.6, seed: int = 0) -> None:
        if not 0 < min_frac <= max_frac <= 1:
            raise ValueError(f'random_crop: need 0 < min_frac <= max_frac <= 1, got {min_frac}, {max_frac}')
        self.num_masks, self.seed = int(num_masks), int(seed)
        self.min_frac, self.max_frac = float(min_frac), float(max_frac)

    def settings(self) -> Dict[str, Any]:
        return {'num_masks': self.num_masks, 'min_frac': self.min_frac, 'max_frac': self.max_frac, 'seed': self.seed}

    def generate(self, inp: MaskInput, max_masks: Optional[int] = None) -> Tuple[Masks, Masks]:
        h, w = inp.shape
        rng = np.random.default_rng([self.seed, zlib.crc32(inp.name.encode('utf-8'))])
        masks = []
        for _ in range(self.num_masks):
            rh = max(1, int(round(h * rng.uniform(self.min_frac, self.max_frac))))
            rw = max(1, int(round(w * rng.uniform(self.min_frac, self.max_frac))))
            top, left = int(rng.integers(0, h - rh + 1)), int(rng.integers(0, w - rw + 1))
            m = np.zeros((h, w), dtype=bool)
            m[top:top + rh, left:left + rw] = True
            masks.append(m)
        return masks, [m.copy() for m in masks]


# ----------------------------------------------------------------------------------------------
# superpixels (weight-free fallback)

@register_patch_source('superpixel')
class SuperpixelPatchSource(PatchSource):
    """scikit-image superpixels computed separately on each modality: the weight-free stand-in
    for SAM. Felzenszwalb's graph segmentation (default) gives regions of varied size like SAM's
    automatic masks; SLIC gives compact, similar-sized cells.

    Options: ``method`` (felzenszwalb | slic), ``scale``, ``sigma``, ``min_size`` (felzenszwalb),
    ``n_segments``, ``compactness`` (slic).
    """
    needs = ('rgb',)

    def __init__(self, method: str = 'felzenszwalb', scale: float = 300.0, sigma: float = 0.8, min_size: int = 200,
                 n_segments: int = 32, compactness: float = 10.0) -> None:
        if method not in ('felzenszwalb', 'slic'):
            raise ValueError(f"superpixel method must be 'felzenszwalb' or 'slic', got {method!r}")
        self.method = method
        if method == 'felzenszwalb':
            self.params = {'scale': float(scale), 'sigma': float(sigma), 'min_size': int(min_size)}
        else:
            self.params = {'n_segments': int(n_segments), 'compactness': float(compactness), 'sigma': float(sigma)}

    def settings(self) -> Dict[str, Any]:
        return {'method': self.method, **self.params}

    def _segments(self, rgb: np.ndarray) -> Masks:
        from skimage.segmentation import felzenszwalb, slic
        if self.method == 'felzenszwalb':
            seg = felzenszwalb(rgb, channel_axis=-1, **self.params)
        else:
            seg = slic(rgb, start_label=0, channel_axis=-1, **self.params)
        return [seg == v for v in np.unique(seg)]

    def generate(self, inp: MaskInput, max_masks: Optional[int] = None) -> Tuple[Masks, Masks]:
        return self._segments(inp.ir_rgb), self._segments(inp.vis_rgb)


# ----------------------------------------------------------------------------------------------

def build_patch_source(opt: Dict[str, Any], allow_fallback: bool = True,
                       fallback_opt: Optional[Dict[str, Any]] = None) -> PatchSource:
    """Builds a source from ``{'type': name, **options}``.

    A ``sam`` request without a checkpoint becomes the ``superpixel`` source (options
    ``fallback_opt``) when ``allow_fallback``; this is logged as a warning and recorded in
    ``source.fallback``. A checkpoint path that does not exist always raises
    ``SAMCheckpointError`` (a typo must not silently change the masks).
    """
    opt = copy.deepcopy(dict(opt))
    kind = opt.pop('type', None)
    if kind not in PATCH_SOURCE_REGISTRY:
        raise ValueError(f'unknown patch source type {kind!r}; registered: {sorted(PATCH_SOURCE_REGISTRY.keys())}')
    cls = PATCH_SOURCE_REGISTRY.get(kind)
    if kind == 'sam' and opt.get('model_type', 'vit_b') != 'tiny':
        ckpt = opt.get('checkpoint')
        if ckpt and not osp.isfile(ckpt):
            # a path was given: a typo must not quietly degrade the masks to superpixels
            from fusion.utils.sam_util import SAMCheckpointError
            raise SAMCheckpointError(f'SAM checkpoint not found: {ckpt}')
        if not ckpt:
            reason = 'no SAM checkpoint given'
            if not allow_fallback:
                from fusion.utils.sam_util import SAMCheckpointError
                raise SAMCheckpointError(f'{reason}; give a checkpoint path or allow the superpixel fallback')
            source = SuperpixelPatchSource(**(fallback_opt or {}))
            source.fallback = {'requested': 'sam', 'used': 'superpixel', 'reason': reason}
            logger.warning(f'patch source: {reason}; FALLING BACK to weight-free superpixel masks '
                           f'({source.describe()}). The cache metadata records this fallback.')
            return source
    try:
        return cls(**opt)
    except TypeError as err:
        valid = [p for p in inspect.signature(cls.__init__).parameters if p != 'self']
        raise ValueError(f'patch source {kind!r}: {err}; valid options: {valid}') from err
