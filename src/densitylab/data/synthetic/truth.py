"""Span tables and ground-truth tables of the synthetic corpus: who is mentioned where, and which pairs
of people share a document."""

from __future__ import annotations

import numpy as np
import pandas as pd

from densitylab.data.corpus import SPAN_COLUMNS, empty_spans
from densitylab.data.synthetic.render import Span


def spans_frame(spans: list[Span]) -> pd.DataFrame:
    """Span table (:data:`~densitylab.data.corpus.SPAN_COLUMNS`, int64 / string dtypes) of ``spans``,
    sorted by (doc, start)."""
    if not spans:
        return empty_spans()
    doc, start, end, kind, entity, value = (list(c) for c in zip(*spans))
    df = pd.DataFrame(
        {
            "doc": np.asarray(doc, dtype=np.int64),
            "start": np.asarray(start, dtype=np.int64),
            "end": np.asarray(end, dtype=np.int64),
            "kind": pd.array(kind, dtype="string"),
            "entity": np.asarray(entity, dtype=np.int64),
            "value": pd.array(value, dtype="string"),
        },
        columns=list(SPAN_COLUMNS),
    )
    return df.sort_values(["doc", "start"], kind="stable").reset_index(drop=True)


def mentions_table(entities: pd.DataFrame, subjects: np.ndarray, spans: pd.DataFrame) -> pd.DataFrame:
    """Per entity: documents about it (``docs``; ``subjects`` holds each document's subject) and name
    mentions (``mentions``: its ``kind="name"`` spans). Columns entity_id, entity, docs, mentions."""
    n = len(entities)
    docs = np.bincount(subjects.astype(np.int64), minlength=n)[:n] if len(subjects) else np.zeros(n)
    ent = spans.loc[spans["kind"] == "name", "entity"].to_numpy(dtype=np.int64)
    mentions = np.bincount(ent, minlength=n)[:n] if len(ent) else np.zeros(n)
    return pd.DataFrame(
        {
            "entity_id": entities["entity_id"].to_numpy(dtype=np.int64),
            "entity": entities["entity"].to_numpy(dtype=object),
            "docs": np.asarray(docs, dtype=np.int64),
            "mentions": np.asarray(mentions, dtype=np.int64),
        }
    )


def exposure_table(entities: pd.DataFrame, subjects: np.ndarray, spans: pd.DataFrame) -> pd.DataFrame:
    """Per entity, what one pass over the split exposes, named as the ledger's columns: ``subject_docs``
    (documents about it; ``subjects`` holds each document's subject), ``mentions`` (its ``kind="name"``
    spans) and ``comentions`` (its name spans in documents whose subject is someone else). Columns
    entity_id, entity, subject_docs, mentions, comentions (int64 counts)."""
    n = len(entities)
    subjects = np.asarray(subjects, dtype=np.int64)
    docs = np.bincount(subjects, minlength=n)[:n] if len(subjects) else np.zeros(n, dtype=np.int64)
    names = spans.loc[spans["kind"] == "name"]
    ent = names["entity"].to_numpy(dtype=np.int64)
    other = ent != subjects[names["doc"].to_numpy(dtype=np.int64)] if len(ent) else np.zeros(0, dtype=bool)
    mentions = np.bincount(ent, minlength=n)[:n] if len(ent) else np.zeros(n, dtype=np.int64)
    comentions = np.bincount(ent[other], minlength=n)[:n] if other.any() else np.zeros(n, dtype=np.int64)
    return pd.DataFrame(
        {
            "entity_id": entities["entity_id"].to_numpy(dtype=np.int64),
            "entity": entities["entity"].to_numpy(dtype=object),
            "subject_docs": np.asarray(docs, dtype=np.int64),
            "mentions": np.asarray(mentions, dtype=np.int64),
            "comentions": np.asarray(comentions, dtype=np.int64),
        }
    )


def comentions_table(names: list[str], spans: pd.DataFrame) -> pd.DataFrame:
    """Unordered pairs of people named in the same document, with the number of such documents.
    Columns entity_a, entity_b (names, a < b), entity_id_a, entity_id_b, docs; sorted by names."""
    cols = ["entity_a", "entity_b", "entity_id_a", "entity_id_b", "docs"]
    m = spans.loc[spans["kind"] == "name", ["doc", "entity"]].drop_duplicates()
    pairs = m.merge(m, on="doc", suffixes=("_a", "_b"))
    name_arr = np.asarray(names, dtype=object)
    pairs = pairs[pairs["entity_a"].to_numpy() != pairs["entity_b"].to_numpy()]
    na = name_arr[pairs["entity_a"].to_numpy(dtype=np.int64)]
    nb = name_arr[pairs["entity_b"].to_numpy(dtype=np.int64)]
    pairs = pairs[na < nb]
    if pairs.empty:
        return pd.DataFrame({c: pd.Series([], dtype=object if c in cols[:2] else "int64") for c in cols})
    out = (
        pairs.groupby(["entity_a", "entity_b"], sort=False)
        .size()
        .rename("docs")
        .reset_index()
        .rename(columns={"entity_a": "entity_id_a", "entity_b": "entity_id_b"})
    )
    out["entity_a"] = name_arr[out["entity_id_a"].to_numpy(dtype=np.int64)]
    out["entity_b"] = name_arr[out["entity_id_b"].to_numpy(dtype=np.int64)]
    out = out[cols].astype({"entity_id_a": "int64", "entity_id_b": "int64", "docs": "int64"})
    return out.sort_values(["entity_a", "entity_b"], kind="stable").reset_index(drop=True)


def ground_truth_tables(
    entities: pd.DataFrame, names: list[str], subjects: dict[str, np.ndarray], spans: dict[str, pd.DataFrame]
) -> dict[str, pd.DataFrame]:
    """``people`` (the entity table), then ``mentions_{split}``, ``comentions_{split}`` and
    ``exposure_{split}`` for every split of ``subjects`` (each document's subject) and ``spans`` (span
    tables)."""
    ground_truth: dict[str, pd.DataFrame] = {"people": entities.copy()}
    for split in subjects:
        ground_truth[f"mentions_{split}"] = mentions_table(entities, subjects[split], spans[split])
    for split in subjects:
        ground_truth[f"comentions_{split}"] = comentions_table(names, spans[split])
    for split in subjects:
        ground_truth[f"exposure_{split}"] = exposure_table(entities, subjects[split], spans[split])
    return ground_truth
