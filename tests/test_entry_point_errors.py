"""Bad and unusual inputs through the real entry points (issue 11): every bad one ends with a
non-zero exit status and one line starting ``error:`` naming the file or option, without a
traceback (``--debug`` shows it); the unusual-but-valid ones work; input folders stay
byte-identical; a failed training run leaves no experiment or tb_logger folder.

Speed: the cases run in two subprocesses side by side (each executes the entry-point files
one after the other with ``runpy``, as ``python <script>`` would: SystemExit gives the status,
an escaping exception a traceback and status 1), plus two plain ``python <script>`` runs that
check the interpreter-level behaviour (one clean line; ``--debug`` shows the traceback).
"""
import copy
import hashlib
import json
import os
import os.path as osp
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
import yaml
from conftest import ROOT, STUDENT_CKPT
from entry_runner import parse_results
from test_training import _train_options


pytestmark = pytest.mark.slow  # subprocesses through the real entry points

DATA = osp.join(ROOT, 'tests', 'data', 'sage_training')
TRAIN, TEST = osp.join(ROOT, 'fusion', 'train.py'), osp.join(ROOT, 'fusion', 'test.py')
SCRIPTS = osp.join(ROOT, 'scripts')

RUNNER = osp.join(ROOT, 'tests', 'entry_runner.py')  # runs many cases in one process


def _env() -> dict:
    return dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1', CUDA_VISIBLE_DEVICES='', FUSION_DEBUG='')


def _tree_digest(folder: str) -> dict:
    out = {}
    for base, _, files in os.walk(folder):
        for name in files:
            path = osp.join(base, name)
            out[osp.relpath(path, folder)] = hashlib.sha256(open(path, 'rb').read()).hexdigest()
    return out


def _yml(path, opt: dict) -> str:
    with open(path, 'w') as f:
        yaml.safe_dump(opt, f, sort_keys=False)
    return str(path)


def _set(opt: dict, dotted: str, value) -> dict:
    opt = copy.deepcopy(opt)
    *parents, leaf = dotted.split('.')
    node = opt
    for key in parents:
        node = node[key]
    if value is KeyError:
        del node[leaf]
    else:
        node[leaf] = value
    return opt


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    t = tmp_path_factory.mktemp('entry_points')
    data = t / 'data'
    for sub in ('ir', 'vi', 'label'):
        shutil.copytree(osp.join(DATA, sub), data / sub)
    # leftovers of a run killed while writing: readers must not see them as images
    (data / 'ir' / '.tmp_123_00106D.png').write_bytes(b'partial')
    (data / 'vi' / '.tmp_old.png').write_bytes(b'partial')
    tiny = t / 'tiny'
    (tiny / 'ir').mkdir(parents=True)
    (tiny / 'vi').mkdir()
    for h, w in ((1, 1), (2, 3), (3, 9)):
        cv2.imwrite(str(tiny / 'ir' / f'p{h}x{w}.png'), np.full((h, w), 90 + h, np.uint8))
        cv2.imwrite(str(tiny / 'vi' / f'p{h}x{w}.png'), np.full((h, w, 3), (40, 120, 200), np.uint8))
    ours = t / 'ckpt_params.pth'
    torch.save({'params': torch.load(STUDENT_CKPT, map_location='cpu', weights_only=True)}, ours)
    (t / 'a_file').write_text('not a folder')
    (t / 'garbage_sam.pth').write_bytes(b'\x00not a checkpoint' * 10)
    stale_out = t / 'out_stale'
    stale_out.mkdir()
    (stale_out / '.tmp_999999999_00106D.png').write_bytes(b'partial')
    (stale_out / '.tmp_legacy.png').write_bytes(b'partial')
    return t


def _cases(t, tag: str):
    """(runner 1 cases, runner 2 cases, checks after the runs)."""
    data = t / 'data'
    name = f'errtest_{tag}'
    base = _train_options(name)
    for phase in ('train', 'val'):
        for key, sub in (('dataroot_ir', 'ir'), ('dataroot_vis', 'vi'), ('dataroot_label', 'label')):
            if key in base['datasets'][phase]:
                base['datasets'][phase][key] = str(data / sub)
    test_base = {'name': 'errtest_test', 'model_type': 'FusionModel', 'num_gpu': 0, 'manual_seed': 0,
                 'datasets': {'test_1': {'name': 'pairs', 'type': 'FusionPairDataset',
                                         'dataroot_ir': str(data / 'ir'), 'dataroot_vis': str(data / 'vi')}},
                 'network_g': {'type': 'SAGEStudent', 'dim': 32},
                 'path': {'pretrain_network_g': STUDENT_CKPT, 'results_root': str(t / 'results')},
                 'val': {'save_img': True, 'pbar': False}}
    with open(osp.join(ROOT, 'options', 'segmentation', 'preset_cpu.yml')) as f:
        preset = yaml.safe_load(f)
    typo_preset = _set(preset, 'network.encoder_nme', 'resnet18')
    typo_preset['network'].pop('encoder_name')
    with open(osp.join(ROOT, 'options', 'seg_mfnet.yml')) as f:
        seg_opt = yaml.safe_load(f)
    bad_yaml = t / 'syntax.yml'
    bad_yaml.write_text('name: x\nmodel_type: SAGEModel\ntrain:\n  total_iter: [3\n')
    exp_names = []

    def train(case_id, opt, *extra, expect):
        exp_names.append(opt['name'])
        return {'id': case_id, 'script': TRAIN, 'args': ['-opt', _yml(t / f'{case_id}.yml', opt), *extra],
                'expect': expect}

    def test(case_id, opt, expect):
        return {'id': case_id, 'script': TEST, 'args': ['-opt', _yml(t / f'{case_id}.yml', opt)], 'expect': expect}

    def script(case_id, file, args, expect):
        return {'id': case_id, 'script': osp.join(SCRIPTS, file), 'args': [str(a) for a in args], 'expect': expect}

    # auto-resume over a truncated state: the experiment exists (in the repository's experiments/)
    resume = _set(base, 'name', f'{name}_resume')
    states = osp.join(ROOT, 'experiments', resume['name'], 'training_states')
    os.makedirs(states, exist_ok=True)
    torch.save({'iter': 5, 'epoch': 0}, osp.join(states, '5.state'))
    with open(osp.join(states, '5.state'), 'r+b') as f:
        f.truncate(30)

    first = [
        train('t_unknown', _set(base, 'train.ema_dacay', 0.999), expect=['train.ema_dacay', 'did you mean ema_decay']),
        train('t_arch', _set(base, 'network_g.type', 'SAGEStudnet'), expect=['network_g.type', 'SAGEStudent']),
        train('t_dataset', _set(base, 'datasets.train.type', 'SAGEFusionDatset'),
              expect=['datasets.train.type', 'did you mean SAGEFusionDataset']),
        train('t_loss', _set(base, 'train.context_opt.type', 'SAGEContextLos'),
              expect=['train.context_opt.type', 'did you mean SAGEContextLoss']),
        train('t_metric', _set(base, 'val.metrics.en.type', 'calculate_enn'),
              expect=['val.metrics.en.type', 'calculate_en']),
        train('t_model', _set(base, 'model_type', 'SAGEModle'), expect=['model_type', 'did you mean SAGEModel']),
        train('t_no_type', _set(base, 'network_t.type', KeyError), expect=['network_t.type: required option']),
        train('t_no_total', _set(base, 'train.total_iter', KeyError), expect=['train.total_iter: required option']),
        train('t_lr_word', _set(base, 'train.optim_g.lr', 'abc'), expect=["train.optim_g.lr: expected a number"]),
        train('t_seg_ignore', _set(_set(seg_opt, 'name', f'{name}_seg'), 'datasets.val.ignore_index', 0),
              expect=['ignore_index disagrees', 'datasets.val.ignore_index (0)', 'train.seg_loss.ignore_index (255)']),
        train('t_seg_classes', _set(_set(seg_opt, 'name', f'{name}_seg2'), 'network_g.num_classes', 8),
              expect=['number of classes disagrees', 'network_g.num_classes (8)']),
        train('t_patch_mode', _set(base, 'network_t.patch_mode', 'binary'),
              expect=['datasets.train.patch_mode', 'network_t.patch_mode', 'agree']),
        {'id': 't_yaml', 'script': TRAIN, 'args': ['-opt', str(bad_yaml)], 'expect': ['syntax.yml', 'YAML syntax']},
        train('t_force_no_eq', base, '--force_yml', 'train:total_iter', expect=['--force_yml train:total_iter']),
        train('t_force_section', _set(base, 'name', f'{name}_fs'), '--force_yml', 'nosuch:key=1',
              expect=['--force_yml nosuch:key=1', 'no section nosuch']),
        # fails while building the model, after basicsr created the folders: they must go again
        train('t_wrong_ckpt', _set(_set(base, 'name', f'{name}_ckpt'), 'path.pretrain_network_g', STUDENT_CKPT),
              expect=['sage_student_official.pth', 'does not fit SAGEStudent']),
        train('t_resume', resume, '--auto_resume', expect=['5.state', 'no training state']),
        test('s_unknown', _set(test_base, 'val.sufix', '_x'), expect=['val.sufix', 'did you mean suffix']),
        test('s_wrong_arch', _set(test_base, 'network_g.dim', 16), expect=['does not fit SAGEStudent']),
        test('s_param_key', _set(_set(test_base, 'path.pretrain_network_g', str(t / 'ckpt_params.pth')),
                                 'path.param_key_g', 'params_ema'),
             expect=['ckpt_params.pth', 'no "params_ema"', 'it has params']),
        test('s_out_is_input', _set(test_base, 'path.results_root', str(data / 'ir')),
             expect=['path.results_root', 'datasets.test_1.dataroot_ir']),
        test('s_out_holds_input', _set(test_base, 'path.results_root', str(data)), expect=['holds the input']),
        test('s_out_is_file', _set(test_base, 'path.results_root', str(t / 'a_file')),
             expect=['a_file', 'not a folder']),
        test('s_tiny_ok', _set(_set(_set(test_base, 'datasets.test_1.dataroot_ir', str(t / 'tiny' / 'ir')),
                                    'datasets.test_1.dataroot_vis', str(t / 'tiny' / 'vi')),
                               'path.results_root', str(t / 'res_tiny')), expect='ok'),
        test('s_hidden_ok', _set(test_base, 'path.results_root', str(t / 'res_hidden')), expect='ok'),
    ]
    inf = 'inference.py'
    seg = 'evaluate_segmentation.py'
    seg_in = ['--ir', data / 'ir', '--vis', data / 'vi', '--label', data / 'label', '--baseline', 'vis', '--split',
              0.5, '--quiet', '--preset', 'cpu']
    second = [
        script('i_out_is_ir', inf, ['--ir', data / 'ir', '--vis', data / 'vi', '--output', data / 'ir'],
               ['--output', 'is the input --ir']),
        script('i_out_in_vis', inf, ['--ir', data / 'ir', '--vis', data / 'vi', '--output', data / 'vi' / 'fused'],
               ['inside the input --vis']),
        script('i_param_key', inf, ['--ir', data / 'ir', '--vis', data / 'vi', '--output', t / 'o1', '--param-key',
                                    'params_ema'], ['sage_student_official.pth', 'no "params_ema"']),
        script('i_out_file', inf, ['--ir', data / 'ir', '--vis', data / 'vi', '--output', t / 'a_file'],
               ['a_file', 'not a folder']),
        script('i_tiny_ok', inf, ['--ir', t / 'tiny' / 'ir', '--vis', t / 'tiny' / 'vi', '--output', t / 'out_tiny'],
               'ok'),
        script('i_stale_ok', inf, ['--ir', data / 'ir', '--vis', data / 'vi', '--output', t / 'out_stale',
                                   '--model', t / 'ckpt_params.pth', '--param-key', 'params'], 'ok'),
        script('g_bad_sam', 'generate_masks.py', ['--ir', data / 'ir', '--vis', data / 'vi', '--out', t / 'masks.lmdb',
                                                  '--model-type', 'tiny', '--checkpoint', t / 'garbage_sam.pth',
                                                  '--device', 'cpu', '--quiet'],
               ['garbage_sam.pth', 'cannot read the SAM checkpoint']),
        script('g_out_in_ir', 'generate_masks.py', ['--ir', data / 'ir', '--vis', data / 'vi', '--out',
                                                    data / 'ir' / 'm.lmdb', '--source', 'superpixel', '--quiet'],
               ['--out', 'inside the input --ir']),
        script('e_out_is_fused', 'evaluate.py', ['--ir', data / 'ir', '--vis', data / 'vi', '--fused',
                                                 f'a={data / "vi"}', '--out', data / 'vi', '--quiet'],
               ['--out', 'is the input']),
        script('c_out_in_ir', 'create_lmdb.py', ['--ir', data / 'ir', '--vis', data / 'vi', '--out', data / 'ir' / 'x',
                                                 '--quiet'], ['inside the input --ir']),
        script('x_out_is_vis', 'extract_subimages.py', ['--ir', data / 'ir', '--vis', data / 'vi', '--out', data / 'vi',
                                                        '--crop-size', 32, '--step', 32, '--quiet'],
               ['is the input --vis']),
        script('b_out_is_ir', 'baseline_fusion.py', ['--ir', data / 'ir', '--vis', data / 'vi', '--out', data / 'ir'],
               ['is the input --ir']),
        script('seg_out_in_label', seg, seg_in + ['--out', data / 'label' / 'x'],
               ['--out', 'inside the input --label']),
        script('seg_out_is_fused', seg, seg_in + ['--fused', f'a={t / "tiny" / "vi"}', '--out', t / 'tiny' / 'vi'],
               ['--out', 'is the input --fused a']),
        script('seg_json_in_ir', seg, seg_in + ['--out', t / 'seg_out', '--json', data / 'ir' / 's.json'],
               ['--json', 'inside the input --ir']),
        script('seg_preset_typo', seg, seg_in[:-2] + ['--preset', _yml(t / 'typo_preset.yml', typo_preset), '--out',
                                                      t / 'seg_out'],
               ['typo_preset.yml', 'network.encoder_nme', 'did you mean encoder_name']),
        script('seg_preset_type', seg, seg_in[:-2] + ['--preset', _yml(t / 'type_preset.yml',
                                                                       _set(preset, 'batch_size', 'eight')),
                                                      '--out', t / 'seg_out'],
               ['type_preset.yml', 'batch_size: expected an integer']),
        script('o_out_is_ckpt', 'export_onnx.py', ['--output', t / 'ckpt_params.pth', '--checkpoint',
                                                   t / 'ckpt_params.pth'], ['is the input --checkpoint']),
    ]
    return first, second, exp_names


def _start_runner(t, cases, tag: str) -> subprocess.Popen:
    path = t / f'cases_{tag}.json'
    path.write_text(json.dumps([{k: c[k] for k in ('id', 'script', 'args')} for c in cases]))
    return subprocess.Popen([sys.executable, RUNNER, str(path)], cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _results(proc: subprocess.Popen) -> dict:
    out, _ = proc.communicate(timeout=600)
    results = parse_results(out)
    assert results is not None, out[-4000:]
    return {r['id']: r for r in results}


def test_bad_inputs_end_in_one_line_and_valid_ones_work(world):
    t = world
    tag = str(os.getpid())
    inputs_before = {d: _tree_digest(str(t / d)) for d in ('data', 'tiny')}
    ckpt_before = _tree_digest(str(t))['ckpt_params.pth']
    first, second, exp_names = _cases(t, tag)
    tb_root_existed = osp.exists(osp.join(ROOT, 'tb_logger'))
    try:
        procs = [_start_runner(t, first, 'first'), _start_runner(t, second, 'second')]
        # the interpreter itself: one clean line; --debug shows the traceback
        plain = subprocess.Popen([sys.executable, TRAIN] + first[0]['args'], cwd=ROOT, env=_env(),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        debug = subprocess.Popen([sys.executable, osp.join(SCRIPTS, 'inference.py'), '--debug', '--ir',
                                  str(t / 'data' / 'ir'), '--vis', str(t / 'data' / 'vi'), '--output',
                                  str(t / 'data' / 'ir')], cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        results = {**_results(procs[0]), **_results(procs[1])}
        plain_out, plain_err = plain.communicate(timeout=600)
        _, debug_err = debug.communicate(timeout=600)
    finally:
        leftovers = [osp.join(ROOT, d, n) for d in ('experiments', 'tb_logger') for n in exp_names + [f'errtest_{tag}']
                     if osp.exists(osp.join(ROOT, d, n))]
        for n in set(exp_names):
            shutil.rmtree(osp.join(ROOT, 'experiments', n), ignore_errors=True)
            shutil.rmtree(osp.join(ROOT, 'tb_logger', n), ignore_errors=True)

    problems = []
    for case in first + second:
        r = results[case['id']]
        err_lines = [line for line in r['stderr'].splitlines() if line.startswith('error:')]
        if case['expect'] == 'ok':
            if r['code'] != 0:
                problems.append(f"{case['id']}: exit {r['code']}: {r['stderr'][-1500:]}")
            continue
        if r['code'] == 0 or len(err_lines) != 1 or 'Traceback' in r['stderr'] or \
                not all(e in r['stderr'] for e in case['expect']):
            problems.append(f"{case['id']}: exit {r['code']}, error lines {err_lines!r}, expected {case['expect']}"
                            f"\n{r['stderr'][-1500:]}")
    assert not problems, '\n\n'.join(problems)

    assert plain.returncode == 2 and 'Traceback' not in plain_err
    assert [line for line in plain_err.splitlines() if line.startswith('error:')] == \
        [line for line in plain_err.splitlines() if 'train.ema_dacay' in line]
    assert debug.returncode != 0 and 'Traceback' in debug_err and 'is the input --ir' in debug_err

    # inputs untouched (hidden leftovers included: readers skip them, only writers clean up)
    assert {d: _tree_digest(str(t / d)) for d in ('data', 'tiny')} == inputs_before
    assert _tree_digest(str(t))['ckpt_params.pth'] == ckpt_before
    # failed training runs leave nothing behind (the resume case's folder existed before it ran)
    assert [p for p in leftovers if not p.endswith('_resume')] == []
    assert osp.exists(osp.join(ROOT, 'tb_logger')) == tb_root_existed
    assert not (t / 'masks.lmdb').exists()  # no empty cache after an unreadable SAM checkpoint
    # tiny images are fused at their own size; stale temporaries of the output folder are gone
    for h, w in ((1, 1), (2, 3), (3, 9)):
        assert cv2.imread(str(t / 'out_tiny' / f'p{h}x{w}.png')).shape == (h, w, 3)
        vis_dir = t / 'res_tiny' / 'visualization' / 'pairs'
        assert cv2.imread(str(vis_dir / f'p{h}x{w}.png')).shape == (h, w, 3)
    assert sorted(os.listdir(t / 'out_stale')) == ['00106D.png', '00701N.png']
    assert sorted(os.listdir(t / 'res_hidden' / 'visualization' / 'pairs')) == ['00106D.png', '00701N.png']
