"""Position roles, the person panel and the person-level endpoints (issue 14): hand-built streams with known
answers, the whole synthetic corpus, and coverage of the person-clustered CI on simulated replications."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from densitylab.data.packing import pack_documents
from densitylab.probes.panel import PanelSpec, draw_panel
from densitylab.probes.roles import ROLE_CODE, ROLES, canary_documents, label_stream
from densitylab.probes.stats import cluster_mean_ci, cr1_ols


def _bio_stream():
    """Three documents: doc 0 about person 7 (name 1-3, value 6-7, co-mention of person 9 at 9-10), doc 1 a
    canary (tokens 50..55), doc 2 about person 9 (name 0-1, value 4)."""
    docs = [[11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21], [50, 51, 52, 53, 54, 55], [30, 31, 32, 33, 34, 35]]
    spans = pd.DataFrame(
        {
            "doc": [0, 0, 0, 1, 1],
            "t0": [1, 6, 9, 0, 4],
            "t1": [4, 8, 11, 2, 5],
            "kind": ["name", "birth_city", "name", "name", "major"],
            "entity": [7, 7, 9, 9, 9],
            "pdoc": [0, 0, 0, 2, 2],
        }
    )
    packed = pack_documents(docs, eos_id=0, block_size=8, token_spans=spans)
    canaries = pd.DataFrame({"tokens": [[50, 51, 52, 53, 54, 55]]})
    return packed, canaries


def test_every_position_gets_its_role_subject_and_mentioned_person():
    packed, canaries = _bio_stream()
    cd = canary_documents(packed, canaries)
    assert cd.tolist() == [False, True, False]
    lab = label_stream(packed, eos_id=0, canary_docs=cd)
    names = [ROLES[c] for c in lab.role.tolist()]
    assert names[:12] == [
        "template",
        "name_first",
        "name_inner",
        "name_last",
        "template",
        "pre_value",  # its target (position 6) is the value's first token
        "value",
        "value",
        "template",
        "name_first",
        "name_last",
        "eos",
    ]
    assert names[12:19] == ["canary"] * 7  # the canary document, its EOS included
    assert names[19:] == ["name_first", "name_last", "template", "pre_value", "value", "template", "eos"]
    assert (lab.subject[:12] == 7).all() and (lab.subject[12:19] == -1).all() and (lab.subject[19:] == 9).all()
    assert lab.mentioned[:12].tolist() == [-1, 7, 7, 7, -1, -1, -1, -1, -1, 9, 9, -1]
    # the person: a co-mention's name positions belong to the mentioned person, the rest to the subject
    assert lab.person[[2, 5, 9, 10, 11]].tolist() == [7, 7, 9, 9, 7]
    assert lab.doc_initial[:8].all() and not lab.doc_initial[8:12].any()  # up to the end of the first value


def test_labels_of_chosen_positions_equal_the_full_stream_labels():
    """label_stream(positions=...) (the training split's seen windows) gives each position the labels the full
    stream gives it, canary and co-mention positions included; take() reads them back by stream position."""
    packed, canaries = _bio_stream()
    cd = canary_documents(packed, canaries)
    full = label_stream(packed, eos_id=0, canary_docs=cd)
    rng = np.random.default_rng(0)
    for pos in (np.arange(packed.n_real), np.array([25, 0, 13, 13, 9, 6]), rng.integers(0, packed.n_real, 11)):
        part = label_stream(packed, eos_id=0, canary_docs=cd, positions=pos)
        assert part.positions.tolist() == sorted(set(pos.tolist()))
        for got, want in ((part.take(pos), full.take(pos)), (part, full.take(part.positions))):
            for f in ("role", "subject", "mentioned", "doc", "doc_initial", "person"):
                assert np.array_equal(getattr(got, f), getattr(want, f)), f
    part = label_stream(packed, eos_id=0, positions=np.array([3, 4]))
    with pytest.raises(KeyError):
        part.take(np.array([5]))
    with pytest.raises(ValueError):
        label_stream(packed, eos_id=0, positions=np.array([packed.n_real]))


@pytest.mark.slow
def test_pre_value_is_exactly_the_position_predicting_each_value_over_the_whole_synthetic_corpus(tmp_path):
    """Every attribute value of every document of the full default corpus (2,200 people, all three splits):
    the position before its first token is ``pre_value`` and the value's tokens are ``value``; no other
    position is ``pre_value``."""
    from densitylab.data.entities import SyntheticEntities
    from densitylab.data.prepare import DataRecipe, load_prepared
    from densitylab.data.sources import SyntheticSource
    from densitylab.data.tokenizer import TrainedBPE

    recipe = DataRecipe(
        SyntheticSource(),
        TrainedBPE(vocab_size=1024, min_frequency=2),
        SyntheticEntities(),
        128,
        {"repetitions": []},
        0,
    )
    recipe.build(tmp_path / "data", tmp_path)
    data = load_prepared(tmp_path / "data")
    for split, packed in data.splits.items():
        lab = label_stream(packed, data.tokenizer.token_to_id("<|endoftext|>"))
        spans = packed.spans[packed.spans["kind"] != "name"]
        first = (spans["sample_id"] * packed.block_size + spans["start"]).to_numpy()
        last = (spans["sample_id"] * packed.block_size + spans["end"]).to_numpy()
        assert len(first) == 6 * len(packed.doc_offsets[:-1]), split  # six attributes per biography
        pre = np.flatnonzero(lab.role == ROLE_CODE["pre_value"])
        assert np.array_equal(pre, np.sort(first - 1)), split
        value = np.concatenate([np.arange(a, b) for a, b in zip(first, last)])
        assert np.array_equal(np.flatnonzero(lab.role == ROLE_CODE["value"]), np.sort(value)), split
        doc_start = packed.doc_offsets[:-1]
        assert (lab.role[doc_start] == ROLE_CODE["name_first"]).all(), split  # every biography opens with a name


def _plan(n_people=2000, n_zero=200, max_docs=1000, seed=0):
    from densitylab.data.synthetic.people import zipf_doc_counts

    rng = np.random.default_rng(seed)
    planned = np.zeros(n_people + n_zero, dtype=np.int64)
    planned[rng.permutation(n_people + n_zero)[:n_people]] = zipf_doc_counts(n_people, 1.0, max_docs)
    return pd.DataFrame({"entity_id": np.arange(n_people + n_zero), "planned": planned})


def test_panel_is_stratified_as_specified_and_fixed_by_its_own_seed():
    plan = _plan()
    panel = draw_panel(plan, PanelSpec())
    assert len(panel) == 320 and panel["entity_id"].is_unique
    assert set(panel.loc[panel["stratum"] == "top", "entity_id"]) == set(plan.loc[plan["planned"] >= 64, "entity_id"])
    assert (panel["stratum"] == "top").sum() == 15 and (panel["stratum"] == "zero").sum() == 48
    # every pre-registered bin of planned documents has >= 10 people
    bins = np.searchsorted([0, 1, 4, 16, 64], panel["planned"], side="right") - 1
    assert np.bincount(bins, minlength=5).min() >= 10, np.bincount(bins)
    # log-even: the octaves of the middle stratum hold (close to) equal shares, capped by availability
    mid = panel[panel["stratum"] == "log_even"]
    octaves = np.bincount(np.floor(np.log2(mid["planned"])).astype(int))
    avail = np.bincount(np.floor(np.log2(plan.loc[plan["planned"].between(1, 63), "planned"])).astype(int))
    assert octaves.sum() == 320 - 15 - 48
    assert all(o == a or o >= octaves.max() - 1 for o, a in zip(octaves, avail)), (octaves, avail)
    assert panel.equals(draw_panel(plan, PanelSpec()))  # fixed
    other = draw_panel(plan, PanelSpec(seed=1))
    assert not other["entity_id"].equals(panel["entity_id"])
    # the plan's row order does not matter, and nothing but the plan and panel.seed enters the draw
    assert draw_panel(plan.sample(frac=1.0, random_state=3), PanelSpec()).equals(panel)
    # the panel never exceeds its size, even when the top stratum alone would (text data: many frequent entities)
    small = draw_panel(plan, PanelSpec(size=20, top_docs=4, min_zero=5))
    assert len(small) == 20 and (small["stratum"] == "zero").sum() == 5


def test_panel_spec_rejects_bad_values():
    with pytest.raises(ValueError, match="panel.size=0"):
        PanelSpec(size=0)
    with pytest.raises(ValueError, match="panel.seed=-1"):
        PanelSpec(seed=-1)


def _coverage(n_persons: int, reps: int = 2000, sd_person: float = 0.02, seed: int = 0):
    """Coverage of a zero true difference between two bins of ``n_persons`` people each, every person with a
    random offset (SD ``sd_person``) and 4-8 positions (noise SD 0.02) spread over windows that each hold about
    three positions of different people: the layout that made window-clustered CIs cover far below nominal."""
    rng = np.random.default_rng(seed)
    cover_person = cover_window = 0
    for _ in range(reps):
        persons = np.arange(2 * n_persons)
        k = rng.integers(4, 9, size=len(persons))
        person = np.repeat(persons, k)
        y = rng.normal(0, sd_person, len(persons))[person] + rng.normal(0, 0.02, len(person))
        b = (person >= n_persons).astype(np.float64)
        window = rng.integers(0, max(len(person) // 3, 2), size=len(person)) + 10_000 * b.astype(int)
        X = np.column_stack([np.ones(len(y)), b])
        _, _, lo, hi, _, _ = cr1_ols(X, y, person)
        cover_person += lo[1] <= 0 <= hi[1]
        # the old estimator: windows as clusters, each bin's mean CI, Welch-combined
        a = cluster_mean_ci(y[b == 1], window[b == 1])
        c = cluster_mean_ci(y[b == 0], window[b == 0])
        se = np.hypot((a[2] - a[1]) / 2, (c[2] - c[1]) / 2) / 1.96
        cover_window += abs(a[0] - c[0]) <= 1.96 * se
    return cover_person / reps, cover_window / reps


@pytest.mark.parametrize("n_persons", [13, 45])
def test_person_clustered_ci_covers_a_zero_effect_at_its_nominal_level(n_persons):
    person, window = _coverage(n_persons)
    assert person >= 0.93, person
    assert window < 0.85, (window, person)  # windows as clusters: far below nominal


def test_cr1_ols_matches_statsmodels():
    sm = pytest.importorskip("statsmodels.api")
    rng = np.random.default_rng(1)
    g = rng.integers(0, 25, 300)
    X = np.column_stack([np.ones(300), rng.normal(size=300), rng.integers(0, 2, 300)])
    y = X @ [0.2, 0.5, -0.1] + rng.normal(0, 0.3, 25)[g] + rng.normal(0, 0.1, 300)
    beta, se, lo, hi, n, G = cr1_ols(X, y, g)
    ref = sm.OLS(y, X).fit(cov_type="cluster", cov_kwds={"groups": g, "df_correction": True}, use_t=True)
    assert np.allclose(beta, ref.params) and np.allclose(se, ref.bse, rtol=1e-10)
    assert np.allclose(np.column_stack([lo, hi]), ref.conf_int(), rtol=1e-8) and (n, G) == (300, 25)


def test_endpoints_use_persons_as_clusters_and_flag_thin_bins():
    from densitylab.probes.density import EndpointSpec, endpoint_records

    rng = np.random.default_rng(2)
    rows = []
    docs = {0: 0, 1: 2, 2: 8, 3: 30, 4: 100}
    sizes = {0: 20, 1: 20, 2: 20, 3: 20, 4: 6}  # the 64+ bin has only 6 persons
    pid = 0
    for b, n in sizes.items():
        for _ in range(n):
            for role in ("name_last", "pre_value"):
                for _ in range(3):
                    rows.append(dict(probe_set="panel", own=True, role=role, person=pid, row=pid, distinct_docs=docs[b],
                                     **{"L0/active_frac_live": 0.2 + 0.01 * b + rng.normal(0, 0.01)}))  # fmt: skip
            pid += 1
    pos = pd.DataFrame(rows)
    out = endpoint_records(pos, EndpointSpec(secondary=()), 1, "distinct_docs")
    nl = out[out["role"] == "name_last"].set_index(["estimand", "bin"])
    assert nl.loc[("mean", "0"), "n_entities"] == 20 and nl.loc[("mean", "0"), "status"] == "ok"
    assert nl.loc[("mean", "64+"), "status"] == "insufficient" and np.isnan(nl.loc[("mean", "64+"), "value"])
    assert nl.loc[("mean", "64+"), "n_entities"] == 6
    assert nl.loc[("diff_vs_0", "64+"), "status"] == "insufficient"
    d = nl.loc[("diff_vs_0", "16-63")]
    assert d["status"] == "ok" and d["value"] == pytest.approx(0.03, abs=0.01) and d["n_entities"] == 40
    sub = pos[(pos["role"] == "name_last") & pos["distinct_docs"].isin([0, 30])]
    X = np.column_stack([np.ones(len(sub)), (sub["distinct_docs"] == 30).to_numpy(float)])
    beta, _, lo, hi, _, _ = cr1_ols(X, sub["L0/active_frac_live"].to_numpy(), sub["person"].to_numpy())
    assert (d["value"], d["ci_low"], d["ci_high"]) == pytest.approx((beta[1], lo[1], hi[1]))
    m0 = sub[sub["distinct_docs"] == 0]
    beta, _, lo, hi, _, _ = cr1_ols(
        np.ones((len(m0), 1)), m0["L0/active_frac_live"].to_numpy(), m0["person"].to_numpy()
    )
    assert tuple(nl.loc[("mean", "0"), ["value", "ci_low", "ci_high"]]) == pytest.approx((beta[0], lo[0], hi[0]))
    s = nl.loc[("slope", "all")]
    assert s["status"] == "ok" and s["n_entities"] == 86 and s["ci_low"] < s["value"] < s["ci_high"]
    every = pos[pos["role"] == "name_last"]
    X = np.column_stack([np.ones(len(every)), np.log2(1 + every["distinct_docs"].to_numpy(float))])
    beta, _, lo, hi, _, _ = cr1_ols(X, every["L0/active_frac_live"].to_numpy(), every["person"].to_numpy())
    assert (s["value"], s["ci_low"], s["ci_high"]) == pytest.approx((beta[1], lo[1], hi[1]))  # the closed form
    assert s["value"] > 0  # exposure raises the metric by construction


def test_panel_rows_hold_each_persons_held_out_document_whole():
    from densitylab.probes.panel import pack_documents_into_rows

    packed, _ = _bio_stream()
    lab = label_stream(packed, eos_id=0)
    rows = pack_documents_into_rows([(packed, lab, 0, 7), (packed, lab, 2, 9)], 12, eos_id=0)
    # doc 0 (12 tokens with its EOS) fills row 0 after the leading EOS: 13 > 12 inputs, so it is cut at 11 + the
    # next row starts with doc 2
    assert rows.row_persons == [[7], [9]]
    assert rows.input_ids[0, 0] == 0 and rows.input_ids[0, 1:].tolist() == list(range(11, 22))
    assert rows.input_ids[1, :8].tolist() == [0, 30, 31, 32, 33, 34, 35, 0]
    assert not rows.probed[:, 0].any() and rows.probed[1, 1:8].all() and not rows.probed[1, 8:].any()
    assert ROLES[rows.role[1, 4]] == "pre_value" and rows.targets[1, 4] == 34
    assert (rows.targets[1, 7:] == -100).all()  # padding is nobody's target
    assert torch.equal(rows.targets[0, :-1], rows.input_ids[0, 1:])
