"""Fixed probe sets, drawn once at fit start from the data and a seed (design §5, §8)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import torch

from densitylab.data.packing import PackedSplit
from densitylab.probes.density import ProbeSet
from densitylab.probes.panel import PanelSpec, Rows, doc_subjects, draw_panel, pack_documents_into_rows, windows_rows
from densitylab.probes.roles import ROLES, StreamLabels, canary_documents, label_stream


def _full_windows(packed: PackedSplit) -> int:
    """Windows whose inputs are all real tokens (the padded last window is left out)."""
    n = packed.n_windows
    return n - 1 if n * packed.block_size > packed.n_real and n > 1 else n


def draw_windows(packed: PackedSplit, n: int, rng: np.random.Generator) -> np.ndarray:
    """``min(n, full windows)`` distinct sample ids of ``packed`` (sorted), uniformly without replacement."""
    avail = _full_windows(packed)
    return np.sort(rng.choice(avail, size=min(n, avail), replace=False))


def window_set(name: str, packed: PackedSplit, windows: np.ndarray, trained: bool = False) -> ProbeSet:
    """Windows of ``packed`` as a probe set without position labels: inputs, their real targets (the
    last input's target is the window's extra token), ``sample_ids`` = the windows when ``trained``
    (else -1) and ``window_ids``."""
    w = np.asarray(windows, dtype=np.int64)
    xs, ys = zip(*(packed.window(int(i)) for i in w))
    sid = torch.as_tensor(w) if trained else torch.full((len(w),), -1, dtype=torch.int64)
    return ProbeSet(name, torch.stack(xs), sid, window_ids=torch.as_tensor(w), targets=torch.stack(ys))


def _labels(rows: Rows) -> dict[str, np.ndarray]:
    return {
        "role": rows.role,
        "person": rows.person,
        "subject": rows.subject,
        "mentioned": rows.mentioned,
        "doc_initial": rows.doc_initial,
        "probed": rows.probed,
    }


def exposure_plan(splits: dict[str, PackedSplit], entities: pd.DataFrame | None) -> pd.DataFrame | None:
    """What the panel is stratified by: ``entity_id``, ``planned`` = the generator's ``planned_docs``
    (synthetic data) or the entity's name mentions in the training split's span table (text data);
    None without an entity table. A ``study_group`` column of the entity table (the Latin square's groups,
    -1 outside the study) is passed through (:func:`~densitylab.probes.panel.draw_panel` puts every study
    person in the panel)."""
    if entities is None or not len(entities):
        return None
    ids = entities["entity_id"].to_numpy(np.int64)
    if "planned_docs" in entities:
        plan = pd.DataFrame({"entity_id": ids, "planned": entities["planned_docs"].to_numpy(np.int64)})
        if "study_group" in entities:
            plan["study_group"] = entities["study_group"].to_numpy(np.int64)
        return plan
    names = splits["train"].spans
    counts = names.loc[names["kind"] == "name", "entity"].value_counts()
    return pd.DataFrame({"entity_id": ids, "planned": counts.reindex(ids, fill_value=0).to_numpy(np.int64)})


def panel_set(
    splits: dict[str, PackedSplit],
    labels: dict[str, StreamLabels],
    panel: pd.DataFrame,
    eos_id: int,
) -> tuple[ProbeSet | None, pd.DataFrame]:
    """The ``panel`` probe set: every panel person's held-out document (module :mod:`densitylab.probes.panel`).

    Returns:
        The probe set (None when no panel person has a held-out document; its first ``core_rows`` rows hold
        the panel's core) and the panel table with the columns ``split`` and ``doc`` (packed document, on
        text data the held-out window; -1 when the person has none) and ``row`` added.
    """
    T = splits["heldout"].block_size
    panel = panel.copy()
    panel["split"], panel["doc"], panel["row"] = "", -1, -1
    synthetic = any(labels[s].subject.max(initial=-1) >= 0 for s in labels if s != "train")
    if synthetic:
        where: dict[int, tuple[str, int]] = {}
        for split in ("heldout", "unfamiliar"):
            if split not in splits:
                continue
            subj = doc_subjects(labels[split], splits[split])
            for d in np.flatnonzero(subj >= 0)[::-1]:  # the first document of each subject wins
                where[int(subj[d])] = (split, int(d))
        pieces, groups = [], []
        core = panel["core"].to_numpy() if "core" in panel else np.zeros(len(panel), dtype=bool)
        study = panel["study_group"].to_numpy() >= 0 if "study_group" in panel else np.zeros(len(panel), dtype=bool)
        for i, e in enumerate(panel["entity_id"].tolist()):
            if e in where:
                split, d = where[e]
                panel.loc[i, ["split", "doc"]] = split, d
                pieces.append((splits[split], labels[split], d, e))
                groups.append(0 if study[i] else 1 if core[i] else 2)
        if not pieces:
            return None, panel
        # the core's rows first; the Latin square's study persons (all in the core) in rows of their own, packed from
        # the same documents in the same order in every corpus of the square, so each study person's probe input
        # (row-mates, offset) is identical across corpora, whatever their exposure
        rows = pack_documents_into_rows(pieces, T, eos_id, groups)
        for r, persons in enumerate(rows.row_persons):
            panel.loc[panel["entity_id"].isin(persons), "row"] = r
    else:  # text: the held-out window holding each entity's first held-out mention
        held = splits["heldout"]
        names = held.spans[held.spans["kind"] == "name"]
        first = names.groupby("entity")["sample_id"].min()
        have = panel["entity_id"].isin(first.index)
        if not have.any():
            return None, panel
        windows = first.loc[panel.loc[have, "entity_id"]].to_numpy(np.int64)
        full = windows < _full_windows(held)
        panel.loc[have, "split"] = "heldout"
        panel.loc[have, "doc"] = np.where(full, windows, -1)
        keep = panel.index[have][full]
        windows = windows[full]
        if "core" in panel:  # the core's rows first
            order = np.argsort(~panel.loc[keep, "core"].to_numpy(), kind="stable")
            keep, windows = keep[order], windows[order]
        if not len(windows):
            return None, panel
        rows = windows_rows(held, labels["heldout"], windows)
        rows.row_persons = [[int(e)] for e in panel.loc[keep, "entity_id"]]
        panel.loc[keep, "row"] = np.arange(len(windows))
    n = len(rows.input_ids)
    core_ids = set(panel.loc[panel["core"], "entity_id"].tolist()) if "core" in panel else set()
    n_core = sum(1 for p in rows.row_persons if p and set(p) <= core_ids)  # the first rows, by construction
    probe = ProbeSet(
        "panel",
        rows.input_ids,
        torch.full((n,), -1, dtype=torch.int64),
        targets=rows.targets,
        labels=_labels(rows),
        row_persons=rows.row_persons,
        core_rows=n_core,
    )
    return probe, panel


def build_probe_sets(
    splits: dict[str, PackedSplit],
    vocab_size: int,
    *,
    eos_id: int,
    entities: pd.DataFrame | None = None,
    canaries: pd.DataFrame | None = None,
    panel: PanelSpec | None = None,
    n_seen: int = 16,
    n_control: int = 8,
    seed: int = 0,
) -> tuple[list[ProbeSet], pd.DataFrame | None]:
    """Draw the density probe sets once, at fit start, from the data alone (never the ledger).

    - ``panel``: the person panel's held-out documents, every position labelled with its role and
      person (:mod:`densitylab.probes.panel`, :mod:`densitylab.probes.roles`); never trained on;
    - ``seen``: ``n_seen`` training windows (``sample_ids`` = their windows), labelled the same way,
      canary positions masked; the trained side of the trained-vs-held-out contrast;
    - ``shuffled``: the first ``n_control`` panel rows with their tokens permuted within each row (same
      unigram content, no order);
    - ``random``: token ids uniform over the vocabulary (``<|endoftext|>`` excluded);
    - ``random_seen``: token ids uniform over the tokens that occur as an input in the training split
      (count > 0; ``<|endoftext|>`` excluded), so the control is not dominated by never-trained embeddings.

    Args:
        splits: packed splits (``train``, ``heldout``, optionally ``unfamiliar``).
        vocab_size: tokenizer vocabulary size.
        eos_id: id of ``<|endoftext|>``.
        entities: the entity table (``planned_docs`` on synthetic data), or None (no panel).
        canaries: the canary table (their positions in ``seen`` get role ``canary``), or None.
        panel: how the panel is drawn (default :class:`PanelSpec`).
        n_seen: training windows in ``seen``.
        n_control: rows per control set.
        seed: seed of the control sets' draws (the panel has its own, ``panel.seed``).
    Returns:
        ``(sets, panel_table)``: the sets in the order above (``panel`` and ``shuffled`` only when the
        data have a panel) and the panel table (:func:`panel_set`; None without entities).
    Raises:
        ValueError: if ``n_seen`` or ``n_control`` < 1.
    """
    for key, v in (("windows_per_set", n_seen), ("control_rows", n_control)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"callbacks.density.{key}={v!r}: expected an integer >= 1")
    spec = panel or PanelSpec()
    rng = np.random.default_rng(seed)
    train = splits["train"]
    w = draw_windows(train, n_seen, rng)
    # the training split is labelled only where the seen windows are (its labels serve nothing else)
    seen_pos = np.minimum(w[:, None] * train.block_size + np.arange(train.block_size), train.n_real - 1)
    labels = {"train": label_stream(train, eos_id, canary_documents(train, canaries), positions=seen_pos.ravel())}
    for s in ("heldout", "unfamiliar"):
        if s in splits:
            labels[s] = label_stream(splits[s], eos_id)
    sets: list[ProbeSet] = []
    plan = exposure_plan(splits, entities)
    table = None
    probe = None
    if plan is not None:
        table = draw_panel(plan, spec)
        probe, table = panel_set(splits, labels, table, eos_id)
        if probe is not None:
            sets.append(probe)
    rows = windows_rows(train, labels["train"], w)
    sets.append(
        ProbeSet(
            "seen",
            rows.input_ids,
            torch.as_tensor(w),
            window_ids=torch.as_tensor(w),
            targets=rows.targets,
            labels=_labels(rows),
            row_persons=rows.row_persons,
        )
    )
    T = train.block_size
    if probe is not None:
        src = probe.input_ids[:n_control]
        perm = torch.as_tensor(np.stack([rng.permutation(T) for _ in range(len(src))]))
        sets.append(ProbeSet("shuffled", torch.gather(src, 1, perm), torch.full((len(src),), -1, dtype=torch.int64)))
    none = torch.full((n_control,), -1, dtype=torch.int64)
    ids = rng.integers(0, vocab_size - 1, size=(n_control, T))
    sets.append(ProbeSet("random", torch.as_tensor(ids + (ids >= eos_id), dtype=torch.int64), none.clone()))
    counts = train.token_counts(minlength=vocab_size)
    counts[eos_id] = 0
    pool = np.flatnonzero(counts > 0)
    sets.append(
        ProbeSet("random_seen", torch.as_tensor(rng.choice(pool, size=(n_control, T)), dtype=torch.int64), none.clone())
    )
    return sets, table


def window_probe_sets(
    windows: Mapping[str, Mapping[str, torch.Tensor]],
    vocab_size: int,
    *,
    eos_id: int | None = None,
    n_control: int = 8,
    seed: int = 0,
) -> list[ProbeSet]:
    """The density probe sets of data without packed text splits (the windows-only mode of
    :class:`~densitylab.callbacks.DensityCallback`, e.g. ``data=uniform``: the Lazy-Neuron control, Li et al.,
    arXiv:2210.06313): no panel, no roles, no persons, every position probed (role ``all``).

    - one set per entry of ``windows``, in its order (``seen``: trained windows, ``sample_ids`` = their
      training ids; ``heldout``: never-trained windows, ``sample_ids`` -1), with their targets;
    - ``random``: ``n_control`` rows of token ids uniform over the vocabulary (``eos_id`` excluded when the
      data have one; uniform data have none), as wide as the windows.

    Args:
        windows: set name -> ``input_ids`` (k, T) int64, ``labels`` (k, T) int64 (next token, -100 none),
            ``sample_id`` (k,) int64 (-1: not a training window) and optionally ``window_id`` (k,) int64 (the
            row's index in its split; default ``0 .. k-1``), e.g.
            :meth:`~densitylab.data.uniform.UniformSequenceDataModule.probe_windows`.
        vocab_size: V.
        eos_id: id of ``<|endoftext|>``, left out of ``random`` (None: no such token).
        n_control: rows of ``random``.
        seed: seed of ``random``'s draw.
    Returns:
        The sets: the windows' sets, then ``random``.
    Raises:
        ValueError: for ``n_control`` < 1, no windows, an empty set, sets of different widths, or a
            vocabulary of fewer than 2 ids.
    """
    if isinstance(n_control, bool) or not isinstance(n_control, int) or n_control < 1:
        raise ValueError(f"callbacks.density.control_rows={n_control!r}: expected an integer >= 1")
    if not windows:
        raise ValueError("density probe windows: expected at least one set of windows (e.g. seen, heldout)")
    n_ids = int(vocab_size) - (eos_id is not None)
    if n_ids < 1 or vocab_size < 2:
        raise ValueError(f"density probe windows: vocab_size={vocab_size}: expected >= 2")
    sets: list[ProbeSet] = []
    widths = set()
    for name, w in windows.items():
        x = torch.as_tensor(w["input_ids"], dtype=torch.int64)
        if x.ndim != 2 or not len(x):
            raise ValueError(
                f"density probe windows {name!r}: input_ids of shape {tuple(x.shape)}: expected (k >= 1, T)"
            )
        widths.add(x.shape[1])
        k = len(x)
        win = w.get("window_id")
        sets.append(
            ProbeSet(
                str(name),
                x,
                torch.as_tensor(w["sample_id"], dtype=torch.int64),
                window_ids=torch.arange(k) if win is None else torch.as_tensor(win, dtype=torch.int64),
                targets=torch.as_tensor(w["labels"], dtype=torch.int64),
            )
        )
    if len(widths) > 1:
        raise ValueError(f"density probe windows: widths {sorted(widths)}: expected one window width")
    (T,) = widths
    ids = np.random.default_rng(seed).integers(0, n_ids, size=(n_control, T))
    if eos_id is not None:
        ids = ids + (ids >= eos_id)
    sets.append(ProbeSet("random", torch.as_tensor(ids, dtype=torch.int64), torch.full((n_control,), -1)))
    return sets


def probe_sets_table(sets: list[ProbeSet]) -> pd.DataFrame:
    """The probe sets as a table for ``probes/probe_sets.parquet``: one row per probe row with
    ``probe_set``, ``row``, ``sample_id``, ``tokens`` (its T input ids), and for labelled sets
    ``roles`` (role name per position, ``""`` where not probed), ``persons``, ``subjects``, ``mentioned``
    (entity ids per position, -1 none) and ``panel_persons`` (the panel persons whose documents the row
    holds)."""
    out = []
    for s in sets:
        lab = s.labels
        for r in range(len(s.input_ids)):
            rec = {"probe_set": s.name, "row": r, "sample_id": int(s.sample_ids[r]), "tokens": s.input_ids[r].tolist()}
            if lab is not None:
                rec["roles"] = [
                    ROLES[c] if p else "" for c, p in zip(lab["role"][r].tolist(), lab["probed"][r].tolist())
                ]
                rec["persons"] = lab["person"][r].tolist()
                rec["subjects"] = lab["subject"][r].tolist()
                rec["mentioned"] = lab["mentioned"][r].tolist()
                rec["panel_persons"] = list(s.row_persons[r]) if s.row_persons else []
            out.append(rec)
    return pd.DataFrame(out)


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
    The last input position counts like any other: its target is the window's extra token (windows hold
    T + 1 tokens), and a span starting the next window is its target; padded targets count for no task.
    """
    N, T = probe.input_ids.shape
    win = probe.window_ids.numpy()
    rows = pd.Series(np.arange(N), index=win)
    spans = packed.spans[packed.spans["sample_id"].isin(rows.index)]
    # a span starting the next window is the target of this window's last input (windows hold T + 1 tokens)
    nxt = packed.spans[packed.spans["sample_id"].isin(win + 1) & (packed.spans["start"] == 0)].copy()
    nxt = nxt[nxt["sample_id"].isin(win + 1)]
    nxt["sample_id"], nxt["start"], nxt["end"] = nxt["sample_id"] - 1, nxt["start"] + T, nxt["end"] + T
    spans = pd.concat([spans, nxt[nxt["sample_id"].isin(rows.index)]], ignore_index=True)
    kinds = sorted(set(spans["kind"])) if len(spans) else []
    masks: dict[str, torch.Tensor] = {}
    targets = (
        probe.targets
        if probe.targets is not None
        else torch.cat([probe.input_ids[:, 1:], torch.full_like(probe.input_ids[:, :1], -100)], 1)
    )

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
            c = token_counts.cpu()[targets.clamp(min=0)].double().log1p()
            edges = torch.quantile(c[targets >= 0], torch.linspace(0, 1, n_freq_buckets + 1, dtype=torch.float64))
            b = torch.bucketize(c, edges[1:-1], right=True)
            for i in range(n_freq_buckets):
                masks[f"freq_{i + 1}"] = b == i
    for k in list(masks):
        masks[k] &= targets >= 0  # padding has no target
        if not masks[k].any():
            del masks[k]
    return masks
