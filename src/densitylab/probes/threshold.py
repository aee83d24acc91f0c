"""Statistics of the priming threshold: a hinge (broken-stick) fit of priming on prior probability.

Sun et al. 2025, "How new data permeates LLM knowledge and how to dilute it", arXiv:2504.09522: after a model
learns a new text, the priming score of its keyword, S_prime = P_after / P_before (the keyword's probability in
unrelated contexts after vs. before learning), is predictable from the keyword's probability before learning,
P_before, with a threshold near P_before ≈ 1e-3: keywords rarer than that prime strongly, commoner ones barely.

Per fact (one point each; facts are the independent units, and every bootstrap here resamples facts):

- ``x = log10 P_before`` (decades; the knee is reported in these units, so a knee of -3 is P_before = 1e-3);
- ``y = ln S_prime`` (**natural** log; slopes are ln S_prime per decade of P_before).

:func:`hinge_fit` fits the continuous hinge y = a + b_below·min(x − c, 0) + b_above·max(x − c, 0) with the knee
c found by grid search; :func:`hinge_bootstrap` adds percentile bootstrap intervals. :func:`spearman_ci` and
:func:`smallest_k` give the rank correlation per condition k (e.g. the number of times a text was learned) and
the smallest k where it holds; :func:`geometric_ratio_ci` compares two samples of positive ratios (e.g. S_mem of
held-out control facts vs. of the control facts used for the drift correction).

Every fit for a given knot is closed-form: the 3 × 3 normal equations are built from prefix sums over the facts
sorted by x (weighted by bootstrap counts), so a whole bootstrap is a few array operations per replicate block.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

N_KNOTS = 201
# replicate blocks are sized so that one block holds about this many float64 cells per array
_BLOCK_CELLS = 2_000_000


def _check_level(level: float, n_boot: int) -> None:
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level!r}")
    if int(n_boot) != n_boot or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")


def _percentile_ci(reps: np.ndarray, level: float) -> tuple[float, float]:
    """Percentile interval over the finite replicates of ``reps`` (B,); NaNs when none is finite."""
    r = np.asarray(reps, dtype=np.float64)
    r = r[np.isfinite(r)]
    if r.size == 0:
        return math.nan, math.nan
    lo, hi = np.percentile(r, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return float(lo), float(hi)


def _xy(x, y, name_x: str = "x", name_y: str = "y") -> tuple[np.ndarray, np.ndarray]:
    xa = np.asarray(x, dtype=np.float64)
    ya = np.asarray(y, dtype=np.float64)
    if xa.ndim != 1 or ya.ndim != 1:
        raise ValueError(f"{name_x} and {name_y} must be 1-D, got shapes {xa.shape} and {ya.shape}")
    if xa.shape != ya.shape:
        raise ValueError(f"{name_x} and {name_y} differ in length: {xa.size} vs {ya.size}")
    if not (np.isfinite(xa).all() and np.isfinite(ya).all()):
        bad = int((~np.isfinite(xa)).sum() + (~np.isfinite(ya)).sum())
        raise ValueError(f"{name_x}/{name_y} hold {bad} non-finite value(s) (NaN or inf)")
    return xa, ya


def _hinge_scan(xs: np.ndarray, ys: np.ndarray, w: np.ndarray, knots: np.ndarray, min_side: int):
    """Hinge least squares at every knot for every weight vector at once.

    Args:
        xs: (n,) x sorted ascending (centred). ys: (n,) y in the same order (centred).
        w: (B, n) non-negative weights (bootstrap counts; ones for the plain fit).
        knots: (K,) knots on the centred x scale.
        min_side: a knot is valid only where the weights on x <= c and on x >= c each sum to >= min_side
            and some weight lies strictly on each side.
    Returns:
        ``(sse, a, b_below, b_above)``, each (B, K); ``sse`` is +inf at invalid knots.
    """
    B = w.shape[0]
    il = np.searchsorted(xs, knots, side="left")  # points with x < c
    ir = np.searchsorted(xs, knots, side="right")  # points with x <= c

    def prefix(v: np.ndarray) -> np.ndarray:
        return np.concatenate([np.zeros((B, 1)), np.cumsum(w * v, axis=1)], axis=1)

    p0, px, pxx, py, pxy = (prefix(v) for v in (np.ones_like(xs), xs, xs * xs, ys, xs * ys))
    syy = (w * (ys * ys)).sum(axis=1)[:, None]
    c = knots[None, :]
    # below: x < c (u = x - c); above: the rest (v = x - c; points at x == c add 0 to every v moment)
    b0, bx, bxx, by, bxy = (p[:, il] for p in (p0, px, pxx, py, pxy))
    t0, tx, txx, ty, txy = (p[:, -1:] for p in (p0, px, pxx, py, pxy))
    a0, ax, axx, ay, axy = t0 - b0, tx - bx, txx - bxx, ty - by, txy - bxy
    su, suu, suy = bx - c * b0, bxx - 2 * c * bx + c * c * b0, bxy - c * by
    sv, svv, svy = ax - c * a0, axx - 2 * c * ax + c * c * a0, axy - c * ay
    le, ge = p0[:, ir], t0 - b0  # weight on x <= c and on x >= c
    strict_above = t0 - p0[:, ir]
    valid = (b0 > 0) & (strict_above > 0) & (le >= min_side) & (ge >= min_side) & (suu > 0) & (svv > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        # normal equations [[n, su, sv], [su, suu, 0], [sv, 0, svv]] beta = [sy, suy, svy] (u·v = 0)
        schur = t0 - su * su / suu - sv * sv / svv
        a = (ty - su * suy / suu - sv * svy / svv) / schur
        b_below = (suy - su * a) / suu
        b_above = (svy - sv * a) / svv
        sse = syy - (a * ty + b_below * suy + b_above * svy)
    valid &= schur > 1e-9 * t0
    sse = np.where(valid, np.maximum(sse, 0.0), np.inf)
    return sse, a, b_below, b_above


def _prepare(x, y, knots, min_side: int):
    xa, ya = _xy(x, y)
    if int(min_side) != min_side or min_side < 1:
        raise ValueError(f"min_side must be a positive integer, got {min_side!r}")
    min_side = int(min_side)
    n = xa.size
    if n < 2 * min_side + 1:
        raise ValueError(f"hinge fit needs at least 2*min_side+1 = {2 * min_side + 1} points, got {n}")
    if np.unique(xa).size < 3:
        raise ValueError(f"x must hold at least 3 distinct values, got {np.unique(xa).size}")
    order = np.argsort(xa, kind="stable")
    xs, ys = xa[order], ya[order]
    if knots is None:
        grid = np.linspace(xs[min_side - 1], xs[n - min_side], N_KNOTS)
    else:
        grid = np.asarray(knots, dtype=np.float64).ravel()
        if grid.size == 0:
            raise ValueError("knots is empty")
        if not np.isfinite(grid).all():
            raise ValueError("knots hold non-finite value(s)")
    x0, y0 = float(xs.mean()), float(ys.mean())
    return xs - x0, ys - y0, grid - x0, x0, y0, min_side


def _point_fit(xs, ys, grid, x0, y0, min_side) -> dict:
    sse, a, bb, ba = _hinge_scan(xs, ys, np.ones((1, xs.size)), grid, min_side)
    if not np.isfinite(sse).any():
        raise ValueError(f"no knot leaves >= min_side={min_side} points on each side of it with x spread on both")
    j = int(np.argmin(sse[0]))
    sst = float((ys * ys).sum())
    best = float(sse[0, j])
    return {
        "knee": float(grid[j] + x0),
        "slope_below": float(bb[0, j]),
        "slope_above": float(ba[0, j]),
        "intercept": float(a[0, j] + y0),
        "sse": best,
        "n": int(xs.size),
        "r2": 1.0 - best / sst if sst > 0 else math.nan,
    }


def hinge_fit(x, y, *, knots=None, min_side: int = 5) -> dict:
    """Continuous hinge (two-segment, broken-stick) least squares of the priming threshold.

    Fits y = a + b_below·min(x − c, 0) + b_above·max(x − c, 0); for each candidate knee c the model is linear
    and solved in closed form, and c is the grid value with the smallest residual sum of squares (the first
    one on ties). Sun et al. 2025, "How new data permeates LLM knowledge and how to dilute it",
    arXiv:2504.09522: ln S_prime falls with log10 P_before below a threshold near P_before ≈ 1e-3 and flattens
    above it, so the knee estimates that threshold.

    Args:
        x: (n,) log10 P_before per fact (decades).
        y: (n,) ln S_prime per fact (natural log of P_after / P_before).
        knots: (K,) candidate knees on the x scale. Default: 201 evenly spaced values between the
            min_side-th smallest and the min_side-th largest x, so x <= c and x >= c each hold >= min_side
            points. Given knots that leave fewer than min_side points on either side (or no point strictly
            on one side) are skipped.
        min_side: minimum number of points on each side of the knee.
    Returns:
        ``{"knee", "slope_below", "slope_above", "intercept", "sse", "n", "r2"}``: knee c in log10 P_before;
        slopes in ln S_prime per decade; intercept a = fitted ln S_prime at the knee; sse the residual sum
        of squares (ln² units); n the number of facts; r2 = 1 − sse / Σ(y − ȳ)² (NaN when y is constant).
    Raises:
        ValueError: x and y not 1-D or of different lengths, a non-finite value in x, y or knots, fewer than
            2·min_side + 1 points, x with fewer than 3 distinct values, min_side < 1, empty knots, or no
            usable knot.
    """
    return _point_fit(*_prepare(x, y, knots, min_side))


def hinge_bootstrap(
    x, y, *, n_boot: int = 1000, level: float = 0.95, seed: int = 0, min_side: int = 5, knots=None
) -> dict:
    """:func:`hinge_fit` plus percentile bootstrap intervals over facts.

    Each replicate draws n facts with replacement (multinomial counts as weights) and refits the hinge on the
    **same knot grid as the point fit** (for speed; the grid spans the point fit's data, and a replicate's
    knot counts as usable only where the resampled facts, with multiplicity, put >= min_side on each side).
    Replicates with no usable knot are dropped (``n_boot_valid``). The whole bootstrap is vectorised: n = 200,
    n_boot = 1000 takes well under a second on one core. Sun et al. 2025, "How new data permeates LLM knowledge
    and how to dilute it", arXiv:2504.09522 (the priming threshold near P_before ≈ 1e-3).

    Args:
        x: (n,) log10 P_before per fact (decades).
        y: (n,) ln S_prime per fact (natural log).
        n_boot: number of bootstrap replicates.
        level: confidence level of the percentile intervals.
        seed: seed of ``numpy.random.default_rng``; a fixed seed gives identical output.
        min_side: as in :func:`hinge_fit`.
        knots: as in :func:`hinge_fit`.
    Returns:
        The point fit's keys (``knee``, ``slope_below``, ``slope_above``, ``intercept``, ``sse``, ``n``, ``r2``)
        plus ``slope_change`` = slope_above − slope_below (ln S_prime per decade) and ``<name>_ci_low`` /
        ``<name>_ci_high`` for knee, slope_below, slope_above and slope_change, ``n_boot`` (requested) and
        ``n_boot_valid`` (replicates with a usable knot; the intervals are NaN when it is 0).
    Raises:
        ValueError: as :func:`hinge_fit`, and for level outside (0, 1) or n_boot < 1.
    """
    _check_level(level, n_boot)
    xs, ys, grid, x0, y0, min_side = _prepare(x, y, knots, min_side)
    out = _point_fit(xs, ys, grid, x0, y0, min_side)
    out["slope_change"] = out["slope_above"] - out["slope_below"]
    n = xs.size
    rng = np.random.default_rng(seed)
    block = max(1, _BLOCK_CELLS // max(n + 1, grid.size))
    reps = {k: np.full(n_boot, math.nan) for k in ("knee", "slope_below", "slope_above")}
    for start in range(0, n_boot, block):
        stop = min(n_boot, start + block)
        w = rng.multinomial(n, np.full(n, 1.0 / n), size=stop - start).astype(np.float64)
        sse, _, bb, ba = _hinge_scan(xs, ys, w, grid, min_side)
        j = np.argmin(sse, axis=1)
        rows = np.arange(stop - start)
        ok = np.isfinite(sse[rows, j])
        reps["knee"][start:stop] = np.where(ok, grid[j] + x0, math.nan)
        reps["slope_below"][start:stop] = np.where(ok, bb[rows, j], math.nan)
        reps["slope_above"][start:stop] = np.where(ok, ba[rows, j], math.nan)
    reps["slope_change"] = reps["slope_above"] - reps["slope_below"]
    for k, r in reps.items():
        out[f"{k}_ci_low"], out[f"{k}_ci_high"] = _percentile_ci(r, level)
    out["n_boot"] = int(n_boot)
    out["n_boot_valid"] = int(np.isfinite(reps["knee"]).sum())
    return out


def _rowwise_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    den = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, (a * b).sum(axis=1) / den, math.nan)


def spearman_ci(x, y, *, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> dict:
    """Spearman rank correlation of y on x with a percentile bootstrap interval over points (facts).

    rho is the Pearson correlation of the average-tie ranks (= ``scipy.stats.spearmanr``). Each replicate
    resamples the (x, y) pairs with replacement and re-ranks them; replicates where x or y came out constant
    are dropped from the interval. Used on x = log10 P_before, y = ln S_prime: Sun et al. 2025, "How new data
    permeates LLM knowledge and how to dilute it", arXiv:2504.09522 (priming is predictable from P_before).

    Args:
        x: (n,) predictor per point (e.g. log10 P_before, decades).
        y: (n,) response per point (e.g. ln S_prime, natural log).
        n_boot: number of bootstrap replicates.
        level: confidence level.
        seed: seed of ``numpy.random.default_rng``.
    Returns:
        ``{"rho", "ci_low", "ci_high", "n"}`` (rho unitless, in [-1, 1]). With n < 5, or x or y constant,
        rho and the interval are NaN (no exception) and n is still the number of points.
    Raises:
        ValueError: x and y not 1-D, of different lengths or holding non-finite values; level outside (0, 1);
            n_boot < 1.
    """
    _check_level(level, n_boot)
    xa, ya = _xy(x, y)
    n = int(xa.size)
    nan = {"rho": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": n}
    if n < 5 or np.ptp(xa) == 0 or np.ptp(ya) == 0:
        return nan
    rho = float(_rowwise_pearson(stats.rankdata(xa)[None, :], stats.rankdata(ya)[None, :])[0])
    rng = np.random.default_rng(seed)
    block = max(1, _BLOCK_CELLS // n)
    reps = np.empty(n_boot)
    for start in range(0, n_boot, block):
        stop = min(n_boot, start + block)
        idx = rng.integers(0, n, size=(stop - start, n))
        reps[start:stop] = _rowwise_pearson(stats.rankdata(xa[idx], axis=1), stats.rankdata(ya[idx], axis=1))
    lo, hi = _percentile_ci(reps, level)
    return {"rho": rho, "ci_low": lo, "ci_high": hi, "n": n}


def smallest_k(
    frame: pd.DataFrame,
    *,
    k_col: str = "k",
    x_col: str = "log10_p_before",
    y_col: str = "log_s_prime",
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[pd.DataFrame, int | None]:
    """Spearman rho of y on x per value of k, and the smallest k whose interval excludes 0.

    One :func:`spearman_ci` per k (ascending), each with the same ``seed``. k is the condition swept (e.g. the
    number of times the new text was learned); x = log10 P_before (decades) and y = ln S_prime (natural log)
    per fact. Sun et al. 2025, "How new data permeates LLM knowledge and how to dilute it", arXiv:2504.09522.
    The per-k intervals are not corrected for multiplicity; "smallest k" is the first k where the relation
    is detectable at ``level``, in either direction.

    Args:
        frame: (rows = facts × conditions) table with columns k_col, x_col, y_col.
        k_col, x_col, y_col: column names.
        n_boot, level, seed: as in :func:`spearman_ci`.
    Returns:
        ``(table, k_min)``: table with columns k, rho, ci_low, ci_high, n, holds (interval excludes 0; False
        when NaN), one row per k ascending; k_min the smallest k with holds (as int), or None.
    Raises:
        ValueError: a missing column, or any error of :func:`spearman_ci` (e.g. non-finite x or y).
    """
    missing = [c for c in (k_col, x_col, y_col) if c not in frame.columns]
    if missing:
        raise ValueError(f"frame lacks column(s) {missing}; has {list(frame.columns)}")
    rows = []
    for k, g in frame.groupby(k_col, sort=True):
        r = spearman_ci(g[x_col].to_numpy(), g[y_col].to_numpy(), n_boot=n_boot, level=level, seed=seed)
        holds = bool(r["ci_low"] > 0 or r["ci_high"] < 0)
        rows.append(
            {"k": k, "rho": r["rho"], "ci_low": r["ci_low"], "ci_high": r["ci_high"], "n": r["n"], "holds": holds}
        )
    table = pd.DataFrame(rows, columns=["k", "rho", "ci_low", "ci_high", "n", "holds"])
    hit = table.loc[table["holds"], "k"]
    return table, (int(hit.iloc[0]) if len(hit) else None)


def _positive(v, name: str) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64).ravel()
    if not np.isfinite(a).all():
        raise ValueError(f"{name} holds {int((~np.isfinite(a)).sum())} non-finite value(s)")
    if (a <= 0).any():
        raise ValueError(f"{name} holds {int((a <= 0).sum())} non-positive value(s); ratios must be > 0")
    return a


def geometric_ratio_ci(treated, reference, *, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> dict:
    """Ratio of geometric means of two independent samples of positive ratios, with a bootstrap interval.

    ratio = exp(mean ln treated − mean ln reference); each replicate resamples each sample independently with
    replacement, and the interval is the percentile interval of the replicate ratios. E.g. S_mem of held-out
    control facts (treated) vs. of the control facts used for the drift correction (reference): a ratio near 1
    says the correction generalises. Sun et al. 2025, "How new data permeates LLM knowledge and how to dilute
    it", arXiv:2504.09522.

    Args:
        treated: (n_t,) positive ratios (unitless, e.g. P_after / P_before).
        reference: (n_r,) positive ratios.
        n_boot, level, seed: bootstrap replicates, confidence level, ``numpy.random.default_rng`` seed.
    Returns:
        ``{"ratio", "ci_low", "ci_high", "n_treated", "n_reference"}`` (unitless); ratio and interval are NaN
        when either sample is empty.
    Raises:
        ValueError: a non-finite or non-positive value in either sample; level outside (0, 1); n_boot < 1.
    """
    _check_level(level, n_boot)
    lt, lr = np.log(_positive(treated, "treated")), np.log(_positive(reference, "reference"))
    out = {"ratio": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n_treated": lt.size, "n_reference": lr.size}
    if lt.size == 0 or lr.size == 0:
        return out
    rng = np.random.default_rng(seed)

    def boot_means(v: np.ndarray) -> np.ndarray:
        block = max(1, _BLOCK_CELLS // v.size)
        means = np.empty(n_boot)
        for start in range(0, n_boot, block):
            stop = min(n_boot, start + block)
            means[start:stop] = v[rng.integers(0, v.size, size=(stop - start, v.size))].mean(axis=1)
        return means

    log_reps = boot_means(lt) - boot_means(lr)
    lo, hi = _percentile_ci(log_reps, level)
    out.update(ratio=math.exp(lt.mean() - lr.mean()), ci_low=math.exp(lo), ci_high=math.exp(hi))
    return out
