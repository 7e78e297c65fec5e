"""The DIDFuse and YDTR zoo entries through the runner: conventions, loading the published formats
(synthetic files), weights of another method, images below the minimum size, the command line."""
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from fusion.archs.didfuse_arch import DIDFuseNet
from fusion.archs.ydtr_arch import YDTRNet
from fusion.inferencer import FusionInferencer
from fusion.zoo import build_zoo_method, load_zoo_entry
from tests.test_zoo_torch_archs import didfuse_release_files, ydtr_release_file


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_entries_declare_the_authors_conventions():
    d = load_zoo_entry('didfuse')
    assert d.network == {'type': 'DIDFuseNet', 'fusion_rule': 'sum'}
    assert d.weights['files'] == ['Encoder.pkl', 'Decoder.pkl'] and not d.weights['bundled']
    assert (d.conventions['rounding'], d.conventions['colour'], d.conventions['out_rescale']) == ('round', 'grey',
                                                                                                  'none')
    y = load_zoo_entry('ydtr')
    assert y.weights['files'] == ['model_10.pth'] and not y.weights['bundled']
    assert 'none' in y.weights['licence']
    assert (y.conventions['rounding'], y.conventions['colour']) == ('floor', 'grey')
    assert [r['set'] for r in y.references] == ['ydtr_own', 'vifb']


@pytest.mark.parametrize('method', ['didfuse', 'ydtr'])
def test_random_init_through_the_runner(method):
    torch.manual_seed(0)
    net = build_zoo_method(method)
    vis, ir = torch.rand(2, 1, 10, 14), torch.rand(2, 1, 10, 14)
    with torch.no_grad():
        out = net(vis, ir)
        fast = net.fuse_for_inference()(vis, ir)
    assert out.shape == (2, 1, 10, 14)
    assert (fast - out).abs().max() < 1e-5
    # the raw output passes unchanged (in_range / out_range [0, 1]): equal to the bare network's
    with torch.no_grad():
        assert torch.allclose(out, net.net(vis, ir))
    # colour: grey even with a colour visible image's chroma at hand
    cr = torch.full((1, 10, 14), 0.7)
    img = net.image_from_fused(out[0], cr, cr)
    assert img.shape == (10, 14) and img.dtype == np.uint8


@pytest.mark.parametrize('method', ['didfuse', 'ydtr'])
def test_inferencer_fast_path_matches_plain(method):
    """What benchmark_zoo times: FusionInferencer's fast form (channels_last on CPU) against the
    plain eval forward, within 1e-5; with batches of two."""
    torch.manual_seed(1)
    net = build_zoo_method(method)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_var.fill_(1.7)
            m.running_mean.fill_(0.05)
    runner = FusionInferencer(net, 'cpu', max_batch=2)
    assert runner.fast
    vis, ir = torch.rand(2, 1, 16, 20), torch.rand(2, 1, 16, 20)
    with torch.no_grad():
        plain = net(vis, ir)
    assert (runner.fuse(vis, ir) - plain).abs().max() < 1e-5


def test_rounding_conventions_differ():
    d, y = build_zoo_method('didfuse'), build_zoo_method('ydtr')
    fused = torch.full((1, 2, 2), 100.7 / 255)
    assert d.image_from_fused(fused, None, None)[0, 0] == 101  # skimage's imsave rounds
    assert y.image_from_fused(fused, None, None)[0, 0] == 100  # (out * 255).astype(uint8) truncates


def test_didfuse_release_files_through_the_runner(tmp_path):
    torch.manual_seed(5)
    src = DIDFuseNet().eval()
    didfuse_release_files(src, str(tmp_path))
    net = build_zoo_method('didfuse', str(tmp_path))
    vis, ir = torch.rand(1, 1, 9, 11), torch.rand(1, 1, 9, 11)
    with torch.no_grad():
        assert torch.allclose(net(vis, ir), src(vis, ir))


def test_weights_of_the_other_method_name_both(tmp_path):
    ydtr_release_file(YDTRNet(), str(tmp_path / 'model_10.pth'))
    with pytest.raises(ValueError, match='these are the weights of ydtr, not of didfuse'):
        build_zoo_method('didfuse', str(tmp_path / 'model_10.pth'))
    didfuse_release_files(DIDFuseNet(), str(tmp_path))
    with pytest.raises(ValueError, match='these are the weights of didfuse, not of ydtr'):
        build_zoo_method('ydtr', str(tmp_path / 'Encoder.pkl'))


def test_image_below_the_minimum_size():
    net = build_zoo_method('didfuse')  # YDTR takes any size from 1 x 1
    with pytest.raises(ValueError, match='smaller than the method\'s minimum size 2x2'):
        net(torch.rand(1, 1, 1, 6), torch.rand(1, 1, 1, 6))


@pytest.mark.slow
def test_inference_command_with_didfuse_files(tmp_path):
    """scripts/inference.py --method didfuse on synthetic weights: grey PNGs of the inputs' size; a
    1-pixel-high pair is one error line."""
    torch.manual_seed(6)
    weights = tmp_path / 'DIDFuse'
    weights.mkdir()
    didfuse_release_files(DIDFuseNet(), str(weights))
    rng = np.random.default_rng(0)
    for sub in ('ir', 'vi'):
        (tmp_path / sub).mkdir()
        cv2.imwrite(str(tmp_path / sub / 'a.png'), rng.integers(0, 255, (12, 16), dtype=np.uint8))
        cv2.imwrite(str(tmp_path / sub / 'b.png'), rng.integers(0, 255, (12, 16, 3), dtype=np.uint8))
    cmd = [sys.executable, 'scripts/inference.py', '--method', 'didfuse', '--weights', str(weights),
           '--ir', str(tmp_path / 'ir'), '--vis', str(tmp_path / 'vi'), '--output', str(tmp_path / 'out')]
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    for name in ('a', 'b'):
        img = cv2.imread(str(tmp_path / 'out' / f'{name}.png'), cv2.IMREAD_UNCHANGED)
        assert img.shape[:2] == (12, 16)
        assert img.ndim == 2 or (img[..., 0] == img[..., 2]).all()  # colour: grey
    for sub in ('ir', 'vi'):
        cv2.imwrite(str(tmp_path / sub / 'a.png'), np.zeros((1, 16), np.uint8))
        os.remove(tmp_path / sub / 'b.png')
    res = subprocess.run(cmd[:-1] + [str(tmp_path / 'out2')], cwd=ROOT, capture_output=True, text=True, env=env)
    assert res.returncode != 0
    last = res.stderr.strip().splitlines()[-1]  # after the progress bar
    assert last.startswith('error:') and 'a.png' in last and 'minimum size 2x2' in last
    assert 'Traceback' not in res.stderr
