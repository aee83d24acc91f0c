"""Activation density by familiarity (design §5). Pure measurements: tensors in, records out.

Per layer ℓ and token position, with h the MLP post-activation (``blocks.ℓ.mlp.hook_post``, d_mlp
units) and r the residual stream (``blocks.ℓ.hook_resid_post``, d units):

- ``active_frac`` = fraction of MLP units with pre-activation > 0 (for ReLU: the nonzero fraction
  of h). Li et al., "The Lazy Neuron Phenomenon", arXiv:2210.06313.
- ``hoyer`` = (√n − ‖h‖₁/‖h‖₂) / (√n − 1) (Hoyer 2004): 1 for a one-hot h, 0 for a flat one; a
  density reading is 1 − hoyer. An all-zero h counts as 1.
- ``top5_energy`` = Σ of the largest 5% of r_i² / Σ r_i² (share of the residual energy in its top 5%
  coordinates), and ``eff_rank`` = exp(−Σ p_i ln p_i) / d with p_i = r_i² / ‖r‖² (normalised
  entropy-effective dimension, in (0, 1]). Jin et al., "Farther the Shift, Sparser the
  Representation", arXiv:2603.03415.

Familiarity of a position comes from the exposure ledger in three views: ``token`` (exposures of its
input token), ``entity`` (mentions of the entity it belongs to; positions inside mentions only) and
``sequence`` (times its window was trained). Buckets are ``floor(log2(1 + count))``; statistics use
windows as the unit of replication (:mod:`densitylab.probes.stats`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from densitylab.probes.stats import bucketize, cluster_ols_slope, diff_ci

METRICS = ("active_frac", "hoyer", "top5_energy", "eff_rank")
VIEWS = ("token", "entity", "sequence")
NATURAL_SETS = ("seen", "heldout", "unfamiliar_entities")  # pooled for the slope; shuffled / random are controls


# ----------------------------------------------------------------------------- metrics
def active_frac(pre: torch.Tensor) -> torch.Tensor:
    """Fraction of units with pre-activation > 0: (..., n) -> (...). Li et al. arXiv:2210.06313."""
    return (pre > 0).float().mean(-1)


def hoyer(h: torch.Tensor) -> torch.Tensor:
    """Hoyer sparsity (√n − ‖h‖₁/‖h‖₂)/(√n − 1) of the last dimension: (..., n) -> (...) in [0, 1];
    1 = one-hot, 0 = all entries equal in magnitude; an all-zero vector gives 1.

    Raises:
        ValueError: if n < 2.
    """
    n = h.shape[-1]
    if n < 2:
        raise ValueError(f"hoyer needs at least 2 units, got {n}")
    h = h.float()
    l1, l2 = h.abs().sum(-1), h.norm(dim=-1)
    ratio = torch.where(l2 > 0, l1 / l2.clamp_min(torch.finfo(h.dtype).tiny), torch.ones_like(l1))
    return ((math.sqrt(n) - ratio) / (math.sqrt(n) - 1)).clamp(0.0, 1.0)


def top_energy(r: torch.Tensor, frac: float = 0.05) -> torch.Tensor:
    """Share of Σ r_i² held by the ceil(frac·d) largest r_i²: (..., d) -> (...) in [k/d, 1]
    (0 for a zero vector). Jin et al. arXiv:2603.03415."""
    e = r.float().square()
    k = max(1, math.ceil(frac * r.shape[-1]))
    total = e.sum(-1)
    top = e.topk(k, dim=-1).values.sum(-1)
    return torch.where(total > 0, top / total.clamp_min(torch.finfo(e.dtype).tiny), torch.zeros_like(total))


def effective_rank(r: torch.Tensor) -> torch.Tensor:
    """exp(−Σ p_i ln p_i)/d with p_i = r_i²/‖r‖²: (..., d) -> (...) in [1/d, 1] (0 for a zero vector).
    Roy & Vetterli's effective rank applied to the energy distribution of one vector; Jin et al.
    arXiv:2603.03415."""
    e = r.float().square()
    total = e.sum(-1, keepdim=True)
    p = e / total.clamp_min(torch.finfo(e.dtype).tiny)
    ent = -(torch.where(p > 0, p * p.log(), torch.zeros_like(p))).sum(-1)
    return torch.where(total.squeeze(-1) > 0, ent.exp() / r.shape[-1], torch.zeros_like(ent))


# ----------------------------------------------------------------------------- probe sets
@dataclass
class ProbeSet:
    """A fixed set of probe windows.

    Attributes:
        name: ``seen``, ``heldout``, ``unfamiliar_entities``, ``shuffled`` or ``random``.
        input_ids: (N, T) int64 token ids.
        sample_ids: (N,) int64 training window ids, -1 for windows that are not training windows.
        spans: entity mentions ``(row, start, end, entity)``, int64 tensors of shape (M,), or None.
        window_ids: (N,) int64 window ids inside the split the rows come from (None for generated
            sets), to look up that split's other spans (e.g. attribute values).
    """

    name: str
    input_ids: torch.Tensor
    sample_ids: torch.Tensor
    spans: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    window_ids: torch.Tensor | None = None


@torch.no_grad()
def measure_density(model, input_ids: torch.Tensor, batch_size: int = 16) -> dict[str, np.ndarray]:
    """Per-position density metrics of every layer, streaming over mini-batches (activations of one
    mini-batch at a time; only the (N, T) metric values are kept).

    Args:
        model: a :class:`densitylab.model.GPT` (put it in eval mode first).
        input_ids: (N, T) token ids.
    Returns:
        ``{"L{i}/{metric}": (N, T) float32 array}`` for every layer i and metric in :data:`METRICS`.
    """
    n_layer = model.config.n_layer
    device = next(model.parameters()).device
    out = {f"L{i}/{m}": [] for i in range(n_layer) for m in METRICS}
    current: dict[str, torch.Tensor] = {}

    def hook(layer: int, kind: str):
        def fn(module, inp, act):
            if kind == "pre":
                current[f"L{layer}/active_frac"] = active_frac(act)
            elif kind == "post":
                current[f"L{layer}/hoyer"] = hoyer(act)
            else:
                current[f"L{layer}/top5_energy"] = top_energy(act)
                current[f"L{layer}/eff_rank"] = effective_rank(act)

        return fn

    hooks = []
    for i in range(n_layer):
        hooks += [
            (f"blocks.{i}.mlp.hook_pre", hook(i, "pre")),
            (f"blocks.{i}.mlp.hook_post", hook(i, "post")),
            (f"blocks.{i}.hook_resid_post", hook(i, "resid")),
        ]
    with model.hooks(hooks):
        for s in range(0, len(input_ids), batch_size):
            current.clear()
            model(input_ids[s : s + batch_size].to(device), stop_at_layer=n_layer)  # no lm_head: hooks only
            for k, v in current.items():
                out[k].append(v.float().cpu())
    return {k: torch.cat(v).numpy() for k, v in out.items()}


# ----------------------------------------------------------------------------- records
def _positions(name: str, metrics: dict[str, np.ndarray], familiarity: dict[str, np.ndarray]) -> pd.DataFrame:
    """Long-ish table: one row per (view, position) with the bucket and every metric column."""
    N, T = next(iter(metrics.values())).shape
    rows = np.repeat(np.arange(N), T)
    cols = {k: v.reshape(-1) for k, v in metrics.items()}
    frames = [pd.DataFrame({"probe_set": name, "view": "all", "bucket": -1, "row": rows, "count": 0, **cols})]
    for view in VIEWS:
        counts = familiarity[view].reshape(-1)
        keep = counts >= 0  # entity view: positions inside mentions only
        if not keep.any():
            continue
        frames.append(
            pd.DataFrame(
                {
                    "probe_set": name,
                    "view": view,
                    "bucket": bucketize(counts[keep]),
                    "row": rows[keep],
                    "count": counts[keep],
                    **{k: v[keep] for k, v in cols.items()},
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def _grouped_ci(pos: pd.DataFrame, metric_cols: list[str], level: float = 0.95) -> pd.DataFrame:
    """Cluster-robust mean and CI per (probe_set, view, bucket) for every metric column (windows =
    clusters), vectorised over groups and metrics (same estimator as :func:`cluster_mean_ci`)."""
    from scipy import stats

    keys = ["probe_set", "view", "bucket"]
    # one row per (group, window): sums of each metric and the number of positions
    gw = pos.groupby(keys + ["row"], sort=False)
    sums = gw[metric_cols].sum()
    n_w = gw.size().to_numpy().astype(np.float64)
    groups = sums.index.droplevel("row")
    gid, uniq = pd.factorize(groups)
    n_g = np.bincount(gid, weights=n_w)
    k_g = np.bincount(gid).astype(np.float64)
    S = sums.to_numpy()  # (rows, metrics)
    S_g = np.stack([np.bincount(gid, weights=S[:, j]) for j in range(S.shape[1])], axis=1)
    mean = S_g / n_g[:, None]
    resid = S - mean[gid] * n_w[:, None]
    R_g = np.stack([np.bincount(gid, weights=resid[:, j] ** 2) for j in range(S.shape[1])], axis=1)
    se = np.sqrt(k_g[:, None] / np.maximum(k_g - 1, 1)[:, None] * R_g) / n_g[:, None]
    t = stats.t.ppf(0.5 + level / 2, np.maximum(k_g - 1, 1))
    half = np.where((k_g >= 2)[:, None], t[:, None] * se, np.inf)
    idx = pd.MultiIndex.from_tuples(list(uniq), names=keys).to_frame(index=False)
    records = []
    for j, m in enumerate(metric_cols):
        layer, metric = m.split("/")
        records.append(
            idx.assign(
                layer=int(layer[1:]),
                metric=metric,
                value=mean[:, j],
                ci_low=mean[:, j] - half[:, j],
                ci_high=mean[:, j] + half[:, j],
                n=n_g.astype(np.int64),
                n_windows=k_g.astype(np.int64),
            )
        )
    return pd.concat(records, ignore_index=True)


def density_records(
    step: int,
    metrics: dict[str, dict[str, np.ndarray]],
    familiarity: dict[str, dict[str, np.ndarray]],
    primary_view: str = "token",
    level: float = 0.95,
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Aggregate per-position metrics into the rows of ``probes/density.parquet`` and headline numbers.

    Args:
        step: training step of this probe call.
        metrics: probe set name -> :func:`measure_density` output.
        familiarity: probe set name -> ``{"token", "entity", "sequence"}`` (N, T) int64 counts
            (entity: -1 outside mentions), as from ``ExposureLedger.familiarity``.
        primary_view: the view of the headline ``slope`` and ``gap`` (``entity`` for data with
            entities, else ``token``).
    Returns:
        ``(rows, headline)``. ``rows`` has columns step, layer, probe_set, view, bucket, metric,
        value, ci_low, ci_high, n (positions), n_windows; view ``all`` / bucket -1 is the whole set.
        Headline rows (also in ``rows``): metric ``slope`` (OLS slope of active_frac on
        log2(1 + count) over the pooled natural sets, per view; probe_set ``pooled``) and ``gap``
        (active_frac of ``seen`` in its most familiar bucket of the primary view that spans at least two
        windows, minus that of the unfamiliar
        reference: ``unfamiliar_entities`` inside mentions when present, else ``random``).
        ``headline`` maps ``L{i}/slope``, ``L{i}/slope_ci_low``, ... and ``L{i}/gap`` ... to floats.
    """
    metric_cols = list(next(iter(metrics.values())).keys())
    n_layer = len(metric_cols) // len(METRICS)
    pos = pd.concat([_positions(name, metrics[name], familiarity[name]) for name in metrics], ignore_index=True)
    rows = _grouped_ci(pos, metric_cols, level)
    headline: dict[str, float] = {}
    extra = []
    pooled = pos[pos["probe_set"].isin(NATURAL_SETS)]
    for layer in range(n_layer):
        col = f"L{layer}/active_frac"
        for view in VIEWS:
            sub = pooled[pooled["view"] == view]
            if sub.empty:
                continue
            s, lo, hi, n, k = cluster_ols_slope(
                np.log2(1 + sub["count"].to_numpy()),
                sub[col].to_numpy(),
                sub["probe_set"] + ":" + sub["row"].astype(str),
                level,
            )
            extra.append(
                dict(
                    layer=layer,
                    probe_set="pooled",
                    view=view,
                    bucket=-1,
                    metric="slope",
                    value=s,
                    ci_low=lo,
                    ci_high=hi,
                    n=n,
                    n_windows=k,
                )
            )
            if view == primary_view:
                headline.update({f"L{layer}/slope": s, f"L{layer}/slope_ci_low": lo, f"L{layer}/slope_ci_high": hi})
        # gap: seen at its most familiar bucket minus the unfamiliar reference
        af = rows[(rows["layer"] == layer) & (rows["metric"] == "active_frac")]
        seen = af[(af["probe_set"] == "seen") & (af["view"] == primary_view)]
        if "unfamiliar_entities" in metrics and (af["probe_set"] == "unfamiliar_entities").any():
            ref = af[(af["probe_set"] == "unfamiliar_entities") & (af["view"] == "entity") & (af["bucket"] == 0)]
            ref_name = "unfamiliar_entities"
        else:
            ref = af[(af["probe_set"] == "random") & (af["view"] == "all")]
            ref_name = "random"
        if len(seen) and len(ref):
            replicated = seen[seen["n_windows"] >= 2]  # the most familiar bucket that has a CI
            top = (replicated if len(replicated) else seen).sort_values("bucket").iloc[-1]
            r = ref.iloc[0]
            d, lo, hi = diff_ci(
                (top.value, top.ci_low, top.ci_high, int(top.n), int(top.n_windows)),
                (r.value, r.ci_low, r.ci_high, int(r.n), int(r.n_windows)),
                level,
            )
            extra.append(
                dict(
                    layer=layer,
                    probe_set=f"seen_top-{ref_name}",
                    view=primary_view,
                    bucket=int(top.bucket),
                    metric="gap",
                    value=d,
                    ci_low=lo,
                    ci_high=hi,
                    n=int(top.n + r.n),
                    n_windows=int(top.n_windows + r.n_windows),
                )
            )
            headline.update({f"L{layer}/gap": d, f"L{layer}/gap_ci_low": lo, f"L{layer}/gap_ci_high": hi})
    rows = pd.concat([rows, pd.DataFrame(extra)], ignore_index=True)
    rows.insert(0, "step", int(step))
    cols = ["step", "layer", "probe_set", "view", "bucket", "metric", "value", "ci_low", "ci_high", "n", "n_windows"]
    rows = rows[cols].astype({"layer": "int64", "bucket": "int64", "n": "int64", "n_windows": "int64"})
    return rows.sort_values(["layer", "probe_set", "view", "bucket", "metric"], ignore_index=True), headline
