"""The benchmark scripts of scripts/benchmarks/ run and print their JSON fields (tiny sizes: the
numbers themselves are measured by running the scripts, see docs/benchmarks.md)."""
import json
import runpy
import sys

import pytest
from conftest import BENCHMARKS


def _run(script: str, monkeypatch, capsys, *args: str) -> dict:
    monkeypatch.syspath_prepend(BENCHMARKS)  # where the scripts find bench_util
    monkeypatch.setattr(sys, 'argv', [script, *args])
    try:
        runpy.run_path(f'{BENCHMARKS}/{script}', run_name='__main__')
    except SystemExit as exit_:
        assert not exit_.code, capsys.readouterr().err
    out = capsys.readouterr().out
    return json.loads(out[out.index('\n{') + 1:] if not out.startswith('{') else out)


@pytest.mark.slow
def test_inference_benchmark_reports_the_speedup(monkeypatch, capsys):
    report = _run('benchmark_inference.py', monkeypatch, capsys, '--device', 'cpu', '--sizes', '64x96',
                  '--speedup-size', '64x96', '--repeats', '2', '--warmup', '1', '--no-teacher', '--batch', '2')
    assert report['student_speedup'] > 0
    rows = {r['model']: r for r in report['rows']}
    assert rows['student_ours']['max_abs_diff_vs_exact'] < 1e-5
    assert report['meta']['cpu']['name']


@pytest.mark.slow
def test_teacher_benchmark_compares_attention_implementations(monkeypatch, capsys):
    report = _run('benchmark_teacher.py', monkeypatch, capsys, '--size', '32', '48', '--repeats', '1',
                  '--no-memory')
    assert report['speedup'] > 0 and report['max_abs_diff_fused_sdpa_vs_plain'] < 1e-4
