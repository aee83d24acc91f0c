"""Lightning's CSV and W&B loggers for a run folder that outlives one process: history survives a resume.

A run may take several attempts (killed, crashed, resumed with ``ckpt_path=last`` in the same folder). Every
metric is keyed by the optimizer steps completed (``docs/design.md``, "The step convention"), so
``(step, metric)`` is a key, and these loggers keep each logged key exactly once over all the attempts:

- :class:`CSVLogger` appends to the run folder's ``metrics.csv`` instead of deleting it (Lightning's CSVLogger
  starts the file anew), repairs a torn last line left by a kill, drops the rows after the step a resume
  restarts from (:meth:`CSVLogger.resume_at`) and never writes a ``(step, metric)`` the file already holds.
  Header rewrites (a new metric appears) go through a temporary file and ``os.replace``.
- :class:`WandbLogger`: W&B offline mode cannot resume a run (``resume`` is ignored offline, and an offline run
  cannot be tested for merging before ``wandb sync``), so each attempt is its own W&B run, all of a run folder's
  attempts in one group named after the folder (``group: null``), with ``attempt`` and ``resumed_from_step`` in
  the config. A resumed attempt leaves out every ``(step, metric)`` an earlier attempt of the folder already
  logged (read back from its offline ``.wandb`` log with ``wandb leet inspect --json``), so across the group no
  step is logged twice.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger as _LightningCSVLogger
from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter as _LightningWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only

log = logging.getLogger("densitylab")

METRICS_FILE = "metrics.csv"


def _step_of(row: Mapping[str, str]) -> int | None:
    try:
        return int(float(row.get("step", "")))
    except (TypeError, ValueError):
        return None


def read_metrics_rows(path: str | os.PathLike) -> tuple[list[str], list[dict[str, str]]]:
    """The header and rows of a ``metrics.csv``, leaving out a torn last line (a write cut short by a kill: no
    final newline, or fewer fields than the header).

    Returns:
        (column names, rows as column -> text; empty cells are ``""``). ([], []) for a missing or empty file.
    """
    p = Path(path)
    if not p.is_file():
        return [], []
    text = p.read_text(encoding="utf-8", errors="replace")
    if not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]  # the torn line is dropped; a file torn inside its header is empty
    lines = text.splitlines()
    if not lines:
        return [], []
    reader = csv.reader(lines)
    header = next(reader)
    rows = [dict(zip(header, r)) for r in reader if len(r) == len(header)]
    return header, rows


def _write_rows_atomic(path: Path, header: list[str], rows: Iterable[Mapping[str, Any]]) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=header)
        w.writeheader()
        w.writerows(rows)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class _ResumableWriter(_LightningWriter):
    """Lightning's ``ExperimentWriter`` that keeps an existing ``metrics.csv`` (see the module docstring)."""

    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir)  # _check_log_dir_exists below deletes nothing
        self.logged: set[tuple[int, str]] = set()
        self._load()

    def _check_log_dir_exists(self) -> None:  # Lightning's deletes metrics.csv here
        pass

    def _load(self) -> None:
        path = Path(self.metrics_file_path)
        for stale in path.parent.glob(f".{path.name}.tmp*"):  # a rewrite a kill interrupted (the file is intact)
            stale.unlink(missing_ok=True)
        if not path.is_file():
            return
        raw = path.read_bytes()
        header, rows = read_metrics_rows(path)
        if not header:
            path.unlink()  # torn inside its header: nothing was recorded
            return
        torn = not raw.endswith(b"\n") or len(rows) != raw.count(b"\n") - 1
        if torn:
            log.warning("%s: dropped a torn last line (the process was killed while writing it)", path)
        if torn or header != sorted(header):  # Lightning appends rows in sorted-key order
            _write_rows_atomic(path, sorted(header), rows)
        self.metrics_keys = sorted(header)
        self._index(rows)

    def _index(self, rows: list[dict[str, str]]) -> None:
        self.logged = set()
        for r in rows:
            step = _step_of(r)
            if step is not None:
                self.logged.update((step, k) for k, v in r.items() if k != "step" and v != "")

    def resume_at(self, step: int) -> int:
        """Drop the rows logged after ``step`` (the optimizer step the run resumes from: later ones are logged
        again). Returns the number of rows dropped."""
        self.save()
        path = Path(self.metrics_file_path)
        header, rows = read_metrics_rows(path)
        if not header:
            return 0
        keep = [r for r in rows if (_step_of(r) if _step_of(r) is not None else -1) <= step]
        if len(keep) != len(rows):
            _write_rows_atomic(path, header, keep)
        self._index(keep)
        return len(rows) - len(keep)

    def log_metrics(self, metrics_dict: dict[str, float], step: int | None = None) -> None:
        """Record the metrics not yet recorded at ``step`` (the first value of a ``(step, metric)`` is kept)."""
        if step is not None:
            metrics_dict = {k: v for k, v in metrics_dict.items() if (int(step), k) not in self.logged}
            if not metrics_dict:
                return
            self.logged.update((int(step), k) for k in metrics_dict)
        super().log_metrics(metrics_dict, step)

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:  # atomic: a kill never loses the file
        _, rows = read_metrics_rows(self.metrics_file_path)
        _write_rows_atomic(Path(self.metrics_file_path), fieldnames, rows)


class CSVLogger(_LightningCSVLogger):
    """Lightning's ``CSVLogger`` whose ``metrics.csv`` survives a resume in the same folder: it appends, repairs a
    torn last line, and holds every ``(step, metric)`` once (module docstring). Arguments are Lightning's.

    Use ``name=""`` and ``version=""`` (``conf/logger/csv.yaml``) for ``RUN_DIR/metrics.csv``.
    """

    @property
    @rank_zero_experiment
    def experiment(self) -> _ResumableWriter:
        """The :class:`_ResumableWriter` of ``log_dir`` (created on first use)."""
        if self._experiment is not None:
            return self._experiment
        self._fs.makedirs(self.root_dir, exist_ok=True)
        self._experiment = _ResumableWriter(log_dir=self.log_dir)
        return self._experiment

    @rank_zero_only
    def resume_at(self, step: int) -> None:
        """The run resumes from a checkpoint at optimizer step ``step``: drop the rows logged after it."""
        dropped = self.experiment.resume_at(step)
        if dropped:
            log.info("metrics.csv: %d rows after step %d are logged again by this attempt", dropped, step)


# ----------------------------------------------------------------------------- W&B
def offline_runs(run_dir: str | os.PathLike) -> list[Path]:
    """The W&B run folders of a run folder, one per attempt, oldest first: ``RUN_DIR/wandb/offline-run-*`` and,
    for attempts that ran with ``WANDB_MODE=online``, ``RUN_DIR/wandb/run-*`` (both hold the ``.wandb`` log)."""
    root = Path(run_dir) / "wandb"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and re.match(r"(offline-)?run-\d{8}_\d{6}-", p.name)]
    return sorted(found, key=lambda p: (p.name.removeprefix("offline-"), p.name))


def _wandb_cli() -> list[str]:
    exe = Path(sys.executable).with_name("wandb")
    if exe.is_file():
        return [str(exe)]
    found = shutil.which("wandb")
    return [found] if found else [sys.executable, "-m", "wandb"]


def wandb_history(offline_run: str | os.PathLike) -> list[dict]:
    """The history rows of one W&B offline run (``wandb leet inspect --json``), in logged order.

    Returns:
        One dict per ``wandb.log`` call (``trainer/global_step``, metric names; images as ``key._type`` ...).
        [] for a folder without a ``.wandb`` log (the attempt was killed before W&B wrote one).
    Raises:
        OSError: when the log exists but ``wandb leet inspect`` cannot read it (not installed, failed, timed out).
    """
    if not any(Path(offline_run).glob("*.wandb")):
        return []
    try:
        proc = subprocess.run(
            [*_wandb_cli(), "leet", "inspect", "--json", str(offline_run)],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "WANDB_SILENT": "true"},
        )
    except (OSError, subprocess.SubprocessError) as e:
        raise OSError(f"wandb leet inspect {offline_run}: {e}") from None
    if proc.returncode != 0:
        raise OSError(f"wandb leet inspect {offline_run}: exit {proc.returncode}: {proc.stderr.strip()[-300:]}")
    out = proc.stdout
    rows = []
    for line in out.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("type") == "history":
            rows.append(rec.get("history", {}).get("item", {}))
    return rows


def logged_keys(history: Iterable[Mapping[str, Any]]) -> set[tuple[int, str]]:
    """The ``(trainer/global_step, metric)`` pairs of W&B history rows (an image's ``key._type`` ... fields count
    as ``key``; W&B's own ``_step``, ``_runtime``, ``_timestamp`` are left out)."""
    keys: set[tuple[int, str]] = set()
    for item in history:
        step = item.get("trainer/global_step")
        if step is None:
            continue
        for k in item:
            if k.startswith("_") or k == "trainer/global_step":
                continue
            keys.add((int(step), k.split(".", 1)[0]))
    return keys


class WandbLogger(_LightningWandbLogger):
    """Lightning's ``WandbLogger`` for a run folder with several attempts (module docstring).

    Args:
        group: W&B group; None = the run folder's path below ``paths.log_dir`` (``run_group`` argument), so all
            attempts of one run folder are one group (group the runs table by ``experiment_name`` in its
            config to compare experiments).
        run_group: the run folder's group name used when ``group`` is None.
        table_max_rows: the most rows of one probe table logged as a ``wandb.Table`` at the end of the run (more
            are thinned by probe step, with a warning; :func:`densitylab.callbacks.wandb_util.thin_by_step`).
        log_artifacts: log the ``model-<run id>`` and ``ledger-<run id>`` artifacts at the end of the run
            (:func:`densitylab.callbacks.wandb_util.log_artifacts`).
        **kwargs: Lightning's ``WandbLogger`` arguments (``name`` and ``job_type``: None = densitylab's
            :func:`~densitylab.callbacks.wandb_util.run_identity`, filled in by ``densitylab.run.build_loggers``).
    Raises:
        ConfigError: for a ``table_max_rows`` that is not a positive integer.
    """

    def __init__(
        self,
        *args: Any,
        group: str | None = None,
        run_group: str | None = None,
        table_max_rows: int = 200_000,
        log_artifacts: bool = False,
        **kwargs: Any,
    ) -> None:
        from densitylab.errors import ConfigError

        if isinstance(table_max_rows, bool) or not isinstance(table_max_rows, int) or table_max_rows < 1:
            raise ConfigError(f"logger.wandb.table_max_rows={table_max_rows!r}: expected a positive integer")
        self.table_max_rows, self.log_artifacts = table_max_rows, bool(log_artifacts)
        group = group if group is not None else run_group
        if group is not None:
            kwargs["group"] = str(group)[-128:]  # W&B's limit; the end of the path is the distinctive part
        super().__init__(*args, **kwargs)
        self.skip: set[tuple[int, str]] = set()
        self._backfill: list[tuple[int, dict[str, float]]] = []
        self.attempt_config: dict[str, Any] = {"attempt": 1, "resumed_from_step": None}

    def resume_in(self, run_dir: str | os.PathLike, step: int) -> None:
        """This attempt resumes the run of ``run_dir`` from optimizer step ``step``: read what the folder's earlier
        attempts logged to W&B and leave it out, and queue for :meth:`backfill` what ``metrics.csv`` holds up to
        ``step`` that no earlier attempt's W&B log does (W&B loses what a killed process had not written yet).
        Call before the W&B run starts."""
        earlier = offline_runs(run_dir)
        unreadable = []
        for run in earlier:
            try:
                self.skip |= logged_keys(wandb_history(run))
            except OSError as e:
                unreadable.append(str(e))
        self.attempt_config = {"attempt": len(earlier) + 1, "resumed_from_step": int(step)}
        self._backfill = []
        if unreadable:  # what they logged is unknown: backfilling could log a step twice
            log.warning("W&B: an earlier attempt's log could not be read (%s): nothing is logged again", unreadable[0])
            return
        _, rows = read_metrics_rows(Path(run_dir) / METRICS_FILE)
        for r in rows:
            at = _step_of(r)
            if at is None or at > step:
                continue
            values = {}
            for k, v in r.items():
                if k != "step" and v != "" and (at, k) not in self.skip:
                    try:
                        values[k] = float(v)
                    except ValueError:
                        continue
            if values:
                self._backfill.append((at, values))

    def backfill(self) -> int:
        """Log the rows queued by :meth:`resume_in` at their own steps (once; the W&B run exists by now).
        Returns the number of ``(step, metric)`` values logged."""
        queued, self._backfill = self._backfill, []
        for at, values in queued:
            self.log_metrics(values, step=at)
            self.skip |= {(at, k) for k in values}
        return sum(len(v) for _, v in queued)

    @rank_zero_only
    def log_hyperparams(self, params: Any) -> None:
        """Lightning's, plus ``attempt`` (1, 2, ... in this run folder) and ``resumed_from_step`` (None for the
        attempt that started the run)."""
        from lightning.fabric.utilities.logger import _convert_params

        super().log_hyperparams({**(_convert_params(params) or {}), **self.attempt_config})

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Lightning's, leaving out the ``(step, metric)`` pairs an earlier attempt of the run folder logged."""
        if step is not None and self.skip:
            metrics = {k: v for k, v in metrics.items() if (int(step), k) not in self.skip}
            if not metrics:
                return
        super().log_metrics(metrics, step)

    def already_logged(self, step: int, key: str) -> bool:
        """True when an earlier attempt of the run folder logged ``key`` at ``step`` (e.g. a probe's image)."""
        return (int(step), key) in self.skip
