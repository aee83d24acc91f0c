"""Probe checkpoints (``checkpoints.keep=probe_steps``) and the re-measurement of a finished run (``densitylab probe``).

The slow tests train one smoke run with probe checkpoints, then re-run its probes over them: for the unchanged
probes every table must equal the one recorded during training, bit for bit (same batch size, threads, device).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import REPO, require_success, run_command, run_train_py

from densitylab.callbacks.probe_checkpoint import ProbeCheckpoint, probe_checkpoint_name
from densitylab.errors import ConfigError
from densitylab.reprobe import kept_checkpoints, main, split_arguments

PROBE_TABLES = ("density", "knowledge_curve", "modularity", "memorization")


# ---------------------------------------------------------------------------------------------------- fast
def test_keep_must_be_last_or_probe_steps():
    with pytest.raises(ConfigError, match=r"checkpoints.keep='all': expected one of \('last', 'probe_steps'\)"):
        ProbeCheckpoint("/tmp/x", keep="all")
    assert not ProbeCheckpoint(None, keep="last").enabled
    assert ProbeCheckpoint("/tmp/x", keep="probe_steps").enabled
    assert probe_checkpoint_name(16) == "step000016.ckpt"


def test_split_arguments_separates_probe_names_from_overrides():
    probes, overrides = split_arguments(["probes=density,knowledge", "callbacks.density.batch_size=8", "+x.y=1"])
    assert probes == ["density", "knowledge"]
    assert overrides == ["callbacks.density.batch_size=8", "+x.y=1"]
    assert split_arguments([]) == (None, [])
    with pytest.raises(ConfigError, match="expected probes=NAME"):
        split_arguments(["density"])
    with pytest.raises(ConfigError, match="expected probes=NAME"):
        split_arguments(["probes="])


def test_kept_checkpoints_one_per_step_probe_checkpoint_preferred(tmp_path):
    (tmp_path / "checkpoints" / "probe").mkdir(parents=True)

    def save(path: Path, step: int) -> None:
        torch.save({"global_step": step, "state_dict": {}}, path)

    save(tmp_path / "checkpoints" / "step000040.ckpt", 40)
    save(tmp_path / "checkpoints" / "last.ckpt", 40)
    for s in (0, 16, 40):
        save(tmp_path / "checkpoints" / "probe" / probe_checkpoint_name(s), s)
    (tmp_path / "checkpoints" / "probe" / "step000050.ckpt").write_bytes(b"torn")  # unreadable: left out
    kept = kept_checkpoints(tmp_path)
    assert [s for s, _ in kept] == [0, 16, 40]
    assert all(p.parent.name == "probe" for _, p in kept)


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_bad_run_folders_exit_2_with_one_line(tmp_path, capsys):
    assert main([str(tmp_path / "nope")]) == 2
    assert "is not a folder" in _one_error_line(capsys)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(empty)]) == 2
    assert "has no checkpoint" in _one_error_line(capsys)
    (empty / "checkpoints").mkdir()
    torch.save({"global_step": 3, "state_dict": {}}, empty / "checkpoints" / "last.ckpt")
    assert main([str(empty), "--out", str(tmp_path / "o")]) == 2
    assert "has no .hydra/config.yaml" in _one_error_line(capsys)
    assert not (tmp_path / "o").exists()
    assert main([str(empty), "density"]) == 2
    assert "expected probes=NAME" in _one_error_line(capsys)


def test_an_older_run_without_the_checkpoints_keys_still_resumes(tmp_path):
    from omegaconf import OmegaConf

    from densitylab.runfolder import config_difference

    (tmp_path / ".hydra").mkdir()
    saved = {"seed": 0, "callbacks": {"ledger": {"top_k": 20}}}  # launched before checkpoints.keep existed
    (tmp_path / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(saved))
    now = OmegaConf.create(
        {**saved, "checkpoints": {"keep": "last"}, "callbacks": {**saved["callbacks"], "probe_checkpoint": {
            "_target_": "densitylab.callbacks.ProbeCheckpoint", "keep": "${checkpoints.keep}"}}}
    )  # fmt: skip
    assert config_difference(tmp_path, now) is None
    now.checkpoints.keep = "probe_steps"  # a different setting than the run had is still a difference
    assert config_difference(tmp_path, now).startswith("checkpoints.keep='probe_steps'")


def test_a_probe_checkpoint_cannot_resume_training(tmp_path):
    from densitylab.preflight import load_checkpoint

    path = tmp_path / "step000004.ckpt"
    torch.save({"global_step": 4, "state_dict": {}, "pytorch-lightning_version": "2", "hyper_parameters": {"net": {}},
                "densitylab": {"kind": "probe", "probes": {}}}, path)  # fmt: skip
    with pytest.raises(ConfigError, match="is a probe checkpoint .* cannot resume training"):
        load_checkpoint(path)


def test_remeasurement_folders_are_never_runs_of_a_multirun(tmp_path):
    from densitylab.report.compare import find_run_dirs
    from densitylab.report.density import find_runs
    from densitylab.runfolder import is_remeasurement

    for d in ("0", "1", "elsewhere", "0/reprobe/a", ".x.partial-1234abcd"):
        (tmp_path / d / "probes").mkdir(parents=True)
        (tmp_path / d / "probes" / "density.parquet").write_bytes(b"")
        (tmp_path / d / "metrics.csv").write_text("step\n")
    (tmp_path / "elsewhere" / "reprobe.json").write_text("{}")  # a re-measurement written with --out elsewhere
    assert is_remeasurement(tmp_path / "elsewhere", tmp_path)
    assert not is_remeasurement(tmp_path / "0", tmp_path)
    assert [p.name for p in find_runs([tmp_path])] == ["0", "1"]
    assert [p.name for p in find_run_dirs([tmp_path])] == ["0", "1"]


# ---------------------------------------------------------------------------------------------------- slow
@pytest.fixture(scope="module")
def kept_run(tmp_path_factory, cache_dir) -> Path:
    """A smoke run (W&B offline) with ``checkpoints.keep=probe_steps``."""
    run_dir = tmp_path_factory.mktemp("kept") / "run"
    proc = run_train_py(
        "experiment=smoke", "checkpoints.keep=probe_steps", f"hydra.run.dir={run_dir}", cache_dir=cache_dir
    )
    require_success(proc, "the smoke run with checkpoints.keep=probe_steps")
    return run_dir


def _reprobe(*args: str, cache_dir: Path):
    env = dict(os.environ, WANDB_MODE="offline", DENSITYLAB_CACHE_DIR=str(cache_dir))
    return run_command(
        [sys.executable, "-m", "densitylab.reprobe", *args], cwd=REPO, env=env, timeout=600, what="densitylab probe"
    )


def _steps(run: Path, table: str) -> set[int]:
    return {int(s) for s in pd.read_parquet(run / "probes" / f"{table}.parquet")["step"].unique() if s >= 0}


@pytest.mark.slow
def test_probe_checkpoints_at_every_probe_step(kept_run):
    folder = kept_run / "checkpoints" / "probe"
    steps = {int(p.stem[4:]) for p in folder.glob("step*.ckpt")}
    probed = set().union(*(_steps(kept_run, t) for t in PROBE_TABLES))
    assert steps == probed | {0}
    full = (kept_run / "checkpoints" / "last.ckpt").stat().st_size
    for step in sorted(steps):
        path = folder / probe_checkpoint_name(step)
        assert path.stat().st_size < 0.45 * full  # no optimizer state: about a third of a full checkpoint
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        assert ckpt["global_step"] == step and "optimizer_states" not in ckpt
        assert ckpt["densitylab"]["kind"] == "probe"
        assert "LedgerCallback" in ckpt["callbacks"]
        ran = set(ckpt["densitylab"]["probes"])
        expected = {name for name, table in zip(("density", "knowledge", "modularity", "memorization"), PROBE_TABLES)
                    if step in _steps(kept_run, table)}  # fmt: skip
        assert ran == expected, step
    last = torch.load(folder / probe_checkpoint_name(max(steps)), map_location="cpu", weights_only=True)
    trained = torch.load(kept_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    for k, v in trained["state_dict"].items():
        assert torch.equal(v, last["state_dict"][k]), k
    assert last["densitylab"]["probes"]["knowledge"]["final"] is True  # the end-of-training call


@pytest.mark.slow
def test_reprobe_reproduces_the_training_tables_bitwise(kept_run, cache_dir, tmp_path):
    out = tmp_path / "again"
    proc = _reprobe(str(kept_run), "--out", str(out), cache_dir=cache_dir)
    require_success(proc, "densitylab probe")
    assert f"into {out}" in proc.stdout
    compared = 0
    for path in sorted((kept_run / "probes").glob("*.parquet")):
        if path.name == "timing.parquet":  # seconds per call: both runs have one, never equal
            assert (out / "probes" / path.name).is_file()
            continue
        trained = pd.read_parquet(path)
        again = pd.read_parquet(out / "probes" / path.name)
        pd.testing.assert_frame_equal(again, trained, check_exact=True, obj=path.name)
        compared += 1
    assert compared >= 10
    record = json.loads((out / "reprobe.json").read_text())
    assert record["probes"] == ["density", "knowledge", "modularity", "memorization"]
    assert record["measured_steps"]["density"] == sorted(_steps(kept_run, "density"))
    for png in ("density_over_training.png", "knowledge_vs_exposure.png", "modularity_over_training.png"):
        assert (out / "plots" / png).stat().st_size > 0
    metrics = pd.read_csv(out / "metrics.csv")
    assert "perf/density_probe_seconds" in metrics.columns
    assert list((out / "wandb").glob("offline-run-*"))  # its own W&B run
    assert not list(out.parent.glob(".again.partial-*"))
    for name in ("config.yaml", "hparams.yaml"):  # they name the final folder, not the temporary one
        text = (out / name).read_text()
        assert ".partial-" not in text and str(out) in text, name


@pytest.mark.slow
def test_reprobe_changed_schedule_and_one_probe(kept_run, cache_dir, tmp_path):
    out = tmp_path / "density40"
    proc = _reprobe(str(kept_run), "probes=density", "callbacks.density.every_n_steps=40", "--out", str(out),
                    cache_dir=cache_dir)  # fmt: skip
    require_success(proc, "densitylab probe probes=density")
    assert sorted(p.name for p in (out / "probes").glob("*.parquet")) == sorted(
        [
            "density.parquet",
            "density_positions.parquet",
            "density_regression.parquet",
            "panel.parquet",
            "probe_sets.parquet",
            "timing.parquet",
            "units.parquet",
        ]  # fmt: skip
    )
    again = pd.read_parquet(out / "probes" / "density.parquet")
    trained = pd.read_parquet(kept_run / "probes" / "density.parquet")
    # log-spaced steps (base 4) and multiples of 40 that were kept; 20 and 60 are no longer scheduled
    assert sorted(again["step"].unique()) == [0, 1, 4, 16, 40, 80]
    for step in (0, 40, 80):  # the whole panel at both cadences: the same rows
        a = again[again["step"] == step].reset_index(drop=True)
        b = trained[trained["step"] == step].reset_index(drop=True)
        pd.testing.assert_frame_equal(a, b, check_exact=True, obj=f"density at step {step}")


@pytest.mark.slow
def test_reprobe_bad_inputs_leave_nothing(kept_run, cache_dir, tmp_path, capsys):
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("x")
    assert main([str(kept_run), "--out", str(full)]) == 2
    assert "is not empty" in _one_error_line(capsys)
    assert [p.name for p in full.iterdir()] == ["keep.txt"]
    out = tmp_path / "o"
    for args, message in (
        (["probes=nope"], "probes=nope: not an enabled probe of this run"),
        (["callbacks.density.no_such_key=1"], "the run's config has no key 'callbacks.density.no_such_key'"),
    ):
        assert main([str(kept_run), *args, "--out", str(out)]) == 2
        assert message in _one_error_line(capsys)
        assert not out.exists()
    assert not list(tmp_path.glob(".o.partial-*"))
    assert not (kept_run / "reprobe").exists()
    before = {p: p.stat().st_mtime_ns for p in kept_run.rglob("*") if p.is_file()}
    for target, message in (
        (kept_run, "is the run folder or holds it"),
        (kept_run.parent, "is the run folder or holds it"),
        (kept_run / "probes", "is inside the run folder"),
        (full, "is not an earlier re-measurement"),
    ):
        assert main([str(kept_run), "--out", str(target), "--force"]) == 2
        assert message in _one_error_line(capsys)
    assert {p: p.stat().st_mtime_ns for p in kept_run.rglob("*") if p.is_file()} == before
    assert [p.name for p in full.iterdir()] == ["keep.txt"]


@pytest.mark.slow
def test_reprobe_knowledge_alone_uses_the_density_panel(kept_run, cache_dir, tmp_path):
    out = tmp_path / "knowledge"
    require_success(_reprobe(str(kept_run), "probes=knowledge", "--out", str(out), cache_dir=cache_dir), "probe")
    for table in ("knowledge", "knowledge_curve", "hallucination"):
        again = pd.read_parquet(out / "probes" / f"{table}.parquet")
        trained = pd.read_parquet(kept_run / "probes" / f"{table}.parquet")
        pd.testing.assert_frame_equal(again, trained, check_exact=True, obj=table)
    assert not (out / "probes" / "density.parquet").exists()  # set up for its panel, not measured


@pytest.mark.slow
def test_probe_checkpoints_of_a_killed_and_resumed_run_equal_an_uninterrupted_one(kept_run, cache_dir, tmp_path):
    run = tmp_path / "run"
    common = ("experiment=smoke", "checkpoints.keep=probe_steps", f"hydra.run.dir={run}")
    proc = run_train_py(*common, cache_dir=cache_dir, env={"DENSITYLAB_FAULT_KILL_AT_STEP": "50"})
    assert proc.returncode in (-9, 137), proc.stderr[-2000:]
    stale = run / "checkpoints" / "probe" / "step000070.ckpt"  # as if an earlier attempt had gone further
    torch.save({"global_step": 70, "state_dict": {}}, stale)
    require_success(run_train_py(*common, "ckpt_path=last", cache_dir=cache_dir), "resuming with ckpt_path=last")
    mine = sorted(p.name for p in (run / "checkpoints" / "probe").glob("*.ckpt"))
    assert mine == sorted(p.name for p in (kept_run / "checkpoints" / "probe").glob("*.ckpt"))
    for name in mine:
        a = torch.load(run / "checkpoints" / "probe" / name, map_location="cpu", weights_only=True)
        b = torch.load(kept_run / "checkpoints" / "probe" / name, map_location="cpu", weights_only=True)
        assert a["densitylab"] == b["densitylab"], name
        for k, v in b["state_dict"].items():
            assert torch.equal(a["state_dict"][k], v), (name, k)
