"""The fixed incidence lists the ledger derives entity counts through, built once from the packed data.

Everything here is a pure function of a :class:`~densitylab.data.packing.PackedSplit` (its window span
table, document offsets and block size), so it is identical on every process and in every attempt of a
run. Two rules, both the packing's own (design §3):

- a **mention** (a ``kind="name"`` span) belongs to the window holding its first token as an input:
  its ``sample_id``;
- a **document** belongs to the window holding its first token as an input: ``doc_offsets[d] //
  block_size``, where ``d`` is the document's index in the packed stream (canaries spliced into the
  stream shift it; the span table's ``doc`` column keeps the index into the source's texts, so the
  packed index is found from the stream position of the document's first span).

A document's **subject** is the entity its attribute spans (``kind`` other than ``"name"``) describe:
the synthetic generator records six of them per biography, all with the subject's id. Documents without
attribute spans (every document of the text extractors ``capitalized``, ``gazetteer``, ``spacy``), or
whose attribute spans name more than one entity, have no subject.

Windows that are not part of the packed split (a callback that inserts windows of its own into batches,
e.g. new facts for priming) are described by :class:`ExtraWindows` blocks with *local* window ids
``0..n_windows-1``; :func:`with_extra_windows` appends them after the packed windows, block ``j``
starting at global sample id ``packed.n_windows + Σ_{i<j} extra[i].n_windows`` (:func:`extra_window_starts`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from densitylab.data.packing import PackedSplit


@dataclass(frozen=True)
class LedgerIncidence:
    """Which window holds each mention and each subject document (all int64 numpy arrays).

    Attributes:
        mention_window: (M,) sample id of the window holding each name mention's first token.
        mention_entity: (M,) entity id of each mention.
        mention_subject: (M,) subject (entity id) of the document holding each mention, -1 when that
            document has no subject.
        doc_window: (D,) sample id of the window holding the first token of each document that has a
            subject (documents without one are left out).
        doc_subject: (D,) the subject (entity id) of each of those documents.
    """

    mention_window: np.ndarray
    mention_entity: np.ndarray
    mention_subject: np.ndarray
    doc_window: np.ndarray
    doc_subject: np.ndarray


def _empty() -> np.ndarray:
    return np.zeros(0, dtype=np.int64)


@dataclass(frozen=True)
class ExtraWindows:
    """A block of training windows outside the packed split, with the same incidence as
    :class:`LedgerIncidence` but *local* window ids (``0..n_windows-1`` within the block).

    Attributes (arrays are converted to 1-D int64 numpy arrays):
        n_windows: number of windows in the block (>= 0).
        mention_window: (M,) local window id holding each name mention's first token.
        mention_entity: (M,) entity id (>= 0) of each mention.
        mention_subject: (M,) subject (entity id) of the document holding each mention, -1 when that
            document has no subject; None (the default) = all -1.
        doc_window: (D,) local window id holding the first token of each document that has a subject.
        doc_subject: (D,) the subject (entity id >= 0) of each of those documents.

    Entity ids are checked against the entity table only when the ledger is built.

    Raises:
        ValueError: if ``n_windows`` < 0, an array is not 1-D, the mention or document arrays differ in
            length, a window id lies outside ``[0, n_windows)`` or an entity id is negative (-1 allowed
            in ``mention_subject``).
    """

    n_windows: int
    mention_window: np.ndarray = field(default_factory=_empty)
    mention_entity: np.ndarray = field(default_factory=_empty)
    mention_subject: np.ndarray | None = None
    doc_window: np.ndarray = field(default_factory=_empty)
    doc_subject: np.ndarray = field(default_factory=_empty)

    def __post_init__(self) -> None:
        n = int(self.n_windows)
        if n < 0:
            raise ValueError(f"ExtraWindows: n_windows={n}, expected >= 0")
        object.__setattr__(self, "n_windows", n)
        if self.mention_subject is None:
            object.__setattr__(self, "mention_subject", np.full(np.shape(self.mention_entity), -1, dtype=np.int64))
        names = ("mention_window", "mention_entity", "mention_subject", "doc_window", "doc_subject")
        for name in names:
            arr = np.asarray(getattr(self, name), dtype=np.int64)
            if arr.ndim != 1:
                raise ValueError(f"ExtraWindows: {name} has shape {arr.shape}, expected 1-D")
            object.__setattr__(self, name, arr)
        m = len(self.mention_window)
        for name in ("mention_entity", "mention_subject"):
            if len(getattr(self, name)) != m:
                raise ValueError(
                    f"ExtraWindows: mention_window ({m},) and {name} ({len(getattr(self, name))},): "
                    "expected equal lengths"
                )
        if len(self.doc_window) != len(self.doc_subject):
            raise ValueError(
                f"ExtraWindows: doc_window ({len(self.doc_window)},) and doc_subject ({len(self.doc_subject)},): "
                "expected equal lengths"
            )
        for name, lo, hi in (
            ("mention_window", 0, n),
            ("doc_window", 0, n),
            ("mention_entity", 0, None),
            ("mention_subject", -1, None),
            ("doc_subject", 0, None),
        ):
            arr = getattr(self, name)
            if len(arr) and (arr.min() < lo or (hi is not None and arr.max() >= hi)):
                bound = f"[{lo}, {hi})" if hi is not None else f">= {lo}"
                raise ValueError(f"ExtraWindows: {name} holds ids outside {bound}")

    def incidence(self, start: int) -> LedgerIncidence:
        """The block's incidence with its local window ids shifted by ``start`` (its first global sample id)."""
        return LedgerIncidence(
            mention_window=self.mention_window + int(start),
            mention_entity=self.mention_entity,
            mention_subject=self.mention_subject,
            doc_window=self.doc_window + int(start),
            doc_subject=self.doc_subject,
        )


def extra_window_starts(n_packed: int, extra: Sequence[ExtraWindows]) -> np.ndarray:
    """(K,) int64 first global sample id of each of the K extra blocks appended after ``n_packed`` packed
    windows: ``n_packed + Σ_{i<j} extra[i].n_windows`` for block ``j``."""
    sizes = np.asarray([int(b.n_windows) for b in extra], dtype=np.int64)
    return int(n_packed) + np.cumsum(sizes) - sizes


def with_extra_windows(
    inc: LedgerIncidence, n_packed: int, extra: Sequence[ExtraWindows]
) -> tuple[LedgerIncidence, int]:
    """The incidence of the packed windows followed by the extra blocks, their window ids made global.

    Args:
        inc: the packed split's incidence (:func:`packed_incidence`).
        n_packed: the packed split's number of windows.
        extra: the blocks, in order (block ``j`` starts at ``extra_window_starts(n_packed, extra)[j]``).
    Returns:
        ``(incidence, n_windows)``: the concatenated incidence (packed rows first) and the total number of
        windows ``n_packed + Σ extra[j].n_windows``. With no blocks, ``(inc, n_packed)`` unchanged.
    Raises:
        TypeError: if a block is not an :class:`ExtraWindows`.
    """
    if not len(extra):
        return inc, int(n_packed)
    for j, block in enumerate(extra):
        if not isinstance(block, ExtraWindows):
            raise TypeError(f"extra[{j}] is a {type(block).__name__}: expected an ExtraWindows")
    starts = extra_window_starts(n_packed, extra)
    parts = [inc, *(b.incidence(int(s)) for b, s in zip(extra, starts))]
    out = LedgerIncidence(
        **{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(LedgerIncidence)}
    )
    return out, int(n_packed) + int(sum(b.n_windows for b in extra))


def packed_incidence(packed: PackedSplit) -> LedgerIncidence:
    """The mention and subject-document incidence of one packed split (see the module docstring).

    Args:
        packed: the packed training split; reads ``spans`` (columns ``sample_id, start, kind, entity,
            doc``), ``doc_offsets`` and ``block_size``.
    Returns:
        A :class:`LedgerIncidence`; with no spans every array is empty, with name spans only (text
        extractors) ``doc_window``/``doc_subject`` are empty and ``mention_subject`` is all -1.
    Raises:
        ValueError: if a span lies outside the packed stream, or the spans of one document lie in two
            packed documents (a span table that does not belong to this split).
    """
    spans = packed.spans
    e = np.zeros(0, dtype=np.int64)
    if not len(spans):
        return LedgerIncidence(e, e, e, e, e)
    bs = int(packed.block_size)
    offsets = np.asarray(packed.doc_offsets, dtype=np.int64)
    sample = spans["sample_id"].to_numpy(dtype=np.int64)
    entity = spans["entity"].to_numpy(dtype=np.int64)
    doc = spans["doc"].to_numpy(dtype=np.int64)
    is_name = (spans["kind"] == "name").to_numpy(dtype=bool)
    pos0 = sample * bs + spans["start"].to_numpy(dtype=np.int64)  # stream position of the span's first token
    pdoc = np.searchsorted(offsets, pos0, side="right") - 1  # packed document holding it
    if pdoc.min() < 0 or pos0.max() >= offsets[-1]:
        raise ValueError(f"span positions outside the packed stream [0, {int(offsets[-1])}): wrong span table")

    # subject of each source document: the single entity its attribute spans describe
    attr_doc, attr_ent = doc[~is_name], entity[~is_name]
    pairs = np.unique(np.stack([attr_doc, attr_ent], axis=1), axis=0) if len(attr_doc) else np.zeros((0, 2), np.int64)
    docs_with_attr, n_subjects = np.unique(pairs[:, 0], return_counts=True)
    docs_with_subject = docs_with_attr[n_subjects == 1]
    # pairs are sorted by doc, so this is aligned with docs_with_subject
    subject_of = pairs[np.isin(pairs[:, 0], docs_with_subject), 1]

    # packed document (hence first window) of each source document, from any of its spans
    order = np.argsort(doc, kind="stable")
    src_docs, first, per_doc = np.unique(doc[order], return_index=True, return_counts=True)
    packed_of = pdoc[order][first]
    if not np.array_equal(np.repeat(packed_of, per_doc), pdoc[order]):
        raise ValueError("the spans of one document lie in two packed documents: wrong span table for this split")
    doc_window = offsets[packed_of[np.searchsorted(src_docs, docs_with_subject)]] // bs

    subject_per_span = np.full(len(doc), -1, dtype=np.int64)
    if len(docs_with_subject):
        k = np.searchsorted(docs_with_subject, doc).clip(max=len(docs_with_subject) - 1)
        hit = docs_with_subject[k] == doc
        subject_per_span[hit] = subject_of[k[hit]]
    return LedgerIncidence(
        mention_window=sample[is_name],
        mention_entity=entity[is_name],
        mention_subject=subject_per_span[is_name],
        doc_window=doc_window.astype(np.int64),
        doc_subject=subject_of.astype(np.int64),
    )
