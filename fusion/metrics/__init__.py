"""Fusion metrics, registered in basicsr's ``METRIC_REGISTRY`` by explicit import."""
from fusion.metrics import segmentation_metrics  # noqa: F401,E402  (registers calculate_seg_miou / _pixel_acc)
from fusion.metrics import tang_metrics, vifb_metrics  # noqa: F401,E402  (register calculate_tang_* / _vifb_*)
from fusion.metrics.conventions import CONVENTIONS, DEFAULT_CONVENTION, get_convention  # noqa: F401,E402
from fusion.metrics.fusion_metrics import (ALL_METRICS, DEFAULT_METRICS, EXTRA_METRICS, METRICS,  # noqa: F401
                                           MetricSpec, compute_all_metrics, resolve_metric_names)
