"""Lightning adapter for the density probes: build the probe sets, measure them at probe steps."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd

from densitylab.callbacks.base import ProbeCallback, ProbeResult, with_tokens_seen
from densitylab.callbacks.ledger import LedgerCallback
from densitylab.errors import ConfigError
from densitylab.io import write_parquet_atomic
from densitylab.probes.density import EndpointSpec, density_records, measure_density, unit_records
from densitylab.probes.panel import PanelSpec
from densitylab.probes.sets import build_probe_sets, probe_sets_table, window_probe_sets

log = logging.getLogger(__name__)
# density metrics whose value is a fraction in [0, 1] (eff_rank is divided by d): their W&B heatmap is on the fixed
# colour scale 0-1
FRACTION_METRICS = ("active_frac", "active_frac_live", "zero_frac", "hoyer", "top5_energy", "jin_top5_energy",
                    "eff_rank", "jin_eff_rank")  # fmt: skip


def _plan_entities(dm) -> pd.DataFrame | None:
    """The entity table the panel is drawn from: the generator's ``people`` table (``entity_id``,
    ``planned_docs`` and, with a Latin square, ``study_group``) when the data have one, else the extractor's
    entity table (text data), else None."""
    gt = getattr(dm, "ground_truth_dir", None)
    people = None if gt is None else Path(gt) / "people.parquet"
    if people is not None and people.is_file():
        table = pd.read_parquet(people)
        if "planned_docs" in table:
            return table[["entity_id", "planned_docs", *(["study_group"] if "study_group" in table else [])]]
    return getattr(dm, "entity_table", None)


class DensityCallback(ProbeCallback):
    """Measure per-layer activation density by familiarity, with persons as the unit, during training.

    At fit start it draws the probe sets once from the data (:func:`~densitylab.probes.sets.build_probe_sets`):
    the **person panel** (``panel``: each panel person's held-out document, every position labelled with its
    role and person), ``seen`` training windows and the ``shuffled`` / ``random`` / ``random_seen`` controls.
    Runs at step 0 (before training), at log-spaced steps (1, 4, 16, 64 by default) and every
    ``every_n_steps``, and once more at the end (:class:`~densitylab.callbacks.base.ProbeCallback`); in eval mode, under
    ``torch.no_grad``, on the uncompiled model, with every hook removed afterwards; on global rank 0 (the
    ledger is summed over processes first), or, when the strategy shards parameters (FSDP), on an
    unsharded copy that every process helps gather.

    Logs ``density/L{i}/{metric}/{probe_set}`` (whole-set means), ``density/L{i}/dead_frac``, the
    pre-registered endpoints ``density/L{i}/{role}/slope`` and ``density/L{i}/{role}/diff_{bin}`` (with
    ``_ci_low``, ``_ci_high``, ``_n_entities``; sufficient rows only) and a W&B heatmap (layer × exposure
    bin of the primary metric at ``name_last``) per probe step; writes ``probes/density.parquet``,
    ``probes/units.parquet`` (dead units and firing-rate histograms), ``probes/probe_sets.parquet`` (rows,
    roles, persons), ``probes/panel.parquet`` (the panel) and ``probes/density_positions.parquet`` (the
    last call's positions); at the end of fit runs the covariate regression once
    (``probes/density_regression.parquet``, :mod:`densitylab.probes.density_regression`) and adds the final
    endpoints and dead fractions to ``summary.json``.

    **Windows-only mode** (data without packed text splits, ``not datamodule.splits``: ``data=uniform``,
    ``callbacks=uniform_control``; the Lazy-Neuron control of Li et al., "The Lazy Neuron Phenomenon",
    arXiv:2210.06313: does MLP activation density fall during training with no text at all?): the sets are
    the datamodule's ``probe_windows(windows_per_set)`` (``seen``: trained sequences with their sample ids;
    ``heldout``: never-trained ones) and the ``random`` control (``control_rows`` rows uniform over the
    vocabulary), from :func:`~densitylab.probes.sets.window_probe_sets`; no panel, roles, persons or endpoints.
    ``probes/density.parquet`` then holds the whole-set rows (role, exposure ``all``, estimand ``mean``) of
    every metric per layer, set and step, ``probes/units.parquet`` the dead units, and the logged scalars
    are ``density/L{i}/{metric}/{probe_set}`` and ``density/L{i}/dead_frac``; no ledger is read (token and
    sequence exposures are 0), no heatmap, no positions table, no regression, no endpoint headline.

    Args:
        output_dir: run folder.
        every_n_steps: periodic cadence after the log-spaced steps.
        windows_per_set: training windows in ``seen``.
        log_spaced: the log-spaced steps below ``every_n_steps``: 4 = 1, 4, 16, 64 (True = every power of 2).
        thin_after: the periodic interval doubles each time the step doubles past it (None or 0: never).
        control_rows: rows of each control set (``shuffled``, ``random``, ``random_seen``).
        batch_size: rows per forward pass.
        seed: seed of the control sets' draws.
        ledger: the :class:`~densitylab.callbacks.LedgerCallback` whose exposure counts give the
            familiarity: its key in ``cfg.callbacks`` (resolved by
            :func:`~densitylab.callbacks.base.connect_callbacks`) or the callback itself.
        panel: :class:`~densitylab.probes.panel.PanelSpec` fields (``size``, ``top_docs``, ``min_zero``,
            ``seed``; ``{}`` = its defaults).
        endpoints: :class:`~densitylab.probes.density.EndpointSpec` fields (the pre-registered endpoints;
            ``{}`` = its defaults, which equal ``conf/callbacks/default.yaml``).
        regression: run the covariate regression at the end of fit.
        windows_only: the run's data have no packed text splits (``data=uniform``): the windows-only mode,
            where ``ledger`` may be None (no ledger: the callback then requires none). The mode itself follows
            the data (``not datamodule.splits``); this flag only lets the ledger go and checks the data.

    Raises:
        ConfigError: at construction for a bad panel or endpoint setting or a non-boolean ``windows_only``; at
            fit start if ``ledger`` was never connected to a LedgerCallback, if ``windows_only`` is set but the
            data have packed text splits (the full probe needs the ledger), or if the data have neither packed
            text splits nor ``probe_windows``.
    """

    name = "density"
    requires = {"ledger": LedgerCallback}

    def __init__(
        self,
        output_dir: str | None = None,
        every_n_steps: int = 150,
        windows_per_set: int = 16,
        batch_size: int = 32,
        *,
        log_spaced: bool | int = 4,
        thin_after: int | None = 2000,
        control_rows: int = 8,
        seed: int,
        ledger: str | LedgerCallback | None = "ledger",
        panel: Mapping | PanelSpec,
        endpoints: Mapping | EndpointSpec,
        regression: bool = True,
        windows_only: bool = False,
    ) -> None:
        if not isinstance(windows_only, bool):
            raise ConfigError(f"callbacks.density.windows_only={windows_only!r}: expected true or false")
        self.windows_only = windows_only
        if windows_only and ledger is None:  # the windows-only mode without a ledger: this instance requires none
            self.requires = {}
        needs = {"ledger": ledger} if "ledger" in self.requires else None
        super().__init__(output_dir, every_n_steps, log_spaced=log_spaced, thin_after=thin_after, needs=needs)
        for key, v in (
            ("windows_per_set", windows_per_set),
            ("control_rows", control_rows),
            ("batch_size", batch_size),
        ):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"callbacks.density.{key}={v!r}: expected an integer >= 1")
        if not isinstance(log_spaced, bool) and (not isinstance(log_spaced, int) or log_spaced < 2):
            raise ConfigError(f"callbacks.density.log_spaced={log_spaced!r}: expected true, false or an integer >= 2")
        self.windows_per_set, self.control_rows = windows_per_set, control_rows
        self.batch_size, self.seed = batch_size, seed
        try:
            if isinstance(endpoints, EndpointSpec):
                self.spec = endpoints
            else:
                e = dict(endpoints or {})
                for k in ("secondary", "roles", "bin_edges"):
                    if k in e and e[k] is not None and not isinstance(e[k], str):
                        e[k] = tuple(e[k])
                self.spec = EndpointSpec(**e)
            if isinstance(panel, PanelSpec):
                self.panel_spec = panel
            else:  # the core is balanced over the endpoints' bins
                self.panel_spec = PanelSpec(**{"core_edges": tuple(self.spec.bin_edges), **dict(panel or {})})
        except TypeError as err:  # an unknown key
            bad = str(err).split("argument")[-1].strip(" '")
            raise ConfigError(
                f"callbacks.density: unknown panel or endpoints setting {bad!r}: expected panel.{{size, top_docs, "
                "min_zero, seed, core}, endpoints.{metric, secondary, exposure, roles, bin_edges, min_entities, level}"
            ) from None
        except ValueError as err:
            raise ConfigError(str(err).splitlines()[0]) from None
        self.regression = regression
        self.sets = None
        self.panel: pd.DataFrame | None = None
        self.headline: dict[str, float] = {}
        self.unit_rows: list[pd.DataFrame] = []  # the records of probes/units.parquet so far
        self._units: pd.DataFrame | None = None  # this call's units records, until add_records
        self._positions: pd.DataFrame | None = None  # the last call's positions, written at fit end
        self.exposure_used = self.spec.exposure
        self.dead_frac: dict[str, float] = {}
        self.windows_mode = False  # set at fit start: the data have no packed text splits

    @property
    def units_path(self):
        """``output_dir/probes/units.parquet``, or None without an output folder."""
        return None if self.output_dir is None else self.output_dir / "probes" / "units.parquet"

    def prepare(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Draw the probe sets and the panel (every process); write ``probes/probe_sets.parquet`` and
        ``probes/panel.parquet`` (rank 0). Data without packed text splits: the windows-only sets
        (:meth:`prepare_windows`)."""
        dm = trainer.datamodule
        if self.windows_only or not getattr(dm, "splits", None):
            self.prepare_windows(trainer, dm)
            return
        sets, self.panel = build_probe_sets(
            dm.splits,
            dm.vocab_size,
            eos_id=dm.eos_id,
            entities=_plan_entities(dm),
            canaries=getattr(dm, "canaries", None),
            panel=self.panel_spec,
            n_seen=self.windows_per_set,
            n_control=self.control_rows,
            seed=self.seed,
        )
        self.sets = {s.name: s for s in sets}
        if self.panel is not None:
            n = len(self.panel)
            missing = int((self.panel["row"] < 0).sum())
            log.info("density: person panel of %d people (%d without a held-out document)", n, missing)
        if trainer.is_global_zero and self.output_dir is not None:
            write_parquet_atomic(probe_sets_table(sets), self.output_dir / "probes" / "probe_sets.parquet")
            if self.panel is not None:
                write_parquet_atomic(self.panel, self.output_dir / "probes" / "panel.parquet")

    def prepare_windows(self, trainer: L.Trainer, dm) -> None:
        """The windows-only mode's sets (every process): ``seen`` and ``heldout`` from
        ``dm.probe_windows(windows_per_set)`` and ``random`` (``control_rows`` rows), by
        :func:`~densitylab.probes.sets.window_probe_sets`; writes ``probes/probe_sets.parquet`` (rank 0).

        Raises:
            ConfigError: if the data have packed text splits (``windows_only`` set on text data: the full
                probe needs the ledger) or no ``probe_windows``.
        """
        splits = sorted(getattr(dm, "splits", None) or {})
        if splits:
            raise ConfigError(
                f"callbacks.density.windows_only=true: the data have packed text splits {splits}: the windows-only "
                "mode (ledger: null) is for data without them (data=uniform); on text data the density probe needs "
                "the ledger (callbacks.density.windows_only=false, callbacks.density.ledger=ledger)"
            )
        windows = getattr(dm, "probe_windows", None)
        if not callable(windows):
            raise ConfigError(
                f"callbacks.density: the data ({type(dm).__name__}) have neither packed text splits nor "
                "probe_windows(): expected data=synthetic|text|hub, or data=uniform with callbacks=uniform_control"
            )
        try:
            sets = window_probe_sets(
                windows(self.windows_per_set),
                dm.vocab_size,
                eos_id=dm.eos_id,
                n_control=self.control_rows,
                seed=self.seed,
            )
        except ValueError as err:
            raise ConfigError(str(err).splitlines()[0]) from None
        self.sets = {s.name: s for s in sets}
        self.panel, self.windows_mode = None, True
        log.info(
            "density: windows-only mode (no packed text splits): %s",
            ", ".join(f"{s.name} {len(s.input_ids)} rows" for s in sets),
        )
        if trainer.is_global_zero and self.output_dir is not None:
            write_parquet_atomic(probe_sets_table(sets), self.output_dir / "probes" / "probe_sets.parquet")

    def _ledger(self):
        """The connected ledger's :class:`~densitylab.ledger.ExposureLedger`, or None in the windows-only mode
        (its counts are over packed text windows, which such data do not have) or without a ledger."""
        if self.windows_mode or "ledger" not in self.requires:
            return None
        return self.dependency("ledger").ledger

    def before_measure(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> None:
        """Sum the ledger over processes (a collective: every process, same step); nothing without one."""
        ledger = self._ledger()
        if ledger is not None:
            ledger.sync()

    def measure(self, trainer: L.Trainer, pl_module: L.LightningModule, model, step: int) -> ProbeResult:
        """Density metrics of every probe set, the pre-registered endpoints with persons as clusters
        (:func:`~densitylab.probes.density.density_records`).

        Returns:
            The records, and the whole-set means ``density/L{i}/{metric}/{probe_set}``,
            ``density/L{i}/dead_frac`` plus the sufficient endpoint numbers. The units records and the
            positions wait in ``self._units`` / ``self._positions`` for :meth:`add_records`. In the
            windows-only mode there is no ledger: zero token counts, no sequence counts, no exposures, no
            endpoints and no positions.
        """
        ledger = self._ledger()
        full = (
            self.is_last_call(trainer, step)  # the end, or a scheduled call at the last step: the whole panel
            or step == 0
            or (self.every_n_steps > 0 and step % self.every_n_steps == 0)
        )
        sets = dict(self.sets)
        if not full and "panel" in sets:  # the log-spaced early calls read the panel's core only
            sets["panel"] = sets["panel"].core()
        metrics = {  # live and dead units from the same positions at every call: the core, seen, the controls
            name: measure_density(
                model,
                s.input_ids,
                self.batch_size,
                final_positions=s.final_positions(),
                probed=s.probed(),
                pool_rows=s.core_rows or None,
            )
            for name, s in sets.items()
        }
        exposure = {}
        if ledger is not None and ledger.n_entities:
            exposure = {
                "distinct_docs": ledger.entity_distinct_docs(),
                "subject_docs": ledger.entity_subject_docs(),
                "mentions": ledger.entity_mentions(),
                "comentions": ledger.entity_comentions(),
            }
        exposure = {k: v.cpu().numpy() for k, v in exposure.items()}
        rows, headline, positions = density_records(
            step,
            metrics,
            sets,
            exposure,
            np.zeros(model.config.vocab_size, dtype=np.int64) if ledger is None else ledger.token_counts.cpu().numpy(),
            None if ledger is None else ledger.sequence_counts.cpu().numpy(),
            self.spec,
        )
        self.headline = headline
        # the positions feed the regression on the panel: none in the windows-only mode
        self._positions = None if self.windows_mode else positions[positions["probe_set"].isin(["panel", "seen"])]
        ends = rows[rows["exposure"] != "all"]
        self.exposure_used = str(ends["exposure"].iloc[0]) if len(ends) else self.spec.exposure
        self._units = units = unit_records(step, metrics)
        whole = rows[(rows["role"] == "all") & (rows["estimand"] == "mean") & (rows["exposure"] == "all")]
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
            self.unit_rows.append(with_tokens_seen(units, self.tokens_seen))
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

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """After the final probe call (rank 0, outside every timed probe call): write the last call's
        positions (``probes/density_positions.parquet``) and run the covariate regression once on them
        with the pre-registered metric, roles and exposure (``probes/density_regression.parquet``)."""
        parent = getattr(super(), "on_fit_end", None)
        if parent is not None:
            parent(trainer, pl_module)
        positions, self._positions = self._positions, None
        if not (self.enabled and trainer.is_global_zero and self.output_dir is not None) or positions is None:
            return
        positions = with_tokens_seen(positions, self.last_tokens_seen)  # the last call's positions
        write_parquet_atomic(positions, self.output_dir / "probes" / "density_positions.parquet")
        if not self.regression:
            return
        from densitylab.probes.density_regression import write_density_regression

        try:
            write_density_regression(
                self.output_dir,
                metric=self.spec.metric,
                roles=tuple(self.spec.roles),
                exposure=self.exposure_used,
                level=self.spec.level,
            )
        except Exception as err:  # a secondary analysis never fails a finished run
            log.warning("density regression skipped: %s", str(err).splitlines()[0])

    def figures(self, step: int, records: pd.DataFrame) -> dict:
        """``density/heatmap_by_bin`` (:func:`densitylab.report.density.heatmap_by_bin`). A metric that is a
        fraction (:data:`FRACTION_METRICS`: ``active_frac_live``, ``zero_frac``, ``hoyer`` ...) is drawn on the fixed
        colour scale 0–1 at every step, so the colours of two steps or two runs compare (every per-position metric is;
        ``eff_rank`` is divided by d); another metric keeps the automatic scale of its step."""
        from densitylab.report.density import heatmap_by_bin

        if not (records["estimand"] == "mean").any() or "panel" not in set(records["probe_set"]):
            return {}
        fig = heatmap_by_bin(records, step, "name_last", self.spec.metric)
        if self.spec.metric in FRACTION_METRICS:
            im = fig.axes[0].images[0]
            im.set_clim(0.0, 1.0)
            if im.colorbar is not None:
                im.colorbar.set_label(f"{self.spec.metric} (fraction; fixed scale 0–1)", fontsize=8)
        return {"density/heatmap_by_bin": fig}

    def final_metrics(self) -> dict[str, float]:
        """Final headline numbers for ``summary.json``: the endpoints ``density/L{i}/{role}/slope`` and
        ``diff_{bin}`` with CIs and ``n_entities``, ``density/L{i}/dead_frac`` of the last call, and
        ``density/probe_calls``."""
        out = {f"density/{k}": v for k, v in self.headline.items()}
        out.update(self.dead_frac)
        out["density/probe_calls"] = self.calls
        return out
