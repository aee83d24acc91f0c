"""Covariate regression of density on familiarity (probes/density_regression.py): recovery of a known
slope, CR1 standard errors against a hand-computed sandwich, the absorbed share, degenerate inputs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from densitylab.probes.density_regression import COLUMNS, density_regression, write_density_regression

SLOPE = 0.01  # true change in the metric per doubling of 1 + distinct_docs


def _positions(
    n_persons: int = 40,
    per_person: int = 12,
    seed: int = 0,
    roles=("name_last", "pre_value"),
    input_driven: bool = False,
) -> pd.DataFrame:
    """Synthetic density_positions rows: panel persons with per-person random offsets, plus noise rows
    (another probe set, person -1) that must be ignored."""
    rng = np.random.default_rng(seed)
    docs = rng.integers(0, 200, n_persons)
    mentions = docs * 3 + rng.integers(0, 3, n_persons)
    offset = rng.normal(0.0, 0.01, n_persons)
    person = np.repeat(np.arange(n_persons), per_person)
    n = person.size
    role = rng.choice(list(roles), n)
    if input_driven:
        # name token count ~ proportional to the person's mentions (what happens at name positions)
        input_count = np.round(mentions[person] * rng.lognormal(0.0, 0.3, n)).astype(np.int64)
    else:
        input_count = rng.integers(0, 5000, n)
    target_count = rng.integers(0, 5000, n)
    pos = rng.integers(0, 128, n)
    doc_initial = rng.random(n) < 0.3
    driver = np.log2(1 + input_count) if input_driven else np.log2(1 + docs[person])
    y = (
        0.3
        + SLOPE * driver
        + 0.002 * np.log2(1 + target_count)
        + 0.02 * (role == "pre_value")
        + 0.0001 * pos
        - 0.01 * doc_initial
        + offset[person]
        + rng.normal(0.0, 0.01, n)
    )
    df = pd.DataFrame(
        {
            "step": 100,
            "probe_set": "panel",
            "row": person,
            "pos": pos,
            "role": role,
            "person": person,
            "subject": person,
            "mentioned": person,
            "doc_initial": doc_initial,
            "distinct_docs": docs[person],
            "subject_docs": docs[person],
            "mentions": mentions[person],
            "comentions": 0,
            "input_count": input_count,
            "target_count": target_count,
            "window_trained": 0,
            "L0/active_frac_live": y.astype(np.float32),
            "L1/active_frac_live": (y + 0.05).astype(np.float32),
            "L0/hoyer": np.float32(0.5),
        }
    )
    noise = df.head(30).copy()
    noise["probe_set"] = "seen"
    noise["L0/active_frac_live"] = np.float32(9.0)
    none = df.head(30).copy()
    none["person"] = -1
    none["distinct_docs"] = -1
    none["L0/active_frac_live"] = np.float32(-9.0)
    nan = df.head(5).copy()
    nan["L0/active_frac_live"] = np.nan
    return pd.concat([df, noise, none, nan], ignore_index=True)


def _cr1_se(y, X, groups):
    """CR1 cluster-robust standard errors by hand: G/(G-1)·(N-1)/(N-K)·(X'X)⁻¹ Σ_g X_g'e_g e_g'X_g (X'X)⁻¹."""
    n, k = X.shape
    beta = np.linalg.solve(X.T @ X, X.T @ y)
    e = y - X @ beta
    bread = np.linalg.inv(X.T @ X)
    uniq = np.unique(groups)
    meat = np.zeros((k, k))
    for g in uniq:
        s = X[groups == g].T @ e[groups == g]
        meat += np.outer(s, s)
    G = len(uniq)
    c = G / (G - 1) * (n - 1) / (n - k)
    return beta, np.sqrt(np.diag(c * bread @ meat @ bread))


def test_recovers_slope_and_matches_hand_cr1():
    pos = _positions()
    out = density_regression(pos)
    assert list(out.columns) == COLUMNS
    assert set(out["layer"]) == {0, 1} and set(out["model"]) == {"with_input_count", "without_input_count", "absorbed"}
    w = out[(out["layer"] == 0) & (out["model"] == "with_input_count")].set_index("term")
    assert list(w.index) == [
        "log2_1p_distinct_docs",
        "log2_1p_target_count",
        "log2_1p_input_count",
        "role[pre_value]",
        "pos",
        "doc_initial",
        "Intercept",
    ]
    row = w.loc["log2_1p_distinct_docs"]
    assert row["ci_low"] <= SLOPE <= row["ci_high"]
    assert abs(row["coef"] - SLOPE) < 0.003
    assert row["p_value"] < 1e-6
    assert (w["n_entities"] == 40).all() and (w["df"] == 39).all() and (w["n"] == 40 * 12).all()
    assert (w["note"] == "").all()

    # hand-computed CR1 on the same rows (panel, person >= 0, finite L0 value)
    sub = pos[(pos["probe_set"] == "panel") & (pos["person"] >= 0)]
    sub = sub[np.isfinite(sub["L0/active_frac_live"])]
    y = sub["L0/active_frac_live"].to_numpy(np.float64)
    X = np.column_stack(
        [
            np.log2(1 + sub["distinct_docs"].to_numpy(float)),
            np.log2(1 + sub["target_count"].to_numpy(float)),
            np.log2(1 + sub["input_count"].to_numpy(float)),
            (sub["role"] == "pre_value").to_numpy(float),
            sub["pos"].to_numpy(float),
            sub["doc_initial"].to_numpy(float),
            np.ones(len(sub)),
        ]
    )
    beta, se = _cr1_se(y, X, sub["person"].to_numpy())
    np.testing.assert_allclose(w["coef"].to_numpy(), beta, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(w["se"].to_numpy(), se, rtol=1e-8, atol=0)
    # intervals and p-values are t on G - 1 = 39 df
    h = stats.t.ppf(0.975, 39) * se
    np.testing.assert_allclose(w["ci_low"].to_numpy(), beta - h, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(w["ci_high"].to_numpy(), beta + h, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(w["p_value"].to_numpy(), 2 * stats.t.sf(np.abs(beta / se), 39), rtol=1e-6)

    wo = out[(out["layer"] == 0) & (out["model"] == "without_input_count")]
    assert "log2_1p_input_count" not in set(wo["term"]) and len(wo) == 6
    ab = out[(out["layer"] == 0) & (out["model"] == "absorbed")]
    assert len(ab) == 1 and ab["term"].iloc[0] == "log2_1p_distinct_docs"
    c_w = row["coef"]
    c_wo = wo.set_index("term").loc["log2_1p_distinct_docs", "coef"]
    assert ab["coef"].iloc[0] == pytest.approx((c_wo - c_w) / c_wo)
    assert abs(ab["coef"].iloc[0]) < 0.2  # input_count independent of exposure here: nothing to absorb
    assert ab[["se", "ci_low", "ci_high", "p_value", "df"]].isna().all(axis=None)


def test_level_widens_interval():
    pos = _positions()
    a = density_regression(pos, level=0.8).query("model == 'with_input_count' and layer == 0")
    b = density_regression(pos, level=0.99).query("model == 'with_input_count' and layer == 0")
    assert ((b["ci_high"] - b["ci_low"]).to_numpy() > (a["ci_high"] - a["ci_low"]).to_numpy()).all()


def test_collinear_input_count_absorbs_exposure():
    out = density_regression(_positions(input_driven=True, n_persons=60))
    ab = out[(out["model"] == "absorbed") & (out["layer"] == 0)]["coef"].iloc[0]
    assert ab > 0.7
    wo = out[(out["model"] == "without_input_count") & (out["layer"] == 0)].set_index("term")
    assert wo.loc["log2_1p_distinct_docs", "ci_low"] > 0  # the proxy picks up the effect on its own


def test_single_role_does_not_crash():
    pos = _positions(roles=("name_last",))
    pos["doc_initial"] = False
    out = density_regression(pos)
    w = out[(out["model"] == "with_input_count") & (out["layer"] == 0)]
    assert not any(t.startswith("role[") for t in w["term"]) and "doc_initial" not in set(w["term"])
    assert "single role 'name_last'" in w["note"].iloc[0] and "doc_initial dropped" in w["note"].iloc[0]
    assert np.isfinite(w["coef"]).all() and np.isfinite(w["se"]).all()
    # asking for one role only: no role term, and no note about it
    one = density_regression(pos, roles=("name_last",))
    assert "single role" not in one["note"].iloc[0]


def test_two_persons_insufficient():
    out = density_regression(_positions(n_persons=2))
    fits = out[out["model"] != "absorbed"]
    assert fits["note"].str.startswith("insufficient").all()
    assert fits[["coef", "se", "ci_low", "ci_high", "p_value", "df"]].isna().all(axis=None)
    assert (out["n_entities"] == 2).all()
    assert out[out["model"] == "absorbed"]["coef"].isna().all()
    # no rows at all for the probe set: insufficient too, not an exception
    empty = density_regression(_positions(), probe_set="missing_set")
    assert (empty["n"] == 0).all() and empty["coef"].isna().all()


def test_bad_arguments_raise():
    pos = _positions()
    with pytest.raises(ValueError, match="metric 'nope'.*expected one of.*active_frac_live"):
        density_regression(pos, metric="nope")
    with pytest.raises(ValueError, match="unknown role.*'boss'"):
        density_regression(pos, roles=("name_last", "boss"))
    with pytest.raises(ValueError, match=r"lacks column.*'input_count'"):
        density_regression(pos.drop(columns="input_count"))
    with pytest.raises(ValueError, match="level"):
        density_regression(pos, level=1.5)


def test_write_density_regression(tmp_path):
    assert write_density_regression(tmp_path) is None
    (tmp_path / "probes").mkdir()
    _positions().to_parquet(tmp_path / "probes" / "density_positions.parquet", index=False)
    path = write_density_regression(tmp_path)
    assert path == tmp_path / "probes" / "density_regression.parquet"
    back = pd.read_parquet(path)
    assert list(back.columns) == COLUMNS and len(back) == 2 * (7 + 6 + 1)
