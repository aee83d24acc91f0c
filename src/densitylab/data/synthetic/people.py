"""People of the synthetic corpus: unique names, genders, attributes, familiarity and Zipf exposure.

:func:`sample_population` draws everyone from one ``numpy.random.Generator`` in a fixed order (names,
birth dates, cities, universities, majors, employers, familiar set, popularity ranks), so the same
seed gives the same people. :func:`sample_identities` is its first part (the people without ranks), which a
counterbalanced corpus (``rank_seed``, :mod:`densitylab.data.synthetic.ranks`) shares with the default one;
:func:`population_from_ranks` turns ranks into planned documents and the entity table.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np
import pandas as pd

from densitylab.data.synthetic.vocab import (
    ATTRIBUTES,
    CITIES,
    COMPANIES,
    FEMALE_FIRST_NAMES,
    LAST_NAMES,
    MAJORS,
    MALE_FIRST_NAMES,
    MIDDLE_NAMES,
    MONTHS,
    UNIVERSITIES,
)


def _is_int(x: object) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def zipf_doc_counts(n: int, exponent: float, max_docs: int, min_docs: int = 1) -> np.ndarray:
    """Planned training documents per popularity rank under a Zipf law.

    For ranks ``r = 1..n`` returns ``max(min_docs, round(max_docs * r ** -exponent))`` (round
    half to even, as Python's ``round``), the exposure schedule of the synthetic familiarity
    corpus (bioS-style data of Allen-Zhu & Li, Physics of LMs 3.1, arXiv:2309.14316, with Zipf-distributed
    exposure instead of a fixed count).

    Args:
        n: number of ranks (people), ``>= 0``.
        exponent: Zipf exponent, ``> 0`` (1.0 = classic Zipf).
        max_docs: documents of rank 1 (before the ``min_docs`` floor), ``>= min_docs``.
        min_docs: floor on documents per rank, ``>= 1``.

    Returns:
        int64 array of shape ``(n,)``; entry ``r - 1`` is the count for rank ``r``.

    Raises:
        ValueError: on a negative ``n``, non-positive or non-finite ``exponent``,
            ``min_docs < 1`` or ``max_docs < min_docs``.
    """
    if not _is_int(n) or n < 0:
        raise ValueError(f"n must be an integer >= 0, got {n!r}")
    _check_zipf(exponent, max_docs, min_docs)
    ranks = np.arange(1, n + 1, dtype=np.float64)
    counts = np.rint(float(max_docs) * ranks ** (-float(exponent)))
    return np.maximum(counts, min_docs).astype(np.int64)


def _check_zipf(exponent: float, max_docs: int, min_docs: int) -> None:
    if (
        not isinstance(exponent, numbers.Real)
        or isinstance(exponent, bool)
        or not math.isfinite(exponent)
        or exponent <= 0
    ):
        raise ValueError(f"zipf exponent must be a finite number > 0, got {exponent!r}")
    if not _is_int(min_docs) or min_docs < 1:
        raise ValueError(f"min_docs must be an integer >= 1, got {min_docs!r}")
    if not _is_int(max_docs) or max_docs < min_docs:
        raise ValueError(f"max_docs must be an integer >= min_docs={min_docs}, got {max_docs!r}")


def _sample_people(rng: np.random.Generator, total: int) -> tuple[list[str], list[str]]:
    """Unique full names and genders for ``total`` people."""
    firsts = MALE_FIRST_NAMES + FEMALE_FIRST_NAMES
    n_f, n_m, n_l = len(firsts), len(MIDDLE_NAMES), len(LAST_NAMES)
    flat = rng.choice(n_f * n_m * n_l, size=total, replace=False)
    fi, rest = np.divmod(flat, n_m * n_l)
    mi, li = np.divmod(rest, n_l)
    names = [f"{firsts[a]} {MIDDLE_NAMES[b]} {LAST_NAMES[c]}" for a, b, c in zip(fi.tolist(), mi.tolist(), li.tolist())]
    genders = ["male" if a < len(MALE_FIRST_NAMES) else "female" for a in fi.tolist()]
    return names, genders


def _sample_dates(rng: np.random.Generator, total: int) -> list[str]:
    """Birth dates like "October 2, 1996", years 1900-2005, valid day of month."""
    years = rng.integers(1900, 2006, size=total).tolist()
    months = rng.integers(1, 13, size=total).tolist()
    u = rng.random(total).tolist()
    out = []
    for y, m, x in zip(years, months, u):
        if m == 2:
            leap = (y % 4 == 0 and y % 100 != 0) or y % 400 == 0
            dim = 29 if leap else 28
        else:
            dim = 30 if m in (4, 6, 9, 11) else 31
        d = min(int(x * dim), dim - 1) + 1
        out.append(f"{MONTHS[m - 1]} {d}, {y}")
    return out


def max_people() -> int:
    """Number of unique full names the embedded name lists can form."""
    return (len(MALE_FIRST_NAMES) + len(FEMALE_FIRST_NAMES)) * len(MIDDLE_NAMES) * len(LAST_NAMES)


@dataclass
class Population:
    """Everyone the corpus is about.

    Attributes:
        names: (total,) unique full names "First Middle Last"; the index is the entity id.
        genders: (total,) ``"male"`` / ``"female"`` (for pronouns).
        attrs: attribute name (:data:`ATTRIBUTES`) -> (total,) values.
        familiar_ids: (n_people,) sorted int64 entity ids of the familiar people.
        unfamiliar_ids: sorted int64 entity ids of the unfamiliar people (zero training documents).
        planned: (total,) int64 planned training documents per entity (0 for unfamiliar people).
        entities: the entity table: ``entity_id, entity, gender, *ATTRIBUTES, rank, planned_docs,
            familiar``.
    """

    names: list[str]
    genders: list[str]
    attrs: dict[str, list[str]]
    familiar_ids: np.ndarray
    unfamiliar_ids: np.ndarray
    planned: np.ndarray
    entities: pd.DataFrame


def sample_identities(rng: np.random.Generator, total: int) -> tuple[list[str], list[str], dict[str, list[str]]]:
    """Draw ``total`` people's identities from ``rng`` in the fixed order (names, birth dates, birth cities,
    universities, majors, employers): ``(names, genders, attrs)``, each of length ``total``; ``attrs`` maps
    every attribute of :data:`ATTRIBUTES` to its values. The first draws of :func:`sample_population`."""
    names, genders = _sample_people(rng, total)
    attrs: dict[str, list[str]] = {"birth_date": _sample_dates(rng, total)}
    attrs["birth_city"] = [CITIES[i] for i in rng.integers(0, len(CITIES), total).tolist()]
    attrs["university"] = [UNIVERSITIES[i] for i in rng.integers(0, len(UNIVERSITIES), total).tolist()]
    attrs["major"] = [MAJORS[i] for i in rng.integers(0, len(MAJORS), total).tolist()]
    company = rng.integers(0, len(COMPANIES), total).tolist()
    attrs["employer"] = [COMPANIES[i][0] for i in company]
    attrs["employer_city"] = [COMPANIES[i][1] for i in company]
    return names, genders, attrs


def population_from_ranks(
    names: list[str],
    genders: list[str],
    attrs: dict[str, list[str]],
    rank: np.ndarray,
    zipf_exponent: float,
    max_docs: int,
    min_docs: int,
    extra_columns: dict[str, object] | None = None,
) -> Population:
    """The :class:`Population` of people whose popularity ranks are ``rank``.

    Args:
        names, genders, attrs: identities (:func:`sample_identities`), ``total`` people.
        rank: (total,) int64 popularity rank per entity id, ``1..n_people`` each exactly once for the familiar
            people and 0 for the zero-exposure (unfamiliar) ones.
        zipf_exponent, max_docs, min_docs: the exposure schedule (:func:`zipf_doc_counts`).
        extra_columns: further entity-table columns (name -> (total,) values), appended after ``familiar``.
    """
    rank = np.asarray(rank, dtype=np.int64)
    familiar = rank > 0
    familiar_ids = np.flatnonzero(familiar).astype(np.int64)
    unfamiliar_ids = np.flatnonzero(~familiar).astype(np.int64)
    planned = np.zeros(len(rank), dtype=np.int64)
    counts = zipf_doc_counts(len(familiar_ids), zipf_exponent, max_docs, min_docs)
    planned[familiar_ids] = counts[rank[familiar_ids] - 1]
    entities = pd.DataFrame(
        {
            "entity_id": np.arange(len(rank), dtype=np.int64),
            "entity": names,
            "gender": genders,
            **{a: attrs[a] for a in ATTRIBUTES},
            "rank": rank,
            "planned_docs": planned,
            "familiar": familiar,
            **(extra_columns or {}),
        }
    )
    return Population(names, genders, attrs, familiar_ids, unfamiliar_ids, planned, entities)


def sample_population(
    rng: np.random.Generator, n_people: int, n_unfamiliar: int, zipf_exponent: float, max_docs: int, min_docs: int
) -> Population:
    """Draw ``n_people`` familiar and ``n_unfamiliar`` unfamiliar people with attributes, popularity
    ranks (a random permutation of ``1..n_people``) and planned training documents
    (:func:`zipf_doc_counts` of the rank), all from ``rng`` (the ``rank_seed=None`` corpus). Arguments are
    assumed valid (:func:`densitylab.data.synthetic.generate.check_synthetic_args`).
    """
    total = n_people + n_unfamiliar
    names, genders, attrs = sample_identities(rng, total)
    familiar_ids = np.sort(rng.permutation(total)[:n_people])
    rank = np.zeros(total, dtype=np.int64)
    rank[familiar_ids] = rng.permutation(n_people) + 1
    return population_from_ranks(names, genders, attrs, rank, zipf_exponent, max_docs, min_docs)
