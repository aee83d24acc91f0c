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

Only ``numpy.random.default_rng(seed)`` is used for randomness, so the same arguments give
byte-identical texts and identical tables.

Modules
-------
* :mod:`~densitylab.data.synthetic.vocab`: the embedded name, city, university, major and company lists.
* :mod:`~densitylab.data.synthetic.people`: people, attributes and the Zipf exposure schedule.
* :mod:`~densitylab.data.synthetic.render`: templates and the biography renderer (:class:`Span` records).
* :mod:`~densitylab.data.synthetic.truth`: span and ground-truth tables.
* :mod:`~densitylab.data.synthetic.generate`: :func:`generate_synthetic`, which ties them together.
"""

from densitylab.data.synthetic.generate import check_synthetic_args, generate_synthetic
from densitylab.data.synthetic.people import Population, max_people, sample_population, zipf_doc_counts
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
    "FEMALE_FIRST_NAMES",
    "LAST_NAMES",
    "MAJORS",
    "MALE_FIRST_NAMES",
    "MIDDLE_NAMES",
    "MONTHS",
    "TEMPLATES",
    "UNIVERSITIES",
    "Population",
    "Renderer",
    "Span",
    "Uniforms",
    "check_synthetic_args",
    "generate_synthetic",
    "max_people",
    "sample_population",
    "zipf_doc_counts",
    "_PRONOUNS",
]
