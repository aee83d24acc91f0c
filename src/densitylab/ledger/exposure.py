"""The exposure ledger: exact counts of what the model has trained on (design §4). Pure torch.

Per training step the ledger does two device-side scatter operations and no host-device
synchronisation: ``token`` counts (``index_add`` of ones at the batch's input ids; a bincount) and ``sequence``
counts (``index_add`` of ones at the batch's sample ids, padding windows excluded), plus a running
minimum and maximum (``scatter_reduce`` ``amin`` / ``amax``) of the steps that trained each window: its
first and last step. Every entity count is *derived* exactly from the sequence counts when read, through
fixed window→mention, window→document and window→pair incidence lists built once from the packed data
(:mod:`densitylab.ledger.incidence`):

    mentions[e]      = Σ_{name mentions m of e} sequence[window(m)]
    comentions[e]    = Σ_{name mentions m of e in a document whose subject is not e} sequence[window(m)]
    subject_docs[e]  = Σ_{documents d with subject e} sequence[window(d)]
    distinct_docs[e] = Σ_{documents d with subject e} [sequence[window(d)] > 0]
    cooccurrence[a, b] = Σ_{windows w mentioning both a and b} sequence[w]

A mention belongs to the window holding its first token, and so does a document (its first token),
so: ``mentions`` counts the mentions of e in trained windows (repeats included); ``comentions`` the
part of them inside other people's biographies ("worked with e"); ``subject_docs`` the trainings of
documents about e (a document trained in two epochs counts 2); ``distinct_docs`` the documents about e
trained at least once; a pair's count the trained windows naming both. Being functions of the
sequence counts, all of them are summed over DDP processes and restored from a checkpoint exactly
when the sequence counts are, and cost nothing per step. An entity's first / last step is the min / max
over its mention windows of the windows' first / last steps.

Windows inserted into batches that are not part of the packed split (e.g. new facts of a priming
callback) are counted like any other: :meth:`ExposureLedger.from_packed` appends their
:class:`~densitylab.ledger.incidence.ExtraWindows` blocks after the packed windows (sample ids
``packed.n_windows`` onwards), so every count above covers them.

Under DDP each process counts its own batches into *pending* tensors; :meth:`ExposureLedger.sync`
adds them up across processes with ``all_reduce(SUM)`` (never the default mean) into the totals, and
reduces the first / last steps with ``MIN`` / ``MAX``; the totals are then identical on every process.
Call it before reading, logging or checkpointing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from densitylab.ledger.incidence import ExtraWindows, packed_incidence, with_extra_windows

if TYPE_CHECKING:
    from densitylab.data.packing import PackedSplit

NEVER = torch.iinfo(torch.int64).max


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class ExposureLedger:
    """Exact token / sequence / entity / document / co-mention exposure counts.

    Args:
        vocab_size: V, number of token ids (``token_ids`` must be < V).
        n_windows: number of training windows (sample ids 0..n_windows-1).
        mention_window: (M,) int64 sample id of each entity mention in the training windows.
        mention_entity: (M,) int64 entity id of each mention.
        n_entities: E, number of entities (ids 0..E-1); 0 when there are none.
        device: where the counters live (the training device).
        mention_subject: (M,) int64 subject (entity id) of the document holding each mention, -1 when
            that document has no subject; None = all -1 (then every ``comentions`` is 0).
        doc_window: (D,) int64 sample id of the window holding the first token of each document that
            has a subject; None = no such document (then ``subject_docs``/``distinct_docs`` are 0).
        doc_subject: (D,) int64 subject (entity id) of each of those documents.

    On data without document subjects (text sources: capitalized / gazetteer / spaCy spans, no
    biographies) ``subject_docs``, ``distinct_docs`` and ``comentions`` are 0 for every entity (never
    NaN); ``n_docs == 0`` tells that case apart from a person who simply has no document.

    Attributes (totals after :meth:`sync`; int64):
        token_counts: (V,) input positions holding each token id, padding included.
        sequence_counts: (n_windows,) times each window was trained.
        window_first_step: (n_windows,) first step that trained each window (``NEVER`` if none).
        window_last_step: (n_windows,) last step that trained each window (-1 if none).
        pair_a, pair_b: (P,) the entity pairs (a < b) that share at least one window.
        n_docs: D, number of documents with a subject (python int).

    Raises:
        ValueError: if mention or document arrays differ in length or hold ids out of range.

    Build it from a packed split with :meth:`from_packed`.
    """

    def __init__(
        self,
        vocab_size: int,
        n_windows: int,
        mention_window: torch.Tensor,
        mention_entity: torch.Tensor,
        n_entities: int,
        device: torch.device | str = "cpu",
        *,
        mention_subject: torch.Tensor | None = None,
        doc_window: torch.Tensor | None = None,
        doc_subject: torch.Tensor | None = None,
    ) -> None:
        mention_window = torch.as_tensor(mention_window, dtype=torch.int64).flatten()
        mention_entity = torch.as_tensor(mention_entity, dtype=torch.int64).flatten()
        if mention_subject is None:
            mention_subject = torch.full_like(mention_entity, -1)
        mention_subject = torch.as_tensor(mention_subject, dtype=torch.int64).flatten()
        empty = torch.zeros(0, dtype=torch.int64)
        doc_window = empty if doc_window is None else torch.as_tensor(doc_window, dtype=torch.int64).flatten()
        doc_subject = empty if doc_subject is None else torch.as_tensor(doc_subject, dtype=torch.int64).flatten()
        for name, arr in (("mention_entity", mention_entity), ("mention_subject", mention_subject)):
            if arr.shape != mention_window.shape:
                raise ValueError(
                    f"mention_window {tuple(mention_window.shape)} and {name} {tuple(arr.shape)}: "
                    "expected equal lengths"
                )
        if doc_window.shape != doc_subject.shape:
            raise ValueError(
                f"doc_window {tuple(doc_window.shape)} and doc_subject {tuple(doc_subject.shape)}: "
                "expected equal lengths"
            )
        for name, arr, lo, hi in (
            ("mention_window", mention_window, 0, n_windows),
            ("mention_entity", mention_entity, 0, n_entities),
            ("mention_subject", mention_subject, -1, n_entities),
            ("doc_window", doc_window, 0, n_windows),
            ("doc_subject", doc_subject, 0, n_entities),
        ):
            if len(arr) and (arr.min() < lo or arr.max() >= hi):
                raise ValueError(f"{name} holds ids outside [{lo}, {hi})")
        self.vocab_size, self.n_windows, self.n_entities = int(vocab_size), int(n_windows), int(n_entities)
        self.device = torch.device(device)
        # pairs of distinct entities sharing a window: one incidence row per (window, pair)
        uniq = torch.unique(mention_window * max(n_entities, 1) + mention_entity)
        win, ent = uniq // max(n_entities, 1), uniq % max(n_entities, 1)
        pw, pa, pb = self._window_pairs(win, ent)
        key = pa * max(n_entities, 1) + pb
        pair_keys, pair_index = torch.unique(key, return_inverse=True)
        self.pair_a, self.pair_b = pair_keys // max(n_entities, 1), pair_keys % max(n_entities, 1)
        self._mention_window, self._mention_entity = mention_window.to(self.device), mention_entity.to(self.device)
        self._pair_window, self._pair_index = pw.to(self.device), pair_index.to(self.device)
        comention = (mention_subject >= 0) & (mention_subject != mention_entity)  # in another person's document
        self._comention_window = mention_window[comention].to(self.device)
        self._comention_entity = mention_entity[comention].to(self.device)
        self.n_docs = len(doc_window)
        self._doc_window, self._doc_subject = doc_window.to(self.device), doc_subject.to(self.device)
        z = dict(dtype=torch.int64, device=self.device)
        self.token_counts = torch.zeros(self.vocab_size, **z)
        self.sequence_counts = torch.zeros(self.n_windows, **z)
        self.window_first_step = torch.full((self.n_windows,), NEVER, **z)
        self.window_last_step = torch.full((self.n_windows,), -1, **z)
        self._pending_tokens = torch.zeros(self.vocab_size, **z)
        self._pending_sequences = torch.zeros(self.n_windows, **z)

    @classmethod
    def from_packed(
        cls,
        packed: PackedSplit,
        vocab_size: int,
        n_entities: int,
        device: torch.device | str = "cpu",
        extra: Sequence[ExtraWindows] = (),
    ) -> ExposureLedger:
        """The ledger of a packed training split: mentions, their documents' subjects and the subject
        documents' first windows from :func:`~densitylab.ledger.incidence.packed_incidence`.

        Args:
            packed: the training split (its sample ids 0..packed.n_windows-1 are the ledger's first windows).
            vocab_size: V, the model's vocabulary size.
            n_entities: E, entities in the entity table (0 when there is none).
            device: the training device.
            extra: blocks of windows outside the packed split, appended in order: block ``j``'s local window
                ids are offset by ``packed.n_windows + Σ_{i<j} extra[i].n_windows``
                (:func:`~densitylab.ledger.incidence.extra_window_starts`), and the ledger's ``n_windows``
                is ``packed.n_windows + Σ_j extra[j].n_windows``. Their mentions, pairs, co-mentions and
                documents count exactly as the packed windows' do. Empty (default): the packed split only.
        Raises:
            ValueError: see :func:`~densitylab.ledger.incidence.packed_incidence` and the constructor
                (e.g. an extra block's entity id >= E).
            TypeError: if an element of ``extra`` is not an ``ExtraWindows``.
        """
        inc, n_windows = with_extra_windows(packed_incidence(packed), packed.n_windows, extra)
        t = torch.from_numpy
        return cls(
            vocab_size,
            n_windows,
            t(inc.mention_window),
            t(inc.mention_entity),
            n_entities,
            device,
            mention_subject=t(inc.mention_subject),
            doc_window=t(inc.doc_window),
            doc_subject=t(inc.doc_subject),
        )

    @staticmethod
    def _window_pairs(win: torch.Tensor, ent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """All (window, a, b) with a < b both mentioned in the window; input sorted by window."""
        if win.numel() == 0:
            e = torch.zeros(0, dtype=torch.int64)
            return e, e, e
        counts = torch.unique_consecutive(win, return_counts=True)[1]
        starts = torch.cumsum(counts, 0) - counts
        ws, as_, bs = [], [], []
        for k in torch.unique(counts).tolist():  # group windows by how many distinct entities they hold
            if k < 2:
                continue
            sel = starts[counts == k]
            block = sel[:, None] + torch.arange(k)  # (n_windows_with_k, k) positions into win/ent
            i, j = torch.triu_indices(k, k, offset=1)
            ws.append(win[block[:, 0]].repeat_interleave(len(i)))
            as_.append(ent[block[:, i]].flatten())
            bs.append(ent[block[:, j]].flatten())
        if not ws:
            e = torch.zeros(0, dtype=torch.int64)
            return e, e, e
        return torch.cat(ws), torch.cat(as_), torch.cat(bs)

    # ------------------------------------------------------------------ per step (no sync)
    @torch.no_grad()
    def update(self, input_ids: torch.Tensor, sample_ids: torch.Tensor, step: int) -> None:
        """Count one training batch. No host-device synchronisation.

        Args:
            input_ids: (B, T) int64 token ids the model received as inputs.
            sample_ids: (B,) int64 window ids; negative ids (padding windows) count tokens only.
            step: the training step that trained this batch (1-based ``trainer.global_step``).
        """
        ids = input_ids.reshape(-1)
        self._pending_tokens.index_add_(0, ids, torch.ones_like(ids))  # bincount would sync on CUDA
        sid = sample_ids.reshape(-1)
        valid = sid >= 0
        idx = sid.clamp(min=0)
        self._pending_sequences.index_add_(0, idx, valid.to(torch.int64))
        now = torch.full_like(sid, step)
        steps = torch.where(valid, now, torch.full_like(sid, NEVER))
        self.window_first_step.scatter_reduce_(0, idx, steps, reduce="amin")
        self.window_last_step.scatter_reduce_(0, idx, torch.where(valid, now, torch.full_like(sid, -1)), reduce="amax")

    # ------------------------------------------------------------------ reduction
    @torch.no_grad()
    def sync(self) -> None:
        """Fold pending counts into the totals, summed over all DDP processes (a collective call:
        every process must call it at the same point). Without DDP it is a local add."""
        if _distributed():
            dist.all_reduce(self._pending_tokens, op=dist.ReduceOp.SUM)
            dist.all_reduce(self._pending_sequences, op=dist.ReduceOp.SUM)
            dist.all_reduce(self.window_first_step, op=dist.ReduceOp.MIN)
            dist.all_reduce(self.window_last_step, op=dist.ReduceOp.MAX)
        self.token_counts += self._pending_tokens
        self.sequence_counts += self._pending_sequences
        self._pending_tokens.zero_()
        self._pending_sequences.zero_()

    # ------------------------------------------------------------------ derived counts
    def entity_mentions(self) -> torch.Tensor:
        """(E,) int64 mentions of each entity in trained windows (call :meth:`sync` first)."""
        out = torch.zeros(self.n_entities, dtype=torch.int64, device=self.device)
        return out.index_add_(0, self._mention_entity, self.sequence_counts[self._mention_window])

    def entity_first_step(self) -> torch.Tensor:
        """(E,) int64 first step whose batch mentioned each entity (``NEVER`` if none yet)."""
        out = torch.full((self.n_entities,), NEVER, dtype=torch.int64, device=self.device)
        return out.scatter_reduce_(0, self._mention_entity, self.window_first_step[self._mention_window], reduce="amin")

    def entity_last_step(self) -> torch.Tensor:
        """(E,) int64 last step whose batch mentioned each entity: the max over its mention windows of
        ``window_last_step`` (-1 if none yet)."""
        out = torch.full((self.n_entities,), -1, dtype=torch.int64, device=self.device)
        return out.scatter_reduce_(0, self._mention_entity, self.window_last_step[self._mention_window], reduce="amax")

    def entity_comentions(self) -> torch.Tensor:
        """(E,) int64 mentions of each entity in trained windows inside documents whose subject is another
        entity (a part of :meth:`entity_mentions`; 0 on data without document subjects)."""
        out = torch.zeros(self.n_entities, dtype=torch.int64, device=self.device)
        return out.index_add_(0, self._comention_entity, self.sequence_counts[self._comention_window])

    def entity_subject_docs(self) -> torch.Tensor:
        """(E,) int64 trainings of documents about each entity, repeats included: Σ over its documents of
        the times the window holding the document's first token was trained (0 without subjects)."""
        out = torch.zeros(self.n_entities, dtype=torch.int64, device=self.device)
        return out.index_add_(0, self._doc_subject, self.sequence_counts[self._doc_window])

    def entity_distinct_docs(self) -> torch.Tensor:
        """(E,) int64 documents about each entity whose first token's window was trained at least once
        (<= :meth:`entity_subject_docs`; 0 without subjects)."""
        out = torch.zeros(self.n_entities, dtype=torch.int64, device=self.device)
        seen = (self.sequence_counts[self._doc_window] > 0).to(torch.int64)
        return out.index_add_(0, self._doc_subject, seen)

    def cooccurrence(self) -> torch.Tensor:
        """(P,) int64 trained windows naming both ``pair_a[p]`` and ``pair_b[p]``."""
        out = torch.zeros(len(self.pair_a), dtype=torch.int64, device=self.device)
        return out.index_add_(0, self._pair_index, self.sequence_counts[self._pair_window])

    def padding_tokens(self, block_size: int) -> torch.Tensor:
        """() int64 input positions that belonged to padding windows (all ``<|endoftext|>``; they are
        included in ``token_counts``): tokens seen − block_size × windows trained."""
        return self.token_counts.sum() - block_size * self.sequence_counts.sum()

    def summary(self, block_size: int | None = None) -> dict[str, int]:
        """Headline counts (python ints; one device-to-host copy): tokens_seen (input positions,
        padding included), distinct_tokens_seen, windows_seen (distinct), entities_seen (distinct),
        mentions_seen, and padding_tokens when ``block_size`` is given."""
        mentions = self.entity_mentions()
        parts = [
            self.token_counts.sum(),
            (self.token_counts > 0).sum(),
            (self.sequence_counts > 0).sum(),
            (mentions > 0).sum(),
            mentions.sum(),
        ]
        names = ["tokens_seen", "distinct_tokens_seen", "windows_seen", "entities_seen", "mentions_seen"]
        if block_size is not None:
            parts.append(self.padding_tokens(block_size))
            names.append("padding_tokens")
        return dict(zip(names, torch.stack(parts).tolist()))

    # ------------------------------------------------------------------ probes
    @torch.no_grad()
    def familiarity(
        self,
        input_ids: torch.Tensor,
        sample_ids: torch.Tensor | None = None,
        spans: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Per-position exposure counts of probe windows at the current step.

        Args:
            input_ids: (B, T) token ids.
            sample_ids: (B,) training window ids of the rows, or -1 for windows that are not training
                windows (held-out, shuffled, random); None = all -1.
            spans: ``(row, start, end, entity)`` int64 tensors (N,) of entity mentions in the rows:
                positions ``start <= t < end`` of row ``row`` belong to ``entity`` (clipped to T).
        Returns:
            ``token`` (B, T): exposures of each position's input token; ``sequence`` (B, T): times
            the row's window was trained (0 for non-training windows); ``entity`` (B, T): mentions of
            the entity the position belongs to, -1 outside mentions. All int64.
        """
        B, T = input_ids.shape
        dev = self.device
        token = self.token_counts[input_ids.to(dev)]
        seq = torch.zeros(B, dtype=torch.int64, device=dev)
        if sample_ids is not None:
            sid = sample_ids.to(dev)
            ok = (sid >= 0) & (sid < self.n_windows)
            seq = torch.where(ok, self.sequence_counts[sid.clamp(0, self.n_windows - 1)], seq)
        entity = torch.full((B, T), -1, dtype=torch.int64, device=dev)
        if spans is not None and len(spans[0]):
            row, start, end, ent = (torch.as_tensor(s, dtype=torch.int64, device=dev) for s in spans)
            start, end = start.clamp(0, T), end.clamp(0, T)
            length = (end - start).clamp(min=0)
            pos = torch.repeat_interleave(start, length) + (
                torch.arange(int(length.sum()), device=dev)
                - torch.repeat_interleave(torch.cumsum(length, 0) - length, length)
            )
            entity[torch.repeat_interleave(row, length), pos] = self.entity_mentions()[
                torch.repeat_interleave(ent, length)
            ]
        return {"token": token, "sequence": seq[:, None].expand(B, T), "entity": entity}

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, torch.Tensor | int]:
        """Totals on CPU (call :meth:`sync` first so nothing is pending). The entity counts are derived
        from ``sequence_counts``, so they need no state of their own."""
        return {
            "token_counts": self.token_counts.detach().cpu().clone(),
            "sequence_counts": self.sequence_counts.detach().cpu().clone(),
            "window_first_step": self.window_first_step.detach().cpu().clone(),
            "window_last_step": self.window_last_step.detach().cpu().clone(),
            "vocab_size": self.vocab_size,
            "n_windows": self.n_windows,
            "n_entities": self.n_entities,
            "n_docs": self.n_docs,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore totals saved by :meth:`state_dict`.

        A checkpoint written before ``window_last_step`` existed lacks it: each trained window's last step
        is then set to its first step (``sequence_counts > 0``; a lower bound of the true last step, exact
        for windows trained once), -1 for the others; later updates raise it as usual.

        Raises:
            ValueError: if the saved ledger was built for different data (sizes differ; ``n_docs`` is
                checked when the checkpoint has it, older checkpoints lack it).
        """
        for k in ("vocab_size", "n_windows", "n_entities", "n_docs"):
            if (k in state or k != "n_docs") and int(state[k]) != getattr(self, k):
                raise ValueError(
                    f"ledger checkpoint has {k}={int(state[k])} but this run has {getattr(self, k)}: expected the "
                    "same data and tokenizer"
                )
        self.token_counts.copy_(state["token_counts"])
        self.sequence_counts.copy_(state["sequence_counts"])
        self.window_first_step.copy_(state["window_first_step"])
        if "window_last_step" in state:
            self.window_last_step.copy_(state["window_last_step"])
        else:  # older checkpoint: the first step is a lower bound of the last one
            trained = self.sequence_counts > 0
            self.window_last_step.copy_(
                torch.where(trained, self.window_first_step, torch.full_like(trained, -1, dtype=torch.int64))
            )
        self._pending_tokens.zero_()
        self._pending_sequences.zero_()
