"""Lightning adapter for the modularity probe: schedule it, log its records, run the init control."""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch

from densitylab.callbacks.dist import probe_model
from densitylab.callbacks.ledger import LedgerCallback
from densitylab.callbacks.wandb_util import find_wandb_logger
from densitylab.io import write_parquet_atomic
from densitylab.model import GPT
from densitylab.probes.modularity import Component, ablation_effects, modularity_records, modularity_summary
from densitylab.probes.schedule import is_scheduled
from densitylab.probes.sets import build_probe_sets, task_masks


class ModularityCallback(L.Callback):
    """Mean-ablate every attention head and MLP neuron group on fixed held-out windows and measure the
    loss change on each task (:mod:`densitylab.probes.modularity`; Lepori et al., arXiv:2301.10884).

    Runs at log-spaced steps (when ``log_spaced``) and every ``every_n_steps``, and at the end, on
    global rank 0 (on an unsharded copy that every process helps gather when the strategy shards parameters), eval
    mode, ``torch.no_grad``, uncompiled model, hooks removed afterwards. Once, at
    fit start, it measures an untrained twin (same architecture, initialised from ``seed``): the
    random-init control. Logs ``modularity/score``, ``modularity/score_heads``, ``modularity/score_mlp``
    and ``modularity/score_minus_control``; a W&B heatmap (component × task); writes
    ``probes/modularity.parquet`` (step, component, kind, layer, index, task, delta_loss; the control
    as step -1) and adds the final scores to ``summary.json``.

    Args:
        output_dir: run folder.
        every_n_steps: periodic cadence.
        log_spaced: also probe at steps 0, 1, 2, 4, ... below ``every_n_steps``.
        windows: held-out windows probed.
        mlp_groups: neuron groups per MLP (None = n_head).
        eps: minimum total effect (nats) for a component to enter the score.
        max_rows: rows per batched forward (ablation variants × windows).
        seed: seed of the window draw and of the control twin.
    """

    def __init__(
        self,
        output_dir: str | None = None,
        every_n_steps: int = 300,
        log_spaced: bool = False,
        windows: int = 16,
        mlp_groups: int | None = None,
        eps: float = 1e-3,
        max_rows: int = 128,
        seed: int = 0,
    ) -> None:
        self.output_dir = Path(output_dir) if output_dir else None
        self.every_n_steps, self.log_spaced, self.windows = every_n_steps, log_spaced, windows
        self.mlp_groups, self.eps, self.max_rows, self.seed = mlp_groups, eps, max_rows, seed
        self.rows: list[pd.DataFrame] = []
        self.tasks: dict[str, torch.Tensor] = {}
        self.scores: dict[str, float] = {}
        self.control: dict[str, float] = {}
        self.last_step = -1
        self.seconds, self.calls = 0.0, 0

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dm = trainer.datamodule
        self.ledger_cb = next((c for c in trainer.callbacks if isinstance(c, LedgerCallback)), None)
        sets = build_probe_sets(
            {"train": dm.splits["train"], "heldout": dm.splits["heldout"]},
            dm.vocab_size,
            self.windows,
            self.seed,
            dm.eos_id,
        )
        self.probe = next(s for s in sets if s.name == "heldout")
        x = self.probe.input_ids
        self.targets = torch.cat([x[:, 1:], torch.full_like(x[:, :1], -100)], 1)
        self.groups = self.mlp_groups or pl_module.model.config.n_head
        # tasks fixed once for the whole run (the control included): text frequency quartiles use the
        # training split's token frequencies, i.e. one epoch's exposures
        train = dm.splits["train"]
        counts = torch.bincount(train.tokens[: train.n_real], minlength=pl_module.model.config.vocab_size)
        self.tasks = task_masks(dm.splits["heldout"], self.probe, counts)
        if len(self.tasks) < 2:
            raise RuntimeError(f"the modularity probe needs at least 2 tasks; these windows give {sorted(self.tasks)}")
        if not trainer.is_global_zero:
            return
        old = self.output_dir / "probes" / "modularity.parquet" if self.output_dir else None
        if old is not None and old.is_file():  # resumed into the same folder
            self.rows = [pd.read_parquet(old)]
            prev = self.rows[0][self.rows[0]["step"] == -1]
            if len(prev):
                self.control = self._summary_of(prev)
                return
        with torch.random.fork_rng(devices=[pl_module.device] if pl_module.device.type == "cuda" else []):
            torch.manual_seed(self.seed)  # the twin's init; the training RNG streams are left untouched
            twin = GPT(copy.deepcopy(pl_module.model.config)).to(pl_module.device).eval()
        self.control = self._measure(twin, -1, trainer)

    def _summary_of(self, rows: pd.DataFrame) -> dict[str, float]:
        E = rows.pivot_table(index=["kind", "layer", "index"], columns="task", values="delta_loss", sort=True)
        comps = [Component(k, int(l), int(i)) for k, l, i in E.index]
        return modularity_summary(comps, E.to_numpy(), self.eps)

    def _measure(self, model, step: int, trainer: L.Trainer) -> dict[str, float]:
        comps, E, _ = ablation_effects(
            model, self.probe.input_ids, self.targets, self.tasks, self.groups, self.max_rows
        )
        self.rows.append(modularity_records(step, comps, E, list(self.tasks)))
        if self.output_dir is not None:
            write_parquet_atomic(
                pd.concat(self.rows, ignore_index=True), self.output_dir / "probes" / "modularity.parquet"
            )
        self._heatmap(trainer, step, comps, E, list(self.tasks))
        return modularity_summary(comps, E, self.eps)

    def on_train_start(self, trainer, pl_module) -> None:
        self.rows = [r[r["step"] <= trainer.global_step] for r in self.rows]  # resumed: no duplicate steps
        self.last_step = trainer.global_step if trainer.global_step > 0 else -1
        if trainer.global_step == 0 and self.log_spaced:
            self._probe(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step != self.last_step and is_scheduled(step, self.every_n_steps, self.log_spaced):
            self._probe(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.global_step != self.last_step:
            self._probe(trainer, pl_module)

    def _probe(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step = trainer.global_step
        self.last_step = step
        t0 = time.perf_counter()
        with probe_model(trainer, pl_module) as model:  # None off rank 0; an unsharded copy under FSDP
            if model is None:
                return
            self.scores = self._measure(model, step, trainer)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        scalars = {
            f"modularity/{k}": v for k, v in self.scores.items() if isinstance(v, (int, float)) and math.isfinite(v)
        }
        if math.isfinite(self.scores["score"]) and math.isfinite(self.control.get("score", math.nan)):
            scalars["modularity/score_minus_control"] = self.scores["score"] - self.control["score"]
        scalars["perf/modularity_probe_seconds"] = self.seconds / self.calls
        for lg in trainer.loggers:
            lg.log_metrics(scalars, step=step)

    def _heatmap(self, trainer: L.Trainer, step: int, comps, E: np.ndarray, tasks: list[str]) -> None:
        wandb_logger = find_wandb_logger(trainer.loggers)
        if wandb_logger is None:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import wandb

        fig, ax = plt.subplots(figsize=(1.2 + 0.6 * len(tasks), 1 + 0.22 * len(comps)), dpi=100)
        lim = float(np.abs(E).max()) or 1.0
        im = ax.imshow(E, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim)
        ax.set_yticks(range(len(comps)), [c.name for c in comps], fontsize=6)
        ax.set_xticks(range(len(tasks)), tasks, rotation=45, ha="right", fontsize=7)
        ax.set_title(f"Δloss (nats) when ablated, {'init control' if step < 0 else f'step {step}'}", fontsize=8)
        fig.colorbar(im, ax=ax)
        fig.tight_layout()
        wandb_logger.experiment.log({"modularity/heatmap": wandb.Image(fig), "trainer/global_step": max(step, 0)})
        plt.close(fig)

    def summary_metrics(self) -> dict[str, float]:
        """Final scores, the init control's, their difference and the mean seconds per probe call."""
        out = {f"modularity/{k}": v for k, v in self.scores.items()}
        out.update({f"modularity/control_{k}": v for k, v in self.control.items()})
        if self.scores and self.control:
            out["modularity/score_minus_control"] = self.scores["score"] - self.control["score"]
        out["perf/modularity_probe_seconds"] = self.seconds / max(self.calls, 1)
        return out
