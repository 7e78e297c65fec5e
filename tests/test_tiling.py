"""Tiled inference (fusion/utils/tiling.py) equals untiled inference where the overlap allows."""
import os.path as osp

import numpy as np
import pytest
import torch
from conftest import DATASETS

from fusion.inferencer import DEFAULT_TILE_OVERLAP, FusionInferencer
from fusion.utils.img_util import read_ir, read_vis_ycrcb
from fusion.utils.tiling import blend_tiles, blend_weights, tile_spans, tiled_forward


M3FD = osp.join(DATASETS, 'M3FD')


@pytest.fixture(scope='module')
def pair():
    """A real M3FD pair, 1 x 1 x 768 x 1024 each (crops are taken per test)."""
    vis = read_vis_ycrcb(osp.join(M3FD, 'vi', '00001.png'))[0][..., 0]
    ir = read_ir(osp.join(M3FD, 'ir', '00001.png'))
    return (torch.from_numpy(np.ascontiguousarray(vis))[None, None], torch.from_numpy(ir)[None, None])


@pytest.mark.parametrize('length,tile,overlap,multiple', [
    (100, 100, 10, 1), (101, 40, 10, 1), (1024, 256, 96, 4), (767, 256, 96, 4), (203, 160, 96, 4),
    (50, 17, 0, 1), (130, 64, 60, 2)])
def test_tile_spans_cover_align_and_overlap(length, tile, overlap, multiple):
    spans = tile_spans(length, tile, overlap, multiple)
    assert spans[0][0] == 0 and spans[-1][1] == length
    for (s0, e0), (s1, e1) in zip(spans, spans[1:]):
        assert s1 > s0 and e0 - s1 >= overlap  # every cut is covered by at least `overlap` pixels
    for start, end in spans:
        assert start % multiple == 0
        if end != length:
            assert end - start == tile
        else:  # the last tile ends at the edge, at most multiple - 1 pixels larger
            assert end - start <= max(tile, length) and end - start < tile + multiple or length <= tile


def test_tile_spans_reject_an_overlap_that_leaves_no_step():
    with pytest.raises(ValueError, match='overlap 96'):
        tile_spans(500, 98, 96, 4)


def test_blend_weights_discard_a_third_and_cross_fade():
    overlap = 30
    left, right = blend_weights(0, 100, 170, overlap), blend_weights(70, 170, 170, overlap)
    assert torch.all(left[:70] == 1) and torch.all(right[-70:] == 1)  # image edges are not cut
    assert torch.all(left[-10:] == 0) and torch.all(right[:10] == 0)  # overlap // 3 discarded per side
    assert torch.allclose(left[70:] + right[:30], torch.ones(30, dtype=torch.float64))


def test_tiled_forward_of_a_pointwise_function_is_exact():
    # a pixel-wise fn has no receptive field: any tiling must give back exactly its output
    a, b = torch.rand(2, 3, 97, 131), torch.rand(2, 1, 97, 131)

    def fn(x, y):
        return (x * 2 + y, 'extra')  # tuples: the first element is the output

    for tile, overlap, multiple in [(32, 9, 1), ((40, 64), 30, 4), (50, 0, 2)]:
        got = tiled_forward(fn, [a, b], tile, overlap, multiple)
        assert (got - (a * 2 + b)).abs().max().item() < 1e-6


def test_tiled_forward_calls_whole_image_when_it_fits():
    calls = []

    def fn(x):
        calls.append(tuple(x.shape))
        return x

    x = torch.rand(1, 1, 40, 50)
    assert torch.equal(tiled_forward(fn, [x], (40, 52), 12, 4), x)
    assert calls == [(1, 1, 40, 50)]


def test_tiled_forward_tiles_respect_the_multiple():
    sizes = []

    def fn(x):
        sizes.append(x.shape[-2:])
        return x[:, :1]

    tiled_forward(fn, [torch.rand(1, 2, 130, 90)], 50, 18, multiple=4)
    assert len(sizes) > 1 and all(h % 4 == 0 or h >= 50 for h, _ in sizes)


def test_tiled_forward_errors():
    x = torch.rand(1, 1, 64, 64)
    with pytest.raises(ValueError, match='share H x W'):
        tiled_forward(lambda a, b: a, [x, torch.rand(1, 1, 64, 63)], 32, 8)
    with pytest.raises(ValueError, match='B x C x H x W'):
        tiled_forward(lambda a: a, [x[0]], 32, 8)
    with pytest.raises(ValueError, match="32 x 32 tensor"):
        tiled_forward(lambda a: a[..., :-1], [x], 32, 8)
    with pytest.raises(ValueError, match='overlap'):
        tiled_forward(lambda a: a, [x], 32, -1)
    with pytest.raises(ValueError, match='tile_size'):
        tiled_forward(lambda a: a, [x], 2, 0, multiple=4)


def test_student_tiled_equals_untiled_on_a_real_image(student, pair):
    """The student through tiled_forward on a real crop whose H and W are multiples of 4."""
    vis, ir = (t[..., 200:392, 300:556] for t in pair)  # 192 x 256
    fast = student.fuse_for_inference()

    def network(v, i):
        return fast(v, i), None  # a tuple, like SAGEStudent's (fused, features)

    with torch.inference_mode():
        full = student(vis, ir)[0]
        tiled = tiled_forward(network, [vis, ir], (128, 160), DEFAULT_TILE_OVERLAP, multiple=4)
        # the overlap matters: a thin one leaves pixels influenced by the tiles' zero padding
        thin = tiled_forward(network, [vis, ir], (128, 160), 12, multiple=4)
    assert (tiled - full).abs().max().item() < 1e-4
    assert (thin - full).abs().max().item() > 1e-4


def test_inferencer_tiles_exactly_at_any_size(student, pair):
    """The fast path passes each tile's position, so sizes that are not multiples of 4 (where the
    student's upsampling positions depend on the whole image's size) are reproduced too."""
    vis, ir = (t[..., 101:304, 57:358] for t in pair)  # 203 x 301
    untiled = FusionInferencer(student).fuse(vis, ir)
    tiled_inferencer = FusionInferencer(student, tile_size=(160, 192), tile_overlap=DEFAULT_TILE_OVERLAP)
    calls = []
    forward = tiled_inferencer.net.forward

    def counting_forward(*args, **kwargs):
        calls.append(kwargs.get('window'))
        return forward(*args, **kwargs)

    tiled_inferencer.net.forward = counting_forward
    tiled = tiled_inferencer.fuse(vis, ir)
    assert len(calls) > 1 and all(w is not None for w in calls)
    assert (tiled - untiled).abs().max().item() < 1e-4
    # a tile-agnostic network cannot match there: why the window is passed
    with torch.inference_mode():
        agnostic = tiled_forward(student.fuse_for_inference(), [vis, ir], (160, 192), DEFAULT_TILE_OVERLAP, multiple=4)
    assert (agnostic - untiled).abs().max().item() > 1e-4


def test_blend_tiles_passes_windows():
    seen = []

    def run_tile(top, bottom, left, right):
        seen.append((top, bottom, left, right))
        return torch.full((1, 1, bottom - top, right - left), float(top + left))

    out = blend_tiles(run_tile, 70, 90, 40, 12, multiple=2)
    assert seen[0] == (0, 40, 0, 40) and seen[-1][1] == 70 and seen[-1][3] == 90
    assert out.shape == (1, 1, 70, 90) and out[0, 0, 0, 0] == 0
