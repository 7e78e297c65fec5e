"""Many methods on one set of pairs (``scripts/compare_methods.py``): fuse with each into
``OUT/fused/<method>/``, score them with :mod:`fusion.metrics.evaluation` (the tables of
``scripts/evaluate.py``: metrics.json / .csv / .md, comparison.png) and profile each (parameters,
FLOPs, CPU latency: methods.json / methods.md)."""
from __future__ import annotations

import json
import os.path as osp
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from fusion.metrics.evaluation import comparison_grid, evaluate_folders, format_table, write_outputs
from fusion.utils.file_util import atomic_write_bytes
from fusion.utils.img_util import imwrite_atomic
from fusion.zoo.entry import SAGE, load_zoo_entry, weights_path
from fusion.zoo.profiling import count_flops, count_parameters, cpu_latency_ms
from fusion.zoo.runner import build_zoo_method


def resolve_method_weights(methods: Sequence[str],
                           weights_dir: Optional[str]) -> Tuple[Dict[str, Optional[str]], Dict[str, str]]:
    """``({method: weights path (None: the bundled SAGE student)}, {skipped method: why})``; unknown
    names fail here, before any work."""
    found: Dict[str, Optional[str]] = {}
    skipped: Dict[str, str] = {}
    for name in methods:
        if name.lower() == SAGE:
            found[SAGE] = None
            continue
        entry = load_zoo_entry(name)
        path = weights_path(entry, weights_dir) if weights_dir and osp.isdir(weights_dir) else None
        if path is None:
            skipped[entry.name] = (f'weights missing: no {", ".join(entry.weights["files"])} under '
                                   f'{weights_dir or "(no --weights-dir)"}; get them from {entry.weights["source"]}')
        else:
            found[entry.name] = path
    return found, skipped


def profile_method(name: str, weights: Optional[str], size: Tuple[int, int], repeats: int,
                   latency: bool = True) -> Dict[str, Any]:
    net = build_zoo_method(name, weights, 'cpu')
    row: Dict[str, Any] = {'method': name, 'params': count_parameters(net), 'flops': count_flops(net, size),
                           'size': f'{size[0]}x{size[1]}'}
    if latency:
        row['cpu_latency'] = cpu_latency_ms(net, size, repeats=repeats)
    return row


def methods_markdown(rows: List[Dict[str, Any]], skipped: Mapping[str, str]) -> str:
    lines = ['| method | parameters | GFLOPs | CPU ms (median) |', '|---|---|---|---|']
    for r in rows:
        ms = f'{r["cpu_latency"]["median_ms"]:.0f}' if 'cpu_latency' in r else '-'
        lines.append(f'| {r["method"]} | {r["params"]:,} | {r["flops"] / 1e9:.1f} | {ms} |')
    for name, why in skipped.items():
        lines.append(f'| {name} | skipped: {why} | | |')
    return '\n'.join(lines) + f'\n\nFLOPs and latency at {rows[0]["size"] if rows else "-"} (one pair, CPU).\n'


def write_profiles(rows: List[Dict[str, Any]], skipped: Mapping[str, str], out: str, meta: Dict[str, Any]) -> None:
    atomic_write_bytes((json.dumps({'meta': meta, 'methods': rows, 'skipped': dict(skipped)}, indent=2) + '\n')
                       .encode(), osp.join(out, 'methods.json'))
    atomic_write_bytes(methods_markdown(rows, skipped).encode(), osp.join(out, 'methods.md'))


def evaluate_and_write(ir: str, vis: str, fused_dirs: Mapping[str, str], out: str, metrics: Optional[List[str]],
                       grid_images: int, workers: int = 1, progress: bool = True) -> Tuple[str, List[str]]:
    """The metric tables and the comparison picture into ``out``; returns the printed table and
    the images left out of every method (unreadable, wrong size, too small for a metric)."""
    result = evaluate_folders(ir, vis, fused_dirs, metrics=metrics, workers=workers, progress=progress)
    picture = None
    if result.images and grid_images > 0:
        picture = 'comparison.png'
        imwrite_atomic(comparison_grid(result, fused_dirs, max_images=grid_images), osp.join(out, picture), rgb=False)
    write_outputs(result, out, picture_name=picture)
    return format_table(result), list(result.problems)
