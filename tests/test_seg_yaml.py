"""The protocol as a plain experiment: options/seg_mfnet.yml trains with mIoU validation, resumes
exactly, loads in the test pipeline, and its checkpoint serves as the fixed segmenter."""
import glob
import importlib.util
import json
import os
import os.path as osp
import re
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import DATASETS, ROOT


MFNET = osp.join(DATASETS, 'MFNet')
# runs a pipeline with an arbitrary root path (fusion/train.py always uses the repository)
RUNNER = """
import sys
mode, root, *args = sys.argv[1:]
sys.argv = ['fusion'] + args
import fusion
from fusion.pipeline import test_pipeline, train_pipeline
(train_pipeline if mode == 'train' else test_pipeline)(root)
"""


def _run(mode: str, root: str, *args: str) -> str:
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1', CUDA_VISIBLE_DEVICES='')
    proc = subprocess.run([sys.executable, '-c', RUNNER, mode, root, *args], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-6000:]
    return proc.stdout


def _options(name: str, **train) -> dict:
    with open(osp.join(ROOT, 'options', 'seg_mfnet.yml')) as f:
        opt = yaml.safe_load(f)
    opt['name'] = name
    opt['num_gpu'] = 0
    for phase in ('train', 'val'):
        ds = opt['datasets'][phase]
        ds['dataroot_img'] = osp.join(MFNET, 'vi')
        ds['dataroot_label'] = osp.join(MFNET, 'label')
        ds['meta_info'] = osp.join(MFNET, osp.basename(ds['meta_info']))
        ds['size'] = [64, 96]
    opt['train'].update(total_iter=6, **train)
    opt['train']['scheduler']['warmup_iter'] = 2
    opt['val'].update(val_freq=3)
    opt['logger'].update(print_freq=1, save_checkpoint_freq=3)
    return opt


def _write(tmp_path, opt: dict) -> str:
    path = tmp_path / f'{opt["name"]}.yml'
    path.write_text(yaml.safe_dump(opt))
    return str(path)


@pytest.mark.slow
def test_yaml_route_trains_validates_resumes_tests_and_fixes_a_segmenter(tmp_path):
    root = str(tmp_path)
    full = _options('seg_full')
    log = _run('train', root, '-opt', _write(tmp_path, full))
    assert 'miou:' in log and 'per-class IoU: unlabelled' in log
    exp = tmp_path / 'experiments' / 'seg_full'
    final = torch.load(exp / 'models' / 'net_g_latest.pth', weights_only=True)['params']
    assert glob.glob(str(tmp_path / 'tb_logger' / 'seg_full' / 'events.*'))
    assert glob.glob(str(exp / 'visualization' / 'MFNet_val' / '*.png'))       # palette predictions

    # interrupted after 3 iterations, resumed: the same weights as the uninterrupted run
    part = _options('seg_part', stop_at_iter=3)
    opt_path = _write(tmp_path, part)
    _run('train', root, '-opt', opt_path)
    _run('train', root, '-opt', opt_path, '--auto_resume', '--force_yml', 'train:stop_at_iter=~')
    resumed = torch.load(tmp_path / 'experiments' / 'seg_part' / 'models' / 'net_g_latest.pth',
                         weights_only=True)['params']
    for key, value in final.items():
        assert torch.equal(resumed[key], value), key

    # the test pipeline: the trained segmenter on the validation pairs, with mIoU
    test_opt = {'name': 'seg_test', 'model_type': 'SegmentationModel', 'num_gpu': 0, 'manual_seed': 0,
                'datasets': {'test_1': full['datasets']['val']}, 'network_g': full['network_g'],
                'path': {'pretrain_network_g': str(exp / 'models' / 'net_g_latest.pth'), 'strict_load_g': True,
                         'results_root': str(tmp_path / 'results' / 'seg_test')},
                'val': {'save_img': True, 'pbar': False, 'metrics': full['val']['metrics']}}
    log = _run('test', root, '-opt', _write(tmp_path, test_opt))
    test_miou = float(re.search(r'# miou: ([0-9.]+)', log).group(1))
    test_iou = dict(re.findall(r'(\w+) ([0-9.]+|-)', log.split('per-class IoU: ')[-1].splitlines()[0]))
    assert len(glob.glob(str(tmp_path / 'results' / 'seg_test' / 'visualization' / 'MFNet_val' / '*.png'))) == 2

    # the fixed-segmenter protocol: that checkpoint applied to two "methods" without retraining
    preset = {'network': {k: v for k, v in full['network_g'].items() if k != 'num_classes'},
              'size': [64, 96], 'iterations': 1, 'batch_size': 2, 'optim': {'type': 'AdamW', 'lr': 1e-3}, 'seeds': 1}
    preset_path = tmp_path / 'preset.yml'
    preset_path.write_text(yaml.safe_dump(preset))
    spec = importlib.util.spec_from_file_location('evaluate_segmentation', osp.join(ROOT, 'scripts',
                                                                                    'evaluate_segmentation.py'))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / 'fixed'
    code = script.main(['--ir', osp.join(MFNET, 'ir'), '--vis', osp.join(MFNET, 'vi'), '--label',
                        osp.join(MFNET, 'label'), '--baseline', 'vis', 'mean', '--test-list',
                        osp.join(MFNET, 'seg_val.txt'), '--preset', str(preset_path), '--fixed-segmenter',
                        str(exp / 'models' / 'net_g_latest.pth'), '--out', str(out), '--quiet'])
    assert code == 0
    data = json.loads((out / 'segmentation.json').read_text())
    assert data['seeds'] == [] and data['fixed_segmenter'].endswith('net_g_latest.pth')
    assert set(data['methods']) == {'vis', 'mean'}
    vis = data['methods']['vis']
    # the same checkpoint on the same images and labels: the protocol's mIoU is fusion/test.py's
    assert vis['units'] == 1 and vis['miou_std'] is None                      # one segmenter: no spread
    assert abs(vis['miou'] - test_miou) < 6e-5, (vis['miou'], test_miou)
    for name, iou in vis['per_class_iou'].items():
        assert (iou is None) == (test_iou[name] == '-') and (iou is None or abs(iou - float(test_iou[name])) < 6e-4)
    assert not list((out / 'units' / 'vis').glob('seed*.json'))                 # nothing was trained


def test_class_count_and_ignore_index_copies_must_agree():
    """The loss reads train.seg_loss.ignore_index and the metric the validation dataset's: a
    file where the copies differ is refused before any work (so are class counts that differ)."""
    import fusion.training  # noqa: F401  (declares the training loop's keys)
    from fusion.utils.option_schema import OptionError, validate_options
    validate_options(_options('agree'), True, 'seg.yml')
    opt = _options('ignore')
    opt['train']['seg_loss']['ignore_index'] = 0
    with pytest.raises(OptionError, match=r'ignore_index disagrees .*train\.seg_loss\.ignore_index \(0\)'):
        validate_options(opt, True, 'seg.yml')
    opt = _options('classes')
    opt['datasets']['val']['classes'] = opt['datasets']['val']['classes'][:8]
    with pytest.raises(OptionError, match=r'number of classes disagrees .*datasets\.val\.classes \(length\) \(8\)'):
        validate_options(opt, True, 'seg.yml')
    opt = _options('net')
    del opt['network_g']['num_classes']                                       # SMPSegmenter's default: 9
    validate_options(opt, True, 'seg.yml')
