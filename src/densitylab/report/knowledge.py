"""Knowledge-probe plots and headline from run folders (no W&B needed).

Reads ``probes/knowledge_curve.parquet`` (long format: step, scope, attribute, estimand, exposure, bin, bin_index,
value, ci_low, ci_high, n_items, n_entities, chance, prior, method, status) and ``probes/hallucination.parquet``
(step, scope, statistic, bin, bin_index, value, ci_low, ci_high, n_items, n_entities, method, status), and writes
``plots/knowledge_vs_exposure.png``, ``plots/knowledge_over_training.png`` and ``plots/hallucination_auroc.png``.

Scopes: ``core`` (the fixed subset of persons probed at every knowledge call), ``panel`` (the whole panel, last step
only), ``facts`` (a user facts file). Exposure bins are those of the density probe (``0``, ``1-3``, ``4-15``, ``16-63``,
``64+`` of ``distinct_docs``; bin_index 0..4, ``all`` = -1). Inference rule (made by the probe, kept here): the unit of
replication is the **person**: accuracy rows are cluster means with a Wilson interval on the CR1 design-effect sample
size (persons as clusters); a bin with < 10 persons is ``status == "insufficient"`` and no claim is made from it (drawn
hollow, labelled ``n<10``); the AUROC CIs are a person bootstrap (last step only; ``point`` rows have NaN CIs). Accuracy
against exposure follows Kandpal et al. 2023, "Large Language Models Struggle to Learn Long-Tail Knowledge"
(arXiv:2211.08411; on the bioS biographies of Allen-Zhu & Li, "Physics of Language Models: Part 3.1", arXiv:2309.14316);
the AUROC of the model's confidence against a data statistic for telling wrong answers is QuCo-RAG's comparison (Min et
al. 2025, arXiv:2512.19134).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from densitylab.probes.hallucination import HALLUCINATION_COLUMNS as HALLUC_COLUMNS
from densitylab.probes.knowledge import CURVE_COLUMNS
from densitylab.report.common import pyplot, read_probe, save_figure
from densitylab.report.density import BINS, bin_labels

MIN_ENTITIES = 10  # the probe's min_entities: only used in labels ("n<10")
TABLE_COLUMNS = [
    "quantity",
    "scope",
    "step",
    "exposure",
    "bin",
    "bin_index",
    "value",
    "ci_low",
    "ci_high",
    "n_items",
    "n_entities",
    "chance",
    "prior",
    "method",
    "status",
]
AUROCS = ("auroc_confidence", "auroc_exposure", "auroc_cooccurrence")
AUROC_DIFFS = ("auroc_exposure_minus_confidence", "auroc_cooccurrence_minus_confidence")
AUROC_COLORS = {"auroc_confidence": "tab:blue", "auroc_exposure": "tab:orange", "auroc_cooccurrence": "tab:green"}
# headline scope preference: the whole panel (last step), else the core subset, else a user facts file
SCOPE_ORDER = ("panel", "core", "facts")
PLOT_FILES = ("knowledge_vs_exposure.png", "knowledge_over_training.png", "hallucination_auroc.png")


# ----------------------------------------------------------------------------------------------------------- helpers
def _normalize(df: pd.DataFrame | None, columns: list[str], key: str) -> pd.DataFrame:
    """The schema's columns with defaults for the optional ones; an empty or None frame gives an empty frame.

    Raises:
        ValueError: if a non-empty frame lacks step, scope, bin, value or ``key`` (estimand / statistic).
    """
    if df is None or not len(df):
        return pd.DataFrame({c: pd.Series(dtype=_dtype(c)) for c in columns})
    missing = [c for c in ("step", "scope", "bin", "value", key) if c not in df]
    if missing:
        raise ValueError(
            f"knowledge records lack columns {missing} (columns: {list(df.columns)}): expected the issue-15 schema "
            f"of probes/knowledge_curve.parquet / probes/hallucination.parquet"
        )
    df = df.copy()
    defaults = {
        "attribute": "all",
        "exposure": "distinct_docs",
        "ci_low": np.nan,
        "ci_high": np.nan,
        "n_items": 0,
        "n_entities": 0,
        "chance": np.nan,
        "prior": np.nan,
        "method": "",
        "status": "ok",
    }
    for c in columns:
        if c not in df and c in defaults:
            df[c] = defaults[c]
    if "bin_index" not in df:
        df["bin_index"] = [-1 if str(b) == "all" else _default_index(str(b)) for b in df["bin"]]
    for c in ("value", "ci_low", "ci_high", "chance", "prior"):
        if c in df:
            df[c] = pd.to_numeric(df[c], errors="coerce").astype(float)
    for c in ("step", "bin_index", "n_items", "n_entities"):
        df[c] = pd.to_numeric(df[c], errors="coerce").fillna(-1 if c == "bin_index" else 0).astype("int64")
    df["bin"] = df["bin"].astype(str)
    df["status"] = df["status"].fillna("ok").astype(str)
    return df


def _dtype(c: str) -> str:
    if c in ("step", "bin_index", "n_items", "n_entities"):
        return "int64"
    if c in ("value", "ci_low", "ci_high", "chance", "prior"):
        return "float64"
    return "object"


def _default_index(b: str) -> int:
    return BINS.index(b) if b in BINS else -1


def _empty_figure(plt, message: str):
    fig, ax = plt.subplots(figsize=(5, 2.5), dpi=110)
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=9, transform=ax.transAxes)
    return fig


def _message(ax, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=8, color="0.4", transform=ax.transAxes)


def _finite_band(ax, x, lo, hi, color) -> None:
    x, lo, hi = np.asarray(x, float), np.asarray(lo, float), np.asarray(hi, float)
    ok = np.isfinite(x) & np.isfinite(lo) & np.isfinite(hi)
    if ok.any():
        ax.fill_between(x[ok], lo[ok], hi[ok], color=color, alpha=0.2, linewidth=0)


def _errorbar(ax, x, v, lo, hi, **kw) -> None:
    """Error bars at the points whose value and CI are finite (negative half-widths clipped to 0)."""
    x, v, lo, hi = (np.asarray(a, float) for a in (x, v, lo, hi))
    ok = np.isfinite(x) & np.isfinite(v) & np.isfinite(lo) & np.isfinite(hi)
    if ok.any():
        yerr = np.clip(np.vstack([v[ok] - lo[ok], hi[ok] - v[ok]]), 0, None)
        ax.errorbar(x[ok], v[ok], yerr=yerr, fmt="none", capsize=2, **kw)


def _pick_steps(steps, k: int = 5) -> list[int]:
    """Up to ``k`` steps evenly spread over ``steps`` (sorted, distinct), first and last included."""
    steps = sorted({int(s) for s in steps})
    if len(steps) <= k:
        return steps
    idx = np.unique(np.round(np.linspace(0, len(steps) - 1, k)).astype(int))
    return [steps[i] for i in idx]


def _first_scope(df: pd.DataFrame, scopes) -> str | None:
    for s in scopes:
        if (df["scope"] == s).any():
            return s
    return None


def _accuracy(curve: pd.DataFrame) -> pd.DataFrame:
    return curve[(curve["estimand"] == "accuracy") & (curve["attribute"] == "all")]


def _step_line(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x, y of a step line that spans each bin (positions 0..n-1, half-width 0.5); gaps at NaN bins."""
    xs, ys = [], []
    for i, y in enumerate(values):
        if not np.isfinite(y):
            xs.append(np.nan)
            ys.append(np.nan)
            continue
        xs += [i - 0.5, i + 0.5]
        ys += [y, y]
    return np.asarray(xs, float), np.asarray(ys, float)


def _pooled(rows: pd.DataFrame, col: str) -> float:
    """``col`` of the pooled (``all``) row, else the mean over the bins; NaN when there is none."""
    a = rows.loc[rows["bin_index"] < 0, col].dropna()
    if len(a):
        return float(a.iloc[0])
    b = rows.loc[rows["bin_index"] >= 0, col].dropna()
    return float(b.mean()) if len(b) else math.nan


# ------------------------------------------------------------------------------------------------------------- plots
def _save(fig, path):
    """``path=None``: the figure itself (the caller closes it: a W&B image); else write it and return ``path``."""
    return fig if path is None else save_figure(fig, path)


def plot_knowledge_vs_exposure(curve: pd.DataFrame, path: str | Path | None, title: str = ""):
    """``knowledge_vs_exposure.png``: accuracy of the closed-set knowledge probe against the exposure bin.

    x: the exposure bins (``0``, ``1-3``, ``4-15``, ``16-63``, ``64+`` of ``distinct_docs``: documents about the person
    trained on) in ``bin_index`` order, each tick annotated with the reference rows' ``n_entities`` (persons); y:
    accuracy (estimand ``accuracy``, attribute ``all``; share of items answered correctly, in [0, 1]) with the 95% CI
    (Wilson on the CR1 design-effect n, persons as clusters) as error bars. One line per step of the ``core`` scope (up
    to five steps evenly spread, first and last included; ``facts`` when a run has no core rows), coloured early → late,
    plus the last step's ``panel`` scope drawn thick in black. A bin with ``status == "insufficient"`` (< 10 persons) is
    a hollow grey marker labelled ``n<10``, not joined to the line, without an error bar (at the bottom when its value
    is NaN). Dashed: the chance level (mean 1/n_candidates) and the popularity prior (always answering each attribute's
    most common value across people), per bin as step lines, of the reference rows (last panel step, else the last line
    step). The title ends with the reference rows' ``n_entities``. No rows: a figure saying so.

    Args:
        curve: rows of ``probes/knowledge_curve.parquet`` (other estimands / attributes are ignored).
        path: the PNG to write (its folder is created); None: return the matplotlib Figure instead.
        title: the start of the title (default ``"accuracy against exposure"``).

    Returns:
        ``path`` (the Figure when ``path`` is None).
    Raises:
        ValueError: if a non-empty ``curve`` lacks a key column (see the module docstring).
    """
    plt = pyplot()
    acc = _accuracy(_normalize(curve, CURVE_COLUMNS, "estimand"))
    binned = acc[acc["bin_index"] >= 0]
    line_scope = _first_scope(binned, ("core", "facts"))
    panel = binned[binned["scope"] == "panel"]
    if line_scope is None and not len(panel):
        return _save(_empty_figure(plt, "no accuracy rows by exposure bin (core / panel / facts)"), path)
    labels = bin_labels(binned)
    n = len(labels)
    lines = binned[binned["scope"] == line_scope] if line_scope else binned.iloc[:0]
    steps = _pick_steps(lines["step"]) if len(lines) else []
    if len(panel):
        ref_scope, ref_step = "panel", int(panel["step"].max())
    else:
        ref_scope, ref_step = line_scope, int(lines["step"].max())
    ref_all = acc[(acc["scope"] == ref_scope) & (acc["step"] == ref_step)]
    ref = ref_all[ref_all["bin_index"] >= 0].drop_duplicates("bin_index", keep="last").set_index("bin_index")

    fig, ax = plt.subplots(figsize=(9.5, 4.6), dpi=110)
    colors = plt.cm.viridis(np.linspace(0.05, 0.85, max(len(steps), 1)))
    draws = [(lines[lines["step"] == s], colors[i], f"{line_scope} step {s}", 1.2, 4) for i, s in enumerate(steps)]
    if len(panel):
        draws.append((panel[panel["step"] == ref_step], "black", f"panel step {ref_step}", 2.6, 6))
    width = 0.25
    offsets = np.linspace(-width, width, len(draws)) if len(draws) > 1 else [0.0]
    bottom_labelled: set[int] = set()
    for (d, color, label, lw, ms), off in zip(draws, offsets):
        d = d.drop_duplicates("bin_index", keep="last").sort_values("bin_index")
        x = d["bin_index"].to_numpy(float) + off
        v = d["value"].to_numpy(float)
        bad = (d["status"] == "insufficient").to_numpy()
        ok = ~bad & np.isfinite(v)
        ax.plot(x[ok], v[ok], marker="o", ms=ms, lw=lw, color=color, label=label)
        _errorbar(ax, x[ok], v[ok], d["ci_low"].to_numpy(float)[ok], d["ci_high"].to_numpy(float)[ok], color=color)
        for xi, vi, bi in zip(x[bad], v[bad], d["bin_index"].to_numpy()[bad]):
            y = vi if np.isfinite(vi) else 0.03
            ax.plot([xi], [y], marker="o", ms=ms, mfc="none", mec="0.55", linestyle="none")
            if np.isfinite(vi) or int(bi) not in bottom_labelled:
                ax.annotate(
                    f"n<{MIN_ENTITIES}", (xi, y), textcoords="offset points", xytext=(3, 4), fontsize=6, color="0.45"
                )
                bottom_labelled.add(int(bi))
    chance = np.array([ref["chance"].get(i, np.nan) for i in range(n)], float)
    prior = np.array([ref["prior"].get(i, np.nan) for i in range(n)], float)
    for values, color, name, col in (
        (chance, "0.4", "chance (1/n_candidates)", "chance"),
        (prior, "tab:brown", "popularity prior", "prior"),
    ):
        if np.isfinite(values).any():
            xs, ys = _step_line(values)
            pooled = _pooled(ref_all, col)
            extra = f" = {pooled:.3f}" if np.isfinite(pooled) else ""
            ax.plot(xs, ys, linestyle="--", lw=1.0, color=color, label=f"{name}, {ref_scope} step {ref_step}{extra}")
    ticks = []
    for i, lab in enumerate(labels):
        ne = ref["n_entities"].get(i, None)
        ticks.append(f"{lab}\nn={int(ne)}" if ne is not None else lab)
    ax.set_xticks(range(n), ticks)
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_ylim(-0.02, 1.02)
    exposure = str(binned["exposure"].iloc[0]) if len(binned) else "distinct_docs"
    ax.set_xlabel(f"exposure bin ({exposure}; n = persons at {ref_scope} step {ref_step})")
    ax.set_ylabel("accuracy (95% CI, persons as clusters)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    n_ent = ref_all.loc[ref_all["bin_index"] < 0, "n_entities"]
    n_ent = int(n_ent.iloc[0]) if len(n_ent) else int(ref["n_entities"].sum())
    ax.set_title(
        f"{title or 'accuracy against exposure'} ({ref_scope} step {ref_step}: n_entities={n_ent})", fontsize=9
    )
    fig.tight_layout()
    return _save(fig, path)


def plot_knowledge_over_training(curve: pd.DataFrame, path: str | Path | None, title: str = ""):
    """``knowledge_over_training.png``: accuracy of the ``core`` scope (the persons probed at every call; ``facts``
    when a run has no core rows) against training step (symlog x, linthresh 1).

    One line per exposure bin (bin label and its persons at the last step in the legend) with its 95% CI band (Wilson on
    the CR1 design-effect n, persons as clusters); insufficient points (< 10 persons) are hollow and not joined; the
    pooled ``all`` line in black; dashed: the chance level (mean 1/n_candidates), dotted: the popularity prior, both of
    the pooled rows per step. y: accuracy in [0, 1]. No rows: a figure saying so.

    Args:
        curve: rows of ``probes/knowledge_curve.parquet`` (estimand ``accuracy``, attribute ``all`` are used).
        path: the PNG to write; None: return the matplotlib Figure instead.
        title: the title (default ``"knowledge over training (<scope>, 95% CI over persons)"``).

    Returns:
        ``path`` (the Figure when ``path`` is None).
    Raises:
        ValueError: if a non-empty ``curve`` lacks a key column.
    """
    plt = pyplot()
    acc = _accuracy(_normalize(curve, CURVE_COLUMNS, "estimand"))
    scope = _first_scope(acc, ("core", "facts"))
    if scope is None:
        return _save(_empty_figure(plt, "no core (or facts) accuracy rows over training"), path)
    d = acc[acc["scope"] == scope]
    labels = bin_labels(d[d["bin_index"] >= 0]) if (d["bin_index"] >= 0).any() else []
    fig, ax = plt.subplots(figsize=(9.5, 4.6), dpi=110)
    colors = plt.cm.plasma(np.linspace(0.05, 0.85, max(len(labels), 1)))
    last = int(d["step"].max())
    series = [(i, lab, colors[i], 1.2) for i, lab in enumerate(labels)] + [(-1, "all", "black", 2.2)]
    for bi, lab, color, lw in series:
        s = d[d["bin_index"] == bi].drop_duplicates("step", keep="last").sort_values("step")
        if not len(s):
            continue
        x, v = s["step"].to_numpy(float), s["value"].to_numpy(float)
        bad = (s["status"] == "insufficient").to_numpy()
        ok = ~bad & np.isfinite(v)
        ne = s.loc[s["step"] == s["step"].max(), "n_entities"]
        name = "all (pooled)" if bi < 0 else f"bin {lab}"
        ax.plot(x[ok], v[ok], marker=".", lw=lw, color=color, label=f"{name} (n={int(ne.iloc[0])} at {last})")
        _finite_band(ax, x[ok], s["ci_low"].to_numpy(float)[ok], s["ci_high"].to_numpy(float)[ok], color)
        fin = bad & np.isfinite(v)
        if fin.any():
            ax.plot(x[fin], v[fin], marker="o", ms=4, mfc="none", mec=color, linestyle="none")
    pooled = d[d["bin_index"] < 0].drop_duplicates("step", keep="last").sort_values("step")
    if not len(pooled):  # no pooled rows: the mean of the bins' chance / prior per step
        pooled = d.groupby("step", as_index=False)[["chance", "prior"]].mean()
    for col, ls, color, name in (("chance", "--", "0.4", "chance"), ("prior", ":", "tab:brown", "popularity prior")):
        if np.isfinite(pooled[col].to_numpy(float)).any():
            ax.plot(pooled["step"], pooled[col], linestyle=ls, lw=1.0, color=color, label=name)
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlim(left=0)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("training step")
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.set_title(
        title or f"knowledge over training ({scope}, 95% CI over persons; hollow: n<{MIN_ENTITIES})", fontsize=9
    )
    fig.tight_layout()
    return _save(fig, path)


def _stat_rows(h: pd.DataFrame, statistic: str, bins: tuple[str, ...]) -> pd.DataFrame:
    return h[(h["statistic"] == statistic) & h["bin"].isin(bins)]


def plot_hallucination_auroc(halluc: pd.DataFrame, path: str | Path | None, title: str = ""):
    """``hallucination_auroc.png``: can the model tell when it is wrong, and how often it is confidently wrong.

    Left: AUROC (in [0, 1]; 0.5 = no discrimination, dashed) of ``1 - confidence`` (``auroc_confidence``,
    Kadavath et al. 2022), of ``-log2(1 + exposure)`` (``auroc_exposure``) and, for facts files, of
    ``-log2(1 + cooccurrence)`` (``auroc_cooccurrence``) for predicting a wrong answer, over training step (symlog
    x): lines of the ``point`` rows (bin ``all``) of the ``core`` scope (solid) and the ``facts`` scope (dotted);
    markers with 95% person-bootstrap CIs: the ``bootstrap`` rows of the last step (``panel``: diamonds, ``facts``:
    squares).
    Right: ``confident_error_rate`` on bin ``0`` (share of zero-exposure persons' items answered wrongly with
    confidence > tau: the hallucination rate) and ``leak_rate`` (share of wrong answers that are a co-mention
    partner's value) against ``leak_chance_rate`` (the share expected from zero-exposure persons' answers,
    dashed), bin ``all``, over steps: core / facts lines with 95% CI bands, the last step's panel rows as points
    with error bars. NaN CIs are not drawn; missing statistics leave their lines out. No rows: a figure saying so.

    Args:
        halluc: rows of ``probes/hallucination.parquet``.
        path: the PNG to write; None: return the matplotlib Figure instead.
        title: the figure title (default: a description of both panels).

    Returns:
        ``path`` (the Figure when ``path`` is None).
    Raises:
        ValueError: if a non-empty ``halluc`` lacks a key column.
    """
    plt = pyplot()
    h = _normalize(halluc, HALLUC_COLUMNS, "statistic")
    if not len(h):
        return _save(_empty_figure(plt, "no hallucination rows"), path)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11.5, 4.4), dpi=110)
    styles = {"core": "-", "facts": ":"}
    markers = {"panel": "D", "facts": "s"}
    drawn = False
    for k, stat in enumerate(AUROCS):
        rows = _stat_rows(h, stat, ("all",))
        color = AUROC_COLORS[stat]
        for scope, ls in styles.items():
            p = rows[(rows["method"] == "point") & (rows["scope"] == scope)]
            p = p.drop_duplicates("step", keep="last").sort_values("step")
            if len(p):
                ax_label = f"{stat[6:]} ({scope})"
                a1.plot(p["step"], p["value"], linestyle=ls, marker=".", color=color, label=ax_label)
                drawn = True
        for scope, marker in markers.items():
            b = rows[(rows["method"] == "bootstrap") & (rows["scope"] == scope)]
            if not len(b):
                continue
            b = b[b["step"] == b["step"].max()].iloc[[-1]]
            x = b["step"].to_numpy(float) * (1 + 0.04 * (k - 1))
            a1.plot(
                x,
                b["value"],
                marker=marker,
                ms=6,
                color=color,
                linestyle="none",
                label=f"{stat[6:]} ({scope}, bootstrap 95% CI)",
            )
            _errorbar(a1, x, b["value"], b["ci_low"], b["ci_high"], color=color)
            drawn = True
    if not drawn:
        _message(a1, "no AUROC rows")
    a1.axhline(0.5, color="0.4", linestyle="--", lw=0.9, label="0.5 (chance)")
    a1.set_title("AUROC for predicting a wrong answer", fontsize=9)
    a1.set_ylabel("AUROC")

    drawn = False
    rates = (
        ("confident_error_rate", ("0",), "tab:red", "-", "confident errors, bin 0"),
        ("leak_rate", ("all",), "tab:purple", "-", "leak rate"),
        ("leak_chance_rate", ("all",), "tab:purple", "--", "leak chance rate"),
    )
    for stat, bins, color, ls, name in rates:
        rows = _stat_rows(h, stat, bins)
        for scope in styles:
            p = rows[rows["scope"] == scope].drop_duplicates("step", keep="last").sort_values("step")
            if not len(p):
                continue
            lsty = ls if scope == "core" else (":" if ls == "-" else "-.")
            a2.plot(p["step"], p["value"], linestyle=lsty, marker=".", color=color, label=f"{name} ({scope})")
            _finite_band(a2, p["step"], p["ci_low"], p["ci_high"], color)
            drawn = True
        pan = rows[rows["scope"] == "panel"]
        if len(pan):
            pan = pan[pan["step"] == pan["step"].max()].iloc[[-1]]
            mfc = color if ls == "-" else "white"
            a2.plot(
                pan["step"],
                pan["value"],
                marker="D",
                ms=5,
                color=color,
                mfc=mfc,
                linestyle="none",
                label=f"{name} (panel)",
            )
            _errorbar(a2, pan["step"], pan["value"], pan["ci_low"], pan["ci_high"], color=color)
            drawn = True
    if not drawn:
        _message(a2, "no confident-error / leak rows")
    a2.set_title("confident errors on zero-exposure persons; leaks vs chance", fontsize=9)
    a2.set_ylabel("share (95% CI, persons as clusters)")
    right = float(h["step"].max()) * 1.6 if h["step"].max() > 0 else 1.0  # room for the last step's markers
    for ax in (a1, a2):
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xlim(0, right)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")
    fig.suptitle(title or "hallucination: does the model know when it does not know?", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


# ------------------------------------------------------------------------------------------------------------- table
def _pick(rows: pd.DataFrame, prefer_bootstrap: bool = False) -> pd.Series | None:
    """The headline row among ``rows``: the first scope of :data:`SCOPE_ORDER` present (else any), its last step,
    a ``bootstrap`` row over a ``point`` one when ``prefer_bootstrap``."""
    if not len(rows):
        return None
    scope = _first_scope(rows, SCOPE_ORDER) or rows["scope"].iloc[0]
    r = rows[rows["scope"] == scope]
    r = r[r["step"] == r["step"].max()]
    if prefer_bootstrap and (r["method"] == "bootstrap").any():
        r = r[r["method"] == "bootstrap"]
    return r.iloc[-1]


def _table_row(quantity: str, r: pd.Series) -> dict:
    return {
        "quantity": quantity,
        "scope": str(r["scope"]),
        "step": int(r["step"]),
        "exposure": str(r["exposure"]) if "exposure" in r else "",
        "bin": str(r["bin"]),
        "bin_index": int(r["bin_index"]),
        "value": float(r["value"]),
        "ci_low": float(r["ci_low"]),
        "ci_high": float(r["ci_high"]),
        "n_items": int(r["n_items"]),
        "n_entities": int(r["n_entities"]),
        "chance": float(r["chance"]) if "chance" in r else math.nan,
        "prior": float(r["prior"]) if "prior" in r else math.nan,
        "method": str(r["method"]),
        "status": str(r["status"]),
    }


def knowledge_table(curve: pd.DataFrame | None, halluc: pd.DataFrame | None) -> pd.DataFrame:
    """The knowledge headline of a run, one row per quantity (columns :data:`TABLE_COLUMNS`).

    Rows (the whole ``panel`` at its last step; else the ``core`` scope, else ``facts``, at its last step):

    - ``accuracy`` per exposure bin (``bin_index`` order) and pooled (bin ``all``, last): share of items answered
      correctly with the 95% CI (Wilson on the CR1 design-effect n, persons as clusters), ``n_items``,
      ``n_entities`` (persons), ``chance``
      (mean 1/n_candidates), ``prior`` (popularity baseline), ``status`` (``insufficient``: < 10 persons);
    - ``slope`` (when the run has it): log-odds of a correct answer per doubling of 1 + exposure (cluster GLM);
    - ``confident_error_rate`` on bin ``0``: the share of zero-exposure persons' items answered wrongly with
      confidence > tau (the hallucination rate; Kadavath et al. 2022);
    - ``shortest_answer_rate`` against ``shortest_truth_rate`` and ``shortest_chance_rate`` (bin ``all``): answers
      that are a candidate of minimum token length, against the share of true values and of candidates that are
      (the length bias of summed log-probabilities);
    - ``leak_rate`` and ``leak_chance_rate`` (bin ``all``): wrong answers that are a co-mention partner's value,
      observed vs expected by chance, and ``leak_excess``, their paired difference (the test);
    - ``auroc_confidence``, ``auroc_exposure`` (and ``auroc_cooccurrence`` when present): the ``bootstrap`` row
      (person bootstrap CI) of the last step when there is one, else the ``point`` row (NaN CI); and the paired
      ``auroc_exposure_minus_confidence`` (``auroc_cooccurrence_minus_confidence``) from the same replicates.

    A quantity without rows is left out; ``None`` or empty inputs give an empty table (with the columns). The
    ``chance``/``prior``/``exposure`` of hallucination rows are NaN/"".

    Raises:
        ValueError: if a non-empty input lacks a key column.
    """
    rows = []
    acc = _accuracy(_normalize(curve, CURVE_COLUMNS, "estimand"))
    head = _pick(acc)
    if head is not None:
        sel = acc[(acc["scope"] == head["scope"]) & (acc["step"] == head["step"])]
        sel = sel.drop_duplicates("bin_index", keep="last")
        order = sorted(sel["bin_index"], key=lambda i: (i < 0, i))
        for bi in order:
            rows.append(_table_row("accuracy", sel[sel["bin_index"] == bi].iloc[0]))
        c = _normalize(curve, CURVE_COLUMNS, "estimand")
        slope = c[(c["estimand"] == "slope") & (c["scope"] == head["scope"])]
        if len(slope):
            slope = slope[slope["attribute"] == "all"] if (slope["attribute"] == "all").any() else slope
            rows.append(_table_row("slope", slope[slope["step"] == slope["step"].max()].iloc[-1]))
    h = _normalize(halluc, HALLUC_COLUMNS, "statistic")
    specs = [
        ("confident_error_rate", ("0",)),
        ("shortest_answer_rate", ("all",)),
        ("shortest_truth_rate", ("all",)),
        ("shortest_chance_rate", ("all",)),
        ("leak_rate", ("all",)),
        ("leak_chance_rate", ("all",)),
        ("leak_excess", ("all",)),
    ]
    for stat, bins in specs:
        r = _pick(_stat_rows(h, stat, bins))
        if r is not None:
            rows.append(_table_row(stat, r))
    for stat in AUROCS + AUROC_DIFFS:
        r = _pick(_stat_rows(h, stat, ("all",)), prefer_bootstrap=True)
        if r is not None:
            rows.append(_table_row(stat, r))
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def _fmt(v: float, lo: float, hi: float, digits: int = 3, sign: bool = False) -> str:
    f = f"{{:{'+' if sign else ''}.{digits}f}}"
    if not math.isfinite(v):
        return "n/a"
    if math.isfinite(lo) and math.isfinite(hi):
        return f"{f.format(v)} [{f.format(lo)}, {f.format(hi)}]"
    return f"{f.format(v)} [no CI]"


def _est(r: pd.Series, sign: bool = False) -> str:
    if r["status"] == "insufficient":
        return f"insufficient (n={r['n_entities']} < {MIN_ENTITIES} persons)"
    return _fmt(r["value"], r["ci_low"], r["ci_high"], sign=sign)


def format_knowledge_table(df: pd.DataFrame) -> str:
    """Human-readable headline lines of :func:`knowledge_table`, e.g.::

        knowledge (panel, step 1000): accuracy 0.412 [0.380, 0.444] (320 persons, 1600 items; chance 0.100,
          popularity prior 0.180)
          by distinct_docs bin: 0 0.100 [0.070, 0.130] n=48 prior 0.180 | ... | 64+ insufficient (n=5 < 10 persons)
          slope +0.520 [+0.400, +0.640] log-odds of correct per doubling of 1 + distinct_docs
          confident errors on zero-exposure persons (bin 0): 0.083 [0.050, 0.110] (48 persons)
          leak rate 0.120 [0.090, 0.150] vs chance 0.050 [0.030, 0.070]
          AUROC for a wrong answer: confidence 0.710 [0.660, 0.760]; exposure 0.800 [0.750, 0.850] (bootstrap)

    Parts without rows are left out; an empty table gives ``"knowledge: no probe rows"``.
    """
    if df is None or not len(df):
        return "knowledge: no probe rows"
    lines = []
    acc = df[df["quantity"] == "accuracy"]
    if len(acc):
        pooled = acc[acc["bin_index"] < 0]
        r0 = pooled.iloc[0] if len(pooled) else acc.iloc[-1]
        head = f"knowledge ({r0['scope']}, step {r0['step']}): "
        if len(pooled):
            r = pooled.iloc[0]
            extras = [f"{r['n_entities']} persons, {r['n_items']} items"]
            if math.isfinite(r["chance"]):
                extras.append(f"chance {r['chance']:.3f}")
            if math.isfinite(r["prior"]):
                extras.append(f"popularity prior {r['prior']:.3f}")
            head += f"accuracy {_est(r)} ({'; '.join(extras)})"
        else:
            head += "accuracy (no pooled row)"
        lines.append(head)
        bins = acc[acc["bin_index"] >= 0]
        if len(bins):
            parts = []
            for _, r in bins.iterrows():
                p = f"{r['bin']} {_est(r)}"
                if r["status"] != "insufficient":
                    p += f" n={r['n_entities']}"
                if math.isfinite(r["prior"]):
                    p += f" prior {r['prior']:.3f}"
                parts.append(p)
            lines.append(f"  by {bins['exposure'].iloc[0] or 'exposure'} bin: " + " | ".join(parts))
    sl = df[df["quantity"] == "slope"]
    if len(sl):
        r = sl.iloc[0]
        exp = r["exposure"] or "exposure"
        lines.append(f"  slope {_est(r, sign=True)} log-odds of correct per doubling of 1 + {exp}")
    by_q = {q: df[df["quantity"] == q].iloc[0] for q in df["quantity"].unique()}
    if "confident_error_rate" in by_q:
        r = by_q["confident_error_rate"]
        lines.append(
            f"  confident errors on zero-exposure persons (bin {r['bin']}, {r['scope']} step {r['step']}): "
            f"{_est(r)} ({r['n_entities']} persons)"
        )
    if "shortest_answer_rate" in by_q:
        r = by_q["shortest_answer_rate"]
        chance, truth = by_q.get("shortest_chance_rate"), by_q.get("shortest_truth_rate")
        base = f" vs {truth['value']:.3f} of the true values" if truth is not None else ""
        base += f" and {chance['value']:.3f} of the candidates" if chance is not None else ""
        lines.append(f"  answers that are a shortest candidate (in tokens): {_est(r)}{base}")
    if "leak_rate" in by_q or "leak_chance_rate" in by_q:
        leak = _est(by_q["leak_rate"]) if "leak_rate" in by_q else "n/a"
        chance = _est(by_q["leak_chance_rate"]) if "leak_chance_rate" in by_q else "n/a"
        excess = f"; excess {_est(by_q['leak_excess'], sign=True)}" if "leak_excess" in by_q else ""
        lines.append(f"  leak rate (wrong answers = a co-mention partner's value) {leak} vs chance {chance}{excess}")
    au = [(q, by_q[q]) for q in AUROCS if q in by_q]
    if au:
        parts = [f"{q[6:]} {_fmt(r['value'], r['ci_low'], r['ci_high'])} ({r['method']}, {r['scope']})" for q, r in au]
        lines.append("  AUROC for a wrong answer: " + "; ".join(parts))
    for q in AUROC_DIFFS:
        if q in by_q:
            r = by_q[q]
            lines.append(f"  {q[6:].replace('_minus_', ' minus ')} AUROC: {_est(r, sign=True)} (paired, {r['method']})")
    return "\n".join(lines) if lines else "knowledge: no probe rows"


# ------------------------------------------------------------------------------------------------------------ report
def _read(run_dir: Path, name: str) -> pd.DataFrame | None:
    try:
        return read_probe(run_dir, name)
    except FileNotFoundError:
        return None


def knowledge_report(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Write the knowledge plots of one run folder and return their paths.

    Reads ``RUN/probes/knowledge_curve.parquet`` (→ ``knowledge_vs_exposure.png``,
    :func:`plot_knowledge_vs_exposure`; ``knowledge_over_training.png``, :func:`plot_knowledge_over_training`)
    and ``RUN/probes/hallucination.parquet`` (→ ``hallucination_auroc.png``, :func:`plot_hallucination_auroc`)
    and writes into ``out_dir`` (default ``RUN/plots``). A missing table skips its plots; a run with neither
    (knowledge probe off) gives ``[]`` and writes nothing. A table without usable rows gives a figure saying so.

    Returns:
        The written PNG paths (0 to 3).
    Raises:
        ValueError: if a table lacks a key column (see the module docstring).
    """
    run = Path(run_dir)
    out = Path(out_dir) if out_dir is not None else run / "plots"
    curve, halluc = _read(run, "knowledge_curve"), _read(run, "hallucination")
    written: list[Path] = []
    if curve is not None:
        written.append(plot_knowledge_vs_exposure(curve, out / PLOT_FILES[0]))
        written.append(plot_knowledge_over_training(curve, out / PLOT_FILES[1]))
    if halluc is not None:
        written.append(plot_hallucination_auroc(halluc, out / PLOT_FILES[2]))
    return written


def knowledge_headline(run_dir: str | Path) -> str:
    """:func:`format_knowledge_table` of the run's ``probes/knowledge_curve.parquet`` and
    ``probes/hallucination.parquet`` (missing tables count as empty); ``"knowledge: no probe rows"`` when the
    run has neither.

    Raises:
        ValueError: if a table lacks a key column.
    """
    run = Path(run_dir)
    return format_knowledge_table(knowledge_table(_read(run, "knowledge_curve"), _read(run, "hallucination")))
