"""Byte-level BPE tokenizer (GPT-2 style) trained with Hugging Face ``tokenizers``.

The tokenizer is trained on the training split only (or, with ``data.rank_seed``, on one held-out biography per
person, so every counterbalanced corpus shares it), cached under a key that hashes the corpus
text and every setting, and saved as ``tokenizer.json`` in the run folder. An existing
``tokenizer.json`` can be loaded instead of training one.

The data module takes a **tokenizer spec** (the ``tokenizer`` config group, ``data.tokenizer: ${tokenizer}``):

- :class:`TrainedBPE` (``tokenizer=bpe``, the default): train byte-level BPE on the training split
  (``Corpus.tokenizer_texts`` when the source sets them).
- :class:`TokenizerFile` (``tokenizer=file tokenizer.path=PATH``): load an existing ``tokenizer.json``.

Both follow :class:`TokenizerSpec`: ``fingerprint()`` (a JSON-able dict that keys the data cache) and
``build(texts, cache_dir)``.

**Training sample** (``tokenizer.sample_chars``, default 10,000,000 characters): when the training documents hold
more characters than the cap, BPE is trained on every k-th document (documents 0, k, 2k, ...) with
k = ceil(total characters / sample_chars), so the sample holds about ``sample_chars`` characters and is spread over
the whole split (see :func:`sample_documents`). At or below the cap, and with ``sample_chars`` null or 0, the whole
split is used and the tokenizer and its cache key are exactly those of a run without the setting.
"""

from __future__ import annotations

import hashlib
import json
import logging
import numbers
import os
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from densitylab.errors import ConfigError

log = logging.getLogger(__name__)

EOS = "<|endoftext|>"


def corpus_fingerprint(texts: Iterable[str], settings: dict) -> str:
    """SHA-256 (hex, first 16 chars) of every document of ``texts`` and the JSON of ``settings``.

    Documents are hashed with their lengths, so ``["ab", "c"]`` and ``["a", "bc"]`` differ.
    """
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for t in texts:
        b = t.encode("utf-8", errors="surrogatepass")
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()[:16]


def _check_sample_chars(sample_chars: object) -> None:
    """Raise a one-line ConfigError unless ``sample_chars`` is None or an integer >= 0 (not a bool)."""
    if sample_chars is not None and (not _is_int(sample_chars) or sample_chars < 0):
        raise ConfigError(
            f"tokenizer.sample_chars={sample_chars!r}: expected an integer >= 0 (characters of the training split "
            "the tokenizer learns from; 0 or null = no cap, the whole split)"
        )


def sample_documents(texts: Sequence[str], sample_chars: int | None) -> tuple[Sequence[str], int, int]:
    """The documents BPE is trained on: ``texts`` itself, or every k-th document when ``texts`` exceeds the cap.

    Rule (deterministic, no randomness): with ``total`` the number of characters of all documents (one pass over
    ``texts``) and ``total > sample_chars``, take documents ``0, k, 2k, ...`` with
    ``k = ceil(total / sample_chars)``. The sample is spread evenly over the whole split (a corpus ordered by
    topic or source is sampled from every part) and holds about ``total / k <= sample_chars`` characters, exactly
    so when documents have equal lengths (a document stride, not a character budget: unusually long documents at
    multiples of k make it larger, a structure that repeats every k documents is sampled at one phase only).

    Args:
        texts: the training documents: a list or any sequence with ``len()``, integer indexing and iteration.
        sample_chars: the cap in characters (``len`` of each ``str``, not UTF-8 bytes); None or 0 = no cap.
    Returns:
        ``(sample, total_chars, k)``: ``sample`` is ``texts`` itself (the same object) and ``k`` is 1 when there is
        no cap or ``total_chars <= sample_chars``; otherwise a new list of the ``ceil(len(texts) / k)`` sampled
        documents.
    Raises:
        ConfigError: for a negative, non-integer or bool ``sample_chars``.
    """
    _check_sample_chars(sample_chars)
    total = sum(len(t) for t in texts)
    if not sample_chars or total <= sample_chars:
        return texts, total, 1
    k = -(-total // sample_chars)
    return [texts[i] for i in range(0, len(texts), k)], total, k


def train_bpe(
    texts: Sequence[str], vocab_size: int = 4096, min_frequency: int = 2, show_progress: bool = False
) -> Tokenizer:
    """Train a byte-level BPE tokenizer on ``texts``.

    Args:
        texts: training documents (the training split only).
        vocab_size: target vocabulary size including the 256 byte symbols and ``<|endoftext|>``
            (id 0). Must be >= 257 + 1.
        min_frequency: minimum pair count for a merge.
        show_progress: show the ``tokenizers`` progress bar.
    Returns:
        A ``tokenizers.Tokenizer`` whose decoder inverts the encoder exactly on any UTF-8 text,
        except that a literal ``<|endoftext|>`` in the text is encoded as the special EOS token
        (as in GPT-2) and so marks a document boundary.
    Raises:
        ConfigError: if ``vocab_size`` is too small.
    """
    if vocab_size < 258:
        raise ConfigError(f"tokenizer.vocab_size={vocab_size}: expected >= 258 (256 bytes + <|endoftext|> + merges)")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return tok


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Load a ``tokenizer.json``.

    Raises:
        ConfigError: if the file does not exist, is not a tokenizer, or lacks ``<|endoftext|>``.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"tokenizer.path={str(p)!r} does not exist: expected a tokenizer.json file")
    try:
        tok = Tokenizer.from_file(str(p))
    except Exception as e:  # tokenizers raises a bare Exception on bad JSON
        reason = " ".join(str(e).split())[:200] or type(e).__name__
        raise ConfigError(f"tokenizer.path={str(p)!r} is not a valid tokenizer.json ({reason})") from None
    if tok.token_to_id(EOS) is None:
        raise ConfigError(f"tokenizer.path={str(p)!r} has no {EOS} token: expected a GPT-2 style tokenizer")
    return tok


def check_tokenizer_file(path: str | os.PathLike) -> None:
    """Check that ``path`` is a ``tokenizer.json`` that :func:`load_tokenizer` can load: an existing file (not a
    directory), not empty, JSON, a tokenizer (with a ``model``), with ``<|endoftext|>``.

    Raises:
        ConfigError: one line naming ``tokenizer.path`` and the problem.
    """
    p = Path(path)
    shown = f"tokenizer.path={str(path)!r}"
    if p.is_dir():
        raise ConfigError(f"{shown} is a directory: expected a tokenizer.json file (e.g. {p / 'tokenizer.json'})")
    if not p.is_file():
        raise ConfigError(f"{shown} does not exist: expected a tokenizer.json file")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(
            f"{shown} cannot be read as text ({type(e).__name__}): expected a tokenizer.json file"
        ) from None
    if not text.strip():
        raise ConfigError(f"{shown} is empty: expected a tokenizer.json file")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{shown} is not JSON ({e.msg} at line {e.lineno}): expected a tokenizer.json file") from None
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise ConfigError(f"{shown} is JSON but not a tokenizer (no 'model' entry): expected a tokenizer.json file")
    load_tokenizer(p)


def get_tokenizer(
    texts: Sequence[str],
    vocab_size: int = 4096,
    min_frequency: int = 2,
    path: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    show_progress: bool = False,
    sample_chars: int | None = None,
) -> tuple[Tokenizer, str]:
    """Return ``(tokenizer, fingerprint)``: loaded from ``path``, from the cache, or trained.

    BPE learns from :func:`sample_documents` of ``texts`` (every k-th document when ``texts`` holds more than
    ``sample_chars`` characters; the whole of ``texts`` for None or 0, the default here). The cache key hashes the
    documents trained on plus ``vocab_size`` and ``min_frequency`` -- and, only when the cap bites,
    ``sample_chars`` and k -- so at or below the cap the key is the same as without a cap. A cached file is
    written atomically (temporary file then rename) so concurrent jobs never read half a file.

    Raises:
        ConfigError: see :func:`load_tokenizer`, :func:`train_bpe` and :func:`sample_documents`.
    """
    if path:
        tok = load_tokenizer(path)
        return tok, "file-" + hashlib.sha256(tok.to_str().encode()).hexdigest()[:16]
    sample, total, k = sample_documents(texts, sample_chars)
    settings = {"kind": "byte_bpe", "vocab_size": vocab_size, "min_frequency": min_frequency, "v": 1}
    if k > 1:  # the cap bites: key the sample rule too (below the cap the key stays as before the setting)
        settings["sample"] = {"rule": "every k-th document from 0", "sample_chars": sample_chars, "k": k}
    key = corpus_fingerprint(sample, settings)
    cached = Path(cache_dir) / f"tokenizer-{key}.json" if cache_dir else None
    if cached is not None and cached.is_file():
        log.info("tokenizer: cache hit %s", cached)
        return Tokenizer.from_file(str(cached)), key
    if k > 1:
        log.info(
            "tokenizer: training on a sample of %d of %d documents, %d of %d characters (one document in %d; "
            "tokenizer.sample_chars=%d)",
            len(sample),
            len(texts),
            sum(len(t) for t in sample),
            total,
            k,
            sample_chars,
        )
    log.info("tokenizer: training byte-level BPE (vocab %d) on %d documents", vocab_size, len(sample))
    tok = train_bpe(sample, vocab_size=vocab_size, min_frequency=min_frequency, show_progress=show_progress)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".tmp{os.getpid()}-{uuid.uuid4().hex[:8]}")  # unique across nodes too
        tok.save(str(tmp))
        os.replace(tmp, cached)
    return tok, key


@runtime_checkable
class TokenizerSpec(Protocol):
    """What the data module needs of a tokenizer spec (``data.tokenizer``)."""

    def fingerprint(self) -> dict:
        """JSON-able dict that changes whenever the tokenizer :meth:`build` returns would change."""
        ...

    def build(
        self, texts: Sequence[str], cache_dir: str | os.PathLike | None = None, show_progress: bool = False
    ) -> tuple[Tokenizer, str]:
        """Return ``(tokenizer, key)`` for a corpus whose training documents are ``texts``."""
        ...


def _is_int(x: object) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


@dataclass(frozen=True)
class TrainedBPE:
    """Byte-level BPE trained on the training split or the source's ``tokenizer_texts`` (``tokenizer=bpe``; settings
    in ``conf/tokenizer/bpe.yaml``).

    Attributes:
        vocab_size: target vocabulary size, >= 258 (256 byte symbols + ``<|endoftext|>`` + merges).
            Training may stop below it on a small corpus.
        min_frequency: minimum pair count for a merge, >= 0.
        sample_chars: cap, in characters, on the text BPE learns from: above it, every k-th document with
            k = ceil(total characters / sample_chars) (:func:`sample_documents`); None or 0 = no cap, the whole
            training split. At or below the cap nothing changes (same tokenizer, same tokenizer cache key).

    Raises:
        ConfigError: for a ``vocab_size`` below 258, a negative / non-integer ``min_frequency`` or
            ``sample_chars``.
    """

    vocab_size: int
    min_frequency: int
    sample_chars: int | None = 10_000_000

    def __post_init__(self) -> None:
        if not _is_int(self.vocab_size) or self.vocab_size < 258:
            raise ConfigError(
                f"tokenizer.vocab_size={self.vocab_size!r}: expected an integer >= 258 (256 bytes + <|endoftext|> + "
                "merges)"
            )
        if not _is_int(self.min_frequency) or self.min_frequency < 0:
            raise ConfigError(f"tokenizer.min_frequency={self.min_frequency!r}: expected an integer >= 0")
        _check_sample_chars(self.sample_chars)

    def fingerprint(self) -> dict:
        """``vocab_size``, ``min_frequency``, ``sample_chars`` (None for no cap, 0 included) and ``path`` (None);
        the corpus itself is keyed by the source."""
        return {
            "vocab_size": self.vocab_size,
            "min_frequency": self.min_frequency,
            "sample_chars": self.sample_chars or None,
            "path": None,
        }

    def build(
        self, texts: Sequence[str], cache_dir: str | os.PathLike | None = None, show_progress: bool = False
    ) -> tuple[Tokenizer, str]:
        """Train on ``texts`` (or reuse the copy cached in ``cache_dir``): see :func:`get_tokenizer`."""
        return get_tokenizer(
            texts,
            vocab_size=int(self.vocab_size),
            min_frequency=int(self.min_frequency),
            cache_dir=cache_dir,
            show_progress=show_progress,
            sample_chars=self.sample_chars,
        )


@dataclass(frozen=True)
class TokenizerFile:
    """An existing ``tokenizer.json`` (``tokenizer=file tokenizer.path=PATH``), e.g. from an earlier run folder.

    Attributes:
        path: the ``tokenizer.json`` file (a GPT-2 style tokenizer with ``<|endoftext|>``).
        vocab_size, min_frequency, sample_chars: not used (the file's vocabulary is); accepted so that an
            experiment that sets ``tokenizer.vocab_size`` (``experiment=smoke``) or another setting of the trained
            tokenizer composes with ``tokenizer=file``.

    Raises:
        ConfigError: if ``path`` is unset, or not a valid tokenizer file (:func:`check_tokenizer_file`).
    """

    path: str
    vocab_size: int | None = None
    min_frequency: int | None = None
    sample_chars: int | None = None

    def __post_init__(self) -> None:
        if not self.path or not isinstance(self.path, (str, os.PathLike)):
            raise ConfigError(f"tokenizer.path={self.path!r}: expected the path of a tokenizer.json file")
        check_tokenizer_file(self.path)
        if self.vocab_size is not None:
            log.info("tokenizer=file: tokenizer.vocab_size=%s not used (the file's vocabulary is)", self.vocab_size)

    def fingerprint(self) -> dict:
        """The path with the file's size and modification time."""
        p = Path(self.path)
        stat = [p.stat().st_size, p.stat().st_mtime_ns] if p.is_file() else None
        return {"vocab_size": None, "min_frequency": None, "path": self.path, "stat": stat}

    def build(
        self, texts: Sequence[str], cache_dir: str | os.PathLike | None = None, show_progress: bool = False
    ) -> tuple[Tokenizer, str]:
        """Load the file (``texts`` are not used). Raises ConfigError: see :func:`load_tokenizer`."""
        return get_tokenizer(texts, path=str(self.path))
