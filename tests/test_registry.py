"""Extending the framework: a new arch registered by decorator is built from options and runs
through FusionModel (the README's worked example of extending)."""
import pytest
import torch
from basicsr.archs import build_network
from basicsr.utils.registry import ARCH_REGISTRY, DATASET_REGISTRY, MODEL_REGISTRY
from torch import nn


class MeanResidualStudent(nn.Module):
    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(2, dim, 3, padding=1), nn.LeakyReLU(0.01), nn.Conv2d(dim, 1, 3, padding=1))

    def forward(self, vis_y, ir):
        fused = (vis_y + ir) / 2 + self.body(torch.cat([vis_y, ir], 1))
        return fused.clamp(0, 1), ()


if 'MeanResidualStudent' not in ARCH_REGISTRY:
    ARCH_REGISTRY.register(MeanResidualStudent)


def test_framework_parts_are_registered():
    assert 'SAGEStudent' in ARCH_REGISTRY
    assert 'FusionPairDataset' in DATASET_REGISTRY
    assert 'FusionModel' in MODEL_REGISTRY


def test_duplicate_names_are_rejected():
    with pytest.raises(AssertionError, match='already registered'):
        ARCH_REGISTRY.register(MeanResidualStudent)


def test_registered_arch_runs_in_fusion_model(tmp_path):
    net = build_network({'type': 'MeanResidualStudent', 'dim': 8})
    assert isinstance(net, MeanResidualStudent)
    ckpt = tmp_path / 'net_g.pth'
    torch.save({'params': net.state_dict()}, ckpt)
    opt = {'name': 't', 'model_type': 'FusionModel', 'num_gpu': 0, 'is_train': False, 'dist': False,
           'network_g': {'type': 'MeanResidualStudent', 'dim': 8},
           'path': {'pretrain_network_g': str(ckpt), 'param_key_g': 'params_ema', 'strict_load_g': True}}
    # an explicit param_key_g the checkpoint lacks is an error listing the keys it has
    with pytest.raises(ValueError, match='no "params_ema" weights in this checkpoint; it has params'):
        MODEL_REGISTRY.get('FusionModel')(opt)
    opt['path']['param_key_g'] = 'params'
    model = MODEL_REGISTRY.get('FusionModel')(opt)
    vis, ir = torch.rand(1, 1, 20, 30), torch.rand(1, 1, 20, 30)
    with torch.no_grad():
        expected = net(vis, ir)[0]
    torch.testing.assert_close(model.fuse(vis, ir), expected)
