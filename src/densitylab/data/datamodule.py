"""LightningDataModule: source -> tokenizer -> packed windows (cached) -> DataLoaders.

``conf/data/*.yaml`` builds it with Hydra: ``data.source``, ``data.tokenizer`` (``${tokenizer}``) and
``data.entities`` are nested nodes with their own ``_target_``, instantiated first and passed in as
objects. ``prepare_data`` (one process per node) runs :meth:`~densitylab.data.prepare.DataRecipe.build`;
``setup`` (every process) loads the cache and copies ``tokenizer.json`` and ``ground_truth/`` into the
run folder. The loaders come from :mod:`densitylab.data.loaders`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import lightning as L
import pandas as pd
from lightning.pytorch.utilities import rank_zero_only
from tokenizers import Tokenizer
from torch.utils.data import DataLoader

from densitylab.data.canaries import check_canary_config
from densitylab.data.entities import EntityExtractor
from densitylab.data.loaders import WindowDataset, heldout_loader, resumable_train_loader
from densitylab.data.packing import PackedSplit
from densitylab.data.prepare import CACHE_VERSION, DataRecipe, export_run_artifacts, load_prepared, wait_for_prepared
from densitylab.data.sources import Source, SyntheticSource, warn_single_documents
from densitylab.data.tokenizer import EOS, TokenizerSpec
from densitylab.errors import ConfigError

__all__ = ["CACHE_VERSION", "DataModule"]

log = logging.getLogger(__name__)


def _positive_int(value: object, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key}={value!r}: expected a positive integer")
    return value


def _with_rank_seed(source: Source, rank_seed: int | None) -> Source:
    """``source`` with ``data.rank_seed`` injected (a synthetic source's own settings checked in full).

    Raises:
        ConfigError: see :class:`DataModule` (``rank_seed``).
    """
    if rank_seed is not None:
        if isinstance(rank_seed, bool) or not isinstance(rank_seed, int) or rank_seed < 0:
            raise ConfigError(f"data.rank_seed={rank_seed!r}: expected null or an integer >= 0")
        if not isinstance(source, SyntheticSource):
            raise ConfigError(
                f"data.rank_seed={rank_seed}: only the synthetic source (data=synthetic|synthetic_smoke) has "
                f"popularity ranks, got data.source of type {type(source).__name__}; expected data.rank_seed=null"
            )
        if source.rank_seed is not None and source.rank_seed != rank_seed:
            raise ConfigError(
                f"data.rank_seed={rank_seed} conflicts with data.source.rank_seed={source.rank_seed}: expected one "
                "of them (data.rank_seed) or equal values"
            )
        source = dataclasses.replace(source, rank_seed=rank_seed)
    if isinstance(source, SyntheticSource):
        source.check()  # e.g. a Latin square without a rank seed: at construction, not at preparation
    return source


class DataModule(L.LightningDataModule):
    """Tokenized, packed, cached data for training, validation and probes.

    Args:
        source: the corpus source, e.g. :class:`~densitylab.data.sources.SyntheticSource`
            (``data/source=synthetic|text|hub``).
        tokenizer: the tokenizer spec, :class:`~densitylab.data.tokenizer.TrainedBPE` or
            :class:`~densitylab.data.tokenizer.TokenizerFile` (``tokenizer=bpe|file``).
        entities: the entity extractor (:mod:`densitylab.data.entities`;
            ``data/entities=synthetic|gazetteer|capitalized|spacy|none``).
        block_size: window input length T in tokens (= ``model.net.block_size``).
        batch_size: windows per batch (per process).
        canaries: dict with ``repetitions`` (list; empty = no canaries), ``per_group``, ``length``,
            ``alphabet_size`` and optionally ``seed`` (see :mod:`densitylab.data.canaries`); None = none.
        seed: seed for shuffling and canaries.
        max_val_windows: cap on validation windows (evenly spaced over the held-out split), or
            None for all.
        num_workers: DataLoader workers.
        num_proc: processes that tokenize and pack the splits while preparing data (contiguous shards of documents,
            joined in order: the prepared data is the same for any value; it is not part of the cache key).
        prepare_shards: machines that prepare the data together (multi-node runs with ``cache_dir`` on a filesystem
            every node sees): node ``r`` (``trainer.node_rank``, else ``$NODE_RANK`` / ``$GROUP_RANK`` /
            ``$SLURM_NODEID``) tokenizes shard ``r`` and node 0 joins them (:meth:`DataRecipe.build`); 1 = node 0's
            local rank 0 prepares everything. The same data for any value.
        progress: show progress bars while preparing data.
        cache_dir: folder for the tokenized-data cache (None: ``~/.cache/densitylab``).
        output_dir: run folder (``tokenizer.json``, ``ground_truth/`` and ``data.json`` are copied
            there); None writes nothing.
        rank_seed: ``data.rank_seed``: None (default) keeps the source as it is; an integer ``>= 0`` picks
            the counterbalanced synthetic corpus of that rank permutation (the source becomes
            ``dataclasses.replace(source, rank_seed=rank_seed)``; same people and tokenizer for every value,
            see :mod:`densitylab.data.synthetic.ranks`). Only the synthetic source has popularity ranks.

    The defaults of the optional arguments equal ``conf/data/base.yaml`` (checked by
    ``tests/test_data_config.py``); ``cache_dir`` and ``output_dir`` are set there from ``paths``.

    Raises:
        ConfigError: for a source, tokenizer or extractor of the wrong kind (e.g. a string left by an
            old-style ``data.source=text`` override), or invalid sizes or canary settings; for a ``rank_seed``
            that is not null or an integer >= 0, set with a source other than the synthetic one, or
            conflicting with ``data.source.rank_seed``; for a ``data.source.latin_square`` without a rank seed.
    """

    def __init__(
        self,
        *,
        source: Source,
        tokenizer: TokenizerSpec,
        entities: EntityExtractor,
        block_size: int,
        batch_size: int,
        canaries: dict | None,
        seed: int,
        max_val_windows: int | None = 256,
        num_workers: int = 0,
        progress: bool = True,
        cache_dir: str | None = None,
        output_dir: str | None = None,
        rank_seed: int | None = None,
        num_proc: int = 1,
        prepare_shards: int = 1,
    ) -> None:
        super().__init__()
        if not isinstance(source, Source):
            raise ConfigError(
                f"data.source={source!r}: expected a source object with fingerprint() and load() (a config node "
                "with a _target_): choose one with data=synthetic|text|hub or data/source=synthetic|text|hub"
            )
        if not isinstance(tokenizer, TokenizerSpec):
            raise ConfigError(
                f"data.tokenizer={tokenizer!r}: expected a tokenizer spec with fingerprint() and build() (a config "
                "node with a _target_): choose one with tokenizer=bpe|file"
            )
        if not isinstance(entities, EntityExtractor):
            raise ConfigError(
                f"data.entities={entities!r}: expected an entity extractor with method, fingerprint() and extract() (a "
                "config node with a _target_): choose one with data/entities=synthetic|gazetteer|capitalized|spacy|none"
            )
        source = _with_rank_seed(source, rank_seed)
        self.batch_size = _positive_int(batch_size, "data.batch_size")
        self.block_size = _positive_int(block_size, "data.block_size")
        if max_val_windows is not None and (isinstance(max_val_windows, bool) or not isinstance(max_val_windows, int)):
            raise ConfigError(f"data.max_val_windows={max_val_windows!r}: expected an integer or null (all)")
        num_proc = _positive_int(num_proc, "data.num_proc")
        self.prepare_shards = _positive_int(prepare_shards, "data.prepare_shards")
        self.recipe = DataRecipe(
            source, tokenizer, entities, self.block_size, check_canary_config(canaries), seed, num_proc=num_proc
        )
        self.source, self.entities, self.seed = source, entities, seed
        self.num_workers = num_workers
        self.cache_dir = Path(cache_dir or Path.home() / ".cache" / "densitylab")
        self.output_dir = Path(output_dir) if output_dir else None
        self.max_val_windows = max_val_windows
        self.progress = progress
        self.entity_table: pd.DataFrame | None = None
        self.tokenizer: Tokenizer | None = None
        self.splits: dict[str, PackedSplit] = {}
        self.meta: dict = {}
        self.canaries: pd.DataFrame | None = None
        self.ground_truth_dir: Path | None = None
        self._key: str | None = None
        self._warned = False  # warn_single_documents once per data module (prepare_data runs more than once)

    # ------------------------------------------------------------------ cache
    def cache_key(self) -> str:
        """Hex key of the prepared data (validates the source's input; no heavy work)."""
        if self._key is None:
            self._key = self.recipe.cache_key()
        return self._key

    @property
    def data_dir(self) -> Path:
        """Cache folder of this configuration's prepared data."""
        return self.cache_dir / "data" / self.cache_key()

    def prepare_data(self) -> None:
        """Build and cache everything once (local rank 0). Raises the source's errors. A text file that reads as
        one long document gets a warning (:func:`~densitylab.data.sources.warn_single_documents`), cached or not."""
        if not self._warned:
            self._warned = True
            warn_single_documents(self.source)
        if (self.data_dir / "meta.json").is_file():
            if not self.splits:
                log.info("data: cache hit %s", self.data_dir)
            return
        shard = None
        if self.prepare_shards > 1:
            rank, nodes = self._node_rank()
            if rank is None:
                raise ConfigError(
                    f"data.prepare_shards={self.prepare_shards}: no node rank found (NODE_RANK, GROUP_RANK or "
                    "SLURM_NODEID): expected a multi-node launch (torchrun, SLURM), or data.prepare_shards=1"
                )
            if (nodes is not None and nodes != self.prepare_shards) or rank >= self.prepare_shards:
                raise ConfigError(
                    f"data.prepare_shards={self.prepare_shards}: this is node {rank} of {nodes or '?'}; expected one "
                    "shard per node (data.prepare_shards = trainer.num_nodes)"
                )
            shard = (rank, self.prepare_shards)
        self.recipe.build(self.data_dir, self.cache_dir, progress=self.progress, shard=shard)

    def _node_rank(self) -> tuple[int | None, int | None]:
        """(this node's rank, the number of nodes) from the attached trainer, else from the launcher's environment
        (torchrun: GROUP_RANK, WORLD_SIZE / LOCAL_WORLD_SIZE; SLURM: SLURM_NODEID, SLURM_NNODES; Lightning:
        NODE_RANK); None where unknown."""
        if self.trainer is not None:
            return int(self.trainer.node_rank), int(self.trainer.num_nodes)
        env = os.environ
        rank = next(
            (int(env[v]) for v in ("NODE_RANK", "GROUP_RANK", "SLURM_NODEID") if env.get(v, "").isdigit()), None
        )
        nodes = None
        if env.get("WORLD_SIZE", "").isdigit() and env.get("LOCAL_WORLD_SIZE", "").isdigit():
            nodes = int(env["WORLD_SIZE"]) // max(int(env["LOCAL_WORLD_SIZE"]), 1)
        elif env.get("SLURM_NNODES", "").isdigit():
            nodes = int(env["SLURM_NNODES"])
        return rank, nodes

    def setup(self, stage: str | None = None) -> None:
        """Load the prepared data (every process) and copy run-folder artifacts (rank 0)."""
        if self.splits:
            return
        d = self.data_dir
        if not (d / "meta.json").is_file():
            if int(os.environ.get("LOCAL_RANK", 0)) == 0:
                self.prepare_data()
            else:  # another process of this node prepares it (Lightning calls prepare_data on local rank 0)
                wait_for_prepared(d)
        data = load_prepared(d)
        self.meta, self.tokenizer, self.splits = data.meta, data.tokenizer, data.splits
        self.entity_table, self.canaries, self.ground_truth_dir = (
            data.entity_table,
            data.canaries,
            data.ground_truth_dir,
        )
        self._export()

    @rank_zero_only
    def _export(self) -> None:
        if self.output_dir is not None:
            export_run_artifacts(self.data_dir, self.output_dir, self.meta)

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
        sharded over processes by :class:`~densitylab.data.loaders.ResumableShardSampler` (set
        ``use_distributed_sampler=False`` on the Trainer). When a run resumes mid-epoch, the batches
        already trained in that epoch are skipped, so the resumed run trains exactly what an
        uninterrupted run would. Batches: ``input_ids`` / ``labels`` (B, T) int64, ``sample_id`` (B,)."""
        world = self.trainer.world_size if self.trainer is not None else 1
        ds = WindowDataset(self.splits["train"], pad_to_multiple=self.batch_size * world, pad_id=self.eos_id)
        return resumable_train_loader(ds, self.batch_size, self.seed, self.trainer, self.num_workers)

    def val_dataloader(self) -> DataLoader:
        """Held-out windows (never trained on), at most ``max_val_windows``, evenly spaced."""
        ds = WindowDataset(self.splits["heldout"], pad_id=self.eos_id)
        return heldout_loader(ds, self.batch_size, self.max_val_windows, self.num_workers)

    def tokens_per_step_per_process(self) -> int:
        """Input tokens in one full batch: batch_size x block_size."""
        return self.batch_size * self.block_size

    @property
    def unigram_entropy(self) -> float:
        """Entropy of the training split's token unigram distribution in nats/token
        (the loss of the best context-free model; a trained LM must beat it)."""
        return float(self.meta["unigram_entropy_nats"])
