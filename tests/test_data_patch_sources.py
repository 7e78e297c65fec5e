"""Patch sources (sam with a tiny random SAM, label, random_crop, superpixel), the registry and the
documented superpixel fallback, on real sample pairs."""
import logging
import os.path as osp

import cv2
import numpy as np
import pytest
import torch
from conftest import ROOT

import fusion  # noqa: F401
from fusion.data.mask_generation import _load_pair
from fusion.data.patch_sources import (PATCH_SOURCE_REGISTRY, SAM_OFFICIAL_SETTINGS, MaskInput, SAMPatchSource,
                                       SuperpixelPatchSource, build_patch_source, select_largest)
from fusion.utils.img_util import list_pairs, read_image
from fusion.utils.sam_util import SAMCheckpointError, build_tiny_sam, file_sha256


MFNET = osp.join(ROOT, 'tests', 'data', 'data_pipeline', 'mfnet')
# tiny SAM settings for CPU tests: few points, low thresholds so that random weights give masks
# (iou 1.0 keeps one of the three outputs per point: the noisy masks are slow to RLE-encode)
TINY_SAM = dict(type='sam', model_type='tiny', points_per_side=4, crop_n_layers=0, pred_iou_thresh=1.0,
                stability_score_thresh=0.0, min_mask_region_area=0)


pytestmark = pytest.mark.usefixtures('one_torch_thread')


@pytest.fixture(scope='module')
def pairs():
    return list_pairs(osp.join(MFNET, 'ir'), osp.join(MFNET, 'vi'), extra_dirs=[('label', osp.join(MFNET, 'label'))])


def _input(pair, source):
    return _load_pair(pair, source)[0]


def test_registry_and_options():
    assert {'sam', 'label', 'random_crop', 'superpixel'} <= set(PATCH_SOURCE_REGISTRY.keys())
    with pytest.raises(ValueError, match="unknown patch source type 'nope'.*superpixel"):
        build_patch_source({'type': 'nope'})
    with pytest.raises(ValueError, match='random_crop.*num_mask'):
        build_patch_source({'type': 'random_crop', 'num_mask': 3})
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['points_per_sid'\]"):
        build_patch_source({**TINY_SAM, 'points_per_sid': 3})


def test_select_largest_sorts_and_drops_empty():
    h, w = 6, 7
    masks = [np.zeros((h, w), bool) for _ in range(4)]
    masks[0][:1] = True  # area 7
    masks[2][:3] = True  # area 21
    masks[3][:2] = True  # area 14; masks[1] stays empty
    sel = select_largest(masks, 5, (h, w))
    assert sel.shape == (3, h, w) and sel.dtype == bool
    assert [int(m.sum()) for m in sel] == [21, 14, 7]
    assert select_largest(masks, 2, (h, w)).shape[0] == 2
    assert select_largest([], 3, (h, w)).shape == (0, h, w)


def test_label_source_gives_label_regions(pairs):
    # ignore_ids [255]: class 0 forms regions too, so the regions tile the label
    source = build_patch_source({'type': 'label', 'ignore_ids': [255]})
    inp = _input(pairs[0], source)
    ir_masks, vis_masks = source.generate(inp)
    label = inp.label
    assert (label == 0).any() and len(ir_masks) == len(vis_masks) > 0
    for a, b in zip(ir_masks, vis_masks):
        np.testing.assert_array_equal(a, b)
        assert len(np.unique(label[a])) == 1  # one class per region
    # connected components of every class tile the label exactly
    cover = np.sum(ir_masks, axis=0)
    assert (cover == 1).all()
    n_components = sum(cv2.connectedComponents((label == v).astype(np.uint8), connectivity=8)[0] - 1
                       for v in np.unique(label))
    assert len(ir_masks) == n_components
    # per class, without splitting; ignored ids form no region
    per_class = build_patch_source({'type': 'label', 'connected': False, 'ignore_ids': [0]}).generate(inp)[0]
    assert len(per_class) == len(np.unique(label)) - 1
    with pytest.raises(ValueError, match='needs labels'):
        source.generate(MaskInput('x', (4, 4)))


def test_label_source_leaves_out_the_unlabelled_class_by_default(pairs):
    source = build_patch_source({'type': 'label'})
    inp = _input(pairs[0], source)
    masks = source.generate(inp)[0]
    label = inp.label
    assert (label == 0).any() and masks
    assert not any((label[m] == 0).any() for m in masks)  # no region of class 0 (the background)
    assert (np.sum(masks, axis=0) == (label != 0) & (label != 255)).all()  # every other pixel in one region


def test_random_crop_source_is_deterministic_rectangles():
    source = build_patch_source({'type': 'random_crop', 'num_masks': 5, 'seed': 3})
    a_ir, a_vis = source.generate(MaskInput('00101D', (64, 80)))
    b_ir, _ = source.generate(MaskInput('00101D', (64, 80)))
    c_ir, _ = source.generate(MaskInput('00112D', (64, 80)))
    other_seed = build_patch_source({'type': 'random_crop', 'num_masks': 5, 'seed': 4})
    d_ir, _ = other_seed.generate(MaskInput('00101D', (64, 80)))
    assert len(a_ir) == 5
    for m, n, v in zip(a_ir, b_ir, a_vis):
        np.testing.assert_array_equal(m, n)
        np.testing.assert_array_equal(m, v)
        ys, xs = np.nonzero(m)
        assert m.sum() == (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)  # a filled rectangle
    assert any(not np.array_equal(m, n) for m, n in zip(a_ir, c_ir))
    assert any(not np.array_equal(m, n) for m, n in zip(a_ir, d_ir))


@pytest.mark.parametrize('opt', [{'min_size': 20, 'scale': 100}, {'method': 'slic', 'n_segments': 12}])
def test_superpixel_source_partitions_each_modality(pairs, opt):
    source = build_patch_source({'type': 'superpixel', **opt})
    inp = _input(pairs[0], source)
    ir_masks, vis_masks = source.generate(inp)
    for masks in (ir_masks, vis_masks):
        assert len(masks) > 3
        assert (np.sum(masks, axis=0) == 1).all()  # disjoint and covering
    assert len(ir_masks) != len(vis_masks) or any(not np.array_equal(a, b) for a, b in zip(ir_masks, vis_masks))


def test_sam_without_checkpoint_falls_back_loudly(caplog, tmp_path):
    with caplog.at_level(logging.WARNING, logger='basicsr'):
        source = build_patch_source({'type': 'sam'}, fallback_opt={'scale': 100})
    assert isinstance(source, SuperpixelPatchSource)
    assert source.fallback == {'requested': 'sam', 'used': 'superpixel', 'reason': 'no SAM checkpoint given'}
    assert source.describe()['scale'] == 100
    assert 'FALLING BACK' in caplog.text
    with pytest.raises(SAMCheckpointError, match='give a checkpoint'):
        build_patch_source({'type': 'sam'}, allow_fallback=False)
    # a given path that does not exist is an error, never a fallback
    missing = str(tmp_path / 'sam_vit_b.pth')
    for allow in (True, False):
        with pytest.raises(SAMCheckpointError, match='sam_vit_b.pth'):
            build_patch_source({'type': 'sam', 'checkpoint': missing}, allow_fallback=allow)


def test_sam_official_defaults_are_recorded():
    source = SAMPatchSource(model_type='tiny')
    gen = source.describe()['generator']
    for k, v in SAM_OFFICIAL_SETTINGS.items():
        assert gen[k] == v
    assert gen['points_per_batch'] == 64 and gen['box_nms_thresh'] == 0.7  # library defaults for the rest
    assert source.describe()['weights_sha256'] == 'random(seed=0)'


def test_sam_source_tiny_model_on_real_pair(pairs):
    source = build_patch_source(TINY_SAM)
    inp = _input(pairs[0], source)
    # SAM is fed RGB (the official code fed BGR)
    np.testing.assert_array_equal(inp.vis_rgb, read_image(pairs[0]['vis_path'])[..., ::-1])
    assert (inp.ir_rgb[..., 0] == inp.ir_rgb[..., 2]).all()
    ir_masks, vis_masks = source.generate(inp, max_masks=2)
    assert 1 <= len(ir_masks) <= 2 and 1 <= len(vis_masks) <= 2  # random weights: few masks
    for m in ir_masks + vis_masks:
        assert m.shape == (64, 80) and m.dtype == bool and m.any()


def test_sam_zero_masks_with_crop_layers_is_no_masks(pairs):
    """segment-anything 1.0 raises IndexError when nothing survives with crop_n_layers >= 1."""
    source = build_patch_source({'type': 'sam', 'model_type': 'tiny', 'points_per_side': 4, 'crop_n_layers': 1})
    inp = _input(pairs[2], source)  # official thresholds: random weights keep nothing
    assert source.generate(inp) == ([], [])


def test_sam_source_with_checkpoint_file(tmp_path, pairs):
    ckpt = str(tmp_path / 'tiny_sam.pth')
    sam = build_tiny_sam(img_size=256, seed=5)
    torch.save(sam.state_dict(), ckpt)
    source = build_patch_source({**TINY_SAM, 'checkpoint': ckpt, 'tiny_img_size': 256, 'device': 'cpu'})
    assert source.describe()['weights_sha256'] == file_sha256(ckpt)
    assert source.info()['checkpoint'] == osp.abspath(ckpt)
    ir_masks, _ = source.generate(_input(pairs[1], source), max_masks=1)
    assert len(ir_masks) == 1
    bad = str(tmp_path / 'bad.pth')
    torch.save({'image_encoder.nothing': torch.zeros(1)}, bad)
    with pytest.raises(SAMCheckpointError, match='bad.pth'):
        build_patch_source({**TINY_SAM, 'checkpoint': bad}).generate(_input(pairs[1], source))
