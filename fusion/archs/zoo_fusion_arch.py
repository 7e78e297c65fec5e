"""``ZooFusionNet``: a zoo method (options/zoo/<method>.yml) as a registered network, so the YAML
test pipeline builds it like any other (``python fusion/test.py -opt options/zoo/test_seafusion.yml``).

=========== ======================================================================================
option      meaning
=========== ======================================================================================
method      the zoo method's name (``seafusion``, ``ifcnn`` ...; not ``sage``: use ``SAGEStudent``)
weights     its authors' weights: the file or the folder as published (relative paths: from the
            working directory, else from the repository root); ~: random initialisation
conventions overrides of the entry's conventions (docs/zoo.md), normally left out
=========== ======================================================================================

Leave ``path.pretrain_network_g`` empty: the weights come through ``weights`` (the authors' own
format, read by the method's ``published_state_dict``).
"""
from __future__ import annotations

import os.path as osp
from typing import Any, Dict, Optional

from basicsr.utils.registry import ARCH_REGISTRY

from fusion.zoo import ZooFusion, build_zoo_method


_ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


@ARCH_REGISTRY.register()
class ZooFusionNet(ZooFusion):
    """The zoo method ``method`` with its authors' conventions: ``forward(vis_y, ir) -> fused``."""

    def __init__(self, method: str, weights: Optional[str] = None,
                 conventions: Optional[Dict[str, Any]] = None) -> None:
        if method.lower() == 'sage':
            raise ValueError('ZooFusionNet method: sage is the SAGE student; use network type SAGEStudent '
                             '(options/test_sage.yml)')
        if weights is not None and not osp.isabs(weights) and not osp.exists(weights):
            in_repo = osp.join(_ROOT, weights)
            weights = in_repo if osp.exists(in_repo) else weights
        built = build_zoo_method(method, weights, 'cpu', conventions)
        super().__init__(built.net, built.entry, built.conventions)
