"""Position roles: what each input position of a packed token stream is, and whose it is (design §8).

Every input position of the stream gets one role (:data:`ROLES`), in this order of precedence:

- ``canary``: inside a random-token canary document (spliced into the training stream);
- ``eos``: the input token is ``<|endoftext|>``;
- ``name_first`` / ``name_inner`` / ``name_last``: the first, a middle, and the last token of a name
  mention (a one-token name is ``name_last``: the position where the whole name has been read);
- ``pre_value``: the position whose **target** (next token) is the first token of an attribute value,
  where a causal model must recall the fact (ROME, Meng et al. 2022, "Locating and Editing Factual
  Associations in GPT"; Geva et al. 2023, "Dissecting Recall of Factual Associations in
  Auto-Regressive Language Models");
- ``value``: a token of an attribute value;
- ``template``: every other position of a document with attribute spans (synthetic biographies), or
  ``other`` in a document without them (text data).

Every position of a document with a **subject** (the one entity its attribute spans describe; the
ledger's rule, :mod:`densitylab.ledger.incidence`) carries that ``subject``; name positions also carry
the ``mentioned`` entity. The **person** of a position is the mentioned entity at name positions and the
subject elsewhere: for a co-mention inside someone else's biography the name positions belong to the
mentioned person, every other position to the subject.

``doc_initial`` marks the positions of a document's first sentence, approximated as the positions up to
the end of its first attribute value (the synthetic generator's first sentence always names the subject
in full and, unless it is the co-mention sentence, states one attribute).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from densitylab.data.packing import PackedSplit

#: Role names; a role code is the index into this tuple.
ROLES = (
    "name_first",
    "name_inner",
    "name_last",
    "pre_value",
    "value",
    "template",
    "eos",
    "canary",
    "other",
)
ROLE_CODE = {r: i for i, r in enumerate(ROLES)}
NAME_ROLES = ("name_first", "name_inner", "name_last")


@dataclass(frozen=True)
class StreamLabels:
    """Per input position of a packed stream: arrays of shape (n_real,), or of shape (len(positions),) for the
    stream positions ``positions`` only (:func:`label_stream` with ``positions``; read them with :meth:`take`).

    Attributes:
        role: int8 role codes (index into :data:`ROLES`).
        subject: int64 subject of the position's document, -1 when it has none.
        mentioned: int64 entity of the name mention holding the position, -1 outside names.
        doc: int64 packed document index of the position.
        doc_initial: bool, the position lies in its document's first sentence (see module docstring).
        positions: sorted distinct stream positions the arrays hold (None: every real position 0..n_real-1).
    """

    role: np.ndarray
    subject: np.ndarray
    mentioned: np.ndarray
    doc: np.ndarray
    doc_initial: np.ndarray
    positions: np.ndarray | None = None

    @property
    def person(self) -> np.ndarray:
        """int64: the mentioned entity at name positions, else the subject (-1 none)."""
        return np.where(self.mentioned >= 0, self.mentioned, self.subject)

    def take(self, pos: np.ndarray) -> StreamLabels:
        """The labels of stream positions ``pos`` (any shape; each real and, with ``positions``, one of them), as a
        :class:`StreamLabels` of arrays of ``pos``'s shape.

        Raises:
            KeyError: for a position these labels do not hold.
        """
        pos = np.asarray(pos, dtype=np.int64)
        if self.positions is None:
            i = pos
        else:
            i = np.minimum(np.searchsorted(self.positions, pos), max(len(self.positions) - 1, 0))
            if pos.size and (not len(self.positions) or not np.array_equal(self.positions[i], pos)):
                raise KeyError("stream positions outside the labelled ones")
        return StreamLabels(self.role[i], self.subject[i], self.mentioned[i], self.doc[i], self.doc_initial[i], pos)


def _ranges(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flattened positions of the ranges [starts_i, ends_i) and the range index of each position."""
    lengths = np.maximum(ends - starts, 0)
    idx = np.repeat(np.arange(len(starts)), lengths)
    if not len(idx):
        return idx.astype(np.int64), idx.astype(np.int64)
    first = np.repeat(np.cumsum(lengths) - lengths, lengths)
    return (np.repeat(starts, lengths) + np.arange(len(idx)) - first).astype(np.int64), idx


def canary_documents(packed: PackedSplit, canaries: pd.DataFrame | None) -> np.ndarray:
    """(n_docs,) bool: the packed documents that are canary copies (their tokens equal a canary's).

    Args:
        packed: a packed split.
        canaries: the canary table (column ``tokens``), or None.
    """
    offsets = np.asarray(packed.doc_offsets, dtype=np.int64)
    out = np.zeros(len(offsets) - 1, dtype=bool)
    if canaries is None or not len(canaries):
        return out
    stream = packed.tokens
    known = {tuple(int(t) for t in toks) for toks in canaries["tokens"]}
    lengths = {len(k) + 1 for k in known}  # + the EOS after each document
    doc_len = np.diff(offsets)
    for d in np.flatnonzero(np.isin(doc_len, list(lengths))):
        if tuple(stream[offsets[d] : offsets[d + 1] - 1].tolist()) in known:
            out[d] = True
    return out


def label_stream(
    packed: PackedSplit, eos_id: int, canary_docs: np.ndarray | None = None, positions: np.ndarray | None = None
) -> StreamLabels:
    """Role, subject, mentioned entity and document of every input position of ``packed`` (or of ``positions``).

    Args:
        packed: a packed split (its ``spans``: columns ``sample_id, start, end, kind, entity, doc``).
        eos_id: id of ``<|endoftext|>``.
        canary_docs: (n_docs,) bool canary documents (:func:`canary_documents`), or None.
        positions: stream positions to label (any order, repeats allowed, each < ``n_real``), or None for all.
            Labelling a few windows of a large training split costs O(documents + spans + positions) memory
            instead of ~26 bytes per stream token; the labels of a position are the same either way.
    Returns:
        A :class:`StreamLabels` over the ``n_real`` real stream positions, or over the sorted distinct
        ``positions``.
    """
    L, bs = int(packed.n_real), int(packed.block_size)
    offsets = np.asarray(packed.doc_offsets, dtype=np.int64)
    pos = np.arange(L, dtype=np.int64) if positions is None else np.unique(np.asarray(positions, dtype=np.int64))
    if len(pos) and (pos[0] < 0 or pos[-1] >= L):
        raise ValueError(f"positions outside [0, {L})")
    n_docs = len(offsets) - 1

    def local(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(indices into ``pos``, mask of ``q`` that ``pos`` holds) for stream positions ``q``."""
        if positions is None:
            return q, np.ones(len(q), dtype=bool)
        i = np.minimum(np.searchsorted(pos, q), max(len(pos) - 1, 0))
        ok = pos[i] == q if len(pos) else np.zeros(len(q), dtype=bool)
        return i[ok], ok

    doc = np.searchsorted(offsets, pos, side="right") - 1
    spans = packed.spans
    is_name = (spans["kind"] == "name").to_numpy(dtype=bool)
    pos0 = spans["sample_id"].to_numpy(np.int64) * bs + spans["start"].to_numpy(np.int64)
    pos1 = np.minimum(spans["sample_id"].to_numpy(np.int64) * bs + spans["end"].to_numpy(np.int64), L)
    entity = spans["entity"].to_numpy(np.int64)
    has_attr = np.zeros(n_docs, dtype=bool)
    subject_of_doc = np.full(n_docs, -1, dtype=np.int64)
    first_value_end = np.full(n_docs, -1, dtype=np.int64)
    span_doc = np.searchsorted(offsets, pos0, side="right") - 1
    if (~is_name).any():
        vdoc = span_doc[~is_name]
        has_attr[vdoc] = True
        # the single entity a document's attribute spans describe (the ledger's subject rule)
        frame = pd.DataFrame({"doc": vdoc, "entity": entity[~is_name], "end": pos1[~is_name]})
        g = frame.groupby("doc")
        one = g["entity"].nunique() == 1
        subj = g["entity"].first()[one]
        subject_of_doc[subj.index.to_numpy()] = subj.to_numpy()
        first_end = g["end"].min()
        first_value_end[first_end.index.to_numpy()] = first_end.to_numpy()

    role = np.where(has_attr[doc], ROLE_CODE["template"], ROLE_CODE["other"]).astype(np.int8)
    vpos, _ = _ranges(pos0[~is_name], pos1[~is_name])
    role[local(vpos)[0]] = ROLE_CODE["value"]
    pre = pos0[~is_name] - 1
    pre_doc = np.searchsorted(offsets, np.maximum(pre, 0), side="right") - 1
    pre = pre[(pre >= 0) & (pre_doc == span_doc[~is_name])]
    role[local(pre)[0]] = ROLE_CODE["pre_value"]
    mentioned = np.full(len(pos), -1, dtype=np.int64)
    npos, nidx = _ranges(pos0[is_name], pos1[is_name])
    at, ok = local(npos)
    npos, nidx = npos[ok], nidx[ok]
    n_first, n_last = pos0[is_name][nidx], pos1[is_name][nidx] - 1
    role[at] = np.where(
        npos == n_last,
        ROLE_CODE["name_last"],
        np.where(npos == n_first, ROLE_CODE["name_first"], ROLE_CODE["name_inner"]),
    ).astype(np.int8)
    mentioned[at] = entity[is_name][nidx]
    stream = packed.tokens[:L] if positions is None else packed.tokens[pos]
    role[stream == eos_id] = ROLE_CODE["eos"]
    if canary_docs is not None and canary_docs.any():
        role[canary_docs[doc]] = ROLE_CODE["canary"]
    doc_initial = pos < first_value_end[doc]  # -1: no attribute value, no first sentence
    return StreamLabels(role, subject_of_doc[doc], mentioned, doc, doc_initial, None if positions is None else pos)
