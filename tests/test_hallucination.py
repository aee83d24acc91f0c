"""Knowledge analysis on hand-made cases: sources of wrong answers and their chance rate, AUROC and its person
bootstrap, the accuracy curve against chance and prior, the logistic GLM slope, knowing against density."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from densitylab.probes import hallucination as H
from densitylab.probes import knowledge as K


def _items(rows):
    cols = ["entity_id", "attribute", "answer", "predicted", "correct"]
    return pd.DataFrame(rows, columns=cols)


def test_partner_values_come_from_trained_pairs_only():
    values = {"birth_city": np.array(["Rome", "Oslo", "Lima", "Kyiv"], dtype=object)}
    # pairs (0,1) trained twice, (0,2) never trained (count 0), (2,3) once
    p = H.partner_values(np.array([0, 0, 2]), np.array([1, 2, 3]), np.array([2, 0, 1]), values, [0, 2, 3, 1])
    assert p["birth_city"][0] == {"Oslo"}  # not Lima: that pair was never trained
    assert p["birth_city"][2] == {"Kyiv"} and p["birth_city"][3] == {"Lima"} and p["birth_city"][1] == {"Rome"}


def test_sources_are_checked_leak_then_prior_then_other():
    partners = {"birth_city": {0: frozenset({"Oslo", "Lima"}), 1: frozenset()}}
    items = _items(
        [
            (0, "birth_city", "Rome", "Rome", True),  # right
            (0, "birth_city", "Rome", "Oslo", False),  # a partner's value
            (0, "birth_city", "Rome", "Lima", False),  # a partner's value that is also the prior: leak first
            (1, "birth_city", "Rome", "Lima", False),  # the prior, no partner holds it
            (1, "birth_city", "Rome", "Kyiv", False),  # neither
        ]
    )
    src = H.classify_sources(items, partners, {"birth_city": "Lima"})
    assert list(src) == ["correct", "leak_comention", "leak_comention", "prior", "other"]


def test_leak_chance_is_the_zero_exposure_answers_mass_on_the_partners_values_off_the_truth():
    # zero-exposure answers: Oslo 2, Lima 1, Rome 1 (of 4)
    zero = _items(
        [
            (5, "birth_city", "Kyiv", "Oslo", False),
            (6, "birth_city", "Kyiv", "Oslo", False),
            (7, "birth_city", "Kyiv", "Lima", False),
            (8, "birth_city", "Kyiv", "Rome", False),
        ]
    )
    null = H.null_answers(zero, np.ones(4, dtype=bool))
    assert dict(null["birth_city"]) == {"Oslo": 2, "Lima": 1, "Rome": 1}
    partners = {"birth_city": {0: frozenset({"Oslo", "Rome"}), 1: frozenset()}}
    items = _items(
        [
            (0, "birth_city", "Rome", "Oslo", False),  # truth Rome: off-truth mass 0.75, partners' off-truth = Oslo 0.5
            (0, "birth_city", "Kyiv", "Lima", False),  # truth Kyiv (no null mass): partners Oslo + Rome = 0.75
            (1, "birth_city", "Rome", "Lima", False),  # no partners: no leak possible, left out
            (0, "birth_city", "Rome", "Rome", True),  # right: no chance
        ]
    )
    chance = H.leak_chance(items, partners, null)
    assert chance[0] == pytest.approx(0.5 / 0.75)
    assert chance[1] == pytest.approx(0.75)
    assert math.isnan(chance[2]) and math.isnan(chance[3])
    # a zero-exposure subject is left out of its own null: all answers Oslo 2, Lima 2, Rome 1; person 5 answered
    # Oslo and Lima, so its null is Oslo 1, Lima 1, Rome 1: with truth Kyiv and partners {Oslo} the chance is
    # 1/3 (2/5 with its own answers in)
    both = pd.concat([zero, _items([(5, "birth_city", "Kyiv", "Lima", False)])], ignore_index=True)
    z = np.ones(5, dtype=bool)
    null5 = H.null_answers(both, z)
    loo = H.leak_chance(both, {"birth_city": {5: frozenset({"Oslo"})}}, null5, z)
    assert loo[0] == pytest.approx(1 / 3) and loo[4] == pytest.approx(1 / 3)
    assert H.leak_chance(both, {"birth_city": {5: frozenset({"Oslo"})}}, null5)[0] == pytest.approx(2 / 5)


def test_auroc_on_a_known_case_and_with_ties():
    wrong = np.array([True, True, False, False])
    assert H.auroc(np.array([0.9, 0.8, 0.1, 0.2]), wrong) == 1.0  # every wrong answer scores higher
    assert H.auroc(np.array([0.1, 0.2, 0.9, 0.8]), wrong) == 0.0
    # pairs (wrong, right): (3,1) > , (3,2) >, (2,1) >, (2,2) tie: (3 + 0.5) / 4
    assert H.auroc(np.array([3.0, 2.0, 1.0, 2.0]), wrong) == pytest.approx(3.5 / 4)
    assert math.isnan(H.auroc(np.array([1.0, 2.0]), np.array([True, True])))
    assert H.auroc(np.array([3.0, np.nan, 1.0]), np.array([True, True, False])) == 1.0  # NaN left out


def test_person_bootstrap_replicates_equal_the_direct_auroc_of_the_resampled_items():
    rng = np.random.default_rng(0)
    n = 60
    persons = np.repeat(np.arange(20), 3)
    score = rng.normal(size=n).round(1)  # ties
    wrong = rng.random(n) < 0.4
    _, inv = np.unique(persons, return_inverse=True)
    mult = np.stack([np.bincount(rng.integers(0, 20, 20), minlength=20) for _ in range(5)])
    reps = H._replicates(score, wrong, inv, mult)
    for b in range(5):  # the weighted rank sum equals the AUROC of the items repeated by multiplicity
        idx = np.repeat(np.arange(n), mult[b][inv])
        assert reps[b] == pytest.approx(H.auroc(score[idx], wrong[idx]))
    lo, hi = H.bootstrap_auroc(score, wrong, persons, n_boot=400)
    point = H.auroc(score, wrong)
    assert lo < point < hi and 0 <= lo and hi <= 1
    # the paired difference of a score with itself is exactly 0
    assert H.bootstrap_auroc(score, wrong, persons, n_boot=50, reference=score) == (0.0, 0.0)
    # a bootstrap over persons is wider than one over items when items of a person agree
    clustered = np.repeat(rng.normal(size=20), 3)
    y = np.repeat(rng.random(20) < 0.5, 3) ^ (rng.random(n) < 0.1)
    by_person = np.subtract(*H.bootstrap_auroc(clustered, y, persons, n_boot=400)[::-1])
    by_item = np.subtract(*H.bootstrap_auroc(clustered, y, np.arange(n), n_boot=400)[::-1])
    assert by_person > by_item


def _scored(n_per_bin=12, seed=0):
    """Items of 5 attributes for persons in every exposure bin; recall rises with exposure."""
    rng = np.random.default_rng(seed)
    rows = []
    exposures = [0, 2, 8, 32, 100]
    pid = 0
    for b, x in enumerate(exposures):
        for _ in range(n_per_bin):
            p_right = 0.05 + 0.18 * b
            for a in K.KNOWLEDGE_ATTRIBUTES:
                ok = bool(rng.random() < p_right)
                conf = float(np.clip(rng.normal(0.6 if ok else 0.5, 0.2), 0.01, 0.99))
                rows.append(
                    {
                        "entity_id": pid,
                        "attribute": a,
                        "answer": "A",
                        "predicted": "A" if ok else "B",
                        "correct": ok,
                        "confidence": conf,
                        "n_candidates": 10,
                        "exposure": float(x),
                        "bin_index": b,
                    }
                )
            pid += 1
    return pd.DataFrame(rows)


def test_accuracy_curve_has_person_clusters_chance_and_prior_per_bin():
    items = _scored()
    labels = ["0", "1-3", "4-15", "16-63", "64+"]
    curve = K.accuracy_curve(items, labels, {a: "A" for a in K.KNOWLEDGE_ATTRIBUTES}, min_entities=10)
    pooled = curve[(curve["attribute"] == "all") & (curve["bin"] != "all")].set_index("bin")
    assert list(pooled.index) == labels
    assert (pooled["n_entities"] == 12).all() and (pooled["n_items"] == 60).all()
    assert (pooled["status"] == "ok").all()
    assert np.allclose(pooled["chance"], 0.1) and pooled["prior"].eq(1.0).all()  # every truth is the prior "A"
    for lab in labels:
        v = items[items["bin_index"] == labels.index(lab)]
        assert pooled.loc[lab, "value"] == pytest.approx(v["correct"].mean())
        assert pooled.loc[lab, "ci_low"] <= pooled.loc[lab, "value"] <= pooled.loc[lab, "ci_high"]
    assert pooled.loc["64+", "value"] > pooled.loc["0", "value"]
    few = K.accuracy_curve(items[items["entity_id"] < 5], labels, {}, min_entities=10)
    assert (few.loc[few["bin"] == "0", "status"] == "insufficient").all()


def test_glm_slope_recovers_a_known_log_odds_slope():
    rng = np.random.default_rng(1)
    persons = np.arange(400)
    x = rng.integers(0, 7, size=400)  # log2(1 + exposure) = x
    exposure = 2.0**x - 1
    rows = []
    for p, e, xi in zip(persons, exposure, x):
        logit = -2.0 + 0.6 * xi
        for _ in range(5):
            rows.append({"entity_id": p, "exposure": e, "correct": rng.random() < 1 / (1 + math.exp(-logit))})
    row = K.knowledge_slope(pd.DataFrame(rows))
    assert row["status"] == "ok" and row["n_entities"] == 400
    assert row["ci_low"] < 0.6 < row["ci_high"] and abs(row["value"] - 0.6) < 0.1
    flat = pd.DataFrame({"entity_id": [0, 1, 2], "exposure": [0.0, 1.0, 3.0], "correct": [False] * 3})
    assert K.knowledge_slope(flat)["status"] == "no_variation"


def test_hallucination_rows_confident_errors_and_leaks_by_bin():
    items = _scored()
    items["confident_error"] = ~items["correct"] & (items["confidence"] > 0.5)
    leak = np.where(items["entity_id"] % 2 == 0, "leak_comention", "other")
    items["source"] = np.where(items["correct"], "correct", leak)
    items["leak_chance"] = np.where(items["correct"], np.nan, 0.25)
    items["shortest"] = items["entity_id"] % 3 == 0
    items["shortest_truth"] = items["entity_id"] % 2 == 0
    items["shortest_chance"] = 0.2
    rows = H.hallucination_rows(items, ["0", "1-3", "4-15", "16-63", "64+"]).set_index(["statistic", "bin"])
    zero = items[items["bin_index"] == 0]
    assert rows.loc[("confident_error_rate", "0"), "value"] == pytest.approx(zero["confident_error"].mean())
    wrong = items[~items["correct"]]
    assert rows.loc[("leak_rate", "all"), "value"] == pytest.approx((wrong["source"] == "leak_comention").mean())
    assert rows.loc[("leak_chance_rate", "all"), "value"] == pytest.approx(0.25)
    assert rows.loc[("shortest_answer_rate", "all"), "value"] == pytest.approx(items["shortest"].mean())
    assert rows.loc[("shortest_chance_rate", "all"), "value"] == pytest.approx(0.2)
    assert rows.loc[("shortest_truth_rate", "all"), "value"] == pytest.approx(items["shortest_truth"].mean())
    shares = rows[rows["method"] == "cluster_wilson"]
    assert (shares["ci_low"] >= 0).all() and (shares["ci_high"] <= 1).all()
    excess = rows.loc[("leak_excess", "all")]
    assert excess["value"] == pytest.approx(rows.loc[("leak_rate", "all"), "value"] - 0.25)
    auc = rows.loc[("auroc_exposure", "all")]
    assert auc["method"] == "point" and auc["value"] == pytest.approx(
        H.auroc(-np.log2(1 + items["exposure"]), ~items["correct"])
    )
    assert auc["value"] > 0.6  # wrong answers are concentrated on low exposure
    boot = H.bootstrap_rows(items, n_boot=200).set_index("statistic")
    assert {"auroc_confidence", "auroc_exposure", "auroc_exposure_minus_confidence"} <= set(boot.index)
    diff = boot.loc["auroc_exposure_minus_confidence"]
    assert diff["value"] == pytest.approx(boot.loc["auroc_exposure", "value"] - boot.loc["auroc_confidence", "value"])
    assert diff["ci_low"] <= diff["value"] <= diff["ci_high"]


def test_knowing_against_density_within_a_bin():
    rng = np.random.default_rng(2)
    rows, persons = [], []
    for p in range(40):
        known = p % 2 == 0
        persons.append({"entity_id": p, "known": 0.8 if known else 0.2, "bin_index": p // 20})
        for _ in range(3):
            rows.append(
                {
                    "step": 900,
                    "probe_set": "panel",
                    "own": True,
                    "role": "name_last",
                    "person": p,
                    "L0/active_frac_live": (0.30 if known else 0.20) + rng.normal(0, 0.01),
                }
            )
    rows.append({**rows[0], "own": False, "L0/active_frac_live": 9.0})  # a co-mentioned name: left out
    table = K.knowing_density(
        pd.DataFrame(rows),
        pd.DataFrame(persons),
        metric="active_frac_live",
        roles=["name_last"],
        labels=["0", "1-3"],
    )
    assert list(table.columns) == K.KNOWING_DENSITY_COLUMNS and len(table) == 2
    for r in table.itertuples():
        assert r.n_known == 10 and r.n_unknown == 10 and r.status == "ok"
        assert r.ci_low < 0.10 < r.ci_high and r.diff == pytest.approx(r.known_mean - r.unknown_mean)


def test_cluster_proportion_ci_stays_in_the_unit_interval_and_is_never_zero_width():
    from densitylab.probes.stats import cluster_mean_ci, cluster_proportion_ci

    persons = np.repeat(np.arange(15), 5)
    p, lo, hi, n, k = cluster_proportion_ci(np.ones(75), persons)  # 15 persons, all right
    assert p == 1.0 and hi == 1.0 and 0.9 < lo < 0.96 and (n, k) == (75, 15)
    assert cluster_mean_ci(np.ones(75), persons)[1:3] == (1.0, 1.0)  # the CR1 interval has zero width there
    p, lo, hi, *_ = cluster_proportion_ci(np.zeros(75), persons)
    assert p == 0.0 and lo == 0.0 and 0.04 < hi < 0.1
    # monotone in p next to the bound: one wrong answer lowers the interval's lower end, never raises it
    one = np.ones(75)
    one[0] = 0
    assert cluster_proportion_ci(one, persons)[1] <= cluster_proportion_ci(np.ones(75), persons)[1]
    # inside (0, 1) it follows the CR1 standard error: close to the CR1 interval when p is far from the bounds
    rng = np.random.default_rng(0)
    v = (rng.random(400) < 0.5).astype(float)
    g = np.repeat(np.arange(80), 5)
    w = cluster_proportion_ci(v, g)
    c = cluster_mean_ci(v, g)
    assert abs(w[1] - c[1]) < 0.01 and abs(w[2] - c[2]) < 0.01
    # coverage of the true proportion with correlated items: 400 replications of 20 persons x 5 items, each
    # person right with their own probability (mean 0.9, near the bound where the CR1 interval fails)
    truth = np.clip(np.random.default_rng(1).normal(0.9, 0.08, 10**6), 0, 1).mean()
    hits = cr1 = 0
    for r in range(400):
        rr = np.random.default_rng(100 + r)
        person_p = np.clip(rr.normal(0.9, 0.08, 20), 0, 1)
        x = (rr.random((20, 5)) < person_p[:, None]).astype(float).ravel()
        _, lo, hi, *_ = cluster_proportion_ci(x, np.repeat(np.arange(20), 5))
        hits += lo <= truth <= hi
        _, lo, hi, *_ = cluster_mean_ci(x, np.repeat(np.arange(20), 5))
        cr1 += lo <= truth <= hi
    assert hits / 400 >= 0.92 and hits >= cr1  # at least nominal-ish, and no worse than CR1


def test_stratified_bootstrap_draws_persons_within_their_stratum():
    rng = np.random.default_rng(3)
    persons = np.repeat(np.arange(30), 4)
    strata = np.where(persons < 10, "top", "rest")
    score = rng.normal(size=120)
    wrong = rng.random(120) < 0.5
    lo, hi = H.bootstrap_auroc(score, wrong, persons, n_boot=300, strata=strata)
    point = H.auroc(score, wrong)
    assert lo <= point <= hi
    # a stratum holding every wrong answer keeps its share in every replicate: the interval is narrower than
    # when the share of that stratum may vary
    wrong2 = persons < 10
    score2 = np.where(wrong2, 0.5, 0.0) + rng.normal(0, 1, 120)
    a = np.subtract(*H.bootstrap_auroc(score2, wrong2, persons, n_boot=400, strata=strata)[::-1])
    b = np.subtract(*H.bootstrap_auroc(score2, wrong2, persons, n_boot=400)[::-1])
    assert a < b
