"""The package's rooms keep to their jobs: generic rooms import no concrete network or model,
utils import nothing above them, and any network offering the deployment contract gets the fast
path through the generic runner and base model (no isinstance on a concrete arch)."""
import ast
import glob
import os.path as osp

import torch
from basicsr.models import build_model
from basicsr.utils.registry import ARCH_REGISTRY
from conftest import ROOT
from torch import nn

from fusion.inferencer import FusionInferencer


GENERIC_ROOMS = ['fusion/training.py', 'fusion/pipeline.py', 'fusion/inferencer.py',
                 'fusion/models/fusion_base_model.py', 'fusion/models/lr_scheduler.py']


def _fusion_imports(rel: str) -> set:
    """Every ``fusion.*`` module a source file imports (anywhere in it, lazy imports included)."""
    with open(osp.join(ROOT, rel)) as f:
        tree = ast.parse(f.read())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith('fusion'):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith('fusion'))
    return found


def test_generic_rooms_import_no_concrete_network_or_model():
    for rel in GENERIC_ROOMS:
        bad = {m for m in _fusion_imports(rel) if m.startswith(('fusion.archs', 'fusion.losses', 'fusion.data'))
               or (m.startswith('fusion.models.') and m not in ('fusion.models.fusion_base_model',
                                                                'fusion.models.lr_scheduler'))}
        assert not bad, f'{rel} imports {sorted(bad)}'


def test_utils_import_nothing_above_them():
    for path in glob.glob(osp.join(ROOT, 'fusion', 'utils', '*.py')):
        rel = osp.relpath(path, ROOT)
        above = {m for m in _fusion_imports(rel) if not m.startswith('fusion.utils')}
        assert not above, f'{rel} imports {sorted(above)}'


def test_segmentation_protocol_does_not_reach_into_the_training_loop():
    """The protocol shares the seeded samples with the training loop through fusion.utils, not by
    importing the loop's module."""
    for path in glob.glob(osp.join(ROOT, 'fusion', 'segmentation', '*.py')):
        rel = osp.relpath(path, ROOT)
        assert 'fusion.training' not in _fusion_imports(rel), rel


class _HalfNet(nn.Module):
    """A network with the deployment contract whose deploy form is recognisably different."""
    size_multiple = 2
    tile_margin = 5

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(0.5))
        self.fused_calls = 0

    def forward(self, vis_y, ir):
        return self.scale * (vis_y + ir), ()

    def fuse_for_inference(self) -> nn.Module:
        owner = self

        class Deployed(nn.Module):
            def forward(self, vis_y, ir):
                owner.fused_calls += 1
                return 0.5 * (vis_y + ir)

        return Deployed()


def test_runner_uses_any_networks_deploy_form():
    net = _HalfNet()
    vis, ir = torch.rand(1, 1, 12, 14), torch.rand(1, 1, 12, 14)
    runner = FusionInferencer(net, max_batch=1)
    assert runner.fast and runner.size_multiple == 2 and runner.tile_overlap == 15
    torch.testing.assert_close(runner.fuse(vis, ir), 0.5 * (vis + ir))
    assert net.fused_calls == 1
    plain = FusionInferencer(net, fast=False)
    torch.testing.assert_close(plain.fuse(vis, ir), 0.5 * (vis + ir))
    assert net.fused_calls == 1  # the plain path ran the network itself


def test_base_model_asks_the_network_for_its_fast_form():
    name = 'LayeringTestHalfNet'
    if name not in ARCH_REGISTRY:
        ARCH_REGISTRY.register(type(name, (_HalfNet,), {}))
    opt = {'name': 'layering', 'model_type': 'FusionModel', 'num_gpu': 0, 'is_train': False, 'dist': False,
           'network_g': {'type': name}, 'val': {}, 'path': {}}
    vis, ir = torch.rand(2, 1, 8, 10), torch.rand(2, 1, 8, 10)
    model = build_model(opt)
    torch.testing.assert_close(model.fuse(vis, ir), 0.5 * (vis + ir))
    assert model.get_bare_model(model.net_g).fused_calls == 1  # the deploy form ran
    plain = build_model(dict(opt, val={'fast_inference': False}))
    torch.testing.assert_close(plain.fuse(vis, ir), 0.5 * (vis + ir))
    assert plain.get_bare_model(plain.net_g).fused_calls == 0
