"""Offline comparison of runs: one self-contained HTML page plus PNGs, from run folders alone (no W&B).

``python -m densitylab.report compare RUN_OR_MULTIRUN [...] [--out DIR] [--by KEY]``

Reads each run's ``metrics.csv`` (every logged scalar), ``summary.json`` and ``.hydra/config.yaml``
/ ``overrides.yaml``; draws loss curves, the density slopes ``density/L{i}/{role}/slope`` per layer and
endpoint role (``name_last``, ``pre_value``), modularity, memorization and the knowledge probe's accuracy
(``knowledge/acc``, the panel's core) over training; tabulates the final
numbers and the config values that differ between runs; and, when exactly one config key varies across the runs
(the seed is a replicate, never the varying key; :func:`choose_by`) or ``--by KEY`` names one, draws the final
numbers against it (e.g. loss, density slope and modularity against ``model.net.n_layer`` for the
depth-against-width experiment). When several keys vary and no ``--by`` is given it says which and draws none: a
plot against one of them would credit it with what the others did.

Runs are named by their run name (:func:`~densitylab.report.common.run_name`: ``<experiment>-<model>-s<seed>``,
as their W&B runs), with `` [folder]`` appended only where two runs share a name; ``final.csv`` has the folder
of each run in its ``folder`` column.

The density slope is the OLS slope of ``active_frac_live`` on log2(1 + distinct_docs) over the panel's persons
(change per doubling of exposure; CR1 CI with persons as clusters, computed by the probe). The final-numbers
table and the ``--by`` panel summarize it by :data:`SLOPE_SUMMARY`: the mean over layers of the ``name_last``
slope.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from densitylab.report.common import STEP_LABEL, common_relative, pyplot, run_labels, save_figure, step_axis
from densitylab.runfolder import is_remeasurement

SLOPE_RE = re.compile(r"density/L(\d+)/(name_last|pre_value)/slope")
SLOPE_ROLES = ("name_last", "pre_value")
SLOPE_SUMMARY = "density/name_last/slope_mean_over_layers"
#: Config keys whose values differ between replicates of one configuration: never "the key that varies".
REPLICATE_KEYS = ("seed",)


def is_replicate_key(key: str) -> bool:
    """True for a key that only draws another replicate: ``seed``, any ``*.seed`` (``data.source.seed``,
    ``callbacks.density.seed``) and any ``*_seed`` (``data.rank_seed``)."""
    last = str(key).rsplit(".", 1)[-1]
    return key in REPLICATE_KEYS or last == "seed" or last.endswith("_seed")


#: Config keys that name a run or where it is written, not how it was trained (left out of the differing keys).
IDENTITY_PREFIXES = ("paths.", "hydra.", "run_name", "callbacks.model_checkpoint.dirpath", "sweep_dir", "study_name")
#: The y-axis label (with units) of each final number the ``--by`` plot draws.
BY_PANELS = {
    "val/loss": "val/loss (nats/token)",
    "modularity/score_v2": "modularity score_v2 (0-1)",
    "memorization/bits_total": "memorized canary bits (total)",
    "knowledge/panel/acc": "knowledge accuracy (fraction of facts)",
    SLOPE_SUMMARY: "density slope (active_frac_live per doubling)",
}


def slope_keys(keys) -> list[str]:
    """The per-layer, per-role density slope keys among ``keys`` (``density/L{i}/{role}/slope`` for role
    ``name_last`` or ``pre_value``; not their ``_ci_low`` etc.), ordered by role then layer."""
    found = [k for k in keys if SLOPE_RE.fullmatch(str(k))]
    return sorted(found, key=lambda k: (SLOPE_ROLES.index(SLOPE_RE.fullmatch(k)[2]), int(SLOPE_RE.fullmatch(k)[1])))


def mean_name_last_slope(values: dict) -> float | None:
    """Mean over layers of the finite ``density/L{i}/name_last/slope`` values in ``values`` (None without any)."""
    v = [float(values[k]) for k in slope_keys(values) if "/name_last/" in k and values[k] is not None]
    v = [x for x in v if math.isfinite(x)]
    return float(np.mean(v)) if v else None


def find_run_dirs(paths: list[str | Path]) -> list[Path]:
    """Run folders among ``paths``: each path holding ``metrics.csv``, or every folder below it that
    does (a Hydra multirun folder), in path order.

    Raises:
        FileNotFoundError: if a path does not exist or holds no run.
    """
    runs: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"{str(p)!r} does not exist: expected a run folder or a multirun folder")
        if (p / "metrics.csv").is_file():
            runs.append(p)
            continue
        found = sorted(
            (
                f.parent
                for f in p.rglob("metrics.csv")
                if not {"report", "compare"} & set(f.relative_to(p).parts) and not is_remeasurement(f.parent, p)
            ),
            key=lambda d: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(d))],
        )
        if not found:
            raise FileNotFoundError(
                f"{str(p)!r} holds no metrics.csv: expected a run folder of train.py (CSV logger on)"
            )
        runs.extend(found)
    return list(dict.fromkeys(runs))


def _flatten(d, prefix: str = "") -> dict:
    out = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
    else:
        out[prefix[:-1]] = json.dumps(d) if isinstance(d, (list, tuple)) else d
    return out


def load_run(run: Path) -> dict:
    """One run's pieces: ``name`` (its folder relative to the common root is set later),
    ``metrics`` (DataFrame indexed by step, one column per scalar, rows merged per step),
    ``summary`` (dict), ``config`` (flat dict of ``.hydra/config.yaml``, interpolations as written),
    ``overrides`` (list) and ``wandb_id`` (offline run id, or None)."""
    import yaml

    m = pd.read_csv(run / "metrics.csv")
    if "step" in m.columns:
        m = m.groupby("step").last().sort_index()
    summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else {}
    cfg_file, ov_file = run / ".hydra" / "config.yaml", run / ".hydra" / "overrides.yaml"
    config = _flatten(yaml.safe_load(cfg_file.read_text()) or {}) if cfg_file.is_file() else {}
    overrides = yaml.safe_load(ov_file.read_text()) or [] if ov_file.is_file() else []
    wandb_dirs = sorted((run / "wandb").glob("offline-run-*")) if (run / "wandb").is_dir() else []
    wandb_id = wandb_dirs[-1].name.rsplit("-", 1)[-1] if wandb_dirs else None
    status = "failed" if (run / "FAILED").is_file() else summary.get("status", "unfinished")
    return {
        "path": run,
        "metrics": m,
        "summary": summary,
        "config": config,
        "overrides": overrides,
        "wandb_id": wandb_id,
        "status": status,
    }


def differing_config(runs: list[dict]) -> pd.DataFrame:
    """Config keys whose values differ between runs (rows: runs by name, columns: keys, values as written in
    ``.hydra/config.yaml``); keys naming the run or its folders (:data:`IDENTITY_PREFIXES`) are left out, the
    seed (:data:`REPLICATE_KEYS`) is kept."""
    keys = sorted(set().union(*(r["config"] for r in runs)))
    cols = {}
    for k in keys:
        if k.startswith(IDENTITY_PREFIXES):
            continue
        vals = [r["config"].get(k) for r in runs]
        if len({json.dumps(v, sort_keys=True, default=str) for v in vals}) > 1:
            cols[k] = vals
    return pd.DataFrame(cols, index=[r["name"] for r in runs])


FINAL_KEYS = [
    "status",
    "global_step",
    "val/loss",
    "train/loss",
    "model/params",
    "model/params_non_embedding",
    "modularity/score_v1",
    "modularity/score_minus_control",
    "modularity/score_v2",
    "modularity/excess",
    "memorization/bits_total",
    "memorization/extractable_frac",
    "knowledge/panel/acc",
    "knowledge/slope",
    "hallucination/panel/auroc_confidence",
    "hallucination/panel/auroc_exposure",
    "perf/tokens_per_sec",
    "wall_time_s",
]


def final_table(runs: list[dict]) -> pd.DataFrame:
    """Final numbers per run (index: the run's legend label): its ``folder`` (relative to the runs' common
    folder), :data:`FINAL_KEYS`, the minimum ``val/loss`` over training,
    :data:`SLOPE_SUMMARY` (the mean over layers of the final ``density/L{i}/name_last/slope`` of
    ``summary.json``: ``active_frac_live`` per doubling of distinct_docs, persons as the unit; the per-layer and
    ``pre_value`` slopes are in the slope plot) and the W&B run id."""
    rows = []
    for r in runs:
        s, m = r["summary"], r["metrics"]
        row = {"folder": r["folder"], **{k: s.get(k) for k in FINAL_KEYS}}
        row["status"] = r["status"]
        row["val/loss_min"] = float(m["val/loss"].min()) if "val/loss" in m else None
        row[SLOPE_SUMMARY] = mean_name_last_slope(s)
        row["wandb_id"] = r["wandb_id"]
        rows.append(row)
    df = pd.DataFrame(rows, index=[r["name"] for r in runs])
    return df.loc[:, df.notna().any()]  # no columns of numbers no run has (e.g. a probe that was off)


def _series(m: pd.DataFrame, col: str) -> pd.Series:
    return m[col].dropna() if col in m.columns else pd.Series(dtype=float)


def _plot_training(runs: list[dict], out: Path) -> list[tuple[str, Path]]:
    """The over-training PNGs: loss, density slopes per layer and role, modularity, memorization and knowledge,
    one line per run labelled by its name (``r["name"]``); x: training step (:func:`step_axis`)."""
    plt = pyplot()
    colors = plt.cm.tab10(np.arange(len(runs)) % 10)
    figs: list[tuple[str, Path]] = []

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    for r, c in zip(runs, colors):
        tr = _series(r["metrics"], "train/loss")
        if len(tr):
            a1.plot(tr.index, tr.rolling(5, min_periods=1).mean(), color=c, linewidth=1, label=r["name"])
        va = _series(r["metrics"], "val/loss")
        if len(va):
            a2.plot(va.index, va, "o-", color=c, ms=3, label=r["name"])
    for ax, t, y in (
        (a1, "train/loss (5-point mean)", "train/loss (nats/token)"),
        (a2, "val/loss", "val/loss (nats/token)"),
    ):
        ax.set_xlabel(STEP_LABEL)
        ax.set_ylabel(y)
        ax.set_title(t, fontsize=9)
        ax.grid(alpha=0.3)
    a1.legend(fontsize=7)
    fig.tight_layout()
    figs.append(("Loss", save_figure(fig, out / "compare_loss.png")))

    slope_cols = slope_keys({c for r in runs for c in r["metrics"].columns})
    if slope_cols:
        # one row per endpoint role, one column per layer
        roles = [ro for ro in SLOPE_ROLES if any(f"/{ro}/" in c for c in slope_cols)]
        layers = sorted({int(SLOPE_RE.fullmatch(c)[1]) for c in slope_cols})
        nrows, ncols = len(roles), len(layers)
        fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols + 1, 3.0 * nrows + 0.4), dpi=100, squeeze=False)
        for i, role in enumerate(roles):
            for j, layer in enumerate(layers):
                ax, col = axes[i][j], f"density/L{layer}/{role}/slope"
                if col not in slope_cols:  # a layer no run has for this role (deeper models only on one role)
                    ax.set_visible(False)
                    continue
                steps = []
                for r, c in zip(runs, colors):
                    s = _series(r["metrics"], col)
                    if len(s):
                        ax.plot(s.index, s, "o-", ms=2, color=c, label=r["name"])
                        steps += list(s.index)
                ax.axhline(0, color="k", linewidth=0.6)
                step_axis(ax, steps)
                ax.set_ylabel("slope per doubling of exposure", fontsize=8)
                ax.set_title(f"L{layer} {role}: active_frac_live slope", fontsize=8)
                ax.grid(alpha=0.3)
        next(ax for ax in axes.flat if ax.get_visible()).legend(fontsize=6)
        fig.tight_layout()
        figs.append(("Density slope per layer and role", save_figure(fig, out / "compare_density_slopes.png")))

    for col, title, ylabel, fname in (
        ("modularity/score_v2", "Modularity under ablation (score v2)", "score_v2 (0-1)", "compare_modularity.png"),
        ("memorization/bits_total", "Memorized canary bits (total)", "bits (sum over canaries)",
         "compare_memorization.png"),
        ("knowledge/acc", "Closed-set fact recall of the panel's core", "accuracy (fraction of facts)",
         "compare_knowledge.png"),
    ):  # fmt: skip
        if not any(col in r["metrics"].columns for r in runs):
            continue
        fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
        steps = []
        for r, c in zip(runs, colors):
            s = _series(r["metrics"], col)
            if len(s):
                ax.plot(s.index, s, "o-", ms=3, color=c, label=r["name"])
                steps += list(s.index)
        step_axis(ax, steps)
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        figs.append((title, save_figure(fig, out / fname)))
    return figs


def _plot_by(final: pd.DataFrame, diff: pd.DataFrame, key: str, out: Path) -> tuple[str, Path] | None:
    """Final numbers against config value ``key``: :data:`BY_PANELS` (``val/loss``, ``modularity/score_v2``,
    ``memorization/bits_total``, ``knowledge/panel/acc`` and :data:`SLOPE_SUMMARY`, the mean over layers of the
    ``name_last`` density slope), those some run has, one point per run and the mean per value as a line. A
    numeric ``key`` is a numeric x (log2 when its values span ≥ 8×), any other one categorical (its values in
    first-seen order); None when no run has any of the numbers."""
    plt = pyplot()
    raw = diff[key]
    x = pd.to_numeric(raw, errors="coerce")
    categorical = bool(x.isna().any())
    if categorical:
        cats = list(dict.fromkeys(str(v) for v in raw))
        x = pd.Series([cats.index(str(v)) for v in raw], index=raw.index, dtype=float)
    panels = [c for c in BY_PANELS if c in final and pd.to_numeric(final[c], errors="coerce").notna().any()]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels) + 0.5, 3.4), dpi=100, squeeze=False)
    for ax, p in zip(axes[0], panels):
        y = pd.to_numeric(final[p], errors="coerce")
        d = pd.DataFrame({"x": x.to_numpy(), "y": y.to_numpy()}).groupby("x")["y"]
        mean = d.mean()
        ax.plot(x, y, "o", color="tab:blue", alpha=0.5, label="one run")
        ax.plot(mean.index, mean.to_numpy(), "-", color="tab:blue", label="mean over runs")
        ax.set_xlabel(key)
        ax.set_ylabel(BY_PANELS[p], fontsize=8)
        ax.set_title(p, fontsize=9)
        ax.grid(alpha=0.3)
        if categorical:
            ax.set_xticks(range(len(cats)), cats, fontsize=7)
            ax.set_xlim(-0.5, len(cats) - 0.5)
        elif len(mean) > 2 and mean.index.min() > 0 and mean.index.max() / mean.index.min() >= 8:
            ax.set_xscale("log", base=2)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return (f"Final numbers against {key}", save_figure(fig, out / "compare_by.png"))


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int) and not isinstance(v, bool) and abs(v) >= 10000:
        return f"{v:,}"
    return str(v)


def _table_html(df: pd.DataFrame, index_name: str = "run") -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in [index_name, *df.columns])
    body = "".join(
        "<tr>"
        + f"<td class='run'>{html.escape(str(i))}</td>"
        + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row)
        + "</tr>"
        for i, row in zip(df.index, df.itertuples(index=False))
    )
    return f"<div class='scroll'><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


@dataclass
class Comparison:
    """The runs of one comparison and how their configs differ (:func:`compare_runs`).

    Attributes:
        runs: each run's :func:`load_run` dict plus ``name`` (its legend label: the run name, `` [folder]``
            appended only on a name collision) and ``folder`` (relative to ``root``).
        root: the runs' common folder (a lone run: its parent).
        diff: :func:`differing_config` (rows: runs by name; columns: the keys whose values differ, seed included).
    """

    runs: list[dict]
    root: Path
    diff: pd.DataFrame = field(repr=False)

    @property
    def varying(self) -> list[str]:
        """The config keys that vary across the runs, the replicate keys (:func:`is_replicate_key`: the seeds) left
        out: what the runs were meant to compare."""
        return [k for k in self.diff.columns if not is_replicate_key(k)]

    @property
    def replicates(self) -> list[str]:
        """The replicate keys (:func:`is_replicate_key`) whose values differ across the runs (e.g. ``["seed"]``)."""
        return [k for k in self.diff.columns if is_replicate_key(k)]


def compare_runs(paths: list[str | Path]) -> Comparison:
    """Load the runs under ``paths`` (:func:`find_run_dirs`), name them and find the config keys that differ.

    Raises:
        FileNotFoundError: see :func:`find_run_dirs`.
    """
    run_dirs = find_run_dirs(paths)
    resolved = [d.resolve() for d in run_dirs]
    root = Path(*_common_parts(resolved)) if len(run_dirs) > 1 else resolved[0].parent
    folders = common_relative(run_dirs)
    runs = [load_run(d) for d in run_dirs]
    for r, label, folder in zip(runs, run_labels(run_dirs, folders), folders):
        r["name"], r["folder"] = label, folder
    return Comparison(runs=runs, root=root, diff=differing_config(runs))


def choose_by(comparison: Comparison, by: str | None = None) -> tuple[str | None, str]:
    """The config key to plot the final numbers against, and one line saying why (or why none).

    ``by`` given: that key, which must vary across the runs (the seed is accepted too). ``by`` None: the one key
    that varies (:attr:`Comparison.varying`, the seed left out as a replicate) when exactly one does; none when
    none does (replicates of one configuration) or several do (a plot against one would credit it with what the
    others did: the line names them and suggests ``--by``).

    Returns:
        ``(key or None, message)``.
    Raises:
        ValueError: ``by`` is not a key that varies: one line naming it and the keys that do.
    """
    varying = comparison.varying
    if by is not None:
        if by not in comparison.diff.columns:
            raise ValueError(
                f"--by {by!r}: expected a config key that varies across these runs, one of "
                f"{varying + comparison.replicates or 'none (the runs share one config)'}"
            )
        return by, f"final numbers against {by} (--by)"
    if len(varying) == 1:
        return varying[0], f"final numbers against {varying[0]}, the one config key that varies"
    if not varying:
        reps = f" (replicates over {', '.join(comparison.replicates)})" if comparison.replicates else ""
        return None, f"no config key varies across the runs{reps}: no plot against a config key"
    return None, (
        f"{len(varying)} config keys vary across the runs ({', '.join(varying)}): no plot against one of them; "
        "name one with --by KEY"
    )


def compare_report(
    paths: list[str | Path], out_dir: str | Path | None = None, by: str | None = None, echo=print
) -> Path:
    """Write ``compare.html`` (PNGs embedded, so the page is one self-contained file) and the PNGs
    beside it into ``out_dir`` (default ``<common parent of the runs>/compare``); return the page's path.
    ``compare_by.png`` (final numbers against a config key) only when :func:`choose_by` picks a key; its message
    is passed to ``echo`` (default: printed) and shown on the page.

    Raises:
        FileNotFoundError: no run found. ValueError: ``by`` is not a config key that varies between runs (raised
            before anything is written).
    """
    comparison = compare_runs(paths)
    runs, root, diff = comparison.runs, comparison.root, comparison.diff
    key, by_note = choose_by(comparison, by)
    out = Path(out_dir) if out_dir else root / "compare"
    out.mkdir(parents=True, exist_ok=True)
    final = final_table(runs)
    figs = _plot_training(runs, out)
    (out / "compare_by.png").unlink(missing_ok=True)  # a plot of an earlier report that no longer holds
    if key is not None:
        fig = _plot_by(final, diff, key, out)
        if fig:
            figs.insert(0, fig)
        else:
            by_note += " (no final number to plot)"
    if echo is not None:
        echo(by_note)
    diff.to_csv(out / "config_diff.csv")
    final.to_csv(out / "final.csv")
    sections = []
    verdicts = sorted(root.glob("report/study/verdicts.csv")) or sorted(root.parent.glob("report/study/verdicts.csv"))
    if verdicts:  # the runs are (part of) a study with a verdict table: show it first
        v = pd.read_csv(verdicts[0])
        cols = ["claim", "endpoint", "estimate", "ci_low", "ci_high", "level", "n_persons", "n_runs", "unit", "sesoi"]
        sections.append(
            f"<h2>Study verdicts (pre-registered claims)</h2><p class='file'>{html.escape(str(verdicts[0]))}</p>"
            + _table_html(v.set_index("claim")[[c for c in cols[1:] if c in v] + ["verdict"]], index_name="claim")
        )
    for title, png in figs:
        b64 = base64.b64encode(png.read_bytes()).decode()
        sections.append(
            f"<h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' src='data:image/png;base64,{b64}'>"
            f"<p class='file'>{html.escape(png.name)}</p>"
        )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>densitylab: {len(runs)} runs compared</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 24px; color: #222; }}
table {{ border-collapse: collapse; font-size: 12px; margin-bottom: 16px; }}
th, td {{ border: 1px solid #ccc; padding: 3px 6px; text-align: right; }}
th {{ background: #f3f3f3; }} td.run {{ text-align: left; font-family: monospace; }}
img {{ max-width: 100%; border: 1px solid #eee; }} div.scroll {{ overflow-x: auto; }} p.file
{{ color: #888; font-size: 11px; }}
</style></head><body>
<h1>densitylab: {len(runs)} runs compared</h1>
<p>Root: <code>{html.escape(str(root))}</code>. Runs (name, folder):
{", ".join(f"<code>{html.escape(r['name'])}</code> (<code>{html.escape(r['folder'])}</code>)" for r in runs)}.</p>
<p>{html.escape(by_note)}.</p>
<h2>Final numbers</h2>{_table_html(final)}
<h2>Config values that differ</h2>{_table_html(diff) if len(diff.columns) else "<p>none: the runs share one config</p>"}
{"".join(sections)}
</body></html>
"""
    page_path = out / "compare.html"
    page_path.write_text(page)
    return page_path


def _common_parts(paths: list[Path]) -> list[str]:
    parts = list(paths[0].parts)
    for p in paths[1:]:
        n = 0
        for a, b in zip(parts, p.parts):
            if a != b:
                break
            n += 1
        parts = parts[:n]
    return parts
