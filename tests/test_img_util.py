"""Inputs real users have, and clear errors for bad ones (fusion/utils/img_util.py)."""
import os.path as osp

import cv2
import numpy as np
import pytest
import torch
from conftest import DATASETS

from fusion.utils.img_util import (ImageReadError, fused_to_image, imwrite_atomic, list_pairs, read_gray, read_ir,
                                   read_vis_ycrcb, ycrcb_to_rgb)


MFNET = osp.join(DATASETS, 'MFNet')


def _write(path, img):
    assert cv2.imwrite(str(path), img)
    return str(path)


def test_ir_8bit_gray_and_3channel_agree(tmp_path):
    gray = cv2.imread(osp.join(MFNET, 'ir', '00101D.png'), cv2.IMREAD_UNCHANGED)
    assert gray.ndim == 2
    three = _write(tmp_path / 'ir3.png', np.repeat(gray[..., None], 3, axis=2))
    np.testing.assert_array_equal(read_ir(three), read_ir(osp.join(MFNET, 'ir', '00101D.png')))
    assert read_ir(three).dtype == np.float32 and read_ir(three).max() <= 1.0


def test_ir_16bit_png_and_tiff(tmp_path):
    ramp = (np.arange(64 * 48, dtype=np.uint32).reshape(48, 64) * 21).astype(np.uint16)
    for ext in ('png', 'tif'):
        got = read_ir(_write(tmp_path / f'ir16.{ext}', ramp))
        np.testing.assert_allclose(got, ramp / 65535.0, atol=1e-7)


def test_visible_gray_colour_and_jpeg(tmp_path):
    bgr = cv2.imread(osp.join(MFNET, 'vi', '00101D.png'))
    ycrcb, is_gray = read_vis_ycrcb(osp.join(MFNET, 'vi', '00101D.png'))
    assert not is_gray and ycrcb.shape == bgr.shape
    np.testing.assert_array_equal(np.round(ycrcb * 255).astype(np.uint8), cv2.cvtColor(bgr, cv2.COLOR_BGR2YCrCb))
    gray = _write(tmp_path / 'g.png', bgr[..., 1])
    ycrcb_g, is_gray = read_vis_ycrcb(gray)
    assert is_gray
    np.testing.assert_allclose(ycrcb_g[..., 0], bgr[..., 1] / 255.0, atol=1e-7)
    np.testing.assert_allclose(ycrcb_g[..., 1:], 128 / 255.0, atol=1e-7)
    jpg = _write(tmp_path / 'v.jpg', bgr)
    assert read_vis_ycrcb(jpg)[0].shape == bgr.shape


def test_bad_files_name_the_file(tmp_path):
    empty = tmp_path / 'empty.png'
    empty.write_bytes(b'')
    with pytest.raises(ImageReadError, match='empty.png.*empty'):
        read_ir(str(empty))
    corrupt = tmp_path / 'corrupt.png'
    corrupt.write_bytes(b'not an image at all')
    with pytest.raises(ImageReadError, match='corrupt.png.*cannot decode'):
        read_vis_ycrcb(str(corrupt))
    with pytest.raises(ImageReadError, match='missing.png.*no such file'):
        read_gray(str(tmp_path / 'missing.png'))


def test_list_pairs_errors(tmp_path):
    ir, vis = tmp_path / 'ir', tmp_path / 'vi'
    ir.mkdir()
    vis.mkdir()
    with pytest.raises(ImageReadError, match='holds no images'):
        list_pairs(str(ir), str(vis))
    img = np.zeros((8, 8), np.uint8)
    _write(ir / 'a.png', img)
    _write(ir / 'b.png', img)
    _write(vis / 'a.jpg', img)
    _write(vis / 'c.png', img)
    with pytest.raises(ImageReadError) as err:
        list_pairs(str(ir), str(vis))
    assert 'b.png has no vis partner' in str(err.value) and 'c.png has no ir partner' in str(err.value)
    (vis / 'c.png').unlink()
    _write(vis / 'b.bmp', img)
    pairs = list_pairs(str(ir), str(vis))
    assert [p['name'] for p in pairs] == ['a', 'b'] and pairs[0]['vis_path'].endswith('a.jpg')
    with pytest.raises(ImageReadError, match='no such folder'):
        list_pairs(str(ir), str(tmp_path / 'nope'))


def test_colour_round_trip_is_exact_for_unchanged_y():
    bgr = cv2.imread(osp.join(MFNET, 'vi', '00104D.png'))
    ycrcb, _ = read_vis_ycrcb(osp.join(MFNET, 'vi', '00104D.png'))
    t = torch.from_numpy(ycrcb).permute(2, 0, 1)
    rgb = fused_to_image(t[0:1], t[1:2], t[2:3])
    # YCrCb rounding to 8 bit loses at most a couple of grey levels
    assert np.abs(rgb.astype(int) - bgr[..., ::-1].astype(int)).max() <= 3
    assert ycrcb_to_rgb(t[None, 0:1], t[None, 1:2], t[None, 2:3]).shape == (1, 3, *bgr.shape[:2])


def test_imwrite_atomic_leaves_no_partial_file(tmp_path, monkeypatch):
    img = np.zeros((4, 4, 3), np.uint8)
    target = tmp_path / 'out' / 'x.png'
    imwrite_atomic(img, str(target))
    assert target.exists()

    def broken_write(*args, **kwargs):
        raise OSError('disk full')

    import fusion.utils.file_util as fu
    monkeypatch.setattr(fu.os, 'replace', broken_write)
    with pytest.raises(OSError):
        imwrite_atomic(img, str(tmp_path / 'out' / 'y.png'))
    assert sorted(p.name for p in (tmp_path / 'out').iterdir()) == ['x.png']


def test_atomic_files_get_normal_permissions(tmp_path):
    import os
    imwrite_atomic(np.zeros((4, 4), np.uint8), str(tmp_path / 'p.png'))
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / 'p.png').stat().st_mode & 0o777 == 0o666 & ~mask
