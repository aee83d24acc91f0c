"""Build every object from the composed Hydra config and fit: the body of ``train.py``.

Everything a user may swap is built with ``hydra.utils.instantiate`` from ``conf/``. The run
folder is Hydra's output folder; see the README ("What the run folder holds").
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from densitylab.errors import ConfigError, DensitylabError
from densitylab.io import write_json_atomic
from densitylab.preflight import check_loggers  # also run before Hydra makes the run folder (check_config)

log = logging.getLogger("densitylab")


def _resolve_ckpt(ckpt_path: str | None, output_dir: Path) -> str | None:
    """The checkpoint to resume from (``last`` = this run folder's newest checkpoint by global step), or None.

    Raises:
        ConfigError: if it does not exist or is a directory (:func:`densitylab.preflight.resolve_checkpoint`).
    """
    from densitylab.preflight import resolve_checkpoint

    p = resolve_checkpoint(ckpt_path, output_dir)
    return None if p is None else str(p)


def quiet_lightning_logging() -> None:
    """Lightning adds its own console handler *and* propagates to the root logger that Hydra set up,
    printing every message twice; keep only Hydra's handlers (console + ``train.log``). Also
    silence warnings that say nothing about the user's run."""
    import warnings

    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        lg = logging.getLogger(name)
        for h in list(lg.handlers):
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                lg.removeHandler(h)
        lg.propagate = True
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists and is not empty.*")
    warnings.filterwarnings("ignore", message=r".*does not have many workers which may be a bottleneck.*")
    warnings.filterwarnings("ignore", message=r".*is smaller than the logging interval.*")


def _is_rank_zero() -> bool:
    return int(os.environ.get("LOCAL_RANK", 0)) == 0 and int(os.environ.get("NODE_RANK", 0)) == 0


def instantiate(node: Any, name: str, /, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` that turns a construction error into a one-line ConfigError
    naming the config node (``name``, positional only: ``kwargs`` may hold a ``name`` of the object) and the
    problem."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate as _instantiate
    from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

    from densitylab.config import _one_line

    try:
        return _instantiate(node, **kwargs)
    except InstantiationException as e:
        if isinstance(e.__cause__, DensitylabError):
            raise e.__cause__ from None
        key = re.search(r"full_key: (\S+)", str(e))  # the innermost node that failed, e.g. model.optimizer
        hint = r",? set env var HYDRA_FULL_ERROR=1 to see chained (?:stack trace|exception)\.?"
        text = re.sub(hint, "", _one_line(e))
        raise ConfigError(f"{key.group(1) if key else name}: {text}") from None
    except MissingMandatoryValue as e:  # a `???` the command line did not set, e.g. data=text without files
        key = getattr(e, "full_key", None) or "?"
        raise ConfigError(f"{key}=???: expected a value (set it on the command line, e.g. {key}=...)") from None
    except OmegaConfBaseException as e:  # a bad interpolation
        raise ConfigError(f"{name}: {_one_line(e)}") from None


def build_loggers(cfg: DictConfig) -> list:
    """Instantiate every entry of ``cfg.logger`` (CSV, W&B, TensorBoard). The W&B logger gets the run name and job
    type of :func:`densitylab.callbacks.wandb_util.run_identity` where ``logger.wandb.name`` / ``job_type`` are
    null, and keeps the whole identity (with ``run/sweep_dir``, ``run/study``) as its ``identity`` attribute."""
    from densitylab.callbacks.wandb_util import run_identity

    check_loggers(cfg)
    loggers = []
    for name, lcfg in (cfg.get("logger") or {}).items():
        if lcfg is not None and "_target_" in lcfg:
            kwargs = {}
            if name == "wandb":
                if "WANDB_SWEEP_ID" not in os.environ:  # a sweep agent's runs must report online
                    os.environ.setdefault("WANDB_MODE", "offline")
                    os.environ.setdefault("WANDB_SILENT", "true")
                identity = run_identity(cfg)
                kwargs = {"name": identity["name"], "job_type": identity["job_type"]}
            lg = instantiate(lcfg, f"logger.{name}", **kwargs)
            if name == "wandb":
                lg.identity = identity
            loggers.append(lg)
    return loggers


def resume_loggers(loggers: list, output_dir: Path, ckpt: str) -> None:
    """Tell the loggers that this attempt resumes from ``ckpt``: ``metrics.csv`` drops its rows after the
    checkpoint's step, the W&B logger leaves out what earlier attempts of the folder logged and records
    ``attempt`` / ``resumed_from_step`` (:mod:`densitylab.loggers`)."""
    from densitylab.runfolder import checkpoint_step

    step = checkpoint_step(ckpt)
    if step is None or not _is_rank_zero():
        return
    for lg in loggers:
        if hasattr(lg, "resume_at"):
            lg.resume_at(step)
        if hasattr(lg, "resume_in"):
            lg.resume_in(output_dir, step)


def build_callback_map(cfg: DictConfig) -> dict:
    """Instantiate every entry of ``cfg.callbacks`` and connect the callbacks that name another one
    (``callbacks.density.ledger: ledger``; :func:`densitylab.callbacks.base.connect_callbacks`).

    Returns:
        ``cfg.callbacks`` key -> callback (None for a disabled entry), in config order.
    Raises:
        ConfigError: for an entry that cannot be built, or a callback name that does not resolve.
    """
    from densitylab.callbacks.base import connect_callbacks

    built = {
        str(n): instantiate(c, f"callbacks.{n}") if c is not None and "_target_" in c else None
        for n, c in (cfg.get("callbacks") or {}).items()
    }
    connect_callbacks(built)
    return built


def build_callbacks(cfg: DictConfig) -> list:
    """The callbacks of :func:`build_callback_map`, in config order with a ``ProbeCheckpoint`` moved to the end (after
    every probe, a ``+callbacks.<new probe>`` too: it records which probes measured at each step).

    Raises:
        ConfigError: for an entry that cannot be built, or a callback name that does not resolve.
    """
    from densitylab.callbacks.probe_checkpoint import ProbeCheckpoint

    cbs = [c for c in build_callback_map(cfg).values() if c is not None]
    return [c for c in cbs if not isinstance(c, ProbeCheckpoint)] + [c for c in cbs if isinstance(c, ProbeCheckpoint)]


def console(cfg: DictConfig) -> list:
    """The progress bar and model summary of the console, fixed as Lightning's plain ones (``TQDMProgressBar``,
    ``ModelSummary``) when ``trainer.enable_progress_bar`` / ``trainer.enable_model_summary`` are on: Lightning
    would otherwise switch to its rich ones whenever the ``rich`` package is installed (``transformers`` brings it),
    and the console output of a run (the bar closed before an error line, ``FiniteLossGuard``) must not depend on
    what else is installed."""
    from lightning.pytorch.callbacks import ModelSummary, TQDMProgressBar

    trainer = cfg.get("trainer") or {}
    out = []
    if trainer.get("enable_progress_bar", True):
        out.append(TQDMProgressBar())
    if trainer.get("enable_model_summary", True):
        out.append(ModelSummary())
    return out


def train(cfg: DictConfig) -> dict:
    """Build every object from ``cfg``, fit, validate once more, and write the run folder's summary and reports.

    Reads top to bottom: build (run folder checks and seed, data prepared, LightningModule, loggers, callbacks,
    trainer), fit, validate, write (``summary.json``, W&B summary, report plots).

    Returns:
        The summary dict (also written to ``RUN_DIR/summary.json`` on rank 0).
    Raises:
        DensitylabError: for bad configuration or data (train.py turns it into one line + exit 2).
    """
    from densitylab.runfolder import RunLock

    t_start = time.time()
    output_dir, ckpt = _start_run(cfg)
    with RunLock(output_dir) if _is_rank_zero() else contextlib.nullcontext():  # refuses a 2nd launch meanwhile
        return _train(cfg, output_dir, ckpt, t_start)


def cpu_supports_bf16() -> bool:
    """Whether this CPU computes bf16 natively (oneDNN's check: AVX512-BF16 or AMX), i.e. whether
    ``trainer.precision=bf16-mixed`` can be faster than fp32 here rather than emulated."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cpu_precision_fallback(cfg: DictConfig) -> str | None:
    """A bf16 ``trainer.precision`` (``bf16-mixed``, ``bf16-true``) on a CPU without bf16 support
    (:func:`cpu_supports_bf16`) falls back to ``32-true`` with one warning line naming the value; the config is
    changed in place, so ``hparams.yaml``, W&B and ``summary.json`` record the precision trained in. Only for
    ``trainer.accelerator=cpu`` (or ``auto`` without CUDA); a GPU's support is Lightning's to check.

    Returns:
        The precision that was replaced, or None when nothing changed.
    """
    trainer = cfg.get("trainer") or {}
    precision, accelerator = str(trainer.get("precision", "32-true")), str(trainer.get("accelerator", "auto"))
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    if not (on_cpu and precision.startswith("bf16")) or cpu_supports_bf16():
        return None
    log.warning(
        "trainer.precision=%s: this CPU has no native bf16 (AVX512-BF16 or AMX): training in 32-true instead", precision
    )
    from omegaconf import open_dict, read_write

    with read_write(cfg), open_dict(cfg):
        cfg.trainer.precision = "32-true"
    return precision


def _train(cfg: DictConfig, output_dir: Path, ckpt: str | None, t_start: float) -> dict:
    """:func:`train` after the run-folder checks: build, fit, validate, write."""
    from densitylab.preflight import check_checkpoint_vocab

    # ---- build
    lit = instantiate(cfg.model, "model", _convert_="all")  # cheap: the GPT is built in lit.configure_model()
    dm = instantiate(cfg.data, "data", _convert_="all")
    if int(os.environ.get("LOCAL_RANK", 0)) == 0:
        dm.prepare_data()
    dm.setup("fit")  # other local ranks wait for rank 0's cache
    check_checkpoint_vocab(cfg, ckpt, dm.vocab_size)  # the only check that needs the tokenizer
    cpu_precision_fallback(cfg)  # before the loggers record the config: they record the precision trained in
    loggers = build_loggers(cfg)
    try:
        summary = _fit_and_write(cfg, output_dir, ckpt, t_start, lit, dm, loggers)
    except BaseException as err:  # the W&B run is marked failed with this process's own exit code
        _finish_wandb(err)
        raise
    _finish_wandb()
    return summary


def _fit_and_write(cfg: DictConfig, output_dir: Path, ckpt: str | None, t_start: float, lit, dm, loggers) -> dict:
    """:func:`_train` once the loggers exist (the W&B run starts here): callbacks, trainer, fit, validate, write."""
    if ckpt is not None:  # this attempt continues a run: its history is kept, each (step, metric) once
        resume_loggers(loggers, output_dir, ckpt)
    for lg in loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    callbacks = build_callbacks(cfg)
    from densitylab.checkpoint import kill_at_step_callback

    fault = kill_at_step_callback()  # DENSITYLAB_FAULT_KILL_AT_STEP (tests); None otherwise
    trainer = instantiate(
        cfg.trainer,
        "trainer",
        callbacks=[_WandbRunSetup(cfg, _hydra_choices()), *callbacks, *([fault] if fault else []), *console(cfg)],
        logger=loggers or False,
        default_root_dir=str(output_dir),
    )
    # ---- fit
    trainer.fit(lit, datamodule=dm, ckpt_path=ckpt)
    if trainer.interrupted:
        raise KeyboardInterrupt
    train_metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
    # ---- validate
    if lit.last_val_step == trainer.global_step:  # validated at the last step already: log (step, val/loss) once
        val = [{"val/loss": float(trainer.callback_metrics["val/loss"])}]
    else:
        val = trainer.validate(lit, datamodule=dm, verbose=False)
    # ---- write
    _save_final_checkpoint(trainer)
    summary = _summary(cfg, trainer, lit, dm, val, callbacks, time.time() - t_start, train_metrics)
    if trainer.is_global_zero:
        if summary["val/loss"] is not None:
            log.info("final val/loss %.4f nats/token at step %d", summary["val/loss"], summary["global_step"])
        _write_outputs(output_dir, summary, loggers, trainer)
    return summary


def _start_run(cfg: DictConfig) -> tuple[Path, str | None]:
    """Process-wide settings and run-folder checks before anything is built: quiet Lightning logging, malloc
    tuning, the resume checkpoint, refusal to overwrite a finished run, the global seed, matmul precision.

    Returns:
        (run folder, checkpoint path to resume from or None).
    Raises:
        ConfigError: for a missing or bad checkpoint, a finished run folder without ``ckpt_path``, or any value
            :func:`densitylab.preflight.check_config` refuses (seed, trainer, model, optimizer, canaries, tokenizer
            file, checkpoint architecture), an unwritable run folder, a logger whose package is missing
            (:func:`check_loggers`).
    """
    from densitylab.preflight import check_config, check_output_dir
    from densitylab.runfolder import check_relaunch

    quiet_lightning_logging()
    if cfg.get("malloc_tuning", True):
        from densitylab.system import tune_malloc

        tune_malloc()
    output_dir = Path(cfg.paths.output_dir)
    ckpt = _resolve_ckpt(cfg.get("ckpt_path"), output_dir)
    check_relaunch(output_dir, None if ckpt is None else Path(ckpt), "paths.output_dir")
    check_output_dir(output_dir, "paths.output_dir")
    check_config(cfg, ckpt)  # before the data are prepared (train.py ran it before Hydra, too)
    check_loggers(cfg)
    if _is_rank_zero():
        print(f"run folder: {output_dir}", flush=True)
        _to_log_files(f"run folder: {output_dir}")
    try:
        seed = int(cfg.seed)
    except (TypeError, ValueError):
        raise ConfigError(f"seed={cfg.seed!r}: expected an integer") from None
    L.seed_everything(seed, workers=True, verbose=False)
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision(cfg.get("matmul_precision", "high"))
    return output_dir, ckpt


def _save_final_checkpoint(trainer: L.Trainer) -> None:
    """Make ``last.ckpt`` hold the final weights when the last step was not checkpointed (``trainer.max_steps``
    not a multiple of ``every_n_train_steps``), so a finished run's ``last.ckpt`` is the model of its summary."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from densitylab.runfolder import checkpoint_step

    mc = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint) and c.save_last and c.dirpath), None)
    if mc is None:
        return
    last = Path(mc.dirpath) / f"{mc.CHECKPOINT_NAME_LAST}{mc.FILE_EXTENSION}"
    if trainer.is_global_zero and last.is_file() and checkpoint_step(last) == trainer.global_step:
        done = True
    else:
        done = False
    done = trainer.strategy.broadcast(done)  # every process calls save_checkpoint, or none does
    if not done:
        trainer.save_checkpoint(str(last))


def _to_log_files(message: str) -> None:
    """Write ``message`` (an INFO record of the ``densitylab`` logger) to the log files only (Hydra's
    ``train.log``), for a line the console already shows as printed."""
    record = log.makeRecord(log.name, logging.INFO, __file__, 0, message, None, None)
    for h in logging.getLogger().handlers:
        if isinstance(h, logging.FileHandler) and record.levelno >= h.level:
            h.handle(record)


def _write_outputs(output_dir: Path, summary: dict, loggers: list, trainer: L.Trainer | None = None) -> None:
    """Rank 0, after the final validation: the report plots of every probe table the run wrote (``plots/``), the
    W&B run's end (:func:`log_wandb_outputs`), then ``summary.json`` (last: its presence marks a complete run
    folder)."""
    from densitylab.callbacks.wandb_util import find_wandb_logger
    from densitylab.runfolder import clear_failed

    write_reports(output_dir)
    wandb_logger = find_wandb_logger(loggers)
    if wandb_logger is not None:
        log_wandb_outputs(wandb_logger, output_dir, summary, _last_checkpoint(trainer))
    write_json_atomic(output_dir / "summary.json", summary)  # last: a folder with summary.json is complete
    clear_failed(output_dir)  # an earlier attempt's FAILED marker: this attempt finished the run


def _last_checkpoint(trainer: L.Trainer | None) -> Path | None:
    """The run's final checkpoint (``ModelCheckpoint``'s ``last.ckpt``), or None."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    for c in trainer.callbacks if trainer is not None else []:
        if isinstance(c, ModelCheckpoint) and c.save_last and c.dirpath:
            last = Path(c.dirpath) / f"{c.CHECKPOINT_NAME_LAST}{c.FILE_EXTENSION}"
            return last if last.is_file() else None
    return None


def log_wandb_outputs(wandb_logger, output_dir: Path, summary: dict, checkpoint: Path | None = None) -> None:
    """The end of a W&B run (rank 0): the probe tables (``tables/<stem>``) and report images (``plots/<stem>``) of
    the run folder at ``trainer/global_step`` = the final step (:func:`densitylab.callbacks.wandb_util.
    log_run_outputs`), ``summary``'s numbers and strings in the run summary (``final_summary``), and with
    ``logger.wandb.log_artifacts=true`` the model and ledger artifacts (``log_artifacts``). Used by training and by
    a re-measurement (:mod:`densitylab.reprobe`)."""
    from densitylab.callbacks.wandb_util import TABLE_MAX_ROWS, final_summary, log_artifacts, log_run_outputs

    step = summary.get("global_step") or 0
    max_rows = getattr(wandb_logger, "table_max_rows", TABLE_MAX_ROWS)
    try:  # what W&B gets at the end never fails a finished run: the run folder holds all of it
        counts = log_run_outputs(wandb_logger, output_dir, step, max_rows)
        if counts:
            log.info(
                "W&B: %d probe tables (%d rows) under tables/, %d report images under plots/",
                counts["tables"], counts["rows"], counts["images"],
            )  # fmt: skip
    except Exception as err:
        log.warning("W&B tables and plots skipped: %s", str(err).splitlines()[0] if str(err) else type(err).__name__)
    try:
        wandb_logger.experiment.summary.update(final_summary(summary))
    except Exception as err:
        log.warning("W&B run summary skipped: %s", str(err).splitlines()[0] if str(err) else type(err).__name__)
    if getattr(wandb_logger, "log_artifacts", False):
        try:
            names = log_artifacts(wandb_logger, output_dir, checkpoint)
            log.info("W&B artifacts: %s", ", ".join(names) or "none (no files)")
        except Exception as err:
            log.warning("W&B artifacts skipped: %s", str(err).splitlines()[0] if str(err) else type(err).__name__)


def write_reports(output_dir: Path) -> None:
    """The report plots (``plots/``) of every probe table in ``output_dir/probes`` (density, knowledge, modularity,
    memorization), with the density and knowledge headlines in the log; a report that fails is a warning only
    (knowledge). Used at the end of training and of a re-measurement (:mod:`densitylab.reprobe`)."""
    if (output_dir / "probes" / "density.parquet").is_file():
        from densitylab.report.density import density_report, format_table

        plots, table = density_report([output_dir])
        log.info("density report in %s:\n%s", plots, format_table(table))
    if (output_dir / "probes" / "knowledge_curve.parquet").is_file():
        from densitylab.report.knowledge import knowledge_headline, knowledge_report

        try:
            if knowledge_report(output_dir):
                log.info("knowledge report in %s:\n%s", output_dir / "plots", knowledge_headline(output_dir))
        except ValueError as err:  # a report never fails a finished run
            log.warning("knowledge report skipped: %s", str(err).splitlines()[0])
    if (output_dir / "probes" / "modularity.parquet").is_file():
        from densitylab.report.modularity import plot_modularity

        plot_modularity(output_dir)
    if (output_dir / "probes" / "memorization.parquet").is_file():
        from densitylab.report.memorization import plot_memorization

        plot_memorization(output_dir)


class _WandbRunSetup(L.Callback):
    """At fit start (the model is built by then): make the W&B run dashboard-ready on global rank 0
    (:func:`densitylab.callbacks.wandb_util.prepare_wandb_run`: x-axes, summaries, tags with the parameter count,
    Hydra group choices, ``run/sweep_dir`` and ``run/study``)."""

    def __init__(self, cfg: DictConfig, choices: dict) -> None:
        self.cfg, self.choices = cfg, choices

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from lightning.pytorch.utilities import rank_zero_only

        from densitylab.callbacks.wandb_util import find_wandb_logger, prepare_wandb_run

        wandb_logger = find_wandb_logger(trainer.loggers)
        if wandb_logger is not None and rank_zero_only.rank == 0:  # RANK / LOCAL_RANK / SLURM_PROCID
            corpus = trainer.datamodule.meta.get("corpus")
            identity = getattr(wandb_logger, "identity", None)
            prepare_wandb_run(wandb_logger, self.cfg, pl_module.n_params, corpus, self.choices, identity)
            if hasattr(wandb_logger, "backfill"):  # a resumed attempt: what the killed one's W&B log had lost
                n = wandb_logger.backfill()
                if n:
                    log.info("W&B: %d values of metrics.csv up to the resumed step logged again", n)


def _summary(cfg, trainer, lit, dm, val, callbacks, wall_time, train_metrics) -> dict:
    """The ``summary.json`` record: run identity, final losses, sizes, device, and every callback's
    ``summary_metrics()`` (probe headlines, ``perf/tokens_per_sec`` from the ThroughputLogger)."""

    def metric(name: str) -> float | None:
        v = trainer.callback_metrics.get(name)
        return None if v is None else float(v)

    val_loss = float(val[0]["val/loss"]) if val and "val/loss" in val[0] else metric("val/loss")
    extra = {}
    for cb in callbacks:  # probes contribute their final headline numbers, the throughput logger its mean
        if hasattr(cb, "summary_metrics"):
            extra.update(cb.summary_metrics())
    from densitylab.callbacks.wandb_util import run_identity

    return {
        "status": "completed",
        "experiment": cfg.experiment_name,
        "run_name": run_identity(cfg)["name"],  # the W&B run's name; report legends read it
        "run_dir": str(cfg.paths.output_dir),
        "data": dm.meta.get("corpus"),
        "global_step": int(trainer.global_step),
        "epochs": int(trainer.current_epoch),
        "train/tokens_seen": int(lit.tokens_seen),
        "train/loss": train_metrics.get("train/loss"),
        "val/loss": val_loss,
        "data/unigram_entropy_nats": dm.unigram_entropy,
        **{f"data/{k}": dm.meta[k] for k in ("n_sequences", "length", "alphabet_size", "entropy_bits") if k in dm.meta},
        "val/loss_below_unigram_entropy": val_loss is not None and val_loss < dm.unigram_entropy,
        "model/params": lit.n_params,
        "model/params_non_embedding": lit.n_params_non_embedding,
        "model/flops_per_token": lit.flops_per_token,
        "perf/tokens_per_sec": None,  # filled in by the ThroughputLogger's summary_metrics()
        "wall_time_s": wall_time,
        "device": str(lit.device),
        "precision": str(trainer.precision),
        "world_size": int(trainer.world_size),
        **extra,
    }


def _hydra_choices() -> dict:
    """The config group options this run was composed from (``model: tiny``, ``data: synthetic`` ...),
    or {} outside ``@hydra.main``."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return {k: v for k, v in HydraConfig.get().runtime.choices.items() if not k.startswith("hydra/")}
    except Exception:
        return {}


def exit_code_of(err: BaseException | None) -> int:
    """The exit status this process ends with for ``err``: 0 for None, 2 for a ``DensitylabError`` (bad input, a
    NaN stop: train.py's one ``error:`` line), 130 for ``KeyboardInterrupt`` (Python's status after SIGINT), a
    ``SystemExit``'s own code (Ctrl-C during ``fit``: Lightning's graceful shutdown exits 1), 1 for any other
    exception (a traceback)."""
    if err is None:
        return 0
    if isinstance(err, DensitylabError):
        return 2
    if isinstance(err, KeyboardInterrupt):
        return 130
    if isinstance(err, SystemExit):
        code = err.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 1


def _finish_wandb(err: BaseException | None = None) -> None:
    """Close the W&B run if one is open (Lightning never does; runs would merge in multirun), with
    ``exit_code`` = :func:`exit_code_of` ``(err)``: a run that ends with an error (a NaN stop: 2) is a failed run in
    W&B, not a finished one."""
    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            try:  # W&B failing to close never fails a finished run, nor hides the error a failed one raised
                wandb.finish(exit_code=exit_code_of(err))
            except Exception as e:
                log.warning("W&B run not closed cleanly: %s", str(e).splitlines()[0] if str(e) else type(e).__name__)


def mark_failed(output_dir: str | Path, message: str) -> None:
    """Write ``FAILED`` (the error line) into a run folder so it never looks like a success; a finished run
    (``summary.json``: a refused relaunch into it) and a folder another process is training in are never marked."""
    from densitylab.runfolder import lock_holder

    p = Path(output_dir)
    if p.is_dir() and not (p / "summary.json").exists() and not lock_holder(p):  # not another process's run
        (p / "FAILED").write_text(message + "\n")
