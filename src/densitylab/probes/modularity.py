"""Modularity under ablation (design §5). Pure measurements: tensors in, records out.

Lepori, Serre & Pavlick, "Break It Down: Evidence for Structural Compositionality in Neural
Networks", arXiv:2301.10884: if a network is modular, ablating the subnetwork for one function breaks
that function only. Two scores share one batched ablation sweep.

**v1** (``modularity/score_v1``):

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

Neuron order is arbitrary, so v1's MLP groups are random partitions of the units, its score weighs raw
Δloss of tasks of different difficulty alike and ignores effect size.

**v2** (``modularity/score_v2``; :func:`modularity_v2`):

1. *attribution grouping* on ``fit`` windows (disjoint from the evaluation windows): a[l, u, t] = the
   first-order estimate of the change of task t's loss when unit u of ``blocks.{l}.mlp.hook_post`` is
   mean-ablated, Σ_positions (mean_u − act_u) · ∂loss/∂act_u (attribution patching: Nanda 2023, "Attribution
   Patching"; Syed, Rager & Conmy, arXiv:2310.10348), from one backward pass (:func:`mlp_attribution`);
   divided by the task's unablated loss; unit u joins the group of the task with its largest relative
   attribution, or the layer's ``rest`` group when none is positive (:func:`attribution_groups`). Heads
   stay components of their own.
2. *validation by ablation* on the evaluation windows: each non-empty group and each head mean-ablated.
3. *normalised effects* E_norm[c, t] = E[c, t] / L_t (L_t: task t's unablated loss): relative increases,
   so easy and hard tasks weigh alike.
4. *effect-size weighting*: score_v2 = Σ_c w_c · spec(c) / Σ_c w_c with w_c = Σ_t max(E_norm[c, t], 0)
   and spec(c) = 1 − H(P_c)/ln |T| on P_c ∝ max(E_norm[c, ·], 0) (:func:`weighted_specialization`).
5. *permutation null*: the evaluation positions' task labels are shuffled (a random permutation of the
   scored positions, task sizes kept) ``n_perm`` times and the score recomputed from the same per-position
   losses (:func:`permutation_null`). The grouping was fitted on other windows, so it is independent of the
   evaluation labels and the test is exact given the fit windows: p = (1 + #{null >= score}) / (1 + n_perm).

All ablation variants run batched (:func:`ablation_sweep`): variants are stacked along the batch dimension
(each block of B rows carries one component's mask); a variant of layer l starts from the cached residual
stream at that layer and only the scored positions go through the unembedding, so one call costs well
under one full forward per component.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

# tasks whose unablated loss is below this (nats/token) are normalised by it instead (no division by 0)
BASELINE_FLOOR = 1e-6
ATTRIBUTIONS = ("position", "task")


@dataclass(frozen=True)
class Component:
    """One ablatable unit: ``kind`` ``head`` (index = head) or ``mlp`` (index = neuron group) of ``layer``;
    ``label`` names an attribution group of v2 (its task, or ``rest``)."""

    kind: str
    layer: int
    index: int
    label: str = ""

    @property
    def name(self) -> str:
        """``L{layer}.H{index}`` for heads, ``L{layer}.M{index}`` for MLP groups, ``L{layer}.M[{label}]`` for
        a labelled (v2) group."""
        if self.label:
            return f"L{self.layer}.M[{self.label}]"
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


# ---------------------------------------------------------------------------------------------- the sweep
@dataclass
class PositionLosses:
    """Per-position result of one ablation sweep on N scored positions (those in at least one task).

    Attributes:
        components: the C ablated components, in row order.
        base: (N,) unablated next-token loss per scored position (nats), float64.
        ablated: (C, N) the loss with each component mean-ablated (nats), float64.
        membership: (N, K) bool, position n belongs to task k.
        tasks: the K task names, in column order.
    """

    components: list[Component]
    base: np.ndarray
    ablated: np.ndarray
    membership: np.ndarray
    tasks: list[str]

    @property
    def delta(self) -> np.ndarray:
        """(C, N) ablated − unablated loss per position (nats)."""
        return self.ablated - self.base[None, :]

    def baseline(self) -> np.ndarray:
        """(K,) unablated mean loss of each task (nats/token)."""
        M = self.membership.astype(np.float64)
        return (self.base @ M) / M.sum(0)

    def effects(self, rows: list[int] | None = None) -> np.ndarray:
        """(C, K) E[c, t] = mean ablated loss on task t − its unablated loss (nats/token), for ``rows``
        (component indices; None = all)."""
        M = self.membership.astype(np.float64)
        A = self.ablated if rows is None else self.ablated[rows]
        return (A @ M) / M.sum(0) - self.baseline()[None, :]


def _scored(task_masks: dict[str, torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
    """(B, T, K) bool task membership of the positions with a target; ValueError for an empty task."""
    for name, m in task_masks.items():
        if not bool(m.any()):
            raise ValueError(f"task {name!r} has no position in the probe windows")
    M = torch.stack([m.to(targets.device) & (targets >= 0) for m in task_masks.values()], -1)
    for name, k in zip(task_masks, range(M.shape[-1])):
        if not bool(M[..., k].any()):
            raise ValueError(f"task {name!r} has no position with a target in the probe windows")
    return M


@torch.no_grad()
def ablation_sweep(
    model,
    input_ids: torch.Tensor,
    targets: torch.Tensor,
    task_masks: dict[str, torch.Tensor],
    variants: list[tuple[Component, torch.Tensor]],
    max_rows: int = 128,
) -> PositionLosses:
    """Per-position losses with each variant mean-ablated, batched.

    One unablated pass records every layer's residual stream (``blocks.{l}.hook_resid_pre`` and
    ``hook_resid_mid``) and the mean over all B·T positions of each head's ``hook_z`` slice and each MLP
    unit of ``hook_post``. A head variant of layer l then reruns block l from ``hook_resid_pre`` with its head
    replaced by the mean, an MLP variant only block l's MLP from ``hook_resid_mid``, and both the blocks
    above; the last block's MLP, the unembedding and the loss run at the scored positions only (nothing
    mixes positions after the last attention). Up to ``max_rows // B`` variants of the same layer and kind
    share one forward (stacked along the batch, variant-major).

    Args:
        model: a :class:`densitylab.model.GPT` in eval mode.
        input_ids: (B, T) probe windows.
        targets: (B, T) next-token ids (``-100`` = no target).
        task_masks: task name -> (B, T) bool, the positions whose target belongs to the task.
        variants: ``(component, mask)`` pairs: for a head, an (H,) bool mask of the ablated heads of
            ``component.layer``; for an MLP group, a (d_mlp,) bool mask of its units.
        max_rows: rows per forward pass (variants × B), bounding memory.
    Returns:
        :class:`PositionLosses` over the positions with a target in at least one task.
    Raises:
        ValueError: if a task has no position with a target, or a mask has the wrong shape.
    """
    cfg = model.config
    L, H, dm = cfg.n_layer, cfg.n_head, cfg.d_mlp
    device = next(model.parameters()).device
    x, y = input_ids.to(device), targets.to(device)
    B, T = x.shape
    M = _scored(task_masks, y)
    scored = M.any(-1)  # (B, T)
    ys = y[scored]  # (N,)
    N = int(ys.numel())

    resid: dict[str, torch.Tensor] = {}
    means: dict[str, torch.Tensor] = {}

    def keep(module, inp, out):
        resid[module.name] = out

    def mean(module, inp, out):
        means[module.name] = out.float().mean(dim=(0, 1))

    hooks = [(f"blocks.{l}.{h}", keep) for l in range(L) for h in ("hook_resid_pre", "hook_resid_mid")]
    hooks += [(f"blocks.{l}.attn.hook_z", mean) for l in range(L)]
    hooks += [(f"blocks.{l}.mlp.hook_post", mean) for l in range(L)]
    with model.hooks(hooks):
        base = _token_loss(model(x), y)[scored]

    groups: dict[tuple[int, str], list[int]] = {}
    for i, (c, m) in enumerate(variants):
        want = (H,) if c.kind == "head" else (dm,)
        if tuple(m.shape) != want or m.dtype != torch.bool:
            raise ValueError(f"variant {c.name}: expected a {want} bool mask, got {tuple(m.shape)} {m.dtype}")
        groups.setdefault((c.layer, c.kind), []).append(i)
    blocks = model.transformer.h
    out = torch.empty(len(variants), N, device=device)
    per = max(1, max_rows // B)
    for (l, kind), idx in sorted(groups.items()):
        for s in range(0, len(idx), per):
            chunk = idx[s : s + per]
            V = len(chunk)
            mv = torch.stack([variants[i][1] for i in chunk]).to(device)  # (V, H) or (V, dm)
            if kind == "head":
                name, mean_act = f"blocks.{l}.attn.hook_z", means[f"blocks.{l}.attn.hook_z"]

                def ablate(module, inp, z, mv=mv, mz=mean_act):  # z: (V*B, T, H, dh), variant-major rows
                    zv = z.reshape(mv.shape[0], -1, *z.shape[2:])
                    return torch.where(mv[:, None, :, None], mz.to(z.dtype), zv).reshape(z.shape)

                h = resid[f"blocks.{l}.hook_resid_pre"].repeat(V, 1, 1)
            else:
                name, mean_act = f"blocks.{l}.mlp.hook_post", means[f"blocks.{l}.mlp.hook_post"]

                def ablate(module, inp, a, mv=mv, mp=mean_act):  # a: (V*B, T, dm) or (V, N, dm)
                    av = a.reshape(mv.shape[0], -1, a.shape[-1])
                    return torch.where(mv[:, None, :], mp.to(a.dtype), av).reshape(a.shape)

                h = resid[f"blocks.{l}.hook_resid_mid"].repeat(V, 1, 1)
            with model.hooks([(name, ablate)]):
                for j in range(l, L):  # Block.forward in its two halves
                    b = blocks[j]
                    if j > l or kind == "head":
                        h = b.hook_resid_mid(h + b.hook_attn_out(b.attn(b.ln_1(b.hook_resid_pre(h)))))
                    if j == L - 1:  # from here on every position is on its own: keep the scored ones
                        h = h.view(V, B, T, -1)[:, scored]  # (V, N, d)
                    h = b.hook_resid_post(h + b.hook_mlp_out(b.mlp(b.ln_2(h))))
            logits = model.lm_head(model.transformer.ln_f(h)).float()
            out[chunk] = F.cross_entropy(logits.reshape(V * N, -1), ys.repeat(V), reduction="none").view(V, N)
    return PositionLosses(
        components=[c for c, _ in variants],
        base=base.double().cpu().numpy(),
        ablated=out.double().cpu().numpy(),
        membership=M[scored].cpu().numpy(),
        tasks=list(task_masks),
    )


def block_variants(n_layer: int, n_head: int, d_mlp: int, mlp_groups: int) -> list[tuple[Component, torch.Tensor]]:
    """v1's variants: every head, then every MLP split into ``mlp_groups`` contiguous neuron blocks.

    Raises:
        ValueError: if d_mlp is not divisible by ``mlp_groups``.
    """
    if mlp_groups < 1 or d_mlp % mlp_groups:
        raise ValueError(f"mlp_groups={mlp_groups}: expected a divisor of d_mlp={d_mlp}")
    size = d_mlp // mlp_groups
    out = []
    for c in components(n_layer, n_head, mlp_groups):
        if c.kind == "head":
            m = torch.zeros(n_head, dtype=torch.bool)
            m[c.index] = True
        else:
            m = torch.zeros(d_mlp, dtype=torch.bool)
            m[c.index * size : (c.index + 1) * size] = True
        out.append((c, m))
    return out


def ablation_effects(
    model,
    input_ids: torch.Tensor,
    targets: torch.Tensor,
    task_masks: dict[str, torch.Tensor],
    mlp_groups: int,
    max_rows: int = 128,
) -> tuple[list[Component], np.ndarray, dict[str, float]]:
    """v1's effect matrix of mean-ablating every component on every task (:func:`ablation_sweep`).

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
    variants = block_variants(cfg.n_layer, cfg.n_head, cfg.d_mlp, mlp_groups)
    sweep = ablation_sweep(model, input_ids, targets, task_masks, variants, max_rows)
    return sweep.components, sweep.effects(), dict(zip(sweep.tasks, sweep.baseline().tolist()))


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
    return pd.DataFrame(rows, columns=["step", "component", "kind", "layer", "index", "task", "delta_loss"])


def modularity_summary(comps: list[Component], E: np.ndarray, eps: float = 1e-3) -> dict[str, float]:
    """v1's ``score`` (all components), ``score_heads``, ``score_mlp`` and ``components_above_eps``."""
    kinds = np.array([c.kind for c in comps])
    return {
        "score": modularity_score(E, eps),
        "score_heads": modularity_score(E[kinds == "head"], eps),
        "score_mlp": modularity_score(E[kinds == "mlp"], eps),
        "components_above_eps": int((np.clip(E, 0, None).sum(1) > eps).sum()),
    }


# ---------------------------------------------------------------------------------------------- v2
def mlp_attribution(
    model,
    input_ids: torch.Tensor,
    targets: torch.Tensor,
    task_masks: dict[str, torch.Tensor],
    mode: str = "position",
) -> tuple[np.ndarray, np.ndarray]:
    """First-order (attribution-patching) estimate of each MLP unit's mean-ablation effect on each task.

    With act = ``blocks.{l}.mlp.hook_post`` (B, T, d_mlp), m_u its mean over all B·T positions and ℓ_p the
    next-token loss at position p, a[l, u, t] estimates the change of task t's mean loss when unit u is
    replaced by m_u at every position (Nanda 2023, "Attribution Patching"; Syed, Rager & Conmy,
    arXiv:2310.10348):

    - ``mode="task"`` (exact first order, one backward pass per task):
      a[l, u, t] = Σ_q (m_u − act_{q,u}) · ∂ℓ̄_t/∂act_{q,u}, with ℓ̄_t the mean loss over task t's positions;
    - ``mode="position"`` (one backward pass for all tasks and any relabelling of the positions): with
      g = ∂(Σ_{p scored} ℓ_p)/∂act, a[l, u, t] = (1/n_t) Σ_{q in task t} (m_u − act_{q,u}) · g_{q,u}: each
      position's contribution (to its own and to later positions' losses) is credited to its own task.
      Equal to ``task`` wherever nothing flows between positions (the last layer's units, a model without
      attention); summed over disjoint tasks that cover every target, both give the same total.

    Positive values: ablating the unit is estimated to raise the task's loss. Runs with gradients enabled
    (activations only; no parameter's ``.grad`` is touched) and removes its hooks.

    Args:
        model: a :class:`densitylab.model.GPT` in eval mode.
        input_ids: (B, T) windows; targets: (B, T) next-token ids (``-100`` = none).
        task_masks: task name -> (B, T) bool; a task without positions here gets zeros.
        mode: ``position`` or ``task``.
    Returns:
        ``(a, baseline)``: a (L, d_mlp, K) float64 in nats/token, K following ``task_masks``; baseline (K,)
        the unablated mean loss of each task on these windows (NaN for a task without positions).
    Raises:
        ValueError: for an unknown ``mode``, or when no task has a position with a target.
    """
    if mode not in ATTRIBUTIONS:
        raise ValueError(f"attribution mode {mode!r}: expected one of {ATTRIBUTIONS}")
    cfg = model.config
    L = cfg.n_layer
    device = next(model.parameters()).device
    x, y = input_ids.to(device), targets.to(device)
    M = torch.stack([m.to(device) & (y >= 0) for m in task_masks.values()], -1).float()  # (B, T, K)
    n = M.sum((0, 1))  # (K,)
    if not bool((n > 0).any()):
        raise ValueError("no task has a position with a target in the attribution windows")
    acts: dict[int, torch.Tensor] = {}

    def grab(layer: int):
        def fn(module, inp, out):
            if not out.requires_grad:  # frozen parameters: still differentiate w.r.t. the activations
                out = out.detach().requires_grad_()
            acts[layer] = out
            return out

        return fn

    K = M.shape[-1]
    a = torch.zeros(L, cfg.d_mlp, K, dtype=torch.float64, device=device)
    scored = M.amax(-1) > 0  # (B, T)
    Ms = M[scored]  # (N, K)
    with torch.enable_grad(), model.hooks([(f"blocks.{l}.mlp.hook_post", grab(l)) for l in range(L)]):
        h = model(x, stop_at_layer=L)[scored]  # the residual stream at the scored positions: (N, d)
        loss = F.cross_entropy(model.lm_head(model.transformer.ln_f(h)).float(), y[scored], reduction="none")
        inputs = [acts[l] for l in range(L)]
        delta = [(act.detach().mean(dim=(0, 1)) - act.detach()).float() for act in inputs]  # (B, T, dm) each
        base = (loss.detach()[:, None] * Ms).sum(0) / n.clamp(min=1)
        if mode == "position":
            grads = torch.autograd.grad(loss.sum(), inputs)
            w = Ms / n.clamp(min=1)  # (N, K)
            for l in range(L):
                a[l] = ((delta[l] * grads[l].float())[scored].T @ w).double()
        else:
            for k in range(K):
                if n[k] == 0:
                    continue
                grads = torch.autograd.grad((loss * Ms[:, k]).sum() / n[k], inputs, retain_graph=k < K - 1)
                for l in range(L):
                    a[l, :, k] = (delta[l] * grads[l].float()).sum((0, 1)).double()
    baseline = torch.where(n > 0, base, torch.full_like(base, float("nan")))
    return a.cpu().numpy(), baseline.double().cpu().numpy()


def attribution_groups(attribution: np.ndarray, baseline: np.ndarray) -> np.ndarray:
    """Assign every MLP unit to the task it is most relatively important for.

    The profile a[l, u, ·] / L_t (L_t: task t's unablated loss, floored at :data:`BASELINE_FLOOR`; tasks with
    NaN baseline are skipped) is normalised to sum 1 over its positive entries; unit u joins group
    argmax_t (the same for the raw and the normalised profile; ties: the first task) when that maximum is
    positive, else the layer's ``rest`` group (index K). Deterministic, no seed.

    Args:
        attribution: (L, d_mlp, K) from :func:`mlp_attribution` (nats/token).
        baseline: (K,) unablated task losses (nats/token).
    Returns:
        (L, d_mlp) int64 group ids in 0..K (K = ``rest``).
    """
    a = np.asarray(attribution, dtype=np.float64)
    b = np.asarray(baseline, dtype=np.float64)
    rel = np.where(np.isfinite(b), a / np.maximum(np.nan_to_num(b, nan=1.0), BASELINE_FLOOR), -np.inf)
    best = rel.argmax(-1)
    top = np.take_along_axis(rel, best[..., None], -1)[..., 0]
    return np.where(top > 0, best, a.shape[-1]).astype(np.int64)


def group_variants(groups: np.ndarray, tasks: list[str], n_head: int) -> list[tuple[Component, torch.Tensor]]:
    """v2's variants: every head, then each layer's non-empty attribution groups (label = task or ``rest``).

    Args:
        groups: (L, d_mlp) ids from :func:`attribution_groups`.
        tasks: the K task names (group K is ``rest``).
        n_head: heads per layer.
    """
    L, dm = groups.shape
    labels = [*tasks, "rest"]
    out = []
    for l in range(L):
        for h in range(n_head):
            m = torch.zeros(n_head, dtype=torch.bool)
            m[h] = True
            out.append((Component("head", l, h), m))
    for l in range(L):
        for g, label in enumerate(labels):
            m = torch.as_tensor(groups[l] == g)
            if bool(m.any()):
                out.append((Component("mlp", l, g, label), m))
    return out


def normalised_effects(effects: np.ndarray, baseline: np.ndarray) -> np.ndarray:
    """E_norm[..., c, t] = E[..., c, t] / max(L_t, :data:`BASELINE_FLOOR`): the relative loss increase
    (dimensionless) of task t when component c is ablated. ``baseline`` broadcasts as (..., 1, K)."""
    b = np.maximum(np.asarray(baseline, dtype=np.float64), BASELINE_FLOOR)
    return np.asarray(effects, dtype=np.float64) / b[..., None, :]


def weighted_specialization(E_norm: np.ndarray) -> np.ndarray | float:
    """score_v2 of one or a stack of (C, K) normalised effect matrices.

    w_c = Σ_t max(E_norm[c, t], 0); P_c = max(E_norm[c, ·], 0) / w_c; spec(c) = 1 − H(P_c)/ln K;
    score = Σ_c w_c spec(c) / Σ_c w_c (components without a positive effect weigh 0; NaN if none has one).

    Args:
        E_norm: (..., C, K) normalised effects (:func:`normalised_effects`).
    Returns:
        A float for a (C, K) input, else an array of the leading shape.
    Raises:
        ValueError: for fewer than 2 tasks.
    """
    E = np.clip(np.asarray(E_norm, dtype=np.float64), 0, None)
    K = E.shape[-1]
    if K < 2:
        raise ValueError(f"specialization needs at least 2 tasks, got {K}")
    w = E.sum(-1)  # (..., C)
    with np.errstate(invalid="ignore", divide="ignore"):
        P = E / w[..., None]
        H = -np.where(P > 0, P * np.log(np.where(P > 0, P, 1.0)), 0.0).sum(-1)
        spec = np.where(w > 0, 1 - H / math.log(K), 0.0)
        total = w.sum(-1)
        score = np.where(total > 0, (w * spec).sum(-1) / np.where(total > 0, total, 1.0), np.nan)
    return float(score) if score.ndim == 0 else score


def score_v2(delta: np.ndarray, base: np.ndarray, membership: np.ndarray) -> float:
    """score_v2 from per-position losses: delta (C, N) = ablated − unablated loss, base (N,) unablated loss
    (nats), membership (N, K) bool (:class:`PositionLosses`); see :func:`weighted_specialization`."""
    M = np.asarray(membership, dtype=np.float64)
    n = M.sum(0)
    return weighted_specialization(normalised_effects((delta @ M) / n, (base @ M) / n))


def permutation_null(
    delta: np.ndarray,
    base: np.ndarray,
    membership: np.ndarray,
    n_perm: int,
    rng: np.random.Generator,
    chunk: int = 64,
) -> np.ndarray:
    """score_v2 with the task labels of the N positions shuffled ``n_perm`` times.

    Each draw permutes the rows of ``membership`` (position n gets the task labels of position π(n)), which
    keeps every task's size and the tasks' overlaps, and recomputes effects, baselines and the score from
    the same per-position losses (no forward pass).

    Args:
        delta: (C, N) ablated − unablated loss (nats); base: (N,) unablated loss (nats).
        membership: (N, K) bool.
        n_perm: draws (0: an empty array).
        rng: the generator (the permutations depend on it alone).
        chunk: draws evaluated together.
    Returns:
        (n_perm,) float64 null scores (NaN where no component has a positive effect).
    """
    M = np.asarray(membership, dtype=np.float64)
    N = M.shape[0]
    n = M.sum(0)
    out = []
    for s in range(0, n_perm, chunk):
        P = min(chunk, n_perm - s)
        Mp = M[np.stack([rng.permutation(N) for _ in range(P)])]  # (P, N, K)
        E = (delta @ Mp) / n  # (P, C, K)
        out.append(weighted_specialization(normalised_effects(E, (base @ Mp) / n)))
    return np.concatenate(out) if out else np.zeros(0)


@dataclass
class ModularityV2:
    """One v2 measurement (:func:`modularity_v2`).

    Attributes:
        score, score_heads, score_mlp: score_v2 over all components, the heads, the MLP groups.
        null: (n_perm,) permutation-null scores.
        components: the C components (heads, then the non-empty MLP groups).
        effects: (C, K) E[c, t] in nats/token on the evaluation windows.
        baseline: (K,) unablated task losses (nats/token) on the evaluation windows.
        groups: (L, d_mlp) group id of each MLP unit (K = ``rest``).
        tasks: the K task names.
        n_windows, n_fit_windows: evaluation and attribution windows.
        attribution: the attribution mode.
    """

    score: float
    score_heads: float
    score_mlp: float
    null: np.ndarray
    components: list[Component]
    effects: np.ndarray
    baseline: np.ndarray
    groups: np.ndarray
    tasks: list[str]
    n_windows: int
    n_fit_windows: int
    attribution: str = "position"

    @property
    def effects_norm(self) -> np.ndarray:
        """(C, K) E_norm = E / baseline (relative loss increase)."""
        return normalised_effects(self.effects, self.baseline)

    def summary(self) -> dict[str, float | int | str]:
        """The row of ``probes/modularity_v2.parquet`` (without ``step``): score_v2, score_v2_heads,
        score_v2_mlp, null_mean, null_sd, null_lo / null_hi (2.5 / 97.5% quantiles), excess (score − null
        mean), p_perm = (1 + #{null >= score}) / (1 + n_perm), n_perm, n_components, n_mlp_groups, n_tasks,
        n_windows, n_fit_windows, attribution; NaN where undefined (no permutations, or no positive effect)."""
        null = self.null[np.isfinite(self.null)]
        ok = len(null) > 0 and math.isfinite(self.score)
        mean = float(null.mean()) if len(null) else math.nan
        return {
            "score_v2": self.score,
            "score_v2_heads": self.score_heads,
            "score_v2_mlp": self.score_mlp,
            "null_mean": mean,
            "null_sd": float(null.std(ddof=1)) if len(null) > 1 else math.nan,
            "null_lo": float(np.quantile(null, 0.025)) if len(null) else math.nan,
            "null_hi": float(np.quantile(null, 0.975)) if len(null) else math.nan,
            "excess": self.score - mean if ok else math.nan,
            "p_perm": float((1 + (null >= self.score).sum()) / (1 + len(null))) if ok else math.nan,
            "n_perm": int(len(self.null)),
            "n_components": len(self.components),
            "n_mlp_groups": sum(c.kind == "mlp" for c in self.components),
            "n_tasks": len(self.tasks),
            "n_windows": self.n_windows,
            "n_fit_windows": self.n_fit_windows,
            "attribution": self.attribution,
        }


V2_COLUMNS = [
    "step",
    "score_v2",
    "score_v2_heads",
    "score_v2_mlp",
    "null_mean",
    "null_sd",
    "null_lo",
    "null_hi",
    "excess",
    "p_perm",
    "n_perm",
    "n_components",
    "n_mlp_groups",
    "n_tasks",
    "n_windows",
    "n_fit_windows",
    "attribution",
]


def v2_record(step: int, result: ModularityV2) -> pd.DataFrame:
    """One row of ``probes/modularity_v2.parquet`` (:data:`V2_COLUMNS`)."""
    return pd.DataFrame([{"step": int(step), **result.summary()}], columns=V2_COLUMNS)


def _v2_from_sweep(
    sweep: PositionLosses,
    rows: list[int],
    groups: np.ndarray,
    n_perm: int,
    seed: int,
    n_windows: int,
    n_fit: int,
    mode: str,
) -> ModularityV2:
    comps = [sweep.components[i] for i in rows]
    delta, base, M = sweep.delta[rows], sweep.base, sweep.membership
    kinds = np.array([c.kind for c in comps])
    null = permutation_null(delta, base, M, n_perm, np.random.default_rng([int(seed), 2301]))
    return ModularityV2(
        score=score_v2(delta, base, M),
        score_heads=score_v2(delta[kinds == "head"], base, M),
        score_mlp=score_v2(delta[kinds == "mlp"], base, M),
        null=null,
        components=comps,
        effects=sweep.effects(rows),
        baseline=sweep.baseline(),
        groups=groups,
        tasks=list(sweep.tasks),
        n_windows=n_windows,
        n_fit_windows=n_fit,
        attribution=mode,
    )


def measure_modularity(
    model,
    input_ids: torch.Tensor,
    targets: torch.Tensor,
    task_masks: dict[str, torch.Tensor],
    mlp_groups: int | None,
    fit: tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]] | None = None,
    n_perm: int = 1000,
    seed: int = 0,
    attribution: str = "position",
    max_rows: int = 128,
) -> tuple[tuple[list[Component], np.ndarray, dict[str, float]] | None, ModularityV2 | None]:
    """v1 and v2 from one ablation sweep (the heads' variants are shared).

    Args:
        model: a :class:`densitylab.model.GPT` in eval mode.
        input_ids, targets, task_masks: the evaluation windows (B, T), their targets (B, T; ``-100`` = none)
            and tasks (name -> (B, T) bool).
        mlp_groups: v1's contiguous groups per MLP (None: no v1).
        fit: ``(input_ids, targets, task_masks)`` of the attribution windows, disjoint from the evaluation
            windows (None: no v2); tasks missing there get no unit.
        n_perm: permutation-null draws; seed: their generator's seed (the same draws at every call).
        attribution: :func:`mlp_attribution` mode.
        max_rows: rows per batched forward.
    Returns:
        ``(v1, v2)``: v1 = ``(components, E, baseline)`` as :func:`ablation_effects` returns it, v2 a
        :class:`ModularityV2`; None for the one not asked for.
    Raises:
        ValueError: if a task has no position with a target in the evaluation windows, d_mlp is not divisible
            by ``mlp_groups``, fewer than 2 tasks are given for v2, or ``attribution`` is unknown.
    """
    cfg = model.config
    variants: list[tuple[Component, torch.Tensor]] = []
    v1_rows: list[int] = []
    if mlp_groups is not None:
        variants = block_variants(cfg.n_layer, cfg.n_head, cfg.d_mlp, mlp_groups)
        v1_rows = list(range(len(variants)))
    groups = None
    if fit is not None:
        if len(task_masks) < 2:
            raise ValueError(f"modularity v2 needs at least 2 tasks, got {sorted(task_masks)}")
        fx, fy, fmasks = fit
        fm = {k: fmasks.get(k, torch.zeros_like(fy, dtype=torch.bool)) for k in task_masks}
        a, b = mlp_attribution(model, fx, fy, fm, attribution)
        groups = attribution_groups(a, b)
        known = {(c.kind, c.layer, c.index, c.label): i for i, (c, _) in enumerate(variants)}
        v2_rows = []
        for c, m in group_variants(groups, list(task_masks), cfg.n_head):
            i = known.get((c.kind, c.layer, c.index, c.label))
            if i is None:
                i = len(variants)
                variants.append((c, m))
            v2_rows.append(i)
    sweep = ablation_sweep(model, input_ids, targets, task_masks, variants, max_rows)
    v1 = None
    if mlp_groups is not None:
        E = sweep.effects(v1_rows)
        v1 = ([sweep.components[i] for i in v1_rows], E, dict(zip(sweep.tasks, sweep.baseline().tolist())))
    v2 = None
    if groups is not None:
        n_eval, n_fit = int(input_ids.shape[0]), int(fit[0].shape[0])
        v2 = _v2_from_sweep(sweep, v2_rows, groups, n_perm, seed, n_eval, n_fit, attribution)
    return v1, v2


def modularity_v2(
    model,
    input_ids: torch.Tensor,
    targets: torch.Tensor,
    task_masks: dict[str, torch.Tensor],
    fit: tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]],
    n_perm: int = 1000,
    seed: int = 0,
    attribution: str = "position",
    max_rows: int = 128,
) -> ModularityV2:
    """v2 alone (:func:`measure_modularity` without v1): attribution groups fitted on ``fit``, validated by
    mean-ablation on the evaluation windows, normalised, effect-weighted, against the permutation null.

    Raises:
        ValueError: as :func:`measure_modularity`.
    """
    return measure_modularity(model, input_ids, targets, task_masks, None, fit, n_perm, seed, attribution, max_rows)[1]
