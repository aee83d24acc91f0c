"""Exposure ledger: exact counts, derived entity / pair counts, familiarity lookup, DDP sum, state."""

from __future__ import annotations

import os
import socket
from dataclasses import asdict, replace
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from densitylab.callbacks import LedgerCallback
from densitylab.data import DataModule
from densitylab.data.corpus import Corpus
from densitylab.data.entities import SyntheticEntities, capitalized_mentions, extract_gazetteer
from densitylab.data.packing import PackedSplit
from densitylab.data.sources import SyntheticSource
from densitylab.data.synthetic import sample_population
from densitylab.data.synthetic.generate import plan_documents
from densitylab.data.tokenizer import TrainedBPE
from densitylab.ledger import (
    NEVER,
    ExposureLedger,
    ExtraWindows,
    extra_window_starts,
    ledger_tables,
    packed_incidence,
    with_extra_windows,
    write_ledger,
)
from densitylab.report.ledger import plot_rank_frequency

# 4 windows; mentions: window 0 -> e0, e1, e1 ; window 1 -> e2 ; window 2 -> e0, e2 ; window 3 -> none
MENTION_WINDOW = torch.tensor([0, 0, 0, 1, 2, 2])
MENTION_ENTITY = torch.tensor([0, 1, 1, 2, 0, 2])
# documents with a subject: doc A about e1 starts in window 0 (its mentions: e0, e1, e1), doc B about e1
# starts in window 0 too (it spans windows 0-1; mention e2 in window 1), doc C about e2 starts in window 2
# (mentions e0, e2); window 3 starts a document without a subject
MENTION_SUBJECT = torch.tensor([1, 1, 1, 1, 2, 2])
DOC_WINDOW = torch.tensor([0, 0, 2])
DOC_SUBJECT = torch.tensor([1, 1, 2])


def make_ledger() -> ExposureLedger:
    return ExposureLedger(
        vocab_size=10,
        n_windows=4,
        mention_window=MENTION_WINDOW,
        mention_entity=MENTION_ENTITY,
        n_entities=3,
        mention_subject=MENTION_SUBJECT,
        doc_window=DOC_WINDOW,
        doc_subject=DOC_SUBJECT,
    )


def test_pairs_are_the_entity_pairs_sharing_a_window():
    led = make_ledger()
    assert sorted(zip(led.pair_a.tolist(), led.pair_b.tolist())) == [(0, 1), (0, 2)]


def test_update_counts_tokens_windows_mentions_pairs_and_first_step():
    led = make_ledger()
    x1 = torch.tensor([[1, 2, 2], [3, 3, 3]])
    led.update(x1, torch.tensor([0, 2]), step=1)
    x2 = torch.tensor([[1, 1, 9], [0, 0, 0]])
    led.update(x2, torch.tensor([0, -1]), step=2)  # second row: a padding window
    led.sync()
    assert led.token_counts.tolist() == [3, 3, 2, 3, 0, 0, 0, 0, 0, 1]
    assert led.sequence_counts.tolist() == [2, 0, 1, 0]
    assert led.window_first_step.tolist() == [1, NEVER, 1, NEVER]
    assert led.window_last_step.tolist() == [2, -1, 1, -1]  # the padding row of step 2 changes nothing
    assert led.entity_mentions().tolist() == [2 * 1 + 1 * 1, 2 * 2, 1]  # e0: w0 twice + w2 once
    co = dict(zip(zip(led.pair_a.tolist(), led.pair_b.tolist()), led.cooccurrence().tolist()))
    assert co == {(0, 1): 2, (0, 2): 1}
    assert led.entity_first_step().tolist() == [1, 1, 1]
    assert led.entity_last_step().tolist() == [2, 2, 1]  # e2: w1 never trained, w2 at step 1
    # w0 trained twice: docs A and B (about e1) count 2 each; w2 once: doc C (about e2); w1 never
    assert led.entity_subject_docs().tolist() == [0, 2 * 2, 1]
    assert led.entity_distinct_docs().tolist() == [0, 2, 1]
    # mentions in other people's documents: e0 in A (w0, x2) and in C (w2, x1); e2 in B (w1, untrained)
    assert led.entity_comentions().tolist() == [2 + 1, 0, 0]
    s = led.summary(block_size=3)
    assert s == {
        "tokens_seen": 12,
        "distinct_tokens_seen": 5,
        "windows_seen": 2,
        "entities_seen": 3,
        "mentions_seen": 8,
        "padding_tokens": 3,
    }


def test_nothing_is_counted_before_sync_and_sync_is_idempotent():
    led = make_ledger()
    led.update(torch.tensor([[1, 2]]), torch.tensor([1]), step=1)
    assert led.token_counts.sum() == 0
    led.sync()
    led.sync()
    assert led.token_counts.sum() == 2 and led.sequence_counts.tolist() == [0, 1, 0, 0]


def test_familiarity_lookup_per_position():
    led = make_ledger()
    led.update(torch.tensor([[1, 2, 3, 4]]), torch.tensor([0]), step=1)
    led.update(torch.tensor([[1, 1, 1, 1]]), torch.tensor([0]), step=2)
    led.sync()
    probe = torch.tensor([[1, 4, 5, 2], [2, 2, 2, 2]])
    fam = led.familiarity(
        probe,
        torch.tensor([0, -1]),
        spans=(torch.tensor([0, 1]), torch.tensor([1, 2]), torch.tensor([3, 9]), torch.tensor([1, 0])),
    )
    assert fam["token"].tolist() == [[5, 1, 0, 1], [1, 1, 1, 1]]
    assert fam["sequence"].tolist() == [[2, 2, 2, 2], [0, 0, 0, 0]]
    # e1 has 2 mentions in window 0, trained twice -> 4; e0 has 1 mention in w0 -> 2; end clipped to T
    assert fam["entity"].tolist() == [[-1, 4, 4, -1], [-1, -1, 2, 2]]


def test_state_dict_round_trip_and_mismatch():
    led = make_ledger()
    led.update(torch.tensor([[1, 2]]), torch.tensor([2]), step=5)
    led.sync()
    other = make_ledger()
    other.load_state_dict(led.state_dict())
    assert torch.equal(other.token_counts, led.token_counts)
    assert torch.equal(other.entity_mentions(), led.entity_mentions())
    assert other.window_first_step.tolist() == led.window_first_step.tolist()
    assert other.window_last_step.tolist() == led.window_last_step.tolist() == [-1, -1, 5, -1]
    wrong = ExposureLedger(11, 4, MENTION_WINDOW, MENTION_ENTITY, 3)
    with pytest.raises(ValueError, match="vocab_size"):
        wrong.load_state_dict(led.state_dict())
    no_docs = ExposureLedger(10, 4, MENTION_WINDOW, MENTION_ENTITY, 3)
    with pytest.raises(ValueError, match="n_docs"):
        no_docs.load_state_dict(led.state_dict())
    old_checkpoint = {k: v for k, v in led.state_dict().items() if k != "n_docs"}  # written before n_docs existed
    again = make_ledger()
    again.load_state_dict(old_checkpoint)
    assert torch.equal(again.entity_subject_docs(), led.entity_subject_docs())


def test_a_checkpoint_without_last_steps_falls_back_to_the_first_steps():
    led = make_ledger()
    led.update(torch.tensor([[1, 2], [3, 4]]), torch.tensor([0, 2]), step=2)
    led.update(torch.tensor([[1, 2], [0, 0]]), torch.tensor([0, -1]), step=7)
    led.sync()
    assert led.window_last_step.tolist() == [7, -1, 2, -1]
    old = {k: v for k, v in led.state_dict().items() if k != "window_last_step"}  # written before last steps
    again = make_ledger()
    again.load_state_dict(old)
    # a lower bound: window 0 was last trained at step 7, the old checkpoint only knows its first step
    assert again.window_last_step.tolist() == [2, -1, 2, -1]
    assert torch.equal(again.window_first_step, led.window_first_step)
    again.update(torch.tensor([[1, 2]]), torch.tensor([2]), step=9)  # later updates raise it as usual
    again.sync()
    assert again.window_last_step.tolist() == [2, -1, 9, -1] and again.entity_last_step().tolist() == [9, 2, 9]


def test_resumed_ledger_ends_with_the_counts_of_an_uninterrupted_one():
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randint(0, 10, (2, 3), generator=g), torch.randint(-1, 4, (2,), generator=g)) for _ in range(9)]
    whole = make_ledger()
    for step, (x, sid) in enumerate(batches, start=1):
        whole.update(x, sid, step)
    whole.sync()
    first = make_ledger()
    for step, (x, sid) in enumerate(batches[:4], start=1):
        first.update(x, sid, step)
    first.sync()
    resumed = make_ledger()
    resumed.load_state_dict(first.state_dict())
    for step, (x, sid) in enumerate(batches[4:], start=5):
        resumed.update(x, sid, step)
    resumed.sync()
    for name in (
        "entity_mentions",
        "entity_subject_docs",
        "entity_distinct_docs",
        "entity_comentions",
        "entity_first_step",
        "entity_last_step",
    ):
        assert torch.equal(getattr(resumed, name)(), getattr(whole, name)()), name
    assert torch.equal(resumed.window_last_step, whole.window_last_step)
    assert whole.entity_subject_docs().sum() > 0


def test_bad_mentions_raise():
    with pytest.raises(ValueError, match="equal lengths"):
        ExposureLedger(10, 4, torch.tensor([0, 1]), torch.tensor([0]), 3)
    with pytest.raises(ValueError, match="outside"):
        ExposureLedger(10, 4, torch.tensor([4]), torch.tensor([0]), 3)
    with pytest.raises(ValueError, match="mention_subject.*equal lengths"):
        ExposureLedger(10, 4, torch.tensor([0]), torch.tensor([0]), 3, mention_subject=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"mention_subject holds ids outside \[-1, 3\)"):
        ExposureLedger(10, 4, torch.tensor([0]), torch.tensor([0]), 3, mention_subject=torch.tensor([-2]))
    with pytest.raises(ValueError, match="doc_window.*equal lengths"):
        ExposureLedger(10, 4, torch.tensor([0]), torch.tensor([0]), 3, doc_window=torch.tensor([0]))
    with pytest.raises(ValueError, match="doc_window holds ids outside"):
        ExposureLedger(
            10, 4, MENTION_WINDOW, MENTION_ENTITY, 3, doc_window=torch.tensor([4]), doc_subject=torch.tensor([0])
        )
    with pytest.raises(ValueError, match="doc_subject holds ids outside"):
        ExposureLedger(
            10, 4, MENTION_WINDOW, MENTION_ENTITY, 3, doc_window=torch.tensor([0]), doc_subject=torch.tensor([3])
        )


# ----------------------------------------------------------------------------- extra (inserted) windows
def tiny_packed() -> PackedSplit:
    """2 packed windows of 4 tokens, one document, one name span: entity 0 in window 1."""
    spans = pd.DataFrame({"sample_id": [1], "start": [0], "end": [1], "kind": ["name"], "entity": [0], "doc": [0]})
    return PackedSplit(torch.zeros(9, dtype=torch.int64), 9, 4, np.array([0, 9], dtype=np.int64), spans)


def block_a() -> ExtraWindows:
    """3 windows: w0 -> e1, e2 in a document about e1 (starting in w0); w1 -> e0 in that document;
    w2 -> e2 in a document about e2 (starting in w2)."""
    return ExtraWindows(
        n_windows=3,
        mention_window=np.array([0, 0, 1, 2]),
        mention_entity=np.array([1, 2, 0, 2]),
        mention_subject=np.array([1, 1, 1, 2]),
        doc_window=np.array([0, 2]),
        doc_subject=np.array([1, 2]),
    )


def test_extra_windows_count_exactly_like_packed_ones():
    led = ExposureLedger.from_packed(tiny_packed(), vocab_size=10, n_entities=3, extra=[block_a()])
    assert led.n_windows == 2 + 3 and led.n_docs == 2  # block a = global windows 2, 3, 4
    assert list(zip(led.pair_a.tolist(), led.pair_b.tolist())) == [(1, 2)]
    x = torch.zeros(2, 4, dtype=torch.int64)
    led.update(x, torch.tensor([2, 0]), step=1)
    led.update(x, torch.tensor([2, 4]), step=3)
    led.update(x, torch.tensor([-1, 1]), step=4)
    led.sync()
    assert led.sequence_counts.tolist() == [1, 1, 2, 0, 1]
    assert led.window_first_step.tolist() == [1, 4, 1, NEVER, 3]
    assert led.window_last_step.tolist() == [1, 4, 3, -1, 3]
    assert led.entity_mentions().tolist() == [1, 2, 2 + 1]  # e0: packed w1; e1: w2 twice; e2: w2 twice, w4 once
    assert led.entity_subject_docs().tolist() == [0, 2, 1] and led.entity_distinct_docs().tolist() == [0, 1, 1]
    assert led.entity_comentions().tolist() == [0, 0, 2]  # e2 in the document about e1 (w2); e0's w3 untrained
    assert led.cooccurrence().tolist() == [2]
    assert led.entity_first_step().tolist() == [4, 1, 1] and led.entity_last_step().tolist() == [4, 3, 3]
    plain = ExposureLedger.from_packed(tiny_packed(), vocab_size=10, n_entities=3)
    assert plain.n_windows == 2 and plain.n_docs == 0 and len(plain.pair_a) == 0


def test_extra_blocks_are_offset_one_after_another():
    b = ExtraWindows(n_windows=2, mention_window=np.array([1]), mention_entity=np.array([0]))
    empty = ExtraWindows(n_windows=0)
    assert extra_window_starts(2, [block_a(), empty, b]).tolist() == [2, 5, 5]
    assert extra_window_starts(2, []).tolist() == []
    inc, n = with_extra_windows(packed_incidence(tiny_packed()), 2, [block_a(), empty, b])
    assert n == 7 and inc.mention_window.tolist() == [1, 2, 2, 3, 4, 6] and inc.doc_window.tolist() == [2, 4]
    assert inc.mention_subject.tolist() == [-1, 1, 1, 1, 2, -1] and inc.mention_window.dtype == np.int64
    led = ExposureLedger.from_packed(tiny_packed(), 10, 3, extra=(block_a(), empty, b))
    assert led.n_windows == 7
    x = torch.zeros(1, 4, dtype=torch.int64)
    led.update(x, torch.tensor([5]), step=1)  # block b's window 0: no mention
    led.sync()
    assert led.entity_mentions().tolist() == [0, 0, 0]
    led.update(x, torch.tensor([6]), step=2)  # block b's window 1: e0
    led.sync()
    assert led.entity_mentions().tolist() == [1, 0, 0] and led.entity_last_step().tolist() == [2, -1, -1]
    with pytest.raises(TypeError, match="expected an ExtraWindows"):
        ExposureLedger.from_packed(tiny_packed(), 10, 3, extra=[packed_incidence(tiny_packed())])


def test_bad_extra_windows_raise():
    with pytest.raises(ValueError, match="mention_entity.*equal lengths"):
        ExtraWindows(2, mention_window=np.array([0, 1]), mention_entity=np.array([0]))
    with pytest.raises(ValueError, match="mention_subject.*equal lengths"):
        ExtraWindows(2, np.array([0]), np.array([0]), mention_subject=np.array([0, 1]))
    with pytest.raises(ValueError, match="doc_window.*equal lengths"):
        ExtraWindows(2, doc_window=np.array([0]))
    with pytest.raises(ValueError, match=r"mention_window holds ids outside \[0, 2\)"):
        ExtraWindows(2, mention_window=np.array([2]), mention_entity=np.array([0]))
    with pytest.raises(ValueError, match=r"doc_window holds ids outside \[0, 2\)"):
        ExtraWindows(2, doc_window=np.array([-1]), doc_subject=np.array([0]))
    with pytest.raises(ValueError, match="mention_entity holds ids outside"):
        ExtraWindows(2, mention_window=np.array([0]), mention_entity=np.array([-1]))
    with pytest.raises(ValueError, match="mention_subject holds ids outside"):
        ExtraWindows(2, np.array([0]), np.array([0]), mention_subject=np.array([-2]))
    with pytest.raises(ValueError, match="n_windows=-1"):
        ExtraWindows(-1)
    with pytest.raises(ValueError, match="expected 1-D"):
        ExtraWindows(2, mention_window=np.zeros((1, 1)), mention_entity=np.zeros((1, 1)))
    too_big = ExtraWindows(1, mention_window=np.array([0]), mention_entity=np.array([3]))  # E is checked later
    with pytest.raises(ValueError, match=r"mention_entity holds ids outside \[0, 3\)"):
        ExposureLedger.from_packed(tiny_packed(), 10, 3, extra=[too_big])


class _Inserter:
    """A callback inserting windows of its own: records the first_window it was given."""

    def __init__(self, block: ExtraWindows | None) -> None:
        self.block, self.first_window = block, None

    def ledger_windows(self, trainer, first_window: int) -> ExtraWindows | None:
        self.first_window = first_window
        return self.block


def _fit_start(cb: LedgerCallback, inserters: list) -> None:
    dm = SimpleNamespace(
        splits={"train": tiny_packed()},
        entity_table=pd.DataFrame({"entity_id": [0, 1, 2], "entity": ["Zed", "Amy", "Bob"]}),
        tokenizer=None,
    )
    trainer = SimpleNamespace(datamodule=dm, callbacks=[*inserters, cb, object()])
    module = SimpleNamespace(model=SimpleNamespace(config=SimpleNamespace(vocab_size=10)), device=torch.device("cpu"))
    cb.on_fit_start(trainer, module)


def test_ledger_callback_counts_the_windows_other_callbacks_insert():
    b = ExtraWindows(n_windows=2, mention_window=np.array([1]), mention_entity=np.array([0]))
    first, none, second = _Inserter(block_a()), _Inserter(None), _Inserter(b)
    cb = LedgerCallback()
    _fit_start(cb, [first, none, second])
    assert (first.first_window, none.first_window, second.first_window) == (2, 5, 5)
    assert cb.ledger.n_windows == 7 and cb.ledger.n_docs == 2
    cb.ledger.update(torch.zeros(2, 4, dtype=torch.int64), torch.tensor([2, 6]), step=3)
    cb.ledger.sync()
    assert cb.ledger.entity_mentions().tolist() == [1, 1, 1]
    state = cb.state_dict()
    resumed = LedgerCallback()  # same config: the pending state fits the longer counters exactly
    resumed.load_state_dict(state)
    _fit_start(resumed, [_Inserter(block_a()), _Inserter(None), _Inserter(b)])
    assert torch.equal(resumed.ledger.sequence_counts, cb.ledger.sequence_counts)
    assert resumed.ledger.entity_last_step().tolist() == [3, 3, 3]
    plain = LedgerCallback()  # without the inserters: the packed windows only
    _fit_start(plain, [])
    assert plain.ledger.n_windows == 2
    mismatch = LedgerCallback()
    mismatch.load_state_dict(state)
    with pytest.raises(ValueError, match="n_windows=7"):
        _fit_start(mismatch, [])
    with pytest.raises(TypeError, match="_Inserter.ledger_windows returned a int"):
        _fit_start(LedgerCallback(), [_Inserter(3)])


def test_tables_and_plot(tmp_path):
    led = make_ledger()
    led.update(torch.tensor([[1, 2, 3]]), torch.tensor([0]), step=3)
    led.sync()
    tables = ledger_tables(led, lambda i: f"t{i}", ["Zed", "Amy", "Bob"])
    assert tables["tokens"]["count"].sum() == 3 and tables["tokens"].loc[1, "token"] == "t1"
    ent = tables["entities"].set_index("entity")
    assert ent.loc["Zed", "mentions"] == 1 and ent.loc["Amy", "mentions"] == 2 and ent.loc["Bob", "mentions"] == 0
    assert ent.loc["Zed", "first_step"] == 3 and pd.isna(ent.loc["Bob", "first_step"])
    assert ent.loc["Zed", "last_step"] == 3 and pd.isna(ent.loc["Bob", "last_step"])
    assert list(tables["entities"].columns) == [
        "entity_id", "entity", "mentions", "first_step", "last_step", "subject_docs", "distinct_docs", "comentions",
    ]  # fmt: skip
    assert tables["entities"]["first_step"].dtype == "Int64" and tables["entities"]["last_step"].dtype == "Int64"
    for col in ("mentions", "subject_docs", "distinct_docs", "comentions"):
        assert tables["entities"][col].dtype == "int64", col
    assert ent["subject_docs"].tolist() == [0, 2, 0] and ent["distinct_docs"].tolist() == [0, 2, 0]
    assert ent["comentions"].tolist() == [1, 0, 0]  # Zed (e0) named once in a document about Amy (e1)
    co = tables["cooccurrence"]
    assert co[["entity_a", "entity_b", "count"]].values.tolist() == [["Amy", "Zed", 1]]  # alphabetical order
    write_ledger(tables, tmp_path / "ledger")
    assert pd.read_parquet(tmp_path / "ledger" / "entities.parquet").equals(tables["entities"])
    assert plot_rank_frequency(tables, tmp_path / "plots" / "z.png", step=3) == tmp_path / "plots" / "z.png"
    assert (tmp_path / "plots" / "z.png").stat().st_size > 1000
    assert [f.name for f in (tmp_path / "plots").iterdir()] == ["z.png"]  # atomic: no temporary file left
    assert not list((tmp_path / "ledger").glob("*.tmp*"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, batches, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        led = make_ledger()
        for step, (x, sid) in enumerate(batches[rank::world], start=1):
            led.update(x, sid, step)
        led.sync()
        led.sync()  # a second sync must not double count
        counts = {k: v.clone() for k, v in led.state_dict().items() if isinstance(v, torch.Tensor)}
        counts.update(
            subject_docs=led.entity_subject_docs(),
            distinct_docs=led.entity_distinct_docs(),
            comentions=led.entity_comentions(),
        )
        out[rank] = counts  # a Manager dict stores a copy: assign once, complete
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # kept out of make test-fast (3 min budget); still run by make test
def test_two_processes_sum_to_the_single_process_counts():
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randint(0, 10, (2, 5), generator=g), torch.randint(-1, 4, (2,), generator=g)) for _ in range(8)]
    single = make_ledger()
    for step, (x, sid) in enumerate(batches, start=1):
        single.update(x, sid, (step + 1) // 2)  # the step at which each batch is trained with 2 processes
    single.sync()
    out = mp.Manager().dict()
    mp.spawn(_ddp_worker, args=(2, _free_port(), batches, out), nprocs=2, join=True)
    for rank in range(2):
        assert torch.equal(out[rank]["token_counts"], single.token_counts)
        assert torch.equal(out[rank]["sequence_counts"], single.sequence_counts)
        assert torch.equal(out[rank]["window_first_step"], single.window_first_step)
        assert torch.equal(out[rank]["window_last_step"], single.window_last_step)
        assert torch.equal(out[rank]["subject_docs"], single.entity_subject_docs())
        assert torch.equal(out[rank]["distinct_docs"], single.entity_distinct_docs())
        assert torch.equal(out[rank]["comentions"], single.entity_comentions())


def test_capitalized_mentions_skip_sentence_and_line_starts():
    text = 'The Duke of York met Caius Marcius in Rome. Marcius wept: "Rome!" I saw Romeo\'s face.\nJuliet came.'
    names = [m[2] for m in capitalized_mentions(text)]
    assert names == ["Duke", "York", "Caius Marcius", "Rome", "Romeo"]
    for s, e, name in capitalized_mentions(text):
        assert text[s:e] == name


def test_gazetteer_matches_whole_words_longest_first(tmp_path):
    f = tmp_path / "names.txt"
    f.write_text("Marcius\nCaius Marcius\n# comment\n\n")
    corpus = Corpus(texts={"train": ["Caius Marcius and Marcius, not Marciusz."], "heldout": ["Marcius"]})
    spans, entities = extract_gazetteer(corpus, f)
    assert entities["entity"].tolist() == ["Caius Marcius", "Marcius"]
    assert spans["train"][["start", "end", "entity"]].values.tolist() == [[0, 13, 0], [18, 25, 1]]
    assert spans["heldout"]["value"].tolist() == ["Marcius"]


# ----------------------------------------------------------------------------- against the generator's truth
SOURCE = SyntheticSource(n_people=40, max_docs=10, seed=3)
CANARIES = {"repetitions": [1, 3], "per_group": 2, "length": 16, "alphabet_size": 50}  # shift packed doc indices


@pytest.fixture(scope="module")
def synth_dm(tmp_path_factory) -> DataModule:
    root = tmp_path_factory.mktemp("ledger_dm")
    dm = DataModule(
        source=SOURCE,
        tokenizer=TrainedBPE(vocab_size=400, min_frequency=2),
        entities=SyntheticEntities(),
        block_size=32,
        batch_size=8,
        canaries=CANARIES,
        seed=0,
        progress=False,
        cache_dir=str(root / "cache"),
        output_dir=str(root / "run"),
    )
    dm.prepare_data()
    dm.setup("fit")
    return dm


def _generator_subjects(source: SyntheticSource) -> np.ndarray:
    """Subject of every training document, drawn as ``generate_synthetic`` draws them (independent of spans)."""
    a = asdict(source)
    rng = np.random.default_rng(a["seed"])
    n_unfamiliar = int(round(a["unfamiliar_frac"] * a["n_people"]))
    people = sample_population(rng, a["n_people"], n_unfamiliar, a["zipf_exponent"], a["max_docs"], a["min_docs"])
    return plan_documents(rng, people, a["heldout_docs_per_person"])["train"]


def _first_windows(dm: DataModule, texts: list[str]) -> np.ndarray:
    """Window of the first token of every training text, found by matching each text's tokens in the packed
    stream (canaries are documents of random tokens spliced in between)."""
    packed = dm.splits["train"]
    stream, offsets = packed.tokens, packed.doc_offsets
    out, p = np.zeros(len(texts), dtype=np.int64), 0
    for d, text in enumerate(texts):
        ids = dm.tokenizer.encode(text, add_special_tokens=False).ids
        while stream[offsets[p] : offsets[p + 1] - 1].tolist() != ids:
            p += 1
        out[d], p = offsets[p] // packed.block_size, p + 1
    return out


def _train(led: ExposureLedger, packed: PackedSplit, order: np.ndarray, batch: int, eos: int, step: int = 1) -> int:
    """Train the windows ``order`` (sample ids) in batches of ``batch``, the last padded with padding windows."""
    sid = torch.full((-(-len(order) // batch) * batch,), -1, dtype=torch.int64)
    sid[: len(order)] = torch.as_tensor(order, dtype=torch.int64)
    x = packed.gather(sid.clamp(min=0).numpy())[:, :-1].clone()
    x[sid < 0] = eos
    for i in range(0, len(sid), batch):
        led.update(x[i : i + batch], sid[i : i + batch], step)
        step += 1
    led.sync()
    return step


def test_one_epoch_ledger_equals_the_generator_truth_exactly(synth_dm: DataModule):
    packed, names = synth_dm.splits["train"], synth_dm.entity_table.sort_values("entity_id")["entity"].tolist()
    led = ExposureLedger.from_packed(packed, synth_dm.vocab_size, len(names))
    assert led.n_docs == synth_dm.meta["splits"]["train"]["documents"]  # every biography has a subject
    rng = np.random.default_rng(0)
    step = _train(led, packed, rng.permutation(packed.n_windows), 8, synth_dm.eos_id)
    ent = ledger_tables(led, None, names)["entities"].set_index("entity")
    truth = pd.read_parquet(synth_dm.output_dir / "ground_truth" / "exposure_train.parquet").set_index("entity")
    docs = pd.read_parquet(synth_dm.output_dir / "ground_truth" / "mentions_train.parquet").set_index("entity")
    assert (truth["subject_docs"] == docs["docs"]).all() and (truth["mentions"] == docs["mentions"]).all()
    truth = truth.loc[ent.index]
    for col in ("subject_docs", "mentions", "comentions"):
        assert ent[col].tolist() == truth[col].tolist(), col
    assert ent["distinct_docs"].tolist() == truth["subject_docs"].tolist()
    assert truth["comentions"].sum() > 0 and (truth["comentions"] < truth["mentions"]).any()
    _train(led, packed, rng.permutation(packed.n_windows), 8, synth_dm.eos_id, step)  # a second epoch
    ent = ledger_tables(led, None, names)["entities"].set_index("entity")
    assert ent["subject_docs"].tolist() == (2 * truth["subject_docs"]).tolist()
    assert ent["distinct_docs"].tolist() == truth["subject_docs"].tolist()
    assert ent["comentions"].tolist() == (2 * truth["comentions"]).tolist()
    assert ent["mentions"].tolist() == (2 * truth["mentions"]).tolist()


def test_a_document_counts_when_the_window_of_its_first_token_is_trained(synth_dm: DataModule):
    packed, n = synth_dm.splits["train"], len(synth_dm.entity_table)
    texts = SOURCE.load().texts["train"]
    subjects, first_window = _generator_subjects(SOURCE), _first_windows(synth_dm, texts)
    assert len(subjects) == len(texts)
    inc = packed_incidence(packed)
    assert sorted(zip(inc.doc_window.tolist(), inc.doc_subject.tolist())) == sorted(
        zip(first_window.tolist(), subjects.tolist())
    )
    offsets = packed.doc_offsets // packed.block_size
    assert not np.array_equal(first_window, offsets[: len(texts)])  # the canaries do shift documents
    rng = np.random.default_rng(1)
    trained = rng.choice(packed.n_windows, size=packed.n_windows // 3, replace=False)
    twice = trained[: len(trained) // 4]
    led = ExposureLedger.from_packed(packed, synth_dm.vocab_size, n)
    step = _train(led, packed, trained, 8, synth_dm.eos_id)
    _train(led, packed, twice, 8, synth_dm.eos_id, step)
    times = np.zeros(packed.n_windows, dtype=np.int64)
    times[trained] += 1
    times[twice] += 1
    t = times[first_window]  # brute force, per document and per mention
    assert led.entity_subject_docs().tolist() == np.bincount(subjects, weights=t, minlength=n).astype(int).tolist()
    assert led.entity_distinct_docs().tolist() == np.bincount(subjects, weights=t > 0, minlength=n).astype(int).tolist()
    sp = packed.spans[packed.spans["kind"] == "name"]
    ent, sid, doc = (sp[c].to_numpy() for c in ("entity", "sample_id", "doc"))
    other = ent != subjects[doc]
    expected = np.bincount(ent[other], weights=times[sid[other]], minlength=n).astype(int)
    assert led.entity_comentions().tolist() == expected.tolist()
    assert led.entity_mentions().tolist() == np.bincount(ent, weights=times[sid], minlength=n).astype(int).tolist()
    assert 0 < led.entity_distinct_docs().sum() < led.entity_subject_docs().sum() < len(texts)


def test_without_document_subjects_the_document_counts_are_zero(synth_dm: DataModule):
    packed = synth_dm.splits["train"]
    names_only = replace(packed, spans=packed.spans[packed.spans["kind"] == "name"].reset_index(drop=True))
    inc = packed_incidence(names_only)  # as the text extractors give: name spans, no attribute spans
    assert len(inc.doc_window) == 0 and (inc.mention_subject == -1).all()
    names = synth_dm.entity_table.sort_values("entity_id")["entity"].tolist()
    led = ExposureLedger.from_packed(names_only, synth_dm.vocab_size, len(names))
    _train(led, names_only, np.arange(packed.n_windows), 8, synth_dm.eos_id)
    ent = ledger_tables(led, None, names)["entities"]
    assert led.n_docs == 0 and ent["mentions"].sum() == len(names_only.spans)
    assert (ent[["subject_docs", "distinct_docs", "comentions"]] == 0).all().all()
    empty = replace(packed, spans=packed.spans.iloc[:0])
    assert ExposureLedger.from_packed(empty, synth_dm.vocab_size, 0).n_docs == 0
