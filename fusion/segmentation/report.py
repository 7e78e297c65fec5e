"""Tables and pictures of a segmentation comparison: JSON (the layout other tools read), CSV,
Markdown, and a grid of visible image, label and each method's prediction."""
from __future__ import annotations

import csv
import io
import json
import math
import os.path as osp
from typing import Any, Dict, Mapping, Optional, Sequence

import cv2
import numpy as np

from fusion.data.segmentation_dataset import find_images, read_label
from fusion.metrics.segmentation_metrics import segmentation_scores
from fusion.utils.file_util import atomic_write_bytes
from fusion.utils.img_util import read_rgb
from fusion.utils.palette_util import as_palette, colorize


__all__ = ['summarize', 'format_table', 'write_reports', 'prediction_grid']


def _mean_std(values: Sequence[float]) -> tuple:
    """Mean and sample standard deviation (ddof 1) of the finite values; the std is None (n/a)
    for a single value: one seed says nothing about the spread."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return None, None
    std = float(np.std(finite, ddof=1)) if len(finite) > 1 else None
    return float(np.mean(finite)), std


def summarize(confusions: Mapping[str, Mapping[str, np.ndarray]], info: Mapping, seeds: Sequence[int],
              extra: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """The comparison as the JSON layout: ``{"classes", "seeds", "methods": {NAME: {"miou",
    "miou_std", "pixel_acc", "per_class_iou": {CLASS: float or null}, ...}}}``.

    Per unit (seed): scores of its confusion matrix over the whole test set; per method: mean and
    sample std over its finished units (``units``: how many; std ``null`` from fewer than two). A
    class absent from a unit's labels and predictions has no IoU that seed (left out of that seed's
    mIoU and of the class's mean; null if absent in every seed).
    """
    classes = list(info['classes'])
    out: Dict[str, Any] = {'classes': classes, 'seeds': [int(s) for s in seeds], 'methods': {}}
    test_pixels = None
    for method, units in confusions.items():
        if not units:
            continue
        scores = [segmentation_scores(cm, classes, bool(info.get('include_background', True)),
                                      int(info.get('background_index', 0))) for cm in units.values()]
        test_pixels = scores[0]['label_pixels']
        miou, miou_std = _mean_std([s['miou'] for s in scores])
        acc, acc_std = _mean_std([s['pixel_acc'] for s in scores])
        per_class, per_class_std = {}, {}
        for c in classes:
            per_class[c], per_class_std[c] = _mean_std([s['per_class_iou'][c] for s in scores])
        out['methods'][method] = {'miou': miou, 'miou_std': miou_std, 'pixel_acc': acc, 'pixel_acc_std': acc_std,
                                  'per_class_iou': per_class, 'per_class_iou_std': per_class_std,
                                  'units': len(scores)}
    out['include_background'] = bool(info.get('include_background', True))
    out['test_label_pixels'] = test_pixels
    out.update(extra or {})
    return out


def _f(value: Optional[float], digits: int = 3) -> str:
    return '-' if value is None else f'{value:.{digits}f}'


def _pm(mean: Optional[float], std: Optional[float]) -> str:
    if mean is None:
        return '-'
    return f'{mean:.3f} ± {std:.3f}' if std is not None else f'{mean:.3f} (std n/a)'


def format_table(summary: Mapping[str, Any]) -> str:
    """Markdown table: method, mIoU ± std, finished units (seeds), pixel accuracy, per-class IoU
    (means over the units)."""
    classes = summary['classes']
    head = ['method', 'mIoU', 'seeds' if summary.get('seeds') else 'units', 'pixel acc'] + classes
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    ranked = sorted(summary['methods'].items(), key=lambda kv: -(kv[1]['miou'] or 0.0))
    for method, m in ranked:
        row = [method, _pm(m['miou'], m['miou_std']), str(m['units']), _pm(m['pixel_acc'], m['pixel_acc_std'])]
        row += [_f(m['per_class_iou'][c]) for c in classes]
        lines.append('| ' + ' | '.join(row) + ' |')
    return '\n'.join(lines)


def _csv(summary: Mapping[str, Any]) -> str:
    classes = summary['classes']
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator='\n')
    writer.writerow(['method', 'miou', 'miou_std', 'pixel_acc', 'pixel_acc_std', 'units'] + classes)
    for method, m in summary['methods'].items():
        writer.writerow([method, _f(m['miou'], 6), _f(m['miou_std'], 6), _f(m['pixel_acc'], 6),
                         _f(m['pixel_acc_std'], 6), m['units']] + [_f(m['per_class_iou'][c], 6) for c in classes])
    return buf.getvalue()


def _markdown(summary: Mapping[str, Any], picture: Optional[str]) -> str:
    seeds = summary['seeds']
    counted = 'all classes' if summary.get('include_background', True) else 'all classes but the background'
    lines = ['# Segmentation on fused images', '',
             f'mIoU over {counted}, from one confusion matrix over the whole test set; mean ± sample std over '
             + (f'the finished ones of seeds {seeds} ("seeds": how many; no std from one)' if seeds
                else 'one fixed segmenter (no retraining, so no spread)') + '. IoU in [0, 1]; '
             '"-": class absent from the test labels and the predictions.', '', format_table(summary), '']
    pixels = summary.get('test_label_pixels')
    if pixels:
        lines += ['Test-set label pixels per class: ' + ', '.join(f'{k} {v}' for k, v in pixels.items()), '']
    if summary.get('failed'):
        lines += ['Failed methods:', ''] + [f'- {k}: {v}' for k, v in summary['failed'].items()] + ['']
    if picture:
        lines += [f'![predictions]({picture})', '']
    return '\n'.join(lines)


def write_reports(summary: Mapping[str, Any], out_dir: str, json_path: Optional[str] = None,
                  picture: Optional[str] = None) -> Dict[str, str]:
    """Writes segmentation.json (or ``json_path``), segmentation.csv, segmentation.md atomically."""
    paths = {'json': json_path or osp.join(out_dir, 'segmentation.json'),
             'csv': osp.join(out_dir, 'segmentation.csv'), 'markdown': osp.join(out_dir, 'segmentation.md')}

    def clean(value):  # NaN is not JSON: null
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value
    atomic_write_bytes((json.dumps(clean(dict(summary)), indent=2) + '\n').encode(), paths['json'])
    atomic_write_bytes(_csv(summary).encode(), paths['csv'])
    atomic_write_bytes(_markdown(summary, picture).encode(), paths['markdown'])
    return paths


def _tile(img_rgb: np.ndarray, width: int, height: int, text: Optional[str] = None) -> np.ndarray:
    tile = cv2.resize(img_rgb, (width, height), interpolation=cv2.INTER_NEAREST if img_rgb.dtype == np.uint8
                      else cv2.INTER_AREA)
    if tile.dtype != np.uint8:
        tile = np.clip(tile * 255.0 + 0.5, 0, 255).astype(np.uint8)
    tile = np.ascontiguousarray(tile)
    if text:
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.45, 1)
        cv2.rectangle(tile, (0, 0), (tw + 6, th + base + 6), (0, 0, 0), -1)
        cv2.putText(tile, text, (3, th + 3), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    return tile


def prediction_grid(names: Sequence[str], vis_dir: str, label_dir: str, pred_dirs: Mapping[str, str], info: Mapping,
                    tile_width: int = 224) -> np.ndarray:
    """RGB picture: one row per test image, columns visible, ground-truth label, then each method's prediction
    (palette PNGs written by the protocol); a legend of the palette at the bottom."""
    classes = list(info['classes'])
    palette = as_palette(info.get('palette'), len(classes))
    vis_files = find_images(vis_dir, names, 'visible')
    label_files = find_images(label_dir, names, 'label')
    columns = ['visible', 'ground truth'] + list(pred_dirs)
    rows = []
    tile_h = None
    for name in names:
        label = read_label(label_files[name], len(classes), info.get('ignore_index'))
        tile_h = tile_h or max(1, round(tile_width * label.shape[0] / label.shape[1]))
        row = [_tile(read_rgb(vis_files[name]), tile_width, tile_h, name),
               _tile(colorize(label, palette), tile_width, tile_h)]
        for method, folder in pred_dirs.items():
            pred_path = osp.join(folder, f'{name}.png')
            if osp.isfile(pred_path):
                pred = cv2.cvtColor(cv2.imread(pred_path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
                row.append(_tile(pred, tile_width, tile_h))
            else:
                row.append(np.full((tile_h, tile_width, 3), 40, np.uint8))
        rows.append(np.concatenate(row, axis=1))
    width = tile_width * len(columns)
    header = np.full((26, width, 3), 255, np.uint8)
    for i, col in enumerate(columns):
        cv2.putText(header, col[:28], (i * tile_width + 6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1,
                    cv2.LINE_AA)
    legend = np.full((26, width, 3), 255, np.uint8)
    x = 6
    for c, name in enumerate(classes):
        (tw, _), _ = cv2.getTextSize(name, cv2.FONT_HERSHEY_SIMPLEX, 0.42, 1)
        if x + 18 + tw > width:
            break
        cv2.rectangle(legend, (x, 6), (x + 14, 20), tuple(int(v) for v in palette[c]), -1)
        cv2.rectangle(legend, (x, 6), (x + 14, 20), (0, 0, 0), 1)
        cv2.putText(legend, name, (x + 18, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
        x += 18 + tw + 12
    return np.concatenate([header] + rows + [legend], axis=0)
