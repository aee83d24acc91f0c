"""Tokenize documents, pack them into fixed windows with stable sample ids, and map spans.

Packing (nanoGPT / litgpt style): the documents of a split are tokenized, joined with
``<|endoftext|>`` after each one into one token stream of length L, and cut into windows of
``block_size + 1`` tokens with stride ``block_size``: window ``w`` (its **sample id**) holds stream
positions ``[w·bs, w·bs + bs]``; its inputs are the first ``bs`` tokens and its targets the last
``bs``. Every stream position after the first is a target in exactly one window and every position
but the last (the final ``<|endoftext|>``, which has nothing to predict) is an input in exactly one
window, so no token is lost. The last window is padded with
``<|endoftext|>`` and its padded targets are set to ``IGNORE_INDEX`` (excluded from the loss).

Sample ids depend only on the data, the tokenizer and ``block_size``: the same inputs always give
the same id for the same window, whatever the shuffling or the number of processes.

Spans (entity mentions, attribute values) are mapped from character offsets to token positions;
a span belongs to the window that holds its **first** token as an input (design §3).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain

import numpy as np
import pandas as pd
import torch
from tokenizers import Tokenizer

from densitylab.errors import DataError

IGNORE_INDEX = -100

#: Columns of a window span table: ``sample_id`` (window), ``start``/``end`` (token positions inside
#: the window's inputs, end exclusive; ``end`` may exceed ``block_size`` when a span crosses into
#: the next window), ``kind``, ``entity`` (id) and ``doc`` (index of the document in the split's texts).
WINDOW_SPAN_COLUMNS = ("sample_id", "start", "end", "kind", "entity", "doc")


@dataclass
class PackedSplit:
    """One split, tokenized and packed.

    Attributes:
        tokens: (n_windows·block_size + 1,) int64 padded token stream.
        n_real: number of real (non-padding) tokens L in the stream.
        block_size: window input length bs in tokens.
        doc_offsets: (n_docs + 1,) int64 stream position where each document starts
            (last entry = L). Document ``i`` occupies ``[doc_offsets[i], doc_offsets[i+1])``,
            its final token being ``<|endoftext|>``.
        spans: window span table (columns :data:`WINDOW_SPAN_COLUMNS`), sorted by sample id.
    """

    tokens: torch.Tensor
    n_real: int
    block_size: int
    doc_offsets: np.ndarray
    spans: pd.DataFrame

    @property
    def n_windows(self) -> int:
        """Number of windows (= number of sample ids, 0..n_windows-1)."""
        return (self.tokens.numel() - 1) // self.block_size

    def window(self, sample_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(input_ids, labels)`` of one window, both (block_size,) int64; padded targets
        are :data:`IGNORE_INDEX`.

        Raises:
            IndexError: for a sample id outside ``[0, n_windows)``.
        """
        if not 0 <= sample_id < self.n_windows:
            raise IndexError(f"sample_id={sample_id} outside [0, {self.n_windows})")
        s = sample_id * self.block_size
        chunk = self.tokens[s : s + self.block_size + 1]
        x, y = chunk[:-1], chunk[1:].clone()
        pad_from = self.n_real - (s + 1)  # target index j is stream position s+1+j
        if pad_from < self.block_size:
            y[max(pad_from, 0) :] = IGNORE_INDEX
        return x, y

    def windows(self) -> torch.Tensor:
        """All windows as a (n_windows, block_size + 1) view (no copy) of the padded stream."""
        return self.tokens.unfold(0, self.block_size + 1, self.block_size)


def tokenize_documents(
    tok: Tokenizer, texts: list[str], with_offsets: bool = False, offsets_for: np.ndarray | None = None
):
    """Tokenize documents with ``encode_batch`` (parallel, in Rust).

    Args:
        with_offsets: return every document's token offsets.
        offsets_for: document indices (int array): return offsets of those documents only, the others getting an
            empty (0, 2) array (reading offsets costs about a third of the encoding, so documents without spans
            skip it). Overrides ``with_offsets``.
    Returns:
        ``ids`` (list of int lists) and, with offsets asked for, per document an (n_tokens, 2) int64
        array of character offsets ``[start, end)`` of each token in its document (else None).
    """
    encs = tok.encode_batch(texts, add_special_tokens=False)
    ids = [e.ids for e in encs]
    if offsets_for is None:
        if not with_offsets:
            return ids, None
        return ids, [np.asarray(e.offsets, dtype=np.int64).reshape(-1, 2) for e in encs]
    empty = np.zeros((0, 2), dtype=np.int64)
    empty.flags.writeable = False
    offsets = [empty] * len(encs)
    for d in np.unique(np.asarray(offsets_for, dtype=np.int64)).tolist():
        offsets[d] = np.asarray(encs[d].offsets, dtype=np.int64).reshape(-1, 2)
    return ids, offsets


def char_spans_to_tokens(offsets: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map character spans ``[start, end)`` of one document to token spans ``[t0, t1)``.

    A token belongs to a span when it overlaps it: t0 = first token whose end > start, t1 = one past
    the last token whose start < end.

    Args:
        offsets: (n_tokens, 2) character offsets of the document's tokens.
        starts, ends: (n_spans,) character offsets.
    Returns:
        ``(t0, t1)`` int64 arrays of shape (n_spans,).
    """
    t0 = np.searchsorted(offsets[:, 1], starts, side="right")
    t1 = np.searchsorted(offsets[:, 0], ends, side="left")
    return t0.astype(np.int64), t1.astype(np.int64)


def pack_documents(
    doc_ids: list[list[int]],
    eos_id: int,
    block_size: int,
    split: str = "train",
    token_spans: pd.DataFrame | None = None,
) -> PackedSplit:
    """Join tokenized documents with EOS and cut the stream into windows (see module docstring).

    Args:
        doc_ids: token ids per document.
        eos_id: id of ``<|endoftext|>`` (appended after every document, also used as padding).
        block_size: window input length in tokens.
        split: split name, used in error messages.
        token_spans: optional table with columns ``doc``, ``t0``, ``t1`` (token positions inside the
            document), ``kind``, ``entity``, and optionally ``pdoc``: the index in ``doc_ids`` when
            it differs from ``doc`` (documents spliced in); ``doc`` is kept in the output.
    Returns:
        A :class:`PackedSplit`.
    Raises:
        DataError: if the split holds no token, or fewer than ``block_size + 1`` tokens (not
            even one full window).
    """
    lengths = np.fromiter((len(d) + 1 for d in doc_ids), dtype=np.int64, count=len(doc_ids))
    doc_offsets = np.zeros(len(doc_ids) + 1, dtype=np.int64)
    np.cumsum(lengths, out=doc_offsets[1:])
    n_real = int(doc_offsets[-1])
    if n_real <= len(doc_ids):
        raise DataError(
            f"the {split} split holds no text ({len(doc_ids)} empty documents): expected non-empty documents"
        )
    if n_real < block_size + 1:
        raise DataError(
            f"model.net.block_size={block_size} is larger than the {split} split ({n_real} tokens): "
            f"expected at least block_size + 1 = {block_size + 1} tokens; lower model.net.block_size or add data"
        )
    n_windows = -(-(n_real - 1) // block_size)  # every position except the last needs to be an input
    n_windows = max(n_windows, 1)
    stream = np.full(n_windows * block_size + 1, eos_id, dtype=np.int64)
    # array operations, no per-token Python loop: the documents' tokens fill every position but each EOS
    is_token = np.ones(n_real, dtype=bool)
    is_token[doc_offsets[1:] - 1] = False
    stream[:n_real][is_token] = np.fromiter(chain.from_iterable(doc_ids), dtype=np.int64, count=n_real - len(doc_ids))
    if token_spans is not None and len(token_spans):
        packed_doc = token_spans["pdoc" if "pdoc" in token_spans else "doc"].to_numpy()
        pos0 = doc_offsets[packed_doc] + token_spans["t0"].to_numpy()
        pos1 = doc_offsets[packed_doc] + token_spans["t1"].to_numpy()
        sample = pos0 // block_size
        base = sample * block_size
        spans = pd.DataFrame(
            {
                "sample_id": sample.astype(np.int64),
                "start": (pos0 - base).astype(np.int64),
                "end": (pos1 - base).astype(np.int64),
                "kind": token_spans["kind"].astype("string").to_numpy(),
                "entity": token_spans["entity"].to_numpy(dtype=np.int64),
                "doc": token_spans["doc"].to_numpy(dtype=np.int64),
            }
        ).sort_values(["sample_id", "start"], kind="stable", ignore_index=True)
    else:
        spans = pd.DataFrame({c: pd.Series([], dtype="int64") for c in WINDOW_SPAN_COLUMNS}).astype({"kind": "string"})
    return PackedSplit(torch.from_numpy(stream), n_real, block_size, doc_offsets, spans)


def _char_spans_to_token_spans(char_spans: pd.DataFrame, offsets: list[np.ndarray]) -> pd.DataFrame:
    """Map the character spans of every document to token spans at once (:func:`char_spans_to_tokens` per
    document, vectorised): each document's token offsets are shifted into its own band of one global sorted key,
    so one ``searchsorted`` serves all documents. Rows come out ordered by ``doc`` (stable), as a per-document
    ``groupby`` would order them.

    Args:
        char_spans: columns ``doc, start, end, kind, entity`` (character offsets).
        offsets: per document an (n_tokens, 2) array of token character offsets.
    Returns:
        Columns ``doc, t0, t1, kind, entity`` (token positions inside each document).
    """
    spans = char_spans.sort_values("doc", kind="stable")
    doc = spans["doc"].to_numpy(dtype=np.int64)
    n_tok = np.fromiter((len(o) for o in offsets), dtype=np.int64, count=len(offsets))
    first = np.zeros(len(offsets) + 1, dtype=np.int64)
    np.cumsum(n_tok, out=first[1:])
    flat = np.concatenate(offsets) if len(offsets) else np.zeros((0, 2), dtype=np.int64)
    band = int(max(int(flat.max()) if flat.size else 0, int(spans["end"].max()), int(spans["start"].max()))) + 2
    owner = np.repeat(np.arange(len(offsets), dtype=np.int64), n_tok)
    ends_key = owner * band + flat[:, 1]
    starts_key = owner * band + flat[:, 0]
    t0 = np.searchsorted(ends_key, doc * band + spans["start"].to_numpy(dtype=np.int64), side="right") - first[doc]
    t1 = np.searchsorted(starts_key, doc * band + spans["end"].to_numpy(dtype=np.int64), side="left") - first[doc]
    return pd.DataFrame(
        {
            "doc": doc,
            "t0": t0.astype(np.int64),
            "t1": t1.astype(np.int64),
            "kind": spans["kind"].to_numpy(),
            "entity": spans["entity"].to_numpy(),
        }
    )


def tokenize_and_pack(
    tok: Tokenizer,
    texts: list[str],
    char_spans: pd.DataFrame,
    block_size: int,
    split: str = "train",
    extra_docs: list[tuple[int, list[int]]] | None = None,
) -> PackedSplit:
    """Tokenize ``texts``, map ``char_spans`` (columns ``doc, start, end, kind, entity``) to
    tokens and pack (see :func:`pack_documents`).

    Args:
        extra_docs: optional pre-tokenized documents ``(insert_before_doc_index, ids)`` spliced
            into the document sequence (used for random-token canaries). Span ``doc`` indices keep
            referring to ``texts``.
    Raises:
        DataError: see :func:`pack_documents`.
    """
    has_spans = char_spans is not None and len(char_spans) > 0
    ids, offsets = tokenize_documents(tok, texts, offsets_for=char_spans["doc"].to_numpy() if has_spans else None)
    token_spans = None
    if has_spans:
        token_spans = _char_spans_to_token_spans(char_spans, offsets)
    if extra_docs:
        order: list[list[int]] = []
        new_index = np.zeros(len(ids), dtype=np.int64)
        extra = sorted(extra_docs, key=lambda e: e[0])
        k = 0
        for i, d in enumerate(ids):
            while k < len(extra) and extra[k][0] <= i:
                order.append(list(extra[k][1]))
                k += 1
            new_index[i] = len(order)
            order.append(d)
        order.extend(list(e[1]) for e in extra[k:])
        ids = order
        if token_spans is not None:
            token_spans["pdoc"] = new_index[token_spans["doc"].to_numpy()]
    return pack_documents(ids, tok.token_to_id("<|endoftext|>"), block_size, split, token_spans)
