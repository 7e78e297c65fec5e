"""The zoo entries of the TensorFlow-trained methods (options/zoo/densefuse.yml, u2fusion.yml):
their conventions around random-init nets, loading through the runner from small TF1 checkpoints,
and the runner's bad-input errors for them."""
import numpy as np
import pytest
import torch
from conftest import torch_threads

from fusion.archs.densefuse_arch import DENSEFUSE_LAYERS
from fusion.archs.u2fusion_arch import U2FUSION_LAYERS
from fusion.utils.tf_checkpoint import write_tf_checkpoint
from fusion.zoo import build_zoo_method, list_zoo_methods, load_zoo_entry


@pytest.fixture(autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


def _checkpoint(folder, layers, name, seed=0):
    rng = np.random.default_rng(seed)
    tensors = {}
    for scope, (cin, cout) in layers.values():
        tensors[f'{scope}/kernel'] = (rng.standard_normal((3, 3, cin, cout)) * 0.05).astype(np.float32)
        tensors[f'{scope}/bias'] = (rng.standard_normal(cout) * 0.05).astype(np.float32)
    folder.mkdir()
    write_tf_checkpoint(str(folder / name), tensors)
    return str(folder)


def test_entries_are_listed_and_valid():
    assert {'densefuse', 'u2fusion'} <= set(list_zoo_methods())
    assert load_zoo_entry('densefuse').arch_type == 'DenseFuseNet'
    assert load_zoo_entry('u2fusion').network['source_order'] == ['ir', 'vis']


def test_densefuse_gets_pixel_values_and_its_output_is_stretched():
    zoo = build_zoo_method('densefuse')
    vis, ir = torch.rand(1, 1, 12, 10), torch.rand(1, 1, 12, 10)
    with torch.no_grad():
        fused = zoo(vis, ir)
        raw = zoo.net(vis * 255, ir * 255)  # the authors feed 0..255
    torch.testing.assert_close(fused, raw / 255)
    img = zoo.image_from_fused(fused[0] * 7 - 3, None, None, gray=True)  # far outside [0, 1]: no clamp
    assert img.dtype == np.uint8 and img.min() == 0 and img.max() == 255
    expected = np.floor((fused[0, 0].numpy() - fused.min().item()) / (fused.max() - fused.min()).item() * 255 + 0.5)
    assert np.abs(img.astype(float) - expected).max() <= 1


def test_u2fusion_through_the_runner_loads_a_tf_checkpoint(tmp_path):
    folder = _checkpoint(tmp_path / 'U2Fusion', U2FUSION_LAYERS, 'model.ckpt')
    zoo = build_zoo_method('u2fusion', weights=folder)
    vis, ir = torch.rand(1, 1, 9, 11), torch.rand(1, 1, 9, 11)
    with torch.no_grad():
        fused = zoo(vis, ir)
        # the entry feeds the infrared as the graph's first source
        torch.testing.assert_close(fused, zoo.net(vis, ir))
        first = torch.cat([ir, vis], 1)
        assert torch.equal(zoo.net._inputs(vis, ir), first)
        fast = zoo.fuse_for_inference()(vis, ir)
    assert (fast - fused).abs().max() < 1e-5 and fused.min() >= 0 and fused.max() <= 1
    assert zoo.tile_margin == 10


def test_weights_of_the_other_tf_method_name_both(tmp_path):
    folder = _checkpoint(tmp_path / 'U2Fusion', U2FUSION_LAYERS, 'model.ckpt')
    with pytest.raises(ValueError, match='these are the weights of u2fusion, not of densefuse'):
        build_zoo_method('densefuse', weights=folder)
    dense = _checkpoint(tmp_path / 'DenseFuse', DENSEFUSE_LAYERS, 'DeseFuse.ckpt')
    with pytest.raises(ValueError, match='these are the weights of densefuse, not of u2fusion'):
        build_zoo_method('u2fusion', weights=dense)


def test_unknown_method_and_too_small_image():
    with pytest.raises(ValueError, match='densefuse'):
        load_zoo_entry('densfuse')
    for name in ('densefuse', 'u2fusion'):
        with pytest.raises(ValueError, match="smaller than the method's minimum size 2x2"):
            build_zoo_method(name)(torch.rand(1, 1, 1, 8), torch.rand(1, 1, 1, 8))
