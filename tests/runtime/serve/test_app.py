"""The HTTP server on loopback: a real uvicorn on a free port, spoken to with httpx, checked against ``Embedder``.

Correctness (cosine >= 0.99999 against the same backend's Embedder output), every response row belonging to its
own request under 16 concurrent clients, limits (413/422 naming the limit, never 500), undecodable images as null
rows, backpressure (503 + Retry-After), graceful shutdown, readiness before warm-up, and the metrics counting.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import random
import signal
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
from runtime.serve.batching import DynamicBatcher  # noqa: E402
from tests.runtime.serve.serve_command import start_serve, wait_for_serve  # noqa: E402

MIN_COSINE = 0.99999
LIMITS = dict(max_items=8, max_text_chars=600, max_image_bytes=150_000, max_body_bytes=400_000)
LONG_TEXT = " ".join(["кошка"] * 90)  # 90 words: more than 77 tokens, fewer than 600 characters


def jpeg(seed: int, size: tuple[int, int] = (96, 80)) -> bytes:
    """A small JPEG with a pattern of its own (different seeds give clearly different embeddings)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    image = Image.fromarray(base).resize(size, Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def cosines(a, b) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def wait_ready(client: httpx.Client, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "the server did not become ready"
        time.sleep(0.05)


def metric(text: str, name: str, **labels) -> float:
    """The value of one sample in Prometheus text (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


@pytest.fixture(scope="module")
def reference(exported_bundle):
    """The Embedder the server's answers are compared with (same bundle, same backend)."""
    with Embedder.load(exported_bundle, backend="onnxruntime") as embedder:
        yield embedder


@pytest.fixture(scope="module")
def server(exported_bundle):
    """One real server for the module (ONNX Runtime on the CPU), loading its own Embedder in the background."""
    settings = ServerSettings(max_batch=32, max_image_batch=4, max_wait_ms=5, **LIMITS)
    # one ONNX Runtime thread: the test's own clients share the two cores with the server
    app = create_app(lambda: Embedder.load(exported_bundle, backend="onnxruntime", intra_op_threads=1), settings)
    with BackgroundServer(app) as running:
        with httpx.Client(base_url=running.url, timeout=60) as client:
            wait_ready(client)
            yield running


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


# --- correctness ---------------------------------------------------------------------------------------------------


def test_text_embeddings_equal_the_embedders_and_report_truncation(client, reference):
    texts = ["кошка", "собака на траве", LONG_TEXT, ""]
    response = client.post("/v1/embeddings/text", json={"texts": texts})
    assert response.status_code == 200, response.text
    body = response.json()
    expected = reference.encode_texts_detailed(texts)
    assert body["model"] == "ruclip-tiny" and body["synthetic"] is True and body["dim"] == 768
    rows = np.asarray(body["embeddings"], np.float32)
    assert rows.shape == (4, 768)
    assert cosines(rows, expected.embeddings).min() >= MIN_COSINE
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)
    assert body["truncated"] == expected.truncated == [2]

    raw = client.post("/v1/embeddings/text", json={"texts": texts, "normalize": False}).json()["embeddings"]
    unnormalised = reference.encode_texts_detailed(texts, normalize=False).embeddings
    np.testing.assert_allclose(np.linalg.norm(raw, axis=1), np.linalg.norm(unnormalised, axis=1), rtol=1e-4)


def test_image_embeddings_json_and_multipart_equal_the_embedders_and_bad_images_get_null(client, reference):
    good = [jpeg(1), jpeg(2)]
    expected = reference.encode_images(good)
    images = [b64(good[0]), "***not base64***", b64(b"GIF89a but not really"), b64(good[1]), ""]
    response = client.post("/v1/embeddings/image", json={"images": images})
    assert response.status_code == 200, response.text
    body = response.json()
    rows = body["embeddings"]
    assert [row is None for row in rows] == [False, True, True, False, True]
    assert cosines([rows[0], rows[3]], expected).min() >= MIN_COSINE
    errors = {entry["index"]: entry["error"] for entry in body["errors"]}
    assert sorted(errors) == [1, 2, 4]
    assert "base64" in errors[1] and "empty" in errors[4]

    files = [("images", ("a.jpg", good[1], "image/jpeg")), ("images", ("b.jpg", b"junk", "image/jpeg")),
             ("images", ("c.jpg", good[0], "image/jpeg"))]
    multipart = client.post("/v1/embeddings/image", files=files).json()
    assert [row is None for row in multipart["embeddings"]] == [False, True, False]
    assert [entry["index"] for entry in multipart["errors"]] == [1]
    assert cosines([multipart["embeddings"][0], multipart["embeddings"][2]], expected[::-1]).min() >= MIN_COSINE


def test_classify_equals_the_embedders_probabilities(client, reference):
    labels, template = ["кошка", "собака", "ракета"], "фото: {}"
    images = [jpeg(3), jpeg(4)]
    response = client.post("/v1/classify", json={"images": [b64(images[0]), "!!", b64(images[1])],
                                                  "labels": labels, "template": template})
    assert response.status_code == 200, response.text
    body = response.json()
    expected = reference.classify(images, labels, template=template)
    assert body["labels"] == labels and body["probs"][1] is None and body["errors"][0]["index"] == 1
    np.testing.assert_allclose([body["probs"][0], body["probs"][2]], expected, atol=1e-5)


def test_info_says_synthetic_backend_precision_and_parity(client):
    info = client.get("/v1/info").json()
    assert info["synthetic"] is True and info["model"] == "ruclip-tiny"
    assert (info["backend"], info["precision"], info["device"]) == ("onnxruntime", "fp32", "cpu")
    # every artifact the backend serves, the fused text graph it runs for right-padded texts on the CPU included
    assert info["parity"] == {"textual.fp32": {"deployable": True, "passed": True},
                              "visual.fp32": {"deployable": True, "passed": True},
                              "textual.fp32.fused": {"deployable": True, "passed": True}}
    assert info["ready"] is True and info["batching"]["enabled"] is True
    assert (info["batching"]["max_batch"], info["batching"]["max_image_batch"]) == (32, 4)
    assert client.get("/healthz").json() == {"status": "ok"}


def test_the_openapi_schema_describes_every_endpoint_and_both_image_encodings(client):
    schema = client.get("/openapi.json").json()
    assert {"/v1/embeddings/text", "/v1/embeddings/image", "/v1/classify", "/healthz", "/readyz", "/metrics",
            "/v1/info"} <= set(schema["paths"])
    image_body = schema["paths"]["/v1/embeddings/image"]["post"]["requestBody"]["content"]
    assert set(image_body) == {"application/json", "multipart/form-data"}


# --- concurrency ---------------------------------------------------------------------------------------------------


def test_16_concurrent_clients_each_get_their_own_rows_and_requests_are_merged(server, reference):
    texts = [f"подпись номер {i}: {word}" for i, word in enumerate(
        "кошка собака дом река лес поле город море гора небо ракета кофе монеты звезды луна солнце".split())]
    images = [jpeg(10 + i) for i in range(4)]
    expected_text = dict(zip(texts, reference.encode_texts(texts), strict=True))
    expected_image = dict(zip(range(4), reference.encode_images(images), strict=True))
    # different inputs must be told apart for "its own row" to mean anything
    rows = np.stack(list(expected_text.values()))
    assert cosines(rows[:-1], rows[1:]).max() < 0.9999
    before = httpx.get(f"{server.url}/metrics").text

    async def one_client(seed: int, http: httpx.AsyncClient) -> int:
        rng = random.Random(seed)
        checked = 0
        image_turns = {rng.randrange(50)}  # an image costs ~100x a short text on a CPU: one per client
        for turn in range(50):
            if turn not in image_turns:
                chosen = rng.sample(texts, rng.randint(1, 3))
                response = await http.post("/v1/embeddings/text", json={"texts": chosen})
                assert response.status_code == 200, response.text
                want = np.stack([expected_text[t] for t in chosen])
            else:
                chosen = [rng.randrange(4)]
                response = await http.post("/v1/embeddings/image", json={"images": [b64(images[i]) for i in chosen]})
                assert response.status_code == 200, response.text
                want = np.stack([expected_image[i] for i in chosen])
            got = response.json()["embeddings"]
            assert len(got) == len(chosen)
            assert cosines(got, want).min() >= MIN_COSINE
            checked += len(chosen)
        return checked

    async def all_clients() -> list[int]:
        limits = httpx.Limits(max_connections=16)
        async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as http:
            return await asyncio.wait_for(asyncio.gather(*(one_client(seed, http) for seed in range(16))), 240)

    checked = asyncio.run(all_clients())
    assert sum(checked) >= 16 * 50
    after = httpx.get(f"{server.url}/metrics").text
    # merged: some text backend call carried more than one request
    batches = metric(after, "ruclip_tiny_batch_requests_count", kind="text") - metric(
        before, "ruclip_tiny_batch_requests_count", kind="text")
    single = metric(after, "ruclip_tiny_batch_requests_bucket", kind="text", le="1.0") - metric(
        before, "ruclip_tiny_batch_requests_bucket", kind="text", le="1.0")
    assert batches > 0 and single < batches
    # images are merged too, but never past max_image_batch=4
    image_calls = metric(after, "ruclip_tiny_batch_items_count", kind="image") - metric(
        before, "ruclip_tiny_batch_items_count", kind="image")
    up_to_4 = metric(after, "ruclip_tiny_batch_items_bucket", kind="image", le="4.0") - metric(
        before, "ruclip_tiny_batch_items_bucket", kind="image", le="4.0")
    assert image_calls > 0 and up_to_4 == image_calls


# --- metrics -------------------------------------------------------------------------------------------------------


def test_metrics_count_requests_items_errors_and_batches(client):
    before = client.get("/metrics").text
    assert client.post("/v1/embeddings/text", json={"texts": ["раз", "два", "три"]}).status_code == 200
    assert client.post("/v1/embeddings/image", json={"images": [b64(jpeg(5)), "%%%"]}).status_code == 200
    assert client.post("/v1/embeddings/text", json={"texts": []}).status_code == 422
    after = client.get("/metrics").text

    def delta(name, **labels):
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert delta("ruclip_tiny_requests_total", endpoint="/v1/embeddings/text", status="200") == 1
    assert delta("ruclip_tiny_requests_total", endpoint="/v1/embeddings/text", status="422") == 1
    assert delta("ruclip_tiny_requests_total", endpoint="/v1/embeddings/image", status="200") == 1
    assert delta("ruclip_tiny_items_total", kind="text") == 3
    assert delta("ruclip_tiny_items_total", kind="image") == 1
    assert delta("ruclip_tiny_item_errors_total", kind="image") == 1
    assert delta("ruclip_tiny_batch_items_sum", kind="text") == 3
    assert delta("ruclip_tiny_queue_wait_seconds_count", kind="image") == 1
    assert delta("ruclip_tiny_request_seconds_count", endpoint="/v1/embeddings/image") == 1
    assert metric(after, "ruclip_tiny_ready") == 1


# --- limits and bad input ------------------------------------------------------------------------------------------


def test_limits_answer_422_or_413_naming_the_limit(client):
    def detail(response) -> str:
        return json.dumps(response.json(), ensure_ascii=False)

    too_many = client.post("/v1/embeddings/text", json={"texts": ["a"] * 9})
    assert too_many.status_code == 422 and "--max-items=8" in detail(too_many)
    too_long = client.post("/v1/embeddings/text", json={"texts": ["a" * 601]})
    assert too_long.status_code == 422 and "--max-text-chars=600" in detail(too_long)
    labels = client.post("/v1/classify", json={"images": [b64(jpeg(1))], "labels": ["x"] * 9})
    assert labels.status_code == 422 and "--max-items=8" in detail(labels)
    big_image = b64(b"\xff" * 160_000)
    image = client.post("/v1/embeddings/image", json={"images": [big_image]})
    assert image.status_code == 422 and "--max-image-bytes=150000" in detail(image)
    upload = client.post("/v1/embeddings/image", files=[("images", ("big.jpg", b"\xff" * 160_000, "image/jpeg"))])
    assert upload.status_code == 422 and "--max-image-bytes=150000" in detail(upload)

    body = json.dumps({"texts": ["a" * 500] * 1000}).encode()
    declared = client.post("/v1/embeddings/text", content=body, headers={"content-type": "application/json"})
    assert declared.status_code == 413 and "--max-body-bytes=400000" in detail(declared)

    def chunks():  # no Content-Length: the limit must hold while the body streams in
        for _ in range(100):
            yield b" " * 10_000

    streamed = client.post("/v1/embeddings/text", content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413 and "--max-body-bytes=400000" in detail(streamed)
    streamed_image = client.post("/v1/embeddings/image", content=chunks(),
                                 headers={"content-type": "application/json"})
    assert streamed_image.status_code == 413


BAD_REQUESTS = [
    ("/v1/embeddings/text", b"{"),
    ("/v1/embeddings/text", b"not json at all"),
    ("/v1/embeddings/text", b"\xff\xfe\x00garbage"),
    ("/v1/embeddings/text", b"[]"),
    ("/v1/embeddings/text", b"null"),
    ("/v1/embeddings/text", b'{"texts": "one string"}'),
    ("/v1/embeddings/text", b'{"texts": []}'),
    ("/v1/embeddings/text", b'{"texts": [1, 2]}'),
    ("/v1/embeddings/text", b'{"texts": [null]}'),
    ("/v1/embeddings/text", b'{"texts": [["nested"]]}'),
    ("/v1/embeddings/text", b'{"texts": ["ok"], "normalize": "yes"}'),
    ("/v1/embeddings/text", b'{"texts": ["ok"], "unknown": 1}'),
    ("/v1/embeddings/text", b'{"text": ["wrong field name"]}'),
    ("/v1/embeddings/text", b""),
    ("/v1/embeddings/image", b"{"),
    ("/v1/embeddings/image", b""),
    ("/v1/embeddings/image", b'{"images": []}'),
    ("/v1/embeddings/image", b'{"images": [123]}'),
    ("/v1/embeddings/image", b'{"images": "abc"}'),
    ("/v1/embeddings/image", b'{"images": ["abc"], "normalize": 2}'),
    ("/v1/embeddings/image", b'{"imgs": ["abc"]}'),
    ("/v1/classify", b'{"images": ["abc"]}'),
    ("/v1/classify", b'{"images": ["abc"], "labels": []}'),
    ("/v1/classify", b'{"images": ["abc"], "labels": ["x"], "template": "{0} {1}"}'),
    ("/v1/classify", b'{"images": ["abc"], "labels": ["x"], "template": "{name}"}'),
    ("/v1/classify", b'{"images": ["abc"], "labels": ["x"], "template": "no slot"}'),
    ("/v1/classify", b'{"images": ["abc"], "labels": ["x"], "template": "{"}'),
    ("/v1/classify", b'{"images": ["abc"], "labels": [7], "template": "{}"}'),
]


@pytest.mark.parametrize("path, body", BAD_REQUESTS, ids=[f"{p.rsplit('/', 1)[1]}-{i}" for i, (p, _) in
                                                          enumerate(BAD_REQUESTS)])
def test_malformed_requests_get_422_with_a_message_never_500(client, path, body):
    response = client.post(path, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["detail"]


def test_malformed_multipart_gets_422_never_500(client):
    only_normalize = b'--xyz\r\nContent-Disposition: form-data; name="normalize"\r\n\r\ntrue\r\n--xyz--\r\n'
    no_files = client.post("/v1/embeddings/image", content=only_normalize,
                           headers={"content-type": "multipart/form-data; boundary=xyz"})
    assert no_files.status_code == 422
    urlencoded = client.post("/v1/embeddings/image", data={"normalize": "true"}, files=[])  # not a documented type
    assert urlencoded.status_code == 415
    only_fields = client.post("/v1/embeddings/image", data={"normalize": "true"},
                              files=[("other", ("x.txt", b"x", "text/plain"))])
    assert only_fields.status_code == 200 and only_fields.json()["embeddings"] == [None]
    bad_flag = client.post("/v1/embeddings/image", data={"normalize": "maybe"},
                           files=[("images", ("a.jpg", jpeg(1), "image/jpeg"))])
    assert bad_flag.status_code == 422 and "normalize" in bad_flag.text
    broken = client.post("/v1/embeddings/image", content=b"--xyz\r\nbroken",
                         headers={"content-type": "multipart/form-data; boundary=xyz"})
    assert broken.status_code in (400, 422)


# --- readiness, backpressure, shutdown -----------------------------------------------------------------------------


def test_not_ready_until_warm_up_finished_while_healthz_answers(exported_bundle):
    release = threading.Event()
    warmed = []

    def slow_warm_up(embedder):
        assert release.wait(60), "the test never released the warm-up"
        embedder.encode_texts(["прогрев"])
        warmed.append(True)

    app = create_app(lambda: Embedder.load(exported_bundle, backend="onnxruntime"), ServerSettings(),
                     warmup=slow_warm_up)
    with BackgroundServer(app) as running, httpx.Client(base_url=running.url, timeout=30) as client:
        assert client.get("/healthz").status_code == 200
        not_ready = client.get("/readyz")
        assert not_ready.status_code == 503 and not_ready.json()["ready"] is False
        refused = client.post("/v1/embeddings/text", json={"texts": ["кошка"]})
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert "not ready" in refused.json()["detail"]
        assert client.get("/v1/info").json()["ready"] is False
        release.set()
        wait_ready(client)
        assert warmed == [True]
        assert client.post("/v1/embeddings/text", json={"texts": ["кошка"]}).status_code == 200


class SlowBackend:
    """The real backend, each text call delayed, so requests pile up in the queue."""

    def __init__(self, backend, delay_s: float):
        self._backend, self._delay_s = backend, delay_s

    def __getattr__(self, name):
        return getattr(self._backend, name)

    def encode_tokens(self, input_ids, attention_mask):
        time.sleep(self._delay_s)
        return self._backend.encode_tokens(input_ids, attention_mask)


def test_a_full_queue_answers_503_with_retry_after_and_shutdown_finishes_in_flight_requests(exported_bundle, reference):
    embedder = Embedder.load(exported_bundle, backend="onnxruntime")
    embedder.backend = SlowBackend(embedder.backend, 0.4)
    settings = ServerSettings(max_batch=1, max_queue_items=2, batching=False)
    server = BackgroundServer(create_app(embedder, settings, warmup=lambda e: None)).start()
    texts = [f"текст {i}" for i in range(12)]
    expected = reference.encode_texts(texts)

    async def burst(count: int):
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
            return await asyncio.gather(*(http.post("/v1/embeddings/text", json={"texts": [texts[i]]})
                                          for i in range(count)))

    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:
            wait_ready(client)
        responses = asyncio.run(burst(12))
        statuses = [r.status_code for r in responses]
        # one running and two queued at a time: of 12 sent at once, at least 2 get in and most are refused
        assert statuses.count(200) >= 2 and statuses.count(503) >= 3, statuses
        assert statuses.count(200) + statuses.count(503) == 12, statuses
        for index, response in enumerate(responses):
            if response.status_code == 503:
                assert response.headers["retry-after"] == "1" and "--max-queue-items=2" in response.json()["detail"]
            else:
                assert cosines(response.json()["embeddings"], expected[index : index + 1]).min() >= MIN_COSINE
        rejected = metric(httpx.get(f"{server.url}/metrics").text, "ruclip_tiny_rejected_total", kind="text")
        assert rejected == statuses.count(503)

        # three requests in flight (one running, two queued) when shutdown starts: all three are answered
        results = {}

        def send(index):
            results[index] = httpx.post(f"{server.url}/v1/embeddings/text", json={"texts": [texts[index]]}, timeout=60)

        senders = [threading.Thread(target=send, args=(i,)) for i in range(3)]
        for sender in senders:
            sender.start()
        deadline = time.monotonic() + 10
        while metric(httpx.get(f"{server.url}/metrics").text, "ruclip_tiny_queue_items", kind="text") < 2:
            assert time.monotonic() < deadline, "the requests never queued"
            time.sleep(0.02)
        server.stop()
        for sender in senders:
            sender.join(30)
        assert [results[i].status_code for i in range(3)] == [200, 200, 200]
        for index in range(3):
            assert cosines(results[index].json()["embeddings"], expected[index : index + 1]).min() >= MIN_COSINE
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{server.url}/healthz", timeout=5)
    finally:
        server.stop()


# --- the batcher alone ---------------------------------------------------------------------------------------------


def test_a_failing_request_in_a_merged_batch_fails_alone_and_a_lone_request_does_not_wait():
    from concurrent.futures import ThreadPoolExecutor

    calls = []

    def run_batch(items):
        calls.append(list(items))
        if "poison" in items:
            raise ValueError("poison item")
        return [item.upper() for item in items]

    async def scenario():
        with ThreadPoolExecutor(1) as executor:
            batcher = DynamicBatcher("text", run_batch, executor, max_batch=16, max_wait_s=0.2)
            batcher.start()

            async def request(items):
                with batcher.arrival() as arrival:
                    await asyncio.sleep(0)  # all three arrive before any submits
                    return await batcher.submit(batcher.admit(len(items)), items, arrival)

            results = await asyncio.gather(request(["a", "b"]), request(["poison"]), request(["c"]),
                                           return_exceptions=True)
            started = time.perf_counter()
            alone = await batcher.submit(batcher.admit(1), ["d"])
            waited = time.perf_counter() - started
            await batcher.close()
            return results, alone, waited

    results, alone, waited = asyncio.run(scenario())
    assert results[0] == ["A", "B"] and results[2] == ["C"]
    assert isinstance(results[1], ValueError)
    assert calls[0] == ["a", "b", "poison", "c"]  # merged first, then each request alone
    assert ["a", "b"] in calls[1:] and ["c"] in calls[1:]
    assert alone == ["D"] and waited < 0.15  # max_wait 0.2 s is not spent when nothing else is on its way


# --- the command ---------------------------------------------------------------------------------------------------


def test_serve_command_loads_the_bundle_says_what_it_serves_and_stops_on_sigterm(exported_bundle):
    process, port = start_serve(exported_bundle, "--log-level", "warning")
    try:
        wait_for_serve(process, port)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            info = client.get("/v1/info").json()
            assert info["synthetic"] is True and info["backend"] == "onnxruntime"
            assert client.post("/v1/embeddings/text", json={"texts": ["кошка"]}).status_code == 200
        process.terminate()
        output, _ = process.communicate(timeout=30)
        # uvicorn shuts down gracefully, then re-raises the signal it caught (exit status -SIGTERM), as servers do
        assert process.returncode in (0, -signal.SIGTERM), output
        assert "serving" in output and "onnxruntime" in output and "fp32" in output and "SYNTHETIC" in output
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def test_serve_command_refuses_a_missing_bundle_with_exit_code_2(tmp_path, capsys):
    from ruclip_tiny.cli import main

    assert main(["serve", str(tmp_path / "nowhere")]) == 2
    assert "ruclip-tiny export" in capsys.readouterr().err
