"""scripts/benchmarks/gpu_checks.py: the dry run executes every check at toy sizes on the CPU (so
the GPU script cannot rot between GPU sessions), writes its JSON and Markdown, and a failing or
hanging check is recorded without stopping the others."""
import json
import os
import os.path as osp
import subprocess
import sys

import pytest
from conftest import BENCHMARKS, ROOT


pytestmark = pytest.mark.slow  # child processes, torchrun

SCRIPT = osp.join(BENCHMARKS, 'gpu_checks.py')


def _run(out: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS='1', CUDA_VISIBLE_DEVICES='')
    return subprocess.run([sys.executable, SCRIPT, '--out', out, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


def test_dry_run_executes_every_check(tmp_path):
    proc = _run(str(tmp_path), '--dry-run')
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.load(open(tmp_path / 'gpu_checks.json'))
    assert report['mode'] == 'dry-run' and report['failed'] == []
    assert list(report['checks']) == ['inference', 'training', 'ddp_resume', 'sam_masks', 'teacher', 'zoo']
    checks = report['checks']
    for name in ('inference', 'training', 'ddp_resume', 'sam_masks', 'teacher'):
        assert checks[name]['status'] == 'pass', (name, checks[name]['error'])
    try:
        import fusion.zoo  # noqa: F401
        assert checks['zoo']['status'] == 'pass', checks['zoo']['error']
        assert checks['zoo']['numbers']['methods']
    except ImportError:
        assert checks['zoo']['status'] == 'skipped'
    inference = checks['inference']['numbers']['sizes']
    for row in inference.values():
        assert row['fast_fp32']['max_abs_diff_vs_exact_fp32'] < 1e-4
        assert row['plain_fp32']['median_ms'] > 0
    assert 'fast_fp16' in checks['inference']['numbers']['skipped_variants']  # CUDA only
    training = checks['training']['numbers']['variants']
    assert training['fp32']['losses_finite'] and training['fp32']['losses']
    resume = checks['ddp_resume']['numbers']['processes']['1']
    assert resume['backend'] == 'gloo' and resume['bitwise_equal']
    assert checks['sam_masks']['numbers']['images'] == 8
    assert checks['teacher']['numbers']['modes']['fwdbwd']['sdpa']['median_ms'] > 0
    summary = (tmp_path / 'gpu_checks.md').read_text()
    assert '| ddp_resume | pass |' in summary


def test_a_failing_check_is_recorded_and_the_next_still_runs(tmp_path):
    proc = _run(str(tmp_path), '--dry-run', '--only', 'inference', 'sam_masks', '--fail-check', 'inference')
    assert proc.returncode == 1
    report = json.load(open(tmp_path / 'gpu_checks.json'))
    assert report['checks']['inference']['status'] == 'fail'
    assert 'injected' in report['checks']['inference']['error']
    assert report['checks']['sam_masks']['status'] == 'pass'
    assert report['failed'] == ['inference']


def test_a_hanging_check_times_out_with_one_line():
    sys.path.insert(0, BENCHMARKS)
    try:
        import gpu_checks
    finally:
        sys.path.remove(BENCHMARKS)
    result = gpu_checks.run_check('teacher', 'cpu', dry_run=True, timeout=0.2)
    assert result['status'] == 'fail' and result['error'] == 'timed out after 0 s'
