"""When probes run: log-spaced steps first (0, 1, 2, 4, 8, ... or 0, 1, 4, 16, ...), then every ``every_n_steps``,
the periodic interval doubling each time the step doubles past ``thin_after`` (a cadence that thins out over
training, so a long run's probe share stays small; ``docs/design.md``, "Time accounting and the probe budget")."""

from __future__ import annotations


def periodic_interval(step: int, every_n_steps: int, thin_after: int | None = None) -> int:
    """The periodic probe interval in optimizer steps at ``step``: ``every_n_steps`` up to ``thin_after``, then
    doubled for each doubling of the step past it (``2·every_n_steps`` in (T, 2T], ``4·every_n_steps`` in (2T, 4T],
    ... with T = ``thin_after``). ``thin_after`` None or 0: no thinning.

    Example: ``every_n_steps=150, thin_after=2000`` probes a 10,000-step run at 150, 300, ..., 1950 (13 calls), then
    every 300 up to 4000, every 600 up to 8000 and every 1200 after: 29 periodic calls instead of 66 (plus step 0,
    the log-spaced ones and the final call).

    Raises:
        ValueError: for a negative ``thin_after``.
    """
    if thin_after is not None and thin_after < 0:
        raise ValueError(f"thin_after={thin_after}: expected null, 0 or a positive step")
    interval = every_n_steps
    if every_n_steps > 0 and thin_after:
        bound = thin_after
        while step > bound:
            interval, bound = interval * 2, bound * 2
    return interval


def is_scheduled(step: int, every_n_steps: int, log_spaced: bool | int = True, thin_after: int | None = None) -> bool:
    """True when ``step`` (a training step count, 0 = before training) is a probe step.

    Step 0 and the powers of the log base below ``every_n_steps`` (``log_spaced=True``: base 2, steps 1, 2,
    4, 8, ...; an integer >= 2: that base, e.g. 4 gives 1, 4, 16, 64; False: none), and every multiple of
    :func:`periodic_interval` (``every_n_steps``, doubling past ``thin_after``). ``every_n_steps <= 0`` disables the
    periodic part.

    Raises:
        ValueError: for a negative step or ``thin_after``, or a log base that is an integer below 2.
    """
    if step < 0:
        raise ValueError(f"step={step}: expected >= 0")
    base = 2 if log_spaced is True else (0 if log_spaced is False else int(log_spaced))
    if log_spaced is not True and log_spaced is not False and base < 2:
        raise ValueError(f"log_spaced={log_spaced!r}: expected true, false or an integer log base >= 2")
    if every_n_steps > 0 and step % periodic_interval(step, every_n_steps, thin_after) == 0:
        return True
    if base and (step == 0 or _is_power(step, base)):
        return every_n_steps <= 0 or step < every_n_steps
    return False


def scheduled_steps(
    max_steps: int,
    every_n_steps: int,
    log_spaced: bool | int = True,
    thin_after: int | None = None,
    probe_at_start: bool = True,
    min_step: int = 0,
) -> list[int]:
    """The steps a :class:`~densitylab.callbacks.base.ProbeCallback` probes in a run of ``max_steps`` optimizer steps
    (step 0 when ``probe_at_start``, :func:`is_scheduled` steps 1..``max_steps`` except the log-spaced ones below
    ``min_step`` (the knowledge probe's), and ``max_steps`` itself: the final call), in order. Epoch-cadence calls
    are not included."""
    steps = [
        s
        for s in range(1, max_steps + 1)
        if is_scheduled(s, every_n_steps, log_spaced, thin_after)
        and (s >= min_step or (every_n_steps > 0 and s % periodic_interval(s, every_n_steps, thin_after) == 0))
    ]
    if not steps or steps[-1] != max_steps:
        steps.append(max_steps)
    return ([0] if probe_at_start else []) + steps


CALL_KINDS = ("start", "early", "periodic", "final")


def call_kind(step: int, max_steps: int, every_n_steps: int, thin_after: int | None = None) -> str:
    """The kind of a probe call, by what it usually costs: ``start`` (step 0), ``final`` (``max_steps``: probes read
    their whole sets), ``periodic`` (a multiple of the periodic interval: the density probe's whole panel) or
    ``early`` (a log-spaced step: the panel's core)."""
    if step == 0:
        return "start"
    if step >= max_steps:
        return "final"
    if every_n_steps > 0 and step % periodic_interval(step, every_n_steps, thin_after) == 0:
        return "periodic"
    return "early"


def predict_share(
    probe_seconds: float, train_seconds: float, val_seconds: float = 0.0, other_seconds: float = 0.0
) -> float:
    """``perf/probe_share`` of a run: probe seconds / loop seconds, the loop being train + probe + validation + other
    seconds (:class:`~densitylab.callbacks.perf.ThroughputLogger`'s accounting).

    Raises:
        ValueError: for negative seconds or an empty loop.
    """
    parts = (probe_seconds, train_seconds, val_seconds, other_seconds)
    if min(parts) < 0 or sum(parts) <= 0:
        raise ValueError(f"seconds {parts}: expected non-negative seconds with a positive sum")
    return probe_seconds / sum(parts)


def predict_run_share(probes: dict, max_steps: int, step_seconds: float, val_seconds: float = 0.0,
                      val_every: int = 0, other_seconds: float = 0.0) -> dict[str, float]:  # fmt: skip
    """The probe share of a run of ``max_steps`` steps predicted from per-call costs × the schedule.

    Args:
        probes: probe name -> ``{"seconds": {kind: seconds per call}, "every_n_steps": ..., "log_spaced": ...,
            "thin_after": ..., "probe_at_start": ..., "min_step": ...}`` (schedule keys as
            :func:`scheduled_steps`; kinds as :func:`call_kind`; a kind without a cost takes the mean of the
            costs given).
        max_steps: the run's optimizer steps; step_seconds: training seconds per step (probes and validation out).
        val_seconds: seconds of one validation; val_every: steps between validations (0: none).
        other_seconds: the rest of the loop (start-up, end), taken as fixed.

    Returns:
        ``{name: predicted seconds}`` under ``"seconds/<name>"``, ``"share/<name>"`` per probe, and ``"share"``,
        ``"probe_seconds"``, ``"loop_seconds"`` for the run.
    Raises:
        ValueError: for a probe without any cost, or negative seconds.
    """
    out: dict[str, float] = {}
    total = 0.0
    for name, p in probes.items():
        costs = {k: float(v) for k, v in p["seconds"].items() if v is not None}
        if not costs:
            raise ValueError(f"probe {name!r}: expected at least one per-call cost")
        fallback = sum(costs.values()) / len(costs)
        every, thin = int(p.get("every_n_steps") or 0), p.get("thin_after")
        steps = scheduled_steps(max_steps, every, p.get("log_spaced", True), thin, bool(p.get("probe_at_start", True)),
                                int(p.get("min_step") or 0))  # fmt: skip
        seconds = sum(costs.get(call_kind(s, max_steps, every, thin), fallback) for s in steps)
        out[f"seconds/{name}"] = seconds
        total += seconds
    n_val = max_steps // val_every if val_every > 0 else 0
    loop = step_seconds * max_steps + val_seconds * n_val + other_seconds + total
    out["probe_seconds"], out["loop_seconds"] = total, loop
    out["share"] = predict_share(total, step_seconds * max_steps, val_seconds * n_val, other_seconds)
    for name in probes:
        out[f"share/{name}"] = out[f"seconds/{name}"] / loop
    return out


def _is_power(step: int, base: int) -> bool:
    while step % base == 0:
        step //= base
    return step == 1
