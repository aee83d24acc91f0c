"""Lightning adapter for the modularity probe: the ablation sweep at probe steps and the init control."""

from __future__ import annotations

import copy
import math

import lightning as L
import numpy as np
import pandas as pd
import torch

from densitylab.callbacks.base import ProbeCallback, ProbeResult
from densitylab.model import GPT
from densitylab.probes.modularity import Component, ablation_effects, modularity_records, modularity_summary
from densitylab.probes.sets import draw_windows, task_masks, window_set


class ModularityCallback(ProbeCallback):
    """Mean-ablate every attention head and MLP neuron group on fixed held-out windows and measure the
    loss change on each task (:mod:`densitylab.probes.modularity`; Lepori et al., arXiv:2301.10884).

    Runs at log-spaced steps (when ``log_spaced``, step 0 included) and every ``every_n_steps``, and at
    the end (:class:`~densitylab.callbacks.base.ProbeCallback`), on global rank 0 (on an unsharded copy
    that every process helps gather when the strategy shards parameters), eval mode, ``torch.no_grad``,
    uncompiled model, hooks removed afterwards. Once, at fit start, it measures an untrained twin (same
    architecture, initialised from ``seed``): the random-init control. Logs ``modularity/score``,
    ``modularity/score_heads``, ``modularity/score_mlp`` and ``modularity/score_minus_control``; a W&B
    heatmap (component × task); writes ``probes/modularity.parquet`` (step, component, kind, layer,
    index, task, delta_loss; the control as step -1) and adds the final scores to ``summary.json``.

    Args:
        output_dir: run folder.
        every_n_steps: periodic cadence.
        log_spaced: also probe at steps 0, 1, 2, 4, ... below ``every_n_steps``.
        windows: held-out windows probed.
        mlp_groups: neuron groups per MLP (None = n_head).
        eps: minimum total effect (nats) for a component to enter the score.
        max_rows: rows per batched forward (ablation variants × windows).
        seed: seed of the window draw and of the control twin.

    Raises:
        RuntimeError: at fit start if the held-out windows give fewer than 2 tasks.
    """

    name = "modularity"

    def __init__(
        self,
        output_dir: str | None = None,
        every_n_steps: int = 300,
        log_spaced: bool = False,
        windows: int = 16,
        mlp_groups: int | None = None,
        eps: float = 1e-3,
        max_rows: int = 128,
        *,
        seed: int,
    ) -> None:
        super().__init__(output_dir, every_n_steps, log_spaced=log_spaced, probe_at_start=log_spaced)
        self.windows, self.mlp_groups, self.eps, self.max_rows, self.seed = windows, mlp_groups, eps, max_rows, seed
        self.tasks: dict[str, torch.Tensor] = {}
        self.scores: dict[str, float] = {}
        self.control: dict[str, float] = {}
        self._last: tuple[list[Component], np.ndarray] | None = None

    def prepare(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Draw the held-out windows and fix the tasks (every process)."""
        dm = trainer.datamodule
        held = dm.splits["heldout"]
        w = draw_windows(held, self.windows, np.random.default_rng(self.seed))
        self.probe_set = window_set("heldout", held, w)
        self.targets = self.probe_set.targets  # the last input's target is the window's extra token
        self.groups = self.mlp_groups or pl_module.model.config.n_head
        # tasks fixed once for the whole run (the control included): text frequency quartiles use the
        # training split's token frequencies, i.e. one epoch's exposures
        train = dm.splits["train"]
        counts = torch.bincount(train.tokens[: train.n_real], minlength=pl_module.model.config.vocab_size)
        self.tasks = task_masks(dm.splits["heldout"], self.probe_set, counts)
        if len(self.tasks) < 2:
            raise RuntimeError(f"the modularity probe needs at least 2 tasks; these windows give {sorted(self.tasks)}")

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Set up (:meth:`prepare`), then on rank 0 the init control: read from the resumed table's step -1
        rows, or measured on an untrained twin (forked RNG: the training streams are untouched)."""
        super().on_fit_start(trainer, pl_module)
        if not trainer.is_global_zero:
            return
        if self.rows:  # resumed into the same folder
            prev = self.rows[0][self.rows[0]["step"] == -1]
            if len(prev):
                self.control = self._summary_of(prev)
                return
        with torch.random.fork_rng(devices=[pl_module.device] if pl_module.device.type == "cuda" else []):
            torch.manual_seed(self.seed)  # the twin's init; the training RNG streams are left untouched
            twin = GPT(copy.deepcopy(pl_module.model.config)).to(pl_module.device).eval()
        records, self.control = self._ablate(twin, -1)
        self.add_records(records)
        self.log_figures(trainer, -1, records)

    def _summary_of(self, rows: pd.DataFrame) -> dict[str, float]:
        E = rows.pivot_table(index=["kind", "layer", "index"], columns="task", values="delta_loss", sort=True)
        comps = [Component(k, int(l), int(i)) for k, l, i in E.index]
        return modularity_summary(comps, E.to_numpy(), self.eps)

    def _ablate(self, model, step: int) -> tuple[pd.DataFrame, dict[str, float]]:
        comps, E, _ = ablation_effects(
            model, self.probe_set.input_ids, self.targets, self.tasks, self.groups, self.max_rows
        )
        self._last = (comps, E)
        return modularity_records(step, comps, E, list(self.tasks)), modularity_summary(comps, E, self.eps)

    def measure(self, trainer: L.Trainer, pl_module: L.LightningModule, model, step: int) -> ProbeResult:
        """One ablation sweep (:func:`~densitylab.probes.modularity.ablation_effects`).

        Returns:
            The records and the finite ``modularity/*`` scores, with ``modularity/score_minus_control``.
        """
        records, self.scores = self._ablate(model, step)
        scalars = {
            f"modularity/{k}": v for k, v in self.scores.items() if isinstance(v, (int, float)) and math.isfinite(v)
        }
        if math.isfinite(self.scores["score"]) and math.isfinite(self.control.get("score", math.nan)):
            scalars["modularity/score_minus_control"] = self.scores["score"] - self.control["score"]
        return records, scalars

    def figures(self, step: int, records: pd.DataFrame) -> dict:
        """``modularity/heatmap`` of the last sweep (:func:`densitylab.report.modularity.ablation_heatmap`)."""
        from densitylab.report.modularity import ablation_heatmap

        comps, E = self._last
        return {"modularity/heatmap": ablation_heatmap(comps, E, list(self.tasks), step)}

    def final_metrics(self) -> dict[str, float]:
        """Final scores, the init control's and their difference."""
        out = {f"modularity/{k}": v for k, v in self.scores.items()}
        out.update({f"modularity/control_{k}": v for k, v in self.control.items()})
        if self.scores and self.control:
            out["modularity/score_minus_control"] = self.scores["score"] - self.control["score"]
        return out
