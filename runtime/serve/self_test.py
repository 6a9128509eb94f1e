"""The server's self-test: the bundle's probe through the LIVE backend, judged with the parity bars of its precision.

A graph swapped for one with other weights (its sha256 and ``deployable`` fixed up in the manifest), a broken GPU
driver, an FP16 overflow: each still answers 200 with numbers. The probe and its reference outputs travel in the
bundle; running them through the very backend that serves, with ``runtime.parity``'s one run path
(``check_open_backend``: same metrics, same verdict as ``ruclip-tiny parity``), tells.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import datetime, timezone

from ruclip_tiny.errors import RuclipTinyError
from runtime.backends import Backend
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


class InferenceThreads:
    """``backend`` with its two encoders called in executors of the server (``pixels``, ``tokens``: its inference
    threads), first in, first out with the batches of requests: a request waits for at most one call of the
    self-test (one probe batch of one encoder), never for the whole self-test. Everything else is the backend's
    own."""

    def __init__(self, backend: Backend, pixels: Executor, tokens: Executor):
        self._backend, self._pixels, self._tokens = backend, pixels, tokens

    def __getattr__(self, name: str):
        return getattr(self._backend, name)

    def encode_pixels(self, pixels):
        return self._pixels.submit(self._backend.encode_pixels, pixels).result()

    def encode_tokens(self, input_ids, attention_mask):
        return self._tokens.submit(self._backend.encode_tokens, input_ids, attention_mask).result()


class SelfTest:
    """Runs the self-test on an embedder and records it (``last``, and the ``ruclip_tiny_self_test_*`` metrics).

    ``run`` blocks: call it in a thread of its own; with ``pixels``/``tokens`` executors (the server's inference
    threads) each backend call of the probe takes its turn there between the batches of requests. The probe is
    read (and its sha256 checked) once, at the first run.
    """

    def __init__(self, metrics: ServerMetrics):
        self.metrics = metrics
        self.last: SelfTestResult | None = None
        self._probe: Probe | None = None

    def run(self, embedder: Embedder, pixels: Executor | None = None, tokens: Executor | None = None
            ) -> SelfTestResult:
        started = time.perf_counter()
        backend = embedder.backend if pixels is None or tokens is None else \
            InferenceThreads(embedder.backend, pixels, tokens)
        date = datetime.now(timezone.utc).isoformat(timespec="seconds")
        try:
            if self._probe is None:
                self._probe = load_probe(embedder.bundle)
            entries = check_open_backend(embedder.bundle, backend, self._probe)
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
