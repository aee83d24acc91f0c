"""A user's facts file for the closed-set knowledge probe, and the corpus co-occurrence of its entities and values
(issue 15, ``callbacks.knowledge.facts=FILE.jsonl``).

**The file** (:func:`load_facts`): JSON lines, one object per fact, blank lines skipped::

    {"prompt": "The capital of France is", "answer": "Paris", "candidates": ["Paris", "Rome", "Oslo"],
     "entity": "France"}

``prompt`` and ``answer`` are required non-empty strings; ``candidates`` (a list of distinct non-empty strings
holding the answer) defaults to every distinct answer of the file, sorted; ``entity`` (a string) names what the
fact is about and enables the co-occurrence statistic. Other keys are ignored. Every problem is reported as
one :class:`~densitylab.errors.ConfigError` line naming the file, the line and the field.

**Items** (:func:`facts_prompts`): one :class:`~densitylab.probes.knowledge.Prompt` per fact, scored by
:func:`~densitylab.probes.knowledge.measure_knowledge` exactly as the synthetic items are (the prompt, cut
before the value; every candidate as its continuation, with a leading space): attribute ``"fact"``, template
``-1``.

**Co-occurrence** (:func:`string_windows`, :func:`cooccurrence_counts`): QuCo-RAG (Min et al. 2025,
arXiv:2512.19134) flags a generated (head entity, tail value) pair that never co-occurs in the pretraining
corpus as a likely hallucination. Here the corpus is the training split as packed into windows, and a pair
co-occurs in a window when both strings' token sequences appear among its inputs; the count is the number of
such windows trained at least once so far (the exposure ledger's ``sequence_counts``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from densitylab.errors import ConfigError
from densitylab.probes.knowledge import Prompt

if TYPE_CHECKING:
    from densitylab.data.packing import PackedSplit

#: The config key a facts file is given by (named in every error message).
FACTS_KEY = "callbacks.knowledge.facts"
#: What a facts file must hold (the end of every error message).
FACTS_EXPECTED = "expected one JSON object per line with prompt, answer, optional candidates and entity"
#: The ``attribute`` of every facts item.
FACT_ATTRIBUTE = "fact"


@dataclass(frozen=True)
class Fact:
    """One closed-set item of a facts file, normalised.

    Attributes:
        prompt: the prompt text, trailing whitespace removed (the value follows it after a space).
        answer: the true value, stripped.
        candidates: the values scored against each other (stripped, distinct, holding ``answer``): the line's
            ``candidates`` in their order, else every distinct answer of the file, sorted.
        entity: what the fact is about (stripped), or None.
        line: the 1-based line of the file the fact was read from.
    """

    prompt: str
    answer: str
    candidates: tuple[str, ...]
    entity: str | None
    line: int


def _one_line(text: str, limit: int = 200) -> str:
    """``text`` with every line break (``str.splitlines``'s) turned into a space, cut at ``limit`` characters, so
    that an error message stays on one line."""
    text = " ".join(str(text).splitlines())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _short(value: object) -> str:
    """A short one-line repr of a JSON value for an error message."""
    return _one_line(repr(value), 60)


class _Where:
    def __init__(self, path: str | os.PathLike):
        self.path = _one_line(os.fspath(path), 300)

    def file(self, problem: str) -> ConfigError:
        return ConfigError(_one_line(f"{FACTS_KEY}={self.path}: {problem} ({FACTS_EXPECTED})", 600))

    def line(self, n: int, problem: str) -> ConfigError:
        return ConfigError(_one_line(f"{FACTS_KEY}={self.path} line {n}: {problem} ({FACTS_EXPECTED})", 600))


def _string_field(obj: dict, key: str, n: int, where: _Where, *, required: bool, strip: str = "both") -> str | None:
    if key not in obj or (obj[key] is None and not required):
        if required:
            raise where.line(n, f"field {key!r} is missing")
        return None
    value = obj[key]
    if not isinstance(value, str):
        raise where.line(n, f"field {key!r} is {_short(value)} ({type(value).__name__}): expected a string")
    value = value.rstrip() if strip == "right" else value.strip()
    if not value.strip():
        raise where.line(n, f"field {key!r} is empty: expected a non-empty string")
    return value


def _candidates_field(obj: dict, n: int, answer: str, where: _Where) -> tuple[str, ...] | None:
    if obj.get("candidates") is None:
        return None
    raw = obj["candidates"]
    if not isinstance(raw, list):
        raise where.line(n, f"field 'candidates' is {_short(raw)} ({type(raw).__name__}): expected a list of strings")
    if not raw:
        raise where.line(n, "field 'candidates' is an empty list: expected at least 2 distinct strings")
    values = []
    for k, c in enumerate(raw):
        if not isinstance(c, str) or not c.strip():
            raise where.line(n, f"field 'candidates' item {k} is {_short(c)}: expected a non-empty string")
        values.append(c.strip())
    seen: set[str] = set()
    for c in values:
        if c in seen:
            raise where.line(n, f"field 'candidates' holds {c!r} twice: expected distinct strings")
        seen.add(c)
    if len(values) < 2:
        raise where.line(n, f"field 'candidates' holds {len(values)} value: expected at least 2 distinct strings")
    if answer not in seen:
        raise where.line(
            n, f"field 'answer' {answer!r} is not among the line's candidates {_one_line(repr(values), 120)}"
        )
    return tuple(values)


def load_facts(path: str | os.PathLike) -> list[Fact]:
    """Read a facts file (JSON lines; see the module docstring).

    Args:
        path: the ``.jsonl`` file (UTF-8, a byte-order mark allowed). Blank lines are skipped; line numbers
            count every line of the file, from 1.
    Returns:
        The facts in file order, normalised (:class:`Fact`): ``prompt`` right-stripped, ``answer``,
        ``candidates`` and ``entity`` stripped; a line without ``candidates`` gets every distinct answer of the
        file, sorted. A JSON ``null`` for ``candidates`` or ``entity`` counts as absent; other keys are ignored.
    Raises:
        ConfigError: one line naming ``callbacks.knowledge.facts=<path>``, the line and the field, for a file
            that is missing, unreadable or not UTF-8, or holds no fact; a line that is not JSON or not an object;
            ``prompt`` / ``answer`` missing, not a string or empty; ``candidates`` not a list of non-empty strings,
            empty, with duplicates, with fewer than 2 values or without the answer; ``entity`` not a string or
            empty; a line without ``candidates`` when the file has fewer than 2 distinct answers.
    """
    where = _Where(path)
    try:
        with open(path, encoding="utf-8-sig") as f:
            text = f.read()
    except FileNotFoundError:
        raise where.file("file not found") from None
    except IsADirectoryError:
        raise where.file("is a directory, not a file") from None
    except UnicodeDecodeError as e:
        raise where.file(f"is not UTF-8 text ({_one_line(str(e), 120)})") from None
    except OSError as e:
        raise where.file(f"cannot be read ({_one_line(e.strerror or str(e), 120)})") from None
    parsed: list[tuple[int, str, str, tuple[str, ...] | None, str | None]] = []
    for n, raw in enumerate(text.split("\n"), start=1):  # not splitlines(): JSON strings may hold U+2028
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            raise where.line(n, f"is not valid JSON ({_one_line(e.msg, 80)} at column {e.colno})") from None
        if not isinstance(obj, dict):
            raise where.line(n, f"is a JSON {type(obj).__name__}, not an object")
        prompt = _string_field(obj, "prompt", n, where, required=True, strip="right")
        answer = _string_field(obj, "answer", n, where, required=True)
        candidates = _candidates_field(obj, n, answer, where)
        entity = _string_field(obj, "entity", n, where, required=False)
        parsed.append((n, prompt, answer, candidates, entity))
    if not parsed:
        raise where.file("holds no fact (the file is empty or only blank lines)")
    default = tuple(sorted({answer for _, _, answer, _, _ in parsed}))
    out = []
    for n, prompt, answer, candidates, entity in parsed:
        if candidates is None:
            if len(default) < 2:
                raise where.line(
                    n,
                    f"field 'candidates' is missing and every answer of the file is {default[0]!r}: give each "
                    "line at least 2 candidates, or facts with at least 2 distinct answers",
                )
            candidates = default
        out.append(Fact(prompt, answer, candidates, entity, n))
    return out


def facts_prompts(facts: Sequence[Fact]) -> list[Prompt]:
    """The closed-set items of ``facts``, ready for :func:`~densitylab.probes.knowledge.measure_knowledge`.

    Args:
        facts: the facts (:func:`load_facts`).
    Returns:
        One :class:`~densitylab.probes.knowledge.Prompt` per fact, in order: ``text`` = the prompt without
        trailing whitespace, ``answer`` = the stripped answer, ``candidates`` = ``" " + value`` for each stripped
        candidate, ``attribute`` = ``"fact"``, ``template`` = -1, ``entity`` = the fact's entity (or None) and
        ``entity_id`` = the index of that entity among the sorted distinct entities of ``facts`` (-1 without).
    Raises:
        ValueError: for a fact whose answer is not among its candidates (hand-built facts; :func:`load_facts`
            never returns one).
    """
    names = sorted({f.entity.strip() for f in facts if f.entity is not None})
    ids = {e: i for i, e in enumerate(names)}
    out = []
    for f in facts:
        answer = f.answer.strip()
        values = tuple(c.strip() for c in f.candidates)
        if answer not in values:
            raise ValueError(f"facts_prompts: line {f.line}: answer {answer!r} is not among its candidates")
        entity = f.entity.strip() if f.entity is not None else None
        out.append(
            Prompt(
                entity_id=ids[entity] if entity is not None else -1,
                attribute=FACT_ATTRIBUTE,
                text=f.prompt.rstrip(),
                answer=answer,
                candidates=tuple(" " + c for c in values),
                template=-1,
                entity=entity,
            )
        )
    return out


def _as_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, possibly on the training device
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def string_windows(packed: PackedSplit, tokenizer, strings: Iterable[str]) -> dict[str, np.ndarray]:
    """The training windows whose inputs contain each string, searched as token sequences.

    A string occurs in window ``w`` when the token ids of ``" " + s`` or of ``s``
    (``tokenizer.encode(x, add_special_tokens=False).ids``) appear consecutively among the window's inputs,
    stream positions ``[w·bs, (w+1)·bs)``; an occurrence that crosses into the next window counts for neither.
    Matching is on tokens, so a string tokenized differently in context (merged with the next character) is not
    found. The stream is sorted once by token id (O(L log L)); each string then costs time proportional to the
    occurrences of its rarest token (600 strings over a 1M-token stream: 0.1 s for rare-token strings, under
    1 s when every string is made of the commonest tokens, each found in ~40% of the windows).

    Args:
        packed: the packed training split (``tokens``: the (n_windows·bs + 1,) stream of token ids >= 0, unsigned or
            int64; ``block_size`` bs).
        tokenizer: the run's ``tokenizers.Tokenizer`` (anything with ``encode(text, add_special_tokens=False).ids``).
        strings: the strings to find (entities, candidate values); duplicates are looked up once.
    Returns:
        ``{string: (k,) int64 array}`` of the sorted distinct sample ids (0..n_windows-1) holding it.
    Raises:
        ValueError: for a string that tokenizes to no token (the empty string).
    """
    bs = int(packed.block_size)
    n_windows = (int(packed.tokens.shape[0]) - 1) // bs
    # every window's inputs, in order (the last stream position is only a target)
    x = packed.tokens[: n_windows * bs]  # unsigned ids (the memory-mapped stream: no copy)
    if x.dtype.kind != "u":
        x = np.asarray(x, dtype=np.int64)
    L = x.size
    small = x.astype(np.int32) if x.dtype.kind != "u" and L and 0 <= x.min() and x.max() < 2**31 else x
    order = np.argsort(small, kind="stable")  # positions grouped by token id, ascending within a group
    first = np.zeros(int(small.max()) + 2 if L else 1, dtype=np.int64)  # token t: order[first[t]:first[t + 1]]
    if L:
        np.cumsum(np.bincount(small), out=first[1:])
    V = first.size - 1
    out: dict[str, np.ndarray] = {}
    for s in strings:
        if s in out:
            continue
        patterns = {tuple(tokenizer.encode(v, add_special_tokens=False).ids) for v in (" " + s, s)}
        patterns.discard(())
        if not patterns:
            raise ValueError(f"string_windows: {s!r} tokenizes to no token: expected a non-empty string")
        found = []
        for pat in patterns:
            m = len(pat)
            if m > bs:
                continue  # cannot lie inside one window
            if any(not 0 <= t < V for t in pat):
                continue  # a token the stream never holds
            # anchor on the pattern's rarest token: the candidates are its occurrences, shifted to a start
            bounds = np.array([(first[t], first[t + 1]) for t in pat], dtype=np.int64)
            j = int(np.argmin(bounds[:, 1] - bounds[:, 0]))
            starts = order[bounds[j, 0] : bounds[j, 1]].astype(np.int64) - j
            starts = starts[(starts >= 0) & (starts + m <= L)]
            starts = starts[starts // bs == (starts + m - 1) // bs]  # inside one window
            for k in range(m):
                if k == j:
                    continue
                if not starts.size:
                    break
                starts = starts[x[starts + k] == pat[k]]
            w = starts // bs  # ascending: the anchor's positions are
            found.append(w[np.r_[True, w[1:] != w[:-1]]] if w.size else w)
        windows = np.zeros(0, dtype=np.int64)
        for w in found:
            windows = np.union1d(windows, w) if windows.size else w
        out[s] = windows.astype(np.int64, copy=False)
    return out


def cooccurrence_counts(
    entity_windows: Sequence[np.ndarray | None],
    answer_windows: Sequence[np.ndarray | None],
    sequence_counts,
) -> np.ndarray:
    """Per item, the trained windows in which its entity and its value co-occur (QuCo-RAG's statistic,
    Min et al. 2025, arXiv:2512.19134: zero co-occurrence flags a likely hallucination).

    Args:
        entity_windows: per item, the sample ids holding its entity (:func:`string_windows`), or None for an
            item without an entity.
        answer_windows: per item, the sample ids holding the value whose support is asked (the model's
            answer for the hallucination check, or the truth), or None.
        sequence_counts: (n_windows,) times each window was trained (``ExposureLedger.sequence_counts``, after
            ``sync``); a numpy array or a torch tensor on any device.
    Returns:
        (n_items,) float64 number of distinct windows holding both with ``sequence_counts > 0`` (a window
        trained in several epochs counts once); NaN where either side is None.
    Raises:
        ValueError: for sequences of different lengths, or a window id outside ``[0, n_windows)``.
    """
    if len(entity_windows) != len(answer_windows):
        raise ValueError(
            f"cooccurrence_counts: {len(entity_windows)} entity window lists but {len(answer_windows)} answer ones"
        )
    trained = _as_numpy(sequence_counts).reshape(-1) > 0
    n = trained.size
    out = np.full(len(entity_windows), np.nan, dtype=np.float64)
    for i, (e, a) in enumerate(zip(entity_windows, answer_windows)):
        if e is None or a is None:
            continue
        e, a = np.asarray(e, dtype=np.int64).reshape(-1), np.asarray(a, dtype=np.int64).reshape(-1)
        for w in (e, a):
            if w.size and (w.min() < 0 or w.max() >= n):
                bad = int(w.min()) if w.min() < 0 else int(w.max())
                raise ValueError(f"cooccurrence_counts: item {i} names window {bad}: expected ids in [0, {n})")
        out[i] = float(trained[np.intersect1d(e, a)].sum())
    return out
