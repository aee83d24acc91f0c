"""Shared test settings and helpers.

Two environment variables, both documented in the README ("Tests"):

- ``DENSITYLAB_TEST_TIMEOUT_SCALE`` (float, default 1): multiplies every subprocess timeout of the
  end-to-end tests (:func:`run_command`). Timeouts only stop a hung run; they never judge speed
  (timings live in ``bench/`` and the README), so a slow or busy machine raises the scale instead.
- ``DENSITYLAB_TEXT_DIR``: the folder holding the real-text files the tests read (e.g.
  ``tinyshakespeare.txt``). Default: ``<repo>/../shared/data`` where it exists. A test that needs a
  file that is not there skips with one line (:func:`real_text`).

Config fixtures compose ``conf/`` in-process, as lightning-hydra-template's tests do
(:func:`compose_config`).
"""

from __future__ import annotations

import inspect
import os
import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"
TIMEOUT_SCALE_ENV = "DENSITYLAB_TEST_TIMEOUT_SCALE"
TEXT_DIR_ENV = "DENSITYLAB_TEXT_DIR"


# ----------------------------------------------------------------------------- subprocess timeouts
def timeout_scale() -> float:
    """``DENSITYLAB_TEST_TIMEOUT_SCALE`` as a positive float (1 when unset); a bad value fails the test."""
    raw = os.environ.get(TIMEOUT_SCALE_ENV, "").strip()
    if not raw:
        return 1.0
    try:
        scale = float(raw)
    except ValueError:
        scale = float("nan")
    if not scale > 0:
        pytest.fail(f"{TIMEOUT_SCALE_ENV}={raw!r}: expected a positive number, e.g. 2", pytrace=False)
    return scale


def scaled_timeout(base_s: float) -> float:
    """``base_s`` seconds times :func:`timeout_scale`."""
    return base_s * timeout_scale()


def _tail(text: str | bytes | None, n: int = 3000) -> str:
    if text is None:
        return ""
    if isinstance(text, bytes):  # TimeoutExpired carries bytes even with text=True
        text = text.decode("utf-8", errors="replace")
    return text[-n:]


def run_command(
    cmd: Sequence[str], *, timeout: float, what: str | None = None, **kwargs
) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd, capture_output=True, text=True, ...)`` with a timeout of ``timeout`` base
    seconds × ``DENSITYLAB_TEST_TIMEOUT_SCALE``. A timeout fails the calling test (or fixture) with one
    line naming the command, the limit and the scale, followed by the tail of its stderr.

    Args:
        cmd: the command line.
        timeout: base timeout in seconds (generous: it only catches a hung run).
        what: a short name for the message (default: the command line).
        **kwargs: passed on to :func:`subprocess.run` (``cwd``, ``env``, ``check`` ...).
    """
    limit = scaled_timeout(timeout)
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    try:
        return subprocess.run(list(cmd), timeout=limit, **kwargs)
    except subprocess.TimeoutExpired as e:
        stderr = e.stderr
    name = what or shlex.join(str(c) for c in cmd)  # failing outside the except: no chained traceback
    pytest.fail(
        f"{name} timed out after {limit:g} s ({TIMEOUT_SCALE_ENV}={timeout_scale():g}; raise it on a slow machine)"
        f"\n--- stderr tail ---\n{_tail(stderr)}",
        pytrace=False,
    )


def run_train_py(
    *overrides: str, cache_dir: str | Path, cwd: str | Path = REPO, timeout: float = 600, env: dict | None = None
) -> subprocess.CompletedProcess:
    """``python train.py *overrides trainer.enable_progress_bar=false`` as a user runs it: W&B offline, the data
    cache in ``cache_dir``, ``env`` added to the environment; ``timeout`` is a base in seconds, scaled by
    ``DENSITYLAB_TEST_TIMEOUT_SCALE`` (:func:`run_command`)."""
    full = dict(os.environ, WANDB_MODE="offline", DENSITYLAB_CACHE_DIR=str(cache_dir), PYTHONUNBUFFERED="1")
    full.update(env or {})
    return run_command(
        [sys.executable, str(REPO / "train.py"), *overrides, "trainer.enable_progress_bar=false"],
        cwd=cwd,
        env=full,
        timeout=timeout,
        what="train.py " + " ".join(overrides),
    )


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One data cache (``DENSITYLAB_CACHE_DIR``) for the train.py subprocesses of the session."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory, cache_dir) -> Path:
    """The run folder of one uninterrupted ``train.py experiment=smoke`` (W&B offline): the reference of the
    end-to-end and resume tests."""
    run_dir = tmp_path_factory.mktemp("smoke") / "run"
    proc = run_train_py("experiment=smoke", f"hydra.run.dir={run_dir}", cache_dir=cache_dir)
    require_success(proc, "the smoke run (train.py experiment=smoke)")
    assert f"run folder: {run_dir}" in proc.stdout
    return run_dir


def require_success(proc: subprocess.CompletedProcess, what: str) -> subprocess.CompletedProcess:
    """Fail with one line (exit status) plus the stderr tail unless ``proc`` exited 0. For fixtures:
    every test that depends on a failed run then reports this cause."""
    if proc.returncode != 0:
        pytest.fail(
            f"{what} failed with exit status {proc.returncode}\n--- stderr tail ---\n{_tail(proc.stderr)}",
            pytrace=False,
        )
    return proc


# ----------------------------------------------------------------------------- real text
def text_dir() -> Path:
    """The real-text folder: ``$DENSITYLAB_TEXT_DIR``, else ``<repo>/../shared/data``."""
    env = os.environ.get(TEXT_DIR_ENV, "").strip()
    return Path(env).expanduser() if env else REPO.parent / "shared" / "data"


def real_text(name: str = "tinyshakespeare.txt") -> Path:
    """Path of the real-text file ``name`` in :func:`text_dir`, or skip the test with one line."""
    path = text_dir() / name
    if not path.is_file():
        pytest.skip(f"real text not found: set {TEXT_DIR_ENV} to a folder holding {name} (looked for {path})")
    return path


@pytest.fixture(scope="session")
def shakespeare() -> Path:
    """``tinyshakespeare.txt`` from ``DENSITYLAB_TEXT_DIR`` (the test skips when it is absent)."""
    return real_text("tinyshakespeare.txt")


# ----------------------------------------------------------------------------- composing conf/
def compose_conf(
    overrides: Sequence[str] = (), *, output_dir: str | Path, cache_dir: str | Path, return_hydra_config: bool = True
):
    """Compose ``conf/config.yaml`` in-process with ``overrides`` (as ``train.py`` would, without running
    anything): :func:`densitylab.config.compose_run_config` with this repository's ``conf/``. Call
    :func:`clear_hydra_config` afterwards (the :func:`compose_config` fixture does)."""
    from densitylab.config import compose_run_config

    return compose_run_config(
        overrides,
        output_dir=output_dir,
        cache_dir=cache_dir,
        return_hydra_config=return_hydra_config,
        config_dir=CONF_DIR,
    )


def clear_hydra_config() -> None:
    """Undo :func:`compose_conf`'s global state (:func:`densitylab.config.clear_hydra_config`)."""
    from densitylab.config import clear_hydra_config as clear

    clear()


@pytest.fixture
def compose_config(tmp_path, monkeypatch) -> Callable:
    """Factory ``compose_config(*overrides, return_hydra_config=True) -> DictConfig`` composing ``conf/``
    in-process: run folder ``tmp_path/run``, cache ``tmp_path/cache``, working directory ``tmp_path``
    (so ``${cwd:}`` paths and anything a constructor writes stay there), W&B offline."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("DENSITYLAB_CACHE_DIR", str(tmp_path / "cache"))

    def _compose(*overrides: str, return_hydra_config: bool = True):
        return compose_conf(
            overrides,
            output_dir=tmp_path / "run",
            cache_dir=tmp_path / "cache",
            return_hydra_config=return_hydra_config,
        )

    yield _compose
    clear_hydra_config()


# ----------------------------------------------------------------------------- defaults live in conf/
def import_target(target: str):
    """The object a ``_target_`` string names."""
    import importlib

    module, _, name = target.rpartition(".")
    return getattr(importlib.import_module(module), name)


def plain_value(value):
    """A YAML value as plain Python (lists for ListConfig / tuples), to compare with a Python default."""
    from omegaconf import ListConfig

    if isinstance(value, (ListConfig, list, tuple)):
        return [plain_value(v) for v in value]
    return value


def check_python_defaults(fn, node, where: str) -> list[str]:
    """Problems with ``fn``'s Python defaults against the YAML node that configures it: a default that differs
    from the YAML value, a non-None default where the YAML interpolates or leaves ``???``, or a required argument
    the YAML does not set. Defaults live in ``conf/``: a constructor either has none or the YAML's."""
    from omegaconf import DictConfig, OmegaConf

    problems = []
    defaults_list = [next(iter(e)) if isinstance(e, DictConfig) else e for e in node.get("defaults", [])]
    for name, param in inspect.signature(fn).parameters.items():
        if param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL) or name == "self":
            continue
        if name not in node.keys():  # (``in node`` is False for a ``???`` value)
            if param.default is param.empty and name not in defaults_list:
                problems.append(f"{where}: required argument {name!r} is not set in the YAML")
            continue
        if param.default is param.empty:
            continue
        raw = node._get_node(name)._value()
        if OmegaConf.is_missing(node, name) or (isinstance(raw, str) and "${" in raw):
            if param.default is not None:  # set in conf/ from elsewhere: Python may only say "not set"
                problems.append(f"{where}: {name} has Python default {param.default!r}; the YAML sets it from {raw!r}")
        elif plain_value(param.default) != plain_value(node[name]):
            problems.append(f"{where}: {name} Python default {param.default!r} != YAML {plain_value(node[name])!r}")
    return problems
