"""Counterbalanced familiarity: popularity ranks permuted by a ``rank_seed``, and the Latin square.

With ``rank_seed=None`` the synthetic corpus draws its people, ranks, plans and texts from one
``numpy.random.default_rng(seed)`` (:func:`densitylab.data.synthetic.people.sample_population`). With an
integer ``rank_seed`` ``r`` the same people (identities drawn first from ``default_rng(seed)``, exactly as
then) get their popularity ranks from a stream of their own, so one corpus seed gives a family of corpora
that differ only in *who* is familiar:

- ranks: ``default_rng([seed, RANK_STREAM, r])`` (:func:`counterbalanced_ranks`) decides, over **all**
  people, who holds ranks ``1..n_people`` and who gets zero training documents;
- training documents: ``default_rng([seed, TRAIN_STREAM, r])`` plans and renders them;
- held-out biographies: person ``p``'s own ``default_rng([seed, HELDOUT_STREAM, p])``, independent of ``r``;
- the Latin square's study groups: ``default_rng([seed, LATIN_STREAM])``, independent of ``r``.

Each constant is the ASCII of its name read as a big-endian integer (as
:data:`densitylab.probes.panel.PANEL_STREAM`), so no two streams coincide.

The Latin square (:class:`LatinSquare`) puts ``n_groups = 3`` groups of ``group_size`` people through the
three exposure levels over three corpora: in corpus ``k = rank_seed % 3`` group ``k`` takes the ranks
``high_ranks``, group ``(k + 1) % 3`` the ranks ``low_ranks`` and group ``(k + 2) % 3`` zero training
documents, so over ``rank_seed = 0, 1, 2`` every study person is seen at every level once.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields

import numpy as np

#: Stream word of the popularity ranks ("rank"): ``default_rng([seed, RANK_STREAM, rank_seed])``.
RANK_STREAM = 0x72616E6B
#: Stream word of the training documents ("train"): ``default_rng([seed, TRAIN_STREAM, rank_seed])``.
TRAIN_STREAM = 0x747261696E
#: Stream word of the held-out biographies ("heldout"): ``default_rng([seed, HELDOUT_STREAM, entity_id])``.
HELDOUT_STREAM = 0x68656C646F7574
#: Stream word of the Latin square's study groups ("latin"): ``default_rng([seed, LATIN_STREAM])``.
LATIN_STREAM = 0x6C6174696E

#: ``study_level`` of each group offset: group ``(k + j) % 3`` of corpus ``k`` is at level ``STUDY_LEVELS[j]``.
STUDY_LEVELS = ("high", "low", "zero")


def _is_int(x: object) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _rank_range(value: object, key: str) -> tuple[int, int]:
    """An inclusive ``[first, last]`` rank range as a tuple, or a one-line ValueError."""
    if (
        isinstance(value, (str, bytes, Mapping))
        or not hasattr(value, "__len__")
        or len(value) != 2
        or not all(_is_int(v) for v in value)
        or not (1 <= value[0] <= value[1])
    ):
        raise ValueError(
            f"latin_square.{key}={_show(value)}: expected an inclusive rank range [first, last] of integers with "
            "1 <= first <= last"
        )
    return int(value[0]), int(value[1])


def _show(value: object) -> str:
    return repr(list(value)) if isinstance(value, tuple) or type(value).__name__ == "ListConfig" else repr(value)


@dataclass(frozen=True)
class LatinSquare:
    """The Latin square of study persons (``data.source.latin_square``; only with an integer ``rank_seed``).

    Attributes:
        n_groups: number of study groups; must be 3 (one per exposure level: high, low, zero).
        group_size: persons per group, ``>= 1`` and at most the number of zero-exposure people.
        high_ranks: inclusive ``(first, last)`` ranks of the high-exposure group, ``last - first + 1 ==
            group_size`` (at the defaults ranks 1-64: 1,000 down to 16 training documents).
        low_ranks: inclusive ``(first, last)`` ranks of the low-exposure group, after ``high_ranks`` and
            ``group_size`` long (at the defaults ranks 401-464: 2 training documents each).

    Raises:
        ValueError: one line naming the bad field and what was expected (the corpus-size checks are in
            :meth:`check`).
    """

    n_groups: int = 3
    group_size: int = 64
    high_ranks: tuple[int, int] = (1, 64)
    low_ranks: tuple[int, int] = (401, 464)

    def __post_init__(self) -> None:
        if not _is_int(self.n_groups) or self.n_groups != 3:
            raise ValueError(
                f"latin_square.n_groups={self.n_groups!r}: expected 3 (one group per exposure level: high, low, zero)"
            )
        if not _is_int(self.group_size) or self.group_size < 1:
            raise ValueError(f"latin_square.group_size={self.group_size!r}: expected an integer >= 1")
        for key in ("high_ranks", "low_ranks"):
            first, last = _rank_range(getattr(self, key), key)
            object.__setattr__(self, key, (first, last))
            if last - first + 1 != self.group_size:
                raise ValueError(
                    f"latin_square.{key}=[{first}, {last}] holds {last - first + 1} ranks: expected group_size="
                    f"{self.group_size} ranks"
                )
        if self.high_ranks[1] >= self.low_ranks[0]:
            raise ValueError(
                f"latin_square.high_ranks={list(self.high_ranks)} and low_ranks={list(self.low_ranks)}: expected "
                "disjoint ranges with every high rank before every low rank"
            )
        object.__setattr__(self, "n_groups", int(self.n_groups))
        object.__setattr__(self, "group_size", int(self.group_size))

    @classmethod
    def from_config(cls, value: object) -> LatinSquare | None:
        """A :class:`LatinSquare` from ``None`` (none), an instance, or a mapping of some of its fields (a YAML
        dict; missing fields take the defaults).

        Raises:
            ValueError: for another type, an unknown key or a bad field (one line).
        """
        if value is None or isinstance(value, cls):
            return value
        if not isinstance(value, Mapping) and type(value).__name__ != "DictConfig":
            raise ValueError(
                f"latin_square={value!r}: expected null or a mapping with n_groups, group_size, high_ranks, low_ranks"
            )
        known = [f.name for f in fields(cls)]
        unknown = sorted(str(k) for k in value.keys() if k not in known)
        if unknown:
            raise ValueError(f"latin_square has unknown keys {unknown}: expected some of {known}")
        return cls(**{str(k): value[k] for k in value.keys()})

    def as_dict(self) -> dict:
        """The fields as a JSON-able dict (ranges as lists)."""
        d = asdict(self)
        return {**d, "high_ranks": list(self.high_ranks), "low_ranks": list(self.low_ranks)}

    @property
    def n_study(self) -> int:
        """Study persons in all: ``n_groups * group_size``."""
        return self.n_groups * self.group_size

    def check(self, n_people: int, n_unfamiliar: int) -> None:
        """Check the square against a corpus of ``n_people`` familiar and ``n_unfamiliar`` zero-exposure people.

        Raises:
            ValueError: one line, when a rank range leaves ``1..n_people``, ``group_size`` exceeds the
                zero-exposure people or the study persons exceed all people.
        """
        for key in ("high_ranks", "low_ranks"):
            first, last = getattr(self, key)
            if last > n_people:
                raise ValueError(f"latin_square.{key}=[{first}, {last}]: expected ranks inside 1..n_people={n_people}")
        if self.group_size > n_unfamiliar:
            raise ValueError(
                f"latin_square.group_size={self.group_size} exceeds the {n_unfamiliar} zero-exposure people "
                f"(round(unfamiliar_frac * n_people)): expected group_size <= {n_unfamiliar}"
            )
        total = n_people + n_unfamiliar
        if self.n_study > total:
            raise ValueError(
                f"latin_square: n_groups * group_size = {self.n_study} study persons exceed the {total} people: "
                f"expected at most {total}"
            )


def latin_groups(seed: int, total: int, square: LatinSquare) -> np.ndarray:
    """The study groups: ``n_groups * group_size`` distinct entity ids drawn from all ``total`` people by
    ``default_rng([seed, LATIN_STREAM])`` (independent of ``rank_seed``), split into consecutive groups.

    Returns:
        (n_groups, group_size) int64 entity ids; row ``g`` is group ``g``.
    """
    rng = np.random.default_rng([seed, LATIN_STREAM])
    ids = rng.permutation(total)[: square.n_study].astype(np.int64)
    return ids.reshape(square.n_groups, square.group_size)


def counterbalanced_ranks(
    seed: int, rank_seed: int, n_people: int, n_unfamiliar: int, square: LatinSquare | None = None
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Popularity ranks of corpus ``rank_seed``: who holds ranks ``1..n_people`` and who gets zero exposure.

    Without a square, ``default_rng([seed, RANK_STREAM, rank_seed])`` permutes all ``total = n_people +
    n_unfamiliar`` people; the first ``n_people`` of the permutation take ranks ``1..n_people`` in order.
    With a square, in corpus ``k = rank_seed % 3`` group ``k`` (:func:`latin_groups`) takes ``high_ranks``
    (permuted among its persons by the rank stream), group ``(k + 1) % 3`` ``low_ranks`` (likewise) and group
    ``(k + 2) % 3`` zero exposure; the remaining ranks and zero slots go to everyone else in a random order
    of the same stream. Arguments are assumed valid (:meth:`LatinSquare.check`).

    Returns:
        ``(rank, study_group, study_level)``: (total,) int64 ranks (0 = zero exposure); with a square also
        (total,) int64 study groups (-1 for non-study persons) and (total,) object levels (``"high"``,
        ``"low"``, ``"zero"``; ``""`` for non-study persons), else ``None`` twice.
    """
    total = n_people + n_unfamiliar
    rng = np.random.default_rng([seed, RANK_STREAM, rank_seed])
    rank = np.zeros(total, dtype=np.int64)
    if square is None:
        order = rng.permutation(total)
        rank[order[:n_people]] = np.arange(1, n_people + 1, dtype=np.int64)
        return rank, None, None
    groups = latin_groups(seed, total, square)
    k = rank_seed % square.n_groups
    study_group = np.full(total, -1, dtype=np.int64)
    study_level = np.full(total, "", dtype=object)
    for j, level in enumerate(STUDY_LEVELS):
        g = (k + j) % square.n_groups
        study_group[groups[g]] = g
        study_level[groups[g]] = level
    high, low = groups[k], groups[(k + 1) % square.n_groups]
    high_ranks = np.arange(square.high_ranks[0], square.high_ranks[1] + 1, dtype=np.int64)
    low_ranks = np.arange(square.low_ranks[0], square.low_ranks[1] + 1, dtype=np.int64)
    rank[high] = rng.permutation(high_ranks)
    rank[low] = rng.permutation(low_ranks)
    others = np.flatnonzero(study_group < 0)
    taken = np.zeros(n_people + 1, dtype=bool)
    taken[high_ranks] = taken[low_ranks] = True
    slots = np.concatenate([np.flatnonzero(~taken[1:]) + 1, np.zeros(n_unfamiliar - square.group_size, np.int64)])
    rank[others] = rng.permutation(slots)
    return rank, study_group, study_level
