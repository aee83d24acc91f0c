"""Which model the probes run on, and on which processes."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import lightning as L


def shards_parameters(trainer: L.Trainer) -> bool:
    """True when the strategy shards the model's parameters across processes (FSDP, model
    parallelism, DeepSpeed ZeRO stage 3): the LightningModule's own modules then hold only local
    shards, and a forward pass outside the strategy's wrapper would be wrong or hang."""
    from lightning.pytorch import strategies as S

    if trainer.world_size <= 1:
        return False
    sharded = tuple(getattr(S, n) for n in ("FSDPStrategy", "ModelParallelStrategy") if hasattr(S, n))
    if isinstance(trainer.strategy, sharded):
        return True
    if type(trainer.strategy).__name__ == "DeepSpeedStrategy":
        return int((trainer.strategy.config or {}).get("zero_optimization", {}).get("stage", 0)) == 3
    return False


@contextmanager
def probe_model(trainer: L.Trainer, pl_module: L.LightningModule) -> Iterator:
    """The :class:`~densitylab.model.GPT` a probe measures, in eval mode, on global rank 0; None on
    every other process.

    With whole parameters (one device, DDP) it is ``pl_module.model`` itself (the uncompiled module;
    its train/eval mode is restored afterwards). When parameters are sharded (:func:`shards_parameters`),
    every process takes part in gathering the full state dict (``strategy.lightning_module_state_dict``,
    a collective: call this on every process at the same step) and rank 0 gets an unsharded copy.
    """
    if shards_parameters(trainer):
        from densitylab.model import GPT

        state = trainer.strategy.lightning_module_state_dict()
        if not trainer.is_global_zero:
            yield None
            return
        model = GPT(copy.deepcopy(pl_module.model.config))
        model.load_state_dict({k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")})
        yield model.to(pl_module.device).eval()
        return
    if not trainer.is_global_zero:
        yield None
        return
    model = pl_module.model
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
