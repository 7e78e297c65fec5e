"""Reading network checkpoints: our own ``{'params', 'params_ema'}`` files and plain state dicts
(such as the released SAGE student), always on the CPU first, with errors that name the file."""
from __future__ import annotations

import logging
import os.path as osp
from typing import Dict, Optional

import torch


def extract_state_dict(checkpoint: dict, param_key: Optional[str], path: str,
                       required: bool = False) -> Dict[str, torch.Tensor]:
    """Returns the network state dict inside ``checkpoint``.

    Accepts our own files (``{'params': ..., 'params_ema': ...}``; ``param_key`` picks one and
    falls back to ``params``) and plain state dicts such as the released SAGE student.
    ``required``: the user named ``param_key`` explicitly, so a checkpoint without it is an error
    listing the keys it has (``params`` also names the weights of a plain state dict).
    """
    if not isinstance(checkpoint, dict):
        raise ValueError(f'{path}: expected a state dict or {{"params": state_dict}}, got {type(checkpoint).__name__}')
    if param_key and param_key in checkpoint and isinstance(checkpoint[param_key], dict):
        return checkpoint[param_key]
    if required and param_key and param_key != 'params':
        keys = [k for k, v in checkpoint.items() if isinstance(v, dict)]
        has = f'it has {", ".join(map(str, keys))}' if keys else 'it is a plain state dict (use params)'
        raise ValueError(f'{path}: no "{param_key}" weights in this checkpoint; {has}')
    if required and param_key == 'params' and 'params' not in checkpoint and \
            any(isinstance(v, dict) for v in checkpoint.values()):
        keys = [k for k, v in checkpoint.items() if isinstance(v, dict)]
        raise ValueError(f'{path}: no "params" weights in this checkpoint; it has {", ".join(map(str, keys))}')
    if 'params' in checkpoint and isinstance(checkpoint['params'], dict):
        if param_key and param_key != 'params':
            logging.getLogger('basicsr').info(f'Loading {path}: "{param_key}" not found, using "params".')
        return checkpoint['params']
    if checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return checkpoint  # a plain state dict
    raise ValueError(f'{path}: no "{param_key}" or "params" entry and not a plain state dict '
                     f'(top-level keys: {list(checkpoint)[:5]})')


def load_checkpoint_file(path: str) -> dict:
    """Loads a checkpoint on the CPU with a clear error for missing or corrupt files."""
    if not osp.isfile(path):
        raise FileNotFoundError(f'checkpoint not found: {path}')
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as err:  # noqa: BLE001  (torch raises many types for corrupt files)
        raise ValueError(f'{path}: cannot load the checkpoint ({type(err).__name__}: {err})') from err
