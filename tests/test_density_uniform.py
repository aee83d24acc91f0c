"""The density probe on uniform random data, the Lazy-Neuron control (Li et al., arXiv:2210.06313): the windows-only
probe sets, ``callbacks.density.windows_only`` without a ledger, its records through a tiny Lightning fit, and one
in-process ``train(cfg)`` with ``data=uniform callbacks=uniform_control``."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
from lightning.pytorch.loggers import Logger

from densitylab.callbacks import DensityCallback, LedgerCallback
from densitylab.callbacks.base import connect_callbacks
from densitylab.data.uniform import UniformSequenceDataModule
from densitylab.errors import ConfigError
from densitylab.model import GPT
from densitylab.probes.density import FINAL_METRICS, METRICS, SET_METRICS
from densitylab.probes.sets import window_probe_sets

SETS = ["heldout", "random", "seen"]


def _dm(tmp_path=None, **kw) -> UniformSequenceDataModule:
    args = dict(n_sequences=48, length=17, alphabet_size=16, batch_size=16, seed=0, n_heldout=12)
    args.update(kw)
    return UniformSequenceDataModule(output_dir=None if tmp_path is None else str(tmp_path), **args)


def _density(tmp_path=None, **kw) -> DensityCallback:
    args = dict(every_n_steps=4, windows_per_set=8, control_rows=4, batch_size=8, seed=0, panel={}, endpoints={})
    args.update(kw)
    return DensityCallback(output_dir=None if tmp_path is None else str(tmp_path), **args)


def test_probe_windows_are_the_first_training_and_held_out_sequences():
    dm = _dm()
    w = dm.probe_windows(8)
    assert list(w) == ["seen", "heldout"]
    seen, held = w["seen"], w["heldout"]
    for part in (seen, held):
        assert part["input_ids"].shape == part["labels"].shape == (8, 16) and part["input_ids"].dtype == torch.int64
        assert part["sample_id"].shape == part["window_id"].shape == (8,)
    assert torch.equal(seen["input_ids"], dm.train_tokens[:8, :-1]) and torch.equal(
        seen["labels"], dm.train_tokens[:8, 1:]
    )
    assert seen["sample_id"].tolist() == list(range(8)) and seen["window_id"].tolist() == list(range(8))
    assert torch.equal(held["input_ids"], dm.heldout_tokens[:8, :-1]) and torch.equal(
        held["labels"], dm.heldout_tokens[:8, 1:]
    )
    assert (held["sample_id"] == -1).all() and held["window_id"].tolist() == list(range(8))  # never trained
    big = dm.probe_windows(100)  # at most what the splits hold
    assert len(big["seen"]["input_ids"]) == 48 and len(big["heldout"]["input_ids"]) == 12
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ConfigError, match="expected an integer >= 1"):
            dm.probe_windows(bad)


def test_window_probe_sets_seen_heldout_and_a_random_control():
    dm = _dm()
    sets = window_probe_sets(dm.probe_windows(8), dm.vocab_size, eos_id=dm.eos_id, n_control=5, seed=3)
    assert [s.name for s in sets] == ["seen", "heldout", "random"]
    seen, held, rnd = sets
    assert seen.sample_ids.tolist() == list(range(8)) and (held.sample_ids == -1).all() and (rnd.sample_ids == -1).all()
    assert torch.equal(seen.targets, dm.train_tokens[:8, 1:]) and rnd.targets is None
    assert all(s.labels is None and s.row_persons is None for s in sets)  # no roles, no persons: every position
    assert rnd.input_ids.shape == (5, 16) and rnd.input_ids.dtype == torch.int64
    assert 0 <= int(rnd.input_ids.min()) and int(rnd.input_ids.max()) < 16
    again = window_probe_sets(dm.probe_windows(8), 16, n_control=5, seed=3)[-1]
    assert torch.equal(again.input_ids, rnd.input_ids)  # seeded
    # a vocabulary with an end-of-text token: it never appears in the control
    ids = window_probe_sets(dm.probe_windows(2), 4, eos_id=2, n_control=64, seed=0)[-1].input_ids
    assert set(ids.unique().tolist()) == {0, 1, 3}
    with pytest.raises(ValueError, match="control_rows=0"):
        window_probe_sets(dm.probe_windows(2), 16, n_control=0)
    with pytest.raises(ValueError, match="at least one set"):
        window_probe_sets({}, 16)
    w = dm.probe_windows(2)
    w["heldout"] = {k: v[:, :-1] if v.ndim == 2 else v for k, v in w["heldout"].items()}
    with pytest.raises(ValueError, match="one window width"):
        window_probe_sets(w, 16)


def test_a_ledger_is_optional_only_in_the_windows_only_mode():
    # as before: density without a ledger outside the windows-only mode is one line at wiring time
    for callbacks in ({"ledger": None, "density": _density(ledger=None)}, {"density": _density(ledger=None)}):
        with pytest.raises(ConfigError) as e:
            connect_callbacks(callbacks)
        assert str(e.value).startswith("callbacks.density.ledger=null: expected the name") and "\n" not in str(e.value)
    cb = _density(ledger=None, windows_only=True)
    connect_callbacks({"ledger": None, "density": cb})  # nothing to connect
    assert cb.requires == {} and cb.needs == {} and DensityCallback.requires == {"ledger": LedgerCallback}
    with_ledger = _density(ledger="ledger", windows_only=True)  # a named ledger is still connected and checked
    with pytest.raises(ConfigError, match="callbacks.ledger is disabled"):
        connect_callbacks({"ledger": None, "density": with_ledger})
    with pytest.raises(ConfigError, match="windows_only='yes': expected true or false"):
        _density(ledger=None, windows_only="yes")


def test_the_windows_only_mode_on_text_data_or_data_without_windows_is_one_line():
    text = SimpleNamespace(splits={"train": object(), "heldout": object()}, vocab_size=16, eos_id=0)
    for dm, words in (
        (text, ["callbacks.density.windows_only=true", "['heldout', 'train']", "callbacks.density.ledger=ledger"]),
        (SimpleNamespace(splits={}, vocab_size=16, eos_id=None), ["neither packed text splits nor probe_windows()"]),
    ):
        cb = _density(ledger=None, windows_only=True)
        trainer = SimpleNamespace(datamodule=dm, global_step=0, is_global_zero=True, world_size=1, loggers=[])
        with pytest.raises(ConfigError) as e:
            cb.on_fit_start(trainer, None)
        msg = str(e.value)
        assert "\n" not in msg and all(w in msg for w in words), msg


class Capture(Logger):
    """A logger that keeps every ``log_metrics`` call."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[int, dict]] = []

    @property
    def name(self):
        return "capture"

    @property
    def version(self):
        return 0

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        self.calls.append((step, dict(metrics)))


class TinyLM(L.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.model = GPT(vocab_size=16, block_size=16, n_layer=2, n_head=1, n_embd=16)

    def training_step(self, batch, batch_idx):
        logits = self.model(batch["input_ids"])
        return torch.nn.functional.cross_entropy(logits.reshape(-1, 16), batch["labels"].reshape(-1), ignore_index=-100)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-2)


def test_windows_only_density_through_a_tiny_fit(tmp_path):
    dm, cb, log = _dm(tmp_path), _density(tmp_path, ledger=None, windows_only=True), Capture()
    connect_callbacks({"ledger": None, "density": cb})
    trainer = L.Trainer(
        max_steps=6,
        log_every_n_steps=1,
        accelerator="cpu",
        devices=1,
        logger=log,
        callbacks=[cb],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(TinyLM(), datamodule=dm)
    probes = tmp_path / "probes"
    rows = pd.read_parquet(probes / "density.parquet")
    assert sorted(rows["step"].unique()) == [0, 1, 4, 6]  # step 0, log-spaced 1 and 4, the end
    assert sorted(rows["probe_set"].unique()) == SETS
    assert set(rows["role"]) == {"all"} and set(rows["estimand"]) == {"mean"} and set(rows["exposure"]) == {"all"}
    assert set(rows["status"]) == {"descriptive"} and (rows["n_entities"] == 0).all()
    expected = {(layer, m) for layer in range(2) for m in METRICS + SET_METRICS} | {(1, m) for m in FINAL_METRICS}
    for (step, name), g in rows.groupby(["step", "probe_set"]):
        assert set(zip(g["layer"], g["metric"])) == expected, (step, name)
        assert len(g) == len(expected)  # one row per (layer, metric)
    af = rows[rows["metric"] == "active_frac"]
    assert (af["n"] == af["probe_set"].map({"seen": 8 * 16, "heldout": 8 * 16, "random": 4 * 16})).all()
    assert af["value"].between(0, 1).all() and np.isfinite(af["ci_low"]).all()
    live = rows[rows["metric"] == "active_frac_live"].set_index(["step", "probe_set", "layer"])["value"]
    assert (live >= af.set_index(["step", "probe_set", "layer"])["value"] - 1e-6).all()  # live units <= all units
    units = pd.read_parquet(probes / "units.parquet")
    assert sorted(units["step"].unique()) == [0, 1, 4, 6] and set(units["probe_set"]) == {"all", *SETS}
    pooled = units[units["probe_set"] == "all"].drop_duplicates(["step", "layer"])
    assert (pooled["n_positions"] == (8 + 8 + 4) * 16).all() and pooled["dead_frac"].between(0, 1).all()
    table = pd.read_parquet(probes / "probe_sets.parquet")
    assert table.groupby("probe_set").size().to_dict() == {"heldout": 8, "random": 4, "seen": 8}
    assert table.query("probe_set == 'seen'")["sample_id"].tolist() == list(range(8))
    # no panel, positions, regression or endpoints in this mode
    for name in ("panel.parquet", "density_positions.parquet", "density_regression.parquet"):
        assert not (probes / name).exists(), name
    summary = cb.summary_metrics()
    assert summary["density/probe_calls"] == 4 and set(summary) == {
        "density/probe_calls",
        "perf/density_probe_seconds",
        "density/L0/dead_frac",
        "density/L1/dead_frac",
    }
    logged = [(s, m) for s, m in log.calls if "perf/density_probe_seconds" in m]
    assert [s for s, _ in logged] == [0, 1, 4, 6]
    for _, m in logged:
        keys = {k for k in m if k.startswith("density/")}
        assert {f"density/L{i}/{x}/{s}" for i in range(2) for x in ("active_frac_live", "hoyer") for s in SETS} <= keys
        assert not any("slope" in k or "diff_" in k for k in keys) and all(math.isfinite(m[k]) for k in keys)
    assert cb.windows_mode and cb.panel is None and cb.headline == {}


def test_density_report_reads_a_windows_only_run(tmp_path):
    """What ``densitylab.run`` writes at the end (``_write_outputs``: the density report) on such a run."""
    from densitylab.report.density import density_report, format_table

    cb = _density(tmp_path, ledger=None, windows_only=True, every_n_steps=2)
    trainer = L.Trainer(
        max_steps=2,
        accelerator="cpu",
        devices=1,
        logger=False,
        callbacks=[cb],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(TinyLM(), datamodule=_dm(tmp_path))
    plots, table = density_report([tmp_path])
    format_table(table)
    assert plots.is_dir() and table.empty  # no endpoints: an empty headline table


def test_uniform_control_trains_in_process(compose_config, tmp_path):
    """``data=uniform callbacks=uniform_control``: one in-process ``train(cfg)`` (build, fit, validate, write)."""
    from densitylab.run import train

    cfg = compose_config(
        "data=uniform",
        "callbacks=uniform_control",
        "logger=csv",
        "data.length=17",
        "data.n_sequences=64",
        "data.alphabet_size=32",
        "data.batch_size=16",
        "data.n_heldout=16",
        "model.net.block_size=16",
        "model.net.n_layer=2",
        "model.net.n_embd=32",
        "model.net.n_head=2",
        "trainer.max_steps=6",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "callbacks.density.every_n_steps=4",
        "callbacks.density.windows_per_set=8",
        return_hydra_config=False,
    )
    summary = train(cfg)
    run = tmp_path / "run"
    assert summary["status"] == "completed" and summary["global_step"] == 6
    assert json.loads((run / "summary.json").read_text())["density/probe_calls"] == 4
    rows = pd.read_parquet(run / "probes" / "density.parquet")
    assert sorted(rows["probe_set"].unique()) == SETS and sorted(rows["step"].unique()) == [0, 1, 4, 6]
    for step in (0, 6):
        at = rows[(rows["step"] == step) & (rows["metric"] == "active_frac_live")]
        assert sorted(at["probe_set"].unique()) == SETS and set(at["layer"]) == {0, 1}
    assert (run / "probes" / "units.parquet").is_file() and (run / "plots").is_dir()
    metrics = pd.read_csv(run / "metrics.csv")
    assert metrics["density/L1/active_frac_live/seen"].notna().sum() == 4
