"""Stage-by-stage progress for long commands: one line per stage with its duration, recorded for reports."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager


class StageTimer:
    """``with timer.stage("exporting visual.onnx"):`` prints the stage, then its seconds; ``timer.seconds`` keeps them."""

    def __init__(self, stream=None):
        self.stream = stream if stream is not None else sys.stdout
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str):
        print(f"  {name} …", end="", file=self.stream, flush=True)
        start = time.perf_counter()
        try:
            yield
        except BaseException:
            print(" failed", file=self.stream, flush=True)
            raise
        elapsed = time.perf_counter() - start
        self.seconds[name] = round(elapsed, 2)
        print(f" {elapsed:.1f}s", file=self.stream, flush=True)

    @property
    def total(self) -> float:
        return round(sum(self.seconds.values()), 2)
