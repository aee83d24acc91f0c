"""End-to-end runs of train.py (subprocesses, as a user runs it). Marked slow; CI runs them."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import real_text, require_success, run_command, run_train_py

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def run_train(*overrides: str, cache_dir: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run train.py; ``timeout`` is a base in seconds, scaled by DENSITYLAB_TEST_TIMEOUT_SCALE (conftest)."""
    return run_train_py(*overrides, cache_dir=cache_dir, timeout=timeout)


def test_smoke_run_folder_holds_the_output_contract(smoke_run: Path):
    for name in (
        "metrics.csv",
        "summary.json",
        "tokenizer.json",
        "checkpoints/last.ckpt",
        ".hydra/config.yaml",
        "ground_truth/mentions_train.parquet",
        "ground_truth/comentions_train.parquet",
        "ground_truth/people.parquet",
        "ground_truth/canaries.parquet",
        "data.json",
    ):
        assert (smoke_run / name).is_file(), name
    assert not (smoke_run / "FAILED").exists()
    summary = json.loads((smoke_run / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["global_step"] == 80
    assert summary["train/tokens_seen"] == 80 * 16 * 64  # steps x batch x block, one process
    assert summary["model/params"] > 0 and summary["perf/tokens_per_sec"] > 0


def test_smoke_ledger_token_total_equals_tokens_seen(smoke_run: Path):
    tokens = pd.read_parquet(smoke_run / "ledger" / "tokens.parquet")
    summary = json.loads((smoke_run / "summary.json").read_text())
    assert int(tokens["count"].sum()) == summary["train/tokens_seen"] == 80 * 16 * 64
    m = pd.read_csv(smoke_run / "metrics.csv")
    # each (step, metric) once in metrics.csv: train/tokens_seen sits on the first row of its step (a probe's)
    ledger = m.dropna(subset=["ledger/tokens_seen"]).groupby("step")["ledger/tokens_seen"].last()
    trained = m.dropna(subset=["train/tokens_seen"]).groupby("step")["train/tokens_seen"].agg(["first", "nunique"])
    assert (trained["nunique"] == 1).all() and ledger.index.isin(trained.index).all()
    assert ledger.iloc[-1] == trained.loc[ledger.index[-1], "first"] == 80 * 16 * 64
    pd.testing.assert_series_equal(ledger, trained.loc[ledger.index, "first"], check_names=False)
    assert (smoke_run / "plots" / "ledger_zipf.png").stat().st_size > 5000
    entities = pd.read_parquet(smoke_run / "ledger" / "entities.parquet")
    people = pd.read_parquet(smoke_run / "ground_truth" / "people.parquet")
    unfamiliar = set(people.loc[~people["familiar"], "entity"])
    assert (entities.loc[entities["entity"].isin(unfamiliar), "mentions"] == 0).all()
    assert entities.loc[~entities["entity"].isin(unfamiliar), "mentions"].sum() > 0


def test_smoke_training_lowers_loss_below_unigram_entropy(smoke_run: Path):
    m = pd.read_csv(smoke_run / "metrics.csv")
    train = m.dropna(subset=["train/loss"])["train/loss"].to_numpy()
    assert len(train) >= 10
    assert train[:3].mean() > train[-3:].mean() + 1.0, train
    summary = json.loads((smoke_run / "summary.json").read_text())
    vocab = json.loads((smoke_run / "data.json").read_text())["vocab_size"]
    assert summary["val/loss"] < summary["data/unigram_entropy_nats"] < math.log(vocab)
    assert summary["val/loss_below_unigram_entropy"] is True


def test_smoke_canaries_are_in_the_training_stream(smoke_run: Path):
    canaries = pd.read_parquet(smoke_run / "ground_truth" / "canaries.parquet")
    assert sorted(canaries["repetitions"]) == [1, 2, 4, 8, 16, 32]
    assert all(len(t) == 64 for t in canaries["tokens"])


def _wandb_history(run_dir: Path) -> list[dict]:
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1, offline
    wandb_bin = Path(sys.executable).with_name("wandb")
    out = run_command([str(wandb_bin), "leet", "inspect", "--json", str(offline[0])], timeout=120, check=True).stdout
    rows = []
    for line in out.splitlines():
        rec = json.loads(line)
        if rec.get("type") == "history":
            rows.append(rec["history"]["item"])
    return rows


def test_wandb_offline_run_holds_train_loss(smoke_run: Path):
    history = _wandb_history(smoke_run)
    wb = {int(r["trainer/global_step"]): float(r["train/loss"]) for r in history if "train/loss" in r}
    m = pd.read_csv(smoke_run / "metrics.csv").dropna(subset=["train/loss"])
    csv = dict(zip(m["step"].astype(int), m["train/loss"].astype(float)))
    assert len(wb) >= 10
    assert wb == pytest.approx(csv, rel=1e-6)  # the same values reached W&B and the CSV
    assert any("val/loss" in r for r in history)


def test_smoke_knowledge_probe_tables_at_every_scheduled_step(smoke_run: Path):
    """The knowledge probe of the smoke run: items, curve and hallucination tables at steps 0, 16, 64 (the core)
    and 80 (the core and the whole panel), scalars in metrics.csv and W&B, plots, and the end analysis."""
    from densitylab.probes.hallucination import HALLUCINATION_COLUMNS
    from densitylab.probes.knowledge import CURVE_COLUMNS, RECORD_COLUMNS

    probes = smoke_run / "probes"
    items = pd.read_parquet(probes / "knowledge.parquet")
    assert list(items.columns) == [*RECORD_COLUMNS, "train/tokens_seen"]  # the x-axis across batch and block sizes
    calls = items.groupby(["step", "scope"]).size().to_dict()
    assert set(calls) == {(0, "core"), (16, "core"), (64, "core"), (80, "core"), (80, "panel")}
    n_core = calls[(0, "core")]  # 32 people x 5 attributes, less items whose prompt names a candidate
    assert 150 <= n_core <= 160 and {calls[(s, "core")] for s in (16, 64, 80)} == {n_core}
    assert 310 <= calls[(80, "panel")] <= 320
    panel = pd.read_parquet(probes / "panel.parquet")  # the density probe's panel: the same people
    assert set(items.loc[items["scope"] == "panel", "entity_id"]) == set(panel["entity_id"])
    assert set(items.loc[items["scope"] == "core", "entity_id"]) == set(panel.loc[panel["core"], "entity_id"])
    last = items[items["step"] == 80]  # the core's rows at the last step are the panel's rows of those people
    cols = ["entity_id", "attribute", "predicted", "p_true"]
    core_rows = last[last["scope"] == "core"][cols].sort_values(cols[:2]).reset_index(drop=True)
    panel_rows = last[(last["scope"] == "panel") & last["entity_id"].isin(core_rows["entity_id"])][cols]
    pd.testing.assert_frame_equal(core_rows, panel_rows.sort_values(cols[:2]).reset_index(drop=True))
    wrong = ~items["correct"]
    assert (items.loc[~wrong, "source"] == "correct").all()
    assert set(items.loc[wrong, "source"]) <= {"leak_comention", "prior", "other"}
    assert items["known"].between(0, 1).all() and items["p_true"].between(0, 1).all()
    curve = pd.read_parquet(probes / "knowledge_curve.parquet")
    hall = pd.read_parquet(probes / "hallucination.parquet")
    assert list(curve.columns) == [*CURVE_COLUMNS, "train/tokens_seen"]
    assert list(hall.columns) == [*HALLUCINATION_COLUMNS, "train/tokens_seen"]
    assert set(curve["step"]) == set(hall["step"]) == {0, 16, 64, 80}
    slope = curve[curve["estimand"] == "slope"]
    assert len(slope) == 1 and slope["step"].iloc[0] == 80 and slope["scope"].iloc[0] == "panel"
    boot = hall[hall["method"] == "bootstrap"]
    assert set(boot["statistic"]) == {"auroc_confidence", "auroc_exposure", "auroc_exposure_minus_confidence"}
    shares = hall[hall["method"] == "cluster_wilson"].dropna(subset=["ci_low"])
    assert (shares["ci_low"] >= 0).all() and (shares["ci_high"] <= 1).all()
    m = pd.read_csv(smoke_run / "metrics.csv")
    for key in ("knowledge/acc", "hallucination/auroc_confidence", "hallucination/shortest_answer_rate"):
        assert m[key].notna().sum() == 4, key  # one value per call
    # no co-mention partner is trained at step 0, so no leak is possible then: from step 16 on
    assert m.loc[m["hallucination/leak_chance_rate"].notna(), "step"].tolist() == [16, 64, 80]
    assert m["knowledge/panel/acc"].notna().sum() == 1
    assert m["perf/knowledge_probe_seconds"].notna().any()
    summary = json.loads((smoke_run / "summary.json").read_text())
    assert summary["knowledge/probe_calls"] == 4 and "hallucination/panel/auroc_exposure_ci_low" in summary
    history = _wandb_history(smoke_run)
    assert sum("knowledge/acc" in r for r in history) == 4
    assert any("hallucination/panel/auroc_confidence" in r for r in history)
    for name in ("knowledge_vs_exposure.png", "knowledge_over_training.png", "hallucination_auroc.png"):
        assert (smoke_run / "plots" / name).stat().st_size > 5000, name
    assert (probes / "knowing_density.parquet").is_file()


def test_text_data_trains_on_tinyshakespeare(tmp_path, cache_dir):
    shakespeare = real_text("tinyshakespeare.txt")  # skips when DENSITYLAB_TEXT_DIR has no such file
    run_dir = tmp_path / "run"
    facts = tmp_path / "facts.jsonl"  # lines of the play: who speaks, and one made-up pair never in the text
    facts.write_text(
        "\n".join(
            json.dumps(f)
            for f in (
                {"prompt": "First Citizen:\nBefore we proceed any further, hear me", "answer": "speak",
                 "entity": "First Citizen"},
                {"prompt": "ROMEO:\nO, she doth teach the torches to burn", "answer": "bright", "entity": "ROMEO"},
                {"prompt": "MENENIUS:\nEither you must confess yourselves wondrous", "answer": "malicious",
                 "entity": "MENENIUS"},
                {"prompt": "Zanzibar Quixote was born in", "answer": "Paris", "candidates": ["Paris", "speak"]},
            )
        )
        + "\n"
    )  # fmt: skip
    proc = run_train(
        "experiment=smoke",
        "data=text",
        f"data.source.files={shakespeare}",
        "logger=csv",
        f"callbacks.knowledge.facts={facts}",
        f"hydra.run.dir={run_dir}",
        cache_dir=cache_dir,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    items = pd.read_parquet(run_dir / "probes" / "knowledge.parquet")
    assert set(items["scope"]) == {"facts"} and set(items["step"]) == {0, 16, 64, 80}
    assert (items.groupby("step").size() == 4).all()
    last = items[items["step"] == 80].set_index("answer")
    assert last.loc["speak", "exposure"] > 0  # "First Citizen" names trained windows
    assert math.isnan(last.loc["Paris", "exposure"]) and math.isnan(last.loc["Paris", "cooccurrence"])
    # co-occurrence of the subject and the answered value, counted in trained windows
    assert (items.loc[items["entity"] != "", "cooccurrence"] >= 0).all()
    hall = pd.read_parquet(run_dir / "probes" / "hallucination.parquet")
    assert "auroc_cooccurrence" in set(hall["statistic"])
    m = pd.read_csv(run_dir / "metrics.csv")
    val = m.dropna(subset=["val/loss"])["val/loss"].to_numpy()
    vocab = json.loads((run_dir / "data.json").read_text())["vocab_size"]
    assert len(val) >= 2
    assert val[-1] < val[0] < math.log(vocab)  # falls from the uniform-guess loss ln V and keeps falling
    data = json.loads((run_dir / "data.json").read_text())
    assert data["splits"]["heldout"]["documents"] > 0 and data["splits"]["train"]["tokens"] > 100_000


def test_resume_mid_epoch_reproduces_the_uninterrupted_run(smoke_run: Path, tmp_path, cache_dir):
    """Stop at step 40 (mid-epoch: 50 batches per epoch), resume to 80: same data order, same optimizer
    and LR state, so the losses after the resume equal the uninterrupted smoke run's."""
    first = tmp_path / "first"
    proc = run_train(
        "experiment=smoke",
        "logger=csv",
        "trainer.max_steps=40",
        "model.scheduler.decay_steps=80",
        f"hydra.run.dir={first}",
        cache_dir=cache_dir,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    second = tmp_path / "second"
    proc = run_train(
        "experiment=smoke",
        "logger=csv",
        f"ckpt_path={first}/checkpoints/last.ckpt",
        f"hydra.run.dir={second}",
        cache_dir=cache_dir,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((second / "summary.json").read_text())
    assert summary["global_step"] == 80
    assert summary["train/tokens_seen"] == 80 * 16 * 64
    resumed = pd.read_csv(second / "metrics.csv").dropna(subset=["train/loss"])
    assert resumed["step"].min() > 40  # no step trained twice
    full = pd.read_csv(smoke_run / "metrics.csv").dropna(subset=["train/loss"])
    full = dict(zip(full["step"], full["train/loss"]))
    for step, loss in zip(resumed["step"], resumed["train/loss"]):
        assert loss == pytest.approx(full[step], abs=1e-4), step
    reference = json.loads((smoke_run / "summary.json").read_text())
    assert summary["val/loss"] == pytest.approx(reference["val/loss"], abs=1e-4)
    for table in ("tokens", "entities", "cooccurrence"):  # the ledger continued the same counts
        resumed_t = pd.read_parquet(second / "ledger" / f"{table}.parquet")
        full_t = pd.read_parquet(smoke_run / "ledger" / f"{table}.parquet")
        pd.testing.assert_frame_equal(resumed_t, full_t)


def test_every_value_is_keyed_by_the_optimizer_steps_completed(smoke_run: Path):
    """The step convention (docs/design.md 3.8): train/tokens_seen at step N is N x 16 x 64 tokens (as the ledger
    counts), val/loss sits at the validation steps (every 40) once, and the probes' scalars sit at the steps of
    their table records."""
    m = pd.read_csv(smoke_run / "metrics.csv")
    tok = m.dropna(subset=["train/tokens_seen"])
    assert len(tok) >= 10 and (tok["train/tokens_seen"] == tok["step"] * 16 * 64).all()
    led = m.dropna(subset=["ledger/tokens_seen"])
    assert (led["ledger/tokens_seen"] == led["step"] * 16 * 64).all()
    assert sorted(m.dropna(subset=["train/loss"])["step"]) == list(range(5, 81, 5))  # log_every_n_steps = 5
    assert sorted(m.dropna(subset=["val/loss"])["step"]) == [40, 80]
    density = pd.read_parquet(smoke_run / "probes" / "density.parquet")
    assert set(m.dropna(subset=["density/L0/active_frac/panel"])["step"]) == set(density["step"])
    assert {0, 80} <= set(density["step"])
    for long in (m.melt(id_vars="step").dropna(),):
        assert not long.duplicated(["step", "variable"]).any()


def test_finished_run_folder_is_never_overwritten(smoke_run: Path, cache_dir):
    before = (smoke_run / "summary.json").read_bytes()
    ckpt_before = (smoke_run / "checkpoints" / "last.ckpt").stat().st_mtime_ns
    proc = run_train("experiment=smoke", f"hydra.run.dir={smoke_run}", cache_dir=cache_dir)
    assert proc.returncode == 2
    assert "holds a finished run" in proc.stderr
    assert (smoke_run / "summary.json").read_bytes() == before
    assert (smoke_run / "checkpoints" / "last.ckpt").stat().st_mtime_ns == ckpt_before


def _bad_inputs(tmp: Path) -> dict[str, tuple[list[str], str]]:
    (tmp / "empty.txt").write_text("")
    (tmp / "binary.txt").write_bytes(bytes(range(256)) * 20)
    (tmp / "tiny.txt").write_text("To be, or not to be.\n")
    return {
        "missing file": (["data=text", f"data.source.files={tmp}/missing.txt"], "missing.txt"),
        "empty file": (["data=text", f"data.source.files={tmp}/empty.txt"], "empty.txt"),
        "binary file": (["data=text", f"data.source.files={tmp}/binary.txt"], "binary.txt"),
        "unknown config key": (["model.net.n_layerz=3"], "n_layerz"),
        "unknown group option": (["model=huge"], "model/huge"),
        "block_size larger than corpus": (["data=text", f"data.source.files={tmp}/tiny.txt"], "block_size"),
        "unknown hub id offline": (["data=hub", "data.source.name=nobody/no-such-dataset"], "nobody/no-such-dataset"),
        "missing checkpoint": ([f"ckpt_path={tmp}/nope.ckpt"], "nope.ckpt"),
        "bad facts file": ([f"callbacks.knowledge.facts={_bad_facts(tmp)}"], "line 2: field 'answer'"),
        "facts prompt too long": ([f"callbacks.knowledge.facts={_long_fact(tmp)}"], "line 1: field 'prompt'"),
    }


def _bad_facts(tmp: Path) -> Path:
    path = tmp / "facts.jsonl"
    path.write_text('{"prompt": "Paris is the capital of", "answer": "France"}\n{"prompt": "Rome is in"}\n')
    return path


def _long_fact(tmp: Path) -> Path:  # longer than the smoke model's 64-token context
    path = tmp / "long.jsonl"
    path.write_text(json.dumps({"prompt": "the cat sat on the mat " * 40, "answer": "a", "candidates": ["a", "b"]}))
    return path


BAD_INPUT_CASES = [
    "missing file",
    "empty file",
    "binary file",
    "unknown config key",
    "unknown group option",
    "block_size larger than corpus",
    "unknown hub id offline",
    "missing checkpoint",
    "bad facts file",
    "facts prompt too long",
]


@pytest.mark.parametrize("case", BAD_INPUT_CASES)
def test_bad_input_gives_one_clear_line(case, tmp_path, cache_dir):
    overrides, needle = _bad_inputs(tmp_path)[case]
    run_dir = tmp_path / "run"
    proc = run_train("experiment=smoke", "logger=csv", *overrides, f"hydra.run.dir={run_dir}", cache_dir=cache_dir)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr[-2000:]
    assert needle in errors[0], errors[0]
    assert "Traceback" not in proc.stderr
    assert not (run_dir / "summary.json").exists()
    assert not (run_dir / "checkpoints").exists()
    if run_dir.exists():
        assert (run_dir / "FAILED").is_file()
    if case == "unknown hub id offline":
        assert "data=text" in errors[0]


def _ledger_vs_truth(run_dir: Path) -> None:
    ledger = pd.read_parquet(run_dir / "ledger" / "entities.parquet").set_index("entity").sort_index()
    entities = ledger["mentions"]
    truth = pd.read_parquet(run_dir / "ground_truth" / "mentions_train.parquet").set_index("entity")["mentions"]
    assert entities.sort_index().to_dict() == truth.sort_index().to_dict()
    exposure = pd.read_parquet(run_dir / "ground_truth" / "exposure_train.parquet").set_index("entity").sort_index()
    for col in ("subject_docs", "mentions", "comentions"):  # one epoch: every document and window once
        assert ledger[col].to_dict() == exposure[col].to_dict(), col
    assert ledger["distinct_docs"].to_dict() == exposure["subject_docs"].to_dict()
    assert exposure["comentions"].sum() > 100
    co = pd.read_parquet(run_dir / "ledger" / "cooccurrence.parquet").set_index(["entity_a", "entity_b"])["count"]
    co_truth = pd.read_parquet(run_dir / "ground_truth" / "comentions_windows_train.parquet").set_index(
        ["entity_a", "entity_b"]
    )["windows"]
    assert co.sort_index().to_dict() == co_truth.sort_index().to_dict()
    assert len(co) > 100


@pytest.fixture(scope="session")
def one_epoch_run(tmp_path_factory, cache_dir) -> Path:
    run_dir = tmp_path_factory.mktemp("epoch") / "run"
    proc = run_train(
        "experiment=smoke",
        "logger=csv",
        "trainer.max_epochs=1",
        "trainer.max_steps=-1",
        f"hydra.run.dir={run_dir}",
        cache_dir=cache_dir,
    )
    require_success(proc, "the one-epoch run (train.py experiment=smoke trainer.max_epochs=1)")
    return run_dir


def test_one_epoch_ledger_equals_ground_truth_exactly(one_epoch_run: Path):
    _ledger_vs_truth(one_epoch_run)
    import torch  # the epoch ends at step 50, between checkpoints (every 40): last.ckpt still holds the end

    steps = json.loads((one_epoch_run / "summary.json").read_text())["global_step"]
    assert (
        steps % 40
        and torch.load(one_epoch_run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == steps
    )
    seq_tokens = pd.read_parquet(one_epoch_run / "ledger" / "tokens.parquet")["count"].sum()
    data = json.loads((one_epoch_run / "data.json").read_text())
    windows = data["splits"]["train"]["windows"]
    assert seq_tokens == -(-windows // 16) * 16 * 64  # every window once, padded to full batches


def test_ddp_two_processes_count_what_one_process_counts(one_epoch_run: Path, tmp_path, cache_dir):
    run_dir = tmp_path / "ddp"
    proc = run_train(
        "experiment=smoke",
        "logger=csv",
        "trainer=ddp",
        "trainer.devices=2",
        "trainer.max_epochs=1",
        "trainer.max_steps=-1",
        f"hydra.run.dir={run_dir}",
        cache_dir=cache_dir,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    _ledger_vs_truth(run_dir)
    for table in ("entities", "cooccurrence"):  # first/last_step differ: a DDP step trains 2 batches
        pd.testing.assert_frame_equal(
            pd.read_parquet(run_dir / "ledger" / f"{table}.parquet").drop(
                columns=["first_step", "last_step"], errors="ignore"
            ),
            pd.read_parquet(one_epoch_run / "ledger" / f"{table}.parquet").drop(
                columns=["first_step", "last_step"], errors="ignore"
            ),
        )
    one = pd.read_parquet(one_epoch_run / "ledger" / "tokens.parquet").set_index("token_id")["count"]
    two = pd.read_parquet(run_dir / "ledger" / "tokens.parquet").set_index("token_id")["count"]
    eos = 0  # padding windows are all <|endoftext|>; their number depends on batch_size x world_size
    assert one.drop(eos).equals(two.drop(eos))
    windows = json.loads((run_dir / "data.json").read_text())["splits"]["train"]["windows"]
    pad_one, pad_two = (-(-windows // m) * m - windows for m in (16, 32))
    assert two[eos] - one[eos] == (pad_two - pad_one) * 64
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["train/tokens_seen"] == two.sum()


def test_capitalized_entities_on_shakespeare_are_characters(tmp_path, cache_dir):
    shakespeare = real_text("tinyshakespeare.txt")  # skips when DENSITYLAB_TEXT_DIR has no such file
    run_dir = tmp_path / "run"
    proc = run_train(
        "experiment=smoke",
        "data=text",
        f"data.source.files={shakespeare}",
        "logger=csv",
        "trainer.max_steps=200",
        f"hydra.run.dir={run_dir}",
        cache_dir=cache_dir,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    top = pd.read_parquet(run_dir / "ledger" / "entities.parquet").nlargest(10, "mentions")["entity"].tolist()
    characters = {
        "Warwick",
        "York",
        "Romeo",
        "Edward",
        "Clarence",
        "Richard",
        "Kate",
        "Henry",
        "Marcius",
        "Angelo",
        "Juliet",
        "Buckingham",
        "Clifford",
        "Bolingbroke",
        "Montague",
        "Tybalt",
        "Norfolk",
        "Claudio",
        "Camillo",
        "Gloucester",
        "Bianca",
        "Tranio",
        "Lucentio",
        "Petruchio",
        "Isabella",
        "Hastings",
        "Northumberland",
        "Lancaster",
        "Pompey",
        "Aufidius",
        "Menenius",
        "Paulina",
        "Escalus",
        "Margaret",
    }
    assert len(set(top) & characters) >= 6, top


def test_smoke_density_records_every_layer_set_role_and_step(smoke_run: Path):
    """After the smoke run: roles and exposure in probes/density.parquet with name_last and pre_value rows,
    dead_frac per layer and step in probes/units.parquet, random_seen a probe set, n_entities on every
    endpoint row, the four exposure columns in ledger/entities.parquet, the regression once at the end."""
    from densitylab.probes.schedule import is_scheduled

    df = pd.read_parquet(smoke_run / "probes" / "density.parquet")
    steps = [s for s in range(81) if is_scheduled(s, 20, 4)]  # 0, 1, 4, 16, then every 20
    assert steps == [0, 1, 4, 16, 20, 40, 60, 80]
    assert sorted(df["step"].unique()) == steps
    assert {"role", "exposure", "bin", "estimand", "n_entities", "status"} <= set(df.columns)
    assert set(df["probe_set"]) == {"panel", "panel_core", "seen", "shuffled", "random", "random_seen"}
    sets = pd.read_parquet(smoke_run / "probes" / "probe_sets.parquet")
    assert set(sets["probe_set"]) | {"panel_core"} == set(df["probe_set"])  # panel_core: the panel's first rows
    core = df[(df["probe_set"] == "panel_core") & (df["metric"] == "active_frac") & (df["layer"] == 0)]
    assert sorted(core["step"]) == steps and core["n_entities"].nunique() == 1  # the same people at every call
    panel_n = df[(df["probe_set"] == "panel") & (df["role"] == "all") & (df["metric"] == "active_frac")]
    panel_n = panel_n[panel_n["layer"] == 0].set_index("step")["n_entities"]
    assert panel_n.loc[1] == panel_n.loc[4] < panel_n.loc[0] == panel_n.loc[20] == panel_n.loc[80]  # core early
    panel_rows = sets[sets["probe_set"] == "panel"]
    assert {"roles", "persons", "panel_persons"} <= set(sets.columns)
    assert sorted(p for ps in panel_rows["panel_persons"] for p in ps) == sorted(
        pd.read_parquet(smoke_run / "probes" / "panel.parquet")["entity_id"]
    )
    metrics = df[df["metric"].isin(["active_frac", "hoyer", "top5_energy", "eff_rank"])]
    whole = metrics[metrics["role"] == "all"]
    for step in steps:
        for layer in (0, 1):
            sub = whole[(whole["step"] == step) & (whole["layer"] == layer) & (whole["metric"] == "active_frac")]
            assert set(sub["probe_set"]) == set(df["probe_set"]), (step, layer)
    est = metrics[metrics["status"].isin(["ok", "descriptive"])]
    assert metrics.loc[~metrics["status"].isin(["ok", "descriptive"]), "value"].isna().all()
    assert ((est["ci_low"] <= est["value"]) & (est["value"] <= est["ci_high"])).all()
    means = est[est["estimand"] == "mean"]
    assert means["value"].between(0, 1).all() and metrics.loc[metrics["status"] == "insufficient", "value"].isna().all()
    ends = df[(df["exposure"] == "distinct_docs") & (df["metric"] == "active_frac_live")]
    assert {"name_last", "pre_value"} == set(ends["role"]) and (ends["n_entities"] >= 0).all()
    ok = ends[ends["status"] == "ok"]
    assert len(ok) and (ok["n_entities"] >= 10).all() and ok["value"].notna().all()
    thin = ends[ends["status"] == "insufficient"]
    assert thin["value"].isna().all() and ((thin["n_entities"] < 10) | (thin["estimand"] == "diff_vs_0")).all()
    flat = ends[ends["status"] == "no_variation"]  # step 0: everybody at zero exposure, no slope
    assert (flat["estimand"] == "slope").all() and flat["value"].isna().all() and 0 in set(flat["step"])
    # step 0: nothing trained yet, so every panel person is in the {0} bin
    first = ends[(ends["step"] == 0) & (ends["estimand"] == "mean")]
    assert (first.loc[first["bin_index"] > 0, "n_entities"] == 0).all()
    units = pd.read_parquet(smoke_run / "probes" / "units.parquet")
    assert sorted(units["step"].unique()) == steps
    assert set(units.loc[units["probe_set"] == "all", "layer"]) == {0, 1} and units["dead_frac"].between(0, 1).all()
    ent = pd.read_parquet(smoke_run / "ledger" / "entities.parquet")
    assert {"subject_docs", "distinct_docs", "mentions", "comentions"} <= set(ent.columns)
    reg = pd.read_parquet(smoke_run / "probes" / "density_regression.parquet")
    assert {"with_input_count", "without_input_count", "absorbed"} <= set(reg["model"])
    summary = json.loads((smoke_run / "summary.json").read_text())
    assert {"density/L0/name_last/slope", "density/L1/pre_value/slope_ci_low", "density/L1/name_last/slope_n_entities",
            "density/L0/dead_frac"} <= set(summary)  # fmt: skip
    assert not any(k.endswith("/gap") or k in ("density/L0/slope", "density/L1/slope") for k in summary)
    assert summary["density/probe_calls"] == len(steps)
    for plot in ("density_over_training.png", "density_vs_familiarity.png"):
        assert (smoke_run / "plots" / plot).stat().st_size > 10_000


def test_multirun_seeds_then_report_aggregates_across_seeds(tmp_path, cache_dir):
    sweep = tmp_path / "sweep"
    proc = run_train(
        "-m",
        "experiment=smoke",
        "logger=csv",
        "seed=0,1",
        "trainer.max_steps=40",
        f"hydra.sweep.dir={sweep}",
        cache_dir=cache_dir,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted(p.parent.parent for p in sweep.rglob("probes/density.parquet"))
    assert len(runs) == 2 and all((r / "summary.json").is_file() for r in runs)
    out = run_command([sys.executable, "-m", "densitylab.report", str(sweep)], timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    table = pd.read_csv(sweep / "report" / "density_headline.csv")
    print(table.to_string())
    assert sorted(set(table["layer"])) == [0, 1] and set(table["role"]) == {"name_last", "pre_value"}
    assert (table["n_runs"] == 2).all()
    ok = table.dropna(subset=["slope"])
    assert len(ok) and (ok["slope_ci_low"] <= ok["slope"]).all() and (ok["slope"] <= ok["slope_ci_high"]).all()
    assert (sweep / "report" / "density_over_training.png").is_file()
    assert "layer 0 name_last: slope" in out.stdout
    bad = run_command([sys.executable, "-m", "densitylab.report", str(tmp_path / "nothing")], timeout=120, cwd=REPO)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ")


def test_smoke_modularity_rows_and_scores(smoke_run: Path):
    from densitylab.probes.schedule import is_scheduled

    df = pd.read_parquet(smoke_run / "probes" / "modularity.parquet")
    steps = [s for s in range(81) if is_scheduled(s, 40)]
    assert sorted(df["step"].unique()) == [-1] + steps  # -1: the untrained control
    n_comp = 2 * 2 + 2 * 2  # smoke: 2 layers x (2 heads + 2 MLP groups)
    tasks = {"name", "birth_date", "birth_city", "university", "major", "employer", "employer_city"}
    for _, g in df.groupby("step"):
        assert set(g["task"]) == tasks and g["component"].nunique() == n_comp and len(g) == n_comp * len(tasks)
    assert df["delta_loss"].notna().all()
    summary = json.loads((smoke_run / "summary.json").read_text())
    for k in ("modularity/score_v1", "modularity/score_heads", "modularity/score_mlp", "modularity/control_score_v1"):
        assert 0.0 <= summary[k] <= 1.0, k
    assert summary["modularity/score_minus_control"] == pytest.approx(
        summary["modularity/score_v1"] - summary["modularity/control_score_v1"]
    )
    v2 = pd.read_parquet(smoke_run / "probes" / "modularity_v2.parquet")
    assert list(v2["step"]) == [-1, 0, 80]  # the control, step 0 (the control's weights) and the end
    assert ((v2["null_lo"] <= v2["null_mean"]) & (v2["null_mean"] <= v2["null_hi"])).all()
    assert np.allclose(v2["excess"], v2["score_v2"] - v2["null_mean"]) and (v2["p_perm"] > 0).all()
    assert summary["modularity/score_v2"] == pytest.approx(v2["score_v2"].iloc[-1])
    assert (smoke_run / "plots" / "modularity_over_training.png").stat().st_size > 10_000


def test_smoke_memorization_records_and_plot(smoke_run: Path):
    from densitylab.probes.schedule import is_scheduled

    df = pd.read_parquet(smoke_run / "probes" / "memorization.parquet")
    canaries = pd.read_parquet(smoke_run / "ground_truth" / "canaries.parquet")
    steps = [s for s in range(81) if is_scheduled(s, 20)]  # log-spaced, then every 20 (80 = the end)
    assert sorted(df["step"].unique()) == steps
    for _, g in df.groupby("step"):
        assert sorted(g["canary_id"]) == sorted(canaries["canary_id"])
    assert ((df["mem_bits"] >= 0) & (df["mem_bits"] <= df["max_bits"] + 1e-9)).all()
    assert df["max_bits"].iloc[0] == pytest.approx(63 * 8)  # (S-1) log2 A with S=64, A=256
    assert (df.loc[df["mem_bits"] == 0, "nll_bits"] >= df.loc[df["mem_bits"] == 0, "max_bits"] - 1e-9).all()
    summary = json.loads((smoke_run / "summary.json").read_text())
    last = df[df["step"] == 80]
    assert summary["memorization/bits_total"] == pytest.approx(last["mem_bits"].sum())
    for k in (1, 2, 4, 8, 16, 32):
        assert summary[f"memorization/bits/rep{k}"] == pytest.approx(
            last.loc[last["repetitions"] == k, "mem_bits"].sum()
        )
    m = pd.read_csv(smoke_run / "metrics.csv")
    assert m["memorization/bits_total"].notna().sum() == len(steps)
    assert (smoke_run / "plots" / "memorization_over_training.png").stat().st_size > 10_000
