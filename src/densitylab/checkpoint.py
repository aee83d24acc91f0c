"""Atomic checkpoint files: :class:`AtomicCheckpointIO`, the Lightning ``CheckpointIO`` of every trainer config.

Lightning's own ``TorchCheckpointIO`` writes through an fsspec transaction whose temporary file lives in
``TMPDIR``: the final move is atomic only when ``TMPDIR`` and the run folder share a filesystem, and a process
killed mid-write leaves a full-size temporary file there. :class:`AtomicCheckpointIO` instead writes each
checkpoint to a temporary file *in the checkpoint's own folder* (``.partial-<hex>.tmp``: hidden, and never
ending in ``.ckpt``, so neither ``ckpt_path=last`` nor Lightning's ``last*.ckpt`` search can pick it up),
flushes and fsyncs it, ``os.replace``-s it onto the final name and fsyncs the folder. A reader therefore sees
either the old complete file or the new complete file, never a torn one, whatever ``TMPDIR`` is. A temporary
file left by an earlier killed write is removed by the next write that succeeds in the same folder.

Wired in ``conf/trainer/cpu.yaml`` (``trainer.plugins``), which every other trainer config inherits. Under
``trainer=fsdp`` with ``state_dict_type: full`` the strategy gathers the state dict and hands it to this plugin;
with ``sharded`` FSDP writes its checkpoint folders itself. Remote paths (``s3://...``) go to Lightning's writer.

Fault injection (for tests): ``DENSITYLAB_FAULT_CHECKPOINT_WRITE=<n>`` (a positive integer) makes the process
kill itself with ``SIGKILL`` (exit status 137 / -9) inside its n-th checkpoint write, counted from 1 per
process (Lightning's ``save_last`` makes every checkpoint event two writes: ``step<N>.ckpt``, then
``last.ckpt``), after half of the serialized checkpoint has been written to the temporary file and before the
replace, exactly as a ``kill -9`` mid-write would. Unset or empty: no fault.
"""

from __future__ import annotations

import io
import logging
import os
import signal
import uuid
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from densitylab.errors import ConfigError

log = logging.getLogger(__name__)

FAULT_ENV = "DENSITYLAB_FAULT_CHECKPOINT_WRITE"
TEMP_PREFIX = ".partial-"
TEMP_SUFFIX = ".tmp"


def fault_write_number(environ: dict[str, str] | None = None) -> int | None:
    """The checkpoint write (1-based) in which ``DENSITYLAB_FAULT_CHECKPOINT_WRITE`` asks the process to kill
    itself, or None when it is unset or empty.

    Args:
        environ: the environment to read (default ``os.environ``).
    Raises:
        ConfigError: for a value that is not a positive integer.
    """
    return _env_int(FAULT_ENV, 1, "a positive integer (the checkpoint write to die in)", environ)


def _env_int(name: str, minimum: int, expected: str, environ: dict[str, str] | None) -> int | None:
    """The integer >= ``minimum`` that environment variable ``name`` holds, or None when unset or empty.

    Raises:
        ConfigError: ``NAME='value': expected <expected>`` for anything else.
    """
    raw = (os.environ if environ is None else environ).get(name, "").strip()
    if not raw:
        return None
    try:
        n = int(raw)
    except ValueError:
        n = minimum - 1
    if n < minimum:
        raise ConfigError(f"{name}={raw!r}: expected {expected}")
    return n


def _sigkill() -> None:
    """Kill this process as ``kill -9`` would (exit status 137 where SIGKILL does not exist)."""
    if hasattr(signal, "SIGKILL"):
        os.kill(os.getpid(), signal.SIGKILL)
    os._exit(137)


def is_temp_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a temporary file of :class:`AtomicCheckpointIO` (``.partial-<hex>.tmp``)."""
    name = Path(path).name
    return name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX)


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _die_mid_write(f: io.BufferedWriter, data: memoryview) -> None:
    """Fault injection: write the first half of ``data``, flush it to the file, then SIGKILL this process."""
    f.write(data[: max(1, len(data) // 2)])
    f.flush()
    os.fsync(f.fileno())
    log.warning("%s: killing the process inside a checkpoint write", FAULT_ENV)
    _sigkill()


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose writes are atomic on any local filesystem, independent of ``TMPDIR``: a temp
    file in the target folder, flushed and fsynced, then ``os.replace``-d onto the final name (module docstring).
    Loading and removing are Lightning's (``torch.load``; ``weights_only`` as Lightning passes it).

    ``DENSITYLAB_FAULT_CHECKPOINT_WRITE`` is read when the plugin is built (see the module docstring).

    Raises:
        ConfigError: at construction, for a bad ``DENSITYLAB_FAULT_CHECKPOINT_WRITE``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0  # checkpoint writes started by this plugin (the fault counter)
        self._fault_at = fault_write_number()

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        """Write ``checkpoint`` with ``torch.save`` to ``path`` atomically; then remove temporary files left in
        the same folder by earlier killed writes.

        Args:
            checkpoint: the state Lightning dumps (anything ``torch.save`` accepts).
            path: the final file; its folder is created when missing.
            storage_options: not supported (as in ``TorchCheckpointIO``).
        Raises:
            TypeError: when ``storage_options`` is given.
            OSError: when the folder or file cannot be written; the old file at ``path`` (if any) is then
                unchanged and the temporary file is removed.
        """
        if storage_options is not None:
            raise TypeError(f"storage_options is not supported by {type(self).__name__}.save_checkpoint")
        if "://" in str(path):  # remote storage: Lightning's fsspec writer
            return super().save_checkpoint(checkpoint, path)
        target = Path(path)
        folder = target.parent
        folder.mkdir(parents=True, exist_ok=True)
        self.writes += 1
        dying = self._fault_at is not None and self.writes == self._fault_at
        tmp = folder / f"{TEMP_PREFIX}{uuid.uuid4().hex}{TEMP_SUFFIX}"  # hex never spells "last"
        try:
            with open(tmp, "xb") as f:
                if dying:
                    buffer = io.BytesIO()
                    torch.save(checkpoint, buffer)
                    _die_mid_write(f, buffer.getbuffer())
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(folder)
        self._remove_stale_temp_files(folder)

    @staticmethod
    def _remove_stale_temp_files(folder: Path) -> None:
        """Remove every temporary file of this plugin in ``folder`` (writes are sequential, so after a
        successful replace any one left is from a killed process)."""
        for p in folder.iterdir():
            if is_temp_file(p):
                try:
                    p.unlink()
                    log.info("removed %s, left by an interrupted checkpoint write", p)
                except OSError:
                    pass


KILL_ENV = "DENSITYLAB_FAULT_KILL_AT_STEP"


def kill_at_step_callback(environ: dict[str, str] | None = None):
    """Fault injection (for tests): with ``DENSITYLAB_FAULT_KILL_AT_STEP=<n>`` the process kills itself with
    ``SIGKILL`` when training is about to start optimizer step n + 1 (n steps done; everything of step n logged,
    flushed and checkpointed), as a ``kill -9`` between two steps would. ``densitylab.run.train`` adds the
    returned Lightning callback when the variable is set.

    Returns:
        The callback, or None when ``DENSITYLAB_FAULT_KILL_AT_STEP`` is unset or empty.

    Raises:
        ConfigError: for a value that is not a non-negative integer.
    """
    import lightning as L

    step = _env_int(KILL_ENV, 0, "a non-negative integer (the optimizer steps to finish)", environ)
    if step is None:
        return None

    class _Kill(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if trainer.global_step == step:
                for lg in trainer.loggers:
                    lg.save()
                log.warning("%s: killing the process after %d steps", KILL_ENV, step)
                _sigkill()

    return _Kill()
