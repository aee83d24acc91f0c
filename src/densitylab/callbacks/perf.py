"""Throughput / MFU logging, the time accounting of the training loop, and a guard that stops on a non-finite
loss before a checkpoint."""

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
    """Throughput without probe time, and the time accounting of the training loop.

    Logged at every logging step (``trainer.log_every_n_steps``) over the window since the previous one, once per
    optimizer step (with gradient accumulation, at the micro-batch that took the step; never before the first step):

    - ``perf/tokens_per_sec``: input tokens trained on (all processes) per second of **training**: the window's wall
      clock minus the seconds every probe callback recorded in it (:class:`~densitylab.callbacks.base.TimedCallback`:
      whole probe calls, light probe checkpoints) and minus validation;
    - ``perf/wall_tokens_per_sec``: the same tokens per second of wall clock, everything included;
    - ``perf/mfu`` on a GPU whose peak FLOP/s Lightning knows (or with ``peak_flops`` given): achieved / peak FLOP/s
      of ``perf/tokens_per_sec``, FLOPs per token from :meth:`GPT.flops_per_token` (PaLM appendix B).

    The **loop** runs from this callback's ``on_train_start`` to its ``on_fit_end`` (after every final probe; data
    preparation, the probes' fit-start set-up, the sanity check and the end-of-run report are outside it). At the end
    :meth:`summary_metrics` gives ``summary.json`` (this attempt): ``perf/{train,probe,val,other,end,loop}_seconds``
    with train + probe + val + other = loop (other: the step-0 start-up and the end of fit outside probes and
    validation; end: its part after the last training step, e.g. the knowledge probe's end-of-run analysis),
    ``perf/probe_share`` = probe / loop seconds, ``perf/probe_share/<probe>`` per probe, the mean
    ``perf/tokens_per_sec`` (tokens / train seconds) and ``perf/wall_tokens_per_sec`` (tokens / loop seconds).
    Put it before the probe callbacks (``conf/callbacks/default.yaml``): its hooks then run first.

    The CUDA stream is synchronised only at logging steps, the last step and the loop's ends, never every step.

    Args:
        peak_flops: peak FLOP/s per device; None asks Lightning's table for the device and precision.
    """

    def __init__(self, peak_flops: float | None = None) -> None:
        self.peak_flops = peak_flops
        self._timed: list = []
        self._loop0: float | None = None  # on_train_start
        self._first: float | None = None  # first on_train_batch_start
        self._mark: float | None = None  # this callback's last on_train_batch_end (before that step's probes)
        self._end: float | None = None  # on_fit_end
        self._val = 0.0  # validation seconds inside the loop so far
        self._val_start: float | None = None
        self._win: tuple[float, int, float, float] | None = None  # window start: time, tokens, probe s, val s
        self._tokens = (0, 0)  # tokens_seen at the first batch, at the last batch end
        self._at_first: tuple[float, float] = (0.0, 0.0)  # (probe s, val s) at the first batch / at the last mark
        self._at_mark: tuple[float, float] = (0.0, 0.0)
        self._probe0: dict[str, float] = {}
        self._step_seen = 0  # trainer.global_step at the last batch end: a batch that changes it took a step

    def _sync(self, pl_module: L.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def _probe_seconds(self) -> float:
        return sum(cb.timed_seconds for cb in self._timed)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Find the timed callbacks (:func:`~densitylab.callbacks.base.timed_callbacks`)."""
        from densitylab.callbacks.base import timed_callbacks

        self._timed = timed_callbacks(trainer)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.peak_flops is None:
            self.peak_flops = get_available_flops(pl_module.device, _precision_dtype(trainer.precision))
        self._flops_per_token = getattr(pl_module, "flops_per_token", None) or pl_module.model.flops_per_token()
        self._sync(pl_module)
        self._timed = [cb for cb in self._timed if getattr(cb, "enabled", True)]  # a probe may turn off in prepare
        self._probe0 = {cb.timing_name: cb.timed_seconds for cb in self._timed}
        self._loop0, self._first, self._mark, self._end, self._val = time.perf_counter(), None, None, None, 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._first is None and self._loop0 is not None:
            self._sync(pl_module)
            self._first = self._mark = time.perf_counter()
            self._at_first = self._at_mark = (self._probe_seconds(), self._val)
            self._tokens = (pl_module.tokens_seen, pl_module.tokens_seen)
            self._win = (self._first, pl_module.tokens_seen, *self._at_first)
            self._step_seen = trainer.global_step

    def _in_loop_validation(self, trainer) -> bool:
        return self._loop0 is not None and self._end is None and not trainer.sanity_checking

    def on_validation_start(self, trainer, pl_module) -> None:
        if self._in_loop_validation(trainer):  # trainer.training is False here: validating inside fit
            self._sync(pl_module)
            self._val_start = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._val_start is not None:
            self._sync(pl_module)
            self._val += time.perf_counter() - self._val_start
            self._val_start = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._win is None:
            return
        stepped, self._step_seen = trainer.global_step != self._step_seen, trainer.global_step
        log_now = stepped and trainer.global_step % trainer.log_every_n_steps == 0  # once per optimizer step
        last = bool(getattr(trainer, "is_last_batch", False)) or trainer.global_step >= (trainer.max_steps or -1) > 0
        if log_now or last:
            self._sync(pl_module)
        now = time.perf_counter()
        self._mark, self._tokens = now, (self._tokens[0], pl_module.tokens_seen)
        self._at_mark = (self._probe_seconds(), self._val)
        if not log_now:
            return
        t0, tokens0, probe0, val0 = self._win
        wall = now - t0
        train = wall - (self._at_mark[0] - probe0) - (self._at_mark[1] - val0)
        tokens = pl_module.tokens_seen - tokens0
        if wall <= 0 or train <= 0 or tokens <= 0:
            return
        tps = tokens / train
        metrics = {"perf/tokens_per_sec": tps, "perf/wall_tokens_per_sec": tokens / wall}
        if self.peak_flops:
            metrics["perf/mfu"] = tps * self._flops_per_token / (self.peak_flops * trainer.world_size)
        pl_module.log_dict(metrics, on_step=True, on_epoch=False)
        self._win = (now, pl_module.tokens_seen, *self._at_mark)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Close the loop (after every ``on_train_end``: the final probes)."""
        if self._loop0 is not None and self._end is None:
            self._sync(pl_module)
            self._end = time.perf_counter()

    def accounting(self) -> dict[str, float]:
        """The loop's seconds (this attempt): ``train``, ``probe``, ``val``, ``other``, ``end``, ``loop`` and the
        probe seconds per timed callback (``probe/<name>``); up to now while the loop runs. {} before the loop."""
        if self._loop0 is None:
            return {}
        end = self._end if self._end is not None else time.perf_counter()
        probe, val = self._probe_seconds(), self._val
        loop = end - self._loop0
        per = {f"probe/{cb.timing_name}": cb.timed_seconds - self._probe0.get(cb.timing_name, 0.0)
               for cb in self._timed}  # fmt: skip
        total_probe = sum(per.values())
        if self._first is None:  # no training step (e.g. resumed at max_steps)
            return {"train": 0.0, "probe": total_probe, "val": val, "other": loop - total_probe - val, "end": 0.0,
                    "loop": loop, **per}  # fmt: skip
        mark_probe, mark_val = self._at_mark
        train = (self._mark - self._first) - (mark_probe - self._at_first[0]) - (mark_val - self._at_first[1])
        tail = (end - self._mark) - (probe - mark_probe) - (val - mark_val)
        return {"train": train, "probe": total_probe, "val": val, "other": loop - train - total_probe - val,
                "end": tail, "loop": loop, **per}  # fmt: skip

    @property
    def mean_tokens_per_sec(self) -> float:
        """Mean training throughput of this attempt: tokens trained / train seconds (tokens/s), NaN before a step."""
        acc = self.accounting()
        tokens = self._tokens[1] - self._tokens[0]
        return tokens / acc["train"] if acc and acc["train"] > 0 and tokens > 0 else math.nan

    def summary_metrics(self) -> dict[str, float | None]:
        """The ``summary.json`` numbers (class docstring); ``perf/tokens_per_sec`` None before any step."""
        acc = self.accounting()
        tps = self.mean_tokens_per_sec
        out: dict[str, float | None] = {"perf/tokens_per_sec": None if math.isnan(tps) else tps}
        if not acc:
            return out
        tokens = self._tokens[1] - self._tokens[0]
        loop = acc["loop"]
        out["perf/wall_tokens_per_sec"] = tokens / loop if loop > 0 and tokens > 0 else None
        for key in ("train", "probe", "val", "other", "end", "loop"):
            out[f"perf/{key}_seconds"] = acc[key]
        out["perf/probe_share"] = acc["probe"] / loop if loop > 0 else None
        for key, seconds in acc.items():
            if key.startswith("probe/"):
                out[f"perf/probe_share/{key[len('probe/') :]}"] = seconds / loop if loop > 0 else None
        return out


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
