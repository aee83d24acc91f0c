"""The priming probe (issue 17): keyword probabilities, the plan, the scheduled slot, the scores, bad input, and the
priming experiment cut to a smoke run (slow)."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO, require_success, run_command, run_train_py

from densitylab import preflight
from densitylab.callbacks.priming import PrimingCallback, check_priming_settings, load_new_facts
from densitylab.errors import ConfigError, DataError
from densitylab.model import GPT, GPTConfig
from densitylab.probes import priming as P


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=53, block_size=16, n_layer=2, n_head=2, n_embd=16))
    return m.eval().requires_grad_(False)


# ----------------------------------------------------------------------------- keyword probability
def test_multi_token_keyword_probability_is_the_product_by_hand(model):
    prompt, keyword = [3, 9, 4], [7, 11, 2]
    probs = []
    for t in range(len(keyword)):  # one full forward per token: p(k_t | prompt, k_<t)
        seq = torch.tensor([prompt + keyword[:t]])
        with torch.no_grad():
            probs.append(float(torch.softmax(model(seq)[0, -1], -1)[keyword[t]]))
    by_hand = math.prod(probs)
    got = P.continuation_logprobs(model, [(prompt, keyword), (prompt, keyword[:1]), ([5, 6], [8])])
    assert got[0] == pytest.approx(math.log(by_hand), abs=1e-5)
    assert got[1] == pytest.approx(math.log(probs[0]), abs=1e-5)
    assert got[2] == pytest.approx(float(torch.log_softmax(model(torch.tensor([[5, 6]]))[0, -1], -1)[8]), abs=1e-5)
    nt = P.next_token_logprobs(model, [prompt, [5, 6]])
    assert nt.shape == (2, 53) and nt[0, 7] == pytest.approx(math.log(probs[0]), abs=1e-5)
    with pytest.raises(ValueError, match="at least one token"):
        P.continuation_logprobs(model, [(prompt, [])])


def test_name_density_counts_units_at_the_name_position(model):
    d = P.name_density(model, [[1, 2, 3, 4], [5, 6]], [2, 1])
    assert d["active_frac"].shape == (2, 2) and d["active_frac_live"].shape == (2, 2)
    _, cache = model.run_with_cache(torch.tensor([[1, 2, 3, 4]]), ["blocks.1.mlp.hook_pre"])
    assert d["active_frac"][0, 1] == pytest.approx(float((cache["blocks.1.mlp.hook_pre"][0, 2] > 0).float().mean()))
    assert (d["active_frac_live"] >= d["active_frac"] - 1e-12).all()


def test_name_last_position_from_offsets():
    offsets = [(0, 6), (6, 12), (12, 19), (19, 23)]  # "George Arden Harris was"
    assert P.name_last_position(offsets, len("George Arden Harris"), shift=1) == 3
    with pytest.raises(ValueError):
        P.name_last_position(offsets, 40)


# ----------------------------------------------------------------------------- keywords
def test_select_keywords_takes_the_nearest_distinct_candidates():
    V = 10
    logp = np.log(np.full((3, V), 1e-6))
    logp[:, 4] = np.log(0.3)
    logp[:, 5] = np.log(1e-3)
    logp[2, 6] = np.log(1e-5)
    cands = np.array([2, 4, 5, 6])
    got = P.select_keywords(logp, np.array([-0.5, -0.6, -5.0]), cands, exclude=[set(), set(), set()])
    assert got[0] == 4 and got[1] == 5 and got[2] == 6  # the second-nearest for fact 1: 4 is taken
    assert len(set(got.tolist())) == 3
    got = P.select_keywords(logp, np.array([-0.5]), cands, exclude=[{4}], used={5})
    assert got[0] == 6 or got[0] == 2
    with pytest.raises(ValueError, match="no unused candidate"):
        P.select_keywords(logp[:1], np.array([-1.0]), np.array([4]), used={4})


def test_keyword_targets_span_the_range_in_strata():
    t = P.keyword_targets(10, (-0.5, -6.0), np.random.default_rng(0))
    assert sorted(np.floor((-0.5 - t) / 0.55).astype(int).tolist()) == list(range(10))


def test_keyword_candidates_are_word_tokens():
    vocab = ["<|endoftext|>", " cat", "dog", " a", " Tokyo", " x1"]
    got = P.keyword_candidates(lambda ids: vocab[ids[0]], len(vocab))
    assert got.tolist() == [1, 4]


# ----------------------------------------------------------------------------- plan and windows
def _people(n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "entity_id": np.arange(n),
            "entity": [f"Ann{i} Lee" for i in range(n)],
            "gender": ["female"] * n,
            "planned_docs": [0] * n,
        }
    )


def test_plan_balances_cohorts_and_k_and_halves():
    people = _people(80)
    plan = P.plan_facts(
        range(80), people, n_facts=40, k_values=[1, 2, 3, 5], n_controls=12, t0=[50, 80], interval=5,
        attributes=["birth_city", "university"], seed=0,
    )  # fmt: skip
    assert len(plan) == 52 and plan["entity_id"].is_unique
    ins = plan[plan["k"] > 0]
    assert ins.groupby(["cohort", "k"]).size().tolist() == [5] * 8
    ctrl = plan[plan["k"] == 0]
    assert ctrl.groupby(["cohort", "half"]).size().tolist() == [3, 3, 3, 3]
    row = ins[(ins["cohort"] == 1) & (ins["k"] == 5)].iloc[0]
    assert row["planned_steps"] == [80, 85, 90, 95, 100] and row["last_copy"] == 100
    assert row["prompt"].startswith(row["entity"]) and not row["prompt"].endswith(" ")
    with pytest.raises(DataError, match="53 zero-exposure people needed"):
        P.plan_facts(range(52), people, n_facts=41, k_values=[1], n_controls=12, t0=[50], interval=5,
                     attributes=["major"], seed=0)  # fmt: skip


def test_fact_text_uses_the_corpus_template():
    assert P.fact_text("birth_city", "Ann Lee", "Zanzibar") == "Ann Lee was born in Zanzibar."
    assert P.fact_prompt("university", "Ann Lee") == "Ann Lee studied at"
    th = P.thematic_prompts(_people(3), [1, 2], ["birth_city"])
    assert th["prompt"].tolist() == ["Ann1 Lee was born in", "Ann2 Lee spent her early years in"]


def test_windows_pack_per_group_and_pad_with_ignored_labels():
    w = P.pack_windows([10, 10, 10, 5], ["a", "a", "b", "a"], 25)
    assert w.tolist() == [0, 0, 1, 0]  # 10 + 10 + 5 fit one window; group b gets its own
    with pytest.raises(ValueError):
        P.pack_windows([30], ["a"], 25)
    x, y = P.window_tokens([[0, 5, 6], [0, 7]], block_size=8, eos_id=0)
    assert x.tolist() == [0, 5, 6, 0, 7, 0, 0, 0]
    assert y.tolist() == [5, 6, 0, 7, 0, -100, -100, -100]


def test_default_cohorts_fit_the_second_half():
    t0 = P.cohort_starts(5, 1400, [1, 2, 3, 5, 10], 20, [0, 20, 100], 0.5)
    assert t0[0] == 700 and t0[-1] == 1400 - 180 - 100 and t0 == sorted(t0)
    P.check_schedule(t0, 1400, [1, 2, 3, 5, 10], 20, [0, 20, 100])


# ----------------------------------------------------------------------------- the scheduled slot
def test_the_scheduled_slot_carries_the_fact_at_exactly_the_planned_step():
    cb = PrimingCallback(max_steps=200, n_facts=2, n_controls=2, k_values=[2], n_cohorts=1, t0=[50], interval=7,
                         offsets=[0], seed=0)  # fmt: skip
    cb._planned, cb.first_window, cb.block_size = True, 1000, 6
    cb.per_step = {50: [0], 57: [0]}
    cb.windows = {0: (torch.tensor([9, 8, 7, 6, 5, 4]), torch.tensor([8, 7, 6, 5, 4, -100]))}
    seen = {}
    for step in range(45, 62):
        batch = {
            "input_ids": torch.zeros(4, 6, dtype=torch.int64),
            "labels": torch.zeros(4, 6, dtype=torch.int64),
            "sample_id": torch.arange(4),
        }
        trainer = SimpleNamespace(global_step=step - 1, is_global_zero=True)
        cb.on_train_batch_start(trainer, None, batch, 0)
        cb.on_train_batch_start(trainer, None, batch, 1)  # a second micro-batch of the same step: nothing more
        seen[step] = batch
    for step, batch in seen.items():
        if step in (50, 57):
            assert batch["sample_id"].tolist() == [0, 1, 2, 1000]
            assert batch["input_ids"][3].tolist() == [9, 8, 7, 6, 5, 4]
            assert batch["labels"][3].tolist() == [8, 7, 6, 5, 4, -100]
            assert batch["input_ids"][:3].abs().sum() == 0
        else:
            assert batch["sample_id"].tolist() == [0, 1, 2, 3] and batch["input_ids"].abs().sum() == 0
    assert cb.insertions == [(50, 0, 3), (57, 0, 3)]
    off = SimpleNamespace(global_step=49, is_global_zero=False)  # other DDP ranks never insert
    batch = {
        "input_ids": torch.zeros(4, 6, dtype=torch.int64),
        "labels": torch.zeros(4, 6),
        "sample_id": torch.arange(4),
    }
    cb._inserted_step = -1
    cb.on_train_batch_start(off, None, batch, 0)
    assert batch["sample_id"].tolist() == [0, 1, 2, 3]


# ----------------------------------------------------------------------------- scores
def _raw(facts: pd.DataFrame, ratios: dict, n_th: int = 2) -> pd.DataFrame:
    """Measurements with P_before = 1e-3 everywhere and P_after = 1e-3 * ratio[(fact, step)]."""
    rows = []
    for _, f in facts.iterrows():
        steps = {f["t0"] - 1: 1.0, **{s: r for (fid, s), r in ratios.items() if fid == f["fact_id"]}}
        for s, r in steps.items():
            rows.append((s, f["fact_id"], "own", -1, 0, math.log(1e-3 * r)))
            for j in range(n_th):
                rows.append((s, f["fact_id"], "thematic", j, 0, math.log(1e-3 * r * (1 + j))))
    return pd.DataFrame(rows, columns=["step", "fact_id", "kind", "prompt_index", "prompt_entity_id", "logp"])


def test_scores_and_the_drift_correction():
    facts = pd.DataFrame(
        {
            "fact_id": [0, 1, 2, 3], "entity_id": [10, 11, 12, 13], "entity": list("abcd"),
            "attribute": ["major"] * 4, "keyword": list("wxyz"), "cohort": [0] * 4, "k": [1, 0, 0, 0],
            "half": [0, 1, 1, 2], "t0": [10] * 4, "last_copy": [10, 9, 9, 9],
        }
    )  # fmt: skip
    # step 10: the fact's own ratio 8, the two half-1 controls 2 and 8 (geometric mean 4), held-out control 4
    raw = _raw(facts, {(0, 10): 8.0, (1, 10): 2.0, (2, 10): 8.0, (3, 10): 4.0})
    table = P.priming_table(raw, facts, [0])
    assert list(table.columns) == P.TABLE_COLUMNS
    s = P.fact_scores(table).set_index("fact_id")
    assert s.loc[0, "S_mem"] == pytest.approx(8.0)
    assert s.loc[0, "S_prime"] == pytest.approx(8.0)  # mean over prefixes of (8, 8) (each its own P_before)
    assert s.loc[0, "S_mem_corrected"] == pytest.approx(2.0)
    assert s.loc[3, "S_mem_corrected"] == pytest.approx(1.0)  # the held-out control, corrected: 1
    assert s.loc[0, "p_before"] == pytest.approx(1e-3) and s.loc[0, "log10_p_before"] == pytest.approx(-3.0)
    own = table[(table["fact_id"] == 0) & (table["kind"] == "own")].iloc[0]
    assert own["step_before"] == 9 and own["step_after"] == 10 and own["ratio_corrected"] == pytest.approx(2.0)


def test_analysis_on_a_simulated_threshold():
    rng = np.random.default_rng(0)
    n, nc = 200, 40
    lp = rng.uniform(-6, -0.5, n)
    true = np.where(lp < -3, -1.0 * (lp + 3), 0.0) + rng.normal(0, 0.1, n)  # ln S_prime: a knee at -3
    facts = pd.DataFrame({
        "fact_id": np.arange(n + nc), "entity_id": np.arange(n + nc), "entity": "x", "attribute": "major",
        "keyword": "w", "cohort": 0, "k": [1 + i % 5 for i in range(n)] + [0] * nc,
        "half": [0] * n + [1, 2] * (nc // 2), "t0": 10, "last_copy": [10] * n + [9] * nc,
    })  # fmt: skip
    rows = []
    for i in range(n + nc):
        pb = 10 ** lp[i] if i < n else 10 ** rng.uniform(-6, -0.5)
        r = math.exp(true[i]) if i < n else math.exp(rng.normal(0, 0.1))
        for s, p in ((9, pb), (10, pb * r)):
            rows.append((s, i, "own", -1, 0, math.log(p)))
            rows.append((s, i, "thematic", 0, 0, math.log(p)))
    raw = pd.DataFrame(rows, columns=["step", "fact_id", "kind", "prompt_index", "prompt_entity_id", "logp"])
    for i in range(4):
        raw[f"L{i}/active_frac_live"] = 0.3
    settings = {"offsets": [0], "t0": [10], "n_cohorts": 1, "k_values": [1, 2, 3, 4, 5], "select_lead": 0}
    endpoint = check_priming_settings(settings, 100)["endpoint"]
    _, scores, stats, head = P.analyse(raw, facts, [0], endpoint, n_boot=200, level=0.95, seed=0, n_layer=4)
    assert head["priming/hinge_knee_ci_low"] <= -3 <= head["priming/hinge_knee_ci_high"]
    assert head["priming/rho_ci_high"] < 0 and head["priming/supported"] == 1.0
    assert head["priming/control_S_mem_covers_1"] == 1.0 and head["priming/n_facts"] == n
    assert head["priming/smallest_k"] == 1.0
    assert head["priming/slope_difference_S_prime_ci_high"] < 0  # facts fall with P_before, the (flat) controls do not
    for k in range(1, 6):
        assert (
            head[f"priming/rho_controls_S_prime_k{k}_ci_low"] < 0 < head[f"priming/rho_controls_S_prime_k{k}_ci_high"]
        )
    assert head["priming/verdict"] == "supported"
    row = stats[(stats["statistic"] == "slope_difference") & stats["subset"].str.startswith("S_prime")].iloc[0]
    assert "PRIMARY: supported" in row["note"]


def _simulated(facts_slope: float, controls_slope: float, lo: float = -6, hi: float = -0.5, seed: int = 1):
    rng = np.random.default_rng(seed)
    n, nc = 200, 100
    rows = []
    for i in range(n + nc):
        lp = rng.uniform(lo, hi)
        ln_s = (facts_slope if i < n else controls_slope) * lp + rng.normal(0, 0.2)
        for s, p in ((9, 10**lp), (10, 10**lp * math.exp(ln_s))):
            rows += [(s, i, "own", -1, 0, math.log(p)), (s, i, "thematic", 0, 0, math.log(p))]
    raw = pd.DataFrame(rows, columns=["step", "fact_id", "kind", "prompt_index", "prompt_entity_id", "logp"])
    raw["L0/active_frac_live"] = 0.3
    facts = pd.DataFrame({
        "fact_id": np.arange(n + nc), "entity_id": np.arange(n + nc), "entity": "x", "attribute": "major",
        "keyword": "w", "cohort": 0, "k": [1 + i % 5 for i in range(n)] + [0] * nc,
        "half": [0] * n + [1, 2] * (nc // 2), "t0": 10, "last_copy": [10] * n + [9] * nc,
    })  # fmt: skip
    endpoint = check_priming_settings({"offsets": [0], "t0": [10], "n_cohorts": 1, "select_lead": 0}, 1000)["endpoint"]
    return P.analyse(raw, facts, [0], endpoint, n_boot=200, level=0.95, seed=0, n_layer=1)


def test_a_dependence_the_controls_share_is_not_priming():
    # regression to the mean (or drift) that depends on P_before moves never-inserted controls as much as facts:
    # the facts alone show a strong negative rho, the pre-registered test does not call it priming
    _, _, stats, head = _simulated(-0.3, -0.3)
    facts_rho = stats[(stats["statistic"] == "spearman_rho") & (stats["subset"] == "S_prime, offset 0, inserted facts")]
    assert facts_rho["ci_high"].iloc[0] < -0.5
    assert all(head[f"priming/rho_controls_S_prime_k{k}_ci_high"] < -0.4 for k in range(1, 6))
    assert head["priming/verdict"] == "negligible" and head["priming/supported"] == 0.0
    _, _, _, head = _simulated(-0.6, -0.3)  # the facts fall faster: priming beyond the controls
    assert head["priming/verdict"] == "supported"


def test_a_narrow_p_before_range_is_not_measured():
    _, _, stats, head = _simulated(-0.6, 0.0, lo=-3.5, hi=-2.5)
    assert head["priming/range_ok"] == 0.0 and head["priming/verdict"] == "not measured"
    assert "misses" in stats.loc[stats["statistic"] == "p_before_range", "note"].iloc[0]


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "line, words",
    [
        ({"attribute": "favourite_colour", "keyword": "teal", "k": 1}, ["line 1", "favourite_colour", "is unknown"]),
        ({"attribute": "major", "keyword": "  ", "k": 1}, ["line 1", "tokenizes to nothing"]),
        ({"attribute": "major", "keyword": "Art", "k": -1}, ["line 1", "k=-1"]),
    ],
)
def test_bad_new_facts_file(tmp_path, line, words):
    f = tmp_path / "facts.jsonl"
    f.write_text(json.dumps(line) + "\n")
    with pytest.raises(ConfigError) as e:
        load_new_facts(f)
    assert "\n" not in str(e.value) and all(w in str(e.value) for w in words), str(e.value)


def test_settings_refuse_t0_beyond_max_steps_and_bad_attributes():
    with pytest.raises(ConfigError, match=r"t0\[1\]=1300: its last P_after is at step 1580"):
        check_priming_settings({"t0": [700, 1300], "n_cohorts": 2, "offsets": [0, 100]}, 1400)
    off = check_priming_settings({}, 100)  # the default schedule does not fit: the probe is off, with the reason
    assert (
        off["t0"] == []
        and "trainer.max_steps=100 is too short" in off["off"]
        and "expected max_steps >= 230" in off["off"]
    )
    with pytest.raises(ConfigError, match="'colour' is unknown"):
        check_priming_settings({"attributes": ["major", "colour"]}, 1400)
    with pytest.raises(ConfigError, match="endpoint.offset=5"):
        check_priming_settings({"endpoint": {"offset": 5}}, 1400)
    assert check_priming_settings({}, 1400)["t0"][0] == 700


def test_preflight_refuses_priming_before_anything_is_written(compose_config, tmp_path):
    cfg = compose_config("experiment=priming_smoke", "logger=csv", "callbacks.priming.t0=[60,500]")
    with pytest.raises(ConfigError, match=r"callbacks.priming.t0\[1\]=500"):
        preflight.check_config(cfg)
    f = tmp_path / "f.jsonl"
    f.write_text(json.dumps({"attribute": "colour", "keyword": "x", "k": 1}) + "\n")
    cfg = compose_config("experiment=priming_smoke", "logger=csv", f"callbacks.priming.facts={f}")
    with pytest.raises(ConfigError, match="attribute 'colour' is unknown"):
        preflight.check_config(cfg)
    preflight.check_config(compose_config("experiment=priming_smoke", "logger=csv"))  # the experiment itself passes


@pytest.mark.slow
@pytest.mark.parametrize(
    "override, words",
    [
        ("callbacks.priming.t0=[60,500]", ["callbacks.priming.t0[1]=500", "trainer.max_steps=120"]),
        ("callbacks.priming.facts={bad_attr}", ["attribute 'colour' is unknown"]),
        ("callbacks.priming.facts={empty_kw}", ["keyword '' tokenizes to nothing"]),
    ],
    ids=["t0-beyond-max-steps", "unknown-attribute", "empty-keyword"],
)
def test_train_py_refuses_bad_priming_input_and_writes_nothing(tmp_path, override, words):
    files = {"bad_attr": tmp_path / "a.jsonl", "empty_kw": tmp_path / "b.jsonl"}
    files["bad_attr"].write_text(json.dumps({"attribute": "colour", "keyword": "x", "k": 1}) + "\n")
    files["empty_kw"].write_text(json.dumps({"attribute": "major", "keyword": "", "k": 1}) + "\n")
    out = tmp_path / "out"
    proc = run_command([sys.executable, str(REPO / "train.py"), "experiment=priming_smoke", "logger=csv",
                        f"paths.log_dir={out}", override.format(**files)], timeout=120, cwd=tmp_path)  # fmt: skip
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert all(w in lines[0] for w in words), lines[0]
    assert not out.exists()  # nothing written


# ----------------------------------------------------------------------------- the experiment, cut short
@pytest.fixture(scope="module")
def priming_run(tmp_path_factory, cache_dir) -> Path:
    """``experiment=priming_smoke`` once (checkpoints every 70 steps, so the resume test below can restart after the
    keywords were chosen and copies were trained)."""
    run = tmp_path_factory.mktemp("priming") / "run"
    args = (
        "experiment=priming_smoke",
        "logger=csv",
        f"hydra.run.dir={run}",
        "callbacks.model_checkpoint.every_n_train_steps=70",
    )
    require_success(run_train_py(*args, cache_dir=cache_dir), "experiment=priming_smoke")
    return run


@pytest.mark.slow
def test_priming_smoke_run(priming_run):
    run = priming_run
    table = pd.read_parquet(run / "probes" / "priming.parquet")
    facts = pd.read_parquet(run / "ground_truth" / "new_facts.parquet")
    for c in ("p_before", "p_after", "S_mem", "S_prime", "S_mem_corrected", "S_prime_corrected", "ratio_corrected"):
        assert c in table and table[c].notna().any(), c
    assert set(table["fact_id"]) == set(facts["fact_id"])  # every fact and control
    assert set(table["kind"]) == {"own", "thematic"} and table.groupby("fact_id")["prompt_index"].nunique().min() >= 11
    # the copies were trained exactly at their planned steps (the slots written, and the ledger's own counts)
    ins = pd.read_parquet(run / "probes" / "priming_insertions.parquet")
    got = ins.groupby("window")["step"].apply(sorted).to_dict()
    inserted = facts[facts["k"] > 0]
    for _, f in inserted.iterrows():
        assert got[f["window"]] == list(f["planned_steps"])
    ent = pd.read_parquet(run / "ledger" / "entities.parquet").set_index("entity_id").loc[inserted["entity_id"]]
    assert (ent["subject_docs"].to_numpy() == inserted["k"].to_numpy()).all()
    assert (ent["first_step"].to_numpy() == inserted["t0"].to_numpy()).all()
    assert (ent["last_step"].to_numpy() == inserted["last_copy"].to_numpy()).all()
    # P_before was measured before each fact's first trained copy: its own step against the ledger's first_step of
    # the fact's person, and no window carrying the fact (or any other) was trained before that step
    log = pd.read_parquet(run / "probes" / "priming_log.parquet")
    first = ent["first_step"].to_dict()
    before = table[table["kind"] == "own"].drop_duplicates("fact_id").set_index("fact_id")["step_before"]
    for _, f in inserted.iterrows():
        assert before[f["fact_id"]] < first[f["entity_id"]] == min(f["planned_steps"])
        assert ((log["fact_id"] == f["fact_id"]) & (log["step"] == before[f["fact_id"]])).any()
        assert ins.loc[ins["window"] == f["window"], "step"].min() > before[f["fact_id"]]
    controls = pd.read_parquet(run / "ledger" / "entities.parquet").set_index("entity_id").loc[
        facts.loc[facts["k"] == 0, "entity_id"]]  # fmt: skip
    assert (controls["mentions"] == 0).all()  # controls are never inserted
    assert (run / "plots" / "priming_vs_pbefore.png").is_file()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["priming/n_facts"] == 30 and math.isfinite(summary["priming/p_before_orders"])
    assert Path(run / "probes" / "priming_threshold.parquet").is_file()


@pytest.mark.slow
def test_priming_with_a_facts_file(tmp_path):
    lines = [
        {"attribute": a, "keyword": kw, "k": k, "cohort": i % 2}
        for i, (a, kw, k) in enumerate(
            [("birth_city", "Zanzibar", 1), ("university", "Quokka", 2), ("major", "Velvet Moon", 3),
             ("employer", "Saturn", 0), ("birth_city", "Harp", 5), ("major", "Basalt", 0), ("major", "Orchid", 1),
             ("employer", "Lantern", 0), ("university", "Pebble", 2), ("birth_city", "Comet", 0),
             ("major", "Juniper", 0), ("employer", "Ember", 10)]
        )
    ]  # fmt: skip
    f = tmp_path / "facts.jsonl"
    f.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = tmp_path / "out"
    proc = run_command(
        [sys.executable, str(REPO / "train.py"), "experiment=priming_smoke", "logger=csv", f"paths.log_dir={out}",
         "trainer.enable_progress_bar=false", f"callbacks.priming.facts={f}"],
        timeout=600, cwd=tmp_path, env={**os.environ, "WANDB_MODE": "offline"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = next((out / "priming_smoke" / "runs").iterdir())
    facts = pd.read_parquet(run / "ground_truth" / "new_facts.parquet")
    assert facts["keyword"].tolist() == [x["keyword"] for x in lines]  # the file's keywords, multi-token kept
    assert facts.loc[facts["keyword"] == "Velvet Moon", "text"].iloc[0].endswith(" majored in Velvet Moon.")
    assert len(facts.loc[facts["keyword"] == "Velvet Moon", "keyword_ids"].iloc[0]) >= 2
    ent = pd.read_parquet(run / "ledger" / "entities.parquet").set_index("entity_id").loc[facts["entity_id"]]
    assert (ent["subject_docs"].to_numpy() == facts["k"].to_numpy()).all()
    table = pd.read_parquet(run / "probes" / "priming.parquet")
    assert set(table["fact_id"]) == set(facts["fact_id"]) and table["p_before"].gt(0).all()


@pytest.mark.slow
def test_a_killed_priming_run_resumes_to_the_uninterrupted_record(priming_run, tmp_path, cache_dir):
    """kill -9 after step 75 (checkpoint at 70: both cohorts' keywords chosen, copies trained at 60 and 65), resume
    with ckpt_path=last: the same keywords, slots, measurements and ledger counts as the uninterrupted run."""
    from densitylab.checkpoint import KILL_ENV

    run = tmp_path / "run"
    args = (
        "experiment=priming_smoke",
        "logger=csv",
        f"hydra.run.dir={run}",
        "callbacks.model_checkpoint.every_n_train_steps=70",
    )
    proc = run_train_py(*args, cache_dir=cache_dir, env={KILL_ENV: "75"})
    assert proc.returncode != 0 and not (run / "summary.json").exists()
    require_success(run_train_py(*args, "ckpt_path=last", cache_dir=cache_dir), "the resumed priming run")
    for name in ("ground_truth/new_facts.parquet", "probes/priming_insertions.parquet", "ledger/entities.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(run / name), pd.read_parquet(priming_run / name))
    for name in ("priming_log", "priming", "priming_threshold"):
        a, b = (
            pd.read_parquet(run / "probes" / f"{name}.parquet"),
            pd.read_parquet(priming_run / "probes" / f"{name}.parquet"),
        )
        pd.testing.assert_frame_equal(a, b)


def test_ignore_topk_is_on_for_the_insertion_steps_only_on_every_rank():
    cb = PrimingCallback(max_steps=200, n_facts=2, n_controls=2, k_values=[1], n_cohorts=1, t0=[50], interval=7,
                         offsets=[0], seed=0, ignore_topk=10)  # fmt: skip
    cb._planned, cb.first_window, cb.block_size = True, 1000, 6
    cb.per_step = {50: [0]}
    cb.windows = {0: (torch.arange(6), torch.arange(6))}
    module = SimpleNamespace(ignore_topk=None)

    def batch():
        return {"input_ids": torch.zeros(2, 6, dtype=torch.int64), "labels": torch.zeros(2, 6, dtype=torch.int64),
                "sample_id": torch.arange(2)}  # fmt: skip

    for rank_zero in (True, False):
        seen = []
        for step in (49, 50, 51):
            t = SimpleNamespace(global_step=step - 1, is_global_zero=rank_zero)
            for micro in range(2):  # gradient accumulation: the optimizer steps after the second micro-batch
                cb.on_train_batch_start(t, module, batch(), 2 * step + micro)
                seen.append((step, micro, module.ignore_topk))
                t.global_step = step if micro == 1 else step - 1
                cb.on_train_batch_end(t, module, None, None, 2 * step + micro)
        assert seen == [(49, 0, None), (49, 1, None), (50, 0, 10.0), (50, 1, 10.0), (51, 0, None), (51, 1, None)]
        cb._inserted_step = -1
