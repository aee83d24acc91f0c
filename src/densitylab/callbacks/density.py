"""Lightning adapter for the density probes: build the probe sets, measure them at probe steps."""

from __future__ import annotations

import logging
import math

import lightning as L
import pandas as pd

from densitylab.callbacks.base import ProbeCallback, ProbeResult
from densitylab.callbacks.ledger import LedgerCallback
from densitylab.io import write_parquet_atomic
from densitylab.probes.density import METRICS, density_records, measure_density
from densitylab.probes.sets import build_probe_sets, probe_sets_table

log = logging.getLogger(__name__)


class DensityCallback(ProbeCallback):
    """Measure per-layer activation density by familiarity on fixed probe sets during training.

    Runs at step 0 (before training), at log-spaced steps 1, 2, 4, ... and every ``every_n_steps``,
    and once more at the end (:class:`~densitylab.callbacks.base.ProbeCallback`); in eval mode, under
    ``torch.no_grad``, on the uncompiled model, with every hook removed afterwards; on global rank 0
    (the ledger is summed over processes first), or, when the strategy shards parameters (FSDP), on an
    unsharded copy that every process helps gather.

    Logs ``density/L{i}/{metric}/{probe_set}`` (whole-set means), ``density/L{i}/slope`` and
    ``density/L{i}/gap`` (with ``_ci_low`` / ``_ci_high``), a W&B heatmap (layer × familiarity
    bucket of ``active_frac`` on ``seen``) per probe step; writes ``probes/density.parquet`` (every
    call, atomically) and ``probes/probe_sets.parquet``; adds the final slopes and gaps to
    ``summary.json``.

    Args:
        output_dir: run folder.
        every_n_steps: periodic cadence after the log-spaced steps.
        windows_per_set: windows in each probe set.
        batch_size: windows per forward pass.
        seed: seed of the probe-set draw.
        ledger: the :class:`~densitylab.callbacks.LedgerCallback` whose exposure counts give the
            familiarity: its key in ``cfg.callbacks`` (resolved by
            :func:`~densitylab.callbacks.base.connect_callbacks`) or the callback itself.

    Raises:
        ConfigError: at fit start if ``ledger`` was never connected to a LedgerCallback.
    """

    name = "density"
    requires = {"ledger": LedgerCallback}

    def __init__(
        self,
        output_dir: str | None = None,
        every_n_steps: int = 150,
        windows_per_set: int = 32,
        batch_size: int = 32,
        *,
        seed: int,
        ledger: str | LedgerCallback | None = "ledger",
    ) -> None:
        super().__init__(output_dir, every_n_steps, needs={"ledger": ledger})
        self.windows_per_set, self.batch_size, self.seed = windows_per_set, batch_size, seed
        self.sets = None
        self.headline: dict[str, float] = {}

    def prepare(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Draw the probe sets (every process) and write ``probes/probe_sets.parquet`` (rank 0)."""
        dm = trainer.datamodule
        self.sets = build_probe_sets(dm.splits, dm.vocab_size, self.windows_per_set, self.seed, dm.eos_id)
        self.primary_view = "entity" if any(s.spans is not None for s in self.sets if s.name == "seen") else "token"
        if trainer.is_global_zero and self.output_dir is not None:
            write_parquet_atomic(probe_sets_table(self.sets), self.output_dir / "probes" / "probe_sets.parquet")

    def before_measure(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> None:
        """Sum the ledger over processes (a collective: every process, same step)."""
        self.dependency("ledger").ledger.sync()

    def measure(self, trainer: L.Trainer, pl_module: L.LightningModule, model, step: int) -> ProbeResult:
        """Density metrics of every probe set, by familiarity (:func:`~densitylab.probes.density.density_records`).

        Returns:
            The records, and the whole-set means ``density/L{i}/{metric}/{probe_set}`` plus the finite
            headline numbers ``density/L{i}/slope``, ``gap`` (and CIs).
        """
        ledger = self.dependency("ledger").ledger
        metrics, fam = {}, {}
        for s in self.sets:
            metrics[s.name] = measure_density(model, s.input_ids, self.batch_size)
            f = ledger.familiarity(s.input_ids, s.sample_ids, s.spans)
            fam[s.name] = {k: v.cpu().numpy() for k, v in f.items()}
        rows, headline = density_records(step, metrics, fam, self.primary_view)
        self.headline = headline
        whole = rows[(rows["view"] == "all") & rows["metric"].isin(METRICS)]
        scalars = {f"density/L{r.layer}/{r.metric}/{r.probe_set}": float(r.value) for r in whole.itertuples()}
        scalars.update({f"density/{k}": v for k, v in headline.items() if math.isfinite(v)})
        return rows, scalars

    def figures(self, step: int, records: pd.DataFrame) -> dict:
        """``density/heatmap_active_frac_seen`` (:func:`densitylab.report.density.heatmap_active_frac_seen`)."""
        from densitylab.report.density import heatmap_active_frac_seen

        return {"density/heatmap_active_frac_seen": heatmap_active_frac_seen(records, step, self.primary_view)}

    def final_metrics(self) -> dict[str, float]:
        """Final headline numbers for ``summary.json``: ``density/L{i}/slope`` and ``gap`` with CIs, and
        ``density/probe_calls``."""
        out = {f"density/{k}": v for k, v in self.headline.items()}
        out["density/probe_calls"] = self.calls
        return out
