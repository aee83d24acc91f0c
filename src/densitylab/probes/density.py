"""Activation density by familiarity (design §3.3). Pure measurements: tensors in, records out.

Per layer ℓ and token position, with h the MLP post-activation (``blocks.ℓ.mlp.hook_post``, d_mlp
units) and r the residual stream (``blocks.ℓ.hook_resid_post``, d units), before ``ln_f``:

- ``active_frac`` = fraction of MLP units with pre-activation > 0 (``blocks.ℓ.mlp.hook_pre``; for
  ReLU the nonzero fraction of h, for GELU the units on the positive branch, for SwiGLU the gate).
  Li et al., "The Lazy Neuron Phenomenon", arXiv:2210.06313.
- ``active_frac_live`` = the same count over the *live* units only (units that fire on at least one
  pool position of this probe call, all probe sets together; the pool is every probed position, or
  the density probe's fixed pool: the panel's core, ``seen``, the controls): active_frac · d_mlp / n_live.
  Dead units: Voita et al. 2023, "Neurons in Large Language Models: Dead, N-gram, Positional".
- ``zero_frac`` = 1 where h is the all-zero vector, else 0 (its mean is the share of such positions).
- ``hoyer`` = (√n − ‖h‖₁/‖h‖₂) / (√n − 1) (Hoyer 2004): 1 for a one-hot h, 0 for a flat one; a
  density reading is 1 − hoyer. An all-zero h has no sparsity: NaN (counted by ``zero_frac``).
- ``top5_energy`` = Σ of the ⌈0.05·d⌉ largest r_i² / Σ r_i², and ``eff_rank`` = exp(−Σ p_i ln p_i) / d
  with p_i = r_i² / ‖r‖², at every position (in the spirit of Jin et al., "Farther the Shift, Sparser
  the Representation", arXiv:2603.03415).

Jin et al.'s own definition (their code: MingyuJ666/sparsityLLM, ``pretrain/pretrain.py``), on the
final hidden state **after** the final layer norm ``ln_f``, at selected positions (the probe sets'
``pre_value`` positions, which predict an answer's first token; else the last position of each row),
reported at layer ``n_layer - 1``:

- ``jin_top5_energy`` = Σ of the k = max(1, ⌊0.05·d⌋) largest h_i² / Σ h_i²;
- ``jin_eff_rank`` = exp(−Σ p_i ln p_i) / d with p_i = h_i² / ‖h‖².

Per probe set and layer (not per position): ``participation_ratio`` = (Σλ)² / Σλ² of the eigenvalues
λ of the d × d covariance of r over every probed position of the set, = tr(C)² / ‖C‖_F², in [1, d]
(rotation invariant; Gao et al. 2017, "A theory of multineuronal dimensionality, dynamics and
measurement"; Recanatesi et al. 2019/2022).

Per layer, from the same positions (no extra forward pass), the **units table** ``probes/units.parquet``
(:func:`unit_records`): each unit's firing rate (fraction of probed positions with pre-activation > 0),
``dead_frac`` (rate 0) and a histogram of the rates over :data:`FIRING_RATE_EDGES`.

Familiarity of a position is the exposure of its **person** (:mod:`densitylab.probes.roles`: the
mentioned person at names, the document's subject elsewhere) from the ledger at the probe step; the
pre-registered endpoints (:class:`EndpointSpec`, :func:`endpoint_records`) bin and regress on it with
**persons as clusters** (design §8). Whole-set and per-role means are descriptive, with rows (windows)
as clusters. NaN values (Hoyer of a zero vector, Jin metrics off their positions, unprobed positions)
are left out of a group's mean and its ``n``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

# per layer and position, in probes/density.parquet
METRICS = ("active_frac", "active_frac_live", "zero_frac", "hoyer", "top5_energy", "eff_rank")
# measured per position by measure_density (active_frac_live is derived across sets by density_records)
POSITION_METRICS = ("active_frac", "zero_frac", "hoyer", "top5_energy", "eff_rank")
# the final hidden state after ln_f (layer n_layer - 1), at the selected positions only
FINAL_METRICS = ("jin_top5_energy", "jin_eff_rank")
# one value per probe set and layer (role "all", no CI)
SET_METRICS = ("participation_ratio",)
# firing-rate histogram of probes/units.parquet: bin 0 is [0, 0] (dead), then (e_i, e_{i+1}]
FIRING_RATE_EDGES = (0.0, 0.001, 0.01, 0.05, 0.1, 0.2, 0.5, 0.9, 1.0)


# ----------------------------------------------------------------------------- metrics
def active_frac(pre: torch.Tensor) -> torch.Tensor:
    """Fraction of units with pre-activation > 0: (..., n) -> (...) in [0, 1].

    Li et al., "The Lazy Neuron Phenomenon", arXiv:2210.06313."""
    return (pre > 0).float().mean(-1)


def _hoyer_zero(h: torch.Tensor, nonneg: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    n = h.shape[-1]
    if n < 2:
        raise ValueError(f"hoyer needs at least 2 units, got {n}")
    a = h.float() if nonneg else h.float().abs()  # nonneg: h >= 0 already (ReLU), no |h| pass
    l1 = a.sum(-1)
    l2 = torch.linalg.vector_norm(a, dim=-1)
    zero = l1 == 0
    # tiny or huge vectors whose squares underflow or overflow: redo them divided by their max |h_i|
    under = ((l2 < 1e-18) | (l2 > 1e18) | ~torch.isfinite(l2)) & ~zero
    if bool(under.any()):
        u = a[under]
        m = u.amax(-1, keepdim=True)
        l1[under], l2[under] = (u / m).sum(-1), torch.linalg.vector_norm(u / m, dim=-1)
    tiny = torch.finfo(a.dtype).tiny
    value = ((math.sqrt(n) - l1 / l2.clamp_min(tiny)) / (math.sqrt(n) - 1)).clamp(0.0, 1.0)
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

    def update(self, x: torch.Tensor, w: torch.Tensor | None = None) -> None:
        """Add the rows of ``x`` (..., d), or only those where the bool mask ``w`` (...) is True."""
        # float64 on a GPU (no TF32 in the matmul); float32 on a CPU (exact enough: d is small, each batch
        # centred on its own mean first), combined in float64
        x = x.reshape(-1, x.shape[-1])
        x = x.double() if x.is_cuda else x.float()
        if w is None:
            nb = x.shape[0]
            if nb == 0:
                return
            mb = x.mean(0)
            xc = x - mb
        else:
            wf = w.reshape(-1, 1).to(x.dtype)
            nb = int(w.sum())
            if nb == 0:
                return
            mb = (x * wf).sum(0) / nb
            xc = (x - mb) * wf  # the masked rows contribute nothing
        m2b = (xc.T @ xc).double().cpu()
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
    """A fixed set of probe rows (drawn once at fit start, :func:`densitylab.probes.sets.build_probe_sets`).

    Attributes:
        name: ``panel``, ``seen``, ``shuffled``, ``random`` or ``random_seen`` (``heldout`` for the
            modularity probe's windows).
        input_ids: (N, T) int64 token ids.
        sample_ids: (N,) int64 training window ids, -1 for rows that are not training windows.
        spans: unused by the density probe (kept for callers that pass mentions), or None.
        window_ids: (N,) int64 window ids inside the split the rows come from (None for generated
            sets), to look up that split's other spans (e.g. attribute values).
        targets: (N, T) int64 next token of each position (-100 where none), or None.
        labels: for labelled sets (``panel``, ``seen``): (N, T) numpy arrays ``role`` (int8 codes of
            :data:`densitylab.probes.roles.ROLES`), ``person``, ``subject``, ``mentioned`` (int64, -1 none),
            ``doc_initial`` and ``probed`` (bool: the position enters the aggregates); None for controls
            (every position probed, no roles).
        row_persons: per row, the panel persons whose held-out documents it holds (``panel`` only).
        core_rows: ``panel`` only: its first ``core_rows`` rows hold the panel's core, the people probed at
            every call (:meth:`core`).
    """

    name: str
    input_ids: torch.Tensor
    sample_ids: torch.Tensor
    spans: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    window_ids: torch.Tensor | None = None
    targets: torch.Tensor | None = None
    labels: dict[str, np.ndarray] | None = None
    row_persons: list[list[int]] | None = None
    core_rows: int | None = None

    def core(self) -> ProbeSet:
        """The set cut to its first ``core_rows`` rows (itself when ``core_rows`` is None or 0); ``spans``
        (unused by the density probe) is dropped."""
        k = self.core_rows
        if not k or k >= len(self.input_ids):  # no core rows (e.g. text data without them): the whole set
            return self
        return ProbeSet(
            self.name,
            self.input_ids[:k],
            self.sample_ids[:k],
            None,
            None if self.window_ids is None else self.window_ids[:k],
            None if self.targets is None else self.targets[:k],
            None if self.labels is None else {key: v[:k] for key, v in self.labels.items()},
            None if self.row_persons is None else self.row_persons[:k],
            k,
        )

    def probed(self) -> torch.Tensor | None:
        """(N, T) bool positions that are measured (``labels["probed"]``), or None: every position."""
        return None if self.labels is None else torch.from_numpy(self.labels["probed"])

    def final_positions(self) -> torch.Tensor:
        """(N, T) bool: where the Jin et al. metrics are read: the probed ``pre_value`` positions of a
        labelled set that has them (the position predicting the answer's first token, as Jin et al.),
        else the last position of every row."""
        from densitylab.probes.roles import ROLE_CODE

        if self.labels is not None:
            m = (self.labels["role"] == ROLE_CODE["pre_value"]) & self.labels["probed"]
            if m.any():
                return torch.from_numpy(m)
        out = torch.zeros(self.input_ids.shape, dtype=torch.bool)
        out[:, -1] = True
        return out


@dataclass
class DensityMeasurement:
    """What one forward pass over a probe set yields (:func:`measure_density`).

    Attributes:
        positions: ``"L{i}/{metric}"`` -> (N, T) float32 per-position values for every layer i and metric in
            :data:`POSITION_METRICS`, plus ``"L{n_layer-1}/{metric}"`` for :data:`FINAL_METRICS` (NaN off
            the selected positions).
        fire_counts: (n_layer, d_mlp) int64: on how many of the probed positions each MLP unit's
            pre-activation was > 0.
        n_positions: the positions probed (N·T when every position is).
        n_windows: N.
        set_metrics: ``"L{i}/participation_ratio"`` -> float (one value for the whole set).
        pool_fire_counts, pool_positions: the same counts over the ``pool_rows`` only (None: every row).
    """

    positions: dict[str, np.ndarray]
    fire_counts: np.ndarray
    n_positions: int
    n_windows: int
    set_metrics: dict[str, float] = field(default_factory=dict)
    pool_fire_counts: np.ndarray | None = None
    pool_positions: int | None = None

    @property
    def pool(self) -> tuple[np.ndarray, int]:
        """``(fire counts, positions)`` of the rows in the fixed pool (``pool_rows`` of
        :func:`measure_density`; default every row): what live and dead units are counted on."""
        if self.pool_fire_counts is None:
            return self.fire_counts, self.n_positions
        return self.pool_fire_counts, int(self.pool_positions)


def _residual_metrics(r: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(top-k energy share, normalised effective rank) of (M, d) rows from one r² (see :func:`top_energy`,
    :func:`effective_rank`); both 0 for a zero row."""
    e = r.float().square()
    total = e.sum(-1, keepdim=True)
    ok = total.squeeze(-1) > 0
    p = e / total.clamp_min(torch.finfo(e.dtype).tiny)
    top = p.topk(min(k, r.shape[-1]), dim=-1).values.sum(-1)
    ent = -torch.special.xlogy(p, p).sum(-1)
    zero = torch.zeros_like(top)
    return torch.where(ok, top, zero), torch.where(ok, ent.exp() / r.shape[-1], zero)


@torch.no_grad()
def measure_density(
    model,
    input_ids: torch.Tensor,
    batch_size: int = 16,
    final_positions: torch.Tensor | None = None,
    probed: torch.Tensor | None = None,
    pool_rows: int | None = None,
) -> DensityMeasurement:
    """Every density metric of every layer in one streaming pass over mini-batches (activations of one
    mini-batch at a time; only the (N, T) metric values, the (n_layer, d_mlp) firing counts and one
    (d, d) covariance per layer are kept). Metrics, firing counts and covariances cover the ``probed``
    positions only (padding and masked positions run through the model, as context, and nothing else).

    Args:
        model: a :class:`densitylab.model.GPT` (put it in eval mode first).
        input_ids: (N, T) token ids.
        batch_size: windows per forward pass.
        final_positions: (N, T) bool, the positions where the Jin et al. metrics are read on the final
            hidden state after ``ln_f``; default: the last position of each window.
        probed: (N, T) bool, the positions measured (default: all); the others get NaN.
        pool_rows: also count firing over the first ``pool_rows`` rows alone (the density probe's panel
            core, probed at every call, so live / dead units come from the same positions at every call).
    Returns:
        A :class:`DensityMeasurement` (``n_positions`` = probed positions).
    """
    n_layer = model.config.n_layer
    device = next(model.parameters()).device
    N, T = input_ids.shape
    if final_positions is None:
        final_positions = torch.zeros(N, T, dtype=torch.bool)
        final_positions[:, -1] = True
    probed = torch.ones(N, T, dtype=torch.bool) if probed is None else torch.as_tensor(probed, dtype=torch.bool)
    final_positions = final_positions & probed
    last = n_layer - 1
    out = {f"L{i}/{m}": [] for i in range(n_layer) for m in POSITION_METRICS}
    out.update({f"L{last}/{m}": [] for m in FINAL_METRICS})
    fires: list[torch.Tensor | int] = [0] * n_layer
    pool_fires: list[torch.Tensor | int] = [0] * n_layer
    moments = [_Moments() for _ in range(n_layer)]
    current: dict[str, torch.Tensor] = {}
    sel: dict[str, torch.Tensor | None] = {"mask": None, "pool": None}
    k_top = max(1, math.ceil(0.05 * model.config.n_embd))
    nonneg = getattr(model.config, "activation", "") in ("relu", "relu2")  # hook_post >= 0

    def put(name: str, values: torch.Tensor) -> None:
        current[name] = values  # every position (cheaper than gathering); unprobed ones become NaN at the end

    def hook(layer: int, kind: str):
        def fn(module, inp, act):
            m = sel["mask"]
            if kind == "pre":
                fired = (act > 0).float()  # (float reductions are faster than bool ones on CPU)
                put(f"L{layer}/active_frac", fired.mean(-1))
                if m is None:
                    count = fired.sum((0, 1))
                else:  # probed positions only: a (1, B·T) x (B·T, n) product
                    count = (m.reshape(1, -1).float() @ fired.reshape(-1, fired.shape[-1])).reshape(-1)
                fires[layer] = fires[layer] + count.long()  # exact below 2**24 positions per batch
                pm = sel["pool"]
                if pm is not None:  # the pool rows of this batch (probed positions only)
                    pool_fires[layer] = (
                        pool_fires[layer]
                        + (pm.reshape(1, -1).float() @ fired.reshape(-1, fired.shape[-1])).reshape(-1).long()
                    )
            elif kind == "post":
                h, z = _hoyer_zero(act, nonneg)
                put(f"L{layer}/hoyer", h)
                put(f"L{layer}/zero_frac", z)
            else:
                top, er = _residual_metrics(act, k_top)
                put(f"L{layer}/top5_energy", top)
                put(f"L{layer}/eff_rank", er)
                moments[layer].update(act, m)

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
            pm = probed[s : s + batch_size].to(device)
            sel["mask"] = None if bool(pm.all()) else pm
            if pool_rows is not None:
                in_pool = (torch.arange(s, s + len(pm), device=device) < pool_rows).unsqueeze(1)
                sel["pool"] = pm & in_pool
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
    unprobed = ~probed.numpy()
    positions = {k: torch.cat(v).numpy() for k, v in out.items()}
    if unprobed.any():
        for v in positions.values():
            v[unprobed] = np.nan
    return DensityMeasurement(
        positions=positions,
        fire_counts=torch.stack([torch.as_tensor(f) for f in fires]).cpu().numpy().astype(np.int64),
        n_positions=int(probed.sum()),
        n_windows=N,
        set_metrics={f"L{i}/participation_ratio": participation_ratio(mo.cov()) for i, mo in enumerate(moments)},
        pool_fire_counts=None
        if pool_rows is None
        else torch.stack([torch.as_tensor(f) for f in pool_fires]).cpu().numpy().astype(np.int64),
        pool_positions=None if pool_rows is None else int(probed[:pool_rows].sum()),
    )


def live_units(measurements: Mapping[str, DensityMeasurement]) -> np.ndarray:
    """(n_layer, d_mlp) bool: units with pre-activation > 0 on at least one position of the pool of any probe
    set (:attr:`DensityMeasurement.pool`: every probed position, or the pool rows when given)."""
    return np.sum([m.pool[0] for m in measurements.values()], axis=0) > 0


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
        every set's pool positions (:attr:`DensityMeasurement.pool`: in the density probe the panel's core,
        ``seen`` and the controls, the positions probed at every call; the dead / live split of
        ``active_frac_live`` and the logged ``dead_frac``), the others are each set alone (all its probed
        positions); ``bin_low``/``bin_high`` the bin of
        :data:`FIRING_RATE_EDGES` (the first bin is [0, 0]); ``count`` units in that bin; ``n_units``
        (d_mlp), ``n_positions``, ``n_dead`` and ``dead_frac`` = n_dead / n_units repeated on every bin
        row of the (layer, probe_set).
    """
    edges = np.asarray(FIRING_RATE_EDGES)
    low, high = np.concatenate([[0.0], edges[:-1]]), edges
    groups = {
        "all": (
            np.sum([m.pool[0] for m in measurements.values()], axis=0),
            sum(m.pool[1] for m in measurements.values()),
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
@dataclass(frozen=True)
class EndpointSpec:
    """The pre-registered endpoints (``callbacks.density.endpoints`` in ``conf/``; design §8), fixed before
    a run: per layer, at each of ``roles`` of the panel's held-out documents,

    (a) the OLS slope of ``metric`` on log2(1 + ``exposure``) and
    (b) the mean of ``metric`` in each exposure bin ``[edges[k], edges[k+1])`` (the last open-ended, the
        first {0} when ``edges`` starts 0, 1) and its difference from the first bin (zero-exposure people),

    with CR1 cluster-robust CIs, **persons as clusters** (t on n_persons − 1 df); a bin with fewer than
    ``min_entities`` persons (or a contrast whose reference bin has fewer) is reported as insufficient, a
    slope over persons who all have the same exposure (step 0) as ``no_variation``.

    Attributes:
        metric: the primary metric (``active_frac_live``).
        secondary: further metrics given the same rows (not headline).
        exposure: the person's exposure measure: ``distinct_docs`` (bins do not drift with the epoch),
            ``subject_docs``, ``mentions`` or ``comentions``; on data without document subjects (text)
            ``distinct_docs`` is replaced by ``mentions``.
        roles: the positions the endpoints are read at.
        bin_edges: increasing lower edges in documents.
        min_entities: the smallest number of persons a bin needs.
        level: confidence level.
    """

    metric: str = "active_frac_live"
    secondary: tuple[str, ...] = ("active_frac", "hoyer")
    exposure: str = "distinct_docs"
    roles: tuple[str, ...] = ("name_last", "pre_value")
    bin_edges: tuple[int, ...] = (0, 1, 4, 16, 64)
    min_entities: int = 10
    level: float = 0.95

    def __post_init__(self) -> None:
        from densitylab.probes.roles import ROLES

        where = "callbacks.density.endpoints"
        known = METRICS + FINAL_METRICS
        for key in ("secondary", "roles", "bin_edges"):
            v = getattr(self, key)
            if isinstance(v, str) or not isinstance(v, (tuple, list)):
                raise ValueError(f"{where}.{key}={v!r}: expected a list")
        for m in (self.metric, *self.secondary):
            if m not in known:
                raise ValueError(f"{where}: metric {m!r} is not a density metric; expected one of {list(known)}")
        if self.exposure not in EXPOSURES:
            raise ValueError(f"{where}.exposure={self.exposure!r}: expected one of {list(EXPOSURES)}")
        if not self.roles:
            raise ValueError(f"{where}.roles=[]: expected at least one position role")
        for r in self.roles:
            if r not in ROLES:
                raise ValueError(f"{where}.roles: {r!r} is not a position role; expected one of {list(ROLES)}")
        e = list(self.bin_edges)
        if len(e) < 2 or any(isinstance(x, bool) or not isinstance(x, int) or x < 0 for x in e) or e != sorted(set(e)):
            raise ValueError(f"{where}.bin_edges={e!r}: expected >= 2 increasing integers >= 0")
        if e[:2] != [0, 1]:
            raise ValueError(f"{where}.bin_edges={e!r}: expected to start 0, 1 (the reference bin is {{0}})")
        if isinstance(self.min_entities, bool) or not isinstance(self.min_entities, int) or self.min_entities < 2:
            raise ValueError(f"{where}.min_entities={self.min_entities!r}: expected an integer >= 2")
        if isinstance(self.level, bool) or not isinstance(self.level, (int, float)) or not 0 < self.level < 1:
            raise ValueError(f"{where}.level={self.level!r}: expected a number in (0, 1)")

    @property
    def bin_labels(self) -> list[str]:
        """``0``, ``1-3``, ``4-15``, ``16-63``, ``64+`` for the default edges."""
        e = list(self.bin_edges)
        out = []
        for k, lo in enumerate(e):
            hi = e[k + 1] - 1 if k + 1 < len(e) else None
            out.append(f"{lo}+" if hi is None else (f"{lo}" if hi == lo else f"{lo}-{hi}"))
        return out

    def bin_of(self, counts: np.ndarray) -> np.ndarray:
        """Bin index (0-based) of each count; -1 below the first edge."""
        return np.searchsorted(np.asarray(self.bin_edges), np.asarray(counts), side="right") - 1


#: Exposure measures of a person (the ledger's, :mod:`densitylab.ledger.exposure`).
EXPOSURES = ("distinct_docs", "subject_docs", "mentions", "comentions")
#: Columns of ``probes/density.parquet``.
RECORD_COLUMNS = [
    "step",
    "layer",
    "probe_set",
    "role",
    "exposure",
    "bin",
    "bin_index",
    "metric",
    "estimand",
    "value",
    "ci_low",
    "ci_high",
    "n",
    "n_windows",
    "n_entities",
    "status",
]


def density_positions(
    step: int,
    metrics: Mapping[str, DensityMeasurement],
    sets: Mapping[str, ProbeSet],
    exposure: Mapping[str, np.ndarray],
    token_counts: np.ndarray,
    sequence_counts: np.ndarray | None = None,
) -> pd.DataFrame:
    """One row per probed position of every probe set, with its labels, exposures and metrics (the input
    of every aggregate, and of the regression in :mod:`densitylab.probes.density_regression`).

    Args:
        step: training step of this probe call.
        metrics: probe set name -> :func:`measure_density` output.
        sets: probe set name -> :class:`ProbeSet`.
        exposure: ``distinct_docs``, ``subject_docs``, ``mentions``, ``comentions`` -> (E,) int64 per person
            (the ledger's, after its sync).
        token_counts: (V,) int64 training exposures of each token id.
        sequence_counts: (n_windows,) int64 trainings of each training window (None: all 0).
    Returns:
        Columns ``step, probe_set, row, pos, role`` (a role name, ``all`` for unlabelled controls),
        ``person, subject, mentioned`` (int64, -1 none), ``own`` (panel rows: the position belongs to the
        panel person whose document holds it: the subject's own positions of a biography, not the names
        of people it co-mentions; on text, the row's panel entity), ``doc_initial``, the four exposures
        of ``person`` (-1 without one), ``input_count``, ``target_count`` (-1 without a target),
        ``window_trained``, then ``L{i}/{metric}`` float32 per layer and metric (``active_frac_live``
        included). Positions not probed (padding, canaries in
        ``seen``) are left out.
    """
    from densitylab.probes.roles import ROLES

    live = live_units(metrics)
    n_layer, d_mlp = live.shape
    n_live = live.sum(1)
    role_names = np.asarray(ROLES + ("all",), dtype=object)
    frames = []
    for name, m in metrics.items():
        ps = sets[name]
        N, T = ps.input_ids.shape
        cols = dict(m.positions)
        for i in range(n_layer):
            scale = d_mlp / n_live[i] if n_live[i] else math.nan
            cols[f"L{i}/active_frac_live"] = (cols[f"L{i}/active_frac"] * np.float32(scale)).astype(np.float32)
        lab = ps.labels
        if lab is None:
            probed = np.ones((N, T), dtype=bool)
            role = np.full((N, T), len(ROLES), dtype=np.int64)
            person = subject = mentioned = np.full((N, T), -1, dtype=np.int64)
            doc_initial = np.zeros((N, T), dtype=bool)
        else:
            probed, role = lab["probed"], lab["role"].astype(np.int64)
            person, subject, mentioned, doc_initial = (
                lab["person"],
                lab["subject"],
                lab["mentioned"],
                lab["doc_initial"],
            )
        keep = probed.reshape(-1)
        rows = np.repeat(np.arange(N), T)[keep]
        per = person.reshape(-1)[keep]
        sub_flat = subject.reshape(-1)[keep]
        own = np.zeros(len(per), dtype=bool)
        if ps.row_persons and (sub_flat >= 0).any():  # biographies: the subject's own positions
            own = (per >= 0) & (per == sub_flat)
        elif ps.row_persons:  # text: the row's panel entity
            E = int(max(per.max(initial=0), max((max(p) for p in ps.row_persons if p), default=0))) + 1
            pairs = np.asarray([r * E + p for r, ps_ in enumerate(ps.row_persons) for p in ps_], dtype=np.int64)
            own = (per >= 0) & np.isin(rows * E + np.clip(per, 0, None), pairs)
        ids = ps.input_ids.numpy().reshape(-1)[keep]
        tg = (ps.targets if ps.targets is not None else torch.full_like(ps.input_ids, -100)).numpy().reshape(-1)[keep]
        win = ps.sample_ids.numpy()
        trained = np.zeros(N, dtype=np.int64)
        if sequence_counts is not None and (win >= 0).any():
            ok = win >= 0
            trained[ok] = sequence_counts[win[ok]]
        df = {
            "probe_set": name,
            "row": rows,
            "pos": np.tile(np.arange(T), N)[keep],
            "role": role_names[role.reshape(-1)[keep]],
            "person": per,
            "subject": sub_flat,
            "mentioned": mentioned.reshape(-1)[keep],
            "own": own,
            "doc_initial": doc_initial.reshape(-1)[keep],
        }
        for k in EXPOSURES:
            arr = np.asarray(exposure.get(k, np.zeros(0, dtype=np.int64)))
            df[k] = np.where(
                (per >= 0) & (per < len(arr)), arr[np.clip(per, 0, max(len(arr) - 1, 0))] if len(arr) else -1, -1
            )
        df["input_count"] = token_counts[ids]
        df["target_count"] = np.where(tg >= 0, token_counts[np.clip(tg, 0, None)], -1)
        df["window_trained"] = trained[rows]
        frame = pd.DataFrame(df)
        for k, v in cols.items():
            frame[k] = v.reshape(-1)[keep]
        frames.append(frame)
    out = pd.concat(frames, ignore_index=True)
    out.insert(0, "step", int(step))
    return out


def _grouped_ci(
    pos: pd.DataFrame, metric_cols: list[str], keys: list[str], cluster: str, level: float = 0.95
) -> pd.DataFrame:
    """Position-weighted mean and CR1 cluster-robust CI (t on k − 1 df, k = clusters) per group of
    ``keys`` for every metric column, vectorised over groups and metrics (the estimator of
    :func:`~densitylab.probes.stats.cluster_mean_ci`). NaN values are left out: each metric's ``n``
    counts its finite values, ``k`` the clusters holding one; a (group, metric) without a finite value
    gives no row. Returns ``keys`` + layer, metric, value, ci_low, ci_high, n, k."""
    from scipy import stats

    cid = pos.groupby(keys + [cluster], sort=False).ngroup().to_numpy()
    n_c = int(cid.max()) + 1
    V = pos[metric_cols].to_numpy(np.float64)
    F = np.isfinite(V)
    V = np.where(F, V, 0.0)
    S = np.stack([np.bincount(cid, weights=V[:, j], minlength=n_c) for j in range(V.shape[1])], axis=1)
    n_w = np.stack([np.bincount(cid, weights=F[:, j], minlength=n_c) for j in range(V.shape[1])], axis=1)
    _, first = np.unique(cid, return_index=True)
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
    keep = n_g > 0  # (G, metrics)
    g, j = np.nonzero(keep)  # one record per (group, metric) with a finite value
    layer_of = np.array([int(c.split("/")[0][1:]) for c in metric_cols])
    metric_of = np.array([c.split("/")[1] for c in metric_cols], dtype=object)
    out = idx.iloc[g].reset_index(drop=True)
    out["layer"] = layer_of[j]
    out["metric"] = metric_of[j]
    out["value"] = mean[g, j]
    out["ci_low"] = mean[g, j] - half[g, j]
    out["ci_high"] = mean[g, j] + half[g, j]
    out["n"] = n_g[g, j].astype(np.int64)
    out["k"] = k_g[g, j].astype(np.int64)
    return out


def _descriptive(pos: pd.DataFrame, metric_cols: list[str], by_role: bool, level: float) -> pd.DataFrame:
    """Whole-set (``role`` all) or per-role means, windows (rows) as clusters: no familiarity claim."""
    keys = ["probe_set", "role"] if by_role else ["probe_set"]
    src = pos[pos["role"] != "all"] if by_role else pos
    if src.empty:
        return pd.DataFrame()
    out = _grouped_ci(src, metric_cols, keys, "row", level).rename(columns={"k": "n_windows"})
    if not by_role:
        out["role"] = "all"
    ent = src[src["person"] >= 0].groupby(keys)["person"].nunique().rename("n_entities").reset_index()
    out = out.merge(ent, on=keys, how="left")
    out["n_entities"] = out["n_entities"].fillna(0).astype(np.int64)
    return out.assign(exposure="all", bin="all", bin_index=-1, estimand="mean", status="descriptive")


def endpoint_records(pos: pd.DataFrame, spec: EndpointSpec, n_layer: int, exposure: str) -> pd.DataFrame:
    """The pre-registered endpoint rows of one probe call (see :class:`EndpointSpec`): per layer, role in
    ``spec.roles`` and metric in ``[spec.metric, *spec.secondary]``, on the panel's own positions (the
    position's person is a panel person whose held-out document the row holds): the mean of every bin
    (estimand ``mean``), each bin against the first (``diff_vs_0``: the bin-dummy coefficient of a CR1
    regression on the two bins' positions, in closed form: persons are nested in bins) and the slope on
    log2(1 + exposure) (``slope``), persons as clusters.

    Args:
        pos: :func:`density_positions` rows.
        spec: the endpoints.
        n_layer: layers.
        exposure: the exposure column used (``spec.exposure``, or ``mentions`` on text data).
    Returns:
        Rows with the columns of :data:`RECORD_COLUMNS` but ``step``.
    """
    from scipy import stats

    labels = spec.bin_labels
    K = len(labels)
    src = pos[(pos["probe_set"] == "panel") & pos["own"] & pos["role"].isin(spec.roles)]
    src = src.assign(bin_index=spec.bin_of(src[exposure].to_numpy()))
    src = src[src["bin_index"] >= 0]
    cols = [(m, i) for m in (spec.metric, *spec.secondary) for i in range(n_layer) if f"L{i}/{m}" in src]
    nan = math.nan

    @functools.cache
    def _t(df: int) -> float:
        return float(stats.t.ppf(0.5 + spec.level / 2, max(df, 1)))

    def t(df) -> float:
        return _t(int(df))

    out = []
    for role in spec.roles:
        sub = src[src["role"] == role]
        Y = sub[[f"L{i}/{m}" for m, i in cols]].to_numpy(np.float64)
        person_all = sub["person"].to_numpy()
        bin_all = sub["bin_index"].to_numpy()
        x_all = np.log2(1.0 + sub[exposure].to_numpy(np.float64))
        row_all = sub["row"].to_numpy()
        for j, (metric, layer) in enumerate(cols):
            f = np.isfinite(Y[:, j])
            y, b, x = Y[f, j], bin_all[f], x_all[f]
            pid = pd.factorize(person_all[f])[0]
            G_all = int(pid.max()) + 1 if len(pid) else 0
            bin_of_person = np.zeros(G_all, dtype=np.int64)
            bin_of_person[pid] = b  # a person's exposure, hence bin, is one value
            n_b = np.bincount(b, minlength=K).astype(np.float64)
            G_b = np.bincount(bin_of_person, minlength=K) if G_all else np.zeros(K, dtype=np.int64)
            w_b = np.array([np.unique(row_all[f][b == k]).size for k in range(K)])
            with np.errstate(invalid="ignore", divide="ignore"):
                mean_b = np.bincount(b, weights=y, minlength=K) / n_b
                s_g = np.bincount(pid, weights=y - mean_b[b], minlength=G_all)  # per-person residual sums
                R_b = np.bincount(bin_of_person, weights=s_g**2, minlength=K)
                # (b) bin means: CR1 with one regressor (the factor (n - 1)/(n - p) is 1), t on G_b - 1 df
                se_b = np.sqrt(G_b / np.maximum(G_b - 1, 1) * R_b) / n_b
            ok = G_b >= spec.min_entities
            rec = dict(probe_set="panel", exposure=exposure, layer=layer, role=role, metric=metric)
            for k, lab in enumerate(labels):
                r = dict(rec, bin=lab, bin_index=k, estimand="mean", n=int(n_b[k]), n_windows=int(w_b[k]))
                r["n_entities"] = int(G_b[k])
                if ok[k]:
                    h = t(np.array(G_b[k] - 1)) * se_b[k]
                    r.update(value=mean_b[k], ci_low=mean_b[k] - h, ci_high=mean_b[k] + h, status="ok")
                else:
                    r.update(value=nan, ci_low=nan, ci_high=nan, status="insufficient")
                out.append(r)
            # each bin against the first: the dummy coefficient of a CR1 regression on the two bins' positions
            # = the difference of their means, V = c (R_k / n_k^2 + R_0 / n_0^2), c = G/(G-1) (n-1)/(n-2)
            for k, lab in enumerate(labels[1:], start=1):
                n2, G2 = n_b[k] + n_b[0], int(G_b[k] + G_b[0])
                r = dict(rec, bin=lab, bin_index=k, estimand="diff_vs_0", n=int(n2), n_entities=G2)
                r["n_windows"] = int(np.unique(row_all[f][(b == k) | (b == 0)]).size)
                if ok[k] and ok[0] and n2 > 2:
                    c = G2 / (G2 - 1) * (n2 - 1) / (n2 - 2)
                    d = mean_b[k] - mean_b[0]
                    h = t(np.array(G2 - 1)) * math.sqrt(c * (R_b[k] / n_b[k] ** 2 + R_b[0] / n_b[0] ** 2))
                    r.update(value=d, ci_low=d - h, ci_high=d + h, status="ok")
                else:
                    r.update(value=nan, ci_low=nan, ci_high=nan, status="insufficient")
                out.append(r)
            # (a) the slope on log2(1 + exposure), every person of the role
            n = len(y)
            r = dict(rec, bin="all", bin_index=-1, estimand="slope", n=n, n_entities=G_all)
            r["n_windows"] = int(np.unique(row_all[f]).size)
            xc = x - x.mean() if n else x
            sxx = float((xc**2).sum())
            if G_all >= spec.min_entities and sxx > 1e-12 and n > 2:
                beta = float((xc * (y - y.mean())).sum() / sxx)
                e = (y - y.mean()) - beta * xc
                score = np.bincount(pid, weights=xc * e, minlength=G_all)
                c = G_all / (G_all - 1) * (n - 1) / (n - 2)
                h = float(t(np.array(G_all - 1))) * math.sqrt(c * float((score**2).sum())) / sxx
                r.update(value=beta, ci_low=beta - h, ci_high=beta + h, status="ok")
            else:  # too few persons, or every person at the same exposure (e.g. step 0): no slope
                status = "insufficient" if G_all < spec.min_entities else "no_variation"
                r.update(value=nan, ci_low=nan, ci_high=nan, status=status)
            out.append(r)
    return pd.DataFrame(out)


def density_records(
    step: int,
    metrics: Mapping[str, DensityMeasurement],
    sets: Mapping[str, ProbeSet],
    exposure: Mapping[str, np.ndarray],
    token_counts: np.ndarray,
    sequence_counts: np.ndarray | None = None,
    spec: EndpointSpec | None = None,
) -> tuple[pd.DataFrame, dict[str, float], pd.DataFrame]:
    """Aggregate one probe call into the rows of ``probes/density.parquet`` and the headline numbers.

    Args:
        step: training step of this probe call.
        metrics: probe set name -> :func:`measure_density` output, for every probe set of the call (the
            live units of ``active_frac_live`` are those firing somewhere in any of them).
        sets: probe set name -> :class:`ProbeSet` (labels, persons, targets).
        exposure: per-person exposure arrays (see :func:`density_positions`).
        token_counts: (V,) int64 token exposures; sequence_counts: (n_windows,) window trainings.
        spec: the pre-registered endpoints (default :class:`EndpointSpec`).
    Returns:
        ``(rows, headline, positions)``. ``rows`` has :data:`RECORD_COLUMNS`:

        - whole-set rows (role ``all``) and per-role rows of every labelled set: estimand ``mean``,
          windows as clusters, status ``descriptive``; :data:`SET_METRICS` one value per set, CI NaN;
          whole-set rows of ``panel_core`` (the panel's first ``core_rows`` rows: the people probed at
          every call, so their curve over training compares like with like);
        - the endpoint rows of :func:`endpoint_records` (probe_set ``panel``, persons as clusters).

        ``headline`` maps ``L{i}/{role}/slope`` (and ``_ci_low``, ``_ci_high``, ``_n_entities``) and
        ``L{i}/{role}/diff_{bin}`` (same suffixes) of the primary metric to floats, the sufficient rows
        only. ``positions`` is :func:`density_positions`' table.
    """
    spec = spec or EndpointSpec()
    n_layer = next(iter(metrics.values())).fire_counts.shape[0]
    pos = density_positions(step, metrics, sets, exposure, token_counts, sequence_counts)
    metric_cols = [c for c in pos.columns if c.startswith("L") and "/" in c]
    parts = [_descriptive(pos, metric_cols, False, spec.level), _descriptive(pos, metric_cols, True, spec.level)]
    panel = sets.get("panel")
    if panel is not None and panel.core_rows:  # the core's whole-set means: the same people at every call
        core = pos[(pos["probe_set"] == "panel") & (pos["row"] < panel.core_rows)].assign(probe_set="panel_core")
        parts.append(_descriptive(core, metric_cols, False, spec.level))
    whole_set = [
        dict(
            layer=int(key.split("/")[0][1:]),
            probe_set=name,
            role="all",
            exposure="all",
            bin="all",
            bin_index=-1,
            metric=key.split("/")[1],
            estimand="mean",
            value=float(v),
            ci_low=math.nan,
            ci_high=math.nan,
            n=m.n_positions,
            n_windows=m.n_windows,
            n_entities=0,
            status="descriptive",
        )
        for name, m in metrics.items()
        for key, v in m.set_metrics.items()
    ]
    parts.append(pd.DataFrame(whole_set))
    has_subjects = np.asarray(exposure.get("distinct_docs", np.zeros(0))).sum() > 0 or (pos["subject"] >= 0).any()
    ex = (
        spec.exposure
        if has_subjects or spec.exposure not in ("distinct_docs", "subject_docs", "comentions")
        else "mentions"
    )
    ends = endpoint_records(pos, spec, n_layer, ex) if "panel" in metrics else pd.DataFrame()
    parts.append(ends)
    rows = pd.concat([p for p in parts if len(p)], ignore_index=True)
    rows.insert(0, "step", int(step))
    rows = rows[RECORD_COLUMNS].astype(
        {"layer": "int64", "bin_index": "int64", "n": "int64", "n_windows": "int64", "n_entities": "int64"}
    )
    headline: dict[str, float] = {}
    if len(ends):
        prim = ends[(ends["metric"] == spec.metric) & (ends["status"] == "ok") & (ends["estimand"] != "mean")]
        for r in prim.itertuples():
            key = f"L{r.layer}/{r.role}/" + ("slope" if r.estimand == "slope" else f"diff_{r.bin}")
            headline.update(
                {
                    key: float(r.value),
                    f"{key}_ci_low": float(r.ci_low),
                    f"{key}_ci_high": float(r.ci_high),
                    f"{key}_n_entities": float(r.n_entities),
                }
            )
    rows = rows.sort_values(
        ["layer", "probe_set", "role", "exposure", "bin_index", "metric", "estimand"], ignore_index=True
    )
    return rows, headline, pos
