"""Sample reading for the data pipeline: bytes decoding (LMDB) identical to img_util's readers,
labels, fingerprints, image LMDBs (scripts/create_lmdb.py) and the folder/LMDB backends."""
import os
import os.path as osp
import shutil

import cv2
import numpy as np
import pytest
from conftest import ROOT

import fusion  # noqa: F401  (basicsr fixes)
from fusion.data.lmdb_images import create_image_lmdbs
from fusion.data.lmdb_store import LmdbStoreError, read_meta_info
from fusion.data.sample_io import (PairBackend, decode_ir_bytes, decode_label_bytes, decode_vis_ycrcb_bytes,
                                   image_fingerprint, raw_to_rgb_uint8, read_label)
from fusion.utils.img_util import ImageReadError, read_image, read_ir, read_vis_ycrcb


MFNET = osp.join(ROOT, 'tests', 'data', 'data_pipeline', 'mfnet')
TNO = osp.join(ROOT, 'tests', 'data', 'data_pipeline', 'tno')


def _bytes(path):
    with open(path, 'rb') as f:
        return f.read()


@pytest.fixture(scope='module')
def odd_images(tmp_path_factory):
    """16-bit, RGBA and colour-IR variants of a real image (formats the readers must agree on)."""
    d = tmp_path_factory.mktemp('formats')
    ir8 = read_image(osp.join(MFNET, 'ir', '00101D.png'))
    vis8 = read_image(osp.join(MFNET, 'vi', '00101D.png'))
    paths = {
        'ir16': str(d / 'ir16.png'), 'vis_rgba': str(d / 'vis_rgba.png'), 'ir_rgb': str(d / 'ir_rgb.png'),
        'vis16': str(d / 'vis16.png'), 'vis_jpg': str(d / 'vis.jpg'),
    }
    cv2.imwrite(paths['ir16'], ir8.astype(np.uint16) * 257 + 3)
    cv2.imwrite(paths['vis_rgba'], np.concatenate([vis8, np.full(vis8.shape[:2] + (1, ), 200, np.uint8)], 2))
    cv2.imwrite(paths['ir_rgb'], np.repeat(ir8[..., None], 3, 2))
    cv2.imwrite(paths['vis16'], vis8.astype(np.uint16) * 250)
    cv2.imwrite(paths['vis_jpg'], vis8)
    return paths


def test_bytes_decoders_match_path_readers(odd_images):
    ir_files = [osp.join(MFNET, 'ir', '00101D.png'), osp.join(TNO, 'ir', '001.png'), odd_images['ir16'],
                odd_images['ir_rgb'], odd_images['vis_rgba']]
    for path in ir_files:
        np.testing.assert_array_equal(decode_ir_bytes(_bytes(path), path), read_ir(path), err_msg=path)
    vis_files = [osp.join(MFNET, 'vi', '00101D.png'), osp.join(TNO, 'vi', '001.png'), odd_images['vis_rgba'],
                 odd_images['vis16'], odd_images['vis_jpg']]
    for path in vis_files:
        got, gray = decode_vis_ycrcb_bytes(_bytes(path), path)
        want, want_gray = read_vis_ycrcb(path)
        np.testing.assert_array_equal(got, want, err_msg=path)
        assert gray == want_gray


def test_decode_errors_name_the_source():
    with pytest.raises(ImageReadError, match='ir.lmdb:x'):
        decode_ir_bytes(b'not an image at all', 'ir.lmdb:x')
    with pytest.raises(ImageReadError, match='empty'):
        decode_ir_bytes(b'', 'ir.lmdb:y')


def test_labels(tmp_path):
    path = osp.join(MFNET, 'label', '00101D.png')
    label = read_label(path)
    assert label.dtype == np.int64 and label.shape == (64, 80)
    assert set(np.unique(label)) == {0, 2, 5, 7}
    np.testing.assert_array_equal(decode_label_bytes(_bytes(path), path), label)
    # a 3-channel label with equal channels is fine, a colour palette image is refused
    grey3 = tmp_path / 'grey3.png'
    cv2.imwrite(str(grey3), np.repeat(label.astype(np.uint8)[..., None], 3, 2))
    np.testing.assert_array_equal(read_label(str(grey3)), label)
    colour = tmp_path / 'colour.png'
    cv2.imwrite(str(colour), read_image(osp.join(MFNET, 'vi', '00101D.png')))
    with pytest.raises(ImageReadError, match='colour.png.*colour image'):
        read_label(str(colour))


def test_rgb_view_is_rgb_order():
    bgr = read_image(osp.join(MFNET, 'vi', '00101D.png'))
    rgb = raw_to_rgb_uint8(bgr)
    np.testing.assert_array_equal(rgb, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    grey = read_image(osp.join(TNO, 'vi', '001.png'))
    assert raw_to_rgb_uint8(grey).shape == grey.shape + (3, )


def test_fingerprint_depends_on_pixels_not_encoding(tmp_path):
    src_ir, src_vis = osp.join(MFNET, 'ir', '00101D.png'), osp.join(MFNET, 'vi', '00101D.png')
    fp = image_fingerprint(read_ir(src_ir), read_vis_ycrcb(src_vis)[0])
    # same pixels, other PNG compression -> other bytes, same fingerprint
    recoded = tmp_path / 'ir.png'
    cv2.imwrite(str(recoded), read_image(src_ir), [cv2.IMWRITE_PNG_COMPRESSION, 0])
    assert _bytes(str(recoded)) != _bytes(src_ir)
    assert image_fingerprint(read_ir(str(recoded)), read_vis_ycrcb(src_vis)[0]) == fp
    # another real image of the same size -> another fingerprint
    other = image_fingerprint(read_ir(osp.join(MFNET, 'ir', '00112D.png')),
                              read_vis_ycrcb(osp.join(MFNET, 'vi', '00112D.png'))[0])
    assert other != fp


def test_create_lmdb_and_backends_agree(tmp_path):
    out = str(tmp_path / 'lmdb')
    summary = create_image_lmdbs(osp.join(MFNET, 'ir'), osp.join(MFNET, 'vi'), out,
                                 label_dir=osp.join(MFNET, 'label'), progress=False)
    assert summary['pairs'] == 3
    for name in ('ir', 'vis', 'label'):
        assert list(read_meta_info(osp.join(out, f'{name}.lmdb'))) == ['00101D', '00112D', '00701N']
        assert not osp.exists(osp.join(out, f'{name}.lmdb.partial'))
    with open(osp.join(out, 'vis.lmdb', 'meta_info.txt')) as f:
        assert f.readline().strip() == '00101D.png (64,80,3) raw'
    disk = PairBackend(osp.join(MFNET, 'ir'), osp.join(MFNET, 'vi'), osp.join(MFNET, 'label'), 'disk')
    lmdb = PairBackend(*(osp.join(out, f'{n}.lmdb') for n in ('ir', 'vis', 'label')), backend='lmdb')
    assert [i['name'] for i in disk.items] == [i['name'] for i in lmdb.items]
    for a, b in zip(disk.items, lmdb.items):
        got, want = lmdb.read_pair(b), disk.read_pair(a)
        assert len(got) == 4 and got[2] is False  # colour visible
        for x, y in zip(got, want):
            np.testing.assert_array_equal(x, y)
    assert lmdb.items[0]['ir_path'].endswith('ir.lmdb:00101D')
    # an existing output is not replaced silently
    with pytest.raises(FileExistsError, match='overwrite'):
        create_image_lmdbs(osp.join(MFNET, 'ir'), osp.join(MFNET, 'vi'), out, progress=False)


def test_create_lmdb_stops_on_bad_files_before_writing(tmp_path):
    ir_dir, vis_dir = tmp_path / 'ir', tmp_path / 'vi'
    shutil.copytree(osp.join(MFNET, 'ir'), ir_dir)
    shutil.copytree(osp.join(MFNET, 'vi'), vis_dir)
    (vis_dir / '00112D.png').write_bytes(b'\x89PNG garbage')
    with pytest.raises(ImageReadError, match='00112D.png'):
        create_image_lmdbs(str(ir_dir), str(vis_dir), str(tmp_path / 'out'), progress=False)
    assert not osp.exists(tmp_path / 'out' / 'ir.lmdb')
    small = cv2.resize(read_image(osp.join(MFNET, 'vi', '00112D.png')), (40, 32))
    cv2.imwrite(str(vis_dir / '00112D.png'), small)
    with pytest.raises(ImageReadError, match='size mismatch.*00112D'):
        create_image_lmdbs(str(ir_dir), str(vis_dir), str(tmp_path / 'out'), progress=False)


def test_lmdb_backend_errors(tmp_path):
    out = str(tmp_path / 'lmdb')
    create_image_lmdbs(osp.join(MFNET, 'ir'), osp.join(MFNET, 'vi'), out, progress=False)
    with pytest.raises(LmdbStoreError, match='nowhere.lmdb'):
        PairBackend(osp.join(out, 'ir.lmdb'), str(tmp_path / 'nowhere.lmdb'), backend='lmdb')
    # unpaired keys are listed with the LMDB they come from
    other = str(tmp_path / 'other')
    os.makedirs(tmp_path / 'ir2')
    os.makedirs(tmp_path / 'vi2')
    for n in ('00101D', '00112D'):
        shutil.copy(osp.join(MFNET, 'ir', f'{n}.png'), tmp_path / 'ir2')
        shutil.copy(osp.join(MFNET, 'vi', f'{n}.png'), tmp_path / 'vi2')
    create_image_lmdbs(str(tmp_path / 'ir2'), str(tmp_path / 'vi2'), other, progress=False)
    with pytest.raises(ImageReadError, match='00701N.*no vis partner'):
        PairBackend(osp.join(out, 'ir.lmdb'), osp.join(other, 'vis.lmdb'), backend='lmdb')
