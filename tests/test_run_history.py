"""The run folder as the record of a run: ``metrics.csv`` and W&B history across attempts
(``densitylab.loggers``), which launches a folder accepts (``densitylab.runfolder``), and the step convention.

All in-process and fast; the kill -9 / resume end-to-end case is in ``test_reliability.py``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from densitylab import loggers as dl_loggers
from densitylab.errors import ConfigError
from densitylab.loggers import CSVLogger, WandbLogger, logged_keys, read_metrics_rows
from densitylab.run import mark_failed
from densitylab.runfolder import (
    attempt_subdir,
    check_relaunch,
    clear_failed,
    config_difference,
    folder_state,
    newest_checkpoint,
)


def _csv(run: Path) -> pd.DataFrame:
    return pd.read_csv(run / "metrics.csv")


def _pairs(df: pd.DataFrame) -> list[tuple[int, str]]:
    long = df.melt(id_vars="step").dropna()
    return sorted(zip(long["step"].astype(int), long["variable"]))


def _logger(run: Path) -> CSVLogger:
    return CSVLogger(save_dir=str(run), name="", version="")


# ----------------------------------------------------------------------------- metrics.csv
def test_csv_logger_appends_to_an_existing_file_instead_of_deleting_it(tmp_path):
    first = _logger(tmp_path)
    first.log_metrics({"train/loss": 2.0}, step=5)
    first.log_metrics({"train/loss": 1.5}, step=10)
    first.save()
    second = _logger(tmp_path)  # Lightning's CSVLogger deletes metrics.csv here
    second.log_metrics({"train/loss": 1.2, "val/loss": 1.4}, step=15)  # a new column: the header is rewritten
    second.save()
    df = _csv(tmp_path)
    assert df["step"].tolist() == [5, 10, 15]
    assert df["train/loss"].tolist() == [2.0, 1.5, 1.2]
    assert df["val/loss"].isna().tolist() == [True, True, False]


def test_csv_logger_keeps_each_step_metric_pair_once(tmp_path):
    lg = _logger(tmp_path)
    lg.log_metrics({"train/loss": 2.0, "epoch": 0}, step=40)
    lg.log_metrics({"val/loss": 1.9, "epoch": 0}, step=40)  # epoch at 40 again: left out
    lg.log_metrics({"val/loss": 1.8}, step=40)  # the same pair again (a second validation): the first is kept
    lg.save()
    df = _csv(tmp_path)
    pairs = _pairs(df)
    assert pairs == sorted({(40, "train/loss"), (40, "epoch"), (40, "val/loss")})
    assert df["val/loss"].dropna().tolist() == [1.9]


def test_resume_at_drops_the_rows_after_the_checkpoint_step_and_the_resumed_rows_replace_them(tmp_path):
    lg = _logger(tmp_path)
    for step in (5, 10, 15, 20):
        lg.log_metrics({"train/loss": 10.0 - step}, step=step)
    lg.save()
    again = _logger(tmp_path)
    again.resume_at(10)  # the checkpoint was at step 10: steps 15 and 20 are trained (and logged) again
    assert _csv(tmp_path)["step"].tolist() == [5, 10]
    for step in (15, 20):
        again.log_metrics({"train/loss": 10.0 - step}, step=step)
    again.log_metrics({"train/loss": 99.0}, step=10)  # step 10 is already recorded: not written twice
    again.save()
    df = _csv(tmp_path)
    assert df["step"].tolist() == [5, 10, 15, 20]
    assert df["train/loss"].tolist() == [5.0, 0.0, -5.0, -10.0]


@pytest.mark.parametrize("torn", ["5,1.0\n10,0.", "5,1.0\n10,0.5,7\n12"], ids=["mid-value", "short-row"])
def test_a_torn_last_line_is_repaired_when_the_file_is_reopened(tmp_path, torn):
    path = tmp_path / "metrics.csv"
    path.write_text("step,train/loss\n" + torn)
    header, rows = read_metrics_rows(path)
    assert header == ["step", "train/loss"] and rows[0] == {"step": "5", "train/loss": "1.0"}
    lg = _logger(tmp_path)
    lg.log_metrics({"train/loss": 0.25}, step=15)
    lg.save()
    text = path.read_text()
    assert text.endswith("\n")
    assert list(csv.reader(text.splitlines())) == [["step", "train/loss"], ["5", "1.0"], ["15", "0.25"]]


def test_a_file_torn_inside_its_header_is_started_again(tmp_path):
    (tmp_path / "metrics.csv").write_text("step,tra")
    lg = _logger(tmp_path)
    lg.log_metrics({"train/loss": 0.5}, step=1)
    lg.save()
    assert _csv(tmp_path).to_dict("records") == [{"step": 1, "train/loss": 0.5}]


# ----------------------------------------------------------------------------- W&B attempts
def test_logged_keys_reads_steps_and_metric_names_from_wandb_history_rows():
    history = [
        {"_step": 0, "_runtime": 1.0, "trainer/global_step": 0, "density/L0/gap": 0.1},
        {"_step": 1, "trainer/global_step": 0, "modularity/heatmap._type": "image-file", "modularity/heatmap.size": 9},
        {"_step": 2, "trainer/global_step": 5, "train/loss": 3.0},
        {"_step": 3, "no_step": 1.0},
    ]  # fmt: skip
    assert logged_keys(history) == {(0, "density/L0/gap"), (0, "modularity/heatmap"), (5, "train/loss")}


def test_a_resumed_wandb_attempt_skips_what_earlier_attempts_logged_and_backfills_the_rest(tmp_path, monkeypatch):
    """The killed attempt's W&B log lost step 10 (the process died before W&B wrote it) but logged step 15;
    metrics.csv holds 5 and 10. The resumed attempt (from step 10) logs 10 from the CSV, never 5 or 15 again."""
    run = tmp_path
    (run / "wandb" / "offline-run-20260101_000000-aaaa").mkdir(parents=True)
    (run / "metrics.csv").write_text("step,train/loss\n5,3.0\n10,2.5\n15,2.0\n")
    earlier = [{"trainer/global_step": 5, "train/loss": 3.0}, {"trainer/global_step": 15, "train/loss": 2.0}]
    monkeypatch.setattr(dl_loggers, "wandb_history", lambda path: earlier)
    sent = []
    monkeypatch.setattr(
        dl_loggers._LightningWandbLogger, "log_metrics", lambda self, m, step=None: sent.append((step, dict(m)))
    )
    lg = WandbLogger(project="p", save_dir=str(run), offline=True, run_group="smoke/runs/x")
    lg.resume_in(run, step=10)
    assert lg.attempt_config == {"attempt": 2, "resumed_from_step": 10}
    assert lg.backfill() == 1 and sent == [(10, {"train/loss": 2.5})]
    for step in (15, 20):  # the resumed run trains steps 11..20 again
        lg.log_metrics({"train/loss": 1.0}, step=step)
    assert sent == [(10, {"train/loss": 2.5}), (20, {"train/loss": 1.0})]
    assert lg.already_logged(15, "train/loss") and not lg.already_logged(20, "val/loss")


def test_the_wandb_group_defaults_to_the_run_folder(compose_config, tmp_path):
    cfg = compose_config("experiment=smoke", f"paths.log_dir={tmp_path}")  # the run folder is tmp_path/run
    node = OmegaConf.to_container(cfg.logger.wandb, resolve=True)
    assert node["group"] is None and node["run_group"] == "run"
    lg = WandbLogger(**{k: v for k, v in node.items() if k != "_target_"}, offline=True)
    assert lg._wandb_init["group"] == "run"
    outside = compose_config("experiment=smoke", f"paths.log_dir={tmp_path}/elsewhere")
    assert OmegaConf.select(outside, "logger.wandb.run_group") == str(tmp_path / "run")


# ----------------------------------------------------------------------------- run folder states
def _ckpt(path: Path, step: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"global_step": step, "state_dict": {}}, path)
    return path


def test_folder_states(tmp_path):
    assert folder_state(tmp_path / "absent") == "new"
    (tmp_path / "hydra-only" / ".hydra").mkdir(parents=True)  # what Hydra writes before main runs
    (tmp_path / "hydra-only" / "train.log").write_text("")
    assert folder_state(tmp_path / "hydra-only") == "new"
    (tmp_path / "killed" / "probes").mkdir(parents=True)
    assert folder_state(tmp_path / "killed") == "unfinished"
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "summary.json").write_text("{}")
    assert folder_state(tmp_path / "done") == "finished"


def test_newest_checkpoint_is_chosen_by_global_step_not_by_name(tmp_path):
    _ckpt(tmp_path / "checkpoints" / "last.ckpt", 40)  # stale: the kill came between the two writes of step 80
    _ckpt(tmp_path / "checkpoints" / "step000080.ckpt", 80)
    _ckpt(tmp_path / "checkpoints" / "last-v1.ckpt", 20)  # an earlier attempt's
    (tmp_path / "checkpoints" / ".partial-ab.tmp").write_bytes(b"half")  # an interrupted write
    (tmp_path / "checkpoints" / "broken.ckpt").write_bytes(b"not a checkpoint")
    assert newest_checkpoint(tmp_path) == (80, tmp_path / "checkpoints" / "step000080.ckpt")
    _ckpt(tmp_path / "checkpoints" / "last.ckpt", 80)  # equal steps: last.ckpt
    assert newest_checkpoint(tmp_path)[1].name == "last.ckpt"


def test_check_relaunch_refuses_finished_and_unresumed_unfinished_folders(tmp_path):
    done = tmp_path / "done"
    _ckpt(done / "checkpoints" / "last.ckpt", 80)
    (done / "summary.json").write_text(json.dumps({"global_step": 80}))
    for ckpt in (None, done / "checkpoints" / "last.ckpt"):
        with pytest.raises(
            ConfigError, match=r"holds a finished run \(summary.json, 80 steps\), which is never changed"
        ):
            check_relaunch(done, ckpt)
    killed = tmp_path / "killed"
    _ckpt(killed / "checkpoints" / "step000040.ckpt", 40)
    with pytest.raises(
        ConfigError, match=r"unfinished run \(newest checkpoint: step 40.*ckpt_path=last, or start over"
    ):
        check_relaunch(killed, None)
    check_relaunch(killed, killed / "checkpoints" / "step000040.ckpt")  # a resume of its own: accepted
    with pytest.raises(ConfigError, match="is not a checkpoint of"):
        check_relaunch(killed, done / "checkpoints" / "last.ckpt")
    early = tmp_path / "early"
    (early / "probes").mkdir(parents=True)
    with pytest.raises(ConfigError, match="no checkpoint to resume from"):
        check_relaunch(early, None)
    check_relaunch(tmp_path / "fresh", None)


def test_config_difference_names_the_first_key_that_differs(tmp_path):
    (tmp_path / ".hydra").mkdir()
    saved = {"seed": 0, "trainer": {"max_steps": 80}, "ckpt_path": None}
    (tmp_path / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(saved))
    same = OmegaConf.create({**saved, "ckpt_path": "last", "hydra": {"run": {"dir": "x"}}})
    assert config_difference(tmp_path, same) is None
    other = OmegaConf.create({**saved, "trainer": {"max_steps": 100}})
    assert config_difference(tmp_path, other) == "trainer.max_steps=100 (the run was launched with 80)"
    assert attempt_subdir(tmp_path) == ".hydra/attempt-2"
    (tmp_path / ".hydra" / "attempt-2").mkdir()
    assert attempt_subdir(tmp_path) == ".hydra/attempt-3"


def test_a_finished_run_is_never_marked_failed_and_a_finished_resume_clears_the_marker(tmp_path):
    mark_failed(tmp_path, "killed")
    assert (tmp_path / "FAILED").read_text() == "killed\n"
    clear_failed(tmp_path)  # not finished yet: kept
    assert (tmp_path / "FAILED").exists()
    (tmp_path / "summary.json").write_text(json.dumps({"status": "completed"}))
    clear_failed(tmp_path)
    assert not (tmp_path / "FAILED").exists()
    mark_failed(tmp_path, "a refused relaunch")
    assert not (tmp_path / "FAILED").exists()


def test_an_unsorted_header_is_rewritten_sorted_so_appended_rows_line_up(tmp_path):
    (tmp_path / "metrics.csv").write_text("train/loss,step\n2.0,5\n")  # written by something else
    (tmp_path / ".metrics.csv.tmp123").write_text("step\n")  # a header rewrite a kill interrupted
    lg = _logger(tmp_path)
    lg.log_metrics({"train/loss": 1.0}, step=10)
    lg.save()
    assert _csv(tmp_path).to_dict("records") == [{"step": 5, "train/loss": 2.0}, {"step": 10, "train/loss": 1.0}]
    assert not (tmp_path / ".metrics.csv.tmp123").exists()


def test_online_attempts_count_and_an_unreadable_log_stops_the_backfill(tmp_path, monkeypatch, caplog):
    for name in ("offline-run-20260101_000000-aaaa", "run-20260102_000000-bbbb", "latest-run"):
        (tmp_path / "wandb" / name).mkdir(parents=True)
    assert [p.name for p in dl_loggers.offline_runs(tmp_path)] == [
        "offline-run-20260101_000000-aaaa",
        "run-20260102_000000-bbbb",
    ]
    (tmp_path / "metrics.csv").write_text("step,train/loss\n5,3.0\n")

    def unreadable(path):
        raise OSError("wandb leet inspect: exit 1")

    monkeypatch.setattr(dl_loggers, "wandb_history", unreadable)
    lg = WandbLogger(project="p", save_dir=str(tmp_path), offline=True)
    with caplog.at_level("WARNING", logger="densitylab"):
        lg.resume_in(tmp_path, step=5)
    assert lg.attempt_config["attempt"] == 3 and lg.backfill() == 0
    assert "could not be read" in caplog.text


def test_a_folder_with_a_live_run_refuses_every_launch_and_is_never_marked_failed(tmp_path):
    from densitylab.runfolder import RunLock, lock_holder

    with RunLock(tmp_path) as lock:
        assert lock.path.is_file() and lock_holder(tmp_path).startswith("pid ")
        with pytest.raises(ConfigError, match="is in use: a run is training there now"):
            check_relaunch(tmp_path, None)
        with pytest.raises(ConfigError, match="is in use"):
            RunLock(tmp_path).__enter__()  # a second process (flock is per open file)
        mark_failed(tmp_path, "the second launch")
        assert not (tmp_path / "FAILED").exists()
    assert lock_holder(tmp_path) is None and not (tmp_path / ".lock").exists()
    check_relaunch(tmp_path, None)


def test_the_finished_run_line_uses_the_summary_step_and_quotes_the_overrides(tmp_path):
    _ckpt(tmp_path / "checkpoints" / "last.ckpt", 6)
    (tmp_path / "summary.json").write_text(json.dumps({"global_step": 6}))
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text(
        OmegaConf.to_yaml(["experiment=smoke", "tags=[a,b]", "trainer.max_steps=6", "logger.wandb.group=${seed}"])
    )
    with pytest.raises(ConfigError) as e:
        check_relaunch(tmp_path, None)
    line = str(e.value)
    assert "6 steps" in line and "trainer.max_steps=<more than 6>" in line and "trainer.max_steps=6 " not in line
    assert "'tags=[a,b]'" in line and "'logger.wandb.group=${seed}'" in line


# ----------------------------------------------------------------------------- before Hydra writes anything
def test_check_launch_refuses_a_sweep_folder_that_holds_runs_and_skips_info_flags(tmp_path, monkeypatch):
    from conftest import CONF_DIR

    from densitylab.preflight import check_launch

    monkeypatch.chdir(tmp_path)
    sweep = tmp_path / "sweep"
    (sweep / "0").mkdir(parents=True)
    (sweep / "0" / "summary.json").write_text("{}")
    problem, extra = check_launch(
        CONF_DIR, "config", ["-m", "experiment=smoke", f"hydra.sweep.dir={sweep}", "seed=0,1"]
    )
    assert "hydra.sweep.dir" in problem and "already holds runs (0)" in problem and extra == []
    assert check_launch(CONF_DIR, "config", ["-m", "experiment=smoke", f"hydra.sweep.dir={tmp_path}/new"]) == (None, [])
    done = sweep / "0"
    for flags in (["--cfg", "job"], ["--help"]):
        assert check_launch(CONF_DIR, "config", [*flags, f"hydra.run.dir={done}"]) == (None, [])
    problem, _ = check_launch(CONF_DIR, "config", ["--config-name", "config", f"hydra.run.dir={done}"])
    assert "holds a finished run" in problem
    monkeypatch.setenv("LOCAL_RANK", "1")  # a rank another launcher started: no .hydra/ of its own
    assert check_launch(CONF_DIR, "config", [f"hydra.run.dir={done}"]) == (None, ["hydra.output_subdir=null"])
