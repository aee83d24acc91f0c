"""The priming figure: log S_prime against log10 P_before, by number of copies k (Sun et al. 2025, "How new data
permeates LLM knowledge and how to dilute it", arXiv:2504.09522, their Fig. 1), with the hinge fit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from densitylab.report.common import pyplot, save_figure


def plot_priming(scores: pd.DataFrame, stats: pd.DataFrame, endpoint: dict, path: str | Path) -> Path:
    """``plots/priming_vs_pbefore.png``, at the endpoint's offset, x = log10 P_before (own prompt) in every panel:

    1. the endpoint's score (S_prime by default) of every inserted fact (coloured by k) and every control (grey
       crosses, never inserted), with each group's least-squares line: the pre-registered test is the difference
       of the two slopes;
    2. the pre-registered test per k: the facts' slope minus the controls' slope at the same step, with its CI, and
       the pooled estimate (band) against ±SESOI;
    3. S_mem, facts and controls, as panel 1.

    Args:
        scores: :func:`densitylab.probes.priming.analyse`'s per-fact table (``probes/priming_facts.parquet``).
        stats: ``probes/priming_threshold.parquet``.
        endpoint: ``callbacks.priming.endpoint``.
        path: where to write the PNG.
    Returns:
        ``path``.
    """
    plt = pyplot()
    score, off = str(endpoint["score"]), int(endpoint["offset"])
    d = scores[scores["offset"] == off]
    facts, ctrl = d[d["half"] == 0], d[d["half"] != 0].groupby("fact_id").mean(numeric_only=True)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.3), constrained_layout=True)
    ks = sorted(facts["k"].unique())
    cmap = plt.get_cmap("viridis", max(len(ks), 2))
    thr = np.log10(float(endpoint["threshold"]))

    def scatter(ax, col: str, with_controls: bool) -> None:
        for i, k in enumerate(ks):
            g = facts[facts["k"] == k]
            ax.scatter(g["log10_p_before"], g[col], s=12, color=cmap(i), label=f"k={int(k)}", alpha=0.8)
        groups = [(facts, "C3", "facts")] + ([(ctrl, "0.4", "controls")] if with_controls else [])
        if with_controls and len(ctrl):
            ax.scatter(ctrl["log10_p_before"], ctrl[col], s=16, marker="x", color="0.4", label="controls (k=0)")
        for g, color, label in groups:
            ok = np.isfinite(g[col]) & np.isfinite(g["log10_p_before"])
            if ok.sum() >= 3:
                b, a = np.polyfit(g.loc[ok, "log10_p_before"], g.loc[ok, col], 1)
                xs = np.linspace(g["log10_p_before"].min(), g["log10_p_before"].max(), 50)
                ax.plot(xs, a + b * xs, color=color, lw=1.2, label=f"{label}: {b:+.2f} per decade")
        ax.axhline(0.0, color="grey", lw=0.8, ls=":")
        ax.axvline(thr, color="k", lw=0.8, ls="--")
        ax.set_xlabel("log10 P_before (own prompt)")

    raw = score.replace("_corrected", "")
    rcol = "log_" + raw.lower()
    scatter(axes[0], rcol, True)
    axes[0].set_ylabel(f"ln {raw}")
    axes[0].set_title(f"ln {raw}, offset {off}: facts and controls")
    ax = axes[1]  # the per-k test: facts minus controls at the same step, with its CI
    sd = stats[stats["statistic"] == "slope_difference_k"] if len(stats) else pd.DataFrame()
    for name, color, dx in ((raw, "C3", 0.0),):
        sub = sd[sd["subset"].str.startswith(name)]
        kk = sub["subset"].str.extract(r"k=(\d+)")[0].astype(int).to_numpy()
        est = sub["estimate"].to_numpy(np.float64)
        err = np.vstack([est - sub["ci_low"].to_numpy(np.float64), sub["ci_high"].to_numpy(np.float64) - est])
        ax.errorbar(np.arange(len(kk)) + dx, est, yerr=np.nan_to_num(err), fmt="o", color=color, capsize=3,
                    label=f"{name}: facts minus controls")  # fmt: skip
        ax.set_xticks(np.arange(len(kk)), [f"k={k}" for k in kk])
    ax.set_xlabel("k (copies of the fact trained on)")
    prim = stats[(stats["statistic"] == "slope_difference") & stats["subset"].str.startswith(raw)] if len(stats) else []
    if len(prim):
        r = prim.iloc[0]
        ax.axhspan(r["ci_low"], r["ci_high"], color="C3", alpha=0.12, label=f"pooled {r['estimate']:+.3f}")
    sesoi = float(endpoint.get("sesoi_slope", 0.1))
    ax.axhline(0, color="grey", lw=0.8, ls=":")
    for v in (-sesoi, sesoi):
        ax.axhline(v, color="k", lw=0.6, ls="--")
    ax.set_ylabel(f"slope difference, ln {raw} per decade")
    ax.set_title("facts minus controls, per k (dashed: ±SESOI)")
    scatter(axes[2], "log_s_mem", True)
    axes[2].set_ylabel("ln S_mem")
    axes[2].set_title(f"ln S_mem, offset {off}: facts and controls")
    for ax in axes:
        ax.legend(fontsize=6, loc="best")
    fig.suptitle(f"priming: {len(facts)} facts, {len(ctrl)} controls (dashed: P_before = {endpoint['threshold']:g})")
    return save_figure(fig, path)


def format_priming(stats: pd.DataFrame) -> str:
    """The headline lines of a priming analysis (``probes/priming_threshold.parquet``): the hinge knee and slopes,
    Spearman ρ with its verdict, ρ per k, the controls' ρ and the facts-minus-controls slope, the control check, the
    density predictors; each with its CI and n."""
    lines = []
    for _, r in stats.iterrows():
        if r["statistic"].startswith("geomean"):
            continue
        ci = f"[{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]" if np.isfinite(r["ci_low"]) else "[n/a]"
        note = f"  ({r['note']})" if r["note"] else ""
        lines.append(f"{r['statistic']:<32} {r['estimate']:+.3f} {ci} n={int(r['n'])}  {r['subset']}{note}")
    return "\n".join(lines)


def priming_report(run_dir: str | Path, out: str | Path | None = None) -> tuple[Path, pd.DataFrame]:
    """Re-run a priming run's end analysis from its folder alone (``probes/priming_log.parquet``,
    ``ground_truth/new_facts.parquet`` and the run's ``.hydra/config.yaml`` for the pre-registered endpoint), e.g.
    after a run stopped before its end, with the code of this checkout.

    Writes ``priming.parquet``, ``priming_facts.parquet``, ``priming_threshold.parquet`` and
    ``priming_vs_pbefore.png`` to ``out`` (default ``RUN_DIR/report/priming``; the run's own tables are never
    overwritten).

    Returns:
        ``(out, stats)``.
    Raises:
        FileNotFoundError: for a folder without the priming probe's tables or config.
        ValueError: when no fact completed its schedule.
    """
    from omegaconf import OmegaConf

    from densitylab.callbacks.priming import check_priming_settings
    from densitylab.io import write_parquet_atomic
    from densitylab.probes.priming import analyse

    run = Path(run_dir)
    paths = [run / "probes" / "priming_log.parquet", run / "ground_truth" / "new_facts.parquet",
             run / ".hydra" / "config.yaml"]  # fmt: skip
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(f"{str(p)!r} does not exist: expected a run folder of experiment=priming")
    raw, facts = pd.read_parquet(paths[0]), pd.read_parquet(paths[1])
    cfg = OmegaConf.load(paths[2])
    node = OmegaConf.to_container(cfg.callbacks.priming, resolve=False)
    keys = ("n_facts", "n_controls", "k_values", "n_cohorts", "t0", "start_frac", "interval", "offsets", "attributes",
            "n_thematic", "log10_range", "select_lead", "ignore_topk", "endpoint")  # fmt: skip
    settings = {k: node[k] for k in keys if k in node}
    if node.get("facts"):  # a facts-file run: its k values are the file's (the file itself may be gone)
        settings["k_values"] = sorted({int(k) for k in facts["k"] if int(k) > 0}) or [1]
    s = check_priming_settings(settings, int(cfg.trainer.max_steps))
    facts = facts[facts["keyword"].notna()]
    done = set(raw["step"].astype(int))
    offsets = [o for o in s["offsets"] if all(int(x) + o in done for x in facts.loc[facts["k"] > 0, "last_copy"])]
    if facts.empty or not offsets:
        raise ValueError(f"{str(run)!r}: no fact completed its schedule (no P_after at every offset)")
    seed = node.get("seed", 0)
    seed = int(cfg.seed) if not isinstance(seed, int) else seed
    table, scores, stats, _ = analyse(
        raw, facts, offsets, s["endpoint"], n_boot=int(node.get("n_boot", 1000)), level=float(node.get("level", 0.95)),
        seed=seed, n_layer=int(cfg.model.net.n_layer),
    )  # fmt: skip
    out = Path(out) if out is not None else run / "report" / "priming"
    write_parquet_atomic(table, out / "priming.parquet")
    write_parquet_atomic(scores, out / "priming_facts.parquet")
    write_parquet_atomic(stats, out / "priming_threshold.parquet")
    plot_priming(scores, stats, s["endpoint"], out / "priming_vs_pbefore.png")
    return out, stats
