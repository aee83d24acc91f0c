"""Closed-set fact recall: leak-free prompts and candidate scoring from a cached prompt (issue 15, first part).

What the model *knows* about a person is read as closed-set recall (design §8 of the project's rules;
Kandpal et al. 2023, "Large Language Models Struggle to Learn Long-Tail Knowledge", arXiv:2211.08411;
the bioS biographies of Allen-Zhu & Li, "Physics of Language Models: Part 3.1", arXiv:2309.14316):

- **Prompts without leakage** (:func:`knowledge_prompts`): one prompt per (person, attribute), the target
  attribute's with-name template cut at the value ("⟨name⟩ was born in"), rotating over that attribute's
  with-name templates; never the biography, whose other sentences give answers away. Attributes
  :data:`KNOWLEDGE_ATTRIBUTES`; ``birth_date`` is scored as its month (12 candidates); ``employer_city`` is
  left out (the employer determines it).
- **Candidate scoring** (:func:`score_candidates`): every candidate value of the attribute is scored by its
  full log-probability (nats) as a continuation of the prompt. The prompt runs once and the candidates
  continue from its cached keys and values (``GPT.forward(past_key_values=...)``), so an item costs about
  prompt + Σ candidate tokens instead of candidates × (prompt + candidate).
- **Per item** (:func:`item_scores`): ``predicted``, ``correct``, ``p_true`` (the truth's probability
  normalised over the candidates), ``margin`` (log p of the truth minus the best other, nats),
  ``confidence`` (the answer's normalised probability) and ``entropy`` (of the normalised candidate
  distribution, nats).

The probe callback, the curves, the hallucination analysis and the facts-file path build on these.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from densitylab.data.synthetic.render import TEMPLATES
from densitylab.data.synthetic.vocab import MONTHS
from densitylab.probes.hallucination import item_clusters
from densitylab.probes.stats import cluster_proportion_ci

#: Attributes the knowledge probe asks about (``employer_city`` follows from the employer).
KNOWLEDGE_ATTRIBUTES = ("birth_date", "birth_city", "university", "major", "employer")


@dataclass(frozen=True)
class Prompt:
    """One closed-set item.

    Attributes:
        entity_id: the person asked about.
        attribute: one of :data:`KNOWLEDGE_ATTRIBUTES`.
        text: the prompt, ending right before the value (no trailing space).
        answer: the true value (``birth_date``: its month).
        candidates: every value the attribute takes in the corpus (``birth_date``: the 12 months), each as
            it follows the prompt (a leading space).
        template: index of the with-name template used (-1: a facts-file item).
        entity: the subject's name (facts files: the optional ``entity`` field; None without one).
    """

    entity_id: int
    attribute: str
    text: str
    answer: str
    candidates: tuple[str, ...]
    template: int
    entity: str | None = None


def _answer(attribute: str, value: str) -> str:
    return value.split(" ")[0] if attribute == "birth_date" else value


def with_name_templates(attribute: str) -> list[tuple[int, str]]:
    """The templates of ``attribute`` that name the subject in full, cut right before the value: ``(index,
    prefix)`` with ``{name}`` still in the prefix (``"{name} was born in"``).

    Raises:
        KeyError: for an attribute without templates.
    """
    out = []
    field = "{" + attribute + "}"
    for i, t in enumerate(TEMPLATES[attribute]):
        if t.startswith("{name}") and field in t:
            prefix = t[: t.index(field)].rstrip()
            if not any(f"{{{a}}}" in prefix for a in TEMPLATES):  # no other value before this one
                out.append((i, prefix))
    return out


def knowledge_prompts(
    entities: pd.DataFrame, persons: Sequence[int], attributes: Sequence[str] = KNOWLEDGE_ATTRIBUTES
) -> list[Prompt]:
    """One prompt per (person, attribute), rotating over the attribute's with-name templates by entity id (a
    person gets the same prompt whichever subset of people is asked).

    Args:
        entities: the people table (``entity_id``, ``entity`` = the full name, and one column per attribute).
        persons: entity ids to ask about.
        attributes: attributes to ask (default :data:`KNOWLEDGE_ATTRIBUTES`).
    Returns:
        The prompts, person by person, attribute by attribute. Pronoun fields in a template (``{his}``) are
        filled from the person's ``gender`` when the table has it. An item whose prompt holds one of its
        attribute's candidate values (:func:`prompt_names_a_candidate`) is left out.
    Raises:
        ValueError: for an unknown attribute or a person not in the table.
    """
    from densitylab.data.synthetic.render import _PRONOUNS

    bad = [a for a in attributes if a not in KNOWLEDGE_ATTRIBUTES]
    if bad:
        raise ValueError(f"attributes {bad}: expected a subset of {list(KNOWLEDGE_ATTRIBUTES)}")
    table = entities.set_index("entity_id")
    missing = [p for p in persons if p not in table.index]
    if missing:
        raise ValueError(f"persons {missing[:5]} are not in the entity table")
    values = {
        a: tuple(" " + v for v in (MONTHS if a == "birth_date" else sorted(set(entities[a].astype(str)))))
        for a in attributes
    }
    out = []
    for p in persons:
        row = table.loc[p]
        pronouns = _PRONOUNS[row["gender"]] if "gender" in table.columns else {}
        for attribute in attributes:
            options = with_name_templates(attribute)
            i, prefix = options[int(p) % len(options)]  # by person: the same prompt in every subset
            text = prefix.format(name=row["entity"], **pronouns)
            if prompt_names_a_candidate(text, values[attribute]):
                continue  # e.g. the middle name Sydney asked for a birth city: the prompt itself offers an answer
            answer = _answer(attribute, str(row[attribute]))
            out.append(Prompt(int(p), attribute, text, answer, values[attribute], i, str(row["entity"])))
    return out


def prompt_names_a_candidate(text: str, candidates: Sequence[str]) -> bool:
    """True when a candidate value (as whole words) appears in the prompt: such an item is left out, since the
    prompt would offer that answer to be copied (a middle name that is also a city: "Deborah Sydney Allen is a
    native of")."""
    words = f" {' '.join(text.replace('.', ' ').replace(',', ' ').split())} "
    return any(f" {c.strip()} " in words for c in candidates)


@torch.no_grad()
def score_candidates(model, prompt_ids: Sequence[int], candidate_ids: Sequence[Sequence[int]]) -> np.ndarray:
    """Log-probability (nats) of each candidate token sequence as the continuation of the prompt.

    The prompt runs once (``use_cache``); the candidates continue from its cached keys and values, one batch
    per candidate length (no padding; the first token is read from the prompt's last logits):
    :func:`score_candidates_batch` with one prompt.

    Args:
        model: a :class:`densitylab.model.GPT` in eval mode.
        prompt_ids: the prompt's P >= 1 token ids.
        candidate_ids: C candidates, each >= 1 token ids; P + the longest must fit ``block_size``.
    Returns:
        (C,) float64 sum over each candidate's tokens of log p(token | prompt, earlier candidate tokens).
    Raises:
        ValueError: for an empty prompt or candidate, or a sequence longer than ``block_size``.
    """
    if not len(prompt_ids) or any(not len(c) for c in candidate_ids):
        raise ValueError("score_candidates: the prompt and every candidate need at least one token")
    return score_candidates_batch(model, [prompt_ids], candidate_ids)[0]


@torch.no_grad()
def score_candidates_batch(
    model, prompt_ids: Sequence[Sequence[int]], candidate_ids: Sequence[Sequence[int]], max_rows: int = 2048
) -> np.ndarray:
    """:func:`score_candidates` for B prompts of **equal length** sharing one candidate list: the prompts run
    as one batch, and B·C continuations (at most ``max_rows`` rows per forward) continue from their caches,
    grouped by candidate length so no position is padding. A continuation's next-token log-probability is a
    gathered logit minus the logsumexp over the vocabulary (no log-softmax tensor of the continuations).

    Args:
        model: a :class:`densitylab.model.GPT` in eval mode.
        prompt_ids: B prompts, each P >= 1 token ids (the same P).
        candidate_ids: C candidates, each >= 1 token ids.
        max_rows: rows per candidate forward pass (memory: rows × longest candidate × vocabulary logits).
    Returns:
        (B, C) float64 log-probabilities (nats), equal to :func:`score_candidates` prompt by prompt.
    Raises:
        ValueError: for prompts of different lengths, or an empty prompt or candidate.
    """
    lengths = {len(p) for p in prompt_ids}
    if len(lengths) != 1 or 0 in lengths or any(not len(c) for c in candidate_ids):
        raise ValueError(f"score_candidates_batch: prompts of lengths {sorted(lengths)}: expected one length >= 1")
    device = next(model.parameters()).device
    B, C = len(prompt_ids), len(candidate_ids)
    prompts = torch.as_tensor([list(p) for p in prompt_ids], dtype=torch.int64, device=device)
    first = torch.as_tensor([c[0] for c in candidate_ids], dtype=torch.int64, device=device)
    by_length: dict[int, list[int]] = {}  # candidates of one length continue together: no padding
    for j, c in enumerate(candidate_ids):
        if len(c) > 1:
            by_length.setdefault(len(c), []).append(j)
    groups = [
        (torch.as_tensor(js, device=device), torch.as_tensor([candidate_ids[j] for j in js], device=device))
        for _, js in sorted(by_length.items())
    ]
    out = np.zeros((B, C), dtype=np.float64)
    per = max(1, max_rows // C)  # prompts per candidate pass
    for s in range(0, B, per):
        chunk = prompts[s : s + per]
        b = len(chunk)
        logits, past = model(chunk, use_cache=True)
        total = torch.log_softmax(logits[:, -1].float(), -1)[:, first].double()  # (b, C)
        for js, ids in groups:  # ids: (C_g, L_g) candidates of length L_g > 1
            n = len(js)
            past_c = [(k.repeat_interleave(n, 0), v.repeat_interleave(n, 0)) for k, v in past]
            cont = model(ids[:, :-1].repeat(b, 1), past_key_values=past_c).float()  # (b·C_g, L_g-1, V), prompt-major
            target = ids[:, 1:].repeat(b, 1)[..., None]
            logp = cont.gather(-1, target)[..., 0] - torch.logsumexp(cont, -1)  # log p of each next token
            total[:, js] += logp.double().sum(1).view(b, n)
        out[s : s + b] = total.cpu().numpy()
    return out


@torch.no_grad()
def score_candidates_naive(model, prompt_ids: Sequence[int], candidate_ids: Sequence[Sequence[int]]) -> np.ndarray:
    """The same log-probabilities as :func:`score_candidates`, one full forward pass of prompt + candidate per
    candidate (the reference the cached version is tested against)."""
    device = next(model.parameters()).device
    out = []
    for c in candidate_ids:
        seq = torch.as_tensor([list(prompt_ids) + list(c)], dtype=torch.int64, device=device)
        logp = torch.log_softmax(model(seq)[0].float(), -1)
        P = len(prompt_ids)
        out.append(sum(float(logp[P - 1 + t, tok]) for t, tok in enumerate(c)))
    return np.asarray(out, dtype=np.float64)


def item_scores(logp: np.ndarray, truth: int) -> dict[str, float | int | bool]:
    """The per-item numbers from candidate log-probabilities.

    Args:
        logp: (C,) log-probabilities of the candidates (nats).
        truth: index of the true candidate.
    Returns:
        ``predicted`` (index of the most probable candidate), ``correct``, ``p_true`` and ``confidence``
        (normalised over the candidates), ``margin`` (log p of the truth minus the best other candidate,
        nats; negative when wrong) and ``entropy`` (of the normalised distribution, nats).
    Raises:
        ValueError: for fewer than two candidates or a truth index out of range.
    """
    logp = np.asarray(logp, dtype=np.float64)
    if logp.size < 2 or not 0 <= truth < logp.size:
        raise ValueError(f"item_scores: {logp.size} candidates, truth index {truth}: expected >= 2 and in range")
    p = np.exp(logp - logp.max())
    p /= p.sum()
    pred = int(np.argmax(logp))
    others = np.delete(logp, truth)
    entropy = float(-(p[p > 0] * np.log(p[p > 0])).sum())
    return {
        "predicted": pred,
        "correct": pred == truth,
        "p_true": float(p[truth]),
        "confidence": float(p[pred]),
        "margin": float(logp[truth] - others.max()),
        "entropy": entropy if math.isfinite(entropy) else math.nan,
    }


#: Columns of the per-item table :func:`measure_knowledge` returns.
ITEM_COLUMNS = [
    "entity_id",
    "entity",
    "attribute",
    "template",
    "answer",
    "predicted",
    "correct",
    "p_true",
    "confidence",
    "margin",
    "entropy",
    "prompt_tokens",
    "candidate_tokens",
    "n_candidates",
    "shortest",
    "shortest_truth",
    "shortest_chance",
]


def measure_knowledge(model, tokenizer, prompts: Sequence[Prompt], prefix_ids: Sequence[int] = ()) -> pd.DataFrame:
    """Score every closed-set item: tokenize each prompt and its candidates (``tokenizer.encode(...).ids``,
    a ``tokenizers.Tokenizer``), score the candidates from the cached prompts, batched over the prompts of
    one length and candidate list (:func:`score_candidates_batch`), and summarise (:func:`item_scores`).
    Candidate token ids are encoded once per attribute.

    Args:
        model: a :class:`densitylab.model.GPT` in eval mode.
        tokenizer: the run's tokenizer.
        prompts: the items (:func:`knowledge_prompts`).
        prefix_ids: token ids put before every prompt: ``[eos_id]`` makes the prompt start a document, as every
            training biography does after its ``<|endoftext|>`` (without it the name sits at position 0 with no
            context, where training rarely put a name).
    Returns:
        One row per item with :data:`ITEM_COLUMNS`; ``predicted`` is the predicted value (no leading space),
        ``prompt_tokens`` / ``candidate_tokens`` the tokens the item cost (prompt + Σ candidates), ``shortest``
        whether the answer is a candidate of minimum token length, ``shortest_truth`` whether the true value is
        one, and ``shortest_chance`` the share of such candidates (summed log-probabilities favour short
        candidates: a model that knew every answer would give ``shortest`` at the rate of ``shortest_truth``, a
        length-blind guesser at ``shortest_chance``).
    """
    cache: dict[tuple[str, ...], list[list[int]]] = {}
    encoded = []
    for p in prompts:
        if p.candidates not in cache:
            cache[p.candidates] = [tokenizer.encode(c, add_special_tokens=False).ids for c in p.candidates]
        encoded.append(list(prefix_ids) + tokenizer.encode(p.text, add_special_tokens=False).ids)
    # one batch per (candidate list, prompt length): the prompts run together, their continuations too
    groups: dict[tuple[tuple[str, ...], int], list[int]] = {}
    for i, (p, ids) in enumerate(zip(prompts, encoded)):
        groups.setdefault((p.candidates, len(ids)), []).append(i)
    logps: list[np.ndarray | None] = [None] * len(prompts)
    for (cands, _), members in groups.items():
        scores = score_candidates_batch(model, [encoded[i] for i in members], cache[cands])
        for i, row in zip(members, scores):
            logps[i] = row
    from densitylab.probes.hallucination import shortest_candidates

    short = {c: shortest_candidates([len(t) for t in ids]) for c, ids in cache.items()}
    rows = []
    for p, ids, logp in zip(prompts, encoded, logps):
        cand = cache[p.candidates]
        s = item_scores(logp, p.candidates.index(" " + p.answer))
        rows.append(
            {
                "entity_id": p.entity_id,
                "entity": p.entity or "",
                "attribute": p.attribute,
                "template": p.template,
                "answer": p.answer,
                **s,
                "predicted": p.candidates[s["predicted"]].strip(),
                "prompt_tokens": len(ids),
                "candidate_tokens": sum(len(c) for c in cand),
                "n_candidates": len(cand),
                "shortest": bool(short[p.candidates][s["predicted"]]),
                "shortest_truth": bool(short[p.candidates][p.candidates.index(" " + p.answer)]),
                "shortest_chance": float(short[p.candidates].mean()),
            }
        )
    return pd.DataFrame(rows, columns=ITEM_COLUMNS)


# ---------------------------------------------------------------------------------------------------- analysis
#: Columns of ``probes/knowledge.parquet`` (the items of every call).
RECORD_COLUMNS = [
    "step",
    "scope",
    *ITEM_COLUMNS,
    "exposure",
    "bin",
    "bin_index",
    "known",
    "source",
    "leak_chance",
    "confident_error",
    "cooccurrence",
]
#: Columns of ``probes/knowledge_curve.parquet``.
CURVE_COLUMNS = [
    "step",
    "scope",
    "attribute",
    "estimand",
    "exposure",
    "bin",
    "bin_index",
    "value",
    "ci_low",
    "ci_high",
    "n_items",
    "n_entities",
    "chance",
    "prior",
    "method",
    "status",
]


def answered_values(entities: pd.DataFrame, attribute: str) -> np.ndarray:
    """(E,) object array: every entity's value of ``attribute`` as the probe answers it (``birth_date``: its
    month), indexed by ``entity_id`` (ids 0..E-1; missing ids get None)."""
    ids = entities["entity_id"].to_numpy(np.int64)
    out = np.full(int(ids.max()) + 1 if ids.size else 0, None, dtype=object)
    out[ids] = [_answer(attribute, str(v)) for v in entities[attribute]]
    return out


def popularity_prior(
    entities: pd.DataFrame, attributes: Sequence[str] = KNOWLEDGE_ATTRIBUTES, weights: str | None = None
) -> dict[str, str]:
    """Each attribute's most common value: across people (``weights=None``: the prior of the accuracy curve),
    or across training documents (``weights="planned_docs"``: each person's value counted once per planned
    document; the ``prior`` source of a wrong answer). Ties go to the alphabetically first value.

    Raises:
        KeyError: for a missing attribute or weight column.
    """
    out = {}
    for a in attributes:
        v = pd.Series([_answer(a, str(x)) for x in entities[a]])
        w = np.ones(len(v)) if weights is None else entities[weights].to_numpy(np.float64)
        counts = pd.Series(w).groupby(v.to_numpy()).sum()
        out[a] = str(counts[counts == counts.max()].index.min())
    return out


def person_known(items: pd.DataFrame) -> np.ndarray:
    """(n,) ``known`` of each item: its person's mean correctness over the attributes probed in the same call
    (continuous, in [0, 1]); an item without a person (-1) is its own person."""
    g = item_clusters(items)
    return items.groupby(g)["correct"].transform("mean").to_numpy(np.float64)


def accuracy_curve(
    items: pd.DataFrame,
    labels: Sequence[str],
    prior: Mapping[str, str],
    *,
    exposure: str = "distinct_docs",
    min_entities: int = 10,
    level: float = 0.95,
) -> pd.DataFrame:
    """Accuracy per exposure bin and pooled, overall and per attribute, persons as clusters (the Wilson interval
    on the CR1 design-effect sample size, :func:`densitylab.probes.stats.cluster_proportion_ci`), with the chance
    level (mean 1 / candidates) and the popularity prior (accuracy of always answering the attribute's most
    common value) on the same items
    (Kandpal et al. 2023, arXiv:2211.08411: recall against the number of relevant training documents).

    Args:
        items: ``entity_id, attribute, answer, correct, n_candidates, bin_index`` per item.
        labels: bin labels by bin index.
        prior: attribute -> its most common value across people (:func:`popularity_prior`).
        exposure: the name of the exposure measure the bins are on (a column value).
        min_entities: fewer persons in a row: status ``insufficient`` (the value is kept, descriptive only).
        level: confidence level.
    Returns:
        :data:`CURVE_COLUMNS` rows without ``step`` and ``scope`` (estimand ``accuracy``, method
        ``cluster_wilson``).
    """
    rows = []
    g = item_clusters(items)
    correct = items["correct"].to_numpy(np.float64)
    is_prior = np.array([prior.get(a) == t for a, t in zip(items["attribute"], items["answer"])], dtype=np.float64)
    chance = 1.0 / items["n_candidates"].to_numpy(np.float64)
    bins = items["bin_index"].to_numpy()
    attrs = items["attribute"].to_numpy()
    for attribute in ["all", *sorted(set(attrs))]:
        am = np.ones(len(items), dtype=bool) if attribute == "all" else attrs == attribute
        for b, lab in [(-1, "all"), *enumerate(labels)]:
            m = am if b < 0 else am & (bins == b)
            mean, lo, hi, n, k = cluster_proportion_ci(correct[m], g[m], level)
            rows.append(
                {
                    "attribute": attribute,
                    "estimand": "accuracy",
                    "exposure": exposure,
                    "bin": lab,
                    "bin_index": b,
                    "value": mean,
                    "ci_low": lo,
                    "ci_high": hi,
                    "n_items": n,
                    "n_entities": k,
                    "chance": float(chance[m].mean()) if n else math.nan,
                    "prior": float(is_prior[m].mean()) if n else math.nan,
                    "method": "cluster_wilson",
                    "status": "ok" if k >= min_entities else "insufficient",
                }
            )
    return pd.DataFrame(rows, columns=CURVE_COLUMNS[2:])


def knowledge_slope(items: pd.DataFrame, *, exposure: str = "distinct_docs", level: float = 0.95) -> dict:
    """Slope of recall on exposure: a logistic GLM of ``correct`` on log2(1 + exposure) (statsmodels,
    Binomial family, cluster-robust covariance with persons as clusters; t interval on G − 1 df), the
    log-linear recall-vs-documents law of Kandpal et al. 2023 (arXiv:2211.08411).

    Args:
        items: ``entity_id, correct, exposure`` per item.
        exposure: the exposure measure's name (for the row).
        level: confidence level.
    Returns:
        One :data:`CURVE_COLUMNS` row without ``step``/``scope`` (estimand ``slope``, value = change in
        log-odds of a right answer per doubling of 1 + exposure; method ``glm_cluster``); status
        ``no_variation`` (all answers right or all wrong, or one exposure level) or ``failed`` (the fit did
        not converge, e.g. perfect separation) with NaNs.
    """
    import warnings

    import statsmodels.api as sm

    y = items["correct"].to_numpy(np.float64)
    x = np.log2(1.0 + items["exposure"].to_numpy(np.float64))
    ok = np.isfinite(x)
    y, x, g = y[ok], x[ok], item_clusters(items)[ok]
    G = len(np.unique(g))
    row = {
        "attribute": "all",
        "estimand": "slope",
        "exposure": exposure,
        "bin": "all",
        "bin_index": -1,
        "value": math.nan,
        "ci_low": math.nan,
        "ci_high": math.nan,
        "n_items": int(ok.sum()),
        "n_entities": G,
        "chance": math.nan,
        "prior": math.nan,
        "method": "glm_cluster",
        "status": "no_variation",
    }
    if G < 2 or y.min(initial=1) == y.max(initial=0) or np.ptp(x) == 0:
        return row
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = sm.GLM(y, sm.add_constant(x), family=sm.families.Binomial()).fit(
                cov_type="cluster", cov_kwds={"groups": g}
            )
        beta, se = float(fit.params[1]), float(fit.bse[1])
        if not (fit.converged and math.isfinite(beta) and math.isfinite(se)):
            raise ValueError("no convergence")
    except Exception:  # perfect separation, a singular covariance
        return {**row, "status": "failed"}
    from scipy import stats

    h = float(stats.t.ppf(0.5 + level / 2, G - 1)) * se
    return {**row, "value": beta, "ci_low": beta - h, "ci_high": beta + h, "status": "ok"}


#: Columns of ``probes/knowing_density.parquet``.
KNOWING_DENSITY_COLUMNS = [
    "step",
    "layer",
    "role",
    "metric",
    "bin",
    "bin_index",
    "known_mean",
    "unknown_mean",
    "diff",
    "ci_low",
    "ci_high",
    "n_known",
    "n_unknown",
    "status",
]


def knowing_density(
    positions: pd.DataFrame,
    persons: pd.DataFrame,
    *,
    metric: str,
    roles: Sequence[str],
    labels: Sequence[str],
    threshold: float = 0.5,
    min_entities: int = 10,
    level: float = 0.95,
) -> pd.DataFrame:
    """Density of people the model knows against people it does not, within one exposure bin (descriptive,
    not mediation: knowing shares its causes with density).

    Each panel person's density is the mean of ``L{i}/{metric}`` over their own positions of a role in their
    held-out document (``probes/density_positions.parquet``, probe set ``panel``, ``own``); the difference
    known − unknown comes from an OLS of the person means on an indicator of ``known >= threshold`` within the
    bin, with CR1 standard errors (persons as clusters: one row each, so HC1; t on persons − 1 df).

    Args:
        positions: the density positions of one step.
        persons: ``entity_id, known, bin_index`` per panel person (the same step's knowledge probe).
        metric: the density metric (``active_frac_live``).
        roles: position roles (``name_last``, ``pre_value``).
        labels: bin labels by bin index.
        threshold: ``known`` at or above it counts as known.
        min_entities: fewer than this many people on either side: status ``insufficient``.
        level: confidence level.
    Returns:
        :data:`KNOWING_DENSITY_COLUMNS` rows, one per (layer, role, bin) (``step`` from ``positions``).
    """
    from densitylab.probes.stats import cr1_ols

    cols = sorted(
        (c for c in positions.columns if c.endswith(f"/{metric}") and c.startswith("L")),
        key=lambda c: int(c.split("/")[0][1:]),
    )
    pos = positions[(positions["probe_set"] == "panel") & positions["own"] & positions["role"].isin(list(roles))]
    step = int(positions["step"].iloc[0]) if len(positions) else -1
    known = persons.set_index("entity_id")
    rows = []
    for role in roles:
        means = pos[pos["role"] == role].groupby("person")[cols].mean()
        means = means.join(known[["known", "bin_index"]], how="inner")
        for col in cols:
            layer = int(col.split("/")[0][1:])
            for b, lab in enumerate(labels):
                d = means[(means["bin_index"] == b) & np.isfinite(means[col])]
                k = (d["known"] >= threshold).to_numpy()
                y = d[col].to_numpy(np.float64)
                n1, n0 = int(k.sum()), int((~k).sum())
                row = {
                    "step": step,
                    "layer": layer,
                    "role": role,
                    "metric": metric,
                    "bin": lab,
                    "bin_index": b,
                    "known_mean": float(y[k].mean()) if n1 else math.nan,
                    "unknown_mean": float(y[~k].mean()) if n0 else math.nan,
                    "diff": math.nan,
                    "ci_low": math.nan,
                    "ci_high": math.nan,
                    "n_known": n1,
                    "n_unknown": n0,
                    "status": "insufficient",
                }
                if n1 and n0:
                    X = np.column_stack([np.ones(len(y)), k.astype(np.float64)])
                    beta, _, lo, hi, _, _ = cr1_ols(X, y, d.index.to_numpy(), level)
                    row.update(diff=float(beta[1]), ci_low=float(lo[1]), ci_high=float(hi[1]))
                    if min(n1, n0) >= min_entities:
                        row["status"] = "ok"
                rows.append(row)
    return pd.DataFrame(rows, columns=KNOWING_DENSITY_COLUMNS)
