"""Losses, registered in basicsr's ``LOSS_REGISTRY`` by explicit import (BasicSR convention)."""
