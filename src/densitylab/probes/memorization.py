"""Memorization of random-token sequences, in bits (Morris et al., arXiv:2505.24832), and
Pythia-style (k, k)-extractability (Biderman et al., "Emergent and Predictable Memorization in
Large Language Models", arXiv:2304.11158).

A sequence x of S tokens drawn uniformly from an alphabet of A tokens carries exactly
(S−1)·log2 A bits beyond its first token. A model that assigns it NLL_bits(x) (over the S−1
predicted tokens, teacher-forced) has compressed it by the difference, so

    mem(x) = max(0, (S−1)·log2 A − NLL_bits(x))      [bits]

and total memorized bits = Σ mem(x) over the sequences (canaries, or every training sequence in the
capacity experiment). Pure torch: no Lightning here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

LN2 = math.log(2.0)


@torch.no_grad()
def sequence_nll(
    model: torch.nn.Module, tokens: torch.Tensor, batch_size: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced NLL of each sequence and whether each next token is the model's argmax.

    Args:
        model: maps (B, T) token ids to (B, T, V) logits (a :class:`~densitylab.model.GPT`); run as
            given (call ``model.eval()`` first); its ``block_size`` must be >= S − 1.
        tokens: (N, S) int64 sequences; position 0 is context only, positions 1..S−1 are predicted.
        batch_size: sequences per forward pass.
    Returns:
        ``nll_bits`` (N,) float64: Σ over the S−1 predicted tokens of −log2 p(x_t | x_<t), in
        **bits**; ``correct`` (N, S−1) bool: argmax of the logits at position t−1 equals x_t.
    Raises:
        ValueError: if ``tokens`` is not 2-D with S >= 2.
    """
    if tokens.dim() != 2 or tokens.shape[1] < 2:
        raise ValueError(f"tokens shape {tuple(tokens.shape)}: expected (N, S) with S >= 2")
    device = next(model.parameters()).device
    nll, correct = [], []
    for i in range(0, tokens.shape[0], batch_size):
        x = tokens[i : i + batch_size].to(device)
        logits = model(x[:, :-1]).float()
        target = x[:, 1:]
        ce = F.cross_entropy(logits.transpose(1, 2), target, reduction="none")  # (B, S-1) nats
        nll.append(ce.double().sum(1).cpu() / LN2)
        correct.append((logits.argmax(-1) == target).cpu())
    return torch.cat(nll), torch.cat(correct)


def memorized_bits(nll_bits: torch.Tensor, length: int, alphabet_size: int | torch.Tensor) -> torch.Tensor:
    """mem(x) = max(0, (S−1)·log2 A − NLL_bits(x)) per sequence (Morris et al., arXiv:2505.24832).

    Args:
        nll_bits: (N,) NLL in bits over the S−1 predicted tokens (:func:`sequence_nll`).
        length: S, tokens per sequence.
        alphabet_size: A, the size of the uniform alphabet the sequences were drawn from (an int,
            or an (N,) tensor when sequences differ).
    Returns:
        (N,) float64 memorized bits, in [0, (S−1)·log2 A].
    Raises:
        ValueError: for S < 2 or A < 2.
    """
    a = torch.as_tensor(alphabet_size, dtype=torch.float64)
    if length < 2 or bool((a < 2).any()):
        raise ValueError(f"length={length}, alphabet_size={alphabet_size}: expected S >= 2 and A >= 2")
    return ((length - 1) * torch.log2(a) - nll_bits.double()).clamp(min=0.0)


def extractable(correct: torch.Tensor, prefix_len: int = 32, suffix_len: int = 32) -> torch.Tensor:
    """(k, l)-extractability: greedy decoding from the first ``prefix_len`` tokens reproduces the
    next ``suffix_len`` tokens exactly (Pythia's (32, 32) memorization score, arXiv:2304.11158).

    Computed from one teacher-forced pass: if the argmax is right at every suffix position, greedy
    decoding sees exactly the teacher-forced context at every step (induction), so the two give the
    same yes/no.

    Args:
        correct: (N, S−1) bool from :func:`sequence_nll` (column t−1: token t was the argmax).
        prefix_len, suffix_len: k and l; when S < k + l they shrink to S // 2 and S − S // 2.
    Returns:
        (N,) bool.
    """
    s = correct.shape[1] + 1
    if prefix_len + suffix_len > s:
        prefix_len, suffix_len = s // 2, s - s // 2
    # token t (t = prefix_len .. prefix_len+suffix_len-1) is predicted in column t-1
    return correct[:, prefix_len - 1 : prefix_len + suffix_len - 1].all(dim=1)


def measure_memorization(
    model: torch.nn.Module,
    tokens: torch.Tensor,
    alphabet_size: int | torch.Tensor,
    batch_size: int = 256,
    prefix_len: int = 32,
    suffix_len: int = 32,
) -> pd.DataFrame:
    """Per-sequence memorization of ``tokens`` (N, S): one teacher-forced pass.

    Returns:
        DataFrame with N rows: ``nll_bits`` (bits over S−1 tokens), ``mem_bits`` (memorized bits,
        :func:`memorized_bits`), ``extractable`` (bool, :func:`extractable`), ``argmax_acc``
        (fraction of the S−1 tokens that are the argmax).
    """
    nll, correct = sequence_nll(model, tokens, batch_size)
    return pd.DataFrame(
        {
            "nll_bits": nll.numpy(),
            "mem_bits": memorized_bits(nll, tokens.shape[1], alphabet_size).numpy(),
            "extractable": extractable(correct, prefix_len, suffix_len).numpy(),
            "argmax_acc": correct.double().mean(1).numpy(),
        }
    )


def memorization_scalars(per_seq: pd.DataFrame, n_params: int | None = None) -> dict[str, float]:
    """Scalars of one probe call from per-sequence rows (needs ``repetitions``, ``mem_bits``,
    ``extractable``, ``max_bits``):

    ``bits_total`` (Σ mem_bits), ``bits/rep{k}`` (Σ over the sequences inserted k times),
    ``bits_mean/rep{k}`` (mean per sequence), ``extractable_frac`` and ``extractable_frac/rep{k}``,
    ``frac_of_entropy`` (bits_total / Σ (S−1)·log2 A), and ``bits_per_param`` when ``n_params`` is given.
    """
    out = {
        "bits_total": float(per_seq["mem_bits"].sum()),
        "extractable_frac": float(per_seq["extractable"].mean()),
        "frac_of_entropy": float(per_seq["mem_bits"].sum() / per_seq["max_bits"].sum()),
    }
    for k, g in per_seq.groupby("repetitions"):
        out[f"bits/rep{k}"] = float(g["mem_bits"].sum())
        out[f"bits_mean/rep{k}"] = float(g["mem_bits"].mean())
        out[f"extractable_frac/rep{k}"] = float(g["extractable"].mean())
    if n_params:
        out["bits_per_param"] = out["bits_total"] / n_params
    return out


@dataclass
class Plateau:
    """The plateau rule of the capacity experiment: stop when a monitored value (memorized bits per
    parameter) has not improved by more than ``min_delta`` for ``patience`` consecutive
    evaluations; after ``lr_patience`` evaluations without improvement, ask for the learning rate to
    be multiplied by ``lr_factor`` (at most down to ``min_lr_scale`` × the initial LR), as torch's
    ``ReduceLROnPlateau`` does. A plateau at a lower LR is a better estimate of the converged value.

    :meth:`update` returns ``"stop"``, ``"reduce_lr"`` or ``None``.

    Raises:
        ValueError: for ``patience < 1``, ``lr_patience < 1``, ``min_delta < 0`` or ``lr_factor`` not in (0, 1].
    """

    patience: int = 4
    min_delta: float = 0.01
    lr_patience: int = 2
    lr_factor: float = 0.5
    min_lr_scale: float = 1 / 16
    best: float = -math.inf
    max_seen: float = -math.inf
    wait: int = 0
    lr_wait: int = 0
    lr_scale: float = 1.0
    history: list = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.patience < 1 or self.lr_patience < 1 or self.min_delta < 0 or not 0 < self.lr_factor <= 1:
            raise ValueError(
                f"plateau patience={self.patience}, lr_patience={self.lr_patience}, min_delta={self.min_delta}, "
                f"lr_factor={self.lr_factor}: expected patience, lr_patience >= 1, min_delta >= 0, 0 < lr_factor <= 1"
            )

    def update(self, value: float) -> str | None:
        """Record one evaluation; return the action it calls for."""
        self.history.append(float(value))
        self.max_seen = max(self.max_seen, float(value))
        if value > self.best + self.min_delta:  # best moves only on an improvement, so slow steady growth
            self.best, self.wait, self.lr_wait = float(value), 0, 0  # adds up to one (as ReduceLROnPlateau)
            return None
        self.wait += 1
        self.lr_wait += 1
        if self.wait >= self.patience:
            return "stop"
        if (
            self.lr_wait >= self.lr_patience
            and self.lr_scale * self.lr_factor >= self.min_lr_scale - 1e-12
            and self.lr_factor < 1
        ):
            self.lr_wait = 0
            self.lr_scale *= self.lr_factor
            return "reduce_lr"
        return None

    def state_dict(self) -> dict:
        """Everything needed to resume the rule."""
        return {k: getattr(self, k) for k in ("best", "max_seen", "wait", "lr_wait", "lr_scale", "history")}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""
        for k, v in state.items():
            setattr(self, k, list(v) if k == "history" else v)


def canary_max_bits(length: int, alphabet_size: np.ndarray | int) -> np.ndarray:
    """(S−1)·log2 A: the information content in bits of a uniform random sequence beyond its first token."""
    return (length - 1) * np.log2(np.asarray(alphabet_size, dtype=np.float64))
