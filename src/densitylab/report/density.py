"""Density plots, headline table and across-seed aggregation from run folders (no W&B needed).

Reads ``probes/density.parquet`` (one row per aggregate: step, layer, probe_set, role, exposure, bin, bin_index,
metric, estimand, value, ci_low, ci_high, n, n_windows, n_entities, status) and ``probes/units.parquet``.

Inference rule of the within-run rows (written by the probe, kept here): on the ``panel`` probe set the unit of
replication is the **person** (the entity a position is about), not the position or the window: means, bin
differences and slopes get CR1 cluster-robust CIs with persons as clusters and a t quantile on
``n_entities - 1`` degrees of freedom. A familiarity bin with fewer than ``min_entities`` (10) persons, or whose
reference bin {0} has fewer, is ``status == "insufficient"``: value and CI are NaN and no familiarity claim is
made from it. Whole-set and control rows are ``"descriptive"`` (CI clustered by window). Across runs (seeds) the
unit is the run: mean over runs and a t interval on ``n_runs - 1`` degrees of freedom (:func:`aggregate_runs`).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from densitylab.report.common import pyplot, save_figure, step_axis

# the pre-registered familiarity bins of distinct_docs (default edges 0, 1, 4, 16, 64), bin_index 0..4 (0 = the {0}
# bin, the reference); the plots and the table take the labels from the records (other edges work too)
BINS = ("0", "1-3", "4-15", "16-63", "64+")
# the position roles with endpoint rows: the last name token, and the position whose target is the first token
# of an attribute value
ENDPOINT_ROLES = ("name_last", "pre_value")
PRIMARY_METRIC = "active_frac_live"
MIN_ENTITIES = 10  # the probe's default min_entities; only used in labels ("n<10")
KEYS = ["step", "layer", "probe_set", "role", "exposure", "bin", "bin_index", "metric", "estimand"]
COLUMNS = [*KEYS, "value", "ci_low", "ci_high", "n", "n_windows", "n_entities", "status"]


def find_runs(paths: list[str | Path]) -> list[Path]:
    """Run folders among ``paths``: each path that holds ``probes/density.parquet``, or every folder
    below it that does (a Hydra multirun folder).

    Raises:
        FileNotFoundError: if a path does not exist or holds no run with density probes.
    """
    from densitylab.runfolder import is_remeasurement

    runs: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"{str(p)!r} does not exist: expected a run folder or a multirun folder")
        if (p / "probes" / "density.parquet").is_file():
            runs.append(p)
            continue
        found = sorted(
            f.parent.parent for f in p.rglob("probes/density.parquet") if not is_remeasurement(f.parent.parent, p)
        )
        if not found:
            raise FileNotFoundError(
                f"{str(p)!r} holds no probes/density.parquet: expected a run folder of train.py with density probes"
            )
        runs.extend(found)
    return runs


# across runs the worst status wins; an unknown status ranks as insufficient (never silently "ok")
STATUS_RANK = {"ok": 0, "descriptive": 1, "no_variation": 2, "insufficient": 3}


def aggregate_runs(frames: list[pd.DataFrame], level: float = 0.95) -> pd.DataFrame:
    """Mean ± CI across runs (seeds) of every density row; the input of the plots and :func:`headline_table`.

    One run: its rows as they are (within-run CIs: CR1 with persons as clusters on panel rows, see the module
    docstring), plus ``n_runs`` = 1. Several runs: rows are matched on :data:`KEYS` (step, layer, probe_set,
    role, exposure, bin, bin_index, metric, estimand) and

    - ``value`` = mean over the runs that have the row; ``ci_low``/``ci_high`` = t interval of the per-run values
      (``n_runs - 1`` degrees of freedom: the run is the unit of replication across seeds); NaN when fewer than
      two runs have a finite value;
    - ``n_runs`` = runs that have the row (fewer than the number of runs when a run stopped earlier or lacks the
      bin or role);
    - ``n`` and ``n_windows`` = sums over runs; ``n_entities`` = the **minimum** over runs (the persons every run
      has at least; not a sum, since seeds may share persons and a sum would overstate the evidence);
    - ``status`` = ``"insufficient"`` when any run's row is insufficient (< 10 persons in the bin or its
      reference bin in that run), and then value and CI are NaN; else ``"descriptive"`` when any run's row is,
      else ``"ok"``.

    Runs may differ in steps, bins or roles, and a run may lack a row: a row is aggregated over the runs that
    have it, never raising.

    Raises:
        ValueError: if ``frames`` is empty or a frame lacks a key column (old schema).
    """
    if not frames:
        raise ValueError("aggregate_runs: expected at least one density frame")
    frames = [_normalize(f) for f in frames]
    if len(frames) == 1:
        return frames[0].assign(n_runs=1)
    df = pd.concat(frames, ignore_index=True)
    df["status_rank"] = df["status"].map(STATUS_RANK).fillna(STATUS_RANK["insufficient"]).astype("int64")
    g = df.groupby(KEYS, sort=False, dropna=False)
    out = g.agg(
        value=("value", "mean"),
        sd=("value", "std"),
        n_finite=("value", "count"),
        n_runs=("value", "size"),
        n=("n", "sum"),
        n_windows=("n_windows", "sum"),
        n_entities=("n_entities", "min"),
        status_rank=("status_rank", "max"),
    ).reset_index()
    out["status"] = out["status_rank"].map({v: k for k, v in STATUS_RANK.items()})
    k = out["n_finite"].to_numpy(float)
    t = stats.t.ppf(0.5 + level / 2, np.clip(k - 1, 1, None))
    half = np.where(k >= 2, t * out["sd"].to_numpy(float) / np.sqrt(np.clip(k, 1, None)), np.nan)
    out["ci_low"], out["ci_high"] = out["value"] - half, out["value"] + half
    bad = out["status"].isin(["insufficient", "no_variation"])
    out.loc[bad, ["value", "ci_low", "ci_high"]] = np.nan
    out = out[[*COLUMNS, "n_runs"]].astype({"n": "int64", "n_windows": "int64", "n_entities": "int64"})
    return out.sort_values(["step", "layer", "probe_set", "role", "metric", "estimand", "bin_index"], ignore_index=True)


def _normalize(f: pd.DataFrame) -> pd.DataFrame:
    """The schema's columns, with defaults for counts or status a writer left out.

    Raises:
        ValueError: if a key column or ``value`` is missing (an old-schema table with ``view``/``bucket``).
    """
    missing = [c for c in KEYS + ["value"] if c not in f]
    if missing:
        raise ValueError(
            f"density records lack columns {missing} (columns: {list(f.columns)}): expected the issue-14 schema of "
            "probes/density.parquet (a run written before it has view/bucket columns; rerun its probes)"
        )
    f = f.copy()
    for col, default in (("n", 0), ("n_windows", 0), ("n_entities", 0), ("status", "ok")):
        if col not in f:
            f[col] = default
    for col in ("ci_low", "ci_high"):
        if col not in f:
            f[col] = np.nan
    f[["n", "n_windows", "n_entities"]] = f[["n", "n_windows", "n_entities"]].fillna(0).astype("int64")
    return f


def aggregate_units(frames: list[pd.DataFrame], level: float = 0.95) -> pd.DataFrame:
    """``dead_frac`` per (step, layer) of ``probes/units.parquet`` (``probe_set == "all"``: every probe set's
    positions pooled), mean over runs with a t interval across runs (``n_runs - 1`` df; NaN CI for one run).

    Returns:
        Columns step, layer, dead_frac, ci_low, ci_high, n_runs (empty when no frame has such rows).
    """
    parts = []
    for i, f in enumerate(frames):
        if f is None or not len(f) or "dead_frac" not in f:
            continue
        sel = f[f["probe_set"] == "all"] if "probe_set" in f else f
        parts.append(sel.drop_duplicates(["step", "layer"])[["step", "layer", "dead_frac"]].assign(run=i))
    if not parts:
        return pd.DataFrame(columns=["step", "layer", "dead_frac", "ci_low", "ci_high", "n_runs"])
    df = pd.concat(parts, ignore_index=True)
    out = (
        df.groupby(["step", "layer"])["dead_frac"]
        .agg(dead_frac="mean", sd="std", n_runs="count")
        .reset_index()
        .sort_values(["layer", "step"], ignore_index=True)
    )
    k = out["n_runs"].to_numpy(float)
    half = np.where(k >= 2, stats.t.ppf(0.5 + level / 2, np.clip(k - 1, 1, None)) * out["sd"] / np.sqrt(k), np.nan)
    out["ci_low"], out["ci_high"] = out["dead_frac"] - half, out["dead_frac"] + half
    return out.drop(columns="sd")


def last_common_step(df: pd.DataFrame) -> int | None:
    """The last step every run reached: the largest step at which some row has the maximum ``n_runs`` (with
    runs of different lengths, the shortest run's final step); the last step when there is no ``n_runs``
    column; None for an empty frame."""
    if not len(df):
        return None
    if "n_runs" not in df:
        return int(df["step"].max())
    per_step = df.groupby("step")["n_runs"].max()
    return int(per_step[per_step == per_step.max()].index.max())


def endpoint_exposure(df: pd.DataFrame) -> str:
    """The exposure of the endpoint rows: ``distinct_docs`` (synthetic data) when the panel has such rows, else
    the first other non-``all`` exposure (``mentions`` on text data), else ``distinct_docs``."""
    panel = df[df["probe_set"] == "panel"] if len(df) else df
    exposures = [e for e in pd.unique(panel["exposure"]) if e != "all"] if len(panel) else []
    if "distinct_docs" in exposures or not exposures:
        return "distinct_docs"
    return str(exposures[0])


#: What each exposure measure counts, for axis labels and titles (the familiarity measure named, not only its column).
EXPOSURE_MEANING = {
    "distinct_docs": "documents about the person trained at least once",
    "subject_docs": "training documents whose subject is the person",
    "mentions": "name mentions trained on",
    "comentions": "training documents naming the person beside another",
}


def reference_set(exposure: str) -> str:
    """The reference bin ``0`` of ``exposure`` in words (what every other bin is compared with): on synthetic data
    (``distinct_docs``, ``subject_docs``) the people with no training document, probed on their unfamiliar
    biography; on text data (``mentions``: the density probe's familiarity measure there, since text has no document
    subjects) the panel's entities (capitalized names) never mentioned in the training split, probed on a held-out
    window with their first held-out mention."""
    if exposure == "mentions":
        return "entities never mentioned in training (held-out window of their first mention)"
    if exposure == "comentions":
        return "people never co-mentioned in training"
    return "people with no training document (unfamiliar biography)"


def _bin_rows(df: pd.DataFrame, metric: str, estimand: str, exposure: str) -> pd.DataFrame:
    return df[
        (df["probe_set"] == "panel")
        & (df["exposure"] == exposure)
        & (df["metric"] == metric)
        & (df["estimand"] == estimand)
        & (df["bin"] != "all")
    ]


def bin_labels(df: pd.DataFrame) -> list[str]:
    """The familiarity bin labels of the records in ``bin_index`` order: all of :data:`BINS` when the records'
    labels are the default edges' (even if a bin has no row) or there are no binned rows, else the records' own."""
    binned = df[df["bin_index"] >= 0] if len(df) else df
    if not len(binned):
        return list(BINS)
    pairs = binned.drop_duplicates("bin_index").sort_values("bin_index")
    by_index = dict(zip(pairs["bin_index"].astype(int), pairs["bin"].astype(str)))
    if all(i < len(BINS) and b == BINS[i] for i, b in by_index.items()):
        return list(BINS)  # the default edges, some bins without rows: still all five pre-registered bins
    return [by_index.get(i, BINS[i] if i < len(BINS) else str(i)) for i in range(max(by_index) + 1)]


def _finite_band(ax, x, lo, hi, color):
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    ok = np.isfinite(lo) & np.isfinite(hi)
    if ok.any():
        ax.fill_between(np.asarray(x)[ok], lo[ok], hi[ok], color=color, alpha=0.2, linewidth=0)


def _empty_figure(plt, message: str):
    fig, ax = plt.subplots(figsize=(5, 2.5), dpi=110)
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=9, transform=ax.transAxes)
    return fig


def _insufficient_label(n_entities: int, min_entities: int) -> str:
    """``n<10`` when the bin itself has too few persons, else ``ref n<10`` (the {0} bin has too few)."""
    return f"n<{min_entities}" if n_entities < min_entities else f"ref n<{min_entities}"


def plot_vs_familiarity(
    df: pd.DataFrame,
    path: Path,
    metric: str = PRIMARY_METRIC,
    step: int | None = None,
    min_entities: int = MIN_ENTITIES,
    note: str = "95% CI",
) -> Path:
    """``density_vs_familiarity.png``: the pre-registered familiarity bins at one step.

    Grid: one column per layer, one row per endpoint role (``name_last``, ``pre_value``). x: the bins
    ``0``, ``1-3``, ``4-15``, ``16-63``, ``64+`` of the endpoint exposure (``distinct_docs``: documents about the
    person trained at least once) in ``bin_index`` order; y: the panel mean of ``metric`` (default ``active_frac_live``,
    fraction of live MLP units active per position) with its CI as error bars: within a run CR1 with persons as
    clusters (t on ``n_entities - 1`` df), across runs the t interval across runs. Each bin is annotated with
    ``n_entities`` (persons, under its tick label); a bin with ``status == "insufficient"`` (< ``min_entities``
    persons in it or in bin ``0``) is a hollow marker labelled ``n<10`` (``ref n<10`` when only bin ``0`` is short)
    with no error bar (at the bottom of the panel when its value is NaN). ``step`` defaults to
    :func:`last_common_step`; ``note`` ends the title (how the CIs were made).

    The title names the metric and the familiarity measure (the exposure column and what it counts,
    :data:`EXPOSURE_MEANING`; ``mentions`` on text data); the x label names the reference bin ``0``
    (:func:`reference_set`). The figure legend has one entry per kind of mark drawn, and only those drawn: the
    panel mean with its CI (``note``), a mean without a CI, an insufficient bin.
    """
    plt = pyplot()
    exposure = endpoint_exposure(df)
    sel = _bin_rows(df, metric, "mean", exposure)
    step = last_common_step(sel) if step is None else step
    sel = sel[sel["step"] == step] if step is not None else sel
    layers = sorted(sel["layer"].unique())
    if not layers:
        fig = _empty_figure(plt, f"no panel rows of {metric} by {exposure} bin")
        return save_figure(fig, path)
    roles = list(ENDPOINT_ROLES)
    fig, axes = plt.subplots(
        len(roles),
        len(layers),
        figsize=(3.4 * len(layers) + 0.6, 3.0 * len(roles) + 0.5),
        dpi=110,
        sharey=True,
        squeeze=False,
    )
    labels = bin_labels(sel)
    drawn: set[str] = set()  # the kinds of mark drawn, for the legend
    for i, role in enumerate(roles):
        for j, layer in enumerate(layers):
            ax = axes[i][j]
            d = sel[(sel["layer"] == layer) & (sel["role"] == role)].sort_values("bin_index")
            ax.set_xticks(range(len(labels)), labels)
            ax.set_xlim(-0.5, len(labels) - 0.5)
            ax.grid(alpha=0.3)
            ax.set_title(f"layer {layer}, {role}", fontsize=9)
            ax.set_xlabel(f"{exposure} bin (0: reference)", fontsize=8)
            ax.set_ylabel(f"{metric} (panel mean)", fontsize=8)
            if not len(d):
                ax.text(0.5, 0.5, "no rows", ha="center", va="center", transform=ax.transAxes, fontsize=8)
                continue
            x = d["bin_index"].to_numpy(int)
            v, lo, hi = (d[c].to_numpy(float) for c in ("value", "ci_low", "ci_high"))
            bad = (d["status"] == "insufficient").to_numpy()
            good = ~bad & np.isfinite(v)
            if good.any():
                ok_ci = good & np.isfinite(lo) & np.isfinite(hi)
                ax.plot(x[good], v[good], "-", color="tab:blue", linewidth=0.8)
                if ok_ci.any():
                    ax.errorbar(
                        x[ok_ci],
                        v[ok_ci],
                        yerr=[v[ok_ci] - lo[ok_ci], hi[ok_ci] - v[ok_ci]],
                        fmt="o",
                        color="tab:blue",
                        ms=4,
                        capsize=2,
                    )
                    drawn.add("ci")
                if (good & ~ok_ci).any():
                    ax.plot(x[good & ~ok_ci], v[good & ~ok_ci], "o", color="tab:blue", ms=4)
                    drawn.add("no_ci")
            trans = ax.get_xaxis_transform()  # x in data, y in axes fraction
            persons = dict(zip(x, d["n_entities"].to_numpy(int)))
            ax.set_xticks(
                range(len(labels)), [f"{b}\nn={persons[i]}" if i in persons else b for i, b in enumerate(labels)]
            )
            for xi, vi, ne, b in zip(x, v, d["n_entities"].to_numpy(int), bad):
                if not b:
                    continue
                drawn.add("insufficient")
                label = _insufficient_label(ne, min_entities)
                if math.isfinite(vi):
                    ax.plot([xi], [vi], "o", mfc="none", mec="tab:gray", ms=5)
                    ax.annotate(label, (xi, vi), xytext=(0, 6), textcoords="offset points", ha="center", fontsize=6,
                                color="tab:gray")  # fmt: skip
                else:
                    ax.plot([xi], [0.08], "o", mfc="none", mec="tab:gray", ms=5, transform=trans)
                    ax.text(xi, 0.13, label, transform=trans, ha="center", fontsize=6, color="tab:gray")
    from matplotlib.lines import Line2D

    entries = {
        "ci": (Line2D([], [], color="tab:blue", marker="o", ms=4, linewidth=0.8), f"panel mean ({note})"),
        "no_ci": (Line2D([], [], color="tab:blue", marker="o", ms=4, linestyle="none"), "panel mean, no CI"),
        "insufficient": (
            Line2D([], [], marker="o", mfc="none", mec="tab:gray", ms=5, linestyle="none"),
            f"insufficient: < {min_entities} persons in the bin (n<{min_entities}) or in bin 0 (ref n<{min_entities})",
        ),
    }
    shown = [entries[k] for k in ("ci", "no_ci", "insufficient") if k in drawn]
    if shown:
        fig.legend(*zip(*shown), loc="lower center", ncol=len(shown), fontsize=7, frameon=False)
    meaning = EXPOSURE_MEANING.get(exposure, exposure)
    fig.suptitle(
        f"{metric} against familiarity, step {step}\nfamiliarity: {exposure} ({meaning})\n"
        f"bin 0, the reference: {reference_set(exposure)}",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.06 if shown else 0, 1, 1))
    return save_figure(fig, path)


def plot_over_training(df: pd.DataFrame, units: pd.DataFrame | None, path: Path, title: str = "") -> Path:
    """``density_over_training.png``: per layer (columns), against training step (symlog x):

    - ``active_frac`` (fraction of MLP units with pre-activation > 0 per position) and ``active_frac_live``
      (the same over live units only) of the panel's core (``panel_core``: the people probed at every call;
      ``panel`` when a table has no core rows), whole-set mean (role ``all``, exposure ``all``, bin ``all``),
      with CI bands (descriptive within a run: clustered by window; across runs: t across runs);
    - ``dead_frac`` (fraction of units that never fire on any probed position; ``probes/units.parquet``,
      ``probe_set == "all"``), with a band across runs when there are several.

    ``units`` may be None or empty (then no ``dead_frac`` line).
    """
    plt = pyplot()
    src = "panel_core" if (df["probe_set"] == "panel_core").any() else "panel"
    whole = df[
        (df["probe_set"] == src)
        & (df["role"] == "all")
        & (df["exposure"] == "all")
        & (df["bin"] == "all")
        & (df["estimand"] == "mean")
        & df["metric"].isin(["active_frac", "active_frac_live"])
    ]
    units = units if units is not None else pd.DataFrame(columns=["step", "layer", "dead_frac", "ci_low", "ci_high"])
    layers = sorted(set(whole["layer"]) | set(units["layer"]))
    if not layers:
        return save_figure(_empty_figure(plt, "no whole-set panel rows and no units rows"), path)
    fig, axes = plt.subplots(1, len(layers), figsize=(3.6 * len(layers), 3.4), dpi=110, sharey=True, squeeze=False)
    styles = {"active_frac": "tab:blue", "active_frac_live": "tab:orange", "dead_frac": "tab:red"}
    steps = sorted(set(whole["step"]) | set(units["step"]))
    for ax, layer in zip(axes[0], layers):
        for metric in ("active_frac", "active_frac_live"):
            d = whole[(whole["layer"] == layer) & (whole["metric"] == metric)].sort_values("step")
            if len(d):
                ax.plot(d["step"], d["value"], marker=".", color=styles[metric], label=f"{metric} ({src})")
                _finite_band(ax, d["step"], d["ci_low"], d["ci_high"], styles[metric])
        u = units[units["layer"] == layer].sort_values("step")
        if len(u):
            ax.plot(u["step"], u["dead_frac"], marker=".", color=styles["dead_frac"], label="dead_frac (all sets)")
            _finite_band(ax, u["step"], u["ci_low"], u["ci_high"], styles["dead_frac"])
        step_axis(ax, steps)
        ax.set_title(f"layer {layer}")
        ax.set_ylabel("fraction of MLP units")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(title or "density over training (95% CI)")
    fig.tight_layout()
    return save_figure(fig, path)


def heatmap_by_bin(
    records: pd.DataFrame,
    step: int,
    role: str = "name_last",
    metric: str = PRIMARY_METRIC,
    min_entities: int = 10,
    vmin: float | None = None,
    vmax: float | None = None,
):
    """Heatmap layer × familiarity bin of the panel mean of ``metric`` for one position ``role`` at one probe
    step (the W&B image of the density callback).

    Cells: the ``panel`` rows with estimand ``mean`` of the endpoint exposure (``distinct_docs``), bins
    ``0`` … ``64+`` in ``bin_index`` order, annotated with the value and ``n_entities`` (persons); a bin with
    ``status == "insufficient"`` (< ``min_entities`` persons, or the {0} reference bin has fewer) or no row is a
    NaN cell (grey), labelled ``n<10``: no familiarity claim is drawn from it. The CIs (CR1, persons as clusters)
    are not drawn; see :func:`plot_vs_familiarity`.

    Args:
        records: density records (:data:`COLUMNS`) of one probe call or a whole run (then ``step`` selects).
        step: the training step to draw (also in the title).
        role: the position role (``name_last`` or ``pre_value``).
        metric: the density metric (default the pre-registered primary ``active_frac_live``).
        min_entities: the threshold named in the ``n<..`` labels.
        vmin, vmax: the colour scale's ends (None: the drawn cells' range); fixed ends (e.g. 0 and 1 for a fraction
            of units) make the colours of different steps and runs comparable.

    Returns:
        A matplotlib Figure (Agg backend); the caller closes it.
    """
    plt = pyplot()
    exposure = endpoint_exposure(records)
    sel = _bin_rows(records, metric, "mean", exposure)
    sel = sel[sel["role"] == role]
    if "step" in sel and (sel["step"] == step).any():
        sel = sel[sel["step"] == step]
    sel = sel.drop_duplicates(["layer", "bin"], keep="last")
    cols = bin_labels(sel)
    value = sel["value"].where(sel["status"] != "insufficient")
    grid = sel.assign(value=value).pivot(index="layer", columns="bin", values="value").reindex(columns=cols)
    count = sel.pivot(index="layer", columns="bin", values="n_entities").reindex(columns=cols)
    status = sel.pivot(index="layer", columns="bin", values="status").reindex(columns=cols)
    fig, ax = plt.subplots(figsize=(6.5, 0.5 * max(len(grid), 1) + 2.2), dpi=100)
    cmap = plt.get_cmap("viridis").with_extremes(bad="lightgrey")
    data = np.ma.masked_invalid(grid.to_numpy(float)) if len(grid) else np.ma.masked_all((1, len(cols)))
    im = ax.imshow(data, aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax)
    for i in range(len(grid)):
        for j in range(len(cols)):
            v, ne, st = grid.iat[i, j], count.iat[i, j], status.iat[i, j]
            if st == "insufficient":
                text = f"{_insufficient_label(int(ne), min_entities)}\nn={int(ne)}"
            elif pd.isna(v):
                text = "—"
            else:
                text = f"{v:.3f}\nn={int(ne)}"
            ax.text(j, i, text, ha="center", va="center", fontsize=6, color="k" if pd.isna(v) else "w")
    ax.set_xticks(range(len(cols)), cols)
    ax.set_yticks(range(len(grid)), [f"L{i}" for i in grid.index])
    ax.set_xlabel(f"familiarity bin ({exposure})")
    ax.set_ylabel("layer")
    ax.set_title(f"{metric}, panel {role}, step {step}", fontsize=9)
    fig.colorbar(im, ax=ax, label=f"{metric} (panel mean)")
    fig.tight_layout()
    return fig


def headline_table(df: pd.DataFrame, metric: str = PRIMARY_METRIC) -> pd.DataFrame:
    """The pre-registered endpoints per layer and role (``name_last``, ``pre_value``) at the last step every run
    reached (:func:`last_common_step`), one row per (layer, role).

    Columns: ``layer``, ``role``, ``step``, ``metric``, ``exposure``; ``slope`` (OLS slope of ``metric`` on
    log2(1 + distinct_docs): change per doubling of exposure) with ``slope_ci_low``, ``slope_ci_high``,
    ``slope_n_entities``, ``slope_status``; ``n_0`` (persons in the reference bin, bin_index 0); and for each
    other bin ``b`` (``1-3``, ``4-15``, ``16-63``, ``64+`` for the default edges): ``diff_{b}`` (bin mean minus
    the {0} bin mean) with ``diff_{b}_ci_low``, ``diff_{b}_ci_high``, ``diff_{b}_status`` and ``n_{b}`` (persons
    in the bin); ``n_runs``.
    Within a run the CIs are CR1 with persons as clusters (t on ``n_entities - 1`` df) and a bin with < 10
    persons (or a {0} bin with < 10) is ``insufficient`` with NaN value; across runs see :func:`aggregate_runs`.
    A missing row gives NaN values and status ``"missing"``.
    """
    exposure = endpoint_exposure(df)
    panel = df[(df["probe_set"] == "panel") & (df["exposure"] == exposure) & (df["metric"] == metric)]
    panel = panel[panel["role"].isin(ENDPOINT_ROLES)]
    step = last_common_step(panel)
    last = panel[panel["step"] == step] if step is not None else panel
    labels = bin_labels(panel)
    ref, bins = labels[0], labels[1:]
    has_runs = "n_runs" in df
    rows = []
    for layer in sorted(last["layer"].unique()):
        for role in ENDPOINT_ROLES:
            d = last[(last["layer"] == layer) & (last["role"] == role)]
            if not len(d):
                continue
            row = {"layer": int(layer), "role": role, "step": step, "metric": metric, "exposure": exposure}
            s = d[d["estimand"] == "slope"]
            row.update(_estimate(s, "slope"))
            row["slope_n_entities"] = int(s["n_entities"].iloc[0]) if len(s) else 0
            means = d[d["estimand"] == "mean"].drop_duplicates("bin").set_index("bin")
            row["n_0"] = int(means.at[ref, "n_entities"]) if ref in means.index else 0
            diffs = d[d["estimand"] == "diff_vs_0"]
            for b in bins:
                row.update(_estimate(diffs[diffs["bin"] == b], f"diff_{b}"))
                row[f"n_{b}"] = int(means.at[b, "n_entities"]) if b in means.index else 0
            if has_runs:
                row["n_runs"] = int(d["n_runs"].max())
            rows.append(row)
    cols = ["layer", "role", "step", "metric", "exposure", *_est_cols("slope"), "slope_n_entities", "n_0"]
    for b in bins:
        cols += [*_est_cols(f"diff_{b}"), f"n_{b}"]
    cols += ["n_runs"] if has_runs else []
    return pd.DataFrame(rows, columns=cols)


def _est_cols(name: str) -> list[str]:
    return [name, f"{name}_ci_low", f"{name}_ci_high", f"{name}_status"]


def _estimate(rows: pd.DataFrame, name: str) -> dict:
    if not len(rows):
        return dict(zip(_est_cols(name), [np.nan, np.nan, np.nan, "missing"]))
    r = rows.iloc[0]
    return dict(zip(_est_cols(name), [float(r["value"]), float(r["ci_low"]), float(r["ci_high"]), str(r["status"])]))


def density_report(paths: list[str | Path], out_dir: str | Path | None = None) -> tuple[Path, pd.DataFrame]:
    """Write ``density_over_training.png`` (:func:`plot_over_training`), ``density_vs_familiarity.png``
    (:func:`plot_vs_familiarity`) and ``density_headline.csv`` (:func:`headline_table`).

    One run: into ``RUN/plots/``, with the within-run CIs (panel rows: CR1, persons as clusters; bins with < 10
    persons insufficient). Several runs (seeds, or a multirun folder): mean ± t CI across runs
    (:func:`aggregate_runs`), into ``out_dir`` (default: ``<common parent of the runs>/report``). A run without
    ``probes/units.parquet`` just has no ``dead_frac`` line.

    Returns:
        ``(output folder, headline table)``.
    Raises:
        FileNotFoundError: see :func:`find_runs`.
    """
    runs = find_runs(paths)
    df = aggregate_runs([pd.read_parquet(r / "probes" / "density.parquet") for r in runs])
    unit_files = [r / "probes" / "units.parquet" for r in runs]
    units = aggregate_units([pd.read_parquet(f) for f in unit_files if f.is_file()])
    if out_dir is None:
        if len(runs) == 1:
            out_dir = runs[0] / "plots"
        else:
            common = Path(*Path(runs[0]).parts[: min(len(Path(r).parts) for r in runs)])
            while not all(str(r).startswith(str(common)) for r in runs):
                common = common.parent
            out_dir = common / "report"
    out = Path(out_dir)
    n = f"{len(runs)} runs, mean ± 95% t CI across runs" if len(runs) > 1 else "95% CI, CR1 over persons"
    over = n if len(runs) > 1 else "panel means, 95% CI over rows (descriptive)"
    plot_over_training(df, units, out / "density_over_training.png", title=f"density over training ({over})")
    plot_vs_familiarity(df, out / "density_vs_familiarity.png", note=n)
    table = headline_table(df)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "density_headline.csv", index=False)
    return out, table


def _ci(v: float, lo: float, hi: float, digits: int) -> str:
    if not math.isfinite(v):
        return "n/a"
    if math.isfinite(lo) and math.isfinite(hi):
        return f"{v:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]"
    return f"{v:+.{digits}f} [no CI]"


def format_table(table: pd.DataFrame, top_bin: str | None = None) -> str:
    """Human-readable headline lines, one per (layer, role), e.g.
    ``layer 0 name_last: slope +0.0012 [-0.0003, +0.0027] per doubling (n_entities=320); 64+ vs 0: +0.010
    [+0.002, +0.018] (15 vs 48 persons)``; an insufficient bin reads ``insufficient (< 10 persons)``.
    ``top_bin`` (default: the most familiar bin of the table, ``64+``) is the bin compared with bin ``0``."""
    if top_bin is None:
        diffs = [c[5:] for c in table.columns if c.startswith("diff_") and c.endswith("_status")]
        top_bin = diffs[-1][: -len("_status")] if diffs else "64+"
    lines = []
    for _, r in table.iterrows():
        slope = _ci(r["slope"], r["slope_ci_low"], r["slope_ci_high"], 4)
        if r["slope_status"] == "insufficient":
            slope = f"insufficient (< {MIN_ENTITIES} persons)"
        line = f"layer {r['layer']} {r['role']}: slope {slope} per doubling (n_entities={r['slope_n_entities']})"
        d = f"diff_{top_bin}"
        if d in r:
            persons = f"({r[f'n_{top_bin}']} vs {r['n_0']} persons)"
            if r[f"{d}_status"] == "insufficient":
                line += f"; {top_bin} vs 0: insufficient (< {MIN_ENTITIES} persons) {persons}"
            else:
                line += f"; {top_bin} vs 0: {_ci(r[d], r[f'{d}_ci_low'], r[f'{d}_ci_high'], 3)} {persons}"
        if "n_runs" in r and r["n_runs"] > 1:
            line += f" [{r['n_runs']} runs]"
        lines.append(line)
    return "\n".join(lines)
