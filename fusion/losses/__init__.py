"""Losses, registered in basicsr's ``LOSS_REGISTRY`` by explicit import (BasicSR convention)."""
from fusion.losses import contrastive_loss, fusion_losses  # noqa: F401,E402  (register the SAGE losses)
