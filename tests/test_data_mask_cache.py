"""The mask cache (encoding, metadata, resumable generation, refusal of mismatched caches) and
scripts/generate_masks.py, on real sample pairs, with a tiny random SAM and the other sources."""
import json
import os.path as osp
import runpy
import shutil
import sys

import cv2
import numpy as np
import pytest
import torch
from conftest import ROOT

import fusion  # noqa: F401
from fusion.data import mask_generation
from fusion.data.lmdb_store import LmdbWriter
from fusion.data.mask_cache import (MaskCache, MaskCacheError, MaskCacheWriter, decode_entry, encode_entry,
                                    entry_summary, make_meta)
from fusion.data.mask_generation import generate_mask_cache
from fusion.utils.img_util import read_image


MFNET = osp.join(ROOT, 'tests', 'data', 'data_pipeline', 'mfnet')
IR, VIS, LABEL = (osp.join(MFNET, d) for d in ('ir', 'vi', 'label'))
NAMES = ['00101D', '00112D', '00701N']
TINY_SAM = dict(type='sam', model_type='tiny', points_per_side=4, crop_n_layers=0, pred_iou_thresh=1.0,
                stability_score_thresh=0.0, min_mask_region_area=0)
SUPERPIXEL = {'type': 'superpixel', 'scale': 100, 'min_size': 20}


pytestmark = pytest.mark.usefixtures('one_torch_thread')


def _random_masks(rng, n, h, w):
    return rng.random((n, h, w)) < rng.random((n, 1, 1))


def test_entry_roundtrip_partial_decode_and_damage():
    rng = np.random.default_rng(0)
    ir = _random_masks(rng, 5, 37, 53)  # H*W not a multiple of 8
    vis = _random_masks(rng, 2, 37, 53)
    blob = encode_entry(ir, vis, 'abc')
    full = decode_entry(blob)
    np.testing.assert_array_equal(full.ir, ir)
    np.testing.assert_array_equal(full.vis, vis)
    assert full.size == (37, 53) and full.fingerprint == 'abc' and (full.ir_total, full.vis_total) == (5, 2)
    part = decode_entry(blob, max_masks=3)
    assert part.ir.shape == (3, 37, 53) and part.vis.shape == (2, 37, 53)
    np.testing.assert_array_equal(part.ir, ir[:3])
    assert entry_summary(blob)['ir_areas'] == [int(m.sum()) for m in ir]
    empty = decode_entry(encode_entry(np.zeros((0, 8, 9), bool), np.zeros((0, 8, 9), bool), 'x'))
    assert empty.ir.shape == (0, 8, 9) and empty.size == (8, 9)
    damaged = bytearray(blob)
    damaged[len(blob) // 2] ^= 0xFF
    with pytest.raises(MaskCacheError, match='cache.lmdb:k.*damaged'):
        decode_entry(bytes(damaged), 'cache.lmdb:k')
    with pytest.raises(MaskCacheError, match='bad magic'):
        decode_entry(b'PNG....' + blob)
    with pytest.raises(ValueError, match='one size'):
        encode_entry(ir, _random_masks(rng, 1, 36, 53), 'x')


def test_bit_packing_is_compact_on_real_label_masks():
    label = read_image(osp.join(MFNET, 'label', '00112D.png'))
    masks = np.stack([label == v for v in np.unique(label)])
    blob = encode_entry(masks, masks, 'fp')
    assert len(blob) * 8 < masks.nbytes * 2  # less than 1 bit per mask pixel, headers included


def test_sam_end_to_end_cache_with_tiny_model(tmp_path):
    out = str(tmp_path / 'sam.lmdb')
    summary = generate_mask_cache(IR, VIS, out, TINY_SAM, max_masks=3, progress=False)
    assert summary['generated'] == 3 and summary['source'] == 'sam' and summary['fallback'] is None
    cache = MaskCache(out)
    assert sorted(cache.names()) == NAMES
    meta = cache.meta
    assert meta['source']['type'] == 'sam' and meta['max_masks'] == 3 and meta['fallback'] is None
    assert meta['source']['generator']['points_per_side'] == 4
    assert meta['info']['input'] == 'RGB'
    assert meta['info']['device'] == ('cuda' if torch.cuda.is_available() else 'cpu')  # device: auto
    for name in NAMES:
        entry = cache.get(name)
        assert entry.size == (64, 80)
        assert 1 <= len(entry.ir) <= 3  # random weights: few masks, handled
        areas = [int(m.sum()) for m in entry.ir]
        assert areas == sorted(areas, reverse=True) and min(areas) > 0


def test_sam_crop_layers_zero_masks_are_cached_as_empty(tmp_path):
    out = str(tmp_path / 'sam0.lmdb')
    opt = {'type': 'sam', 'model_type': 'tiny', 'points_per_side': 4, 'crop_n_layers': 1}
    summary = generate_mask_cache(IR, VIS, out, opt, names=['00701N'], progress=False)
    assert summary['without_masks'] == 1
    entry = MaskCache(out).get('00701N')
    assert entry.ir.shape == (0, 64, 80) and entry.vis.shape == (0, 64, 80)


def test_fallback_is_recorded_in_metadata(tmp_path):
    out = str(tmp_path / 'fb.lmdb')
    summary = generate_mask_cache(IR, VIS, out, {'type': 'sam'}, fallback_opt={'scale': 100, 'min_size': 20},
                                  progress=False)
    assert summary['source'] == 'superpixel' and summary['fallback']['requested'] == 'sam'
    meta = MaskCache(out).meta
    assert meta['source']['type'] == 'superpixel'
    assert meta['fallback'] == {'requested': 'sam', 'used': 'superpixel', 'reason': 'no SAM checkpoint given'}
    with pytest.raises(Exception, match='checkpoint'):
        generate_mask_cache(IR, VIS, str(tmp_path / 'strict.lmdb'), {'type': 'sam'}, allow_fallback=False,
                            progress=False)


def test_resume_skips_done_and_keeps_entries(tmp_path):
    out = str(tmp_path / 'r.lmdb')
    first = generate_mask_cache(IR, VIS, out, SUPERPIXEL, names=['00112D'], progress=False)
    assert first['generated'] == 1
    before = MaskCache(out).raw('00112D')
    second = generate_mask_cache(IR, VIS, out, SUPERPIXEL, progress=False)
    assert (second['generated'], second['skipped']) == (2, 1)
    assert MaskCache(out).raw('00112D') == before
    assert sorted(MaskCache(out).names()) == NAMES


def test_interrupted_run_leaves_only_complete_entries(tmp_path, monkeypatch):
    out = str(tmp_path / 'i.lmdb')
    real = mask_generation.make_entry
    calls = []

    def crash_on_second(pair, source, max_masks):
        calls.append(pair['name'])
        if len(calls) == 2:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C in the middle
        return real(pair, source, max_masks)

    monkeypatch.setattr(mask_generation, 'make_entry', crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        generate_mask_cache(IR, VIS, out, {'type': 'label'}, label_dir=LABEL, progress=False)
    monkeypatch.setattr(mask_generation, 'make_entry', real)
    cache = MaskCache(out)
    assert cache.names() == ['00101D']
    assert cache.get('00101D').size == (64, 80)  # complete and decodable
    cache.close()  # lmdb allows one open environment per path and process
    summary = generate_mask_cache(IR, VIS, out, {'type': 'label'}, label_dir=LABEL, progress=False)
    assert (summary['skipped'], summary['generated']) == (1, 2)


def test_other_settings_or_other_images_are_refused(tmp_path):
    out = str(tmp_path / 'm.lmdb')
    generate_mask_cache(IR, VIS, out, {'type': 'random_crop', 'num_masks': 4}, max_masks=4, progress=False)
    with pytest.raises(MaskCacheError, match=r'other settings:\n  source.num_masks: cache has 4, requested 5'):
        generate_mask_cache(IR, VIS, out, {'type': 'random_crop', 'num_masks': 5}, max_masks=4, progress=False)
    with pytest.raises(MaskCacheError, match='max_masks: cache has 4, requested 6'):
        generate_mask_cache(IR, VIS, out, {'type': 'random_crop', 'num_masks': 4}, max_masks=6, progress=False)
    # same names, other pixels: a stale entry is named, not silently kept
    ir2, vis2 = tmp_path / 'ir', tmp_path / 'vi'
    shutil.copytree(IR, ir2)
    shutil.copytree(VIS, vis2)
    shutil.copy(osp.join(IR, '00701N.png'), ir2 / '00112D.png')
    with pytest.raises(MaskCacheError, match='"00112D" was made from other images'):
        generate_mask_cache(str(ir2), str(vis2), out, {'type': 'random_crop', 'num_masks': 4}, max_masks=4,
                            progress=False)
    # --overwrite starts afresh
    summary = generate_mask_cache(str(ir2), str(vis2), out, {'type': 'random_crop', 'num_masks': 5}, max_masks=4,
                                  overwrite=True, progress=False)
    assert summary['generated'] == 3
    assert MaskCache(out).meta['source']['num_masks'] == 5


def test_bad_inputs_name_the_file(tmp_path):
    ir2, vis2 = tmp_path / 'ir', tmp_path / 'vi'
    shutil.copytree(IR, ir2)
    shutil.copytree(VIS, vis2)
    (vis2 / '00701N.png').unlink()
    with pytest.raises(ValueError, match='00701N.png has no vis partner'):
        generate_mask_cache(str(ir2), str(vis2), str(tmp_path / 'a.lmdb'), {'type': 'random_crop'}, progress=False)
    cv2.imwrite(str(vis2 / '00701N.png'), cv2.resize(read_image(osp.join(VIS, '00701N.png')), (40, 32)))
    with pytest.raises(ValueError, match='size mismatch.*00701N'):
        generate_mask_cache(str(ir2), str(vis2), str(tmp_path / 'b.lmdb'), {'type': 'random_crop'}, progress=False)
    (vis2 / '00701N.png').write_bytes(b'not a png')
    with pytest.raises(ValueError, match='vi/00701N.png: cannot decode'):
        generate_mask_cache(str(ir2), str(vis2), str(tmp_path / 'c.lmdb'), {'type': 'random_crop'}, progress=False)
    with pytest.raises(ValueError, match='needs labels'):
        generate_mask_cache(IR, VIS, str(tmp_path / 'd.lmdb'), {'type': 'label'}, progress=False)


def test_not_a_cache_is_refused(tmp_path):
    with pytest.raises(MaskCacheError, match='generate_masks.py'):
        MaskCache(str(tmp_path / 'missing.lmdb'))
    other = str(tmp_path / 'images.lmdb')
    with LmdbWriter(other) as w:
        w.put('00101D', b'png bytes')
    with pytest.raises(MaskCacheError, match='not a mask cache'):
        MaskCache(other)
    with pytest.raises(MaskCacheError, match='not a mask cache'):
        MaskCacheWriter(other, make_meta({'type': 'label'}, 4)).close()


def test_workers_give_the_same_cache(tmp_path):
    a, b = str(tmp_path / 'a.lmdb'), str(tmp_path / 'b.lmdb')
    generate_mask_cache(IR, VIS, a, SUPERPIXEL, progress=False)
    generate_mask_cache(IR, VIS, b, SUPERPIXEL, workers=2, progress=False)
    for name in NAMES:
        assert MaskCache(a).raw(name) == MaskCache(b).raw(name)


def _run_script(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, 'argv', ['generate_masks.py', *args])
    code = 0
    try:
        runpy.run_path(osp.join(ROOT, 'scripts', 'generate_masks.py'), run_name='__main__')
    except SystemExit as exit_:
        code = exit_.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.slow
def test_generate_masks_script(tmp_path, monkeypatch, capsys):
    out = str(tmp_path / 'cli.lmdb')
    base = ['--ir', IR, '--vis', VIS, '--out', out, '--quiet', '--fallback-set', 'scale=100',
            '--fallback-set', 'min_size=20', '--max-masks', '5']
    code, stdout, _ = _run_script(monkeypatch, capsys, *base)
    assert code == 0
    summary = json.loads(stdout)
    assert summary['fallback']['used'] == 'superpixel' and summary['generated'] == 3
    code, stdout, _ = _run_script(monkeypatch, capsys, *base)
    assert json.loads(stdout)['skipped'] == 3
    code, stdout, stderr = _run_script(monkeypatch, capsys, *base[:-1], '6')
    assert code == 2 and 'max_masks: cache has 5, requested 6' in stderr and 'Traceback' not in stderr
    code, stdout, _ = _run_script(monkeypatch, capsys, '--ir', IR, '--vis', VIS, '--out', str(tmp_path / 'sam.lmdb'),
                                  '--quiet', '--model-type', 'tiny', '--device', 'cpu', '--points-per-side', '4',
                                  '--crop-n-layers', '0', '--pred-iou-thresh', '1.0', '--stability-score-thresh', '0',
                                  '--names', '00101D')
    assert code == 0 and json.loads(stdout)['source'] == 'sam'
    assert MaskCache(str(tmp_path / 'sam.lmdb')).meta['source']['generator']['points_per_side'] == 4
