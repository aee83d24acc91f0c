"""Modularity under ablation: hand-built models with known structure, scores, batching, records."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from densitylab.model import GPT
from densitylab.probes.modularity import (
    ablation_effects,
    components,
    modularity_records,
    modularity_score,
    modularity_summary,
    specialization,
)


def hand_built(heads_carrying: tuple[int, ...], k: float = 3.0) -> GPT:
    """1 layer, 2 heads, d=8, vocab 4. Token t embeds as one-hot e_t plus a large constant in dim 7 (so
    the LayerNorms act almost linearly on dims 0-3); attention is uniform (Q = K = 0); each head in
    ``heads_carrying`` reads (token is 1) − (token is 2) and writes ±k onto the logits of tokens 1 and
    2; the other head and the MLP write nothing."""
    torch.manual_seed(0)
    m = GPT(vocab_size=4, block_size=8, n_layer=1, n_head=2, n_embd=8, mlp_ratio=1)
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
        for ln in (m.transformer.h[0].ln_1, m.transformer.h[0].ln_2, m.transformer.ln_f):
            ln.weight.fill_(1.0)
        m.transformer.wte.weight[:, :4] = torch.eye(4)  # tied: also the unembedding
        m.transformer.wpe.weight[:, 7] = 20.0  # same for every token: LN scales stay constant
        m.transformer.ln_f.weight.fill_(10.0)
        attn = m.transformer.h[0].attn
        for h in heads_carrying:
            attn.c_attn.weight[16 + 4 * h, 1] = 1.0  # value row of head h, first dim: +[tok=1]
            attn.c_attn.weight[16 + 4 * h, 2] = -1.0  # ... −[tok=2]
            attn.c_proj.weight[1, 4 * h] = k
            attn.c_proj.weight[2, 4 * h] = -k
        m.transformer.h[0].mlp.c_fc.weight.normal_()  # active MLP units, but c_proj = 0: no output
    return m.eval()


def constant_windows(tokens: list[int], n_each: int = 2, T: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.tensor([[t] * T for t in tokens for _ in range(n_each)])
    y = torch.cat([x[:, 1:], torch.full_like(x[:, :1], -100)], 1)
    return x, y


def test_one_head_carrying_one_task_gives_a_single_nonzero_cell():
    model = hand_built(heads_carrying=(0,))
    x, y = constant_windows([0, 1, 2, 3])
    tasks = {"copy_1_or_2": (x == 1) | (x == 2), "copy_0_or_3": (x == 0) | (x == 3)}
    comps, E, base = ablation_effects(model, x, y, tasks, mlp_groups=2)
    names = [c.name for c in comps]
    assert names == ["L0.H0", "L0.H1", "L0.M0", "L0.M1"]
    assert E[0, 0] > 0.1  # ablating head 0 hurts the task it carries
    mask = np.ones_like(E, dtype=bool)
    mask[0, 0] = False
    assert np.abs(E[mask]).max() < 1e-5, E  # and nothing else anywhere
    spec = specialization(E)
    assert spec[0] == pytest.approx(1.0)
    assert modularity_summary(comps, E)["score_heads"] == pytest.approx(1.0)
    assert modularity_summary(comps, E)["components_above_eps"] == 1
    assert base["copy_1_or_2"] < base["copy_0_or_3"]


def test_components_affecting_every_task_equally_score_zero():
    model = hand_built(heads_carrying=(0, 1))
    x, y = constant_windows([1, 2])
    tasks = {"token_1": x == 1, "token_2": x == 2}
    comps, E, _ = ablation_effects(model, x, y, tasks, mlp_groups=2)
    assert (
        E[0, 0] > 0.01 and E[0, 0] == pytest.approx(E[0, 1], rel=1e-4) and E[1, 0] == pytest.approx(E[0, 0], rel=1e-4)
    )
    assert modularity_score(E) == pytest.approx(0.0, abs=1e-6)


def test_ablation_heatmap_shows_the_effect_matrix():
    from densitylab.report.modularity import ablation_heatmap

    model = hand_built(heads_carrying=(0,))
    x, y = constant_windows([0, 1, 2, 3])
    tasks = {"copy_1_or_2": (x == 1) | (x == 2), "copy_0_or_3": (x == 0) | (x == 3)}
    comps, E, _ = ablation_effects(model, x, y, tasks, mlp_groups=2)
    for step, title in ((-1, "init control"), (12, "step 12")):
        fig = ablation_heatmap(comps, E, list(tasks), step)
        ax = fig.axes[0]
        assert np.array_equal(ax.images[0].get_array(), E)  # rows = components, columns = tasks
        assert [t.get_text() for t in ax.get_yticklabels()] == ["L0.H0", "L0.H1", "L0.M0", "L0.M1"]
        assert title in ax.get_title() and ax.images[0].get_clim() == (-np.abs(E).max(), np.abs(E).max())
        fig.clf()


def test_specialization_and_score_definitions():
    E = np.array([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0], [-1.0, 0.5, 0.5], [0.0, 0.0, 0.0], [1e-5, 0.0, 0.0]])
    spec = specialization(E)
    assert spec[0] == pytest.approx(1.0) and spec[1] == pytest.approx(0.0, abs=1e-12)
    assert spec[2] == pytest.approx(1 - math.log(2) / math.log(3))  # negative effects are dropped
    assert math.isnan(spec[3])
    assert modularity_score(E, eps=1e-3) == pytest.approx(np.mean(spec[:3]))  # rows 3, 4 below eps
    assert math.isnan(modularity_score(np.zeros((3, 2))))
    with pytest.raises(ValueError):
        specialization(np.ones((2, 1)))


def test_batched_variants_equal_one_at_a_time_and_hooks_are_removed():
    torch.manual_seed(1)
    model = GPT(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32).eval()
    x = torch.randint(0, 50, (4, 16), generator=torch.Generator().manual_seed(2))
    y = torch.cat([x[:, 1:], torch.full_like(x[:, :1], -100)], 1)
    tasks = {"even": (y % 2 == 0) & (y >= 0), "odd": y % 2 == 1}
    _, E_batched, _ = ablation_effects(model, x, y, tasks, mlp_groups=4, max_rows=64)
    comps, E_single, _ = ablation_effects(model, x, y, tasks, mlp_groups=4, max_rows=1)
    assert len(comps) == 2 * 2 + 2 * 4
    assert np.allclose(E_batched, E_single, atol=1e-5)
    assert not np.allclose(E_batched, 0)
    assert all(len(p._forward_hooks) == 0 for p in model.hook_points().values())
    with pytest.raises(ValueError, match="divisor"):
        ablation_effects(model, x, y, tasks, mlp_groups=3)
    with pytest.raises(ValueError, match="no position"):
        ablation_effects(
            model, x, y, {"none": torch.zeros_like(x, dtype=torch.bool), "odd": tasks["odd"]}, mlp_groups=4
        )


def test_records_table_and_tiny_model_cost():
    torch.manual_seed(0)
    model = GPT(vocab_size=2256, block_size=128, n_layer=4, n_head=4, n_embd=128).eval()
    x = torch.randint(0, 2256, (16, 128), generator=torch.Generator().manual_seed(0))
    y = torch.cat([x[:, 1:], torch.full_like(x[:, :1], -100)], 1)
    tasks = {f"t{i}": (y % 7 == i) & (y >= 0) for i in range(7)}
    comps, E, _ = ablation_effects(model, x, y, tasks, mlp_groups=4)  # its cost: bench/throughput.py
    rows = modularity_records(5, comps, E, list(tasks))
    assert len(rows) == len(comps) * 7 == 32 * 7
    assert list(rows.columns) == ["step", "component", "kind", "layer", "index", "task", "delta_loss"]
    assert set(rows["kind"]) == {"head", "mlp"} and (rows["step"] == 5).all()
    assert [c.name for c in components(1, 2, 3)] == ["L0.H0", "L0.H1", "L0.M0", "L0.M1", "L0.M2"]


def _packed_with_spans(kinds: list[str]):
    import pandas as pd

    from densitylab.data.packing import pack_documents
    from densitylab.probes.density import ProbeSet

    docs = [list(range(1, 33)) for _ in range(4)]  # 4 docs of 32 tokens (+ EOS each)
    spans = pd.DataFrame({"doc": [0, 0, 1], "t0": [3, 10, 0], "t1": [5, 12, 2], "kind": kinds, "entity": [0, 0, 1]})
    packed = pack_documents(docs, eos_id=0, block_size=16, token_spans=spans)
    w = torch.arange(packed.n_windows - 1)
    probe = ProbeSet("heldout", torch.stack([packed.window(int(i))[0] for i in w]), torch.full((len(w),), -1), None, w)
    return packed, probe


def test_task_masks_mark_positions_that_predict_each_span():
    from densitylab.probes.sets import task_masks

    packed, probe = _packed_with_spans(["name", "birth_city", "name"])
    masks = task_masks(packed, probe)
    assert set(masks) == {"name", "birth_city"}
    # doc 0 = window 0 positions 0..15: name tokens 3-4 are predicted from positions 2-3, city 10-11 from 9-10
    assert masks["name"][0].nonzero().flatten().tolist() == [2, 3]
    assert masks["birth_city"][0].nonzero().flatten().tolist() == [9, 10]
    # doc 1 starts at stream position 33 = window 2, offset 1: its name tokens 33-34 are predicted from 0-1
    assert masks["name"][2].nonzero().flatten().tolist() == [0, 1]
    assert not any(m[:, -1].any() for m in masks.values())


def test_task_masks_for_text_use_entities_and_frequency_quartiles():
    from densitylab.probes.sets import task_masks

    packed, probe = _packed_with_spans(["name", "name", "name"])
    counts = torch.arange(64)  # token id = its exposure count
    masks = task_masks(packed, probe, counts, n_freq_buckets=4)
    assert {"entity", "non_entity", "freq_1", "freq_2", "freq_3", "freq_4"} == set(masks)
    assert torch.equal(
        masks["entity"] | masks["non_entity"], masks["freq_1"] | masks["freq_2"] | masks["freq_3"] | masks["freq_4"]
    )
    assert not (masks["entity"] & masks["non_entity"]).any()
    targets = torch.cat([probe.input_ids[:, 1:], probe.input_ids[:, -1:]], 1)
    assert targets[masks["freq_1"]].max() < targets[masks["freq_4"]].min()  # rarest quartile first
