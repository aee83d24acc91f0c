"""When probes run: log-spaced steps first (0, 1, 2, 4, 8, ... or 0, 1, 4, 16, ...), then every ``every_n_steps``."""

from __future__ import annotations


def is_scheduled(step: int, every_n_steps: int, log_spaced: bool | int = True) -> bool:
    """True when ``step`` (a training step count, 0 = before training) is a probe step.

    Step 0 and the powers of the log base below ``every_n_steps`` (``log_spaced=True``: base 2, steps 1, 2,
    4, 8, ...; an integer >= 2: that base, e.g. 4 gives 1, 4, 16, 64; False: none), and every multiple of
    ``every_n_steps``. ``every_n_steps <= 0`` disables the periodic part.

    Raises:
        ValueError: for a negative step, or a log base that is an integer below 2.
    """
    if step < 0:
        raise ValueError(f"step={step}: expected >= 0")
    base = 2 if log_spaced is True else (0 if log_spaced is False else int(log_spaced))
    if log_spaced is not True and log_spaced is not False and base < 2:
        raise ValueError(f"log_spaced={log_spaced!r}: expected true, false or an integer log base >= 2")
    if every_n_steps > 0 and step % every_n_steps == 0:
        return True
    if base and (step == 0 or _is_power(step, base)):
        return every_n_steps <= 0 or step < every_n_steps
    return False


def _is_power(step: int, base: int) -> bool:
    while step % base == 0:
        step //= base
    return step == 1
