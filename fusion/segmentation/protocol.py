"""Train and test one segmenter per (fusion method, seed) on that method's images; resumable.

Fairness: for a given seed every method gets the same network initialisation (the global RNGs
are seeded right before the network is built), the same data order (one generator per seed) and
the same augmentation draws (each sample is loaded with RNGs seeded from (seed, epoch, position),
``fusion.utils.seeded_samples.SeededSamples``), the same schedule and the same class weights (from
the labels, which all methods share). Only the input images differ.

Units: each finished (method, seed) writes ``<out>/units/<method>/seed<k>.json`` (its confusion
matrix, a record of everything its result depends on, its run time) atomically; a later run reuses
it only when that record is unchanged (:data:`UNIT_INPUTS`), else it runs the unit again and logs
one line saying what changed. So an interrupted comparison continues where it stopped, and
regenerated images are never scored with an old result.

``run_protocol`` reads top to bottom: :func:`plan_run` (schedule, class weights, the network built
once as a check), :func:`shared_inputs` (what every unit depends on), then per unit
:func:`unit_inputs`, :func:`reusable_unit`, :class:`MethodData` (each method's datasets, decoded
once), :func:`train_unit`, :func:`score_unit` and :func:`write_unit`.
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
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from basicsr.models import build_model

from fusion.data.segmentation_dataset import SegmentationDataset, find_images, read_label
from fusion.metrics.baselines import BASELINES
from fusion.metrics.segmentation_metrics import confusion_matrix
from fusion.utils.file_util import atomic_write_bytes, file_sha256, files_digest
from fusion.utils.img_util import ImageReadError, check_same_size, imwrite_atomic, read_gray
from fusion.utils.palette_util import as_palette, colorize
from fusion.utils.seeded_samples import SeededSamples, sample_seed


__all__ = ['BASELINE_KINDS', 'SegmentationInputs', 'ProtocolResult', 'split_names', 'prepare_baselines',
           'baseline_sources', 'class_weights', 'model_options', 'total_iterations', 'run_protocol', 'picture_names',
           'FIXED_UNIT', 'UNIT_INPUTS']

# reference "methods" built from the sources: IR alone, visible alone, pixel mean / max (grey, as
# scripts/evaluate.py), and the label map painted in the palette (a control that must score high)
BASELINE_KINDS = ('ir', 'vis', 'mean', 'max', 'label')
FIXED_UNIT = 'fixed'
_NAME_RE = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.+-]*$')
UNIT_ERRORS = (ImageReadError, ValueError, OSError, RuntimeError, FloatingPointError)
# what a unit's result depends on (recorded in its file; any change runs it again) and the words
# that say so
UNIT_INPUTS = {
    'settings': 'the preset, classes, ignore_index, class weights or schedule changed',
    'split': 'the training/test names changed',
    'picture': 'the pictured test names changed',
    'labels': 'the label images changed (names, sizes or contents)',
    'images': "the method's images changed (names, sizes or contents)",
    'sources': "the sources the method's images were made from changed (e.g. --ir/--vis behind mean/max)",
    'threads': 'the torch thread count changed (it changes the floats)',
    'software': 'the torch / segmentation-models-pytorch version or the device changed',
    'checkpoint': 'the fixed segmenter checkpoint changed',
    'unit': 'another unit',
}

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
    # method -> the folders its images were computed from (the baselines: baseline_sources)
    made_from: Dict[str, List[str]] = field(default_factory=dict)


@dataclass
class ProtocolResult:
    """Confusion matrices per method and unit (seed or ``fixed``), failures, and run times."""
    confusions: Dict[str, Dict[str, np.ndarray]] = field(default_factory=dict)
    failed: Dict[str, str] = field(default_factory=dict)
    seconds: Dict[str, Dict[str, float]] = field(default_factory=dict)
    reused: int = 0
    rerun: Dict[str, str] = field(default_factory=dict)   # 'method/unit' -> why its old file was not reused


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


def baseline_sources(kinds: Sequence[str], ir_dir: str, vis_dir: str, label_dir: str) -> Dict[str, List[str]]:
    """The folders each written baseline is computed from (``SegmentationInputs.made_from``)."""
    sources = {'mean': [ir_dir, vis_dir], 'max': [ir_dir, vis_dir], 'label': [label_dir]}
    return {k: sources[k] for k in kinds if k in sources}


def _baseline_record(kind: str, files: Mapping[str, Mapping[str, str]], info: Mapping) -> dict:
    """What a written baseline's images are a function of: its sources' contents (+ palette)."""
    if kind == 'label':
        return {'label': files_digest(files['label']), 'palette': info.get('palette'),
                'classes': len(info['classes']), 'ignore_index': info.get('ignore_index')}
    return {'ir': files_digest(files['ir']), 'vis': files_digest(files['vis'])}


def prepare_baselines(kinds: Sequence[str], ir_dir: str, vis_dir: str, label_dir: str, names: Sequence[str],
                      out_dir: str, info: Mapping, progress: bool = False) -> Dict[str, str]:
    """Folders of the baseline "methods": ``ir`` / ``vis`` are the source folders themselves;
    ``mean`` / ``max`` (``fusion.metrics.baselines``, grey) and ``label`` (the label painted in the
    palette) are written into ``out_dir/<kind>/``. ``out_dir/<kind>.sources.json`` records the
    digest of the sources they were made from: a later run keeps the images (resumable) only while
    it matches, else it writes them all again and logs why."""
    from tqdm import tqdm

    folders: Dict[str, str] = {}
    for kind in kinds:
        if kind not in BASELINE_KINDS:
            raise ValueError(f'--baseline: unknown baseline {kind!r} (choose from {", ".join(BASELINE_KINDS)})')
        folders[kind] = {'ir': ir_dir, 'vis': vis_dir}.get(kind, osp.join(out_dir, kind))
    written = [k for k in kinds if k in ('mean', 'max', 'label')]
    if not written:
        return folders
    pixel = bool({'mean', 'max'} & set(written))
    files = {'ir': find_images(ir_dir, names, 'infrared') if pixel else {},
             'vis': find_images(vis_dir, names, 'visible') if pixel else {},
             'label': find_images(label_dir, names, 'label') if 'label' in written else {}}
    records = {kind: _baseline_record(kind, files, info) for kind in written}
    stale = set()
    for kind in written:
        record_path = osp.join(out_dir, f'{kind}.sources.json')
        saved = None
        if osp.isfile(record_path):
            with open(record_path) as f:
                saved = json.load(f)
        if saved != records[kind]:
            stale.add(kind)
            if osp.isdir(folders[kind]):
                logger.warning(f'{folders[kind]}: made from other sources (or by an earlier version); '
                               'writing it again')
    palette = as_palette(info.get('palette'), len(info['classes']))
    for name in tqdm(names, desc='baselines', unit='image', disable=not progress):
        todo = [k for k in written if k in stale or not osp.isfile(osp.join(folders[k], f'{name}.png'))]
        if not todo:
            continue
        if {'mean', 'max'} & set(todo):
            ir, vis = read_gray(files['ir'][name]), read_gray(files['vis'][name])
            check_same_size(ir, vis, files['ir'][name], files['vis'][name])
        for kind in todo:
            if kind == 'label':
                label = read_label(files['label'][name], len(info['classes']), info.get('ignore_index'))
                img = colorize(label, palette)
            else:
                img = BASELINES[kind](ir, vis)
            imwrite_atomic(img, osp.join(folders[kind], f'{name}.png'))
    for kind in written:  # recorded after the images: an interrupted rewrite is done again
        record = json.dumps(records[kind], sort_keys=True).encode()
        atomic_write_bytes(record, osp.join(out_dir, f'{kind}.sources.json'))
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


def total_iterations(preset: Mapping, n_train: int) -> int:
    """Optimisation steps of one unit: the preset's ``iterations`` (a fixed budget, whatever the set
    size), else ``epochs`` x full batches per epoch."""
    if preset.get('iterations') is not None:
        return int(preset['iterations'])
    return int(preset['epochs']) * (n_train // int(preset['batch_size']))


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


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


# ---------------------------------------------------------------------------------------------- the run's plan

@dataclass
class RunPlan:
    """What every unit of one run shares: the schedule, the class weights, the units in order and,
    for ``--fixed-segmenter``, the one model every method is tested with."""
    fixed: bool
    batch_size: int
    total_iter: int
    class_weight: Optional[List[float]]
    units: List[Tuple[str, int]]          # (unit name, seed), seed-major
    fixed_model: Any = None


def plan_run(inputs: SegmentationInputs, preset: Mapping, info: Mapping, seeds: Sequence[int],
             fixed_checkpoint: Optional[str] = None) -> RunPlan:
    """Checks what can fail for every method alike before any method's work starts: enough
    training pairs for a batch, class weights that fit the classes, a network that builds (and a
    fixed checkpoint that fits it)."""
    fixed = fixed_checkpoint is not None
    batch_size = int(preset['batch_size'])
    if not fixed and len(inputs.train_names) < batch_size:
        raise ValueError(f'{len(inputs.train_names)} training pairs are fewer than one batch '
                         f'(batch_size {batch_size} in {preset["_path"]})')
    total_iter = total_iterations(preset, len(inputs.train_names)) if not fixed else 0
    weight = None
    if not fixed:
        weight = preset.get('class_weight')
        if weight == 'sqrt_inv_freq':
            weight = class_weights(inputs.label_dir, inputs.train_names, info, preset['size'])
        elif weight is not None and len(weight) != len(info['classes']):
            raise ValueError(f'{preset["_path"]}: class_weight has {len(weight)} values for {len(info["classes"])} '
                             'classes')
    check = model_options(preset, info, max(total_iter, 1), weight, fixed_checkpoint, is_train=False)
    try:
        model = build_model(check)
    except RuntimeError as err:
        raise ValueError(str(err)) from err
    units = [(FIXED_UNIT, 0)] if fixed else [(f'seed{s}', int(s)) for s in seeds]
    return RunPlan(fixed, batch_size, total_iter, weight, units, model if fixed else None)


# ---------------------------------------------------------------------------------------------- fingerprints

def _software() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        smp = version('segmentation-models-pytorch')
    except PackageNotFoundError:
        smp = 'absent'
    return f'torch {torch.__version__}, smp {smp}, ' + ('cuda' if torch.cuda.is_available() else 'cpu')


def shared_inputs(inputs: SegmentationInputs, preset: Mapping, info: Mapping, plan: RunPlan,
                  picture: Sequence[str], fixed_checkpoint: Optional[str] = None) -> Dict[str, Any]:
    """The parts of :data:`UNIT_INPUTS` that every unit of this run shares."""
    settings = {'preset': {k: v for k, v in preset.items() if k not in ('_path', 'description', 'seeds')},
                'classes': info['classes'], 'ignore_index': info.get('ignore_index'),
                'class_weight': plan.class_weight, 'total_iter': plan.total_iter, 'fixed': plan.fixed}
    names = list(inputs.train_names) + list(inputs.test_names)
    return {'settings': _digest(settings), 'split': _digest([list(inputs.train_names), list(inputs.test_names)]),
            'picture': _digest(list(picture)), 'labels': files_digest(find_images(inputs.label_dir, names, 'label')),
            'threads': torch.get_num_threads(), 'software': _software(),
            'checkpoint': file_sha256(fixed_checkpoint)[:16] if fixed_checkpoint else None}


def method_inputs(inputs: SegmentationInputs, method: str) -> Dict[str, str]:
    """The parts of :data:`UNIT_INPUTS` of one method: its images and what they were made from."""
    names = list(inputs.train_names) + list(inputs.test_names)
    sources = {}
    for folder in inputs.made_from.get(method, []):
        sources[osp.abspath(folder)] = files_digest(find_images(folder, names, 'source'))
    return {'images': files_digest(find_images(inputs.methods[method], names, method)), 'sources': _digest(sources)}


def unit_inputs(shared: Mapping[str, Any], method_parts: Mapping[str, str], unit: str) -> Dict[str, Any]:
    """Everything one unit's result depends on (the keys of :data:`UNIT_INPUTS`)."""
    return dict(shared, **method_parts, unit=unit)


def unit_path(out_dir: str, method: str, unit: str) -> str:
    return osp.join(out_dir, 'units', method, f'{unit}.json')


def reusable_unit(path: str, parts: Mapping[str, Any]) -> Tuple[Optional[dict], Optional[str]]:
    """``(saved unit, None)`` when ``path`` holds a unit made from exactly ``parts``; else
    ``(None, why)`` (``why`` is None when there is no file: nothing to say)."""
    if not osp.isfile(path):
        return None, None
    with open(path) as f:
        saved = json.load(f)
    old = saved.get('inputs')
    if not isinstance(old, dict):
        return None, 'made by an earlier version of the protocol (no record of its inputs)'
    changed = [key for key in UNIT_INPUTS if old.get(key) != parts.get(key)]
    if not changed:
        return saved, None
    return None, '; '.join(UNIT_INPUTS[key] for key in changed)


def write_unit(path: str, method: str, unit: str, parts: Mapping[str, Any], seconds: float, cm: np.ndarray) -> None:
    record = {'method': method, 'unit': unit, 'fingerprint': _digest(parts), 'inputs': dict(parts),
              'seconds': round(seconds, 2), 'confusion_matrix': cm.tolist()}
    atomic_write_bytes(json.dumps(record).encode(), path)


# ---------------------------------------------------------------------------------------------- data, training, test

class MethodData:
    """Each method's training and test datasets, built and decoded once per run (so errors of a
    method's images surface before its first training step) and dropped when the method fails."""

    def __init__(self, inputs: SegmentationInputs, preset: Mapping, info: Mapping) -> None:
        self.inputs, self.preset, self.info = inputs, preset, info
        self._cache: Dict[str, Tuple[Optional[SegmentationDataset], SegmentationDataset]] = {}

    def get(self, method: str) -> Tuple[Optional[SegmentationDataset], SegmentationDataset]:
        if method not in self._cache:
            train, test = self._build(method)
            for dataset in (train, test):
                if dataset is not None:
                    for i in range(len(dataset)):
                        dataset.load(i)
            self._cache[method] = (train, test)
        return self._cache[method]

    def drop(self, method: str) -> None:
        self._cache.pop(method, None)

    def _build(self, method: str):
        inputs, preset, info = self.inputs, self.preset, self.info
        common = {'dataroot_img': inputs.methods[method], 'dataroot_label': inputs.label_dir,
                  'num_classes': len(info['classes']), 'ignore_index': info.get('ignore_index', 255),
                  'classes': info['classes'], 'palette': info.get('palette'), 'size': list(preset['size']),
                  'cache': preset.get('cache', True)}
        train = None
        if inputs.train_names:
            train = SegmentationDataset(dict(common, name=f'{method}_train', use_hflip=preset.get('use_hflip', True),
                                             scale_range=preset.get('scale_range')), names=inputs.train_names)
        test = SegmentationDataset(dict(common, name=f'{method}_test', label_full_res=True), names=inputs.test_names)
        return train, test


def train_steps(model, dataset: SegmentationDataset, total_iter: int, batch_size: int, seed: int,
                step: Optional[Callable[[int, float], None]] = None) -> None:
    """``total_iter`` optimisation steps: each epoch a permutation from one generator seeded by
    ``seed``, full batches only, every sample loaded with RNGs seeded from (seed, epoch, position)."""
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
            if step is not None:
                step(current, model.get_current_log().get('l_seg', float('nan')))
        epoch += 1


def train_unit(plan: RunPlan, preset: Mapping, info: Mapping, seed: int, train_set: SegmentationDataset,
               progress: Optional[Callable[..., Any]] = None, desc: str = ''):
    """A fresh segmenter, seeded right before it is built (same initialisation for every method),
    trained for the plan's steps; ``progress(total=, desc=)`` is a tqdm-like factory."""
    _seed_everything(seed)
    model = build_model(model_options(preset, info, plan.total_iter, plan.class_weight))
    bar = progress(total=plan.total_iter, desc=desc) if progress else None

    def step(i: int, loss: float) -> None:
        if bar is not None:
            bar.update(1)
            if i % 10 == 0:
                bar.set_postfix(loss=f'{loss:.3f}')
    try:
        train_steps(model, train_set, plan.total_iter, plan.batch_size, seed, step)
    finally:
        if bar is not None:
            bar.close()
    return model


def score_unit(model, dataset: SegmentationDataset, info: Mapping, pred_dir: Optional[str],
               names: Sequence[str]) -> np.ndarray:
    """One confusion matrix over the test set (at the labels' resolution); the predictions of
    ``names`` are saved as palette PNGs into ``pred_dir``."""
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


# ---------------------------------------------------------------------------------------------- the run

def run_protocol(inputs: SegmentationInputs, preset: Mapping, info: Mapping, seeds: Sequence[int], out_dir: str,
                 fixed_checkpoint: Optional[str] = None, picture: Sequence[str] = (),
                 progress: Optional[Callable[..., object]] = None) -> ProtocolResult:
    """Runs every (method, seed) unit not finished yet and returns all confusion matrices.

    ``fixed_checkpoint``: test that one segmenter (the preset's network) on every method, no
    training. ``picture``: test names whose predictions of the first unit are saved (palette PNGs
    in ``units/<method>/<unit>_pred/``). ``progress(total=, desc=)``: a tqdm-like factory.
    A failing method is recorded in ``result.failed`` and the others go on.
    """
    plan = plan_run(inputs, preset, info, seeds, fixed_checkpoint)
    shared = shared_inputs(inputs, preset, info, plan, picture, fixed_checkpoint)
    data = MethodData(inputs, preset, info)
    result = ProtocolResult(confusions={m: {} for m in inputs.methods}, seconds={m: {} for m in inputs.methods})
    per_method: Dict[str, Dict[str, str]] = {}
    # seed-major order: an interrupted comparison has every method at the first seeds
    for index, (unit, seed) in enumerate(plan.units):
        for method in inputs.methods:
            if method in result.failed:
                continue
            try:
                if method not in per_method:
                    per_method[method] = method_inputs(inputs, method)
                parts = unit_inputs(shared, per_method[method], unit)
                path = unit_path(out_dir, method, unit)
                saved, why = reusable_unit(path, parts)
                if saved is not None:
                    result.confusions[method][unit] = np.asarray(saved['confusion_matrix'], np.int64)
                    result.seconds[method][unit] = float(saved.get('seconds', 0.0))
                    result.reused += 1
                    continue
                if why:
                    result.rerun[f'{method}/{unit}'] = why
                    logger.warning(f'{path}: running the unit again: {why}')
                train_set, test_set = data.get(method)
                start = time.time()
                if plan.fixed:
                    model = plan.fixed_model
                else:
                    model = train_unit(plan, preset, info, seed, train_set, progress, f'{method} seed {seed}')
                pred_dir = osp.join(out_dir, 'units', method, f'{unit}_pred') if index == 0 and picture else None
                cm = score_unit(model, test_set, info, pred_dir, picture)
                seconds = time.time() - start
                write_unit(path, method, unit, parts, seconds, cm)
                result.confusions[method][unit] = cm
                result.seconds[method][unit] = seconds
            except UNIT_ERRORS as err:
                message = str(err) if isinstance(err, (ValueError, OSError)) else f'{type(err).__name__}: {err}'
                result.failed[method] = message
                data.drop(method)
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
