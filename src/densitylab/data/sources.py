"""Data sources: each turns its configuration into a :class:`~densitylab.data.corpus.Corpus`.

The ``data/source`` config group (``data.source``, built by Hydra from its ``_target_``) picks one:

- :class:`SyntheticSource` (``data/source=synthetic``): the embedded synthetic familiarity corpus (no
  network, deterministic).
- :class:`TextSource` (``data/source=text``): local ``.txt`` / ``.jsonl`` / ``.parquet`` files through
  ``datasets.load_dataset``.
- :class:`HubSource` (``data/source=hub``): any Hugging Face hub dataset id (needs network), streamed so
  that only the documents used are downloaded, and written in chunks to an Arrow file in the cache (bounded
  memory); ``data_files`` streams local files through the same path (``name=json data_files=PATH``, offline).

Local and hub documents come back as :class:`~densitylab.data.corpus.ArrowTexts`: memory-mapped Arrow columns,
never a whole corpus of Python strings.

Any other class with ``fingerprint()`` and ``load(progress)`` (:class:`Source`) works as well:
``data.source._target_=my.module.MySource``. Settings' defaults live in ``conf/data/source/*.yaml``
(``tests/test_data_config.py`` checks that the Python defaults below equal them).

Every source validates its input up front and raises a one-line :class:`~densitylab.errors.DataError`
(or :class:`~densitylab.errors.HubUnreachableError`) naming the bad value and what was expected.
``fingerprint()`` returns a JSON-able dict that changes whenever the produced corpus would change;
it keys the tokenized-data cache.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import math
import os
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar, Protocol, runtime_checkable

from densitylab.data.corpus import ArrowTexts, Corpus
from densitylab.errors import ConfigError, DataError, DensitylabError, HubUnreachableError

log = logging.getLogger(__name__)

#: A ``.txt`` file read with ``sample_by=paragraph`` that is one document of at least this many lines (no blank
#: line in it: e.g. one verse per line) gets a warning suggesting ``data.source.sample_by=line``.
SINGLE_DOCUMENT_MIN_LINES = 10

#: Documents a :class:`HubSource` holds in memory at a time while writing its stream to disk.
HUB_CHUNK_DOCS = 10_000

#: Documents per batch when a ``datasets`` column must be decoded in Python (a ``Json`` column of mixed types).
DECODE_BATCH_DOCS = 10_000

TEXT_SUFFIXES = {
    ".txt": "text",
    ".text": "text",
    ".md": "text",
    ".jsonl": "json",
    ".json": "json",
    ".parquet": "parquet",
}


@runtime_checkable
class Source(Protocol):
    """What the data module needs of a source (``data.source``)."""

    def fingerprint(self) -> dict:
        """JSON-able dict that changes whenever the corpus :meth:`load` returns would change (no heavy work)."""
        ...

    def load(self, progress: bool = False) -> Corpus:
        """Build the corpus (``train`` and ``heldout`` splits at least)."""
        ...


def _heldout_count(n_docs: int, fraction: float) -> int:
    return min(n_docs - 1, max(1, math.ceil(n_docs * fraction)))


def _blank(d) -> bool:
    return not isinstance(d, str) or not d or d.isspace()


def split_documents(docs: Sequence[str], heldout_fraction: float) -> tuple[Sequence[str], Sequence[str]]:
    """Split documents into (train, heldout): the **last** ``heldout_fraction`` of the documents are
    held out (contiguous, like nanoGPT's tail split, so held-out text never leaks through overlap).
    Null, empty and whitespace-only documents are dropped first. A single document is cut at the line
    break nearest to ``(1 - heldout_fraction)`` of its length (characters).

    ``docs`` is a ``list[str]`` (-> two lists) or an :class:`~densitylab.data.corpus.ArrowTexts` (-> two
    ``ArrowTexts`` views of it: no copy, no Python strings, except the one document of the single-document cut).

    Raises:
        ConfigError: if ``heldout_fraction`` is outside (0, 1).
        DataError: if there is no text at all.
    """
    if not 0.0 < heldout_fraction < 1.0:
        raise ConfigError(f"data.source.heldout_fraction={heldout_fraction!r}: expected a value in (0, 1)")
    arrow = isinstance(docs, ArrowTexts)
    docs = docs.nonblank() if arrow else [d for d in docs if not _blank(d)]
    if not docs:
        raise DataError("the data holds no text: expected at least one non-empty document")
    if len(docs) == 1:
        text = docs[0]
        cut = int(len(text) * (1.0 - heldout_fraction))
        nl = text.rfind("\n", 0, cut)
        cut = nl + 1 if nl > 0 else cut
        if arrow:
            return ArrowTexts.from_strings([text[:cut]]), ArrowTexts.from_strings([text[cut:]])
        return [text[:cut]], [text[cut:]]
    n = len(docs)
    k = _heldout_count(n, heldout_fraction)
    if arrow:
        return docs.view(0, n - k), docs.view(n - k, n)
    return docs[:-k], docs[-k:]


@dataclass
class SyntheticSource:
    """The synthetic familiarity corpus (design §3): bioS-style biographies with Zipf exposures.

    See :func:`densitylab.data.synthetic.generate_synthetic` for the meaning of each field. ``seed`` is
    the corpus seed (``conf/data/source/synthetic.yaml`` fixes it at 0, so the run seed changes shuffling
    and canaries but not the corpus). ``rank_seed`` (None = the one corpus of ``seed``; an integer = the
    counterbalanced corpus of that rank permutation, same people and tokenizer) is normally injected by the
    data module from ``data.rank_seed``; ``latin_square`` (None, or a mapping of
    :class:`~densitylab.data.synthetic.ranks.LatinSquare` fields) needs an integer ``rank_seed``, which is
    checked when the source is used (:meth:`check`, :meth:`fingerprint`, :meth:`load`), not at
    construction, so that ``data.rank_seed`` can supply it.

    Raises:
        ConfigError: on an invalid generator argument (at construction), one line naming the value.
    """

    n_people: int = 2000
    unfamiliar_frac: float = 0.1
    zipf_exponent: float = 1.0
    max_docs: int = 1000
    min_docs: int = 1
    heldout_docs_per_person: int = 1
    comentions: tuple[int, int] = (1, 2)
    seed: int = 0
    rank_seed: int | None = None
    latin_square: dict | None = None

    def __post_init__(self) -> None:
        from densitylab.data.synthetic.ranks import LatinSquare

        if isinstance(self.comentions, list):  # a YAML list
            self.comentions = tuple(self.comentions)
        if isinstance(self.latin_square, LatinSquare):  # keep a plain dict (as from YAML)
            self.latin_square = self.latin_square.as_dict()
        self._check(need_rank_seed=False)

    def _args(self) -> dict:
        return {**asdict(self), "comentions": tuple(self.comentions)}

    def _check(self, need_rank_seed: bool = True):
        """The checked Latin square (or None); ConfigError on a bad argument. ``need_rank_seed=False`` (at
        construction) lets a square wait for its rank seed."""
        from densitylab.data.synthetic import check_synthetic_args

        args = self._args()
        if not need_rank_seed and args["rank_seed"] is None and args["latin_square"] is not None:
            args["rank_seed"] = 0  # (a placeholder: data.rank_seed may still supply it; check() insists)
        try:
            return check_synthetic_args(**args)
        except ValueError as e:
            raise ConfigError(f"data.source: {e}") from None

    def check(self) -> None:
        """Check every argument, including that a Latin square comes with an integer ``rank_seed``.

        Raises:
            ConfigError: one line naming the bad value and what was expected.
        """
        self._check()

    def fingerprint(self) -> dict:
        """Every generator argument (the corpus is a pure function of them). ``rank_seed`` and
        ``latin_square`` (in full, defaults filled in) enter only when set, so the default corpus keeps
        its fingerprint (and cached data) from before they existed.

        Raises:
            ConfigError: see :meth:`check`.
        """
        square = self._check()
        d = asdict(self)
        d["comentions"] = list(d["comentions"])
        for key in ("rank_seed", "latin_square"):
            if d[key] is None:
                del d[key]
        if square is not None:
            d["latin_square"] = square.as_dict()
        return {"source": "synthetic", "generator_version": 2, **d}  # 2: ground truth exposure_{split}

    def load(self, progress: bool = False) -> Corpus:
        """Generate the corpus. Raises ConfigError on invalid generator arguments."""
        from densitylab.data.synthetic import generate_synthetic

        self._check()
        try:
            return generate_synthetic(**self._args(), progress=progress)
        except ValueError as e:
            raise ConfigError(f"data.source: {e}") from None


def check_text_file(path: str | os.PathLike) -> str:
    """Validate one input file and return its ``datasets`` builder name (text, json or parquet).

    Raises:
        DataError: if the file does not exist, is empty, has an unsupported suffix, or (for text
            and JSON lines) is not UTF-8 text.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(
            f"data.source.files: {str(path)!r} does not exist: expected a UTF-8 .txt, .jsonl or .parquet file"
        )
    if not p.is_file():
        raise DataError(
            f"data.source.files: {str(path)!r} is not a file: expected a UTF-8 .txt, .jsonl or .parquet file"
        )
    builder = TEXT_SUFFIXES.get(p.suffix.lower())
    if builder is None:
        raise DataError(
            f"data.source.files: {str(path)!r} has suffix {p.suffix!r}: expected one of {sorted(TEXT_SUFFIXES)}"
        )
    if p.stat().st_size == 0:
        raise DataError(f"data.source.files: {str(path)!r} is empty: expected a file with text in it")
    if builder != "parquet":
        with open(p, "rb") as f:
            head = f.read(1 << 16)
        if b"\x00" in head:
            raise DataError(f"data.source.files: {str(path)!r} is a binary file (NUL bytes): expected UTF-8 text")
        try:
            head.decode("utf-8")
        except UnicodeDecodeError as e:
            if e.start < len(head) - 4:  # not merely a multi-byte character cut at the read boundary
                raise DataError(
                    f"data.source.files: {str(path)!r} is not UTF-8 text (bad byte at offset {e.start}): "
                    "expected UTF-8 text"
                ) from None
    return builder


def paragraph_lines(path: str | os.PathLike) -> int | None:
    """The non-blank lines of a text file that ``sample_by=paragraph`` reads as **one** document, or None when it
    has more than one paragraph.

    ``datasets``' text builder splits paragraphs at an empty line (``"\\n\\n"``, universal newlines); so does this
    scan, which stops at the second paragraph (a file of many paragraphs costs one paragraph's read).
    """
    paragraphs, lines, current = 0, 0, 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line == "\n":
                if current:
                    paragraphs, lines, current = paragraphs + 1, current, 0
                    if paragraphs > 1:
                        return None
                continue
            if line.strip():
                current += 1
    if current:
        paragraphs, lines = paragraphs + 1, current
    return lines if paragraphs == 1 else None


def warn_single_documents(source) -> list[str]:
    """Log one warning line per ``.txt`` file of a :class:`TextSource` with ``sample_by=paragraph`` that is a single
    document of at least :data:`SINGLE_DOCUMENT_MIN_LINES` lines (no blank line: one verse or sentence per line),
    suggesting ``data.source.sample_by=line``; a single document gives one held-out cut and no document
    boundaries to train on. Other sources, other ``sample_by`` and unreadable files are left to :meth:`TextSource.load`.

    Returns:
        The warned files' paths.
    """
    if not isinstance(source, TextSource) or source.sample_by != "paragraph":
        return []
    warned = []
    try:
        files = source._files()
    except ConfigError:
        return []
    for f in files:
        if TEXT_SUFFIXES.get(Path(f).suffix.lower()) != "text" or not Path(f).is_file():
            continue
        n = paragraph_lines(f)
        if n is not None and n >= SINGLE_DOCUMENT_MIN_LINES:
            log.warning(
                "data.source.files: %s is one document of %d lines under data.source.sample_by=paragraph (no blank "
                "line in it); for one document per line set data.source.sample_by=line",
                f,
                n,
            )
            warned.append(f)
    return warned


@dataclass
class TextSource:
    """Local text files through ``datasets.load_dataset``.

    Attributes:
        files: one path or a list of paths, all of one kind (.txt, .jsonl or .parquet).
        text_field: column holding the text in .jsonl / .parquet files.
        sample_by: for .txt files, what one document is: ``paragraph`` (blocks separated by a blank
            line; default), ``line`` (blank lines dropped) or ``document`` (the whole file).
        heldout_fraction: fraction of documents held out (the last ones; see :func:`split_documents`).
        cache_dir: ``datasets`` cache folder (None = its default).
    """

    files: list[str] | str
    text_field: str = "text"
    sample_by: str = "paragraph"
    heldout_fraction: float = 0.1
    cache_dir: str | None = None

    def _files(self) -> list[str]:
        files = [self.files] if isinstance(self.files, (str, os.PathLike)) else list(self.files or [])
        if not files:
            raise ConfigError(
                "data.source.files is not set: expected data.source.files=PATH or data.source.files=[PATH1,PATH2]"
            )
        return [str(Path(f).expanduser().resolve()) for f in files]

    def fingerprint(self) -> dict:
        """Paths with their sizes and modification times, plus the reading options.

        Raises:
            DataError: see :func:`check_text_file`.
        """
        files = self._files()
        builders = {check_text_file(f) for f in files}
        if len(builders) > 1:
            raise DataError(f"data.source.files mixes file kinds {sorted(builders)}: expected files of one kind")
        stats = [(f, os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files]
        return {
            "source": "text",
            "files": stats,
            "text_field": self.text_field,
            "sample_by": self.sample_by,
            "heldout_fraction": self.heldout_fraction,
        }

    def load(self, progress: bool = False) -> Corpus:
        """Read the files and split them into train / heldout documents (see :func:`split_documents`).

        The documents are the non-null, non-blank strings of the text column in file order (``sample_by=line``:
        one per non-blank line), as :class:`~densitylab.data.corpus.ArrowTexts` views of the ``datasets`` cache,
        memory-mapped: memory does not grow with the corpus as Python strings would.

        Raises:
            DataError: for missing, empty, binary or unreadable files, a missing ``text_field``, or no text.
            ConfigError: for an unknown ``sample_by``.
        """
        import datasets

        files = self._files()
        builder = check_text_file(files[0])
        for f in files[1:]:
            check_text_file(f)
        if self.sample_by not in ("paragraph", "line", "document"):
            raise ConfigError(f"data.source.sample_by={self.sample_by!r}: expected paragraph, line or document")
        kwargs = {"sample_by": self.sample_by} if builder == "text" else {}
        if not progress:
            datasets.disable_progress_bars()
        try:
            ds = datasets.load_dataset(builder, data_files=files, split="train", cache_dir=self.cache_dir, **kwargs)
        except Exception as e:  # datasets wraps decoding/parsing errors in many types
            raise DataError(
                f"data.source.files: could not read {files} as {builder} ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''})"
            ) from None
        field = "text" if builder == "text" else self.text_field
        if field not in ds.column_names:
            raise DataError(
                f"data.source.text_field={field!r} is not a column of {files}: expected one of {ds.column_names}"
            )
        # the non-null, non-blank strings, in file order, as a view of the memory-mapped datasets cache
        train, heldout = split_documents(dataset_texts(ds, field), self.heldout_fraction)
        return Corpus(
            texts={"train": train, "heldout": heldout}, name=f"text({', '.join(Path(f).name for f in files)})"
        )


def dataset_texts(ds, field: str) -> ArrowTexts:
    """The string values of column ``field`` of a ``datasets.Dataset`` as an :class:`ArrowTexts` over its
    memory-mapped cache (no Python strings); null rows read as ``None`` (drop them with
    :meth:`ArrowTexts.nonblank`). A column of another type gives no documents, except a ``Json`` column (JSON
    lines of mixed types), whose ``str`` values are decoded :data:`DECODE_BATCH_DOCS` rows at a time into an
    in-memory Arrow column.

    Raises:
        KeyError: if ``field`` is not a column of ``ds``.
    """
    import datasets
    import pyarrow as pa

    feature = ds.features[field]
    if isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
        index = ds._indices.column(0).to_numpy() if ds._indices is not None else None  # (a select/shuffle view)
        texts = ArrowTexts(ds.data.column(field), index)  # the dataset's own memory map (not a second one)
        files = [f["filename"] for f in ds.cache_files]
        if files and index is None and len(texts) == len(ds):
            texts._files = (tuple(files), field)  # pickling reopens the cache files by path
        return texts
    if isinstance(feature, datasets.Value):  # int, float, bool...: no str value at all
        return ArrowTexts(pa.array([], type=pa.large_string()))
    batches = ds.select_columns([field]).iter(batch_size=DECODE_BATCH_DOCS)
    return ArrowTexts.from_strings(t for b in batches for t in b[field] if isinstance(t, str))


def write_texts(
    values: Iterable,
    path: str | os.PathLike,
    chunk_docs: int = HUB_CHUNK_DOCS,
    bar=None,
) -> int:
    """Write the documents of ``values`` to the Arrow IPC file ``path`` (one ``large_string`` column ``text``),
    ``chunk_docs`` documents (one record batch) at a time, so memory stays bounded by one chunk; values that are
    not a ``str``, or are empty or whitespace only, are skipped. The file is written under a temporary name in
    ``path``'s folder and renamed into place when complete (a reader never sees half a file).

    Args:
        values: the documents, e.g. a generator over a streamed dataset.
        path: the file to write (its folder is created).
        chunk_docs: documents per chunk (record batch), at least 1.
        bar: a ``tqdm`` bar or ``None``: advanced by the values read (documents), its postfix showing the
            documents kept and their characters.

    Returns:
        The number of documents written.

    Raises:
        ValueError: if ``chunk_docs`` is not a positive integer. Errors raised by ``values`` propagate (the
        temporary file is removed).
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    if not isinstance(chunk_docs, int) or isinstance(chunk_docs, bool) or chunk_docs < 1:
        raise ValueError(f"chunk_docs={chunk_docs!r}: expected a positive integer")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    schema = pa.schema([("text", pa.large_string())])
    kept = chars = read = shown = 0
    buf: list[str] = []
    try:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:

            def flush() -> None:
                nonlocal kept, chars, shown
                if buf:
                    arr = pa.array(buf, type=pa.large_string())
                    writer.write_batch(pa.record_batch([arr], schema=schema))
                    kept += len(buf)
                    chars += int(pc.sum(pc.utf8_length(arr)).as_py() or 0)
                    buf.clear()
                if bar is not None:
                    bar.update(read - shown)
                    shown = read
                    bar.set_postfix(kept=f"{kept:,}", chars=f"{chars:,}")

            for v in values:
                read += 1
                if not _blank(v):
                    buf.append(v)
                    if len(buf) >= chunk_docs:
                        flush()
            flush()
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return kept


@dataclass
class HubSource:
    """A Hugging Face hub dataset (or local files through a ``datasets`` builder), streamed: only the documents
    used are downloaded, and they are written :attr:`chunk_docs` at a time to an Arrow file in the cache, so
    memory stays bounded whatever ``max_docs`` is; the corpus reads them back memory-mapped
    (:class:`~densitylab.data.corpus.ArrowTexts`). Null, empty and whitespace-only documents are dropped.

    Attributes:
        name: hub dataset id, e.g. ``roneneldan/TinyStories``; or a local dataset folder; or a ``datasets``
            builder (``json``, ``text``, ``parquet``, ``csv``) with ``data_files``.
        config: dataset configuration name (None = default).
        split: training split name.
        heldout_split: held-out split name; when absent (or None), the last ``heldout_fraction`` of the
            training documents are held out.
        text_field: column holding the text.
        max_docs: rows of the training split to read (None = all; mind the download size).
        max_heldout_docs: rows of the held-out split to read.
        heldout_fraction: used only when there is no held-out split.
        cache_dir: ``datasets`` cache folder (None = its default); the streamed documents are written under
            ``{cache_dir}/densitylab_streams/``.
        revision: the dataset's git revision on the hub (a commit sha, branch or tag; None = the default branch,
            which can change). Part of :meth:`fingerprint`, so it keys the tokenized-data cache: pin a commit sha
            for a reproducible corpus.
        data_files: local (or ``hf://``) files, a glob, a list of them, or a mapping split -> files, passed to
            ``datasets.load_dataset``; with local ones (or a local folder as ``name``) no hub check is made, so e.g.
            ``name=json data_files=corpus.jsonl`` streams a local JSON-lines file offline. Local files enter
            :meth:`fingerprint` with their sizes and modification times.

    Raises:
        ConfigError: for a ``revision`` that is not a string, or ``data_files`` that are not paths (at construction).
    """

    name: str
    config: str | None = None
    split: str = "train"
    heldout_split: str | None = "validation"
    text_field: str = "text"
    max_docs: int | None = 100_000
    max_heldout_docs: int | None = 2_000
    heldout_fraction: float = 0.05
    cache_dir: str | None = None
    revision: str | None = None
    data_files: str | list | dict | None = None

    #: Documents held in memory at a time while writing a stream to disk (not a setting: not in the fingerprint).
    chunk_docs: ClassVar[int] = HUB_CHUNK_DOCS

    def __post_init__(self) -> None:
        if self.revision is not None and not isinstance(self.revision, str):
            raise ConfigError(
                f"data.source.revision={self.revision!r}: expected a string (a commit sha, branch or tag; quote a "
                "numeric sha in YAML) or null"
            )
        if self.data_files is not None:
            self._data_file_patterns()  # type check at construction
        for key in ("max_docs", "max_heldout_docs"):
            v = getattr(self, key)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise ConfigError(f"data.source.{key}={v!r}: expected a positive integer or null (all)")

    # ------------------------------------------------------------------ local files
    def _data_file_patterns(self) -> dict[str | None, list[str]]:
        """``data_files`` as split (None for a flat list) -> patterns; ConfigError for another type."""
        df = self.data_files
        expected = "expected a path, a glob, a list of them, or a mapping split -> paths"
        if isinstance(df, (str, os.PathLike)):
            return {None: [str(df)]}
        if isinstance(df, (list, tuple)) and df and all(isinstance(f, (str, os.PathLike)) for f in df):
            return {None: [str(f) for f in df]}
        if isinstance(df, dict) and df:
            out = {}
            for k, v in df.items():
                v = [v] if isinstance(v, (str, os.PathLike)) else v
                if not isinstance(v, (list, tuple)) or not v or not all(isinstance(f, (str, os.PathLike)) for f in v):
                    raise ConfigError(f"data.source.data_files.{k}={v!r}: {expected}")
                out[str(k)] = [str(f) for f in v]
            return out
        raise ConfigError(f"data.source.data_files={df!r}: {expected}")

    @staticmethod
    def _is_remote(pattern: str) -> bool:
        return "://" in pattern

    def _resolved_data_files(self) -> tuple[str | list | dict | None, dict]:
        """(``data_files`` with local paths made absolute, for ``datasets``; the fingerprint's view of them:
        every matched local file with its size and modification time).

        Raises:
            DataError: if a local path does not exist or a local glob matches no file.
        """
        if self.data_files is None:
            return None, {}
        patterns = self._data_file_patterns()
        resolved: dict[str | None, list[str]] = {}
        stats: dict[str, list] = {}
        for key, pats in patterns.items():
            where = "data.source.data_files" + (f".{key}" if key is not None else "")
            resolved[key], stats[str(key)] = [], []
            for pat in pats:
                if self._is_remote(pat):
                    resolved[key].append(pat)
                    stats[str(key)].append(pat)
                    continue
                full = str(Path(pat).expanduser().absolute())
                matches = sorted(glob.glob(full)) if glob.has_magic(full) else ([full] if Path(full).exists() else [])
                matches = [m for m in matches if Path(m).is_file()]
                if not matches:
                    raise DataError(
                        f"{where}: {pat!r} matches no file: expected an existing local file (or glob) with text"
                    )
                resolved[key].append(full)
                stats[str(key)].extend((m, os.stat(m).st_size, os.stat(m).st_mtime_ns) for m in matches)
        if None in resolved:
            flat = resolved[None]
            return (flat[0] if len(flat) == 1 else flat), stats
        return resolved, stats

    def _is_local(self) -> bool:
        """Whether the data needs no hub: local ``data_files`` only, or ``name`` a local folder."""
        if self.data_files is not None:
            return not any(self._is_remote(p) for pats in self._data_file_patterns().values() for p in pats)
        return Path(str(self.name)).expanduser().is_dir()

    # ------------------------------------------------------------------ Source
    def fingerprint(self) -> dict:
        """The dataset id, ``revision`` and every reading option (no network access); local ``data_files`` with
        their sizes and modification times.

        Raises:
            ConfigError: if ``name`` is unset.
            DataError: if a local ``data_files`` path matches no file.
        """
        if not self.name:
            raise ConfigError(
                "data.source.name is not set: expected a hub dataset id such as data.source.name=roneneldan/TinyStories"
            )
        d = {"source": "hub", **asdict(self), "cache_dir": None}
        if self.data_files is not None:
            d["data_files"] = self._resolved_data_files()[1]
        return d

    def _check_reachable(self) -> None:
        """Raise HubUnreachableError (one line, at once) when the hub cannot be reached or the id
        does not exist. Local data (local ``data_files``, or ``name`` a local folder) is not checked."""
        if self._is_local():
            return
        from huggingface_hub import HfApi
        from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

        hint = "use data=text data.source.files=PATH to train on local files"
        if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
            raise HubUnreachableError(
                f"data.source.name={self.name!r}: the Hugging Face hub is switched off (HF_HUB_OFFLINE=1); {hint}"
            )
        try:
            HfApi().dataset_info(self.name, revision=self.revision, timeout=10)
        except RevisionNotFoundError:
            raise HubUnreachableError(
                f"data.source.revision={self.revision!r} is not a revision of {self.name!r} on the Hugging Face hub: "
                "expected a commit sha, branch or tag of the dataset (or null)"
            ) from None
        except RepositoryNotFoundError:
            raise HubUnreachableError(
                f"data.source.name={self.name!r} is not a dataset on the Hugging Face hub: expected a hub dataset id "
                "such as roneneldan/TinyStories"
            ) from None
        except Exception as e:
            raise HubUnreachableError(
                f"data.source.name={self.name!r}: cannot reach the Hugging Face hub ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else 'no answer'}); {hint}"
            ) from None

    def stream_dir(self) -> Path:
        """Folder the streamed documents are written to: ``{cache_dir}/densitylab_streams/{key}``, ``key`` hashing
        :meth:`fingerprint` (so a different revision or option never reuses a file)."""
        import datasets

        root = Path(self.cache_dir).expanduser() if self.cache_dir else Path(datasets.config.HF_DATASETS_CACHE)
        key = hashlib.sha256(json.dumps(self.fingerprint(), sort_keys=True, default=str).encode()).hexdigest()[:16]
        return root / "densitylab_streams" / key

    def _stream(self, split: str, data_files):
        import datasets

        kwargs = {"data_files": data_files} if data_files is not None else {}
        if self.revision is not None:
            kwargs["revision"] = self.revision
        return datasets.load_dataset(
            self.name, self.config, split=split, streaming=True, cache_dir=self.cache_dir, **kwargs
        )

    def _values(self, ds, n: int | None):
        """The ``text_field`` of the first ``n`` rows (None = all) of the stream ``ds``."""
        from itertools import islice

        for row in islice(ds, n):
            if self.text_field not in row:
                raise DataError(
                    f"data.source.text_field={self.text_field!r} is not a column of {self.name}: expected one of "
                    f"{sorted(row)}"
                )
            yield row[self.text_field]

    def _take(self, split: str, role: str, n: int | None, data_files, progress: bool) -> ArrowTexts:
        """Stream ``n`` rows of ``split`` to ``{stream_dir}/{role}.arrow``; the kept documents, memory-mapped."""
        from tqdm.auto import tqdm

        path = self.stream_dir() / f"{role}.arrow"
        if path.is_file() and self.data_files is None and not Path(self.name).expanduser().is_dir():
            # a complete earlier stream of the same dataset, revision and options (written by rename): reused, so
            # nodes sharing a cache folder neither download twice nor replace a file another node has mapped
            return ArrowTexts.open_arrow(path)
        ds = self._stream(split, data_files)
        with tqdm(total=n, desc=f"{self.name} {split}", unit=" docs", disable=not progress, leave=False) as bar:
            write_texts(self._values(ds, n), path, chunk_docs=self.chunk_docs, bar=bar)
        return ArrowTexts.open_arrow(path)

    def load(self, progress: bool = False) -> Corpus:
        """Stream the documents (with a progress bar of documents read, and characters kept, when ``progress``),
        write them to disk in chunks, and return them memory-mapped.

        Raises:
            ConfigError: if ``name`` is unset.
            HubUnreachableError: when offline or the id (or revision) is unknown (one line; suggests ``data=text``).
            DataError: when the text field is missing, the training split does not exist, a local ``data_files``
                path matches no file, or there is no text.
        """
        import datasets

        self.fingerprint()
        self._check_reachable()
        data_files, _ = self._resolved_data_files()
        if not progress:
            datasets.disable_progress_bars()
        try:
            train = self._take(self.split, "train", self.max_docs, data_files, progress)
        except ValueError as e:
            if isinstance(e, DensitylabError) or "split" not in str(e).lower():
                raise
            raise DataError(f"data.source.split={self.split!r}: {str(e).splitlines()[0]}") from None
        heldout: ArrowTexts | None = None
        if self.heldout_split:
            try:
                heldout = self._take(self.heldout_split, "heldout", self.max_heldout_docs, data_files, progress)
            except DensitylabError:
                raise
            except (ValueError, KeyError):  # no such split: a tail split of train
                heldout = None
        if heldout is None or not len(heldout):
            train, heldout = split_documents(train, self.heldout_fraction)
        elif not len(train):
            raise DataError(
                f"data.source.split={self.split!r} of {self.name} holds no text: expected at least one non-empty "
                "document"
            )
        return Corpus(texts={"train": train, "heldout": heldout}, name=f"hub({self.name})")
