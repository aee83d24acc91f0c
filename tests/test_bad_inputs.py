"""Bad inputs (issue 13, item 5): one ``error:`` line naming the value, exit 2, no traceback, refused before the data
are prepared, and nothing written into an existing run folder.

Most cases run in-process on a composed config (:mod:`densitylab.preflight`, ``run.train``); the few that are only
caught before ``@hydra.main`` (the output folder, writes into a finished run) run ``train.py`` (slow-marked).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, run_command

from densitylab import preflight
from densitylab.errors import ConfigError

SMOKE_NET = {
    "vocab_size": 512,
    "block_size": 64,
    "n_layer": 2,
    "n_head": 2,
    "n_embd": 64,
    "mlp_ratio": 4,
    "activation": "relu",
    "dropout": 0.0,
    "bias": True,
}


class OsSystem:
    """A pickle whose load would call os.system (never loaded here: weights_only refuses it)."""

    def __reduce__(self):
        return (os.system, ("true",))


class Payload:
    """An arbitrary class instance: ``torch.load(weights_only=True)`` refuses it."""


def _densitylab_ckpt(**net) -> dict:
    return {
        "epoch": 0,
        "global_step": 40,
        "pytorch-lightning_version": "2.5.0",
        "state_dict": {"model.lm_head.weight": torch.zeros(2, 2)},
        "hyper_parameters": {
            "net": {**SMOKE_NET, **net},
            "optimizer": {"_target_": "torch.optim.adamw.AdamW", "lr": 3e-3, "weight_decay": 0.1, "betas": [0.9, 0.95]},
            "scheduler": None,
            "compile": False,
            "init_seed": 0,
        },
    }


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Bad checkpoints and tokenizer files, and a finished run folder (summary.json, a checkpoint, .hydra/)."""
    d = tmp_path_factory.mktemp("bad")
    run = d / "finished"
    (run / "checkpoints").mkdir(parents=True)
    (run / ".hydra").mkdir()
    torch.save(_densitylab_ckpt(), run / "checkpoints" / "last.ckpt")
    (run / "summary.json").write_text(json.dumps({"status": "completed", "global_step": 40}))
    (run / ".hydra" / "config.yaml").write_text("seed: 0\n")
    (run / "train.log").write_text("finished\n")
    (run / "metrics.csv").write_text("step,train/loss\n0,6.2\n")
    good = (run / "checkpoints" / "last.ckpt").read_bytes()
    out = {"finished": run, "good": run / "checkpoints" / "last.ckpt"}
    for name, data in {
        "truncated": good[: len(good) // 2],
        "random": os.urandom(4096),
        "empty_ckpt": b"",
        "text": b"not a checkpoint\n",
    }.items():
        (d / f"{name}.ckpt").write_bytes(data)
        out[name] = d / f"{name}.ckpt"
    torch.save({"x": Payload()}, d / "pickle.ckpt")
    torch.save({"x": OsSystem()}, d / "os_system.ckpt")  # a blocked module's global (os.system)
    torch.save(_densitylab_ckpt(n_embd=128), d / "other_size.ckpt")
    torch.save(_densitylab_ckpt(vocab_size=999), d / "other_vocab.ckpt")
    torch.save({"state_dict": {}, "pytorch-lightning_version": "2.5.0", "hyper_parameters": {}}, d / "lightning.ckpt")
    torch.save({"w": torch.zeros(2)}, d / "plain.ckpt")
    (d / "dir.ckpt").mkdir()
    out.update(
        {n: d / f"{n}.ckpt" for n in ("pickle", "os_system", "other_size", "other_vocab", "lightning", "plain", "dir")}
    )
    (d / "empty.json").write_text("")
    (d / "notjson.json").write_text("{not json")
    (d / "nottok.json").write_text('{"a": 1}')
    out.update({n: d / f"{n}.json" for n in ("empty", "notjson", "nottok")})
    out["afile"] = d / "afile"
    out["afile"].write_text("x")
    return out


def _tree_hash(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    } | {str(p.relative_to(folder)) + "/": "" for p in folder.rglob("*") if p.is_dir()}


def _check(cfg) -> None:
    preflight.check_config(cfg, preflight.resolve_checkpoint(cfg.get("ckpt_path"), cfg.paths.output_dir))


CASES = [  # (overrides, words the one line must contain)
    (["ckpt_path={truncated}"], ["truncated.ckpt", "not a readable checkpoint", "truncated"]),
    (["ckpt_path={random}"], ["random.ckpt", "not a readable checkpoint"]),
    (["ckpt_path={empty_ckpt}"], ["empty_ckpt.ckpt", "empty file"]),
    (["ckpt_path={text}"], ["text.ckpt", "not a readable checkpoint"]),
    (["ckpt_path={pickle}"], ["pickle.ckpt", "not a safe checkpoint"]),
    (["ckpt_path={os_system}"], ["os_system.ckpt", "not a safe checkpoint", "system"]),
    (["ckpt_path={dir}"], ["dir.ckpt", "is a directory"]),
    (["ckpt_path={other_size}"], ["other_size.ckpt", "n_embd 128 != model.net.n_embd 64"]),
    (["ckpt_path={other_size}", "model.net.n_embd=128", "model.net.n_layer=3"], ["n_layer 2 != model.net.n_layer 3"]),
    (["ckpt_path={other_vocab}", "model.net.vocab_size=512"], ["vocab_size 999 != model.net.vocab_size 512"]),
    (["ckpt_path={good}", "model/optimizer=sgd"], ["optimizer AdamW", "torch.optim.SGD"]),
    (["ckpt_path={lightning}"], ["lightning.ckpt", "not a densitylab one"]),
    (["ckpt_path={plain}"], ["plain.ckpt", "not a Lightning checkpoint"]),
    (["ckpt_path=last"], ["ckpt_path='last'", "holds no checkpoint"]),
    (["model.net.block_size=0"], ["model.net.block_size=0", "positive integer"]),
    (["model.net.n_head=-2"], ["model.net.n_head=-2", "positive integer"]),
    (["model.net.n_embd=1.5"], ["model.net.n_embd=1.5"]),
    (["model.net.n_embd=66", "model.net.n_head=4"], ["not divisible"]),
    (["model.optimizer.betas=[2,3]"], ["model.optimizer.betas=[2, 3]", "[0, 1)"]),
    (["model.optimizer.betas=[0.9,1.0]"], ["model.optimizer.betas=[0.9, 1.0]", "[0, 1)"]),
    (["+model.optimizer.eps=-1"], ["model.optimizer.eps=-1", ">= 0"]),
    (["model.optimizer.weight_decay=-0.1"], ["model.optimizer.weight_decay=-0.1", ">= 0"]),
    (["model.optimizer.lr=0"], ["model.optimizer.lr=0", "positive"]),
    (["model/optimizer=sgd", "model.optimizer.momentum=-1"], ["model.optimizer.momentum=-1"]),
    (["data.canaries.length=100"], ["data.canaries.length=100", "model.net.block_size + 1 = 65"]),
    (["data.canaries.per_group=0"], ["data.canaries.per_group=0", ">= 1"]),
    (["data=uniform", "data.length=100"], ["data.length=100", "model.net.block_size + 1 = 65"]),
    (["trainer.max_steps=0"], ["trainer.max_steps=0", "integer >= 1"]),
    (["trainer.max_steps=abc"], ["trainer.max_steps='abc'", "integer >= 1"]),
    (["trainer.max_steps=1.5"], ["trainer.max_steps=1.5", "integer >= 1"]),
    (["trainer.max_steps=-1"], ["trainer.max_steps=-1", "integer >= 1", "max_time"]),  # nothing would stop it
    (["model.net.dropout=abc"], ["model.net.dropout='abc'", "[0, 1)"]),
    (["seed=abc"], ["seed='abc'", "integer"]),
    (["tokenizer=file", "tokenizer.path={finished}/missing.json"], ["missing.json", "does not exist"]),
    (["tokenizer=file", "tokenizer.path={finished}"], ["finished", "is a directory"]),
    (["tokenizer=file", "tokenizer.path={empty}"], ["empty.json", "is empty"]),
    (["tokenizer=file", "tokenizer.path={notjson}"], ["notjson.json", "is not JSON"]),
    (["tokenizer=file", "tokenizer.path={nottok}"], ["nottok.json", "not a tokenizer"]),
]


@pytest.mark.parametrize("overrides, words", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_value_is_one_line_before_data(compose_config, files, overrides, words):
    before = _tree_hash(files["finished"])
    cfg = compose_config("experiment=smoke", "logger=csv", *(o.format(**files) for o in overrides))
    with pytest.raises(ConfigError) as e:
        _check(cfg)
    msg = str(e.value)
    assert "\n" not in msg and msg.strip() == msg
    for w in words:
        assert w in msg, msg
    assert "weights_only" not in msg
    assert _tree_hash(files["finished"]) == before


@pytest.mark.parametrize("override", ["model.net.block_size=0", "model.optimizer.betas=[2,3]", "ckpt_path={pickle}"])
def test_train_refuses_before_preparing_data(compose_config, files, tmp_path, override):
    from densitylab.run import train

    cfg = compose_config("experiment=smoke", "logger=csv", override.format(**files))
    with pytest.raises(ConfigError):
        train(cfg)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())
    assert not (tmp_path / "run" / "data.json").exists()


@pytest.mark.parametrize(
    "overrides",
    [
        ["trainer.max_steps=-1", "trainer.max_epochs=2"],
        ["trainer.max_steps=-1", "+trainer.max_time=00:00:01:00"],
        ["experiment=capacity_smoke", "trainer.max_steps=-1"],  # max_epochs -1, stopped by the plateau rule
        ["data.canaries.length=100", "callbacks.memorization=null"],  # only the probe needs one window
    ],
)
def test_valid_edge_values_pass(compose_config, overrides):
    _check(compose_config("experiment=smoke", "logger=csv", *overrides))


def test_multirun_config_is_left_to_the_sweeper(tmp_path):
    from densitylab.config import check_overrides

    conf = str(Path(__file__).resolve().parents[1] / "conf")
    args = ["experiment=smoke", "hparams_search=optuna", "model.net.n_head=3", f"hydra.sweep.dir={tmp_path}/s"]
    assert check_overrides(conf, "config", args) is None
    assert preflight.check_launch(conf, "config", args) == (None, [])  # the sweeper's n_embd choices decide


def test_lit_built_without_convert_accepts_its_own_betas(compose_config):
    from hydra.utils import instantiate

    lit = instantiate(compose_config().model)  # ListConfig betas, as a notebook would build it
    assert lit.optimizer_factory.keywords["lr"] == 1e-3


def test_valid_config_and_checkpoint_pass(compose_config, files):
    cfg = compose_config("experiment=smoke", "logger=csv", f"ckpt_path={files['good']}")
    _check(cfg)
    preflight.check_checkpoint_vocab(cfg, files["good"], 512)
    with pytest.raises(ConfigError, match=r"vocab_size 512 != 600 \(this run's tokenizer\)"):
        preflight.check_checkpoint_vocab(cfg, files["good"], 600)


def test_output_dir_checks(files, tmp_path, monkeypatch):
    preflight.check_output_dir(tmp_path / "new" / "run")  # creatable: fine, and nothing is created
    assert not (tmp_path / "new").exists()
    with pytest.raises(ConfigError, match=r"is under a regular file"):
        preflight.check_output_dir(files["afile"] / "sub")
    with pytest.raises(ConfigError, match=r"is a file"):
        preflight.check_output_dir(files["afile"])
    monkeypatch.setattr(os, "access", lambda *a, **k: False)  # root may write anywhere: simulate a read-only parent
    with pytest.raises(ConfigError, match=r"is not writable"):
        preflight.check_output_dir(tmp_path / "ro" / "run")


def _train(*overrides: str, cwd: Path):
    return run_command([sys.executable, str(REPO / "train.py"), *overrides], timeout=120, cwd=cwd)


def _assert_refused(proc, *words: str) -> None:
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(lines) == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    for w in words:
        assert w in lines[0], lines[0]


@pytest.mark.slow
@pytest.mark.parametrize(
    "override, words",
    [
        ("hydra.run.dir={afile}/sub", ["afile/sub", "under a regular file"]),
        ("model.optimizer.betas=[2,3]", ["model.optimizer.betas=[2, 3]"]),
        ("ckpt_path={pickle}", ["not a safe checkpoint"]),
        ("seed=5", ["holds a finished run"]),  # a valid relaunch: no .hydra/ rewrite, no FAILED
    ],
    ids=["output-under-file", "betas-into-finished-run", "pickle-into-finished-run", "relaunch-finished-run"],
)
def test_train_py_refuses_and_leaves_finished_run_untouched(files, tmp_path, override, words):
    before = _tree_hash(files["finished"])
    run_dir = [] if "hydra.run.dir" in override else [f"hydra.run.dir={files['finished']}"]
    proc = _train("experiment=smoke", "logger=csv", *run_dir, override.format(**files), cwd=tmp_path)
    _assert_refused(proc, *words)
    assert "weights_only" not in proc.stderr
    assert _tree_hash(files["finished"]) == before
    assert files["afile"].read_text() == "x"
