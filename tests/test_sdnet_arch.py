"""SDNet's fusion network: shapes, TF SAME padding and interleaved features, loading from a
small TF1 checkpoint under the authors' own variable names, and wrong-graph errors."""
import numpy as np
import pytest
import torch
from conftest import torch_threads

from fusion.archs.sdnet_arch import SDNET_LAYERS, SDNetNet
from fusion.archs.tf_weights import conv_variables
from fusion.utils.tf_checkpoint import write_tf_checkpoint
from fusion.zoo import build_zoo_method


@pytest.fixture(autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


def _checkpoint(folder, seed=0):
    rng = np.random.default_rng(seed)
    tensors = {name: (rng.standard_normal(shape) * 0.1).astype(np.float32)
               for name, shape in conv_variables(SDNET_LAYERS).items()}
    # the training-only decomposition layers are saved too
    tensors['fusion_model/layer6_sept/w6_sept'] = np.zeros((1, 1, 1, 128), np.float32)
    folder.mkdir()
    write_tf_checkpoint(str(folder / 'SDNet.model'), tensors)
    return str(folder), tensors


def test_shapes_range_and_same_padding():
    net = SDNetNet().eval()
    out = net(torch.rand(2, 1, 7, 9) * 2 - 1, torch.rand(2, 1, 7, 9) * 2 - 1)
    assert out.shape == (2, 1, 7, 9) and out.abs().max() <= 1
    assert net.ir[0].kernel_size == (5, 5) and net.ir[0].padding == (2, 2) and net.fuse.kernel_size == (1, 1)
    assert sum(p.numel() for p in net.parameters()) == 2 * (416 + 2320 + 4624 + 6928) + 129


def test_loads_the_authors_names_and_maps_kernels(tmp_path):
    folder, tensors = _checkpoint(tmp_path / 'SDNet')
    net = SDNetNet()
    net.load_state_dict(SDNetNet.published_state_dict(folder), strict=True)
    w = tensors['fusion_model/layer1_vi/w1_vi']  # 5 x 5 x 1 x 16, HWIO
    torch.testing.assert_close(net.vi[0].weight, torch.from_numpy(w.transpose(3, 2, 0, 1)))
    # the 1x1 fuse conv sees [ir1, vis1, ir2, vis2, ...]: zero all but the vis1 slice
    with torch.no_grad():
        net.fuse.weight.zero_()
        net.fuse.weight[0, 16:32] = 1
        net.fuse.bias.zero_()
        vis, ir = torch.rand(1, 1, 6, 6), torch.rand(1, 1, 6, 6)
        vis1 = torch.nn.functional.leaky_relu(net.vi[0](vis), 0.2)
        torch.testing.assert_close(net(vis, ir), torch.tanh(vis1.sum(1, keepdim=True)))
    zoo = build_zoo_method('sdnet', weights=folder)
    assert zoo(torch.rand(1, 1, 5, 5), torch.rand(1, 1, 5, 5)).shape == (1, 1, 5, 5)


def test_fast_path():
    net = SDNetNet().eval()
    vis, ir = torch.rand(1, 1, 30, 34), torch.rand(1, 1, 30, 34)
    with torch.no_grad():
        assert (net.fuse_for_inference()(vis, ir) - net(vis, ir)).abs().max() < 1e-5


def test_wrong_graph_names_both(tmp_path):
    folder, _ = _checkpoint(tmp_path / 'SDNet')
    with pytest.raises(ValueError, match='these are the weights of sdnet, not of u2fusion'):
        build_zoo_method('u2fusion', weights=folder)
    from fusion.archs.densefuse_arch import DenseFuseNet
    with pytest.raises(ValueError, match='It is a SDNet checkpoint'):
        DenseFuseNet.published_state_dict(folder)
