"""Tests of packing, sample ids, span mapping and canaries (densitylab.data.packing / loaders / canaries)."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from densitylab.data.canaries import make_canaries
from densitylab.data.loaders import WindowDataset, collate_batch
from densitylab.data.packing import (
    IGNORE_INDEX,
    WINDOW_SPAN_COLUMNS,
    PackedSplit,
    char_spans_to_tokens,
    pack_documents,
    tokenize_and_pack,
)
from densitylab.data.tokenizer import EOS, train_bpe
from densitylab.errors import ConfigError, DataError

EOS_ID = 0


def random_docs(n_docs: int = 40, seed: int = 0, vocab: int = 100, max_len: int = 30) -> list[list[int]]:
    rng = random.Random(seed)
    docs = [[rng.randint(1, vocab - 1) for _ in range(rng.randint(0, max_len))] for _ in range(n_docs)]
    docs[3] = []  # an empty document still contributes its EOS
    return docs


def flat_with_eos(docs: list[list[int]], eos: int = EOS_ID) -> list[int]:
    return [t for d in docs for t in (*d, eos)]


# ---------------------------------------------------------------------------------------------
# pack_documents: nothing lost, padding only at the end
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("block_size", [1, 2, 7, 16, 33])
def test_pack_documents_loses_no_token(block_size):
    docs = random_docs()
    packed = pack_documents(docs, EOS_ID, block_size)
    flat = flat_with_eos(docs)
    L, bs = len(flat), block_size

    assert packed.n_real == L
    assert packed.block_size == bs
    assert packed.tokens.dtype == np.uint8  # the smallest dtype that holds ids < 100
    assert packed.tokens[:L].tolist() == flat
    assert np.all(packed.tokens[L:] == EOS_ID)
    assert packed.tokens.size == packed.n_windows * bs + 1
    assert packed.n_windows == -(-(L - 1) // bs)  # the fewest windows that cover every target
    # doc_offsets locate every document (ending with its EOS).
    assert packed.doc_offsets[0] == 0 and packed.doc_offsets[-1] == L
    for i, d in enumerate(docs):
        s, e = packed.doc_offsets[i], packed.doc_offsets[i + 1]
        assert packed.tokens[s:e].tolist() == [*d, EOS_ID]

    windows = packed.windows()
    assert windows.shape == (packed.n_windows, bs + 1)
    input_count: Counter[int] = Counter()
    target_count: Counter[int] = Counter()
    for w in range(packed.n_windows):
        x, y = packed.window(w)
        assert x.shape == y.shape == (bs,)
        assert x.dtype == y.dtype == torch.int64
        assert x.tolist() == windows[w, :-1].tolist()
        real = y != IGNORE_INDEX
        assert torch.equal(y[real], torch.from_numpy(windows[w, 1:].astype(np.int64))[real])
        for j in range(bs):
            pos = w * bs + j
            assert x[j].item() == packed.tokens[pos].item()
            input_count[pos] += 1
            if real[j]:
                assert pos + 1 < L
                assert y[j].item() == flat[pos + 1]
                target_count[pos + 1] += 1
            else:
                assert pos + 1 >= L  # only padding targets are ignored
                assert w == packed.n_windows - 1  # ... and only in the last window
        # Ignored targets form a suffix of the window.
        if not real.all():
            first_pad = int((~real).nonzero()[0])
            assert not real[first_pad:].any()

    # Every real position except possibly the final EOS is an input exactly once; every position
    # after the first is a target exactly once.
    for pos in range(L - 1):
        assert input_count[pos] == 1, pos
    assert input_count[L - 1] <= 1
    assert all(c == 1 for c in input_count.values())
    assert sorted(target_count) == list(range(1, L))
    assert all(c == 1 for c in target_count.values())


def test_pack_documents_exact_fit_has_no_padding():
    # 4 docs of 4 tokens + EOS = 20 tokens; block_size 19 -> exactly one full window, no padding.
    docs = [[1, 2, 3, 4]] * 4
    packed = pack_documents(docs, EOS_ID, 19)
    assert packed.n_real == 20 and packed.n_windows == 1
    x, y = packed.window(0)
    assert torch.all(y != IGNORE_INDEX)
    assert x.tolist() == flat_with_eos(docs)[:-1]
    assert y.tolist() == flat_with_eos(docs)[1:]
    # L - 1 = 20 divisible by block_size 5: four full windows, no padding, no extra window.
    docs = [[1, 2, 3, 4]] * 4 + [[]]
    packed = pack_documents(docs, EOS_ID, 5)
    assert packed.n_real == 21 and packed.n_windows == 4
    assert packed.tokens.size == 21
    assert all(torch.all(packed.window(w)[1] != IGNORE_INDEX) for w in range(4))


def test_last_window_padding_is_ignore_index():
    docs = [[5, 6, 7], [8, 9]]  # stream 5 6 7 E 8 9 E : L = 7
    packed = pack_documents(docs, EOS_ID, 4)
    assert packed.n_windows == 2
    x0, y0 = packed.window(0)
    x1, y1 = packed.window(1)
    assert x0.tolist() == [5, 6, 7, EOS_ID] and y0.tolist() == [6, 7, EOS_ID, 8]
    assert x1.tolist() == [8, 9, EOS_ID, EOS_ID] and y1.tolist() == [9, EOS_ID, IGNORE_INDEX, IGNORE_INDEX]
    with pytest.raises(IndexError):
        packed.window(2)
    with pytest.raises(IndexError):
        packed.window(-1)


def test_packing_is_deterministic():
    docs = random_docs(seed=5)
    a = pack_documents(docs, EOS_ID, 8)
    b = pack_documents([list(d) for d in docs], EOS_ID, 8)
    assert np.array_equal(a.tokens, b.tokens)
    assert np.array_equal(a.windows(), b.windows())
    assert np.array_equal(a.doc_offsets, b.doc_offsets)
    for w in range(a.n_windows):
        assert all(torch.equal(u, v) for u, v in zip(a.window(w), b.window(w)))


def test_block_size_larger_than_corpus_raises():
    docs = [[1, 2, 3], [4]]  # 6 tokens with EOS
    with pytest.raises(DataError, match="block_size"):
        pack_documents(docs, EOS_ID, 6)
    with pytest.raises(DataError, match="block_size"):
        pack_documents(docs, EOS_ID, 100)
    assert pack_documents(docs, EOS_ID, 5).n_windows == 1


@pytest.mark.parametrize("docs", [[[], [], []], []])
def test_all_empty_documents_raise(docs):
    with pytest.raises(DataError, match="train"):
        pack_documents(docs, EOS_ID, 1)
    with pytest.raises(DataError, match="heldout"):
        pack_documents(docs, EOS_ID, 1, split="heldout")


# ---------------------------------------------------------------------------------------------
# WindowDataset: stable sample ids through a shuffled DataLoader
# ---------------------------------------------------------------------------------------------


def test_window_dataset_shuffled_loader_returns_the_right_windows():
    packed = pack_documents(random_docs(seed=2), EOS_ID, 8)
    ds = WindowDataset(packed)
    assert len(ds) == packed.n_windows
    loader = DataLoader(
        ds, batch_size=5, shuffle=True, collate_fn=collate_batch, generator=torch.Generator().manual_seed(0)
    )
    seen = []
    for batch in loader:
        assert set(batch) == {"input_ids", "labels", "sample_id"}
        n = batch["sample_id"].shape[0]
        assert batch["input_ids"].shape == batch["labels"].shape == (n, 8)
        assert batch["input_ids"].dtype == batch["labels"].dtype == batch["sample_id"].dtype == torch.int64
        for row in range(n):
            sid = int(batch["sample_id"][row])
            x, y = packed.window(sid)
            assert torch.equal(batch["input_ids"][row], x), sid
            assert torch.equal(batch["labels"][row], y), sid
            seen.append(sid)
    assert sorted(seen) == list(range(packed.n_windows))  # every window once per epoch
    assert seen != sorted(seen)  # and actually shuffled

    # Sample ids do not depend on the shuffle: repacking and another seed give the same content.
    ds2 = WindowDataset(pack_documents(random_docs(seed=2), EOS_ID, 8))
    loader2 = DataLoader(
        ds2, batch_size=3, shuffle=True, collate_fn=collate_batch, generator=torch.Generator().manual_seed(1)
    )
    for batch in loader2:
        for row, sid in enumerate(batch["sample_id"].tolist()):
            assert torch.equal(batch["input_ids"][row], packed.window(sid)[0])


def test_getitems_agrees_with_getitem():
    packed = pack_documents(random_docs(seed=3), EOS_ID, 6)
    ds = WindowDataset(packed)
    last = packed.n_windows - 1
    assert (packed.window(last)[1] == IGNORE_INDEX).any(), "fixture should pad the last window"
    indices = [last, 0, 3, last, 1]
    batch = ds.__getitems__(indices)
    assert batch["sample_id"].tolist() == indices
    for row, i in enumerate(indices):
        item = ds[i]
        x, y = packed.window(i)
        assert int(item["sample_id"]) == i
        assert torch.equal(item["input_ids"], x) and torch.equal(item["labels"], y)
        assert torch.equal(batch["input_ids"][row], x)
        assert torch.equal(batch["labels"][row], y)
    # The labels of a batch are a copy: editing them does not corrupt the stream.
    before = packed.tokens.copy()
    batch["labels"].fill_(7)
    batch["input_ids"].fill_(7)
    batch2 = ds.__getitems__(indices)
    assert np.array_equal(packed.tokens, before)
    assert torch.equal(batch2["labels"][0], packed.window(last)[1])
    # Out-of-range indices are errors, not silent wrap-around.
    with pytest.raises(IndexError):
        ds[len(ds)]
    with pytest.raises(IndexError):
        ds.__getitems__([0, -1])


def test_window_dataset_pad_to_multiple():
    packed = pack_documents(random_docs(seed=4), EOS_ID, 8)
    n = packed.n_windows
    m = 7 if n % 7 else 6
    ds = WindowDataset(packed, pad_to_multiple=m, pad_id=3)
    assert len(ds) % m == 0 and n <= len(ds) < n + m and len(ds) > n
    loader = DataLoader(
        ds, batch_size=m, shuffle=True, collate_fn=collate_batch, generator=torch.Generator().manual_seed(0)
    )
    real_seen, n_pad = [], 0
    for batch in loader:
        assert batch["input_ids"].shape == (m, 8)  # every batch is full
        for row, sid in enumerate(batch["sample_id"].tolist()):
            if sid == -1:
                n_pad += 1
                assert torch.all(batch["input_ids"][row] == 3)
                assert torch.all(batch["labels"][row] == IGNORE_INDEX)
            else:
                x, y = packed.window(sid)
                assert torch.equal(batch["input_ids"][row], x) and torch.equal(batch["labels"][row], y)
                real_seen.append(sid)
    assert sorted(real_seen) == list(range(n))
    assert n_pad == len(ds) - n


# ---------------------------------------------------------------------------------------------
# Spans
# ---------------------------------------------------------------------------------------------

NAMES = ["Alice Smith", "Bob Jones", "Chloé Dubois", "Zoë Åberg", "李小龙", "Emeka Obi"]
FILLERS = [
    "once upon a time",
    "the quick brown fox",
    "über café naïve",
    "🚀 launch day",
    "東京 大学",
    "in the river",
    "and then",
    "\n\t",
    "",
]


@pytest.fixture(scope="module")
def span_corpus() -> tuple[list[str], pd.DataFrame]:
    rng = random.Random(7)
    texts, rows = [], []
    for d in range(25):
        text = ""
        for _ in range(rng.randint(1, 4)):
            text += rng.choice(FILLERS) + " "
            ent = rng.randrange(len(NAMES))
            start = len(text)
            text += NAMES[ent]
            rows.append(
                {"doc": d, "start": start, "end": len(text), "kind": "name", "entity": ent, "value": NAMES[ent]}
            )
            text += rng.choice([", ", " ", ". "]) + rng.choice(FILLERS)
        texts.append(text)
    spans = pd.DataFrame(rows).astype({"kind": "string", "value": "string"})
    for r in spans.itertuples():
        assert texts[r.doc][r.start : r.end] == r.value
    return texts, spans


@pytest.fixture(scope="module")
def span_tok(span_corpus):
    texts, _ = span_corpus
    return train_bpe(texts, vocab_size=320)


def _check_spans(packed: PackedSplit, tok, spans_in: pd.DataFrame, bs: int) -> None:
    out = packed.spans
    assert tuple(out.columns) == WINDOW_SPAN_COLUMNS
    assert len(out) == len(spans_in)
    # Sorted by (sample_id, start).
    keys = list(zip(out["sample_id"], out["start"]))
    assert keys == sorted(keys)
    # One output row per input span (matched by doc, entity and order within doc).
    assert Counter(zip(out["doc"], out["entity"])) == Counter(zip(spans_in["doc"], spans_in["entity"]))
    for r in out.itertuples():
        assert 0 <= r.start < bs  # first token is an input of its window
        assert r.end > r.start
        abs0, abs1 = r.sample_id * bs + r.start, r.sample_id * bs + r.end
        assert r.sample_id == abs0 // bs
        assert abs1 <= packed.n_real
        # The span lies inside its document.
        assert packed.doc_offsets[0] <= abs0  # trivially
        name = NAMES[r.entity]
        decoded = tok.decode(packed.tokens[abs0:abs1].tolist())
        assert name in decoded, (name, decoded)
        # Minimal: dropping the first or last token loses part of the name.
        assert name not in tok.decode(packed.tokens[abs0 + 1 : abs1].tolist())
        assert name not in tok.decode(packed.tokens[abs0 : abs1 - 1].tolist())
        assert r.kind == "name"


@pytest.mark.parametrize("bs", [4, 16])
def test_tokenize_and_pack_maps_char_spans_to_window_tokens(span_corpus, span_tok, bs):
    texts, spans = span_corpus
    packed = tokenize_and_pack(span_tok, texts, spans, bs)
    _check_spans(packed, span_tok, spans, bs)
    # Each span lies within the document it came from.
    for r in packed.spans.itertuples():
        abs0, abs1 = r.sample_id * bs + r.start, r.sample_id * bs + r.end
        assert packed.doc_offsets[r.doc] <= abs0 and abs1 < packed.doc_offsets[r.doc + 1]
    if bs == 4:
        assert (packed.spans["end"] > bs).any(), "some span should cross a window boundary"
    # The stream is the tokenized documents joined with EOS.
    eos = span_tok.token_to_id(EOS)
    expected = [t for t in texts for t in (*span_tok.encode(t, add_special_tokens=False).ids, eos)]
    assert packed.tokens[: packed.n_real].tolist() == expected


def test_tokenize_and_pack_without_spans(span_corpus, span_tok):
    texts, spans = span_corpus
    packed = tokenize_and_pack(span_tok, texts, spans.iloc[:0], 8)
    assert len(packed.spans) == 0
    assert tuple(packed.spans.columns) == WINDOW_SPAN_COLUMNS
    with_spans = tokenize_and_pack(span_tok, texts, spans, 8)
    assert np.array_equal(packed.tokens, with_spans.tokens)


def test_extra_docs_are_spliced_and_span_doc_keeps_text_index(span_corpus, span_tok):
    texts, spans = span_corpus
    bs = 8
    eos = span_tok.token_to_id(EOS)
    extra_a, extra_b, extra_c, extra_d = [301, 302, 303], [304] * 11, [305, 306], [307]
    # Given out of order; two at the same index keep their given order; one appended at the end.
    extra = [(5, extra_b), (0, extra_a), (5, extra_c), (len(texts), extra_d)]
    packed = tokenize_and_pack(span_tok, texts, spans, bs, extra_docs=extra)

    ids = [span_tok.encode(t, add_special_tokens=False).ids for t in texts]
    order = [extra_a, *ids[:5], extra_b, extra_c, *ids[5:], extra_d]
    assert packed.tokens[: packed.n_real].tolist() == flat_with_eos(order, eos)
    assert len(packed.doc_offsets) == len(order) + 1

    # doc still refers to the index in texts, and positions account for the spliced documents.
    _check_spans(packed, span_tok, spans, bs)
    packed_index = {i: i + 1 + (2 if i >= 5 else 0) for i in range(len(texts))}
    for r in packed.spans.itertuples():
        p = packed_index[r.doc]
        abs0 = r.sample_id * bs + r.start
        assert packed.doc_offsets[p] <= abs0 < packed.doc_offsets[p + 1]
        lo, hi = packed.doc_offsets[p], packed.doc_offsets[p + 1] - 1  # without EOS
        assert packed.tokens[lo:hi].tolist() == ids[r.doc]

    # Spans of a doc shift by exactly the spliced tokens before it.
    plain = tokenize_and_pack(span_tok, texts, spans, bs)
    shift = {
        d: (len(extra_a) + 1) + ((len(extra_b) + 1 + len(extra_c) + 1) if d >= 5 else 0) for d in range(len(texts))
    }
    a = plain.spans.assign(abs0=plain.spans.sample_id * bs + plain.spans.start).sort_values(
        ["doc", "abs0"], ignore_index=True
    )
    b = packed.spans.assign(abs0=packed.spans.sample_id * bs + packed.spans.start).sort_values(
        ["doc", "abs0"], ignore_index=True
    )
    assert (b["abs0"] - a["abs0"]).tolist() == [shift[d] for d in a["doc"]]
    assert a["entity"].tolist() == b["entity"].tolist()


def test_char_spans_to_tokens_hand_built():
    offsets = np.array([[0, 3], [3, 4], [4, 9]])
    cases = {
        (0, 3): (0, 1),  # exactly token 0
        (0, 4): (0, 2),  # tokens 0..1
        (3, 4): (1, 2),  # exactly token 1
        (4, 9): (2, 3),  # exactly token 2
        (1, 2): (0, 1),  # inside token 0
        (2, 5): (0, 3),  # starts mid token 0, ends mid token 2
        (3, 9): (1, 3),
        (5, 6): (2, 3),  # inside token 2
        (0, 9): (0, 3),  # everything
        (2, 4): (0, 2),  # starts mid token 0, ends at a boundary
    }
    starts = np.array([k[0] for k in cases])
    ends = np.array([k[1] for k in cases])
    t0, t1 = char_spans_to_tokens(offsets, starts, ends)
    assert t0.dtype == t1.dtype == np.int64
    assert list(zip(t0.tolist(), t1.tolist())) == list(cases.values())


def test_char_spans_to_tokens_matches_overlap_definition():
    rng = np.random.default_rng(0)
    # Contiguous tokens of 1..4 characters plus two byte-tokens sharing one character (as byte-level BPE does).
    lens = rng.integers(1, 5, size=40)
    ends = np.cumsum(lens)
    starts = ends - lens
    offsets = np.stack([starts, ends], axis=1)
    offsets = np.insert(offsets, 10, offsets[10], axis=0)  # a duplicated (split) character token
    n_chars = int(ends[-1])
    s = rng.integers(0, n_chars - 1, size=200)
    e = np.minimum(s + rng.integers(1, 12, size=200), n_chars)
    t0, t1 = char_spans_to_tokens(offsets, s, e)
    for a, b, x0, x1 in zip(s, e, t0, t1):
        overlapping = [k for k, (os_, oe) in enumerate(offsets) if os_ < b and oe > a]
        assert (x0, x1) == (overlapping[0], overlapping[-1] + 1)


# ---------------------------------------------------------------------------------------------
# Canaries
# ---------------------------------------------------------------------------------------------

CANARY = dict(vocab_size=50, eos_id=7, repetitions=[1, 2, 4], per_group=3, length=40, alphabet_size=6, seed=11)


def test_make_canaries_is_deterministic_per_seed():
    a = make_canaries(**CANARY)
    b = make_canaries(**CANARY)
    pd.testing.assert_frame_equal(a, b)
    c = make_canaries(**{**CANARY, "seed": 12})
    assert a["tokens"].tolist() != c["tokens"].tolist()


def test_make_canaries_layout_and_alphabet():
    df = make_canaries(**CANARY)
    assert list(df.columns) == ["canary_id", "repetitions", "alphabet_size", "tokens"]
    assert len(df) == 3 * 3
    assert df["canary_id"].tolist() == list(range(9))
    assert df["repetitions"].tolist() == [1, 1, 1, 2, 2, 2, 4, 4, 4]
    assert (df["alphabet_size"] == 6).all()
    used: set[int] = set()
    for toks in df["tokens"]:
        assert len(toks) == 40
        assert all(isinstance(t, int) for t in toks)
        assert 7 not in toks
        assert all(0 <= t < 50 for t in toks)
        used.update(toks)
    # 360 uniform draws over 6 symbols cover the whole (shared) alphabet.
    assert len(used) == 6
    # Canaries differ from each other.
    assert len({tuple(t) for t in df["tokens"]}) == 9


def test_make_canaries_full_alphabet_excludes_only_eos():
    df = make_canaries(vocab_size=10, eos_id=4, repetitions=[0, 8], per_group=5, length=64, alphabet_size=9, seed=0)
    used = set().union(*map(set, df["tokens"]))
    assert used == set(range(10)) - {4}
    assert df["repetitions"].tolist() == [0] * 5 + [8] * 5


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"alphabet_size": 1}, "alphabet_size"),
        ({"alphabet_size": 50}, "alphabet_size"),  # vocab_size: only vocab-1 ids are not EOS
        ({"alphabet_size": 500}, "alphabet_size"),
        ({"length": 1}, "length"),
        ({"per_group": 0}, "per_group"),
        ({"repetitions": [1, -1]}, "repetitions"),
    ],
)
def test_make_canaries_bad_values_raise_configerror(overrides, field):
    with pytest.raises(ConfigError, match=field):
        make_canaries(**{**CANARY, **overrides})


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorised_span_mapping_equals_per_document_mapping(seed):
    """All documents' character spans mapped by one searchsorted equal char_spans_to_tokens document by document,
    with documents without spans or tokens, repeated offsets (a multi-byte character split over tokens) and rows out
    of document order."""
    from densitylab.data.packing import _char_spans_to_token_spans, char_spans_to_tokens

    rng = np.random.default_rng(seed)
    offsets, rows = [], []
    for d in range(30):
        n = int(rng.integers(0, 40))
        widths = rng.integers(0, 4, size=n)  # width 0: a token sharing its character with the next one
        starts = np.concatenate([[0], np.cumsum(widths)[:-1]]) if n else np.zeros(0, dtype=np.int64)
        offsets.append(np.stack([starts, starts + np.maximum(widths, 1)], axis=1).astype(np.int64).reshape(-1, 2))
        length = int(offsets[-1][:, 1].max()) if n else 0
        for _ in range(int(rng.integers(0, 5)) if length else 0):
            s = int(rng.integers(0, length))
            rows.append((d, s, int(rng.integers(s + 1, length + 1)), "name", int(rng.integers(0, 9))))
    spans = pd.DataFrame(rows, columns=["doc", "start", "end", "kind", "entity"]).sample(frac=1.0, random_state=seed)
    got = _char_spans_to_token_spans(spans, offsets)
    want = []
    for doc, g in spans.groupby("doc", sort=True):
        t0, t1 = char_spans_to_tokens(offsets[doc], g["start"].to_numpy(), g["end"].to_numpy())
        want.append(
            pd.DataFrame(
                {"doc": doc, "t0": t0, "t1": t1, "kind": g["kind"].to_numpy(), "entity": g["entity"].to_numpy()}
            )
        )
    want = pd.concat(want, ignore_index=True)
    assert len(got) == len(spans) > 0
    pd.testing.assert_frame_equal(got.reset_index(drop=True), want)
    # every mapped span lies inside its own document (spans past the last token map to the document's end)
    n_tok = np.array([len(o) for o in offsets])
    assert (got["t0"].to_numpy() <= n_tok[got["doc"]]).all() and (got["t1"].to_numpy() <= n_tok[got["doc"]]).all()


def test_vectorised_span_mapping_edge_cases():
    """Spans past a document's last token, empty spans, spans in documents without tokens and two span kinds map
    as char_spans_to_tokens maps them, with the column dtypes packing relies on."""
    from densitylab.data.packing import _char_spans_to_token_spans, char_spans_to_tokens

    offsets = [np.array([[0, 3], [3, 5]]), np.zeros((0, 2), dtype=np.int64), np.array([[0, 2], [2, 4], [4, 9]])]
    spans = pd.DataFrame(
        {
            "doc": [2, 0, 0, 1, 2, 0],
            "start": [4, 5, 2, 0, 3, 3],
            "end": [9, 8, 2, 4, 3, 5],  # past the last token; empty; in a document without tokens
            "kind": ["name", "name", "birth_city", "name", "birth_city", "name"],
            "entity": [4, 1, 2, 3, 5, 6],
        }
    )
    got = _char_spans_to_token_spans(spans, offsets)
    assert got["doc"].tolist() == [0, 0, 0, 1, 2, 2]  # by document, stable within one
    for col in ("doc", "t0", "t1"):
        assert got[col].dtype == np.int64
    for r in got.itertuples():
        src = spans[(spans["doc"] == r.doc) & (spans["entity"] == r.entity)].iloc[0]
        t0, t1 = char_spans_to_tokens(offsets[r.doc], np.array([src.start]), np.array([src.end]))
        assert (r.t0, r.t1, r.kind) == (t0[0], t1[0], src.kind)
    assert got.loc[got["entity"] == 1, ["t0", "t1"]].values.tolist() == [[2, 2]]  # past the end: at the end
    assert got.loc[got["entity"] == 3, ["t0", "t1"]].values.tolist() == [[0, 0]]  # no tokens


# ---------------------------------------------------------------------------------------------
# Chunked, file-backed packing: identical to packing the whole split at once
# ---------------------------------------------------------------------------------------------


def _reference_pack(tok, texts, spans, bs, extra=()):
    """The packing rule written out per document and per token (no arrays): the old pipeline's definition."""
    eos = tok.token_to_id(EOS)
    encs = [tok.encode(t, add_special_tokens=False) for t in texts]
    extra = sorted(extra, key=lambda e: e[0])
    stream, starts, k = [], {}, 0
    for i, e in enumerate(encs):
        while k < len(extra) and extra[k][0] <= i:
            stream += [*extra[k][1], eos]
            k += 1
        starts[i] = len(stream)
        stream += [*e.ids, eos]
    for e in extra[k:]:
        stream += [*e[1], eos]
    rows = []
    for r in spans.itertuples():
        off = np.asarray(encs[r.doc].offsets, dtype=np.int64).reshape(-1, 2)
        t0, t1 = char_spans_to_tokens(off, np.array([r.start]), np.array([r.end]))
        p0, p1 = starts[r.doc] + int(t0[0]), starts[r.doc] + int(t1[0])
        rows.append((p0 // bs, p0 - p0 // bs * bs, p1 - p0 // bs * bs, r.kind, r.entity, r.doc))
    table = pd.DataFrame(rows, columns=list(WINDOW_SPAN_COLUMNS)).sort_values(
        ["sample_id", "start"], kind="stable", ignore_index=True
    )
    return stream, table


def _assert_same_packing(packed, stream, table, bs):
    L = len(stream)
    assert packed.n_real == L and packed.block_size == bs
    assert packed.tokens[:L].tolist() == stream
    assert packed.n_windows == -(-(L - 1) // bs) and np.all(packed.tokens[L:] == stream[-1])
    got = packed.spans.astype({"kind": str})
    pd.testing.assert_frame_equal(got, table.astype({"kind": str}), check_dtype=False)


@pytest.mark.parametrize("chunk_chars", [1, 60, 1 << 22])
def test_chunked_file_packing_equals_the_per_token_reference(span_corpus, span_tok, tmp_path, chunk_chars):
    texts, spans = span_corpus
    bs = 8
    extra = [(5, [301, 302, 303]), (0, [304] * 11), (5, [305]), (len(texts) + 3, [306])]
    stream, table = _reference_pack(span_tok, texts, spans, bs, extra)
    packed = tokenize_and_pack(
        span_tok, texts, spans, bs, extra_docs=extra, path=tmp_path / "train.bin", chunk_chars=chunk_chars
    )
    assert isinstance(packed.tokens, np.memmap) and packed.tokens.dtype == np.uint16  # vocab 320
    assert (tmp_path / "train.bin").stat().st_size == packed.tokens.size * 2
    _assert_same_packing(packed, stream, table, bs)
    in_memory = tokenize_and_pack(span_tok, texts, spans, bs, extra_docs=extra)
    assert np.array_equal(in_memory.tokens, packed.tokens)
    assert np.array_equal(in_memory.doc_offsets, packed.doc_offsets)
    pd.testing.assert_frame_equal(in_memory.spans, packed.spans)


def test_chunked_packing_equals_reference_on_tinyshakespeare(tmp_path):
    """A real text (paragraph documents, capitalized-word entities): chunked file-backed packing equals the
    per-token reference."""
    from pathlib import Path

    from densitylab.data.corpus import Corpus
    from densitylab.data.entities import extract_capitalized

    f = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"
    if not f.is_file():
        pytest.skip("../shared/data/tinyshakespeare.txt is not here")
    texts = [p for p in f.read_text().split("\n\n") if p.strip()][:3000]
    spans, _ = extract_capitalized(Corpus(texts={"train": texts, "heldout": []}))
    tok = train_bpe(texts, vocab_size=512)
    stream, table = _reference_pack(tok, texts, spans["train"], 64)
    assert len(table) > 1000
    packed = tokenize_and_pack(tok, texts, spans["train"], 64, path=tmp_path / "t.bin", chunk_chars=20_000)
    _assert_same_packing(packed, stream, table, 64)


def test_file_backed_split_reads_lazily_and_pickles_its_path(span_corpus, span_tok, tmp_path):
    import pickle

    texts, spans = span_corpus
    packed = tokenize_and_pack(span_tok, texts, spans, 8, path=tmp_path / "s.bin")
    blob = pickle.dumps(packed)
    assert len(blob) < packed.tokens.nbytes / 2 + 20_000  # the path and tables travel, not the tokens
    back = pickle.loads(blob)
    assert isinstance(back.tokens, np.memmap) and np.array_equal(back.tokens, packed.tokens)
    sids = np.array([3, 0, packed.n_windows - 1])
    g = packed.gather(sids)
    assert g.dtype == torch.int64 and g.shape == (3, 9)
    for row, s in zip(g, sids):
        assert row.tolist() == packed.tokens[s * 8 : s * 8 + 9].tolist()
    eos = span_tok.token_to_id(EOS)
    want = np.bincount(np.asarray(packed.tokens[: packed.n_real], dtype=np.int64), minlength=400)
    assert np.array_equal(packed.token_counts(minlength=400, chunk=7), want)
    assert packed.token_counts(minlength=400)[eos] == len(texts)
    assert packed.stream(2, 5).tolist() == packed.tokens[2:5].tolist() and packed.stream().size == packed.n_real
    with pytest.raises(ValueError):
        packed.tokens[0] = 1  # read-only map: nothing can corrupt the prepared data


def test_token_dtype_is_the_smallest_that_holds_the_vocabulary():
    from densitylab.data.packing import token_dtype

    assert [token_dtype(v) for v in (1, 256, 257, 65536, 65537)] == [
        np.uint8,
        np.uint8,
        np.uint16,
        np.uint16,
        np.uint32,
    ]
    with pytest.raises(ValueError):
        token_dtype(0)


@pytest.mark.parametrize(
    "bad", [{"doc": -1}, {"doc": 25}, {"start": -2}, {"end": -1, "start": 0}, {"start": 5, "end": 4}]
)
def test_impossible_char_spans_raise_dataerror(span_corpus, span_tok, bad):
    texts, spans = span_corpus
    spans = spans.copy()
    for k, v in bad.items():
        spans.loc[spans.index[0], k] = v
    with pytest.raises(DataError, match="span doc="):
        tokenize_and_pack(span_tok, texts, spans, 8)


@pytest.mark.slow
def test_sharded_packing_is_independent_of_the_number_of_shards(span_corpus, span_tok, tmp_path):
    """Shards tokenized by separate processes and joined by the prefix sum of their token counts give the same
    stream, document offsets, sample ids and spans as one process, canaries included (one at a shard boundary)."""
    from densitylab.data.packing import shard_bounds

    texts, spans = span_corpus
    bounds = shard_bounds(len(texts), 3)
    assert bounds.tolist()[0] == 0 and bounds.tolist()[-1] == len(texts) and len(bounds) == 4
    extra = [(int(bounds[1]), [301, 302]), (-1, [303]), (len(texts) + 1, [304] * 5), (7, [305])]
    one = tokenize_and_pack(span_tok, texts, spans, 8, extra_docs=extra, path=tmp_path / "one.bin")
    three = tokenize_and_pack(
        span_tok,
        texts,
        spans,
        8,
        extra_docs=extra,
        path=tmp_path / "three.bin",
        num_proc=2,
        min_shard_docs=1,
        max_shard_docs=9,
    )  # 3 shards (25 documents, at most 9 each) on 2 processes; fmt: skip
    assert np.array_equal(one.tokens, three.tokens) and np.array_equal(one.doc_offsets, three.doc_offsets)
    pd.testing.assert_frame_equal(one.spans, three.spans)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.bin", "three.bin"]  # part files removed
    with pytest.raises(ValueError, match="num_proc"):
        tokenize_and_pack(span_tok, texts, spans, 8, num_proc=2)
