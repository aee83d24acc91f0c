"""The corpus every data source produces, before tokenization.

A :class:`Corpus` holds raw documents per split plus, optionally, character spans of entity
mentions and attribute values inside them. Sources (synthetic generator, local text files,
the Hugging Face hub) build one; :mod:`densitylab.data.packing` turns it into token windows.

A split's documents are a ``list[str]`` (the synthetic corpus) or an :class:`ArrowTexts`: a lazy, read-only
sequence of strings over an Arrow column that stays memory-mapped from disk (local text files and the hub), so
that a corpus of hundreds of megabytes is never held as Python strings all at once.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

#: Column layout of a span table (one row per span, character offsets, ``end`` exclusive).
SPAN_COLUMNS = ("doc", "start", "end", "kind", "entity", "value")

#: Split names. ``train`` is trained on; ``heldout`` never is (val loss, probes);
#: ``unfamiliar`` holds documents about entities with zero training exposures (probes only).
SPLITS = ("train", "heldout", "unfamiliar")


def empty_spans() -> pd.DataFrame:
    """Return an empty span table with the columns and dtypes of :data:`SPAN_COLUMNS`."""
    return pd.DataFrame(
        {
            "doc": pd.Series([], dtype="int64"),
            "start": pd.Series([], dtype="int64"),
            "end": pd.Series([], dtype="int64"),
            "kind": pd.Series([], dtype="string"),
            "entity": pd.Series([], dtype="int64"),
            "value": pd.Series([], dtype="string"),
        }
    )


def _open_arrow_table(path: str) -> pa.Table:
    """The Arrow IPC file (or stream, as ``datasets`` writes its cache) ``path``, memory-mapped: zero-copy."""
    source = pa.memory_map(path, "r")
    try:
        return pa.ipc.open_file(source).read_all()
    except pa.ArrowInvalid:
        source.seek(0)
        return pa.ipc.open_stream(source).read_all()


class ArrowTexts(Sequence):
    """A lazy, read-only sequence of documents (``str``) over an Arrow string column, e.g. one memory-mapped from
    disk, optionally restricted to some of its rows.

    It behaves like the ``list[str]`` it stands for: ``len()``; ``texts[i]`` (negative ``i`` counts from the end)
    is a ``str``; ``texts[a:b]`` (any step) is a ``list[str]`` holding only that slice; iteration converts
    :attr:`batch_size` documents at a time (one ``to_pylist`` per batch, no per-document call into Arrow);
    ``==`` compares element-wise with any sequence of strings. Nothing but the documents asked for ever becomes
    Python strings; :meth:`n_chars` and :meth:`char_lengths` are computed in Arrow.

    Args:
        values: a ``pyarrow`` ``Array`` or ``ChunkedArray`` of type ``string`` or ``large_string`` (``string_view``
            is cast to ``large_string``, a copy), e.g. ``datasets.Dataset.data.column(name)``, which stays
            memory-mapped from the ``datasets`` cache.
        index: ``None`` (every row, in order) or a 1-D array of row numbers into ``values`` (integers; in
            ``[0, len(values))``; any order, repeats allowed): the documents, in this order. Rows must not be null
            (a null row reads as ``None``).

    Raises:
        TypeError: if ``values`` is not an Arrow string array.
        IndexError: if ``index`` holds a row number outside ``[0, len(values))``.
    """

    #: Documents converted to Python strings at a time while iterating.
    batch_size: int = 1024

    __hash__ = None  # mutable-sequence-like equality, as a list

    def __init__(self, values: pa.Array | pa.ChunkedArray, index: np.ndarray | Sequence[int] | None = None) -> None:
        if isinstance(values, pa.ChunkedArray):
            chunks = list(values.chunks)
            typ = values.type
        elif isinstance(values, pa.Array):
            chunks, typ = [values], values.type
        else:
            raise TypeError(f"ArrowTexts needs a pyarrow Array or ChunkedArray of strings, not {type(values).__name__}")
        if pa.types.is_string_view(typ):
            chunks, typ = [c.cast(pa.large_string()) for c in chunks], pa.large_string()
        if not (pa.types.is_string(typ) or pa.types.is_large_string(typ)):
            raise TypeError(f"ArrowTexts needs an Arrow string column: got type {typ}")
        self._chunks = [c for c in chunks if len(c)]
        lengths = np.array([len(c) for c in self._chunks], dtype=np.int64)
        self._starts = np.zeros(len(self._chunks) + 1, dtype=np.int64)  # chunk c holds rows [starts[c], starts[c+1])
        np.cumsum(lengths, out=self._starts[1:])
        self._n_rows = int(self._starts[-1])
        self._lo = 0  # without an index: documents are rows [lo, lo + n)
        self._files: tuple[tuple[str, ...], str] | None = None  # (paths, column) when opened by open_arrow
        if index is None:
            self._index = None
            self._n = self._n_rows
        else:
            idx = np.asarray(index)
            if idx.ndim != 1 or not (np.issubdtype(idx.dtype, np.integer) or len(idx) == 0):
                raise IndexError(
                    f"ArrowTexts index must be a 1-D array of integers: got {idx.dtype} of shape {idx.shape}"
                )
            if len(idx) and (int(idx.min()) < 0 or int(idx.max()) >= self._n_rows):
                raise IndexError(f"ArrowTexts index holds row numbers outside [0, {self._n_rows})")
            self._index = idx.astype(self._index_dtype(), copy=False)
            self._n = len(idx)

    def _index_dtype(self) -> type:
        """int32 row numbers (4 bytes per document) when the backing column allows, else int64."""
        return np.int32 if self._n_rows < 2**31 else np.int64

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_strings(cls, texts: Iterable[str], chunk_docs: int = 10_000) -> ArrowTexts:
        """An in-memory ``ArrowTexts`` of ``texts`` (``large_string`` chunks of ``chunk_docs`` documents each, built
        one chunk at a time: a generator of strings is never held as a Python list).

        Raises:
            TypeError: if an element is not a ``str`` (``None`` becomes a null row: drop it with :meth:`nonblank`).
        """
        chunks, buf = [], []
        for t in texts:
            buf.append(t)
            if len(buf) >= chunk_docs:
                chunks.append(pa.array(buf, type=pa.large_string()))
                buf = []
        if buf or not chunks:
            chunks.append(pa.array(buf, type=pa.large_string()))
        return cls(pa.chunked_array(chunks, type=pa.large_string()))

    @classmethod
    def open_arrow(cls, paths: str | Path | Sequence[str | Path], column: str = "text") -> ArrowTexts:
        """The ``column`` of one or more Arrow IPC files (file or stream format, e.g. ``datasets``' cache files),
        memory-mapped read-only and concatenated in order. Pickling reopens the files by path.

        Raises:
            FileNotFoundError: if a file does not exist.
            KeyError: if a file has no column ``column``.
            TypeError: if the column is not a string column.
        """
        paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
        chunks, typ = [], None
        for p in paths:
            table = _open_arrow_table(str(p))
            if column not in table.column_names:
                raise KeyError(f"{str(p)!r} has no column {column!r}: its columns are {table.column_names}")
            col = table.column(column)
            typ = col.type
            chunks.extend(col.chunks)
        out = cls(pa.chunked_array(chunks, type=typ or pa.large_string()))
        out._files = (tuple(str(p) for p in paths), column)
        return out

    def _derive(self, lo: int, n: int, index: np.ndarray | None) -> ArrowTexts:
        out = object.__new__(type(self))
        out.__dict__.update(self.__dict__)
        out._lo, out._n, out._index = lo, n, index
        return out

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        if self._files is not None:  # reopen (memory-map) the files instead of pickling their contents
            state["_chunks"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        if state.get("_chunks") is None and state.get("_files") is not None:
            state["_chunks"] = ArrowTexts.open_arrow(*state["_files"])._chunks
        self.__dict__.update(state)

    # ------------------------------------------------------------------ reading
    def _rows_of(self, start: int, stop: int) -> np.ndarray | tuple[int, int]:
        """Rows of documents ``[start, stop)``: an array, or ``(first, last + 1)`` when contiguous."""
        if self._index is None:
            return self._lo + start, self._lo + stop
        rows = self._index[start:stop]
        if (
            len(rows)
            and int(rows[-1]) - int(rows[0]) == len(rows) - 1
            and (len(rows) == 1 or (np.diff(rows) == 1).all())
        ):
            return int(rows[0]), int(rows[-1]) + 1
        return rows

    def _fetch_range(self, a: int, b: int) -> list[str]:
        out: list[str] = []
        if a >= b:
            return out
        c = int(np.searchsorted(self._starts, a, side="right")) - 1
        while c < len(self._chunks) and self._starts[c] < b:
            s = int(self._starts[c])
            lo, hi = max(a, s) - s, min(b, int(self._starts[c + 1])) - s
            out.extend(self._chunks[c].slice(lo, hi - lo).to_pylist())
            c += 1
        return out

    def _fetch_rows(self, rows: np.ndarray) -> list[str]:
        out: list[str] = []
        if not len(rows):
            return out
        cids = np.searchsorted(self._starts, rows, side="right") - 1
        bounds = [0, *(np.flatnonzero(np.diff(cids)) + 1).tolist(), len(rows)]
        for a, b in zip(bounds[:-1], bounds[1:]):  # one take per run of rows in one chunk (a take never spans chunks)
            c = int(cids[a])
            out.extend(self._chunks[c].take(pa.array(rows[a:b] - self._starts[c])).to_pylist())
        return out

    def _slice(self, start: int, stop: int) -> list[str]:
        rows = self._rows_of(start, stop)
        return self._fetch_range(*rows) if isinstance(rows, tuple) else self._fetch_rows(rows)

    def __len__(self) -> int:
        """Number of documents."""
        return self._n

    def __getitem__(self, key):
        """``texts[i]`` -> ``str`` (negative ``i`` from the end); ``texts[a:b:step]`` -> ``list[str]``.

        Raises:
            IndexError: for an integer outside ``[-len, len)``.
            TypeError: for a key that is neither an integer nor a slice.
        """
        if isinstance(key, slice):
            start, stop, step = key.indices(self._n)
            if step == 1:
                return self._slice(start, max(start, stop))
            positions = np.arange(start, stop, step, dtype=np.int64)
            rows = self._index[positions] if self._index is not None else positions + self._lo
            return self._fetch_rows(rows)
        try:
            i = operator.index(key)
        except TypeError:
            raise TypeError(f"ArrowTexts indices must be integers or slices, not {type(key).__name__}") from None
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError(f"ArrowTexts index {key} out of range for {self._n} documents")
        row = int(self._index[i]) if self._index is not None else self._lo + i
        c = int(np.searchsorted(self._starts, row, side="right")) - 1
        return self._chunks[c][row - int(self._starts[c])].as_py()

    def iter_batches(self, batch_size: int | None = None) -> Iterator[list[str]]:
        """The documents in order as lists of up to ``batch_size`` (default :attr:`batch_size`) strings."""
        bs = int(batch_size or self.batch_size)
        if bs < 1:
            raise ValueError(f"batch_size={batch_size!r}: expected a positive integer")
        for a in range(0, self._n, bs):
            yield self._slice(a, min(a + bs, self._n))

    def __iter__(self) -> Iterator[str]:
        """The documents in order, converted :attr:`batch_size` at a time."""
        for batch in self.iter_batches():
            yield from batch

    def __eq__(self, other) -> bool:
        """Element-wise equality with another sequence of strings (a list, an ``ArrowTexts``); not with a ``str``."""
        if isinstance(other, str) or not isinstance(other, Sequence):
            return NotImplemented
        if len(other) != self._n:
            return False
        bs = self.batch_size
        return all(self._slice(a, min(a + bs, self._n)) == list(other[a : a + bs]) for a in range(0, self._n, bs))

    def __repr__(self) -> str:
        where = f", files={list(self._files[0])}" if self._files else ""
        return f"ArrowTexts({self._n} documents of {self._n_rows} rows{where})"

    # ------------------------------------------------------------------ in Arrow
    def _row_selection(self) -> np.ndarray | tuple[int, int]:
        return self._rows_of(0, self._n) if self._index is not None else (self._lo, self._lo + self._n)

    def _row_char_lengths(self) -> np.ndarray:
        """``(rows,)`` characters of every row of the backing column (nulls 0), one chunk at a time: int32 (4 bytes
        per row) unless a single row holds 2**31 characters or more."""
        out = np.empty(self._n_rows, dtype=np.int32)
        for c, chunk in enumerate(self._chunks):
            part = pc.utf8_length(chunk).fill_null(0).to_numpy()
            if out.dtype == np.int32 and len(part) and int(part.max()) >= 2**31:
                out = out.astype(np.int64)
            out[self._starts[c] : self._starts[c + 1]] = part
        return out

    def char_lengths(self) -> np.ndarray:
        """``(len(self),)`` int64: characters (Unicode code points, as Python's ``len``) of each document, computed
        with ``pyarrow.compute.utf8_length`` (no Python strings)."""
        sel = self._row_selection()
        if isinstance(sel, tuple):
            parts = [np.zeros(0, dtype=np.int64)]
            for c, chunk in enumerate(self._chunks):
                s, e = int(self._starts[c]), int(self._starts[c + 1])
                lo, hi = max(sel[0], s), min(sel[1], e)
                if lo < hi:
                    parts.append(pc.utf8_length(chunk.slice(lo - s, hi - lo)).fill_null(0).to_numpy().astype(np.int64))
            return np.concatenate(parts)
        return self._row_char_lengths()[sel].astype(np.int64)

    def n_chars(self) -> int:
        """Total characters (Unicode code points) of the documents, computed in Arrow (memory: 8 bytes per row of
        the backing column at most, no Python strings)."""
        sel = self._row_selection()
        if isinstance(sel, tuple):
            total = 0
            for c, chunk in enumerate(self._chunks):
                s, e = int(self._starts[c]), int(self._starts[c + 1])
                lo, hi = max(sel[0], s), min(sel[1], e)
                if lo < hi:
                    total += pc.sum(pc.utf8_length(chunk.slice(lo - s, hi - lo))).as_py() or 0
            return int(total)
        lengths, block = self._row_char_lengths(), 1 << 20
        return int(sum(int(lengths[sel[a : a + block]].sum(dtype=np.int64)) for a in range(0, len(sel), block)))

    def view(self, start: int = 0, stop: int | None = None) -> ArrowTexts:
        """Documents ``[start, stop)`` (clamped like a slice, step 1) as an ``ArrowTexts`` sharing this one's data
        (no copy, no Python strings)."""
        start, stop, _ = slice(start, stop).indices(self._n)
        stop = max(start, stop)
        if self._index is None:
            return self._derive(self._lo + start, stop - start, None)
        return self._derive(0, stop - start, self._index[start:stop])

    def nonblank(self) -> ArrowTexts:
        """The documents that are not null, not empty and not whitespace only (Python's ``not d.strip()``:
        ``pyarrow.compute.utf8_is_space`` uses Python's ``str.isspace`` character set), in order, as an
        ``ArrowTexts`` sharing this one's data (memory: the new row index, 4 bytes per document, and one chunk's
        mask at a time)."""

        def keep(chunk: pa.Array) -> np.ndarray:
            k = pc.and_kleene(pc.greater(pc.binary_length(chunk), 0), pc.invert(pc.utf8_is_space(chunk)))
            return k.fill_null(False).to_numpy(zero_copy_only=False)

        dtype = self._index_dtype()
        sel = self._row_selection()
        if isinstance(sel, tuple):  # contiguous rows: one chunk at a time, into one buffer (no concatenation)
            rows, k = np.empty(sel[1] - sel[0], dtype=dtype), 0
            for c, chunk in enumerate(self._chunks):
                s, e = int(self._starts[c]), int(self._starts[c + 1])
                lo, hi = max(sel[0], s), min(sel[1], e)
                if lo < hi:
                    kept = np.flatnonzero(keep(chunk.slice(lo - s, hi - lo)))
                    rows[k : k + len(kept)] = kept + lo
                    k += len(kept)
            if k == self._n and self._index is None:
                return self._derive(self._lo, self._n, None)
            rows = rows[:k].copy() if 2 * k < len(rows) else rows[:k]  # (a view keeps the dropped rows' 4 bytes)
        else:
            mask = np.concatenate([np.zeros(0, dtype=bool), *(keep(c) for c in self._chunks)])
            rows = sel[mask[sel]]
        return self._derive(0, len(rows), rows.astype(dtype, copy=False))


@dataclass
class Corpus:
    """Raw documents per split, with optional entity/attribute spans and ground-truth tables.

    Attributes:
        texts: split name (one of :data:`SPLITS`) -> the split's documents: a ``list[str]`` or an
            :class:`ArrowTexts` (a lazy, memory-mapped sequence of ``str``; slicing it gives a ``list[str]``, so
            consumers read it in slices or by iteration rather than converting it whole). ``train`` and
            ``heldout`` are required; ``unfamiliar`` is optional (synthetic data only).
        spans: split name -> span table with columns :data:`SPAN_COLUMNS`: ``doc`` (index into
            ``texts[split]``), ``start``/``end`` (character offsets, end exclusive), ``kind``
            (``"name"`` for an entity mention, or an attribute name such as ``"birth_city"``),
            ``entity`` (integer entity id the span belongs to), ``value`` (the span's text).
            Missing split = no spans.
        entities: entity table (one row per entity; columns at least ``entity_id`` (int) and
            ``entity`` (str, the unique display name)), or ``None`` when the source has none.
        ground_truth: table name -> DataFrame, written to ``ground_truth/{name}.parquet`` in the
            run folder by the data module.
        name: short human-readable description of the source (for logs).
        tokenizer_texts: documents a trained tokenizer learns from instead of ``texts["train"]``, or
            ``None`` (the default: the training split). The counterbalanced synthetic corpus
            (``rank_seed``) sets it to one rank-independent held-out biography per person, so that every
            rank permutation of one corpus seed gets the same tokenizer.
    """

    texts: dict[str, list[str] | ArrowTexts]
    spans: dict[str, pd.DataFrame] = field(default_factory=dict)
    entities: pd.DataFrame | None = None
    ground_truth: dict[str, pd.DataFrame] = field(default_factory=dict)
    name: str = "corpus"
    tokenizer_texts: list[str] | None = None

    def __post_init__(self) -> None:
        for split in ("train", "heldout"):
            if split not in self.texts:
                raise ValueError(f"Corpus is missing split {split!r}; expected splits {SPLITS}")
        for split in self.texts:
            if split not in SPLITS:
                raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")

    def spans_for(self, split: str) -> pd.DataFrame:
        """Span table of ``split`` (empty table when the source recorded none)."""
        return self.spans.get(split, empty_spans())

    def n_chars(self, split: str = "train") -> int:
        """Total characters (Unicode code points) in ``split`` (0 when the split is absent); computed in Arrow for an
        :class:`ArrowTexts`."""
        texts = self.texts.get(split, [])
        if isinstance(texts, ArrowTexts):
            return texts.n_chars()
        return sum(len(t) for t in texts)
