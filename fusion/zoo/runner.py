"""Builds a zoo method from its entry through ``ARCH_REGISTRY`` (no concrete network named here)
and wraps it so that it fuses like the SAGE student: :class:`ZooFusion`'s ``forward(vis_y, ir)``
takes B x 1 x H x W tensors in [0, 1] and returns the fused grey in [0, 1], the authors' conventions
applied inside; it offers the inner network's deploy contract to :class:`fusion.inferencer.FusionInferencer`.
"""
from __future__ import annotations

import copy
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import numpy as np
import torch
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn

from fusion.zoo.conventions import (check_min_size, finish_output, image_from_fused, lcm, prepare_inputs,
                                    resolve_conventions)
from fusion.zoo.entry import SAGE, ZooEntry, list_zoo_methods, load_zoo_entry


class ZooFusion(nn.Module):
    """A published method's network with its authors' conventions around it.

    ``forward(vis_y, ir)``: B x 1 x H x W in [0, 1] -> fused grey B x 1 x H x W (the conventions of
    the input and of the raw output applied; clamping, per-image rescaling and 8-bit rounding happen
    when writing: :meth:`image_from_fused`). Deploy contract: :meth:`fuse_for_inference` (the inner
    network's fast form, when it has one), ``size_multiple`` (of the padding and the inner net),
    ``tile_margin`` (the inner net's).
    """

    def __init__(self, net: nn.Module, entry: ZooEntry, conventions: Optional[Dict[str, Any]] = None) -> None:
        super().__init__()
        self.net = net
        self.entry = entry
        self.conventions = dict(conventions or entry.conventions)
        self.size_multiple = lcm(int(self.conventions['pad_multiple']), int(getattr(net, 'size_multiple', 1)))
        margin = getattr(net, 'tile_margin', None)
        if margin is not None:
            self.tile_margin = int(margin)

    def forward(self, vis_y: torch.Tensor, ir: torch.Tensor) -> torch.Tensor:
        h, w = vis_y.shape[-2:]
        check_min_size(h, w, self.conventions, self.entry.title, getattr(self.net, 'min_size', 1))
        conv = self.conventions
        raw = self.net(prepare_inputs(vis_y, conv), prepare_inputs(ir, conv))
        raw = raw[0] if isinstance(raw, (tuple, list)) else raw
        return finish_output(raw, h, w, conv)

    def fuse_for_inference(self) -> nn.Module:
        inner = self.net.fuse_for_inference() if callable(getattr(self.net, 'fuse_for_inference', None)) \
            else copy.deepcopy(self.net).eval()
        return ZooFusion(inner, self.entry, self.conventions).eval()

    def image_from_fused(self, fused_y: torch.Tensor, cr: Optional[torch.Tensor], cb: Optional[torch.Tensor],
                         gray: bool = False) -> np.ndarray:
        """The uint8 image the authors' save step writes (colour, clamp, rescale, rounding)."""
        return image_from_fused(fused_y, cr, cb, gray, self.conventions)


def build_network(entry: ZooEntry) -> nn.Module:
    """The entry's arch with random initialisation (``network`` of the entry)."""
    opt = dict(entry.network)
    arch = opt.pop('type')
    try:
        cls = ARCH_REGISTRY.get(arch)
    except KeyError as err:
        raise ValueError(f'{entry.path}: network type {arch!r} is not a registered arch') from err
    return cls(**opt)


def _owner_of(path: str, skip: str) -> Optional[str]:
    """The method whose published weights ``path`` holds (tried in entry order), or None."""
    for name in list_zoo_methods():
        if name in (skip, SAGE):
            continue
        try:
            entry = load_zoo_entry(name)
            loader = getattr(ARCH_REGISTRY.get(entry.arch_type), 'published_state_dict')
            loader(path)
        except Exception:  # not this method's (or an entry without a loader): try the next
            continue
        return name
    try:
        from fusion.inference import load_student  # the SAGE student's own strict loader
        load_student(path)
        return SAGE
    except Exception:
        return None


def load_published_weights(net: nn.Module, entry: ZooEntry, weights: str) -> None:
    """Loads the authors' files from ``weights`` (a file or a folder) strictly; weights of another
    zoo method are one line naming both methods."""
    loader = getattr(type(net), 'published_state_dict', None)
    if loader is None:
        raise ValueError(f'{entry.path}: {entry.arch_type} has no published_state_dict to read {weights}')
    try:
        state = loader(weights)
    except ValueError as err:
        owner = _owner_of(weights, entry.name)
        if owner is not None:
            raise ValueError(f'{weights}: these are the weights of {owner}, not of {entry.name} ({entry.title}); '
                             f'use --method {owner}, or {entry.name}\'s {", ".join(entry.weights["files"])} '
                             f'({entry.weights["source"]})') from err
        raise
    net.load_state_dict(state, strict=True)


def build_zoo_method(name: str, weights: Optional[str] = None, device: Union[str, torch.device] = 'cpu',
                     conventions: Optional[Mapping[str, Any]] = None) -> nn.Module:
    """The method ``name`` ready to fuse (eval mode, on ``device``).

    ``sage``: the SAGE student (``weights`` None: the released checkpoint). Zoo entries: a
    :class:`ZooFusion` around the entry's arch with the authors' weights from ``weights`` (file or
    folder as published; None: random initialisation, for tests and benchmarks). ``conventions``
    overrides some of the entry's (verification of reference sets made another way).
    """
    if name.lower() == SAGE:
        from fusion.inference import load_student
        return load_student(weights, device)
    entry = load_zoo_entry(name)
    net = build_network(entry)
    if weights is not None:
        load_published_weights(net, entry, weights)
    conv = resolve_conventions({**{k: v for k, v in entry.conventions.items()}, **dict(conventions or {})},
                               entry.path)
    return ZooFusion(net.eval(), entry, conv).to(torch.device(device)).eval()


def describe(name: str) -> Tuple[str, str]:
    """(title, weights source) of a method, for messages."""
    if name.lower() == SAGE:
        return 'SAGE student', 'bundled (experiments/pretrained_models/)'
    entry = load_zoo_entry(name)
    return entry.title, entry.weights['source']
