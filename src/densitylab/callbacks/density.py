"""Lightning adapter for the density probes: schedule them, log their records."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import lightning as L
import pandas as pd

from densitylab.callbacks.dist import probe_model
from densitylab.callbacks.ledger import LedgerCallback
from densitylab.callbacks.wandb_util import find_wandb_logger
from densitylab.io import write_parquet_atomic
from densitylab.probes.density import METRICS, density_records, measure_density
from densitylab.probes.schedule import is_scheduled
from densitylab.probes.sets import build_probe_sets, probe_sets_table

log = logging.getLogger(__name__)


class DensityCallback(L.Callback):
    """Measure per-layer activation density by familiarity on fixed probe sets during training.

    Runs at step 0 (before training), at log-spaced steps 1, 2, 4, ... and every ``every_n_steps``,
    and once more at the end; in eval mode, under ``torch.no_grad``, on the uncompiled model, with
    every hook removed afterwards; on global rank 0 (the ledger is summed over processes first), or,
    when the strategy shards parameters (FSDP), on an unsharded copy that every process helps gather.

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
    """

    def __init__(
        self,
        output_dir: str | None = None,
        every_n_steps: int = 150,
        windows_per_set: int = 32,
        batch_size: int = 32,
        seed: int = 0,
    ) -> None:
        self.output_dir = Path(output_dir) if output_dir else None
        self.every_n_steps, self.windows_per_set, self.batch_size, self.seed = (
            every_n_steps,
            windows_per_set,
            batch_size,
            seed,
        )
        self.sets = None
        self.rows: list[pd.DataFrame] = []
        self.headline: dict[str, float] = {}
        self.last_step = -1
        self.seconds = 0.0
        self.calls = 0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dm = trainer.datamodule
        self.ledger_cb = next((c for c in trainer.callbacks if isinstance(c, LedgerCallback)), None)
        if self.ledger_cb is None:
            raise RuntimeError("DensityCallback needs the LedgerCallback (callbacks.ledger) for familiarity")
        self.sets = build_probe_sets(dm.splits, dm.vocab_size, self.windows_per_set, self.seed, dm.eos_id)
        self.primary_view = "entity" if any(s.spans is not None for s in self.sets if s.name == "seen") else "token"
        if trainer.is_global_zero and self.output_dir is not None:
            write_parquet_atomic(probe_sets_table(self.sets), self.output_dir / "probes" / "probe_sets.parquet")
            old = self.output_dir / "probes" / "density.parquet"
            if old.is_file():  # resumed into the same folder: keep the earlier records
                self.rows = [pd.read_parquet(old)]

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # resumed into the same folder: keep only records up to the restored step (no duplicates)
        self.rows = [r[r["step"] <= trainer.global_step] for r in self.rows]
        self.last_step = trainer.global_step if trainer.global_step > 0 else -1
        if trainer.global_step == 0:
            self._probe(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step != self.last_step and is_scheduled(step, self.every_n_steps):  # once per step, also with accumulation
            self._probe(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step != self.last_step:
            self._probe(trainer, pl_module)

    # ------------------------------------------------------------------ the measurement
    def _probe(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step = trainer.global_step
        ledger = self.ledger_cb.ledger
        ledger.sync()  # collective: every process, same step
        self.last_step = step
        t0 = time.perf_counter()
        with probe_model(trainer, pl_module) as model:  # the eager module (or an unsharded copy); None off rank 0
            if model is None:
                return
            metrics, fam = {}, {}
            for s in self.sets:
                metrics[s.name] = measure_density(model, s.input_ids, self.batch_size)
                f = ledger.familiarity(s.input_ids, s.sample_ids, s.spans)
                fam[s.name] = {k: v.cpu().numpy() for k, v in f.items()}
        rows, headline = density_records(step, metrics, fam, self.primary_view)
        self.rows.append(rows)
        self.headline = headline
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        if self.output_dir is not None:
            write_parquet_atomic(
                pd.concat(self.rows, ignore_index=True), self.output_dir / "probes" / "density.parquet"
            )
        self._log(trainer, step, rows, headline)

    def _log(self, trainer: L.Trainer, step: int, rows: pd.DataFrame, headline: dict[str, float]) -> None:
        whole = rows[(rows["view"] == "all") & rows["metric"].isin(METRICS)]
        scalars = {f"density/L{r.layer}/{r.metric}/{r.probe_set}": float(r.value) for r in whole.itertuples()}
        scalars.update({f"density/{k}": v for k, v in headline.items() if math.isfinite(v)})
        scalars["perf/density_probe_seconds"] = self.seconds / max(self.calls, 1)
        for lg in trainer.loggers:
            lg.log_metrics(scalars, step=step)
        wandb_logger = find_wandb_logger(trainer.loggers)
        if wandb_logger is not None:
            import wandb

            fig = self._heatmap(rows, step)
            wandb_logger.experiment.log(
                {"density/heatmap_active_frac_seen": wandb.Image(fig), "trainer/global_step": step}
            )
            import matplotlib.pyplot as plt

            plt.close(fig)

    def _heatmap(self, rows: pd.DataFrame, step: int):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        sel = rows[
            (rows["probe_set"] == "seen") & (rows["view"] == self.primary_view) & (rows["metric"] == "active_frac")
        ]
        grid = sel.pivot(index="layer", columns="bucket", values="value")
        fig, ax = plt.subplots(figsize=(6, 3), dpi=100)
        im = ax.imshow(grid.to_numpy(), aspect="auto", cmap="viridis")
        ax.set_xticks(range(grid.shape[1]), [str(b) for b in grid.columns])
        ax.set_yticks(range(grid.shape[0]), [f"L{i}" for i in grid.index])
        ax.set_xlabel(f"familiarity bucket floor(log2(1+{self.primary_view} exposures))")
        ax.set_title(f"active_frac on seen windows, step {step}")
        fig.colorbar(im, ax=ax)
        fig.tight_layout()
        return fig

    def summary_metrics(self) -> dict[str, float]:
        """Final headline numbers for ``summary.json``: ``density/L{i}/slope`` and ``gap`` with CIs,
        and the mean seconds of one probe call."""
        out = {f"density/{k}": v for k, v in self.headline.items()}
        out["perf/density_probe_seconds"] = self.seconds / max(self.calls, 1)
        out["density/probe_calls"] = self.calls
        return out
