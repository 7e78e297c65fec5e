"""Dataset descriptions and presets of the segmentation protocol: YAML files, named or by path.

A name (``mfnet``, ``cpu``) is looked up as ``options/segmentation/dataset_<name>.yml`` /
``preset_<name>.yml``; anything ending in ``.yml`` / ``.yaml`` is read as a file. Both are checked
by the one option validator (``fusion.utils.option_schema``) against the schemas below: unknown
keys with the closest valid one, types, the registered network / optimiser / scheduler and their
own keys; the few value rules a schema cannot state are its checks. One error names the file.

Preset options (``options/segmentation/preset_*.yml``):

================= ======== ===================================================================
network           required the segmenter: a registered arch (``type: SMPSegmenter`` + its keys;
                           ``num_classes`` comes from the dataset file)
size              required ``[H, W]`` the segmenter sees (predictions are scored at label size)
iterations        one of   optimisation steps per unit, whatever the training-set size
epochs            one of   passes over the training set (full batches only)
batch_size        required training batch
optim             required a torch optimiser (``type``, default AdamW, + its keys)
scheduler         ~        a scheduler (``type``, default WarmupPolyLR, + its keys)
warmup_fraction   ~        WarmupPolyLR warm-up as a fraction of the steps
head_lr_mult      1        decoder/head learning-rate multiplier
no_decay_norm     true     no weight decay on norm layers, positional blocks, biases
class_weight      ~        ``sqrt_inv_freq`` (from the training labels) or one weight per class
use_hflip         true     random horizontal flips
scale_range       ~        ``[lo, hi]`` random rescale + crop
cache             true     decode every image once and keep it in memory
seeds             required default number of seeds
description       ~        one line for people
================= ======== ===================================================================

Dataset options (``dataset_*.yml``): ``classes`` (required, at least 2 distinct names), ``name``,
``palette`` (one RGB colour per class), ``ignore_index`` (255), ``background_index`` (0),
``include_background`` (true).
"""
from __future__ import annotations

import os.path as osp
from typing import Any, Dict, List, Optional

import yaml

from fusion.utils.option_schema import Component, Required, validate_file_options


OPTIONS_DIR = osp.abspath(osp.join(osp.dirname(__file__), osp.pardir, osp.pardir, 'options', 'segmentation'))

PRESET_SCHEMA = {
    'description': 'str',
    'network': Required(Component('arch')),
    'size': Required('list'),
    'iterations': 'int',
    'epochs': 'int',
    'batch_size': Required('int'),
    'optim': Required(Component('optimizer', default_type='AdamW')),
    'scheduler': Component('scheduler', default_type='WarmupPolyLR'),
    'warmup_fraction': 'number',
    'head_lr_mult': 'number',
    'no_decay_norm': 'bool',
    'class_weight': 'str|list',
    'use_hflip': 'bool',
    'scale_range': 'list',
    'cache': 'bool',
    'seeds': Required('int'),
}
DATASET_SCHEMA = {
    'classes': Required('list'), 'name': 'any', 'palette': 'list', 'ignore_index': 'int', 'background_index': 'int',
    'include_background': 'bool',
}


def _check_schedule(preset: dict) -> Optional[str]:
    if (preset.get('epochs') is None) == (preset.get('iterations') is None):
        return 'give exactly one of iterations (a fixed number of steps) and epochs'
    for key in ('iterations', 'epochs', 'batch_size', 'seeds'):
        if preset.get(key) is not None and preset[key] < 1:
            return f'{key}: must be a positive integer, got {preset[key]!r}'
    return None


def _check_size(preset: dict) -> Optional[str]:
    size = preset['size']
    if not (len(size) == 2 and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size)):
        return f'size: must be [H, W] in pixels, got {size!r}'
    return None


def _check_class_weight(preset: dict) -> Optional[str]:
    weight = preset.get('class_weight')
    if isinstance(weight, str) and weight != 'sqrt_inv_freq':
        return f'class_weight: must be ~, sqrt_inv_freq or a list of weights, got {weight!r}'
    return None


def _check_network(preset: dict) -> Optional[str]:
    if 'num_classes' in preset['network']:
        return 'network.num_classes: comes from the dataset file (its classes); remove it here'
    return None


def _check_classes(info: dict) -> Optional[str]:
    classes = info['classes']
    if len(classes) < 2 or len(set(map(str, classes))) != len(classes):
        return 'classes: must be a list of at least 2 distinct names'
    palette = info.get('palette')
    if palette is not None and len(palette) != len(classes):
        return f'palette: {len(palette)} colours for {len(classes)} classes'
    return None


def available(kind: str) -> List[str]:
    """Names of the bundled ``<kind>_*.yml`` files (kind: ``preset`` or ``dataset``)."""
    import glob
    return sorted(osp.basename(p)[len(kind) + 1:-4] for p in glob.glob(osp.join(OPTIONS_DIR, f'{kind}_*.yml')))


def _load(kind: str, name_or_path: str, option: str) -> tuple:
    if name_or_path.endswith(('.yml', '.yaml')):
        path = name_or_path
        if not osp.isfile(path):
            raise FileNotFoundError(f'{option}: no such file: {path}')
    else:
        path = osp.join(OPTIONS_DIR, f'{kind}_{name_or_path}.yml')
        if not osp.isfile(path):
            raise ValueError(f'{option}: unknown {kind} {name_or_path!r} (choose {", ".join(available(kind))} '
                             'or give a .yml file)')
    with open(path) as f:
        try:
            data = yaml.safe_load(f)
        except yaml.YAMLError as err:
            raise ValueError(f'{path}: not valid YAML ({err})') from err
    return data, osp.abspath(path)


def load_preset(name_or_path: str) -> Dict[str, Any]:
    """A preset: segmenter, resolution, schedule, optimiser, augmentation, number of seeds."""
    preset, path = _load('preset', name_or_path, '--preset')
    validate_file_options(preset, PRESET_SCHEMA, path,
                          checks=(_check_schedule, _check_size, _check_class_weight, _check_network))
    preset['_path'] = path
    return preset


def load_dataset_info(name_or_path: str) -> Dict[str, Any]:
    """A dataset description: class names, palette, ignore_index, background handling."""
    info, path = _load('dataset', name_or_path, '--dataset')
    validate_file_options(info, DATASET_SCHEMA, path, checks=(_check_classes,))
    info['_path'] = path
    info['classes'] = [str(c) for c in info['classes']]
    info['name'] = str(info.get('name') or osp.splitext(osp.basename(path))[0])
    for key, default in (('palette', None), ('ignore_index', 255), ('background_index', 0),
                         ('include_background', True)):
        info.setdefault(key, default)
    return info
