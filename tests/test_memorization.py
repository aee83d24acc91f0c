"""Tests of the memorization probe, the plateau rule, uniform-sequence data and the capacity fit."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from densitylab.data.uniform import SequenceDataset, UniformSequenceDataModule, make_uniform_sequences
from densitylab.errors import ConfigError
from densitylab.model import GPT, GPTConfig
from densitylab.probes.memorization import (
    Plateau,
    extractable,
    measure_memorization,
    memorization_scalars,
    memorized_bits,
    sequence_nll,
)
from densitylab.report.capacity import fit_alpha, fit_plateau, saturating


class Oracle(torch.nn.Module):
    """Knows a set of sequences: puts logit ``margin`` on the true next token of whichever stored
    sequence the input is a prefix of (0 elsewhere); optionally wrong at some positions."""

    def __init__(self, seqs: torch.Tensor, vocab: int, margin: float = 60.0, wrong_at: dict | None = None):
        super().__init__()
        self.seqs, self.vocab, self.margin = seqs, vocab, margin
        self.wrong_at = wrong_at or {}
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        B, T = x.shape
        out = torch.zeros(B, T, self.vocab)
        for b in range(B):
            i = int((self.seqs[:, :T] == x[b]).all(1).nonzero()[0])
            for t in range(T):
                tok = int(self.seqs[i, t + 1])
                if t in self.wrong_at.get(i, ()):
                    tok = (tok + 1) % self.vocab
                out[b, t, tok] = self.margin
        return out


class Uniform(torch.nn.Module):
    """Uniform over the first ``support`` ids of a ``vocab``-sized vocabulary."""

    def __init__(self, vocab: int, support: int):
        super().__init__()
        self.vocab, self.support = vocab, support
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        out = torch.full((*x.shape, self.vocab), -math.inf)
        out[..., : self.support] = 0.0
        return out


S, A = 64, 16


@pytest.fixture
def seqs():
    return make_uniform_sequences(6, S, A, seed=3)


def test_perfect_model_scores_full_entropy(seqs):
    df = measure_memorization(Oracle(seqs, A), seqs, A, batch_size=4)
    np.testing.assert_allclose(df["mem_bits"], (S - 1) * math.log2(A), rtol=1e-7)
    assert df["extractable"].all()
    assert (df["argmax_acc"] == 1).all()


def test_uniform_model_scores_zero(seqs):
    df = measure_memorization(Uniform(A, A), seqs, A)
    np.testing.assert_allclose(df["nll_bits"], (S - 1) * math.log2(A), rtol=1e-8)
    np.testing.assert_allclose(df["mem_bits"], 0.0, atol=1e-5)
    # uniform over a larger vocabulary: NLL above the alphabet's entropy, clipped to 0
    df = measure_memorization(Uniform(4 * A, 4 * A), seqs, A)
    assert (df["nll_bits"] > (S - 1) * math.log2(A)).all()
    assert (df["mem_bits"] == 0).all()


def test_partial_knowledge_gives_bits_in_between(seqs):
    # uniform over half the alphabet when the true token is in it: saves 1 bit per such token
    class Half(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.dummy = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            i = [int((seqs[:, : x.shape[1]] == row).all(1).nonzero()[0]) for row in x]
            nxt = seqs[i, 1 : x.shape[1] + 1]
            half = (nxt < A // 2)[..., None]
            ids = torch.arange(A)
            mask = torch.where(half, ids < A // 2, ids >= A // 2)
            return torch.where(mask, 0.0, -math.inf)

    df = measure_memorization(Half(), seqs, A)
    np.testing.assert_allclose(df["mem_bits"], S - 1, rtol=1e-7)  # exactly 1 bit per predicted token


def test_memorized_bits_validates():
    with pytest.raises(ValueError, match="alphabet_size"):
        memorized_bits(torch.zeros(2), 64, 1)
    with pytest.raises(ValueError, match="expected"):
        sequence_nll(Uniform(4, 4), torch.zeros(3, dtype=torch.long))


def _greedy_extractable(model, seq, k, l):
    ctx = seq[:k].clone()
    for _ in range(l):
        nxt = model(ctx[None])[0, -1].argmax()
        ctx = torch.cat([ctx, nxt[None]])
    return bool((ctx[k : k + l] == seq[k : k + l]).all())


def test_extractable_equals_greedy_decoding(seqs):
    # sequence 0: perfect; 1: wrong inside the prefix (does not matter); 2: wrong at the first
    # suffix token; 3: wrong at the last suffix token; 4: wrong just before the suffix (position 30 predicts token 31)
    wrong = {1: {5}, 2: {31}, 3: {62}, 4: {30}}
    model = Oracle(seqs, A, wrong_at=wrong)
    _, correct = sequence_nll(model, seqs)
    flags = extractable(correct, 32, 32)
    assert flags.tolist() == [True, True, False, False, True, True]

    # against real greedy decoding, with a model that is a deterministic function of the context
    class Rule(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.dummy = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return torch.nn.functional.one_hot((x * 5 + 3) % A, A).float() * 10

    rule = Rule()
    follows = torch.zeros(4, S, dtype=torch.long)
    follows[:, 0] = torch.arange(4)
    for t in range(1, S):
        follows[:, t] = (follows[:, t - 1] * 5 + 3) % A
    follows[1, 40] = (follows[1, 40] + 1) % A  # break inside the suffix
    follows[2, 10] = (follows[2, 10] + 1) % A  # break inside the prefix only: continuation from token 10 on
    for t in range(11, S):
        follows[2, t] = (follows[2, t - 1] * 5 + 3) % A
    follows[3] = seqs[0]
    _, correct = sequence_nll(rule, follows)
    tf = extractable(correct, 32, 32).tolist()
    assert tf == [_greedy_extractable(rule, follows[i], 32, 32) for i in range(4)]
    assert tf[0] and not tf[1] and tf[2]


def test_extractable_short_sequences_shrink():
    correct = torch.ones(3, 15, dtype=torch.bool)  # S = 16 < 64: (8, 8)
    correct[1, 6] = False  # predicts token 7: prefix region
    correct[2, 7] = False  # predicts token 8: first suffix token
    assert extractable(correct, 32, 32).tolist() == [True, True, False]


def test_scalars_per_group():
    per = pd.DataFrame(
        {
            "repetitions": [1, 1, 4, 4],
            "mem_bits": [0.0, 2.0, 10.0, 30.0],
            "max_bits": [40.0] * 4,
            "extractable": [False, False, False, True],
        }
    )
    s = memorization_scalars(per, n_params=10)
    assert s["bits_total"] == 42 and s["bits/rep1"] == 2 and s["bits/rep4"] == 40
    assert s["bits_mean/rep4"] == 20 and s["extractable_frac/rep4"] == 0.5 and s["extractable_frac"] == 0.25
    assert s["bits_per_param"] == pytest.approx(4.2) and s["frac_of_entropy"] == pytest.approx(42 / 160)


def test_trained_gpt_memorizes_a_repeated_sequence():
    torch.manual_seed(0)
    seqs = make_uniform_sequences(2, 32, 32, seed=0)
    m = GPT(GPTConfig(vocab_size=32, block_size=31, n_layer=1, n_head=2, n_embd=32))
    before = measure_memorization(m.eval(), seqs, 32)["mem_bits"].sum()
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    m.train()
    for _ in range(150):
        x = seqs[:1]
        loss = torch.nn.functional.cross_entropy(m(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = measure_memorization(m.eval(), seqs, 32)
    assert before < 5
    assert after["mem_bits"][0] > 0.9 * 31 * 5 and after["extractable"][0]  # the trained one: nearly all 155 bits
    assert after["mem_bits"][1] < 10  # the other one: nothing


# ---------------------------------------------------------------------------- plateau rule
def test_plateau_reduces_lr_then_stops():
    p = Plateau(patience=3, min_delta=0.1, lr_patience=1, lr_factor=0.5, min_lr_scale=0.25)
    actions = [p.update(v) for v in [1.0, 2.0, 2.05, 2.5, 2.55, 2.56, 2.57, 2.58]]
    assert actions == [None, None, "reduce_lr", None, "reduce_lr", None, "stop", "stop"][: len(actions)]
    assert p.lr_scale == 0.25 and p.best == pytest.approx(2.5) and p.max_seen == pytest.approx(2.58)
    q = Plateau(patience=3, min_delta=0.1, lr_patience=1, lr_factor=0.5, min_lr_scale=0.25)
    q.load_state_dict(p.state_dict())
    assert q.state_dict() == p.state_dict()
    with pytest.raises(ValueError, match="patience"):
        Plateau(patience=0)


def test_plateau_never_stops_slow_steady_growth():
    # +0.06 per evaluation with min_delta 0.1: every second evaluation adds up to an improvement
    p = Plateau(patience=2, min_delta=0.1, lr_patience=5)
    assert [p.update(0.06 * i) for i in range(40)] == [None] * 40


# ---------------------------------------------------------------------------- uniform data
def test_uniform_sequences_nest_and_validate():
    a, b = make_uniform_sequences(100, 64, 256, 1), make_uniform_sequences(3000, 64, 256, 1)
    assert torch.equal(a, b[:100]) and a.dtype == torch.int64 and a.max() < 256
    assert not torch.equal(a, make_uniform_sequences(100, 64, 256, 2))
    counts = torch.bincount(b.flatten(), minlength=256).double()
    assert counts.min() > 0.8 * counts.mean()  # uniform
    with pytest.raises(ConfigError, match="n_sequences=0"):
        make_uniform_sequences(0, 64, 256, 0)


def test_uniform_datamodule(tmp_path):
    dm = UniformSequenceDataModule(
        n_sequences=50, length=16, alphabet_size=8, batch_size=16, seed=0, n_heldout=10, output_dir=str(tmp_path)
    )
    dm.prepare_data()
    dm.setup("fit")
    assert dm.vocab_size == 8 and dm.unigram_entropy == pytest.approx(math.log(8))
    assert dm.meta["entropy_bits"] == pytest.approx(50 * 15 * 3)
    gt = pd.read_parquet(tmp_path / "ground_truth" / "canaries.parquet")
    assert (
        len(gt) == 50 and (gt["repetitions"] == 1).all() and list(gt["tokens"].iloc[7]) == dm.train_tokens[7].tolist()
    )
    seen = []
    for batch in dm.train_dataloader():
        assert batch["input_ids"].shape == (16, 15)
        seen += batch["sample_id"].tolist()
        real = batch["sample_id"] >= 0
        assert torch.equal(batch["input_ids"][real], dm.train_tokens[batch["sample_id"][real], :-1])
        assert (batch["labels"][~real] == -100).all()
    assert sorted(s for s in seen if s >= 0) == list(range(50)) and len(seen) == 64
    val = next(iter(dm.val_dataloader()))
    assert not any(torch.equal(v, t) for v in val["input_ids"] for t in dm.train_tokens[:, :-1])
    ds = SequenceDataset(dm.train_tokens, pad_to_multiple=16)
    with pytest.raises(IndexError):
        ds[64]


# ---------------------------------------------------------------------------- capacity fit
@pytest.mark.parametrize("shape", ["saturating", "hard"])
@pytest.mark.parametrize("capacity", [5e4, 2e6])
def test_fit_plateau_recovers_known_capacity(shape, capacity):
    rng = np.random.default_rng(0)
    x = capacity * np.array([1 / 8, 1 / 4, 1 / 2, 1, 2, 4, 8])
    y = saturating(x, capacity, 1.0) if shape == "saturating" else np.minimum(x, capacity)
    y = y * (1 + 0.02 * rng.standard_normal(len(x)))
    fit = fit_plateau(x, y)
    assert fit["capacity_bits"] == pytest.approx(capacity, rel=0.08)
    assert fit["capacity_ci_low"] < fit["capacity_bits"] < fit["capacity_ci_high"]
    assert fit["saturated"]


def test_fit_plateau_flags_a_grid_that_never_saturates():
    x = np.array([1e3, 2e3, 4e3, 8e3])
    fit = fit_plateau(x, 0.9 * x)  # still growing linearly
    assert not fit["saturated"]
    with pytest.raises(ValueError, match="expected >= 3"):
        fit_plateau(x[:2], x[:2])


def test_fit_alpha():
    p = np.array([2e4, 5e4, 1e5, 2e5])
    r = fit_alpha(3.6 * p, p)
    assert r["alpha"] == pytest.approx(3.6) and r["alpha_ci_high"] - r["alpha_ci_low"] < 1e-9
    assert r["alpha_through_origin"] == pytest.approx(3.6)
    noisy = fit_alpha(p * np.array([3.4, 3.8, 3.5, 3.7]), p)
    assert noisy["alpha"] == pytest.approx(3.6) and noisy["alpha_ci_low"] < 3.6 < noisy["alpha_ci_high"]
    with pytest.raises(ValueError, match=">= 2"):
        fit_alpha(np.array([1.0]), np.array([1.0]))


def test_fit_plateau_leaves_out_points_that_did_not_converge():
    capacity = 1e5
    x = capacity * np.array([1 / 8, 1 / 4, 1 / 2, 1, 2, 4, 8, 16])
    y = saturating(x, capacity, 1.0)
    y[-2:] = [0.6 * capacity, 0.3 * capacity]  # big datasets stopped early (step limit): far below the plateau
    fit = fit_plateau(x, y)
    assert fit["points_dropped"] == 2 and fit["dropped_dataset_bits"] == list(x[-2:])
    assert fit["capacity_bits"] == pytest.approx(capacity, rel=0.1)
    # runs that stopped on their own plateau are converged: kept even when lower
    kept = fit_plateau(x, y, limited=np.array([False] * 7 + [True]))
    assert kept["points_dropped"] == 1


def test_callback_plateau_rule_lowers_lr_then_stops_and_follows_rank_0():
    from types import SimpleNamespace

    from densitylab.callbacks import MemorizationCallback

    settings = {"patience": 3, "min_delta": 0.1, "lr_patience": 1, "lr_factor": 0.5, "min_lr_scale": 0.25}
    cb = MemorizationCallback(plateau=settings)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    trainer = SimpleNamespace(
        is_global_zero=True,
        should_stop=False,
        global_step=0,
        optimizers=[opt],
        lr_scheduler_configs=[],
        strategy=SimpleNamespace(broadcast=lambda obj, src=0: obj),
    )
    records = pd.DataFrame({"step": [0]})
    lrs, logged = [], []
    for step, v in enumerate([0.5, 1.0, 2.0, 2.05, 2.5, 2.55, 2.56, 2.57]):
        trainer.global_step = step
        out = cb.after_measure(trainer, step, (records, {"bits_per_param": v, "bits_total": math.nan}), final=False)
        lrs.append(opt.param_groups[0]["lr"])
        logged.append(out[1])
    assert lrs == [1.0, 1.0, 1.0, 0.5, 0.5, 0.25, 0.25, 0.25]  # step 0 is never a plateau evaluation
    assert trainer.should_stop and cb.stopped_by == "plateau"
    assert logged[-1] == {"memorization/bits_per_param": 2.57, "memorization/lr_scale": 0.25}  # finite only
    assert cb.after_measure(trainer, 9, (records, {"bits_per_param": 0.0}), final=True)[1]["memorization/lr_scale"]
    assert len(cb.plateau.history) == 7  # the final probe is not an evaluation of the rule

    other = MemorizationCallback(plateau=settings)  # another process: no result, rank 0's decision applies
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    state = {**other.plateau.state_dict(), "lr_scale": 0.5}
    trainer2 = SimpleNamespace(
        is_global_zero=False,
        global_step=3,
        optimizers=[opt2],
        lr_scheduler_configs=[],
        strategy=SimpleNamespace(broadcast=lambda obj, src=0: ("reduce_lr", state)),
    )
    assert other.after_measure(trainer2, 3, None, final=False) is None
    assert opt2.param_groups[0]["lr"] == 0.5 and other.plateau.lr_scale == 0.5
