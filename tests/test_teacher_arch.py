"""Tests of the SAGE teacher network (fusion/archs/sage_teacher_arch.py, spa_modules.py).

Small inputs only (16..48 px): the teacher costs ~225 GFLOPs at 192x256.
"""
from __future__ import annotations

import os.path as osp
import sys
import types
from typing import List

import pytest
import torch
import yaml
from basicsr.archs import build_network
from basicsr.utils.registry import ARCH_REGISTRY
from conftest import ROOT

import fusion  # noqa: F401  (registers the archs)
from fusion.archs.sage_student_arch import SAGEStudent
from fusion.archs.sage_teacher_arch import SAGETeacher, convert_official_teacher_state_dict
from fusion.archs.spa_modules import SPABlock, SpatialTransformer, multihead_attention


ABLATIONS = [None, 'no_latent', 'no_kv', 'no_repository']


pytestmark = pytest.mark.usefixtures('one_torch_thread')


def make_inputs(b: int, h: int, w: int, mask_num: int = 4, seed: int = 0, binary: bool = False) -> List[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    vis = torch.rand(b, 1, h, w, generator=g)
    ir = torch.rand(b, 1, h, w, generator=g)
    vis_m = (torch.rand(b, mask_num, h, w, generator=g) > 0.5).float()
    ir_m = (torch.rand(b, mask_num, h, w, generator=g) > 0.5).float()
    if binary:
        return [vis, ir, vis_m, ir_m]
    return [vis, ir, vis_m * vis, ir_m * ir]


def trained_like(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """At init proj_out = 0 makes every transformer the identity (no gradient reaches the
    attention, and the repository routing has no effect): perturb it like a trained model."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if 'proj_out' in name.split('.'):
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def build(seed: int = 0, **kw) -> SAGETeacher:
    torch.manual_seed(seed)
    return SAGETeacher(**kw).eval()


# ---------------------------------------------------------------------------------------------
# structure and parameter counts (official numbers: sections 1.2 and 1.7 of the project's reference
# notes on the official code, sage_reference.md)

OFFICIAL_MODULE_PARAMS = {
    'encoder_img1': 4944, 'encoder_img2': 18496, 'encoder_mask1_ir': 5232, 'encoder_mask2_ir': 18496,
    'encoder_mask1_vi': 5232, 'encoder_mask2_vi': 18496,
    'spa.mask_transformer1_ir': 91456, 'spa.mask_transformer1_vi': 91456, 'spa.img_transformer1': 91456,
    'spa.middle_img': 73792, 'spa.middle_mask_ir': 73792, 'spa.middle_mask_vi': 73792,
    'spa.middle_mask': 73792, 'spa.mask_transformer2': 91456, 'spa.img_transformer2': 91456,
    'img_decoder1': 1106368, 'img_decoder2': 78593,
    'compress_and_downsample_img1': 147520, 'compress_and_downsample_img2': 147520,
    'compress_and_downsample_img3': 147520, 'compress_and_downsample_img4': 147520,
    **{f'compress_to_32_{k}': 8224 for k in range(1, 6)},
}


def test_parameter_count_and_layout_match_official():
    model = SAGETeacher(mask_num=4)
    assert sum(p.numel() for p in model.parameters()) == 2_639_505  # official 2,787,025 - 147,520 unused
    modules = dict(model.named_modules())
    for name, count in OFFICIAL_MODULE_PARAMS.items():
        assert sum(p.numel() for p in modules[name].parameters()) == count, name
    assert sum(OFFICIAL_MODULE_PARAMS.values()) == 2_639_505
    # official state dict: 190 keys incl. the 2 of the unused compress_and_upsample conv
    assert len(model.state_dict()) + 2 == 190
    assert not list(model.buffers())
    # key layout inside a transformer, official order (ff registered before attn2)
    keys = [k[len('spa.img_transformer1.'):] for k in model.state_dict() if k.startswith('spa.img_transformer1.')]
    assert keys[:5] == ['norm.weight', 'norm.bias', 'proj_in.weight', 'proj_in.bias',
                        'transformer_blocks.0.attn1.to_q.weight']
    ff_first = keys.index('transformer_blocks.0.ff.net.0.proj.weight')
    assert ff_first < keys.index('transformer_blocks.0.attn2.to_q.weight')
    assert model.state_dict()['spa.img_transformer1.transformer_blocks.0.ff.net.2.weight'].shape == (64, 256)
    assert SAGETeacher(mask_num=6).encoder_mask1_vi[0].in_channels == 6


@pytest.mark.parametrize('ablation,params,spa_out', [
    (None, 2_639_505, 256),
    ('no_kv', 2_639_505, 256),           # routing only, no weights change
    ('no_latent', 2_779_409, 320),       # -middle_mask -mask_transformer2, wider consumers of 5x64
    ('no_repository', 2_223_761, 192),   # middle convs 64->64, consumers of 3x64
])
def test_ablation_channel_corrections(ablation, params, spa_out):
    model = SAGETeacher(spa_ablation=ablation)
    assert sum(p.numel() for p in model.parameters()) == params
    assert model.spa.out_channels == spa_out
    assert model.compress_and_downsample_img1[0].in_channels == spa_out
    assert model.compress_to_32_3.in_channels == spa_out
    assert model.img_decoder1[0].in_channels == spa_out + 64
    assert hasattr(model.spa, 'mask_transformer2') == (ablation != 'no_latent')
    assert model.spa.middle_img[0].in_channels == (64 if ablation == 'no_repository' else 128)


# ---------------------------------------------------------------------------------------------
# shapes and sizes

@pytest.mark.parametrize('b,h,w', [(1, 16, 16), (2, 18, 22), (1, 32, 48), (2, 30, 20)])
def test_output_shapes_match_student(b, h, w):
    teacher, student = build(), SAGEStudent().eval()
    inputs = make_inputs(b, h, w)
    with torch.no_grad():
        fused, feats = teacher(*inputs)
        _, student_feats = student(inputs[0], inputs[1])
    assert fused.shape == (b, 1, h, w)
    assert [f.shape for f in feats] == [f.shape for f in student_feats]
    assert [f.shape[-2:] for f in feats] == [(h, w), (h // 2, w // 2), (h // 4, w // 4), (h // 2, w // 2), (h, w)]
    assert all(f.shape[1] == 32 for f in feats)
    assert torch.isfinite(fused).all()


@pytest.mark.parametrize('h,w', [(15, 16), (16, 17), (14, 14), (12, 32), (63, 64)])
def test_invalid_sizes_fail_clearly(h, w):
    with pytest.raises(ValueError, match=rf'{h}x{w}.*even.*pad_to_valid'):
        build()(*make_inputs(1, h, w))


@pytest.mark.parametrize('h,w', [(15, 17), (9, 12), (21, 16)])
def test_pad_to_valid_crops_back_to_student_shapes(h, w):
    teacher, student = build(pad_to_valid=True), SAGEStudent().eval()
    inputs = make_inputs(2, h, w)
    with torch.no_grad():
        fused, feats = teacher(*inputs)
        _, student_feats = student(inputs[0], inputs[1])
    assert fused.shape == (2, 1, h, w)
    assert [f.shape for f in feats] == [f.shape for f in student_feats]
    assert torch.isfinite(fused).all()


def test_pad_to_valid_is_a_no_op_on_valid_sizes():
    plain, padding = build(), build(pad_to_valid=True)
    inputs = make_inputs(1, 18, 20)
    with torch.no_grad():
        a, fa = plain(*inputs)
        b, fb = padding(*inputs)
    assert torch.equal(a, b) and all(torch.equal(x, y) for x, y in zip(fa, fb))


def test_input_validation_names_the_problem():
    teacher = build()
    vis, ir, vp, ip = make_inputs(1, 16, 16)
    with pytest.raises(ValueError, match='vis_patches.*4 channel'):
        teacher(vis, ir, vp[:, :3], ip)
    with pytest.raises(ValueError, match='ir_patches.*does not match'):
        teacher(vis, ir, vp, ip[..., :14])
    with pytest.raises(ValueError, match='ir must be a B x C x H x W'):
        teacher(vis, ir[0], vp, ip)
    for bad in ({'attention': 'flash'}, {'patch_mode': 'soft'}, {'spa_ablation': 'no_z'}, {'tile_size': 8}):
        with pytest.raises(ValueError):
            SAGETeacher(**bad)


# ---------------------------------------------------------------------------------------------
# patch modes, attention, identity at init

def test_binary_patch_mode_equals_masked_intensity_input():
    masked = trained_like(build(seed=1))
    binary = build(seed=1, patch_mode='binary')
    binary.load_state_dict(masked.state_dict())
    vis, ir, vm, im = make_inputs(2, 20, 24, binary=True)
    with torch.no_grad():
        out_b, feats_b = binary(vis, ir, vm, im)
        out_m, feats_m = masked(vis, ir, vm * vis, im * ir)
    assert torch.equal(out_b, out_m)
    assert all(torch.equal(a, b) for a, b in zip(feats_b, feats_m))


@pytest.mark.parametrize('b,nq,nk,heads,d',
                         [(1, 64, 64, 2, 32), (2, 50, 17, 2, 32), (3, 33, 90, 4, 16), (1, 1, 1, 2, 8)])
def test_sdpa_attention_equals_plain_softmax(b, nq, nk, heads, d):
    g = torch.Generator().manual_seed(b * nq + nk)
    q = torch.randn(b, nq, heads * d, generator=g, requires_grad=True)
    k = torch.randn(b, nk, heads * d, generator=g, requires_grad=True)
    v = torch.randn(b, nk, heads * d, generator=g, requires_grad=True)
    # the textbook formula, written out independently of multihead_attention
    qh, kh, vh = (t.reshape(b, -1, heads, d).transpose(1, 2) for t in (q, k, v))
    ref = torch.softmax(qh @ kh.transpose(-1, -2) / d ** 0.5, dim=-1) @ vh
    ref = ref.transpose(1, 2).reshape(b, nq, heads * d)
    for impl in ('sdpa', 'plain'):
        out = multihead_attention(q, k, v, heads, impl)
        assert out.shape == (b, nq, heads * d)
        assert (out - ref).abs().max() < 1e-5, impl
    grads = [torch.autograd.grad(multihead_attention(q, k, v, heads, impl).square().sum(), (q, k, v))
             for impl in ('sdpa', 'plain')]
    for gs, gp in zip(*grads):
        assert (gs - gp).abs().max() < 1e-4


def test_teacher_sdpa_and_plain_attention_agree():
    sdpa = trained_like(build(seed=2))
    plain = build(seed=2, attention='plain')
    plain.load_state_dict(sdpa.state_dict())
    inputs = make_inputs(1, 32, 32)
    with torch.no_grad():
        a, fa = sdpa(*inputs)
        b, fb = plain(*inputs)
    assert (a - b).abs().max() < 1e-5
    assert all((x - y).abs().max() < 1e-4 for x, y in zip(fa, fb))


def test_spatial_transformer_is_identity_at_init():
    torch.manual_seed(3)
    st = SpatialTransformer(64, heads=2, head_dim=32)
    x = torch.randn(2, 64, 5, 7)
    repo = (torch.randn(2, 12, 64), torch.randn(2, 12, 64))
    y, (k, v) = st(x)
    assert torch.equal(y, x)
    assert k.shape == v.shape == (2, 35, 64)
    y2, (k2, v2) = st(x, repo)
    assert torch.equal(y2, x)
    # with a repository, keys/values are the projected repository (N from the repository)
    assert k2.shape == (2, 12, 64)
    assert torch.allclose(k2, st.transformer_blocks[0].attn2.to_k(repo[0]))
    trained_like(st)
    assert not torch.allclose(st(x)[0], x)
    assert not torch.allclose(st(x)[0], st(x, repo)[0])  # the repository matters once trained


def test_fresh_teacher_transformers_are_identity():
    """At init every transformer is the identity, so the repository routing cannot matter yet:
    the full SPA and the no_kv ablation give the same output with the same weights."""
    full = build(seed=4)
    no_kv = build(seed=4, spa_ablation='no_kv')
    no_kv.load_state_dict(full.state_dict())
    inputs = make_inputs(1, 24, 24)
    with torch.no_grad():
        assert torch.equal(full(*inputs)[0], no_kv(*inputs)[0])
        x = torch.randn(1, 64, 8, 8)
        for name in ('img_transformer1', 'mask_transformer1_vi', 'mask_transformer1_ir', 'mask_transformer2',
                     'img_transformer2'):
            assert torch.equal(getattr(full.spa, name)(x)[0], x), name


# ---------------------------------------------------------------------------------------------
# ablations and gradients

def test_each_ablation_changes_output_and_keeps_shapes():
    base = trained_like(build(seed=5))
    inputs = make_inputs(1, 32, 32)
    with torch.no_grad():
        ref, ref_feats = base(*inputs)
    base_state = base.state_dict()
    for ablation in ABLATIONS[1:]:
        model = build(seed=6, spa_ablation=ablation)
        # share every weight whose shape still fits, so the difference comes from the ablation
        own = model.state_dict()
        shared = {k: v for k, v in base_state.items() if k in own and own[k].shape == v.shape}
        model.load_state_dict(shared, strict=False)
        if ablation == 'no_kv':
            assert len(shared) == len(own)  # same weights exactly
        with torch.no_grad():
            out, feats = model(*inputs)
        assert out.shape == ref.shape
        assert [f.shape for f in feats] == [f.shape for f in ref_feats]
        assert (out - ref).abs().max() > 1e-4, ablation
        assert (feats[2] - ref_feats[2]).abs().max() > 1e-4, ablation


@pytest.mark.parametrize('ablation', ABLATIONS)
def test_gradients_reach_every_parameter(ablation):
    model = trained_like(build(seed=7, spa_ablation=ablation)).train()
    fused, feats = model(*make_inputs(1, 32, 32, seed=1))
    (fused.sum() + sum(f.sum() for f in feats)).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f'no gradient for {missing}'


def test_patch_inputs_influence_the_output():
    """Semantic patches must reach the fused image (through Z / the patch streams)."""
    for ablation in ABLATIONS:
        model = trained_like(build(seed=8, spa_ablation=ablation))
        vis, ir, vp, ip = make_inputs(1, 24, 24)
        with torch.no_grad():
            a = model(vis, ir, vp, ip)[0]
            b = model(vis, ir, torch.zeros_like(vp), ip)[0]
        assert (a - b).abs().max() > 1e-5, ablation


def test_spa_block_accepts_patch_streams_one_pixel_short():
    """When H/2 is odd the official x2 upsample leaves the patch streams a pixel short."""
    spa = trained_like(SPABlock(64))
    img, mv, mi = torch.randn(1, 64, 31, 30), torch.randn(1, 64, 30, 30), torch.randn(1, 64, 30, 30)
    out, mv2, mi2 = spa(img, mv, mi)
    assert out.shape == (1, 256, 31, 30) and mv2.shape == mi2.shape == (1, 64, 30, 30)
    with pytest.raises(ValueError, match='pooled sizes'):
        spa(img, torch.randn(1, 64, 20, 30), mi)


# ---------------------------------------------------------------------------------------------
# building, loading, device handling, tiling

TEACHER_YAML = """
network_t:
  type: SAGETeacher
  mask_num: 4
  patch_mode: masked_intensity   # or binary
  spa_ablation: ~                # ~ | no_latent | no_kv | no_repository
  pad_to_valid: false
  attention: sdpa
  tile_size: ~
  tile_overlap: 32
"""


def test_builds_from_yaml_through_the_registry():
    assert ARCH_REGISTRY.get('SAGETeacher') is SAGETeacher
    opt = yaml.safe_load(TEACHER_YAML)['network_t']
    net = build_network(dict(opt))
    assert isinstance(net, SAGETeacher)
    assert sum(p.numel() for p in net.parameters()) == 2_639_505
    opt.update(spa_ablation='no_repository', patch_mode='binary')
    net = build_network(opt)
    assert net.spa.out_channels == 192 and net.patch_mode == 'binary'


def test_official_state_dict_converts_and_loads_strictly():
    ours = trained_like(build(seed=9))
    # an official-layout state dict: SPA modules at top level, plus the unused conv
    official = {k[len('spa.'):] if k.startswith('spa.') else k: v.clone() for k, v in ours.state_dict().items()}
    official['compress_and_upsample.0.weight'] = torch.zeros(64, 256, 3, 3)
    official['compress_and_upsample.0.bias'] = torch.zeros(64)
    assert len(official) == 190
    fresh = build(seed=10)
    fresh.load_state_dict(convert_official_teacher_state_dict({f'module.{k}': v for k, v in official.items()}))
    inputs = make_inputs(1, 16, 16)
    with torch.no_grad():
        assert torch.equal(fresh(*inputs)[0], ours(*inputs)[0])


def test_sources_have_no_hard_coded_cuda():
    for rel in ('fusion/archs/sage_teacher_arch.py', 'fusion/archs/spa_modules.py',
                'scripts/benchmarks/benchmark_teacher.py'):
        with open(osp.join(ROOT, rel)) as f:
            assert '.cuda(' not in f.read(), rel


def test_follows_model_dtype():
    model = build().double()
    fused, feats = model(*[t.double() for t in make_inputs(1, 16, 16)])
    assert fused.dtype == torch.float64 and feats[0].dtype == torch.float64


def test_tiled_inference_calls_tiled_forward(monkeypatch):
    """Wiring of tile_size/tile_overlap into fusion.utils.tiling.tiled_forward (stand-in module,
    so this test does not depend on the tiling implementation)."""
    calls = []

    def fake_tiled_forward(fn, inputs, tile_size, overlap, multiple=1):
        calls.append((tile_size, overlap, multiple, [tuple(t.shape) for t in inputs]))
        # run two odd-sized tiles to check the tile function pads/crops on its own
        left = fn(*[t[..., :17, :21] for t in inputs])
        assert left.shape[-2:] == (17, 21)
        return torch.zeros(inputs[0].shape[0], 1, *inputs[0].shape[-2:])

    monkeypatch.setitem(sys.modules, 'fusion.utils.tiling',
                        types.SimpleNamespace(tiled_forward=fake_tiled_forward))
    model = build(tile_size=32, tile_overlap=8)
    inputs = make_inputs(1, 40, 48)
    with torch.no_grad():
        fused, feats = model(*inputs)
        assert fused.shape == (1, 1, 40, 48) and feats is None
        assert calls == [((32, 32), 8, 16, [(1, 1, 40, 48)] * 2 + [(1, 4, 40, 48)] * 2)]
        # inputs that fit in one tile take the normal path, with features
        fused, feats = model(*make_inputs(1, 32, 32))
        assert len(feats) == 5 and len(calls) == 1


def test_tiled_inference_with_the_real_tiling_helper():
    model = trained_like(build(seed=11, tile_size=32, tile_overlap=12))
    tile_shapes = []
    inner = model._forward_any_size

    def recording(*tile, allow_pad):
        tile_shapes.append(tuple(tile[0].shape[-2:]))
        return inner(*tile, allow_pad=allow_pad)

    model._forward_any_size = recording
    inputs = make_inputs(1, 48, 66)
    with torch.no_grad():
        fused, feats = model(*inputs)
        full = build(seed=11)
        full.load_state_dict(model.state_dict())
        untiled = full(*inputs)[0]
    assert fused.shape == (1, 1, 48, 66) and feats is None and torch.isfinite(fused).all()
    assert len(tile_shapes) > 1 and all(h <= 47 and w <= 47 for h, w in tile_shapes)
    # attention sees one tile only, so tiles approximate the full pass; they must stay close
    assert (fused - untiled).abs().mean() < 0.1 * untiled.abs().mean() + 1e-3
