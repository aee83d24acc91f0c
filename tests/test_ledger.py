"""Exposure ledger: exact counts, derived entity / pair counts, familiarity lookup, DDP sum, state."""

from __future__ import annotations

import os
import socket

import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from densitylab.data.corpus import Corpus
from densitylab.data.entities import capitalized_mentions, extract_gazetteer
from densitylab.ledger import NEVER, ExposureLedger, ledger_tables, write_ledger
from densitylab.report.ledger import plot_rank_frequency

# 4 windows; mentions: window 0 -> e0, e1, e1 ; window 1 -> e2 ; window 2 -> e0, e2 ; window 3 -> none
MENTION_WINDOW = torch.tensor([0, 0, 0, 1, 2, 2])
MENTION_ENTITY = torch.tensor([0, 1, 1, 2, 0, 2])


def make_ledger() -> ExposureLedger:
    return ExposureLedger(
        vocab_size=10, n_windows=4, mention_window=MENTION_WINDOW, mention_entity=MENTION_ENTITY, n_entities=3
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
    assert led.entity_mentions().tolist() == [2 * 1 + 1 * 1, 2 * 2, 1]  # e0: w0 twice + w2 once
    co = dict(zip(zip(led.pair_a.tolist(), led.pair_b.tolist()), led.cooccurrence().tolist()))
    assert co == {(0, 1): 2, (0, 2): 1}
    assert led.entity_first_step().tolist() == [1, 1, 1]
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
    wrong = ExposureLedger(11, 4, MENTION_WINDOW, MENTION_ENTITY, 3)
    with pytest.raises(ValueError, match="vocab_size"):
        wrong.load_state_dict(led.state_dict())


def test_bad_mentions_raise():
    with pytest.raises(ValueError, match="equal lengths"):
        ExposureLedger(10, 4, torch.tensor([0, 1]), torch.tensor([0]), 3)
    with pytest.raises(ValueError, match="outside"):
        ExposureLedger(10, 4, torch.tensor([4]), torch.tensor([0]), 3)


def test_tables_and_plot(tmp_path):
    led = make_ledger()
    led.update(torch.tensor([[1, 2, 3]]), torch.tensor([0]), step=3)
    led.sync()
    tables = ledger_tables(led, lambda i: f"t{i}", ["Zed", "Amy", "Bob"])
    assert tables["tokens"]["count"].sum() == 3 and tables["tokens"].loc[1, "token"] == "t1"
    ent = tables["entities"].set_index("entity")
    assert ent.loc["Zed", "mentions"] == 1 and ent.loc["Amy", "mentions"] == 2 and ent.loc["Bob", "mentions"] == 0
    assert ent.loc["Zed", "first_step"] == 3 and pd.isna(ent.loc["Bob", "first_step"])
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
        out[rank] = {k: v.clone() for k, v in led.state_dict().items() if isinstance(v, torch.Tensor)}
    finally:
        dist.destroy_process_group()


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
