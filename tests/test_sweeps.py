"""Sweeps, multirun, W&B dashboards, comparison report, memorization and the capacity experiment:
end-to-end runs of train.py in a scratch working directory (so default output folders are used)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import run_command, run_train_py

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml"))


def train(
    *overrides: str, cwd: Path, cache_dir: Path, timeout: float = 1200, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run train.py (these are multiruns: a generous base ``timeout`` in seconds, scaled by
    DENSITYLAB_TEST_TIMEOUT_SCALE in conftest)."""
    return run_train_py(*overrides, cwd=cwd, cache_dir=cache_dir, timeout=timeout, env=env)


def report(*args: str) -> subprocess.CompletedProcess:
    return run_command([sys.executable, "-m", "densitylab.report", *args], timeout=300, cwd=REPO)


def wandb_records(run_dir: Path) -> list[dict]:
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1, offline
    out = run_command(
        [str(Path(sys.executable).with_name("wandb")), "leet", "inspect", "--json", str(offline[0])],
        timeout=120,
        check=True,
    ).stdout
    return [json.loads(line) for line in out.splitlines()]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


# ---------------------------------------------------------------------------- fast: configs
def test_every_sweep_file_drives_train_py_with_hydra_overrides():
    from densitylab.config import check_overrides

    files = sorted((REPO / "sweeps").glob("*.yaml"))
    assert {f.stem for f in files} >= {"lr", "depth_width"}
    for f in files:
        sweep = yaml.safe_load(f.read_text())
        assert sweep["program"] == "train.py"
        assert sweep["command"] == ["${env}", "${interpreter}", "${program}", "${args_no_hyphens}"]
        assert sweep["metric"]["name"] == "val/loss" and sweep["metric"]["goal"] == "minimize"
        # what the agent passes (${args_no_hyphens}: key=value), for the first and last value of every parameter
        for pick in (0, -1):
            args = []
            for key, spec in sweep["parameters"].items():
                if "value" in spec:
                    v = spec["value"]
                elif "values" in spec:
                    v = spec["values"][pick]
                else:
                    v = spec["min"] if pick == 0 else spec["max"]
                args.append(f"{key}={v}")
            assert check_overrides(REPO / "conf", "config", args) is None, (f.name, args)


def test_width_at_budget_keeps_the_non_embedding_budget():
    from densitylab.config import width_at_budget

    budget = 786432
    for n_layer, width in ((2, 180), (4, 128), (8, 92), (16, 64)):
        assert width_at_budget(budget, n_layer, 4) == width
        assert abs(12 * n_layer * width**2 - budget) / budget < 0.04
    with pytest.raises(ValueError, match="expected positive"):
        width_at_budget(0, 2, 4)


def test_slurm_launcher_and_fsdp_trainer_configs_compose():
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from lightning.pytorch.strategies import FSDPStrategy

    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", ["hydra/launcher=slurm", "hydra.launcher.partition=gpu"], return_hydra_config=True)
        launcher = cfg.hydra.launcher
        assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
        assert launcher.partition == "gpu" and launcher.timeout_min > 0
        cfg = compose("config", ["trainer=fsdp"])
        assert cfg.trainer.strategy._target_ == "densitylab.system.fsdp_strategy"
        strategy = instantiate(cfg.trainer.strategy)
        assert isinstance(strategy, FSDPStrategy)
        cfg = compose("config", ["hparams_search=optuna"], return_hydra_config=True)
        assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper") and cfg.optimized_metric == "val/loss"
        assert set(cfg.hydra.sweeper.params) == {
            "model.optimizer.lr",
            "model.scheduler.warmup_steps",
            "model.optimizer.weight_decay",
            "model.net.n_embd",
        }


def test_optuna_search_space_from_hydra_sweep_syntax():
    import optuna.distributions as D
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from hydra_plugins.densitylab_optuna_sweeper.optuna_sweeper import distribution

    p = OverridesParser.create()
    lr, wu, wd, width, fixed = p.parse_overrides(
        [
            "model.optimizer.lr=tag(log, interval(1e-4, 1e-2))",
            "model.scheduler.warmup_steps=range(0, 300, step=50)",
            "model.optimizer.weight_decay=interval(0.0, 0.2)",
            "model.net.n_embd=choice(64, 96, 128)",
            "seed=3",
        ]
    )
    assert distribution(lr) == D.FloatDistribution(1e-4, 1e-2, log=True)
    assert distribution(wu) == D.IntDistribution(0, 250, step=50)
    assert distribution(wd) == D.FloatDistribution(0.0, 0.2)
    assert distribution(width) == D.CategoricalDistribution([64, 96, 128])
    assert distribution(fixed) == "3"


def test_wandb_stays_online_under_a_sweep_agent(monkeypatch):
    from omegaconf import OmegaConf

    from densitylab.run import build_loggers

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SWEEP_ID", "abc123")
    cfg = OmegaConf.create({"logger": {"none": None}})
    build_loggers(cfg)
    assert "WANDB_MODE" not in os.environ  # an agent's run reports to its sweep
    monkeypatch.delenv("WANDB_SWEEP_ID")
    cfg = OmegaConf.create(
        {
            "logger": {
                "wandb": {"_target_": "lightning.pytorch.loggers.WandbLogger", "offline": True, "save_dir": "/tmp"}
            }
        }
    )
    build_loggers(cfg)
    assert os.environ["WANDB_MODE"] == "offline"


def _fake_compare_run(run: Path, n_layer: int, slopes: dict[str, list[float]]) -> None:
    """A run folder for the compare report: metrics.csv with the issue-14 density slope names
    ``density/L{i}/{role}/slope`` over three steps, summary.json with the final ones, a Hydra config."""
    (run / ".hydra").mkdir(parents=True)
    steps = [0, 10, 20]
    metrics = {"step": steps, "train/loss": [3.1, 2.6, 2.1], "val/loss": [3.0, 2.5, 2.0 + n_layer / 10]}
    for role, per_layer in slopes.items():
        for i, s in enumerate(per_layer):
            metrics[f"density/L{i}/{role}/slope"] = [0.0, s / 2, s]
            metrics[f"density/L{i}/{role}/slope_ci_low"] = [0.0, s / 2 - 1, s - 1]
    pd.DataFrame(metrics).to_csv(run / "metrics.csv", index=False)
    summary = {"status": "completed", "global_step": 20, "val/loss": metrics["val/loss"][-1]}
    summary.update({k: v[-1] for k, v in metrics.items() if k.startswith("density/")})
    (run / "summary.json").write_text(json.dumps(summary))
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"model": {"net": {"n_layer": n_layer}}, "seed": 0}))


def test_compare_report_reads_density_slopes_per_layer_and_role(tmp_path):
    from densitylab.report.compare import SLOPE_SUMMARY, compare_report, slope_keys

    _fake_compare_run(tmp_path / "0", 2, {"name_last": [0.01, 0.03], "pre_value": [0.5, 0.7]})
    _fake_compare_run(tmp_path / "1", 4, {"name_last": [0.02, 0.02, 0.04, 0.08]})  # no pre_value slopes
    (tmp_path / "2" / ".hydra").mkdir(parents=True)  # a run without density probes
    pd.DataFrame({"step": [0, 10], "val/loss": [3.0, 2.9]}).to_csv(tmp_path / "2" / "metrics.csv", index=False)
    (tmp_path / "2" / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"model": {"net": {"n_layer": 8}}}))
    assert slope_keys(["density/L1/pre_value/slope", "density/L0/slope", "density/L10/name_last/slope",
                       "density/L2/name_last/slope", "density/L2/name_last/slope_ci_low"]) == [
        "density/L2/name_last/slope", "density/L10/name_last/slope", "density/L1/pre_value/slope"]  # fmt: skip
    page = compare_report([tmp_path], tmp_path / "out")
    final = pd.read_csv(tmp_path / "out" / "final.csv", index_col=0)
    final.index = final.index.astype(str)  # the run names "0", "1", "2"
    # the mean over layers of the name_last slope, not pre_value; NaN for the run without density
    assert final.loc["0", SLOPE_SUMMARY] == pytest.approx(0.02) and final.loc["1", SLOPE_SUMMARY] == pytest.approx(0.04)
    assert pd.isna(final.loc["2", SLOPE_SUMMARY])
    assert not any(c.startswith("density/L") for c in final.columns)
    for name in ("compare_density_slopes.png", "compare_by.png", "compare_loss.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    text = page.read_text()
    assert "Density slope per layer and role" in text and "Final numbers against model.net.n_layer" in text


# ---------------------------------------------------------------------------- slow: end-to-end
@pytest.mark.slow
def test_multirun_two_seeds_two_wandb_runs_then_compare_page(tmp_path, cache_dir):
    proc = train("-m", "experiment=smoke", "seed=0,1", "trainer.max_steps=20", cwd=tmp_path, cache_dir=cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweeps = list((tmp_path / "outputs" / "smoke" / "multiruns").iterdir())  # the default sweep folder
    assert len(sweeps) == 1
    runs = sorted(p for p in sweeps[0].iterdir() if p.is_dir() and p.name.isdigit())
    assert [r.name for r in runs] == ["0", "1"]
    ids, seeds = [], []
    for r in runs:
        summary = json.loads((r / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["global_step"] == 20
        records = wandb_records(r)
        run_rec = [x["run"] for x in records if x.get("type") == "run"]
        ids.append(run_rec[0]["run_id"])
        tags = {t for x in run_rec for t in x.get("tags", [])}
        seeds += [t for t in tags if t.startswith("seed:")]
        assert (
            "smoke" in tags and any(t.startswith("params:") for t in tags) and any(t.startswith("data:") for t in tags)
        )
        # one group per run folder (all attempts of a resumed run); experiment_name in the config groups seeds
        assert run_rec[0]["run_group"] == r.relative_to(tmp_path / "outputs").as_posix()
        assert any(x.get("type") == "metric" for x in records)  # define_metric records (summary rules)
        config_keys = {k for x in records if x.get("type") == "config" for k in x["config"].get("update", {})}
        assert {"model", "choices/model", "choices/data", "experiment_name", "attempt"} <= config_keys
        summary_keys = {k for x in records if x.get("type") == "summary" for k in x["summary"].get("update", {})}
        assert "val/loss_final" in summary_keys and "memorization/bits_total" in summary_keys
    assert len(set(ids)) == 2 and sorted(seeds) == ["seed:0", "seed:1"]  # two distinct W&B runs

    out = report("compare", str(sweeps[0]))
    assert out.returncode == 0, out.stderr[-2000:]
    page = sweeps[0] / "compare" / "compare.html"
    text = page.read_text()
    for r, run_id in zip(runs, ids):
        assert f"<code>{r.name}</code>" in text and run_id in text
    assert text.count("data:image/png;base64,") >= 4  # loss, density slopes, modularity, memorization
    diff = pd.read_csv(sweeps[0] / "compare" / "config_diff.csv", index_col=0)
    assert list(diff.columns) == ["seed"] and list(diff["seed"]) == [0, 1]
    assert report("compare", str(tmp_path / "missing")).returncode == 2


@pytest.mark.slow
def test_every_experiment_runs_one_step(tmp_path, cache_dir):
    proc = train(
        "-m", "experiment=glob(*)", "trainer.max_steps=1", "logger=csv", cwd=tmp_path, cache_dir=cache_dir, timeout=2400
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summaries = {}
    for f in (tmp_path / "outputs").rglob("summary.json"):
        s = json.loads(f.read_text())
        summaries[s["experiment"]] = s
    assert sorted(summaries) == EXPERIMENTS
    for name, s in summaries.items():
        assert s["status"] == "completed" and s["global_step"] == 1, name


@pytest.mark.slow
def test_optuna_search_minimizes_val_loss(tmp_path, cache_dir):
    proc = train(
        "hparams_search=optuna",
        "experiment=smoke",
        "hydra.sweeper.n_trials=3",
        "trainer.max_steps=8",
        "logger=csv",
        "callbacks.modularity=null",
        "callbacks.density=null",
        cwd=tmp_path,
        cache_dir=cache_dir,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = next((tmp_path / "outputs" / "smoke" / "multiruns").iterdir())
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    losses, lrs = [], []
    for r in sorted(p for p in sweep.iterdir() if p.name.isdigit()):
        losses.append(json.loads((r / "summary.json").read_text())["val/loss"])
        lrs.append(yaml.safe_load((r / ".hydra" / "config.yaml").read_text())["model"]["optimizer"]["lr"])
    assert len(losses) == 3 and len(set(lrs)) == 3 and all(1e-4 <= lr <= 1e-2 for lr in lrs)
    assert result["completed"] == 3 and result["best_value"] == pytest.approx(min(losses))
    assert set(result["best_params"]) == {
        "model.optimizer.lr",
        "model.scheduler.warmup_steps",
        "model.optimizer.weight_decay",
        "model.net.n_embd",
    }


@pytest.mark.slow
def test_capacity_smoke_grid_and_report(tmp_path, cache_dir):
    proc = train("-m", "experiment=capacity_smoke", "logger=csv", cwd=tmp_path, cache_dir=cache_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = next((tmp_path / "outputs" / "capacity_smoke" / "multiruns").iterdir())
    runs = sorted(p for p in sweep.iterdir() if p.name.isdigit())
    assert len(runs) == 6
    for r in runs:
        s = json.loads((r / "summary.json").read_text())
        assert s["memorization/stopped_by"] in ("plateau", "limit")
        assert 0 <= s["memorization/bits_total"] <= s["data/entropy_bits"]
        assert s["val/loss"] >= s["data/unigram_entropy_nats"] - 0.05  # nothing about fresh random data can be learned
        assert (r / "probes" / "memorization.parquet").is_file() and (
            r / "plots" / "memorization_over_training.png"
        ).is_file()
    out = report("capacity", str(sweep))
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads((sweep / "report" / "capacity.json").read_text())
    assert result["models"] == 2 and result["runs"] == 6 and 0 < result["alpha"] < 8
    fits = pd.read_csv(sweep / "report" / "capacity_fit.csv")
    small = json.loads((runs[0] / "summary.json").read_text())  # 16 sequences: (nearly) all memorized
    assert small["memorization/frac_of_entropy"] > 0.8
    assert (fits["capacity_bits"] > 0).all() and fits["capacity_bits"].is_monotonic_increasing
    for png in ("memorized_vs_dataset.png", "capacity_vs_params.png"):
        assert (sweep / "report" / png).stat().st_size > 10_000
    assert "alpha =" in out.stdout
