"""Process-level performance settings."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger(__name__)

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


def tune_malloc(threshold_bytes: int = 1 << 30) -> bool:
    """Keep large CPU tensors on glibc's heap instead of fresh ``mmap`` pages.

    By default glibc serves every allocation above 32 MiB (e.g. the (B, T, V) logits and their
    gradient: 64 MiB each for the tiny model) with a new ``mmap``, and returns it with ``munmap`` on
    free, so every training step page-faults and zero-fills hundreds of MiB. Raising the mmap and
    trim thresholds (``mallopt``; the same as the ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``
    environment variables) reuses that memory instead: measured on 2 CPU cores, the tiny model trains
    about 25% faster and the kernel time per run drops about tenfold. The process keeps up to
    ``threshold_bytes`` of freed memory.

    Returns:
        True when applied (Linux with glibc), False elsewhere (nothing changes).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = all(
        mallopt(p, ctypes.c_int(v)) == 1
        for p, v in (
            (_M_MMAP_THRESHOLD, min(threshold_bytes, 2**31 - 1)),
            (_M_TRIM_THRESHOLD, min(threshold_bytes, 2**31 - 1)),
            (_M_TOP_PAD, 64 << 20),
        )
    )
    if not ok:
        log.debug("mallopt refused a setting; glibc defaults kept for it")
    return ok


def fsdp_strategy(sharding_strategy: str = "FULL_SHARD", state_dict_type: str = "full", **kwargs):
    """Lightning's ``FSDPStrategy`` with one FSDP unit per transformer block
    (:class:`densitylab.model.Block`), for ``trainer=fsdp``; extra keyword arguments go to
    ``FSDPStrategy`` (e.g. ``cpu_offload=true``, ``activation_checkpointing_policy``).

    ``state_dict_type="full"`` writes ordinary checkpoints (one file, loadable without FSDP).
    """
    from lightning.pytorch.strategies import FSDPStrategy

    from densitylab.model import Block

    return FSDPStrategy(
        auto_wrap_policy={Block}, sharding_strategy=sharding_strategy, state_dict_type=state_dict_type, **kwargs
    )
