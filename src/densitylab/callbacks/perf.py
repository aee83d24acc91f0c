"""Throughput / MFU logging and a guard that stops on a non-finite loss before a checkpoint."""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

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

    The error's one line says truthfully whether a checkpoint exists: ``(last good checkpoint: PATH)`` or
    ``(no checkpoint was written yet)``. When fit stops on any exception, this callback closes the tqdm
    progress bars first (:meth:`on_exception`), so the ``error:`` line that ``train.py`` prints afterwards is
    the last line on the terminal, not drawn over by the bar.

    Args:
        checkpoint_every_n_steps: the checkpoint cadence to guard (None: only logging steps).
    """

    def __init__(self, checkpoint_every_n_steps: int | None = None) -> None:
        self.every = checkpoint_every_n_steps

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        """Check the step's loss when due (see the class docstring).

        Raises:
            DivergenceError: when the loss (on any process) is NaN or infinite.
        """
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
                f"raise model.scheduler.warmup_steps ({checkpoint_note(trainer)})"
            )

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        """Close the tqdm progress bars (validation, then training) and flush stdout, so that whatever is
        printed about ``exception`` afterwards comes after the bar and is never redrawn over."""
        close_progress_bars(trainer)


def checkpoint_note(trainer: L.Trainer) -> str:
    """``"last good checkpoint: PATH"`` for the newest checkpoint file that the trainer's ``ModelCheckpoint``
    callbacks have written (or restored on resume) and that exists on disk, else ``"no checkpoint was written
    yet"``. Without a ``monitor`` the callback's newest ``step<N>.ckpt`` holds the same state as its
    ``last.ckpt`` and is named instead (it shows the step). PATH is relative to the working directory when the
    file lies below it."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    found: list[Path] = []
    for cb in trainer.checkpoint_callbacks:
        if not isinstance(cb, ModelCheckpoint):
            continue
        best, last = (Path(p) if p else None for p in (cb.best_model_path, cb.last_model_path))
        order = (best, last) if cb.monitor is None else (last, best)  # monitor None: best = the newest save
        found += [p for p in order if p is not None and p.is_file()][:1]
    if not found:
        return "no checkpoint was written yet"
    newest = max(found, key=lambda p: p.stat().st_mtime_ns)
    try:
        shown = newest.resolve().relative_to(Path.cwd().resolve())
    except ValueError:
        shown = newest
    return f"last good checkpoint: {shown}"


def close_progress_bars(trainer: L.Trainer) -> None:
    """Close the open bars of a ``TQDMProgressBar`` (Lightning's default; the rich bar stops itself on an
    exception) and flush stdout and stderr. Safe to call when no bar is open or the bar is disabled."""
    from lightning.pytorch.callbacks import TQDMProgressBar

    bar = trainer.progress_bar_callback
    if isinstance(bar, TQDMProgressBar):
        for name in ("_val_progress_bar", "_test_progress_bar", "_predict_progress_bar", "_train_progress_bar"):
            tqdm_bar = getattr(bar, name, None)
            if tqdm_bar is not None and not getattr(tqdm_bar, "disable", False):
                tqdm_bar.close()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
