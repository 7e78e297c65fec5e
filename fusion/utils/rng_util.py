"""Global RNG states (python, numpy, torch, CUDA): captured in training states, restored on resume
so an interrupted run continues the same random stream."""
from __future__ import annotations

import random
from typing import Optional

import numpy as np
import torch


def capture_rng_state() -> dict:
    """Global RNG states (python, numpy, torch, CUDA) for exact resumption."""
    state = {'python': random.getstate(), 'numpy': np.random.get_state(), 'torch': torch.get_rng_state()}
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Optional[dict]) -> None:
    """Restores what :func:`capture_rng_state` returned (nothing for ``None`` or ``{}``)."""
    if not state:
        return
    random.setstate(state['python'])
    np.random.set_state(state['numpy'])
    torch.set_rng_state(state['torch'].cpu())
    if 'cuda' in state and torch.cuda.is_available() and len(state['cuda']) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state['cuda']])
