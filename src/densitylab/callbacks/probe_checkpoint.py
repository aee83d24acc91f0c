"""Light checkpoints at every probe step, so a finished run's trajectory can be re-measured (``densitylab probe``).

With ``checkpoints.keep=probe_steps`` (:class:`ProbeCheckpoint`, ``callbacks.probe_checkpoint``) the run keeps, besides
Lightning's ``last.ckpt`` and latest ``step*.ckpt``, one **probe checkpoint** ``checkpoints/probe/step{N:06d}.ckpt`` at
step 0 (the initial weights, written at train start) and at every step where a probe measured the model. A probe
checkpoint is a Lightning checkpoint without the optimizer and scheduler states (about a third of a full one with
AdamW): the weights (``state_dict``), ``hyper_parameters``, ``global_step`` / ``epoch`` / ``loops``, ``tokens_seen``,
every callback's state (``callbacks``: above all the exposure ledger's counts at that step) and a ``densitylab``
record of which probes measured at that step and the epoch they saw (``{"kind": "probe", "probes": {name: {"final":
bool}}, "epoch": int}``; Lightning's ``epoch`` is the one at the last write of the file, at train end for the last
step). It loads with ``torch.load(..., weights_only=True)`` (tensors and plain data only) and ``densitylab export``
takes it as any checkpoint; it cannot resume training (no optimizer state), so ``ckpt_path=last`` never picks one
(they live in their own folder).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import lightning as L

from densitylab.callbacks.base import TimedCallback, write_timing_table
from densitylab.errors import ConfigError
from densitylab.runfolder import CHECKPOINT_KEEP as KEEP

log = logging.getLogger(__name__)

KIND = "probe"


def probe_checkpoint_name(step: int) -> str:
    """``step{step:06d}.ckpt``: the file name of the probe checkpoint of optimizer step ``step``."""
    return f"step{int(step):06d}.ckpt"


class ProbeCheckpoint(TimedCallback, L.Callback):
    """Write a light checkpoint (no optimizer state) at step 0 and at every step a probe measured the model.

    Must come after every :class:`~densitylab.callbacks.base.ProbeCallback` in ``trainer.callbacks`` (it is the
    last entry of ``conf/callbacks/default.yaml``), so that at each step it sees which probes ran, and the ledger
    state it saves is the one those probes read. Every process calls the state collection (the ledger's DDP sum
    is a collective); global rank 0 writes, atomically, through the trainer's ``CheckpointIO``.

    Args:
        dirpath: the folder of the probe checkpoints (``${paths.output_dir}/checkpoints/probe``).
        keep: ``last`` (None = ``last``, the default: nothing is written, the run keeps Lightning's checkpoints only)
            or ``probe_steps`` (``${checkpoints.keep}`` in the config).

    Its writes are probe cost: timed (:class:`~densitylab.callbacks.base.TimedCallback`, ``probe_checkpoint`` rows
    of ``probes/timing.parquet``, written beside the probes' tables) and left out of ``perf/tokens_per_sec``.

    Attributes:
        saved: the steps written by this process so far (this attempt).

    Raises:
        ConfigError: ``checkpoints.keep='x': expected one of ('last', 'probe_steps')``; at fit start, when it comes
            before a probe callback.
    """

    def __init__(self, dirpath: str | Path | None = None, keep: str | None = None) -> None:
        keep = "last" if keep is None else keep
        if keep not in KEEP:
            raise ConfigError(f"checkpoints.keep={keep!r}: expected one of {KEEP}")
        if keep == "probe_steps" and not dirpath:
            raise ConfigError(
                "callbacks.probe_checkpoint.dirpath=null: expected a folder with checkpoints.keep=probe_steps"
            )
        self.dirpath = Path(dirpath) if dirpath else None
        self.keep = keep
        self.saved: list[int] = []
        self._last_saved = -1
        self._recorded: set[str] = set()
        self._epoch = 0  # the probes the probe checkpoint of step _last_saved records
        self.timing_name, self.timing, self.timed_seconds = "probe_checkpoint", [], 0.0
        self._timing_path: Path | None = None

    @property
    def enabled(self) -> bool:
        """True with ``keep=probe_steps``."""
        return self.keep == "probe_steps"

    @staticmethod
    def _probes(trainer: L.Trainer) -> list:
        from densitylab.callbacks.base import ProbeCallback

        return [cb for cb in trainer.callbacks if isinstance(cb, ProbeCallback) and cb.enabled]

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Check that every probe callback comes before this one; read this callback's earlier timing rows."""
        if not self.enabled:
            return
        from densitylab.callbacks.base import ProbeCallback

        probes = [cb for cb in trainer.callbacks if isinstance(cb, ProbeCallback) and cb.timing_path is not None]
        self._timing_path = probes[0].timing_path if probes else None
        if trainer.is_global_zero:
            self.load_timing(self._timing_path)

        mine = trainer.callbacks.index(self)
        late = [type(cb).__name__ for cb in trainer.callbacks[mine + 1 :] if isinstance(cb, ProbeCallback)]
        if late:
            raise ConfigError(
                f"callbacks.probe_checkpoint comes before {late}: expected it after every probe callback "
                "(it records which probes ran at each step)"
            )

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Step 0 (a fresh run): the initial weights, after the probes at step 0. A resumed attempt at step S: the
        probe checkpoint of S is the one the attempt that took S wrote (never rewritten: every probe's ``last_step``
        is S now, though none measured in this attempt), and the probe checkpoints after S, of steps this attempt
        takes again (as the probe tables drop their rows after S), are removed on rank 0."""
        if not self.enabled:
            return
        step = trainer.global_step
        self.keep_timing_until(step)
        if step == 0:
            self._last_saved = -1
            self.save(trainer)
            return
        self._last_saved, self._recorded = step, {cb.name for cb in self._probes(trainer)}
        if trainer.is_global_zero and self.dirpath is not None and self.dirpath.is_dir():
            for f in self.dirpath.glob("step*.ckpt"):
                try:
                    later = int(f.stem[len("step") :]) > step
                except ValueError:
                    continue
                if later:
                    f.unlink(missing_ok=True)
                    log.info("removed %s: a step after the resumed one (%d), taken again", f, step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        """After the probes of this step: a probe checkpoint when one of them measured at this step."""
        if self.enabled:
            self._save_if_probed(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """After epoch-cadence probes (``every_n_epochs``)."""
        if self.enabled:
            self._save_if_probed(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """After the final probes."""
        if self.enabled:
            self._save_if_probed(trainer)

    def _save_if_probed(self, trainer: L.Trainer) -> None:
        """Save when a probe measured at this step that the step's probe checkpoint does not record yet (a final
        probe in ``on_train_end`` after the scheduled ones of the same step rewrites it with the longer record)."""
        step = trainer.global_step
        ran = {cb.name for cb in self._probes(trainer) if cb.last_step == step}
        if ran and (step != self._last_saved or not ran <= self._recorded):
            self.save(trainer)

    def save(self, trainer: L.Trainer) -> Path:
        """Write ``dirpath/step{N:06d}.ckpt`` for the current step (every process calls this; rank 0 writes).

        Returns:
            The path written (on every process).
        """
        t0 = time.perf_counter()
        try:
            return self._save(trainer)
        finally:
            self.add_timing(trainer.global_step, "call", time.perf_counter() - t0, record=trainer.is_global_zero)
            if trainer.is_global_zero:
                write_timing_table(trainer, self._timing_path)

    def _save(self, trainer: L.Trainer) -> Path:
        step = trainer.global_step
        ckpt = trainer._checkpoint_connector.dump_checkpoint(weights_only=True)  # weights, loops, hparams, hooks
        states = {}
        for cb in trainer.callbacks:  # Lightning's own order and keys (Callback.state_key)
            if cb is self:
                continue
            state = cb.state_dict()
            if state:
                states[cb.state_key] = state
        ckpt["callbacks"] = states
        ran = {cb.name: {"final": bool(cb.last_final)} for cb in self._probes(trainer) if cb.last_step == step}
        if step != self._last_saved:  # the epoch of the step's first write (batch end); a rewrite at train end
            self._epoch = int(trainer.current_epoch)  # keeps it in "densitylab", Lightning's "epoch" has moved on
        ckpt["densitylab"] = {"kind": KIND, "probes": ran, "epoch": self._epoch}
        path = self.dirpath / probe_checkpoint_name(step)
        trainer.strategy.save_checkpoint(ckpt, path)  # rank 0 only; AtomicCheckpointIO
        trainer.strategy.barrier("probe_checkpoint")
        self._last_saved, self._recorded = step, set(ran)
        if not self.saved or self.saved[-1] != step:
            self.saved.append(step)
        return path

    def state_dict(self) -> dict:
        """Nothing to restore: a resumed attempt starts from the restored step."""
        return {}
