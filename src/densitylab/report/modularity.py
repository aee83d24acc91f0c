"""Modularity plot from ``probes/modularity.parquet`` (no W&B needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from densitylab.probes.modularity import Component, modularity_summary
from densitylab.report.common import pyplot, read_probe, save_figure


def scores_by_step(df: pd.DataFrame, eps: float = 1e-3) -> pd.DataFrame:
    """Recompute score / score_heads / score_mlp for every step of a modularity table (step -1 is the
    untrained control)."""
    out = []
    for step, g in df.groupby("step"):
        E = g.pivot_table(index=["kind", "layer", "index"], columns="task", values="delta_loss", sort=True)
        comps = [Component(k, int(l), int(i)) for k, l, i in E.index]
        out.append({"step": int(step), **modularity_summary(comps, E.to_numpy(), eps)})
    return pd.DataFrame(out)


def ablation_heatmap(comps: list[Component], E: np.ndarray, tasks: list[str], step: int):
    """Heatmap of one ablation sweep: Δloss (nats) on each task (columns) when each component (rows)
    is mean-ablated (Lepori et al., arXiv:2301.10884); the ``modularity/heatmap`` W&B image.

    Args:
        comps: the C ablated components, in the row order of ``E``.
        E: (C, K) loss changes in nats, component × task.
        tasks: the K task names, in the column order of ``E``.
        step: training step of the sweep; negative for the untrained control.

    Returns:
        A matplotlib Figure (Agg backend); the caller closes it.
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * len(tasks), 1 + 0.22 * len(comps)), dpi=100)
    lim = float(np.abs(E).max()) or 1.0
    im = ax.imshow(E, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim)
    ax.set_yticks(range(len(comps)), [c.name for c in comps], fontsize=6)
    ax.set_xticks(range(len(tasks)), tasks, rotation=45, ha="right", fontsize=7)
    ax.set_title(f"Δloss (nats) when ablated, {'init control' if step < 0 else f'step {step}'}", fontsize=8)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    return fig


def plot_modularity(run_dir: str | Path, path: str | Path | None = None) -> Path:
    """Write ``plots/modularity_over_training.png``: modularity scores against step, the untrained
    control as dashed lines.

    Raises:
        FileNotFoundError: if the run has no ``probes/modularity.parquet``.
    """
    plt = pyplot()
    run = Path(run_dir)
    s = scores_by_step(read_probe(run, "modularity"))
    trained, control = s[s["step"] >= 0], s[s["step"] < 0]
    fig, ax = plt.subplots(figsize=(6, 3.8), dpi=110)
    for col, c in (("score", "k"), ("score_heads", "tab:blue"), ("score_mlp", "tab:orange")):
        ax.plot(trained["step"], trained[col], marker="o", ms=3, color=c, label=col.replace("score", "modularity"))
        if len(control) and np.isfinite(control[col].iloc[0]):
            ax.axhline(control[col].iloc[0], color=c, linestyle="--", linewidth=0.8)
    ax.set_xscale("symlog", linthresh=1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("training step")
    ax.set_ylabel("mean specialization")
    ax.set_title("Modularity under mean-ablation (dashed: untrained control)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path or run / "plots" / "modularity_over_training.png")
