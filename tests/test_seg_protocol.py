"""The segmentation protocol on the bundled real MFNet samples (6 labelled pairs): it learns, it
measures what it claims, it is deterministic, it resumes, and bad input ends with clear errors."""
import importlib.util
import json
import os.path as osp
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
import yaml
from conftest import DATASETS, ROOT

from fusion.segmentation.config import load_dataset_info, load_preset
from fusion.segmentation.protocol import SegmentationInputs, prepare_baselines, run_protocol
from fusion.segmentation.report import summarize
from fusion.utils.img_util import ImageReadError


MFNET = osp.join(DATASETS, 'MFNet')
NAMES = ['00101D', '00104D', '00106D', '00112D', '00701N', '00703N']
SCRIPT = osp.join(ROOT, 'scripts', 'evaluate_segmentation.py')


pytestmark = pytest.mark.usefixtures('one_torch_thread')


def _tiny_preset(tmp_path, **over) -> str:
    """A preset small enough for tests: a slim U-Net at 64x96."""
    preset = {'network': {'type': 'SMPSegmenter', 'arch': 'Unet', 'encoder_name': 'resnet18',
                          'arch_kwargs': {'decoder_channels': [64, 32, 16, 16, 16]}},
              'size': [64, 96], 'epochs': 12, 'batch_size': 3,
              'optim': {'type': 'AdamW', 'lr': 3e-3, 'weight_decay': 0.01}, 'warmup_fraction': 0.1,
              'class_weight': 'sqrt_inv_freq', 'use_hflip': True, 'seeds': 1}
    preset.update(over)
    path = tmp_path / 'tiny_preset.yml'
    path.write_text(yaml.safe_dump(preset))
    return str(path)


def _load_script():
    spec = importlib.util.spec_from_file_location('evaluate_segmentation', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _constant_folder(folder, value=128):
    folder.mkdir()
    for name in NAMES:
        cv2.imwrite(str(folder / f'{name}.png'), np.full((480, 640), value, np.uint8))
    return str(folder)


@pytest.mark.slow
def test_label_map_control_learns_and_a_constant_image_does_not(tmp_path):
    """Trained and tested on the same 6 pairs: the palette-painted label map must be segmented
    well; a constant image carries no information and must not be."""
    info = load_dataset_info('mfnet')
    preset = load_preset(_tiny_preset(tmp_path))
    methods = prepare_baselines(['label'], osp.join(MFNET, 'ir'), osp.join(MFNET, 'vi'), osp.join(MFNET, 'label'),
                                NAMES, str(tmp_path / 'baselines'), info)
    methods['constant'] = _constant_folder(tmp_path / 'constant')
    inputs = SegmentationInputs(osp.join(MFNET, 'ir'), osp.join(MFNET, 'vi'), osp.join(MFNET, 'label'), methods,
                                NAMES, NAMES)
    result = run_protocol(inputs, preset, info, [0], str(tmp_path / 'out'))
    assert not result.failed
    summary = summarize(result.confusions, info, [0])
    label_miou = summary['methods']['label']['miou']
    constant_miou = summary['methods']['constant']['miou']
    assert label_miou > 0.5, summary['methods']['label']
    assert constant_miou < 0.25, summary['methods']['constant']
    assert summary['methods']['label']['per_class_iou']['car'] > 0.5


@pytest.mark.slow
def test_same_seed_same_numbers_resume_and_one_failure_keeps_the_others(tmp_path):
    info = load_dataset_info('mfnet')
    preset = load_preset(_tiny_preset(tmp_path, epochs=2))
    broken = tmp_path / 'broken'
    shutil.copytree(osp.join(MFNET, 'vi'), broken)
    (broken / '00703N.png').unlink()
    train, test = NAMES[:4], NAMES[4:]

    def run(out, methods):
        inputs = SegmentationInputs(osp.join(MFNET, 'ir'), osp.join(MFNET, 'vi'), osp.join(MFNET, 'label'), methods,
                                    train, test)
        return run_protocol(inputs, preset, info, [3], str(out))

    first = run(tmp_path / 'a', {'broken': str(broken), 'vis': osp.join(MFNET, 'vi')})
    assert set(first.failed) == {'broken'} and '00703N' in first.failed['broken']
    assert 'broken' in first.failed['broken']                          # the folder is named
    cm = first.confusions['vis']['seed3']
    assert cm.sum() == 2 * 480 * 640                                   # scored at label resolution
    second = run(tmp_path / 'b', {'vis': osp.join(MFNET, 'vi')})
    np.testing.assert_array_equal(second.confusions['vis']['seed3'], cm)   # same seed, same numbers
    again = run(tmp_path / 'a', {'vis': osp.join(MFNET, 'vi')})
    assert again.reused == 1                                           # the finished unit is skipped
    np.testing.assert_array_equal(again.confusions['vis']['seed3'], cm)
    with open(tmp_path / 'a' / 'units' / 'vis' / 'seed3.json') as f:
        assert json.load(f)['confusion_matrix'] == cm.tolist()


@pytest.mark.slow
def test_command_writes_json_csv_markdown_picture(tmp_path):
    script = _load_script()
    train = tmp_path / 'train.txt'
    train.write_text('\n'.join(NAMES[:4]))
    test = tmp_path / 'test.txt'
    test.write_text('\n'.join(NAMES[4:]))
    out = tmp_path / 'out'
    code = script.main(['--ir', osp.join(MFNET, 'ir'), '--vis', osp.join(MFNET, 'vi'), '--label',
                        osp.join(MFNET, 'label'), '--fused', f'gray={_constant_folder(tmp_path / "gray")}',
                        '--baseline', 'mean', '--train-list', str(train), '--test-list', str(test),
                        '--preset', _tiny_preset(tmp_path, epochs=1), '--seeds', '2', '--out', str(out),
                        '--grid-images', '2', '--quiet'])
    assert code == 0
    with open(out / 'segmentation.json') as f:
        data = json.load(f)
    assert data['classes'][:3] == ['unlabelled', 'car', 'person'] and data['seeds'] == [0, 1]
    assert set(data['methods']) == {'gray', 'mean'}
    for m in data['methods'].values():
        assert 0.0 <= m['miou'] <= 1.0 and m['miou_std'] >= 0.0 and 0.0 <= m['pixel_acc'] <= 1.0
        assert set(m['per_class_iou']) == set(data['classes'])
        assert all(v is None or 0.0 <= v <= 1.0 for v in m['per_class_iou'].values())
    assert (out / 'segmentation.csv').read_text().startswith('method,miou,miou_std')
    assert '| method | mIoU |' in (out / 'segmentation.md').read_text()
    grid = cv2.imread(str(out / 'predictions.jpg'))
    assert grid is not None and grid.shape[1] == 4 * 224                 # visible, label, 2 methods


def test_command_bad_input_names_the_file_or_option(tmp_path):
    script = _load_script()
    base = ['--ir', osp.join(MFNET, 'ir'), '--vis', osp.join(MFNET, 'vi'), '--baseline', 'vis', '--split', '0.5',
            '--out', str(tmp_path / 'out')]
    with pytest.raises(ValueError, match=r"--preset: unknown preset 'gpu'"):
        script.main(base + ['--label', osp.join(MFNET, 'label'), '--preset', 'gpu'])
    labels = tmp_path / 'label'
    shutil.copytree(osp.join(MFNET, 'label'), labels)
    bad = cv2.imread(str(labels / '00104D.png'), cv2.IMREAD_UNCHANGED)
    bad[0, 0] = 9
    cv2.imwrite(str(labels / '00104D.png'), bad)
    with pytest.raises(ImageReadError, match=r'00104D\.png: label values \[9\]'):
        script.main(base + ['--label', str(labels), '--preset', 'cpu'])
    (labels / '00104D.png').unlink()
    train = tmp_path / 'train.txt'
    train.write_text('00101D\n00104D\n')
    test = tmp_path / 'test.txt'
    test.write_text('00701N\n')
    lists = ['--train-list', str(train), '--test-list', str(test)]
    with pytest.raises(ImageReadError, match=r'no label image for 1 listed pair\(s\): 00104D'):
        no_split = [a for a in base if a not in ('--split', '0.5')]
        script.main(no_split + lists + ['--label', str(labels), '--preset', 'cpu'])


@pytest.mark.slow
def test_command_line_error_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, SCRIPT, '--ir', osp.join(MFNET, 'ir'), '--vis', osp.join(MFNET, 'vi'),
                           '--label', osp.join(MFNET, 'label'), '--baseline', 'vis', '--split', '0.5',
                           '--preset', 'gpu', '--out', str(tmp_path / 'out')], capture_output=True, text=True)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith('error:')]
    assert len(lines) == 1 and "unknown preset 'gpu'" in lines[0] and 'Traceback' not in proc.stderr
