"""Find the W&B logger among a trainer's loggers (tables, images and summaries go straight to it)."""

from __future__ import annotations

from collections.abc import Iterable


def find_wandb_logger(loggers: Iterable):
    """The first ``lightning.pytorch.loggers.WandbLogger`` in ``loggers``, or None (W&B off)."""
    from lightning.pytorch.loggers import WandbLogger

    return next((lg for lg in loggers if isinstance(lg, WandbLogger)), None)


# summary rule of each metric family in the W&B runs table (the rest keep W&B's default, the last value)
SUMMARY_RULES = {
    "train/loss": "min",
    "val/loss": "min",
    "density/*": "last",
    "modularity/*": "last",
    "memorization/*": "last",
    "perf/tokens_per_sec": "mean",
}


def run_tags(cfg, n_params: int, data_name: str | None) -> list[str]:
    """Tags that let runs be filtered and grouped in the W&B runs table: the experiment's own tags plus
    ``model:{n_layer}x{n_embd}``, ``params:{size}`` (e.g. ``params:0.8M``), ``data:{corpus}`` and
    ``seed:{seed}``."""
    size = f"{n_params / 1e6:.1f}M" if n_params >= 1e5 else f"{n_params / 1e3:.0f}K"
    tags = [str(t) for t in (cfg.get("tags") or [])]
    tags += [f"model:{cfg.model.net.n_layer}x{cfg.model.net.n_embd}", f"params:{size}", f"seed:{cfg.seed}"]
    if data_name:
        tags.append(f"data:{data_name}")
    return list(dict.fromkeys(t[:64] for t in tags))  # W&B rejects the whole tag set if one tag is longer


def prepare_wandb_run(logger, cfg, n_params: int, data_name: str | None, choices: dict | None = None) -> None:
    """Make a W&B run dashboard-ready: ``define_metric`` summaries (minimum ``val/loss`` and
    ``train/loss``; last density, modularity and memorization values), tags from :func:`run_tags`,
    and the Hydra group choices (``model``, ``data``, ...) in the config as ``choices/*`` so that
    runs group by them in the runs table and parallel-coordinates views."""
    from lightning.fabric.loggers.logger import _DummyExperiment

    run = logger.experiment
    if isinstance(run, _DummyExperiment):  # not global rank 0
        return
    run.define_metric("trainer/global_step")
    for name, rule in SUMMARY_RULES.items():
        run.define_metric(name, step_metric="trainer/global_step", summary=rule)
    run.tags = tuple(dict.fromkeys(list(run.tags or ()) + run_tags(cfg, n_params, data_name)))
    if choices:
        run.config.update({f"choices/{k}": v for k, v in choices.items() if v is not None}, allow_val_change=True)


def final_summary(summary: dict) -> dict:
    """The numeric values of ``summary.json`` for the W&B run summary; the final ``val/loss`` and
    ``train/loss`` go in as ``*_final`` so that the ``min`` summaries of those metrics stay."""
    out = {}
    for k, v in summary.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        out[f"{k}_final" if k in ("val/loss", "train/loss") else k] = v
    return out
