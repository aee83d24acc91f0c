"""Exposure-ledger plot: the rank-frequency (Zipf) plot of ``ledger/*.parquet`` (no W&B needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from densitylab.report.common import pyplot, save_figure


def plot_rank_frequency(tables: dict[str, pd.DataFrame], path: str | Path, step: int | None = None) -> Path:
    """Log-log rank-frequency plot of token and entity exposure counts (Zipf's law check; Zipf 1949),
    written atomically to ``path`` (``plots/ledger_zipf.png`` in a run folder).

    Args:
        tables: :func:`~densitylab.ledger.ledger_tables` output; reads ``tokens["count"]`` (input positions
            per token id) and ``entities["mentions"]`` (mentions per entity); zero counts are left out.
        path: the image file (its folder is created).
        step: training step for the title (None: no step in the title).

    Returns:
        ``path``.
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=120)
    for name, col, label in (
        ("tokens", "count", "tokens (input positions)"),
        ("entities", "mentions", "entities (mentions)"),
    ):
        c = np.sort(tables[name][col].to_numpy())[::-1]
        c = c[c > 0]
        if len(c):
            ax.loglog(np.arange(1, len(c) + 1), c, label=f"{label}: {len(c)} seen")
    ax.set_xlabel("rank (1 = most exposed)")
    ax.set_ylabel("exposures (input positions or mentions)")
    ax.set_title("Exposure rank-frequency" + (f" at step {step}" if step is not None else ""))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, path)
