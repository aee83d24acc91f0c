"""Lightning adapter for the memorization probe: schedule it, log its records, apply the plateau rule."""

from __future__ import annotations

import logging
import math

import lightning as L
import numpy as np
import pandas as pd
import torch

from densitylab.callbacks.base import ProbeCallback, ProbeResult
from densitylab.errors import ConfigError
from densitylab.probes.memorization import Plateau, canary_max_bits, measure_memorization, memorization_scalars

log = logging.getLogger(__name__)


class MemorizationCallback(ProbeCallback):
    """Measure how many bits of each canary the model has memorized (Morris et al., arXiv:2505.24832)
    and whether it is (32, 32)-extractable (Pythia, arXiv:2304.11158), during training.

    The canaries are the DataModule's ``canaries`` table (``ground_truth/canaries.parquet``):
    random-token sequences spliced into the text stream ``repetitions`` times (``data.canaries``),
    or, with ``data=uniform``, every training sequence (the capacity experiment).

    Cadence: step 0, log-spaced steps 1, 2, 4, ... (``log_spaced``) and every ``every_n_steps``; with
    ``every_n_epochs`` also at the end of every such epoch once at least ``min_steps_between``
    steps have passed since the last call; and at the end of training
    (:class:`~densitylab.callbacks.base.ProbeCallback`). Eval mode, ``torch.no_grad``,
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
        thin_after: the periodic interval doubles each time the step doubles past it (None or 0: never).
        every_n_epochs: epoch cadence (None = off).
        min_steps_between: minimum steps between two epoch-cadence calls (small datasets have
            epochs of one step).
        batch_size: canaries per forward pass.
        prefix_len, suffix_len: the (k, l) of extractability.
        plateau: None, or Plateau settings (``patience``, ``min_delta`` in bits/param,
            ``lr_patience``, ``lr_factor``, ``min_lr_scale``).

    Data without canaries (``data.canaries.repetitions=[]``) turn the probe off with a warning.

    Raises:
        ConfigError: at fit start if the canaries differ in length or do not fit the model's block.
    """

    name = "memorization"

    def __init__(
        self,
        output_dir: str | None = None,
        every_n_steps: int = 150,
        log_spaced: bool = True,
        thin_after: int | None = 2000,
        every_n_epochs: int | None = None,
        min_steps_between: int = 0,
        batch_size: int = 256,
        prefix_len: int = 32,
        suffix_len: int = 32,
        plateau: dict | None = None,
    ) -> None:
        super().__init__(
            output_dir,
            every_n_steps,
            log_spaced=log_spaced,
            thin_after=thin_after,
            probe_at_start=True,
            every_n_epochs=every_n_epochs,
            min_steps_between=min_steps_between,
        )
        self.batch_size, self.prefix_len, self.suffix_len = batch_size, prefix_len, suffix_len
        self.plateau = Plateau(**plateau) if plateau else None
        self.stopped_by = "limit"
        self.scalars: dict[str, float] = {}
        self.tokens: torch.Tensor | None = None

    # ------------------------------------------------------------------ set-up and state
    def prepare(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Read and check the canaries (every process); no canaries turn the probe off with a warning."""
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
            raise ConfigError(f"canaries have different lengths {sorted(lengths.unique())}: expected one length S")
        self.length = int(lengths.iloc[0])
        if self.length - 1 > pl_module.model.config.block_size:
            raise ConfigError(
                f"canary length {self.length}: expected <= model.net.block_size + 1 = "
                f"{pl_module.model.config.block_size + 1}"
            )
        self.table = table[["canary_id", "repetitions", "alphabet_size"]].reset_index(drop=True)
        self.table["max_bits"] = canary_max_bits(self.length, self.table["alphabet_size"].to_numpy())
        self.tokens = torch.tensor(np.stack(table["tokens"].map(np.asarray).to_list()), dtype=torch.int64)
        self.alphabet = torch.tensor(self.table["alphabet_size"].to_numpy(), dtype=torch.float64)
        self.n_params = getattr(pl_module, "n_params", None) or pl_module.model.num_params(non_embedding=False)

    def state_dict(self) -> dict:
        """The plateau rule's state (best value, waits, LR scale, history) and the probe counters for the
        checkpoint."""
        return {
            **super().state_dict(),
            "plateau": self.plateau.state_dict() if self.plateau else None,
            "stopped_by": self.stopped_by,
        }

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore :meth:`state_dict` (resume)."""
        super().load_state_dict(state_dict)
        if self.plateau is not None and state_dict.get("plateau"):
            self.plateau.load_state_dict(state_dict["plateau"])
        self.stopped_by = state_dict.get("stopped_by", self.stopped_by)

    # ------------------------------------------------------------------ the measurement
    def measure(self, trainer: L.Trainer, pl_module: L.LightningModule, model, step: int) -> ProbeResult:
        """Memorized bits and extractability of every canary
        (:func:`~densitylab.probes.memorization.measure_memorization`).

        Returns:
            The per-canary records (step, epoch, canary_id, repetitions, nll_bits, mem_bits, max_bits,
            extractable, argmax_acc) and the unprefixed scalars of
            :func:`~densitylab.probes.memorization.memorization_scalars` (prefixed in :meth:`after_measure`).
        """
        per = measure_memorization(model, self.tokens, self.alphabet, self.batch_size, self.prefix_len, self.suffix_len)
        per = pd.concat([self.table, per], axis=1)
        scalars = memorization_scalars(per, self.n_params)
        per.insert(0, "epoch", int(trainer.current_epoch))
        per.insert(0, "step", step)
        cols = ["step", "epoch", "canary_id", "repetitions", "nll_bits", "mem_bits", "max_bits", "extractable"]
        return per[[*cols, "argmax_acc"]], scalars

    def after_measure(
        self, trainer: L.Trainer, step: int, result: ProbeResult | None, final: bool
    ) -> ProbeResult | None:
        """Every process: apply the plateau rule (not at step 0 nor at the final probe; the decision is
        broadcast from rank 0), add ``lr_scale``, and prefix the finite scalars with ``memorization/``."""
        scalars = {} if result is None else result[1]
        if self.plateau is not None:
            if not final and step > 0:
                self._apply_plateau(trainer, scalars.get("bits_per_param"))
            scalars["lr_scale"] = self.plateau.lr_scale
        if result is None:
            return None
        self.scalars = scalars
        return result[0], {f"memorization/{k}": float(v) for k, v in scalars.items() if math.isfinite(v)}

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

    def final_metrics(self) -> dict:
        """Final numbers for ``summary.json``: every ``memorization/*`` scalar of the last call, the
        number of calls, the canaries' length and count, ``memorization/stopped_by`` (``plateau``: the plateau
        rule stopped training; ``limit``: the trainer's step or epoch limit did, always so without the rule) and
        with the plateau rule ``memorization/best_bits_per_param``."""
        out: dict = {f"memorization/{k}": v for k, v in self.scalars.items()}
        out["memorization/probe_calls"] = self.calls
        out["memorization/length"] = getattr(self, "length", None)
        out["memorization/canaries"] = 0 if self.tokens is None else int(self.tokens.shape[0])
        out["memorization/stopped_by"] = self.stopped_by
        if self.plateau is not None:
            out["memorization/best_bits_per_param"] = self.plateau.max_seen
        return out
