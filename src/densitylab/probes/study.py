"""Statistics of the familiarity study: the within-person effect and pre-registered verdicts (issue 16, first part).

The study trains K counterbalanced corpora in which the same panel persons take different exposure levels (a Latin
square), so the familiarity effect can be read **within person**: density (or recall) of person i in run r regressed
on the exposure level with person and run fixed effects, persons as clusters (:func:`within_person_effect`). Each
claim then gets one verdict from its primary estimate's confidence interval at a Holm-adjusted level over the family
of claims measured (:func:`verdict_table`), decided in this order (design §8 of the project's rules):

- ``negligible``: the CI lies inside ±SESOI (the pre-registered smallest effect size of interest);
- ``supported``: the CI excludes 0 in the predicted direction;
- ``contradicted``: the CI excludes 0 in the other direction;
- ``inconclusive``: otherwise (the CI's half-width says how far from a decision);
- ``not measured``: no estimate.

Holm's step-down procedure (Holm 1979, "A simple sequentially rejective multiple test procedure"): with the m
p-values sorted, the claim of rank r is tested at α / (m − r + 1) while every claim before it was rejected; from the
first claim retained on, every later claim keeps that claim's level (the procedure stops there, so their intervals
are at least as wide as Holm's own). The verdicts' ``supported`` / ``contradicted`` then agree with Holm-adjusted
p-values below α.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

#: The verdicts, in the order they are decided.
VERDICTS = ("negligible", "supported", "contradicted", "inconclusive", "not measured")


def _demean_two_way(values: np.ndarray, a: np.ndarray, b: np.ndarray, tol: float = 1e-12, max_iter: int = 1000):
    """Residuals of ``values`` (n, k) after person and run fixed effects (alternating projections; exact in one
    sweep for a balanced design)."""
    v = values.astype(np.float64).copy()
    na, nb = int(a.max()) + 1, int(b.max()) + 1
    ca, cb = np.bincount(a, minlength=na)[:, None], np.bincount(b, minlength=nb)[:, None]
    for _ in range(max_iter):
        ma = np.stack([np.bincount(a, weights=v[:, j], minlength=na) for j in range(v.shape[1])], 1) / ca
        v -= ma[a]
        mb = np.stack([np.bincount(b, weights=v[:, j], minlength=nb) for j in range(v.shape[1])], 1) / cb
        v -= mb[b]
        if np.abs(mb).max() < tol:
            break
    return v


def within_person_effect(
    y: np.ndarray, x: np.ndarray, person: np.ndarray, run: np.ndarray, level: float = 0.95
) -> dict[str, float | int]:
    """The within-person effect β of ``x`` on ``y``: OLS of y on x with person and run fixed effects, standard
    errors cluster-robust by person (CR1; Cameron & Miller 2015), t on persons − 1 degrees of freedom.

    The fixed effects are absorbed (two-way demeaning); the person effects are nested in the person clusters, so
    the small-sample factor counts x and the run effects only (Stata's convention for nested fixed effects):
    V = G/(G − 1) · (n − 1)/(n − 1 − (R − 1)) · (x̃ᵀx̃)⁻² Σ_g (Σ_{i∈g} x̃_i ũ_i)². Equal to the coefficient of
    ``y ~ x + C(person) + C(run)`` (tested against statsmodels).

    Args:
        y: (n,) outcome per (person, run) observation (e.g. a person's mean ``active_frac_live`` at ``pre_value``).
        x: (n,) exposure (e.g. log2(1 + distinct_docs) or an exposure-level code).
        person, run: (n,) ids.
        level: confidence level.
    Returns:
        ``beta, se, ci_low, ci_high, t, p_value, df, n, n_persons, n_runs``; NaNs when x does not vary within
        persons or fewer than two persons vary. Persons observed once (e.g. when a corpus run is missing) are left
        out before the fit: they carry no within-person information, and counting them would overstate G and df.
    """
    y, x = np.asarray(y, dtype=np.float64), np.asarray(x, dtype=np.float64)
    ok = np.isfinite(y) & np.isfinite(x)
    person = np.asarray(person)
    if ok.any():  # a person observed once carries no within-person information: left out (not counted in G)
        _, inv, counts = np.unique(person[ok], return_inverse=True, return_counts=True)
        ok[np.flatnonzero(ok)[counts[inv] < 2]] = False
    y, x = y[ok], x[ok]
    _, pid = np.unique(person[ok], return_inverse=True)
    _, rid = np.unique(np.asarray(run)[ok], return_inverse=True)
    n, G, R = len(y), int(pid.max()) + 1 if len(y) else 0, int(rid.max()) + 1 if len(y) else 0
    out = {"beta": math.nan, "se": math.nan, "ci_low": math.nan, "ci_high": math.nan, "t": math.nan}
    out.update({"p_value": math.nan, "df": max(G - 1, 0), "n": n, "n_persons": G, "n_runs": R})
    if n == 0:
        return out
    res = _demean_two_way(np.column_stack([y, x]), pid, rid)
    yt, xt = res[:, 0], res[:, 1]
    sxx = float(xt @ xt)
    if sxx <= 1e-12 * max(1.0, float(x @ x)) or G < 2:
        return out
    beta = float(xt @ yt) / sxx
    u = yt - beta * xt
    score = np.bincount(pid, weights=xt * u, minlength=G)
    k = 1 + (R - 1)
    factor = G / (G - 1) * (n - 1) / max(n - k, 1)
    se = math.sqrt(factor * float(score @ score)) / sxx
    t = beta / se if se > 0 else math.inf
    h = float(stats.t.ppf(0.5 + level / 2, G - 1)) * se
    p = float(2 * stats.t.sf(abs(t), G - 1))
    out.update({"beta": beta, "se": se, "ci_low": beta - h, "ci_high": beta + h, "t": t, "p_value": p})
    return out


def decide(ci_low: float, ci_high: float, sesoi: float, predicted_sign: int) -> str:
    """One claim's verdict from its (adjusted-level) CI, in the order of :data:`VERDICTS`.

    Args:
        ci_low, ci_high: the interval (NaN: ``not measured``).
        sesoi: the smallest effect size of interest (> 0, the endpoint's units).
        predicted_sign: +1 or −1; 0 for an **equivalence** claim ("matches": the claim predicts ``negligible``), for
            which only an interval wholly outside ±SESOI is ``contradicted`` (one excluding 0 but overlapping the
            SESOI band is ``inconclusive``).
    Raises:
        ValueError: for a SESOI <= 0 or a sign other than −1, 0, +1.
    """
    if not (sesoi > 0):
        raise ValueError(f"sesoi={sesoi!r}: expected a number > 0")
    if predicted_sign not in (1, 0, -1):
        raise ValueError(f"predicted_sign={predicted_sign!r}: expected +1, -1 or 0 (an equivalence claim)")
    if not (math.isfinite(ci_low) and math.isfinite(ci_high)):
        return "not measured"
    if -sesoi < ci_low and ci_high < sesoi:
        return "negligible"
    if predicted_sign == 0:  # non-equivalence is shown only by an interval wholly outside ±SESOI
        return "contradicted" if (ci_low >= sesoi or ci_high <= -sesoi) else "inconclusive"
    if (predicted_sign > 0 and ci_low > 0) or (predicted_sign < 0 and ci_high < 0):
        return "supported"
    if (predicted_sign > 0 and ci_high < 0) or (predicted_sign < 0 and ci_low > 0):
        return "contradicted"
    return "inconclusive"


def holm_levels(p_values: Sequence[float], alpha: float = 0.05) -> np.ndarray:
    """Per-claim significance levels of Holm's step-down procedure (see the module docstring); NaN p-values (claims
    not measured) are left out of the family and get NaN.

    Returns:
        (m,) the α each claim's interval is computed at (1 − α is its confidence level).
    """
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, math.nan)
    idx = np.flatnonzero(np.isfinite(p))
    m = len(idx)
    stopped = None
    for r, i in enumerate(idx[np.argsort(p[idx], kind="stable")], start=1):
        a = alpha / (m - r + 1) if stopped is None else stopped
        out[i] = a
        if stopped is None and not p[i] < a:
            stopped = a
    return out


#: Columns :func:`verdict_table` needs, and those it adds.
VERDICT_INPUT = ["claim", "endpoint", "estimate", "se", "df", "n_persons", "n_runs", "sesoi", "predicted_sign", "unit"]
VERDICT_COLUMNS = [*VERDICT_INPUT, "p_value", "p_holm", "level", "ci_low", "ci_high", "half_width", "verdict"]


def verdict_table(claims: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """The verdict of every claim (:data:`VERDICT_COLUMNS`).

    Each measured claim (finite ``estimate`` and ``se``) gets its two-sided t p-value on ``df`` degrees of freedom,
    the Holm-adjusted p-value over the measured claims (``statsmodels.stats.multitest.multipletests``), its
    interval at the Holm step-down level (:func:`holm_levels`) and the verdict (:func:`decide`); a claim without an
    estimate is ``not measured``.

    Args:
        claims: one row per claim with :data:`VERDICT_INPUT` (``unit``: what a replicate is: persons, windows,
            runs).
        alpha: the family-wise error rate.
    Raises:
        ValueError: for a missing column or a bad SESOI / sign (:func:`decide`).
    """
    from statsmodels.stats.multitest import multipletests

    missing = [c for c in VERDICT_INPUT if c not in claims]
    if missing:
        raise ValueError(f"verdict_table: columns {missing} are missing: expected {VERDICT_INPUT}")
    df = claims[VERDICT_INPUT].copy().reset_index(drop=True)
    est, se, dof = (df[c].to_numpy(np.float64) for c in ("estimate", "se", "df"))
    measured = np.isfinite(est) & np.isfinite(se) & (se >= 0) & np.isfinite(dof) & (dof >= 1)
    p = np.full(len(df), math.nan)
    with np.errstate(divide="ignore", invalid="ignore"):  # se == 0: an exact estimate (p 0, or 1 at exactly 0)
        t = np.where(se[measured] > 0, np.abs(est[measured]) / se[measured], np.where(est[measured] == 0, 0, np.inf))
    p[measured] = 2 * stats.t.sf(t, dof[measured])
    p_holm = np.full(len(df), math.nan)
    if measured.any():
        p_holm[measured] = multipletests(p[measured], alpha=alpha, method="holm")[1]
    levels = holm_levels(p, alpha)
    lo, hi = np.full(len(df), math.nan), np.full(len(df), math.nan)
    for i in np.flatnonzero(measured):
        h = float(stats.t.ppf(1 - levels[i] / 2, dof[i])) * se[i]
        lo[i], hi[i] = est[i] - h, est[i] + h
    df["p_value"], df["p_holm"], df["level"] = p, p_holm, 1 - levels
    df["ci_low"], df["ci_high"], df["half_width"] = lo, hi, (hi - lo) / 2
    df["verdict"] = [
        decide(lo[i], hi[i], float(df["sesoi"].iloc[i]), int(df["predicted_sign"].iloc[i])) for i in range(len(df))
    ]
    return df[VERDICT_COLUMNS]
