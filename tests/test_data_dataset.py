"""SAGEFusionDataset on real sample pairs: sample layout, identical augmentation of every tensor,
seeded reproducibility without global RNG use, padding of missing masks, labels, validation
sizes, LMDB backend, and clear errors for bad data or a cache that does not belong."""
import logging
import os.path as osp
import random
import shutil

import cv2
import numpy as np
import pytest
import torch
from basicsr.data import build_dataset
from conftest import ROOT, torch_threads
from torch.utils.data import DataLoader

import fusion  # noqa: F401
from fusion.data.lmdb_images import create_image_lmdbs
from fusion.data.mask_cache import MaskCache, MaskCacheError
from fusion.data.mask_generation import generate_mask_cache
from fusion.utils.img_util import ImageReadError, read_image, read_ir, read_vis_ycrcb


MFNET = osp.join(ROOT, 'tests', 'data', 'data_pipeline', 'mfnet')
TNO = osp.join(ROOT, 'tests', 'data', 'data_pipeline', 'tno')
IR, VIS, LABEL = (osp.join(MFNET, d) for d in ('ir', 'vi', 'label'))
TINY_SAM = dict(type='sam', model_type='tiny', points_per_side=4, crop_n_layers=0, pred_iou_thresh=1.0,
                stability_score_thresh=0.0, min_mask_region_area=0)


def make(**kw):
    opt = dict(name='test', type='SAGEFusionDataset', phase='train', dataroot_ir=IR, dataroot_vis=VIS,
               dataroot_label=LABEL, num_classes=9, patch_source={'type': 'label'}, gt_size=[32, 48], seed=7)
    opt.update(kw)
    return build_dataset(opt)


@pytest.fixture(scope='module')
def label_cache(tmp_path_factory):
    path = str(tmp_path_factory.mktemp('caches') / 'label.lmdb')
    generate_mask_cache(IR, VIS, path, {'type': 'label'}, label_dir=LABEL, max_masks=6, progress=False)
    return path


@pytest.fixture(scope='module')
def sam_cache(tmp_path_factory):
    path = str(tmp_path_factory.mktemp('caches') / 'sam.lmdb')
    with torch_threads(1):
        generate_mask_cache(IR, VIS, path, TINY_SAM, max_masks=4, progress=False)
    return path


def _find_crop(full, crop):
    """(top, left, flipped) where ``crop`` (h x w) sits in ``full``, or None."""
    h, w = crop.shape
    for flipped in (False, True):
        c = crop[:, ::-1] if flipped else crop
        for top in range(full.shape[0] - h + 1):
            for left in range(full.shape[1] - w + 1):
                if np.array_equal(full[top:top + h, left:left + w], c):
                    return top, left, flipped
    return None


def test_sample_layout(label_cache):
    ds = make(mask_cache=label_cache)
    assert len(ds) == 3
    s = ds[0]
    assert s['name'] == '00101D' and s['ir_path'] == osp.join(IR, '00101D.png') and s['vis_path'].endswith('00101D.png')
    for key in ('ir', 'vis_y', 'vis_cr', 'vis_cb'):
        assert s[key].shape == (1, 32, 48) and s[key].dtype == torch.float32
        assert 0 <= s[key].min() and s[key].max() <= 1
    assert s['label'].shape == (32, 48) and s['label'].dtype == torch.int64
    assert s['ir_patches'].shape == s['vis_patches'].shape == (4, 32, 48)
    batch = next(iter(DataLoader(ds, batch_size=2)))
    assert batch['ir_patches'].shape == (2, 4, 32, 48) and batch['label'].shape == (2, 32, 48)


def test_crop_and_flip_are_identical_for_every_tensor(label_cache):
    """The label source's regions are label components: after crop/flip every binary patch must
    still cover a single class, and the IR/visible/label crops must sit at the same place."""
    binary = make(mask_cache=label_cache, patch_mode='binary', gt_size=[40, 56])
    masked = make(mask_cache=label_cache, patch_mode='masked_intensity', gt_size=[40, 56])
    flips = set()
    for i in range(6):
        b, m = binary[i % 3], masked[i % 3]
        ir_full = read_ir(b['ir_path'])
        y_full = read_vis_ycrcb(b['vis_path'])[0][..., 0]
        label_full = read_image(osp.join(LABEL, b['name'] + '.png')).astype(np.int64)
        top, left, flipped = _find_crop(ir_full, b['ir'][0].numpy())
        flips.add(flipped)
        sl = (slice(top, top + 40), slice(left, left + 56))
        flip = (lambda a: a[:, ::-1]) if flipped else (lambda a: a)
        np.testing.assert_array_equal(b['vis_y'][0].numpy(), flip(y_full[sl]))
        np.testing.assert_array_equal(b['label'].numpy(), flip(label_full[sl]))
        for k in range(4):
            region = b['ir_patches'][k].numpy() > 0
            if region.any() and not region.all():
                assert len(np.unique(b['label'].numpy()[region])) == 1
            # the same draw in both datasets: masked intensity = image x binary mask
            np.testing.assert_array_equal(m['ir_patches'][k].numpy(), b['ir'][0].numpy() * b['ir_patches'][k].numpy())
            np.testing.assert_array_equal(m['vis_patches'][k].numpy(),
                                          b['vis_y'][0].numpy() * b['vis_patches'][k].numpy())
    assert flips == {False, True}


def test_seeded_and_reproducible_without_touching_global_rngs(label_cache):
    np_state, py_state, torch_state = np.random.get_state(), random.getstate(), torch.get_rng_state()
    a = [make(mask_cache=label_cache)[i]['ir'] for i in range(3)]
    b = [make(mask_cache=label_cache)[i]['ir'] for i in range(3)]
    c = [make(mask_cache=label_cache, seed=8)[i]['ir'] for i in range(3)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))
    assert np.array_equal(np.random.get_state()[1], np_state[1]) and random.getstate() == py_state
    assert torch.equal(torch.get_rng_state(), torch_state)


def test_epochs_differ_and_replay_after_set_epoch(label_cache):
    ds = make(mask_cache=label_cache)

    def epoch():
        return [ds[i]['ir'] for i in range(3)] + [ds[i]['ir'] for i in range(3)]

    ds.set_epoch(3)
    first = epoch()
    ds.set_epoch(3)  # e.g. resuming at epoch 3
    assert all(torch.equal(x, y) for x, y in zip(first, epoch()))
    ds.set_epoch(4)
    assert not all(torch.equal(x, y) for x, y in zip(first, epoch()))
    # repeated draws of one index inside an epoch (dataset_enlarge_ratio) differ too
    assert not all(torch.equal(x, y) for x, y in zip(first[:3], first[3:]))


def test_set_sample_seed_fixes_the_next_sample(label_cache):
    a, b = make(mask_cache=label_cache), make(mask_cache=label_cache)
    b[1], b[2]  # other draws before do not matter
    a.set_sample_seed(11)
    b.set_sample_seed(11)
    assert torch.equal(a[1]['ir'], b[1]['ir'])
    outs = []
    for seed in range(6):
        a.set_sample_seed(seed)
        outs.append(a[1]['ir'])
    assert any(not torch.equal(outs[0], o) for o in outs[1:])


def test_dataloader_workers_are_reproducible(label_cache):
    def run():
        ds = make(mask_cache=label_cache)
        ds[0]  # the parent opens the cache before the workers fork: they must still read it
        loader = DataLoader(ds, batch_size=1, num_workers=2, shuffle=False)
        return [b['ir'] for _ in range(2) for b in loader]

    one, two = run(), run()
    assert all(torch.equal(x, y) for x, y in zip(one, two))


def test_sam_cache_serves_training_batches_and_pads(sam_cache, caplog):
    """End to end: tiny random SAM -> cache -> batches. Random weights give few masks: padded."""
    ds = make(mask_cache=sam_cache, patch_source={'type': 'sam', 'points_per_side': 4}, mask_num=4)
    with caplog.at_level(logging.WARNING, logger='basicsr'):
        batch = next(iter(DataLoader(ds, batch_size=3)))
    assert batch['ir_patches'].shape == (3, 4, 32, 48)
    assert caplog.text.count('usable mask') == 1  # warned once
    cache = MaskCache(sam_cache)
    for i, name in enumerate(batch['name']):
        entry = cache.get(name)
        n = min(len(entry.ir), len(entry.vis))
        assert n < 4
        for k in range(n, 4):  # official padding: the unmasked image
            assert torch.equal(batch['ir_patches'][i, k], batch['ir'][i, 0])
            assert torch.equal(batch['vis_patches'][i, k], batch['vis_y'][i, 0])
    cache.close()
    zeros = make(mask_cache=sam_cache, patch_source={'type': 'sam'}, missing_masks='pad_with_zeros')[0]
    assert zeros['ir_patches'][3].abs().sum() == 0
    with pytest.raises(MaskCacheError, match='00101D: only .* mask_num 4'):
        make(mask_cache=sam_cache, patch_source={'type': 'sam'}, missing_masks='error')[0]


def test_pair_masks_follows_the_official_pairing(label_cache, tmp_path):
    # a cache whose visible side has fewer masks than the IR side
    from fusion.data.mask_cache import MaskCacheWriter, encode_entry
    src = MaskCache(label_cache)
    with MaskCacheWriter(str(tmp_path / 'c.lmdb'), src.meta) as w:
        for name in src.names():
            raw = src.raw(name)
            e = src.get(name)
            w.put_encoded({name: encode_entry(e.ir, e.vis[:1], e.fingerprint) if name == '00101D' else raw})
    src.close()
    paired = make(mask_cache=str(tmp_path / 'c.lmdb'), phase='val')[0]
    free = make(mask_cache=str(tmp_path / 'c.lmdb'), phase='val', pair_masks=False)[0]
    assert torch.equal(paired['ir_patches'][1], paired['ir'][0])  # padded to match the single visible mask
    assert not torch.equal(free['ir_patches'][1], free['ir'][0])
    assert torch.equal(free['vis_patches'][1], free['vis_y'][0])


def test_on_the_fly_sources_match_their_caches(label_cache):
    cached = make(mask_cache=label_cache, phase='val')
    fly = make(phase='val')
    for i in range(3):
        assert torch.equal(cached[i]['ir_patches'], fly[i]['ir_patches'])
    again = fly[0]  # second time from the per-process memo
    assert torch.equal(again['vis_patches'], cached[0]['vis_patches'])
    for src in ({'type': 'random_crop', 'num_masks': 3}, {'type': 'superpixel', 'scale': 100, 'min_size': 20}):
        s = make(patch_source=src)[1]
        assert s['ir_patches'].shape == (4, 32, 48)
    with pytest.raises(MaskCacheError, match='generate_masks.py'):
        make(patch_source={'type': 'sam'})


def test_labels_ignore_index_map_and_range():
    s = make(phase='val', label_map={0: 255})[0]
    raw = read_image(osp.join(LABEL, '00101D.png'))
    np.testing.assert_array_equal(s['label'].numpy(), np.where(raw == 0, 255, raw))
    none = make(phase='val', dataroot_label=None, ignore_index=-1, patch_source={'type': 'random_crop'})[0]
    assert (none['label'] == -1).all()
    with pytest.raises(ImageReadError, match=r'label/00101D.png: label values \[5, 7\] are outside the class range'):
        make(phase='val', num_classes=5)[0]
    with pytest.raises(ValueError, match='num_classes'):
        make(num_classes=None)


def test_small_images_are_resized_to_the_crop():
    s = make(gt_size=[96, 112], patch_source={'type': 'random_crop'})[0]
    assert s['ir'].shape == (1, 96, 112) and s['ir_patches'].shape == (4, 96, 112)
    assert set(s['label'].unique().tolist()) <= {0, 2, 5, 7}  # nearest: still class ids


def test_validation_keeps_full_images_cropped_to_a_multiple():
    tno = dict(dataroot_ir=osp.join(TNO, 'ir'), dataroot_vis=osp.join(TNO, 'vi'), dataroot_label=None,
               phase='val', patch_source={'type': 'random_crop'})
    s = make(**tno)[0]  # 77 x 59 -> largest even size
    assert s['ir'].shape == (1, 58, 76)
    np.testing.assert_array_equal(s['ir'][0].numpy(), read_ir(osp.join(TNO, 'ir', '001.png'))[:58, :76])
    assert (s['label'] == 255).all() and s['vis_is_gray'] is True
    assert make(**tno, crop_to_multiple=16)[0]['vis_y'].shape == (1, 48, 64)
    assert make(**tno, crop_to_multiple=1)[0]['vis_y'].shape == (1, 59, 77)
    with pytest.raises(ImageReadError, match='001.png: 77x59 is too small'):
        make(**tno, min_size=64)[0]


def test_lmdb_backend_gives_the_same_samples(tmp_path, label_cache):
    out = str(tmp_path / 'lmdb')
    create_image_lmdbs(IR, VIS, out, label_dir=LABEL, progress=False)
    disk = make(mask_cache=label_cache)
    lmdb = make(mask_cache=label_cache, io_backend={'type': 'lmdb'}, dataroot_ir=osp.join(out, 'ir.lmdb'),
                dataroot_vis=osp.join(out, 'vis.lmdb'), dataroot_label=osp.join(out, 'label.lmdb'))
    for i in range(3):
        a, b = disk[i], lmdb[i]
        for key in ('ir', 'vis_y', 'vis_cr', 'vis_cb', 'label', 'ir_patches', 'vis_patches'):
            assert torch.equal(a[key], b[key]), key
    assert lmdb[0]['ir_path'] == osp.join(out, 'ir.lmdb') + ':00101D'


def test_bad_data_errors_name_the_file(tmp_path, label_cache):
    ir2, vis2, lab2 = tmp_path / 'ir', tmp_path / 'vi', tmp_path / 'label'
    for src, dst in ((IR, ir2), (VIS, vis2), (LABEL, lab2)):
        shutil.copytree(src, dst)
    dirs = dict(dataroot_ir=str(ir2), dataroot_vis=str(vis2), dataroot_label=str(lab2))
    (lab2 / '00112D.png').unlink()
    with pytest.raises(ImageReadError, match='00112D.png has no label partner'):
        make(**dirs)
    shutil.copy(osp.join(LABEL, '00112D.png'), lab2)
    cv2.imwrite(str(lab2 / '00112D.png'), cv2.resize(read_image(osp.join(LABEL, '00112D.png')), (40, 32)))
    with pytest.raises(ImageReadError, match='label .*00112D.png is 40x32'):
        make(**dirs)[1]
    cv2.imwrite(str(ir2 / '00701N.png'), cv2.resize(read_image(osp.join(IR, '00701N.png')), (40, 32)))
    with pytest.raises(ImageReadError, match='size mismatch: IR .*00701N.png'):
        make(**dirs)[2]
    (vis2 / '00101D.png').write_bytes(b'garbage')
    with pytest.raises(ImageReadError, match='vi/00101D.png: cannot decode'):
        make(**dirs)[0]


def test_cache_that_does_not_belong_is_refused(tmp_path, label_cache, sam_cache, caplog):
    # made for other images (names missing)
    with pytest.raises(MaskCacheError, match='no masks for 1 of 1 images'):
        make(mask_cache=label_cache, dataroot_ir=osp.join(TNO, 'ir'), dataroot_vis=osp.join(TNO, 'vi'),
             dataroot_label=None)
    # same names, other pixels
    ir2, vis2 = tmp_path / 'ir', tmp_path / 'vi'
    shutil.copytree(IR, ir2)
    shutil.copytree(VIS, vis2)
    for d, src in ((ir2, IR), (vis2, VIS)):
        shutil.copy(osp.join(src, '00701N.png'), d / '00112D.png')
    with pytest.raises(MaskCacheError, match='"00112D" were made from other images'):
        make(mask_cache=label_cache, dataroot_ir=str(ir2), dataroot_vis=str(vis2))[1]
    assert make(mask_cache=label_cache, dataroot_ir=str(ir2), dataroot_vis=str(vis2), verify_mask_cache=False)[1]
    # other source or settings than the options ask for
    with pytest.raises(MaskCacheError, match="holds label masks but patch_source.type is 'random_crop'"):
        make(mask_cache=label_cache, patch_source={'type': 'random_crop'})
    with pytest.raises(MaskCacheError, match='connected: cache has True, options say False'):
        make(mask_cache=label_cache, patch_source={'type': 'label', 'connected': False})
    with pytest.raises(MaskCacheError, match='points_per_side: cache has 4, options say 128'):
        make(mask_cache=sam_cache, patch_source={'type': 'sam', 'points_per_side': 128})
    # no patch_source: the cache's own kind is used
    assert make(mask_cache=label_cache, patch_source=None).cache.source_type == 'label'
    # a superpixel fallback cache used where SAM is asked for: allowed, never silent
    fb = str(tmp_path / 'fb.lmdb')
    generate_mask_cache(IR, VIS, fb, {'type': 'sam'}, fallback_opt={'scale': 100, 'min_size': 20}, progress=False)
    with caplog.at_level(logging.WARNING, logger='basicsr'):
        make(mask_cache=fb, patch_source={'type': 'sam'})
    assert 'FALLBACK for sam' in caplog.text
