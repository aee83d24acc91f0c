"""The capacity report: memorized bits against dataset size per model, each model's capacity (the
plateau), and bits per parameter α across models (Morris et al., "How much do language models
memorize?", arXiv:2505.24832: α ≈ 3.83 in fp32, 3.51 in bf16, their Table 1).

Input: the run folders of a ``experiment=capacity`` multirun (``summary.json`` of each).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import optimize, stats

from densitylab.report.common import pyplot, save_figure


def saturating(n_bits: np.ndarray, capacity: float, k: float) -> np.ndarray:
    """Memorized bits of a model of capacity C on a dataset holding ``n_bits`` bits:
    M = C · (1 − exp(−k · n_bits / C)). k = 1 means every bit is memorized while the dataset is
    small (slope 1 at the origin); the curve approaches C once the dataset far exceeds it."""
    return capacity * -np.expm1(-k * n_bits / capacity)


def fit_plateau(dataset_bits: np.ndarray, memorized: np.ndarray, limited: np.ndarray | None = None) -> dict:
    """Fit one model's capacity: the plateau of memorized bits over dataset size.

    Least squares (relative residuals, so small datasets count as much as large ones) of
    :func:`saturating` with C > 0 and 0 < k <= 1.5, over the points :func:`converged_points` keeps.

    Args:
        dataset_bits: (n,) information content of each dataset, N·(S−1)·log2 A bits.
        memorized: (n,) total memorized bits measured on it.
        limited: (n,) bool, True where the run stopped at its step limit rather than on the plateau
            (None: treat every run as possibly unconverged).
    Returns:
        dict with ``capacity_bits`` (C), ``capacity_ci_low`` / ``capacity_ci_high`` (95%, from the
        fit's covariance), ``k``, ``max_memorized`` (largest measurement), ``points`` (used) and
        ``points_dropped`` (unconverged, see :func:`converged_points`), and ``saturated``: True
        when the largest dataset holds at least 1.5·C bits and its memorized bits are within 15% of
        C (the grid reached the plateau; otherwise C is an extrapolation, read it with care). With
        fewer than 3 converged points every point is fitted and ``saturated`` is False.
    Raises:
        ValueError: with fewer than 3 points or no positive measurement.
    """
    x_all, y_all = np.asarray(dataset_bits, dtype=float), np.asarray(memorized, dtype=float)
    order = np.argsort(x_all, kind="stable")
    x_all, y_all = x_all[order], y_all[order]
    lim = None if limited is None else np.asarray(limited, dtype=bool)[order]
    if len(x_all) < 3 or not (y_all > 0).any():
        raise ValueError(
            f"{len(x_all)} points with max memorized {y_all.max() if len(y_all) else 'n/a'} bits: "
            "expected >= 3 dataset sizes and some memorization"
        )
    keep = converged_points(y_all, lim)
    too_few = int(keep.sum()) < 3
    if too_few:  # fit them all, but never call the result saturated
        keep = np.ones_like(keep)
    x, y = x_all[keep], y_all[keep]
    y_max = float(y_all.max())
    w = 1.0 / np.maximum(y, 0.02 * y_max)

    def resid(p):
        return (saturating(x, p[0], p[1]) - y) * w

    res = optimize.least_squares(resid, x0=[y_max * 1.1, 0.8], bounds=([1e-9, 1e-6], [np.inf, 1.5]))
    c, k = res.x
    try:
        jac = res.jac
        dof = max(len(x) - 2, 1)
        cov = np.linalg.pinv(jac.T @ jac) * (2 * res.cost / dof)
        se = float(np.sqrt(max(cov[0, 0], 0.0)))
    except np.linalg.LinAlgError:  # pragma: no cover - degenerate Jacobian
        se = float("nan")
    t = stats.t.ppf(0.975, max(len(x) - 2, 1))
    saturated = bool(x[-1] >= 1.5 * c and y[-1] >= 0.85 * c) and not too_few
    return {
        "capacity_bits": float(c),
        "capacity_ci_low": float(c - t * se),
        "capacity_ci_high": float(c + t * se),
        "k": float(k),
        "max_memorized": y_max,
        "saturated": saturated,
        "points": int(len(x)),
        "points_dropped": int((~keep).sum()),
        "dropped_dataset_bits": x_all[~keep].tolist(),
    }


def converged_points(memorized: np.ndarray, limited: np.ndarray | None = None, tolerance: float = 0.1) -> np.ndarray:
    """Mask of the points (sorted by dataset size) that can be on a converged curve: a model trained to
    convergence never memorizes fewer bits of a larger uniform dataset (the curve rises, then stays
    flat at capacity; Morris et al. Fig. 2), so a point more than ``tolerance`` below the largest
    value at a smaller dataset size, and that stopped at the step limit (``limited``; None = any
    run), has not converged and is left out of the fit. A run that stopped on its own plateau is
    kept even when lower: that is the model's converged value."""
    y = np.asarray(memorized, dtype=float)
    prev_max = np.maximum.accumulate(np.concatenate([[-np.inf], y[:-1]]))
    low = y < (1 - tolerance) * prev_max
    return ~low if limited is None else ~(low & np.asarray(limited, dtype=bool))


def fit_alpha(capacity_bits: np.ndarray, params: np.ndarray, level: float = 0.95) -> dict:
    """Bits per parameter across models.

    ``alpha`` = mean over models of C_i / P_i with a t-interval across models (the models are the
    replicates; :func:`capacity_report` passes only the models whose grid reached the plateau);
    ``alpha_through_origin`` = least-squares slope of C on P through the origin
    (weighted towards the larger models) with its own t-interval.

    Raises:
        ValueError: with fewer than 2 models.
    """
    c, p = np.asarray(capacity_bits, dtype=float), np.asarray(params, dtype=float)
    if len(c) < 2:
        raise ValueError(f"{len(c)} model(s): expected >= 2 to fit bits per parameter with a CI")
    r = c / p
    n = len(r)
    t = stats.t.ppf(0.5 + level / 2, n - 1)
    half = t * r.std(ddof=1) / math.sqrt(n)
    slope = float((c * p).sum() / (p * p).sum())
    resid = c - slope * p
    se = math.sqrt((resid**2).sum() / (n - 1) / (p * p).sum())
    return {
        "alpha": float(r.mean()),
        "alpha_ci_low": float(r.mean() - half),
        "alpha_ci_high": float(r.mean() + half),
        "alpha_through_origin": slope,
        "alpha_through_origin_ci_low": slope - t * se,
        "alpha_through_origin_ci_high": slope + t * se,
        "models": n,
    }


def load_capacity_runs(paths: list[str | Path]) -> pd.DataFrame:
    """One row per finished capacity run below ``paths`` (``summary.json`` with memorization
    numbers and ``data/n_sequences``): run, params, precision, n_sequences, dataset_bits,
    memorized_bits, bits_per_param, stopped_by, epochs, wall_time_s, val_loss, ln_A.

    Raises:
        FileNotFoundError: if a path does not exist or no capacity run is found.
    """
    rows = []
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"{str(p)!r} does not exist: expected a capacity multirun folder or run folders")
        for f in sorted([p / "summary.json"] if (p / "summary.json").is_file() else p.rglob("summary.json")):
            s = json.loads(f.read_text())
            if "data/n_sequences" not in s or "memorization/bits_total" not in s:
                continue
            rows.append(
                {
                    "run": str(f.parent),
                    "params": int(s["model/params"]),
                    "precision": s.get("precision"),
                    "n_sequences": int(s["data/n_sequences"]),
                    "dataset_bits": float(s["data/entropy_bits"]),
                    "memorized_bits": float(s["memorization/bits_total"]),
                    "bits_per_param": float(s["memorization/bits_total"]) / int(s["model/params"]),
                    "stopped_by": s.get("memorization/stopped_by"),
                    "epochs": s.get("epochs"),
                    "steps": s.get("global_step"),
                    "wall_time_s": s.get("wall_time_s"),
                    "val_loss": s.get("val/loss"),
                    "ln_A": s.get("data/unigram_entropy_nats"),
                }
            )
    if not rows:
        raise FileNotFoundError(
            "no capacity runs (summary.json with data/n_sequences and memorization/bits_total) under "
            f"{list(map(str, paths))}"
        )
    return pd.DataFrame(rows).sort_values(["params", "n_sequences"]).reset_index(drop=True)


def capacity_report(paths: list[str | Path], out_dir: str | Path | None = None) -> tuple[Path, dict]:
    """Fit every model's capacity and α; write ``capacity_runs.csv``, ``capacity_fit.csv``,
    ``capacity.json``, ``memorized_vs_dataset.png`` and ``capacity_vs_params.png`` to ``out_dir``
    (default: ``<first path>/report``).

    Returns:
        (out_dir, result) with result = fit_alpha's numbers plus ``per_model`` (list of fit dicts),
        ``precision`` and ``runs``.
    Raises:
        FileNotFoundError: no capacity runs found. ValueError: fewer than 2 models or 3 sizes per model.
    """
    df = load_capacity_runs(paths)
    out = Path(out_dir) if out_dir else Path(paths[0]) / "report"
    out.mkdir(parents=True, exist_ok=True)
    if df["precision"].nunique() > 1:
        raise ValueError(
            f"runs of several precisions {sorted(df['precision'].unique())}: expected one (report each grid on its own)"
        )
    fits = []
    for params, g in df.groupby("params"):
        g = g.assign(limited=g["stopped_by"] != "plateau")
        mean = g.groupby("dataset_bits", as_index=False).agg(
            memorized_bits=("memorized_bits", "mean"), limited=("limited", "any")
        )  # seeds at one N: their mean
        fit = fit_plateau(
            mean["dataset_bits"].to_numpy(), mean["memorized_bits"].to_numpy(), mean["limited"].to_numpy()
        )
        fits.append(
            {
                "params": int(params),
                **fit,
                "alpha_model": fit["capacity_bits"] / params,
                "runs_stopped_by_plateau": int((g["stopped_by"] == "plateau").sum()),
                "runs": len(g),
            }
        )
    fit_df = pd.DataFrame(fits)
    sat = fit_df[fit_df["saturated"]]
    use = sat if len(sat) >= 2 else fit_df  # capacities the grid did not reach are extrapolations: leave them out
    result = fit_alpha(use["capacity_bits"].to_numpy(), use["params"].to_numpy())
    result["alpha_models"] = [int(p) for p in use["params"]]
    result["alpha_from_saturated_models_only"] = bool(len(sat) >= 2)
    unsat = fit_df[~fit_df["saturated"]]
    result["unsaturated_lower_bounds_bits_per_param"] = {
        int(r.params): float(r.max_memorized / r.params) for r in unsat.itertuples()
    }
    precisions = sorted(df["precision"].dropna().astype(str).unique())
    result.update(
        {
            "precision": precisions[0] if len(precisions) == 1 else precisions,
            "runs": len(df),
            "wall_time_s_total": float(df["wall_time_s"].fillna(0).sum()),
            "per_model": fits,
            "reference": "Morris et al. 2025 (arXiv:2505.24832) Table 1: 3.83 bits/param (fp32), 3.51 (bf16)",
        }
    )
    df.to_csv(out / "capacity_runs.csv", index=False)
    fit_df.to_csv(out / "capacity_fit.csv", index=False)
    (out / "capacity.json").write_text(json.dumps(result, indent=2))
    _plot_curves(df, fit_df, out / "memorized_vs_dataset.png")
    _plot_alpha(fit_df, result, out / "capacity_vs_params.png")
    return out, result


def _plot_curves(df: pd.DataFrame, fit_df: pd.DataFrame, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    colors = plt.cm.plasma(np.linspace(0, 0.85, len(fit_df)))
    for (_, f), c in zip(fit_df.iterrows(), colors):
        g = df[df["params"] == f["params"]].sort_values("dataset_bits")
        ax.plot(
            g["dataset_bits"],
            g["memorized_bits"],
            "o",
            color=c,
            label=f"{int(f['params']):,} params" + ("" if f["saturated"] else " (not saturated)"),
        )
        hi = g["dataset_bits"].max() * (2 if f["saturated"] else 1)  # no extrapolation of an unsaturated fit
        xs = np.geomspace(g["dataset_bits"].min() / 2, hi, 200)
        ax.plot(xs, saturating(xs, f["capacity_bits"], f["k"]), "-" if f["saturated"] else "--", color=c, linewidth=1)
        if f["saturated"]:
            ax.axhline(f["capacity_bits"], color=c, linestyle=":", linewidth=0.8)
        unconv = g[g["stopped_by"] != "plateau"]
        if len(unconv):
            ax.plot(unconv["dataset_bits"], unconv["memorized_bits"], "x", color="k", ms=7)
        dropped = g[g["dataset_bits"].isin(f["dropped_dataset_bits"])]
        if len(dropped):
            ax.plot(dropped["dataset_bits"], dropped["memorized_bits"], "o", mfc="white", mec=c, ms=9)
    lim = [df["dataset_bits"].min() / 2, df["dataset_bits"].max() * 2]
    ax.plot(lim, lim, "k--", linewidth=0.6, label="memorized = dataset")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("dataset size N·(S−1)·log2 A (bits)")
    ax.set_ylabel("memorized bits (Σ over training sequences)")
    ax.set_title(
        "Memorized bits against dataset size. Dotted: fitted capacity; x: stopped by the step limit,\n"
        "not the plateau; open: stopped by the limit below a smaller dataset's value, left out of the fit",
        fontsize=8,
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def _plot_alpha(fit_df: pd.DataFrame, result: dict, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=110)
    sat = fit_df[fit_df["saturated"]]
    p, c = sat["params"].to_numpy(float), sat["capacity_bits"].to_numpy(float)
    err = np.vstack([c - sat["capacity_ci_low"], sat["capacity_ci_high"] - c])
    ax.errorbar(
        p, c, yerr=np.clip(err, 0, None), fmt="o", color="tab:blue", capsize=3, label="fitted capacity (95% CI)"
    )
    uns = fit_df[~fit_df["saturated"]]
    if len(uns):
        ax.plot(
            uns["params"],
            uns["max_memorized"],
            "^",
            mfc="white",
            mec="tab:red",
            ms=8,
            label="not saturated: max memorized (lower bound)",
        )
    p = fit_df["params"].to_numpy(float)
    xs = np.geomspace(p.min() / 1.5, p.max() * 1.5, 50)
    a, lo, hi = result["alpha"], result["alpha_ci_low"], result["alpha_ci_high"]
    ax.plot(xs, a * xs, "-", color="tab:blue", label=f"α = {a:.2f} bits/param [{lo:.2f}, {hi:.2f}]")
    ax.fill_between(xs, lo * xs, hi * xs, color="tab:blue", alpha=0.15, linewidth=0)
    ax.plot(xs, 3.83 * xs, "k--", linewidth=0.8, label="Morris et al.: 3.83 (fp32)")
    ax.plot(xs, 3.51 * xs, "k:", linewidth=0.8, label="Morris et al.: 3.51 (bf16)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("parameters (embeddings included)")
    ax.set_ylabel("capacity (bits)")
    ax.set_title(f"Capacity against model size ({result['precision']})", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def format_result(result: dict) -> str:
    """A few lines for the terminal: α with CI and each model's capacity."""
    lines = [
        f"alpha = {result['alpha']:.3f} bits/param, 95% CI [{result['alpha_ci_low']:.3f}, "
        f"{result['alpha_ci_high']:.3f}] "
        f"across {result['models']} models ({result['precision']}); through-origin slope "
        f"{result['alpha_through_origin']:.3f} [{result['alpha_through_origin_ci_low']:.3f}, "
        f"{result['alpha_through_origin_ci_high']:.3f}]",
        f"{'params':>9} {'capacity bits':>14} {'95% CI':>23} {'bits/param':>10} {'saturated':>9} "
        f"{'plateau-stopped':>15}",
    ]
    for f in result["per_model"]:
        lines.append(
            f"{f['params']:>9,} {f['capacity_bits']:>14,.0f} [{f['capacity_ci_low']:>10,.0f}, "
            f"{f['capacity_ci_high']:>10,.0f}] "
            f"{f['alpha_model']:>10.3f} {str(f['saturated']):>9} {f['runs_stopped_by_plateau']:>7}/{f['runs']}"
        )
    if result["unsaturated_lower_bounds_bits_per_param"]:
        lines.append(
            "not saturated (grid too small or runs stopped by the step limit; left out of alpha when >= 2 "
            "models saturated); lower bounds max memorized/params: "
            + ", ".join(f"{p:,}: >= {v:.3f}" for p, v in result["unsaturated_lower_bounds_bits_per_param"].items())
        )
    lines.append(result["reference"])
    return "\n".join(lines)
