"""Activation density by familiarity (design §3.3). Pure measurements: tensors in, records out.

Per layer ℓ and token position, with h the MLP post-activation (``blocks.ℓ.mlp.hook_post``, d_mlp
units) and r the residual stream (``blocks.ℓ.hook_resid_post``, d units), before ``ln_f``:

- ``active_frac`` = fraction of MLP units with pre-activation > 0 (``blocks.ℓ.mlp.hook_pre``; for
  ReLU the nonzero fraction of h, for GELU the units on the positive branch, for SwiGLU the gate).
  Li et al., "The Lazy Neuron Phenomenon", arXiv:2210.06313.
- ``active_frac_live`` = the same count over the *live* units only (units that fire on at least one
  probed position of this probe call, all probe sets together): active_frac · d_mlp / n_live.
  Dead units: Voita et al. 2023, "Neurons in Large Language Models: Dead, N-gram, Positional".
- ``zero_frac`` = 1 where h is the all-zero vector, else 0 (its mean is the share of such positions).
- ``hoyer`` = (√n − ‖h‖₁/‖h‖₂) / (√n − 1) (Hoyer 2004): 1 for a one-hot h, 0 for a flat one; a
  density reading is 1 − hoyer. An all-zero h has no sparsity: NaN (counted by ``zero_frac``).
- ``top5_energy`` = Σ of the ⌈0.05·d⌉ largest r_i² / Σ r_i², and ``eff_rank`` = exp(−Σ p_i ln p_i) / d
  with p_i = r_i² / ‖r‖², at every position (in the spirit of Jin et al., "Farther the Shift, Sparser
  the Representation", arXiv:2603.03415).

Jin et al.'s own definition (their code: MingyuJ666/sparsityLLM, ``pretrain/pretrain.py``), on the
final hidden state **after** the final layer norm ``ln_f``, at selected positions (default: the last
position of each window), reported at layer ``n_layer - 1``:

- ``jin_top5_energy`` = Σ of the k = max(1, ⌊0.05·d⌋) largest h_i² / Σ h_i²;
- ``jin_eff_rank`` = exp(−Σ p_i ln p_i) / d with p_i = h_i² / ‖h‖².

Per probe set and layer (not per position): ``participation_ratio`` = (Σλ)² / Σλ² of the eigenvalues
λ of the d × d covariance of r over every probed position of the set, = tr(C)² / ‖C‖_F², in [1, d]
(rotation invariant; Gao et al. 2017, "A theory of multineuronal dimensionality, dynamics and
measurement"; Recanatesi et al. 2019/2022).

Per layer, from the same positions (no extra forward pass), the **units table** ``probes/units.parquet``
(:func:`unit_records`): each unit's firing rate (fraction of probed positions with pre-activation > 0),
``dead_frac`` (rate 0) and a histogram of the rates over :data:`FIRING_RATE_EDGES`.

Familiarity of a position comes from the exposure ledger in three views: ``token`` (exposures of its
input token), ``entity`` (mentions of the entity it belongs to; positions inside mentions only) and
``sequence`` (times its window was trained). Buckets are ``floor(log2(1 + count))``; statistics use
windows as the unit of replication (:mod:`densitylab.probes.stats`); NaN values (Hoyer of a zero
vector, Jin metrics off their positions) are left out of a group's mean and its ``n``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from densitylab.probes.stats import bucketize, cluster_ols_slope, diff_ci

# per layer and position, in probes/density.parquet
METRICS = ("active_frac", "active_frac_live", "zero_frac", "hoyer", "top5_energy", "eff_rank")
# measured per position by measure_density (active_frac_live is derived across sets by density_records)
POSITION_METRICS = ("active_frac", "zero_frac", "hoyer", "top5_energy", "eff_rank")
# the final hidden state after ln_f (layer n_layer - 1), at the selected positions only
FINAL_METRICS = ("jin_top5_energy", "jin_eff_rank")
# one value per probe set and layer (view "all", bucket -1, no CI)
SET_METRICS = ("participation_ratio",)
VIEWS = ("token", "entity", "sequence")
NATURAL_SETS = ("seen", "heldout", "unfamiliar_entities")  # pooled for the slope; shuffled / random are controls
# firing-rate histogram of probes/units.parquet: bin 0 is [0, 0] (dead), then (e_i, e_{i+1}]
FIRING_RATE_EDGES = (0.0, 0.001, 0.01, 0.05, 0.1, 0.2, 0.5, 0.9, 1.0)


# ----------------------------------------------------------------------------- metrics
def active_frac(pre: torch.Tensor) -> torch.Tensor:
    """Fraction of units with pre-activation > 0: (..., n) -> (...) in [0, 1].

    Li et al., "The Lazy Neuron Phenomenon", arXiv:2210.06313."""
    return (pre > 0).float().mean(-1)


def _hoyer_zero(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n = h.shape[-1]
    if n < 2:
        raise ValueError(f"hoyer needs at least 2 units, got {n}")
    h = h.float()
    # scale-free: divide by the largest |h_i| so tiny vectors do not underflow in h² (l2 = 0 while l1 > 0)
    h = h / h.abs().amax(-1, keepdim=True).clamp_min(torch.finfo(h.dtype).tiny)
    l1, l2 = h.abs().sum(-1), h.norm(dim=-1)
    zero = l1 == 0
    value = ((math.sqrt(n) - l1 / l2.clamp_min(torch.finfo(h.dtype).tiny)) / (math.sqrt(n) - 1)).clamp(0.0, 1.0)
    return torch.where(zero, torch.full_like(value, math.nan), value), zero.float()


def hoyer(h: torch.Tensor) -> torch.Tensor:
    """Hoyer sparsity (√n − ‖h‖₁/‖h‖₂)/(√n − 1) of the last dimension: (..., n) -> (...) in [0, 1];
    1 = one-hot, 0 = all entries equal in magnitude; an all-zero vector gives NaN (no sparsity to
    speak of; :func:`zero_frac` counts those). Hoyer, "Non-negative matrix factorization with
    sparseness constraints", JMLR 2004.

    Raises:
        ValueError: if n < 2.
    """
    return _hoyer_zero(h)[0]


def zero_frac(h: torch.Tensor) -> torch.Tensor:
    """1.0 where the last dimension is the all-zero vector, else 0.0: (..., n) -> (...) float32 (the
    positions whose :func:`hoyer` is NaN; their mean over positions is the ``zero_frac`` metric).

    Raises:
        ValueError: if n < 2 (as :func:`hoyer`).
    """
    return _hoyer_zero(h)[1]


def _top_k_energy(r: torch.Tensor, k: int) -> torch.Tensor:
    e = r.float().square()
    total = e.sum(-1)
    top = e.topk(min(k, r.shape[-1]), dim=-1).values.sum(-1)
    return torch.where(total > 0, top / total.clamp_min(torch.finfo(e.dtype).tiny), torch.zeros_like(total))


def top_energy(r: torch.Tensor, frac: float = 0.05) -> torch.Tensor:
    """Share of Σ r_i² held by the ceil(frac·d) largest r_i²: (..., d) -> (...) in [k/d, 1]
    (0 for a zero vector). The per-layer ``top5_energy`` (ceil, every position, before ``ln_f``),
    after Jin et al. arXiv:2603.03415; :func:`jin_top_energy` is their exact rule."""
    return _top_k_energy(r, max(1, math.ceil(frac * r.shape[-1])))


def jin_top_energy(h: torch.Tensor, frac: float = 0.05) -> torch.Tensor:
    """Jin et al.'s top-5% energy: Σ of the k = max(1, floor(frac·d)) largest h_i² / Σ h_i²:
    (..., d) -> (...) in [k/d, 1] (0 for a zero vector, as in their code). Jin et al., "Farther the
    Shift, Sparser the Representation", arXiv:2603.03415 (code: MingyuJ666/sparsityLLM)."""
    return _top_k_energy(h, max(1, int(frac * h.shape[-1])))


def effective_rank(r: torch.Tensor) -> torch.Tensor:
    """exp(−Σ p_i ln p_i)/d with p_i = r_i²/‖r‖²: (..., d) -> (...) in [1/d, 1] (0 for a zero vector).
    Roy & Vetterli's effective rank applied to the energy distribution of one vector; the
    normalised effective rank of Jin et al. arXiv:2603.03415 (``jin_eff_rank`` on the final hidden
    state after ``ln_f``)."""
    e = r.float().square()
    total = e.sum(-1, keepdim=True)
    p = e / total.clamp_min(torch.finfo(e.dtype).tiny)
    ent = -(torch.where(p > 0, p * p.log(), torch.zeros_like(p))).sum(-1)
    return torch.where(total.squeeze(-1) > 0, ent.exp() / r.shape[-1], torch.zeros_like(ent))


def participation_ratio(cov: torch.Tensor | np.ndarray) -> float:
    """Participation ratio (Σλ)²/Σλ² of a symmetric (d, d) covariance (λ its eigenvalues), computed
    as tr(C)²/‖C‖_F² (no eigendecomposition; invariant to scale and rotation): in [1, d], 1 when one
    direction holds all the variance, d when it is isotropic; NaN for a zero matrix. Gao et al.
    2017, "A theory of multineuronal dimensionality, dynamics and measurement"; Recanatesi et al.
    2019/2022."""
    c = np.asarray(cov.detach().cpu().double() if isinstance(cov, torch.Tensor) else cov, dtype=np.float64)
    fro2 = float(np.square(c).sum())
    return float(np.trace(c) ** 2 / fro2) if fro2 > 0 else math.nan


class _Moments:
    """Streaming mean and centred second moment M2 = Σ (x − x̄)(x − x̄)ᵀ of (n, d) rows (Chan et al.'s
    pairwise update; each batch centred on its own mean on the device, combined in float64 on CPU)."""

    def __init__(self) -> None:
        self.n, self.mean, self.m2 = 0, None, None

    def update(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).double()  # float64: no TF32 matmul on a GPU
        nb = x.shape[0]
        if nb == 0:
            return
        mb = x.mean(0)
        xc = x - mb
        m2b = (xc.T @ xc).cpu()
        mb = mb.double().cpu()
        if self.n == 0:
            self.n, self.mean, self.m2 = nb, mb, m2b
            return
        n = self.n + nb
        delta = mb - self.mean
        self.m2 = self.m2 + m2b + torch.outer(delta, delta) * (self.n * nb / n)
        self.mean = self.mean + delta * (nb / n)
        self.n = n

    def cov(self) -> torch.Tensor:
        """(d, d) float64 sample covariance (n − 1 in the denominator)."""
        return self.m2 / max(self.n - 1, 1)


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


@dataclass
class DensityMeasurement:
    """What one forward pass over a probe set yields (:func:`measure_density`).

    Attributes:
        positions: ``"L{i}/{metric}"`` -> (N, T) float32 per-position values for every layer i and metric in
            :data:`POSITION_METRICS`, plus ``"L{n_layer-1}/{metric}"`` for :data:`FINAL_METRICS` (NaN off
            the selected positions).
        fire_counts: (n_layer, d_mlp) int64: on how many of the N·T positions each MLP unit's
            pre-activation was > 0.
        n_positions: N·T, the positions probed.
        n_windows: N.
        set_metrics: ``"L{i}/participation_ratio"`` -> float (one value for the whole set).
    """

    positions: dict[str, np.ndarray]
    fire_counts: np.ndarray
    n_positions: int
    n_windows: int
    set_metrics: dict[str, float] = field(default_factory=dict)


@torch.no_grad()
def measure_density(
    model, input_ids: torch.Tensor, batch_size: int = 16, final_positions: torch.Tensor | None = None
) -> DensityMeasurement:
    """Every density metric of every layer in one streaming pass over mini-batches (activations of one
    mini-batch at a time; only the (N, T) metric values, the (n_layer, d_mlp) firing counts and one
    (d, d) covariance per layer are kept).

    Args:
        model: a :class:`densitylab.model.GPT` (put it in eval mode first).
        input_ids: (N, T) token ids.
        batch_size: windows per forward pass.
        final_positions: (N, T) bool, the positions where the Jin et al. metrics are read on the final
            hidden state after ``ln_f``; default: the last position of each window.
    Returns:
        A :class:`DensityMeasurement`.
    """
    n_layer = model.config.n_layer
    device = next(model.parameters()).device
    N, T = input_ids.shape
    if final_positions is None:
        final_positions = torch.zeros(N, T, dtype=torch.bool)
        final_positions[:, -1] = True
    last = n_layer - 1
    out = {f"L{i}/{m}": [] for i in range(n_layer) for m in POSITION_METRICS}
    out.update({f"L{last}/{m}": [] for m in FINAL_METRICS})
    fires: list[torch.Tensor | int] = [0] * n_layer
    moments = [_Moments() for _ in range(n_layer)]
    current: dict[str, torch.Tensor] = {}

    def hook(layer: int, kind: str):
        def fn(module, inp, act):
            if kind == "pre":
                fired = (act > 0).float()
                current[f"L{layer}/active_frac"] = fired.mean(-1)
                fires[layer] = fires[layer] + fired.sum((0, 1)).long()  # exact below 2**24 positions per batch
            elif kind == "post":
                current[f"L{layer}/hoyer"], current[f"L{layer}/zero_frac"] = _hoyer_zero(act)
            else:
                current[f"L{layer}/top5_energy"] = top_energy(act)
                current[f"L{layer}/eff_rank"] = effective_rank(act)
                moments[layer].update(act)

        return fn

    hooks = []
    for i in range(n_layer):
        hooks += [
            (f"blocks.{i}.mlp.hook_pre", hook(i, "pre")),
            (f"blocks.{i}.mlp.hook_post", hook(i, "post")),
            (f"blocks.{i}.hook_resid_post", hook(i, "resid")),
        ]
    ln_f = model.transformer.ln_f
    with model.hooks(hooks):
        for s in range(0, N, batch_size):
            current.clear()
            ids = input_ids[s : s + batch_size].to(device)
            resid = model(ids, stop_at_layer=n_layer)  # no lm_head: hooks and the final residual only
            mask = final_positions[s : s + batch_size].to(device)
            h = ln_f(resid[mask])  # (M, d): the final hidden state after ln_f at the selected positions
            for m, fn in (("jin_top5_energy", jin_top_energy), ("jin_eff_rank", effective_rank)):
                v = torch.full(mask.shape, math.nan, device=device)
                v[mask] = fn(h)
                current[f"L{last}/{m}"] = v
            for k, v in current.items():
                out[k].append(v.float().cpu())
    return DensityMeasurement(
        positions={k: torch.cat(v).numpy() for k, v in out.items()},
        fire_counts=torch.stack([torch.as_tensor(f) for f in fires]).cpu().numpy().astype(np.int64),
        n_positions=N * T,
        n_windows=N,
        set_metrics={f"L{i}/participation_ratio": participation_ratio(mo.cov()) for i, mo in enumerate(moments)},
    )


def live_units(measurements: Mapping[str, DensityMeasurement]) -> np.ndarray:
    """(n_layer, d_mlp) bool: units with pre-activation > 0 on at least one position of any probe set."""
    return np.sum([m.fire_counts for m in measurements.values()], axis=0) > 0


# ----------------------------------------------------------------------------- units table
def firing_histogram(rate: np.ndarray) -> np.ndarray:
    """Counts of firing rates (fractions in [0, 1]) per bin of :data:`FIRING_RATE_EDGES`: bin 0 is
    exactly 0 (dead units), bin j ≥ 1 is (e_{j−1}, e_j]. Returns (len(FIRING_RATE_EDGES),) int64."""
    edges = np.asarray(FIRING_RATE_EDGES)
    idx = np.where(rate > 0, np.searchsorted(edges, rate, side="left"), 0)
    return np.bincount(np.clip(idx, 0, len(edges) - 1), minlength=len(edges)).astype(np.int64)


UNIT_COLUMNS = [
    "step",
    "layer",
    "probe_set",
    "bin_low",
    "bin_high",
    "count",
    "n_units",
    "n_positions",
    "n_dead",
    "dead_frac",
]


def unit_records(step: int, measurements: Mapping[str, DensityMeasurement]) -> pd.DataFrame:
    """Rows of ``probes/units.parquet``: dead units and the firing-rate histogram per layer.

    A unit's firing rate is the fraction of probed positions on which its pre-activation is > 0; it
    is **dead** when that is 0 on every probed position (Voita et al. 2023, "Neurons in Large Language
    Models: Dead, N-gram, Positional"; Li et al. arXiv:2210.06313 for the activation criterion).

    Args:
        step: training step of this probe call.
        measurements: probe set name -> :func:`measure_density` output.
    Returns:
        One row per (layer, probe_set, bin) with columns :data:`UNIT_COLUMNS`: ``probe_set`` ``all`` pools
        every set's positions (the dead / live split of ``active_frac_live`` and the logged
        ``dead_frac``), the others are each set alone; ``bin_low``/``bin_high`` the bin of
        :data:`FIRING_RATE_EDGES` (the first bin is [0, 0]); ``count`` units in that bin; ``n_units``
        (d_mlp), ``n_positions``, ``n_dead`` and ``dead_frac`` = n_dead / n_units repeated on every bin
        row of the (layer, probe_set).
    """
    edges = np.asarray(FIRING_RATE_EDGES)
    low, high = np.concatenate([[0.0], edges[:-1]]), edges
    groups = {
        "all": (
            np.sum([m.fire_counts for m in measurements.values()], axis=0),
            sum(m.n_positions for m in measurements.values()),
        )
    }
    groups.update({name: (m.fire_counts, m.n_positions) for name, m in measurements.items()})
    frames = []
    for name, (counts, n_pos) in groups.items():
        for layer, c in enumerate(counts):
            rate = c / max(n_pos, 1)
            n_dead = int((c == 0).sum())
            frames.append(
                pd.DataFrame(
                    {
                        "layer": layer,
                        "probe_set": name,
                        "bin_low": low,
                        "bin_high": high,
                        "count": firing_histogram(rate),
                        "n_units": len(c),
                        "n_positions": int(n_pos),
                        "n_dead": n_dead,
                        "dead_frac": n_dead / len(c),
                    }
                )
            )
    rows = pd.concat(frames, ignore_index=True)
    rows.insert(0, "step", int(step))
    return rows[UNIT_COLUMNS].astype(
        {"layer": "int64", "count": "int64", "n_units": "int64", "n_positions": "int64", "n_dead": "int64"}
    )


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
    clusters), vectorised over groups and metrics (same estimator as :func:`cluster_mean_ci`). NaN values
    are left out: each metric's ``n`` counts its finite values, ``n_windows`` the windows holding one;
    a (group, metric) without any finite value gives no row."""
    from scipy import stats

    keys = ["probe_set", "view", "bucket"]
    # one row per (group, window): sums of each metric and the number of finite values
    gw_id = pos.groupby(keys + ["row"], sort=False).ngroup().to_numpy()
    n_gw = int(gw_id.max()) + 1
    V = pos[metric_cols].to_numpy(np.float64)
    F = np.isfinite(V)
    V = np.where(F, V, 0.0)
    S = np.stack([np.bincount(gw_id, weights=V[:, j], minlength=n_gw) for j in range(V.shape[1])], axis=1)
    n_w = np.stack([np.bincount(gw_id, weights=F[:, j], minlength=n_gw) for j in range(V.shape[1])], axis=1)
    _, first = np.unique(gw_id, return_index=True)
    gid, uniq = pd.factorize(pd.MultiIndex.from_frame(pos[keys].iloc[first]))
    G = len(uniq)

    def per_group(x):
        return np.stack([np.bincount(gid, weights=x[:, j], minlength=G) for j in range(x.shape[1])], axis=1)

    n_g, k_g, S_g = per_group(n_w), per_group((n_w > 0).astype(np.float64)), per_group(S)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = S_g / n_g
        resid = np.where(n_w > 0, S - np.nan_to_num(mean)[gid] * n_w, 0.0)
        R_g = per_group(resid**2)
        se = np.sqrt(k_g / np.maximum(k_g - 1, 1) * R_g) / n_g
    t = stats.t.ppf(0.5 + level / 2, np.maximum(k_g - 1, 1))
    half = np.where(k_g >= 2, t * se, np.inf)
    idx = uniq.to_frame(index=False, name=keys)
    records = []
    for j, m in enumerate(metric_cols):
        layer, metric = m.split("/")
        keep = n_g[:, j] > 0
        records.append(
            idx[keep].assign(
                layer=int(layer[1:]),
                metric=metric,
                value=mean[keep, j],
                ci_low=mean[keep, j] - half[keep, j],
                ci_high=mean[keep, j] + half[keep, j],
                n=n_g[keep, j].astype(np.int64),
                n_windows=k_g[keep, j].astype(np.int64),
            )
        )
    return pd.concat(records, ignore_index=True)


def density_records(
    step: int,
    metrics: Mapping[str, DensityMeasurement],
    familiarity: Mapping[str, Mapping[str, np.ndarray]],
    primary_view: str = "token",
    level: float = 0.95,
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Aggregate per-position metrics into the rows of ``probes/density.parquet`` and headline numbers.

    Args:
        step: training step of this probe call.
        metrics: probe set name -> :func:`measure_density` output, for every probe set of the call (the
            live units of ``active_frac_live`` are those firing somewhere in any of them).
        familiarity: probe set name -> ``{"token", "entity", "sequence"}`` (N, T) int64 counts
            (entity: -1 outside mentions), as from ``ExposureLedger.familiarity``.
        primary_view: the view of the headline ``slope`` and ``gap`` (``entity`` for data with
            entities, else ``token``).
    Returns:
        ``(rows, headline)``. ``rows`` has columns step, layer, probe_set, view, bucket, metric,
        value, ci_low, ci_high, n (finite values: positions), n_windows; view ``all`` / bucket -1 is the
        whole set. Metrics: :data:`METRICS` per layer, :data:`FINAL_METRICS` at layer n_layer − 1 (n =
        the selected positions), :data:`SET_METRICS` (view ``all`` only, CI NaN: one value per set).
        Headline rows (also in ``rows``): metric ``slope`` (OLS slope of active_frac on
        log2(1 + count) over the pooled natural sets, per view; probe_set ``pooled``) and ``gap``
        (active_frac of ``seen`` in its most familiar bucket of the primary view that spans at least two
        windows, minus that of the unfamiliar
        reference: ``unfamiliar_entities`` inside mentions when present, else ``random``).
        ``headline`` maps ``L{i}/slope``, ``L{i}/slope_ci_low``, ... and ``L{i}/gap`` ... to floats.
    """
    live = live_units(metrics)  # (n_layer, d_mlp)
    n_layer, d_mlp = live.shape
    n_live = live.sum(1)
    columns = {}
    for name, m in metrics.items():
        cols = dict(m.positions)
        for i in range(n_layer):
            af = cols[f"L{i}/active_frac"]
            scale = d_mlp / n_live[i] if n_live[i] else math.nan
            cols[f"L{i}/active_frac_live"] = (af * np.float32(scale)).astype(np.float32)
        columns[name] = cols
    metric_cols = list(columns[next(iter(columns))])
    pos = pd.concat([_positions(name, columns[name], familiarity[name]) for name in metrics], ignore_index=True)
    rows = _grouped_ci(pos, metric_cols, level)
    whole_set = [
        dict(
            layer=int(key.split("/")[0][1:]),
            probe_set=name,
            view="all",
            bucket=-1,
            metric=key.split("/")[1],
            value=float(v),
            ci_low=math.nan,
            ci_high=math.nan,
            n=m.n_positions,
            n_windows=m.n_windows,
        )
        for name, m in metrics.items()
        for key, v in m.set_metrics.items()
    ]
    rows = pd.concat([rows, pd.DataFrame(whole_set)], ignore_index=True) if whole_set else rows
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
