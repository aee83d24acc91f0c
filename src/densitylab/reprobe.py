"""Re-measure a finished training trajectory: ``densitylab probe RUN_DIR [probes=a,b] [overrides ...]``.

Lightning-hydra-template's ``eval.py`` pattern for probes: the probes of a run (``density``, ``knowledge``,
``modularity``, ``memorization``; new or changed ones too) run again over every **kept checkpoint** of the run folder,
with the run's own configuration (``RUN_DIR/.hydra/config.yaml``, plus any overrides), its data (rebuilt from the
same config: the cache of ``paths.cache_dir`` when present), its probe sets and, at each checkpoint, the exposure
ledger's counts of that step (every checkpoint holds the ledger state). Nothing is trained.

Kept checkpoints: the light probe checkpoints of ``checkpoints.keep=probe_steps``
(``checkpoints/probe/step*.ckpt``: step 0 and every probe step, :mod:`densitylab.callbacks.probe_checkpoint`) and
Lightning's own (``checkpoints/step*.ckpt``, ``last.ckpt``), one per step, oldest first. A run trained with the
default ``checkpoints.keep=last`` can be re-measured at its final step only.

Each probe runs through its own Lightning hooks, as during training (fit start; train start at the first kept
step; ``on_train_batch_end`` at every later kept step, where the probe's schedule decides; train end, where the
final probe and the end-of-run analyses run; fit end): a kept step is measured when the probe's schedule (as
configured, overrides included) has it, or when the probe measured at it during training (recorded in the probe
checkpoint; only for a probe whose settings no override changes: this adds its epoch-cadence calls), or at every kept
step with ``--every-checkpoint``. For an unchanged probe the rows are therefore those
recorded during training at the same steps, bit for bit at the same batch size, thread count and device (tested).

Output: a new folder per re-measurement, never mixed with the training run's tables or another re-measurement:
``RUN_DIR/reprobe/<timestamp>/`` by default (``--out DIR``), with ``probes/*.parquet`` (the same tables),
``plots/``, ``metrics.csv``, a W&B run (offline unless ``WANDB_MODE=online``; ``job_type=reprobe``, in the training
run's group), ``config.yaml`` (the configuration used) and ``reprobe.json`` (source run, checkpoints and steps,
probes, overrides, the probes' summary numbers). It is written in a temporary sibling folder and renamed into place
when complete: a failed re-measurement leaves nothing behind.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from densitylab.errors import ConfigError, DensitylabError
from densitylab.runfolder import REMEASUREMENT_DIR as REPROBE_DIR
from densitylab.runfolder import REMEASUREMENT_MARKER as MARKER  # the folder's mark (runfolder.is_remeasurement)

log = logging.getLogger("densitylab")

NOT_REPLAYABLE = {
    "priming": (
        "its measurements are tied to the new facts it inserted while training (keywords chosen at P_before, "
        "insertion steps); rerun its end analysis from the folder with `densitylab report priming RUN_DIR`"
    ),
}


# ---------------------------------------------------------------------------------------------------- checkpoints
def kept_checkpoints(run_dir: str | os.PathLike, with_skipped: bool = False):
    """The checkpoints a run folder kept, as (global step, path), one per step, oldest step first: the probe
    checkpoints (``checkpoints/probe/step*.ckpt``) and Lightning's (``checkpoints/*.ckpt``); at a step that has both,
    the probe checkpoint (smaller; the same weights and ledger state). Unreadable probe checkpoints are left out with
    a warning (and listed in ``reprobe.json``).

    Returns:
        The list; with ``with_skipped``, ``(list, unreadable probe checkpoint paths)``.
    """
    from densitylab.runfolder import checkpoint_step, checkpoints

    by_step: dict[int, Path] = {step: path for step, path in checkpoints(run_dir)}
    probe_dir = Path(run_dir) / "checkpoints" / "probe"
    skipped = []
    if probe_dir.is_dir():
        for f in sorted(probe_dir.glob("step*.ckpt")):
            step = checkpoint_step(f)
            if step is None:
                log.warning("%s is not a readable checkpoint: left out of the re-measurement", f)
                skipped.append(f)
            else:
                by_step[step] = f
    kept = sorted(by_step.items())
    return (kept, skipped) if with_skipped else kept


def _load(path: Path) -> dict:
    """A kept checkpoint, read by :func:`densitylab.preflight.read_torch_checkpoint` (CPU, ``weights_only``: tensors
    and plain data only, memory-mapped).

    Raises:
        ConfigError: for a file that is not a readable densitylab checkpoint.
    """
    from densitylab.preflight import read_torch_checkpoint

    ckpt = read_torch_checkpoint(path, f"checkpoint {str(path)!r}")
    return ckpt


# ---------------------------------------------------------------------------------------------------- config
def split_arguments(tokens: list[str]) -> tuple[list[str] | None, list[str]]:
    """Split ``densitylab probe``'s trailing arguments into the probe names (``probes=a,b``; None when absent) and the
    config overrides (``key=value``, ``+key=value``, ``++key=value``).

    Raises:
        ConfigError: for a token that is not ``key=value``, or an empty ``probes=``.
    """
    probes, overrides = None, []
    for tok in tokens:
        key, eq, value = tok.partition("=")
        if not eq or not key.lstrip("+"):
            raise ConfigError(f"{tok!r}: expected probes=NAME[,NAME...] or a config override key=value")
        if key == "probes":
            probes = [p.strip() for p in value.strip("[]").split(",") if p.strip()]
            if not probes:
                raise ConfigError(f"{tok!r}: expected probes=NAME[,NAME...] (e.g. probes=density,knowledge)")
        else:
            overrides.append(tok)
    return probes, overrides


def run_config(run_dir: Path, out_dir: Path, overrides: list[str], name: str | None = None):
    """The run's configuration (``RUN_DIR/.hydra/config.yaml``) for a re-measurement written to ``out_dir``:
    ``paths.root_dir`` is the folder the run was launched from (``.hydra/hydra.yaml``: ``runtime.cwd``, so
    ``paths.cache_dir`` finds the run's data cache), ``paths.output_dir`` is ``out_dir``, the W&B run is named
    ``<run>-reprobe-<name>`` (``name`` default ``out_dir``'s) in the group ``<the run's group>/reprobe`` (never
    averaged with the training runs of that group) with ``job_type=reprobe`` and the tag ``reprobe``; then the
    overrides (``key=value`` of an existing key, ``+key=value`` /
    ``++key=value`` to add one), merged with OmegaConf.

    Returns:
        The DictConfig (interpolations unresolved, as Hydra composes it).
    Raises:
        ConfigError: without ``.hydra/config.yaml``, for an override of a key the config does not have (without
            ``+``) or a value OmegaConf cannot parse.
    """
    from omegaconf import OmegaConf, open_dict

    import densitylab.config as dconfig

    dconfig.register_resolvers()
    path = run_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{str(run_dir)!r} has no .hydra/config.yaml: expected a run folder written by train.py")
    cfg = OmegaConf.load(path)
    hydra_yaml = run_dir / ".hydra" / "hydra.yaml"
    cwd = OmegaConf.select(OmegaConf.load(hydra_yaml), "hydra.runtime.cwd") if hydra_yaml.is_file() else None
    with open_dict(cfg):
        if cwd:
            cfg.paths.root_dir = str(cwd)
        cfg.paths.output_dir = str(run_dir)
        group = None
        if OmegaConf.select(cfg, "logger.wandb") is not None:  # the training run's group, resolved in its folder
            group = OmegaConf.select(cfg, "logger.wandb.group") or OmegaConf.select(cfg, "logger.wandb.run_group")
        cfg.paths.output_dir = str(out_dir)
        if group is not None:
            cfg.logger.wandb.group = f"{group}/{REPROBE_DIR}"
            cfg.logger.wandb.job_type = "reprobe"
            label = name or out_dir.name
            cfg.logger.wandb.name = f"{OmegaConf.select(cfg, 'run_name') or run_dir.name}-reprobe-{label}"
        cfg.tags = [*(OmegaConf.select(cfg, "tags") or []), "reprobe"]
        for tok in overrides:
            key, _, value = tok.partition("=")
            add = key.startswith("+")
            key = key.lstrip("+")
            if not add and OmegaConf.select(cfg, key, default="__missing__") == "__missing__":
                raise ConfigError(f"{tok}: the run's config has no key {key!r} (use +{key}=... to add one)")
            try:
                parsed = OmegaConf.from_dotlist([f"{key}={value}"])
            except Exception as e:
                raise ConfigError(f"{tok}: not a config override ({dconfig._one_line(e)})") from None
            cfg = OmegaConf.merge(cfg, parsed)
    return cfg


def _probe_names(cfg) -> dict[str, str]:
    """``cfg.callbacks`` key -> target of every enabled probe callback entry."""
    from hydra.utils import get_class

    from densitylab.callbacks.base import ProbeCallback

    out = {}
    for name, node in (cfg.get("callbacks") or {}).items():
        if node is None or "_target_" not in node:
            continue
        try:
            cls = get_class(node["_target_"])
        except Exception:
            continue
        if isinstance(cls, type) and issubclass(cls, ProbeCallback):
            out[str(name)] = node["_target_"]
    return out


def choose_probes(cfg, probes: list[str] | None) -> list[str]:
    """The probe entries to re-run: ``probes`` (``cfg.callbacks`` keys) or, when None, every enabled probe of the run
    that can be replayed (all but ``priming``).

    Raises:
        ConfigError: for a name that is not an enabled probe of the run, or one that cannot be replayed (priming).
    """
    available = _probe_names(cfg)
    if probes is None:
        chosen = [n for n in available if n not in NOT_REPLAYABLE]
        if not chosen:
            raise ConfigError(f"the run has no probe that can be re-run (its probes: {sorted(available)})")
        return chosen
    replayable = sorted(n for n in available if n not in NOT_REPLAYABLE)
    for name in probes:
        if name in NOT_REPLAYABLE and name in available:
            raise ConfigError(
                f"probes={name}: the {name} probe cannot be re-run over checkpoints: {NOT_REPLAYABLE[name]}"
            )
        if name not in available:
            raise ConfigError(f"probes={name}: not an enabled probe of this run: expected one of {replayable}")
    return list(dict.fromkeys(probes))


# ---------------------------------------------------------------------------------------------------- the replay
def _replay_trainer_class():
    import lightning as L

    class ReplayTrainer(L.Trainer):
        """A Lightning Trainer that trains nothing: its ``global_step`` / ``current_epoch`` are those of the checkpoint
        being re-measured (set by :func:`reprobe`), so the probes' hooks see the step they measured at."""

        replay_step = 0
        replay_epoch = 0

        @property
        def global_step(self) -> int:
            return self.replay_step

        @property
        def current_epoch(self) -> int:
            return self.replay_epoch

    return ReplayTrainer


def reprobe(
    run_dir: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    probes: list[str] | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    every_checkpoint: bool = False,
    force: bool = False,
) -> Path:
    """Re-run probes over the kept checkpoints of a run folder (module docstring) and write a new output folder.

    Args:
        run_dir: the training run's folder (``.hydra/config.yaml`` and ``checkpoints/``).
        out_dir: the output folder (default ``RUN_DIR/reprobe/<YYYY-mm-dd_HH-MM-SS>``); it must not exist or be
            empty, unless ``force`` (then it is replaced once the new one is complete).
        probes: ``cfg.callbacks`` keys of the probes to run (None: every enabled probe but priming).
        overrides: config overrides (``callbacks.density.batch_size=16``, ``+callbacks.x=...``).
        every_checkpoint: measure at every kept checkpoint, not only at the probe's scheduled steps.
        force: replace a non-empty ``out_dir``.

    Returns:
        The output folder.
    Raises:
        ConfigError: one line for a missing or non-run folder, a folder a run is training in, no kept checkpoint,
            an unknown or non-replayable probe, a bad override, a non-empty output folder without ``force``, an
            unwritable output folder, or a checkpoint that does not fit the run's model.
    """
    from densitylab.runfolder import lock_holder

    run = Path(run_dir)
    if not run.is_dir():
        raise ConfigError(f"RUN_DIR={str(run_dir)!r} is not a folder: expected a run folder written by train.py")
    holder = lock_holder(run)
    if holder:
        raise ConfigError(f"RUN_DIR={str(run_dir)!r} has a run training in it ({holder}): wait until it finishes")
    import datetime

    stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")
    out = Path(out_dir) if out_dir else run / REPROBE_DIR / stamp
    check_out_dir(out, run, force)
    kept, skipped = kept_checkpoints(run, with_skipped=True)
    if not kept:
        raise ConfigError(
            f"RUN_DIR={str(run_dir)!r} has no checkpoint (checkpoints/probe/step*.ckpt or checkpoints/*.ckpt): "
            "expected a run trained by train.py (checkpoints.keep=probe_steps keeps one per probe step)"
        )
    from densitylab.io import write_json_atomic

    probe_names, overrides = (probes, list(overrides))
    partial = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    cfg = run_config(run, partial, overrides, name=out.name)
    chosen = choose_probes(cfg, probe_names)
    created = [d for d in (partial, *partial.parents) if not d.exists()]  # removed again on failure
    try:
        partial.mkdir(parents=True)
        write_json_atomic(partial / MARKER, {"status": "running", "source_run": str(run.resolve())})
    except OSError as e:
        raise ConfigError(
            f"--out={str(out)!r} cannot be written ({e.strerror or type(e).__name__}): expected a writable folder"
        ) from None
    try:
        try:
            summary = _replay(cfg, run, partial, chosen, kept, overrides, every_checkpoint)
        except ValueError as e:  # e.g. a ledger built for other data (a data.* override)
            if isinstance(e, DensitylabError):
                raise
            raise ConfigError(f"the re-measurement failed: {str(e).splitlines()[0]}") from None
        summary["skipped_checkpoints"] = [str(p) for p in skipped]
        summary["out_dir"] = str(out.resolve())
        _fix_paths(partial, out)
        write_json_atomic(partial / MARKER, summary)
        old = None
        if out.exists():  # --force over an earlier re-measurement (check_out_dir): moved aside, removed once replaced
            old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(out, old)
        os.replace(partial, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException as err:
        from densitylab.run import _finish_wandb

        _finish_wandb(err)  # a failed re-measurement is a failed W&B run (exit code 2 for a ConfigError)
        shutil.rmtree(partial, ignore_errors=True)
        for d in created[1:]:  # the parents this call created, innermost first, when left empty
            try:
                d.rmdir()
            except OSError:
                break
        raise
    return out


def check_out_dir(out: Path, run: Path, force: bool) -> None:
    """Refuse an output folder that would mix with or replace anything but an earlier re-measurement.

    Raises:
        ConfigError: when ``out`` is the run folder, a folder above it, a folder inside it other than below
            ``RUN_DIR/reprobe/``, a file, or a non-empty folder (without ``force``; with ``force``, one that is not an
            earlier re-measurement: no ``reprobe.json``).
    """
    o, r = out.resolve(), run.resolve()
    if o == r or r.is_relative_to(o):
        raise ConfigError(f"--out={str(out)!r} is the run folder or holds it: expected a new folder")
    if o.is_relative_to(r) and not o.is_relative_to(r / REPROBE_DIR):
        raise ConfigError(
            f"--out={str(out)!r} is inside the run folder: expected a folder below {str(run / REPROBE_DIR)!r} or "
            "outside the run (a run's own files are never replaced)"
        )
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out={str(out)!r} is a file: expected a new folder")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise ConfigError(f"--out={str(out)!r} is not empty: expected a new folder (or --force to replace it)")
        if not (out / MARKER).is_file():
            raise ConfigError(
                f"--out={str(out)!r} is not an earlier re-measurement (no {MARKER}): --force replaces only those"
            )


def _fix_paths(partial: Path, out: Path) -> None:
    """``config.yaml`` and ``hparams.yaml`` name the final folder, not the temporary one the probes wrote to."""
    for name in ("config.yaml", "hparams.yaml"):
        path = partial / name
        if path.is_file():
            path.write_text(path.read_text().replace(str(partial), str(out)))


def _replay(cfg, run: Path, out: Path, chosen: list[str], kept, overrides, every_checkpoint: bool) -> dict:
    """Build the model, data, ledger and probes from ``cfg``; replay the probes' hooks over ``kept``; write the plots.
    Returns the ``reprobe.json`` record."""
    import lightning as L
    import torch
    from omegaconf import OmegaConf

    from densitylab.callbacks.base import ProbeCallback
    from densitylab.callbacks.density import DensityCallback
    from densitylab.callbacks.ledger import LedgerCallback
    from densitylab.run import build_callback_map, build_loggers, instantiate, quiet_lightning_logging, write_reports

    quiet_lightning_logging()
    t_start = time.time()
    OmegaConf.save(cfg, out / "config.yaml")
    seed = int(cfg.seed)
    L.seed_everything(seed, workers=True, verbose=False)
    if torch.cuda.is_available():  # as training set it (TF32 on by default): the same kernels
        torch.set_float32_matmul_precision(cfg.get("matmul_precision", "high"))
    lit = instantiate(cfg.model, "model", _convert_="all")
    dm = instantiate(cfg.data, "data", _convert_="all")
    dm.prepare_data()
    dm.setup("fit")
    keyed = {k: cb for k, cb in build_callback_map(cfg).items() if cb is not None}  # cheap constructors, connected
    built = list(keyed.values())
    names = {id(cb): key for key, cb in keyed.items()}
    probes = [cb for cb in built if isinstance(cb, ProbeCallback) and names.get(id(cb)) in chosen]
    ledgers = [cb for cb in built if isinstance(cb, LedgerCallback)]
    providers = [cb for cb in built if callable(getattr(cb, "ledger_windows", None)) and cb not in probes]
    # set up but not measured: the density probe's person panel is the knowledge probe's (KnowledgeCallback.prepare)
    passive = [cb for cb in built if isinstance(cb, DensityCallback) and cb not in probes]
    selected = [cb for cb in built if cb in probes or cb in ledgers or cb in providers or cb in passive]
    loggers = build_loggers(cfg)
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        trainer = _make_trainer(cfg, loggers, selected, out)
    except (MisconfigurationException, RuntimeError, ValueError) as e:  # e.g. trainer.accelerator=gpu without a GPU
        raise ConfigError(f"trainer: {str(e).splitlines()[0]} (override it, e.g. trainer.accelerator=cpu)") from None
    trainer.strategy.connect(lit)
    trainer._data_connector.attach_datamodule(lit, datamodule=dm)
    lit.trainer = trainer
    lit.configure_model()
    lit.to(trainer.strategy.root_device)
    for lg in loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    _prepare_wandb(cfg, loggers, lit, dm)

    train_end_epoch = [0]  # Lightning's epoch at the last write of the last checkpoint (its train end)

    def restore(step: int, path: Path) -> dict:
        ckpt = _load(path)
        try:
            lit.load_state_dict(ckpt["state_dict"])
        except RuntimeError as e:
            raise ConfigError(
                f"checkpoint {str(path)!r} does not fit the run's model ({str(e).splitlines()[0]})"
            ) from None
        lit.on_load_checkpoint(ckpt)
        for ledger in ledgers:
            state = (ckpt.get("callbacks") or {}).get(ledger.state_key)
            if not state:
                raise ConfigError(f"checkpoint {str(path)!r} holds no ledger state: expected a checkpoint of train.py")
            ledger.load_state_dict(state)
        record = ckpt.get("densitylab") or {}
        trainer.replay_step, trainer.replay_epoch = step, int(record.get("epoch", ckpt.get("epoch", 0)))
        train_end_epoch[0] = int(ckpt.get("epoch", 0))
        return record.get("probes") or {}

    measured: dict[str, list[int]] = {names[id(cb)]: [] for cb in probes}

    def note(step: int) -> None:
        for cb in probes:
            if cb.last_step == step and step not in measured[names[id(cb)]]:
                measured[names[id(cb)]].append(step)

    keys = [t.lstrip("+").partition("=")[0] for t in overrides]
    global_change = any(not k.startswith("callbacks.") for k in keys)  # seed, data, trainer ...: every probe

    def overridden(key: str) -> bool:
        return global_change or any(k == f"callbacks.{key}" or k.startswith(f"callbacks.{key}.") for k in keys)

    as_trained = {id(cb): not overridden(names[id(cb)]) for cb in probes}  # settings unchanged: its training steps

    def during_training(ran: dict, step: int) -> None:
        """The probes that measured at ``step`` during training outside their step schedule (epoch cadence), or
        every probe with --every-checkpoint; a final call (train end) is left to ``on_train_end``, at its epoch."""
        for cb in probes:
            rec = ran.get(cb.name) or {}
            due = every_checkpoint or (as_trained[id(cb)] and cb.name in ran and not rec.get("final", False))
            if cb.enabled and due and cb.last_step != step:
                cb.probe(trainer, lit)

    torch_threads = torch.get_num_threads()
    for cb in selected:
        cb.setup(trainer, lit, stage="fit")
    first_step, first_path = kept[0]
    ran = restore(first_step, first_path)
    if first_step > 0:  # stateful probes (memorization's plateau rule) continue from that step's state, restored
        states = _load(first_path).get("callbacks") or {}  # before fit start as Lightning restores a checkpoint
        for cb in probes:
            if states.get(cb.state_key):
                cb.load_state_dict(states[cb.state_key])
                cb.calls, cb.seconds = 0, 0.0  # this re-measurement's own calls
    for cb in selected:
        cb.on_fit_start(trainer, lit)
    for cb in probes:
        cb.on_train_start(trainer, lit)  # step 0: each probe's probe_at_start measurement
        if first_step > 0:
            cb.last_step = -1  # a later first step is a measurement, not a resume
    if first_step > 0:
        for cb in probes:
            cb.on_train_batch_end(trainer, lit, None, None, 0)
    during_training(ran, first_step)
    note(first_step)
    for step, path in kept[1:]:
        ran = restore(step, path)
        for cb in probes:
            cb.on_train_batch_end(trainer, lit, None, None, 0)  # the probe's own schedule
        during_training(ran, step)
        note(step)
    finished = (run / "summary.json").is_file() or trainer.global_step >= int(cfg.trainer.max_steps)
    if finished:  # an unfinished run (crashed) had no final call nor end analyses: neither has its re-measurement
        trainer.replay_epoch = train_end_epoch[0]
        for cb in probes:
            cb.on_train_end(trainer, lit)  # the final probe (when not measured at this step) and end analyses
        note(trainer.global_step)
        for cb in probes:
            cb.on_fit_end(trainer, lit)
    summary_metrics: dict[str, Any] = {}
    for cb in probes:
        summary_metrics.update(cb.summary_metrics())
    for lg in loggers:
        lg.save()
        lg.finalize("success")
    write_reports(out)
    from densitylab.callbacks.wandb_util import find_wandb_logger
    from densitylab.run import _finish_wandb, log_wandb_outputs

    wandb_logger = find_wandb_logger(loggers)
    if wandb_logger is not None:  # the probe tables, report images and summary, as at the end of training
        log_wandb_outputs(wandb_logger, out, {**summary_metrics, "global_step": int(trainer.global_step)})
    _finish_wandb()
    import densitylab

    return {
        "status": "completed",
        "source_run": str(run.resolve()),
        "probes": chosen,
        "overrides": list(overrides),
        "every_checkpoint": every_checkpoint,
        "run_finished": finished,
        "checkpoints": [
            {"step": s, "path": str(p.relative_to(run)) if p.is_relative_to(run) else str(p)} for s, p in kept
        ],
        "measured_steps": measured,
        "torch_threads": torch_threads,
        "matmul_precision": torch.get_float32_matmul_precision(),
        "device": str(lit.device),
        "densitylab_version": getattr(densitylab, "__version__", None),
        "torch_version": torch.__version__,
        "wall_time_s": time.time() - t_start,
        **summary_metrics,
    }


def _make_trainer(cfg, loggers: list, callbacks: list, out: Path):
    """The :func:`_replay_trainer_class` trainer: the run's accelerator and precision, one device, nothing fitted."""
    return _replay_trainer_class()(
        accelerator=cfg.trainer.get("accelerator", "cpu"),
        devices=1,
        precision=cfg.trainer.get("precision", "32-true"),
        logger=loggers or False,
        callbacks=callbacks,
        max_steps=int(cfg.trainer.max_steps),
        max_epochs=-1,
        log_every_n_steps=int(cfg.trainer.get("log_every_n_steps", 50)),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(out),
    )


def _prepare_wandb(cfg, loggers: list, lit, dm) -> None:
    from densitylab.callbacks.wandb_util import find_wandb_logger, prepare_wandb_run

    wandb_logger = find_wandb_logger(loggers)
    if wandb_logger is not None:
        identity = getattr(wandb_logger, "identity", None)
        prepare_wandb_run(wandb_logger, cfg, lit.n_params, dm.meta.get("corpus"), {"job": "reprobe"}, identity)


# ---------------------------------------------------------------------------------------------------- command line
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``densitylab probe``'s arguments to ``parser``: ``RUN_DIR``, ``[probes=a,b] [key=value ...]``, ``--out``,
    ``--every-checkpoint``, ``--force``."""
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by train.py")
    parser.add_argument(
        "args",
        nargs="*",
        metavar="probes=NAMES | KEY=VALUE",
        help="probes=density,knowledge (default: every probe of the run but priming); config overrides "
        "(callbacks.density.batch_size=16; +key=value adds a key)",
    )
    parser.add_argument("--out", help="output folder (default RUN_DIR/reprobe/<timestamp>; must be new or empty)")
    parser.add_argument(
        "--every-checkpoint", action="store_true", help="measure at every kept checkpoint, not only scheduled steps"
    )
    parser.add_argument("--force", action="store_true", help="replace a non-empty --out folder")


def run(args: argparse.Namespace) -> int:
    """Run ``densitylab probe`` from parsed arguments; returns 0, or 2 after one ``error:`` line on stderr."""
    os.environ.setdefault("WANDB_MODE", "offline")
    try:
        probes, overrides = split_arguments(list(args.args))
        out = reprobe(
            args.run_dir, args.out, probes, overrides, every_checkpoint=args.every_checkpoint, force=args.force
        )
    except DensitylabError as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    print(f"re-measured {args.run_dir} into {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m densitylab.reprobe RUN_DIR ...`` (the same as ``densitylab probe``)."""
    parser = argparse.ArgumentParser(
        prog="densitylab probe", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
