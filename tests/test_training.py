"""End to end in a temporary root: train (pre-train -> distill -> validate -> checkpoint), an
interrupted run resumed with --auto_resume gives exactly the uninterrupted run's losses and
weights, tensorboard gets every loss, both learning rates and image grids, and the student
loads in the test pipeline."""
import glob
import os
import os.path as osp
import re
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import ROOT


pytestmark = pytest.mark.slow  # subprocesses through the real entry points


DATA = osp.join(ROOT, 'tests', 'data', 'sage_training')

# runs a pipeline with an arbitrary root path (fusion/train.py always uses the repository)
RUNNER = """
import sys
mode, root, *args = sys.argv[1:]
sys.argv = ['fusion'] + args
import fusion
from fusion.pipeline import test_pipeline, train_pipeline
(train_pipeline if mode == 'train' else test_pipeline)(root)
"""


def _env() -> dict:
    # one thread per process: the CPU is shared, OpenMP oversubscription is far slower
    return dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1', CUDA_VISIBLE_DEVICES='')


def _start(mode: str, root: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, '-c', RUNNER, mode, root, *args], cwd=ROOT, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-6000:]
    return out


def _train_options(name: str) -> dict:
    tiny_teacher = {'type': 'SAGETeacher', 'mask_num': 2, 'channels': 8, 'heads': 1, 'head_dim': 8,
                    'feature_channels': 8}
    return {
        'name': name, 'model_type': 'SAGEModel', 'num_gpu': 0, 'manual_seed': 5, 'num_threads': 1,
        'datasets': {
            'train': {'name': 'tiny_train', 'type': 'SAGEFusionDataset', 'dataroot_ir': osp.join(DATA, 'ir'),
                      'dataroot_vis': osp.join(DATA, 'vi'), 'dataroot_label': osp.join(DATA, 'label'),
                      'num_classes': 9, 'ignore_index': 255, 'patch_source': {'type': 'label'}, 'mask_num': 2,
                      'gt_size': [32, 32], 'use_hflip': True, 'io_backend': {'type': 'disk'},
                      'num_worker_per_gpu': 0, 'batch_size_per_gpu': 2,
                      'dataset_enlarge_ratio': 2},  # 2 iterations per epoch: the resume lands mid-epoch
            'val': {'name': 'tiny_val', 'type': 'FusionPairDataset', 'dataroot_ir': osp.join(DATA, 'ir'),
                    'dataroot_vis': osp.join(DATA, 'vi'), 'io_backend': {'type': 'disk'}},
        },
        'network_t': tiny_teacher,
        'network_g': {'type': 'SAGEStudent', 'dim': 8},
        'network_seg': {'type': 'FusionSegNet', 'in_ch': 3, 'num_classes': 9, 'base_ch': 4, 'levels': 2},
        'path': {'resume_state': None},
        'train': {
            'total_iter': 7, 'teacher_pretrain_iter': 2, 'ema_decay': 0.5, 'stop_at_iter': None,
            # '2e-3': what PyYAML reads from `lr: 2e-3` (a string); the option validator makes it a number
            'optim_t': {'type': 'Adam', 'lr': 5e-4}, 'optim_g': {'type': 'Adam', 'lr': '2e-3'},
            'optim_seg': {'type': 'Adam', 'lr': 1e-3},
            'scheduler': {'type': 'CosineAnnealingLR', 'eta_min': 1e-5},
            'teacher_fusion_opt': {'type': 'SAGEContextLoss', 'intensity_weight': 1, 'gradient_weight': 1,
                                   'w_int_vis': 1, 'w_int_ir': 1, 'w_int_ref': 0, 'w_grad_src': 2, 'w_grad_ref': 0},
            'seg_opt': {'type': 'SegCrossEntropyLoss', 'loss_weight': 0.3, 'ignore_index': 255},
            'context_opt': {'type': 'SAGEContextLoss'},
            'contrastive_opt': {'type': 'SAMContrastiveLoss', 'loss_weight': 3.3333e-4, 'depth': 1,
                                'encoder_overrides': {'embed_dim': 16, 'num_heads': 1, 'use_rel_pos': False,
                                                      'window_size': 0, 'global_attn_indexes': []}},
            'feature_opt': {'type': 'FeatureAlignmentLoss', 'loss_weight': 0.3},
            'feedback_feature_opt': {'type': 'FeatureAlignmentLoss', 'loss_weight': 0.01},
        },
        'val': {'val_freq': 3, 'save_img': True, 'pbar': False,
                'metrics': {'en': {'type': 'calculate_en'}, 'sd': {'type': 'calculate_sd'}}},
        'logger': {'print_freq': 1, 'save_checkpoint_freq': 3, 'image_freq': 2, 'use_tb_logger': True},
    }


def _losses_by_iter(log_text: str) -> dict:
    """iteration -> the formatted loss values of that log line (print_freq 1)."""
    out = {}
    for line in log_text.splitlines():
        m = re.search(r'iter:\s*([\d,]+), lr:.*?\] (l_.*)$', line)
        if m:
            out[int(m.group(1).replace(',', ''))] = m.group(2).strip()
    return out


def _read_logs(exp_dir: str) -> list:
    return [open(p).read() for p in sorted(glob.glob(osp.join(exp_dir, 'train_*.log')))]


def _state(path: str) -> dict:
    return torch.load(path, map_location='cpu', weights_only=True)


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('sage_root'))
    opt_full = osp.join(root, 'full.yml')
    opt_split = osp.join(root, 'split.yml')
    yaml.safe_dump(_train_options('e2e_full'), open(opt_full, 'w'), sort_keys=False)
    split = _train_options('e2e_split')
    split['train']['stop_at_iter'] = 3  # "interrupted" after iteration 3
    yaml.safe_dump(split, open(opt_split, 'w'), sort_keys=False)
    # the uninterrupted run and the first half of the interrupted one run side by side
    full, first = _start('train', root, '-opt', opt_full), _start('train', root, '-opt', opt_split)
    out_full, out_first = _finish(full), _finish(first)
    split_dir = osp.join(root, 'experiments', 'e2e_split')
    after_first = sorted(os.listdir(osp.join(split_dir, 'training_states')))
    out_second = _finish(_start('train', root, '-opt', opt_split, '--auto_resume',
                                '--force_yml', 'train:stop_at_iter=~'))
    return {'root': root, 'full': osp.join(root, 'experiments', 'e2e_full'), 'split': split_dir,
            'after_first': after_first, 'outputs': (out_full, out_first, out_second)}


def test_training_runs_exactly_total_iter_and_saves_everything(runs):
    exp = runs['full']
    assert sorted(os.listdir(osp.join(exp, 'training_states'))) == ['3.state', '6.state', '7.state']
    models = set(os.listdir(osp.join(exp, 'models')))
    for net in ('net_t', 'net_g', 'net_seg'):
        assert {f'{net}_3.pth', f'{net}_6.pth', f'{net}_7.pth', f'{net}_latest.pth'} <= models
    losses = _losses_by_iter(_read_logs(exp)[0])
    assert sorted(losses) == list(range(1, 8))  # exactly total_iter iterations, no early stop
    state = torch.load(osp.join(exp, 'training_states', '7.state'), map_location='cpu', weights_only=False)
    # 2 pre-training + 5 alternating (s, t, s, t, s): teacher 4, student 3 steps; seg with the teacher
    assert state['sage']['steps'] == {'t': 4, 'g': 3, 'seg': 4}
    assert len(state['optimizers']) == 3 and len(state['schedulers']) == 3
    lrs = [group['lr'] for o in state['optimizers'] for group in o['param_groups']]
    assert lrs == pytest.approx([1e-5, 1e-5, 1e-5])  # every network annealed to eta_min in its own steps
    assert state['optimizers'][1]['param_groups'][0]['initial_lr'] == 2e-3  # the string '2e-3' became a float
    g = _state(osp.join(exp, 'models', 'net_g_7.pth'))
    assert set(g) == {'params', 'params_ema'}
    for it in (3, 6, 7):
        for name in ('00106D', '00701N'):
            assert osp.isfile(osp.join(exp, 'visualization', 'tiny_val', f'{name}_{it}.png'))
    assert 'Validation tiny_val' in _read_logs(exp)[0]


def test_auto_resume_reproduces_the_uninterrupted_run(runs):
    assert runs['after_first'] == ['3.state']  # the first half stopped after iteration 3
    full_losses = _losses_by_iter(_read_logs(runs['full'])[0])
    first_log, second_log = _read_logs(runs['split'])
    assert 'Resuming training from iter 3' in second_log
    resumed = _losses_by_iter(second_log)
    assert sorted(resumed) == [4, 5, 6, 7]
    for it in range(1, 4):
        assert _losses_by_iter(first_log)[it] == full_losses[it]
    for it in range(4, 8):
        assert resumed[it] == full_losses[it], f'iteration {it} differs after resume'
    # bitwise identical networks at the end (CPU, fixed seed)
    for net in ('net_t', 'net_g', 'net_seg'):
        a = _state(osp.join(runs['full'], 'models', f'{net}_7.pth'))
        b = _state(osp.join(runs['split'], 'models', f'{net}_7.pth'))
        for key in a:
            for name, tensor in a[key].items():
                assert torch.equal(tensor, b[key][name]), f'{net} {key} {name}'


def test_tensorboard_has_losses_learning_rates_and_images(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = glob.glob(osp.join(runs['root'], 'tb_logger', 'e2e_full', 'events.out.tfevents.*'))
    assert events
    acc = EventAccumulator(osp.dirname(events[0]), size_guidance={'images': 0, 'scalars': 0})
    acc.Reload()
    scalars = set(acc.Tags()['scalars'])
    for tag in ('losses/l_t_total', 'losses/l_t_seg', 'losses/l_t_fb_cs_vis', 'losses/l_t_fb_feature',
                'losses/l_g_total', 'losses/l_g_int_ref', 'losses/l_g_grad_src', 'losses/l_g_cs_ir',
                'losses/l_g_feature', 'lr/t', 'lr/g', 'lr/seg', 'metrics/tiny_val/en', 'metrics/tiny_val/sd'):
        assert tag in scalars, tag
    assert len(acc.Scalars('lr/g')) == 7
    assert 'train/ir_vis_teacher_student' in acc.Tags()['images']


def test_the_trained_student_loads_in_the_test_pipeline(runs):
    root = runs['root']
    opt = {'name': 'e2e_test', 'model_type': 'FusionModel', 'num_gpu': 0, 'manual_seed': 0,
           'datasets': {'test_1': {'name': 'tiny', 'type': 'FusionPairDataset', 'dataroot_ir': osp.join(DATA, 'ir'),
                                   'dataroot_vis': osp.join(DATA, 'vi'), 'io_backend': {'type': 'disk'}}},
           'network_g': {'type': 'SAGEStudent', 'dim': 8},
           'path': {'pretrain_network_g': osp.join(runs['full'], 'models', 'net_g_latest.pth'),
                    'param_key_g': 'params_ema', 'strict_load_g': True},
           'val': {'save_img': True, 'suffix': None, 'pbar': False, 'metrics': None}}
    opt_path = osp.join(root, 'test.yml')
    yaml.safe_dump(opt, open(opt_path, 'w'), sort_keys=False)
    _finish(_start('test', root, '-opt', opt_path))
    for name in ('00106D', '00701N'):
        assert osp.isfile(osp.join(root, 'results', 'e2e_test', 'visualization', 'tiny', f'{name}.png'))
