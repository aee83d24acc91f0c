"""Sun et al.'s ignore-k (``model.ignore_topk``): after each optimizer step the top k% largest updates of each
parameter tensor are undone, the optimizer state is left as the step computed it, and off costs nothing."""

from __future__ import annotations

import functools
import math

import lightning as L
import pytest
import torch

import densitylab.lit as lit_module
from densitylab.errors import ConfigError
from densitylab.lit import LitGPT, check_ignore_topk, ignore_count
from densitylab.model import GPT

VOCAB = 31
TINY = {"vocab_size": VOCAB, "block_size": 16, "n_layer": 1, "n_head": 2, "n_embd": 16, "mlp_ratio": 2}


def _lit(ignore_topk, optimizer=None, seed: int = 0) -> LitGPT:
    opt = optimizer or functools.partial(torch.optim.SGD, lr=1.0, weight_decay=0.0)
    lit = LitGPT(functools.partial(GPT, **TINY), opt, None, compile=False, init_seed=seed, ignore_topk=ignore_topk)
    lit.configure_model()
    return lit


def _params(lit: LitGPT) -> list[torch.nn.Parameter]:
    """The distinct parameters, in optimizer order."""
    return list({id(p): p for g in lit.configure_optimizers().param_groups for p in g["params"]}.values())


def _integer_problem(lit: LitGPT, seed: int = 1) -> list[torch.Tensor]:
    """Set every parameter to small integers and return gradients whose entries are distinct integers with random
    signs: with SGD at lr=1 each realised update is exactly ``-grad`` and the top-k by |update| is unambiguous."""
    gen = torch.Generator().manual_seed(seed)
    grads = []
    with torch.no_grad():
        for p in lit.model.parameters():
            p.copy_(torch.randint(-50, 50, p.shape, generator=gen).float())
            mags = torch.randperm(p.numel(), generator=gen).float() + 1
            signs = torch.randint(0, 2, (p.numel(),), generator=gen).float() * 2 - 1
            grads.append((mags * signs).view(p.shape))
    return grads


def _closure(params, grads, calls: list) -> callable:
    def closure():
        calls.append(1)
        for p, g in zip(params, grads):
            p.grad = g.clone()
        return torch.tensor(0.0)

    return closure


def _step(lit: LitGPT, opt, grads_by_id: dict[int, torch.Tensor]) -> int:
    """One ``lit.optimizer_step`` with a closure that sets the given gradients; returns the closure's calls."""
    calls: list = []
    params = [p for g in opt.param_groups for p in g["params"]]
    lit.optimizer_step(0, 0, opt, _closure(params, [grads_by_id[id(p)] for p in params], calls))
    return len(calls)


def test_sgd_reverts_exactly_the_topk_largest_updates():
    lit = _lit(10)
    opt = lit.configure_optimizers()
    grads = _integer_problem(lit)
    params = list(lit.model.parameters())
    before = [p.detach().clone() for p in params]
    assert _step(lit, opt, {id(p): g for p, g in zip(params, grads)}) == 1  # the closure ran exactly once
    for p, b, g in zip(params, before, grads):
        k = math.ceil(p.numel() / 10)
        top = torch.zeros(p.numel(), dtype=torch.bool)
        top[g.abs().flatten().topk(k).indices] = True
        top = top.view(p.shape)
        assert torch.equal(p.detach()[top], b[top]), "the top-k largest updates are reverted"
        assert torch.equal(p.detach()[~top], (b - g)[~top]), "every other update is applied"
        assert int((p.detach() != b).sum()) == p.numel() - k


def test_ignore_count_is_the_ceiling_at_least_one():
    assert ignore_count(30, 10) == 3  # not 4 from 0.1 * 30 = 3.0000000000000004
    assert ignore_count(128, 10) == 13 and ignore_count(16, 12.5) == 2 and ignore_count(1000, 0.1) == 1
    assert ignore_count(5, 1) == 1 and ignore_count(1, 99.9) == 1 and ignore_count(0, 10) == 0


def test_optimizer_state_is_that_of_the_same_run_without_ignore_topk():
    adam = functools.partial(torch.optim.AdamW, lr=1e-2, weight_decay=0.1, betas=(0.9, 0.95))
    on, off = _lit(10, adam), _lit(None, adam)
    opt_on, opt_off = on.configure_optimizers(), off.configure_optimizers()
    gen = torch.Generator().manual_seed(3)
    grads = [torch.randn(p.shape, generator=gen) for p in on.model.parameters()]
    assert _step(on, opt_on, {id(p): g for p, g in zip(on.model.parameters(), grads)}) == 1
    assert _step(off, opt_off, {id(p): g for p, g in zip(off.model.parameters(), grads)}) == 1
    for p_on, p_off in zip(on.model.parameters(), off.model.parameters()):
        s_on, s_off = opt_on.state[p_on], opt_off.state[p_off]
        assert s_on.keys() == s_off.keys() and {"exp_avg", "exp_avg_sq", "step"} <= set(s_on)
        assert all(torch.equal(s_on[key], s_off[key]) for key in s_on), "optimizer state untouched"
        differ = int((p_on.detach() != p_off.detach()).sum())
        assert 0 < differ <= ignore_count(p_on.numel(), 10)  # only reverted entries differ from the off run


@pytest.mark.parametrize("off", [None, 0, 0.0])
def test_off_is_bit_identical_and_takes_no_snapshot(off, monkeypatch):
    def no_snapshot(*_):
        raise AssertionError("snapshot taken with ignore_topk off")

    monkeypatch.setattr(lit_module, "snapshot_params", no_snapshot)
    adam = functools.partial(torch.optim.AdamW, lr=1e-2, weight_decay=0.1)
    lit, ref = _lit(off, adam), _lit(None, adam)
    assert lit.ignore_topk is None and lit.hparams["ignore_topk"] is None
    opt, ref_opt = lit.configure_optimizers(), ref.configure_optimizers()
    gen = torch.Generator().manual_seed(4)
    for _ in range(2):
        grads = [torch.randn(p.shape, generator=gen) for p in lit.model.parameters()]
        assert _step(lit, opt, {id(p): g for p, g in zip(lit.model.parameters(), grads)}) == 1
        calls: list = []
        ref_opt.step(closure=_closure(list(ref.model.parameters()), grads, calls))  # the behaviour before
    for a, b in zip(lit.model.parameters(), ref.model.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("bad", [True, False, "10", -1, -0.5, 100, 100.0, 150, float("nan"), [10]])
def test_bad_values_are_one_line_config_errors(bad):
    msg = f"model.ignore_topk={bad!r}: expected a percentage in (0, 100), 0 or null"
    with pytest.raises(ConfigError) as info:
        _lit(bad)
    assert str(info.value) == msg and "\n" not in msg


def test_good_values_and_the_yaml_default(compose_config):
    assert check_ignore_topk(None) is None and check_ignore_topk(0) is None
    assert check_ignore_topk(10) == 10.0 and check_ignore_topk(0.5) == 0.5 and check_ignore_topk(99.9) == 99.9
    from hydra.utils import instantiate

    assert compose_config().model.ignore_topk is None
    lit = instantiate(compose_config("model.ignore_topk=2.5").model, _convert_="all")
    assert lit.ignore_topk == 2.5 and lit.hparams["ignore_topk"] == 2.5
    with pytest.raises(Exception) as info:
        instantiate(compose_config("model.ignore_topk=100").model, _convert_="all")
    err = info.value if isinstance(info.value, ConfigError) else info.value.__cause__
    assert "model.ignore_topk=100: expected a percentage in (0, 100), 0 or null" in str(err)


def _trainer(**kw) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        **kw,
    )


def test_fit_three_steps_with_ignore_topk_and_checkpoint_round_trip(tmp_path, monkeypatch):
    snapshots = []
    real = lit_module.snapshot_params
    monkeypatch.setattr(lit_module, "snapshot_params", lambda opt: snapshots.append(1) or real(opt))
    gen = torch.Generator().manual_seed(5)
    ids = torch.randint(0, VOCAB, (24, TINY["block_size"]), generator=gen)
    data = [{"input_ids": x, "labels": torch.roll(x, -1)} for x in ids]
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    lit = _lit(10, functools.partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.1))
    start = [p.detach().clone() for p in lit.model.parameters()]
    trainer = _trainer(max_steps=3, accumulate_grad_batches=2)
    trainer.fit(lit, loader)
    assert trainer.global_step == 3 and len(snapshots) == 3  # once per optimizer step, not per micro-batch
    assert all(torch.isfinite(p).all() for p in lit.model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(start, lit.model.parameters()))
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    assert LitGPT.load_from_checkpoint(path, map_location="cpu").ignore_topk == 10.0
    ckpt = torch.load(path, weights_only=True, map_location="cpu")
    del ckpt["hyper_parameters"]["ignore_topk"]  # a checkpoint from before the setting existed
    torch.save(ckpt, tmp_path / "old.ckpt")
    assert LitGPT.load_from_checkpoint(tmp_path / "old.ckpt", map_location="cpu").ignore_topk is None
