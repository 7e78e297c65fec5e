"""What the zoo archs (``*_arch.py`` of published methods) share: reading the authors' weight files
and checking them against the class (BatchNorm folding for the fast paths: :mod:`fusion.archs.bn_fold`).

A ``published_state_dict`` raises ``ValueError`` with one line naming the file, what was expected
and where the authors publish it; the zoo runner (:mod:`fusion.zoo`) adds which method a file of
another method belongs to.
"""
from __future__ import annotations

import os.path as osp
from typing import Dict

import torch
from torch import nn


def resolve_weight_file(path: str, file_name: str, source: str) -> str:
    """``path`` is the weight file itself or the folder holding ``file_name``; returns the file.
    Missing: ``ValueError`` naming the expected file and ``source`` (where it is published)."""
    candidate = osp.join(path, file_name) if osp.isdir(path) else path
    if not osp.isfile(candidate):
        where = f'{path} has no {file_name}' if osp.isdir(path) else f'{path}: no such file'
        raise ValueError(f'{where} (expected the published {file_name}; get it from {source})')
    return candidate


def load_torch_state(path: str, file_name: str, source: str) -> Dict[str, torch.Tensor]:
    """Reads a PyTorch weight file (a plain state dict, or one under 'state_dict' / 'model' /
    'weight') with ``torch.load(weights_only=True)``: nothing in the file is executed."""
    path = resolve_weight_file(path, file_name, source)
    try:
        obj = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as err:  # corrupt, truncated, a pickle of objects, not a torch file ...
        first = str(err).splitlines()[0] if str(err) else ''
        raise ValueError(f'{path}: not a readable PyTorch weight file ({type(err).__name__}: {first}); '
                         f'expected {file_name} from {source}') from err
    for key in ('state_dict', 'model', 'weight'):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f'{path}: holds no state dict of tensors; expected {file_name} from {source}')
    return {(k[7:] if k.startswith('module.') else k): v for k, v in obj.items()}


def check_fits(state: Dict[str, torch.Tensor], net: nn.Module, path: str, title: str, source: str) -> None:
    """``state`` has exactly ``net``'s keys and shapes, else one line saying what does not fit."""
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    sizes = [f'{k} {tuple(state[k].shape)} vs {tuple(v.shape)}' for k, v in own.items()
             if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or sizes:
        raise ValueError(f'{path}: not {title} weights ({len(missing)} missing keys e.g. {missing[:2]}, '
                         f'{len(unexpected)} unexpected e.g. {unexpected[:2]}, {len(sizes)} of another shape'
                         f'{" e.g. " + sizes[0] if sizes else ""}); expected the file published at {source}')
