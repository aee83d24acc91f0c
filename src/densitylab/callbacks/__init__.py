"""Thin Lightning adapters: schedule measurements and log them. No math lives here.

Probes subclass :class:`~densitylab.callbacks.base.ProbeCallback`; callbacks that need another one name it by
its ``cfg.callbacks`` key, resolved by :func:`~densitylab.callbacks.base.connect_callbacks`.
"""

from densitylab.callbacks.base import ProbeCallback, connect_callbacks
from densitylab.callbacks.density import DensityCallback
from densitylab.callbacks.knowledge import KnowledgeCallback
from densitylab.callbacks.ledger import LedgerCallback
from densitylab.callbacks.memorization import MemorizationCallback
from densitylab.callbacks.modularity import ModularityCallback
from densitylab.callbacks.perf import FiniteLossGuard, ThroughputLogger
from densitylab.callbacks.priming import PrimingCallback
from densitylab.callbacks.probe_checkpoint import ProbeCheckpoint

__all__ = [
    "DensityCallback",
    "FiniteLossGuard",
    "KnowledgeCallback",
    "LedgerCallback",
    "MemorizationCallback",
    "ModularityCallback",
    "PrimingCallback",
    "ProbeCallback",
    "ProbeCheckpoint",
    "ThroughputLogger",
    "connect_callbacks",
]
