"""Memorization plot from ``probes/memorization.parquet`` (no W&B needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from densitylab.report.common import pyplot, read_probe, save_figure, step_axis


def by_group(df: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Per (step, repetitions): mean memorized bits per canary with a t-interval over canaries,
    total bits, extractable fraction and n (canaries)."""
    rows = []
    for (step, rep), g in df.groupby(["step", "repetitions"]):
        x = g["mem_bits"].to_numpy(dtype=float)
        n = len(x)
        half = stats.t.ppf(0.5 + level / 2, n - 1) * x.std(ddof=1) / np.sqrt(n) if n > 1 else np.nan
        rows.append(
            {
                "step": int(step),
                "repetitions": int(rep),
                "bits_mean": x.mean(),
                "ci_low": x.mean() - half,
                "ci_high": x.mean() + half,
                "bits_total": x.sum(),
                "max_bits": float(g["max_bits"].mean()),
                "extractable_frac": float(g["extractable"].mean()),
                "n": n,
            }
        )
    return pd.DataFrame(rows)


def plot_memorization(run_dir: str | Path, path: str | Path | None = None) -> Path:
    """Write ``plots/memorization_over_training.png``: memorized bits per canary (mean, 95% CI over
    canaries) against training step, one line per repetition count, with the maximum (S−1)·log2 A
    dashed; and the (32, 32)-extractable fraction per repetition count.

    Raises:
        FileNotFoundError: if the run has no ``probes/memorization.parquet``.
    """
    plt = pyplot()
    run = Path(run_dir)
    g = by_group(read_probe(run, "memorization"))
    reps = sorted(g["repetitions"].unique())
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(reps)))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    for rep, c in zip(reps, colors):
        s = g[g["repetitions"] == rep].sort_values("step")
        label = f"{rep}x (n={int(s['n'].iloc[0])})"
        a1.plot(s["step"], s["bits_mean"], marker="o", ms=3, color=c, label=label)
        a1.fill_between(s["step"], s["ci_low"], s["ci_high"], color=c, alpha=0.2, linewidth=0)
        a2.plot(s["step"], s["extractable_frac"], marker="o", ms=3, color=c, label=label)
    a1.axhline(g["max_bits"].max(), color="k", linestyle="--", linewidth=0.8, label="(S-1) log2 A")
    last = g[g["step"] == g["step"].max()]
    a1.set_title(
        f"Memorized bits per canary (total at step {int(last['step'].iloc[0])}: {last['bits_total'].sum():,.0f} bits)",
        fontsize=9,
    )
    a2.set_title("(32,32)-extractable fraction", fontsize=9)
    for ax, yl in ((a1, "bits per canary (mean, 95% CI)"), (a2, "fraction of canaries")):
        step_axis(ax, g["step"])
        ax.set_ylabel(yl)
        ax.grid(alpha=0.3)
    a2.set_ylim(-0.02, 1.02)
    a1.set_ylim(-0.02 * g["max_bits"].max(), 1.06 * g["max_bits"].max())
    a1.legend(fontsize=7, title="inserted", title_fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path or run / "plots" / "memorization_over_training.png")
