"""scripts/evaluate.py (and fusion.metrics.evaluation), scripts/baseline_fusion.py and the benchmark's
JSON output on small real images."""
import csv
import importlib.util
import json
import math
import os.path as osp
import shutil

import cv2
import numpy as np
import pytest
from conftest import BENCHMARKS, ROOT

from fusion.metrics import DEFAULT_METRICS
from fusion.metrics.evaluation import evaluate_folders


DATA = osp.join(ROOT, 'tests', 'data', 'metrics')
TNO = osp.join(ROOT, 'datasets', 'TNO')

with open(osp.join(DATA, 'reference_values.json')) as _f:
    CASES = {c['id']: c for c in json.load(_f)['cases']}


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"_script_{name.replace('/', '_')}",
                                                  osp.join(ROOT, 'scripts', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def evaluate():
    return _script('evaluate')


@pytest.fixture
def crops(tmp_path):
    """ir/, vi/ and a method folder (the reference fused crops) of the four 64x64 crops, PNG names."""
    names = ['SAGE_00000_c64', 'TNO_01_max_c64', 'TNO_07_mean_c64', 'TNO_10_max_c64']
    for sub, suffix in (('ir', 'ir'), ('vi', 'vi'), ('ref', 'fused')):
        (tmp_path / sub).mkdir()
        for name in names:
            shutil.copy(osp.join(DATA, 'crops', f'{name}_{suffix}.png'), tmp_path / sub / f'{name}.png')
    return tmp_path


@pytest.mark.slow
def test_evaluate_tno_with_baselines_matches_reference(evaluate, tmp_path, capsys):
    """End to end on datasets/TNO: written baseline files as a method, the on-the-fly baselines, and
    image 001 against the reference values of TNO_01_mean / TNO_01_max (FMI skipped: slow)."""
    assert _script('baseline_fusion').main(['--ir', f'{TNO}/ir', '--vis', f'{TNO}/vi', '--out',
                                            str(tmp_path / 'base')]) == 0
    out = tmp_path / 'eval'
    rc = evaluate.main(['--ir', f'{TNO}/ir', '--vis', f'{TNO}/vi', '--fused', f'meanfiles={tmp_path}/base/mean',
                        '--baseline', 'mean', 'max', '--skip', 'fmi', '--out', str(out), '--quiet'])
    printed = capsys.readouterr().out
    assert rc == 0
    assert 'baseline-max' in printed and 'QABF↑' in printed and 'NABF↓' in printed
    metrics = [m for m in DEFAULT_METRICS if m != 'fmi']
    result = json.loads((out / 'metrics.json').read_text())
    assert list(result) == ['meanfiles', 'baseline-mean', 'baseline-max']
    assert list(result['baseline-max']['per_image']) == ['001', '002']
    assert list(result['baseline-max']['mean']) == metrics
    # the written files and the in-memory baseline are the same images
    assert result['meanfiles'] == result['baseline-mean']
    keys = {'en': 'EN', 'sd': 'SD', 'sf': 'SF', 'ag': 'AG', 'mi': 'MI', 'scd': 'SCD', 'vif': 'VIFF', 'qabf': 'Qabf',
            'ssim': 'SSIM', 'psnr': 'PSNR', 'cc': 'CC'}
    for method, case in (('baseline-mean', 'TNO_01_mean'), ('baseline-max', 'TNO_01_max')):
        ours = result[method]['per_image']['001']
        ref = CASES[case]['cddfuse_evaluator_float64_input']
        for name, key in keys.items():
            assert ours[name] == pytest.approx(ref[key], rel=1e-9), (method, name)
        assert ours['nabf'] == pytest.approx(CASES[case]['tang_python_port']['Nabf_0_255'], rel=1e-9)
        assert ours['ms_ssim'] == pytest.approx(CASES[case]['tang_python_port']['MEF_MS_SSIM'], rel=1e-9)
        per_image = result[method]['per_image']
        mean_qabf = (per_image['001']['qabf'] + per_image['002']['qabf']) / 2
        assert result[method]['mean']['qabf'] == pytest.approx(mean_qabf)

    with open(out / 'metrics.csv') as f:
        rows = list(csv.reader(f))
    assert rows[0] == ['method'] + metrics + ['convention'] and [r[0] for r in rows[1:]] == list(result)
    assert {r[-1] for r in rows[1:]} == {'cddfuse'} and result['baseline-max']['convention'] == 'cddfuse'
    assert float(rows[3][1 + metrics.index('sd')]) == pytest.approx(result['baseline-max']['mean']['sd'])
    with open(out / 'metrics_per_image.csv') as f:
        assert len(list(csv.reader(f))) == 1 + 3 * 2
    markdown = (out / 'metrics.md').read_text()
    assert '| baseline-max |' in markdown and '![comparison](comparison.png)' in markdown and '**' in markdown
    picture = cv2.imread(str(out / 'comparison.png'))
    tile_w = round(240 * 768 / 576)  # tiles keep the first pair's aspect ratio
    assert picture.shape == (28 + 2 * 240, 5 * tile_w, 3)  # header + 2 pairs; IR, VIS, 3 methods


@pytest.mark.slow
def test_fused_folder_with_colour_images_and_other_extension(evaluate, crops, capsys):
    """Colour JPEG-free variant: a colour copy of the fused crops (grey replicated into 3 channels,
    saved as .bmp) gives the same numbers, FMI included; --json writes where asked."""
    (crops / 'colour').mkdir()
    for path in sorted((crops / 'ref').iterdir()):
        grey = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        cv2.imwrite(str(crops / 'colour' / (path.stem + '.bmp')), cv2.merge([grey, grey, grey]))
    json_path = crops / 'elsewhere' / 'scores.json'
    rc = evaluate.main(['--ir', str(crops / 'ir'), '--vis', str(crops / 'vi'), '--fused', f'ref={crops}/ref',
                        f'colour={crops}/colour', '--out', str(crops / 'out'), '--json', str(json_path), '--quiet'])
    capsys.readouterr()
    assert rc == 0
    result = json.loads(json_path.read_text())
    assert result['ref'] == result['colour']
    assert list(result['ref']['mean']) == list(DEFAULT_METRICS)
    # SCD of TNO_10_max_c64 (F == IR) is undefined: null in JSON, left out of the mean
    assert result['ref']['per_image']['TNO_10_max_c64']['scd'] is None
    scds = [v['scd'] for v in result['ref']['per_image'].values() if v['scd'] is not None]
    assert result['ref']['mean']['scd'] == pytest.approx(np.mean(scds))
    assert 'scd x1' in (crops / 'out' / 'metrics.md').read_text()
    assert not (crops / 'out' / 'metrics.json').exists()


@pytest.mark.slow
def test_missing_files_are_named(evaluate, crops, capsys):
    (crops / 'ref' / 'TNO_07_mean_c64.png').unlink()
    rc = evaluate.main(['--ir', str(crops / 'ir'), '--vis', str(crops / 'vi'), '--fused', f'ref={crops}/ref',
                        '--out', str(crops / 'out'), '--quiet'])
    err = capsys.readouterr().err
    assert rc == 2
    assert f'{crops}/ir/TNO_07_mean_c64.png has no ref partner' in err
    assert f'{crops}/vi/TNO_07_mean_c64.png has no ref partner' in err
    assert not (crops / 'out').exists()


@pytest.mark.slow
def test_mismatched_and_unreadable_files_are_named_and_left_out(evaluate, crops, capsys):
    small = cv2.imread(str(crops / 'ref' / 'TNO_01_max_c64.png'), cv2.IMREAD_UNCHANGED)[:50, :60]
    cv2.imwrite(str(crops / 'ref' / 'TNO_01_max_c64.png'), small)
    (crops / 'ref' / 'SAGE_00000_c64.png').write_bytes(b'not a png')
    rc = evaluate.main(['--ir', str(crops / 'ir'), '--vis', str(crops / 'vi'), '--fused', f'ref={crops}/ref',
                        '--baseline', 'max', '--skip', 'fmi', 'ms_ssim', '--out', str(crops / 'out'), '--quiet'])
    captured = capsys.readouterr()
    assert rc == 1
    assert 'TNO_01_max_c64.png is 60x50 (WxH) but the infrared' in captured.err
    assert 'SAGE_00000_c64.png: cannot decode' in captured.err
    result = json.loads((crops / 'out' / 'metrics.json').read_text())
    # left out of every method, so the means cover the same images
    assert sorted(result['ref']['per_image']) == sorted(result['baseline-max']['per_image']) == [
        'TNO_07_mean_c64', 'TNO_10_max_c64']
    assert 'fmi' not in result['ref']['mean'] and 'ms_ssim' not in result['ref']['mean']
    assert '## Images left out' in (crops / 'out' / 'metrics.md').read_text()


def test_image_too_small_for_a_metric_is_named(crops):
    small = cv2.imread(str(crops / 'ir' / 'TNO_07_mean_c64.png'), cv2.IMREAD_UNCHANGED)[:30, :30]
    for sub in ('ir', 'vi', 'ref'):
        cv2.imwrite(str(crops / sub / 'TNO_07_mean_c64.png'), small)
    result = evaluate_folders(str(crops / 'ir'), str(crops / 'vi'), {'ref': str(crops / 'ref')},
                              metrics=['en', 'vif'], progress=False)
    assert result.problems == ['TNO_07_mean_c64: ref: VIF needs images of at least 41x41 pixels (4 scales), got 30x30']
    assert len(result.images) == 3


def test_bad_arguments(evaluate, crops, capsys):
    args = ['--ir', str(crops / 'ir'), '--vis', str(crops / 'vi'), '--out', str(crops / 'out'), '--quiet']
    assert evaluate.main(args + ['--fused', 'nodir']) == 2
    assert 'NAME=DIR' in capsys.readouterr().err
    assert evaluate.main(args + ['--fused', f'ir={crops}/ref']) == 2
    assert 'invalid method name' in capsys.readouterr().err
    assert evaluate.main(args + ['--fused', f'x={crops}/nowhere']) == 2
    assert 'no such folder' in capsys.readouterr().err
    assert evaluate.main(args + ['--baseline', 'max', '--metrics', 'en', 'qcb']) == 2
    assert 'unknown metric' in capsys.readouterr().err
    assert evaluate.main(args) == 2
    assert 'nothing to evaluate' in capsys.readouterr().err


def test_parallel_workers_give_the_same_values(crops):
    kwargs = dict(baselines=['mean'], metrics=['en', 'qabf', 'vif', 'nabf'], progress=False)
    serial = evaluate_folders(str(crops / 'ir'), str(crops / 'vi'), {'ref': str(crops / 'ref')}, **kwargs)
    parallel = evaluate_folders(str(crops / 'ir'), str(crops / 'vi'), {'ref': str(crops / 'ref')}, workers=2, **kwargs)
    assert serial.per_image == parallel.per_image and serial.images == parallel.images
    assert all(math.isfinite(v) for v in serial.means()['ref'].values())


@pytest.mark.slow
def test_benchmark_prints_json(capsys, monkeypatch):
    monkeypatch.syspath_prepend(BENCHMARKS)  # where the script finds bench_util
    bench = _script('benchmarks/benchmark_metrics')
    crop = osp.join(DATA, 'crops')
    assert bench.main(['--ir', f'{crop}/TNO_07_mean_c64_ir.png', '--vis', f'{crop}/TNO_07_mean_c64_vi.png',
                       '--fused', f'{crop}/TNO_07_mean_c64_fused.png', '--repeat', '1',
                       '--metrics', 'en', 'mi', 'ssim', '--conventions', 'tang', 'vifb', '--convention-size', '64x80',
                       '--convention-repeat', '1']) == 0
    report = json.loads(capsys.readouterr().out)
    # every metric of each convention timed, under the toolbox's names, on the requested size
    assert list(report['conventions']) == ['tang', 'vifb'] and report['conventions_size'] == '64x80'
    assert list(report['conventions']['tang']['metrics'])[:2] == ['EN', 'SD']
    assert len(report['conventions']['vifb']['metrics']) == 13 and report['conventions']['vifb']['channels'] == 3
    assert all(t['median_s'] > 0 for t in report['conventions']['vifb']['metrics'].values())
    assert report['image']['shape_hw'] == [64, 64]
    assert set(report['metrics']) == {'en', 'mi', 'ssim'}
    assert report['metrics']['mi']['value_rel_diff'] < 1e-12  # our MI == the contingency-table MI
    assert report['metrics']['ssim']['value_rel_diff'] < 1e-4  # == scikit-image in float32
    assert report['metrics']['en']['recorded_reference_median_s'] > 0
