"""Exposure ledger: exact token / sequence / entity / co-mention counts. Pure torch (no Lightning)."""

from densitylab.ledger.exposure import NEVER, ExposureLedger
from densitylab.ledger.io import ledger_tables, write_ledger

__all__ = ["NEVER", "ExposureLedger", "ledger_tables", "write_ledger"]
