"""Study statistics (issue 16, first part): the within-person effect on a simulated Latin square, Holm's levels and
the verdict rules on constructed intervals."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from densitylab.probes.study import VERDICT_COLUMNS, decide, holm_levels, verdict_table, within_person_effect

LEVELS = np.array([0.0, np.log2(3), np.log2(1 + 200)])  # zero, low (2 documents), high: log2(1 + documents)


def _latin_square(rng, beta, persons_per_group=64, person_sd=0.05, run_sd=0.02, noise=0.02):
    """K = 3 runs; group g of persons takes level (g - k) mod 3 in run k: everyone is seen at all three levels."""
    groups = np.repeat(np.arange(3), persons_per_group)
    person = np.arange(3 * persons_per_group)
    offset = rng.normal(0, person_sd, len(person))
    rows = []
    for k in range(3):
        level = LEVELS[(groups - k) % 3]
        shift = rng.normal(0, run_sd)
        y = 0.25 + offset + shift + beta * level + rng.normal(0, noise, len(person))
        rows.append(pd.DataFrame({"person": person, "run": k, "x": level, "y": y}))
    return pd.concat(rows, ignore_index=True)


def test_within_person_effect_equals_the_fixed_effects_regression():
    import statsmodels.formula.api as smf

    rng = np.random.default_rng(0)
    d = _latin_square(rng, beta=0.01, persons_per_group=20)
    d = d.drop(index=[3, 70, 101])  # unbalanced: alternating projections, not one sweep
    est = within_person_effect(d["y"], d["x"], d["person"], d["run"])
    fit = smf.ols("y ~ x + C(person) + C(run)", data=d).fit()
    assert est["beta"] == pytest.approx(fit.params["x"], rel=1e-8)
    assert est["n_persons"] == 60 and est["n_runs"] == 3 and est["df"] == 59
    # the standard error: statsmodels' cluster-robust one counts the person dummies in n - k; ours does not
    # (they are nested in the clusters), so ours is a little smaller
    ref = smf.ols("y ~ x + C(person) + C(run)", data=d).fit(cov_type="cluster", cov_kwds={"groups": d["person"]})
    assert 0.8 * ref.bse["x"] < est["se"] < ref.bse["x"]
    flat = within_person_effect(d["y"], np.ones(len(d)), d["person"], d["run"])
    assert math.isnan(flat["beta"])


def test_the_within_person_interval_covers_a_known_effect_on_2000_latin_squares():
    rng = np.random.default_rng(2026)
    beta = 0.004
    hits = 0
    for _ in range(2000):
        d = _latin_square(rng, beta)
        e = within_person_effect(d["y"], d["x"], d["person"], d["run"])
        hits += e["ci_low"] <= beta <= e["ci_high"]
    assert hits / 2000 >= 0.93, hits / 2000


def test_verdicts_on_constructed_intervals():
    assert decide(0.01, 0.03, sesoi=0.005, predicted_sign=1) == "supported"
    assert decide(-0.03, -0.01, sesoi=0.005, predicted_sign=1) == "contradicted"
    assert decide(-0.03, -0.01, sesoi=0.005, predicted_sign=-1) == "supported"
    assert decide(-0.002, 0.003, sesoi=0.005, predicted_sign=1) == "negligible"
    # inside ±SESOI and excluding 0: negligible comes first (a real but unimportant effect)
    assert decide(0.001, 0.004, sesoi=0.005, predicted_sign=1) == "negligible"
    assert decide(-0.01, 0.02, sesoi=0.005, predicted_sign=1) == "inconclusive"
    assert decide(math.nan, math.nan, sesoi=0.005, predicted_sign=1) == "not measured"
    with pytest.raises(ValueError, match="sesoi"):
        decide(0, 1, sesoi=0, predicted_sign=1)
    with pytest.raises(ValueError, match="predicted_sign"):
        decide(0, 1, sesoi=1, predicted_sign=2)
    # an equivalence claim (sign 0): inside +-SESOI it holds; excluding 0 either way contradicts it
    assert decide(-0.2, 0.3, sesoi=0.5, predicted_sign=0) == "negligible"
    assert decide(0.6, 0.9, sesoi=0.5, predicted_sign=0) == "contradicted"
    assert decide(-0.9, -0.55, sesoi=0.5, predicted_sign=0) == "contradicted"
    assert decide(0.1, 0.7, sesoi=0.5, predicted_sign=0) == "inconclusive"  # excludes 0 but overlaps the band
    assert decide(-0.3, 0.8, sesoi=0.5, predicted_sign=0) == "inconclusive"


def test_holm_levels_step_down_and_stop():
    # sorted p: 0.001 (rank 1: 0.05/4), 0.01 (rank 2: 0.05/3), 0.04 (rank 3: 0.05/2, retained: stop), 0.2
    p = [0.04, 0.001, math.nan, 0.01, 0.2]
    a = holm_levels(p, 0.05)
    assert a[1] == pytest.approx(0.05 / 4) and a[3] == pytest.approx(0.05 / 3)
    assert a[0] == pytest.approx(0.05 / 2)  # rank 3: 0.04 >= 0.025, retained; the procedure stops here
    assert a[4] == pytest.approx(0.05 / 2)  # later claims keep the level where it stopped
    assert math.isnan(a[2])


def test_verdict_table_agrees_with_holm_adjusted_p_values():
    claims = pd.DataFrame(
        {
            "claim": ["pos", "neg", "null", "small", "missing"],
            "endpoint": ["L3/pre_value"] * 5,
            "estimate": [0.02, -0.02, 0.0001, 0.0105, math.nan],
            "se": [0.004, 0.004, 0.0005, 0.005, math.nan],
            "df": [191, 191, 191, 191, math.nan],
            "n_persons": [192] * 5,
            "n_runs": [3] * 5,
            "sesoi": [0.005] * 5,
            "predicted_sign": [1, 1, 1, 1, 1],
            "unit": ["persons"] * 5,
        }
    )
    t = verdict_table(claims).set_index("claim")
    assert list(verdict_table(claims).columns) == VERDICT_COLUMNS
    assert t.loc["pos", "verdict"] == "supported" and t.loc["neg", "verdict"] == "contradicted"
    assert t.loc["null", "verdict"] == "negligible" and t.loc["missing", "verdict"] == "not measured"
    # 0.0105 ± t · 0.005: p ≈ 0.037 < 0.05, above its Holm level 0.05 / 2 (rank 3 of 4) → inconclusive
    assert t.loc["small", "verdict"] == "inconclusive" and t.loc["small", "p_holm"] > 0.05 > t.loc["small", "p_value"]
    for c in ("pos", "neg"):
        assert t.loc[c, "p_holm"] < 0.05 and t.loc[c, "level"] > 0.95
    with pytest.raises(ValueError, match="columns"):
        verdict_table(claims.drop(columns=["sesoi"]))


def test_persons_observed_once_are_left_out_of_the_within_person_fit():
    rng = np.random.default_rng(3)
    d = _latin_square(rng, beta=0.01, persons_per_group=20)
    full = within_person_effect(d["y"], d["x"], d["person"], d["run"])
    lonely = pd.DataFrame({"person": [1000, 1001], "run": [0, 1], "x": [0.0, 1.0], "y": [5.0, -5.0]})
    more = pd.concat([d, lonely], ignore_index=True)
    est = within_person_effect(more["y"], more["x"], more["person"], more["run"])
    assert est["n_persons"] == full["n_persons"] == 60 and est["df"] == 59 and est["n"] == full["n"]
    assert est["beta"] == pytest.approx(full["beta"], rel=1e-12) and est["se"] == pytest.approx(full["se"], rel=1e-12)
    # a corpus run missing: only the persons seen in both remaining runs count
    two = d[d["run"] != 2]
    est = within_person_effect(two["y"], two["x"], two["person"], two["run"])
    assert est["n_persons"] == 60 and est["n"] == 120  # everyone is in runs 0 and 1
    one = d[(d["run"] != 2) | (d["person"] < 10)].copy()
    one = one[~((one["run"] == 1) & (one["person"] >= 50))]  # persons 50-59 now observed once
    est = within_person_effect(one["y"], one["x"], one["person"], one["run"])
    assert est["n_persons"] == 50 and est["df"] == 49
