"""FusionModel (what fusion/test.py runs): the fast student path by default, the plain
eval-mode network when ``val.fast_inference`` is false, same results; equal sizes batched."""
import torch
from basicsr.utils.registry import MODEL_REGISTRY
from conftest import STUDENT_CKPT

import fusion.models.fusion_base_model as base
from fusion.models.fusion_base_model import group_equal_sizes


def _model(**val):
    opt = {'name': 't', 'model_type': 'FusionModel', 'num_gpu': 0, 'is_train': False, 'dist': False,
           'network_g': {'type': 'SAGEStudent'}, 'val': val,
           'path': {'pretrain_network_g': STUDENT_CKPT, 'strict_load_g': True}}
    return MODEL_REGISTRY.get('FusionModel')(opt)


def test_fast_path_is_default_and_can_be_turned_off(monkeypatch):
    built = []
    original = base.FusionInferencer

    def spy(*args, **kwargs):
        built.append(kwargs.get('fast'))
        return original(*args, **kwargs)

    monkeypatch.setattr(base, 'FusionInferencer', spy)
    vis, ir = torch.rand(2, 1, 48, 62), torch.rand(2, 1, 48, 62)
    fast = _model().fuse(vis, ir)
    assert built == [True]
    plain = _model(fast_inference=False).fuse(vis, ir)
    assert built == [True]  # the plain path does not go through the inferencer
    torch.testing.assert_close(fast, plain, atol=1e-5, rtol=0)


def test_group_equal_sizes_rebatches_consecutive_pairs():
    def item(h, name):
        return {'ir': torch.zeros(1, 1, h, 8), 'name': [name]}
    batches = list(group_equal_sizes([item(4, 'a'), item(4, 'b'), item(4, 'c'), item(6, 'd'), item(4, 'e')], 2))
    assert [b['name'] for b in batches] == [['a', 'b'], ['c'], ['d'], ['e']]
    assert batches[0]['ir'].shape[0] == 2


def test_any_torch_optimizer_by_name():
    model = _model()
    params = [torch.nn.Parameter(torch.zeros(3))]
    assert isinstance(model.get_optimizer('AdamW', params, 1e-3, weight_decay=0.01), torch.optim.AdamW)
    import pytest
    with pytest.raises(ValueError, match='NoSuchOptim'):
        model.get_optimizer('NoSuchOptim', params, 1e-3)
