"""Metric conventions: which toolbox's definitions, names and image reading a table follows.

Published fusion numbers come from several toolboxes whose metrics share names but not definitions
(grey conversion, [0,1] or 0-255 data, PSNR's peak, MI's log base, SD's normalisation, colour handled
per channel). A convention is one toolbox reproduced: the ordered metrics under the toolbox's own
names, and how that toolbox reads an image file. ``scripts/evaluate.py --convention NAME`` and
:func:`fusion.metrics.evaluation.evaluate_folders` take one by name; docs/metrics.md says which to pick.

=========  =====================================================================================
name       toolbox
=========  =====================================================================================
cddfuse    CDDFuse's Python ``utils/Evaluator.py`` (the default; the 14 metrics of fusion_metrics)
tang       Linfeng Tang's MATLAB "General Evaluation Metric" (SeAFusion, PIAFusion, ...): 11 metrics
vifb       the VIFB benchmark's MATLAB ``metrics/`` (Zhang et al., CVPRW 2020): 13 metrics
=========  =====================================================================================
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

import numpy as np

from fusion.metrics import tang_metrics as tang
from fusion.metrics import vifb_metrics as vifb
from fusion.metrics.fusion_metrics import ALL_METRICS, DEFAULT_METRICS, compute_all_metrics, resolve_metric_names
from fusion.metrics.matlab_util import imread_matlab
from fusion.utils.img_util import read_gray


__all__ = ['ToolboxMetric', 'Convention', 'CONVENTIONS', 'DEFAULT_CONVENTION', 'get_convention']


@dataclass(frozen=True)
class ToolboxMetric:
    """One metric of a toolbox: its own name (the JSON key), the function (fused, ir, vis) -> float
    (or fused -> float when ``needs_sources`` is False), which direction is better, the registered
    basicsr name (YAML ``type:``) and the toolbox's quirk in one line (docs/metrics.md)."""
    name: str
    func: Callable[..., float]
    better: str
    registry_name: str
    quirk: str
    needs_sources: bool = True

    def __call__(self, fused: Any, ir: Any, vis: Any) -> float:
        return float(self.func(fused, ir, vis) if self.needs_sources else self.func(fused))


@dataclass(frozen=True)
class Convention:
    """A toolbox reproduced: ``reader`` turns a file into the array the toolbox computes on,
    ``metrics`` are its metrics in the toolbox's order (empty for ``cddfuse``, whose metrics are the
    :data:`fusion.metrics.fusion_metrics.ALL_METRICS` table), ``reading`` says in words how images
    are read."""
    name: str
    title: str
    reader: Callable[[str], np.ndarray]
    reading: str
    metrics: Tuple[ToolboxMetric, ...] = ()

    @property
    def default_metrics(self) -> List[str]:
        return list(DEFAULT_METRICS) if not self.metrics else [m.name for m in self.metrics]

    @property
    def all_metrics(self) -> List[str]:
        return list(ALL_METRICS) if not self.metrics else [m.name for m in self.metrics]

    def better(self, metric: str) -> str:
        """'higher' or 'lower' for a (resolved) metric name."""
        if not self.metrics:
            return ALL_METRICS[metric].better
        return self._table()[metric].better

    def _table(self) -> Dict[str, ToolboxMetric]:
        return {m.name: m for m in self.metrics}

    def resolve(self, metrics: Optional[Iterable[str]] = None) -> List[str]:
        """Validates metric names (case-insensitive) and returns them as the convention spells them;
        ``None`` means every default metric of the convention."""
        if not self.metrics:
            return resolve_metric_names(metrics)
        if metrics is None:
            return self.default_metrics
        by_lower = {m.name.lower(): m.name for m in self.metrics}
        names = [m.strip() for m in metrics]
        unknown = [m for m in names if m.lower() not in by_lower]
        if unknown:
            raise ValueError(f'unknown metric(s) {unknown} for convention {self.name}; known: '
                             f'{", ".join(self.default_metrics)}')
        return [by_lower[m.lower()] for m in names]

    def compute(self, fused: Any, ir: Any, vis: Any, metrics: Optional[Iterable[str]] = None,
                options: Optional[Mapping[str, Mapping[str, Any]]] = None) -> Dict[str, float]:
        """The requested metrics of one triple, keyed by the convention's metric names. ``options``
        (per-metric keyword options) apply to ``cddfuse`` only: the toolboxes have no settings."""
        names = self.resolve(metrics)
        if not self.metrics:
            return compute_all_metrics(fused, ir, vis, names, dict(options or {}))
        table = self._table()
        return {name: table[name](fused, ir, vis) for name in names}


_TANG_READING = ('imread (8-bit), rgb2gray for 3-channel files (MATLAB weights 0.298936/0.587043/0.114021, '
                 'rounded to uint8); each metric then takes the uint8 image or im2double of it ([0,1])')
_VIFB_READING = ('imread (8-bit, JPEG decoded by libjpeg), colour kept: visible and infrared as stored (both '
                 '3-channel in VIFB); a 3-channel fused image is evaluated per channel and the values averaged '
                 '(except Spatial_frequency, see its quirk)')

CONVENTIONS: Dict[str, Convention] = {c.name: c for c in [
    Convention('cddfuse', "CDDFuse's Python Evaluator (utils/Evaluator.py)", read_gray,
               'OpenCV grey (0.299/0.587/0.114, float32, rounded), 0-255 float'),
    Convention('tang', "Linfeng Tang's MATLAB toolbox (Image-Fusion, General Evaluation Metric)", imread_matlab,
               _TANG_READING, tuple(
                   ToolboxMetric(name, func, better, f'calculate_tang_{name.lower()}',
                                 (func.__doc__ or '').split('\n')[0], needs_sources=needs)
                   for name, func, better, needs in [
                       ('EN', tang.tang_en, 'higher', False), ('SD', tang.tang_sd, 'higher', False),
                       ('SF', tang.tang_sf, 'higher', False), ('AG', tang.tang_ag, 'higher', False),
                       ('MI', tang.tang_mi, 'higher', True), ('SCD', tang.tang_scd, 'higher', True),
                       ('VIF', tang.tang_vif, 'higher', True), ('Qabf', tang.tang_qabf, 'higher', True),
                       ('CC', tang.tang_cc, 'higher', True), ('PSNR', tang.tang_psnr, 'higher', True),
                       ('MSE', tang.tang_mse, 'lower', True)])),
    Convention('vifb', 'VIFB benchmark MATLAB metrics (xingchenzhang/VIFB, metrics/)', imread_matlab,
               _VIFB_READING, tuple(
                   ToolboxMetric(name, func, better, f'calculate_vifb_{name.lower()}',
                                 (func.__doc__ or '').split('\n')[0], needs_sources=needs)
                   for name, func, better, needs in vifb.VIFB_TABLE)),
]}
DEFAULT_CONVENTION = 'cddfuse'


def get_convention(name: Optional[str] = None) -> Convention:
    """The convention called ``name`` (case-insensitive; ``None``: the default, cddfuse)."""
    key = (name or DEFAULT_CONVENTION).strip().lower()
    if key not in CONVENTIONS:
        raise ValueError(f'unknown metric convention {name!r}; known: {", ".join(CONVENTIONS)}')
    return CONVENTIONS[key]
