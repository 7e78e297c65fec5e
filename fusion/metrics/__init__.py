"""Fusion metrics, registered in basicsr's ``METRIC_REGISTRY`` by explicit import."""
