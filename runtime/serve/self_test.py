"""The server's self-test: the bundle's probe through the LIVE backend, judged with the parity bars of its precision.

A graph swapped for one with other weights (its sha256 and ``deployable`` fixed up in the manifest), a broken GPU
driver, an FP16 overflow: each still answers 200 with numbers. The probe and its reference outputs travel in the
bundle; running them through the very backend that serves, with ``runtime.parity``'s one run path
(``check_open_backend``: same metrics, same verdict as ``ruclip-tiny parity``), tells.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

from ruclip_tiny.errors import RuclipTinyError
from runtime.embedder import Embedder
from runtime.parity import Probe, check_open_backend, load_probe
from runtime.serve.metrics import ServerMetrics

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SelfTestResult:
    """One self-test. failures: one sentence per broken bar, ``<result key>: <why>`` (empty when it passed);
    metrics: per result key (``visual.fp32``, ``combined.fp32`` ...), what parity measured (None where it did not
    run)."""

    passed: bool
    seconds: float
    date: str
    precision: str
    failures: list[str] = field(default_factory=list)
    metrics: dict[str, dict | None] = field(default_factory=dict)

    @property
    def summary(self) -> str:
        """One line: which bars broke (the first three), or that it passed."""
        if self.passed:
            return f"passed ({self.precision} bars, {self.seconds:.3f} s)"
        shown = "; ".join(self.failures[:3])
        more = f" (and {len(self.failures) - 3} more)" if len(self.failures) > 3 else ""
        return f"{shown}{more}"

    def to_json(self) -> dict:
        return {"passed": self.passed, "seconds": round(self.seconds, 6), "date": self.date,
                "precision": self.precision, "failures": list(self.failures), "metrics": self.metrics}


class SelfTest:
    """Runs the self-test on an embedder and records it (``last``, and the ``ruclip_tiny_self_test_*`` metrics).

    ``run`` blocks: call it in the server's inference thread, where it takes its turn between batches like any
    backend call. The probe is read (and its sha256 checked) once, at the first run.
    """

    def __init__(self, metrics: ServerMetrics):
        self.metrics = metrics
        self.last: SelfTestResult | None = None
        self._probe: Probe | None = None

    def run(self, embedder: Embedder) -> SelfTestResult:
        started = time.perf_counter()
        date = datetime.now(timezone.utc).isoformat(timespec="seconds")
        try:
            if self._probe is None:
                self._probe = load_probe(embedder.bundle)
            entries = check_open_backend(embedder.bundle, embedder.backend, self._probe)
        except RuclipTinyError as err:  # no readable probe, no bars for this precision
            result = SelfTestResult(False, time.perf_counter() - started, date, embedder.precision,
                                    [f"the self-test cannot run: {err} (serve with --no-self-test to skip it)"])
        except Exception as err:  # noqa: BLE001 - the backend itself broke (a driver, a device): that is a failure
            result = SelfTestResult(False, time.perf_counter() - started, date, embedder.precision,
                                    [f"the backend raised {type(err).__name__}: {err}"])
        else:
            failures = [f"{key}: {why}" for key, entry in entries.items() if entry.kind == "artifact"
                        for why in entry.failures]
            # the combined row repeats its parts' failures; it adds only what the pair breaks together
            failures += [f"{key}: {why}" for key, entry in entries.items() if entry.kind == "combined"
                         for why in entry.failures if not why.endswith(" failed")]
            metrics = {key: None if entry.metrics is None else entry.metrics.to_json()
                       for key, entry in entries.items()}
            result = SelfTestResult(not failures, time.perf_counter() - started, date, embedder.precision,
                                    failures, metrics)
        self.last = result
        self.metrics.record_self_test(result.passed, result.seconds)
        return result
