"""Pre-flight checks of a composed config: every bad input is refused with one line before anything is built.

``train.py`` runs :func:`check_launch` before ``@hydra.main`` (so a refused launch writes nothing, not even
Hydra's ``.hydra/`` folder), and :func:`densitylab.run.train` runs :func:`check_config` again (for in-process
callers and multirun jobs). Every check raises :class:`~densitylab.errors.ConfigError` with one line naming the
bad value and what was expected. What is checked:

- the output folder: not a file, not under a regular file, writable (:func:`check_output_dir`);
- ``ckpt_path``: a file (not a directory), readable by ``torch.load(weights_only=True)`` (truncated, corrupt,
  text and pickle payloads are refused), a densitylab checkpoint (a Lightning checkpoint whose
  ``hyper_parameters["net"]`` holds the GPTConfig) of the configured architecture and optimizer class
  (:func:`check_checkpoint`); its vocabulary once the tokenizer is known (:func:`check_checkpoint_vocab`);
- ``model.net`` sizes (:class:`~densitylab.model.GPTConfig`), the optimizer's ``lr``, ``betas`` (under any key),
  ``eps``, ``weight_decay``, ``momentum`` (:func:`densitylab.lit.check_optimizer_settings`);
- ``data.canaries.length`` <= ``model.net.block_size`` + 1 (:func:`densitylab.data.canaries.check_canary_length`),
  and ``data.length`` <= ``model.net.block_size`` + 1 for ``data=uniform`` (:func:`check_uniform`);
- ``trainer.max_steps`` an integer >= 1 (or -1 with ``trainer.max_epochs`` >= 1), ``seed`` an integer;
- ``tokenizer=file``: the file exists and is a ``tokenizer.json``
  (:func:`densitylab.data.tokenizer.check_tokenizer_file`);
- ``callbacks.priming``: its schedule against ``trainer.max_steps`` (no ``t0`` beyond it), its relations, its
  pre-registered endpoint and a new-facts file's lines (an unknown attribute, an empty keyword)
  (:func:`check_priming`).
"""

from __future__ import annotations

import dataclasses
import numbers
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from densitylab.errors import ConfigError, DensitylabError

_UNSET = object()


def _get(cfg: DictConfig, key: str, default: Any = _UNSET) -> Any:
    """``cfg``'s value at dotted ``key`` as plain data; ``default`` when absent, missing (``???``) or not
    resolvable (those are reported where the value is used, with Hydra's own message)."""
    try:
        value = OmegaConf.select(cfg, key, default=_UNSET, throw_on_missing=True)
    except Exception:
        return default
    if value is _UNSET:
        return default
    if OmegaConf.is_config(value):
        try:
            return OmegaConf.to_container(value, resolve=True)
        except Exception:
            return default
    return value


def _is_int(x: object) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


# ----------------------------------------------------------------------------- output folder
def check_output_dir(path: str | os.PathLike, key: str = "hydra.run.dir") -> None:
    """Check that ``path`` can be the run folder: a folder, or creatable (the nearest existing parent is a
    writable folder, not a regular file). Writes nothing.

    Raises:
        ConfigError: one line naming ``key``, the path and the problem.
    """
    p = Path(os.path.abspath(os.fspath(path)))
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{key}={str(path)!r} is a file: expected a folder for the run")
    parent = p
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{key}={str(path)!r} is under a regular file ({parent}): expected a folder path")
    if not os.access(parent, os.W_OK | os.X_OK):
        where = "" if parent == p else f" ({parent} is not writable)"
        raise ConfigError(f"{key}={str(path)!r} is not writable{where}: expected a folder you can write to")


# ----------------------------------------------------------------------------- checkpoint
_CKPT_CACHE: dict[tuple, dict] = {}


def resolve_checkpoint(ckpt_path: Any, output_dir: str | os.PathLike) -> Path | None:
    """The checkpoint file ``ckpt_path`` names, or None. ``last`` is the checkpoint of ``output_dir/checkpoints``
    with the most optimizer steps (:func:`densitylab.runfolder.newest_checkpoint`: never a stale ``last.ckpt``).

    Raises:
        ConfigError: if it is a directory or does not exist; for ``last``, if the folder holds no checkpoint.
    """
    from densitylab.runfolder import newest_checkpoint

    if ckpt_path is None or ckpt_path == "":
        return None
    shown = str(ckpt_path)
    if shown == "last":
        newest = newest_checkpoint(output_dir)
        if newest is None:
            raise ConfigError(
                f"ckpt_path='last': {Path(output_dir) / 'checkpoints'} holds no checkpoint: expected the run folder "
                "of a run that saved one (hydra.run.dir=...), or ckpt_path=<a checkpoint file>"
            )
        return newest[1]
    p = Path(shown).expanduser()
    if p.is_dir():
        raise ConfigError(
            f"ckpt_path={shown!r} is a directory ({p}): expected a checkpoint file, e.g. {p / 'last.ckpt'}"
        )
    if not p.is_file():
        raise ConfigError(f"ckpt_path={shown!r} does not exist ({p}): expected a Lightning checkpoint file or 'last'")
    return p


def read_torch_checkpoint(path: str | os.PathLike, shown: str) -> dict:
    """Read a densitylab checkpoint with ``torch.load(map_location="cpu", weights_only=True, mmap=True)`` (the
    legacy non-zip format without ``mmap``): the one reader of ``ckpt_path``, ``densitylab export`` and
    ``densitylab probe``.

    Args:
        path: a Lightning checkpoint written by ``train.py`` (full or probe checkpoint).
        shown: how error lines name it, e.g. ``ckpt_path='x.ckpt'`` or ``checkpoint 'x.ckpt'``.
    Returns:
        The checkpoint dict: ``state_dict`` (name -> tensor, memory-mapped), ``hyper_parameters`` with its ``net``
        mapping, ``global_step`` ... as Lightning wrote them.
    Raises:
        ConfigError: one line for an unreadable, empty, truncated or corrupt file, a file that holds Python objects
            (not a safe checkpoint), a torch file that is not a Lightning checkpoint, or a Lightning checkpoint that
            is not a densitylab one (no ``hyper_parameters["net"]``).
    """
    import pickle

    import torch

    p = Path(path)
    try:
        size = p.stat().st_size
    except OSError as e:
        raise ConfigError(f"{shown} cannot be read ({e.strerror}): expected a readable checkpoint file") from None
    if size == 0:
        raise ConfigError(f"{shown} is an empty file: expected a densitylab checkpoint")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 56" for random bytes
            warnings.simplefilter("ignore")
            try:  # mmap: every process of a DDP launch reads it, and the optimizer state is never read into memory
                ckpt = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:
                if "mmap" not in str(e):
                    raise
                ckpt = torch.load(p, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except pickle.UnpicklingError as e:
        # torch's wording: "Unsupported global: GLOBAL x" (not allowlisted) or "unsupported GLOBAL posix.system
        # whose module posix is blocked" (os, subprocess, builtins ...)
        found = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) (\S+)", str(e))
        if found:
            raise ConfigError(
                f"{shown} is not a safe checkpoint: it holds a Python object ({found.group(1)}) that could run "
                "code when loaded, so it is refused: expected a densitylab checkpoint (tensors and plain data)"
            ) from None
        raise ConfigError(
            f"{shown} is not a readable checkpoint (not a torch file, or corrupt): expected a densitylab checkpoint "
            "written by train.py"
        ) from None
    except Exception as e:  # truncated zip, text, random bytes: RuntimeError, KeyError, EOFError ...
        detail = "truncated or corrupt" if "zip archive" in str(e) or isinstance(e, EOFError) else "not a torch file"
        raise ConfigError(
            f"{shown} is not a readable checkpoint ({detail}: {type(e).__name__}): expected a densitylab "
            "checkpoint written by train.py"
        ) from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), Mapping):
        what = type(ckpt).__name__ if not isinstance(ckpt, dict) else "a torch file without state_dict"
        raise ConfigError(
            f"{shown} is not a Lightning checkpoint ({what}): expected a densitylab checkpoint written by train.py"
        )
    hp = ckpt.get("hyper_parameters")
    if not isinstance(hp, Mapping) or not isinstance(hp.get("net"), Mapping):
        raise ConfigError(
            f"{shown} is a Lightning checkpoint but not a densitylab one (no hyper_parameters['net']): expected a "
            "checkpoint written by train.py"
        )
    return ckpt


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint once (:func:`read_torch_checkpoint`) and return its ``hyper_parameters`` (cached by path,
    size and modification time; the weights are not kept).

    Raises:
        ConfigError: as :func:`read_torch_checkpoint` (naming ``ckpt_path=...``), and for a probe checkpoint (no
            optimizer state: it cannot resume).
    """
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key in _CKPT_CACHE:
        return _CKPT_CACHE[key]
    shown = f"ckpt_path={str(path)!r}"
    ckpt = read_torch_checkpoint(p, shown)
    if "pytorch-lightning_version" not in ckpt:  # Lightning's restore needs it
        raise ConfigError(
            f"{shown} is not a Lightning checkpoint (no pytorch-lightning_version): expected a densitylab checkpoint "
            "written by train.py"
        )
    if isinstance(ckpt.get("densitylab"), dict) and ckpt["densitylab"].get("kind") == "probe":
        raise ConfigError(
            f"{shown} is a probe checkpoint (weights and ledger, no optimizer state): it cannot resume training; "
            "expected checkpoints/last.ckpt or checkpoints/step<N>.ckpt (densitylab export / densitylab probe read "
            "probe checkpoints)"
        )
    hp = ckpt["hyper_parameters"]
    _CKPT_CACHE.clear()  # one entry: a resumed run reads one checkpoint
    _CKPT_CACHE[key] = hp
    return hp


def _target(spec: Any) -> Any:
    """The class a ``_target_`` string names (the string itself if it does not import)."""
    name = spec.get("_target_") if isinstance(spec, dict) else None
    if not isinstance(name, str):
        return None
    try:
        from hydra.utils import get_object

        return get_object(name)
    except Exception:
        return name


def check_checkpoint(cfg: DictConfig, ckpt: str | os.PathLike | None) -> None:
    """Check that ``ckpt`` (see :func:`resolve_checkpoint`) is a densitylab checkpoint of the architecture
    ``cfg.model.net`` configures (every GPTConfig field but ``dropout``; ``vocab_size`` only when the config sets
    it, else see :func:`check_checkpoint_vocab`) and of the configured optimizer class. Nothing to do for None.

    Raises:
        ConfigError: see :func:`load_checkpoint`; or one line naming each field that differs.
    """
    if ckpt is None:
        return
    from densitylab.model import GPTConfig

    hp = load_checkpoint(ckpt)
    net = _get(cfg, "model.net", {}) or {}
    diffs = []
    for f in dataclasses.fields(GPTConfig):
        mine, theirs = net.get(f.name, _UNSET), hp["net"].get(f.name, _UNSET)
        if f.name == "dropout" or mine is _UNSET or theirs is _UNSET or (f.name == "vocab_size" and mine in (None, 0)):
            continue
        if mine != theirs:
            diffs.append(f"checkpoint {f.name} {theirs!r} != model.net.{f.name} {mine!r}")
    if diffs:
        raise ConfigError(
            f"ckpt_path={str(cfg.get('ckpt_path'))!r} is a checkpoint of another model size ({', '.join(diffs)}): "
            "expected the same architecture (choose the matching model=... or model.net overrides)"
        )
    mine, theirs = _target(_get(cfg, "model.optimizer", None)), _target(hp.get("optimizer"))
    if mine is not None and theirs is not None and mine != theirs:
        name = getattr(theirs, "__qualname__", theirs)
        raise ConfigError(
            f"ckpt_path={str(cfg.get('ckpt_path'))!r} was trained with optimizer {name}, not "
            f"model.optimizer._target_={_get(cfg, 'model.optimizer._target_', None)!r}: expected the same optimizer "
            "class to resume"
        )


def check_checkpoint_vocab(cfg: DictConfig, ckpt: str | os.PathLike | None, data_vocab: int) -> None:
    """After data preparation: the checkpoint's ``vocab_size`` equals the model's (``model.net.vocab_size``, or
    the tokenizer's ``data_vocab`` where that is null). Nothing to do for None.

    Raises:
        ConfigError: one line with both sizes.
    """
    if ckpt is None:
        return
    theirs = load_checkpoint(ckpt)["net"].get("vocab_size")
    mine = _get(cfg, "model.net.vocab_size", None) or data_vocab
    if theirs is not None and theirs != mine:
        raise ConfigError(
            f"ckpt_path={str(cfg.get('ckpt_path'))!r} has vocab_size {theirs} != {mine} (this run's tokenizer): "
            "expected a checkpoint trained with the same tokenizer (tokenizer=file tokenizer.path=<its run>/"
            "tokenizer.json)"
        )


# ----------------------------------------------------------------------------- values
def check_model(cfg: DictConfig) -> None:
    """``model.net``'s sizes (through :class:`~densitylab.model.GPTConfig`'s own checks; ``vocab_size`` null is
    the tokenizer's) and the optimizer's settings (:func:`densitylab.lit.check_optimizer_settings`).

    Raises:
        ConfigError: one line naming the bad value.
    """
    from densitylab.lit import check_optimizer_settings
    from densitylab.model import GPTConfig

    net = _get(cfg, "model.net", None)
    if isinstance(net, dict):
        names = {f.name for f in dataclasses.fields(GPTConfig)}
        fields = {k: v for k, v in net.items() if k in names}
        if fields.get("vocab_size", 1) in (None, 0):
            fields["vocab_size"] = 1  # the tokenizer's: checked once the data are prepared
        try:
            GPTConfig(**fields)
        except (TypeError, ValueError) as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ConfigError(msg if msg.startswith("model.") else f"model.net: {msg}") from None
    opt = _get(cfg, "model.optimizer", None)
    if isinstance(opt, dict):
        check_optimizer_settings(opt, "model.optimizer")


def check_canaries(cfg: DictConfig) -> None:
    """``data.canaries`` keys and sizes, and ``length`` <= ``model.net.block_size`` + 1 (the memorization probe
    scores a canary in one window).

    Raises:
        ConfigError: one line naming the bad value.
    """
    from densitylab.data.canaries import check_canary_config, check_canary_length

    canaries = _get(cfg, "data.canaries", None)
    if canaries is None or not isinstance(canaries, dict):
        return
    canaries = check_canary_config(canaries)
    block = _get(cfg, "model.net.block_size", None)
    if canaries.get("repetitions") and _is_int(block) and _get(cfg, "callbacks.memorization", None) is not None:
        check_canary_length(canaries.get("length"), block)


def check_uniform(cfg: DictConfig) -> None:
    """``data=uniform``: a sequence of ``data.length`` tokens is one training window, so ``data.length`` <=
    ``model.net.block_size`` + 1.

    Raises:
        ConfigError: one line naming the bad value.
    """
    target = _get(cfg, "data._target_", None)
    if not (isinstance(target, str) and target.rsplit(".", 1)[-1] == "UniformSequenceDataModule"):
        return
    length, block = _get(cfg, "data.length", None), _get(cfg, "model.net.block_size", None)
    if _is_int(length) and _is_int(block) and length - 1 > block:
        raise ConfigError(
            f"data.length={length}: expected <= model.net.block_size + 1 = {block + 1} (each sequence is one "
            "training window; raise model.net.block_size or lower data.length)"
        )


def check_trainer(cfg: DictConfig) -> None:
    """``trainer.max_steps``: an integer >= 1, or -1 (Lightning's "no step limit") when something else ends the
    run: ``trainer.max_epochs`` >= 1 or null (Lightning's 1000), ``trainer.max_time``, or the memorization plateau
    rule (``callbacks.memorization.plateau``, the capacity experiments).

    Raises:
        ConfigError: one line naming the bad value.
    """
    steps = _get(cfg, "trainer.max_steps", _UNSET)
    if steps is _UNSET:
        return
    epochs = _get(cfg, "trainer.max_epochs", None)
    if steps == -1:  # Lightning's "no step limit": something else must end the run
        stopper = _get(cfg, "trainer.max_time", None) is not None or _get(cfg, "callbacks.memorization.plateau", None)
        if epochs is None or (_is_int(epochs) and (epochs >= 1 or (epochs == -1 and stopper))):
            return  # max_epochs (Lightning's default 1000 when null), max_time, or the plateau rule's stop
    if not _is_int(steps) or steps < 1:
        raise ConfigError(
            f"trainer.max_steps={steps!r}: expected an integer >= 1 (optimizer steps to train; or -1 for no step "
            "limit together with trainer.max_epochs >= 1, trainer.max_time or a memorization plateau rule)"
        )


def check_priming(cfg: DictConfig) -> None:
    """``callbacks.priming`` (when on): :func:`densitylab.callbacks.priming.check_priming_settings` on its settings
    with ``trainer.max_steps``.

    Raises:
        ConfigError: one line naming the bad value.
    """
    node = _get(cfg, "callbacks.priming", None)
    if not isinstance(node, dict) or "_target_" not in node:
        return
    from densitylab.callbacks.priming import check_priming_settings

    keys = ("n_facts", "n_controls", "k_values", "n_cohorts", "t0", "start_frac", "interval", "offsets", "attributes",
            "n_thematic", "log10_range", "facts", "select_lead", "ignore_topk", "endpoint")  # fmt: skip
    settings = {
        k: _get(cfg, f"callbacks.priming.{k}") for k in keys if _get(cfg, f"callbacks.priming.{k}") is not _UNSET
    }
    steps = _get(cfg, "callbacks.priming.max_steps", _get(cfg, "trainer.max_steps", None))
    check_priming_settings(settings, steps)


def check_keep(cfg: DictConfig) -> None:
    """``checkpoints.keep``: ``last`` or ``probe_steps`` (:class:`densitylab.callbacks.ProbeCheckpoint`).

    Raises:
        ConfigError: one line naming the bad value.
    """
    from densitylab.runfolder import CHECKPOINT_KEEP as KEEP

    keep = _get(cfg, "checkpoints.keep", "last")
    if keep not in KEEP:
        raise ConfigError(f"checkpoints.keep={keep!r}: expected one of {KEEP}")


def check_seed(cfg: DictConfig) -> None:
    """``seed``: an integer.

    Raises:
        ConfigError: one line naming the bad value.
    """
    seed = _get(cfg, "seed", None)
    if seed is None:
        return
    try:
        int(seed)
    except (TypeError, ValueError):
        raise ConfigError(f"seed={seed!r}: expected an integer") from None
    if isinstance(seed, (bool, float)) or (isinstance(seed, str) and not re.fullmatch(r"[+-]?\d+", seed.strip())):
        raise ConfigError(f"seed={seed!r}: expected an integer")


def check_tokenizer(cfg: DictConfig) -> None:
    """``tokenizer=file``: ``tokenizer.path`` is a ``tokenizer.json`` (see
    :func:`densitylab.data.tokenizer.check_tokenizer_file`); nothing to check for a trained tokenizer.

    Raises:
        ConfigError: one line naming the path and the problem.
    """
    from densitylab.data.tokenizer import check_tokenizer_file

    target = _get(cfg, "tokenizer._target_", None)
    if isinstance(target, str) and target.rsplit(".", 1)[-1] == "TokenizerFile":
        path = _get(cfg, "tokenizer.path", None)
        if path is not None:  # ??? is reported by the constructor
            check_tokenizer_file(path)


def check_config(cfg: DictConfig, ckpt: str | os.PathLike | None = None) -> None:
    """Every value check of this module on a composed config, before any data is prepared: seed, trainer,
    model and optimizer, canaries, tokenizer file, priming, ``checkpoints.keep``, loggers' packages
    (:func:`check_loggers`) and the resume checkpoint ``ckpt`` (already resolved by :func:`resolve_checkpoint`).

    Raises:
        ConfigError: the first problem found, one line.
    """
    check_seed(cfg)
    check_trainer(cfg)
    check_model(cfg)
    check_canaries(cfg)
    check_uniform(cfg)
    check_tokenizer(cfg)
    check_priming(cfg)
    check_keep(cfg)
    check_checkpoint(cfg, ckpt)
    check_loggers(cfg)


def check_loggers(cfg: Any) -> None:
    """Refuse a logger whose package is missing before anything is built: ``logger=tensorboard`` needs
    ``tensorboard`` (or ``tensorboardX``).

    Raises:
        ConfigError: one line naming the logger and the package to install.
    """
    import importlib.util

    for name, lcfg in (cfg.get("logger") or {}).items():
        target = str((lcfg or {}).get("_target_", "")) if lcfg is not None else ""
        if target.endswith("TensorBoardLogger") and not any(
            importlib.util.find_spec(m) for m in ("tensorboard", "tensorboardX")
        ):
            raise ConfigError(
                f"logger.{name}: the tensorboard package is not installed: expected `pip install tensorboard` "
                "(or pip install -e '.[tb]'), or another logger (logger=wandb, logger=csv)"
            )


# ----------------------------------------------------------------------------- before @hydra.main
# Hydra flags that print something and launch no run
_INFO_FLAGS = {"--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--resolve", "--package", "-p",
               "--shell-completion", "-sc", "--version", "--experimental-rerun"}  # fmt: skip


def _split_flags(argv: list[str]) -> tuple[bool, str | None, list[str]] | None:
    """(multirun, ``--config-name`` or None, overrides) of a ``train.py`` command line; None when it launches no
    run (``--help``, ``--cfg`` ...) or names another config folder (``-cp``/``-cd``: left to Hydra)."""
    multirun, name, overrides = False, None, []
    args = list(argv)
    while args:
        a = args.pop(0)
        flag, _, value = a.partition("=")
        if flag in _INFO_FLAGS or flag in ("-cp", "--config-path", "-cd", "--config-dir"):
            return None
        if flag in ("-m", "--multirun"):
            multirun = True
        elif flag in ("-cn", "--config-name"):
            name = value or (args.pop(0) if args else None)
        elif a.startswith("-"):
            return None  # an unknown flag: Hydra reports it
        else:
            overrides.append(a)
    return multirun, name, overrides


def check_launch(config_dir: str | os.PathLike, config_name: str, argv: list[str]) -> tuple[str | None, list[str]]:
    """Compose ``config_name`` with the command line ``argv`` as ``@hydra.main`` will and run the output-folder
    checks (:func:`check_output_dir` on ``hydra.run.dir``, :func:`densitylab.runfolder.check_relaunch`) and
    :func:`check_config`, so that a refused launch writes nothing (Hydra creates the run folder and ``.hydra/``
    before ``main`` runs). A resume in an unfinished run folder must compose the configuration that run was
    launched with (:func:`densitylab.runfolder.config_difference`; ``ckpt_path`` aside), and Hydra records it in
    ``.hydra/attempt-K`` instead of over the run's own ``.hydra/`` files. A multirun (``-m``, or a config such as
    ``hparams_search=optuna`` that sets Hydra's mode) is refused when ``hydra.sweep.dir`` already holds a run:
    Hydra would rewrite its jobs' ``.hydra/`` before any job starts.

    Returns:
        (the one-line error message or None, overrides to add to the launch: ``hydra.output_subdir=...`` for a
        resume in the same folder, ``hydra.output_subdir=null`` in a process started for another rank).
        (None, []) when the checks do not apply (``--help``/``--cfg``, ``-cp``/``-cd``, a composition error:
        :func:`densitylab.config.check_overrides` and Hydra report those).
    """
    from densitylab.runfolder import is_launching_process

    if not is_launching_process():  # ranks 1..: rank 0 checked; never write .hydra/ over the launch's own
        return None, ([] if any(a.startswith("hydra.output_subdir=") for a in argv) else ["hydra.output_subdir=null"])
    split = _split_flags(argv)
    if split is None:
        return None, []
    multirun, name, overrides = split
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import open_dict

    from densitylab.runfolder import attempt_subdir, check_relaunch, config_difference, folder_state, saved_overrides

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
        sweep = any(o.is_sweep_override() for o in parsed)
        if sweep and not multirun:
            return None, []  # Hydra reports sweep syntax without -m
        plain = [o.input_line for o in parsed if not o.is_sweep_override()]
        with initialize_config_dir(config_dir=str(Path(config_dir).resolve()), version_base="1.3"):
            cfg = compose(config_name=name or config_name, overrides=plain, return_hydra_config=True)
    except Exception:
        GlobalHydra.instance().clear()
        return None, []
    try:
        from hydra.types import RunMode

        if multirun or _get(cfg, "hydra.mode", None) in (RunMode.MULTIRUN, "MULTIRUN"):  # e.g. hparams_search=optuna
            with open_dict(cfg):
                cfg.hydra.job.num = 0
            HydraConfig.instance().set_config(cfg)
            _check_sweep_dir(_get(cfg, "hydra.sweep.dir", None))
            return None, []  # each job's values are the sweeper's; every job checks its own in run.train
        run_dir = _get(cfg, "hydra.run.dir", None)
        if not isinstance(run_dir, str):
            return None, []
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = run_dir
            cfg.hydra.job.num = 0
        HydraConfig.instance().set_config(cfg)
        check_output_dir(run_dir)
        state = folder_state(run_dir)
        ckpt = resolve_checkpoint(_get(cfg, "ckpt_path", None), _get(cfg, "paths.output_dir", run_dir))
        if state == "unfinished" and ckpt is not None:  # a resume in its own folder: with the run's own settings
            check_relaunch(run_dir, ckpt)
            diff = config_difference(run_dir, cfg)
            if diff:
                from densitylab.runfolder import command_line

                again = command_line([*saved_overrides(run_dir), f"hydra.run.dir={run_dir}", "ckpt_path=last"])
                raise ConfigError(
                    f"ckpt_path resumes the run of {run_dir!r} as it was launched, but {diff}: resume it with its "
                    f"own settings: python train.py {again}"
                )
        check_config(cfg, ckpt)  # a bad value is named first, then the folder's state
        check_relaunch(run_dir, ckpt)
        if state == "unfinished":  # a resume in its own folder (check_relaunch refused everything else)
            return None, [f"hydra.output_subdir={attempt_subdir(run_dir)}"]
    except DensitylabError as e:
        return (str(e).splitlines()[0] if str(e) else type(e).__name__), []
    except Exception:  # anything else is main's to report, as before
        return None, []
    finally:
        HydraConfig.instance().cfg = None
        GlobalHydra.instance().clear()
    return None, []


def _check_sweep_dir(sweep_dir: Any) -> None:
    """A multirun's ``hydra.sweep.dir`` must not hold a run yet (a finished or unfinished job folder).

    Raises:
        ConfigError: naming the folder and the jobs it holds.
    """
    from densitylab.runfolder import folder_state

    if not isinstance(sweep_dir, str) or not Path(sweep_dir).is_dir():
        return
    check_output_dir(sweep_dir, "hydra.sweep.dir")
    jobs = sorted(p.name for p in Path(sweep_dir).iterdir() if p.is_dir() and folder_state(p) != "new")
    if jobs:
        shown = ", ".join(jobs[:5]) + (" ..." if len(jobs) > 5 else "")
        raise ConfigError(
            f"hydra.sweep.dir={sweep_dir!r} already holds runs ({shown}): expected a new sweep folder (a sweep is "
            f"not resumed as a whole; resume one unfinished job with hydra.run.dir={sweep_dir}/<job> ckpt_path=last "
            "and that job's overrides)"
        )
