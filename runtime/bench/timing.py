"""The one timing loop of every benchmark (``ruclip-tiny bench``, ``scripts/device_check.py``,
``scripts/micro_batch_sweep.py``): calls timed side by side in alternating blocks."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

# The fewest timed calls a configuration gets, however slow its calls and however small its budget.
MIN_REPEATS = 3

# A timer runs one call and returns the seconds it took, by whatever clock suits the call.
Timer = Callable[[Callable[[], object]], float]


@dataclass(frozen=True)
class Timing:
    """Seconds per call of one measured configuration."""

    seconds: list[float]

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(np.asarray(self.seconds) * 1e3, q))


def wall_timer(synchronize: Callable[[], None] | None = None) -> Timer:
    """Time a call by the wall clock; ``synchronize`` (e.g. waiting for queued CUDA work) runs before the clock is
    read again, so work a call leaves queued on a device is counted."""

    def timed(call: Callable[[], object]) -> float:
        start = time.perf_counter()
        call()
        if synchronize is not None:
            synchronize()
        return time.perf_counter() - start

    return timed


def measure_alternating(
    calls: Sequence[Callable[[], object]],
    repeats: int,
    warmup: int,
    time_budget_s: float,
    timers: Sequence[Timer] | None = None,
    block: int | None = None,
    min_repeats: int = MIN_REPEATS,
) -> list[Timing]:
    """Time several calls side by side, in alternating blocks: ``warmup`` untimed calls of each, then rounds in
    which every call (the first one rotating each round) runs one untimed settling call and then ``block`` timed
    ones back to back (default: a quarter of ``repeats``, fewer when the warm-up shows that the budget allows
    only a few calls, down to one, so slow calls alternate call by call). Stops when each has ``repeats``
    timings, or once the rounds have taken ``time_budget_s`` per call by the wall clock (at least ``min_repeats``
    timings each, or ``repeats`` if fewer). ``timers``: how each call is timed (default: the wall clock).
    Returns one Timing per call. A single call is timed the same way, without settling calls (there is no other
    kind to settle from).

    Why blocks: on a shared machine the load drifts over minutes, and timing a baseline and a contender minutes
    apart measured the drift as often as the contender; alternating blocks seconds apart see the same machine. Why
    not call by call: a pipeline run right after another is slowed by what the other left behind, so each block
    starts with an untimed call and times only calls that follow their own kind, as they would run alone. The
    measurements behind both are in docs/BENCHMARKS.md ("How the pipelines are timed").
    """
    timers = list(timers or [wall_timer()] * len(calls))
    if len(timers) != len(calls):
        raise ValueError(f"{len(calls)} calls but {len(timers)} timers")
    warm_seconds = 0.0
    for call, timer in zip(calls, timers):
        for _ in range(warmup):
            warm_seconds = max(warm_seconds, timer(call))
    if block is None:  # four rounds when the budget allows; as many rounds as the budget allows for slow calls
        block = max(1, -(-repeats // 4))
        if warm_seconds > 0:
            block = max(1, min(block, int(time_budget_s / (4 * warm_seconds))))
    settle = [False] if len(calls) > 1 else []
    seconds: list[list[float]] = [[] for _ in calls]
    floor = min(min_repeats, repeats)
    budget = time_budget_s * len(calls)
    started, rounds, done = time.perf_counter(), 0, 0  # every round gives each call ``done`` timings
    while done < repeats and (done < floor or time.perf_counter() - started < budget):
        wanted = min(block, repeats - done)
        for step in range(len(calls)):
            index = (rounds + step) % len(calls)
            call, timer = calls[index], timers[index]
            for timed in settle + [True] * wanted:
                elapsed = timer(call)
                if timed:
                    seconds[index].append(elapsed)
        rounds, done = rounds + 1, done + wanted
    return [Timing(values) for values in seconds]
