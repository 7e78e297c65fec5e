"""The model zoo runner (fusion/zoo): entries, every convention key, the SeAFusion and IFCNN archs
(random init), their loaders on small synthetic weight files, the deploy contract and bad input.
Parity with the authors' images lives in scripts/verify_zoo.py, not here."""
import os.path as osp

import cv2
import numpy as np
import pytest
import torch
import yaml
from basicsr.utils.registry import ARCH_REGISTRY
from conftest import ROOT, randomise_bn

from fusion.archs.ifcnn_arch import IFCNNNet
from fusion.archs.seafusion_arch import SeAFusionNet
from fusion.inferencer import FusionInferencer
from fusion.zoo import CONVENTIONS, ZooFusion, build_zoo_method, list_zoo_methods, load_zoo_entry
from fusion.zoo.conventions import finish_output, image_from_fused, prepare_inputs, resolve_conventions
from fusion.zoo.entry import validate_entry
from fusion.zoo.references import REFERENCE_SETS


pytestmark = pytest.mark.usefixtures('one_torch_thread')


def conv(**given):
    return resolve_conventions(given, 'test')


# ------------------------------------------------------------------------------------ entries
def test_entries_are_valid_and_name_registered_archs():
    methods = list_zoo_methods()
    assert methods[0] == 'sage' and {'seafusion', 'ifcnn'} <= set(methods)
    for name in methods[1:]:
        entry = load_zoo_entry(name)
        assert entry.name == name and isinstance(entry.year, int) and entry.paper
        cls = ARCH_REGISTRY.get(entry.arch_type)
        assert callable(getattr(cls, 'published_state_dict', None))
        assert set(entry.conventions) == set(CONVENTIONS)
        for ref in entry.references:
            assert ref['set'] in REFERENCE_SETS
        if not entry.weights['bundled']:  # never in the repository unless the licence allows it
            for f in entry.weights['files']:
                assert not osp.exists(osp.join(ROOT, 'experiments', 'pretrained_models', f))


def test_unknown_method_lists_the_closest_names():
    with pytest.raises(ValueError, match="unknown method 'seafuson'.*closest: seafusion"):
        load_zoo_entry('seafuson')
    with pytest.raises(ValueError, match='closest: ifcnn'):
        build_zoo_method('ifcn')


def test_entry_validation_names_file_and_key(tmp_path):
    raw = yaml.safe_load(open(osp.join(ROOT, 'options', 'zoo', 'seafusion.yml')))
    path = str(tmp_path / 'seafusion.yml')
    validate_entry(raw, path)
    with pytest.raises(ValueError, match=r"seafusion.yml: unknown convention 'roundin'.*did you mean rounding"):
        validate_entry({**raw, 'conventions': {'roundin': 'floor'}}, path)
    with pytest.raises(ValueError, match='convention rounding: .ceil. is not round | floor'):
        validate_entry({**raw, 'conventions': {'rounding': 'ceil'}}, path)
    with pytest.raises(ValueError, match="missing key 'weights'"):
        validate_entry({k: v for k, v in raw.items() if k != 'weights'}, path)
    with pytest.raises(ValueError, match='differs from the file name'):
        validate_entry(raw, str(tmp_path / 'other.yml'))
    with pytest.raises(ValueError, match='need a note'):
        validate_entry({**raw, 'references': [{'set': 'tno', 'folder': 'X', 'conventions': {'clamp': False}}]}, path)


# -------------------------------------------------------------------------------- conventions
x = torch.linspace(0, 1, 2 * 1 * 5 * 6).reshape(2, 1, 5, 6)


def _vis_channel():
    assert CONVENTIONS['vis_channel'].check('grey') and not CONVENTIONS['vis_channel'].check('rgb')
    # OpenCV's BGR->GRAY and the Y of its YCrCb are one luma, rounded apart by at most one level (the
    # runner feeds Y for both, as documented); equal for grey images
    bgr = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    grey, y = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), cv2.cvtColor(bgr, cv2.COLOR_BGR2YCrCb)[..., 0]
    assert np.abs(grey.astype(int) - y).max() == 1 and (grey != y).mean() < 0.05
    flat = np.repeat(bgr[..., :1], 3, axis=2)
    np.testing.assert_array_equal(cv2.cvtColor(flat, cv2.COLOR_BGR2GRAY),
                                  cv2.cvtColor(flat, cv2.COLOR_BGR2YCrCb)[..., 0])
    assert torch.equal(prepare_inputs(x, conv(vis_channel='grey')), prepare_inputs(x, conv(vis_channel='y')))


def _in_channels():
    out = prepare_inputs(x, conv(in_channels=3))
    assert out.shape == (2, 3, 5, 6) and torch.equal(out[:, 2:], x)


def _in_range():
    torch.testing.assert_close(prepare_inputs(x, conv(in_range=[0, 255])), x * 255)
    torch.testing.assert_close(prepare_inputs(x, conv(in_range=[-1, 1])), x * 2 - 1)


def _in_mean_in_std():
    c = conv(in_channels=3, in_mean=[0.1, 0.2, 0.3], in_std=[0.5, 0.25, 2.0])
    out = prepare_inputs(x, c)
    torch.testing.assert_close(out[:, 1:2], (x - 0.2) / 0.25)
    with pytest.raises(ValueError, match='go together'):
        conv(in_mean=[0.5])
    with pytest.raises(ValueError, match='3 values for in_channels 1'):
        conv(in_mean=[0.1, 0.2, 0.3], in_std=[1, 1, 1])


def _pad_multiple_pad_mode():
    out = prepare_inputs(x, conv(pad_multiple=4, pad_mode='replicate'))
    assert out.shape == (2, 1, 8, 8)
    assert torch.equal(out[..., 7, :6], x[..., 4, :]) and torch.equal(out[..., :5, 7], x[..., :, 5])
    refl = prepare_inputs(x, conv(pad_multiple=4))  # reflect: row 5 mirrors row 3
    assert torch.equal(refl[..., 5, :6], x[..., 3, :])
    zeros = prepare_inputs(x, conv(pad_multiple=4, pad_mode='constant'))
    assert float(zeros[..., 5:, :].abs().max()) == 0
    assert finish_output(out, 5, 6, conv(pad_multiple=4)).shape == (2, 1, 5, 6)  # cropped back


def _min_size():
    net = build_zoo_method('seafusion', conventions={'min_size': 8})
    with pytest.raises(ValueError, match=r'SeAFusion: a 6x5 \(WxH\) image is smaller than .* minimum size 8x8'):
        net(x, x)
    assert net(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8)).shape == (1, 1, 8, 8)


def _out_mean_out_std():
    raw = torch.rand(1, 3, 5, 6)
    out = finish_output(raw, 5, 6, conv(out_mean=[0.5, 0.4, 0.3], out_std=[2, 3, 4], out_channels='first'))
    torch.testing.assert_close(out, raw[:, :1] * 2 + 0.5)


def _out_range():
    raw = torch.rand(1, 1, 5, 6) * 2 - 1
    torch.testing.assert_close(finish_output(raw, 5, 6, conv(out_range=[-1, 1])), (raw + 1) / 2)
    torch.testing.assert_close(finish_output(raw * 255, 5, 6, conv(out_range=[0, 255])), raw)


def _out_channels():
    raw = torch.rand(1, 3, 5, 6)
    assert torch.equal(finish_output(raw, 5, 6, conv(out_channels='first')), raw[:, :1])
    torch.testing.assert_close(finish_output(raw, 5, 6, conv(out_channels='mean')), raw.mean(1, keepdim=True))
    # luma8: what saving the RGB output as uint8 (truncated) and converting it with OpenCV gives
    u8 = (raw[0] * 255).numpy().astype(np.uint8).transpose(1, 2, 0)
    expected = cv2.cvtColor(u8, cv2.COLOR_RGB2GRAY)
    got = finish_output(raw, 5, 6, conv(out_channels='luma8', rounding='floor'))
    for rounding in ('floor', 'round'):
        img = image_from_fused(got[0], None, None, True, conv(rounding=rounding))
        np.testing.assert_array_equal(img, expected)


def _out_rescale():
    y = torch.full((1, 4, 4), 0.35)
    y[0, 0, 0], y[0, 1, 1] = 0.2, 0.6
    img = image_from_fused(y, None, None, True, conv(out_rescale='minmax'))
    assert img.min() == 0 and img.max() == 255 and img[2, 2] == 96  # 0.375 of the range
    assert image_from_fused(y, None, None, True, conv())[2, 2] == 89


def _clamp():
    y = torch.tensor([[[0.0, 0.5, 2.0]]])
    assert list(image_from_fused(y, None, None, True, conv(out_rescale='minmax'))[0]) == [0, 128, 255]
    # without clamping the out-of-range value takes part in the stretch
    assert list(image_from_fused(y, None, None, True, conv(out_rescale='minmax', clamp=False))[0]) == [0, 64, 255]


def _rounding():
    y = torch.tensor([[[0.7 / 255, 10.5 / 255 + 1e-6]]])
    assert list(image_from_fused(y, None, None, True, conv(rounding='round'))[0]) == [1, 11]
    assert list(image_from_fused(y, None, None, True, conv(rounding='floor'))[0]) == [0, 10]


def _colour():
    y = torch.rand(1, 4, 5)
    centre = torch.full((1, 4, 5), 128 / 255)  # OpenCV's chroma of a grey pixel
    rgb = image_from_fused(y, centre, centre, False, conv())
    assert rgb.shape == (4, 5, 3) and (rgb[..., 0] == rgb[..., 2]).all()  # equal-channel input stays grey
    assert image_from_fused(y, centre + 0.1, centre, False, conv()).shape == (4, 5, 3)
    assert image_from_fused(y, centre + 0.1, centre, False, conv(colour='grey')).shape == (4, 5)
    assert image_from_fused(y, centre, centre, True, conv()).shape == (4, 5)  # grey visible: grey output


CONVENTION_TESTS = {
    'vis_channel': _vis_channel, 'in_channels': _in_channels, 'in_range': _in_range, 'in_mean': _in_mean_in_std,
    'in_std': _in_mean_in_std, 'pad_multiple': _pad_multiple_pad_mode, 'pad_mode': _pad_multiple_pad_mode,
    'min_size': _min_size, 'out_mean': _out_mean_out_std, 'out_std': _out_mean_out_std, 'out_range': _out_range,
    'out_channels': _out_channels, 'out_rescale': _out_rescale, 'clamp': _clamp, 'rounding': _rounding,
    'colour': _colour,
}


def test_every_convention_key_has_a_test():
    assert set(CONVENTION_TESTS) == set(CONVENTIONS), 'a convention key without a test (add it here)'


@pytest.mark.parametrize('key', sorted(CONVENTION_TESTS))
def test_convention(key):
    with pytest.raises(ValueError, match=f'convention {key}: '):
        conv(**{key: 'not a valid value'})
    CONVENTION_TESTS[key]()


# ---------------------------------------------------------------------------------- the archs
@pytest.mark.parametrize('cls, channels', [(SeAFusionNet, 1), (IFCNNNet, 3)])
def test_arch_shapes_fast_form_and_tiles(cls, channels):
    net = randomise_bn(cls())
    vis, ir = torch.rand(2, channels, 23, 30), torch.rand(2, channels, 23, 30)
    with torch.no_grad():
        plain = net(vis, ir)
        fast = net.fuse_for_inference()(vis, ir)
    assert plain.shape == (2, channels, 23, 30)
    assert float((plain - fast).abs().max()) <= 1e-5
    # tiles overlapping by 3 x the stated margin equal the untiled result
    wrapped = ZooFusion(net, load_zoo_entry('seafusion' if cls is SeAFusionNet else 'ifcnn'))
    v, i = torch.rand(1, 1, 70, 90), torch.rand(1, 1, 70, 90)
    whole = FusionInferencer(wrapped).fuse(v, i)
    tiled = FusionInferencer(wrapped, tile_size=40).fuse(v, i)
    assert FusionInferencer(wrapped).tile_overlap == 3 * cls.tile_margin
    assert float((whole - tiled).abs().max()) <= 1e-5


def test_ifcnn_fusion_rules():
    net = IFCNNNet().eval()
    a, b = torch.rand(1, 3, 9, 9), torch.rand(1, 3, 9, 9)
    outs = {}
    for rule in ('max', 'sum', 'mean'):
        net.fuse_rule = rule
        with torch.no_grad():
            outs[rule] = net(a, b)
            torch.testing.assert_close(net.fuse_for_inference()(a, b), outs[rule], atol=1e-5, rtol=0)
    assert not torch.allclose(outs['max'], outs['mean'])
    with pytest.raises(ValueError, match="fuse_rule: 'min'"):
        IFCNNNet(fuse_rule='min')


def test_published_state_dict_reads_files_and_folders(tmp_path):
    sea = SeAFusionNet()
    torch.save(sea.state_dict(), tmp_path / 'SeAFusion.pth')
    assert len(SeAFusionNet.published_state_dict(str(tmp_path))) == 72
    assert set(SeAFusionNet.published_state_dict(str(tmp_path / 'SeAFusion.pth'))) == set(sea.state_dict())
    # IFCNN's file comes from a PyTorch without num_batches_tracked (13 tensors)
    state = {k: v for k, v in IFCNNNet().state_dict().items() if 'num_batches_tracked' not in k}
    assert len(state) == 13
    torch.save(state, tmp_path / 'IFCNN-MAX.pth')
    IFCNNNet().load_state_dict(IFCNNNet.published_state_dict(str(tmp_path / 'IFCNN-MAX.pth')))


def test_published_state_dict_errors(tmp_path):
    torch.save(SeAFusionNet().state_dict(), tmp_path / 'SeAFusion.pth')
    with pytest.raises(ValueError, match='not IFCNN weights.*VIF-Benchmark'):
        IFCNNNet.published_state_dict(str(tmp_path / 'SeAFusion.pth'))
    with pytest.raises(ValueError, match='has no IFCNN-MAX.pth.*get it from'):
        IFCNNNet.published_state_dict(str(tmp_path))
    with pytest.raises(ValueError, match='no such file'):
        SeAFusionNet.published_state_dict(str(tmp_path / 'nothing.pth'))
    (tmp_path / 'broken.pth').write_bytes(b'not a checkpoint')
    with pytest.raises(ValueError, match='broken.pth: not a readable PyTorch weight file'):
        SeAFusionNet.published_state_dict(str(tmp_path / 'broken.pth'))


# --------------------------------------------------------------------------------- the runner
def test_runner_wraps_conventions_and_deploy_contract(tmp_path):
    torch.save(randomise_bn(SeAFusionNet()).state_dict(), tmp_path / 'SeAFusion.pth')
    net = build_zoo_method('seafusion', str(tmp_path))
    assert isinstance(net, ZooFusion) and not net.training and net.tile_margin == 9
    vis, ir = torch.rand(1, 1, 16, 20), torch.rand(1, 1, 16, 20)
    with torch.no_grad():
        expected = net.net(vis, ir)  # SeAFusion: grey in, raw out, conventions at the save step
        plain = net(vis, ir)
    torch.testing.assert_close(plain, expected)
    runner = FusionInferencer(net)
    assert runner.fast and float((runner.fuse(vis, ir) - plain).abs().max()) <= 1e-5
    padded = build_zoo_method('ifcnn', conventions={'pad_multiple': 8})
    assert padded.size_multiple == 8 and padded(vis, ir).shape == (1, 1, 16, 20)


def test_weights_of_another_method_name_both(tmp_path):
    torch.save(SeAFusionNet().state_dict(), tmp_path / 'SeAFusion.pth')
    with pytest.raises(ValueError, match=r'weights of seafusion, not of ifcnn \(IFCNN\).*--method seafusion'):
        build_zoo_method('ifcnn', str(tmp_path / 'SeAFusion.pth'))
    from conftest import STUDENT_CKPT
    with pytest.raises(ValueError, match='weights of sage, not of seafusion'):
        build_zoo_method('seafusion', STUDENT_CKPT)
    torch.save({'x': torch.zeros(1)}, tmp_path / 'other.pth')
    with pytest.raises(ValueError, match='not SeAFusion weights'):
        build_zoo_method('seafusion', str(tmp_path / 'other.pth'))


def test_zoo_fusion_net_is_registered_and_builds_from_options(tmp_path):
    torch.save(SeAFusionNet().state_dict(), tmp_path / 'SeAFusion.pth')
    net = ARCH_REGISTRY.get('ZooFusionNet')(method='seafusion', weights=str(tmp_path / 'SeAFusion.pth'))
    assert isinstance(net, ZooFusion) and net.entry.name == 'seafusion'
    with pytest.raises(ValueError, match='SAGEStudent'):
        ARCH_REGISTRY.get('ZooFusionNet')(method='sage')


def test_runner_knows_no_concrete_network():
    """fusion/zoo builds every method through ARCH_REGISTRY from its entry (the SAGE student only
    through fusion.inference's loader)."""
    import glob

    from test_layering import _fusion_imports
    for path in glob.glob(osp.join(ROOT, 'fusion', 'zoo', '*.py')):
        rel = osp.relpath(path, ROOT)
        bad = {m for m in _fusion_imports(rel) if m.startswith(('fusion.archs', 'fusion.models', 'fusion.losses'))}
        assert not bad, f'{rel} imports {sorted(bad)}'
