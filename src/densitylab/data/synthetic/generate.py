"""The synthetic corpus generator: validate the arguments, draw the people, plan and render every
split's documents, and build the ground-truth tables (see :mod:`densitylab.data.synthetic`)."""

from __future__ import annotations

import numbers

import numpy as np
import pandas as pd

from densitylab.data.corpus import Corpus
from densitylab.data.synthetic.people import Population, _check_zipf, _is_int, max_people, sample_population
from densitylab.data.synthetic.render import Renderer, Span, Uniforms
from densitylab.data.synthetic.truth import ground_truth_tables, spans_frame

#: Split names of the synthetic corpus, in generation order.
SYNTHETIC_SPLITS = ("train", "heldout", "unfamiliar")


def check_synthetic_args(
    n_people: int,
    unfamiliar_frac: float,
    zipf_exponent: float,
    max_docs: int,
    min_docs: int,
    heldout_docs_per_person: int,
    comentions: tuple[int, int],
    seed: int,
) -> None:
    """Validate the arguments of :func:`generate_synthetic` (same meaning) without generating anything.

    Raises:
        ValueError: on an invalid argument (the message names the value and what was expected),
            including more people than the embedded name lists can make unique.
    """
    if not _is_int(n_people) or n_people < 1:
        raise ValueError(f"n_people must be an integer >= 1, got {n_people!r}")
    if (
        not isinstance(unfamiliar_frac, numbers.Real)
        or isinstance(unfamiliar_frac, bool)
        or not (0.0 <= unfamiliar_frac < 1.0)
    ):
        raise ValueError(f"unfamiliar_frac must be a number in [0, 1), got {unfamiliar_frac!r}")
    _check_zipf(zipf_exponent, max_docs, min_docs)
    if not _is_int(heldout_docs_per_person) or heldout_docs_per_person < 0:
        raise ValueError(f"heldout_docs_per_person must be an integer >= 0, got {heldout_docs_per_person!r}")
    if (
        not isinstance(comentions, (tuple, list))
        or len(comentions) != 2
        or not all(_is_int(c) for c in comentions)
        or not (0 <= comentions[0] <= comentions[1])
    ):
        raise ValueError(f"comentions must be a (lo, hi) pair of integers with 0 <= lo <= hi, got {comentions!r}")
    hi = int(comentions[1])
    if hi > n_people - 1:
        raise ValueError(
            f"comentions hi={hi} exceeds the {n_people - 1} other familiar people available "
            f"(n_people={n_people}); expected hi <= n_people - 1"
        )
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    n_unfamiliar = int(round(unfamiliar_frac * n_people))
    total = n_people + n_unfamiliar
    if total > max_people():
        raise ValueError(
            f"requested {total} people (n_people={n_people} + {n_unfamiliar} unfamiliar) but "
            f"only {max_people()} unique names are available"
        )


def plan_documents(rng: np.random.Generator, people: Population, heldout_docs_per_person: int) -> dict[str, np.ndarray]:
    """Subject (entity id) of every document per split, shuffled: ``train`` repeats each familiar person
    by their planned documents, ``heldout`` by ``heldout_docs_per_person``, ``unfamiliar`` each unfamiliar
    person ``max(1, heldout_docs_per_person)`` times."""
    familiar, planned = people.familiar_ids, people.planned
    return {
        "train": rng.permutation(np.repeat(familiar, planned[familiar])),
        "heldout": rng.permutation(np.repeat(familiar, heldout_docs_per_person)),
        "unfamiliar": rng.permutation(np.repeat(people.unfamiliar_ids, max(1, heldout_docs_per_person))),
    }


def render_splits(
    renderer: Renderer, subjects: dict[str, np.ndarray], progress: bool = False
) -> tuple[dict[str, list[str]], dict[str, pd.DataFrame]]:
    """Render every document of every split in order; a held-out document identical to a training one
    is re-rendered until it differs. Returns (texts per split, span table per split)."""
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(len(s) for s in subjects.values()), desc="synthetic corpus", unit="doc")
    texts: dict[str, list[str]] = {}
    spans: dict[str, pd.DataFrame] = {}
    train_set: set[str] = set()
    try:
        for split, split_subjects in subjects.items():
            out: list[str] = []
            records: list[Span] = []
            for doc, subj in enumerate(split_subjects.tolist()):
                mark = len(records)
                text = renderer.render(subj, doc, records)
                while split == "heldout" and text in train_set:  # fresh paraphrase, never in train
                    del records[mark:]
                    text = renderer.render(subj, doc, records)
                out.append(text)
                if bar is not None:
                    bar.update(1)
            if split == "train":
                train_set = set(out)
            texts[split] = out
            spans[split] = spans_frame(records)
    finally:
        if bar is not None:
            bar.close()
    return texts, spans


def generate_synthetic(
    n_people: int = 2000,
    unfamiliar_frac: float = 0.1,
    zipf_exponent: float = 1.0,
    max_docs: int = 1000,
    min_docs: int = 1,
    heldout_docs_per_person: int = 1,
    comentions: tuple[int, int] = (1, 2),
    seed: int = 0,
    progress: bool = False,
) -> Corpus:
    """Generate the synthetic familiarity corpus (bioS-style biographies, Zipf exposure).

    Biographies follow bioS of Allen-Zhu & Li, "Physics of Language Models: Part 3.1"
    (arXiv:2309.14316): six attributes per person, one sentence per attribute from six
    paraphrase templates, shuffled sentence order, plus a co-mention sentence naming other
    people. See :mod:`densitylab.data.synthetic` for the full description. The defaults equal
    ``conf/data/source/synthetic.yaml`` (checked by ``tests/test_data_config.py``).

    Args:
        n_people: familiar people (get training documents), ``>= 1``.
        unfamiliar_frac: unfamiliar people as a fraction of ``n_people`` (rounded), in
            ``[0, 1)``; they get zero training documents.
        zipf_exponent: exponent of the rank -> documents Zipf law, ``> 0``.
        max_docs: training documents of the rank-1 person, ``>= min_docs``.
        min_docs: floor on training documents per familiar person, ``>= 1``.
        heldout_docs_per_person: held-out documents per familiar person, ``>= 0``;
            unfamiliar people get ``max(1, heldout_docs_per_person)`` documents each.
        comentions: inclusive ``(lo, hi)`` range of other people named per document,
            ``0 <= lo <= hi <= n_people - 1``.
        seed: seed of ``numpy.random.default_rng``; same arguments -> identical output.
        progress: show a ``tqdm`` progress bar over documents.

    Returns:
        :class:`~densitylab.data.corpus.Corpus` with splits ``train`` / ``heldout`` /
        ``unfamiliar``, their span tables (character offsets, one row per inserted name or
        attribute value), the ``entities`` table (columns ``entity_id, entity, gender,
        birth_date, birth_city, university, major, employer, employer_city, rank,
        planned_docs, familiar``) and ground-truth tables ``people``, ``mentions_{split}``,
        ``comentions_{split}`` and ``exposure_{split}``. At defaults: about 8.2k training documents.

    Raises:
        ValueError: on an invalid argument (see :func:`check_synthetic_args`).
    """
    check_synthetic_args(
        n_people, unfamiliar_frac, zipf_exponent, max_docs, min_docs, heldout_docs_per_person, comentions, seed
    )
    lo, hi = int(comentions[0]), int(comentions[1])
    rng = np.random.default_rng(seed)
    people = sample_population(rng, n_people, int(round(unfamiliar_frac * n_people)), zipf_exponent, max_docs, min_docs)
    subjects = plan_documents(rng, people, heldout_docs_per_person)
    familiar = people.familiar_ids
    renderer = Renderer(
        people.names, people.genders, people.attrs, familiar, people.planned[familiar], (lo, hi), Uniforms(rng)
    )
    texts, spans = render_splits(renderer, subjects, progress)
    return Corpus(
        texts=texts,
        spans=spans,
        entities=people.entities,
        ground_truth=ground_truth_tables(people.entities, people.names, subjects, spans),
        name=f"synthetic(n_people={n_people}, seed={seed})",
    )
