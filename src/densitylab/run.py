"""Build every object from the composed Hydra config and fit: the body of ``train.py``.

Everything a user may swap is built with ``hydra.utils.instantiate`` from ``conf/``. The run
folder is Hydra's output folder; see the README ("What the run folder holds").
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from densitylab.errors import ConfigError, DensitylabError
from densitylab.io import write_json_atomic

log = logging.getLogger("densitylab")


def _resolve_ckpt(ckpt_path: str | None, output_dir: Path) -> str | None:
    if not ckpt_path:
        return None
    p = output_dir / "checkpoints" / "last.ckpt" if ckpt_path == "last" else Path(ckpt_path)
    if not p.is_file():
        raise ConfigError(
            f"ckpt_path={str(ckpt_path)!r} does not exist ({p}): expected a Lightning checkpoint file or 'last'"
        )
    return str(p)


def _check_output_dir(output_dir: Path, resuming: bool) -> None:
    if (output_dir / "summary.json").exists() and not resuming:
        raise ConfigError(
            f"hydra.run.dir={str(output_dir)!r} already holds a finished run (summary.json): expected a new folder, "
            "or ckpt_path=... to resume it"
        )


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


def instantiate(node: Any, name: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` that turns a construction error into a one-line ConfigError
    naming the config node (``name``) and the problem."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate as _instantiate

    from densitylab.config import _one_line

    try:
        return _instantiate(node, **kwargs)
    except InstantiationException as e:
        if isinstance(e.__cause__, DensitylabError):
            raise e.__cause__ from None
        raise ConfigError(f"{name}: {_one_line(e)}") from None


def build_loggers(cfg: DictConfig) -> list:
    """Instantiate every entry of ``cfg.logger`` (CSV, W&B)."""
    loggers = []
    for name, lcfg in (cfg.get("logger") or {}).items():
        if lcfg is not None and "_target_" in lcfg:
            if name == "wandb" and "WANDB_SWEEP_ID" not in os.environ:  # a sweep agent's runs must report online
                os.environ.setdefault("WANDB_MODE", "offline")
                os.environ.setdefault("WANDB_SILENT", "true")
            loggers.append(instantiate(lcfg, f"logger.{name}"))
    return loggers


def build_callbacks(cfg: DictConfig) -> list:
    """Instantiate every entry of ``cfg.callbacks``."""
    return [
        instantiate(c, f"callbacks.{n}")
        for n, c in (cfg.get("callbacks") or {}).items()
        if c is not None and "_target_" in c
    ]


def train(cfg: DictConfig) -> dict:
    """Prepare data, build model, trainer, loggers and callbacks from ``cfg``, fit, validate once
    more, and write ``summary.json``.

    Returns:
        The summary dict (also written to ``RUN_DIR/summary.json`` on rank 0).
    Raises:
        DensitylabError: for bad configuration or data (train.py turns it into one line + exit 2).
    """
    import lightning as L

    from densitylab.lit import LitGPT

    quiet_lightning_logging()

    t_start = time.time()
    if cfg.get("malloc_tuning", True):
        from densitylab.system import tune_malloc

        tune_malloc()
    output_dir = Path(cfg.paths.output_dir)
    ckpt = _resolve_ckpt(cfg.get("ckpt_path"), output_dir)
    _check_output_dir(output_dir, resuming=ckpt is not None)
    if _is_rank_zero():
        print(f"run folder: {output_dir}", flush=True)
    try:
        seed = int(cfg.seed)
    except (TypeError, ValueError):
        raise ConfigError(f"seed={cfg.seed!r}: expected an integer") from None
    L.seed_everything(seed, workers=True, verbose=False)
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision(cfg.get("matmul_precision", "high"))

    dm = instantiate(cfg.data, "data", _convert_="all")
    if int(os.environ.get("LOCAL_RANK", 0)) == 0:
        dm.prepare_data()
    dm.setup("fit")  # other local ranks wait for rank 0's cache

    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    if model_cfg.get("vocab_size") in (None, 0):
        model_cfg["vocab_size"] = dm.vocab_size
    elif model_cfg["vocab_size"] < dm.vocab_size:
        raise ConfigError(
            f"model.vocab_size={model_cfg['vocab_size']}: expected >= the tokenizer's {dm.vocab_size} (or null)"
        )
    try:
        lit = LitGPT(
            model=model_cfg, compile=bool(cfg.get("compile", False)), **OmegaConf.to_container(cfg.optim, resolve=True)
        )
    except DensitylabError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e) if str(e).startswith(("model.", "optim.")) else f"model/optim: {e}") from None

    loggers = build_loggers(cfg)
    callbacks = build_callbacks(cfg)
    for lg in loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    from densitylab.callbacks.wandb_util import final_summary, find_wandb_logger, prepare_wandb_run

    wandb_logger = find_wandb_logger(loggers)
    from lightning.pytorch.utilities import rank_zero_only

    if (
        wandb_logger is not None and rank_zero_only.rank == 0
    ):  # RANK / LOCAL_RANK / SLURM_PROCID, as Lightning reads them
        prepare_wandb_run(wandb_logger, cfg, lit.n_params, dm.meta.get("corpus"), _hydra_choices())
    trainer: L.Trainer = instantiate(
        cfg.trainer, "trainer", callbacks=callbacks, logger=loggers or False, default_root_dir=str(output_dir)
    )

    try:
        trainer.fit(lit, datamodule=dm, ckpt_path=ckpt)
        if trainer.interrupted:
            raise KeyboardInterrupt
        train_metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
        val = trainer.validate(lit, datamodule=dm, verbose=False)
        summary = _summary(cfg, trainer, lit, dm, val, callbacks, time.time() - t_start, train_metrics)
        if trainer.is_global_zero:
            if wandb_logger is not None:
                wandb_logger.experiment.summary.update(final_summary(summary))
            write_json_atomic(output_dir / "summary.json", summary)
            if (output_dir / "probes" / "density.parquet").is_file():
                from densitylab.report.density import density_report, format_table

                plots, table = density_report([output_dir])
                log.info("density report in %s:\n%s", plots, format_table(table))
            if (output_dir / "probes" / "modularity.parquet").is_file():
                from densitylab.report.modularity import plot_modularity

                plot_modularity(output_dir)
            if (output_dir / "probes" / "memorization.parquet").is_file():
                from densitylab.report.memorization import plot_memorization

                plot_memorization(output_dir)
        return summary
    finally:
        _finish_wandb()


def _summary(cfg, trainer, lit, dm, val, callbacks, wall_time, train_metrics) -> dict:
    from densitylab.callbacks.perf import ThroughputLogger

    def metric(name: str) -> float | None:
        v = trainer.callback_metrics.get(name)
        return None if v is None else float(v)

    tput = next((c for c in callbacks if isinstance(c, ThroughputLogger)), None)
    val_loss = float(val[0]["val/loss"]) if val and "val/loss" in val[0] else metric("val/loss")
    extra = {}
    for cb in callbacks:  # probes contribute their final headline numbers
        if hasattr(cb, "summary_metrics"):
            extra.update(cb.summary_metrics())
    return {
        "status": "completed",
        "experiment": cfg.experiment_name,
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
        "perf/tokens_per_sec": None
        if tput is None or math.isnan(tput.mean_tokens_per_sec)
        else tput.mean_tokens_per_sec,
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


def _finish_wandb() -> None:
    """Close the W&B run if one is open (Lightning never does; runs would merge in multirun)."""
    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish()


def mark_failed(output_dir: str | Path, message: str) -> None:
    """Write ``FAILED`` (the error line) into a run folder so it never looks like a success."""
    p = Path(output_dir)
    if p.is_dir():
        (p / "FAILED").write_text(message + "\n")
