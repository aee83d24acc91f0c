"""Datasets, samplers and DataLoaders over packed windows (no Lightning import).

- :class:`WindowDataset`: the windows of a :class:`~densitylab.data.packing.PackedSplit`, padded to full
  batches, served a batch at a time (``__getitems__`` + :func:`collate_batch`).
- :class:`ResumableShardSampler`: seeded per-epoch permutations, sharded over processes, able to start
  mid-epoch.
- :class:`ResumableDataLoader` and :func:`resumable_train_loader`: the training loader of every
  densitylab data module, resuming mid-epoch from the trainer's restored global step.
- :func:`heldout_loader`: the validation loader (evenly spaced, capped held-out windows).
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from densitylab.data.packing import IGNORE_INDEX, PackedSplit

if TYPE_CHECKING:
    import lightning as L


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
        w = self.packed.gather(sid.clamp(max=n - 1).numpy())  # reads only these windows from the token map
        x, y = w[:, :-1].contiguous(), w[:, 1:].clone()
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
    :func:`resumable_train_loader`. The state records the settings that make that derivation valid; a
    resume that changes them gets a warning (the order then differs from an uninterrupted run).
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


def resumable_train_loader(
    ds: Dataset, batch_size: int, seed: int, trainer: L.Trainer | None, num_workers: int = 0
) -> ResumableDataLoader:
    """The training loader of every densitylab DataModule: seeded per-epoch permutations sharded
    over the trainer's processes, resuming mid-epoch from the trainer's restored global step.

    Args:
        ds: a dataset whose length is a multiple of ``batch_size × world_size`` (pad it) and whose
            ``__getitems__`` returns a whole batch (use :func:`collate_batch`).
        batch_size: items per batch (per process).
        seed: shuffling seed (epoch ``e`` uses ``seed + e``).
        trainer: the attached Trainer (None: one process, from the start); anything with
            ``world_size``, ``global_rank``, ``global_step`` and ``accumulate_grad_batches``.
        num_workers: DataLoader workers.

    Returns:
        A :class:`ResumableDataLoader` yielding dicts of ``input_ids`` / ``labels`` (B, T) int64 and
        ``sample_id`` (B,) int64.
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


def heldout_loader(ds: Dataset, batch_size: int, max_windows: int | None = None, num_workers: int = 0) -> DataLoader:
    """Validation loader over ``ds`` in order, at most ``max_windows`` items evenly spaced over it
    (None or 0: all), batches of ``batch_size`` (the last one may be short)."""
    n = len(ds)
    if max_windows and n > max_windows:
        idx = np.linspace(0, n - 1, max_windows).round().astype(int).tolist()
        ds = torch.utils.data.Subset(ds, idx)
    return DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_batch,
        persistent_workers=num_workers > 0,
    )
