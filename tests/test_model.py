"""Tests of the GPT model (densitylab.model): names, hooks, shapes, identities, masks, FLOPs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from densitylab.model import ACTIVATIONS, GPT, GPTConfig, HookPoint

TINY = dict(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32, mlp_ratio=4)
B, T = 3, 12

HOOK_SUFFIXES = (
    "hook_resid_pre",
    "attn.hook_z",
    "hook_attn_out",
    "hook_resid_mid",
    "mlp.hook_pre",
    "mlp.hook_post",
    "hook_mlp_out",
    "hook_resid_post",
)


def make_model(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**{**TINY, **overrides}))
    model.eval()
    return model


def make_idx(seed: int = 1, b: int = B, t: int = T, vocab: int = TINY["vocab_size"]) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (b, t), generator=g)


def expected_param_names(n_layer: int, bias: bool) -> set[str]:
    names = {"transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight"}
    if bias:
        names.add("transformer.ln_f.bias")
    for i in range(n_layer):
        for mod in ("ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj"):
            names.add(f"transformer.h.{i}.{mod}.weight")
            if bias:
                names.add(f"transformer.h.{i}.{mod}.bias")
    return names


def registered_hook_count(model: GPT) -> int:
    return sum(len(m._forward_hooks) for m in model.modules() if isinstance(m, HookPoint))


# ---------------------------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False])
def test_parameter_names_match_nanogpt_and_lm_head_is_tied(bias):
    model = make_model(bias=bias)
    names = {n for n, _ in model.named_parameters()}
    assert names == expected_param_names(2, bias)

    sd_keys = set(model.state_dict().keys())
    assert sd_keys == expected_param_names(2, bias) | {"lm_head.weight"}
    assert model.lm_head.bias is None
    sd = model.state_dict(keep_vars=True)
    assert sd["lm_head.weight"] is sd["transformer.wte.weight"]
    assert model.lm_head.weight is model.transformer.wte.weight

    # Tied for real: editing the embedding changes the output projection.
    with torch.no_grad():
        model.transformer.wte.weight[3].fill_(0.5)
    assert torch.all(model.lm_head.weight[3] == 0.5)

    # Shapes as in nanoGPT / HF GPT-2 (nn.Linear layout).
    d, V = TINY["n_embd"], TINY["vocab_size"]
    params = dict(model.named_parameters())
    assert params["transformer.wte.weight"].shape == (V, d)
    assert params["transformer.wpe.weight"].shape == (TINY["block_size"], d)
    assert params["transformer.h.0.attn.c_attn.weight"].shape == (3 * d, d)
    assert params["transformer.h.1.mlp.c_fc.weight"].shape == (4 * d, d)
    assert params["transformer.h.1.mlp.c_proj.weight"].shape == (d, 4 * d)


def test_swiglu_c_fc_holds_gate_and_up():
    model = make_model(activation="swiglu")
    d = TINY["n_embd"]
    assert model.transformer.h[0].mlp.c_fc.weight.shape == (2 * 4 * d, d)
    assert model.transformer.h[0].mlp.c_proj.weight.shape == (d, 4 * d)


def test_hook_point_names_are_transformerlens_names():
    model = make_model()
    points = model.hook_points()
    expected = {f"blocks.{i}.{s}" for i in range(2) for s in HOOK_SUFFIXES}
    assert set(points) == expected
    for name, point in points.items():
        assert isinstance(point, HookPoint)
        assert point.name == name
    # All points are distinct modules.
    assert len({id(p) for p in points.values()}) == len(points)
    # The mapping is a copy: mutating it does not affect the model.
    points.pop("blocks.0.hook_resid_pre")
    assert "blocks.0.hook_resid_pre" in model.hook_points()


# ---------------------------------------------------------------------------------------------
# Shapes and identities
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_run_with_cache_shapes(activation):
    model = make_model(activation=activation)
    cfg = model.config
    idx = make_idx()
    logits, cache = model.run_with_cache(idx)
    assert logits.shape == (B, T, cfg.vocab_size)
    assert set(cache) == set(model.hook_points())
    for i in range(cfg.n_layer):
        assert cache[f"blocks.{i}.attn.hook_z"].shape == (B, T, cfg.n_head, cfg.d_head)
        assert cache[f"blocks.{i}.mlp.hook_pre"].shape == (B, T, cfg.d_mlp)
        assert cache[f"blocks.{i}.mlp.hook_post"].shape == (B, T, cfg.d_mlp)
        for s in ("hook_resid_pre", "hook_attn_out", "hook_resid_mid", "hook_mlp_out", "hook_resid_post"):
            assert cache[f"blocks.{i}.{s}"].shape == (B, T, cfg.n_embd)
    for v in cache.values():
        assert not v.requires_grad
    # Same logits as a plain forward.
    with torch.no_grad():
        torch.testing.assert_close(logits, model(idx))


def test_run_with_cache_subset_only_records_requested():
    model = make_model()
    names = ["blocks.1.mlp.hook_post", "blocks.0.attn.hook_z"]
    _, cache = model.run_with_cache(make_idx(), names=names)
    assert set(cache) == set(names)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_residual_identities(activation):
    model = make_model(activation=activation)
    idx = make_idx()
    logits, c = model.run_with_cache(idx)
    L = model.config.n_layer
    with torch.no_grad():
        emb = model.transformer.wte(idx) + model.transformer.wpe(torch.arange(T))
        torch.testing.assert_close(c["blocks.0.hook_resid_pre"], emb)
        for i in range(L):
            blk = model.transformer.h[i]
            torch.testing.assert_close(
                c[f"blocks.{i}.hook_resid_mid"], c[f"blocks.{i}.hook_resid_pre"] + c[f"blocks.{i}.hook_attn_out"]
            )
            torch.testing.assert_close(
                c[f"blocks.{i}.hook_resid_post"], c[f"blocks.{i}.hook_resid_mid"] + c[f"blocks.{i}.hook_mlp_out"]
            )
            # attn_out is c_proj of the concatenated per-head outputs z.
            z = c[f"blocks.{i}.attn.hook_z"].reshape(B, T, -1)
            torch.testing.assert_close(c[f"blocks.{i}.hook_attn_out"], blk.attn.c_proj(z))
            # mlp_out is c_proj of hook_post.
            torch.testing.assert_close(c[f"blocks.{i}.hook_mlp_out"], blk.mlp.c_proj(c[f"blocks.{i}.mlp.hook_post"]))
            if i + 1 < L:
                torch.testing.assert_close(c[f"blocks.{i + 1}.hook_resid_pre"], c[f"blocks.{i}.hook_resid_post"])
        torch.testing.assert_close(logits, model.lm_head(model.transformer.ln_f(c[f"blocks.{L - 1}.hook_resid_post"])))
        # The attention output is not trivially zero (identities above are not vacuous).
        assert c["blocks.0.hook_attn_out"].abs().max() > 0


def test_relu_post_is_relu_of_pre_with_exact_zeros():
    model = make_model(activation="relu")
    _, c = model.run_with_cache(make_idx())
    for i in range(2):
        pre, post = c[f"blocks.{i}.mlp.hook_pre"], c[f"blocks.{i}.mlp.hook_post"]
        assert torch.equal(post, F.relu(pre))
        assert torch.equal(post == 0, pre <= 0)
        # Both signs occur, so the check above is meaningful.
        assert (pre > 0).any() and (pre < 0).any()


@pytest.mark.parametrize(
    "activation, fn",
    [
        ("relu2", lambda pre: F.relu(pre).square()),
        ("gelu", lambda pre: F.gelu(pre, approximate="tanh")),
    ],
)
def test_pointwise_activation_post_matches_pre(activation, fn):
    model = make_model(activation=activation)
    _, c = model.run_with_cache(make_idx())
    torch.testing.assert_close(c["blocks.0.mlp.hook_post"], fn(c["blocks.0.mlp.hook_pre"]))


def test_swiglu_hook_pre_is_gate():
    model = make_model(activation="swiglu")
    idx = make_idx()
    _, c = model.run_with_cache(idx)
    mlp = model.transformer.h[0].mlp
    with torch.no_grad():
        x = model.transformer.h[0].ln_2(c["blocks.0.hook_resid_mid"])
        gate, up = mlp.c_fc(x).chunk(2, dim=-1)
    torch.testing.assert_close(c["blocks.0.mlp.hook_pre"], gate)
    torch.testing.assert_close(c["blocks.0.mlp.hook_post"], F.silu(gate) * up)


# ---------------------------------------------------------------------------------------------
# Causality and head masks
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("t", [0, 5, T - 1])
def test_causality(t):
    model = make_model()
    idx = make_idx()
    idx2 = idx.clone()
    idx2[:, t] = (idx2[:, t] + 7) % TINY["vocab_size"]
    with torch.no_grad():
        a, b = model(idx), model(idx2)
    torch.testing.assert_close(a[:, :t], b[:, :t], rtol=0, atol=1e-6)
    # The changed position itself (and so the future) does see the change.
    assert (a[:, t] - b[:, t]).abs().max() > 1e-4


def test_head_mask_all_ones_is_identity():
    model = make_model()
    idx = make_idx()
    L, H = model.config.n_layer, model.config.n_head
    with torch.no_grad():
        ref = model(idx)
        torch.testing.assert_close(model(idx, head_mask=torch.ones(L, H)), ref, rtol=0, atol=0)
        torch.testing.assert_close(model(idx, head_mask=torch.ones(B, L, H)), ref, rtol=0, atol=0)


def _zero_head_hook(h):
    def fn(module, inp, out):
        out = out.clone()
        out[..., h, :] = 0
        return out

    return fn


@pytest.mark.parametrize("layer, head", [(0, 0), (0, 1), (1, 1)])
def test_head_mask_zero_equals_hook_z_ablation(layer, head):
    model = make_model()
    idx = make_idx()
    L, H = model.config.n_layer, model.config.n_head
    mask = torch.ones(L, H)
    mask[layer, head] = 0
    with torch.no_grad():
        ref = model(idx)
        masked = model(idx, head_mask=mask)
        with model.hooks([(f"blocks.{layer}.attn.hook_z", _zero_head_hook(head))]):
            hooked = model(idx)
    torch.testing.assert_close(masked, hooked)
    assert (masked - ref).abs().max() > 1e-5
    # The cache sees the masked head as zeros, the other head untouched.
    _, c = model.run_with_cache(idx, names=[f"blocks.{layer}.attn.hook_z"])
    cm = {}

    def save(m, i, o):
        cm["z"] = o.detach()

    with torch.no_grad(), model.hooks([(f"blocks.{layer}.attn.hook_z", save)]):
        model(idx, head_mask=mask)
    assert torch.all(cm["z"][..., head, :] == 0)
    other = 1 - head
    torch.testing.assert_close(cm["z"][..., other, :], c[f"blocks.{layer}.attn.hook_z"][..., other, :])


def test_per_example_head_mask():
    model = make_model()
    idx = make_idx()
    L, H = model.config.n_layer, model.config.n_head
    mask_a = torch.ones(L, H)
    mask_a[0, 1] = 0
    mask_b = torch.ones(L, H)
    mask_b[1, 0] = 0
    per_example = torch.stack([torch.ones(L, H), mask_a, mask_b])  # (B, L, H)
    with torch.no_grad():
        ref = model(idx)
        out = model(idx, head_mask=per_example)
        out_a = model(idx, head_mask=mask_a)
        out_b = model(idx, head_mask=mask_b)
    torch.testing.assert_close(out[0], ref[0])
    torch.testing.assert_close(out[1], out_a[1])
    torch.testing.assert_close(out[2], out_b[2])
    assert (out[1] - ref[1]).abs().max() > 1e-5
    assert (out[2] - ref[2]).abs().max() > 1e-5
    assert (out[1] - out_b[1]).abs().max() > 1e-5


# ---------------------------------------------------------------------------------------------
# Hook management
# ---------------------------------------------------------------------------------------------


def test_hooks_removed_after_context_and_run_with_cache():
    model = make_model()
    idx = make_idx()
    calls = []
    with model.hooks([("blocks.0.hook_resid_post", lambda m, i, o: calls.append(m.name))]):
        assert registered_hook_count(model) == 1
        with torch.no_grad():
            model(idx)
    assert calls == ["blocks.0.hook_resid_post"]
    assert registered_hook_count(model) == 0
    with torch.no_grad():
        model(idx)
    assert calls == ["blocks.0.hook_resid_post"]  # not called after removal

    model.run_with_cache(idx)
    assert registered_hook_count(model) == 0


def test_hooks_removed_when_body_raises():
    model = make_model()
    with pytest.raises(RuntimeError, match="boom"):
        with model.hooks([(n, lambda m, i, o: None) for n in model.hook_points()]):
            assert registered_hook_count(model) == len(model.hook_points())
            raise RuntimeError("boom")
    assert registered_hook_count(model) == 0


def test_hooks_removed_when_hook_fn_raises_in_run():
    model = make_model()

    def bad(m, i, o):
        raise ValueError("bad hook")

    with pytest.raises(ValueError, match="bad hook"):
        with model.hooks([("blocks.1.mlp.hook_pre", bad)]):
            model(make_idx())
    assert registered_hook_count(model) == 0


def test_unknown_hook_name_raises_keyerror_and_cleans_up():
    model = make_model()
    with pytest.raises(KeyError, match="blocks.0.hook_nonexistent"):
        with model.hooks(
            [("blocks.0.hook_resid_pre", lambda m, i, o: None), ("blocks.0.hook_nonexistent", lambda m, i, o: None)]
        ):
            pass
    assert registered_hook_count(model) == 0
    with pytest.raises(KeyError, match="blocks.9.hook_z"):
        model.run_with_cache(make_idx(), names=["blocks.9.hook_z"])
    assert registered_hook_count(model) == 0


def test_forward_hook_returning_tensor_edits_activation():
    model = make_model()
    idx = make_idx()
    with torch.no_grad():
        ref = model(idx)
        with model.hooks([("blocks.0.mlp.hook_post", lambda m, i, o: None)]):
            unchanged = model(idx)
        with model.hooks([("blocks.0.mlp.hook_post", lambda m, i, o: torch.zeros_like(o))]):
            ablated = model(idx)
    torch.testing.assert_close(unchanged, ref, rtol=0, atol=0)
    assert (ablated - ref).abs().max() > 1e-5

    # The edit is exactly what downstream sees: mlp_out becomes the c_proj bias only.
    seen = {}
    with (
        torch.no_grad(),
        model.hooks(
            [
                ("blocks.0.mlp.hook_post", lambda m, i, o: torch.zeros_like(o)),
                ("blocks.0.hook_mlp_out", lambda m, i, o: seen.setdefault("out", o.detach())),
            ]
        ),
    ):
        model(idx)
    bias = model.transformer.h[0].mlp.c_proj.bias
    torch.testing.assert_close(seen["out"], bias.expand_as(seen["out"]))


# ---------------------------------------------------------------------------------------------
# FLOPs, config validation, learning
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides", [{}, {"bias": False}, {"activation": "swiglu", "n_head": 4}])
def test_flops_per_token(overrides):
    model = make_model(**overrides)
    cfg = model.config
    n = sum(p.numel() for name, p in model.named_parameters() if name != "transformer.wpe.weight")
    assert model.num_params() == n
    assert model.num_params(non_embedding=False) == n + cfg.block_size * cfg.n_embd
    expected = 6 * n + 12 * cfg.n_layer * cfg.n_head * cfg.d_head * cfg.block_size
    assert model.flops_per_token() == expected
    assert model.flops_per_token(seq_len=8) == 6 * n + 12 * cfg.n_layer * cfg.n_head * cfg.d_head * 8


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"n_embd": 30, "n_head": 4}, "n_head"),
        ({"activation": "tanh"}, "activation"),
        ({"n_layer": 0}, "n_layer"),
        ({"n_head": 0}, "n_head"),
        ({"vocab_size": 0}, "vocab_size"),
        ({"block_size": -1}, "block_size"),
        ({"dropout": 1.0}, "dropout"),
    ],
)
def test_bad_config_raises_valueerror_naming_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        GPTConfig(**{**TINY, **overrides})
    with pytest.raises(ValueError, match=field):
        GPT(**{**TINY, **overrides})


def test_sequence_longer_than_block_size_raises():
    model = make_model()
    with pytest.raises(ValueError, match="block_size"):
        model(make_idx(t=TINY["block_size"] + 1))
    # Exactly block_size is fine.
    with torch.no_grad():
        assert model(make_idx(t=TINY["block_size"])).shape == (B, TINY["block_size"], TINY["vocab_size"])


def test_tiny_model_learns_repeating_sequence():
    torch.manual_seed(0)
    model = GPT(GPTConfig(**{**TINY, "block_size": 32}))
    model.train()
    pattern = torch.tensor([5, 17, 3, 42, 9, 11, 60, 2])
    seq = pattern.repeat(5)[:33]
    x, y = seq[:-1].unsqueeze(0), seq[1:].unsqueeze(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    with torch.no_grad():
        initial = F.cross_entropy(model(x).view(-1, TINY["vocab_size"]), y.view(-1)).item()
    for _ in range(200):
        loss = F.cross_entropy(model(x).view(-1, TINY["vocab_size"]), y.view(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        logits = model(x)
        final = F.cross_entropy(logits.view(-1, TINY["vocab_size"]), y.view(-1)).item()
    assert initial > 3.0  # ~ln(64) at init
    assert final < 0.05, final
    # After one period the sequence is fully predictable: argmax is right everywhere past the first token.
    assert torch.equal(logits[0, 1:].argmax(-1), y[0, 1:])
