"""Lightning adapter for the exposure ledger: count every batch, log, checkpoint, write tables."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import numpy as np
from lightning.pytorch.utilities import rank_zero_only

from densitylab.callbacks.wandb_util import find_wandb_logger
from densitylab.ledger import ExposureLedger, ExtraWindows, ledger_tables, write_ledger
from densitylab.probes.schedule import is_scheduled

log = logging.getLogger(__name__)


class LedgerCallback(L.Callback):
    """Keeps an :class:`~densitylab.ledger.ExposureLedger` of the training run.

    - every training batch: ``ledger.update`` (device-side, no sync);
    - every ``trainer.log_every_n_steps``: DDP sum, then scalars ``ledger/tokens_seen``,
      ``ledger/distinct_tokens_seen``, ``ledger/entities_seen``, ``ledger/mentions_seen``,
      ``ledger/windows_seen``, ``ledger/padding_tokens`` (inputs of the < B·W padding windows per
      epoch that keep every batch full; counted as ``<|endoftext|>`` in the token counts);
    - at probe cadence (log-spaced steps, then every ``every_n_steps``): W&B histograms of
      log2(1 + count) for tokens and entities and a table of the most and least seen entities;
    - at every checkpoint and at the end: ``ledger/{tokens,entities,cooccurrence}.parquet`` in the
      run folder (atomic writes; ``entities`` holds per entity mentions, first_step, last_step,
      subject_docs, distinct_docs and comentions, see :func:`~densitylab.ledger.ledger_tables`) and, at the end,
      ``plots/ledger_zipf.png``
      (:func:`densitylab.report.ledger.plot_rank_frequency`);
    - its state (the totals) is saved in the checkpoint, so a resumed run continues the same counts
      (every entity and document count is derived from the window counts, so it resumes with them).

    A callback that inserts windows of its own into batches (windows that are not part of the packed
    training split, e.g. new facts for priming) has them counted by defining
    ``ledger_windows(trainer, first_window) -> ExtraWindows | None``. At fit start, before the ledger is
    built, every callback in ``trainer.callbacks`` that has this method is called once, in that order
    (possibly before its own ``on_fit_start``): ``first_window`` is the global sample id its block starts
    at (``packed.n_windows`` for the first such callback, then advanced by each returned block's
    ``n_windows``; None = no windows, the next callback gets the same ``first_window``). The returned
    :class:`~densitylab.ledger.ExtraWindows` uses local window ids 0..n_windows-1; the callback must put
    ``first_window + local id`` in ``batch["sample_id"]`` of each row it inserts (by the time this
    callback's ``on_train_batch_end`` reads the batch), and every count of the ledger (windows, mentions,
    documents, co-mentions, pairs, first / last steps) covers those windows as any other. The blocks are
    collected before a checkpoint's state is applied, so a resumed run with the same config (hence the
    same blocks) restores the longer counters exactly; a different total ``n_windows`` is a ValueError.

    Args:
        output_dir: run folder (tables go to ``output_dir/ledger``, the plot to ``output_dir/plots``).
        every_n_steps: probe cadence for histograms and tables.
        top_k: rows of the most- and least-seen entity table.
    """

    def __init__(self, output_dir: str | None = None, every_n_steps: int = 100, top_k: int = 20) -> None:
        self.output_dir = Path(output_dir) if output_dir else None
        self.every_n_steps = every_n_steps
        self.top_k = top_k
        self.ledger: ExposureLedger | None = None
        self._entity_names: list[str] = []
        self._token_text = None
        self._pending_state: dict | None = None
        self._last_logged = -1

    # ------------------------------------------------------------------ build / restore
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Build the ledger on the training device (after the model moved there and after a
        checkpoint's state was handed to :meth:`load_state_dict`), with the extra windows of the callbacks
        that define ``ledger_windows`` (see the class docstring).

        Raises:
            ConfigError: without packed text data.
            TypeError: if a ``ledger_windows`` returns something other than an ``ExtraWindows`` or None.
            ValueError: if an extra block names an entity outside the entity table, or a checkpoint's ledger
                was built for different data (see :meth:`ExposureLedger.load_state_dict`).
        """
        dm = trainer.datamodule
        if dm is None or "train" not in getattr(dm, "splits", {}):
            from densitylab.errors import ConfigError

            raise ConfigError(
                "callbacks.ledger (and density, modularity) need packed text data (data=synthetic|text|hub): "
                "with data=uniform use callbacks=capacity, or set callbacks.ledger=null"
            )
        table = dm.entity_table
        self._entity_names = [] if table is None else table.sort_values("entity_id")["entity"].astype(str).tolist()
        packed = dm.splits["train"]
        self.ledger = ExposureLedger.from_packed(
            packed,
            vocab_size=pl_module.model.config.vocab_size,
            n_entities=len(self._entity_names),
            device=pl_module.device,
            extra=self._extra_windows(trainer, packed.n_windows),
        )
        tok = dm.tokenizer
        texts = [tok.decode([i]) for i in range(self.ledger.vocab_size)] if tok is not None else None
        self._token_text = texts.__getitem__ if texts is not None else None
        if self._pending_state is not None:
            self.ledger.load_state_dict(self._pending_state)
            self._pending_state = None

    @staticmethod
    def _extra_windows(trainer: L.Trainer, first_window: int) -> list[ExtraWindows]:
        """The blocks of the callbacks defining ``ledger_windows``, in ``trainer.callbacks`` order."""
        blocks: list[ExtraWindows] = []
        for cb in trainer.callbacks:
            provide = getattr(cb, "ledger_windows", None)
            if not callable(provide):
                continue
            block = provide(trainer, first_window)
            if block is None:
                continue
            if not isinstance(block, ExtraWindows):
                raise TypeError(
                    f"{type(cb).__name__}.ledger_windows returned a {type(block).__name__}: "
                    "expected ExtraWindows or None"
                )
            blocks.append(block)
            first_window += block.n_windows
        return blocks

    def state_dict(self) -> dict:
        """The ledger's totals (after a DDP sum) for the checkpoint."""
        if self.ledger is None:
            return self._pending_state or {}
        self.ledger.sync()  # collective under DDP: every process saves the checkpoint's state
        return self.ledger.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore the totals from a checkpoint (applied when the ledger is built, at fit start)."""
        if not state_dict:
            return
        if self.ledger is None:
            self._pending_state = state_dict
        else:
            self.ledger.load_state_dict(state_dict)

    # ------------------------------------------------------------------ counting
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        self.ledger.update(batch["input_ids"], batch["sample_id"], step)
        if step == self._last_logged:  # gradient accumulation: several batches share a step
            return
        if step % trainer.log_every_n_steps == 0 or is_scheduled(step, self.every_n_steps):
            self._last_logged = step
            self.ledger.sync()
            summary = self.ledger.summary(block_size=batch["input_ids"].shape[1])
            pl_module.log_dict({f"ledger/{k}": float(v) for k, v in summary.items()}, on_step=True, on_epoch=False)
            if is_scheduled(step, self.every_n_steps):
                self._log_distributions(trainer, step)

    @rank_zero_only
    def _log_distributions(self, trainer: L.Trainer, step: int) -> None:
        wandb_logger = find_wandb_logger(trainer.loggers)
        if wandb_logger is None:
            return
        import wandb

        tok = self.ledger.token_counts.cpu().numpy()
        data = {"ledger/token_log2_exposure": wandb.Histogram(np.log2(1 + tok[tok > 0])), "trainer/global_step": step}
        if self.ledger.n_entities:
            mentions = self.ledger.entity_mentions().cpu().numpy()
            data["ledger/entity_log2_exposure"] = wandb.Histogram(np.log2(1 + mentions))
            order = np.argsort(-mentions, kind="stable")
            rows = [[self._entity_names[i], int(mentions[i]), "most"] for i in order[: self.top_k]]
            rows += [[self._entity_names[i], int(mentions[i]), "least"] for i in order[::-1][: self.top_k]]
            data["ledger/entities_most_least"] = wandb.Table(columns=["entity", "mentions", "end"], data=rows)
        skip = getattr(wandb_logger, "already_logged", lambda s, k: False)  # an earlier attempt of the folder
        data = {k: v for k, v in data.items() if k == "trainer/global_step" or not skip(step, k)}
        if len(data) > 1:
            wandb_logger.experiment.log(data)

    # ------------------------------------------------------------------ outputs
    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self._write(trainer, plot=False)  # state_dict() ran just before: the ledger is synced

    def on_train_end(self, trainer, pl_module) -> None:
        self.ledger.sync()
        self._write(trainer, plot=True)

    def _write(self, trainer: L.Trainer, plot: bool) -> None:
        if self.output_dir is None or self.ledger is None or not trainer.is_global_zero:
            return
        tables = ledger_tables(self.ledger, self._token_text, self._entity_names)
        write_ledger(tables, self.output_dir / "ledger")
        if plot:
            from densitylab.report.ledger import plot_rank_frequency

            plot_rank_frequency(tables, self.output_dir / "plots" / "ledger_zipf.png", step=trainer.global_step)
