"""Density plots and across-seed aggregation from run folders (no W&B needed)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from densitylab.report.common import pyplot, save_figure

SET_ORDER = ("seen", "heldout", "unfamiliar_entities", "shuffled", "random")
KEYS = ["step", "layer", "probe_set", "view", "bucket", "metric"]


def find_runs(paths: list[str | Path]) -> list[Path]:
    """Run folders among ``paths``: each path that holds ``probes/density.parquet``, or every folder
    below it that does (a Hydra multirun folder).

    Raises:
        FileNotFoundError: if a path does not exist or holds no run with density probes.
    """
    runs: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"{str(p)!r} does not exist: expected a run folder or a multirun folder")
        if (p / "probes" / "density.parquet").is_file():
            runs.append(p)
            continue
        found = sorted(f.parent.parent for f in p.rglob("probes/density.parquet"))
        if not found:
            raise FileNotFoundError(
                f"{str(p)!r} holds no probes/density.parquet: expected a run folder of train.py with density probes"
            )
        runs.extend(found)
    return runs


def aggregate_runs(frames: list[pd.DataFrame], level: float = 0.95) -> pd.DataFrame:
    """Mean ± CI across runs (seeds) of every density row.

    With one run its own within-run CI is kept. With several, value = mean over runs, CI = t interval
    of the per-run values (``n_runs - 1`` degrees of freedom), ``n_runs`` = runs contributing. Runs may
    differ in steps, buckets or sets: a row is averaged over the runs that have it. A ``gap`` compares each
    run's own most familiar bucket, which can differ between runs, so its rows are pooled with ``bucket`` -1.
    """
    if len(frames) == 1:
        return frames[0].assign(n_runs=1)
    df = pd.concat([f.assign(run=i) for i, f in enumerate(frames)], ignore_index=True)
    df.loc[df["metric"] == "gap", "bucket"] = -1
    g = df.groupby(KEYS, sort=False)["value"]
    out = g.agg(value="mean", sd="std", n_runs="count").reset_index()
    t = stats.t.ppf(0.5 + level / 2, (out["n_runs"] - 1).clip(lower=1))
    half = np.where(out["n_runs"] >= 2, t * out["sd"] / np.sqrt(out["n_runs"]), np.inf)
    out["ci_low"], out["ci_high"] = out["value"] - half, out["value"] + half
    n = df.groupby(KEYS, sort=False)["n"].sum().reset_index(drop=True)
    out["n"] = n.to_numpy()
    return out.drop(columns="sd")


def primary_view(df: pd.DataFrame) -> str:
    """``entity`` when the seen set has entity-view rows (synthetic data), else ``token``."""
    return "entity" if ((df["probe_set"] == "seen") & (df["view"] == "entity")).any() else "token"


def _finite_band(ax, x, lo, hi, color):
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    ok = np.isfinite(lo) & np.isfinite(hi)
    if ok.any():
        ax.fill_between(np.asarray(x)[ok], lo[ok], hi[ok], color=color, alpha=0.2, linewidth=0)


def plot_over_training(df: pd.DataFrame, path: Path, metric: str = "active_frac", title: str = "") -> None:
    """Per layer, ``metric`` (whole probe set) against step, one line per probe set with its CI band."""
    plt = pyplot()
    sel = df[(df["view"] == "all") & (df["metric"] == metric)]
    layers = sorted(sel["layer"].unique())
    fig, axes = plt.subplots(1, len(layers), figsize=(3.6 * len(layers), 3.4), dpi=110, sharey=True, squeeze=False)
    colors = dict(zip(SET_ORDER, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for ax, layer in zip(axes[0], layers):
        for name in [s for s in SET_ORDER if s in set(sel["probe_set"])]:
            d = sel[(sel["layer"] == layer) & (sel["probe_set"] == name)].sort_values("step")
            ax.plot(d["step"], d["value"], marker=".", color=colors[name], label=name)
            _finite_band(ax, d["step"], d["ci_low"], d["ci_high"], colors[name])
        ax.set_xscale("symlog", linthresh=1)
        ax.set_title(f"layer {layer}")
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(metric)
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(title or f"{metric} over training (95% CI)")
    fig.tight_layout()
    save_figure(fig, path)


def plot_vs_familiarity(
    df: pd.DataFrame, path: Path, metric: str = "active_frac", n_steps: int = 4, title: str = ""
) -> None:
    """Per layer, ``metric`` on ``seen`` windows against familiarity bucket (primary view) at up to
    ``n_steps`` steps (log-spaced picks), with CI bands; the unfamiliar reference as a dashed line."""
    plt = pyplot()
    view = primary_view(df)
    sel = df[(df["probe_set"] == "seen") & (df["view"] == view) & (df["metric"] == metric)]
    steps = np.array(sorted(sel["step"].unique()))
    if len(steps) > n_steps:
        idx = np.unique(np.round(np.geomspace(1, len(steps), n_steps)).astype(int) - 1)
        steps = steps[idx]
    if view == "entity":
        ref = df[
            (df["probe_set"] == "unfamiliar_entities")
            & (df["view"] == "entity")
            & (df["bucket"] == 0)
            & (df["metric"] == metric)
        ]
        ref_label = "unfamiliar entities"
    else:
        ref = df[(df["probe_set"] == "random") & (df["view"] == "all") & (df["metric"] == metric)]
        ref_label = "random tokens"
    layers = sorted(sel["layer"].unique())
    fig, axes = plt.subplots(1, len(layers), figsize=(3.6 * len(layers), 3.4), dpi=110, sharey=True, squeeze=False)
    cmap = plt.get_cmap("viridis")
    for ax, layer in zip(axes[0], layers):
        for j, step in enumerate(steps):
            c = cmap(j / max(len(steps) - 1, 1))
            d = sel[(sel["layer"] == layer) & (sel["step"] == step)].sort_values("bucket")
            ax.plot(d["bucket"], d["value"], marker="o", ms=3, color=c, label=f"step {step}")
            _finite_band(ax, d["bucket"], d["ci_low"], d["ci_high"], c)
            r = ref[(ref["layer"] == layer) & (ref["step"] == step)]
            if len(r):
                ax.axhline(float(r["value"].iloc[0]), color=c, linestyle="--", linewidth=0.8)
        ax.set_title(f"layer {layer}")
        ax.set_xlabel(f"bucket = floor(log2(1 + {view} exposures))")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"{metric} (seen windows)")
    axes[0][-1].legend(fontsize=7, title=f"dashed: {ref_label}", title_fontsize=7)
    fig.suptitle(title or f"{metric} against familiarity (95% CI)")
    fig.tight_layout()
    save_figure(fig, path)


def heatmap_active_frac_seen(rows: pd.DataFrame, step: int, view: str):
    """Heatmap of ``active_frac`` on the ``seen`` probe set, layer × familiarity bucket, at one probe step
    (the ``density/heatmap_active_frac_seen`` W&B image).

    Args:
        rows: one probe call's density records (:func:`~densitylab.probes.density.density_records`).
        step: the training step of those records (for the title).
        view: the familiarity view of the buckets (``entity`` or ``token``; see :func:`primary_view`).

    Returns:
        A matplotlib Figure (Agg backend); the caller closes it.
    """
    plt = pyplot()
    sel = rows[(rows["probe_set"] == "seen") & (rows["view"] == view) & (rows["metric"] == "active_frac")]
    grid = sel.pivot(index="layer", columns="bucket", values="value")
    fig, ax = plt.subplots(figsize=(6, 3), dpi=100)
    im = ax.imshow(grid.to_numpy(), aspect="auto", cmap="viridis")
    ax.set_xticks(range(grid.shape[1]), [str(b) for b in grid.columns])
    ax.set_yticks(range(grid.shape[0]), [f"L{i}" for i in grid.index])
    ax.set_xlabel(f"familiarity bucket floor(log2(1+{view} exposures))")
    ax.set_title(f"active_frac on seen windows, step {step}")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    return fig


def headline_table(df: pd.DataFrame) -> pd.DataFrame:
    """Slope (primary view) and gap per layer, with CIs, at the last step every run reached (runs of different
    lengths: the shortest run's final step; one row per layer)."""
    view = primary_view(df)
    headline = df[df["metric"].isin(["slope", "gap"])]
    if "n_runs" in headline and len(headline):
        full = headline[headline["n_runs"] == headline["n_runs"].max()]
        step = int(full["step"].max()) if len(full) else int(headline["step"].max())
    else:
        step = int(df["step"].max())
    last = df[df["step"] == step]
    slope = last[(last["metric"] == "slope") & (last["view"] == view)].drop_duplicates("layer")
    gap = last[last["metric"] == "gap"].drop_duplicates("layer")
    cols = ["layer", "value", "ci_low", "ci_high"]
    out = (
        slope[cols]
        .rename(columns={"value": "slope", "ci_low": "slope_ci_low", "ci_high": "slope_ci_high"})
        .merge(
            gap[cols].rename(columns={"value": "gap", "ci_low": "gap_ci_low", "ci_high": "gap_ci_high"}),
            on="layer",
            how="outer",
        )
    )
    out.insert(1, "view", view)
    out.insert(2, "step", step)
    if "n_runs" in slope:
        out = out.merge(slope[["layer", "n_runs"]], on="layer", how="left")
    return out.sort_values("layer", ignore_index=True)


def density_report(paths: list[str | Path], out_dir: str | Path | None = None) -> tuple[Path, pd.DataFrame]:
    """Write ``density_over_training.png``, ``density_vs_familiarity.png`` and ``density_headline.csv``.

    One run: into ``RUN/plots/``. Several runs (seeds, or a multirun folder): mean ± CI across runs,
    into ``out_dir`` (default: ``<first path>/report`` for a multirun folder, else
    ``<common parent>/report``).

    Returns:
        ``(output folder, headline table)``.
    Raises:
        FileNotFoundError: see :func:`find_runs`.
    """
    runs = find_runs(paths)
    frames = [pd.read_parquet(r / "probes" / "density.parquet") for r in runs]
    df = aggregate_runs(frames)
    if out_dir is None:
        if len(runs) == 1:
            out_dir = runs[0] / "plots"
        else:
            common = Path(*Path(runs[0]).parts[: min(len(Path(r).parts) for r in runs)])
            while not all(str(r).startswith(str(common)) for r in runs):
                common = common.parent
            out_dir = common / "report"
    out = Path(out_dir)
    n = f"{len(runs)} runs, mean ± 95% CI across runs" if len(runs) > 1 else "95% CI over windows"
    plot_over_training(df, out / "density_over_training.png", title=f"active_frac over training ({n})")
    plot_vs_familiarity(df, out / "density_vs_familiarity.png", title=f"active_frac against familiarity ({n})")
    table = headline_table(df)
    table.to_csv(out / "density_headline.csv", index=False)
    return out, table


def format_table(table: pd.DataFrame) -> str:
    """Human-readable headline lines."""
    lines = []
    for r in table.itertuples():

        def ci(v, lo, hi):
            return (
                f"{v:+.4f} [{lo:+.4f}, {hi:+.4f}]" if math.isfinite(lo) and math.isfinite(hi) else f"{v:+.4f} [no CI]"
            )

        lines.append(
            f"layer {r.layer}: slope ({r.view}) {ci(r.slope, r.slope_ci_low, r.slope_ci_high)}   "
            f"gap {ci(r.gap, r.gap_ci_low, r.gap_ci_high)}"
        )
    return "\n".join(lines)
