"""The synthetic familiarity corpus: bioS-style biographies with Zipf-distributed exposure.

This module generates, deterministically from a seed and without any network access, a corpus of
short synthetic biographies in the style of the bioS data set of Allen-Zhu & Li, "Physics of
Language Models: Part 3.3, Knowledge Capacity Scaling Laws" (arXiv:2404.05405).

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
  mentions per person) and ``comentions_{split}`` (documents mentioning each unordered pair).

Only ``numpy.random.default_rng(seed)`` is used for randomness, so the same arguments give
byte-identical texts and identical tables.
"""

from __future__ import annotations

import bisect
import math
import numbers
import string
from collections.abc import Sequence

import numpy as np
import pandas as pd

from densitylab.data.corpus import SPAN_COLUMNS, Corpus, empty_spans

__all__ = [
    "ATTRIBUTES",
    "COMENTION_TEMPLATES",
    "TEMPLATES",
    "generate_synthetic",
    "max_people",
    "zipf_doc_counts",
]

# --------------------------------------------------------------------------------------------
# Embedded vocabularies (plain ASCII, no periods inside values so sentences split cleanly).
# --------------------------------------------------------------------------------------------

MALE_FIRST_NAMES = (
    "James", "John", "Robert", "Michael", "William", "David", "Richard", "Joseph", "Thomas",
    "Charles", "Daniel", "Matthew", "Anthony", "Mark", "Donald", "Steven", "Paul", "Andrew",
    "Joshua", "Kenneth", "Kevin", "Brian", "George", "Timothy", "Ronald", "Edward", "Jason",
    "Jeffrey", "Ryan", "Jacob", "Gary", "Nicholas", "Eric", "Jonathan", "Stephen", "Larry",
    "Justin", "Scott", "Brandon", "Benjamin",
)  # fmt: skip

FEMALE_FIRST_NAMES = (
    "Mary", "Patricia", "Jennifer", "Linda", "Elizabeth", "Barbara", "Susan", "Jessica", "Sarah",
    "Karen", "Lisa", "Nancy", "Betty", "Margaret", "Sandra", "Ashley", "Kimberly", "Emily",
    "Donna", "Michelle", "Carol", "Amanda", "Dorothy", "Melissa", "Deborah", "Stephanie",
    "Rebecca", "Sharon", "Laura", "Cynthia", "Kathleen", "Amy", "Angela", "Shirley", "Anna",
    "Brenda", "Pamela", "Emma", "Nicole", "Helen",
)  # fmt: skip

MIDDLE_NAMES = (
    "Alexander", "Avery", "Blake", "Cameron", "Casey", "Dakota", "Drew", "Elliot", "Emerson",
    "Finley", "Francis", "Harper", "Hayden", "Jamie", "Jesse", "Jordan", "Kai", "Kendall", "Lane",
    "Micah", "Logan", "Marion", "Noel", "Peyton", "Quinn", "Reese", "Riley", "Robin", "Rowan",
    "Sage", "Sawyer", "Shannon", "Skyler", "Spencer", "Sydney", "Tatum", "Terry", "Tracy", "Wren",
    "Ainsley", "Arden", "Dana", "Ellis", "Frankie", "Hollis", "Jules", "Emery", "Marlowe",
    "Oakley", "Remy",
)  # fmt: skip

LAST_NAMES = (
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez",
    "Martinez", "Hernandez", "Lopez", "Gonzalez", "Wilson", "Anderson", "Whitaker", "Holloway",
    "Moore", "Jackson", "Martin", "Lee", "Perez", "Thompson", "White", "Harris", "Sanchez",
    "Clark", "Ramirez", "Lewis", "Robinson", "Walker", "Young", "Allen", "King", "Wright",
    "Scott", "Torres", "Nguyen", "Hill", "Flores", "Green", "Adams", "Nelson", "Baker", "Hall",
    "Rivera", "Campbell", "Mitchell", "Sullivan", "Roberts", "Gomez", "Phillips", "Evans",
    "Turner", "Diaz", "Fletcher", "Cruz", "Edwards", "Collins", "Reyes", "Stewart", "Morris",
    "Morales", "Murphy", "Cook", "Rogers", "Gutierrez", "Ortiz", "Lindqvist", "Cooper",
    "Peterson", "Novak", "Reed", "Kelly", "Howard", "Ramos", "Kim", "Cox", "Ward", "Richardson",
    "Watson", "Brooks", "Chavez", "Wood", "Okafor", "Bennett", "Mendoza", "Ruiz", "Hughes",
    "Price", "Alvarez", "Castillo", "Sanders", "Patel", "Myers", "Long", "Ross", "Foster",
    "Jimenez", "Kowalski",
)  # fmt: skip

CITIES = (
    "New York", "Los Angeles", "Chicago", "Houston", "Phoenix", "Philadelphia", "San Antonio",
    "San Diego", "Dallas", "San Jose", "Austin", "Jacksonville", "Columbus", "Charlotte",
    "Indianapolis", "Seattle", "Denver", "Boston", "Nashville", "Detroit", "Portland", "Memphis",
    "Louisville", "Baltimore", "Milwaukee", "Albuquerque", "Tucson", "Fresno", "Sacramento",
    "Atlanta", "Omaha", "Raleigh", "Miami", "Minneapolis", "Tulsa", "Cleveland", "Pittsburgh",
    "Cincinnati", "Honolulu", "Anchorage", "Toronto", "Vancouver", "Montreal", "London", "Paris",
    "Berlin", "Madrid", "Rome", "Amsterdam", "Dublin", "Vienna", "Prague", "Stockholm", "Oslo",
    "Copenhagen", "Helsinki", "Lisbon", "Athens", "Warsaw", "Budapest", "Tokyo", "Seoul",
    "Sydney", "Melbourne", "Auckland", "Mumbai", "Singapore", "Cape Town", "Buenos Aires",
    "Mexico City",
)  # fmt: skip

UNIVERSITIES = (
    "Massachusetts Institute of Technology", "Stanford University", "Harvard University",
    "Princeton University", "Yale University", "Columbia University", "University of Chicago",
    "University of Pennsylvania", "California Institute of Technology",
    "Johns Hopkins University", "Northwestern University", "Duke University", "Brown University",
    "Cornell University", "Rice University", "Vanderbilt University", "Dartmouth College",
    "Carnegie Mellon University", "Georgetown University", "Emory University",
    "University of California Berkeley", "University of California Los Angeles",
    "University of Michigan", "University of Virginia", "University of North Carolina",
    "University of Texas at Austin", "University of Washington", "University of Wisconsin",
    "University of Illinois", "Georgia Institute of Technology", "Purdue University",
    "Ohio State University", "Pennsylvania State University", "University of Florida",
    "Boston University", "New York University", "University of Southern California",
    "Tufts University", "University of Rochester", "Case Western Reserve University",
    "University of Toronto", "McGill University", "University of Oxford",
    "University of Cambridge", "Imperial College London", "ETH Zurich",
)  # fmt: skip

MAJORS = (
    "Computer Science", "Mathematics", "Physics", "Chemistry", "Biology", "Economics",
    "Psychology", "Sociology", "Philosophy", "History", "English Literature", "Political Science",
    "Mechanical Engineering", "Electrical Engineering", "Civil Engineering",
    "Chemical Engineering", "Aerospace Engineering", "Biomedical Engineering",
    "Materials Science", "Statistics", "Neuroscience", "Biochemistry", "Geology", "Astronomy",
    "Anthropology", "Linguistics", "Architecture", "Nursing", "Accounting", "Finance",
    "Marketing", "Business Administration", "Communications", "Journalism", "Music",
    "Art History", "Environmental Science", "Public Health", "Education",
    "International Relations", "Industrial Engineering", "Molecular Biology", "Data Science",
    "Urban Planning", "Film Studies",
)  # fmt: skip

#: (company, headquarters city). The employer determines ``employer_city``, as in bioS.
COMPANIES = (
    ("Apple", "Cupertino"), ("Microsoft", "Redmond"), ("Alphabet", "Mountain View"),
    ("Amazon", "Seattle"), ("Meta Platforms", "Menlo Park"), ("Intel", "Santa Clara"),
    ("Nvidia", "Santa Clara"), ("Cisco Systems", "San Jose"), ("Oracle", "Austin"),
    ("IBM", "Armonk"), ("Boeing", "Arlington"), ("General Electric", "Boston"),
    ("Ford Motor Company", "Dearborn"), ("General Motors", "Detroit"), ("Coca-Cola", "Atlanta"),
    ("PepsiCo", "Purchase"), ("Procter & Gamble", "Cincinnati"),
    ("Johnson & Johnson", "New Brunswick"), ("Pfizer", "New York"),
    ("Goldman Sachs", "New York"), ("JPMorgan Chase", "New York"),
    ("Bank of America", "Charlotte"), ("Wells Fargo", "San Francisco"),
    ("Salesforce", "San Francisco"), ("Uber", "San Francisco"), ("Tesla", "Austin"),
    ("Dell Technologies", "Round Rock"), ("Texas Instruments", "Dallas"),
    ("ConocoPhillips", "Houston"), ("Walmart", "Bentonville"), ("Target", "Minneapolis"),
    ("3M", "Saint Paul"), ("Deere & Company", "Moline"), ("Nike", "Beaverton"),
    ("Starbucks", "Seattle"), ("Costco", "Issaquah"), ("Home Depot", "Atlanta"),
    ("Delta Air Lines", "Atlanta"), ("FedEx", "Memphis"), ("Lockheed Martin", "Bethesda"),
    ("Qualcomm", "San Diego"), ("Adobe", "San Jose"), ("Netflix", "Los Gatos"),
    ("PayPal", "San Jose"), ("Visa", "San Francisco"), ("Mastercard", "Purchase"),
    ("Siemens", "Munich"), ("BMW", "Munich"), ("Volkswagen", "Wolfsburg"), ("SAP", "Walldorf"),
    ("Nestle", "Vevey"), ("Novartis", "Basel"), ("Roche", "Basel"), ("Unilever", "London"),
    ("HSBC", "London"), ("Toyota", "Toyota City"), ("Sony", "Tokyo"),
    ("Samsung Electronics", "Suwon"), ("Philips", "Amsterdam"), ("Airbus", "Toulouse"),
    ("Spotify", "Stockholm"), ("Ericsson", "Stockholm"), ("Nokia", "Espoo"),
    ("Shopify", "Ottawa"),
)  # fmt: skip

MONTHS = (
    "January", "February", "March", "April", "May", "June", "July", "August", "September",
    "October", "November", "December",
)  # fmt: skip

#: Attribute names, in the column order of the entity table.
ATTRIBUTES = ("birth_date", "birth_city", "university", "major", "employer", "employer_city")

# --------------------------------------------------------------------------------------------
# Templates. Fields: {name} (subject's full name, a span), {He} {he} {His} {his} {him}
# (pronouns, not spans), attribute names (value spans), {others} (co-mentioned names, spans).
# Each list: first three use the full name, last three a pronoun.
# --------------------------------------------------------------------------------------------

#: attribute -> paraphrase templates (six each; the first three name the subject in full).
TEMPLATES: dict[str, tuple[str, ...]] = {
    "birth_date": (
        "{name} was born on {birth_date}.",
        "{name} came into the world on {birth_date}.",
        "{name}'s date of birth is {birth_date}.",
        "{He} was born on {birth_date}.",
        "{His} birthday is {birth_date}.",
        "{He} entered the world on {birth_date}.",
    ),
    "birth_city": (
        "{name} was born in {birth_city}.",
        "{name} spent {his} early years in {birth_city}.",
        "{name} is a native of {birth_city}.",
        "{He} was born in {birth_city}.",
        "{His} birthplace is {birth_city}.",
        "{He} grew up in {birth_city}.",
    ),
    "university": (
        "{name} studied at {university}.",
        "{name} graduated from {university}.",
        "{name} received {his} education at {university}.",
        "{He} attended {university}.",
        "{He} completed {his} degree at {university}.",
        "{His} alma mater is {university}.",
    ),
    "major": (
        "{name} majored in {major}.",
        "{name} focused {his} studies on {major}.",
        "{name} earned a degree in {major}.",
        "{He} majored in {major}.",
        "{His} field of study was {major}.",
        "{He} specialized in {major} at university.",
    ),
    "employer": (
        "{name} worked for {employer}.",
        "{name} was employed by {employer}.",
        "{name} built {his} career at {employer}.",
        "{He} worked for {employer}.",
        "{He} held a job at {employer}.",
        "{His} employer was {employer}.",
    ),
    "employer_city": (
        "{name} worked in {employer_city}.",
        "{name} was based in {employer_city} for work.",
        "{name} commuted to an office in {employer_city}.",
        "{He} worked in {employer_city}.",
        "{His} workplace was located in {employer_city}.",
        "{He} had an office in {employer_city}.",
    ),
}

#: Co-mention sentence templates (the first three name the subject in full).
COMENTION_TEMPLATES: tuple[str, ...] = (
    "{name} worked with {others}.",
    "{name} collaborated closely with {others}.",
    "{name} often exchanged ideas with {others}.",
    "{He} worked with {others}.",
    "{He} frequently collaborated with {others}.",
    "{His} close colleagues included {others}.",
)

_PRONOUNS = {
    "male": {"He": "He", "he": "he", "His": "His", "his": "his", "him": "him"},
    "female": {"He": "She", "he": "she", "His": "Her", "his": "her", "him": "her"},
}

# Piece kinds of a compiled template.
_LIT, _NAME, _PRON, _ATTR, _OTHERS = range(5)

# Cap on rejection-sampling attempts for one co-mention draw before an exact (renormalised) draw.
_MAX_REJECTIONS = 64


def _compile(template: str) -> tuple[tuple[int, str], ...]:
    """Split ``template`` into (piece kind, text-or-field) pieces, rejecting unknown fields."""
    pieces: list[tuple[int, str]] = []
    for literal, field_name, _spec, _conv in string.Formatter().parse(template):
        if literal:
            pieces.append((_LIT, literal))
        if field_name is None:
            continue
        if field_name == "name":
            pieces.append((_NAME, field_name))
        elif field_name in _PRONOUNS["male"]:
            pieces.append((_PRON, field_name))
        elif field_name in ATTRIBUTES:
            pieces.append((_ATTR, field_name))
        elif field_name == "others":
            pieces.append((_OTHERS, field_name))
        else:  # pragma: no cover - guards the embedded templates
            raise ValueError(f"unknown template field {field_name!r} in {template!r}")
    return tuple(pieces)


def _split_pool(templates: Sequence[str]) -> tuple[tuple, tuple]:
    """(all compiled templates, those that use the full name) for one sentence slot."""
    compiled = tuple(_compile(t) for t in templates)
    with_name = tuple(c for c in compiled if any(kind == _NAME for kind, _ in c))
    return compiled, with_name


# Sentence slots 0..5 are the attributes in ATTRIBUTES order; slot 6 is the co-mention sentence.
_POOLS = [_split_pool(TEMPLATES[a]) for a in ATTRIBUTES] + [_split_pool(COMENTION_TEMPLATES)]


class _Uniforms:
    """Sequential uniform [0, 1) draws from a numpy Generator, pre-drawn in chunks for speed."""

    def __init__(self, rng: np.random.Generator, chunk: int = 1 << 16) -> None:
        self._rng = rng
        self._chunk = chunk
        self._buf: list[float] = []
        self._i = 0

    def __call__(self) -> float:
        if self._i >= len(self._buf):
            self._buf = self._rng.random(self._chunk).tolist()
            self._i = 0
        u = self._buf[self._i]
        self._i += 1
        return u

    def index(self, n: int) -> int:
        """Uniform integer in ``[0, n)``."""
        return min(int(self() * n), n - 1)


def _is_int(x: object) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def zipf_doc_counts(n: int, exponent: float, max_docs: int, min_docs: int = 1) -> np.ndarray:
    """Planned training documents per popularity rank under a Zipf law.

    For ranks ``r = 1..n`` returns ``max(min_docs, round(max_docs * r ** -exponent))`` (round
    half to even, as Python's ``round``), the exposure schedule of the synthetic familiarity
    corpus (bioS-style data of Allen-Zhu & Li, arXiv:2404.05405, with Zipf-distributed
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


def _format_others(names: list[str]) -> list[tuple[str, int]]:
    """Render co-mentioned names as [(text, index into names or -1 for glue), ...]."""
    if len(names) == 1:
        return [(names[0], 0)]
    if len(names) == 2:
        return [(names[0], 0), (" and ", -1), (names[1], 1)]
    out: list[tuple[str, int]] = []
    for i, nm in enumerate(names):
        if i > 0:
            out.append((", and " if i == len(names) - 1 else ", ", -1))
        out.append((nm, i))
    return out


def _add_span(cols: list[list], doc: int, pos: int, value: str, kind: str, entity: int) -> None:
    """Append one span row (columns in SPAN_COLUMNS order) for ``value`` inserted at ``pos``."""
    cols[0].append(doc)
    cols[1].append(pos)
    cols[2].append(pos + len(value))
    cols[3].append(kind)
    cols[4].append(entity)
    cols[5].append(value)


class _Renderer:
    """Renders biographies and records spans with exact character offsets."""

    def __init__(
        self,
        names: list[str],
        genders: list[str],
        attrs: dict[str, list[str]],
        pool_ids: np.ndarray,
        pool_weights: np.ndarray,
        comentions: tuple[int, int],
        draw: _Uniforms,
    ) -> None:
        self.names = names
        self.pronouns = [_PRONOUNS[g] for g in genders]
        self.attrs = attrs
        self.pool_ids = pool_ids.tolist()
        self.pool_weights = pool_weights.astype(np.float64)
        self.cum = np.cumsum(pool_weights).astype(np.float64).tolist()
        self.total = self.cum[-1] if self.cum else 0.0
        self.lo, self.hi = comentions
        self.draw = draw

    def _draw_others(self, subject: int, k: int) -> list[int]:
        """k distinct familiar people (never ``subject``), probability ∝ planned docs."""
        chosen: list[int] = []
        excluded = {subject}
        for _ in range(k):
            pick = -1
            for _attempt in range(_MAX_REJECTIONS):
                j = bisect.bisect_right(self.cum, self.draw() * self.total)
                cand = self.pool_ids[min(j, len(self.pool_ids) - 1)]
                if cand not in excluded:
                    pick = cand
                    break
            if pick < 0:  # exact draw from the renormalised remaining mass
                w = self.pool_weights.copy()
                mask = np.isin(np.asarray(self.pool_ids), list(excluded))
                w[mask] = 0.0
                cw = np.cumsum(w)
                j = int(np.searchsorted(cw, self.draw() * cw[-1], side="right"))
                pick = self.pool_ids[min(j, len(self.pool_ids) - 1)]
            chosen.append(pick)
            excluded.add(pick)
        return chosen

    def render(self, subject: int, doc: int, cols: list[list]) -> str:
        """One biography of ``subject``; appends span rows (document index ``doc``) to ``cols``."""
        draw = self.draw
        k = self.lo + draw.index(self.hi - self.lo + 1)
        slots = list(range(7 if k > 0 else 6))
        for i in range(len(slots) - 1, 0, -1):  # Fisher-Yates
            j = draw.index(i + 1)
            slots[i], slots[j] = slots[j], slots[i]
        others = self._draw_others(subject, k) if k > 0 else []

        name = self.names[subject]
        pron = self.pronouns[subject]
        parts: list[str] = []
        pos = 0
        for n_sent, slot in enumerate(slots):
            if n_sent:
                parts.append(" ")
                pos += 1
            every, with_name = _POOLS[slot]
            pool = with_name if n_sent == 0 else every
            for kind, text in pool[draw.index(len(pool))]:
                if kind == _LIT:
                    s = text
                elif kind == _PRON:
                    s = pron[text]
                elif kind == _NAME:
                    s = name
                    _add_span(cols, doc, pos, s, "name", subject)
                elif kind == _ATTR:
                    s = self.attrs[text][subject]
                    _add_span(cols, doc, pos, s, text, subject)
                else:  # _OTHERS
                    onames = [self.names[o] for o in others]
                    for piece, idx in _format_others(onames):
                        if idx >= 0:
                            _add_span(cols, doc, pos, piece, "name", others[idx])
                        parts.append(piece)
                        pos += len(piece)
                    continue
                parts.append(s)
                pos += len(s)
        return "".join(parts)


def _spans_frame(cols: list[list]) -> pd.DataFrame:
    """Build a span table (SPAN_COLUMNS, int64 / string dtypes) sorted by (doc, start)."""
    if not cols[0]:
        return empty_spans()
    df = pd.DataFrame(
        {
            "doc": np.asarray(cols[0], dtype=np.int64),
            "start": np.asarray(cols[1], dtype=np.int64),
            "end": np.asarray(cols[2], dtype=np.int64),
            "kind": pd.array(cols[3], dtype="string"),
            "entity": np.asarray(cols[4], dtype=np.int64),
            "value": pd.array(cols[5], dtype="string"),
        },
        columns=list(SPAN_COLUMNS),
    )
    return df.sort_values(["doc", "start"], kind="stable").reset_index(drop=True)


def _mentions_table(entities: pd.DataFrame, subjects: np.ndarray, spans: pd.DataFrame) -> pd.DataFrame:
    n = len(entities)
    docs = np.bincount(subjects.astype(np.int64), minlength=n)[:n] if len(subjects) else np.zeros(n)
    ent = spans.loc[spans["kind"] == "name", "entity"].to_numpy(dtype=np.int64)
    mentions = np.bincount(ent, minlength=n)[:n] if len(ent) else np.zeros(n)
    return pd.DataFrame(
        {
            "entity_id": entities["entity_id"].to_numpy(dtype=np.int64),
            "entity": entities["entity"].to_numpy(dtype=object),
            "docs": np.asarray(docs, dtype=np.int64),
            "mentions": np.asarray(mentions, dtype=np.int64),
        }
    )


def _comentions_table(names: list[str], spans: pd.DataFrame) -> pd.DataFrame:
    cols = ["entity_a", "entity_b", "entity_id_a", "entity_id_b", "docs"]
    m = spans.loc[spans["kind"] == "name", ["doc", "entity"]].drop_duplicates()
    pairs = m.merge(m, on="doc", suffixes=("_a", "_b"))
    name_arr = np.asarray(names, dtype=object)
    pairs = pairs[pairs["entity_a"].to_numpy() != pairs["entity_b"].to_numpy()]
    na = name_arr[pairs["entity_a"].to_numpy(dtype=np.int64)]
    nb = name_arr[pairs["entity_b"].to_numpy(dtype=np.int64)]
    pairs = pairs[na < nb]
    if pairs.empty:
        return pd.DataFrame({c: pd.Series([], dtype=object if c in cols[:2] else "int64") for c in cols})
    out = (
        pairs.groupby(["entity_a", "entity_b"], sort=False)
        .size()
        .rename("docs")
        .reset_index()
        .rename(columns={"entity_a": "entity_id_a", "entity_b": "entity_id_b"})
    )
    out["entity_a"] = name_arr[out["entity_id_a"].to_numpy(dtype=np.int64)]
    out["entity_b"] = name_arr[out["entity_id_b"].to_numpy(dtype=np.int64)]
    out = out[cols].astype({"entity_id_a": "int64", "entity_id_b": "int64", "docs": "int64"})
    return out.sort_values(["entity_a", "entity_b"], kind="stable").reset_index(drop=True)


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

    Biographies follow bioS of Allen-Zhu & Li, "Physics of Language Models: Part 3.3"
    (arXiv:2404.05405): six attributes per person, one sentence per attribute from six
    paraphrase templates, shuffled sentence order, plus a co-mention sentence naming other
    people. See the module docstring for the full description.

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
        planned_docs, familiar``) and ground-truth tables ``people``, ``mentions_{split}``
        and ``comentions_{split}``. At defaults: about 8.2k training documents.

    Raises:
        ValueError: on an invalid argument (message names the value and what was expected),
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
    lo, hi = int(comentions[0]), int(comentions[1])
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

    rng = np.random.default_rng(seed)

    # ---- people ------------------------------------------------------------------------
    names, genders = _sample_people(rng, total)
    attrs: dict[str, list[str]] = {"birth_date": _sample_dates(rng, total)}
    attrs["birth_city"] = [CITIES[i] for i in rng.integers(0, len(CITIES), total).tolist()]
    attrs["university"] = [UNIVERSITIES[i] for i in rng.integers(0, len(UNIVERSITIES), total).tolist()]
    attrs["major"] = [MAJORS[i] for i in rng.integers(0, len(MAJORS), total).tolist()]
    company = rng.integers(0, len(COMPANIES), total).tolist()
    attrs["employer"] = [COMPANIES[i][0] for i in company]
    attrs["employer_city"] = [COMPANIES[i][1] for i in company]

    familiar = np.zeros(total, dtype=bool)
    familiar_ids = np.sort(rng.permutation(total)[:n_people])
    familiar[familiar_ids] = True
    unfamiliar_ids = np.flatnonzero(~familiar)
    rank = np.zeros(total, dtype=np.int64)
    rank[familiar_ids] = rng.permutation(n_people) + 1
    planned = np.zeros(total, dtype=np.int64)
    counts = zipf_doc_counts(n_people, zipf_exponent, max_docs, min_docs)
    planned[familiar_ids] = counts[rank[familiar_ids] - 1]

    entities = pd.DataFrame(
        {
            "entity_id": np.arange(total, dtype=np.int64),
            "entity": names,
            "gender": genders,
            **{a: attrs[a] for a in ATTRIBUTES},
            "rank": rank,
            "planned_docs": planned,
            "familiar": familiar,
        }
    )

    # ---- documents ---------------------------------------------------------------------
    subjects = {
        "train": rng.permutation(np.repeat(familiar_ids, planned[familiar_ids])),
        "heldout": rng.permutation(np.repeat(familiar_ids, heldout_docs_per_person)),
        "unfamiliar": rng.permutation(np.repeat(unfamiliar_ids, max(1, heldout_docs_per_person))),
    }
    draw = _Uniforms(rng)
    renderer = _Renderer(names, genders, attrs, familiar_ids, planned[familiar_ids], (lo, hi), draw)

    n_docs = sum(len(s) for s in subjects.values())
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n_docs, desc="synthetic corpus", unit="doc")

    texts: dict[str, list[str]] = {}
    spans: dict[str, pd.DataFrame] = {}
    train_set: set[str] = set()
    try:
        for split in ("train", "heldout", "unfamiliar"):
            out: list[str] = []
            cols: list[list] = [[], [], [], [], [], []]
            for doc, subj in enumerate(subjects[split].tolist()):
                mark = len(cols[0])
                text = renderer.render(subj, doc, cols)
                while split == "heldout" and text in train_set:  # fresh paraphrase, never in train
                    for c in cols:
                        del c[mark:]
                    text = renderer.render(subj, doc, cols)
                out.append(text)
                if bar is not None:
                    bar.update(1)
            if split == "train":
                train_set = set(out)
            texts[split] = out
            spans[split] = _spans_frame(cols)
    finally:
        if bar is not None:
            bar.close()

    # ---- ground truth ------------------------------------------------------------------
    ground_truth: dict[str, pd.DataFrame] = {"people": entities.copy()}
    for split in ("train", "heldout", "unfamiliar"):
        ground_truth[f"mentions_{split}"] = _mentions_table(entities, subjects[split], spans[split])
    for split in ("train", "heldout", "unfamiliar"):
        ground_truth[f"comentions_{split}"] = _comentions_table(names, spans[split])

    return Corpus(
        texts=texts,
        spans=spans,
        entities=entities,
        ground_truth=ground_truth,
        name=f"synthetic(n_people={n_people}, seed={seed})",
    )
