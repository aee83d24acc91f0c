"""Tests of the synthetic familiarity corpus (densitylab.data.synthetic)."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from densitylab.data import synthetic as syn
from densitylab.data.corpus import SPAN_COLUMNS, SPLITS, Corpus
from densitylab.data.synthetic import generate_synthetic, zipf_doc_counts

SMALL = dict(n_people=200, unfamiliar_frac=0.1, max_docs=50, seed=1)


@pytest.fixture(scope="module")
def small() -> Corpus:
    return generate_synthetic(**SMALL)


def _subjects(corpus: Corpus, split: str) -> np.ndarray:
    """Subject of every document, read from its attribute spans (all belong to the subject)."""
    sp = corpus.spans_for(split)
    attr = sp[sp["kind"] != "name"]
    per_doc = attr.groupby("doc")["entity"].agg(["min", "max", "size"])
    assert (per_doc["min"] == per_doc["max"]).all()
    assert (per_doc["size"] == len(syn.ATTRIBUTES)).all()
    assert list(per_doc.index) == list(range(len(corpus.texts[split])))
    return per_doc["min"].to_numpy()


# ---------------------------------------------------------------------------------------------
# Zipf schedule
# ---------------------------------------------------------------------------------------------


def test_zipf_doc_counts_formula():
    got = zipf_doc_counts(50, 1.3, 400, min_docs=2)
    assert got.dtype == np.int64 and got.shape == (50,)
    want = [max(2, round(400 * r**-1.3)) for r in range(1, 51)]
    assert got.tolist() == want
    assert zipf_doc_counts(3, 1.0, 10).tolist() == [10, 5, 3]
    assert zipf_doc_counts(0, 1.0, 10).shape == (0,)
    assert (np.diff(zipf_doc_counts(500, 0.7, 1000)) <= 0).all()


@pytest.mark.parametrize("exponent", [1.0, 1.5])
def test_realized_train_counts_follow_zipf(exponent):
    n, max_docs = 300, 1000
    c = generate_synthetic(n_people=n, unfamiliar_frac=0.1, zipf_exponent=exponent, max_docs=max_docs, seed=3)
    ent = c.entities
    fam = ent[ent["familiar"]]
    # ranks are a permutation of 1..n, uncorrelated with entity id
    assert sorted(fam["rank"].tolist()) == list(range(1, n + 1))
    assert (ent.loc[~ent["familiar"], "rank"] == 0).all()
    assert abs(np.corrcoef(fam["entity_id"], fam["rank"])[0, 1]) < 0.3
    expected = zipf_doc_counts(n, exponent, max_docs)
    assert (fam["planned_docs"].to_numpy() == expected[fam["rank"].to_numpy() - 1]).all()

    realized = np.bincount(_subjects(c, "train"), minlength=len(ent))
    assert (realized == ent["planned_docs"].to_numpy()).all()
    assert len(c.texts["train"]) == expected.sum()

    # log-log slope over ranks where rounding / the floor do not saturate the counts
    ranks = fam["rank"].to_numpy()
    docs = realized[fam["entity_id"].to_numpy()]
    keep = max_docs * ranks.astype(float) ** -exponent >= 10
    assert keep.sum() >= 10
    slope = np.polyfit(np.log(ranks[keep]), np.log(docs[keep]), 1)[0]
    assert abs(slope - (-exponent)) < 0.05, slope


# ---------------------------------------------------------------------------------------------
# Determinism
# ---------------------------------------------------------------------------------------------


def test_deterministic_same_seed(small):
    again = generate_synthetic(**SMALL)
    assert again.texts == small.texts
    assert again.name == small.name == "synthetic(n_people=200, seed=1)"
    for split in SPLITS:
        pd.testing.assert_frame_equal(again.spans[split], small.spans[split])
    pd.testing.assert_frame_equal(again.entities, small.entities)
    assert again.ground_truth.keys() == small.ground_truth.keys()
    for k in small.ground_truth:
        pd.testing.assert_frame_equal(again.ground_truth[k], small.ground_truth[k])


def test_different_seed_differs(small):
    other = generate_synthetic(**{**SMALL, "seed": 2})
    assert other.texts["train"] != small.texts["train"]
    assert other.texts["heldout"] != small.texts["heldout"]
    assert other.entities["entity"].tolist() != small.entities["entity"].tolist()


# ---------------------------------------------------------------------------------------------
# Structure of the corpus
# ---------------------------------------------------------------------------------------------


def test_people_and_entities(small):
    ent = small.entities
    n_unf = round(0.1 * 200)
    assert len(ent) == 200 + n_unf
    assert ent["entity_id"].tolist() == list(range(len(ent)))
    assert ent["entity"].is_unique
    assert ent["familiar"].sum() == 200
    assert list(ent.columns) == [
        "entity_id", "entity", "gender", *syn.ATTRIBUTES, "rank", "planned_docs", "familiar",
    ]  # fmt: skip
    assert set(ent["gender"]) == {"male", "female"}
    assert (ent.loc[~ent["familiar"], "planned_docs"] == 0).all()
    assert (ent.loc[ent["familiar"], "planned_docs"] >= 1).all()
    hq = dict(syn.COMPANIES)
    assert (ent["employer_city"] == ent["employer"].map(hq)).all()
    for name in ent["entity"]:
        assert len(name.split(" ")) == 3 and name.isascii()
    years = ent["birth_date"].str.extract(r", (\d{4})$")[0].astype(int)
    assert years.between(1900, 2005).all()
    pd.testing.assert_frame_equal(small.ground_truth["people"], ent)


def test_vocabulary_sizes():
    firsts = syn.MALE_FIRST_NAMES + syn.FEMALE_FIRST_NAMES
    assert len(set(firsts)) == len(firsts) >= 60
    assert len(syn.MALE_FIRST_NAMES) >= 20 and len(syn.FEMALE_FIRST_NAMES) >= 20
    assert len(set(syn.MIDDLE_NAMES)) == len(syn.MIDDLE_NAMES) >= 40
    assert len(set(syn.LAST_NAMES)) == len(syn.LAST_NAMES) >= 80
    assert len(set(syn.CITIES)) == len(syn.CITIES) >= 50
    assert len(set(syn.UNIVERSITIES)) == len(syn.UNIVERSITIES) >= 40
    assert len(set(syn.MAJORS)) == len(syn.MAJORS) >= 40
    assert len({c for c, _ in syn.COMPANIES}) == len(syn.COMPANIES) >= 50
    every = [*syn.CITIES, *syn.UNIVERSITIES, *syn.MAJORS, *(x for c in syn.COMPANIES for x in c)]
    assert all(v.isascii() and "." not in v for v in every)
    for attr in syn.ATTRIBUTES:
        tpls = syn.TEMPLATES[attr]
        assert len(set(tpls)) >= 5
        with_name = sum("{name}" in t for t in tpls)
        assert 2 <= with_name <= len(tpls) - 2  # roughly half name, half pronoun
    assert len(set(syn.COMENTION_TEMPLATES)) >= 5


def test_split_sizes(small):
    ent = small.entities
    assert len(small.texts["train"]) == ent["planned_docs"].sum()
    assert len(small.texts["heldout"]) == 200  # heldout_docs_per_person = 1
    assert len(small.texts["unfamiliar"]) == (~ent["familiar"]).sum()
    unf = set(ent.loc[~ent["familiar"], "entity_id"])
    assert set(_subjects(small, "unfamiliar")) == unf
    assert set(_subjects(small, "heldout")) == set(ent.loc[ent["familiar"], "entity_id"])


def test_spans_exact(small):
    for split in SPLITS:
        sp = small.spans[split]
        texts = small.texts[split]
        assert tuple(sp.columns) == SPAN_COLUMNS
        assert [str(sp[c].dtype) for c in SPAN_COLUMNS] == [
            "int64", "int64", "int64", "string", "int64", "string",
        ]  # fmt: skip
        assert len(sp) > 0
        key = sp["doc"].to_numpy() * 10**7 + sp["start"].to_numpy()
        assert (np.diff(key) > 0).all()  # sorted by (doc, start), no two spans share a start
        for doc, start, end, value in zip(sp["doc"], sp["start"], sp["end"], sp["value"]):
            assert texts[doc][start:end] == value
        # spans do not overlap within a document
        same_doc = sp["doc"].to_numpy()[1:] == sp["doc"].to_numpy()[:-1]
        assert (sp["start"].to_numpy()[1:][same_doc] >= sp["end"].to_numpy()[:-1][same_doc]).all()
        # name spans carry the person's name, attribute spans the subject's value
        names = small.entities["entity"].to_numpy()
        nm = sp[sp["kind"] == "name"]
        assert (nm["value"].to_numpy() == names[nm["entity"].to_numpy()]).all()
        for attr in syn.ATTRIBUTES:
            a = sp[sp["kind"] == attr]
            assert len(a) == len(texts)
            want = small.entities[attr].to_numpy()[a["entity"].to_numpy()]
            assert (a["value"].to_numpy() == want).all()


def test_every_name_occurrence_is_a_span(small):
    """Counting full-name substrings in the text reproduces the name spans (no missed insert)."""
    names = small.entities["entity"].tolist()
    for split in SPLITS:
        sp = small.spans[split]
        nm = sp[sp["kind"] == "name"]
        for doc in range(0, len(small.texts[split]), 7):
            text = small.texts[split][doc]
            got = Counter(nm.loc[nm["doc"] == doc, "entity"].tolist())
            for eid, cnt in got.items():
                assert text.count(names[eid]) == cnt


def test_document_shape(small):
    names = small.entities["entity"].to_numpy()
    familiar = small.entities["familiar"].to_numpy()
    for split in SPLITS:
        texts = small.texts[split]
        subj = _subjects(small, split)
        sp = small.spans[split]
        nm = sp[sp["kind"] == "name"]
        others = nm[nm["entity"].to_numpy() != subj[nm["doc"].to_numpy()]]
        k = np.bincount(others["doc"].to_numpy(), minlength=len(texts))
        assert k.min() >= 1 and k.max() <= 2
        assert familiar[others["entity"].to_numpy()].all()  # co-mentions are familiar people
        # no person co-mentioned twice in the same document
        assert not others.duplicated(["doc", "entity"]).any()
        for doc, text in enumerate(texts):
            sentences = text.split(". ")
            assert len(sentences) == 7  # six attributes + one co-mention sentence
            assert text.endswith(".")
            assert sentences[0].startswith(names[subj[doc]])
            assert names[subj[doc]] in sentences[0]
    pronoun_starts = sum(t.count(". He ") + t.count(". She ") for t in small.texts["train"])
    assert pronoun_starts > len(small.texts["train"])  # pronouns are actually used


def test_comention_prior_follows_zipf():
    c = generate_synthetic(n_people=200, max_docs=200, seed=5)
    subj = _subjects(c, "train")
    sp = c.spans["train"]
    nm = sp[sp["kind"] == "name"]
    others = nm[nm["entity"].to_numpy() != subj[nm["doc"].to_numpy()]]
    rank = c.entities["rank"].to_numpy()
    # the rank-1 person is co-mentioned far more often than a median-rank person
    by = np.bincount(others["entity"].to_numpy(), minlength=len(rank))
    top = int(np.flatnonzero(rank == 1)[0])
    mid = np.flatnonzero((rank >= 90) & (rank <= 110))
    assert by[top] > 20 * by[mid].mean()


def test_first_sentence_names_subject_full(small):
    for split in SPLITS:
        sp = small.spans[split]
        first = sp.groupby("doc").head(1)
        subj = _subjects(small, split)
        assert (first["start"] == 0).all()
        assert (first["kind"] == "name").all()
        assert (first["entity"].to_numpy() == subj).all()


def test_templates_used(small):
    """Every attribute is rendered with at least 5 distinct templates across the corpus."""
    ent = small.entities
    pron = syn._PRONOUNS
    texts = small.texts["train"] + small.texts["heldout"]
    subj = np.concatenate([_subjects(small, "train"), _subjects(small, "heldout")])
    used = {a: set() for a in syn.ATTRIBUTES}
    for text, s in zip(texts[:1500], subj[:1500]):
        row = ent.iloc[s]
        fields = {**pron[row["gender"]], "name": row["entity"]}
        fields.update({a: row[a] for a in syn.ATTRIBUTES})
        for attr in syn.ATTRIBUTES:
            hits = [i for i, t in enumerate(syn.TEMPLATES[attr]) if t.format(**fields) in text]
            assert len(hits) == 1, (text, attr, hits)
            used[attr].add(hits[0])
    for attr, idx in used.items():
        assert len(idx) >= 5, (attr, idx)


def test_heldout_not_in_train(small):
    train = set(small.texts["train"])
    assert not any(t in train for t in small.texts["heldout"])
    assert not any(t in train for t in small.texts["unfamiliar"])


# ---------------------------------------------------------------------------------------------
# Ground truth
# ---------------------------------------------------------------------------------------------


def test_mentions_tables(small):
    ent = small.entities
    for split in SPLITS:
        gt = small.ground_truth[f"mentions_{split}"]
        assert list(gt.columns) == ["entity_id", "entity", "docs", "mentions"]
        assert gt["entity_id"].tolist() == ent["entity_id"].tolist()
        assert gt["entity"].tolist() == ent["entity"].tolist()
        sp = small.spans[split]
        mentions = Counter(sp.loc[sp["kind"] == "name", "entity"].tolist())
        docs = Counter(_subjects(small, split).tolist())
        assert gt["mentions"].tolist() == [mentions.get(i, 0) for i in gt["entity_id"]]
        assert gt["docs"].tolist() == [docs.get(i, 0) for i in gt["entity_id"]]
        assert gt["docs"].sum() == len(small.texts[split])
    tr = small.ground_truth["mentions_train"]
    assert (tr["docs"].to_numpy() == ent["planned_docs"].to_numpy()).all()
    unf = ~ent["familiar"].to_numpy()
    assert (tr.loc[unf, "mentions"] == 0).all() and (tr.loc[unf, "docs"] == 0).all()
    assert (small.ground_truth["mentions_unfamiliar"].loc[unf, "docs"] == 1).all()
    # subjects are mentioned at least once per own document
    assert (tr["mentions"] >= tr["docs"]).all()


def test_comentions_tables(small):
    names = small.entities["entity"].tolist()
    for split in SPLITS:
        sp = small.spans[split]
        nm = sp[sp["kind"] == "name"]
        want: Counter = Counter()
        for _, ents in nm.groupby("doc")["entity"]:
            for a, b in itertools.combinations(sorted(set(ents.tolist())), 2):
                want[(a, b)] += 1
        gt = small.ground_truth[f"comentions_{split}"]
        assert list(gt.columns) == ["entity_a", "entity_b", "entity_id_a", "entity_id_b", "docs"]
        assert (gt["docs"] > 0).all()
        assert (gt["entity_a"] < gt["entity_b"]).all()
        assert [names[i] for i in gt["entity_id_a"]] == gt["entity_a"].tolist()
        assert [names[i] for i in gt["entity_id_b"]] == gt["entity_b"].tolist()
        got = {(min(a, b), max(a, b)): d for a, b, d in zip(gt["entity_id_a"], gt["entity_id_b"], gt["docs"])}
        assert len(got) == len(gt)
        assert got == dict(want)


def test_no_comentions_and_no_heldout():
    c = generate_synthetic(
        n_people=50, unfamiliar_frac=0.0, max_docs=10, heldout_docs_per_person=0,
        comentions=(0, 0), seed=4,
    )  # fmt: skip
    assert c.texts["heldout"] == [] and c.texts["unfamiliar"] == []
    assert tuple(c.spans["heldout"].columns) == SPAN_COLUMNS
    for t in c.texts["train"]:
        assert len(t.split(". ")) == 6
    assert c.ground_truth["comentions_train"].empty
    assert list(c.ground_truth["comentions_train"].columns) == [
        "entity_a", "entity_b", "entity_id_a", "entity_id_b", "docs",
    ]  # fmt: skip
    assert (c.ground_truth["mentions_train"]["docs"] == c.entities["planned_docs"]).all()

    c2 = generate_synthetic(n_people=30, max_docs=5, heldout_docs_per_person=3, comentions=(3, 3))
    assert len(c2.texts["heldout"]) == 90
    assert len(c2.texts["unfamiliar"]) == 3 * 3
    sp = c2.spans["train"]
    assert (sp[sp["kind"] == "name"].groupby("doc")["entity"].nunique() == 4).all()
    assert ", and " in c2.texts["train"][0]


def test_progress_bar_runs():
    c = generate_synthetic(n_people=20, max_docs=5, progress=True)
    assert len(c.texts["train"]) == zipf_doc_counts(20, 1.0, 5).sum()


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_people=0), "n_people"),
        (dict(n_people=-5), "n_people"),
        (dict(n_people=2.5), "n_people"),
        (dict(unfamiliar_frac=1.0), "unfamiliar_frac"),
        (dict(unfamiliar_frac=-0.1), "unfamiliar_frac"),
        (dict(zipf_exponent=0.0), "exponent"),
        (dict(zipf_exponent=-1.0), "exponent"),
        (dict(zipf_exponent=float("nan")), "exponent"),
        (dict(max_docs=3, min_docs=5), "max_docs"),
        (dict(min_docs=0), "min_docs"),
        (dict(comentions=(2, 1)), "comentions"),
        (dict(comentions=(-1, 1)), "comentions"),
        (dict(comentions=(1,)), "comentions"),
        (dict(comentions=(1, 2.5)), "comentions"),
        (dict(n_people=2, comentions=(1, 2)), "comentions"),
        (dict(heldout_docs_per_person=-1), "heldout_docs_per_person"),
        (dict(n_people=syn.max_people(), max_docs=1), "unique names"),
    ],
)
def test_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match) as info:
        generate_synthetic(**{"n_people": 10, "max_docs": 5, **kwargs})
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "args",
    [(-1, 1.0, 10), (5, 0.0, 10), (5, 1.0, 0), (5, 1.0, 10, 0), (5, 1.0, 3, 4)],
)
def test_zipf_bad_input(args):
    with pytest.raises(ValueError):
        zipf_doc_counts(*args)


# ---------------------------------------------------------------------------------------------
# Default size and speed
# ---------------------------------------------------------------------------------------------


def test_default_size_and_speed():
    c = generate_synthetic()  # its speed is a README figure, not a test (tests never time)
    assert len(c.entities) == 2200
    assert len(c.texts["train"]) == zipf_doc_counts(2000, 1.0, 1000).sum()
    assert 8000 <= len(c.texts["train"]) <= 9000
    assert len(c.texts["heldout"]) == 2000 and len(c.texts["unfamiliar"]) == 200
    assert c.n_chars("train") > 1_000_000
    assert c.ground_truth["mentions_train"]["mentions"].max() > 1000
