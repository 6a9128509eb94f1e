"""Hostile and careless requests against the real server on loopback (the fake bundle: ready in a second).

Templates are checked before they are expanded, lone surrogates are refused naming their field, pixel bombs are
refused from their headers, multipart bodies with too many parts are cut off while they stream in, a client that
hangs up mid-upload is counted as 499 without a traceback, JSON endpoints need application/json, the API key guards
every endpoint but the probes, and /v1/info shows no absolute paths.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import socket
import struct
import subprocess
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

httpx = pytest.importorskip("httpx", reason="the server tests need httpx (pip install -e '.[dev]')")
pytest.importorskip("fastapi", reason="the server tests need the serve extra (pip install -e '.[serve]')")

from PIL import Image  # noqa: E402

from runtime.embedder import Embedder  # noqa: E402
from runtime.serve import BackgroundServer, ServerSettings, create_app  # noqa: E402
from tests.runtime.fake_bundle import build_fake_bundle  # noqa: E402
from tests.runtime.serve.serve_command import start_serve, wait_for_serve  # noqa: E402
from tests.runtime.serve.test_app import metric  # noqa: E402

MAX_ITEMS = 8
MAX_TEXT_CHARS = 600
MAX_IMAGE_PIXELS = 1_000_000
MAX_REQUEST_PIXELS = 2_500_000
API_KEY = "test-key-0123456789"


def png(width: int, height: int, colour=(120, 30, 200)) -> bytes:
    """A single-colour PNG: a few KB, however many pixels."""
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header says ``width`` x ``height`` and whose pixel data is cut off: refusing it by its size
    (rather than as truncated) proves the size was read from the header, before any decoding."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + header
    ihdr = struct.pack(">I", len(header)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    return b"\x89PNG\r\n\x1a\n" + ihdr + struct.pack(">I", 1000) + b"IDAT" + b"\x78\x9c" + b"\x00" * 40


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def wait_ready(client, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "the server did not become ready"
        time.sleep(0.05)


def peak_rss_mib() -> float:
    """This process's peak resident memory so far (the server runs in a thread of it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc/self/status")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return build_fake_bundle(tmp_path_factory.mktemp("limits") / "fake-bundle")


def start(bundle: Path, **settings) -> BackgroundServer:
    limits = dict(max_items=MAX_ITEMS, max_text_chars=MAX_TEXT_CHARS, max_image_pixels=MAX_IMAGE_PIXELS,
                  max_request_pixels=MAX_REQUEST_PIXELS)
    app = create_app(lambda: Embedder.load(bundle, backend="onnxruntime", intra_op_threads=1),
                     ServerSettings(**{**limits, **settings}))
    return BackgroundServer(app).start()


@pytest.fixture(scope="module")
def server(bundle):
    running = start(bundle)
    try:
        with httpx.Client(base_url=running.url, timeout=60) as client:
            wait_ready(client)
        yield running
    finally:
        running.stop()


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def post_json(client, path: str, body: str | bytes):
    """POST a JSON text as is (json= would escape what the test means to send raw)."""
    return client.post(path, content=body, headers={"content-type": "application/json"})


# --- templates (memory DoS) ----------------------------------------------------------------------------------------


def test_a_format_spec_template_is_refused_before_it_is_expanded(client):
    before = peak_rss_mib()
    body = {"images": [b64(png(64, 64))], "labels": [f"слово{i}" for i in range(32)], "template": "{:>20000000}"}
    response = client.post("/v1/classify", json={**body, "labels": body["labels"][:MAX_ITEMS]})
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert "template" in detail and "format spec" in detail
    # expanded, 8 labels x 20 M characters would have cost this process 160 MB or more
    assert peak_rss_mib() - before < 100


@pytest.mark.parametrize("template", ["no slot", "{0}", "{name}", "{!r}", "{} и {}", "{", "}", "{{}}"])
def test_a_template_without_exactly_one_plain_slot_is_refused_naming_it(client, template):
    response = client.post("/v1/classify", json={"images": [b64(png(64, 64))], "labels": ["слово1"],
                                                 "template": template})
    assert response.status_code == 422, response.text
    assert "template" in response.json()["detail"]


def test_a_label_with_its_template_over_max_text_chars_is_refused_naming_both(client):
    labels = ["слово1", "x" * (MAX_TEXT_CHARS - 5)]
    response = client.post("/v1/classify", json={"images": [b64(png(64, 64))], "labels": labels,
                                                 "template": "фото: {}"})
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert "labels[1]" in detail and f"--max-text-chars={MAX_TEXT_CHARS}" in detail
    fits = client.post("/v1/classify", json={"images": [b64(png(64, 64))], "labels": ["слово1", "x" * 594],
                                             "template": "фото: {}"})
    assert fits.status_code == 200, fits.text


def test_classify_with_a_template_equals_the_embedders_classify(client, bundle):
    images = [png(64, 48, (200, 10, 10)), png(50, 90, (10, 200, 30))]
    labels = ["слово1", "слово2 слово3", "{слово4}"]
    response = client.post("/v1/classify", json={"images": [b64(image) for image in images], "labels": labels,
                                                 "template": "{{ слово5 }} {}"})
    assert response.status_code == 200, response.text
    with Embedder.load(bundle, backend="onnxruntime") as embedder:
        expected = embedder.classify(images, labels, template="{{ слово5 }} {}")
    np.testing.assert_allclose(np.asarray(response.json()["probs"]), expected, atol=1e-5)


# --- lone surrogates -----------------------------------------------------------------------------------------------

SURROGATE_REQUESTS = [
    ("/v1/classify", '{"images": ["AAAA"], "labels": ["кошка", "\\ud800"]}', "labels.1"),
    ("/v1/classify", '{"images": ["AAAA"], "labels": ["кошка"], "template": "фото \\udfff {}"}', "template"),
    ("/v1/classify", '{"images": ["\\ud800AAAA"], "labels": ["кошка"]}', "images.0"),
    ("/v1/embeddings/text", '{"texts": ["кошка", "собака", "\\udc00 на траве"]}', "texts.2"),
    ("/v1/embeddings/image", '{"images": ["AAAA", "\\ud83d"]}', "images.1"),
]


@pytest.mark.parametrize("path, body, field", SURROGATE_REQUESTS, ids=[f for _, _, f in SURROGATE_REQUESTS])
def test_a_lone_surrogate_in_any_field_gets_422_naming_the_field(client, path, body, field):
    response = post_json(client, path, body)
    assert response.status_code == 422, response.text
    assert f"{field}: " in response.json()["error"] and "surrogate" in response.json()["error"]


def test_a_surrogate_pair_is_text_and_is_answered(client):
    response = post_json(client, "/v1/embeddings/text", '{"texts": ["кошка \\ud83d\\udc31"]}')
    assert response.status_code == 200, response.text


def test_a_multipart_part_that_decodes_to_a_lone_surrogate_gets_422(client):
    # "+2AA-" is UTF-7 for U+D800 on its own; starlette decodes a part with the charset the request names
    boundary = "surrogateboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"images\"; filename=\"+2AA-.png\"\r\n\r\n"
            ).encode() + png(8, 8) + f"\r\n--{boundary}--\r\n".encode()
    response = client.post("/v1/embeddings/image", content=body,
                           headers={"content-type": f"multipart/form-data; boundary={boundary}; charset=utf-7"})
    assert response.status_code == 422, response.text
    assert "file name" in response.json()["detail"]


# --- pixel bombs and many parts ------------------------------------------------------------------------------------


def test_an_image_over_max_image_pixels_is_a_failed_item_named_after_the_flag(client):
    images = [png(64, 64), png(1001, 1000), png_header_only(9000, 9000), png(80, 60)]
    response = client.post("/v1/embeddings/image", json={"images": [b64(image) for image in images]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [row is None for row in body["embeddings"]] == [False, True, True, False]
    errors = {entry["index"]: entry["error"] for entry in body["errors"]}
    assert sorted(errors) == [1, 2]
    assert "1001x1000" in errors[1] and f"--max-image-pixels={MAX_IMAGE_PIXELS}" in errors[1]
    # a cut-off file whose header asks for 81 M pixels (under Pillow's own limit): refused by its size, so never decoded
    assert "9000x9000" in errors[2] and "--max-image-pixels" in errors[2]

    files = [("images", ("big.png", png(1001, 1000), "image/png")), ("images", ("ok.png", png(64, 64), "image/png"))]
    multipart = client.post("/v1/embeddings/image", files=files).json()
    assert [row is None for row in multipart["embeddings"]] == [True, False]
    assert "--max-image-pixels" in multipart["errors"][0]["error"]

    classify = client.post("/v1/classify", json={"images": [b64(png(1001, 1000)), b64(png(64, 64))],
                                                 "labels": ["слово1", "слово2"]}).json()
    assert classify["probs"][0] is None and classify["probs"][1] is not None
    assert "--max-image-pixels" in classify["errors"][0]["error"]


def test_images_over_max_request_pixels_in_all_get_413_naming_the_flag(client):
    images = [b64(png(1000, 1000))] * 2 + [b64(png(700, 1000))]  # 2.7 M pixels in all, each within its own limit
    for path, extra in (("/v1/embeddings/image", {}), ("/v1/classify", {"labels": ["слово1"]})):
        response = client.post(path, json={"images": images, **extra})
        assert response.status_code == 413, response.text
        assert f"--max-request-pixels={MAX_REQUEST_PIXELS}" in response.json()["detail"]
    fits = client.post("/v1/embeddings/image", json={"images": images[:2]})
    assert fits.status_code == 200 and None not in fits.json()["embeddings"]


def _read_answer(sock: socket.socket, timeout_s: float = 10) -> bytes:
    sock.settimeout(timeout_s)
    answer = b""
    while b"\r\n\r\n" not in answer or len(answer) < answer.index(b"\r\n\r\n") + 4 + _content_length(answer):
        chunk = sock.recv(65536)
        if not chunk:
            break
        answer += chunk
    return answer


def _content_length(answer: bytes) -> int:
    for line in answer.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def test_a_multipart_body_is_refused_as_soon_as_its_parts_pass_max_items(server):
    boundary = "manyparts"
    part = f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="x.png"\r\n\r\n\r\n'.encode()
    declared = len(part) * 100_000 + len(f"--{boundary}--\r\n")
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(f"POST /v1/embeddings/image HTTP/1.1\r\nHost: x\r\nContent-Length: {declared}\r\n"
                     f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n".encode())
        sock.sendall(part * (MAX_ITEMS + 5))  # the rest of the 100,000 parts never comes
        answer = _read_answer(sock)
    status_line, _, rest = answer.partition(b"\r\n")
    assert b" 422 " in status_line, answer[:300]
    assert f"--max-items={MAX_ITEMS}".encode() in rest


# --- a client hanging up mid-upload --------------------------------------------------------------------------------


class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


@pytest.mark.parametrize("path, content_type, start", [
    ("/v1/embeddings/text", "application/json", b'{"texts": ["'),
    ("/v1/embeddings/image", "application/json", b'{"images": ["'),
    ("/v1/embeddings/image", "multipart/form-data; boundary=b",
     b'--b\r\nContent-Disposition: form-data; name="images"; filename="a.png"\r\n\r\n'),
])
def test_a_client_hanging_up_mid_upload_counts_as_499_and_logs_one_line(client, server, path, content_type, start):
    records = Records()
    watched = [logging.getLogger(name) for name in ("runtime.serve", "uvicorn.error", "uvicorn")]
    for logger in watched:
        logger.addHandler(records)
    try:
        before = client.get("/metrics").text
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
                         f"Content-Length: 100000\r\n\r\n".encode() + start + b"A" * 500)
            time.sleep(0.2)  # the server is reading the body when the client goes
        deadline = time.monotonic() + 10
        while True:
            after = client.get("/metrics").text
            if metric(after, "ruclip_tiny_requests_total", endpoint=path, status="499") > \
                    metric(before, "ruclip_tiny_requests_total", endpoint=path, status="499"):
                break
            assert time.monotonic() < deadline, "the hang-up was not counted as 499"
            time.sleep(0.05)
        time.sleep(0.2)  # a traceback would be logged right after the request ended
    finally:
        for logger in watched:
            logger.removeHandler(records)
    for status in ("500", "400"):
        assert metric(after, "ruclip_tiny_requests_total", endpoint=path, status=status) == \
            metric(before, "ruclip_tiny_requests_total", endpoint=path, status=status)
    assert not [r for r in records.records if r.exc_info or r.levelno >= logging.ERROR]
    lines = [r.getMessage() for r in records.records if "closed the connection" in r.getMessage()]
    assert len(lines) == 1 and path in lines[0] and "\n" not in lines[0]


# --- content types, API key, /v1/info ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/embeddings/text", "/v1/classify", "/v1/embeddings/image"])
@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_json_endpoints_refuse_other_content_types_with_415(client, path, content_type):
    body = json.dumps({"texts": ["слово1"]} if path.endswith("text") else
                      {"images": [b64(png(8, 8))], "labels": ["слово1"]} if path.endswith("classify") else
                      {"images": [b64(png(8, 8))]})
    headers = {} if content_type is None else {"content-type": content_type}
    response = client.post(path, content=body, headers=headers)
    assert response.status_code == 415, response.text
    assert "application/json" in response.json()["detail"]
    accepted = client.post(path, content=body, headers={"content-type": "Application/JSON; charset=utf-8"})
    assert accepted.status_code == 200, accepted.text


def test_multipart_is_taken_only_by_the_image_endpoint(client):
    files = [("images", ("a.png", png(8, 8), "image/png"))]
    assert client.post("/v1/embeddings/image", files=files).status_code == 200
    assert client.post("/v1/embeddings/text", files=files).status_code == 415
    assert client.post("/v1/classify", files=files).status_code == 415


def test_info_shows_no_absolute_path_and_one_max_image_batch(client, bundle):
    info = client.get("/v1/info")
    assert info.status_code == 200

    def strings(value):
        if isinstance(value, dict):
            for key, item in value.items():
                yield key
                yield from strings(item)
        elif isinstance(value, list):
            for item in value:
                yield from strings(item)
        elif isinstance(value, str):
            yield value

    body = info.json()
    assert body["bundle"] == bundle.name
    assert not [text for text in strings(body) if text.startswith("/") or str(bundle.parent) in text]
    assert info.text.count('"max_image_batch"') == 1
    assert body["limits"]["max_image_pixels"] == MAX_IMAGE_PIXELS
    assert body["limits"]["max_request_pixels"] == MAX_REQUEST_PIXELS
    assert "api_key" not in body["limits"] and body["api_key_required"] is False


def test_an_api_key_guards_every_endpoint_but_the_probes(bundle):
    running = start(bundle, api_key=API_KEY)
    try:
        with httpx.Client(base_url=running.url, timeout=60) as anyone:
            wait_ready(anyone)
            assert anyone.get("/healthz").status_code == 200
            for path in ("/v1/info", "/metrics", "/docs", "/openapi.json", "/nowhere"):
                refused = anyone.get(path)
                assert refused.status_code == 401, path
                assert refused.headers["www-authenticate"].startswith("Bearer")
            text = {"texts": ["слово1"]}
            for headers in ({}, {"authorization": f"Bearer {API_KEY}x"}, {"authorization": f"Bearer {API_KEY[:-1]}"},
                            {"authorization": API_KEY}, {"authorization": f"Basic {API_KEY}"}):
                refused = anyone.post("/v1/embeddings/text", json=text, headers=headers)
                assert refused.status_code == 401 and "Authorization: Bearer" in refused.json()["detail"]
            # 401 comes first: without the key a client learns nothing, not even which content type is wanted
            assert anyone.post("/v1/embeddings/text", content=b"x",
                               headers={"content-type": "text/plain"}).status_code == 401
            for headers in ({"authorization": f"Bearer {API_KEY}"}, {"authorization": f"bearer  {API_KEY}"}):
                assert anyone.post("/v1/embeddings/text", json=text, headers=headers).status_code == 200
                assert anyone.get("/v1/info", headers=headers).json()["api_key_required"] is True
            metrics = anyone.get("/metrics", headers={"authorization": f"Bearer {API_KEY}"}).text
            assert metric(metrics, "ruclip_tiny_requests_total", endpoint="/v1/embeddings/text", status="401") >= 5
    finally:
        running.stop()


@pytest.mark.parametrize("key", ["", "with space", "кириллица", "tab\there"])
def test_an_api_key_that_cannot_travel_in_a_header_is_refused_at_start(key):
    with pytest.raises(ValueError, match="api_key"):
        ServerSettings(api_key=key)


def test_serve_takes_the_api_key_from_the_environment(bundle):
    env = {**os.environ, "RUCLIP_TINY_API_KEY": API_KEY}
    process, port = start_serve(bundle, "--backend", "onnxruntime", "--log-level", "warning", env=env,
                                stderr=subprocess.PIPE)
    try:
        wait_for_serve(process, port, timeout_s=60)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as anyone:
            assert anyone.get("/v1/info").status_code == 401
            assert anyone.get("/v1/info", headers={"authorization": f"Bearer {API_KEY}"}).status_code == 200
    finally:
        process.terminate()
        out, _ = process.communicate(timeout=60)
    assert "Authorization: Bearer" in out and API_KEY not in out
