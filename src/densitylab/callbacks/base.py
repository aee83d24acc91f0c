"""The skeleton every probe callback shares, and the explicit wiring between callbacks.

A probe is a measurement on the model at scheduled training steps. :class:`ProbeCallback` owns
everything around the measurement: the schedule, resume dedupe, timing, rank gating, the parquet
table, logging and ``summary.json`` numbers. A subclass sets ``name`` and implements
:meth:`ProbeCallback.measure`; a new probe (knowledge, hallucination, priming, ...) is that plus a
``conf/callbacks`` entry::

    class NormProbe(ProbeCallback):
        name = "norm"  # probes/norm.parquet, perf/norm_probe_seconds

        def measure(self, trainer, pl_module, model, step):
            norm = float(sum(p.norm() ** 2 for p in model.parameters()) ** 0.5)
            return pd.DataFrame({"step": [step], "norm": [norm]}), {"norm/weights": norm}

Callbacks that read another callback's state name it by its key in ``conf/callbacks``
(``density: {ledger: ledger}``); :func:`connect_callbacks` resolves those names once all callbacks
are built.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

import lightning as L
import pandas as pd
import torch

from densitylab.callbacks.dist import probe_model
from densitylab.callbacks.wandb_util import find_wandb_logger
from densitylab.errors import ConfigError
from densitylab.io import write_parquet_atomic
from densitylab.probes.schedule import is_scheduled

# what a measurement returns: (records for probes/{name}.parquet, scalars to log at this step)
ProbeResult = tuple[pd.DataFrame, dict[str, float]]

TOKENS_KEY = "train/tokens_seen"  # the x-axis shared by runs of different batch or block size
TIMING_TABLE = "timing.parquet"  # RUN_DIR/probes/timing.parquet: one row per timed call of every probe


class TimedCallback:
    """The seconds a callback spends outside training, for the time accounting of
    :class:`~densitylab.callbacks.perf.ThroughputLogger` and ``probes/timing.parquet``.

    Attributes:
        timing_name: the ``probe`` column of ``probes/timing.parquet`` and ``<name>`` of ``perf/probe_share/<name>``.
        timed_seconds: wall-clock seconds of every timed call of this process so far (this attempt; every process,
            waits at collectives included). Only grows: the ThroughputLogger takes differences.
        timing: ``(step, kind, seconds)`` of every recorded call (``kind``: ``call``; ``final`` for the call at the
            end of training or at ``max_steps``; ``setup`` at step -1), earlier attempts' rows of the run folder
            included (rank 0).
        timing_loaded: True once :meth:`load_timing` read the earlier rows (fit start, rank 0): until then
            :func:`write_timing_table` keeps this callback's rows of the file as they are.
    """

    timing_name: str = ""
    timed_seconds: float = 0.0
    timing: list[tuple[int, str, float]]
    timing_loaded: bool = False

    def add_timing(self, step: int, kind: str, seconds: float, record: bool = True) -> None:
        """Count ``seconds`` of a call at ``step`` (every process); with ``record``, also a row of the table."""
        self.timed_seconds += seconds
        if record:
            self.timing.append((int(step), kind, float(seconds)))

    def load_timing(self, path: Path | None) -> None:
        """Read this callback's earlier rows of ``probes/timing.parquet`` (resume); none without the file."""
        self.timing = []
        if path is not None and path.is_file():
            t = pd.read_parquet(path)
            t = t[t["probe"] == self.timing_name]
            self.timing = list(zip(t["step"].astype(int), t["kind"].astype(str), t["seconds"].astype(float)))
        self.timing_loaded = True

    def keep_timing_until(self, step: int) -> None:
        """Drop the rows after ``step`` (the restored step of a resume: those steps are taken again)."""
        self.timing = [r for r in self.timing if r[0] <= step]


def timed_callbacks(trainer: L.Trainer) -> list[TimedCallback]:
    """The trainer's callbacks that account their seconds (:class:`TimedCallback`) and are on, in hook order."""
    return [cb for cb in getattr(trainer, "callbacks", []) or [] if isinstance(cb, TimedCallback)
            and getattr(cb, "enabled", True)]  # fmt: skip


def write_timing_table(trainer: L.Trainer, path: Path | None) -> None:
    """Rewrite ``path`` (``probes/timing.parquet``) atomically with every timed callback's rows: columns ``step``
    (optimizer steps completed; -1 for the set-up at fit start), ``probe``, ``kind`` (``call`` / ``final`` /
    ``setup``) and ``seconds`` (wall clock of the whole call: measurement, table write, logging). Rank 0 calls it.

    The file's rows of a probe whose callback has not read them yet (:attr:`TimedCallback.timing_loaded`: a
    resume, at the fit start of a callback earlier in hook order) or that is not on in this attempt are kept as
    they are, so no callback's write drops another one's earlier rows."""
    if path is None:
        return
    columns = ["step", "probe", "kind", "seconds"]
    loaded = [cb for cb in timed_callbacks(trainer) if cb.timing_loaded]
    rows = [(s, cb.timing_name, k, sec) for cb in loaded for s, k, sec in cb.timing]
    table = pd.DataFrame(rows, columns=columns)
    if path.is_file():
        old = pd.read_parquet(path, columns=columns)
        kept = old[~old["probe"].isin({cb.timing_name for cb in loaded})]
        if len(kept):
            table = pd.concat([f for f in (table, kept) if len(f)], ignore_index=True)
    table = table.astype({"step": "int64", "probe": str, "kind": str, "seconds": "float64"})
    write_parquet_atomic(table.sort_values(["step", "probe"], kind="stable", ignore_index=True), path)


class ProbeCallback(TimedCallback, L.Callback):
    """Base of the probe callbacks: schedule a measurement, keep and write its records, log them.

    **Schedule** (every process takes the same decisions; probes may hold collectives):

    - ``on_train_start`` at step 0: one probe before training when ``probe_at_start``;
    - ``on_train_batch_end``: when :func:`~densitylab.probes.schedule.is_scheduled` (log-spaced steps
      0, 1, 2, 4, ... below ``every_n_steps`` when ``log_spaced``, and every multiple of
      ``every_n_steps``; 0 = no periodic part), at most once per optimizer step (with gradient
      accumulation several batches share a step);
    - ``on_train_epoch_end``: with ``every_n_epochs``, at the end of every such epoch, once at least
      ``min_steps_between`` steps have passed since the last probe;
    - ``on_train_end``: once more, unless the last probe was at this step.

    **One probe** (:meth:`probe`): :meth:`before_measure` on every process; :meth:`measure` on the
    model of :func:`~densitylab.callbacks.dist.probe_model` (eval mode, uncompiled, on global rank 0
    only; an unsharded copy under FSDP); :meth:`after_measure` on every process (e.g. broadcast a
    decision from rank 0); then, on rank 0: the records, each row with ``train/tokens_seen`` (input tokens
    trained on so far, all processes: ``LitGPT.tokens_seen``), are appended and ``probes/{name}.parquet``
    is rewritten atomically (all records so far); the scalars plus ``train/tokens_seen`` and
    ``perf/{name}_probe_seconds`` (mean wall-clock seconds per probe call) go to every logger with
    ``log_metrics(scalars, step=step)``; :meth:`figures` go to W&B as images (when a W&B logger is
    on) with ``trainer/global_step``.

    **Timing** (:class:`TimedCallback`): the whole call is timed on every process (before/after hooks,
    measurement, table write, logging, images); rank 0 adds a row to ``probes/timing.parquet`` (step, probe,
    kind, seconds), and the :class:`~densitylab.callbacks.perf.ThroughputLogger` leaves these seconds out of
    ``perf/tokens_per_sec``. The fit-start set-up (:meth:`prepare`) is timed as a ``setup`` row at step -1
    (outside the training loop: not in ``perf/probe_share``).

    **Resume**: at fit start rank 0 reads an existing ``probes/{name}.parquet`` of the run folder;
    at train start only its records with ``step <= trainer.global_step`` (the restored step) are
    kept, so a resumed run never holds a step twice.

    **Dependencies**: ``requires`` maps a constructor argument to the callback type it must name,
    e.g. ``{"ledger": LedgerCallback}``; the argument is a key of ``cfg.callbacks`` (resolved by
    :func:`connect_callbacks`) or the callback itself; :meth:`dependency` returns it.

    Subclass hooks: :meth:`prepare` (fit-start set-up, every process), :meth:`before_measure`,
    :meth:`measure` (required), :meth:`after_measure`, :meth:`figures`, :meth:`final_metrics`.
    Set ``self.enabled = False`` in :meth:`prepare` to turn the probe off for the run.

    Args:
        output_dir: run folder (None: no table is written).
        every_n_steps: periodic cadence in optimizer steps (0 = off).
        log_spaced: also probe at log-spaced steps below ``every_n_steps``: True = 1, 2, 4, 8, ...; an
            integer base >= 2, e.g. 4 = 1, 4, 16, 64 (:func:`~densitylab.probes.schedule.is_scheduled`).
        thin_after: the periodic interval doubles each time the step doubles past this step (None or 0: never;
            :func:`~densitylab.probes.schedule.periodic_interval`); the final call always runs.
        probe_at_start: probe at step 0, before training.
        every_n_epochs: epoch cadence (None or 0 = off).
        min_steps_between: minimum steps between an epoch-cadence probe and the previous probe.
        needs: the callbacks named by ``requires``' arguments (config keys or callbacks).

    Attributes:
        rows: the records so far (list of DataFrames, each with a ``step`` column).
        calls, seconds: probe calls so far and their total seconds (whole calls; resumed from checkpoints).
        last_step: step of the last probe (-1: none yet).
        last_tokens_seen: ``train/tokens_seen`` at the last probe call (None: none yet, or a module without it);
            the column of tables written after it from its measurement (end-of-run analyses).
        last_final: whether that probe was the one at the end of training (``final``; kept in probe checkpoints).
        final_call: True while the probe at the end of training runs (see :meth:`is_last_call`).
        config_key: this callback's key in ``cfg.callbacks`` (set by :func:`connect_callbacks`).

    Raises:
        TypeError: if the subclass sets no ``name`` or ``needs`` has an argument not in ``requires``.
    """

    name: ClassVar[str] = ""
    requires: ClassVar[Mapping[str, type]] = {}

    def __init__(
        self,
        output_dir: str | Path | None = None,
        every_n_steps: int = 0,
        *,
        log_spaced: bool | int = True,
        thin_after: int | None = None,
        probe_at_start: bool = True,
        every_n_epochs: int | None = None,
        min_steps_between: int = 0,
        needs: Mapping[str, str | L.Callback | None] | None = None,
    ) -> None:
        if not self.name:
            raise TypeError(f"{type(self).__name__}: a ProbeCallback subclass sets the class attribute `name`")
        needs = dict(needs or {})
        unknown = sorted(set(needs) - set(self.requires))
        if unknown:
            raise TypeError(f"{type(self).__name__}: needs {unknown}: expected arguments of {sorted(self.requires)}")
        self.output_dir = Path(output_dir) if output_dir else None
        self.every_n_steps = every_n_steps
        self.log_spaced = log_spaced
        self.probe_at_start = probe_at_start
        bad_thin = isinstance(thin_after, bool) or not isinstance(thin_after, int) or thin_after < 0
        if thin_after is not None and bad_thin:
            raise ConfigError(f"callbacks.{self.name}.thin_after={thin_after!r}: expected null, 0 or a positive step")
        self.thin_after = thin_after
        self.every_n_epochs = every_n_epochs
        self.min_steps_between = min_steps_between
        self.needs: dict[str, str | L.Callback | None] = {k: needs.get(k) for k in self.requires}
        self.config_key = self.name
        self.final_call = False
        self.last_final = False
        self.enabled = True
        self.rows: list[pd.DataFrame] = []
        self.last_step = -1
        self.seconds = 0.0
        self.calls = 0
        self.timing_name = self.name
        self.timing = []
        self.timed_seconds = 0.0
        self.tokens_seen: int | None = None  # train/tokens_seen of the call in progress (0 at fit start)
        self.last_tokens_seen: int | None = None  # train/tokens_seen of the last call (end-of-run tables)

    # ------------------------------------------------------------------ names
    @property
    def table_path(self) -> Path | None:
        """``output_dir/probes/{name}.parquet``, or None without an output folder."""
        return None if self.output_dir is None else self.output_dir / "probes" / f"{self.name}.parquet"

    @property
    def timing_path(self) -> Path | None:
        """``output_dir/probes/timing.parquet`` (every probe's calls), or None without an output folder."""
        return None if self.output_dir is None else self.output_dir / "probes" / TIMING_TABLE

    @property
    def seconds_key(self) -> str:
        """``perf/{name}_probe_seconds``: the logged and summarised mean seconds per probe call."""
        return f"perf/{self.name}_probe_seconds"

    @property
    def mean_seconds(self) -> float:
        """Mean wall-clock seconds of one probe call so far (0.0 before the first)."""
        return self.seconds / max(self.calls, 1)

    def dependency(self, arg: str) -> L.Callback:
        """The callback that constructor argument ``arg`` (a key of ``requires``) names.

        Raises:
            ConfigError: if it was never connected (:func:`connect_callbacks`) or has the wrong type.
        """
        ref = self.needs[arg]
        if isinstance(ref, L.Callback):
            _check_type(self, arg, ref, repr(ref.__class__.__name__))
            return ref
        raise ConfigError(
            f"callbacks.{self.config_key}.{arg}={ref!r}: not connected to a callback (build the callbacks with "
            "densitylab.run.build_callbacks or call densitylab.callbacks.connect_callbacks)"
        )

    # ------------------------------------------------------------------ subclass hooks
    def prepare(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Fit-start set-up on every process (probe sets, tensors, checks); ``pl_module.model`` exists.
        Runs before the earlier records are read. Default: nothing."""

    def before_measure(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int) -> None:
        """Runs on every process right before each probe (collectives such as ``ledger.sync()``)."""

    def measure(self, trainer: L.Trainer, pl_module: L.LightningModule, model, step: int) -> ProbeResult:
        """The measurement, on global rank 0 only.

        Args:
            model: the :class:`~densitylab.model.GPT` to measure (eval mode; do not train it).
            step: ``trainer.global_step`` (optimizer steps taken).

        Returns:
            ``(records, scalars)``: a DataFrame with a ``step`` column, appended to
            ``probes/{name}.parquet``, and the metrics (name -> float) to log at ``step``.
        """
        raise NotImplementedError(f"{type(self).__name__}.measure")

    def after_measure(
        self, trainer: L.Trainer, step: int, result: ProbeResult | None, final: bool
    ) -> ProbeResult | None:
        """Runs on every process after :meth:`measure`; ``result`` is None off rank 0. Returns the result to
        record and log (None: nothing). ``final`` is True for the probe at the end of training."""
        return result

    def figures(self, step: int, records: pd.DataFrame) -> dict:
        """W&B images of one probe call: ``{key: matplotlib Figure}`` (closed by the caller). Called on
        rank 0 only when a W&B logger is on. Default: none."""
        return {}

    def final_metrics(self) -> dict:
        """This probe's ``summary.json`` numbers (``perf/{name}_probe_seconds`` is added). Default: none."""
        return {}

    # ------------------------------------------------------------------ checkpoint state
    def state_dict(self) -> dict:
        """``calls`` and ``seconds`` so far, for the checkpoint: a resumed run's ``summary.json`` counts every
        attempt's probe calls. Subclasses that add state extend this dict."""
        return {"calls": self.calls, "seconds": self.seconds}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore :meth:`state_dict` (resume); a checkpoint without these keys leaves the counters at 0."""
        self.calls = int(state_dict.get("calls", self.calls))
        self.seconds = float(state_dict.get("seconds", self.seconds))

    # ------------------------------------------------------------------ Lightning hooks
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Check the dependencies, :meth:`prepare`, then (rank 0) read the earlier records of the run folder."""
        for arg in self.requires:
            self.dependency(arg)
        t0 = time.perf_counter()
        self.tokens_seen = 0  # a record made while preparing (modularity's untrained control) has seen no tokens
        self.prepare(trainer, pl_module)
        if self.enabled and trainer.is_global_zero:
            path = self.table_path
            self.rows = [pd.read_parquet(path)] if path is not None and path.is_file() else []
            self.load_timing(self.timing_path)
        if self.enabled:
            self.add_timing(-1, "setup", time.perf_counter() - t0, record=trainer.is_global_zero)
            if trainer.is_global_zero:
                write_timing_table(trainer, self.timing_path)
        self.tokens_seen = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Drop records after the restored step (resume), then probe at step 0 when ``probe_at_start``."""
        if not self.enabled:
            return
        step = trainer.global_step
        self.rows = [r[r["step"] <= step] for r in self.rows]
        self.keep_timing_until(step)
        self.last_step = step if step > 0 else -1
        if step == 0 and self.probe_at_start:
            self.probe(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        """Probe when :meth:`is_due` at this step."""
        if self.enabled and self.is_due(trainer.global_step):
            self.probe(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Probe at the epoch cadence (``every_n_epochs``, ``min_steps_between``)."""
        if self.enabled and self.is_due_at_epoch_end(trainer.current_epoch, trainer.global_step):
            self.probe(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The final probe, unless the last one was at this step."""
        if self.enabled and trainer.global_step != self.last_step:
            self.probe(trainer, pl_module, final=True)

    # ------------------------------------------------------------------ schedule
    def is_due(self, step: int) -> bool:
        """True when ``step`` is a scheduled probe step not probed yet (once per step under accumulation)."""
        return step != self.last_step and is_scheduled(step, self.every_n_steps, self.log_spaced, self.thin_after)

    def is_due_at_epoch_end(self, epoch: int, step: int) -> bool:
        """True at the end of 0-based ``epoch`` when ``every_n_epochs`` divides ``epoch + 1``, ``step`` was
        not probed yet and at least ``min_steps_between`` steps passed since the last probe."""
        if not self.every_n_epochs or (epoch + 1) % self.every_n_epochs:
            return False
        return step != self.last_step and step - max(self.last_step, 0) >= self.min_steps_between

    # ------------------------------------------------------------------ one probe
    def is_last_call(self, trainer: L.Trainer, step: int) -> bool:
        """True inside the probe at the end of training (:meth:`on_train_end`) or at a scheduled step >=
        ``trainer.max_steps``: the call where probes read their whole sets."""
        max_steps = getattr(trainer, "max_steps", -1) or -1
        return self.final_call or (max_steps > 0 and step >= max_steps)

    def probe(self, trainer: L.Trainer, pl_module: L.LightningModule, final: bool = False) -> None:
        """Measure at ``trainer.global_step`` and record, write and log the result (call on every process).
        ``self.final_call`` is ``final`` while the call runs. The whole call is timed (:class:`TimedCallback`).
        Autocast is off during the call, so under ``trainer.precision=bf16-mixed`` probes measure in fp32."""
        step = trainer.global_step
        t0 = time.perf_counter()
        recorded = False
        self.tokens_seen = self.last_tokens_seen = _tokens_seen(pl_module)
        try:  # probes measure in the weights' own dtype: fp32 under trainer.precision=bf16-mixed, never autocast
            with torch.autocast(device_type=getattr(getattr(pl_module, "device", None), "type", "cpu"), enabled=False):
                recorded = self._probe(trainer, pl_module, step, final, t0)
        finally:
            seconds = time.perf_counter() - t0
            self.tokens_seen = None
            last = final or self.is_last_call(trainer, step)  # "final": the call that reads the whole sets
            self.add_timing(step, "final" if last else "call", seconds, record=recorded)
            if recorded:
                self.seconds += seconds
                self.calls += 1
                write_timing_table(trainer, self.timing_path)

    def _probe(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int, final: bool, t0: float) -> bool:
        """The body of :meth:`probe`; True when a result was recorded (rank 0)."""
        self.before_measure(trainer, pl_module, step)
        self.last_step, self.last_final = step, final
        result = None
        self.final_call = final
        try:
            with probe_model(trainer, pl_module) as model:  # None off rank 0; an unsharded copy under FSDP
                if model is not None:
                    result = self.measure(trainer, pl_module, model, step)
        finally:
            self.final_call = False
        result = self.after_measure(trainer, step, result, final)
        if result is None:
            return False
        records, scalars = result
        self.add_records(records)
        mean = (self.seconds + time.perf_counter() - t0) / (self.calls + 1)  # this call up to its logging included
        extra = {} if self.tokens_seen is None else {TOKENS_KEY: float(self.tokens_seen)}
        self.log_scalars(trainer, step, {**scalars, **extra, self.seconds_key: mean})
        self.log_figures(trainer, step, records)
        return True

    def add_records(self, records: pd.DataFrame) -> None:
        """Append ``records`` and rewrite ``probes/{name}.parquet`` with every record so far (atomically). Inside a
        call (or at fit start: 0) a ``train/tokens_seen`` column is added when the records have none."""
        records = with_tokens_seen(records, self.tokens_seen)
        self.rows.append(records)
        if self.table_path is not None:
            write_parquet_atomic(pd.concat(self.rows, ignore_index=True), self.table_path)

    def log_scalars(self, trainer: L.Trainer, step: int, scalars: dict[str, float]) -> None:
        """``log_metrics(scalars, step=step)`` on every logger of the trainer, then ``save()`` (``metrics.csv``
        holds a probe's scalars before the checkpoint of the same step is written)."""
        for lg in trainer.loggers:
            lg.log_metrics(scalars, step=step)
            lg.save()

    def log_figures(self, trainer: L.Trainer, step: int, records: pd.DataFrame) -> None:
        """Log :meth:`figures` as W&B images at ``trainer/global_step = max(step, 0)`` (a control at step -1 under
        ``<key>_control``), leaving out what an earlier attempt of the run folder logged; no W&B logger: nothing."""
        wandb_logger = find_wandb_logger(trainer.loggers)
        if wandb_logger is None:
            return
        figs = self.figures(step, records)
        if not figs:
            return
        import wandb

        from densitylab.report.common import pyplot

        try:
            if step < 0:  # a control measured before training (modularity's twin): its own keys at step 0
                figs = {f"{k}_control": fig for k, fig in figs.items()}
            skip = getattr(wandb_logger, "already_logged", lambda s, k: False)  # an earlier attempt logged it
            data = {k: wandb.Image(fig) for k, fig in figs.items() if not skip(max(step, 0), k)}
            if data:
                wandb_logger.experiment.log({**data, "trainer/global_step": max(step, 0)})
        finally:
            for fig in figs.values():
                pyplot().close(fig)

    def summary_metrics(self) -> dict:
        """Final numbers for ``summary.json``: :meth:`final_metrics` and ``perf/{name}_probe_seconds``
        (mean seconds per call); {} when the probe is off."""
        if not self.enabled:
            return {}
        return {**self.final_metrics(), self.seconds_key: self.mean_seconds}


def with_tokens_seen(frame: pd.DataFrame, tokens: int | None) -> pd.DataFrame:
    """``frame`` with a ``train/tokens_seen`` column (int64, input tokens trained on when its rows were measured)
    appended when it has none; ``frame`` itself when it has one or ``tokens`` is None (a module without the count)."""
    if tokens is None or TOKENS_KEY in frame.columns:
        return frame
    return frame.assign(**{TOKENS_KEY: pd.Series(int(tokens), index=frame.index, dtype="int64")})


def _tokens_seen(pl_module) -> int | None:
    """``pl_module.tokens_seen`` (input tokens trained on so far, all processes) as an int, or None without it."""
    value = getattr(pl_module, "tokens_seen", None)
    return None if value is None else int(value)


def _check_type(cb, arg: str, target: L.Callback, ref: str) -> None:
    expected = cb.requires[arg]
    if not isinstance(target, expected):
        raise ConfigError(
            f"callbacks.{cb.config_key}.{arg}={ref}: expected a {expected.__name__}, got {type(target).__name__}"
        )


def connect_callbacks(callbacks: Mapping[str, L.Callback | None]) -> None:
    """Resolve the callback names in every callback's ``needs`` (its ``requires`` arguments) to the callbacks
    themselves, and set each such callback's ``config_key``.

    Args:
        callbacks: ``cfg.callbacks`` key -> built callback, in config (= hook) order; None for a disabled
            entry (``callbacks.ledger=null``).

    Raises:
        ConfigError: one line naming the argument, e.g. ``callbacks.density.ledger='ledger': no callback of
            that name (expected one of [...])``, when the name is unknown, names a disabled entry or a
            callback of the wrong type, or names one that comes later in ``callbacks`` (its hooks must run
            first: the density probe reads the counts the ledger took of the same batch).
    """
    names = [k for k, v in callbacks.items() if v is not None]
    order = {k: i for i, k in enumerate(names)}
    for key, cb in callbacks.items():
        if cb is None or not getattr(cb, "requires", None):
            continue
        cb.config_key = key
        for arg in cb.requires:
            ref = cb.needs.get(arg)
            if isinstance(ref, L.Callback):
                _check_type(cb, arg, ref, repr(type(ref).__name__))
                continue
            where = f"callbacks.{key}.{arg}={'null' if ref is None else repr(ref)}"
            if not isinstance(ref, str):
                raise ConfigError(f"{where}: expected the name of a callback (one of {names})")
            if ref not in callbacks:
                raise ConfigError(f"{where}: no callback of that name (expected one of {names})")
            target = callbacks[ref]
            if target is None:
                raise ConfigError(
                    f"{where}: callbacks.{ref} is disabled (null): enable it, or disable callbacks.{key} too"
                )
            _check_type(cb, arg, target, repr(ref))
            if order[ref] > order[key]:
                raise ConfigError(f"{where}: callbacks.{ref} must come before callbacks.{key} (its hooks run first)")
            cb.needs[arg] = target
