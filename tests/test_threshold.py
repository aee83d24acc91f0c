"""Priming-threshold statistics (densitylab.probes.threshold) on generated data with fixed seeds."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from densitylab.probes.threshold import geometric_ratio_ci, hinge_bootstrap, hinge_fit, smallest_k, spearman_ci


def _hinge_data(n=200, knee=-3.0, below=-1.5, above=0.0, noise=0.2, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-6.0, 0.0, n)
    y = 0.5 + below * np.minimum(x - knee, 0) + above * np.maximum(x - knee, 0) + rng.normal(0, noise, n)
    return x, y


def _brute_force(x, y, knots):
    best = (math.inf, None, None)
    for c in knots:
        X = np.c_[np.ones_like(x), np.minimum(x - c, 0), np.maximum(x - c, 0)]
        beta, *_ = np.linalg.lstsq(X, y, rcond=None)
        sse = float(((y - X @ beta) ** 2).sum())
        if sse < best[0]:
            best = (sse, c, beta)
    return best


def test_hinge_fit_recovers_knee_and_slopes():
    x, y = _hinge_data()
    f = hinge_fit(x, y)
    assert abs(f["knee"] - (-3.0)) < 0.3
    assert abs(f["slope_below"] - (-1.5)) < 0.15
    assert abs(f["slope_above"]) < 0.15
    assert abs(f["intercept"] - 0.5) < 0.15
    assert f["n"] == 200
    assert 0.9 < f["r2"] <= 1.0
    assert set(f) == {"knee", "slope_below", "slope_above", "intercept", "sse", "n", "r2"}


def test_hinge_fit_matches_brute_force_lstsq():
    rng = np.random.default_rng(3)
    x = rng.normal(-4.0, 1.5, 80)
    y = rng.normal(0, 1, 80) - 0.8 * np.minimum(x + 4, 0)
    xs = np.sort(x)
    knots = np.linspace(xs[4], xs[-5], 201)
    sse, c, beta = _brute_force(x, y, knots)
    f = hinge_fit(x, y)
    assert f["knee"] == pytest.approx(c, abs=1e-12)
    assert f["sse"] == pytest.approx(sse, rel=1e-9)
    assert [f["intercept"], f["slope_below"], f["slope_above"]] == pytest.approx(list(beta), rel=1e-8, abs=1e-10)


def test_hinge_fit_exact_on_noise_free_data_with_knot_on_grid():
    x, y = _hinge_data(noise=0.0)
    f = hinge_fit(x, y, knots=np.linspace(-5, -1, 41))  # contains -3 exactly up to rounding
    assert f["knee"] == pytest.approx(-3.0, abs=1e-9)
    assert f["slope_below"] == pytest.approx(-1.5, abs=1e-9)
    assert f["slope_above"] == pytest.approx(0.0, abs=1e-9)
    assert f["intercept"] == pytest.approx(0.5, abs=1e-9)
    assert f["sse"] == pytest.approx(0.0, abs=1e-12)


def test_straight_line_gives_equal_slopes():
    rng = np.random.default_rng(1)
    x = rng.uniform(-6, 0, 200)
    exact = hinge_fit(x, 0.7 * x + 2.0)
    assert exact["slope_below"] == pytest.approx(0.7, abs=1e-8)
    assert exact["slope_above"] == pytest.approx(0.7, abs=1e-8)
    y = 0.7 * x + 2.0 + rng.normal(0, 0.2, 200)
    # with noise the knee of a straight line is arbitrary; a wide min_side keeps both slopes well determined
    noisy = hinge_fit(x, y, min_side=40)
    assert abs(noisy["slope_below"] - noisy["slope_above"]) < 0.25
    assert abs(noisy["slope_below"] - 0.7) < 0.15
    b = hinge_bootstrap(x, y, n_boot=500)  # default min_side: the knee may sit at an edge, the CI still says no bend
    assert b["slope_change_ci_low"] < 0 < b["slope_change_ci_high"]


def test_hinge_bootstrap_ci_covers_truth_and_detects_the_bend():
    x, y = _hinge_data()
    b = hinge_bootstrap(x, y, n_boot=500, seed=0)
    point = hinge_fit(x, y)
    for k in point:
        assert b[k] == point[k]
    assert b["knee_ci_low"] <= -3.0 <= b["knee_ci_high"]
    assert b["knee_ci_high"] - b["knee_ci_low"] < 1.0
    assert b["slope_below_ci_low"] <= -1.5 <= b["slope_below_ci_high"]
    assert b["slope_above_ci_low"] <= 0.0 <= b["slope_above_ci_high"]
    assert b["slope_change"] == pytest.approx(b["slope_above"] - b["slope_below"])
    assert b["slope_change_ci_low"] > 0  # a real bend
    assert b["n"] == 200 and b["n_boot"] == 500 and b["n_boot_valid"] == 500
    for k in ("knee", "slope_below", "slope_above", "slope_change"):
        assert b[f"{k}_ci_low"] <= b[k] <= b[f"{k}_ci_high"]


def test_hinge_bootstrap_deterministic_for_fixed_seed():
    x, y = _hinge_data(n=60, seed=5)
    a = hinge_bootstrap(x, y, n_boot=200, seed=7)
    assert a == hinge_bootstrap(x, y, n_boot=200, seed=7)
    assert a["knee_ci_low"] != hinge_bootstrap(x, y, n_boot=200, seed=8)["knee_ci_low"]


@pytest.mark.parametrize(
    ("x", "y", "kwargs", "match"),
    [
        (np.arange(20.0), np.arange(19.0), {}, "differ in length"),
        (np.r_[np.arange(19.0), np.nan], np.arange(20.0), {}, "non-finite"),
        (np.arange(20.0), np.r_[np.arange(19.0), np.inf], {}, "non-finite"),
        (np.arange(10.0), np.arange(10.0), {}, "at least 2\\*min_side\\+1"),
        (np.r_[np.zeros(10), np.ones(10)], np.arange(20.0), {}, "3 distinct"),
        (np.arange(20.0).reshape(4, 5), np.arange(20.0).reshape(4, 5), {}, "1-D"),
        (np.arange(20.0), np.arange(20.0), {"min_side": 0}, "min_side"),
        (np.arange(20.0), np.arange(20.0), {"knots": [1.0, np.nan]}, "knots"),
        (np.arange(20.0), np.arange(20.0), {"knots": []}, "knots is empty"),
        (np.arange(20.0), np.arange(20.0), {"knots": [100.0]}, "no knot"),
    ],
)
def test_hinge_bad_inputs_raise(x, y, kwargs, match):
    with pytest.raises(ValueError, match=match):
        hinge_fit(x, y, **kwargs)
    with pytest.raises(ValueError, match=match):
        hinge_bootstrap(x, y, n_boot=10, **kwargs)


def test_hinge_bootstrap_bad_level_raises():
    x, y = _hinge_data(n=40)
    with pytest.raises(ValueError, match="level"):
        hinge_bootstrap(x, y, level=1.5)
    with pytest.raises(ValueError, match="n_boot"):
        hinge_bootstrap(x, y, n_boot=0)


def test_spearman_ci_strong_relation_excludes_zero():
    rng = np.random.default_rng(2)
    x = rng.uniform(-6, 0, 100)
    y = np.exp(-x) + rng.normal(0, 0.5, 100)  # decreasing, non-linear
    r = spearman_ci(x, y)
    assert r["rho"] == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    assert r["rho"] < -0.8
    assert r["ci_low"] <= r["rho"] <= r["ci_high"] < 0
    assert r["n"] == 100


def test_spearman_ci_independent_covers_zero():
    rng = np.random.default_rng(4)
    r = spearman_ci(rng.normal(size=150), rng.normal(size=150), n_boot=800)
    assert r["ci_low"] < 0 < r["ci_high"]


def test_spearman_ci_degenerate_returns_nan():
    for x, y, n in [
        ([1.0, 2, 3, 4], [1.0, 3, 2, 4], 4),
        (np.ones(10), np.arange(10.0), 10),
        (np.arange(8.0), [2.0] * 8, 8),
    ]:
        r = spearman_ci(x, y)
        assert math.isnan(r["rho"]) and math.isnan(r["ci_low"]) and math.isnan(r["ci_high"])
        assert r["n"] == n
    with pytest.raises(ValueError, match="differ in length"):
        spearman_ci(np.arange(6.0), np.arange(7.0))


def test_spearman_ci_deterministic():
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=40), rng.normal(size=40)
    assert spearman_ci(x, y, seed=3) == spearman_ci(x, y, seed=3)


def _k_frame(seed=0, n=60):
    rng = np.random.default_rng(seed)
    parts = []
    for k in (4, 1, 3, 2):  # unsorted on purpose
        x = rng.uniform(-6, 0, n)
        y = -1.2 * x + rng.normal(0, 1.0, n) if k >= 3 else rng.normal(0, 1.0, n)
        parts.append(pd.DataFrame({"k": k, "log10_p_before": x, "log_s_prime": y}))
    return pd.concat(parts, ignore_index=True)


def test_smallest_k_picks_first_k_with_a_relation():
    table, k_min = smallest_k(_k_frame(), n_boot=500)
    assert k_min == 3
    assert list(table["k"]) == [1, 2, 3, 4]
    assert list(table.columns) == ["k", "rho", "ci_low", "ci_high", "n", "holds"]
    assert list(table["holds"]) == [False, False, True, True]
    assert (table["n"] == 60).all()
    assert (table.loc[table["k"] >= 3, "rho"] < -0.6).all()


def test_smallest_k_none_and_missing_column():
    frame = _k_frame()
    frame = frame[frame["k"] < 3]
    table, k_min = smallest_k(frame, n_boot=300)
    assert k_min is None and len(table) == 2
    with pytest.raises(ValueError, match="lacks column"):
        smallest_k(frame.rename(columns={"log_s_prime": "y"}))


def test_geometric_ratio_ci_same_distribution_covers_one():
    rng = np.random.default_rng(8)
    r = geometric_ratio_ci(rng.lognormal(0.3, 0.8, 80), rng.lognormal(0.3, 0.8, 120))
    assert r["ci_low"] < 1.0 < r["ci_high"]
    assert r["n_treated"] == 80 and r["n_reference"] == 120


def test_geometric_ratio_ci_detects_a_twofold_shift():
    rng = np.random.default_rng(9)
    treated = 2.0 * rng.lognormal(0.0, 0.5, 100)
    reference = rng.lognormal(0.0, 0.5, 100)
    r = geometric_ratio_ci(treated, reference)
    assert r["ratio"] == pytest.approx(math.exp(np.log(treated).mean() - np.log(reference).mean()))
    assert 1.0 < r["ci_low"] <= r["ratio"] <= r["ci_high"]
    assert abs(r["ratio"] - 2.0) < 0.4
    assert r == geometric_ratio_ci(treated, reference)


def test_geometric_ratio_ci_bad_and_empty_inputs():
    with pytest.raises(ValueError, match="non-positive"):
        geometric_ratio_ci([1.0, 0.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="non-positive"):
        geometric_ratio_ci([1.0, 2.0], [-1.0])
    with pytest.raises(ValueError, match="non-finite"):
        geometric_ratio_ci([1.0, np.nan], [1.0])
    with pytest.raises(ValueError, match="non-finite"):
        geometric_ratio_ci([1.0], [np.inf])
    r = geometric_ratio_ci([], [1.0, 2.0])
    assert math.isnan(r["ratio"]) and math.isnan(r["ci_low"]) and math.isnan(r["ci_high"])
    assert r["n_treated"] == 0 and r["n_reference"] == 2
