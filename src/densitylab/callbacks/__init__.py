"""Thin Lightning adapters: schedule measurements and log them. No math lives here."""

from densitylab.callbacks.density import DensityCallback
from densitylab.callbacks.ledger import LedgerCallback
from densitylab.callbacks.memorization import MemorizationCallback
from densitylab.callbacks.modularity import ModularityCallback
from densitylab.callbacks.perf import FiniteLossGuard, ThroughputLogger

__all__ = [
    "DensityCallback",
    "FiniteLossGuard",
    "LedgerCallback",
    "MemorizationCallback",
    "ModularityCallback",
    "ThroughputLogger",
]
