"""SAGEStudent: size, released checkpoint, features, any input size."""
import pytest
import torch
from basicsr.utils.registry import ARCH_REGISTRY
from conftest import STUDENT_CKPT

from fusion.utils.checkpoint_util import extract_state_dict, load_checkpoint_file


def test_registered_and_parameter_count():
    net = ARCH_REGISTRY.get('SAGEStudent')()
    assert sum(p.numel() for p in net.parameters()) == 135_617


def test_released_checkpoint_loads_strictly():
    raw = torch.load(STUDENT_CKPT, map_location='cpu')
    assert len(raw) == 121
    net = ARCH_REGISTRY.get('SAGEStudent')()
    net.load_state_dict(extract_state_dict(load_checkpoint_file(STUDENT_CKPT), 'params', STUDENT_CKPT), strict=True)
    assert abs(net.final_decoder[0].bias.item() - 0.1037) < 1e-3


@pytest.mark.parametrize('size', [(16, 16), (33, 47), (63, 64), (101, 131)])
def test_any_size_and_feature_shapes(size):
    net = ARCH_REGISTRY.get('SAGEStudent')().eval()
    h, w = size
    with torch.no_grad():
        out, feats = net(torch.rand(2, 1, h, w), torch.rand(2, 1, h, w))
    assert out.shape == (2, 1, h, w) and out.abs().max() <= 1
    expected = [(h, w), (h // 2, w // 2), (h // 4, w // 4), (h // 2, w // 2), (h, w)]
    assert [tuple(f.shape[-2:]) for f in feats] == expected
    assert all(f.shape[:2] == (2, 32) for f in feats)
