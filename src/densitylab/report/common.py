"""Pieces every report shares: a headless pyplot, a run's probe table, saving a figure."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_probe(run_dir: str | Path, name: str) -> pd.DataFrame:
    """``RUN_DIR/probes/{name}.parquet`` as a DataFrame.

    Raises:
        FileNotFoundError: if the run has no such table (the probe was off).
    """
    f = Path(run_dir) / "probes" / f"{name}.parquet"
    if not f.is_file():
        raise FileNotFoundError(f"{str(f)!r} does not exist: expected a run with the {name} probe")
    return pd.read_parquet(f)


def save_figure(fig, path: str | Path) -> Path:
    """Save ``fig`` to ``path`` (creating its folder), close it, return the path.

    The write is atomic (a temporary file in the same folder, then a rename), so a reader never sees half
    an image; the format comes from the suffix (``.png`` when there is none).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        fig.savefig(tmp, format=path.suffix[1:] or "png")
        os.replace(tmp, path)
    finally:
        pyplot().close(fig)
        tmp.unlink(missing_ok=True)
    return path
