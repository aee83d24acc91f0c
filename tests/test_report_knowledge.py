"""The knowledge report on the issue-15 schemas of probes/knowledge_curve.parquet and probes/hallucination.parquet:
plots, headline table and text, from fake records (no model, no training)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from densitylab.report import knowledge as rk

BINS = ("0", "1-3", "4-15", "16-63", "64+")
N_PANEL = {"0": 120, "1-3": 80, "4-15": 60, "16-63": 45, "64+": 15}
N_CORE = {"0": 24, "1-3": 16, "4-15": 12, "16-63": 8, "64+": 4}  # 16-63 and 64+ are insufficient in the core
STEPS = (0, 16, 64)


def _acc(step: int, bi: int) -> float:
    return min(0.95, 0.1 + 0.15 * bi * step / max(STEPS))


def curve_frame(steps=STEPS, nan_ci: bool = False) -> pd.DataFrame:
    """Fake knowledge_curve rows: core accuracy per bin and pooled at every step, the panel at the last step, the
    slope row at the last step; core bins with < 10 persons insufficient (NaN value and CI)."""
    rows = []

    def add(step, scope, b, bi, value, n_ent, estimand="accuracy", method="cluster_mean"):
        status = "insufficient" if 0 <= n_ent < 10 else "ok"
        bad = status == "insufficient"
        half = np.nan if nan_ci else 0.05
        rows.append(
            dict(
                step=step,
                scope=scope,
                attribute="all",
                estimand=estimand,
                exposure="distinct_docs",
                bin=b,
                bin_index=bi,
                value=np.nan if bad else value,
                ci_low=np.nan if bad else value - half,
                ci_high=np.nan if bad else value + half,
                n_items=5 * n_ent,
                n_entities=n_ent,
                chance=0.1,
                prior=0.2 + 0.01 * max(bi, 0),
                method=method,
                status=status,
            )
        )

    last = max(steps)
    for step in steps:
        scopes = [("core", N_CORE)] + ([("panel", N_PANEL)] if step == last else [])
        for scope, ns in scopes:
            for bi, b in enumerate(BINS):
                add(step, scope, b, bi, _acc(step, bi), ns[b])
            add(step, scope, "all", -1, float(np.mean([_acc(step, i) for i in range(5)])), sum(ns.values()))
    add(last, "panel", "all", -1, 0.52, sum(N_PANEL.values()), estimand="slope", method="glm_cluster")
    return pd.DataFrame(rows)


def halluc_frame(steps=STEPS, nan_ci: bool = False) -> pd.DataFrame:
    """Fake hallucination rows: core point rows every step, panel cluster-mean and bootstrap rows at the last step."""
    rows = []

    def add(step, scope, stat, b, bi, value, method, half=0.04):
        point = method == "point"
        h = np.nan if (point or nan_ci) else half
        rows.append(
            dict(
                step=step,
                scope=scope,
                statistic=stat,
                bin=b,
                bin_index=bi,
                value=value,
                ci_low=value - h,
                ci_high=value + h,
                n_items=100,
                n_entities=48 if b == "0" else 320,
                method=method,
                status="ok",
            )
        )

    last = max(steps)
    for step in steps:
        scopes = ["core"] + (["panel"] if step == last else [])
        for scope in scopes:
            for bi, b in [(-1, "all"), *enumerate(BINS)]:
                add(step, scope, "confident_error_rate", b, bi, 0.08 + step / 1000, "cluster_mean")
            add(step, scope, "leak_rate", "all", -1, 0.12, "cluster_mean")
            add(step, scope, "leak_chance_rate", "all", -1, 0.05, "cluster_mean")
            add(step, scope, "auroc_confidence", "all", -1, 0.6 + step / 1000, "point")
            add(step, scope, "auroc_exposure", "all", -1, 0.7, "point")
    add(last, "panel", "auroc_confidence", "all", -1, 0.71, "bootstrap")
    add(last, "panel", "auroc_exposure", "all", -1, 0.80, "bootstrap")
    return pd.DataFrame(rows)


def write_run(tmp_path, curve=True, halluc=True):
    run = tmp_path / "run"
    (run / "probes").mkdir(parents=True)
    if curve:
        curve_frame().to_parquet(run / "probes" / "knowledge_curve.parquet")
    if halluc:
        halluc_frame().to_parquet(run / "probes" / "hallucination.parquet")
    return run


def _png(path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_writes_three_plots(tmp_path):
    run = write_run(tmp_path)
    paths = rk.knowledge_report(run)
    assert [p.name for p in paths] == list(rk.PLOT_FILES)
    assert all(p.parent == run / "plots" and _png(p) for p in paths)
    out = rk.knowledge_report(run, tmp_path / "elsewhere")
    assert all(p.parent == tmp_path / "elsewhere" and _png(p) for p in out)


def test_missing_tables(tmp_path):
    run = write_run(tmp_path, curve=False, halluc=False)
    assert rk.knowledge_report(run) == []
    assert not (run / "plots").exists()
    assert rk.knowledge_headline(run) == "knowledge: no probe rows"
    assert rk.knowledge_report(tmp_path / "nothing_here") == []
    only_h = write_run(tmp_path / "h", curve=False)
    assert [p.name for p in rk.knowledge_report(only_h)] == ["hallucination_auroc.png"]
    only_c = write_run(tmp_path / "c", halluc=False)
    assert [p.name for p in rk.knowledge_report(only_c)] == ["knowledge_vs_exposure.png", "knowledge_over_training.png"]


def test_empty_tables_give_message_figures(tmp_path):
    run = tmp_path / "run"
    (run / "probes").mkdir(parents=True)
    curve_frame().iloc[:0].to_parquet(run / "probes" / "knowledge_curve.parquet")
    halluc_frame().iloc[:0].to_parquet(run / "probes" / "hallucination.parquet")
    paths = rk.knowledge_report(run)
    assert len(paths) == 3 and all(_png(p) for p in paths)
    for f in (rk.plot_knowledge_vs_exposure, rk.plot_knowledge_over_training):
        assert _png(f(pd.DataFrame(), tmp_path / f"{f.__name__}.png"))
    assert _png(rk.plot_hallucination_auroc(pd.DataFrame(), tmp_path / "h.png"))
    assert rk.knowledge_table(None, None).empty
    assert list(rk.knowledge_table(pd.DataFrame(), pd.DataFrame()).columns) == rk.TABLE_COLUMNS


def test_nan_cis_and_partial_rows_do_not_crash(tmp_path):
    curve, halluc = curve_frame(nan_ci=True), halluc_frame(nan_ci=True)
    assert _png(rk.plot_knowledge_vs_exposure(curve, tmp_path / "a.png"))
    assert _png(rk.plot_knowledge_over_training(curve, tmp_path / "b.png"))
    assert _png(rk.plot_hallucination_auroc(halluc, tmp_path / "c.png"))
    # only the panel (no core), only the core (run stopped before the last step), no bootstrap, no AUROC at all
    assert _png(rk.plot_knowledge_vs_exposure(curve[curve["scope"] == "panel"], tmp_path / "d.png"))
    assert _png(rk.plot_knowledge_over_training(curve[curve["scope"] == "panel"], tmp_path / "e.png"))
    assert _png(rk.plot_knowledge_vs_exposure(curve[curve["scope"] == "core"], tmp_path / "f.png"))
    h = halluc[halluc["method"] != "bootstrap"]
    assert _png(rk.plot_hallucination_auroc(h, tmp_path / "g.png"))
    assert _png(rk.plot_hallucination_auroc(h[~h["statistic"].str.startswith("auroc")], tmp_path / "h.png"))
    text = rk.format_knowledge_table(rk.knowledge_table(curve, halluc))
    assert "[no CI]" in text


def test_many_steps_and_facts_scope(tmp_path):
    curve = curve_frame(steps=(0, 16, 64, 256, 1024, 2048, 4096))
    assert _png(rk.plot_knowledge_vs_exposure(curve, tmp_path / "a.png", title="seed 0"))
    facts = curve[curve["scope"] == "core"].assign(scope="facts")
    assert _png(rk.plot_knowledge_vs_exposure(facts, tmp_path / "b.png"))
    assert _png(rk.plot_knowledge_over_training(facts, tmp_path / "c.png"))
    h = halluc_frame()
    h = pd.concat([h[h["scope"] == "core"].assign(scope="facts"), h[h["method"] == "bootstrap"].assign(scope="facts")])
    extra = h[h["statistic"] == "auroc_exposure"].assign(statistic="auroc_cooccurrence")
    assert _png(rk.plot_hallucination_auroc(pd.concat([h, extra]), tmp_path / "d.png"))
    table = rk.knowledge_table(facts, pd.concat([h, extra]))
    assert set(table["scope"]) == {"facts"}
    assert "auroc_cooccurrence" in set(table["quantity"])


def test_pick_steps():
    assert rk._pick_steps([0, 16, 64]) == [0, 16, 64]
    picked = rk._pick_steps([0, 16, 64, 256, 1024, 2048, 4096, 8192])
    assert len(picked) == 5 and picked[0] == 0 and picked[-1] == 8192


def test_knowledge_table_headline():
    table = rk.knowledge_table(curve_frame(), halluc_frame())
    assert list(table.columns) == rk.TABLE_COLUMNS
    acc = table[table["quantity"] == "accuracy"]
    assert list(acc["bin"]) == [*BINS, "all"]
    assert set(acc["scope"]) == {"panel"} and set(acc["step"]) == {64}
    assert list(acc["n_entities"]) == [*N_PANEL.values(), sum(N_PANEL.values())]
    assert acc["value"].iloc[-1] == pytest.approx(np.mean([_acc(64, i) for i in range(5)]))
    assert acc["ci_low"].iloc[0] == pytest.approx(_acc(64, 0) - 0.05)
    assert (acc["chance"] == 0.1).all() and acc["prior"].iloc[4] == pytest.approx(0.24)
    assert acc["status"].tolist() == ["ok"] * 6  # the panel has >= 10 persons in every bin
    q = table.set_index("quantity")
    assert q.loc["slope", "value"] == pytest.approx(0.52)
    ce = q.loc["confident_error_rate"]
    assert (ce["bin"], ce["scope"], ce["step"]) == ("0", "panel", 64) and ce["value"] == pytest.approx(0.144)
    assert q.loc["leak_rate", "value"] == pytest.approx(0.12)
    assert q.loc["leak_chance_rate", "value"] == pytest.approx(0.05)
    au = q.loc["auroc_confidence"]
    assert au["method"] == "bootstrap" and au["value"] == pytest.approx(0.71)
    assert (au["ci_low"], au["ci_high"]) == pytest.approx((0.67, 0.75))
    assert q.loc["auroc_exposure", "value"] == pytest.approx(0.80)
    assert "auroc_cooccurrence" not in q.index

    text = rk.format_knowledge_table(table)
    lines = text.splitlines()
    assert lines[0].startswith("knowledge (panel, step 64): accuracy ")
    assert "320 persons" in lines[0] and "chance 0.100" in lines[0] and "popularity prior 0.200" in lines[0]
    assert "64+ " in text and "n=15" in text
    assert "slope +0.520 [+0.470, +0.570]" in text
    assert "0.144 [0.104, 0.184]" in text  # confident errors on bin 0
    assert "leak rate" in text and "vs chance 0.050 [0.010, 0.090]" in text
    assert "confidence 0.710 [0.670, 0.750] (bootstrap, panel)" in text
    assert "exposure 0.800 [0.760, 0.840]" in text


def test_table_without_panel_falls_back_to_core_and_marks_insufficient():
    curve, halluc = curve_frame(), halluc_frame()
    table = rk.knowledge_table(curve[curve["scope"] == "core"], halluc[halluc["scope"] == "core"])
    acc = table[table["quantity"] == "accuracy"]
    assert set(acc["scope"]) == {"core"} and set(acc["step"]) == {64}
    assert acc.set_index("bin").loc["64+", "status"] == "insufficient"
    au = table.set_index("quantity").loc["auroc_confidence"]
    assert au["method"] == "point" and np.isnan(au["ci_low"])
    text = rk.format_knowledge_table(table)
    assert "64+ insufficient (n=4 < 10 persons)" in text
    assert "confidence 0.664 [no CI] (point, core)" in text
    assert "slope" not in text  # the slope row is on the panel only


def test_bad_schema_raises():
    with pytest.raises(ValueError, match="issue-15 schema"):
        rk.knowledge_table(pd.DataFrame({"step": [0], "value": [0.5]}), None)
