"""W&B helpers: find the W&B logger, name and tag the run, define its summaries, and log a run folder's results.

What a run sends to W&B (README, "Weights & Biases"; ``docs/design.md`` section 4.2):

- during training: the scalars (``trainer/global_step`` on the x-axis; ``train/tokens_seen`` offered as another)
  and the probes' heatmap images at probe cadence;
- at the end (:func:`log_run_outputs`): every ``probes/*.parquet`` as one ``wandb.Table`` under
  ``tables/<stem>`` (all steps, a ``step`` column), the report PNGs of ``plots/`` as ``wandb.Image`` under
  ``plots/<stem>``, ``summary.json``'s values (numbers and strings) in the run summary
  (:func:`final_summary`), and with ``logger.wandb.log_artifacts=true`` the ``model-<run id>`` and
  ``ledger-<run id>`` artifacts (:func:`log_artifacts`).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger("densitylab")

# summary rule of each metric family in the W&B runs table; every other metric keeps W&B's default, its last value
# (a `summary="last"` rule would turn the summary into a nested {"last": ...} column)
SUMMARY_RULES = {
    "train/loss": "min",
    "val/loss": "min",
    "perf/tokens_per_sec": "mean",
}
# the x-axes a panel may choose: optimizer steps completed (every metric's step_metric) and input tokens trained on
X_AXES = ("trainer/global_step", "train/tokens_seen")
TABLE_MAX_ROWS = 200_000  # logger.wandb.table_max_rows: more rows per probe table are thinned by step


def find_wandb_logger(loggers: Iterable):
    """The first ``lightning.pytorch.loggers.WandbLogger`` in ``loggers``, or None (W&B off)."""
    from lightning.pytorch.loggers import WandbLogger

    return next((lg for lg in loggers if isinstance(lg, WandbLogger)), None)


def data_tag(corpus: str | None) -> str | None:
    """The corpus name without its seeds, for the ``data:`` tag: ``synthetic(n_people=200, seed=0,
    rank_seed=None)`` -> ``synthetic(n_people=200)``, so the runs of a seed sweep (and the counterbalanced corpora
    of one design) share one data tag; the seeds stay in the config (``data.source.seed``, ``data.rank_seed``).
    None for None."""
    if corpus is None:
        return None
    name = re.sub(r",?\s*\b(?:rank_)?seed=[^,)]*", "", str(corpus))
    return re.sub(r"\(\s*,\s*", "(", name).replace("()", "")


def run_tags(cfg, n_params: int, data_name: str | None) -> list[str]:
    """Tags that let runs be filtered and grouped in the W&B runs table: the experiment's own tags plus
    ``model:{n_layer}x{n_embd}``, ``params:{size}`` (e.g. ``params:0.8M``), ``data:{corpus without seeds}``
    (:func:`data_tag`) and ``seed:{seed}``."""
    size = f"{n_params / 1e6:.1f}M" if n_params >= 1e5 else f"{n_params / 1e3:.0f}K"
    tags = [str(t) for t in (cfg.get("tags") or [])]
    tags += [f"model:{cfg.model.net.n_layer}x{cfg.model.net.n_embd}", f"params:{size}", f"seed:{cfg.seed}"]
    if data_name:
        tags.append(f"data:{data_tag(data_name)}")
    return list(dict.fromkeys(t[:64] for t in tags))  # W&B rejects the whole tag set if one tag is longer


def _hydra_config():
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get() if HydraConfig.initialized() else None
    except Exception:
        return None


def run_identity(cfg, job_type: str | None = None) -> dict[str, Any]:
    """Who a run is in W&B: its name, job type and the multirun / Optuna study it belongs to.

    - ``name``: ``logger.wandb.name`` (default ``${run_name}``) when set, else
      ``<experiment_name>-<model>-s<seed>`` (``<model>`` the ``model=`` option, else ``{n_layer}x{n_embd}``), with
      ``-<job number>`` in a Hydra multirun (e.g. ``smoke-tiny-s0``, ``capacity-capacity_50k-s0-7``);
    - ``job_type``: ``job_type`` (``logger.wandb.job_type``) when set, else ``capacity`` for
      ``experiment=capacity*``, ``sweep-trial`` for a job of a Hydra multirun (``-m``, ``hparams_search=optuna``)
      or a W&B sweep agent (``WANDB_SWEEP_ID``), else ``train``;
    - ``run/sweep_dir``: the Hydra multirun folder (``hydra.sweep.dir``), None for a single run;
    - ``run/study``: the Optuna study name (``hydra.sweeper.study_name``) with an Optuna sweeper, else None.

    Args:
        cfg: the composed config (``experiment_name``, ``seed``, ``model.net``; ``logger.wandb`` may be absent).
        job_type: an explicit job type (e.g. ``reprobe``), or None.
    Returns:
        ``{"name", "job_type", "run/sweep_dir", "run/study"}``.
    """
    from omegaconf import OmegaConf

    hc = _hydra_config()
    choices = dict(hc.runtime.choices) if hc is not None else {}
    multirun = False
    if hc is not None:
        from hydra.types import RunMode

        multirun = hc.mode == RunMode.MULTIRUN
    sweeper = OmegaConf.select(hc, "sweeper._target_", default="") if hc is not None else ""
    optuna = "optuna" in str(sweeper or "").lower()
    experiment = str(choices.get("experiment") or OmegaConf.select(cfg, "experiment_name") or "run")
    name = OmegaConf.select(cfg, "logger.wandb.name", default=None) or OmegaConf.select(cfg, "run_name", default=None)
    if not name:
        model = choices.get("model")
        if not model:
            net = OmegaConf.select(cfg, "model.net", default=None) or {}
            model = f"{net.get('n_layer', '?')}x{net.get('n_embd', '?')}"
        name = f"{OmegaConf.select(cfg, 'experiment_name') or experiment}-{model}-s{OmegaConf.select(cfg, 'seed')}"
        if multirun:
            name += f"-{hc.job.num}"
    job_type = job_type or OmegaConf.select(cfg, "logger.wandb.job_type", default=None)
    if not job_type:
        if experiment.startswith("capacity"):
            job_type = "capacity"
        elif multirun or optuna or os.environ.get("WANDB_SWEEP_ID"):
            job_type = "sweep-trial"
        else:
            job_type = "train"
    return {
        "name": str(name),
        "job_type": str(job_type),
        "run/sweep_dir": str(hc.sweep.dir) if multirun else None,
        "run/study": (OmegaConf.select(hc, "sweeper.study_name", default=None) or None) if optuna else None,
    }


def prepare_wandb_run(
    logger, cfg, n_params: int, data_name: str | None, choices: dict | None = None, identity: dict | None = None
) -> None:
    """Make a W&B run dashboard-ready: ``define_metric`` for the x-axes (``trainer/global_step``,
    ``train/tokens_seen``) and the summaries of :data:`SUMMARY_RULES` (minimum ``val/loss`` and ``train/loss``,
    mean ``perf/tokens_per_sec``; every other metric's summary is its last value), tags from :func:`run_tags`, the
    Hydra group choices (``model``, ``data``, ...) in the config as ``choices/*`` so that runs group by them in the
    runs table and parallel-coordinates views, and ``run/sweep_dir`` / ``run/study`` from ``identity``
    (:func:`run_identity`) in the config."""
    from lightning.fabric.loggers.logger import _DummyExperiment

    run = logger.experiment
    if isinstance(run, _DummyExperiment):  # not global rank 0
        return
    for axis in X_AXES:
        run.define_metric(axis)
    for name, rule in SUMMARY_RULES.items():
        run.define_metric(name, step_metric="trainer/global_step", summary=rule)
    run.tags = tuple(dict.fromkeys(list(run.tags or ()) + run_tags(cfg, n_params, data_name)))
    update = {f"choices/{k}": v for k, v in (choices or {}).items() if v is not None}
    if identity is not None:
        update.update({k: v for k, v in identity.items() if k.startswith("run/")})
    if update:
        run.config.update(update, allow_val_change=True)


def final_summary(summary: Mapping[str, Any]) -> dict:
    """The values of ``summary.json`` for the W&B run summary: numbers, booleans and strings (``status``,
    ``precision``, ``device``, ``data``, ``memorization/stopped_by`` ...), None left out; the final ``val/loss``
    and ``train/loss`` go in as ``*_final`` so that the ``min`` summaries of those metrics stay, and
    ``summary.json``'s ``perf/tokens_per_sec`` (the attempt's tokens / training seconds, not a last window) as
    ``perf/tokens_per_sec_run`` beside the ``mean`` summary over the logging windows."""
    renamed = {"perf/tokens_per_sec": "perf/tokens_per_sec_run"}
    out = {}
    for k, v in summary.items():
        if not isinstance(v, (bool, int, float, str)):
            continue
        out[renamed.get(k, f"{k}_final" if k in SUMMARY_RULES else k)] = v
    return out


# ----------------------------------------------------------------------------- end of a run
def thin_by_step(df: pd.DataFrame, max_rows: int) -> tuple[pd.DataFrame, int]:
    """At most ``max_rows`` rows of a probe table, keeping whole probe steps, evenly spaced over training (the
    first and last step always), so a thinned table still draws every curve over the whole run.

    Args:
        df: a probe table with a ``step`` column (one or more rows per step).
        max_rows: the row limit (>= 1).
    Returns:
        (the kept rows in their original order, the number of distinct steps kept). When only one step fits it is
        the last (the end-of-run call: the endpoints); a table without a ``step`` column is cut to its first
        ``max_rows`` rows, and a last step longer than ``max_rows`` to that step's first ``max_rows`` rows.
    """
    if len(df) <= max_rows:
        return df, df["step"].nunique() if "step" in df else 0
    if "step" not in df:
        return df.iloc[:max_rows], 0
    counts = df.groupby("step", sort=True).size()
    steps = counts.index.to_numpy()
    for k in range(len(steps), 0, -1):
        idx = np.round(np.linspace(0, len(steps) - 1, k)).astype(int) if k > 1 else np.array([len(steps) - 1])
        pick = steps[np.unique(idx)]
        if counts.loc[pick].sum() <= max_rows:
            return df[df["step"].isin(pick)], len(pick)
    return df[df["step"] == steps[-1]].iloc[:max_rows], 1


def _table_frame(df: pd.DataFrame) -> pd.DataFrame:
    """A frame ``wandb.Table`` accepts: array / list / dict cells become their text."""
    out = df.copy()
    for c in out.columns:
        if out[c].dtype == object and out[c].map(lambda v: isinstance(v, (list, tuple, dict, np.ndarray))).any():
            out[c] = out[c].map(lambda v: str(v.tolist() if isinstance(v, np.ndarray) else v))
    return out


def wandb_table(df: pd.DataFrame):
    """``df`` as a ``wandb.Table`` (same columns; NaN / NA cells as null). Built from plain rows: about 5x faster
    than ``wandb.Table(dataframe=df)``, which reads every cell through pandas indexing."""
    import wandb

    rows = df.astype(object).where(df.notna(), None).to_numpy().tolist()
    return wandb.Table(columns=[str(c) for c in df.columns], data=rows)


def probe_tables(run_dir: str | os.PathLike, max_rows: int = TABLE_MAX_ROWS) -> dict[str, pd.DataFrame]:
    """The probe tables of a run folder for W&B: ``tables/<stem>`` -> the rows of ``probes/<stem>.parquet``,
    thinned by :func:`thin_by_step` above ``max_rows`` rows (with a warning naming
    ``logger.wandb.table_max_rows``)."""
    out = {}
    for f in sorted(Path(run_dir, "probes").glob("*.parquet")):
        df = pd.read_parquet(f)
        kept, n_steps = thin_by_step(df, max_rows)
        if len(kept) < len(df):
            total = df["step"].nunique() if "step" in df else 0
            log.warning(
                "W&B table tables/%s: %d rows > logger.wandb.table_max_rows=%d: %d of %d probe steps logged "
                "(evenly spaced; the run folder's probes/%s keeps them all)",
                f.stem, len(df), max_rows, n_steps, total, f.name,
            )  # fmt: skip
        out[f"tables/{f.stem}"] = _table_frame(kept.reset_index(drop=True))
    return out


def log_run_outputs(logger, run_dir: str | os.PathLike, step: int, max_rows: int = TABLE_MAX_ROWS) -> dict[str, int]:
    """Log a finished run folder's results to its W&B run, once, at ``trainer/global_step = step``: every probe
    table as ``wandb.Table`` ``tables/<stem>`` (:func:`probe_tables`) and every report PNG ``plots/<stem>.png`` as
    ``wandb.Image`` ``plots/<stem>``. Once at the end rather than at each probe call: W&B's custom charts read the
    last version of a table key in a run, and a table per call would store every earlier row again at each call.

    Returns:
        ``{"tables": n, "rows": total rows, "images": n}`` ({} off rank 0 or without a W&B run).
    """
    import wandb
    from lightning.fabric.loggers.logger import _DummyExperiment

    run = logger.experiment
    if isinstance(run, _DummyExperiment):
        return {}
    tables = probe_tables(run_dir, max_rows)
    data: dict[str, Any] = {k: wandb_table(df) for k, df in tables.items()}
    pngs = sorted(Path(run_dir, "plots").glob("*.png"))
    data.update({f"plots/{p.stem}": wandb.Image(str(p)) for p in pngs})
    if data:
        run.log({**data, "trainer/global_step": int(step)})
    return {"tables": len(tables), "rows": sum(len(t) for t in tables.values()), "images": len(pngs)}


def log_artifacts(logger, run_dir: str | os.PathLike, checkpoint: str | os.PathLike | None) -> list[str]:
    """The run's W&B artifacts (``logger.wandb.log_artifacts=true``): ``model-<run id>`` (type ``model``: the final
    checkpoint, ``last.ckpt``) and ``ledger-<run id>`` (type ``ledger``: ``ledger/*.parquet``, ``tokenizer.json``
    and ``probes/*.parquet``). A file that does not exist is left out; an artifact with no file is not logged.

    Returns:
        The names of the artifacts logged.
    """
    import wandb

    run, root, logged = logger.experiment, Path(run_dir), []
    files = {
        "model": [Path(checkpoint)] if checkpoint else [],
        "ledger": [
            *sorted(root.glob("ledger/*.parquet")),
            root / "tokenizer.json",
            *sorted(root.glob("probes/*.parquet")),
        ],
    }
    for kind, paths in files.items():
        paths = [p for p in paths if p.is_file()]
        if not paths:
            continue
        art = wandb.Artifact(f"{kind}-{run.id}", type=kind, metadata={"run_dir": str(root)})
        for p in paths:
            art.add_file(str(p), name=str(p.relative_to(root)) if p.is_relative_to(root) else p.name)
        run.log_artifact(art)
        logged.append(art.name)
    return logged
