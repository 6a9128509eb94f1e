"""What the server's self-test and numeric-health metrics cost: seconds per self-test, request latency (p50/p99)
while one runs against the rest of the time, and the added time of the metrics per request.

    python scripts/self_test_overhead.py BUNDLE [--seconds 40] [--interval 4] [--text-clients 4] [--image-clients 1]

Runs the real server (``BackgroundServer``, onnxruntime on this machine) with a self-test every ``--interval``
seconds, under closed-loop clients (one short text per request; one 224x224 PNG data URI per image request) on
``/v1/embeddings``; each answered request is classed by whether its time overlapped a self-test. Prints one JSON
object (the figures for docs/BENCHMARKS.md). ``--one-call`` runs the whole self-test as one call of the image
inference thread, for comparison.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import threading
import time
import timeit

import httpx
import numpy as np
from PIL import Image

from runtime.embedder import Embedder
from runtime.serve import BackgroundServer, ServerSettings, create_app
from runtime.serve.metrics import ServerMetrics


def percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)) * 1000, 2) if values else None


def image_uri() -> str:
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def metrics_cost(dim: int, repeat: int = 20000) -> dict:
    """Microseconds the numeric-health metrics add per request of one text (norm histogram, non-finite count and two
    stage observations) and per image (the same and the decode stage)."""
    metrics = ServerMetrics()
    row = np.random.default_rng(0).normal(0, 1, (1, dim)).astype(np.float32)
    stage = metrics.stage_seconds

    def text():
        metrics.observe_rows("text", row)
        stage.labels("text", "tokenize").observe(0.001)
        stage.labels("text", "encode").observe(0.001)

    def image():
        metrics.observe_rows("image", row)
        stage.labels("image", "decode").observe(0.001)
        stage.labels("image", "encode").observe(0.001)

    return {kind: round(min(timeit.repeat(call, number=repeat, repeat=5)) / repeat * 1e6, 2)
            for kind, call in (("text_us", text), ("image_us", image))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--interval", type=float, default=4.0)
    parser.add_argument("--text-clients", type=int, default=4)
    parser.add_argument("--image-clients", type=int, default=1)
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--one-call", action="store_true",
                        help="for comparison: run the whole self-test as one call of the image inference thread "
                        "instead of each probe batch as its own call there")
    args = parser.parse_args()

    settings = ServerSettings(self_test_interval_s=args.interval)
    app = create_app(lambda: Embedder.load(args.bundle, backend=args.backend, precision=args.precision), settings)
    service = app.state.service
    windows: list[tuple[float, float]] = []
    run = service.self_test.run

    def timed_run(embedder, *executors):
        started = time.perf_counter()
        try:
            if args.one_call:  # the whole self-test as one call of the image inference thread
                return service._inference.submit(run, embedder).result()
            return run(embedder, *executors)
        finally:
            windows.append((started, time.perf_counter()))

    service.self_test.run = timed_run
    samples: dict[str, list[tuple[float, float]]] = {"text": [], "image": []}
    with BackgroundServer(app) as server:
        with httpx.Client(base_url=server.url, timeout=120) as client:
            while client.get("/readyz").status_code != 200:
                time.sleep(0.1)
            info = client.get("/v1/info").json()
        model = info["model"]
        stop = time.perf_counter() + args.seconds
        uri = image_uri()

        def client_loop(kind: str) -> None:
            body = {"model": model, "input": ["кошка спит на диване" if kind == "text" else uri]}
            with httpx.Client(base_url=server.url, timeout=120) as session:
                while time.perf_counter() < stop:
                    started = time.perf_counter()
                    response = session.post("/v1/embeddings", json=body)
                    response.raise_for_status()
                    samples[kind].append((started, time.perf_counter()))

        threads = [threading.Thread(target=client_loop, args=("text",)) for _ in range(args.text_clients)]
        threads += [threading.Thread(target=client_loop, args=("image",)) for _ in range(args.image_clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    startup, periodic = windows[0], windows[1:]

    def overlaps(start: float, end: float) -> bool:
        return any(start < w_end and end > w_start for w_start, w_end in periodic)

    latency = {}
    for kind, spans in samples.items():
        during = [end - start for start, end in spans if overlaps(start, end)]
        outside = [end - start for start, end in spans if not overlaps(start, end)]
        latency[kind] = {"requests_outside": len(outside), "p50_ms_outside": percentile(outside, 50),
                         "p99_ms_outside": percentile(outside, 99), "requests_during": len(during),
                         "p50_ms_during": percentile(during, 50), "p99_ms_during": percentile(during, 99)}
    print(json.dumps({
        "bundle": os.path.basename(os.path.normpath(args.bundle)),
        "backend": info["backend"], "precision": info["precision"], "device": info["device"],
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "load_average_1m_end": round(os.getloadavg()[0], 2),
        "self_test_calls": "one call" if args.one_call else "per probe batch",
        "clients": {"text": args.text_clients, "image": args.image_clients}, "seconds": args.seconds,
        "self_test_seconds": {"at_start": round(startup[1] - startup[0], 3),
                              "periodic": [round(end - start, 3) for start, end in periodic]},
        "latency": latency,
        "metrics_cost_per_request": metrics_cost(info["dim"]),
    }, indent=1))


if __name__ == "__main__":
    main()
