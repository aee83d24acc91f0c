"""Statistics for probes: means and OLS coefficients with cluster-robust confidence intervals.

Cluster-robust (Liang & Zeger 1986) standard errors with a t quantile on ``k - 1`` degrees of freedom,
``k`` = number of clusters contributing. The familiarity endpoints use **persons** as clusters (design §8):
positions of one person, even in different windows, are not independent replicates. Descriptive whole-set
means use windows. With fewer than two clusters the interval is (-inf, inf) (:func:`cluster_mean_ci`) or NaN
(:func:`cr1_ols`).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats


def _t(k: int, level: float) -> float:
    return float(stats.t.ppf(0.5 + level / 2, k - 1)) if k >= 2 else math.inf


def cluster_mean_ci(
    values: np.ndarray, clusters: np.ndarray, level: float = 0.95
) -> tuple[float, float, float, int, int]:
    """Mean of ``values`` with a cluster-robust CI.

    Args:
        values: (n,) per-position values.
        clusters: (n,) cluster (window) id of each value.
        level: confidence level.
    Returns:
        ``(mean, ci_low, ci_high, n, k)``: position-weighted mean, interval, positions, clusters.
        NaNs everywhere when ``n == 0``.
    """
    v = np.asarray(values, dtype=np.float64)
    n = v.size
    if n == 0:
        return math.nan, math.nan, math.nan, 0, 0
    mean = float(v.mean())
    uniq, inv = np.unique(np.asarray(clusters), return_inverse=True)
    k = len(uniq)
    if k < 2:
        return mean, -math.inf, math.inf, n, k
    resid = np.bincount(inv, weights=v - mean, minlength=k)
    se = math.sqrt(k / (k - 1) * float((resid**2).sum())) / n
    h = _t(k, level) * se
    return mean, mean - h, mean + h, n, k


def cr1_ols(
    X: np.ndarray, y: np.ndarray, clusters: np.ndarray, level: float = 0.95
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int, int]:
    """OLS of ``y`` on the columns of ``X`` with the CR1 cluster-robust covariance (Liang & Zeger 1986;
    the small-sample factor of Stata and statsmodels, Cameron & Miller 2015, "A Practitioner's Guide to
    Cluster-Robust Inference"):

        V = G/(G − 1) · (n − 1)/(n − p) · (XᵀX)⁻¹ (Σ_g X_gᵀ u_g u_gᵀ X_g) (XᵀX)⁻¹,

    with t intervals on G − 1 degrees of freedom (G = clusters). In the probes the clusters are
    **persons** (design §8), so an interval reflects how many people, not how many positions, carry an
    estimate.

    Args:
        X: (n, p) float design matrix (include a column of ones for an intercept).
        y: (n,) float responses.
        clusters: (n,) cluster id of each row.
        level: confidence level.
    Returns:
        ``(beta, se, ci_low, ci_high, n, G)``: (p,) arrays and the rows and clusters used. With G < 2, or
        a rank-deficient X, the se/CI entries are NaN (beta NaN too when X is rank deficient).
    """
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n, p = X.shape
    uniq, inv = np.unique(np.asarray(clusters), return_inverse=True)
    G = len(uniq)
    nan = np.full(p, math.nan)
    if n <= p or np.linalg.matrix_rank(X) < p:
        return nan, nan.copy(), nan.copy(), nan.copy(), n, G
    xtx_inv = np.linalg.inv(X.T @ X)
    beta = xtx_inv @ (X.T @ y)
    if G < 2:
        return beta, nan.copy(), nan.copy(), nan.copy(), n, G
    u = y - X @ beta
    Xu = X * u[:, None]
    scores = np.stack([np.bincount(inv, weights=Xu[:, j], minlength=G) for j in range(p)], axis=1)
    meat = scores.T @ scores
    V = (G / (G - 1)) * ((n - 1) / (n - p)) * (xtx_inv @ meat @ xtx_inv)
    se = np.sqrt(np.clip(np.diag(V), 0.0, None))
    h = _t(G, level) * se
    return beta, se, beta - h, beta + h, n, G


def cluster_proportion_ci(
    values: np.ndarray, clusters: np.ndarray, level: float = 0.95
) -> tuple[float, float, float, int, int]:
    """A proportion (mean of 0/1 ``values``) with a cluster-aware interval inside [0, 1]: the Wilson score
    interval on the design-effect effective sample size n_eff = p(1 − p) / se², se the CR1 standard error of
    :func:`cluster_mean_ci`, capped at n, with the t quantile on k − 1 degrees of freedom for z (Kish 1965's
    design effect; Korn & Graubard 1998, "Confidence intervals for proportions with small expected number of
    positive counts estimated from survey data"; Dean & Pagano 2015, "Evaluating confidence interval methods for
    binomial proportions in clustered surveys"). Where the design effect cannot be estimated (p = 0 or 1, or
    se = 0) n_eff = n, as if the items were independent: the interval then follows the item count and stays
    monotone in p. Unlike the CR1 interval it never leaves [0, 1] and never has zero width at p = 0 or 1 (15
    persons × 5 items all right: [0.94, 1]).

    Args:
        values: (n,) 0/1 (bool or float) per item.
        clusters: (n,) cluster (person) id of each item.
        level: confidence level.
    Returns:
        ``(p, ci_low, ci_high, n, k)``; ``(p, 0, 1, n, k)`` with fewer than two clusters; NaNs when n == 0.
    """
    p, lo, hi, n, k = cluster_mean_ci(values, clusters, level)
    if n == 0:
        return p, lo, hi, n, k
    if k < 2:
        return p, 0.0, 1.0, n, k
    z = _t(k, level)
    se = (hi - p) / z
    n_eff = float(n) if p <= 0.0 or p >= 1.0 or se <= 0 else min(float(n), p * (1 - p) / se**2)
    d = 1 + z * z / n_eff
    center = (p + z * z / (2 * n_eff)) / d
    half = z * math.sqrt(p * (1 - p) / n_eff + z * z / (4 * n_eff * n_eff)) / d
    return p, max(0.0, center - half), min(1.0, center + half), n, k
