"""Folder evaluation: every metric for every method over IR/visible/fused folders, the tables
(console, CSV, JSON, Markdown) and a comparison picture. ``scripts/evaluate.py`` is a thin command
line over these functions.

Images are paired by base name with ``fusion.utils.img_util.list_pairs`` and read the way the chosen
metric convention (``fusion.metrics.conventions``) reads them: ``cddfuse`` (the default) with
``read_gray`` (0-255 grey; colour converted with OpenCV's weights and rounded), the MATLAB toolbox
conventions (``tang``, ``vifb``) as MATLAB's ``imread`` gives them. One code path for every convention:
the convention supplies the reader, the metric names and the metric functions.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os.path as osp
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import cv2
import numpy as np
from tqdm import tqdm

from fusion.metrics.baselines import BASELINES
from fusion.metrics.conventions import DEFAULT_CONVENTION, Convention, get_convention
from fusion.utils.file_util import atomic_write_bytes
from fusion.utils.img_util import ImageReadError, check_same_size, list_pairs, read_gray, read_image


__all__ = ['EvaluationResult', 'evaluate_folders', 'baseline_method_name', 'format_table', 'to_json_dict',
           'write_outputs', 'comparison_grid', 'RESERVED_METHOD_NAMES']

RESERVED_METHOD_NAMES = ('ir', 'vis', 'name')


def baseline_method_name(kind: str) -> str:
    return f'baseline-{kind}'


@dataclass
class EvaluationResult:
    """Per-image metric values of every method, in evaluation order.

    ``per_image[method][image][metric]`` holds floats (NaN where a metric is undefined);
    ``problems`` names every image left out and why (unreadable, size mismatch); ``convention`` is
    the metric convention (toolbox) that produced the values.
    """
    metrics: List[str]
    methods: List[str]
    convention: str = DEFAULT_CONVENTION
    images: List[str] = field(default_factory=list)
    per_image: Dict[str, Dict[str, Dict[str, float]]] = field(default_factory=dict)
    problems: List[str] = field(default_factory=list)
    pairs: List[dict] = field(default_factory=list)  # the list_pairs items that were evaluated

    def means(self) -> Dict[str, Dict[str, float]]:
        """Mean over images of each metric, ignoring NaN (NaN when no image has a value)."""
        out: Dict[str, Dict[str, float]] = {}
        for method in self.methods:
            rows = self.per_image.get(method, {})
            out[method] = {}
            for metric in self.metrics:
                values = [rows[img][metric] for img in rows if math.isfinite(rows[img][metric])]
                out[method][metric] = float(np.mean(values)) if values else float('nan')
        return out

    def undefined_counts(self) -> Dict[str, Dict[str, int]]:
        """How many images gave NaN/inf per method and metric (left out of the means)."""
        return {m: {k: sum(not math.isfinite(v[k]) for v in self.per_image.get(m, {}).values()) for k in self.metrics}
                for m in self.methods}


def _finite_or_none(value: float) -> Optional[float]:
    return float(value) if math.isfinite(value) else None


def _check_size(ref: np.ndarray, img: np.ndarray, ref_path: str, path: str) -> Optional[str]:
    if ref.shape[:2] != img.shape[:2]:
        return (f'{path} is {img.shape[1]}x{img.shape[0]} (WxH) but the infrared {ref_path} is '
                f'{ref.shape[1]}x{ref.shape[0]}')
    return None


def _baseline(kind: str, ir: np.ndarray, vis: np.ndarray) -> np.ndarray:
    """A pixel baseline of the sources as the convention read them (colour arrays: per channel)."""
    if ir.ndim == vis.ndim == 3:
        return np.stack([BASELINES[kind](ir[..., k], vis[..., k]) for k in range(ir.shape[2])], axis=2)
    if ir.ndim == 3 or vis.ndim == 3:  # one colour source: fuse the grey forms (MATLAB rgb2gray weights)
        from fusion.metrics.matlab_util import rgb2gray
        ir, vis = (rgb2gray(x) if x.ndim == 3 else x for x in (ir, vis))
    return BASELINES[kind](ir, vis)


def _evaluate_pair(task: Tuple[dict, Sequence[str], Sequence[str], Sequence[str], Mapping[str, Mapping[str, Any]],
                               str]) -> Tuple[str, Dict[str, Dict[str, float]], List[str]]:
    """Reads one pair and its fused images and computes the metrics of the convention; returns (name,
    values, problems). Module-level so that worker processes can run it."""
    pair, methods, baselines, metrics, options, convention_name = task
    convention = get_convention(convention_name)
    read = convention.reader
    name = pair['name']
    problems: List[str] = []
    try:
        ir = read(pair['ir_path'])
        vis = read(pair['vis_path'])
        check_same_size(ir, vis, pair['ir_path'], pair['vis_path'])
    except ImageReadError as err:
        return name, {}, [str(err)]
    fused: Dict[str, np.ndarray] = {}
    for method in methods:
        path = pair[f'{method}_path']
        try:
            img = read(path)
        except ImageReadError as err:
            problems.append(str(err))
            continue
        problem = _check_size(ir, img, pair['ir_path'], path)
        if problem:
            problems.append(problem)
            continue
        fused[method] = img
    if problems:
        return name, {}, problems
    for kind in baselines:
        fused[baseline_method_name(kind)] = (BASELINES[kind](ir, vis) if convention.name == DEFAULT_CONVENTION
                                             else _baseline(kind, ir, vis))
    values = {}
    for method, img in fused.items():
        try:
            values[method] = convention.compute(img, ir, vis, metrics, options)
        except ValueError as err:  # e.g. an image too small for VIF / MS-SSIM
            return name, {}, [f'{method}: {err}']
    return name, values, []


def evaluate_folders(ir_dir: str, vis_dir: str, fused_dirs: Mapping[str, str], baselines: Iterable[str] = (),
                     metrics: Optional[Iterable[str]] = None, options: Optional[Mapping[str, Mapping[str, Any]]] = None,
                     workers: int = 1, progress: bool = True, convention: str = DEFAULT_CONVENTION
                     ) -> EvaluationResult:
    """Computes ``metrics`` (default: every metric of the convention; for ``cddfuse`` the 14 standard
    ones) for every method on every image pair.

    ``convention`` names the metric toolbox reproduced (``cddfuse``, ``tang``, ``vifb``; see
    docs/metrics.md): it decides how files are read, the metric names and their definitions.
    ``options`` (per-metric keyword options) apply to ``cddfuse`` only.

    ``fused_dirs`` maps a method name to its folder of fused images (same base names as the IR and
    visible files); ``baselines`` adds pixel 'mean' / 'max' fusions computed on the fly. Raises
    :class:`ImageReadError` naming the unpaired files when the folders do not hold the same names.
    Images whose files are unreadable or of another size are left out of every method (so all means
    cover the same images) and listed in ``result.problems``.
    """
    conv = get_convention(convention)
    metric_names = conv.resolve(metrics)
    for method in fused_dirs:
        if not method or method in RESERVED_METHOD_NAMES or method.startswith('baseline-'):
            raise ValueError(f'invalid method name {method!r} (reserved: {", ".join(RESERVED_METHOD_NAMES)}, '
                             'baseline-*)')
    baselines = list(dict.fromkeys(baselines))
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise ValueError(f'unknown baseline(s) {unknown}; available: {", ".join(BASELINES)}')
    methods = list(fused_dirs) + [baseline_method_name(b) for b in baselines]
    if not methods:
        raise ValueError('nothing to evaluate: give at least one fused folder or a baseline')
    pairs = list_pairs(ir_dir, vis_dir, list(fused_dirs.items()))
    tasks = [(pair, list(fused_dirs), baselines, metric_names, dict(options or {}), conv.name) for pair in pairs]
    result = EvaluationResult(metrics=metric_names, methods=methods, convention=conv.name)
    result.per_image = {m: {} for m in methods}
    bar = tqdm(total=len(tasks), desc='evaluating', unit='img', disable=not progress)
    outcomes: Dict[str, Tuple[Dict[str, Dict[str, float]], List[str]]] = {}
    try:
        if workers > 1:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for name, values, problems in pool.map(_evaluate_pair, tasks):
                    outcomes[name] = (values, problems)
                    bar.update(1)
        else:
            for task in tasks:
                name, values, problems = _evaluate_pair(task)
                outcomes[name] = (values, problems)
                bar.update(1)
    finally:
        bar.close()
    for pair in pairs:  # keep the sorted order of list_pairs
        values, problems = outcomes[pair['name']]
        if problems:
            result.problems.extend(f'{pair["name"]}: {p}' for p in problems)
            continue
        result.images.append(pair['name'])
        result.pairs.append(pair)
        for method in methods:
            result.per_image[method][pair['name']] = values[method]
    return result


# ----------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------

def _arrow(metric: str, convention: Convention) -> str:
    return '↑' if convention.better(metric) == 'higher' else '↓'


def _header(metric: str, convention: Convention) -> str:
    # cddfuse's names are lower-case keys printed in capitals; the toolboxes' are printed as spelt
    return metric.upper() if convention.name == DEFAULT_CONVENTION else metric


def _fmt(value: float) -> str:
    if not math.isfinite(value):
        return 'n/a'
    # tiny values (Nabf of near-perfect fusions) would all print as 0.0000
    return f'{value:.2e}' if 0 < abs(value) < 1e-3 else f'{value:.4f}'


def _best(means: Mapping[str, Mapping[str, float]], metric: str, convention: Convention) -> Optional[float]:
    values = [row[metric] for row in means.values() if math.isfinite(row[metric])]
    if not values:
        return None
    return max(values) if convention.better(metric) == 'higher' else min(values)


def format_table(result: EvaluationResult) -> str:
    """Plain-text table of the means (methods as rows), best value per column marked with '*', under
    a line naming the metric convention."""
    means = result.means()
    conv = get_convention(result.convention)
    header = ['method'] + [f'{_header(m, conv)}{_arrow(m, conv)}' for m in result.metrics]
    rows = []
    for method in result.methods:
        row = [method]
        for metric in result.metrics:
            value = means[method][metric]
            mark = '*' if value == _best(means, metric, conv) and len(result.methods) > 1 else ''
            row.append(_fmt(value) + mark)
        rows.append(row)
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    lines = ['  '.join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in [header] + rows]
    lines.insert(1, '-' * len(lines[0]))
    return f'metric convention: {conv.name} ({conv.title})\n' + '\n'.join(lines)


def to_json_dict(result: EvaluationResult) -> Dict[str, Any]:
    """``{method: {"convention": name, "mean": {metric: v}, "per_image": {image: {metric: v}}}}``, metric
    keys as the convention names them; NaN/inf -> null."""
    means = result.means()
    return {method: {'convention': result.convention,
                     'mean': {k: _finite_or_none(v) for k, v in means[method].items()},
                     'per_image': {img: {k: _finite_or_none(v) for k, v in vals.items()}
                                   for img, vals in result.per_image[method].items()}}
            for method in result.methods}


def _csv_text(rows: List[List[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator='\n')
    writer.writerows(rows)
    return buf.getvalue()


def _csv_value(value: float) -> str:
    return repr(float(value)) if math.isfinite(value) else ''


def markdown_table(result: EvaluationResult) -> str:
    """Markdown table of the means, best value per metric in bold, arrows for the better direction."""
    means = result.means()
    conv = get_convention(result.convention)
    lines = ['| method | ' + ' | '.join(f'{_header(m, conv)} {_arrow(m, conv)}' for m in result.metrics) + ' |',
             '|---|' + '---:|' * len(result.metrics)]
    for method in result.methods:
        cells = []
        for metric in result.metrics:
            value = means[method][metric]
            text = _fmt(value)
            if len(result.methods) > 1 and value == _best(means, metric, conv):
                text = f'**{text}**'
            cells.append(text)
        lines.append(f'| {method} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def _markdown_document(result: EvaluationResult, picture: Optional[str]) -> str:
    conv = get_convention(result.convention)
    notes = {'cddfuse': 'MI in nats, SSIM = SSIM(F,A) + SSIM(F,B), VIF = VIF(A,F) + VIF(B,F), PSNR with peak max(F)',
             'tang': 'MATLAB toolbox values: SD on uint8 arithmetic, SF and MSE on [0,1], PSNR = 20 log10(255 / '
                     'sqrt(MSE on [0,1])), MI in bits',
             'vifb': 'VIFB values: colour fused images per channel then averaged, Variance is a standard '
                     'deviation, Psnr/Rmse from sqrt(sum of squared errors) / pixels, Mutinf in nats'}
    parts = [f'# Fusion metrics ({len(result.images)} images, convention {conv.name})', '',
             f'Metric convention: **{conv.name}**, {conv.title}. Images read: {conv.reading}.', '',
             markdown_table(result), '',
             '↑ higher is better, ↓ lower is better; best value per metric in bold. Means over the images '
             f'(undefined values left out). {notes.get(conv.name, "")}; definitions in docs/metrics.md.']
    undefined = {m: {k: n for k, n in c.items() if n} for m, c in result.undefined_counts().items()}
    undefined = {m: c for m, c in undefined.items() if c}
    if undefined:
        parts += ['', 'Undefined values left out of the means: ' + '; '.join(
            f'{m}: ' + ', '.join(f'{k} x{n}' for k, n in c.items()) for m, c in undefined.items())]
    if result.problems:
        parts += ['', '## Images left out', ''] + [f'- {p}' for p in result.problems]
    if picture:
        parts += ['', f'![comparison]({picture})']
    return '\n'.join(parts) + '\n'


def write_outputs(result: EvaluationResult, out_dir: str, json_path: Optional[str] = None,
                  picture_name: Optional[str] = 'comparison.png') -> Dict[str, str]:
    """Writes metrics.json, metrics.csv (means), metrics_per_image.csv and metrics.md into ``out_dir``
    (``json_path`` overrides the JSON location), each atomically. Returns {kind: path}."""
    paths = {'json': json_path or osp.join(out_dir, 'metrics.json'),
             'csv': osp.join(out_dir, 'metrics.csv'),
             'per_image_csv': osp.join(out_dir, 'metrics_per_image.csv'),
             'markdown': osp.join(out_dir, 'metrics.md')}
    atomic_write_bytes((json.dumps(to_json_dict(result), indent=2) + '\n').encode(), paths['json'])
    means = result.means()
    # the last column names the convention, so a CSV read on its own still says which toolbox it follows
    rows = [['method'] + result.metrics + ['convention']] + [
        [m] + [_csv_value(means[m][k]) for k in result.metrics] + [result.convention] for m in result.methods]
    atomic_write_bytes(_csv_text(rows).encode(), paths['csv'])
    rows = [['method', 'image'] + result.metrics + ['convention']]
    for method in result.methods:
        for img in result.images:
            rows.append([method, img] + [_csv_value(result.per_image[method][img][k]) for k in result.metrics]
                        + [result.convention])
    atomic_write_bytes(_csv_text(rows).encode(), paths['per_image_csv'])
    atomic_write_bytes(_markdown_document(result, picture_name).encode(), paths['markdown'])
    return paths


# ----------------------------------------------------------------------------------------------
# Comparison picture
# ----------------------------------------------------------------------------------------------

def _display_bgr(img: np.ndarray) -> np.ndarray:
    """Any image from ``read_image`` (or a grey uint8 array) -> 8-bit BGR for display."""
    if img.dtype == np.uint16:
        img = (img / 257.0).round().astype(np.uint8)
    elif img.dtype.kind == 'f':
        img = np.clip(img * 255.0 if img.max() <= 1.0 else img, 0, 255).round().astype(np.uint8)
    elif img.dtype != np.uint8:
        img = np.clip(img, 0, 255).astype(np.uint8)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    return img[..., :3].copy()


def _fit(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resizes keeping the aspect ratio and pads to width x height with dark grey."""
    h, w = img.shape[:2]
    scale = min(width / w, height / h)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    resized = cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    canvas = np.full((height, width, 3), 40, np.uint8)
    top, left = (height - new_h) // 2, (width - new_w) // 2
    canvas[top:top + new_h, left:left + new_w] = resized
    return canvas


def _label(img: np.ndarray, text: str, scale: float = 0.5) -> None:
    (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    cv2.rectangle(img, (0, 0), (tw + 6, th + base + 6), (0, 0, 0), -1)
    cv2.putText(img, text, (3, th + 3), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)


def comparison_grid(result: EvaluationResult, fused_dirs: Mapping[str, str], max_images: int = 4,
                    tile_height: int = 240) -> np.ndarray:
    """BGR picture: one row per image (up to ``max_images``, spread over the evaluated set), columns
    IR, visible, then every method's fused image (as stored, colour kept), with a header row."""
    if not result.pairs:
        raise ValueError('no evaluated image to show')
    step = max(1, len(result.pairs) / max(1, max_images))
    chosen = [result.pairs[int(i * step)] for i in range(min(max_images, len(result.pairs)))]
    first = read_image(chosen[0]['ir_path'])
    tile_w = max(1, round(tile_height * first.shape[1] / first.shape[0]))
    columns = ['infrared', 'visible'] + result.methods
    header = np.full((28, tile_w * len(columns), 3), 255, np.uint8)
    for i, col in enumerate(columns):
        cv2.putText(header, col[:40], (i * tile_w + 6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1,
                    cv2.LINE_AA)
    rows = [header]
    for pair in chosen:
        tiles = [read_image(pair['ir_path']), read_image(pair['vis_path'])]
        ir_gray = vis_gray = None
        for method in result.methods:
            if method in fused_dirs:
                tiles.append(read_image(pair[f'{method}_path']))
            else:  # a baseline: recompute it from the grey sources
                if ir_gray is None:
                    ir_gray, vis_gray = read_gray(pair['ir_path']), read_gray(pair['vis_path'])
                tiles.append(BASELINES[method[len('baseline-'):]](ir_gray, vis_gray))
        row = [_fit(_display_bgr(t), tile_w, tile_height) for t in tiles]
        _label(row[0], pair['name'])
        rows.append(np.concatenate(row, axis=1))
    return np.concatenate(rows, axis=0)
