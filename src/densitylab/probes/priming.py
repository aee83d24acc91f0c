"""Priming: how one new fact spreads into unrelated contexts, predicted from its keyword's probability before
learning (issue 17). Pure: numpy, pandas and a model to run; no Lightning.

Sun et al. 2025, "How new data permeates LLM knowledge and how to dilute it" (arXiv:2504.09522), fine-tune a
model on one new text and find that how strongly its keyword **primes** unrelated contexts after learning is
predictable from the keyword's probability **before** learning, with a threshold near 10⁻³ (their Fig. 1):

- **S_prime** = mean over thematic prefixes *j* of ``P_after(keyword | j) / P_before(keyword | j)``;
- **S_mem** = the same ratio on the sample's own context (the fact's prompt, cut right before the keyword).

Here the new facts enter *pretraining* at planned steps (the callback :class:`~densitylab.callbacks.priming.
PrimingCallback` puts them into batches; the exposure ledger counts every copy), so P_before is the model's
probability just before the first copy, and a fact's own prompt is a **zero-exposure person** of the synthetic
corpus in an existing relation, rendered with the corpus's own templates (``"⟨person⟩ was born in"``); the
thematic prefixes are the same relation about *other* people (:func:`thematic_prompts`).

What this module does:

- **Plan** (:func:`plan_facts`, :func:`cohort_starts`, :func:`copy_steps`, :func:`pack_windows`): who gets a fact,
  in which relation, cohort, with how many copies ``k`` and at which steps; ``k = 0`` facts are **controls**
  (never inserted), split in two halves: half 1 corrects for the drift of ordinary training, half 2 checks it.
- **Keywords** (:func:`keyword_candidates`, :func:`keyword_targets`, :func:`select_keywords`): one single-token
  keyword per fact, chosen on the model right before the cohort's first copy so that P_before spans the
  pre-registered range (real values of the attribute at the top, unrelated "outlandish" tokens at the bottom).
- **Measurement** (:func:`continuation_logprobs`, :func:`name_density`): log P(keyword | prompt) in nats (a
  multi-token keyword: the sum of its tokens' conditional log-probabilities, i.e. the log of the product),
  and the MLP activation density at the person's last name token.
- **Scores** (:func:`priming_table`, :func:`fact_scores`): P_before, P_after, S_mem and S_prime per fact, raw and
  drift-corrected (divided by the geometric mean over the cohort's half-1 controls of the same ratio at the same
  step).

The threshold statistics (hinge fit, rank correlations, the control check) are in
:mod:`densitylab.probes.threshold`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from densitylab.data.synthetic.render import _PRONOUNS, TEMPLATES
from densitylab.errors import ConfigError

#: The relations a new fact may use (the knowledge probe's attributes; ``employer_city`` follows the employer).
PRIMING_ATTRIBUTES = ("birth_date", "birth_city", "university", "major", "employer")
#: What a keyword candidate looks like when decoded: a space, then a word of >= 3 letters.
KEYWORD_PATTERN = re.compile(r" [A-Za-z]{3,}")
#: ``half`` of an inserted fact, of a control used for the drift correction, of a held-out control.
INSERTED, CORRECTION, HELDOUT = 0, 1, 2

#: Columns of the per-(fact, offset, prompt) table ``probes/priming.parquet``.
TABLE_COLUMNS = [
    "fact_id", "entity_id", "entity", "attribute", "keyword", "cohort", "k", "half", "offset",
    "step_before", "step_after", "kind", "prompt_index", "prompt_entity_id", "p_before", "p_after", "ratio",
    "ratio_corrected", "S_mem", "S_prime", "S_mem_corrected", "S_prime_corrected",
]  # fmt: skip


# ----------------------------------------------------------------------------- templates
def relation_template(attribute: str, template: int = 0) -> tuple[str, str]:
    """The ``template``-th with-name template of ``attribute`` (one that names the subject in full and has no other
    value before this one): ``(prefix, sentence)``, e.g. ``("{name} was born in", "{name} was born in {value}.")``.

    Raises:
        ConfigError: for an attribute outside :data:`PRIMING_ATTRIBUTES`.
    """
    if attribute not in PRIMING_ATTRIBUTES:
        raise ConfigError(f"attribute={attribute!r}: expected one of {list(PRIMING_ATTRIBUTES)}")
    from densitylab.probes.knowledge import with_name_templates

    options = with_name_templates(attribute)
    i, prefix = options[template % len(options)]
    sentence = TEMPLATES[attribute][i].replace("{" + attribute + "}", "{value}")
    return prefix, sentence


def _fill(text: str, name: str, gender: str | None) -> str:
    pronouns = _PRONOUNS.get(str(gender), _PRONOUNS["male"])
    return text.replace("{name}", name).format(**pronouns) if "{" in text else text


def fact_prompt(attribute: str, name: str, gender: str | None = None, template: int = 0) -> str:
    """The fact's own prompt: the relation's template about ``name``, cut right before the value (no trailing
    space): ``"George Arden Harris was born in"``."""
    prefix, _ = relation_template(attribute, template)
    return _fill(prefix, name, gender)


def fact_text(attribute: str, name: str, keyword: str, gender: str | None = None, template: int = 0) -> str:
    """The new fact as one sentence of the corpus's templates: ``"George Arden Harris was born in Zanzibar."``."""
    _, sentence = relation_template(attribute, template)
    return _fill(sentence.replace("{value}", keyword.strip()), name, gender)


def thematic_prompts(people: pd.DataFrame, persons: Sequence[int], attributes: Sequence[str]) -> pd.DataFrame:
    """The thematic prefixes of each relation: the relation's with-name templates about *other* people, rotating
    over the templates (person ``j`` of the list gets template ``j``).

    Args:
        people: the generator's people table (``entity_id``, ``entity``, ``gender``).
        persons: the other people (entity ids), the same for every relation.
        attributes: the relations.
    Returns:
        One row per (attribute, person): ``attribute``, ``prompt_index`` (0.. within the attribute),
        ``entity_id``, ``entity``, ``template``, ``prompt``.
    """
    table = people.set_index("entity_id")
    rows = []
    for a in attributes:
        for j, p in enumerate(persons):
            r = table.loc[int(p)]
            rows.append((a, j, int(p), str(r["entity"]), j, fact_prompt(a, str(r["entity"]), r.get("gender"), j)))
    return pd.DataFrame(rows, columns=["attribute", "prompt_index", "entity_id", "entity", "template", "prompt"])


def prompt_offers(prompt: str, keyword: str) -> bool:
    """True when ``keyword`` appears in ``prompt`` as whole words (the prompt would offer it to be copied)."""
    words = f" {' '.join(prompt.replace('.', ' ').replace(',', ' ').split())} "
    return f" {keyword.strip()} " in words


# ----------------------------------------------------------------------------- schedule
def copy_steps(t0: int, k: int, interval: int) -> list[int]:
    """The optimizer steps that train a fact's copies: ``t0, t0 + K, ..., t0 + (k-1) K`` (1-based: the batch of
    step ``s`` is trained by the ``s``-th optimizer step, the ledger's convention); ``[]`` for ``k = 0``."""
    return [int(t0 + j * interval) for j in range(int(k))]


def last_copy(t0: int, k: int, interval: int) -> int:
    """The step of a fact's last copy; for a control (``k = 0``) the step before its cohort's first copy."""
    return int(t0 + (k - 1) * interval) if k > 0 else int(t0 - 1)


def cohort_starts(
    n_cohorts: int, max_steps: int, k_values: Sequence[int], interval: int, offsets: Sequence[int], start_frac: float
) -> list[int]:
    """Default cohort starts: ``n_cohorts`` steps evenly spread from ``start_frac · max_steps`` to the last start
    whose longest fact (``max(k)`` copies ``interval`` apart) still has its last P_after (``max(offsets)`` after
    the last copy) by ``max_steps``.

    Raises:
        ConfigError: when that range is empty (training too short for the schedule).
    """
    span = (max(k_values) - 1) * interval + max(offsets)
    lo, hi = max(2, int(math.ceil(start_frac * max_steps))), max_steps - span
    if hi < lo:
        raise ConfigError(
            f"callbacks.priming: trainer.max_steps={max_steps} is too short: the cohorts start from step {lo} "
            f"(start_frac={start_frac}) and need {span} more steps (k up to {max(k_values)}, interval {interval}, "
            f"offsets up to {max(offsets)}): expected max_steps >= {lo + span}"
        )
    if n_cohorts == 1:
        return [lo]
    return [int(round(lo + c * (hi - lo) / (n_cohorts - 1))) for c in range(n_cohorts)]


def check_schedule(
    t0: Sequence[int], max_steps: int, k_values: Sequence[int], interval: int, offsets: Sequence[int]
) -> None:
    """Every cohort's planned steps and P_after steps lie in ``[2, max_steps]`` (P_before is measured at
    ``t0 - 1 >= 1``, after at least one step of ordinary training).

    Raises:
        ConfigError: one line naming the cohort, its ``t0`` and the step it would need.
    """
    span = (max(k_values) - 1) * interval + max(offsets)
    for c, t in enumerate(t0):
        if isinstance(t, bool) or not isinstance(t, int) or t < 2:
            raise ConfigError(f"callbacks.priming.t0[{c}]={t!r}: expected an integer step >= 2")
        if t + span > max_steps:
            raise ConfigError(
                f"callbacks.priming.t0[{c}]={t}: its last P_after is at step {t + span} (k={max(k_values)}, interval "
                f"{interval}, offset {max(offsets)}), beyond trainer.max_steps={max_steps}: expected t0 <= "
                f"{max_steps - span}"
            )


# ----------------------------------------------------------------------------- plan
def plan_facts(
    pool: Sequence[int],
    people: pd.DataFrame,
    *,
    n_facts: int,
    k_values: Sequence[int],
    n_controls: int,
    t0: Sequence[int],
    interval: int,
    attributes: Sequence[str],
    seed: int,
) -> pd.DataFrame:
    """Who gets which new fact: ``n_facts`` inserted facts and ``n_controls`` controls (``k = 0``), each about its
    own person from ``pool``, spread evenly over the cohorts (one per ``t0``), within a cohort evenly over
    ``k_values``, and within each (cohort, k) over the relations; the controls of each cohort alternate between
    half 1 (drift correction) and half 2 (the correction's check).

    Args:
        pool: entity ids of the zero-exposure people available (not in any probe panel).
        people: the generator's people table (``entity_id``, ``entity``, ``gender``).
        n_facts, n_controls: facts inserted, controls (>= 2 per cohort for a correction and a check).
        k_values: copies per inserted fact (each >= 1).
        t0: each cohort's first copy step.
        interval: steps between copies (K).
        attributes: the relations, a subset of :data:`PRIMING_ATTRIBUTES`.
        seed: the draw of persons and of their order.
    Returns:
        One row per fact: ``fact_id``, ``entity_id``, ``entity``, ``gender``, ``attribute``, ``template`` (0: the
        relation's first with-name template), ``cohort``, ``t0``, ``k``, ``half``, ``planned_steps`` (list of ints),
        ``last_copy``, ``prompt``.
    Raises:
        DataError: when the pool holds fewer people than ``n_facts + n_controls``.
    """
    from densitylab.errors import DataError

    need = n_facts + n_controls
    if len(pool) < need:
        raise DataError(
            f"callbacks.priming: n_facts + n_controls = {need} zero-exposure people needed outside the probe panels, "
            f"the corpus has {len(pool)}: expected fewer facts, or more unfamiliar people (data.source.unfamiliar_frac)"
        )
    rng = np.random.default_rng(seed)
    persons = rng.permutation(np.asarray(sorted(int(p) for p in pool), dtype=np.int64))[:need]
    n_c = len(t0)
    rows = []
    table = people.set_index("entity_id")
    per_cohort = [n_facts // n_c + (c < n_facts % n_c) for c in range(n_c)]
    ctrl_cohort = [n_controls // n_c + (c < n_controls % n_c) for c in range(n_c)]
    it = iter(persons.tolist())
    for c in range(n_c):
        ks = [k_values[j % len(k_values)] for j in range(per_cohort[c])]
        ks = sorted(ks)
        attr_i: dict[int, int] = {}
        for k in ks:
            j = attr_i.get(k, 0)
            attr_i[k] = j + 1
            rows.append((next(it), attributes[(j + c) % len(attributes)], c, int(k), INSERTED))
        for j in range(ctrl_cohort[c]):
            rows.append((next(it), attributes[(j // 2 + c) % len(attributes)], c, 0, CORRECTION + j % 2))
    out = []
    for fid, (p, a, c, k, half) in enumerate(rows):
        r = table.loc[p]
        steps = copy_steps(t0[c], k, interval)
        out.append(
            {
                "fact_id": fid,
                "entity_id": int(p),
                "entity": str(r["entity"]),
                "gender": str(r.get("gender", "male")),
                "attribute": a,
                "template": 0,
                "cohort": c,
                "t0": int(t0[c]),
                "k": k,
                "half": half,
                "planned_steps": steps,
                "last_copy": last_copy(t0[c], k, interval),
                "prompt": fact_prompt(a, str(r["entity"]), r.get("gender"), 0),
            }
        )
    return pd.DataFrame(out)


def pack_windows(lengths: Sequence[int], groups: Sequence[object], capacity: int) -> np.ndarray:
    """First-fit packing of fact documents into insertion windows, one group (facts sharing their copy steps:
    a cohort's facts of one ``k``) at a time; a window never mixes groups.

    Args:
        lengths: (n,) tokens of each fact document (``<|endoftext|>`` + the sentence).
        groups: (n,) group label of each fact.
        capacity: tokens a window holds (``block_size + 1``: inputs and the last label, less one for the closing
            ``<|endoftext|>``).
    Returns:
        (n,) int64 window index of each fact, 0.. in order of first use.
    Raises:
        ValueError: for a document longer than ``capacity``.
    """
    out = np.full(len(lengths), -1, dtype=np.int64)
    nxt = 0
    open_: dict[object, list[list[int]]] = {}  # group -> [[window, used], ...]
    for i, (n, g) in enumerate(zip(lengths, groups)):
        if n > capacity:
            raise ValueError(f"a fact document of {n} tokens does not fit a window of {capacity}")
        for w in open_.setdefault(g, []):
            if w[1] + n <= capacity:
                out[i], w[1] = w[0], w[1] + n
                break
        else:
            open_[g].append([nxt, n])
            out[i] = nxt
            nxt += 1
    return out


def window_tokens(docs: Sequence[Sequence[int]], block_size: int, eos_id: int) -> tuple[np.ndarray, np.ndarray]:
    """One insertion window: the documents (each ``<|endoftext|>`` + its sentence's ids) in order, a closing
    ``<|endoftext|>``, then padding.

    Returns:
        ``(input_ids, labels)``, each (block_size,) int64: inputs ``stream[:-1]``, labels ``stream[1:]``, padding
        inputs ``<|endoftext|>`` with label -100 (ignored by the loss).
    Raises:
        ValueError: when the documents need more than ``block_size + 1`` tokens.
    """
    stream = [t for d in docs for t in d] + [eos_id]
    if len(stream) > block_size + 1:
        raise ValueError(
            f"insertion window of {len(stream)} tokens: expected at most block_size + 1 = {block_size + 1}"
        )
    inputs = np.full(block_size, eos_id, dtype=np.int64)
    labels = np.full(block_size, -100, dtype=np.int64)
    inputs[: len(stream) - 1] = stream[:-1]
    labels[: len(stream) - 1] = stream[1:]
    return inputs, labels


# ----------------------------------------------------------------------------- keywords
def keyword_candidates(decode, vocab_size: int, pattern: re.Pattern = KEYWORD_PATTERN) -> np.ndarray:
    """Token ids that can be a keyword: those that decode to a space and a word of >= 3 letters (so the keyword
    follows the prompt as a word, and every keyword is one token: token count cannot drive the predictor).

    Args:
        decode: ``ids -> str`` (the tokenizer's decode).
        vocab_size: V.
    Returns:
        (n,) int64 candidate token ids, ascending.
    """
    return np.asarray([i for i in range(vocab_size) if pattern.fullmatch(decode([i]) or "")], dtype=np.int64)


def keyword_targets(n: int, log10_range: Sequence[float], rng: np.random.Generator) -> np.ndarray:
    """``n`` target values of log10 P_before, one per stratum of ``log10_range`` (high, low) split in ``n`` equal
    strata, a uniform draw within each, in random order: every group of facts spans the whole range."""
    hi, lo = float(max(log10_range)), float(min(log10_range))
    u = (np.arange(n) + rng.random(n)) / max(n, 1)
    return rng.permutation(hi - u * (hi - lo))


def select_keywords(
    logp: np.ndarray, targets: np.ndarray, candidates: np.ndarray, exclude: Sequence[set[int]] = (), used=()
) -> np.ndarray:
    """Greedy keyword choice: fact by fact (in order of target, highest first), the unused candidate token whose
    log10 P_before in the fact's own prompt is nearest the fact's target.

    Args:
        logp: (n, V) next-token log-probabilities (nats) at each fact's own prompt.
        targets: (n,) target log10 P_before.
        candidates: (m,) candidate token ids (:func:`keyword_candidates`).
        exclude: per fact, token ids it may not take (e.g. those of its own prompt: a keyword the prompt offers
            would be copied, not learnt).
        used: token ids already taken (earlier cohorts): every keyword of a run is distinct.
    Returns:
        (n,) int64 chosen token ids, all distinct.
    Raises:
        ValueError: when the candidates run out.
    """
    log10 = logp[:, candidates] / math.log(10.0)
    taken = set(int(u) for u in used)
    out = np.full(len(targets), -1, dtype=np.int64)
    for i in np.argsort(-np.asarray(targets), kind="stable"):
        d = np.abs(log10[i] - targets[i])
        bad = taken | (set(exclude[i]) if len(exclude) else set())
        for j in np.argsort(d, kind="stable"):
            tok = int(candidates[j])
            if tok not in bad:
                out[i] = tok
                taken.add(tok)
                break
        else:
            raise ValueError(
                f"select_keywords: no unused candidate left for fact {int(i)} ({len(candidates)} candidates)"
            )
    return out


# ----------------------------------------------------------------------------- measurement
@torch.no_grad()
def continuation_logprobs(
    model, pairs: Sequence[tuple[Sequence[int], Sequence[int]]], batch_size: int = 256
) -> np.ndarray:
    """log P(continuation | prompt) in nats for each (prompt ids, continuation ids) pair: the sum over the
    continuation's tokens of log p(token | prompt, earlier continuation tokens), i.e. the log of the product of the
    conditional probabilities (a one-token keyword: its next-token log-probability). Identical input sequences
    (``prompt + continuation[:-1]``: every one-token keyword of one prompt) run once; rows are right-padded (a
    causal model's earlier positions do not see the padding).

    Args:
        model: a :class:`~densitylab.model.GPT` in eval mode.
        pairs: (prompt, continuation), each >= 1 token; ``len(prompt) + len(continuation) - 1 <= block_size``.
        batch_size: sequences per forward pass.
    Returns:
        (n,) float64 log-probabilities (nats).
    Raises:
        ValueError: for an empty prompt or continuation.
    """
    if any(not len(p) or not len(c) for p, c in pairs):
        raise ValueError("continuation_logprobs: every prompt and continuation needs at least one token")
    device = next(model.parameters()).device
    seqs: dict[tuple[int, ...], int] = {}
    keys = []
    for p, c in pairs:
        key = tuple(int(t) for t in p) + tuple(int(t) for t in c[:-1])
        keys.append(seqs.setdefault(key, len(seqs)))
    uniq = list(seqs)
    logps: list[torch.Tensor] = [None] * len(uniq)  # (L, V) log-softmax of each distinct sequence
    order = sorted(range(len(uniq)), key=lambda i: len(uniq[i]))
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        L = max(len(uniq[i]) for i in idx)
        x = torch.zeros(len(idx), L, dtype=torch.int64)
        for r, i in enumerate(idx):
            x[r, : len(uniq[i])] = torch.as_tensor(uniq[i])
        out = torch.log_softmax(model(x.to(device)).float(), -1).cpu()
        for r, i in enumerate(idx):
            logps[i] = out[r, : len(uniq[i])]
    res = np.zeros(len(pairs), dtype=np.float64)
    for n, ((p, c), key) in enumerate(zip(pairs, keys)):
        lp = logps[key]
        P = len(p)
        res[n] = sum(float(lp[P - 1 + t, int(tok)]) for t, tok in enumerate(c))
    return res


@torch.no_grad()
def next_token_logprobs(model, prompts: Sequence[Sequence[int]], batch_size: int = 256) -> np.ndarray:
    """(n, V) float32 next-token log-probabilities (nats) after each prompt (right-padded batches)."""
    device = next(model.parameters()).device
    V = model.config.vocab_size
    out = np.zeros((len(prompts), V), dtype=np.float32)
    for s in range(0, len(prompts), batch_size):
        chunk = prompts[s : s + batch_size]
        L = max(len(p) for p in chunk)
        x = torch.zeros(len(chunk), L, dtype=torch.int64)
        last = torch.as_tensor([len(p) - 1 for p in chunk])
        for r, p in enumerate(chunk):
            x[r, : len(p)] = torch.as_tensor(list(p))
        logits = model(x.to(device)).float().cpu()
        out[s : s + len(chunk)] = torch.log_softmax(logits[torch.arange(len(chunk)), last], -1).numpy()
    return out


@torch.no_grad()
def name_density(model, prompts: Sequence[Sequence[int]], positions: Sequence[int]) -> dict[str, np.ndarray]:
    """MLP activation density at one position of each prompt (the person's last name token), every layer.

    ``active_frac`` is the fraction of units with pre-activation > 0 (``blocks.{i}.mlp.hook_pre``; Li et al., "The
    Lazy Neuron Phenomenon", arXiv:2210.06313); ``active_frac_live`` the same count over the units that fire
    somewhere on these prompts (every non-padding position of the batch: the probe's pool), as the density probe
    separates dead units (``densitylab.probes.density``).

    Args:
        model: a :class:`~densitylab.model.GPT` in eval mode.
        prompts: n prompts (token ids); positions: (n,) index into each prompt.
    Returns:
        ``active_frac`` and ``active_frac_live``: (n, n_layer) float64; ``n_live``: (n_layer,) int64.
    """
    device = next(model.parameters()).device
    L = max(len(p) for p in prompts)
    x = torch.zeros(len(prompts), L, dtype=torch.int64)
    mask = torch.zeros(len(prompts), L, dtype=torch.bool)
    for r, p in enumerate(prompts):
        x[r, : len(p)] = torch.as_tensor(list(p))
        mask[r, : len(p)] = True
    names = [f"blocks.{i}.mlp.hook_pre" for i in range(model.config.n_layer)]
    _, cache = model.run_with_cache(x.to(device), names)
    rows = torch.arange(len(prompts))
    pos = torch.as_tensor(list(positions), dtype=torch.int64)
    frac, live_frac, n_live = [], [], []
    for n in names:
        fired = cache[n].float().cpu() > 0  # (n, L, d_mlp)
        live = fired[mask].any(0)  # (d_mlp,)
        at = fired[rows, pos]  # (n, d_mlp)
        frac.append(at.float().mean(-1).double().numpy())
        k = int(live.sum())
        live_frac.append((at[:, live].float().sum(-1) / k).double().numpy() if k else np.full(len(prompts), np.nan))
        n_live.append(k)
    return {
        "active_frac": np.stack(frac, 1),
        "active_frac_live": np.stack(live_frac, 1),
        "n_live": np.asarray(n_live, dtype=np.int64),
    }


def name_last_position(offsets: Sequence[tuple[int, int]], name_end: int, shift: int = 0) -> int:
    """Index of the token holding the name's last character (``name_end - 1``), from a tokenizer's character
    ``offsets`` of the prompt; ``shift`` is added (1 for a ``<|endoftext|>`` prefix).

    Raises:
        ValueError: when no token covers that character.
    """
    for i, (a, b) in enumerate(offsets):
        if a <= name_end - 1 < b:
            return i + shift
    raise ValueError(f"no token covers character {name_end - 1} of the prompt")


# ----------------------------------------------------------------------------- scores
def priming_table(raw: pd.DataFrame, facts: pd.DataFrame, offsets: Sequence[int]) -> pd.DataFrame:
    """P_before, P_after, their ratio (raw and drift-corrected), S_mem and S_prime for every fact, offset and
    prompt (:data:`TABLE_COLUMNS`; ``probes/priming.parquet``).

    Args:
        raw: the probe's measurements: ``step``, ``fact_id``, ``kind`` (``own`` | ``thematic``), ``prompt_index``
            (-1 for ``own``), ``prompt_entity_id``, ``logp`` (nats).
        facts: the plan with keywords (``fact_id``, ``entity_id``, ``entity``, ``attribute``, ``keyword``,
            ``cohort``, ``k``, ``half``, ``t0``, ``last_copy``).
        offsets: steps after each fact's last copy at which P_after is read; a control (``k = 0``) is read at
            every step its cohort's facts are (``step_after`` = each of them), so it has one row per inserted
            ``k`` of its cohort at each offset (``step_after`` tells them apart).
    Returns:
        The table. ``p_before`` is read at ``t0 - 1`` (the model right before the cohort's first copy),
        ``p_after`` at ``last_copy + offset``; ``ratio = p_after / p_before``; a fact's S_mem is its ``own``
        ratio, S_prime the mean of its ``thematic`` ratios (Sun et al.'s arithmetic mean over prefixes). The
        drift correction divides each by the geometric mean over the cohort's half-1 controls of the same
        quantity at the same step (``ratio_corrected`` likewise, per prompt); NaN when the cohort has no half-1
        control measured at that step.
    """
    raw = raw.copy()
    facts = facts.set_index("fact_id")
    raw["cohort"] = facts.loc[raw["fact_id"], "cohort"].to_numpy()
    key = ["fact_id", "kind", "prompt_index"]
    before = raw[raw["step"] == facts.loc[raw["fact_id"], "t0"].to_numpy() - 1].set_index(key)["logp"]
    parts = []
    ins = facts[facts["k"] > 0]
    for off in offsets:
        for fid, f in facts.iterrows():
            if f["k"] > 0:
                steps = [int(f["last_copy"]) + int(off)]
            else:  # a control: at every step its cohort's inserted facts are read at this offset
                same = ins[ins["cohort"] == f["cohort"]]
                steps = sorted({int(s) + int(off) for s in same["last_copy"]})
            for s in steps:
                parts.append((fid, int(off), s))
    want = pd.DataFrame(parts, columns=["fact_id", "offset", "step_after"])
    after = raw.rename(columns={"step": "step_after"}).merge(want, on=["fact_id", "step_after"])
    after = after.set_index(key)
    after["p_before"] = np.exp(before.reindex(after.index).to_numpy())
    after = after.reset_index()
    after["p_after"] = np.exp(after["logp"].to_numpy())
    after["ratio"] = after["p_after"] / after["p_before"]
    for col in ("entity_id", "entity", "attribute", "keyword", "k", "half", "t0"):
        after[col] = facts.loc[after["fact_id"], col].to_numpy()
    after["step_before"] = after["t0"] - 1
    # per fact and step: S_mem (own ratio) and S_prime (mean thematic ratio)
    own = after[after["kind"] == "own"].set_index(["fact_id", "offset", "step_after"])["ratio"]
    them = after[after["kind"] == "thematic"].groupby(["fact_id", "offset", "step_after"])["ratio"].mean()
    S = pd.DataFrame({"S_mem": own, "S_prime": them})
    meta = facts[["cohort", "half"]]
    S = S.join(meta, on="fact_id")
    ctrl = S[S["half"] == CORRECTION].reset_index()
    corr = ctrl.groupby(["cohort", "step_after"])[["S_mem", "S_prime"]].agg(lambda v: float(np.exp(np.log(v).mean())))
    prompt_ctrl = after[after["half"] == CORRECTION]
    prompt_corr = prompt_ctrl.groupby(["cohort", "step_after", "attribute", "kind", "prompt_index"])["ratio"].agg(
        lambda v: float(np.exp(np.log(v).mean()))
    )
    S = S.reset_index().join(corr.rename(columns=lambda c: c + "_drift"), on=["cohort", "step_after"])
    S["S_mem_corrected"] = S["S_mem"] / S["S_mem_drift"]
    S["S_prime_corrected"] = S["S_prime"] / S["S_prime_drift"]
    after = after.merge(
        S[["fact_id", "offset", "step_after", "S_mem", "S_prime", "S_mem_corrected", "S_prime_corrected"]],
        on=["fact_id", "offset", "step_after"],
        how="left",
    )
    drift = prompt_corr.reindex(
        pd.MultiIndex.from_frame(after[["cohort", "step_after", "attribute", "kind", "prompt_index"]])
    )
    after["ratio_corrected"] = after["ratio"].to_numpy() / drift.to_numpy()
    out = after[TABLE_COLUMNS].sort_values(["fact_id", "offset", "step_after", "kind", "prompt_index"])
    return out.reset_index(drop=True)


def fact_scores(table: pd.DataFrame) -> pd.DataFrame:
    """One row per (fact, offset, step_after) of :func:`priming_table`: the fact's columns, its own prompt's
    ``p_before`` and ``p_after``, ``log10_p_before``, S_mem, S_prime (raw and corrected) and their natural logs
    (``log_s_mem``, ``log_s_prime``, ``log_s_mem_corrected``, ``log_s_prime_corrected``)."""
    own = table[table["kind"] == "own"].copy()
    own["log10_p_before"] = np.log10(own["p_before"].to_numpy())
    for c in ("S_mem", "S_prime", "S_mem_corrected", "S_prime_corrected"):
        own["log_" + c.lower().replace("s_", "s_")] = np.log(own[c].to_numpy(dtype=np.float64))
    cols = [
        "fact_id", "entity_id", "entity", "attribute", "keyword", "cohort", "k", "half", "offset", "step_before",
        "step_after", "p_before", "p_after", "log10_p_before", "S_mem", "S_prime", "S_mem_corrected",
        "S_prime_corrected", "log_s_mem", "log_s_prime", "log_s_mem_corrected", "log_s_prime_corrected",
    ]  # fmt: skip
    return own[cols].reset_index(drop=True)


# ----------------------------------------------------------------------------- analysis
def _density_at_insertion(raw: pd.DataFrame, facts: pd.DataFrame, column: str) -> pd.Series:
    """Per fact: ``column`` (e.g. ``L3/active_frac_live``) on its own prompt at its cohort's P_before call."""
    f = facts.set_index("fact_id")
    own = raw[(raw["kind"] == "own") & raw["fact_id"].isin(f.index)]
    own = own[own["step"].to_numpy() == f.loc[own["fact_id"], "t0"].to_numpy() - 1]
    return own.set_index("fact_id")[column] if column in own else pd.Series(dtype=np.float64)


def _slope_ci(x: np.ndarray, y: np.ndarray, n_boot: int, level: float, seed: int) -> dict:
    """OLS slope of y on x with a percentile bootstrap CI over points (NaN with < 5 points or constant x)."""
    n = len(x)
    if n < 5 or np.ptp(x) == 0:
        return {"estimate": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": n}
    slope = float(np.polyfit(x, y, 1)[0])
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    xb, yb = x[idx], y[idx]
    xc = xb - xb.mean(1, keepdims=True)
    var = (xc**2).sum(1)
    ok = var > 0
    reps = (xc * (yb - yb.mean(1, keepdims=True))).sum(1)[ok] / var[ok]
    a = (1 - level) / 2
    lo, hi = np.quantile(reps, [a, 1 - a]) if len(reps) else (math.nan, math.nan)
    return {"estimate": slope, "ci_low": float(lo), "ci_high": float(hi), "n": n}


def _interval(facts: pd.DataFrame) -> int:
    """K, the steps between copies, from a fact with k >= 2 (``last_copy = t0 + (k - 1) K``); 0 when none has."""
    f = facts[facts["k"] >= 2]
    if not len(f):
        return 0
    r = f.iloc[0]
    return int((int(r["last_copy"]) - int(r["t0"])) // (int(r["k"]) - 1))


def _matched(at: pd.DataFrame, col: str, ks: Sequence[int], interval: int, off: int) -> dict:
    """Per k: (the inserted facts with that k, the controls' rows at that k's P_after step of their own cohort,
    ``t0 + (k - 1) K + off``), finite ``col`` and ``log10_p_before`` only."""
    out = {}
    ok = np.isfinite(at[col]) & np.isfinite(at["log10_p_before"])
    ctrl = at[(at["half"] != INSERTED) & ok]
    for k in ks:
        f = at[(at["half"] == INSERTED) & (at["k"] == k) & ok]
        step = ctrl["step_before"] + 1 + (k - 1) * interval + off  # t0 = step_before + 1
        g = ctrl[ctrl["step_after"] == step]
        out[k] = (f[["fact_id", "cohort", "k", "log10_p_before", col]].rename(columns={col: "y"}),
                  g[["fact_id", "cohort", "log10_p_before", col]].rename(columns={col: "y"}))  # fmt: skip
    return out


def _ols_slope(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 3 or np.ptp(x) == 0:
        return math.nan
    xc = x - x.mean()
    return float((xc * (y - y.mean())).sum() / (xc**2).sum())


def _weighted_slopes(x: np.ndarray, y: np.ndarray, W: np.ndarray) -> np.ndarray:
    """OLS slopes of y on x under each row of integer weights ``W`` (B, n) (bootstrap counts): (B,), NaN where fewer
    than 3 points are drawn or x does not vary."""
    sw = W.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mx, my = (W @ x) / sw, (W @ y) / sw
        sxx = W @ (x * x) - sw * mx * mx
        sxy = W @ (x * y) - sw * mx * my
        out = sxy / sxx
    return np.where((sw >= 3) & (sxx > 1e-12 * np.maximum(sw, 1)), out, np.nan)


def _counts(draws: np.ndarray, n: int) -> np.ndarray:
    """(B, n) how often each of n units was drawn in each row of ``draws`` (B, m) (unit indices)."""
    W = np.zeros((draws.shape[0], n), dtype=np.float64)
    np.add.at(W, (np.repeat(np.arange(draws.shape[0]), draws.shape[1]), draws.ravel()), 1.0)
    return W


def _pooled_difference(matched: dict, n_boot: int, level: float, seed: int, clustered: bool = False) -> dict:
    """The slope difference (facts minus controls, each k against the controls at its own step), weighted over k by
    the facts per k, with a percentile bootstrap: facts resampled within k and the controls once per replicate (the
    same controls at every k's step); ``clustered``: facts resampled by (cohort, k) group and controls by cohort.

    Returns:
        ``estimate``, ``ci_low``, ``ci_high``, ``n`` (facts + controls), ``facts`` and ``controls`` (the weighted
        slopes), ``n_facts``, ``n_controls``; NaN when a k has fewer than 3 facts or controls.
    """
    ks = [k for k, (f, g) in matched.items() if len(f) >= 3 and len(g) >= 3]
    nan = {"estimate": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": 0, "facts": math.nan,
           "controls": math.nan, "n_facts": 0, "n_controls": 0}  # fmt: skip
    if not ks:
        return nan
    w = np.asarray([len(matched[k][0]) for k in ks], dtype=np.float64)
    w = w / w.sum()
    ctrl = pd.concat([matched[k][1][["fact_id", "cohort"]] for k in ks]).drop_duplicates("fact_id")
    ctrl_ids = ctrl["fact_id"].to_numpy(np.int64)
    pos = {int(c): i for i, c in enumerate(ctrl_ids)}
    cohorts = np.unique(ctrl["cohort"].to_numpy(np.int64))
    rng = np.random.default_rng(seed)
    B = n_boot
    if clustered:  # controls: cohorts drawn with replacement; a control's weight = its cohort's count
        cc = _counts(rng.integers(0, len(cohorts), (B, len(cohorts))), len(cohorts))
        cidx = np.searchsorted(cohorts, ctrl["cohort"].to_numpy(np.int64))
        Wc = cc[:, cidx]
    else:
        Wc = _counts(rng.integers(0, len(ctrl_ids), (B, len(ctrl_ids))), len(ctrl_ids))
    sf = sc = 0.0
    reps = np.zeros(B)
    for wk, k in zip(w, ks):
        f, g = matched[k]
        xf, yf = f["log10_p_before"].to_numpy(np.float64), f["y"].to_numpy(np.float64)
        xg, yg = g["log10_p_before"].to_numpy(np.float64), g["y"].to_numpy(np.float64)
        sf += wk * _ols_slope(xf, yf)
        sc += wk * _ols_slope(xg, yg)
        if clustered:
            fc = f["cohort"].to_numpy(np.int64)
            groups = np.unique(fc)
            gc = _counts(rng.integers(0, len(groups), (B, len(groups))), len(groups))
            Wf = gc[:, np.searchsorted(groups, fc)]
        else:
            Wf = _counts(rng.integers(0, len(f), (B, len(f))), len(f))
        Wg = Wc[:, [pos[int(c)] for c in g["fact_id"]]]
        reps += wk * (_weighted_slopes(xf, yf, Wf) - _weighted_slopes(xg, yg, Wg))
    reps = reps[np.isfinite(reps)]
    q = (1 - level) / 2
    lo, hi = np.quantile(reps, [q, 1 - q]) if len(reps) else (math.nan, math.nan)
    n_f = int(sum(len(matched[k][0]) for k in ks))
    return {"estimate": sf - sc, "ci_low": float(lo), "ci_high": float(hi), "n": n_f + len(ctrl_ids),
            "facts": sf, "controls": sc, "n_facts": n_f, "n_controls": len(ctrl_ids)}  # fmt: skip


def analyse(
    raw: pd.DataFrame,
    facts: pd.DataFrame,
    offsets: Sequence[int],
    endpoint: dict,
    *,
    n_boot: int,
    level: float,
    seed: int,
    n_layer: int,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict[str, float]]:
    """The end analysis of a priming run (:class:`~densitylab.callbacks.priming.PrimingCallback`).

    The pre-registered test (``endpoint.test``):

    - ``slope_difference`` (default): per k, the OLS slope of ln S (``endpoint.score``, a raw score: S_prime or
      S_mem) on log10 P_before among the inserted facts with that k, read at their P_after step, minus the same slope
      among the controls read at that same step of their own cohort (``t0 + (k - 1) K + offset``: the controls'
      slope grows with the time since P_before); the differences averaged over k, weighted by the facts per k; a
      percentile bootstrap resamples facts within k and the controls (once per replicate, the same controls at
      every k). Sun et al. predict a negative difference (the lower P_before, the more a *learnt* keyword spreads).
      The controls are chosen and measured exactly as the facts, so everything that makes a never-learnt keyword's
      ratio depend on its P_before (regression to the mean of a keyword chosen by its probability, drift, the other
      facts' general effect on the relation's prompts) is in their slope. A sensitivity CI resamples (cohort, k)
      groups of facts and cohorts of controls (the facts of a group share a window, their steps and the model
      state); the difference per cohort is reported too;
    - ``rho``: Spearman ρ of ln S (e.g. ``S_prime_corrected``) on log10 P_before among the inserted facts (the
      issue's first definition; the controls' own ρ is reported beside it).

    The hinge is fitted on the facts' ln S of the endpoint's score (a line common to all facts, such as the
    controls' trend, would change neither the knee nor the change of slope). The verdict
    (:func:`densitylab.probes.study.decide`, SESOI ``sesoi_slope`` or ``sesoi_rho``) is ``not measured`` when the
    pre-registered offset was not reached or P_before does not span the pre-registered range.

    The range: ``min_orders`` decades between the 5th and 95th percentile and ``min_per_side`` facts on each side of
    ``threshold``.

    Args:
        raw: every call's measurements (``probes/priming_log.parquet``).
        facts: the plan with keywords (facts without a keyword left out).
        offsets: the P_after offsets every inserted fact completed.
        endpoint: the pre-registered analysis (``conf/experiment/priming.yaml``: test, score, offset, threshold,
            sesoi_slope, sesoi_rho, predicted_sign, min_orders, min_per_side, density_layer, density_metric).
        n_boot, level, seed: the bootstraps (over facts; controls resampled separately).
        n_layer: the model's layers (``density_layer`` −1 = the last).
    Returns:
        ``(table, scores, stats, headline)``: :func:`priming_table`; :func:`fact_scores` with the density at
        insertion (``density``); the statistics (``statistic``, ``subset``, ``estimate``,
        ``ci_low``, ``ci_high``, ``n``, ``level``, ``note``); the ``priming/*`` scalars. Units: log10 P for the knee,
        ln S per decade of P_before for slopes, ln S per unit of active fraction for the density slopes.
    """
    from densitylab.probes.study import decide
    from densitylab.probes.threshold import geometric_ratio_ci, hinge_bootstrap, spearman_ci

    table = priming_table(raw, facts, offsets)
    scores = fact_scores(table)
    layer = int(endpoint["density_layer"]) % n_layer
    dcol = f"L{layer}/{endpoint['density_metric']}"
    dens = _density_at_insertion(raw, facts, dcol)
    scores["density"] = dens.reindex(scores["fact_id"]).to_numpy(dtype=np.float64)
    test, score, sign = str(endpoint.get("test", "rho")), str(endpoint["score"]), int(endpoint["predicted_sign"])
    ycol = "log_" + score.lower()
    offset_done = int(endpoint["offset"]) in offsets
    off = int(endpoint["offset"]) if offset_done else int(offsets[0])
    at = scores[scores["offset"] == off]
    rows, head = [], {}

    def add(stat: str, subset: str, r: dict, note: str = "", key: str | None = None) -> None:
        rows.append({"statistic": stat, "subset": subset, "estimate": r.get("estimate", math.nan),
                     "ci_low": r.get("ci_low", math.nan), "ci_high": r.get("ci_high", math.nan),
                     "n": int(r.get("n", 0)), "level": level, "note": note})  # fmt: skip
        if key:
            head[f"priming/{key}"] = float(r.get("estimate", math.nan))
            head[f"priming/{key}_ci_low"] = float(r.get("ci_low", math.nan))
            head[f"priming/{key}_ci_high"] = float(r.get("ci_high", math.nan))

    def rho_of(x, y) -> dict:
        q = spearman_ci(x, y, n_boot=n_boot, level=level, seed=seed)
        return {"estimate": q["rho"], "ci_low": q["ci_low"], "ci_high": q["ci_high"], "n": q["n"]}

    def facts_and_controls(col: str, k=None) -> tuple[pd.DataFrame, pd.DataFrame]:
        fa = at[(at["half"] == INSERTED) & np.isfinite(at[col]) & np.isfinite(at["log10_p_before"])]
        if k is not None:
            fa = fa[fa["k"] == k]
        co = at[(at["half"] != INSERTED) & np.isfinite(at[col])]
        return fa, co.groupby("fact_id")[["log10_p_before", col]].mean()

    # ---- the P_before range the claim needs
    fa_all = at[at["half"] == INSERTED]
    x_all = fa_all["log10_p_before"].to_numpy(np.float64)
    x_all = x_all[np.isfinite(x_all)]
    thr = float(endpoint["threshold"])
    span = float(np.subtract(*np.quantile(x_all, [0.95, 0.05]))) if len(x_all) else math.nan
    below, above = int((x_all < math.log10(thr)).sum()), int((x_all >= math.log10(thr)).sum())
    range_ok = bool(
        span >= float(endpoint.get("min_orders", 3)) and min(below, above) >= endpoint.get("min_per_side", 30)
    )
    head.update({
        "priming/n_facts": float(len(fa_all)), "priming/p_before_orders": span,
        "priming/p_before_orders_full": float(np.ptp(x_all)) if len(x_all) else math.nan,
        "priming/n_below_threshold": float(below), "priming/n_above_threshold": float(above),
        "priming/range_ok": float(range_ok),
    })  # fmt: skip
    add("p_before_range", "inserted facts, log10 P_before (own prompt)", {"estimate": span, "n": len(x_all)},
        f"5th-95th percentile span; {below} below / {above} at or above {thr:g}; "
        f"{'meets' if range_ok else 'misses'} the pre-registered range")  # fmt: skip
    for c, g in fa_all.groupby("cohort"):
        v = g["log10_p_before"].to_numpy(np.float64)
        add("p_before_by_cohort", f"cohort {int(c)}", {"estimate": float(np.median(v)), "ci_low": float(v.min()),
            "ci_high": float(v.max()), "n": len(v)}, "median, min, max of log10 P_before")  # fmt: skip

    # ---- the controls' null and the facts-minus-controls slopes (both raw scores), each k against the controls
    # read at that k's own P_after step (t0 + (k - 1)K + offset of the control's cohort): the controls' slope grows
    # with the time since P_before, so a control averaged over steps is no null for one k
    interval = _interval(facts)
    ks = sorted(int(v) for v in at.loc[at["half"] == INSERTED, "k"].unique())
    matched = {}
    for raw_score in ("S_prime", "S_mem"):
        rc = "log_" + raw_score.lower()
        m = _matched(at, rc, ks, interval, off)
        matched[raw_score] = m
        est = _pooled_difference(m, n_boot, level, seed)
        add("slope_facts", f"{raw_score}, offset {off}, inserted facts",
            {"estimate": est["facts"], "n": est["n_facts"]},
            "OLS slope, ln S per decade of P_before (k-weighted over the matched steps)")  # fmt: skip
        add("slope_controls", f"{raw_score}, offset {off}, controls at the facts' steps",
            {"estimate": est["controls"], "n": est["n_controls"]}, "the null: never inserted; same weights",
            key=f"slope_controls_{raw_score}")  # fmt: skip
        add(
            "slope_difference",
            f"{raw_score}, offset {off}: inserted facts minus controls",
            est,
            "ln S per decade of P_before; bootstrap over facts and controls",
            key=f"slope_difference_{raw_score}",
        )
        add("slope_difference_clustered", f"{raw_score}, offset {off}: inserted facts minus controls",
            _pooled_difference(m, n_boot, level, seed, clustered=True),
            "sensitivity: resampling (cohort, k) groups of facts and cohorts of controls",
            key=f"slope_difference_{raw_score}_clustered")  # fmt: skip
        for c in sorted(int(v) for v in at["cohort"].unique()):
            sub = {k: (f[f["cohort"] == c], g[g["cohort"] == c]) for k, (f, g) in m.items()}
            q = _pooled_difference(sub, n_boot, level, seed)
            add("slope_difference_by_cohort", f"{raw_score}, offset {off}, cohort {c}", q)
        for k, (f, g) in m.items():  # one row per control: each at that k's step (CIs over controls)
            add("spearman_rho_controls", f"{raw_score}, offset {off}, controls at the step of k={k}",
                rho_of(g["log10_p_before"], g["y"]), "the null: no learning of the keyword",
                key=f"rho_controls_{raw_score}_k{k}")  # fmt: skip
            add("spearman_rho_facts", f"{raw_score}, offset {off}, inserted facts, k={k}",
                rho_of(f["log10_p_before"], f["y"]), key=f"rho_{raw_score}_k{k}")  # fmt: skip

    # ---- the primary test
    if test == "slope_difference":
        primary = next(r for r in rows if r["statistic"] == "slope_difference" and r["subset"].startswith(score))
        sesoi = float(endpoint["sesoi_slope"])
    else:
        fa, _ = facts_and_controls(ycol)
        primary = dict(rho_of(fa["log10_p_before"], fa[ycol]))
        rows.append({"statistic": "spearman_rho", "subset": f"{score}, offset {off}, inserted facts", **primary,
                     "level": level, "note": ""})  # fmt: skip
        primary = rows[-1]
        sesoi = float(endpoint["sesoi_rho"])
    measured = range_ok and offset_done
    verdict = decide(primary["ci_low"], primary["ci_high"], sesoi, sign) if measured else "not measured"
    why = "" if range_ok else "; P_before misses the pre-registered range"
    why += "" if offset_done else f"; the pre-registered offset {endpoint['offset']} was not reached"
    primary["note"] = (primary["note"] + "; " if primary["note"] else "") + (
        f"PRIMARY: {verdict} (predicted sign {sign:+d}, SESOI {sesoi:g}){why}"
    )
    head["priming/primary"] = float(primary["estimate"])
    head["priming/primary_ci_low"], head["priming/primary_ci_high"] = (
        float(primary["ci_low"]),
        float(primary["ci_high"]),
    )
    head["priming/supported"] = float(verdict == "supported")
    head["priming/contradicted"] = float(verdict == "contradicted")
    head["priming/negligible"] = float(verdict == "negligible")

    # ---- the threshold: the hinge of the facts' ln S (the endpoint's score) on log10 P_before; a line common to all
    # facts (the controls' trend) changes neither the knee nor the change of slope, only both slopes alike
    hcol = ycol
    hsubset = f"{score}, offset {off}, inserted facts"
    fa = at[(at["half"] == INSERTED) & np.isfinite(at[hcol]) & np.isfinite(at["log10_p_before"])]
    x, y = fa["log10_p_before"].to_numpy(np.float64), fa[hcol].to_numpy(np.float64)
    try:
        h = hinge_bootstrap(x, y, n_boot=n_boot, level=level, seed=seed, min_side=max(5, len(x) // 10))
    except ValueError as e:
        h = None
        add("hinge", hsubset, {"n": len(x)}, f"not fitted: {e}")
    if h is not None:
        for name in ("knee", "slope_below", "slope_above", "slope_change"):
            r = {"estimate": h[name], "ci_low": h[f"{name}_ci_low"], "ci_high": h[f"{name}_ci_high"], "n": h["n"]}
            add(f"hinge_{name}", hsubset, r, "knee in log10 P_before; slopes in ln S per decade", key=f"hinge_{name}")
    # ---- the smallest k: the slope difference per k (matched controls) and the rho of the facts alone
    kmin_rho = kmin = None
    mk = matched[score.replace("_corrected", "")]
    for k in ks:
        sub = fa[fa["k"] == k]
        r = rho_of(sub["log10_p_before"], sub[hcol])
        holds = (r["ci_high"] < 0) if sign < 0 else (r["ci_low"] > 0)
        add("spearman_rho_k", f"{hsubset}, k={k}", r, "holds" if holds else "")
        kmin_rho = k if holds and kmin_rho is None else kmin_rho
        d = _pooled_difference({k: mk[k]}, n_boot, level, seed) if k in mk else {}
        holds = bool(d) and ((d["ci_high"] < 0) if sign < 0 else (d["ci_low"] > 0))
        add("slope_difference_k", f"{score.replace('_corrected', '')}, offset {off}, k={k} minus controls", d,
            "holds" if holds else "")  # fmt: skip
        kmin = k if holds and kmin is None else kmin
    head["priming/smallest_k"] = float(kmin) if kmin is not None else math.nan
    head["priming/smallest_k_rho"] = float(kmin_rho) if kmin_rho is not None else math.nan
    # ---- the other scores: rho among the facts (read beside the controls' rho)
    for other in ("S_mem", "S_mem_corrected", "S_prime", "S_prime_corrected"):
        oc = "log_" + other.lower()
        sub = at[(at["half"] == INSERTED) & np.isfinite(at[oc])]
        if test == "rho" and other == score:
            continue  # the primary, above
        add("spearman_rho", f"{other}, offset {off}, inserted facts", rho_of(sub["log10_p_before"], sub[oc]),
            key="rho" if other == score else f"rho_{other}")  # fmt: skip
    # ---- geometric mean scores per k (every offset)
    for o in offsets:
        for k, g in scores[(scores["half"] == INSERTED) & (scores["offset"] == o)].groupby("k"):
            for name in ("S_mem_corrected", "S_prime_corrected"):
                v = g[name].to_numpy(np.float64)
                v = v[np.isfinite(v) & (v > 0)]
                if not len(v):
                    continue
                q = geometric_ratio_ci(v, np.ones_like(v), n_boot=n_boot, level=level, seed=seed)
                add(f"geomean_{name}", f"k={int(k)}, offset {o}", {"estimate": q["ratio"], "ci_low": q["ci_low"],
                    "ci_high": q["ci_high"], "n": len(v)}, "over facts; not the correction's own error")  # fmt: skip
    # ---- the control check: half-2 controls against half 1 (per control: geometric mean over its steps)
    ctrl = at[at["half"] != INSERTED]
    for name in ("S_mem", "S_prime"):
        col = "log_" + name.lower()
        per = ctrl.groupby(["fact_id", "half"])[col].mean().reset_index()
        t = np.exp(per.loc[per["half"] == HELDOUT, col].to_numpy(np.float64))
        ref = np.exp(per.loc[per["half"] == CORRECTION, col].to_numpy(np.float64))
        t, ref = t[np.isfinite(t) & (t > 0)], ref[np.isfinite(ref) & (ref > 0)]
        q = geometric_ratio_ci(t, ref, n_boot=n_boot, level=level, seed=seed)
        covers = bool(q["ci_low"] <= 1 <= q["ci_high"]) if math.isfinite(q["ci_low"]) else False
        add("control_check", f"{name}, offset {off}: half-2 controls / half-1 controls",
            {"estimate": q["ratio"], "ci_low": q["ci_low"], "ci_high": q["ci_high"], "n": len(t)},
            "covers 1" if covers else "does not cover 1", key=f"control_{name}")  # fmt: skip
        head[f"priming/control_{name}_covers_1"] = float(covers)
    # ---- density at insertion as a predictor (inserted facts, all unfamiliar), centred within cohort: density and
    # the scores both move with training time, and the cohorts start at different times
    for name in ("S_mem_corrected", "S_prime_corrected"):
        oc = "log_" + name.lower()
        sub = at[(at["half"] == INSERTED) & np.isfinite(at[oc]) & np.isfinite(at["density"])]
        xd = (sub["density"] - sub.groupby("cohort")["density"].transform("mean")).to_numpy(np.float64)
        yd = (sub[oc] - sub.groupby("cohort")[oc].transform("mean")).to_numpy(np.float64)
        add(f"density_slope_{name}", f"{dcol}, offset {off}, within cohort", _slope_ci(xd, yd, n_boot, level, seed),
            "ln S per unit of active fraction", key=f"density_slope_{name}")  # fmt: skip
        add(f"density_rho_{name}", f"{dcol}, offset {off}, within cohort", rho_of(xd, yd), key=f"density_rho_{name}")
    stats = pd.DataFrame(rows, columns=["statistic", "subset", "estimate", "ci_low", "ci_high", "n", "level", "note"])
    head["priming/verdict"] = verdict  # a string: summary.json only (not logged as a scalar)
    return table, scores, stats, head
