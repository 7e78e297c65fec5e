"""The segmentation protocol on the bundled real MFNet samples (6 labelled pairs): it learns, it
measures what it claims, it is deterministic, it resumes, and bad input ends with clear errors."""
import importlib.util
import json
import os
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
from fusion.segmentation.protocol import (RunPlan, SegmentationInputs, baseline_sources, method_inputs, model_options,
                                          prepare_baselines, reusable_unit, run_protocol, shared_inputs,
                                          total_iterations, unit_inputs, unit_path, write_unit)
from fusion.segmentation.report import format_table, summarize
from fusion.utils.img_util import ImageReadError
from fusion.utils.option_schema import OptionError
from fusion.utils.seeded_samples import SeededSamples, sample_seed


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


# ---------------------------------------------------------------------------------------------- issue 16

def _copy_world(tmp_path):
    """Writable copies of the bundled pairs: ir, vi, label and one "method" folder."""
    for sub in ('ir', 'vi', 'label'):
        shutil.copytree(osp.join(MFNET, sub), tmp_path / sub, ignore=shutil.ignore_patterns('*.txt', '.*'))
    shutil.copytree(tmp_path / 'vi', tmp_path / 'method')
    return {k: str(tmp_path / k) for k in ('ir', 'vi', 'label', 'method')}


def _rewrite(path, delta=7):
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    cv2.imwrite(str(path), np.clip(img.astype(np.int32) + delta, 0, 255).astype(np.uint8))


def test_a_unit_is_reused_only_while_everything_it_depends_on_is_unchanged(tmp_path):
    """The recorded inputs cover the labels, the method's images, the sources of a baseline, the
    thread count and the settings; each change names itself in one line."""
    import torch
    world = _copy_world(tmp_path)
    info = load_dataset_info('mfnet')
    preset = load_preset(_tiny_preset(tmp_path, epochs=1))
    plan = RunPlan(False, 3, 1, None, [('seed0', 0)])
    inputs = SegmentationInputs(world['ir'], world['vi'], world['label'], {'m': world['method']}, NAMES[:4],
                                NAMES[4:], made_from={'m': [world['ir'], world['vi']]})

    def parts(preset=preset, plan=plan):
        return unit_inputs(shared_inputs(inputs, preset, info, plan, []), method_inputs(inputs, 'm'), 'seed0')
    path = unit_path(str(tmp_path / 'out'), 'm', 'seed0')
    write_unit(path, 'm', 'seed0', parts(), 1.0, np.eye(9, dtype=np.int64))
    saved, why = reusable_unit(path, parts())
    assert why is None and saved['confusion_matrix'][0][0] == 1

    def why_now(**kw):
        saved, why = reusable_unit(path, parts(**kw))
        assert saved is None
        return why
    _rewrite(tmp_path / 'method' / '00104D.png')
    assert why_now() == "the method's images changed (names, sizes or contents)"
    write_unit(path, 'm', 'seed0', parts(), 1.0, np.eye(9, dtype=np.int64))
    _rewrite(tmp_path / 'ir' / '00701N.png')                  # a source behind a mean/max baseline
    assert 'the sources' in why_now() and '--ir/--vis' in why_now()
    write_unit(path, 'm', 'seed0', parts(), 1.0, np.eye(9, dtype=np.int64))
    label = cv2.imread(str(tmp_path / 'label' / '00101D.png'), cv2.IMREAD_UNCHANGED)
    label[:4, :4] = 1
    cv2.imwrite(str(tmp_path / 'label' / '00101D.png'), label)
    assert why_now() == 'the label images changed (names, sizes or contents)'
    write_unit(path, 'm', 'seed0', parts(), 1.0, np.eye(9, dtype=np.int64))
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)
    try:
        assert 'thread count' in why_now()
    finally:
        torch.set_num_threads(threads)
    assert 'the preset' in why_now(preset=dict(preset, batch_size=2))
    assert 'the preset' in why_now(plan=RunPlan(False, 3, 2, None, [('seed0', 0)]))
    (tmp_path / 'old.json').write_text(json.dumps({'fingerprint': 'abc', 'confusion_matrix': [[1]]}))
    assert 'earlier version' in reusable_unit(str(tmp_path / 'old.json'), parts())[1]


def test_baseline_images_are_written_again_when_their_sources_change(tmp_path):
    world = _copy_world(tmp_path)
    info = load_dataset_info('mfnet')
    out = tmp_path / 'baselines'

    def prepare():
        return prepare_baselines(['mean', 'label'], world['ir'], world['vi'], world['label'], NAMES, str(out), info)
    folders = prepare()
    mean_file = osp.join(folders['mean'], '00104D.png')
    before = cv2.imread(mean_file, cv2.IMREAD_UNCHANGED).astype(np.int32)
    stamp = os.stat(mean_file).st_mtime_ns
    prepare()
    assert os.stat(mean_file).st_mtime_ns == stamp                      # unchanged sources: kept
    _rewrite(tmp_path / 'ir' / '00104D.png', delta=40)
    prepare()
    after = cv2.imread(mean_file, cv2.IMREAD_UNCHANGED).astype(np.int32)
    assert (after - before).mean() > 10                                 # the mean of the new IR
    assert baseline_sources(['ir', 'mean', 'label'], 'I', 'V', 'L') == {'mean': ['I', 'V'], 'label': ['L']}


def test_one_finished_seed_reports_its_count_and_no_std():
    info = load_dataset_info('mfnet')
    cm = np.diag(np.arange(1, 10)).astype(np.int64)
    cm2 = cm.copy()
    cm2[1, 2] = 5
    summary = summarize({'one': {'seed0': cm}, 'two': {'seed0': cm, 'seed1': cm2}}, info, [0, 1])
    one, two = summary['methods']['one'], summary['methods']['two']
    assert one['units'] == 1 and one['miou_std'] is None and one['pixel_acc_std'] is None
    assert two['units'] == 2 and two['miou_std'] > 0
    table = format_table(summary)
    assert '| seeds |' in table
    row = [line for line in table.splitlines() if line.startswith('| one ')][0]
    assert '(std n/a) | 1 |' in row


def test_cpu_preset_is_a_fixed_step_budget():
    """The same 112 steps on 35 training pairs as on the 119-pair MFNet split (8 epochs x 14
    batches there), so small sets learn too; the paper preset keeps its epochs."""
    cpu, paper = load_preset('cpu'), load_preset('paper')
    assert total_iterations(cpu, 119) == 8 * (119 // 8) == 112
    assert total_iterations(cpu, 35) == 112
    assert total_iterations(paper, 119) == 100 * (119 // 8)


def test_presets_and_dataset_files_go_through_the_option_validator(tmp_path):
    def preset_error(**over):
        with pytest.raises(OptionError) as err:
            load_preset(_tiny_preset(tmp_path, **over))
        return str(err.value)
    network = {'type': 'SMPSegmenter', 'arch': 'Unet', 'encoder_nme': 'resnet18'}
    assert 'network.encoder_nme: unknown option (did you mean encoder_name?)' in preset_error(network=network)
    assert 'batch_size: expected an integer' in preset_error(batch_size='eight')
    assert 'test_batch_size: unknown option' in preset_error(test_batch_size=4)
    assert 'optim.type' in preset_error(optim={'type': 'AdamX', 'lr': 1e-3})
    assert 'exactly one of iterations' in preset_error(iterations=5)
    assert 'size: must be [H, W]' in preset_error(size=[64])
    assert 'network.num_classes: comes from the dataset file' in preset_error(
        network={'type': 'SMPSegmenter', 'num_classes': 3})
    assert load_preset(_tiny_preset(tmp_path, optim={'type': 'AdamW', 'lr': '2e-3'}))['optim']['lr'] == 2e-3
    bad = tmp_path / 'dataset_bad.yml'
    bad.write_text(yaml.safe_dump({'classes': ['a', 'b'], 'palete': [[0, 0, 0], [1, 1, 1]]}))
    with pytest.raises(OptionError, match=r'dataset_bad\.yml: palete: unknown option \(did you mean palette\?\)'):
        load_dataset_info(str(bad))
    bad.write_text(yaml.safe_dump({'classes': ['a', 'b'], 'palette': [[0, 0, 0]]}))
    with pytest.raises(OptionError, match='palette: 1 colours for 2 classes'):
        load_dataset_info(str(bad))


@pytest.mark.slow
def test_protocol_results_equal_the_documented_seeded_loop_and_regenerated_images_rerun(tmp_path):
    """A reference loop written from the documentation (seed the RNGs, build the model, one
    permutation per epoch from a generator seeded by the seed, each sample loaded with RNGs seeded
    from (seed, epoch, position)) gives the protocol's confusion matrix exactly; then a method's
    images regenerated in place are scored again, not reused."""
    import random

    import torch
    from basicsr.models import build_model
    world = _copy_world(tmp_path)
    info = load_dataset_info('mfnet')
    preset = load_preset(_tiny_preset(tmp_path, epochs=None, iterations=3, batch_size=2, scale_range=[0.8, 1.2]))
    inputs = SegmentationInputs(world['ir'], world['vi'], world['label'], {'m': world['method']}, NAMES[:4],
                                NAMES[4:])
    result = run_protocol(inputs, preset, info, [4], str(tmp_path / 'out'))
    assert not result.failed

    from fusion.data.segmentation_dataset import SegmentationDataset
    from fusion.segmentation.protocol import class_weights
    common = {'dataroot_img': world['method'], 'dataroot_label': world['label'], 'num_classes': 9,
              'ignore_index': 255, 'classes': info['classes'], 'palette': info['palette'], 'size': [64, 96],
              'cache': True}
    train = SegmentationDataset(dict(common, name='t', use_hflip=True, scale_range=[0.8, 1.2]), names=NAMES[:4])
    test = SegmentationDataset(dict(common, name='v', label_full_res=True), names=NAMES[4:])
    weight = class_weights(world['label'], NAMES[:4], info, [64, 96])
    random.seed(4)
    np.random.seed(4)
    torch.manual_seed(4)
    model = build_model(model_options(preset, info, 3, weight))
    samples, order_gen, step, epoch = SeededSamples(train), torch.Generator().manual_seed(4), 0, 0
    while step < 3:
        order = torch.randperm(4, generator=order_gen).tolist()
        for b in range(2):
            if step < 3:
                items = [samples[(order[p], sample_seed(4, epoch, p))] for p in (2 * b, 2 * b + 1)]
                model.feed_data({'img': torch.stack([x['img'] for x in items]),
                                 'label': torch.stack([x['label'] for x in items])})
                step += 1
                model.optimize_parameters(step)
        epoch += 1
    from fusion.metrics.segmentation_metrics import confusion_matrix
    cm = sum(confusion_matrix(model.predict(test[i]['img'][None], test[i]['label'].shape[-2:])[0], test[i]['label'],
                              9, 255) for i in range(len(test)))
    np.testing.assert_array_equal(result.confusions['m']['seed4'], cm)

    again = run_protocol(inputs, preset, info, [4], str(tmp_path / 'out'))
    assert again.reused == 1 and not again.rerun
    for name in NAMES:
        _rewrite(tmp_path / 'method' / f'{name}.png', delta=-60)     # the method's images regenerated in place
    third = run_protocol(inputs, preset, info, [4], str(tmp_path / 'out'))
    assert third.reused == 0 and 'images changed' in third.rerun['m/seed4']
    assert not np.array_equal(third.confusions['m']['seed4'], cm)


@pytest.mark.slow
def test_small_set_benchmark_prints_every_field_it_documents(tmp_path):
    """scripts/benchmarks/benchmark_segmentation.py in a tiny configuration (the bundled pairs, a
    one-step preset): the JSON has the control, the real inputs with their finished seeds, and the
    smallest resolvable difference."""
    preset = _tiny_preset(tmp_path, epochs=None, iterations=1, batch_size=2, seeds=2)
    proc = subprocess.run([sys.executable, osp.join(ROOT, 'scripts', 'benchmarks', 'benchmark_segmentation.py'),
                           '--data', MFNET, '--pairs', '6', '--split', '0.5', '--seeds', '2', '--preset', preset,
                           '--work', str(tmp_path / 'work')], capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, OMP_NUM_THREADS='1', CUDA_VISIBLE_DEVICES=''))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout[proc.stdout.index('{'):])
    assert report['train_pairs'] == 3 and report['test_pairs'] == 3 and report['iterations'] == 1
    assert set(report['methods']) == {'sage', 'label', 'ir', 'vis', 'mean', 'max'}
    assert all(m['seeds_finished'] == 2 and m['miou_std'] is not None for m in report['methods'].values())
    assert report['control_miou'] == report['methods']['label']['miou']
    real = [report['methods'][m]['miou'] for m in ('sage', 'ir', 'vis', 'mean', 'max')]
    assert report['best_real_miou'] == max(real)
    stds = [report['methods'][m]['miou_std'] for m in ('sage', 'ir', 'vis', 'mean', 'max')]
    assert report['real_seed_std_pooled'] == pytest.approx(np.sqrt(np.mean(np.square(stds))))
    assert report['smallest_resolvable_difference'] == pytest.approx(4.303 * report['real_seed_std_pooled'])
    assert report['cpu']['flags'] is not None and 'load_avg' in report
