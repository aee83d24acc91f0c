"""What a run folder holds, and which launches into it are allowed: the run folder is the record of a run.

A folder named by ``hydra.run.dir`` is in one of three states (:func:`folder_state`):

- ``new``: absent, empty, or holding nothing a run writes once it has started (Hydra's ``.hydra/``, ``train.log``,
  the data preparation's ``data.json``, ``tokenizer.json``, ``ground_truth/`` and a ``FAILED`` marker of a launch
  that stopped before training are not a run's results);
- ``finished``: it holds ``summary.json``. It is never changed again: a relaunch into it, with or without
  ``ckpt_path``, is refused (:func:`check_relaunch`) before Hydra writes, and it is never marked ``FAILED``;
- a folder whose ``.lock`` is held (:class:`RunLock`) has a run training in it now: every launch into it is
  refused;
- ``unfinished``: a run started there (checkpoints, ``metrics.csv``, probe or ledger tables, a W&B run) but did not
  finish: it crashed or was killed. A relaunch must resume it (``ckpt_path=last``: the newest checkpoint by global
  step, :func:`newest_checkpoint`; or a checkpoint of its own ``checkpoints/``) with the configuration it was
  launched with (:func:`config_difference`); a relaunch without ``ckpt_path`` is refused with one line naming both
  options (resume, or a new folder), so a run is never trained over from scratch.
"""

from __future__ import annotations

import json
import os
import shlex
import warnings
from pathlib import Path
from typing import Any

from densitylab.errors import ConfigError

# checkpoints.keep: Lightning's checkpoints only, or also a light one at every probe step (checkpoints/probe/)
CHECKPOINT_KEEP = ("last", "probe_steps")

# `densitylab probe` writes each re-measurement of a run to RUN_DIR/reprobe/<name>/ (densitylab.reprobe): a folder
# that looks like a run folder (probes/, metrics.csv, hparams.yaml) but is not a run, so multirun reports skip it
REMEASUREMENT_DIR = "reprobe"


REMEASUREMENT_MARKER = "reprobe.json"  # written into a re-measurement's folder when it starts


def is_remeasurement(path: str | os.PathLike, root: str | os.PathLike) -> bool:
    """True when ``path`` (found below ``root`` by a search for run folders) is a re-measurement of a run, never a
    run of its own (a seed counted twice otherwise): it holds ``reprobe.json`` (from the moment it starts), lies in
    a ``reprobe/`` folder below ``root``, or is (inside) a hidden temporary folder of one (``.<name>.partial-*``)."""
    p = Path(path)
    if (p / REMEASUREMENT_MARKER).is_file():
        return True
    try:
        parts = p.resolve().relative_to(Path(root).resolve()).parts
    except ValueError:
        parts = p.parts
    return REMEASUREMENT_DIR in parts or any(x.startswith(".") and ".partial-" in x for x in parts)


# what a run writes once it has started (Hydra writes .hydra/ and train.log before main runs)
_RUN_MARKERS = ("metrics.csv", "checkpoints", "probes", "ledger", "wandb", "hparams.yaml")


def is_launching_process() -> bool:
    """False in a process a launcher started for another rank (``LOCAL_RANK``, ``NODE_RANK``, ``RANK`` or
    ``SLURM_PROCID`` > 0): Lightning's DDP launcher re-runs ``train.py`` for ranks 1.. once rank 0 has begun
    writing the run folder, so only the launching process judges the folder's state."""
    for name in ("LOCAL_RANK", "NODE_RANK", "RANK", "SLURM_PROCID"):
        try:
            if int(os.environ.get(name, "0")) > 0:
                return False
        except ValueError:
            continue
    return True


def folder_state(run_dir: str | os.PathLike) -> str:
    """``"new"``, ``"finished"`` or ``"unfinished"`` (module docstring)."""
    p = Path(run_dir)
    if not p.is_dir():
        return "new"
    if (p / "summary.json").exists():
        return "finished"
    return "unfinished" if any((p / m).exists() for m in _RUN_MARKERS) else "new"


def checkpoint_step(path: str | os.PathLike) -> int | None:
    """The ``global_step`` (optimizer steps completed) a Lightning checkpoint was saved at, or None when the file
    cannot be read as one (read with ``torch.load(weights_only=True, mmap=True)``: the weights stay on disk)."""
    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return None
    step = ckpt.get("global_step") if isinstance(ckpt, dict) else None
    return int(step) if isinstance(step, int) else None


def checkpoints(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """The readable checkpoints of ``run_dir/checkpoints`` as (global step, path), oldest step first (temporary
    files of an interrupted write are not checkpoints); on equal steps ``last.ckpt`` comes after a step file."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = []
    for f in folder.glob("*.ckpt"):
        if f.name.startswith(".") or not f.is_file():
            continue
        step = checkpoint_step(f)
        if step is not None:
            found.append((step, f.name.startswith("last"), f.stat().st_mtime_ns, f))
    return [(s, f) for s, _, _, f in sorted(found)]


def newest_checkpoint(run_dir: str | os.PathLike) -> tuple[int, Path] | None:
    """The checkpoint of ``run_dir/checkpoints`` with the highest global step, as (step, path), or None.

    Never a stale one: a ``last.ckpt`` older than a step checkpoint (a kill between the two writes) or a
    ``last-v1.ckpt`` left by an earlier attempt loses to the checkpoint with more steps.
    """
    found = checkpoints(run_dir)
    return found[-1] if found else None


def _is_inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def check_relaunch(run_dir: str | os.PathLike, ckpt: Path | None, key: str = "hydra.run.dir") -> None:
    """Refuse a launch into ``run_dir`` that would change a finished run or train over an unfinished one.

    Args:
        run_dir: the run folder of this launch.
        ckpt: the resolved checkpoint to resume from (:func:`densitylab.preflight.resolve_checkpoint`), or None.
        key: the config key that named the folder (for the message).

    Nothing is checked in a process started for another rank (:func:`is_launching_process`).

    Raises:
        ConfigError: one line naming the folder, its state and what to do instead.
    """
    if not is_launching_process():
        return
    state = folder_state(run_dir)
    shown = f"{key}={str(run_dir)!r}"
    holder = lock_holder(run_dir)
    if holder:
        raise ConfigError(
            f"{shown} is in use: a run is training there now ({holder}): expected a folder no process is "
            "writing (wait for it, or choose another hydra.run.dir)"
        )
    if state == "finished":
        steps = _finished_steps(run_dir)
        newest = newest_checkpoint(run_dir)
        weights = shlex.quote(str(newest[1])) if newest else "<a checkpoint>"
        more = f"more than {steps}" if steps is not None else "more"
        kept = [o for o in saved_overrides(run_dir) if o.split("=", 1)[0].lstrip("+~") not in _REPLACED]
        again = command_line(kept) or "<its overrides>"
        raise ConfigError(
            f"{shown} holds a finished run (summary.json{'' if steps is None else f', {steps} steps'}), which is "
            f"never changed: to train on from its weights, start a new folder: python train.py {again} "
            f"ckpt_path={weights} trainer.max_steps=<{more}> hydra.run.dir=<a new folder>"
        )
    if state != "unfinished":
        return
    if ckpt is None:
        newest = newest_checkpoint(run_dir)
        if newest is None:
            raise ConfigError(
                f"{shown} holds an unfinished run with no checkpoint to resume from: choose a new folder "
                "(another hydra.run.dir), or delete that folder to start the run over"
            )
        raise ConfigError(
            f"{shown} holds an unfinished run (newest checkpoint: step {newest[0]}, {newest[1].name}): resume it "
            "with ckpt_path=last, or start over in a new folder (another hydra.run.dir)"
        )
    if not _is_inside(Path(ckpt), Path(run_dir) / "checkpoints") and newest_checkpoint(run_dir) is not None:
        raise ConfigError(
            f"ckpt_path={str(ckpt)!r} is not a checkpoint of {shown}, which holds an unfinished run of its own: "
            "expected ckpt_path=last (or one of its checkpoints/), or a new folder for this checkpoint"
        )


def _finished_steps(run_dir: str | os.PathLike) -> int | None:
    try:
        step = json.loads((Path(run_dir) / "summary.json").read_text()).get("global_step")
    except (OSError, ValueError, AttributeError):
        return None
    return int(step) if isinstance(step, int) else None


def command_line(overrides: list[str]) -> str:
    """``overrides`` as they are typed in a shell (each quoted where needed: ``'tags=[a,b]'``,
    ``'logger.wandb.group=${experiment_name}'``)."""
    return " ".join(shlex.quote(o) for o in overrides)


# ----------------------------------------------------------------------------- a run in progress
LOCK_FILE = ".lock"
_REPLACED = {"trainer.max_steps", "ckpt_path", "hydra.run.dir"}  # set anew by the suggested command


def lock_holder(run_dir: str | os.PathLike) -> str | None:
    """A description of the process that holds ``run_dir``'s lock (a run training there now), or None."""
    path = Path(run_dir) / LOCK_FILE
    if not path.is_file():
        return None
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        return None
    with open(path) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return (f.read().strip() or "another process")[:200]
        fcntl.flock(f, fcntl.LOCK_UN)
    return None


class RunLock:
    """Held by the process that trains in a run folder (``RUN_DIR/.lock``, an exclusive ``flock`` with its pid and
    host), so that :func:`check_relaunch` refuses a second launch into a run that is still training. The kernel
    drops the lock when the process dies, however it dies (kill -9 included). POSIX only; elsewhere a no-op.

    Use as a context manager around training; only the launching process (global rank 0) takes it.
    """

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self._f = None

    def __enter__(self) -> RunLock:
        try:
            import fcntl
        except ImportError:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            raise ConfigError(
                f"hydra.run.dir={str(self.path.parent)!r} is in use: a run is training there now: expected a "
                "folder no process is writing"
            ) from None
        import socket

        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        self._f = f
        return self

    def __exit__(self, *exc: object) -> None:
        if self._f is not None:
            self.path.unlink(missing_ok=True)
            self._f.close()  # releases the flock
            self._f = None


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out if out or not prefix else {prefix[:-1]: {}}
    return {prefix[:-1]: d}


# config keys added after runs were launched, with the value that means what an older run did (its saved config
# lacks them): a resume of such a run is not refused for them
_ADDED_KEYS = {"checkpoints.keep": "last"}
_ADDED_PREFIXES = ("callbacks.probe_checkpoint.",)  # inert with checkpoints.keep=last


def _added_later(key: str, value: Any) -> bool:
    return _ADDED_KEYS.get(key, object()) == value or key.startswith(_ADDED_PREFIXES)


def config_difference(run_dir: str | os.PathLike, cfg: Any) -> str | None:
    """How the composed (unresolved) ``cfg`` differs from the configuration the run of ``run_dir`` was launched
    with (``.hydra/config.yaml``), ``ckpt_path`` and ``hydra`` aside: one line naming the first differing key, or
    None when they agree or the folder has no saved configuration."""
    from omegaconf import OmegaConf

    saved_path = Path(run_dir) / ".hydra" / "config.yaml"
    if not saved_path.is_file():
        return None
    try:
        saved = OmegaConf.to_container(OmegaConf.load(saved_path), resolve=False)
    except Exception:
        return None
    mine = OmegaConf.to_container(cfg, resolve=False)
    for d in (saved, mine):
        d.pop("hydra", None)
        d.pop("ckpt_path", None)
    a, b = _flatten(saved), _flatten(mine)
    for k in sorted(set(a) | set(b)):
        if k not in a and _added_later(k, b[k]):  # a run launched before the key existed: it ran with this value
            continue
        if a.get(k, "<absent>") != b.get(k, "<absent>"):
            return f"{k}={b.get(k, '<absent>')!r} (the run was launched with {a.get(k, '<absent>')!r})"
    return None


def saved_overrides(run_dir: str | os.PathLike) -> list[str]:
    """The command-line overrides the run of ``run_dir`` was launched with (``.hydra/overrides.yaml``), [] if
    none were saved."""
    from omegaconf import OmegaConf

    p = Path(run_dir) / ".hydra" / "overrides.yaml"
    try:
        return [str(o) for o in OmegaConf.to_container(OmegaConf.load(p))] if p.is_file() else []
    except Exception:
        return []


def attempt_subdir(run_dir: str | os.PathLike) -> str:
    """``hydra.output_subdir`` for a resume in ``run_dir``: ``.hydra/attempt-K`` (K = 2, 3, ...), so Hydra records
    the resumed launch beside, not over, the ``.hydra/`` files of the launch that started the run."""
    root = Path(run_dir) / ".hydra"
    k = 2
    while (root / f"attempt-{k}").exists():
        k += 1
    return f".hydra/attempt-{k}"


def clear_failed(run_dir: str | os.PathLike) -> None:
    """Remove a ``FAILED`` marker left by an earlier attempt once the run has finished (``summary.json``)."""
    p = Path(run_dir)
    if (p / "summary.json").is_file():
        (p / "FAILED").unlink(missing_ok=True)
