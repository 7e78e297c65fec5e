"""Train and test one segmenter per (fusion method, seed) on that method's images; resumable.

Fairness: for a given seed every method gets the same network initialisation (the global RNGs
are seeded right before the network is built), the same data order (one generator per seed) and
the same augmentation draws (each sample is loaded with RNGs seeded from (seed, epoch, position),
``fusion.training.SeededSamples``), the same schedule and the same class weights (from the labels,
which all methods share). Only the input images differ.

Units: each finished (method, seed) writes ``<out>/units/<method>/seed<k>.json`` (its confusion
matrix, a fingerprint of everything it depends on, its run time) atomically; a later run with the
same fingerprint reuses it, so an interrupted comparison continues where it stopped.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import os.path as osp
import random
import re
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from basicsr.models import build_model

from fusion.data.segmentation_dataset import SegmentationDataset, find_images, read_label
from fusion.metrics.baselines import BASELINES
from fusion.metrics.segmentation_metrics import confusion_matrix
from fusion.training import SeededSamples, sample_seed
from fusion.utils.file_util import atomic_write_bytes
from fusion.utils.img_util import ImageReadError, check_same_size, imwrite_atomic, read_gray
from fusion.utils.palette_util import as_palette, colorize


__all__ = ['BASELINE_KINDS', 'SegmentationInputs', 'ProtocolResult', 'split_names', 'prepare_baselines',
           'class_weights', 'model_options', 'run_protocol', 'picture_names', 'FIXED_UNIT']

# reference "methods" built from the sources: IR alone, visible alone, pixel mean / max (grey, as
# scripts/evaluate.py), and the label map painted in the palette (a control that must score high)
BASELINE_KINDS = ('ir', 'vis', 'mean', 'max', 'label')
FIXED_UNIT = 'fixed'
_NAME_RE = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.+-]*$')
UNIT_ERRORS = (ImageReadError, ValueError, OSError, RuntimeError, FloatingPointError)

logger = logging.getLogger('basicsr')


@dataclass
class SegmentationInputs:
    """What a comparison runs on: the source and label folders, the methods' folders, the split."""
    ir_dir: str
    vis_dir: str
    label_dir: str
    methods: Dict[str, str]
    train_names: List[str]
    test_names: List[str]


@dataclass
class ProtocolResult:
    """Confusion matrices per method and unit (seed or ``fixed``), failures, and run times."""
    confusions: Dict[str, Dict[str, np.ndarray]] = field(default_factory=dict)
    failed: Dict[str, str] = field(default_factory=dict)
    seconds: Dict[str, Dict[str, float]] = field(default_factory=dict)
    reused: int = 0


def check_method_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise ValueError(f'method name {name!r}: use letters, digits and _ . + - (it names a folder)')
    return name


def split_names(names: Sequence[str], train_fraction: float, seed: int = 0) -> Tuple[List[str], List[str]]:
    """A seeded random split (sorted lists): ``round(fraction * n)`` training names, the rest test."""
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f'--split: the training fraction must be in (0, 1), got {train_fraction}')
    names = sorted(names)
    n_train = int(round(train_fraction * len(names)))
    if n_train < 1 or n_train >= len(names):
        raise ValueError(f'--split {train_fraction}: {len(names)} labelled pairs give {n_train} training pairs; '
                         'both parts need at least one')
    order = np.random.RandomState(seed).permutation(len(names))
    return sorted(names[i] for i in order[:n_train]), sorted(names[i] for i in order[n_train:])


def prepare_baselines(kinds: Sequence[str], ir_dir: str, vis_dir: str, label_dir: str, names: Sequence[str],
                      out_dir: str, info: Mapping, progress: bool = False) -> Dict[str, str]:
    """Folders of the baseline "methods": ``ir`` / ``vis`` are the source folders themselves;
    ``mean`` / ``max`` (``fusion.metrics.baselines``, grey) and ``label`` (the label painted in the
    palette) are written once into ``out_dir/<kind>/`` (existing files are kept: resumable)."""
    from tqdm import tqdm

    folders: Dict[str, str] = {}
    written = [k for k in kinds if k in ('mean', 'max', 'label')]
    for kind in kinds:
        if kind not in BASELINE_KINDS:
            raise ValueError(f'--baseline: unknown baseline {kind!r} (choose from {", ".join(BASELINE_KINDS)})')
        folders[kind] = {'ir': ir_dir, 'vis': vis_dir}.get(kind, osp.join(out_dir, kind))
    if not written:
        return folders
    ir_files = find_images(ir_dir, names, 'infrared') if {'mean', 'max'} & set(written) else {}
    vis_files = find_images(vis_dir, names, 'visible') if {'mean', 'max'} & set(written) else {}
    label_files = find_images(label_dir, names, 'label') if 'label' in written else {}
    palette = as_palette(info.get('palette'), len(info['classes']))
    for name in tqdm(names, desc='baselines', unit='image', disable=not progress):
        todo = [k for k in written if not osp.isfile(osp.join(folders[k], f'{name}.png'))]
        if not todo:
            continue
        if {'mean', 'max'} & set(todo):
            ir, vis = read_gray(ir_files[name]), read_gray(vis_files[name])
            check_same_size(ir, vis, ir_files[name], vis_files[name])
        for kind in todo:
            if kind == 'label':
                label = read_label(label_files[name], len(info['classes']), info.get('ignore_index'))
                img = colorize(label, palette)
            else:
                img = BASELINES[kind](ir, vis)
            imwrite_atomic(img, osp.join(folders[kind], f'{name}.png'))
    return folders


def class_weights(label_dir: str, names: Sequence[str], info: Mapping, size: Sequence[int]) -> List[float]:
    """``1 / sqrt(frequency)`` of each class over the training labels (at the training size),
    normalised to mean 1 over the classes present; absent classes get 0 (they have no pixels)."""
    import cv2

    num_classes = len(info['classes'])
    counts = np.zeros(num_classes, np.float64)
    for path in find_images(label_dir, names, 'label').values():
        label = read_label(path, num_classes, info.get('ignore_index'))
        label = cv2.resize(label.astype(np.int32), (int(size[1]), int(size[0])), interpolation=cv2.INTER_NEAREST)
        counts += np.bincount(label[label < num_classes].ravel(), minlength=num_classes)[:num_classes]
    present = counts > 0
    weights = np.zeros(num_classes)
    weights[present] = 1.0 / np.sqrt(counts[present] / counts.sum())
    weights[present] /= weights[present].mean()
    return [float(w) for w in weights]


def model_options(preset: Mapping, info: Mapping, total_iter: int, class_weight: Optional[List[float]] = None,
                  checkpoint: Optional[str] = None, is_train: bool = True) -> dict:
    """Options of a ``SegmentationModel`` for a preset: the same model class as ``fusion/train.py``."""
    network = dict(preset['network'])
    network['num_classes'] = len(info['classes'])
    scheduler = dict(preset.get('scheduler') or {'type': 'WarmupPolyLR'})
    if preset.get('warmup_fraction') is not None and scheduler.get('type', 'WarmupPolyLR') == 'WarmupPolyLR':
        scheduler['warmup_iter'] = int(round(float(preset['warmup_fraction']) * total_iter))
    return {
        'name': 'segmentation_protocol', 'model_type': 'SegmentationModel', 'is_train': is_train,
        'num_gpu': 1 if torch.cuda.is_available() else 0, 'dist': False, 'rank': 0, 'world_size': 1,
        'path': {'pretrain_network_g': checkpoint, 'param_key_g': 'params', 'strict_load_g': True},
        'network_g': network,
        'train': {'total_iter': total_iter, 'optim_g': dict(preset['optim']), 'scheduler': scheduler,
                  'head_lr_mult': preset.get('head_lr_mult', 1.0), 'no_decay_norm': preset.get('no_decay_norm', True),
                  'seg_loss': {'ignore_index': info.get('ignore_index', 255), 'class_weight': class_weight}},
        'val': {'pbar': False},
    }


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _fingerprint(**parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def picture_names(label_dir: str, test_names: Sequence[str], info: Mapping, count: int) -> List[str]:
    """The ``count`` test images with the most distinct non-background classes (ties: by name)."""
    if count <= 0:
        return []
    scored = []
    files = find_images(label_dir, test_names, 'label')
    background = info.get('background_index', 0)
    for name in test_names:
        label = read_label(files[name], len(info['classes']), info.get('ignore_index'))
        classes = set(np.unique(label[label < len(info['classes'])]).tolist()) - {background}
        scored.append((-len(classes), name))
    return [name for _, name in sorted(scored)[:count]]


def _datasets(image_dir: str, inputs: SegmentationInputs, preset: Mapping, info: Mapping, method: str):
    common = {'dataroot_img': image_dir, 'dataroot_label': inputs.label_dir, 'num_classes': len(info['classes']),
              'ignore_index': info.get('ignore_index', 255), 'classes': info['classes'], 'palette': info.get('palette'),
              'size': list(preset['size']), 'cache': preset.get('cache', True)}
    train = None
    if inputs.train_names:
        train = SegmentationDataset(dict(common, name=f'{method}_train', use_hflip=preset.get('use_hflip', True),
                                         scale_range=preset.get('scale_range')), names=inputs.train_names)
    test = SegmentationDataset(dict(common, name=f'{method}_test', label_full_res=True), names=inputs.test_names)
    return train, test


def _preload(dataset: Optional[SegmentationDataset]) -> None:
    """Decodes every image once (errors for this method surface before any training)."""
    if dataset is not None:
        for i in range(len(dataset)):
            dataset.load(i)


def _train(model, dataset: SegmentationDataset, total_iter: int, batch_size: int, seed: int,
           step: Callable[[int, float], None]) -> None:
    samples = SeededSamples(dataset)
    order_gen = torch.Generator().manual_seed(seed)
    per_epoch = len(dataset) // batch_size
    current, epoch = 0, 0
    while current < total_iter:
        order = torch.randperm(len(dataset), generator=order_gen).tolist()
        for b in range(per_epoch):
            if current >= total_iter:
                break
            positions = range(b * batch_size, (b + 1) * batch_size)
            items = [samples[(order[p], sample_seed(seed, epoch, p))] for p in positions]
            model.feed_data({'img': torch.stack([x['img'] for x in items]),
                             'label': torch.stack([x['label'] for x in items])})
            current += 1
            model.optimize_parameters(current)
            step(current, model.get_current_log().get('l_seg', float('nan')))
        epoch += 1


def _test(model, dataset: SegmentationDataset, info: Mapping, pred_dir: Optional[str],
          names: Sequence[str]) -> np.ndarray:
    num_classes = len(info['classes'])
    cm = np.zeros((num_classes, num_classes), np.int64)
    palette = as_palette(info.get('palette'), num_classes)
    for i in range(len(dataset)):
        item = dataset[i]
        pred = model.predict(item['img'][None], item['label'].shape[-2:])[0]
        cm += confusion_matrix(pred, item['label'], num_classes, info.get('ignore_index'))
        if pred_dir and item['name'] in names:
            imwrite_atomic(colorize(pred.numpy(), palette), osp.join(pred_dir, f'{item["name"]}.png'))
    return cm


def unit_path(out_dir: str, method: str, unit: str) -> str:
    return osp.join(out_dir, 'units', method, f'{unit}.json')


def run_protocol(inputs: SegmentationInputs, preset: Mapping, info: Mapping, seeds: Sequence[int], out_dir: str,
                 fixed_checkpoint: Optional[str] = None, picture: Sequence[str] = (),
                 progress: Optional[Callable[..., object]] = None) -> ProtocolResult:
    """Runs every (method, seed) unit not finished yet and returns all confusion matrices.

    ``fixed_checkpoint``: test that one segmenter (the preset's network) on every method, no
    training. ``picture``: test names whose predictions of the first unit are saved (palette PNGs
    in ``units/<method>/<unit>_pred/``). ``progress(total=, desc=)``: a tqdm-like factory.
    A failing method is recorded in ``result.failed`` and the others go on.
    """
    result = ProtocolResult()
    fixed = fixed_checkpoint is not None
    batch_size = int(preset['batch_size'])
    if not fixed and len(inputs.train_names) < batch_size:
        raise ValueError(f'{len(inputs.train_names)} training pairs are fewer than one batch '
                         f'(batch_size {batch_size} in {preset["_path"]})')
    total_iter = int(preset['epochs']) * (len(inputs.train_names) // batch_size) if not fixed else 0
    weight = None
    if not fixed:
        weight = preset.get('class_weight')
        if weight == 'sqrt_inv_freq':
            weight = class_weights(inputs.label_dir, inputs.train_names, info, preset['size'])
        elif weight is not None and len(weight) != len(info['classes']):
            raise ValueError(f'{preset["_path"]}: class_weight has {len(weight)} values for {len(info["classes"])} '
                             'classes')
    # the network must build (and a fixed checkpoint fit it) before any method's work starts
    check = model_options(preset, info, max(total_iter, 1), weight, fixed_checkpoint, is_train=False)
    try:
        fixed_model = build_model(check)
    except RuntimeError as err:
        raise ValueError(str(err)) from err
    if not fixed:
        del fixed_model
    units = [FIXED_UNIT] if fixed else [f'seed{s}' for s in seeds]
    common = {'preset': {k: v for k, v in preset.items() if k not in ('_path', 'description', 'seeds')},
              'classes': info['classes'], 'ignore_index': info.get('ignore_index'), 'train': list(inputs.train_names),
              'test': list(inputs.test_names), 'class_weight': weight, 'picture': list(picture),
              'fixed': None if not fixed else (osp.abspath(fixed_checkpoint), osp.getmtime(fixed_checkpoint))}
    datasets: Dict[str, tuple] = {}
    for method in inputs.methods:
        result.confusions[method] = {}
        result.seconds[method] = {}
    # seed-major order: an interrupted comparison has every method at the first seeds
    for index, unit in enumerate(units):
        seed = 0 if fixed else int(seeds[index])
        for method, image_dir in inputs.methods.items():
            if method in result.failed:
                continue
            try:
                fingerprint = _fingerprint(common=common, method_dir=osp.abspath(image_dir), unit=unit)
                path = unit_path(out_dir, method, unit)
                pred_dir = osp.join(out_dir, 'units', method, f'{unit}_pred') if index == 0 and picture else None
                if osp.isfile(path):
                    with open(path) as f:
                        saved = json.load(f)
                    if saved.get('fingerprint') == fingerprint:
                        result.confusions[method][unit] = np.asarray(saved['confusion_matrix'], np.int64)
                        result.seconds[method][unit] = float(saved.get('seconds', 0.0))
                        result.reused += 1
                        continue
                    logger.info(f'{path}: made with other inputs or options; running the unit again')
                if method not in datasets:
                    datasets[method] = _datasets(image_dir, inputs, preset, info, method)
                    _preload(datasets[method][0])
                    _preload(datasets[method][1])
                train_set, test_set = datasets[method]
                start = time.time()
                if fixed:
                    model = fixed_model
                else:
                    _seed_everything(seed)
                    model = build_model(model_options(preset, info, total_iter, weight))
                    bar = progress(total=total_iter, desc=f'{method} seed {seed}') if progress else None

                    def step(i: int, loss: float, bar=bar) -> None:
                        if bar is not None:
                            bar.update(1)
                            if i % 10 == 0:
                                bar.set_postfix(loss=f'{loss:.3f}')
                    try:
                        _train(model, train_set, total_iter, batch_size, seed, step)
                    finally:
                        if bar is not None:
                            bar.close()
                cm = _test(model, test_set, info, pred_dir, picture)
                seconds = time.time() - start
                record = {'method': method, 'unit': unit, 'fingerprint': fingerprint, 'seconds': round(seconds, 2),
                          'confusion_matrix': cm.tolist()}
                atomic_write_bytes(json.dumps(record).encode(), path)
                result.confusions[method][unit] = cm
                result.seconds[method][unit] = seconds
            except UNIT_ERRORS as err:
                message = str(err) if isinstance(err, (ValueError, OSError)) else f'{type(err).__name__}: {err}'
                result.failed[method] = message
                datasets.pop(method, None)
                logger.error(f'method {method}: {message}')
    return result


def unit_seconds(out_dir: str) -> Dict[str, float]:
    """Run time of each finished unit file under ``out_dir`` (for reports)."""
    times = {}
    root = osp.join(out_dir, 'units')
    for method in sorted(os.listdir(root)) if osp.isdir(root) else []:
        for f in sorted(os.listdir(osp.join(root, method))):
            if f.endswith('.json'):
                with open(osp.join(root, method, f)) as fh:
                    times[f'{method}/{f[:-5]}'] = float(json.load(fh).get('seconds', 0.0))
    return times
