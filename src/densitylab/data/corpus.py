"""The in-memory corpus every data source produces, before tokenization.

A :class:`Corpus` holds raw documents per split plus, optionally, character spans of entity
mentions and attribute values inside them. Sources (synthetic generator, local text files,
the Hugging Face hub) build one; :mod:`densitylab.data.packing` turns it into token windows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

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


@dataclass
class Corpus:
    """Raw documents per split, with optional entity/attribute spans and ground-truth tables.

    Attributes:
        texts: split name (one of :data:`SPLITS`) -> list of documents (str). ``train`` and
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

    texts: dict[str, list[str]]
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
        """Total characters in ``split`` (0 when the split is absent)."""
        return sum(len(t) for t in self.texts.get(split, []))
