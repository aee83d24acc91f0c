"""The density report on the issue-14 schema of probes/density.parquet: across-seed aggregation, the headline
table, the plots and the W&B heatmap, from fake records (no model, no training)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from densitylab.report import density as rd

BINS = ("0", "1-3", "4-15", "16-63", "64+")
N_ENTITIES = {"0": 48, "1-3": 40, "4-15": 30, "16-63": 20, "64+": 15}


def density_frame(
    steps=(0, 10, 20),
    layers=(0, 1),
    roles=("name_last", "pre_value"),
    bins=BINS,
    base: float = 0.3,
    per_bin: float = 0.01,
    slope: float = 0.002,
    n_entities: dict | None = None,
    insufficient: frozenset = frozenset(),
) -> pd.DataFrame:
    """Fake ``probes/density.parquet`` rows in the new schema: per (step, layer, role) the panel's per-bin means
    of active_frac_live (``base + per_bin * bin_index + 0.1 * layer + step / 1000``), the diffs against bin 0, the
    slope; whole-set panel means of active_frac and active_frac_live. Bins in ``insufficient`` (and their diffs)
    are insufficient with NaN value and CI."""
    n_entities = {**N_ENTITIES, **(n_entities or {})}
    rows = []

    def add(step, layer, role, exposure, b, bi, metric, estimand, value, half, status, ne):
        bad = status == "insufficient"
        rows.append(
            dict(
                step=step,
                layer=layer,
                probe_set="panel",
                role=role,
                exposure=exposure,
                bin=b,
                bin_index=bi,
                metric=metric,
                estimand=estimand,
                value=np.nan if bad else value,
                ci_low=np.nan if bad else value - half,
                ci_high=np.nan if bad else value + half,
                n=10 * ne,
                n_windows=ne,
                n_entities=ne,
                status=status,
            )
        )

    for step in steps:
        for layer in layers:
            shift = 0.1 * layer + step / 1000
            for metric, v in (("active_frac", 0.5 + shift), ("active_frac_live", 0.6 + shift)):
                add(step, layer, "all", "all", "all", -1, metric, "mean", v, 0.01, "descriptive", 0)
            for role in roles:
                add(step, layer, role, "distinct_docs", "all", -1, PRIMARY, "slope", slope + shift, 0.001, "ok", 153)
                for b in bins:
                    bi = BINS.index(b)
                    status = "insufficient" if b in insufficient else "ok"
                    mean = base + per_bin * bi + shift
                    add(step, layer, role, "distinct_docs", b, bi, PRIMARY, "mean", mean, 0.02, status, n_entities[b])
                    if bi > 0:
                        st = "insufficient" if {b, "0"} & set(insufficient) else "ok"
                        add(step, layer, role, "distinct_docs", b, bi, PRIMARY, "diff_vs_0", per_bin * bi, 0.005, st, 0)
    return pd.DataFrame(rows)


PRIMARY = "active_frac_live"


def units_frame(steps=(0, 10, 20), layers=(0, 1), dead: float = 0.1) -> pd.DataFrame:
    """Fake ``probes/units.parquet``: two histogram bins per (step, layer, probe_set)."""
    rows = []
    for step in steps:
        for layer in layers:
            for ps, d in (("all", dead + layer / 100), ("panel", 0.9)):
                for lo, hi in ((0.0, 0.0), (0.0, 0.5)):
                    rows.append(
                        dict(step=step, layer=layer, probe_set=ps, bin_low=lo, bin_high=hi, count=1, n_units=100,
                             n_positions=50, n_dead=int(d * 100), dead_frac=d)
                    )  # fmt: skip
    return pd.DataFrame(rows)


def _pick(df, **kw):
    sel = df
    for k, v in kw.items():
        sel = sel[sel[k] == v]
    return sel


def test_aggregate_runs_means_t_ci_and_survives_different_lengths_and_a_missing_bin():
    a = density_frame(steps=(0, 10, 20), base=0.3)
    b = density_frame(steps=(0, 10), base=0.5, bins=("0", "1-3", "4-15", "16-63"), n_entities={"0": 30})
    c = density_frame(steps=(0,), base=0.4, roles=("name_last",))  # a third run: shortest, one role only
    out = rd.aggregate_runs([a, b, c])
    assert not out.duplicated(rd.KEYS).any()
    row = _pick(out, step=10, layer=1, role="name_last", bin="1-3", estimand="mean").iloc[0]
    va, vb = 0.3 + 0.01 + 0.1 + 0.01, 0.5 + 0.01 + 0.1 + 0.01
    assert row["n_runs"] == 2 and row["value"] == pytest.approx((va + vb) / 2)
    half = stats.t.ppf(0.975, 1) * np.std([va, vb], ddof=1) / np.sqrt(2)
    assert (row["ci_low"], row["ci_high"]) == (pytest.approx(row["value"] - half), pytest.approx(row["value"] + half))
    assert row["status"] == "ok" and row["n"] == 400 + 400 and row["n_entities"] == 40
    # n_entities is the minimum over runs (run b has 30 persons in bin 0)
    assert _pick(out, step=0, layer=0, role="name_last", bin="0", estimand="mean")["n_entities"].item() == 30
    # three runs at step 0 on name_last, two on pre_value (run c lacks it)
    assert _pick(out, step=0, layer=0, role="name_last", bin="0", estimand="mean")["n_runs"].item() == 3
    assert _pick(out, step=0, layer=0, role="pre_value", bin="0", estimand="mean")["n_runs"].item() == 2
    # the 64+ bin only in runs a and c; at step 20 only run a: no across-run CI
    top = _pick(out, step=20, layer=0, role="name_last", bin="64+", estimand="mean").iloc[0]
    assert top["n_runs"] == 1 and top["value"] == pytest.approx(0.3 + 0.04 + 0.02)
    assert np.isnan(top["ci_low"]) and np.isnan(top["ci_high"])
    assert _pick(out, step=0, layer=0, role="name_last", bin="64+", estimand="mean")["n_runs"].item() == 2
    assert list(out.columns) == [*rd.COLUMNS, "n_runs"]


def test_aggregate_runs_insufficient_in_any_run_is_insufficient_and_one_run_is_kept_as_is():
    a = density_frame(steps=(0,), insufficient=frozenset({"64+"}))
    b = density_frame(steps=(0,))
    out = rd.aggregate_runs([a, b])
    top = _pick(out, layer=0, role="name_last", bin="64+")
    assert (top["status"] == "insufficient").all() and top[["value", "ci_low", "ci_high"]].isna().all().all()
    assert (_pick(out, layer=0, role="name_last", bin="4-15")["status"] == "ok").all()
    assert (_pick(out, role="all")["status"] == "descriptive").all()
    one = rd.aggregate_runs([a])
    assert (one["n_runs"] == 1).all() and len(one) == len(a)
    assert one["ci_low"].equals(a["ci_low"])  # the within-run (CR1) CIs kept


def test_aggregate_runs_rejects_the_old_schema_and_nothing():
    old = pd.DataFrame(dict(step=[0], layer=[0], probe_set=["seen"], view=["entity"], bucket=[1], metric=["slope"]))
    old["value"] = 0.1
    with pytest.raises(ValueError, match="view/bucket"):
        rd.aggregate_runs([old])
    with pytest.raises(ValueError):
        rd.aggregate_runs([])


def test_headline_table_at_the_last_common_step_per_layer_and_role():
    long = density_frame(steps=(0, 10, 20), slope=0.002)
    short = density_frame(steps=(0, 10), slope=0.004, insufficient=frozenset({"64+"}))
    table = rd.headline_table(rd.aggregate_runs([long, short]))
    assert len(table) == 4 and set(zip(table["layer"], table["role"])) == {
        (0, "name_last"),
        (0, "pre_value"),
        (1, "name_last"),
        (1, "pre_value"),
    }
    assert (table["step"] == 10).all() and (table["n_runs"] == 2).all()
    r = table[(table["layer"] == 1) & (table["role"] == "name_last")].iloc[0]
    assert r["slope"] == pytest.approx(0.003 + 0.1 + 0.01)
    assert r["slope_ci_low"] < r["slope"] < r["slope_ci_high"] and r["slope_n_entities"] == 153
    assert r["diff_4-15"] == pytest.approx(0.02) and r["diff_4-15_status"] == "ok" and r["n_4-15"] == 30
    assert r["diff_64+_status"] == "insufficient" and np.isnan(r["diff_64+"]) and r["n_0"] == 48
    text = rd.format_table(table)
    assert "layer 1 name_last: slope +0.1130 [" in text and "per doubling (n_entities=153)" in text
    assert "64+ vs 0: insufficient (< 10 persons) (15 vs 48 persons)" in text and "[2 runs]" in text

    one = rd.headline_table(rd.aggregate_runs([long]))
    r = one[(one["layer"] == 0) & (one["role"] == "pre_value")].iloc[0]
    assert r["step"] == 20 and r["diff_64+"] == pytest.approx(0.04)
    assert (r["diff_64+_ci_low"], r["diff_64+_ci_high"]) == (pytest.approx(0.035), pytest.approx(0.045))
    assert "64+ vs 0: +0.040 [+0.035, +0.045] (15 vs 48 persons)" in rd.format_table(one)


def test_headline_table_survives_a_missing_role_and_bin():
    df = density_frame(steps=(0,), roles=("name_last",), bins=("0", "1-3"))
    table = rd.headline_table(rd.aggregate_runs([df]))
    assert list(table["role"]) == ["name_last", "name_last"]
    assert (table["diff_64+_status"] == "missing").all() and (table["n_64+"] == 0).all()
    assert "64+ vs 0: n/a" in rd.format_table(table)
    assert rd.headline_table(df.iloc[0:0]).empty
    assert rd.bin_labels(df) == list(BINS)  # default edges: all five pre-registered bins even without rows
    other = df.replace({"bin": {"0": "0-1", "1-3": "2+"}})  # other edges: the records' own labels
    assert rd.bin_labels(other) == ["0-1", "2+"]
    assert list(rd.headline_table(other).columns[-5:]) == ["diff_2+", "diff_2+_ci_low", "diff_2+_ci_high",
                                                          "diff_2+_status", "n_2+"]  # fmt: skip


def test_heatmap_by_bin_layer_by_bin_with_nan_for_insufficient():
    df = density_frame(steps=(0, 10), insufficient=frozenset({"16-63"}), n_entities={"16-63": 6})
    fig = rd.heatmap_by_bin(df, 10, role="pre_value")
    image = fig.axes[0].images[0].get_array()
    assert image.shape == (2, 5)
    assert image[1, 2] == pytest.approx(0.3 + 0.02 + 0.1 + 0.01)
    assert np.ma.is_masked(image[0, 3]) and not np.ma.is_masked(image[0, 4])
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert "n<10\nn=6" in texts and "0.310\nn=48" in texts
    assert "step 10" in fig.axes[0].get_title() and "pre_value" in fig.axes[0].get_title()
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == list(BINS)
    fig.clf()
    fig = rd.heatmap_by_bin(df.iloc[0:0], 3)  # no rows: an empty figure, no crash
    fig.clf()


@pytest.fixture
def captured(monkeypatch):
    """Figures the plots would save, kept open (path -> figure)."""
    figs = {}

    def keep(fig, path):
        figs[str(path)] = fig
        return path

    monkeypatch.setattr(rd, "save_figure", keep)
    yield figs
    for f in figs.values():
        f.clf()


def test_vs_familiarity_draws_bins_with_error_bars_and_hollow_insufficient_markers(tmp_path, captured):
    df = density_frame(steps=(0, 10), insufficient=frozenset({"64+"}), n_entities={"64+": 7})
    df.loc[(df["layer"] == 1) & (df["bin"] == "4-15"), "status"] = "insufficient"  # only its reference is short
    df.loc[df["status"] == "insufficient", ["value", "ci_low", "ci_high"]] = np.nan
    rd.plot_vs_familiarity(rd.aggregate_runs([df]), tmp_path / "f.png")
    fig = captured[str(tmp_path / "f.png")]
    axes = fig.axes
    assert len(axes) == 4  # 2 roles x 2 layers
    ax = axes[0]
    assert ax.get_title() == "layer 0, name_last" and axes[2].get_title() == "layer 0, pre_value"
    assert "step 10" in fig._suptitle.get_text()
    assert [t.get_text() for t in ax.texts] == ["n<10"]
    assert "ref n<10" in [t.get_text() for t in axes[1].texts]
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks == ["0\nn=48", "1-3\nn=40", "4-15\nn=30", "16-63\nn=20", "64+\nn=7"]
    hollow = [ln for ln in ax.lines if ln.get_markerfacecolor() == "none"]
    assert len(hollow) == 1 and list(hollow[0].get_xdata()) == [4]
    # error bars on the four ok bins only
    (bars,) = [c for c in ax.containers]
    x, y = bars.lines[0].get_data()
    assert list(x) == [0, 1, 2, 3] and y[0] == pytest.approx(0.3 + 0.01)
    segs = bars.lines[2][0].get_segments()
    assert segs[0][:, 1] == pytest.approx([0.31 - 0.02, 0.31 + 0.02])


def test_over_training_draws_active_fracs_and_dead_frac(tmp_path, captured):
    df = rd.aggregate_runs([density_frame()])
    units = rd.aggregate_units([units_frame(), units_frame(steps=(0, 10), dead=0.3)])
    assert _pick(units, step=0, layer=1)["dead_frac"].item() == pytest.approx(0.21)
    assert _pick(units, step=20, layer=1)["n_runs"].item() == 1
    rd.plot_over_training(df, units, tmp_path / "t.png")
    fig = captured[str(tmp_path / "t.png")]
    ax = fig.axes[1]
    labels = {ln.get_label(): ln for ln in ax.lines}
    assert set(labels) == {"active_frac (panel)", "active_frac_live (panel)", "dead_frac (all sets)"}
    assert list(labels["active_frac_live (panel)"].get_ydata()) == pytest.approx([0.7, 0.71, 0.72])
    assert list(labels["dead_frac (all sets)"].get_ydata()) == pytest.approx([0.21, 0.21, 0.11])
    assert ax.get_xscale() == "symlog"
    rd.plot_over_training(df, None, tmp_path / "u.png")  # no units table: no dead_frac line
    assert {ln.get_label() for ln in captured[str(tmp_path / "u.png")].axes[0].lines} == {
        "active_frac (panel)",
        "active_frac_live (panel)",
    }


def _write_run(run, frame, units=None):
    (run / "probes").mkdir(parents=True)
    frame.to_parquet(run / "probes" / "density.parquet", index=False)
    if units is not None:
        units.to_parquet(run / "probes" / "units.parquet", index=False)


def test_density_report_writes_plots_and_headline_for_one_run_and_for_seeds(tmp_path, capsys):
    from densitylab.report.__main__ import main

    _write_run(tmp_path / "one", density_frame(), units_frame())
    out, table = rd.density_report([tmp_path / "one"])
    assert out == tmp_path / "one" / "plots"
    for name in ("density_over_training.png", "density_vs_familiarity.png", "density_headline.csv"):
        assert (out / name).stat().st_size > 0
    assert len(pd.read_csv(out / "density_headline.csv")) == 4 and (table["step"] == 20).all()

    multi = tmp_path / "multi"
    _write_run(multi / "0", density_frame(steps=(0, 10, 20)), units_frame())
    _write_run(multi / "1", density_frame(steps=(0, 10), bins=BINS[:4], base=0.4))  # shorter, no 64+, no units
    assert main([str(multi)]) == 0
    printed = capsys.readouterr().out
    assert "layer 0 name_last: slope" in printed and "[2 runs]" in printed
    head = pd.read_csv(multi / "report" / "density_headline.csv")
    assert (head["step"] == 10).all() and (head["n_runs"] == 2).all()
    assert (multi / "report" / "density_vs_familiarity.png").stat().st_size > 0

    old = tmp_path / "old"
    (old / "probes").mkdir(parents=True)
    pd.DataFrame(dict(step=[0], layer=[0], view=["all"], bucket=[-1], metric=["slope"], value=[0.0])).to_parquet(
        old / "probes" / "density.parquet"
    )
    assert main([str(old)]) == 2 and "view/bucket" in capsys.readouterr().err


def test_aggregate_runs_keeps_no_variation_slopes_out_of_the_estimates():
    """A slope with no variation in exposure (step 0) in any run stays no_variation with NaN, never "ok"."""
    a, b = density_frame(steps=(0,)), density_frame(steps=(0,))
    flat = (a["estimand"] == "slope") & (a["layer"] == 0)
    a.loc[flat, ["value", "ci_low", "ci_high"]] = np.nan
    a.loc[flat, "status"] = "no_variation"
    out = rd.aggregate_runs([a, b])
    s = _pick(out, layer=0, role="name_last", estimand="slope")
    assert (s["status"] == "no_variation").all() and s[["value", "ci_low", "ci_high"]].isna().all().all()
    assert (_pick(out, layer=1, role="name_last", estimand="slope")["status"] == "ok").all()
