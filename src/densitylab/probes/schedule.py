"""When probes run: log-spaced steps first (0, 1, 2, 4, 8, ...), then every ``every_n_steps``."""

from __future__ import annotations


def is_scheduled(step: int, every_n_steps: int, log_spaced: bool = True) -> bool:
    """True when ``step`` (a training step count, 0 = before training) is a probe step.

    Steps 0, 1, 2, 4, 8, ... (powers of two below ``every_n_steps``) when ``log_spaced``, and every
    multiple of ``every_n_steps``. ``every_n_steps <= 0`` disables the periodic part.

    Raises:
        ValueError: for a negative step.
    """
    if step < 0:
        raise ValueError(f"step={step}: expected >= 0")
    if every_n_steps > 0 and step % every_n_steps == 0:
        return True
    if log_spaced and (step == 0 or step & (step - 1) == 0):
        return every_n_steps <= 0 or step < every_n_steps
    return False
