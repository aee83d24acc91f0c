"""Lightning adapter for the modularity probe: the ablation sweep at probe steps (v1 and v2) and the init control."""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import time

import lightning as L
import numpy as np
import pandas as pd
import torch

from densitylab.callbacks.base import ProbeCallback, ProbeResult, with_tokens_seen
from densitylab.errors import ConfigError
from densitylab.io import write_parquet_atomic
from densitylab.model import GPT
from densitylab.probes.modularity import (
    ATTRIBUTIONS,
    V2_COLUMNS,
    Component,
    ModularityV2,
    measure_modularity,
    modularity_records,
    modularity_summary,
    v2_record,
)
from densitylab.probes.sets import draw_windows, task_masks, window_set

log = logging.getLogger(__name__)

# the v2 scalars logged at each v2 call (and the final ones in summary.json)
V2_LOGGED = ("score_v2", "null_mean", "excess", "p_perm")


class ModularityCallback(ProbeCallback):
    """Mean-ablate attention heads and groups of MLP units on fixed held-out windows and measure the loss
    change on each task (:mod:`densitylab.probes.modularity`; Lepori et al., arXiv:2301.10884).

    **v1** (every call): every head and G contiguous neuron groups per MLP; logs ``modularity/score_v1``,
    ``modularity/score_heads``, ``modularity/score_mlp``, ``modularity/components_above_eps`` and
    ``modularity/score_minus_control`` (v1 score − the init control's); a W&B heatmap (component × task);
    writes ``probes/modularity.parquet`` (step, component, kind, layer, index, task, delta_loss; the control
    as step -1).

    **v2** (at step 0, at the last call, and every ``v2_every_n_steps`` if > 0): MLP units grouped by their
    attribution profiles on ``fit_windows`` other held-out windows, every group and head mean-ablated on the
    probe windows, effects divided by the task's unablated loss, effect-size-weighted specialization, and a
    permutation null of ``n_perm`` label shuffles (:func:`~densitylab.probes.modularity.modularity_v2`);
    logs ``modularity/score_v2``, ``modularity/null_mean``, ``modularity/excess`` and ``modularity/p_perm``;
    writes ``probes/modularity_v2.parquet`` (one row per v2 call:
    :data:`~densitylab.probes.modularity.V2_COLUMNS`; the control as step -1), rewritten atomically.

    Runs at log-spaced steps (when ``log_spaced``) and every ``every_n_steps``, at step 0 when ``log_spaced``
    or v2 is on, and at the end (:class:`~densitylab.callbacks.base.ProbeCallback`), on global rank 0 (on an
    unsharded copy that every process helps gather when the strategy shards parameters), eval mode,
    uncompiled model, hooks removed afterwards. When the last call was a periodic one without v2 (training
    stopped early), v2 runs alone at the end. Once, at fit start, it measures an untrained twin (same
    architecture, initialised from ``seed``): the random-init control (v1 and v2). When the model at step 0
    has the twin's weights (``model.init_seed`` = ``seed``, the default), step 0 reuses the control's
    measurement. Adds the final scores, the control's (``modularity/control_*``) to ``summary.json``.

    Args:
        output_dir: run folder.
        every_n_steps: periodic cadence.
        log_spaced: also probe at steps 0, 1, 2, 4, ... below ``every_n_steps``.
        thin_after: the periodic interval doubles each time the step doubles past it (None or 0: never).
        windows: held-out windows probed (v1, and v2's ablations).
        mlp_groups: v1's neuron groups per MLP (None = n_head).
        eps: v1's minimum total effect (nats) for a component to enter the score.
        max_rows: rows per batched forward (ablation variants × windows).
        v2_every_n_steps: None = no v2; 0 = v2 at step 0 and at the last call only; N > 0 = also at the
            probe steps that are multiples of N.
        fit_windows: held-out windows (disjoint from ``windows``) for v2's attribution grouping.
        n_perm: v2's permutation-null draws (0: no null).
        attribution: v2's attribution mode (``position``: one backward pass; ``task``: one per task, exact).
        seed: seed of the window draws, the permutations and the control twin.

    Raises:
        ConfigError: for an unknown ``attribution``, a negative ``n_perm`` or ``v2_every_n_steps``, or
            ``fit_windows`` < 1.
        RuntimeError: at fit start if the held-out windows give fewer than 2 tasks.
    """

    name = "modularity"

    def __init__(
        self,
        output_dir: str | None = None,
        every_n_steps: int = 300,
        log_spaced: bool = False,
        thin_after: int | None = 2000,
        windows: int = 16,
        mlp_groups: int | None = None,
        eps: float = 1e-3,
        max_rows: int = 128,
        v2_every_n_steps: int | None = 0,
        fit_windows: int = 16,
        n_perm: int = 1000,
        attribution: str = "position",
        *,
        seed: int,
    ) -> None:
        if attribution not in ATTRIBUTIONS:
            raise ConfigError(f"callbacks.modularity.attribution={attribution!r}: expected one of {ATTRIBUTIONS}")
        if n_perm < 0 or (v2_every_n_steps is not None and v2_every_n_steps < 0) or fit_windows < 1:
            raise ConfigError(
                f"callbacks.modularity: n_perm={n_perm}, v2_every_n_steps={v2_every_n_steps}, "
                f"fit_windows={fit_windows}: expected n_perm >= 0, v2_every_n_steps null or >= 0, fit_windows >= 1"
            )
        v2_on = v2_every_n_steps is not None
        super().__init__(
            output_dir,
            every_n_steps,
            log_spaced=log_spaced,
            thin_after=thin_after,
            probe_at_start=bool(log_spaced) or v2_on,
        )
        self.windows, self.mlp_groups, self.eps, self.max_rows, self.seed = windows, mlp_groups, eps, max_rows, seed
        self.v2_every_n_steps, self.fit_windows, self.n_perm = v2_every_n_steps, fit_windows, n_perm
        self.attribution = attribution
        self.v2_on = v2_on
        self.tasks: dict[str, torch.Tensor] = {}
        self.fit: tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]] | None = None
        self.fit_window_ids: torch.Tensor | None = None
        self.scores: dict[str, float] = {}
        self.control: dict[str, float] = {}
        self.scores_v2: dict[str, float] = {}
        self.control_v2: dict[str, float] = {}
        self.v2_rows: list[pd.DataFrame] = []
        self._last: tuple[list[Component], np.ndarray] | None = None
        self._twin: tuple[str, tuple, ModularityV2 | None] | None = None  # (weights hash, v1, v2) of the control
        self._v2_only = False
        self.control_seconds = 0.0  # the control's measurement (not in perf/modularity_probe_seconds)

    @property
    def v2_table_path(self):
        """``output_dir/probes/modularity_v2.parquet``, or None without an output folder."""
        return None if self.output_dir is None else self.output_dir / "probes" / "modularity_v2.parquet"

    def prepare(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Draw the held-out windows (and v2's disjoint attribution windows) and fix the tasks (every process)."""
        dm = trainer.datamodule
        held = dm.splits["heldout"]
        w = draw_windows(held, self.windows, np.random.default_rng(self.seed))
        self.probe_set = window_set("heldout", held, w)
        self.targets = self.probe_set.targets  # the last input's target is the window's extra token
        self.groups = self.mlp_groups or pl_module.model.config.n_head
        # tasks fixed once for the whole run (the control included): text frequency quartiles use the
        # training split's token frequencies, i.e. one epoch's exposures
        train = dm.splits["train"]
        counts = torch.from_numpy(train.token_counts(minlength=pl_module.model.config.vocab_size))
        self.tasks = task_masks(held, self.probe_set, counts)
        if len(self.tasks) < 2:
            raise RuntimeError(f"the modularity probe needs at least 2 tasks; these windows give {sorted(self.tasks)}")
        self.fit = None
        if self.v2_on:
            rng = np.random.default_rng([self.seed, 1])
            pool = np.setdiff1d(draw_windows(held, self.fit_windows + len(w), rng), w)
            if not len(pool):
                log.warning("modularity v2 off: no held-out window is left for its attribution windows")
                self.v2_on = False
                return
            fw = np.sort(rng.choice(pool, size=min(self.fit_windows, len(pool)), replace=False))
            fit_set = window_set("heldout", held, fw)
            fit_tasks = task_masks(held, fit_set, counts)
            if not any(bool(m.any()) for k, m in fit_tasks.items() if k in self.tasks):
                log.warning("modularity v2 off: its %d attribution windows hold no task position", len(fw))
                self.v2_on = False
                return
            self.fit_window_ids = torch.as_tensor(fw)
            self.fit = (fit_set.input_ids, fit_set.targets, fit_tasks)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Set up (:meth:`prepare`), then on rank 0 the init control: read from the resumed tables' step -1
        rows, or measured on an untrained twin (forked RNG: the training streams are untouched)."""
        super().on_fit_start(trainer, pl_module)
        if not trainer.is_global_zero:
            return
        path = self.v2_table_path
        self.v2_rows = [pd.read_parquet(path)] if self.v2_on and path is not None and path.is_file() else []
        if self.rows:  # resumed into the same folder
            prev = self.rows[0][self.rows[0]["step"] == -1]
            if len(prev):
                self.control = self._v1_keys(self._summary_of(prev))
                if self.v2_rows:
                    prev2 = self.v2_rows[0][self.v2_rows[0]["step"] == -1]
                    if len(prev2):
                        self.control_v2 = self._v2_scalars(prev2.iloc[0].to_dict())
                return
        t0 = time.perf_counter()
        with torch.random.fork_rng(devices=[pl_module.device] if pl_module.device.type == "cuda" else []):
            torch.manual_seed(self.seed)  # the twin's init; the training RNG streams are left untouched
            twin = GPT(copy.deepcopy(pl_module.model.config)).to(pl_module.device).eval()
        v1, v2 = self._sweep(twin, v2=self.v2_on)
        self._twin = (_weights_hash(twin), v1, v2)
        self.control_seconds = time.perf_counter() - t0
        records, self.control = self._v1_result(v1, -1)
        counts = getattr(pl_module, "tokens_seen", None) is not None  # a module that counts its tokens (LitGPT)
        self.tokens_seen = 0 if counts else None  # the control's records: an untrained model, no tokens seen
        try:
            self.add_records(records)
            if v2 is not None:
                self.control_v2 = self._add_v2(v2, -1)
        finally:
            self.tokens_seen = None
        self.log_figures(trainer, -1, records)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Drop v2 rows after the restored step (resume), then as :class:`ProbeCallback`."""
        if self.enabled:
            self.v2_rows = [r[r["step"] <= trainer.global_step] for r in self.v2_rows]
        super().on_train_start(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The final probe; when the last probe was at this step without v2 (a periodic call of a run that
        stopped before ``max_steps``), v2 alone at this step."""
        step = trainer.global_step
        if self.enabled and self.v2_on and step == self.last_step and not self._v2_due(trainer, step):
            self._v2_only = True
            try:
                self.probe(trainer, pl_module, final=True)
            finally:
                self._v2_only = False
            return
        super().on_train_end(trainer, pl_module)

    def _v2_due(self, trainer: L.Trainer, step: int) -> bool:
        if not self.v2_on:
            return False
        n = self.v2_every_n_steps or 0
        return step == 0 or self.is_last_call(trainer, step) or (n > 0 and step % n == 0)

    @staticmethod
    def _v1_keys(summary: dict[str, float]) -> dict[str, float]:
        """v1's summary with ``score`` named ``score_v1``."""
        return {("score_v1" if k == "score" else k): v for k, v in summary.items()}

    @staticmethod
    def _v2_scalars(row: dict) -> dict[str, float]:
        return {k: float(row[k]) for k in V2_LOGGED}

    def _summary_of(self, rows: pd.DataFrame) -> dict[str, float]:
        E = rows.pivot_table(index=["kind", "layer", "index"], columns="task", values="delta_loss", sort=True)
        comps = [Component(k, int(l), int(i)) for k, l, i in E.index]
        return modularity_summary(comps, E.to_numpy(), self.eps)

    def _sweep(self, model, v1: bool = True, v2: bool = False) -> tuple[tuple | None, ModularityV2 | None]:
        return measure_modularity(
            model,
            self.probe_set.input_ids,
            self.targets,
            self.tasks,
            self.groups if v1 else None,
            fit=self.fit if v2 else None,
            n_perm=self.n_perm,
            seed=self.seed,
            attribution=self.attribution,
            max_rows=self.max_rows,
        )

    def _v1_result(self, v1: tuple, step: int) -> tuple[pd.DataFrame, dict[str, float]]:
        comps, E, _ = v1
        self._last = (comps, E)
        return modularity_records(step, comps, E, list(self.tasks)), self._v1_keys(
            modularity_summary(comps, E, self.eps)
        )

    def _add_v2(self, v2: ModularityV2, step: int) -> dict[str, float]:
        """Append the v2 row, rewrite ``probes/modularity_v2.parquet``; return the logged v2 scalars."""
        row = with_tokens_seen(v2_record(step, v2), self.tokens_seen)
        self.v2_rows.append(row)
        if self.v2_table_path is not None:
            frames = [r for r in self.v2_rows if len(r)]
            table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=V2_COLUMNS)
            write_parquet_atomic(table, self.v2_table_path)
        return self._v2_scalars(row.iloc[0].to_dict())

    def measure(self, trainer: L.Trainer, pl_module: L.LightningModule, model, step: int) -> ProbeResult:
        """One ablation sweep (:func:`~densitylab.probes.modularity.measure_modularity`): v1, and v2 when due.

        Returns:
            The v1 records (none in a v2-only call) and the finite ``modularity/*`` scalars, with
            ``modularity/score_minus_control`` and, at v2 calls, the v2 scalars.
        """
        v2_due = self._v2_due(trainer, step)
        twin = self._twin if step == 0 and self._twin is not None else None
        if twin is not None and twin[0] == _weights_hash(model) and (twin[2] is not None or not v2_due):
            v1, v2 = twin[1], twin[2] if v2_due else None  # step 0 = the control's weights: same measurement
        else:
            v1, v2 = self._sweep(model, v1=not self._v2_only, v2=v2_due)
        scalars: dict[str, float] = {}
        if v1 is not None:
            records, self.scores = self._v1_result(v1, step)
            scalars = {
                f"modularity/{k}": v for k, v in self.scores.items() if isinstance(v, (int, float)) and math.isfinite(v)
            }
            if math.isfinite(self.scores["score_v1"]) and math.isfinite(self.control.get("score_v1", math.nan)):
                scalars["modularity/score_minus_control"] = self.scores["score_v1"] - self.control["score_v1"]
        else:
            records = modularity_records(step, [], np.zeros((0, len(self.tasks))), list(self.tasks))
        if v2 is not None:
            self.scores_v2 = self._add_v2(v2, step)
            scalars.update({f"modularity/{k}": v for k, v in self.scores_v2.items() if math.isfinite(v)})
        return records, scalars

    def figures(self, step: int, records: pd.DataFrame) -> dict:
        """``modularity/heatmap`` of the last v1 sweep (:func:`densitylab.report.modularity.ablation_heatmap`);
        none for a v2-only call. The colour scale is the same at every step and in every run: symmetric log
        (``SymLogNorm``, linear within ±0.01 nats) from −1 to +1 nats of Δloss, larger changes in the end colours,
        with a labelled colourbar."""
        from matplotlib.colors import SymLogNorm

        from densitylab.report.modularity import ablation_heatmap

        if not len(records) or self._last is None:
            return {}
        comps, E = self._last
        fig = ablation_heatmap(comps, E, list(self.tasks), step)
        im = fig.axes[0].images[0]
        im.set_norm(SymLogNorm(linthresh=0.01, linscale=0.5, vmin=-1.0, vmax=1.0, base=10))
        if im.colorbar is not None:
            im.colorbar.set_label("Δloss (nats; fixed symlog scale ±1)", fontsize=7)
        return {"modularity/heatmap": fig}

    def final_metrics(self) -> dict[str, float]:
        """Final v1 and v2 scores, the init control's (``modularity/control_*``), v1's difference and
        ``perf/modularity_control_seconds`` (the control's measurement, when this attempt made it)."""
        out = {f"modularity/{k}": v for k, v in self.scores.items()}
        out.update({f"modularity/control_{k}": v for k, v in self.control.items()})
        if self.scores and self.control:
            out["modularity/score_minus_control"] = self.scores["score_v1"] - self.control["score_v1"]
        out.update({f"modularity/{k}": v for k, v in self.scores_v2.items()})
        out.update({f"modularity/control_{k}": v for k, v in self.control_v2.items()})
        if self.control_seconds:
            out["perf/modularity_control_seconds"] = self.control_seconds
        return out


def _weights_hash(model: torch.nn.Module) -> str:
    """SHA-1 of every parameter and buffer (names and bytes): equal hashes = the same weights."""
    h = hashlib.sha1()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
