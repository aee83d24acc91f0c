"""The familiarity study end to end at smoke size: ``train.py -m experiment=familiarity_study_smoke`` (seven arms),
then ``report study``. Marked slow; CI runs it (a few minutes on 2 CPU cores)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import require_success, run_command, run_train_py

REPO = Path(__file__).resolve().parents[1]
ARMS = ["corpus0", "corpus1", "corpus2", "uniform0", "uniform1", "swiglu", "long"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def study(tmp_path_factory, cache_dir) -> dict[str, Path]:
    """The smoke study's multirun folder (W&B offline): arm -> run folder, plus ``"sweep"``."""
    sweep = tmp_path_factory.mktemp("study") / "sweep"
    proc = run_train_py(
        "-m", "experiment=familiarity_study_smoke", f"hydra.sweep.dir={sweep}", cache_dir=cache_dir, timeout=900
    )
    require_success(proc, "the smoke study (train.py -m experiment=familiarity_study_smoke)")
    runs = {}
    for d in sorted(p for p in sweep.iterdir() if (p / "hparams.yaml").is_file()):
        overrides = yaml.safe_load((d / ".hydra" / "overrides.yaml").read_text())
        runs[next(o.split("=", 1)[1] for o in overrides if o.startswith("study_arm="))] = d
    assert sorted(runs) == sorted(ARMS), sorted(runs)
    return runs | {"sweep": sweep}


def _people(run: Path) -> pd.DataFrame:
    return pd.read_parquet(run / "ground_truth" / "people.parquet").set_index("entity_id")


def test_corpora_share_people_tokenizer_and_heldout_biographies_but_not_ranks(study):
    runs = [study[f"corpus{k}"] for k in range(3)]
    people = [_people(r) for r in runs]
    attrs = ["entity", "gender", "birth_date", "birth_city", "university", "major", "employer", "employer_city"]
    for p in people[1:]:
        pd.testing.assert_frame_equal(p[attrs], people[0][attrs])  # the same people and attribute values
    top = [set(p.index[p["rank"].between(1, 5)]) for p in people]
    assert top[1] != top[2] and top[0] != top[1]  # different top-ranked people
    tok = [(r / "tokenizer.json").read_bytes() for r in runs]
    assert tok[0] == tok[1] == tok[2]  # one tokenizer for every permutation
    # the panel's study persons follow the Latin square: in corpus k group k is high, k+1 low, k+2 zero
    for k, p in enumerate(people):
        s = p[p["study_group"] >= 0]
        assert len(s) == 24
        level = np.array(["high", "low", "zero"])[(s["study_group"].to_numpy() - k) % 3]
        assert (s["study_level"].to_numpy() == level).all()
        assert (s.loc[s["study_level"] == "low", "planned_docs"] == 2).all()
        assert (s.loc[s["study_level"] == "zero", "planned_docs"] == 0).all()
        assert (s.loc[s["study_level"] == "high", "planned_docs"] >= 5).all()
        panel = pd.read_parquet(runs[k] / "probes" / "panel.parquet")
        assert set(s.index) <= set(panel["entity_id"])
        # each is probed on its own held-out biography: familiar ones from heldout, zero-exposure ones from unfamiliar
        split = panel.set_index("entity_id").loc[s.index, "split"].to_numpy()
        assert (split == np.where(s["study_level"] == "zero", "unfamiliar", "heldout")).all()
    # ... in the same probe row (same row-mates, same offset) in every corpus, whatever their level
    inputs = []
    for r in runs:
        panel = pd.read_parquet(r / "probes" / "panel.parquet").set_index("entity_id")
        sets = pd.read_parquet(r / "probes" / "probe_sets.parquet")
        tokens = sets[sets["probe_set"] == "panel"].set_index("row")["tokens"]
        study_ids = sorted(panel.index[panel["study_group"] >= 0])
        inputs.append({e: list(tokens.loc[panel.loc[e, "row"]]) for e in study_ids})
    assert inputs[0] == inputs[1] == inputs[2]


def test_the_ledger_counts_the_latin_square_levels(study):
    for k in range(3):
        run = study[f"corpus{k}"]
        pos = pd.read_parquet(run / "probes" / "density_positions.parquet")
        pos = pos[(pos["probe_set"] == "panel") & pos["own"]]
        p = _people(run)
        level = p.loc[pos["person"], "study_level"].to_numpy()
        dd = pos["distinct_docs"].to_numpy()
        assert (dd[level == "zero"] == 0).all() and (dd[level == "low"] == 2).all() and (dd[level == "high"] >= 5).all()


def test_report_study_writes_all_nine_claims_with_verdicts(study):
    out = run_command([sys.executable, "-m", "densitylab.report", "study", str(study["sweep"])], timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    table = pd.read_csv(study["sweep"] / "report" / "study" / "verdicts.csv")
    print(table[["claim", "estimate", "ci_low", "ci_high", "level", "n_persons", "n_runs", "verdict"]].to_string())
    assert list(table["id"]) == list(range(1, 10))
    first = table[table["id"] <= 5]
    assert first["estimate"].notna().all() and first["ci_low"].notna().all() and first["ci_high"].notna().all()
    assert (first["verdict"] != "not measured").all()
    assert (first["ci_low"] <= first["estimate"]).all() and (first["estimate"] <= first["ci_high"]).all()
    assert set(table.loc[table["id"] >= 8, "verdict"]) == {"not measured"}  # no capacity / depth_width multirun
    assert (table.loc[table["id"].isin([1, 2, 5]), "n_persons"] == 24).all()
    assert (table.loc[table["id"].isin([1, 2, 5]), "n_runs"] == 3).all()
    assert table.loc[table["id"] == 4, "n_runs"].item() == 5  # three text runs and two uniform ones
    md = (study["sweep"] / "report" / "study" / "verdicts.md").read_text()
    assert md.count("\n| ") >= 10
    within = pd.read_csv(study["sweep"] / "report" / "study" / "within_person.csv")
    assert set(within["role"]) >= {"name_last", "pre_value"} and set(within["layer"]) >= {0, 1}
    controls = pd.read_csv(study["sweep"] / "report" / "study" / "controls.csv")
    assert {"swiglu", "long", "corpus"} <= set(controls["arm"])
    # the verdict table went to W&B (offline), in the study's group
    wb = list((study["sweep"] / "report" / "study" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(wb) == 1
    summary = json.loads((study["sweep"] / "report" / "study" / "study.json").read_text())
    assert len(summary["verdicts"]) == 9 and len(summary["runs"]) == 7


def test_every_arm_of_a_study_shares_one_wandb_group_and_the_study_tag(study):
    groups, arms = set(), set()
    for arm in ARMS:
        cfg = yaml.safe_load((study[arm] / "hparams.yaml").read_text())
        groups.add(cfg["logger"]["wandb"]["group"])
        arms.add(cfg["study"]["arm"])
        assert "study" in cfg["tags"]
    assert len(groups) == 1 and groups.pop().endswith(study["sweep"].name)
    assert arms == {"corpus", "uniform", "swiglu", "long"}
