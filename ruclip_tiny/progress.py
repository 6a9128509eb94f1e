"""Stage-by-stage progress for long commands: one line per stage with its duration, recorded for reports.

Silent unless given a stream: libraries time their stages with it, and the command line passes ``sys.stdout``."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import TextIO


class StageTimer:
    """``with timer.stage("exporting visual.onnx"):`` writes the stage, then its seconds, to ``stream`` (nothing
    when None); ``timer.seconds`` keeps them."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream
        self.seconds: dict[str, float] = {}

    def _write(self, text: str, end: str = "\n") -> None:
        if self.stream is not None:
            print(text, end=end, file=self.stream, flush=True)

    @contextmanager
    def stage(self, name: str):
        self._write(f"  {name} …", end="")
        start = time.perf_counter()
        try:
            yield
        except BaseException:
            self._write(" failed")
            raise
        elapsed = time.perf_counter() - start
        self.seconds[name] = round(elapsed, 2)
        self._write(f" {elapsed:.1f}s")

    @property
    def total(self) -> float:
        return round(sum(self.seconds.values()), 2)
