"""Density probes: metrics pinned to hand-computed values, statistics, streaming, records, probe sets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from densitylab.data.packing import pack_documents
from densitylab.model import GPT
from densitylab.probes.density import (
    FINAL_METRICS,
    FIRING_RATE_EDGES,
    METRICS,
    POSITION_METRICS,
    UNIT_COLUMNS,
    DensityMeasurement,
    ProbeSet,
    _Moments,
    active_frac,
    density_records,
    effective_rank,
    firing_histogram,
    hoyer,
    jin_top_energy,
    measure_density,
    participation_ratio,
    top_energy,
    unit_records,
    zero_frac,
)
from densitylab.probes.schedule import is_scheduled
from densitylab.probes.sets import build_probe_sets
from densitylab.probes.stats import cluster_mean_ci


def test_active_frac_counts_strictly_positive_preactivations():
    pre = torch.tensor([[-1.0, 0.0, 2.0, 3.0], [-0.0, -2.0, -1.0, 1e-9]])
    assert active_frac(pre).tolist() == [0.5, 0.25]
    post = torch.relu(pre)
    assert ((post != 0).float().mean(-1) == active_frac(pre)).all()  # ReLU: exact zeros


def test_hoyer_one_hot_flat_zero_and_known_vector():
    assert hoyer(torch.tensor([0.0, 0.0, 5.0, 0.0])).item() == pytest.approx(1.0)
    assert hoyer(torch.tensor([2.0, -2.0, 2.0, 2.0])).item() == pytest.approx(0.0, abs=1e-6)
    assert math.isnan(hoyer(torch.zeros(8)).item())  # an all-zero vector is not "maximally sparse"
    assert hoyer(torch.tensor([1.0, 1.0, 0.0, 0.0])).item() == pytest.approx((2 - math.sqrt(2)) / (2 - 1))
    assert hoyer(torch.tensor([1e-30, 0.0, 0.0, 0.0])).item() == pytest.approx(1.0)  # h² underflows: scale-free
    with pytest.raises(ValueError):
        hoyer(torch.ones(1))


def test_top_energy_and_effective_rank_on_known_vectors():
    r = torch.ones(20)
    r[3] = 3.0  # 5% of 20 = 1 coordinate: 9 of 9 + 19
    assert top_energy(r).item() == pytest.approx(9 / 28)
    assert top_energy(torch.ones(40)).item() == pytest.approx(2 / 40)  # ceil(0.05*40) = 2 of 40 equal
    assert top_energy(torch.zeros(10)).item() == 0.0
    assert effective_rank(torch.tensor([0.0, 7.0, 0.0, 0.0])).item() == pytest.approx(1 / 4)
    assert effective_rank(torch.tensor([1.0, -1.0, 1.0, 1.0])).item() == pytest.approx(1.0)
    assert effective_rank(torch.tensor([1.0, 1.0, 0.0, 0.0])).item() == pytest.approx(0.5)


def test_all_zero_vectors_give_nan_hoyer_and_are_counted_by_zero_frac():
    h = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.0, 3.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [-0.0, 0.0, 0.0, 0.0]])
    v = hoyer(h)
    assert torch.isnan(v[[0, 3]]).all() and v[1].item() == pytest.approx(1.0) and v[2].item() == pytest.approx(0.0)
    assert zero_frac(h).tolist() == [1.0, 0.0, 0.0, 1.0]
    assert zero_frac(torch.full((2, 5), 1e-30)).tolist() == [0.0, 0.0]  # tiny but non-zero: not a zero vector


def test_jin_metrics_follow_their_formula_on_known_vectors():
    for d in (10, 30, 40, 128):
        k = max(1, int(0.05 * d))  # Jin et al.: floor, at least 1
        one_hot = torch.zeros(d)
        one_hot[d // 3] = -2.5
        assert jin_top_energy(one_hot).item() == pytest.approx(1.0)
        assert effective_rank(one_hot).item() == pytest.approx(1 / d)
        assert jin_top_energy(torch.full((d,), 0.7)).item() == pytest.approx(k / d)
        assert effective_rank(torch.full((d,), 0.7)).item() == pytest.approx(1.0, rel=1e-5)
    # floor vs the per-layer ceil: d = 30 keeps 1 coordinate (Jin) against 2 (top5_energy)
    assert jin_top_energy(torch.ones(30)).item() == pytest.approx(1 / 30)
    assert top_energy(torch.ones(30)).item() == pytest.approx(2 / 30)
    r = torch.arange(1.0, 41.0)  # k = 2: (40² + 39²) / Σ i²
    assert jin_top_energy(r).item() == pytest.approx((40**2 + 39**2) / sum(i * i for i in range(1, 41)), rel=1e-6)
    p = r.square() / r.square().sum()
    assert effective_rank(r).item() == pytest.approx(math.exp(-(p * p.log()).sum().item()) / 40, rel=1e-5)


def test_participation_ratio_of_a_covariance_with_known_eigenvalues():
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    lam = torch.tensor([4.0, 2.0, 1.0, 1.0, 0.5, 0.0], dtype=torch.float64)
    cov = q @ torch.diag(lam) @ q.T  # rotated: the ratio only sees the eigenvalues
    assert participation_ratio(cov) == pytest.approx(lam.sum().item() ** 2 / lam.square().sum().item())
    assert participation_ratio(np.eye(5) * 3.0) == pytest.approx(5.0)  # isotropic: d
    assert participation_ratio(np.outer([1.0, 2.0, 2.0], [1.0, 2.0, 2.0])) == pytest.approx(1.0)  # rank one
    assert math.isnan(participation_ratio(np.zeros((3, 3))))
    # the streaming covariance equals numpy's over all rows, whatever the batches
    x = torch.randn(50, 4, generator=g) * torch.tensor([1.0, 2.0, 3.0, 0.1]) + 100.0
    mo = _Moments()
    for chunk in (x[:7], x[7:8], x[8:30], x[30:]):
        mo.update(chunk)
    assert torch.allclose(mo.cov(), torch.from_numpy(np.cov(x.double().numpy(), rowvar=False)), atol=1e-4)


def test_firing_histogram_bins():
    edges = FIRING_RATE_EDGES
    assert edges[0] == 0.0 and edges[-1] == 1.0 and list(edges) == sorted(edges)
    rate = np.array([0.0, 0.0, 1e-6, 0.001, 0.0011, 0.5, 0.51, 0.9, 1.0])
    # bins: [0,0], (0,.001], (.001,.01], (.01,.05], (.05,.1], (.1,.2], (.2,.5], (.5,.9], (.9,1]
    assert firing_histogram(rate).tolist() == [2, 2, 1, 0, 0, 0, 1, 2, 1]


def _clustered(rng, k=30, m=20, mean=0.3, between=0.1, within=0.2):
    effects = rng.normal(0, between, size=k)
    values = mean + np.repeat(effects, m) + rng.normal(0, within, size=k * m)
    return values, np.repeat(np.arange(k), m)


def test_cluster_mean_ci_covers_the_true_mean_about_95_percent():
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(400):
        v, c = _clustered(rng)
        m, lo, hi, n, k = cluster_mean_ci(v, c)
        assert lo <= m <= hi and n == 600 and k == 30
        hits += lo <= 0.3 <= hi
    assert 0.91 <= hits / 400 <= 0.99
    # a naive i.i.d. interval would be far too narrow with correlated positions: ours is wider
    v, c = _clustered(np.random.default_rng(1))
    m, lo, hi, *_ = cluster_mean_ci(v, c)
    assert (hi - lo) / 2 > 1.5 * 1.96 * v.std(ddof=1) / math.sqrt(len(v))  # design effect ~ sqrt(1 + 19 x 0.2)


def test_cluster_ci_edge_cases():
    m, lo, hi, n, k = cluster_mean_ci(np.array([1.0, 2.0]), np.array([5, 5]))
    assert (m, lo, hi, n, k) == (1.5, -math.inf, math.inf, 2, 1)
    assert math.isnan(cluster_mean_ci(np.array([]), np.array([]))[0])


def test_schedule_is_log_spaced_then_periodic():
    steps = [s for s in range(0, 700) if is_scheduled(s, 150)]
    assert steps == [0, 1, 2, 4, 8, 16, 32, 64, 128, 150, 300, 450, 600]
    assert [s for s in range(10) if is_scheduled(s, 0)] == [0, 1, 2, 4, 8]
    assert [s for s in range(700) if is_scheduled(s, 150, 4)] == [0, 1, 4, 16, 64, 150, 300, 450, 600]
    assert [s for s in range(70) if is_scheduled(s, 0, 3)] == [0, 1, 3, 9, 27]
    assert [s for s in range(300) if is_scheduled(s, 150, False)] == [0, 150]
    with pytest.raises(ValueError, match="log_spaced=1"):
        is_scheduled(3, 10, 1)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32).eval()


def test_measure_density_matches_run_with_cache_and_streams(model):
    ids = torch.randint(0, 64, (10, 16), generator=torch.Generator().manual_seed(1))
    m = measure_density(model, ids, batch_size=3)  # 4 mini-batches, the last one partial
    out = m.positions
    assert set(out) == {f"L{i}/{k}" for i in range(2) for k in POSITION_METRICS} | {f"L1/{k}" for k in FINAL_METRICS}
    _, cache = model.run_with_cache(ids)
    for i in range(2):
        pre = cache[f"blocks.{i}.mlp.hook_pre"]
        assert np.allclose(out[f"L{i}/active_frac"], active_frac(pre).numpy())
        assert np.allclose(out[f"L{i}/hoyer"], hoyer(cache[f"blocks.{i}.mlp.hook_post"]).numpy(), atol=1e-6)
        resid = cache[f"blocks.{i}.hook_resid_post"]
        assert np.allclose(out[f"L{i}/eff_rank"], effective_rank(resid).numpy(), atol=1e-6)
        assert out[f"L{i}/top5_energy"].shape == (10, 16)
        assert (m.fire_counts[i] == (pre > 0).sum((0, 1)).numpy()).all()
        x = resid.reshape(-1, resid.shape[-1]).double().numpy()
        lam = np.linalg.eigvalsh(np.cov(x, rowvar=False))
        assert m.set_metrics[f"L{i}/participation_ratio"] == pytest.approx(lam.sum() ** 2 / (lam**2).sum(), rel=1e-4)
    assert m.n_positions == 160 and m.n_windows == 10 and m.fire_counts.shape == (2, 128)
    # Jin et al.: the final hidden state after ln_f, at the last position of each window only
    h = model.transformer.ln_f(cache["blocks.1.hook_resid_post"][:, -1]).detach()
    jin = out["L1/jin_top5_energy"]
    assert np.isnan(jin[:, :-1]).all()
    assert np.allclose(jin[:, -1], jin_top_energy(h).numpy(), atol=1e-6)
    assert np.allclose(out["L1/jin_eff_rank"][:, -1], effective_rank(h).numpy(), atol=1e-6)
    assert all(len(p._forward_hooks) == 0 for p in model.hook_points().values())
    again = measure_density(model, ids, batch_size=10)
    assert np.allclose(again.positions["L1/hoyer"], out["L1/hoyer"], atol=1e-6)
    assert (again.fire_counts == m.fire_counts).all()
    assert again.set_metrics["L0/participation_ratio"] == pytest.approx(m.set_metrics["L0/participation_ratio"])
    picked = torch.zeros(10, 16, dtype=torch.bool)
    picked[:, 3] = True
    other = measure_density(model, ids, final_positions=picked).positions["L1/jin_eff_rank"]
    assert np.isfinite(other[:, 3]).all() and np.isnan(np.delete(other, 3, axis=1)).all()


def _killed_model(kill: dict[int, list[int]]) -> GPT:
    """The test model with units that never fire: c_fc weight rows 0, bias -100 (pre-activation -100 everywhere)."""
    torch.manual_seed(0)
    m = GPT(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32).eval()
    with torch.no_grad():
        for layer, units in kill.items():
            fc = m.transformer.h[layer].mlp.c_fc
            fc.weight[units] = 0.0
            fc.bias[units] = -100.0
    return m


def _records(step: int, ms: dict, ids: dict):
    """density_records on unlabelled sets (controls): no persons, no endpoints."""
    sets = {k: ProbeSet(k, torch.as_tensor(v), torch.full((len(v),), -1)) for k, v in ids.items()}
    rows, headline, _ = density_records(step, ms, sets, {}, np.zeros(64, dtype=np.int64))
    return rows, headline


def test_dead_units_of_a_model_with_hand_killed_units():
    killed = {0: list(range(0, 128, 4)), 1: [5, 6, 7, 100]}  # 32 / 128 and 4 / 128 units
    model = _killed_model(killed)
    g = torch.Generator().manual_seed(3)
    sets = {"a": torch.randint(0, 64, (12, 16), generator=g), "b": torch.randint(0, 64, (8, 16), generator=g)}
    ms = {name: measure_density(model, ids, batch_size=5) for name, ids in sets.items()}
    units = unit_records(11, ms)
    assert list(units.columns) == UNIT_COLUMNS and (units["step"] == 11).all()
    assert set(units["probe_set"]) == {"all", "a", "b"}
    for name, n_pos in (("all", 320), ("a", 192), ("b", 128)):
        for layer, dead in killed.items():
            u = units[(units["probe_set"] == name) & (units["layer"] == layer)]
            assert len(u) == len(FIRING_RATE_EDGES) and u["count"].sum() == 128
            assert (u["n_units"] == 128).all() and (u["n_positions"] == n_pos).all()
            assert (u["dead_frac"] == len(dead) / 128).all() and (u["n_dead"] == len(dead)).all()  # exactly
            first = u.iloc[0]
            assert (first.bin_low, first.bin_high, first["count"]) == (0.0, 0.0, len(dead))  # the [0, 0] bin
    rows, _ = _records(11, ms, sets)
    whole = rows[(rows["role"] == "all") & (rows["probe_set"] == "a")].set_index(["layer", "metric"])["value"]
    for layer, dead in killed.items():
        af = ms["a"].positions[f"L{layer}/active_frac"]
        assert whole[(layer, "active_frac")] == pytest.approx(af.mean(), rel=1e-5)
        assert whole[(layer, "active_frac_live")] == pytest.approx(af.mean() * 128 / (128 - len(dead)), rel=1e-5)
        assert whole[(layer, "zero_frac")] == 0.0


def test_a_layer_without_any_live_unit_gives_nan_hoyer_rows_dropped_and_zero_frac_one():
    model = _killed_model({0: list(range(128))})
    ids = torch.randint(0, 64, (6, 16), generator=torch.Generator().manual_seed(4))
    m = measure_density(model, ids)
    assert np.isnan(m.positions["L0/hoyer"]).all() and (m.positions["L0/zero_frac"] == 1).all()
    rows, _ = _records(2, {"x": m}, {"x": ids})
    l0 = rows[(rows["layer"] == 0) & (rows["role"] == "all")].set_index("metric")
    assert l0.loc["zero_frac", "value"] == 1.0 and l0.loc["active_frac", "value"] == 0.0
    assert "hoyer" not in l0.index and "active_frac_live" not in l0.index  # no finite value: no row
    assert unit_records(2, {"x": m}).query("layer == 0")["dead_frac"].eq(1.0).all()


def test_nan_values_are_left_out_of_means_and_counts():
    N, T = 4, 5
    base = np.full((N, T), 0.5, dtype=np.float32)
    hz = base.copy()
    hz[0, :2] = np.nan  # two zero vectors in window 0
    hz[1, 1] = 0.9
    positions = {"L0/active_frac": base, "L0/zero_frac": np.isnan(hz).astype(np.float32), "L0/hoyer": hz}
    for k in ("top5_energy", "eff_rank"):
        positions[f"L0/{k}"] = base
    m = DensityMeasurement(positions, np.ones((1, 8), np.int64), N * T, N, {"L0/participation_ratio": 3.0})
    rows, _ = _records(0, {"s": m}, {"s": torch.zeros(N, T, dtype=torch.int64)})
    whole = rows[rows["role"] == "all"].set_index("metric")
    assert whole.loc["hoyer", "value"] == pytest.approx(np.nanmean(hz)) and whole.loc["hoyer", "n"] == N * T - 2
    assert whole.loc["zero_frac", "value"] == pytest.approx(2 / 20) and whole.loc["zero_frac", "n"] == 20
    assert whole.loc["hoyer", "n_windows"] == N
    pr = whole.loc["participation_ratio"]
    assert pr["value"] == 3.0 and pr["n"] == 20 and pr["n_windows"] == N and math.isnan(pr["ci_low"])


def _sets():
    """A tiny bio-like corpus: 40 documents, docs 0-29 train, 30-39 held out; every held-out doc has a subject
    (attribute span) and a name, persons 0-9 familiar (train docs), 10-19 zero exposure."""
    import pandas as pd

    g = torch.Generator().manual_seed(0)
    docs = [torch.randint(1, 64, (int(n),), generator=g).tolist() for n in torch.randint(10, 20, (50,), generator=g)]
    rows = []
    for d in range(50):
        person = d % 10 if d < 30 else (d - 30) % 10 + (0 if d < 40 else 10)
        rows += [
            dict(doc=d, t0=0, t1=2, kind="name", entity=person),
            dict(doc=d, t0=5, t1=7, kind="major", entity=person),
        ]
    spans = pd.DataFrame(rows)
    train = spans[spans["doc"] < 30]
    held = spans[(spans["doc"] >= 30) & (spans["doc"] < 40)].assign(doc=lambda f: f["doc"] - 30)
    unf = spans[spans["doc"] >= 40].assign(doc=lambda f: f["doc"] - 40)
    splits = {
        "train": pack_documents(docs[:30], 0, 16, token_spans=train),
        "heldout": pack_documents(docs[30:40], 0, 16, token_spans=held),
        "unfamiliar": pack_documents(docs[40:], 0, 16, token_spans=unf),
    }
    entities = pd.DataFrame({"entity_id": range(20), "planned_docs": [3] * 10 + [0] * 10})
    from densitylab.probes.panel import PanelSpec

    sets, panel = build_probe_sets(
        splits, 64, eos_id=0, entities=entities, panel=PanelSpec(size=20, min_zero=10), n_seen=6, n_control=6, seed=0
    )
    return splits, sets, panel


def test_probe_sets_are_drawn_as_specified():
    from densitylab.probes.roles import ROLES

    splits, sets, panel = _sets()
    by = {s.name: s for s in sets}
    assert list(by) == ["panel", "seen", "shuffled", "random", "random_seen"]
    assert len(panel) == 20 and (panel["row"] >= 0).all()
    assert set(panel.loc[panel["entity_id"] < 10, "split"]) == {"heldout"}
    assert set(panel.loc[panel["entity_id"] >= 10, "split"]) == {"unfamiliar"}
    held = by["panel"]
    assert (held.sample_ids == -1).all() and sorted(p for r in held.row_persons for p in r) == list(range(20))
    # every panel person's name opens their document: name_first right after the row's EOS or previous doc
    roles = held.labels["role"]
    for r, persons in enumerate(held.row_persons):
        starts = np.flatnonzero((roles[r] == ROLES.index("name_first")) & held.labels["probed"][r])
        assert sorted(held.labels["person"][r, starts].tolist()) == sorted(persons)
    for sid, row in zip(by["seen"].sample_ids.tolist(), by["seen"].input_ids):
        assert torch.equal(row, splits["train"].window(sid)[0])
    assert torch.equal(by["seen"].targets[0], splits["train"].window(int(by["seen"].sample_ids[0]))[1])
    assert torch.equal(by["shuffled"].input_ids.sort(1).values, held.input_ids[:6].sort(1).values)
    assert not torch.equal(by["shuffled"].input_ids, held.input_ids[:6])
    assert (by["random"].input_ids != 0).all() and by["random"].input_ids.max() < 64
    in_train = set(splits["train"].tokens[: splits["train"].n_real].tolist()) - {0}
    assert set(by["random_seen"].input_ids.flatten().tolist()) <= in_train
    _, again, _ = _sets()
    assert all(torch.equal(a.input_ids, b.input_ids) for a, b in zip(sets, again))  # fixed by the seeds
    assert held.core_rows == len(held.input_ids) and panel["core"].all()  # 20 people, a core of up to 64


def test_the_panel_core_is_balanced_over_bins_and_packed_into_the_first_rows():
    import pandas as pd

    from densitylab.probes.panel import PanelSpec

    splits, _, _ = _sets()
    entities = pd.DataFrame({"entity_id": range(20), "planned_docs": [3] * 10 + [0] * 10})
    spec = PanelSpec(size=20, min_zero=10, core=6, core_edges=(0, 1))
    sets, panel = build_probe_sets(splits, 64, eos_id=0, entities=entities, panel=spec, n_seen=6, n_control=6)
    held = sets[0]
    core_ids = set(panel.loc[panel["core"], "entity_id"])
    assert len(core_ids) == 6 and len(core_ids & set(range(10))) == 3  # 3 exposed, 3 zero-exposure
    k = held.core_rows
    assert 0 < k < len(held.input_ids)
    assert {p for r in held.row_persons[:k] for p in r} == core_ids
    assert not {p for r in held.row_persons[k:] for p in r} & core_ids
    cut = held.core()
    assert cut.input_ids.shape[0] == k and cut.labels["role"].shape[0] == k and len(cut.row_persons) == k
    assert torch.equal(cut.input_ids, held.input_ids[:k])


def test_density_records_cover_everything_with_consistent_counts(model):
    from densitylab.probes.density import RECORD_COLUMNS, EndpointSpec

    _, sets, _ = _sets()
    by = {s.name: s for s in sets}
    metrics = {
        n: measure_density(model, s.input_ids, final_positions=s.final_positions(), probed=s.probed())
        for n, s in by.items()
    }
    exposure = {k: np.array([3] * 10 + [0] * 10) for k in ("distinct_docs", "subject_docs", "mentions")}
    exposure["comentions"] = np.zeros(20, dtype=np.int64)
    spec = EndpointSpec(bin_edges=(0, 1), min_entities=5)
    rows, headline, pos = density_records(7, metrics, by, exposure, np.arange(64), np.ones(200, np.int64), spec)
    assert list(rows.columns) == RECORD_COLUMNS and (rows["step"] == 7).all()
    assert set(rows["metric"]) == {*METRICS, *FINAL_METRICS, "participation_ratio"}
    assert set(rows["probe_set"]) == set(by) | {"panel_core"}  # the core: here every panel row
    core = rows[(rows["probe_set"] == "panel_core")].set_index(["layer", "metric"])["value"]
    whole_panel = rows[
        (rows["probe_set"] == "panel") & (rows["role"] == "all") & (rows["metric"] != "participation_ratio")
    ]
    assert np.allclose(whole_panel.set_index(["layer", "metric"])["value"].sort_index(), core.sort_index())
    base = rows[rows["metric"].isin(METRICS) & (rows["role"] == "all")]
    for name, s in by.items():
        probed = s.input_ids.numel() if s.labels is None else int(s.labels["probed"].sum())
        sub = base[(base["probe_set"] == name) & (base["metric"] == "active_frac")]
        assert sorted(sub["layer"]) == [0, 1] and (sub["n"] == probed).all(), name
    assert ((base["ci_low"] <= base["value"]) & (base["value"] <= base["ci_high"])).all()
    # per-role rows partition the probed positions
    per_role = rows[(rows["probe_set"] == "panel") & (rows["role"] != "all") & (rows["metric"] == "active_frac")]
    per_role = per_role[(per_role["exposure"] == "all") & (per_role["layer"] == 0)]
    assert per_role["n"].sum() == int(by["panel"].labels["probed"].sum())
    # the endpoints: persons as clusters, 10 people per bin, n_entities on every row
    ends = rows[(rows["exposure"] == "distinct_docs") & (rows["metric"] == "active_frac_live")]
    assert set(ends["role"]) == {"name_last", "pre_value"} and set(ends["estimand"]) == {"mean", "diff_vs_0", "slope"}
    means = ends[ends["estimand"] == "mean"]
    assert (means["n_entities"] == 10).all() and (means["status"] == "ok").all()
    assert {"L0/name_last/slope", "L1/pre_value/diff_1+", "L1/pre_value/diff_1+_n_entities"} <= set(headline)
    assert headline["L0/name_last/slope_n_entities"] == 20
    # positions: own panel positions carry their person's exposure, targets' counts = token ids (arange)
    own = pos[(pos["probe_set"] == "panel") & pos["own"]]
    assert (own["distinct_docs"] == np.where(own["person"] < 10, 3, 0)).all()
    ok = own["target_count"] >= 0
    assert (own.loc[ok, "input_count"] >= 0).all() and len(own) > 0
    assert set(pos.loc[pos["probe_set"] == "seen", "window_trained"]) == {1}
    # the whole-set mean equals the plain mean of the per-position values
    whole = base[(base["probe_set"] == "random") & (base["metric"] == "hoyer") & (base["layer"] == 1)]
    assert whole["value"].item() == pytest.approx(np.nanmean(metrics["random"].positions["L1/hoyer"]), rel=1e-5)
    jin = rows[(rows["metric"] == "jin_eff_rank") & (rows["role"] == "pre_value") & (rows["probe_set"] == "panel")]
    assert set(jin["layer"]) == {1} and (jin["n"] == 20).all()  # read at the 20 pre_value positions only

    from densitylab.report.density import heatmap_by_bin

    fig = heatmap_by_bin(rows, 7, "name_last", "active_frac_live")
    image = fig.axes[0].images[0].get_array()
    assert image.shape == (2, 2)  # layer x exposure bin
    nl = means[(means["role"] == "name_last") & (means["layer"] == 1)].sort_values("bin_index")
    assert image[1, 0] == pytest.approx(nl["value"].iloc[0])
    fig.clf()


def test_stop_at_layer_returns_the_residual_stream_without_lm_head(model):
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(5))
    _, cache = model.run_with_cache(ids, ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"])
    assert torch.allclose(model(ids, stop_at_layer=1), cache["blocks.0.hook_resid_post"])
    assert torch.allclose(model(ids, stop_at_layer=2), cache["blocks.1.hook_resid_post"])
    assert model(ids).shape == (2, 16, 64)


def test_density_callback_writes_units_table_and_keeps_it_up_to_the_restored_step(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import pandas as pd

    from densitylab.callbacks.density import DensityCallback

    ids = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(6))
    model = _killed_model({1: [0, 1]})
    ms = {"s": measure_density(model, ids)}
    old = pd.concat([unit_records(s, ms) for s in (0, 1, 2, 4, 8)], ignore_index=True)
    (tmp_path / "probes").mkdir()
    old.to_parquet(tmp_path / "probes" / "units.parquet", index=False)
    cb = DensityCallback(output_dir=str(tmp_path), seed=0, panel={}, endpoints={})
    monkeypatch.setattr(cb, "dependency", lambda arg: None)
    monkeypatch.setattr(cb, "prepare", lambda trainer, module: None)
    trainer = SimpleNamespace(global_step=4, current_epoch=0, is_global_zero=True, world_size=1, loggers=[])
    cb.on_fit_start(trainer, None)
    cb.on_train_start(trainer, None)  # resumed at step 4: the old step 8 goes
    cb._units = unit_records(8, ms)
    cb.add_records(pd.DataFrame({"step": [8]}))
    units = pd.read_parquet(tmp_path / "probes" / "units.parquet")
    assert sorted(units["step"].unique()) == [0, 1, 2, 4, 8] and len(units) == len(old)
    assert cb._units is None and not list((tmp_path / "probes").glob(".*tmp*"))
    assert units.query("step == 8 and probe_set == 'all' and layer == 1")["dead_frac"].eq(2 / 128).all()


def test_text_data_panel_uses_held_out_mentions_and_the_mentions_exposure(model):
    """Text data (name spans only, no document subjects): the panel is stratified by training mentions, each
    entity is probed on the held-out window of its first held-out mention, roles are name_* or other, and the
    endpoints fall back from distinct_docs to mentions."""
    import pandas as pd

    from densitylab.probes.density import EndpointSpec
    from densitylab.probes.panel import PanelSpec
    from densitylab.probes.roles import ROLES

    g = torch.Generator().manual_seed(1)
    docs = [torch.randint(1, 64, (int(n),), generator=g).tolist() for n in torch.randint(10, 20, (60,), generator=g)]
    ent = [d % 24 for d in range(60)]
    spans = pd.DataFrame({"doc": range(60), "t0": 2, "t1": 4, "kind": "name", "entity": ent})
    train_docs = [d for d in range(60) if d < 36 and ent[d] < 12]  # entities 0-11 trained, 12-23 never
    tspans = spans[spans["doc"].isin(train_docs)].assign(
        doc=lambda f: f["doc"].map({d: i for i, d in enumerate(train_docs)})
    )
    hspans = spans[spans["doc"] >= 36].assign(doc=lambda f: f["doc"] - 36)
    splits = {
        "train": pack_documents([docs[d] for d in train_docs], 0, 16, token_spans=tspans),
        "heldout": pack_documents(docs[36:], 0, 16, token_spans=hspans),
    }
    entities = pd.DataFrame({"entity_id": range(24), "entity": [f"E{i}" for i in range(24)]})
    sets, panel = build_probe_sets(
        splits, 64, eos_id=0, entities=entities, panel=PanelSpec(size=24, top_docs=2, min_zero=12), n_control=4
    )
    by = {s.name: s for s in sets}
    assert len(panel) == 24 and set(panel["stratum"]) == {"top", "zero"}
    assert (panel["split"] == "heldout").all()
    held = by["panel"]
    for r, persons in enumerate(held.row_persons):
        assert persons[0] in held.labels["mentioned"][r]  # the entity is mentioned in its row
    roles = {ROLES[c] for c in np.unique(held.labels["role"])}
    assert roles <= {"name_first", "name_last", "other", "eos"} and "other" in roles
    metrics = {
        n: measure_density(model, s.input_ids, final_positions=s.final_positions(), probed=s.probed())
        for n, s in by.items()
    }
    mentions = np.array([3] * 12 + [0] * 12)
    exposure = {"distinct_docs": np.zeros(24, np.int64), "subject_docs": np.zeros(24, np.int64), "mentions": mentions,
                "comentions": np.zeros(24, np.int64)}  # fmt: skip
    rows, headline, _ = density_records(1, metrics, by, exposure, np.zeros(64, np.int64), None,
                                        EndpointSpec(bin_edges=(0, 1), min_entities=5))  # fmt: skip
    ends = rows[rows["exposure"] != "all"]
    assert set(ends["exposure"]) == {"mentions"} and set(ends["role"]) == {"name_last", "pre_value"}
    nl = ends[(ends["role"] == "name_last") & (ends["estimand"] == "mean") & (ends["metric"] == "active_frac_live")]
    # every probed entity whose whole name lies inside its row (a name cut by the row's end has no name_last)
    assert 10 <= nl["n_entities"].min() <= nl["n_entities"].max() <= 12 and (nl["status"] == "ok").all()
    assert (ends.loc[ends["role"] == "pre_value", "status"] == "insufficient").all()  # no attribute values on text
    assert "L0/name_last/slope" in headline


def test_pool_rows_count_firing_over_the_first_rows_alone(model):
    """Live and dead units come from the pool (the panel's core at a whole-panel call): its counts equal a
    measurement of those rows alone, and a core of 0 rows means the whole set."""
    ids = torch.randint(0, 64, (10, 16), generator=torch.Generator().manual_seed(8))
    probed = torch.rand(10, 16, generator=torch.Generator().manual_seed(9)) < 0.7
    whole = measure_density(model, ids, batch_size=3, probed=probed, pool_rows=4)
    alone = measure_density(model, ids[:4], batch_size=3, probed=probed[:4])
    assert np.array_equal(whole.pool[0], alone.fire_counts) and whole.pool[1] == alone.n_positions
    assert whole.n_positions == int(probed.sum()) and not np.array_equal(whole.fire_counts, alone.fire_counts)
    assert np.isnan(whole.positions["L0/hoyer"][~probed.numpy()]).all()
    s = ProbeSet("panel", ids, torch.full((10,), -1), core_rows=0)
    assert s.core() is s
