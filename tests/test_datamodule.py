"""DataModule: preparation, cache, spans per window against ground truth, sharded resumable order."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from densitylab.data import DataModule
from densitylab.data.entities import CapitalizedEntities, SyntheticEntities
from densitylab.data.loaders import ResumableShardSampler, WindowDataset
from densitylab.data.sources import SyntheticSource, TextSource
from densitylab.data.tokenizer import TrainedBPE
from densitylab.errors import ConfigError

CANARIES = {"repetitions": [1, 3], "per_group": 1, "length": 16, "alphabet_size": 50}
SMALL = dict(
    source=SyntheticSource(n_people=60, max_docs=12),
    entities=SyntheticEntities(),
    block_size=32,
    batch_size=8,
    tokenizer=TrainedBPE(vocab_size=400, min_frequency=2),
    canaries=None,
    seed=0,
    progress=False,
)


@pytest.fixture(scope="module")
def dm(tmp_path_factory) -> DataModule:
    root = tmp_path_factory.mktemp("dm")
    d = DataModule(
        **{**SMALL, "canaries": CANARIES},
        cache_dir=str(root / "cache"),
        output_dir=str(root / "run"),
    )
    d.prepare_data()
    d.setup("fit")
    return d


def test_run_folder_gets_tokenizer_ground_truth_and_data_summary(dm: DataModule):
    out = dm.output_dir
    assert (out / "tokenizer.json").is_file()
    meta = json.loads((out / "data.json").read_text())
    assert meta["splits"]["train"]["windows"] == dm.splits["train"].n_windows
    assert set(meta["splits"]) == {"train", "heldout", "unfamiliar"}
    for name in ("people", "mentions_train", "comentions_train", "canaries"):
        assert (out / "ground_truth" / f"{name}.parquet").is_file(), name
    assert 0 < meta["unigram_entropy_nats"] < np.log(meta["vocab_size"])


def test_window_spans_match_ground_truth_mentions(dm: DataModule):
    """Every name mention of the training split lands in exactly one window."""
    spans = dm.splits["train"].spans
    names = spans[spans["kind"] == "name"]
    per_entity = names.groupby("entity").size()
    truth = pd.read_parquet(dm.output_dir / "ground_truth" / "mentions_train.parquet").set_index("entity_id")[
        "mentions"
    ]
    truth = truth[truth > 0]
    assert per_entity.sort_index().to_dict() == truth.sort_index().to_dict()
    assert (names["start"] >= 0).all() and (names["start"] < dm.block_size).all()
    assert (names["end"] > names["start"]).all()


def test_window_span_tokens_decode_to_the_name(dm: DataModule):
    packed, tok = dm.splits["train"], dm.tokenizer
    people = pd.read_parquet(dm.output_dir / "ground_truth" / "people.parquet").set_index("entity_id")["entity"]
    names = packed.spans[packed.spans["kind"] == "name"].head(200)
    for row in names.itertuples():
        a = row.sample_id * dm.block_size + row.start
        b = row.sample_id * dm.block_size + row.end
        text = tok.decode(packed.tokens[a:b].tolist())
        assert people[row.entity] in text, (text, people[row.entity])


def test_canaries_are_spliced_into_training_stream(dm: DataModule):
    stream = dm.splits["train"].tokens[: dm.splits["train"].n_real].tolist()
    joined = " ".join(map(str, stream))
    for toks, reps in zip(dm.canaries["tokens"], dm.canaries["repetitions"]):
        needle = " ".join(map(str, list(toks) + [dm.eos_id]))
        assert joined.count(needle) == reps


def test_second_prepare_is_a_cache_hit_and_key_tracks_settings(dm: DataModule, tmp_path):
    again = DataModule(
        **{**SMALL, "canaries": CANARIES},
        cache_dir=str(dm.cache_dir),
        output_dir=None,
    )
    assert again.cache_key() == dm.cache_key()
    mtime = (dm.data_dir / "meta.json").stat().st_mtime_ns
    again.prepare_data()
    assert (dm.data_dir / "meta.json").stat().st_mtime_ns == mtime
    other = DataModule(**{**SMALL, "block_size": 16}, cache_dir=str(dm.cache_dir))
    assert other.cache_key() != dm.cache_key()


def test_train_loader_visits_every_window_once_per_epoch_with_full_batches(dm: DataModule):
    loader = dm.train_dataloader()
    seen, n_batches = [], 0
    for batch in loader:
        assert batch["input_ids"].shape == (dm.batch_size, dm.block_size)
        seen.extend(batch["sample_id"].tolist())
        n_batches += 1
    real = sorted(s for s in seen if s >= 0)
    assert real == list(range(dm.splits["train"].n_windows))
    assert len(seen) - len(real) < dm.batch_size
    assert n_batches == len(loader)


def test_val_loader_is_heldout_and_capped(tmp_path):
    d = DataModule(**SMALL, max_val_windows=5, cache_dir=str(tmp_path / "c"))
    d.setup()
    batches = list(d.val_dataloader())
    ids = torch.cat([b["sample_id"] for b in batches])
    assert len(ids) == 5 and ids.unique().numel() == 5
    x = torch.cat([b["input_ids"] for b in batches])
    for sid, row in zip(ids.tolist(), x):
        assert torch.equal(row, d.splits["heldout"].window(sid)[0])


def test_sampler_shards_are_disjoint_cover_and_reshuffle_each_epoch():
    n, world = 48, 3
    shards = [list(ResumableShardSampler(n, seed=1, rank=r, world_size=world)) for r in range(world)]
    assert sorted(sum(shards, [])) == list(range(n))
    s = ResumableShardSampler(n, seed=1)
    first = list(s)
    s.set_epoch(1)
    assert list(s) != first and sorted(list(s)) == list(range(n))
    s.set_epoch(0)
    assert list(s) == first


def test_sampler_skip_resumes_mid_epoch_once():
    s = ResumableShardSampler(40, seed=3, rank=1, world_size=2)
    full = list(s)
    s.skip(8)
    assert list(s) == full[8:]
    assert list(s) == full  # only the next pass is shortened
    with pytest.raises(ValueError, match="world_size"):
        ResumableShardSampler(41, world_size=2)


def test_wrong_kinds_and_bad_sizes_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="data.source=.synthetic.: expected a source object"):
        DataModule(**{**SMALL, "source": "synthetic"})  # an old-style data.source=synthetic override
    with pytest.raises(ConfigError, match="data.tokenizer=.*expected a tokenizer spec"):
        DataModule(**{**SMALL, "tokenizer": {"vocab_size": 400}})
    with pytest.raises(ConfigError, match="data.entities='capitalized': expected an entity extractor"):
        DataModule(**{**SMALL, "entities": "capitalized"})
    with pytest.raises(ConfigError, match="batch_size=0"):
        DataModule(**{**SMALL, "batch_size": 0})
    with pytest.raises(ConfigError, match="block_size=0"):
        DataModule(**{**SMALL, "block_size": 0})
    with pytest.raises(ConfigError, match="lacks \\['per_group'\\]"):
        DataModule(**{**SMALL, "canaries": {"repetitions": [1], "length": 8, "alphabet_size": 20}})
    with pytest.raises(ConfigError, match="n_people must be an integer >= 1, got 0"):
        SyntheticSource(n_people=0)
    with pytest.raises(ConfigError, match="tokenizer.vocab_size=100"):
        TrainedBPE(vocab_size=100, min_frequency=2)


def test_synthetic_entities_on_text_is_a_config_error(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("\n\n".join(f"Paragraph {i} about Rome and Verona." for i in range(20)))
    d = DataModule(
        **{**SMALL, "source": TextSource(files=str(f), cache_dir=str(tmp_path / "hf"))}, cache_dir=str(tmp_path / "c")
    )
    with pytest.raises(ConfigError, match="data/entities=synthetic needs the synthetic source"):
        d.prepare_data()


def test_text_source_splits_tail_and_reads_jsonl(tmp_path):
    f = tmp_path / "docs.jsonl"
    f.write_text("\n".join(json.dumps({"body": f"document number {i} " * 20}) for i in range(30)))
    d = DataModule(
        source=TextSource(files=str(f), text_field="body", cache_dir=str(tmp_path / "hf")),
        entities=CapitalizedEntities(),
        block_size=16,
        batch_size=4,
        tokenizer=TrainedBPE(vocab_size=300, min_frequency=2),
        canaries=None,
        seed=0,
        cache_dir=str(tmp_path / "c"),
        progress=False,
    )
    d.setup()
    assert d.meta["splits"]["train"]["documents"] == 27 and d.meta["splits"]["heldout"]["documents"] == 3
    held = d.tokenizer.decode(d.splits["heldout"].tokens[: d.splits["heldout"].n_real].tolist())
    assert "document number 29" in held and "document number 26 " not in held


def test_window_dataset_padding_windows():
    from densitylab.data.packing import pack_documents

    packed = pack_documents([list(range(1, 40))], eos_id=0, block_size=8)
    ds = WindowDataset(packed, pad_to_multiple=4, pad_id=0)
    assert len(ds) % 4 == 0 and len(ds) >= packed.n_windows
    b = ds.__getitems__(list(range(len(ds))))
    pad = b["sample_id"] < 0
    assert int(pad.sum()) == len(ds) - packed.n_windows
    assert (b["labels"][pad] == -100).all() and (b["input_ids"][pad] == 0).all()


@pytest.mark.parametrize("step,accum", [(3, 1), (4, 4), (5, 3), (7, 2)])
def test_resume_skip_counts_optimizer_steps_with_accumulation(dm: DataModule, step, accum):
    """Lightning steps after every `accum` batches and on an epoch's last partial window, so an epoch is
    ceil(batches / accum) optimizer steps; resuming at `step` must skip exactly the batches trained."""
    from types import SimpleNamespace

    full = len(dm.train_dataloader())
    steps_per_epoch = -(-full // accum)
    done = min((step % steps_per_epoch) * accum, full)
    dm.trainer = SimpleNamespace(world_size=1, global_rank=0, global_step=step, accumulate_grad_batches=accum)
    try:
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(step // steps_per_epoch)
        assert sum(1 for _ in loader) == full - done
    finally:
        dm.trainer = None
