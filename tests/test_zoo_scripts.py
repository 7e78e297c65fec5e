"""The zoo through its entry points, on tiny generated pairs and randomly initialised weights saved
in the authors' file format: scripts/inference.py --method, fusion/test.py with a zoo YAML,
scripts/compare_methods.py, scripts/verify_zoo.py and scripts/benchmarks/benchmark_zoo.py, and
their one-line errors."""
import json
import os
import os.path as osp
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from conftest import BENCHMARKS, ROOT

from fusion.archs.ifcnn_arch import IFCNNNet
from fusion.archs.seafusion_arch import SeAFusionNet


pytestmark = pytest.mark.slow  # subprocesses through the real entry points


def _run(args, cwd=ROOT):
    env = dict(os.environ, OMP_NUM_THREADS='1')
    return subprocess.run([sys.executable] + [str(a) for a in args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env=env)


@pytest.fixture
def pairs(tmp_path):
    rng = np.random.default_rng(0)
    for sub in ('ir', 'vi'):
        (tmp_path / sub).mkdir()
    for name, (h, w) in (('a', (48, 64)), ('b', (44, 60))):
        cv2.imwrite(str(tmp_path / 'ir' / f'{name}.png'), rng.integers(0, 256, (h, w), dtype=np.uint8))
        cv2.imwrite(str(tmp_path / 'vi' / f'{name}.png'), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    return tmp_path


@pytest.fixture
def weights(tmp_path):
    """A weights folder laid out as the peers collection: <Folder>/<file as published>."""
    root = tmp_path / 'weights'
    (root / 'SeAFusion').mkdir(parents=True)
    torch.save(SeAFusionNet().state_dict(), root / 'SeAFusion' / 'SeAFusion.pth')
    (root / 'IFCNN').mkdir()
    torch.save(IFCNNNet().state_dict(), root / 'IFCNN' / 'IFCNN-MAX.pth')
    return root


def test_inference_script_fuses_with_a_zoo_method_and_fails_in_one_line(pairs, weights):
    out = pairs / 'out'
    ok = _run(['scripts/inference.py', '--method', 'seafusion', '--weights', weights / 'SeAFusion', '--ir',
               pairs / 'ir', '--vis', pairs / 'vi', '--output', out, '--device', 'cpu'])
    assert ok.returncode == 0, ok.stderr[-2000:]
    img = cv2.imread(str(out / 'a.png'))
    assert img.shape == (48, 64, 3) and img.min() == 0  # SeAFusion's save step: min-max per image, floor
    cases = [
        (['--method', 'seafuson', '--weights', weights / 'SeAFusion'], 'closest: seafusion'),
        (['--method', 'ifcnn'], 'needs its authors\' IFCNN-MAX.pth'),
        (['--method', 'ifcnn', '--weights', weights / 'SeAFusion'], 'weights of seafusion, not of ifcnn'),
        (['--method', 'ifcnn', '--weights', pairs / 'nothing.pth'], 'no such file'),
    ]
    for extra, message in cases:
        bad = _run(['scripts/inference.py', *extra, '--ir', pairs / 'ir', '--vis', pairs / 'vi', '--output',
                    pairs / 'bad', '--device', 'cpu'])
        lines = bad.stderr.strip().splitlines()
        assert bad.returncode == 1 and len(lines) == 1 and lines[0].startswith('error:') and message in lines[0], \
            bad.stderr
    assert not (pairs / 'bad').exists()


def test_image_smaller_than_the_minimum_is_one_line(pairs, weights, tmp_path, monkeypatch):
    from fusion.inference import fuse_folders
    from fusion.zoo import build_zoo_method
    net = build_zoo_method('ifcnn', str(weights / 'IFCNN'), conventions={'min_size': 46})
    with pytest.raises(ValueError, match=r'b\.png: IFCNN: a 60x44 \(WxH\) image is smaller than .* 46x46'):
        fuse_folders(str(pairs / 'ir'), str(pairs / 'vi'), str(tmp_path / 'small'), net, progress=False)


def test_test_py_runs_a_zoo_yaml(pairs, weights, tmp_path):
    text = open(osp.join(ROOT, 'options', 'zoo', 'test_seafusion.yml')).read()
    text = (text.replace('datasets/M3FD/ir', str(pairs / 'ir')).replace('datasets/M3FD/vi', str(pairs / 'vi'))
            .replace('../shared/peers/weights/SeAFusion', str(weights / 'SeAFusion' / 'SeAFusion.pth'))
            .replace('path:\n', f'path:\n  results_root: {tmp_path / "results"}\n', 1))
    opt = tmp_path / 'test.yml'
    opt.write_text(text)
    result = _run([osp.join(ROOT, 'fusion', 'test.py'), '-opt', opt], cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    written = tmp_path / 'results' / 'visualization' / 'M3FD'
    assert sorted(p.name for p in written.iterdir()) == ['a.png', 'b.png']
    # the YAML pipeline writes what scripts/inference.py writes (same conventions, same save step)
    same = _run(['scripts/inference.py', '--method', 'seafusion', '--weights', weights / 'SeAFusion', '--ir',
                 pairs / 'ir', '--vis', pairs / 'vi', '--output', tmp_path / 'cli', '--device', 'cpu'])
    assert same.returncode == 0, same.stderr[-2000:]
    for name in ('a.png', 'b.png'):
        np.testing.assert_array_equal(cv2.imread(str(written / name)), cv2.imread(str(tmp_path / 'cli' / name)))


def test_compare_methods_fuses_scores_profiles_and_skips(pairs, weights, tmp_path):
    (weights / 'IFCNN' / 'IFCNN-MAX.pth').unlink()
    out = tmp_path / 'cmp'
    result = _run(['scripts/compare_methods.py', '--ir', pairs / 'ir', '--vis', pairs / 'vi', '--methods', 'sage',
                   'seafusion', 'ifcnn', '--weights-dir', weights, '--out', out, '--device', 'cpu', '--skip', 'fmi',
                   '--profile-size', '32x48', '--latency-repeats', '1', '--grid-images', '2', '--quiet'])
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'ifcnn: skipped, weights missing' in result.stderr
    assert sorted(p.name for p in (out / 'fused').iterdir()) == ['sage', 'seafusion']
    for f in ('metrics.json', 'metrics.csv', 'metrics.md', 'comparison.png', 'methods.json', 'methods.md'):
        assert (out / f).is_file(), f
    profiles = json.loads((out / 'methods.json').read_text())
    rows = {r['method']: r for r in profiles['methods']}
    assert rows['seafusion']['params'] == sum(p.numel() for p in SeAFusionNet().parameters())
    assert rows['sage']['flops'] > 0 and rows['seafusion']['cpu_latency']['median_ms'] > 0
    assert 'ifcnn' in profiles['skipped']
    assert set(json.loads((out / 'metrics.json').read_text())) == {'sage', 'seafusion'}


def test_verify_zoo_reports_psnr_per_reference_set(pairs, weights, tmp_path):
    missing = _run(['scripts/verify_zoo.py', '--peers', tmp_path / 'no_peers', '--out', tmp_path / 'v'])
    assert missing.returncode == 1 and missing.stderr.strip().startswith('error: --peers')
    # a miniature collection: TNO-style inputs and "published" images made by the method itself,
    # one of them disturbed
    peers = tmp_path / 'peers'
    for sub in ('tno/ir', 'tno/vi', 'tno/fused/SeAFusion'):
        (peers / sub).mkdir(parents=True)
    for name in ('a', 'b'):
        for src, dst in (('ir', 'ir'), ('vi', 'vi')):
            (peers / 'tno' / dst / f'{name}.png').write_bytes((pairs / src / f'{name}.png').read_bytes())
    made = _run(['scripts/inference.py', '--method', 'seafusion', '--weights', weights / 'SeAFusion', '--ir',
                 peers / 'tno' / 'ir', '--vis', peers / 'tno' / 'vi', '--output', peers / 'tno' / 'fused' / 'SeAFusion',
                 '--device', 'cpu'])
    assert made.returncode == 0, made.stderr[-2000:]
    ref_b = peers / 'tno' / 'fused' / 'SeAFusion' / 'b.png'
    img = cv2.imread(str(ref_b))
    img[0, 0] = 255 - img[0, 0]
    cv2.imwrite(str(ref_b), img)
    (weights / 'IFCNN' / 'IFCNN-MAX.pth').unlink()
    result = _run(['scripts/verify_zoo.py', '--methods', 'seafusion', 'ifcnn', '--peers', peers, '--weights-dir',
                   weights, '--out', tmp_path / 'v'])
    assert result.returncode == 0, result.stderr[-2000:]
    assert 'ifcnn: skipped, no IFCNN-MAX.pth' in result.stderr
    report = json.loads((tmp_path / 'v' / 'verify_zoo.json').read_text())['methods']
    sets = {s['set']: s for s in report[0]['sets']}
    assert sets['tno']['per_image']['a'] == 999.0 and 30 < sets['tno']['per_image']['b'] < 999
    assert sets['tno']['psnr']['min'] == sets['tno']['per_image']['b']
    assert 'missing' in sets['vifb']  # not in the miniature collection: reported, not fatal
    assert '| SeAFusion | tno (SeAFusion) | 2 |' in (tmp_path / 'v' / 'verify_zoo.md').read_text()


def test_benchmark_zoo_compares_fast_and_plain(monkeypatch, capsys):
    import runpy
    monkeypatch.syspath_prepend(BENCHMARKS)
    monkeypatch.setattr(sys, 'argv', ['benchmark_zoo.py', '--methods', 'seafusion', 'ifcnn', '--size', '32x48',
                                      '--repeats', '1', '--warmup', '0'])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(osp.join(BENCHMARKS, 'benchmark_zoo.py'), run_name='__main__')
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    report = json.loads(out[out.index('{'):])
    for row in report['methods']:
        assert row['has_fast_form'] and row['max_abs_diff'] <= 1e-5 and row['speedup'] > 0 and row['flops'] > 0
