"""Connection limits of the HTTP server, with real sockets against the real server (uvicorn on loopback, fake bundle):
a request must arrive whole within --request-timeout (slow headers and stalled bodies are closed, the server keeps
answering others meanwhile), idle keep-alive connections close after --timeout-keep-alive, and beyond
--limit-concurrency requests get 503 with Retry-After — in ``BackgroundServer`` and in ``ruclip-tiny serve``.
"""

from __future__ import annotations

import socket
import time

import pytest

httpx = pytest.importorskip("httpx", reason="the server tests need httpx (pip install -e '.[dev]')")
pytest.importorskip("fastapi", reason="the server tests need the serve extra (pip install -e '.[serve]')")

from runtime.embedder import Embedder  # noqa: E402
from runtime.serve import BackgroundServer, ServerSettings, create_app  # noqa: E402
from tests.runtime.fake_bundle import build_fake_bundle  # noqa: E402
from tests.runtime.serve.serve_command import start_serve, wait_for_serve  # noqa: E402

PARTIAL_HEADER = b"POST /v1/embeddings/text HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: appl"
STALLED_BODY = (b"POST /v1/embeddings/text HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Content-Length: 1000\r\n\r\n" + b'{"texts": ["')
TEXT_BODY = {"texts": ["кошка"]}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return build_fake_bundle(tmp_path_factory.mktemp("fake") / "bundle")


def serve(bundle, **settings) -> BackgroundServer:
    app = create_app(lambda: Embedder.load(bundle, backend="onnxruntime"), ServerSettings(**settings))
    server = BackgroundServer(app).start()
    with httpx.Client(base_url=server.url, timeout=30) as client:
        deadline = time.monotonic() + 60
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "the server did not become ready"
            time.sleep(0.05)
    return server


def connect(port: int, data: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    if data:
        sock.sendall(data)
    return sock


def read_until_closed(sock: socket.socket, timeout_s: float) -> bytes | None:
    """Everything the server sent before it closed the connection, or None if it was still open after
    ``timeout_s`` seconds."""
    sock.settimeout(timeout_s)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return received


def test_slow_headers_and_stalled_bodies_are_closed_by_the_request_timeout_while_others_are_answered(bundle):
    server = serve(bundle, request_timeout_s=1.0, limit_concurrency=None)
    sockets = []
    try:
        sockets += [connect(server.port, PARTIAL_HEADER) for _ in range(200)]
        sockets += [connect(server.port, STALLED_BODY) for _ in range(50)]
        sockets += [connect(server.port) for _ in range(20)]  # connected, never a byte
        with httpx.Client(base_url=server.url, timeout=30) as client:
            # the held connections do not stop the server from answering a whole request meanwhile
            assert client.post("/v1/embeddings/text", json=TEXT_BODY).status_code == 200
        # 1 s deadline; 20 s is only how long this test waits before calling a connection held for ever
        answers = [read_until_closed(sock, 20) for sock in sockets]
        with httpx.Client(base_url=server.url, timeout=30) as client:
            assert client.post("/v1/embeddings/text", json=TEXT_BODY).status_code == 200
    finally:
        for sock in sockets:
            sock.close()
        server.stop()
    assert all(answer is not None for answer in answers), \
        f"{sum(answer is None for answer in answers)} of {len(answers)} connections still open"
    # headers that never ended get a 408; a stalled body is closed with or without one
    assert all(answer.startswith(b"HTTP/1.1 408 ") for answer in answers[:200])
    assert b"--request-timeout=1s" in answers[0]
    assert all(answer == b"" or answer.startswith(b"HTTP/1.1 408 ") for answer in answers[200:])


def test_a_slow_but_steady_request_within_the_timeout_is_answered(bundle):
    server = serve(bundle, request_timeout_s=2.0, limit_concurrency=None)
    body = '{"texts": ["кошка"]}'.encode()
    head = (b"POST /v1/embeddings/text HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n")
    try:
        sock = connect(server.port, head)
        time.sleep(0.5)  # a pause well inside the 2 s deadline
        sock.sendall(body)
        answer = read_until_closed(sock, 20)
        sock.close()
    finally:
        server.stop()
    assert answer is not None and answer.startswith(b"HTTP/1.1 200 ")


def test_an_idle_keep_alive_connection_is_closed_after_the_keep_alive_timeout(bundle):
    server = serve(bundle, timeout_keep_alive_s=0.5, limit_concurrency=None)
    try:
        sock = connect(server.port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        answer = read_until_closed(sock, 20)
        sock.close()
    finally:
        server.stop()
    assert answer is not None and answer.startswith(b"HTTP/1.1 200 ")  # answered, then closed when idle


def test_beyond_the_concurrency_limit_requests_get_503_with_retry_after(bundle):
    server = serve(bundle, limit_concurrency=4, retry_after_s=3)
    try:
        held = [connect(server.port) for _ in range(4)]
        time.sleep(0.2)  # the server has accepted them
        with httpx.Client(base_url=server.url, timeout=30) as client:
            busy = client.post("/v1/embeddings/text", json=TEXT_BODY)
        for sock in held:
            sock.close()
        time.sleep(0.2)
        with httpx.Client(base_url=server.url, timeout=30) as client:
            after = client.post("/v1/embeddings/text", json=TEXT_BODY)
    finally:
        server.stop()
    assert busy.status_code == 503
    assert busy.headers["retry-after"] == "3"
    assert "--limit-concurrency=4" in busy.text
    assert after.status_code == 200


def test_serve_command_applies_request_timeout_and_limit_concurrency(bundle):
    process, port = start_serve(bundle, "--log-level", "warning", "--request-timeout", "1", "--limit-concurrency",
                                "3", "--timeout-keep-alive", "2")
    try:
        wait_for_serve(process, port)
        slow = connect(port, PARTIAL_HEADER)
        held = [connect(port) for _ in range(2)]
        time.sleep(0.2)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            busy = client.get("/healthz")  # the 4th connection
        answer = read_until_closed(slow, 20)
        for sock in [slow, *held]:
            sock.close()
    finally:
        process.terminate()
        process.wait(30)
    assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
    assert answer is not None and answer.startswith(b"HTTP/1.1 408 ")
