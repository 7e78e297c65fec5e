"""Checks a metric convention against the values its toolbox published for the same images.

A reference table is a CSV with columns image, method, metric, value (one row per value, as the
toolbox computed it); the images lie in ``ir/``, ``vi/`` and ``fused/<method>/`` beside it. The
values are recomputed through :func:`fusion.metrics.evaluation.evaluate_folders`, the same path
``scripts/evaluate.py`` takes, and compared metric by metric. ``scripts/verify_conventions.py`` is the
command line; docs/metrics.md holds the tables it wrote.
"""
from __future__ import annotations

import csv
import math
import os.path as osp
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple

from fusion.metrics.conventions import get_convention
from fusion.metrics.evaluation import evaluate_folders


__all__ = ['REL_TOL', 'ABS_TOL', 'within_target', 'read_reference_values', 'check_convention', 'summary_markdown']

REL_TOL = 1e-3
ABS_TOL = 1e-6


def within_target(value: float, reference: float, rel_tol: float = REL_TOL, abs_tol: float = ABS_TOL) -> bool:
    """|value - reference| <= rel_tol |reference|, or <= abs_tol (for references near zero)."""
    if not (math.isfinite(value) and math.isfinite(reference)):
        return math.isnan(value) and math.isnan(reference)
    diff = abs(value - reference)
    return diff <= rel_tol * abs(reference) or diff <= abs_tol


def read_reference_values(path: str) -> Dict[Tuple[str, str], Dict[str, float]]:
    """``{(image, method): {metric: value}}`` from a reference CSV (columns image, method, metric, value)."""
    values: Dict[Tuple[str, str], Dict[str, float]] = defaultdict(dict)
    with open(path, newline='') as f:
        reader = csv.DictReader(f)
        missing = {'image', 'method', 'metric', 'value'} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f'{path}: missing column(s) {sorted(missing)} (need image, method, metric, value)')
        for row in reader:
            values[(row['image'], row['method'])][row['metric']] = float(row['value'])
    return dict(values)


@dataclass
class _Worst:
    rel: float = -1.0
    case: Optional[Dict[str, Any]] = None


def check_convention(root: str, values_csv: str, convention: str, workers: int = 1,
                     progress: bool = True) -> Dict[str, Any]:
    """Recomputes every (image, method) of ``values_csv`` under ``convention`` from the images in
    ``root`` (``ir/``, ``vi/``, ``fused/<method>/``) and compares. Returns a JSON-ready report:
    per metric the count, the fraction within the target, the worst case (image, method, ours, the
    toolbox's, relative difference), and every value outside the target."""
    conv = get_convention(convention)
    reference = read_reference_values(values_csv)
    methods = sorted({m for _, m in reference})
    metrics = sorted(conv.resolve(sorted({k for v in reference.values() for k in v})), key=conv.all_metrics.index)
    fused_dirs = {m: osp.join(root, 'fused', m) for m in methods}
    result = evaluate_folders(osp.join(root, 'ir'), osp.join(root, 'vi'), fused_dirs, metrics=metrics,
                              workers=workers, progress=progress, convention=conv.name)
    per_metric: Dict[str, Dict[str, Any]] = {}
    misses: List[Dict[str, Any]] = []
    for metric in metrics:
        n = met = 0
        worst = _Worst()
        for (image, method), ref_values in sorted(reference.items()):
            if metric not in ref_values:
                continue
            n += 1
            ours = result.per_image.get(method, {}).get(image, {}).get(metric, float('nan'))
            ref = ref_values[metric]
            ok = within_target(ours, ref)
            met += ok
            rel = abs(ours - ref) / abs(ref) if ref and math.isfinite(ours) else (0.0 if ours == ref else math.inf)
            case = {'image': image, 'method': method, 'ours': ours if math.isfinite(ours) else None,
                    'toolbox': ref, 'rel_diff': rel if math.isfinite(rel) else None}
            if not ok:
                misses.append({'metric': metric, **case})
            if rel > worst.rel:
                worst = _Worst(rel, case)
        per_metric[metric] = {'n': n, 'within_target': met, 'fraction': met / n if n else float('nan'),
                              'worst': worst.case}
    # where the misses lie: a method whose every metric misses on some image points at its files (the
    # values were computed on other pixels), not at a definition
    per_method = {m: sum(x['method'] == m for x in misses) for m in methods}
    missed = {m for m, k in per_method.items() if k}
    for metric in metrics:
        rels = [abs(result.per_image[m][img][metric] - v[metric]) / abs(v[metric])
                for (img, m), v in reference.items() if m not in missed and metric in v and v[metric]
                and math.isfinite(result.per_image.get(m, {}).get(img, {}).get(metric, float('nan')))]
        per_metric[metric]['worst_rel_diff_other_methods'] = max(rels) if rels else None
    return {'convention': conv.name, 'toolbox': conv.title, 'values': osp.basename(values_csv),
            'target': {'rel_tol': REL_TOL, 'abs_tol': ABS_TOL}, 'images_left_out': result.problems,
            'metrics': per_metric, 'outside_target_per_method': per_method, 'outside_target': misses}


def summary_markdown(reports: Mapping[str, Mapping[str, Any]]) -> str:
    """One Markdown table per checked convention: fraction within the target and the worst case."""
    parts = ['# Metric conventions against the toolboxes\' own values', '',
             f'Target: within {REL_TOL:g} relative (or {ABS_TOL:g} absolute near zero).']
    for name, report in reports.items():
        parts += ['', f'## {name}: {report["toolbox"]} ({report["values"]})', '',
                  '| metric | values | within target | worst rel. diff | worst case (image, method): ours / toolbox |',
                  '|---|---:|---:|---:|---|']
        for metric, row in report['metrics'].items():
            worst = row['worst'] or {}
            rel = worst.get('rel_diff')
            ours = worst.get('ours')
            parts.append(f'| {metric} | {row["n"]} | {row["within_target"]} ({100 * row["fraction"]:.1f} %) | '
                         f'{rel:.2e} | {worst.get("image")}, {worst.get("method")}: '
                         f'{"n/a" if ours is None else f"{ours:.6g}"} / {worst.get("toolbox", float("nan")):.6g} |'
                         if rel is not None else f'| {metric} | {row["n"]} | {row["within_target"]} | n/a | |')
        missed = {m: k for m, k in report['outside_target_per_method'].items() if k}
        if missed:
            others = ', '.join(f'{metric} {row["worst_rel_diff_other_methods"]:.1e}'
                               for metric, row in report['metrics'].items()
                               if row['worst_rel_diff_other_methods'] is not None)
            parts += ['', 'Values outside the target by method: ' + ', '.join(f'{m} {k}' for m, k in missed.items())
                      + f'; every other method is within it (worst relative difference there: {others}).']
        if report['images_left_out']:
            parts += ['', 'Images left out: ' + '; '.join(report['images_left_out'])]
    return '\n'.join(parts) + '\n'
