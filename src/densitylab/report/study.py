"""The familiarity study's report: pooled within-person estimates and the pre-registered verdict table.

Input: the run folders of an ``experiment=familiarity_study`` (or ``familiarity_study_smoke``) multirun. Each run
carries the study's pre-registered claims in its config (``hparams.yaml``, node ``study``: ``conf/study/``), its
arm (``study.arm``: ``corpus`` = one Latin-square corpus, ``uniform``, ``swiglu``, ``long``) and its corpus
(``data.rank_seed``); the claims are read from the runs, never from the working tree, and every run must carry the
same claims.

What is estimated (design §3.10):

- **Within person** (the ``corpus`` arms, K Latin-square corpora): per layer, endpoint role (``name_last``,
  ``pre_value``) and density metric (``active_frac_live``, ``active_frac``, ``hoyer``, the Jin et al.
  ``jin_top5_energy`` at the last layer), each study person's mean over their own positions of their held-out
  biography at the last step (``probes/density_positions.parquet``), regressed with person and run fixed effects,
  persons as clusters (:func:`densitylab.probes.study.within_person_effect`): β per doubling of
  1 + ``distinct_docs``, and the level contrasts ``high − low`` and ``low − zero``. These CIs are conditional on
  the K trained models (the run effects absorb them; the model-to-model variance of the effect is not in them):
  the K pairwise estimates beside each contrast (one Latin-square group per pair of corpora) show it. Recall
  accuracy (``probes/knowledge.parquet``, the panel at the end) gets the same fit, and density gets a
  known-vs-unknown contrast (a person known in one corpus and not in another).
- **Windows** (claim 3): the shuffled control's mean density minus the held-out panel's at the last step, per
  corpus run, pooled over runs (the two sets share rows, so treating them as independent is conservative).
- **Runs** (claims 4, 7, 9) and **models** (claim 8): between-run statistics, t on runs − 1 (Welch for claim 4).
- **Controls** (``swiglu``, ``long``: single runs) are between-person estimates from their own density endpoints
  (persons as clusters within one run), labelled as such, never pooled with the within-person fits.

Outputs (``<multirun>/report/study/`` by default): ``verdicts.csv`` and ``verdicts.md`` (the nine claims),
``within_person.csv`` (every layer, role and metric), ``pairwise.csv``, ``controls.csv``, ``runs.csv``,
``study.json`` and ``density_over_training.png``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from densitylab.probes.study import VERDICT_COLUMNS, verdict_table, within_person_effect
from densitylab.report.common import pyplot, run_labels, save_figure

#: Density metrics of the within-person table (``jin_*`` exist at the last layer only).
STUDY_METRICS = ("active_frac_live", "active_frac", "hoyer", "jin_top5_energy")
#: Endpoint roles of the within-person table.
STUDY_ROLES = ("name_last", "pre_value")
#: Morris et al. (arXiv:2505.24832, Table 1): bits per parameter by training precision.
MORRIS_ALPHA = {"fp32": 3.83, "bf16": 3.51}
#: Columns of ``verdicts.csv``.
STUDY_VERDICT_COLUMNS = ["id", "name", "statement", *VERDICT_COLUMNS, "note"]
#: Columns of ``within_person.csv``.
WITHIN_COLUMNS = [
    "outcome",
    "layer",
    "role",
    "metric",
    "effect",
    "beta",
    "se",
    "ci_low",
    "ci_high",
    "p_value",
    "df",
    "n",
    "n_persons",
    "n_runs",
]


# ----------------------------------------------------------------------------- loading
def _yaml(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text()) or {}


def load_study_runs(paths: list[str | Path]) -> list[dict]:
    """The study's run folders under ``paths`` with their config (``hparams.yaml``), arm, corpus and summary.

    Returns:
        One dict per run: ``path``, ``name`` (folder name), ``config``, ``arm``, ``rank_seed``, ``seed``,
        ``n_layer``, ``summary`` and ``status``; only runs whose config has a ``study`` node.
    Raises:
        FileNotFoundError: no run folder, or none with a ``study`` node (not a study multirun).
        ValueError: the runs carry different claims (they were registered differently).
    """
    from densitylab.report.compare import find_run_dirs

    runs = []
    for d in find_run_dirs(paths):
        cfg_path = d / "hparams.yaml"
        cfg = _yaml(cfg_path) if cfg_path.is_file() else {}
        study = cfg.get("study")
        if not isinstance(study, dict):
            continue
        summary = json.loads((d / "summary.json").read_text()) if (d / "summary.json").is_file() else {}
        runs.append(
            {
                "path": d,
                "name": d.name,
                "config": cfg,
                "arm": str(study.get("arm", "corpus")),
                "rank_seed": (cfg.get("data") or {}).get("rank_seed"),
                "seed": cfg.get("seed"),
                "n_layer": int(((cfg.get("model") or {}).get("net") or {}).get("n_layer", 0)),
                "summary": summary,
                "status": "failed" if (d / "FAILED").is_file() else summary.get("status", "unfinished"),
            }
        )
    if not runs:
        raise FileNotFoundError(
            f"no run folder with a `study` node in hparams.yaml under {[str(p) for p in paths]}: expected the "
            "multirun folder of `python train.py -m experiment=familiarity_study`"
        )
    if len(runs) > 1:  # the run id: the folder below the runs' common root (job folders 0..6 repeat across multiruns)
        from densitylab.report.compare import _common_parts

        root = Path(*_common_parts([r["path"].resolve() for r in runs]))
        for r in runs:
            r["name"] = r["path"].resolve().relative_to(root).as_posix()
    claims = [json.dumps(r["config"]["study"].get("claims"), sort_keys=True) for r in runs]
    if len(set(claims)) > 1:
        bad = [r["name"] for r, c in zip(runs, claims) if c != claims[0]]
        raise ValueError(f"runs {bad} carry other claims than {runs[0]['name']}: expected one pre-registered study")
    check_claims(runs[0]["config"]["study"])
    return runs


#: Keys every pre-registered claim must have, and the endpoint keys each claim's estimator reads.
CLAIM_KEYS = ("id", "name", "statement", "endpoint", "predicted_sign", "sesoi", "unit")
ENDPOINT_KEYS = {
    1: ("layer", "role", "metric"),
    2: ("layer", "role", "metric"),
    3: ("layer", "probe_set", "reference", "metric"),
    4: ("layer", "probe_set", "metric"),
    5: ("metric", "exposure"),
    6: ("statistic",),
    7: ("metric",),
    8: ("metric",),
    9: ("metric",),
}


def check_claims(study: dict) -> None:
    """Validate a study's pre-registered claims (``study`` node of the runs' config).

    Raises:
        ValueError: (one line) an ``alpha`` outside (0, 1), a claim without one of :data:`CLAIM_KEYS`, a duplicate or
            unknown id (1-9), an endpoint without the keys its estimator reads, a role / metric / statistic the probes
            do not write, a SESOI <= 0 or a predicted sign other than -1, 0, +1.
    """
    alpha = study.get("alpha", 0.05)
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not 0 < alpha < 1:
        raise ValueError(f"study.alpha={alpha!r}: expected a family-wise error rate in (0, 1)")
    claims = study.get("claims")
    if not isinstance(claims, list) or not claims:
        raise ValueError(f"study.claims={claims!r}: expected a non-empty list of pre-registered claims")
    seen = set()
    for i, c in enumerate(claims):
        missing = [k for k in CLAIM_KEYS if not isinstance(c, dict) or k not in c]
        if missing:
            raise ValueError(f"study.claims[{i}] has no {missing}: expected the keys {list(CLAIM_KEYS)}")
        cid = c["id"]
        if cid not in ENDPOINT_KEYS or cid in seen:
            raise ValueError(f"study.claims[{i}].id={cid!r}: expected a unique claim id 1-9 the report can estimate")
        seen.add(cid)
        e = c["endpoint"] if isinstance(c["endpoint"], dict) else {}
        lacking = [k for k in ENDPOINT_KEYS[cid] if k not in e]
        if lacking:
            raise ValueError(f"study.claims[{i}].endpoint={c['endpoint']!r} has no {lacking}: claim {cid} reads them")
        bad = None
        if "role" in e and e["role"] not in STUDY_ROLES:
            bad = ("role", e["role"], list(STUDY_ROLES))
        elif cid in (1, 2, 3, 4) and e["metric"] not in STUDY_METRICS + ("zero_frac", "top5_energy", "eff_rank"):
            bad = ("metric", e["metric"], list(STUDY_METRICS))
        elif cid == 3 and (e["probe_set"] not in ("shuffled", "random", "random_seen") or e["reference"] != "panel"):
            bad = ("probe_set", e["probe_set"], ["shuffled", "random", "random_seen"] + ["reference: panel"])
        elif cid == 5 and (e["metric"] != "accuracy" or e["exposure"] != "distinct_docs"):
            bad = ("metric", e["metric"], ["accuracy (exposure: distinct_docs)"])
        elif cid == 6 and e["statistic"] not in (
            "auroc_exposure_minus_confidence",
            "auroc_cooccurrence_minus_confidence",
        ):
            bad = (
                "statistic",
                e["statistic"],
                ["auroc_exposure_minus_confidence", "auroc_cooccurrence_minus_confidence"],
            )
        elif cid == 7 and e["metric"] != "excess":
            bad = ("metric", e["metric"], ["excess"])
        if bad:
            raise ValueError(f"study.claims[{i}].endpoint.{bad[0]}={bad[1]!r}: expected one of {bad[2]}")
        if not isinstance(c["sesoi"], (int, float)) or isinstance(c["sesoi"], bool) or not c["sesoi"] > 0:
            raise ValueError(f"study.claims[{i}].sesoi={c['sesoi']!r}: expected a number > 0 in the endpoint's units")
        if c["predicted_sign"] not in (-1, 0, 1):
            raise ValueError(f"study.claims[{i}].predicted_sign={c['predicted_sign']!r}: expected -1, 0 or +1")


def study_claims(runs: list[dict]) -> list[dict]:
    """The pre-registered claims the runs carry (``study.claims``), in their order."""
    return list(runs[0]["config"]["study"]["claims"])


def _layer(layer: int, n_layer: int) -> int:
    return n_layer + layer if layer < 0 else layer


def _study_people(run: Path) -> pd.DataFrame:
    f = Path(run) / "ground_truth" / "people.parquet"
    if not f.is_file():
        raise FileNotFoundError(f"{str(f)!r} does not exist: expected a synthetic-corpus run")
    p = pd.read_parquet(f)
    if "study_group" not in p:
        raise ValueError(f"{str(f)!r} has no study_group column: expected a run with data.source.latin_square")
    return p.loc[p["study_group"] >= 0, ["entity_id", "study_group", "study_level"]].rename(
        columns={"entity_id": "person"}
    )


def corpus_tables(runs: list[dict], name: str):
    """``(run, table)`` for every ``corpus`` arm run that has ``probes/{name}.parquet`` (a generator)."""
    for r in runs:
        f = r["path"] / "probes" / f"{name}.parquet"
        if r["arm"] == "corpus" and f.is_file():
            yield r, pd.read_parquet(f)


def person_density(runs: list[dict]) -> pd.DataFrame:
    """Each study person's mean density per layer, role and metric at the last step, over their own positions of
    their held-out biography, in every ``corpus`` run.

    Returns:
        Long table: ``run, rank_seed, person, study_group, study_level, distinct_docs, layer, role, metric, y, n``
        (``n`` = positions averaged).
    """
    out = []
    for r, pos in corpus_tables(runs, "density_positions"):
        pos = pos[(pos["probe_set"] == "panel") & (pos["step"] == pos["step"].max()) & pos["own"].astype(bool)]
        pos = pos[pos["role"].isin(STUDY_ROLES)]
        people = _study_people(r["path"])
        pos = pos.merge(people, on="person", how="inner")
        cols = [c for c in pos.columns if "/" in c and c.split("/", 1)[1] in STUDY_METRICS]
        if not len(pos) or not cols:
            continue
        g = pos.groupby(["person", "study_group", "study_level", "role"], sort=True)
        means = g[cols].mean()
        dd = g["distinct_docs"].max()
        n = g.size()
        long = means.stack().rename("y").reset_index().rename(columns={"level_4": "column"})
        long["layer"] = long["column"].str.slice(1).str.split("/").str[0].astype(int)
        long["metric"] = long["column"].str.split("/").str[1]
        key = pd.MultiIndex.from_frame(long[["person", "study_group", "study_level", "role"]])
        long["distinct_docs"] = dd.reindex(key).to_numpy()
        long["n"] = n.reindex(key).to_numpy()
        long["run"], long["rank_seed"] = r["name"], r["rank_seed"]
        out.append(long.drop(columns="column"))
    cols = ["run", "rank_seed", "person", "study_group", "study_level", "distinct_docs", "layer", "role", "metric"]
    if not out:
        return pd.DataFrame(columns=[*cols, "y", "n"])
    return pd.concat(out, ignore_index=True)[[*cols, "y", "n"]]


def person_knowledge(runs: list[dict], known_threshold: float = 0.5) -> pd.DataFrame:
    """Each study person's recall accuracy over the probed attributes (the whole panel at the last step of
    ``probes/knowledge.parquet``) in every ``corpus`` run: ``run, person, study_group, study_level,
    distinct_docs, accuracy, n_items, known`` (``known``: accuracy >= ``known_threshold``)."""
    out = []
    for r, k in corpus_tables(runs, "knowledge"):
        k = k[k["scope"] == "panel"] if (k["scope"] == "panel").any() else k
        k = k[k["step"] == k["step"].max()]
        k = k.rename(columns={"entity_id": "person"}).merge(_study_people(r["path"]), on="person", how="inner")
        if not len(k):
            continue
        g = k.groupby(["person", "study_group", "study_level"], sort=True)
        t = pd.DataFrame(
            {
                "accuracy": g["correct"].mean().astype(float),
                "n_items": g.size(),
                "distinct_docs": g["exposure"].max(),
            }
        ).reset_index()
        t["known"] = t["accuracy"] >= known_threshold
        t["run"] = r["name"]
        out.append(t)
    cols = ["run", "person", "study_group", "study_level", "distinct_docs", "accuracy", "n_items", "known"]
    return pd.concat(out, ignore_index=True)[cols] if out else pd.DataFrame(columns=cols)


# ----------------------------------------------------------------------------- estimates
def _fit(d: pd.DataFrame, y: str, effect: str, level: float = 0.95) -> dict:
    """One within-person fit of column ``y`` of ``d`` (``run``, ``person``, ``study_level``, ``distinct_docs``):
    ``effect`` = ``beta_log2_exposure`` (all levels), ``high_minus_low`` or ``low_minus_zero`` (the two levels'
    rows, an indicator of the first) or ``known_minus_unknown`` (``known`` indicator)."""
    if effect == "beta_log2_exposure":
        x = np.log2(1.0 + d["distinct_docs"].to_numpy(np.float64))
        sub = d
    elif effect == "known_minus_unknown":
        sub, x = d, d["known"].to_numpy(np.float64)
    else:
        a, b = effect.split("_minus_")
        sub = d[d["study_level"].isin([a, b])]
        x = (sub["study_level"] == a).to_numpy(np.float64)
    return within_person_effect(sub[y].to_numpy(np.float64), x, sub["person"].to_numpy(), sub["run"].to_numpy(), level)


def within_person_table(dens: pd.DataFrame, know: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Every within-person estimate (:data:`WITHIN_COLUMNS`): density per layer × role × metric (β per doubling of
    1 + distinct_docs, high − low, low − zero, known − unknown), and recall accuracy (β, the two contrasts)."""
    rows = []
    effects = ("beta_log2_exposure", "high_minus_low", "low_minus_zero")
    for (layer, role, metric), d in dens.groupby(["layer", "role", "metric"], sort=True):
        for eff in effects:
            rows.append(
                {
                    "outcome": "density",
                    "layer": layer,
                    "role": role,
                    "metric": metric,
                    "effect": eff,
                    **_fit(d, "y", eff, level),
                }
            )
        if len(know):
            dk = d.merge(know[["run", "person", "known"]], on=["run", "person"], how="inner")
            if len(dk):
                rows.append(
                    {
                        "outcome": "density",
                        "layer": layer,
                        "role": role,
                        "metric": metric,
                        "effect": "known_minus_unknown",
                        **_fit(dk, "y", "known_minus_unknown", level),
                    }
                )
    if len(know):
        for eff in effects:
            rows.append(
                {
                    "outcome": "recall",
                    "layer": -1,
                    "role": "prompt",
                    "metric": "accuracy",
                    "effect": eff,
                    **_fit(know, "accuracy", eff, level),
                }
            )
    return pd.DataFrame(rows, columns=WITHIN_COLUMNS)


def pairwise_table(dens: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """The contrasts per pair of corpora: in a Latin square each group's ``high − low`` (and ``low − zero``) comes
    from one pair of runs, so the per-group mean of the persons' differences (t CI over the group's persons) shows
    how much the effect moves from model to model. Columns: ``layer, role, metric, effect, study_group, runs,
    estimate, ci_low, ci_high, n_persons``."""
    rows = []
    for (layer, role, metric), d in dens.groupby(["layer", "role", "metric"], sort=True):
        for eff in ("high_minus_low", "low_minus_zero"):
            a, b = eff.split("_minus_")
            wide = d.pivot_table(index=["study_group", "person"], columns="study_level", values="y", aggfunc="mean")
            run_of = d.pivot_table(
                index=["study_group", "person"], columns="study_level", values="run", aggfunc="first"
            )
            if a not in wide or b not in wide:
                continue
            diff = (wide[a] - wide[b]).dropna()
            for g, v in diff.groupby(level=0):
                n = len(v)
                m = float(v.mean())
                h = float(stats.t.ppf(0.5 + level / 2, n - 1) * v.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
                ra = run_of.loc[g, a].dropna().unique().tolist()
                rb = run_of.loc[g, b].dropna().unique().tolist()
                rows.append(
                    {
                        "layer": layer,
                        "role": role,
                        "metric": metric,
                        "effect": eff,
                        "study_group": int(g),
                        "runs": f"{'/'.join(map(str, ra))} - {'/'.join(map(str, rb))}",
                        "estimate": m,
                        "ci_low": m - h,
                        "ci_high": m + h,
                        "n_persons": n,
                    }
                )
    cols = ["layer", "role", "metric", "effect", "study_group", "runs", "estimate", "ci_low", "ci_high", "n_persons"]
    return pd.DataFrame(rows, columns=cols)


def _level(run: dict, callback: str) -> float:
    """The confidence level a callback's intervals were written at (``callbacks.density.endpoints.level``,
    ``callbacks.knowledge.level``; 0.95 when the config does not say)."""
    node = ((run["config"].get("callbacks") or {}).get(callback)) or {}
    level = (node.get("endpoints") or {}).get("level") if callback == "density" else node.get("level")
    return float(level) if level is not None else 0.95


def _whole_set(run: dict, probe_set: str, metric: str, layer: int, step: str | int = "last") -> dict | None:
    """The whole-set mean of one probe set (``probes/density.parquet``, role ``all``) at step 0 or the last step:
    ``value, se, n_windows, step`` (se from its CI at the run's level: t on windows − 1), None without it."""
    f = run["path"] / "probes" / "density.parquet"
    if not f.is_file():
        return None
    d = pd.read_parquet(f)
    d = d[(d["probe_set"] == probe_set) & (d["role"] == "all") & (d["estimand"] == "mean") & (d["exposure"] == "all")]
    d = d[(d["metric"] == metric) & (d["layer"] == layer)]
    if not len(d):
        return None
    s = int(d["step"].max()) if step == "last" else int(step)
    d = d[d["step"] == s]
    if not len(d):
        return None
    r = d.iloc[0]
    k = max(int(r["n_windows"]), 2)
    se = float(r["ci_high"] - r["ci_low"]) / (2 * float(stats.t.ppf(0.5 + _level(run, "density") / 2, k - 1)))
    return {"value": float(r["value"]), "se": se, "n_windows": int(r["n_windows"]), "step": s}


def _claim_row(claim: dict, **values) -> dict:
    e = claim.get("endpoint") or {}
    endpoint = ", ".join(f"{k}={v}" for k, v in e.items())
    row = {
        "id": claim["id"],
        "name": claim["name"],
        "statement": claim["statement"],
        "claim": f"{claim['id']}. {claim['name']}",
        "endpoint": endpoint,
        "estimate": math.nan,
        "se": math.nan,
        "df": math.nan,
        "n_persons": 0,
        "n_runs": 0,
        "sesoi": float(claim["sesoi"]),
        "predicted_sign": int(claim["predicted_sign"]),
        "unit": str(claim["unit"]),
        "note": "",
    }
    row.update(values)
    return row


def _density_claim(claim: dict, dens: pd.DataFrame, runs: list[dict], effect: str) -> dict:
    e = claim["endpoint"]
    n_layer = max(r["n_layer"] for r in runs)
    d = dens[(dens["layer"] == _layer(int(e["layer"]), n_layer)) & (dens["role"] == e["role"])]
    d = d[d["metric"] == e["metric"]]
    if not len(d):
        return _claim_row(claim, note="no corpus run with a Latin-square panel")
    f = _fit(d, "y", effect)
    return _claim_row(
        claim,
        estimate=f["beta"],
        se=f["se"],
        df=f["df"],
        n_persons=f["n_persons"],
        n_runs=f["n_runs"],
        note="CI conditional on the trained models (run fixed effects)",
    )


def _panel_rows_mean(run: dict, metric: str, layer: int, n_rows: int) -> dict | None:
    """The held-out panel's mean over the probed positions of its first ``n_rows`` rows at the last step (the rows
    the ``shuffled`` control permutes), CR1 by row: ``value, se, n_windows``; None without the positions table."""
    from densitylab.probes.stats import cluster_mean_ci

    f = run["path"] / "probes" / "density_positions.parquet"
    col = f"L{layer}/{metric}"
    if not f.is_file():
        return None
    pos = pd.read_parquet(f)
    pos = pos[(pos["probe_set"] == "panel") & (pos["step"] == pos["step"].max()) & (pos["row"] < n_rows)]
    if col not in pos or not len(pos):
        return None
    m, lo, hi, _, k = cluster_mean_ci(pos[col].to_numpy(np.float64), pos["row"].to_numpy(), level=0.95)
    se = (hi - lo) / (2 * float(stats.t.ppf(0.975, max(k - 1, 1))))
    return {"value": float(m), "se": float(se), "n_windows": int(k)}


def _ood_claim(claim: dict, runs: list[dict]) -> dict:
    e = claim["endpoint"]
    diffs, ses, ks = [], [], []
    for r in runs:
        if r["arm"] != "corpus":
            continue
        layer = _layer(int(e["layer"]), r["n_layer"])
        a = _whole_set(r, e["probe_set"], e["metric"], layer)
        n_rows = int(((r["config"].get("callbacks") or {}).get("density") or {}).get("control_rows", 8))
        # the shuffled control permutes the panel's first control_rows rows: compare it with those rows unshuffled
        b = _panel_rows_mean(r, e["metric"], layer, n_rows) if e["probe_set"] == "shuffled" else None
        b = b or _whole_set(r, e["reference"], e["metric"], layer)
        if a is None or b is None:
            continue
        diffs.append(a["value"] - b["value"])
        ses.append(math.hypot(a["se"], b["se"]))
        ks.append(min(a["n_windows"], b["n_windows"]) - 1)
    if not diffs:
        return _claim_row(claim, note="no corpus run with the density controls")
    K = len(diffs)
    se = math.sqrt(sum(s * s for s in ses)) / K
    note = (
        f"{e['probe_set']} - the same {e['reference']} rows unshuffled, last step, mean over {K} runs; windows are the "
        "unit (the two share rows, their errors are added as if independent: conservative)"
    )
    return _claim_row(claim, estimate=float(np.mean(diffs)), se=se, df=float(min(ks)), n_runs=K, note=note)


def sparsification(runs: list[dict], metric: str, layer: int, probe_set: str = "seen") -> pd.DataFrame:
    """Each run's change of its whole-set density from step 0 to the last step (``probes/density.parquet``):
    ``run, arm, step0, last, last_step, change`` (change < 0: it sparsified). ``layer`` −1 = the last layer."""
    rows = []
    for r in runs:
        lay = _layer(layer, r["n_layer"])
        a, b = _whole_set(r, probe_set, metric, lay, step=0), _whole_set(r, probe_set, metric, lay)
        if a is None or b is None:
            continue
        rows.append(
            {
                "run": r["name"],
                "arm": r["arm"],
                "layer": lay,
                "step0": a["value"],
                "last": b["value"],
                "last_step": b["step"],
                "change": b["value"] - a["value"],
            }
        )
    return pd.DataFrame(rows, columns=["run", "arm", "layer", "step0", "last", "last_step", "change"])


def _text_vs_uniform_claim(claim: dict, runs: list[dict]) -> tuple[dict, pd.DataFrame]:
    e = claim["endpoint"]
    sp = sparsification(runs, e["metric"], int(e["layer"]), e.get("probe_set", "seen"))
    t, u = sp.loc[sp["arm"] == "corpus", "change"], sp.loc[sp["arm"] == "uniform", "change"]
    if len(t) < 2 or len(u) < 2:
        return _claim_row(
            claim, n_runs=len(t) + len(u), note=f"needs >= 2 text and >= 2 uniform runs, got {len(t)} and {len(u)}"
        ), sp
    vt, vu = t.var(ddof=1) / len(t), u.var(ddof=1) / len(u)
    se = math.sqrt(vt + vu)
    df = (vt + vu) ** 2 / (vt**2 / (len(t) - 1) + vu**2 / (len(u) - 1)) if vt + vu > 0 else math.nan
    note = (
        f"change step 0 -> last: text {t.mean():+.4f} ({len(t)} runs), uniform {u.mean():+.4f} ({len(u)} runs); Welch"
    )
    return _claim_row(claim, estimate=float(t.mean() - u.mean()), se=se, df=df, n_runs=len(t) + len(u), note=note), sp


def _recall_claim(claim: dict, know: pd.DataFrame) -> dict:
    if not len(know):
        return _claim_row(claim, note="no corpus run with the knowledge probe")
    f = _fit(know, "accuracy", "beta_log2_exposure")
    return _claim_row(
        claim,
        estimate=f["beta"],
        se=f["se"],
        df=f["df"],
        n_persons=f["n_persons"],
        n_runs=f["n_runs"],
        note="linear probability per doubling of 1 + distinct_docs; CI conditional on the trained models",
    )


def _hallucination_claim(claim: dict, runs: list[dict]) -> dict:
    registered = claim["endpoint"]["statistic"]
    found: dict[str, list[tuple[float, float, int]]] = {}
    for r, h in corpus_tables(runs, "hallucination"):
        h = h[h["step"] == h["step"].max()]
        if "scope" in h and (h["scope"] == "panel").any():
            h = h[h["scope"] == "panel"]
        z = float(stats.norm.ppf(0.5 + _level(r, "knowledge") / 2))
        for stat in ("auroc_exposure_minus_confidence", "auroc_cooccurrence_minus_confidence"):
            row = h[(h["statistic"] == stat) & (h["bin"] == "all")] if "bin" in h else h[h["statistic"] == stat]
            if len(row) and np.isfinite(row["value"].iloc[0]):
                x = row.iloc[0]
                found.setdefault(stat, []).append(
                    (float(x["value"]), float(x["ci_high"] - x["ci_low"]) / (2 * z), int(x["n_entities"]))
                )
    n_corpus = sum(r["arm"] == "corpus" for r in runs)
    co = found.get("auroc_cooccurrence_minus_confidence", [])
    # the co-occurrence statistic only when every corpus run has it (a facts-file study), else the registered one
    stat = "auroc_cooccurrence_minus_confidence" if co and len(co) == n_corpus else registered
    vals = found.get(stat, [])
    if not vals:
        return _claim_row(claim, note=f"no corpus run with {stat}")
    K = len(vals)
    v, se, ents = (np.array(c) for c in zip(*vals))
    return _claim_row(
        claim,
        estimate=float(v.mean()),
        se=float(math.sqrt(float((se**2).sum())) / K),
        df=float(ents.min() - 1),
        n_persons=int(ents.max()),
        n_runs=K,
        note=f"{stat}, paired bootstrap over persons per run (SE from its interval), mean over {K} runs",
    )


def _modularity_claim(claim: dict, runs: list[dict]) -> tuple[dict, pd.DataFrame]:
    rows = []
    for r, m in corpus_tables(runs, "modularity_v2"):
        m = m[m["step"] >= 0].sort_values("step")  # step -1 is the untrained control twin
        if not len(m):
            continue
        first, last = m.iloc[0], m.iloc[-1]
        rows.append(
            {
                "run": r["name"],
                "step0": int(first["step"]),
                "score0": float(first["score_v2"]),
                "excess0": float(first["excess"]),
                "last_step": int(last["step"]),
                "score": float(last["score_v2"]),
                "null_mean": float(last["null_mean"]),
                "excess": float(last["excess"]),
                "p_perm": float(last.get("p_perm", math.nan)),
            }
        )
    cols = ["run", "step0", "score0", "excess0", "last_step", "score", "null_mean", "excess", "p_perm"]
    mod = pd.DataFrame(rows, columns=cols)
    metric = claim["endpoint"].get("metric", "excess")
    if len(mod) < 2:
        return _claim_row(claim, n_runs=len(mod), note="needs >= 2 corpus runs with modularity v2"), mod
    v = mod[metric]
    K = len(v)
    gain = (mod["excess"] - mod["excess0"]).mean()
    note = (
        f"score_v2 - its permutation null at the last step, mean over {K} runs (p_perm <= {mod['p_perm'].max():.3g} "
        f"in every run); excess gained since step 0 (secondary): {gain:+.3f}"
    )
    row = _claim_row(
        claim, estimate=float(v.mean()), se=float(v.std(ddof=1) / math.sqrt(K)), df=K - 1, n_runs=K, note=note
    )
    return row, mod


def _capacity_claim(claim: dict, capacity: list[str] | None, out: Path) -> dict:
    if not capacity:
        return _claim_row(claim, note="no capacity multirun given (--capacity DIR)")
    from densitylab.report.capacity import capacity_report, load_capacity_runs

    _, res = capacity_report(capacity, out / "capacity")
    runs = load_capacity_runs(capacity)
    m = len(res.get("alpha_models", [])) or 2
    t = float(stats.t.ppf(0.975, max(m - 1, 1)))
    se = (res["alpha_ci_high"] - res["alpha_ci_low"]) / (2 * t)
    precisions = set()
    from densitylab.report.compare import find_run_dirs

    for d in find_run_dirs(capacity):
        s = json.loads((d / "summary.json").read_text()) if (d / "summary.json").is_file() else {}
        precisions.add("bf16" if "bf16" in str(s.get("precision", "32")) else "fp32")
    prec = "bf16" if precisions == {"bf16"} else "fp32"
    ref = MORRIS_ALPHA[prec]
    limited = bool((runs["stopped_by"] != "plateau").any()) if "stopped_by" in runs else True
    row = _claim_row(
        claim,
        estimate=float(res["alpha"] - ref),
        se=float(se),
        df=float(max(m - 1, 1)),
        n_runs=len(runs),
        note=f"alpha {res['alpha']:.3f} bits/param vs {ref} ({prec}) over {m} models",
    )
    row["compute_limited"] = limited
    return row


def _depth_width_claim(claim: dict, depth_width: list[str] | None) -> dict:
    if not depth_width:
        return _claim_row(claim, note="no depth_width multirun given (--depth-width DIR)")
    from densitylab.report.compare import find_run_dirs

    xs, ys = [], []
    for d in find_run_dirs(depth_width):
        s = json.loads((d / "summary.json").read_text()) if (d / "summary.json").is_file() else {}
        cfg = _yaml(d / "hparams.yaml") if (d / "hparams.yaml").is_file() else {}
        n_layer = ((cfg.get("model") or {}).get("net") or {}).get("n_layer")
        if n_layer and math.isfinite(float(s.get("val/loss", math.nan))):
            xs.append(math.log2(float(n_layer)))
            ys.append(float(s["val/loss"]))
    if len(xs) < 3 or len(set(xs)) < 2:
        return _claim_row(claim, n_runs=len(xs), note="needs >= 3 finished runs over >= 2 depths")
    import statsmodels.api as sm

    fit = sm.OLS(np.asarray(ys), sm.add_constant(np.asarray(xs))).fit()
    return _claim_row(
        claim,
        estimate=float(fit.params[1]),
        se=float(fit.bse[1]),
        df=float(fit.df_resid),
        n_runs=len(xs),
        note=f"OLS of final val/loss on log2(n_layer), {len(xs)} runs",
    )


def controls_table(runs: list[dict]) -> pd.DataFrame:
    """Between-person familiarity estimates of every text run from its own density endpoints (the last step's
    ``slope`` rows of ``probes/density.parquet``: persons as clusters within one run): a single-run control
    (``swiglu``, ``long``) is reported this way only, beside the ``corpus`` runs for reference. Columns: ``run,
    arm, layer, role, metric, slope, ci_low, ci_high, n_entities, status, step``."""
    rows = []
    for r in runs:
        f = r["path"] / "probes" / "density.parquet"
        if r["arm"] == "uniform" or not f.is_file():
            continue
        d = pd.read_parquet(f)
        d = d[(d["estimand"] == "slope") & (d["probe_set"] == "panel")]
        d = d[d["step"] == d["step"].max()] if len(d) else d
        for x in d.itertuples():
            rows.append(
                {
                    "run": r["name"],
                    "arm": r["arm"],
                    "layer": x.layer,
                    "role": x.role,
                    "metric": x.metric,
                    "slope": x.value,
                    "ci_low": x.ci_low,
                    "ci_high": x.ci_high,
                    "n_entities": x.n_entities,
                    "status": x.status,
                    "step": x.step,
                }
            )
    cols = ["run", "arm", "layer", "role", "metric", "slope", "ci_low", "ci_high", "n_entities", "status", "step"]
    return pd.DataFrame(rows, columns=cols)


def study_verdicts(
    runs: list[dict], out: Path, capacity: list[str] | None = None, depth_width: list[str] | None = None
) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
    """Every pre-registered claim's estimate and verdict (:data:`STUDY_VERDICT_COLUMNS`) and the secondary
    tables (``within_person``, ``pairwise``, ``controls``, ``sparsification``, ``modularity``, ``persons``).

    Raises:
        ValueError: a claim id the report does not know (1-9), or a bad SESOI / sign in the claims.
    """
    study = runs[0]["config"]["study"]
    know_threshold = float(
        ((runs[0]["config"].get("callbacks") or {}).get("knowledge") or {}).get("known_threshold", 0.5)
    )
    dens, know = person_density(runs), person_knowledge(runs, know_threshold)
    tables: dict[str, pd.DataFrame] = {
        "persons": dens,
        "within_person": within_person_table(dens, know),
        "pairwise": pairwise_table(dens),
        "controls": controls_table(runs),
    }
    rows = []
    for claim in study_claims(runs):
        cid = int(claim["id"])
        if cid == 1:
            rows.append(_density_claim(claim, dens, runs, "high_minus_low"))
        elif cid == 2:
            rows.append(_density_claim(claim, dens, runs, "low_minus_zero"))
        elif cid == 3:
            rows.append(_ood_claim(claim, runs))
        elif cid == 4:
            row, tables["sparsification"] = _text_vs_uniform_claim(claim, runs)
            rows.append(row)
        elif cid == 5:
            rows.append(_recall_claim(claim, know))
        elif cid == 6:
            rows.append(_hallucination_claim(claim, runs))
        elif cid == 7:
            row, tables["modularity"] = _modularity_claim(claim, runs)
            rows.append(row)
        elif cid == 8:
            rows.append(_capacity_claim(claim, capacity, out))
        elif cid == 9:
            rows.append(_depth_width_claim(claim, depth_width))
        else:
            raise ValueError(f"study.claims id={cid!r}: expected a claim id 1-9 the report knows how to estimate")
    claims = pd.DataFrame(rows)
    table = verdict_table(claims, alpha=float(study.get("alpha", 0.05)))
    for c in ("id", "name", "statement", "note"):
        table[c] = claims[c].to_numpy()
    if "compute_limited" in claims:
        limited = claims["compute_limited"].fillna(False).astype(bool).to_numpy()
        table.loc[limited & (table["verdict"] != "not measured"), "verdict"] = "inconclusive (compute-limited)"
    return table[STUDY_VERDICT_COLUMNS], tables


# ----------------------------------------------------------------------------- outputs
def _fmt(v, digits: int = 4) -> str:
    if isinstance(v, (float, np.floating)):
        if not math.isfinite(v):
            return "—"
        return f"{v:.3g}" if abs(v) < 1e-3 and v != 0 else f"{v:.{digits}f}"
    return str(v)


def markdown_table(df: pd.DataFrame, columns: list[str]) -> str:
    """``df[columns]`` as a GitHub-flavoured Markdown table (floats to 4 decimals, NaN as —)."""
    head = "| " + " | ".join(columns) + " |\n|" + "|".join("---" for _ in columns) + "|\n"
    body = "".join("| " + " | ".join(_fmt(v) for v in row) + " |\n" for row in df[columns].itertuples(index=False))
    return head + body


def verdicts_markdown(table: pd.DataFrame, runs: list[dict]) -> str:
    """``verdicts.md``: the verdict table with what each row's interval is conditional on."""
    arms = pd.Series([r["arm"] for r in runs]).value_counts().to_dict()
    t = table.assign(ci=[f"[{_fmt(a)}, {_fmt(b)}]" for a, b in zip(table["ci_low"], table["ci_high"])])
    cols = ["claim", "endpoint", "estimate", "ci", "level", "n_persons", "n_runs", "unit", "p_holm", "sesoi", "verdict"]
    notes = "".join(f"- **{r.claim}**: {r.statement}. {r.note}\n" for r in table.itertuples() if r.note or r.statement)
    return (
        "# Familiarity study: pre-registered verdicts\n\n"
        f"Runs: {len(runs)} ({', '.join(f'{k} {v}' for k, v in arms.items())}). Each interval is at its Holm-adjusted"
        f" level (`level`) over the {int(table['p_value'].notna().sum())} measured claims; verdicts in this order: "
        "negligible (inside ±SESOI), supported, contradicted, inconclusive, not measured. Within-person intervals "
        "(claims 1, 2, 5) are conditional on the trained models: see `pairwise.csv` for the model-to-model spread.\n\n"
        + markdown_table(t, cols)
        + "\n"
        + notes
    )


def _plot_density(runs: list[dict], metric: str, path: Path) -> Path | None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    drawn = 0
    for r, label in zip(runs, run_labels([r["path"] for r in runs], [r["name"] for r in runs])):
        f = r["path"] / "probes" / "density.parquet"
        if not f.is_file():
            continue
        d = pd.read_parquet(f)
        d = d[(d["probe_set"] == "seen") & (d["role"] == "all") & (d["estimand"] == "mean") & (d["metric"] == metric)]
        d = d[(d["exposure"] == "all") & (d["layer"] == r["n_layer"] - 1)].sort_values("step")
        if not len(d):
            continue
        ax.plot(d["step"].clip(lower=1), d["value"], marker=".", label=f"{label} ({r['arm']})")
        drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xscale("log")
    ax.set(
        xlabel="optimizer step (step 0 drawn at 1)",
        ylabel=f"{metric}, last layer, seen windows",
        title="Density over training, every arm of the study",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def log_to_wandb(table: pd.DataFrame, runs: list[dict], out: Path) -> str | None:
    """Log the verdict table as a W&B table (``study/verdicts``) in a run of the study's group (``job_type``
    ``study_report``, tag ``study``), offline unless ``WANDB_MODE`` says otherwise; returns the run's folder, or
    None when wandb is not installed or ``WANDB_MODE=disabled``."""
    import os

    if os.environ.get("WANDB_MODE", "").lower() == "disabled":
        return None
    try:
        import wandb
    except ImportError:
        return None
    study = runs[0]["config"]["study"]
    group = study.get("group") or runs[0]["config"].get("experiment_name")
    os.environ.setdefault("WANDB_MODE", "offline")
    (out / "wandb").mkdir(parents=True, exist_ok=True)
    run = wandb.init(
        project="densitylab",
        group=str(group)[-128:] if group else None,
        job_type="study_report",
        tags=["study"],
        dir=str(out),
        config={"study": study.get("name"), "runs": len(runs)},
        reinit=True,
    )
    try:
        t = table.astype({c: str for c in ("claim", "endpoint", "verdict", "unit", "statement", "note", "name")})
        run.log({"study/verdicts": wandb.Table(dataframe=t)})
        return str(run.dir)
    finally:
        run.finish()


def study_report(
    paths: list[str | Path],
    out_dir: str | Path | None = None,
    capacity: list[str] | None = None,
    depth_width: list[str] | None = None,
    wandb_table: bool = True,
) -> tuple[Path, pd.DataFrame]:
    """Pool a study multirun, write every output into ``out_dir`` (default ``<multirun>/report/study``) and return
    ``(out_dir, verdict table)``.

    Raises:
        FileNotFoundError: no study run under ``paths``. ValueError: runs with different claims, a bad claim.
    """
    runs = load_study_runs(paths)
    from densitylab.report.compare import _common_parts

    root = Path(*_common_parts([r["path"].resolve() for r in runs])) if len(runs) > 1 else runs[0]["path"].parent
    out = Path(out_dir) if out_dir else root / "report" / "study"
    out.mkdir(parents=True, exist_ok=True)
    used = [r for r in runs if r["status"] == "completed"]  # a failed or unfinished run never enters an estimate
    if not used:
        raise ValueError(f"none of the {len(runs)} study runs under {[str(p) for p in paths]} completed")
    table, tables = study_verdicts(used, out, capacity, depth_width)
    table.to_csv(out / "verdicts.csv", index=False)
    md = verdicts_markdown(table, used)
    left_out = [f"{r['name']} ({r['status']})" for r in runs if r["status"] != "completed"]
    if left_out:
        md += f"\nLeft out (not completed): {', '.join(left_out)}.\n"
    (out / "verdicts.md").write_text(md)
    for name, t in tables.items():
        t.to_csv(out / f"{name}.csv", index=False)
    runs_t = pd.DataFrame([{k: r[k] for k in ("name", "arm", "rank_seed", "seed", "n_layer", "status")} for r in runs])
    runs_t.to_csv(out / "runs.csv", index=False)
    _plot_density(used, "active_frac_live", out / "density_over_training.png")
    summary = {
        "runs": runs_t.to_dict("records"),
        "verdicts": json.loads(table.to_json(orient="records")),
    }
    (out / "study.json").write_text(json.dumps(summary, indent=2, default=str))
    if wandb_table:
        log_to_wandb(table, used, out)
    return out, table


def format_verdicts(table: pd.DataFrame) -> str:
    """The verdict table for a terminal: claim, estimate [CI] at its level, n persons / runs, verdict."""
    lines = [f"{'claim':34} {'estimate':>10} {'CI':>24} {'level':>6} {'persons':>7} {'runs':>4}  verdict"]
    for r in table.itertuples():
        ci = f"[{_fmt(r.ci_low)}, {_fmt(r.ci_high)}]"
        lines.append(
            f"{r.claim[:34]:34} {_fmt(r.estimate):>10} {ci:>24} {_fmt(r.level, 3):>6} "
            f"{r.n_persons:>7} {r.n_runs:>4}  {r.verdict}"
        )
    return "\n".join(lines)
