"""Exposure ledger: exact token / sequence / entity / document / co-mention counts. Pure torch (no Lightning)."""

from densitylab.ledger.exposure import NEVER, ExposureLedger
from densitylab.ledger.incidence import (
    ExtraWindows,
    LedgerIncidence,
    extra_window_starts,
    packed_incidence,
    with_extra_windows,
)
from densitylab.ledger.io import ledger_tables, write_ledger

__all__ = [
    "NEVER",
    "ExposureLedger",
    "ExtraWindows",
    "LedgerIncidence",
    "extra_window_starts",
    "ledger_tables",
    "packed_incidence",
    "with_extra_windows",
    "write_ledger",
]
