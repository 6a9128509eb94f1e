"""Work of clients that left is dropped, and texts do not wait behind images: the real server on loopback with the
full-size exported bundle (an image takes tens of milliseconds on a CPU, so a request of many images is still queued
when its client hangs up). Everything is read from the server's own /metrics; nothing is asserted on timing.
"""

from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time

import numpy as np
import pytest

httpx = pytest.importorskip("httpx", reason="the server tests need httpx (pip install -e '.[dev]')")
pytest.importorskip("fastapi", reason="the server tests need the serve extra (pip install -e '.[serve]')")

from PIL import Image  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from runtime.embedder import Embedder  # noqa: E402
from runtime.serve import BackgroundServer, ServerSettings, create_app  # noqa: E402


def jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def metric(client: httpx.Client, name: str, **labels) -> float:
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def wait_for(predicate, what: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def server(exported_bundle):
    # One intra-op thread: the image calls stay slow enough on any CPU for the queue to hold requests.
    app = create_app(lambda: Embedder.load(exported_bundle, backend="onnxruntime", intra_op_threads=1),
                     ServerSettings(max_items=64))
    with BackgroundServer(app) as running:
        with httpx.Client(base_url=running.url, timeout=60) as client:
            wait_for(lambda: client.get("/readyz").status_code == 200, "ready")
        yield running


def image_body(count: int, seed: int) -> bytes:
    return json.dumps({"images": [base64.b64encode(jpeg(seed + i)).decode() for i in range(count)]}).encode()


def test_requests_whose_clients_left_are_dropped_unrun_and_counted(server):
    requests, per_request = 6, 8
    with httpx.Client(base_url=server.url, timeout=60) as client:
        processed_before = metric(client, "ruclip_tiny_batch_items_sum", kind="image")
        cancelled_before = metric(client, "ruclip_tiny_cancelled_items_total", kind="image")
        sockets = []
        for number in range(requests):
            body = image_body(per_request, seed=100 * number)
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
            sock.sendall(b"POST /v1/embeddings/image HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json"
                         b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            sockets.append(sock)
        wait_for(lambda: metric(client, "ruclip_tiny_batch_items_sum", kind="image") > processed_before,
                 "the first image call")
        for sock in sockets:  # every client hangs up while its work is queued or running
            sock.close()

        def settled() -> tuple[float, float]:
            return (metric(client, "ruclip_tiny_batch_items_sum", kind="image") - processed_before,
                    metric(client, "ruclip_tiny_cancelled_items_total", kind="image") - cancelled_before)

        # Idle again: every item either ran or was dropped.
        wait_for(lambda: sum(settled()) == requests * per_request, "all items accounted for")
        processed, cancelled = settled()
        assert metric(client, "ruclip_tiny_queue_items", kind="image") == 0
        assert client.post("/v1/embeddings/text", json={"texts": ["кошка"]}).status_code == 200
        gone = metric(client, "ruclip_tiny_requests_total", endpoint="/v1/embeddings/image", status="499")
    # Most of the 48 images never reached the backend (the first call or two ran before the hang-up was seen).
    assert cancelled >= requests * per_request // 2, (processed, cancelled)
    assert processed < requests * per_request // 2
    assert gone >= requests  # counted as client-closed, not as server errors


def test_a_text_request_is_answered_while_a_large_image_request_is_still_running(server):
    finished = threading.Event()
    answers = {}

    def post_images():
        with httpx.Client(base_url=server.url, timeout=120) as images_client:
            answers["images"] = images_client.post("/v1/embeddings/image", content=image_body(32, seed=7),
                                                   headers={"content-type": "application/json"})
        finished.set()

    with httpx.Client(base_url=server.url, timeout=60) as client:
        calls_before = metric(client, "ruclip_tiny_batch_items_count", kind="image")
        thread = threading.Thread(target=post_images)
        thread.start()
        wait_for(lambda: metric(client, "ruclip_tiny_batch_items_count", kind="image") > calls_before,
                 "the first image call")
        text = client.post("/v1/embeddings/text", json={"texts": ["кошка на диване"]})
        images_done_when_text_answered = finished.is_set()
        thread.join(120)
    assert text.status_code == 200
    assert answers["images"].status_code == 200
    # 32 images run as calls of one image (the CPU default): the text got in after one of them, not after all.
    assert not images_done_when_text_answered


@pytest.mark.parametrize("concurrent_calls", [True, False], ids=["own-text-thread", "shared-thread"])
def test_a_text_does_not_wait_for_an_image_call_when_the_backend_takes_simultaneous_calls(tmp_path, concurrent_calls):
    """An image call is held inside the backend: with a backend that takes simultaneous calls (ONNX Runtime) a text
    is answered meanwhile; with one that takes one call at a time the text waits for the image call to end."""
    from tests.runtime.fake_bundle import build_fake_bundle

    embedder = Embedder.load(build_fake_bundle(tmp_path / "bundle"), backend="onnxruntime")
    assert embedder.backend.concurrent_calls is True  # what ONNX Runtime declares
    embedder.backend.concurrent_calls = concurrent_calls
    holding, inside, release = threading.Event(), threading.Event(), threading.Event()
    encode_pixels = embedder.backend._encode_pixels

    def held_encode_pixels(pixels):
        if holding.is_set():
            inside.set()
            release.wait(60)
        return encode_pixels(pixels)

    embedder.backend._encode_pixels = held_encode_pixels
    answers = {}
    with BackgroundServer(create_app(embedder, ServerSettings())) as running, \
            httpx.Client(base_url=running.url, timeout=60) as client:
        wait_for(lambda: client.get("/readyz").status_code == 200, "ready")
        holding.set()

        def post_image():
            answers["image"] = client.post("/v1/embeddings/image", content=image_body(1, seed=3),
                                           headers={"content-type": "application/json"})

        thread = threading.Thread(target=post_image)
        thread.start()
        try:
            assert inside.wait(30), "the image call never started"
            try:
                answers["text"] = client.post("/v1/embeddings/text", json={"texts": ["кошка"]}, timeout=3)
            except httpx.ReadTimeout:
                answers["text"] = None
            text_answered_during_image_call = not release.is_set() and answers["text"] is not None
        finally:
            release.set()
            thread.join(60)
    assert answers["image"].status_code == 200
    if concurrent_calls:
        assert text_answered_during_image_call and answers["text"].status_code == 200
    else:
        assert answers["text"] is None  # still waiting behind the held image call after 3 s
