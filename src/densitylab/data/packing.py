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

import json
import shutil
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

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


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned integer dtype that holds token ids ``0 .. vocab_size - 1`` (uint8, uint16 or uint32).

    Raises:
        ValueError: for a vocabulary size below 1 or above 2**32.
    """
    if not 1 <= int(vocab_size) <= 2**32:
        raise ValueError(f"vocab_size={vocab_size}: expected 1 .. 2**32")
    for dt in (np.uint8, np.uint16, np.uint32):
        if int(vocab_size) - 1 <= np.iinfo(dt).max:
            return np.dtype(dt)
    raise AssertionError("unreachable")


@dataclass
class PackedSplit:
    """One split, tokenized and packed.

    The token stream is a numpy array of the smallest unsigned dtype that holds the vocabulary
    (:func:`token_dtype`); prepared data keeps it in a file read through ``np.memmap`` (``path``), so a process
    holds in memory only the pages it reads (training reads one batch of windows at a time). Read windows with
    :meth:`window` / :meth:`gather` (int64 torch tensors) or :meth:`stream` (int64 numpy), token counts with
    :meth:`token_counts`; pickling a file-backed split (DataLoader workers that spawn) sends the path, not the tokens.

    Attributes:
        tokens: (n_windows·block_size + 1,) unsigned-integer padded token stream (a read-only ``np.memmap`` for
            prepared data; a ``torch.Tensor`` given here is converted to numpy).
        n_real: number of real (non-padding) tokens L in the stream.
        block_size: window input length bs in tokens.
        doc_offsets: (n_docs + 1,) int64 stream position where each document starts
            (last entry = L). Document ``i`` occupies ``[doc_offsets[i], doc_offsets[i+1])``,
            its final token being ``<|endoftext|>``.
        spans: window span table (columns :data:`WINDOW_SPAN_COLUMNS`), sorted by sample id.
        path: the raw token file behind ``tokens`` (None: in memory).
    """

    tokens: np.ndarray
    n_real: int
    block_size: int
    doc_offsets: np.ndarray
    spans: pd.DataFrame
    path: Path | None = None

    def __post_init__(self) -> None:
        if isinstance(self.tokens, torch.Tensor):
            self.tokens = self.tokens.numpy()
        self.tokens = np.asarray(self.tokens) if not isinstance(self.tokens, np.memmap) else self.tokens

    @classmethod
    def open(cls, path: Path, dtype: str, length: int, n_real: int, block_size: int, doc_offsets, spans) -> PackedSplit:
        """A split whose tokens are the raw ``length`` × ``dtype`` file ``path``, memory-mapped read-only."""
        tokens = np.memmap(path, dtype=np.dtype(dtype), mode="r", shape=(int(length),))
        return cls(tokens, int(n_real), int(block_size), np.asarray(doc_offsets, dtype=np.int64), spans, Path(path))

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        if self.path is not None:  # a spawned worker maps the file itself
            state["tokens"] = (str(self.path), self.tokens.dtype.str, int(self.tokens.shape[0]))
        return state

    def __setstate__(self, state: dict) -> None:
        if isinstance(state.get("tokens"), tuple):
            path, dtype, length = state["tokens"]
            state["tokens"] = np.memmap(path, dtype=np.dtype(dtype), mode="r", shape=(length,))
        self.__dict__.update(state)

    @property
    def n_windows(self) -> int:
        """Number of windows (= number of sample ids, 0..n_windows-1)."""
        return (int(self.tokens.shape[0]) - 1) // self.block_size

    def stream(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Stream positions ``[start, stop)`` (default: to the end of the real tokens, ``n_real``) as an int64
        numpy copy."""
        stop = self.n_real if stop is None else stop
        return np.asarray(self.tokens[start:stop], dtype=np.int64)

    def token_counts(self, minlength: int = 0, chunk: int = 1 << 24) -> np.ndarray:
        """(max(minlength, largest id + 1),) int64 occurrences of each token id among the ``n_real`` real stream
        positions (every document's tokens and its ``<|endoftext|>``; canary copies included), counted in
        chunks of ``chunk`` tokens (no int64 copy of the whole stream)."""
        counts = np.zeros(int(minlength), dtype=np.int64)
        for a in range(0, self.n_real, chunk):
            c = np.bincount(self.tokens[a : min(a + chunk, self.n_real)], minlength=len(counts))
            c[: len(counts)] += counts
            counts = c
        return counts

    def gather(self, sample_ids) -> torch.Tensor:
        """Windows ``sample_ids`` ((n,) ints in ``[0, n_windows)``) as an (n, block_size + 1) int64 tensor of
        stream tokens (inputs = ``[:, :-1]``, targets = ``[:, 1:]``; padded targets are *not* masked here)."""
        sid = np.asarray(sample_ids, dtype=np.int64)
        idx = sid[:, None] * self.block_size + np.arange(self.block_size + 1)
        return torch.from_numpy(np.asarray(self.tokens[idx], dtype=np.int64))

    def window(self, sample_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(input_ids, labels)`` of one window, both (block_size,) int64; padded targets
        are :data:`IGNORE_INDEX`.

        Raises:
            IndexError: for a sample id outside ``[0, n_windows)``.
        """
        if not 0 <= sample_id < self.n_windows:
            raise IndexError(f"sample_id={sample_id} outside [0, {self.n_windows})")
        s = sample_id * self.block_size
        chunk = torch.from_numpy(self.stream(s, s + self.block_size + 1))
        x, y = chunk[:-1], chunk[1:].clone()
        pad_from = self.n_real - (s + 1)  # target index j is stream position s+1+j
        if pad_from < self.block_size:
            y[max(pad_from, 0) :] = IGNORE_INDEX
        return x, y

    def windows(self) -> np.ndarray:
        """All windows as a read-only (n_windows, block_size + 1) numpy view (no copy) of the padded stream."""
        bs = self.block_size
        return np.lib.stride_tricks.as_strided(
            self.tokens,
            shape=(self.n_windows, bs + 1),
            strides=(bs * self.tokens.strides[0], self.tokens.strides[0]),
            writeable=False,
        )


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


class _StreamWriter:
    """Append tokenized documents to a packed stream (in memory, or a raw token file), then cut it into windows.

    Documents arrive in order, a batch at a time (:meth:`add`); each gets ``<|endoftext|>`` after it. Span token
    positions inside a batch are turned into stream positions as they arrive, so the stream never has to be held
    whole: only the per-document lengths (8 bytes a document) and the spans (O(spans)) are kept.
    """

    def __init__(self, eos_id: int, block_size: int, dtype: np.dtype, path: Path | None = None) -> None:
        self.eos_id, self.block_size, self.dtype, self.path = int(eos_id), int(block_size), np.dtype(dtype), path
        self.max_id = int(np.iinfo(self.dtype).max)
        if self.eos_id > self.max_id:
            raise ValueError(f"eos_id={eos_id} does not fit dtype {self.dtype}")
        self._file = open(path, "wb") if path is not None else None  # noqa: SIM115 (closed in finish)
        self._parts: list[np.ndarray] = []
        self._lengths: list[np.ndarray] = []
        self._spans: list[dict[str, np.ndarray]] = []
        self.n = 0  # stream positions written
        self.n_docs = 0

    def _write(self, arr: np.ndarray) -> None:
        if self._file is not None:
            self._file.write(arr.astype(self.dtype, copy=False).tobytes())
        else:
            self._parts.append(arr.astype(self.dtype, copy=False))

    def add(self, doc_ids: list[list[int]], token_spans: pd.DataFrame | None = None) -> None:
        """Append documents ``doc_ids`` (token ids each) and their spans: columns ``pdoc`` (index in ``doc_ids``; or
        ``doc`` when absent), ``t0``, ``t1`` (token positions in the document), ``kind``, ``entity``, ``doc``."""
        lengths = np.fromiter((len(d) + 1 for d in doc_ids), dtype=np.int64, count=len(doc_ids))
        total = int(lengths.sum())
        starts = np.zeros(len(doc_ids), dtype=np.int64)
        if len(doc_ids):
            np.cumsum(lengths[:-1], out=starts[1:])
        # array operations, no per-token Python loop: the documents' tokens fill every position but each EOS
        chunk = np.full(total, self.eos_id, dtype=np.int64)
        is_token = np.ones(total, dtype=bool)
        is_token[starts + lengths - 1] = False
        chunk[is_token] = np.fromiter(chain.from_iterable(doc_ids), dtype=np.int64, count=total - len(doc_ids))
        if total and (int(chunk.max()) > self.max_id or int(chunk.min()) < 0):
            raise ValueError(f"token ids outside [0, {self.max_id}] cannot be stored as {self.dtype}")
        self._write(chunk)
        if token_spans is not None and len(token_spans):
            pdoc = token_spans["pdoc" if "pdoc" in token_spans else "doc"].to_numpy(dtype=np.int64)
            base = self.n + starts[pdoc]
            self._spans.append(
                {
                    "pos0": base + token_spans["t0"].to_numpy(dtype=np.int64),
                    "pos1": base + token_spans["t1"].to_numpy(dtype=np.int64),
                    "kind": token_spans["kind"].astype("string").to_numpy(),
                    "entity": token_spans["entity"].to_numpy(dtype=np.int64),
                    "doc": token_spans["doc"].to_numpy(dtype=np.int64),
                }
            )
        self._lengths.append(lengths)
        self.n += total
        self.n_docs += len(doc_ids)

    def append_part(self, part: Path, state: dict, doc_base: int) -> None:
        """Append a shard written by :func:`pack_part` (its raw token file ``part`` and the ``state`` it returned),
        its stream positions shifted by the tokens before it and its span documents by ``doc_base`` (the index in the
        split of the shard's first document). Needs a file-backed writer."""
        with open(part, "rb") as f:
            shutil.copyfileobj(f, self._file, 1 << 24)
        for sp in state["spans"]:
            self._spans.append(
                {
                    "pos0": sp["pos0"] + self.n,
                    "pos1": sp["pos1"] + self.n,
                    "kind": sp["kind"],
                    "entity": sp["entity"],
                    "doc": sp["doc"] + doc_base,
                }
            )
        self._lengths.extend(state["lengths"])
        self.n += int(state["n"])
        self.n_docs += int(state["n_docs"])

    def close(self) -> None:
        """Close the token file (also on errors)."""
        if self._file is not None and not self._file.closed:
            self._file.close()

    def finish(self, split: str) -> PackedSplit:
        """Pad the stream with ``<|endoftext|>`` to whole windows and return the :class:`PackedSplit` (memory-mapped
        from ``path`` when writing to a file).

        Raises:
            DataError: if the split holds no token, or fewer than ``block_size + 1`` tokens (not even one window).
        """
        try:
            n_real, bs = self.n, self.block_size
            if n_real <= self.n_docs:
                raise DataError(
                    f"the {split} split holds no text ({self.n_docs} empty documents): expected non-empty documents"
                )
            if n_real < bs + 1:
                raise DataError(
                    f"model.net.block_size={bs} is larger than the {split} split ({n_real} tokens): expected at "
                    f"least block_size + 1 = {bs + 1} tokens; lower model.net.block_size or add data"
                )
            n_windows = max(-(-(n_real - 1) // bs), 1)  # every position except the last needs to be an input
            self._write(np.full(n_windows * bs + 1 - n_real, self.eos_id, dtype=np.int64))
        finally:
            self.close()
        doc_offsets = np.zeros(self.n_docs + 1, dtype=np.int64)
        if self._lengths:
            np.cumsum(np.concatenate(self._lengths), out=doc_offsets[1:])
        if self._spans:
            pos0 = np.concatenate([p["pos0"] for p in self._spans])
            pos1 = np.concatenate([p["pos1"] for p in self._spans])
            sample = pos0 // bs
            spans = pd.DataFrame(
                {
                    "sample_id": sample,
                    "start": pos0 - sample * bs,
                    "end": pos1 - sample * bs,
                    "kind": np.concatenate([p["kind"] for p in self._spans]),
                    "entity": np.concatenate([p["entity"] for p in self._spans]),
                    "doc": np.concatenate([p["doc"] for p in self._spans]),
                }
            ).sort_values(["sample_id", "start"], kind="stable", ignore_index=True)
        else:
            spans = pd.DataFrame({c: pd.Series([], dtype="int64") for c in WINDOW_SPAN_COLUMNS}).astype(
                {"kind": "string"}
            )
        length = n_windows * bs + 1
        if self.path is not None:
            return PackedSplit.open(self.path, self.dtype.str, length, n_real, bs, doc_offsets, spans)
        return PackedSplit(np.concatenate(self._parts), n_real, bs, doc_offsets, spans)


def pack_documents(
    doc_ids: list[list[int]],
    eos_id: int,
    block_size: int,
    split: str = "train",
    token_spans: pd.DataFrame | None = None,
) -> PackedSplit:
    """Join tokenized documents with EOS and cut the stream into windows (see module docstring), in memory.

    Args:
        doc_ids: token ids per document.
        eos_id: id of ``<|endoftext|>`` (appended after every document, also used as padding).
        block_size: window input length in tokens.
        split: split name, used in error messages.
        token_spans: optional table with columns ``doc``, ``t0``, ``t1`` (token positions inside the
            document), ``kind``, ``entity``, and optionally ``pdoc``: the index in ``doc_ids`` when
            it differs from ``doc`` (documents spliced in); ``doc`` is kept in the output.
    Returns:
        A :class:`PackedSplit` whose tokens have the smallest dtype that holds the largest id.
    Raises:
        DataError: if the split holds no token, or fewer than ``block_size + 1`` tokens (not
            even one full window).
    """
    top = max([eos_id, *(max(d) for d in doc_ids if len(d))])
    w = _StreamWriter(eos_id, block_size, token_dtype(top + 1))
    w.add(doc_ids, token_spans)
    return w.finish(split)


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


def _check_char_spans(char_spans: pd.DataFrame, n_docs: int, split: str) -> None:
    """Raise DataError (one line) for spans whose document index or character offsets are impossible."""
    doc = char_spans["doc"].to_numpy(dtype=np.int64)
    start, end = char_spans["start"].to_numpy(dtype=np.int64), char_spans["end"].to_numpy(dtype=np.int64)
    bad = (doc < 0) | (doc >= n_docs) | (start < 0) | (end < start)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{split} span doc={doc[i]} start={start[i]} end={end[i]}: expected 0 <= doc < {n_docs} and "
            "0 <= start <= end (character offsets)"
        )


def _pack_range(
    tok: Tokenizer,
    texts,
    char_spans: pd.DataFrame | None,
    extra: list[tuple[int, list[int]]],
    writer: _StreamWriter,
    chunk_chars: int,
    bar=None,
) -> None:
    """Tokenize documents ``texts`` (indices 0..n-1 of this piece) a chunk at a time into ``writer``: ``char_spans``
    (sorted by ``doc``, piece indices, checked) mapped to tokens, ``extra`` (sorted by index) spliced in before the
    document of their index; those past the last document are appended at the end."""
    n = len(texts)
    span_doc = None if char_spans is None or not len(char_spans) else char_spans["doc"].to_numpy(dtype=np.int64)
    k, a, step = 0, 0, 1024
    while a < n:
        b = min(n, a + step)
        chunk = texts[a:b]
        chunk = chunk if isinstance(chunk, list) else list(chunk)
        chars = sum(map(len, chunk))
        step = max(1, min(4 * step, int(step * chunk_chars / max(chars, 1))))
        sub = None
        if span_doc is not None:
            lo, hi = np.searchsorted(span_doc, [a, b])
            if hi > lo:
                sub = char_spans.iloc[lo:hi].assign(doc=span_doc[lo:hi] - a)
        ids, offsets = tokenize_documents(tok, chunk, offsets_for=None if sub is None else sub["doc"].to_numpy())
        token_spans = None if sub is None else _char_spans_to_token_spans(sub, offsets)
        if k < len(extra) and extra[k][0] < b:  # canaries spliced in before the documents they precede
            order: list[list[int]] = []
            new_index = np.zeros(len(ids), dtype=np.int64)
            for i, d in enumerate(ids):
                while k < len(extra) and extra[k][0] <= a + i:
                    order.append(list(extra[k][1]))
                    k += 1
                new_index[i] = len(order)
                order.append(d)
            ids = order
            if token_spans is not None:
                token_spans["pdoc"] = new_index[token_spans["doc"].to_numpy()]
        if token_spans is not None:
            if "pdoc" not in token_spans:
                token_spans["pdoc"] = token_spans["doc"]
            token_spans["doc"] += a
        writer.add(ids, token_spans)
        if bar is not None:
            bar.update(b - a)
            bar.set_postfix_str(f"{writer.n:,} tokens", refresh=False)
        a = b
    if k < len(extra):
        writer.add([list(e[1]) for e in extra[k:]])


def pack_part(
    tok_json: str,
    texts: list[str],
    char_spans: pd.DataFrame | None,
    extra: list[tuple[int, list[int]]],
    block_size: int,
    dtype: str,
    part: str | Path,
    chunk_chars: int = 1 << 22,
) -> dict:
    """One shard of :func:`tokenize_and_pack` (in a worker process or on another machine): its documents tokenized
    into the raw token file ``part``.

    Args:
        tok_json: the tokenizer (``Tokenizer.to_str()``).
        texts: the shard's documents; ``char_spans`` (sorted by ``doc``) and ``extra`` index them from 0
            (:func:`shard_inputs`).
    Returns:
        The shard's state: ``n`` (stream tokens), ``n_docs``, ``lengths`` (document lengths, EOS included) and
        ``spans`` (stream positions relative to the shard), for :meth:`_StreamWriter.append_part` or
        :func:`save_part`.
    """
    tok = Tokenizer.from_str(tok_json)
    writer = _StreamWriter(tok.token_to_id("<|endoftext|>"), block_size, np.dtype(dtype), Path(part))
    try:
        _pack_range(tok, texts, char_spans, extra, writer, chunk_chars)
    finally:
        writer.close()
    return {"n": writer.n, "n_docs": writer.n_docs, "lengths": writer._lengths, "spans": writer._spans}


def save_part(state: dict, prefix: Path) -> None:
    """Write a :func:`pack_part` state next to its token file: ``{prefix}.lengths.npy``, ``{prefix}.spans.parquet``
    and ``{prefix}.json`` (stream tokens and documents)."""
    lengths = np.concatenate(state["lengths"]) if state["lengths"] else np.zeros(0, dtype=np.int64)
    np.save(f"{prefix}.lengths.npy", lengths)
    cols = ("pos0", "pos1", "kind", "entity", "doc")
    spans = pd.DataFrame(
        {c: np.concatenate([sp[c] for sp in state["spans"]]) for c in cols}
        if state["spans"]
        else {c: np.zeros(0, dtype=object if c == "kind" else np.int64) for c in cols}
    )
    spans.to_parquet(f"{prefix}.spans.parquet", index=False)
    Path(f"{prefix}.json").write_text(json.dumps({"n": int(state["n"]), "n_docs": int(state["n_docs"])}))


def load_part(prefix: Path) -> dict:
    """Read a state written by :func:`save_part`."""
    info = json.loads(Path(f"{prefix}.json").read_text())
    spans = pd.read_parquet(f"{prefix}.spans.parquet")
    sp = (
        [
            {
                "pos0": spans["pos0"].to_numpy(np.int64),
                "pos1": spans["pos1"].to_numpy(np.int64),
                "kind": spans["kind"].astype("string").to_numpy(),
                "entity": spans["entity"].to_numpy(np.int64),
                "doc": spans["doc"].to_numpy(np.int64),
            }
        ]
        if len(spans)
        else []
    )
    return {"n": info["n"], "n_docs": info["n_docs"], "lengths": [np.load(f"{prefix}.lengths.npy")], "spans": sp}


def shard_inputs(
    texts, char_spans: pd.DataFrame | None, extra: list[tuple[int, list[int]]], bounds: np.ndarray, i: int
) -> tuple[list[str], pd.DataFrame | None, list[tuple[int, list[int]]]]:
    """The documents, spans and spliced documents of shard ``i`` of ``bounds`` (:func:`shard_bounds`), indexed from
    the shard's first document. ``char_spans`` must be checked and sorted by ``doc``, ``extra`` sorted by index.
    Every spliced document goes to the shard holding the document it precedes (before the first: shard 0; past the
    last: the last shard, which appends it)."""
    a, b = int(bounds[i]), int(bounds[i + 1])
    sub = None
    if char_spans is not None and len(char_spans):
        span_doc = char_spans["doc"].to_numpy(dtype=np.int64)
        lo, hi = np.searchsorted(span_doc, [a, b])
        sub = char_spans.iloc[lo:hi].assign(doc=span_doc[lo:hi] - a) if hi > lo else None
    idx = np.array([e[0] for e in extra], dtype=np.int64)
    owner = np.clip(np.searchsorted(bounds, idx, side="right") - 1, 0, len(bounds) - 2)
    mine = [(int(e[0]) - a, list(e[1])) for e, o in zip(extra, owner) if o == i]
    part = texts[a:b]
    return (part if isinstance(part, list) else list(part)), sub, mine


def shard_bounds(n_docs: int, n_shards: int, exact: bool = False) -> np.ndarray:
    """(k + 1,) int64 document boundaries of ``k`` contiguous shards of nearly equal document counts: shard ``i``
    holds documents ``[bounds[i], bounds[i+1])``. ``k = min(n_shards, n_docs)`` (at least 1), or ``n_shards``
    exactly with ``exact`` (some shards may then be empty: one shard per machine)."""
    k = int(n_shards) if exact else max(1, min(int(n_shards), int(n_docs)))
    return np.linspace(0, n_docs, k + 1).round().astype(np.int64)


def tokenize_and_pack(
    tok: Tokenizer,
    texts,
    char_spans: pd.DataFrame | None,
    block_size: int,
    split: str = "train",
    extra_docs: list[tuple[int, list[int]]] | None = None,
    path: Path | None = None,
    chunk_chars: int = 1 << 22,
    progress: bool = False,
    num_proc: int = 1,
    min_shard_docs: int = 10_000,
    max_shard_docs: int = 100_000,
) -> PackedSplit:
    """Tokenize ``texts``, map ``char_spans`` (columns ``doc, start, end, kind, entity``) to
    tokens and pack (see :func:`pack_documents`), a chunk of documents at a time, optionally sharded.

    Memory is bounded by the chunk (about ``chunk_chars`` characters of documents, their token lists and offsets)
    plus 8 bytes a document and the spans: with ``path`` the stream goes straight to that raw token file (dtype
    :func:`token_dtype` of the vocabulary) and comes back memory-mapped. With ``num_proc`` > 1 (and ``path``) the
    documents are cut into ``num_proc`` contiguous shards (:func:`shard_bounds`), each tokenized by its own process
    into a part file, and the parts are joined in order: stream positions, sample ids and spans come from the prefix
    sum of the shards' token counts, so the result is the same for any number of shards and any chunk size (the
    same tokens, document offsets and window spans as packing everything at once).

    Args:
        texts: the split's documents: a list of str or any sequence whose slices are lists of str.
        extra_docs: optional pre-tokenized documents ``(insert_before_doc_index, ids)`` spliced
            into the document sequence (used for random-token canaries). Span ``doc`` indices keep
            referring to ``texts``.
        path: raw token file to write (None: in memory).
        chunk_chars: characters of text tokenized per ``encode_batch`` call (about).
        progress: show a progress bar (documents, with tokens so far).
        num_proc: worker processes; 1 = this process. Needs ``path``. A split of fewer than ``2 · min_shard_docs``
            documents is packed in this process (starting workers would cost more); a larger one is cut into shards
            of at most ``max_shard_docs`` documents (at least ``num_proc`` shards), at most ``num_proc + 1`` of them
            in flight, so memory stays bounded by a few shards' texts.
    Raises:
        DataError: see :func:`pack_documents`; also for a span whose document index is outside the split or whose
            character offsets are negative or reversed.
        ValueError: for ``num_proc`` < 1, or > 1 without ``path``.
    """
    from tqdm.auto import tqdm

    if int(num_proc) < 1 or (int(num_proc) > 1 and path is None):
        raise ValueError(f"num_proc={num_proc}: expected an integer >= 1 (> 1 only with a path to write)")
    n = len(texts)
    eos = tok.token_to_id("<|endoftext|>")
    dtype = token_dtype(tok.get_vocab_size())
    writer = _StreamWriter(eos, block_size, dtype, path)
    has_spans = char_spans is not None and len(char_spans) > 0
    if has_spans:
        _check_char_spans(char_spans, n, split)
        char_spans = char_spans.sort_values("doc", kind="stable")
    extra = sorted(extra_docs or [], key=lambda e: e[0])
    bar = tqdm(total=n, desc=f"tokenizing {split}", unit="doc", disable=not progress, leave=False)
    try:
        n_shards = 1 if num_proc == 1 or n < 2 * min_shard_docs else max(num_proc, -(-n // max(max_shard_docs, 1)))
        bounds = shard_bounds(n, n_shards)
        if len(bounds) <= 2:
            _pack_range(tok, texts, char_spans if has_spans else None, extra, writer, chunk_chars, bar)
        else:
            _pack_sharded(
                tok, texts, char_spans if has_spans else None, extra, writer, bounds, chunk_chars, bar, int(num_proc)
            )
        return writer.finish(split)
    finally:
        writer.close()
        bar.close()


def _pack_sharded(
    tok, texts, char_spans, extra, writer: _StreamWriter, bounds, chunk_chars: int, bar, num_proc: int
) -> None:
    """Run :func:`pack_part` on each shard in ``num_proc`` worker processes (spawned: no forked tokenizer threads),
    at most ``num_proc + 1`` shards in flight, and append the parts to ``writer`` in shard order.

    Raises:
        RuntimeError: when a worker process dies (e.g. a script without an ``if __name__ == "__main__":`` guard).
    """
    import multiprocessing as mp
    from collections import deque
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    tok_json = tok.to_str()
    k = len(bounds) - 1
    pending: deque = deque()
    nxt = 0
    try:
        with ProcessPoolExecutor(max_workers=num_proc, mp_context=mp.get_context("spawn")) as pool:
            while nxt < k or pending:
                while nxt < k and len(pending) < num_proc + 1:
                    texts_i, sub, mine = shard_inputs(texts, char_spans, extra, bounds, nxt)
                    part = f"{writer.path}.part{nxt}"
                    args = (tok_json, texts_i, sub, mine, writer.block_size, writer.dtype.str, part, chunk_chars)
                    pending.append((int(bounds[nxt]), int(bounds[nxt + 1]), part, pool.submit(pack_part, *args)))
                    nxt += 1
                a, b, part, fut = pending[0]
                try:
                    state = fut.result()
                except BrokenProcessPool as e:
                    raise RuntimeError(
                        f"data.num_proc={num_proc}: a worker process died ({e}); run from a script with an "
                        "`if __name__ == '__main__':` guard, or use data.num_proc=1"
                    ) from None
                writer.append_part(Path(part), state, a)
                pending.popleft()
                Path(part).unlink()
                bar.update(b - a)
                bar.set_postfix_str(f"{writer.n:,} tokens", refresh=False)
    finally:
        for *_, part, _fut in pending:
            Path(part).unlink(missing_ok=True)
