"""Pieces every report shares: a headless pyplot, a run's probe table, saving a figure, a run's name and its
legend label, a training-step x-axis."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

#: The x-axis label of every plot against training step (optimizer steps done).
STEP_LABEL = "training step"


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


def step_axis(ax, steps: Sequence[float] | None = None, label: str = STEP_LABEL, max_ticks: int = 10) -> None:
    """Make ``ax``'s x-axis a training-step axis: symlog scale (step 0 and the log-spaced early probe steps
    both visible), the label ``training step``, the first and last step inside the frame and, when ``steps``
    (the steps drawn, e.g. the probe calls) are given, integer ticks at up to ``max_ticks`` of them (the
    first, the last and log-evenly spread ones between), so every probe call can be read off.

    Args:
        ax: a matplotlib Axes.
        steps: the x values drawn (optimizer steps, any order, repeats allowed), or None (matplotlib's ticks).
        label: the axis label.
        max_ticks: the most tick marks.
    """
    import numpy as np
    from matplotlib.ticker import FixedLocator, NullLocator, StrMethodFormatter

    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlabel(label)
    s = np.unique(np.asarray([] if steps is None else list(steps), dtype=float))
    s = s[np.isfinite(s)]
    if not len(s):
        ax.set_xlim(left=0)
        return
    last = max(float(s.max()), 1.0)
    ax.set_xlim(min(-0.3, float(s.min()) - 0.3), last * 1.3)
    if len(s) > max_ticks:  # log-evenly spread picks, the first and the last always among them
        idx = np.unique(np.round(np.geomspace(1, len(s), max_ticks)).astype(int) - 1)
        s = s[np.unique(np.r_[0, idx, len(s) - 1])]
    ax.xaxis.set_major_locator(FixedLocator(s))
    ax.xaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
    ax.xaxis.set_minor_locator(NullLocator())


def _yaml(path: Path) -> dict:
    import yaml

    try:
        return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}
    except yaml.YAMLError:
        return {}


def run_name(run_dir: str | Path) -> str:
    """A run's name, as its W&B run is named (:func:`densitylab.callbacks.wandb_util.run_identity`):
    ``<experiment>-<model>-s<seed>`` (e.g. ``smoke-tiny-s0``; ``-<job number>`` appended for a job of a Hydra
    multirun), from what the run folder holds; the folder's own name when it holds none of it.

    In this order: ``run_name`` of ``summary.json`` (the name the run used), the config's ``logger.wandb.name`` or
    ``run_name`` (``.hydra/config.yaml``, else ``hparams.yaml``) when set to a value (not null, not an unresolved
    ``${...}``), else ``experiment_name`` (``summary.json``'s ``experiment`` when the config lacks it), the ``model``
    config group choice (``.hydra/hydra.yaml``'s ``hydra.runtime.choices``; else ``{n_layer}x{n_embd}`` of
    ``model.net``) and ``seed``, joined as ``<experiment>-<model>-s<seed>``, plus ``-<hydra.job.num>`` when
    ``hydra.mode`` is ``MULTIRUN``. Never a timestamp: the folder name is the last resort (a folder without config).
    """
    run = Path(run_dir)
    try:
        summary = json.loads((run / "summary.json").read_text()) if (run / "summary.json").is_file() else {}
    except (json.JSONDecodeError, OSError):
        summary = {}
    if isinstance(summary.get("run_name"), str) and summary["run_name"]:
        return summary["run_name"]
    cfg = _yaml(run / ".hydra" / "config.yaml") or _yaml(run / "hparams.yaml")
    wandb_name = ((cfg.get("logger") or {}).get("wandb") or {}).get("name")
    for name in (wandb_name, cfg.get("run_name")):
        if isinstance(name, str) and name and "${" not in name:
            return name
    hydra = _yaml(run / ".hydra" / "hydra.yaml").get("hydra") or {}
    choices = (hydra.get("runtime") or {}).get("choices") or {}
    experiment = cfg.get("experiment_name") or summary.get("experiment")
    if not experiment or cfg.get("seed") is None:
        return run.name
    model = choices.get("model")
    if not model:
        net = (cfg.get("model") or {}).get("net") or {}
        model = f"{net.get('n_layer', '?')}x{net.get('n_embd', '?')}"
    name = f"{experiment}-{model}-s{cfg['seed']}"
    num = (hydra.get("job") or {}).get("num")
    if hydra.get("mode") == "MULTIRUN" and isinstance(num, int):
        name += f"-{num}"
    return name


def run_labels(run_dirs: Sequence[str | Path], folders: Sequence[str] | None = None) -> list[str]:
    """Legend labels of ``run_dirs``: each run's :func:`run_name`, with `` [folder]`` appended only to names
    that more than one run has (``folders``: the folder names to append, default each path relative to the
    runs' common parent). Runs with one name and one folder stay apart by their folder, never by a timestamp
    the report makes up."""
    paths = [Path(p) for p in run_dirs]
    names = [run_name(p) for p in paths]
    if folders is None:
        folders = common_relative(paths)
    counts = pd.Series(names).value_counts()
    return [f"{n} [{f}]" if counts[n] > 1 else n for n, f in zip(names, folders)]


def common_relative(paths: Sequence[str | Path]) -> list[str]:
    """Each of ``paths`` relative to their deepest common folder (a lone path: its own name)."""
    res = [Path(p).resolve() for p in paths]
    if len(res) == 1:
        return [res[0].name]
    root = Path(os.path.commonpath([str(p) for p in res]))
    return [p.relative_to(root).as_posix() if p != root else p.name for p in res]
