"""Random-token canaries: memorization ground truth spliced into the training stream (Morris et al.,
"How much do language models memorize?", arXiv:2505.24832).

``data.canaries`` (a plain dict) sets them: ``repetitions`` (list; one group of ``per_group`` canaries
per count, each inserted that many times; ``[]`` = no canaries), ``per_group``, ``length`` (tokens per
canary) and ``alphabet_size``; an optional ``seed`` (default: the data seed).
"""

from __future__ import annotations

import numbers

import numpy as np
import pandas as pd

from densitylab.errors import ConfigError

#: Keys ``data.canaries`` must set when ``repetitions`` is not empty (``seed`` is optional).
CANARY_KEYS = ("repetitions", "per_group", "length", "alphabet_size")


def check_canary_config(canaries: dict | None) -> dict:
    """Return ``canaries`` as a dict (``{}`` for None), checking its keys.

    Raises:
        ConfigError: if it is not a mapping, has an unknown key, or (with repetitions) lacks one of
            :data:`CANARY_KEYS` or has a value out of range (repetitions counts >= 0, per_group >= 1,
            length >= 2, alphabet_size >= 2, all integers).
    """
    if canaries is None:
        return {}
    if not isinstance(canaries, dict):
        raise ConfigError(f"data.canaries={canaries!r}: expected a mapping with keys {', '.join(CANARY_KEYS)}")
    unknown = sorted(set(canaries) - {*CANARY_KEYS, "seed"})
    if unknown:
        raise ConfigError(f"data.canaries has unknown key(s) {unknown}: expected {', '.join(CANARY_KEYS)} (and seed)")
    missing = [k for k in CANARY_KEYS if k not in canaries]
    if canaries.get("repetitions") and missing:
        raise ConfigError(f"data.canaries lacks {missing}: expected all of {', '.join(CANARY_KEYS)}")
    if canaries.get("repetitions"):
        reps = canaries["repetitions"]
        if not isinstance(reps, (list, tuple)) or not all(_is_int(r) and r >= 0 for r in reps):
            raise ConfigError(f"data.canaries.repetitions={reps!r}: expected a list of integers >= 0")
        for key, low in (("per_group", 1), ("length", 2), ("alphabet_size", 2)):
            if not _is_int(canaries[key]) or canaries[key] < low:
                raise ConfigError(f"data.canaries.{key}={canaries[key]!r}: expected an integer >= {low}")
    return dict(canaries)


def check_canary_length(length: int, block_size: int) -> None:
    """A canary of ``length`` tokens fits one window of the model: ``length`` <= ``block_size`` + 1 (its
    ``length - 1`` next-token predictions are scored in one forward pass by the memorization probe).

    Raises:
        ConfigError: one line with both values.
    """
    if _is_int(length) and _is_int(block_size) and length - 1 > block_size:
        raise ConfigError(
            f"data.canaries.length={length}: expected <= model.net.block_size + 1 = {block_size + 1} (a canary is "
            "scored in one window)"
        )


def _is_int(x: object) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def make_canaries(
    vocab_size: int,
    eos_id: int,
    repetitions: list[int],
    per_group: int,
    length: int,
    alphabet_size: int,
    seed: int,
) -> pd.DataFrame:
    """Draw random-token canaries (memorization ground truth; Morris et al., arXiv:2505.24832).

    Each canary is ``length`` token ids drawn uniformly from a fixed random sub-alphabet of
    ``alphabet_size`` ids (never ``<|endoftext|>``); ``per_group`` canaries per repetition count.

    Returns:
        DataFrame with columns canary_id (int), repetitions (int: times inserted into training),
        alphabet_size (int), tokens (list of int).
    Raises:
        ConfigError: if the alphabet does not fit in the vocabulary or a value is invalid.
    """
    if alphabet_size < 2 or alphabet_size > vocab_size - 1:
        raise ConfigError(f"canaries.alphabet_size={alphabet_size}: expected 2..{vocab_size - 1} (vocab size - 1)")
    if length < 2:
        raise ConfigError(f"canaries.length={length}: expected >= 2 tokens")
    if any(int(r) < 0 for r in repetitions) or per_group < 1:
        raise ConfigError(
            f"canaries.repetitions={list(repetitions)} / per_group={per_group}: expected counts >= 0 and per_group >= 1"
        )
    rng = np.random.default_rng(seed)
    ids = np.setdiff1d(np.arange(vocab_size), [eos_id])
    alphabet = np.sort(rng.choice(ids, size=alphabet_size, replace=False))
    rows = []
    for r in repetitions:
        for _ in range(per_group):
            rows.append(
                {
                    "canary_id": len(rows),
                    "repetitions": int(r),
                    "alphabet_size": alphabet_size,
                    "tokens": alphabet[rng.integers(0, alphabet_size, size=length)].tolist(),
                }
            )
    return pd.DataFrame(rows)


def canary_insertions(canaries: pd.DataFrame, n_docs: int, seed: int) -> list[tuple[int, list[int]]]:
    """Where each canary copy goes: ``(position, tokens)`` per copy (canary by canary, ``repetitions``
    copies each), ``position`` uniform in ``0..n_docs`` (before training document ``position``; ``n_docs``
    = after the last), drawn from ``numpy.random.default_rng(seed)``."""
    rng = np.random.default_rng(seed)
    return [
        (int(rng.integers(0, n_docs + 1)), toks)
        for toks, r in zip(canaries["tokens"], canaries["repetitions"])
        for _ in range(r)
    ]
