"""Modularity under ablation: hand-built models with known structure (heads, planted MLP modules), v1 and v2
scores, the permutation null, batching, records, the callback's schedule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from densitylab.model import GPT
from densitylab.probes.modularity import (
    Component,
    ablation_effects,
    components,
    measure_modularity,
    modularity_records,
    modularity_score,
    modularity_summary,
    specialization,
    v2_record,
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


# ---------------------------------------------------------------------------------------------- v1 unchanged
def _v1_reference(model, x, y, task_masks, mlp_groups):
    """The v1 sweep as it was before the batched engine: full forwards with hook_z / hook_post replaced by
    their means over all positions, one component at a time (the definition v1 keeps)."""
    import torch.nn.functional as F

    L, H, dm = model.config.n_layer, model.config.n_head, model.config.d_mlp
    means = {}

    def record(module, inp, out):
        means[module.name] = out.float().mean(dim=(0, 1))

    names = [f"blocks.{l}.attn.hook_z" for l in range(L)] + [f"blocks.{l}.mlp.hook_post" for l in range(L)]

    def loss(logits):
        return F.cross_entropy(logits.transpose(1, 2), y, ignore_index=-100, reduction="none")

    with torch.no_grad(), model.hooks([(n, record) for n in names]):
        base = loss(model(x))
    size = dm // mlp_groups
    rows = []
    for c in components(L, H, mlp_groups):
        if c.kind == "head":
            name = f"blocks.{c.layer}.attn.hook_z"

            def fn(module, inp, z, c=c, name=name):
                z = z.clone()
                z[:, :, c.index] = means[name][c.index]
                return z
        else:
            name = f"blocks.{c.layer}.mlp.hook_post"

            def fn(module, inp, h, c=c, name=name):
                h = h.clone()
                sl = slice(c.index * size, (c.index + 1) * size)
                h[..., sl] = means[name][sl]
                return h

        with torch.no_grad(), model.hooks([(name, fn)]):
            ablated = loss(model(x))
        rows.append([float(ablated[m & (y >= 0)].mean() - base[m & (y >= 0)].mean()) for m in task_masks.values()])
    return np.array(rows)


def _random_case(seed: int = 1, n_layer: int = 2):
    torch.manual_seed(seed)
    model = GPT(vocab_size=50, block_size=16, n_layer=n_layer, n_head=2, n_embd=32).eval()
    x = torch.randint(0, 50, (4, 16), generator=torch.Generator().manual_seed(seed + 1))
    y = torch.cat([x[:, 1:], torch.full_like(x[:, :1], -100)], 1)
    return model, x, y


def test_v1_equals_the_one_component_at_a_time_reference_and_its_recorded_score():
    model, x, y = _random_case()
    tasks = {"even": (y % 2 == 0) & (y >= 0), "odd": y % 2 == 1}
    comps, E, base = ablation_effects(model, x, y, tasks, mlp_groups=4, max_rows=24)
    assert np.allclose(E, _v1_reference(model, x, y, tasks, 4), atol=2e-6)
    # recorded with the implementation before v2 (full forwards, float32 means): the definition is unchanged
    assert E[4, 0] == pytest.approx(-5.1674842834e-03, abs=2e-6) and E[6, 1] == pytest.approx(-5.0232e-03, abs=2e-6)
    assert base == pytest.approx({"even": 3.921725273132324, "odd": 3.961548089981079}, abs=1e-5)
    s = modularity_summary(comps, E)
    assert s["score"] == pytest.approx(0.81012, abs=1e-3) and s["score_mlp"] == 1.0
    assert s["score_heads"] == pytest.approx(0.5253, abs=1e-3) and s["components_above_eps"] == 5


def test_sweep_starting_at_the_ablated_layer_equals_full_forwards_with_hooks():
    from densitylab.probes.modularity import ablation_sweep

    model, x, y = _random_case(seed=3, n_layer=3)
    model.transformer.wte.weight.data.mul_(20)  # larger effects than the 0.02 init gives
    tasks = {"a": (y < 20) & (y >= 0), "b": y >= 20}
    g = torch.Generator().manual_seed(0)
    variants = [(Component("head", l, 0), torch.tensor([True, True])) for l in range(3)]
    variants += [(Component("mlp", l, i), torch.rand(128, generator=g) < 0.3) for l in range(3) for i in range(2)]
    sweep = ablation_sweep(model, x, y, tasks, variants, max_rows=8)
    import torch.nn.functional as F

    means = {}

    def record(module, inp, out):
        means[module.name] = out.mean(dim=(0, 1))

    names = [n for l in range(3) for n in (f"blocks.{l}.attn.hook_z", f"blocks.{l}.mlp.hook_post")]
    with torch.no_grad(), model.hooks([(n, record) for n in names]):
        base = F.cross_entropy(model(x).transpose(1, 2), y, ignore_index=-100, reduction="none")
    scored = (y >= 0) & ((y < 20) | (y >= 20))
    assert np.allclose(sweep.base, base[scored].numpy(), atol=1e-6)
    for i, (c, m) in enumerate(variants):
        name = f"blocks.{c.layer}.{'attn.hook_z' if c.kind == 'head' else 'mlp.hook_post'}"

        def fn(module, inp, a, m=m, name=name, kind=c.kind):
            mm = m[:, None] if kind == "head" else m
            return torch.where(mm, means[name], a)

        with torch.no_grad(), model.hooks([(name, fn)]):
            ref = F.cross_entropy(model(x).transpose(1, 2), y, ignore_index=-100, reduction="none")[scored]
        assert np.allclose(sweep.ablated[i], ref.numpy(), atol=1e-5), c
    assert not np.allclose(sweep.delta, 0, atol=1e-3)
    assert all(len(p._forward_hooks) == 0 for p in model.hook_points().values())
    with pytest.raises(ValueError, match="bool mask"):
        ablation_sweep(model, x, y, tasks, [(Component("mlp", 0, 0), torch.ones(5, dtype=torch.bool))])


# ---------------------------------------------------------------------------------------------- v2
def planted(n_class: int = 3, per_class: int = 3, n_embd: int = 16, k: float = 4.0) -> GPT:
    """1 layer, attention writing nothing; MLP unit j (j < V = n_class·per_class) fires (ReLU output 1) on input
    token j only and raises the logit of token j's successor (the next token of its class, cyclically) by
    about k: the units of class c are necessary for the positions of class c and nothing else; units >= V
    are dead."""
    V = n_class * per_class
    torch.manual_seed(0)
    m = GPT(vocab_size=V, block_size=8, n_layer=1, n_head=2, n_embd=n_embd, mlp_ratio=4, bias=False)
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
        blk = m.transformer.h[0]
        for ln in (blk.ln_1, blk.ln_2, m.transformer.ln_f):
            ln.weight.fill_(1.0)
        m.transformer.wte.weight[:, :V] = torch.eye(V)  # tied: also the unembedding
        m.transformer.wpe.weight[:, n_embd - 1] = 20.0
        z = blk.ln_2(m.transformer.wte.weight + m.transformer.wpe.weight[0])  # (V, d): what the MLP reads
        for j in range(V):
            w = z[j] - z.mean(0)
            pre = z @ w
            other = pre[torch.arange(V) != j].max()
            scale = 1.0 / (pre[j] - other)
            blk.mlp.c_fc.weight[j] = scale * w
            # the constant dimension carries the threshold: pre-activation 1 at token j, <= 0 elsewhere
            blk.mlp.c_fc.weight[j, n_embd - 1] += -scale * other / z[j, n_embd - 1]
            succ = (j // per_class) * per_class + (j % per_class + 1) % per_class
            blk.mlp.c_proj.weight[succ, j] = k
        m.transformer.ln_f.weight.fill_(10.0)
    return m.eval()


def class_windows(n_class: int = 3, per_class: int = 3, reps: int = 1, T: int = 8):
    """Windows following the planted rule (x_{t+1} = successor of x_t), ``reps`` per start token; tasks =
    the class of the input token (= of the target)."""
    rows = []
    for _ in range(reps):
        for c in range(n_class):
            for s in range(per_class):
                rows.append([c * per_class + (s + t) % per_class for t in range(T + 1)])
    w = torch.tensor(rows)
    x, y = w[:, :-1], w[:, 1:].clone()
    tasks = {f"class_{c}": (x // per_class) == c for c in range(n_class)}
    return x, y, tasks


def test_planted_modules_score_near_one_and_far_above_their_permutation_null():
    from densitylab.probes.modularity import mlp_attribution, modularity_v2

    model = planted()
    x, y, tasks = class_windows(reps=2)
    fit = class_windows(reps=1)
    r = modularity_v2(model, x, y, tasks, fit=fit, n_perm=200, seed=0)
    assert r.tasks == ["class_0", "class_1", "class_2"]
    # the grouping recovered the planted modules: units 3c..3c+2 in group c, the dead units in `rest`
    assert r.groups[0, :9].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2] and (r.groups[0, 9:] == 3).all()
    names = [c.name for c in r.components]
    assert names == ["L0.H0", "L0.H1", "L0.M[class_0]", "L0.M[class_1]", "L0.M[class_2]", "L0.M[rest]"]
    En = r.effects_norm
    # heads and dead units do nothing: their effect is float32 rounding of the loss (~1e-7 nats, which kernel
    # a batch shape selects varies), four orders of magnitude below a module's 2.5 nats
    assert np.abs(r.effects[[0, 1, 5]]).max() < 1e-5 and np.abs(En[[0, 1, 5]]).max() < 1e-2
    assert (np.diag(En[2:5]) > 1.0).all()  # ablating a module more than doubles its task's loss
    assert (En[2:5] - np.diag(np.diag(En[2:5]))).max() < 0.05 * np.diag(En[2:5]).min()
    s = r.summary()
    assert s["score_v2"] > 0.9 and s["score_v2_mlp"] == pytest.approx(s["score_v2"]) and math.isnan(s["score_v2_heads"])
    assert s["null_hi"] < 0.2 and s["excess"] > 0.7 and s["p_perm"] == pytest.approx(1 / 201)
    assert s["n_components"] == 6 and s["n_mlp_groups"] == 4 and s["n_tasks"] == 3 and s["n_perm"] == 200
    assert s["n_windows"] == 18 and s["n_fit_windows"] == 9
    # v1 on the same model splits the 64 units into 2 contiguous blocks: block 0 holds every module, so its
    # ablation hurts all three tasks and v1 sees no modularity
    _, E1, _ = ablation_effects(model, x, y, tasks, mlp_groups=2)
    assert modularity_score(E1) < 0.1
    # nothing flows between positions here: the one-backward attribution equals the per-task one
    a_pos, b_pos = mlp_attribution(model, *fit, mode="position")
    a_task, b_task = mlp_attribution(model, *fit, mode="task")
    assert np.allclose(a_pos, a_task, atol=1e-6) and np.allclose(b_pos, b_task)
    assert modularity_v2(model, x, y, tasks, fit=fit, n_perm=50, attribution="task").score == pytest.approx(r.score)


def test_random_weights_on_content_free_tasks_score_at_the_null():
    from densitylab.probes.modularity import modularity_v2

    def windows(seed):
        g = torch.Generator().manual_seed(seed)
        x = torch.randint(0, 50, (8, 16), generator=g)
        y = torch.cat([x[:, 1:], torch.full_like(x[:, :1], -100)], 1)
        label = torch.randint(0, 3, x.shape, generator=g)  # tasks: random positions, unrelated to the content
        return x, y, {f"t{k}": (label == k) & (y >= 0) for k in range(3)}

    torch.manual_seed(5)
    model = GPT(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32).eval()
    r = modularity_v2(model, *windows(10), fit=windows(11), n_perm=300, seed=0)
    s = r.summary()
    assert s["p_perm"] > 0.1 and abs(s["excess"]) < 2.5 * s["null_sd"]
    assert s["null_lo"] < s["score_v2"] < s["null_hi"]
    assert r.summary() == modularity_v2(model, *windows(10), fit=windows(11), n_perm=300, seed=0).summary()


def test_score_v2_definition_and_its_invariance_to_a_tasks_loss_scale():
    from densitylab.probes.modularity import normalised_effects, score_v2, weighted_specialization

    En = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [-1.0, 0.2, 0.0], [0.0, 0.0, 0.0]])
    w = np.array([1.0, 1.5, 0.2, 0.0])
    spec = np.array([1.0, 0.0, 1.0, 0.0])  # row 2: one positive effect, the negative one dropped
    assert weighted_specialization(En) == pytest.approx((w * spec).sum() / w.sum())
    assert math.isnan(weighted_specialization(np.zeros((2, 3))))
    assert weighted_specialization(np.stack([En, En[::-1]])) == pytest.approx([1.2 / 2.7] * 2)
    with pytest.raises(ValueError, match="2 tasks"):
        weighted_specialization(np.ones((2, 1)))
    assert np.allclose(normalised_effects(np.ones((2, 2)), np.array([2.0, 0.5])), [[0.5, 2.0], [0.5, 2.0]])

    rng = np.random.default_rng(0)
    N, C = 60, 5
    base = rng.uniform(1.0, 3.0, N)
    delta = rng.exponential(0.2, (C, N)) * rng.integers(0, 2, (C, 1))
    label = rng.integers(0, 3, N)
    M = np.eye(3, dtype=bool)[label]
    scale = np.where(label == 1, 7.0, 1.0)  # task 1 is 7 times harder: its losses and effects scale alike
    assert score_v2(delta * scale, base * scale, M) == pytest.approx(score_v2(delta, base, M), rel=1e-12)
    n = M.sum(0)
    E, E7 = (delta @ M) / n, ((delta * scale) @ M) / n
    assert modularity_score(E7) != pytest.approx(modularity_score(E), abs=1e-3)  # v1's raw Δloss is not invariant


def test_permutation_null_distribution_and_the_p_value_counting_ties():
    from densitylab.probes.modularity import ModularityV2, permutation_null

    rng = np.random.default_rng(0)
    M = np.zeros((10, 2), dtype=bool)
    M[:3, 0] = M[3:, 1] = True
    base = np.ones(10)
    delta = np.zeros((1, 10))
    delta[0, :3] = 1.0  # one component hurting task 0 only: score 1
    null = permutation_null(delta, base, M, 500, rng, chunk=7)
    assert null.shape == (500,) and (null <= 1 + 1e-12).all()
    # a draw leaving the three hurt positions in one task scores 1 again: P = (C(3,3) + C(7,3)) / C(10,3) = 0.3
    assert abs((null > 1 - 1e-9).mean() - 0.3) < 0.06 and len(permutation_null(delta, base, M, 0, rng)) == 0
    r = ModularityV2(1.0, 1.0, math.nan, np.array([1.0, 0.5, 0.2]), [Component("head", 0, 0)], np.zeros((1, 2)),
                     np.ones(2), np.zeros((1, 4), dtype=int), ["a", "b"], 4, 4)  # fmt: skip
    s = r.summary()
    assert s["p_perm"] == pytest.approx(2 / 4) and s["excess"] == pytest.approx(1 - 1.7 / 3)
    assert s["null_lo"] == pytest.approx(np.quantile([1.0, 0.5, 0.2], 0.025))
    r.null = np.zeros(0)
    assert math.isnan(r.summary()["p_perm"]) and math.isnan(r.summary()["null_mean"])


def test_position_attribution_totals_equal_the_per_task_ones_and_leave_no_grad():
    from densitylab.probes.modularity import attribution_groups, mlp_attribution

    model, x, y = _random_case(seed=7)
    model.transformer.wte.weight.data.mul_(20)
    tasks = {"even": (y % 2 == 0) & (y >= 0), "odd": y % 2 == 1}  # disjoint, covering every target
    a_pos, base = mlp_attribution(model, x, y, tasks, mode="position")
    a_task, base_t = mlp_attribution(model, x, y, tasks, mode="task")
    n = np.array([int(m.sum()) for m in tasks.values()])
    assert a_pos.shape == (2, 128, 2) and np.allclose(base, base_t)
    assert np.allclose((a_pos * n).sum(-1), (a_task * n).sum(-1), atol=1e-5)  # same total per unit
    assert np.abs(a_pos[0] - a_task[0]).max() > 1e-6  # but layer 1's attention moves some of it between tasks
    assert np.abs(a_pos[-1] - a_task[-1]).max() < 1e-8  # the last layer: nothing flows between positions
    assert all(p.grad is None for p in model.parameters())
    assert all(len(p._forward_hooks) == 0 for p in model.hook_points().values())
    groups = attribution_groups(a_pos, base)
    rel = a_pos / base
    assert ((groups == 2) == (rel.max(-1) <= 0)).all()
    assert (groups[groups < 2] == rel.argmax(-1)[groups < 2]).all()
    with pytest.raises(ValueError, match="attribution mode"):
        mlp_attribution(model, x, y, tasks, mode="exact")


def test_v1_and_v2_share_one_sweep_and_v2_records_have_the_columns():
    import pandas as pd

    from densitylab.probes.modularity import V2_COLUMNS, modularity_v2

    model = planted()
    x, y, tasks = class_windows(reps=2)
    fit = class_windows()
    v1, v2 = measure_modularity(model, x, y, tasks, 2, fit=fit, n_perm=20, seed=3)
    comps, E, base = ablation_effects(model, x, y, tasks, mlp_groups=2)
    assert [c.name for c in v1[0]] == [c.name for c in comps] and np.allclose(v1[1], E) and v1[2] == base
    alone = modularity_v2(model, x, y, tasks, fit=fit, n_perm=20, seed=3)
    pd.testing.assert_frame_equal(v2_record(0, alone), v2_record(0, v2))  # NaN score_v2_heads: no head acts
    assert np.array_equal(alone.null, v2.null)
    row = v2_record(12, v2)
    assert list(row.columns) == V2_COLUMNS and row["step"].tolist() == [12] and len(row) == 1
    assert (
        measure_modularity(model, x, y, tasks, 2)[1] is None and measure_modularity(model, x, y, tasks, None)[0] is None
    )
    with pytest.raises(ValueError, match="at least 2 tasks"):
        modularity_v2(model, x, y, {"class_0": tasks["class_0"]}, fit=fit)


def test_callback_schedules_v2_at_step_0_and_the_end_and_reuses_the_control_at_step_0(tmp_path):
    from types import SimpleNamespace

    import pandas as pd

    from densitylab.callbacks import ModularityCallback

    class Log:
        def __init__(self):
            self.calls = []

        def log_metrics(self, metrics, step=None):
            self.calls.append((step, dict(metrics)))

        def save(self):
            pass

    from densitylab.data.packing import pack_documents

    g = np.random.default_rng(0)
    docs = [g.integers(1, 40, 20).tolist() for _ in range(12)]  # 12 docs of 20 tokens (+ EOS): 15 windows
    spans = pd.DataFrame(
        {"doc": np.repeat(np.arange(12), 2), "t0": [2, 9] * 12, "t1": [5, 12] * 12,
         "kind": ["name", "birth_city"] * 12, "entity": np.repeat(np.arange(12), 2)}
    )  # fmt: skip
    heldout = pack_documents(docs, eos_id=0, block_size=16, token_spans=spans)
    dm = SimpleNamespace(splits={"heldout": heldout, "train": heldout})

    def module():
        torch.manual_seed(4)  # the twin's seed: step 0 has the control's weights
        return SimpleNamespace(model=GPT(vocab_size=40, block_size=16, n_layer=1, n_head=2, n_embd=16),
                               device=torch.device("cpu"))  # fmt: skip

    def run(steps, max_steps, out):
        cb = ModularityCallback(str(out), every_n_steps=3, windows=3, fit_windows=3, n_perm=30, seed=4)
        log = Log()
        trainer = SimpleNamespace(global_step=0, current_epoch=0, is_global_zero=True, world_size=1,
                                  loggers=[log], datamodule=dm, max_steps=max_steps)  # fmt: skip
        mod = module()
        cb.on_fit_start(trainer, mod)
        cb.on_train_start(trainer, mod)
        for s in steps:
            trainer.global_step = s
            cb.on_train_batch_end(trainer, mod, None, None, 0)
        cb.on_train_end(trainer, mod)
        return cb, log

    cb, log = run(range(1, 7), 6, tmp_path / "a")
    v1 = pd.read_parquet(tmp_path / "a" / "probes" / "modularity.parquet")
    v2 = pd.read_parquet(tmp_path / "a" / "probes" / "modularity_v2.parquet")
    assert sorted(v1["step"].unique()) == [-1, 0, 3, 6] and v2["step"].tolist() == [-1, 0, 6]
    a, b = v1[v1["step"] == -1].drop(columns="step"), v1[v1["step"] == 0].drop(columns="step")
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True))  # the control, reused
    assert v2.drop(columns="step").iloc[0].equals(v2.drop(columns="step").iloc[1])
    assert v2["n_windows"].tolist() == [3, 3, 3] and v2["n_fit_windows"].tolist() == [3, 3, 3]
    assert not set(cb.probe_set.window_ids.tolist()) & set(cb.fit_window_ids.tolist())  # disjoint windows
    logged = {s: m for s, m in log.calls}
    assert set(logged) == {0, 3, 6}
    for s in (0, 6):
        assert {"modularity/score_v1", "modularity/score_v2", "modularity/null_mean", "modularity/excess",
                "modularity/p_perm"} <= set(logged[s])  # fmt: skip
        assert logged[s]["modularity/score_v2"] == pytest.approx(v2.set_index("step").loc[s, "score_v2"])
    assert "modularity/score_v2" not in logged[3] and "modularity/score" not in logged[3]
    assert "modularity/score_v1" in logged[3] and "modularity/score_minus_control" in logged[3]
    summary = cb.summary_metrics()
    for k in ("score_v1", "control_score_v1", "score_v2", "control_score_v2", "excess", "p_perm"):
        assert f"modularity/{k}" in summary, k
    assert cb.calls == 3 and summary["perf/modularity_control_seconds"] > 0  # 0 (reused, no sweep), 3, 6

    # a run stopping at a periodic step before max_steps: v2 alone at the end, no second v1 row at that step
    cb, log = run(range(1, 7), 100, tmp_path / "b")
    v1 = pd.read_parquet(tmp_path / "b" / "probes" / "modularity.parquet")
    v2 = pd.read_parquet(tmp_path / "b" / "probes" / "modularity_v2.parquet")
    assert v2["step"].tolist() == [-1, 0, 6] and (v1["step"] == 6).sum() == (v1["step"] == 3).sum()
    assert "modularity/score_v2" in log.calls[-1][1] and "modularity/score_v1" not in log.calls[-1][1]

    with pytest.raises(ValueError, match="attribution"):
        ModularityCallback(attribution="exact", seed=0)
    off = ModularityCallback(str(tmp_path / "c"), every_n_steps=3, windows=2, v2_every_n_steps=None, seed=4)
    assert not off.probe_at_start and not off.v2_on


def test_report_table_and_plot_show_v2_beside_v1(tmp_path):
    import pandas as pd

    from densitylab.probes.modularity import V2_COLUMNS
    from densitylab.report.modularity import modularity_table, plot_modularity

    model = planted()
    x, y, tasks = class_windows(reps=2)
    rows, v2rows = [], []
    for step in (-1, 0, 5):
        (comps, E, _), v2 = measure_modularity(model, x, y, tasks, 2, fit=class_windows(), n_perm=20)
        rows.append(modularity_records(step, comps, E, list(tasks)))
        if step != 5:
            v2rows.append(v2_record(step, v2))
    (tmp_path / "probes").mkdir()
    pd.concat(rows).to_parquet(tmp_path / "probes" / "modularity.parquet")
    t = modularity_table(tmp_path)  # no v2 table yet (v2 off, an older run): v1 only, NaN v2 columns
    assert t["step"].tolist() == [-1, 0, 5] and t["score_v2"].isna().all()
    assert plot_modularity(tmp_path).stat().st_size > 10_000
    pd.concat(v2rows).to_parquet(tmp_path / "probes" / "modularity_v2.parquet")
    t = modularity_table(tmp_path)
    assert list(t.columns) == ["step", "score_v1", "score_heads", "score_mlp", "score_v2", "null_mean", "null_lo",
                               "null_hi", "excess", "p_perm"]  # fmt: skip
    assert t["score_v2"].notna().tolist() == [True, True, False] and (t["score_v2"].dropna() > 0.9).all()
    assert t["score_v1"].notna().all() and set(V2_COLUMNS) >= {"excess", "p_perm"}
    assert plot_modularity(tmp_path, tmp_path / "p.png").stat().st_size > 10_000
