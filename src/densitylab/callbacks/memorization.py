"""Lightning adapter for the memorization probe: schedule it, log its records, apply the plateau rule."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch

from densitylab.callbacks.dist import probe_model
from densitylab.io import write_parquet_atomic
from densitylab.probes.memorization import Plateau, canary_max_bits, measure_memorization, memorization_scalars
from densitylab.probes.schedule import is_scheduled

log = logging.getLogger(__name__)


class MemorizationCallback(L.Callback):
    """Measure how many bits of each canary the model has memorized (Morris et al., arXiv:2505.24832)
    and whether it is (32, 32)-extractable (Pythia, arXiv:2304.11158), during training.

    The canaries are the DataModule's ``canaries`` table (``ground_truth/canaries.parquet``):
    random-token sequences spliced into the text stream ``repetitions`` times (``data.canaries``),
    or, with ``data=uniform``, every training sequence (the capacity experiment).

    Cadence: step 0, log-spaced steps 1, 2, 4, ... (``log_spaced``) and every ``every_n_steps``; with
    ``every_n_epochs`` also at the end of every such epoch once at least ``min_steps_between``
    steps have passed since the last call; and at the end of training. Eval mode, ``torch.no_grad``,
    the uncompiled model (an unsharded copy under FSDP), on global rank 0, which logs and writes; the
    plateau rule's decision is broadcast so every process lowers the LR or stops at the same step.

    With ``plateau`` set (a dict of :class:`~densitylab.probes.memorization.Plateau` settings), the
    rule watches ``memorization/bits_per_param``: after ``lr_patience`` calls without a gain of
    ``min_delta`` it multiplies the learning rate by ``lr_factor`` (the optimizer's groups and the
    scheduler's base LRs, so the change survives a checkpoint), and after ``patience`` calls it
    stops training. ``summary.json`` records ``memorization/stopped_by`` (``plateau`` or ``limit``).

    Logs ``memorization/bits_total`` (bits), ``memorization/bits/rep{k}`` (total bits of the
    canaries inserted k times), ``memorization/bits_mean/rep{k}``, ``memorization/extractable_frac``
    (and ``/rep{k}``), ``memorization/bits_per_param``, ``memorization/frac_of_entropy``,
    ``memorization/lr_scale``; writes ``probes/memorization.parquet`` (step, epoch, canary_id,
    repetitions, nll_bits, mem_bits, max_bits, extractable, argmax_acc) after every call.

    Args:
        output_dir: run folder.
        every_n_steps: periodic cadence in steps (0 = off).
        log_spaced: probe at steps 1, 2, 4, ... below ``every_n_steps``.
        every_n_epochs: epoch cadence (None = off).
        min_steps_between: minimum steps between two epoch-cadence calls (small datasets have
            epochs of one step).
        batch_size: canaries per forward pass.
        prefix_len, suffix_len: the (k, l) of extractability.
        plateau: None, or Plateau settings (``patience``, ``min_delta`` in bits/param,
            ``lr_patience``, ``lr_factor``, ``min_lr_scale``).

    Data without canaries (``data.canaries.repetitions=[]``) turn the probe off with a warning.

    Raises:
        RuntimeError: at fit start if the canaries differ in length or do not fit the model's block.
    """

    def __init__(
        self,
        output_dir: str | None = None,
        every_n_steps: int = 150,
        log_spaced: bool = True,
        every_n_epochs: int | None = None,
        min_steps_between: int = 0,
        batch_size: int = 256,
        prefix_len: int = 32,
        suffix_len: int = 32,
        plateau: dict | None = None,
    ) -> None:
        self.output_dir = Path(output_dir) if output_dir else None
        self.every_n_steps, self.log_spaced = every_n_steps, log_spaced
        self.every_n_epochs, self.min_steps_between = every_n_epochs, min_steps_between
        self.batch_size, self.prefix_len, self.suffix_len = batch_size, prefix_len, suffix_len
        self.plateau = Plateau(**plateau) if plateau else None
        self.stopped_by = "limit"
        self.rows: list[pd.DataFrame] = []
        self.scalars: dict[str, float] = {}
        self.last_step = -1
        self.seconds, self.calls = 0.0, 0
        self.tokens: torch.Tensor | None = None
        self.enabled = True

    # ------------------------------------------------------------------ set-up and state
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dm = trainer.datamodule
        table = getattr(dm, "canaries", None)
        self.enabled = table is not None and len(table) > 0
        if not self.enabled:
            log.warning(
                "memorization probe off: the data have no canaries (set data.canaries.repetitions, e.g. "
                "[1,2,4,8,16,32], or drop the callback with callbacks.memorization=null)"
            )
            return
        lengths = table["tokens"].map(len)
        if lengths.nunique() != 1:
            raise RuntimeError(f"canaries have different lengths {sorted(lengths.unique())}: expected one length S")
        self.length = int(lengths.iloc[0])
        if self.length - 1 > pl_module.model.config.block_size:
            raise RuntimeError(
                f"canary length {self.length}: expected <= model.block_size + 1 = "
                f"{pl_module.model.config.block_size + 1}"
            )
        self.table = table[["canary_id", "repetitions", "alphabet_size"]].reset_index(drop=True)
        self.table["max_bits"] = canary_max_bits(self.length, self.table["alphabet_size"].to_numpy())
        self.tokens = torch.tensor(np.stack(table["tokens"].map(np.asarray).to_list()), dtype=torch.int64)
        self.alphabet = torch.tensor(self.table["alphabet_size"].to_numpy(), dtype=torch.float64)
        self.n_params = getattr(pl_module, "n_params", None) or pl_module.model.num_params(non_embedding=False)
        if trainer.is_global_zero and self.output_dir is not None:
            old = self.output_dir / "probes" / "memorization.parquet"
            if old.is_file():  # resumed into the same folder: keep the earlier records
                self.rows = [pd.read_parquet(old)]

    def state_dict(self) -> dict:
        """The plateau rule's state (best value, waits, LR scale, history) for the checkpoint."""
        return {"plateau": self.plateau.state_dict() if self.plateau else None, "stopped_by": self.stopped_by}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore :meth:`state_dict` (resume)."""
        if self.plateau is not None and state_dict.get("plateau"):
            self.plateau.load_state_dict(state_dict["plateau"])
        self.stopped_by = state_dict.get("stopped_by", self.stopped_by)

    # ------------------------------------------------------------------ schedule
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.enabled:
            return
        self.rows = [r[r["step"] <= trainer.global_step] for r in self.rows]
        self.last_step = trainer.global_step if trainer.global_step > 0 else -1
        if trainer.global_step == 0:
            self._probe(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.enabled:
            return
        step = trainer.global_step
        if step != self.last_step and is_scheduled(step, self.every_n_steps, self.log_spaced):
            self._probe(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.enabled:
            return
        if not self.every_n_epochs or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        step = trainer.global_step
        if step != self.last_step and step - max(self.last_step, 0) >= self.min_steps_between:
            self._probe(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.enabled:
            return
        if trainer.global_step != self.last_step:
            self._probe(trainer, pl_module, final=True)

    # ------------------------------------------------------------------ the measurement
    def _probe(self, trainer: L.Trainer, pl_module: L.LightningModule, final: bool = False) -> None:
        step = trainer.global_step
        self.last_step = step
        t0 = time.perf_counter()
        per = None
        with probe_model(trainer, pl_module) as model:  # None off rank 0; an unsharded copy under FSDP
            if model is not None:
                per = measure_memorization(
                    model, self.tokens, self.alphabet, self.batch_size, self.prefix_len, self.suffix_len
                )
        scalars = {}
        if per is not None:
            per = pd.concat([self.table, per], axis=1)
            scalars = memorization_scalars(per, self.n_params)
        if self.plateau is not None:
            if not final and step > 0:
                self._apply_plateau(trainer, scalars.get("bits_per_param"))
            scalars["lr_scale"] = self.plateau.lr_scale
        if per is None:
            return
        self.scalars = scalars
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        per.insert(0, "epoch", int(trainer.current_epoch))
        per.insert(0, "step", step)
        self.rows.append(
            per[
                [
                    "step",
                    "epoch",
                    "canary_id",
                    "repetitions",
                    "nll_bits",
                    "mem_bits",
                    "max_bits",
                    "extractable",
                    "argmax_acc",
                ]
            ]
        )
        if self.output_dir is not None:
            write_parquet_atomic(
                pd.concat(self.rows, ignore_index=True), self.output_dir / "probes" / "memorization.parquet"
            )
        logged = {f"memorization/{k}": float(v) for k, v in scalars.items() if math.isfinite(v)}
        logged["perf/memorization_probe_seconds"] = self.seconds / self.calls
        for lg in trainer.loggers:
            lg.log_metrics(logged, step=step)

    def _apply_plateau(self, trainer: L.Trainer, value: float | None) -> None:
        """Rank 0 updates the rule; every process receives the action and the rule's state."""
        action = self.plateau.update(value) if trainer.is_global_zero else None
        action, state = trainer.strategy.broadcast((action, self.plateau.state_dict()), src=0)
        self.plateau.load_state_dict(state)
        if action == "reduce_lr":
            f = self.plateau.lr_factor
            for opt in trainer.optimizers:
                for g in opt.param_groups:
                    g["lr"] *= f
            for cfg in trainer.lr_scheduler_configs:
                if hasattr(cfg.scheduler, "base_lrs"):
                    cfg.scheduler.base_lrs = [lr * f for lr in cfg.scheduler.base_lrs]
            if trainer.is_global_zero:
                log.info(
                    "memorization plateau at step %d (%.3f bits/param): learning rate x%.4g",
                    trainer.global_step,
                    value,
                    self.plateau.lr_scale,
                )
        elif action == "stop":
            self.stopped_by = "plateau"
            trainer.should_stop = True
            if trainer.is_global_zero:
                log.info(
                    "memorization plateau at step %d: %.3f bits/param, no gain > %g in %d evaluations: stopping",
                    trainer.global_step,
                    value,
                    self.plateau.min_delta,
                    self.plateau.patience,
                )

    def summary_metrics(self) -> dict:
        """Final numbers for ``summary.json``: every ``memorization/*`` scalar of the last call, the
        number of calls, ``memorization/stopped_by`` and the mean seconds per call."""
        if not self.enabled:
            return {}
        out: dict = {f"memorization/{k}": v for k, v in self.scalars.items()}
        out["memorization/probe_calls"] = self.calls
        out["memorization/length"] = getattr(self, "length", None)
        out["memorization/canaries"] = 0 if self.tokens is None else int(self.tokens.shape[0])
        if self.plateau is not None:
            out["memorization/stopped_by"] = self.stopped_by
            out["memorization/best_bits_per_param"] = self.plateau.max_seen
        out["perf/memorization_probe_seconds"] = self.seconds / max(self.calls, 1)
        return out
