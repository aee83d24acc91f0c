"""Modularity plot and table from ``probes/modularity.parquet`` and ``probes/modularity_v2.parquet`` (no W&B
needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from densitylab.probes.modularity import Component, modularity_summary
from densitylab.report.common import pyplot, read_probe, save_figure, step_axis


def scores_by_step(df: pd.DataFrame, eps: float = 1e-3) -> pd.DataFrame:
    """Recompute score / score_heads / score_mlp for every step of a modularity table (step -1 is the
    untrained control)."""
    out = []
    for step, g in df.groupby("step"):
        E = g.pivot_table(index=["kind", "layer", "index"], columns="task", values="delta_loss", sort=True)
        comps = [Component(k, int(l), int(i)) for k, l, i in E.index]
        out.append({"step": int(step), **modularity_summary(comps, E.to_numpy(), eps)})
    return pd.DataFrame(out)


def ablation_heatmap(comps: list[Component], E: np.ndarray, tasks: list[str], step: int, limit: float | None = None):
    """Heatmap of one ablation sweep: Δloss (nats) on each task (columns) when each component (rows)
    is mean-ablated (Lepori et al., arXiv:2301.10884); the ``modularity/heatmap`` W&B image.

    Args:
        comps: the C ablated components, in the row order of ``E``.
        E: (C, K) loss changes in nats, component × task.
        tasks: the K task names, in the column order of ``E``.
        step: training step of the sweep; negative for the untrained control.
        limit: the colour scale runs from ``-limit`` to ``+limit`` nats (None: the largest ``|E|`` of this sweep); one
            fixed limit for a whole run makes the colours of its steps comparable.

    Returns:
        A matplotlib Figure (Agg backend); the caller closes it.
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * len(tasks), 1 + 0.22 * len(comps)), dpi=100)
    lim = float(limit) if limit else (float(np.abs(E).max()) or 1.0)
    im = ax.imshow(E, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim)
    ax.set_yticks(range(len(comps)), [c.name for c in comps], fontsize=6)
    ax.set_xticks(range(len(tasks)), tasks, rotation=45, ha="right", fontsize=7)
    ax.set_xlabel("task", fontsize=7)
    ax.set_ylabel("ablated component", fontsize=7)
    ax.set_title(f"Δloss (nats) when ablated, {'init control' if step < 0 else f'step {step}'}", fontsize=8)
    fig.colorbar(im, ax=ax, label="Δloss (nats/token)")
    fig.tight_layout()
    return fig


def v2_by_step(run_dir: str | Path) -> pd.DataFrame | None:
    """``probes/modularity_v2.parquet`` of a run sorted by step (step -1 = the untrained control), or None when
    the run has no v2 table (v2 off, or a run from before v2)."""
    f = Path(run_dir) / "probes" / "modularity_v2.parquet"
    return pd.read_parquet(f).sort_values("step", ignore_index=True) if f.is_file() else None


def modularity_table(run_dir: str | Path, eps: float = 1e-3) -> pd.DataFrame:
    """One row per probe step: v1's ``score_v1`` / ``score_heads`` / ``score_mlp`` (recomputed from
    ``probes/modularity.parquet``) beside v2's ``score_v2``, ``null_mean``, ``null_lo``, ``null_hi``,
    ``excess`` and ``p_perm`` (NaN at steps without v2); step -1 is the untrained control.

    Raises:
        FileNotFoundError: if the run has no ``probes/modularity.parquet``.
    """
    s = scores_by_step(read_probe(run_dir, "modularity"), eps).rename(columns={"score": "score_v1"})
    s = s[["step", "score_v1", "score_heads", "score_mlp"]]
    v2 = v2_by_step(run_dir)
    cols = ["score_v2", "null_mean", "null_lo", "null_hi", "excess", "p_perm"]
    if v2 is None:
        return s.assign(**{c: np.nan for c in cols})
    return s.merge(v2[["step", *cols]], on="step", how="outer").sort_values("step", ignore_index=True)


def plot_modularity(run_dir: str | Path, path: str | Path | None = None) -> Path:
    """Write ``plots/modularity_over_training.png``: v1's modularity scores against training step (ticks at the
    probe steps, :func:`~densitylab.report.common.step_axis`), the untrained control as dashed lines; with a
    ``probes/modularity_v2.parquet``, a second panel with ``score_v2`` at its
    steps, its permutation null (mean and 2.5-97.5% quantiles as error bars), ``score_v1`` for comparison and
    the control's score_v2 (dotted).

    Raises:
        FileNotFoundError: if the run has no ``probes/modularity.parquet``.
    """
    plt = pyplot()
    run = Path(run_dir)
    s = scores_by_step(read_probe(run, "modularity"))
    v2 = v2_by_step(run)
    trained, control = s[s["step"] >= 0], s[s["step"] < 0]
    if v2 is None:
        fig, ax = plt.subplots(figsize=(6, 3.8), dpi=110)
        axes = [ax]
    else:
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), dpi=110, sharey=True)
        ax = axes[0]
    for col, c in (("score", "k"), ("score_heads", "tab:blue"), ("score_mlp", "tab:orange")):
        label = "modularity v1" if col == "score" else col.replace("score", "modularity")
        ax.plot(trained["step"], trained[col], marker="o", ms=3, color=c, label=label)
        if len(control) and np.isfinite(control[col].iloc[0]):
            ax.axhline(control[col].iloc[0], color=c, linestyle="--", linewidth=0.8)
    ax.set_title("Modularity v1 under mean-ablation (dashed: untrained control)", fontsize=9)
    ax.set_ylabel("mean specialization (0-1)")
    if v2 is not None:
        ax2 = axes[1]
        t2, c2 = v2[v2["step"] >= 0], v2[v2["step"] < 0]
        err = [t2["null_mean"] - t2["null_lo"], t2["null_hi"] - t2["null_mean"]]  # per step: no interpolation
        ax2.errorbar(t2["step"], t2["null_mean"], yerr=err, fmt="s", ms=4, color="tab:gray", capsize=3,
                     label="permutation null: mean, 2.5-97.5%")  # fmt: skip
        ax2.plot(t2["step"], t2["score_v2"], color="tab:red", marker="o", ms=4, label="score_v2")
        ax2.plot(trained["step"], trained["score"], color="k", marker="o", ms=3, alpha=0.5, label="score_v1")
        if len(c2) and np.isfinite(c2["score_v2"].iloc[0]):
            ax2.axhline(c2["score_v2"].iloc[0], color="tab:red", linestyle=":", linewidth=0.8, label="control v2")
        ax2.set_title("v2: attribution groups, normalised, effect-weighted, vs permutation null", fontsize=9)
        ax2.set_ylabel("effect-weighted specialization (0-1)")
        ax2.yaxis.set_tick_params(labelleft=True)
    steps = sorted(set(trained["step"]) | (set(v2.loc[v2["step"] >= 0, "step"]) if v2 is not None else set()))
    for a in axes:
        step_axis(a, steps)  # ticks at the probe steps, the first and the last inside the frame
        a.set_ylim(0, 1)
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path or run / "plots" / "modularity_over_training.png")
