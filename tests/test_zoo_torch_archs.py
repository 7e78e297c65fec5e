"""DIDFuse and YDTR archs: shapes, fusion rules, the deploy-time forms, and reading weight files in
the published formats (small synthetic files written here; the real weights are not needed)."""
import os

import pytest
import torch
from conftest import randomise_bn

from fusion.archs.didfuse_arch import DIDFuseNet, l1_norm_rule
from fusion.archs.ydtr_arch import YDTRNet, as_tokens


def _pair(h=20, w=24, b=1, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 1, h, w, generator=g), torch.rand(b, 1, h, w, generator=g)


def didfuse_release_files(net: DIDFuseNet, folder: str, encoder='Encoder.pkl', decoder='Decoder.pkl') -> None:
    """Writes ``net``'s weights as the authors publish them: {'weight': state_dict, 'epoch'} per part,
    with the block name repeated in each key (cov1.cov1.1.weight)."""
    for part, name in (('encoder', encoder), ('decoder', decoder)):
        sd = {}
        for key, value in getattr(net, part).state_dict().items():
            block, _, rest = key.partition('.')
            sd[f'{block}.{block}.{rest}'] = value.clone()
        torch.save({'weight': sd, 'epoch': 120}, os.path.join(folder, name))


def ydtr_release_file(net: YDTRNet, path: str) -> None:
    """Writes ``net``'s weights in the release's layout: the out conv wrapped, plus the release's
    unused conv64 / conv / patch_embed tensors."""
    sd = {k.replace('convolutional_out.', 'convolutional_out.conv.'): v.clone() for k, v in net.state_dict().items()}
    sd['conv64.conv.weight'] = torch.zeros(64, 64, 3, 3)
    sd['conv.conv.weight'] = torch.zeros(64, 128, 3, 3)
    sd['patch_embed.norm.weight'] = torch.ones(96)
    torch.save(sd, path)


# --------------------------------------------------------------------------------------------- DIDFuse
def test_didfuse_shapes_range_and_rules():
    torch.manual_seed(0)
    vis, ir = _pair(b=2)
    outs = {}
    for rule in ('sum', 'average', 'l1_norm'):
        torch.manual_seed(0)
        net = DIDFuseNet(rule).eval()
        with torch.no_grad():
            out = net(vis, ir)
        assert out.shape == (2, 1, 20, 24)
        assert 0 < out.min() and out.max() < 1  # the decoder ends in a Sigmoid
        with torch.no_grad():  # every rule is symmetric in the two sources
            assert torch.allclose(out, net(ir, vis), atol=1e-6)
        outs[rule] = out
    assert not torch.allclose(outs['sum'], outs['average'], atol=1e-4)
    assert not torch.allclose(outs['sum'], outs['l1_norm'], atol=1e-4)
    with pytest.raises(ValueError, match='fusion_rule must be one of'):
        DIDFuseNet('max')


def test_l1_norm_rule_weights_by_activity():
    a = torch.zeros(1, 2, 5, 5)
    b = torch.ones(1, 2, 5, 5)
    a[..., 2, 2] = 3.0  # a's activity at the centre: 6 (summed over channels) vs b's 2 per pixel
    fused = l1_norm_rule(a, b)
    # centre 3x3 box: mean activity of a = 6/9, of b = 2 -> weights 0.25 / 0.75
    assert torch.allclose(fused[0, 0, 2, 2], torch.tensor(0.25 * 3 + 0.75 * 1))
    assert torch.allclose(fused[0, 0, 0, 4], torch.tensor(1.0))  # a is inactive there: b wins


def test_didfuse_fast_path_and_tiles():
    torch.manual_seed(0)
    net = DIDFuseNet('l1_norm')
    randomise_bn(net, seed=0)
    net.eval()
    vis, ir = _pair(24, 40, b=2)
    with torch.no_grad():
        plain = net(vis, ir)
        fast = net.fuse_for_inference()(vis, ir)
        assert (fast - plain).abs().max() < 1e-5
        # beyond tile_margin from a cut edge a crop reproduces the whole image
        m = net.tile_margin
        crop = net(vis[..., :, :20], ir[..., :, :20])
    assert torch.allclose(crop[..., :, :20 - m], plain[..., :, :20 - m], atol=1e-6)
    assert not net.training  # fuse_for_inference leaves the module as it was


def test_didfuse_too_small():
    net = DIDFuseNet().eval()
    with pytest.raises(ValueError, match='at least 2 x 2'):
        net(torch.rand(1, 1, 1, 8), torch.rand(1, 1, 1, 8))
    with pytest.raises(ValueError, match='at least 2 x 2'):
        net.fuse_for_inference()(torch.rand(1, 1, 8, 1), torch.rand(1, 1, 8, 1))


def test_didfuse_loads_release_format(tmp_path):
    torch.manual_seed(3)
    src = DIDFuseNet()
    randomise_bn(src, seed=0)
    didfuse_release_files(src, str(tmp_path))
    for path in (str(tmp_path), str(tmp_path / 'Encoder.pkl'), str(tmp_path / 'Decoder.pkl')):
        net = DIDFuseNet()
        net.load_state_dict(DIDFuseNet.published_state_dict(path), strict=True)
        for k, v in src.state_dict().items():
            assert torch.equal(net.state_dict()[k], v), k
    # the authors' own file names work too
    other = tmp_path / 'authors'
    other.mkdir()
    didfuse_release_files(src, str(other), 'Encoder_weight_IJCAI.pkl', 'Decoder_weight_IJCAI.pkl')
    assert torch.equal(DIDFuseNet.published_state_dict(str(other))['decoder.cov7.1.weight'],
                       src.decoder.cov7[1].weight)


def test_didfuse_bad_weights(tmp_path):
    with pytest.raises(ValueError, match='has no Encoder.pkl.*IVIF-DIDFuse'):
        DIDFuseNet.published_state_dict(str(tmp_path))
    didfuse_release_files(DIDFuseNet(), str(tmp_path))
    os.remove(tmp_path / 'Decoder.pkl')
    with pytest.raises(ValueError, match='has no Decoder.pkl'):
        DIDFuseNet.published_state_dict(str(tmp_path))
    # weights of another method (YDTR's plain state dict) in DIDFuse's file names
    torch.save({'weight': YDTRNet().state_dict(), 'epoch': 1}, tmp_path / 'Decoder.pkl')
    with pytest.raises(ValueError, match=r'not DIDFuse weights \(\d+ missing keys'):
        DIDFuseNet.published_state_dict(str(tmp_path))
    torch.save({'weight': [1, 2], 'epoch': 1}, tmp_path / 'Decoder.pkl')  # not a state dict
    with pytest.raises(ValueError, match='holds no state dict of tensors'):
        DIDFuseNet.published_state_dict(str(tmp_path))
    (tmp_path / 'Decoder.pkl').write_bytes(b'not a pickle')
    with pytest.raises(ValueError, match='Decoder.pkl: not a readable PyTorch weight file'):
        DIDFuseNet.published_state_dict(str(tmp_path))


# --------------------------------------------------------------------------------------------- YDTR
def test_ydtr_tokens_reinterpret_the_buffer():
    x = torch.arange(2 * 64 * 4 * 8, dtype=torch.float32).reshape(2, 64, 4, 8)
    t = as_tokens(x)
    assert t.shape == (2, 4, 8, 64)
    # token 0 is the first 64 values of channel 0 and 1 (32 pixels per channel here), not pixel 0
    assert torch.equal(t[0, 0, 0], x[0].flatten()[:64])
    # the same in any memory format (the fast CPU path may run channels_last)
    assert torch.equal(as_tokens(x.contiguous(memory_format=torch.channels_last)), t)


def test_ydtr_shapes_range_and_symmetry():
    torch.manual_seed(0)
    net = YDTRNet().eval()
    vis, ir = _pair(12, 20, b=2)
    with torch.no_grad():
        out = net(vis, ir)
        assert out.shape == (2, 1, 12, 20)
        assert out.abs().max() < 1  # Tanh
        assert torch.allclose(out, net(ir, vis), atol=1e-6)  # shared branches, summed
        # batch elements stay independent although tokens span channels
        assert torch.allclose(net(vis[1:], ir[1:]), out[1:], atol=1e-6)


def test_ydtr_shifted_windows():
    torch.manual_seed(0)
    net = YDTRNet(window_size=2).eval()
    assert net.size_multiple == 2
    assert net.basicLayer.blocks[1].shift == 1
    with torch.no_grad():
        out = net(*_pair(8, 12))
        fast = net.fuse_for_inference()(*_pair(8, 12))
    assert out.shape == (1, 1, 8, 12)
    assert (fast - out).abs().max() < 1e-5
    with pytest.raises(ValueError, match='multiples of it'):
        net(*_pair(8, 11))


def test_ydtr_fast_path_matches_plain():
    torch.manual_seed(0)
    net = YDTRNet()
    randomise_bn(net, seed=0)
    for p in net.basicLayer.parameters():  # LayerNorm affines away from (1, 0) so folding is tested
        p.data.add_(torch.randn_like(p) * 0.1)
    net.eval()
    vis, ir = _pair(16, 24, b=2)
    with torch.no_grad():
        plain = net(vis, ir)
        fast = net.fuse_for_inference()(vis, ir)
    assert (fast - plain).abs().max() < 1e-5


def test_ydtr_takes_tiny_images():
    net = YDTRNet().eval()
    with torch.no_grad():
        assert net(torch.rand(1, 1, 1, 1), torch.rand(1, 1, 1, 1)).shape == (1, 1, 1, 1)
        assert net.fuse_for_inference()(torch.rand(1, 1, 1, 5), torch.rand(1, 1, 1, 5)).shape == (1, 1, 1, 5)


def test_ydtr_loads_release_format(tmp_path):
    torch.manual_seed(4)
    src = YDTRNet()
    ydtr_release_file(src, str(tmp_path / 'model_10.pth'))
    for path in (str(tmp_path), str(tmp_path / 'model_10.pth')):
        state = YDTRNet.published_state_dict(path)
        assert not any(k.startswith(('conv64.', 'conv.', 'patch_embed.')) for k in state)
        net = YDTRNet()
        net.load_state_dict(state, strict=True)
        assert torch.equal(net.convolutional_out.weight, src.convolutional_out.weight)


def test_ydtr_bad_weights(tmp_path):
    with pytest.raises(ValueError, match='has no model_10.pth.*tthinking/YDTR'):
        YDTRNet.published_state_dict(str(tmp_path))
    # DIDFuse's encoder file given to YDTR
    didfuse_release_files(DIDFuseNet(), str(tmp_path))
    torch.save(torch.load(tmp_path / 'Encoder.pkl', weights_only=True)['weight'], tmp_path / 'enc.pth')
    with pytest.raises(ValueError, match=r'enc.pth: not YDTR weights \(\d+ missing keys'):
        YDTRNet.published_state_dict(str(tmp_path / 'enc.pth'))
    torch.save([1, 2], tmp_path / 'list.pth')
    with pytest.raises(ValueError, match='holds no state dict of tensors'):
        YDTRNet.published_state_dict(str(tmp_path / 'list.pth'))
