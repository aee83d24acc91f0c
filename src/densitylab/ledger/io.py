"""Ledger outputs: parquet tables (written atomically). The rank-frequency plot is
:func:`densitylab.report.ledger.plot_rank_frequency`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from densitylab.io import write_parquet_atomic
from densitylab.ledger.exposure import NEVER, ExposureLedger


def ledger_tables(
    ledger: ExposureLedger, token_text: Callable[[int], str] | None, entity_names: list[str]
) -> dict[str, pd.DataFrame]:
    """The ledger as tables (call ``ledger.sync()`` first).

    Returns:
        ``tokens``: token_id, token (decoded text), count; ``entities``: one row per entity, entity_id,
        entity, mentions (name mentions in trained windows), first_step and last_step (the first and last
        step that trained a window mentioning it; nullable Int64, NA: never mentioned yet), subject_docs
        (trainings of documents about it, repeats included), distinct_docs (documents about it trained at
        least once), comentions (its mentions inside other entities' documents), all int64 counts but
        first_step and last_step (see :class:`~densitylab.ledger.ExposureLedger`; the last three are 0 on
        data without document subjects); ``cooccurrence``: entity_a, entity_b (names, entity_a <
        entity_b alphabetically), entity_id_a, entity_id_b, count (pairs with count > 0).
    """
    counts = ledger.token_counts.cpu().numpy()
    ids = np.arange(len(counts))
    tokens = pd.DataFrame(
        {"token_id": ids, "token": [token_text(int(i)) if token_text else str(i) for i in ids], "count": counts}
    )
    mentions = ledger.entity_mentions().cpu().numpy()
    first = ledger.entity_first_step().cpu().numpy()
    last = ledger.entity_last_step().cpu().numpy()
    entities = pd.DataFrame(
        {
            "entity_id": np.arange(ledger.n_entities),
            "entity": pd.Series(list(entity_names), dtype="string"),
            "mentions": mentions,
            "first_step": pd.array(np.where(first == NEVER, 0, first), dtype="Int64"),
            "last_step": pd.array(np.where(last < 0, 0, last), dtype="Int64"),
            "subject_docs": ledger.entity_subject_docs().cpu().numpy(),
            "distinct_docs": ledger.entity_distinct_docs().cpu().numpy(),
            "comentions": ledger.entity_comentions().cpu().numpy(),
        }
    )
    entities.loc[first == NEVER, "first_step"] = pd.NA
    entities.loc[last < 0, "last_step"] = pd.NA
    co = ledger.cooccurrence().cpu().numpy()
    keep = co > 0
    a, b = ledger.pair_a.numpy()[keep], ledger.pair_b.numpy()[keep]
    names = np.asarray(entity_names, dtype=object)
    if len(a):  # store each unordered pair once, names in alphabetical order (as the ground truth does)
        swap = names[a] > names[b]
        a, b = np.where(swap, b, a), np.where(swap, a, b)
    cooc = pd.DataFrame(
        {
            "entity_a": pd.Series(names[a] if len(a) else [], dtype="string"),
            "entity_b": pd.Series(names[b] if len(b) else [], dtype="string"),
            "entity_id_a": a,
            "entity_id_b": b,
            "count": co[keep],
        }
    )
    return {"tokens": tokens, "entities": entities, "cooccurrence": cooc}


def write_ledger(tables: dict[str, pd.DataFrame], out_dir: str | Path) -> None:
    """Write ``{name}.parquet`` for each table into ``out_dir`` (temporary file, then rename)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, df in tables.items():
        write_parquet_atomic(df, out / f"{name}.parquet")
