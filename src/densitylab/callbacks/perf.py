"""Throughput / MFU logging and a guard that stops on a non-finite loss before a checkpoint."""

from __future__ import annotations

import math
import time

import lightning as L
import torch
from lightning.fabric.utilities.throughput import get_available_flops

from densitylab.errors import DensitylabError


class DivergenceError(DensitylabError, FloatingPointError):
    """Training loss became NaN or infinite."""


def _precision_dtype(precision: str) -> torch.dtype:
    p = str(precision)
    if "bf16" in p:
        return torch.bfloat16
    if "16" in p:
        return torch.float16
    return torch.float32


class ThroughputLogger(L.Callback):
    """Log ``perf/tokens_per_sec`` (input tokens per second, all processes) and, on a GPU whose
    peak FLOP/s Lightning knows (or with ``peak_flops`` given), ``perf/mfu`` = achieved / peak
    FLOP/s with FLOPs per token from :meth:`GPT.flops_per_token` (PaLM appendix B).

    Time spent in validation and other callbacks' ``on_validation_*`` work is excluded. The CUDA
    stream is synchronised only at logging steps (every ``trainer.log_every_n_steps``), never per step.

    Args:
        peak_flops: peak FLOP/s per device; None asks Lightning's table for the device and precision.
    """

    def __init__(self, peak_flops: float | None = None) -> None:
        self.peak_flops = peak_flops
        self._t0: float | None = None
        self._tokens0 = 0
        self._paused = 0.0
        self._pause_start: float | None = None
        self.total_time = 0.0
        self.total_tokens = 0

    def _sync(self, pl_module: L.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.peak_flops is None:
            self.peak_flops = get_available_flops(pl_module.device, _precision_dtype(trainer.precision))
        self._flops_per_token = getattr(pl_module, "flops_per_token", None) or pl_module.model.flops_per_token()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._t0 is None:
            self._sync(pl_module)
            self._t0, self._tokens0, self._paused = time.perf_counter(), pl_module.tokens_seen, 0.0

    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.training and self._t0 is not None:
            self._sync(pl_module)
            self._pause_start = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._pause_start is not None:
            self._paused += time.perf_counter() - self._pause_start
            self._pause_start = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._t0 is None or (trainer.global_step % trainer.log_every_n_steps):
            return
        self._sync(pl_module)
        elapsed = time.perf_counter() - self._t0 - self._paused
        tokens = pl_module.tokens_seen - self._tokens0
        if elapsed <= 0 or tokens <= 0:
            return
        self.total_time += elapsed
        self.total_tokens += tokens
        tps = tokens / elapsed
        metrics = {"perf/tokens_per_sec": tps}
        if self.peak_flops:
            metrics["perf/mfu"] = tps * self._flops_per_token / (self.peak_flops * trainer.world_size)
        pl_module.log_dict(metrics, on_step=True, on_epoch=False)
        self._t0, self._tokens0, self._paused = time.perf_counter(), pl_module.tokens_seen, 0.0

    @property
    def mean_tokens_per_sec(self) -> float:
        """Mean training throughput over the logged windows (tokens/s), or NaN before any."""
        return self.total_tokens / self.total_time if self.total_time > 0 else math.nan

    def summary_metrics(self) -> dict[str, float | None]:
        """``perf/tokens_per_sec`` for ``summary.json``: :attr:`mean_tokens_per_sec`, None before any window."""
        tps = self.mean_tokens_per_sec
        return {"perf/tokens_per_sec": None if math.isnan(tps) else tps}


class FiniteLossGuard(L.Callback):
    """Raise :class:`DivergenceError` when the training loss is NaN/inf, checked at every logging
    step and at every step that saves a checkpoint (Lightning runs checkpoint callbacks last), so a
    diverged model never overwrites a good ``last.ckpt``. On a single CPU process the check is free and
    runs every step; under DDP the processes agree on the outcome (one collective per checked step).

    Args:
        checkpoint_every_n_steps: the checkpoint cadence to guard (None: only logging steps).
    """

    def __init__(self, checkpoint_every_n_steps: int | None = None) -> None:
        self.every = checkpoint_every_n_steps

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        due = (
            (
                pl_module.device.type == "cpu" and trainer.world_size == 1
            )  # free on one CPU process; DDP needs a collective
            or step % trainer.log_every_n_steps == 0
            or (self.every and step % self.every == 0)
            or trainer.is_last_batch
        )
        if not due:
            return
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        bad = loss is not None and not torch.isfinite(loss).item()
        if trainer.world_size > 1:  # every process stops together (one process alone would hang the others)
            bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        if bad:
            raise DivergenceError(
                f"train/loss is {float(loss) if loss is not None else 'nan'} at step {step} on some process: expected "
                "a finite loss; lower model.optimizer.lr or "
                "raise model.scheduler.warmup_steps (the last good checkpoint was kept)"
            )
