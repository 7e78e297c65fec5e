"""Dataset descriptions and presets of the segmentation protocol: YAML files, named or by path.

A name (``mfnet``, ``cpu``) is looked up as ``options/segmentation/dataset_<name>.yml`` /
``preset_<name>.yml``; anything ending in ``.yml`` / ``.yaml`` is read as a file.
"""
from __future__ import annotations

import os.path as osp
from typing import Any, Dict, List

import yaml


OPTIONS_DIR = osp.abspath(osp.join(osp.dirname(__file__), osp.pardir, osp.pardir, 'options', 'segmentation'))

# keys of a preset file and whether they are required (defaults live in the preset files)
PRESET_KEYS = {'network': True, 'size': True, 'epochs': True, 'batch_size': True, 'optim': True, 'seeds': True,
               'scheduler': False, 'warmup_fraction': False, 'head_lr_mult': False, 'no_decay_norm': False,
               'class_weight': False, 'use_hflip': False, 'scale_range': False, 'cache': False,
               'test_batch_size': False, 'description': False}
DATASET_KEYS = {'classes': True, 'name': False, 'palette': False, 'ignore_index': False, 'background_index': False,
                'include_background': False}


def available(kind: str) -> List[str]:
    """Names of the bundled ``<kind>_*.yml`` files (kind: ``preset`` or ``dataset``)."""
    import glob
    return sorted(osp.basename(p)[len(kind) + 1:-4] for p in glob.glob(osp.join(OPTIONS_DIR, f'{kind}_*.yml')))


def _load(kind: str, name_or_path: str, option: str) -> Dict[str, Any]:
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
    if not isinstance(data, dict):
        raise ValueError(f'{path}: expected a mapping of options')
    data['_path'] = osp.abspath(path)
    return data


def _check_keys(data: Dict[str, Any], spec: Dict[str, bool]) -> None:
    path = data['_path']
    unknown = sorted(k for k in data if k not in spec and k != '_path')
    if unknown:
        raise ValueError(f'{path}: unknown option(s) {unknown} (valid: {", ".join(spec)})')
    missing = [k for k, required in spec.items() if required and k not in data]
    if missing:
        raise ValueError(f'{path}: missing option(s) {missing}')


def load_preset(name_or_path: str) -> Dict[str, Any]:
    """A preset: segmenter, resolution, schedule, optimiser, augmentation, number of seeds."""
    preset = _load('preset', name_or_path, '--preset')
    _check_keys(preset, PRESET_KEYS)
    size = preset['size']
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(s, int) and s > 0 for s in size)):
        raise ValueError(f'{preset["_path"]}: size must be [H, W] in pixels, got {size!r}')
    for key in ('epochs', 'batch_size', 'seeds'):
        if not isinstance(preset[key], int) or preset[key] < 1:
            raise ValueError(f'{preset["_path"]}: {key} must be a positive integer, got {preset[key]!r}')
    if preset.get('class_weight') not in (None, 'sqrt_inv_freq') and not isinstance(preset.get('class_weight'), list):
        raise ValueError(f'{preset["_path"]}: class_weight must be ~, sqrt_inv_freq or a list of weights')
    return preset


def load_dataset_info(name_or_path: str) -> Dict[str, Any]:
    """A dataset description: class names, palette, ignore_index, background handling."""
    info = _load('dataset', name_or_path, '--dataset')
    _check_keys(info, DATASET_KEYS)
    classes = info['classes']
    if not isinstance(classes, list) or len(classes) < 2 or len(set(map(str, classes))) != len(classes):
        raise ValueError(f'{info["_path"]}: classes must be a list of at least 2 distinct names')
    info['classes'] = [str(c) for c in classes]
    info.setdefault('name', osp.splitext(osp.basename(info['_path']))[0])
    info.setdefault('palette', None)
    info.setdefault('ignore_index', 255)
    info.setdefault('background_index', 0)
    info.setdefault('include_background', True)
    if info['palette'] is not None and len(info['palette']) != len(classes):
        raise ValueError(f'{info["_path"]}: {len(info["palette"])} palette colours for {len(classes)} classes')
    return info
