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
"""

from __future__ import annotations

from dataclasses import dataclass
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
