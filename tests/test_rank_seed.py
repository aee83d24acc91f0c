"""Counterbalanced familiarity (``data.rank_seed``) and the Latin square: the default corpus is unchanged
(hard-coded fingerprints), rank seeds permute who is familiar over the same people, held-out biographies and
the tokenizer are rank-independent, the square's persons go through high / low / zero exposure over three
corpora, the person panel takes every study person, and bad settings are one-line errors. Small corpora."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_synthetic import _subjects

from densitylab.data import DataModule
from densitylab.data import synthetic as syn
from densitylab.data.corpus import SPLITS, Corpus
from densitylab.data.entities import CapitalizedEntities, SyntheticEntities
from densitylab.data.sources import SyntheticSource, TextSource
from densitylab.data.synthetic import LatinSquare, generate_synthetic, zipf_doc_counts
from densitylab.data.tokenizer import TrainedBPE, corpus_fingerprint
from densitylab.errors import ConfigError
from densitylab.probes.panel import PanelSpec, draw_panel
from densitylab.probes.sets import exposure_plan

REPO = Path(__file__).resolve().parents[1]

# ----------------------------------------------------------------------------- fingerprints of today's corpus
# Computed with the generator as it was before rank seeds existed (commit d9f36b6), by the functions below.
NULL_SMALL = dict(n_people=200, max_docs=40, seed=0)
NULL_SMALL_TEXTS = "10f2d5ab50d4d4dfd8782a821edc011e2e09d9cd71befc468d1f38a952aa4bc3"
NULL_SMALL_TABLES = "6cc44e77fff477ad28ca0807618be00885ec4ade527d898f17418f323473e7ef"
NULL_DEFAULT_TEXTS = "944822798bb5085f75f87d59a6e677a5fce27149349ad36e56cfd7b9aff49152"
NULL_DEFAULT_FINGERPRINT = {
    "source": "synthetic",
    "generator_version": 2,
    "n_people": 2000,
    "unfamiliar_frac": 0.1,
    "zipf_exponent": 1.0,
    "max_docs": 1000,
    "min_docs": 1,
    "heldout_docs_per_person": 1,
    "comentions": [1, 2],
    "seed": 0,
}

# ----------------------------------------------------------------------------- the small counterbalanced family
SMALL = dict(n_people=600, unfamiliar_frac=0.15, max_docs=40, seed=3)  # 690 people, 90 of them zero-exposure
SQUARE = dict(n_groups=3, group_size=20, high_ranks=[1, 20], low_ranks=[401, 420])
IDENTITY = ["entity_id", "entity", "gender", *syn.ATTRIBUTES]


def _put(h, s: str) -> None:
    b = s.encode("utf-8")
    h.update(len(b).to_bytes(8, "little"))
    h.update(b)


def texts_digest(corpus: Corpus) -> str:
    """sha256 of every split's texts (split names sorted, documents length-prefixed)."""
    h = hashlib.sha256()
    for split in sorted(corpus.texts):
        _put(h, f"split:{split}")
        for t in corpus.texts[split]:
            _put(h, t)
    return h.hexdigest()


def tables_digest(corpus: Corpus) -> str:
    """sha256 of the span tables, the entity table and every ground-truth table (names, dtypes, values)."""
    h = hashlib.sha256()
    frames = {f"spans_{s}": corpus.spans[s] for s in sorted(corpus.spans)}
    frames["entities"] = corpus.entities
    frames.update({f"gt_{k}": v for k, v in sorted(corpus.ground_truth.items())})
    for name, df in frames.items():
        _put(h, name)
        _put(h, json.dumps([str(c) for c in df.columns]))
        _put(h, json.dumps([str(t) for t in df.dtypes]))
        for c in df.columns:
            _put(h, json.dumps(df[c].tolist(), default=str))
    return h.hexdigest()


@pytest.fixture(scope="module")
def plain() -> dict[int, Corpus]:
    """Rank seeds 1 and 2 without a square."""
    return {r: generate_synthetic(**SMALL, rank_seed=r) for r in (1, 2)}


@pytest.fixture(scope="module")
def square() -> dict[int, Corpus]:
    """The square's three corpora, rank seeds 0, 1, 2 (k = rank_seed % 3)."""
    return {r: generate_synthetic(**SMALL, rank_seed=r, latin_square=SQUARE) for r in (0, 1, 2)}


def _bios(corpus: Corpus) -> dict[int, str]:
    """Each person's held-out biography: from ``heldout`` (familiar) or ``unfamiliar`` (zero exposure)."""
    out: dict[int, str] = {}
    for split in ("heldout", "unfamiliar"):
        for subj, text in zip(_subjects(corpus, split).tolist(), corpus.texts[split]):
            assert subj not in out
            out[subj] = text
    return out


# ----------------------------------------------------------------------------- rank_seed=None is today's corpus
def test_null_rank_seed_reproduces_todays_corpus_and_fingerprint():
    small = generate_synthetic(**NULL_SMALL)
    assert small.tokenizer_texts is None and small.name == "synthetic(n_people=200, seed=0)"
    assert texts_digest(small) == NULL_SMALL_TEXTS
    assert tables_digest(small) == NULL_SMALL_TABLES
    assert texts_digest(generate_synthetic(**NULL_SMALL, rank_seed=None, latin_square=None)) == NULL_SMALL_TEXTS
    assert texts_digest(generate_synthetic()) == NULL_DEFAULT_TEXTS
    # the source's fingerprint (the data cache key) is the one from before: cached data stay valid
    assert SyntheticSource().fingerprint() == NULL_DEFAULT_FINGERPRINT
    assert SyntheticSource(rank_seed=None, latin_square=None).fingerprint() == NULL_DEFAULT_FINGERPRINT


# ----------------------------------------------------------------------------- rank seeds
def test_rank_seeds_permute_familiarity_over_the_same_people(plain):
    null = generate_synthetic(**SMALL)
    a, b = plain[1].entities, plain[2].entities
    for e in (a, b):
        pd.testing.assert_frame_equal(e[IDENTITY], null.entities[IDENTITY])  # same people, same attributes
        assert sorted(e.loc[e["familiar"], "rank"]) == list(range(1, 601))
        assert (e["familiar"] == (e["rank"] > 0)).all() and (~e["familiar"]).sum() == 90
        counts = zipf_doc_counts(600, 1.0, 40)
        assert (e.loc[e["familiar"], "planned_docs"] == counts[e.loc[e["familiar"], "rank"] - 1]).all()
        assert (e.loc[~e["familiar"], "planned_docs"] == 0).all()
        assert "study_group" not in e and "study_level" not in e
    top = lambda e, n=10: e.sort_values("rank").loc[e["familiar"], "entity_id"].head(n).tolist()  # noqa: E731
    assert top(a) != top(b)
    assert top(a) != top(null.entities)
    # zero exposure is drawn over all people: someone zero in one corpus is familiar in another
    zero_a, zero_b = set(a.loc[~a["familiar"], "entity_id"]), set(b.loc[~b["familiar"], "entity_id"])
    assert zero_a != zero_b and zero_a - zero_b
    assert plain[1].texts["train"] != plain[2].texts["train"]
    assert len(plain[1].texts["train"]) == zipf_doc_counts(600, 1.0, 40).sum() == len(plain[2].texts["train"])
    assert plain[1].name == "synthetic(n_people=600, seed=3, rank_seed=1)"
    again = generate_synthetic(**SMALL, rank_seed=1)  # deterministic
    assert again.texts == plain[1].texts and tables_digest(again) == tables_digest(plain[1])


def test_heldout_biographies_and_tokenizer_texts_are_rank_independent(plain, square):
    corpora = [*plain.values(), *square.values()]
    bios = [_bios(c) for c in corpora]
    assert sorted(bios[0]) == list(range(690))
    for other in bios[1:]:
        assert other == bios[0]  # byte-equal per person, whatever their exposure
    for c in corpora:
        assert c.tokenizer_texts == [bios[0][p] for p in range(690)]  # one per person, entity-id order
        ent = c.entities
        # heldout: the familiar people's biographies, unfamiliar: the zero-exposure people's, entity-id order
        assert _subjects(c, "heldout").tolist() == ent.loc[ent["familiar"], "entity_id"].tolist()
        assert _subjects(c, "unfamiliar").tolist() == ent.loc[~ent["familiar"], "entity_id"].tolist()
        train = set(c.texts["train"])
        assert not any(t in train for t in c.texts["heldout"] + c.texts["unfamiliar"])


def test_heldout_docs_per_person_in_a_counterbalanced_corpus():
    """``heldout_docs_per_person`` biographies per familiar person (0: none), ``max(1, it)`` per zero-exposure
    one; the first biography of each person (and so the tokenizer texts) does not depend on it."""
    args = dict(n_people=40, unfamiliar_frac=0.25, max_docs=6, seed=1, rank_seed=4)
    by_h = {h: generate_synthetic(**args, heldout_docs_per_person=h, progress=h == 2) for h in (0, 1, 2)}
    assert by_h[0].texts["heldout"] == [] and len(by_h[0].texts["unfamiliar"]) == 10
    assert len(by_h[2].texts["heldout"]) == 80 and len(by_h[2].texts["unfamiliar"]) == 20
    assert (
        _subjects(by_h[2], "heldout").tolist() == np.repeat(by_h[2].entities.query("familiar")["entity_id"], 2).tolist()
    )
    assert by_h[0].tokenizer_texts == by_h[1].tokenizer_texts == by_h[2].tokenizer_texts
    assert by_h[2].texts["heldout"][::2] == by_h[1].texts["heldout"]
    assert by_h[0].texts["train"] == by_h[1].texts["train"] == by_h[2].texts["train"]
    for c in by_h.values():
        _check_ground_truth(c)


def test_comentions_train_follow_exposure_and_heldout_ones_are_uniform_over_everyone(plain):
    c = plain[1]
    ent = c.entities
    zero = set(ent.loc[~ent["familiar"], "entity_id"])
    train_names = c.spans["train"].query("kind == 'name'")["entity"]
    assert not set(train_names) & zero  # zero exposure: never named in training
    comentioned = []
    for split in ("heldout", "unfamiliar"):
        sp = c.spans[split]
        subj = _subjects(c, split)
        nm = sp[sp["kind"] == "name"]
        comentioned += nm.loc[nm["entity"].to_numpy() != subj[nm["doc"].to_numpy()], "entity"].tolist()
    share = np.mean([e in zero for e in comentioned])
    assert abs(share - 90 / 690) < 0.05, share  # uniform over all people, not ∝ planned documents


def _check_ground_truth(c: Corpus) -> None:
    """The ground-truth tables against the texts and spans (as tests/test_synthetic.py checks them)."""
    ent = c.entities
    pd.testing.assert_frame_equal(c.ground_truth["people"], ent)
    for split in SPLITS:
        sp = c.spans[split]
        for row in sp.sample(min(len(sp), 400), random_state=0).itertuples():
            assert c.texts[split][row.doc][row.start : row.end] == row.value
        subjects = _subjects(c, split)
        docs = Counter(subjects.tolist())
        names = sp[sp["kind"] == "name"]
        mentions = Counter(names["entity"].tolist())
        other = Counter(names.loc[names["entity"].to_numpy() != subjects[names["doc"].to_numpy()], "entity"].tolist())
        gt, ex = c.ground_truth[f"mentions_{split}"], c.ground_truth[f"exposure_{split}"]
        assert gt["docs"].tolist() == [docs.get(i, 0) for i in gt["entity_id"]]
        assert gt["mentions"].tolist() == [mentions.get(i, 0) for i in gt["entity_id"]]
        assert ex["subject_docs"].tolist() == gt["docs"].tolist()
        assert ex["comentions"].tolist() == [other.get(i, 0) for i in ex["entity_id"]]
        for text, subj in zip(c.texts[split], subjects.tolist()):
            assert text.startswith(ent.at[subj, "entity"])
    tr = c.ground_truth["exposure_train"]
    assert (tr["subject_docs"].to_numpy() == ent["planned_docs"].to_numpy()).all()
    assert (tr.loc[~ent["familiar"].to_numpy(), "mentions"] == 0).all()


def test_ground_truth_tables_are_consistent_with_the_texts(plain, square):
    _check_ground_truth(plain[1])
    _check_ground_truth(square[2])


# ----------------------------------------------------------------------------- the Latin square
def test_latin_square_levels_follow_the_square(square):
    counts = zipf_doc_counts(600, 1.0, 40)
    groups = [c.entities["study_group"].to_numpy() for c in square.values()]
    assert all((g == groups[0]).all() for g in groups)  # the groups do not depend on the rank seed
    g = groups[0]
    assert np.bincount(g[g >= 0]).tolist() == [20, 20, 20] and (g >= 0).sum() == 60
    for r, c in square.items():
        e = c.entities
        assert e["study_group"].dtype == np.int64
        assert (e.loc[e["study_group"] < 0, "study_level"] == "").all()
        for j, level in enumerate(("high", "low", "zero")):
            grp = e[e["study_group"] == (r + j) % 3]
            assert (grp["study_level"] == level).all(), (r, level)
            if level in ("high", "low"):
                first = 1 if level == "high" else 401
                assert sorted(grp["rank"]) == list(range(first, first + 20)) and grp["familiar"].all()
                assert (grp["planned_docs"].to_numpy() == counts[grp["rank"].to_numpy() - 1]).all()
                want = (2, 40) if level == "high" else (1, 1)  # round(40 / 20) = 2 ... 40; round(40 / 401) -> 1
                assert (grp["planned_docs"].min(), grp["planned_docs"].max()) == want
            else:
                assert (grp["rank"] == 0).all() and (grp["planned_docs"] == 0).all() and not grp["familiar"].any()
        rest = e[e["study_group"] < 0]
        assert sorted(rest.loc[rest["familiar"], "rank"]) == [*range(21, 401), *range(421, 601)]
        assert (~rest["familiar"]).sum() == 90 - 20
        assert c.ground_truth["people"]["study_level"].tolist() == e["study_level"].tolist()
    # every study person is high in one corpus, low in one, zero in one
    levels = pd.DataFrame({r: c.entities["study_level"] for r, c in square.items()})[g >= 0]
    assert (levels.apply(lambda row: sorted(row), axis=1).map(tuple) == ("high", "low", "zero")).all()
    # k = rank_seed % 3: rank seed 3 is the square's corpus 0 again (a different permutation of the rest)
    r3 = generate_synthetic(**SMALL, rank_seed=3, latin_square=SQUARE).entities
    assert r3["study_level"].tolist() == square[0].entities["study_level"].tolist()
    assert r3["rank"].tolist() != square[0].entities["rank"].tolist()


def test_default_latin_square_ranks_give_the_documented_counts():
    counts = zipf_doc_counts(2000, 1.0, 1000)
    sq = LatinSquare()
    assert (sq.n_groups, sq.group_size, sq.high_ranks, sq.low_ranks) == (3, 64, (1, 64), (401, 464))
    assert counts[0] == 1000 and counts[63] == 16 and (counts[400:464] == 2).all()
    assert LatinSquare.from_config({}) == sq == LatinSquare.from_config(sq.as_dict()) == LatinSquare.from_config(sq)
    assert sq.as_dict() == {"n_groups": 3, "group_size": 64, "high_ranks": [1, 64], "low_ranks": [401, 464]}
    sq.check(2000, 200)  # fits the default corpus


def test_panel_includes_every_study_person(square, tmp_path):
    from densitylab.callbacks.density import _plan_entities

    c = square[1]
    c.ground_truth["people"].to_parquet(tmp_path / "people.parquet", index=False)

    class _DM:
        ground_truth_dir = tmp_path

    plan = exposure_plan({}, _plan_entities(_DM()))
    assert list(plan.columns) == ["entity_id", "planned", "study_group"]
    panel = draw_panel(plan, PanelSpec(size=120, min_zero=10))
    study = set(c.entities.loc[c.entities["study_group"] >= 0, "entity_id"])
    assert len(panel) == 120 and study <= set(panel["entity_id"])
    assert set(panel.loc[panel["stratum"] == "study", "entity_id"]) == study
    assert list(panel.columns) == ["entity_id", "planned", "stratum", "study_group", "core"]
    assert (panel.loc[panel["stratum"] != "study", "study_group"] == -1).all()
    assert (panel["stratum"] == "zero").sum() == 10  # the rest follows today's rule over the others
    assert panel.equals(draw_panel(plan.sample(frac=1.0, random_state=1), PanelSpec(size=120, min_zero=10)))
    with pytest.raises(ValueError, match=r"panel.size=59 is smaller than the 60 study persons") as info:
        draw_panel(plan, PanelSpec(size=59))
    assert "\n" not in str(info.value)
    # without the column: today's panel
    no_study = plan.drop(columns="study_group")
    assert "study_group" not in draw_panel(no_study, PanelSpec(size=120)).columns


# ----------------------------------------------------------------------------- the data module and tokenizer
DM = dict(
    entities=SyntheticEntities(),
    block_size=32,
    batch_size=8,
    tokenizer=TrainedBPE(vocab_size=400, min_frequency=2),
    canaries=None,
    seed=0,
    progress=False,
)
TINY = SyntheticSource(n_people=120, unfamiliar_frac=0.2, max_docs=12, seed=5)


def test_rank_seeds_share_one_tokenizer_json(tmp_path):
    settings = {"kind": "byte_bpe", "vocab_size": 400, "min_frequency": 2, "v": 1}
    dms = {r: DataModule(**DM, source=TINY, rank_seed=r, cache_dir=str(tmp_path / "cache")) for r in (1, 2)}
    assert dms[1].source == dataclasses.replace(TINY, rank_seed=1) and TINY.rank_seed is None
    assert dms[1].cache_key() != dms[2].cache_key()
    for d in dms.values():
        d.prepare_data()
        d.setup()
    tok = {r: (d.data_dir / "tokenizer.json").read_bytes() for r, d in dms.items()}
    assert tok[1] == tok[2]
    corpus = dataclasses.replace(TINY, rank_seed=1).load()
    assert dms[1].meta["tokenizer_key"] == corpus_fingerprint(corpus.tokenizer_texts, settings)
    people = [pd.read_parquet(dms[r].ground_truth_dir / "people.parquet") for r in (1, 2)]
    assert people[0]["rank"].tolist() != people[1]["rank"].tolist()  # different corpora, one tokenizer
    # an extractor that rebuilds the corpus keeps the rank-independent tokenizer texts
    cap = DataModule(**{**DM, "entities": CapitalizedEntities()}, source=TINY, rank_seed=2, cache_dir=str(tmp_path))
    cap.prepare_data()
    assert (cap.data_dir / "tokenizer.json").read_bytes() == tok[1]
    # rank_seed=None: trained on the training split, as before
    null = DataModule(**DM, source=TINY, cache_dir=str(tmp_path / "cache"))
    null.setup()
    assert null.meta["tokenizer_key"] == corpus_fingerprint(TINY.load().texts["train"], settings)
    assert null.meta["corpus"] == "synthetic(n_people=120, seed=5)"


def test_rank_seed_and_latin_square_compose_from_conf(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    import densitylab.config  # noqa: F401  (registers ${cwd:})

    over = [f"data.cache_dir={tmp_path}", f"data.output_dir={tmp_path / 'run'}"]
    sq = "data.source.latin_square={group_size: 8, high_ranks: [1, 8], low_ranks: [101, 108]}"
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=over)
        smoke = compose(config_name="config", overrides=[*over, "data=synthetic_smoke", "data.rank_seed=2", sq])
        no_seed = compose(config_name="config", overrides=[*over, "data=synthetic_smoke", sq])
    assert cfg.data.rank_seed is None and cfg.data.source.rank_seed is None and cfg.data.source.latin_square is None
    assert instantiate(cfg.data, _convert_="all").source == SyntheticSource()
    dm = instantiate(smoke.data, _convert_="all")
    assert dm.source.rank_seed == 2 and dm.source.n_people == 200
    assert dm.source.fingerprint()["rank_seed"] == 2
    assert dm.source.fingerprint()["latin_square"] == LatinSquare(3, 8, (1, 8), (101, 108)).as_dict()
    with pytest.raises(InstantiationException) as info:  # the square needs data.rank_seed
        instantiate(no_seed.data, _convert_="all")
    cause = info.value.__cause__
    assert isinstance(cause, ConfigError) and "\n" not in str(cause)
    assert str(cause).startswith("data.source: latin_square is set but rank_seed is null")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(rank_seed=-1), r"rank_seed=-1: expected null or an integer >= 0"),
        (dict(rank_seed=1.5), r"rank_seed=1.5: expected null or an integer >= 0"),
        (dict(rank_seed=True), r"rank_seed=True: expected null or an integer >= 0"),
        (dict(latin_square=SQUARE), r"latin_square is set but rank_seed is null"),
        (dict(rank_seed=0, latin_square=SQUARE | {"n_groups": 4}), r"latin_square.n_groups=4: expected 3"),
        (dict(rank_seed=0, latin_square=SQUARE | {"group_size": 0}), r"group_size=0: expected an integer >= 1"),
        (dict(rank_seed=0, latin_square=SQUARE | {"group_size": 91, "high_ranks": [1, 91], "low_ranks": [101, 191]}),
         r"group_size=91 exceeds the 90 zero-exposure people"),
        (dict(rank_seed=0, latin_square=SQUARE | {"low_ranks": [590, 609]}),
         r"low_ranks=\[590, 609\]: expected ranks inside 1..n_people=600"),
        (dict(rank_seed=0, latin_square=SQUARE | {"low_ranks": [401, 430]}), r"holds 30 ranks: expected group_size=20"),
        (dict(rank_seed=0, latin_square=SQUARE | {"low_ranks": [10, 29]}), r"expected disjoint ranges"),
        (dict(rank_seed=0, latin_square=SQUARE | {"high_ranks": [401, 420], "low_ranks": [1, 20]}),
         r"every high rank before every low rank"),
        (dict(rank_seed=0, latin_square=SQUARE | {"high_ranks": [0, 19]}), r"high_ranks=\[0, 19\]: expected an"),
        (dict(rank_seed=0, latin_square=SQUARE | {"high_ranks": "1-20"}), r"high_ranks='1-20': expected an"),
        (dict(rank_seed=0, latin_square=SQUARE | {"size": 3}), r"unknown keys \['size'\]"),
        (dict(rank_seed=0, latin_square=[3, 20]), r"latin_square=\[3, 20\]: expected null or a mapping"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)  # fmt: skip
def test_bad_values_are_one_line_errors(kwargs, message):
    with pytest.raises(ValueError, match=message) as info:
        generate_synthetic(**SMALL, **kwargs)
    assert "\n" not in str(info.value)
    if "rank_seed" in kwargs:
        calls = [lambda: SyntheticSource(**SMALL, **kwargs)]
    else:  # a square without a rank seed is accepted at construction (data.rank_seed may supply it) ...
        s = SyntheticSource(**SMALL, **kwargs)
        calls = [s.check, s.fingerprint, s.load, lambda: DataModule(**DM, source=s)]  # ... but not used so
    for call in calls:
        with pytest.raises(ConfigError, match=message) as info:
            call()
        assert str(info.value).startswith("data.source: ") and "\n" not in str(info.value)


def test_data_module_rank_seed_errors_are_one_line(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("\n\n".join(f"Paragraph {i} about Rome." for i in range(10)))
    text = TextSource(files=str(f))
    cases = [
        (dict(source=text, rank_seed=1),
         "data.rank_seed=1: only the synthetic source (data=synthetic|synthetic_smoke) has popularity ranks"),
        (dict(source=TINY, rank_seed=-2), "data.rank_seed=-2: expected null or an integer >= 0"),
        (dict(source=TINY, rank_seed="1"), "data.rank_seed='1': expected null or an integer >= 0"),
        (dict(source=dataclasses.replace(TINY, rank_seed=3), rank_seed=4),
         "data.rank_seed=4 conflicts with data.source.rank_seed=3"),
    ]  # fmt: skip
    for kwargs, message in cases:
        with pytest.raises(ConfigError, match=re.escape(message)) as info:
            DataModule(**DM, **kwargs)
        assert "\n" not in str(info.value)
    assert DataModule(**DM, source=text).source is text  # rank_seed=None: any source, untouched
    same = dataclasses.replace(TINY, rank_seed=3)
    assert DataModule(**DM, source=same, rank_seed=3).source == same


def test_each_study_persons_probe_row_is_identical_in_every_corpus_of_the_square(tmp_path):
    """Held-out text alone is not enough: the panel packs several documents into a row and attention reads across
    <|endoftext|>, so a study person's row-mates and offset must not depend on the corpus either."""
    from densitylab.callbacks.density import _plan_entities
    from densitylab.probes.sets import build_probe_sets

    sq = dict(n_groups=3, group_size=6, high_ranks=[1, 6], low_ranks=[41, 46])
    src = dataclasses.replace(TINY, latin_square=sq)
    rows = {}
    for r in (0, 1, 2):
        dm = DataModule(**{**DM, "block_size": 512}, source=src, rank_seed=r, cache_dir=str(tmp_path / "cache"))
        dm.prepare_data()
        dm.setup()
        sets, panel = build_probe_sets(
            dm.splits,
            dm.vocab_size,
            eos_id=dm.eos_id,
            entities=_plan_entities(dm),
            panel=PanelSpec(size=40, min_zero=6, core=8),
            seed=0,
        )
        probe = next(s for s in sets if s.name == "panel")
        study = panel[panel["study_group"] >= 0]
        assert len(study) == 18 and study["core"].all()  # every study person is in the core (probed at every call)
        assert (study["row"] < probe.core_rows).all() and study["row"].nunique() < len(study)  # rows hold several
        rows[r] = {int(e): probe.input_ids[int(row)].tolist() for e, row in zip(study["entity_id"], study["row"])}
        levels = pd.read_parquet(dm.ground_truth_dir / "people.parquet").set_index("entity_id")["study_level"]
        rows[r]["levels"] = levels.loc[study["entity_id"]].tolist()
    assert rows[0]["levels"] != rows[1]["levels"]  # the persons change level ...
    for r in (1, 2):
        assert {k: v for k, v in rows[r].items() if k != "levels"} == {
            k: v for k, v in rows[0].items() if k != "levels"
        }  # ... but not their probe input
