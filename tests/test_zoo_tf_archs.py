"""DenseFuse and U2Fusion: random-init shapes and graph semantics, loading from small TF1
checkpoints written in the test (the authors' variable names and TF layouts), converted .pth
files, and every bad weight file as one clear error."""
import importlib.util
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
import torch
from basicsr.utils.registry import ARCH_REGISTRY
from conftest import ROOT, torch_threads

from fusion.archs.densefuse_arch import DENSEFUSE_LAYERS, DenseFuseNet
from fusion.archs.tf_weights import convert_tf_checkpoint
from fusion.archs.u2fusion_arch import U2FUSION_LAYERS, U2FusionNet
from fusion.utils.tf_checkpoint import write_tf_checkpoint


CASES = [(DenseFuseNet, DENSEFUSE_LAYERS, 'DeseFuse.ckpt', 'densefuse'),
         (U2FusionNet, U2FUSION_LAYERS, 'model.ckpt', 'u2fusion')]


@pytest.fixture(autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


def _tf_tensors(layers, seed=0, optimizer_slots=True):
    """Random variables under the authors' TF names and HWIO shapes (+ Adam slots, as saved)."""
    rng = np.random.default_rng(seed)
    tensors = {}
    for scope, (cin, cout) in layers.values():
        tensors[f'{scope}/kernel'] = (rng.standard_normal((3, 3, cin, cout)) * 0.1).astype(np.float32)
        tensors[f'{scope}/bias'] = (rng.standard_normal(cout) * 0.1).astype(np.float32)
    if optimizer_slots:
        for name in list(tensors):
            tensors[name + '/Adam'] = np.zeros_like(tensors[name])
        tensors['beta1_power'] = np.array(0.9, np.float32)
    return tensors


def _write(tmp_path, layers, name, **kw):
    folder = tmp_path / name.split('.')[0]
    folder.mkdir()
    tensors = _tf_tensors(layers, **kw)
    write_tf_checkpoint(str(folder / name), tensors)
    (folder / (name + '.meta')).write_bytes(b'')  # published beside the index; optional to read
    return str(folder), tensors


@pytest.mark.parametrize('cls', [DenseFuseNet, U2FusionNet])
def test_random_init_shapes_and_registry(cls):
    net = ARCH_REGISTRY.get(cls.__name__)().eval()
    vis, ir = torch.rand(2, 1, 19, 23), torch.rand(2, 1, 19, 23)
    out = net(vis, ir)
    assert out.shape == (2, 1, 19, 23) and torch.isfinite(out).all()
    if cls is U2FusionNet:  # tanh / 2 + 0.5
        assert out.min() >= 0 and out.max() <= 1


def test_param_counts_match_the_checkpoints_layout():
    assert sum(p.numel() for p in DenseFuseNet().parameters()) == 74193
    assert sum(p.numel() for p in U2FusionNet().parameters()) == 659217


@pytest.mark.parametrize('cls, layers, name, method', CASES)
def test_published_state_dict_from_tf_checkpoint(tmp_path, cls, layers, name, method):
    folder, tensors = _write(tmp_path, layers, name)
    for path in (folder, osp.join(folder, name), osp.join(folder, name + '.index')):
        state = cls.published_state_dict(path)
        net = cls()
        net.load_state_dict(state, strict=True)
    # HWIO -> OIHW: torch's first conv equals TF's cross-correlation of the reflect-padded input
    scope = layers['conv1'][0]
    kernel, bias = tensors[f'{scope}/kernel'], tensors[f'{scope}/bias']
    x = np.random.default_rng(1).random((1, 7, 9, kernel.shape[2])).astype(np.float32)  # NHWC
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode='reflect')
    expected = sum(np.einsum('nhwi,io->nhwo', padded[:, dy:dy + 7, dx:dx + 9], kernel[dy, dx])
                   for dy in range(3) for dx in range(3)) + bias
    got = net.conv1(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).detach().numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_dense_concatenation_order_is_newest_first(tmp_path):
    net = DenseFuseNet().eval()
    x = torch.rand(1, 1, 6, 6)
    feats = net.encode(x)
    first = torch.relu(net.conv1(x))
    torch.testing.assert_close(feats[:, 48:], first)  # the oldest features come last, as in the graph


def test_densefuse_rules():
    net = DenseFuseNet().eval()
    a, b = torch.rand(1, 1, 8, 8) * 255, torch.rand(1, 1, 8, 8) * 255
    added = net.decode(net.encode(a) + net.encode(b))
    torch.testing.assert_close(net(a, b), added)
    l1 = DenseFuseNet(rule='l1_norm').eval()
    l1.load_state_dict(net.state_dict())
    out = l1(a, a)  # equal inputs: the l1 rule's weights are 1/2 each, so it decodes the encoding itself
    torch.testing.assert_close(out, net.decode(net.encode(a)), atol=1e-4, rtol=1e-5)
    with pytest.raises(ValueError, match='rule must be one of addition, l1_norm'):
        DenseFuseNet(rule='max')


def test_u2fusion_source_order():
    net = U2FusionNet().eval()
    swapped = U2FusionNet(source_order=['ir', 'vis']).eval()
    swapped.load_state_dict(net.state_dict())
    vis, ir = torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8)
    torch.testing.assert_close(swapped(vis, ir), net(ir, vis))
    assert not torch.allclose(swapped(vis, ir), net(vis, ir))
    with pytest.raises(ValueError, match='source_order'):
        U2FusionNet(source_order=['vis', 'vis'])


@pytest.mark.parametrize('cls', [DenseFuseNet, U2FusionNet])
def test_fast_path_and_tile_margin(cls):
    net = cls().eval()
    vis, ir = torch.rand(1, 1, 40, 44), torch.rand(1, 1, 40, 44)
    with torch.no_grad():
        plain = net(vis, ir)
        fast = net.fuse_for_inference()(vis, ir)
        assert (fast - plain).abs().max() < 1e-5
        # a change farther than tile_margin from a pixel leaves it untouched
        vis2 = vis.clone()
        vis2[..., 20 + net.tile_margin + 1:, :] = 0
        moved = net(vis2, ir)
    assert torch.equal(moved[..., :21, :], plain[..., :21, :])
    assert not torch.equal(moved, plain)


@pytest.mark.parametrize('cls', [DenseFuseNet, U2FusionNet])
def test_image_below_minimum_size(cls):
    with pytest.raises(ValueError, match='at least 2 x 2 px'):
        cls()(torch.rand(1, 1, 1, 5), torch.rand(1, 1, 1, 5))


def test_checkpoint_of_the_wrong_graph(tmp_path):
    folder, _ = _write(tmp_path, U2FUSION_LAYERS, 'model.ckpt')
    with pytest.raises(ValueError) as err:
        DenseFuseNet.published_state_dict(folder)
    msg = str(err.value)
    assert 'not a checkpoint of the DenseFuse graph' in msg and 'encoder/conv1_1/kernel [3, 3, 1, 16]' in msg
    assert 'Generator/encoder/conv1_1' in msg and 'It is a U2Fusion checkpoint' in msg
    assert 'DeseFuse.ckpt.index' in msg and '\n' not in msg
    # the right names with other shapes (a retrained variant) are named too
    tensors = _tf_tensors(DENSEFUSE_LAYERS)
    tensors['decoder/conv2_4/kernel'] = np.zeros((3, 3, 16, 3), np.float32)
    write_tf_checkpoint(str(tmp_path / 'rgb'), tensors)
    with pytest.raises(ValueError, match=r'decoder/conv2_4/kernel expected \[3, 3, 16, 1\] found \[3, 3, 16, 3\]'):
        DenseFuseNet.published_state_dict(str(tmp_path / 'rgb'))


def test_missing_and_unreadable_weights(tmp_path):
    with pytest.raises(ValueError, match=r'not found; U2Fusion expects .*model\.ckpt\.index.*hanna-xu/U2Fusion'):
        U2FusionNet.published_state_dict(str(tmp_path / 'nope'))
    bad = tmp_path / 'junk.index'
    bad.write_bytes(b'not a table' * 10)
    with pytest.raises(ValueError, match='no table magic number.*DenseFuse expects'):
        DenseFuseNet.published_state_dict(str(bad))


def test_converted_pth_round_trip_and_weights_of_another_method(tmp_path):
    folder, _ = _write(tmp_path, DENSEFUSE_LAYERS, 'DeseFuse.ckpt')
    out = str(tmp_path / 'densefuse.pth')
    summary = convert_tf_checkpoint('densefuse', folder, out)
    assert summary['tensors'] == 16 and summary['parameters'] == 74193
    reference = DenseFuseNet.published_state_dict(folder)
    converted = DenseFuseNet.published_state_dict(out)
    assert all(torch.equal(reference[k], converted[k]) for k in reference)
    with pytest.raises(ValueError, match='these are DenseFuse weights, not U2Fusion'):
        U2FusionNet.published_state_dict(out)
    torch.save({'conv.weight': torch.zeros(3)}, str(tmp_path / 'other.pth'))
    with pytest.raises(ValueError, match='weights of another network, not DenseFuse'):
        DenseFuseNet.published_state_dict(str(tmp_path / 'other.pth'))
    with pytest.raises(ValueError, match='is the input --checkpoint'):
        convert_tf_checkpoint('densefuse', folder, osp.join(folder, 'DeseFuse.ckpt.index'))
    with pytest.raises(ValueError, match='not a TensorFlow-trained zoo method'):
        convert_tf_checkpoint('seafusion', folder, out)


def test_convert_script_main(tmp_path, capsys):
    folder, _ = _write(tmp_path, U2FUSION_LAYERS, 'model.ckpt')
    spec = importlib.util.spec_from_file_location('convert_tf_checkpoint',
                                                  osp.join(ROOT, 'scripts', 'convert_tf_checkpoint.py'))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / 'u2.pth'
    assert script.main(['--method', 'u2fusion', '--checkpoint', folder, '--output', str(out)]) == 0
    assert '"parameters": 659217' in capsys.readouterr().out
    U2FusionNet().load_state_dict(torch.load(str(out)), strict=True)


@pytest.mark.slow
def test_convert_script_bad_checkpoint_is_one_error_line(tmp_path):
    folder, _ = _write(tmp_path, U2FUSION_LAYERS, 'model.ckpt')
    bad = subprocess.run([sys.executable, osp.join(ROOT, 'scripts', 'convert_tf_checkpoint.py'), '--method',
                          'densefuse', '--checkpoint', folder, '--output', str(tmp_path / 'x.pth')],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith('error: ') and 'Traceback' not in bad.stderr
    assert 'It is a U2Fusion checkpoint' in bad.stderr and not (tmp_path / 'x.pth').exists()
