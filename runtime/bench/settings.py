"""What a bench run can be asked to do: the workloads, the default and quick settings, their checks (BenchError)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ruclip_tiny.errors import RuclipTinyError

WORKLOADS = ("image", "text-full", "text-captions")

DEFAULT_BATCH_SIZES = (1, 8, 32)
DEFAULT_REPEATS = 20
DEFAULT_WARMUP = 2
# Per measured configuration and pipeline, after warm-up: stop once this much time is spent (settling calls
# included; at least MIN_REPEATS timed calls). How long a default run takes is in docs/BENCHMARKS.md.
DEFAULT_TIME_BUDGET_S = 3.0
DEFAULT_END_TO_END_IMAGES = 64

QUICK_BATCH_SIZES = (1, 8)
QUICK_REPEATS = 2
QUICK_WARMUP = 1
QUICK_END_TO_END_IMAGES = 4
QUICK_TIME_BUDGET_S = 0.5


class BenchError(RuclipTinyError, ValueError):
    """A benchmark that cannot be configured as asked (bad batch sizes, unknown backend, bundle without a probe)."""


def parse_batch_sizes(text: str, option: str = "--batch-sizes") -> tuple[int, ...]:
    """``"1,8,32"`` -> (1, 8, 32); raises BenchError naming ``option`` and the bad entry (not an integer, or < 1)."""
    sizes = []
    for part in str(text).split(","):
        part = part.strip()
        try:
            size = int(part)
        except ValueError:
            raise BenchError(
                f"{option}: {part!r} is not an integer; give positive integers separated by commas, e.g. 1,8,32"
            ) from None
        if size < 1:
            raise BenchError(f"{option}: {size} is not a batch size; each must be at least 1, e.g. 1,8,32")
        sizes.append(size)
    return tuple(dict.fromkeys(sizes))


def parse_names(text: str, allowed: Sequence[str], option: str) -> tuple[str, ...]:
    """``"onnxruntime,torch"`` -> ("onnxruntime", "torch"), each checked against ``allowed``."""
    names = tuple(dict.fromkeys(name.strip() for name in str(text).split(",") if name.strip()))
    bad = [name for name in names if name not in allowed]
    if bad or not names:
        raise BenchError(f"{option}: {', '.join(bad) or 'nothing given'}; choose from {', '.join(allowed)}")
    return names


def checked_sizes(sizes: Sequence[int]) -> tuple[int, ...]:
    """``sizes`` as distinct positive ints, in order; BenchError on anything else."""
    sizes = tuple(sizes)
    if not sizes or any(not isinstance(s, (int, np.integer)) or isinstance(s, bool) or s < 1 for s in sizes):
        raise BenchError(f"batch sizes must be positive integers, got {list(sizes)}")
    return tuple(dict.fromkeys(int(s) for s in sizes))
