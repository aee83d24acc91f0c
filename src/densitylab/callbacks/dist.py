"""Which processes run a probe's forward passes."""

from __future__ import annotations

import lightning as L


def shards_parameters(trainer: L.Trainer) -> bool:
    """True when the model's parameters are sharded across processes (FSDP, DeepSpeed, model
    parallel): a forward pass is then a collective, so every process must run the probe's forward
    passes (only global rank 0 keeps and logs the result). Under DDP or one device, only rank 0 probes."""
    from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy

    return trainer.world_size > 1 and not isinstance(trainer.strategy, (DDPStrategy, SingleDeviceStrategy))
