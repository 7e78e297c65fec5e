"""The model zoo: published fusion methods run from one interface (docs/zoo.md).

Entries live in ``options/zoo/<method>.yml`` (:mod:`fusion.zoo.entry`); the authors' test-time
conventions are one table (:mod:`fusion.zoo.conventions`); :func:`build_zoo_method` builds a method
through ``ARCH_REGISTRY`` as a module with ``forward(vis_y, ir) -> fused`` on [0, 1] tensors.
"""
from fusion.zoo.conventions import CONVENTIONS, default_conventions, resolve_conventions
from fusion.zoo.entry import ZOO_DIR, ZooEntry, list_zoo_methods, load_zoo_entry, weights_path
from fusion.zoo.runner import ZooFusion, build_network, build_zoo_method


__all__ = ['CONVENTIONS', 'ZOO_DIR', 'ZooEntry', 'ZooFusion', 'build_network', 'build_zoo_method',
           'default_conventions', 'list_zoo_methods', 'load_zoo_entry', 'resolve_conventions', 'weights_path']
