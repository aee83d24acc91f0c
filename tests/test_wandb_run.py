"""The W&B run as a record to compare runs on: run identity (name, job type, multirun / Optuna study), summaries
without nested ``{"last": ...}`` values, string summaries, probe tables and report images logged at the end, the
fixed colour scale of the probe heatmaps, the exit code of a failed run, and the TensorBoard logger option.

Fast tests use an offline W&B run in ``tmp_path``, read back with ``wandb leet inspect --json``; the slow one reads
the session's smoke run (``smoke_run``) and a run stopped by a NaN loss."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from conftest import run_train_py
from omegaconf import OmegaConf, open_dict, read_write

from densitylab.callbacks import wandb_util as wu
from densitylab.errors import ConfigError, DataError
from densitylab.loggers import offline_runs


def leet_records(offline_run: Path) -> list[dict]:
    """Every record of one W&B offline run (``wandb leet inspect --json``)."""
    out = subprocess.run(
        [str(Path(sys.executable).with_name("wandb")), "leet", "inspect", "--json", str(offline_run)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def merged(records: list[dict], kind: str) -> dict:
    """The ``update`` dicts of every ``summary`` or ``config`` record, merged in logged order."""
    out: dict = {}
    for r in records:
        if r.get("type") == kind:
            out.update(r[kind].get("update", {}))
    return out


def history(records: list[dict]) -> dict:
    """Every history row's keys and values merged (the last value of each key)."""
    out: dict = {}
    for r in records:
        if r.get("type") == "history":
            out.update(r["history"]["item"])
    return out


def exit_code(records: list[dict]) -> int | None:
    return next((r["exit"].get("exit_code", 0) for r in records if r.get("type") == "exit"), None)


# ----------------------------------------------------------------------------- run identity and tags
def test_run_identity_names_the_run_and_its_job_type_and_sweep(compose_config):
    cfg = compose_config("experiment=smoke")
    ident = wu.run_identity(cfg)
    assert ident == {"name": "smoke-tiny-s0", "job_type": "train", "run/sweep_dir": None, "run/study": None}
    assert wu.run_identity(cfg, job_type="reprobe")["job_type"] == "reprobe"
    with read_write(cfg), open_dict(cfg):
        cfg.seed = 3
        cfg.logger.wandb.job_type = "mine"
    assert wu.run_identity(cfg)["name"] == "smoke-tiny-s3" and wu.run_identity(cfg)["job_type"] == "mine"
    assert wu.run_identity(compose_config("experiment=smoke", "run_name=my-run"))["name"] == "my-run"
    assert wu.run_identity(compose_config("experiment=smoke", "logger.wandb.name=wb"))["name"] == "wb"
    assert wu.run_identity(compose_config("experiment=capacity_smoke"))["job_type"] == "capacity"

    cfg = compose_config("experiment=smoke", "hparams_search=optuna", "hydra.sweep.dir=/tmp/sweep")
    from hydra.core.hydra_config import HydraConfig

    with read_write(cfg.hydra.job):
        cfg.hydra.job.num = 4
    HydraConfig.instance().set_config(cfg)
    ident = wu.run_identity(cfg)
    assert ident == {"name": "smoke-tiny-s0-4", "job_type": "sweep-trial", "run/sweep_dir": "/tmp/sweep",
                     "run/study": "smoke"}  # fmt: skip


def test_the_data_tag_has_no_seed():
    assert wu.data_tag("synthetic(n_people=200, seed=0, rank_seed=None)") == "synthetic(n_people=200)"
    assert wu.data_tag("synthetic(n_people=2000, seed=7)") == "synthetic(n_people=2000)"
    assert wu.data_tag("uniform(N=64,S=64,A=256)") == "uniform(N=64,S=64,A=256)"
    assert wu.data_tag("text(a.txt, b.txt)") == "text(a.txt, b.txt)" and wu.data_tag(None) is None
    cfg = OmegaConf.create({"tags": ["x"], "seed": 1, "model": {"net": {"n_layer": 2, "n_embd": 64}}})
    tags = wu.run_tags(cfg, 136_000, "synthetic(n_people=200, seed=1, rank_seed=1)")
    assert tags == ["x", "model:2x64", "params:0.1M", "seed:1", "data:synthetic(n_people=200)"]


def test_summaries_keep_min_and_mean_rules_only_and_strings():
    assert wu.SUMMARY_RULES == {"train/loss": "min", "val/loss": "min", "perf/tokens_per_sec": "mean"}
    out = wu.final_summary(
        {"val/loss": 2.5, "train/loss": 2.7, "perf/tokens_per_sec": 3000.0, "status": "completed",
         "precision": "32-true", "memorization/stopped_by": "limit", "perf/other": None, "ok": True, "xs": [1]}
    )  # fmt: skip
    assert out == {
        **{"val/loss_final": 2.5, "train/loss_final": 2.7, "perf/tokens_per_sec_run": 3000.0, "ok": True},
        **{"status": "completed", "precision": "32-true", "memorization/stopped_by": "limit"},
    }


def test_exit_code_is_the_processes_own():
    from densitylab.run import exit_code_of

    assert exit_code_of(None) == 0 and exit_code_of(DataError("bad")) == 2 and exit_code_of(KeyboardInterrupt()) == 130
    assert exit_code_of(RuntimeError("bug")) == 1 and exit_code_of(SystemExit(3)) == 3


# ----------------------------------------------------------------------------- tables
def test_a_long_probe_table_is_thinned_by_whole_steps_evenly_over_training(tmp_path, caplog):
    df = pd.DataFrame({"step": np.repeat(np.arange(0, 100, 10), 30), "value": np.arange(300.0)})
    kept, n = wu.thin_by_step(df, 100)
    steps = sorted(kept["step"].unique())
    assert len(kept) <= 100 and n == len(steps) == 3 and steps == [0, 40, 90]  # first, middle, last
    assert (kept.groupby("step").size() == 30).all()  # whole steps
    assert wu.thin_by_step(df, 300)[0] is df
    one, n = wu.thin_by_step(df, 40)  # room for one step: the last (the end-of-run endpoints), not the first
    assert n == 1 and set(one["step"]) == {90} and len(one) == 30
    assert list(wu.thin_by_step(df, 20)[0]["step"].unique()) == [90] and len(wu.thin_by_step(df, 20)[0]) == 20
    (tmp_path / "probes").mkdir()
    df.to_parquet(tmp_path / "probes" / "density.parquet")
    with caplog.at_level(logging.WARNING, logger="densitylab"):
        tables = wu.probe_tables(tmp_path, max_rows=100)
    assert list(tables) == ["tables/density"] and len(tables["tables/density"]) == 90
    assert "logger.wandb.table_max_rows=100" in caplog.text and "3 of 10 probe steps" in caplog.text
    with pytest.raises(ConfigError, match="table_max_rows=0"):
        from densitylab.loggers import WandbLogger

        WandbLogger(project="p", save_dir=str(tmp_path), offline=True, table_max_rows=0)


def test_an_offline_run_holds_tables_images_string_summaries_and_a_failed_exit_code(tmp_path, monkeypatch):
    """A real offline W&B run: what ``log_wandb_outputs`` logs at the end, then a finish after a NaN stop."""
    from densitylab.callbacks.perf import DivergenceError
    from densitylab.loggers import WandbLogger
    from densitylab.report.common import pyplot
    from densitylab.run import _finish_wandb, log_wandb_outputs

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = tmp_path / "run"
    (run_dir / "probes").mkdir(parents=True)
    (run_dir / "plots").mkdir()
    pd.DataFrame({"step": [0, 0, 20], "layer": [0, 1, 0], "value": [0.1, 0.2, 0.3]}).to_parquet(
        run_dir / "probes" / "density.parquet"
    )
    pd.DataFrame({"row": [1], "tokens": [np.arange(3)]}).to_parquet(run_dir / "probes" / "probe_sets.parquet")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1])
    fig.savefig(run_dir / "plots" / "density_over_training.png")
    plt.close(fig)

    (run_dir / "tokenizer.json").write_text("{}")
    (run_dir / "last.ckpt").write_bytes(b"weights")
    lg = WandbLogger(
        project="densitylab", save_dir=str(run_dir), name="t-tiny-s0", job_type="train", log_artifacts=True
    )
    cfg = OmegaConf.create({"tags": [], "seed": 0, "model": {"net": {"n_layer": 2, "n_embd": 64}}})
    wu.prepare_wandb_run(
        lg, cfg, 1000, "synthetic(seed=0)", {"model": "tiny"}, {"run/sweep_dir": None, "run/study": None}
    )
    lg.log_metrics({"val/loss": 3.0, "density/L0/active_frac/panel": 0.4}, step=20)
    summary = {"global_step": 20, "val/loss": 3.0, "status": "completed", "memorization/stopped_by": "limit"}
    log_wandb_outputs(lg, run_dir, summary, run_dir / "last.ckpt")
    try:
        _finish_wandb(DivergenceError("train/loss is nan at step 21"))
    finally:
        _finish_wandb()  # never leave a run open for the next test
    records = leet_records(offline_runs(run_dir)[0])
    run = next(r["run"] for r in records if r.get("type") == "run")
    assert run["display_name"] == "t-tiny-s0" and run["job_type"] == "train"
    assert exit_code(records) == 2
    item = history(records)
    assert item["tables/density.nrows"] == 3 and item["tables/density._type"] == "table-file"
    assert item["tables/probe_sets.nrows"] == 1
    assert item["plots/density_over_training._type"] == "image-file"
    s = merged(records, "summary")
    assert s["status"] == "completed" and s["memorization/stopped_by"] == "limit" and s["val/loss_final"] == 3.0
    assert s["density/L0/active_frac/panel"] == 0.4  # the last value, not {"last": 0.4}
    assert not any(isinstance(v, dict) and "last" in v for v in s.values())
    c = merged(records, "config")
    assert "run/study" in c and "run/sweep_dir" in c and c["choices/model"] == "tiny"
    arts = {r["artifact"]["name"]: r["artifact"] for r in records if r.get("type") == "artifact"}
    assert arts[f"model-{run['run_id']}"]["type"] == "model" and arts[f"ledger-{run['run_id']}"]["type"] == "ledger"
    ledger_files = {e["path"] for e in arts[f"ledger-{run['run_id']}"]["manifest"]["contents"]}
    assert ledger_files == {"tokenizer.json", "probes/density.parquet", "probes/probe_sets.parquet"}
    metrics = {r["metric"].get("name") for r in records if r.get("type") == "metric"}
    assert {"trainer/global_step", "train/tokens_seen"} <= metrics


# ----------------------------------------------------------------------------- heatmaps on a fixed scale
def test_probe_heatmaps_have_a_fixed_colour_scale_with_a_labelled_colourbar():
    from test_report_density import density_frame

    from densitylab.callbacks.density import DensityCallback
    from densitylab.callbacks.modularity import ModularityCallback
    from densitylab.probes.modularity import Component
    from densitylab.report.common import pyplot

    figs = DensityCallback.figures(
        SimpleNamespace(spec=SimpleNamespace(metric="active_frac_live")), 10, density_frame()
    )
    im = figs["density/heatmap_by_bin"].axes[0].images[0]
    assert im.get_clim() == (0.0, 1.0) and "fixed" in im.colorbar.ax.get_ylabel()
    comps = [Component("head", 0, 0), Component("mlp", 0, 0)]
    E = np.array([[0.002, -0.3], [0.05, 0.0]])
    me = SimpleNamespace(_last=(comps, E), tasks=["a", "b"])
    im2 = ModularityCallback.figures(me, 40, pd.DataFrame({"step": [40]}))["modularity/heatmap"].axes[0].images[0]
    assert (im2.norm.vmin, im2.norm.vmax) == (-1.0, 1.0) and "nats" in im2.colorbar.ax.get_ylabel()
    assert im2.norm(0.0) == pytest.approx(0.5)  # symmetric: no change is the middle colour at every step
    for fig in (figs["density/heatmap_by_bin"], im2.figure):
        pyplot().close(fig)


# ----------------------------------------------------------------------------- TensorBoard
def test_the_tensorboard_logger_writes_event_files_into_the_run_folder(compose_config, tmp_path):
    pytest.importorskip("tensorboard")
    from lightning.pytorch.loggers import TensorBoardLogger

    from densitylab.run import build_loggers

    cfg = compose_config("experiment=smoke", "logger=tensorboard")
    loggers = build_loggers(cfg)
    tb = next(lg for lg in loggers if isinstance(lg, TensorBoardLogger))
    tb.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))  # as run.py does: the whole resolved config
    tb.log_metrics({"train/loss": 3.0}, step=1)
    tb.finalize("success")
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))


def test_tensorboard_without_its_package_is_one_config_error(monkeypatch):
    import importlib.util

    from densitylab.run import check_loggers

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if "tensorboard" in n.lower() else real(n, *a))
    cfg = OmegaConf.create({"logger": {"tensorboard": {"_target_": "lightning.pytorch.loggers.TensorBoardLogger"}}})
    with pytest.raises(ConfigError, match=r"^logger.tensorboard: the tensorboard package is not installed"):
        check_loggers(cfg)


def test_tensorboard_without_its_package_is_refused_before_hydra_makes_the_run_folder(monkeypatch, tmp_path):
    import importlib.util

    from densitylab.preflight import check_launch

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if "tensorboard" in n.lower() else real(n, *a))
    conf = Path(__file__).resolve().parents[1] / "conf"
    error, _ = check_launch(conf, "config", ["logger=tensorboard", f"hydra.run.dir={tmp_path / 'run'}"])
    assert error is not None and error.startswith("logger.tensorboard: the tensorboard package is not installed")
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_the_smoke_runs_wandb_record_and_a_nan_stopped_run_is_failed(smoke_run, tmp_path, cache_dir):
    """The smoke run's offline W&B run holds the probe tables and report images, no nested ``{"last": ...}``
    summary, the string summaries, its name and sweep keys; train.log has the run folder and the final val/loss.
    A run stopped by a NaN loss (lr=1e6, exit 2) is a failed W&B run (exit code 2)."""
    records = leet_records(offline_runs(smoke_run)[0])
    item, s, c = history(records), merged(records, "summary"), merged(records, "config")
    run = next(r["run"] for r in records if r.get("type") == "run")
    assert run["display_name"] == "smoke-tiny-s0" and run["job_type"] == "train" and exit_code(records) == 0
    n_density = len(pd.read_parquet(smoke_run / "probes" / "density.parquet"))
    assert item["tables/density.nrows"] == n_density > 0 and item["tables/density.ncols"] >= 10
    for stem in ("modularity", "memorization"):
        assert item[f"tables/{stem}.nrows"] == len(pd.read_parquet(smoke_run / "probes" / f"{stem}.parquet"))
    images = {k.split(".")[0] for k in item if k.startswith("plots/") and k.endswith("._type")}
    assert {f"plots/{p.stem}" for p in (smoke_run / "plots").glob("*.png")} == images and len(images) >= 5
    nested = {k for k, v in s.items() if isinstance(v, dict) and "last" in v}
    assert not nested, sorted(nested)[:5]
    assert s["memorization/stopped_by"] == "limit" and s["status"] == "completed" and isinstance(s["precision"], str)
    assert "run/study" in c and c["run/study"] is None and c["run/sweep_dir"] is None
    assert "lr" not in c and "net" not in c  # the LightningModule's hyperparameters are not logged a second time
    assert not any(t.startswith("data:") and "seed=" in t for t in run.get("tags", []))
    log_text = (smoke_run / "train.log").read_text()
    assert f"run folder: {smoke_run}" in log_text and "final val/loss " in log_text

    nan_run = tmp_path / "nan"
    no_probes = [f"callbacks.{k}=null" for k in ("density", "knowledge", "modularity", "memorization")]
    proc = run_train_py(
        "experiment=smoke", "model.optimizer.lr=1e6", *no_probes, f"hydra.run.dir={nan_run}",
        cache_dir=cache_dir, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2 and "error: " in proc.stderr, proc.stderr[-2000:]
    records = leet_records(offline_runs(nan_run)[0])
    assert exit_code(records) == 2 and not (nan_run / "summary.json").exists()
