"""Reliability: atomic checkpoint writes (``densitylab.checkpoint``), a kill inside a checkpoint write, and the
NaN/inf stop's one ``error:`` line (``FiniteLossGuard``).

Unit tests run in-process (a failing ``torch.save``, a tiny Lightning fit that turns NaN at a chosen step);
the end-to-end cases run ``train.py experiment=smoke`` as a subprocess and are marked slow (about 50 s in all
on 2 CPU cores).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import pandas as pd
import pytest
import torch
from conftest import REPO, require_success, run_command, run_train_py

from densitylab.callbacks.perf import DivergenceError, FiniteLossGuard
from densitylab.checkpoint import FAULT_ENV, KILL_ENV, AtomicCheckpointIO, fault_write_number, is_temp_file
from densitylab.errors import ConfigError


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


@pytest.fixture
def watched_tmpdir(tmp_path, monkeypatch) -> Path:
    """A fresh TMPDIR (environment and ``tempfile``), to check that nothing is written there."""
    import tempfile

    tmp = tmp_path / "tmpdir"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    return tmp


# ----------------------------------------------------------------------------- AtomicCheckpointIO (unit)
class _Unpicklable:
    """Fails ``torch.save`` part-way through the stream (after the tensors before it are written)."""

    def __reduce__(self):
        raise RuntimeError("cannot pickle this")


def test_save_writes_through_a_temp_file_in_the_target_folder(tmp_path, watched_tmpdir, monkeypatch):
    target = tmp_path / "run" / "checkpoints" / "step000001.ckpt"
    replaced: list[tuple[Path, Path]] = []
    real_replace = os.replace

    def spy(src, dst):
        replaced.append((Path(src), Path(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    AtomicCheckpointIO().save_checkpoint({"w": torch.arange(4.0), "global_step": 1}, target)
    assert len(replaced) == 1
    src, dst = replaced[0]
    assert dst == target and src.parent == target.parent, "the temp file must live in the checkpoint's folder"
    assert is_temp_file(src) and not src.name.endswith(".ckpt") and "last" not in src.name
    assert torch.load(target, weights_only=True)["global_step"] == 1
    assert _files(target.parent) == [target]
    assert _files(watched_tmpdir) == []


def test_a_failing_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path, watched_tmpdir):
    io_ = AtomicCheckpointIO()
    target = tmp_path / "checkpoints" / "last.ckpt"
    io_.save_checkpoint({"w": torch.ones(3), "global_step": 2}, target)
    before = target.read_bytes()
    with pytest.raises(RuntimeError, match="cannot pickle"):
        io_.save_checkpoint({"w": torch.zeros(1000), "bad": _Unpicklable()}, target)
    assert target.read_bytes() == before
    assert torch.load(target, weights_only=True)["global_step"] == 2
    assert _files(target.parent) == [target], "a failed write must remove its temp file"
    assert _files(watched_tmpdir) == []


def test_a_stale_temp_file_is_removed_by_the_next_successful_write(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    stale = folder / ".partial-0123456789abcdef0123456789abcdef.tmp"
    stale.write_bytes(b"half a checkpoint")
    other = folder / "notes.txt"
    other.write_text("kept")
    AtomicCheckpointIO().save_checkpoint({"global_step": 3}, folder / "step000003.ckpt")
    assert not stale.exists() and other.exists()
    assert (folder / "step000003.ckpt").is_file()


@pytest.mark.parametrize("raw", ["0", "-1", "abc", "1.5"])
def test_a_bad_fault_setting_is_a_config_error(raw, monkeypatch):
    monkeypatch.setenv(FAULT_ENV, raw)
    with pytest.raises(ConfigError, match=FAULT_ENV):
        AtomicCheckpointIO()
    assert fault_write_number({FAULT_ENV: " 2 "}) == 2 and fault_write_number({}) is None


def test_every_trainer_config_uses_the_atomic_writer(compose_config):
    from hydra.utils import instantiate

    for option in ("cpu", "ddp", "gpu", "fsdp"):
        cfg = compose_config(f"trainer={option}")
        plugins = [instantiate(p) for p in cfg.trainer.plugins]
        assert [type(p) for p in plugins] == [AtomicCheckpointIO], option
    trainer = instantiate(compose_config("trainer=cpu").trainer, logger=False)  # as run.py builds it
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


# ----------------------------------------------------------------------------- the NaN stop (in-process)
class _NanAt(L.LightningModule):
    """A one-weight model whose training loss is NaN in the ``nan_step``-th optimizer step (1-based) and after."""

    def __init__(self, nan_step: int) -> None:
        super().__init__()
        self.nan_step = nan_step
        self.w = torch.nn.Parameter(torch.ones(1))

    def training_step(self, batch, batch_idx):
        loss = (self.w * batch[0]).pow(2).mean()
        return loss * float("nan") if self.global_step + 1 >= self.nan_step else loss

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(64, 1)), batch_size=4)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _fit_until_nan(root: Path, nan_step: int) -> tuple[str, L.Trainer]:
    from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar

    ckpt = ModelCheckpoint(
        dirpath=root / "checkpoints", filename="step{step:06d}", auto_insert_metric_name=False,
        every_n_train_steps=2, save_last=True, save_top_k=1, monitor=None,
    )  # fmt: skip
    trainer = L.Trainer(
        accelerator="cpu", max_steps=10, logger=False, enable_model_summary=False, log_every_n_steps=1,
        callbacks=[FiniteLossGuard(checkpoint_every_n_steps=2), ckpt, TQDMProgressBar()],  # train.py's (run.console)
        plugins=[AtomicCheckpointIO()],
        default_root_dir=root,
    )  # fmt: skip
    with pytest.raises(DivergenceError) as info:
        trainer.fit(_NanAt(nan_step))
    return str(info.value), trainer


def test_the_nan_stop_says_no_checkpoint_was_written_before_the_first(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    message, trainer = _fit_until_nan(tmp_path, nan_step=1)
    assert "at step 1" in message and message.endswith("(no checkpoint was written yet)"), message
    assert "kept" not in message and "\n" not in message
    assert not (tmp_path / "checkpoints").exists()
    assert trainer.progress_bar_callback.train_progress_bar.disable, "the progress bar must be closed"


def test_the_nan_stop_names_the_last_good_checkpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    message, trainer = _fit_until_nan(tmp_path, nan_step=5)  # checkpoints at steps 2 and 4, NaN at step 5
    assert "at step 5" in message and message.endswith("(last good checkpoint: checkpoints/step000004.ckpt)")
    state = torch.load(tmp_path / "checkpoints" / "step000004.ckpt", weights_only=True)
    assert state["global_step"] == 4 and torch.isfinite(state["state_dict"]["w"]).all()
    assert trainer.progress_bar_callback.train_progress_bar.disable


# ----------------------------------------------------------------------------- end to end (subprocesses)
def _train(*overrides: str, cwd: Path, cache_dir: Path, env: dict | None = None, **kwargs):
    """``train.py experiment=smoke logger=csv *overrides`` in ``cwd``; ``env`` adds to the environment (the
    fault-injection variable is passed on only when ``env`` sets it)."""
    full = {k: v for k, v in os.environ.items() if k != FAULT_ENV}
    full.update(WANDB_MODE="offline", DENSITYLAB_CACHE_DIR=str(cache_dir), PYTHONUNBUFFERED="1", **(env or {}))
    cmd = [sys.executable, str(REPO / "train.py"), "experiment=smoke", "logger=csv", *overrides]
    return run_command(cmd, cwd=cwd, env=full, timeout=300, what="train.py " + " ".join(overrides), **kwargs)


@pytest.mark.slow
@pytest.mark.parametrize("every", [40, 1], ids=["before-first-checkpoint", "after-a-checkpoint"])
def test_nan_stop_prints_one_truthful_error_line_after_the_progress_bar(every, tmp_path, cache_dir):
    """lr=1e6 diverges within a few steps: with checkpoints every 40 steps none exists yet; every step, some do."""
    run = tmp_path / "run"
    proc = _train(
        "model.optimizer.lr=1e6", f"callbacks.model_checkpoint.every_n_train_steps={every}", f"hydra.run.dir={run}",
        cwd=tmp_path, cache_dir=cache_dir, capture_output=False, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    out = proc.stdout  # stdout (progress bar) and stderr together, in the order the terminal shows them
    assert proc.returncode == 2, out[-3000:]
    lines = [ln for ln in re.split(r"[\r\n]", out) if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], f"the error line must come last, after the bar:\n{out[-1500:]}"
    assert out.rstrip(" ").endswith("\n") and "\nerror: " in out, "the bar must end its line before the error"
    assert "Traceback" not in out and "kept" not in errors[0]
    step = int(re.search(r"at step (\d+)", errors[0]).group(1))
    ckpts = sorted((run / "checkpoints").glob("*.ckpt")) if (run / "checkpoints").exists() else []
    if every == 40:
        assert ckpts == [] and errors[0].endswith("(no checkpoint was written yet)"), errors[0]
    else:
        named = re.search(r"\(last good checkpoint: (\S+)\)$", errors[0])
        assert ckpts and named, errors[0]
        state = torch.load(tmp_path / named.group(1), weights_only=True)
        assert 1 <= state["global_step"] < step


@pytest.mark.slow
def test_kill_inside_a_checkpoint_write_leaves_loadable_checkpoints_and_resumes(tmp_path, cache_dir):
    """The 3rd write (step000004.ckpt; writes 1-2 are step000002.ckpt and last.ckpt) dies half-way with SIGKILL."""
    run, tmpdir = tmp_path / "run", tmp_path / "tmpdir"
    tmpdir.mkdir()
    common = ("trainer.max_steps=6", "callbacks.model_checkpoint.every_n_train_steps=2", f"hydra.run.dir={run}")
    env = {"TMPDIR": str(tmpdir), "TEMP": str(tmpdir), "TMP": str(tmpdir)}
    proc = _train(
        *common, "trainer.enable_progress_bar=false", cwd=tmp_path, cache_dir=cache_dir,
        env={**env, FAULT_ENV: "3"}
    )  # fmt: skip
    assert proc.returncode in (-signal.SIGKILL, 137), f"exit {proc.returncode}\n{proc.stderr[-3000:]}"
    folder = run / "checkpoints"
    temps = [p for p in folder.iterdir() if is_temp_file(p)]
    assert len(temps) == 1 and temps[0].stat().st_size > 0, sorted(folder.iterdir())  # killed mid-write, in place
    assert sorted(p.name for p in folder.glob("*.ckpt")) == ["last.ckpt", "step000002.ckpt"]
    for p in folder.glob("*.ckpt"):
        assert torch.load(p, weights_only=True)["global_step"] == 2, p
    assert _files(tmpdir) == [], "nothing may be left in TMPDIR"

    proc = _train(
        *common, "ckpt_path=last", "trainer.enable_progress_bar=false", cwd=tmp_path, cache_dir=cache_dir, env=env
    )
    require_success(proc, "resuming the killed run with ckpt_path=last")
    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt", "step000006.ckpt"]  # stale temp file removed
    assert torch.load(folder / "last.ckpt", weights_only=True)["global_step"] == 6
    assert (run / "summary.json").is_file() and _files(tmpdir) == []


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _long(df: pd.DataFrame) -> pd.DataFrame:
    """metrics.csv as (step, metric, value) rows; wall-clock metrics (perf/) left out of value comparisons."""
    return df.melt(id_vars="step", var_name="metric").dropna()


@pytest.mark.slow
def test_kill_mid_run_then_resume_in_the_same_folder_gives_the_uninterrupted_record(smoke_run, tmp_path, cache_dir):
    """kill -9 after step 65 (checkpoint at 40; probes, W&B images and histograms at 60 in between); a relaunch
    without ckpt_path is refused and changes nothing; the resume with ckpt_path=last in the same folder ends
    with the uninterrupted smoke run's record: metrics.csv holds every (step, metric) once with the same values,
    the probe and ledger tables are the same (no duplicate record), W&B logs each (step, metric) once across the
    folder's two attempts, and nothing is marked failed."""
    run = tmp_path / "run"
    args = ("experiment=smoke", f"hydra.run.dir={run}")
    proc = run_train_py(*args, cache_dir=cache_dir, env={KILL_ENV: "65"})
    assert proc.returncode in (-signal.SIGKILL, 137), f"exit {proc.returncode}\n{proc.stderr[-3000:]}"
    assert not (run / "summary.json").exists()

    before = _tree(run)
    for extra in ((), ("seed=3", "ckpt_path=last")):  # train over it; resume it with another config
        refused = run_train_py(*args, *extra, cache_dir=cache_dir)
        errors = [ln for ln in refused.stderr.splitlines() if ln.startswith("error:")]
        assert refused.returncode == 2 and len(errors) == 1 and "Traceback" not in refused.stderr, refused.stderr
        assert _tree(run) == before, "a refused relaunch must not write into the run folder"
    assert "ckpt_path=last" in errors[0] and "seed=3" in errors[0]

    (run / "FAILED").write_text("an earlier attempt's marker\n")  # as a crashed (not killed) attempt leaves it
    require_success(run_train_py(*args, "ckpt_path=last", cache_dir=cache_dir), "the resume with ckpt_path=last")
    assert not (run / "FAILED").exists()
    assert (run / ".hydra" / "config.yaml").read_bytes() == before[".hydra/config.yaml"]
    assert (run / ".hydra" / "attempt-2" / "overrides.yaml").is_file()  # the resume, recorded beside it
    summary = json.loads((run / "summary.json").read_text())
    ref_summary = json.loads((smoke_run / "summary.json").read_text())
    assert summary["global_step"] == 80 and summary["train/loss"] is not None
    for key in ("train/loss", "val/loss", "train/tokens_seen", "density/L1/name_last/slope", "modularity/score_v1"):
        assert summary.get(key) == ref_summary.get(key), key

    got, ref = _long(pd.read_csv(run / "metrics.csv")), _long(pd.read_csv(smoke_run / "metrics.csv"))
    assert not got.duplicated(["step", "metric"]).any()
    assert set(zip(got.step, got.metric)) == set(zip(ref.step, ref.metric))
    both = got.merge(ref, on=["step", "metric"], suffixes=("", "_ref"))
    both = both[~both.metric.str.startswith("perf/")]
    assert (both.value == both.value_ref).all(), both[both.value != both.value_ref].head()
    for table in ("density", "units", "density_regression", "modularity", "memorization"):
        a, b = (
            pd.read_parquet(run / "probes" / f"{table}.parquet"),
            pd.read_parquet(smoke_run / "probes" / f"{table}.parquet"),
        )
        cols = [c for c in b.columns if "seconds" not in c]
        pd.testing.assert_frame_equal(a[cols], b[cols])
    for table in ("tokens", "entities", "cooccurrence"):
        pd.testing.assert_frame_equal(
            pd.read_parquet(run / "ledger" / f"{table}.parquet"),
            pd.read_parquet(smoke_run / "ledger" / f"{table}.parquet"),
        )

    from densitylab.loggers import logged_keys, offline_runs, wandb_history

    attempts = offline_runs(run)
    assert len(attempts) == 2
    seen = [k for a in attempts for row in wandb_history(a) for k in logged_keys([row])]  # one entry per log call
    # train/tokens_seen rides along with every probe's scalars (its x-axis), so it is in several calls of a step
    twice = sorted(k for k in set(seen) if seen.count(k) > 1 and k[1] != "train/tokens_seen")
    assert not twice, f"(step, metric) logged twice across the attempts: {twice[:5]}"
    ref_keys = logged_keys(wandb_history(offline_runs(smoke_run)[0]))
    for metric in ("train/loss", "val/loss", "density/L0/pre_value/slope", "modularity/score_v1"):
        assert {s for s, m in seen if m == metric} == {s for s, m in ref_keys if m == metric}, metric
