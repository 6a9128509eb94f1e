"""The server's self-test on the real server over loopback: a bundle whose visual graph was swapped for one with other
weights (sha256 and ``deployable`` fixed up, so only the numbers tell) never becomes ready and says why; a backend
that starts answering NaN mid-life turns the server not ready, and ready again once a self-test passes;
``--no-self-test`` skips it; a NaN row is never answered as numbers."""

from __future__ import annotations

import base64
import io
import logging
import subprocess
import threading
import time

import numpy as np
import onnx
import pytest

httpx = pytest.importorskip("httpx", reason="the server tests need httpx (pip install -e '.[dev]')")
pytest.importorskip("fastapi", reason="the server tests need the serve extra (pip install -e '.[serve]')")

from PIL import Image  # noqa: E402

from runtime.bundle import Bundle, onnx_file  # noqa: E402
from runtime.embedder import Embedder  # noqa: E402
from runtime.serve import BackgroundServer, ServerSettings, create_app  # noqa: E402
from tests.runtime.fake_bundle import (  # noqa: E402
    VISUAL_W1,
    build_fake_bundle,
    edit_manifest,
    fake_weights,
    refresh_manifest_entry,
    scale_initializer,
    visual_graph,
)
from tests.runtime.serve.serve_command import start_serve  # noqa: E402
from tests.runtime.serve.test_app import metric, wait_ready  # noqa: E402


def serve(bundle, **settings) -> BackgroundServer:
    load = lambda: Embedder.load(bundle, backend="onnxruntime", precision="fp32")  # noqa: E731
    return BackgroundServer(create_app(load, ServerSettings(**settings)))


class Records(logging.Handler):
    """The log records of one logger (the server's loggers do not propagate: uvicorn's handler prints them)."""

    def __init__(self, name: str):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.logger = logging.getLogger(name)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def __enter__(self) -> Records:
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc_info) -> None:
        self.logger.removeHandler(self)


def wait_state(client: httpx.Client, state: str, timeout_s: float = 60) -> dict:
    deadline = time.monotonic() + timeout_s
    while (body := client.get("/readyz").json())["state"] != state:
        assert time.monotonic() < deadline, f"the server did not reach state {state!r}: {body}"
        time.sleep(0.05)
    return body


def png_uri(seed: int) -> str:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="module")
def swapped_bundle(tmp_path_factory):
    """A fake bundle whose visual graph has other weights, its manifest entry re-hashed and marked deployable."""
    root = build_fake_bundle(tmp_path_factory.mktemp("swapped") / "bundle")
    onnx.save(visual_graph(fake_weights(seed=7), "fp32"), str(root / onnx_file("visual", "fp32")))
    refresh_manifest_entry(root, "visual.fp32")
    edit_manifest(root, lambda manifest: manifest["artifacts"]["visual.fp32"].update(deployable=True))
    Bundle.load(root).verify(["visual.fp32"])  # the file passes every check but the numbers
    return root


def test_a_swapped_graph_never_becomes_ready_and_says_why(swapped_bundle):
    server = serve(swapped_bundle, self_test_interval_s=0.1)  # configures logging: the handler goes on after it
    with Records("runtime.serve.service") as log, server, httpx.Client(base_url=server.url, timeout=30) as client:
        body = wait_state(client, "failed")
        time.sleep(0.5)  # several more self-tests run and fail
        response = client.get("/readyz")
        body = response.json()
        assert response.status_code == 503 and body["ready"] is False
        assert "self-test failed" in body["error"] and "visual.fp32" in body["error"]
        assert "cosine" in body["error"]  # the failing metric, by name and value
        assert body["self_test"]["passed"] is False
        assert body["self_test"]["metrics"]["visual.fp32"]["min_cosine"] < 0.99999
        assert not any(f.startswith("textual.fp32") for f in body["self_test"]["failures"])  # the good graph passes
        assert metric(client.get("/metrics").text, "ruclip_tiny_self_test_ok") == 0
        answer = client.post("/v1/embeddings", json={"model": "fake-ruclip-tiny", "input": "слово1"})
        assert answer.status_code == 503 and "self-test failed" in answer.json()["error"]["message"]
        assert client.post("/v1/embeddings/text", json={"texts": ["слово1"]}).status_code == 503
    errors = [r.getMessage() for r in log.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "self-test failed" in errors[0], errors  # one line, not one per self-test


def test_no_self_test_serves_it_and_says_so(swapped_bundle):
    with serve(swapped_bundle, self_test=False) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        wait_ready(client)
        info = client.get("/v1/info").json()
        assert info["self_test"] == {"enabled": False, "interval_s": None, "last": None}
        assert "self_test" not in client.get("/readyz").json()
        assert "ruclip_tiny_self_test_ok" not in client.get("/metrics").text  # an alert on == 0 must not fire


def test_a_backend_that_turns_bad_turns_not_ready_then_ready_again(tmp_path):
    bundle = build_fake_bundle(tmp_path / "bundle")
    with serve(bundle, self_test_interval_s=0.1) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        wait_ready(client)
        backend = server.config.app.state.service.embedder.backend
        good = backend.encode_pixels
        threads = set()

        def nan(pixels):  # a driver gone wrong
            threads.add(threading.current_thread().name)
            return good(pixels) * np.float32("nan")

        backend.encode_pixels = nan
        body = wait_state(client, "failed")
        assert "NaN" in body["error"]
        # the probe's calls take their turn in the image inference thread, between the batches of requests
        assert threads and all(name.startswith("ruclip-infer_") for name in threads), threads
        backend.encode_pixels = good
        wait_state(client, "ready")
        assert metric(client.get("/metrics").text, "ruclip_tiny_self_test_ok") == 1

        def broken(pixels):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")

        backend.encode_pixels = broken  # a backend that raises fails the self-test too, and the loop goes on
        assert "illegal memory access" in wait_state(client, "failed")["error"]
        backend.encode_pixels = good
        wait_state(client, "ready")


def test_a_nan_row_is_a_500_and_is_counted(tmp_path):
    bundle = build_fake_bundle(tmp_path / "bundle")
    scale_initializer(bundle / onnx_file("visual", "fp32"), VISUAL_W1, float("inf"))  # Sin(inf) = NaN
    refresh_manifest_entry(bundle, "visual.fp32")
    with serve(bundle, self_test=False) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        wait_ready(client)
        answer = client.post("/v1/embeddings", json={"model": "fake-ruclip-tiny", "input": ["слово1", png_uri(1)]})
        assert answer.status_code == 500
        error = answer.json()["error"]
        assert error["type"] == "server_error" and "input[1]" in error["message"] and "NaN" in error["message"]
        metrics = client.get("/metrics").text
        assert metric(metrics, "ruclip_tiny_nonfinite_outputs_total", kind="image") == 1
        assert metric(metrics, "ruclip_tiny_nonfinite_outputs_total", kind="text") == 0


def serve_command(bundle, *flags: str) -> tuple[subprocess.Popen, int]:
    return start_serve(bundle, "--backend", "onnxruntime", "--precision", "fp32", "--log-level", "warning", *flags)


def readyz_until(process: subprocess.Popen, port: int, state: str) -> dict:
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, process.stdout.read()
            try:
                body = client.get("/readyz").json()
                if body["state"] == state:
                    return body
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"serve did not reach state {state!r}"
            time.sleep(0.1)


def test_serve_command_self_test_flags(swapped_bundle):
    process, port = serve_command(swapped_bundle, "--self-test-interval", "0")
    try:
        body = readyz_until(process, port, "failed")
    finally:
        process.terminate()
        output = process.communicate(timeout=30)[0]
    assert "self-test failed: visual.fp32: min row cosine" in body["error"]
    assert [line for line in output.splitlines() if "ERROR" in line and "self-test failed" in line]
    process, port = serve_command(swapped_bundle, "--no-self-test")
    try:
        readyz_until(process, port, "ready")
        info = httpx.get(f"http://127.0.0.1:{port}/v1/info", timeout=30).json()
    finally:
        process.terminate()
        process.communicate(timeout=30)
    assert info["self_test"]["enabled"] is False
