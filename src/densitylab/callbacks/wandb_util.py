"""Find the W&B logger among a trainer's loggers (tables, images and summaries go straight to it)."""

from __future__ import annotations

from typing import Iterable


def find_wandb_logger(loggers: Iterable):
    """The first ``lightning.pytorch.loggers.WandbLogger`` in ``loggers``, or None (W&B off)."""
    from lightning.pytorch.loggers import WandbLogger

    return next((lg for lg in loggers if isinstance(lg, WandbLogger)), None)
