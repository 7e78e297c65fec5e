"""Fusion metrics, registered in basicsr's ``METRIC_REGISTRY`` by explicit import."""
from fusion.metrics import segmentation_metrics  # noqa: F401,E402  (registers calculate_seg_miou / _pixel_acc)
from fusion.metrics.fusion_metrics import (ALL_METRICS, DEFAULT_METRICS, EXTRA_METRICS, METRICS,  # noqa: F401
                                           MetricSpec, compute_all_metrics, resolve_metric_names)
