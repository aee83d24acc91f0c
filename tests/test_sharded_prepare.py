"""Preparation sharded over machines (DataRecipe.build(shard=(i, n))): two local processes stand for two nodes
sharing one cache folder; the joined data equal what one process prepares."""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from densitylab.data.entities import CapitalizedEntities
from densitylab.data.prepare import DataRecipe, load_prepared
from densitylab.data.sources import TextSource
from densitylab.data.tokenizer import TrainedBPE

WORDS = "the a of and to in was he that it his for on with as by at from".split()
NAMES = ["Marcus", "Livia", "Octavia Minor", "Agrippa", "Cleo", "Brutus"]


def _corpus(path: Path, n_lines: int = 1500) -> None:
    rng = np.random.default_rng(0)
    lines = []
    for _ in range(n_lines):
        w = list(rng.choice(WORDS, size=int(rng.integers(4, 14))))
        for _ in range(int(rng.integers(0, 3))):
            w.insert(int(rng.integers(1, len(w))), str(rng.choice(NAMES)))
        lines.append("So " + " ".join(w) + ".")
    path.write_text("\n".join(lines) + "\n")


def _recipe(path: Path) -> DataRecipe:
    canaries = {"repetitions": [1, 3], "per_group": 2, "length": 16, "alphabet_size": 32}
    return DataRecipe(
        TextSource(str(path), sample_by="line"), TrainedBPE(300, 2), CapitalizedEntities(), 32, canaries, 0
    )


def _node(path: str, final: str, cache: str, i: int, n: int) -> None:
    _recipe(Path(path)).build(Path(final), Path(cache), shard=(i, n))


@pytest.mark.slow
@pytest.mark.parametrize("n", [2, 3])
def test_shards_prepared_by_separate_processes_join_into_the_one_process_data(tmp_path, n):
    text = tmp_path / "corpus.txt"
    _corpus(text)
    recipe = _recipe(text)
    one = tmp_path / "one" / recipe.cache_key()
    recipe.build(one, tmp_path / "one")
    final = tmp_path / "shared" / "data" / recipe.cache_key()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_node, args=(str(text), str(final), str(tmp_path / "shared"), i, n)) for i in range(n)]
    for p in reversed(procs):  # the joining shard starts last: it waits for the others
        p.start()
    for p in procs:
        p.join(300)
        assert p.exitcode == 0
    assert sorted(x.name for x in final.parent.iterdir()) == [final.name]  # shard folders removed after the join
    for split in ("train", "heldout"):
        assert (final / f"{split}.bin").read_bytes() == (one / f"{split}.bin").read_bytes()
        assert np.array_equal(np.load(final / f"{split}_doc_offsets.npy"), np.load(one / f"{split}_doc_offsets.npy"))
        pd.testing.assert_frame_equal(
            pd.read_parquet(final / f"{split}_spans.parquet"), pd.read_parquet(one / f"{split}_spans.parquet")
        )
    assert json.loads((final / "meta.json").read_text()) == json.loads((one / "meta.json").read_text())
    a, b = load_prepared(one), load_prepared(final)
    assert a.meta["canaries"] == 4 and len(a.splits["train"].spans) > 500
    assert np.array_equal(a.splits["train"].gather([0, 5]), b.splits["train"].gather([0, 5]))


def test_a_bad_shard_is_refused(tmp_path):
    text = tmp_path / "corpus.txt"
    _corpus(text, 50)
    with pytest.raises(ValueError, match="shard="):
        _recipe(text).build(tmp_path / "x", tmp_path, shard=(2, 2))


def _sharded_data_module(tmp_path: Path, prepare_shards: int = 2):
    """A DataModule over a small generated text that prepares in ``prepare_shards`` shards."""
    from densitylab.data.datamodule import DataModule

    text = tmp_path / "corpus.txt"
    _corpus(text, 50)
    r = _recipe(text)
    return DataModule(
        source=r.source, tokenizer=r.tokenizer, entities=r.entities, block_size=32, batch_size=4, canaries=None,
        seed=0, cache_dir=str(tmp_path), prepare_shards=prepare_shards,
    )  # fmt: skip


def test_a_node_without_a_shard_is_a_config_error(tmp_path, monkeypatch):
    from densitylab.errors import ConfigError

    dm = _sharded_data_module(tmp_path)
    monkeypatch.setenv("NODE_RANK", "2")
    with pytest.raises(ConfigError, match="data.prepare_shards=2: this is node 2"):
        dm.prepare_data()
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").iterdir())  # nothing written


def test_sharding_without_a_node_rank_is_a_config_error(tmp_path, monkeypatch):
    from densitylab.errors import ConfigError

    dm = _sharded_data_module(tmp_path)
    for var in ("NODE_RANK", "GROUP_RANK", "SLURM_NODEID"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ConfigError, match="no node rank found"):
        dm.prepare_data()
    monkeypatch.setenv("GROUP_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "12")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun: 3 nodes of 4 processes
    with pytest.raises(ConfigError, match="this is node 0 of 3"):
        dm.prepare_data()


def test_shards_of_other_data_are_refused_at_the_join(tmp_path):
    from densitylab.data.prepare import _check_shards
    from densitylab.errors import DataError

    sig = {"tokenizer": "ab", "documents": {"train": 10}, "canary_copies": 0, "block_size": 32, "of": 2}
    for j, docs in enumerate((10, 11)):
        (tmp_path / str(j)).mkdir()
        (tmp_path / str(j) / "done.json").write_text(json.dumps({"shard": j, **sig, "documents": {"train": docs}}))
    with pytest.raises(DataError, match=r"shard 1 .* differs from shard 0 in \['documents'\]"):
        _check_shards(tmp_path, 2, sig)
