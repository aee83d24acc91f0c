"""Where wrong answers come from, confident errors, and the model's confidence against a data statistic.

The knowledge probe (:mod:`densitylab.probes.knowledge`) gives one closed-set answer per (person, attribute).
This module reads the answers against the training data's ground truth (issue 15, item 2):

- **Source of each wrong answer** (:func:`classify_sources`): ``leak_comention`` when the answer is the value
  of a person co-mentioned with the subject in a trained window (the ledger's pair co-occurrence,
  :meth:`densitylab.ledger.ExposureLedger.cooccurrence`), else ``prior`` when it is the attribute's value most
  frequent across training documents, else ``other``; ``correct`` for a right answer.
- **The leak null** (:func:`leak_chance`): a well-known person has hundreds of partners whose values cover
  most of the value set, and wrong answers crowd onto frequent values, so a raw leak rate means little. Its
  null is built from the model's own answers on **zero-exposure people** (who have no facts to recall): for a
  wrong answer of subject s on attribute a, the chance rate is the probability that a zero-exposure answer
  for a, conditioned on not being s's true value, is one of s's partners' values.
- **Confident errors**: wrong answers whose confidence (the answer's probability normalised over the
  candidates) exceeds τ; on zero-exposure people this is the hallucination rate.
- **The seed claim head to head** (:func:`auroc`, :func:`bootstrap_auroc`): AUROC for predicting "the
  answer is wrong" from a score defined for every answer before it is judged: the model's confidence (score
  1 − confidence) against a data statistic (score −log2(1 + x)): the subject's exposure on synthetic data
  (QuCo-RAG's first stage, entity frequency: Min et al. 2025, "QuCo-RAG", arXiv:2512.19134), the trained
  windows where subject and *answered* value co-occur on facts files (QuCo-RAG's second stage: a pair that
  never co-occurs flags a hallucination). On synthetic data that co-occurrence equals correctness by
  construction, so it is computed only on facts files.

Rates carry persons as clusters (shares: :func:`densitylab.probes.stats.cluster_proportion_ci`; means such as
the chance rate: :func:`densitylab.probes.stats.cluster_mean_ci`); the AUROC's interval is a
bootstrap over persons, run once at the end of a run (never in a timed per-step call).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from densitylab.probes.stats import cluster_mean_ci, cluster_proportion_ci

#: Sources of an answer: right, or where a wrong one comes from.
SOURCES = ("correct", "leak_comention", "prior", "other")
#: Columns of ``probes/hallucination.parquet``.
HALLUCINATION_COLUMNS = [
    "step",
    "scope",
    "statistic",
    "bin",
    "bin_index",
    "value",
    "ci_low",
    "ci_high",
    "n_items",
    "n_entities",
    "method",
    "status",
]


def partner_values(
    pair_a: np.ndarray,
    pair_b: np.ndarray,
    counts: np.ndarray,
    values: Mapping[str, np.ndarray],
    subjects: Sequence[int],
) -> dict[str, dict[int, frozenset[str]]]:
    """The attribute values of each subject's co-mention partners in training.

    Args:
        pair_a, pair_b: (P,) int64 entity pairs (a < b) sharing a window (``ExposureLedger.pair_a/pair_b``).
        counts: (P,) int64 trained windows naming both (``ExposureLedger.cooccurrence()``); pairs with 0 are
            not partners (yet).
        values: attribute -> (E,) object array, the value of every entity (as answered: ``birth_date`` as its
            month).
        subjects: the entity ids asked about.
    Returns:
        attribute -> {subject: frozenset of the partners' values} (an empty set for a subject without partners).
    """
    a, b, c = (np.asarray(x, dtype=np.int64) for x in (pair_a, pair_b, counts))
    keep = c > 0
    src, dst = np.concatenate([a[keep], b[keep]]), np.concatenate([b[keep], a[keep]])
    subj = np.unique(np.asarray(list(subjects), dtype=np.int64))
    m = np.isin(src, subj)
    order = np.argsort(src[m], kind="stable")
    src, dst = src[m][order], dst[m][order]
    heads, starts = np.unique(src, return_index=True)
    groups = dict(zip(heads.tolist(), np.split(dst, starts[1:]) if len(heads) else []))
    empty: frozenset[str] = frozenset()
    out: dict[str, dict[int, frozenset[str]]] = {}
    for attribute, vals in values.items():
        v = np.asarray(vals, dtype=object)
        out[attribute] = {int(s): frozenset(v[groups[s]].tolist()) if s in groups else empty for s in subj.tolist()}
    return out


def classify_sources(
    items: pd.DataFrame, partners: Mapping[str, Mapping[int, frozenset[str]]], prior: Mapping[str, str]
) -> np.ndarray:
    """The source of every answer (:data:`SOURCES`), checked in that order.

    Args:
        items: ``entity_id``, ``attribute``, ``predicted``, ``correct`` per item.
        partners: :func:`partner_values`.
        prior: attribute -> its value most frequent across training documents.
    Returns:
        (n,) object array of source names.
    """
    out = np.empty(len(items), dtype=object)
    cols = (items["entity_id"], items["attribute"], items["predicted"], items["correct"])
    for k, (e, a, p, ok) in enumerate(zip(*cols)):
        if ok:
            out[k] = "correct"
        elif p in partners.get(a, {}).get(int(e), ()):
            out[k] = "leak_comention"
        elif prior.get(a) == p:
            out[k] = "prior"
        else:
            out[k] = "other"
    return out


def null_answers(items: pd.DataFrame, zero: np.ndarray) -> dict[str, Counter]:
    """The null distribution of answers: per attribute, how often each value was answered for zero-exposure
    people (counts; :func:`leak_chance` normalises them, leaving the subject's own answers out).

    Args:
        items: ``attribute``, ``predicted`` per item.
        zero: (n,) bool, the item's subject has zero exposure.
    Returns:
        attribute -> Counter value -> answers; attributes without zero-exposure items are absent.
    """
    z = items[np.asarray(zero, dtype=bool)]
    return {a: Counter(g["predicted"].tolist()) for a, g in z.groupby("attribute")}


def leak_chance(
    items: pd.DataFrame,
    partners: Mapping[str, Mapping[int, frozenset[str]]],
    null: Mapping[str, Counter],
    zero: np.ndarray | None = None,
) -> np.ndarray:
    """Chance probability that each wrong answer is a partner's value, under the zero-exposure null:
    Σ_{v ∈ V_s, v ≠ truth} Q_a(v) / Σ_{v ≠ truth} Q_a(v), with V_s the partners' values of subject s and
    Q_a the null distribution of attribute a (:func:`null_answers`), leaving out subject s's own answers when s
    is one of the zero-exposure people the null is built from (leave one person out).

    Args:
        items: ``entity_id``, ``attribute``, ``answer``, ``predicted``, ``correct`` per item.
        partners: :func:`partner_values`.
        null: :func:`null_answers`.
        zero: (n,) bool, the item's subject is in the null (None: none is).
    Returns:
        (n,) float64; NaN for right answers, for subjects without a co-mention partner yet (no leak is
        possible: they are left out of the leak rates) and where the null puts no mass off the truth.
    """
    out = np.full(len(items), math.nan)
    zero = np.zeros(len(items), dtype=bool) if zero is None else np.asarray(zero, dtype=bool)
    own: dict[tuple[int, str], Counter] = {}
    for e, a, pred, z in zip(items["entity_id"], items["attribute"], items["predicted"], zero):
        if z:
            own.setdefault((int(e), a), Counter())[pred] += 1
    cols = (items["entity_id"], items["attribute"], items["answer"], items["correct"])
    for k, (e, a, t, ok) in enumerate(zip(*cols)):
        q = null.get(a)
        v = partners.get(a, {}).get(int(e), frozenset())
        if ok or q is None or not v:
            continue
        q = q - own.get((int(e), a), Counter()) if zero[k] else q
        total = sum(q.values())
        off = total - q.get(t, 0)
        if off <= 0:
            continue
        out[k] = sum(q.get(x, 0) for x in v if x != t) / off
    return out


def shortest_candidates(candidate_tokens: Sequence[int]) -> np.ndarray:
    """(C,) bool: the candidates of minimum token length. Summed log-probabilities favour them, most of all
    early in training; the share of answers among them against their share of the candidates shows how much."""
    lengths = np.asarray(candidate_tokens)
    return lengths == lengths.min()


def auroc(score: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``score`` for telling positives (here: wrong answers) from negatives:
    ``scipy.stats.mannwhitneyu`` U / (n₁ n₀) (ties count one half; Hanley & McNeil 1982).

    Args:
        score: (n,) float, higher = more likely positive; NaN entries are left out.
        positive: (n,) bool.
    Returns:
        The AUROC in [0, 1]; NaN without a positive or a negative.
    """
    s = np.asarray(score, dtype=np.float64)
    y = np.asarray(positive, dtype=bool)
    ok = np.isfinite(s)
    s, y = s[ok], y[ok]
    n1, n0 = int(y.sum()), int((~y).sum())
    if not n1 or not n0:
        return math.nan
    return float(stats.mannwhitneyu(s[y], s[~y]).statistic) / (n1 * n0)


def _replicates(s: np.ndarray, y: np.ndarray, inv: np.ndarray, mult: np.ndarray) -> np.ndarray:
    """(B,) AUROCs of the bootstrap replicates: item weights = their cluster's multiplicity ``mult`` (B, G)."""
    B = len(mult)
    w = mult[:, inv].astype(np.float64)  # (B, n)
    _, u = np.unique(s, return_inverse=True)
    U = int(u.max()) + 1
    idx = (u[None, :] + (np.arange(B) * U)[:, None]).ravel()
    pos = np.bincount(idx, weights=(w * y).ravel(), minlength=B * U).reshape(B, U)
    neg = np.bincount(idx, weights=(w * ~y).ravel(), minlength=B * U).reshape(B, U)
    below = np.cumsum(neg, 1) - neg  # negatives with a lower score
    num = (pos * (below + 0.5 * neg)).sum(1)
    den = pos.sum(1) * neg.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def bootstrap_auroc(
    score: np.ndarray,
    positive: np.ndarray,
    clusters: np.ndarray,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    reference: np.ndarray | None = None,
    strata: np.ndarray | None = None,
) -> tuple[float, float]:
    """Percentile interval of :func:`auroc` from a bootstrap over clusters (persons): each replicate draws
    the persons with replacement and weights every item by its person's multiplicity. Vectorised over
    replicates (one weighted rank sum each).

    Args:
        score, positive: as :func:`auroc`.
        clusters: (n,) person id of each item.
        n_boot: replicates.
        level: confidence level.
        seed: the replicates' RNG seed.
        reference: (n,) a second score: the interval is then of AUROC(score) − AUROC(reference), both on
            the same replicates (a paired comparison; items where either is NaN are left out).
        strata: (n,) the design stratum of each item's person (the panel's ``top`` / ``zero`` / ``log_even``):
            persons are drawn with replacement within their stratum, as the panel was drawn (None: one stratum).
    Returns:
        ``(ci_low, ci_high)``; NaNs with fewer than two persons or without both classes.
    """
    s = np.asarray(score, dtype=np.float64)
    y = np.asarray(positive, dtype=bool)
    g = np.asarray(clusters)
    st = np.zeros(len(s), dtype=np.int64) if strata is None else np.unique(np.asarray(strata), return_inverse=True)[1]
    ok = np.isfinite(s)
    r = None
    if reference is not None:
        r = np.asarray(reference, dtype=np.float64)
        ok &= np.isfinite(r)
        r = r[ok]
    s, y, g, st = s[ok], y[ok], g[ok], st[ok]
    if not s.size:
        return math.nan, math.nan
    _, first, inv = np.unique(g, return_index=True, return_inverse=True)
    G = len(first)
    if G < 2 or y.all() or not y.any():
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    cluster_stratum = st[first]  # (G,)
    members = [np.flatnonzero(cluster_stratum == k) for k in np.unique(cluster_stratum)]
    flat = []
    for idx in members:  # draw each stratum's persons with replacement, as many as it has
        draws = idx[rng.integers(0, len(idx), (n_boot, len(idx)))]  # (B, G_k)
        flat.append((draws + (np.arange(n_boot) * G)[:, None]).ravel())
    mult = np.bincount(np.concatenate(flat), minlength=n_boot * G).reshape(n_boot, G)  # (B, G) multiplicities
    a = _replicates(s, y, inv, mult)
    if r is not None:
        a = a - _replicates(r, y, inv, mult)
    a = a[np.isfinite(a)]
    if not a.size:
        return math.nan, math.nan
    lo, hi = np.quantile(a, [0.5 - level / 2, 0.5 + level / 2])
    return float(lo), float(hi)


def item_clusters(items: pd.DataFrame) -> np.ndarray:
    """(n,) int64 person id of each item (``entity_id``); an item without a person (-1) is its own cluster."""
    e = items["entity_id"].to_numpy(np.int64)
    return np.where(e >= 0, e, -2 - np.arange(len(e)))


def _rate(values: np.ndarray, clusters: np.ndarray, level: float, min_entities: int, share: bool = True) -> dict:
    """A share (0/1 values: Wilson on the design-effect n, method ``cluster_wilson``) or a mean (CR1 t interval,
    ``cluster_mean``) with persons as clusters."""
    ci = cluster_proportion_ci if share else cluster_mean_ci
    m, lo, hi, n, k = ci(np.asarray(values, dtype=np.float64), clusters, level)
    status = "ok" if k >= min_entities and n else "insufficient"
    method = "cluster_wilson" if share else "cluster_mean"
    return {"value": m, "ci_low": lo, "ci_high": hi, "n_items": n, "n_entities": k, "method": method, "status": status}


def wrong_score(items: pd.DataFrame, statistic: str) -> np.ndarray:
    """The score an AUROC statistic ranks answers by (higher = more likely wrong), defined for every answer.

    ``auroc_confidence``: 1 − confidence; ``auroc_exposure``: −log2(1 + exposure); ``auroc_cooccurrence``:
    −log2(1 + cooccurrence) (NaN where the item has none).

    Raises:
        ValueError: for another statistic.
    """
    if statistic == "auroc_confidence":
        return 1.0 - items["confidence"].to_numpy(np.float64)
    if statistic == "auroc_exposure":
        return -np.log2(1.0 + items["exposure"].to_numpy(np.float64))
    if statistic == "auroc_cooccurrence":
        return -np.log2(1.0 + items["cooccurrence"].to_numpy(np.float64))
    raise ValueError(f"statistic={statistic!r}: expected auroc_confidence, auroc_exposure or auroc_cooccurrence")


def auroc_statistics(items: pd.DataFrame) -> list[str]:
    """The AUROC statistics defined on these items: confidence always; exposure where it is known;
    co-occurrence where it is (facts files)."""
    out = ["auroc_confidence"]
    for col, name in (("exposure", "auroc_exposure"), ("cooccurrence", "auroc_cooccurrence")):
        if col in items and np.isfinite(items[col].to_numpy(np.float64)).any():
            out.append(name)
    return out


def hallucination_rows(
    items: pd.DataFrame, labels: Sequence[str], *, min_entities: int = 10, level: float = 0.95
) -> pd.DataFrame:
    """The per-call hallucination statistics of one scope's items (:data:`HALLUCINATION_COLUMNS` but ``step``
    and ``scope``).

    Per exposure bin and pooled (``all``), persons as clusters: the shares (Wilson interval on the CR1
    design-effect sample size, :func:`~densitylab.probes.stats.cluster_proportion_ci`) ``confident_error_rate``
    (share of all items that are confident errors), ``shortest_answer_rate`` (share of answers that are a
    candidate of minimum token length) beside its two baselines ``shortest_truth_rate`` (share of true values
    that are: a model that knew every answer) and ``shortest_chance_rate`` (the mean share of such candidates:
    a length-blind guesser), over the wrong items ``prior_rate`` and ``other_rate``, and over the
    wrong items of subjects with at least one trained co-mention partner ``leak_rate``; the means (CR1 t
    interval) ``leak_chance_rate`` (its null, :func:`leak_chance`) and ``leak_excess`` (leak minus chance, item
    by item: the paired comparison; its interval is conditional on the null's answers, whose own sampling
    error it leaves out). Pooled only: the point AUROCs (:func:`auroc`, method ``point``).

    Args:
        items: one scope's items with ``entity_id, correct, confident_error, source, leak_chance, bin_index,
            confidence, exposure, shortest, shortest_truth, shortest_chance`` (and ``cooccurrence``).
        labels: bin labels, by bin index.
        min_entities: fewer persons: status ``insufficient``.
        level: confidence level.
    """
    rows = []
    g_all = item_clusters(items)
    groups = [("all", -1, np.ones(len(items), dtype=bool))]
    groups += [(lab, b, items["bin_index"].to_numpy() == b) for b, lab in enumerate(labels)]
    wrong = ~items["correct"].to_numpy(bool)
    leak = (items["source"] == "leak_comention").to_numpy(np.float64)
    chance = items["leak_chance"].to_numpy(np.float64)
    ce = items["confident_error"].to_numpy(np.float64)
    short, short_chance = items["shortest"].to_numpy(np.float64), items["shortest_chance"].to_numpy(np.float64)
    for lab, b, m in groups:
        base = {"bin": lab, "bin_index": b}

        def add(name, v, mask, share=True, base=base):
            rows.append({"statistic": name, **base, **_rate(v[mask], g_all[mask], level, min_entities, share)})

        add("confident_error_rate", ce, m)
        add("shortest_answer_rate", short, m)
        add("shortest_truth_rate", items["shortest_truth"].to_numpy(np.float64), m)
        add("shortest_chance_rate", short_chance, m, share=False)
        w = m & wrong
        for name, src in (("prior_rate", "prior"), ("other_rate", "other")):
            add(name, (items["source"] == src).to_numpy(np.float64), w)
        c = w & np.isfinite(chance)  # leak and its null on the same wrong answers (subjects with partners)
        add("leak_rate", leak, c)
        add("leak_chance_rate", chance, c, share=False)
        add("leak_excess", leak - chance, c, share=False)
    for name in auroc_statistics(items):
        s = wrong_score(items, name)
        ok = np.isfinite(s)
        rows.append(
            {
                "statistic": name,
                "bin": "all",
                "bin_index": -1,
                "value": auroc(s, wrong),
                "ci_low": math.nan,
                "ci_high": math.nan,
                "n_items": int(ok.sum()),
                "n_entities": len(np.unique(g_all[ok])),
                "method": "point",
                "status": "descriptive",
            }
        )
    return pd.DataFrame(rows, columns=[c for c in HALLUCINATION_COLUMNS if c not in ("step", "scope")])


def bootstrap_rows(
    items: pd.DataFrame, *, n_boot: int = 1000, level: float = 0.95, seed: int = 0, strata: np.ndarray | None = None
) -> pd.DataFrame:
    """The AUROCs of :func:`hallucination_rows` with person-bootstrap intervals (method ``bootstrap``), and
    for each data statistic ``{statistic}_minus_confidence`` (e.g. ``auroc_exposure_minus_confidence``): the
    paired difference, the data statistic's AUROC minus the model's, its interval from the same replicates
    (> 0: the data statistic flags wrong answers better than the model's confidence). Run once at the end.

    Args:
        items: one scope's items (as :func:`hallucination_rows`).
        n_boot: bootstrap replicates.
        level: confidence level.
        seed: the replicates' seed.
        strata: (n,) each item's design stratum (:func:`bootstrap_auroc`).
    """
    wrong = ~items["correct"].to_numpy(bool)
    g = item_clusters(items)
    rows = []
    for name in auroc_statistics(items):
        s = wrong_score(items, name)
        ok = np.isfinite(s)
        lo, hi = bootstrap_auroc(s, wrong, g, n_boot, level, seed, strata=strata)
        value = auroc(s, wrong)
        k = len(np.unique(g[ok]))
        rows.append(
            {
                "statistic": name,
                "bin": "all",
                "bin_index": -1,
                "value": value,
                "ci_low": lo,
                "ci_high": hi,
                "n_items": int(ok.sum()),
                "n_entities": k,
                "method": "bootstrap",
                "status": "ok" if math.isfinite(lo) else "insufficient",
            }
        )
    conf = wrong_score(items, "auroc_confidence")
    for name in auroc_statistics(items)[1:]:  # the data statistic minus the model's confidence, paired
        s = wrong_score(items, name)
        ok = np.isfinite(s) & np.isfinite(conf)
        lo, hi = bootstrap_auroc(s, wrong, g, n_boot, level, seed, reference=conf, strata=strata)
        rows.append(
            {
                "statistic": f"{name}_minus_confidence",
                "bin": "all",
                "bin_index": -1,
                "value": auroc(s[ok], wrong[ok]) - auroc(conf[ok], wrong[ok]),
                "ci_low": lo,
                "ci_high": hi,
                "n_items": int(ok.sum()),
                "n_entities": len(np.unique(g[ok])),
                "method": "bootstrap",
                "status": "ok" if math.isfinite(lo) else "insufficient",
            }
        )
    return pd.DataFrame(rows, columns=[c for c in HALLUCINATION_COLUMNS if c not in ("step", "scope")])
