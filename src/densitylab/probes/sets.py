"""Fixed probe sets, drawn once from a seed at fit start (design §5)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from densitylab.data.packing import PackedSplit
from densitylab.probes.density import ProbeSet


def _full_windows(packed: PackedSplit) -> int:
    """Windows whose inputs are all real tokens (the padded last window is left out)."""
    n = packed.n_windows
    return n - 1 if n * packed.block_size > packed.n_real and n > 1 else n


def _spans_for(packed: PackedSplit, windows: np.ndarray):
    names = packed.spans[(packed.spans["kind"] == "name") & packed.spans["sample_id"].isin(windows)]
    if names.empty:
        return None
    row_of = pd.Series(np.arange(len(windows)), index=windows)
    cols = (
        row_of.loc[names["sample_id"]].to_numpy(),
        names["start"].to_numpy(),
        names["end"].to_numpy(),
        names["entity"].to_numpy(),
    )
    return tuple(torch.tensor(np.asarray(c), dtype=torch.int64) for c in cols)


def _draw(packed: PackedSplit, n: int, rng: np.random.Generator) -> np.ndarray:
    avail = _full_windows(packed)
    return np.sort(rng.choice(avail, size=min(n, avail), replace=False))


def build_probe_sets(
    splits: dict[str, PackedSplit], vocab_size: int, n_windows: int = 32, seed: int = 0, eos_id: int | None = 0
) -> list[ProbeSet]:
    """Draw the probe sets.

    - ``seen``: training windows (their sample ids, so the ``sequence`` view reads their exposures);
    - ``heldout``: held-out windows (never trained on);
    - ``unfamiliar_entities``: windows about zero-exposure entities (synthetic data only);
    - ``shuffled``: the held-out windows with their tokens permuted within each window (same unigram
      content, no order);
    - ``random``: token ids drawn uniformly from the vocabulary (``<|endoftext|>`` excluded).

    Args:
        splits: packed splits (``train``, ``heldout``, optionally ``unfamiliar``).
        vocab_size: tokenizer vocabulary size (random ids are drawn below it).
        n_windows: windows per set (fewer when a split is smaller).
        seed: the draw's seed.
    Returns:
        Probe sets in the order above (``unfamiliar_entities`` only when that split exists).
    Raises:
        ValueError: if ``n_windows`` < 1.
    """
    if n_windows < 1:
        raise ValueError(f"probes.density.windows_per_set={n_windows}: expected >= 1")
    rng = np.random.default_rng(seed)
    sets = []
    w = _draw(splits["train"], n_windows, rng)
    sets.append(
        ProbeSet(
            "seen",
            torch.stack([splits["train"].window(int(i))[0] for i in w]),
            torch.as_tensor(w, dtype=torch.int64),
            _spans_for(splits["train"], w),
            torch.as_tensor(w),
        )
    )
    hw = _draw(splits["heldout"], n_windows, rng)
    held = torch.stack([splits["heldout"].window(int(i))[0] for i in hw])
    none = torch.full((len(hw),), -1, dtype=torch.int64)
    sets.append(ProbeSet("heldout", held, none, _spans_for(splits["heldout"], hw), torch.as_tensor(hw)))
    if "unfamiliar" in splits:
        uw = _draw(splits["unfamiliar"], n_windows, rng)
        sets.append(
            ProbeSet(
                "unfamiliar_entities",
                torch.stack([splits["unfamiliar"].window(int(i))[0] for i in uw]),
                torch.full((len(uw),), -1, dtype=torch.int64),
                _spans_for(splits["unfamiliar"], uw),
                torch.as_tensor(uw),
            )
        )
    perm = torch.as_tensor(np.stack([rng.permutation(held.shape[1]) for _ in range(len(held))]))
    sets.append(ProbeSet("shuffled", torch.gather(held, 1, perm), none.clone(), None))
    T = held.shape[1]
    ids = rng.integers(0, vocab_size - (1 if eos_id is not None else 0), size=(n_windows, T))
    if eos_id is not None:
        ids = ids + (ids >= eos_id)  # skip the EOS id
    sets.append(
        ProbeSet(
            "random", torch.as_tensor(ids, dtype=torch.int64), torch.full((n_windows,), -1, dtype=torch.int64), None
        )
    )
    return sets


def probe_sets_table(sets: list[ProbeSet]) -> pd.DataFrame:
    """The probe sets as a table (probe_set, row, sample_id, tokens) for ``probes/probe_sets.parquet``."""
    return pd.DataFrame(
        [
            {"probe_set": s.name, "row": r, "sample_id": int(s.sample_ids[r]), "tokens": s.input_ids[r].tolist()}
            for s in sets
            for r in range(len(s.input_ids))
        ]
    )


def task_masks(
    packed: PackedSplit, probe: ProbeSet, token_counts: torch.Tensor | None = None, n_freq_buckets: int = 4
) -> dict[str, torch.Tensor]:
    """Tasks for the modularity probe on the rows of ``probe`` (drawn from ``packed``): the positions
    whose **target** (next token) belongs to the task, as (N, T) bool masks.

    With attribute spans (synthetic data): one task per span kind: ``name`` and each attribute
    (``birth_date``, ``birth_city``, ...) = positions predicting a token of such a span. Otherwise
    (text): ``entity`` / ``non_entity`` (target inside an entity mention or not) plus
    ``freq_1..freq_n`` = targets split into ``n_freq_buckets`` equal-count groups by their token
    exposure (``token_counts``, from the ledger; rarest first). Tasks without any position are dropped.
    """
    N, T = probe.input_ids.shape
    rows = pd.Series(np.arange(N), index=probe.window_ids.numpy())
    spans = packed.spans[packed.spans["sample_id"].isin(rows.index)]
    kinds = sorted(set(spans["kind"])) if len(spans) else []
    masks: dict[str, torch.Tensor] = {}

    def span_mask(sel: pd.DataFrame) -> torch.Tensor:
        m = torch.zeros(N, T, dtype=torch.bool)
        for r, a, b in zip(rows.loc[sel["sample_id"]].to_numpy(), sel["start"].to_numpy(), sel["end"].to_numpy()):
            lo, hi = max(int(a) - 1, 0), min(int(b) - 1, T)  # position p predicts token p + 1
            if hi > lo:
                m[r, lo:hi] = True
        return m

    if len(kinds) > 1:  # attribute spans present
        for k in kinds:
            masks[k] = span_mask(spans[spans["kind"] == k])
    else:
        ent = span_mask(spans[spans["kind"] == "name"]) if kinds else torch.zeros(N, T, dtype=torch.bool)
        masks["entity"], masks["non_entity"] = ent, ~ent
        if token_counts is not None:
            target_ids = torch.cat(
                [probe.input_ids[:, 1:], probe.input_ids[:, -1:]], 1
            )  # last position: no target in-window
            c = token_counts.cpu()[target_ids].double().log1p()
            edges = torch.quantile(c[:, :-1].flatten(), torch.linspace(0, 1, n_freq_buckets + 1, dtype=torch.float64))
            b = torch.bucketize(c, edges[1:-1], right=True)
            for i in range(n_freq_buckets):
                masks[f"freq_{i + 1}"] = b == i
    for k in list(masks):
        masks[k][:, -1] = False  # the target of the last input position lies outside the window
        if not masks[k].any():
            del masks[k]
    return masks
