"""Samples as a pure function of their place in a run: ``sample_seed(seed, epoch, position)`` and
``SeededSamples``, which loads each sample with the global RNGs seeded from it. Shared by the
training loop (``fusion/training.py``) and the segmentation protocol (``fusion/segmentation``)."""
from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import Dataset


__all__ = ['SeededSamples', 'sample_seed']


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """A 32-bit seed for one sample, a pure function of its place in the run: ``position`` in the
    epoch's global order (``rank + world_size x`` the rank's own position), not of the rank."""
    # the 0 stands where a rank used to be: single-process runs keep their earlier data stream
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, epoch, 0, position]).generate_state(1)[0])


class SeededSamples(Dataset):
    """Wraps a dataset so that ``dataset[(index, seed)]`` runs ``base[index]`` with the python,
    numpy and torch global RNGs seeded by ``seed`` (what random crops/flips use) and restores
    the previous RNG states afterwards. Plain integer keys pass through."""

    def __init__(self, base: Dataset) -> None:
        self.base = base
        self.opt = getattr(base, 'opt', {})

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key):
        if not isinstance(key, tuple):
            return self.base[key]
        index, seed = key
        # datasets with their own generators: a per-sample seed hook if they have one; else
        # SAGEFusionDataset's set_epoch, whose stream is a function of (epoch value, worker id,
        # draws since set_epoch, index): called per sample, the sample's stream depends on its
        # seed only (and on the worker id, which is 0 with num_worker_per_gpu: 0)
        hook = getattr(self.base, 'set_sample_seed', None)
        if hook is None:
            hook = getattr(self.base, 'set_epoch', None)
        if hook is not None:
            hook(seed)
        states = (random.getstate(), np.random.get_state(), torch.get_rng_state())
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        try:
            return self.base[index]
        finally:
            random.setstate(states[0])
            np.random.set_state(states[1])
            torch.set_rng_state(states[2])
