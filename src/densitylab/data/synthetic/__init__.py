"""The synthetic familiarity corpus: bioS-style biographies with Zipf-distributed exposure.

This module generates, deterministically from a seed and without any network access, a corpus of
short synthetic biographies in the style of the bioS data set introduced by Allen-Zhu & Li, "Physics of
Language Models: Part 3.1, Knowledge Storage and Extraction" (arXiv:2309.14316; Part 3.3, arXiv:2404.05405,
is the knowledge-capacity paper that reuses it).

The corpus
----------
* **People.** ``n_people`` *familiar* people plus ``round(unfamiliar_frac * n_people)``
  *unfamiliar* people, each with a unique full name "First Middle Last", a gender (for pronouns)
  and six attributes: ``birth_date``, ``birth_city``, ``university``, ``major``, ``employer`` and
  ``employer_city`` (the latter is fixed by the employer: each company has one headquarters city,
  as in bioS).
* **Exposure.** Familiar people get a popularity rank ``1..n_people`` (a seeded random
  permutation, so entity id and rank are uncorrelated). A person of rank ``r`` receives
  ``max(min_docs, round(max_docs * r ** -zipf_exponent))`` training documents
  (:func:`zipf_doc_counts`), so familiarity spans 1 to ``max_docs`` exposures. Unfamiliar people
  receive **zero** training documents and appear only in the ``unfamiliar`` probe split.
* **Documents.** Each document is one biography of its subject: exactly one sentence per
  attribute (each rendered from one of six paraphrase templates, chosen at random per document)
  plus one co-mention sentence ("X worked with Y and Z.") naming ``k`` other familiar people,
  ``k`` uniform in the inclusive range ``comentions``; the other people are drawn without
  replacement (never the subject) with probability proportional to their planned training
  documents, i.e. from the same Zipf prior. Sentence order is shuffled per document. The first
  sentence always names the subject in full; later sentences use the full name or a pronoun,
  as the chosen template decides (half of the templates use the full name).
* **Splits.** ``train`` holds all planned training documents (shuffled); ``heldout`` holds
  ``heldout_docs_per_person`` fresh paraphrases per familiar person (never identical to a train
  document); ``unfamiliar`` holds ``max(1, heldout_docs_per_person)`` documents per unfamiliar
  person.
* **Spans.** Every inserted full name (subject or co-mentioned, ``kind="name"``) and attribute
  value (``kind`` = attribute name, ``entity`` = the subject) is recorded with exact character
  offsets tracked while rendering (:data:`densitylab.data.corpus.SPAN_COLUMNS`).
* **Ground truth.** ``people`` (the entity table), ``mentions_{split}`` (documents and name
  mentions per person), ``comentions_{split}`` (documents mentioning each unordered pair) and
  ``exposure_{split}`` (per person: documents about them, name mentions, and the part of those in
  other people's documents; what one epoch of the exposure ledger must count).

Only ``numpy.random`` generators seeded from the arguments are used for randomness, so the same arguments
give byte-identical texts and identical tables.

Counterbalanced corpora (``rank_seed``)
---------------------------------------
With ``rank_seed=None`` (the default) everything above comes from one ``numpy.random.default_rng(seed)``,
so one corpus seed gives one corpus, the same people always holding the same ranks. An integer
``rank_seed`` ``r >= 0`` (``data.rank_seed`` in ``conf/``) gives a family of corpora that differ only in
*who* is familiar (:mod:`~densitylab.data.synthetic.ranks`):

* **People** (names, genders, attributes) are exactly those of ``rank_seed=None``: drawn first from
  ``default_rng(seed)``.
* **Ranks** are permuted over *all* ``n_people + round(unfamiliar_frac * n_people)`` people by
  ``default_rng([seed, RANK_STREAM, r])``: who holds ranks ``1..n_people`` (Zipf documents as above) and who
  gets zero training documents, so a person may be zero-exposure in one corpus and familiar in another.
* **Training documents** are planned and rendered as above from ``default_rng([seed, TRAIN_STREAM, r])``
  (co-mentions proportional to planned documents, over the familiar people).
* **Held-out biographies are rank-independent**: every person ``p`` gets ``max(1, heldout_docs_per_person)``
  biographies rendered from their own ``default_rng([seed, HELDOUT_STREAM, p])``, co-mentioning people drawn
  uniformly over all other people. ``heldout`` holds the familiar people's (``heldout_docs_per_person``
  each), ``unfamiliar`` the zero-exposure people's, both in entity-id order; so a person's held-out text is
  the same in every corpus of the family. (A biography equal to a training document is re-rendered from the
  same stream until it differs: astronomically rare, and the only way it could depend on ``r``.)
* **One tokenizer**: ``Corpus.tokenizer_texts`` holds each person's first held-out biography (entity-id
  order, before any re-rendering), which the data preparation trains the tokenizer on instead of the
  training split, so ``tokenizer.json`` is byte-equal across rank seeds.
* **Latin square** (``latin_square``, :class:`~densitylab.data.synthetic.ranks.LatinSquare`, needs an
  integer ``rank_seed``): ``3 * group_size`` study persons drawn by ``default_rng([seed, LATIN_STREAM])``
  (independent of ``r``) and split into groups 0, 1, 2. In corpus ``k = r % 3`` group ``k`` takes the ranks
  ``high_ranks`` (default 1-64: 1,000 down to 16 documents), group ``(k + 1) % 3`` the ranks ``low_ranks``
  (default 401-464: 2 documents each) and group ``(k + 2) % 3`` zero documents; everyone else's ranks and zero
  slots are permuted by the rank stream. Over ``r = 0, 1, 2`` every study person is seen at every level
  once. The entity table gains ``study_group`` (int64, -1 outside the study) and ``study_level``
  (``"high"``, ``"low"``, ``"zero"``, ``""`` outside the study); the person panel takes every study person.

Modules
-------
* :mod:`~densitylab.data.synthetic.vocab`: the embedded name, city, university, major and company lists.
* :mod:`~densitylab.data.synthetic.people`: people, attributes and the Zipf exposure schedule.
* :mod:`~densitylab.data.synthetic.ranks`: counterbalanced ranks (``rank_seed``), the Latin square and the
  stream constants.
* :mod:`~densitylab.data.synthetic.render`: templates and the biography renderer (:class:`Span` records).
* :mod:`~densitylab.data.synthetic.truth`: span and ground-truth tables.
* :mod:`~densitylab.data.synthetic.generate`: :func:`generate_synthetic`, which ties them together.
"""

from densitylab.data.synthetic.generate import check_synthetic_args, generate_synthetic
from densitylab.data.synthetic.people import (
    Population,
    max_people,
    population_from_ranks,
    sample_identities,
    sample_population,
    zipf_doc_counts,
)
from densitylab.data.synthetic.ranks import (
    HELDOUT_STREAM,
    LATIN_STREAM,
    RANK_STREAM,
    STUDY_LEVELS,
    TRAIN_STREAM,
    LatinSquare,
    counterbalanced_ranks,
    latin_groups,
)
from densitylab.data.synthetic.render import _PRONOUNS, COMENTION_TEMPLATES, TEMPLATES, Renderer, Span, Uniforms
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

__all__ = [
    "ATTRIBUTES",
    "CITIES",
    "COMENTION_TEMPLATES",
    "COMPANIES",
    "HELDOUT_STREAM",
    "LATIN_STREAM",
    "FEMALE_FIRST_NAMES",
    "LAST_NAMES",
    "MAJORS",
    "MALE_FIRST_NAMES",
    "MIDDLE_NAMES",
    "MONTHS",
    "RANK_STREAM",
    "STUDY_LEVELS",
    "TEMPLATES",
    "TRAIN_STREAM",
    "UNIVERSITIES",
    "LatinSquare",
    "Population",
    "Renderer",
    "Span",
    "Uniforms",
    "check_synthetic_args",
    "counterbalanced_ranks",
    "generate_synthetic",
    "latin_groups",
    "max_people",
    "population_from_ranks",
    "sample_identities",
    "sample_population",
    "zipf_doc_counts",
    "_PRONOUNS",
]
