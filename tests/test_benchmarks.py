"""Every benchmark of scripts/benchmarks/ runs in a tiny configuration and prints every JSON field
that docs/benchmarks.md ("What each benchmark prints") names for it, each with a value of the right
type and range (the numbers themselves are measured by running the scripts, see docs/benchmarks.md).

Table-driven: a new benchmark gets a row in that docs table (its fields) and an entry in ``CASES``
below (tiny arguments and a check per field). ``test_every_benchmark_is_documented_and_checked``
fails for a ``benchmark_*.py`` script without both, and for a documented field without a check.
"""
import json
import logging
import math
import os
import os.path as osp
import re
import runpy
import sys
from typing import Any, Callable, Dict, List, NamedTuple, Tuple

import pytest
import yaml
from conftest import BENCHMARKS, ROOT, torch_threads
from test_training import _train_options


DOC = osp.join(ROOT, 'docs', 'benchmarks.md')
MFNET = osp.join(ROOT, 'datasets', 'MFNet')
SECTION = '### What each benchmark prints'


# ---------------------------------------------------------------------------------------------- checks
class Check(NamedTuple):
    what: str
    ok: Callable[[Any], bool]


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


POSITIVE = Check('a positive number', lambda v: _number(v) and v > 0)
NONNEG = Check('a number >= 0', lambda v: _number(v) and v >= 0)
COUNT = Check('an integer >= 1', lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1)
TEXT = Check('a non-empty string', lambda v: isinstance(v, str) and bool(v.strip()))
FLAG = Check('true/false', lambda v: isinstance(v, bool))
CLOSE = Check('a difference in [0, 0.05)', lambda v: _number(v) and 0 <= v < 0.05)
HXW = Check('a size HxW', lambda v: isinstance(v, str) and re.fullmatch(r'\d+x\d+', v) is not None)
COUNTS = Check('a non-empty list of integers >= 1', lambda v: isinstance(v, list) and bool(v)
               and all(COUNT.ok(x) for x in v))
TEXTS = Check('a list of strings', lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v))


def _one_of(*values: Any) -> Check:
    return Check(f'one of {values}', lambda v: v in values)


# ---------------------------------------------------------------------------------------------- the table
class Case(NamedTuple):
    key: str  # the docs table's first column: the script, and a mode flag where one script has two rows
    args: Callable[[str], List[str]]  # tmp folder -> command-line arguments (tiny sizes, 1 thread)
    checks: Dict[str, Check]  # documented field -> its check
    extra: Callable[[dict], None] = lambda report: None  # further assertions on the report


def _tiny_options(tmp: str) -> str:
    """The tiny SAGE recipe of tests/test_training.py (bundled data, tiny networks) as a file."""
    path = osp.join(tmp, 'tiny.yml')
    if not osp.isfile(path):
        yaml.safe_dump(_train_options('bench_tiny'), open(path, 'w'), sort_keys=False)
    return path


def _inference_extra(report: dict) -> None:
    rows = {r['model']: r for r in report['rows']}
    assert rows['student_ours']['max_abs_diff_vs_exact'] < 1e-5  # the deploy-time network is exact


def _training_extra(report: dict) -> None:
    assert set(report['variants']) == {'fp32', 'bf16'} and report['variants']['fp32']['speedup_vs_fp32'] == 1.0
    a, b = (report['variants'][v]['first_losses']['l_g_total'] for v in ('fp32', 'bf16'))
    assert b == pytest.approx(a, rel=0.05)  # the same first step, in two precisions


CASES: Dict[str, Case] = {c.key: c for c in [
    Case('benchmark_inference.py',
         lambda tmp: ['--device', 'cpu', '--sizes', '64x96', '--speedup-size', '64x96', '--repeats', '2', '--warmup',
                      '1', '--no-teacher', '--batch', '2', '--threads', '1'],
         {'student_speedup': POSITIVE, 'bf16_speedup': POSITIVE, 'rows[].model': TEXT, 'rows[].size': HXW,
          'rows[].batch': COUNT, 'rows[].params': COUNT, 'rows[].gflops': POSITIVE, 'rows[].median_ms': POSITIVE,
          'rows[].min_ms': POSITIVE, 'rows[].floor_ms': POSITIVE, 'rows[].max_abs_diff_vs_exact': CLOSE,
          'devices.<device>.matmul.gflops': POSITIVE, 'meta.cpu.name': TEXT, 'meta.cpu.flags': TEXTS,
          'meta.torch': TEXT},
         _inference_extra),
    Case('benchmark_teacher.py',
         lambda tmp: ['--size', '32', '48', '--repeats', '1', '--warmup', '0', '--no-memory', '--threads', '1'],
         {'speedup': POSITIVE, 'speedup_paired_median': POSITIVE, 'speedup_fwd': POSITIVE,
          'max_abs_diff_fused_sdpa_vs_plain': Check('a difference below 1e-4', lambda v: _number(v) and 0 <= v < 1e-4),
          'params': COUNT, 'input': COUNTS, 'variants.<impl>.fwd_s.median': POSITIVE,
          'variants.<impl>.fwdbwd_s.median': POSITIVE, 'threads': _one_of(1)}),
    Case('benchmark_training.py',
         lambda tmp: ['--opt', _tiny_options(tmp), '--size', '32x32', '--batch', '1', '--variants', 'fp32', 'bf16',
                      '--repeats', '1', '--warmup', '0', '--no-memory', '--threads', '1'],
         {'amp_speedup': POSITIVE, 'amp_speedup_paired_median': POSITIVE, 'amp_speedup_definition': TEXT,
          'variants.<variant>.alternation_s.median': POSITIVE, 'variants.<variant>.student_step_s.median': POSITIVE,
          'variants.<variant>.teacher_step_s.median': POSITIVE, 'variants.<variant>.speedup_vs_fp32': POSITIVE,
          'variants.<variant>.first_losses.l_g_total': POSITIVE, 'variants.<variant>.first_losses.l_t_total': POSITIVE,
          'meta.cpu_bf16_units': FLAG, 'meta.size': _one_of('32x32'), 'meta.batch': _one_of(1)},
         _training_extra),
    Case('benchmark_distributed.py',  # 2 processes under torchrun (DDP, gloo), 2 iterations of the tiny recipe
         lambda tmp: ['--opt', _tiny_options(tmp), '--nproc', '2', '--iters', '2', '--threads', '1'],
         {'benchmark': _one_of('training'), 'iters': _one_of(2), 'results.<processes>[].s_per_iter': POSITIVE,
          'results.<processes>[].iters_per_s': POSITIVE, 'results.<processes>[].samples_per_s': POSITIVE,
          'results.<processes>[].batch_per_process': COUNT, 'results.<processes>[].wall_s': POSITIVE,
          'meta.threads_per_process': _one_of(1)},
         lambda report: (list(report['results']) == ['2']) or pytest.fail(f'process counts {list(report["results"])}')),
    Case('benchmark_distributed.py --masks',  # sharded masks: 1 process, the random tiny SAM on the bundled MFNet pairs
         lambda tmp: ['--masks', '--mask-model', 'tiny', '--mask-pairs', '1', '--nproc', '1', '--threads', '1'],
         {'benchmark': _one_of('masks'), 'mask_model': _one_of('tiny'), 'results.<processes>[].pairs': _one_of(1),
          'results.<processes>[].wall_s': POSITIVE, 'results.<processes>[].pairs_per_min': POSITIVE}),
    Case('benchmark_data.py',
         lambda tmp: ['--ir', osp.join(MFNET, 'ir'), '--vis', osp.join(MFNET, 'vi'),
                      '--label', osp.join(MFNET, 'label'), '--source', 'label', '--max-masks', '4', '--limit', '2',
                      '--repeats', '1',
                      '--keep', osp.join(tmp, 'data')],
         {'images': _one_of(2), 'size_ratio': POSITIVE, 'size_ratio_payload': POSITIVE,
          'ours_bytes_per_image': COUNT, 'official_bytes_per_image': COUNT, 'ours_sample_ms': POSITIVE,
          'official_sample_ms_after_full_load': POSITIVE, 'ours_first_sample_s': POSITIVE,
          'official_first_sample_s': POSITIVE, 'first_sample_ratio': NONNEG, 'scaling_quarter_to_full.images': COUNTS}),
    Case('benchmark_metrics.py',
         lambda tmp: ['--repeat', '1', '--metrics', 'en', 'sd'],
         {'suite_median_s': POSITIVE, 'metrics.<metric>.ours.median_s': POSITIVE,
          'metrics.<metric>.ours.cpu_median_s': NONNEG, 'metrics.<metric>.ours.value': POSITIVE,
          'metrics.<metric>.recorded_over_ours': POSITIVE, 'image.shape_hw': COUNTS},
         lambda report: (set(report['metrics']) == {'en', 'sd'}) or pytest.fail(f'metrics {list(report["metrics"])}')),
    Case('benchmark_zoo.py',  # every zoo entry, random weights
         lambda tmp: ['--size', '32x48', '--repeats', '1', '--warmup', '0', '--threads', '1'],
         {'methods[].method': TEXT, 'methods[].params': COUNT, 'methods[].flops': COUNT,
          'methods[].plain.median_ms': POSITIVE, 'methods[].fast.median_ms': POSITIVE, 'methods[].speedup': POSITIVE,
          'methods[].max_abs_diff': Check('a difference <= 1e-5', lambda v: _number(v) and 0 <= v <= 1e-5),
          'methods[].within_tolerance': _one_of(True), 'tolerance': _one_of(1e-5), 'meta.size': _one_of('32x48'),
          'meta.cpu.name': TEXT}),
    Case('benchmark_registration.py',  # one bundled pair per dataset, ours only
         lambda tmp: ['--bundled-only', '--max-per-dataset', '1', '--no-baselines', '--timing-repeats', '1'],
         {'cases': COUNT, 'threshold': Check('a number', _number), 'refine_method': _one_of('blocks'),
          'distortion': _one_of('radial'), 'parallax_weight': _one_of(0.1), 'default_threshold.confident_wrong': NONNEG,
          'methods.<method>.consistency.median': NONNEG,
          'methods.<method>.dataset.median': NONNEG, 'methods.<method>.cpu_s_median': POSITIVE,
          'time_640x480.cpu_s_median': POSITIVE, 'failure_cases[].reason': TEXT}),
    Case('benchmark_segmentation.py',  # 4 bundled labelled pairs, a one-step preset, one seed
         lambda tmp: ['--data', MFNET, '--pairs', '4', '--split', '0.5', '--seeds', '1', '--threads', '1',
                      '--preset', _tiny_seg_preset(tmp), '--work', osp.join(tmp, 'work')],
         {'train_pairs': _one_of(2), 'test_pairs': _one_of(2), 'iterations': _one_of(1),
          'methods.<method>.miou': Check('a number in [0, 1]', lambda v: _number(v) and 0 <= v <= 1),
          'methods.<method>.seeds_finished': _one_of(1), 'control_miou': NONNEG, 'best_real_miou': NONNEG}),
]}


def _tiny_seg_preset(tmp: str) -> str:
    from pathlib import Path

    from test_seg_protocol import _tiny_preset
    return _tiny_preset(Path(tmp), epochs=None, iterations=1, batch_size=2, seeds=1)


# ---------------------------------------------------------------------------------------------- helpers
def documented_fields() -> Dict[str, List[str]]:
    """``script [--mode]`` -> the fields its row of the docs table names."""
    text = open(DOC).read()
    assert SECTION in text, f'{DOC}: no section {SECTION!r}'
    section = text.split(SECTION, 1)[1].split('\n#', 1)[0]
    out = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip('|').split('|')]
        if len(cells) != 2 or not cells[0].startswith('`benchmark'):
            continue
        out[cells[0].replace('`', '').strip()] = re.findall(r'`([^`]+)`', cells[1])
    return out


def values_at(report: Any, path: str) -> List[Tuple[str, Any]]:
    """``(concrete path, value)`` for a documented field path (``a.b``, ``a[]``, ``<x>``); raises
    KeyError naming the first missing part."""
    found = [('', report)]
    for part in path.split('.'):
        many = part.endswith('[]')
        key = part[:-2] if many else part
        step = []
        for where, node in found:
            if not isinstance(node, dict):
                raise KeyError(f'{where or "the report"} is not a section')
            if key.startswith('<') and key.endswith('>'):
                if not node:
                    raise KeyError(f'{where or "the report"} has no {key} entries')
                step += [(f'{where}.{k}'.lstrip('.'), v) for k, v in node.items()]
            elif key in node:
                step.append((f'{where}.{key}'.lstrip('.'), node[key]))
            else:
                raise KeyError(f'{where}.{key}'.lstrip('.'))
        if many:
            items = []
            for where, node in step:
                if not isinstance(node, list) or not node:
                    raise KeyError(f'{where}: expected a non-empty list')
                items += [(f'{where}[{i}]', v) for i, v in enumerate(node)]
            step = items
        found = step
    return found


def _logging_handlers() -> Dict[Any, list]:
    loggers = [logging.root] + [v for v in logging.Logger.manager.loggerDict.values() if isinstance(v, logging.Logger)]
    return {lg: list(lg.handlers) for lg in loggers}


def _run(script: str, args: List[str], monkeypatch, capsys) -> dict:
    monkeypatch.syspath_prepend(BENCHMARKS)  # where the scripts find bench_util
    monkeypatch.setattr(sys, 'argv', [script, *args])
    monkeypatch.setenv('OMP_NUM_THREADS', '1')  # also for the subprocesses some benchmarks start
    handlers = _logging_handlers()
    with torch_threads(1):
        try:
            runpy.run_path(osp.join(BENCHMARKS, script), run_name='__main__')
        except SystemExit as exit_:
            assert not exit_.code, capsys.readouterr().err[-3000:]
        finally:
            # a benchmark's loggers write to this test's captured stderr, closed after it: later tests
            # that log through the same loggers would hit "Logging error"
            for lg in _logging_handlers():
                lg.handlers = handlers.get(lg, [])
    out = capsys.readouterr().out
    return json.loads(out if out.startswith('{') else out[out.index('\n{') + 1:])


# ---------------------------------------------------------------------------------------------- tests
def test_values_at_resolves_the_documented_paths():
    report = {'a': {'x': {'v': 1}, 'y': {'v': 2}}, 'rows': [{'m': 'p'}, {'m': 'q'}]}
    assert values_at(report, 'a.<k>.v') == [('a.x.v', 1), ('a.y.v', 2)]
    assert values_at(report, 'rows[].m') == [('rows[0].m', 'p'), ('rows[1].m', 'q')]
    with pytest.raises(KeyError, match='a.x.w'):
        values_at(report, 'a.<k>.w')
    assert not POSITIVE.ok(0) and not POSITIVE.ok(float('nan')) and not COUNT.ok(True) and not COUNT.ok(1.5)


def test_every_benchmark_is_documented_and_checked():
    documented = documented_fields()
    scripts = sorted(f for f in os.listdir(BENCHMARKS) if f.startswith('benchmark_') and f.endswith('.py'))
    for script in scripts:
        assert any(k.split()[0] == script for k in documented), f'{script}: no row in {SECTION} of docs/benchmarks.md'
        assert any(k.split()[0] == script for k in CASES), f'{script}: no entry in CASES of tests/test_benchmarks.py'
    assert sorted(documented) == sorted(CASES), 'docs table rows and CASES differ'
    for key, fields in documented.items():
        assert fields, f'{key}: the docs name no field'
        assert sorted(fields) == sorted(CASES[key].checks), f'{key}: documented fields and checks differ'


@pytest.mark.slow  # each runs a real benchmark (tiny sizes, 1 thread); the distributed ones start torchrun
@pytest.mark.parametrize('key', sorted(CASES))
def test_benchmark_prints_every_documented_field(key, tmp_path, monkeypatch, capsys):
    case = CASES[key]
    report = _run(case.key.split()[0], case.args(str(tmp_path)), monkeypatch, capsys)
    for field in documented_fields()[key]:
        check = case.checks[field]
        try:
            values = values_at(report, field)
        except KeyError as err:
            pytest.fail(f'{key}: documented field {field} missing from the JSON ({err})')
        for where, value in values:
            assert check.ok(value), f'{key}: {where} = {value!r}, expected {check.what}'
    case.extra(report)
