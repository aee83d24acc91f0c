"""Covariate regression of per-position activation density on familiarity (issue 14, item 8).

**Secondary analysis.** The headline result is the pre-registered slope of the density metric on
``log2(1 + distinct_docs)`` computed in :mod:`densitylab.probes.density` (``estimand == "slope"`` rows of
``probes/density.parquet``). This module asks a narrower follow-up question: does that association
survive adjustment for the token-level training counts and the position covariates, and how much of it
does the input token's own count take over?

The question comes from the factual-recall literature: the subject's last token (``name_last``) and
the position that predicts the first token of an attribute value (``pre_value``) are where recall is
localized (ROME: Meng et al. 2022, "Locating and Editing Factual Associations in GPT"; Geva et al.
2023, "Dissecting Recall of Factual Associations in Auto-Regressive Language Models").

Per layer ``i`` (every column ``f"L{i}/{metric}"`` of ``probes/density_positions.parquet``), on the
rows with ``probe_set == probe_set``, ``role in roles``, ``person >= 0``, ``own`` (when the column is
there: the row's panel person, as the endpoints) and a finite metric value,
two OLS models on the same rows::

    with_input_count:    metric ~ log2(1 + exposure) + log2(1 + target_count) + log2(1 + input_count)
                                  + C(role) + pos + doc_initial + Intercept
    without_input_count: the same without log2(1 + input_count)

Units: the metric in its own units (e.g. ``active_frac_live``: a fraction of live MLP units, 0..1);
the count terms are per doubling of the count (``log2(1 + count)``), so their coefficient is the change
in the metric per doubling; ``pos`` is per token position within the window; ``doc_initial`` (0/1) and
``role[r]`` (0/1, reference = the first of ``roles`` present) are shifts.

Inference: cluster-robust covariance with **persons as clusters**, CR1 small-sample factor
``G/(G-1) · (N-1)/(N-K)`` (Liang & Zeger 1986, "Longitudinal data analysis using generalized linear
models"; Cameron & Miller 2015, "A Practitioner's Guide to Cluster-Robust Inference"), and t intervals
and p-values on ``G - 1`` degrees of freedom (statsmodels ``cov_type="cluster"`` with ``use_t=True``
and ``df_correction=True`` sets ``df_resid_inference = G - 1``; the tests check it against scipy).

The **absorbed** row per layer is ``(coef_without - coef_with) / coef_without`` for the exposure term:
the share of the exposure coefficient that disappears once ``log2(1 + input_count)`` is in the model.
At name positions the input token *is* the person's name token, so its training count is close to
proportional to the person's mentions and hence to the exposure; the two regressors are nearly
collinear and the token count can absorb the effect. A large share means the data cannot tell entity
familiarity apart from token frequency at those positions, not that familiarity has no effect.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import statsmodels.api as sm

from densitylab.io import write_parquet_atomic
from densitylab.probes.roles import ROLES

KNOWN_ROLES = ROLES  # the position roles of densitylab.probes.roles

COLUMNS = [
    "layer",
    "model",
    "term",
    "coef",
    "se",
    "ci_low",
    "ci_high",
    "p_value",
    "df",
    "n",
    "n_entities",
    "metric",
    "note",
]

MODELS = ("with_input_count", "without_input_count")

_BASE_COLUMNS = ("probe_set", "role", "person", "pos", "doc_initial", "target_count", "input_count")


def _layers(positions: pd.DataFrame, metric: str) -> list[int]:
    pat = re.compile(rf"^L(\d+)/{re.escape(metric)}$")
    return sorted(int(m.group(1)) for c in positions.columns if (m := pat.match(str(c))))


def _metrics(positions: pd.DataFrame) -> list[str]:
    pat = re.compile(r"^L\d+/(.+)$")
    return sorted({m.group(1) for c in positions.columns if (m := pat.match(str(c)))})


def _validate(positions, metric, roles, probe_set, exposure, level) -> list[int]:
    if not isinstance(positions, pd.DataFrame):
        raise ValueError(f"positions is {type(positions).__name__}: expected a pandas DataFrame")
    missing = [c for c in (*_BASE_COLUMNS, exposure) if c not in positions.columns]
    if missing:
        raise ValueError(
            f"positions lacks column(s) {missing}: expected the probes/density_positions.parquet columns"
            f" including {list(_BASE_COLUMNS)} and the exposure column {exposure!r}"
        )
    layers = _layers(positions, metric)
    if not layers:
        raise ValueError(f"metric {metric!r} has no L{{i}}/{metric} column: expected one of {_metrics(positions)}")
    if isinstance(roles, str) or len(roles) == 0:
        raise ValueError(f"roles={roles!r}: expected a non-empty sequence of role names from {list(KNOWN_ROLES)}")
    bad = [r for r in roles if r not in KNOWN_ROLES]
    if bad:
        raise ValueError(f"unknown role(s) {bad}: expected roles from {list(KNOWN_ROLES)}")
    if not isinstance(probe_set, str) or not probe_set:
        raise ValueError(f"probe_set={probe_set!r}: expected a probe set name such as 'panel'")
    if not (isinstance(level, (int, float)) and 0.0 < float(level) < 1.0):
        raise ValueError(f"level={level!r}: expected a confidence level strictly between 0 and 1")
    return layers


def _log2_1p(x: np.ndarray) -> np.ndarray:
    return np.log2(1.0 + np.asarray(x, dtype=np.float64))


def _design(sub: pd.DataFrame, roles: Sequence[str], exposure: str, with_input: bool) -> tuple[list, list, list]:
    """(names, columns, notes) of the design; zero-variance terms are dropped and named in ``notes``."""
    present = [r for r in roles if (sub["role"] == r).any()]
    names: list[str] = [f"log2_1p_{exposure}", "log2_1p_target_count"]
    cols: list[np.ndarray] = [_log2_1p(sub[exposure]), _log2_1p(sub["target_count"])]
    if with_input:
        names.append("log2_1p_input_count")
        cols.append(_log2_1p(sub["input_count"]))
    notes: list[str] = []
    role = sub["role"].to_numpy()
    if len(present) <= 1:
        if len(roles) > 1:
            notes.append(f"single role {present[0] if present else None!r}: role term dropped")
    else:
        for r in present[1:]:
            names.append(f"role[{r}]")
            cols.append((role == r).astype(np.float64))
    names += ["pos", "doc_initial"]
    cols += [sub["pos"].to_numpy(dtype=np.float64), sub["doc_initial"].to_numpy().astype(np.float64)]
    keep_names, keep_cols = [], []
    for nm, c in zip(names, cols):
        if c.size and np.ptp(c) == 0:
            notes.append(f"{nm} dropped: no variance")
        else:
            keep_names.append(nm)
            keep_cols.append(c)
    keep_names.append("Intercept")
    keep_cols.append(np.ones(len(sub)))
    return keep_names, keep_cols, notes


def _fit_model(y, names, cols, groups, level) -> tuple[pd.DataFrame | None, str]:
    X = np.column_stack(cols)
    n, k = X.shape
    G = len(np.unique(groups))
    if G < 3:
        return None, f"insufficient: {G} persons (< 3)"
    if n <= k:
        return None, f"insufficient: {n} positions for {k} parameters"
    rank = np.linalg.matrix_rank(X)
    if rank < k:
        return None, f"insufficient: collinear design (rank {rank} < {k} parameters)"
    res = sm.OLS(y, X).fit(
        cov_type="cluster",
        cov_kwds={"groups": groups, "use_correction": True, "df_correction": True},
        use_t=True,
    )
    ci = np.asarray(res.conf_int(alpha=1.0 - level))
    out = pd.DataFrame(
        {
            "term": names,
            "coef": np.asarray(res.params, dtype=np.float64),
            "se": np.asarray(res.bse, dtype=np.float64),
            "ci_low": ci[:, 0],
            "ci_high": ci[:, 1],
            "p_value": np.asarray(res.pvalues, dtype=np.float64),
            "df": float(res.df_resid_inference),
        }
    )
    return out, ""


def _nan_rows(names: list[str]) -> pd.DataFrame:
    nan = np.full(len(names), np.nan)
    return pd.DataFrame(
        {"term": names, "coef": nan, "se": nan, "ci_low": nan, "ci_high": nan, "p_value": nan, "df": nan}
    )


def density_regression(
    positions: pd.DataFrame,
    metric: str = "active_frac_live",
    roles: Sequence[str] = ("name_last", "pre_value"),
    probe_set: str = "panel",
    exposure: str = "distinct_docs",
    level: float = 0.95,
) -> pd.DataFrame:
    """Cluster-robust (CR1, persons as clusters) OLS of a density metric on familiarity and covariates.

    Secondary analysis; the headline is the pre-registered slope in :mod:`densitylab.probes.density`.
    See the module docstring for the two models, units and references (Liang & Zeger 1986; Cameron &
    Miller 2015; the recall positions of Meng et al. 2022 / Geva et al. 2023).

    Args:
        positions: the ``probes/density_positions.parquet`` table (one row per probed position).
        metric: per-position metric; every ``L{i}/{metric}`` column is one layer.
        roles: position roles to pool (``C(role)`` shifts, reference = first present role).
        probe_set: probe set to use (rows with other sets are ignored).
        exposure: exposure column of the person (``distinct_docs``; ``mentions`` for text data).
        level: confidence level of the t intervals (on ``G - 1`` df).

    Returns:
        One row per (layer, model, term), models ``with_input_count`` and ``without_input_count``, plus
        one ``absorbed`` row per layer (term ``log2_1p_{exposure}``, ``coef`` = share of the exposure
        coefficient absorbed by ``log2_1p_input_count``; NaN when the coefficient without it is 0 or
        either fit failed). Columns: ``layer`` (int64), ``model``, ``term`` (``log2_1p_{exposure}``,
        ``log2_1p_target_count``, ``log2_1p_input_count``, ``role[r]``, ``pos``, ``doc_initial``,
        ``Intercept``), ``coef``, ``se``, ``ci_low``, ``ci_high``, ``p_value``, ``df`` (float64, ``G - 1``;
        NaN on absorbed / insufficient rows), ``n`` (int64 positions), ``n_entities`` (int64 persons G),
        ``metric``, ``note`` ("" when nothing to say; dropped zero-variance terms are named there and have
        no row; "insufficient: ..." with NaN statistics when G < 3, positions <= parameters or the design
        is collinear).

    Raises:
        ValueError: unknown metric (no ``L{i}/{metric}`` column), a required column missing, an unknown
            or empty ``roles``, a bad ``probe_set`` or a ``level`` outside (0, 1).
    """
    layers = _validate(positions, metric, roles, probe_set, exposure, level)
    roles = tuple(roles)
    sel = (positions["probe_set"] == probe_set) & positions["role"].isin(roles) & (positions["person"] >= 0)
    if "own" in positions:  # the panel person's own positions, as the endpoints (not co-mentioned people)
        sel &= positions["own"].astype(bool)
    base = positions[sel]
    counts_ok = (base[exposure] >= 0) & (base["target_count"] >= 0) & (base["input_count"] >= 0)
    base = base[counts_ok.to_numpy()]
    frames: list[pd.DataFrame] = []
    for layer in layers:
        y_all = base[f"L{layer}/{metric}"].to_numpy(dtype=np.float64)
        ok = np.isfinite(y_all)
        sub = base[ok]
        y = y_all[ok]
        groups = pd.factorize(sub["person"])[0]
        n, G = len(sub), len(np.unique(groups))
        coef_exp = {}
        for model in MODELS:
            names, cols, notes = _design(sub, roles, exposure, with_input=model == "with_input_count")
            table, fail = _fit_model(y, names, cols, groups, level)
            if table is None:
                table = _nan_rows(names)
                notes = [fail, *notes]
            table.insert(0, "model", model)
            table.insert(0, "layer", layer)
            table["n"], table["n_entities"], table["metric"], table["note"] = n, G, metric, "; ".join(notes)
            frames.append(table)
            hit = table.loc[table["term"] == f"log2_1p_{exposure}", "coef"]
            coef_exp[model] = float(hit.iloc[0]) if len(hit) else math.nan
        c_with, c_without = coef_exp["with_input_count"], coef_exp["without_input_count"]
        defined = np.isfinite(c_with) and np.isfinite(c_without) and c_without != 0.0
        share = (c_without - c_with) / c_without if defined else math.nan
        frames.append(
            pd.DataFrame(
                {
                    "layer": [layer],
                    "model": ["absorbed"],
                    "term": [f"log2_1p_{exposure}"],
                    "coef": [share],
                    "se": [math.nan],
                    "ci_low": [math.nan],
                    "ci_high": [math.nan],
                    "p_value": [math.nan],
                    "df": [math.nan],
                    "n": [n],
                    "n_entities": [G],
                    "metric": [metric],
                    "note": [
                        "(coef_without - coef_with) / coef_without: share of the exposure coefficient "
                        "absorbed by log2_1p_input_count"
                        + ("" if np.isfinite(share) else "; undefined (a fit failed or coef_without == 0)")
                    ],
                }
            )
        )
    out = pd.concat(frames, ignore_index=True)[COLUMNS]
    out = out.astype({"layer": "int64", "n": "int64", "n_entities": "int64"})
    for c in ("coef", "se", "ci_low", "ci_high", "p_value", "df"):
        out[c] = out[c].astype("float64")
    return out


def write_density_regression(run_dir: Path, **kwargs) -> Path | None:
    """Run :func:`density_regression` on ``run_dir/probes/density_positions.parquet``.

    Args:
        run_dir: the run folder.
        **kwargs: :func:`density_regression`'s ``metric``, ``roles``, ``probe_set``, ``exposure``, ``level``
            (the density callback passes its pre-registered endpoints').
    Returns:
        The path of ``run_dir/probes/density_regression.parquet`` (written atomically), or ``None`` (nothing
        written) when the positions table does not exist.
    Raises:
        ValueError: see :func:`density_regression`.
    """
    src = Path(run_dir) / "probes" / "density_positions.parquet"
    if not src.is_file():
        return None
    out = density_regression(pd.read_parquet(src), **kwargs)
    dst = src.with_name("density_regression.parquet")
    write_parquet_atomic(out, dst)
    return dst
