"""House rules and configuration, all in-process and fast (no training).

- ``densitylab.probes`` and ``densitylab.ledger`` never import Lightning or Hydra (checked in a fresh
  interpreter, so nothing imported by other tests hides an import).
- Every option of every config group under ``conf/`` composes, and every object it defines (each node
  with a ``_target_``: top-level nodes such as ``data``, ``model``, ``trainer``, and the entries of
  ``callbacks`` and ``logger``) instantiates here, without running anything. Groups and options are
  found by walking ``conf/``, so a new option is covered as soon as its file exists.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from conftest import CONF_DIR, REPO, run_command
from omegaconf import DictConfig, OmegaConf

FORBIDDEN = ("lightning", "lightning_fabric", "pytorch_lightning", "hydra")
PURE_PACKAGES = ("densitylab.probes", "densitylab.ledger")


# ----------------------------------------------------------------------------- house rules
_IMPORT_CHECK = """
import importlib, pkgutil, sys
forbidden, walk, names = {forbidden!r}, {walk!r}, sys.argv[1:]
found = []
def check(name):
    importlib.import_module(name)
    new = sorted({{m.split(".")[0] for m in sys.modules if m.split(".")[0] in forbidden}} - {{f for _, f in found}})
    found.extend((name, f) for f in new)
for name in names:
    check(name)
    if walk:
        for info in pkgutil.walk_packages(importlib.import_module(name).__path__, name + "."):
            check(info.name)
print("; ".join(f"{{m}} loads {{f}}" for m, f in found))
sys.exit(1 if found else 0)
"""


def _import_in_fresh_interpreter(names: list[str], walk: bool):
    code = _IMPORT_CHECK.format(walk=walk, forbidden=FORBIDDEN)
    return run_command([sys.executable, "-c", code, *names], timeout=120, cwd=REPO, what=f"importing {names}")


def test_importing_probes_and_ledger_leaves_lightning_and_hydra_out_of_sys_modules():
    proc = _import_in_fresh_interpreter(list(PURE_PACKAGES), walk=False)
    assert proc.returncode == 0, (proc.stdout.strip() or "import failed") + "\n" + proc.stderr[-2000:]


def test_every_module_of_probes_and_ledger_imports_without_lightning_or_hydra():
    """The same rule for every submodule (``densitylab.probes.sets``, ...): the first module that pulls
    a forbidden package in is named."""
    proc = _import_in_fresh_interpreter(list(PURE_PACKAGES), walk=True)
    assert proc.returncode == 0, (proc.stdout.strip() or "import failed") + "\n" + proc.stderr[-2000:]


# ----------------------------------------------------------------------------- every group option
def _group_options() -> list[tuple[str, str]]:
    """(group, option) for every ``*.yaml`` in every folder under ``conf/`` (the root config itself and
    the git-ignored, machine-specific ``local/`` group left out)."""
    out = []
    for folder in sorted(p for p in CONF_DIR.rglob("*") if p.is_dir()):
        group = folder.relative_to(CONF_DIR).as_posix()
        if group == "local" or group.startswith("local/"):
            continue
        out += [(group, f.stem) for f in sorted(folder.glob("*.yaml"))]
    return out


GROUP_OPTIONS = _group_options()
IDS = [f"{g}={o}" for g, o in GROUP_OPTIONS]


def _cuda_devices() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _not_here(group: str, option: str) -> str | None:
    """Why the objects of ``group=option`` cannot be built on this machine (None: they can)."""
    if group == "trainer" and option == "gpu" and _cuda_devices() < 1:
        return "trainer=gpu: needs a CUDA GPU"
    if group == "trainer" and option == "fsdp" and _cuda_devices() < 2:
        return "trainer=fsdp: needs 2 CUDA GPUs (Lightning's FSDP is CUDA-only)"
    if group == "hydra/launcher" and option == "slurm":
        return "hydra/launcher=slurm: submits to SLURM (composition is checked)"
    return None


def test_conf_has_the_groups_the_project_documents():
    groups = {g for g, _ in GROUP_OPTIONS}
    assert {"model", "data", "tokenizer", "trainer", "logger", "callbacks", "experiment"} <= groups, groups
    assert {"hparams_search", "hydra/launcher"} <= groups, groups


#: Groups that exist only inside an experiment's defaults: composed with that experiment.
WITHIN = {"study_arm": ["experiment=familiarity_study"]}


@pytest.mark.parametrize(("group", "option"), GROUP_OPTIONS, ids=IDS)
def test_every_group_option_composes_and_resolves(group, option, compose_config):
    cfg = compose_config(*WITHIN.get(group, []), f"{group}={option}")
    if group.startswith("hydra/"):
        node = OmegaConf.select(cfg, group.replace("/", "."))
        assert node is not None and "_target_" in node, f"{group}={option} defines no {group.replace('/', '.')}"
        return
    assert cfg.hydra.runtime.choices[group] == option
    # every interpolation outside hydra resolves (a renamed key leaves ${old.key} dangling); ??? may stay
    user = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    OmegaConf.to_container(user, resolve=True, throw_on_missing=False)


def _placeholders(tmp: Path) -> dict[str, str]:
    """Values for mandatory (``???``) settings, keyed by their last name: a small text file for ``files``,
    a real ``tokenizer.json`` for ``path``, a hub-style id for ``name``."""
    text = tmp / "sample.txt"
    text.write_text("\n\n".join(f"Paragraph {i}: Romeo met Juliet in Verona on day {i}." for i in range(50)))
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator([text.read_text()], trainer=trainer)
    tok_path = tmp / "tokenizer.json"
    tok.save(str(tok_path))
    return {"files": str(text), "file": str(text), "path": str(tok_path), "name": "densitylab-test/placeholder"}


def _fill_missing(cfg: DictConfig, tmp: Path) -> None:
    missing = sorted(k for k in OmegaConf.missing_keys(cfg) if not k.startswith("hydra."))
    if not missing:
        return
    values = _placeholders(tmp)
    for key in missing:
        leaf = key.rsplit(".", 1)[-1]
        OmegaConf.update(cfg, key, values.get(leaf, values["files"]), merge=False)


def _targets(cfg: DictConfig) -> list[tuple[str, DictConfig]]:
    """Nodes with a ``_target_``: top-level ones (data, model, trainer, ...) and, for a top-level node
    without one (callbacks, logger), each of its entries. Nested targets (``data.source``,
    ``model.net``, ``trainer.strategy``) are built by Hydra as part of their parent."""
    out = []
    for key in cfg:
        if key == "hydra" or OmegaConf.is_missing(cfg, key):
            continue
        node = cfg._get_node(key)
        if not isinstance(node, DictConfig) or node._is_none():
            continue
        if "_target_" in node:
            out.append((str(key), node))
            continue
        for sub in node:
            child = node._get_node(sub)
            if isinstance(child, DictConfig) and not child._is_none() and "_target_" in child:
                out.append((f"{key}.{sub}", child))
    return out


def _expected_type(name: str):
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import Logger

    top = name.split(".")[0]
    return {
        "data": pl.LightningDataModule,
        "model": pl.LightningModule,
        "trainer": pl.Trainer,
        "callbacks": pl.Callback,
        "logger": Logger,
    }.get(top)


@pytest.mark.parametrize(("group", "option"), GROUP_OPTIONS, ids=IDS)
def test_every_group_option_instantiates_its_objects(group, option, compose_config, tmp_path, monkeypatch):
    """Build (never fit, never prepare data) every object the composed config defines."""
    reason = _not_here(group, option)
    if reason:
        pytest.skip(reason)
    from hydra.utils import instantiate

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing here may reach the network
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    cfg = compose_config(*WITHIN.get(group, []), f"{group}={option}")
    _fill_missing(cfg, tmp_path)
    targets = _targets(cfg)
    assert any(name == "data" for name, _ in targets), f"{group}={option}: no data node with a _target_"
    failures = []
    for name, node in targets:
        try:
            obj = instantiate(node, _convert_="all")
        except Exception as e:  # collect every node's problem, not only the first
            failures.append(f"{name}: {type(e).__name__}: {' '.join(str(e).split())[:300]}")
            continue
        want = _expected_type(name)
        if want is not None and not isinstance(obj, want):
            failures.append(f"{name}: built {type(obj).__name__}, expected a {want.__name__}")
    assert not failures, f"{group}={option}:\n" + "\n".join(failures)


def test_bf16_on_a_cpu_without_bf16_falls_back_to_fp32_with_one_line(monkeypatch, caplog):
    import logging

    from omegaconf import OmegaConf

    from densitylab import run

    def cfg(precision, accelerator="cpu"):
        c = OmegaConf.create({"trainer": {"precision": precision, "accelerator": accelerator}})
        OmegaConf.set_struct(c, True)
        OmegaConf.set_readonly(c, True)  # as Hydra hands it over
        return c

    assert isinstance(run.cpu_supports_bf16(), bool)  # this machine's answer (oneDNN's check)
    monkeypatch.setattr(run, "cpu_supports_bf16", lambda: False)
    c = cfg("bf16-mixed")
    with caplog.at_level(logging.WARNING, logger="densitylab"):
        assert run.cpu_precision_fallback(c) == "bf16-mixed"
    assert c.trainer.precision == "32-true"
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and lines[0].startswith("trainer.precision=bf16-mixed: this CPU has no native bf16")
    assert run.cpu_precision_fallback(cfg("32-true")) is None and run.cpu_precision_fallback(cfg("16-mixed")) is None
    monkeypatch.setattr(run, "cpu_supports_bf16", lambda: True)
    c = cfg("bf16-mixed")
    assert run.cpu_precision_fallback(c) is None and c.trainer.precision == "bf16-mixed"
