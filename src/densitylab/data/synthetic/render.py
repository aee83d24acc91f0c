"""Rendering biographies from paraphrase templates, with exact character offsets of every span.

A biography is one sentence per attribute plus one co-mention sentence, in a shuffled order, each from
one of six templates; every inserted name and attribute value is recorded as a :class:`Span`. All
randomness of a :class:`Renderer` comes from one :class:`Uniforms` stream of sequential uniform draws
(:meth:`Renderer.with_draw` swaps it, e.g. for one stream per person).
"""

from __future__ import annotations

import bisect
import copy
import string
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from densitylab.data.synthetic.vocab import ATTRIBUTES

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


class Uniforms:
    """Sequential uniform [0, 1) draws from a numpy Generator, pre-drawn in chunks of ``chunk`` for speed
    (the draws depend on ``chunk`` only through how far ``rng`` has advanced, not in their values)."""

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


class Span(NamedTuple):
    """One inserted name or attribute value: a row of a span table (columns
    :data:`~densitylab.data.corpus.SPAN_COLUMNS`, in this order).

    Attributes:
        doc: index of the document in its split.
        start: character offset of the first character.
        end: character offset one past the last (exclusive).
        kind: ``"name"`` for a person mention, else the attribute name (``"birth_city"`` ...).
        entity: entity id of the person the span names or describes.
        value: the inserted text (``text[start:end]``).
    """

    doc: int
    start: int
    end: int
    kind: str
    entity: int
    value: str


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


class Renderer:
    """Renders biographies and records spans with exact character offsets.

    Args:
        names: full name per entity id.
        genders: ``"male"`` / ``"female"`` per entity id (pronouns).
        attrs: attribute name -> value per entity id.
        pool_ids: entity ids that may be co-mentioned (the familiar people; everyone in
            :meth:`uniform`).
        pool_weights: their co-mention weights (planned training documents; equal in :meth:`uniform`).
        comentions: inclusive ``(lo, hi)`` number of co-mentioned people per document.
        draw: the uniform stream every random choice reads.
    """

    def __init__(
        self,
        names: list[str],
        genders: list[str],
        attrs: dict[str, list[str]],
        pool_ids: np.ndarray,
        pool_weights: np.ndarray,
        comentions: tuple[int, int],
        draw: Uniforms,
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

    @classmethod
    def uniform(
        cls,
        names: list[str],
        genders: list[str],
        attrs: dict[str, list[str]],
        comentions: tuple[int, int],
        draw: Uniforms,
    ) -> Renderer:
        """A renderer whose co-mentions are drawn **uniformly over all other people** (the pool is every
        entity id, equal weights), independent of who is familiar: the held-out biographies of a
        counterbalanced corpus (``rank_seed``)."""
        n = len(names)
        return cls(names, genders, attrs, np.arange(n, dtype=np.int64), np.ones(n), comentions, draw)

    def with_draw(self, draw: Uniforms) -> Renderer:
        """A copy that reads ``draw`` instead (the pools and tables are shared, not copied): one stream per
        person for the held-out biographies of a counterbalanced corpus."""
        other = copy.copy(self)
        other.draw = draw
        return other

    def _draw_others(self, subject: int, k: int) -> list[int]:
        """k distinct people of the pool (never ``subject``), probability ∝ their pool weights (planned docs)."""
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

    def render(self, subject: int, doc: int, spans: list[Span]) -> str:
        """One biography of ``subject``; appends its spans (document index ``doc``) to ``spans``."""
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
                    spans.append(Span(doc, pos, pos + len(s), "name", subject, s))
                elif kind == _ATTR:
                    s = self.attrs[text][subject]
                    spans.append(Span(doc, pos, pos + len(s), text, subject, s))
                else:  # _OTHERS
                    onames = [self.names[o] for o in others]
                    for piece, idx in _format_others(onames):
                        if idx >= 0:
                            spans.append(Span(doc, pos, pos + len(piece), "name", others[idx], piece))
                        parts.append(piece)
                        pos += len(piece)
                    continue
                parts.append(s)
                pos += len(s)
        return "".join(parts)
