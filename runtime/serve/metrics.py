"""The server's Prometheus metrics: requests per endpoint (the labels are the app's routes), items, batches, queue."""

from __future__ import annotations

from collections.abc import Iterable

from fastapi.routing import APIRoute
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.routing import BaseRoute

from runtime.serve.batching import BatchObserver

OTHER_ENDPOINT = "other"
"""The endpoint label of a request to any path that is not one of the app's API routes (404s, /docs, ...)."""

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


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
