"""The person panel: a fixed set of people probed on their held-out biographies (design §8).

One panel is shared by every probe that reads people (density now; knowledge and the study later). It is
drawn once, at fit start, from the data alone (never from the exposure ledger, which is empty then) and
from its own random stream, ``numpy.random.default_rng([seed, PANEL_STREAM])``, so it does not depend on
the training seed, the shuffling or anything the ledger counts.

On the synthetic corpus the panel is stratified by **planned training documents** (the generator's
``planned_docs``):

- every person with ``planned_docs >= top_docs`` (15 people at the defaults: ranks 1-15 of 2,000), or a
  log-even sample of them when there are more than ``size - min_zero`` (the panel never exceeds ``size``);
- at least ``min_zero`` zero-exposure people (all of them when there are fewer);
- the rest of ``size`` as a log-even sample of the others: an equal share per octave
  ``[2^k, 2^(k+1))`` of planned documents, each octave capped at the people it has and the leftover
  spread over the octaves that still have people (water filling), drawn uniformly within an octave.

With a Latin square (the synthetic corpus's ``study_group`` column, :mod:`densitylab.data.synthetic.ranks`)
every study person is in the panel (stratum ``study``) and the rule above fills the rest of ``size`` from the
other people.

On text data (no planned documents) the same rule runs on each entity's name mentions in the training
split (counted from the span table, not the ledger) with ``top_docs`` applied to mentions.

Each panel person is probed on **their held-out document** (never trained on): familiar people on their
``heldout`` biography, zero-exposure people on their ``unfamiliar`` one; on text data, the held-out
window holding the entity's first held-out mention. The panel's documents are packed like the training
stream, ``<|endoftext|>``-separated, each whole in one row of ``T`` inputs (a document longer than ``T``
is cut at ``T``; documents are placed first-fit decreasing); positions of a row outside its panel
documents (padding) are not probed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from densitylab.data.packing import PackedSplit
from densitylab.probes.roles import ROLE_CODE, StreamLabels

#: Second word of the panel's random stream: the panel never shares a stream with anything else.
PANEL_STREAM = 0x70616E656C  # "panel"


@dataclass(frozen=True)
class PanelSpec:
    """How the person panel is drawn (``callbacks.density.panel`` in ``conf/``).

    Attributes:
        size: people in the panel (all people when the corpus has fewer).
        top_docs: every person with at least this many planned documents is in the panel.
        min_zero: at least this many zero-exposure people (all when there are fewer).
        seed: the panel's own seed (not the training seed: the same people in every run on one corpus).
        core: people of the panel's **core**, probed at every call; the rest only at the periodic calls
            and the end (density: the log-spaced early calls read the core alone). An equal share per
            bin of planned documents (``core_edges``), drawn after the panel from the same stream.
        core_edges: lower edges of the bins the core is balanced over (the endpoints' bins).
    """

    size: int = 320
    top_docs: int = 64
    min_zero: int = 48
    seed: int = 0
    core: int = 64
    core_edges: tuple[int, ...] = (0, 1, 4, 16, 64)

    def __post_init__(self) -> None:
        for name in ("size", "top_docs", "min_zero", "core"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"callbacks.density.panel.{name}={v!r}: expected an integer >= 1")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"callbacks.density.panel.seed={self.seed!r}: expected an integer >= 0")
        e = list(self.core_edges)
        if not e or e[0] != 0 or any(isinstance(x, bool) or not isinstance(x, int) for x in e) or e != sorted(set(e)):
            raise ValueError(f"panel core_edges={e!r}: expected increasing integers starting at 0")


def _water_fill(have: np.ndarray, n: int) -> np.ndarray:
    """How many to take from each stratum: an equal share of ``n`` per stratum, each capped at what it ``has``,
    the leftover spread over the strata that still have some (water filling). (K,) int64 in, (K,) int64 out."""
    have = np.asarray(have, dtype=np.int64)
    take = np.zeros_like(have)
    left = min(int(n), int(have.sum()))
    while left > 0:
        open_ = np.flatnonzero(take < have)
        share = max(left // len(open_), 1)
        for j in open_:
            add = min(share, have[j] - take[j], left)
            take[j] += add
            left -= add
            if left == 0:
                break
    return take


def _log_even(rng: np.random.Generator, ids: np.ndarray, counts: np.ndarray, n: int) -> np.ndarray:
    """``n`` of ``ids`` (counts >= 1), an equal share per octave of ``counts`` (water filling)."""
    if n <= 0 or not len(ids):
        return np.zeros(0, dtype=np.int64)
    octave = np.floor(np.log2(counts)).astype(np.int64)
    levels = np.unique(octave)
    take = _water_fill(np.array([(octave == k).sum() for k in levels]), n)
    out = [rng.choice(ids[octave == k], size=int(t), replace=False) for k, t in zip(levels, take) if t]
    return np.sort(np.concatenate(out)) if out else np.zeros(0, dtype=np.int64)


def _strata(
    rng: np.random.Generator, ids: np.ndarray, planned: np.ndarray, size: int, spec: PanelSpec
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``top``, ``zero`` and ``log_even`` strata (sorted entity ids) of at most ``size`` of ``ids``
    (planned documents ``planned``), by the rule of the module docstring with ``spec``'s ``top_docs`` and
    ``min_zero``."""
    top = ids[planned >= spec.top_docs]
    zeros = ids[planned == 0]
    n_zero = min(len(zeros), spec.min_zero, size)
    cap = max(size - n_zero, 0)
    if len(top) > cap:  # (text data: many entities above top_docs) a log-even sample keeps the panel at size
        top = _log_even(rng, top, planned[planned >= spec.top_docs], cap)
    zero = np.sort(rng.choice(zeros, size=n_zero, replace=False)) if n_zero else zeros[:0]
    rest = (planned > 0) & (planned < spec.top_docs)
    n_rest = max(size - len(top) - len(zero), 0)
    mid = _log_even(rng, ids[rest], planned[rest], n_rest)
    if len(mid) < n_rest and len(zeros) > n_zero:  # too few exposed people: fill with more zero-exposure ones
        more = np.setdiff1d(zeros, zero)
        zero = np.sort(np.concatenate([zero, rng.choice(more, size=min(n_rest - len(mid), len(more)), replace=False)]))
    return top, zero, mid


def draw_panel(exposure_plan: pd.DataFrame, spec: PanelSpec) -> pd.DataFrame:
    """Draw the person panel (see the module docstring).

    Args:
        exposure_plan: one row per person: ``entity_id`` (int) and ``planned`` (int >= 0, planned
            training documents; on text data training mentions); optionally ``study_group`` (int, the
            Latin square's group, -1 outside the study: :mod:`densitylab.data.synthetic.ranks`).
        spec: the panel's size, strata and seed.
    Returns:
        The panel, at most ``spec.size`` people: ``entity_id``, ``planned``, ``stratum`` (``top``, ``zero``
        or ``log_even``) and ``core`` (bool: in the core, see :class:`PanelSpec`), sorted by ``entity_id``.
        With a ``study_group`` column every study person (``study_group >= 0``) is in the panel, stratum
        ``study``, the rest of ``spec.size`` filled from the others by the rule above, and the panel has a
        ``study_group`` column (after ``stratum``); every study person is in the core, and the core's drawn share
        (``spec.core`` people) comes from the other panel persons. Without study persons the core is drawn over
        the whole panel, exactly as before.
    Raises:
        ValueError: (one line) when ``spec.size`` is smaller than the number of study persons.
    """
    rng = np.random.default_rng([spec.seed, PANEL_STREAM])
    plan = exposure_plan.sort_values("entity_id", ignore_index=True)
    ids, planned = plan["entity_id"].to_numpy(np.int64), plan["planned"].to_numpy(np.int64)
    frames = []
    size, pool = spec.size, np.ones(len(ids), dtype=bool)
    study_group = None
    if "study_group" in plan:
        study_group = plan["study_group"].to_numpy(np.int64)
        pool = study_group < 0
        n_study = int((~pool).sum())
        if n_study > spec.size:
            raise ValueError(
                f"callbacks.density.panel.size={spec.size} is smaller than the {n_study} study persons of the Latin "
                f"square (data.source.latin_square): expected panel.size >= {n_study}"
            )
        size -= n_study
        frames.append(pd.DataFrame({"entity_id": ids[~pool], "stratum": "study"}))
    top, zero, mid = _strata(rng, ids[pool], planned[pool], size, spec)
    frames += [
        pd.DataFrame({"entity_id": top, "stratum": "top"}),
        pd.DataFrame({"entity_id": zero, "stratum": "zero"}),
        pd.DataFrame({"entity_id": mid, "stratum": "log_even"}),
    ]
    out = pd.concat(frames, ignore_index=True)
    out["planned"] = pd.Series(planned, index=ids).loc[out["entity_id"]].to_numpy()
    columns = ["entity_id", "planned", "stratum"]
    if study_group is not None:
        out["study_group"] = pd.Series(study_group, index=ids).loc[out["entity_id"]].to_numpy()
        columns.append("study_group")
    out = out.sort_values("entity_id", ignore_index=True)[columns]
    # the core: an equal share of min(core, size) per bin of planned documents (water filling), same stream; with a
    # Latin square every study person is in the core too (probed at every call) and the share is drawn from the others
    study = out["study_group"].to_numpy() >= 0 if study_group is not None else np.zeros(len(out), dtype=bool)
    eligible = np.flatnonzero(~study)
    b = np.searchsorted(np.asarray(spec.core_edges), out["planned"].to_numpy()[eligible], side="right") - 1
    n_core = min(spec.core, len(eligible))
    take = _water_fill(np.bincount(np.clip(b, 0, None), minlength=len(spec.core_edges)), n_core)
    core = study.copy()
    for j, n in enumerate(take):
        if n:
            core[eligible[rng.choice(np.flatnonzero(b == j), size=int(n), replace=False)]] = True
    out["core"] = core
    return out


def doc_subjects(labels: StreamLabels, packed: PackedSplit) -> np.ndarray:
    """(n_docs,) int64 subject of each packed document of a split (-1 when it has none)."""
    starts = np.asarray(packed.doc_offsets[:-1], dtype=np.int64)
    return labels.subject[np.minimum(starts, len(labels.subject) - 1)]


@dataclass
class Rows:
    """Probe rows cut from packed streams, with the stream labels of every position.

    Attributes:
        input_ids: (N, T) int64.
        targets: (N, T) int64 next token of each position, -100 where none.
        role, person, subject, mentioned: (N, T) (int8 role codes; int64 ids, -1 none).
        doc_initial: (N, T) bool.
        probed: (N, T) bool, positions that enter the aggregates.
        row_persons: per row, the panel persons whose documents it holds.
    """

    input_ids: torch.Tensor
    targets: torch.Tensor
    role: np.ndarray
    person: np.ndarray
    subject: np.ndarray
    mentioned: np.ndarray
    doc_initial: np.ndarray
    probed: np.ndarray
    row_persons: list[list[int]]


def pack_documents_into_rows(
    pieces: list[tuple[PackedSplit, StreamLabels, int, int]], T: int, eos_id: int, groups: list[int] | None = None
) -> Rows:
    """Pack documents (each a ``(packed split, its labels, doc index, person)``) into rows of ``T`` inputs.

    Each row starts with ``<|endoftext|>`` (the context every document has in the training stream) and
    holds whole documents, each followed by its own ``<|endoftext|>``, placed first-fit decreasing (the
    longest first, each into the first row with room, so few rows are padded); a document longer than a
    row is cut at ``T`` tokens. Padding (``<|endoftext|>``) is not probed, nor is the leading
    ``<|endoftext|>``. With ``groups`` (one integer per piece) each group gets rows of its own, in group
    order (the panel's core rows come first).
    """
    # first-fit decreasing: longest documents first, each into the first row with room (fewer rows to probe)
    items = []
    for packed, labels, d, person in pieces:
        a, b = int(packed.doc_offsets[d]), int(packed.doc_offsets[d + 1])  # b - 1 is the document's EOS
        items.append((packed, labels, a, min(b - a, T), person))  # T + 1 tokens per row, one the leading EOS
    grp = list(groups) if groups is not None else [0] * len(items)
    order = sorted(range(len(items)), key=lambda i: (grp[i], -items[i][3], i))
    rows: list[list[tuple[PackedSplit, StreamLabels, int, int, int]]] = []
    room: list[int] = []
    row_group: list[int] = []
    for i in order:
        n = items[i][3]
        r = next((j for j, left in enumerate(room) if left >= n and row_group[j] == grp[i]), None)
        if r is None:
            rows.append([])
            room.append(T)
            row_group.append(grp[i])
            r = len(rows) - 1
        rows[r].append(items[i])
        room[r] -= n
    N = len(rows)
    ids = np.full((N, T + 1), eos_id, dtype=np.int64)
    role = np.full((N, T + 1), ROLE_CODE["eos"], dtype=np.int8)
    person = np.full((N, T + 1), -1, dtype=np.int64)
    subject, mentioned = person.copy(), person.copy()
    doc_initial = np.zeros((N, T + 1), dtype=bool)
    probed = np.zeros((N, T + 1), dtype=bool)
    row_persons = []
    for r, docs in enumerate(rows):
        c = 1
        for packed, labels, a, take, _ in docs:
            sl = slice(a, a + take)
            ids[r, c : c + take] = packed.stream(a, a + take)
            role[r, c : c + take] = labels.role[sl]
            person[r, c : c + take] = labels.person[sl]
            subject[r, c : c + take] = labels.subject[sl]
            mentioned[r, c : c + take] = labels.mentioned[sl]
            doc_initial[r, c : c + take] = labels.doc_initial[sl]
            probed[r, c : c + take] = True
            c += take
        row_persons.append([p for *_, p in docs])
    targets = torch.from_numpy(ids[:, 1:].copy())
    targets[torch.from_numpy(~probed[:, 1:])] = -100  # padding is nobody's target
    return Rows(
        torch.from_numpy(ids[:, :-1].copy()),
        targets,
        role[:, :-1],
        person[:, :-1],
        subject[:, :-1],
        mentioned[:, :-1],
        doc_initial[:, :-1],
        probed[:, :-1],
        row_persons,
    )


def windows_rows(packed: PackedSplit, labels: StreamLabels, windows: np.ndarray) -> Rows:
    """Training (or held-out) windows as rows, with the stream labels of their input positions; every
    position is probed except canary positions (masked from the natural sets)."""
    bs, L = int(packed.block_size), int(packed.n_real)
    starts = np.asarray(windows, dtype=np.int64) * bs
    pos = starts[:, None] + np.arange(bs)[None, :]
    inside = pos < L
    p = np.minimum(pos, L - 1)
    xs = (
        torch.stack([packed.window(int(w))[0] for w in windows])
        if len(windows)
        else torch.zeros(0, bs, dtype=torch.int64)
    )
    ys = torch.stack([packed.window(int(w))[1] for w in windows]) if len(windows) else xs.clone()
    lab = labels.take(p)  # full-stream labels, or the labels of just these windows' positions
    role = np.where(inside, lab.role, ROLE_CODE["eos"]).astype(np.int8)
    return Rows(
        xs,
        ys,
        role,
        np.where(inside, lab.person, -1),
        np.where(inside, lab.subject, -1),
        np.where(inside, lab.mentioned, -1),
        np.where(inside, lab.doc_initial, False),
        inside & (role != ROLE_CODE["canary"]),
        [[] for _ in windows],
    )
