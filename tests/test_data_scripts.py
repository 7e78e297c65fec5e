"""scripts/extract_subimages.py, scripts/create_lmdb.py and scripts/benchmarks/benchmark_data.py on real
sample pairs (run in-process through their command lines)."""
import json
import os
import os.path as osp
import runpy
import sys

import cv2
import numpy as np
import pytest
from basicsr.data import build_dataset
from conftest import BENCHMARKS, ROOT

import fusion  # noqa: F401
from fusion.data.mask_cache import MaskCache
from fusion.data.mask_generation import generate_mask_cache
from fusion.data.subimages import crop_positions
from fusion.utils.img_util import read_image


MFNET = osp.join(ROOT, 'tests', 'data', 'data_pipeline', 'mfnet')
IR, VIS, LABEL = (osp.join(MFNET, d) for d in ('ir', 'vi', 'label'))


def run_script(name, monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, 'argv', [name, *args])
    code = 0
    try:
        runpy.run_path(osp.join(ROOT, 'scripts', name), run_name='__main__')
    except SystemExit as exit_:
        code = exit_.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_crop_positions():
    assert crop_positions(64, 32, 16, 0) == [0, 16, 32]
    assert crop_positions(70, 32, 16, 0) == [0, 16, 32, 38]  # 6 px left over -> one flush crop
    assert crop_positions(70, 32, 16, 6) == [0, 16, 32]  # ... unless within the threshold
    assert crop_positions(20, 32, 16, 0) == []


@pytest.fixture(scope='module')
def label_cache(tmp_path_factory):
    path = str(tmp_path_factory.mktemp('sub') / 'label.lmdb')
    generate_mask_cache(IR, VIS, path, {'type': 'label'}, label_dir=LABEL, max_masks=5, progress=False)
    return path


@pytest.mark.slow
def test_extract_subimages_keeps_everything_consistent(tmp_path, monkeypatch, capsys, label_cache):
    out = str(tmp_path / 'sub')
    code, stdout, _ = run_script('extract_subimages.py', monkeypatch, capsys, '--ir', IR, '--vis', VIS, '--label',
                                 LABEL, '--mask-cache', label_cache, '--out', out, '--crop-size', '32', '48',
                                 '--step', '16', '24', '--thresh-size', '4', '--quiet')
    assert code == 0
    summary = json.loads(stdout)
    # 64x80: rows 0,16,32; cols 0,24 + flush 32 (80-72=8 > 4) -> 9 per image
    assert summary['subimages'] == 27
    assert sorted(os.listdir(osp.join(out, 'ir')))[:3] == ['00101D_s001.png', '00101D_s002.png', '00101D_s003.png']
    full = MaskCache(label_cache)
    sub = MaskCache(osp.join(out, 'masks.lmdb'))
    assert sub.meta['source'] == full.meta['source']
    assert sub.meta['derived_from'] == {'crop_size': [32, 48], 'step': [16, 24], 'thresh_size': 4, 'parent': None}
    # s006 of 00101D is row 16, column 32 (third column: the flush crop)
    win = (slice(16, 48), slice(32, 80))
    for key in ('ir', 'vi', 'label'):
        np.testing.assert_array_equal(read_image(osp.join(out, key, '00101D_s006.png')),
                                      read_image(osp.join(MFNET, key, '00101D.png'))[win])
    parent, child = full.get('00101D'), sub.get('00101D_s006')
    crops = [m[win] for m in parent.ir if m[win].any()]
    crops.sort(key=lambda m: -int(m.sum()))
    assert len(child.ir) == min(5, len(crops))
    for a, b in zip(child.ir, crops):
        np.testing.assert_array_equal(a, b)
    full.close()
    sub.close()
    # the dataset reads the sub-images with their cache (fingerprints verified)
    ds = build_dataset(dict(name='sub', type='SAGEFusionDataset', phase='train', dataroot_ir=osp.join(out, 'ir'),
                            dataroot_vis=osp.join(out, 'vi'), dataroot_label=osp.join(out, 'label'), num_classes=9,
                            mask_cache=osp.join(out, 'masks.lmdb'), patch_source={'type': 'label'},
                            gt_size=[32, 48]))
    assert len(ds) == 27 and ds[5]['ir_patches'].shape == (4, 32, 48)


def test_extract_subimages_refuses_a_cache_of_other_images(tmp_path, label_cache):
    from fusion.data.mask_cache import MaskCacheError
    from fusion.data.subimages import extract_subimages
    for key in ('ir', 'vi'):
        os.makedirs(tmp_path / key)
        for name in ('00101D', '00112D', '00701N'):
            small = cv2.resize(read_image(osp.join(MFNET, key, name + '.png')), (40, 32))
            cv2.imwrite(str(tmp_path / key / (name + '.png')), small)
    with pytest.raises(MaskCacheError, match=r'masks of "00101D" are 80x64 but .*ir/00101D.png is 40x32'):
        extract_subimages(str(tmp_path / 'ir'), str(tmp_path / 'vi'), str(tmp_path / 'out'), [16], [16],
                          mask_cache=label_cache, progress=False)


@pytest.mark.slow
def test_extract_subimages_reports_small_images(tmp_path, monkeypatch, capsys):
    code, stdout, stderr = run_script('extract_subimages.py', monkeypatch, capsys, '--ir', IR, '--vis', VIS,
                                      '--out', str(tmp_path / 'o'), '--crop-size', '128', '--step', '64', '--quiet')
    assert code == 0 and json.loads(stdout)['subimages'] == 0 and '3 image(s) smaller' in stderr


@pytest.mark.slow
def test_create_lmdb_script(tmp_path, monkeypatch, capsys):
    out = str(tmp_path / 'lmdb')
    code, stdout, _ = run_script('create_lmdb.py', monkeypatch, capsys, '--ir', IR, '--vis', VIS, '--label', LABEL,
                                 '--out', out, '--quiet')
    assert code == 0 and json.loads(stdout)['pairs'] == 3
    assert sorted(os.listdir(out)) == ['ir.lmdb', 'label.lmdb', 'vis.lmdb']
    code, _, stderr = run_script('create_lmdb.py', monkeypatch, capsys, '--ir', IR, '--vis', VIS, '--out', out,
                                 '--quiet')
    assert code == 2 and 'exists' in stderr and 'Traceback' not in stderr


@pytest.mark.slow
def test_benchmark_script_prints_the_ratio(monkeypatch, capsys):
    monkeypatch.syspath_prepend(BENCHMARKS)  # where the script finds bench_util
    code, stdout, _ = run_script('benchmarks/benchmark_data.py', monkeypatch, capsys, '--ir', IR, '--vis', VIS,
                                 '--label', LABEL, '--source', 'label', '--max-masks', '20', '--repeats', '1')
    assert code == 0
    result = json.loads(stdout)
    for key in ('size_ratio', 'size_ratio_payload', 'official_bytes_per_image', 'ours_bytes_per_image',
                'ours_sample_ms', 'official_first_sample_s', 'scaling_quarter_to_full'):
        assert key in result
    # official: one byte per pixel per stored mask (plus pickle framing)
    assert result['official_bytes_per_image'] >= result['masks_stored_per_image'] * 64 * 80
    assert result['size_ratio_payload'] > 20
    assert result['images'] == 3 and result['source'] == 'label'


@pytest.mark.slow
def test_worker_processes_give_the_same_files(tmp_path, label_cache):
    """The multiprocessing paths of extract_subimages and create_lmdb write exactly what the
    single-process paths write."""
    import lmdb

    from fusion.data.lmdb_images import create_image_lmdbs
    from fusion.data.subimages import extract_subimages
    outs = {}
    for workers in (0, 2):
        out = str(tmp_path / f'sub{workers}')
        extract_subimages(IR, VIS, out, [32, 48], [16, 24], 4, label_dir=LABEL, mask_cache=label_cache,
                          workers=workers, progress=False)
        outs[workers] = out
    for key in ('ir', 'vi', 'label'):
        names = sorted(os.listdir(osp.join(outs[0], key)))
        assert names == sorted(os.listdir(osp.join(outs[2], key))) and len(names) == 27
        for name in names:
            with open(osp.join(outs[0], key, name), 'rb') as a, open(osp.join(outs[2], key, name), 'rb') as b:
                assert a.read() == b.read(), f'{key}/{name}'
    contents = {}
    for workers in (0, 2):
        out = str(tmp_path / f'lmdb{workers}')
        create_image_lmdbs(IR, VIS, out, label_dir=LABEL, workers=workers, progress=False)
        env = lmdb.open(osp.join(out, 'ir.lmdb'), readonly=True, lock=False)
        with env.begin() as txn:
            contents[workers] = dict(txn.cursor())
        env.close()
    assert contents[0] == contents[2] and len(contents[0]) == 3
