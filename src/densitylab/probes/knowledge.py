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
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from densitylab.data.synthetic.render import TEMPLATES
from densitylab.data.synthetic.vocab import MONTHS

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
        template: index of the with-name template used.
    """

    entity_id: int
    attribute: str
    text: str
    answer: str
    candidates: tuple[str, ...]
    template: int


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
    """One prompt per (person, attribute), rotating over the attribute's with-name templates by person.

    Args:
        entities: the people table (``entity_id``, ``entity`` = the full name, and one column per attribute).
        persons: entity ids to ask about.
        attributes: attributes to ask (default :data:`KNOWLEDGE_ATTRIBUTES`).
    Returns:
        The prompts, person by person, attribute by attribute. Pronoun fields in a template (``{his}``) are
        filled from the person's ``gender`` when the table has it.
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
    for k, p in enumerate(persons):
        row = table.loc[p]
        pronouns = _PRONOUNS[row["gender"]] if "gender" in table.columns else {}
        for attribute in attributes:
            options = with_name_templates(attribute)
            i, prefix = options[k % len(options)]
            text = prefix.format(name=row["entity"], **pronouns)
            out.append(Prompt(int(p), attribute, text, _answer(attribute, str(row[attribute])), values[attribute], i))
    return out


@torch.no_grad()
def score_candidates(model, prompt_ids: Sequence[int], candidate_ids: Sequence[Sequence[int]]) -> np.ndarray:
    """Log-probability (nats) of each candidate token sequence as the continuation of the prompt.

    The prompt runs once (``use_cache``); all candidates continue from its cached keys and values in one
    batch, right-padded (a causal model's earlier positions never see the padding):
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
    as one batch, and B·C continuations (at most ``max_rows`` rows per forward) continue from their caches.

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
    B, C, L = len(prompt_ids), len(candidate_ids), max(len(c) for c in candidate_ids)
    prompts = torch.as_tensor([list(p) for p in prompt_ids], dtype=torch.int64, device=device)
    ids = torch.zeros(C, L, dtype=torch.int64, device=device)
    real = torch.zeros(C, L, dtype=torch.bool, device=device)
    for j, c in enumerate(candidate_ids):
        ids[j, : len(c)] = torch.as_tensor(list(c), device=device)
        real[j, : len(c)] = True
    out = np.zeros((B, C), dtype=np.float64)
    per = max(1, max_rows // C)  # prompts per candidate pass
    for s in range(0, B, per):
        chunk = prompts[s : s + per]
        b = len(chunk)
        logits, past = model(chunk, use_cache=True)
        total = torch.log_softmax(logits[:, -1].float(), -1)[:, ids[:, 0]].double()  # (b, C)
        if L > 1:
            past_c = [(k.repeat_interleave(C, 0), v.repeat_interleave(C, 0)) for k, v in past]
            cont = model(ids[:, :-1].repeat(b, 1), past_key_values=past_c)  # (b·C, L-1, V), prompt-major
            logp = torch.log_softmax(cont.float(), -1).gather(-1, ids[:, 1:].repeat(b, 1)[..., None])[..., 0]
            total = total + (logp.double() * real[:, 1:].repeat(b, 1)).sum(1).view(b, C)
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
]


def measure_knowledge(model, tokenizer, prompts: Sequence[Prompt]) -> pd.DataFrame:
    """Score every closed-set item: tokenize each prompt and its candidates (``tokenizer.encode(...).ids``,
    a ``tokenizers.Tokenizer``), score the candidates from the cached prompts, batched over the prompts of
    one length and candidate list (:func:`score_candidates_batch`), and summarise (:func:`item_scores`).
    Candidate token ids are encoded once per attribute.

    Args:
        model: a :class:`densitylab.model.GPT` in eval mode.
        tokenizer: the run's tokenizer.
        prompts: the items (:func:`knowledge_prompts`).
    Returns:
        One row per item with :data:`ITEM_COLUMNS`; ``predicted`` is the predicted value (no leading space),
        ``prompt_tokens`` / ``candidate_tokens`` the tokens the item cost (prompt + Σ candidates).
    """
    cache: dict[tuple[str, ...], list[list[int]]] = {}
    encoded = []
    for p in prompts:
        if p.candidates not in cache:
            cache[p.candidates] = [tokenizer.encode(c, add_special_tokens=False).ids for c in p.candidates]
        encoded.append(tokenizer.encode(p.text, add_special_tokens=False).ids)
    # one batch per (candidate list, prompt length): the prompts run together, their continuations too
    groups: dict[tuple[tuple[str, ...], int], list[int]] = {}
    for i, (p, ids) in enumerate(zip(prompts, encoded)):
        groups.setdefault((p.candidates, len(ids)), []).append(i)
    logps: list[np.ndarray | None] = [None] * len(prompts)
    for (cands, _), members in groups.items():
        scores = score_candidates_batch(model, [encoded[i] for i in members], cache[cands])
        for i, row in zip(members, scores):
            logps[i] = row
    rows = []
    for p, ids, logp in zip(prompts, encoded, logps):
        cand = cache[p.candidates]
        s = item_scores(logp, p.candidates.index(" " + p.answer))
        rows.append(
            {
                "entity_id": p.entity_id,
                "attribute": p.attribute,
                "template": p.template,
                "answer": p.answer,
                **s,
                "predicted": p.candidates[s["predicted"]].strip(),
                "prompt_tokens": len(ids),
                "candidate_tokens": sum(len(c) for c in cand),
            }
        )
    return pd.DataFrame(rows, columns=ITEM_COLUMNS)
