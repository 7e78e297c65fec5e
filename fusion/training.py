"""Training loop. basicsr's train_pipeline for now (SAGEModel and the exact-iteration loop come
with the training issue)."""
from basicsr.train import train_pipeline  # noqa: F401
