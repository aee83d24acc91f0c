"""The synthetic corpus generator: validate the arguments, draw the people, plan and render every
split's documents, and build the ground-truth tables (see :mod:`densitylab.data.synthetic`). With an integer
``rank_seed`` the ranks, training documents and held-out biographies come from separate streams
(:mod:`densitylab.data.synthetic.ranks`)."""

from __future__ import annotations

import numbers

import numpy as np
import pandas as pd

from densitylab.data.corpus import Corpus
from densitylab.data.synthetic.people import (
    Population,
    _check_zipf,
    _is_int,
    max_people,
    population_from_ranks,
    sample_identities,
    sample_population,
)
from densitylab.data.synthetic.ranks import (
    HELDOUT_STREAM,
    TRAIN_STREAM,
    LatinSquare,
    counterbalanced_ranks,
)
from densitylab.data.synthetic.render import Renderer, Span, Uniforms
from densitylab.data.synthetic.truth import ground_truth_tables, spans_frame

#: Split names of the synthetic corpus, in generation order.
SYNTHETIC_SPLITS = ("train", "heldout", "unfamiliar")

#: Chunk of each person's held-out :class:`Uniforms` stream (a biography reads about 20 draws).
HELDOUT_CHUNK = 64


def check_synthetic_args(
    n_people: int,
    unfamiliar_frac: float,
    zipf_exponent: float,
    max_docs: int,
    min_docs: int,
    heldout_docs_per_person: int,
    comentions: tuple[int, int],
    seed: int,
    rank_seed: int | None = None,
    latin_square: LatinSquare | dict | None = None,
) -> LatinSquare | None:
    """Validate the arguments of :func:`generate_synthetic` (same meaning) without generating anything.

    Returns:
        The checked Latin square (:meth:`LatinSquare.from_config` of ``latin_square``), or None.

    Raises:
        ValueError: on an invalid argument (the message names the value and what was expected),
            including more people than the embedded name lists can make unique, a ``rank_seed`` that is
            not an integer >= 0, and a Latin square that is malformed, does not fit the corpus or comes
            without an integer ``rank_seed``.
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
    if rank_seed is not None and (not _is_int(rank_seed) or rank_seed < 0):
        raise ValueError(f"rank_seed={rank_seed!r}: expected null or an integer >= 0")
    square = LatinSquare.from_config(latin_square)
    if square is not None:
        if rank_seed is None:
            raise ValueError(
                "latin_square is set but rank_seed is null: expected an integer rank_seed (data.rank_seed=0, 1, 2 "
                "give the square's three corpora)"
            )
        square.check(n_people, n_unfamiliar)
    return square


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


def render_heldout_biographies(
    renderer: Renderer, seed: int, n_docs: int, train_set: set[str], progress_bar=None
) -> tuple[list[list[str]], list[list[Span]], list[str]]:
    """The rank-independent held-out biographies of a counterbalanced corpus: ``n_docs`` per person.

    Person ``p`` (every entity id of ``renderer.names``, in order) is rendered from its own stream
    ``default_rng([seed, HELDOUT_STREAM, p])`` by ``renderer`` (co-mentions uniform over all other people,
    :meth:`Renderer.uniform`), so the text depends on the corpus seed and ``p`` only. A biography equal to a
    training document (``train_set``) is re-rendered from the same stream, continuing it, until it differs
    (astronomically rare: the only way a held-out text can depend on ``rank_seed``).

    Args:
        renderer: a :meth:`Renderer.uniform` renderer over all people (its own stream is never read).
        seed: the corpus seed.
        n_docs: biographies per person, ``>= 1``.
        train_set: the training documents' texts.
        progress_bar: a ``tqdm`` bar advanced by ``n_docs`` per person, or None.

    Returns:
        ``(texts, spans, tokenizer_texts)``: per person, their ``n_docs`` biographies and the spans of each
        (``doc`` = the biography's index within the person, to be renumbered by the caller); and per person
        the first rendering of their first biography (before any re-rendering: strictly rank-independent).
    """
    texts: list[list[str]] = []
    spans: list[list[Span]] = []
    tokenizer_texts: list[str] = []
    for p in range(len(renderer.names)):
        r = renderer.with_draw(Uniforms(np.random.default_rng([seed, HELDOUT_STREAM, p]), chunk=HELDOUT_CHUNK))
        mine: list[str] = []
        records: list[Span] = []
        for j in range(n_docs):
            mark = len(records)
            text = r.render(p, j, records)
            if j == 0:
                tokenizer_texts.append(text)
            while text in train_set:  # fresh paraphrase from the same stream, never a training document
                del records[mark:]
                text = r.render(p, j, records)
            mine.append(text)
        texts.append(mine)
        spans.append(records)
        if progress_bar is not None:
            progress_bar.update(n_docs)
    return texts, spans, tokenizer_texts


def _assemble_split(
    ids: np.ndarray, n_each: int, texts: list[list[str]], spans: list[list[Span]]
) -> tuple[np.ndarray, list[str], pd.DataFrame]:
    """The first ``n_each`` held-out biographies of every person of ``ids`` (entity-id order) as one split:
    (subjects, texts, span table with ``doc`` renumbered to the split)."""
    subjects = np.repeat(np.asarray(ids, dtype=np.int64), n_each)
    out: list[str] = []
    records: list[Span] = []
    for p in np.asarray(ids).tolist():
        base = len(out)
        out.extend(texts[p][:n_each])
        records.extend(s._replace(doc=base + s.doc) for s in spans[p] if s.doc < n_each)
    return subjects, out, spans_frame(records)


def _generate_counterbalanced(
    n_people: int,
    n_unfamiliar: int,
    zipf_exponent: float,
    max_docs: int,
    min_docs: int,
    heldout_docs_per_person: int,
    comentions: tuple[int, int],
    seed: int,
    rank_seed: int,
    square: LatinSquare | None,
    progress: bool,
) -> Corpus:
    """The corpus of an integer ``rank_seed`` (see :func:`generate_synthetic`); arguments checked."""
    total = n_people + n_unfamiliar
    names, genders, attrs = sample_identities(np.random.default_rng(seed), total)
    rank, study_group, study_level = counterbalanced_ranks(seed, rank_seed, n_people, n_unfamiliar, square)
    extra = None if square is None else {"study_group": study_group, "study_level": study_level}
    people = population_from_ranks(names, genders, attrs, rank, zipf_exponent, max_docs, min_docs, extra)
    familiar = people.familiar_ids
    n_heldout = max(1, heldout_docs_per_person)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=int(people.planned.sum()) + n_heldout * total, desc="synthetic corpus", unit="doc")
    try:
        rng = np.random.default_rng([seed, TRAIN_STREAM, rank_seed])
        train_subjects = rng.permutation(np.repeat(familiar, people.planned[familiar]))
        renderer = Renderer(names, genders, attrs, familiar, people.planned[familiar], comentions, Uniforms(rng))
        train_records: list[Span] = []
        train = []
        for doc, subj in enumerate(train_subjects.tolist()):
            train.append(renderer.render(subj, doc, train_records))
            if bar is not None:
                bar.update(1)
        # the held-out renderer's stream is replaced per person (render_heldout_biographies); this one is never read
        uniform = Renderer.uniform(names, genders, attrs, comentions, Uniforms(np.random.default_rng(0), chunk=1))
        bios, bio_spans, tokenizer_texts = render_heldout_biographies(uniform, seed, n_heldout, set(train), bar)
    finally:
        if bar is not None:
            bar.close()

    held_subjects, heldout, held_spans = _assemble_split(familiar, heldout_docs_per_person, bios, bio_spans)
    unf_subjects, unfamiliar, unf_spans = _assemble_split(people.unfamiliar_ids, n_heldout, bios, bio_spans)
    subjects = {"train": train_subjects, "heldout": held_subjects, "unfamiliar": unf_subjects}
    texts = {"train": train, "heldout": heldout, "unfamiliar": unfamiliar}
    spans = {"train": spans_frame(train_records), "heldout": held_spans, "unfamiliar": unf_spans}
    return Corpus(
        texts=texts,
        spans=spans,
        entities=people.entities,
        ground_truth=ground_truth_tables(people.entities, people.names, subjects, spans),
        name=f"synthetic(n_people={n_people}, seed={seed}, rank_seed={rank_seed})",
        tokenizer_texts=tokenizer_texts,
    )


def generate_synthetic(
    n_people: int = 2000,
    unfamiliar_frac: float = 0.1,
    zipf_exponent: float = 1.0,
    max_docs: int = 1000,
    min_docs: int = 1,
    heldout_docs_per_person: int = 1,
    comentions: tuple[int, int] = (1, 2),
    seed: int = 0,
    rank_seed: int | None = None,
    latin_square: LatinSquare | dict | None = None,
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
        rank_seed: None (default): everything from ``default_rng(seed)``, as before rank seeds existed.
            An integer ``r >= 0``: the same people (names, genders, attributes), with popularity ranks over
            all people permuted by ``default_rng([seed, RANK_STREAM, r])`` (who is familiar changes with
            ``r``); training documents from ``default_rng([seed, TRAIN_STREAM, r])``; every person's
            held-out biographies from their own rank-independent stream (co-mentions uniform over all other
            people), the ``heldout`` split holding the familiar people's (``heldout_docs_per_person`` each,
            entity-id order) and ``unfamiliar`` the zero-exposure people's; ``Corpus.tokenizer_texts`` set
            to one held-out biography per person. See :mod:`densitylab.data.synthetic.ranks`.
        latin_square: None, or a :class:`~densitylab.data.synthetic.ranks.LatinSquare` (or a mapping of
            its fields): study groups that take the square's ranks in corpus ``rank_seed % 3``; needs an
            integer ``rank_seed``. Adds the entity columns ``study_group`` and ``study_level``.
        progress: show a ``tqdm`` progress bar over documents.

    Returns:
        :class:`~densitylab.data.corpus.Corpus` with splits ``train`` / ``heldout`` /
        ``unfamiliar``, their span tables (character offsets, one row per inserted name or
        attribute value), the ``entities`` table (columns ``entity_id, entity, gender,
        birth_date, birth_city, university, major, employer, employer_city, rank,
        planned_docs, familiar``) and ground-truth tables ``people``, ``mentions_{split}``,
        ``comentions_{split}`` and ``exposure_{split}``. At defaults: about 8.2k training documents.
        With a Latin square the entity table (and ``people``) has two more columns: ``study_group``
        (int64, -1 for non-study persons, else ``0..n_groups-1``) and ``study_level`` (``"high"``,
        ``"low"``, ``"zero"``; ``""`` for non-study persons).

    Raises:
        ValueError: on an invalid argument (see :func:`check_synthetic_args`).
    """
    square = check_synthetic_args(
        n_people,
        unfamiliar_frac,
        zipf_exponent,
        max_docs,
        min_docs,
        heldout_docs_per_person,
        comentions,
        seed,
        rank_seed,
        latin_square,
    )
    lo, hi = int(comentions[0]), int(comentions[1])
    if rank_seed is not None:
        n_unfamiliar = int(round(unfamiliar_frac * n_people))
        return _generate_counterbalanced(
            n_people,
            n_unfamiliar,
            zipf_exponent,
            max_docs,
            min_docs,
            int(heldout_docs_per_person),
            (lo, hi),
            int(seed),
            int(rank_seed),
            square,
            progress,
        )
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
