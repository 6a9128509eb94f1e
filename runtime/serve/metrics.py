"""The server's Prometheus metrics: requests per endpoint (the labels are the app's routes), items, batches, queue,
and numeric health (non-finite rows, feature norms, the self-test, the model served, time per stage).

Metric names are contracts (dashboards and alerts depend on them): docs/SERVING.md lists them."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from fastapi.routing import APIRoute
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from starlette.routing import BaseRoute

from runtime.serve.batching import BatchObserver

OTHER_ENDPOINT = "other"
"""The endpoint label of a request to any path that is not one of the app's API routes (404s, /docs, ...)."""

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
# raw (unnormalised) feature norms: powers of two around the scales CLIP-like encoders give (~1 to ~30)
_NORM_BUCKETS = (0.125, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
STAGES = ("decode", "tokenize", "encode")
"""The values of ``ruclip_tiny_stage_seconds``'s ``stage`` label (the queue wait has its own histogram)."""


def endpoint_labels(routes: Iterable[BaseRoute]) -> frozenset[str]:
    """The values of the ``endpoint`` label: the path of each API route of the app (``app.routes``, read once they
    are all added). Counting any other path under its own name would let clients create labels without bound."""
    return frozenset(route.path for route in routes if isinstance(route, APIRoute))


class ServerMetrics:
    """The server's Prometheus metrics, in a registry of its own (two servers in one process do not collide)."""

    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("ruclip_tiny_requests", "HTTP requests answered", ["endpoint", "status"], registry=r)
        self.latency = Histogram("ruclip_tiny_request_seconds", "HTTP request latency", ["endpoint"],
                                 buckets=_LATENCY_BUCKETS, registry=r)
        self.items = Counter("ruclip_tiny_items", "items embedded", ["kind"], registry=r)
        self.item_errors = Counter("ruclip_tiny_item_errors", "items that could not be embedded (e.g. undecodable "
                                   "images)", ["kind"], registry=r)
        self.truncated = Counter("ruclip_tiny_truncated_texts", "texts cut at 77 tokens", registry=r)
        self.batch_items = Histogram("ruclip_tiny_batch_items", "items per backend call", ["kind"],
                                     buckets=_SIZE_BUCKETS, registry=r)
        self.batch_requests = Histogram("ruclip_tiny_batch_requests", "requests merged into one backend call",
                                        ["kind"], buckets=_SIZE_BUCKETS, registry=r)
        self.backend_seconds = Histogram("ruclip_tiny_backend_seconds", "time of one backend call", ["kind"],
                                         buckets=_LATENCY_BUCKETS, registry=r)
        self.queue_wait = Histogram("ruclip_tiny_queue_wait_seconds", "time a request waited for its batch",
                                    ["kind"], buckets=_LATENCY_BUCKETS, registry=r)
        self.queue_items = Gauge("ruclip_tiny_queue_items", "items admitted and waiting for a backend call",
                                 ["kind"], registry=r)
        self.rejected = Counter("ruclip_tiny_rejected", "requests refused with 503 because the queue was full",
                                ["kind"], registry=r)
        self.ready = Gauge("ruclip_tiny_ready", "1 once the backend is loaded and warmed up", registry=r)
        self.cancelled = Counter("ruclip_tiny_cancelled_items", "items dropped before they ran because their client "
                                 "disconnected", ["kind"], registry=r)
        # numeric health
        self.nonfinite = Counter("ruclip_tiny_nonfinite_outputs", "output rows holding NaN or Inf (never answered "
                                 "as numbers)", ["kind"], registry=r)
        self.feature_norm = Histogram("ruclip_tiny_feature_norm", "L2 norm of each raw (unnormalised) output row",
                                      ["kind"], buckets=_NORM_BUCKETS, registry=r)
        # registered at the first self-test: absent before it and with --no-self-test, so an alert on == 0 fires
        # only for a self-test that failed
        self.self_test_ok = Gauge("ruclip_tiny_self_test_ok", "1 when the last self-test (the bundle's probe through "
                                  "the live backend, judged by the parity bars) passed, 0 when it failed",
                                  registry=None)
        self.self_test_seconds = Gauge("ruclip_tiny_self_test_seconds", "duration of the last self-test",
                                       registry=None)
        self._self_test_registered = False
        self.model_info = Info("ruclip_tiny_model", "what is served (set once the backend is loaded)", registry=r)
        self.stage_seconds = Histogram("ruclip_tiny_stage_seconds", "time of one stage: decode (per image), "
                                       "tokenize and encode (per backend call)", ["kind", "stage"],
                                       buckets=_LATENCY_BUCKETS, registry=r)
        for kind in ("text", "image"):  # present from the start, so an alert on them sees 0, not nothing
            self.nonfinite.labels(kind)

    def record_self_test(self, passed: bool, seconds: float) -> None:
        self.self_test_ok.set(1 if passed else 0)
        self.self_test_seconds.set(seconds)
        if not self._self_test_registered:
            self.registry.register(self.self_test_ok)
            self.registry.register(self.self_test_seconds)
            self._self_test_registered = True

    def observe_rows(self, kind: str, rows: np.ndarray) -> int:
        """Count the rows of ``rows`` (raw features float32 [N, dim]) holding NaN or Inf and record the norms of
        the others; returns the number of non-finite rows."""
        finite = np.isfinite(rows).all(axis=1)
        bad = int(len(rows) - finite.sum())
        if bad:
            self.nonfinite.labels(kind).inc(bad)
        histogram = self.feature_norm.labels(kind)
        for norm in np.linalg.norm(rows[finite].astype(np.float64), axis=1):
            histogram.observe(float(norm))
        return bad

    def observer(self) -> BatchObserver:
        def batch(kind, items, requests, seconds):
            self.batch_items.labels(kind).observe(items)
            self.batch_requests.labels(kind).observe(requests)
            self.backend_seconds.labels(kind).observe(seconds)

        return BatchObserver(
            batch=batch,
            queue_wait=lambda kind, seconds: self.queue_wait.labels(kind).observe(seconds),
            queue_depth=lambda kind, items: self.queue_items.labels(kind).set(items),
            cancelled=lambda kind, items: self.cancelled.labels(kind).inc(items),
        )
