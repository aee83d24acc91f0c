"""Exposure ledger: exact token / sequence / entity / document / co-mention counts. Pure torch (no Lightning)."""

from densitylab.ledger.exposure import NEVER, ExposureLedger
from densitylab.ledger.incidence import LedgerIncidence, packed_incidence
from densitylab.ledger.io import ledger_tables, write_ledger

__all__ = ["NEVER", "ExposureLedger", "LedgerIncidence", "ledger_tables", "packed_incidence", "write_ledger"]
