"""Tests of the byte-level BPE tokenizer (densitylab.data.tokenizer)."""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Sequence

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

import densitylab.data.tokenizer as tokmod
from densitylab.data.tokenizer import (
    EOS,
    TokenizerFile,
    TrainedBPE,
    corpus_fingerprint,
    get_tokenizer,
    load_tokenizer,
    sample_documents,
    train_bpe,
)
from densitylab.errors import ConfigError

VOCAB = 350

WORDS = [
    "the",
    "river",
    "runs",
    "north",
    "and",
    "south",
    "Alice",
    "Bob",
    "worked",
    "with",
    "café",
    "naïve",
    "Zürich",
    "São",
    "Paulo",
    "façade",
    "Ærø",
    "smørrebrød",
    "Łódź",
    "Ελλάδα",
    "東京",
    "大学",
    "数学",
    "北京",
    "こんにちは",
    "한국어",
    "😀",
    "🚀",
    "👩‍🔬",
    "🇯🇵",
]


def multilingual_corpus(n_docs: int = 60, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        parts = []
        for _ in range(rng.randint(5, 30)):
            parts.append(rng.choice(WORDS))
            parts.append(rng.choice([" ", " ", " ", "\n", "\t", ", ", ".\n\n", "  "]))
        docs.append("".join(parts).rstrip(" ") if rng.random() < 0.5 else "".join(parts))
    docs.append("")  # an empty document must not break anything
    docs.append("  leading spaces and trailing\t\n")
    return docs


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return multilingual_corpus()


@pytest.fixture(scope="module")
def tok(corpus) -> Tokenizer:
    return train_bpe(corpus, vocab_size=VOCAB)


def roundtrip(tok: Tokenizer, text: str) -> str:
    return tok.decode(tok.encode(text, add_special_tokens=False).ids)


# ---------------------------------------------------------------------------------------------
# train_bpe
# ---------------------------------------------------------------------------------------------


def test_eos_is_id_zero_and_vocab_within_request(tok):
    assert tok.token_to_id(EOS) == 0
    assert tok.id_to_token(0) == EOS
    assert 257 < tok.get_vocab_size() <= VOCAB  # bytes + EOS + at least one merge
    # All 256 byte symbols are present (byte fallback).
    vocab = tok.get_vocab()
    for ch in pre_tokenizers.ByteLevel.alphabet():
        assert ch in vocab


def test_roundtrip_every_training_document(tok, corpus):
    for doc in corpus:
        assert roundtrip(tok, doc) == doc


@pytest.mark.parametrize(
    "text",
    [
        "Ωμέγα ☃ never seen",
        "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 math letters 𝟘𝟙𝟚",
        "zero\u200bwidth\u00a0nbsp and \x00 nul and \x7f del",
        "Ελληνικά + 中文 + العربية + עברית + हिन्दी",
        "🧬🦀🫠 new emoji, 👨‍👩‍👧‍👦 family",
        "\r\n windows\r\nline endings \t\t tabs   ",
        " ",
        "x",
    ],
)
def test_roundtrip_unseen_strings_with_unseen_characters(tok, text):
    enc = tok.encode(text, add_special_tokens=False)
    assert all(0 < i < tok.get_vocab_size() for i in enc.ids)  # never EOS, never unknown
    assert tok.decode(enc.ids) == text


def test_merges_are_learned_from_corpus(tok):
    # A frequent word compresses to fewer tokens than its UTF-8 bytes.
    word = " Zürich"
    assert len(tok.encode(word, add_special_tokens=False).ids) < len(word.encode())


def test_train_bpe_vocab_too_small_raises_configerror(corpus):
    with pytest.raises(ConfigError, match="vocab_size"):
        train_bpe(corpus, vocab_size=257)
    with pytest.raises(ConfigError, match="vocab_size"):
        train_bpe(corpus, vocab_size=100)
    # The documented minimum works.
    assert train_bpe(corpus[:5], vocab_size=258).get_vocab_size() <= 258


# ---------------------------------------------------------------------------------------------
# Fingerprint and cache
# ---------------------------------------------------------------------------------------------


def test_corpus_fingerprint_distinguishes_document_boundaries():
    s = {"vocab_size": 300}
    assert corpus_fingerprint(["ab", "c"], s) != corpus_fingerprint(["a", "bc"], s)
    assert corpus_fingerprint(["abc"], s) != corpus_fingerprint(["ab", "c"], s)
    assert corpus_fingerprint(["ab", "c"], s) == corpus_fingerprint(["ab", "c"], dict(s))
    assert corpus_fingerprint(["ab", "c"], s) != corpus_fingerprint(["ab", "c"], {"vocab_size": 301})
    assert corpus_fingerprint(["x"], {"a": 1, "b": 2}) == corpus_fingerprint(["x"], {"b": 2, "a": 1})
    fp = corpus_fingerprint(["ab"], s)
    assert len(fp) == 16 and int(fp, 16) >= 0


def test_get_tokenizer_caches_and_reuses(tmp_path, corpus, monkeypatch):
    calls = []
    real_train = tokmod.train_bpe

    def counting_train(*a, **k):
        calls.append(1)
        return real_train(*a, **k)

    monkeypatch.setattr(tokmod, "train_bpe", counting_train)
    tok1, key1 = get_tokenizer(corpus, vocab_size=VOCAB, cache_dir=tmp_path)
    assert len(calls) == 1
    cached = tmp_path / f"tokenizer-{key1}.json"
    assert cached.is_file()
    assert [p.name for p in tmp_path.iterdir()] == [cached.name]  # no temporary file left behind

    def no_train(*a, **k):
        raise AssertionError("train_bpe called although the tokenizer is cached")

    monkeypatch.setattr(tokmod, "train_bpe", no_train)
    tok2, key2 = get_tokenizer(list(corpus), vocab_size=VOCAB, cache_dir=tmp_path)
    assert key2 == key1
    assert tok2.get_vocab() == tok1.get_vocab()
    sample = corpus[3]
    assert tok2.encode(sample).ids == tok1.encode(sample).ids

    # Different texts or settings: new key, so training happens (and our stub raises).
    with pytest.raises(AssertionError, match="train_bpe called"):
        get_tokenizer(corpus + ["one more document"], vocab_size=VOCAB, cache_dir=tmp_path)
    with pytest.raises(AssertionError, match="train_bpe called"):
        get_tokenizer(corpus, vocab_size=VOCAB + 10, cache_dir=tmp_path)
    with pytest.raises(AssertionError, match="train_bpe called"):
        get_tokenizer(corpus, vocab_size=VOCAB, min_frequency=3, cache_dir=tmp_path)


def test_get_tokenizer_fingerprint_depends_on_texts_and_settings(tmp_path, corpus):
    small = corpus[:10]
    _, k = get_tokenizer(small, vocab_size=300, cache_dir=tmp_path)
    _, k_texts = get_tokenizer(small[:-1], vocab_size=300, cache_dir=tmp_path)
    _, k_vocab = get_tokenizer(small, vocab_size=310, cache_dir=tmp_path)
    _, k_again = get_tokenizer(small, vocab_size=300)  # no cache dir: same key
    assert len({k, k_texts, k_vocab}) == 3
    assert k_again == k
    assert len(list(tmp_path.glob("tokenizer-*.json"))) == 3


def test_get_tokenizer_from_path(tmp_path, tok, monkeypatch):
    p = tmp_path / "tokenizer.json"
    tok.save(str(p))

    def no_train(*a, **k):
        raise AssertionError("should load, not train")

    monkeypatch.setattr(tokmod, "train_bpe", no_train)
    loaded, key = get_tokenizer(["ignored"], path=str(p), cache_dir=tmp_path / "cache")
    assert key.startswith("file-")
    assert loaded.get_vocab() == tok.get_vocab()
    assert not (tmp_path / "cache").exists()


# ---------------------------------------------------------------------------------------------
# Training sample (tokenizer.sample_chars)
# ---------------------------------------------------------------------------------------------

# The settings dict of the cache key before sample_chars existed: below the cap the key must stay this one.
OLD_SETTINGS = {"kind": "byte_bpe", "vocab_size": VOCAB, "min_frequency": 2, "v": 1}


class LazyDocs(Sequence):
    """A read-only sequence of documents (len, integer index, slice, iteration only) that counts full passes."""

    def __init__(self, docs: list[str]) -> None:
        self._docs = tuple(docs)
        self.passes = 0

    def __len__(self) -> int:
        return len(self._docs)

    def __getitem__(self, i):
        return self._docs[i]

    def __iter__(self):
        self.passes += 1
        return iter(self._docs)


def test_sample_documents_takes_every_kth_document_over_the_whole_split():
    docs = [f"{i:09d}\n" for i in range(100)]  # 100 documents of 10 characters: 1000 characters
    sample, total, k = sample_documents(docs, 250)
    assert (total, k) == (1000, 4)
    assert sample == [docs[i] for i in range(0, 100, 4)]  # documents 0, 4, ..., 96
    assert sum(map(len, sample)) == 250
    assert sample[0] == docs[0] and sample[-1] == docs[96]  # from the first and the last part of the split
    assert sum(1 for d in sample if int(d) >= 75) == 6
    # k rounds up, so the sample never exceeds the cap for equal-length documents.
    sample, _, k = sample_documents(docs, 333)
    assert k == 4 and sum(map(len, sample)) <= 333
    sample, _, k = sample_documents(docs, 999)
    assert k == 2 and sample == docs[::2]
    # One document over the cap is enough for it to bite; a cap of 1 keeps every 1000th character's document.
    sample, _, k = sample_documents(docs, 1)
    assert k == 1000 and sample == [docs[0]]


@pytest.mark.parametrize("cap", [None, 0, 1000, 1001, 10_000_000])
def test_sample_documents_no_cap_or_below_it_is_the_corpus_itself(cap):
    docs = ["a" * 10] * 100
    sample, total, k = sample_documents(docs, cap)
    assert sample is docs and total == 1000 and k == 1


def test_sample_documents_on_a_lazy_sequence_with_one_pass():
    docs = [f"doc {i} " + "x" * (i % 7) for i in range(50)]
    lazy = LazyDocs(docs)
    total = sum(map(len, docs))
    sample, got_total, k = sample_documents(lazy, total // 5)
    assert got_total == total and lazy.passes == 1
    assert k == -(-total // (total // 5)) and list(sample) == docs[::k]
    assert sample_documents(lazy, None)[0] is lazy


def test_below_the_cap_tokenizer_and_key_are_as_without_the_setting(tmp_path, corpus, monkeypatch):
    total = sum(map(len, corpus))
    today = corpus_fingerprint(corpus, OLD_SETTINGS)
    trained_on = []
    real_train = tokmod.train_bpe
    monkeypatch.setattr(tokmod, "train_bpe", lambda texts, **k: trained_on.append(texts) or real_train(texts, **k))
    tok_none, key_none = get_tokenizer(corpus, vocab_size=VOCAB, sample_chars=None)
    for cap in (0, total, 10_000_000):
        tok_cap, key_cap = get_tokenizer(corpus, vocab_size=VOCAB, sample_chars=cap)
        assert key_cap == key_none == today
        assert tok_cap.to_str() == tok_none.to_str()
    assert all(t is corpus for t in trained_on)  # the whole corpus, not a copy or a sample
    # The config object with its default cap (10 M characters) keys and trains the same way.
    tok_spec, key_spec = TrainedBPE(vocab_size=VOCAB, min_frequency=2).build(corpus, cache_dir=tmp_path)
    assert key_spec == today and tok_spec.to_str() == tok_none.to_str()
    assert (tmp_path / f"tokenizer-{today}.json").is_file()


def test_above_the_cap_trains_on_the_sample_with_a_new_key(tmp_path, corpus, monkeypatch, caplog):
    total = sum(map(len, corpus))
    cap = total // 3
    k = -(-total // cap)
    trained_on = []
    real_train = tokmod.train_bpe
    monkeypatch.setattr(tokmod, "train_bpe", lambda texts, **kw: trained_on.append(texts) or real_train(texts, **kw))
    with caplog.at_level(logging.INFO, logger="densitylab.data.tokenizer"):
        tok, key = get_tokenizer(corpus, vocab_size=VOCAB, sample_chars=cap, cache_dir=tmp_path)
    assert trained_on == [corpus[::k]]
    assert key != corpus_fingerprint(corpus, OLD_SETTINGS)
    assert key != corpus_fingerprint(corpus[::k], OLD_SETTINGS)  # the cap is in the key, not only the sample
    n_chars = sum(map(len, corpus[::k]))
    lines = [r.getMessage() for r in caplog.records if "sample" in r.getMessage()]
    assert lines == [
        f"tokenizer: training on a sample of {len(corpus[::k])} of {len(corpus)} documents, {n_chars} of {total} "
        f"characters (one document in {k}; tokenizer.sample_chars={cap})"
    ]
    # Same corpus and cap: cache hit; another cap that gives another k: another key.
    monkeypatch.setattr(tokmod, "train_bpe", lambda *a, **kw: pytest.fail("trained although cached"))
    tok2, key2 = get_tokenizer(corpus, vocab_size=VOCAB, sample_chars=cap, cache_dir=tmp_path)
    assert key2 == key and tok2.to_str() == tok.to_str()
    monkeypatch.setattr(tokmod, "train_bpe", real_train)
    _, key_other = get_tokenizer(corpus, vocab_size=VOCAB, sample_chars=total // 4, cache_dir=None)
    assert key_other != key
    assert TrainedBPE(VOCAB, 2, sample_chars=cap).build(corpus, cache_dir=tmp_path)[0].to_str() == tok.to_str()


@pytest.mark.parametrize("bad", [-1, 1.5, 1e7, True, False, "10M"])
def test_sample_chars_must_be_a_nonnegative_integer(bad):
    with pytest.raises(ConfigError) as ei:
        TrainedBPE(vocab_size=VOCAB, min_frequency=2, sample_chars=bad)
    msg = str(ei.value)
    assert msg.startswith(f"tokenizer.sample_chars={bad!r}: expected an integer >= 0") and "\n" not in msg
    with pytest.raises(ConfigError, match="tokenizer.sample_chars"):
        get_tokenizer(["abc"], vocab_size=VOCAB, sample_chars=bad)


def test_trained_bpe_sample_chars_default_and_fingerprint():
    default = TrainedBPE(vocab_size=VOCAB, min_frequency=2)
    assert default.sample_chars == 10_000_000
    assert default.fingerprint()["sample_chars"] == 10_000_000
    assert TrainedBPE(VOCAB, 2, sample_chars=0).fingerprint() == TrainedBPE(VOCAB, 2, sample_chars=None).fingerprint()
    assert TrainedBPE(VOCAB, 2, sample_chars=None).fingerprint()["sample_chars"] is None
    assert TrainedBPE(VOCAB, 2, sample_chars=5).fingerprint() != default.fingerprint()


def test_tokenizer_file_accepts_sample_chars_unused(tmp_path, tok):
    p = tmp_path / "tokenizer.json"
    tok.save(str(p))
    spec = TokenizerFile(path=str(p), vocab_size=512, sample_chars=123)
    assert spec.build(["ignored"])[0].get_vocab() == tok.get_vocab()


# ---------------------------------------------------------------------------------------------
# load_tokenizer errors
# ---------------------------------------------------------------------------------------------


def test_load_tokenizer_roundtrip(tmp_path, tok):
    p = tmp_path / "tok.json"
    tok.save(str(p))
    loaded = load_tokenizer(p)
    assert loaded.get_vocab() == tok.get_vocab()
    assert loaded.token_to_id(EOS) == 0


def test_load_tokenizer_missing_file(tmp_path):
    p = tmp_path / "nope" / "tokenizer.json"
    with pytest.raises(ConfigError) as ei:
        load_tokenizer(p)
    assert str(p) in str(ei.value)
    # A directory is not a file either.
    with pytest.raises(ConfigError) as ei:
        load_tokenizer(tmp_path)
    assert str(tmp_path) in str(ei.value)


@pytest.mark.parametrize("content", ["this is not json {", json.dumps({"hello": "world"}), ""])
def test_load_tokenizer_not_a_tokenizer(tmp_path, content):
    p = tmp_path / "bad.json"
    p.write_text(content)
    with pytest.raises(ConfigError) as ei:
        load_tokenizer(p)
    assert str(p) in str(ei.value)


def test_load_tokenizer_without_eos(tmp_path, corpus):
    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.train_from_iterator(
        corpus, trainer=trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>"], show_progress=False)
    )
    p = tmp_path / "no_eos.json"
    t.save(str(p))
    with pytest.raises(ConfigError) as ei:
        load_tokenizer(p)
    assert str(p) in str(ei.value)
    assert EOS in str(ei.value)
