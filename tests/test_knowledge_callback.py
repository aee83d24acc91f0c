"""KnowledgeCallback without training: its schedule, one-line errors for bad settings and facts files, and the
one line it logs when it has nothing to ask about."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from densitylab.callbacks import KnowledgeCallback
from densitylab.errors import ConfigError


def test_schedule_is_step_zero_then_log_spaced_from_min_step():
    cb = KnowledgeCallback(seed=0)
    assert [s for s in range(1100) if cb.is_due(s)] == [0, 16, 64, 256, 1024]
    periodic = KnowledgeCallback(seed=0, every_n_steps=300)
    assert [s for s in range(901) if periodic.is_due(s)] == [0, 16, 64, 256, 300, 600, 900]


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"tau": 2}, ["tau=2", "(0, 1)"]),
        ({"attributes": ["employer_city"]}, ["employer_city", "subset"]),
        ({"bin_edges": [4, 1]}, ["bin_edges=[4, 1]", "starting 0, 1"]),
        ({"min_step": -1}, ["min_step=-1", ">= 0"]),
        ({"n_boot": 5}, ["n_boot=5", ">= 10"]),
        ({"prefix_eos": "yes"}, ["prefix_eos='yes'", "true or false"]),
        ({"exposure": "views"}, ["exposure='views'", "distinct_docs"]),
        ({"panel": {"sise": 3}}, ["callbacks.knowledge.panel", "sise"]),
    ],
)
def test_a_bad_setting_is_one_line_at_construction(kwargs, words):
    with pytest.raises(ConfigError) as e:
        KnowledgeCallback(seed=0, **kwargs)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("callbacks.knowledge")
    for w in words:
        assert w in msg, msg


def test_a_bad_facts_file_stops_at_construction(tmp_path):
    path = tmp_path / "facts.jsonl"
    path.write_text('{"prompt": "Paris is in", "answer": "France"}\n{"prompt": "Rome is in", "answer": ""}\n')
    with pytest.raises(ConfigError, match="line 2: field 'answer' is empty"):
        KnowledgeCallback(seed=0, facts=str(path))


@pytest.mark.parametrize("eos_id", [0, None])  # None: data=uniform has no documents
def test_without_people_or_facts_it_logs_one_line_and_stays_off(caplog, eos_id):
    cb = KnowledgeCallback(seed=0)
    dm = SimpleNamespace(tokenizer=None, eos_id=eos_id, ground_truth_dir=None)
    trainer = SimpleNamespace(datamodule=dm, callbacks=[])
    with caplog.at_level(logging.INFO, logger="densitylab.callbacks.knowledge"):
        cb.prepare(trainer, None)
    assert not cb.enabled
    lines = [r.getMessage() for r in caplog.records if r.name == "densitylab.callbacks.knowledge"]
    assert len(lines) == 1 and lines[0].startswith("knowledge: off") and "callbacks.knowledge.facts" in lines[0]
