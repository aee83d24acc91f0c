"""Statistics for probes: familiarity buckets, and means / OLS slopes with confidence intervals that
treat **windows** as the unit of replication (positions in one window are not independent).

Cluster-robust (Liang & Zeger 1986) standard errors with a t quantile on ``k - 1`` degrees of freedom,
``k`` = number of windows contributing. With fewer than two windows the interval is (-inf, inf): no
information about the spread, but still an interval that contains the estimate.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats


def bucketize(counts: np.ndarray) -> np.ndarray:
    """Familiarity bucket ``floor(log2(1 + count))`` of each count (int64; negative counts -> -1).

    So bucket 0 = never seen, 1 = seen once, 2 = 2-3 times, 3 = 4-7 times, ...
    """
    c = np.asarray(counts, dtype=np.int64)
    out = np.full(c.shape, -1, dtype=np.int64)
    ok = c >= 0
    # exact integer log2: bit_length(1 + c) - 1
    out[ok] = np.frexp((1 + c[ok]).astype(np.float64))[1] - 1
    return out


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


def cluster_ols_slope(
    x: np.ndarray, y: np.ndarray, clusters: np.ndarray, level: float = 0.95
) -> tuple[float, float, float, int, int]:
    """OLS slope of ``y`` on ``x`` with a cluster-robust (sandwich) CI.

    Returns:
        ``(slope, ci_low, ci_high, n, k)``; NaN slope when ``x`` has no variance or n < 2.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n = x.size
    uniq, inv = np.unique(np.asarray(clusters), return_inverse=True)
    k = len(uniq)
    xc = x - x.mean() if n else x
    sxx = float((xc**2).sum()) if n else 0.0
    if n < 2 or sxx <= 1e-12:
        return math.nan, math.nan, math.nan, n, k
    slope = float((xc * (y - y.mean())).sum() / sxx)
    if k < 2:
        return slope, -math.inf, math.inf, n, k
    e = (y - y.mean()) - slope * xc
    score = np.bincount(inv, weights=xc * e, minlength=k)
    se = math.sqrt(k / (k - 1) * float((score**2).sum())) / sxx
    h = _t(k, level) * se
    return slope, slope - h, slope + h, n, k


def diff_ci(
    a: tuple[float, float, float, int, int], b: tuple[float, float, float, int, int], level: float = 0.95
) -> tuple[float, float, float]:
    """Difference ``a - b`` of two independent :func:`cluster_mean_ci` results with a CI (Welch-style:
    standard errors recovered from each interval, t on ``min(k_a, k_b) - 1`` degrees of freedom)."""
    (ma, la, ha, _, ka), (mb, lb, hb, _, kb) = a, b
    if math.isnan(ma) or math.isnan(mb):
        return math.nan, math.nan, math.nan
    if ka < 2 or kb < 2:
        return ma - mb, -math.inf, math.inf
    se = math.hypot((ha - la) / (2 * _t(ka, level)), (hb - lb) / (2 * _t(kb, level)))
    h = _t(min(ka, kb), level) * se
    return ma - mb, ma - mb - h, ma - mb + h
