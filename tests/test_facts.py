"""The facts file of the knowledge probe (issue 15): one-line errors naming the line and the field, default
candidates, items scored by measure_knowledge, the token search for strings in training windows (a match across
a window boundary counts for neither window) and the trained-window co-occurrence counts."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from densitylab.data.packing import PackedSplit, pack_documents
from densitylab.errors import ConfigError
from densitylab.probes.facts import Fact, cooccurrence_counts, facts_prompts, load_facts, string_windows

GOOD = {"prompt": "The capital of France is", "answer": "Paris"}
OTHER = {"prompt": "The capital of Italy is", "answer": "Rome"}


def _write(tmp_path, lines, name="facts.jsonl") -> str:
    path = tmp_path / name
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n", encoding="utf-8")
    return str(path)


def _error(path) -> str:
    with pytest.raises(ConfigError) as info:
        load_facts(path)
    msg = str(info.value)
    assert "\n" not in msg and "\r" not in msg and len(msg.splitlines()) == 1, msg
    assert msg.startswith(f"callbacks.knowledge.facts={' '.join(str(path).splitlines())}"), msg
    assert "expected one JSON object per line" in msg, msg
    return msg


LINE_ERRORS = [
    ("not json", "{prompt: 1}", "is not valid JSON"),
    ("a list", "[1, 2]", "not an object"),
    ("a string", '"Paris"', "not an object"),
    ("no prompt", {"answer": "Paris"}, "field 'prompt' is missing"),
    ("prompt int", {"prompt": 3, "answer": "Paris"}, "field 'prompt' is 3 (int)"),
    ("prompt blank", {"prompt": "  \t", "answer": "Paris"}, "field 'prompt' is empty"),
    ("no answer", {"prompt": "x is"}, "field 'answer' is missing"),
    ("answer null", {"prompt": "x is", "answer": None}, "field 'answer' is None"),
    ("answer empty", {"prompt": "x is", "answer": " "}, "field 'answer' is empty"),
    ("answer list", {"prompt": "x is", "answer": ["Paris"]}, "field 'answer' is ['Paris'] (list)"),
    ("candidates str", {**GOOD, "candidates": "Paris Rome"}, "field 'candidates' is 'Paris Rome' (str)"),
    ("candidates empty", {**GOOD, "candidates": []}, "field 'candidates' is an empty list"),
    ("candidates int", {**GOOD, "candidates": ["Paris", 3]}, "field 'candidates' item 1 is 3"),
    ("candidates blank", {**GOOD, "candidates": ["Paris", " "]}, "field 'candidates' item 1"),
    ("candidates dup", {**GOOD, "candidates": ["Paris", "Rome", "Paris"]}, "holds 'Paris' twice"),
    ("candidates dup stripped", {**GOOD, "candidates": ["Paris", " Paris "]}, "holds 'Paris' twice"),
    ("one candidate", {**GOOD, "candidates": ["Paris"]}, "field 'candidates' holds 1 value"),
    ("answer not candidate", {**GOOD, "candidates": ["Rome", "Oslo"]}, "field 'answer' 'Paris' is not among"),
    ("entity int", {**GOOD, "entity": 7}, "field 'entity' is 7 (int)"),
    ("entity empty", {**GOOD, "entity": ""}, "field 'entity' is empty"),
    ("newline in value", {"prompt": "x is", "answer": "a\nb", "candidates": ["c", "d"]}, "'a\\nb' is not among"),
]


@pytest.mark.parametrize(("case", "bad", "expect"), LINE_ERRORS, ids=[c[0] for c in LINE_ERRORS])
def test_a_bad_line_gives_one_line_naming_the_line_and_the_field(tmp_path, case, bad, expect):
    path = _write(tmp_path, [GOOD, "", bad, OTHER])  # the bad fact is on line 3 (line 2 is blank)
    msg = _error(path)
    assert f"{path} line 3: " in msg and expect in msg, msg


def test_file_level_errors_are_one_line(tmp_path):
    assert "file not found" in _error(str(tmp_path / "nope.jsonl"))
    assert "file not found" in _error(str(tmp_path / "two\nlines.jsonl"))  # a line break in the path too
    assert "is a directory" in _error(str(tmp_path))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert "holds no fact" in _error(str(empty))
    blank = tmp_path / "blank.jsonl"
    blank.write_text("\n   \n\t\n")
    assert "holds no fact" in _error(str(blank))
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"prompt": "Caf\xe9 is in", "answer": "Paris"}\n')
    assert "not UTF-8" in _error(str(latin))


def test_fewer_than_two_candidates_after_the_default_names_the_first_line_without_candidates(tmp_path):
    path = _write(tmp_path, [{**GOOD, "candidates": ["Paris", "Rome"]}, "", {**GOOD, "prompt": "France's capital:"}])
    msg = _error(path)
    assert "line 3: field 'candidates' is missing" in msg and "'Paris'" in msg, msg
    one = _write(tmp_path, [GOOD], name="one.jsonl")
    assert "line 1: field 'candidates'" in _error(one)


def test_candidates_default_to_every_distinct_answer_sorted_and_values_are_normalised(tmp_path):
    path = tmp_path / "f.jsonl"
    rows = [
        {"prompt": "The capital of Italy is  ", "answer": " Rome ", "entity": " Italy", "source": "ignored"},
        {"prompt": "The capital of France is", "answer": "Paris", "entity": None},
        {"prompt": "Oslo is in", "answer": "Norway", "candidates": [" Sweden", "Norway", "Finland"]},
        {"prompt": "The Eiffel tower is in", "answer": "Paris", "entity": "France"},
    ]
    text = "\n".join(json.dumps(r) for r in rows[:2]) + "\n\n  \n" + "\n".join(json.dumps(r) for r in rows[2:])
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())  # a byte-order mark and no final newline
    facts = load_facts(path)
    default = ("Norway", "Paris", "Rome")
    assert facts == [
        Fact("The capital of Italy is", "Rome", default, "Italy", 1),
        Fact("The capital of France is", "Paris", default, None, 2),
        Fact("Oslo is in", "Norway", ("Sweden", "Norway", "Finland"), None, 5),
        Fact("The Eiffel tower is in", "Paris", default, "France", 6),
    ]


def test_facts_prompts_are_items_measure_knowledge_scores(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from densitylab.model import GPT
    from densitylab.probes.knowledge import ITEM_COLUMNS, item_scores, measure_knowledge, score_candidates

    facts = [
        Fact("The capital of Italy is", "Rome", ("Oslo", "Paris", "Rome"), "Italy", 1),
        Fact("The capital of France is ", "Paris", ("Oslo", "Paris", "Rome"), "France", 2),
        Fact("Oslo is in", " Norway", ("Sweden", "Norway "), None, 3),
        Fact("The Louvre is in", "Paris", ("Oslo", "Paris", "Rome"), "France", 4),
    ]
    prompts = facts_prompts(facts)
    assert [p.entity_id for p in prompts] == [1, 0, -1, 0]  # France < Italy
    assert [p.entity for p in prompts] == ["Italy", "France", None, "France"]
    assert {p.attribute for p in prompts} == {"fact"} and {p.template for p in prompts} == {-1}
    assert prompts[1].text == "The capital of France is" and prompts[2].answer == "Norway"
    assert prompts[0].candidates == (" Oslo", " Paris", " Rome") and prompts[2].candidates == (" Sweden", " Norway")
    assert [p.candidates.index(" " + p.answer) for p in prompts] == [2, 1, 1, 1]
    with pytest.raises(ValueError, match="line 9: answer 'Bern'"):
        facts_prompts([Fact("x is", "Bern", ("Oslo", "Rome"), None, 9)])

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["The capital of Italy is Rome. Oslo is in Norway, not Sweden. Paris"] * 5, trainer)
    torch.manual_seed(0)
    small = GPT(vocab_size=tok.get_vocab_size(), block_size=64, n_layer=1, n_head=1, n_embd=16).eval()
    items = measure_knowledge(small, tok, prompts)
    assert list(items.columns) == ITEM_COLUMNS and len(items) == 4
    assert list(items["attribute"]) == ["fact"] * 4 and list(items["entity_id"]) == [1, 0, -1, 0]
    assert list(items["answer"]) == ["Rome", "Paris", "Norway", "Paris"]
    for f, p, it in zip(facts, prompts, items.itertuples()):
        assert it.predicted in {c.strip() for c in f.candidates}
        ids = tok.encode(p.text, add_special_tokens=False).ids
        cands = [tok.encode(c, add_special_tokens=False).ids for c in p.candidates]
        alone = item_scores(score_candidates(small, ids, cands), p.candidates.index(" " + p.answer))
        assert it.p_true == pytest.approx(alone["p_true"], abs=1e-5) and it.correct == alone["correct"]


class _Table:
    """A tokenizer with a fixed table: the text → its token ids."""

    def __init__(self, table):
        self.table = table

    def encode(self, text, add_special_tokens=True):
        assert add_special_tokens is False
        return SimpleNamespace(ids=list(self.table.get(text, [99])))


def _packed(stream, bs) -> PackedSplit:
    t = torch.as_tensor(stream, dtype=torch.int64)
    spans = pd.DataFrame({"sample_id": pd.Series([], dtype="int64")})
    return PackedSplit(t, len(stream), bs, np.array([0, len(stream)]), spans)


def test_string_windows_finds_both_forms_inside_one_window_only():
    tok = _Table(
        {
            " Ann": [10, 11], "Ann": [12, 11],  # mid-sentence and document-initial forms differ
            " Paris": [20], "Paris": [21],
            " Oslo": [30, 31, 32], "Oslo": [30, 31, 32],  # the same either way
            "": [], " ": [],
        }
    )  # fmt: skip
    stream = [
        10, 11, 1, 20,  # w0: " Ann", " Paris"
        1, 12, 11, 10,  # w1: "Ann"; its last " Ann" crosses into w2 (counts for neither)
        11, 1, 30, 31,  # w2: "Oslo" starts here but crosses into w3
        32, 21, 21, 30,  # w3: "Paris" twice; "Oslo" starts at the last input ...
        31,  # ... and goes on into the stream's last position, a target only
    ]  # fmt: skip
    got = string_windows(_packed(stream, 4), tok, ["Ann", "Paris", "Oslo", "Rome", "Ann"])
    assert set(got) == {"Ann", "Paris", "Oslo", "Rome"}
    assert got["Ann"].tolist() == [0, 1] and got["Paris"].tolist() == [0, 3]
    assert got["Oslo"].tolist() == [] and got["Rome"].tolist() == []
    assert all(v.dtype == np.int64 for v in got.values())
    # a pattern longer than a window can never be inside one
    assert string_windows(_packed(stream, 2), tok, ["Oslo"])["Oslo"].tolist() == []
    with pytest.raises(ValueError, match="tokenizes to no token"):
        string_windows(_packed(stream, 4), tok, [""])


def test_string_windows_equals_a_brute_force_search_on_random_packed_data():
    rng = np.random.default_rng(0)
    docs = [rng.integers(1, 6, size=int(n)).tolist() for n in rng.integers(3, 30, size=40)]
    packed = pack_documents(docs, eos_id=0, block_size=7)
    table, names = {}, []
    for i in range(30):
        names.append(f"s{i}")
        table[f"s{i}"] = rng.integers(1, 6, size=int(rng.integers(1, 4))).tolist()
        table[f" s{i}"] = rng.integers(1, 6, size=int(rng.integers(1, 4))).tolist()
    got = string_windows(packed, _Table(table), names)
    inputs = packed.windows()[:, :-1].tolist()

    def holds(window, pat):
        return any(window[j : j + len(pat)] == pat for j in range(len(window) - len(pat) + 1))

    n_found = 0
    for s in names:
        want = [w for w, x in enumerate(inputs) if holds(x, table[s]) or holds(x, table[" " + s])]
        assert got[s].tolist() == want, s
        n_found += len(want)
    assert 0 < n_found < 30 * packed.n_windows  # neither trivially empty nor everything


def test_string_windows_with_a_real_tokenizer_one_document_per_window():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    docs = ["Paris is big", "Ann Lee lives in Paris", "Oslo and Rome", "Ann Lee", "Lee Ann"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=["<|endoftext|>"]
    )
    tok.train_from_iterator(docs * 5, trainer)
    eos, bs = tok.token_to_id("<|endoftext|>"), 16
    stream = []
    for d in docs:  # every document padded to one window: window w is document w
        ids = tok.encode(d, add_special_tokens=False).ids
        stream += ids + [eos] * (bs - len(ids))
    got = string_windows(_packed(stream + [eos], bs), tok, ["Paris", "Ann Lee", "Rome", "Berlin", "Lee"])
    assert got["Paris"].tolist() == [0, 1] and got["Ann Lee"].tolist() == [1, 3]
    assert got["Rome"].tolist() == [2] and got["Berlin"].tolist() == [] and got["Lee"].tolist() == [1, 3, 4]


def test_cooccurrence_counts_trained_shared_windows_once_each():
    entity = [np.array([0, 2, 5]), None, np.array([1, 3]), np.array([4]), np.array([2])]
    answer = [np.array([2, 5, 6]), np.array([1]), np.array([3, 1]), np.array([7]), None]
    seq = np.array([1, 0, 2, 0, 0, 3, 0, 0])  # windows 1 and 3 never trained; window 5 three times
    got = cooccurrence_counts(entity, answer, seq)
    assert got.dtype == np.float64 and got.shape == (5,)
    assert got[0] == 2.0  # windows 2 and 5, each once whatever its count
    assert math.isnan(got[1]) and math.isnan(got[4])  # no entity / no value
    assert got[2] == 0.0  # both share windows 1 and 3, but neither was trained
    assert got[3] == 0.0  # nothing shared
    assert np.array_equal(cooccurrence_counts(entity, answer, torch.as_tensor(seq)), got, equal_nan=True)
    assert cooccurrence_counts([], [], seq).shape == (0,)
    with pytest.raises(ValueError, match="2 entity window lists but 1"):
        cooccurrence_counts(entity[:2], answer[:1], seq)
    with pytest.raises(ValueError, match="item 0 names window 8"):
        cooccurrence_counts([np.array([8])], [np.array([1])], seq)
