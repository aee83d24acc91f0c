"""Pure uniform random token sequences: the data of the capacity experiment (Morris et al.,
"How much do language models memorize?", arXiv:2505.24832, §3).

Nothing in such data can be generalized, so every bit a model learns about it is memorized: the
total memorized bits over the training sequences (:mod:`densitylab.probes.memorization`) measures
what the model stores, and its plateau over dataset size N is the model's capacity.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import lightning as L
import pandas as pd
import torch
from lightning.pytorch.utilities import rank_zero_only
from torch.utils.data import DataLoader, Dataset

from densitylab.data.loaders import collate_batch, resumable_train_loader
from densitylab.data.packing import IGNORE_INDEX
from densitylab.errors import ConfigError


def make_uniform_sequences(n: int, length: int, alphabet_size: int, seed: int) -> torch.Tensor:
    """(n, length) int64 token ids, i.i.d. uniform over ``0 .. alphabet_size-1``, from ``seed``.

    The first ``n`` rows are the same for every larger ``n`` with the same seed (a bigger dataset
    extends a smaller one), so a sweep over N nests its datasets.

    Raises:
        ConfigError: for n < 1, length < 2 or alphabet_size < 2.
    """
    if n < 1 or length < 2 or alphabet_size < 2:
        raise ConfigError(
            f"data.n_sequences={n}, length={length}, alphabet_size={alphabet_size}: "
            "expected n >= 1, length >= 2, alphabet_size >= 2"
        )
    g = torch.Generator().manual_seed(int(seed))
    rows = [torch.randint(0, alphabet_size, (1024, length), generator=g) for _ in range(math.ceil(n / 1024))]
    return torch.cat(rows)[:n].contiguous()


class SequenceDataset(Dataset):
    """Fixed-length sequences as training windows: item ``i`` is sequence ``i`` with ``input_ids``
    = tokens[i, :-1] and ``labels`` = tokens[i, 1:] (each (S−1,) int64), ``sample_id`` = i.

    With ``pad_to_multiple = m`` the length rounds up to a multiple of ``m`` with padding items
    (labels all -100, sample_id -1), so every batch is full and every sequence is seen exactly once
    per epoch (the contract of :class:`~densitylab.data.loaders.WindowDataset`).
    """

    def __init__(self, tokens: torch.Tensor, pad_to_multiple: int = 1) -> None:
        self.tokens = tokens
        self._len = -(-tokens.shape[0] // pad_to_multiple) * pad_to_multiple

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.__getitems__([int(i)]).items()}

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        sid = torch.as_tensor(indices, dtype=torch.int64)
        n = self.tokens.shape[0]
        if sid.numel() and (sid.min() < 0 or sid.max() >= self._len):
            raise IndexError(f"sequence index outside [0, {self._len})")
        real = sid < n
        w = self.tokens[sid.clamp(max=n - 1)]
        x, y = w[:, :-1].clone(), w[:, 1:].clone()
        if not bool(real.all()):
            x[~real] = 0
            y[~real] = IGNORE_INDEX
            sid = torch.where(real, sid, torch.full_like(sid, -1))
        return {"input_ids": x, "labels": y, "sample_id": sid}


class UniformSequenceDataModule(L.LightningDataModule):
    """N uniform random sequences of S tokens over an alphabet of A tokens; the vocabulary *is* the
    alphabet (token ids 0..A−1, no tokenizer). Training sequences are the memorization probe's
    canaries: ``ground_truth/canaries.parquet`` lists them (``repetitions`` = 1 per epoch), so
    :class:`~densitylab.callbacks.MemorizationCallback` measures total memorized bits of the whole
    training set. Validation uses ``n_heldout`` fresh sequences from another seed: nothing about
    them can be learned, so ``val/loss`` never goes below ln A nats/token (it rises above it as the
    model grows confident about the training sequences), a built-in check of the setup. The density
    probe's windows-only mode (``callbacks=uniform_control``, the Lazy-Neuron control) reads
    :meth:`probe_windows`.

    Args:
        n_sequences: N, training sequences (dataset size).
        length: S, tokens per sequence (the model's ``block_size`` must be >= S − 1).
        alphabet_size: A (= vocabulary size).
        batch_size: sequences per batch per process.
        seed: data seed (the training sequences; shuffling uses it too).
        n_heldout: fresh sequences for ``val/loss`` (>= ln A nats/token).
        output_dir: run folder (``ground_truth/canaries.parquet`` and ``data.json`` go there).
        num_workers: DataLoader workers.

    The defaults equal ``conf/data/uniform.yaml`` (checked by ``tests/test_data_config.py``).

    Raises:
        ConfigError: for invalid sizes.
    """

    def __init__(
        self,
        *,
        n_sequences: int = 1024,
        length: int = 64,
        alphabet_size: int = 256,
        batch_size: int = 64,
        seed: int,
        n_heldout: int = 256,
        output_dir: str | None = None,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ConfigError(f"data.batch_size={batch_size}: expected a positive integer")
        if n_heldout < 1:
            raise ConfigError(f"data.n_heldout={n_heldout}: expected >= 1")
        self.n_sequences, self.length, self.alphabet_size = int(n_sequences), int(length), int(alphabet_size)
        self.batch_size, self.seed, self.n_heldout, self.num_workers = (
            int(batch_size),
            int(seed),
            int(n_heldout),
            num_workers,
        )
        self.output_dir = Path(output_dir) if output_dir else None
        self.train_tokens = make_uniform_sequences(self.n_sequences, self.length, self.alphabet_size, self.seed)
        self.heldout_tokens = make_uniform_sequences(
            self.n_heldout, self.length, self.alphabet_size, self.seed + 1_000_003
        )
        self.tokenizer = None
        self.entity_table = None
        # no packed text splits: the text-only probes (ledger, modularity, the density panel) do not apply; the
        # density probe reads probe_windows() instead (callbacks=uniform_control)
        self.splits: dict = {}
        self.canaries = pd.DataFrame(
            {
                "canary_id": range(self.n_sequences),
                "repetitions": 1,
                "alphabet_size": self.alphabet_size,
                "tokens": self.train_tokens.tolist(),
            }
        )
        self.meta = {
            "corpus": f"uniform(N={self.n_sequences},S={self.length},A={self.alphabet_size})",
            "vocab_size": self.alphabet_size,
            "block_size": self.length - 1,
            "n_sequences": self.n_sequences,
            "length": self.length,
            "alphabet_size": self.alphabet_size,
            "entropy_bits": self.n_sequences * (self.length - 1) * math.log2(self.alphabet_size),
            "splits": {
                "train": {"sequences": self.n_sequences, "tokens": self.n_sequences * self.length},
                "heldout": {"sequences": self.n_heldout, "tokens": self.n_heldout * self.length},
            },
            "unigram_entropy_nats": math.log(self.alphabet_size),
        }

    @property
    def vocab_size(self) -> int:
        """A: the alphabet is the vocabulary."""
        return self.alphabet_size

    @property
    def eos_id(self) -> None:
        """No end-of-text token in uniform data."""
        return None

    @property
    def unigram_entropy(self) -> float:
        """ln A nats/token: the exact loss of the generating distribution (no model can beat it on held-out data)."""
        return math.log(self.alphabet_size)

    def probe_windows(self, n: int) -> dict[str, dict[str, torch.Tensor]]:
        """Fixed windows for the density probe on data without packed text splits (the windows-only mode of
        :class:`~densitylab.callbacks.DensityCallback`: the Lazy-Neuron control, Li et al., "The Lazy Neuron
        Phenomenon", arXiv:2210.06313).

        - ``"seen"``: the first ``k = min(n, N)`` training sequences; each is trained once per epoch (the
          first rows of a smaller dataset are those of a larger one, so a sweep over N probes the same rows);
        - ``"heldout"``: the first ``k = min(n, n_heldout)`` held-out sequences (the ``val/loss`` ones), never
          trained on.

        Each value has the keys of a training batch (:class:`SequenceDataset`) plus ``window_id``:
        ``input_ids`` (k, S−1) int64 = tokens[:, :-1]; ``labels`` (k, S−1) int64 = tokens[:, 1:] (the next
        token of every input position); ``sample_id`` (k,) int64, the training sequence ids for ``seen`` and
        -1 for ``heldout`` (never a training sample); ``window_id`` (k,) int64, each row's sequence index in
        its own split (``0 .. k-1``).

        Raises:
            ConfigError: if ``n`` is not an integer >= 1.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"probe windows: n={n!r}: expected an integer >= 1")
        out = {}
        for name, tokens in (("seen", self.train_tokens), ("heldout", self.heldout_tokens)):
            ids = list(range(min(n, tokens.shape[0])))
            w = SequenceDataset(tokens).__getitems__(ids)
            w["window_id"] = w["sample_id"].clone()
            if name == "heldout":
                w["sample_id"] = torch.full_like(w["sample_id"], -1)
            out[name] = w
        return out

    def prepare_data(self) -> None:
        """Nothing to prepare: the data are generated in memory from the seed."""

    def setup(self, stage: str | None = None) -> None:
        """Write the ground truth and data description into the run folder (rank 0)."""
        self._export()

    @rank_zero_only
    def _export(self) -> None:
        if self.output_dir is None:
            return
        gt = self.output_dir / "ground_truth"
        gt.mkdir(parents=True, exist_ok=True)
        tmp = gt / "canaries.parquet.tmp"
        self.canaries.to_parquet(tmp, index=False)
        shutil.move(tmp, gt / "canaries.parquet")
        (self.output_dir / "data.json").write_text(json.dumps(self.meta, indent=2))

    def train_dataloader(self) -> DataLoader:
        """Every training sequence once per epoch, shuffled (seeded), full batches (see
        :class:`SequenceDataset`), sharded over processes and resumable mid-epoch."""
        world = self.trainer.world_size if self.trainer is not None else 1
        ds = SequenceDataset(self.train_tokens, pad_to_multiple=self.batch_size * world)
        return resumable_train_loader(ds, self.batch_size, self.seed, self.trainer, self.num_workers)

    def val_dataloader(self) -> DataLoader:
        """The ``n_heldout`` fresh sequences (never trained on)."""
        return DataLoader(
            SequenceDataset(self.heldout_tokens),
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=collate_batch,
        )

    def tokens_per_step_per_process(self) -> int:
        """Input tokens in one full batch: batch_size × (S − 1)."""
        return self.batch_size * (self.length - 1)
