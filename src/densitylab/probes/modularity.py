"""Modularity under ablation (design §5). Pure measurements: tensors in, records out.

Lepori, Serre & Pavlick, "Break It Down: Evidence for Structural Compositionality in Neural
Networks", arXiv:2301.10884: if a network is modular, ablating the subnetwork for one function breaks
that function only. Here:

- **components**: every attention head (mean-ablate its slice of ``blocks.{l}.attn.hook_z``) and every
  MLP split into G contiguous neuron groups (mean-ablate the group's units of
  ``blocks.{l}.mlp.hook_post``); means are taken over all positions of the probe windows at the same
  step;
- **tasks**: sets of (window, position) targets, e.g. the answer tokens of each attribute of the
  synthetic biographies, or next-token frequency buckets;
- **effect** E[c, t] = mean next-token loss on task t with c ablated − the unablated loss (nats/token);
- P[c, t] = max(E, 0) / Σ_t max(E, 0); specialization(c) = 1 − H(P[c, ·]) / ln |T| (1: the component
  matters for one task only; 0: equally for all); **modularity** = mean specialization over the
  components whose total positive effect Σ_t max(E, 0) exceeds ε.

All ablation variants run batched: variants are stacked along the batch dimension (each block of B
rows carries one component's mask), so one forward serves several components.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Component:
    """One ablatable unit: ``kind`` ``head`` (index = head) or ``mlp`` (index = neuron group) of ``layer``."""

    kind: str
    layer: int
    index: int

    @property
    def name(self) -> str:
        """``L{layer}.H{index}`` for heads, ``L{layer}.M{index}`` for MLP groups."""
        return f"L{self.layer}.{'H' if self.kind == 'head' else 'M'}{self.index}"


def components(n_layer: int, n_head: int, mlp_groups: int) -> list[Component]:
    """Every head, then every MLP group, layer by layer."""
    out = [Component("head", l, h) for l in range(n_layer) for h in range(n_head)]
    return out + [Component("mlp", l, g) for l in range(n_layer) for g in range(mlp_groups)]


def specialization(effects: np.ndarray) -> np.ndarray:
    """Per component (rows of a (C, T) effect matrix): 1 − H(P)/ln T with P the normalised positive
    effects; NaN where no effect is positive. Raises ValueError for fewer than 2 tasks."""
    E = np.clip(np.asarray(effects, dtype=np.float64), 0, None)
    if E.shape[1] < 2:
        raise ValueError(f"specialization needs at least 2 tasks, got {E.shape[1]}")
    total = E.sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        P = E / total
        H = -np.where(P > 0, P * np.log(P), 0.0).sum(1)
    spec = 1 - H / math.log(E.shape[1])
    return np.where(total[:, 0] > 0, spec, np.nan)


def modularity_score(effects: np.ndarray, eps: float = 1e-3) -> float:
    """Mean specialization over components whose total positive effect exceeds ``eps`` nats (NaN if none)."""
    E = np.clip(np.asarray(effects, dtype=np.float64), 0, None)
    keep = E.sum(1) > eps
    return float(np.nanmean(specialization(effects)[keep])) if keep.any() else math.nan


@torch.no_grad()
def ablation_effects(
    model,
    input_ids: torch.Tensor,
    targets: torch.Tensor,
    task_masks: dict[str, torch.Tensor],
    mlp_groups: int,
    max_rows: int = 128,
) -> tuple[list[Component], np.ndarray, dict[str, float]]:
    """Effect matrix of mean-ablating every component on every task.

    Args:
        model: a :class:`densitylab.model.GPT` in eval mode.
        input_ids: (B, T) probe windows.
        targets: (B, T) next-token ids (``-100`` = no target).
        task_masks: task name -> (B, T) bool, the positions whose target belongs to the task.
        mlp_groups: G, contiguous neuron groups per MLP (d_mlp must be divisible by G).
        max_rows: rows per forward pass (variants × B), bounding memory.
    Returns:
        ``(components, E, baseline)``: E is (C, T) float64 in nats/token (rows follow ``components``,
        columns follow ``task_masks``); ``baseline`` maps task -> unablated loss.
    Raises:
        ValueError: if d_mlp is not divisible by ``mlp_groups`` or a task has no position.
    """
    cfg = model.config
    L, H, dm = cfg.n_layer, cfg.n_head, cfg.d_mlp
    if mlp_groups < 1 or dm % mlp_groups:
        raise ValueError(f"mlp_groups={mlp_groups}: expected a divisor of d_mlp={dm}")
    for name, m in task_masks.items():
        if not bool(m.any()):
            raise ValueError(f"task {name!r} has no position in the probe windows")
    device = next(model.parameters()).device
    x, y = input_ids.to(device), targets.to(device)
    B, T = x.shape
    comps = components(L, H, mlp_groups)

    # pass 1: the unablated model, recording each head's and each unit's mean activation
    sums: dict[str, torch.Tensor] = {}

    def record(module, inp, out):
        sums[module.name] = out.float().mean(dim=(0, 1))

    hooks = [(f"blocks.{l}.attn.hook_z", record) for l in range(L)] + [
        (f"blocks.{l}.mlp.hook_post", record) for l in range(L)
    ]
    with model.hooks(hooks):
        base_loss = _token_loss(model(x), y)
    mean_z = torch.stack([sums[f"blocks.{l}.attn.hook_z"] for l in range(L)])  # (L, H, dh)
    mean_post = torch.stack([sums[f"blocks.{l}.mlp.hook_post"] for l in range(L)])  # (L, dm)

    # per-variant masks: which head / which MLP units each variant ablates
    C = len(comps)
    head_mask = torch.zeros(C, L, H, dtype=torch.bool, device=device)
    unit_mask = torch.zeros(C, L, dm, dtype=torch.bool, device=device)
    size = dm // mlp_groups
    for i, c in enumerate(comps):
        if c.kind == "head":
            head_mask[i, c.layer, c.index] = True
        else:
            unit_mask[i, c.layer, c.index * size : (c.index + 1) * size] = True

    current: dict[str, torch.Tensor] = {}

    def ablate_z(layer: int):
        def fn(module, inp, z):  # z: (V*B, T, H, dh)
            m = current["head"][:, layer].repeat_interleave(B, 0)[:, None, :, None]
            return torch.where(m, mean_z[layer].to(z.dtype), z)

        return fn

    def ablate_post(layer: int):
        def fn(module, inp, h):  # h: (V*B, T, dm)
            m = current["unit"][:, layer].repeat_interleave(B, 0)[:, None, :]
            return torch.where(m, mean_post[layer].to(h.dtype), h)

        return fn

    per_variant = max(1, max_rows // B)
    losses = torch.empty(C, B, T, device=device)
    hooks = [(f"blocks.{l}.attn.hook_z", ablate_z(l)) for l in range(L)] + [
        (f"blocks.{l}.mlp.hook_post", ablate_post(l)) for l in range(L)
    ]
    with model.hooks(hooks):
        for s in range(0, C, per_variant):
            e = min(C, s + per_variant)
            current["head"], current["unit"] = head_mask[s:e], unit_mask[s:e]
            logits = model(x.repeat(e - s, 1))
            losses[s:e] = _token_loss(logits, y.repeat(e - s, 1)).view(e - s, B, T)

    names = list(task_masks)
    E = np.zeros((C, len(names)))
    baseline = {}
    for j, name in enumerate(names):
        m = task_masks[name].to(device) & (y >= 0)
        base = float(base_loss[m].mean())
        baseline[name] = base
        E[:, j] = (losses[:, m].mean(1) - base).double().cpu().numpy()
    return comps, E, baseline


def _token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(N, T, V) logits, (N, T) targets -> (N, T) cross-entropy in nats (0 where target is -100)."""
    return F.cross_entropy(logits.float().transpose(1, 2), targets, ignore_index=-100, reduction="none")


def modularity_records(step: int, comps: list[Component], E: np.ndarray, tasks: list[str]) -> pd.DataFrame:
    """Long table for ``probes/modularity.parquet``: step, component, kind, layer, index, task, delta_loss."""
    rows = [
        {
            "step": int(step),
            "component": c.name,
            "kind": c.kind,
            "layer": c.layer,
            "index": c.index,
            "task": t,
            "delta_loss": float(E[i, j]),
        }
        for i, c in enumerate(comps)
        for j, t in enumerate(tasks)
    ]
    return pd.DataFrame(rows)


def modularity_summary(comps: list[Component], E: np.ndarray, eps: float = 1e-3) -> dict[str, float]:
    """``score`` (all components), ``score_heads``, ``score_mlp`` and ``components_above_eps``."""
    kinds = np.array([c.kind for c in comps])
    return {
        "score": modularity_score(E, eps),
        "score_heads": modularity_score(E[kinds == "head"], eps),
        "score_mlp": modularity_score(E[kinds == "mlp"], eps),
        "components_above_eps": int((np.clip(E, 0, None).sum(1) > eps).sum()),
    }
