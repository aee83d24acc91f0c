"""Data sources over Arrow: :class:`ArrowTexts` behaves as the ``list[str]`` it stands for; TextSource gives the
documents of a pure-Python reading of the files; HubSource streams (local files through ``datasets``' streaming,
offline) to a chunked Arrow file with max_docs, the tail split, revision in the fingerprint and its error messages.
Tiny generated data, no network."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from densitylab.data.corpus import ArrowTexts, Corpus
from densitylab.data.sources import HubSource, TextSource, split_documents, write_texts
from densitylab.errors import ConfigError, DataError, HubUnreachableError

#: Every character Python's str.isspace() calls whitespace, plus look-alikes that are not (zero-width space, BOM).
PY_WHITESPACE = "".join(chr(c) for c in range(0x110000) if chr(c).isspace())
NOT_WHITESPACE = "\u200b\ufeff"


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """No test here may reach the hub."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def _docs(n: int = 57) -> list[str]:
    rng = np.random.default_rng(0)
    words = ["Romeo", "Juliet", "naïve", "日本", "emoji 🎉", "a", "of", "Verona"]
    return [" ".join(rng.choice(words, size=int(rng.integers(1, 9)))) + f" #{i}" for i in range(n)]


def _chunked(docs: list[str], sizes: list[int]) -> pa.ChunkedArray:
    out, a = [], 0
    for s in sizes:
        out.append(pa.array(docs[a : a + s], type=pa.string()))
        a += s
    out.append(pa.array(docs[a:], type=pa.string()))
    return pa.chunked_array(out, type=pa.string())


# ----------------------------------------------------------------------------- ArrowTexts as a Sequence
@pytest.fixture(params=["one chunk", "many chunks", "indexed", "view"])
def texts_and_list(request) -> tuple[ArrowTexts, list[str]]:
    docs = _docs()
    if request.param == "one chunk":
        return ArrowTexts(pa.array(docs)), docs
    if request.param == "many chunks":
        return ArrowTexts(_chunked(docs, [1, 0, 5, 13, 2])), docs
    if request.param == "indexed":  # rows out of order and repeated, across chunks
        idx = [5, 3, 40, 40, 0, 56, 21, 22, 23, 1]
        return ArrowTexts(_chunked(docs, [4, 10, 20]), np.array(idx)), [docs[i] for i in idx]
    t = ArrowTexts(_chunked(docs, [7, 7, 7])).view(3, 50).view(2, -4)  # a view of a view: docs[5:46]
    return t, docs[5:46]


def test_arrow_texts_is_the_list_it_stands_for(texts_and_list):
    t, ref = texts_and_list
    t.batch_size = 4  # iteration crosses batches and chunks
    n = len(ref)
    assert len(t) == n and bool(t) == bool(ref)
    assert [t[i] for i in range(n)] == ref
    assert [t[-i] for i in range(1, n + 1)] == [ref[-i] for i in range(1, n + 1)]
    assert all(type(t[i]) is str for i in (0, -1))
    for s in [
        slice(None),
        slice(2, 9),
        slice(-7, None),
        slice(3, 3),
        slice(9, 2),
        slice(None, None, 3),
        slice(None, None, -1),
        slice(-2, 1, -4),
        slice(100, 200),
    ]:
        got = t[s]
        assert type(got) is list and got == ref[s], s
    assert list(t) == ref and list(t.iter_batches(3)) == [ref[a : a + 3] for a in range(0, n, 3)]
    assert t == ref and ref == t and t != ref[:-1] and t != "not a sequence"
    assert t.n_chars() == sum(map(len, ref))
    assert t.char_lengths().tolist() == [len(d) for d in ref]
    assert ref[2] in t and t.index(ref[3]) == ref.index(ref[3])
    v = t.view(1, -1)
    assert isinstance(v, ArrowTexts) and v == ref[1:-1] and v.n_chars() == sum(map(len, ref[1:-1]))
    assert pickle.loads(pickle.dumps(t)) == ref
    with pytest.raises(IndexError):
        t[n]
    with pytest.raises(IndexError):
        t[-n - 1]
    with pytest.raises(TypeError, match="integers or slices"):
        t["0"]


def test_arrow_texts_nonblank_matches_python_strip_and_keeps_order():
    values = ["a", None, "", " ", PY_WHITESPACE, NOT_WHITESPACE, " b ", "\u3000", "\x1c\x85", "c\u2028", "\t\n"]
    values += [ws + "x" for ws in PY_WHITESPACE] + list(PY_WHITESPACE) + [NOT_WHITESPACE[0]]
    t = ArrowTexts(pa.chunked_array([pa.array(values[:5]), pa.array(values[5:])]))
    ref = [v for v in values if isinstance(v, str) and v.strip()]
    assert t.nonblank() == ref and t.nonblank().n_chars() == sum(map(len, ref))
    assert t.view(3, 30).nonblank() == [v for v in values[3:30] if isinstance(v, str) and v.strip()]
    assert ArrowTexts(pa.array([], type=pa.string())).nonblank() == []


def test_arrow_texts_from_strings_open_arrow_and_type_errors(tmp_path):
    docs = _docs(25)
    assert ArrowTexts.from_strings(iter(docs), chunk_docs=4) == docs
    assert ArrowTexts.from_strings([]) == [] and len(ArrowTexts.from_strings([])) == 0
    path = tmp_path / "d.arrow"
    assert write_texts(docs, path, chunk_docs=4) == 25
    t = ArrowTexts.open_arrow(path)
    assert t == docs and "d.arrow" in repr(t)
    back = pickle.loads(pickle.dumps(t.view(3, 9)))  # reopens the file by path
    assert back == docs[3:9] and back._files == t._files
    with pytest.raises(TypeError, match="string column"):
        ArrowTexts(pa.array([1, 2]))
    with pytest.raises(IndexError, match="outside"):
        ArrowTexts(pa.array(["a"]), np.array([1]))


def test_corpus_n_chars_uses_arrow():
    docs = _docs(10)
    c = Corpus(texts={"train": ArrowTexts(pa.array(docs)), "heldout": docs[:2]})
    assert c.n_chars("train") == sum(map(len, docs)) and c.n_chars("heldout") == len(docs[0]) + len(docs[1])
    assert c.n_chars("unfamiliar") == 0


def test_split_documents_on_arrow_texts_is_views_equal_to_the_list_split():
    docs = _docs(40)
    docs[3], docs[17] = "   ", ""
    for fraction in (0.01, 0.1, 0.5, 0.99):
        train, heldout = split_documents(ArrowTexts(pa.array(docs)), fraction)
        ref_train, ref_heldout = split_documents(docs, fraction)
        assert isinstance(train, ArrowTexts) and isinstance(heldout, ArrowTexts)
        assert train == ref_train and heldout == ref_heldout
    one = ArrowTexts(pa.array([None, "line one\nline two\nline three\n", " "]))
    assert [list(p) for p in split_documents(one, 0.3)] == [list(p) for p in split_documents([one[1]], 0.3)]
    with pytest.raises(DataError, match="no text"):
        split_documents(ArrowTexts(pa.array([" ", None])), 0.1)
    with pytest.raises(ConfigError, match="heldout_fraction"):
        split_documents(ArrowTexts(pa.array(["a"])), 1.0)


# ----------------------------------------------------------------------------- TextSource vs pure Python
def _odd_text() -> str:
    """Lines and paragraphs with every kind of whitespace a line can hold, blank lines of spaces/tabs/U+3000."""
    inline_ws = " \t\u00a0\u1680\u2000\u2003\u200a\u202f\u205f\u3000"
    rng = np.random.default_rng(1)
    lines = []
    for i in range(300):
        r = rng.random()
        if r < 0.2:
            lines.append("")
        elif r < 0.4:
            lines.append("".join(rng.choice(list(inline_ws), size=int(rng.integers(1, 4)))))
        else:
            pad = "".join(rng.choice(list(inline_ws + NOT_WHITESPACE), size=int(rng.integers(0, 3))))
            lines.append(f"{pad}word{i} naïve 🎉{pad}")
    return "\n".join(lines) + "\n"


def _reference(text: str, sample_by: str) -> list[str]:
    """What ``datasets``' text builder then the old list code kept: non-blank documents, in order (a paragraph
    keeps the line breaks beyond the blank line that ends it; the last one its final line break)."""
    if sample_by == "line":
        docs = text.splitlines()
    elif sample_by == "paragraph":
        docs = text.split("\n\n")
    else:
        docs = [text]
    return [d for d in docs if d.strip()]


@pytest.mark.parametrize("sample_by", ["line", "paragraph", "document"])
def test_text_source_documents_equal_a_pure_python_reading(sample_by, tmp_path):
    text = _odd_text()
    f = tmp_path / "odd.txt"
    f.write_text(text, encoding="utf-8")
    corpus = TextSource(files=str(f), sample_by=sample_by, cache_dir=str(tmp_path / "hf")).load()
    train, heldout = corpus.texts["train"], corpus.texts["heldout"]
    assert isinstance(train, ArrowTexts) and isinstance(heldout, ArrowTexts)
    ref = _reference(text, sample_by)
    if sample_by == "document":  # one document: cut at a line break
        assert list(train) + list(heldout) != [] and "".join(train) + "".join(heldout) == ref[0]
    else:
        assert list(train) + list(heldout) == ref
        assert len(heldout) == min(len(ref) - 1, max(1, -(-len(ref) // 10)))
    assert corpus.n_chars("train") == sum(map(len, train))
    if sample_by != "document":  # a view of datasets' cache: pickled by path, not by content
        assert train._files is not None and pickle.loads(pickle.dumps(heldout)) == list(heldout)


def test_text_source_jsonl_drops_null_blank_and_non_string_rows(tmp_path):
    rows = [{"text": "a"}, {"text": None}, {"text": " \u3000 "}, {"text": "b"}, {"text": ""}, {"text": "c"}]
    rows += [{"text": f"doc {i}"} for i in range(20)]
    f = tmp_path / "a.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows))
    c = TextSource(files=str(f), cache_dir=str(tmp_path / "hf")).load()
    ref = [r["text"] for r in rows if isinstance(r["text"], str) and r["text"].strip()]
    assert list(c.texts["train"]) + list(c.texts["heldout"]) == ref and c.texts["heldout"] == ref[-3:]
    mixed = tmp_path / "mixed.jsonl"  # datasets reads a column of mixed types as Json: only its str values count
    mixed.write_text("\n".join(json.dumps({"text": v}) for v in ["x", 5, "y", None, ["z"], "w", {"k": 1}, "v"]))
    c = TextSource(files=str(mixed), cache_dir=str(tmp_path / "hf")).load()
    assert list(c.texts["train"]) + list(c.texts["heldout"]) == ["x", "y", "w", "v"]
    ints = tmp_path / "ints.jsonl"
    ints.write_text('{"text": 1}\n{"text": 2}\n')
    with pytest.raises(DataError, match="no text"):
        TextSource(files=str(ints), cache_dir=str(tmp_path / "hf")).load()


# ----------------------------------------------------------------------------- HubSource, offline on local files
def _jsonl(path: Path, texts: list) -> str:
    path.write_text("\n".join(json.dumps({"text": t, "id": i}) for i, t in enumerate(texts)) + "\n")
    return str(path)


def _hub(tmp_path: Path, data_files, **kw) -> HubSource:
    return HubSource(**{"name": "json", "data_files": data_files, "cache_dir": str(tmp_path / "hf"), **kw})


def test_hub_source_streams_local_files_offline_with_max_docs_and_tail_split(tmp_path):
    docs = _docs(50)
    f = _jsonl(tmp_path / "c.jsonl", docs)
    c = _hub(tmp_path, f, max_docs=None, heldout_fraction=0.1).load()  # no validation split: tail split
    train, heldout = c.texts["train"], c.texts["heldout"]
    assert isinstance(train, ArrowTexts) and isinstance(heldout, ArrowTexts)
    assert train == docs[:45] and heldout == docs[45:]
    c = _hub(tmp_path, f, max_docs=20, heldout_fraction=0.1).load()
    assert c.texts["train"] == docs[:18] and c.texts["heldout"] == docs[18:20]
    stream_files = list((tmp_path / "hf" / "densitylab_streams").rglob("*.arrow"))
    assert stream_files and not list((tmp_path / "hf" / "densitylab_streams").rglob("*.tmp"))


def test_hub_source_held_out_split_from_data_files_mapping_and_blank_rows(tmp_path):
    docs = _docs(30)
    train_f = _jsonl(tmp_path / "train.jsonl", [docs[0], None, "  ", *docs[1:20]])
    val_f = _jsonl(tmp_path / "val.jsonl", docs[20:])
    c = _hub(tmp_path, {"train": train_f, "validation": val_f}, max_heldout_docs=4).load()
    assert c.texts["train"] == docs[:20] and c.texts["heldout"] == docs[20:24]
    text_f = tmp_path / "lines.txt"  # the text builder: one document per line, blank lines dropped
    text_f.write_text("one\n\n  \ntwo\nthree\nfour\n")
    c = _hub(tmp_path, [str(text_f)], name="text", heldout_fraction=0.25).load()
    assert c.texts["train"] == ["one", "two", "three"] and c.texts["heldout"] == ["four"]


def test_hub_source_local_folder_as_name_is_not_checked_on_the_hub(tmp_path):
    docs = _docs(12)
    folder = tmp_path / "corpus"
    folder.mkdir()
    _jsonl(folder / "train.jsonl", docs[:10])
    _jsonl(folder / "validation.jsonl", docs[10:])
    c = HubSource(name=str(folder), cache_dir=str(tmp_path / "hf")).load()
    assert c.texts["train"] == docs[:10] and c.texts["heldout"] == docs[10:]


def test_hub_source_chunked_writer_gives_the_same_documents(tmp_path, monkeypatch):
    docs = _docs(53)
    f = _jsonl(tmp_path / "c.jsonl", docs)
    whole = _hub(tmp_path, f, max_docs=None).load()
    monkeypatch.setattr(HubSource, "chunk_docs", 4)  # 53 documents in 14 record batches
    chunked = _hub(tmp_path / "b", f, max_docs=None).load()
    assert chunked.texts["train"] == whole.texts["train"] and chunked.texts["heldout"] == whole.texts["heldout"]
    assert chunked.texts["train"]._chunks and len(chunked.texts["train"]._chunks) == 14
    assert list(chunked.texts["train"]) + list(chunked.texts["heldout"]) == docs


def test_write_texts_progress_counts_documents_and_characters(tmp_path):
    import io

    from tqdm import tqdm

    values = ["ab", None, " ", "cde", 7, "f"] * 5
    with tqdm(total=len(values), file=io.StringIO(), mininterval=0) as bar:
        n = write_texts(iter(values), tmp_path / "w.arrow", chunk_docs=2, bar=bar)
        assert bar.n == len(values)  # every value read
    assert n == 15 and ArrowTexts.open_arrow(tmp_path / "w.arrow") == ["ab", "cde", "f"] * 5
    assert "chars" in str(bar.postfix) and "30" in str(bar.postfix)

    def failing():
        yield "a"
        raise RuntimeError("stream broke")

    with pytest.raises(RuntimeError, match="stream broke"):
        write_texts(failing(), tmp_path / "x.arrow", chunk_docs=1)
    assert not list(tmp_path.glob("*x.arrow*"))  # no half-written file left
    with pytest.raises(ValueError, match="chunk_docs"):
        write_texts([], tmp_path / "y.arrow", chunk_docs=0)


def test_hub_source_revision_and_local_files_in_the_fingerprint(tmp_path):
    f = _jsonl(tmp_path / "c.jsonl", _docs(5))
    base = HubSource(name="someone/corpus")
    assert base.fingerprint()["revision"] is None
    pinned = HubSource(name="someone/corpus", revision="0123abcd")
    assert pinned.fingerprint()["revision"] == "0123abcd"
    assert pinned.fingerprint() != base.fingerprint()
    assert pinned.fingerprint() != HubSource(name="someone/corpus", revision="main").fingerprint()
    assert pinned.stream_dir() != HubSource(name="someone/corpus", revision="main").stream_dir()
    local = _hub(tmp_path, f)
    before = local.fingerprint()
    assert before["data_files"]["None"][0][0] == f
    _jsonl(Path(f), _docs(6))  # the file changed: so does the fingerprint
    assert local.fingerprint() != before
    with pytest.raises(ConfigError, match="data.source.revision=1234: expected a string"):
        HubSource(name="someone/corpus", revision=1234)
    with pytest.raises(ConfigError, match="data.source.data_files=5"):
        HubSource(name="json", data_files=5)
    with pytest.raises(ConfigError, match="data.source.max_docs=0"):
        HubSource(name="json", max_docs=0)
    with pytest.raises(DataError, match="data.source.data_files: .*nope.jsonl.* matches no file"):
        _hub(tmp_path, str(tmp_path / "nope.jsonl")).fingerprint()


def test_hub_source_errors_name_the_setting(tmp_path):
    f = _jsonl(tmp_path / "c.jsonl", _docs(10))
    with pytest.raises(DataError, match=r"data.source.text_field='body' is not a column of json: expected one of"):
        _hub(tmp_path, f, text_field="body").load()
    with pytest.raises(DataError, match="data.source.split='nope'"):
        _hub(tmp_path, f, split="nope").load()
    with pytest.raises(DataError, match="no text"):
        _hub(tmp_path, _jsonl(tmp_path / "blank.jsonl", [" ", None])).load()
    with pytest.raises(HubUnreachableError, match="data.source.name='nobody/x'.*data=text"):
        HubSource(name="nobody/x").load()  # a hub id is still checked (offline here)
    with pytest.raises(HubUnreachableError, match="data.source.name='nobody/x'"):  # so are remote data files
        HubSource(name="nobody/x", data_files="hf://datasets/nobody/x/a.jsonl").load()
    with pytest.raises(ConfigError, match="data.source.name is not set"):
        HubSource(name="").load()


@pytest.mark.slow
def test_data_module_prepares_a_streamed_local_hub_source(tmp_path):
    """data=hub end to end offline: stream, tokenize, pack; the held-out split is the file's tail."""
    from densitylab.data import DataModule
    from densitylab.data.entities import CapitalizedEntities
    from densitylab.data.tokenizer import TrainedBPE

    f = _jsonl(tmp_path / "docs.jsonl", [f"Document number {i} about Verona. " * 10 for i in range(40)])
    source = _hub(tmp_path, f, heldout_fraction=0.1, revision=None)
    d = DataModule(
        source=source,
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
    assert d.meta["splits"]["train"]["documents"] == 36 and d.meta["splits"]["heldout"]["documents"] == 4
    held = d.tokenizer.decode(d.splits["heldout"].tokens[: d.splits["heldout"].n_real].tolist())
    assert "Document number 39" in held and "Document number 35 " not in held
