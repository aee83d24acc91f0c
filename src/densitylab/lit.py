"""LightningModule: next-token loss, AdamW, warmup + cosine schedule, scalar logging."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from densitylab.data.packing import IGNORE_INDEX
from densitylab.errors import ConfigError
from densitylab.model import GPT, GPTConfig


def cosine_with_warmup(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """LR multiplier at optimizer step ``step``: linear warmup from 1/warmup to 1 over
    ``warmup_steps``, then cosine decay to ``min_lr_ratio`` at ``total_steps`` (and flat after)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if total_steps <= warmup_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class LitGPT(L.LightningModule):
    """Train :class:`~densitylab.model.GPT` on next-token prediction.

    Args:
        model: :class:`~densitylab.model.GPTConfig` fields (``vocab_size`` must be set).
        lr: peak learning rate.
        weight_decay: AdamW decoupled weight decay, applied to >= 2-D parameters only (matrices and
            embeddings; never biases or LayerNorm gains).
        betas: AdamW betas.
        warmup_steps: linear warmup length in optimizer steps.
        min_lr_ratio: final LR as a fraction of ``lr`` at the end of the cosine decay.
        decay_steps: optimizer step at which the cosine decay ends (nanoGPT's ``lr_decay_iters``);
            None = the trainer's total steps (``max_steps``, or epochs × batches).
        compile: wrap the training forward in ``torch.compile`` (the uncompiled ``self.model`` stays
            available for probes).

    Attributes ``n_params``, ``n_params_non_embedding`` and ``flops_per_token`` hold the model's
    sizes, counted at construction (before any strategy shards the parameters).

    Logged scalars: ``train/loss`` and ``val/loss`` (mean cross-entropy, nats/token),
    ``train/tokens_seen`` (input tokens trained on, all processes), ``lr``.
    """

    def __init__(
        self,
        model: dict,
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_steps: int = 100,
        min_lr_ratio: float = 0.1,
        decay_steps: int | None = None,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if lr <= 0:
            raise ConfigError(f"optim.lr={lr!r}: expected a positive learning rate")
        if warmup_steps < 0:
            raise ConfigError(f"optim.warmup_steps={warmup_steps!r}: expected >= 0")
        self.model = GPT(GPTConfig(**dict(model)))
        # counted here, before a strategy can shard the parameters (FSDP would count local shards)
        self.n_params = self.model.num_params(non_embedding=False)
        self.n_params_non_embedding = self.model.num_params()
        self.flops_per_token = self.model.flops_per_token()
        self._fwd = torch.compile(self.model) if compile else self.model
        self.tokens_seen = 0  # input tokens trained on, summed over processes (python int: no sync)

    # the compiled wrapper must not be registered as a submodule (its state_dict keys would differ)
    def __setattr__(self, name: str, value: Any) -> None:
        if name == "_fwd":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """(B, T) token ids -> (B, T, V) logits, through the compiled model when enabled."""
        return self._fwd(idx)

    @staticmethod
    def loss_fn(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy in nats over non-ignored targets (0 with zero gradient
        when every target is ignored, e.g. a batch of padding windows; never NaN).

        Args:
            logits: (B, T, V); labels: (B, T) with ``-100`` marking ignored positions.
        """
        total = F.cross_entropy(
            logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
        )
        return total / (labels != IGNORE_INDEX).sum().clamp(min=1)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.loss_fn(self(batch["input_ids"]), batch["labels"])
        self.tokens_seen += batch["input_ids"].numel() * self.trainer.world_size
        self.log("train/loss", loss, on_step=True, on_epoch=False, prog_bar=True)
        self.log("train/tokens_seen", float(self.tokens_seen), on_step=True, on_epoch=False, reduce_fx="max")
        self.log("lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        labels = batch["labels"]
        loss = self.loss_fn(self.model(batch["input_ids"]), labels)
        n = int((labels != IGNORE_INDEX).sum())
        self.log("val/loss", loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=n)

    def configure_optimizers(self):
        decay, no_decay = [], []
        for _, p in {id(p): (n, p) for n, p in self.model.named_parameters() if p.requires_grad}.values():
            (decay if p.dim() >= 2 else no_decay).append(p)
        hp = self.hparams
        fused = self.device.type == "cuda"
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=hp.lr,
            betas=tuple(hp.betas),
            fused=fused,
        )
        total = int(hp.decay_steps or self.trainer.estimated_stepping_batches)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: cosine_with_warmup(s, hp.warmup_steps, total, hp.min_lr_ratio)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["tokens_seen"] = self.tokens_seen

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.tokens_seen = int(checkpoint.get("tokens_seen", 0))
