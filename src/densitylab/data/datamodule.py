"""LightningDataModule: source -> tokenizer -> packed windows (cached) -> DataLoaders.

``prepare_data`` (one process per node) builds the corpus, trains or loads the tokenizer, inserts
canaries, packs every split and writes the result to a cache folder keyed by a hash of every
setting that changes it (source fingerprint, tokenizer settings, block size, canaries). ``setup``
(every process) loads the cache and copies ``tokenizer.json`` and ``ground_truth/`` into the run
folder. A second run with the same settings skips preparation entirely.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.utilities import rank_zero_only
from tokenizers import Tokenizer
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from densitylab.data.corpus import SPLITS, Corpus
from densitylab.data.entities import EXTRACTORS, extract_entities
from densitylab.data.packing import IGNORE_INDEX, PackedSplit, tokenize_and_pack
from densitylab.data.sources import SOURCES
from densitylab.data.tokenizer import EOS, get_tokenizer
from densitylab.errors import ConfigError

log = logging.getLogger(__name__)

CACHE_VERSION = 2


class WindowDataset(Dataset):
    """Map-style dataset over the windows of a :class:`PackedSplit`.

    Item ``i < n_windows`` is window (sample id) ``i``. With ``pad_to_multiple = m`` the length is
    rounded up to a multiple of ``m`` with **padding windows**: inputs all ``pad_id``, labels all
    ``-100`` (no loss), ``sample_id`` -1. Training uses ``m = batch_size × world_size`` so that one
    epoch visits every real window exactly once *and* every step has exactly B·T tokens per process
    (fewer than ``m`` padding windows per epoch).

    ``__getitems__`` serves a whole batch with one gather; use it with :func:`collate_batch` as the
    DataLoader's ``collate_fn``. Each batch is a dict: ``input_ids`` (B, T) int64, ``labels``
    (B, T) int64 (``-100`` on padding), ``sample_id`` (B,) int64 (-1 for padding windows).
    """

    def __init__(self, packed: PackedSplit, pad_to_multiple: int = 1, pad_id: int = 0) -> None:
        self.packed = packed
        self._windows = packed.windows()
        n = packed.n_windows
        self._len = -(-n // pad_to_multiple) * pad_to_multiple
        self.pad_id = pad_id

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        batch = self.__getitems__([int(i)])
        return {k: v[0] for k, v in batch.items()}

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        sid = torch.as_tensor(indices, dtype=torch.int64)
        if sid.numel() and (sid.min() < 0 or sid.max() >= self._len):
            raise IndexError(f"window index outside [0, {self._len})")
        n, bs = self.packed.n_windows, self.packed.block_size
        real = sid < n
        w = self._windows[sid.clamp(max=n - 1)]
        x, y = w[:, :-1].clone(), w[:, 1:].clone()
        # target j of window s sits at stream position s*bs + 1 + j; mask padding past n_real
        pos = sid[:, None] * bs + 1 + torch.arange(bs)
        y[pos >= self.packed.n_real] = IGNORE_INDEX
        if not bool(real.all()):
            x[~real] = self.pad_id
            y[~real] = IGNORE_INDEX
            sid = torch.where(real, sid, torch.full_like(sid, -1))
        return {"input_ids": x, "labels": y, "sample_id": sid}


class ResumableShardSampler(Sampler[int]):
    """Seeded shuffled order with a new permutation per epoch, sharded across processes, and able to
    start mid-epoch, so a resumed run trains exactly the windows an uninterrupted run would.

    Epoch ``e`` uses ``randperm(n, seed + e)``; process ``rank`` of ``world_size`` takes every
    ``world_size``-th index of it (``n`` must be a multiple of ``world_size``). :meth:`set_epoch` is
    called by Lightning before each epoch; :meth:`skip` drops the first samples of the next pass only.

    Raises:
        ValueError: if ``n`` is not a multiple of ``world_size`` or rank is out of range.
    """

    def __init__(self, n: int, seed: int = 0, rank: int = 0, world_size: int = 1, shuffle: bool = True) -> None:
        if world_size < 1 or not 0 <= rank < world_size or n % world_size:
            raise ValueError(
                f"n={n}, rank={rank}, world_size={world_size}: expected n divisible by world_size and 0 <= rank < "
                "world_size"
            )
        self.n, self.seed, self.rank, self.world_size, self.shuffle = n, seed, rank, world_size, shuffle
        self.epoch = 0
        self._skip = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of ``epoch`` (Lightning calls this before every epoch)."""
        self.epoch = int(epoch)

    def skip(self, n_samples: int) -> None:
        """Drop the first ``n_samples`` of this process's shard on the next pass only (resume)."""
        self._skip = int(n_samples)

    def __len__(self) -> int:
        return self.n // self.world_size

    def __iter__(self):
        if self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        else:
            order = torch.arange(self.n)
        shard = order[self.rank :: self.world_size]
        start, self._skip = self._skip, 0
        return iter(shard[start:].tolist())


class ResumableDataLoader(DataLoader):
    """A DataLoader that Lightning treats as resumable (``state_dict`` / ``load_state_dict``).

    The position inside an epoch is not stored here but derived from the restored global step (every
    training batch is full, so batches consumed = global_step × accumulate_grad_batches): see
    :meth:`DataModule.train_dataloader`. The state records the settings that make that derivation
    valid; a resume that changes them gets a warning (the order then differs from an uninterrupted run).
    """

    def state_dict(self) -> dict:
        """Seed, padded length, world size and batch size: what the resume position depends on."""
        s = self.sampler
        return {"seed": s.seed, "n": s.n, "world_size": s.world_size, "batch_size": self.batch_size}

    def load_state_dict(self, state: dict) -> None:
        """Warn when the saved order settings differ from this run's (the resumed order then differs)."""
        mine = self.state_dict()
        if state and state != mine:
            warnings.warn(
                f"resuming with a different data order ({state} -> {mine}): the run will not see exactly the "
                "windows an uninterrupted run would",
                stacklevel=2,
            )


def collate_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Identity collate: :meth:`WindowDataset.__getitems__` already returns a batch."""
    return batch


def make_canaries(
    vocab_size: int,
    eos_id: int,
    repetitions: list[int],
    per_group: int,
    length: int,
    alphabet_size: int,
    seed: int,
) -> pd.DataFrame:
    """Draw random-token canaries (memorization ground truth; Morris et al., arXiv:2505.24832).

    Each canary is ``length`` token ids drawn uniformly from a fixed random sub-alphabet of
    ``alphabet_size`` ids (never ``<|endoftext|>``); ``per_group`` canaries per repetition count.

    Returns:
        DataFrame with columns canary_id (int), repetitions (int: times inserted into training),
        alphabet_size (int), tokens (list of int).
    Raises:
        ConfigError: if the alphabet does not fit in the vocabulary or a value is invalid.
    """
    if alphabet_size < 2 or alphabet_size > vocab_size - 1:
        raise ConfigError(f"canaries.alphabet_size={alphabet_size}: expected 2..{vocab_size - 1} (vocab size - 1)")
    if length < 2:
        raise ConfigError(f"canaries.length={length}: expected >= 2 tokens")
    if any(int(r) < 0 for r in repetitions) or per_group < 1:
        raise ConfigError(
            f"canaries.repetitions={list(repetitions)} / per_group={per_group}: expected counts >= 0 and per_group >= 1"
        )
    rng = np.random.default_rng(seed)
    ids = np.setdiff1d(np.arange(vocab_size), [eos_id])
    alphabet = np.sort(rng.choice(ids, size=alphabet_size, replace=False))
    rows = []
    for r in repetitions:
        for _ in range(per_group):
            rows.append(
                {
                    "canary_id": len(rows),
                    "repetitions": int(r),
                    "alphabet_size": alphabet_size,
                    "tokens": alphabet[rng.integers(0, alphabet_size, size=length)].tolist(),
                }
            )
    return pd.DataFrame(rows)


def resumable_train_loader(
    ds: Dataset, batch_size: int, seed: int, trainer: L.Trainer | None, num_workers: int = 0
) -> ResumableDataLoader:
    """The training loader of every densitylab DataModule: seeded per-epoch permutations sharded
    over the trainer's processes, resuming mid-epoch from the trainer's restored global step.

    Args:
        ds: a dataset whose length is a multiple of ``batch_size × world_size`` (pad it) and whose
            ``__getitems__`` returns a whole batch (use :func:`collate_batch`).
        trainer: the attached Trainer (None: one process, from the start).
    """
    world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
    sampler = ResumableShardSampler(len(ds), seed=seed, rank=rank, world_size=world)
    if trainer is not None and trainer.global_step > 0:
        # Lightning also steps on an epoch's last, partial accumulation window
        accum = trainer.accumulate_grad_batches
        batches_per_epoch = len(sampler) // batch_size
        steps_per_epoch = math.ceil(batches_per_epoch / accum)
        done = min((trainer.global_step % steps_per_epoch) * accum, batches_per_epoch)
        sampler.skip(done * batch_size)
    return ResumableDataLoader(
        ds,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=False,
        num_workers=num_workers,
        collate_fn=collate_batch,
        persistent_workers=num_workers > 0,
    )


def _file_stat(path: str | None) -> list | None:
    p = Path(path) if path else None
    return [p.stat().st_size, p.stat().st_mtime_ns] if p is not None and p.is_file() else None


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


class DataModule(L.LightningDataModule):
    """Tokenized, packed, cached data for training, validation and probes.

    Args:
        source: ``synthetic``, ``text``, ``hub`` or a dotted path to a source class.
        batch_size: windows per batch (per process).
        num_workers: DataLoader workers.
        block_size: window input length T in tokens (= ``model.block_size``).
        tokenizer: dict with ``vocab_size``, ``min_frequency``, ``path`` (load instead of train).
        canaries: dict with ``repetitions`` (list; empty = no canaries), ``per_group``, ``length``,
            ``alphabet_size``.
        seed: seed for shuffling, canaries and the synthetic generator's default.
        cache_dir: folder for the tokenized-data cache.
        output_dir: run folder (``tokenizer.json`` and ``ground_truth/`` are copied there);
            None writes nothing.
        max_val_windows: cap on validation windows (evenly spaced over the held-out split), or
            None for all.
        progress: show progress bars while preparing data.
        entities: entity extractor (:mod:`densitylab.data.entities`): ``synthetic``, ``gazetteer``,
            ``capitalized``, ``spacy`` or ``none``; None = ``synthetic`` for the synthetic source,
            ``capitalized`` otherwise.
        entity_list: names file for ``gazetteer`` (one per line).
        spacy_model: spaCy pipeline for ``spacy``.
        **source_kwargs: the source's own settings (e.g. ``files``, ``name``, ``n_people``).

    Raises:
        ConfigError: for an unknown source or invalid settings (at construction or preparation).
    """

    def __init__(
        self,
        source: str = "synthetic",
        batch_size: int = 32,
        num_workers: int = 0,
        block_size: int = 128,
        tokenizer: dict | None = None,
        canaries: dict | None = None,
        seed: int = 0,
        cache_dir: str | None = None,
        output_dir: str | None = None,
        max_val_windows: int | None = 256,
        progress: bool = True,
        entities: str | None = None,
        entity_list: str | None = None,
        spacy_model: str = "en_core_web_sm",
        **source_kwargs: Any,
    ) -> None:
        super().__init__()
        if source in SOURCES:
            cls = SOURCES[source]
        else:
            try:
                import hydra.utils

                cls = hydra.utils.get_class(source)
            except Exception:
                raise ConfigError(
                    f"data.source={source!r}: expected one of {sorted(SOURCES)} or a dotted class path"
                ) from None
        if (
            "cache_dir" in getattr(cls, "__dataclass_fields__", {})
            and source_kwargs.get("cache_dir") is None
            and cache_dir
        ):
            source_kwargs["cache_dir"] = str(Path(cache_dir) / "hf_datasets")
        try:
            self.source = cls(**source_kwargs)
        except TypeError as e:
            raise ConfigError(f"data: {e}") from None
        if batch_size < 1:
            raise ConfigError(f"data.batch_size={batch_size}: expected a positive integer")
        self.batch_size, self.num_workers, self.block_size = batch_size, num_workers, block_size
        self.tokenizer_cfg = dict(tokenizer or {})
        self.canary_cfg = dict(canaries or {})
        self.seed = seed
        self.cache_dir = Path(cache_dir or Path.home() / ".cache" / "densitylab")
        self.output_dir = Path(output_dir) if output_dir else None
        self.max_val_windows = max_val_windows
        self.progress = progress
        self.entities = entities or ("synthetic" if source == "synthetic" else "capitalized")
        if self.entities not in EXTRACTORS:
            raise ConfigError(f"data.entities={self.entities!r}: expected one of {EXTRACTORS}")
        self.entity_list = str(Path(entity_list).expanduser().resolve()) if entity_list else None
        self.spacy_model = spacy_model
        self.entity_table: pd.DataFrame | None = None
        self.tokenizer: Tokenizer | None = None
        self.splits: dict[str, PackedSplit] = {}
        self.meta: dict = {}
        self.canaries: pd.DataFrame | None = None
        self.ground_truth_dir: Path | None = None
        self._key: str | None = None

    # ------------------------------------------------------------------ cache key
    def cache_key(self) -> str:
        """Hex key of the prepared data (validates the source's input; no heavy work)."""
        if self._key is None:
            spec = {
                "v": CACHE_VERSION,
                "source": self.source.fingerprint(),
                "tokenizer": {k: self.tokenizer_cfg.get(k) for k in ("vocab_size", "min_frequency", "path")},
                "block_size": self.block_size,
                "canaries": self.canary_cfg if self.canary_cfg.get("repetitions") else None,
                "entities": [
                    self.entities,
                    self.entity_list,
                    self.spacy_model if self.entities == "spacy" else None,
                    _file_stat(self.entity_list),
                ],
                "seed": self.seed,
            }
            if spec["tokenizer"]["path"]:
                p = Path(spec["tokenizer"]["path"])
                spec["tokenizer"]["stat"] = [p.stat().st_size, p.stat().st_mtime_ns] if p.is_file() else None
            self._key = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:20]
        return self._key

    @property
    def data_dir(self) -> Path:
        """Cache folder of this configuration's prepared data."""
        return self.cache_dir / "data" / self.cache_key()

    # ------------------------------------------------------------------ preparation
    def prepare_data(self) -> None:
        """Build and cache everything once (local rank 0). Raises the source's errors."""
        final = self.data_dir
        if (final / "meta.json").is_file():
            if not self.splits:
                log.info("data: cache hit %s", final)
            return
        bar = tqdm(total=5, desc="preparing data", disable=not self.progress, unit="stage")
        try:
            self._prepare(final, bar)
        finally:
            bar.close()

    def _prepare(self, final: Path, bar: tqdm) -> None:
        bar.set_postfix_str("loading corpus")
        corpus: Corpus = self.source.load(progress=self.progress)
        corpus = extract_entities(corpus, self.entities, self.entity_list, self.spacy_model)
        bar.update()
        bar.set_postfix_str("tokenizer")
        tok, tok_key = get_tokenizer(
            corpus.texts["train"],
            vocab_size=int(self.tokenizer_cfg.get("vocab_size", 4096)),
            min_frequency=int(self.tokenizer_cfg.get("min_frequency", 2)),
            path=self.tokenizer_cfg.get("path"),
            cache_dir=self.cache_dir / "tokenizers",
            show_progress=False,
        )
        bar.update()
        eos = tok.token_to_id(EOS)
        canaries, extra = None, None
        if self.canary_cfg.get("repetitions"):
            bar.set_postfix_str("canaries")
            c = self.canary_cfg
            canaries = make_canaries(
                tok.get_vocab_size(),
                eos,
                list(c["repetitions"]),
                int(c.get("per_group", 1)),
                int(c.get("length", 64)),
                int(c.get("alphabet_size", 256)),
                int(c.get("seed", self.seed)),
            )
            rng = np.random.default_rng(int(c.get("seed", self.seed)) + 1)
            n_docs = len(corpus.texts["train"])
            extra = [
                (int(rng.integers(0, n_docs + 1)), toks)
                for toks, r in zip(canaries["tokens"], canaries["repetitions"])
                for _ in range(r)
            ]
        bar.update()
        tmp = _atomic_dir(final)
        try:
            packed = {}
            for split in SPLITS:
                if split not in corpus.texts or not corpus.texts[split]:
                    continue
                bar.set_postfix_str(f"packing {split}")
                packed[split] = tokenize_and_pack(
                    tok,
                    corpus.texts[split],
                    corpus.spans_for(split),
                    self.block_size,
                    split,
                    extra_docs=extra if split == "train" else None,
                )
                torch.save(
                    {
                        "tokens": packed[split].tokens,
                        "n_real": packed[split].n_real,
                        "block_size": self.block_size,
                        "doc_offsets": torch.from_numpy(packed[split].doc_offsets),
                    },
                    tmp / f"{split}.pt",
                )
                packed[split].spans.to_parquet(tmp / f"{split}_spans.parquet", index=False)
            bar.update()
            bar.set_postfix_str("ground truth")
            tok.save(str(tmp / "tokenizer.json"))
            gt = tmp / "ground_truth"
            gt.mkdir()
            for name, table in corpus.ground_truth.items():
                table.to_parquet(gt / f"{name}.parquet", index=False)
            if corpus.entities is not None:
                corpus.entities[["entity_id", "entity"]].to_parquet(tmp / "entities.parquet", index=False)
                if self.entities == "synthetic":  # generator truth, as packed: pairs sharing a window
                    window_comentions(packed["train"].spans, corpus.entities).to_parquet(
                        gt / "comentions_windows_train.parquet", index=False
                    )
            if canaries is not None:
                canaries.to_parquet(gt / "canaries.parquet", index=False)
            train = packed["train"]
            counts = torch.bincount(train.tokens[: train.n_real], minlength=tok.get_vocab_size()).double()
            p = counts[counts > 0] / counts.sum()
            meta = {
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
                    }
                    for s, pk in packed.items()
                },
                "unigram_entropy_nats": float(-(p * p.log()).sum()),
                "canaries": 0 if canaries is None else len(canaries),
                "entities": {
                    "method": self.entities,
                    "count": 0 if corpus.entities is None else len(corpus.entities),
                    "train_mentions": int((packed["train"].spans["kind"] == "name").sum()),
                },
            }
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
            bar.update()
            if final.exists():  # another process finished first: keep its copy
                shutil.rmtree(tmp)
            else:
                os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def setup(self, stage: str | None = None) -> None:
        """Load the prepared data (every process) and copy run-folder artifacts (rank 0)."""
        if self.splits:
            return
        d = self.data_dir
        if not (d / "meta.json").is_file():
            if int(os.environ.get("LOCAL_RANK", 0)) == 0:
                self.prepare_data()
            else:  # another process of this node prepares it (Lightning calls prepare_data on local rank 0)
                deadline = time.time() + float(os.environ.get("DENSITYLAB_PREPARE_TIMEOUT", 3600))
                while not (d / "meta.json").is_file():
                    if time.time() > deadline:
                        raise TimeoutError(f"waited too long for local rank 0 to prepare {d}")
                    time.sleep(0.5)
        self.meta = json.loads((d / "meta.json").read_text())
        self.tokenizer = Tokenizer.from_file(str(d / "tokenizer.json"))
        for split in SPLITS:
            f = d / f"{split}.pt"
            if f.is_file():
                s = torch.load(f, weights_only=True)
                self.splits[split] = PackedSplit(
                    s["tokens"],
                    int(s["n_real"]),
                    int(s["block_size"]),
                    s["doc_offsets"].numpy(),
                    pd.read_parquet(d / f"{split}_spans.parquet"),
                )
        self.ground_truth_dir = d / "ground_truth"
        self.entity_table = pd.read_parquet(d / "entities.parquet") if (d / "entities.parquet").is_file() else None
        canary_file = self.ground_truth_dir / "canaries.parquet"
        self.canaries = pd.read_parquet(canary_file) if canary_file.is_file() else None
        self._export()

    @rank_zero_only
    def _export(self) -> None:
        if self.output_dir is None:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.data_dir / "tokenizer.json", self.output_dir / "tokenizer.json")
        gt = self.output_dir / "ground_truth"
        if any(self.ground_truth_dir.iterdir()):
            shutil.copytree(self.ground_truth_dir, gt, dirs_exist_ok=True)
        (self.output_dir / "data.json").write_text(json.dumps(self.meta, indent=2))

    # ------------------------------------------------------------------ loaders
    @property
    def vocab_size(self) -> int:
        """Tokenizer vocabulary size (after :meth:`setup`)."""
        return int(self.meta["vocab_size"])

    @property
    def eos_id(self) -> int:
        """Id of ``<|endoftext|>``."""
        return self.tokenizer.token_to_id(EOS)

    def train_dataloader(self) -> DataLoader:
        """Shuffled (seeded) training windows: every window exactly once per epoch, every batch full
        (padded with < batch_size × world_size padding windows per epoch; see :class:`WindowDataset`),
        sharded over processes by :class:`ResumableShardSampler` (set ``use_distributed_sampler=False``
        on the Trainer). When a run resumes mid-epoch, the batches already trained in that epoch are
        skipped, so the resumed run trains exactly what an uninterrupted run would."""
        world = self.trainer.world_size if self.trainer is not None else 1
        ds = WindowDataset(self.splits["train"], pad_to_multiple=self.batch_size * world, pad_id=self.eos_id)
        return resumable_train_loader(ds, self.batch_size, self.seed, self.trainer, self.num_workers)

    def val_dataloader(self) -> DataLoader:
        """Held-out windows (never trained on), at most ``max_val_windows``, evenly spaced."""
        ds: Dataset = WindowDataset(self.splits["heldout"], pad_id=self.eos_id)
        n = len(ds)
        if self.max_val_windows and n > self.max_val_windows:
            idx = np.linspace(0, n - 1, self.max_val_windows).round().astype(int).tolist()
            ds = torch.utils.data.Subset(ds, idx)
        return DataLoader(
            ds,
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=collate_batch,
            persistent_workers=self.num_workers > 0,
        )

    def tokens_per_step_per_process(self) -> int:
        """Input tokens in one full batch: batch_size x block_size."""
        return self.batch_size * self.block_size

    @property
    def unigram_entropy(self) -> float:
        """Entropy of the training split's token unigram distribution in nats/token
        (the loss of the best context-free model; a trained LM must beat it)."""
        return float(self.meta["unigram_entropy_nats"])
