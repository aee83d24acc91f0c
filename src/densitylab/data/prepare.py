"""Data preparation, cached: source -> entities -> tokenizer -> canaries -> packed splits -> artifacts.

A :class:`DataRecipe` holds everything that determines the prepared data; :meth:`DataRecipe.cache_key`
hashes it (source fingerprint, tokenizer spec, block size, canaries, entity extractor, seed) and
:meth:`DataRecipe.build` writes the prepared data into ``CACHE/data/<key>/`` atomically (a temporary
folder renamed into place), so a second run with the same settings skips preparation entirely.
:func:`load_prepared` reads it back and :func:`export_run_artifacts` copies ``tokenizer.json``,
``ground_truth/`` and ``data.json`` into a run folder.

The tokenizer learns from the training split, or from ``Corpus.tokenizer_texts`` when the source sets it
(the counterbalanced synthetic corpus: one rank-independent biography per person, so every ``rank_seed`` of a
corpus seed gets the same ``tokenizer.json``).

A prepared folder holds ``meta.json`` (per split: real tokens, windows, the stream's dtype and length),
``tokenizer.json``, ``{split}.bin`` (the padded token stream, raw, in the smallest unsigned dtype that holds the
vocabulary, read back memory-mapped), ``{split}_doc_offsets.npy`` (document start positions),
``{split}_spans.parquet`` (window spans), ``entities.parquet`` (when the
extractor found entities) and ``ground_truth/`` (the source's tables, window co-mentions for the
synthetic extractor, ``canaries.parquet``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tokenizers import Tokenizer
from tqdm.auto import tqdm

from densitylab.data.canaries import canary_insertions, make_canaries
from densitylab.data.corpus import SPLITS, Corpus
from densitylab.data.entities import EntityExtractor
from densitylab.data.packing import (
    PackedSplit,
    _check_char_spans,
    _StreamWriter,
    load_part,
    pack_part,
    save_part,
    shard_bounds,
    shard_inputs,
    token_dtype,
    tokenize_and_pack,
)
from densitylab.data.sources import Source
from densitylab.data.tokenizer import EOS, TokenizerSpec
from densitylab.errors import DataError

log = logging.getLogger(__name__)

#: Version of the prepared-data layout; part of every cache key.
CACHE_VERSION = 3


def window_comentions(window_spans: pd.DataFrame, entities: pd.DataFrame) -> pd.DataFrame:
    """Unordered entity pairs mentioned in the same window, with the number of windows.

    A window co-mentions ``a`` and ``b`` when both have a ``kind="name"`` span whose first token is
    in it (each window counts once per pair). Returns columns entity_a, entity_b (names, a < b),
    entity_id_a, entity_id_b, windows.
    """
    names = window_spans[window_spans["kind"] == "name"][["sample_id", "entity"]].drop_duplicates()
    pairs = names.merge(names, on="sample_id")
    pairs = pairs[pairs["entity_x"] < pairs["entity_y"]]
    counts = pairs.groupby(["entity_x", "entity_y"]).size().reset_index(name="windows")
    lookup = entities.set_index("entity_id")["entity"]
    a, b = lookup.loc[counts["entity_x"]].to_numpy(), lookup.loc[counts["entity_y"]].to_numpy()
    swap = a > b
    return pd.DataFrame(
        {
            "entity_a": np.where(swap, b, a),
            "entity_b": np.where(swap, a, b),
            "entity_id_a": np.where(swap, counts["entity_y"], counts["entity_x"]),
            "entity_id_b": np.where(swap, counts["entity_x"], counts["entity_y"]),
            "windows": counts["windows"].to_numpy(),
        }
    )


def _atomic_dir(final: Path) -> Path:
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=final.name + ".tmp", dir=final.parent))


@dataclass(frozen=True)
class DataRecipe:
    """Everything that determines the prepared data.

    Attributes:
        source: the corpus source (:class:`~densitylab.data.sources.Source`).
        tokenizer: the tokenizer spec (:class:`~densitylab.data.tokenizer.TokenizerSpec`).
        entities: the entity extractor (:class:`~densitylab.data.entities.EntityExtractor`).
        block_size: window input length T in tokens.
        canaries: checked canary settings (:func:`~densitylab.data.canaries.check_canary_config`);
            empty or without ``repetitions`` = no canaries.
        seed: the data seed (canaries and their positions, unless ``canaries`` sets its own seed).
        num_proc: processes that tokenize and pack each split (shards joined in order; the same data for any
            value, so not part of :meth:`cache_key`).
    """

    source: Source
    tokenizer: TokenizerSpec
    entities: EntityExtractor
    block_size: int
    canaries: dict
    seed: int
    num_proc: int = 1

    def cache_key(self) -> str:
        """20-hex-digit key of the prepared data (validates the source's input; no heavy work).

        Raises:
            DataError / ConfigError: from the source's ``fingerprint()`` (e.g. a missing file).
        """
        spec = {
            "v": CACHE_VERSION,
            "source": self.source.fingerprint(),
            "tokenizer": self.tokenizer.fingerprint(),
            "block_size": self.block_size,
            "canaries": self.canaries if self.canaries.get("repetitions") else None,
            "entities": self.entities.fingerprint(),
            "seed": self.seed,
        }
        return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:20]

    def build(self, final: Path, cache_dir: Path, progress: bool = False, shard: tuple[int, int] | None = None) -> None:
        """Prepare the data into ``final`` (skipped when ``final/meta.json`` exists); tokenizers are
        cached under ``cache_dir/tokenizers``.

        Args:
            shard: ``(i, n)``: this machine prepares shard ``i`` of ``n`` (documents ``[i·d/n, (i+1)·d/n)`` of each
                split, :func:`~densitylab.data.packing.shard_bounds`) into ``final``'s sibling folder
                ``<key>.shards-n/i/``; shard 0 then waits for the others and joins them in order into ``final``,
                the others wait for ``final``. Every machine must see the same ``final`` (a shared filesystem).
                The joined data equal what one machine prepares (stream positions and sample ids come from the
                prefix sum of the shards' token counts). None (or n = 1): one machine.
        Raises:
            DensitylabError: the source's, tokenizer's and extractor's errors (bad files, settings).
            ValueError: for a shard outside ``0 <= i < n``.
            TimeoutError: when the other shards or the joined data do not appear in time (:func:`wait_for_prepared`).
        """
        if (final / "meta.json").is_file():
            return
        if shard is not None and not (
            isinstance(shard[0], int) and isinstance(shard[1], int) and 0 <= shard[0] < shard[1]
        ):
            raise ValueError(f"shard={shard!r}: expected (i, n) with 0 <= i < n")
        bar = tqdm(total=5, desc="preparing data", disable=not progress, unit="stage")
        try:
            self._build(final, cache_dir, progress, bar, None if shard is None or shard[1] == 1 else shard)
        finally:
            bar.close()

    def _common(self, cache_dir: Path, progress: bool, bar: tqdm):
        """Corpus with entity spans, tokenizer, canaries: what every shard computes the same way."""
        bar.set_postfix_str("loading corpus")
        loaded = self.source.load(progress=progress)
        corpus = self.entities.extract(loaded)
        bar.update()
        bar.set_postfix_str("tokenizer")
        # Corpus.tokenizer_texts (a rank-independent rendering, data.rank_seed), else the training split
        tok_texts = corpus.tokenizer_texts if corpus.tokenizer_texts is not None else corpus.texts["train"]
        tok, tok_key = self.tokenizer.build(tok_texts, cache_dir=cache_dir / "tokenizers")
        bar.update()
        canaries, extra = None, None
        if self.canaries.get("repetitions"):
            bar.set_postfix_str("canaries")
            canaries, extra = self._canaries(tok, len(corpus.texts["train"]))
        bar.update()
        return corpus, tok, tok_key, canaries, extra

    def _build(self, final: Path, cache_dir: Path, progress: bool, bar: tqdm, shard: tuple[int, int] | None) -> None:
        corpus, tok, tok_key, canaries, extra = self._common(cache_dir, progress, bar)
        if shard is not None:
            if (final / "meta.json").is_file():  # another job prepared the same data meanwhile
                return
            signature = self._shard_signature(corpus, tok, extra, shard[1])
            mine, created = self._write_shard(corpus, tok, extra, final, shard, signature)
            root = mine.parent
            if shard[0] != 0:
                bar.set_postfix_str("waiting for shard 0 to join the shards")
                wait_for_prepared(final)
                return
            bar.set_postfix_str("waiting for the other shards")
            if not _wait_for_shards(root, shard[1], final):  # the data appeared: another job joined them
                if created:
                    shutil.rmtree(mine, ignore_errors=True)
                return
            _check_shards(root, shard[1], signature)
        tmp = _atomic_dir(final)
        replaced = False
        try:
            if shard is None:
                packed = self._pack(tok, corpus, extra, tmp, bar, progress)
            else:
                packed = self._join(tok, corpus, tmp, root, shard[1])
            bar.update()
            bar.set_postfix_str("ground truth")
            self._write_artifacts(tmp, tok, corpus, packed, canaries)
            meta = self._meta(corpus, tok, tok_key, packed, canaries)
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
            bar.update()
            if final.exists():  # another process finished first: keep its copy
                shutil.rmtree(tmp)
            else:
                os.replace(tmp, final)
                replaced = True
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if shard is not None and replaced:  # this process joined the shards: nobody needs them any more
            shutil.rmtree(root, ignore_errors=True)

    def _splits(self, corpus: Corpus) -> list[str]:
        return [s for s in SPLITS if s in corpus.texts and len(corpus.texts[s])]

    def _shard_signature(self, corpus: Corpus, tok: Tokenizer, extra: list | None, n: int) -> dict:
        """What every shard of one preparation must agree on (checked before the join): tokenizer, documents per
        split, canary copies, block size, shard count."""
        return {
            "tokenizer": hashlib.sha256(tok.to_str().encode()).hexdigest()[:16],
            "documents": {s: len(corpus.texts[s]) for s in self._splits(corpus)},
            "canary_copies": len(extra or []),
            "block_size": self.block_size,
            "of": n,
        }

    def _write_shard(
        self, corpus: Corpus, tok: Tokenizer, extra: list | None, final: Path, shard: tuple[int, int], signature: dict
    ) -> tuple[Path, bool]:
        """Tokenize this machine's shard of every split into ``<key>.shards-n/i/`` (atomically; kept if present).
        Returns the folder and whether this call wrote it."""
        i, n = shard
        mine = final.parent / f"{final.name}.shards-{n}" / str(i)
        if (mine / "done.json").is_file():
            return mine, False
        tmp = _atomic_dir(mine)
        try:
            for split in self._splits(corpus):
                texts = corpus.texts[split]
                spans = corpus.spans_for(split)
                if len(spans):
                    _check_char_spans(spans, len(texts), split)
                    spans = spans.sort_values("doc", kind="stable")
                ex = sorted(extra or [], key=lambda e: e[0]) if split == "train" else []
                bounds = shard_bounds(len(texts), n, exact=True)
                texts_i, sub, ex_i = shard_inputs(texts, spans if len(spans) else None, ex, bounds, i)
                state = pack_part(
                    tok.to_str(), texts_i, sub, ex_i, self.block_size, token_dtype(tok.get_vocab_size()).str,
                    tmp / f"{split}.bin",
                )  # fmt: skip
                save_part(state, tmp / split)
            (tmp / "done.json").write_text(json.dumps({"shard": i, **signature}))
            if mine.exists():
                shutil.rmtree(tmp)
                return mine, False
            os.replace(tmp, mine)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return mine, True

    def _join(self, tok: Tokenizer, corpus: Corpus, tmp: Path, root: Path, n: int) -> dict[str, PackedSplit]:
        """Join the ``n`` shards under ``root`` in order into the prepared splits in ``tmp``."""
        packed = {}
        for split in self._splits(corpus):
            bounds = shard_bounds(len(corpus.texts[split]), n, exact=True)
            writer = _StreamWriter(tok.token_to_id(EOS), self.block_size, token_dtype(tok.get_vocab_size()),
                                   tmp / f"{split}.bin")  # fmt: skip
            try:
                for j in range(n):
                    writer.append_part(root / str(j) / f"{split}.bin", load_part(root / str(j) / split), int(bounds[j]))
                packed[split] = writer.finish(split)
            finally:
                writer.close()
            np.save(tmp / f"{split}_doc_offsets.npy", packed[split].doc_offsets)
            packed[split].spans.to_parquet(tmp / f"{split}_spans.parquet", index=False)
        return packed

    def _canaries(self, tok: Tokenizer, n_docs: int) -> tuple[pd.DataFrame, list[tuple[int, list[int]]]]:
        c = self.canaries
        seed = int(c.get("seed", self.seed))
        canaries = make_canaries(
            tok.get_vocab_size(),
            tok.token_to_id(EOS),
            list(c["repetitions"]),
            int(c["per_group"]),
            int(c["length"]),
            int(c["alphabet_size"]),
            seed,
        )
        return canaries, canary_insertions(canaries, n_docs, seed + 1)

    def _pack(
        self, tok: Tokenizer, corpus: Corpus, extra: list | None, tmp: Path, bar: tqdm, progress: bool = False
    ) -> dict[str, PackedSplit]:
        packed = {}
        for split in SPLITS:
            if split not in corpus.texts or not len(corpus.texts[split]):
                continue
            bar.set_postfix_str(f"packing {split}")
            packed[split] = tokenize_and_pack(
                tok,
                corpus.texts[split],
                corpus.spans_for(split),
                self.block_size,
                split,
                extra_docs=extra if split == "train" else None,
                path=tmp / f"{split}.bin",
                progress=progress,
                num_proc=self.num_proc,
            )
            np.save(tmp / f"{split}_doc_offsets.npy", packed[split].doc_offsets)
            packed[split].spans.to_parquet(tmp / f"{split}_spans.parquet", index=False)
        return packed

    def _write_artifacts(
        self,
        tmp: Path,
        tok: Tokenizer,
        corpus: Corpus,
        packed: dict[str, PackedSplit],
        canaries: pd.DataFrame | None,
    ) -> None:
        tok.save(str(tmp / "tokenizer.json"))
        gt = tmp / "ground_truth"
        gt.mkdir()
        for name, table in corpus.ground_truth.items():
            table.to_parquet(gt / f"{name}.parquet", index=False)
        if corpus.entities is not None:
            corpus.entities[["entity_id", "entity"]].to_parquet(tmp / "entities.parquet", index=False)
            if self.entities.method == "synthetic":  # generator truth, as packed: pairs sharing a window
                window_comentions(packed["train"].spans, corpus.entities).to_parquet(
                    gt / "comentions_windows_train.parquet", index=False
                )
        if canaries is not None:
            canaries.to_parquet(gt / "canaries.parquet", index=False)

    def _meta(
        self,
        corpus: Corpus,
        tok: Tokenizer,
        tok_key: str,
        packed: dict[str, PackedSplit],
        canaries: pd.DataFrame | None,
    ) -> dict:
        train = packed["train"]
        counts = torch.from_numpy(train.token_counts(minlength=tok.get_vocab_size())).double()
        p = counts[counts > 0] / counts.sum()
        return {
            "corpus": corpus.name,
            "cache_key": self.cache_key(),
            "tokenizer_key": tok_key,
            "vocab_size": tok.get_vocab_size(),
            "block_size": self.block_size,
            "splits": {
                s: {
                    "documents": len(corpus.texts[s]),
                    "tokens": pk.n_real,
                    "windows": pk.n_windows,
                    "characters": corpus.n_chars(s),
                    "dtype": pk.tokens.dtype.str,
                    "stream_length": int(pk.tokens.shape[0]),
                }
                for s, pk in packed.items()
            },
            "unigram_entropy_nats": float(-(p * p.log()).sum()),
            "canaries": 0 if canaries is None else len(canaries),
            "entities": {
                "method": self.entities.method,
                "count": 0 if corpus.entities is None else len(corpus.entities),
                "train_mentions": int((train.spans["kind"] == "name").sum()),
            },
        }


@dataclass
class PreparedData:
    """Prepared data read back from its cache folder (:func:`load_prepared`).

    Attributes:
        meta: the ``meta.json`` dict (corpus, vocab size, per-split documents/tokens/windows, ...).
        tokenizer: the tokenizer.
        splits: split name -> :class:`~densitylab.data.packing.PackedSplit`.
        entity_table: ``entity_id``, ``entity`` (None when the extractor found no entity table).
        canaries: the canary table (None without canaries).
        ground_truth_dir: the ``ground_truth/`` folder.
    """

    meta: dict
    tokenizer: Tokenizer
    splits: dict[str, PackedSplit]
    entity_table: pd.DataFrame | None
    canaries: pd.DataFrame | None
    ground_truth_dir: Path


def _wait_for_shards(root: Path, n: int, final: Path, timeout_s: float | None = None) -> bool:
    """Block until every shard ``root/0..n-1/done.json`` exists (True) or ``final/meta.json`` does (False: another
    job joined the same data).

    Raises:
        TimeoutError: after ``timeout_s`` (None: ``$DENSITYLAB_PREPARE_TIMEOUT``, default 3600 s).
    """
    timeout_s = float(os.environ.get("DENSITYLAB_PREPARE_TIMEOUT", 3600)) if timeout_s is None else timeout_s
    deadline = time.time() + timeout_s
    while True:
        if (final / "meta.json").is_file():
            return False
        missing = [j for j in range(n) if not (root / str(j) / "done.json").is_file()]
        if not missing:
            return True
        if time.time() > deadline:
            raise TimeoutError(
                f"waited {timeout_s:.0f} s for shards {missing} of {n} in {root} (DENSITYLAB_PREPARE_TIMEOUT): is "
                f"data.prepare_shards={n} the number of nodes, each running the same command?"
            )
        time.sleep(0.5)


def _check_shards(root: Path, n: int, signature: dict) -> None:
    """Raise DataError (one line) when a shard was prepared from other data or settings than this one."""
    for j in range(n):
        got = json.loads((root / str(j) / "done.json").read_text())
        got.pop("shard", None)
        if got != signature:
            diff = sorted(k for k in set(got) | set(signature) if got.get(k) != signature.get(k))
            raise DataError(
                f"shard {j} in {root} differs from shard 0 in {diff}: expected every node to read the same corpus with "
                "the same settings (remove the folder to prepare again)"
            )


def wait_for_prepared(d: Path, timeout_s: float | None = None, marker: str = "meta.json") -> None:
    """Block until ``d/marker`` exists (another process prepares ``d``, or a shard of it).

    Args:
        timeout_s: seconds to wait (None: ``$DENSITYLAB_PREPARE_TIMEOUT``, default 3600).
    Raises:
        TimeoutError: when it does not appear in time.
    """
    timeout_s = float(os.environ.get("DENSITYLAB_PREPARE_TIMEOUT", 3600)) if timeout_s is None else timeout_s
    deadline = time.time() + timeout_s
    while not (d / marker).is_file():
        if time.time() > deadline:
            raise TimeoutError(
                f"waited {timeout_s:.0f} s for {d / marker} (another process prepares it; DENSITYLAB_PREPARE_TIMEOUT)"
            )
        time.sleep(0.5)


def load_prepared(d: Path) -> PreparedData:
    """Read the prepared data in ``d`` (written by :meth:`DataRecipe.build`)."""
    meta = json.loads((d / "meta.json").read_text())
    splits = {}
    for split, info in meta["splits"].items():
        splits[split] = PackedSplit.open(
            d / f"{split}.bin",
            info["dtype"],
            info["stream_length"],
            info["tokens"],
            meta["block_size"],
            np.load(d / f"{split}_doc_offsets.npy"),
            pd.read_parquet(d / f"{split}_spans.parquet"),
        )
    gt = d / "ground_truth"
    return PreparedData(
        meta=meta,
        tokenizer=Tokenizer.from_file(str(d / "tokenizer.json")),
        splits=splits,
        entity_table=pd.read_parquet(d / "entities.parquet") if (d / "entities.parquet").is_file() else None,
        canaries=pd.read_parquet(gt / "canaries.parquet") if (gt / "canaries.parquet").is_file() else None,
        ground_truth_dir=gt,
    )


def export_run_artifacts(data_dir: Path, output_dir: Path, meta: dict) -> None:
    """Copy ``tokenizer.json`` and ``ground_truth/`` from ``data_dir`` into the run folder ``output_dir``
    and write ``meta`` there as ``data.json``."""
    output_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(data_dir / "tokenizer.json", output_dir / "tokenizer.json")
    gt = data_dir / "ground_truth"
    if any(gt.iterdir()):
        shutil.copytree(gt, output_dir / "ground_truth", dirs_exist_ok=True)
    (output_dir / "data.json").write_text(json.dumps(meta, indent=2))
