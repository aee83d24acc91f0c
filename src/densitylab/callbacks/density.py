"""Lightning adapter for the density probes: build the probe sets, measure them at probe steps."""

from __future__ import annotations

import logging
import math

import lightning as L
import pandas as pd

from densitylab.callbacks.base import ProbeCallback, ProbeResult
from densitylab.callbacks.ledger import LedgerCallback
from densitylab.io import write_parquet_atomic
from densitylab.probes.density import (
    FINAL_METRICS,
    METRICS,
    SET_METRICS,
    density_records,
    measure_density,
    unit_records,
)
from densitylab.probes.sets import build_probe_sets, probe_sets_table

log = logging.getLogger(__name__)


class DensityCallback(ProbeCallback):
    """Measure per-layer activation density by familiarity on fixed probe sets during training.

    Runs at step 0 (before training), at log-spaced steps 1, 2, 4, ... and every ``every_n_steps``,
    and once more at the end (:class:`~densitylab.callbacks.base.ProbeCallback`); in eval mode, under
    ``torch.no_grad``, on the uncompiled model, with every hook removed afterwards; on global rank 0
    (the ledger is summed over processes first), or, when the strategy shards parameters (FSDP), on an
    unsharded copy that every process helps gather.

    Logs ``density/L{i}/{metric}/{probe_set}`` (whole-set means of every metric, ``active_frac_live``,
    ``zero_frac``, the Jin et al. metrics at the last layer and ``participation_ratio`` included),
    ``density/L{i}/dead_frac`` (all probe sets pooled), ``density/L{i}/slope`` and ``density/L{i}/gap``
    (with ``_ci_low`` / ``_ci_high``), a W&B heatmap (layer × familiarity bucket of ``active_frac`` on
    ``seen``) per probe step; writes ``probes/density.parquet`` and ``probes/units.parquet`` (dead units
    and firing-rate histograms, :func:`~densitylab.probes.density.unit_records`; both rewritten
    atomically every call, both cut to the restored step on resume) and ``probes/probe_sets.parquet``;
    adds the final slopes, gaps and dead fractions to ``summary.json``.

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
        self.unit_rows: list[pd.DataFrame] = []  # the records of probes/units.parquet so far
        self._units: pd.DataFrame | None = None  # this call's units records, until add_records
        self.dead_frac: dict[str, float] = {}

    @property
    def units_path(self):
        """``output_dir/probes/units.parquet``, or None without an output folder."""
        return None if self.output_dir is None else self.output_dir / "probes" / "units.parquet"

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
            The records, and the whole-set means ``density/L{i}/{metric}/{probe_set}``,
            ``density/L{i}/dead_frac`` plus the finite headline numbers ``density/L{i}/slope``, ``gap``
            (and CIs). The units records wait in ``self._units`` for :meth:`add_records`.
        """
        ledger = self.dependency("ledger").ledger
        metrics, fam = {}, {}
        for s in self.sets:
            metrics[s.name] = measure_density(model, s.input_ids, self.batch_size)
            f = ledger.familiarity(s.input_ids, s.sample_ids, s.spans)
            fam[s.name] = {k: v.cpu().numpy() for k, v in f.items()}
        rows, headline = density_records(step, metrics, fam, self.primary_view)
        self.headline = headline
        self._units = units = unit_records(step, metrics)
        whole = rows[(rows["view"] == "all") & rows["metric"].isin(METRICS + FINAL_METRICS + SET_METRICS)]
        scalars = {
            f"density/L{r.layer}/{r.metric}/{r.probe_set}": float(r.value)
            for r in whole.itertuples()
            if math.isfinite(r.value)
        }
        pooled = units[units["probe_set"] == "all"].drop_duplicates("layer")
        self.dead_frac = {f"density/L{r.layer}/dead_frac": float(r.dead_frac) for r in pooled.itertuples()}
        scalars.update(self.dead_frac)
        scalars.update({f"density/{k}": v for k, v in headline.items() if math.isfinite(v)})
        return rows, scalars

    def add_records(self, records: pd.DataFrame) -> None:
        """Append this call's units records and rewrite ``probes/units.parquet`` (atomically), then the
        density records (:meth:`ProbeCallback.add_records`)."""
        units, self._units = self._units, None
        if units is not None:
            self.unit_rows.append(units)
            if self.units_path is not None:
                write_parquet_atomic(pd.concat(self.unit_rows, ignore_index=True), self.units_path)
        super().add_records(records)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """As :meth:`ProbeCallback.on_fit_start`, and (rank 0) read the earlier ``probes/units.parquet``."""
        super().on_fit_start(trainer, pl_module)
        if self.enabled and trainer.is_global_zero:
            path = self.units_path
            self.unit_rows = [pd.read_parquet(path)] if path is not None and path.is_file() else []

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Keep the units records with ``step <= trainer.global_step`` (resume, as the density records),
        then :meth:`ProbeCallback.on_train_start` (which may probe at step 0)."""
        if self.enabled:
            self.unit_rows = [r[r["step"] <= trainer.global_step] for r in self.unit_rows]
        super().on_train_start(trainer, pl_module)

    def figures(self, step: int, records: pd.DataFrame) -> dict:
        """``density/heatmap_active_frac_seen`` (:func:`densitylab.report.density.heatmap_active_frac_seen`)."""
        from densitylab.report.density import heatmap_active_frac_seen

        return {"density/heatmap_active_frac_seen": heatmap_active_frac_seen(records, step, self.primary_view)}

    def final_metrics(self) -> dict[str, float]:
        """Final headline numbers for ``summary.json``: ``density/L{i}/slope`` and ``gap`` with CIs,
        ``density/L{i}/dead_frac`` of the last call, and ``density/probe_calls``."""
        out = {f"density/{k}": v for k, v in self.headline.items()}
        out.update(self.dead_frac)
        out["density/probe_calls"] = self.calls
        return out
