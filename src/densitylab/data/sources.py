"""Data sources: each turns its configuration into a :class:`~densitylab.data.corpus.Corpus`.

The ``data/source`` config group (``data.source``, built by Hydra from its ``_target_``) picks one:

- :class:`SyntheticSource` (``data/source=synthetic``): the embedded synthetic familiarity corpus (no
  network, deterministic).
- :class:`TextSource` (``data/source=text``): local ``.txt`` / ``.jsonl`` / ``.parquet`` files through
  ``datasets.load_dataset``.
- :class:`HubSource` (``data/source=hub``): any Hugging Face hub dataset id (needs network), streamed so
  that only the documents used are downloaded.

Any other class with ``fingerprint()`` and ``load(progress)`` (:class:`Source`) works as well:
``data.source._target_=my.module.MySource``. Settings' defaults live in ``conf/data/source/*.yaml``
(``tests/test_data_config.py`` checks that the Python defaults below equal them).

Every source validates its input up front and raises a one-line :class:`~densitylab.errors.DataError`
(or :class:`~densitylab.errors.HubUnreachableError`) naming the bad value and what was expected.
``fingerprint()`` returns a JSON-able dict that changes whenever the produced corpus would change;
it keys the tokenized-data cache.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from densitylab.data.corpus import Corpus
from densitylab.errors import ConfigError, DataError, HubUnreachableError

log = logging.getLogger(__name__)

#: A ``.txt`` file read with ``sample_by=paragraph`` that is one document of at least this many lines (no blank
#: line in it: e.g. one verse per line) gets a warning suggesting ``data.source.sample_by=line``.
SINGLE_DOCUMENT_MIN_LINES = 10

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


def split_documents(docs: list[str], heldout_fraction: float) -> tuple[list[str], list[str]]:
    """Split documents into (train, heldout): the **last** ``heldout_fraction`` of the documents are
    held out (contiguous, like nanoGPT's tail split, so held-out text never leaks through overlap).
    A single document is cut at the line break nearest to ``(1 - heldout_fraction)`` of its length.

    Raises:
        ConfigError: if ``heldout_fraction`` is outside (0, 1).
        DataError: if there is no text at all.
    """
    if not 0.0 < heldout_fraction < 1.0:
        raise ConfigError(f"data.source.heldout_fraction={heldout_fraction!r}: expected a value in (0, 1)")
    docs = [d for d in docs if d and not d.isspace()]
    if not docs:
        raise DataError("the data holds no text: expected at least one non-empty document")
    if len(docs) == 1:
        text = docs[0]
        cut = int(len(text) * (1.0 - heldout_fraction))
        nl = text.rfind("\n", 0, cut)
        cut = nl + 1 if nl > 0 else cut
        return [text[:cut]], [text[cut:]]
    k = _heldout_count(len(docs), heldout_fraction)
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
            line; default), ``line`` or ``document`` (the whole file).
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
        """Read the files and split them into train / heldout documents.

        Raises:
            DataError: for missing, empty, binary or unreadable files, or a missing ``text_field``.
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
        docs = [t for t in ds[field] if isinstance(t, str)]
        if builder == "text" and self.sample_by == "line":
            docs = [d for d in docs if d.strip()]
        train, heldout = split_documents(docs, self.heldout_fraction)
        return Corpus(
            texts={"train": train, "heldout": heldout}, name=f"text({', '.join(Path(f).name for f in files)})"
        )


@dataclass
class HubSource:
    """A Hugging Face hub dataset, streamed (only the documents used are downloaded).

    Attributes:
        name: hub dataset id, e.g. ``roneneldan/TinyStories``.
        config: dataset configuration name (None = default).
        split: training split name.
        heldout_split: held-out split name; when absent on the hub (or None), the last
            ``heldout_fraction`` of the training documents are held out.
        text_field: column holding the text.
        max_docs: training documents to take (None = all; mind the download size).
        max_heldout_docs: held-out documents to take.
        heldout_fraction: used only when there is no held-out split.
        cache_dir: ``datasets`` cache folder.
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

    def fingerprint(self) -> dict:
        """The dataset id and every reading option (no network access)."""
        if not self.name:
            raise ConfigError(
                "data.source.name is not set: expected a hub dataset id such as data.source.name=roneneldan/TinyStories"
            )
        return {"source": "hub", **asdict(self), "cache_dir": None}

    def _check_reachable(self) -> None:
        """Raise HubUnreachableError (one line, at once) when the hub cannot be reached or the id
        does not exist."""
        from huggingface_hub import HfApi
        from huggingface_hub.errors import RepositoryNotFoundError

        hint = "use data=text data.source.files=PATH to train on local files"
        if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
            raise HubUnreachableError(
                f"data.source.name={self.name!r}: the Hugging Face hub is switched off (HF_HUB_OFFLINE=1); {hint}"
            )
        try:
            HfApi().dataset_info(self.name, timeout=10)
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

    def load(self, progress: bool = False) -> Corpus:
        """Stream the documents from the hub.

        Raises:
            ConfigError: if ``name`` is unset.
            HubUnreachableError: when offline or the id is unknown (one line; suggests ``data=text``).
            DataError: when the text field is missing.
        """
        from itertools import islice

        import datasets

        self.fingerprint()
        self._check_reachable()

        def take(split: str, n: int | None) -> list[str]:
            ds = datasets.load_dataset(self.name, self.config, split=split, streaming=True, cache_dir=self.cache_dir)
            out = []
            for row in islice(ds, n):
                if self.text_field not in row:
                    raise DataError(
                        f"data.source.text_field={self.text_field!r} is not a column of {self.name}: expected one of "
                        f"{sorted(row)}"
                    )
                out.append(row[self.text_field])
            return out

        train = take(self.split, self.max_docs)
        heldout: list[str] = []
        if self.heldout_split:
            try:
                heldout = take(self.heldout_split, self.max_heldout_docs)
            except (ValueError, KeyError):
                heldout = []
        if not heldout:
            train, heldout = split_documents(train, self.heldout_fraction)
        return Corpus(texts={"train": train, "heldout": heldout}, name=f"hub({self.name})")
