"""Registered parts of the segmentation protocol: dataset, segmenter (with local encoder weights),
learning-rate schedule, model."""
import logging
import os.path as osp
import shutil

import cv2
import numpy as np
import pytest
import torch
from basicsr.archs import build_network
from basicsr.data import build_dataset
from conftest import DATASETS

from fusion.data.segmentation_dataset import read_label, read_name_list
from fusion.models.lr_scheduler import WarmupPolyLR
from fusion.utils.img_util import ImageReadError


MFNET = osp.join(DATASETS, 'MFNet')


pytestmark = pytest.mark.usefixtures('one_torch_thread')


def _dataset_opt(**kw):
    opt = {'name': 'mfnet_vis', 'type': 'SegmentationDataset', 'dataroot_img': osp.join(MFNET, 'vi'),
           'dataroot_label': osp.join(MFNET, 'label'), 'num_classes': 9, 'size': [48, 64]}
    opt.update(kw)
    return opt


def test_dataset_items_from_the_registry():
    ds = build_dataset(_dataset_opt())
    assert len(ds) == 6
    item = ds[0]
    assert item['name'] == '00101D'
    assert item['img'].shape == (3, 48, 64) and item['img'].dtype == torch.float32
    assert 0.0 <= float(item['img'].min()) and float(item['img'].max()) <= 1.0
    assert item['label'].shape == (48, 64) and item['label'].dtype == torch.int64
    assert int(item['label'].max()) < 9
    full = build_dataset(_dataset_opt(label_full_res=True))[0]
    assert full['label'].shape == (480, 640)      # scored at the label's own resolution


def test_dataset_list_file_and_missing_image(tmp_path):
    names = tmp_path / 'test.txt'
    names.write_text('# test split\n00104D.png\n00701N\n')
    assert read_name_list(str(names)) == ['00104D', '00701N']
    ds = build_dataset(_dataset_opt(meta_info=str(names)))
    assert [it['name'] for it in ds.items] == ['00104D', '00701N']
    img_dir = tmp_path / 'fused'
    shutil.copytree(osp.join(MFNET, 'vi'), img_dir)
    (img_dir / '00701N.png').unlink()
    with pytest.raises(ImageReadError, match=r'fused.*00701N'):
        build_dataset(_dataset_opt(meta_info=str(names), dataroot_img=str(img_dir)))


def test_label_values_outside_the_classes_name_the_file(tmp_path):
    bad = tmp_path / 'bad.png'
    label = np.zeros((8, 8), np.uint8)
    label[0, 0] = 12
    cv2.imwrite(str(bad), label)
    with pytest.raises(ImageReadError, match=r'bad\.png.*\[12\].*9 classes'):
        read_label(str(bad), 9)
    label[0, 0] = 255
    cv2.imwrite(str(bad), label)
    assert read_label(str(bad), 9, ignore_index=255)[0, 0] == 255


def test_size_mismatch_names_both_files(tmp_path):
    img_dir = tmp_path / 'fused'
    img_dir.mkdir()
    for name in ('00101D', '00104D'):
        img = cv2.imread(osp.join(MFNET, 'vi', f'{name}.png'))
        cv2.imwrite(str(img_dir / f'{name}.png'), img if name == '00101D' else img[:240, :320])
    names = tmp_path / 'list.txt'
    names.write_text('00101D\n00104D\n')
    ds = build_dataset(_dataset_opt(dataroot_img=str(img_dir), meta_info=str(names)))
    ds[0]
    with pytest.raises(ImageReadError, match=r'size mismatch.*00104D\.png.*320x240.*label'):
        ds[1]


def test_segmenter_any_size_and_local_encoder_weights(tmp_path):
    opt = {'type': 'SMPSegmenter', 'arch': 'Segformer', 'encoder_name': 'mit_b0', 'num_classes': 5}
    torch.manual_seed(1)
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    log = logging.getLogger('basicsr')
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        source = build_network(opt)
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    assert any('encoder randomly initialised' in r.getMessage() for r in records)   # the log says so
    out = source(torch.rand(1, 3, 50, 70))
    assert out.shape == (1, 5, 50, 70)              # padded to a multiple of 32 inside, cropped back
    # an "ImageNet" file: a randomly initialised encoder's state dict, as the official mit_b0.pth
    # (plain state dict with a classification head, which must be skipped)
    state = {k: v.clone() for k, v in source.model.encoder.state_dict().items()}
    state['head.weight'] = torch.zeros(1000, 256)
    weights = tmp_path / 'mit_b0.pth'
    torch.save(state, weights)
    torch.manual_seed(2)
    loaded = build_network(dict(opt, encoder_weights=str(weights)))
    for key, value in source.model.encoder.state_dict().items():
        assert torch.equal(loaded.model.encoder.state_dict()[key], value), key
    # the decoder keeps its own (seed 2) initialisation: only the encoder came from the file
    assert not torch.equal(loaded.model.segmentation_head[0].weight, source.model.segmentation_head[0].weight)
    # weights of another encoder: refused with the file named
    torch.save({'conv1.weight': torch.zeros(3)}, tmp_path / 'other.pth')
    with pytest.raises(ValueError, match=r'other\.pth: does not fit'):
        build_network(dict(opt, encoder_weights=str(tmp_path / 'other.pth')))
    with pytest.raises(FileNotFoundError, match=r'encoder_weights: no such file: .*missing\.pth'):
        build_network(dict(opt, encoder_weights=str(tmp_path / 'missing.pth')))


def test_warmup_poly_schedule():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([param], lr=1.0)
    sched = WarmupPolyLR(opt, total_iter=10, warmup_iter=4, warmup_ratio=0.1, power=1.0)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]['lr'])
        opt.step()
        sched.step()
    expected = [(0.1 + 0.9 * i / 4 if i < 4 else 1.0) * (1 - i / 10) for i in range(10)]
    np.testing.assert_allclose(lrs, expected, rtol=1e-6)
    assert opt.param_groups[0]['lr'] == 0.0
