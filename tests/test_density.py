"""Density probes: metrics pinned to hand-computed values, statistics, streaming, records, probe sets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from densitylab.data.packing import pack_documents
from densitylab.model import GPT
from densitylab.probes.density import (
    METRICS,
    active_frac,
    density_records,
    effective_rank,
    hoyer,
    measure_density,
    top_energy,
)
from densitylab.probes.schedule import is_scheduled
from densitylab.probes.sets import build_probe_sets
from densitylab.probes.stats import bucketize, cluster_mean_ci, cluster_ols_slope, diff_ci


def test_active_frac_counts_strictly_positive_preactivations():
    pre = torch.tensor([[-1.0, 0.0, 2.0, 3.0], [-0.0, -2.0, -1.0, 1e-9]])
    assert active_frac(pre).tolist() == [0.5, 0.25]
    post = torch.relu(pre)
    assert ((post != 0).float().mean(-1) == active_frac(pre)).all()  # ReLU: exact zeros


def test_hoyer_one_hot_flat_zero_and_known_vector():
    assert hoyer(torch.tensor([0.0, 0.0, 5.0, 0.0])).item() == pytest.approx(1.0)
    assert hoyer(torch.tensor([2.0, -2.0, 2.0, 2.0])).item() == pytest.approx(0.0, abs=1e-6)
    assert hoyer(torch.zeros(8)).item() == 1.0
    assert hoyer(torch.tensor([1.0, 1.0, 0.0, 0.0])).item() == pytest.approx((2 - math.sqrt(2)) / (2 - 1))
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


def test_bucketize():
    assert bucketize(np.array([0, 1, 2, 3, 4, 7, 8, 1000, -1])).tolist() == [0, 1, 1, 2, 2, 3, 3, 9, -1]


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


def test_cluster_ols_slope_recovers_slope_with_coverage():
    rng = np.random.default_rng(2)
    hits = 0
    for _ in range(300):
        k, m = 25, 16
        x = rng.integers(0, 10, size=k * m).astype(float)
        y = 0.5 - 0.02 * x + np.repeat(rng.normal(0, 0.05, k), m) + rng.normal(0, 0.1, k * m)
        s, lo, hi, n, kk = cluster_ols_slope(x, y, np.repeat(np.arange(k), m))
        hits += lo <= -0.02 <= hi
    assert 0.9 <= hits / 300 <= 0.99
    assert math.isnan(cluster_ols_slope(np.ones(5), np.arange(5.0), np.arange(5))[0])


def test_diff_ci():
    a = cluster_mean_ci(*_clustered(np.random.default_rng(3), mean=0.5))
    b = cluster_mean_ci(*_clustered(np.random.default_rng(4), mean=0.2))
    d, lo, hi = diff_ci(a, b)
    assert d == pytest.approx(a[0] - b[0]) and lo < d < hi and lo > 0


def test_schedule_is_log_spaced_then_periodic():
    steps = [s for s in range(0, 700) if is_scheduled(s, 150)]
    assert steps == [0, 1, 2, 4, 8, 16, 32, 64, 128, 150, 300, 450, 600]
    assert [s for s in range(10) if is_scheduled(s, 0)] == [0, 1, 2, 4, 8]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32).eval()


def test_measure_density_matches_run_with_cache_and_streams(model):
    ids = torch.randint(0, 64, (10, 16), generator=torch.Generator().manual_seed(1))
    out = measure_density(model, ids, batch_size=3)  # 4 mini-batches, the last one partial
    assert set(out) == {f"L{i}/{m}" for i in range(2) for m in METRICS}
    _, cache = model.run_with_cache(ids)
    for i in range(2):
        assert np.allclose(out[f"L{i}/active_frac"], active_frac(cache[f"blocks.{i}.mlp.hook_pre"]).numpy())
        assert np.allclose(out[f"L{i}/hoyer"], hoyer(cache[f"blocks.{i}.mlp.hook_post"]).numpy(), atol=1e-6)
        assert np.allclose(
            out[f"L{i}/eff_rank"], effective_rank(cache[f"blocks.{i}.hook_resid_post"]).numpy(), atol=1e-6
        )
        assert out[f"L{i}/top5_energy"].shape == (10, 16)
    assert all(len(p._forward_hooks) == 0 for p in model.hook_points().values())
    assert np.allclose(measure_density(model, ids, batch_size=10)["L1/hoyer"], out["L1/hoyer"], atol=1e-6)


def _sets():
    g = torch.Generator().manual_seed(0)
    docs = [torch.randint(1, 64, (int(n),), generator=g).tolist() for n in torch.randint(20, 60, (40,), generator=g)]
    import pandas as pd

    spans = pd.DataFrame(
        {"doc": [0, 3, 5, 9], "t0": [0, 2, 1, 4], "t1": [2, 4, 3, 6], "kind": ["name"] * 4, "entity": [0, 1, 0, 2]}
    )
    splits = {"train": pack_documents(docs[:30], 0, 16, token_spans=spans), "heldout": pack_documents(docs[30:], 0, 16)}
    return splits, build_probe_sets(splits, vocab_size=64, n_windows=6, seed=0, eos_id=0)


def test_probe_sets_are_drawn_as_specified():
    splits, sets = _sets()
    by = {s.name: s for s in sets}
    assert list(by) == ["seen", "heldout", "shuffled", "random"]
    for sid, row in zip(by["seen"].sample_ids.tolist(), by["seen"].input_ids):
        assert torch.equal(row, splits["train"].window(sid)[0])
    assert (by["heldout"].sample_ids == -1).all()
    assert torch.equal(by["shuffled"].input_ids.sort(1).values, by["heldout"].input_ids.sort(1).values)
    assert not torch.equal(by["shuffled"].input_ids, by["heldout"].input_ids)
    assert (by["random"].input_ids != 0).all() and by["random"].input_ids.max() < 64
    _, again = _sets()
    assert all(torch.equal(a.input_ids, b.input_ids) for a, b in zip(sets, again))  # fixed by the seed


def test_density_records_cover_everything_with_consistent_counts(model):
    _, sets = _sets()
    rng = np.random.default_rng(0)
    metrics, fam = {}, {}
    for s in sets:
        metrics[s.name] = measure_density(model, s.input_ids)
        N, T = s.input_ids.shape
        ent = np.full((N, T), -1)
        ent[:, :3] = rng.integers(0, 50, size=(N, 1))
        fam[s.name] = {
            "token": rng.integers(0, 300, size=(N, T)),
            "sequence": np.repeat(rng.integers(0, 5, size=(N, 1)), T, 1),
            "entity": ent,
        }
    rows, headline = density_records(7, metrics, fam, primary_view="token")
    assert (rows["step"] == 7).all()
    base = rows[rows["metric"].isin(METRICS)]
    for s in sets:
        positions = s.input_ids.numel()
        for view, expected in (
            ("token", positions),
            ("sequence", positions),
            ("entity", len(s.input_ids) * 3),
            ("all", positions),
        ):
            sub = base[(base["probe_set"] == s.name) & (base["view"] == view) & (base["metric"] == "active_frac")]
            assert set(sub["layer"]) == {0, 1}
            for layer in (0, 1):
                assert sub[sub["layer"] == layer]["n"].sum() == expected, (s.name, view)
    assert ((base["ci_low"] <= base["value"]) & (base["value"] <= base["ci_high"])).all()
    slope = rows[rows["metric"] == "slope"]
    assert set(slope["view"]) == {"token", "entity", "sequence"} and set(slope["layer"]) == {0, 1}
    assert {"L0/slope", "L0/slope_ci_low", "L1/gap"} <= set(headline)
    # the 'all' view mean equals the plain mean of the per-position values
    whole = base[
        (base["probe_set"] == "seen") & (base["view"] == "all") & (base["metric"] == "hoyer") & (base["layer"] == 1)
    ]
    assert whole["value"].item() == pytest.approx(metrics["seen"]["L1/hoyer"].mean(), rel=1e-5)

    from densitylab.report.density import heatmap_active_frac_seen

    fig = heatmap_active_frac_seen(rows, 7, "token")
    image = fig.axes[0].images[0].get_array()
    seen = base[(base["probe_set"] == "seen") & (base["view"] == "token") & (base["metric"] == "active_frac")]
    assert image.shape == (2, seen["bucket"].nunique())  # layer x familiarity bucket
    assert image[1, 0] == pytest.approx(seen[seen["layer"] == 1].sort_values("bucket")["value"].iloc[0])
    assert "step 7" in fig.axes[0].get_title()
    fig.clf()


def test_stop_at_layer_returns_the_residual_stream_without_lm_head(model):
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(5))
    _, cache = model.run_with_cache(ids, ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"])
    assert torch.allclose(model(ids, stop_at_layer=1), cache["blocks.0.hook_resid_post"])
    assert torch.allclose(model(ids, stop_at_layer=2), cache["blocks.1.hook_resid_post"])
    assert model(ids).shape == (2, 16, 64)
