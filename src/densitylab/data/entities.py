"""Entity extraction at data-preparation time: character spans of entity mentions per document.

Extractors (the ``data/entities`` config group, ``data/entities=NAME``; each is a small object with
``method``, ``fingerprint()`` and ``extract(corpus)``, see :class:`EntityExtractor`):

- ``synthetic`` (:class:`SyntheticEntities`; default of ``data=synthetic``): the synthetic generator's
  exact ground truth (its ``kind="name"`` spans).
- ``gazetteer`` (:class:`GazetteerEntities`): a user list of names (``data.entities.path=FILE``, one name
  per line), matched as whole words, case-sensitively, longest name first (so "Caius Marcius" wins over
  "Marcius").
- ``capitalized`` (:class:`CapitalizedEntities`; default of ``data=text`` and ``data=hub``): maximal runs
  of capitalized words (``Rome``, ``Caius Marcius``) that do not start a sentence or a line, have at
  least two letters, are not all caps, and are not in a short stoplist of sentence words (``I``,
  ``God``-style interjections are kept). Known failure modes: misses names at the start of a sentence
  or a verse line and lower-case names; counts capitalized common words inside sentences (``Sir``,
  ``Lord``) and titles as entities; splits "Duke of York" into ``Duke`` and ``York``; treats every
  spelling as its own entity; does not work for scripts without case.
- ``spacy`` (:class:`SpacyEntities`): named entities of a spaCy pipeline (``data.entities.model``,
  default ``en_core_web_sm``), when spaCy and the model are installed (``pip install spacy``).
- ``none`` (:class:`NoEntities`): no entities.

Every extraction function returns ``(spans, entities)``: per split a span table (``kind="name"``;
columns of :data:`densitylab.data.corpus.SPAN_COLUMNS`) and one entity table (``entity_id``,
``entity``) shared by all splits, whose ids number the names in sorted order (stable for the same
corpus).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol, runtime_checkable

import pandas as pd

from densitylab.data.corpus import Corpus, empty_spans
from densitylab.errors import ConfigError

log = logging.getLogger(__name__)

#: spaCy entity labels kept by :class:`SpacyEntities`.
SPACY_LABELS = ("PERSON", "ORG", "GPE", "LOC", "NORP", "FAC", "WORK_OF_ART", "EVENT")

# words that are capitalized inside English sentences without naming anything
_STOP = {
    "I",
    "I'll",
    "I'm",
    "I've",
    "I'd",
    "O",
    "Oh",
    "Ay",
    "Ah",
    "Alas",
    "Nay",
    "Yea",
    "Mr",
    "Mrs",
    "Ms",
    "Dr",
    "St",
    "The",
    "A",
    "An",
    "And",
    "But",
    "Or",
    "If",
    "So",
    "Then",
    "Now",
    "What",
    "Why",
    "How",
    "When",
    "Where",
    "Who",
    "Which",
    "This",
    "That",
    "These",
    "Those",
    "It",
    "He",
    "She",
    "We",
    "They",
    "You",
    "Thou",
    "Thee",
    "My",
    "Our",
    "Your",
    "His",
    "Her",
    "Their",
    "Is",
    "Was",
    "Be",
    "Not",
    "No",
    "Yes",
    "Well",
    "Come",
    "Go",
    "Let",
    "Good",
    "Here",
    "There",
    "Thus",
    "Yet",
    "For",
    "Nor",
    "With",
    "To",
    "In",
    "On",
    "At",
    "Of",
    "By",
    "As",
    "Do",
    "Did",
}
_CAP_RUN = re.compile(r"[A-Z][a-z]+(?:'[a-z]+)?(?:[ \t]+[A-Z][a-z]+(?:'[a-z]+)?)*")


def _starts_sentence(text: str, s: int) -> bool:
    """True when position ``s`` begins a sentence or a line (ignoring spaces, quotes, brackets)."""
    i = s
    while i > 0 and text[i - 1] in " \t'\"‘“([-":
        i -= 1
    return i == 0 or text[i - 1] in ".!?:;\n\r"


def _table(names: list[str]) -> tuple[pd.DataFrame, dict[str, int]]:
    uniq = sorted(set(names))
    ids = {n: i for i, n in enumerate(uniq)}
    return pd.DataFrame({"entity_id": range(len(uniq)), "entity": uniq}), ids


def _spans_frame(rows: list[tuple[int, int, int, str]], ids: dict[str, int]) -> pd.DataFrame:
    if not rows:
        return empty_spans()
    doc, start, end, value = zip(*rows)
    return pd.DataFrame(
        {
            "doc": pd.Series(doc, dtype="int64"),
            "start": pd.Series(start, dtype="int64"),
            "end": pd.Series(end, dtype="int64"),
            "kind": pd.Series(["name"] * len(rows), dtype="string"),
            "entity": pd.Series([ids[v] for v in value], dtype="int64"),
            "value": pd.Series(value, dtype="string"),
        }
    )


def capitalized_mentions(text: str) -> list[tuple[int, int, str]]:
    """Capitalized-span mentions of one document: ``(start, end, name)`` character offsets.

    A run of capitalized words counts when it does not start a sentence or a line (the text before
    it, ignoring quotes and brackets, ends with ``. ! ? : ;``, a line break, or is empty), and its
    leading and trailing stop words (``The``, ``I``, ...) and a possessive ``'s`` are dropped.
    All-caps words never match.
    """
    out = []
    for m in _CAP_RUN.finditer(text):
        s, e = m.start(), m.end()
        if s > 0 and (text[s - 1].isalnum() or text[s - 1] in "'’"):
            continue  # inside a word (e.g. "McDonald" tail) or after an apostrophe
        words = m.group().split()
        # drop stop words from the front and the back of the run
        while words and words[0] in _STOP:
            s = text.index(words[0], s) + len(words[0])
            s += len(text[s:]) - len(text[s:].lstrip())
            words = words[1:]
        while words and words[-1] in _STOP:
            e = text.rindex(words[-1], s, e)
            e = len(text[:e].rstrip())
            words = words[:-1]
        if not words:
            continue
        if text[e - 2 : e] in ("'s", "’s"):  # possessive: "Edward's" mentions Edward
            e -= 2
        if s == m.start() and _starts_sentence(text, s):
            continue  # sentence-initial or line-initial (a dropped leading stop word took that place)
        out.append((s, e, text[s:e]))
    return out


def extract_capitalized(corpus: Corpus) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    """Capitalized-span entities of every split (see :func:`capitalized_mentions`)."""
    found = {
        split: [(d, *m) for d, text in enumerate(texts) for m in capitalized_mentions(text)]
        for split, texts in corpus.texts.items()
    }
    entities, ids = _table([m[3] for rows in found.values() for m in rows])
    return {split: _spans_frame(rows, ids) for split, rows in found.items()}, entities


def extract_gazetteer(corpus: Corpus, path: str | Path | None) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    """Whole-word, case-sensitive matches of the names in ``path`` (one per line; blank lines and
    lines starting with ``#`` ignored), longest first.

    Raises:
        ConfigError: if ``path`` is unset, missing, or lists no name.
    """
    p = _gazetteer_file(path)
    names = sorted(
        {ln.strip() for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip() and not ln.startswith("#")},
        key=lambda n: (-len(n), n),
    )
    if not names:
        raise ConfigError(f"data.entities.path={str(path)!r} lists no name: expected one name per line")
    pattern = re.compile(r"(?<!\w)(?:" + "|".join(re.escape(n) for n in names) + r")(?!\w)")
    entities, ids = _table(names)
    spans = {}
    for split, texts in corpus.texts.items():
        spans[split] = _spans_frame(
            [(d, m.start(), m.end(), m.group()) for d, t in enumerate(texts) for m in pattern.finditer(t)], ids
        )
    return spans, entities


def extract_spacy(
    corpus: Corpus,
    model: str = "en_core_web_sm",
    labels: tuple[str, ...] = SPACY_LABELS,
) -> tuple[dict[str, pd.DataFrame], pd.DataFrame]:
    """Named entities (labels in ``labels``) from the spaCy pipeline ``model``.

    Raises:
        ConfigError: if spaCy or the model is not installed.
    """
    try:
        import spacy
    except ImportError:
        raise ConfigError(
            "data/entities=spacy needs spaCy: pip install spacy && python -m spacy download en_core_web_sm"
        ) from None
    try:
        nlp = spacy.load(model, disable=["parser", "lemmatizer"])
    except OSError:
        raise ConfigError(
            f"data.entities.model={model!r} is not installed: expected an installed spaCy pipeline (python -m spacy "
            f"download {model})"
        ) from None
    found = {}
    for split, texts in corpus.texts.items():
        found[split] = [
            (d, ent.start_char, ent.end_char, ent.text)
            for d, doc in enumerate(nlp.pipe(texts, batch_size=64))
            for ent in doc.ents
            if ent.label_ in labels
        ]
    entities, ids = _table([m[3] for rows in found.values() for m in rows])
    return {split: _spans_frame(rows, ids) for split, rows in found.items()}, entities


def _gazetteer_file(path: str | os.PathLike | None) -> Path:
    if not path:
        raise ConfigError("data/entities=gazetteer needs data.entities.path=FILE (one name per line)")
    p = Path(path)
    if not p.is_file():
        raise ConfigError(
            f"data.entities.path={str(path)!r} does not exist: expected a text file with one name per line"
        )
    return p


def _file_stat(path: str | None) -> list | None:
    p = Path(path) if path else None
    return [p.stat().st_size, p.stat().st_mtime_ns] if p is not None and p.is_file() else None


def _with_spans(corpus: Corpus, method: str, spans: dict, entities: pd.DataFrame | None) -> Corpus:
    """``corpus`` with its spans and entity table replaced (ground truth kept)."""
    if entities is not None and not len(entities):
        log.warning("data/entities=%s found no entity in %s: entity familiarity will be empty", method, corpus.name)
    return Corpus(
        texts=corpus.texts,
        spans=spans,
        entities=entities,
        ground_truth=corpus.ground_truth,
        name=corpus.name,
        tokenizer_texts=corpus.tokenizer_texts,
    )


@runtime_checkable
class EntityExtractor(Protocol):
    """What the data module needs of an entity extractor (``data.entities``).

    ``method`` names it in ``data.json``; ``fingerprint()`` is a JSON-able list that keys the data
    cache; ``extract(corpus)`` returns the corpus with its entity spans and entity table set.
    """

    method: str

    def fingerprint(self) -> list:
        """``[method, gazetteer path, spaCy model, gazetteer file stat]`` (unused entries None)."""
        ...

    def extract(self, corpus: Corpus) -> Corpus:
        """Return ``corpus`` with entity spans (``kind="name"``) and an entity table."""
        ...


@dataclass(frozen=True)
class SyntheticEntities:
    """The synthetic generator's own spans and entity table (``data/entities=synthetic``), kept as they
    are (attribute spans included). Only valid with the synthetic source."""

    method: ClassVar[str] = "synthetic"

    def fingerprint(self) -> list:
        """``["synthetic", None, None, None]``."""
        return [self.method, None, None, None]

    def extract(self, corpus: Corpus) -> Corpus:
        """Return ``corpus`` unchanged.

        Raises:
            ConfigError: if the corpus has no generator spans (not from the synthetic source).
        """
        if corpus.entities is None or not corpus.spans:
            raise ConfigError(
                "data/entities=synthetic needs the synthetic source (data=synthetic): expected "
                "data/entities=capitalized, gazetteer, spacy or none for text"
            )
        return corpus


@dataclass(frozen=True)
class CapitalizedEntities:
    """Capitalized-word runs inside sentences (``data/entities=capitalized``; see :func:`capitalized_mentions`)."""

    method: ClassVar[str] = "capitalized"

    def fingerprint(self) -> list:
        """``["capitalized", None, None, None]``."""
        return [self.method, None, None, None]

    def extract(self, corpus: Corpus) -> Corpus:
        """Replace the corpus's spans with capitalized-span mentions (see :func:`extract_capitalized`)."""
        return _with_spans(corpus, self.method, *extract_capitalized(corpus))


@dataclass(frozen=True)
class GazetteerEntities:
    """Whole-word matches of a names list (``data/entities=gazetteer data.entities.path=FILE``).

    Attributes:
        path: names file, one name per line (blank lines and ``#`` lines ignored); stored resolved.

    Raises:
        ConfigError: if ``path`` is unset or not a file.
    """

    path: str
    method: ClassVar[str] = "gazetteer"

    def __post_init__(self) -> None:
        _gazetteer_file(self.path)
        object.__setattr__(self, "path", str(Path(self.path).expanduser().resolve()))

    def fingerprint(self) -> list:
        """``["gazetteer", path, None, [size, mtime_ns]]``."""
        return [self.method, self.path, None, _file_stat(self.path)]

    def extract(self, corpus: Corpus) -> Corpus:
        """Replace the corpus's spans with gazetteer matches (see :func:`extract_gazetteer`)."""
        return _with_spans(corpus, self.method, *extract_gazetteer(corpus, self.path))


@dataclass(frozen=True)
class SpacyEntities:
    """Named entities of a spaCy pipeline (``data/entities=spacy``), labels :data:`SPACY_LABELS`.

    Attributes:
        model: installed spaCy pipeline name (``conf/data/entities/spacy.yaml``: ``en_core_web_sm``).
    """

    model: str
    method: ClassVar[str] = "spacy"

    def __post_init__(self) -> None:
        if not self.model or not isinstance(self.model, str):
            raise ConfigError(f"data.entities.model={self.model!r}: expected a spaCy pipeline name (en_core_web_sm)")

    def fingerprint(self) -> list:
        """``["spacy", None, model, None]``."""
        return [self.method, None, self.model, None]

    def extract(self, corpus: Corpus) -> Corpus:
        """Replace the corpus's spans with spaCy entities. Raises ConfigError: see :func:`extract_spacy`."""
        return _with_spans(corpus, self.method, *extract_spacy(corpus, self.model))


@dataclass(frozen=True)
class NoEntities:
    """No entities (``data/entities=none``): empty span tables, no entity table."""

    method: ClassVar[str] = "none"

    def fingerprint(self) -> list:
        """``["none", None, None, None]``."""
        return [self.method, None, None, None]

    def extract(self, corpus: Corpus) -> Corpus:
        """Drop the corpus's spans and entity table."""
        return _with_spans(corpus, self.method, {}, None)
