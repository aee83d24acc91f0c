"""`report study` on planted run folders: a known positive, a known negative and a known null effect come out as
supported, contradicted and negligible; the claims are read from the runs; bad inputs exit 2 with one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from densitylab.report.__main__ import main
from densitylab.report.study import STUDY_VERDICT_COLUMNS, study_report

CONF = Path(__file__).resolve().parents[1] / "conf"
GROUP = 20  # persons per Latin-square group
LEVEL_DOCS = {"high": 200, "low": 2, "zero": 0}


def _claims() -> dict:
    study = yaml.safe_load((CONF / "study" / "familiarity.yaml").read_text())
    study["group"] = "planted"
    return study


def _whole_set_rows(step: int, values: dict[str, float], layer: int = 1) -> list[dict]:
    return [
        {
            "step": step,
            "layer": layer,
            "probe_set": s,
            "role": "all",
            "exposure": "all",
            "bin": "all",
            "bin_index": -1,
            "metric": "active_frac_live",
            "estimand": "mean",
            "value": v,
            "ci_low": v - 0.002,
            "ci_high": v + 0.002,
            "n": 1000,
            "n_windows": 16,
            "n_entities": 0,
            "status": "descriptive",
        }
        for s, v in values.items()
    ]


def _run(root: Path, name: str, arm: str, k: int, rng, effects: dict) -> Path:
    """One planted run folder. Corpus k of a Latin square: group k high, k+1 low, k+2 zero exposure."""
    d = root / name
    (d / "probes").mkdir(parents=True)
    (d / "ground_truth").mkdir()
    study = _claims() | {"arm": arm}
    cfg = {
        "seed": k,
        "experiment_name": "planted",
        "study": study,
        "data": {"rank_seed": k if arm == "corpus" else None},
        "model": {"net": {"n_layer": 2}},
        "callbacks": {"knowledge": {"known_threshold": 0.5}},
    }
    (d / "hparams.yaml").write_text(yaml.safe_dump(cfg))
    (d / "metrics.csv").write_text("step,train/loss\n0,5.0\n100,2.0\n")
    (d / "summary.json").write_text(json.dumps({"status": "completed", "global_step": 100}))
    drop = effects["uniform_drop"] if arm == "uniform" else effects["text_drop"]
    dens = _whole_set_rows(0, {"seen": 0.5}) + _whole_set_rows(100, {"seen": 0.5 + drop + rng.normal(0, 0.003)})
    if arm != "corpus":
        pd.DataFrame(dens).to_parquet(d / "probes" / "density.parquet")
        return d
    n = 3 * GROUP
    group = np.repeat(np.arange(3), GROUP)
    level = np.array(["high", "low", "zero"])[(group - k) % 3]
    people = pd.DataFrame({"entity_id": np.arange(n), "study_group": group, "study_level": level})
    people = pd.concat(  # people outside the square are ignored
        [people, pd.DataFrame({"entity_id": [900, 901], "study_group": [-1, -1], "study_level": ["", ""]})]
    )
    people.to_parquet(d / "ground_truth" / "people.parquet")
    offset = np.random.default_rng(123).normal(0, 0.05, n)  # the same persons in every corpus
    shift = rng.normal(0, 0.02)
    effect = np.where(level == "high", effects["high"], np.where(level == "low", effects["low"], 0.0))
    rows = []
    for pos in range(4):  # four own positions per person and role
        for role in ("name_last", "pre_value"):
            y = 0.25 + offset + shift + effect + rng.normal(0, 0.004, n)
            rows.append(
                pd.DataFrame(
                    {
                        "step": 100,
                        "probe_set": "panel",
                        "row": np.arange(n) // 2,  # two persons' biographies per row
                        "pos": pos,
                        "role": role,
                        "person": np.arange(n),
                        "own": True,
                        "distinct_docs": [LEVEL_DOCS[x] for x in level],
                        "L0/active_frac_live": y,
                        "L1/active_frac_live": y,
                        "L1/hoyer": 1 - y,
                    }
                )
            )
    pos = pd.concat(rows)
    pos.to_parquet(d / "probes" / "density_positions.parquet")
    # the shuffled control permutes the panel's first 8 rows (callbacks.density.control_rows): planted against them
    first = float(pos.loc[pos["row"] < 8, "L1/active_frac_live"].mean())
    dens += _whole_set_rows(100, {"panel": 0.30, "shuffled": first + effects["ood"]})
    pd.DataFrame(dens).to_parquet(d / "probes" / "density.parquet")
    items = []
    for a in range(5):  # recall: a person's accuracy does not depend on exposure (a planted null)
        correct = (np.random.default_rng(7 + a).random(n) < 0.4) ^ (rng.random(n) < effects["flip"])
        items.append(
            pd.DataFrame(
                {
                    "step": 100,
                    "scope": "panel",
                    "entity_id": np.arange(n),
                    "attribute": str(a),
                    "correct": correct,
                    "exposure": [LEVEL_DOCS[x] for x in level],
                }
            )
        )
    pd.concat(items).to_parquet(d / "probes" / "knowledge.parquet")
    pd.DataFrame(
        [
            {
                "step": 100,
                "scope": "panel",
                "statistic": "auroc_exposure_minus_confidence",
                "bin": "all",
                "value": 0.08,
                "ci_low": 0.05,
                "ci_high": 0.11,
                "n_entities": n,
            }
        ]
    ).to_parquet(d / "probes" / "hallucination.parquet")
    pd.DataFrame(
        {
            "step": [0, 100],
            "score_v2": [0.10, 0.30],
            "null_mean": [0.10, 0.12],
            "excess": [0.0, 0.18 + k / 100],
            "p_perm": [0.5, 0.01],
        }
    ).to_parquet(d / "probes" / "modularity_v2.parquet")
    return d


def _study(tmp_path: Path, **effects) -> Path:
    eff = {"high": 0.05, "low": -0.05, "ood": -0.03, "text_drop": -0.10, "uniform_drop": -0.01, "flip": 0.05} | effects
    rng = np.random.default_rng(0)
    root = tmp_path / "multirun"
    for k in range(3):
        _run(root, str(k), "corpus", k, rng, eff)
    for s in range(2):
        _run(root, str(3 + s), "uniform", s, rng, eff)
    return root


def test_planted_positive_negative_and_null_effects_get_their_verdicts(tmp_path):
    # high - low = +0.10 (claim 1 predicts +): supported; low - zero = -0.05 (claim 2 predicts +): contradicted;
    # recall accuracy does not change with exposure, only noise (claim 5): negligible against its SESOI of 0.02
    root = _study(tmp_path)
    out, table = study_report([root], wandb_table=False)
    assert out == root / "report" / "study"
    assert list(table.columns) == STUDY_VERDICT_COLUMNS
    assert list(table["id"]) == list(range(1, 10))
    v = dict(zip(table["id"], table["verdict"]))
    assert v[1] == "supported" and v[2] == "contradicted" and v[5] == "negligible"
    assert v[3] == "supported" and v[4] == "supported" and v[6] == "supported" and v[7] == "supported"
    assert v[8] == "not measured" and v[9] == "not measured"
    t = table.set_index("id")
    assert t.loc[1, "estimate"] == pytest.approx(0.10, abs=0.005) and t.loc[1, "n_persons"] == 3 * GROUP
    assert t.loc[2, "estimate"] == pytest.approx(-0.05, abs=0.005) and t.loc[1, "n_runs"] == 3
    assert abs(t.loc[5, "estimate"]) < 0.01 and t.loc[5, "se"] > 1e-4  # no effect, but real noise (5% of answers flip)
    assert t.loc[3, "estimate"] == pytest.approx(-0.03, abs=1e-6)  # shuffled vs the same rows unshuffled
    assert t.loc[4, "estimate"] == pytest.approx(-0.09, abs=0.01) and t.loc[4, "n_runs"] == 5
    measured = t["verdict"] != "not measured"
    assert (t.loc[measured, "level"] >= 0.95).all() and t.loc[measured, "level"].max() > 0.99  # Holm over 7
    for f in ("verdicts.md", "verdicts.csv", "within_person.csv", "pairwise.csv", "controls.csv", "study.json"):
        assert (out / f).is_file(), f
    md = (out / "verdicts.md").read_text()
    assert "| 1. density_high_vs_low |" in md and "contradicted" in md
    pw = pd.read_csv(out / "pairwise.csv")
    one = pw[(pw["effect"] == "high_minus_low") & (pw["layer"] == 1) & (pw["role"] == "name_last")]
    one = one[one["metric"] == "active_frac_live"]
    assert len(one) == 3 and (one["n_persons"] == GROUP).all()  # one Latin-square group per pair of corpora
    # each pair carries its two models' shifts (the spread the pooled fit's run effects absorb); around the
    # square the shifts cancel, so their mean is the planted effect
    assert one["estimate"].std() > 0.01 and one["estimate"].mean() == pytest.approx(0.10, abs=0.005)
    wp = pd.read_csv(out / "within_person.csv")
    beta = wp[(wp["outcome"] == "density") & (wp["effect"] == "beta_log2_exposure") & (wp["metric"] == "hoyer")]
    assert len(beta) == 2 and (beta["n_persons"] == 3 * GROUP).all()


def test_a_planted_null_density_effect_is_negligible_not_supported(tmp_path):
    root = _study(tmp_path, high=0.0, low=0.0)
    _, table = study_report([root], wandb_table=False)
    v = dict(zip(table["id"], table["verdict"]))
    assert v[1] == "negligible" and v[2] == "negligible"


def test_claims_come_from_the_runs_and_must_agree(tmp_path):
    root = _study(tmp_path)
    cfg_path = root / "1" / "hparams.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["study"]["claims"][0]["sesoi"] = 0.5  # registered differently
    cfg_path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ValueError, match="other claims"):
        study_report([root], wandb_table=False)


def test_cli_study_writes_the_table_and_rejects_a_folder_without_a_study(tmp_path, capsys):
    root = _study(tmp_path)
    assert main(["study", str(root), "--no-wandb", "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "1. density_high_vs_low" in printed and "supported" in printed
    assert (tmp_path / "out" / "verdicts.csv").is_file()
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "metrics.csv").write_text("step,train/loss\n0,1.0\n")
    (plain / "hparams.yaml").write_text("seed: 0\n")
    assert main(["study", str(plain), "--no-wandb"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "study" in err[0]


def test_the_compare_page_shows_the_verdict_table(tmp_path):
    from densitylab.report.compare import compare_report

    root = _study(tmp_path)
    study_report([root], wandb_table=False)
    page = compare_report([root]).read_text()
    assert "Study verdicts" in page and "density_high_vs_low" in page and "contradicted" in page


def test_the_verdict_table_is_logged_to_wandb_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    root = _study(tmp_path)
    out, _ = study_report([root])
    runs = list((out / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1 and runs[0].stat().st_size > 0


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.update(alpha=1.5), r"study.alpha=1.5: expected a family-wise error rate in \(0, 1\)"),
        (lambda s: s["claims"][0].pop("sesoi"), r"study.claims\[0\] has no \['sesoi'\]"),
        (lambda s: s["claims"][1].update(id=1), r"study.claims\[1\].id=1: expected a unique claim id"),
        (lambda s: s["claims"][0]["endpoint"].update(role="name_frist"), r"endpoint.role='name_frist'"),
        (lambda s: s["claims"][6]["endpoint"].update(metric="score"), r"endpoint.metric='score'"),
        (lambda s: s["claims"][0].update(sesoi=0), r"study.claims\[0\].sesoi=0: expected a number > 0"),
        (lambda s: s["claims"][0].update(predicted_sign=2), r"predicted_sign=2: expected -1, 0 or \+1"),
    ],
)
def test_bad_claims_are_one_line_errors(tmp_path, capsys, edit, message):
    root = _study(tmp_path)
    for cfg_path in root.glob("*/hparams.yaml"):  # registered so in every run
        cfg = yaml.safe_load(cfg_path.read_text())
        edit(cfg["study"])
        cfg_path.write_text(yaml.safe_dump(cfg))
    assert main(["study", str(root), "--no-wandb"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert __import__("re").search(message, err[0]), err[0]


def test_two_multiruns_keep_their_runs_apart_and_failed_runs_are_left_out(tmp_path):
    a, b = _study(tmp_path / "a"), _study(tmp_path / "b")
    (a / "2" / "summary.json").write_text(json.dumps({"status": "failed"}))
    out, table = study_report([a, b], out_dir=tmp_path / "out", wandb_table=False)
    t = table.set_index("id")
    assert t.loc[1, "n_runs"] == 5  # 3 + 3 corpus runs, one failed: six models, never merged by folder name
    assert t.loc[4, "n_runs"] == 9
    runs = pd.read_csv(out / "runs.csv")
    assert runs["name"].is_unique and "a/multirun/2" in set(runs["name"])
    assert "Left out (not completed): a/multirun/2 (failed)" in (out / "verdicts.md").read_text()


def _capacity_multirun(root: Path, alpha: float, stopped_by: str = "plateau") -> Path:
    """Capacity runs whose memorized bits follow a saturating curve with capacity alpha x params (fp32)."""
    from densitylab.report.capacity import saturating

    i = 0
    for params in (20_000, 50_000, 100_000):
        for n in (64, 128, 256, 512, 1024, 2048, 4096):
            bits = n * 63 * 8.0
            d = root / str(i)
            d.mkdir(parents=True)
            (d / "metrics.csv").write_text("step,train/loss\n0,5.5\n")
            s = {
                "status": "completed",
                "precision": "32-true",
                "model/params": params,
                "data/n_sequences": n,
                "data/entropy_bits": bits,
                "memorization/bits_total": float(saturating(bits, alpha * params, 1.0)),
                "memorization/stopped_by": stopped_by if n == 4096 else "plateau",
            }
            (d / "summary.json").write_text(json.dumps(s))
            i += 1
    return root


def test_claim_8_reads_a_capacity_multirun_and_flags_compute_limited_runs(tmp_path):
    root = _study(tmp_path)
    cap = _capacity_multirun(tmp_path / "capacity", alpha=3.7)
    _, table = study_report([root], out_dir=tmp_path / "out", capacity=[cap], wandb_table=False)
    row = table.set_index("id").loc[8]
    assert row["estimate"] == pytest.approx(3.7 - 3.83, abs=0.05)  # alpha minus Morris et al.'s fp32 value
    assert row["verdict"] == "negligible" and row["n_runs"] == 21  # matches within +-0.5 bits/param
    limited = _capacity_multirun(tmp_path / "limited", alpha=3.7, stopped_by="limit")
    _, table = study_report([root], out_dir=tmp_path / "out2", capacity=[limited], wandb_table=False)
    assert table.set_index("id").loc[8, "verdict"] == "inconclusive (compute-limited)"


def test_claim_9_reads_a_depth_width_multirun(tmp_path):
    root = _study(tmp_path)
    dw = tmp_path / "depth_width"
    rng = np.random.default_rng(0)
    for i, (n_layer, seed) in enumerate((n, s) for n in (2, 4, 8, 16) for s in (0, 1)):
        d = dw / str(i)
        d.mkdir(parents=True)
        (d / "metrics.csv").write_text("step,train/loss\n0,5.5\n")
        (d / "hparams.yaml").write_text(yaml.safe_dump({"seed": seed, "model": {"net": {"n_layer": n_layer}}}))
        loss = 2.0 - 0.05 * np.log2(n_layer) + rng.normal(0, 0.005)  # deeper is better by 0.05 nats per doubling
        (d / "summary.json").write_text(json.dumps({"status": "completed", "val/loss": loss}))
    _, table = study_report([root], out_dir=tmp_path / "out", depth_width=[dw], wandb_table=False)
    row = table.set_index("id").loc[9]
    assert row["estimate"] == pytest.approx(-0.05, abs=0.01) and row["n_runs"] == 8
    assert row["verdict"] == "supported"
